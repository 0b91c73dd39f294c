//! The hot path: one request in, routed, forwarded, answered; counted while its body streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::listen::{Shared, TrackToken};

/// The reserved path every public port answers for load balancers.
const HEALTH_PATH: &str = "/starphleet/health";
/// The tracing target of the access log, one event per request.
const ACCESS: &str = "starphleet::access";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// What a connection knows about itself, shared by its requests.
pub(crate) struct ConnCtx {
    /// The proxy's state.
    pub shared: Arc<Shared>,
    /// The public port the connection came in on, which selects its routes.
    pub port: u16,
    /// The client's address, for the access log.
    pub peer: SocketAddr,
    /// The client IP, formatted once per connection for `X-Forwarded-For`.
    client_ip: HeaderValue,
}

impl ConnCtx {
    /// The context of a connection accepted from `peer` on `port`.
    pub fn new(shared: Arc<Shared>, port: u16, peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        ConnCtx {
            shared,
            port,
            peer: SocketAddr::new(ip, peer.port()),
            client_ip: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
        }
    }
}

/// Serves one request; never fails, errors become 502/503/404 pages.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let shared = &conn.shared;
    if req.uri().path() == HEALTH_PATH {
        let (status, body) = if shared.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else {
            (StatusCode::OK, "ok")
        };
        return Ok(local(&conn, &req, start, None, status, body));
    }

    // Pick an upstream and count it in flight, then make sure the table did not change meanwhile:
    // once a swap is visible, a request counted against the old table is always re-routed, so a
    // control plane that swapped and then reads an old container's count at 0 can stop it safely.
    let mut table = shared.table.load_full();
    let (route, rest, upstream, in_flight) = loop {
        let Some((route, rest)) = table.lookup(conn.port, req.uri().path()) else {
            let body = format!(
                "starphleet ship {}: nothing is published at {}\n",
                table.table.ship,
                req.uri().path()
            );
            return Ok(local(&conn, &req, start, None, StatusCode::NOT_FOUND, body));
        };
        let Some(upstream) = route.pick() else {
            route.requests.fetch_add(1, Ordering::Relaxed);
            let service = route.service.clone();
            let body = format!(
                "starphleet ship {}: service {service} has no running version yet\n",
                table.table.ship
            );
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let mut resp = local(&conn, &req, start, Some(service), status, body);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, route.retry_after.clone());
            return Ok(resp);
        };
        let in_flight = InFlight::new(&upstream.in_flight);
        let current = shared.table.load();
        if Arc::ptr_eq(&table, &current) {
            break (route, rest, upstream, in_flight);
        }
        drop(in_flight);
        table = arc_swap::Guard::into_inner(current);
    };
    route.requests.fetch_add(1, Ordering::Relaxed);
    let path_and_query = upstream_path(req.uri(), route.is_root(), rest);

    let (mut parts, body) = req.into_parts();
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .expect("scheme, authority and path are valid");
    let original_uri = std::mem::replace(&mut parts.uri, uri);
    let method = parts.method.clone();

    let client_upgrade = if is_upgrade(parts.version, &parts.headers) {
        strip_keeping_upgrade(&mut parts.headers);
        parts.extensions.remove::<OnUpgrade>()
    } else {
        strip_hop_by_hop(&mut parts.headers);
        None
    };
    set_forwarded(
        &mut parts.headers,
        &original_uri,
        &conn.client_ip,
        route.forwarded_prefix.as_ref(),
    );
    parts.version = Version::HTTP_11;

    let log = AccessLog::enabled().then(|| AccessLog {
        method,
        uri: original_uri,
        status: StatusCode::BAD_GATEWAY,
        start,
        service: Some(route.service.clone()),
        container: Some(upstream.container.clone()),
        client: conn.peer,
    });
    let mut done = Done {
        in_flight: Some(in_flight),
        log,
        bytes: 0,
    };

    let mut resp = match shared
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(resp) => resp,
        Err(err) => {
            tracing::warn!(
                service = %route.service,
                container = %upstream.container,
                error = %ErrorChain(&err),
                "upstream did not answer"
            );
            let body = format!(
                "starphleet ship {}: service {} did not answer\n",
                table.table.ship, route.service
            );
            return Ok(text(StatusCode::BAD_GATEWAY, body.into(), done));
        }
    };
    done.set_status(resp.status());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some((client, upstream_io)) =
            client_upgrade.zip(resp.extensions_mut().remove::<OnUpgrade>())
        else {
            // A switch the client did not ask for cannot be relayed.
            tracing::warn!(service = %route.service, "upstream switched protocols unasked");
            let body = format!(
                "starphleet ship {}: service {} switched protocols unasked\n",
                table.table.ship, route.service
            );
            return Ok(text(StatusCode::BAD_GATEWAY, body.into(), done));
        };
        tokio::spawn(splice(client, upstream_io, done, shared.tracker.token()));
        let (mut parts, _) = resp.into_parts();
        strip_keeping_upgrade(&mut parts.headers);
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        ProxyBody {
            kind: Kind::Upstream(body),
            done: Some(done),
        },
    ))
}

/// The upstream's path: the prefix stripped (`/echo/Hi` → `/Hi`, `/echo` → `/`), query kept.
fn upstream_path(uri: &Uri, root: bool, rest: &str) -> PathAndQuery {
    if root {
        return uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let query = uri.query();
    let mut s = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(s)).expect("a suffix of a valid path is valid")
}

/// A proxy-made text response (health, 404, 502, 503), logged like any other.
fn local(
    conn: &ConnCtx,
    req: &Request<Incoming>,
    start: Instant,
    service: Option<Arc<str>>,
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let log = AccessLog::enabled().then(|| AccessLog {
        method: req.method().clone(),
        uri: req.uri().clone(),
        status,
        start,
        service,
        container: None,
        client: conn.peer,
    });
    let done = Done {
        in_flight: None,
        log,
        bytes: 0,
    };
    text(status, body.into(), done)
}

fn text(status: StatusCode, body: Bytes, mut done: Done) -> Response<ProxyBody> {
    done.set_status(status);
    let mut resp = Response::new(ProxyBody {
        kind: Kind::Local(Some(body)),
        done: Some(done),
    });
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, TEXT_PLAIN);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An HTTP/1.1 request asking to switch protocols (websocket and the like).
fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Hop-by-hop headers describe one connection, not the message: they must not be forwarded.
fn is_standard_hop(name: &str) -> bool {
    [
        "keep-alive",
        "close",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-connection",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Headers the sender named in `Connection` are hop-by-hop too; rarely any beyond the
        // standard ones, so only then pay for collecting their names.
        if connection_tokens(headers).any(|t| !is_standard_hop(t)) {
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Strips hop-by-hop headers except the protocol switch itself, which must reach the other side.
fn strip_keeping_upgrade(headers: &mut HeaderMap) {
    let protocol = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Tells the service who asked and how: client IP appended to `X-Forwarded-For`, the original
/// host and scheme, and the prefix the proxy stripped.
fn set_forwarded(
    headers: &mut HeaderMap,
    uri: &Uri,
    client_ip: &HeaderValue,
    prefix: Option<&HeaderValue>,
) {
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need it as a header.
        None => uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .inspect(|h| {
                headers.insert(header::HOST, h.clone());
            }),
    };
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };

    let mut earlier = headers.get_all(X_FORWARDED_FOR).iter();
    let forwarded_for = match (earlier.next(), earlier.next()) {
        (None, _) => client_ip.clone(),
        (Some(first), more) => {
            let mut chain = first.as_bytes().to_vec();
            for v in more.into_iter().chain(earlier) {
                chain.extend_from_slice(b", ");
                chain.extend_from_slice(v.as_bytes());
            }
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match prefix {
        Some(p) => headers.insert(X_FORWARDED_PREFIX, p.clone()),
        None => headers.remove(X_FORWARDED_PREFIX),
    };
}

/// Joins the client's and the upstream's upgraded connections until either side closes; the
/// upstream stays counted in flight (and the proxy waits for it on shutdown) until then.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, mut done: Done, _alive: TrackToken) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((_, to_client)) => done.bytes = to_client,
                Err(err) => tracing::debug!(error = %err, "upgraded connection ended"),
            }
        }
        Err(err) => tracing::debug!(error = %err, "upgrade failed"),
    }
}

/// Counts one request in flight on an upstream until dropped.
pub(crate) struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The end of a request: releases its in-flight count and writes its access log line.
pub(crate) struct Done {
    in_flight: Option<InFlight>,
    log: Option<AccessLog>,
    bytes: u64,
}

impl Done {
    fn set_status(&mut self, status: StatusCode) {
        if let Some(log) = &mut self.log {
            log.status = status;
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.in_flight.take();
        if let Some(log) = &self.log {
            tracing::info!(
                target: ACCESS,
                method = %log.method,
                path = %log.uri,
                status = log.status.as_u16(),
                bytes = self.bytes,
                duration_ms = log.start.elapsed().as_secs_f64() * 1000.0,
                service = log.service.as_deref().unwrap_or("-"),
                container = log.container.as_deref().unwrap_or("-"),
                client = %log.client,
            );
        }
    }
}

/// What the access log says about a request, gathered only when someone listens.
struct AccessLog {
    method: Method,
    uri: Uri,
    status: StatusCode,
    start: Instant,
    service: Option<Arc<str>>,
    container: Option<Arc<str>>,
    client: SocketAddr,
}

impl AccessLog {
    fn enabled() -> bool {
        tracing::enabled!(target: ACCESS, tracing::Level::INFO)
    }
}

/// A response body: the upstream's, streamed, or one the proxy made. Ends its request's [`Done`]
/// when it finishes or is dropped (the client went away).
pub(crate) struct ProxyBody {
    kind: Kind,
    done: Option<Done>,
}

enum Kind {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

impl ProxyBody {
    fn empty() -> Self {
        ProxyBody {
            kind: Kind::Local(None),
            done: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Local(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(done)) = (frame.data_ref(), &mut this.done) {
                    done.bytes += data.len() as u64;
                }
            }
            Poll::Ready(_) => this.done = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Local(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Local(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Shows an error with its causes, which hyper keeps in the source chain.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
