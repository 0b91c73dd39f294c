//! The control plane's side of the proxy: table generations, pings, waiting for containers to
//! go idle, and a persistent control connection. Real proxy, real upstreams, real sockets.

mod common;

use common::*;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use starphleet_proxy::{ControlError, Idle, ProxyClient, RouteTable};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A table sending every request on `port` to `backend`, numbered `generation`.
fn routes_to(port: u16, backend: &Backend, generation: u64) -> RouteTable {
    RouteTable {
        generation,
        ..table([(port, vec![route("/", backend.name, &[backend])])])
    }
}

/// Starts a `/wait` request, whose body the backend holds until its gate opens, and returns
/// once its first chunk arrived: the request is in flight.
async fn hold(port: u16) -> (Conn, Incoming) {
    let mut conn = Conn::open(port).await;
    let resp = conn.0.send_request(get_req(port, "/wait")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "start\n");
    (conn, body)
}

/// A `wait_idle` call on a connection of its own, with when it was answered.
fn wait_idle(
    client: &ProxyClient,
    containers: &[String],
    timeout: Duration,
) -> JoinHandle<(Result<Idle, ControlError>, Instant)> {
    let client = client.clone();
    let containers = containers.to_vec();
    tokio::spawn(async move {
        let answer = client.wait_idle(&containers, timeout).await;
        (answer, Instant::now())
    })
}

#[tokio::test]
async fn an_older_generation_is_refused_and_the_table_in_force_kept() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    let pong = proxy.client.ping(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pong.generation, 0, "a fresh proxy is at generation 0");
    assert_eq!(pong.pid, std::process::id());

    let five = routes_to(port, &a, 5);
    proxy.set(&five).await;
    assert_eq!(get(port, "/").await.seen()["upstream"], "a");
    let status = proxy.client.status().await.unwrap();
    assert_eq!((status.generation, &status.table), (5, &five));

    let err = proxy
        .client
        .set_routes(&routes_to(port, &b, 4))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Stale { current: 5 }), "{err:?}");
    assert!(err.to_string().contains("generation 5"), "{err}");
    assert_eq!(proxy.client.status().await.unwrap().table, five);
    assert_eq!(get(port, "/").await.seen()["upstream"], "a");

    proxy.set(&routes_to(port, &b, 5)).await;
    assert_eq!(
        get(port, "/").await.seen()["upstream"],
        "b",
        "equal is accepted"
    );
    proxy.set(&routes_to(port, &a, 6)).await;
    assert_eq!(get(port, "/").await.seen()["upstream"], "a");
    let pong = proxy.client.ping(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pong.generation, 6);
    assert_eq!(proxy.client.status().await.unwrap().generation, 6);
    proxy.stop().await;
}

#[tokio::test]
async fn wait_idle_answers_when_the_last_request_ends() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy.set(&routes_to(port, &old, 1)).await;
    let (_conn, body) = hold(port).await;
    // As the control plane drains a version: swap it out, then wait for its requests.
    proxy.set(&routes_to(port, &new, 2)).await;
    let gone = [old.container()];
    let waits = [
        wait_idle(&proxy.client, &gone, Duration::from_secs(10)),
        wait_idle(&proxy.client, &gone, Duration::from_secs(10)),
    ];

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waits.iter().all(|w| !w.is_finished()),
        "the request is still in flight"
    );
    // Other connections are served meanwhile, including the status cleanup of idle counters.
    assert_eq!(get(port, "/").await.seen()["upstream"], "new");
    assert_eq!(proxy.in_flight(&old.container()).await, 1);

    let opened = Instant::now();
    old.gate.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "end old\n");
    let done = Instant::now();
    for wait in waits {
        let (answer, at) = wait.await.unwrap();
        assert_eq!(answer.unwrap(), Idle::Idle);
        assert!(at > opened, "answered before the response ended");
        let late = at.saturating_duration_since(done);
        assert!(late < Duration::from_millis(200), "answered {late:?} late");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn wait_idle_past_its_timeout_is_busy_and_idle_ones_answer_at_once() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy.set(&routes_to(port, &app, 1)).await;
    let long = Duration::from_secs(10);

    // Known and idle, or never heard of: both idle, at once.
    assert_eq!(get(port, "/").await.status, StatusCode::OK);
    for containers in [vec![app.container()], vec!["nobody-1".to_string()], vec![]] {
        let begun = Instant::now();
        let answer = proxy.client.wait_idle(&containers, long).await.unwrap();
        assert_eq!(answer, Idle::Idle, "{containers:?}");
        assert!(
            begun.elapsed() < Duration::from_millis(250),
            "{containers:?}"
        );
    }

    let (_conn, body) = hold(port).await;
    let begun = Instant::now();
    let both = [app.container(), "nobody-1".to_string()];
    let answer = proxy
        .client
        .wait_idle(&both, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(answer, Idle::Busy { in_flight: 1 });
    let took = begun.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    app.gate.notify_one();
    body.collect().await.unwrap();
    let answer = proxy.client.wait_idle(&both, long).await.unwrap();
    assert_eq!(answer, Idle::Idle);
    proxy.stop().await;
}

#[tokio::test]
async fn an_upgraded_connection_counts_until_it_closes() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy.set(&routes_to(port, &app, 1)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "app:hi"
    );

    let container = [app.container()];
    let answer = proxy
        .client
        .wait_idle(&container, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(answer, Idle::Busy { in_flight: 1 });

    let wait = wait_idle(&proxy.client, &container, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wait.is_finished(), "the websocket is still open");
    let closing = Instant::now();
    ws.close(None).await.unwrap();
    drop(ws);
    let (answer, at) = wait.await.unwrap();
    assert_eq!(answer.unwrap(), Idle::Idle);
    let took = at.duration_since(closing);
    assert!(took < Duration::from_secs(1), "{took:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_control_connection_programs_the_proxy_and_sees_it_go() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    let mut conn = proxy.client.connect().await.unwrap();

    conn.set_routes(&routes_to(port, &app, 3)).await.unwrap();
    assert_eq!(get(port, "/").await.seen()["upstream"], "app");
    let pong = conn.ping(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pong.generation, 3);
    let stale = conn
        .set_routes(&routes_to(port, &app, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ControlError::Stale { current: 3 }),
        "{stale:?}"
    );

    // Waiting for the close and giving up leaves the connection usable.
    let idle = tokio::time::timeout(Duration::from_millis(100), conn.closed()).await;
    assert!(idle.is_err(), "the proxy is still there");
    assert_eq!(
        conn.ping(Duration::from_secs(1)).await.unwrap().generation,
        3
    );

    let stopping = tokio::spawn(proxy.stop());
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection closes when the proxy shuts down");
    let err = conn.ping(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ControlError::Unusable { .. }), "{err:?}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_control_connection_closes_when_the_proxy_task_dies() {
    let proxy = Proxy::start().await;
    let mut conn = proxy.client.connect().await.unwrap();
    assert_eq!(
        conn.ping(Duration::from_secs(1)).await.unwrap().generation,
        0
    );
    // Dropping it aborts the proxy's task, as a crash would end its process.
    drop(proxy);
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection closes when the proxy goes away");
}

#[tokio::test]
async fn no_proxy_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let client = ProxyClient::new(&socket);
    let err = client.ping(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ControlError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*socket.to_string_lossy()),
        "{err}"
    );
    assert!(client.connect().await.is_err());
    assert!(!client.is_running().await);
}
