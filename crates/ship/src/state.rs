//! The ship's persisted state: what runs, written atomically so a restarted ship adopts it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Everything the ship must remember across restarts.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ShipState {
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Next container sequence number (names and veths derive from it).
    pub next_seq: u32,
    /// Last host number handed out on the bridge; addresses go round so a freed one is reused last.
    #[serde(default)]
    pub last_host: u8,
}

/// One service's versions.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    /// The version receiving traffic.
    pub current: Option<Version>,
    /// Versions switched away from, finishing their in-flight requests.
    pub draining: Vec<Version>,
    /// Containers of a deploy in progress (cleaned up if the ship dies mid-deploy).
    pub pending: Vec<ContainerRecord>,
    /// The version key whose deploy failed; not retried until something changes.
    pub failed_key: Option<String>,
    /// Why the last deploy failed, or why the service cannot be followed.
    pub last_error: Option<String>,
    /// The most recent deploys, oldest first.
    pub deploys: Vec<DeployRecord>,
    /// How often its containers died since it last ran steadily.
    #[serde(default)]
    pub restarts: u32,
    /// Unix ms before which a crashed service is not restarted (exponential back-off).
    #[serde(default)]
    pub restart_at_ms: u64,
    /// `starphleet redeploy` asked for a fresh build and switch.
    #[serde(default)]
    pub redeploy_requested: bool,
}

/// One public route of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// Port the service listens on inside its container.
    pub private: u16,
    /// Port users connect to on the ship.
    pub public: u16,
    /// URL prefix on that port.
    pub url: String,
}

/// One running version of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// Identity of the version: hash of app commit, order revision and env.
    pub key: String,
    /// The app commit it runs.
    pub app_commit: String,
    /// The order revision (hash of the orders file).
    pub order_revision: String,
    /// Where it is published.
    pub publish: Vec<PublishRecord>,
    /// Its containers.
    pub containers: Vec<ContainerRecord>,
    /// Unix ms when it became healthy.
    pub healthy_at_ms: u64,
    /// How long its in-flight requests may take to finish after a switch.
    pub drain_timeout_ms: u64,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The OCI runtime's container id.
    pub id: String,
    /// Its address on the ship's bridge.
    pub ip: Ipv4Addr,
    /// Its network namespace name.
    pub netns: String,
    /// The host end of its veth.
    pub host_if: String,
    /// Its bundle dir.
    pub bundle: PathBuf,
    /// Its init pid (0 until started).
    pub pid: u32,
    /// Unix ms when it was started.
    pub started_at_ms: u64,
    /// Its stdout log file.
    pub stdout: PathBuf,
    /// Its stderr log file.
    pub stderr: PathBuf,
}

/// The timeline of one deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Version key.
    pub key: String,
    /// App commit.
    pub app_commit: String,
    /// Unix ms when it began.
    pub started_at_ms: u64,
    /// Steps and their durations in ms, in order.
    pub steps: Vec<(String, u64)>,
    /// "serving", "failed: …", or "in progress".
    pub outcome: String,
}

/// How many deploys each service remembers.
pub const DEPLOY_HISTORY: usize = 10;

impl ShipState {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid ship state", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomic(path, &bytes)
    }

    /// Every container the state knows, in any phase.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.services.values().flat_map(|s| {
            s.current
                .iter()
                .chain(s.draining.iter())
                .flat_map(|v| v.containers.iter())
                .chain(s.pending.iter())
        })
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(ShipState::load(&path).unwrap().services.is_empty());
        let mut s = ShipState {
            next_seq: 7,
            ..Default::default()
        };
        s.services.insert("echo".into(), ServiceState::default());
        s.save(&path).unwrap();
        let back = ShipState::load(&path).unwrap();
        assert_eq!(back.next_seq, 7);
        assert!(back.services.contains_key("echo"));
        std::fs::write(&path, "{").unwrap();
        let err = ShipState::load(&path).unwrap_err().to_string();
        assert!(err.contains("not valid ship state"), "{err}");
    }
}
