//! The control plane: follows HQ, reconciles services, keeps the proxy programmed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use starphleet_build::Builder;
use starphleet_git::{Git, SshIdentity};
use starphleet_orders::{GitSource, Headquarters, Order};
use starphleet_proxy::{ProxyClient, Route, RouteTable, Upstream};
use starphleet_runtime::Runtime;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::deploy::{self, Plan};
use crate::env;
use crate::layout::Layout;
use crate::state::{now_ms, ShipState};

/// How a ship runs.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    /// The state dir.
    pub state_dir: PathBuf,
    /// HQ git URL, optionally `#ref`.
    pub headquarters: String,
    /// TCP address of the admin endpoint (besides the socket in the state dir); `None` = socket only.
    pub admin: Option<SocketAddr>,
    /// OCI runtime binary (`runc`, `crun`, `youki`).
    pub runtime: String,
    /// How often HQ and app refs are polled; `None` = `STARPHLEET_POLL_INTERVAL` in HQ's `.starphleet`, else 2 s.
    pub poll_interval: Option<Duration>,
    /// The ship's name, shown in 404 pages and status.
    pub name: String,
    /// The `starphleet` executable: started as `<exe> proxy` for the data plane, and bound into containers as their init.
    pub self_exe: PathBuf,
}

/// How often HQ and app refs are polled unless configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The ship's network: one bridge and one /24 derived from the ship id.
#[derive(Debug, Clone)]
pub struct NetPlan {
    /// Bridge name.
    pub bridge: String,
    /// First three octets of the subnet.
    pub prefix: [u8; 3],
}

impl NetPlan {
    /// The network plan of ship `id` (6 hex digits).
    pub fn for_ship(id: &str) -> Self {
        let n = u32::from_str_radix(id, 16).unwrap_or(0);
        NetPlan {
            bridge: format!("spb-{id}"),
            prefix: [10, 200 + (n >> 8) as u8 % 50, n as u8],
        }
    }
    /// The bridge's (gateway) address.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 1)
    }
    /// Host address `n` in the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, n)
    }
}

/// What the ship knows but does not persist: the last HQ it loaded and what is in flight.
/// When both are needed, lock `Ship::state` before `Ship::live`.
#[derive(Default)]
pub(crate) struct Live {
    pub hq_commit: Option<String>,
    pub hq: Option<Headquarters>,
    pub hq_error: Option<String>,
    pub env_errors: Vec<String>,
    pub deploying: HashMap<String, InFlight>,
    pub unreachable: BTreeMap<String, String>,
    /// Log forwarders named in `.starphleet`, and the problem with that setting, if any.
    pub forwarders: Vec<starphleet_telemetry::Forwarder>,
    pub forward_error: Option<String>,
}

/// A deploy (or retirement) under way for one service.
pub(crate) struct InFlight {
    /// The version it is deploying; `None` for a retirement.
    pub key: Option<String>,
    /// Set when a newer version supersedes it; the pipeline stops at its next step.
    pub cancel: Arc<AtomicBool>,
}

/// A running ship.
pub struct Ship {
    pub(crate) opts: ShipOptions,
    pub(crate) layout: Layout,
    pub(crate) id: String,
    pub(crate) net: NetPlan,
    pub(crate) git: Git,
    pub(crate) runtime: Runtime,
    pub(crate) builder: Builder,
    pub(crate) proxy: ProxyClient,
    pub(crate) state: Mutex<ShipState>,
    pub(crate) live: Mutex<Live>,
    pub(crate) wake: Notify,
    pub(crate) observer: crate::observe::Observer,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Reads (or creates) the ship id: 6 hex digits unique to this state dir.
pub fn ship_id(layout: &Layout) -> Result<String> {
    let path = layout.ship_id_file();
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
    }
    let mut bytes = [0u8; 3];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let id = hex::encode(bytes);
    std::fs::create_dir_all(layout.root())?;
    crate::state::write_atomic(&path, id.as_bytes())?;
    Ok(id)
}

/// Splits `URL#ref`.
pub fn split_source(url: &str) -> GitSource {
    match url.rsplit_once('#') {
        Some((u, r)) if !r.is_empty() => GitSource {
            url: u.to_string(),
            reference: Some(r.to_string()),
        },
        _ => GitSource {
            url: url.to_string(),
            reference: None,
        },
    }
}

impl Ship {
    /// Prepares a ship: state dir, ids, tools. Fails with a clear message when something it needs is missing.
    pub fn open(opts: ShipOptions) -> Result<Arc<Ship>> {
        let layout = Layout::new(&opts.state_dir);
        std::fs::create_dir_all(layout.root())
            .with_context(|| format!("creating state dir {}", layout.root().display()))?;
        let id = ship_id(&layout)?;
        let runtime = Runtime::new(opts.runtime.clone(), Layout::runtime_root(&id));
        runtime.check()?;
        let ssh = match starphleet_git::check_ssh_key(&layout.ssh_dir()) {
            Ok(Some(key)) => {
                info!(key = %key.display(), "using ssh deploy key");
                Some(SshIdentity {
                    key,
                    known_hosts: layout.ssh_dir().join("known_hosts"),
                })
            }
            Ok(None) => None,
            Err(problem) => {
                warn!(
                    "ssh deploy key unusable, private repositories over ssh will fail: {problem}"
                );
                None
            }
        };
        let state = ShipState::load(&layout.state_file())?;
        let builder = Builder::new(layout.builds(), runtime.clone());
        let proxy = ProxyClient::new(layout.proxy_socket());
        let observer = crate::observe::Observer::open(&layout, &opts.name).with_context(|| {
            format!("opening the log store in {}", layout.log_store().display())
        })?;
        Ok(Arc::new(Ship {
            observer,
            net: NetPlan::for_ship(&id),
            git: Git::new(ssh),
            runtime,
            builder,
            proxy,
            state: Mutex::new(state),
            live: Mutex::new(Live::default()),
            wake: Notify::new(),
            locks: Mutex::new(HashMap::new()),
            layout,
            id,
            opts,
        }))
    }

    /// The ship id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Saves the state file; failures are logged, never fatal, since the old file stays valid.
    pub(crate) fn save(&self, state: &ShipState) {
        if let Err(e) = state.save(&self.layout.state_file()) {
            error!("cannot save ship state: {e:#}");
        }
    }

    /// Runs the control plane until SIGTERM/SIGINT. Containers and the proxy keep running after it.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        crate::state::write_atomic(
            &self.layout.ship_pid_file(),
            std::process::id().to_string().as_bytes(),
        )?;
        starphleet_runtime::net::ensure_bridge(&self.net.bridge, self.net.gateway(), 24)
            .await
            .with_context(|| format!("creating the ship's bridge {}", self.net.bridge))?;
        self.ensure_proxy().await?;
        deploy::adopt(&self).await;
        let admin = crate::admin::serve(self.clone()).await?;
        info!(
            ship = %self.opts.name,
            id = %self.id,
            headquarters = %self.opts.headquarters,
            "ship started"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            self.clone().tick().await;
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval()) => {}
                _ = self.wake.notified() => {}
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        admin.abort();
        let _ = std::fs::remove_file(self.layout.ship_pid_file());
        info!("ship control plane stopped; services and proxy keep running");
        Ok(())
    }

    /// The poll interval in force: the command line, else HQ's `STARPHLEET_POLL_INTERVAL`, else 2 s.
    pub fn poll_interval(&self) -> Duration {
        if let Some(d) = self.opts.poll_interval {
            return d;
        }
        let live = self.live.lock().unwrap();
        live.hq
            .as_ref()
            .and_then(|hq| {
                hq.settings
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "STARPHLEET_POLL_INTERVAL")
            })
            .and_then(|(_, v)| starphleet_orders::parse_duration(v))
            .unwrap_or(DEFAULT_POLL_INTERVAL)
    }

    /// Starts the data-plane proxy unless one already answers on the state dir's socket.
    pub(crate) async fn ensure_proxy(&self) -> Result<()> {
        if self.proxy.is_running().await {
            return Ok(());
        }
        std::fs::create_dir_all(self.layout.logs())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.logs().join("proxy.log"))?;
        let mut cmd = std::process::Command::new(&self.opts.self_exe);
        cmd.arg("proxy")
            .arg("--state-dir")
            .arg(self.layout.root())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session, so signals to the ship (or its terminal) never reach the proxy.
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                libc_setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the proxy {}", self.opts.self_exe.display()))?;
        let pid = child.id();
        // Reap it if it exits while we live; after we exit, init does.
        std::thread::spawn(move || child.wait());
        for _ in 0..200 {
            if self.proxy.is_running().await {
                crate::state::write_atomic(
                    &self.layout.proxy_pid_file(),
                    pid.to_string().as_bytes(),
                )?;
                info!(pid, "proxy started");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "the proxy did not come up within 5s; see {}",
            self.layout.logs().join("proxy.log").display()
        )
    }

    /// One reconcile pass: follow HQ, start deploys, retire removed services, program the proxy.
    async fn tick(self: Arc<Self>) {
        if let Err(e) = self.refresh_hq().await {
            let msg = format!("{e:#}");
            let mut live = self.live.lock().unwrap();
            if live.hq_error.as_deref() != Some(msg.as_str()) {
                error!("cannot follow headquarters, everything keeps running as it is: {msg}");
            }
            live.hq_error = Some(msg);
        } else {
            self.live.lock().unwrap().hq_error = None;
            self.clone().reconcile().await;
        }
        deploy::supervise(&self).await;
        if let Err(e) = self.sync_routes().await {
            warn!("cannot program the proxy: {e:#}");
        }
    }

    async fn refresh_hq(&self) -> Result<()> {
        let source = split_source(&self.opts.headquarters);
        let git = self.git.clone();
        let dir = self.layout.hq();
        let known = self.live.lock().unwrap().hq_commit.clone();
        let loaded =
            tokio::task::spawn_blocking(move || -> Result<Option<(String, Headquarters)>> {
                let commit = git.resolve(&source.url, source.reference.as_deref())?;
                if known.as_deref() == Some(commit.as_str()) {
                    return Ok(None);
                }
                git.checkout(&source.url, &dir, &commit)?;
                Ok(Some((
                    commit.clone(),
                    starphleet_orders::load_headquarters(&dir),
                )))
            })
            .await??;
        if let Some((commit, hq)) = loaded {
            if !hq.errors.is_empty() {
                error!(
                    "headquarters {} has errors; the orders they affect keep their last good version:\n{}",
                    &commit[..12.min(commit.len())],
                    hq.render_errors()
                );
            }
            info!(commit = %commit, orders = hq.orders.len(), broken = hq.broken.len(), "headquarters loaded");
            // Lock order everywhere: state, then live.
            let mut state = self.state.lock().unwrap();
            // An HQ change is the operator's cue to try failed versions again.
            for svc in state.services.values_mut() {
                svc.failed_key = None;
            }
            let mut live = self.live.lock().unwrap();
            live.hq_commit = Some(commit);
            // A broken `.starphleet` keeps the forwarders it had.
            if !hq.settings_broken() {
                self.reforward(&mut live, &hq.settings);
            }
            live.hq = Some(hq);
        }
        Ok(())
    }

    async fn reconcile(self: Arc<Self>) {
        let (orders, settings, broken): (Vec<Order>, Vec<(String, String)>, BTreeSet<String>) = {
            let live = self.live.lock().unwrap();
            let Some(hq) = &live.hq else { return };
            (
                hq.orders.clone(),
                hq.settings.clone(),
                hq.broken.iter().map(|b| b.service.clone()).collect(),
            )
        };
        let (ship_env, env_errors) = env::read_env_dir(&self.layout.env_dir());
        self.live.lock().unwrap().env_errors = env_errors.iter().map(|d| d.to_string()).collect();

        // Resolve each distinct app source once per pass.
        let mut resolved: HashMap<(String, Option<String>), Result<String, String>> =
            HashMap::new();
        for order in &orders {
            let src = &order.autodeploy;
            let k = (src.url.clone(), src.reference.clone());
            if resolved.contains_key(&k) {
                continue;
            }
            let git = self.git.clone();
            let (u, r) = k.clone();
            let res = tokio::task::spawn_blocking(move || git.resolve(&u, r.as_deref()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            resolved.insert(k, res);
        }

        for order in orders {
            let k = (
                order.autodeploy.url.clone(),
                order.autodeploy.reference.clone(),
            );
            let app_commit = match &resolved[&k] {
                Ok(c) => c.clone(),
                Err(e) => {
                    let msg = format!("cannot reach {}: {e}", order.autodeploy.url);
                    let mut live = self.live.lock().unwrap();
                    if live.unreachable.get(&order.service) != Some(&msg) {
                        warn!(service = %order.service, "{msg}; it keeps its current version");
                        live.unreachable.insert(order.service.clone(), msg);
                    }
                    continue;
                }
            };
            self.live.lock().unwrap().unreachable.remove(&order.service);
            let order_env = env::merge(&[&settings, &ship_env, &order.env]);
            let key = env::version_key(&app_commit, &order.revision, &order_env);
            let fresh_build = {
                let state = self.state.lock().unwrap();
                let s = state.services.get(&order.service);
                let redeploy = s.map(|s| s.redeploy_requested).unwrap_or(false);
                let up_to_date = s
                    .and_then(|s| s.current.as_ref())
                    .map(|v| {
                        v.key == key
                            && v.containers.len() as u32 >= order.instances.unwrap_or(1).max(1)
                    })
                    .unwrap_or(false);
                let failed = s
                    .map(|s| s.failed_key.as_deref() == Some(&key))
                    .unwrap_or(false);
                let crashed = s
                    .and_then(|s| s.current.as_ref())
                    .map(|v| v.key == key)
                    .unwrap_or(false)
                    && !up_to_date;
                let backing_off = crashed && s.map(|s| now_ms() < s.restart_at_ms).unwrap_or(false);
                if !redeploy && (up_to_date || failed || backing_off) {
                    continue;
                }
                redeploy
            };
            let cancel = {
                let mut live = self.live.lock().unwrap();
                if let Some(running) = live.deploying.get(&order.service) {
                    if running.key.is_some()
                        && running.key.as_deref() != Some(key.as_str())
                        && !running.cancel.swap(true, Ordering::SeqCst)
                    {
                        info!(service = %order.service, superseded = ?running.key, by = %key, "a newer version supersedes the deploy in progress");
                    }
                    continue;
                }
                let cancel = Arc::new(AtomicBool::new(false));
                live.deploying.insert(
                    order.service.clone(),
                    InFlight {
                        key: Some(key.clone()),
                        cancel: cancel.clone(),
                    },
                );
                cancel
            };
            if fresh_build {
                let mut state = self.state.lock().unwrap();
                if let Some(s) = state.services.get_mut(&order.service) {
                    s.redeploy_requested = false;
                }
                self.save(&state);
            }
            let plan = Plan {
                service: order.service.clone(),
                order,
                app_commit,
                key,
                env: order_env,
                cancel,
                fresh_build,
            };
            tokio::spawn(deploy::deploy(self.clone(), plan));
        }

        let desired: BTreeSet<String> = {
            let live = self.live.lock().unwrap();
            live.hq
                .as_ref()
                .map(|hq| hq.orders.iter().map(|o| o.service.clone()).collect())
                .unwrap_or_default()
        };
        let retire: Vec<String> = {
            let state = self.state.lock().unwrap();
            let live = self.live.lock().unwrap();
            state
                .services
                .keys()
                .filter(|s| {
                    !desired.contains(*s)
                        && !broken.contains(*s)
                        && !live.deploying.contains_key(*s)
                })
                .cloned()
                .collect()
        };
        for service in retire {
            self.live.lock().unwrap().deploying.insert(
                service.clone(),
                InFlight {
                    key: None,
                    cancel: Arc::new(AtomicBool::new(false)),
                },
            );
            tokio::spawn(deploy::retire(self.clone(), service));
        }
    }

    /// The route table the state calls for.
    pub(crate) fn desired_table(&self) -> RouteTable {
        let state = self.state.lock().unwrap();
        let mut ports: BTreeMap<u16, Vec<Route>> = BTreeMap::new();
        for (service, s) in &state.services {
            let Some(v) = &s.current else { continue };
            for p in &v.publish {
                let routes = ports.entry(p.public).or_default();
                if routes.iter().any(|r| r.prefix == p.url) {
                    continue;
                }
                let upstreams = v
                    .containers
                    .iter()
                    .filter(|c| c.pid != 0 && crate::layout::process_alive(c.pid))
                    .map(|c| Upstream {
                        addr: SocketAddr::new(c.ip.into(), p.private),
                        version: crate::observe::version_label(&v.app_commit, &v.order_revision),
                        container: c.id.clone(),
                    })
                    .collect();
                routes.push(Route {
                    prefix: p.url.clone(),
                    service: service.clone(),
                    upstreams,
                    retry_after: Some(2),
                });
            }
        }
        RouteTable {
            ship: self.opts.name.clone(),
            generation: 0,
            ports,
        }
    }

    /// Pushes the desired table to the proxy when it differs from what the proxy has.
    pub(crate) async fn sync_routes(&self) -> Result<()> {
        self.ensure_proxy().await?;
        let table = self.desired_table();
        let status = self.proxy.status().await?;
        if status.table != table {
            self.proxy.set_routes(&table).await?;
            for (port, err) in &status.bind_errors {
                warn!(port, "proxy cannot listen: {err}");
            }
        }
        Ok(())
    }

    /// Serialises work on one shared thing (a repository mirror, a build layer) across deploys.
    pub(crate) async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Starts the log forwarders `.starphleet` names, replacing others; keeps them if unchanged.
    fn reforward(&self, live: &mut Live, settings: &[(String, String)]) {
        match starphleet_telemetry::ForwardTarget::from_settings(settings) {
            Ok(targets) => {
                live.forward_error = None;
                let current: Vec<_> = live.forwarders.iter().map(|f| f.target().clone()).collect();
                if current != targets {
                    live.forwarders = targets
                        .into_iter()
                        .map(|t| {
                            info!(target = %t, "forwarding logs");
                            starphleet_telemetry::Forwarder::spawn(&self.observer.store, t)
                        })
                        .collect();
                }
            }
            Err(e) => {
                error!("log forwarding setting in .starphleet: {e}");
                live.forward_error = Some(format!(".starphleet: {e}"));
            }
        }
    }

    /// Asks the reconciler for an immediate pass.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The layout of this ship's state dir.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The directory for one service's logs.
    pub(crate) fn service_log_dir(&self, service: &str) -> PathBuf {
        self.layout.service_logs(&safe_name(service))
    }
}

/// A service name usable in file names and container ids (`team/api` → `team_api`).
pub fn safe_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn libc_setsid() {
    // SAFETY: setsid has no memory-safety preconditions; failure (already a leader) is harmless.
    unsafe {
        libc::setsid();
    }
}
