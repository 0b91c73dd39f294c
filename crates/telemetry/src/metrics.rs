//! Prometheus metrics of containers, routes and the log store, in the Prometheus text format
//! (0.0.4) written by the official `prometheus-client` crate.
//!
//! Values come from the kernel at scrape time (cgroup counters, the container's veth), so a
//! scrape builds a fresh registry around one collector that encodes the sampled values
//! (prometheus-client's "collector" pattern for exporters). Container metrics use cAdvisor's
//! names, types and help, so existing dashboards and alerts work unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::store::StoreStats;

/// The HTTP `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the default request-duration buckets: 1 ms to 10 s.
pub const DEFAULT_LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why [`sample_container`] could not sample a container (most often: it is gone).
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Its cgroup counters could not be read; `detail` is the runtime's explanation.
    #[error("{detail}")]
    Cgroups {
        /// The container's first process.
        pid: u32,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// Its veth's counters could not be read; `detail` is the runtime's explanation.
    #[error("{detail}")]
    Net {
        /// The host-side veth.
        veth: String,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// `/proc/<pid>/stat` could not be read.
    #[error("reading /proc/{pid}/stat (is the process gone?): {error}")]
    ProcessGone {
        /// The process.
        pid: u32,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// `/proc/<pid>/stat` or `/proc/stat` did not hold the start time it always has.
    #[error("parsing {file}: {what} not found")]
    Unparsable {
        /// The file read.
        file: String,
        /// The field missing.
        what: &'static str,
    },
    /// `/proc/stat` could not be read.
    #[error("reading /proc/stat: {0}")]
    ProcStat(std::io::Error),
}

/// Who a container is: the labels of its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLabels {
    /// The ship name.
    pub ship: String,
    /// The service name.
    pub service: String,
    /// The service version.
    pub version: String,
    /// The container id.
    pub container: String,
}

/// Network counters as seen from inside the container (its veth, directions flipped from
/// the host side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSample {
    /// Bytes the container received.
    pub rx_bytes: u64,
    /// Bytes the container sent.
    pub tx_bytes: u64,
    /// Packets the container received.
    pub rx_packets: u64,
    /// Packets the container sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// One container's counters at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSample {
    /// CPU time used, ns (cgroup cpuacct.usage / cpu.stat usage_usec).
    pub cpu_usage_ns: u64,
    /// Memory in use minus inactive file cache, bytes.
    pub memory_working_set_bytes: u64,
    /// Highest memory use the kernel recorded, when it does.
    pub memory_peak_bytes: Option<u64>,
    /// Tasks (threads) in the cgroup: pids.current.
    pub threads: u64,
    /// Its memory limit, bytes, when it has one.
    pub memory_limit_bytes: Option<u64>,
    /// Times the kernel killed one of its processes for running out of memory.
    pub oom_kills: Option<u64>,
    /// Its veth counters, when it has its own network namespace.
    pub net: Option<NetSample>,
    /// Times the ship restarted it (the ship's count; [`sample_container`] leaves it 0).
    pub restarts: u64,
    /// When its first process started, Unix seconds.
    pub started_at_s: f64,
}

/// Which route a request went to: the labels of route metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLabels {
    /// The ship name.
    pub ship: String,
    /// The service name.
    pub service: String,
    /// The published route, e.g. `:80/echo`.
    pub route: String,
}

/// A request-duration histogram: counts per bucket (not cumulative) and the sum.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    /// Bucket upper bounds in seconds, increasing.
    pub bounds_s: Vec<f64>,
    /// Observations per bucket; one more entry than `bounds_s` for those above the largest.
    pub counts: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum_s: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new(DEFAULT_LATENCY_BOUNDS.to_vec())
    }
}

impl LatencyHistogram {
    /// An empty histogram with these upper bounds (seconds, increasing).
    pub fn new(bounds_s: Vec<f64>) -> Self {
        let counts = vec![0; bounds_s.len() + 1];
        LatencyHistogram {
            bounds_s,
            counts,
            sum_s: 0.0,
        }
    }

    /// Records one request that took `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let i = self.bounds_s.partition_point(|b| *b < seconds);
        self.counts[i] += 1;
        self.sum_s += seconds;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One route's counters at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteSample {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests_by_class: [u64; 5],
    /// Requests being served now.
    pub in_flight: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// How long requests took.
    pub latency: LatencyHistogram,
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Per container.
    pub containers: Vec<(ContainerLabels, ContainerSample)>,
    /// Per route.
    pub routes: Vec<(RouteLabels, RouteSample)>,
    /// The log store's counters, labelled with this ship name.
    pub logs: Option<(String, StoreStats)>,
}

/// Renders a scrape as Prometheus text (serve it with [`CONTENT_TYPE`]).
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(scrape)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Samples a running container from the kernel: its cgroup counters (v1, v2 or hybrid), its
/// first process's start time and, given its host-side veth, its network counters. Call it
/// inside the network namespace that holds the veth. `restarts` is left 0 for the caller.
pub async fn sample_container(
    pid: u32,
    host_veth: Option<&str>,
) -> Result<ContainerSample, SampleError> {
    let net = match host_veth {
        Some(veth) => starphleet_runtime::net::link_stats(veth)
            .await
            .map_err(|e| SampleError::Net {
                veth: veth.to_string(),
                detail: format!("{e:#}"),
            })?
            .map(|s| net_sample(&s)),
        None => None,
    };
    sample_local(pid, net)
}

/// Samples many containers, `(pid, host-side veth)` each, in one go: one netlink dump for the
/// network counters of every veth named `veth_prefix…`, then the cgroup files on a blocking
/// thread. A ship with hundreds of containers answers `/status` and `/metrics` in
/// milliseconds this way. Results are in the order given.
pub async fn sample_containers(
    containers: Vec<(u32, String)>,
    veth_prefix: &str,
) -> Vec<Result<ContainerSample, SampleError>> {
    let links = starphleet_runtime::net::link_stats_all(veth_prefix)
        .await
        .unwrap_or_default();
    let work = move || {
        containers
            .into_iter()
            .map(|(pid, veth)| sample_local(pid, links.get(&veth).map(net_sample)))
            .collect()
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(samples) => samples,
        Err(e) => vec![Err(SampleError::Cgroups {
            pid: 0,
            detail: format!("the sampling thread failed: {e}"),
        })],
    }
}

/// What the host side sends, the container receives, and the other way round.
fn net_sample(s: &starphleet_runtime::net::LinkStats) -> NetSample {
    NetSample {
        rx_bytes: s.tx_bytes,
        tx_bytes: s.rx_bytes,
        rx_packets: s.tx_packets,
        tx_packets: s.rx_packets,
        rx_errors: s.tx_errors,
        tx_errors: s.rx_errors,
        rx_dropped: s.tx_dropped,
        tx_dropped: s.rx_dropped,
    }
}

fn sample_local(pid: u32, net: Option<NetSample>) -> Result<ContainerSample, SampleError> {
    let cg = starphleet_runtime::cgroups::stats(pid).map_err(|e| SampleError::Cgroups {
        pid,
        detail: format!("{e:#}"),
    })?;
    let started_at_s = process_start_time(pid)?;
    Ok(ContainerSample {
        cpu_usage_ns: cg.cpu_usage_ns,
        memory_working_set_bytes: cg.memory_bytes,
        memory_peak_bytes: cg.memory_peak_bytes,
        threads: cg.pids,
        memory_limit_bytes: cg.memory_limit_bytes,
        oom_kills: cg.oom_kills,
        net,
        restarts: 0,
        started_at_s,
    })
}

/// When `pid` started, Unix seconds: boot time plus its start in clock ticks since boot.
fn process_start_time(pid: u32) -> Result<f64, SampleError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|error| SampleError::ProcessGone { pid, error })?;
    // Field 22 (starttime); fields after the parenthesised command name start at field 3.
    let ticks: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| SampleError::Unparsable {
            file: format!("/proc/{pid}/stat"),
            what: "starttime (field 22)",
        })?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .map_err(SampleError::ProcStat)?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .ok_or_else(|| SampleError::Unparsable {
            file: "/proc/stat".into(),
            what: "btime",
        })?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(btime as f64 + ticks as f64 / hz)
}

#[derive(Debug)]
struct ScrapeCollector(Scrape);

/// A network metric: name, help, and which counter it reports.
type NetFamily = (&'static str, &'static str, fn(&NetSample) -> u64);

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

fn container_labels(l: &ContainerLabels) -> Labels<'_, 4> {
    [
        ("ship", &l.ship),
        ("service", &l.service),
        ("version", &l.version),
        ("container", &l.container),
    ]
}

fn route_labels(l: &RouteLabels) -> Labels<'_, 3> {
    [
        ("ship", &l.ship),
        ("service", &l.service),
        ("route", &l.route),
    ]
}

/// Writes one metric family of counters or gauges; nothing if it has no samples.
fn family<L: EncodeLabelSet, V: Value>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut m = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => value.counter(&mut m)?,
            _ => value.gauge(&mut m)?,
        }
    }
    Ok(())
}

/// A sample value, either integer or float.
trait Value {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result;
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result;
}

impl Value for u64 {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        m.encode_counter::<NoLabelSet, _, u64>(self, None)
    }
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        m.encode_gauge(self)
    }
}

impl Value for f64 {
    fn counter(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        m.encode_counter::<NoLabelSet, _, f64>(self, None)
    }
    fn gauge(&self, m: &mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        m.encode_gauge(self)
    }
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        let c = || s.containers.iter().map(|(l, v)| (container_labels(l), v));
        let net = || {
            s.containers
                .iter()
                .filter_map(|(l, v)| Some((container_labels(l), v.net.as_ref()?)))
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());

        // Counter names omit `_total`: the encoder appends it.
        family(
            &mut e,
            "container_cpu_usage_seconds",
            "Cumulative cpu time consumed in seconds.",
            Counter,
            c().map(|(l, v)| (l, v.cpu_usage_ns as f64 / 1e9)),
        )?;
        family(
            &mut e,
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            Gauge,
            c().map(|(l, v)| (l, v.memory_working_set_bytes)),
        )?;
        family(
            &mut e,
            "container_memory_max_usage_bytes",
            "Maximum memory usage recorded in bytes.",
            Gauge,
            c().filter_map(|(l, v)| Some((l, v.memory_peak_bytes?))),
        )?;
        family(
            &mut e,
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            Gauge,
            c().filter_map(|(l, v)| Some((l, v.memory_limit_bytes?))),
        )?;
        family(
            &mut e,
            "container_oom_events",
            "Count of out of memory events observed for the container.",
            Counter,
            c().filter_map(|(l, v)| Some((l, v.oom_kills?))),
        )?;
        family(
            &mut e,
            "container_threads",
            "Number of threads running inside the container.",
            Gauge,
            c().map(|(l, v)| (l, v.threads)),
        )?;
        family(
            &mut e,
            "container_start_time_seconds",
            "Start time of the container since unix epoch in seconds.",
            Gauge,
            c().map(|(l, v)| (l, v.started_at_s)),
        )?;
        family(
            &mut e,
            "starphleet_container_uptime_seconds",
            "Seconds since the container started.",
            Gauge,
            c().map(|(l, v)| (l, (now - v.started_at_s).max(0.0))),
        )?;
        family(
            &mut e,
            "starphleet_container_restarts",
            "Times the ship restarted the container.",
            Counter,
            c().map(|(l, v)| (l, v.restarts)),
        )?;
        let net_families: [NetFamily; 8] = [
            (
                "container_network_receive_bytes",
                "Cumulative count of bytes received.",
                |n| n.rx_bytes,
            ),
            (
                "container_network_transmit_bytes",
                "Cumulative count of bytes transmitted.",
                |n| n.tx_bytes,
            ),
            (
                "container_network_receive_packets",
                "Cumulative count of packets received.",
                |n| n.rx_packets,
            ),
            (
                "container_network_transmit_packets",
                "Cumulative count of packets transmitted.",
                |n| n.tx_packets,
            ),
            (
                "container_network_receive_errors",
                "Cumulative count of errors encountered while receiving.",
                |n| n.rx_errors,
            ),
            (
                "container_network_transmit_errors",
                "Cumulative count of errors encountered while transmitting.",
                |n| n.tx_errors,
            ),
            (
                "container_network_receive_packets_dropped",
                "Cumulative count of packets dropped while receiving.",
                |n| n.rx_dropped,
            ),
            (
                "container_network_transmit_packets_dropped",
                "Cumulative count of packets dropped while transmitting.",
                |n| n.tx_dropped,
            ),
        ];
        for (name, help, get) in net_families {
            family(&mut e, name, help, Counter, net().map(|(l, n)| (l, get(n))))?;
        }

        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        family(
            &mut e,
            "starphleet_http_requests",
            "HTTP responses by status class.",
            Counter,
            s.routes.iter().flat_map(|(l, v)| {
                CLASSES
                    .iter()
                    .zip(v.requests_by_class)
                    .map(move |(class, n)| {
                        let [a, b, c] = route_labels(l);
                        ([a, b, c, ("code_class", *class)], n)
                    })
            }),
        )?;
        family(
            &mut e,
            "starphleet_http_in_flight_requests",
            "HTTP requests being served.",
            Gauge,
            s.routes.iter().map(|(l, v)| (route_labels(l), v.in_flight)),
        )?;
        family(
            &mut e,
            "starphleet_http_response_bytes",
            "HTTP response body bytes sent.",
            Counter,
            s.routes
                .iter()
                .map(|(l, v)| (route_labels(l), v.response_bytes)),
        )?;
        if !s.routes.is_empty() {
            let mut metric = e.encode_descriptor(
                "starphleet_http_request_duration_seconds",
                "Time from request received to response finished.",
                None,
                MetricType::Histogram,
            )?;
            for (l, v) in &s.routes {
                let h = &v.latency;
                let buckets: Vec<(f64, u64)> = h
                    .bounds_s
                    .iter()
                    .copied()
                    .zip(h.counts.iter().copied())
                    .collect();
                metric
                    .encode_family(&route_labels(l))?
                    .encode_histogram::<NoLabelSet>(h.sum_s, h.count(), &buckets, None)?;
            }
        }

        if let Some((ship, stats)) = &s.logs {
            family(
                &mut e,
                "starphleet_log_disk_bytes",
                "Bytes of stored log segments.",
                Gauge,
                stats
                    .service_bytes
                    .iter()
                    .map(|(service, b)| ([("ship", ship.as_str()), ("service", service)], *b)),
            )?;
            family(
                &mut e,
                "starphleet_log_records",
                "Log records stored since the ship started.",
                Counter,
                [([("ship", ship.as_str())], stats.records)],
            )?;
            family(
                &mut e,
                "starphleet_log_write_errors",
                "Log batches that could not be stored (disk full, I/O errors).",
                Counter,
                [([("ship", ship.as_str())], stats.write_errors)],
            )?;
            family(
                &mut e,
                "starphleet_log_dropped_records",
                "Log records dropped because the disk was full.",
                Counter,
                [([("ship", ship.as_str())], stats.dropped_records)],
            )?;
            family(
                &mut e,
                "starphleet_log_disk_full",
                "1 while log records are being dropped for a full disk.",
                Gauge,
                [([("ship", ship.as_str())], u64::from(stats.disk_full))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_per_bucket() {
        let mut h = LatencyHistogram::new(vec![0.1, 1.0]);
        for s in [0.05, 0.1, 0.5, 3.0] {
            h.observe(s);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert!((h.sum_s - 3.65).abs() < 1e-9);
    }

    #[test]
    fn process_start_time_is_recent_for_this_process() {
        let started = process_start_time(std::process::id()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}
