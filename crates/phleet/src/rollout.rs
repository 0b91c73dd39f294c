//! Rollout across ships in waves: whether this ship may start a version now, from what the
//! ships of earlier waves say about it (`GET /phleet/versions`).
//!
//! Set in `.starphleet`: `STARPHLEET_ROLLOUT=N` makes waves of N ships in `ships` order
//! (default: all at once), `STARPHLEET_ROLLOUT_SOAK` (default 10s) is how long every ship of
//! the earlier waves must have served the version healthy, `STARPHLEET_ROLLOUT_WAIT`
//! (default 2m) how long an unreachable earlier-wave ship holds the rollout before it is
//! skipped. A version that failed on a ship of an earlier wave is never started. Versions
//! are named by label (app commit + order revision), the same on every ship; a later
//! commit is another version, so it starts a new rollout from the first wave.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::peer::{Peer, PeerClient, PeerError};

/// `.starphleet` key: ships per wave.
pub const ROLLOUT_SETTING: &str = "STARPHLEET_ROLLOUT";
/// `.starphleet` key: how long earlier waves must serve a version healthy.
pub const SOAK_SETTING: &str = "STARPHLEET_ROLLOUT_SOAK";
/// `.starphleet` key: how long an unreachable earlier-wave ship holds the rollout.
pub const WAIT_SETTING: &str = "STARPHLEET_ROLLOUT_WAIT";

/// How a version rolls out across the phleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutSettings {
    /// Ships per wave, in `ships` order; `None`: all at once.
    pub wave: Option<usize>,
    /// How long every ship of the earlier waves must have served a version healthy.
    pub soak: Duration,
    /// How long an unreachable earlier-wave ship holds the rollout before it is skipped.
    pub wait: Duration,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            wave: None,
            soak: Duration::from_secs(10),
            wait: Duration::from_secs(120),
        }
    }
}

/// Why a rollout setting in `.starphleet` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutSettingError {
    /// Not a positive number of ships.
    #[error(
        "{ROLLOUT_SETTING}={0}: not a number of ships per wave; write e.g. \
         {ROLLOUT_SETTING}=1 to deploy one ship at a time, or remove it to deploy on all at once"
    )]
    BadWave(String),
    /// Not a duration.
    #[error("{key}={value}: not a duration; write e.g. {key}=10s or {key}=2m")]
    BadDuration {
        /// The key.
        key: &'static str,
        /// What was given.
        value: String,
    },
}

/// A duration setting: humantime (`10s`, `2m`, `1m30s`) or bare seconds.
fn duration(key: &'static str, value: &str) -> Result<Duration, RolloutSettingError> {
    let v = value.trim();
    v.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(v))
        .map_err(|_| RolloutSettingError::BadDuration {
            key,
            value: value.to_string(),
        })
}

impl RolloutSettings {
    /// Reads the rollout keys from `.starphleet`'s `KEY=VALUE` pairs (others are ignored;
    /// a later pair wins). An empty value is the default.
    pub fn from_settings<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RolloutSettingError> {
        let mut s = RolloutSettings::default();
        for (key, value) in pairs {
            let set = !value.trim().is_empty();
            match key {
                ROLLOUT_SETTING => {
                    s.wave = if set {
                        match value.trim().parse::<usize>() {
                            Ok(n) if n > 0 => Some(n),
                            _ => return Err(RolloutSettingError::BadWave(value.to_string())),
                        }
                    } else {
                        None
                    }
                }
                SOAK_SETTING => {
                    s.soak = if set {
                        duration(SOAK_SETTING, value)?
                    } else {
                        RolloutSettings::default().soak
                    }
                }
                WAIT_SETTING => {
                    s.wait = if set {
                        duration(WAIT_SETTING, value)?
                    } else {
                        RolloutSettings::default().wait
                    }
                }
                _ => {}
            }
        }
        Ok(s)
    }
}

/// One version of one service, named the same on every ship.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionId {
    /// The service.
    pub service: String,
    /// Its version label: app commit + order revision (`crate::version_label`), not the
    /// per-ship key, which also hashes the ship's own env.
    pub version: String,
}

/// What a ship answers at `GET /phleet/versions`: per service, what it serves, deploys and
/// has seen fail, so that ships of later waves can decide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipVersions {
    /// The ship's name.
    pub ship: String,
    /// Per service name.
    pub services: BTreeMap<String, ServiceVersions>,
    /// The ship's clock when it answered, Unix ms (lets the asker correct for clock skew).
    pub sampled_at_ms: u64,
}

/// One service in [`ShipVersions`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceVersions {
    /// The version receiving traffic and since when it has been healthy without a break
    /// (a restart after a crash starts a new span).
    pub current: Option<Serving>,
    /// The version being deployed now, if any.
    pub deploying: Option<String>,
    /// Versions that failed here: build, health check, or crash loop within the soak time.
    pub failed: Vec<FailedVersion>,
}

/// The version a ship serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Serving {
    /// Version label.
    pub version: String,
    /// Unix ms since when it has served healthy.
    pub healthy_since_ms: u64,
}

/// A version that failed on a ship.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedVersion {
    /// Version label.
    pub version: String,
    /// Unix ms when it failed.
    pub at_ms: u64,
    /// Why, e.g. `health check /health: no 2xx within 60s`.
    pub why: String,
}

impl ShipVersions {
    /// Moves every time to the asker's clock: the ship's clock read `sampled_at_ms` when
    /// the asker's read `local_now_ms`. A ship that sent no clock is left as it is.
    pub fn to_local_clock(&mut self, local_now_ms: u64) {
        if self.sampled_at_ms == 0 {
            return;
        }
        let shift = local_now_ms as i128 - self.sampled_at_ms as i128;
        let move_ms = |t: &mut u64| *t = (*t as i128 + shift).clamp(0, u64::MAX as i128) as u64;
        for svc in self.services.values_mut() {
            if let Some(c) = &mut svc.current {
                move_ms(&mut c.healthy_since_ms);
            }
            for f in &mut svc.failed {
                move_ms(&mut f.at_ms);
            }
        }
        self.sampled_at_ms = local_now_ms;
    }
}

/// What one ship says about the service being rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVersionState {
    /// It answered (a ship without the service answers an empty [`ServiceVersions`]).
    Known(ServiceVersions),
    /// It has not answered since `since_ms` (asker's clock).
    Unreachable {
        /// Since when.
        since_ms: u64,
        /// Why.
        why: String,
    },
}

/// Whether this ship may start a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Start it.
    Go,
    /// Not yet: ask again when the earlier waves' answers change, or at `until_ms`, when it
    /// opens if nothing else changes (`None`: only a change can open it).
    Wait {
        /// When the gate opens by time alone, Unix ms.
        until_ms: Option<u64>,
        /// What it waits for.
        why: String,
    },
    /// Never start it: it failed on a ship of an earlier wave.
    Never {
        /// Where and why it failed.
        why: String,
    },
}

fn format_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The rollout note a ship shows in its status for a held version.
impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Go => f.write_str("go"),
            Gate::Wait {
                until_ms: Some(t),
                why,
            } => write!(f, "held until {}: {why}", format_ms(*t)),
            Gate::Wait {
                until_ms: None,
                why,
            } => write!(f, "held: {why}"),
            Gate::Never { why } => write!(f, "not started here: {why}"),
        }
    }
}

/// The wave of `ship` (0 is the first), or `None` when `ships` does not list it.
pub fn wave_of(ship: &str, peers: &[Peer], wave: Option<usize>) -> Option<usize> {
    let i = peers.iter().position(|p| p.name == ship)?;
    Some(wave.map_or(0, |n| i / n.max(1)))
}

/// The ships of the waves before `me`'s: the ones to ask before starting a version.
pub fn earlier_waves<'a>(me: &str, peers: &'a [Peer], settings: &RolloutSettings) -> &'a [Peer] {
    match (wave_of(me, peers, settings.wave), settings.wave) {
        (Some(w), Some(n)) => &peers[..(w * n.max(1)).min(peers.len())],
        _ => &[],
    }
}

fn secs(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

/// Whether `me` may start `version` now (see the module docs for the rules). `peers` is
/// `ships` in order; `observed` what each ship said about the service (a ship of an earlier
/// wave that is not in it counts as unreachable since `first_seen_ms`); `first_seen_ms` is
/// when this ship first wanted this version (a newer version starts its own count).
pub fn may_start(
    me: &str,
    peers: &[Peer],
    settings: &RolloutSettings,
    version: &VersionId,
    observed: &[(String, PeerVersionState)],
    now: u64,
    first_seen_ms: u64,
) -> Gate {
    let earlier = earlier_waves(me, peers, settings);
    let per_wave = settings.wave.unwrap_or(1).max(1);
    let soak_ms = settings.soak.as_millis() as u64;
    let wait_ms = settings.wait.as_millis() as u64;
    let v = &version.version;
    let mut holds: Vec<(Option<u64>, String)> = Vec::new();
    for (i, peer) in earlier.iter().enumerate() {
        let who = format!("{} (wave {})", peer.name, i / per_wave + 1);
        let not_asked = PeerVersionState::Unreachable {
            since_ms: first_seen_ms,
            why: "not asked yet".into(),
        };
        let state = observed
            .iter()
            .find(|(name, _)| *name == peer.name)
            .map_or(&not_asked, |(_, s)| s);
        match state {
            PeerVersionState::Known(sv) => {
                if let Some(f) = sv.failed.iter().find(|f| f.version == *v) {
                    return Gate::Never {
                        why: format!(
                            "{} {v} failed on {who} at {}: {}",
                            version.service,
                            format_ms(f.at_ms),
                            f.why
                        ),
                    };
                }
                match &sv.current {
                    Some(s) if s.version == *v => {
                        let ready = s.healthy_since_ms.saturating_add(soak_ms);
                        if now < ready {
                            holds.push((
                                Some(ready),
                                format!(
                                    "{who} has served {v} healthy for {} of {}",
                                    secs(now.saturating_sub(s.healthy_since_ms)),
                                    secs(soak_ms)
                                ),
                            ));
                        }
                    }
                    current => {
                        let doing = if sv.deploying.as_deref() == Some(v.as_str()) {
                            format!("is deploying {v}")
                        } else if let Some(c) = current {
                            format!("serves {} and not yet {v}", c.version)
                        } else {
                            format!("does not serve {v} yet")
                        };
                        holds.push((None, format!("{who} {doing}")));
                    }
                }
            }
            PeerVersionState::Unreachable { since_ms, why } => {
                let until = (*since_ms).max(first_seen_ms).saturating_add(wait_ms);
                if now < until {
                    holds.push((
                        Some(until),
                        format!(
                            "{who} is unreachable ({why}); it is skipped at {}",
                            format_ms(until)
                        ),
                    ));
                }
            }
        }
    }
    if holds.is_empty() {
        return Gate::Go;
    }
    let until_ms = holds
        .iter()
        .map(|(t, _)| *t)
        .collect::<Option<Vec<u64>>>()
        .and_then(|ts| ts.into_iter().max());
    let why = holds
        .into_iter()
        .map(|(_, w)| w)
        .collect::<Vec<_>>()
        .join("; ");
    Gate::Wait { until_ms, why }
}

/// Remembers since when each ship has not answered, across polls (the gate counts the
/// wait from then).
#[derive(Debug, Default)]
pub struct Reachability {
    down_since: HashMap<String, u64>,
}

/// One poll of the earlier waves, ready for [`may_start`] per service.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    ships: Vec<(String, Polled)>,
}

/// One ship in one poll.
#[derive(Debug, Clone)]
enum Polled {
    Answered(ShipVersions),
    Down { since_ms: u64, why: String },
}

impl Reachability {
    /// Takes one poll's answers (from [`PeerClient::versions_all`]) at `now_ms`.
    pub fn observe(
        &mut self,
        answers: Vec<(Peer, Result<ShipVersions, PeerError>)>,
        now_ms: u64,
    ) -> Observations {
        let ships = answers
            .into_iter()
            .map(|(peer, answer)| {
                let state = match answer {
                    Ok(v) => {
                        self.down_since.remove(&peer.name);
                        Polled::Answered(v)
                    }
                    Err(e) => Polled::Down {
                        since_ms: *self.down_since.entry(peer.name.clone()).or_insert(now_ms),
                        why: e.to_string(),
                    },
                };
                (peer.name, state)
            })
            .collect();
        Observations { ships }
    }
}

impl Observations {
    /// What each ship said about `service`, for [`may_start`].
    pub fn for_service(&self, service: &str) -> Vec<(String, PeerVersionState)> {
        self.ships
            .iter()
            .map(|(name, state)| {
                let s = match state {
                    Polled::Answered(v) => PeerVersionState::Known(
                        v.services.get(service).cloned().unwrap_or_default(),
                    ),
                    Polled::Down { since_ms, why } => PeerVersionState::Unreachable {
                        since_ms: *since_ms,
                        why: why.clone(),
                    },
                };
                (name.clone(), s)
            })
            .collect()
    }
}

impl PeerClient {
    /// `GET /phleet/versions` of one ship, its times moved to this ship's clock.
    pub async fn versions(&self, peer: &Peer) -> Result<ShipVersions, PeerError> {
        let mut v: ShipVersions = self.get_json(peer, "/phleet/versions").await?;
        v.to_local_clock(now_ms());
        Ok(v)
    }

    /// Every ship's versions, asked at once, within the client's timeout; in `peers` order.
    pub async fn versions_all(
        &self,
        peers: &[Peer],
    ) -> Vec<(Peer, Result<ShipVersions, PeerError>)> {
        let asks = peers
            .iter()
            .map(|p| async move { (p.clone(), self.versions(p).await) });
        futures::future::join_all(asks).await
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const T0: u64 = 1_800_000_000_000;

    fn ships(n: usize) -> Vec<Peer> {
        (1..=n)
            .map(|i| Peer::new(format!("s{i}"), format!("http://10.1.0.{i}:9797")))
            .collect()
    }

    fn serving(v: &str, since: u64) -> PeerVersionState {
        PeerVersionState::Known(ServiceVersions {
            current: Some(Serving {
                version: v.into(),
                healthy_since_ms: since,
            }),
            ..Default::default()
        })
    }

    fn failed(v: &str, serving_v: Option<&str>) -> PeerVersionState {
        PeerVersionState::Known(ServiceVersions {
            current: serving_v.map(|s| Serving {
                version: s.into(),
                healthy_since_ms: T0 - 100 * S,
            }),
            failed: vec![FailedVersion {
                version: v.into(),
                at_ms: T0,
                why: "health check / failed".into(),
            }],
            ..Default::default()
        })
    }

    fn deploying(v: &str) -> PeerVersionState {
        PeerVersionState::Known(ServiceVersions {
            deploying: Some(v.into()),
            ..Default::default()
        })
    }

    fn down(since: u64) -> PeerVersionState {
        PeerVersionState::Unreachable {
            since_ms: since,
            why: "connection refused".into(),
        }
    }

    fn settings(wave: Option<usize>) -> RolloutSettings {
        RolloutSettings {
            wave,
            ..Default::default()
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Go,
        Wait(Option<u64>),
        Never,
    }

    #[test]
    fn the_gate_follows_every_rule() {
        let v2 = "v2";
        // (what, me, ships, wave size, observed, now, first seen, expected)
        type Case = (
            &'static str,
            &'static str,
            usize,
            Option<usize>,
            Vec<(&'static str, PeerVersionState)>,
            u64,
            u64,
            Want,
        );
        let cases: Vec<Case> = vec![
            (
                "not in ships: runs alone",
                "other",
                3,
                Some(1),
                vec![],
                T0,
                T0,
                Want::Go,
            ),
            (
                "all at once by default",
                "s3",
                3,
                None,
                vec![],
                T0,
                T0,
                Want::Go,
            ),
            (
                "first wave goes at once",
                "s1",
                3,
                Some(1),
                vec![],
                T0,
                T0,
                Want::Go,
            ),
            (
                "first wave of two goes at once",
                "s2",
                4,
                Some(2),
                vec![],
                T0,
                T0,
                Want::Go,
            ),
            (
                "second wave waits for the first to serve it",
                "s2",
                3,
                Some(1),
                vec![("s1", serving("v1", T0 - 100 * S))],
                T0,
                T0,
                Want::Wait(None),
            ),
            (
                "second wave waits while the first deploys it",
                "s2",
                3,
                Some(1),
                vec![("s1", deploying(v2))],
                T0,
                T0,
                Want::Wait(None),
            ),
            (
                "soak not over: wait until it is",
                "s2",
                3,
                Some(1),
                vec![("s1", serving(v2, T0 - 4 * S))],
                T0,
                T0,
                Want::Wait(Some(T0 + 6 * S)),
            ),
            (
                "soak over: go",
                "s2",
                3,
                Some(1),
                vec![("s1", serving(v2, T0 - 10 * S))],
                T0,
                T0,
                Want::Go,
            ),
            (
                "third wave waits for both earlier waves",
                "s3",
                3,
                Some(1),
                vec![
                    ("s1", serving(v2, T0 - 60 * S)),
                    ("s2", serving(v2, T0 - 2 * S)),
                ],
                T0,
                T0,
                Want::Wait(Some(T0 + 8 * S)),
            ),
            (
                "waves of two: the third and fourth ship wait for the first two",
                "s4",
                4,
                Some(2),
                vec![
                    ("s1", serving(v2, T0 - 60 * S)),
                    ("s2", deploying(v2)),
                    ("s3", failed(v2, None)),
                ],
                T0,
                T0,
                Want::Wait(None),
            ),
            (
                "failed in an earlier wave: never",
                "s3",
                3,
                Some(1),
                vec![
                    ("s1", serving(v2, T0 - 60 * S)),
                    ("s2", failed(v2, Some("v1"))),
                ],
                T0,
                T0,
                Want::Never,
            ),
            (
                "failed beats a pending soak elsewhere",
                "s3",
                3,
                Some(1),
                vec![("s1", serving(v2, T0 - S)), ("s2", failed(v2, None))],
                T0,
                T0,
                Want::Never,
            ),
            (
                "an older failure does not block a newer version",
                "s2",
                2,
                Some(1),
                vec![(
                    "s1",
                    PeerVersionState::Known(ServiceVersions {
                        current: Some(Serving {
                            version: v2.into(),
                            healthy_since_ms: T0 - 30 * S,
                        }),
                        failed: vec![FailedVersion {
                            version: "v1".into(),
                            at_ms: T0 - 60 * S,
                            why: "crash loop".into(),
                        }],
                        ..Default::default()
                    }),
                )],
                T0,
                T0,
                Want::Go,
            ),
            (
                "a failure in a later wave does not stop an earlier one",
                "s1",
                2,
                Some(1),
                vec![("s2", failed(v2, None))],
                T0,
                T0,
                Want::Go,
            ),
            (
                "unreachable earlier ship holds the rollout for the wait",
                "s2",
                2,
                Some(1),
                vec![("s1", down(T0 - 30 * S))],
                T0,
                T0 - 40 * S,
                Want::Wait(Some(T0 + 90 * S)),
            ),
            (
                "then it is skipped",
                "s2",
                2,
                Some(1),
                vec![("s1", down(T0 - 30 * S))],
                T0 + 90 * S,
                T0 - 40 * S,
                Want::Go,
            ),
            (
                "a ship down before the version appeared still holds it for the wait",
                "s2",
                2,
                Some(1),
                vec![("s1", down(T0 - 3600 * S))],
                T0 + 10 * S,
                T0,
                Want::Wait(Some(T0 + 120 * S)),
            ),
            (
                "a newer version resets the wait (first seen later)",
                "s2",
                2,
                Some(1),
                vec![("s1", down(T0 - 300 * S))],
                T0,
                T0 - 10 * S,
                Want::Wait(Some(T0 + 110 * S)),
            ),
            (
                "not asked counts as unreachable since first seen",
                "s2",
                2,
                Some(1),
                vec![],
                T0 + 5 * S,
                T0,
                Want::Wait(Some(T0 + 120 * S)),
            ),
            (
                "a skipped ship and a soaked one: go",
                "s3",
                3,
                Some(1),
                vec![("s1", down(T0 - 200 * S)), ("s2", serving(v2, T0 - 20 * S))],
                T0 + 121 * S,
                T0,
                Want::Go,
            ),
            (
                "an open-ended hold makes the wait open-ended",
                "s3",
                3,
                Some(1),
                vec![("s1", down(T0)), ("s2", serving("v1", T0 - 20 * S))],
                T0,
                T0,
                Want::Wait(None),
            ),
        ];
        for (what, me, n, wave, observed, now, first, want) in cases {
            let observed: Vec<(String, PeerVersionState)> = observed
                .into_iter()
                .map(|(s, o)| (s.to_string(), o))
                .collect();
            let version = VersionId {
                service: "echo".into(),
                version: v2.into(),
            };
            let gate = may_start(
                me,
                &ships(n),
                &settings(wave),
                &version,
                &observed,
                now,
                first,
            );
            let got = match &gate {
                Gate::Go => Want::Go,
                Gate::Wait { until_ms, .. } => Want::Wait(*until_ms),
                Gate::Never { .. } => Want::Never,
            };
            assert_eq!(got, want, "{what}: {gate}");
        }
    }

    #[test]
    fn the_gate_says_why() {
        let version = VersionId {
            service: "echo".into(),
            version: "v2".into(),
        };
        let observed = vec![("s1".to_string(), serving("v2", T0 - 4 * S))];
        let gate = may_start(
            "s2",
            &ships(2),
            &settings(Some(1)),
            &version,
            &observed,
            T0,
            T0,
        );
        assert_eq!(
            gate.to_string(),
            "held until 2027-01-15T08:00:06Z: s1 (wave 1) has served v2 healthy for 4s of 10s"
        );
        let observed = vec![("s1".to_string(), failed("v2", Some("v1")))];
        let gate = may_start(
            "s2",
            &ships(2),
            &settings(Some(1)),
            &version,
            &observed,
            T0,
            T0,
        );
        assert_eq!(
            gate.to_string(),
            "not started here: echo v2 failed on s1 (wave 1) at 2027-01-15T08:00:00Z: health check / failed"
        );
        let observed = vec![("s1".to_string(), down(T0))];
        let gate = may_start(
            "s2",
            &ships(2),
            &settings(Some(1)),
            &version,
            &observed,
            T0,
            T0,
        );
        assert!(gate.to_string().contains("s1 (wave 1) is unreachable (connection refused); it is skipped at 2027-01-15T08:02:00Z"), "{gate}");
    }

    #[test]
    fn waves_and_whom_to_ask() {
        let p = ships(5);
        assert_eq!(wave_of("s1", &p, Some(2)), Some(0));
        assert_eq!(wave_of("s3", &p, Some(2)), Some(1));
        assert_eq!(wave_of("s5", &p, Some(2)), Some(2));
        assert_eq!(wave_of("s5", &p, None), Some(0));
        assert_eq!(wave_of("x", &p, Some(2)), None);
        let names = |ps: &[Peer]| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(earlier_waves("s5", &p, &settings(Some(2)))),
            ["s1", "s2", "s3", "s4"]
        );
        assert_eq!(
            names(earlier_waves("s4", &p, &settings(Some(2)))),
            ["s1", "s2"]
        );
        assert!(earlier_waves("s2", &p, &settings(Some(2))).is_empty());
        assert!(earlier_waves("s5", &p, &settings(None)).is_empty());
    }

    #[test]
    fn reads_settings_and_explains_bad_ones() {
        assert_eq!(
            RolloutSettings::from_settings([]),
            Ok(RolloutSettings::default())
        );
        let s = RolloutSettings::from_settings([
            ("GREETING", "hi"),
            (ROLLOUT_SETTING, "2"),
            (SOAK_SETTING, "30s"),
            (WAIT_SETTING, "5m"),
        ])
        .unwrap();
        assert_eq!(
            s,
            RolloutSettings {
                wave: Some(2),
                soak: Duration::from_secs(30),
                wait: Duration::from_secs(300)
            }
        );
        assert_eq!(
            RolloutSettings::from_settings([(SOAK_SETTING, "45")])
                .unwrap()
                .soak,
            Duration::from_secs(45)
        );
        assert_eq!(
            RolloutSettings::from_settings([(ROLLOUT_SETTING, "")])
                .unwrap()
                .wave,
            None
        );
        let e = RolloutSettings::from_settings([(ROLLOUT_SETTING, "0")]).unwrap_err();
        assert!(e.to_string().contains("STARPHLEET_ROLLOUT=1"), "{e}");
        let e = RolloutSettings::from_settings([(WAIT_SETTING, "soon")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "STARPHLEET_ROLLOUT_WAIT=soon: not a duration; write e.g. STARPHLEET_ROLLOUT_WAIT=10s or STARPHLEET_ROLLOUT_WAIT=2m"
        );
    }

    #[test]
    fn versions_move_to_the_askers_clock() {
        let mut v = ShipVersions {
            ship: "s1".into(),
            sampled_at_ms: T0 + 5 * S, // its clock runs 5 s ahead
            services: BTreeMap::from([(
                "echo".to_string(),
                ServiceVersions {
                    current: Some(Serving {
                        version: "v2".into(),
                        healthy_since_ms: T0,
                    }),
                    deploying: None,
                    failed: vec![FailedVersion {
                        version: "v1".into(),
                        at_ms: T0 - S,
                        why: "x".into(),
                    }],
                },
            )]),
        };
        v.to_local_clock(T0);
        let echo = &v.services["echo"];
        assert_eq!(echo.current.as_ref().unwrap().healthy_since_ms, T0 - 5 * S);
        assert_eq!(echo.failed[0].at_ms, T0 - 6 * S);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<ShipVersions>(&json).unwrap(), v);
    }

    #[test]
    fn reachability_remembers_since_when_a_ship_is_down() {
        let mut r = Reachability::default();
        let p = ships(2);
        let up = ShipVersions {
            ship: "s1".into(),
            ..Default::default()
        };
        let down = || {
            Err(PeerError::TimedOut {
                after: Duration::from_secs(2),
            })
        };
        let o = r.observe(
            vec![(p[0].clone(), Ok(up.clone())), (p[1].clone(), down())],
            T0,
        );
        let o2 = r.observe(
            vec![(p[0].clone(), Ok(up.clone())), (p[1].clone(), down())],
            T0 + 5 * S,
        );
        let states = o2.for_service("echo");
        assert_eq!(
            states[0],
            (
                "s1".into(),
                PeerVersionState::Known(ServiceVersions::default())
            )
        );
        assert_eq!(
            states[1],
            (
                "s2".into(),
                PeerVersionState::Unreachable {
                    since_ms: T0,
                    why: "no answer within 2s".into()
                }
            )
        );
        assert_eq!(o.for_service("echo").len(), 2);
        r.observe(vec![(p[1].clone(), Ok(up.clone()))], T0 + 6 * S);
        let o3 = r.observe(vec![(p[1].clone(), down())], T0 + 7 * S);
        assert!(matches!(
            o3.for_service("echo")[0].1,
            PeerVersionState::Unreachable { since_ms, .. } if since_ms == T0 + 7 * S
        ));
    }
}
