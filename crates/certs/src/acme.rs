//! Ordering certificates over ACME (RFC 8555) with `instant-acme`: one account per ship,
//! HTTP-01 or TLS-ALPN-01 challenges answered by the caller's proxy through [`Challenges`],
//! results stored atomically with mode 0600. Every request to the ACME server is bounded by
//! a timeout, and every error says what the server answered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::files::{private_dir, remove, write_private, FileError};
use crate::pem::{load, CertError, LoadedCert};
use crate::resolve::file_stem;

/// Let's Encrypt's production directory: the default when HQ names none.
pub const LETS_ENCRYPT: &str = instant_acme::LetsEncrypt::Production.url();
/// How long one request to the ACME server may take, connecting and reading included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the caller may take to publish challenges.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to validate the challenges.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to issue the certificate once the order is finalized.
pub const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(90);

/// A challenge type the ship can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// `http-01`: `GET http://HOST/.well-known/acme-challenge/TOKEN` on port 80.
    #[serde(rename = "http-01")]
    Http01,
    /// `tls-alpn-01`: a TLS handshake to HOST with ALPN `acme-tls/1` on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    /// The ACME name, e.g. `http-01`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn reach(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "port 80",
            ChallengeKind::TlsAlpn01 => "port 443",
        }
    }
}

/// How this ship orders certificates (from HQ's `.starphleet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// `STARPHLEET_ACME_EMAIL`: the account's contact.
    pub email: String,
    /// `STARPHLEET_ACME_DIRECTORY`: the ACME directory URL.
    pub directory: String,
    /// The challenge types to try, in order; the next is tried when the server could not
    /// validate the previous one.
    pub challenges: Vec<ChallengeKind>,
    /// Roots trusted for the ACME server's HTTPS besides the system's (a private or test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl AcmeConfig {
    /// A configuration for `email` at `directory` (default [`LETS_ENCRYPT`]), trying HTTP-01
    /// first, then TLS-ALPN-01.
    pub fn new(email: impl Into<String>, directory: Option<String>) -> Self {
        AcmeConfig {
            email: email.into(),
            directory: directory.unwrap_or_else(|| LETS_ENCRYPT.to_string()),
            challenges: vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            extra_roots: Vec::new(),
        }
    }
}

/// Challenges the proxy must answer while an order is validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChallengeSet {
    /// HTTP-01: token → key authorization, the body of
    /// `GET /.well-known/acme-challenge/<token>` (any host, port 80, `text/plain`).
    pub http01: BTreeMap<String, String>,
    /// TLS-ALPN-01: `(host, cert, key)` PEM files to present to a client that asks for
    /// `host` by SNI with ALPN `acme-tls/1` (and then close the connection). Load them with
    /// `CertifiedKey::new`, not `CertifiedKey::from_der`: the latter's key check parses the
    /// certificate with webpki, which refuses the critical acmeIdentifier extension.
    pub tls_alpn01: Vec<(String, PathBuf, PathBuf)>,
}

impl ChallengeSet {
    /// Whether there is nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.http01.is_empty() && self.tls_alpn01.is_empty()
    }
}

/// The caller's side of a challenge: putting answers in front of the ACME server.
pub trait Challenges: Send + Sync {
    /// Serve these challenges now; returns once the proxy answers them. An error says why not.
    fn publish(&self, c: &ChallengeSet) -> impl Future<Output = Result<(), String>> + Send;
    /// They are no longer needed.
    fn withdraw(&self, c: &ChallengeSet) -> impl Future<Output = ()> + Send;
}

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A file under the ACME folder could not be written or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// `account.json` is not what the ship writes.
    #[error(
        "{} is not an ACME account stored by the ship ({detail}); move it away and the ship creates a new account",
        path.display()
    )]
    AccountFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No trusted roots to check the ACME server's HTTPS with.
    #[error("cannot check the ACME server's HTTPS: {0}")]
    Trust(String),
    /// The ACME server refused a request (`detail` is its answer), or did not answer in time.
    #[error("{during} at the ACME server {directory} failed: {detail}")]
    Server {
        /// Its directory URL.
        directory: String,
        /// What the ship was doing.
        during: &'static str,
        /// What it answered (problem detail and type), or why there was no answer.
        detail: String,
    },
    /// ACME cannot order for this host.
    #[error("cannot order a certificate for {host:?} over ACME: {why}")]
    Host {
        /// The host.
        host: String,
        /// Why not.
        why: &'static str,
    },
    /// The server offers none of the configured challenge types.
    #[error("the ACME server offers no {kind} challenge for {host} (it offers {offered})")]
    NotOffered {
        /// The host.
        host: String,
        /// The type wanted.
        kind: &'static str,
        /// The types offered.
        offered: String,
    },
    /// The caller could not publish the challenges.
    #[error("the proxy did not take the ACME challenges: {0}")]
    Publish(String),
    /// The server could not validate control of the hosts, by any configured challenge type.
    #[error(
        "the ACME server could not validate {hosts}: {}; check that {hosts} resolves to this ship \
         and that the ACME server reaches it on that port",
        attempts.join("; ")
    )]
    NotValidated {
        /// The hosts ordered.
        hosts: String,
        /// One line per challenge type tried: what the server answered, and what to check.
        attempts: Vec<String>,
    },
    /// What the server issued cannot be served.
    #[error("the ACME server issued a certificate that cannot be served: {0}")]
    Issued(CertError),
    /// Generating a key, CSR or challenge certificate failed.
    #[error("generating a key or certificate request: {0}")]
    Key(String),
}

/// A certificate the ACME server issued, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// `<acme>/NAME.crt`: the chain.
    pub cert_path: PathBuf,
    /// `<acme>/NAME.key`: its key.
    pub key_path: PathBuf,
    /// What it is.
    pub cert: LoadedCert,
}

/// `account.json`: the ship's ACME account for one directory.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    email: String,
    credentials: serde_json::Value,
}

/// A ship's ACME account, ready to order.
pub struct AcmeClient {
    dir: PathBuf,
    config: AcmeConfig,
    account: Account,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("dir", &self.dir)
            .field("directory", &self.config.directory)
            .field("account", &self.account.id())
            .finish()
    }
}

impl AcmeClient {
    /// Opens the account stored in `acme_dir/account.json`, or creates one at the server
    /// (once per ship and directory) and stores it there with mode 0600. A changed email is
    /// sent to the server.
    pub async fn new(acme_dir: &Path, config: &AcmeConfig) -> Result<Self, AcmeError> {
        private_dir(acme_dir)?;
        let http = timed_client(&config.extra_roots)?;
        let path = acme_dir.join("account.json");
        let directory = config.directory.clone();
        let server = |during| {
            let directory = directory.clone();
            move |e: instant_acme::Error| AcmeError::Server {
                directory,
                during,
                detail: acme_detail(&e),
            }
        };
        let contact = format!("mailto:{}", config.email);
        let stored =
            match std::fs::read(&path) {
                Ok(bytes) => Some(serde_json::from_slice::<StoredAccount>(&bytes).map_err(
                    |e| AcmeError::AccountFile {
                        path: path.clone(),
                        detail: e.to_string(),
                    },
                )?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(FileError::new("reading", &path, e).into()),
            };
        let account = match stored {
            Some(stored) if stored.directory == config.directory => {
                let credentials: AccountCredentials =
                    serde_json::from_value(stored.credentials.clone()).map_err(|e| {
                        AcmeError::AccountFile {
                            path: path.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                let account = Account::builder_with_http(Box::new(http))
                    .from_credentials(credentials)
                    .await
                    .map_err(server("reading the directory"))?;
                if stored.email != config.email {
                    account
                        .update_contacts(&[contact.as_str()])
                        .await
                        .map_err(server("updating the account's email"))?;
                    store_account(&path, config, stored.credentials)?;
                }
                account
            }
            _ => {
                let (account, credentials) = Account::builder_with_http(Box::new(http))
                    .create(
                        &NewAccount {
                            contact: &[contact.as_str()],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(server("creating the account"))?;
                let credentials = serde_json::to_value(&credentials)
                    .expect("account credentials serialize to JSON");
                store_account(&path, config, credentials)?;
                tracing::info!(directory = %config.directory, account = account.id(), "created an ACME account");
                account
            }
        };
        Ok(AcmeClient {
            dir: acme_dir.to_path_buf(),
            config: config.clone(),
            account,
        })
    }

    /// The configuration this client was opened with.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// Orders one certificate for `hosts` (the first names the files), answering the
    /// challenges through `challenges`, trying each configured challenge type until one
    /// validates, and stores it as `<acme>/NAME.crt|key` (mode 0600, atomic renames, the
    /// key first).
    pub async fn order(
        &self,
        hosts: &[String],
        challenges: &impl Challenges,
    ) -> Result<Issued, AcmeError> {
        let Some(first) = hosts.first() else {
            return Err(AcmeError::Host {
                host: String::new(),
                why: "no host given",
            });
        };
        for host in hosts {
            if file_stem(host).is_none() {
                return Err(AcmeError::Host {
                    host: host.clone(),
                    why: "not a host name",
                });
            }
            if host.starts_with("*.") {
                return Err(AcmeError::Host {
                    host: host.clone(),
                    why: "wildcards need DNS-01, which the ship does not answer; put the certificate on the ship or in HQ",
                });
            }
        }
        let stem = file_stem(first).expect("checked above");
        let mut attempts = Vec::new();
        for &kind in &self.config.challenges {
            match self.order_by(hosts, kind, challenges).await {
                Ok((chain, key)) => {
                    let cert = load(chain.as_bytes(), key.as_bytes()).map_err(AcmeError::Issued)?;
                    if let Some(host) = hosts.iter().find(|h| !cert.covers(h)) {
                        return Err(AcmeError::Issued(CertError::WrongNames {
                            host: host.clone(),
                            names: cert.names,
                        }));
                    }
                    let key_path = self.dir.join(format!("{stem}.key"));
                    let cert_path = self.dir.join(format!("{stem}.crt"));
                    write_private(&key_path, key.as_bytes())?;
                    write_private(&cert_path, chain.as_bytes())?;
                    return Ok(Issued {
                        cert_path,
                        key_path,
                        cert,
                    });
                }
                Err(Attempt::Invalid(why)) => {
                    tracing::warn!(hosts = ?hosts, challenge = kind.as_str(), "{why}");
                    attempts.push(format!("by {} on {}: {why}", kind.as_str(), kind.reach()));
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(AcmeError::NotValidated {
            hosts: hosts.join(", "),
            attempts,
        })
    }

    fn server(&self, during: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError + '_ {
        move |e| AcmeError::Server {
            directory: self.config.directory.clone(),
            during,
            detail: acme_detail(&e),
        }
    }

    /// One order answered by one challenge type: the chain and key PEM.
    async fn order_by(
        &self,
        hosts: &[String],
        kind: ChallengeKind,
        challenges: &impl Challenges,
    ) -> Result<(String, String), Attempt> {
        let ids: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(self.server("creating the order"))?;

        let mut set = ChallengeSet::default();
        let mut alpn_files = Vec::new();
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(self.server("fetching an authorization"))?;
                let host = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    // Validated for an earlier order and still fresh: nothing to prove.
                    AuthorizationStatus::Valid => continue,
                    status => {
                        return Err(Attempt::Invalid(format!(
                            "the authorization for {host} is {status:?}"
                        )))
                    }
                }
                let offered = authz
                    .challenges
                    .iter()
                    .map(|c| challenge_name(&c.r#type))
                    .collect::<Vec<_>>()
                    .join(", ");
                let Some(challenge) = authz.challenge(kind.acme_type()) else {
                    return Err(AcmeError::NotOffered {
                        host,
                        kind: kind.as_str(),
                        offered,
                    }
                    .into());
                };
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        set.http01
                            .insert(challenge.token.clone(), key_auth.as_str().to_string());
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let (crt, key) = alpn_certificate(&host, key_auth.digest().as_ref())?;
                        let stem = file_stem(&host).unwrap_or_else(|| "host".into());
                        let dir = self.dir.join("challenges");
                        let crt_path = dir.join(format!("{stem}.crt"));
                        let key_path = dir.join(format!("{stem}.key"));
                        // Remembered before writing, so a half-written pair is removed too.
                        alpn_files.push(crt_path.clone());
                        alpn_files.push(key_path.clone());
                        write_private(&key_path, key.as_bytes()).map_err(AcmeError::from)?;
                        write_private(&crt_path, crt.as_bytes()).map_err(AcmeError::from)?;
                        set.tls_alpn01.push((host, crt_path, key_path));
                    }
                }
            }
        }

        let validated = if set.is_empty() {
            Ok(())
        } else {
            match tokio::time::timeout(PUBLISH_TIMEOUT, challenges.publish(&set)).await {
                Ok(Ok(())) => self.validate(&mut order, kind).await,
                Ok(Err(e)) => Err(AcmeError::Publish(e).into()),
                Err(_) => Err(AcmeError::Publish(format!(
                    "no answer within {} s",
                    PUBLISH_TIMEOUT.as_secs()
                ))
                .into()),
            }
        };
        // Withdrawn whatever happened: a stale challenge must not stay served.
        if !set.is_empty() {
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, challenges.withdraw(&set)).await;
        }
        for f in &alpn_files {
            if let Err(e) = remove(f) {
                tracing::warn!("{e}");
            }
        }
        validated?;

        let key = KeyPair::generate().map_err(|e| AcmeError::Key(e.to_string()))?;
        let mut params =
            CertificateParams::new(hosts.to_vec()).map_err(|e| AcmeError::Key(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(self.server("finalizing the order"))?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(ISSUANCE_TIMEOUT))
            .await
            .map_err(self.server("waiting for the certificate"))?;
        Ok((chain, key.serialize_pem()))
    }

    /// Tells the server the challenges are ready and waits until it validated them.
    async fn validate(
        &self,
        order: &mut instant_acme::Order,
        kind: ChallengeKind,
    ) -> Result<(), Attempt> {
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(self.server("fetching an authorization"))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let host = authz.identifier().to_string();
                let Some(mut challenge) = authz.challenge(kind.acme_type()) else {
                    return Err(Attempt::Invalid(format!(
                        "the {} challenge for {host} disappeared",
                        kind.as_str()
                    )));
                };
                challenge
                    .set_ready()
                    .await
                    .map_err(self.server("starting the validation"))?;
            }
        }
        let status = match order
            .poll_ready(&RetryPolicy::new().timeout(VALIDATION_TIMEOUT))
            .await
        {
            Ok(status) => status,
            Err(instant_acme::Error::Api(problem)) => {
                return Err(Attempt::Invalid(problem_detail(&problem)))
            }
            Err(e) => return Err(self.server("waiting for the validation")(e).into()),
        };
        if status == OrderStatus::Ready {
            return Ok(());
        }
        // Say what the server found, host by host.
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(self.server("fetching an authorization"))?;
            let state = authz
                .refresh()
                .await
                .map_err(self.server("fetching an authorization"))?;
            let host = state.identifier().to_string();
            let errors: Vec<String> = state
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref().map(problem_detail))
                .collect();
            if !errors.is_empty() {
                why.push(format!("{host}: {}", errors.join(", ")));
            } else if state.status != AuthorizationStatus::Valid {
                why.push(format!("{host}: the authorization is {:?}", state.status));
            }
        }
        if why.is_empty() {
            why.push(format!("the order is {status:?}"));
        }
        Err(Attempt::Invalid(why.join("; ")))
    }
}

/// The outcome of one failed try with one challenge type.
enum Attempt {
    /// The server could not validate: the next challenge type may do better.
    Invalid(String),
    /// Anything else ends the order.
    Failed(AcmeError),
}

impl From<AcmeError> for Attempt {
    fn from(e: AcmeError) -> Self {
        Attempt::Failed(e)
    }
}

fn store_account(
    path: &Path,
    config: &AcmeConfig,
    credentials: serde_json::Value,
) -> Result<(), FileError> {
    let stored = StoredAccount {
        directory: config.directory.clone(),
        email: config.email.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).expect("an account serializes to JSON");
    write_private(path, &json).map(|_| ())
}

/// A self-signed certificate for `host` carrying the acmeIdentifier extension (RFC 8737).
fn alpn_certificate(host: &str, digest: &[u8]) -> Result<(String, String), AcmeError> {
    let key_err = |e: rcgen::Error| AcmeError::Key(e.to_string());
    let mut params = CertificateParams::new(vec![host.to_string()]).map_err(key_err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(key_err)?;
    let cert = params.self_signed(&key).map_err(key_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn challenge_name(t: &ChallengeType) -> String {
    match t {
        ChallengeType::Http01 => "http-01".into(),
        ChallengeType::Dns01 => "dns-01".into(),
        ChallengeType::TlsAlpn01 => "tls-alpn-01".into(),
        ChallengeType::DeviceAttest01 => "device-attest-01".into(),
        ChallengeType::Unknown(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// An RFC 7807 problem as one line: its detail, its type, and its subproblems.
fn problem_detail(p: &Problem) -> String {
    let mut out = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        let _ = write!(out, " ({t})");
    }
    for s in &p.subproblems {
        let _ = write!(out, "; {s}");
    }
    out
}

/// An instant-acme error as one line, with its causes.
fn acme_detail(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem_detail(p),
        e => error_chain(e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

/// An HTTPS client for instant-acme whose every request, reading the body included, ends
/// within [`REQUEST_TIMEOUT`].
struct TimedClient(HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for TimedClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(req);
        Box::pin(async move {
            let exchange = async {
                let rsp = response.await.map_err(|e| error_chain(&e))?;
                let (parts, body) = rsp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| error_chain(&e))?
                    .to_bytes();
                Ok::<_, String>(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(rsp)) => Ok(rsp),
                Ok(Err(e)) => Err(instant_acme::Error::Other(e.into())),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
            }
        })
    }
}

/// A client trusting the system's roots (so an operator's private ACME CA installed there
/// works) and `extra_roots`, with ring named explicitly as the crypto provider.
fn timed_client(extra_roots: &[CertificateDer<'static>]) -> Result<TimedClient, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| AcmeError::Trust(format!("an extra root certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(AcmeError::Trust(
            "the system has no root certificates (install the ca-certificates package)".into(),
        ));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AcmeError::Trust(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REQUEST_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(TimedClient(
        HyperClient::builder(TokioExecutor::new()).build(https),
    ))
}
