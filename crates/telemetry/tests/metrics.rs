//! Metrics text: cAdvisor's names, and it passes `promtool check metrics` (sampling real
//! containers is in tests/container.rs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use starphleet_telemetry::metrics::{
    render, ContainerLabels, ContainerSample, LatencyHistogram, NetSample, RouteLabels,
    RouteSample, Scrape,
};
use starphleet_telemetry::StoreStats;

/// A scrape like a busy ship's: `n` containers, two routes per three containers, log stats.
fn sample_scrape(n: usize) -> Scrape {
    let containers = (0..n)
        .map(|i| {
            (
                ContainerLabels {
                    ship: "ship1".into(),
                    service: format!("svc{}", i / 2),
                    version: format!("abc{i:03}-r{}", i % 3),
                    container: format!("sp-ship1-{i:x}-svc{}", i / 2),
                },
                ContainerSample {
                    cpu_usage_ns: 1_234_567_890 + i as u64,
                    memory_working_set_bytes: 50 << 20,
                    memory_peak_bytes: (i % 2 == 0).then_some(60 << 20),
                    threads: 4,
                    memory_limit_bytes: (i % 3 == 0).then_some(256 << 20),
                    oom_kills: Some((i % 2) as u64),
                    net: (i % 5 != 0).then(|| NetSample {
                        rx_bytes: 1000,
                        tx_bytes: 2000,
                        rx_packets: 10,
                        tx_packets: 20,
                        ..NetSample::default()
                    }),
                    restarts: (i % 4) as u64,
                    started_at_s: 1_700_000_000.25,
                },
            )
        })
        .collect();
    let routes = (0..n * 2 / 3)
        .map(|i| {
            let mut latency = LatencyHistogram::default();
            for ms in [0.4, 3.0, 12.0, 80.0, 700.0, 45_000.0] {
                latency.observe(ms / 1000.0);
            }
            (
                RouteLabels {
                    ship: "ship1".into(),
                    service: format!("svc{i}"),
                    route: format!(":80/svc{i}"),
                },
                RouteSample {
                    requests_by_class: [0, 120, 3, 7, 1],
                    in_flight: 2,
                    response_bytes: 123_456,
                    latency,
                },
            )
        })
        .collect();
    let logs = StoreStats {
        disk_bytes: 3000,
        service_bytes: vec![(String::new(), 1000), ("svc0".into(), 2000)],
        records: 42,
        write_errors: 1,
        last_error: None,
        dropped_records: 7,
        disk_full: true,
        space_low: true,
    };
    Scrape {
        containers,
        routes,
        logs: Some(("ship1".into(), logs)),
    }
}

/// promtool from Debian's `prometheus` package (`scripts/test` installs it); installed here
/// if missing, and the test fails saying so if it cannot be had.
fn promtool() -> &'static str {
    let found = || Command::new("promtool").arg("--version").output().is_ok();
    if !found() {
        eprintln!("promtool is missing: installing Debian's prometheus package");
        let install = || {
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "prometheus",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            install();
        }
    }
    assert!(
        found(),
        "promtool is needed: apt-get install prometheus (scripts/test does it)"
    );
    "promtool"
}

#[test]
fn rendered_metrics_use_cadvisor_names_and_show_only_what_is_known() {
    let scrape = sample_scrape(20);
    let text = render(scrape.clone());
    println!("{text}");
    for name in [
        "# TYPE container_cpu_usage_seconds_total counter",
        "container_cpu_usage_seconds_total{ship=\"ship1\",service=\"svc0\",version=\"abc000-r0\",container=\"sp-ship1-0-svc0\"} 1.23456789",
        "# TYPE container_memory_working_set_bytes gauge",
        "# TYPE container_memory_max_usage_bytes gauge",
        "# TYPE container_threads gauge",
        "# TYPE container_spec_memory_limit_bytes gauge",
        "# TYPE container_oom_events_total counter",
        "# TYPE container_network_receive_bytes_total counter",
        "# TYPE container_network_transmit_bytes_total counter",
        "# TYPE container_network_receive_errors_total counter",
        "# TYPE container_start_time_seconds gauge",
        "# TYPE starphleet_container_restarts_total counter",
        "# TYPE starphleet_container_uptime_seconds gauge",
        "starphleet_http_requests_total{ship=\"ship1\",service=\"svc0\",route=\":80/svc0\",code_class=\"2xx\"} 120",
        "# TYPE starphleet_http_in_flight_requests gauge",
        "# TYPE starphleet_http_response_bytes_total counter",
        "# TYPE starphleet_http_request_duration_seconds histogram",
        "starphleet_http_request_duration_seconds_bucket{ship=\"ship1\",service=\"svc0\",route=\":80/svc0\",le=\"0.005\"} 2",
        "starphleet_http_request_duration_seconds_bucket{ship=\"ship1\",service=\"svc0\",route=\":80/svc0\",le=\"+Inf\"} 6",
        "starphleet_http_request_duration_seconds_count{ship=\"ship1\",service=\"svc0\",route=\":80/svc0\"} 6",
        "starphleet_log_disk_bytes{ship=\"ship1\",service=\"svc0\"} 2000",
        "starphleet_log_write_errors_total{ship=\"ship1\"} 1",
        "starphleet_log_dropped_records_total{ship=\"ship1\"} 7",
        "starphleet_log_disk_full{ship=\"ship1\"} 1",
    ] {
        assert!(text.contains(name), "missing {name:?}");
    }
    // Peak memory and network are only there when known.
    assert_eq!(
        text.matches("container_memory_max_usage_bytes{").count(),
        10
    );
    assert_eq!(
        text.matches("container_network_receive_bytes_total{")
            .count(),
        16
    );

    let start = Instant::now();
    let runs = 200;
    for _ in 0..runs {
        render(scrape.clone());
    }
    println!(
        "render of 20 containers and 13 routes: {:?} each ({} bytes)",
        start.elapsed() / runs,
        text.len()
    );
}

#[test]
#[ignore = "root tier (installs promtool if missing): run by scripts/test"]
fn rendered_metrics_pass_promtool_check_metrics() {
    let text = render(sample_scrape(20));
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

#[test]
fn an_empty_scrape_is_valid_and_empty() {
    assert_eq!(render(Scrape::default()), "");
}
