//! The route programmer: the one task that sends route tables to the proxy, and the keeper of
//! the proxy process. Tables carry a generation the proxy checks, so an older table can never
//! replace a newer one; a proxy that goes away is noticed at once (its control connection
//! closes), started again and given the current table.

use std::sync::Arc;
use std::time::Duration;

use starphleet_proxy::{ControlConnection, ControlError, ProxyClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::layout::process_alive;
use crate::owner::{DesiredRoutes, Event, OwnerTx};

/// How long a ping may take before the proxy counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a freshly started proxy may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry delays after a failure: from this, doubling, up to `MAX_RETRY`.
const MIN_RETRY: Duration = Duration::from_millis(25);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Why the proxy could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProcessError {
    /// A proxy process of this ship is alive but does not answer; a second one is never started.
    #[error("the proxy (pid {pid}) is running but does not answer its control socket: {source}")]
    Unresponsive {
        /// Its pid.
        pid: u32,
        /// What the ping saw.
        source: ControlError,
    },
    /// The proxy could not be started.
    #[error("starting the proxy {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: String,
        /// Why.
        source: std::io::Error,
    },
    /// A started proxy did not come up.
    #[error("the proxy did not come up within {START_TIMEOUT:?}; see {log}")]
    NotUp {
        /// Its log file.
        log: String,
    },
    /// The control connection failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Keeps the ship's proxy programmed until `stop`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    owner: OwnerTx,
    mut desired: watch::Receiver<Arc<DesiredRoutes>>,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut conn: Option<ControlConnection> = None;
    // Wire generation = desired version + offset: each connection continues from the
    // generation the proxy has.
    let mut offset: i128 = 0;
    let mut applied_here: Option<u64> = None;
    let mut retry = MIN_RETRY;
    let mut last_problem = String::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let want = desired.borrow_and_update().clone();
        if conn.is_none() {
            match connect(&ctx).await {
                Ok((c, generation)) => {
                    offset = generation as i128 + 1 - want.version as i128;
                    conn = Some(c);
                    applied_here = None;
                }
                Err(e) => {
                    let problem = e.to_string();
                    if problem != last_problem {
                        warn!("cannot program the proxy, retrying: {problem}");
                        last_problem = problem;
                    }
                    if !pause(&stop, &mut retry).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if applied_here != Some(want.version) {
            let mut table = want.table.clone();
            table.generation = (want.version as i128 + offset).max(0) as u64;
            match c.set_routes(&table).await {
                Ok(()) => {
                    applied_here = Some(want.version);
                    retry = MIN_RETRY;
                    last_problem.clear();
                    applied.send_replace(want.version);
                    owner.send(Event::RoutesApplied(want.version));
                    tokio::spawn(report_bind_errors(ctx.proxy.clone()));
                }
                Err(ControlError::Stale { current }) => {
                    // Another programmer's table (a previous ship) is newer: continue after it.
                    offset = current as i128 + 1 - want.version as i128;
                }
                Err(e) => {
                    warn!("programming the proxy failed, retrying: {e}");
                    conn = None;
                    if !pause(&stop, &mut retry).await {
                        return;
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            () = c.closed() => {
                warn!("the proxy went away; starting it again and reprogramming it");
                conn = None;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Waits `retry` (doubling it for next time) unless the ship stops; `false` when it stops.
async fn pause(stop: &CancellationToken, retry: &mut Duration) -> bool {
    let wait = *retry;
    *retry = (*retry * 2).min(MAX_RETRY);
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stop.cancelled() => false,
    }
}

async fn report_bind_errors(proxy: ProxyClient) {
    if let Ok(status) = proxy.status().await {
        for (port, err) in &status.bind_errors {
            warn!(port, "proxy cannot listen: {err}");
        }
    }
}

/// Connects to the ship's proxy, starting it when no proxy process of this ship is alive.
/// Returns the connection and the generation of the table the proxy has.
async fn connect(ctx: &Ctx) -> Result<(ControlConnection, u64), ProxyProcessError> {
    match ctx.proxy.ping(PING_TIMEOUT).await {
        Ok(pong) => {
            remember_pid(ctx, pong.pid);
        }
        Err(source) => {
            if let Some(pid) = proxy_pid(ctx) {
                return Err(ProxyProcessError::Unresponsive { pid, source });
            }
            start_proxy(ctx).await?;
        }
    }
    let mut conn = ctx.proxy.connect().await?;
    let pong = conn.ping(PING_TIMEOUT).await?;
    Ok((conn, pong.generation))
}

/// The pid of this ship's proxy process, if it is alive (and really a proxy of this state dir).
fn proxy_pid(ctx: &Ctx) -> Option<u32> {
    let pid = crate::layout::live_pid(&ctx.layout.proxy_pid_file())?;
    is_proxy_of(pid, ctx.layout.root()).then_some(pid)
}

/// Whether `pid` runs `starphleet proxy --state-dir <root>` (a reused pid does not).
fn is_proxy_of(pid: u32, root: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.contains(&b"proxy".as_slice()) && args.contains(&root.as_os_str().as_encoded_bytes())
}

fn remember_pid(ctx: &Ctx, pid: u32) {
    let file = ctx.layout.proxy_pid_file();
    let known = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    if known != Some(pid) {
        if let Err(e) = crate::state::write_atomic(&file, pid.to_string().as_bytes()) {
            warn!("recording the proxy's pid in {}: {e}", file.display());
        }
    }
}

async fn start_proxy(ctx: &Ctx) -> Result<(), ProxyProcessError> {
    let exe = ctx.opts.self_exe.clone();
    let spawn_error = |source| ProxyProcessError::Spawn {
        exe: exe.display().to_string(),
        source,
    };
    let logs = ctx.layout.logs();
    std::fs::create_dir_all(&logs).map_err(spawn_error)?;
    let log_path = logs.join("proxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(spawn_error)?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("proxy")
        .arg("--state-dir")
        .arg(ctx.layout.root())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error)?)
        .stderr(log);
    // Its own session, so signals to the ship (or its terminal) never reach the proxy.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and has no memory-safety preconditions.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let pid = child.id();
    // Reap it if it exits while we live; after we exit, init does.
    std::thread::spawn(move || child.wait());
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if ctx.proxy.ping(PING_TIMEOUT).await.is_ok() {
            remember_pid(ctx, pid);
            info!(pid, "proxy started");
            return Ok(());
        }
        if !process_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ProxyProcessError::NotUp {
        log: log_path.display().to_string(),
    })
}
