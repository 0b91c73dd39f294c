//! The planner: from what headquarters asks for (desired) and what the ship runs and
//! remembers (observed), the actions to take. Pure: no I/O, no clock (time is an input), so
//! every rule the ship follows is a unit test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use starphleet_orders::{GitSource, Order};
use starphleet_proxy::{RouteTable, Upstream};

use crate::env;
use crate::state::{ContainerLabel, ServiceState, ShipState, Version};

/// A service that ran this long without a crash starts its back-off from scratch.
pub const STEADY: Duration = Duration::from_secs(600);

/// The wait before restart number `n` (1-based): 1 s, 2 s, 4 s, … up to 5 minutes.
pub fn restart_delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// What headquarters says, as far as the planner cares.
#[derive(Debug, Clone, Copy)]
pub struct HqView<'a> {
    /// The valid orders.
    pub orders: &'a [Order],
    /// Services whose order is broken: they keep what they run.
    pub broken: &'a BTreeSet<String>,
    /// `.starphleet` pairs (the env layer below the ship's and the order's).
    pub settings: &'a [(String, String)],
}

/// A deploy under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Its id.
    pub deploy: u64,
    /// The version key it deploys.
    pub key: String,
    /// A newer version asked it to stop.
    pub cancelled: bool,
    /// It is healthy and waits for the proxy to switch to it: too late to cancel.
    pub switching: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Unix ms now.
    pub now_ms: u64,
    /// Headquarters as last loaded; `None` until it was loaded once (then nothing is retired).
    pub hq: Option<HqView<'a>>,
    /// The ship's own env folder.
    pub ship_env: &'a [(String, String)],
    /// The last commit each app source resolved to.
    pub app_commits: &'a HashMap<GitSource, String>,
    /// What the ship runs and remembers.
    pub services: &'a BTreeMap<String, ServiceState>,
    /// Deploys in flight, by service.
    pub deploys: &'a BTreeMap<String, InFlight>,
    /// Versions (by id) whose drain is under way.
    pub draining_now: &'a BTreeSet<u64>,
    /// Containers being stopped.
    pub stopping: &'a BTreeSet<String>,
    /// Containers that exited, with the last lines they printed.
    pub exited: &'a BTreeMap<String, String>,
    /// The rollout gate, when HQ rolls out in waves and this ship is in `ships`.
    pub rollout: Option<RolloutView<'a>>,
}

/// What the rollout gate decides from (`STARPHLEET_ROLLOUT`): this ship's place in `ships`,
/// what the ships of the earlier waves last said, and when each version was first wanted here.
#[derive(Debug, Clone, Copy)]
pub struct RolloutView<'a> {
    /// This ship's name.
    pub me: &'a str,
    /// HQ's `ships`, in order.
    pub peers: &'a [starphleet_phleet::Peer],
    /// Waves, soak and wait.
    pub settings: &'a starphleet_phleet::RolloutSettings,
    /// The earlier waves' last answers at `GET /phleet/versions`.
    pub observed: &'a starphleet_phleet::Observations,
    /// Unix ms each version was first wanted here (absent: now).
    pub first_seen: &'a HashMap<starphleet_phleet::VersionId, u64>,
}

/// The version of a service that headquarters asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVersion {
    /// Its order.
    pub order: Order,
    /// The app commit.
    pub app_commit: String,
    /// HQ settings, the ship's env and the order's env, merged.
    pub env: Vec<(String, String)>,
    /// The version key (app commit + order revision + env).
    pub key: String,
}

/// Why a deploy starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The service has no version yet.
    New,
    /// The app commit, the order or the env changed.
    Changed,
    /// Containers of the current version exited; this brings it back after its back-off.
    Restart,
    /// `starphleet redeploy` asked for a fresh build.
    Redeploy,
}

/// One thing the ship should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build and start a version, switch to it once healthy.
    Deploy {
        /// The service.
        service: String,
        /// What to deploy.
        version: Box<DesiredVersion>,
        /// Why.
        reason: Reason,
        /// Build again instead of reusing a cached layer.
        fresh_build: bool,
    },
    /// Stop a deploy in flight: a newer version (or the order's removal) supersedes it.
    Cancel {
        /// The service.
        service: String,
        /// The deploy.
        deploy: u64,
    },
    /// Containers of a serving version exited: take them out and schedule a restart.
    Crashed {
        /// The service.
        service: String,
        /// The exited containers.
        containers: Vec<String>,
        /// The restart count after this crash.
        restarts: u32,
        /// Unix ms before which no restart starts.
        restart_at_ms: u64,
    },
    /// The service ran steadily long enough: its back-off starts from scratch again.
    SteadyAgain {
        /// The service.
        service: String,
    },
    /// The order left headquarters: take the service out of the proxy and drain it.
    Retire {
        /// The service.
        service: String,
    },
    /// Let a version switched away from finish its requests (until `deadline_ms`), then stop it.
    Drain {
        /// The service.
        service: String,
        /// The version id.
        version: u64,
        /// Unix ms when it is stopped even with requests in flight.
        deadline_ms: u64,
    },
    /// Stop a container no deploy owns any more (an interrupted deploy left it).
    StopLeftover {
        /// The service.
        service: String,
        /// The container id.
        container: String,
    },
    /// Nothing of the service is left: drop it from the state.
    Forget {
        /// The service.
        service: String,
    },
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do now, in order.
    pub actions: Vec<Action>,
    /// Unix ms of the next moment something is due without any new event (a restart after its
    /// back-off, a back-off reset), if any.
    pub wake_at_ms: Option<u64>,
    /// New versions the rollout gate was asked about, and what it said.
    pub gated: Vec<(starphleet_phleet::VersionId, starphleet_phleet::Gate)>,
}

/// The version of every ordered service, where the app commit is known: the one its source
/// resolved to last, else the one it runs (so a service whose repository is unreachable can
/// still be restarted and follow order changes).
pub fn desired(
    hq: &HqView<'_>,
    ship_env: &[(String, String)],
    app_commits: &HashMap<GitSource, String>,
    services: &BTreeMap<String, ServiceState>,
) -> BTreeMap<String, DesiredVersion> {
    let mut out = BTreeMap::new();
    for order in hq.orders {
        let known = app_commits.get(&order.autodeploy).cloned().or_else(|| {
            services
                .get(&order.service)
                .and_then(|s| s.current.as_ref())
                .map(|v| v.app_commit.clone())
        });
        let Some(app_commit) = known else { continue };
        let env = env::merge(&[hq.settings, ship_env, &order.env]);
        let key = env::version_key(&app_commit, &order.revision, &env);
        out.insert(
            order.service.clone(),
            DesiredVersion {
                order: order.clone(),
                app_commit,
                env,
                key,
            },
        );
    }
    out
}

/// Plans one pass.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut plan = Plan::default();
    let now = input.now_ms;
    let wake = |at: u64, plan: &mut Plan| {
        if at > now {
            plan.wake_at_ms = Some(plan.wake_at_ms.map_or(at, |w| w.min(at)));
        }
    };

    // Exited containers of what serves: out of the routes, restart after the back-off.
    let mut crashed = BTreeSet::new();
    for (name, svc) in input.services {
        let gone: Vec<String> = svc
            .current
            .iter()
            .chain(svc.switching.iter())
            .flat_map(|v| v.containers.iter())
            .filter(|c| input.exited.contains_key(&c.id))
            .map(|c| c.id.clone())
            .collect();
        if !gone.is_empty() {
            let restarts = svc.restarts + 1;
            plan.actions.push(Action::Crashed {
                service: name.clone(),
                containers: gone,
                restarts,
                restart_at_ms: now + restart_delay(restarts).as_millis() as u64,
            });
            crashed.insert(name.clone());
        } else if svc.restarts > 0 {
            if let Some(v) = &svc.current {
                let steady_at = v.healthy_at_ms + STEADY.as_millis() as u64;
                if now >= steady_at {
                    plan.actions.push(Action::SteadyAgain {
                        service: name.clone(),
                    });
                } else {
                    wake(steady_at, &mut plan);
                }
            }
        }
    }

    if let Some(hq) = &input.hq {
        let desired = desired(hq, input.ship_env, input.app_commits, input.services);
        for (name, want) in &desired {
            if let Some(d) = input.deploys.get(name) {
                if d.key != want.key && !d.cancelled && !d.switching {
                    plan.actions.push(Action::Cancel {
                        service: name.clone(),
                        deploy: d.deploy,
                    });
                }
                continue;
            }
            if crashed.contains(name) {
                continue;
            }
            let svc = input.services.get(name);
            let current = svc.and_then(|s| s.current.as_ref());
            let redeploy = svc.is_some_and(|s| s.redeploy_requested);
            let same = current.is_some_and(|v| v.key == want.key);
            let instances = want.order.instances.unwrap_or(1).max(1) as usize;
            let up_to_date = same && current.is_some_and(|v| v.containers.len() >= instances);
            let failed = svc.is_some_and(|s| s.failed_key.as_deref() == Some(want.key.as_str()));
            let restart_at = svc.map_or(0, |s| s.restart_at_ms);
            let backing_off = same && !up_to_date && now < restart_at;
            if backing_off {
                wake(restart_at, &mut plan);
            }
            // A deploy that failed for the ship's own reasons waits out its back-off.
            let retry_at = svc.map_or(0, |s| s.retry_at_ms);
            let retrying = !up_to_date && now < retry_at;
            if retrying {
                wake(retry_at, &mut plan);
            }
            if !redeploy && (up_to_date || failed || backing_off || retrying) {
                continue;
            }
            let reason = if redeploy {
                Reason::Redeploy
            } else if current.is_none() {
                Reason::New
            } else if same {
                Reason::Restart
            } else {
                Reason::Changed
            };
            if let (Some(r), Reason::New | Reason::Changed) = (&input.rollout, reason) {
                use starphleet_phleet::{may_start, Gate, VersionId};
                let id = VersionId {
                    service: name.clone(),
                    version: crate::telemetry::version_label(
                        &want.app_commit,
                        &want.order.revision,
                    ),
                };
                let first = r.first_seen.get(&id).copied().unwrap_or(now);
                let observed = r.observed.for_service(name);
                let gate = may_start(r.me, r.peers, r.settings, &id, &observed, now, first);
                if let Gate::Wait {
                    until_ms: Some(t), ..
                } = &gate
                {
                    wake(*t, &mut plan);
                }
                let go = gate == Gate::Go;
                plan.gated.push((id, gate));
                if !go {
                    continue;
                }
            }
            plan.actions.push(Action::Deploy {
                service: name.clone(),
                version: Box::new(want.clone()),
                reason,
                fresh_build: redeploy,
            });
        }

        let ordered: BTreeSet<&str> = hq.orders.iter().map(|o| o.service.as_str()).collect();
        for (name, svc) in input.services {
            if ordered.contains(name.as_str()) || hq.broken.contains(name) {
                continue;
            }
            if let Some(d) = input.deploys.get(name) {
                if !d.cancelled && !d.switching {
                    plan.actions.push(Action::Cancel {
                        service: name.clone(),
                        deploy: d.deploy,
                    });
                }
                continue;
            }
            if svc.current.is_some() || svc.switching.is_some() {
                plan.actions.push(Action::Retire {
                    service: name.clone(),
                });
            } else if svc.draining.is_empty() && svc.pending.is_empty() {
                plan.actions.push(Action::Forget {
                    service: name.clone(),
                });
            }
        }
    }

    for (name, svc) in input.services {
        let deploy = input.deploys.get(name).map(|d| d.deploy);
        for c in &svc.pending {
            if deploy != Some(c.deploy) && !input.stopping.contains(&c.id) {
                plan.actions.push(Action::StopLeftover {
                    service: name.clone(),
                    container: c.id.clone(),
                });
            }
        }
        for v in &svc.draining {
            if !input.draining_now.contains(&v.id) {
                plan.actions.push(Action::Drain {
                    service: name.clone(),
                    version: v.id,
                    deadline_ms: v.drain_deadline_ms(),
                });
            }
        }
    }
    plan
}

/// The route table the state calls for: every published port of each service's serving version
/// (the one being switched to, when there is one), with its hosts, limits and TLS (see
/// `routes::TableBuilder`). The first service (by name) claiming a port, hosts and prefix keeps it.
pub fn route_table(ship: &str, services: &BTreeMap<String, ServiceState>) -> RouteTable {
    let mut table = crate::routes::TableBuilder::new(ship);
    for (service, s) in services {
        let Some(v) = s.switching.as_ref().or(s.current.as_ref()) else {
            continue;
        };
        for p in &v.publish {
            let upstreams = v
                .containers
                .iter()
                .filter(|c| c.pid != 0)
                .map(|c| Upstream {
                    addr: SocketAddr::new(c.ip.into(), p.private),
                    version: crate::telemetry::version_label(&v.app_commit, &v.order_revision),
                    container: c.id.clone(),
                })
                .collect();
            table.add(service, p, upstreams);
        }
    }
    table.finish()
}

/// What a ship that starts again finds: containers the state names that the runtime no longer
/// runs (they died while the ship was away), and containers the runtime runs that the state
/// does not name (a crash between starting one and recording it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Container ids of the state that are not running.
    pub dead: Vec<String>,
    /// Container ids of the runtime that the state does not know.
    pub orphans: Vec<String>,
}

/// Compares the state with what the runtime runs (`running`: ids of running containers;
/// `listed`: every id the runtime has, running or not).
pub fn adoption(state: &ShipState, running: &BTreeSet<String>, listed: &[String]) -> Adoption {
    let known: BTreeSet<&str> = state.all_containers().map(|c| c.id.as_str()).collect();
    let serving = state.services.values().flat_map(|s| {
        s.current
            .iter()
            .chain(s.switching.iter())
            .chain(s.draining.iter())
            .flat_map(|v| v.containers.iter())
    });
    Adoption {
        dead: serving
            .filter(|c| !running.contains(&c.id))
            .map(|c| c.id.clone())
            .collect(),
        orphans: listed
            .iter()
            .filter(|id| !known.contains(id.as_str()))
            .cloned()
            .collect(),
    }
}

/// A state rebuilt from the labels of the containers the runtime runs, for a ship whose state
/// file was lost: per service, the containers of its newest deploy are the current version;
/// those of older deploys drain from `now_ms`. Container numbers and addresses continue after
/// the highest found, so nothing new reuses a name.
pub fn recover(ship_id: &str, labels: Vec<ContainerLabel>, now_ms: u64) -> ShipState {
    let mut state = ShipState::default();
    let mut groups: BTreeMap<(String, String, u64), Vec<ContainerLabel>> = BTreeMap::new();
    for l in labels.into_iter().filter(|l| l.ship == ship_id) {
        let seq = l
            .container
            .netns
            .rsplit('-')
            .next()
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        if let Some(seq) = seq {
            state.next_seq = state.next_seq.max(seq.wrapping_add(1));
        }
        groups
            .entry((l.service.clone(), l.key.clone(), l.container.deploy))
            .or_default()
            .push(l);
    }
    let mut newest: BTreeMap<String, ((String, String, u64), u64)> = BTreeMap::new();
    for (k, group) in &groups {
        let started = group
            .iter()
            .map(|l| l.container.started_at_ms)
            .max()
            .unwrap_or(0);
        let entry = newest.entry(k.0.clone()).or_insert((k.clone(), started));
        if started > entry.1 {
            *entry = (k.clone(), started);
        }
    }
    for (k, group) in groups {
        let first = &group[0];
        let started = group
            .iter()
            .map(|l| l.container.started_at_ms)
            .max()
            .unwrap_or(0);
        let mut version = Version {
            id: state.new_version_id(),
            key: first.key.clone(),
            app_commit: first.app_commit.clone(),
            order_revision: first.order_revision.clone(),
            publish: first.publish.clone(),
            containers: group.iter().map(|l| l.container.clone()).collect(),
            healthy_at_ms: started,
            drain_timeout_ms: first.drain_timeout_ms,
            draining_since_ms: None,
            layer: None,
        };
        version.containers.sort_by(|a, b| a.id.cmp(&b.id));
        let svc = state.services.entry(k.0.clone()).or_default();
        if newest.get(&k.0).is_some_and(|(n, _)| *n == k) {
            svc.current = Some(version);
        } else {
            version.draining_since_ms = Some(now_ms);
            svc.draining.push(version);
        }
    }
    state
}

/// A switch the previous ship recorded but may not have finished: the new version was healthy,
/// so it is the current one, and what it replaces drains from now.
pub fn finish_interrupted_switch(svc: &mut ServiceState, now_ms: u64) {
    if let Some(next) = svc.switching.take() {
        if let Some(mut old) = svc.current.replace(next) {
            old.draining_since_ms = Some(now_ms);
            svc.draining.push(old);
        }
    }
}

/// Takes a service out of service: what serves starts draining now.
pub fn retire(svc: &mut ServiceState, now_ms: u64) {
    for mut v in svc.current.take().into_iter().chain(svc.switching.take()) {
        v.draining_since_ms = Some(now_ms);
        svc.draining.push(v);
    }
}

/// Completes a switch: `switching` becomes current; the previous current drains from `now_ms`.
/// Returns the id of the version now draining, if any.
pub fn complete_switch(svc: &mut ServiceState, now_ms: u64) -> Option<u64> {
    let next = svc.switching.take()?;
    let old = svc.current.replace(next)?;
    let id = old.id;
    let mut old = old;
    old.draining_since_ms = Some(now_ms);
    svc.draining.push(old);
    Some(id)
}

/// The version of `svc` with id `id`, wherever it is.
pub fn find_version(svc: &ServiceState, id: u64) -> Option<&Version> {
    svc.current
        .iter()
        .chain(svc.switching.iter())
        .chain(svc.draining.iter())
        .find(|v| v.id == id)
}

#[cfg(test)]
mod tests;
