//! Keep-alive HTTP/1.1 connections to upstreams, pooled per worker thread.
//!
//! Every upstream is an `ip:port` on the ship (no DNS, no TLS, no proxies, no HTTP/2), so a pool
//! is a map from address to idle connections, and a connection goes back to its pool the moment
//! its response body has been read. Two kinds of connection, each in its own pool:
//!
//! - **direct** ([`Pool::checkout`]): requests without a body — nearly all of them — are
//!   written and their responses read by the serving task itself, with the small HTTP/1.1 codec
//!   of [`crate::h1`]: no connection task, no channels between tasks, no copies of the request;
//! - **hyper** ([`Pool::send`]): requests with a body, and protocol switches (websockets), go
//!   through hyper's client connection, which streams a body while it already reads the answer
//!   and hands over the upgraded connection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::http::response;
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::forward::GuardedBody;
use crate::h1::{self, Decoder};

/// How long an upstream gets to accept a connection before the client sees 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle connections are swept: one idle through [`IDLE_SWEEPS`] sweeps is closed, so
/// after 60 to 90 s without use. Ages are counted in sweeps, keeping the clock off the hot path.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const IDLE_SWEEPS: u8 = 3;
/// Idle connections kept per upstream, kind and thread; more are closed when they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// A direct connection's read buffer; reads ask for half of it free at least. While the bytes
/// handed out of it (heads, bodies) are dropped in time, the buffer is reused in place.
const READ_SIZE: usize = 8 * 1024;
/// Reads of large bodies ask for this much room.
const BODY_READ_SIZE: usize = 32 * 1024;

/// Why a request could not be forwarded, or a response body not relayed to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("connecting to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimedOut { addr: SocketAddr },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// From hyper's client connection, or the upstream body it relays.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The answer of a direct exchange is not a usable response.
    #[error(transparent)]
    Response(#[from] h1::Error),
    #[error("upstream switched protocols unasked")]
    SwitchedUnasked,
    #[error("upstream closed the connection in the middle of a response head")]
    ClosedInHead,
    #[error("upstream closed the connection without answering")]
    Unanswered,
}

type Idle<T> = Mutex<HashMap<SocketAddr, Vec<Aging<T>>, BuildHasherDefault<AddrHasher>>>;

/// One thread's idle upstream connections.
pub(crate) struct Pool {
    direct: Idle<Direct>,
    hyper: Idle<SendRequest<GuardedBody>>,
    builder: http1::Builder,
}

/// An idle connection and the sweeps it has seen unused.
struct Aging<T> {
    conn: T,
    sweeps: u8,
}

/// A connection spoken to directly: the socket, what was read past the last response, and the
/// buffer request heads are written into.
pub(crate) struct Direct {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

/// A hyper connection whose response is being relayed; [`Reusable::release`] it once the
/// response body has been read to the end, and it serves the next request.
pub(crate) struct Reusable {
    pool: Arc<Pool>,
    addr: SocketAddr,
    tx: SendRequest<GuardedBody>,
}

impl Reusable {
    /// Puts the connection back in its pool.
    pub fn release(self) {
        if !self.tx.is_closed() {
            put(&self.pool.hyper, self.addr, self.tx);
        }
    }
}

impl Pool {
    /// An empty pool; with a runtime at hand, also a task closing expired idle connections.
    pub fn new() -> Arc<Pool> {
        let mut builder = http1::Builder::new();
        // Request heads go out in one plain write, as the server side does.
        builder.writev(false);
        let pool = Arc::new(Pool {
            direct: Idle::default(),
            hyper: Idle::default(),
            builder,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// A direct connection to `addr` for a request without a body: an idle one, or a new one.
    /// Write the request head into [`Checkout::head`], then [`Checkout::exchange`] it.
    pub async fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Result<Checkout, Error> {
        let (mut conn, reused) = match self.take_direct(addr) {
            Some(conn) => (conn, true),
            None => (Direct::connect(addr).await?, false),
        };
        conn.write.clear();
        Ok(Checkout {
            pool: self.clone(),
            addr,
            conn,
            reused,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` through hyper, on an idle connection
    /// or a new one; a request that an idle connection closed under it before it was sent is
    /// retried on another.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<GuardedBody>,
    ) -> Result<(Response<Incoming>, Reusable), Error> {
        loop {
            let (mut tx, reused) = match self.take_hyper(addr) {
                Some(tx) => (tx, true),
                None => (self.handshake(addr).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let conn = Reusable {
                        pool: self.clone(),
                        addr,
                        tx,
                    };
                    return Ok((resp, conn));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle direct connection to `addr` the upstream has not closed.
    fn take_direct(&self, addr: SocketAddr) -> Option<Direct> {
        let mut idle = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some(idle) = conns.pop() {
            if idle.conn.is_quiet() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// The most recently used idle hyper connection to `addr` that is ready for a request.
    fn take_hyper(&self, addr: SocketAddr) -> Option<SendRequest<GuardedBody>> {
        let mut idle = self.hyper.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some(i) = conns
            .iter()
            .rposition(|c| c.conn.is_ready() || c.conn.is_closed())
        {
            let idle = conns.swap_remove(i);
            if idle.conn.is_ready() {
                return Some(idle.conn);
            }
        }
        None
    }

    async fn handshake(&self, addr: SocketAddr) -> Result<SendRequest<GuardedBody>, Error> {
        let stream = connect(addr).await?;
        let (tx, conn) = self.builder.handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %err, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// Closes connections idle for too long or closed by their upstream, and forgets upstreams
    /// with none left.
    fn expire(&self) {
        expire(&self.direct, |c| c.is_quiet());
        expire(&self.hyper, |c| !c.is_closed());
    }
}

fn put<T>(idle: &Idle<T>, addr: SocketAddr, conn: T) {
    let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
    let conns = idle.entry(addr).or_default();
    if conns.len() < MAX_IDLE_PER_UPSTREAM {
        conns.push(Aging { conn, sweeps: 0 });
    }
}

fn expire<T>(idle: &Idle<T>, mut alive: impl FnMut(&mut T) -> bool) {
    let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
    idle.retain(|_, conns| {
        conns.retain_mut(|c| {
            c.sweeps += 1;
            c.sweeps < IDLE_SWEEPS && alive(&mut c.conn)
        });
        !conns.is_empty()
    });
}

async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.expire(),
            None => return,
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(Error::Connect { addr, error }),
        Err(_) => return Err(Error::ConnectTimedOut { addr }),
    };
    // Requests are written whole; Nagle would only delay them.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Safe to send again when the first attempt may have reached the upstream (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A direct connection checked out for one request.
pub(crate) struct Checkout {
    pool: Arc<Pool>,
    addr: SocketAddr,
    conn: Direct,
    reused: bool,
}

impl Checkout {
    /// The buffer the request head goes into, empty.
    pub fn head(&mut self) -> &mut Vec<u8> {
        &mut self.conn.write
    }

    /// Sends the request head and reads the response head. A reused connection the upstream
    /// closed meanwhile is replaced by a new one when that is safe: the request is idempotent,
    /// or it could not even be written. `spare`: an empty header map to reuse for the response.
    pub async fn exchange(
        self,
        method: &Method,
        mut spare: HeaderMap,
    ) -> Result<(response::Parts, DirectBody), Error> {
        let Checkout {
            pool,
            addr,
            mut conn,
            mut reused,
        } = self;
        let head_request = *method == Method::HEAD;
        loop {
            let sent = match conn.stream.write_all(&conn.write).await {
                Ok(()) => conn.read_head(head_request, &mut spare).await,
                Err(err) => Err(Failure::Unsent(err.into())),
            };
            match sent {
                Ok(head) => {
                    let mut resp = Response::new(());
                    *resp.status_mut() = head.status;
                    // Whatever the upstream spoke, the client is answered in its own version.
                    *resp.version_mut() = hyper::Version::HTTP_11;
                    *resp.headers_mut() = head.headers;
                    let body = DirectBody {
                        conn: Some(conn),
                        decoder: head.decoder,
                        keep_alive: head.keep_alive,
                        pool,
                        addr,
                    };
                    return Ok((resp.into_parts().0, body));
                }
                Err(failure) => {
                    let retry = reused
                        && match failure {
                            Failure::Unsent(_) => true,
                            Failure::Unanswered(_) => is_idempotent(method),
                            Failure::Broken(_) => false,
                        };
                    let (Failure::Unsent(err) | Failure::Unanswered(err) | Failure::Broken(err)) =
                        failure;
                    if !retry {
                        return Err(err);
                    }
                    tracing::debug!(%addr, error = %err, "idle upstream connection was closed; retrying");
                    let head = std::mem::take(&mut conn.write);
                    conn = Direct::connect(addr).await?;
                    conn.write = head;
                    reused = false;
                }
            }
        }
    }
}

/// How a direct exchange failed.
enum Failure {
    /// The request could not be written: on a reused connection, closed by the upstream while
    /// idle; the upstream has seen nothing.
    Unsent(Error),
    /// Nothing came back: on a reused connection, most likely closed by the upstream while idle.
    Unanswered(Error),
    /// The upstream answered something that is not a usable response.
    Broken(Error),
}

impl Direct {
    async fn connect(addr: SocketAddr) -> Result<Direct, Error> {
        Ok(Direct {
            stream: connect(addr).await?,
            read: BytesMut::with_capacity(READ_SIZE),
            write: Vec::with_capacity(1024),
        })
    }

    /// Whether the idle connection has nothing to read: neither the upstream's close nor stray
    /// bytes. Costs no system call unless the socket was reported readable.
    fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads up to the end of the final response head, skipping informational (1xx) ones.
    async fn read_head(
        &mut self,
        head_request: bool,
        headers: &mut HeaderMap,
    ) -> Result<h1::Head, Failure> {
        let mut answered = false;
        loop {
            if !self.read.is_empty() {
                answered = true;
                match h1::parse_response(&mut self.read, head_request, headers) {
                    Ok(Some(head)) if head.status == hyper::StatusCode::SWITCHING_PROTOCOLS => {
                        return Err(Failure::Broken(Error::SwitchedUnasked))
                    }
                    Ok(Some(head)) if head.status.is_informational() => continue,
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(err) => return Err(Failure::Broken(err.into())),
                }
            }
            self.make_room(READ_SIZE / 2);
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) if answered => return Err(Failure::Broken(Error::ClosedInHead)),
                Ok(0) => return Err(Failure::Unanswered(Error::Unanswered)),
                Ok(_) => {}
                Err(err) if answered => return Err(Failure::Broken(err.into())),
                Err(err) => return Err(Failure::Unanswered(err.into())),
            }
        }
    }

    /// Makes room for a read of `want` bytes, reusing the buffer when nothing else holds it.
    fn make_room(&mut self, want: usize) {
        if self.read.capacity() - self.read.len() < want {
            self.read.reserve(want);
        }
    }

    /// Reads more of a body; `left`: how much of it is still to come, when known.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        left: Option<u64>,
    ) -> Poll<std::io::Result<usize>> {
        let want = left.map_or(BODY_READ_SIZE, |n| n.min(BODY_READ_SIZE as u64) as usize);
        self.make_room(want.max(READ_SIZE / 2));
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.read) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

/// A response body read straight off a direct connection, which goes back to its pool once the
/// body has been read to its end (and is closed if the body is dropped before).
pub(crate) struct DirectBody {
    conn: Option<Direct>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl DirectBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Bytes past the end of the response are not ours to guess about: close.
            if self.keep_alive && conn.read.is_empty() {
                put(&self.pool.direct, self.addr, conn);
            }
        }
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.finish();
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.read) {
                Ok(Some(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
            match ready!(conn.poll_fill(cx, this.decoder.remaining())) {
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(this.decoder.eof().err().map(|e| Err(e.into())));
                }
                Ok(_) => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Hashes an upstream address in a few instructions: the keys are a handful of container
/// addresses chosen by the control plane, not by clients, so flooding is not a concern.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}
