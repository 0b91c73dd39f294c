//! Loading a certificate chain and its key from PEM, and checking them before anything is
//! served: the key must belong to the leaf, the leaf must be valid now and name the host.

use std::time::{Duration, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// What is wrong with a certificate/key pair. Each message says how to fix it; the caller
/// puts the file names in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The certificate file has no `CERTIFICATE` PEM block.
    #[error(
        "the certificate file holds no certificate: it needs PEM blocks `-----BEGIN CERTIFICATE-----`, \
         the host's certificate first, then the intermediates"
    )]
    NoCertificate,
    /// The certificate file holds a private key (and no certificate).
    #[error(
        "the certificate file holds a private key, not a certificate: are the .crt and .key files swapped?"
    )]
    KeyInCertificateFile,
    /// The key file has no private key PEM block.
    #[error(
        "the key file holds no private key: it needs one PEM block `-----BEGIN PRIVATE KEY-----` \
         (PKCS#8), `-----BEGIN EC PRIVATE KEY-----` (SEC1) or `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1), \
         unencrypted"
    )]
    NoKey,
    /// A PEM block is damaged (bad base64, missing END line, …).
    #[error("the {file} file is not valid PEM ({detail}); re-export it as PEM text")]
    BadPem {
        /// `certificate` or `key`.
        file: &'static str,
        /// What the PEM parser said.
        detail: String,
    },
    /// A certificate in the chain is not X.509.
    #[error(
        "certificate #{index} in the certificate file is not a valid X.509 certificate ({detail})"
    )]
    BadCertificate {
        /// 1-based position in the file.
        index: usize,
        /// What the parser said.
        detail: String,
    },
    /// The key is of a kind or size TLS cannot use.
    #[error(
        "the private key cannot be used for TLS ({detail}); use an ECDSA P-256/P-384, Ed25519 or RSA (2048 bits or more) key"
    )]
    UnusableKey {
        /// What rustls said.
        detail: String,
    },
    /// The key is not the leaf certificate's.
    #[error(
        "the key does not match the certificate: the key file must hold the private key of the first \
         certificate in the certificate file"
    )]
    KeyMismatch,
    /// The leaf's validity ended.
    #[error("the certificate expired on {}; renew it and replace both files", format_time(*not_after))]
    Expired {
        /// Its notAfter, Unix seconds.
        not_after: u64,
    },
    /// The leaf is not valid yet.
    #[error("the certificate is not valid before {}; check the ship's clock or the certificate", format_time(*not_before))]
    NotYetValid {
        /// Its notBefore, Unix seconds.
        not_before: u64,
    },
    /// The leaf does not name the host.
    #[error(
        "the certificate covers {} but not {host}; get one that names {host}",
        list_names(names)
    )]
    WrongNames {
        /// The host it was meant for.
        host: String,
        /// The DNS names it covers.
        names: Vec<String>,
    },
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        "no DNS name (clients ignore the Common Name; put the host in subjectAltName)".to_string()
    } else {
        names.join(", ")
    }
}

/// A Unix time as RFC 3339 UTC, e.g. `2026-03-01T12:00:00Z`.
pub fn format_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// A parsed, internally consistent certificate chain (its key matched the leaf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCert {
    /// The chain as served: the leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notBefore, Unix seconds.
    pub not_before: u64,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: u64,
    /// The DNS names in the leaf's subjectAltName, lowercase.
    pub names: Vec<String>,
    /// SHA-256 of the leaf (DER), lowercase hex: changes whenever the certificate does.
    pub fingerprint: String,
}

impl LoadedCert {
    /// Whether the leaf names `host` (exactly, or through a `*.` wildcard one label deep).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|name| covers(name, host))
    }

    /// Checks that the certificate can serve `host` at `now` (Unix seconds).
    pub fn check(&self, host: &str, now: u64) -> Result<(), CertError> {
        if now >= self.not_after {
            return Err(CertError::Expired {
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.not_before,
            });
        }
        if !self.covers(host) {
            return Err(CertError::WrongNames {
                host: host.to_string(),
                names: self.names.clone(),
            });
        }
        Ok(())
    }
}

/// Whether a certificate name (`app.test` or `*.test`) covers `host` (`app.test`, or a
/// wildcard host `*.test`, which only a wildcard name covers). Case and a trailing dot are
/// ignored; a wildcard matches exactly one label, as browsers do.
pub fn covers(name: &str, host: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if name == host {
        return true;
    }
    match name.strip_prefix("*.") {
        Some(parent) if !host.starts_with("*.") => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        _ => false,
    }
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, SEC1 or
/// PKCS#1) and checks that the key belongs to the leaf.
pub fn load(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            file: "certificate",
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(if PrivateKeyDer::from_pem_slice(cert_pem).is_ok() {
            CertError::KeyInCertificateFile
        } else {
            CertError::NoCertificate
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey,
        e => CertError::BadPem {
            file: "key",
            detail: e.to_string(),
        },
    })?;

    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CertError::BadCertificate {
                index: i + 1,
                detail: e.to_string(),
            })?;
        if i == 0 {
            let validity = cert.validity();
            let names = match cert.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect(),
                Ok(None) => Vec::new(),
                Err(e) => {
                    return Err(CertError::BadCertificate {
                        index: 1,
                        detail: format!("subjectAltName: {e}"),
                    })
                }
            };
            leaf = Some((
                validity.not_before.timestamp().max(0) as u64,
                validity.not_after.timestamp().max(0) as u64,
                names,
            ));
        }
    }
    let (not_before, not_after, names) = leaf.expect("the chain is not empty");

    match CertifiedKey::from_der(chain.clone(), key, &default_provider()) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(CertError::KeyMismatch),
        // The key check parses the leaf with webpki, which is stricter than x509-parser.
        Err(rustls::Error::InvalidCertificate(e)) => {
            return Err(CertError::BadCertificate {
                index: 1,
                detail: format!("{e:?}"),
            })
        }
        Err(e) => {
            return Err(CertError::UnusableKey {
                detail: e.to_string(),
            })
        }
    }
    let fingerprint = hex::encode(Sha256::digest(chain[0].as_ref()));
    Ok(LoadedCert {
        chain,
        not_before,
        not_after,
        names,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_hosts_like_browsers_do() {
        let cases = [
            ("app.test", "app.test", true),
            ("APP.test", "app.TEST.", true),
            ("app.test", "api.test", false),
            ("*.test", "app.test", true),
            ("*.test", "a.b.test", false),
            ("*.test", "test", false),
            ("*.test", ".test", false),
            ("*.example.com", "*.example.com", true),
            ("app.example.com", "*.example.com", false),
            ("*.com", "*.example.com", false),
        ];
        for (name, host, want) in cases {
            assert_eq!(covers(name, host), want, "{name} covers {host}");
        }
    }

    #[test]
    fn messages_say_what_is_covered_and_when_it_expired() {
        let e = CertError::WrongNames {
            host: "app.test".into(),
            names: vec!["a.test".into(), "b.test".into()],
        };
        assert_eq!(
            e.to_string(),
            "the certificate covers a.test, b.test but not app.test; get one that names app.test"
        );
        let e = CertError::Expired {
            not_after: 1_767_225_600,
        };
        assert_eq!(
            e.to_string(),
            "the certificate expired on 2026-01-01T00:00:00Z; renew it and replace both files"
        );
    }
}
