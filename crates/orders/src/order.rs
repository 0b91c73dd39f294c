//! `*.orders` files: which repository to run, and how to publish it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diagnostic::{quote, Diagnostic};
use crate::env::{EnvSize, E2BIG_HELP};
use crate::lex::{
    did_you_mean, parse_pairs, reject_extra, source_lines, split_words, twice, Part, Report,
    SourceLine, Span, Word,
};
use crate::resources::{
    base_line, base_repeated, resource_line, BaseImage, ResourceLines, Resources,
};
use crate::values::{check_host, parse_size, SIZE_HELP};

/// Where an order's app comes from: `autodeploy URL[#ref]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GitSource {
    /// Any URL `git clone` accepts.
    pub url: String,
    /// Branch, tag or commit after the last `#`; `None` follows the remote HEAD.
    pub reference: Option<String>,
}

impl GitSource {
    /// Whether the ref is a full 40-hex-digit commit sha (pinned: nothing to follow).
    pub fn is_full_sha(&self) -> bool {
        self.reference
            .as_deref()
            .is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

impl fmt::Display for GitSource {
    /// As written in the order: `URL` or `URL#ref`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Some(r) => write!(f, "{}#{}", self.url, r),
            None => f.write_str(&self.url),
        }
    }
}

/// One `publish` line: a private port exposed at a public port and URL prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Publish {
    /// The port the service listens on inside its container (given to it as `$PORT`).
    pub private: u16,
    /// The port on the ship users connect to (default 80, or 443 with `--tls`).
    pub public: u16,
    /// URL prefix on the public port: leading `/`, no trailing `/` except `/` itself.
    pub url: String,
    /// 1-based line of the `publish` in its order file, for diagnostics.
    pub span_line: usize,
    /// `--host` names, lower case, in file order: exact names or `*.domain` wildcards
    /// (one label). Empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `--tls`: the public port speaks TLS (and HTTP/2).
    #[serde(default)]
    pub tls: bool,
    /// With `tls`: plain HTTP on port 80 answers 308 to the `https://` URL for these hosts
    /// (off with `--no-redirect`). Always false without `tls`.
    #[serde(default)]
    pub redirect: bool,
    /// `--max-body`: the largest request body in bytes; bigger requests get 413.
    #[serde(default)]
    pub max_body: Option<u64>,
    /// `--timeout`: how long the service may take to answer a request; then 504.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// `--body-timeout`: how long a request body may go without a byte arriving; then 408.
    #[serde(default)]
    pub body_timeout: Option<Duration>,
}

/// One valid `*.orders` file: one service to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Path relative to HQ without `.orders`, `/`-separated, e.g. `team/api`.
    pub service: String,
    /// Path of the file relative to HQ, e.g. `team/api.orders`.
    pub path: PathBuf,
    /// The app repository and ref to deploy.
    pub autodeploy: GitSource,
    /// Where the service is published; empty means it runs unrouted.
    pub publish: Vec<Publish>,
    /// `export`/`env` pairs in file order; duplicates kept, later wins when folded.
    pub env: Vec<(String, String)>,
    /// HTTP path that must answer 2xx for a version to be healthy.
    pub healthcheck: Option<String>,
    /// How long a new version may take to become healthy.
    pub health_timeout: Option<Duration>,
    /// How long an old version may finish in-flight requests before it is stopped.
    pub drain: Option<Duration>,
    /// How many containers to run (1..=64).
    pub instances: Option<u32>,
    /// Hex sha256 of the file's bytes: the "order revision".
    pub revision: String,
    /// `memory`, `cpus`, `pids`: limits that win over the app's, field by field.
    #[serde(default)]
    pub resources: Resources,
    /// `build --timeout`: how long a build may take; wins over the app's.
    #[serde(default)]
    pub build_timeout: Option<Duration>,
    /// `base`: the root filesystem to run on; wins over the app's.
    #[serde(default)]
    pub base: Option<BaseImage>,
}

/// Keywords of an orders file, in the order the help lists them.
const KEYWORDS: &[&str] = &[
    "autodeploy",
    "publish",
    "export",
    "env",
    "healthcheck",
    "drain",
    "instances",
    "memory",
    "cpus",
    "pids",
    "base",
];

/// Keywords that belong in the app's `Starphleet` file rather than in an order
/// (`build --timeout` is the one form of `build` an order takes).
const APP_ONLY: &[&str] = &["build", "start", "buildpack"];

/// Publish flags a typo is matched against.
const PUBLISH_FLAGS: &[&str] = &[
    "--private",
    "--public",
    "--url",
    "--host",
    "--tls",
    "--no-redirect",
    "--max-body",
    "--timeout",
    "--body-timeout",
];

/// Publish flags that take no value.
const PUBLISH_SWITCHES: &[&str] = &["--tls", "--no-redirect"];

/// Karsten: "wasn't super clear that --port means your service"; every `--private` error says it.
const PRIVATE_HELP: &str = "`--private` is the port your service listens on inside its container \
     (it receives it as $PORT); `--public` is the port users connect to on the ship (default 80)";
const PUBLIC_HELP: &str = "`--public` is the port users connect to on the ship (default 80); \
     `--private` is the port your service listens on inside its container (it receives it as $PORT)";
const PUBLISH_USAGE: &str = "`publish` takes `--private PORT` (required), `--public PORT` \
     (default 80) and `--url /PREFIX` (default /<service>)";
const PUBLISH_EDGE_USAGE: &str = "`publish` also takes `--host NAME` (repeatable), `--tls`, \
     `--no-redirect` (with `--tls`), `--max-body SIZE`, `--timeout DURATION` and \
     `--body-timeout DURATION`";
const HOST_HELP: &str = "`--host` limits the route to requests for this host name, e.g. \
     `--host app.example.com` or `--host '*.example.com'`; repeat it for more names";
const MAX_BODY_HELP: &str = "`--max-body` is the largest request body the route accepts (bigger \
     requests get 413), e.g. `--max-body 10m`";
const PUBLISH_TIMEOUT_HELP: &str = "`--timeout` is how long the service may take to answer a \
     request before the client gets 504, e.g. `--timeout 30s`";
const BODY_TIMEOUT_HELP: &str = "`--body-timeout` is how long a request body may go without a \
     byte arriving before the client gets 408 (default 30s), e.g. `--body-timeout 2m` for slow \
     uploads";
const AUTODEPLOY_EXAMPLE: &str = "e.g. `autodeploy https://github.com/wballard/echo.git` \
     or `autodeploy git@host:team/app.git#release-2`";
pub(crate) const DURATION_HELP: &str =
    "write a whole number with a unit: `500ms`, `30s`, `5m` or `1h` (a bare number means seconds)";

/// Longest duration accepted, so consumers can add it to an `Instant` without overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parse `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let d = match s[digits..].to_ascii_lowercase().as_str() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

/// The port in `s`, if it is a whole number from 1 to 65535 (no sign, no spaces).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Validate and normalise a URL prefix; `Err((message, help))` if it cannot be used.
pub(crate) fn check_url_prefix(raw: &str) -> Result<String, (String, String)> {
    if raw.is_empty() {
        return Err((
            "URL prefix is empty".into(),
            "use `/` to publish at the root of the port".into(),
        ));
    }
    if !raw.starts_with('/') {
        return Err((
            format!("URL prefix {} must start with `/`", quote(raw)),
            format!("did you mean {}?", quote(&format!("/{raw}"))),
        ));
    }
    if let Some(c) = raw
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        let what = match c {
            '?' => "`?`",
            '#' => "`#`",
            _ => "whitespace",
        };
        return Err((
            format!("URL prefix {} must not contain {what}", quote(raw)),
            "a prefix is a plain path like `/echo`; queries, fragments and spaces are not part of it"
                .into(),
        ));
    }
    let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err((
            format!(
                "URL prefix {} must not contain `.` or `..` segments",
                quote(raw)
            ),
            "write the prefix as a plain path like `/echo`".into(),
        ));
    }
    let normal = format!("/{}", segments.join("/"));
    if normal == "/starphleet" || normal.starts_with("/starphleet/") {
        return Err((
            format!("URL prefix {} is reserved", quote(raw)),
            "every ship answers under `/starphleet/` itself (e.g. `/starphleet/health` for load \
             balancers); choose another prefix"
                .into(),
        ));
    }
    Ok(normal)
}

/// Whether a health check path is usable; `Err((message, help))` if not.
pub(crate) fn check_health_path(raw: &str) -> Result<(), (String, String)> {
    if !raw.starts_with('/') {
        return Err((
            format!("health check path {} must start with `/`", quote(raw)),
            format!("did you mean {}?", quote(&format!("/{raw}"))),
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            format!(
                "health check path {} must not contain whitespace",
                quote(raw)
            ),
            "write the path the ship should GET, e.g. `/health`".into(),
        ));
    }
    Ok(())
}

/// Whether `r` is a plausible git ref name (a subset of `git check-ref-format`).
fn is_valid_ref(r: &str) -> bool {
    !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with('.')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r != "@"
        && !r.split('/').any(|c| c.starts_with('.'))
        && !r.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

/// Longest service name: the container's hostname is the name with `/` as `_`, Linux
/// refuses hostnames over 64 bytes, and 63 is also the longest DNS label.
pub const MAX_SERVICE_NAME: usize = 63;

/// Most `/`-separated parts in a service name (folders plus the file).
pub const MAX_SERVICE_DEPTH: usize = 4;

/// Whether one part of a service name is `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn is_valid_part(part: &str) -> bool {
    part.starts_with(|c: char| c.is_ascii_alphanumeric())
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `part` made valid: other chars become `-`, leading punctuation is dropped.
fn fix_part(part: &str) -> String {
    let fixed: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let fixed = fixed.trim_start_matches(['-', '_', '.']);
    if fixed.is_empty() {
        "service".into()
    } else {
        fixed.to_string()
    }
}

/// Whether a service name can be a hostname, a log folder and a container id;
/// `Err((message, help))` says why not and how to rename the file.
pub(crate) fn check_service_name(s: &str) -> Result<(), (String, String)> {
    let parts: Vec<&str> = s.split('/').collect();
    let what = format!("invalid service name {} (from the file name)", quote(s));
    let uses = "the name becomes the container's hostname, its log folder and the default URL";
    if !parts.iter().all(|p| is_valid_part(p)) {
        let fixed: Vec<String> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| fix_part(p))
            .collect();
        let example = if fixed.is_empty() {
            "service".to_string()
        } else {
            fixed.join("/")
        };
        return Err((
            what,
            format!(
                "rename the file (and folders) so each part starts with a letter or digit and has \
                 only letters, digits, `-`, `_` and `.`, e.g. {}: {uses}",
                quote(&format!("{example}.orders"))
            ),
        ));
    }
    if parts.len() > MAX_SERVICE_DEPTH {
        let mut kept: Vec<&str> = parts[..MAX_SERVICE_DEPTH - 1].to_vec();
        kept.extend(parts.last());
        return Err((
            format!(
                "{what}: {} parts deep, at most {MAX_SERVICE_DEPTH}",
                parts.len()
            ),
            format!(
                "move the file up to at most {} folders deep, e.g. {}",
                MAX_SERVICE_DEPTH - 1,
                quote(&format!("{}.orders", kept.join("/")))
            ),
        ));
    }
    if s.len() > MAX_SERVICE_NAME {
        return Err((
            format!("{what}: {} characters, at most {MAX_SERVICE_NAME}", s.len()),
            format!(
                "rename the file or its folders to something shorter: {uses}, and Linux refuses \
                 hostnames over 64 characters"
            ),
        ));
    }
    Ok(())
}

/// Span from the first to the last word of a line.
pub(crate) fn words_span(words: &[Word]) -> Span {
    match (words.first(), words.last()) {
        (Some(a), Some(b)) => Span {
            col: a.span.col,
            width: b.span.col + b.span.width - a.span.col,
        },
        _ => Span { col: 1, width: 1 },
    }
}

/// Every value of `flag` (lower case, e.g. `--host`) on a `publish` line, as written.
pub(crate) fn flag_values(line: &str, flag: &str) -> Vec<Part> {
    let Ok(lexed) = split_words(line) else {
        return Vec::new();
    };
    let words = lexed.words;
    let mut out = Vec::new();
    let mut i = 1;
    while i < words.len() {
        if !words[i].text.starts_with("--") || is_switch(&words[i], PUBLISH_SWITCHES) {
            i += 1;
            continue;
        }
        let found = take_flag(&words, &mut i);
        if found.lower == flag {
            out.extend(found.value);
        }
    }
    out
}

/// Where the `--public` value is written on a `publish` line; `None` if it is not (default 80).
pub(crate) fn public_port_span(line: &str) -> Option<Span> {
    flag_values(line, "--public")
        .into_iter()
        .next()
        .map(|v| v.span)
}

/// Where a publish claims to route: (public port, host or `None` for any, URL prefix).
pub(crate) type RouteKey = (u16, Option<String>, String);

/// The routes `p` claims: one per host, or one for any host.
pub(crate) fn route_keys(p: &Publish) -> Vec<RouteKey> {
    if p.hosts.is_empty() {
        vec![(p.public, None, p.url.clone())]
    } else {
        p.hosts
            .iter()
            .map(|h| (p.public, Some(h.clone()), p.url.clone()))
            .collect()
    }
}

/// The error for a port published both with and without `--tls`; `other` says where the first is.
pub(crate) fn tls_mismatch_message(port: u16, other_tls: bool, other: &str) -> String {
    if other_tls {
        format!("port {port} is published with `--tls` by {other}; this `publish` has no `--tls`")
    } else {
        format!("port {port} is published without `--tls` by {other}; this `publish` has `--tls`")
    }
}

/// How to fix a [`tls_mismatch_message`].
pub(crate) fn tls_mismatch_help(other_tls: bool) -> &'static str {
    if other_tls {
        "a port speaks either TLS or plain HTTP: add `--tls` here, or use another `--public` port"
    } else {
        "a port speaks either TLS or plain HTTP: remove `--tls` here, or use another `--public` \
         port (with `--tls` the default is 443)"
    }
}

/// Report an unknown keyword with the best hint we have.
pub(crate) fn unknown_keyword(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    word: &Word,
    keywords: &[&str],
    elsewhere: (&[&str], &str),
) {
    let lower = word.text.to_lowercase();
    let list = keywords.join(", ");
    let help = if elsewhere.0.contains(&lower.as_str()) {
        format!(
            "{} belongs in {}; valid keywords here: {list}",
            quote(&lower),
            elsewhere.1
        )
    } else if word
        .split_eq()
        .is_some_and(|(name, _)| crate::lex::is_env_name(&name.text))
    {
        format!(
            "to set an environment variable write {}",
            quote(&format!("export {}", word.text))
        )
    } else if let Some(s) = did_you_mean(&word.text, keywords) {
        format!("did you mean `{s}`? valid keywords: {list}")
    } else {
        format!("valid keywords: {list}")
    };
    report.error(
        line,
        word.span,
        format!("unknown keyword {}", quote(&word.text)),
        help,
    );
}

/// A flag word split into its name and value, consuming the next word as the value if needed.
pub(crate) struct Flag {
    /// The flag as written (before any `=`).
    pub name: Part,
    /// Lowercased name for matching.
    pub lower: String,
    /// The value, if one was given and is not empty.
    pub value: Option<Part>,
}

/// Whether `w` is one of `switches` (flags without a value), written alone or as `--flag=…`.
fn is_switch(w: &Word, switches: &[&str]) -> bool {
    let name = w.text.split('=').next().unwrap_or("").to_lowercase();
    switches.contains(&name.as_str())
}

/// Read the flag at `words[*i]` (already known to start with `--`), advancing `*i`.
pub(crate) fn take_flag(words: &[Word], i: &mut usize) -> Flag {
    let w = &words[*i];
    *i += 1;
    let (name, value) = match w.split_eq() {
        Some((name, value)) => (name, Some(value)),
        None => {
            let value = match words.get(*i) {
                Some(next) if !next.text.starts_with("--") => {
                    *i += 1;
                    Some(next.part())
                }
                _ => None,
            };
            (w.part(), value)
        }
    };
    Flag {
        lower: name.text.to_lowercase(),
        name,
        value: value.filter(|v| !v.text.is_empty()),
    }
}

/// Parse a duration argument (at most 24h), reporting it if invalid.
pub(crate) fn duration_arg(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    value: &Part,
    what: &str,
) -> Option<Duration> {
    match parse_duration(&value.text) {
        Some(d) if d <= MAX_DURATION => Some(d),
        Some(_) => {
            report.error(
                line,
                value.span,
                format!("{} is too long for {what}", quote(&value.text)),
                "the longest accepted duration is 24h".into(),
            );
            None
        }
        None => {
            report.error(
                line,
                value.span,
                format!("invalid duration {} for {what}", quote(&value.text)),
                DURATION_HELP.into(),
            );
            None
        }
    }
}

/// What `build --timeout` means, for help texts.
const BUILD_TIMEOUT_HELP: &str = "`build --timeout DURATION` sets how long a build may take \
     before it is stopped and the deploy fails, e.g. `build --timeout 20m` (at most 24h)";

/// Whether a `build` line is `build --timeout …` (a setting) rather than a build command.
pub(crate) fn is_build_timeout(words: &[Word]) -> bool {
    words.get(1).is_some_and(|w| {
        let lower = w.text.to_lowercase();
        lower == "--timeout" || lower.starts_with("--timeout=")
    })
}

/// Parse `build --timeout DURATION` (checked with [`is_build_timeout`]), reporting problems.
pub(crate) fn build_timeout(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    words: &[Word],
) -> Option<Duration> {
    let mut i = 1;
    let flag = take_flag(words, &mut i);
    reject_extra(report, line, words, i, BUILD_TIMEOUT_HELP.into());
    let Some(value) = flag.value else {
        report.error(
            line,
            flag.name.span,
            "`--timeout` needs a duration".into(),
            BUILD_TIMEOUT_HELP.into(),
        );
        return None;
    };
    match duration_arg(report, line, &value, "`build --timeout`")? {
        d if d.is_zero() => {
            report.error(
                line,
                value.span,
                "`build --timeout` must be more than 0".into(),
                BUILD_TIMEOUT_HELP.into(),
            );
            None
        }
        d => Some(d),
    }
}

/// What a `KEYWORD URL[#ref]` line is for, to word its errors.
pub(crate) struct GitLine {
    /// The keyword, e.g. `autodeploy`.
    pub keyword: &'static str,
    /// What the ref is for: "deploy" or "use".
    pub verb: &'static str,
    /// An example line, for help texts.
    pub example: &'static str,
}

/// `autodeploy` in an order.
const AUTODEPLOY_LINE: GitLine = GitLine {
    keyword: "autodeploy",
    verb: "deploy",
    example: AUTODEPLOY_EXAMPLE,
};

/// Parse `KEYWORD URL[#ref]` (`words[0]` is the keyword), reporting every problem.
pub(crate) fn git_source(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    words: &[Word],
    what: &GitLine,
) -> Option<GitSource> {
    let kw = &words[0];
    let keyword = what.keyword;
    let example = what.example;
    let Some(arg) = words.get(1).filter(|a| !a.text.is_empty()) else {
        report.error(
            line,
            words.get(1).map_or(kw.span, |a| a.span),
            format!("`{keyword}` needs a git URL"),
            example.into(),
        );
        return None;
    };
    if let Some(extra) = words.get(2) {
        report.error(
            line,
            extra.span,
            format!("unexpected argument {} for `{keyword}`", quote(&extra.text)),
            format!(
                "`{keyword}` takes one git URL; to {} a branch, tag or commit write {}",
                what.verb,
                quote(&format!("{}#{}", arg.text, extra.text))
            ),
        );
    }
    let (url, reference) = match arg.text.rfind('#') {
        None => (arg.part(), None),
        Some(byte) => {
            let hash = arg.text[..byte].chars().count();
            let len = arg.text.chars().count();
            let url = Part {
                text: arg.text[..byte].to_string(),
                span: arg.sub_span(0, hash),
            };
            let hash_span = arg.sub_span(hash, hash + 1);
            let reference = Part {
                text: arg.text[byte + 1..].to_string(),
                span: if hash + 1 < len {
                    arg.sub_span(hash + 1, len)
                } else {
                    hash_span
                },
            };
            if url.text.is_empty() {
                report.error(
                    line,
                    hash_span,
                    "missing git URL before `#`".into(),
                    example.into(),
                );
                return None;
            }
            if reference.text.is_empty() {
                report.error(
                    line,
                    hash_span,
                    "empty git ref after `#`".into(),
                    "write a branch, tag or full commit sha after `#`, or remove the `#` to \
                     follow the remote's default branch"
                        .into(),
                );
                return None;
            }
            (url, Some(reference))
        }
    };
    let mut ok = true;
    if url.text.starts_with('-') {
        ok = false;
        report.error(
            line,
            url.span,
            format!("git URL {} must not start with `-`", quote(&url.text)),
            format!("git would read it as an option; {example}"),
        );
    } else if url
        .text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        ok = false;
        report.error(
            line,
            url.span,
            format!("git URL {} must not contain whitespace", quote(&url.text)),
            example.into(),
        );
    }
    if let Some(r) = &reference {
        if !is_valid_ref(&r.text) {
            ok = false;
            report.error(
                line,
                r.span,
                format!("{} is not a valid git ref", quote(&r.text)),
                "a ref is a branch, tag or full commit sha, e.g. `main`, `v1.2.0` or `release-2`"
                    .into(),
            );
        }
    }
    ok.then(|| GitSource {
        url: url.text,
        reference: reference.map(|r| r.text),
    })
}

/// Accumulates one order while its lines are read.
struct OrderParser<'a> {
    service: &'a str,
    service_ok: bool,
    report: Report<'a>,
    autodeploy: Option<GitSource>,
    autodeploy_line: Option<usize>,
    publish: Vec<Publish>,
    /// Route → line, to catch repeats without a quadratic scan.
    published: HashMap<RouteKey, usize>,
    /// Public port → (TLS or not, line), so one port is not both.
    port_tls: HashMap<u16, (bool, usize)>,
    env: Vec<(String, String)>,
    healthcheck_line: Option<usize>,
    healthcheck: Option<String>,
    health_timeout: Option<Duration>,
    drain_line: Option<usize>,
    drain: Option<Duration>,
    instances_line: Option<usize>,
    instances: Option<u32>,
    resource_lines: ResourceLines,
    resources: Resources,
    build_timeout_line: Option<usize>,
    build_timeout: Option<Duration>,
    base_line: Option<usize>,
    base: Option<BaseImage>,
    /// The env so far, folded as the ship will.
    env_size: EnvSize,
    /// The line (number, text, span) where `env_size` last went over a limit, while it is over.
    env_over: Option<(usize, String, Span)>,
}

/// Parse one orders file. `service` and `path` are as in [`Order`]; every problem is returned.
pub fn parse_order(service: &str, path: &Path, text: &str) -> Result<Order, Vec<Diagnostic>> {
    let service_check = check_service_name(service);
    let mut p = OrderParser {
        service,
        service_ok: service_check.is_ok(),
        report: Report::new(path),
        autodeploy: None,
        autodeploy_line: None,
        publish: Vec::new(),
        published: HashMap::new(),
        port_tls: HashMap::new(),
        env: Vec::new(),
        healthcheck_line: None,
        healthcheck: None,
        health_timeout: None,
        drain_line: None,
        drain: None,
        instances_line: None,
        instances: None,
        resource_lines: ResourceLines::default(),
        resources: Resources::default(),
        build_timeout_line: None,
        build_timeout: None,
        base_line: None,
        base: None,
        env_size: EnvSize::default(),
        env_over: None,
    };
    if let Err((message, help)) = &service_check {
        p.report
            .diags
            .push(Diagnostic::file(path, message.clone()).with_help(help.clone()));
    }
    for line in source_lines(text) {
        let Some(lexed) = p.report.lex(line) else {
            // Do not also claim `autodeploy` is missing when its line only has a quoting error.
            let first = line.text.split_whitespace().next().unwrap_or("");
            if first.eq_ignore_ascii_case("autodeploy") {
                p.autodeploy_line.get_or_insert(line.number);
            }
            continue;
        };
        let words = &lexed.words;
        let Some(kw) = words.first() else {
            continue;
        };
        match kw.text.to_lowercase().as_str() {
            "autodeploy" => p.autodeploy(line, words),
            "publish" => p.publish(line, words),
            "export" | "env" => {
                let before = p.env.len();
                parse_pairs(&mut p.report, line, Some(kw), &words[1..], &mut p.env);
                p.env_size.add_all(&p.env[before..]);
                match (p.env_size.excess(), &p.env_over) {
                    (Some(_), None) => {
                        p.env_over = Some((line.number, line.text.to_string(), words_span(words)))
                    }
                    (None, Some(_)) => p.env_over = None,
                    _ => {}
                }
            }
            "healthcheck" => p.healthcheck(line, words),
            "drain" => p.drain(line, words),
            "instances" => p.instances(line, words),
            "memory" | "cpus" | "pids" => resource_line(
                &mut p.report,
                line,
                words,
                &mut p.resource_lines,
                &mut p.resources,
            ),
            "base" => {
                if !base_repeated(&mut p.report, line, kw, &mut p.base_line) {
                    p.base = base_line(&mut p.report, line, words);
                }
            }
            "build" if is_build_timeout(words) => {
                if let Some(first) = p.build_timeout_line {
                    twice(&mut p.report, line, kw, first);
                } else {
                    p.build_timeout_line = Some(line.number);
                    p.build_timeout = build_timeout(&mut p.report, line, words);
                }
            }
            _ => unknown_keyword(
                &mut p.report,
                line,
                kw,
                KEYWORDS,
                (
                    APP_ONLY,
                    "the `Starphleet` file at the root of the app repository",
                ),
            ),
        }
    }
    if p.autodeploy_line.is_none() {
        let first = source_lines(text).next().map_or("", |l| l.text);
        // First: it is what makes the file an order at all.
        p.report.diags.insert(
            0,
            Diagnostic::at(
                path,
                1,
                1,
                1,
                first,
                "missing `autodeploy`: every order needs the git repository to run",
            )
            .with_help(
                "add a line `autodeploy <git url>`, e.g. `autodeploy https://github.com/wballard/echo.git`",
            ),
        );
    }
    if let (Some(excess), Some((number, text, span))) = (p.env_size.excess(), &p.env_over) {
        let line = SourceLine {
            number: *number,
            text,
        };
        p.report
            .error(line, *span, excess.message(), E2BIG_HELP.into());
    }
    let diags = p.report.finish();
    match p.autodeploy {
        Some(autodeploy) if diags.is_empty() => Ok(Order {
            service: service.to_string(),
            path: path.to_path_buf(),
            autodeploy,
            publish: p.publish,
            env: p.env,
            healthcheck: p.healthcheck,
            health_timeout: p.health_timeout,
            drain: p.drain,
            instances: p.instances,
            revision: hex::encode(Sha256::digest(text.as_bytes())),
            resources: p.resources,
            build_timeout: p.build_timeout,
            base: p.base,
        }),
        _ => Err(diags),
    }
}

impl OrderParser<'_> {
    /// Report a keyword given a second time; true if it was.
    fn repeated(&mut self, line: SourceLine<'_>, kw: &Word, first: Option<usize>) -> bool {
        let Some(first) = first else {
            return false;
        };
        let lower = kw.text.to_lowercase();
        self.report.error(
            line,
            kw.span,
            format!("`{lower}` is given twice; the first is on line {first}"),
            format!("keep one `{lower}` line"),
        );
        true
    }

    fn autodeploy(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        if let Some(first) = self.autodeploy_line {
            self.report.error(
                line,
                kw.span,
                format!("`autodeploy` is given twice; the first is on line {first}"),
                "an order deploys exactly one repository: keep one `autodeploy` line".into(),
            );
            return;
        }
        self.autodeploy_line = Some(line.number);
        if let Some(source) = git_source(&mut self.report, line, words, &AUTODEPLOY_LINE) {
            self.autodeploy = Some(source);
        }
    }

    fn publish(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        let errors_before = self.report.diags.len();
        let mut private: Option<u16> = None;
        // Set once `--private` was written or its absence already explained.
        let mut private_mentioned = false;
        let mut public: Option<u16> = None;
        let mut public_span: Option<Span> = None;
        let mut url: Option<String> = None;
        let mut hosts: Vec<String> = Vec::new();
        let mut tls = false;
        let mut no_redirect: Option<Span> = None;
        let mut max_body: Option<u64> = None;
        let mut timeout: Option<Duration> = None;
        let mut body_timeout: Option<Duration> = None;
        let mut seen: Vec<&'static str> = Vec::new();
        let mut extra_reported = false;
        let mut i = 1;
        while i < words.len() {
            let w = &words[i];
            if !w.text.starts_with("--") {
                i += 1;
                if !extra_reported {
                    extra_reported = true;
                    let help = if !private_mentioned && parse_port(&w.text).is_some() {
                        private_mentioned = true;
                        format!("did you mean `--private {}`? {PRIVATE_HELP}", w.text)
                    } else {
                        PUBLISH_USAGE.into()
                    };
                    self.report.error(
                        line,
                        w.span,
                        format!("unexpected argument {} for `publish`", quote(&w.text)),
                        help,
                    );
                }
                continue;
            }
            if is_switch(w, PUBLISH_SWITCHES) {
                i += 1;
                let (name, value) = match w.split_eq() {
                    Some((name, value)) => (name, Some(value)),
                    None => (w.part(), None),
                };
                let canonical = if name.text.eq_ignore_ascii_case("--tls") {
                    "--tls"
                } else {
                    "--no-redirect"
                };
                if let Some(value) = value {
                    self.report.error(
                        line,
                        value.span,
                        format!("`{canonical}` takes no value"),
                        format!("write `{canonical}` alone"),
                    );
                    continue;
                }
                if seen.contains(&canonical) {
                    self.report.error(
                        line,
                        name.span,
                        format!("`{canonical}` is given twice in one `publish` line"),
                        format!("keep one `{canonical}`"),
                    );
                    continue;
                }
                seen.push(canonical);
                if canonical == "--tls" {
                    tls = true;
                } else {
                    no_redirect = Some(name.span);
                }
                continue;
            }
            let flag = take_flag(words, &mut i);
            let canonical = match flag.lower.as_str() {
                "--private" => "--private",
                "--public" => "--public",
                "--url" => "--url",
                "--host" => "--host",
                "--max-body" => "--max-body",
                "--timeout" => "--timeout",
                "--body-timeout" => "--body-timeout",
                "--port" => {
                    private_mentioned = true;
                    let port = flag.value.as_ref().map_or("PORT", |v| v.text.as_str());
                    self.report.error(
                        line,
                        flag.name.span,
                        "`--port` is now `--private`: the port your service listens on inside its \
                         container"
                            .into(),
                        format!(
                            "write {}; your service receives it as $PORT. `--public` is the port \
                             users connect to on the ship (default 80)",
                            quote(&format!("--private {port}"))
                        ),
                    );
                    continue;
                }
                _ => {
                    let suggestion = did_you_mean(&flag.lower, PUBLISH_FLAGS);
                    if suggestion == Some("--private") {
                        private_mentioned = true;
                    }
                    let help = match suggestion {
                        Some("--private") => format!("did you mean `--private`? {PRIVATE_HELP}"),
                        Some("--public") => format!("did you mean `--public`? {PUBLIC_HELP}"),
                        Some(s @ "--url") => {
                            format!("did you mean `{s}`? {PUBLISH_USAGE}")
                        }
                        Some(s) => format!("did you mean `{s}`? {PUBLISH_EDGE_USAGE}"),
                        None => PUBLISH_USAGE.into(),
                    };
                    self.report.error(
                        line,
                        flag.name.span,
                        format!("unknown flag {} for `publish`", quote(&flag.name.text)),
                        help,
                    );
                    continue;
                }
            };
            if canonical == "--private" {
                private_mentioned = true;
            }
            // `--host` is the one flag that may be repeated: one route, several names.
            if canonical != "--host" && seen.contains(&canonical) {
                self.report.error(
                    line,
                    flag.name.span,
                    format!("`{canonical}` is given twice in one `publish` line"),
                    "one `publish` line publishes the service once; add another `publish` line to \
                     publish it at another port or prefix"
                        .into(),
                );
                continue;
            }
            seen.push(canonical);
            let (what, help) = match canonical {
                "--private" => ("a port number", PRIVATE_HELP),
                "--public" => ("a port number", PUBLIC_HELP),
                "--host" => ("a host name", HOST_HELP),
                "--max-body" => ("a size", MAX_BODY_HELP),
                "--timeout" => ("a duration", PUBLISH_TIMEOUT_HELP),
                "--body-timeout" => ("a duration", BODY_TIMEOUT_HELP),
                _ => (
                    "a URL prefix",
                    "e.g. `--url /echo`: the service gets requests under this prefix, with the \
                     prefix stripped",
                ),
            };
            let Some(value) = flag.value else {
                self.report.error(
                    line,
                    flag.name.span,
                    format!("`{canonical}` needs {what}"),
                    help.into(),
                );
                continue;
            };
            match canonical {
                "--url" => match check_url_prefix(&value.text) {
                    Ok(u) => url = Some(u),
                    Err((message, help)) => self.report.error(line, value.span, message, help),
                },
                "--host" => match check_host(&value.text) {
                    Ok(h) if hosts.contains(&h) => self.report.error(
                        line,
                        value.span,
                        format!("host `{h}` is given twice in one `publish` line"),
                        "keep one `--host` for it".into(),
                    ),
                    Ok(h) => hosts.push(h),
                    Err((message, help)) => self.report.error(line, value.span, message, help),
                },
                "--max-body" => match parse_size(&value.text) {
                    Some(0) => self.report.error(
                        line,
                        value.span,
                        "`--max-body` must be more than 0".into(),
                        MAX_BODY_HELP.into(),
                    ),
                    Some(n) => max_body = Some(n),
                    None => self.report.error(
                        line,
                        value.span,
                        format!("invalid size {} for `--max-body`", quote(&value.text)),
                        format!("{MAX_BODY_HELP}; {SIZE_HELP}"),
                    ),
                },
                "--timeout" => match self.duration(line, &value, "`--timeout`") {
                    Some(d) if d.is_zero() => self.report.error(
                        line,
                        value.span,
                        "`--timeout` must be more than 0".into(),
                        PUBLISH_TIMEOUT_HELP.into(),
                    ),
                    Some(d) => timeout = Some(d),
                    None => {}
                },
                "--body-timeout" => match self.duration(line, &value, "`--body-timeout`") {
                    Some(d) if d.is_zero() => self.report.error(
                        line,
                        value.span,
                        "`--body-timeout` must be more than 0".into(),
                        BODY_TIMEOUT_HELP.into(),
                    ),
                    Some(d) => body_timeout = Some(d),
                    None => {}
                },
                _ => match parse_port(&value.text) {
                    Some(port) if canonical == "--private" => private = Some(port),
                    Some(port) => {
                        public = Some(port);
                        public_span = Some(value.span);
                    }
                    None => self.report.error(
                        line,
                        value.span,
                        format!(
                            "`{canonical}` must be a port from 1 to 65535, not {}",
                            quote(&value.text)
                        ),
                        help.into(),
                    ),
                },
            }
        }
        if !private_mentioned {
            self.report.error(
                line,
                kw.span,
                "`publish` needs `--private PORT`".into(),
                format!(
                    "{PRIVATE_HELP}; e.g. `publish --private 3000 --public 80 --url /{}`",
                    if self.service_ok {
                        self.service
                    } else {
                        "echo"
                    }
                ),
            );
        }
        if let (Some(span), false) = (no_redirect, tls) {
            self.report.error(
                line,
                span,
                "`--no-redirect` needs `--tls`".into(),
                "only a `--tls` publish redirects plain HTTP on port 80 to HTTPS; remove \
                 `--no-redirect`, or add `--tls`"
                    .into(),
            );
        }
        if let (true, Some(80), Some(span)) = (tls, public, public_span) {
            self.report.error(
                line,
                span,
                "a `--tls` publish cannot use port 80".into(),
                "port 80 stays plain HTTP: it carries the redirect to HTTPS and ACME HTTP-01 \
                 challenges; use `--public 443` (the default with `--tls`) or another port"
                    .into(),
            );
        }
        if url.is_none() && !seen.contains(&"--url") && self.service_ok {
            match check_url_prefix(&format!("/{}", self.service)) {
                Ok(u) => url = Some(u),
                Err((message, _)) => self.report.error(
                    line,
                    kw.span,
                    format!("the default URL prefix comes from the service name: {message}"),
                    "add `--url /PREFIX` to this `publish` line".into(),
                ),
            }
        }
        if self.report.diags.len() != errors_before {
            return;
        }
        let (Some(private), Some(url)) = (private, url) else {
            return;
        };
        let publish = Publish {
            private,
            public: public.unwrap_or(if tls { 443 } else { 80 }),
            url,
            span_line: line.number,
            redirect: tls && no_redirect.is_none(),
            hosts,
            tls,
            max_body,
            timeout,
            body_timeout,
        };
        if let Some(&(other_tls, other_line)) = self.port_tls.get(&publish.public) {
            if other_tls != publish.tls {
                self.report.error(
                    line,
                    words_span(words),
                    tls_mismatch_message(publish.public, other_tls, &format!("line {other_line}")),
                    tls_mismatch_help(other_tls).into(),
                );
                return;
            }
        }
        for key in route_keys(&publish) {
            if let Some(&prev) = self.published.get(&key) {
                let (message, help) = match &key.1 {
                    None => (
                        format!(
                            "port {} and URL prefix `{}` are already published on line {}",
                            publish.public, publish.url, prev
                        ),
                        "remove one of the two `publish` lines, or change `--public` or `--url` \
                         in one",
                    ),
                    Some(host) => (
                        format!(
                            "port {}, host `{host}` and URL prefix `{}` are already published on \
                             line {}",
                            publish.public, publish.url, prev
                        ),
                        "remove one of the two `publish` lines, or change `--public`, `--host` or \
                         `--url` in one",
                    ),
                };
                self.report
                    .error(line, words_span(words), message, help.into());
                return;
            }
        }
        for key in route_keys(&publish) {
            self.published.insert(key, line.number);
        }
        self.port_tls
            .insert(publish.public, (publish.tls, line.number));
        self.publish.push(publish);
    }

    fn healthcheck(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        if self.repeated(line, kw, self.healthcheck_line) {
            return;
        }
        self.healthcheck_line = Some(line.number);
        if words.len() == 1 {
            self.report.error(
                line,
                kw.span,
                "`healthcheck` needs a path or `--timeout`".into(),
                "e.g. `healthcheck /health --timeout 90s`: a version is healthy once `GET /health` \
                 answers 2xx"
                    .into(),
            );
            return;
        }
        let mut path_given = false;
        let mut timeout_given = false;
        let mut extra_reported = false;
        let mut i = 1;
        while i < words.len() {
            let w = &words[i];
            if w.text.starts_with("--") {
                let flag = take_flag(words, &mut i);
                if flag.lower != "--timeout" {
                    let help = match did_you_mean(&flag.lower, &["--timeout"]) {
                        Some(s) => format!("did you mean `{s}`? `healthcheck` takes `[/path] [--timeout DURATION]`"),
                        None => "`healthcheck` takes `[/path] [--timeout DURATION]`".into(),
                    };
                    self.report.error(
                        line,
                        flag.name.span,
                        format!("unknown flag {} for `healthcheck`", quote(&flag.name.text)),
                        help,
                    );
                    continue;
                }
                if timeout_given {
                    self.report.error(
                        line,
                        flag.name.span,
                        "`--timeout` is given twice".into(),
                        "keep one `--timeout`".into(),
                    );
                    continue;
                }
                timeout_given = true;
                let Some(value) = flag.value else {
                    self.report.error(
                        line,
                        flag.name.span,
                        "`--timeout` needs a duration".into(),
                        format!("how long a new version may take to become healthy (default 60s); {DURATION_HELP}"),
                    );
                    continue;
                };
                match self.duration(line, &value, "`--timeout`") {
                    Some(d) if d.is_zero() => self.report.error(
                        line,
                        value.span,
                        "`--timeout` must be more than 0".into(),
                        format!("how long a new version may take to become healthy (default 60s); {DURATION_HELP}"),
                    ),
                    Some(d) => self.health_timeout = Some(d),
                    None => {}
                }
                continue;
            }
            i += 1;
            if !path_given {
                path_given = true;
                match check_health_path(&w.text) {
                    Ok(()) => self.healthcheck = Some(w.text.clone()),
                    Err((message, help)) => self.report.error(line, w.span, message, help),
                }
            } else if !extra_reported {
                extra_reported = true;
                self.report.error(
                    line,
                    w.span,
                    format!("unexpected argument {} for `healthcheck`", quote(&w.text)),
                    "`healthcheck` takes one path and an optional `--timeout DURATION`".into(),
                );
            }
        }
    }

    /// Parse a duration argument, reporting it if invalid.
    fn duration(&mut self, line: SourceLine<'_>, value: &Part, what: &str) -> Option<Duration> {
        duration_arg(&mut self.report, line, value, what)
    }

    fn drain(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        if self.repeated(line, kw, self.drain_line) {
            return;
        }
        self.drain_line = Some(line.number);
        let help = "`drain` takes one duration: how long the old version may finish in-flight \
                    requests before it is stopped, e.g. `drain 60s`";
        let Some(arg) = words.get(1) else {
            self.report.error(
                line,
                kw.span,
                "`drain` needs a duration".into(),
                help.into(),
            );
            return;
        };
        reject_extra(&mut self.report, line, words, 2, help.into());
        self.drain = self.duration(line, &arg.part(), "`drain`");
    }

    fn instances(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        if self.repeated(line, kw, self.instances_line) {
            return;
        }
        self.instances_line = Some(line.number);
        let help = "`instances` takes how many containers to run, from 1 to 64, e.g. `instances 3`";
        let Some(arg) = words.get(1) else {
            self.report.error(
                line,
                kw.span,
                "`instances` needs a number".into(),
                help.into(),
            );
            return;
        };
        reject_extra(&mut self.report, line, words, 2, help.into());
        let n = (arg.text.len() <= 2 && arg.text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| arg.text.parse::<u32>().ok())
            .flatten()
            .filter(|n| (1..=64).contains(n));
        match n {
            Some(n) => self.instances = Some(n),
            None => self.report.error(
                line,
                arg.span,
                format!(
                    "`instances` must be a whole number from 1 to 64, not {}",
                    quote(&arg.text)
                ),
                help.into(),
            ),
        }
    }
}
