//! Per-route counters (status classes, bytes, a latency histogram) and per-container access logs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency histogram buckets; the last bucket is everything above.
pub const LATENCY_BOUNDS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters of one route, kept across table swaps; updated with relaxed atomics only.
#[derive(Default)]
pub(crate) struct RouteStats {
    by_class: [AtomicU64; 5],
    bytes: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    sum_us: AtomicU64,
}

impl RouteStats {
    /// Counts one finished request.
    pub fn record(&self, status: u16, bytes: u64, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS_S
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// A copy of the counters, labelled.
    pub fn snapshot(
        &self,
        port: u16,
        hosts: &[String],
        prefix: &str,
        service: &str,
    ) -> RouteCounters {
        RouteCounters {
            port,
            hosts: hosts.to_vec(),
            prefix: prefix.to_string(),
            service: service.to_string(),
            requests_by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            response_bytes: self.bytes.load(Ordering::Relaxed),
            latency_counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            latency_sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// What the proxy has counted for one route since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteCounters {
    /// Public port.
    pub port: u16,
    /// The route's host names; empty for any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// URL prefix.
    pub prefix: String,
    /// Service behind it.
    pub service: String,
    /// Finished requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests_by_class: [u64; 5],
    /// Response body bytes sent to clients.
    pub response_bytes: u64,
    /// Requests per latency bucket, bounds in [`LATENCY_BOUNDS_S`], plus one for slower ones.
    pub latency_counts: Vec<u64>,
    /// Sum of all latencies, seconds.
    pub latency_sum_s: f64,
}

impl RouteCounters {
    /// Finished requests.
    pub fn requests(&self) -> u64 {
        self.requests_by_class.iter().sum()
    }

    /// The latency below which a fraction `q` of requests finished (bucket upper bound), in seconds.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.latency_counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_S.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// One container's access log: `<dir>/<container>.log`, one logfmt line per request.
///
/// Lines are gathered in memory and appended whole with one write, so concurrent requests never
/// interleave and a busy container costs a write per batch rather than per request. A batch is
/// written when the last request in flight to the container ends (so a drained container's log
/// is complete before its count reads 0), when it passes [`FLUSH_AT`] bytes, and by the proxy's
/// periodic [`AccessFile::flush`].
pub(crate) struct AccessFile {
    file: std::fs::File,
    pending: Mutex<Vec<u8>>,
}

/// Pending access-log bytes that trigger a write.
const FLUSH_AT: usize = 32 * 1024;

impl AccessFile {
    /// Opens (creating) the access log of `container` under `dir`.
    pub fn open(dir: &Path, container: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path: PathBuf = dir.join(format!("{container}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessFile {
            file,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Adds one line (`line` appends it, newline included); `last`: no other request to the
    /// container is in flight, write now. A failure (full disk) loses lines, never the request.
    pub fn write_line(&self, line: impl FnOnce(&mut Vec<u8>), last: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        line(&mut pending);
        if last || pending.len() >= FLUSH_AT {
            self.write_out(&mut pending);
        }
    }

    /// Writes the pending lines.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.write_out(&mut pending);
    }

    fn write_out(&self, pending: &mut Vec<u8>) {
        if !pending.is_empty() {
            let _ = (&self.file).write_all(pending);
            pending.clear();
        }
    }
}

impl Drop for AccessFile {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_buckets_and_quantiles() {
        let s = RouteStats::default();
        for _ in 0..98 {
            s.record(200, 10, Duration::from_micros(800));
        }
        s.record(404, 5, Duration::from_millis(30));
        s.record(503, 5, Duration::from_secs(60));
        let c = s.snapshot(80, &[], "/a", "a");
        assert_eq!(c.requests_by_class, [0, 98, 0, 1, 1]);
        assert_eq!(c.requests(), 100);
        assert_eq!(c.response_bytes, 990);
        assert_eq!(c.latency_quantile(0.5), Some(0.001));
        assert_eq!(c.latency_quantile(0.99), Some(0.05));
        assert_eq!(c.latency_quantile(1.0), Some(f64::INFINITY));
        assert_eq!(c.latency_counts.len(), LATENCY_BOUNDS_S.len() + 1);
    }
}
