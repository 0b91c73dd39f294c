//! The admin endpoint's phleet paths: `GET /phleet/status`, `/phleet/logs`, `/phleet/targets`
//! and `POST /hooks/git`. The ships are the ones HQ's `ships` lists; every answer is a
//! fan-out through [`starphleet_phleet::PeerClient`], each ship bounded in time.

use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{HeaderMap, Response, StatusCode};
use starphleet_phleet::{Peer, PeerStatus, ShipStatus};
use tracing::{info, warn};

use super::{json, respond, Admin, Body};

/// The ships of HQ's `ships` file, in its order.
pub(crate) fn peers(admin: &Admin) -> Vec<Peer> {
    let view = admin.view.borrow();
    view.snapshot
        .hq
        .iter()
        .flat_map(|hq| hq.ships.iter().map(|s| Peer::new(&s.name, &s.url)))
        .collect()
}

/// What `status` says about the phleet: which ship of `ships` this one is, or that it runs alone.
pub(crate) fn membership(name: &str, peers: &[Peer]) -> String {
    if peers.iter().any(|p| p.name == name) {
        format!("ship {name} of a phleet of {} (HQ's ships)", peers.len())
    } else if peers.is_empty() {
        "runs alone: HQ has no ships file".to_string()
    } else {
        format!(
            "runs alone: no ship named {name} in HQ's ships ({} listed); start it with --name NAME as listed there",
            peers.len()
        )
    }
}

fn error(status: StatusCode, why: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": why.to_string() }).to_string(),
    )
}

/// The ships' answer when HQ lists none.
fn no_ships() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "HQ lists no ships: add a `ships` file at the HQ root (one `NAME URL` per line) to make a phleet",
    )
}

/// `GET /phleet/status`: every ship side by side (this ship answers from its own state).
pub(crate) async fn status(admin: &Admin) -> Response<Body> {
    let peers = peers(admin);
    if peers.is_empty() {
        return no_ships();
    }
    let me = admin.ctx.opts.name.clone();
    let own = serde_json::to_value(super::live_status(admin).await)
        .ok()
        .and_then(|v| serde_json::from_value::<ShipStatus>(v).ok());
    let asks = peers.iter().map(|p| {
        let own = own.clone();
        let me = &me;
        async move {
            let st = match own {
                Some(st) if p.name == *me => PeerStatus::Reachable(Box::new(st)),
                _ => admin.peers.status(p).await,
            };
            (p.clone(), st)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let hq_commit = admin.view.borrow().snapshot.hq_commit.clone();
    let view = starphleet_phleet::phleet_view(hq_commit.as_deref(), &answers);
    json(
        StatusCode::OK,
        serde_json::to_string_pretty(&view).unwrap_or_default(),
    )
}

/// `GET /phleet/targets`: Prometheus HTTP service discovery for every ship's `/metrics`.
pub(crate) fn targets(admin: &Admin) -> Response<Body> {
    json(
        StatusCode::OK,
        starphleet_phleet::targets(&peers(admin)).to_string(),
    )
}

/// `GET /phleet/versions`: per service what this ship serves healthy since when, and the
/// versions that failed here, for the ships of later rollout waves.
pub(crate) fn versions(admin: &Admin) -> Response<Body> {
    use starphleet_phleet::{FailedVersion, ServiceVersions, Serving, ShipVersions};
    let state = admin.view.borrow().snapshot.state.clone();
    let services = state
        .services
        .iter()
        .map(|(name, svc)| {
            let current = svc
                .current
                .as_ref()
                .filter(|v| {
                    v.containers
                        .iter()
                        .any(|c| c.pid != 0 && crate::layout::process_alive(c.pid))
                })
                .map(|v| Serving {
                    version: crate::telemetry::version_label(&v.app_commit, &v.order_revision),
                    // A container started again after a crash starts a new healthy span.
                    healthy_since_ms: v
                        .containers
                        .iter()
                        .map(|c| c.started_at_ms)
                        .fold(v.healthy_at_ms, u64::max),
                });
            let mut failed: Vec<FailedVersion> = svc
                .deploys
                .iter()
                .filter(|d| d.outcome.starts_with("failed"))
                .map(|d| FailedVersion {
                    version: d.version_label.clone(),
                    at_ms: d.started_at_ms,
                    why: d.outcome.clone(),
                })
                .collect();
            if let Some(version) = &svc.crash_looped {
                failed.push(FailedVersion {
                    version: version.clone(),
                    at_ms: svc.restart_at_ms,
                    why: format!(
                        "crash loop: it crashed {} times before running steadily",
                        crate::state::CRASH_LOOP
                    ),
                });
            }
            let versions = ServiceVersions {
                current,
                deploying: None,
                failed,
            };
            (name.clone(), versions)
        })
        .collect();
    let answer = ShipVersions {
        ship: admin.ctx.opts.name.clone(),
        services,
        sampled_at_ms: crate::state::now_ms(),
    };
    json(
        StatusCode::OK,
        serde_json::to_string(&answer).unwrap_or_default(),
    )
}

/// `GET /phleet/logs?…&follow=1`: every ship's records merged by time, one JSON line each
/// (records carry `ship`; notices about ships carry `notice`).
pub(crate) fn logs(admin: &Admin, query: Option<&str>) -> Response<Body> {
    let (query, follow) = match starphleet_phleet::LogQuery::from_query_string(query.unwrap_or(""))
    {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let peers = peers(admin);
    if peers.is_empty() {
        return no_ships();
    }
    let merged = admin.peers.logs(&peers, &query, follow);
    let stream = futures::stream::unfold(merged, |mut merged| async move {
        let line = serde_json::to_string(&merged.next().await?).unwrap_or_default() + "\n";
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), merged))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

/// `POST /hooks/git`: a signed push event. Checks the repositories it names that this ship
/// follows at once, and passes the event on to the other ships (once: a passed-on event
/// carries [`starphleet_phleet::FORWARDED_HEADER`]).
pub(crate) async fn hook(admin: &Admin, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let secret = match starphleet_phleet::load_hook_secret(&admin.ctx.layout.webhook_secret()) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let forge = match starphleet_phleet::verify(&headers, &body, &secret) {
        Ok(f) => f,
        Err(e) => {
            admin.refused();
            warn!("push event refused: {e}");
            return error(StatusCode::UNAUTHORIZED, e);
        }
    };
    let repos = match starphleet_phleet::repositories(forge, &body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let followed: Vec<String> = {
        let view = admin.view.borrow();
        let mut urls = vec![crate::ship::split_source(&admin.ctx.opts.headquarters).url];
        if let Some(hq) = &view.snapshot.hq {
            urls.extend(hq.orders.iter().map(|o| o.autodeploy.url.clone()));
        }
        urls
    };
    let checking = followed
        .iter()
        .any(|u| starphleet_phleet::names_source(&repos, u));
    if checking {
        admin.wake.notify_one();
    }
    info!(%forge, repositories = ?repos, checking, "push event");
    if !starphleet_phleet::is_forwarded(&headers) {
        let (client, me, peers) = (
            admin.peers.clone(),
            admin.ctx.opts.name.clone(),
            peers(admin),
        );
        tokio::spawn(async move {
            for (peer, sent) in client.forward_hook(&me, &peers, &headers, body).await {
                if let Err(e) = sent {
                    warn!(ship = %peer.name, "passing the push event on failed: {e}");
                }
            }
        });
    }
    respond(
        StatusCode::ACCEPTED,
        "application/json",
        serde_json::json!({
            "forge": forge.to_string(),
            "repositories": repos,
            "checking": checking,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_says_whether_the_ship_is_listed() {
        let peers = [
            Peer::new("north", "http://10.0.0.1:9797"),
            Peer::new("south", "http://10.0.0.2:9797"),
        ];
        assert_eq!(
            membership("south", &peers),
            "ship south of a phleet of 2 (HQ's ships)"
        );
        assert!(membership("east", &peers).starts_with("runs alone: no ship named east"));
        assert_eq!(membership("east", &[]), "runs alone: HQ has no ships file");
    }
}
