//! Drainstop: once the proxy no longer sends a version traffic, its in-flight requests finish
//! (the proxy says when, no polling), then its containers are stopped and removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starphleet_proxy::Idle;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::owner::core::DrainJob;
use crate::owner::{Event, OwnerTx};
use crate::state::{now_ms, ContainerRecord};

/// How long a stopping container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Between attempts to reach a proxy that does not answer.
const RETRY: Duration = Duration::from_millis(100);

/// Drains one version and stops it; tells the owner when done.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    owner: OwnerTx,
    job: DrainJob,
    mut applied: watch::Receiver<u64>,
) {
    let begun = Instant::now();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(job.deadline_ms.saturating_sub(now_ms()));
    // The proxy must have the table without this version before its count means anything.
    let routed_away = tokio::time::timeout_at(deadline, async {
        applied.wait_for(|&a| a >= job.after_routes).await.is_ok()
    })
    .await
    .unwrap_or(false);
    if !routed_away {
        warn!(service = %job.service, version = %job.version.key, "the proxy did not take the new routes before the drain timeout; stopping anyway");
    }
    let ids: Vec<String> = job
        .version
        .containers
        .iter()
        .map(|c| c.id.clone())
        .collect();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if ids.is_empty() || left.is_zero() {
            break;
        }
        match ctx.proxy.wait_idle(&ids, left).await {
            Ok(Idle::Idle) => break,
            Ok(Idle::Busy { in_flight }) => {
                warn!(service = %job.service, version = %job.version.key, in_flight, "drain timeout reached; stopping with requests in flight");
                break;
            }
            // A proxy that does not answer is being restarted; a new one has none of its requests.
            Err(e) => {
                warn!(service = %job.service, "waiting for the drain: {e}");
                tokio::time::sleep(RETRY.min(left)).await;
            }
        }
    }
    let drained = begun.elapsed();
    for c in &job.version.containers {
        stop_container(&ctx, &job.service, c).await;
    }
    owner.send(Event::Drained {
        service: job.service,
        version: job.version.id,
        drain_ms: drained.as_millis() as u64,
        stop_ms: (begun.elapsed() - drained).as_millis() as u64,
    });
}

/// Stops and removes a container, its network namespace and veth; collects the rest of its
/// output. Failures are logged: stopping always finishes.
pub(crate) async fn stop_container(ctx: &Arc<Ctx>, service: &str, c: &ContainerRecord) {
    let runtime = ctx.runtime.clone();
    let (id, bundle) = (c.id.clone(), c.bundle.clone());
    match tokio::task::spawn_blocking(move || runtime.stop(&id, &bundle, STOP_GRACE)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(container = %c.id, "stopping container: {e}"),
        Err(e) => warn!(container = %c.id, "stopping container: {e}"),
    }
    if let Err(e) = starphleet_runtime::net::delete_netns(&c.netns) {
        warn!(netns = %c.netns, "removing network namespace: {e}");
    }
    // The kernel removes the veth with its namespace, but asynchronously: remove it now.
    if let Err(e) = starphleet_runtime::net::delete_link(&c.host_if).await {
        warn!(link = %c.host_if, "removing veth: {e}");
    }
    // Collecting the rest of its output reads files: off the async workers.
    let (ctx2, c2) = (ctx.clone(), c.clone());
    let _ = tokio::task::spawn_blocking(move || ctx2.telemetry.unwatch_container(&c2)).await;
    info!(service, container = %c.id, "container stopped");
}
