//! Every rule the ship follows, as a table of situations and the actions they call for.

use super::*;
use crate::state::{ContainerLabel, ContainerRecord, PublishRecord};
use std::path::Path;

const NOW: u64 = 1_000_000;

fn order(service: &str, text: &str) -> Order {
    starphleet_orders::parse_order(service, Path::new(&format!("{service}.orders")), text)
        .unwrap_or_else(|d| panic!("{d:?}"))
}

fn app_order(service: &str) -> Order {
    order(
        service,
        &format!("autodeploy file:///apps/{service}\npublish --private 8000\n"),
    )
}

fn container(id: &str) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        ip: "10.0.0.2".parse().unwrap(),
        netns: format!("ns-{id}"),
        host_if: format!("v-{id}"),
        bundle: format!("/b/{id}").into(),
        pid: 42,
        started_at_ms: 1,
        stdout: "/dev/null".into(),
        stderr: "/dev/null".into(),
        deploy: 0,
    }
}

/// The world of one test: HQ, refs, state and what is in flight.
struct World {
    orders: Vec<Order>,
    broken: BTreeSet<String>,
    settings: Vec<(String, String)>,
    ship_env: Vec<(String, String)>,
    hq_loaded: bool,
    commits: HashMap<GitSource, String>,
    services: BTreeMap<String, ServiceState>,
    deploys: BTreeMap<String, InFlight>,
    draining_now: BTreeSet<u64>,
    stopping: BTreeSet<String>,
    exited: BTreeMap<String, String>,
    now: u64,
}

impl World {
    fn new() -> Self {
        World {
            orders: Vec::new(),
            broken: BTreeSet::new(),
            settings: Vec::new(),
            ship_env: Vec::new(),
            hq_loaded: true,
            commits: HashMap::new(),
            services: BTreeMap::new(),
            deploys: BTreeMap::new(),
            draining_now: BTreeSet::new(),
            stopping: BTreeSet::new(),
            exited: BTreeMap::new(),
            now: NOW,
        }
    }

    /// HQ orders `service` and its repository is at `commit`.
    fn ordered(mut self, service: &str, commit: &str) -> Self {
        let o = app_order(service);
        self.commits.insert(o.autodeploy.clone(), commit.into());
        self.orders.push(o);
        self
    }

    fn desired(&self, service: &str) -> DesiredVersion {
        let hq = self.hq();
        desired(&hq, &self.ship_env, &self.commits, &self.services)
            .remove(service)
            .expect("desired")
    }

    /// The ship serves exactly what HQ asks for `service`, with `n` containers.
    fn serving(mut self, service: &str, n: usize) -> Self {
        let want = self.desired(service);
        let v = version(1, &want, n, service);
        self.services.entry(service.into()).or_default().current = Some(v);
        self
    }

    fn svc(&mut self, service: &str) -> &mut ServiceState {
        self.services.entry(service.into()).or_default()
    }

    fn hq(&self) -> HqView<'_> {
        HqView {
            orders: &self.orders,
            broken: &self.broken,
            settings: &self.settings,
        }
    }

    fn plan(&self) -> Plan {
        self.plan_with(None)
    }

    fn plan_with(&self, rollout: Option<RolloutView<'_>>) -> Plan {
        let hq = self.hq();
        plan(&Input {
            rollout,
            now_ms: self.now,
            hq: self.hq_loaded.then_some(hq),
            ship_env: &self.ship_env,
            app_commits: &self.commits,
            services: &self.services,
            deploys: &self.deploys,
            draining_now: &self.draining_now,
            stopping: &self.stopping,
            exited: &self.exited,
        })
    }
}

fn version(id: u64, want: &DesiredVersion, n: usize, service: &str) -> Version {
    Version {
        id,
        key: want.key.clone(),
        app_commit: want.app_commit.clone(),
        order_revision: want.order.revision.clone(),
        publish: vec![PublishRecord {
            private: 8000,
            public: 80,
            url: format!("/{}", want.order.service),
            ..Default::default()
        }],
        containers: (0..n)
            .map(|i| container(&format!("{service}-{id}-{i}")))
            .collect(),
        healthy_at_ms: NOW - 1000,
        drain_timeout_ms: 30_000,
        draining_since_ms: None,
        layer: None,
    }
}

fn deploys(plan: &Plan) -> Vec<(String, Reason, bool)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Deploy {
                service,
                reason,
                fresh_build,
                ..
            } => Some((service.clone(), *reason, *fresh_build)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_order_is_deployed() {
    let w = World::new().ordered("echo", "c1");
    let p = w.plan();
    assert_eq!(deploys(&p), vec![("echo".into(), Reason::New, false)]);
    let Action::Deploy { version, .. } = &p.actions[0] else {
        panic!()
    };
    assert_eq!(version.app_commit, "c1");
    assert_eq!(version.key, w.desired("echo").key);
}

#[test]
fn what_serves_as_ordered_is_left_alone() {
    let w = World::new().ordered("echo", "c1").serving("echo", 1);
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn a_new_app_commit_is_deployed() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    let src = w.orders[0].autodeploy.clone();
    w.commits.insert(src, "c2".into());
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
}

#[test]
fn a_changed_order_is_deployed() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.orders[0] = order(
        "echo",
        "autodeploy file:///apps/echo\npublish --private 8000\nexport A=1\n",
    );
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
}

#[test]
fn changed_settings_or_ship_env_are_deployed() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.settings.push(("LOG".into(), "debug".into()));
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );

    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.ship_env.push(("REGION".into(), "north".into()));
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
}

#[test]
fn a_removed_order_is_retired_drained_and_forgotten() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.orders.clear();
    assert_eq!(
        w.plan().actions,
        vec![Action::Retire {
            service: "echo".into()
        }]
    );
    // Applying the retirement: what served drains from now.
    retire(w.svc("echo"), NOW);
    let v = w.services["echo"].draining[0].clone();
    assert_eq!(v.draining_since_ms, Some(NOW));
    assert_eq!(
        w.plan().actions,
        vec![Action::Drain {
            service: "echo".into(),
            version: v.id,
            deadline_ms: NOW + 30_000
        }]
    );
    // While its drain runs, nothing more; once drained, the service is forgotten.
    w.draining_now.insert(v.id);
    assert_eq!(w.plan().actions, vec![]);
    w.svc("echo").draining.clear();
    w.draining_now.clear();
    assert_eq!(
        w.plan().actions,
        vec![Action::Forget {
            service: "echo".into()
        }]
    );
}

#[test]
fn a_broken_order_keeps_its_last_good_version() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.orders.clear();
    w.broken.insert("echo".into());
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn nothing_is_retired_before_headquarters_was_loaded_once() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.orders.clear();
    w.hq_loaded = false;
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn a_newer_version_supersedes_the_deploy_in_flight_once() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    let src = w.orders[0].autodeploy.clone();
    w.commits.insert(src, "c2".into());
    w.deploys.insert(
        "echo".into(),
        InFlight {
            deploy: 7,
            key: "older-key".into(),
            cancelled: false,
            switching: false,
        },
    );
    assert_eq!(
        w.plan().actions,
        vec![Action::Cancel {
            service: "echo".into(),
            deploy: 7
        }]
    );
    // Cancelled: no second cancel, and no deploy until the cancelled one has ended.
    w.deploys.get_mut("echo").unwrap().cancelled = true;
    assert_eq!(w.plan().actions, vec![]);
    w.deploys.clear();
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
}

#[test]
fn a_deploy_of_the_wanted_version_is_not_cancelled_nor_doubled() {
    let mut w = World::new().ordered("echo", "c2");
    let key = w.desired("echo").key;
    w.deploys.insert(
        "echo".into(),
        InFlight {
            deploy: 1,
            key,
            cancelled: false,
            switching: false,
        },
    );
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn a_switch_in_progress_is_never_cancelled() {
    let mut w = World::new().ordered("echo", "c2");
    w.deploys.insert(
        "echo".into(),
        InFlight {
            deploy: 3,
            key: "older".into(),
            cancelled: false,
            switching: true,
        },
    );
    assert_eq!(w.plan().actions, vec![]);
}

#[test]
fn a_crash_takes_the_container_out_and_restarts_after_a_growing_back_off() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    let id = w.services["echo"].current.as_ref().unwrap().containers[0]
        .id
        .clone();
    w.exited.insert(id.clone(), "exit 3".into());
    assert_eq!(
        w.plan().actions,
        vec![Action::Crashed {
            service: "echo".into(),
            containers: vec![id],
            restarts: 1,
            restart_at_ms: NOW + 1000
        }]
    );
    // Applied: the container is gone, the restart waits for its time.
    w.exited.clear();
    {
        let s = w.svc("echo");
        s.current.as_mut().unwrap().containers.clear();
        s.restarts = 1;
        s.restart_at_ms = NOW + 1000;
    }
    let p = w.plan();
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.wake_at_ms, Some(NOW + 1000));
    w.now = NOW + 1000;
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Restart, false)]
    );
}

#[test]
fn restart_delays_double_up_to_five_minutes() {
    let secs: Vec<u64> = (1..=12).map(|n| restart_delay(n).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.svc("echo").restarts = 3;
    let id = w.services["echo"].current.as_ref().unwrap().containers[0]
        .id
        .clone();
    w.exited.insert(id, String::new());
    let Action::Crashed {
        restarts,
        restart_at_ms,
        ..
    } = &w.plan().actions[0]
    else {
        panic!()
    };
    assert_eq!((*restarts, *restart_at_ms), (4, NOW + 8000));
}

#[test]
fn a_steady_service_starts_its_back_off_from_scratch() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.svc("echo").restarts = 4;
    let healthy = w.services["echo"].current.as_ref().unwrap().healthy_at_ms;
    let steady_at = healthy + STEADY.as_millis() as u64;
    assert_eq!(w.plan().wake_at_ms, Some(steady_at));
    w.now = steady_at;
    assert_eq!(
        w.plan().actions,
        vec![Action::SteadyAgain {
            service: "echo".into()
        }]
    );
}

#[test]
fn a_failed_version_is_not_retried_until_something_changes_or_redeploy() {
    let mut w = World::new().ordered("echo", "c2").serving("echo", 1);
    let src = w.orders[0].autodeploy.clone();
    w.commits.insert(src.clone(), "c3".into());
    let failed = w.desired("echo").key;
    w.svc("echo").failed_key = Some(failed);
    assert_eq!(
        w.plan(),
        Plan::default(),
        "the failed version is not retried"
    );
    // The app commit moves on.
    w.commits.insert(src.clone(), "c4".into());
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
    // Or the order changes.
    w.commits.insert(src, "c3".into());
    w.orders[0] = order(
        "echo",
        "autodeploy file:///apps/echo\npublish --private 8000\ndrain 5s\n",
    );
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Changed, false)]
    );
    // Or the operator asks.
    w.orders[0] = app_order("echo");
    w.svc("echo").redeploy_requested = true;
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Redeploy, true)]
    );
}

#[test]
fn redeploy_rebuilds_what_already_serves() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.svc("echo").redeploy_requested = true;
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Redeploy, true)]
    );
}

#[test]
fn instances_missing_after_a_crash_are_restarted() {
    let mut w = World::new();
    let o = order(
        "echo",
        "autodeploy file:///apps/echo\npublish --private 8000\ninstances 2\n",
    );
    w.commits.insert(o.autodeploy.clone(), "c1".into());
    w.orders.push(o);
    let w = w.serving("echo", 2);
    assert_eq!(w.plan(), Plan::default(), "two of two run");
    let mut w = w;
    w.svc("echo").current.as_mut().unwrap().containers.pop();
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Restart, false)]
    );
}

#[test]
fn an_unreachable_app_keeps_its_commit_and_can_still_restart() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    w.commits.clear();
    assert_eq!(w.plan(), Plan::default());
    w.svc("echo").current.as_mut().unwrap().containers.clear();
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::Restart, false)]
    );
    // A new service whose repository never answered waits.
    let mut w = World::new().ordered("echo", "c1");
    w.commits.clear();
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn a_removed_order_cancels_its_deploy_in_flight_first() {
    let mut w = World::new();
    w.svc("gone");
    w.deploys.insert(
        "gone".into(),
        InFlight {
            deploy: 9,
            key: "k".into(),
            cancelled: false,
            switching: false,
        },
    );
    assert_eq!(
        w.plan().actions,
        vec![Action::Cancel {
            service: "gone".into(),
            deploy: 9
        }]
    );
}

#[test]
fn after_a_restart_leftovers_are_stopped_and_drains_resume_with_their_time() {
    let mut w = World::new().ordered("echo", "c1").serving("echo", 1);
    let want = w.desired("echo");
    let mut old = version(5, &want, 1, "old");
    old.draining_since_ms = Some(NOW - 10_000);
    {
        let s = w.svc("echo");
        s.draining.push(old);
        s.pending.push(container("half-started"));
    }
    assert_eq!(
        w.plan().actions,
        vec![
            Action::StopLeftover {
                service: "echo".into(),
                container: "half-started".into()
            },
            Action::Drain {
                service: "echo".into(),
                version: 5,
                deadline_ms: NOW + 20_000
            }
        ]
    );
    // Containers being stopped are not stopped twice.
    w.stopping.insert("half-started".into());
    w.draining_now.insert(5);
    assert_eq!(w.plan().actions, vec![]);
}

#[test]
fn pending_containers_of_a_deploy_in_flight_are_its_own() {
    let mut w = World::new().ordered("echo", "c1");
    let key = w.desired("echo").key;
    let mut starting = container("starting");
    starting.deploy = 1;
    w.svc("echo").pending.push(starting);
    w.deploys.insert(
        "echo".into(),
        InFlight {
            deploy: 1,
            key,
            cancelled: false,
            switching: false,
        },
    );
    assert_eq!(w.plan(), Plan::default());
}

#[test]
fn adoption_finds_the_dead_and_the_orphans() {
    let mut state = ShipState::default();
    let w = World::new().ordered("echo", "c1");
    let want = w.desired("echo");
    state.services.entry("echo".into()).or_default().current = Some(version(1, &want, 2, "echo"));
    let running: BTreeSet<String> = ["echo-1-0".to_string()].into();
    let listed = vec!["echo-1-0".to_string(), "stray".to_string()];
    assert_eq!(
        adoption(&state, &running, &listed),
        Adoption {
            dead: vec!["echo-1-1".into()],
            orphans: vec!["stray".into()]
        }
    );
}

#[test]
fn an_interrupted_switch_is_finished_on_adoption() {
    let w = World::new().ordered("echo", "c1");
    let want = w.desired("echo");
    let mut svc = ServiceState {
        current: Some(version(1, &want, 1, "a")),
        switching: Some(version(2, &want, 1, "b")),
        ..Default::default()
    };
    finish_interrupted_switch(&mut svc, NOW);
    assert_eq!(svc.current.as_ref().unwrap().id, 2);
    assert_eq!(svc.draining[0].id, 1);
    assert_eq!(svc.draining[0].draining_since_ms, Some(NOW));
    assert!(svc.switching.is_none());
}

#[test]
fn the_route_table_sends_traffic_to_the_version_being_switched_to() {
    let w = World::new().ordered("echo", "c1").ordered("other", "c9");
    let want = w.desired("echo");
    let mut services = BTreeMap::new();
    let mut next = version(2, &want, 2, "next");
    next.containers[1].pid = 0; // not started yet: never routed
    services.insert(
        "echo".to_string(),
        ServiceState {
            current: Some(version(1, &want, 1, "cur")),
            switching: Some(next),
            ..Default::default()
        },
    );
    // A second service claiming the same port and prefix loses it.
    let mut clash = version(3, &want, 1, "clash");
    clash.publish[0].url = "/echo".into();
    services.insert(
        "zzz".to_string(),
        ServiceState {
            current: Some(clash),
            ..Default::default()
        },
    );
    let table = route_table("s1", &services);
    let routes = &table.ports[&80];
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].service, "echo");
    let ups: Vec<&str> = routes[0]
        .upstreams
        .iter()
        .map(|u| u.container.as_str())
        .collect();
    assert_eq!(ups, ["next-2-0"]);
}

#[test]
fn completing_a_switch_drains_what_served() {
    let w = World::new().ordered("echo", "c1");
    let want = w.desired("echo");
    let mut svc = ServiceState {
        current: Some(version(1, &want, 1, "a")),
        switching: Some(version(2, &want, 1, "b")),
        ..Default::default()
    };
    assert_eq!(complete_switch(&mut svc, NOW), Some(1));
    assert_eq!(svc.current.as_ref().unwrap().id, 2);
    assert_eq!(svc.draining[0].drain_deadline_ms(), NOW + 30_000);
    // A first version replaces nothing.
    let mut fresh = ServiceState {
        switching: Some(version(3, &want, 1, "c")),
        ..Default::default()
    };
    assert_eq!(complete_switch(&mut fresh, NOW), None);
    assert_eq!(fresh.current.as_ref().unwrap().id, 3);
}

#[test]
fn a_lost_state_is_rebuilt_from_the_labels_of_what_runs() {
    let w = World::new().ordered("echo", "c1");
    let want = w.desired("echo");
    let label = |id: &str, seq: u32, deploy: u64, started: u64, key: &str| ContainerLabel {
        ship: "abc123".into(),
        service: "echo".into(),
        key: key.into(),
        app_commit: want.app_commit.clone(),
        order_revision: want.order.revision.clone(),
        publish: Vec::new(),
        drain_timeout_ms: 30_000,
        container: ContainerRecord {
            netns: format!("sp-abc123-{seq:x}"),
            deploy,
            started_at_ms: started,
            ..container(id)
        },
    };
    let labels = vec![
        label("old", 0x1a, 1, 10, "k1"),
        label("new-a", 0x1b, 2, 20, "k2"),
        label("new-b", 0x1c, 2, 21, "k2"),
        ContainerLabel {
            ship: "other1".into(),
            ..label("foreign", 0x99, 9, 99, "k9")
        },
    ];
    let state = recover("abc123", labels, NOW);
    let svc = &state.services["echo"];
    let current = svc.current.as_ref().unwrap();
    assert_eq!(current.key, "k2");
    assert_eq!(
        current
            .containers
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["new-a", "new-b"]
    );
    assert_eq!(svc.draining.len(), 1);
    assert_eq!(svc.draining[0].draining_since_ms, Some(NOW));
    assert_eq!(state.next_seq, 0x1d, "new containers never reuse a name");
    assert_ne!(current.id, svc.draining[0].id);
}

#[test]
fn a_deploy_that_failed_for_the_ships_reasons_is_retried_after_its_back_off() {
    let mut w = World::new().ordered("echo", "c1");
    w.svc("echo").retry_at_ms = NOW + 4000;
    let p = w.plan();
    assert_eq!(deploys(&p), vec![], "waits");
    assert_eq!(p.wake_at_ms, Some(NOW + 4000));
    w.now = NOW + 4000;
    assert_eq!(
        deploys(&w.plan()),
        vec![("echo".into(), Reason::New, false)]
    );
}

#[test]
fn the_rollout_gate_holds_a_new_version_until_the_earlier_wave_soaked_it_and_never_starts_one_that_failed_there(
) {
    use starphleet_phleet::{
        FailedVersion, Gate, Peer, Reachability, RolloutSettings, ServiceVersions, Serving,
        ShipVersions,
    };
    use std::time::Duration;
    let w = World::new().ordered("echo", "c1");
    let want = w.desired("echo");
    let label = crate::telemetry::version_label(&want.app_commit, &want.order.revision);
    let peers = [
        Peer::new("s1", "http://10.0.0.1:9797"),
        Peer::new("s2", "http://10.0.0.2:9797"),
    ];
    let settings = RolloutSettings {
        wave: Some(1),
        soak: Duration::from_secs(10),
        wait: Duration::from_secs(120),
    };
    let first_seen = HashMap::new();
    let run = |me: &str, s1_says: ServiceVersions| {
        let answer = ShipVersions {
            ship: "s1".into(),
            services: [("echo".to_string(), s1_says)].into(),
            sampled_at_ms: 0,
        };
        let observed = Reachability::default().observe(vec![(peers[0].clone(), Ok(answer))], NOW);
        w.plan_with(Some(RolloutView {
            me,
            peers: &peers,
            settings: &settings,
            observed: &observed,
            first_seen: &first_seen,
        }))
    };
    let deploys = |p: &Plan| {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::Deploy { .. }))
            .count()
    };
    let serving_since = |ms: u64| ServiceVersions {
        current: Some(Serving {
            version: label.clone(),
            healthy_since_ms: ms,
        }),
        ..Default::default()
    };

    // The first wave does not ask anyone.
    let p = run("s1", ServiceVersions::default());
    assert_eq!(deploys(&p), 1, "{p:?}");

    // s2 waits while s1 does not serve the version yet.
    let p = run("s2", ServiceVersions::default());
    assert_eq!(deploys(&p), 0, "{p:?}");
    assert!(matches!(p.gated[..], [(_, Gate::Wait { .. })]), "{p:?}");

    // s1 has served it healthy for 4 s of the 10 s soak: s2 waits 6 s more, and wakes then.
    let p = run("s2", serving_since(NOW - 4_000));
    assert_eq!(deploys(&p), 0, "{p:?}");
    assert!(
        matches!(p.gated[..], [(_, Gate::Wait { until_ms: Some(t), .. })] if t == NOW + 6_000),
        "{p:?}"
    );
    assert_eq!(p.wake_at_ms, Some(NOW + 6_000));

    // Soaked: s2 deploys it.
    let p = run("s2", serving_since(NOW - 10_000));
    assert_eq!(deploys(&p), 1, "{p:?}");

    // It failed on s1: s2 never starts it.
    let failed = ServiceVersions {
        failed: vec![FailedVersion {
            version: label.clone(),
            at_ms: NOW - 1,
            why: "failed: health check".into(),
        }],
        ..Default::default()
    };
    let p = run("s2", failed);
    assert_eq!(deploys(&p), 0, "{p:?}");
    assert!(matches!(p.gated[..], [(_, Gate::Never { .. })]), "{p:?}");
}
