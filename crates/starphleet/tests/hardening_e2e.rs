//! Nothing outside stalls or breaks a ship: bad HQ content, a hung remote, lost state, a
//! ship killed mid-drain, a flood of idle connections. Real runc, git, HTTP; each ship in its
//! own network namespace.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);
const VERSIONED: &str = include_str!("apps/versioned.py");

fn container_ids(ship: &TestShip, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = ship.service(name)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn wait_until(
    what: &str,
    within: Duration,
    mut ok: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn greeter_order(app: &Repo, greeting: &str, extra: &str) -> String {
    format!(
        "autodeploy {}\npublish --private 8000\nexport GREETING={greeting}\n{extra}",
        app.url()
    )
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_symlinked_order_is_refused_and_its_target_never_shown() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    let secret = format!("TOP-SECRET-{}", unique("s"));
    let target = ship.path("secret.txt");
    std::fs::write(&target, format!("{secret}\npublish --private {secret}\n")).unwrap();
    ship.hq
        .write("good.orders", &greeter_order(&app, "hi-", ""));
    std::os::unix::fs::symlink(&target, ship.hq.dir.join("shadow.orders")).unwrap();
    ship.hq.commit("a symlink");
    ship.start();
    ship.wait_for_body(80, "/good/x", "hi-x", DEPLOY);

    let check = ship.cli(&["check", ship.hq.dir.to_str().unwrap()]);
    let check_text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(1), "{check_text}");
    assert!(check_text.contains("shadow.orders"), "{check_text}");
    let status = serde_json::to_string(&ship.status_json()).unwrap();
    assert!(status.contains("shadow.orders"), "{status}");
    let logs = ship.cli(&["logs", "--json", "--limit", "100000"]);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    for (place, text) in [
        ("check", check_text.as_str()),
        ("status", status.as_str()),
        ("logs", logs.as_str()),
        ("ship log", ship.log().as_str()),
    ] {
        assert!(
            !text.contains(&secret),
            "the target's content leaked into {place}"
        );
    }
}

/// A TCP server that accepts connections and never answers, in the ship's namespace.
fn hung_server(ship: &TestShip) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = std::fs::File::open(ship.net.path()).unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: moves this thread (only) into the ship's namespace.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    rx.recv().unwrap()
}

fn versioned_repo(dir: &std::path::Path, version: &str, extra: &str) -> Repo {
    let repo = Repo::new(dir);
    repo.write("server.py", VERSIONED).write(
        "Starphleet",
        &format!("start /usr/bin/python3 server.py\nexport VERSION={version}\n{extra}"),
    );
    repo.commit(version);
    repo
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_hung_remote_delays_only_its_own_service() {
    let mut ship = TestShip::new();
    let port = hung_server(&ship);
    let good = versioned_repo(&ship.path("good"), "v1", "");
    let crash = versioned_repo(&ship.path("crash"), "v1", "export CRASH_AFTER=0.5\n");
    ship.hq
        .write(
            "hung.orders",
            &format!("autodeploy http://127.0.0.1:{port}/app.git\npublish --private 8000\n"),
        )
        .write(
            "good.orders",
            &format!("autodeploy {}\npublish --private 8000\n", good.url()),
        )
        .write(
            "crash.orders",
            &format!("autodeploy {}\npublish --private 8000\n", crash.url()),
        )
        .commit("three");
    ship.start();
    ship.wait_for_body(80, "/good/x", "v1:x", DEPLOY);

    // A new commit of the good app serves within two polls plus its deploy, hung remote or not.
    good.write(
        "Starphleet",
        "start /usr/bin/python3 server.py\nexport VERSION=v2\n",
    );
    good.commit("v2");
    let pushed = Instant::now();
    ship.wait_for_body(80, "/good/x", "v2:x", DEPLOY);
    let took = pushed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the good service took {took:?} to follow its commit"
    );

    // The crashing service is restarted on its back-off schedule.
    wait_until(
        "the crashing service is restarted twice",
        Duration::from_secs(20),
        || ship.service("crash")["restarts"].as_u64().unwrap_or(0) >= 2,
        || ship.log(),
    );

    // Status names the hung remote and why.
    wait_until(
        "status names the hung remote",
        Duration::from_secs(30),
        || {
            ship.service("hung")["error"].as_str().is_some_and(|e| {
                e.contains(&format!("127.0.0.1:{port}")) && e.contains("timed out")
            })
        },
        || ship.status_json().to_string(),
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_lost_state_file_is_recovered_from_what_runs_and_down_still_removes_everything() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    for name in ["one", "two", "three"] {
        ship.hq.write(
            &format!("{name}.orders"),
            &greeter_order(&app, &format!("{name}-"), ""),
        );
    }
    ship.hq.commit("three services");
    ship.start();
    for name in ["one", "two", "three"] {
        ship.wait_for_body(80, &format!("/{name}/x"), &format!("{name}-x"), DEPLOY);
    }
    let before: Vec<Vec<String>> = ["one", "two", "three"]
        .iter()
        .map(|n| container_ids(&ship, n))
        .collect();

    ship.kill();
    std::fs::remove_file(ship.state.join("state.json")).unwrap();
    ship.start();
    // The proxy kept serving meanwhile; wait for the ship itself to report all three again.
    wait_until(
        "the restarted ship serves the three services",
        DEPLOY,
        || {
            let out = ship.cli(&["status", "--json"]);
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            st["services"]
                .as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["state"] == "serving"))
        },
        || ship.log(),
    );
    for name in ["one", "two", "three"] {
        ship.wait_for_body(80, &format!("/{name}/x"), &format!("{name}-x"), DEPLOY);
    }
    let after: Vec<Vec<String>> = ["one", "two", "three"]
        .iter()
        .map(|n| container_ids(&ship, n))
        .collect();
    assert_eq!(after, before, "the same containers serve, none added");
    let mut running = runc_containers(&ship.ship_id());
    running.sort();
    let mut all: Vec<String> = after.concat();
    all.sort();
    assert_eq!(running, all, "no duplicates");
    assert!(ship.log().contains("recovered what runs"), "{}", ship.log());

    // Lost again, then down: nothing of the ship is left.
    ship.kill();
    std::fs::remove_file(ship.state.join("state.json")).unwrap();
    let id = ship.ship_id();
    let out = ship.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(runc_containers(&id).is_empty());
    assert!(netns_named(&format!("sp-{id}-")).is_empty(), "netns left");
    let links: Vec<String> = ship
        .net
        .links()
        .into_iter()
        .filter(|l| l.starts_with(&format!("sp{id}")) || l.starts_with("spb-"))
        .collect();
    assert!(links.is_empty(), "links left: {links:?}");
    assert!(mounts_under(&ship.state).is_empty(), "mounts left");
    for ctl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = ctl.path().join(format!("starphleet-{id}"));
        assert!(!left.exists(), "cgroup left: {}", left.display());
    }
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_ship_killed_during_a_drain_lets_the_request_finish_after_restarting() {
    let mut ship = TestShip::new();
    let app = versioned_repo(&ship.path("app"), "v1", "");
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
    ship.wait_for_body(80, "/app/x", "v1:x", DEPLOY);
    let old = container_ids(&ship, "app");

    let ns = ship.net.path();
    let slow = std::thread::spawn(move || {
        let file = std::fs::File::open(ns).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: moves this thread (only) into the ship's namespace.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let started = Instant::now();
        let r = agent.get("http://127.0.0.1:80/app/slow?s=5").call();
        (
            r.map(|r| (r.status(), r.into_string().unwrap_or_default())),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    app.write("server.py", VERSIONED).write(
        "Starphleet",
        "start /usr/bin/python3 server.py\nexport VERSION=v2\n",
    );
    app.commit("v2");
    ship.wait_for_body(80, "/app/x", "v2:x", DEPLOY);
    // The old version is draining with the slow request in flight: kill the control plane.
    assert!(!runc_containers(&ship.ship_id()).is_empty());
    ship.kill();
    ship.start();
    let (answer, took) = slow.join().unwrap();
    assert_eq!(
        answer.map_err(|e| e.to_string()),
        Ok((200, "v1".to_string())),
        "after {took:?}\n{}",
        ship.log()
    );
    // Then the old version stops.
    wait_until(
        "the old version is stopped",
        Duration::from_secs(20),
        || {
            let running = runc_containers(&ship.ship_id());
            old.iter().all(|c| !running.contains(c))
        },
        || ship.log(),
    );
    assert_eq!(ship.get(80, "/app/x").unwrap(), (200, "v2:x".to_string()));
}

/// Holds `n` idle connections to `port` in the ship's namespace, spread over processes of
/// 5 000 each (one process may not hold them all), until dropped.
struct Flood {
    children: Vec<std::process::Child>,
    held: usize,
}

impl Flood {
    fn new(ship: &TestShip, port: u16, n: usize) -> Flood {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/flood.py");
        let mut children: Vec<std::process::Child> = (0..n.div_ceil(5000))
            .map(|_| {
                ship.net
                    .command("/usr/bin/python3")
                    .args([script, "127.0.0.1", &port.to_string(), "5000"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut held = 0;
        for c in &mut children {
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
                &mut line,
            )
            .unwrap();
            held += line.trim().parse::<usize>().unwrap_or(0);
        }
        Flood { children, held }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

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
fn a_flood_of_idle_connections_leaves_admin_and_proxy_accepting() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write("app.orders", &greeter_order(&app, "hi-", ""))
        .commit("app");
    ship.start();
    ship.wait_for_body(80, "/app/x", "hi-x", DEPLOY);

    for (what, port, path) in [("admin", 9797, "/status"), ("proxy", 80, "/app/x")] {
        let began = Instant::now();
        let flood = Flood::new(&ship, port, 20_000);
        eprintln!(
            "{what}: {} idle connections held after {:?}",
            flood.held,
            began.elapsed()
        );
        // While flooded, the CLI still reaches the ship through its socket.
        let st = ship.cli(&["status", "--json"]);
        assert!(st.status.success(), "{what} flood: status failed");
        eprintln!("{what}: status answered at {:?}", began.elapsed());
        drop(flood);
        eprintln!("{what}: flood closed at {:?}", began.elapsed());
        let asked = Instant::now();
        wait_until(
            &format!("{what} answers again after the flood"),
            Duration::from_secs(5),
            || matches!(ship.get(port, path), Ok((200, _))),
            || ship.log(),
        );
        eprintln!(
            "{what}: answered {:?} after the idle connections closed",
            asked.elapsed()
        );
    }
    assert!(ship.status_json()["services"][0]["state"] == "serving");
    assert_eq!(
        proxies_of(&ship),
        1,
        "still exactly one proxy\n{}",
        ship.log()
    );
    let _ = std::io::stdout().flush();
}

/// A tmpfs mounted on a ship's (not yet created) state dir; unmounted when dropped, after the
/// ship (declare it first).
struct StateDisk {
    dir: std::path::PathBuf,
}

impl StateDisk {
    fn mount(dir: &std::path::Path, size: &str) -> StateDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        StateDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills every byte left with one file; returns it.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        for _ in 0..64 {
            let _ = f.write_all(&[0u8; 512]);
        }
        path
    }
}

impl Drop for StateDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .output();
    }
}

const CHATTY: &str = r#"import sys, time
line = "x" * 1000
for i in range(25000):
    print("flood", i, line)
sys.stdout.flush()
n = 0
while True:
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.2)
"#;

#[test]
#[ignore = "root tier (network namespaces, runc, mounts): run by scripts/test"]
fn a_full_state_disk_drops_logs_keeps_services_and_recovers_when_space_returns() {
    let tmp = tempfile::Builder::new().prefix("spdisk").tempdir().unwrap();
    let disk = StateDisk::mount(&tmp.path().join("state"), "20m");
    let mut ship = TestShip::new();
    ship.state = disk.dir.clone();
    let app = greeter_repo(&ship.path("greeter"));
    let chatty = Repo::new(ship.path("chatty"));
    chatty
        .write("chatty.py", CHATTY)
        .write("Starphleet", "start /usr/bin/python3 chatty.py\n")
        .commit("chatty");
    ship.hq
        .write("calm.orders", &greeter_order(&app, "calm-", ""))
        .commit("calm");
    ship.start();
    ship.wait_for_body(80, "/calm/x", "calm-x", DEPLOY);
    ship.hq
        .write("chatty.orders", &format!("autodeploy {}\n", chatty.url()))
        .commit("chatty");

    // The chatty service floods 25 MB into a 20 MiB state dir; then the test takes what is left.
    wait_until(
        "the chatty service's output is dropped and counted",
        DEPLOY,
        || {
            let st = ship.status_json();
            st["logs"]["dropped_records"].as_u64().unwrap_or(0) > 0
                || std::fs::read_dir(ship.state.join("logs/chatty"))
                    .map(|d| {
                        d.flatten().any(|e| {
                            std::fs::read_to_string(e.path())
                                .is_ok_and(|t| t.contains("were dropped"))
                        })
                    })
                    .unwrap_or(false)
        },
        || ship.log(),
    );
    let filler = disk.fill();
    // An HQ change now cannot be checked out…
    ship.hq
        .write("later.orders", &greeter_order(&app, "later-", ""))
        .commit("later");
    wait_until(
        "status reports the full disk",
        Duration::from_secs(20),
        || {
            ship.status_json()["errors"]
                .to_string()
                .contains("nearly full")
        },
        || ship.status_json().to_string(),
    );
    // …and meanwhile the other service answers and the chatty one keeps running.
    for _ in 0..5 {
        assert_eq!(
            ship.get(80, "/calm/x").unwrap(),
            (200, "calm-x".to_string())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let chatty_svc = ship.service("chatty");
    assert_eq!(chatty_svc["state"], "serving", "{chatty_svc}");
    assert_eq!(chatty_svc["restarts"], 0, "{chatty_svc}");

    // Space returns: logging resumes and the HQ commit is loaded without a new one.
    std::fs::remove_file(filler).unwrap();
    ship.wait_for_body(80, "/later/x", "later-x", DEPLOY);
    wait_until(
        "new ticks are logged again",
        Duration::from_secs(20),
        || {
            let out = ship.cli(&["logs", "chatty", "--since", "3s", "--grep", "tick"]);
            String::from_utf8_lossy(&out.stdout).contains("tick")
        },
        || ship.log(),
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ship.state.join("state.json")).unwrap()).unwrap();
    assert!(state["services"]["chatty"].is_object(), "state.json intact");
    ship.down();
    drop(ship);
    drop(disk);
}

/// `GET /` answers `fed`, `GET /eat` allocates 200 MB.
const GREEDY: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/eat":
            hog = bytearray(200 * 1024 * 1024)
            for i in range(0, len(hog), 4096):
                hog[i] = 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"fed")
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_service_over_its_memory_limit_is_killed_restarted_and_reported() {
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("greedy"));
    app.write("greedy.py", GREEDY)
        .write("Starphleet", "start /usr/bin/python3 greedy.py\n");
    app.commit("greedy");
    ship.hq
        .write(
            "greedy.orders",
            &format!(
                "autodeploy {}\npublish --private 8000\nmemory 64M\n",
                app.url()
            ),
        )
        .commit("greedy");
    ship.start();
    ship.wait_for_body(80, "/greedy/", "fed", DEPLOY);
    let limit = ship.service("greedy")["containers"][0]["memory_limit_bytes"].clone();
    assert_eq!(limit, serde_json::json!(64 << 20), "status shows the limit");
    let before = container_ids(&ship, "greedy");

    // The request dies with its container; the host and the other services do not notice.
    let _ = ship.get(80, "/greedy/eat");
    wait_until(
        "the OOM kill is reported",
        DEPLOY,
        || {
            let svc = ship.service("greedy");
            svc.to_string().contains("out of memory") && svc["restarts"].as_u64() >= Some(1)
        },
        || ship.log(),
    );
    ship.wait_for_body(80, "/greedy/", "fed", DEPLOY);
    assert_ne!(
        container_ids(&ship, "greedy"),
        before,
        "restarted in a new container"
    );
    let logs = ship.cli(&["logs", "greedy", "--kind", "ship"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("out of memory"),
        "the service's log says why: {}",
        String::from_utf8_lossy(&logs.stdout)
    );
}
