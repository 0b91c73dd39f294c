//! How fast one service can log and have every line collected: a real writer process (`seq`)
//! appends numbered lines to a stdout file as fast as it can while the collector thread runs;
//! then every line is checked to be stored exactly once, in order.
//!
//! ```text
//! cargo run --release -p starphleet-telemetry --example log_throughput [LINES] [WIDTH]
//! ```
//! `WIDTH` pads each number to that many digits (line = WIDTH + 1 bytes); without arguments
//! it runs 2,000,000 short lines and 1,000,000 lines of 100 bytes.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use starphleet_telemetry::{Collector, Kind, Limits, LogStore, Query, RecordMeta};

fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("LINES and WIDTH are numbers"))
        .collect::<Result<_>>()?;
    let runs = match args[..] {
        [] => vec![(2_000_000, 0), (1_000_000, 99)],
        [lines] => vec![(lines, 0)],
        [lines, width, ..] => vec![(lines, width)],
    };
    for (lines, width) in runs {
        run(lines, width)?;
    }
    Ok(())
}

fn run(lines: u64, width: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Caps big enough to keep everything: this measures collection, not retention.
    let limits = Limits {
        segment_bytes: 8 << 20,
        service_bytes: 8 << 30,
        total_bytes: 8 << 30,
        keep_free_bytes: None,
    };
    let store = LogStore::open(&dir.path().join("store"), limits)?;
    let source = dir.path().join("c1.stdout.log");
    let collector = Arc::new(Collector::new(store.clone()));
    collector.add(
        &source,
        RecordMeta {
            ship: "ship1".into(),
            service: "flood".into(),
            version: "abc123-r1".into(),
            container: "sp-ship1-1-flood".into(),
            kind: Kind::App,
            stream: "stdout".into(),
        },
    )?;
    let thread = collector.spawn(Duration::from_millis(10))?;

    let format = if width > 0 {
        format!("%0{width}.0f")
    } else {
        "%.0f".into()
    };
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq -f '{format}' 1 {lines} >> '{}'",
            source.display()
        ))
        .status()?;
    ensure!(status.success(), "the writer failed");
    let written = start.elapsed();
    while store.stats().records < lines {
        std::thread::sleep(Duration::from_millis(2));
    }
    let collected = start.elapsed();
    drop(thread);

    let bytes = std::fs::metadata(&source)?.len();
    let records = store.query(&Query::default())?;
    ensure!(
        records.len() as u64 == lines,
        "{} records for {lines} lines",
        records.len()
    );
    for (i, r) in records.iter().enumerate() {
        let n: f64 = r
            .line
            .parse()
            .with_context(|| format!("line {i}: {:?}", r.line))?;
        ensure!(n as u64 == i as u64 + 1, "line {i} is {:?}", r.line);
    }
    let secs = collected.as_secs_f64();
    println!(
        "{lines} lines of {} bytes ({:.1} MB): written in {:.2} s, all collected in {:.2} s: \
         {:.0} lines/s, {:.1} MB/s of app output; store {:.1} MB; none lost or doubled",
        bytes / lines,
        bytes as f64 / 1e6,
        written.as_secs_f64(),
        secs,
        lines as f64 / secs,
        bytes as f64 / 1e6 / secs,
        store.disk_usage() as f64 / 1e6,
    );
    Ok(())
}
