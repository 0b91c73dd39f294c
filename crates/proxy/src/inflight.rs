//! Requests in flight per container, and waiting for containers to go idle without polling.
//!
//! A request ending pays one extra load for this: the count drop to 0 notifies only when a
//! `WaitIdle` request watches the container.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

/// One container's requests in flight, shared by every table naming the container.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicU64,
    /// Live [`Watch`]es on this container.
    waiters: AtomicUsize,
    /// Signalled each time the count drops to 0 while someone watches.
    idle: Notify,
}

impl InFlight {
    /// Counts a request in.
    pub fn enter(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a request out, waking the watchers when it was the last one.
    pub fn leave(&self) {
        // SeqCst here and in `Watch` (register, then read the count): either a watcher reads
        // the 0, or this load sees the watcher and wakes it.
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiters.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }

    /// Requests in flight now.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Requests in flight, read without ordering: good enough to pick the least busy upstream.
    pub fn get_relaxed(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether a [`Watch`] waits on this container.
    pub fn is_watched(&self) -> bool {
        self.waiters.load(Ordering::SeqCst) > 0
    }
}

/// The containers one `WaitIdle` request waits on, registered as watched while it lives.
pub(crate) struct Watch(Vec<Arc<InFlight>>);

impl Watch {
    /// Watches `counters`. The registry registers them under its lock, so it never forgets a
    /// watched counter.
    pub fn new(counters: Vec<Arc<InFlight>>) -> Self {
        for c in &counters {
            c.waiters.fetch_add(1, Ordering::SeqCst);
        }
        Watch(counters)
    }

    /// Requests in flight to all the watched containers.
    pub fn busy(&self) -> u64 {
        self.0.iter().map(|c| c.get()).sum()
    }

    /// Waits until no watched container has a request in flight; `Err(in flight)` when `limit`
    /// passes first.
    pub async fn idle(&self, limit: Duration) -> Result<(), u64> {
        let wait = async {
            loop {
                // Registered for `notify_waiters` as soon as created: a drop to 0 after the
                // count is read below wakes one of these.
                let mut woken: Vec<Pin<Box<_>>> =
                    self.0.iter().map(|c| Box::pin(c.idle.notified())).collect();
                if self.busy() == 0 {
                    return;
                }
                std::future::poll_fn(|cx| {
                    if woken.iter_mut().any(|n| n.as_mut().poll(cx).is_ready()) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(()) => Ok(()),
            Err(_) => match self.busy() {
                0 => Ok(()),
                n => Err(n),
            },
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for c in &self.0 {
            c.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn nothing_to_wait_for_is_idle_at_once() {
        assert_eq!(
            Watch::new(Vec::new()).idle(Duration::from_secs(5)).await,
            Ok(())
        );
        let quiet = Arc::new(InFlight::default());
        let watch = Watch::new(vec![quiet.clone()]);
        assert!(quiet.is_watched());
        assert_eq!(watch.idle(Duration::ZERO).await, Ok(()));
        drop(watch);
        assert!(!quiet.is_watched());
    }

    #[tokio::test]
    async fn the_last_request_ending_wakes_the_watch() {
        let (a, b) = (Arc::new(InFlight::default()), Arc::new(InFlight::default()));
        a.enter();
        b.enter();
        b.enter();
        let watch = Watch::new(vec![a.clone(), b.clone()]);
        let waiting = tokio::spawn(async move {
            let answer = watch.idle(Duration::from_secs(10)).await;
            (answer, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.leave();
        a.leave();
        // A request that comes and goes (one re-routed after a table swap) wakes it as well.
        a.enter();
        a.leave();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "b still has a request in flight");
        let last = Instant::now();
        b.leave();
        let (answer, at) = waiting.await.unwrap();
        assert_eq!(answer, Ok(()));
        assert!(at.duration_since(last) < Duration::from_millis(100));
        assert!(!a.is_watched() && !b.is_watched());
    }

    #[tokio::test]
    async fn a_busy_container_past_the_limit_reports_its_count() {
        let busy = Arc::new(InFlight::default());
        busy.enter();
        busy.enter();
        let begun = Instant::now();
        let answer = Watch::new(vec![busy.clone()])
            .idle(Duration::from_millis(50))
            .await;
        assert_eq!(answer, Err(2));
        assert!(begun.elapsed() >= Duration::from_millis(50));
    }
}
