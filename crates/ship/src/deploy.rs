//! The deploy pipeline: fetch → build → start beside the old → health gate → switch → drain → stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use starphleet_build::{BuildRequest, Layer, APP_USER};
use starphleet_orders::{AppSpec, Order};
use starphleet_runtime::{Bind, ContainerSpec};
use tracing::{error, info, warn};

use crate::health;
use crate::observe::version_label;
use crate::ship::{safe_name, Ship};
use crate::state::{now_ms, ContainerRecord, DeployRecord, PublishRecord, Version, DEPLOY_HISTORY};
use starphleet_telemetry::Kind;

/// How long a stopping container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long an old version may finish in-flight requests after a switch, unless the order says otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// A service that ran this long without a crash starts its back-off from scratch.
const STEADY: Duration = Duration::from_secs(600);

/// The wait before restart number `n` (1-based): 1 s, 2 s, 4 s, … up to 5 minutes.
pub(crate) fn restart_delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Where the `starphleet` binary is bound in each container to run as its init (`starphleet init`).
const INIT_PATH: &str = "/.starphleet/starphleet";
/// Lines of a failed container's output kept in the error.
const TAIL_LINES: usize = 20;

/// One deploy to carry out.
pub(crate) struct Plan {
    pub service: String,
    pub order: Order,
    pub app_commit: String,
    pub key: String,
    pub env: Vec<(String, String)>,
    /// Set when a newer version supersedes this deploy.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
    /// Build afresh instead of reusing a cached layer (`starphleet redeploy`).
    pub fresh_build: bool,
}

/// Why a pipeline stopped early without the version being at fault.
#[derive(Debug)]
struct Superseded;

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("superseded by a newer version")
    }
}

impl std::error::Error for Superseded {}

/// Runs one deploy to the end, recording its timeline and outcome.
pub(crate) async fn deploy(ship: Arc<Ship>, plan: Plan) {
    let mut record = DeployRecord {
        key: plan.key.clone(),
        app_commit: plan.app_commit.clone(),
        started_at_ms: now_ms(),
        steps: Vec::new(),
        outcome: "in progress".into(),
    };
    info!(service = %plan.service, commit = %plan.app_commit, version = %plan.key, "deploy started");
    let label = version_label(&plan.app_commit, &plan.order.revision);
    ship.observer.event(
        &plan.service,
        &label,
        Kind::Ship,
        &format!("deploy of {} started", short(&plan.app_commit)),
    );
    let result = pipeline(&ship, &plan, &mut record).await;
    let steps: Vec<String> = record
        .steps
        .iter()
        .map(|(n, ms)| format!("{n} {ms}ms"))
        .collect();
    match &result {
        Ok(_) => ship.observer.event(
            &plan.service,
            &label,
            Kind::Ship,
            &format!("serving ({})", steps.join(", ")),
        ),
        Err(e) => {
            let step = record.steps.last().map(|s| s.0.as_str()).unwrap_or("");
            let kind = if step == "health" {
                Kind::Health
            } else {
                Kind::Ship
            };
            ship.observer.event(
                &plan.service,
                &label,
                kind,
                &format!(
                    "deploy {}: {e:#}",
                    if e.is::<Superseded>() {
                        "stopped"
                    } else {
                        "failed"
                    }
                ),
            );
        }
    }
    let mut pending = Vec::new();
    {
        let mut state = ship.state.lock().unwrap();
        let svc = state.services.entry(plan.service.clone()).or_default();
        match &result {
            Ok(_) => {
                record.outcome = "serving".into();
                svc.failed_key = None;
                svc.last_error = None;
            }
            Err(e) if e.is::<Superseded>() => {
                record.outcome = e.to_string();
                pending = std::mem::take(&mut svc.pending);
            }
            Err(e) => {
                let step = record.steps.last().map(|s| s.0.clone()).unwrap_or_default();
                record.outcome = format!("failed at {step}: {e:#}");
                svc.failed_key = Some(plan.key.clone());
                svc.last_error = Some(format!(
                    "deploy of {} failed at {step}: {e:#}",
                    short(&plan.app_commit)
                ));
                pending = std::mem::take(&mut svc.pending);
            }
        }
        svc.deploys.push(record.clone());
        let excess = svc.deploys.len().saturating_sub(DEPLOY_HISTORY);
        svc.deploys.drain(..excess);
        ship.save(&state);
    }
    for c in pending {
        stop_container(&ship, &c).await;
    }
    ship.live.lock().unwrap().deploying.remove(&plan.service);
    match result {
        Ok(old) => {
            info!(service = %plan.service, version = %plan.key, steps = ?record.steps, "deploy done");
            // The next deploy of this service may start while the old version drains.
            ship.wake();
            if let Some(old) = old {
                let started = Instant::now();
                let drained = retire_version(&ship, &plan.service, old).await;
                let mut state = ship.state.lock().unwrap();
                if let Some(r) = state.services.get_mut(&plan.service).and_then(|s| {
                    s.deploys
                        .iter_mut()
                        .rev()
                        .find(|r| r.started_at_ms == record.started_at_ms)
                }) {
                    r.steps.push(("drain".into(), drained.as_millis() as u64));
                    r.steps.push((
                        "stop".into(),
                        (started.elapsed() - drained).as_millis() as u64,
                    ));
                }
                ship.save(&state);
            }
        }
        Err(e) if e.is::<Superseded>() => {
            info!(service = %plan.service, version = %plan.key, "deploy superseded by a newer version");
            ship.wake();
        }
        Err(e) => error!(
            service = %plan.service,
            version = %plan.key,
            "deploy failed, the previous version keeps serving: {e:#}"
        ),
    }
}

/// Times one step into the record.
struct Timer<'a> {
    record: &'a mut DeployRecord,
    at: Instant,
}

impl<'a> Timer<'a> {
    fn begin(record: &'a mut DeployRecord, step: &str) -> Self {
        record.steps.push((step.to_string(), 0));
        Timer {
            record,
            at: Instant::now(),
        }
    }
    fn next(&mut self, step: &str) {
        self.finish();
        self.record.steps.push((step.to_string(), 0));
        self.at = Instant::now();
    }
    fn finish(&mut self) {
        if let Some(last) = self.record.steps.last_mut() {
            last.1 = self.at.elapsed().as_millis() as u64;
        }
    }
}

/// Fetch → build → start → health → switch; returns the version switched away from.
async fn pipeline(
    ship: &Arc<Ship>,
    plan: &Plan,
    record: &mut DeployRecord,
) -> Result<Option<Version>> {
    let cancelled = || -> Result<()> {
        if plan.cancel.load(std::sync::atomic::Ordering::SeqCst) {
            Err(Superseded.into())
        } else {
            Ok(())
        }
    };
    let mut timer = Timer::begin(record, "fetch");
    let mirror = ship
        .layout
        .repos()
        .join(starphleet_git::cache_name(&plan.order.autodeploy.url));
    {
        let _guard = ship.lock(&mirror.to_string_lossy()).await;
        let (git, url, dir, commit) = (
            ship.git.clone(),
            plan.order.autodeploy.url.clone(),
            mirror.clone(),
            plan.app_commit.clone(),
        );
        tokio::task::spawn_blocking(move || git.fetch_commit(&url, &dir, &commit)).await??;
    }

    cancelled()?;
    timer.next("build");
    let app = app_spec(ship, &mirror, plan)?;
    let start = app.start.clone().ok_or_else(|| no_start_error(plan))?;
    let env = crate::env::merge(&[&app.env, &plan.env]);
    let layer = build(ship, plan, &mirror, &app, &env).await?;

    cancelled()?;
    timer.next("start");
    let private = plan.order.publish.first().map(|p| p.private);
    let instances = plan.order.instances.unwrap_or(1).max(1);
    let mut containers = Vec::new();
    for _ in 0..instances {
        containers.push(start_container(ship, plan, &layer, &start, &env, private).await?);
    }
    cancelled()?;

    timer.next("health");
    let timeout = plan.order.health_timeout.unwrap_or(health::DEFAULT_TIMEOUT);
    let path = plan.order.healthcheck.clone().or(app.healthcheck.clone());
    for c in &containers {
        let pid = c.pid;
        let cancel = plan.cancel.clone();
        let alive = move || {
            crate::layout::process_alive(pid) && !cancel.load(std::sync::atomic::Ordering::SeqCst)
        };
        let result = match private {
            Some(port) => health::wait_healthy(
                SocketAddr::new(c.ip.into(), port),
                path.as_deref(),
                timeout,
                alive,
            )
            .await
            .map(|_| ()),
            None if alive() => Ok(()),
            None => Err(anyhow!("the container exited at once")),
        };
        if let Err(e) = result {
            cancelled()?;
            return Err(e.context(tail_output(c)));
        }
    }
    cancelled()?;

    timer.next("switch");
    let version = Version {
        key: plan.key.clone(),
        app_commit: plan.app_commit.clone(),
        order_revision: plan.order.revision.clone(),
        publish: plan
            .order
            .publish
            .iter()
            .map(|p| PublishRecord {
                private: p.private,
                public: p.public,
                url: p.url.clone(),
            })
            .collect(),
        containers,
        healthy_at_ms: now_ms(),
        drain_timeout_ms: plan.order.drain.unwrap_or(DEFAULT_DRAIN).as_millis() as u64,
    };
    let old = {
        let mut state = ship.state.lock().unwrap();
        let svc = state.services.entry(plan.service.clone()).or_default();
        let old = svc.current.replace(version);
        if let Some(old) = &old {
            svc.draining.push(old.clone());
        }
        svc.pending.clear();
        ship.save(&state);
        old
    };
    ship.sync_routes()
        .await
        .context("switching the proxy to the new version")?;
    info!(service = %plan.service, version = %plan.key, "serving");

    timer.finish();
    Ok(old)
}

/// Waits for an old version's in-flight requests (or its drain timeout), then stops it; returns the drain time.
async fn retire_version(ship: &Arc<Ship>, service: &str, old: Version) -> Duration {
    let ids: Vec<String> = old.containers.iter().map(|c| c.id.clone()).collect();
    let begun = Instant::now();
    let deadline = begun + Duration::from_millis(old.drain_timeout_ms);
    loop {
        let busy: u64 = match ship.proxy.status().await {
            Ok(st) => ids
                .iter()
                .map(|id| st.in_flight.get(id).copied().unwrap_or(0))
                .sum(),
            Err(_) => 0,
        };
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            warn!(service, version = %old.key, busy, "drain timeout reached; stopping with requests in flight");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = begun.elapsed();
    for c in &old.containers {
        stop_container(ship, c).await;
    }
    let mut state = ship.state.lock().unwrap();
    if let Some(svc) = state.services.get_mut(service) {
        svc.draining
            .retain(|v| v.key != old.key || v.containers != old.containers);
    }
    ship.save(&state);
    drained
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

fn no_start_error(plan: &Plan) -> anyhow::Error {
    anyhow!(
        "{} at {} has no start command: add a `Starphleet` file at its root with a line `start <command>` (or a Procfile with `web: <command>`)",
        plan.order.autodeploy.url,
        short(&plan.app_commit)
    )
}

/// Reads the app's `Starphleet` file, or its Procfile's `web:` line.
fn app_spec(ship: &Ship, mirror: &std::path::Path, plan: &Plan) -> Result<AppSpec> {
    if let Some(bytes) = ship.git.read_file(mirror, &plan.app_commit, "Starphleet")? {
        let text = String::from_utf8_lossy(&bytes);
        let path = std::path::Path::new("Starphleet");
        return starphleet_orders::parse_app(path, &text).map_err(|diags| {
            let rendered: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            anyhow!(
                "{} at {}:\n{}",
                plan.order.autodeploy.url,
                short(&plan.app_commit),
                rendered.join("\n")
            )
        });
    }
    if let Some(bytes) = ship.git.read_file(mirror, &plan.app_commit, "Procfile")? {
        if let Some(web) = starphleet_orders::parse_procfile(&String::from_utf8_lossy(&bytes)) {
            return Ok(AppSpec {
                build: Vec::new(),
                start: Some(web),
                healthcheck: None,
                env: Vec::new(),
            });
        }
    }
    Err(no_start_error(plan))
}

async fn build(
    ship: &Arc<Ship>,
    plan: &Plan,
    mirror: &std::path::Path,
    app: &AppSpec,
    env: &[(String, String)],
) -> Result<Layer> {
    let log_dir = ship.service_log_dir(&plan.service);
    std::fs::create_dir_all(&log_dir)?;
    let ship2 = ship.clone();
    let (mirror, commit, service) = (
        mirror.to_path_buf(),
        plan.app_commit.clone(),
        plan.service.clone(),
    );
    let build_lines = app.build.clone();
    let fresh = plan.fresh_build;
    let env = with_defaults(env);
    let seq = allocate_seq(ship);
    let _guard = ship
        .lock(&starphleet_build::layer_key(&plan.app_commit, &app.build))
        .await;
    ship.observer.watch_build(
        &plan.service,
        &log_dir.join("build.log"),
        &version_label(&plan.app_commit, &plan.order.revision),
    );
    let layer = tokio::task::spawn_blocking(move || {
        let id = format!("sp-{}-{seq:x}-build", ship2.id);
        let cgroup = format!("/starphleet-{}/{id}", ship2.id);
        let export = |dest: &std::path::Path| -> std::io::Result<()> {
            ship2
                .git
                .export(&mirror, &commit, dest)
                .map_err(std::io::Error::other)
        };
        ship2.builder.build(&BuildRequest {
            service: &service,
            commit: &commit,
            build_lines: &build_lines,
            env: &env,
            export: &export,
            log: &log_dir.join("build.log"),
            container_id: &id,
            cgroups_path: &cgroup,
            fresh,
            timeout: starphleet_build::DEFAULT_BUILD_TIMEOUT,
            max_log_bytes: starphleet_build::DEFAULT_MAX_LOG_BYTES,
        })
    })
    .await??;
    info!(service = %plan.service, layer = %layer.key, cached = layer.cached, "build ready");
    Ok(layer)
}

fn with_defaults(env: &[(String, String)]) -> Vec<(String, String)> {
    let defaults = [
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_string(),
        ),
        ("HOME".to_string(), "/app".to_string()),
    ];
    crate::env::merge(&[&defaults, env])
}

fn allocate_seq(ship: &Ship) -> u32 {
    let mut state = ship.state.lock().unwrap();
    let seq = state.next_seq;
    state.next_seq = state.next_seq.wrapping_add(1);
    ship.save(&state);
    seq
}

/// Starts one container of the version: address, netns, bundle, runtime.
async fn start_container(
    ship: &Arc<Ship>,
    plan: &Plan,
    layer: &Layer,
    start: &str,
    env: &[(String, String)],
    private: Option<u16>,
) -> Result<ContainerRecord> {
    let record = {
        let mut state = ship.state.lock().unwrap();
        let used: std::collections::HashSet<_> = state.all_containers().map(|c| c.ip).collect();
        let start = state.last_host.max(1);
        let host = (1..=253u16)
            .map(|i| ((start as u16 + 251 + i) % 253 + 2) as u8)
            .find(|&n| !used.contains(&ship.net.host(n)))
            .ok_or_else(|| anyhow!("no free address left on the ship's bridge"))?;
        state.last_host = host;
        let ip = ship.net.host(host);
        let seq = state.next_seq;
        state.next_seq = state.next_seq.wrapping_add(1);
        let id = format!("sp-{}-{seq:x}-{}", ship.id, safe_name(&plan.service));
        let id: String = id.chars().take(64).collect();
        let logs = ship.service_log_dir(&plan.service);
        let record = ContainerRecord {
            bundle: ship.layout.bundles().join(&id),
            stdout: logs.join(format!("{id}.stdout.log")),
            stderr: logs.join(format!("{id}.stderr.log")),
            netns: format!("sp-{}-{seq:x}", ship.id),
            host_if: format!("sp{}{:05x}", ship.id, seq & 0xfffff),
            id,
            ip,
            pid: 0,
            started_at_ms: now_ms(),
        };
        state
            .services
            .entry(plan.service.clone())
            .or_default()
            .pending
            .push(record.clone());
        ship.save(&state);
        record
    };
    std::fs::create_dir_all(ship.service_log_dir(&plan.service))?;
    let netns = starphleet_runtime::net::create_container_netns(
        &record.netns,
        &record.host_if,
        &ship.net.bridge,
        record.ip,
        24,
        ship.net.gateway(),
    )
    .await
    .with_context(|| format!("creating network namespace {}", record.netns))?;
    let mut env = with_defaults(env);
    if let Some(port) = private {
        env = crate::env::merge(&[&env, &[("PORT".to_string(), port.to_string())]]);
    }
    let hostname = safe_name(&plan.service);
    let spec = ContainerSpec {
        id: record.id.clone(),
        bundle_dir: record.bundle.clone(),
        layers: vec![layer.dir.clone()],
        args: vec![
            INIT_PATH.into(),
            "init".into(),
            "/bin/sh".into(),
            "-c".into(),
            format!("exec {start}"),
        ],
        env,
        cwd: "/app".into(),
        user: APP_USER,
        hostname: hostname.clone(),
        netns: Some(netns),
        hosts: vec![(record.ip.into(), hostname)],
        binds: vec![Bind {
            source: ship.opts.self_exe.clone(),
            destination: INIT_PATH.into(),
            readonly: true,
        }],
        cgroups_path: format!("/starphleet-{}/{}", ship.id, record.id),
        stdout: record.stdout.clone(),
        stderr: record.stderr.clone(),
        readonly_app: false,
        limits: Default::default(),
    };
    let runtime = ship.runtime.clone();
    let pid = tokio::task::spawn_blocking(move || runtime.start(&spec))
        .await?
        .with_context(|| format!("starting container {}", record.id))?;
    let mut state = ship.state.lock().unwrap();
    let svc = state.services.entry(plan.service.clone()).or_default();
    let mut started = record.clone();
    started.pid = pid;
    for c in svc.pending.iter_mut().filter(|c| c.id == record.id) {
        c.pid = pid;
    }
    ship.save(&state);
    info!(service = %plan.service, container = %started.id, ip = %started.ip, pid, "container started");
    ship.observer.watch_container(
        &plan.service,
        &version_label(&plan.app_commit, &plan.order.revision),
        &started,
    );
    Ok(started)
}

/// The last lines a container printed, for error reports.
pub(crate) fn tail_output(c: &ContainerRecord) -> String {
    let mut out = String::new();
    for (name, path) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        if !tail.is_empty() {
            out.push_str(&format!(
                "\n--- last {} lines of {name} of {} ---\n{}",
                tail.len(),
                c.id,
                tail.join("\n")
            ));
        }
    }
    if out.is_empty() {
        format!("container {} printed nothing", c.id)
    } else {
        out.trim_start().to_string()
    }
}

/// Stops and removes a container and its network namespace; failures are logged.
pub(crate) async fn stop_container(ship: &Ship, c: &ContainerRecord) {
    let runtime = ship.runtime.clone();
    let (id, bundle) = (c.id.clone(), c.bundle.clone());
    match tokio::task::spawn_blocking(move || runtime.stop(&id, &bundle, STOP_GRACE)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(container = %c.id, "stopping container: {e:#}"),
        Err(e) => warn!(container = %c.id, "stopping container: {e}"),
    }
    if let Err(e) = starphleet_runtime::net::delete_netns(&c.netns) {
        warn!(netns = %c.netns, "removing network namespace: {e:#}");
    }
    // The kernel removes the veth with its namespace, but asynchronously: remove it now.
    if let Err(e) = starphleet_runtime::net::delete_link(&c.host_if).await {
        warn!(link = %c.host_if, "removing veth: {e:#}");
    }
    ship.observer.unwatch_container(c);
    info!(container = %c.id, "container stopped");
}

/// Takes a service that left HQ out of the proxy, drains and stops it, and forgets it.
pub(crate) async fn retire(ship: Arc<Ship>, service: String) {
    info!(service = %service, "order removed from headquarters; draining and stopping");
    let (current, draining, pending) = {
        let mut state = ship.state.lock().unwrap();
        let svc = state.services.entry(service.clone()).or_default();
        let current = svc.current.take();
        if let Some(c) = &current {
            svc.draining.push(c.clone());
        }
        let out = (
            current,
            svc.draining.clone(),
            std::mem::take(&mut svc.pending),
        );
        ship.save(&state);
        out
    };
    if let Err(e) = ship.sync_routes().await {
        warn!("cannot program the proxy: {e:#}");
    }
    for c in &pending {
        stop_container(&ship, c).await;
    }
    if current.is_some() || !draining.is_empty() {
        for v in draining {
            retire_version(&ship, &service, v).await;
        }
    }
    {
        let mut state = ship.state.lock().unwrap();
        state.services.remove(&service);
        ship.save(&state);
    }
    ship.live.lock().unwrap().deploying.remove(&service);
}

/// On start: keep running containers, clean up what an interrupted ship left half done.
pub(crate) async fn adopt(ship: &Arc<Ship>) {
    let (known, leftovers) = {
        let mut state = ship.state.lock().unwrap();
        let mut leftovers: Vec<(String, ContainerRecord)> = Vec::new();
        for (name, svc) in state.services.iter_mut() {
            leftovers.extend(svc.pending.drain(..).map(|c| (name.clone(), c)));
            for v in svc.draining.drain(..) {
                leftovers.extend(v.containers.into_iter().map(|c| (name.clone(), c)));
            }
            // Resume collecting the output of what keeps running, where it stopped.
            if let Some(v) = &svc.current {
                let label = version_label(&v.app_commit, &v.order_revision);
                for c in &v.containers {
                    ship.observer.watch_container(name, &label, c);
                }
            }
        }
        ship.save(&state);
        let known: std::collections::HashSet<String> =
            state.all_containers().map(|c| c.id.clone()).collect();
        (known, leftovers)
    };
    for (service, c) in &leftovers {
        info!(container = %c.id, "removing container of an interrupted deploy or drain");
        ship.observer.watch_container(service, "", c);
        stop_container(ship, c).await;
    }
    // Containers the runtime has but the state does not (e.g. a crash between start and save).
    let runtime = ship.runtime.clone();
    if let Ok(Ok(list)) = tokio::task::spawn_blocking(move || runtime.list()).await {
        for orphan in list.into_iter().filter(|c| !known.contains(&c.id)) {
            info!(container = %orphan.id, "removing orphan container");
            let runtime = ship.runtime.clone();
            let _ = tokio::task::spawn_blocking(move || {
                runtime.stop(&orphan.id, &orphan.bundle, STOP_GRACE)
            })
            .await;
        }
    }
    let mut adopted = 0;
    let state = ship.state.lock().unwrap();
    for c in state.all_containers() {
        if c.pid != 0 && crate::layout::process_alive(c.pid) {
            adopted += 1;
        }
    }
    if adopted > 0 {
        info!(containers = adopted, "adopted running containers");
    }
}

/// Notices containers of current versions that died and schedules their service for a restart.
pub(crate) async fn supervise(ship: &Arc<Ship>) {
    let mut dead = Vec::new();
    {
        let mut state = ship.state.lock().unwrap();
        let deploying: std::collections::HashSet<String> = ship
            .live
            .lock()
            .unwrap()
            .deploying
            .keys()
            .cloned()
            .collect();
        for (service, svc) in state.services.iter_mut() {
            if deploying.contains(service) {
                continue;
            }
            let Some(v) = svc.current.as_mut() else {
                continue;
            };
            let (alive, gone): (Vec<_>, Vec<_>) = v
                .containers
                .drain(..)
                .partition(|c| c.pid != 0 && crate::layout::process_alive(c.pid));
            v.containers = alive;
            if !gone.is_empty() {
                svc.restarts += 1;
                let delay = restart_delay(svc.restarts);
                svc.restart_at_ms = now_ms() + delay.as_millis() as u64;
                for c in gone {
                    let msg = format!(
                        "container {} of {service} exited; restart #{} in {delay:?}; {}",
                        c.id,
                        svc.restarts,
                        tail_output(&c)
                    );
                    error!("{msg}");
                    let label = version_label(&v.app_commit, &v.order_revision);
                    ship.observer.event(service, &label, Kind::Ship, &msg);
                    svc.last_error = Some(msg);
                    dead.push(c);
                }
            } else if svc.restarts > 0
                && now_ms().saturating_sub(v.healthy_at_ms) > STEADY.as_millis() as u64
            {
                svc.restarts = 0;
            }
        }
        if !dead.is_empty() {
            ship.save(&state);
        }
    }
    for c in dead {
        stop_container(ship, &c).await;
    }
}
