//! Redeploys a service 20 times under load and counts every failed request.
//!
//!   cargo bench -p starphleet --bench deploy_under_load [-- DEPLOYS]
//!
//! Keep-alive HTTP clients and websocket clients hammer one service (inside
//! the ship's own network namespace) while new app commits are pushed one
//! after another. Reports requests sent, non-2xx answers, connection errors,
//! the versions clients saw in order, push-to-serving latency per deploy, and
//! what one poll of one unchanged repository costs. Exits 1 on any failure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const HTTP_CLIENTS: usize = 4;
const WS_CLIENTS: usize = 2;

/// The versioned app of the end-to-end tests: `GET /` → `vN:`, `GET /ws` echoes `vN:<text>`.
const APP: &str = include_str!("../tests/apps/versioned.py");

fn commit(repo: &Repo, n: usize) {
    repo.write("server.py", APP).write(
        "Starphleet",
        &format!("start /usr/bin/python3 server.py\nexport VERSION=v{n}\n"),
    );
    repo.commit(&format!("v{n}"));
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    non_2xx: AtomicU64,
    conn_errors: AtomicU64,
    ws_messages: AtomicU64,
    ws_errors: AtomicU64,
    errors: Mutex<Vec<String>>,
    versions: Mutex<Vec<u32>>,
}

impl Tally {
    fn saw(&self, body: &str) {
        let version = body.trim().split(':').next().unwrap_or("");
        if let Some(n) = version.strip_prefix('v').and_then(|n| n.parse().ok()) {
            let mut v = self.versions.lock().unwrap();
            if v.last() != Some(&n) {
                v.push(n);
            }
        }
    }
    fn error(&self, e: String) {
        let mut errs = self.errors.lock().unwrap();
        if errs.len() < 20 {
            errs.push(e);
        }
    }
}

fn enter(ns: &std::fs::File) {
    // SAFETY: changes this thread's network namespace only.
    assert_eq!(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
}

fn http_client(ns: std::fs::File, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    enter(&ns);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        t.requests.fetch_add(1, Ordering::Relaxed);
        match agent.get("http://127.0.0.1:80/app/").call() {
            Ok(r) => {
                let body = r.into_string().unwrap_or_default();
                if seen.last() != Some(&body) {
                    t.saw(&body);
                    seen.push(body);
                }
            }
            Err(ureq::Error::Status(code, _)) => {
                t.non_2xx.fetch_add(1, Ordering::Relaxed);
                t.error(format!("HTTP {code}"));
            }
            Err(e) => {
                t.conn_errors.fetch_add(1, Ordering::Relaxed);
                t.error(e.to_string());
            }
        }
    }
}

/// A websocket client that sends a message every 20 ms and reconnects every 2 s.
fn ws_client(ns: std::fs::File, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    enter(&ns);
    while !stop.load(Ordering::Relaxed) {
        let (mut ws, _) = match tungstenite::connect("ws://127.0.0.1:80/app/ws") {
            Ok(c) => c,
            Err(e) => {
                t.ws_errors.fetch_add(1, Ordering::Relaxed);
                t.error(format!("ws connect: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let opened = Instant::now();
        while opened.elapsed() < Duration::from_secs(2) && !stop.load(Ordering::Relaxed) {
            let sent = ws.send(tungstenite::Message::text("ping"));
            match sent.and_then(|_| ws.read()) {
                Ok(m) if m.to_text().map(|s| s.ends_with(":ping")).unwrap_or(false) => {
                    t.ws_messages.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    t.ws_errors.fetch_add(1, Ordering::Relaxed);
                    t.error(format!("ws: {other:?}"));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
}

fn median(v: &mut [u128]) -> u128 {
    v.sort();
    v[v.len() / 2]
}

/// The median time of each deploy step over the deploys the ship remembers.
fn step_medians(ship: &TestShip) -> String {
    let st = ship.status_json();
    let mut steps: Vec<(String, Vec<u128>)> = Vec::new();
    for d in st["services"][0]["deploys"].as_array().unwrap() {
        for s in d["steps"].as_array().unwrap() {
            let name = s[0].as_str().unwrap().to_string();
            let ms = s[1].as_u64().unwrap() as u128;
            match steps.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => steps.push((name, vec![ms])),
            }
        }
    }
    steps
        .into_iter()
        .map(|(n, mut v)| format!("{n} {}", median(&mut v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let deploys: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("app"));
    commit(&app, 1);
    ship.hq
        .write(
            "app.orders",
            &format!(
                "autodeploy {}#main\npublish --private 8000\ndrain 30s\n",
                app.url()
            ),
        )
        .commit("app");
    ship.start();
    ship.wait_for_body(80, "/app/", "v1:", Duration::from_secs(60));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for i in 0..HTTP_CLIENTS + WS_CLIENTS {
        let (ns, stop, t) = (
            std::fs::File::open(ship.net.path()).unwrap(),
            stop.clone(),
            tally.clone(),
        );
        clients.push(std::thread::spawn(move || {
            if i < HTTP_CLIENTS {
                http_client(ns, stop, t)
            } else {
                ws_client(ns, stop, t)
            }
        }));
    }

    let mut latencies = Vec::new();
    for n in 2..=deploys + 1 {
        std::thread::sleep(Duration::from_millis(300));
        let pushed = Instant::now();
        commit(&app, n);
        ship.wait_for_body(80, "/app/", &format!("v{n}:"), Duration::from_secs(60));
        latencies.push(pushed.elapsed().as_millis());
        eprintln!(
            "deploy {}/{deploys}: v{n} serving after {} ms",
            n - 1,
            pushed.elapsed().as_millis()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let steps = step_medians(&ship);
    for c in clients {
        c.join().unwrap();
    }

    // The cost of one poll of one unchanged repository: one `git ls-remote`.
    let mut polls: Vec<u128> = (0..30)
        .map(|_| {
            let t = Instant::now();
            let out = std::process::Command::new("git")
                .args(["ls-remote", &app.url()])
                .output()
                .unwrap();
            assert!(out.status.success());
            t.elapsed().as_micros()
        })
        .collect();

    let t = &tally;
    let versions = t.versions.lock().unwrap().clone();
    let in_order = versions.windows(2).all(|w| w[0] < w[1]);
    let failures = t.non_2xx.load(Ordering::SeqCst)
        + t.conn_errors.load(Ordering::SeqCst)
        + t.ws_errors.load(Ordering::SeqCst);
    let max = *latencies.iter().max().unwrap();
    println!("deploy under load: {deploys} deploys, {HTTP_CLIENTS} keep-alive HTTP clients, {WS_CLIENTS} websocket clients");
    println!(
        "  HTTP requests sent:      {}",
        t.requests.load(Ordering::SeqCst)
    );
    println!(
        "  non-2xx responses:       {}",
        t.non_2xx.load(Ordering::SeqCst)
    );
    println!(
        "  connection errors:       {}",
        t.conn_errors.load(Ordering::SeqCst)
    );
    println!(
        "  websocket messages:      {} (errors {})",
        t.ws_messages.load(Ordering::SeqCst),
        t.ws_errors.load(Ordering::SeqCst)
    );
    println!(
        "  versions seen, in order: {} ({})",
        if in_order { "yes" } else { "NO" },
        versions
            .iter()
            .map(|v| format!("v{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  push → serving (ms):     median {} max {max}",
        median(&mut latencies.clone())
    );
    println!("  deploy steps, median (ms): {steps}");
    println!(
        "  one poll of an unchanged repository (git ls-remote file://): median {} µs",
        median(&mut polls)
    );
    if std::env::var_os("SHOW_SHIP_LOG").is_some() {
        println!("--- ship log ---\n{}", ship.log());
    }
    let errors = t.errors.lock().unwrap();
    if failures > 0 || !in_order {
        println!("  FAILED; first errors: {errors:?}");
        println!("--- ship log ---\n{}", ship.log());
        std::process::exit(1);
    }
}
