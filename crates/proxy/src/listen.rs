//! Public listeners and the connections they accept.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::forward::{handle, Activity, ConnCtx};
use crate::table::Compiled;
use crate::upstream::Pool;

/// A connection with no request for this long is closed, whether it sits idle between requests
/// or trickles in the headers of one (slowloris). Checked twice per period.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the hot path reads, shared by all connections and worker threads.
pub(crate) struct Shared {
    /// The route table in force; swapped whole, read without locks.
    pub table: ArcSwap<Compiled>,
    /// Connections and upgraded streams still open, waited for on shutdown.
    pub tracker: Tracker,
    /// The threads that serve connections.
    workers: Workers,
    /// Flips to true once, when the proxy starts draining out.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// State for a proxy with an empty table and its worker threads started.
    pub fn new() -> Self {
        Shared {
            table: ArcSwap::from_pointee(Compiled::empty()),
            tracker: Tracker::default(),
            workers: Workers::start(),
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

/// What one thread needs to serve connections: its own upstream connection pool (so a request
/// and its upstream connection live on the same thread) and the server settings.
pub(crate) struct Local {
    /// Pooled keep-alive connections to upstreams, used only from this thread.
    pub pool: Arc<Pool>,
    server: auto::Builder<TokioExecutor>,
}

impl Local {
    fn new() -> Self {
        let mut server = auto::Builder::new(TokioExecutor::new());
        // Heads and small bodies are copied into one buffer and sent with one plain write: on
        // small responses cheaper than a vectored write of several pieces.
        server.http1().writev(false);
        server.http2().timer(TokioTimer::new());
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
    fn start() -> Self {
        let stop = watch::channel(false).0;
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let queues = (0..n)
            .filter_map(|i| match Worker::spawn(i, stop.subscribe()) {
                Ok(worker) => Some(worker),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start a proxy worker thread");
                    None
                }
            })
            .collect();
        Workers {
            queues,
            fallback: Arc::new(Local::new()),
            stop,
        }
    }

    /// Hands an accepted connection to the worker with the fewest open connections.
    fn dispatch(&self, stream: TcpStream, peer: SocketAddr, port: u16, shared: &Arc<Shared>) {
        let Some(worker) = self
            .queues
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            let local = self.fallback.clone();
            tokio::spawn(serve(stream, peer, port, shared.clone(), local));
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
            shared: shared.clone(),
        };
        if let Err(mpsc::error::SendError(job)) = worker.jobs.send(job) {
            // The worker ended (only on shutdown): serve here rather than drop the client.
            if let Ok(stream) = TcpStream::from_std(job.stream) {
                let local = self.fallback.clone();
                tokio::spawn(serve(stream, peer, port, job.shared, local));
            }
        }
    }
}

impl Worker {
    fn spawn(index: usize, mut stop: watch::Receiver<bool>) -> std::io::Result<Worker> {
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
                    let local = Arc::new(Local::new());
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
                                let conn = serve(stream, job.peer, job.port, job.shared, local.clone());
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

/// The listening sockets, one per public port, and the ports that failed to bind.
#[derive(Default)]
pub(crate) struct Listeners {
    /// Each port's accept loop; aborting it closes the listening socket.
    active: BTreeMap<u16, JoinHandle<()>>,
    /// Why each failed port could not be bound.
    pub errors: BTreeMap<u16, String>,
}

impl Listeners {
    /// Listens on every port in `wanted` not yet listened on (retrying earlier failures) and
    /// stops accepting on the others; connections already accepted carry on.
    pub fn reconcile(&mut self, wanted: &[u16], ip: IpAddr, shared: &Arc<Shared>) {
        self.active.retain(|port, accept| {
            let keep = wanted.contains(port);
            if !keep {
                accept.abort();
                tracing::info!(port, "stopped listening");
            }
            keep
        });
        self.errors.clear();
        for &port in wanted {
            if self.active.contains_key(&port) {
                continue;
            }
            match bind(SocketAddr::new(ip, port)) {
                Ok(listener) => {
                    tracing::info!(port, %ip, "listening");
                    let accept = tokio::spawn(accept_loop(listener, port, shared.clone()));
                    self.active.insert(port, accept);
                }
                Err(err) => {
                    tracing::error!(port, %ip, error = %err, "cannot listen");
                    self.errors.insert(port, err.to_string());
                }
            }
        }
    }

    /// The ports being listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.active.keys().copied().collect()
    }

    /// Stops accepting on every port.
    pub fn stop_all(&mut self) {
        for accept in std::mem::take(&mut self.active).into_values() {
            accept.abort();
        }
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
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => shared.workers.dispatch(stream, peer, port, &shared),
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(port, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    shared: Arc<Shared>,
    local: Arc<Local>,
) {
    let _alive = shared.tracker.token();
    // Responses are written whole by hyper; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    let ctx = Arc::new(ConnCtx::new(shared.clone(), local.clone(), port, peer));
    let activity = ctx.clone();
    let service = service_fn(move |req| handle(ctx.clone(), req));
    let conn = local
        .server
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Draining out and idleness are looked at only when their own wakers fire, not on each of
    // the connection's wake-ups: polling them costs more than a request's worth of bookkeeping.
    let stop = async {
        tokio::select! {
            () = draining(&mut shutdown) => {}
            () = idle(IDLE_TIMEOUT, || activity.activity()) => {
                tracing::debug!(%peer, "closing a connection idle for {IDLE_TIMEOUT:?}");
            }
        }
    };
    tokio::pin!(stop);
    let gate = Arc::new(Gate::default());
    let gate_waker = Waker::from(gate.clone());
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        gate.watch(cx.waker());
        if gate.fired.swap(false, Ordering::Acquire)
            && stop
                .as_mut()
                .poll(&mut Context::from_waker(&gate_waker))
                .is_ready()
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    let result = match ended {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended");
    }
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

/// Returns once the connection has gone [`IDLE_TIMEOUT`] without a request in progress or a new
/// one started: a timer per connection ticking twice a period, rather than one per request.
async fn idle(period: Duration, activity: impl Fn() -> Activity) {
    let half = period / 2;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = activity();
    let mut idle_ticks = 0;
    loop {
        tick.tick().await;
        let now = activity();
        if now.started == seen.started && now.active == 0 {
            idle_ticks += 1;
            if idle_ticks == 2 {
                return;
            }
        } else {
            idle_ticks = 0;
        }
        seen = now;
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
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_connection_is_idle_after_a_period_without_requests() {
        let period = Duration::from_millis(100);
        let quiet = || Activity {
            started: 7,
            active: 0,
        };
        let timed = tokio::time::timeout(Duration::from_secs(2), idle(period, quiet)).await;
        assert!(timed.is_ok(), "no request for a period is idle");

        // A request in progress (a long download) is not idleness, however long it takes.
        let busy = || Activity {
            started: 7,
            active: 1,
        };
        let timed = tokio::time::timeout(period * 4, idle(period, busy)).await;
        assert!(timed.is_err(), "a request in progress keeps the connection");

        // Nor is a stream of short requests, each over before the next check.
        let started = AtomicU32::new(0);
        let steady = || Activity {
            started: started.fetch_add(1, Ordering::Relaxed),
            active: 0,
        };
        let timed = tokio::time::timeout(period * 4, idle(period, steady)).await;
        assert!(timed.is_err(), "new requests keep the connection");
    }
}
