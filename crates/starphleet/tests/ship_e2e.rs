//! One ship, end to end: HQ → git → build → runc container → proxy → HTTP.
//!
//! Real runc, real git repositories, real HTTP, each ship in its own network namespace.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn serves_echo_from_headquarters() {
    let mut ship = TestShip::new();
    let echo = echo_repo(&ship.path("echo"));
    ship.hq
        .write(
            "echo.orders",
            &format!(
                "autodeploy {}\npublish --private 3000 --public 80 --url /echo\n",
                echo.url()
            ),
        )
        .commit("echo");
    ship.start();
    ship.wait_for_body(80, "/echo/Hi", "Hi", DEPLOY);

    let (code, body) = ship.get(80, "/starphleet/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = ship.get(80, "/nothing-here").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("testship"), "404 names the ship: {body}");

    let st = ship.status_json();
    let svc = &st["services"][0];
    assert_eq!(svc["name"], "echo");
    assert_eq!(svc["state"], "serving");
    assert_eq!(
        svc["app_commit"],
        common::git(&echo.dir, &["rev-parse", "HEAD"])
    );
    assert_eq!(svc["containers"].as_array().unwrap().len(), 1);

    let human = ship.cli(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("echo") && text.contains("serving"), "{text}");
    assert!(
        text.contains("route :80/echo") && text.contains("container sp-"),
        "{text}"
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn two_services_share_a_port_by_prefix() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write(
            "hello.orders",
            &format!(
                "autodeploy {}\npublish --private 8000 --url /hello\nexport GREETING=hello-\n",
                app.url()
            ),
        )
        .write(
            "team/bye.orders",
            &format!(
                "autodeploy {}\npublish --private 8000 --url /hello/bye\nenv GREETING=bye-\n",
                app.url()
            ),
        )
        .commit("two");
    ship.start();
    ship.wait_for_body(80, "/hello/x", "hello-x", DEPLOY);
    ship.wait_for_body(80, "/hello/bye/x", "bye-x", DEPLOY);
    // The prefix alone reaches the app as `/`.
    ship.wait_for_body(80, "/hello", "hello-", DEPLOY);
    let st = ship.status_json();
    let names: Vec<&str> = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "team/bye"]);
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn broken_order_leaves_the_good_ones_serving_and_is_reported() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write(
            "good.orders",
            &format!(
                "autodeploy {}\npublish --private 8000\nexport GREETING=good-\n",
                app.url()
            ),
        )
        .write(
            "later.orders",
            &format!(
                "autodeploy {}\npublish --private 8000\nexport GREETING=v1-\n",
                app.url()
            ),
        )
        .commit("good");
    ship.start();
    ship.wait_for_body(80, "/good/a", "good-a", DEPLOY);
    ship.wait_for_body(80, "/later/a", "v1-a", DEPLOY);

    // Break one existing order and add a broken new one.
    ship.hq
        .write(
            "later.orders",
            &format!(
                "autodeploy {}\npublsh --private 8000\nexport GREETING=v2-\n",
                app.url()
            ),
        )
        .write("bad.orders", "publish --private 99999\n")
        .commit("break");

    let check = ship.cli(&["check", ship.hq.dir.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("later.orders:2:1: error"), "{err}");
    assert!(err.contains("did you mean `publish`"), "{err}");
    assert!(err.contains("bad.orders:1:"), "{err}");

    // The ship reports it ...
    let deadline = std::time::Instant::now() + DEPLOY;
    loop {
        let st = ship.status_json();
        let later = st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "later")
            .cloned();
        if later
            .as_ref()
            .map(|l| l["state"] == "broken order")
            .unwrap_or(false)
        {
            let error = later.unwrap()["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(error.contains("later.orders:2:1"), "{error}");
            assert!(st["errors"].as_array().unwrap().len() >= 2, "{st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "broken order never reported: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and everything keeps serving, the broken order on its last good version.
    ship.wait_for_body(80, "/good/b", "good-b", DEPLOY);
    ship.wait_for_body(80, "/later/b", "v1-b", DEPLOY);
    assert!(
        ship.log().contains("later.orders:2:1"),
        "error is in the ship log"
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn killing_and_restarting_the_ship_keeps_serving_without_duplicates() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write(
            "hi.orders",
            &format!(
                "autodeploy {}\npublish --private 8000\nexport GREETING=hi-\n",
                app.url()
            ),
        )
        .commit("hi");
    ship.start();
    ship.wait_for_body(80, "/hi/x", "hi-x", DEPLOY);
    let id = ship.ship_id();
    assert_eq!(runc_containers(&id).len(), 1);

    // Hammer it from inside the namespace while the control plane dies and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ns = std::fs::File::open(ship.net.path()).unwrap();
    let loader = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            while !stop.load(Ordering::SeqCst) {
                match http_get("http://127.0.0.1:80/hi/load") {
                    Ok((200, b)) if b == "hi-load" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    ship.kill();
    std::thread::sleep(Duration::from_millis(500));
    ship.start();
    // Give the restarted ship a few reconcile passes.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();

    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "too few requests: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(
        runc_containers(&id).len(),
        1,
        "no duplicate containers after restart"
    );
    assert!(
        ship.log().contains("adopted running containers"),
        "{}",
        ship.log()
    );
    let st = ship.status_json();
    assert_eq!(st["services"][0]["state"], "serving");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn down_leaves_nothing_behind() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write(
            "a.orders",
            &format!("autodeploy {}\npublish --private 8000\n", app.url()),
        )
        .write(
            "b.orders",
            &format!(
                "autodeploy {}\npublish --private 8000 --public 8080\n",
                app.url()
            ),
        )
        .commit("two");
    ship.start();
    ship.wait_for_body(80, "/a/x", "x", DEPLOY);
    ship.wait_for_body(8080, "/b/y", "y", DEPLOY);
    let id = ship.ship_id();
    assert_eq!(runc_containers(&id).len(), 2);
    assert_eq!(netns_named(&format!("sp-{id}-")).len(), 2);

    let out = ship.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 containers"), "{text}");

    assert!(runc_containers(&id).is_empty());
    assert!(netns_named(&format!("sp-{id}-")).is_empty());
    assert_eq!(ship.net.links(), ["lo"], "no bridge or veth left");
    assert!(
        mounts_under(&ship.state).is_empty(),
        "{:?}",
        mounts_under(&ship.state)
    );
    assert!(!std::path::Path::new(&format!("/run/starphleet/{id}")).exists());
    assert!(ship.get(80, "/a/x").is_err(), "proxy stopped");
    // State and logs are kept, and readable without a ship.
    assert!(ship.state.join("state.json").exists());
    assert!(ship.state.join("logs").is_dir());
    let logs = ship.cli(&["logs", "a", "--kind", "ship"]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("serving"),
        "deploy events readable after down"
    );
    // The ship comes back from the kept state.
    ship.start();
    ship.wait_for_body(80, "/a/x", "x", DEPLOY);
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn demo_serves_the_echo_service() {
    let mut ship = TestShip::new();
    ship.start_with(&["demo"]);
    ship.wait_for_body(80, "/echo/Hi", "Hi", DEPLOY);
    assert!(
        ship.log().contains("curl http://localhost/echo/Hi"),
        "{}",
        ship.log()
    );
}

/// An sshd in the ship's namespace that accepts one key for root; killed on drop.
struct Sshd(std::process::Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &std::path::Path) {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn private_app_over_ssh_with_the_state_dir_key() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("private/greeter"));
    let dir = ship.path("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let config = format!(
        "Port 2222\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    let _sshd = Sshd(
        ship.net
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sshd (apt-get install openssh-server)"),
    );

    // The deploy key goes into the state dir, as an operator would put it.
    let ssh_dir = ship.state.join("ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(dir.join("client_key"), ssh_dir.join("id_ed25519")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        ssh_dir.join("id_ed25519"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let url = format!("ssh://root@127.0.0.1:2222{}#main", app.dir.display());
    ship.hq
        .write(
            "private.orders",
            &format!(
                "autodeploy {url}\npublish --private 8000 --url /p\nexport GREETING=secret-\n"
            ),
        )
        .commit("private");
    ship.start();
    ship.wait_for_body(80, "/p/x", "secret-x", DEPLOY);
    assert!(
        ship.log().contains("using ssh deploy key"),
        "{}",
        ship.log()
    );
}
