//! Autodeploy as refs advance, and drainstop/switch with zero failed requests.
//!
//! Real runc, git, HTTP and websockets; each ship in its own network namespace.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);

/// An app whose answers name its version (`VERSION`, set in its `Starphleet`):
/// `GET /x` → `v1:x`, `GET /slow?s=N` sleeps, `GET /ws` is a websocket echo.
const VERSIONED: &str = include_str!("apps/versioned.py");

/// Commits the versioned app with `VERSION=version` and extra `Starphleet` lines.
fn commit_version(repo: &Repo, version: &str, extra: &str) -> String {
    repo.write("server.py", VERSIONED).write(
        "Starphleet",
        &format!("start /usr/bin/python3 server.py\nexport VERSION={version}\n{extra}"),
    );
    repo.commit(version)
}

fn versioned_ship(order_extra: &str) -> (TestShip, Repo) {
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("app"));
    commit_version(&app, "v1", "");
    ship.hq
        .write(
            "app.orders",
            &format!(
                "autodeploy {}#main\npublish --private 8000\n{order_extra}",
                app.url()
            ),
        )
        .commit("app");
    ship.start();
    ship.wait_for_body(80, "/app/x", "v1:x", DEPLOY);
    (ship, app)
}

/// Waits until the service `app`'s latest deploy failed; returns the service and that outcome.
fn wait_for_failed_deploy(ship: &TestShip) -> (serde_json::Value, String) {
    let deadline = Instant::now() + DEPLOY;
    loop {
        let svc = ship.service("app");
        let outcome = svc["deploys"].as_array().unwrap().last().unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string();
        if outcome.starts_with("failed") {
            return (svc, outcome);
        }
        assert!(Instant::now() < deadline, "never reported: {svc}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn container_ids(svc: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = svc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the runtime runs exactly the serving containers of `name`.
fn wait_only_serving_containers(ship: &TestShip, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let serving = container_ids(&ship.service(name));
        let mut running = runc_containers(&ship.ship_id());
        running.sort();
        if running == serving {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "runtime has {running:?}, serving {serving:?}\n{}",
            ship.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn app_commit_serves_within_two_polls_plus_deploy_and_replaces_all_instances() {
    let (ship, app) = versioned_ship("instances 2\n");
    let before = container_ids(&ship.service("app"));
    assert_eq!(before.len(), 2, "instances 2 runs two containers");

    let pushed = Instant::now();
    commit_version(&app, "v2", "");
    ship.wait_for_body(80, "/app/x", "v2:x", DEPLOY);
    let to_serving = pushed.elapsed();

    let svc = ship.service("app");
    let last = svc["deploys"].as_array().unwrap().last().unwrap().clone();
    let deploy_ms: u64 = last["steps"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|s| s[0] != "drain")
        .map(|s| s[1].as_u64().unwrap())
        .sum();
    let poll = Duration::from_millis(200);
    assert!(
        to_serving <= 2 * poll + Duration::from_millis(deploy_ms) + Duration::from_millis(500),
        "serving after {to_serving:?}; deploy took {deploy_ms} ms: {last}"
    );
    let after = container_ids(&svc);
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|c| !before.contains(c)),
        "all instances replaced"
    );
    wait_only_serving_containers(&ship, "app");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn changing_the_orders_export_redeploys() {
    let (ship, _app) = versioned_ship("");
    let order = std::fs::read_to_string(ship.hq.dir.join("app.orders")).unwrap();
    ship.hq
        .write("app.orders", &format!("{order}export SUFFIX=-tuned\n"))
        .commit("tune");
    ship.wait_for_body(80, "/app/x", "v1-tuned:x", DEPLOY);
    wait_only_serving_containers(&ship, "app");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn slow_request_started_before_a_switch_completes_from_the_old_version() {
    let (ship, app) = versioned_ship("");
    let slow = {
        let ns = std::fs::File::open(ship.net.path()).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            http_get("http://127.0.0.1:80/app/slow?s=3")
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    commit_version(&app, "v2", "");
    ship.wait_for_body(80, "/app/x", "v2:x", DEPLOY);
    assert_eq!(slow.join().unwrap(), Ok((200, "v1".to_string())));
    wait_only_serving_containers(&ship, "app");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn websocket_opened_before_a_switch_keeps_working_until_closed() {
    let (ship, app) = versioned_ship("");
    let (to_ws, from_test) = std::sync::mpsc::channel::<String>();
    let (to_test, from_ws) = std::sync::mpsc::channel::<String>();
    let ns = std::fs::File::open(ship.net.path()).unwrap();
    let client = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let (mut ws, _) = tungstenite::connect("ws://127.0.0.1:80/app/ws").expect("websocket");
        for text in from_test {
            ws.send(tungstenite::Message::text(text)).unwrap();
            let reply = ws.read().unwrap();
            to_test
                .send(reply.into_text().unwrap().to_string())
                .unwrap();
        }
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    });
    to_ws.send("before".into()).unwrap();
    assert_eq!(from_ws.recv().unwrap(), "v1:before");

    commit_version(&app, "v2", "");
    ship.wait_for_body(80, "/app/x", "v2:x", DEPLOY);
    std::thread::sleep(Duration::from_millis(500));
    to_ws.send("after".into()).unwrap();
    assert_eq!(
        from_ws.recv().unwrap(),
        "v1:after",
        "the open websocket stays on v1"
    );
    assert_eq!(
        runc_containers(&ship.ship_id()).len(),
        2,
        "v1 drains while its websocket is open"
    );

    drop(to_ws);
    client.join().unwrap();
    wait_only_serving_containers(&ship, "app");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn version_that_never_gets_healthy_leaves_the_old_one_serving() {
    let (ship, app) = versioned_ship("healthcheck --timeout 2s\n");
    let old = container_ids(&ship.service("app"));
    commit_version(&app, "v2", "export WRONG_PORT=1\n");
    let (svc, outcome) = wait_for_failed_deploy(&ship);
    assert!(outcome.contains("failed at health"), "{outcome}");
    assert!(outcome.contains("not healthy"), "{outcome}");
    assert!(
        outcome.contains("app v2 listening on 8001"),
        "app output is in the report: {outcome}"
    );
    assert!(
        svc["error"].as_str().unwrap().contains("not healthy"),
        "{svc}"
    );
    assert_eq!(ship.get(80, "/app/x").unwrap(), (200, "v1:x".to_string()));
    assert_eq!(container_ids(&ship.service("app")), old);
    wait_only_serving_containers(&ship, "app");
    // Not retried in a loop.
    std::thread::sleep(Duration::from_secs(2));
    let deploys = ship.service("app")["deploys"].as_array().unwrap().len();
    assert_eq!(deploys, 2, "the failed commit is not retried");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn crashing_app_is_restarted_with_growing_delays_and_answers_503_meanwhile() {
    let (ship, app) = versioned_ship("");
    commit_version(&app, "v2", "export CRASH_AFTER=0.5\n");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut saw_503 = false;
    loop {
        if let Ok((503, _)) = ship.get(80, "/app/x") {
            saw_503 = true;
        }
        let svc = ship.service("app");
        let starts: Vec<u64> = svc["deploys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["app_commit"] != svc["deploys"][0]["app_commit"])
            .map(|d| d["started_at_ms"].as_u64().unwrap())
            .collect();
        if starts.len() >= 4 {
            let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(
                gaps.windows(2).all(|g| g[1] > g[0] + 500),
                "restart gaps should grow: {gaps:?}"
            );
            assert!(svc["restarts"].as_u64().unwrap() >= 3, "{svc}");
            assert!(
                ship.log().contains("the app exited with code 3"),
                "exit code reported"
            );
            assert!(
                ship.log().contains("exited; restart #2 in 2s"),
                "{}",
                ship.log()
            );
            break;
        }
        assert!(Instant::now() < deadline, "too few restarts: {svc}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_503, "while down the route answers 503");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn redeploy_rebuilds_and_switches() {
    let (ship, _app) = versioned_ship("");
    let before = container_ids(&ship.service("app"));
    let out = ship.cli(&["redeploy", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + DEPLOY;
    loop {
        let svc = ship.service("app");
        let ids = container_ids(&svc);
        if !ids.is_empty() && ids != before && svc["state"] == "serving" {
            break;
        }
        assert!(Instant::now() < deadline, "never redeployed: {svc}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ship.get(80, "/app/x").unwrap(), (200, "v1:x".to_string()));
    wait_only_serving_containers(&ship, "app");
    let bad = ship.cli(&["redeploy", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no order for service `nope`"));
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn failed_build_keeps_the_previous_version_serving() {
    let (ship, app) = versioned_ship("");
    commit_version(
        &app,
        "v2",
        "build echo compiling; echo syntax error >&2; exit 2\n",
    );
    let (_, outcome) = wait_for_failed_deploy(&ship);
    assert!(outcome.contains("failed at build"), "{outcome}");
    assert!(outcome.contains("exited with code 2"), "{outcome}");
    assert_eq!(ship.get(80, "/app/x").unwrap(), (200, "v1:x".to_string()));
    let log = std::fs::read_to_string(ship.state.join("logs/app/build.log")).unwrap();
    assert!(
        log.contains("[app] build step 1/1") && log.contains("syntax error"),
        "{log}"
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn branch_forced_backwards_deploys_what_it_now_points_at() {
    let (ship, app) = versioned_ship("");
    let v1 = git(&app.dir, &["rev-parse", "HEAD"]);
    commit_version(&app, "v2", "");
    ship.wait_for_body(80, "/app/x", "v2:x", DEPLOY);
    git(&app.dir, &["reset", "-q", "--hard", &v1]);
    ship.wait_for_body(80, "/app/x", "v1:x", DEPLOY);
    assert_eq!(ship.service("app")["app_commit"], v1);
    wait_only_serving_containers(&ship, "app");
}
