//! The admin endpoint: `GET /status` as JSON, on a socket in the state dir and on loopback TCP.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::layout::process_alive;
use crate::ship::Ship;
use crate::state::{DeployRecord, PublishRecord};

/// What `GET /status` answers and `starphleet status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Ship name.
    pub ship: String,
    /// Ship id (unique per state dir).
    pub ship_id: String,
    /// HQ URL.
    pub headquarters: String,
    /// HQ commit in force.
    pub headquarters_commit: Option<String>,
    /// Why HQ cannot be followed right now, if so.
    pub headquarters_error: Option<String>,
    /// Every diagnostic of the HQ checkout and the ship's env folder, rendered.
    pub errors: Vec<String>,
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
    /// The log store's size.
    #[serde(default)]
    pub logs: Option<LogSummary>,
    /// Log forwarders named in `.starphleet`.
    #[serde(default)]
    pub forwarders: Vec<ForwarderStatus>,
    /// The ship's clock when this status was built, Unix ms (the dashboard computes rates from it).
    #[serde(default)]
    pub sampled_at_ms: u64,
}

/// One log forwarder in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwarderStatus {
    /// Where it sends, e.g. `syslog tcp://…`.
    pub target: String,
    /// Its counters.
    pub stats: starphleet_telemetry::ForwardStats,
}

/// The log store in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSummary {
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Records stored since the store was opened.
    pub records: u64,
}

/// One public route of a service, with the proxy's live counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Public port.
    pub port: u16,
    /// URL prefix.
    pub prefix: String,
    /// Requests answered since the proxy started.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests_by_class: [u64; 5],
    /// Median latency, ms.
    pub latency_ms_p50: Option<f64>,
    /// 99th percentile latency, ms.
    pub latency_ms_p99: Option<f64>,
}

/// One service in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// "serving", "deploying", "failed", "down", "broken order".
    pub state: String,
    /// The serving version's key.
    pub version: Option<String>,
    /// Its app commit.
    pub app_commit: Option<String>,
    /// Its order revision.
    pub order_revision: Option<String>,
    /// Where it is published.
    pub publish: Vec<PublishRecord>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
    /// The latest problem with this service, if any.
    pub error: Option<String>,
    /// Recent deploys, oldest first.
    pub deploys: Vec<DeployRecord>,
    /// Crashes since it last ran steadily (restarts back off exponentially).
    pub restarts: u32,
    /// Its routes with live counters.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
}

/// One container in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Address on the ship's bridge.
    pub ip: String,
    /// Init pid.
    pub pid: u32,
    /// Whether its process is alive.
    pub running: bool,
    /// Unix ms of its start.
    pub started_at_ms: u64,
    /// CPU time used, seconds (from its cgroup).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// Working-set memory, bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Peak memory, bytes, where the kernel records it.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// Threads in its cgroup.
    #[serde(default)]
    pub threads: Option<u64>,
    /// Bytes it received on its veth.
    #[serde(default)]
    pub net_rx_bytes: Option<u64>,
    /// Bytes it sent on its veth.
    #[serde(default)]
    pub net_tx_bytes: Option<u64>,
    /// Host end of its veth (for sampling).
    #[serde(skip)]
    pub host_if: String,
}

/// Builds the status from persisted and live state.
pub fn status(ship: &Ship) -> Status {
    let state = ship.state.lock().unwrap();
    let live = ship.live.lock().unwrap();
    let mut errors: Vec<String> = live
        .hq
        .as_ref()
        .map(|hq| hq.errors.iter().map(|d| d.to_string()).collect())
        .unwrap_or_default();
    errors.extend(live.env_errors.iter().cloned());
    errors.extend(live.forward_error.iter().cloned());
    let forwarders = live
        .forwarders
        .iter()
        .map(|f| ForwarderStatus {
            target: f.target().to_string(),
            stats: f.stats(),
        })
        .collect();
    let broken: Vec<(String, String)> = live
        .hq
        .as_ref()
        .map(|hq| {
            hq.broken
                .iter()
                .map(|b| {
                    let text: Vec<String> = b.diagnostics.iter().map(|d| d.to_string()).collect();
                    (b.service.clone(), text.join("\n"))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut names: Vec<String> = state.services.keys().cloned().collect();
    for (name, _) in &broken {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if let Some(hq) = &live.hq {
        for o in &hq.orders {
            if !names.contains(&o.service) {
                names.push(o.service.clone());
            }
        }
    }
    names.sort();
    let services = names
        .into_iter()
        .map(|name| {
            let svc = state.services.get(&name).cloned().unwrap_or_default();
            let broken_error = broken
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, e)| e.clone());
            let current = svc.current.as_ref();
            let containers: Vec<ContainerStatus> = current
                .map(|v| {
                    v.containers
                        .iter()
                        .map(|c| ContainerStatus {
                            id: c.id.clone(),
                            ip: c.ip.to_string(),
                            pid: c.pid,
                            running: c.pid != 0 && process_alive(c.pid),
                            started_at_ms: c.started_at_ms,
                            cpu_seconds: None,
                            memory_bytes: None,
                            memory_peak_bytes: None,
                            threads: None,
                            net_rx_bytes: None,
                            net_tx_bytes: None,
                            host_if: c.host_if.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let serving = containers.iter().any(|c| c.running);
            let state_word = if broken_error.is_some() {
                "broken order"
            } else if live.deploying.contains_key(&name) {
                "deploying"
            } else if serving {
                "serving"
            } else if svc.last_error.is_some() {
                "failed"
            } else {
                "down"
            };
            let error = broken_error
                .or_else(|| live.unreachable.get(&name).cloned())
                .or(svc.last_error.clone());
            ServiceStatus {
                state: state_word.to_string(),
                version: current.map(|v| v.key.clone()),
                app_commit: current.map(|v| v.app_commit.clone()),
                order_revision: current.map(|v| v.order_revision.clone()),
                publish: current.map(|v| v.publish.clone()).unwrap_or_default(),
                containers,
                error,
                deploys: svc.deploys.clone(),
                restarts: svc.restarts,
                routes: current
                    .map(|v| {
                        v.publish
                            .iter()
                            .map(|p| RouteStatus {
                                port: p.public,
                                prefix: p.url.clone(),
                                ..Default::default()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                name,
            }
        })
        .collect();
    Status {
        ship: ship.opts.name.clone(),
        ship_id: ship.id.clone(),
        headquarters: ship.opts.headquarters.clone(),
        headquarters_commit: live.hq_commit.clone(),
        headquarters_error: live.hq_error.clone(),
        errors,
        services,
        logs: None,
        forwarders,
        sampled_at_ms: crate::state::now_ms(),
    }
}

/// The status with live numbers: container samples from the kernel, route counters from the proxy.
pub async fn live_status(ship: &Ship) -> Status {
    let mut st = status(ship);
    let proxy = ship.proxy.status().await.ok();
    for svc in &mut st.services {
        for c in svc.containers.iter_mut().filter(|c| c.running) {
            if let Ok(sample) =
                starphleet_telemetry::metrics::sample_container(c.pid, Some(&c.host_if)).await
            {
                c.cpu_seconds = Some(sample.cpu_usage_ns as f64 / 1e9);
                c.memory_bytes = Some(sample.memory_working_set_bytes);
                c.memory_peak_bytes = sample.memory_peak_bytes;
                c.threads = Some(sample.threads);
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
    let stats = ship.observer.store.stats();
    st.logs = Some(LogSummary {
        disk_bytes: stats.disk_bytes,
        records: stats.records,
    });
    st
}

/// Prometheus text for every running container (cAdvisor names) and the log store.
pub async fn metrics(ship: &Ship) -> String {
    use starphleet_telemetry::metrics::{self, ContainerLabels, Scrape};
    let mut containers = Vec::new();
    let running: Vec<(String, String, u32, crate::state::ContainerRecord)> = {
        let state = ship.state.lock().unwrap();
        state
            .services
            .iter()
            .flat_map(|(name, svc)| {
                svc.current
                    .iter()
                    .chain(svc.draining.iter())
                    .flat_map(move |v| {
                        let label = crate::observe::version_label(&v.app_commit, &v.order_revision);
                        v.containers
                            .iter()
                            .map(move |c| (name.clone(), label.clone(), svc.restarts, c.clone()))
                    })
            })
            .collect()
    };
    for (service, version, restarts, c) in running {
        if c.pid == 0 || !process_alive(c.pid) {
            continue;
        }
        if let Ok(mut sample) = metrics::sample_container(c.pid, Some(&c.host_if)).await {
            sample.restarts = restarts as u64;
            containers.push((
                ContainerLabels {
                    ship: ship.opts.name.clone(),
                    service,
                    version,
                    container: c.id.clone(),
                },
                sample,
            ));
        }
    }
    let routes = match ship.proxy.status().await {
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
                        ship: ship.opts.name.clone(),
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
    metrics::render(Scrape {
        containers,
        routes,
        logs: Some((ship.opts.name.clone(), ship.observer.store.stats())),
    })
}

/// Marks `service` for a fresh build and zero-downtime switch on the next reconcile pass.
fn request_redeploy(ship: &Ship, service: &str) -> Result<(), String> {
    let known: Vec<String> = {
        let live = ship.live.lock().unwrap();
        live.hq
            .as_ref()
            .map(|hq| hq.orders.iter().map(|o| o.service.clone()).collect())
            .unwrap_or_default()
    };
    if !known.iter().any(|s| s == service) {
        return Err(format!(
            "no order for service `{service}` in headquarters; services: {}",
            known.join(", ")
        ));
    }
    {
        let mut state = ship.state.lock().unwrap();
        let svc = state.services.entry(service.to_string()).or_default();
        svc.redeploy_requested = true;
        svc.failed_key = None;
        ship.save(&state);
    }
    ship.wake();
    Ok(())
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
fn logs(ship: &Ship, query: Option<&str>) -> Response<Body> {
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
                serde_json::json!({ "error": e }).to_string(),
            )
        }
    };
    let follow = matches!(param("follow"), Some("1") | Some("true"));
    if !follow {
        return match ship.observer.store.query(&q) {
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
                serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            ),
        };
    }
    let (backlog, mut live) = match ship.observer.store.follow(&q) {
        Ok(f) => f,
        Err(e) => {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": format!("{e:#}") }).to_string(),
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

async fn handle(ship: Arc<Ship>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(
            StatusCode::OK,
            serde_json::to_string_pretty(&live_status(&ship).await).unwrap_or_default(),
        ),
        (&Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("dashboard.html"),
        ),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            starphleet_telemetry::metrics::CONTENT_TYPE,
            metrics(&ship).await,
        ),
        (&Method::GET, "/logs") => logs(&ship, req.uri().query()),
        (&Method::GET, "/health") => json(StatusCode::OK, "{\"ok\":true}".into()),
        (&Method::POST, path) if path.starts_with("/redeploy/") => {
            let service = &path["/redeploy/".len()..];
            match request_redeploy(&ship, service) {
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
            "{\"error\":\"unknown admin path; try GET /, /status, /metrics or /logs\"}".into(),
        ),
    };
    Ok(resp)
}

async fn serve_conn<S>(ship: Arc<Ship>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(ship.clone(), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Starts the admin endpoint on `admin.sock` in the state dir and, if configured, on TCP.
pub async fn serve(ship: Arc<Ship>) -> Result<JoinHandle<()>> {
    let sock = ship.layout.admin_socket();
    let _ = std::fs::remove_file(&sock);
    let unix = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding admin socket {}", sock.display()))?;
    let tcp = match ship.opts.admin {
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
        let ship2 = ship.clone();
        let unix_loop = async move {
            while let Ok((s, _)) = unix.accept().await {
                tokio::spawn(serve_conn(ship2.clone(), s));
            }
        };
        let tcp_loop = async move {
            if let Some(tcp) = tcp {
                while let Ok((s, _)) = tcp.accept().await {
                    tokio::spawn(serve_conn(ship.clone(), s));
                }
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::join!(unix_loop, tcp_loop);
    }))
}

/// Asks the ship behind `admin.sock` for `path` (a GET) and returns the body.
pub async fn get(socket: &std::path::Path, path: &str) -> Result<String> {
    Ok(request(socket, Method::GET, path).await?.1)
}

/// Sends one request to the ship behind `admin.sock`; returns the status code and body.
pub async fn request(
    socket: &std::path::Path,
    method: Method,
    path: &str,
) -> Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("no ship answers on {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "starphleet")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `GET path` to the ship behind `admin.sock` and hands each line of the (streamed)
/// body to `on_line` as it arrives; returns the status code.
pub async fn stream_lines(
    socket: &std::path::Path,
    path: &str,
    mut on_line: impl FnMut(&str),
) -> Result<u16> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("no ship answers on {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "starphleet")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let code = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                on_line(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
            }
        }
    }
    if !pending.is_empty() {
        on_line(String::from_utf8_lossy(&pending).as_ref());
    }
    Ok(code)
}
