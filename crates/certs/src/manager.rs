//! The ship's certificate loop: for each TLS host, find its certificate, order or renew it
//! over ACME when due, and report what is served, until when, and what is wrong.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::acme::{AcmeClient, AcmeConfig, AcmeError, Challenges, Issued};
use crate::pem::{format_time, LoadedCert};
use crate::renewal::{next_renewal_at, renewal, Failures, Renewal, Validity};
use crate::resolve::{hq_candidates, resolve, Resolved, Source};

/// The PEM files the proxy serves for a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertPaths {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// One TLS host's certificate, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// The host (lowercase), e.g. `app.example.com` or `*.example.com`.
    pub host: String,
    /// Where the served certificate comes from; `None` when there is none.
    pub source: Option<Source>,
    /// What the proxy serves for the host; `None` when there is nothing to serve.
    pub files: Option<CertPaths>,
    /// The served certificate's notAfter, Unix seconds.
    pub not_after: Option<u64>,
    /// When the ship orders it again (ACME only), Unix seconds.
    pub next_renewal: Option<u64>,
    /// SHA-256 of the served leaf: a new value means the proxy must load the files again.
    pub fingerprint: Option<String>,
    /// Why the host has no certificate, or why its renewal failed (with how to fix it).
    pub error: Option<String>,
    /// Broken candidates that were passed over (one line each, naming the files).
    pub problems: Vec<String>,
}

impl CertStatus {
    fn served(
        host: &str,
        source: Source,
        cert_path: PathBuf,
        key_path: PathBuf,
        cert: &LoadedCert,
    ) -> Self {
        CertStatus {
            host: host.to_string(),
            source: Some(source),
            files: Some(CertPaths {
                cert: cert_path,
                key: key_path,
            }),
            not_after: Some(cert.not_after),
            next_renewal: None,
            fingerprint: Some(cert.fingerprint.clone()),
            error: None,
            problems: Vec::new(),
        }
    }

    fn missing(host: &str, error: String) -> Self {
        CertStatus {
            host: host.to_string(),
            source: None,
            files: None,
            not_after: None,
            next_renewal: None,
            fingerprint: None,
            error: Some(error),
            problems: Vec::new(),
        }
    }
}

/// The earliest `next_renewal` among `statuses`: when the ship should call
/// [`CertManager::ensure`] again at the latest (besides its hourly round and host changes).
pub fn wake_at(statuses: &[CertStatus]) -> Option<u64> {
    statuses.iter().filter_map(|s| s.next_renewal).min()
}

/// What the manager remembers about a host between rounds.
#[derive(Debug, Default)]
struct HostState {
    failures: Option<Failures>,
    last_error: Option<String>,
    force: bool,
}

/// Keeps every TLS host's certificate current. Owned by one task of the ship, which calls
/// [`ensure`](Self::ensure) on start, every hour, when the set of TLS hosts changes and at
/// [`wake_at`]; it holds no lock, so nothing waits on it while it talks to an ACME server.
#[derive(Debug)]
pub struct CertManager {
    certs_dir: PathBuf,
    acme_dir: PathBuf,
    hosts: HashMap<String, HostState>,
    acme: Option<AcmeClient>,
}

impl CertManager {
    /// A manager for the ship whose state folder is `state_dir`: the ship's own certificates
    /// in `certs/`, copies of HQ's in `certs/hq/`, the ACME account and certificates in `acme/`.
    pub fn new(state_dir: &Path) -> Self {
        CertManager {
            certs_dir: state_dir.join("certs"),
            acme_dir: state_dir.join("acme"),
            hosts: HashMap::new(),
            acme: None,
        }
    }

    /// The ship's own certificate folder, `<state-dir>/certs`.
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// Makes the next [`ensure`](Self::ensure) order `host`'s ACME certificate whether or not
    /// it is due (e.g. an operator asking for it, or after a key compromise).
    pub fn force_renewal(&mut self, host: &str) {
        self.hosts.entry(normalize(host)).or_default().force = true;
    }

    /// Finds, orders or renews the certificate of each of `hosts` and reports them, sorted
    /// by host. `hq` is the HQ checkout (its `certs/` folder is read without following
    /// symlinks); `acme` is `None` unless HQ sets `STARPHLEET_ACME_EMAIL`. Orders run one at
    /// a time, each bounded by timeouts; a failure is retried with back-off on later calls
    /// while the old certificate, if still valid, keeps being served.
    pub async fn ensure(
        &mut self,
        hosts: &[String],
        hq: Option<&Path>,
        acme: Option<&AcmeConfig>,
        challenges: &impl Challenges,
    ) -> Vec<CertStatus> {
        let hosts: Vec<String> = hosts
            .iter()
            .map(|h| normalize(h))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.hosts.retain(|h, _| hosts.contains(h));
        let now = unix_now();
        let resolved = {
            let (hosts, certs, acme_dir) =
                (hosts.clone(), self.certs_dir.clone(), self.acme_dir.clone());
            let hq = hq.map(Path::to_path_buf);
            let work = move || {
                let files = hq_candidates(&hosts);
                hosts
                    .iter()
                    .map(|h| {
                        resolve(
                            h,
                            &certs,
                            hq.as_deref().map(|r| (r, &files[..])),
                            &acme_dir,
                            now,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        };
        let mut out = Vec::with_capacity(hosts.len());
        for (host, resolved) in hosts.iter().zip(resolved) {
            out.push(self.ensure_one(host, resolved, acme, challenges, now).await);
        }
        out
    }

    async fn ensure_one(
        &mut self,
        host: &str,
        resolved: Resolved,
        acme: Option<&AcmeConfig>,
        challenges: &impl Challenges,
        now: u64,
    ) -> CertStatus {
        let (mut status, validity, problems) = match resolved {
            Resolved::Found {
                source: source @ (Source::Ship | Source::Headquarters),
                cert_path,
                key_path,
                cert,
                problems,
            } => {
                // Someone else looks after this certificate: forget any ACME history.
                self.hosts.remove(host);
                let mut status = CertStatus::served(host, source, cert_path, key_path, &cert);
                status.problems = problems;
                return status;
            }
            Resolved::Found {
                source: Source::Acme,
                cert_path,
                key_path,
                cert,
                problems,
            } => {
                let validity = Validity {
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                };
                let status = CertStatus::served(host, Source::Acme, cert_path, key_path, &cert);
                (status, Some(validity), problems)
            }
            Resolved::Missing { help, problems } => {
                (CertStatus::missing(host, help), None, problems)
            }
        };
        status.problems = problems;

        let acme = match acme {
            Some(acme) if !host.starts_with("*.") => acme,
            _ => {
                if status.source == Some(Source::Acme) {
                    status.problems.push(format!(
                        "ACME is not configured in headquarters (STARPHLEET_ACME_EMAIL), so this certificate \
                         will not be renewed; it expires on {}",
                        format_time(status.not_after.unwrap_or_default())
                    ));
                }
                return status;
            }
        };

        let state = self.hosts.entry(host.to_string()).or_default();
        let decision = if state.force {
            Renewal::Now
        } else {
            renewal(now, validity, state.failures)
        };
        if let Renewal::At(at) = decision {
            status.next_renewal = Some(at);
            if let Some(e) = &state.last_error {
                status.error = Some(failed_message(e, at));
            }
            return status;
        }

        tracing::info!(host, "ordering a certificate over ACME");
        match self.order(host, acme, challenges).await {
            Ok(issued) => {
                self.hosts.remove(host);
                tracing::info!(
                    host,
                    not_after = issued.cert.not_after,
                    "ACME issued a certificate"
                );
                let mut fresh = CertStatus::served(
                    host,
                    Source::Acme,
                    issued.cert_path,
                    issued.key_path,
                    &issued.cert,
                );
                fresh.next_renewal = Some(next_renewal_at(
                    Some(Validity {
                        not_before: issued.cert.not_before,
                        not_after: issued.cert.not_after,
                    }),
                    None,
                ));
                // Problems with the old files are solved by the new ones.
                fresh.problems = status
                    .problems
                    .into_iter()
                    .filter(|p| !p.starts_with(&self.acme_dir.display().to_string()))
                    .collect();
                fresh
            }
            Err(e) => {
                let e = e.to_string();
                tracing::warn!(host, "ACME order failed: {e}");
                let state = self.hosts.entry(host.to_string()).or_default();
                let count = state.failures.map_or(0, |f| f.count).saturating_add(1);
                state.failures = Some(Failures {
                    last_at: now,
                    count,
                });
                state.force = false;
                let at = next_renewal_at(validity, state.failures);
                status.next_renewal = Some(at);
                status.error = Some(failed_message(&e, at));
                state.last_error = Some(e);
                status
            }
        }
    }

    /// Orders `host`'s certificate with the account for `config`, opening it first if needed.
    async fn order(
        &mut self,
        host: &str,
        config: &AcmeConfig,
        challenges: &impl Challenges,
    ) -> Result<Issued, AcmeError> {
        if self.acme.as_ref().is_none_or(|c| c.config() != config) {
            self.acme = None;
            self.acme = Some(AcmeClient::new(&self.acme_dir, config).await?);
        }
        let client = self.acme.as_ref().expect("opened above");
        client.order(&[host.to_string()], challenges).await
    }
}

fn failed_message(error: &str, retry_at: u64) -> String {
    format!(
        "ordering over ACME failed: {error}; next attempt at {}",
        format_time(retry_at)
    )
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
