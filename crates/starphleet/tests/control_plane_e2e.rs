//! The control plane under stress: commits faster than deploys, and the proxy dying in the
//! middle of a switch. Real runc, git, HTTP; each ship in its own network namespace.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);
const APP: &str = include_str!("apps/versioned.py");

fn commit(repo: &Repo, n: usize) -> String {
    repo.write("server.py", APP).write(
        "Starphleet",
        &format!("start /usr/bin/python3 server.py\nexport VERSION=v{n}\n"),
    );
    repo.commit(&format!("v{n}"))
}

fn ship_with_app() -> (TestShip, Repo) {
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("app"));
    commit(&app, 1);
    ship.hq
        .write(
            "app.orders",
            &format!("autodeploy {}#main\npublish --private 8000\n", app.url()),
        )
        .commit("app");
    ship.start();
    ship.wait_for_body(80, "/app/x", "v1:x", DEPLOY);
    (ship, app)
}

fn serving_ids(ship: &TestShip) -> Vec<String> {
    let st = ship.status_json();
    let svc = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app")
        .cloned()
        .unwrap();
    let mut ids: Vec<String> = svc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the runtime runs exactly the serving containers.
fn wait_only_serving(ship: &TestShip) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let serving = serving_ids(ship);
        let mut running = runc_containers(&ship.ship_id());
        running.sort();
        if running == serving && !serving.is_empty() {
            return serving;
        }
        assert!(
            Instant::now() < deadline,
            "runtime has {running:?}, serving {serving:?}\n{}",
            ship.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What keep-alive clients saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Per client, the versions in the order it saw them (consecutive repeats folded).
    versions: Mutex<Vec<Vec<u32>>>,
}

fn load_client(ns: std::fs::File, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    // SAFETY: changes this thread's network namespace only.
    assert_eq!(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut mine: Vec<u32> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        seen.requests.fetch_add(1, Ordering::Relaxed);
        match agent.get("http://127.0.0.1:80/app/x").call() {
            Ok(r) => {
                let body = r.into_string().unwrap_or_default();
                let n: u32 = body
                    .strip_prefix('v')
                    .and_then(|b| b.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if mine.last() != Some(&n) {
                    mine.push(n);
                }
            }
            Err(e) => seen.failures.lock().unwrap().push(e.to_string()),
        }
    }
    seen.versions.lock().unwrap().push(mine);
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn ten_commits_200ms_apart_under_load_fail_nothing_and_end_on_the_last() {
    let (ship, app) = ship_with_app();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let ns = std::fs::File::open(ship.net.path()).unwrap();
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || load_client(ns, stop, seen))
        })
        .collect();
    for n in 2..=11 {
        commit(&app, n);
        std::thread::sleep(Duration::from_millis(200));
    }
    ship.wait_for_body(80, "/app/x", "v11:x", DEPLOY);
    // Keep the load on while the last switch drains.
    let ids = wait_only_serving(&ship);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = seen.failures.lock().unwrap();
    let requests = seen.requests.load(Ordering::Relaxed);
    assert!(
        requests > 100,
        "the clients kept the service busy: {requests}"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        ship.log()
    );
    for versions in seen.versions.lock().unwrap().iter() {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "a client saw an older version after a newer one: {versions:?}"
        );
        assert_eq!(versions.last(), Some(&11), "{versions:?}");
    }
    assert_eq!(ids.len(), 1, "exactly one container for one instance");
}

fn proxy_pid(ship: &TestShip) -> i32 {
    std::fs::read_to_string(ship.state.join("proxy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn switching(ship: &TestShip) -> bool {
    let state: serde_json::Value = match std::fs::read(ship.state.join("state.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => return false,
    };
    !state["services"]["app"]["switching"].is_null()
}

/// Processes whose command line says they are this ship's proxy.
fn proxies_of(ship: &TestShip) -> usize {
    let state = ship.state.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.contains(&b"proxy".as_slice()) && args.contains(&state.as_bytes())
        })
        .count()
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn the_proxy_dying_right_after_a_switch_is_recovered_and_the_old_version_retired() {
    let (ship, app) = ship_with_app();
    let old = serving_ids(&ship);
    let pid = proxy_pid(&ship);
    // Freeze the proxy, so the switch is recorded but the new table cannot be applied...
    // SAFETY: signals a process this test's ship started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    commit(&app, 2);
    let deadline = Instant::now() + DEPLOY;
    while !switching(&ship) {
        assert!(
            Instant::now() < deadline,
            "the switch never started\n{}",
            ship.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...then kill it in that moment.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    ship.wait_for_body(80, "/app/x", "v2:x", Duration::from_secs(20));
    let now = wait_only_serving(&ship);
    assert_ne!(now, old, "the old version was retired");
    assert!(!switching(&ship));
    assert_ne!(proxy_pid(&ship), pid, "a new proxy took over");
    assert_eq!(proxies_of(&ship), 1, "exactly one proxy");
    assert_eq!(
        ship.log().matches("proxy started").count(),
        2,
        "started once, and once again after it died\n{}",
        ship.log()
    );
}
