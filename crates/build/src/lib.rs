//! Builds app versions into cached read-only layers in build containers.
//!
//! A layer is a directory holding `app/`: the app's tree at one commit after its build
//! steps ran in build containers with the tree mounted at `/app`, and `.starphleet/build.json`
//! saying how it was built and how it starts. The steps come from [`plan`]: the app's
//! `Starphleet` file, else what its tree is (Node.js, Python, ...), or Heroku buildpacks.
//! Layers are keyed by (app commit, what the app declares, the toolchains or base it is
//! built with), written under a temporary name and renamed into place only when every step
//! succeeded, so a layer that exists is complete and is reused across ship restarts.
//!
//! Next to the layer dir (`<state>/builds`) the builder keeps `<state>/cache/<app>/<kind>`
//! (package manager caches, mounted read-write into every build of that app),
//! `<state>/bases/<sha256>` (unpacked base tarballs) and `<state>/buildpacks` (fetched
//! buildpacks).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starphleet_git::Git;
use starphleet_runtime::{Bind, ContainerSpec, Limits, NetError, Runtime, RuntimeError};

pub mod base;
mod buildpack;
mod deps;
pub mod plan;

pub use base::{ensure_base, Base, BaseError};
pub use plan::{
    plan, AppKind, BuildPlan, CacheMount, Declared, Deps, PlanError, Step, StepRole, Tools,
    STARPHLEET_IN_CONTAINER,
};

/// The uid and gid apps run as inside their containers.
pub const APP_USER: (u32, u32) = (9000, 9000);

/// How long all build lines of one build may run together, unless the request says otherwise.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How much output of one build the build log keeps, unless the request says otherwise.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 16 << 20;

/// Size of `/tmp` in build containers: package managers unpack and compile there, so it
/// is larger than a service's (the tmpfs only takes memory for what is written).
pub const BUILD_TMP_BYTES: u64 = 1 << 30;

/// How long downloading a base tarball may take.
pub const BASE_FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Bumped when the way layers are built changes, so old layers are not reused.
const LAYER_FORMAT: &str = "layer-v2";

/// Where a layer says how it was built, relative to the layer dir.
const META_FILE: &str = ".starphleet/build.json";

/// Room kept in the log budget for the line saying how much was cut.
const CUT_NOTE_RESERVE: u64 = 256;

/// Why a build produced no layer.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The app's tree could not be written into the staging dir.
    #[error("exporting the app's tree at {commit} into {}: {cause}", dir.display())]
    Export {
        /// The commit being exported.
        commit: String,
        /// Where it was to go.
        dir: PathBuf,
        /// What the exporter reported.
        cause: std::io::Error,
    },
    /// Nothing says how to build or start the app, or its toolchain is missing.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The app's base could not be fetched or unpacked.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// A buildpack could not be fetched.
    #[error("fetching buildpack {buildpack}: {cause}")]
    BuildpackFetch {
        /// The buildpack, as named.
        buildpack: String,
        /// What git said.
        cause: starphleet_git::GitError,
    },
    /// A buildpack's `bin/detect` says it does not fit the app.
    #[error("buildpack {buildpack} does not fit this app: its bin/detect exited with code {code}; its output is in {}. Name another buildpack, or remove the buildpack line to let the ship detect the app", log.display())]
    BuildpackRejected {
        /// The buildpack.
        buildpack: String,
        /// The exit code of bin/detect.
        code: i32,
        /// The build log.
        log: PathBuf,
    },
    /// Buildpacks ran but nothing names a start command.
    #[error("no start command: the buildpacks' bin/release named no default web process; add a Procfile with `web: <command>` or a `start <command>` line in `Starphleet`")]
    NoStart,
    /// The request cannot be built as given; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// The build container's network namespace could not be made.
    #[error("setting up the network of build container {container}: {cause}")]
    Network {
        /// The build container.
        container: String,
        /// What the network setup said.
        cause: NetError,
    },
    /// A build line exited non-zero.
    #[error("build step `{line}` exited with code {code}{}; its output is in {}", exit_hint(*code), log.display())]
    StepFailed {
        /// The build line.
        line: String,
        /// Its exit code (128 + N when killed by signal N).
        code: i32,
        /// The build log holding its output.
        log: PathBuf,
    },
    /// The build lines together ran past the build timeout; the build container was killed.
    #[error("build step `{line}` was still running when the build timeout of {} ran out; it was killed. Make the build faster or raise its timeout", humantime::format_duration(*after))]
    TimedOut {
        /// The build line that was running.
        line: String,
        /// The build timeout.
        after: Duration,
    },
    /// The build container could not be run.
    #[error("running build step `{line}`: {cause}")]
    Runtime {
        /// The build line.
        line: String,
        /// What the runtime reported.
        cause: RuntimeError,
    },
    /// A file operation of the build cache or build log failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// What was attempted, e.g. "writing build log".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

/// What an exit code says beyond the number.
fn exit_hint(code: i32) -> String {
    match code {
        137 => " (killed by signal 9: out of memory, or killed)".to_string(),
        129..=192 => format!(" (killed by signal {})", code - 128),
        _ => String::new(),
    }
}

type Result<T> = std::result::Result<T, BuildError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |cause| BuildError::Io { what, path, cause }
}

/// A base root filesystem named by the app (`base SOURCE [--sha256 HEX]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseRef<'a> {
    /// `http(s)://…`, `file:///…`, or a path in the app's repository.
    pub source: &'a str,
    /// The tarball's sha256 (64 hex digits), checked when given.
    pub sha256: Option<&'a str>,
}

/// The build container's own network namespace on the ship's bridge (as a service's).
///
/// The ship allocates the address like a container's; the builder creates the namespace
/// before the first step and removes it after the last. Outbound NAT
/// ([`starphleet_runtime::net::ensure_outbound`]) lets it reach package registries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildNetwork {
    /// The named netns to create, unique per build.
    pub netns: String,
    /// The host end of its veth (at most 15 bytes).
    pub host_if: String,
    /// The ship's bridge.
    pub bridge: String,
    /// The build container's address.
    pub ip: Ipv4Addr,
    /// The bridge subnet's prefix length.
    pub prefix_len: u8,
    /// The bridge's address, the default route.
    pub gateway: Ipv4Addr,
}

/// What to build.
pub struct BuildRequest<'a> {
    /// Service name, for logs.
    pub service: &'a str,
    /// The app's cache name: its caches live in `<state>/cache/<app>/`. One path component,
    /// e.g. the service's file-safe name.
    pub app: &'a str,
    /// The app commit being built.
    pub commit: &'a str,
    /// What the app's `Starphleet` file declares (build lines, start, buildpacks).
    pub declared: &'a Declared,
    /// The toolchains on the ship ([`Tools::probe`]); an app with a base uses its base's.
    pub tools: &'a Tools,
    /// The app's base tarball, if it names one; `None` builds and runs on the host's `/usr`.
    pub base: Option<BaseRef<'a>>,
    /// The service's env (app `.env`, HQ, ship, order, merged): over the plan's build env,
    /// and, one file per variable, the buildpacks' ENV_DIR.
    pub env: &'a [(String, String)],
    /// Writes the app's tree at `commit` into the given directory.
    pub export: &'a dyn Fn(&Path) -> std::io::Result<()>,
    /// Fetches buildpacks.
    pub git: &'a Git,
    /// The build container's network; `None` shares the caller's network namespace.
    pub network: Option<&'a BuildNetwork>,
    /// Build output (announcements, then every line of every build step) is appended here.
    pub log: &'a Path,
    /// Unique container id for the build container.
    pub container_id: &'a str,
    /// Absolute cgroup path for the build container.
    pub cgroups_path: &'a str,
    /// Build again even if a layer for this commit and spec exists (`starphleet redeploy`).
    pub fresh: bool,
    /// How long the build steps together may run ([`DEFAULT_BUILD_TIMEOUT`]); past it the
    /// build container is killed and the build fails with [`BuildError::TimedOut`].
    pub timeout: Duration,
    /// How many bytes of this build's output the log keeps ([`DEFAULT_MAX_LOG_BYTES`]).
    /// Past it the first half and the last part are kept, with a line saying how much was cut
    /// between them; the last part reaches the log when the build ends.
    pub max_log_bytes: u64,
}

/// A finished, read-only build layer and how its service starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The cache key (see [`layer_key`]).
    pub key: String,
    /// The layer directory (contains `app/`), used as an overlay lower dir.
    pub dir: PathBuf,
    /// True when the layer came from the cache.
    pub cached: bool,
    /// The plan it was built from.
    pub plan: BuildPlan,
    /// The start command (`/bin/sh -c`, in `/app`).
    pub start: String,
    /// The unpacked base its containers run on (`ContainerSpec::base`); `None` is the host's.
    pub base: Option<PathBuf>,
    /// Buildpacks left `.profile.d/*.sh` scripts to source before starting.
    pub profile_d: bool,
}

impl Layer {
    /// The shell script a service container runs (`/bin/sh -c <script>`): the start command
    /// as the process itself, after sourcing `.profile.d` scripts when buildpacks left some.
    pub fn start_script(&self) -> String {
        if self.profile_d {
            format!(
                "for f in /app/.profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done; exec {}",
                self.start
            )
        } else {
            format!("exec {}", self.start)
        }
    }

    /// The env the service gets from its build (e.g. its virtualenv on `PATH`): the lowest
    /// layer, under the app's `.env`.
    pub fn run_env(&self) -> &[(String, String)] {
        &self.plan.run_env
    }
}

/// What a layer records about itself in [`META_FILE`].
#[derive(Serialize, Deserialize)]
struct LayerMeta {
    plan: BuildPlan,
    start: String,
    base: Option<PathBuf>,
    profile_d: bool,
}

/// The build cache: `<dir>/<key>/app`, with caches, bases and buildpacks beside `dir`.
#[derive(Debug, Clone)]
pub struct Builder {
    dir: PathBuf,
    caches: PathBuf,
    bases: PathBuf,
    buildpacks: PathBuf,
    runtime: Runtime,
}

/// The cache key of a build: the commit, what the app declares, and what it is built with
/// (the ship's toolchains, or its base).
pub fn layer_key(
    commit: &str,
    declared: &Declared,
    tools: &Tools,
    base: Option<BaseRef<'_>>,
) -> String {
    let mut h = Sha256::new();
    for part in [
        LAYER_FORMAT.to_string(),
        commit.to_string(),
        serde_json::to_string(declared).unwrap_or_default(),
        match base {
            Some(b) => format!("base {} {}", b.source, b.sha256.unwrap_or("")),
            None => tools.fingerprint(),
        },
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..24].to_string()
}

/// Removes a path (file or dir) when dropped, if it is still there.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Later layers win; a key keeps the place of its first appearance.
fn merge_env(layers: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in layers.iter().flat_map(|l| l.iter()) {
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// Runs `f` on a fresh thread with its own single-threaded tokio runtime, so the netlink
/// calls work whether or not the caller is inside a runtime.
fn block_on<T: Send, F: std::future::Future<Output = T>>(
    f: impl FnOnce() -> F + Send,
) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(f()))
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A build container's network namespace, removed when dropped.
struct NetGuard<'a>(&'a BuildNetwork);

impl<'a> NetGuard<'a> {
    fn create(net: &'a BuildNetwork, container: &str) -> Result<(Self, PathBuf)> {
        let made = block_on(|| {
            starphleet_runtime::net::create_container_netns(
                &net.netns,
                &net.host_if,
                &net.bridge,
                net.ip,
                net.prefix_len,
                net.gateway,
            )
        });
        let failed = |cause| BuildError::Network {
            container: container.to_string(),
            cause,
        };
        let path = made
            .map_err(|e| {
                failed(NetError::Io {
                    what: "starting a runtime for netlink".into(),
                    cause: e,
                })
            })?
            .map_err(failed)?;
        Ok((NetGuard(net), path))
    }
}

impl Drop for NetGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = starphleet_runtime::net::delete_netns(&self.0.netns) {
            tracing::warn!(netns = %self.0.netns, "removing a build netns: {e}");
        }
        // The veth dies with the namespace; this only catches a half-made one.
        let host_if = self.0.host_if.clone();
        let _ = block_on(|| async move { starphleet_runtime::net::delete_link(&host_if).await });
    }
}

impl Builder {
    /// A builder keeping layers under `dir` (e.g. `<state>/builds`) and caches, bases and
    /// buildpacks beside it, running build containers with `runtime`.
    pub fn new(dir: impl Into<PathBuf>, runtime: Runtime) -> Self {
        let dir = dir.into();
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        Builder {
            caches: parent.join("cache"),
            bases: parent.join("bases"),
            buildpacks: parent.join("buildpacks"),
            dir,
            runtime,
        }
    }

    /// The dir holding the caches of `app`: `<state>/cache/<app>`.
    pub fn cache_dir(&self, app: &str) -> PathBuf {
        self.caches.join(app)
    }

    /// Returns the cached layer for `req`, or builds it.
    pub fn build(&self, req: &BuildRequest<'_>) -> Result<Layer> {
        let app_ok =
            !req.app.is_empty() && req.app != "." && req.app != ".." && !req.app.contains('/');
        if !app_ok {
            return Err(BuildError::InvalidRequest(format!(
                "build request for {}: app {:?} must be one path component (it names the app's cache dir)",
                req.service, req.app
            )));
        }
        let mut key = layer_key(req.commit, req.declared, req.tools, req.base);
        if req.fresh {
            // A new key, because the running version may still use the cached layer as its root.
            key = format!("{key}-{}", now_ms());
        }
        let dir = self.dir.join(&key);
        if dir.join("app").is_dir() {
            let meta = read_meta(&dir)?;
            return Ok(layer(key, dir, true, meta));
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating build cache", &self.dir))?;
        // Unique per build container, so concurrent builds never share a staging dir.
        let staging = self.dir.join(format!(".{key}.{}.tmp", req.container_id));
        let _ = std::fs::remove_dir_all(&staging);
        let meta = match self.build_into(req, &staging) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        match std::fs::rename(&staging, &dir) {
            Ok(()) => {}
            // Another build of the same key won the race: its layer is as good as ours.
            Err(_) if dir.join("app").is_dir() => {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e) => return Err(io_err("publishing layer", &dir)(e)),
        }
        Ok(layer(key, dir, false, meta))
    }

    fn build_into(&self, req: &BuildRequest<'_>, staging: &Path) -> Result<LayerMeta> {
        let app = staging.join("app");
        std::fs::create_dir_all(&app).map_err(io_err("creating", &app))?;
        (req.export)(&app).map_err(|cause| BuildError::Export {
            commit: req.commit.to_string(),
            dir: app.clone(),
            cause,
        })?;
        chown_tree(&app, APP_USER)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.log)
            .map_err(io_err("opening build log", req.log))?;
        let mut log = CappedLog::new(file, req.max_log_bytes);
        let result = self.plan_and_run(req, staging, &app, &mut log);
        // The kept end of the output goes in whatever happened: it explains a failure.
        let written = log.finish().map_err(io_err("writing build log", req.log));
        let meta = result?;
        written?;
        let meta_path = staging.join(META_FILE);
        if let Some(parent) = meta_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| io_err("serializing", &meta_path)(e.into()))?;
        std::fs::write(&meta_path, json).map_err(io_err("writing", &meta_path))?;
        Ok(meta)
    }

    fn plan_and_run(
        &self,
        req: &BuildRequest<'_>,
        staging: &Path,
        app: &Path,
        log: &mut CappedLog,
    ) -> Result<LayerMeta> {
        let say = |log: &mut CappedLog, line: &str| {
            log.write(format!("[{}] {line}\n", req.service).as_bytes())
        };
        let base = match req.base {
            Some(b) => {
                let base = ensure_base(&self.bases, b.source, b.sha256, app, BASE_FETCH_TIMEOUT)?;
                say(
                    log,
                    &format!(
                        "-----> base {} (sha256 {}{})",
                        b.source,
                        &base.sha256[..12],
                        if base.fetched { ", fetched" } else { "" }
                    ),
                );
                Some(base.dir)
            }
            None => None,
        };
        let base_tools;
        let tools = match &base {
            Some(dir) => {
                base_tools = Tools::probe_root(dir);
                &base_tools
            }
            None => req.tools,
        };
        let plan = plan::plan(app, req.declared, tools)?;
        for line in &plan.announce {
            say(log, line);
        }
        for warning in &plan.warnings {
            say(log, &format!("-----> warning: {warning}"));
        }

        let mut binds = vec![Bind {
            source: app.to_path_buf(),
            destination: "/app".into(),
            readonly: false,
        }];
        let cache_root = self.cache_dir(req.app);
        for cache in &plan.caches {
            let dir = cache_root.join(&cache.name);
            std::fs::create_dir_all(&dir).map_err(io_err("creating cache", &dir))?;
            std::os::unix::fs::chown(&dir, Some(APP_USER.0), Some(APP_USER.1))
                .map_err(io_err("chown", &dir))?;
            binds.push(Bind {
                source: dir,
                destination: cache.destination(),
                readonly: false,
            });
        }
        let mut scratch = Vec::new();
        let out_dir = staging.with_extension("out");
        if !plan.buildpacks.is_empty() {
            for (i, source) in plan.buildpacks.iter().enumerate() {
                let fetched = buildpack::fetch(&self.buildpacks, req.git, source)?;
                say(
                    log,
                    &format!(
                        "-----> buildpack {}: {source} at {}",
                        i + 1,
                        &fetched.commit[..12.min(fetched.commit.len())]
                    ),
                );
                binds.push(Bind {
                    source: fetched.dir,
                    destination: format!("{}/{i}", plan::BUILDPACKS_MOUNT_ROOT),
                    readonly: true,
                });
            }
            let env_dir = staging.with_extension("env");
            scratch.push(RemoveOnDrop(env_dir.clone()));
            buildpack::write_env_dir(&env_dir, req.env)?;
            binds.push(Bind {
                source: env_dir,
                destination: plan::BUILDPACK_ENV_DIR.into(),
                readonly: true,
            });
            scratch.push(RemoveOnDrop(out_dir.clone()));
            std::fs::create_dir_all(&out_dir).map_err(io_err("creating", &out_dir))?;
            std::os::unix::fs::chown(&out_dir, Some(APP_USER.0), Some(APP_USER.1))
                .map_err(io_err("chown", &out_dir))?;
            binds.push(Bind {
                source: out_dir.clone(),
                destination: plan::BUILDPACK_OUT_DIR.into(),
                readonly: false,
            });
        }
        let source_version = [("SOURCE_VERSION".to_string(), req.commit.to_string())];
        let env = merge_env(&[&plan.build_env, &source_version, req.env]);

        let net = match req.network {
            Some(net) if !plan.steps.is_empty() => Some(NetGuard::create(net, req.container_id)?),
            _ => None,
        };
        let netns = net.as_ref().map(|(_, path)| path.clone());
        let ctx = StepContext {
            runtime: &self.runtime,
            req,
            staging,
            env: &env,
            binds: &binds,
            netns,
            base: base.clone(),
        };
        let saved = cache_root.join("deps");
        let deps = match &plan.deps {
            Some(d) => Some((
                d,
                deps::key(app, d, &plan.steps, base.as_deref())
                    .map_err(io_err("reading the dependency files of", app))?,
            )),
            None => None,
        };
        let reused = match &deps {
            Some((d, key)) if !req.fresh => {
                let restored = deps::restore(&saved, key, app, &d.dir)
                    .map_err(io_err("restoring saved dependencies into", app))?;
                if restored {
                    say(log, &format!(
                        "-----> {} unchanged since an earlier build: reusing its {}, skipping the install steps",
                        d.inputs.join(", "),
                        d.dir
                    ));
                }
                restored
            }
            _ => false,
        };
        let last_install = plan.steps.iter().rposition(|s| s.role == StepRole::Install);
        let mut release_web = None;
        let deadline = Instant::now().checked_add(req.timeout);
        for (step, s) in plan.steps.iter().enumerate() {
            if reused && s.role == StepRole::Install {
                say(
                    log,
                    &format!(
                        "build step {}/{}: {} (skipped: dependencies reused)",
                        step + 1,
                        plan.steps.len(),
                        s.command
                    ),
                );
                continue;
            }
            say(
                log,
                &format!(
                    "build step {}/{}: {}",
                    step + 1,
                    plan.steps.len(),
                    s.command
                ),
            );
            let mut output = Vec::new();
            let code = ctx.run(step, &s.command, deadline, log, &mut output)?;
            match s.role {
                StepRole::Detect { buildpack } if code != 0 => {
                    return Err(BuildError::BuildpackRejected {
                        buildpack: plan.buildpacks[buildpack].to_string(),
                        code,
                        log: req.log.to_path_buf(),
                    })
                }
                StepRole::Detect { .. } => {
                    let name = String::from_utf8_lossy(&output);
                    let name = name.lines().next().unwrap_or("").trim();
                    if !name.is_empty() {
                        say(log, &format!("-----> {name} app detected"));
                    }
                }
                _ if code != 0 => {
                    ctx.failed(log, &s.command, code);
                    return Err(BuildError::StepFailed {
                        line: s.command.clone(),
                        code,
                        log: req.log.to_path_buf(),
                    });
                }
                StepRole::Release { buildpack } => {
                    let file = out_dir.join(format!("release-{buildpack}.yml"));
                    let text = std::fs::read_to_string(&file).unwrap_or_default();
                    if let Some(web) = buildpack::release_web(&text) {
                        say(
                            log,
                            &format!("-----> default web process (bin/release): {web}"),
                        );
                        release_web = Some(web);
                    }
                }
                StepRole::Build | StepRole::Compile { .. } => {}
                StepRole::Install => {}
            }
            if let (Some((d, key)), Some(last)) = (&deps, last_install) {
                if step == last {
                    // Best effort: a build without a saved copy only installs again next time.
                    if let Err(e) = deps::save(&saved, key, app, &d.dir) {
                        say(
                            log,
                            &format!("-----> warning: saving {} for later builds: {e}", d.dir),
                        );
                    }
                }
            }
        }
        drop(net);
        let start = plan
            .start
            .clone()
            .or(release_web)
            .ok_or(BuildError::NoStart)?;
        let profile_d = app.join(".profile.d").is_dir();
        Ok(LayerMeta {
            plan,
            start,
            base,
            profile_d,
        })
    }
}

fn layer(key: String, dir: PathBuf, cached: bool, meta: LayerMeta) -> Layer {
    Layer {
        key,
        dir,
        cached,
        plan: meta.plan,
        start: meta.start,
        base: meta.base,
        profile_d: meta.profile_d,
    }
}

fn read_meta(dir: &Path) -> Result<LayerMeta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read(&path).map_err(io_err("reading the layer's build record", &path))?;
    serde_json::from_slice(&text).map_err(|e| {
        io_err(
            "reading the layer's build record (remove the layer dir to rebuild it)",
            &path,
        )(e.into())
    })
}

/// What every step of one build shares.
struct StepContext<'a> {
    runtime: &'a Runtime,
    req: &'a BuildRequest<'a>,
    staging: &'a Path,
    env: &'a [(String, String)],
    binds: &'a [Bind],
    netns: Option<PathBuf>,
    base: Option<PathBuf>,
}

impl StepContext<'_> {
    /// Runs one step in its own build container; its output goes to the log and `output`.
    fn run(
        &self,
        step: usize,
        line: &str,
        deadline: Option<Instant>,
        log: &mut CappedLog,
        output: &mut Vec<u8>,
    ) -> Result<i32> {
        let req = self.req;
        let bundle = self.staging.with_extension(format!("bundle{step}"));
        let spec = ContainerSpec {
            id: format!("{}-b{step}", req.container_id),
            bundle_dir: bundle.clone(),
            args: vec!["/bin/sh".into(), "-c".into(), line.to_string()],
            env: self.env.to_vec(),
            cwd: "/app".into(),
            user: APP_USER,
            hostname: "build".into(),
            netns: self.netns.clone(),
            binds: self.binds.to_vec(),
            cgroups_path: format!("{}-b{step}", req.cgroups_path),
            limits: Limits {
                tmp_bytes: Some(BUILD_TMP_BYTES),
                ..Limits::default()
            },
            base: self.base.clone(),
            ..Default::default()
        };
        // No deadline (a timeout beyond what Instant holds) means the full timeout each step.
        let left = deadline.map_or(req.timeout, |d| d.saturating_duration_since(Instant::now()));
        let code = self.run_spec(&spec, left, log, output);
        let _ = std::fs::remove_dir_all(&bundle);
        match code {
            Ok(code) => Ok(code),
            Err(RuntimeError::TimedOut { .. }) => {
                log.write(
                    format!(
                        "[{}] build step `{line}` killed: the build timeout of {} ran out\n",
                        req.service,
                        humantime::format_duration(req.timeout)
                    )
                    .as_bytes(),
                );
                Err(BuildError::TimedOut {
                    line: line.to_string(),
                    after: req.timeout,
                })
            }
            Err(cause) => Err(BuildError::Runtime {
                line: line.to_string(),
                cause,
            }),
        }
    }

    fn run_spec(
        &self,
        spec: &ContainerSpec,
        left: Duration,
        log: &mut CappedLog,
        output: &mut Vec<u8>,
    ) -> std::result::Result<i32, RuntimeError> {
        // Enough of a step's output to read a buildpack's name; the log has all of it.
        const KEEP: usize = 4096;
        self.runtime
            .run_to_completion_with_output(spec, left, &mut |chunk| {
                log.write(chunk);
                if output.len() < KEEP {
                    output.extend_from_slice(&chunk[..chunk.len().min(KEEP - output.len())]);
                }
            })
    }

    fn failed(&self, log: &mut CappedLog, line: &str, code: i32) {
        log.write(
            format!(
                "[{}] build step `{line}` exited with {code}{}\n",
                self.req.service,
                exit_hint(code)
            )
            .as_bytes(),
        );
    }
}
/// One build's share of the build log, at most `cap` bytes: the first half goes straight
/// to the file, the last part is held in memory (dropping what is older) and written by
/// [`finish`](Self::finish) after a line saying how much was cut.
struct CappedLog {
    file: File,
    cap: u64,
    head_left: u64,
    tail: VecDeque<u8>,
    tail_cap: usize,
    cut: u64,
    ends_with_newline: bool,
    error: Option<std::io::Error>,
}

impl CappedLog {
    fn new(file: File, cap: u64) -> Self {
        let budget = cap.saturating_sub(CUT_NOTE_RESERVE);
        let head = budget / 2;
        CappedLog {
            file,
            cap,
            head_left: head,
            tail: VecDeque::new(),
            tail_cap: usize::try_from(budget - head).unwrap_or(usize::MAX),
            cut: 0,
            ends_with_newline: true,
            error: None,
        }
    }

    /// Takes output; a failed write is kept and reported by `finish`.
    fn write(&mut self, data: &[u8]) {
        let direct = data
            .len()
            .min(usize::try_from(self.head_left).unwrap_or(usize::MAX));
        if direct > 0 {
            self.head_left -= direct as u64;
            self.put(&data[..direct]);
        }
        let rest = &data[direct..];
        if rest.is_empty() {
            return;
        }
        self.tail.extend(rest);
        let excess = self.tail.len().saturating_sub(self.tail_cap);
        if excess > 0 {
            self.tail.drain(..excess);
            self.cut += excess as u64;
        }
    }

    fn put(&mut self, data: &[u8]) {
        if let Some(&last) = data.last() {
            self.ends_with_newline = last == b'\n';
        }
        if self.error.is_none() {
            if let Err(e) = self.file.write_all(data) {
                self.error = Some(e);
            }
        }
    }

    /// Writes the held last part (after the cut note, if anything was cut).
    fn finish(&mut self) -> std::io::Result<()> {
        let mut tail: Vec<u8> = self.tail.drain(..).collect();
        if self.cut > 0 {
            // Start the kept part at a line boundary; the partial line counts as cut.
            if let Some(i) = tail.iter().position(|&b| b == b'\n') {
                self.cut += i as u64 + 1;
                tail.drain(..=i);
            }
            let note = format!(
                "{}[build log: {} bytes of output cut here; at most {} bytes are kept per build]\n",
                if self.ends_with_newline { "" } else { "\n" },
                self.cut,
                self.cap
            );
            if note.len() as u64 <= CUT_NOTE_RESERVE.min(self.cap) {
                self.put(note.as_bytes());
            }
        }
        self.put(&tail);
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io_err("chown", dir))?;
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            chown_tree(&entry.map_err(io_err("listing", dir))?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_commit_declarations_and_what_builds_it() {
        let lines = |l: &[&str]| Declared {
            build: l.iter().map(|s| s.to_string()).collect(),
            ..Declared::default()
        };
        let tools = Tools::default();
        let a = layer_key("c1", &lines(&["make"]), &tools, None);
        assert_eq!(a, layer_key("c1", &lines(&["make"]), &tools, None));
        assert_ne!(a, layer_key("c2", &lines(&["make"]), &tools, None));
        assert_ne!(a, layer_key("c1", &lines(&["make all"]), &tools, None));
        assert_ne!(
            layer_key("c1", &lines(&["a", "b"]), &tools, None),
            layer_key("c1", &lines(&["ab"]), &tools, None)
        );
        let with_node = Tools {
            node: true,
            ..Tools::default()
        };
        assert_ne!(a, layer_key("c1", &lines(&["make"]), &with_node, None));
        let base = BaseRef {
            source: "base.tar",
            sha256: None,
        };
        let on_base = layer_key("c1", &lines(&["make"]), &tools, Some(base));
        assert_ne!(a, on_base);
        // On a base the ship's toolchains do not matter.
        assert_eq!(
            on_base,
            layer_key("c1", &lines(&["make"]), &with_node, Some(base))
        );
    }

    #[test]
    fn env_layers_merge_in_order() {
        let a = [("A".to_string(), "1".to_string()), ("B".into(), "1".into())];
        let b = [("B".to_string(), "2".to_string()), ("C".into(), "2".into())];
        assert_eq!(
            merge_env(&[&a, &b]),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".into(), "2".into()),
                ("C".into(), "2".into())
            ]
        );
    }

    fn capped(cap: u64, writes: &[&[u8]]) -> (String, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        std::fs::write(&path, "before\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let mut log = CappedLog::new(file, cap);
        for w in writes {
            log.write(w);
        }
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        (text["before\n".len()..].to_string(), log.cut)
    }

    #[test]
    fn a_log_under_its_cap_is_kept_whole() {
        let (text, cut) = capped(4096, &[b"one\n", b"two\n"]);
        assert_eq!(text, "one\ntwo\n");
        assert_eq!(cut, 0);
    }

    #[test]
    fn a_log_over_its_cap_keeps_head_and_tail_and_says_how_much_was_cut() {
        let lines: Vec<String> = (1..=5000).map(|i| format!("line {i}\n")).collect();
        let total: usize = lines.iter().map(String::len).sum();
        let writes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let (text, cut) = capped(4096, &writes);
        assert!(text.len() <= 4096, "{} bytes", text.len());
        assert!(text.starts_with("line 1\nline 2\n"), "{text}");
        assert!(text.ends_with("line 4999\nline 5000\n"), "{text}");
        let note = format!(
            "[build log: {cut} bytes of output cut here; at most 4096 bytes are kept per build]\n"
        );
        assert!(text.contains(&note), "{text}");
        // Every byte is either kept or counted as cut, and the kept tail starts on a line;
        // a head that ends inside a line gets a newline before the note.
        let all = lines.concat();
        let head = ((4096 - CUT_NOTE_RESERVE) / 2) as usize;
        let inserted = usize::from(all.as_bytes()[head - 1] != b'\n');
        assert_eq!(text.len() - note.len() - inserted + cut as usize, total);
        assert!(text.contains(&format!("\n{note}")), "{text}");
        let after = &text[text.find(&note).unwrap() + note.len()..];
        assert!(after.starts_with("line "), "{after}");
    }
}
