//! The proxy's own HTTP/1.1 exchange with upstreams, against an upstream that answers with exact
//! bytes: every body framing, informational responses, keep-alive reuse, connections the
//! upstream closes, request bodies, large bodies and malformed answers.

mod common;

use common::raw as raw_http;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, StatusCode};
use starphleet_proxy::{Route, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw upstream does after answering a request.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// An upstream that answers each request with the bytes `answer` gives for its head and body.
struct Raw {
    addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Raw {
    async fn start(answer: fn(&str, &[u8]) -> (Vec<u8>, After)) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, answer));
            }
        });
        Raw {
            addr,
            connections,
            accept,
        }
    }

    fn route(&self, prefix: &str) -> Route {
        Route {
            prefix: prefix.into(),
            service: "raw".into(),
            upstreams: vec![Upstream {
                addr: self.addr,
                version: "v1".into(),
                container: "raw-1".into(),
            }],
            ..Route::default()
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve_raw(mut stream: TcpStream, answer: fn(&str, &[u8]) -> (Vec<u8>, After)) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(String::from)
            })
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let (bytes, after) = answer(&head, &body);
        if stream.write_all(&bytes).await.is_err() || after == After::Close {
            return;
        }
    }
}

fn answer(head: &str, body: &[u8]) -> (Vec<u8>, After) {
    let line = head.lines().next().unwrap();
    let keep = After::KeepOpen;
    let bytes: Vec<u8> = match line {
        "GET /len HTTP/1.1" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        "HEAD /len HTTP/1.1" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
        "GET /chunked HTTP/1.1" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            .to_vec(),
        "GET /early HTTP/1.1" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
        "GET /none HTTP/1.1" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        "GET /big HTTP/1.1" => {
            let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
            big.resize(big.len() + 1_000_000, b'x');
            big
        }
        "GET /bad HTTP/1.1" => b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
        "GET /old HTTP/1.1" | "POST /old HTTP/1.1" => {
            return (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold".to_vec(),
                After::Close,
            )
        }
        "GET /once HTTP/1.1" => {
            // Answers, then closes the connection without saying so: the next request on it
            // would fail, and must not reach the client as an error.
            return (
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce".to_vec(),
                After::Close,
            );
        }
        "GET /close HTTP/1.1" => {
            return (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
                After::Close,
            )
        }
        "POST /echo HTTP/1.1" => {
            let mut echo =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            echo.extend_from_slice(body);
            echo
        }
        _ if line.starts_with("GET /head") => {
            let mut seen =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len()).into_bytes();
            seen.extend_from_slice(head.as_bytes());
            seen
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    };
    (bytes, keep)
}

async fn proxy_to(raw: &Raw) -> (Proxy, u16) {
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy.set(&table([(port, vec![raw.route("/r")])])).await;
    (proxy, port)
}

#[tokio::test]
async fn relays_every_body_framing_on_one_upstream_connection() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    let mut conn = Conn::open(port).await;

    let reply = conn.get(port, "/r/len").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    let reply = conn.get(port, "/r/chunked").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello world")
    );
    let reply = conn.get(port, "/r/early").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    let reply = conn.get(port, "/r/none").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::NO_CONTENT, "")
    );
    let head = Request::head("/r/len")
        .header(header::HOST, "h")
        .body(Full::default())
        .unwrap();
    let reply = conn.send(head).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_LENGTH], "5");
    assert_eq!(reply.body, "");
    let reply = conn.get(port, "/r/len").await;
    assert_eq!(reply.body, "hello");
    assert_eq!(
        raw.connections(),
        1,
        "every response left the connection reusable"
    );

    let reply = conn.get(port, "/r/close").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "until the end")
    );
    let reply = conn.get(port, "/r/len").await;
    assert_eq!(reply.body, "hello");
    assert_eq!(
        raw.connections(),
        2,
        "a body delimited by the close needs a new connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn sends_the_forwarded_head() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    let req = Request::get("/r/head?q=1")
        .header(header::HOST, "example.test")
        .header(header::CONNECTION, "x-hop")
        .header("x-hop", "1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("accept", "*/*")
        .body(Full::default())
        .unwrap();
    let seen = Conn::open(port).await.send(req).await.body;
    let mut lines: Vec<&str> = seen.trim_end().split("\r\n").collect();
    assert_eq!(lines.remove(0), "GET /head?q=1 HTTP/1.1");
    lines.sort();
    assert_eq!(
        lines,
        [
            "accept: */*",
            "host: example.test",
            "x-forwarded-for: 203.0.113.9, 127.0.0.1",
            "x-forwarded-host: example.test",
            "x-forwarded-prefix: /r",
            "x-forwarded-proto: http",
        ]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_unseen() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    let mut conn = Conn::open(port).await;
    for round in 1..=3 {
        let reply = conn.get(port, "/r/once").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "once")
        );
        // Sometimes the close is seen before the next request, sometimes not: either way the
        // client sees no error.
        if round == 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(raw.connections(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn request_bodies_and_large_responses_go_through_whole() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    let mut conn = Conn::open(port).await;
    let post = Request::builder()
        .method(Method::POST)
        .uri("/r/echo")
        .header(header::HOST, "h")
        .body(Full::new(Bytes::from_static(b"a body")))
        .unwrap();
    let reply = conn.send(post).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "a body")
    );
    let reply = conn.get(port, "/r/big").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 1_000_000);
    assert!(reply.body.bytes().all(|b| b == b'x'));
    proxy.stop().await;
}

#[tokio::test]
async fn a_malformed_answer_is_502() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    let reply = get(port, "/r/bad").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.body.contains("raw"), "{}", reply.body);
    assert_eq!(proxy.in_flight("raw-1").await, 0);
    proxy.stop().await;
}

#[tokio::test]
async fn an_http_1_0_upstream_is_answered_as_http_1_1() {
    let raw = Raw::start(answer).await;
    let (proxy, port) = proxy_to(&raw).await;
    for request in [
        "GET /r/old HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        "POST /r/old HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    ] {
        let reply = raw_http(port, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
        assert!(reply.ends_with("\r\n\r\nold"), "{reply:?}");
    }
    proxy.stop().await;
}
