//! The phleet view: every ship's status side by side, with drift marked. Pure: built from
//! what the ships answered, for `GET /phleet/status`, `status --phleet --json` and the text.
//!
//! **Which HQ commit a ship should be at.** Without git at hand the newest commit cannot be
//! told from an older one, so the reference is the commit most ships are at, counting only
//! reachable ships that follow HQ without an error (all reachable ships with a commit if
//! none does); a tie goes to the commit of the ship building the view (it has just asked
//! HQ), then to the ship first in `ships`. With no reachable ship the reference is the
//! caller's commit. A reachable ship at any other commit, or at none, is `behind`. Right
//! after a push the first ships to take it may briefly be the minority; that passes within
//! one poll of HQ.
//!
//! **Which version a service should be at.** Versions are compared by label (app commit +
//! order revision), not by key, since the key also hashes each ship's own env. A service
//! drifts when reachable ships run it at more than one version (a ship without it counts as
//! a version "none"); a ship drifts for a service when its version is not the most common.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::peer::Peer;
use crate::status::{PeerStatus, ServiceReport, ShipStatus};

/// The whole phleet, as `status --phleet` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhleetView {
    /// The HQ commit ships are measured against (see the module docs for the rule).
    pub hq_commit: Option<String>,
    /// Every ship in `ships`, in that order.
    pub ships: Vec<ShipView>,
    /// Every service any reachable ship knows, by name, with the versions seen.
    pub services: Vec<ServiceAcross>,
    /// Versions the rollout gate holds back, per ship and service.
    pub rollouts: Vec<RolloutNote>,
}

/// One ship in the view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipView {
    /// Its name in `ships`.
    pub name: String,
    /// Its admin URL.
    pub url: String,
    /// Whether it answered in time.
    pub reachable: bool,
    /// Why it did not.
    pub unreachable: Option<String>,
    /// The HQ commit in force on it.
    pub hq_commit: Option<String>,
    /// Why it cannot follow HQ, if so.
    pub hq_error: Option<String>,
    /// It is not at the phleet's HQ commit.
    pub behind: bool,
    /// Its diagnostics.
    pub errors: Vec<String>,
    /// Its services, by name.
    pub services: Vec<ShipService>,
}

/// One service on one ship.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipService {
    /// Service name.
    pub name: String,
    /// Version label (app commit + order revision), comparable across ships.
    pub version: Option<String>,
    /// The ship's version key.
    pub version_key: Option<String>,
    /// The app commit.
    pub app_commit: Option<String>,
    /// "serving", "deploying", "failed", "down", "broken order".
    pub state: String,
    /// "healthy", "degraded", "starting" or "down" (as the ship reports it, or derived from
    /// its containers: all running is healthy, some is degraded, none is down).
    pub health: String,
    /// Containers whose process is alive.
    pub containers_running: usize,
    /// All its containers.
    pub containers_total: usize,
    /// Its most recent deploy.
    pub last_deploy: Option<LastDeploy>,
    /// Its latest problem.
    pub error: Option<String>,
    /// Its version is not the one most ships run.
    pub drift: bool,
    /// What the rollout gate holds back on this ship, if anything.
    pub rollout: Option<String>,
}

/// The latest deploy of a service on a ship.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastDeploy {
    /// Version label (or key, from ships that do not send labels).
    pub version: String,
    /// Unix ms when it began.
    pub started_at_ms: u64,
    /// "serving", "failed: …", or "in progress".
    pub outcome: String,
}

/// One service across the reachable ships.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceAcross {
    /// Service name.
    pub name: String,
    /// Each version seen and on which ships, most common first.
    pub versions: Vec<VersionSeen>,
    /// More than one version is seen.
    pub drift: bool,
}

/// One version of a service and the ships running it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionSeen {
    /// The version label; `None` where the ship runs no version of it.
    pub version: Option<String>,
    /// The ships, in `ships` order.
    pub ships: Vec<String>,
}

/// A version the rollout gate holds back on one ship.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutNote {
    /// The ship.
    pub ship: String,
    /// The service.
    pub service: String,
    /// What the gate said.
    pub note: String,
}

/// The health of a service: as the ship reports it, else from its containers.
fn health(s: &ServiceReport) -> String {
    if let Some(h) = &s.health {
        return h.clone();
    }
    let total = s.containers.len();
    let running = s.containers.iter().filter(|c| c.running).count();
    match (running, total) {
        (0, _) if s.state == "deploying" => "starting",
        (0, _) => "down",
        (r, t) if r == t => "healthy",
        _ => "degraded",
    }
    .to_string()
}

fn ship_service(s: &ServiceReport) -> ShipService {
    ShipService {
        name: s.name.clone(),
        version: s.version_label(),
        version_key: s.version.clone(),
        app_commit: s.app_commit.clone(),
        state: s.state.clone(),
        health: health(s),
        containers_running: s.containers.iter().filter(|c| c.running).count(),
        containers_total: s.containers.len(),
        last_deploy: s.deploys.last().map(|d| LastDeploy {
            version: if d.version_label.is_empty() {
                d.key.clone()
            } else {
                d.version_label.clone()
            },
            started_at_ms: d.started_at_ms,
            outcome: d.outcome.clone(),
        }),
        error: s.error.clone(),
        drift: false,
        rollout: s.rollout.clone(),
    }
}

/// The reference HQ commit (module docs).
fn reference_commit(hq_commit: Option<&str>, reachable: &[&ShipStatus]) -> Option<String> {
    let following: Vec<&str> = reachable
        .iter()
        .filter(|s| s.headquarters_error.is_none())
        .filter_map(|s| s.headquarters_commit.as_deref())
        .collect();
    let voters = if following.is_empty() {
        reachable
            .iter()
            .filter_map(|s| s.headquarters_commit.as_deref())
            .collect()
    } else {
        following
    };
    // (count, first position) per commit.
    let mut tally: Vec<(&str, usize, usize)> = Vec::new();
    for (i, c) in voters.iter().enumerate() {
        match tally.iter_mut().find(|(k, _, _)| k == c) {
            Some(t) => t.1 += 1,
            None => tally.push((c, 1, i)),
        }
    }
    let best = tally.iter().map(|t| t.1).max()?;
    let tied: Vec<&(&str, usize, usize)> = tally.iter().filter(|t| t.1 == best).collect();
    let pick = tied
        .iter()
        .find(|t| Some(t.0) == hq_commit)
        .or_else(|| tied.iter().min_by_key(|t| t.2))
        .map(|t| t.0.to_string());
    pick.or_else(|| hq_commit.map(str::to_string))
}

/// Builds the view from every ship's answer (in `ships` order) and the HQ commit of the
/// ship building it.
pub fn phleet_view(hq_commit: Option<&str>, peers: &[(Peer, PeerStatus)]) -> PhleetView {
    let reachable: Vec<&ShipStatus> = peers
        .iter()
        .filter_map(|(_, s)| match s {
            PeerStatus::Reachable(st) => Some(&**st),
            PeerStatus::Unreachable { .. } => None,
        })
        .collect();
    let reference = if reachable.is_empty() {
        hq_commit.map(str::to_string)
    } else {
        reference_commit(hq_commit, &reachable)
    };
    let mut ships: Vec<ShipView> = peers
        .iter()
        .map(|(peer, status)| match status {
            PeerStatus::Reachable(st) => {
                let mut services: Vec<ShipService> = st.services.iter().map(ship_service).collect();
                services.sort_by(|a, b| a.name.cmp(&b.name));
                ShipView {
                    name: peer.name.clone(),
                    url: peer.url.clone(),
                    reachable: true,
                    unreachable: None,
                    hq_commit: st.headquarters_commit.clone(),
                    hq_error: st.headquarters_error.clone(),
                    behind: reference.is_some() && st.headquarters_commit != reference,
                    errors: st.errors.clone(),
                    services,
                }
            }
            PeerStatus::Unreachable { reason } => ShipView {
                name: peer.name.clone(),
                url: peer.url.clone(),
                reachable: false,
                unreachable: Some(reason.to_string()),
                ..Default::default()
            },
        })
        .collect();

    let names: BTreeSet<String> = ships
        .iter()
        .flat_map(|s| s.services.iter().map(|v| v.name.clone()))
        .collect();
    let mut services = Vec::new();
    for name in names {
        let mut versions: Vec<VersionSeen> = Vec::new();
        for ship in ships.iter().filter(|s| s.reachable) {
            let v = ship
                .services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.version.clone());
            match versions.iter_mut().find(|seen| seen.version == v) {
                Some(seen) => seen.ships.push(ship.name.clone()),
                None => versions.push(VersionSeen {
                    version: v,
                    ships: vec![ship.name.clone()],
                }),
            }
        }
        // Most common first; on a tie a real version before "none", then first seen (stable).
        versions.sort_by_key(|v| (std::cmp::Reverse(v.ships.len()), v.version.is_none()));
        let drift = versions.len() > 1;
        if drift {
            let common = versions[0].version.clone();
            for ship in ships.iter_mut() {
                for svc in ship.services.iter_mut().filter(|s| s.name == name) {
                    svc.drift = svc.version != common;
                }
            }
        }
        services.push(ServiceAcross {
            name,
            versions,
            drift,
        });
    }

    let rollouts = ships
        .iter()
        .flat_map(|ship| {
            ship.services.iter().filter_map(|s| {
                s.rollout.as_ref().map(|note| RolloutNote {
                    ship: ship.name.clone(),
                    service: s.name.clone(),
                    note: note.clone(),
                })
            })
        })
        .collect();

    PhleetView {
        hq_commit: reference,
        ships,
        services,
        rollouts,
    }
}

/// A commit for a table: its first 12 characters.
fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// A version label for a grid cell: `app7+rev4`.
fn short_version(label: &str) -> String {
    match label.split_once('+') {
        Some((app, rev)) => format!("{}+{}", &app[..7.min(app.len())], &rev[..4.min(rev.len())]),
        None => label[..12.min(label.len())].to_string(),
    }
}

/// Pads columns to their widest cell; no trailing spaces.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn format_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The view as `starphleet status --phleet` prints it: ships, then services with the ships
/// side by side (DRIFT, BEHIND and UNREACHABLE marked), then drift, deploys, rollout notes
/// and errors.
pub fn render_text(view: &PhleetView) -> String {
    let mut out = String::new();
    let reachable = view.ships.iter().filter(|s| s.reachable).count();
    let _ = write!(
        out,
        "phleet: {} ship{}, {} reachable",
        view.ships.len(),
        if view.ships.len() == 1 { "" } else { "s" },
        reachable
    );
    match &view.hq_commit {
        Some(c) => {
            let at = view
                .ships
                .iter()
                .filter(|s| s.hq_commit.as_deref() == Some(c))
                .count();
            let _ = writeln!(out, "; HQ at {} on {at} of them", short(c));
        }
        None => out.push_str("; no HQ commit known\n"),
    }
    if view.ships.is_empty() {
        out.push_str("HQ's `ships` lists no ship: add lines `NAME http://HOST:9797` to it\n");
        return out;
    }

    out.push('\n');
    let mut rows = vec![vec![
        "SHIP".to_string(),
        "HQ".into(),
        "ADMIN".into(),
        String::new(),
    ]];
    for s in &view.ships {
        let mark = if !s.reachable {
            format!(
                "UNREACHABLE: {}",
                s.unreachable.as_deref().unwrap_or("no answer")
            )
        } else if s.behind {
            "BEHIND".to_string()
        } else {
            String::new()
        };
        rows.push(vec![
            s.name.clone(),
            s.hq_commit.as_deref().map(short).unwrap_or("-").to_string(),
            s.url.clone(),
            mark,
        ]);
    }
    out.push_str(&table(&rows, ""));

    if !view.services.is_empty() {
        out.push('\n');
        let mut header = vec!["SERVICE".to_string()];
        header.extend(view.ships.iter().map(|s| s.name.clone()));
        let mut rows = vec![header];
        for svc in &view.services {
            let mut row = vec![svc.name.clone()];
            for ship in &view.ships {
                let cell = if !ship.reachable {
                    "?".to_string()
                } else {
                    match ship.services.iter().find(|s| s.name == svc.name) {
                        None => "-".to_string(),
                        Some(s) => {
                            let mut c = format!(
                                "{} {} {}/{}",
                                s.state,
                                s.version
                                    .as_deref()
                                    .map(short_version)
                                    .unwrap_or("-".into()),
                                s.containers_running,
                                s.containers_total
                            );
                            if s.health != "healthy" {
                                let _ = write!(c, " {}", s.health);
                            }
                            if s.drift {
                                c.push_str(" DRIFT");
                            }
                            c
                        }
                    }
                };
                row.push(cell);
            }
            rows.push(row);
        }
        out.push_str(&table(&rows, ""));
    }

    let drifting: Vec<&ServiceAcross> = view.services.iter().filter(|s| s.drift).collect();
    if !drifting.is_empty() {
        out.push_str("\ndrift:\n");
        for svc in drifting {
            let parts: Vec<String> = svc
                .versions
                .iter()
                .map(|v| {
                    format!(
                        "{} on {}",
                        v.version.as_deref().unwrap_or("none"),
                        v.ships.join(", ")
                    )
                })
                .collect();
            let _ = writeln!(out, "  {}: {}", svc.name, parts.join("; "));
        }
    }

    let mut deploys = Vec::new();
    for ship in &view.ships {
        for s in &ship.services {
            if let Some(d) = &s.last_deploy {
                deploys.push(vec![
                    ship.name.clone(),
                    s.name.clone(),
                    d.version.clone(),
                    format_ms(d.started_at_ms),
                    d.outcome.clone(),
                ]);
            }
        }
    }
    if !deploys.is_empty() {
        out.push_str("\nlast deploys:\n");
        out.push_str(&table(&deploys, "  "));
    }

    if !view.rollouts.is_empty() {
        out.push_str("\nrollout:\n");
        let rows: Vec<Vec<String>> = view
            .rollouts
            .iter()
            .map(|r| vec![r.ship.clone(), r.service.clone(), r.note.clone()])
            .collect();
        out.push_str(&table(&rows, "  "));
    }

    let mut errors = Vec::new();
    for ship in view.ships.iter().filter(|s| s.reachable) {
        if let Some(e) = &ship.hq_error {
            errors.push(format!("  {}: HQ: {e}", ship.name));
        }
        for e in &ship.errors {
            errors.push(format!("  {}: {e}", ship.name));
        }
        for s in &ship.services {
            if let Some(e) = &s.error {
                errors.push(format!("  {} {}: {e}", ship.name, s.name));
            }
        }
    }
    if !errors.is_empty() {
        out.push_str("\nerrors:\n");
        for e in errors {
            out.push_str(&e);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerError;
    use crate::status::{ContainerReport, DeployReport};

    fn svc(name: &str, app: &str, running: &[bool]) -> ServiceReport {
        ServiceReport {
            name: name.into(),
            state: "serving".into(),
            version: Some(format!("key-{app}")),
            app_commit: Some(app.repeat(12)),
            order_revision: Some("r".repeat(8)),
            containers: running
                .iter()
                .enumerate()
                .map(|(i, r)| ContainerReport {
                    id: format!("c{i}"),
                    running: *r,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ship(name: &str, hq: &str, services: Vec<ServiceReport>) -> (Peer, PeerStatus) {
        (
            Peer::new(name, format!("http://{name}:9797")),
            PeerStatus::Reachable(Box::new(ShipStatus {
                ship: name.into(),
                headquarters_commit: Some(hq.into()),
                services,
                ..Default::default()
            })),
        )
    }

    fn dead(name: &str) -> (Peer, PeerStatus) {
        (
            Peer::new(name, format!("http://{name}:9797")),
            PeerStatus::Unreachable {
                reason: PeerError::TimedOut {
                    after: crate::PEER_TIMEOUT,
                },
            },
        )
    }

    fn behind(v: &PhleetView) -> Vec<&str> {
        v.ships
            .iter()
            .filter(|s| s.behind)
            .map(|s| s.name.as_str())
            .collect()
    }

    #[test]
    fn the_majority_commit_is_the_reference() {
        let peers = vec![
            ship("north", "new", vec![]),
            ship("south", "old", vec![]),
            ship("east", "old", vec![]),
            dead("west"),
        ];
        let v = phleet_view(Some("new"), &peers);
        assert_eq!(v.hq_commit.as_deref(), Some("old"));
        assert_eq!(behind(&v), ["north"]);
        assert!(!v.ships[3].reachable && !v.ships[3].behind);
        assert_eq!(
            v.ships[3].unreachable.as_deref(),
            Some("no answer within 2s")
        );
    }

    #[test]
    fn a_tie_goes_to_the_asking_ship_then_to_ships_order() {
        let peers = vec![ship("north", "a", vec![]), ship("south", "b", vec![])];
        let v = phleet_view(Some("b"), &peers);
        assert_eq!(v.hq_commit.as_deref(), Some("b"));
        assert_eq!(behind(&v), ["north"]);
        let v = phleet_view(None, &peers);
        assert_eq!(v.hq_commit.as_deref(), Some("a"));
        assert_eq!(behind(&v), ["south"]);
    }

    #[test]
    fn ships_with_an_hq_error_do_not_vote_and_no_commit_is_behind() {
        let (p, mut s) = ship("north", "stale", vec![]);
        if let PeerStatus::Reachable(st) = &mut s {
            st.headquarters_error = Some("fetch failed".into());
        }
        let (q, mut t) = ship("south", "stale", vec![]);
        if let PeerStatus::Reachable(st) = &mut t {
            st.headquarters_error = Some("fetch failed".into());
        }
        let (r, mut u) = ship("west", "x", vec![]);
        if let PeerStatus::Reachable(st) = &mut u {
            st.headquarters_commit = None;
        }
        let peers = vec![(p, s), (q, t), ship("east", "fresh", vec![]), (r, u)];
        let v = phleet_view(None, &peers);
        assert_eq!(v.hq_commit.as_deref(), Some("fresh"));
        assert_eq!(behind(&v), ["north", "south", "west"]);
        let all_dead = phleet_view(Some("mine"), &[dead("a")]);
        assert_eq!(all_dead.hq_commit.as_deref(), Some("mine"));
    }

    #[test]
    fn a_service_at_another_version_drifts() {
        let peers = vec![
            ship(
                "north",
                "h",
                vec![svc("echo", "a", &[true]), svc("api", "x", &[true])],
            ),
            ship("south", "h", vec![svc("echo", "a", &[true, false])]),
            ship(
                "east",
                "h",
                vec![svc("echo", "b", &[true]), svc("api", "x", &[])],
            ),
            dead("west"),
        ];
        let v = phleet_view(Some("h"), &peers);
        assert!(behind(&v).is_empty());
        let echo = v.services.iter().find(|s| s.name == "echo").unwrap();
        assert!(echo.drift);
        assert_eq!(echo.versions[0].ships, ["north", "south"]);
        assert_eq!(
            echo.versions[1].version.as_deref(),
            Some("bbbbbbbbbbbb+rrrrrrrr")
        );
        let flagged: Vec<(&str, &str)> = v
            .ships
            .iter()
            .flat_map(|s| {
                s.services
                    .iter()
                    .filter(|x| x.drift)
                    .map(move |x| (s.name.as_str(), x.name.as_str()))
            })
            .collect();
        assert_eq!(flagged, [("east", "echo")]);
        // api: north and east run x, south has none.
        let api = v.services.iter().find(|s| s.name == "api").unwrap();
        assert!(api.drift);
        assert_eq!(api.versions[1].version, None);
        assert_eq!(api.versions[1].ships, ["south"]);
        // Health from containers.
        let south_echo = &v.ships[1].services[0];
        assert_eq!(
            (
                south_echo.health.as_str(),
                south_echo.containers_running,
                south_echo.containers_total
            ),
            ("degraded", 1, 2)
        );
        assert_eq!(v.ships[2].services[0].name, "api");
        assert_eq!(v.ships[2].services[0].health, "down");
    }

    #[test]
    fn one_version_everywhere_is_no_drift_and_rollout_notes_are_collected() {
        let mut held = svc("echo", "a", &[true]);
        held.rollout = Some("waits for north".into());
        held.deploys = vec![DeployReport {
            key: "k".into(),
            version_label: "aaaa+rrrr".into(),
            started_at_ms: 1_700_000_000_000,
            outcome: "serving".into(),
            ..Default::default()
        }];
        let peers = vec![
            ship("north", "h", vec![svc("echo", "a", &[true])]),
            ship("south", "h", vec![held]),
        ];
        let v = phleet_view(Some("h"), &peers);
        assert!(!v.services[0].drift);
        assert_eq!(
            v.rollouts,
            [RolloutNote {
                ship: "south".into(),
                service: "echo".into(),
                note: "waits for north".into()
            }]
        );
        assert_eq!(
            v.ships[1].services[0].last_deploy.as_ref().unwrap().outcome,
            "serving"
        );
        let json = serde_json::to_string(&v).unwrap();
        let back: PhleetView = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn text_puts_ships_side_by_side_and_marks_trouble() {
        let mut failing = svc("echo", "b", &[]);
        failing.state = "failed".into();
        failing.error = Some("health check failed".into());
        let peers = vec![
            ship("north", "1111111111111111", vec![svc("echo", "a", &[true])]),
            ship("south", "1111111111111111", vec![svc("echo", "a", &[true])]),
            ship("east", "2222222222222222", vec![failing]),
            dead("west"),
        ];
        let text = render_text(&phleet_view(None, &peers));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "phleet: 4 ships, 3 reachable; HQ at 111111111111 on 2 of them"
        );
        assert!(
            text.contains("east   222222222222  http://east:9797   BEHIND"),
            "{text}"
        );
        assert!(
            text.contains(
                "west   -             http://west:9797   UNREACHABLE: no answer within 2s"
            ),
            "{text}"
        );
        let header = lines.iter().find(|l| l.starts_with("SERVICE")).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["SERVICE", "north", "south", "east", "west"]
        );
        let echo = lines.iter().find(|l| l.starts_with("echo ")).unwrap();
        assert!(echo.contains("serving aaaaaaa+rrrr 1/1"), "{echo}");
        assert!(
            echo.contains("failed bbbbbbb+rrrr 0/0 down DRIFT"),
            "{echo}"
        );
        assert!(echo.trim_end().ends_with('?'), "{echo}");
        assert!(text.contains("drift:\n  echo: aaaaaaaaaaaa+rrrrrrrr on north, south; bbbbbbbbbbbb+rrrrrrrr on east"), "{text}");
        assert!(
            text.contains("errors:\n  east echo: health check failed"),
            "{text}"
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("echo ")).count(), 1);
    }

    #[test]
    fn text_of_an_empty_phleet_says_how_to_list_ships() {
        let text = render_text(&phleet_view(None, &[]));
        assert!(text.contains("ships"), "{text}");
    }
}
