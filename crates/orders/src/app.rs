//! The app repository's `Starphleet` file (and the `Procfile` fallback).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::lex::{parse_pairs, reject_extra, source_lines, twice, Report, Word};
use crate::order::{
    build_timeout, check_health_path, git_source, is_build_timeout, unknown_keyword, GitLine,
    GitSource,
};
use crate::resources::{
    base_line, base_repeated, resource_line, BaseImage, ResourceLines, Resources,
};

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
    /// `memory`, `cpus`, `pids`: defaults the order's own limits win over, field by field.
    #[serde(default)]
    pub resources: Resources,
    /// `build --timeout`: how long a build may take (the order's wins).
    #[serde(default)]
    pub build_timeout: Option<Duration>,
    /// `buildpack URL[#ref]` lines in file order: classic buildpacks to build with.
    #[serde(default)]
    pub buildpacks: Vec<GitSource>,
    /// `base`: the root filesystem to run on (the order's wins).
    #[serde(default)]
    pub base: Option<BaseImage>,
}

/// Keywords of a `Starphleet` file, in the order the help lists them.
const KEYWORDS: &[&str] = &[
    "build",
    "start",
    "healthcheck",
    "export",
    "env",
    "memory",
    "cpus",
    "pids",
    "buildpack",
    "base",
];

/// `buildpack` in a `Starphleet` file.
const BUILDPACK_LINE: GitLine = GitLine {
    keyword: "buildpack",
    verb: "use",
    example: "e.g. `buildpack https://github.com/heroku/heroku-buildpack-python.git` or \
              `buildpack https://github.com/heroku/heroku-buildpack-nodejs.git#v250`",
};

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
    let mut build_timeout_line: Option<usize> = None;
    let mut base_first: Option<usize> = None;
    let mut resource_lines = ResourceLines::default();
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
            "build" if is_build_timeout(words) => {
                if let Some(first) = build_timeout_line {
                    twice(&mut report, line, kw, first);
                } else {
                    build_timeout_line = Some(line.number);
                    spec.build_timeout = build_timeout(&mut report, line, words);
                }
            }
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
            "memory" | "cpus" | "pids" => resource_line(
                &mut report,
                line,
                words,
                &mut resource_lines,
                &mut spec.resources,
            ),
            "buildpack" => {
                if let Some(source) = git_source(&mut report, line, words, &BUILDPACK_LINE) {
                    spec.buildpacks.push(source);
                }
            }
            "base" => {
                if !base_repeated(&mut report, line, kw, &mut base_first) {
                    spec.base = base_line(&mut report, line, words);
                }
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

/// The health check path in an app's `healthcheck` file: its first line that is neither
/// blank nor a `#` comment, trimmed, if that is a path (`/…`, no whitespace); else `None`.
pub fn parse_healthcheck_file(text: &str) -> Option<String> {
    let first = source_lines(text)
        .map(|l| l.text.trim())
        .find(|t| !t.is_empty() && !t.starts_with('#'))?;
    check_health_path(first).ok().map(|()| first.to_string())
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
