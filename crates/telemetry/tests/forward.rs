//! Forwarding logs to real endpoints on loopback: a syslog TCP server reading RFC 6587
//! frames, an OTLP/HTTP server (hyper), endpoints that are down, come back, or hang.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use starphleet_telemetry::{
    format_time, ForwardStats, ForwardTarget, ForwardTargetError, Forwarder, Kind, Limits,
    LogStore, Record, OTLP_SETTING, SYSLOG_SETTING,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const T0: u64 = 1_700_000_000_123_456_000;

fn rec(i: u64, service: &str, container: &str, stream: &str, line: &str) -> Record {
    Record {
        time_ns: T0 + i * 1000,
        ship: "ship1".into(),
        service: service.into(),
        version: "abc123-r1".into(),
        container: container.into(),
        kind: Kind::App,
        stream: stream.into(),
        line: line.into(),
    }
}

fn numbered(n: usize, pad: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let line = format!("line {i:06} {}", "x".repeat(pad));
            rec(i as u64, "echo", "c1", "stdout", &line)
        })
        .collect()
}

fn open_store() -> (tempfile::TempDir, LogStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    (dir, store)
}

fn syslog(addr: SocketAddr) -> ForwardTarget {
    ForwardTarget::Syslog {
        addr: addr.to_string(),
    }
}

fn otlp(addr: SocketAddr) -> ForwardTarget {
    ForwardTarget::Otlp {
        url: format!("http://{addr}/v1/logs"),
    }
}

/// A loopback address nobody listens on (yet).
async fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls the forwarder's stats until `ok` holds, or fails after `secs` showing them.
async fn wait_for(fwd: &Forwarder, secs: u64, what: &str, ok: impl Fn(&ForwardStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let stats = fwd.stats();
        if ok(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one RFC 6587 octet-counted frame: `LEN SP MSG`.
async fn read_frame(r: &mut BufReader<TcpStream>) -> String {
    let mut len = Vec::new();
    r.read_until(b' ', &mut len).await.unwrap();
    assert_eq!(len.pop(), Some(b' '), "frame length ends with a space");
    let text = String::from_utf8(len).unwrap();
    assert!(
        !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit()),
        "bad frame length {text:?}"
    );
    let mut msg = vec![0; text.parse().unwrap()];
    r.read_exact(&mut msg).await.unwrap();
    String::from_utf8(msg).unwrap()
}

async fn read_frame_timeout(r: &mut BufReader<TcpStream>, secs: u64) -> String {
    tokio::time::timeout(Duration::from_secs(secs), read_frame(r))
        .await
        .expect("a syslog frame in time")
}

/// An RFC 5424 message split into its parts.
#[derive(Debug)]
struct Syslog {
    pri: u8,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    sd: String,
    msg: String,
}

fn parse_syslog(text: &str) -> Syslog {
    let rest = text.strip_prefix('<').expect("PRI starts with <");
    let (pri, rest) = rest.split_once('>').unwrap();
    let rest = rest.strip_prefix("1 ").expect("VERSION 1");
    let mut fields = rest.splitn(6, ' ');
    let mut next = || fields.next().unwrap().to_string();
    let (timestamp, hostname, app, procid, msgid, rest) =
        (next(), next(), next(), next(), next(), next());
    // The SD element ends at the first `]` not escaped by a backslash.
    assert!(rest.starts_with('['), "structured data in {text:?}");
    let bytes = rest.as_bytes();
    let mut i = 1;
    while bytes[i] != b']' {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    let sd = rest[..=i].to_string();
    let msg = rest[i + 1..]
        .strip_prefix(' ')
        .expect("SP before MSG")
        .to_string();
    for field in [&hostname, &app, &procid, &msgid] {
        assert!(field.bytes().all(|b| (33..=126).contains(&b)), "{field:?}");
    }
    assert!(app.len() <= 48 && procid.len() <= 128 && msgid.len() <= 32);
    Syslog {
        pri: pri.parse().unwrap(),
        timestamp,
        hostname,
        app,
        procid,
        msgid,
        sd,
        msg,
    }
}

#[tokio::test]
async fn syslog_frames_follow_rfc5424_and_arrive_in_order() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd = Forwarder::spawn(&store, syslog(listener.local_addr().unwrap()));

    let long = "s".repeat(60);
    let mut tricky = rec(2, "web app", "c2", "stderr", "oops");
    tricky.version = r#"v"1\x]y"#.into();
    let mut event = rec(3, "", "", "event", "deployed echo");
    event.kind = Kind::Ship;
    event.version = String::new();
    let records = vec![
        rec(0, "echo", "c1", "stdout", "hello world"),
        rec(1, &long, &"p".repeat(200), "stdout", "héllo ünïcode"),
        tricky,
        event,
        rec(4, "echo", "c1", "stdout", ""),
    ];
    store.append(&records[..2]).unwrap();
    store.append(&records[2..]).unwrap();

    let (socket, _) = listener.accept().await.unwrap();
    let mut reader = BufReader::new(socket);
    let mut got = Vec::new();
    for _ in 0..records.len() {
        got.push(parse_syslog(&read_frame_timeout(&mut reader, 10).await));
    }

    // Every record, in order, with its time in RFC 3339 UTC microseconds.
    for (g, r) in got.iter().zip(&records) {
        assert_eq!(g.timestamp, format_time(r.time_ns));
        assert_eq!(g.hostname, "ship1");
    }
    assert_eq!(got[0].timestamp, "2023-11-14T22:13:20.123456Z");
    // local0 (16): info = 134, err = 131.
    let pris: Vec<u8> = got.iter().map(|g| g.pri).collect();
    assert_eq!(pris, [134, 134, 131, 134, 134]);

    let g = &got[0];
    assert_eq!(
        (g.app.as_str(), g.procid.as_str(), g.msgid.as_str()),
        ("echo", "c1", "app")
    );
    assert_eq!(
        g.sd,
        r#"[starphleet@32473 version="abc123-r1" stream="stdout"]"#
    );
    assert_eq!(g.msg, "hello world");

    // Long fields are cut, non-ASCII UTF-8 lines start with a BOM.
    assert_eq!(got[1].app, "s".repeat(48));
    assert_eq!(got[1].procid, "p".repeat(128));
    assert_eq!(got[1].msg, "\u{feff}héllo ünïcode");

    // Header fields are printable ASCII; SD values escape `"`, `\` and `]`.
    assert_eq!(got[2].app, "web_app");
    assert_eq!(
        got[2].sd,
        r#"[starphleet@32473 version="v\"1\\x\]y" stream="stderr"]"#
    );

    // Ship-wide events: no service, no container, no version.
    let g = &got[3];
    assert_eq!(
        (g.app.as_str(), g.procid.as_str(), g.msgid.as_str()),
        ("starphleet", "-", "ship")
    );
    assert_eq!(g.sd, r#"[starphleet@32473 stream="event"]"#);
    assert_eq!(got[4].msg, "");

    wait_for(&fwd, 5, "5 sent", |s| s.sent == 5).await;
    let stats = fwd.stats();
    assert!(stats.connected);
    assert_eq!((stats.dropped, stats.errors, stats.queued), (0, 0, 0));
    assert_eq!(stats.last_error, None);
}

/// What the OTLP test server saw: path, content type and JSON body of each POST.
type Posts = mpsc::UnboundedReceiver<(String, String, Value)>;

/// An OTLP/HTTP server answering the `i`th request with `status(i)`.
async fn otlp_server(
    listener: TcpListener,
    status: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
) -> Posts {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Arc::new(status);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (tx, status, count) = (tx.clone(), status.clone(), count.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, status, count) = (tx.clone(), status.clone(), count.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let ctype = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let json: Value = serde_json::from_slice(&body).unwrap();
                        let code = status(count.fetch_add(1, Ordering::SeqCst));
                        if code.is_success() {
                            let _ = tx.send((path, ctype, json));
                        }
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    rx
}

/// `{key, value: {stringValue}}` lists as pairs.
fn attrs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"]["stringValue"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every log record of a request with the `service.name` of its resource.
fn log_records(body: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for rl in body["resourceLogs"].as_array().unwrap() {
        let resource = attrs(&rl["resource"]["attributes"]);
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .unwrap()
            .1
            .clone();
        for sl in rl["scopeLogs"].as_array().unwrap() {
            assert_eq!(sl["scope"]["name"], "starphleet");
            for lr in sl["logRecords"].as_array().unwrap() {
                out.push((service.clone(), lr.clone()));
            }
        }
    }
    out
}

/// Receives posts until `n` log records came, or fails after `secs`.
async fn collect_records(posts: &mut Posts, n: usize, secs: u64) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while out.len() < n {
        let (path, ctype, body) = tokio::time::timeout_at(deadline, posts.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records posted in time", out.len()))
            .unwrap();
        assert_eq!(path, "/v1/logs");
        assert_eq!(ctype, "application/json");
        out.extend(log_records(&body));
    }
    out
}

#[tokio::test]
async fn otlp_posts_json_log_records_with_their_attributes() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut posts = otlp_server(listener, |_| StatusCode::OK).await;
    let fwd = Forwarder::spawn(&store, otlp(addr));

    let mut event = rec(2, "", "", "event", "deployed echo");
    event.kind = Kind::Ship;
    event.version = String::new();
    store
        .append(&[
            rec(0, "echo", "c1", "stdout", "hello"),
            rec(1, "api", "c9", "stderr", "boom \"quoted\""),
            event,
        ])
        .unwrap();

    let got = collect_records(&mut posts, 3, 10).await;
    assert_eq!(got.len(), 3);
    let find = |service: &str| got.iter().find(|(s, _)| s == service).unwrap().1.clone();

    let echo = find("echo");
    assert_eq!(echo["timeUnixNano"], (T0).to_string());
    assert_eq!(echo["severityText"], "INFO");
    assert_eq!(echo["severityNumber"], 9);
    assert_eq!(echo["body"]["stringValue"], "hello");
    assert_eq!(
        attrs(&echo["attributes"]),
        pairs(&[
            ("container", "c1"),
            ("version", "abc123-r1"),
            ("kind", "app"),
            ("stream", "stdout")
        ])
    );

    let api = find("api");
    assert_eq!(api["timeUnixNano"], (T0 + 1000).to_string());
    assert_eq!(api["severityText"], "ERROR");
    assert_eq!(api["severityNumber"], 17);
    assert_eq!(api["body"]["stringValue"], "boom \"quoted\"");

    // Ship-wide events come from starphleet itself; empty attributes are left out.
    let event = find("starphleet");
    assert_eq!(
        attrs(&event["attributes"]),
        pairs(&[("kind", "ship"), ("stream", "event")])
    );

    wait_for(&fwd, 5, "3 sent", |s| s.sent == 3).await;
    let stats = fwd.stats();
    assert!(stats.connected);
    assert_eq!((stats.dropped, stats.errors), (0, 0));
}

#[tokio::test]
async fn otlp_resources_carry_service_and_host_names() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut posts = otlp_server(listener, |_| StatusCode::OK).await;
    let _fwd = Forwarder::spawn(&store, otlp(addr));
    store
        .append(&[rec(0, "echo", "c1", "stdout", "hello")])
        .unwrap();
    let (_, _, body) = tokio::time::timeout(Duration::from_secs(10), posts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        attrs(&body["resourceLogs"][0]["resource"]["attributes"]),
        pairs(&[("service.name", "echo"), ("host.name", "ship1")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_down_then_up_resumes_with_the_newest_records() {
    let (_dir, store) = open_store();
    let addr = free_addr().await;
    let fwd = Forwarder::spawn(&store, syslog(addr));

    // Down: more records than the forwarder keeps.
    let records = numbered(20_000, 0);
    for chunk in records.chunks(1000) {
        store.append(chunk).unwrap();
    }
    wait_for(&fwd, 10, "errors and drops while down", |s| {
        s.errors >= 2 && s.dropped > 0 && !s.connected
    })
    .await;
    let down = fwd.stats();
    let err = down.last_error.clone().unwrap();
    assert!(
        err.contains("connecting to syslog") && err.contains(&addr.to_string()),
        "{err}"
    );

    // Up: the kept (newest) records arrive in order, ending with the last one.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the forwarder reconnects")
        .unwrap();
    let mut reader = BufReader::new(socket);
    let mut seen = Vec::new();
    loop {
        let msg = parse_syslog(&read_frame_timeout(&mut reader, 10).await).msg;
        let n: usize = msg["line ".len()..].trim().parse().unwrap();
        if let Some(&prev) = seen.last() {
            assert!(n > prev, "record {n} after {prev}");
        }
        seen.push(n);
        if n == records.len() - 1 {
            break;
        }
    }
    wait_for(&fwd, 5, "sent counted", |s| s.sent == seen.len() as u64).await;
    let up = fwd.stats();
    assert!(up.connected);
    assert!(up.dropped > 0 && up.errors >= down.errors, "{up:?}");
    assert_eq!(up.sent + up.dropped, records.len() as u64, "{up:?}");
    // What was dropped is the oldest: the kept records are one unbroken run to the end.
    assert_eq!(seen.len(), records.len() - seen[0]);

    // Later records keep flowing on the same connection.
    store
        .append(&[rec(99_999, "echo", "c1", "stdout", "after")])
        .unwrap();
    assert_eq!(
        parse_syslog(&read_frame_timeout(&mut reader, 10).await).msg,
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_reconnects_when_the_server_restarts() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fwd = Forwarder::spawn(&store, syslog(addr));
    store
        .append(&[rec(0, "echo", "c1", "stdout", "one")])
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let mut reader = BufReader::new(socket);
    assert_eq!(
        parse_syslog(&read_frame_timeout(&mut reader, 10).await).msg,
        "one"
    );

    // The server goes away (closing its connection) and comes back.
    drop(reader);
    drop(listener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    store
        .append(&[rec(1, "echo", "c1", "stdout", "two")])
        .unwrap();
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the forwarder reconnects")
        .unwrap();
    let mut reader = BufReader::new(socket);
    assert_eq!(
        parse_syslog(&read_frame_timeout(&mut reader, 10).await).msg,
        "two"
    );
    wait_for(&fwd, 5, "both sent", |s| s.sent == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_down_then_up_resumes_and_counts() {
    let (_dir, store) = open_store();
    let addr = free_addr().await;
    let fwd = Forwarder::spawn(&store, otlp(addr));

    let records = numbered(300, 0);
    store.append(&records).unwrap();
    wait_for(&fwd, 10, "errors while down", |s| {
        s.errors >= 2 && !s.connected
    })
    .await;
    let err = fwd.stats().last_error.unwrap();
    assert!(
        err.contains(&format!("POST http://{addr}/v1/logs")),
        "{err}"
    );

    // Up, but overloaded at first: 503 is retried, then everything arrives in order.
    let listener = TcpListener::bind(addr).await.unwrap();
    let mut posts = otlp_server(listener, |i| {
        if i == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let got = collect_records(&mut posts, records.len(), 20).await;
    let lines: Vec<&str> = got
        .iter()
        .map(|(_, r)| r["body"]["stringValue"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = records.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(lines, want);
    wait_for(&fwd, 5, "all sent", |s| s.sent == records.len() as u64).await;
    let stats = fwd.stats();
    assert!(stats.connected && stats.errors >= 3, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    assert!(stats.last_error.unwrap().contains("503"));
}

#[tokio::test]
async fn otlp_records_the_endpoint_rejects_are_dropped_not_retried() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut posts = otlp_server(listener, |i| {
        if i == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await;
    let fwd = Forwarder::spawn(&store, otlp(addr));
    store
        .append(&[rec(0, "echo", "c1", "stdout", "bad")])
        .unwrap();
    wait_for(&fwd, 10, "the rejection", |s| s.dropped == 1).await;
    store
        .append(&[rec(1, "echo", "c1", "stdout", "good")])
        .unwrap();
    let got = collect_records(&mut posts, 1, 10).await;
    assert_eq!(got[0].1["body"]["stringValue"], "good");
    wait_for(&fwd, 5, "one sent", |s| s.sent == 1).await;
    let stats = fwd.stats();
    assert_eq!((stats.errors, stats.dropped), (1, 1));
    assert!(stats.last_error.unwrap().contains("400"));
}

/// Accepts connections and never reads from them (a hung endpoint).
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_never_wait_for_a_dead_or_hung_endpoint() {
    let records = numbered(100_000, 200);

    // The same appends with no forwarder, for scale.
    let (_d0, plain) = open_store();
    let start = Instant::now();
    for chunk in records.chunks(1000) {
        plain.append(chunk).unwrap();
    }
    let baseline = start.elapsed();

    let (_dir, store) = open_store();
    let (hole, _hole_task) = black_hole().await;
    let (http_hole, _http_task) = black_hole().await;
    let refused = Forwarder::spawn(&store, syslog(free_addr().await));
    let hung = Forwarder::spawn(&store, syslog(hole));
    let hung_http = Forwarder::spawn(&store, otlp(http_hole));

    let start = Instant::now();
    for chunk in records.chunks(1000) {
        store.append(chunk).unwrap();
    }
    let elapsed = start.elapsed();
    eprintln!("100k appends: {elapsed:?} with 3 stuck forwarders, {baseline:?} without");
    assert!(
        elapsed < baseline * 5 + Duration::from_secs(2),
        "appends took {elapsed:?} with stuck forwarders, {baseline:?} without"
    );

    // Each forwarder kept a bounded backlog and counted the rest as dropped.
    for (name, fwd) in [
        ("refused", &refused),
        ("hung", &hung),
        ("hung http", &hung_http),
    ] {
        wait_for(fwd, 10, name, |s| s.dropped > 0).await;
        let s = fwd.stats();
        assert!(s.queued <= 8192, "{name}: {s:?}");
        assert!(
            s.sent + s.dropped + s.queued <= records.len() as u64,
            "{name}: {s:?}"
        );
    }
    assert!(refused.stats().errors > 0);
}

#[tokio::test]
async fn dropping_the_forwarder_stops_it() {
    let (_dir, store) = open_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd = Forwarder::spawn(&store, syslog(listener.local_addr().unwrap()));
    store
        .append(&[rec(0, "echo", "c1", "stdout", "one")])
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let mut reader = BufReader::new(socket);
    read_frame_timeout(&mut reader, 10).await;
    drop(fwd);
    // Its connection closes and later records go nowhere.
    store
        .append(&[rec(1, "echo", "c1", "stdout", "two")])
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest))
        .await
        .expect("the connection closes")
        .unwrap();
    assert!(rest.is_empty());
}

fn settings(list: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs(list)
}

#[test]
fn settings_name_syslog_and_otlp_endpoints() {
    let targets = ForwardTarget::from_settings(&settings(&[
        ("STARPHLEET_POLL_INTERVAL", "5s"),
        ("STARPHLEET_LOG_SYSLOG", "tcp://logs.example.com:514"),
        ("STARPHLEET_LOG_OTLP", "http://collector:4318/v1/logs"),
    ]))
    .unwrap();
    assert_eq!(
        targets,
        [
            ForwardTarget::Syslog {
                addr: "logs.example.com:514".into()
            },
            ForwardTarget::Otlp {
                url: "http://collector:4318/v1/logs".into()
            },
        ]
    );
    assert_eq!(targets[0].to_string(), "syslog tcp://logs.example.com:514");

    // No settings, or empty ones: nothing forwarded. A repeated key: the last wins.
    assert_eq!(ForwardTarget::from_settings(&[]).unwrap(), []);
    assert_eq!(
        ForwardTarget::from_settings(&settings(&[("STARPHLEET_LOG_SYSLOG", " ")])).unwrap(),
        []
    );
    assert_eq!(
        ForwardTarget::from_settings(&settings(&[
            ("STARPHLEET_LOG_SYSLOG", "nonsense"),
            ("STARPHLEET_LOG_SYSLOG", "tcp://[::1]:6514/"),
            ("STARPHLEET_LOG_OTLP", "http://127.0.0.1:4318"),
        ]))
        .unwrap(),
        [
            ForwardTarget::Syslog {
                addr: "[::1]:6514".into()
            },
            // The standard path is filled in when the URL has none.
            ForwardTarget::Otlp {
                url: "http://127.0.0.1:4318/v1/logs".into()
            },
        ]
    );
}

#[test]
fn bad_settings_say_which_key_and_what_form() {
    let err = |key: &str, value: &str| {
        let e = ForwardTarget::from_settings(&settings(&[(key, value)])).unwrap_err();
        let named = match &e {
            ForwardTargetError::Syslog { value: v, .. } => (SYSLOG_SETTING, v),
            ForwardTargetError::Otlp { value: v, .. } => (OTLP_SETTING, v),
        };
        assert_eq!(
            named,
            (key, &value.to_string()),
            "the error names the setting"
        );
        e.to_string()
    };
    for (value, why) in [
        ("logs.example.com:514", "tcp:// scheme is missing"),
        ("udp://logs.example.com:514", "udp:// is not supported"),
        ("tls://logs.example.com:6514", "tls:// is not supported"),
        ("tcp://logs.example.com", "port is missing"),
        ("tcp://logs.example.com:syslog", "not a port number"),
        ("tcp://logs.example.com:0", "not a port number"),
        ("tcp://:514", "host is missing"),
        ("tcp://::1:514", "IPv6 address in brackets"),
        ("tcp://logs.example.com:514/x", "no path"),
    ] {
        let e = err("STARPHLEET_LOG_SYSLOG", value);
        assert!(
            e.starts_with(&format!("STARPHLEET_LOG_SYSLOG={value:?}: ")),
            "{e}"
        );
        assert!(e.contains(why), "{value}: {e}");
        assert!(e.contains("expected tcp://host:port"), "{e}");
    }
    for (value, why) in [
        ("https://collector:4318/v1/logs", "https is not supported"),
        ("collector:4318/v1/logs", "http:// scheme is missing"),
        ("grpc://collector:4317", "grpc:// is not supported"),
        ("http:///v1/logs", "not a URL"),
        ("http://user:pw@collector:4318/v1/logs", "credentials"),
        ("http://collector:4318/v1 logs", "not a URL"),
    ] {
        let e = err("STARPHLEET_LOG_OTLP", value);
        assert!(
            e.starts_with(&format!("STARPHLEET_LOG_OTLP={value:?}: ")),
            "{e}"
        );
        assert!(e.contains(why), "{value}: {e}");
        assert!(e.contains("expected http://host:port/v1/logs"), "{e}");
    }
}
