//! Shared by the integration tests: real upstream servers, a proxy on loopback programmed
//! through its control socket, real HTTP clients.
// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use starphleet_proxy::{ProxyClient, ProxyError, ProxyOptions, Route, RouteTable, Upstream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const SHIP: &str = "test-ship";

// ---------------------------------------------------------------- upstreams

/// A small upstream app: reports what it saw, streams a gated body on `/wait`, echoes websockets.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Releases one `/wait` response body.
    pub gate: Arc<Notify>,
    accept: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let gate = g.clone();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            TokioIo::new(stream),
                            service_fn(move |req| respond(name, gate.clone(), req)),
                        )
                        .with_upgrades(),
                );
            }
        });
        Backend {
            name,
            addr,
            gate,
            accept,
        }
    }

    pub fn upstream(&self) -> Upstream {
        Upstream {
            addr: self.addr,
            version: "v1".into(),
            container: format!("{}-container", self.name),
        }
    }

    pub fn container(&self) -> String {
        self.upstream().container
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn respond(
    name: &'static str,
    gate: Arc<Notify>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.headers().contains_key(header::UPGRADE) {
        let key = req.headers()[header::SEC_WEBSOCKET_KEY].as_bytes().to_vec();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = TokioIo::new(upgrade.await.unwrap());
            let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    let reply = format!("{name}:{}", text.as_str());
                    if ws.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Empty::new().boxed())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/wait" {
        // Headers and a first chunk now, the rest once the test opens the gate: the request
        // stays in flight while its body streams.
        let chunks = futures::stream::unfold(0, move |step| {
            let gate = gate.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from("start\n"))), 1)),
                    1 => {
                        gate.notified().await;
                        Some((Ok(Frame::data(Bytes::from(format!("end {name}\n")))), 2))
                    }
                    _ => None,
                }
            }
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))));
    }
    let h = |n: &str| {
        req.headers()
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("|")
    };
    let report = [
        ("upstream", name.to_owned()),
        ("path", req.uri().to_string()),
        ("host", h("host")),
        ("x-forwarded-for", h("x-forwarded-for")),
        ("x-forwarded-proto", h("x-forwarded-proto")),
        ("x-forwarded-host", h("x-forwarded-host")),
        ("x-forwarded-prefix", h("x-forwarded-prefix")),
        ("x-secret", h("x-secret")),
        ("connection", h("connection")),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}\n"))
    .collect::<String>();
    Ok(Response::new(Full::new(Bytes::from(report)).boxed()))
}

// ---------------------------------------------------------------- the proxy

/// A proxy running in this test's runtime, with its control socket in a temp dir.
pub struct Proxy {
    pub client: ProxyClient,
    pub socket: std::path::PathBuf,
    pub task: Option<JoinHandle<Result<(), ProxyError>>>,
    pub _dir: tempfile::TempDir,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let opts = ProxyOptions {
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            access_log_dir: Some(dir.path().join("access")),
            ..ProxyOptions::new(&socket)
        };
        let task = tokio::spawn(starphleet_proxy::run(opts));
        let client = ProxyClient::new(&socket);
        eventually("the proxy answers", || client.is_running()).await;
        Proxy {
            client,
            socket,
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn set(&self, table: &RouteTable) {
        self.client.set_routes(table).await.unwrap();
    }

    pub async fn in_flight(&self, container: &str) -> u64 {
        let status = self.client.status().await.unwrap();
        status.in_flight.get(container).copied().unwrap_or(0)
    }

    /// Asks the proxy to shut down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.client.shutdown().await.unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the proxy stops")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub fn route(prefix: &str, service: &str, upstreams: &[&Backend]) -> Route {
    Route {
        prefix: prefix.into(),
        service: service.into(),
        upstreams: upstreams.iter().map(|b| b.upstream()).collect(),
        ..Route::default()
    }
}

pub fn table(ports: impl IntoIterator<Item = (u16, Vec<Route>)>) -> RouteTable {
    RouteTable {
        ship: SHIP.into(),
        ports: ports.into_iter().collect(),
        ..RouteTable::default()
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

// ---------------------------------------------------------------- clients

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    /// What the backend reported seeing.
    pub fn seen(&self) -> HashMap<String, String> {
        self.body
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// One keep-alive HTTP/1.1 connection to the proxy.
pub struct Conn(pub hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(sender)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.0.send_request(req).await.unwrap();
        collect(resp).await
    }

    pub async fn get(&mut self, port: u16, path: &str) -> Reply {
        self.send(get_req(port, path)).await
    }
}

pub fn get_req(port: u16, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .body(Full::default())
        .unwrap()
}

pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn get(port: u16, path: &str) -> Reply {
    Conn::open(port).await.get(port, path).await
}
