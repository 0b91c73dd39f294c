//! The certificate task: owns the ship's [`CertManager`] and keeps a certificate in force for
//! every `--tls --host`. It runs a round when the TLS hosts or HQ change, when a renewal is
//! due (at least hourly), and when an operator forces a renewal; each round is bounded, and
//! as the task is on its own, a slow ACME server delays nothing but certificates. Challenges
//! and certificates reach the proxy through the route programmer ([`Edge`]), which loads
//! new files without dropping a connection.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starphleet_certs::{AcmeConfig, CertManager, CertStatus, ChallengeSet, Challenges};
use starphleet_orders::PhleetSettings;
use starphleet_proxy::CertFiles;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Ctx;
use crate::owner::{DesiredRoutes, View};
use crate::routes::{tls_hosts, Edge};

/// The longest a round may take (ACME orders included) before it is abandoned and retried.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// A round runs at least this often, so certificates put on the ship by hand are picked up.
const ROUND_EVERY: Duration = Duration::from_secs(3600);
/// How long the proxy may take to put published challenges in force.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// What the certificate task shares with the admin endpoint: the statuses of the last round
/// and forced renewals asked for.
pub(crate) struct CertsShared {
    statuses: watch::Sender<Arc<Vec<CertStatus>>>,
    forced: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Default for CertsShared {
    fn default() -> Self {
        CertsShared {
            statuses: watch::channel(Arc::default()).0,
            forced: Mutex::default(),
            wake: Notify::new(),
        }
    }
}

impl CertsShared {
    /// Every TLS host's certificate as of the last round, sorted by host.
    pub fn statuses(&self) -> Arc<Vec<CertStatus>> {
        self.statuses.borrow().clone()
    }

    /// Orders `host`'s ACME certificate in a round starting now; `false` when `host` is no
    /// TLS host of the last round.
    pub fn force_renewal(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if !self.statuses.borrow().iter().any(|s| s.host == host) {
            return false;
        }
        self.forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host);
        self.wake.notify_one();
        true
    }

    fn take_forced(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.forced.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Puts certificates and challenges into the route programmer's [`Edge`] and waits until
/// the proxy has them.
pub(crate) struct Publisher {
    edge: watch::Sender<Arc<Edge>>,
    applied: watch::Receiver<u64>,
}

impl Publisher {
    /// A publisher into `edge`, told by `applied` which edge version the proxy has.
    pub fn new(edge: watch::Sender<Arc<Edge>>, applied: watch::Receiver<u64>) -> Self {
        Publisher { edge, applied }
    }

    /// Changes the edge; a new version when anything changed or `force`. Returns the version
    /// in force after it.
    fn update(&self, force: bool, change: impl FnOnce(&mut Edge)) -> u64 {
        let mut version = 0;
        self.edge.send_if_modified(|edge| {
            let mut next = (**edge).clone();
            change(&mut next);
            let modified = force || next != **edge;
            if modified {
                next.version = edge.version + 1;
                *edge = Arc::new(next);
            }
            version = edge.version;
            modified
        });
        version
    }

    async fn in_force(&self, version: u64) -> Result<(), String> {
        let mut applied = self.applied.clone();
        let in_force = async { applied.wait_for(|v| *v >= version).await.map(|_| ()) };
        match tokio::time::timeout(PUBLISH_TIMEOUT, in_force).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the ship is stopping".into()),
            Err(_) => Err(format!(
                "the proxy did not take the challenges within {PUBLISH_TIMEOUT:?}"
            )),
        }
    }
}

impl Challenges for Publisher {
    async fn publish(&self, c: &ChallengeSet) -> Result<(), String> {
        let version = self.update(false, |edge| {
            edge.acme.http01.extend(c.http01.clone());
            for (host, cert, key) in &c.tls_alpn01 {
                edge.acme.tls_alpn01.push(CertFiles {
                    hosts: vec![host.clone()],
                    cert_path: cert.clone(),
                    key_path: key.clone(),
                });
            }
        });
        self.in_force(version).await
    }

    async fn withdraw(&self, c: &ChallengeSet) {
        self.update(false, |edge| withdraw(edge, c));
    }
}

fn withdraw(edge: &mut Edge, c: &ChallengeSet) {
    edge.acme
        .http01
        .retain(|token, _| !c.http01.contains_key(token));
    edge.acme.tls_alpn01.retain(|f| {
        !c.tls_alpn01
            .iter()
            .any(|(host, cert, _)| f.hosts == [host.clone()] && &f.cert_path == cert)
    });
}

/// How this ship orders certificates, if HQ's `.starphleet` names an ACME account.
fn acme_config(phleet: &PhleetSettings) -> Option<AcmeConfig> {
    let email = phleet.acme_email.clone()?;
    Some(AcmeConfig::new(email, Some(phleet.acme_directory.clone())))
}

/// The certificates `statuses` serve, one per host.
fn served(statuses: &[CertStatus]) -> Vec<CertFiles> {
    statuses
        .iter()
        .filter_map(|s| {
            let files = s.files.as_ref()?;
            Some(CertFiles {
                hosts: vec![s.host.clone()],
                cert_path: files.cert.clone(),
                key_path: files.key.clone(),
            })
        })
        .collect()
}

/// What a round depends on: the TLS hosts, the HQ commit and the ACME settings.
type RoundKey = (BTreeSet<String>, Option<String>, Option<AcmeConfig>);

/// Keeps certificates current until `stop`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut routes: watch::Receiver<Arc<DesiredRoutes>>,
    mut view: watch::Receiver<View>,
    publisher: Publisher,
    stop: CancellationToken,
) {
    let mut manager = CertManager::new(ctx.layout.root());
    let mut last: Option<RoundKey> = None;
    let mut fingerprints: Vec<(String, Option<String>)> = Vec::new();
    let mut next_round = Instant::now();
    loop {
        let hosts = tls_hosts(&routes.borrow_and_update().table);
        let (commit, acme) = {
            let v = view.borrow_and_update();
            let acme = v
                .snapshot
                .hq
                .as_ref()
                .and_then(|hq| acme_config(&hq.phleet));
            (v.snapshot.hq_commit.clone(), acme)
        };
        let key = (hosts, commit, acme);
        let forced = ctx.certs.take_forced();
        if last.as_ref() != Some(&key) || Instant::now() >= next_round || !forced.is_empty() {
            for host in &forced {
                manager.force_renewal(host);
            }
            let (hosts, commit, acme) = &key;
            let hosts: Vec<String> = hosts.iter().cloned().collect();
            let hq = commit.as_ref().map(|_| ctx.layout.hq());
            let round = manager.ensure(&hosts, hq.as_deref(), acme.as_ref(), &publisher);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(ROUND_TIMEOUT, round) => outcome,
                () = stop.cancelled() => return,
            };
            let wait = match outcome {
                Ok(statuses) => {
                    let now_fp: Vec<(String, Option<String>)> = statuses
                        .iter()
                        .map(|s| (s.host.clone(), s.fingerprint.clone()))
                        .collect();
                    let renewed = now_fp != fingerprints;
                    let certs = served(&statuses);
                    publisher.update(renewed, |edge| edge.certs = certs);
                    fingerprints = now_fp;
                    let now = unix_now();
                    let due = starphleet_certs::wake_at(&statuses)
                        .map(|at| Duration::from_secs(at.saturating_sub(now).max(1)));
                    ctx.certs.statuses.send_replace(Arc::new(statuses));
                    due.map_or(ROUND_EVERY, |d| d.min(ROUND_EVERY))
                }
                Err(_) => {
                    warn!("a certificate round took longer than {ROUND_TIMEOUT:?}; retrying");
                    publisher.update(false, |edge| edge.acme = Default::default());
                    Duration::from_secs(60)
                }
            };
            last = Some(key);
            next_round = Instant::now() + wait;
        }
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            changed = view.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(next_round) => {}
            () = ctx.certs.wake.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Unix seconds now, the clock certificates are dated by.
fn unix_now() -> u64 {
    crate::state::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> (Publisher, watch::Receiver<Arc<Edge>>, watch::Sender<u64>) {
        let (edge_tx, edge_rx) = watch::channel(Arc::new(Edge::default()));
        let (applied_tx, applied_rx) = watch::channel(0);
        (Publisher::new(edge_tx, applied_rx), edge_rx, applied_tx)
    }

    #[tokio::test]
    async fn challenges_wait_for_the_proxy_and_are_withdrawn() {
        let (publisher, mut edge, applied) = publisher();
        let set = ChallengeSet {
            http01: [("tok".to_string(), "tok.key".to_string())].into(),
            tls_alpn01: vec![("a.test".into(), "/c".into(), "/k".into())],
        };
        let publishing = publisher.publish(&set);
        let proxy = async {
            edge.changed().await.unwrap();
            let seen = edge.borrow_and_update().clone();
            assert_eq!(seen.acme.http01["tok"], "tok.key");
            assert_eq!(seen.acme.tls_alpn01[0].hosts, ["a.test"]);
            applied.send_replace(seen.version);
        };
        let (published, ()) = tokio::join!(publishing, proxy);
        published.unwrap();
        publisher.withdraw(&set).await;
        let now = edge.borrow().clone();
        assert!(now.acme.is_empty(), "{now:?}");
        assert_eq!(now.version, 2);
    }

    #[test]
    fn a_renewed_certificate_in_the_same_files_is_a_new_version() {
        let (publisher, edge, _applied) = publisher();
        let certs = vec![CertFiles {
            hosts: vec!["a.test".into()],
            cert_path: "/c".into(),
            key_path: "/k".into(),
        }];
        assert_eq!(publisher.update(false, |e| e.certs = certs.clone()), 1);
        assert_eq!(publisher.update(false, |e| e.certs = certs.clone()), 1);
        assert_eq!(publisher.update(true, |e| e.certs = certs.clone()), 2);
        assert_eq!(edge.borrow().certs, certs);
    }
}
