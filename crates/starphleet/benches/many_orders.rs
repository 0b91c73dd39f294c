//! One HQ commit with hundreds of orders: how long until all serve, how long the control
//! plane's decisions take, and what the ship costs once they run.
//!
//!   cargo bench -p starphleet --bench many_orders [-- ORDERS]      (default 500)
//!
//! Reports: time from the ship's start to every service serving; the longest and the last
//! pass of the owner's decisions (plan + state changes, no I/O; `status.decide`); the
//! ship's and the proxy's resident memory and the ship's CPU use over 10 idle seconds;
//! `/status` and `/metrics` latency (median and worst of 20, on the admin endpoint); and
//! the time from a commit changing one order to its new version serving. Under
//! `cargo test --all-targets` (no `--bench` argument) it runs 12 orders as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const APP: &str = include_str!("../tests/apps/ticker.py");

/// CPU seconds per thread name (`comm`) of a process.
fn threads_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some((_, rest))) = (stat.find('('), stat.rsplit_once(')')) else {
            continue;
        };
        let name = stat[open + 1..stat.rfind(')').unwrap()].to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu =
            (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0;
        *out.entry(name).or_insert(0.0) += cpu;
    }
    out
}

fn pid_file(ship: &TestShip, name: &str) -> u32 {
    std::fs::read_to_string(ship.state.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Services serving; 0 while the ship is still starting.
fn serving(ship: &TestShip) -> usize {
    let out = ship.cli(&["status", "--json"]);
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return 0;
    };
    status["services"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["state"] == "serving").count())
}

/// Median and worst of 20 timed GETs on the admin endpoint.
fn admin_latency(ship: &TestShip, path: &str) -> (Duration, Duration) {
    let url = format!("http://127.0.0.1:9797{path}");
    let mut times: Vec<Duration> = ship.net.run(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        (0..20)
            .map(|_| {
                let t = Instant::now();
                let r = agent.get(&url).call().expect("admin GET");
                assert_eq!(r.status(), 200, "{url}");
                r.into_string().unwrap();
                t.elapsed()
            })
            .collect()
    });
    times.sort();
    (times[10], times[19])
}

fn order(app: &Repo, i: usize, extra: &str) -> String {
    format!(
        "autodeploy {}\npublish --private 8000 --url /s{i:03}\n{extra}",
        app.url()
    )
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let orders = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(if bench { 500 } else { 12 });
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("app"));
    app.write("server.py", APP)
        .write("Starphleet", "start /usr/bin/python3 server.py\n");
    app.commit("ticker");
    for i in 0..orders {
        ship.hq
            .write(&format!("s{i:03}.orders"), &order(&app, i, ""));
    }
    ship.hq.commit("many");
    let t = Instant::now();
    ship.start();
    let deadline = Instant::now() + Duration::from_secs(60 + orders as u64);
    let mut last_report = Instant::now();
    loop {
        let n = serving(&ship);
        if n == orders {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {orders} serving after {:?}\n{}",
            t.elapsed(),
            ship.log()
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("{n}/{orders} serving after {:.0?}", t.elapsed());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let all_serving = t.elapsed();
    for i in 0..orders {
        assert_eq!(
            ship.get(80, &format!("/s{i:03}/x")).unwrap().0,
            200,
            "/s{i:03}"
        );
    }
    let decide = ship.status_json()["decide"].clone();

    // Idle: every service runs, nothing changes.
    std::thread::sleep(Duration::from_secs(2));
    let (ship_pid, proxy_pid) = (pid_file(&ship, "ship.pid"), pid_file(&ship, "proxy.pid"));
    let (cpu0, _) = usage(ship_pid);
    let threads0 = threads_cpu(ship_pid);
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let (cpu1, ship_rss) = usage(ship_pid);
    let mut by_thread: Vec<(String, f64)> = threads_cpu(ship_pid)
        .into_iter()
        .map(|(name, cpu)| {
            let before = threads0.get(&name).copied().unwrap_or(0.0);
            (name, cpu - before)
        })
        .filter(|(_, cpu)| *cpu > 0.0)
        .collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (_, proxy_rss) = usage(proxy_pid);
    let (status_p50, status_max) = admin_latency(&ship, "/status");
    let (metrics_p50, metrics_max) = admin_latency(&ship, "/metrics");

    // One order changes among all the others.
    let t = Instant::now();
    ship.hq
        .write("s000.orders", &order(&app, 0, "export CHANGED=1"))
        .commit("one changes");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let svc = ship.status_json()["services"][0].clone();
        let done = svc["deploys"]
            .as_array()
            .is_some_and(|d| d.len() >= 2 && d.last().unwrap()["outcome"] == "serving");
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed order never served: {svc}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let one_change = t.elapsed();
    let planned = ship.status_json()["decide"]["last_hq_change_us"]
        .as_u64()
        .unwrap_or(0);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("| {orders} orders in one HQ commit | |");
    println!("|---|---:|");
    println!(
        "| ship start → all serving | {:.1} s |",
        all_serving.as_secs_f64()
    );
    println!(
        "| longest pass of decisions (plan + state, no I/O) | {:.1} ms |",
        decide["max_us"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    println!("| passes of decisions | {} |", decide["passes"]);
    println!(
        "| ship CPU while idle | {:.1} % of one core |",
        (cpu1 - cpu0) / idle.as_secs_f64() * 100.0
    );
    for (name, cpu) in by_thread.iter().take(4) {
        println!(
            "| … of which thread `{name}` | {:.1} % |",
            cpu / idle.as_secs_f64() * 100.0
        );
    }
    println!("| ship RSS | {:.1} MiB |", mib(ship_rss));
    println!("| proxy RSS | {:.1} MiB |", mib(proxy_rss));
    println!(
        "| GET /status p50 / max | {:.1} / {:.1} ms |",
        status_p50.as_secs_f64() * 1000.0,
        status_max.as_secs_f64() * 1000.0
    );
    println!(
        "| GET /metrics p50 / max | {:.1} / {:.1} ms |",
        metrics_p50.as_secs_f64() * 1000.0,
        metrics_max.as_secs_f64() * 1000.0
    );
    println!(
        "| planning that HQ change (its pass of decisions) | {:.1} ms |",
        planned as f64 / 1000.0
    );
    println!(
        "| commit changing one order → serving | {:.2} s |",
        one_change.as_secs_f64()
    );
    let out = ship.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
