//! What the ship records: every container's output, builds, health failures and its own
//! deploy events, in the log store. The ship's own events go through one journal thread, so
//! no task waits on the disk to note something.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use starphleet_telemetry::{
    Collector, CollectorThread, ForwardTarget, Forwarder, Kind, Limits, LogStore, Record,
    RecordMeta,
};
use tracing::warn;

use crate::layout::Layout;
use crate::state::ContainerRecord;

/// How often idle sources are polled: a printed line shows up in `logs -f` within this.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

/// The log store and the collector feeding it.
pub(crate) struct Telemetry {
    pub store: LogStore,
    collector: Arc<Collector>,
    _thread: CollectorThread,
    journal: std::sync::mpsc::Sender<Record>,
    ship: String,
    access_dir: PathBuf,
}

/// The version label of records and metrics: app commit + order revision.
pub fn version_label(app_commit: &str, order_revision: &str) -> String {
    format!(
        "{}+{}",
        &app_commit[..12.min(app_commit.len())],
        &order_revision[..8.min(order_revision.len())]
    )
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log store could not be opened.
    #[error("opening the log store in {}: {source}", dir.display())]
    Store {
        /// The store's directory.
        dir: PathBuf,
        /// Why.
        source: starphleet_telemetry::StoreError,
    },
    /// The collector thread could not start.
    #[error("starting the log collector: {0}")]
    Collector(#[from] starphleet_telemetry::CollectError),
    /// The journal thread could not start.
    #[error("starting the ship's event journal: {0}")]
    Journal(std::io::Error),
}

impl Telemetry {
    /// Opens the store in the state dir and starts collecting.
    pub fn open(layout: &Layout, ship: &str) -> Result<Self, TelemetryError> {
        let dir = layout.log_store();
        let store = LogStore::open(&dir, Limits::default())
            .map_err(|source| TelemetryError::Store { dir, source })?;
        let collector = Arc::new(Collector::new(store.clone()));
        let thread = collector.spawn(COLLECT_EVERY)?;
        let (tx, rx) = std::sync::mpsc::channel::<Record>();
        let journal_store = store.clone();
        std::thread::Builder::new()
            .name("starphleet-journal".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    if let Err(e) = journal_store.append(&batch) {
                        warn!("cannot store ship events: {e}");
                    }
                }
            })
            .map_err(TelemetryError::Journal)?;
        Ok(Telemetry {
            store,
            collector,
            _thread: thread,
            journal: tx,
            ship: ship.to_string(),
            access_dir: layout.access_logs(),
        })
    }

    /// Starts forwarding every new record to `target`.
    pub fn forward(&self, target: ForwardTarget) -> Forwarder {
        Forwarder::spawn(&self.store, target)
    }

    fn meta(
        &self,
        service: &str,
        version: &str,
        container: &str,
        kind: Kind,
        stream: &str,
    ) -> RecordMeta {
        RecordMeta {
            ship: self.ship.clone(),
            service: service.to_string(),
            version: version.to_string(),
            container: container.to_string(),
            kind,
            stream: stream.to_string(),
        }
    }

    /// Records something the ship did or saw (deploy steps, health failures, crashes); the
    /// journal thread writes it.
    pub fn note(&self, service: &str, version: &str, kind: Kind, text: &str) {
        let stream = if kind == Kind::Health {
            "health"
        } else {
            "event"
        };
        let meta = self.meta(service, version, "", kind, stream);
        for line in text.lines() {
            let _ = self.journal.send(Record::now(&meta, line));
        }
    }

    /// The proxy's access log of a container.
    fn access_log(&self, c: &ContainerRecord) -> PathBuf {
        self.access_dir.join(format!("{}.log", c.id))
    }

    /// Starts collecting a container's stdout, stderr and access log (again, after a restart:
    /// no line lost or doubled).
    pub fn watch_container(&self, service: &str, version: &str, c: &ContainerRecord) {
        let access = self.access_log(c);
        let _ = std::fs::create_dir_all(&self.access_dir);
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&access);
        let sources = self.collector.sources();
        for (path, kind, stream) in [
            (&c.stdout, Kind::App, "stdout"),
            (&c.stderr, Kind::App, "stderr"),
            (&access, Kind::Access, "access"),
        ] {
            if sources.iter().any(|s| s == path) {
                continue;
            }
            let meta = self.meta(service, version, &c.id, kind, stream);
            if let Err(e) = self.collector.add(path.clone(), meta) {
                warn!(file = %path.display(), "cannot collect container output: {e}");
            }
        }
    }

    /// Collects the rest of a stopped container's output, then removes its files.
    pub fn unwatch_container(&self, c: &ContainerRecord) {
        for path in [&c.stdout, &c.stderr, &self.access_log(c)] {
            match self.collector.remove(path) {
                Ok(_) => {
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => warn!(file = %path.display(), "cannot finish collecting: {e}"),
            }
        }
    }

    /// Collects a service's build log, stamping what follows with `version`.
    pub fn watch_build(&self, service: &str, log: &Path, version: &str) {
        if !log.exists() {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log);
        }
        match self.collector.set_version(log, version) {
            Ok(true) => {}
            Ok(false) => {
                let meta = self.meta(service, version, "", Kind::Build, "build");
                if let Err(e) = self.collector.add(log.to_path_buf(), meta) {
                    warn!(file = %log.display(), "cannot collect build output: {e}");
                }
            }
            Err(e) => warn!(file = %log.display(), "cannot collect build output: {e}"),
        }
    }

    /// A service left the ship: finish collecting its build log and close every file of it
    /// (its records stay queryable).
    pub fn forget_service(&self, service: &str, build_log: &Path) {
        if let Err(e) = self.collector.remove(build_log) {
            warn!(file = %build_log.display(), "cannot finish collecting: {e}");
        }
        self.store.close_service(service);
    }
}
