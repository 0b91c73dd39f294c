//! What the phleet reads from each ship's `GET /status`: a subset of the ship's own status
//! JSON, every field defaulted and unknown fields ignored, so both can evolve apart.

use serde::{Deserialize, Serialize};

use crate::peer::{Peer, PeerClient, PeerError};

/// The part of a ship's `GET /status` the phleet view uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipStatus {
    /// The name the ship gives itself.
    pub ship: String,
    /// The HQ commit in force on it.
    pub headquarters_commit: Option<String>,
    /// Why it cannot follow HQ right now, if so.
    pub headquarters_error: Option<String>,
    /// Its diagnostics (HQ checkout, env folder).
    pub errors: Vec<String>,
    /// Its services.
    pub services: Vec<ServiceReport>,
    /// Its clock when it answered, Unix ms.
    pub sampled_at_ms: u64,
}

/// One service as a ship reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceReport {
    /// Service name.
    pub name: String,
    /// "serving", "deploying", "failed", "down", "broken order".
    pub state: String,
    /// Health, when the ship reports it; otherwise derived from its containers.
    pub health: Option<String>,
    /// The serving version's key (per ship: it hashes the ship's env too).
    pub version: Option<String>,
    /// Its app commit.
    pub app_commit: Option<String>,
    /// Its order revision.
    pub order_revision: Option<String>,
    /// Its containers.
    pub containers: Vec<ContainerReport>,
    /// The latest problem with it.
    pub error: Option<String>,
    /// Recent deploys, oldest first.
    pub deploys: Vec<DeployReport>,
    /// Crashes since it last ran steadily.
    pub restarts: u32,
    /// What the rollout gate says about its next version on this ship, if it is held.
    pub rollout: Option<String>,
}

impl ServiceReport {
    /// The version as the same text on every ship: app commit + order revision, the label
    /// its log records carry (the key also hashes per-ship env, so it differs across ships).
    pub fn version_label(&self) -> Option<String> {
        match (&self.app_commit, &self.order_revision) {
            (Some(app), Some(rev)) => Some(version_label(app, rev)),
            _ => self.version.clone(),
        }
    }
}

/// `app12+rev8`: the same label ships put on records and metrics.
pub fn version_label(app_commit: &str, order_revision: &str) -> String {
    format!(
        "{}+{}",
        &app_commit[..12.min(app_commit.len())],
        &order_revision[..8.min(order_revision.len())]
    )
}

/// One container as a ship reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerReport {
    /// Container id.
    pub id: String,
    /// Whether its process is alive.
    pub running: bool,
}

/// One deploy as a ship reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployReport {
    /// Version key.
    pub key: String,
    /// App commit.
    pub app_commit: String,
    /// Version label (app commit + order revision).
    pub version_label: String,
    /// Unix ms when it began.
    pub started_at_ms: u64,
    /// "serving", "failed: …", or "in progress".
    pub outcome: String,
}

/// What asking one ship for its status gave.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerStatus {
    /// It answered.
    Reachable(Box<ShipStatus>),
    /// It did not, and why.
    Unreachable {
        /// Why.
        reason: PeerError,
    },
}

impl PeerClient {
    /// `GET /status` of one ship, within the client's timeout.
    pub async fn status(&self, peer: &Peer) -> PeerStatus {
        match self.get_json::<ShipStatus>(peer, "/status").await {
            Ok(s) => PeerStatus::Reachable(Box::new(s)),
            Err(reason) => PeerStatus::Unreachable { reason },
        }
    }

    /// Every ship's status, asked at once; done within the client's timeout whatever the
    /// ships do. In the order of `peers`.
    pub async fn status_all(&self, peers: &[Peer]) -> Vec<(Peer, PeerStatus)> {
        let asks = peers
            .iter()
            .map(|p| async move { (p.clone(), self.status(p).await) });
        futures::future::join_all(asks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ships_status_ignoring_what_it_does_not_know() {
        let json = r#"{
            "ship": "north", "ship_id": "abc", "headquarters": "https://git/hq",
            "headquarters_commit": "1111111111111111", "headquarters_error": null,
            "errors": [], "sampled_at_ms": 5, "logs": {"disk_bytes": 1, "records": 2},
            "services": [{
                "name": "echo", "state": "serving", "version": "k1",
                "app_commit": "aaaaaaaaaaaaaaaa", "order_revision": "bbbbbbbbbbbb",
                "publish": [{"private": 3000, "public": 80, "url": "/echo"}],
                "containers": [{"id": "c1", "ip": "10.0.0.2", "pid": 7, "running": true, "started_at_ms": 1}],
                "error": null, "restarts": 0, "routes": [],
                "deploys": [{"key": "k1", "app_commit": "aaaa", "version_label": "aaaa+bbbb",
                             "started_at_ms": 3, "steps": [["build", 10]], "outcome": "serving"}]
            }, {"name": "api"}]
        }"#;
        let s: ShipStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.ship, "north");
        assert_eq!(s.headquarters_commit.as_deref(), Some("1111111111111111"));
        let echo = &s.services[0];
        assert!(echo.containers[0].running);
        assert_eq!(echo.deploys[0].outcome, "serving");
        assert_eq!(
            echo.version_label().as_deref(),
            Some("aaaaaaaaaaaa+bbbbbbbb")
        );
        assert_eq!(
            s.services[1],
            ServiceReport {
                name: "api".into(),
                ..Default::default()
            }
        );
        let empty: ShipStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, ShipStatus::default());
    }
}
