//! The proxy process: its control socket, its state, and its orderly exit.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::control::{Request, Response, Status};
use crate::listen::{Listeners, Shared};
use crate::table::Counters;
use crate::{ProxyClient, ProxyOptions};

/// How long shutdown waits for in-flight requests and open upgraded connections.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Access-log lines wait at most about this long in memory (see `stats::AccessFile`).
const ACCESS_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Runs the data plane until a `Shutdown` request or SIGTERM, then stops accepting, lets
/// in-flight requests finish (up to 30 s) and returns.
pub async fn run(opts: ProxyOptions) -> anyhow::Result<()> {
    let socket = opts.control_socket.clone();
    let control = bind_control(&socket).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("watching for SIGTERM")?;
    let daemon = Arc::new(Daemon {
        shared: Arc::new(Shared::new()),
        listen_ip: opts.listen_ip,
        state: Mutex::new(State {
            counters: Counters::new(opts.access_log_dir.clone()),
            ..State::default()
        }),
        stop: Notify::new(),
    });
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "proxy started");

    let flusher = tokio::spawn(flush_access_logs(Arc::downgrade(&daemon)));
    tokio::select! {
        () = serve_control(&control, &daemon) => {}
        () = daemon.stop.notified() => tracing::info!("shutdown requested"),
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
    }
    // Free the socket at once so a successor can take over while this one drains.
    drop(control);
    let _ = std::fs::remove_file(&socket);
    daemon.drain().await;
    flusher.abort();
    daemon.state().counters.flush_access_logs();
    Ok(())
}

async fn flush_access_logs(daemon: std::sync::Weak<Daemon>) {
    let mut every = tokio::time::interval(ACCESS_FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        daemon.state().counters.flush_access_logs();
    }
}

struct Daemon {
    shared: Arc<Shared>,
    listen_ip: IpAddr,
    /// Touched only by control requests, never by the request path.
    state: Mutex<State>,
    /// Signalled by a `Shutdown` request.
    stop: Notify,
}

#[derive(Default)]
struct State {
    counters: Counters,
    listeners: Listeners,
    stopping: bool,
}

impl Daemon {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, request: Request) -> Response {
        let mut state = self.state();
        let state = &mut *state;
        match request {
            Request::SetRoutes(_) if state.stopping => {
                Response::Error("the proxy is shutting down".into())
            }
            Request::SetRoutes(table) => {
                let compiled = match state.counters.compile(table) {
                    Ok(compiled) => compiled,
                    Err(e) => return Response::Error(e),
                };
                let ports: Vec<u16> = compiled.table.ports.keys().copied().collect();
                tracing::info!(
                    ports = ?ports,
                    routes = compiled.table.ports.values().map(Vec::len).sum::<usize>(),
                    "route table set"
                );
                let compiled = Arc::new(compiled);
                self.shared.table.store(compiled.clone());
                state
                    .listeners
                    .reconcile(&ports, self.listen_ip, &self.shared);
                // Forget idle containers that left, so the registry does not grow forever.
                state.counters.in_flight(&compiled.table);
                Response::Ok
            }
            Request::Status => {
                let table = self.shared.table.load_full().table.clone();
                Response::Status(Status {
                    pid: std::process::id(),
                    listening: state.listeners.ports(),
                    in_flight: state.counters.in_flight(&table),
                    requests: state.counters.requests(),
                    routes: state.counters.routes(&table),
                    bind_errors: state.listeners.errors.clone(),
                    table,
                })
            }
            Request::Shutdown => {
                state.stopping = true;
                self.stop.notify_one();
                Response::Ok
            }
        }
    }

    async fn drain(&self) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.stopping = true;
            state.listeners.stop_all();
        }
        self.shared.begin_shutdown();
        if tokio::time::timeout(DRAIN_LIMIT, self.shared.tracker.idle())
            .await
            .is_err()
        {
            tracing::warn!("gave up waiting for open connections after {DRAIN_LIMIT:?}");
        }
        self.shared.stop_workers();
        tracing::info!("proxy stopped");
    }
}

/// Takes the control socket: a stale one is replaced, a live one is refused.
async fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; remove it or choose another state dir",
                path.display()
            );
        }
        if let Ok(status) = ProxyClient::new(path).status().await {
            bail!(
                "another proxy (pid {}) is already running on {}",
                status.pid,
                path.display()
            );
        }
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "{} is in use by a program that is not a starphleet proxy",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("listening on the control socket {}", path.display()))?;
    // The socket reprograms every public port: only its owner may use it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

async fn serve_control(listener: &UnixListener, daemon: &Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    if let Err(err) = control_connection(stream, &daemon).await {
                        tracing::debug!(error = %err, "control connection ended");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn control_connection(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => daemon.apply(request),
            Err(e) => Response::Error(format!("not a request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize");
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}
