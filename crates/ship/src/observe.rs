//! The followers: every poll interval they ask headquarters and each app repository where its
//! ref points (one `git ls-remote` each, concurrently and bounded), load HQ when it moved, and
//! read the ship's env folder; each answer goes to the owner as it comes, so a remote that
//! hangs delays only the services that depend on it. A remote that keeps failing is asked less
//! often (back-off), never hammered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use starphleet_orders::{GitSource, Headquarters};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::owner::{Event, OwnerTx, View};

/// How often HQ and app refs are polled unless configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How many remotes are asked at once.
const CONCURRENT_REMOTES: usize = 8;
/// The longest wait before asking a failing remote again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What one follower job found.
enum Found {
    Hq(Result<Option<(String, Box<Headquarters>)>, String>),
    App(GitSource, Result<String, String>),
}

/// The ship's env folder as last read: its pairs and its diagnostics.
type ShipEnv = (Vec<(String, String)>, Vec<String>);

/// A repository that failed: how often in a row, and when to ask again.
struct Failing {
    count: u32,
    retry_at: Instant,
}

/// Follows HQ and the app repositories until `stop`; `wake` asks for a pass now.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    owner: OwnerTx,
    view: watch::Receiver<View>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_REMOTES));
    let mut jobs: JoinSet<Found> = JoinSet::new();
    let mut hq_running = false;
    let mut hq_loaded: Option<String> = None;
    let mut apps_running: HashSet<GitSource> = HashSet::new();
    let mut failing: HashMap<GitSource, Failing> = HashMap::new();
    let mut env_seen: Option<ShipEnv> = None;
    let mut next = Instant::now();
    // A wake (a push event) while HQ is being asked asks it again once that answer is in,
    // so a push right after a poll started is not left for the next poll.
    let mut hq_again = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {
                hq_again = hq_running;
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let Ok(found) = done else { continue };
                match found {
                    Found::Hq(result) => {
                        hq_running = false;
                        if std::mem::take(&mut hq_again) {
                            next = Instant::now();
                        }
                        match result {
                            Ok(Some((commit, hq))) => {
                                hq_loaded = Some(commit.clone());
                                owner.send(Event::HqLoaded { commit, hq });
                                // New orders may name new repositories: ask them at once.
                                next = Instant::now();
                            }
                            Ok(None) => owner.send(Event::HqUnchanged),
                            Err(e) => owner.send(Event::HqFailed(e)),
                        }
                    }
                    Found::App(source, result) => {
                        apps_running.remove(&source);
                        match &result {
                            Ok(_) => {
                                failing.remove(&source);
                            }
                            Err(_) => {
                                let f = failing.entry(source.clone()).or_insert(Failing {
                                    count: 0,
                                    retry_at: Instant::now(),
                                });
                                f.count += 1;
                                let wait = poll_interval(&ctx, &view)
                                    .saturating_mul(1 << (f.count - 1).min(6))
                                    .min(MAX_BACKOFF.max(poll_interval(&ctx, &view)));
                                f.retry_at = Instant::now() + wait;
                            }
                        }
                        owner.send(Event::AppRef { source, result });
                    }
                }
                continue;
            }
            () = stop.cancelled() => return,
        }
        next = Instant::now() + poll_interval(&ctx, &view);

        if !hq_running {
            hq_running = true;
            let (ctx, known, t) = (ctx.clone(), hq_loaded.clone(), timeouts(&view));
            jobs.spawn(async move { Found::Hq(follow_hq(ctx, known, t).await) });
        }

        let env_dir = ctx.layout.env_dir();
        if let Ok((env, diags)) =
            tokio::task::spawn_blocking(move || crate::env::read_env_dir(&env_dir)).await
        {
            let errors: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            let now = (env, errors);
            if env_seen.as_ref() != Some(&now) {
                owner.send(Event::ShipEnv {
                    env: now.0.clone(),
                    errors: now.1.clone(),
                });
                env_seen = Some(now);
            }
        }

        let now = Instant::now();
        for source in sources(&view) {
            if apps_running.contains(&source)
                || failing.get(&source).is_some_and(|f| f.retry_at > now)
            {
                continue;
            }
            apps_running.insert(source.clone());
            let git = ctx.git.clone().with_timeouts(timeouts(&view));
            let permits = permits.clone();
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let s = source.clone();
                let result = tokio::task::spawn_blocking(move || {
                    git.resolve(&s.url, s.reference.as_deref())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                Found::App(source, result)
            });
        }
    }
}

/// The poll interval in force: the command line, else HQ's `STARPHLEET_POLL_INTERVAL`, else 2 s.
pub(crate) fn poll_interval(ctx: &Ctx, view: &watch::Receiver<View>) -> Duration {
    if let Some(d) = ctx.opts.poll_interval {
        return d;
    }
    let view = view.borrow();
    view.snapshot
        .hq
        .as_ref()
        .and_then(|hq| hq.phleet.poll_interval)
        .unwrap_or(DEFAULT_POLL_INTERVAL)
}

/// git's timeouts as HQ's `.starphleet` sets them.
fn timeouts(view: &watch::Receiver<View>) -> starphleet_git::GitTimeouts {
    let view = view.borrow();
    crate::owner::core::git_timeouts(view.snapshot.hq.as_deref().map(|hq| &hq.phleet))
}

/// The app sources HQ orders, once each.
fn sources(view: &watch::Receiver<View>) -> Vec<GitSource> {
    let view = view.borrow();
    let mut out: Vec<GitSource> = view
        .snapshot
        .hq
        .iter()
        .flat_map(|hq| hq.orders.iter().map(|o| o.autodeploy.clone()))
        .collect();
    out.sort_by(|a, b| (&a.url, &a.reference).cmp(&(&b.url, &b.reference)));
    out.dedup();
    out
}

/// Resolves HQ's ref; when it moved from `known`, checks it out and loads it. A checkout that
/// fails is tried again at the next poll (nothing remembers a half-fetched commit as loaded).
async fn follow_hq(
    ctx: Arc<Ctx>,
    known: Option<String>,
    timeouts: starphleet_git::GitTimeouts,
) -> Result<Option<(String, Box<Headquarters>)>, String> {
    let source = crate::ship::split_source(&ctx.opts.headquarters);
    let git = ctx.git.clone().with_timeouts(timeouts);
    let dir = ctx.layout.hq();
    let reserved = ctx.reserved_ports();
    tokio::task::spawn_blocking(move || {
        let commit = git
            .resolve(&source.url, source.reference.as_deref())
            .map_err(|e| e.to_string())?;
        if known.as_deref() == Some(commit.as_str()) {
            return Ok(None);
        }
        git.checkout(&source.url, &dir, &commit)
            .map_err(|e| e.to_string())?;
        let opts = starphleet_orders::HqOptions {
            reserved_ports: reserved,
        };
        let hq = starphleet_orders::load_headquarters_with(&dir, &opts);
        Ok(Some((commit, Box::new(hq))))
    })
    .await
    .map_err(|e| e.to_string())?
}
