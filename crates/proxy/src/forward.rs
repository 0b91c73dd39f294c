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

use crate::listen::{Local, Shared, TrackToken};
use crate::table::{CRoute, CUpstream, Compiled, RouteAt};
use crate::upstream::{self, DirectBody, Reusable};

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
    /// The serving thread's upstream connection pool.
    local: Arc<Local>,
    /// The public port the connection came in on, which selects its routes.
    pub port: u16,
    /// The client's address, formatted once per connection for the access log.
    client: Arc<str>,
    /// The client IP, formatted once per connection for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// Requests started on this connection (high 32 bits) and still in progress (low 32 bits),
    /// for closing idle connections without a timer per request.
    activity: AtomicU64,
}

/// A snapshot of a connection's [`ConnCtx::activity`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Activity {
    /// Requests started so far (wrapping).
    pub started: u32,
    /// Requests whose response has not been sent in full yet.
    pub active: u32,
}

impl ConnCtx {
    /// The context of a connection accepted from `peer` on `port`.
    pub fn new(shared: Arc<Shared>, local: Arc<Local>, port: u16, peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        ConnCtx {
            shared,
            local,
            port,
            client: SocketAddr::new(ip, peer.port()).to_string().into(),
            client_ip: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
            activity: AtomicU64::new(0),
        }
    }

    /// Requests started and in progress on this connection.
    pub fn activity(&self) -> Activity {
        let v = self.activity.load(Ordering::Relaxed);
        Activity {
            started: (v >> 32) as u32,
            active: v as u32,
        }
    }
}

/// Marks a request in progress on its connection until its response has been sent (or the
/// client went away).
pub(crate) struct Active(Arc<ConnCtx>);

impl Active {
    fn new(conn: &Arc<ConnCtx>) -> Self {
        // Started wraps in the high half; active never exceeds the requests in flight.
        conn.activity.fetch_add((1 << 32) | 1, Ordering::Relaxed);
        Active(conn.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.activity.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request; never fails, errors become 502/503/404 pages.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let active = Active::new(&conn);
    let mut resp = forward(&conn, req).await;
    resp.body_mut().active = Some(active);
    Ok(resp)
}

async fn forward(conn: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    // For the route's latency histogram; `start` only when the access log event is wanted.
    let began = Instant::now();
    let start = AccessLog::enabled().then_some(began);
    let shared = &conn.shared;
    if req.uri().path() == HEALTH_PATH {
        let (status, body) = if shared.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else {
            (StatusCode::OK, "ok")
        };
        return local(conn, &req, (start, began), None, status, body);
    }

    // Pick an upstream and count it in flight, then make sure the table did not change meanwhile:
    // once a swap is visible, a request counted against the old table is always re-routed, so a
    // control plane that swapped and then reads an old container's count at 0 can stop it safely.
    let mut table = shared.table.load_full();
    let (at, rest, picked) = loop {
        let Some((at, rest)) = table.lookup_at(conn.port, req.uri().path()) else {
            let body = format!(
                "starphleet ship {}: nothing is published at {}\n",
                table.table.ship,
                req.uri().path()
            );
            return local(
                conn,
                &req,
                (start, began),
                None,
                StatusCode::NOT_FOUND,
                body,
            );
        };
        let route = table.route(at);
        let Some(picked) = route.pick_at() else {
            route.requests.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                "starphleet ship {}: service {} has no running version yet\n",
                table.table.ship, route.service
            );
            let retry_after = route.retry_after.clone();
            let routed = Routed {
                table: table.clone(),
                at,
                upstream: None,
            };
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let mut resp = local(conn, &req, (start, began), Some(routed), status, body);
            resp.headers_mut().insert(header::RETRY_AFTER, retry_after);
            return resp;
        };
        let in_flight = &route.upstreams[picked].in_flight;
        in_flight.enter();
        let current = shared.table.load();
        if Arc::ptr_eq(&table, &current) {
            break (at, rest, picked);
        }
        // Through `leave`: a drain watcher that saw this passing count is woken again.
        in_flight.leave();
        table = arc_swap::Guard::into_inner(current);
    };
    let route = table.route(at);
    let upstream = &route.upstreams[picked];
    route.requests.fetch_add(1, Ordering::Relaxed);
    // Where the path left after the prefix starts, to find it again once `req` is taken apart.
    let rest_at = req.uri().path().len() - rest.len();

    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let log = (start.is_some() || upstream.access.is_some()).then(|| AccessLog {
        method: method.clone(),
        uri: uri_text(&parts.uri),
        client: conn.client.clone(),
        trace: start.is_some(),
    });
    // From here on, `done` uncounts the request in flight, whatever happens.
    let mut done = Done {
        routed: Some(Routed {
            table: table.clone(),
            at,
            upstream: Some(picked),
        }),
        log,
        bytes: 0,
        status: StatusCode::BAD_GATEWAY,
        began,
    };

    let upgrade = is_upgrade(parts.version, &parts.headers);
    let mut client_upgrade = None;
    let sent = if !upgrade && body.is_end_stream() && method != Method::CONNECT {
        // Requests without a body (nearly all): the head is written straight into the upstream
        // connection's buffer, and the exchange is done by this task.
        let path = &parts.uri.path()[if route.is_root() { 0 } else { rest_at }..];
        let target = (if path.is_empty() { "/" } else { path }, parts.uri.query());
        let forwarding = Forwarding {
            client_ip: &conn.client_ip,
            prefix: route.forwarded_prefix.as_ref(),
        };
        match conn.local.pool.checkout(upstream.addr).await {
            Ok(mut checkout) => {
                write_forwarded_head(checkout.head(), &method, target, &parts, &forwarding);
                // The request's headers share the client connection's read buffer: let them go
                // before waiting, so hyper reuses that buffer in place; the emptied map holds
                // the response's headers.
                let mut spare = std::mem::take(&mut parts.headers);
                spare.clear();
                drop((parts, body));
                checkout
                    .exchange(&method, spare)
                    .await
                    .map(|(head, body)| (head, Kind::Direct(body), None))
            }
            Err(err) => Err(err),
        }
    } else {
        // Requests with a body, and protocol switches, go through hyper's client.
        let path_and_query =
            upstream_path(&parts.uri, route.is_root(), &parts.uri.path()[rest_at..]);
        // Origin-form, as HTTP/1.1 sends it to a server that is not a proxy.
        let original_uri = std::mem::replace(&mut parts.uri, Uri::from(path_and_query));
        if upgrade {
            strip_keeping_upgrade(&mut parts.headers);
            client_upgrade = parts.extensions.remove::<OnUpgrade>();
        } else {
            strip_hop_by_hop(&mut parts.headers);
        }
        set_forwarded(
            &mut parts.headers,
            &original_uri,
            &conn.client_ip,
            route.forwarded_prefix.as_ref(),
        );
        parts.version = Version::HTTP_11;
        conn.local
            .pool
            .send(upstream.addr, Request::from_parts(parts, body))
            .await
            .map(|(resp, reusable)| {
                let (head, body) = resp.into_parts();
                (head, Kind::Upstream(body), Some(reusable))
            })
    };
    let (mut head, kind, reusable) = match sent {
        Ok(sent) => sent,
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
            return text(StatusCode::BAD_GATEWAY, body.into(), done);
        }
    };
    done.set_status(head.status);

    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some((client, upstream_io)) = client_upgrade.zip(head.extensions.remove::<OnUpgrade>())
        else {
            // A switch the client did not ask for cannot be relayed.
            tracing::warn!(service = %route.service, "upstream switched protocols unasked");
            let body = format!(
                "starphleet ship {}: service {} switched protocols unasked\n",
                table.table.ship, route.service
            );
            return text(StatusCode::BAD_GATEWAY, body.into(), done);
        };
        tokio::spawn(splice(client, upstream_io, done, shared.tracker.token()));
        strip_keeping_upgrade(&mut head.headers);
        return Response::from_parts(head, ProxyBody::empty());
    }

    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(
        head,
        ProxyBody {
            kind,
            done: Some(done),
            reusable,
            active: None,
        },
    )
}

/// The request target as the client sent it, for the access log.
fn uri_text(uri: &Uri) -> Box<str> {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().into(),
        _ => uri.to_string().into(),
    }
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

/// A response the proxy makes itself (health, 404, 503), logged like any other;
/// `(start, began)` are the access-log clock (when someone listens) and the request's start,
/// `routed` the route it counts against, if any.
fn local(
    conn: &ConnCtx,
    req: &Request<Incoming>,
    (start, began): (Option<Instant>, Instant),
    routed: Option<Routed>,
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let log = start.map(|_| AccessLog {
        method: req.method().clone(),
        uri: uri_text(req.uri()),
        client: conn.client.clone(),
        trace: true,
    });
    let done = Done {
        routed,
        log,
        bytes: 0,
        status,
        began,
    };
    text(status, body.into(), done)
}

fn text(status: StatusCode, body: Bytes, mut done: Done) -> Response<ProxyBody> {
    done.set_status(status);
    let mut resp = Response::new(ProxyBody {
        kind: Kind::Local(Some(body)),
        done: Some(done),
        reusable: None,
        active: None,
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

/// The hop-by-hop headers every message may carry; `Connection` may name more.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a message has, rather than a hash lookup per hop-by-hop name:
    // most messages carry none, or only `Connection`.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
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
    }
    for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
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

/// What a forwarded request gains on its way (see [`set_forwarded`]).
struct Forwarding<'a> {
    /// Appended to `X-Forwarded-For`.
    client_ip: &'a HeaderValue,
    /// `X-Forwarded-Prefix`, if the route strips one.
    prefix: Option<&'a HeaderValue>,
}

/// Names a direct request head never copies from the client: hop-by-hop headers and the
/// `X-Forwarded-*` ones the proxy sets itself. All start with one of `c k p t u x`.
fn is_replaced(name: &HeaderName) -> bool {
    matches!(
        name.as_str().as_bytes()[0],
        b'c' | b'k' | b'p' | b't' | b'u' | b'x'
    ) && (HOP_BY_HOP.contains(name)
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_HOST
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_PREFIX)
}

/// Writes the head of a request without a body for its upstream: origin-form `target`
/// (path, query), then what [`strip_hop_by_hop`] and [`set_forwarded`] would make of the
/// client's headers, in one pass over them and without changing the map.
fn write_forwarded_head(
    dst: &mut Vec<u8>,
    method: &Method,
    target: (&str, Option<&str>),
    parts: &hyper::http::request::Parts,
    forwarding: &Forwarding<'_>,
) {
    let headers = &parts.headers;
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.0.as_bytes());
    if let Some(query) = target.1 {
        dst.push(b'?');
        dst.extend_from_slice(query.as_bytes());
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let line = |dst: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        dst.extend_from_slice(name);
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value);
        dst.extend_from_slice(b"\r\n");
    };

    // Headers the client named in `Connection` are hop-by-hop too; rarely any but standard ones.
    let named: Vec<HeaderName> = if headers.contains_key(header::CONNECTION)
        && connection_tokens(headers).any(|t| !is_standard_hop(t))
    {
        connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut host = None;
    for (name, value) in headers {
        if is_replaced(name) || named.contains(name) {
            continue;
        }
        if *name == header::HOST && host.is_none() {
            host = Some(value.as_bytes());
        }
        line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need it as a header.
    if host.is_none() && !named.contains(&header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            host = Some(authority.as_str().as_bytes());
            line(dst, b"host", authority.as_str().as_bytes());
        }
    }
    if let Some(host) = host {
        line(dst, X_FORWARDED_HOST.as_str().as_bytes(), host);
    }
    dst.extend_from_slice(b"x-forwarded-for: ");
    if !named.contains(&X_FORWARDED_FOR) {
        for earlier in headers.get_all(X_FORWARDED_FOR) {
            dst.extend_from_slice(earlier.as_bytes());
            dst.extend_from_slice(b", ");
        }
    }
    dst.extend_from_slice(forwarding.client_ip.as_bytes());
    dst.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(prefix) = forwarding.prefix {
        line(
            dst,
            X_FORWARDED_PREFIX.as_str().as_bytes(),
            prefix.as_bytes(),
        );
    }
    dst.extend_from_slice(b"\r\n");
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

/// Where a request was routed: the table it was routed by, kept alive with the request, and
/// its route and upstream in it. Counters, names and the access log are found through it when
/// the request ends, instead of each being cloned (an atomic count each) for every request.
struct Routed {
    table: Arc<Compiled>,
    at: RouteAt,
    /// The upstream picked, counted in flight until the request ends; none for a 503.
    upstream: Option<usize>,
}

impl Routed {
    fn route(&self) -> &CRoute {
        self.table.route(self.at)
    }

    fn upstream(&self) -> Option<&CUpstream> {
        self.upstream.map(|u| &self.route().upstreams[u])
    }
}

/// The end of a request: counts it on its route, writes its access log line and, last, releases
/// its in-flight count.
pub(crate) struct Done {
    routed: Option<Routed>,
    log: Option<AccessLog>,
    bytes: u64,
    status: StatusCode,
    began: Instant,
}

impl Done {
    fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let elapsed = self.began.elapsed();
        let route = self.routed.as_ref().map(Routed::route);
        let upstream = self.routed.as_ref().and_then(Routed::upstream);
        if let Some(route) = route {
            route
                .stats
                .record(self.status.as_u16(), self.bytes, elapsed);
        }
        if let Some(log) = &self.log {
            if log.trace {
                tracing::info!(
                    target: ACCESS,
                    method = %log.method,
                    path = &*log.uri,
                    status = self.status.as_u16(),
                    bytes = self.bytes,
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    service = route.map_or("-", |r| &*r.service),
                    container = upstream.map_or("-", |u| &*u.container),
                    client = &*log.client,
                );
            }
            if let Some(upstream) = upstream {
                if let Some(file) = &upstream.access {
                    // The last request in flight writes the lines out: the control plane never
                    // reads a container's count at 0 while its access log lacks lines.
                    let last = upstream.in_flight.get() == 1;
                    file.write_line(
                        |out| log.line(out, self.status, self.bytes, elapsed, &upstream.version),
                        last,
                    );
                }
            }
        }
        // The in-flight count drops last: a control plane that sees a container's count at 0
        // finds its access log complete, and one waiting for 0 is woken.
        if let Some(upstream) = upstream {
            upstream.in_flight.leave();
        }
    }
}

/// What the access log says about a request, gathered only when someone listens.
struct AccessLog {
    method: Method,
    /// A copy: the request's own URI shares the client connection's read buffer, which hyper
    /// can then only reuse once this request is over.
    uri: Box<str>,
    client: Arc<str>,
    /// Emit the `starphleet::access` tracing event.
    trace: bool,
}

impl AccessLog {
    fn enabled() -> bool {
        tracing::enabled!(target: ACCESS, tracing::Level::INFO)
    }

    /// Appends the logfmt line of a container's access log, without the formatting machinery:
    /// `method=GET path=/x status=200 bytes=13 duration_ms=0.125 version=v1 client=ip:port`.
    fn line(
        &self,
        out: &mut Vec<u8>,
        status: StatusCode,
        bytes: u64,
        elapsed: std::time::Duration,
        version: &str,
    ) {
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        out.extend_from_slice(b"method=");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b" path=");
        out.extend_from_slice(self.uri.as_bytes());
        out.extend_from_slice(b" status=");
        push_decimal(out, u64::from(status.as_u16()));
        out.extend_from_slice(b" bytes=");
        push_decimal(out, bytes);
        out.extend_from_slice(b" duration_ms=");
        push_decimal(out, micros / 1000);
        let frac = micros % 1000;
        out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        out.extend_from_slice(b" version=");
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(b" client=");
        out.extend_from_slice(self.client.as_bytes());
        out.push(b'\n');
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A response body: the upstream's, streamed, or one the proxy made. Ends its request's [`Done`]
/// when it finishes or is dropped (the client went away).
pub(crate) struct ProxyBody {
    kind: Kind,
    done: Option<Done>,
    /// The upstream connection, back to its pool once the body has been read to the end.
    reusable: Option<Reusable>,
    /// Keeps the request counted in progress on its connection while the body is sent.
    active: Option<Active>,
}

enum Kind {
    /// Read by this task off a direct upstream connection.
    Direct(DirectBody),
    /// Relayed from hyper's client connection.
    Upstream(Incoming),
    Local(Option<Bytes>),
}

impl ProxyBody {
    fn empty() -> Self {
        ProxyBody {
            kind: Kind::Local(None),
            done: None,
            reusable: None,
            active: None,
        }
    }

    /// Returns the upstream connection to its pool if the upstream's body is complete.
    fn release_if_read(&mut self) {
        if let Kind::Upstream(body) = &self.kind {
            if body.is_end_stream() {
                if let Some(conn) = self.reusable.take() {
                    conn.release();
                }
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: hyper closes it.
        self.release_if_read();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = upstream::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Direct(body) => Pin::new(body).poll_frame(cx),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Local(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(done)) = (frame.data_ref(), &mut this.done) {
                    done.bytes += data.len() as u64;
                }
                this.release_if_read();
            }
            Poll::Ready(Some(Err(_))) => this.done = None,
            Poll::Ready(None) => {
                this.release_if_read();
                this.done = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct(body) => body.is_end_stream(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Local(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct(body) => body.size_hint(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_are_logfmt_with_three_decimal_millis() {
        let log = AccessLog {
            method: Method::GET,
            uri: "/echo/hi?x=1".into(),
            client: "127.0.0.1:5000".into(),
            trace: false,
        };
        let line = |us, bytes| {
            let mut out = Vec::new();
            let elapsed = std::time::Duration::from_micros(us);
            log.line(&mut out, StatusCode::OK, bytes, elapsed, "v1");
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            line(1170, 13),
            "method=GET path=/echo/hi?x=1 status=200 bytes=13 duration_ms=1.170 version=v1 client=127.0.0.1:5000\n"
        );
        assert!(line(5, 0).contains(" bytes=0 duration_ms=0.005 "));
        assert!(line(2_000_000, 18_446_744_073_709_551_615)
            .contains(" bytes=18446744073709551615 duration_ms=2000.000 "));
    }

    /// The header lines of a head, sorted.
    fn lines(head: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(head).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        let mut lines: Vec<String> = text
            .trim_end()
            .split("\r\n")
            .skip(1)
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_direct_head_carries_what_set_forwarded_would() {
        let ip = HeaderValue::from_static("192.0.2.7");
        let prefix = HeaderValue::from_static("/echo");
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a HeaderValue>);
        let cases: Vec<Case<'_>> = vec![
            ("/echo/hi", vec![("host", "example.test")], Some(&prefix)),
            (
                "/echo/hi?x=1",
                vec![
                    ("host", "example.test:8080"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "198.51.100.2"),
                    ("connection", "keep-alive, x-secret"),
                    ("x-secret", "hop"),
                    ("keep-alive", "timeout=5"),
                    ("x-forwarded-prefix", "/fake"),
                    ("x-forwarded-host", "fake"),
                    ("x-forwarded-proto", "https"),
                    ("te", "trailers"),
                    ("accept", "*/*"),
                    ("cookie", "a=1"),
                    ("cookie", "b=2"),
                ],
                None,
            ),
            (
                "http://h2.test:8443/echo/x",
                vec![("accept", "*/*")],
                Some(&prefix),
            ),
            (
                "/x",
                vec![
                    ("connection", "host, x-forwarded-for"),
                    ("host", "h"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
                None,
            ),
        ];
        for (uri, headers, prefix) in cases {
            let mut req = Request::get(uri);
            for (name, value) in &headers {
                req = req.header(*name, *value);
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();

            let mut expected = parts.headers.clone();
            strip_hop_by_hop(&mut expected);
            set_forwarded(&mut expected, &parts.uri, &ip, prefix);
            let mut old = Vec::new();
            for (name, value) in &expected {
                old.extend_from_slice(format!("{name}: ").as_bytes());
                old.extend_from_slice(value.as_bytes());
                old.extend_from_slice(b"\r\n");
            }

            let mut new = Vec::new();
            let forwarding = Forwarding {
                client_ip: &ip,
                prefix,
            };
            write_forwarded_head(
                &mut new,
                &Method::GET,
                ("/t", Some("q=1")),
                &parts,
                &forwarding,
            );
            assert!(new.starts_with(b"GET /t?q=1 HTTP/1.1\r\n"));
            let mut old_head = b"GET /t?q=1 HTTP/1.1\r\n".to_vec();
            old_head.extend_from_slice(&old);
            old_head.extend_from_slice(b"\r\n");
            assert_eq!(lines(&new), lines(&old_head), "{uri} {headers:?}");
        }
    }

    #[test]
    fn strips_hop_by_hop_headers_and_those_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("h"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [header::HOST]);

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("h"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
