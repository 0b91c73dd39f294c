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
    did_you_mean, parse_pairs, reject_extra, source_lines, split_words, Part, Report, SourceLine,
    Span, Word,
};

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
    /// The port on the ship users connect to (default 80).
    pub public: u16,
    /// URL prefix on the public port: leading `/`, no trailing `/` except `/` itself.
    pub url: String,
    /// 1-based line of the `publish` in its order file, for diagnostics.
    pub span_line: usize,
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
];

/// Keywords that belong in the app's `Starphleet` file rather than in an order.
const APP_ONLY: &[&str] = &["build", "start"];

/// Publish flags a typo is matched against.
const PUBLISH_FLAGS: &[&str] = &["--private", "--public", "--url"];

/// Karsten: "wasn't super clear that --port means your service"; every `--private` error says it.
const PRIVATE_HELP: &str = "`--private` is the port your service listens on inside its container \
     (it receives it as $PORT); `--public` is the port users connect to on the ship (default 80)";
const PUBLIC_HELP: &str = "`--public` is the port users connect to on the ship (default 80); \
     `--private` is the port your service listens on inside its container (it receives it as $PORT)";
const PUBLISH_USAGE: &str = "`publish` takes `--private PORT` (required), `--public PORT` \
     (default 80) and `--url /PREFIX` (default /<service>)";
const AUTODEPLOY_EXAMPLE: &str = "e.g. `autodeploy https://github.com/wballard/echo.git` \
     or `autodeploy git@host:team/app.git#release-2`";
const DURATION_HELP: &str =
    "write a whole number with a unit: `500ms`, `30s`, `5m` or `1h` (a bare number means seconds)";

/// Longest duration accepted, so consumers can add it to an `Instant` without overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

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

/// Where the `--public` value is written on a `publish` line; `None` if it is not (default 80).
pub(crate) fn public_port_span(line: &str) -> Option<Span> {
    let words = split_words(line).ok()?.words;
    let mut i = 1;
    while i < words.len() {
        if !words[i].text.starts_with("--") {
            i += 1;
            continue;
        }
        let flag = take_flag(&words, &mut i);
        if flag.lower == "--public" {
            return flag.value.map(|v| v.span);
        }
    }
    None
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
struct Flag {
    /// The flag as written (before any `=`).
    name: Part,
    /// Lowercased name for matching.
    lower: String,
    /// The value, if one was given and is not empty.
    value: Option<Part>,
}

/// Read the flag at `words[*i]` (already known to start with `--`), advancing `*i`.
fn take_flag(words: &[Word], i: &mut usize) -> Flag {
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

/// Accumulates one order while its lines are read.
struct OrderParser<'a> {
    service: &'a str,
    service_ok: bool,
    report: Report<'a>,
    autodeploy: Option<GitSource>,
    autodeploy_line: Option<usize>,
    publish: Vec<Publish>,
    /// (public port, URL prefix) → line, to catch repeats without a quadratic scan.
    published: HashMap<(u16, String), usize>,
    env: Vec<(String, String)>,
    healthcheck_line: Option<usize>,
    healthcheck: Option<String>,
    health_timeout: Option<Duration>,
    drain_line: Option<usize>,
    drain: Option<Duration>,
    instances_line: Option<usize>,
    instances: Option<u32>,
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
        env: Vec::new(),
        healthcheck_line: None,
        healthcheck: None,
        health_timeout: None,
        drain_line: None,
        drain: None,
        instances_line: None,
        instances: None,
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
        let Some(arg) = words.get(1).filter(|a| !a.text.is_empty()) else {
            self.report.error(
                line,
                words.get(1).map_or(kw.span, |a| a.span),
                "`autodeploy` needs a git URL".into(),
                AUTODEPLOY_EXAMPLE.into(),
            );
            return;
        };
        if let Some(extra) = words.get(2) {
            self.report.error(
                line,
                extra.span,
                format!(
                    "unexpected argument {} for `autodeploy`",
                    quote(&extra.text)
                ),
                format!(
                    "`autodeploy` takes one git URL; to deploy a branch, tag or commit write {}",
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
                    self.report.error(
                        line,
                        hash_span,
                        "missing git URL before `#`".into(),
                        AUTODEPLOY_EXAMPLE.into(),
                    );
                    return;
                }
                if reference.text.is_empty() {
                    self.report.error(
                        line,
                        hash_span,
                        "empty git ref after `#`".into(),
                        "write a branch, tag or full commit sha after `#`, or remove the `#` to \
                         follow the remote's default branch"
                            .into(),
                    );
                    return;
                }
                (url, Some(reference))
            }
        };
        let mut ok = true;
        if url.text.starts_with('-') {
            ok = false;
            self.report.error(
                line,
                url.span,
                format!("git URL {} must not start with `-`", quote(&url.text)),
                format!("git would read it as an option; {AUTODEPLOY_EXAMPLE}"),
            );
        } else if url
            .text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            ok = false;
            self.report.error(
                line,
                url.span,
                format!("git URL {} must not contain whitespace", quote(&url.text)),
                AUTODEPLOY_EXAMPLE.into(),
            );
        }
        if let Some(r) = &reference {
            if !is_valid_ref(&r.text) {
                ok = false;
                self.report.error(
                    line,
                    r.span,
                    format!("{} is not a valid git ref", quote(&r.text)),
                    "a ref is a branch, tag or full commit sha, e.g. `main`, `v1.2.0` or `release-2`"
                        .into(),
                );
            }
        }
        if ok {
            self.autodeploy = Some(GitSource {
                url: url.text,
                reference: reference.map(|r| r.text),
            });
        }
    }

    fn publish(&mut self, line: SourceLine<'_>, words: &[Word]) {
        let kw = &words[0];
        let errors_before = self.report.diags.len();
        let mut private: Option<u16> = None;
        // Set once `--private` was written or its absence already explained.
        let mut private_mentioned = false;
        let mut public: Option<u16> = None;
        let mut url: Option<String> = None;
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
            let flag = take_flag(words, &mut i);
            let canonical = match flag.lower.as_str() {
                "--private" => "--private",
                "--public" => "--public",
                "--url" => "--url",
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
                        Some(s) => format!("did you mean `{s}`? {PUBLISH_USAGE}"),
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
            if seen.contains(&canonical) {
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
                _ => match parse_port(&value.text) {
                    Some(port) if canonical == "--private" => private = Some(port),
                    Some(port) => public = Some(port),
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
            public: public.unwrap_or(80),
            url,
            span_line: line.number,
        };
        let key = (publish.public, publish.url.clone());
        if let Some(&prev) = self.published.get(&key) {
            self.report.error(
                line,
                words_span(words),
                format!(
                    "port {} and URL prefix `{}` are already published on line {}",
                    publish.public, publish.url, prev
                ),
                "remove one of the two `publish` lines, or change `--public` or `--url` in one"
                    .into(),
            );
            return;
        }
        self.published.insert(key, line.number);
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
        match parse_duration(&value.text) {
            Some(d) if d <= MAX_DURATION => Some(d),
            Some(_) => {
                self.report.error(
                    line,
                    value.span,
                    format!("{} is too long for {what}", quote(&value.text)),
                    "the longest accepted duration is 24h".into(),
                );
                None
            }
            None => {
                self.report.error(
                    line,
                    value.span,
                    format!("invalid duration {} for {what}", quote(&value.text)),
                    DURATION_HELP.into(),
                );
                None
            }
        }
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
