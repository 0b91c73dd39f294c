//! The admin endpoint: `GET /status` as JSON, on a socket in the state dir and on loopback TCP.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
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
    }
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

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn handle(
    ship: Arc<Ship>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(
            StatusCode::OK,
            serde_json::to_string_pretty(&status(&ship)).unwrap_or_default(),
        ),
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
            "{\"error\":\"unknown admin path; try GET /status\"}".into(),
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
