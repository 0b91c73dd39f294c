//! TLS certificates committed to headquarters: `certs/NAME.crt` + `certs/NAME.key`.
//!
//! Only names, kinds and sizes are looked at here; the ship reads the contents with
//! [`crate::read_hq_bytes`]. Every key found is also a warning: it is a secret in git.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{quote, Diagnostic, Severity};
use crate::hq_file::{kind_at, open_subdir, size_beneath, Kind, OpenDirError};
use crate::values::check_host;

/// The folder of certificates at the HQ root.
pub const CERTS_DIR: &str = "certs";

/// A certificate and its key in HQ, for one host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HqCert {
    /// The host it serves, lower case: `app.example.com`, or `*.example.com` for
    /// `_wildcard.example.com.crt`.
    pub host: String,
    /// The certificate chain (PEM), relative to HQ: `certs/NAME.crt`.
    pub crt: PathBuf,
    /// The private key (PEM), relative to HQ: `certs/NAME.key`.
    pub key: PathBuf,
}

/// The file-name form of `host`: `*.example.com` is written `_wildcard.example.com`.
pub(crate) fn file_stem(host: &str) -> String {
    match host.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => host.to_string(),
    }
}

/// The host a file stem names: `_wildcard.example.com` is `*.example.com`.
fn stem_host(stem: &str) -> String {
    match stem.strip_prefix("_wildcard.") {
        Some(rest) => format!("*.{rest}"),
        None => stem.to_string(),
    }
}

/// Whether a certificate for `cert_host` serves `host` (exact, or a wildcard for one label).
pub(crate) fn covers(cert_host: &str, host: &str) -> bool {
    if cert_host == host {
        return true;
    }
    match (cert_host.strip_prefix("*."), host.split_once('.')) {
        (Some(domain), Some((label, rest))) => {
            !host.starts_with("*.") && label != "*" && rest == domain
        }
        _ => false,
    }
}

/// How the pair of one name was found.
#[derive(Default)]
struct Pair {
    crt: Option<Found>,
    key: Option<Found>,
}

/// One `.crt` or `.key` entry: usable, or already reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Ok,
    Broken,
}

/// What `certs/` holds.
#[derive(Default)]
pub(crate) struct Certs {
    /// Complete, valid pairs, sorted by host.
    pub certs: Vec<HqCert>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// Look at `certs/` under the HQ root open at `root`. Symlinks are left to the walk for
/// orders, which reports every symlink in HQ; here they only count as broken entries.
pub(crate) fn load_certs(root: BorrowedFd<'_>) -> Certs {
    let mut out = Certs::default();
    let rel_dir = Path::new(CERTS_DIR);
    let fd = match open_subdir(root, OsStr::new(CERTS_DIR), rel_dir) {
        Ok(fd) => fd,
        Err(OpenDirError::Symlink(_)) | Err(OpenDirError::Io(Errno::ENOENT)) => return out,
        Err(OpenDirError::NotADir) => {
            out.errors.push(
                Diagnostic::file(rel_dir, "`certs` is not a folder").with_help(
                    "`certs/` holds TLS certificates as `certs/NAME.crt` and `certs/NAME.key` \
                     pairs; rename this file",
                ),
            );
            return out;
        }
        Err(OpenDirError::Io(e)) => {
            out.errors.push(Diagnostic::file(
                rel_dir,
                format!(
                    "cannot read headquarters folder: {}",
                    std::io::Error::from(e)
                ),
            ));
            return out;
        }
    };
    let mut dir = match Dir::from_fd(fd) {
        Ok(dir) => dir,
        Err(e) => {
            out.errors.push(Diagnostic::file(
                rel_dir,
                format!(
                    "cannot read headquarters folder: {}",
                    std::io::Error::from(e)
                ),
            ));
            return out;
        }
    };
    let entries = match crate::headquarters::list(&mut dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.errors.push(Diagnostic::file(
                rel_dir,
                format!(
                    "cannot read headquarters folder: {}",
                    std::io::Error::from(e)
                ),
            ));
            return out;
        }
    };
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for (name, _) in entries {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let (stem, is_key) = if let Some(stem) = name.strip_suffix(".crt") {
            (stem, false)
        } else if let Some(stem) = name.strip_suffix(".key") {
            (stem, true)
        } else {
            continue;
        };
        let rel = rel_dir.join(name);
        let host = stem_host(stem);
        let mut found = Found::Ok;
        match check_host(&host) {
            Ok(h) if h == host && !stem.starts_with("*") => {}
            _ => {
                found = Found::Broken;
                out.errors.push(
                    Diagnostic::file(&rel, format!("{} does not name a host", quote(name)))
                        .with_help(
                            "name the pair after the host it serves, in lower case: \
                         `certs/app.example.com.crt` and `certs/app.example.com.key`, or \
                         `certs/_wildcard.example.com.crt` and `.key` for `*.example.com`",
                        ),
                );
            }
        }
        match kind_at(dir.as_fd(), OsStr::new(name)) {
            // The walk for orders reports it; do not say it twice.
            Ok(Kind::Symlink) => found = Found::Broken,
            _ => match size_beneath(root, &rel) {
                Ok(Some(0)) => {
                    found = Found::Broken;
                    out.errors.push(
                        Diagnostic::file(&rel, "file is empty")
                            .with_help("commit the PEM file itself, or remove it"),
                    );
                }
                Ok(Some(_)) if is_key => out.warnings.push(key_warning(&rel, &host, stem)),
                Ok(Some(_)) => {}
                // Gone since it was listed.
                Ok(None) => continue,
                Err(d) => {
                    found = Found::Broken;
                    out.errors.push(d);
                }
            },
        }
        let pair = pairs.entry(stem.to_string()).or_default();
        if is_key {
            pair.key = Some(found);
        } else {
            pair.crt = Some(found);
        }
    }
    for (stem, pair) in pairs {
        let crt = rel_dir.join(format!("{stem}.crt"));
        let key = rel_dir.join(format!("{stem}.key"));
        match (pair.crt, pair.key) {
            (Some(Found::Ok), Some(Found::Ok)) => out.certs.push(HqCert {
                host: stem_host(&stem),
                crt,
                key,
            }),
            (Some(_), None) => out.errors.push(
                Diagnostic::file(
                    &crt,
                    format!("certificate without a key: add {}", key.display()),
                )
                .with_help(
                    "a certificate is used only with its private key, named the same with \
                         `.key`; or remove the certificate",
                ),
            ),
            (None, Some(_)) => out.errors.push(
                Diagnostic::file(
                    &key,
                    format!("key without a certificate: add {}", crt.display()),
                )
                .with_help(
                    "a key is used only with its certificate chain, named the same with \
                         `.crt`; or remove the key",
                ),
            ),
            _ => {}
        }
    }
    out.certs.sort_by(|a, b| a.host.cmp(&b.host));
    out
}

/// The warning for a private key committed to HQ.
fn key_warning(rel: &Path, host: &str, stem: &str) -> Diagnostic {
    Diagnostic::file(
        rel,
        format!(
            "a private key is in git; anyone who can read headquarters can impersonate {host} — \
             prefer <state-dir>/certs on each ship or ACME"
        ),
    )
    .with_severity(Severity::Warning)
    .with_help(format!(
        "put `{stem}.crt` and `{stem}.key` in `<state-dir>/certs/` on each ship instead, or set \
         `STARPHLEET_ACME_EMAIL` in `.starphleet` to get certificates from ACME; then remove the \
         key from headquarters and from its git history"
    ))
}
