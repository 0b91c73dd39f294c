//! Build cache collection: the layers of what serves, switches or drains are kept, and the
//! last few of each service (so a rollback or a restart is instant); everything else goes, and
//! past the total cap the oldest of the kept-for-later go too. Choosing is pure; listing and
//! deleting happen on a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::ShipState;

/// Layers each service keeps besides what runs.
pub const KEEP_PER_SERVICE: usize = 3;
/// The total size of the build cache unless `STARPHLEET_BUILD_CACHE_MAX` says otherwise.
pub const DEFAULT_CAP: u64 = 10 << 30;
/// A layer used this recently is never collected (a deploy may be about to start it).
pub const RECENT: Duration = Duration::from_secs(600);
/// Touched in a layer whenever a deploy uses it.
pub const USED_MARK: &str = ".used";

/// One layer on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOnDisk {
    /// Its key (directory name).
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Unix ms of its last use.
    pub used_ms: u64,
}

/// The build cache in the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCacheSummary {
    /// Layers kept.
    pub layers: usize,
    /// Their total size, bytes.
    pub bytes: u64,
    /// The cap, bytes.
    pub cap_bytes: u64,
    /// Layers removed by the last collection.
    pub removed: usize,
}

/// Which layers the state needs: those of every version that serves, switches or drains
/// (must), and the most recent ones of each service's deploys (may, newest first per service).
pub fn wanted(state: &ShipState) -> (BTreeSet<String>, Vec<String>) {
    let mut must = BTreeSet::new();
    let mut may = Vec::new();
    for svc in state.services.values() {
        for v in svc
            .current
            .iter()
            .chain(svc.switching.iter())
            .chain(svc.draining.iter())
        {
            must.extend(v.layer.clone());
        }
        let mut kept = 0;
        for d in svc.deploys.iter().rev() {
            if kept == KEEP_PER_SERVICE {
                break;
            }
            if let Some(l) = &d.layer {
                if !may.contains(l) {
                    may.push(l.clone());
                }
                kept += 1;
            }
        }
    }
    (must, may)
}

/// The layers to delete.
pub fn select(
    layers: &[LayerOnDisk],
    must: &BTreeSet<String>,
    may: &[String],
    cap: u64,
    now_ms: u64,
) -> Vec<String> {
    let recent = |l: &LayerOnDisk| now_ms.saturating_sub(l.used_ms) < RECENT.as_millis() as u64;
    let mut delete: Vec<String> = layers
        .iter()
        .filter(|l| !must.contains(&l.key) && !may.contains(&l.key) && !recent(l))
        .map(|l| l.key.clone())
        .collect();
    let mut total: u64 = layers
        .iter()
        .filter(|l| !delete.contains(&l.key))
        .map(|l| l.bytes)
        .sum();
    // Over the cap: give up the kept-for-later layers, least recently used first.
    let mut optional: Vec<&LayerOnDisk> = layers
        .iter()
        .filter(|l| !must.contains(&l.key) && may.contains(&l.key) && !recent(l))
        .collect();
    optional.sort_by_key(|l| l.used_ms);
    for l in optional {
        if total <= cap {
            break;
        }
        total -= l.bytes;
        delete.push(l.key.clone());
    }
    delete
}

/// Lists the layers under `dir` (skipping builds in progress, which start with a dot).
pub fn list(dir: &Path) -> Vec<LayerOnDisk> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let path = e.path();
            let used = std::fs::metadata(path.join(USED_MARK))
                .or_else(|_| std::fs::metadata(&path))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            LayerOnDisk {
                key: e.file_name().to_string_lossy().into_owned(),
                bytes: size_of(&path),
                used_ms: used,
            }
        })
        .collect()
}

/// Bytes of the files under `path` (not following symlinks).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// Marks a layer as just used.
pub fn mark_used(layer_dir: &Path) {
    let _ = std::fs::write(layer_dir.join(USED_MARK), b"");
}

/// Collects the build cache in `dir`; returns what is left.
pub fn collect(dir: &Path, state: &ShipState, cap: u64, now_ms: u64) -> BuildCacheSummary {
    let layers = list(dir);
    let (must, may) = wanted(state);
    let delete = select(&layers, &must, &may, cap, now_ms);
    let mut removed = 0;
    for key in &delete {
        match std::fs::remove_dir_all(dir.join(key)) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(layer = %key, "cannot remove build layer: {e}"),
        }
    }
    let left: BTreeMap<&str, u64> = layers
        .iter()
        .filter(|l| !delete.contains(&l.key))
        .map(|l| (l.key.as_str(), l.bytes))
        .collect();
    if removed > 0 {
        tracing::info!(removed, kept = left.len(), "build cache collected");
    }
    BuildCacheSummary {
        layers: left.len(),
        bytes: left.values().sum(),
        cap_bytes: cap,
        removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 10_000_000_000;
    const OLD: u64 = NOW - 3_600_000;

    fn layer(key: &str, bytes: u64, used_ms: u64) -> LayerOnDisk {
        LayerOnDisk {
            key: key.into(),
            bytes,
            used_ms,
        }
    }

    #[test]
    fn keeps_what_runs_the_last_few_and_anything_just_used() {
        let layers = [
            layer("serving", 10, OLD),
            layer("recent-deploy", 10, OLD),
            layer("forgotten", 10, OLD),
            layer("just-built", 10, NOW - 1000),
        ];
        let must: BTreeSet<String> = ["serving".to_string()].into();
        let may = vec!["recent-deploy".to_string()];
        assert_eq!(select(&layers, &must, &may, 1 << 40, NOW), ["forgotten"]);
    }

    #[test]
    fn over_the_cap_the_least_recently_used_of_the_kept_for_later_go_never_what_runs() {
        let layers = [
            layer("serving", 100, OLD - 5),
            layer("a", 100, OLD - 2),
            layer("b", 100, OLD - 1),
            layer("c", 100, OLD),
        ];
        let must: BTreeSet<String> = ["serving".to_string()].into();
        let may = vec!["c".to_string(), "b".to_string(), "a".to_string()];
        assert_eq!(select(&layers, &must, &may, 250, NOW), ["a", "b"]);
        assert_eq!(
            select(&layers, &must, &may, 10, NOW),
            ["a", "b", "c"],
            "serving stays"
        );
    }

    #[test]
    fn wanted_layers_come_from_versions_and_the_last_deploys() {
        use crate::state::{DeployRecord, ServiceState, Version};
        let record = |layer: &str| DeployRecord {
            key: String::new(),
            app_commit: String::new(),
            version_label: String::new(),
            layer: Some(layer.into()),
            started_at_ms: 0,
            steps: Vec::new(),
            outcome: String::new(),
        };
        let version = |layer: &str| Version {
            id: 1,
            key: String::new(),
            app_commit: String::new(),
            order_revision: String::new(),
            publish: Vec::new(),
            containers: Vec::new(),
            healthy_at_ms: 0,
            drain_timeout_ms: 0,
            draining_since_ms: None,
            layer: Some(layer.into()),
        };
        let mut state = ShipState::default();
        state.services.insert(
            "echo".into(),
            ServiceState {
                current: Some(version("cur")),
                draining: vec![version("old")],
                deploys: ["l1", "l2", "l3", "l4", "l5"]
                    .iter()
                    .map(|l| record(l))
                    .collect(),
                ..Default::default()
            },
        );
        let (must, may) = wanted(&state);
        assert_eq!(must, ["cur".to_string(), "old".to_string()].into());
        assert_eq!(may, ["l5", "l4", "l3"]);
    }

    #[test]
    fn collects_real_directories() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["keep", "drop"] {
            std::fs::create_dir_all(dir.path().join(key).join("app")).unwrap();
            std::fs::write(dir.path().join(key).join("app/file"), vec![0u8; 1000]).unwrap();
        }
        std::fs::create_dir_all(dir.path().join(".building.tmp")).unwrap();
        let mut state = ShipState::default();
        state.services.insert("echo".into(), Default::default());
        state.services.get_mut("echo").unwrap().current = Some(crate::state::Version {
            id: 1,
            key: String::new(),
            app_commit: String::new(),
            order_revision: String::new(),
            publish: Vec::new(),
            containers: Vec::new(),
            healthy_at_ms: 0,
            drain_timeout_ms: 0,
            draining_since_ms: None,
            layer: Some("keep".into()),
        });
        // Both were used long ago as far as the collector can tell.
        let later = crate::state::now_ms() + 2 * RECENT.as_millis() as u64;
        let summary = collect(dir.path(), &state, DEFAULT_CAP, later);
        assert_eq!(summary.removed, 1);
        assert_eq!(summary.layers, 1);
        assert!(summary.bytes >= 1000);
        assert!(dir.path().join("keep").exists());
        assert!(!dir.path().join("drop").exists());
        assert!(
            dir.path().join(".building.tmp").exists(),
            "builds in progress stay"
        );
    }
}
