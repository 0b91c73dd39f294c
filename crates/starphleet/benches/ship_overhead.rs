//! What collecting logs and metrics costs the ship, with 20 running services.
//!
//!   cargo bench -p starphleet --bench ship_overhead [-- SERVICES SECONDS]
//!
//! Every service prints a line every 5 ms (about 200 lines/s each); while they
//! run, `/metrics` and `/status` are scraped once a second (as Prometheus and
//! the dashboard would). Reports the control plane's CPU use and memory over
//! the window, the records it stored per second, and the proxy's memory.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// The ticker app of the end-to-end tests; with `TICK=1` it prints a line every 5 ms.
const APP: &str = include_str!("../tests/apps/ticker.py");

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = *args.first().unwrap_or(&20) as usize;
    let seconds = *args.get(1).unwrap_or(&20);
    let mut ship = TestShip::new();
    let app = Repo::new(ship.path("app"));
    app.write("server.py", APP).write(
        "Starphleet",
        "start /usr/bin/python3 server.py\nexport TICK=1\n",
    );
    app.commit("ticker");
    for i in 0..services {
        ship.hq.write(
            &format!("s{i:02}.orders"),
            &format!("autodeploy {}\npublish --private 8000\n", app.url()),
        );
    }
    ship.hq.commit("many");
    let t = Instant::now();
    ship.start();
    for i in 0..services {
        ship.wait_for_body(80, &format!("/s{i:02}/"), "/", Duration::from_secs(120));
    }
    eprintln!("{services} services serving after {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(2));

    let ship_pid: u32 = std::fs::read_to_string(ship.state.join("ship.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let proxy_pid: u32 = std::fs::read_to_string(ship.state.join("proxy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let records = |ship: &TestShip| ship.status_json()["logs"]["records"].as_u64().unwrap();
    let (cpu0, _) = usage(ship_pid);
    let rec0 = records(&ship);
    let start = Instant::now();
    let mut peak_rss = 0;
    let mut scrape_ms = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        let s = Instant::now();
        let (code, _) = ship.get(9797, "/metrics").unwrap();
        assert_eq!(code, 200);
        ship.get(9797, "/status").unwrap();
        scrape_ms.push(s.elapsed().as_secs_f64() * 1000.0);
        peak_rss = peak_rss.max(usage(ship_pid).1);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(s.elapsed()));
    }
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, rss) = usage(ship_pid);
    let rec1 = records(&ship);
    let (_, proxy_rss) = usage(proxy_pid);
    scrape_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("ship overhead: {services} services printing ~200 lines/s each, /metrics + /status scraped every second, {wall:.0} s");
    println!(
        "  control plane CPU:     {:.1} % of one core",
        (cpu1 - cpu0) / wall * 100.0
    );
    println!(
        "  control plane memory:  {} MiB resident (peak {} MiB)",
        rss >> 20,
        peak_rss >> 20
    );
    println!(
        "  records stored:        {:.0} per second",
        (rec1 - rec0) as f64 / wall
    );
    println!(
        "  /metrics + /status:    median {:.1} ms per scrape pair",
        scrape_ms[scrape_ms.len() / 2]
    );
    println!("  proxy memory:          {} MiB resident", proxy_rss >> 20);
}
