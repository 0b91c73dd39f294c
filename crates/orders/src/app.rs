//! The app repository's `Starphleet` file (and the `Procfile` fallback).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{quote, Diagnostic};
use crate::lex::{parse_pairs, reject_extra, source_lines, Report, SourceLine, Word};
use crate::order::{check_health_path, unknown_keyword};

/// What an app repository says about building and running itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Shell commands run in order at build time, each with `/bin/sh -c`.
    pub build: Vec<String>,
    /// Shell command that starts the service (`/bin/sh -c`); `None` falls back to the Procfile.
    pub start: Option<String>,
    /// Default health check path for orders that name none.
    pub healthcheck: Option<String>,
    /// `export`/`env` pairs in file order.
    pub env: Vec<(String, String)>,
}

/// Keywords of a `Starphleet` file, in the order the help lists them.
const KEYWORDS: &[&str] = &["build", "start", "healthcheck", "export", "env"];

/// Keywords that belong in an order rather than in the app.
const ORDER_ONLY: &[&str] = &["autodeploy", "publish", "drain", "instances"];

/// The rest of the line after the keyword, as the shell will get it: the
/// command is run by `/bin/sh -c`, so its quoting must reach the shell intact.
fn raw_rest(line: &str, keyword: &Word, comment_byte: Option<usize>) -> String {
    let end = comment_byte.unwrap_or(line.len());
    line.get(keyword.end_byte..end)
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Parse a `Starphleet` file; every problem is returned.
pub fn parse_app(path: &Path, text: &str) -> Result<AppSpec, Vec<Diagnostic>> {
    let mut report = Report::new(path);
    let mut spec = AppSpec::default();
    let mut start_line: Option<usize> = None;
    let mut health_line: Option<usize> = None;
    for line in source_lines(text) {
        let Some(lexed) = report.lex(line) else {
            continue;
        };
        let words = &lexed.words;
        let Some(kw) = words.first() else {
            continue;
        };
        let lower = kw.text.to_lowercase();
        match lower.as_str() {
            "build" | "start" => {
                let command = raw_rest(line.text, kw, lexed.comment_byte);
                if command.is_empty() {
                    report.error(
                        line,
                        kw.span,
                        format!("`{lower}` needs a command"),
                        format!(
                            "e.g. `{lower} {}`; it is run with /bin/sh -c in /app",
                            if lower == "build" {
                                "npm ci"
                            } else {
                                "python3 server.py"
                            }
                        ),
                    );
                } else if lower == "build" {
                    spec.build.push(command);
                } else if let Some(first) = start_line {
                    twice(&mut report, line, kw, first);
                } else {
                    start_line = Some(line.number);
                    spec.start = Some(command);
                }
            }
            "healthcheck" => {
                if let Some(first) = health_line {
                    twice(&mut report, line, kw, first);
                    continue;
                }
                health_line = Some(line.number);
                let Some(arg) = words.get(1) else {
                    report.error(
                        line,
                        kw.span,
                        "`healthcheck` needs a path".into(),
                        "e.g. `healthcheck /health`: a version is healthy once `GET /health` answers 2xx"
                            .into(),
                    );
                    continue;
                };
                reject_extra(
                    &mut report,
                    line,
                    words,
                    2,
                    "`healthcheck` in `Starphleet` takes one path; set `--timeout` in the order"
                        .into(),
                );
                match check_health_path(&arg.text) {
                    Ok(()) => spec.healthcheck = Some(arg.text.clone()),
                    Err((message, help)) => report.error(line, arg.span, message, help),
                }
            }
            "export" | "env" => {
                parse_pairs(&mut report, line, Some(kw), &words[1..], &mut spec.env)
            }
            _ => unknown_keyword(
                &mut report,
                line,
                kw,
                KEYWORDS,
                (ORDER_ONLY, "the service's `.orders` file in headquarters"),
            ),
        }
    }
    let diags = report.finish();
    if diags.is_empty() {
        Ok(spec)
    } else {
        Err(diags)
    }
}

/// Report a keyword that may appear once, given again.
fn twice(report: &mut Report<'_>, line: SourceLine<'_>, kw: &Word, first: usize) {
    let lower = kw.text.to_lowercase();
    report.error(
        line,
        kw.span,
        format!(
            "{} is given twice; the first is on line {first}",
            quote(&lower)
        ),
        format!("keep one `{lower}` line"),
    );
}

/// The `web:` command of a Heroku-style `Procfile`, trimmed.
pub fn parse_procfile(text: &str) -> Option<String> {
    source_lines(text).find_map(|line| {
        let t = line.text.trim();
        let (name, command) = t.split_once(':')?;
        let command = command.trim();
        (!t.starts_with('#') && name.trim() == "web" && !command.is_empty())
            .then(|| command.to_string())
    })
}
