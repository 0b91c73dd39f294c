//! The rollout's I/O: while HQ rolls out in waves (`STARPHLEET_ROLLOUT`), asks the ships of
//! the earlier waves what they serve and saw fail (`GET /phleet/versions`, each within the
//! peer timeout) and hands the answers to the owner, whose planner decides.

use std::sync::Arc;
use std::time::Duration;

use starphleet_phleet::{earlier_waves, PeerClient, Reachability};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::owner::{Event, OwnerTx, View};
use crate::state::now_ms;

/// How often the earlier waves are asked.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// Asks the earlier waves until `stop`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    owner: OwnerTx,
    view: watch::Receiver<View>,
    client: PeerClient,
    stop: CancellationToken,
) {
    let mut reach = Reachability::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ASK_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let hq = view.borrow().snapshot.hq.clone();
        let (peers, settings) = crate::owner::core::rollout_of(hq.as_deref());
        if settings.wave.is_none() {
            continue;
        }
        let earlier = earlier_waves(&ctx.opts.name, &peers, &settings);
        if earlier.is_empty() {
            continue;
        }
        let answers = client.versions_all(earlier).await;
        owner.send(Event::PeerVersions(reach.observe(answers, now_ms())));
    }
}
