//! What the owner of the ship's state decides, without doing any I/O: it takes events (from
//! the followers, the supervisor, deploy pipelines, the route programmer, the admin endpoint),
//! updates the state, asks the planner what to do, and returns effects for the owner task to
//! carry out. Everything here is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use starphleet_orders::{GitSource, Headquarters};
use starphleet_proxy::RouteTable;
use starphleet_telemetry::Kind;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::layout::Layout;
use crate::names::Names;
use crate::plan::{self, Action, DesiredVersion, HqView, InFlight, Reason};
use crate::state::{ContainerRecord, DeployRecord, ShipState, Version, DEPLOY_HISTORY};
use crate::telemetry::version_label;

/// Something that happened, for the owner to take into account.
#[derive(Debug)]
pub(crate) enum Event {
    /// Headquarters moved to `commit`, checked out and loaded.
    HqLoaded {
        /// The HQ commit.
        commit: String,
        /// What it says.
        hq: Box<Headquarters>,
    },
    /// Headquarters answered and has not moved.
    HqUnchanged,
    /// Headquarters cannot be followed right now; everything keeps running as it is.
    HqFailed(String),
    /// The ship's own env folder, read again.
    ShipEnv {
        /// Its pairs, in file order.
        env: Vec<(String, String)>,
        /// Its diagnostics, rendered.
        errors: Vec<String>,
    },
    /// An app source was resolved (or could not be).
    AppRef {
        /// The source.
        source: GitSource,
        /// Its commit, or why it cannot be reached.
        result: Result<String, String>,
    },
    /// A container's init process exited.
    Exited {
        /// The container id.
        container: String,
        /// The last lines it printed.
        tail: String,
    },
    /// A deploy needs containers: addresses, names and paths, recorded before any is created.
    Allocate {
        /// The service.
        service: String,
        /// The deploy.
        deploy: u64,
        /// How many.
        count: u32,
        /// Answered once the records are safely in the state file.
        reply: oneshot::Sender<Result<Vec<ContainerRecord>, String>>,
    },
    /// A build container needs a unique number and an address on the ship's bridge.
    BuildSlot {
        /// Answered at once: the number, and the address (`None` when the bridge is full:
        /// the build then shares the ship's network).
        reply: oneshot::Sender<BuildSlot>,
    },
    /// A build finished with its address: it may be handed out again.
    BuildEnded {
        /// The address [`Event::BuildSlot`] gave it.
        ip: std::net::Ipv4Addr,
    },
    /// A container of a deploy was started.
    Started {
        /// The service.
        service: String,
        /// The container id.
        container: String,
        /// Its init pid.
        pid: u32,
    },
    /// A deploy's version is healthy: switch traffic to it.
    Switch {
        /// The service.
        service: String,
        /// The deploy.
        deploy: u64,
        /// The healthy version (its id is assigned here).
        version: Box<Version>,
        /// The deploy's timeline so far.
        record: DeployRecord,
        /// `true` when the switch goes ahead, `false` when the deploy was superseded meanwhile.
        reply: oneshot::Sender<bool>,
    },
    /// A deploy stopped before its switch.
    DeployEnded {
        /// The service.
        service: String,
        /// The deploy.
        deploy: u64,
        /// Its timeline, the last step being where it stopped.
        record: DeployRecord,
        /// Why it stopped.
        end: DeployEnd,
    },
    /// A version switched away from finished draining and was stopped.
    Drained {
        /// The service.
        service: String,
        /// The version id.
        version: u64,
        /// How long it drained, ms.
        drain_ms: u64,
        /// How long stopping took, ms.
        stop_ms: u64,
    },
    /// A container was stopped and removed.
    Stopped {
        /// The container id.
        container: String,
    },
    /// The proxy now has route table `version` (or a newer one).
    RoutesApplied(u64),
    /// The build cache was collected.
    BuildCache(crate::gc::BuildCacheSummary),
    /// `starphleet redeploy SERVICE`.
    Redeploy {
        /// The service.
        service: String,
        /// What to tell the operator.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// What the ships of the earlier rollout waves answered at `GET /phleet/versions`.
    PeerVersions(starphleet_phleet::Observations),
    /// `starphleet offline` (true) or `online` (false).
    SetOffline {
        /// Whether the ship is to be out of its load balancers.
        offline: bool,
        /// Answered once the change is decided (the route table carries it).
        reply: oneshot::Sender<()>,
    },
}

/// How a deploy ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeployEnd {
    /// A newer version (or the order's removal) superseded it.
    Superseded,
    /// It failed; the message says where and why.
    Failed(String),
    /// It failed for a reason of the ship's, not the version's (no free address, a full disk,
    /// no file descriptors): it is tried again after a back-off.
    Transient(String),
}

/// A deploy to run.
#[derive(Debug, Clone)]
pub(crate) struct DeployJob {
    /// Its id.
    pub deploy: u64,
    /// The service.
    pub service: String,
    /// What to deploy.
    pub version: DesiredVersion,
    /// Why.
    pub reason: Reason,
    /// Build afresh instead of reusing a cached layer.
    pub fresh_build: bool,
    /// git's timeouts, from `.starphleet`.
    pub git_timeouts: starphleet_git::GitTimeouts,
}

/// A drain to run.
#[derive(Debug, Clone)]
pub(crate) struct DrainJob {
    /// The service.
    pub service: String,
    /// The version to drain and stop.
    pub version: Version,
    /// Unix ms when it is stopped even with requests in flight.
    pub deadline_ms: u64,
    /// The route table that no longer sends it traffic: draining waits until the proxy has it.
    pub after_routes: u64,
}

/// What the owner task must do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Start a deploy pipeline.
    Deploy(Box<DeployJob>),
    /// Tell a deploy pipeline to stop.
    Cancel(u64),
    /// Start a drain.
    Drain(DrainJob),
    /// Stop and remove a container (it exited, or nothing owns it any more).
    Stop {
        /// The service, for its logs.
        service: String,
        /// The container.
        container: ContainerRecord,
    },
    /// Record an event in the service's log.
    Note {
        /// The service.
        service: String,
        /// The version label.
        version: String,
        /// Ship or health.
        kind: Kind,
        /// The text.
        text: String,
    },
    /// `.starphleet` (re)loaded: start the log forwarders it names.
    Forward(Vec<(String, String)>),
    /// A service is gone: close its log files.
    Forget(String),
    /// Collect the build cache (a version started serving, or the ship started).
    CollectBuilds {
        /// The total size to stay under.
        cap: u64,
    },
}

/// A switch waiting for the proxy.
#[derive(Debug)]
struct SwitchWait {
    service: String,
    deploy: u64,
    record: DeployRecord,
    /// The route table that sends traffic to the new version, once known.
    routes: Option<u64>,
    asked_at_ms: u64,
}

/// What the ship knows but does not persist.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub hq: Option<Arc<Headquarters>>,
    pub hq_commit: Option<String>,
    pub hq_error: Option<String>,
    pub broken: BTreeSet<String>,
    pub ship_env: Vec<(String, String)>,
    pub env_errors: Vec<String>,
    pub app_commits: HashMap<GitSource, String>,
    /// Why an app source cannot be reached, by source.
    pub unreachable: HashMap<GitSource, String>,
    pub deploys: BTreeMap<String, InFlight>,
    pub draining_now: BTreeSet<u64>,
    pub stopping: BTreeSet<String>,
    pub exited: BTreeMap<String, String>,
    pub build_cache: Option<crate::gc::BuildCacheSummary>,
    /// The earlier rollout waves' last answers.
    pub peer_versions: starphleet_phleet::Observations,
    /// When each version was first wanted here (the rollout wait counts from it).
    pub first_seen: HashMap<starphleet_phleet::VersionId, u64>,
    /// Why the rollout gate holds a service's new version, by service.
    pub rollout_notes: BTreeMap<String, String>,
}

/// What the admin endpoint and the CLI read: a consistent picture, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The persisted state.
    pub state: Arc<ShipState>,
    /// Headquarters as last loaded.
    pub hq: Option<Arc<Headquarters>>,
    /// Its commit.
    pub hq_commit: Option<String>,
    /// Why it cannot be followed right now.
    pub hq_error: Option<String>,
    /// Diagnostics of the ship's env folder.
    pub env_errors: Vec<String>,
    /// Why a service's app cannot be reached, by service.
    pub unreachable: BTreeMap<String, String>,
    /// Services with a deploy in flight.
    pub deploying: BTreeSet<String>,
    /// The build cache as last collected.
    pub build_cache: Option<crate::gc::BuildCacheSummary>,
    /// Why the rollout gate holds a service's new version, by service.
    pub rollout: BTreeMap<String, String>,
    /// How long the owner's passes of decisions take.
    pub decide: DecideTimes,
}

/// How long the owner's passes of decisions (events in, plan, state changes, effects out; no
/// I/O) take: what bounds how fast the ship reacts, whatever the number of services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecideTimes {
    /// Passes so far.
    pub passes: u64,
    /// The last pass, microseconds.
    pub last_us: u64,
    /// The longest pass, microseconds.
    pub max_us: u64,
    /// The last pass that took in a new HQ commit: the time to plan an HQ change.
    #[serde(default)]
    pub last_hq_change_us: u64,
}

impl DecideTimes {
    /// Counts one pass that took `took`; `hq_change` when it took in a new HQ commit.
    pub fn record(&mut self, took: std::time::Duration, hq_change: bool) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.passes += 1;
        self.last_us = us;
        self.max_us = self.max_us.max(us);
        if hq_change {
            self.last_hq_change_us = us;
        }
    }
}

/// The route table the proxy should have, numbered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRoutes {
    /// Grows by one with every change.
    pub version: u64,
    /// The table.
    pub table: RouteTable,
}

/// Callbacks to run once the state they depend on is on disk.
pub(crate) type AfterPersist = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The owner's decisions.
pub(crate) struct Core {
    ship: String,
    names: Names,
    layout: Layout,
    state: Arc<ShipState>,
    world: World,
    routes: DesiredRoutes,
    routes_applied: u64,
    switches: Vec<SwitchWait>,
    /// Which deploy record a draining version's drain and stop times belong to.
    drain_records: HashMap<u64, (String, u64)>,
    next_deploy: u64,
    /// Addresses lent to build containers (not persisted: builds end with the ship).
    build_addresses: BTreeSet<std::net::Ipv4Addr>,
    dirty: bool,
    after_persist: Vec<AfterPersist>,
    effects: Vec<Effect>,
}

/// What a build container gets: a number for its names, and an address when one is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildSlot {
    /// Unique among the ship's containers (names its container, netns and veth).
    pub seq: u32,
    /// Its address on the ship's bridge.
    pub ip: Option<std::net::Ipv4Addr>,
}

/// How many plan → apply rounds one batch of events may take before the owner waits again;
/// each round only starts work that the next round sees as in flight, so two suffice.
const MAX_ROUNDS: usize = 8;

impl Core {
    /// A core over the state a ship loaded.
    pub fn new(ship: &str, names: Names, layout: Layout, state: ShipState) -> Self {
        let routes = DesiredRoutes {
            version: 1,
            table: table_of(ship, &state),
        };
        Core {
            ship: ship.to_string(),
            names,
            layout,
            state: Arc::new(state),
            world: World::default(),
            routes,
            routes_applied: 0,
            switches: Vec::new(),
            drain_records: HashMap::new(),
            next_deploy: 1,
            build_addresses: BTreeSet::new(),
            dirty: false,
            after_persist: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// The state as it is now.
    pub fn state(&self) -> &Arc<ShipState> {
        &self.state
    }

    fn state_mut(&mut self) -> &mut ShipState {
        self.dirty = true;
        Arc::make_mut(&mut self.state)
    }

    /// What the ship learned when it started: finishes switches a killed ship left half done
    /// and marks containers that died while it was away.
    pub fn adopt(&mut self, dead: &[String], now_ms: u64) {
        // Written once at start: a state recovered from the runtime is on disk at once.
        self.dirty = true;
        self.effects.push(Effect::CollectBuilds {
            cap: crate::gc::DEFAULT_CAP,
        });
        let interrupted: Vec<String> = self
            .state
            .services
            .iter()
            .filter(|(_, s)| s.switching.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in interrupted {
            info!(service = %name, "finishing a switch the previous ship started");
            let svc = self.state_mut().services.get_mut(&name).expect("listed");
            plan::finish_interrupted_switch(svc, now_ms);
        }
        for id in dead {
            self.world.exited.insert(
                id.clone(),
                format!("container {id} stopped while the ship was not running"),
            );
        }
        self.refresh_routes();
    }

    /// Takes one event into account.
    pub fn handle(&mut self, event: Event, now_ms: u64) {
        match event {
            Event::HqLoaded { commit, hq } => self.hq_loaded(commit, *hq),
            Event::HqUnchanged => self.world.hq_error = None,
            Event::HqFailed(e) => {
                if self.world.hq_error.as_deref() != Some(e.as_str()) {
                    error!("cannot follow headquarters, everything keeps running as it is: {e}");
                }
                self.world.hq_error = Some(e);
            }
            Event::ShipEnv { env, errors } => {
                self.world.ship_env = env;
                self.world.env_errors = errors;
            }
            Event::AppRef { source, result } => match result {
                Ok(commit) => {
                    self.world.unreachable.remove(&source);
                    self.world.app_commits.insert(source, commit);
                }
                Err(e) => {
                    if self.world.unreachable.get(&source) != Some(&e) {
                        warn!(source = %source, "cannot reach the app repository; its services keep their current version: {e}");
                    }
                    self.world.unreachable.insert(source, e);
                }
            },
            Event::Exited { container, tail } => {
                if self.state.all_containers().any(|c| c.id == container) {
                    self.world.exited.insert(container, tail);
                }
            }
            Event::Allocate {
                service,
                deploy,
                count,
                reply,
            } => {
                let records = self.allocate(&service, deploy, count, now_ms);
                match records {
                    Ok(records) => self.after_persist.push(Box::new(move |saved| {
                        let _ = reply.send(saved.map(|()| records));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Event::BuildSlot { reply } => {
                let ip = self.free_host().ok().map(|host| {
                    self.state_mut().last_host = host;
                    let ip = self.names.net().host(host);
                    self.build_addresses.insert(ip);
                    ip
                });
                let state = self.state_mut();
                let seq = state.next_seq;
                state.next_seq = seq.wrapping_add(1);
                let _ = reply.send(BuildSlot { seq, ip });
            }
            Event::BuildEnded { ip } => {
                self.build_addresses.remove(&ip);
            }
            Event::Started {
                service,
                container,
                pid,
            } => {
                if let Some(svc) = self.state_mut().services.get_mut(&service) {
                    for c in svc.pending.iter_mut().filter(|c| c.id == container) {
                        c.pid = pid;
                    }
                }
            }
            Event::Switch {
                service,
                deploy,
                version,
                record,
                reply,
            } => {
                let go = self.begin_switch(&service, deploy, *version, record, now_ms);
                let _ = reply.send(go);
            }
            Event::DeployEnded {
                service,
                deploy,
                record,
                end,
            } => self.deploy_ended(&service, deploy, record, end, now_ms),
            Event::Drained {
                service,
                version,
                drain_ms,
                stop_ms,
            } => self.drained(&service, version, drain_ms, stop_ms),
            Event::Stopped { container } => {
                self.world.stopping.remove(&container);
                self.world.exited.remove(&container);
                let state = self.state_mut();
                for svc in state.services.values_mut() {
                    svc.pending.retain(|c| c.id != container);
                }
            }
            Event::RoutesApplied(version) => {
                self.routes_applied = self.routes_applied.max(version);
            }
            Event::Redeploy { service, reply } => {
                let _ = reply.send(self.redeploy(&service));
            }
            Event::SetOffline { offline, reply } => {
                if self.state.offline != offline {
                    info!(
                        offline,
                        "ship taken {}",
                        if offline { "offline" } else { "online" }
                    );
                    self.state_mut().offline = offline;
                }
                let _ = reply.send(());
            }
            Event::BuildCache(summary) => self.world.build_cache = Some(summary),
            Event::PeerVersions(observed) => self.world.peer_versions = observed,
        }
    }

    /// Plans and applies until nothing more is due; returns when the planner next wants to run.
    pub fn settle(&mut self, now_ms: u64) -> Option<u64> {
        let mut wake = None;
        for _ in 0..MAX_ROUNDS {
            self.refresh_routes();
            self.complete_switches(now_ms);
            let plan = {
                let broken = &self.world.broken;
                let hq = self.world.hq.as_deref().map(|hq| HqView {
                    orders: &hq.orders,
                    broken,
                    settings: &hq.settings,
                });
                let (peers, settings) = rollout_of(self.world.hq.as_deref());
                let rollout = (settings.wave.is_some()
                    && peers.iter().any(|p| p.name == self.ship))
                .then_some(plan::RolloutView {
                    me: &self.ship,
                    peers: &peers,
                    settings: &settings,
                    observed: &self.world.peer_versions,
                    first_seen: &self.world.first_seen,
                });
                plan::plan(&plan::Input {
                    rollout,
                    now_ms,
                    hq,
                    ship_env: &self.world.ship_env,
                    app_commits: &self.world.app_commits,
                    services: &self.state.services,
                    deploys: &self.world.deploys,
                    draining_now: &self.world.draining_now,
                    stopping: &self.world.stopping,
                    exited: &self.world.exited,
                })
            };
            wake = plan.wake_at_ms;
            for (id, gate) in plan.gated {
                if gate == starphleet_phleet::Gate::Go {
                    self.world.rollout_notes.remove(&id.service);
                } else {
                    self.world
                        .rollout_notes
                        .insert(id.service.clone(), gate.to_string());
                }
                // Only the version wanted now counts; an older one's time is forgotten.
                self.world
                    .first_seen
                    .retain(|k, _| k.service != id.service || *k == id);
                self.world.first_seen.entry(id).or_insert(now_ms);
            }
            if plan.actions.is_empty() {
                break;
            }
            for action in plan.actions {
                self.apply(action, now_ms);
            }
        }
        self.refresh_routes();
        self.complete_switches(now_ms);
        wake
    }

    /// Effects to carry out, oldest first.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// When the state changed since the last call: the state to persist and what waits for it.
    pub fn take_persist(&mut self) -> Option<(Arc<ShipState>, Vec<AfterPersist>)> {
        if !self.dirty && self.after_persist.is_empty() {
            return None;
        }
        self.dirty = false;
        Some((self.state.clone(), std::mem::take(&mut self.after_persist)))
    }

    /// git's timeouts as `.starphleet` sets them (`STARPHLEET_GIT_TIMEOUT`).
    pub fn git_timeouts(&self) -> starphleet_git::GitTimeouts {
        git_timeouts(self.world.hq.as_deref().map(|hq| &hq.phleet))
    }

    /// The build cache's cap (`STARPHLEET_BUILD_CACHE_MAX`).
    fn build_cache_cap(&self) -> u64 {
        self.world
            .hq
            .as_ref()
            .map_or(crate::gc::DEFAULT_CAP, |hq| hq.phleet.build_cache_max)
    }

    /// Ids of the deploys in flight.
    pub fn in_flight_deploys(&self) -> BTreeSet<u64> {
        self.world.deploys.values().map(|d| d.deploy).collect()
    }

    /// The route table the proxy should have.
    pub fn routes(&self) -> &DesiredRoutes {
        &self.routes
    }

    /// What readers see.
    pub fn snapshot(&self) -> Snapshot {
        let mut unreachable = BTreeMap::new();
        if let Some(hq) = &self.world.hq {
            for o in &hq.orders {
                if let Some(e) = self.world.unreachable.get(&o.autodeploy) {
                    unreachable.insert(
                        o.service.clone(),
                        format!("cannot reach {}: {e}", o.autodeploy.url),
                    );
                }
            }
        }
        Snapshot {
            state: self.state.clone(),
            hq: self.world.hq.clone(),
            hq_commit: self.world.hq_commit.clone(),
            hq_error: self.world.hq_error.clone(),
            env_errors: self.world.env_errors.clone(),
            unreachable,
            deploying: self.world.deploys.keys().cloned().collect(),
            build_cache: self.world.build_cache.clone(),
            decide: DecideTimes::default(),
            rollout: self.world.rollout_notes.clone(),
        }
    }

    fn hq_loaded(&mut self, commit: String, hq: Headquarters) {
        if !hq.errors.is_empty() {
            error!(
                "headquarters {} has errors; the orders they affect keep their last good version:\n{}",
                short(&commit),
                hq.render_errors()
            );
        }
        info!(commit = %commit, orders = hq.orders.len(), broken = hq.broken.len(), "headquarters loaded");
        let settings_changed = self
            .world
            .hq
            .as_ref()
            .is_none_or(|old| old.settings != hq.settings);
        if !hq.settings_broken() && settings_changed {
            self.effects.push(Effect::Forward(hq.settings.clone()));
        }
        self.world.broken = hq.broken.iter().map(|b| b.service.clone()).collect();
        // A broken `.starphleet` keeps the settings (and so the env) it had.
        let hq = match (&self.world.hq, hq.settings_broken()) {
            (Some(old), true) => Headquarters {
                settings: old.settings.clone(),
                phleet: old.phleet.clone(),
                ..hq
            },
            _ => hq,
        };
        self.world.hq = Some(Arc::new(hq));
        self.world.hq_commit = Some(commit);
        self.world.hq_error = None;
    }

    /// The next free host number on the bridge, after the last one handed out: a freed
    /// address is reused last, so a stale route never reaches a newer container.
    fn free_host(&self) -> Result<u16, String> {
        let net = self.names.net();
        let used: BTreeSet<std::net::Ipv4Addr> = self
            .state
            .all_containers()
            .map(|c| c.ip)
            .chain(self.build_addresses.iter().copied())
            .collect();
        let capacity = net.capacity();
        let start = self.state.last_host.max(1);
        (1..=capacity)
            .map(|i| {
                let (start, i, cap) = (u32::from(start), u32::from(i), u32::from(capacity));
                ((start + cap - 2 + i) % cap) as u16 + 2
            })
            .find(|&n| !used.contains(&net.host(n)))
            .ok_or_else(|| {
                format!("no free address left on the ship's bridge ({capacity} containers run)")
            })
    }

    fn allocate(
        &mut self,
        service: &str,
        deploy: u64,
        count: u32,
        now_ms: u64,
    ) -> Result<Vec<ContainerRecord>, String> {
        let net = self.names.net();
        let mut out = Vec::new();
        for _ in 0..count {
            // Each record joins `pending` below, so the next round sees its address as used.
            let host = self.free_host()?;
            let names = self.names.clone();
            let logs = self.layout.service_logs(service);
            let bundles = self.layout.bundles();
            let state = self.state_mut();
            state.last_host = host;
            let seq = state.next_seq;
            state.next_seq = seq.wrapping_add(1);
            let ip = net.host(host);
            let id = names.container(seq, service);
            let record = ContainerRecord {
                bundle: bundles.join(&id),
                stdout: logs.join(format!("{id}.stdout.log")),
                stderr: logs.join(format!("{id}.stderr.log")),
                netns: names.netns(seq),
                host_if: names.host_veth(seq),
                id,
                ip,
                pid: 0,
                started_at_ms: now_ms,
                deploy,
            };
            state
                .services
                .entry(service.to_string())
                .or_default()
                .pending
                .push(record.clone());
            out.push(record);
        }
        Ok(out)
    }

    fn begin_switch(
        &mut self,
        service: &str,
        deploy: u64,
        mut version: Version,
        record: DeployRecord,
        now_ms: u64,
    ) -> bool {
        let Some(d) = self.world.deploys.get_mut(service) else {
            return false;
        };
        if d.deploy != deploy || d.cancelled {
            return false;
        }
        d.switching = true;
        let ids: BTreeSet<String> = version.containers.iter().map(|c| c.id.clone()).collect();
        let state = self.state_mut();
        version.id = state.new_version_id();
        let svc = state.services.entry(service.to_string()).or_default();
        svc.pending.retain(|c| !ids.contains(&c.id));
        svc.switching = Some(version);
        self.switches.push(SwitchWait {
            service: service.to_string(),
            deploy,
            record,
            routes: None,
            asked_at_ms: now_ms,
        });
        true
    }

    fn complete_switches(&mut self, now_ms: u64) {
        let applied = self.routes_applied;
        let (done, waiting): (Vec<SwitchWait>, Vec<SwitchWait>) =
            std::mem::take(&mut self.switches)
                .into_iter()
                .partition(|w| w.routes.is_some_and(|r| r <= applied));
        self.switches = waiting;
        for mut wait in done {
            let state = self.state_mut();
            let Some(svc) = state.services.get_mut(&wait.service) else {
                continue;
            };
            let label = svc
                .switching
                .as_ref()
                .map(|v| version_label(&v.app_commit, &v.order_revision))
                .unwrap_or_default();
            let old = plan::complete_switch(svc, now_ms);
            svc.failed_key = None;
            svc.last_error = None;
            svc.transient_failures = 0;
            svc.retry_at_ms = 0;
            wait.record
                .steps
                .push(("switch".into(), now_ms.saturating_sub(wait.asked_at_ms)));
            wait.record.outcome = "serving".into();
            let steps = steps_text(&wait.record);
            let started = wait.record.started_at_ms;
            push_record(svc, wait.record);
            if let Some(old) = old {
                self.drain_records
                    .insert(old, (wait.service.clone(), started));
            }
            self.world.deploys.remove(&wait.service);
            self.effects.push(Effect::CollectBuilds {
                cap: self.build_cache_cap(),
            });
            info!(service = %wait.service, deploy = wait.deploy, "serving");
            self.effects.push(Effect::Note {
                service: wait.service,
                version: label,
                kind: Kind::Ship,
                text: format!("serving ({steps})"),
            });
        }
    }

    fn deploy_ended(
        &mut self,
        service: &str,
        deploy: u64,
        mut record: DeployRecord,
        end: DeployEnd,
        now_ms: u64,
    ) {
        if self
            .world
            .deploys
            .get(service)
            .is_some_and(|d| d.deploy == deploy)
        {
            self.world.deploys.remove(service);
        }
        let step = record.steps.last().map(|s| s.0.clone()).unwrap_or_default();
        let label = record.version_label.clone();
        let svc = self
            .state_mut()
            .services
            .entry(service.to_string())
            .or_default();
        let (kind, text) = match &end {
            DeployEnd::Superseded => {
                record.outcome = "superseded by a newer version".into();
                info!(service, deploy, "deploy superseded by a newer version");
                (
                    Kind::Ship,
                    "deploy stopped: superseded by a newer version".to_string(),
                )
            }
            DeployEnd::Transient(e) => {
                svc.transient_failures += 1;
                let wait = plan::restart_delay(svc.transient_failures);
                svc.retry_at_ms = now_ms + wait.as_millis() as u64;
                record.outcome = format!("failed at {step}, retrying in {wait:?}: {e}");
                svc.last_error = Some(format!(
                    "deploy of {} failed at {step} (the ship's situation, not the version: retrying in {wait:?}): {e}",
                    short(&record.app_commit)
                ));
                warn!(service, version = %record.key, "deploy failed for a reason of the ship's; retrying in {wait:?}: {e}");
                (
                    Kind::Ship,
                    format!("deploy failed, retrying in {wait:?}: {e}"),
                )
            }
            DeployEnd::Failed(e) => {
                record.outcome = format!("failed at {step}: {e}");
                svc.failed_key = Some(record.key.clone());
                svc.last_error = Some(format!(
                    "deploy of {} failed at {step}: {e}",
                    short(&record.app_commit)
                ));
                error!(service, version = %record.key, "deploy failed, the previous version keeps serving: {e}");
                let kind = if step == "health" {
                    Kind::Health
                } else {
                    Kind::Ship
                };
                (kind, format!("deploy failed: {e}"))
            }
        };
        if !matches!(end, DeployEnd::Transient(_)) {
            svc.transient_failures = 0;
        }
        push_record(svc, record);
        self.effects.push(Effect::Note {
            service: service.to_string(),
            version: label,
            kind,
            text,
        });
    }

    fn drained(&mut self, service: &str, version: u64, drain_ms: u64, stop_ms: u64) {
        self.world.draining_now.remove(&version);
        let record = self.drain_records.remove(&version);
        let state = self.state_mut();
        let Some(svc) = state.services.get_mut(service) else {
            return;
        };
        svc.draining.retain(|v| v.id != version);
        if let Some((_, started)) = record {
            if let Some(r) = svc
                .deploys
                .iter_mut()
                .rev()
                .find(|r| r.started_at_ms == started)
            {
                r.steps.push(("drain".into(), drain_ms));
                r.steps.push(("stop".into(), stop_ms));
            }
        }
    }

    fn redeploy(&mut self, service: &str) -> Result<(), String> {
        let known: Vec<String> = self
            .world
            .hq
            .iter()
            .flat_map(|hq| hq.orders.iter().map(|o| o.service.clone()))
            .collect();
        if !known.iter().any(|s| s == service) {
            return Err(format!(
                "no order for service `{service}` in headquarters; services: {}",
                known.join(", ")
            ));
        }
        let svc = self
            .state_mut()
            .services
            .entry(service.to_string())
            .or_default();
        svc.redeploy_requested = true;
        svc.failed_key = None;
        info!(service, "redeploy requested");
        Ok(())
    }

    fn apply(&mut self, action: Action, now_ms: u64) {
        match action {
            Action::Deploy {
                service,
                version,
                reason,
                fresh_build,
            } => {
                let deploy = self.next_deploy;
                self.next_deploy += 1;
                self.world.deploys.insert(
                    service.clone(),
                    InFlight {
                        deploy,
                        key: version.key.clone(),
                        cancelled: false,
                        switching: false,
                    },
                );
                if fresh_build {
                    if let Some(svc) = self.state_mut().services.get_mut(&service) {
                        svc.redeploy_requested = false;
                    }
                }
                let git_timeouts = self.git_timeouts();
                self.effects.push(Effect::Deploy(Box::new(DeployJob {
                    deploy,
                    service,
                    version: *version,
                    reason,
                    fresh_build,
                    git_timeouts,
                })));
            }
            Action::Cancel { service, deploy } => {
                if let Some(d) = self.world.deploys.get_mut(&service) {
                    d.cancelled = true;
                    info!(service = %service, superseded = %d.key, "a newer version supersedes the deploy in progress");
                }
                self.effects.push(Effect::Cancel(deploy));
            }
            Action::Crashed {
                service,
                containers,
                restarts,
                restart_at_ms,
            } => {
                let delay = std::time::Duration::from_millis(restart_at_ms.saturating_sub(now_ms));
                let mut messages = Vec::new();
                let mut gone = Vec::new();
                let state = Arc::make_mut(&mut self.state);
                self.dirty = true;
                let Some(svc) = state.services.get_mut(&service) else {
                    return;
                };
                svc.restarts = restarts;
                svc.restart_at_ms = restart_at_ms;
                for v in svc.current.iter_mut().chain(svc.switching.iter_mut()) {
                    let label = version_label(&v.app_commit, &v.order_revision);
                    v.containers.retain(|c| {
                        if !containers.contains(&c.id) {
                            return true;
                        }
                        gone.push(c.clone());
                        let tail = self.world.exited.get(&c.id).cloned().unwrap_or_default();
                        messages.push((
                            label.clone(),
                            format!(
                                "container {} of {service} exited; restart #{restarts} in {delay:?}; {tail}",
                                c.id
                            ),
                        ));
                        false
                    });
                }
                if let Some((_, last)) = messages.last() {
                    svc.last_error = Some(last.clone());
                }
                if restarts >= crate::state::CRASH_LOOP {
                    if let Some((label, _)) = messages.last() {
                        svc.crash_looped = Some(label.clone());
                    }
                }
                for (label, msg) in messages {
                    error!("{msg}");
                    self.effects.push(Effect::Note {
                        service: service.clone(),
                        version: label,
                        kind: Kind::Ship,
                        text: msg,
                    });
                }
                for c in gone {
                    self.world.exited.remove(&c.id);
                    self.world.stopping.insert(c.id.clone());
                    self.effects.push(Effect::Stop {
                        service: service.clone(),
                        container: c,
                    });
                }
            }
            Action::SteadyAgain { service } => {
                if let Some(svc) = self.state_mut().services.get_mut(&service) {
                    svc.restarts = 0;
                }
            }
            Action::Retire { service } => {
                info!(service = %service, "order removed from headquarters; draining and stopping");
                if let Some(svc) = self.state_mut().services.get_mut(&service) {
                    plan::retire(svc, now_ms);
                }
            }
            Action::Drain {
                service,
                version,
                deadline_ms,
            } => {
                let Some(v) = self
                    .state
                    .services
                    .get(&service)
                    .and_then(|s| plan::find_version(s, version))
                    .cloned()
                else {
                    return;
                };
                // The table without it is computed before any drain starts.
                self.refresh_routes();
                self.world.draining_now.insert(version);
                self.effects.push(Effect::Drain(DrainJob {
                    service,
                    version: v,
                    deadline_ms,
                    after_routes: self.routes.version,
                }));
            }
            Action::StopLeftover { service, container } => {
                let Some(c) = self
                    .state
                    .services
                    .get(&service)
                    .and_then(|s| s.pending.iter().find(|c| c.id == container))
                    .cloned()
                else {
                    return;
                };
                info!(container = %c.id, "removing container of an interrupted or superseded deploy");
                self.world.stopping.insert(container);
                self.effects.push(Effect::Stop {
                    service,
                    container: c,
                });
            }
            Action::Forget { service } => {
                info!(service = %service, "service removed");
                self.state_mut().services.remove(&service);
                self.effects.push(Effect::Forget(service));
            }
        }
    }

    /// Recomputes the route table when the state changed; numbers each new table.
    fn refresh_routes(&mut self) {
        let table = table_of(&self.ship, &self.state);
        if table != self.routes.table {
            self.routes = DesiredRoutes {
                version: self.routes.version + 1,
                table,
            };
        }
        for w in self.switches.iter_mut().filter(|w| w.routes.is_none()) {
            w.routes = Some(self.routes.version);
        }
    }
}

/// HQ's `ships` as peers and its rollout settings.
pub(crate) fn rollout_of(
    hq: Option<&Headquarters>,
) -> (
    Vec<starphleet_phleet::Peer>,
    starphleet_phleet::RolloutSettings,
) {
    let Some(hq) = hq else {
        return Default::default();
    };
    let peers = hq
        .ships
        .iter()
        .map(|s| starphleet_phleet::Peer::new(&s.name, &s.url))
        .collect();
    let settings = starphleet_phleet::RolloutSettings {
        wave: hq.phleet.rollout.map(|n| n as usize),
        soak: hq.phleet.rollout_soak,
        wait: hq.phleet.rollout_wait,
    };
    (peers, settings)
}

/// The route table `state` calls for, marked offline when the ship is out of its load balancers.
fn table_of(ship: &str, state: &ShipState) -> RouteTable {
    RouteTable {
        offline: state.offline,
        ..plan::route_table(ship, &state.services)
    }
}

/// git's timeouts under `settings`: the ls-remote timeout as set, fetches at least 10 min.
pub(crate) fn git_timeouts(
    settings: Option<&starphleet_orders::PhleetSettings>,
) -> starphleet_git::GitTimeouts {
    let default = starphleet_git::GitTimeouts::default();
    match settings {
        Some(p) => starphleet_git::GitTimeouts {
            ls_remote: p.git_timeout.unwrap_or(default.ls_remote),
            fetch: p.fetch_timeout(),
            ..default
        },
        None => default,
    }
}

fn push_record(svc: &mut crate::state::ServiceState, record: DeployRecord) {
    svc.deploys.push(record);
    let excess = svc.deploys.len().saturating_sub(DEPLOY_HISTORY);
    svc.deploys.drain(..excess);
}

fn steps_text(record: &DeployRecord) -> String {
    record
        .steps
        .iter()
        .map(|(n, ms)| format!("{n} {ms}ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

#[cfg(test)]
mod tests;
