//! TLS on public ports: certificates loaded from the table's PEM files, picked by SNI, swapped
//! for new handshakes without touching open connections, and ACME TLS-ALPN-01 (RFC 8737).
//!
//! rustls with the aws-lc-rs provider: the same BoringSSL-derived primitives nginx gets from
//! OpenSSL (assembly AES-GCM, P-256 and X25519), and the provider rustls itself defaults to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertFiles, RouteTable};

/// The ALPN protocol of TLS-ALPN-01 challenges.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate ready to serve, with the names it was listed for.
pub(crate) struct Served {
    key: Arc<CertifiedKey>,
    hosts: Box<[String]>,
}

impl Served {
    /// Whether this certificate was listed for `host` (exactly, or by a wildcard).
    pub fn covers(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| host_matches(h, host))
    }
}

/// Whether a listed name (`a.test`, `*.test`) matches a host name.
fn host_matches(listed: &str, host: &str) -> bool {
    match listed.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => listed == host,
    }
}

/// The certificates in force, by the host names they are listed for.
#[derive(Default)]
pub(crate) struct Store {
    exact: HashMap<String, Arc<Served>>,
    wildcard: HashMap<String, Arc<Served>>,
    /// TLS-ALPN-01: a whole config per host, offering only `acme-tls/1`.
    acme: HashMap<String, Arc<ServerConfig>>,
}

impl Store {
    /// The certificate for `sni`: listed exactly, else by a wildcard.
    pub fn pick(&self, sni: &str) -> Option<&Arc<Served>> {
        self.exact.get(sni).or_else(|| {
            let (_, parent) = sni.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// The TLS-ALPN-01 config for `sni`, if a challenge is pending for it.
    pub fn acme(&self, sni: &str) -> Option<Arc<ServerConfig>> {
        self.acme.get(sni).cloned()
    }

    /// A previous certificate for `host`, as listed.
    fn listed(&self, host: &str) -> Option<&Arc<Served>> {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.get(parent),
            None => self.exact.get(host),
        }
    }

    fn insert(&mut self, host: &str, served: Arc<Served>) {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.insert(parent.to_owned(), served),
            None => self.exact.insert(host.to_owned(), served),
        };
    }
}

/// The proxy's TLS state: one server config whose certificate resolver reads the store in
/// force, so a new table's certificates reach new handshakes at once.
pub(crate) struct Tls {
    store: Arc<ArcSwap<Store>>,
    config: Arc<ServerConfig>,
}

impl Tls {
    /// No certificates yet.
    pub fn new() -> Self {
        let store = Arc::new(ArcSwap::from_pointee(Store::default()));
        let mut config = server_config()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(store.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Tls {
            store,
            config: Arc::new(config),
        }
    }

    /// The config of ordinary handshakes.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificates in force.
    pub fn store(&self) -> arc_swap::Guard<Arc<Store>> {
        self.store.load()
    }

    /// Puts a table's certificates in force: `loaded` from [`load`], in the order of the
    /// table's `certs` then `acme.tls_alpn01`. A host whose files failed keeps its previous
    /// certificate and is reported in the returned errors; hosts the table no longer lists go.
    pub fn install(&self, table: &RouteTable, loaded: Loaded) -> BTreeMap<String, String> {
        let old = self.store.load();
        let mut store = Store::default();
        let mut errors = BTreeMap::new();
        for (files, result) in table.certs.iter().zip(loaded.certs) {
            match result {
                Ok(key) => {
                    let served = Arc::new(Served {
                        key,
                        hosts: files.hosts.clone().into_boxed_slice(),
                    });
                    for host in &files.hosts {
                        store.insert(host, served.clone());
                    }
                }
                Err(err) => {
                    for host in &files.hosts {
                        if let Some(previous) = old.listed(host) {
                            store.insert(host, previous.clone());
                        }
                        errors.insert(host.clone(), err.clone());
                    }
                }
            }
        }
        for (files, result) in table.acme.tls_alpn01.iter().zip(loaded.acme) {
            match result {
                Ok(config) => {
                    for host in &files.hosts {
                        store.acme.insert(host.clone(), config.clone());
                    }
                }
                Err(err) => {
                    for host in &files.hosts {
                        errors.insert(host.clone(), format!("TLS-ALPN-01 challenge: {err}"));
                    }
                }
            }
        }
        self.store.store(Arc::new(store));
        errors
    }
}

/// A table's certificate files, read and parsed (before the table is put in force, outside any
/// lock): each `Ok` or why not.
pub(crate) struct Loaded {
    certs: Vec<Result<Arc<CertifiedKey>, String>>,
    acme: Vec<Result<Arc<ServerConfig>, String>>,
}

/// Reads and parses every certificate the table names.
pub(crate) fn load(table: &RouteTable) -> Loaded {
    Loaded {
        certs: table.certs.iter().map(|f| key(f).map(Arc::new)).collect(),
        acme: table
            .acme
            .tls_alpn01
            .iter()
            .map(|f| {
                let key = key(f)?;
                let mut config = server_config()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(Fixed(Arc::new(key))));
                config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                Ok(Arc::new(config))
            })
            .collect(),
    }
}

fn server_config() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
}

/// A certificate chain and its key, checked to belong together.
fn key(files: &CertFiles) -> Result<CertifiedKey, String> {
    let cert_path = files.cert_path.display();
    let key_path = files.key_path.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading the certificate {cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_path} holds no certificate (PEM `BEGIN CERTIFICATE` blocks, leaf first)"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|e| format!("reading the private key {key_path}: {e}"))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| format!("{key_path} is not a usable key for {cert_path}: {e}"))
}

/// Picks the certificate by SNI from the store in force.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<Store>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let store = self.0.load();
        let served = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            store.pick(&sni.to_ascii_lowercase()).cloned()
        } else {
            store.pick(sni).cloned()
        };
        served.map(|s| s.key.clone())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("acme", &self.acme.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Always the one certificate (a TLS-ALPN-01 challenge's).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_exactly_one_label() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(host_matches("a.test", "a.test"));
        assert!(!host_matches("a.test", "b.test"));
    }
}
