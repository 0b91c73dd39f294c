//! The log query shared by `GET /logs` and `starphleet logs`.

use starphleet_telemetry::{now_ns, parse_time, Kind, Query};

/// How many records a query returns unless it names a limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// A query parameter that is not understood; the message names it and says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(String);

/// Builds a store query from the textual parameters; errors say which one is wrong and how.
pub fn parse_query(
    service: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    grep: Option<&str>,
    kind: Option<&str>,
    limit: Option<&str>,
) -> Result<Query, QueryError> {
    let now = now_ns();
    let time = |name: &str, v: Option<&str>| -> Result<Option<u64>, QueryError> {
        v.filter(|t| !t.is_empty())
            .map(|t| {
                parse_time(t, now).map_err(|e| {
                    QueryError(format!(
                        "--{name} {t}: {e} (use e.g. 10m, 2h, or 2026-11-27T08:00:00Z)"
                    ))
                })
            })
            .transpose()
    };
    let kind = kind
        .filter(|k| !k.is_empty())
        .map(|k| {
            k.parse::<Kind>()
                .map_err(|e| QueryError(format!("--kind {k}: {e}")))
        })
        .transpose()?;
    let limit = match limit.filter(|l| !l.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| QueryError(format!("--limit {l}: not a number of lines")))?,
        ),
        None => Some(DEFAULT_LIMIT),
    };
    Ok(Query {
        service: service.filter(|s| !s.is_empty()).map(str::to_string),
        since_ns: time("since", since)?,
        until_ns: time("until", until)?,
        grep: grep.filter(|g| !g.is_empty()).map(str::to_string),
        kind,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_explains_bad_parameters() {
        let q = parse_query(
            Some("echo"),
            Some("10m"),
            None,
            Some("GET"),
            Some("access"),
            None,
        )
        .unwrap();
        assert_eq!(q.service.as_deref(), Some("echo"));
        assert!(q.since_ns.unwrap() < now_ns());
        assert_eq!(q.kind, Some(Kind::Access));
        assert_eq!(q.limit, Some(DEFAULT_LIMIT));
        let err = parse_query(None, Some("yesterday-ish"), None, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--since yesterday-ish"), "{err}");
        let err = parse_query(None, None, None, None, Some("apps"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kind apps"), "{err}");
        let err = parse_query(None, None, None, None, None, Some("many"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--limit many"), "{err}");
    }
}
