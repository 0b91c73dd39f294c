//! Public listeners and the connections they accept: plain or TLS, per-client limits, sockets
//! inherited from a predecessor and handed to the control plane.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::forward::{handle, ConnCtx};
use crate::guard::{watchdog, ConnState, Guarded, Stop};
use crate::table::Compiled;
use crate::tls::{Tls, ACME_TLS_ALPN};
use crate::upstream::Pool;
use crate::Limits;

/// The environment variable a proxy reads its inherited listening sockets from (by the
/// binary's choice; see [`inherit_listeners`]): `PORT:FD` pairs, comma-separated,
/// `STARPHLEET_LISTEN_FDS=80:3,443:4`.
pub const LISTEN_FDS_ENV: &str = "STARPHLEET_LISTEN_FDS";

/// Everything the hot path reads, shared by all connections and worker threads.
pub(crate) struct Shared {
    /// The route table in force; swapped whole, read without locks.
    pub table: ArcSwap<Compiled>,
    /// The certificates in force and the TLS config reading them.
    pub tls: Tls,
    /// Per-connection bounds.
    pub limits: Limits,
    /// Connections and upgraded streams still open, waited for on shutdown.
    pub tracker: Tracker,
    /// Open connections per client IP.
    per_ip: Arc<PerIp>,
    /// The threads that serve connections.
    workers: Workers,
    /// Flips to true once, when the proxy starts draining out.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// State for a proxy with an empty table and its worker threads started.
    pub fn new(limits: Limits) -> Self {
        Shared {
            table: ArcSwap::from_pointee(Compiled::empty()),
            tls: Tls::new(),
            limits,
            tracker: Tracker::default(),
            per_ip: Arc::new(PerIp {
                open: Mutex::new(HashMap::new()),
                max: limits.max_connections_per_ip,
            }),
            workers: Workers::start(limits),
            shutdown: watch::channel(false).0,
        }
    }

    /// Whether the proxy is draining out (health then answers 503).
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Asks every open connection to finish its current requests and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Ends the worker threads; connections still open on them are dropped.
    pub fn stop_workers(&self) {
        self.workers.stop.send_replace(true);
    }
}

/// Open connections per client IP, for [`Limits::max_connections_per_ip`]. Touched twice per
/// connection (accept, close), never per request.
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One open connection of a client IP, counted until dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip`, unless that IP already has the most allowed.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What one thread needs to serve connections: its own upstream connection pool (so a request
/// and its upstream connection live on the same thread) and the server settings.
pub(crate) struct Local {
    /// Pooled keep-alive connections to upstreams, used only from this thread.
    pub pool: Arc<Pool>,
    server: auto::Builder<TokioExecutor>,
}

impl Local {
    fn new(limits: Limits) -> Self {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            // Heads and small bodies are copied into one buffer and sent with one plain write:
            // on small responses cheaper than a vectored write of several pieces.
            .writev(false)
            // The head clock is the proxy's own (`guard`), which answers 408 rather than
            // hanging up; hyper's buffer bound answers 431 past the header limit.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192));
        server
            .http2()
            // RFC 8441: websockets on HTTP/2 streams.
            .enable_connect_protocol()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Local {
            pool: Pool::new(),
            server,
        }
    }
}

/// An accepted connection on its way to a worker.
struct Job {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    port: u16,
    slot: IpSlot,
    shared: Arc<Shared>,
}

/// One single-threaded runtime per CPU, as nginx runs one worker process per CPU: a connection,
/// its requests, their upstream connections and every wake-up between them stay on one thread,
/// with no cross-thread hand-offs on the request path.
struct Workers {
    queues: Vec<Worker>,
    /// Serves connections on the accepting runtime when no worker thread could be started.
    fallback: Arc<Local>,
    /// Flips to true once, when the proxy has drained and its workers should end.
    stop: watch::Sender<bool>,
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections open on this worker, to hand the next one to the least busy.
    open: Arc<AtomicUsize>,
}

impl Workers {
    fn start(limits: Limits) -> Self {
        let stop = watch::channel(false).0;
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let queues = (0..n)
            .filter_map(|i| match Worker::spawn(i, limits, stop.subscribe()) {
                Ok(worker) => Some(worker),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start a proxy worker thread");
                    None
                }
            })
            .collect();
        Workers {
            queues,
            fallback: Arc::new(Local::new(limits)),
            stop,
        }
    }

    /// Hands an accepted connection to the worker with the fewest open connections.
    fn dispatch(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        port: u16,
        slot: IpSlot,
        shared: &Arc<Shared>,
    ) {
        let Some(worker) = self
            .queues
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            let local = self.fallback.clone();
            tokio::spawn(serve(stream, peer, port, slot, shared.clone(), local));
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "cannot hand a connection to a worker");
                return;
            }
        };
        let job = Job {
            stream,
            peer,
            port,
            slot,
            shared: shared.clone(),
        };
        if let Err(mpsc::error::SendError(job)) = worker.jobs.send(job) {
            // The worker ended (only on shutdown): serve here rather than drop the client.
            if let Ok(stream) = TcpStream::from_std(job.stream) {
                let local = self.fallback.clone();
                tokio::spawn(serve(stream, peer, port, job.slot, job.shared, local));
            }
        }
    }
}

impl Worker {
    fn spawn(
        index: usize,
        limits: Limits,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<Worker> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let open = Arc::new(AtomicUsize::new(0));
        let count = open.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("proxy-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let local = Arc::new(Local::new(limits));
                    loop {
                        tokio::select! {
                            job = queue.recv() => {
                                let Some(job) = job else { break };
                                let stream = match TcpStream::from_std(job.stream) {
                                    Ok(stream) => stream,
                                    Err(err) => {
                                        tracing::debug!(error = %err, "cannot adopt a connection");
                                        continue;
                                    }
                                };
                                let count = Open::new(count.clone());
                                let conn = serve(stream, job.peer, job.port, job.slot, job.shared, local.clone());
                                tokio::spawn(async move {
                                    conn.await;
                                    drop(count);
                                });
                            }
                            _ = stop.wait_for(|stop| *stop) => break,
                        }
                    }
                });
            })?;
        Ok(Worker { jobs, open })
    }
}

/// Counts one open connection on a worker until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One port's listening socket and its accept loop.
struct Listening {
    /// Aborting it (and dropping `socket`) closes the listening socket.
    accept: JoinHandle<()>,
    socket: Arc<TcpListener>,
}

/// The listening sockets, one per public port, and the ports that failed to bind.
#[derive(Default)]
pub(crate) struct Listeners {
    active: BTreeMap<u16, Listening>,
    /// Inherited sockets not yet adopted by a table.
    reserve: BTreeMap<u16, OwnedFd>,
    /// Why each failed port could not be bound.
    pub errors: BTreeMap<u16, String>,
}

impl Listeners {
    /// Listeners that will serve these inherited sockets once a table names their ports.
    pub fn inherit(sockets: Vec<(u16, OwnedFd)>) -> Self {
        Listeners {
            reserve: sockets.into_iter().collect(),
            ..Listeners::default()
        }
    }

    /// Listens on every port in `wanted` not yet listened on (an inherited socket, or a new
    /// one; earlier failures are retried) and stops accepting on the others; connections
    /// already accepted carry on. Inherited sockets the table does not name are closed.
    pub fn reconcile(&mut self, wanted: &[u16], ip: IpAddr, shared: &Arc<Shared>) {
        self.active.retain(|port, listening| {
            let keep = wanted.contains(port);
            if !keep {
                listening.accept.abort();
                tracing::info!(port, "stopped listening");
            }
            keep
        });
        self.errors.clear();
        for &port in wanted {
            if self.active.contains_key(&port) {
                continue;
            }
            let (socket, how) = match self.reserve.remove(&port) {
                Some(fd) => (adopt(fd), "inherited"),
                None => (bind(SocketAddr::new(ip, port)), "bound"),
            };
            match socket {
                Ok(socket) => {
                    tracing::info!(port, %ip, how, "listening");
                    let socket = Arc::new(socket);
                    let accept = tokio::spawn(accept_loop(socket.clone(), port, shared.clone()));
                    self.active.insert(port, Listening { accept, socket });
                }
                Err(err) => {
                    tracing::error!(port, %ip, how, error = %err, "cannot listen");
                    self.errors.insert(port, err.to_string());
                }
            }
        }
        for (port, _) in std::mem::take(&mut self.reserve) {
            tracing::info!(port, "closed an inherited socket the table does not name");
        }
    }

    /// The ports being listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.active.keys().copied().collect()
    }

    /// Duplicates of the listening sockets, with their ports.
    pub fn duplicates(&self) -> std::io::Result<Vec<(u16, OwnedFd)>> {
        self.active
            .iter()
            .map(|(&port, l)| Ok((port, l.socket.as_fd().try_clone_to_owned()?)))
            .collect()
    }

    /// Stops accepting on every port.
    pub fn stop_all(&mut self) {
        for listening in std::mem::take(&mut self.active).into_values() {
            listening.accept.abort();
        }
        self.reserve.clear();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted proxy must rebind at once, even with connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn adopt(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// How long accepting pauses after a failure. Out of descriptors (EMFILE, ENFILE) or memory,
/// retrying at once would only spin; the clients wait in the backlog meanwhile.
fn accept_backoff(err: &std::io::Error) -> Duration {
    match err.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            Duration::from_millis(100)
        }
        _ => Duration::from_millis(5),
    }
}

async fn accept_loop(listener: Arc<TcpListener>, port: u16, shared: Arc<Shared>) {
    // Failures in a row: the first is logged, and the recovery with how many there were.
    let mut failing = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if failing > 0 {
                    tracing::info!(port, failed = failing, "accepting again");
                    failing = 0;
                }
                match shared.per_ip.enter(peer.ip()) {
                    Some(slot) => shared.workers.dispatch(stream, peer, port, slot, &shared),
                    None => {
                        tracing::debug!(%peer, "too many connections from one address; closed");
                        drop(stream);
                    }
                }
            }
            Err(err) => {
                if failing == 0 {
                    tracing::warn!(port, error = %err, "accept failed; backing off");
                }
                failing += 1;
                tokio::time::sleep(accept_backoff(&err)).await;
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    _slot: IpSlot,
    shared: Arc<Shared>,
    local: Arc<Local>,
) {
    let _alive = shared.tracker.token();
    // Responses are written whole by hyper; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    if !shared.table.load().is_tls(port) {
        serve_http(stream, peer, port, None, false, shared, local).await;
        return;
    }
    let limit = shared.limits.header_read_timeout;
    match tokio::time::timeout(limit, handshake(stream, &shared)).await {
        Ok(Ok(Some((stream, sni)))) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(stream, peer, port, Some(sni), h2, shared, local).await;
        }
        Ok(Ok(None)) => {}
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake took longer than {limit:?}"),
    }
}

/// The TLS handshake, with the certificate for the client's SNI. A TLS-ALPN-01 handshake gets
/// its challenge certificate and is closed (`None`); so is one offering `acme-tls/1` for a host
/// without a pending challenge.
async fn handshake(
    stream: TcpStream,
    shared: &Shared,
) -> std::io::Result<Option<(tokio_rustls::server::TlsStream<TcpStream>, Box<str>)>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = start.client_hello();
    let sni: Box<str> = hello
        .server_name()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .into();
    let acme = hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
    if acme {
        if let Some(config) = shared.tls.store().acme(&sni) {
            let mut stream = start.into_stream(config).await?;
            let _ = stream.shutdown().await;
        }
        return Ok(None);
    }
    let stream = start.into_stream(shared.tls.config()).await?;
    Ok(Some((stream, sni)))
}

/// Why a connection stops before the client closes it.
enum Ending {
    Drain,
    Watchdog(Stop),
}

/// Serves HTTP/1.1 or HTTP/2 on an accepted (and, with `sni`, TLS) connection.
async fn serve_http<S>(
    io: S,
    peer: SocketAddr,
    port: u16,
    sni: Option<Box<str>>,
    h2: bool,
    shared: Arc<Shared>,
    local: Arc<Local>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(h2));
    let mut shutdown = shared.shutdown.subscribe();
    let limits = shared.limits;
    let ctx = Arc::new(ConnCtx::new(
        shared.clone(),
        local.clone(),
        port,
        peer,
        sni,
        state.clone(),
    ));
    let service = service_fn(move |req| handle(ctx.clone(), req));
    let conn = local
        .server
        .serve_connection_with_upgrades(TokioIo::new(Guarded::new(io, state.clone())), service);
    tokio::pin!(conn);
    // Draining out and the watchdog are looked at only when their own wakers fire, not on each
    // of the connection's wake-ups: polling them costs more than a request's worth of
    // bookkeeping.
    let stop = async {
        tokio::select! {
            () = draining(&mut shutdown) => Ending::Drain,
            stop = watchdog(&state, &limits) => Ending::Watchdog(stop),
        }
    };
    tokio::pin!(stop);
    let gate = Arc::new(Gate::default());
    let gate_waker = Waker::from(gate.clone());
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ok(result));
        }
        gate.watch(cx.waker());
        if gate.fired.swap(false, Ordering::Acquire) {
            if let Poll::Ready(ending) = stop.as_mut().poll(&mut Context::from_waker(&gate_waker)) {
                return Poll::Ready(Err(ending));
            }
        }
        Poll::Pending
    })
    .await;
    let result = match ended {
        Ok(result) => result,
        Err(Ending::Watchdog(Stop::Cut)) => {
            // The verdict is set: the next read answers 408 (or fails), ending the connection.
            tracing::debug!(%peer, "cutting off a connection: a request head or a write took too long");
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
            return;
        }
        Err(ending) => {
            if let Ending::Watchdog(Stop::Idle) = ending {
                tracing::debug!(%peer, "closing an idle connection");
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended");
    }
}

/// Why inherited listening sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    /// An entry is not `PORT:FD`.
    #[error("{LISTEN_FDS_ENV}: {entry:?} is not PORT:FD (for example 80:3,443:4)")]
    Syntax {
        /// The entry.
        entry: String,
    },
    /// A port or a descriptor is named twice.
    #[error("{LISTEN_FDS_ENV}: {entry:?} names a port or a descriptor already given")]
    Duplicate {
        /// The entry.
        entry: String,
    },
    /// The descriptor is not a listening TCP socket of this process.
    #[error(
        "{LISTEN_FDS_ENV}: descriptor {fd} (port {port}) is not an open listening socket: {why}"
    )]
    NotAListener {
        /// The port it was given for.
        port: u16,
        /// The descriptor.
        fd: RawFd,
        /// What checking it said.
        why: String,
    },
    /// The inherited sockets were taken already; each can have one owner only.
    #[error("{LISTEN_FDS_ENV}: the inherited sockets were taken already")]
    AlreadyTaken,
}

/// Parses `PORT:FD` pairs, comma-separated (`80:3,443:4`; empty: none). Pure: it only reads
/// the text.
pub fn listen_fds(spec: &str) -> Result<Vec<(u16, RawFd)>, ListenFdsError> {
    let mut out: Vec<(u16, RawFd)> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let syntax = || ListenFdsError::Syntax {
            entry: entry.to_owned(),
        };
        let (port, fd) = entry.split_once(':').ok_or_else(syntax)?;
        let port: u16 = port.trim().parse().map_err(|_| syntax())?;
        let fd: RawFd = fd.trim().parse().map_err(|_| syntax())?;
        if port == 0 || fd < 0 {
            return Err(syntax());
        }
        if out.iter().any(|&(p, f)| p == port || f == fd) {
            return Err(ListenFdsError::Duplicate {
                entry: entry.to_owned(),
            });
        }
        out.push((port, fd));
    }
    Ok(out)
}

/// Takes the listening sockets this process inherited, as [`listen_fds`] names them (`None`
/// or empty: none), for [`crate::ProxyOptions::inherited`]. Each descriptor must be an open
/// listening stream socket; it gets close-on-exec. Only the first call may take them.
///
/// ```no_run
/// let inherited = starphleet_proxy::inherit_listeners(
///     std::env::var(starphleet_proxy::LISTEN_FDS_ENV).ok().as_deref(),
/// )?;
/// # Ok::<(), starphleet_proxy::ListenFdsError>(())
/// ```
pub fn inherit_listeners(spec: Option<&str>) -> Result<Vec<(u16, OwnedFd)>, ListenFdsError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let wanted = listen_fds(spec.unwrap_or_default())?;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ListenFdsError::AlreadyTaken);
    }
    for &(port, fd) in &wanted {
        check_listener(fd).map_err(|why| ListenFdsError::NotAListener { port, fd, why })?;
    }
    Ok(wanted
        .into_iter()
        .map(|(port, fd)| {
            // SAFETY: the descriptor is open (checked above) and was handed to this process to
            // own; `TAKEN` makes this the only place that takes it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            (port, fd)
        })
        .collect())
}

/// Whether `fd` is an open stream socket in the listening state.
fn check_listener(fd: RawFd) -> Result<(), String> {
    let option = |name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`; a bad descriptor is an
        // error return, not undefined behaviour.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    };
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket".into());
    }
    if option(libc::SO_ACCEPTCONN)? != 1 {
        return Err("not listening".into());
    }
    Ok(())
}

/// Wakes a connection's task when a rarely ready future of it (draining, idleness) was woken.
struct Gate {
    /// Set by the future's waker; the first poll looks at the future to register that waker.
    fired: AtomicBool,
    /// The connection task's waker. `serve` runs as one spawned task from start to end, so the
    /// first waker it is given wakes that task for good.
    task: std::sync::OnceLock<Waker>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            fired: AtomicBool::new(true),
            task: std::sync::OnceLock::new(),
        }
    }
}

impl Gate {
    /// Remembers the task to wake, the first time.
    fn watch(&self, waker: &Waker) {
        if self.task.get().is_none() {
            let _ = self.task.set(waker.clone());
        }
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

/// Returns once the proxy starts draining out.
async fn draining(shutdown: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, which the caller holds: this only ends on shutdown.
    let _ = shutdown.wait_for(|draining| *draining).await;
}

/// Counts live connections and upgraded streams so shutdown can wait for them.
#[derive(Default)]
pub(crate) struct Tracker(Arc<TrackerInner>);

#[derive(Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

/// Keeps its [`Tracker`] busy until dropped.
pub(crate) struct TrackToken(Arc<TrackerInner>);

impl Tracker {
    /// Marks one more thing live until the token is dropped.
    pub fn token(&self) -> TrackToken {
        self.0.live.fetch_add(1, Ordering::SeqCst);
        TrackToken(self.0.clone())
    }

    /// Returns once nothing is live.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackToken {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn listen_fds_are_port_fd_pairs() {
        assert_eq!(listen_fds("").unwrap(), vec![]);
        assert_eq!(listen_fds("80:3, 443:4").unwrap(), vec![(80, 3), (443, 4)]);
        for bad in ["80", "80:x", "0:3", "70000:3", "80:-1", ":3"] {
            assert!(
                matches!(listen_fds(bad), Err(ListenFdsError::Syntax { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            listen_fds("80:3,80:4"),
            Err(ListenFdsError::Duplicate { .. })
        ));
        assert!(matches!(
            listen_fds("80:3,81:3"),
            Err(ListenFdsError::Duplicate { .. })
        ));
    }

    #[test]
    fn only_listening_sockets_are_taken() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_listener(listener.as_raw_fd()), Ok(()));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(check_listener(file.as_raw_fd()).is_err());
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(check_listener(connected.as_raw_fd()).is_err());
    }
}
