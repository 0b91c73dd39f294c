//! Forwarding log records, as they are stored, to a syslog server (RFC 5424 over TCP with
//! RFC 6587 octet counting) or an OTLP/HTTP collector (JSON encoding), for setups bigger
//! than one ship. The endpoints are named in `.starphleet` (see [`ForwardTarget::from_settings`]).
//!
//! Back-pressure never reaches the services. [`LogStore::append`] hands records to a
//! broadcast channel that never waits for its receivers; a [`Forwarder`] moves them into its
//! own bounded queue and sends from there. When the endpoint is slow or down the queue keeps
//! the newest records and drops the oldest (counted in [`ForwardStats::dropped`]), while the
//! forwarder retries with back-off (100 ms doubling to 5 s). A batch that failed to go out is
//! put back at the head of the queue, so delivery resumes in order once the endpoint is back.
//!
//! Delivery is best effort: syslog over TCP has no acknowledgements, so lines written just
//! before the server closed the connection can be lost (RFC 6587 §4.3.1); an OTLP batch whose
//! response was lost is sent again.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::record::{format_time, now_ns, Record};
use crate::store::LogStore;

/// The `.starphleet` key naming a syslog server: `tcp://host:port`.
pub const SYSLOG_SETTING: &str = "STARPHLEET_LOG_SYSLOG";
/// The `.starphleet` key naming an OTLP/HTTP logs endpoint: `http://host:port/v1/logs`.
pub const OTLP_SETTING: &str = "STARPHLEET_LOG_OTLP";

/// At most this many records wait in a forwarder's queue; older ones are dropped.
const QUEUE_RECORDS: usize = 8192;
/// At most about this many bytes of records wait in a forwarder's queue.
const QUEUE_BYTES: usize = 8 << 20;
/// At most this many records go out in one syslog write or OTLP request.
const BATCH_RECORDS: usize = 512;
/// An OTLP batch waits this long for more records before it is sent.
const OTLP_LINGER: Duration = Duration::from_millis(200);
/// The first retry delay after a failure; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connect, write or request taking longer than this fails (and is retried).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Syslog facility local0.
const SYSLOG_FACILITY: u8 = 16;
/// The structured-data id of the version and stream (32473 is the documentation enterprise
/// number of RFC 5612).
const SD_ID: &str = "starphleet@32473";
/// APP-NAME and `service.name` of ship-wide records, which have no service.
const SHIP_APP: &str = "starphleet";

/// A log-forwarding setting in `.starphleet` that names no usable endpoint; the message
/// names the key, the value, what is wrong and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardTargetError {
    /// A bad [`SYSLOG_SETTING`].
    #[error(
        "{key}={value:?}: {reason}; expected tcp://host:port, e.g. tcp://logs.example.com:514",
        key = SYSLOG_SETTING
    )]
    Syslog {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad [`OTLP_SETTING`].
    #[error(
        "{key}={value:?}: {reason}; expected http://host:port/v1/logs, \
         e.g. http://otel-collector:4318/v1/logs",
        key = OTLP_SETTING
    )]
    Otlp {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where to forward logs; parsed from `.starphleet` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardTarget {
    /// A syslog server taking RFC 5424 messages over TCP with octet-counting framing.
    Syslog {
        /// `host:port` (an IPv6 host in brackets).
        addr: String,
    },
    /// An OTLP/HTTP logs endpoint taking JSON.
    Otlp {
        /// The full URL posted to, e.g. `http://collector:4318/v1/logs`.
        url: String,
    },
}

impl ForwardTarget {
    /// Reads `STARPHLEET_LOG_SYSLOG=tcp://host:port` and `STARPHLEET_LOG_OTLP=http://host:port/v1/logs`
    /// from settings pairs (the last of a repeated key wins, an empty value turns it off);
    /// errors name the key and the expected form.
    pub fn from_settings(
        settings: &[(String, String)],
    ) -> Result<Vec<ForwardTarget>, ForwardTargetError> {
        let last = |key: &str| {
            settings
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let mut targets = Vec::new();
        if let Some(value) = last(SYSLOG_SETTING) {
            targets.push(parse_syslog(value)?);
        }
        if let Some(value) = last(OTLP_SETTING) {
            targets.push(parse_otlp(value)?);
        }
        Ok(targets)
    }
}

/// `syslog tcp://host:port` or `otlp http://…`, for logs and status output.
impl fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardTarget::Syslog { addr } => write!(f, "syslog tcp://{addr}"),
            ForwardTarget::Otlp { url } => write!(f, "otlp {url}"),
        }
    }
}

fn parse_syslog(value: &str) -> Result<ForwardTarget, ForwardTargetError> {
    let bad = |why: &str| ForwardTargetError::Syslog {
        value: value.to_string(),
        reason: why.to_string(),
    };
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tcp") => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "{scheme}:// is not supported (only syslog over plain TCP)"
            )))
        }
        None => return Err(bad("the tcp:// scheme is missing")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(bad("a syslog address has no path or spaces"));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(bad("the port is missing"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad(
            "the host is missing (write an IPv6 address in brackets, e.g. [::1]:514)",
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(ForwardTarget::Syslog {
            addr: rest.to_string(),
        }),
        _ => Err(bad(&format!("{port:?} is not a port number"))),
    }
}

fn parse_otlp(value: &str) -> Result<ForwardTarget, ForwardTargetError> {
    let bad = |why: &str| ForwardTargetError::Otlp {
        value: value.to_string(),
        reason: why.to_string(),
    };
    match value.split_once("://").map(|(scheme, _)| scheme) {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) if s.eq_ignore_ascii_case("https") => {
            return Err(bad(
                "https is not supported, the ship has no TLS client; send over http:// to a \
                 collector on a trusted network (e.g. an OpenTelemetry Collector on the host) \
                 and let it forward over TLS",
            ))
        }
        Some(s) => return Err(bad(&format!("{s}:// is not supported"))),
        None => return Err(bad("the http:// scheme is missing")),
    }
    let uri: Uri = value
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e})")))?;
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("the host is missing"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/v1/logs",
        Some(p) => p,
    };
    Ok(ForwardTarget::Otlp {
        url: format!("http://{authority}{path}"),
    })
}

/// Counters of one forwarder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStats {
    /// Records the endpoint took.
    pub sent: u64,
    /// Records given up on: the queue overflowed, the forwarder fell behind the store, or the
    /// endpoint rejected them as invalid.
    pub dropped: u64,
    /// Failed connects, writes and requests (each retried after a back-off unless rejected).
    pub errors: u64,
    /// The most recent error.
    pub last_error: Option<String>,
    /// Whether the last attempt reached the endpoint (a connection is up, a request answered).
    pub connected: bool,
    /// Records waiting in the queue.
    pub queued: u64,
}

/// A running forwarder; dropping it stops it.
pub struct Forwarder {
    target: ForwardTarget,
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

impl Forwarder {
    /// Starts forwarding every record appended to `store` from now on; must be called inside
    /// a tokio runtime.
    pub fn spawn(store: &LogStore, target: ForwardTarget) -> Forwarder {
        let shared = Arc::new(Shared::default());
        let live = store.subscribe();
        let sink = match &target {
            ForwardTarget::Syslog { addr } => Sink::Syslog(SyslogSink {
                addr: addr.clone(),
                stream: None,
                buf: Vec::new(),
            }),
            ForwardTarget::Otlp { url } => Sink::Otlp(Box::new(OtlpSink::new(url))),
        };
        let tasks = [
            tokio::spawn(read_live(live, shared.clone())),
            tokio::spawn(send_queued(sink, shared.clone(), target.to_string())),
        ];
        Forwarder {
            target,
            shared,
            tasks,
        }
    }

    /// Where this forwarder sends.
    pub fn target(&self) -> &ForwardTarget {
        &self.target
    }

    /// Its counters now.
    pub fn stats(&self) -> ForwardStats {
        let s = &self.shared;
        ForwardStats {
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            last_error: lock(&s.last_error).clone(),
            connected: s.connected.load(Ordering::Relaxed),
            queued: lock(&s.queue).records.len() as u64,
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the two tasks of a forwarder share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the sender when records are queued or the store is gone.
    wake: Notify,
    /// The store is gone: no more records will come.
    closed: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Records waiting to be sent, oldest first, capped in count and size.
#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    bytes: usize,
    /// How often the queue was emptied because newer records were lost.
    clears: u64,
}

impl Queue {
    /// Drops everything queued (newer records were lost); returns how many.
    fn clear(&mut self) -> u64 {
        let n = self.records.len() as u64;
        self.records.clear();
        self.bytes = 0;
        self.clears += 1;
        n
    }

    /// Whether the queue was emptied since `clears` was read.
    fn cleared_since(&self, clears: u64) -> bool {
        self.clears != clears
    }

    fn push_back(&mut self, r: Record) {
        self.bytes += size(&r);
        self.records.push_back(r);
    }

    /// Puts a batch that failed back at the head, in its order.
    fn push_front(&mut self, batch: Vec<Record>) {
        for r in batch.into_iter().rev() {
            self.bytes += size(&r);
            self.records.push_front(r);
        }
    }

    /// Drops the oldest records until the queue is within its caps; returns how many.
    fn trim(&mut self) -> u64 {
        let mut dropped = 0;
        while self.records.len() > QUEUE_RECORDS
            || (self.bytes > QUEUE_BYTES && self.records.len() > 1)
        {
            let r = self.records.pop_front().expect("queue is not empty");
            self.bytes -= size(&r);
            dropped += 1;
        }
        dropped
    }

    fn take(&mut self, n: usize) -> Vec<Record> {
        let batch: Vec<Record> = self.records.drain(..n.min(self.records.len())).collect();
        self.bytes -= batch.iter().map(size).sum::<usize>();
        batch
    }
}

/// About what a record costs in memory.
fn size(r: &Record) -> usize {
    64 + r.ship.len()
        + r.service.len()
        + r.version.len()
        + r.container.len()
        + r.stream.len()
        + r.line.len()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves live records into the queue as they come, counting what overflows.
async fn read_live(mut live: broadcast::Receiver<Record>, shared: Arc<Shared>) {
    loop {
        let mut next = live.recv().await;
        let mut dropped = 0;
        let mut closed = false;
        {
            let mut queue = lock(&shared.queue);
            // Take whatever else is ready under the same lock, up to a batch.
            for taken in 1.. {
                match next {
                    Ok(r) => queue.push_back(r),
                    // Records newer than the queued ones were lost: drop the queued ones too,
                    // so what is kept stays one unbroken run of the newest records.
                    Err(RecvError::Lagged(n)) => dropped += n + queue.clear(),
                    Err(RecvError::Closed) => closed = true,
                }
                if closed || taken == BATCH_RECORDS {
                    break;
                }
                next = match live.try_recv() {
                    Ok(r) => Ok(r),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Err(TryRecvError::Empty) => break,
                };
            }
            dropped += queue.trim();
        }
        shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        if closed {
            shared.closed.store(true, Ordering::Relaxed);
        }
        shared.wake.notify_one();
        if closed {
            return;
        }
    }
}

/// Waits for queued records (and up to `linger` for a full batch), with how often the queue
/// had been cleared when they were taken; `None` once the store is gone and everything was
/// taken.
async fn next_batch(shared: &Shared, linger: Duration) -> Option<(Vec<Record>, u64)> {
    loop {
        if !lock(&shared.queue).records.is_empty() {
            break;
        }
        if shared.closed.load(Ordering::Relaxed) {
            return None;
        }
        shared.wake.notified().await;
    }
    if !linger.is_zero() {
        let deadline = Instant::now() + linger;
        while lock(&shared.queue).records.len() < BATCH_RECORDS
            && !shared.closed.load(Ordering::Relaxed)
            && timeout_at(deadline, shared.wake.notified()).await.is_ok()
        {}
    }
    let mut queue = lock(&shared.queue);
    Some((queue.take(BATCH_RECORDS), queue.clears))
}

/// Sends queued batches, retrying failures with back-off, until the store is gone.
async fn send_queued(mut sink: Sink, shared: Arc<Shared>, name: String) {
    let mut backoff = BACKOFF_MIN;
    while let Some((batch, taken_at)) = next_batch(&shared, sink.linger()).await {
        let n = batch.len() as u64;
        let result = sink.send(&batch).await;
        let reached = !matches!(result, Err(SendError::Retry(_)));
        let was_connected = shared.connected.swap(reached, Ordering::Relaxed);
        match result {
            Ok(mut rejected) => {
                rejected.count = rejected.count.min(n);
                shared.sent.fetch_add(n - rejected.count, Ordering::Relaxed);
                if rejected.count > 0 {
                    shared.dropped.fetch_add(rejected.count, Ordering::Relaxed);
                    let msg = format!(
                        "{name} rejected {} of {n} records: {}",
                        rejected.count, rejected.message
                    );
                    *lock(&shared.last_error) = Some(msg);
                }
                if !was_connected {
                    tracing::info!("forwarding logs to {name}");
                }
                backoff = BACKOFF_MIN;
            }
            Err(SendError::Reject(msg)) => {
                // Sending the same records again would fail the same way.
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("{name} rejected {n} log records: {msg}");
                *lock(&shared.last_error) = Some(msg);
                backoff = BACKOFF_MIN;
            }
            Err(SendError::Retry(msg)) => {
                // Logged once per outage, not per retry: the log may itself be forwarded.
                if was_connected || shared.errors.load(Ordering::Relaxed) == 0 {
                    tracing::warn!("cannot forward logs to {name} (retrying): {msg}");
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(msg);
                let dropped = {
                    let mut queue = lock(&shared.queue);
                    if queue.cleared_since(taken_at) {
                        // Newer records were lost meanwhile: putting these back would leave a gap.
                        n
                    } else {
                        queue.push_front(batch);
                        queue.trim()
                    }
                };
                shared.dropped.fetch_add(dropped, Ordering::Relaxed);
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Records an endpoint accepted but refused in part (OTLP partial success).
struct Rejected {
    count: u64,
    message: String,
}

enum SendError {
    /// The endpoint could not be reached or had trouble: try the batch again later.
    Retry(String),
    /// The endpoint refused the batch itself: drop it.
    Reject(String),
}

enum Sink {
    Syslog(SyslogSink),
    Otlp(Box<OtlpSink>),
}

impl Sink {
    fn linger(&self) -> Duration {
        match self {
            Sink::Syslog(_) => Duration::ZERO,
            Sink::Otlp(_) => OTLP_LINGER,
        }
    }

    async fn send(&mut self, batch: &[Record]) -> Result<Rejected, SendError> {
        match self {
            Sink::Syslog(s) => s.send(batch).await,
            Sink::Otlp(s) => s.send(batch).await,
        }
    }
}

struct SyslogSink {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl SyslogSink {
    async fn send(&mut self, batch: &[Record]) -> Result<Rejected, SendError> {
        if let Some(stream) = &self.stream {
            // A syslog server never talks back: readable means it closed the connection (or
            // sent something we ignore). Reconnect now rather than write into a dead socket.
            let mut scratch = [0u8; 256];
            match stream.try_read(&mut scratch) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(n) if n > 0 => {}
                _ => {
                    tracing::debug!("syslog {} closed the connection; reconnecting", self.addr);
                    self.stream = None;
                }
            }
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = match timeout(IO_TIMEOUT, TcpStream::connect(&self.addr)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        return Err(SendError::Retry(format!(
                            "connecting to syslog {}: {e}",
                            self.addr
                        )))
                    }
                    Err(_) => {
                        return Err(SendError::Retry(format!(
                            "connecting to syslog {}: timed out after {IO_TIMEOUT:?}",
                            self.addr
                        )))
                    }
                };
                self.stream.insert(stream)
            }
        };
        self.buf.clear();
        for r in batch {
            push_syslog_frame(&mut self.buf, r);
        }
        let error = match timeout(IO_TIMEOUT, stream.write_all(&self.buf)).await {
            Ok(Ok(())) => {
                return Ok(Rejected {
                    count: 0,
                    message: String::new(),
                })
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {IO_TIMEOUT:?} (the server is not reading)"),
        };
        self.stream = None;
        Err(SendError::Retry(format!(
            "writing to syslog {}: {error}",
            self.addr
        )))
    }
}

/// Appends one record as an octet-counted RFC 5424 message (`LEN SP MSG`):
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
fn push_syslog_frame(out: &mut Vec<u8>, r: &Record) {
    let severity = if r.stream == "stderr" { 3 } else { 6 };
    let mut msg = String::with_capacity(128 + r.line.len());
    msg.push_str(&format!(
        "<{}>1 {} ",
        SYSLOG_FACILITY * 8 + severity,
        format_time(r.time_ns)
    ));
    push_header_field(&mut msg, &r.ship, 255);
    msg.push(' ');
    let app = if r.service.is_empty() {
        SHIP_APP
    } else {
        &r.service
    };
    push_header_field(&mut msg, app, 48);
    msg.push(' ');
    push_header_field(&mut msg, &r.container, 128);
    msg.push(' ');
    push_header_field(&mut msg, r.kind.as_str(), 32);
    msg.push_str(" [");
    msg.push_str(SD_ID);
    for (name, value) in [("version", &r.version), ("stream", &r.stream)] {
        if !value.is_empty() {
            msg.push_str(&format!(" {name}=\""));
            for c in value.chars() {
                if matches!(c, '"' | '\\' | ']') {
                    msg.push('\\');
                }
                msg.push(c);
            }
            msg.push('"');
        }
    }
    msg.push_str("] ");
    // RFC 5424 §6.4: a UTF-8 MSG starts with a BOM; plain ASCII is valid as it is.
    if !r.line.is_ascii() {
        msg.push('\u{feff}');
    }
    msg.push_str(&r.line);
    let mut len = itoa::Buffer::new();
    out.extend_from_slice(len.format(msg.len()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// A header field: printable US-ASCII (others become `_`), at most `max` long, `-` if empty.
fn push_header_field(out: &mut String, value: &str, max: usize) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    out.extend(
        value
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
    );
}

struct OtlpSink {
    url: String,
    uri: Result<Uri, String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl OtlpSink {
    fn new(url: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(IO_TIMEOUT));
        connector.set_nodelay(true);
        OtlpSink {
            url: url.to_string(),
            // `from_settings` checked it; a hand-made bad URL fails each request instead.
            uri: url.parse().map_err(|e| format!("{e}")),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn send(&mut self, batch: &[Record]) -> Result<Rejected, SendError> {
        let uri = self
            .uri
            .clone()
            .map_err(|e| SendError::Retry(format!("{OTLP_SETTING} {:?}: {e}", self.url)))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("starphleet/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(otlp_body(batch))))
            .map_err(|e| SendError::Retry(format!("POST {}: {e}", self.url)))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| chain(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| chain(&e))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match timeout(IO_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(SendError::Retry(format!("POST {}: {e}", self.url))),
            Err(_) => {
                return Err(SendError::Retry(format!(
                    "POST {}: no answer within {IO_TIMEOUT:?}",
                    self.url
                )))
            }
        };
        if status.is_success() {
            return Ok(partial_success(&body));
        }
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        let msg = format!("POST {}: {status}: {text}", self.url);
        // OTLP/HTTP: 429, 502, 503 and 504 are retryable; other client errors are not.
        if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
            Err(SendError::Reject(msg))
        } else {
            Err(SendError::Retry(msg))
        }
    }
}

/// An `ExportLogsServiceRequest` in the OTLP JSON encoding, one resource per ship and service.
fn otlp_body(batch: &[Record]) -> Vec<u8> {
    let observed = now_ns().to_string();
    let mut groups: Vec<((&str, &str), Vec<Value>)> = Vec::new();
    for r in batch {
        let key = (r.ship.as_str(), r.service.as_str());
        let i = match groups.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                groups.push((key, Vec::new()));
                groups.len() - 1
            }
        };
        let (number, text) = if r.stream == "stderr" {
            (17, "ERROR")
        } else {
            (9, "INFO")
        };
        groups[i].1.push(json!({
            "timeUnixNano": r.time_ns.to_string(),
            "observedTimeUnixNano": observed,
            "severityNumber": number,
            "severityText": text,
            "body": {"stringValue": r.line},
            "attributes": attributes(&[
                ("container", &r.container),
                ("version", &r.version),
                ("kind", r.kind.as_str()),
                ("stream", &r.stream),
            ]),
        }));
    }
    let resource_logs: Vec<Value> = groups
        .into_iter()
        .map(|((ship, service), records)| {
            let service = if service.is_empty() {
                SHIP_APP
            } else {
                service
            };
            json!({
                "resource": {
                    "attributes": attributes(&[("service.name", service), ("host.name", ship)]),
                },
                "scopeLogs": [{
                    "scope": {"name": "starphleet", "version": env!("CARGO_PKG_VERSION")},
                    "logRecords": records,
                }],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceLogs": resource_logs }))
        .expect("JSON values always serialise")
}

/// OTLP `KeyValue`s of the non-empty values.
fn attributes(pairs: &[(&str, &str)]) -> Value {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
        .collect()
}

/// What an OTLP response's `partialSuccess` says was rejected (nothing when absent).
fn partial_success(body: &[u8]) -> Rejected {
    let partial = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("partialSuccess").cloned());
    let count = partial
        .as_ref()
        .and_then(|p| p.get("rejectedLogRecords"))
        .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
        .unwrap_or(0);
    let message = partial
        .as_ref()
        .and_then(|p| p.get("errorMessage"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Rejected { count, message }
}

/// An error with its causes, `a: b: c` (hyper's own message alone says little).
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, RecordMeta};

    fn numbered(n: u64) -> Record {
        let meta = RecordMeta {
            ship: "s".into(),
            service: "echo".into(),
            version: "v".into(),
            container: "c".into(),
            kind: Kind::App,
            stream: "stdout".into(),
        };
        Record::now(&meta, n.to_string())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_that_falls_behind_keeps_one_unbroken_run_of_the_newest() {
        let (tx, rx) = broadcast::channel(4);
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_live(rx, shared.clone()));
        for i in 0..3 {
            tx.send(numbered(i)).unwrap();
        }
        tokio::task::yield_now().await;
        // Sent faster than it reads: the channel keeps only the newest.
        for i in 3..20 {
            tx.send(numbered(i)).unwrap();
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let kept: Vec<u64> = lock(&shared.queue)
            .records
            .iter()
            .map(|r| r.line.parse().unwrap())
            .collect();
        assert_eq!(
            kept,
            [16, 17, 18, 19],
            "no older record left before the gap"
        );
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 16);
        reader.abort();
    }
}
