//! The deploy pipeline: fetch → build → start beside the old version → health gate → switch.
//!
//! A pipeline owns no state: it asks the owner for container records (persisted before any
//! container exists), reports each start, and hands the healthy version to the owner, which
//! switches traffic to it once the proxy has the new table. When it stops early, whatever it
//! started is stopped by the owner as leftovers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use starphleet_build::{BuildRequest, Layer, APP_USER};
use starphleet_orders::AppSpec;
use starphleet_runtime::{Bind, ContainerSpec};
use starphleet_telemetry::Kind;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::context::Ctx;
use crate::health;
use crate::owner::core::{DeployEnd, DeployJob};
use crate::owner::{Event, OwnerTx};
use crate::state::{now_ms, ContainerRecord, DeployRecord, PublishRecord, Version};
use crate::telemetry::version_label;

/// How long an old version may finish in-flight requests after a switch, unless the order says otherwise.
pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
/// A container's memory limit unless its order or `Starphleet` names one (`memory`).
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// A container's process limit unless its order or `Starphleet` names one (`pids`).
pub const DEFAULT_PIDS: i64 = 1024;

/// The limits a container gets: the order's, else the app's, else the defaults (no CPU
/// limit by default: an idle ship lends its cores to whoever needs them).
fn limits(order: &starphleet_orders::Order, app: &AppSpec) -> starphleet_runtime::Limits {
    let r = order.resources.over(&app.resources);
    starphleet_runtime::Limits {
        memory_bytes: Some(r.memory_bytes.unwrap_or(DEFAULT_MEMORY)),
        pids: Some(r.pids.unwrap_or(DEFAULT_PIDS)),
        cpu_millis: r.cpu_millis,
        ..starphleet_runtime::Limits::default()
    }
}

/// Where the `starphleet` binary is bound in each container to run as its init (`starphleet init`).
const INIT_PATH: &str = "/.starphleet/starphleet";

/// Where the ship's shared libraries are bound in containers on a base of their own.
const INIT_LIBS: &str = "/.starphleet/lib";

/// The shared libraries this process runs on (its loader, libc…), read from its own memory
/// map: exactly what the init (this same executable) needs in a container without them.
fn host_libraries() -> &'static [PathBuf] {
    static LIBS: std::sync::LazyLock<Vec<PathBuf>> = std::sync::LazyLock::new(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut libs: Vec<PathBuf> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/') && p.contains(".so"))
            .map(PathBuf::from)
            .collect();
        libs.sort();
        libs.dedup();
        libs
    });
    &LIBS
}

fn is_loader(lib: &Path) -> bool {
    file_name(lib).starts_with("ld-linux")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a deploy did not reach its switch.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A newer version (or the order's removal) superseded it; the version is not at fault.
    #[error("superseded by a newer version")]
    Superseded,
    /// The app commit could not be fetched.
    #[error("fetching {url} at {commit}: {source}")]
    Fetch {
        /// The repository.
        url: String,
        /// The commit.
        commit: String,
        /// What git said.
        source: starphleet_git::GitError,
    },
    /// The app's `Starphleet` file has errors.
    #[error("{url} at {commit}:\n{diagnostics}")]
    AppSpec {
        /// The repository.
        url: String,
        /// The commit.
        commit: String,
        /// Every diagnostic, rendered.
        diagnostics: String,
    },
    /// A build step failed.
    #[error(transparent)]
    Build(#[from] starphleet_build::BuildError),
    /// Containers could not be recorded.
    #[error("{0}")]
    Allocate(String),
    /// A container's network namespace could not be made.
    #[error("creating network namespace {netns}: {source}")]
    Network {
        /// The namespace.
        netns: String,
        /// Why.
        source: starphleet_runtime::NetError,
    },
    /// The OCI runtime could not start a container.
    #[error("starting container {container}: {source}")]
    Start {
        /// The container.
        container: String,
        /// What the runtime said.
        source: starphleet_runtime::RuntimeError,
    },
    /// A container did not become healthy.
    #[error("{reason}\n{output}")]
    Unhealthy {
        /// What the health gate saw.
        reason: health::HealthError,
        /// The last lines the container printed.
        output: String,
    },
    /// The ship stopped meanwhile.
    #[error("the ship is shutting down")]
    ShipStopping,
    /// A blocking task of the pipeline panicked or was cancelled.
    #[error("internal error: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether an I/O error is about the machine (full disk, out of descriptors or memory) rather
/// than the app: such a deploy is retried, not held as failed.
fn machine_limit(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN
        )
    )
}

impl DeployError {
    /// Whether the failure comes from the ship's situation (no free address, a full disk, no
    /// file descriptors) and not from the version: it is retried when that may have gone away.
    pub fn is_transient(&self) -> bool {
        use starphleet_build::BuildError as B;
        use starphleet_runtime::{NetError as N, RuntimeError as R};
        fn runtime(e: &R) -> bool {
            matches!(e, R::Io { cause, .. } | R::Spawn { cause, .. } if machine_limit(cause))
        }
        fn net(e: &N) -> bool {
            match e {
                N::Io { cause, .. } => machine_limit(cause),
                N::Setup { cause, .. } => net(cause),
                _ => false,
            }
        }
        match self {
            DeployError::Allocate(_) => true,
            DeployError::Network { source, .. } => net(source),
            DeployError::Start { source, .. } => runtime(source),
            DeployError::Build(B::Io { cause, .. } | B::Export { cause, .. }) => {
                machine_limit(cause)
            }
            DeployError::Build(B::Runtime { cause, .. }) => runtime(cause),
            _ => false,
        }
    }
}

/// Runs one deploy to its switch (or its end) and tells the owner.
pub(crate) async fn run(ctx: Arc<Ctx>, owner: OwnerTx, job: DeployJob, cancel: CancellationToken) {
    let label = version_label(&job.version.app_commit, &job.version.order.revision);
    let mut record = DeployRecord {
        key: job.version.key.clone(),
        app_commit: job.version.app_commit.clone(),
        version_label: label.clone(),
        layer: None,
        started_at_ms: now_ms(),
        steps: Vec::new(),
        outcome: "in progress".into(),
    };
    info!(service = %job.service, commit = %job.version.app_commit, version = %job.version.key, reason = ?job.reason, "deploy started");
    ctx.telemetry.note(
        &job.service,
        &label,
        Kind::Ship,
        &format!("deploy of {} started", short(&job.version.app_commit)),
    );
    let result = pipeline(&ctx, &owner, &job, &cancel, &mut record).await;
    let end = match result {
        Ok(version) => {
            let go = owner
                .ask(|reply| Event::Switch {
                    service: job.service.clone(),
                    deploy: job.deploy,
                    version: Box::new(version),
                    record: record.clone(),
                    reply,
                })
                .await;
            match go {
                Some(true) => return,
                Some(false) => DeployEnd::Superseded,
                None => return,
            }
        }
        Err(DeployError::Superseded) => DeployEnd::Superseded,
        Err(DeployError::ShipStopping) => return,
        Err(e) if e.is_transient() => DeployEnd::Transient(e.to_string()),
        // Tools (runc, git) that fail on a full disk do not always say why: a full state dir
        // makes any failure the ship's, not the version's.
        Err(e) if crate::selfcheck::disk_nearly_full(ctx.layout.root()) => {
            DeployEnd::Transient(format!("{e} (the state dir's disk is full)"))
        }
        Err(e) => DeployEnd::Failed(e.to_string()),
    };
    owner.send(Event::DeployEnded {
        service: job.service.clone(),
        deploy: job.deploy,
        record,
        end,
    });
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

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

fn check(cancel: &CancellationToken) -> Result<(), DeployError> {
    if cancel.is_cancelled() {
        Err(DeployError::Superseded)
    } else {
        Ok(())
    }
}

/// Fetch → build → start → health; returns the healthy version.
async fn pipeline(
    ctx: &Arc<Ctx>,
    owner: &OwnerTx,
    job: &DeployJob,
    cancel: &CancellationToken,
    record: &mut DeployRecord,
) -> Result<Version, DeployError> {
    let want = &job.version;
    let order = &want.order;
    let url = order.autodeploy.url.clone();
    let mut timer = Timer::begin(record, "fetch");
    let mirror = ctx
        .layout
        .repos()
        .join(starphleet_git::cache_name(&order.autodeploy.url));
    {
        let _guard = ctx.lock(&mirror.to_string_lossy()).await;
        let (git, dir, commit, u) = (
            ctx.git.clone().with_timeouts(job.git_timeouts),
            mirror.clone(),
            want.app_commit.clone(),
            url.clone(),
        );
        tokio::task::spawn_blocking(move || git.fetch_commit(&u, &dir, &commit))
            .await?
            .map_err(|source| DeployError::Fetch {
                url: url.clone(),
                commit: short(&want.app_commit).into(),
                source,
            })?;
    }

    check(cancel)?;
    timer.next("build");
    let (app, files) = app_spec(ctx, &mirror, job).await?;
    // The app's `.env` is the lowest layer, under its `Starphleet` exports, HQ, ship and order.
    let env = crate::env::merge(&[&files.dotenv, &app.env, &want.env]);
    let private = order.publish.first().map(|p| p.private);
    let notes = port_notes(&env, private);
    let layer = build(ctx, owner, job, &mirror, &app, &env, &notes).await?;
    let env = crate::env::merge(&[layer.run_env(), &env]);
    timer.record.layer = Some(layer.key.clone());
    let used = layer.dir.clone();
    let _ = tokio::task::spawn_blocking(move || crate::gc::mark_used(&used)).await;

    check(cancel)?;
    timer.next("start");
    let instances = order.instances.unwrap_or(1).max(1);
    let records = owner
        .ask(|reply| Event::Allocate {
            service: job.service.clone(),
            deploy: job.deploy,
            count: instances,
            reply,
        })
        .await
        .ok_or(DeployError::ShipStopping)?
        .map_err(DeployError::Allocate)?;
    let mut containers = Vec::new();
    let start = layer.start_script();
    let launch = Launch {
        layer: &layer,
        start: &start,
        env: &env,
        private,
        limits: limits(order, &app),
    };
    for r in records {
        let pid = start_container(ctx, job, &launch, &r).await?;
        owner.send(Event::Started {
            service: job.service.clone(),
            container: r.id.clone(),
            pid,
        });
        containers.push(ContainerRecord { pid, ..r });
    }
    check(cancel)?;

    timer.next("health");
    let timeout = order.health_timeout.unwrap_or(health::DEFAULT_TIMEOUT);
    let path = order
        .healthcheck
        .clone()
        .or(app.healthcheck.clone())
        .or(files.healthcheck.clone());
    for c in &containers {
        let pid = c.pid;
        let token = cancel.clone();
        let alive = move || crate::layout::process_alive(pid) && !token.is_cancelled();
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
            None => Err(health::HealthError::ExitedAtOnce),
        };
        if let Err(reason) = result {
            check(cancel)?;
            let c = c.clone();
            let output = tokio::task::spawn_blocking(move || tail_output(&c)).await?;
            return Err(DeployError::Unhealthy { reason, output });
        }
    }
    check(cancel)?;
    timer.finish();
    Ok(Version {
        id: 0,
        key: want.key.clone(),
        app_commit: want.app_commit.clone(),
        order_revision: order.revision.clone(),
        publish: publish_records(order),
        containers,
        healthy_at_ms: now_ms(),
        drain_timeout_ms: drain_ms(order),
        draining_since_ms: None,
        layer: Some(layer.key.clone()),
    })
}

fn publish_records(order: &starphleet_orders::Order) -> Vec<PublishRecord> {
    order
        .publish
        .iter()
        .map(|p| PublishRecord {
            private: p.private,
            public: p.public,
            url: p.url.clone(),
            hosts: p.hosts.clone(),
            tls: p.tls,
            redirect: p.redirect,
            max_body: p.max_body,
            timeout_ms: p.timeout.map(|t| t.as_millis() as u64),
            body_timeout_ms: p.body_timeout.map(|t| t.as_millis() as u64),
        })
        .collect()
}

fn drain_ms(order: &starphleet_orders::Order) -> u64 {
    order.drain.unwrap_or(DEFAULT_DRAIN).as_millis() as u64
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// What the app's own conventions say, besides its `Starphleet` file.
#[derive(Default)]
struct AppFiles {
    /// `.env` at the app root (`KEY=VALUE` or `export KEY=VALUE`): the lowest env layer.
    dotenv: Vec<(String, String)>,
    /// The first line of a `healthcheck` file at the app root: the default health check.
    healthcheck: Option<String>,
}

/// Reads the app's `Starphleet` file (an empty spec without one: the build plan detects the
/// rest), its `.env` and its `healthcheck` file.
async fn app_spec(
    ctx: &Ctx,
    mirror: &Path,
    job: &DeployJob,
) -> Result<(AppSpec, AppFiles), DeployError> {
    let url = job.version.order.autodeploy.url.clone();
    let commit = job.version.app_commit.clone();
    let fetch_error = |source| DeployError::Fetch {
        url: url.clone(),
        commit: short(&commit).into(),
        source,
    };
    let spec_error = |diags: Vec<starphleet_orders::Diagnostic>| DeployError::AppSpec {
        url: url.clone(),
        commit: short(&commit).into(),
        diagnostics: diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let read = |name: &'static str| {
        let (git, mirror, commit) = (ctx.git.clone(), mirror.to_path_buf(), commit.clone());
        tokio::task::spawn_blocking(move || git.read_file(&mirror, &commit, name))
    };
    let spec = match read("Starphleet").await?.map_err(fetch_error)? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            starphleet_orders::parse_app(Path::new("Starphleet"), &text).map_err(spec_error)?
        }
        None => AppSpec::default(),
    };
    let mut files = AppFiles::default();
    if let Some(bytes) = read(".env").await?.map_err(fetch_error)? {
        let text = String::from_utf8_lossy(&bytes);
        files.dotenv =
            starphleet_orders::parse_env_file(Path::new(".env"), &text).map_err(spec_error)?;
    }
    if let Some(bytes) = read("healthcheck").await?.map_err(fetch_error)? {
        files.healthcheck =
            starphleet_orders::parse_healthcheck_file(&String::from_utf8_lossy(&bytes));
    }
    Ok((spec, files))
}

/// Build-log lines about `PORT`: the service always listens on the order's `--private` port,
/// whatever the app's own env says.
fn port_notes(env: &[(String, String)], private: Option<u16>) -> Vec<String> {
    let (Some(port), Some((_, theirs))) = (private, env.iter().rev().find(|(k, _)| k == "PORT"))
    else {
        return Vec::new();
    };
    if theirs.trim() == port.to_string() {
        return Vec::new();
    }
    vec![format!(
        "-----> PORT={theirs} from the app's env is overridden: the order publishes --private {port}, so the service gets PORT={port}"
    )]
}

async fn build(
    ctx: &Arc<Ctx>,
    owner: &OwnerTx,
    job: &DeployJob,
    mirror: &Path,
    app: &AppSpec,
    env: &[(String, String)],
    notes: &[String],
) -> Result<Layer, DeployError> {
    let log_dir = ctx.layout.service_logs(&job.service);
    let log = log_dir.join("build.log");
    std::fs::create_dir_all(&log_dir).map_err(|source| {
        DeployError::Build(starphleet_build::BuildError::Io {
            what: "creating the service's log folder",
            path: log_dir.clone(),
            cause: source,
        })
    })?;
    let slot = owner
        .ask(|reply| Event::BuildSlot { reply })
        .await
        .ok_or(DeployError::ShipStopping)?;
    // The address goes back to the owner however the build ends.
    let _lease = slot.ip.map(|ip| AddressLease {
        owner: owner.clone(),
        ip,
    });
    let net = ctx.names.net();
    let network = slot.ip.map(|ip| starphleet_build::BuildNetwork {
        netns: ctx.names.netns(slot.seq),
        host_if: ctx.names.host_veth(slot.seq),
        bridge: net.bridge.clone(),
        ip,
        prefix_len: net.prefix_len(),
        gateway: net.gateway(),
    });
    let declared = starphleet_build::Declared {
        build: app.build.clone(),
        start: app.start.clone(),
        buildpacks: app.buildpacks.clone(),
    };
    let base = job.version.order.base.clone().or(app.base.clone());
    let tools = starphleet_build::Tools::probe();
    let _guard = ctx
        .lock(&starphleet_build::layer_key(
            &job.version.app_commit,
            &declared,
            &tools,
            base.as_ref().map(|b| starphleet_build::BaseRef {
                source: &b.source,
                sha256: b.sha256.as_deref(),
            }),
        ))
        .await;
    ctx.telemetry.watch_build(
        &job.service,
        &log,
        &version_label(&job.version.app_commit, &job.version.order.revision),
    );
    if !notes.is_empty() {
        append_lines(&log, notes).map_err(|cause| {
            DeployError::Build(starphleet_build::BuildError::Io {
                what: "writing the build log",
                path: log.clone(),
                cause,
            })
        })?;
    }
    let ctx2 = ctx.clone();
    let (mirror, commit, service) = (
        mirror.to_path_buf(),
        job.version.app_commit.clone(),
        job.service.clone(),
    );
    let fresh = job.fresh_build;
    let timeout = job
        .version
        .order
        .build_timeout
        .or(app.build_timeout)
        .unwrap_or(starphleet_build::DEFAULT_BUILD_TIMEOUT);
    let env = with_defaults(env);
    let layer = tokio::task::spawn_blocking(move || {
        let id = ctx2.names.build_container(slot.seq);
        let cgroup = ctx2.names.cgroup(&id);
        let export = |dest: &Path| -> std::io::Result<()> {
            ctx2.git
                .export(&mirror, &commit, dest)
                .map_err(std::io::Error::other)
        };
        ctx2.builder.build(&BuildRequest {
            service: &service,
            app: &crate::names::safe_name(&service),
            commit: &commit,
            declared: &declared,
            tools: &tools,
            base: base.as_ref().map(|b| starphleet_build::BaseRef {
                source: &b.source,
                sha256: b.sha256.as_deref(),
            }),
            env: &env,
            export: &export,
            git: &ctx2.git,
            network: network.as_ref(),
            log: &log,
            container_id: &id,
            cgroups_path: &cgroup,
            fresh,
            timeout,
            max_log_bytes: starphleet_build::DEFAULT_MAX_LOG_BYTES,
        })
    })
    .await??;
    info!(service = %job.service, layer = %layer.key, cached = layer.cached, "build ready");
    Ok(layer)
}

/// Gives a build's address back to the owner when dropped.
struct AddressLease {
    owner: OwnerTx,
    ip: std::net::Ipv4Addr,
}

impl Drop for AddressLease {
    fn drop(&mut self) {
        self.owner.send(Event::BuildEnded { ip: self.ip });
    }
}

fn append_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for line in lines {
        writeln!(f, "{line}")?;
    }
    Ok(())
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

/// What every container of one version starts from.
struct Launch<'a> {
    layer: &'a Layer,
    start: &'a str,
    env: &'a [(String, String)],
    private: Option<u16>,
    limits: starphleet_runtime::Limits,
}

/// Starts one recorded container of the version: netns, bundle, runtime. Returns its init pid.
async fn start_container(
    ctx: &Arc<Ctx>,
    job: &DeployJob,
    launch: &Launch<'_>,
    record: &ContainerRecord,
) -> Result<u32, DeployError> {
    let Launch {
        layer,
        start,
        env,
        private,
        limits,
    } = launch;
    let logs = ctx.layout.service_logs(&job.service);
    let _ = std::fs::create_dir_all(&logs);
    let net = ctx.names.net();
    let netns = starphleet_runtime::net::create_container_netns(
        &record.netns,
        &record.host_if,
        &net.bridge,
        record.ip,
        net.prefix_len(),
        net.gateway(),
    )
    .await
    .map_err(|source| DeployError::Network {
        netns: record.netns.clone(),
        source,
    })?;
    let mut env = with_defaults(env);
    if let Some(port) = *private {
        env = crate::env::merge(&[&env, &[("PORT".to_string(), port.to_string())]]);
    }
    let hostname = crate::names::hostname(&job.service);
    let (mut args, mut binds) = (Vec::new(), Vec::new());
    if layer.base.is_some() {
        // A base has no host libraries: the init runs on the ship's own, bound beside it.
        let libs = host_libraries();
        if let Some(loader) = libs.iter().find(|l| is_loader(l)) {
            args = vec![
                format!("{INIT_LIBS}/{}", file_name(loader)),
                "--library-path".into(),
                INIT_LIBS.into(),
            ];
        }
        binds.extend(libs.iter().map(|l| Bind {
            source: l.clone(),
            destination: format!("{INIT_LIBS}/{}", file_name(l)),
            readonly: true,
        }));
    }
    args.extend([
        INIT_PATH.into(),
        "init".into(),
        "/bin/sh".into(),
        "-c".into(),
        start.to_string(),
    ]);
    binds.push(Bind {
        source: ctx.opts.self_exe.clone(),
        destination: INIT_PATH.into(),
        readonly: true,
    });
    let spec = ContainerSpec {
        id: record.id.clone(),
        bundle_dir: record.bundle.clone(),
        layers: vec![layer.dir.clone()],
        args,
        env,
        cwd: "/app".into(),
        user: APP_USER,
        hostname: hostname.clone(),
        netns: Some(netns),
        hosts: vec![(record.ip.into(), hostname)],
        binds,
        cgroups_path: ctx.names.cgroup(&record.id),
        stdout: record.stdout.clone(),
        stderr: record.stderr.clone(),
        readonly_app: false,
        limits: *limits,
        base: layer.base.clone(),
    };
    let runtime = ctx.runtime.clone();
    let pid = tokio::task::spawn_blocking(move || runtime.start(&spec))
        .await?
        .map_err(|source| DeployError::Start {
            container: record.id.clone(),
            source,
        })?;
    info!(service = %job.service, container = %record.id, ip = %record.ip, pid, "container started");
    let started = ContainerRecord {
        pid,
        ..record.clone()
    };
    // The bundle says what the container is, so a ship that lost its state can adopt it.
    let label = crate::state::ContainerLabel {
        ship: ctx.names.ship_id().to_string(),
        service: job.service.clone(),
        key: job.version.key.clone(),
        app_commit: job.version.app_commit.clone(),
        order_revision: job.version.order.revision.clone(),
        publish: publish_records(&job.version.order),
        drain_timeout_ms: drain_ms(&job.version.order),
        container: started.clone(),
    };
    let label_path = record.bundle.join(crate::state::LABEL_FILE);
    let bytes = serde_json::to_vec(&label).expect("labels serialize");
    if let Err(e) = crate::state::write_atomic(&label_path, &bytes) {
        tracing::warn!(file = %label_path.display(), "cannot label the container (it would not be adopted without state.json): {e}");
    }
    ctx.telemetry.watch_container(
        &job.service,
        &version_label(&job.version.app_commit, &job.version.order.revision),
        &started,
    );
    Ok(pid)
}

/// Lines of a failed container's output kept in reports.
const TAIL_LINES: usize = 20;

/// The last lines a container printed, for error reports.
pub(crate) fn tail_output(c: &ContainerRecord) -> String {
    let mut out = String::new();
    for (name, path) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
        let text = read_tail(path);
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

/// At most the last 64 KiB of a file: enough for the last lines, whatever the file's size.
fn read_tail(path: &PathBuf) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX && f.seek(SeekFrom::Start(len - MAX)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if len > MAX {
        // The first line is probably cut.
        text.split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::port_notes;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_app_port_other_than_the_orders_is_named_in_the_build_log() {
        let notes = port_notes(&env(&[("PORT", "3001")]), Some(3000));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("PORT=3001"), "{notes:?}");
        assert!(notes[0].contains("PORT=3000"), "{notes:?}");
    }

    #[test]
    fn the_same_port_or_none_says_nothing() {
        assert!(port_notes(&env(&[("PORT", "3000")]), Some(3000)).is_empty());
        assert!(port_notes(&env(&[("OTHER", "1")]), Some(3000)).is_empty());
        assert!(port_notes(&env(&[("PORT", "3001")]), None).is_empty());
    }
}
