//! Ships for the tests: small hyper servers on loopback answering like a ship's admin
//! endpoint (`/status`, `/logs` with follow, `/phleet/versions`, `/hooks/git`), and sockets
//! that misbehave (a dead port, one that never answers, one that answers byte by byte).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use starphleet_phleet::{Peer, Token};
use starphleet_telemetry::{parse_time, Kind, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};

/// The token every test ship accepts unless told otherwise.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The token as a client sends it.
pub fn token() -> Token {
    TOKEN.parse().unwrap()
}

type Body = BoxBody<Bytes, Infallible>;

struct Shared {
    name: String,
    token: Option<String>,
    status: Mutex<String>,
    versions: Mutex<String>,
    records: Mutex<Vec<Record>>,
    live: broadcast::Sender<Record>,
    requests: Mutex<Vec<String>>,
    hooks: Mutex<Vec<(HeaderMap, Bytes)>>,
    connections: AtomicUsize,
    refused: AtomicUsize,
}

/// A ship's admin endpoint on 127.0.0.1; stopped when dropped.
pub struct FakeShip {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

/// A record as a ship stores it; `ship` is deliberately not the name in `ships`.
pub fn record(service: &str, time_ns: u64, line: &str) -> Record {
    Record {
        time_ns,
        ship: "hostname-not-the-ships-name".into(),
        service: service.into(),
        version: "aaaaaaaaaaaa+bbbbbbbb".into(),
        container: String::new(),
        kind: Kind::App,
        stream: "stdout".into(),
        line: line.into(),
    }
}

impl FakeShip {
    /// A ship named `name` that wants `token` (None: no token needed).
    pub async fn start(name: &str, token: Option<&str>) -> FakeShip {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            token: token.map(str::to_string),
            status: Mutex::new(
                serde_json::json!({"ship": name, "headquarters_commit": "hq1", "services": []})
                    .to_string(),
            ),
            versions: Mutex::new(serde_json::json!({"ship": name}).to_string()),
            records: Mutex::new(Vec::new()),
            live: broadcast::channel(1024).0,
            requests: Mutex::new(Vec::new()),
            hooks: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let server = Some(tokio::spawn(serve(listener, shared.clone())));
        FakeShip {
            addr,
            shared,
            server,
        }
    }

    /// The ship as a line of `ships` names it.
    pub fn peer(&self) -> Peer {
        Peer::new(self.shared.name.clone(), format!("http://{}", self.addr))
    }

    /// What `/status` answers (any text).
    pub fn set_status(&self, body: impl Into<String>) {
        *self.shared.status.lock().unwrap() = body.into();
    }

    /// What `/phleet/versions` answers.
    pub fn set_versions(&self, body: impl Into<String>) {
        *self.shared.versions.lock().unwrap() = body.into();
    }

    /// Stores a record and sends it to every follower.
    pub fn push(&self, r: Record) {
        self.shared.records.lock().unwrap().push(r.clone());
        let _ = self.shared.live.send(r);
    }

    /// Every request's path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Every hook posted to it.
    pub fn hooks(&self) -> Vec<(HeaderMap, Bytes)> {
        self.shared.hooks.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests refused for a wrong or missing token.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection, like a ship going down.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    /// Listens again on the same port with the same records, like a ship coming back.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }
}

impl Drop for FakeShip {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in the set, so aborting the server drops them all.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    shared
        .requests
        .lock()
        .unwrap()
        .push(format!("{path}?{query}"));
    if let Some(t) = &shared.token {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {t}")) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(full(StatusCode::UNAUTHORIZED, r#"{"error":"token"}"#));
        }
    }
    let resp = match path.as_str() {
        "/status" => full(StatusCode::OK, shared.status.lock().unwrap().clone()),
        "/phleet/versions" => full(StatusCode::OK, shared.versions.lock().unwrap().clone()),
        "/hooks/git" => {
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            shared.hooks.lock().unwrap().push((headers, body));
            full(StatusCode::ACCEPTED, "{}")
        }
        "/logs" => logs(&shared, &query),
        _ => full(StatusCode::NOT_FOUND, r#"{"error":"unknown admin path"}"#),
    };
    Ok(resp)
}

/// `/logs?since=&service=&follow=1` like a ship: stored records, then live ones.
fn logs(shared: &Shared, query: &str) -> Response<Body> {
    let mut since = None;
    let mut service = None;
    let mut follow = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "since" => since = Some(parse_time(&v, starphleet_telemetry::now_ns()).unwrap()),
            "service" => service = Some(v.into_owned()),
            "follow" => follow = v == "1",
            _ => {}
        }
    }
    let wanted = move |r: &Record| {
        since.is_none_or(|t| r.time_ns >= t) && service.as_ref().is_none_or(|s| *s == r.service)
    };
    let mut live = shared.live.subscribe();
    let backlog: Vec<Record> = shared
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| wanted(r))
        .cloned()
        .collect();
    let line = |r: &Record| Bytes::from(serde_json::to_string(r).unwrap() + "\n");
    if !follow {
        let body: Vec<u8> = backlog.iter().flat_map(|r| line(r).to_vec()).collect();
        return full(StatusCode::OK, body);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for r in &backlog {
            if tx.send(line(r)).await.is_err() {
                return;
            }
        }
        loop {
            let out = match live.recv().await {
                Ok(r) if wanted(&r) => line(&r),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Bytes::from(format!("{{\"missed\":{n}}}\n"))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

/// A port nothing listens on.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A socket that accepts every connection and never says a word; stopped when dropped.
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        Silent { addr, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A socket that answers every request with `body` as JSON, one byte every `gap`.
pub struct Slow {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Slow {
    pub async fn start(body: String, gap: Duration) -> Slow {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                let body = body.clone();
                conns.spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    for b in resp.bytes() {
                        if s.write_all(&[b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(gap).await;
                    }
                });
            }
        });
        Slow { addr, task }
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}
