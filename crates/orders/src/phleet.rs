//! The phleet-wide settings ships read from `.starphleet` (`STARPHLEET_*` keys).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{quote, Diagnostic};
use crate::env::EnvAt;
use crate::lex::{source_lines, Report, SourceLine};
use crate::order::{parse_duration, DURATION_HELP, MAX_DURATION};
use crate::values::{check_http_url, parse_size, SIZE_HELP};

/// Let's Encrypt's production directory: the ACME server used unless `STARPHLEET_ACME_DIRECTORY` says otherwise.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The build cache size used unless `STARPHLEET_BUILD_CACHE_MAX` says otherwise: 10 GiB.
pub const DEFAULT_BUILD_CACHE_MAX: u64 = 10 << 30;

/// Fetches may always take at least this long, whatever `STARPHLEET_GIT_TIMEOUT` says.
const MIN_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The `STARPHLEET_*` settings of `.starphleet`, typed. An empty value means the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhleetSettings {
    /// `STARPHLEET_POLL_INTERVAL`: how often ships check HQ and app refs (`None`: the ship's default).
    pub poll_interval: Option<Duration>,
    /// `STARPHLEET_GIT_TIMEOUT`: how long one `git ls-remote` may take (`None`: the ship's default).
    pub git_timeout: Option<Duration>,
    /// `STARPHLEET_BUILD_CACHE_MAX`: bytes of build cache each ship keeps (default 10 GiB).
    pub build_cache_max: u64,
    /// `STARPHLEET_ROLLOUT`: how many ships switch to a new version at a time (`None`: all at once).
    pub rollout: Option<u32>,
    /// `STARPHLEET_ROLLOUT_SOAK`: how long ships must stay healthy on a new version before
    /// the next ones switch (default 10 s).
    pub rollout_soak: Duration,
    /// `STARPHLEET_ROLLOUT_WAIT`: the longest a rollout waits on one step (default 2 min).
    pub rollout_wait: Duration,
    /// `STARPHLEET_ACME_EMAIL`: the ACME account's contact; ACME is on only when set.
    pub acme_email: Option<String>,
    /// `STARPHLEET_ACME_DIRECTORY`: the ACME server's directory URL (default Let's Encrypt).
    pub acme_directory: String,
}

impl Default for PhleetSettings {
    /// Every setting at its default, as with no `.starphleet`.
    fn default() -> Self {
        PhleetSettings {
            poll_interval: None,
            git_timeout: None,
            build_cache_max: DEFAULT_BUILD_CACHE_MAX,
            rollout: None,
            rollout_soak: Duration::from_secs(10),
            rollout_wait: Duration::from_secs(120),
            acme_email: None,
            acme_directory: DEFAULT_ACME_DIRECTORY.to_string(),
        }
    }
}

impl PhleetSettings {
    /// How long a `git fetch` may take: the larger of 10 minutes and `git_timeout`.
    pub fn fetch_timeout(&self) -> Duration {
        self.git_timeout
            .map_or(MIN_FETCH_TIMEOUT, |t| t.max(MIN_FETCH_TIMEOUT))
    }
}

/// What a typed setting must be, and what it is for.
struct Setting {
    key: &'static str,
    /// What the value must be, e.g. "a duration of more than 0".
    expected: &'static str,
    /// What it does and its default, for the help line.
    purpose: &'static str,
}

const POLL: Setting = Setting {
    key: "STARPHLEET_POLL_INTERVAL",
    expected: "a duration of more than 0, e.g. `5s`",
    purpose: "how often every ship checks HQ and app refs (default 2s; `starphleet ship \
              --poll-interval` overrides it on one ship)",
};
const GIT_TIMEOUT: Setting = Setting {
    key: "STARPHLEET_GIT_TIMEOUT",
    expected: "a duration of more than 0, e.g. `30s`",
    purpose: "how long one `git ls-remote` may take (default 15s); a fetch may take the larger \
              of this and 10m",
};
const CACHE: Setting = Setting {
    key: "STARPHLEET_BUILD_CACHE_MAX",
    expected: "a size of more than 0, e.g. `20G`",
    purpose: "how much disk each ship's build cache may use (default 10G)",
};
const ROLLOUT: Setting = Setting {
    key: "STARPHLEET_ROLLOUT",
    expected: "a whole number of at least 1, e.g. `2`",
    purpose: "how many ships switch to a new version at a time; leave it out to switch every \
              ship at once",
};
const SOAK: Setting = Setting {
    key: "STARPHLEET_ROLLOUT_SOAK",
    expected: "a duration, e.g. `10s`",
    purpose: "how long ships must stay healthy on a new version before the next ones switch \
              (default 10s)",
};
const WAIT: Setting = Setting {
    key: "STARPHLEET_ROLLOUT_WAIT",
    expected: "a duration of more than 0, e.g. `2m`",
    purpose: "the longest a rollout waits on one step (default 2m)",
};
const ACME_EMAIL: Setting = Setting {
    key: "STARPHLEET_ACME_EMAIL",
    expected: "an email address, e.g. `ops@example.com`",
    purpose: "the contact of the ACME account ships use to get certificates for `--tls --host` \
              names; setting it turns ACME on",
};
const ACME_DIRECTORY: Setting = Setting {
    key: "STARPHLEET_ACME_DIRECTORY",
    expected: "an `http://` or `https://` URL",
    purpose: "the ACME server's directory URL (default Let's Encrypt: \
              https://acme-v02.api.letsencrypt.org/directory)",
};

/// The typed settings in `.starphleet`'s `pairs` (written at `at`), and a diagnostic for
/// every bad value. Every occurrence is checked; the last one of each key wins.
pub(crate) fn phleet_settings(
    path: &Path,
    text: &str,
    pairs: &[(String, String)],
    at: &[EnvAt],
) -> (PhleetSettings, Vec<Diagnostic>) {
    let mut report = Report::new(path);
    let mut out = PhleetSettings::default();
    let lines: Vec<SourceLine<'_>> = if pairs.iter().any(|(k, _)| k.starts_with("STARPHLEET_")) {
        source_lines(text).collect()
    } else {
        Vec::new()
    };
    for ((key, value), at) in pairs.iter().zip(at) {
        if !key.starts_with("STARPHLEET_") {
            continue;
        }
        let Some(line) = lines.get(at.line.saturating_sub(1)).copied() else {
            continue;
        };
        let mut bad = |setting: &Setting, extra: &str| {
            report.error(
                line,
                at.span,
                format!(
                    "`{}` must be {}, not {}",
                    setting.key,
                    setting.expected,
                    quote(value)
                ),
                format!("{}{extra}", setting.purpose),
            );
        };
        let duration = || parse_duration(value).filter(|d| *d <= MAX_DURATION);
        let positive = || duration().filter(|d| !d.is_zero());
        let duration_help = format!("; {DURATION_HELP}, at most 24h");
        // An empty value is the default, as an unset variable would be.
        let empty = value.is_empty();
        match key.as_str() {
            "STARPHLEET_POLL_INTERVAL" if empty => out.poll_interval = None,
            "STARPHLEET_POLL_INTERVAL" => match positive() {
                Some(d) => out.poll_interval = Some(d),
                None => bad(&POLL, &duration_help),
            },
            "STARPHLEET_GIT_TIMEOUT" if empty => out.git_timeout = None,
            "STARPHLEET_GIT_TIMEOUT" => match positive() {
                Some(d) => out.git_timeout = Some(d),
                None => bad(&GIT_TIMEOUT, &duration_help),
            },
            "STARPHLEET_BUILD_CACHE_MAX" if empty => out.build_cache_max = DEFAULT_BUILD_CACHE_MAX,
            "STARPHLEET_BUILD_CACHE_MAX" => match parse_size(value).filter(|&n| n > 0) {
                Some(n) => out.build_cache_max = n,
                None => bad(&CACHE, &format!("; {SIZE_HELP}")),
            },
            "STARPHLEET_ROLLOUT" if empty => out.rollout = None,
            "STARPHLEET_ROLLOUT" => {
                let n = (value.len() <= 9 && value.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| value.parse::<u32>().ok())
                    .flatten()
                    .filter(|&n| n >= 1);
                match n {
                    Some(n) => out.rollout = Some(n),
                    None => bad(&ROLLOUT, ""),
                }
            }
            "STARPHLEET_ROLLOUT_SOAK" if empty => out.rollout_soak = Duration::from_secs(10),
            "STARPHLEET_ROLLOUT_SOAK" => match duration() {
                Some(d) => out.rollout_soak = d,
                None => bad(&SOAK, &duration_help),
            },
            "STARPHLEET_ROLLOUT_WAIT" if empty => out.rollout_wait = Duration::from_secs(120),
            "STARPHLEET_ROLLOUT_WAIT" => match positive() {
                Some(d) => out.rollout_wait = d,
                None => bad(&WAIT, &duration_help),
            },
            "STARPHLEET_ACME_EMAIL" if empty => out.acme_email = None,
            "STARPHLEET_ACME_EMAIL" => match value.split_once('@') {
                Some((user, domain))
                    if !user.is_empty()
                        && !domain.is_empty()
                        && !value.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    out.acme_email = Some(value.clone())
                }
                _ => bad(&ACME_EMAIL, ""),
            },
            "STARPHLEET_ACME_DIRECTORY" if empty => {
                out.acme_directory = DEFAULT_ACME_DIRECTORY.to_string()
            }
            "STARPHLEET_ACME_DIRECTORY" => match check_http_url(value) {
                Ok(()) => out.acme_directory = value.clone(),
                Err(why) => bad(&ACME_DIRECTORY, &format!("; {why}")),
            },
            _ => {}
        }
    }
    (out, report.finish())
}
