//! The persister: one thread writes the state file (temp file, fsync, rename), so no async
//! worker ever waits on the disk. Saves that pile up while one is being written collapse into
//! the newest; what waits for a save is told once the state it depends on is on disk.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::error;

use crate::owner::core::AfterPersist;
use crate::state::ShipState;

/// A handle to the persister thread.
pub(crate) struct Persister {
    tx: Option<mpsc::Sender<(Arc<ShipState>, Vec<AfterPersist>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Persister {
    /// Starts the thread writing `path`.
    pub fn spawn(path: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Arc<ShipState>, Vec<AfterPersist>)>();
        let thread = std::thread::Builder::new()
            .name("starphleet-persist".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok((mut state, mut after)) = rx.recv() {
                    // Only the newest state matters; everyone waiting is told after it is written.
                    while let Ok((newer, more)) = rx.try_recv() {
                        state = newer;
                        after.extend(more);
                    }
                    let result = state.save(&path).map_err(|e| e.to_string());
                    match &result {
                        Err(e) if !failing => {
                            error!(
                                "cannot save ship state; the previous state file stays valid: {e}"
                            );
                            failing = true;
                        }
                        Ok(()) => failing = false,
                        Err(_) => {}
                    }
                    for f in after {
                        f(result.clone());
                    }
                }
            })?;
        Ok(Persister {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for `state` to be written; `after` run once it is (or failed to be).
    pub fn save(&self, state: Arc<ShipState>, after: Vec<AfterPersist>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((state, after));
        }
    }
}

impl Drop for Persister {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
