//! Logs and per-container metrics of a running ship: collect, keep, query, follow, measure.
//!
//! Real runc, git, HTTP and Debian's promtool; each ship in its own network namespace.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);

/// Prints `said X` for `GET /say/X`, burns CPU for `GET /burn/SECONDS`, swallows POST bodies,
/// and with `TICK=1` prints `tick N` every 5 ms.
const TICKER: &str = include_str!("apps/ticker.py");

fn ticker_repo(dir: &std::path::Path, extra: &str) -> Repo {
    let repo = Repo::new(dir);
    repo.write("server.py", TICKER).write(
        "Starphleet",
        &format!("start /usr/bin/python3 server.py\n{extra}"),
    );
    repo.commit("ticker");
    repo
}

fn ticker_ship(order_extra: &str, app_extra: &str) -> (TestShip, Repo) {
    let mut ship = TestShip::new();
    let app = ticker_repo(&ship.path("ticker"), app_extra);
    ship.hq
        .write(
            "ticker.orders",
            &format!(
                "autodeploy {}\npublish --private 8000\n{order_extra}",
                app.url()
            ),
        )
        .commit("ticker");
    ship.start();
    ship.wait_for_body(80, "/ticker/ready", "/ready", DEPLOY);
    (ship, app)
}

fn logs(ship: &TestShip, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["logs", "--json"];
    all.extend_from_slice(args);
    let out = ship.cli(&all);
    assert!(
        out.status.success(),
        "logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for_log(ship: &TestShip, args: &[&str], within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(r) = logs(ship, args).pop() {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "no log record for {args:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn printed_lines_show_up_with_their_version_and_follow_keeps_going_across_a_redeploy() {
    let (ship, app) = ticker_ship("", "");
    assert_eq!(ship.get(80, "/ticker/say/hello-logs").unwrap().0, 200);
    let r = wait_for_log(
        &ship,
        &["ticker", "--grep", "said hello-logs"],
        Duration::from_secs(5),
    );
    let commit = git(&app.dir, &["rev-parse", "HEAD"]);
    assert_eq!(r["service"], "ticker");
    assert_eq!(r["kind"], "app");
    assert_eq!(r["stream"], "stdout");
    assert!(
        r["version"].as_str().unwrap().starts_with(&commit[..12]),
        "{r}"
    );
    assert!(r["container"].as_str().unwrap().starts_with("sp-"), "{r}");

    // Human output names the service and version too.
    let out = ship.cli(&["logs", "ticker", "--grep", "hello-logs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ticker") && text.contains(&commit[..12]) && text.contains("said hello-logs"),
        "{text}"
    );

    // Deploy events are logged by the ship.
    let events = logs(&ship, &["ticker", "--kind", "ship"]);
    assert!(
        events
            .iter()
            .any(|e| e["line"].as_str().unwrap().starts_with("serving")),
        "{events:?}"
    );

    // Follow: a new line arrives within a second, and following survives a redeploy.
    let mut follower = ship
        .net
        .command(bin())
        .args(["logs", "ticker", "-f", "--json", "--since", "1s"])
        .env("STARPHLEET_STATE_DIR", &ship.state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let wait_line = |needle: &str| -> (serde_json::Value, Duration) {
        let start = Instant::now();
        loop {
            let left = Duration::from_secs(30).saturating_sub(start.elapsed());
            let r = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("`logs -f` never showed {needle}"));
            if r["line"].as_str().unwrap_or("").contains(needle) {
                return (r, start.elapsed());
            }
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    ship.get(80, "/ticker/say/first-follow").unwrap();
    let (_, _) = wait_line("said first-follow");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "followed line took {:?}",
        asked.elapsed()
    );

    app.write(
        "Starphleet",
        "start /usr/bin/python3 server.py\nexport AGAIN=1\n",
    );
    let v2 = app.commit("v2");
    ship.wait_for_body(80, "/ticker/ready", "/ready", DEPLOY);
    let deadline = Instant::now() + DEPLOY;
    loop {
        let st = ship.status_json();
        if st["services"][0]["app_commit"] == v2.as_str() {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    ship.get(80, "/ticker/say/after-redeploy").unwrap();
    let (r, _) = wait_line("said after-redeploy");
    assert!(r["version"].as_str().unwrap().starts_with(&v2[..12]), "{r}");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn lines_survive_a_ship_restart_none_lost_or_doubled() {
    let (mut ship, _app) = ticker_ship("", "export TICK=1\n");
    std::thread::sleep(Duration::from_millis(700));
    ship.kill();
    std::thread::sleep(Duration::from_millis(700));
    ship.start();
    std::thread::sleep(Duration::from_millis(1500));
    let ticks: Vec<u64> = logs(&ship, &["ticker", "--grep", "tick ", "--limit", "1000000"])
        .iter()
        .map(|r| {
            r["line"].as_str().unwrap()["tick ".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ticks.len() > 300, "only {} ticks", ticks.len());
    let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "every tick exactly once, in order");
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_flooding_service_does_not_delay_another_services_logs_or_the_ship() {
    let mut ship = TestShip::new();
    let app = ticker_repo(&ship.path("ticker"), "");
    let flood = Repo::new(ship.path("flood"));
    flood
        .write(
            "Starphleet",
            "start /bin/sh -c 'timeout 8 yes \"flood flood flood flood flood flood flood\"; exec sleep 1000'\n",
        )
        .commit("flood");
    ship.hq
        .write(
            "ticker.orders",
            &format!("autodeploy {}\npublish --private 8000\n", app.url()),
        )
        .write("flood.orders", &format!("autodeploy {}\n", flood.url()))
        .commit("two");
    ship.start();
    ship.wait_for_body(80, "/ticker/ready", "/ready", DEPLOY);
    // Wait until the flood is on.
    wait_for_log(&ship, &["flood", "--limit", "1"], Duration::from_secs(30));
    for i in 0..3 {
        let marker = format!("quiet-{i}");
        let asked = Instant::now();
        ship.get(80, &format!("/ticker/say/{marker}")).unwrap();
        wait_for_log(
            &ship,
            &["ticker", "--grep", &marker],
            Duration::from_secs(1),
        );
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{marker} took {:?}",
            asked.elapsed()
        );
        let t = Instant::now();
        ship.status_json();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "status took {:?}",
            t.elapsed()
        );
    }
    let st = ship.status_json();
    assert!(
        st["logs"]["disk_bytes"].as_u64().unwrap() < 1 << 30,
        "{}",
        st["logs"]
    );
}

fn container_numbers(ship: &TestShip) -> serde_json::Value {
    ship.status_json()["services"][0]["containers"][0].clone()
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn metrics_pass_promtool_and_follow_cpu_and_network_from_the_kernel() {
    let (ship, _app) = ticker_ship("", "");
    // CPU rises under load.
    let before = container_numbers(&ship);
    assert_eq!(ship.get(80, "/ticker/burn/0.6").unwrap().1, "burnt");
    let after = container_numbers(&ship);
    let cpu = after["cpu_seconds"].as_f64().unwrap() - before["cpu_seconds"].as_f64().unwrap();
    assert!(cpu > 0.4, "container CPU rose by only {cpu}s");
    assert!(after["memory_bytes"].as_u64().unwrap() > 1 << 20, "{after}");

    // Network bytes match what we sent within 10 %.
    let rx_before = container_numbers(&ship)["net_rx_bytes"].as_u64().unwrap();
    let body = vec![b'x'; 4 << 20];
    let sent = body.len() as u64;
    ship.net.run(|| {
        let r = ureq::post("http://127.0.0.1:80/ticker/sink")
            .send_bytes(&body)
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let rx = container_numbers(&ship)["net_rx_bytes"].as_u64().unwrap() - rx_before;
    assert!(
        rx >= sent && rx <= sent + sent / 10,
        "container received {rx} bytes for {sent} sent"
    );

    // /metrics on the admin endpoint is valid Prometheus text with cAdvisor names.
    let (code, text) = ship.get(9797, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("service=\"ticker\"")),
            "{name} missing:\n{text}"
        );
    }
    promtool_check(&text);
}

fn promtool_check(text: &str) {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        let ok = std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "promtool is needed: apt-get install prometheus");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn logs_are_forwarded_to_the_syslog_server_named_in_settings() {
    let mut ship = TestShip::new();
    let listener = ship
        .net
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn);
        loop {
            // RFC 6587 octet counting: "LEN SP MSG".
            let mut len = Vec::new();
            if reader.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                return;
            }
            let n: usize = String::from_utf8_lossy(&len).trim().parse().unwrap();
            let mut msg = vec![0; n];
            std::io::Read::read_exact(&mut reader, &mut msg).unwrap();
            if tx.send(String::from_utf8_lossy(&msg).into_owned()).is_err() {
                return;
            }
        }
    });
    let app = ticker_repo(&ship.path("ticker"), "");
    ship.hq
        .write(
            ".starphleet",
            &format!("STARPHLEET_LOG_SYSLOG=tcp://127.0.0.1:{port}\n"),
        )
        .write(
            "ticker.orders",
            &format!("autodeploy {}\npublish --private 8000\n", app.url()),
        )
        .commit("forwarded");
    ship.start();
    ship.wait_for_body(80, "/ticker/ready", "/ready", DEPLOY);
    ship.get(80, "/ticker/say/over-syslog").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = rx
            .recv_timeout(left)
            .expect("the marker never reached the syslog server");
        if msg.contains("said over-syslog") {
            assert!(msg.starts_with("<134>1 "), "{msg}");
            assert!(msg.contains(" testship ticker "), "{msg}");
            break;
        }
    }
    let st = ship.status_json();
    assert_eq!(
        st["forwarders"][0]["stats"]["connected"], true,
        "{}",
        st["forwarders"]
    );
}

/// The value of `starphleet_http_requests_total` for the ticker's 2xx answers.
fn ticker_2xx(ship: &TestShip) -> u64 {
    let (_, text) = ship.get(9797, "/metrics").unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("starphleet_http_requests_total{")
                && l.contains("service=\"ticker\"")
                && l.contains("code_class=\"2xx\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn access_log_and_request_counters_match_the_requests_sent_exactly() {
    let (ship, app) = ticker_ship("", "");
    let before = ticker_2xx(&ship);
    for i in 0..25 {
        assert_eq!(
            ship.get(80, &format!("/ticker/counted-{i}")).unwrap().0,
            200
        );
    }
    assert_eq!(
        ticker_2xx(&ship),
        before + 25,
        "request counters match exactly"
    );

    let commit = git(&app.dir, &["rev-parse", "HEAD"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = logs(
            &ship,
            &[
                "ticker",
                "--kind",
                "access",
                "--grep",
                "path=/ticker/counted-",
            ],
        );
        if records.len() >= 25 || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(records.len(), 25, "one access record per request");
    for r in &records {
        let line = r["line"].as_str().unwrap();
        assert!(
            line.starts_with("method=GET path=/ticker/counted-"),
            "{line}"
        );
        assert!(
            line.contains(" status=200 ") && line.contains(" duration_ms="),
            "{line}"
        );
        assert!(
            line.contains(&format!(" version={}", &commit[..12])),
            "{line}"
        );
        assert!(line.contains(" client=127.0.0.1:"), "{line}");
        assert!(r["version"].as_str().unwrap().starts_with(&commit[..12]));
    }
    let st = ship.status_json();
    let route = &st["services"][0]["routes"][0];
    assert!(
        route["requests_by_class"][1].as_u64().unwrap() >= 25,
        "{route}"
    );
    assert!(route["latency_ms_p50"].as_f64().is_some(), "{route}");
}
