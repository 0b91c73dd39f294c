//! The ship's collector: every tailed file polled in rounds on one thread.
//!
//! A round gives each source one bounded poll ([`crate::POLL_BYTES`]), so a source that
//! floods only makes rounds come back to back; every other source is read once per round.
//! While the store's disk is full, a source whose lines were dropped does not make the next
//! round come at once: the collector keeps its pace instead of spinning on a full disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::record::RecordMeta;
use crate::store::LogStore;
use crate::tail::{TailError, Tailer};

/// Why a collector could not add, update or remove a source, or start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// [`Collector::add`] of a file that is tailed already.
    #[error("{0} is already collected")]
    AlreadyCollected(PathBuf),
    /// The source's tailer failed.
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The collector thread could not be started.
    #[error("starting the log collector thread: {0}")]
    Thread(std::io::Error),
}

/// A set of tailers feeding one store.
pub struct Collector {
    store: LogStore,
    sources: Mutex<Vec<Arc<Mutex<Slot>>>>,
}

struct Slot {
    /// `None` once removed (a round may still hold the slot).
    tailer: Option<Tailer>,
    /// Repeated errors (a full disk every poll) are logged once, not every round.
    last_error: Option<String>,
    /// Rounds in a row this source had nothing new.
    quiet_rounds: u32,
    /// Rounds left to pass it over.
    skip: u32,
}

/// A quiet source is polled every 2, 4, … rounds, at most every this many: hundreds of idle
/// services cost little, and a line after a silence still arrives within a few rounds.
const MAX_SKIP: u32 = 8;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Records stored.
    pub records: usize,
    /// Some source had more waiting than one poll takes: run the next round at once.
    pub busy: bool,
}

impl Collector {
    /// A collector with no sources yet.
    pub fn new(store: LogStore) -> Self {
        Collector {
            store,
            sources: Mutex::new(Vec::new()),
        }
    }

    /// Starts tailing `source` (see [`Tailer::new`]); an error if it is tailed already.
    pub fn add(&self, source: impl Into<PathBuf>, meta: RecordMeta) -> Result<(), CollectError> {
        let source = source.into();
        if self.find(&source).is_some() {
            return Err(CollectError::AlreadyCollected(source));
        }
        let tailer = Tailer::new(&self.store, source, meta)?;
        lock(&self.sources).push(Arc::new(Mutex::new(Slot {
            tailer: Some(tailer),
            last_error: None,
            quiet_rounds: 0,
            skip: 0,
        })));
        Ok(())
    }

    /// The files being tailed.
    pub fn sources(&self) -> Vec<PathBuf> {
        let sources = lock(&self.sources).clone();
        sources
            .iter()
            .filter_map(|s| lock(s).tailer.as_ref().map(|t| t.path().to_path_buf()))
            .collect()
    }

    /// Collects what `source` has so far under its old version, then stamps later lines with
    /// `version`; false if it is not tailed.
    pub fn set_version(&self, source: &Path, version: &str) -> Result<bool, CollectError> {
        let Some(slot) = self.find(source) else {
            return Ok(false);
        };
        let mut slot = lock(&slot);
        let Some(tailer) = slot.tailer.as_mut() else {
            return Ok(false);
        };
        while tailer.poll_once(false)?.full {}
        tailer.set_version(version);
        Ok(true)
    }

    /// Stops tailing `source` after collecting all of it (see [`Tailer::close`]) and forgets
    /// it entirely: its file is closed (so it can be deleted and its space freed) and its
    /// saved position removed. Returns the records stored, or `None` if it was not tailed.
    /// On error it stays collected, and removing it can be tried again. The store keeps the
    /// service's segment open for other sources; once a service is gone for good, call
    /// [`LogStore::close_service`] too.
    pub fn remove(&self, source: &Path) -> Result<Option<usize>, CollectError> {
        let Some(slot) = self.find(source) else {
            return Ok(None);
        };
        let mut guard = lock(&slot);
        let Some(tailer) = guard.tailer.as_mut() else {
            return Ok(None);
        };
        let records = tailer.finish()?;
        // Dropping the tailer closes the file now, even while a round still holds the slot.
        guard.tailer = None;
        drop(guard);
        lock(&self.sources).retain(|s| !Arc::ptr_eq(s, &slot));
        Ok(Some(records))
    }

    /// Polls every source once; errors are logged (once per distinct error per source).
    /// Lines dropped for a full disk are no error (the store counts them), and do not make
    /// the round busy.
    pub fn poll_round(&self) -> Round {
        let sources = lock(&self.sources).clone();
        let mut round = Round::default();
        for slot in sources {
            let mut slot = lock(&slot);
            if slot.skip > 0 {
                slot.skip -= 1;
                continue;
            }
            let Some(tailer) = slot.tailer.as_mut() else {
                continue;
            };
            match tailer.poll_once(false) {
                Ok(polled) => {
                    round.records += polled.records;
                    round.busy |= polled.full && !polled.dropped;
                    slot.last_error = None;
                    if polled.records == 0 && !polled.full {
                        slot.quiet_rounds = slot.quiet_rounds.saturating_add(1);
                        slot.skip = (1u32 << slot.quiet_rounds.min(4)).min(MAX_SKIP) - 1;
                    } else {
                        slot.quiet_rounds = 0;
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if slot.last_error.as_ref() != Some(&text) {
                        tracing::warn!("collecting logs: {text}");
                        slot.last_error = Some(text);
                    }
                }
            }
        }
        round
    }

    /// Runs rounds on a thread named `log-collector`: back to back while sources are busy,
    /// else every `idle`. Dropping the handle stops it after one last round.
    pub fn spawn(self: &Arc<Self>, idle: Duration) -> Result<CollectorThread, CollectError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (me, flag) = (self.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("log-collector".into())
            .spawn(move || loop {
                let stopping = flag.load(Ordering::Acquire);
                let round = me.poll_round();
                if stopping {
                    break;
                }
                if !round.busy {
                    std::thread::park_timeout(idle);
                }
            })
            .map_err(CollectError::Thread)?;
        Ok(CollectorThread {
            stop,
            handle: Some(handle),
        })
    }

    fn find(&self, source: &Path) -> Option<Arc<Mutex<Slot>>> {
        let sources = lock(&self.sources).clone();
        sources
            .into_iter()
            .find(|s| lock(s).tailer.as_ref().is_some_and(|t| t.path() == source))
    }
}

/// The running collector thread; dropping it stops the thread after a final round.
pub struct CollectorThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for CollectorThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
