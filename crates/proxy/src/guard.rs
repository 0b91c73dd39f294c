//! The clocks of one client connection: how long a request head may take to arrive (408), how
//! long a response may sit unsent because the client reads nothing, and how long the connection
//! may idle between requests. The connection's socket is wrapped in [`Guarded`], which notes
//! what it sees in a few atomics; one watchdog per connection ([`watchdog`]) reads them a few
//! times per period, so the request path pays no timer of its own.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Limits;

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the proxy answers a client whose request head took too long, before closing.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\n\r\nthe request head took too long.\r\n";

/// The shared state of one connection, between its socket, its requests and its watchdog.
pub(crate) struct ConnState {
    /// When the connection was accepted; the other times are milliseconds since then, plus one
    /// (0 means "not now").
    born: Instant,
    /// Requests started (high 32 bits) and still in progress (low 32 bits).
    activity: AtomicU64,
    /// When the first byte of a request head not yet complete arrived.
    head_since: AtomicU64,
    /// When a write to the client started waiting for it to read.
    stalled_since: AtomicU64,
    /// The connection speaks HTTP/2: heads are framed, there is no slow head to time.
    h2: AtomicBool,
    /// What the watchdog decided, for the socket to carry out.
    verdict: AtomicU8,
}

/// A snapshot of a connection's requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Activity {
    /// Requests started so far (wrapping).
    pub started: u32,
    /// Requests whose response has not been sent in full yet.
    pub active: u32,
}

/// Nothing decided.
const GO_ON: u8 = 0;
/// Answer 408, then fail the connection.
const ANSWER_408: u8 = 1;
/// Fail the connection.
const CUT: u8 = 2;

/// Why the watchdog stopped a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Idle between requests for the keep-alive period: close it gracefully.
    Idle,
    /// A request head too slow (408) or a client that stopped reading: cut it.
    Cut,
}

impl ConnState {
    /// The state of a connection accepted now; `h2` when ALPN already chose HTTP/2.
    pub fn new(h2: bool) -> Self {
        ConnState {
            born: Instant::now(),
            activity: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            stalled_since: AtomicU64::new(0),
            h2: AtomicBool::new(h2),
            verdict: AtomicU8::new(GO_ON),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    /// Requests started and in progress on this connection.
    pub fn activity(&self) -> Activity {
        let v = self.activity.load(Ordering::Relaxed);
        Activity {
            started: (v >> 32) as u32,
            active: v as u32,
        }
    }

    /// A request's head is complete and it is being served.
    pub fn request_started(&self) {
        // Started wraps in the high half; active never exceeds the requests in flight.
        self.activity.fetch_add((1 << 32) | 1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// A request's response has been sent in full, or the client went away.
    pub fn request_ended(&self) {
        self.activity.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Bytes arrived from the client.
    fn read(&self, first: bool, bytes: &[u8]) {
        if first && bytes.starts_with(&H2_PREFACE[..bytes.len().min(H2_PREFACE.len())]) {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.h2.load(Ordering::Relaxed) {
            return;
        }
        if self.activity().active == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A write to the client could (`true`) or could not (`false`) go ahead at once.
    fn wrote(&self, ready: bool) {
        let since = self.stalled_since.load(Ordering::Relaxed);
        if ready {
            if since != 0 {
                self.stalled_since.store(0, Ordering::Relaxed);
            }
        } else if since == 0 {
            self.stalled_since.store(self.now(), Ordering::Relaxed);
        }
    }
}

/// A client socket that notes what it sees in its [`ConnState`] and carries out the watchdog's
/// verdict the next time the server reads from it.
pub(crate) struct Guarded<S> {
    io: S,
    state: Arc<ConnState>,
    /// Nothing read yet: the first bytes tell HTTP/2 with prior knowledge.
    first: bool,
    /// How much of the 408 answer is written.
    answered: usize,
}

impl<S> Guarded<S> {
    /// Wraps an accepted connection.
    pub fn new(io: S, state: Arc<ConnState>) -> Self {
        Guarded {
            io,
            state,
            first: true,
            answered: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the 408 answer and flushes it; then the read fails and the server gives up.
    fn answer_408(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.answered < REQUEST_TIMEOUT.len() {
            match Pin::new(&mut self.io).poll_write(cx, &REQUEST_TIMEOUT[self.answered..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => self.answered += n,
                Poll::Ready(Err(_)) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        if Pin::new(&mut self.io).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.state.verdict.load(Ordering::Relaxed) {
            GO_ON => {}
            ANSWER_408 => return this.answer_408(cx),
            _ => return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                this.state.read(this.first, got);
                this.first = false;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.state.verdict.load(Ordering::Relaxed) == CUT {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.state.wrote(polled.is_ready());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.state.wrote(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.state.wrote(polled.is_ready());
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How often a connection's watchdog looks: a quarter of the shortest limit, within bounds, so
/// a limit is enforced within a quarter of itself late at most (2.5 s with the defaults).
fn tick(limits: &Limits) -> Duration {
    let shortest = limits
        .header_read_timeout
        .min(limits.body_idle_timeout)
        .min(limits.keep_alive_timeout);
    (shortest / 4).clamp(Duration::from_millis(20), Duration::from_millis(2500))
}

/// Returns when the connection must stop: idle for the keep-alive period ([`Stop::Idle`]), or
/// a request head too slow or a client not reading for too long ([`Stop::Cut`], with the verdict
/// left for the socket to carry out on the server's next read).
pub(crate) async fn watchdog(state: &ConnState, limits: &Limits) -> Stop {
    let tick = tick(limits);
    // Spread over the period: connections accepted in a burst do not all wake in the same
    // millisecond, every tick, stealing it from the requests being served.
    let spread = Duration::from_nanos(
        u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        ) % (tick.as_nanos() as u64).max(1),
    );
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + tick + spread, tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ms = |d: Duration| d.as_millis() as u64;
    let mut seen = state.activity();
    let mut quiet_since = state.now();
    loop {
        every.tick().await;
        let now = state.now();
        let activity = state.activity();
        let head = state.head_since.load(Ordering::Relaxed);
        if head != 0 && activity.active == 0 && now - head >= ms(limits.header_read_timeout) {
            state.verdict.store(ANSWER_408, Ordering::Relaxed);
            return Stop::Cut;
        }
        let stalled = state.stalled_since.load(Ordering::Relaxed);
        if stalled != 0 && now - stalled >= ms(limits.body_idle_timeout) {
            state.verdict.store(CUT, Ordering::Relaxed);
            return Stop::Cut;
        }
        if activity != seen || activity.active > 0 || head != 0 {
            seen = activity;
            quiet_since = now;
        } else if now - quiet_since >= ms(limits.keep_alive_timeout) {
            return Stop::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ms: u64) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(ms),
            body_idle_timeout: Duration::from_millis(ms),
            keep_alive_timeout: Duration::from_millis(ms),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn a_connection_without_requests_is_idle_after_the_keep_alive_period() {
        let state = ConnState::new(false);
        let limits = limits(100);
        let stop = tokio::time::timeout(Duration::from_secs(2), watchdog(&state, &limits)).await;
        assert_eq!(stop.unwrap(), Stop::Idle);
    }

    #[tokio::test]
    async fn a_request_in_progress_is_not_idleness() {
        let state = ConnState::new(false);
        state.request_started();
        let limits = limits(50);
        let stop =
            tokio::time::timeout(Duration::from_millis(300), watchdog(&state, &limits)).await;
        assert!(stop.is_err(), "a long response keeps the connection");
    }

    #[tokio::test]
    async fn a_head_in_progress_too_long_is_cut_with_408() {
        let state = ConnState::new(false);
        state.read(true, b"GET / HT");
        let limits = limits(100);
        let stop = tokio::time::timeout(Duration::from_secs(2), watchdog(&state, &limits)).await;
        assert_eq!(stop.unwrap(), Stop::Cut);
        assert_eq!(state.verdict.load(Ordering::Relaxed), ANSWER_408);
    }

    #[tokio::test]
    async fn http2_has_no_head_clock() {
        let state = ConnState::new(false);
        state.read(true, &H2_PREFACE[..10]);
        assert!(state.is_h2());
        assert_eq!(state.head_since.load(Ordering::Relaxed), 0);
        let state = ConnState::new(false);
        state.read(true, b"GET / HTTP/1.1\r\n");
        assert!(!state.is_h2());
        state.request_started();
        assert_eq!(state.head_since.load(Ordering::Relaxed), 0);
    }
}
