//! A ship: opens its state dir and starts the tasks of the control plane, each owning one
//! thing — the followers (git), the owner (the state), the route programmer (the proxy), the
//! supervisor (container exits), and the admin endpoint (reads snapshots).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use starphleet_build::Builder;
use starphleet_git::{Git, SshIdentity};
use starphleet_orders::GitSource;
use starphleet_proxy::ProxyClient;
use starphleet_runtime::Runtime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::layout::Layout;
use crate::names::Names;
use crate::owner::{Channels, Core};
use crate::state::{now_ms, ShipState, StateError};
use crate::telemetry::{Telemetry, TelemetryError};

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
    /// Whether containers and builds may reach addresses beyond the ship (outbound NAT from
    /// its bridge); `--no-outbound` turns it off.
    pub outbound: bool,
    /// The phleet token file (`--token-file`); `None` = `<state-dir>/phleet.token`.
    pub token_file: Option<PathBuf>,
}

/// Why a ship cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// Something in the state dir could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    StateDir {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is unreadable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The log store could not be opened.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The ship's bridge could not be set up.
    #[error("creating the ship's bridge {bridge}: {source}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Why.
        source: starphleet_runtime::NetError,
    },
    /// The ship's nftables table (outbound NAT, or with `--no-outbound` the rule keeping
    /// containers in) could not be written.
    #[error("the nftables table of the ship's bridge {bridge}: {source}")]
    Outbound {
        /// The bridge.
        bridge: String,
        /// Why.
        source: starphleet_runtime::NetError,
    },
    /// The admin endpoint could not start.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The machine lacks something the ship needs; one line per problem.
    #[error("the ship cannot start here:\n  {}", .0.join("\n  "))]
    SelfCheck(Vec<String>),
    /// The phleet token cannot be used (or is missing where the admin endpoint needs one).
    #[error("{0}")]
    Token(#[from] starphleet_phleet::TokenError),
    /// `--admin` beyond loopback without a phleet token.
    #[error("--admin {addr} listens beyond loopback and needs the phleet token: {source}; every ship of the phleet holds the same token, so make it on one ship and copy it to the others")]
    NoToken {
        /// The admin address.
        addr: SocketAddr,
        /// Why the token is missing.
        source: starphleet_phleet::TokenError,
    },
    /// Signals could not be watched.
    #[error("watching for SIGTERM: {0}")]
    Signals(std::io::Error),
}

/// Reads (or creates) the ship id: 6 hex digits unique to this state dir.
pub fn ship_id(layout: &Layout) -> Result<String, ShipError> {
    let path = layout.ship_id_file();
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
    }
    let io = |what, source| ShipError::StateDir {
        what,
        path: path.clone(),
        source,
    };
    let mut bytes = [0u8; 3];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| io("making a ship id for", e))?;
    let id = hex::encode(bytes);
    crate::state::write_atomic(&path, id.as_bytes()).map_err(|e| io("writing", e))?;
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

/// A ship ready to run.
pub struct Ship {
    ctx: Arc<Ctx>,
    state: ShipState,
    token: Option<starphleet_phleet::Token>,
}

/// The phleet token: required (any problem is an error) when `--token-file` is given or the
/// admin endpoint listens beyond loopback; otherwise used when `<state-dir>/phleet.token` exists.
fn phleet_token(
    opts: &ShipOptions,
    layout: &Layout,
) -> Result<Option<starphleet_phleet::Token>, ShipError> {
    use starphleet_phleet::{is_loopback, load_token, TokenError};
    let path = opts
        .token_file
        .clone()
        .unwrap_or_else(|| layout.phleet_token());
    match load_token(&path) {
        Ok(token) => Ok(Some(token)),
        Err(source @ TokenError::Missing { .. }) if opts.token_file.is_none() => {
            match opts.admin.filter(|a| !is_loopback(a)) {
                Some(addr) => Err(ShipError::NoToken { addr, source }),
                None => Ok(None),
            }
        }
        Err(e) => Err(ShipError::Token(e)),
    }
}

impl Ship {
    /// Prepares a ship: state dir, ids, tools. Fails with a clear message when something it needs is missing.
    pub fn open(opts: ShipOptions) -> Result<Ship, ShipError> {
        let layout = Layout::new(&opts.state_dir);
        std::fs::create_dir_all(layout.root()).map_err(|source| ShipError::StateDir {
            what: "creating state dir",
            path: layout.root().to_path_buf(),
            source,
        })?;
        let id = ship_id(&layout)?;
        let token = phleet_token(&opts, &layout)?;
        let runtime = Runtime::new(opts.runtime.clone(), Layout::runtime_root(&id));
        let problems = crate::selfcheck::run(layout.root(), &runtime);
        if !problems.is_empty() {
            return Err(ShipError::SelfCheck(problems));
        }
        let files = crate::selfcheck::raise_fd_limit();
        info!(open_files = files, "open-file limit");
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
        let state = match ShipState::load_or_recover(&layout.state_file())? {
            crate::state::Loaded::State(state) => state,
            crate::state::Loaded::Lost { why } => {
                warn!("{why}; the ship recovers what runs from the runtime");
                ShipState::default()
            }
        };
        let builder = Builder::new(layout.builds(), runtime.clone());
        let proxy = ProxyClient::new(layout.proxy_socket());
        let telemetry = Telemetry::open(&layout, &opts.name)?;
        let ctx = Ctx::new(
            opts,
            layout,
            Names::new(&id),
            Git::new(ssh),
            runtime,
            builder,
            proxy,
            telemetry,
        );
        Ok(Ship {
            ctx: Arc::new(ctx),
            state,
            token,
        })
    }

    /// The ship id.
    pub fn id(&self) -> &str {
        self.ctx.names.ship_id()
    }

    /// Runs the control plane until SIGTERM/SIGINT. Containers and the proxy keep running after it.
    pub async fn run(self) -> Result<(), ShipError> {
        let ctx = self.ctx;
        let layout = &ctx.layout;
        crate::state::write_atomic(
            &layout.ship_pid_file(),
            std::process::id().to_string().as_bytes(),
        )
        .map_err(|source| ShipError::StateDir {
            what: "writing",
            path: layout.ship_pid_file(),
            source,
        })?;
        let net = ctx.names.net();
        starphleet_runtime::net::ensure_bridge(&net.bridge, net.gateway(), net.prefix_len())
            .await
            .map_err(|source| ShipError::Bridge {
                bridge: net.bridge.clone(),
                source,
            })?;
        let (bridge, id, outbound) = (
            net.bridge.clone(),
            ctx.names.ship_id().to_string(),
            ctx.opts.outbound,
        );
        let nat = tokio::task::spawn_blocking(move || {
            if outbound {
                starphleet_runtime::net::ensure_outbound(
                    &bridge,
                    net.network,
                    net.prefix_len(),
                    &id,
                )
            } else {
                starphleet_runtime::net::ensure_isolated(
                    &bridge,
                    net.network,
                    net.prefix_len(),
                    &id,
                )
            }
        })
        .await
        .map_err(|e| ShipError::StateDir {
            what: "writing the nftables table for",
            path: ctx.layout.root().to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        nat.map_err(|source| ShipError::Outbound {
            bridge: ctx.names.net().bridge,
            source,
        })?;

        let listed = list_containers(&ctx).await;
        let mut state = self.state;
        if state.services.is_empty() && !listed.is_empty() {
            state = recover(&ctx, &listed).await;
        }
        let mut core = Core::new(&ctx.opts.name, ctx.names.clone(), ctx.layout.clone(), state);
        adopt(&ctx, &mut core, &listed).await;

        let persister =
            crate::persist::Persister::spawn(ctx.layout.state_file()).map_err(|source| {
                ShipError::StateDir {
                    what: "starting the thread that writes",
                    path: ctx.layout.state_file(),
                    source,
                }
            })?;
        let stop = CancellationToken::new();
        let channels = Channels::new(&core);
        let (applied_tx, applied) = watch::channel(0u64);
        let (edge_tx, edge) = watch::channel(Arc::new(crate::routes::Edge::default()));
        let (edge_applied_tx, edge_applied) = watch::channel(0u64);
        let owner_tx = channels.tx.clone();
        let view = channels.view.clone();
        let routes = channels.routes.clone();
        let wake = Arc::new(Notify::new());

        let peers = starphleet_phleet::PeerClient::new(self.token.as_ref());
        let admin = crate::admin::serve(Arc::new(crate::admin::Admin::new(
            ctx.clone(),
            view.clone(),
            owner_tx.clone(),
            self.token,
            wake.clone(),
        )))
        .await?;
        let tasks = [
            tokio::spawn(crate::owner::run(
                ctx.clone(),
                core,
                channels,
                applied,
                persister,
                stop.clone(),
            )),
            tokio::spawn(crate::certs::run(
                ctx.clone(),
                routes.clone(),
                view.clone(),
                crate::certs::Publisher::new(edge_tx, edge_applied),
                stop.clone(),
            )),
            tokio::spawn(crate::routes::run(
                ctx.clone(),
                owner_tx.clone(),
                routes,
                applied_tx,
                edge,
                edge_applied_tx,
                stop.clone(),
            )),
            tokio::spawn(crate::supervise::run(
                owner_tx.clone(),
                ctx.names.clone(),
                view.clone(),
                stop.clone(),
            )),
            tokio::spawn(crate::rollout::run(
                ctx.clone(),
                owner_tx.clone(),
                view.clone(),
                peers,
                stop.clone(),
            )),
            tokio::spawn(crate::observe::run(
                ctx.clone(),
                owner_tx,
                view,
                wake,
                stop.clone(),
            )),
        ];
        info!(
            ship = %ctx.opts.name,
            id = %ctx.names.ship_id(),
            headquarters = %ctx.opts.headquarters,
            "ship started"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ShipError::Signals)?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
        admin.abort();
        for t in tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(ctx.layout.ship_pid_file());
        info!("ship control plane stopped; services and proxy keep running");
        Ok(())
    }
}

/// On start: compares the state with what the runtime runs, removes containers nobody knows,
/// resumes collecting the output of what keeps running.
/// The containers the OCI runtime has for this ship.
async fn list_containers(ctx: &Arc<Ctx>) -> Vec<starphleet_runtime::ContainerState> {
    let runtime = ctx.runtime.clone();
    match tokio::task::spawn_blocking(move || runtime.list()).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            warn!("cannot list the runtime's containers: {e}");
            Vec::new()
        }
        Err(e) => {
            warn!("cannot list the runtime's containers: {e}");
            Vec::new()
        }
    }
}

/// The state rebuilt from the labels in the bundles of the containers that run.
async fn recover(ctx: &Arc<Ctx>, listed: &[starphleet_runtime::ContainerState]) -> ShipState {
    let bundles: Vec<PathBuf> = listed
        .iter()
        .filter(|c| c.status == "running")
        .map(|c| c.bundle.join(crate::state::LABEL_FILE))
        .collect();
    let labels: Vec<crate::state::ContainerLabel> = tokio::task::spawn_blocking(move || {
        bundles
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    })
    .await
    .unwrap_or_default();
    let state = crate::plan::recover(ctx.names.ship_id(), labels, now_ms());
    let containers: usize = state
        .services
        .values()
        .flat_map(|s| s.current.iter().chain(s.draining.iter()))
        .map(|v| v.containers.len())
        .sum();
    warn!(
        services = state.services.len(),
        containers,
        "no ship state: recovered what runs from the runtime's containers; what headquarters no longer orders is removed"
    );
    state
}

async fn adopt(ctx: &Arc<Ctx>, core: &mut Core, listed: &[starphleet_runtime::ContainerState]) {
    let running: BTreeSet<String> = listed
        .iter()
        .filter(|c| c.status == "running" && c.pid != 0 && crate::layout::process_alive(c.pid))
        .map(|c| c.id.clone())
        .collect();
    let ids: Vec<String> = listed.iter().map(|c| c.id.clone()).collect();
    let found = crate::plan::adoption(core.state(), &running, &ids);
    for orphan in listed.iter().filter(|c| found.orphans.contains(&c.id)) {
        info!(container = %orphan.id, "removing orphan container");
        let (runtime, id, bundle) = (
            ctx.runtime.clone(),
            orphan.id.clone(),
            orphan.bundle.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            runtime.stop(&id, &bundle, crate::drain::STOP_GRACE)
        })
        .await;
    }
    core.adopt(&found.dead, now_ms());
    let mut adopted = 0;
    for (name, svc) in &core.state().services {
        for v in svc.current.iter().chain(svc.draining.iter()) {
            let label = crate::telemetry::version_label(&v.app_commit, &v.order_revision);
            for c in &v.containers {
                ctx.telemetry.watch_container(name, &label, c);
                adopted += usize::from(running.contains(&c.id));
            }
        }
        for c in &svc.pending {
            ctx.telemetry.watch_container(name, "", c);
        }
    }
    if adopted > 0 {
        info!(containers = adopted, "adopted running containers");
    }
}
