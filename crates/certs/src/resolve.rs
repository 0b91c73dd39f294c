//! Which certificate serves a host: the first valid one of the ship's own, HQ's, and the one
//! ACME issued; or, when there is none, the three ways to get one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::write_private;
use crate::pem::{load, CertError, LoadedCert};

/// Where a served certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `<state-dir>/certs/NAME.crt|key` on the ship.
    Ship,
    /// `certs/NAME.crt|key` in HQ (served from a copy in `<state-dir>/certs/hq/`).
    Headquarters,
    /// Ordered by this ship over ACME, in `<state-dir>/acme/`.
    Acme,
}

impl Source {
    /// The lowercase name used in status and metrics: `ship`, `headquarters`, `acme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ship => "ship",
            Source::Headquarters => "headquarters",
            Source::Acme => "acme",
        }
    }
}

/// One HQ certificate [`resolve`] may use: `(host, crt, key)`, the files relative to the HQ
/// root, e.g. `("*.example.com", "certs/_wildcard.example.com.crt", "certs/_wildcard.example.com.key")`.
pub type HqCert = (String, PathBuf, PathBuf);

/// A `.crt` file's bytes and its `.key` file's bytes.
type PemPair = (Vec<u8>, Vec<u8>);

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A valid certificate for the host.
    Found {
        /// Where it came from.
        source: Source,
        /// The PEM chain to serve (never inside HQ).
        cert_path: PathBuf,
        /// The PEM key to serve (never inside HQ).
        key_path: PathBuf,
        /// What it is.
        cert: LoadedCert,
        /// Candidates passed over because they were broken (one line each, naming the files).
        problems: Vec<String>,
    },
    /// None of the three sources has a valid certificate.
    Missing {
        /// The three ways to fix it, for `check` and `status`.
        help: String,
        /// Candidates passed over because they were broken.
        problems: Vec<String>,
    },
}

/// The file stem of a host's certificate files: the lowercase host, with a leading `*.` spelt
/// `_wildcard.` (`*.example.com` → `_wildcard.example.com`). `None` if `host` is not a DNS
/// name (so it can never name a path outside the certificate folder).
pub fn file_stem(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (wild, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let labels_ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    labels_ok.then(|| {
        if wild {
            format!("_wildcard.{rest}")
        } else {
            rest.to_string()
        }
    })
}

/// The host a file stem stands for: the inverse of [`file_stem`] (`_wildcard.x` → `*.x`).
fn host_of_name(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match name.strip_prefix("_wildcard.") {
        Some(rest) => format!("*.{rest}"),
        None => name,
    }
}

/// The names whose certificate files can serve `host`, best first: the host itself, then
/// the wildcard one label up (`app.example.com` → `*.example.com`).
pub fn candidate_hosts(host: &str) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut out = vec![host.clone()];
    if !host.starts_with("*.") {
        if let Some((_, parent)) = host.split_once('.') {
            if parent.contains('.') {
                out.push(format!("*.{parent}"));
            }
        }
    }
    out
}

/// The HQ files that could serve `hosts`, as [`resolve`] takes them: for each host and its
/// wildcard, `(host, certs/STEM.crt, certs/STEM.key)`, without duplicates.
pub fn hq_candidates(hosts: &[String]) -> Vec<HqCert> {
    let mut out: Vec<HqCert> = Vec::new();
    for host in hosts {
        for name in candidate_hosts(host) {
            let Some(stem) = file_stem(&name) else {
                continue;
            };
            if out.iter().all(|(h, _, _)| *h != name) {
                out.push((
                    name,
                    PathBuf::from(format!("certs/{stem}.crt")),
                    PathBuf::from(format!("certs/{stem}.key")),
                ));
            }
        }
    }
    out
}

/// What to tell the operator when `host` has no certificate.
pub fn missing_help(host: &str, ship_certs_dir: &Path) -> String {
    let stem = file_stem(host).unwrap_or_else(|| host.to_string());
    let acme = if host.starts_with("*.") {
        "3. ACME cannot be used for a wildcard host (Let's Encrypt issues wildcards only over DNS-01, \
         which the ship does not do): use 1 or 2"
            .to_string()
    } else {
        format!(
            "3. set STARPHLEET_ACME_EMAIL=you@your.domain in headquarters' .starphleet: the ship then orders \
             one itself (optionally from STARPHLEET_ACME_DIRECTORY, default Let's Encrypt); {host} must \
             resolve to this ship and reach it on port 80 or on the TLS port"
        )
    };
    format!(
        "no certificate for {host}; add one of:\n\
         1. {dir}/{stem}.crt and {stem}.key on this ship (PEM, the chain after the certificate in the .crt)\n\
         2. certs/{stem}.crt and certs/{stem}.key in headquarters\n\
         {acme}",
        dir = ship_certs_dir.display()
    )
}

/// Finds the certificate for `host`, first valid wins:
/// 1. `ship_certs_dir/NAME.crt|key` (then the wildcard one label up);
/// 2. the HQ files listed in `hq` (checkout root, `(host, crt, key)` relative paths — see
///    [`hq_candidates`]), read without following symlinks and copied, once validated, to
///    `ship_certs_dir/hq/` with mode 0600 so the proxy never reads HQ;
/// 3. `acme_dir/NAME.crt|key`.
///
/// A candidate that exists but cannot serve `host` at `now` (Unix seconds) is passed over and
/// reported in `problems`.
pub fn resolve(
    host: &str,
    ship_certs_dir: &Path,
    hq: Option<(&Path, &[HqCert])>,
    acme_dir: &Path,
    now: u64,
) -> Resolved {
    let mut problems = Vec::new();
    if file_stem(host).is_none() {
        return Resolved::Missing {
            help: format!(
                "{host:?} is not a host name; name it like app.example.com or *.example.com"
            ),
            problems,
        };
    }
    let names = candidate_hosts(host);
    let judge = |crt: &[u8], key: &[u8]| -> Result<LoadedCert, CertError> {
        let cert = load(crt, key)?;
        cert.check(host, now)?;
        Ok(cert)
    };

    for name in &names {
        let stem = file_stem(name).expect("candidates of a valid host are valid");
        let crt = ship_certs_dir.join(format!("{stem}.crt"));
        let key = ship_certs_dir.join(format!("{stem}.key"));
        let pair = match read_pair(&crt, &key) {
            Ok(Some(pair)) => pair,
            Ok(None) => continue,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        match judge(&pair.0, &pair.1) {
            Ok(cert) => {
                return Resolved::Found {
                    source: Source::Ship,
                    cert_path: crt,
                    key_path: key,
                    cert,
                    problems,
                }
            }
            Err(e) => problems.push(format!("{} + {}: {e}", crt.display(), key.display())),
        }
    }

    if let Some((root, files)) = hq {
        for name in &names {
            for (entry, crt_rel, key_rel) in
                files.iter().filter(|(h, _, _)| host_of_name(h) == *name)
            {
                let what = format!(
                    "headquarters' {} + {}",
                    crt_rel.display(),
                    key_rel.display()
                );
                let read = |rel: &Path| {
                    starphleet_orders::read_hq_bytes(root, rel).map_err(|d| match &d.help {
                        Some(help) => format!("{what}: {}; {help}", d.message),
                        None => format!("{what}: {}", d.message),
                    })
                };
                let pair = match (read(crt_rel), read(key_rel)) {
                    (Ok(None), Ok(None)) => continue,
                    (Ok(Some(c)), Ok(Some(k))) => (c, k),
                    (Err(p), _) | (_, Err(p)) => {
                        problems.push(p);
                        continue;
                    }
                    (Ok(c), Ok(_)) => {
                        let (has, lacks) = if c.is_some() {
                            (crt_rel, key_rel)
                        } else {
                            (key_rel, crt_rel)
                        };
                        problems.push(format!(
                            "headquarters has {} but not {}; add both, or neither",
                            has.display(),
                            lacks.display()
                        ));
                        continue;
                    }
                };
                let cert = match judge(&pair.0, &pair.1) {
                    Ok(cert) => cert,
                    Err(e) => {
                        problems.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let stem = file_stem(&host_of_name(entry)).expect("matched a valid host");
                let copies = ship_certs_dir.join("hq");
                let cert_path = copies.join(format!("{stem}.crt"));
                let key_path = copies.join(format!("{stem}.key"));
                let copied = write_private(&key_path, &pair.1)
                    .and_then(|_| write_private(&cert_path, &pair.0));
                match copied {
                    Ok(_) => {
                        return Resolved::Found {
                            source: Source::Headquarters,
                            cert_path,
                            key_path,
                            cert,
                            problems,
                        }
                    }
                    Err(e) => problems.push(format!("copying {what} for the proxy: {e}")),
                }
            }
        }
    }

    // ACME orders one certificate per host, never a wildcard.
    let stem = file_stem(host).expect("checked above");
    let crt = acme_dir.join(format!("{stem}.crt"));
    let key = acme_dir.join(format!("{stem}.key"));
    match read_pair(&crt, &key) {
        Ok(Some(pair)) => match judge(&pair.0, &pair.1) {
            Ok(cert) => {
                return Resolved::Found {
                    source: Source::Acme,
                    cert_path: crt,
                    key_path: key,
                    cert,
                    problems,
                }
            }
            Err(e) => problems.push(format!("{} + {}: {e}", crt.display(), key.display())),
        },
        Ok(None) => {}
        Err(p) => problems.push(p),
    }

    Resolved::Missing {
        help: missing_help(host, ship_certs_dir),
        problems,
    }
}

/// Reads a `.crt` and its `.key` from the ship's own disk: `Ok(None)` when neither exists,
/// a problem line when one is missing or unreadable.
fn read_pair(crt: &Path, key: &Path) -> Result<Option<PemPair>, String> {
    let read = |p: &Path| match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", p.display())),
    };
    match (read(crt)?, read(key)?) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (Some(_), None) => Err(format!(
            "{} has no {}; add the key beside it, or remove it",
            crt.display(),
            key.display()
        )),
        (None, Some(_)) => Err(format!(
            "{} has no {}; add the certificate beside it, or remove it",
            key.display(),
            crt.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_spell_wildcards_and_refuse_paths() {
        let cases = [
            ("app.test", Some("app.test")),
            ("App.Test.", Some("app.test")),
            ("*.example.com", Some("_wildcard.example.com")),
            ("localhost", Some("localhost")),
            ("../etc/passwd", None),
            ("a/b", None),
            ("", None),
            ("*.", None),
            ("a..b", None),
            ("-a.test", None),
            ("*.*.test", None),
            ("_wildcard.test", None),
        ];
        for (host, want) in cases {
            assert_eq!(file_stem(host).as_deref(), want, "{host:?}");
        }
    }

    #[test]
    fn candidates_are_the_host_then_its_wildcard() {
        assert_eq!(
            candidate_hosts("App.Example.com"),
            ["app.example.com", "*.example.com"]
        );
        assert_eq!(candidate_hosts("example.com"), ["example.com"]);
        assert_eq!(candidate_hosts("*.example.com"), ["*.example.com"]);
        assert_eq!(candidate_hosts("localhost"), ["localhost"]);
    }

    #[test]
    fn hq_candidates_name_the_conventional_files_once() {
        let got = hq_candidates(&["a.example.com".into(), "b.example.com".into()]);
        let want: Vec<(String, PathBuf, PathBuf)> = [
            ("a.example.com", "a.example.com"),
            ("*.example.com", "_wildcard.example.com"),
            ("b.example.com", "b.example.com"),
        ]
        .into_iter()
        .map(|(h, s)| {
            (
                h.to_string(),
                PathBuf::from(format!("certs/{s}.crt")),
                PathBuf::from(format!("certs/{s}.key")),
            )
        })
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn help_names_the_three_ways() {
        let help = missing_help("app.test", Path::new("/var/lib/starphleet/certs"));
        assert!(
            help.contains("/var/lib/starphleet/certs/app.test.crt"),
            "{help}"
        );
        assert!(help.contains("certs/app.test.crt and certs/app.test.key in headquarters"));
        assert!(help.contains("STARPHLEET_ACME_EMAIL"));
        let help = missing_help("*.example.com", Path::new("/s/certs"));
        assert!(
            help.contains("/s/certs/_wildcard.example.com.crt"),
            "{help}"
        );
        assert!(help.contains("cannot be used for a wildcard"), "{help}");
    }
}
