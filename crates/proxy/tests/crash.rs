//! A proxy killed with SIGKILL under keep-alive load, while the control plane (this test) holds
//! duplicates of its listening sockets, and a new proxy started on them: no client is refused,
//! and the gap is the new proxy's start-up.
//!
//! Its own harness (`harness = false`): the proxies are this same executable, re-run with
//! `STARPHLEET_TEST_PROXY_CHILD=<control socket>`, so they are real processes that can be
//! killed, started the way the binary starts one.

mod common;

use common::*;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use starphleet_proxy::{ProxyClient, ProxyOptions, LISTEN_FDS_ENV};

const CHILD: &str = "STARPHLEET_TEST_PROXY_CHILD";
const NAME: &str = "a_killed_proxy_leaves_its_ports_queueing_for_the_next";

fn main() {
    if let Ok(socket) = std::env::var(CHILD) {
        child(&socket);
        return;
    }
    // `cargo test FILTER` passes the filter on; honour it like the default harness.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        println!("{NAME}: test");
        return;
    }
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 1 filtered out");
        return;
    }
    println!("running 1 test");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(a_killed_proxy_leaves_its_ports_queueing_for_the_next());
    println!("test {NAME} ... ok");
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 filtered out");
}

/// A proxy as `starphleet proxy` runs one: listening sockets inherited through the
/// environment, as `inherit_listeners` reads them.
fn child(socket: &str) {
    tracing_subscriber::fmt().with_ansi(false).init();
    let inherited =
        starphleet_proxy::inherit_listeners(std::env::var(LISTEN_FDS_ENV).ok().as_deref())
            .expect("inherited sockets");
    let opts = ProxyOptions {
        listen_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        inherited,
        ..ProxyOptions::new(socket)
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(starphleet_proxy::run(opts))
        .expect("the proxy runs");
}

/// Starts a proxy process on `socket`, handing it `inherited` as descriptor 3 onwards.
fn spawn(socket: &std::path::Path, log: &std::path::Path, inherited: &[(u16, &OwnedFd)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, socket)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null());
    let spec: Vec<String> = inherited
        .iter()
        .enumerate()
        .map(|(i, (port, _))| format!("{port}:{}", 3 + i))
        .collect();
    cmd.env(LISTEN_FDS_ENV, spec.join(","));
    let fds: Vec<i32> = inherited.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // SAFETY: between fork and exec only dup2 and fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in fds.iter().enumerate() {
                let target = 3 + i as i32;
                let rc = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, target)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    refused: AtomicU64,
    /// Requests that failed on a connection the killed proxy had accepted.
    broken: AtomicU64,
    /// When each successful response arrived.
    answers: Mutex<Vec<Instant>>,
}

async fn a_killed_proxy_leaves_its_ports_queueing_for_the_next() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let client = ProxyClient::new(&socket);
    let port = free_port();
    let routes = table([(port, vec![route("/", "app", &[&app])])]);

    let mut first = spawn(&socket, &dir.path().join("first.log"), &[]);
    eventually("the first proxy answers", || client.is_running()).await;
    client.set_routes(&routes).await.unwrap();
    let held = client.listeners().await.unwrap();
    assert_eq!(held.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [port]);

    // Keep-alive load: each client reconnects when its connection breaks.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (seen, stop) = (seen.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                        seen.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                else {
                    seen.broken.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    let sent = tokio::time::timeout(
                        Duration::from_secs(10),
                        sender.send_request(get_req(port, "/x")),
                    )
                    .await;
                    match sent {
                        Ok(Ok(resp)) if resp.status() == StatusCode::OK => {
                            use http_body_util::BodyExt;
                            if resp.into_body().collect().await.is_err() {
                                seen.broken.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                            seen.answers.lock().unwrap().push(Instant::now());
                        }
                        Ok(Ok(resp)) => panic!("{}", resp.status()),
                        Ok(Err(_)) | Err(_) => {
                            seen.broken.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = seen.ok.load(Ordering::Relaxed);
    assert!(before > 100, "the load runs: {before}");
    first.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    first.wait().unwrap();

    let inherited: Vec<(u16, &OwnedFd)> = held.iter().map(|(p, fd)| (*p, fd)).collect();
    let mut second = spawn(&socket, &dir.path().join("second.log"), &inherited);
    eventually("the second proxy answers", || client.is_running()).await;
    client.set_routes(&routes).await.unwrap();
    let programmed = killed.elapsed();
    let status = client.status().await.unwrap();
    assert_eq!(status.listening, [port]);
    assert_ne!(status.pid, first.id());

    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let after = seen.ok.load(Ordering::Relaxed) - before;
    let mut answers = seen.answers.lock().unwrap().clone();
    answers.sort();
    // The longest stretch without any answer: the clients' view of the crash.
    let gap = answers
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let refused = seen.refused.load(Ordering::Relaxed);
    let broken = seen.broken.load(Ordering::Relaxed);
    println!(
        "kill -9 under load (8 keep-alive clients): {before} answers before, {after} after; \
         {refused} connections refused; {broken} requests broken on the killed proxy's \
         connections; longest gap between answers {gap:?}; second proxy programmed \
         {programmed:?} after the kill"
    );
    assert_eq!(
        refused, 0,
        "no client is refused while the sockets are held"
    );
    assert!(after > 100, "the new proxy serves: {after}");
    assert!(gap < Duration::from_secs(5), "{gap:?}");

    client.shutdown().await.unwrap();
    let stopped = tokio::task::spawn_blocking(move || second.wait())
        .await
        .unwrap();
    assert!(stopped.unwrap().success());
    drop(held);
    eventually("the port closes with its last holder", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
}
