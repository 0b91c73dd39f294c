//! The admin endpoint: the dashboard, `GET /status` (JSON), `/metrics`, `/logs`, and
//! `POST /redeploy/SERVICE`, on a socket in the state dir and on loopback TCP. It reads the
//! owner's snapshots and asks the owner for changes; it holds no state of its own.

pub mod client;
mod phleet;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use starphleet_phleet::{PeerClient, Token};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::context::Ctx;
use crate::layout::process_alive;
use crate::owner::{Event, OwnerTx, View};
use crate::state::now_ms;

pub use client::{get, request, stream_lines, ClientError};
pub use status::{
    ContainerStatus, ForwarderStatus, LogSummary, RouteStatus, ServiceStatus, Status,
};

/// What the admin endpoint works with.
pub(crate) struct Admin {
    /// The ship's context.
    pub ctx: Arc<Ctx>,
    /// The owner's snapshots.
    pub view: watch::Receiver<View>,
    /// Asks the owner for changes.
    pub owner: OwnerTx,
    /// The phleet token every request beyond loopback must carry.
    token: Option<Token>,
    /// Asks the other ships, with the token.
    peers: PeerClient,
    /// Asks the followers for an immediate check (a push event came in).
    wake: Arc<Notify>,
    /// Requests refused for a missing or wrong token or signature, for `/metrics`.
    refusals: AtomicU64,
}

impl Admin {
    /// The admin endpoint over the owner's snapshots; `wake` starts an immediate check of the
    /// repositories followed.
    pub fn new(
        ctx: Arc<Ctx>,
        view: watch::Receiver<View>,
        owner: OwnerTx,
        token: Option<Token>,
        wake: Arc<Notify>,
    ) -> Self {
        let peers = PeerClient::new(token.as_ref());
        Admin {
            ctx,
            view,
            owner,
            token,
            peers,
            wake,
            refusals: AtomicU64::new(0),
        }
    }

    /// Counts a refused request.
    fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    fn identity(&self) -> status::Identity<'_> {
        status::Identity {
            name: &self.ctx.opts.name,
            id: self.ctx.names.ship_id(),
            headquarters: &self.ctx.opts.headquarters,
        }
    }
}

/// The status with live numbers: container samples from the kernel, route counters from the proxy.
pub(crate) async fn live_status(admin: &Admin) -> Status {
    let view = admin.view.borrow().clone();
    let mut st = status::build(&view, &admin.identity(), now_ms());
    st.certs = admin.ctx.certs.statuses().to_vec();
    st.phleet = Some(phleet::membership(
        &admin.ctx.opts.name,
        &phleet::peers(admin),
    ));
    let proxy = admin.ctx.proxy.status().await.ok();
    let wanted: Vec<(u32, String)> = st
        .services
        .iter()
        .flat_map(|svc| svc.containers.iter().filter(|c| c.running))
        .map(|c| (c.pid, c.host_if.clone()))
        .collect();
    let mut samples =
        starphleet_telemetry::metrics::sample_containers(wanted, &admin.ctx.names.veth_prefix())
            .await
            .into_iter();
    for svc in &mut st.services {
        for c in svc.containers.iter_mut().filter(|c| c.running) {
            if let Some(Ok(sample)) = samples.next() {
                c.cpu_seconds = Some(sample.cpu_usage_ns as f64 / 1e9);
                c.memory_bytes = Some(sample.memory_working_set_bytes);
                c.memory_peak_bytes = sample.memory_peak_bytes;
                c.threads = Some(sample.threads);
                c.memory_limit_bytes = sample.memory_limit_bytes;
                c.oom_kills = sample.oom_kills;
                c.net_rx_bytes = sample.net.as_ref().map(|n| n.rx_bytes);
                c.net_tx_bytes = sample.net.as_ref().map(|n| n.tx_bytes);
            }
        }
        if let Some(p) = &proxy {
            let in_flight: u64 = svc
                .containers
                .iter()
                .map(|c| p.in_flight.get(&c.id).copied().unwrap_or(0))
                .sum();
            for r in &mut svc.routes {
                r.in_flight = in_flight;
                if let Some(c) = p
                    .routes
                    .iter()
                    .find(|c| c.port == r.port && c.prefix == r.prefix)
                {
                    r.requests = c.requests();
                    r.requests_by_class = c.requests_by_class;
                    r.latency_ms_p50 = c.latency_quantile(0.5).map(|s| s * 1000.0);
                    r.latency_ms_p99 = c.latency_quantile(0.99).map(|s| s * 1000.0);
                }
            }
        }
    }
    if let Some(p) = &proxy {
        for (port, err) in &p.bind_errors {
            st.errors
                .push(format!("port {port}: the proxy cannot listen: {err}"));
        }
    }
    let stats = admin.ctx.telemetry.store.stats();
    let free = crate::selfcheck::free_bytes(admin.ctx.layout.root());
    let low = free.filter(|&f| f < crate::selfcheck::DISK_LOW || stats.space_low);
    if let Some(free) = low {
        st.errors.push(format!(
            "the disk of the state dir {} is nearly full ({} KiB free): services keep running, old logs are deleted to make room and deploys wait; free some space",
            admin.ctx.layout.root().display(),
            free >> 10
        ));
    } else if stats.disk_full {
        st.errors.push(format!(
            "the disk of the state dir {} is full: services keep running, {} log records were dropped so far; free space and logging resumes",
            admin.ctx.layout.root().display(),
            stats.dropped_records
        ));
    }
    st.logs = Some(LogSummary {
        disk_bytes: stats.disk_bytes,
        records: stats.records,
        dropped_records: stats.dropped_records,
        disk_full: stats.disk_full,
    });
    st
}

/// Prometheus text for every running container (cAdvisor names) and the log store.
pub(crate) async fn metrics(admin: &Admin) -> String {
    let ship_name = admin.ctx.opts.name.clone();
    use starphleet_telemetry::metrics::{self, ContainerLabels, Scrape};
    let mut containers = Vec::new();
    let running: Vec<(String, String, u32, crate::state::ContainerRecord)> = {
        let state = admin.view.borrow().snapshot.state.clone();
        state
            .services
            .iter()
            .flat_map(|(name, svc)| {
                svc.current
                    .iter()
                    .chain(svc.draining.iter())
                    .flat_map(move |v| {
                        let label =
                            crate::telemetry::version_label(&v.app_commit, &v.order_revision);
                        v.containers
                            .iter()
                            .map(move |c| (name.clone(), label.clone(), svc.restarts, c.clone()))
                    })
            })
            .collect()
    };
    let running: Vec<_> = running
        .into_iter()
        .filter(|(_, _, _, c)| c.pid != 0 && process_alive(c.pid))
        .collect();
    let samples = metrics::sample_containers(
        running
            .iter()
            .map(|(_, _, _, c)| (c.pid, c.host_if.clone()))
            .collect(),
        &admin.ctx.names.veth_prefix(),
    )
    .await;
    for ((service, version, restarts, c), sample) in running.into_iter().zip(samples) {
        if let Ok(mut sample) = sample {
            sample.restarts = restarts as u64;
            containers.push((
                ContainerLabels {
                    ship: ship_name.clone(),
                    service,
                    version,
                    container: c.id.clone(),
                },
                sample,
            ));
        }
    }
    let routes = match admin.ctx.proxy.status().await {
        Ok(p) => p
            .routes
            .iter()
            .map(|c| {
                let in_flight = p
                    .table
                    .ports
                    .get(&c.port)
                    .and_then(|rs| rs.iter().find(|r| r.prefix == c.prefix))
                    .map(|r| {
                        r.upstreams
                            .iter()
                            .map(|u| p.in_flight.get(&u.container).copied().unwrap_or(0))
                            .sum()
                    })
                    .unwrap_or(0);
                (
                    metrics::RouteLabels {
                        ship: ship_name.clone(),
                        service: c.service.clone(),
                        route: format!(":{}{}", c.port, c.prefix),
                    },
                    metrics::RouteSample {
                        requests_by_class: c.requests_by_class,
                        in_flight,
                        response_bytes: c.response_bytes,
                        latency: metrics::LatencyHistogram {
                            bounds_s: starphleet_proxy::LATENCY_BOUNDS_S.to_vec(),
                            counts: c.latency_counts.clone(),
                            sum_s: c.latency_sum_s,
                        },
                    },
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let certs = starphleet_certs::metrics::render(&ship_name, &admin.ctx.certs.statuses());
    let mut text = metrics::render(Scrape {
        containers,
        routes,
        logs: Some((ship_name.clone(), admin.ctx.telemetry.store.stats())),
    });
    text.push_str(&certs);
    text.push_str(&format!(
        "# HELP starphleet_admin_refused_total Admin requests refused for a missing or wrong phleet token or webhook signature.\n\
         # TYPE starphleet_admin_refused_total counter\n\
         starphleet_admin_refused_total{{ship=\"{}\"}} {}\n",
        ship_name.replace('\\', "\\\\").replace('"', "\\\""),
        admin.refusals.load(Ordering::Relaxed)
    ));
    text
}

/// Every admin response body: whole, or streamed for `logs?follow=1`.
type Body = BoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("static response parts are valid")
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "application/json", body)
}

/// `GET /logs?service=&since=&until=&grep=&kind=&limit=&follow=1`: JSON lines, newest last.
fn logs(admin: &Admin, query: Option<&str>) -> Response<Body> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let parsed = crate::logs::parse_query(
        param("service"),
        param("since"),
        param("until"),
        param("grep"),
        param("kind"),
        param("limit"),
    );
    let q = match parsed {
        Ok(q) => q,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            )
        }
    };
    let follow = matches!(param("follow"), Some("1") | Some("true"));
    if !follow {
        return match admin.ctx.telemetry.store.query(&q) {
            Ok(records) => {
                let mut out = String::new();
                for r in records {
                    out.push_str(&serde_json::to_string(&r).unwrap_or_default());
                    out.push('\n');
                }
                respond(StatusCode::OK, "application/x-ndjson", out)
            }
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        };
    }
    let (backlog, mut live) = match admin.ctx.telemetry.store.follow(&q) {
        Ok(f) => f,
        Err(e) => {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            )
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        for r in backlog {
            let line = serde_json::to_string(&r).unwrap_or_default() + "\n";
            if tx.send(line.into()).await.is_err() {
                return;
            }
        }
        while let Some(next) = live.next().await {
            let line = match next {
                starphleet_telemetry::Followed::Record(r) => {
                    serde_json::to_string(&r).unwrap_or_default()
                }
                starphleet_telemetry::Followed::Missed(n) => {
                    serde_json::json!({ "missed": n }).to_string()
                }
            } + "\n";
            if tx.send(line.into()).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

/// Which listener a request came in on: the socket in the state dir (its file permissions
/// decide who may talk to the ship) or TCP.
#[derive(Debug, Clone, Copy)]
enum Via {
    Socket,
    Tcp(SocketAddr),
}

/// Why a request on TCP is refused before it is looked at, if it is.
///
/// A browser page must not drive the ship: the Host of a request on a loopback listener must
/// be a loopback name (no DNS rebinding), a request carrying an `Origin` must come from the
/// admin endpoint itself (no cross-site requests), and changes (anything but GET/HEAD) are
/// only taken over the socket.
fn refuse(
    via: Via,
    method: &Method,
    path: &str,
    headers: &hyper::HeaderMap,
) -> Option<&'static str> {
    let Via::Tcp(local) = via else { return None };
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if local.ip().is_loopback() && !is_loopback_host(host) {
        return Some(
            "the admin endpoint answers only to a loopback Host (e.g. 127.0.0.1 or localhost)",
        );
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-origin requests to the admin endpoint are refused");
        }
    }
    let push_event = method == Method::POST && path == HOOK_PATH;
    if method != Method::GET && method != Method::HEAD && !push_event {
        return Some(
            "changes are taken only over the ship's admin socket: use the starphleet CLI on the ship",
        );
    }
    None
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where forges post push events.
const HOOK_PATH: &str = "/hooks/git";
/// The largest push event taken.
const HOOK_MAX_BYTES: usize = 4 << 20;
/// How long a push event's body may take to arrive.
const HOOK_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a request on `via` may go on without a phleet token: over the socket and on a
/// loopback listener always; beyond loopback only with the token, or for a push event (its
/// signature is checked instead).
fn authorized(
    admin: &Admin,
    via: Via,
    method: &Method,
    path: &str,
    headers: &hyper::HeaderMap,
) -> bool {
    let Via::Tcp(local) = via else { return true };
    if starphleet_phleet::is_loopback(&local) || (method == Method::POST && path == HOOK_PATH) {
        return true;
    }
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    admin.token.as_ref().is_some_and(|t| t.matches(presented))
}

async fn handle(
    admin: Arc<Admin>,
    via: Via,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !authorized(&admin, via, req.method(), req.uri().path(), req.headers()) {
        admin.refused();
        warn!(method = %req.method(), path = req.uri().path(), "admin request refused: no valid phleet token (Authorization: Bearer)");
        let mut resp = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "this admin endpoint needs the phleet token: send `Authorization: Bearer <token>` with the token of <state-dir>/phleet.token" }).to_string(),
        );
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(resp);
    }
    if let Some(why) = refuse(via, req.method(), req.uri().path(), req.headers()) {
        warn!(method = %req.method(), path = req.uri().path(), "admin request refused: {why}");
        return Ok(json(
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": why }).to_string(),
        ));
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(
            StatusCode::OK,
            serde_json::to_string_pretty(&live_status(&admin).await).unwrap_or_default(),
        ),
        (&Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("../dashboard.html"),
        ),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            starphleet_telemetry::metrics::CONTENT_TYPE,
            metrics(&admin).await,
        ),
        (&Method::GET, "/logs") => logs(&admin, req.uri().query()),
        (&Method::GET, "/health") => json(StatusCode::OK, "{\"ok\":true}".into()),
        (&Method::POST, path) if path.starts_with("/certs/renew/") => {
            let host = &path["/certs/renew/".len()..];
            if admin.ctx.certs.force_renewal(host) {
                json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "renewing": host }).to_string(),
                )
            } else {
                json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error": format!("{host} is no --tls --host of this ship") })
                        .to_string(),
                )
            }
        }
        (&Method::GET, "/phleet/status") => phleet::status(&admin).await,
        (&Method::GET, "/phleet/logs") => phleet::logs(&admin, req.uri().query()),
        (&Method::GET, "/phleet/targets") => phleet::targets(&admin),
        (&Method::GET, "/phleet/versions") => phleet::versions(&admin),
        (&Method::POST, HOOK_PATH) => {
            let headers = req.headers().clone();
            let body = http_body_util::Limited::new(req.into_body(), HOOK_MAX_BYTES);
            match tokio::time::timeout(HOOK_READ_TIMEOUT, body.collect()).await {
                Ok(Ok(body)) => phleet::hook(&admin, headers, body.to_bytes()).await,
                Ok(Err(e)) => json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({ "error": format!("reading the push event: {e}") }).to_string(),
                ),
                Err(_) => json(
                    StatusCode::REQUEST_TIMEOUT,
                    "{\"error\":\"the push event did not arrive in time\"}".into(),
                ),
            }
        }
        (&Method::POST, "/offline") | (&Method::POST, "/online") => {
            let offline = req.uri().path() == "/offline";
            match admin
                .owner
                .ask(|reply| Event::SetOffline { offline, reply })
                .await
            {
                Some(()) => json(
                    StatusCode::OK,
                    serde_json::json!({ "offline": offline }).to_string(),
                ),
                None => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"error\":\"the ship is shutting down\"}".into(),
                ),
            }
        }
        (&Method::POST, path) if path.starts_with("/redeploy/") => {
            let service = path["/redeploy/".len()..].to_string();
            let answer = admin
                .owner
                .ask(|reply| Event::Redeploy {
                    service: service.clone(),
                    reply,
                })
                .await
                .unwrap_or_else(|| Err("the ship is shutting down".into()));
            match answer {
                Ok(()) => json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "redeploying": service }).to_string(),
                ),
                Err(e) => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error": e }).to_string(),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            "{\"error\":\"unknown admin path; try GET /, /status, /metrics, /logs or /phleet/status\"}".into(),
        ),
    };
    Ok(resp)
}

/// How long a client may take to send a request's headers; an idle keep-alive connection
/// counts as sending none and is closed after it too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_conn<S>(admin: Arc<Admin>, via: Via, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(admin.clone(), via, req));
    // HTTP/1 only: detecting HTTP/2 would wait for the first bytes without any timeout.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Connections the admin socket serves at once (the CLI, `logs -f` readers).
const SOCKET_CONNECTIONS: usize = 256;
/// Connections the admin TCP endpoint serves at once (dashboards, scrapers, peers).
const TCP_CONNECTIONS: usize = 512;

/// How long the accept loop rests after an error (e.g. out of file descriptors) before trying again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket in the state dir could not be bound.
    #[error("binding the admin socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the admin endpoint on `admin.sock` in the state dir and, if configured, on TCP.
pub(crate) async fn serve(admin: Arc<Admin>) -> Result<JoinHandle<()>, AdminError> {
    let sock = admin.ctx.layout.admin_socket();
    let _ = std::fs::remove_file(&sock);
    let unix = tokio::net::UnixListener::bind(&sock).map_err(|source| AdminError::Socket {
        path: sock.clone(),
        source,
    })?;
    let tcp = match admin.ctx.opts.admin {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("admin endpoint cannot listen on {addr}: {e}; the CLI still reaches the ship through {}", sock.display());
                None
            }
        },
        None => None,
    };
    Ok(tokio::spawn(async move {
        let admin2 = admin.clone();
        // Each listener has its own budget, so a flood on TCP never keeps the CLI out.
        let socket_budget = Arc::new(tokio::sync::Semaphore::new(SOCKET_CONNECTIONS));
        let tcp_budget = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
        let unix_loop = async move {
            loop {
                match unix.accept().await {
                    Ok((s, _)) => {
                        // Over budget: the connection is closed at once (dropped).
                        if let Ok(permit) = socket_budget.clone().try_acquire_owned() {
                            let admin = admin2.clone();
                            tokio::spawn(async move {
                                serve_conn(admin, Via::Socket, s).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        warn!("admin socket accept failed, retrying: {e}");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                }
            }
        };
        let tcp_loop = async move {
            let Some(tcp) = tcp else {
                return std::future::pending::<()>().await;
            };
            let local = tcp
                .local_addr()
                .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            loop {
                match tcp.accept().await {
                    Ok((s, _)) => {
                        if let Ok(permit) = tcp_budget.clone().try_acquire_owned() {
                            let admin = admin.clone();
                            tokio::spawn(async move {
                                serve_conn(admin, Via::Tcp(local), s).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        warn!("admin endpoint accept failed, retrying: {e}");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                }
            }
        };
        tokio::join!(unix_loop, tcp_loop);
    }))
}
