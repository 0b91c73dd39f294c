//! The proxy as a public edge: TLS with certificates picked by SNI and swapped live, HTTP/2 by
//! ALPN, virtual hosts, HTTPS redirects, ACME challenges and the offline switch. Real TLS
//! clients (rustls, curl), real HTTP/1.1, HTTP/2 and websocket clients, on loopback.

mod common;

use common::*;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{header, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use starphleet_proxy::{CertFiles, RouteTable};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A table serving `routes` on `port` over TLS with `certs`.
fn tls_table(port: u16, routes: Vec<starphleet_proxy::Route>, certs: Vec<CertFiles>) -> RouteTable {
    RouteTable {
        tls_ports: BTreeSet::from([port]),
        certs,
        ..table([(port, routes)])
    }
}

fn hosted(mut r: starphleet_proxy::Route, hosts: &[&str]) -> starphleet_proxy::Route {
    r.hosts = hosts.iter().map(|h| h.to_string()).collect();
    r
}

/// Runs curl against the proxy on loopback as `host`; returns its stdout.
async fn curl(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl finishes")
    .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn tls_serves_http1_and_http2_by_alpn_with_forwarded_proto_https() {
    let app = Backend::start("app").await;
    let pki = Pki::new();
    let (cert, _) = pki.issue("app", &["app.test"]);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&tls_table(
            port,
            vec![route("/echo", "app", &[&app])],
            vec![cert],
        ))
        .await;

    // HTTP/1.1 over TLS with a rustls client.
    let stream = tls_connect(pki.client(&[b"http/1.1"]), port, "app.test")
        .await
        .unwrap();
    assert_eq!(peer(&stream).1.as_deref(), Some(&b"http/1.1"[..]));
    let mut conn = tls_conn(stream).await;
    let req = Request::get("/echo/hi?x=1")
        .header(header::HOST, format!("app.test:{port}"))
        .body(Full::default())
        .unwrap();
    let seen = conn.send(req).await.seen();
    assert_eq!(seen["path"], "/hi?x=1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], format!("app.test:{port}"));
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "apps are spoken to in HTTP/1.1"
    );

    // ALPN h2: a real HTTP/2 client.
    let stream = tls_connect(pki.client(&[b"h2", b"http/1.1"]), port, "app.test")
        .await
        .unwrap();
    assert_eq!(peer(&stream).1.as_deref(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://app.test:{port}/echo/two"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = collect(resp).await.seen();
    assert_eq!(seen["path"], "/two");
    assert_eq!(
        seen["host"],
        format!("app.test:{port}"),
        ":authority becomes Host"
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["version"], "HTTP/1.1");

    // curl, with the test CA, over HTTP/1.1 and HTTP/2.
    let resolve = format!("app.test:{port}:127.0.0.1");
    let ca = pki.ca_pem.to_str().unwrap();
    let url = format!("https://app.test:{port}/echo/curl");
    let body = curl(&["--resolve", &resolve, "--cacert", ca, "--http1.1", &url]).await;
    assert!(body.contains("path=/curl\n"), "{body}");
    let version = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        ca,
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await;
    assert_eq!(version, "2");

    // A name the proxy has no certificate for gets no handshake.
    assert!(tls_connect(pki.client(&[b"http/1.1"]), port, "other.test")
        .await
        .is_err());
    proxy.stop().await;
}

#[tokio::test]
async fn a_websocket_works_over_tls() {
    let app = Backend::start("app").await;
    let pki = Pki::new();
    let (cert, _) = pki.issue("app", &["app.test"]);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&tls_table(
            port,
            vec![route("/echo", "app", &[&app])],
            vec![cert],
        ))
        .await;

    let stream = tls_connect(pki.client(&[b"http/1.1"]), port, "app.test")
        .await
        .unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://app.test:{port}/echo/ws"), stream)
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hi", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("app:{text}"));
    }
    ws.close(None).await.unwrap();
    drop(ws);
    eventually("the upgraded connection is closed", || async {
        proxy.in_flight(&app.container()).await == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_new_certificate_reaches_new_handshakes_and_open_connections_keep_working() {
    let app = Backend::start("app").await;
    let other = Backend::start("other").await;
    let pki = Pki::new();
    let (first, first_der) = pki.issue("first", &["app.test"]);
    let (other_cert, other_der) = pki.issue("other", &["*.other.test"]);
    let proxy = Proxy::start().await;
    let port = free_port();
    let routes = || {
        vec![
            hosted(route("/", "app", &[&app]), &["app.test"]),
            hosted(route("/", "other", &[&other]), &["*.other.test"]),
        ]
    };
    proxy
        .set(&tls_table(
            port,
            routes(),
            vec![first.clone(), other_cert.clone()],
        ))
        .await;

    // A new client config for each handshake: none resumes an earlier session, whose
    // certificate would be the one of its first handshake.
    let client = || pki.client(&[b"http/1.1"]);
    let open = tls_connect(client(), port, "app.test").await.unwrap();
    assert_eq!(peer(&open).0, first_der);
    let mut open = tls_conn(open).await;
    let req = Request::get("/a")
        .header(header::HOST, "app.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(open.send(req).await.status, StatusCode::OK);

    // New files for the host: new handshakes get them, the open connection carries on.
    let (second, second_der) = pki.issue("second", &["app.test"]);
    proxy
        .set(&RouteTable {
            generation: 1,
            ..tls_table(port, routes(), vec![second.clone(), other_cert.clone()])
        })
        .await;
    let fresh = tls_connect(client(), port, "app.test").await.unwrap();
    assert_eq!(peer(&fresh).0, second_der);
    let req = Request::get("/b")
        .header(header::HOST, "app.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(open.send(req).await.seen()["upstream"], "app");

    // Files that fail to load keep the certificate in force, reported; other hosts serve on.
    let broken = CertFiles {
        hosts: vec!["app.test".into()],
        cert_path: pki.dir.path().join("missing.crt"),
        key_path: second.key_path.clone(),
    };
    proxy
        .set(&RouteTable {
            generation: 2,
            ..tls_table(port, routes(), vec![broken, other_cert])
        })
        .await;
    let status = proxy.client.status().await.unwrap();
    let error = &status.cert_errors["app.test"];
    assert!(error.contains("missing.crt"), "{error}");
    let kept = tls_connect(client(), port, "app.test").await.unwrap();
    assert_eq!(peer(&kept).0, second_der);
    let wild = tls_connect(client(), port, "a.other.test").await.unwrap();
    assert_eq!(peer(&wild).0, other_der);
    let mut wild = tls_conn(wild).await;
    let req = Request::get("/w")
        .header(header::HOST, "a.other.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(wild.send(req).await.seen()["upstream"], "other");

    // A host the connection's certificate does not cover is refused on it (421).
    let req = Request::get("/w")
        .header(header::HOST, "a.other.test")
        .body(Full::default())
        .unwrap();
    assert_eq!(open.send(req).await.status, StatusCode::MISDIRECTED_REQUEST);
    proxy.stop().await;
}

#[tokio::test]
async fn hosts_pick_routes_exact_then_wildcard_then_any() {
    let (a, b, wild, any) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("wild").await,
        Backend::start("any").await,
    );
    let proxy = Proxy::start().await;
    let (port, strict) = (free_port(), free_port());
    proxy
        .set(&table([
            (
                port,
                vec![
                    hosted(route("/api", "a", &[&a]), &["a.test"]),
                    hosted(route("/api", "b", &[&b]), &["b.test"]),
                    hosted(route("/api", "wild", &[&wild]), &["*.a.test"]),
                    route("/api", "any", &[&any]),
                ],
            ),
            (strict, vec![hosted(route("/", "a", &[&a]), &["a.test"])]),
        ]))
        .await;

    let mut conn = Conn::open(port).await;
    for (host, expected) in [
        ("a.test", "a"),
        ("B.Test:8080", "b"),
        ("x.a.test", "wild"),
        ("a.b.a.test", "any"),
        ("c.test", "any"),
    ] {
        let req = Request::get("/api/x")
            .header(header::HOST, host)
            .body(Full::default())
            .unwrap();
        let reply = conn.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
        let seen = reply.seen();
        assert_eq!(seen["upstream"], expected, "{host}");
        assert_eq!(seen["path"], "/x", "{host}");
    }

    // A port with only hosted routes: an unknown host gets the 404 page.
    let mut conn = Conn::open(strict).await;
    let req = Request::get("/x")
        .header(header::HOST, "nobody.test")
        .body(Full::default())
        .unwrap();
    let reply = conn.send(req).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.body,
        "starphleet ship test-ship: nothing is published at /x\n"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn plain_http_redirects_to_https_but_answers_acme_challenges() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    let mut redirect = hosted(route("/", "app", &[&app]), &["app.test"]);
    redirect.https_redirect = Some(8443);
    let mut default_port = hosted(route("/", "app", &[&app]), &["www.test"]);
    default_port.https_redirect = Some(443);
    let mut t = table([(port, vec![redirect, default_port])]);
    t.acme
        .http01
        .insert("tok-123".into(), "tok-123.thumbprint".into());
    proxy.set(&t).await;

    let mut conn = Conn::open(port).await;
    let send = |host: &str, path: &str| {
        Request::get(path)
            .header(header::HOST, host)
            .body(Full::default())
            .unwrap()
    };
    let reply = conn.send(send("app.test:80", "/a/b?x=1&y")).await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.headers[header::LOCATION],
        "https://app.test:8443/a/b?x=1&y"
    );
    let reply = conn.send(send("www.test", "/")).await;
    assert_eq!(reply.headers[header::LOCATION], "https://www.test/");

    // HTTP-01: the key authorization, as text, for any host, even a redirected one.
    for host in ["app.test", "unknown.test"] {
        let reply = conn
            .send(send(host, "/.well-known/acme-challenge/tok-123"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
        assert_eq!(reply.body, "tok-123.thumbprint");
        assert!(reply.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
    // Another token is not the proxy's: never redirected, it goes to the app.
    let reply = conn
        .send(send("app.test", "/.well-known/acme-challenge/other"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.seen()["path"], "/.well-known/acme-challenge/other");
    proxy.stop().await;
}

#[tokio::test]
async fn tls_alpn_01_presents_the_challenge_certificate_and_closes() {
    let app = Backend::start("app").await;
    let pki = Pki::new();
    let (cert, cert_der) = pki.issue("app", &["app.test"]);
    let (challenge, challenge_der) = pki.issue("challenge", &["app.test"]);
    let proxy = Proxy::start().await;
    let port = free_port();
    let mut t = tls_table(port, vec![route("/", "app", &[&app])], vec![cert]);
    t.acme.tls_alpn01 = vec![challenge];
    proxy.set(&t).await;

    let acme = |alpn: &[&[u8]]| {
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        std::sync::Arc::new(config)
    };
    let mut stream = tls_connect(acme(&[b"acme-tls/1"]), port, "app.test")
        .await
        .unwrap();
    let (presented, alpn) = peer(&stream);
    assert_eq!(presented, challenge_der);
    assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the proxy closes a TLS-ALPN-01 connection");
    assert!(rest.is_empty());

    // Ordinary handshakes still get the ordinary certificate.
    let stream = tls_connect(acme(&[b"http/1.1"]), port, "app.test")
        .await
        .unwrap();
    assert_eq!(peer(&stream).0, cert_der);
    // No challenge for the name: no handshake.
    assert!(tls_connect(acme(&[b"acme-tls/1"]), port, "b.test")
        .await
        .is_err());
    proxy.stop().await;
}

#[tokio::test]
async fn offline_health_is_503_on_every_port_and_the_rest_is_served() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let (a, b) = (free_port(), free_port());
    let mut t = table([
        (a, vec![route("/", "app", &[&app])]),
        (b, vec![route("/x", "app", &[&app])]),
    ]);
    t.offline = true;
    proxy.set(&t).await;
    for port in [a, b] {
        let reply = get(port, "/starphleet/health").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.body, "offline\n");
    }
    assert_eq!(get(a, "/app").await.status, StatusCode::OK);
    t.offline = false;
    t.generation = 1;
    proxy.set(&t).await;
    assert_eq!(get(b, "/starphleet/health").await.status, StatusCode::OK);
    proxy.stop().await;
}
