//! Public listeners and the connections they accept.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::forward::{handle, ConnCtx};
use crate::table::Compiled;

/// How long an upstream gets to accept a connection before the client sees 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled upstream connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A client must send its request headers within this (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the hot path reads, shared by all connections.
pub(crate) struct Shared {
    /// The route table in force; swapped whole, read without locks.
    pub table: ArcSwap<Compiled>,
    /// Pooled keep-alive connections to upstreams.
    pub client: Client<HttpConnector, Incoming>,
    /// Connections and upgraded streams still open, waited for on shutdown.
    pub tracker: Tracker,
    server: auto::Builder<TokioExecutor>,
    /// Flips to true once, when the proxy starts draining out.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// State for a proxy with an empty table, its upstream client and server configured.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .http2()
            .timer(TokioTimer::new());
        Shared {
            table: ArcSwap::from_pointee(Compiled::empty()),
            client,
            tracker: Tracker::default(),
            server,
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
            Ok((stream, peer)) => {
                tokio::spawn(serve(stream, peer, port, shared.clone()));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(port, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, port: u16, shared: Arc<Shared>) {
    let _alive = shared.tracker.token();
    // Responses are written whole by hyper; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    let ctx = Arc::new(ConnCtx::new(shared.clone(), port, peer));
    let service = service_fn(move |req| handle(ctx.clone(), req));
    let conn = shared
        .server
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = draining(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended");
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
