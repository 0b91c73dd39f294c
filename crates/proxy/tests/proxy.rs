//! End-to-end tests of the proxy: real upstream servers, a real proxy on loopback programmed
//! through its control socket, real HTTP and websocket clients.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use starphleet_proxy::{ProxyClient, ProxyOptions, Upstream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn routes_by_longest_prefix_on_segments_and_strips_it() {
    let (root, echo, deep) = (
        Backend::start("root").await,
        Backend::start("echo").await,
        Backend::start("deep").await,
    );
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(
            port,
            vec![
                route("/", "root", &[&root]),
                route("/echo", "echo", &[&echo]),
                route("/echo/deep/", "deep", &[&deep]),
            ],
        )]))
        .await;

    for (path, upstream, seen_path) in [
        ("/echo/Hi?x=1&y=2", "echo", "/Hi?x=1&y=2"),
        ("/echo", "echo", "/"),
        ("/echo/", "echo", "/"),
        ("/echo?q", "echo", "/?q"),
        ("/echoes", "root", "/echoes"),
        ("/echo/deep", "deep", "/"),
        ("/echo/deep/x/y", "deep", "/x/y"),
        ("/echo/deeper", "echo", "/deeper"),
        ("/", "root", "/"),
        ("/other/thing?z", "root", "/other/thing?z"),
    ] {
        let reply = get(port, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let seen = reply.seen();
        assert_eq!(seen["upstream"], upstream, "{path}");
        assert_eq!(seen["path"], seen_path, "{path}");
    }

    let status = proxy.client.status().await.unwrap();
    assert_eq!(status.requests["echo"], 5);
    assert_eq!(status.requests["root"], 3);
    assert_eq!(status.requests["deep"], 2);
    assert_eq!(status.listening, vec![port]);
    assert_eq!(status.table.ship, SHIP);
    proxy.stop().await;
}

#[tokio::test]
async fn sets_forwarded_headers_and_drops_hop_by_hop_ones() {
    let (root, echo) = (Backend::start("root").await, Backend::start("echo").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(
            port,
            vec![
                route("/", "root", &[&root]),
                route("/echo", "echo", &[&echo]),
            ],
        )]))
        .await;

    let mut conn = Conn::open(port).await;
    let req = Request::get("/echo/Hi")
        .header(header::HOST, "example.test:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header(header::CONNECTION, "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .body(Full::default())
        .unwrap();
    let seen = conn.send(req).await.seen();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "example.test:8080");
    assert_eq!(seen["host"], "example.test:8080");
    assert_eq!(seen["x-forwarded-prefix"], "/echo");
    assert_eq!(
        seen["x-secret"], "",
        "headers named in Connection are hop-by-hop"
    );
    assert_ne!(seen["connection"], "keep-alive, x-secret");

    // At the root there is no prefix to report, and a client cannot fake one.
    let req = Request::get("/x")
        .header(header::HOST, "example.test")
        .header("x-forwarded-prefix", "/fake")
        .body(Full::default())
        .unwrap();
    let seen = conn.send(req).await.seen();
    assert_eq!(seen["upstream"], "root");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-prefix"], "");
    proxy.stop().await;
}

#[tokio::test]
async fn serves_http2_prior_knowledge() {
    let echo = Backend::start("echo").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&echo])])]))
        .await;

    let mut sender = h2_open(port).await;
    let req = Request::get(format!("http://h2.test:{port}/echo/two?x"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = collect(sender.send_request(req).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.seen();
    assert_eq!(seen["path"], "/two?x");
    assert_eq!(seen["host"], format!("h2.test:{port}"));
    assert_eq!(seen["x-forwarded-host"], format!("h2.test:{port}"));
    proxy.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_naming_the_ship() {
    let echo = Backend::start("echo").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&echo])])]))
        .await;

    let reply = get(port, "/nope/x").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        reply.body,
        "starphleet ship test-ship: nothing is published at /nope/x\n"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_naming_the_service() {
    let proxy = Proxy::start().await;
    let port = free_port();
    let dead = Upstream {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        version: "v1".into(),
        container: "dead-1".into(),
    };
    let mut r = route("/api", "api", &[]);
    r.upstreams = vec![dead];
    proxy.set(&table([(port, vec![r])])).await;

    let reply = get(port, "/api/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(reply.body.contains("api"), "{}", reply.body);
    assert_eq!(proxy.in_flight("dead-1").await, 0);
    proxy.stop().await;
}

#[tokio::test]
async fn no_upstreams_is_503_with_retry_after() {
    let proxy = Proxy::start().await;
    let port = free_port();
    let mut later = route("/later", "later", &[]);
    later.retry_after = Some(7);
    proxy
        .set(&table([(port, vec![later, route("/soon", "soon", &[])])]))
        .await;

    let reply = get(port, "/later/x").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[header::RETRY_AFTER], "7");
    assert!(reply.body.contains("later"));
    let reply = get(port, "/soon").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    proxy.stop().await;
}

#[tokio::test]
async fn health_answers_on_every_port() {
    let root = Backend::start("root").await;
    let proxy = Proxy::start().await;
    let (a, b) = (free_port(), free_port());
    proxy
        .set(&table([
            (a, vec![route("/", "root", &[&root])]),
            (b, vec![route("/x", "x", &[])]),
        ]))
        .await;
    for port in [a, b] {
        let reply = get(port, "/starphleet/health").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "ok");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn swap_sends_new_requests_to_new_upstream_while_old_one_drains() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&old])])]))
        .await;

    // A long response from the old version, its body still streaming across the swap.
    let mut slow_conn = Conn::open(port).await;
    let resp = slow_conn.0.send_request(get_req(port, "/echo/wait")).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "start\n");
    assert_eq!(proxy.in_flight(&old.container()).await, 1);

    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&new])])]))
        .await;
    assert_eq!(get(port, "/echo/x").await.seen()["upstream"], "new");
    let status = proxy.client.status().await.unwrap();
    assert_eq!(status.in_flight.get(&old.container()), Some(&1));
    assert_eq!(status.in_flight.get(&new.container()), Some(&0));

    old.gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "end old\n");
    eventually("the old container is idle", || async {
        proxy.in_flight(&old.container()).await == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn keep_alive_connection_follows_a_swap() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&old])])]))
        .await;

    let mut conn = Conn::open(port).await;
    assert_eq!(conn.get(port, "/a").await.seen()["upstream"], "old");
    proxy
        .set(&table([(port, vec![route("/", "app", &[&new])])]))
        .await;
    assert_eq!(conn.get(port, "/b").await.seen()["upstream"], "new");
    assert_eq!(conn.get(port, "/c").await.seen()["upstream"], "new");
    proxy.stop().await;
}

#[tokio::test]
async fn picks_the_upstream_with_fewest_requests_in_flight() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&a, &b])])]))
        .await;

    // Hold one request open on whichever upstream gets it; every later one must go elsewhere.
    let mut held = Conn::open(port).await;
    let resp = held.0.send_request(get_req(port, "/wait")).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let status = proxy.client.status().await.unwrap();
    let busy = if status.in_flight[&a.container()] == 1 {
        &a
    } else {
        &b
    };
    for _ in 0..6 {
        let seen = get(port, "/x").await.seen();
        assert_ne!(seen["upstream"], busy.name);
    }
    busy.gate.notify_one();
    body.collect().await.unwrap();
    proxy.stop().await;
}

/// RFC 8441: a websocket on an HTTP/2 stream (extended CONNECT, as browsers open one on an h2
/// connection) reaches an app that only speaks the HTTP/1.1 upgrade, and is counted in flight.
#[tokio::test]
async fn a_websocket_over_http2_reaches_an_http1_app() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&app])])]))
        .await;

    let mut h2 = h2_open(port).await;
    let connect = || {
        let mut req = Request::connect(format!("http://h2.test:{port}/echo/ws"))
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    // The server's SETTINGS (which allow extended CONNECT) may not have arrived yet.
    let mut resp = None;
    for _ in 0..50 {
        match h2.send_request(connect()).await {
            Ok(r) => {
                resp = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let resp = resp.expect("the proxy accepts an extended CONNECT");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key(header::UPGRADE));
    assert!(!resp.headers().contains_key(header::SEC_WEBSOCKET_ACCEPT));
    let io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    for text in ["hi", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().to_text().unwrap(),
            format!("app:{text}")
        );
    }
    // An app that answers the upgrade with a page: 502, never a tunnel to nowhere.
    let mut refused = connect();
    *refused.uri_mut() = format!("http://h2.test:{port}/echo/no-upgrade")
        .parse()
        .unwrap();
    let refused = h2.send_request(refused).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let text = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("instead of switching to websocket"),
        "{text:?}"
    );
    assert_eq!(proxy.in_flight(&app.container()).await, 1);
    // The same connection still serves plain requests beside it.
    let get = Request::get(format!("http://h2.test:{port}/echo/plain"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(get).await.unwrap().status(), StatusCode::OK);
    // Closed as a browser does: the close handshake, then the stream ends.
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    eventually("the websocket leaves the in-flight count", || async {
        proxy.in_flight(&app.container()).await == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn websocket_echoes_through_the_proxy_and_survives_a_swap() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&old])])]))
        .await;

    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/echo/ws"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "old:hi"
    );
    assert_eq!(proxy.in_flight(&old.container()).await, 1);

    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&new])])]))
        .await;
    ws.send(Message::text("still")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "old:still"
    );
    assert_eq!(proxy.in_flight(&old.container()).await, 1);

    // New connections go to the new version.
    let (mut ws2, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/echo/ws"))
        .await
        .unwrap();
    ws2.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        ws2.next().await.unwrap().unwrap().to_text().unwrap(),
        "new:hi"
    );

    ws.close(None).await.unwrap();
    ws2.close(None).await.unwrap();
    drop((ws, ws2));
    eventually("the upgraded connections are closed", || async {
        proxy.in_flight(&old.container()).await == 0 && proxy.in_flight(&new.container()).await == 0
    })
    .await;
    proxy.stop().await;
}

async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test]
async fn ports_follow_the_table() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let (a, b) = (free_port(), free_port());
    assert!(refused(a).await);

    proxy
        .set(&table([(a, vec![route("/", "app", &[&app])])]))
        .await;
    assert_eq!(get(a, "/").await.status, StatusCode::OK);
    assert!(refused(b).await);

    proxy
        .set(&table([
            (a, vec![route("/", "app", &[&app])]),
            (b, vec![route("/", "app", &[&app])]),
        ]))
        .await;
    assert_eq!(get(b, "/").await.status, StatusCode::OK);
    assert_eq!(proxy.client.status().await.unwrap().listening, {
        let mut both = vec![a, b];
        both.sort();
        both
    });

    // An open connection on a dropped port finishes its business.
    let mut open = Conn::open(a).await;
    proxy
        .set(&table([(b, vec![route("/", "app", &[&app])])]))
        .await;
    eventually("port a is closed", || refused(a)).await;
    assert_eq!(get(b, "/").await.status, StatusCode::OK);
    assert_eq!(open.get(a, "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(proxy.client.status().await.unwrap().listening, vec![b]);

    proxy.set(&table([])).await;
    eventually("port b is closed", || refused(b)).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_reported_and_retried() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_port();
    let both = table([
        (busy, vec![route("/", "app", &[&app])]),
        (free, vec![route("/", "app", &[&app])]),
    ]);

    proxy.set(&both).await;
    let status = proxy.client.status().await.unwrap();
    assert_eq!(status.listening, vec![free]);
    assert!(status.bind_errors.contains_key(&busy), "{status:?}");
    assert_eq!(get(free, "/").await.status, StatusCode::OK);

    drop(taken);
    proxy.set(&both).await;
    let status = proxy.client.status().await.unwrap();
    assert_eq!(status.bind_errors, BTreeMap::new());
    assert_eq!(get(busy, "/").await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn a_bad_table_is_refused_and_the_old_one_kept() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    let good = table([(port, vec![route("/app", "app", &[&app])])]);
    proxy.set(&good).await;

    let bad = table([(
        port,
        vec![route("/x", "x", &[&app]), route("/x/", "y", &[&app])],
    )]);
    let err = proxy.client.set_routes(&bad).await.unwrap_err();
    assert!(format!("{err:#}").contains("/x"), "{err:#}");
    assert_eq!(proxy.client.status().await.unwrap().table, good);
    assert_eq!(get(port, "/app").await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_proxy_on_the_same_socket_is_refused() {
    let proxy = Proxy::start().await;
    let err = starphleet_proxy::run(ProxyOptions {
        listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..ProxyOptions::new(&proxy.socket)
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    assert!(proxy.client.is_running().await);
    proxy.stop().await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let client = ProxyClient::new(&socket);
    assert!(!client.is_running().await);

    let task = tokio::spawn(starphleet_proxy::run(ProxyOptions {
        listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..ProxyOptions::new(&socket)
    }));
    eventually("the proxy answers", || client.is_running()).await;
    client.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    assert!(!socket.exists(), "the proxy removes its socket on exit");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/", "app", &[&app])])]))
        .await;

    let mut conn = Conn::open(port).await;
    let resp = conn.0.send_request(get_req(port, "/wait")).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();

    let client = proxy.client.clone();
    let stopping = tokio::spawn(proxy.stop());
    eventually("the proxy stops accepting", || refused(port)).await;
    assert!(!stopping.is_finished(), "the proxy waits for the request");
    app.gate.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "end app\n");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(!client.is_running().await);
}

#[tokio::test]
async fn counts_each_route_by_status_class_and_writes_each_containers_access_log() {
    let echo = Backend::start("echo").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(
            port,
            vec![
                route("/echo", "echo", &[&echo]),
                route("/none", "none", &[]),
            ],
        )]))
        .await;
    for _ in 0..7 {
        assert_eq!(get(port, "/echo/Hi").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            get(port, "/none/x").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(get(port, "/nowhere").await.status, StatusCode::NOT_FOUND);

    eventually("every request is counted", || async {
        let routes = proxy.client.status().await.unwrap().routes;
        routes.iter().map(|r| r.requests()).sum::<u64>() == 9
    })
    .await;
    let routes = proxy.client.status().await.unwrap().routes;
    let echo_route = routes.iter().find(|r| r.prefix == "/echo").unwrap();
    assert_eq!(echo_route.requests_by_class, [0, 7, 0, 0, 0]);
    assert_eq!(echo_route.service, "echo");
    assert_eq!(echo_route.port, port);
    assert!(echo_route.response_bytes > 0);
    assert_eq!(echo_route.latency_counts.iter().sum::<u64>(), 7);
    assert!(echo_route.latency_quantile(0.5).is_some());
    let none_route = routes.iter().find(|r| r.prefix == "/none").unwrap();
    assert_eq!(none_route.requests_by_class, [0, 0, 0, 0, 2]);

    let log = std::fs::read_to_string(
        proxy
            ._dir
            .path()
            .join("access")
            .join(format!("{}.log", echo.container())),
    )
    .unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 7, "{log}");
    assert!(
        lines[0].starts_with("method=GET path=/echo/Hi status=200 bytes="),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" version=v1 client=127.0.0.1:"),
        "{}",
        lines[0]
    );
    proxy.stop().await;
}
