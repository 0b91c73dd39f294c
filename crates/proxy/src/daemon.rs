//! The proxy process: its control socket, its state, and its orderly exit.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::control::{fdpass, Request, Response, Status};
use crate::listen::{Listeners, Shared};
use crate::table::Counters;
use crate::{ProxyClient, ProxyOptions, RouteTable};

/// How long shutdown waits for in-flight requests and open upgraded connections.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Access-log lines wait at most about this long in memory (see `stats::AccessFile`).
const ACCESS_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The control socket's directory could not be created.
    #[error("creating {dir}: {error}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What creating it said.
        error: std::io::Error,
    },
    /// Something other than a socket sits where the control socket goes.
    #[error("{path} exists and is not a socket; remove it or choose another state dir")]
    NotASocket {
        /// The control socket path.
        path: PathBuf,
    },
    /// Another proxy answers on the control socket.
    #[error("another proxy (pid {pid}) is already running on {path}")]
    AlreadyRunning {
        /// The control socket path.
        path: PathBuf,
        /// The running proxy's pid.
        pid: u32,
    },
    /// Something that is not a proxy accepts connections on the control socket.
    #[error("{path} is in use by a program that is not a starphleet proxy")]
    InUse {
        /// The control socket path.
        path: PathBuf,
    },
    /// A socket left by a proxy that died could not be removed.
    #[error("removing the stale socket {path}: {error}")]
    RemoveStale {
        /// The control socket path.
        path: PathBuf,
        /// What removing it said.
        error: std::io::Error,
    },
    /// The control socket could not be listened on or restricted to its owner.
    #[error("listening on the control socket {path}: {error}")]
    Bind {
        /// The control socket path.
        path: PathBuf,
        /// What binding or `chmod` said.
        error: std::io::Error,
    },
    /// SIGTERM could not be watched for.
    #[error("watching for SIGTERM: {0}")]
    Signal(std::io::Error),
}

/// Runs the data plane until a `Shutdown` request or SIGTERM, then stops accepting, lets
/// in-flight requests finish (up to 30 s) and returns.
pub async fn run(opts: ProxyOptions) -> Result<(), ProxyError> {
    raise_fd_limit();
    let socket = opts.control_socket.clone();
    let control = bind_control(&socket).await?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ProxyError::Signal)?;
    let daemon = Arc::new(Daemon::new(opts));
    // Control connections end once this is dropped: when shutdown begins, or when `run` itself
    // is dropped, so a control plane holding one learns at once that this proxy is going.
    let (open, closing) = watch::channel(());
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "proxy started");

    let flusher = tokio::spawn(flush_access_logs(Arc::downgrade(&daemon)));
    tokio::select! {
        () = serve_control(&control, &daemon, &closing) => {}
        () = daemon.stop.notified() => tracing::info!("shutdown requested"),
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
    }
    // Free the socket at once so a successor can take over while this one drains.
    drop(control);
    let _ = std::fs::remove_file(&socket);
    drop(open);
    daemon.drain().await;
    flusher.abort();
    daemon.state().counters.flush_access_logs();
    Ok(())
}

/// Every connection is a descriptor (two when proxied): the soft limit of 1024 most systems
/// start processes with would cap the proxy at a few hundred clients. The hard limit is what
/// the administrator allows; take all of it.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open file limit"),
            Err(err) => {
                tracing::warn!(soft, hard, error = %err, "cannot raise the open file limit")
            }
        },
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read the open file limit"),
    }
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

/// An answer line, and for `Listeners` the sockets that go with it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per control request, moved once
enum Answer {
    Line(Response),
    Sockets { ports: Vec<u16>, fds: Vec<OwnedFd> },
}

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Answer::Line(response)
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
    /// Hosts whose certificate in the table in force did not load, with why.
    cert_errors: BTreeMap<String, String>,
    stopping: bool,
}

impl Daemon {
    fn new(opts: ProxyOptions) -> Self {
        Daemon {
            shared: Arc::new(Shared::new(opts.limits)),
            listen_ip: opts.listen_ip,
            state: Mutex::new(State {
                counters: Counters::new(opts.access_log_dir),
                listeners: Listeners::inherit(opts.inherited),
                ..State::default()
            }),
            stop: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generation of the table in force, read without the state lock.
    fn generation(&self) -> u64 {
        self.shared.table.load().table.generation
    }

    /// Answers one request; only `WaitIdle` waits, and never with the state locked.
    async fn answer(&self, request: Request) -> Answer {
        let response = match request {
            Request::SetRoutes { table } => {
                // Certificate files are read before the state is locked.
                let certs = crate::tls::load(&table);
                self.set_routes(table, certs)
            }
            Request::Listeners => {
                let duplicates = self.state().listeners.duplicates();
                return match duplicates {
                    Ok(sockets) => {
                        let (ports, fds) = sockets.into_iter().unzip();
                        Answer::Sockets { ports, fds }
                    }
                    Err(e) => {
                        Response::Error(format!("duplicating the listening sockets: {e}")).into()
                    }
                };
            }
            Request::Status => self.status(),
            Request::Ping => Response::Pong {
                pid: std::process::id(),
                generation: self.generation(),
            },
            Request::WaitIdle {
                containers,
                timeout_ms,
            } => {
                let watch = self.state().counters.watch(&containers);
                match watch.idle(Duration::from_millis(timeout_ms)).await {
                    Ok(()) => Response::Idle,
                    Err(in_flight) => Response::Busy { in_flight },
                }
            }
            Request::Shutdown => {
                self.state().stopping = true;
                self.stop.notify_one();
                Response::Ok
            }
        };
        response.into()
    }

    fn set_routes(&self, table: RouteTable, certs: crate::tls::Loaded) -> Response {
        let mut state = self.state();
        let state = &mut *state;
        if state.stopping {
            return Response::Error("the proxy is shutting down".into());
        }
        // The lock orders table swaps: the one in force cannot change before the store below.
        let current = self.generation();
        if table.generation < current {
            tracing::warn!(
                offered = table.generation,
                current,
                "refused a route table older than the one in force"
            );
            return Response::Stale { current };
        }
        let compiled = match state.counters.compile(table) {
            Ok(compiled) => compiled,
            Err(e) => return Response::Error(e),
        };
        let ports: Vec<u16> = compiled.table.ports.keys().copied().collect();
        // Certificates first: a port turning to TLS finds them in force.
        state.cert_errors = self.shared.tls.install(&compiled.table, certs);
        for (host, error) in &state.cert_errors {
            tracing::error!(
                host,
                error,
                "certificate not loaded; the previous one, if any, is kept"
            );
        }
        tracing::info!(
            generation = compiled.table.generation,
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

    fn status(&self) -> Response {
        let mut state = self.state();
        let table = self.shared.table.load_full().table.clone();
        Response::Status(Status {
            pid: std::process::id(),
            generation: table.generation,
            listening: state.listeners.ports(),
            in_flight: state.counters.in_flight(&table),
            requests: state.counters.requests(),
            routes: state.counters.routes(&table),
            bind_errors: state.listeners.errors.clone(),
            cert_errors: state.cert_errors.clone(),
            table,
        })
    }

    async fn drain(&self) {
        {
            let mut state = self.state();
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
async fn bind_control(path: &Path) -> Result<UnixListener, ProxyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| ProxyError::CreateDir {
            dir: dir.to_owned(),
            error,
        })?;
    }
    let path_buf = || path.to_owned();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ProxyError::NotASocket { path: path_buf() });
        }
        // `status`, which every proxy version answers, not `ping`, which old ones refuse.
        if let Ok(status) = ProxyClient::new(path).status().await {
            return Err(ProxyError::AlreadyRunning {
                path: path_buf(),
                pid: status.pid,
            });
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ProxyError::InUse { path: path_buf() });
        }
        std::fs::remove_file(path).map_err(|error| ProxyError::RemoveStale {
            path: path_buf(),
            error,
        })?;
    }
    let bind = |error| ProxyError::Bind {
        path: path_buf(),
        error,
    };
    let listener = UnixListener::bind(path).map_err(bind)?;
    // The socket reprograms every public port: only its owner may use it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    Ok(listener)
}

async fn serve_control(
    listener: &UnixListener,
    daemon: &Arc<Daemon>,
    closing: &watch::Receiver<()>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                let closing = closing.clone();
                tokio::spawn(async move {
                    if let Err(err) = control_connection(stream, &daemon, closing).await {
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

/// Answers one connection's requests in order, until the client hangs up or the proxy begins
/// to shut down; a request being answered then is answered first.
async fn control_connection(
    stream: UnixStream,
    daemon: &Daemon,
    mut closing: watch::Receiver<()>,
) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            biased;
            // Nothing is ever sent: this resolves when the sender is dropped.
            _ = closing.changed() => break,
            line = lines.next_line() => match line? {
                Some(line) => line,
                None => break,
            },
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => daemon.answer(request).await,
            Err(e) => Response::Error(format!("not a request: {e}")).into(),
        };
        let (response, fds) = match answer {
            Answer::Line(response) => (response, Vec::new()),
            Answer::Sockets { ports, fds } => (Response::Listeners { ports }, fds),
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize");
        out.push(b'\n');
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        fdpass::send_line(write.as_ref(), &out, &raw).await?;
        // Our duplicates close here; the caller's copies stay open.
        drop(fds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(answer: Answer) -> Response {
        match answer {
            Answer::Line(response) => response,
            other => panic!("{other:?}"),
        }
    }

    fn table(generation: u64) -> RouteTable {
        RouteTable {
            ship: format!("gen-{generation}"),
            generation,
            ..RouteTable::default()
        }
    }

    #[tokio::test]
    async fn only_tables_older_than_the_one_in_force_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::new(ProxyOptions::new(dir.path().join("unused.sock")));
        let ping = || async { line(daemon.answer(Request::Ping).await) };
        let set = |table| async { line(daemon.answer(Request::SetRoutes { table }).await) };
        let generation = || async {
            match line(daemon.answer(Request::Status).await) {
                Response::Status(s) => (s.generation, s.table.ship),
                other => panic!("{other:?}"),
            }
        };
        let pid = std::process::id();

        assert_eq!(ping().await, Response::Pong { pid, generation: 0 });
        assert_eq!(set(table(0)).await, Response::Ok, "a fresh proxy takes 0");
        assert_eq!(set(table(5)).await, Response::Ok);
        assert_eq!(set(table(4)).await, Response::Stale { current: 5 });
        assert_eq!(generation().await, (5, "gen-5".into()));
        assert_eq!(set(table(5)).await, Response::Ok, "the same one again");
        let mut bad = table(9);
        bad.ports.insert(0, Vec::new());
        assert!(matches!(set(bad).await, Response::Error(_)));
        assert_eq!(ping().await, Response::Pong { pid, generation: 5 });
        assert_eq!(set(table(6)).await, Response::Ok);
        assert_eq!(generation().await, (6, "gen-6".into()));
        assert_eq!(line(daemon.answer(Request::Shutdown).await), Response::Ok);
        assert!(matches!(set(table(7)).await, Response::Error(_)));
        daemon.shared.stop_workers();
    }

    #[tokio::test]
    async fn wait_idle_on_unknown_containers_is_idle_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::new(ProxyOptions::new(dir.path().join("unused.sock")));
        let wait = Request::WaitIdle {
            containers: vec!["nobody-1".into()],
            timeout_ms: 60_000,
        };
        let answer = tokio::time::timeout(Duration::from_secs(1), daemon.answer(wait)).await;
        assert_eq!(line(answer.unwrap()), Response::Idle);
        daemon.shared.stop_workers();
    }
}
