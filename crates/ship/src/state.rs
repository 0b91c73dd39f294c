//! The ship's persisted state: what runs, written atomically so a restarted ship adopts it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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
    pub last_host: u16,
    /// Next version id.
    #[serde(default)]
    pub next_version: u64,
    /// Taken out of its load balancers (`starphleet offline`): `/starphleet/health` answers
    /// 503 while requests are still served; kept across restarts.
    #[serde(default)]
    pub offline: bool,
}

/// One service's versions.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    /// The version receiving traffic.
    pub current: Option<Version>,
    /// A healthy new version waiting for the proxy to route to it; it becomes `current` once
    /// the proxy has the table that sends traffic to it.
    #[serde(default)]
    pub switching: Option<Version>,
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
    /// Deploys in a row that failed for a reason of the ship's (full disk, no address…).
    #[serde(default)]
    pub transient_failures: u32,
    /// Unix ms before which such a failed deploy is not tried again.
    #[serde(default)]
    pub retry_at_ms: u64,
    /// The last version label that crashed [`CRASH_LOOP`] times before it ran steadily: a
    /// failed version for a rollout across ships.
    #[serde(default)]
    pub crash_looped: Option<String>,
}

/// Crashes before running steadily that make a version a crash loop.
pub const CRASH_LOOP: u32 = 3;

/// One public route of a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// Port the service listens on inside its container.
    pub private: u16,
    /// Port users connect to on the ship.
    pub public: u16,
    /// URL prefix on that port.
    pub url: String,
    /// `--host` names the route answers for; empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `--tls`: the public port speaks TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// With `tls`: port 80 answers 308 to the https URL for these hosts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// `--max-body`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// `--timeout`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `--body-timeout`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout_ms: Option<u64>,
}

/// One running version of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// Unique among the ship's versions (a deploy and a restart of one key are two versions).
    #[serde(default)]
    pub id: u64,
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
    /// Unix ms when traffic was switched away from it (it drains until this + drain timeout).
    #[serde(default)]
    pub draining_since_ms: Option<u64>,
    /// The build layer it runs (kept while it runs).
    #[serde(default)]
    pub layer: Option<String>,
}

impl Version {
    /// Unix ms by which its drain ends, in-flight requests or not.
    pub fn drain_deadline_ms(&self) -> u64 {
        self.draining_since_ms
            .unwrap_or(0)
            .saturating_add(self.drain_timeout_ms)
    }
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
    /// The deploy that started it (0 in state files of older ships).
    #[serde(default)]
    pub deploy: u64,
}

/// What a container's bundle says about it (`<bundle>/starphleet.json`): enough for a ship
/// that lost its state file to adopt it from what the runtime runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLabel {
    /// The ship id.
    pub ship: String,
    /// The service.
    pub service: String,
    /// The version key.
    pub key: String,
    /// The app commit.
    pub app_commit: String,
    /// The order revision.
    pub order_revision: String,
    /// Where the version is published.
    pub publish: Vec<PublishRecord>,
    /// Its drain timeout.
    pub drain_timeout_ms: u64,
    /// The container.
    pub container: ContainerRecord,
}

/// The name of the label file in a container's bundle.
pub const LABEL_FILE: &str = "starphleet.json";

/// What `load_or_recover` found.
#[derive(Debug)]
pub enum Loaded {
    /// The state file, as it was (or an empty state on the very first start).
    State(ShipState),
    /// The state file was unreadable (and was moved aside): start from what the runtime runs.
    Lost {
        /// What happened.
        why: String,
    },
}

/// The timeline of one deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Version key.
    pub key: String,
    /// App commit.
    pub app_commit: String,
    /// The version label of its records and metrics (app commit + order revision).
    #[serde(default)]
    pub version_label: String,
    /// The build layer it used, once built.
    #[serde(default)]
    pub layer: Option<String>,
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
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let mut state: ShipState = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Invalid {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        state.number_versions();
        Ok(state)
    }

    /// Loads the state file; an unreadable one is moved aside (`state.json.corrupt-<ms>`) and
    /// reported as lost, so the ship can start again from what the runtime runs.
    pub fn load_or_recover(path: &Path) -> Result<Loaded, StateError> {
        match Self::load(path) {
            Ok(state) => Ok(Loaded::State(state)),
            Err(StateError::Invalid { source, .. }) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_ms()));
                std::fs::rename(path, &aside).map_err(|source| StateError::Write {
                    path: aside.clone(),
                    source,
                })?;
                Ok(Loaded::Lost {
                    why: format!(
                        "{} was not valid ship state ({source}); it was moved to {}",
                        path.display(),
                        aside.display()
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Gives versions from state files of older ships (which had no ids) ids of their own.
    fn number_versions(&mut self) {
        let mut next = self.next_version.max(1);
        for svc in self.services.values_mut() {
            let versions = svc
                .current
                .iter_mut()
                .chain(svc.switching.iter_mut())
                .chain(svc.draining.iter_mut());
            for v in versions {
                if v.id == 0 {
                    v.id = next;
                    next += 1;
                } else {
                    next = next.max(v.id + 1);
                }
            }
        }
        self.next_version = next;
    }

    /// A new version id.
    pub fn new_version_id(&mut self) -> u64 {
        let id = self.next_version.max(1);
        self.next_version = id + 1;
        id
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self).expect("ship state serializes");
        write_atomic(path, &bytes).map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Every container the state knows, in any phase.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.services.values().flat_map(|s| {
            s.current
                .iter()
                .chain(s.switching.iter())
                .chain(s.draining.iter())
                .flat_map(|v| v.containers.iter())
                .chain(s.pending.iter())
        })
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not ship state (hand-edited, or from an incompatible version).
    #[error("{} is not valid ship state ({source}); move it away to start from an empty state", path.display())]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The file could not be replaced; the previous content is still in place.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
