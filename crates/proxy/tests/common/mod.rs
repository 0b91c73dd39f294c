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
use starphleet_proxy::{
    CertFiles, Limits, ProxyClient, ProxyError, ProxyOptions, Route, RouteTable, Upstream,
};
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
    // `/no-upgrade` answers an upgrade as a plain page, as an app that knows no websockets.
    if req.headers().contains_key(header::UPGRADE) && req.uri().path() != "/no-upgrade" {
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
    // A body is read whole before answering, as most apps do.
    let body_bytes = if req.method() == hyper::Method::POST {
        match req.body_mut().collect().await {
            Ok(body) => body.to_bytes().len().to_string(),
            Err(e) => format!("error: {e}"),
        }
    } else {
        "-".into()
    };
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
        ("upgrade", h("upgrade")),
        ("proxy-authorization", h("proxy-authorization")),
        ("http2-settings", h("http2-settings")),
        ("version", format!("{:?}", req.version())),
        ("body-bytes", body_bytes),
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
        Proxy::start_with(Limits::default()).await
    }

    /// A proxy with these limits.
    pub async fn start_with(limits: Limits) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let opts = ProxyOptions {
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            access_log_dir: Some(dir.path().join("access")),
            limits,
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

/// One HTTP/2 connection to the proxy's plain port (prior knowledge, no TLS).
pub async fn h2_open<B>(port: u16) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
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

// ---------------------------------------------------------------- TLS

/// A test certificate authority, and the certificates it issues as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate, for `curl --cacert`.
    pub ca_pem: std::path::PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "starphleet test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Pki { dir, ca, ca_pem }
    }

    /// A leaf certificate for `names` (ECDSA P-256), written as `<tag>.crt` and `<tag>.key`.
    pub fn issue(&self, tag: &str, names: &[&str]) -> (CertFiles, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{tag}.crt"));
        let key_path = self.dir.path().join(format!("{tag}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let files = CertFiles {
            hosts: names.iter().map(|n| n.to_string()).collect(),
            cert_path,
            key_path,
        };
        (files, cert.der().clone())
    }

    /// A client trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

pub use rustls_pki_types::CertificateDer;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the proxy on loopback for `sni`.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    sni: &str,
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented and the protocol ALPN chose.
pub fn peer(stream: &TlsStream) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let conn = stream.get_ref().1;
    (
        conn.peer_certificates().unwrap()[0].clone().into_owned(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    )
}

/// An HTTP/1.1 keep-alive client over a TLS connection.
pub async fn tls_conn(stream: TlsStream) -> Conn {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    Conn(sender)
}

/// Accepts any server certificate: for checking which one a TLS-ALPN-01 handshake presents.
#[derive(Debug)]
pub struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------- raw HTTP/1

/// Sends `request` as bytes on a new connection and reads until the proxy closes it or
/// `limit` passes; returns what came back.
pub async fn raw(port: u16, request: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
