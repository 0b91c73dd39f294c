//! The hot path: one request in, checked, routed, forwarded, answered; counted while its body
//! streams.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::guard::ConnState;
use crate::listen::{Local, Shared, TrackToken};
use crate::table::{CRoute, CUpstream, Compiled, RouteAt};
use crate::upstream::{self, DirectBody, Reusable};

/// The reserved path every public port answers for load balancers.
const HEALTH_PATH: &str = "/starphleet/health";
/// Where ACME HTTP-01 challenges are asked (RFC 8555 §8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
/// The tracing target of the access log, one event per request.
const ACCESS: &str = "starphleet::access";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// What a connection knows about itself, shared by its requests.
pub(crate) struct ConnCtx {
    /// The proxy's state.
    pub shared: Arc<Shared>,
    /// The serving thread's upstream connection pool.
    local: Arc<Local>,
    /// The public port the connection came in on, which selects its routes.
    pub port: u16,
    /// The server name the client's TLS handshake asked for; `None` on plain connections.
    sni: Option<Box<str>>,
    /// The client's address, formatted once per connection for the access log.
    client: Arc<str>,
    /// The client IP, formatted once per connection for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// The connection's clocks and request counts.
    state: Arc<ConnState>,
}

impl ConnCtx {
    /// The context of a connection accepted from `peer` on `port` (over TLS, for `sni`).
    pub fn new(
        shared: Arc<Shared>,
        local: Arc<Local>,
        port: u16,
        peer: SocketAddr,
        sni: Option<Box<str>>,
        state: Arc<ConnState>,
    ) -> Self {
        let ip = peer.ip().to_canonical();
        ConnCtx {
            shared,
            local,
            port,
            sni,
            client: SocketAddr::new(ip, peer.port()).to_string().into(),
            client_ip: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
            state,
        }
    }

    fn is_tls(&self) -> bool {
        self.sni.is_some()
    }

    fn proto(&self) -> &'static [u8] {
        if self.is_tls() {
            b"https"
        } else {
            b"http"
        }
    }
}

/// Marks a request in progress on its connection until its response has been sent (or the
/// client went away).
pub(crate) struct Active(Arc<ConnState>);

impl Active {
    fn new(conn: &ConnCtx) -> Self {
        conn.state.request_started();
        Active(conn.state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Serves one request; never fails, errors become 4xx/5xx pages.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let active = Active::new(&conn);
    let mut resp = forward(&conn, req).await;
    resp.body_mut().active = Some(active);
    Ok(resp)
}

/// Why forwarding a request failed.
enum Failed {
    /// The upstream could not be reached or answered nonsense.
    Upstream(upstream::Error),
    /// The upstream sent no response head within the route's timeout.
    TimedOut,
    /// The client's body broke a limit or its framing.
    Body(BodyFault),
}

async fn forward(conn: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    // For the route's latency histogram; `start` only when the access log event is wanted.
    let began = Instant::now();
    let clock = (AccessLog::enabled().then_some(began), began);
    let shared = &conn.shared;
    let mut table = shared.table.load_full();
    let ship = |table: &Compiled| table.table.ship.clone();

    let host = match request_host(&req) {
        Ok(host) => host,
        Err(why) => {
            let body = format!("starphleet ship {}: {why}\n", ship(&table));
            return closing(
                conn,
                local(conn, &req, clock, None, StatusCode::BAD_REQUEST, body),
            );
        }
    };
    // `..` and `.` segments are resolved before anything looks at the path.
    let normalised = match normalise_path(req.uri().path()) {
        Ok(normalised) => normalised,
        Err(()) => {
            let body = format!(
                "starphleet ship {}: the path {} climbs above /\n",
                ship(&table),
                req.uri().path()
            );
            return closing(
                conn,
                local(conn, &req, clock, None, StatusCode::BAD_REQUEST, body),
            );
        }
    };
    let path: &str = normalised.as_deref().unwrap_or(req.uri().path());
    if path == HEALTH_PATH {
        let (status, body) = if shared.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if table.table.offline {
            (StatusCode::SERVICE_UNAVAILABLE, "offline\n")
        } else {
            (StatusCode::OK, "ok")
        };
        return local(conn, &req, clock, None, status, body);
    }
    if !conn.is_tls() {
        if let Some(auth) = path
            .strip_prefix(ACME_PREFIX)
            .and_then(|t| table.http01.get(t))
        {
            return local(conn, &req, clock, None, StatusCode::OK, auth.clone());
        }
    }
    if let (Some(sni), Some(host)) = (&conn.sni, host.as_deref()) {
        // Another name on this connection is served only if its certificate covers that name
        // too (RFC 9110 §15.5.20): a client must not reach a host it never authenticated.
        if host != &**sni && !shared.tls.store().pick(sni).is_some_and(|c| c.covers(host)) {
            let body = format!(
                "starphleet ship {}: {host} is not served on a connection made for {sni}\n",
                ship(&table)
            );
            let status = StatusCode::MISDIRECTED_REQUEST;
            return local(conn, &req, clock, None, status, body);
        }
    }

    // Pick an upstream and count it in flight, then make sure the table did not change meanwhile:
    // once a swap is visible, a request counted against the old table is always re-routed, so a
    // control plane that swapped and then reads an old container's count at 0 can stop it safely.
    let (at, rest_at, picked) = loop {
        let path: &str = normalised.as_deref().unwrap_or(req.uri().path());
        let Some((at, rest)) = table.lookup_at(conn.port, host.as_deref(), path) else {
            let body = format!(
                "starphleet ship {}: nothing is published at {}\n",
                table.table.ship, path
            );
            return local(conn, &req, clock, None, StatusCode::NOT_FOUND, body);
        };
        let route = table.route(at);
        let routed = |table: &Arc<Compiled>| Routed {
            table: table.clone(),
            at,
            upstream: None,
        };
        if let Some(https) = route
            .https_redirect
            .filter(|_| !path.starts_with(ACME_PREFIX))
        {
            let Some(host) = host.as_deref() else {
                let body = format!(
                    "starphleet ship {}: a request without a host name cannot be redirected to https\n",
                    table.table.ship
                );
                let status = StatusCode::BAD_REQUEST;
                return local(conn, &req, clock, Some(routed(&table)), status, body);
            };
            let location = https_location(host, https, path, req.uri().query());
            let status = StatusCode::PERMANENT_REDIRECT;
            let body = format!("redirecting to {location}\n");
            let mut resp = local(conn, &req, clock, Some(routed(&table)), status, body);
            match HeaderValue::from_str(&location) {
                Ok(location) => resp.headers_mut().insert(header::LOCATION, location),
                Err(_) => return closing(conn, status_only(resp, StatusCode::BAD_REQUEST)),
            };
            return resp;
        }
        if let Some(max) = route.max_body {
            if req.body().size_hint().lower() > max {
                let body = format!(
                    "starphleet ship {}: the request body is larger than {max} bytes, the most {} accepts\n",
                    table.table.ship, route.service
                );
                let status = StatusCode::PAYLOAD_TOO_LARGE;
                let resp = local(conn, &req, clock, Some(routed(&table)), status, body);
                return closing(conn, resp);
            }
        }
        let Some(picked) = route.pick_at() else {
            route.requests.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                "starphleet ship {}: service {} has no running version yet\n",
                table.table.ship, route.service
            );
            let retry_after = route.retry_after.clone();
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let mut resp = local(conn, &req, clock, Some(routed(&table)), status, body);
            resp.headers_mut().insert(header::RETRY_AFTER, retry_after);
            return resp;
        };
        let in_flight = &route.upstreams[picked].in_flight;
        in_flight.enter();
        let current = shared.table.load();
        if Arc::ptr_eq(&table, &current) {
            // Where the path left after the prefix starts, to find it again once `req` is
            // taken apart.
            break (at, path.len() - rest.len(), picked);
        }
        // Through `leave`: a drain watcher that saw this passing count is woken again.
        in_flight.leave();
        table = arc_swap::Guard::into_inner(current);
    };
    let route = table.route(at);
    let upstream = &route.upstreams[picked];
    route.requests.fetch_add(1, Ordering::Relaxed);

    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let log = (clock.0.is_some() || upstream.access.is_some()).then(|| AccessLog {
        method: method.clone(),
        uri: uri_text(&parts.uri),
        client: conn.client.clone(),
        trace: clock.0.is_some(),
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
    let forwarding = Forwarding {
        client_ip: &conn.client_ip,
        prefix: route.forwarded_prefix.as_ref(),
        proto: conn.proto(),
    };

    // RFC 8441: a websocket on an HTTP/2 stream (extended CONNECT) reaches the app as the
    // HTTP/1.1 upgrade it speaks, and the app's 101 opens the stream as a 200.
    let h2_websocket = is_h2_websocket(&parts);
    let switch = if h2_websocket {
        Some(HeaderValue::from_static("websocket"))
    } else {
        upgrade_protocol(parts.version, &parts.headers).cloned()
    };
    let mut client_upgrade = None;
    let sent = if switch.is_none() && body.is_end_stream() && method != Method::CONNECT {
        // Requests without a body (nearly all): the head is written straight into the upstream
        // connection's buffer, and the exchange is done by this task.
        let path = normalised.as_deref().unwrap_or(parts.uri.path());
        let path = &path[if route.is_root() { 0 } else { rest_at }..];
        let target = (if path.is_empty() { "/" } else { path }, parts.uri.query());
        match conn.local.pool.checkout(upstream.addr).await {
            Ok(mut checkout) => {
                let mut head = DirectHead(checkout.head());
                head.request_line(&method, target);
                forwarded_headers(
                    &parts.headers,
                    parts.uri.authority(),
                    &forwarding,
                    None,
                    &mut head,
                );
                head.end();
                // The request's headers share the client connection's read buffer: let them go
                // before waiting, so hyper reuses that buffer in place; the emptied map holds
                // the response's headers.
                let mut spare = std::mem::take(&mut parts.headers);
                spare.clear();
                drop((parts, body, normalised));
                match tokio::time::timeout(route.timeout, checkout.exchange(&method, spare)).await {
                    Ok(Ok((head, body))) => Ok((head, Kind::Direct(body), None)),
                    Ok(Err(err)) => Err(Failed::Upstream(err)),
                    Err(_) => Err(Failed::TimedOut),
                }
            }
            Err(err) => Err(Failed::Upstream(err)),
        }
    } else {
        // Requests with a body, and protocol switches, go through hyper's client.
        let path = normalised.as_deref().unwrap_or(parts.uri.path());
        let path_and_query = upstream_path(
            if route.is_root() {
                path
            } else {
                &path[rest_at..]
            },
            parts.uri.query(),
        );
        let mut headers = MapHead(HeaderMap::with_capacity(parts.headers.len() + 4));
        forwarded_headers(
            &parts.headers,
            parts.uri.authority(),
            &forwarding,
            switch.as_ref(),
            &mut headers,
        );
        drop(normalised);
        parts.headers = headers.0;
        // Origin-form, as HTTP/1.1 sends it to a server that is not a proxy.
        parts.uri = Uri::from(path_and_query);
        if h2_websocket {
            parts.method = Method::GET;
            parts
                .headers
                .insert(header::SEC_WEBSOCKET_KEY, websocket_key());
        }
        if switch.is_some() {
            client_upgrade = parts.extensions.remove::<OnUpgrade>();
        }
        parts.version = Version::HTTP_11;
        let watch = Arc::new(BodyWatch::default());
        if body.is_end_stream() {
            // hyper never polls an empty body: the upstream's clock starts now.
            watch.sent.notify_one();
        }
        let body = GuardedBody {
            inner: body,
            limit: route.max_body,
            seen: 0,
            idle: route
                .body_timeout
                .unwrap_or(shared.limits.body_idle_timeout),
            idle_timer: None,
            watch: watch.clone(),
        };
        let send = conn
            .local
            .pool
            .send(upstream.addr, Request::from_parts(parts, body));
        let answered = tokio::select! {
            sent = send => sent.map_err(Failed::Upstream),
            () = watch.head_deadline(route.timeout) => Err(Failed::TimedOut),
        };
        answered
            .map(|(resp, reusable)| {
                let (head, body) = resp.into_parts();
                (head, Kind::Upstream(body), Some(reusable))
            })
            .map_err(|failed| match watch.fault() {
                Some(fault) => Failed::Body(fault),
                None => failed,
            })
    };
    let (mut head, kind, reusable) = match sent {
        Ok(sent) => sent,
        Err(failed) => return failure(conn, &table, route, upstream, failed, done),
    };
    done.set_status(head.status);
    // The client gets HTTP/1.1 (or 1.0, or 2) from hyper whatever version the upstream spoke.
    head.version = Version::HTTP_11;

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
        if h2_websocket {
            // A 2xx opens the stream; HTTP/1.1's switch headers have no meaning on HTTP/2.
            head.status = StatusCode::OK;
            done.set_status(StatusCode::OK);
            strip_hop_by_hop(&mut head.headers);
            head.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        } else {
            strip_keeping_upgrade(&mut head.headers);
        }
        tokio::spawn(splice(client, upstream_io, done, shared.tracker.token()));
        return Response::from_parts(head, ProxyBody::empty());
    }
    if h2_websocket && head.status.is_success() {
        // On HTTP/2 any 2xx to CONNECT opens a tunnel: the app's page would become a websocket
        // to nowhere.
        let body = format!(
            "starphleet ship {}: service {} answered {} instead of switching to websocket\n",
            table.table.ship, route.service, head.status
        );
        return text(StatusCode::BAD_GATEWAY, body.into(), done);
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

/// The page for a request that could not be forwarded.
fn failure(
    conn: &ConnCtx,
    table: &Compiled,
    route: &CRoute,
    upstream: &CUpstream,
    failed: Failed,
    done: Done,
) -> Response<ProxyBody> {
    let ship = &table.table.ship;
    let service = &route.service;
    let (status, body) = match failed {
        Failed::Upstream(err) => {
            tracing::warn!(
                service = %route.service,
                container = %upstream.container,
                error = %ErrorChain(&err),
                "upstream did not answer"
            );
            let body = format!("starphleet ship {ship}: service {service} did not answer\n");
            return text(StatusCode::BAD_GATEWAY, body.into(), done);
        }
        Failed::TimedOut => {
            tracing::warn!(
                service = %route.service,
                container = %upstream.container,
                "upstream sent no response within {:?}", route.timeout
            );
            let body = format!(
                "starphleet ship {ship}: service {service} did not answer within {} ms\n",
                route.timeout.as_millis()
            );
            return text(StatusCode::GATEWAY_TIMEOUT, body.into(), done);
        }
        Failed::Body(BodyFault::TooLarge(max)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("starphleet ship {ship}: the request body is larger than {max} bytes, the most {service} accepts\n"),
        ),
        Failed::Body(BodyFault::Idle(after)) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("starphleet ship {ship}: the request body stalled for {} s\n", after.as_secs_f64()),
        ),
        Failed::Body(BodyFault::Malformed) => (
            StatusCode::BAD_REQUEST,
            format!("starphleet ship {ship}: the request body is malformed or cut short\n"),
        ),
    };
    // The body is unread: the connection cannot carry another request.
    closing(conn, text(status, body.into(), done))
}

/// Asks an HTTP/1 client's connection to close after this response (HTTP/2 streams end alone).
fn closing(conn: &ConnCtx, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if !conn.state.is_h2() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A proxy-made response turned into a bare status, when what it was to say cannot be said.
fn status_only(mut resp: Response<ProxyBody>, status: StatusCode) -> Response<ProxyBody> {
    *resp.status_mut() = status;
    resp.headers_mut().remove(header::LOCATION);
    if let Some(done) = &mut resp.body_mut().done {
        done.set_status(status);
    }
    resp
}

/// `https://host[:port]/path?query`, leaving out the default port.
fn https_location(host: &str, port: u16, path: &str, query: Option<&str>) -> String {
    let mut location =
        String::with_capacity(8 + host.len() + 6 + path.len() + query.map_or(0, |q| q.len() + 1));
    location.push_str("https://");
    location.push_str(host);
    if port != 443 {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    location
}

/// The host the request is for, lower-case and without a port: HTTP/2's `:authority`, else the
/// `Host` header, which HTTP/1.1 requires (RFC 9112 §3.2). `None` for an HTTP/1.0 request
/// without one. `Err` names what is wrong.
fn request_host(req: &Request<Incoming>) -> Result<Option<Cow<'_, str>>, &'static str> {
    let authority = req.uri().authority().map(Authority::as_str);
    let raw = match authority {
        Some(authority) if req.version() == Version::HTTP_2 => Some(authority),
        _ => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(_), Some(_)) => return Err("a request with more than one Host header"),
                (Some(host), None) => Some(host.to_str().map_err(|_| "a malformed Host header")?),
                (None, _) if req.version() == Version::HTTP_11 && authority.is_none() => {
                    return Err("an HTTP/1.1 request without a Host header")
                }
                (None, _) => authority,
            }
        }
    };
    let Some(raw) = raw else {
        return Ok(None);
    };
    let name = strip_port(raw).ok_or("a malformed Host header")?;
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':');
    if name.is_empty() || !name.bytes().all(allowed) {
        return Err("a malformed Host header");
    }
    Ok(Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }))
}

/// `host[:port]` without the port; `None` when what follows the name is not a port.
fn strip_port(authority: &str) -> Option<&str> {
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let rest = &authority[end..];
        (
            &authority[..end],
            rest.strip_prefix(':').or(rest.is_empty().then_some(""))?,
        )
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, port),
            None => (authority, ""),
        }
    };
    port.bytes().all(|b| b.is_ascii_digit()).then_some(name)
}

/// Resolves `.` and `..` segments (also percent-encoded, `%2e`), as RFC 3986 §5.2.4 does:
/// `Ok(None)` when there are none (nearly always), `Err` when `..` would climb above `/`.
fn normalise_path(path: &str) -> Result<Option<String>, ()> {
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let is_dot_dot = |s: &str| {
        s == ".."
            || s.eq_ignore_ascii_case("%2e%2e")
            || s.eq_ignore_ascii_case(".%2e")
            || s.eq_ignore_ascii_case("%2e.")
    };
    let dotted = |s: &str| s.len() <= 6 && (is_dot(s) || is_dot_dot(s));
    if !path.contains(['.', '%']) || !path.split('/').any(dotted) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if is_dot(segment) {
            if i == last {
                out.push("");
            }
        } else if is_dot_dot(segment) {
            out.pop().ok_or(())?;
            if i == last {
                out.push("");
            }
        } else {
            out.push(segment);
        }
    }
    let mut normalised = String::with_capacity(path.len());
    for segment in out {
        normalised.push('/');
        normalised.push_str(segment);
    }
    if normalised.is_empty() {
        normalised.push('/');
    }
    Ok(Some(normalised))
}

/// The request target as the client sent it, for the access log.
fn uri_text(uri: &Uri) -> Box<str> {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().into(),
        _ => uri.to_string().into(),
    }
}

/// The upstream's path and query: `path` is what is left after the prefix (`/echo/Hi` → `/Hi`,
/// `/echo` → empty, sent as `/`).
fn upstream_path(path: &str, query: Option<&str>) -> PathAndQuery {
    let path = if path.is_empty() { "/" } else { path };
    let mut s = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(s)).expect("a part of a valid path is valid")
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

/// Whether `parts` is an RFC 8441 websocket: HTTP/2 `CONNECT` with `:protocol websocket`.
fn is_h2_websocket(parts: &hyper::http::request::Parts) -> bool {
    parts.version == Version::HTTP_2
        && parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `Sec-WebSocket-Key` (RFC 6455 §4.1: 16 random bytes, base64) for the upgrade the
/// proxy asks of the app on an HTTP/2 client's behalf.
fn websocket_key() -> HeaderValue {
    use base64::Engine;
    let mut nonce = [0u8; 16];
    // The nonce only has to differ between handshakes; should the system's random source fail,
    // the clock still makes it do.
    if rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut nonce)
        .is_err()
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        nonce = now.as_nanos().to_le_bytes();
    }
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

/// The protocol an HTTP/1.1 request asks to switch to (websocket and the like), if it does and
/// the switch can be relayed: `h2c` is the proxy's own business, never an app's.
fn upgrade_protocol(version: Version, headers: &HeaderMap) -> Option<&HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let protocol = headers.get(header::UPGRADE)?;
    if !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let h2c = protocol
        .as_bytes()
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then_some(protocol)
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
        "proxy-authorization",
        "http2-settings",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The headers no message is forwarded with: hop-by-hop ones (RFC 9110 §7.6.1), credentials
/// meant for this proxy, and the settings of an `h2c` upgrade. `Connection` may name more.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HTTP2_SETTINGS,
];

/// Removes hop-by-hop headers from a response.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a message has, rather than a hash lookup per hop-by-hop name:
    // most messages carry none, or only `Connection`.
    let mut present = 0u16;
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

/// What a forwarded request gains on its way (see [`forwarded_headers`]).
struct Forwarding<'a> {
    /// Appended to `X-Forwarded-For`.
    client_ip: &'a HeaderValue,
    /// `X-Forwarded-Prefix`, if the route strips one.
    prefix: Option<&'a HeaderValue>,
    /// `X-Forwarded-Proto`: `http` or `https`.
    proto: &'static [u8],
}

/// Where [`forwarded_headers`] puts the headers it decides on: a request head being written
/// ([`DirectHead`]) or a header map for hyper's client ([`MapHead`]).
trait HeadSink {
    /// One header.
    fn header(&mut self, name: &HeaderName, value: &[u8]);
    /// A list header: the earlier values, comma-separated, then `last`.
    fn list(&mut self, name: &HeaderName, earlier: header::GetAll<'_, HeaderValue>, last: &[u8]);
}

/// Names a forwarded request never copies from the client: hop-by-hop headers and the
/// `X-Forwarded-*` ones the proxy sets itself. All start with one of `c h k p t u x`.
fn is_replaced(name: &HeaderName) -> bool {
    matches!(
        name.as_str().as_bytes()[0],
        b'c' | b'h' | b'k' | b'p' | b't' | b'u' | b'x'
    ) && (HOP_BY_HOP.contains(name)
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_HOST
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_PREFIX)
}

/// The one place that decides what a forwarded request's headers are, for both ways of sending
/// it: the client's headers without the hop-by-hop ones (and those `Connection` names), `Host`
/// from the URI when only HTTP/2's `:authority` had it, `X-Forwarded-Host`, `-For` (the client
/// appended), `-Proto` and `-Prefix` set by the proxy whatever the client sent, and for a
/// protocol `switch` the `Upgrade` asked for.
fn forwarded_headers(
    headers: &HeaderMap,
    authority: Option<&Authority>,
    forwarding: &Forwarding<'_>,
    switch: Option<&HeaderValue>,
    sink: &mut impl HeadSink,
) {
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
        sink.header(name, value.as_bytes());
    }
    // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need it as a header.
    if host.is_none() && !named.contains(&header::HOST) {
        if let Some(authority) = authority {
            host = Some(authority.as_str().as_bytes());
            sink.header(&header::HOST, authority.as_str().as_bytes());
        }
    }
    if let Some(host) = host {
        sink.header(&X_FORWARDED_HOST, host);
    }
    // `new` allocates nothing: the empty list for a name the client declared hop-by-hop.
    let none = HeaderMap::new();
    let earlier = if named.contains(&X_FORWARDED_FOR) {
        none.get_all(X_FORWARDED_FOR)
    } else {
        headers.get_all(X_FORWARDED_FOR)
    };
    sink.list(&X_FORWARDED_FOR, earlier, forwarding.client_ip.as_bytes());
    sink.header(&X_FORWARDED_PROTO, forwarding.proto);
    if let Some(prefix) = forwarding.prefix {
        sink.header(&X_FORWARDED_PREFIX, prefix.as_bytes());
    }
    if let Some(protocol) = switch {
        sink.header(&header::UPGRADE, protocol.as_bytes());
        sink.header(&header::CONNECTION, b"upgrade");
    }
}

/// A request head written straight into an upstream connection's buffer.
struct DirectHead<'a>(&'a mut Vec<u8>);

impl DirectHead<'_> {
    /// `METHOD path?query HTTP/1.1`.
    fn request_line(&mut self, method: &Method, (path, query): (&str, Option<&str>)) {
        let dst = &mut *self.0;
        dst.extend_from_slice(method.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(path.as_bytes());
        if let Some(query) = query {
            dst.push(b'?');
            dst.extend_from_slice(query.as_bytes());
        }
        dst.extend_from_slice(b" HTTP/1.1\r\n");
    }

    /// The empty line ending the head.
    fn end(&mut self) {
        self.0.extend_from_slice(b"\r\n");
    }
}

impl HeadSink for DirectHead<'_> {
    fn header(&mut self, name: &HeaderName, value: &[u8]) {
        let dst = &mut *self.0;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value);
        dst.extend_from_slice(b"\r\n");
    }

    fn list(&mut self, name: &HeaderName, earlier: header::GetAll<'_, HeaderValue>, last: &[u8]) {
        let dst = &mut *self.0;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        for value in earlier {
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b", ");
        }
        dst.extend_from_slice(last);
        dst.extend_from_slice(b"\r\n");
    }
}

/// The headers of a request for hyper's client.
struct MapHead(HeaderMap);

impl HeadSink for MapHead {
    fn header(&mut self, name: &HeaderName, value: &[u8]) {
        // Every value comes from a header value or the proxy itself: always valid.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            self.0.append(name.clone(), value);
        }
    }

    fn list(&mut self, name: &HeaderName, earlier: header::GetAll<'_, HeaderValue>, last: &[u8]) {
        let mut chain = Vec::new();
        for value in earlier {
            chain.extend_from_slice(value.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(last);
        self.header(name, &chain);
    }
}

/// Why a client's request body was refused.
#[derive(Clone, Copy, Debug, thiserror::Error)]
pub(crate) enum BodyFault {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("no byte of the request body arrived for {0:?}")]
    Idle(Duration),
    #[error("the request body is malformed or cut short")]
    Malformed,
}

/// What the client's body did, for the request that sends it: whether it broke (and why), and
/// when it was sent in full, which starts the upstream's response-head clock.
#[derive(Default)]
struct BodyWatch {
    /// 0: fine; 1, 2, 3: [`BodyFault`] in order; with the limit or period beside it.
    fault: AtomicU8,
    limit: std::sync::atomic::AtomicU64,
    sent: Notify,
}

impl BodyWatch {
    fn set(&self, fault: BodyFault) {
        let (code, n) = match fault {
            BodyFault::TooLarge(max) => (1, max),
            BodyFault::Idle(after) => (2, after.as_millis() as u64),
            BodyFault::Malformed => (3, 0),
        };
        self.limit.store(n, Ordering::Relaxed);
        self.fault.store(code, Ordering::Release);
    }

    fn fault(&self) -> Option<BodyFault> {
        let n = self.limit.load(Ordering::Relaxed);
        match self.fault.load(Ordering::Acquire) {
            1 => Some(BodyFault::TooLarge(n)),
            2 => Some(BodyFault::Idle(Duration::from_millis(n))),
            3 => Some(BodyFault::Malformed),
            _ => None,
        }
    }

    /// Returns `limit` after the request body was sent in full: the upstream had that long to
    /// answer (a slow upload is the body clock's business, not the upstream's).
    async fn head_deadline(&self, limit: Duration) {
        self.sent.notified().await;
        tokio::time::sleep(limit).await;
    }
}

/// A client's request body on its way to the upstream, held to the route's size limit and the
/// proxy's idle limit; its faults are noted in the [`BodyWatch`].
pub(crate) struct GuardedBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    idle: Duration,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    watch: Arc<BodyWatch>,
}

impl GuardedBody {
    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        self.watch.set(fault);
        Poll::Ready(Some(Err(fault)))
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(max) = this.limit.filter(|&max| this.seen > max) {
                        return this.fail(BodyFault::TooLarge(max));
                    }
                }
                if let Some(timer) = &mut this.idle_timer {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.idle);
                }
                if this.inner.is_end_stream() {
                    this.watch.sent.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(BodyFault::Malformed),
            Poll::Ready(None) => {
                this.watch.sent.notify_one();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyFault::Idle(idle));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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

    /// The head written for `headers`, and the same headers as a map, as sorted lines.
    fn both_ways(
        uri: &str,
        headers: &[(&str, &str)],
        forwarding: &Forwarding<'_>,
        switch: Option<&HeaderValue>,
    ) -> (Vec<String>, Vec<String>) {
        let mut req = Request::get(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let mut buf = Vec::new();
        let mut direct = DirectHead(&mut buf);
        direct.request_line(&Method::GET, ("/t", Some("q=1")));
        forwarded_headers(
            &parts.headers,
            parts.uri.authority(),
            forwarding,
            switch,
            &mut direct,
        );
        direct.end();
        assert!(buf.starts_with(b"GET /t?q=1 HTTP/1.1\r\n"));
        let mut map = MapHead(HeaderMap::new());
        forwarded_headers(
            &parts.headers,
            parts.uri.authority(),
            forwarding,
            switch,
            &mut map,
        );
        let mut from_map: Vec<String> = map
            .0
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        from_map.sort();
        (lines(&buf), from_map)
    }

    #[test]
    fn forwarded_headers_are_the_same_written_or_mapped() {
        let ip = HeaderValue::from_static("192.0.2.7");
        let prefix = HeaderValue::from_static("/echo");
        let plain = Forwarding {
            client_ip: &ip,
            prefix: Some(&prefix),
            proto: b"http",
        };
        let (direct, map) = both_ways(
            "/echo/hi?x=1",
            &[
                ("host", "example.test:8080"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.2"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("keep-alive", "timeout=5"),
                ("x-forwarded-prefix", "/fake"),
                ("x-forwarded-host", "fake"),
                ("x-forwarded-proto", "https"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
                ("te", "trailers"),
                ("accept", "*/*"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
            &plain,
            None,
        );
        assert_eq!(direct, map);
        assert_eq!(
            direct,
            [
                "accept: */*",
                "cookie: a=1",
                "cookie: b=2",
                "host: example.test:8080",
                "x-forwarded-for: 203.0.113.9, 198.51.100.2, 192.0.2.7",
                "x-forwarded-host: example.test:8080",
                "x-forwarded-prefix: /echo",
                "x-forwarded-proto: http",
            ]
        );

        // HTTP/2: the host comes from the URI; TLS says https; no prefix at the root.
        let tls = Forwarding {
            client_ip: &ip,
            prefix: None,
            proto: b"https",
        };
        let (direct, map) = both_ways(
            "https://h2.test:8443/echo/x",
            &[("accept", "*/*")],
            &tls,
            None,
        );
        assert_eq!(direct, map);
        assert_eq!(
            direct,
            [
                "accept: */*",
                "host: h2.test:8443",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-host: h2.test:8443",
                "x-forwarded-proto: https",
            ]
        );

        // Names the client declares hop-by-hop go, even the ones the proxy would keep.
        let (direct, map) = both_ways(
            "/x",
            &[
                ("connection", "host, x-forwarded-for"),
                ("host", "h"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            &tls,
            None,
        );
        assert_eq!(direct, map);
        assert_eq!(
            direct,
            ["x-forwarded-for: 192.0.2.7", "x-forwarded-proto: https"]
        );

        // A protocol switch keeps its Upgrade.
        let websocket = HeaderValue::from_static("websocket");
        let (direct, map) = both_ways(
            "/ws",
            &[
                ("host", "h"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ],
            &plain,
            Some(&websocket),
        );
        assert_eq!(direct, map);
        assert!(
            direct.contains(&"upgrade: websocket".to_string()),
            "{direct:?}"
        );
        assert!(
            direct.contains(&"connection: upgrade".to_string()),
            "{direct:?}"
        );
    }

    #[test]
    fn h2c_is_never_a_switch_to_relay() {
        let headers = |upgrade: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("Upgrade, HTTP2-Settings"),
            );
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            h
        };
        assert!(upgrade_protocol(Version::HTTP_11, &headers("websocket")).is_some());
        assert!(upgrade_protocol(Version::HTTP_11, &headers("h2c")).is_none());
        assert!(upgrade_protocol(Version::HTTP_11, &headers("foo, H2C")).is_none());
        assert!(upgrade_protocol(Version::HTTP_10, &headers("websocket")).is_none());
    }

    #[test]
    fn dot_segments_are_resolved_and_may_not_climb_above_the_root() {
        let n = |p: &str| normalise_path(p).map(|o| o.unwrap_or_else(|| p.to_string()));
        assert_eq!(n("/echo/x"), Ok("/echo/x".into()));
        assert_eq!(n("/favicon.ico"), Ok("/favicon.ico".into()));
        assert_eq!(n("/echo/../other/x"), Ok("/other/x".into()));
        assert_eq!(n("/a/./b"), Ok("/a/b".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/b/."), Ok("/a/b/".into()));
        assert_eq!(n("/a/%2E%2e/b"), Ok("/b".into()));
        assert_eq!(n("/a/.%2e/b"), Ok("/b".into()));
        assert_eq!(n("/a/..."), Ok("/a/...".into()), "three dots are a name");
        assert_eq!(n("/.."), Err(()));
        assert_eq!(n("/a/../.."), Err(()));
        assert_eq!(n("/%2e%2e/etc/passwd"), Err(()));
        assert_eq!(n("/.well-known/x"), Ok("/.well-known/x".into()));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("a.test:8080"), Some("a.test"));
        assert_eq!(strip_port("a.test"), Some("a.test"));
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("[::1]"), Some("[::1]"));
        assert_eq!(strip_port("a.test:x"), None);
        assert_eq!(strip_port("[::1]x"), None);
        assert_eq!(
            https_location("a.test", 443, "/p", Some("q=1")),
            "https://a.test/p?q=1"
        );
        assert_eq!(
            https_location("a.test", 8443, "/", None),
            "https://a.test:8443/"
        );
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
