//! TLS certificates for `publish --tls --host NAME`: for each host the first valid of
//!
//! 1. `<state-dir>/certs/NAME.crt|key` on the ship,
//! 2. `certs/NAME.crt|key` in HQ (copied into `<state-dir>/certs/hq/` for the proxy),
//! 3. a certificate this ship ordered over ACME (`<state-dir>/acme/NAME.crt|key`), renewed
//!    30 days before it expires,
//!
//! with wildcard hosts (`*.example.com`) in files named `_wildcard.example.com.crt|key`.
//!
//! The ship runs one [`CertManager`] in one task; ACME challenges reach its proxy through
//! the [`Challenges`] trait, so this crate knows nothing of the proxy. [`CertStatus`] goes
//! into `status`, [`metrics`] into `/metrics`.

#![warn(missing_docs)]

pub mod acme;
mod files;
pub mod manager;
pub mod metrics;
pub mod pem;
pub mod renewal;
pub mod resolve;

pub use acme::{
    AcmeClient, AcmeConfig, AcmeError, ChallengeKind, ChallengeSet, Challenges, Issued,
    LETS_ENCRYPT,
};
pub use files::FileError;
pub use manager::{wake_at, CertManager, CertPaths, CertStatus};
pub use pem::{covers, load, CertError, LoadedCert};
pub use renewal::{next_renewal_at, renewal, Failures, Renewal, Validity};
pub use resolve::{
    candidate_hosts, file_stem, hq_candidates, missing_help, resolve, HqCert, Resolved, Source,
};
