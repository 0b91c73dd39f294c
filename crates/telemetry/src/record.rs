//! One log record, its kinds, and the time helpers the CLI and the store share.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a log kind or a time given by a user could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not one of [`Kind::ALL`].
    #[error("unknown log kind {0:?}: expected one of app, build, access, ship, health")]
    UnknownKind(String),
    /// Neither a duration ago, an RFC 3339 time from 1970 on nor `now`.
    #[error(
        "cannot read {0:?} as a time: use a duration ago like 10m or 2h, \
         or a UTC time like 2024-05-01T10:00:00Z"
    )]
    BadTime(String),
}

/// What produced a record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A container's stdout or stderr.
    App,
    /// Build output.
    Build,
    /// The proxy's access log.
    Access,
    /// The ship's own events (deploys, switches, errors).
    Ship,
    /// Health-check failures.
    Health,
}

impl Kind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [Kind; 5] = [
        Kind::App,
        Kind::Build,
        Kind::Access,
        Kind::Ship,
        Kind::Health,
    ];

    /// The lowercase name used on disk, in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Build => "build",
            Kind::Access => "access",
            Kind::Ship => "ship",
            Kind::Health => "health",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, RecordError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| RecordError::UnknownKind(s.to_string()))
    }
}

/// One log line with everything needed to find it again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// UTC nanoseconds since the Unix epoch. For collected files this is when the collector
    /// read the line (at most one poll interval after the app wrote it), made strictly
    /// increasing per source so that a source's lines keep their order.
    pub time_ns: u64,
    /// The ship that saw it.
    pub ship: String,
    /// The service it belongs to; empty for ship-wide events.
    pub service: String,
    /// The service version (app commit + order revision); empty when none applies.
    pub version: String,
    /// The container id; empty for records not tied to one container (builds, events).
    pub container: String,
    /// What produced it.
    pub kind: Kind,
    /// `stdout`, `stderr`, `build`, `access`, `event` or `health`.
    pub stream: String,
    /// The text, without its newline; at most [`crate::MAX_LINE_BYTES`] plus a marker.
    pub line: String,
}

impl Record {
    /// A record stamped now, for events the ship emits itself.
    pub fn now(meta: &RecordMeta, line: impl Into<String>) -> Self {
        Record {
            time_ns: now_ns(),
            ship: meta.ship.clone(),
            service: meta.service.clone(),
            version: meta.version.clone(),
            container: meta.container.clone(),
            kind: meta.kind,
            stream: meta.stream.clone(),
            line: line.into(),
        }
    }
}

/// `2024-05-01T10:00:00.123456Z echo v1 sp-…-echo stdout: the line`, skipping empty fields.
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_time(self.time_ns))?;
        for field in [&self.service, &self.version, &self.container, &self.stream] {
            if !field.is_empty() {
                write!(f, " {field}")?;
            }
        }
        write!(f, ": {}", self.line)
    }
}

/// Everything of a [`Record`] but its time and line: what one source's lines share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The ship name.
    pub ship: String,
    /// The service name; empty for ship-wide events.
    pub service: String,
    /// The service version.
    pub version: String,
    /// The container id, or empty.
    pub container: String,
    /// What produces the lines.
    pub kind: Kind,
    /// The stream name, e.g. `stdout`.
    pub stream: String,
}

/// The current UTC time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// RFC 3339 with microseconds, e.g. `2024-05-01T10:00:00.123456Z`.
pub fn format_time(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Parses `--since`/`--until`: a duration ago (`10m`, `1h30m`, `2days`), an RFC 3339 time
/// (`2024-05-01T10:00:00Z`, `2024-05-01 10:00:00`, taken as UTC) or `now`; returns UTC ns.
pub fn parse_time(text: &str, now_ns: u64) -> Result<u64, RecordError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now_ns);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ns.saturating_sub(ago.as_nanos().min(u64::MAX as u128) as u64));
    }
    // humantime refuses years before 1970, so a parsed time is never before the epoch.
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .ok_or_else(|| RecordError::BadTime(text.to_string()))
}

/// One proxied request, for the access log.
#[derive(Clone, Debug)]
pub struct AccessEntry<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path and query as the client sent it.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time from request received to response finished.
    pub duration: Duration,
    /// The upstream version that answered (empty when none did).
    pub upstream: &'a str,
    /// The client's address.
    pub client: &'a str,
}

impl AccessEntry<'_> {
    /// The access line in logfmt (greppable and machine-readable), e.g.
    /// `method=GET path=/echo/hi status=200 bytes=12 duration_ms=0.412 upstream=v1 client=10.0.0.1:5555`.
    pub fn to_line(&self) -> String {
        let mut out = String::with_capacity(96 + self.path.len());
        out.push_str("method=");
        push_logfmt(&mut out, self.method);
        out.push_str(" path=");
        push_logfmt(&mut out, self.path);
        out.push_str(&format!(
            " status={} bytes={} duration_ms={:.3} upstream=",
            self.status,
            self.bytes,
            self.duration.as_secs_f64() * 1000.0
        ));
        push_logfmt(&mut out, self.upstream);
        out.push_str(" client=");
        push_logfmt(&mut out, self.client);
        out
    }
}

/// Appends a logfmt value, quoted only when it has spaces, quotes or `=`.
fn push_logfmt(out: &mut String, value: &str) {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        out.push_str(value);
    } else {
        out.push_str(&serde_json::Value::from(value).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print_lowercase() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!("APP".parse::<Kind>().unwrap(), Kind::App);
        let err = "apps".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("app, build, access, ship, health"), "{err}");
    }

    #[test]
    fn times_parse_as_durations_ago_or_utc_dates() {
        let now = 1_700_000_000_000_000_000;
        assert_eq!(parse_time("10m", now).unwrap(), now - 600_000_000_000);
        assert_eq!(parse_time("1h 30m", now).unwrap(), now - 5_400_000_000_000);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14 22:13:20", now).unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_time("yesterday-ish", now),
            Err(RecordError::BadTime("yesterday-ish".into()))
        );
        assert_eq!(
            parse_time("1969-12-31T23:59:59Z", now),
            Err(RecordError::BadTime("1969-12-31T23:59:59Z".into()))
        );
        assert_eq!(
            format_time(1_700_000_000_000_001_000),
            "2023-11-14T22:13:20.000001Z"
        );
    }

    #[test]
    fn access_lines_are_logfmt() {
        let line = AccessEntry {
            method: "GET",
            path: "/echo/a b",
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(412),
            upstream: "abc123-r4",
            client: "127.0.0.1:5555",
        }
        .to_line();
        assert_eq!(
            line,
            "method=GET path=\"/echo/a b\" status=200 bytes=12 duration_ms=0.412 \
             upstream=abc123-r4 client=127.0.0.1:5555"
        );
    }

    #[test]
    fn records_print_for_people() {
        let meta = RecordMeta {
            ship: "s1".into(),
            service: "echo".into(),
            version: "v1".into(),
            container: String::new(),
            kind: Kind::Build,
            stream: "build".into(),
        };
        let mut r = Record::now(&meta, "compiling");
        r.time_ns = 1_700_000_000_000_000_000;
        assert_eq!(
            r.to_string(),
            "2023-11-14T22:13:20.000000Z echo v1 build: compiling"
        );
    }
}
