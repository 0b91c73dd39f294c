//! The owner's event handling, without I/O: deploys, switches, supersedes, failures, crashes.

use super::*;
use crate::state::ServiceState;
use std::path::Path;

const T0: u64 = 5_000_000;

fn order(service: &str, extra: &str) -> starphleet_orders::Order {
    starphleet_orders::parse_order(
        service,
        Path::new(&format!("{service}.orders")),
        &format!("autodeploy file:///apps/{service}\npublish --private 8000\n{extra}"),
    )
    .unwrap()
}

fn hq(orders: Vec<starphleet_orders::Order>) -> Box<Headquarters> {
    Box::new(Headquarters {
        orders,
        ..Default::default()
    })
}

fn core() -> Core {
    Core::new(
        "ship1",
        Names::new("abc123"),
        Layout::new("/tmp/nonexistent-state"),
        ShipState::default(),
    )
}

/// A core that follows an HQ ordering `echo` at commit `c1`.
fn following() -> Core {
    let mut c = core();
    c.handle(
        Event::HqLoaded {
            commit: "h1".into(),
            hq: hq(vec![order("echo", "")]),
        },
        T0,
    );
    c.handle(app_ref("echo", "c1"), T0);
    c
}

fn app_ref(service: &str, commit: &str) -> Event {
    Event::AppRef {
        source: starphleet_orders::GitSource {
            url: format!("file:///apps/{service}"),
            reference: None,
        },
        result: Ok(commit.into()),
    }
}

fn deploys(effects: &[Effect]) -> Vec<DeployJob> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deploy(j) => Some((**j).clone()),
            _ => None,
        })
        .collect()
}

/// Runs the persister's part: the callbacks waiting for the state to be on disk.
fn persisted(c: &mut Core, result: Result<(), String>) {
    if let Some((_, after)) = c.take_persist() {
        for f in after {
            f(result.clone());
        }
    }
}

/// Carries one deploy through allocation, start and health to the switch request.
fn deploy_to_switch(c: &mut Core, job: &DeployJob, now: u64) -> bool {
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: job.service.clone(),
            deploy: job.deploy,
            count: 1,
            reply: tx,
        },
        now,
    );
    persisted(c, Ok(()));
    let records = rx.try_recv().unwrap().unwrap();
    c.handle(
        Event::Started {
            service: job.service.clone(),
            container: records[0].id.clone(),
            pid: 4242,
        },
        now,
    );
    let version = Version {
        id: 0,
        key: job.version.key.clone(),
        app_commit: job.version.app_commit.clone(),
        order_revision: job.version.order.revision.clone(),
        publish: vec![crate::state::PublishRecord {
            private: 8000,
            public: 80,
            url: "/echo".into(),
            ..Default::default()
        }],
        containers: records
            .into_iter()
            .map(|r| ContainerRecord { pid: 4242, ..r })
            .collect(),
        healthy_at_ms: now,
        drain_timeout_ms: 30_000,
        draining_since_ms: None,
        layer: None,
    };
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Switch {
            service: job.service.clone(),
            deploy: job.deploy,
            version: Box::new(version),
            record: record(job),
            reply: tx,
        },
        now,
    );
    rx.try_recv().unwrap()
}

fn record(job: &DeployJob) -> DeployRecord {
    DeployRecord {
        key: job.version.key.clone(),
        app_commit: job.version.app_commit.clone(),
        version_label: "v".into(),
        layer: None,
        started_at_ms: T0,
        steps: vec![("fetch".into(), 1), ("build".into(), 2)],
        outcome: "in progress".into(),
    }
}

fn serving_id(c: &Core) -> Option<u64> {
    c.state()
        .services
        .get("echo")
        .and_then(|s| s.current.as_ref())
        .map(|v| v.id)
}

#[test]
fn a_switch_completes_only_once_the_proxy_has_the_new_table() {
    let mut c = following();
    c.settle(T0);
    let jobs = deploys(&c.take_effects());
    assert_eq!(jobs.len(), 1);
    assert!(deploy_to_switch(&mut c, &jobs[0], T0 + 10));
    c.settle(T0 + 10);
    let table = c.routes().clone();
    assert_eq!(
        table.table.ports[&80][0].upstreams.len(),
        1,
        "routes go to the new version"
    );
    assert_eq!(
        serving_id(&c),
        None,
        "not serving until the proxy has the table"
    );
    assert!(c.snapshot().deploying.contains("echo"));

    c.handle(Event::RoutesApplied(table.version - 1), T0 + 20);
    c.settle(T0 + 20);
    assert_eq!(
        serving_id(&c),
        None,
        "an older table does not complete the switch"
    );

    c.handle(Event::RoutesApplied(table.version), T0 + 30);
    c.settle(T0 + 30);
    assert!(serving_id(&c).is_some());
    let svc = &c.state().services["echo"];
    let last = svc.deploys.last().unwrap();
    assert_eq!(last.outcome, "serving");
    assert_eq!(last.steps.last().unwrap(), &("switch".to_string(), 20));
    assert!(svc.pending.is_empty());
    assert!(!c.snapshot().deploying.contains("echo"));
    assert!(c
        .take_effects()
        .iter()
        .any(|e| matches!(e, Effect::Note { text, .. } if text.starts_with("serving"))));
}

/// A core serving `echo` at c1 (version id returned), proxy up to date.
fn serving() -> (Core, u64) {
    let mut c = following();
    c.settle(T0);
    let job = deploys(&c.take_effects()).remove(0);
    assert!(deploy_to_switch(&mut c, &job, T0));
    c.settle(T0);
    let v = c.routes().version;
    c.handle(Event::RoutesApplied(v), T0);
    c.settle(T0);
    c.take_effects();
    persisted(&mut c, Ok(()));
    let id = serving_id(&c).unwrap();
    (c, id)
}

#[test]
fn a_new_commit_drains_the_old_version_after_the_proxy_switched() {
    let (mut c, old) = serving();
    c.handle(app_ref("echo", "c2"), T0 + 100);
    c.settle(T0 + 100);
    let job = deploys(&c.take_effects()).remove(0);
    assert_eq!(job.reason, Reason::Changed);
    assert!(deploy_to_switch(&mut c, &job, T0 + 200));
    c.settle(T0 + 200);
    assert!(
        !c.take_effects()
            .iter()
            .any(|e| matches!(e, Effect::Drain(_))),
        "nothing drains before the proxy switched"
    );
    let v = c.routes().version;
    c.handle(Event::RoutesApplied(v), T0 + 300);
    c.settle(T0 + 300);
    let drains: Vec<DrainJob> = c
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Drain(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(drains.len(), 1);
    assert_eq!(drains[0].version.id, old);
    assert_eq!(drains[0].deadline_ms, T0 + 300 + 30_000);
    assert!(drains[0].after_routes >= v);
    // Drained: the old version is gone, its times join the deploy that replaced it.
    c.handle(
        Event::Drained {
            service: "echo".into(),
            version: old,
            drain_ms: 7,
            stop_ms: 3,
        },
        T0 + 400,
    );
    c.settle(T0 + 400);
    let svc = &c.state().services["echo"];
    assert!(svc.draining.is_empty());
    let steps: Vec<&str> = svc
        .deploys
        .last()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.0.as_str())
        .collect();
    assert_eq!(steps, ["fetch", "build", "switch", "drain", "stop"]);
    assert!(c.take_effects().is_empty(), "drained once, never twice");
}

#[test]
fn headquarters_failing_changes_nothing() {
    let (mut c, id) = serving();
    let before = c.state().clone();
    c.handle(
        Event::HqFailed("ls-remote timed out after 15s".into()),
        T0 + 10,
    );
    c.settle(T0 + 10);
    assert!(c.take_effects().is_empty());
    assert_eq!(serving_id(&c), Some(id));
    assert_eq!(
        serde_json::to_string(&*before).unwrap(),
        serde_json::to_string(&**c.state()).unwrap()
    );
    assert_eq!(
        c.snapshot().hq_error.as_deref(),
        Some("ls-remote timed out after 15s")
    );
    c.handle(Event::HqUnchanged, T0 + 20);
    assert_eq!(c.snapshot().hq_error, None);
}

#[test]
fn a_superseded_deploy_is_cancelled_refused_its_switch_and_cleaned_up() {
    let mut c = following();
    c.settle(T0);
    let first = deploys(&c.take_effects()).remove(0);
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: "echo".into(),
            deploy: first.deploy,
            count: 1,
            reply: tx,
        },
        T0,
    );
    persisted(&mut c, Ok(()));
    let started = rx.try_recv().unwrap().unwrap();
    // A newer commit arrives meanwhile.
    c.handle(app_ref("echo", "c2"), T0 + 1);
    c.settle(T0 + 1);
    let effects = c.take_effects();
    assert!(matches!(effects[..], [Effect::Cancel(d)] if d == first.deploy));
    // Its switch is refused; it ends as superseded; its container is removed.
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Switch {
            service: "echo".into(),
            deploy: first.deploy,
            version: Box::new(Version {
                id: 0,
                key: first.version.key.clone(),
                app_commit: "c1".into(),
                order_revision: String::new(),
                publish: Vec::new(),
                containers: started.clone(),
                healthy_at_ms: T0,
                drain_timeout_ms: 0,
                draining_since_ms: None,
                layer: None,
            }),
            record: record(&first),
            reply: tx,
        },
        T0 + 2,
    );
    assert!(!rx.try_recv().unwrap());
    c.handle(
        Event::DeployEnded {
            service: "echo".into(),
            deploy: first.deploy,
            record: record(&first),
            end: DeployEnd::Superseded,
        },
        T0 + 3,
    );
    c.settle(T0 + 3);
    let effects = c.take_effects();
    let stops: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stop { container, .. } => Some(container.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stops, [started[0].id.as_str()]);
    let next = deploys(&effects);
    assert_eq!(next.len(), 1, "the newer version deploys now");
    assert_eq!(next[0].version.app_commit, "c2");
    assert_eq!(
        c.state().services["echo"].deploys.last().unwrap().outcome,
        "superseded by a newer version"
    );
}

#[test]
fn a_failed_deploy_is_recorded_and_not_retried() {
    let (mut c, id) = serving();
    c.handle(app_ref("echo", "c2"), T0 + 1);
    c.settle(T0 + 1);
    let job = deploys(&c.take_effects()).remove(0);
    let mut rec = record(&job);
    rec.steps.push(("health".into(), 2000));
    c.handle(
        Event::DeployEnded {
            service: "echo".into(),
            deploy: job.deploy,
            record: rec,
            end: DeployEnd::Failed("not healthy after 2s".into()),
        },
        T0 + 2,
    );
    c.settle(T0 + 2);
    let effects = c.take_effects();
    assert!(deploys(&effects).is_empty(), "not retried");
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Note {
            kind: Kind::Health,
            ..
        }
    )));
    let svc: &ServiceState = &c.state().services["echo"];
    assert_eq!(
        svc.deploys.last().unwrap().outcome,
        "failed at health: not healthy after 2s"
    );
    assert_eq!(svc.failed_key.as_deref(), Some(job.version.key.as_str()));
    assert_eq!(serving_id(&c), Some(id), "the old version keeps serving");
    // Another HQ commit that changes nothing for echo does not retry it either.
    c.handle(
        Event::HqLoaded {
            commit: "h2".into(),
            hq: hq(vec![order("echo", ""), order("other", "")]),
        },
        T0 + 3,
    );
    c.settle(T0 + 3);
    assert!(deploys(&c.take_effects())
        .iter()
        .all(|j| j.service != "echo"));
}

#[test]
fn containers_are_recorded_on_disk_before_anyone_starts_them() {
    let mut c = following();
    c.settle(T0);
    let job = deploys(&c.take_effects()).remove(0);
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: "echo".into(),
            deploy: job.deploy,
            count: 2,
            reply: tx,
        },
        T0,
    );
    assert!(
        rx.try_recv().is_err(),
        "no answer before the state is saved"
    );
    let (state, after) = c.take_persist().unwrap();
    assert_eq!(state.services["echo"].pending.len(), 2);
    for f in after {
        f(Ok(()));
    }
    let records = rx.try_recv().unwrap().unwrap();
    assert_ne!(records[0].ip, records[1].ip);
    assert_ne!(records[0].id, records[1].id);
    assert!(records[0].id.starts_with("sp-abc123-"));
    assert_eq!(records[0].deploy, job.deploy);
    // A save that fails fails the allocation.
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: "echo".into(),
            deploy: job.deploy,
            count: 1,
            reply: tx,
        },
        T0,
    );
    persisted(&mut c, Err("disk full".into()));
    assert_eq!(rx.try_recv().unwrap().unwrap_err(), "disk full");
}

/// The id of the serving echo version's first container.
fn echo_container(c: &Core) -> String {
    c.state().services["echo"]
        .current
        .as_ref()
        .unwrap()
        .containers[0]
        .id
        .clone()
}

#[test]
fn a_crash_is_reported_and_restarted_after_its_back_off() {
    let (mut c, _) = serving();
    let cid = echo_container(&c);
    c.handle(
        Event::Exited {
            container: cid.clone(),
            tail: "--- last 1 lines of stderr ---\nboom".into(),
        },
        T0 + 10,
    );
    let wake = c.settle(T0 + 10);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Stop { container, .. } if container.id == cid)));
    assert!(effects.iter().any(|e| matches!(e, Effect::Note { text, .. }
        if text.contains("exited; restart #1 in 1s") && text.contains("boom"))));
    assert!(deploys(&effects).is_empty());
    assert_eq!(wake, Some(T0 + 10 + 1000));
    assert!(
        c.routes().table.ports[&80][0].upstreams.is_empty(),
        "503, not 502"
    );
    c.handle(Event::Stopped { container: cid }, T0 + 20);
    c.settle(T0 + 1010);
    let jobs = deploys(&c.take_effects());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, Reason::Restart);
}

#[test]
fn a_version_that_crashes_three_times_before_running_steadily_is_a_crash_loop() {
    let (mut c, _) = serving();
    let mut now = T0 + 10;
    for round in 1..=crate::state::CRASH_LOOP {
        assert_eq!(
            c.state().services["echo"].crash_looped,
            None,
            "round {round}"
        );
        let cid = echo_container(&c);
        c.handle(
            Event::Exited {
                container: cid.clone(),
                tail: "boom".into(),
            },
            now,
        );
        let wake = c.settle(now).unwrap();
        c.take_effects();
        c.handle(Event::Stopped { container: cid }, now);
        now = wake;
        c.settle(now);
        let job = deploys(&c.take_effects()).remove(0);
        assert_eq!(job.reason, Reason::Restart);
        assert!(deploy_to_switch(&mut c, &job, now));
        c.settle(now);
        let v = c.routes().version;
        c.handle(Event::RoutesApplied(v), now);
        c.settle(now);
        c.take_effects();
        persisted(&mut c, Ok(()));
        now += 10;
    }
    let svc = &c.state().services["echo"];
    assert_eq!(svc.restarts, crate::state::CRASH_LOOP);
    let label = svc.crash_looped.clone().expect("a crash loop");
    let v = svc.current.as_ref().unwrap();
    assert_eq!(
        label,
        crate::telemetry::version_label(&v.app_commit, &v.order_revision)
    );
}

#[test]
fn redeploy_names_the_services_it_knows() {
    let mut c = following();
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Redeploy {
            service: "nope".into(),
            reply: tx,
        },
        T0,
    );
    assert_eq!(
        rx.try_recv().unwrap().unwrap_err(),
        "no order for service `nope` in headquarters; services: echo"
    );
}

#[test]
fn a_broken_settings_file_keeps_the_settings_in_force() {
    let mut c = core();
    let mut first = hq(vec![order("echo", "")]);
    first.settings = vec![("GREETING".into(), "hi".into())];
    c.handle(
        Event::HqLoaded {
            commit: "h1".into(),
            hq: first,
        },
        T0,
    );
    assert!(matches!(&c.take_effects()[..], [Effect::Forward(_)]));
    let mut broken = hq(vec![order("echo", "")]);
    broken.errors = vec![starphleet_orders::Diagnostic::file(
        Path::new(".starphleet"),
        "bad",
    )];
    c.handle(
        Event::HqLoaded {
            commit: "h2".into(),
            hq: broken,
        },
        T0,
    );
    assert!(c.take_effects().is_empty(), "forwarders kept");
    assert_eq!(
        c.snapshot().hq.unwrap().settings,
        vec![("GREETING".to_string(), "hi".to_string())]
    );
}

#[test]
fn a_switch_a_killed_ship_left_is_finished_and_its_dead_are_restarted() {
    let (c, _) = serving();
    let mut state = (**c.state()).clone();
    // The previous ship died right after recording a switch; one container died meanwhile.
    let svc = state.services.get_mut("echo").unwrap();
    let mut next = svc.current.clone().unwrap();
    next.id = 99;
    next.containers[0].id = "sp-abc123-99-echo".into();
    svc.switching = Some(next);
    let mut c = Core::new("ship1", Names::new("abc123"), Layout::new("/x"), state);
    c.adopt(&["sp-abc123-99-echo".to_string()], T0);
    c.handle(app_ref("echo", "c1"), T0);
    c.handle(
        Event::HqLoaded {
            commit: "h1".into(),
            hq: hq(vec![order("echo", "")]),
        },
        T0,
    );
    c.settle(T0);
    assert_eq!(serving_id(&c), Some(99));
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Drain(d) if d.version.id != 99)));
    assert!(effects.iter().any(
        |e| matches!(e, Effect::Stop { container, .. } if container.id == "sp-abc123-99-echo")
    ));
}

#[test]
fn a_failure_of_the_ships_own_is_retried_not_held_against_the_version() {
    let mut c = following();
    c.settle(T0);
    let job = deploys(&c.take_effects()).remove(0);
    let mut rec = record(&job);
    rec.steps.push(("start".into(), 1));
    c.handle(
        Event::DeployEnded {
            service: "echo".into(),
            deploy: job.deploy,
            record: rec,
            end: DeployEnd::Transient("no free address left on the ship's bridge".into()),
        },
        T0,
    );
    let wake = c.settle(T0);
    let svc = &c.state().services["echo"];
    assert_eq!(svc.failed_key, None, "the version is not held as failed");
    assert_eq!(wake, Some(T0 + 1000));
    assert!(deploys(&c.take_effects()).is_empty());
    c.settle(T0 + 1000);
    assert_eq!(deploys(&c.take_effects()).len(), 1, "tried again");
}

#[test]
fn addresses_go_round_and_run_out_with_a_clear_error() {
    let mut c = following();
    let net = Names::new("abc123").net();
    let mut seen = BTreeSet::new();
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: "echo".into(),
            deploy: 1,
            count: u32::from(net.capacity()),
            reply: tx,
        },
        T0,
    );
    persisted(&mut c, Ok(()));
    for r in rx.try_recv().unwrap().unwrap() {
        assert!(seen.insert(r.ip), "{} handed out twice", r.ip);
        assert_ne!(r.ip, net.gateway());
    }
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::Allocate {
            service: "echo".into(),
            deploy: 1,
            count: 1,
            reply: tx,
        },
        T0,
    );
    persisted(&mut c, Ok(()));
    let err = rx.try_recv().unwrap().unwrap_err();
    assert!(err.contains("no free address left"), "{err}");
}

#[test]
fn offline_marks_the_route_table_and_is_remembered_until_online() {
    let mut c = following();
    c.settle(T0);
    let before = c.routes().version;
    assert!(!c.routes().table.offline);
    let (tx, mut rx) = oneshot::channel();
    c.handle(
        Event::SetOffline {
            offline: true,
            reply: tx,
        },
        T0,
    );
    rx.try_recv().unwrap();
    c.settle(T0);
    assert!(
        c.routes().table.offline,
        "the proxy is told the ship is offline"
    );
    assert!(c.routes().version > before, "a new table is numbered");
    assert!(c.state().offline, "kept in the state file across restarts");
    let (tx, _rx) = oneshot::channel();
    c.handle(
        Event::SetOffline {
            offline: false,
            reply: tx,
        },
        T0,
    );
    c.settle(T0);
    assert!(!c.routes().table.offline);
}
