//! What the ship records: every container's output, builds, health failures and its own
//! deploy events, in the log store; per-container samples for status and `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use starphleet_telemetry::{
    Collector, CollectorThread, Kind, Limits, LogStore, Record, RecordMeta,
};
use tracing::warn;

use crate::layout::Layout;
use crate::state::ContainerRecord;

/// How often idle sources are polled: a printed line shows up in `logs -f` within this.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

/// The log store and the collector feeding it.
pub(crate) struct Observer {
    pub store: LogStore,
    collector: Arc<Collector>,
    _thread: CollectorThread,
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

impl Observer {
    /// Opens the store in the state dir and starts collecting.
    pub fn open(layout: &Layout, ship: &str) -> Result<Self> {
        let store = LogStore::open(&layout.log_store(), Limits::default())?;
        let collector = Arc::new(Collector::new(store.clone()));
        let thread = collector.spawn(COLLECT_EVERY)?;
        Ok(Observer {
            store,
            collector,
            _thread: thread,
            ship: ship.to_string(),
            access_dir: layout.access_logs(),
        })
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

    /// Records something the ship did or saw (deploy steps, health failures, crashes).
    pub fn event(&self, service: &str, version: &str, kind: Kind, text: &str) {
        let stream = if kind == Kind::Health {
            "health"
        } else {
            "event"
        };
        let meta = self.meta(service, version, "", kind, stream);
        let records: Vec<Record> = text.lines().map(|l| Record::now(&meta, l)).collect();
        if let Err(e) = self.store.append(&records) {
            warn!("cannot store ship event: {e:#}");
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
                warn!(file = %path.display(), "cannot collect container output: {e:#}");
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
                Err(e) => warn!(file = %path.display(), "cannot finish collecting: {e:#}"),
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
                    warn!(file = %log.display(), "cannot collect build output: {e:#}");
                }
            }
            Err(e) => warn!(file = %log.display(), "cannot collect build output: {e:#}"),
        }
    }
}
