//! What `GET /status` answers and `starphleet status` shows: built from the owner's snapshot,
//! then filled with live numbers from the kernel and the proxy.

use serde::{Deserialize, Serialize};

use crate::layout::process_alive;
use crate::owner::View;
use crate::state::{DeployRecord, PublishRecord};

/// What `GET /status` answers and `starphleet status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Ship name.
    pub ship: String,
    /// Ship id (unique per state dir).
    pub ship_id: String,
    /// HQ URL.
    pub headquarters: String,
    /// HQ commit in force.
    pub headquarters_commit: Option<String>,
    /// Why HQ cannot be followed right now, if so.
    pub headquarters_error: Option<String>,
    /// Every diagnostic of the HQ checkout and the ship's env folder, rendered.
    pub errors: Vec<String>,
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
    /// The log store's size.
    #[serde(default)]
    pub logs: Option<LogSummary>,
    /// Log forwarders named in `.starphleet`.
    #[serde(default)]
    pub forwarders: Vec<ForwarderStatus>,
    /// Every `--tls --host`'s certificate: host, source, expiry, next renewal and what is
    /// wrong (a host without one names the three ways to get one).
    #[serde(default)]
    pub certs: Vec<starphleet_certs::CertStatus>,
    /// The ship's clock when this status was built, Unix ms (the dashboard computes rates from it).
    #[serde(default)]
    pub sampled_at_ms: u64,
    /// The build cache as last collected.
    #[serde(default)]
    pub build_cache: Option<crate::gc::BuildCacheSummary>,
    /// How long the control plane's passes of decisions take.
    #[serde(default)]
    pub decide: crate::owner::core::DecideTimes,
    /// Out of its load balancers (`starphleet offline`).
    #[serde(default)]
    pub offline: bool,
    /// Which ship of HQ's `ships` this is, or that it runs alone.
    #[serde(default)]
    pub phleet: Option<String>,
}

/// One log forwarder in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwarderStatus {
    /// Where it sends, e.g. `syslog tcp://…`.
    pub target: String,
    /// Its counters.
    pub stats: starphleet_telemetry::ForwardStats,
}

/// The log store in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSummary {
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Records stored since the store was opened.
    pub records: u64,
    /// Records dropped because the disk was full, since the store was opened.
    #[serde(default)]
    pub dropped_records: u64,
    /// The state dir's disk was full at the last write.
    #[serde(default)]
    pub disk_full: bool,
}

/// One public route of a service, with the proxy's live counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Public port.
    pub port: u16,
    /// URL prefix.
    pub prefix: String,
    /// Requests answered since the proxy started.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests_by_class: [u64; 5],
    /// Median latency, ms.
    pub latency_ms_p50: Option<f64>,
    /// 99th percentile latency, ms.
    pub latency_ms_p99: Option<f64>,
}

/// One service in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// "serving", "deploying", "failed", "down", "broken order".
    pub state: String,
    /// The serving version's key.
    pub version: Option<String>,
    /// Its app commit.
    pub app_commit: Option<String>,
    /// Its order revision.
    pub order_revision: Option<String>,
    /// Where it is published.
    pub publish: Vec<PublishRecord>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
    /// The latest problem with this service, if any.
    pub error: Option<String>,
    /// Recent deploys, oldest first.
    pub deploys: Vec<DeployRecord>,
    /// Crashes since it last ran steadily (restarts back off exponentially).
    pub restarts: u32,
    /// Why the rollout across ships holds a new version here, if it does.
    #[serde(default)]
    pub rollout: Option<String>,
    /// Its routes with live counters.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
}

/// One container in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Address on the ship's bridge.
    pub ip: String,
    /// Init pid.
    pub pid: u32,
    /// Whether its process is alive.
    pub running: bool,
    /// Unix ms of its start.
    pub started_at_ms: u64,
    /// CPU time used, seconds (from its cgroup).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// Working-set memory, bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Peak memory, bytes, where the kernel records it.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// Threads in its cgroup.
    #[serde(default)]
    pub threads: Option<u64>,
    /// Its memory limit, bytes.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// Times the kernel killed one of its processes for running out of memory.
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// Bytes it received on its veth.
    #[serde(default)]
    pub net_rx_bytes: Option<u64>,
    /// Bytes it sent on its veth.
    #[serde(default)]
    pub net_tx_bytes: Option<u64>,
    /// Host end of its veth (for sampling).
    #[serde(skip)]
    pub host_if: String,
}

/// Who the ship is, for the status.
pub struct Identity<'a> {
    /// Ship name.
    pub name: &'a str,
    /// Ship id.
    pub id: &'a str,
    /// HQ URL.
    pub headquarters: &'a str,
}

/// Builds the status from the owner's snapshot.
pub fn build(view: &View, who: &Identity<'_>, now_ms: u64) -> Status {
    let snap = &view.snapshot;
    let state = &snap.state;
    let mut errors: Vec<String> = snap
        .hq
        .as_ref()
        .map(|hq| hq.errors.iter().map(|d| d.to_string()).collect())
        .unwrap_or_default();
    errors.extend(snap.env_errors.iter().cloned());
    errors.extend(view.forwarding.error.iter().cloned());
    let forwarders = view
        .forwarding
        .forwarders
        .iter()
        .map(|f| ForwarderStatus {
            target: f.target().to_string(),
            stats: f.stats(),
        })
        .collect();
    let broken: Vec<(String, String)> = snap
        .hq
        .as_ref()
        .map(|hq| {
            hq.broken
                .iter()
                .map(|b| {
                    let text: Vec<String> = b.diagnostics.iter().map(|d| d.to_string()).collect();
                    (b.service.clone(), text.join("\n"))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut names: std::collections::BTreeSet<String> = state.services.keys().cloned().collect();
    names.extend(broken.iter().map(|(n, _)| n.clone()));
    if let Some(hq) = &snap.hq {
        names.extend(hq.orders.iter().map(|o| o.service.clone()));
    }
    let services = names
        .into_iter()
        .map(|name| {
            let svc = state.services.get(&name).cloned().unwrap_or_default();
            let broken_error = broken
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, e)| e.clone());
            let current = svc.current.as_ref();
            let containers: Vec<ContainerStatus> = current
                .map(|v| {
                    v.containers
                        .iter()
                        .map(|c| ContainerStatus {
                            id: c.id.clone(),
                            ip: c.ip.to_string(),
                            pid: c.pid,
                            running: c.pid != 0 && process_alive(c.pid),
                            started_at_ms: c.started_at_ms,
                            cpu_seconds: None,
                            memory_bytes: None,
                            memory_peak_bytes: None,
                            threads: None,
                            memory_limit_bytes: None,
                            oom_kills: None,
                            net_rx_bytes: None,
                            net_tx_bytes: None,
                            host_if: c.host_if.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let serving = containers.iter().any(|c| c.running);
            let state_word = if broken_error.is_some() {
                "broken order"
            } else if snap.deploying.contains(&name) {
                "deploying"
            } else if serving {
                "serving"
            } else if svc.last_error.is_some() {
                "failed"
            } else {
                "down"
            };
            let error = broken_error
                .or_else(|| snap.unreachable.get(&name).cloned())
                .or(svc.last_error.clone());
            ServiceStatus {
                state: state_word.to_string(),
                version: current.map(|v| v.key.clone()),
                app_commit: current.map(|v| v.app_commit.clone()),
                order_revision: current.map(|v| v.order_revision.clone()),
                publish: current.map(|v| v.publish.clone()).unwrap_or_default(),
                containers,
                error,
                deploys: svc.deploys.clone(),
                restarts: svc.restarts,
                rollout: snap.rollout.get(&name).cloned(),
                routes: current
                    .map(|v| {
                        v.publish
                            .iter()
                            .map(|p| RouteStatus {
                                port: p.public,
                                prefix: p.url.clone(),
                                ..Default::default()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                name,
            }
        })
        .collect();
    Status {
        ship: who.name.to_string(),
        ship_id: who.id.to_string(),
        headquarters: who.headquarters.to_string(),
        headquarters_commit: snap.hq_commit.clone(),
        headquarters_error: snap.hq_error.clone(),
        errors,
        services,
        logs: None,
        forwarders,
        certs: Vec::new(),
        sampled_at_ms: now_ms,
        build_cache: snap.build_cache.clone(),
        decide: snap.decide,
        offline: state.offline,
        phleet: None,
    }
}
