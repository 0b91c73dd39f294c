//! What one client may cost the proxy, tried as an attacker would, and the hygiene of what
//! reaches apps: every limit answers its status and the proxy keeps serving everyone else.
//! Raw sockets where a well-behaved client library would not misbehave enough.

mod common;

use common::*;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{stream, SinkExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{header, Method, Request, StatusCode};
use starphleet_proxy::{Limits, Route, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn quick() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(800),
        body_idle_timeout: Duration::from_millis(800),
        keep_alive_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// The app behind a proxy with `quick()` limits on one port: `prefix` with `limit` applied to
/// its route, and `/` as it comes.
async fn app_with_limited_route(
    prefix: &str,
    limit: impl FnOnce(&mut Route),
) -> (Backend, Proxy, u16) {
    let app = Backend::start("app").await;
    let proxy = Proxy::start_with(quick()).await;
    let port = free_port();
    let mut limited = route(prefix, "app", &[&app]);
    limit(&mut limited);
    proxy
        .set(&table([(port, vec![limited, route("/", "app", &[&app])])]))
        .await;
    (app, proxy, port)
}

/// An upstream that accepts connections and never answers.
async fn silent() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// The status line's code of a raw answer.
fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {reply:?}"))
}

/// A connection from the loopback address `127.0.0.<n>`.
async fn connect_from(n: u8, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 0)))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// Over HTTP/2 a refused body ends its stream only: the client gets the whole 413 (the stream
/// then reset with NO_ERROR, RFC 9113 §8.1), and the connection goes on serving.
#[tokio::test]
async fn http2_bodies_over_the_route_limit_are_a_complete_413_and_the_connection_lives() {
    let (_app, proxy, port) = app_with_limited_route("/small", |r| r.max_body = Some(10)).await;

    let mut h2 = h2_open(port).await;
    let uri = format!("http://h2.test:{port}/small/x");

    // Announced too large, with a body far past any window, as curl sends a big upload.
    let upload = stream::iter(
        (0..64).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))),
    );
    let announced = Request::post(&uri)
        .header(header::CONTENT_LENGTH, 64 * 16 * 1024)
        .body(StreamBody::new(upload).boxed())
        .unwrap();
    let resp = h2
        .send_request(announced)
        .await
        .expect("a response, not a reset stream");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = resp
        .into_body()
        .collect()
        .await
        .expect("the whole 413 body")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("larger than 10 bytes"),
        "{text:?}"
    );

    // Streamed past the limit without a length.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let streamed = Request::post(&uri)
        .body(StreamBody::new(rx).boxed())
        .unwrap();
    let sending = tokio::spawn(async move {
        for _ in 0..64 {
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"hello world "))))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let resp = h2
        .send_request(streamed)
        .await
        .expect("a response, not a reset stream");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    resp.into_body()
        .collect()
        .await
        .expect("the whole 413 body");
    sending.abort();

    // The same connection serves the next request.
    let next = Request::get(format!("http://h2.test:{port}/x"))
        .body(Empty::<Bytes>::new().boxed())
        .unwrap();
    let resp = h2
        .send_request(next)
        .await
        .expect("the connection still serves");
    assert_eq!(resp.status(), StatusCode::OK);
    proxy.stop().await;
}

/// A route's own body timeout (`--body-timeout`) replaces the proxy's for its requests only.
#[tokio::test]
async fn a_route_body_timeout_replaces_the_proxy_one() {
    let (_app, proxy, port) =
        app_with_limited_route("/patient", |r| r.body_timeout_ms = Some(2500)).await;

    let stall = |path: &'static str| async move {
        let begun = Instant::now();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nten bytes!");
        let reply = raw(port, head.as_bytes(), Duration::from_secs(10)).await;
        (status_of(&reply), begun.elapsed())
    };
    let ((patient, patient_took), (other, other_took)) =
        tokio::join!(stall("/patient/x"), stall("/x"));
    assert_eq!((patient, other), (408, 408));
    // The proxy's limit is 800 ms; the route's 2.5 s.
    assert!(other_took < Duration::from_secs(2), "{other_took:?}");
    assert!(
        patient_took >= Duration::from_millis(2500) && patient_took < Duration::from_secs(5),
        "{patient_took:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_oversized_head_is_431_and_a_slow_one_408() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start_with(quick()).await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&app])])]))
        .await;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let reply = raw(port, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&reply), 431, "{reply}");

    let begun = Instant::now();
    let reply = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Meanwhile, and after, others are served.
    assert_eq!(get(port, "/x").await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_413_and_stalled_ones_408() {
    let (_app, proxy, port) = app_with_limited_route("/small", |r| r.max_body = Some(10)).await;

    // Announced too large: answered at once, nothing read.
    let reply = raw(
        port,
        b"POST /small/x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&reply), 413, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );

    // Streamed past the limit: stopped there.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"POST /small/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stream.write_all(b"6\r\nworld!\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status_of(&reply), 413, "{reply}");

    // Within the limit it goes through.
    let mut conn = Conn::open(port).await;
    let post = Request::builder()
        .method(Method::POST)
        .uri("/small/x")
        .header(header::HOST, "h")
        .body(Full::new(Bytes::from_static(b"ten bytes!")))
        .unwrap();
    let reply = conn.send(post).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.seen()["body-bytes"], "10");

    // A body announced and never sent is not held forever.
    let begun = Instant::now();
    let reply = raw(
        port,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    assert!(
        begun.elapsed() < Duration::from_secs(3),
        "{:?}",
        begun.elapsed()
    );
    assert_eq!(get(port, "/x").await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_after_the_route_timeout() {
    let (addr, _silent) = silent().await;
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    let stuck = Route {
        prefix: "/stuck".into(),
        service: "stuck".into(),
        upstreams: vec![Upstream {
            addr,
            version: "v1".into(),
            container: "stuck-1".into(),
        }],
        timeout_ms: Some(300),
        ..Route::default()
    };
    proxy
        .set(&table([(port, vec![stuck, route("/", "app", &[&app])])]))
        .await;

    let mut conn = Conn::open(port).await;
    for req in [
        get_req(port, "/stuck/x"),
        Request::post("/stuck/y")
            .header(header::HOST, "h")
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap(),
    ] {
        let begun = Instant::now();
        let reply = Conn::open(port).await.send(req).await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
        assert!(reply.body.contains("300 ms"), "{}", reply.body);
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(conn.get(port, "/x").await.status, StatusCode::OK);
    }
    assert_eq!(proxy.in_flight("stuck-1").await, 0);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start_with(quick()).await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&app])])]))
        .await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let begun = Instant::now();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "closed");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_ip_limit_are_closed_at_once() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start_with(Limits {
        max_connections_per_ip: 3,
        ..Limits::default()
    })
    .await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&app])])]))
        .await;

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(3, port).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut fourth = connect_from(3, port).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {read:?}"
    );
    // Another address is not affected; one connection fewer lets a new one in.
    let mut other = connect_from(4, port).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    other.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    drop(held.pop());
    eventually("a slot is free again", || async {
        let Ok(mut s) = connect_from(3, port).await else {
            return false;
        };
        if s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 12];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"HTTP/1.1 200"
    })
    .await;
    proxy.stop().await;
}

// The attackers' writes run beside the normal client, not between its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_attack_of_2000_connections_neither_starves_others_nor_lasts() {
    const ATTACKERS: usize = 2000;
    let app = Backend::start("app").await;
    let header_time = Duration::from_secs(3);
    let proxy = Proxy::start_with(Limits {
        header_read_timeout: header_time,
        ..Limits::default()
    })
    .await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&app])])]))
        .await;

    // From eight loopback addresses, under the per-address limit: only the head clock can stop
    // them.
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let stream = connect_from(10 + (i % 8) as u8, port).await.unwrap();
        attackers.push(stream);
    }
    let attack_began = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Drip: ";
    let drip = tokio::spawn(async move {
        // One header byte a second from each, for longer than the head clock allows.
        for byte in head.iter().take(6) {
            for stream in &mut attackers {
                let _ = stream.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        attackers
    });

    // A normal client meanwhile: fresh connections and a keep-alive one.
    let mut conn = Conn::open(port).await;
    let mut latencies = Vec::new();
    while attack_began.elapsed() < Duration::from_millis(2500) {
        let begun = Instant::now();
        assert_eq!(conn.get(port, "/k").await.status, StatusCode::OK);
        assert_eq!(get(port, "/n").await.status, StatusCode::OK);
        latencies.push(begun.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    println!(
        "during {ATTACKERS} slowloris connections: {} round trips (keep-alive + new connection), p50 {p50:?}, max {max:?}",
        latencies.len()
    );
    assert!(max < Duration::from_millis(500), "max {max:?}");

    // Each attacker is answered 408 and cut off once its head has taken too long.
    let mut attackers = drip.await.unwrap();
    let mut answered = 0;
    for stream in &mut attackers {
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
        if reply.starts_with(b"HTTP/1.1 408") {
            answered += 1;
        }
    }
    let cut_after = attack_began.elapsed();
    println!("{answered} of {ATTACKERS} answered 408, all within {cut_after:?}");
    assert_eq!(answered, ATTACKERS);
    assert!(
        cut_after < header_time + Duration::from_secs(6),
        "{cut_after:?}"
    );
    assert_eq!(get(port, "/after").await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn requests_are_cleaned_before_routing_and_forwarding() {
    let (echo, other) = (Backend::start("echo").await, Backend::start("other").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(
            port,
            vec![
                route("/echo", "echo", &[&echo]),
                route("/other", "other", &[&other]),
            ],
        )]))
        .await;
    let ask = |req: &'static str| raw(port, req.as_bytes(), Duration::from_secs(5));

    // HTTP/1.1 needs a Host; HTTP/1.0 may go without.
    let reply = ask("GET /echo/x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    let reply =
        ask("GET /echo/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    let reply = ask("GET /echo/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&reply), 200, "{reply}");

    // Dot segments are resolved before routing and before the prefix is stripped.
    let reply = ask("GET /echo/../other/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(
        reply.contains("upstream=other\n") && reply.contains("path=/x\n"),
        "{reply}"
    );
    let reply =
        ask("GET /echo/%2e%2e/other/y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert!(
        reply.contains("upstream=other\n") && reply.contains("path=/y\n"),
        "{reply}"
    );
    let reply =
        ask("GET /echo/../../etc/passwd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&reply), 400, "{reply}");

    // A malformed chunked body is the client's fault, not the upstream's.
    let reply = ask("POST /echo/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&reply), 400, "{reply}");

    // Credentials for a proxy and h2c upgrades stay here, on both ways to the upstream.
    let mut conn = Conn::open(port).await;
    for method in [Method::GET, Method::POST] {
        let body = if method == Method::POST { "b" } else { "" };
        let req = Request::builder()
            .method(method.clone())
            .uri("/echo/x")
            .header(header::HOST, "h")
            .header(header::PROXY_AUTHORIZATION, "Basic c2VjcmV0")
            .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
            .header(header::UPGRADE, "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let reply = conn.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        let seen = reply.seen();
        assert_eq!(seen["proxy-authorization"], "", "{method}");
        assert_eq!(seen["upgrade"], "", "{method}");
        assert_eq!(seen["http2-settings"], "", "{method}");
        assert_eq!(seen["path"], "/x", "{method}");
    }
    proxy.stop().await;
}
