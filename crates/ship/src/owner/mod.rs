//! The one owner of the ship's state: a single task takes events, lets [`core::Core`] decide,
//! and carries out the effects (spawning pipelines, drains and stops). Everything else talks to
//! it through [`OwnerTx`] messages or reads its [`Snapshot`]s; the state file is written by the
//! persister thread, never on an async worker.

pub(crate) mod core;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use starphleet_telemetry::{ForwardTarget, Forwarder};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::context::Ctx;
use crate::persist::Persister;
use crate::state::now_ms;

pub(crate) use self::core::{Core, Event};
pub use self::core::{DesiredRoutes, Snapshot};

/// Sends events to the owner.
#[derive(Clone, Debug)]
pub(crate) struct OwnerTx(mpsc::UnboundedSender<Event>);

impl OwnerTx {
    /// Tells the owner; an owner that stopped (the ship is exiting) is not an error.
    pub fn send(&self, event: Event) {
        let _ = self.0.send(event);
    }

    /// Asks the owner and waits for its answer; `None` when the owner stopped.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.0.send(make(tx)).ok()?;
        rx.await.ok()
    }
}

/// The log forwarders `.starphleet` names, and what is wrong with that setting.
#[derive(Default)]
pub struct Forwarding {
    /// The running forwarders.
    pub forwarders: Vec<Arc<Forwarder>>,
    /// The problem with the setting, if any.
    pub error: Option<String>,
}

/// What readers get: the owner's snapshot and the forwarders.
#[derive(Clone, Default)]
pub struct View {
    /// State, HQ and what is in flight.
    pub snapshot: Snapshot,
    /// Log forwarding.
    pub forwarding: Arc<Forwarding>,
}

/// The channels around the owner.
pub(crate) struct Channels {
    /// Events in.
    pub tx: OwnerTx,
    rx: mpsc::UnboundedReceiver<Event>,
    /// What readers see.
    pub view: watch::Receiver<View>,
    view_tx: watch::Sender<View>,
    /// The route table the proxy should have.
    pub routes: watch::Receiver<Arc<DesiredRoutes>>,
    routes_tx: watch::Sender<Arc<DesiredRoutes>>,
}

impl Channels {
    /// Channels for an owner starting from `core`.
    pub fn new(core: &Core) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (view_tx, view) = watch::channel(View {
            snapshot: core.snapshot(),
            forwarding: Arc::default(),
        });
        let (routes_tx, routes) = watch::channel(Arc::new(core.routes().clone()));
        Channels {
            tx: OwnerTx(tx),
            rx,
            view,
            view_tx,
            routes,
            routes_tx,
        }
    }
}

/// Runs the owner until `stop` is cancelled.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut core: Core,
    channels: Channels,
    applied: watch::Receiver<u64>,
    persister: Persister,
    stop: CancellationToken,
) {
    let Channels {
        tx,
        mut rx,
        view_tx,
        routes_tx,
        ..
    } = channels;
    let mut cancels: HashMap<u64, CancellationToken> = HashMap::new();
    let mut forwarding = Arc::new(Forwarding::default());
    let mut wake: Option<u64> = Some(now_ms());
    let collecting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut decide = core::DecideTimes::default();
    loop {
        let sleep = wake.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let first = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => Some(event),
                None => break,
            },
            () = tokio::time::sleep(sleep.unwrap_or(Duration::ZERO)), if sleep.is_some() => None,
            () = stop.cancelled() => break,
        };
        // The decisions of one pass (pure: no I/O), timed for `status`.
        let began = std::time::Instant::now();
        let mut hq_change = false;
        // Take whatever else arrived meanwhile in the same pass.
        for event in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            hq_change |= matches!(event, Event::HqLoaded { .. });
            core.handle(event, now_ms());
        }
        wake = core.settle(now_ms());
        decide.record(began.elapsed(), hq_change);
        for effect in core.take_effects() {
            match effect {
                core::Effect::Deploy(job) => {
                    let cancel = stop.child_token();
                    cancels.insert(job.deploy, cancel.clone());
                    tokio::spawn(crate::deploy::run(ctx.clone(), tx.clone(), *job, cancel));
                }
                core::Effect::Cancel(deploy) => {
                    if let Some(c) = cancels.get(&deploy) {
                        c.cancel();
                    }
                }
                core::Effect::Drain(job) => {
                    tokio::spawn(crate::drain::run(
                        ctx.clone(),
                        tx.clone(),
                        job,
                        applied.clone(),
                    ));
                }
                core::Effect::Stop { service, container } => {
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    tokio::spawn(async move {
                        crate::drain::stop_container(&ctx, &service, &container).await;
                        tx.send(Event::Stopped {
                            container: container.id,
                        });
                    });
                }
                core::Effect::Note {
                    service,
                    version,
                    kind,
                    text,
                } => ctx.telemetry.note(&service, &version, kind, &text),
                core::Effect::Forget(service) => {
                    let ctx = ctx.clone();
                    tokio::task::spawn_blocking(move || {
                        let log = ctx.layout.service_logs(&service).join("build.log");
                        ctx.telemetry.forget_service(&service, &log);
                    });
                }
                core::Effect::CollectBuilds { cap } => {
                    // One collection at a time; a request meanwhile is covered by the next one.
                    if !collecting.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        let (ctx, tx, state) = (ctx.clone(), tx.clone(), core.state().clone());
                        let collecting = collecting.clone();
                        tokio::task::spawn_blocking(move || {
                            let summary =
                                crate::gc::collect(&ctx.layout.builds(), &state, cap, now_ms());
                            collecting.store(false, std::sync::atomic::Ordering::SeqCst);
                            tx.send(Event::BuildCache(summary));
                        });
                    }
                }
                core::Effect::Forward(settings) => {
                    forwarding = Arc::new(reforward(&ctx, &forwarding, &settings));
                }
            }
        }
        let live = core.in_flight_deploys();
        cancels.retain(|id, _| live.contains(id));
        if let Some((state, after)) = core.take_persist() {
            persister.save(state, after);
        }
        if routes_tx.borrow().version != core.routes().version {
            routes_tx.send_replace(Arc::new(core.routes().clone()));
        }
        let mut snapshot = core.snapshot();
        snapshot.decide = decide;
        view_tx.send_replace(View {
            snapshot,
            forwarding: forwarding.clone(),
        });
    }
    // Deploys stop at their next step; the state is whatever was last persisted.
    for c in cancels.values() {
        c.cancel();
    }
    if let Some((state, after)) = core.take_persist() {
        persister.save(state, after);
    }
    drop(persister);
    info!("state owner stopped");
}

/// Starts the log forwarders `.starphleet` names; keeps the running ones when unchanged, and
/// when the setting is broken.
fn reforward(ctx: &Ctx, old: &Forwarding, settings: &[(String, String)]) -> Forwarding {
    match ForwardTarget::from_settings(settings) {
        Ok(targets) => {
            let current: Vec<&ForwardTarget> = old.forwarders.iter().map(|f| f.target()).collect();
            let forwarders = if current.iter().copied().eq(targets.iter()) {
                old.forwarders.clone()
            } else {
                targets
                    .into_iter()
                    .map(|t| {
                        info!(target = %t, "forwarding logs");
                        Arc::new(ctx.telemetry.forward(t))
                    })
                    .collect()
            };
            Forwarding {
                forwarders,
                error: None,
            }
        }
        Err(e) => {
            error!("log forwarding setting in .starphleet: {e}");
            Forwarding {
                forwarders: old.forwarders.clone(),
                error: Some(format!(".starphleet: {e}")),
            }
        }
    }
}
