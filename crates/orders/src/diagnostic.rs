//! Compiler-style diagnostics: `file:line:col: error: …`, the line, a caret, a help.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file (or the part it describes) cannot be used.
    #[default]
    Error,
    /// Works, but probably not as the operator wants; never blocks a deploy.
    Warning,
}

impl fmt::Display for Severity {
    /// `error` or `warning`, as printed after the location.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem found in a file, printed like a compiler error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning; diagnostics serialized before warnings existed are errors.
    #[serde(default)]
    pub severity: Severity,
    /// The file, as the user knows it (relative inside HQ, e.g. `team/api.orders`).
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in chars (not bytes).
    pub column: usize,
    /// How many carets to draw under the problem (at least 1).
    pub width: usize,
    /// What is wrong, one line.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// The offending line as written; empty for whole-file problems, which then print no caret block.
    pub source_line: String,
}

impl Diagnostic {
    /// A problem at `line:column`, `width` chars wide, in `source_line`.
    pub fn at(
        path: &Path,
        line: usize,
        column: usize,
        width: usize,
        source_line: &str,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.to_path_buf(),
            line: line.max(1),
            column: column.max(1),
            width: width.max(1),
            message: message.into(),
            help: None,
            source_line: source_line.to_string(),
        }
    }

    /// A problem with the whole file (unreadable, not UTF-8, bad name): `1:1`, no source shown.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::at(path, 1, 1, 1, "", message)
    }

    /// The same diagnostic with another severity, e.g. `Severity::Warning`.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// The same diagnostic with a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A diagnostic is an error value too, e.g. from [`crate::read_hq_file`].
impl std::error::Error for Diagnostic {}

/// Lines longer than this are shown as a window around the caret.
const MAX_SHOWN: usize = 160;
/// Chars kept before the caret when windowing a long line.
const CONTEXT: usize = 60;
/// Tabs are expanded so carets line up whatever the terminal's tab stops.
const TAB: &str = "    ";

/// Display width of one char of a source line as we print it.
fn char_width(c: char) -> usize {
    if c == '\t' {
        TAB.len()
    } else {
        1
    }
}

/// The source line as printed, the caret offset and the caret count.
fn render_source(line: &str, column: usize, width: usize) -> (String, usize, usize) {
    let chars: Vec<char> = line.chars().collect();
    let len = chars.len();
    let start = column.saturating_sub(1).min(len);
    let end = start.saturating_add(width.max(1)).min(len);
    let (from, to) = if len > MAX_SHOWN {
        let from = start.saturating_sub(CONTEXT);
        (from, len.min(from + MAX_SHOWN))
    } else {
        (0, len)
    };
    let mut shown = String::new();
    let mut offset = 0;
    if from > 0 {
        shown.push('…');
        offset += 1;
    }
    for (i, &c) in chars[from..to].iter().enumerate() {
        if from + i < start {
            offset += char_width(c);
        }
        match c {
            '\t' => shown.push_str(TAB),
            // Never send raw control characters to a terminal.
            c if c.is_control() => shown.push('\u{fffd}'),
            c => shown.push(c),
        }
    }
    if to < len {
        shown.push('…');
    }
    let carets: usize = chars[start.min(to)..end.min(to)]
        .iter()
        .map(|&c| char_width(c))
        .sum();
    (shown, offset, carets.max(1))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.severity,
            self.message
        )?;
        let gutter = if self.source_line.is_empty() {
            1
        } else {
            self.line.to_string().len()
        };
        let pad = " ".repeat(gutter);
        if !self.source_line.is_empty() {
            let (shown, offset, carets) = render_source(&self.source_line, self.column, self.width);
            write!(
                f,
                "\n{pad} |\n{} | {}\n{pad} | {}{}",
                self.line,
                shown,
                " ".repeat(offset),
                "^".repeat(carets)
            )?;
        }
        if let Some(help) = &self.help {
            let mut lines = help.lines();
            write!(f, "\n{pad} = help: {}", lines.next().unwrap_or(""))?;
            for more in lines {
                write!(f, "\n{pad}         {more}")?;
            }
        }
        Ok(())
    }
}

/// Quote user text for a message: backticks, control chars escaped, long text shortened.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::from("`");
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::at(
            Path::new("team/api.orders"),
            3,
            9,
            8,
            "publish --privat 3000",
            "unknown flag `--privat` for `publish`",
        )
        .with_help("did you mean `--private`?");
        assert_eq!(
            d.to_string(),
            "team/api.orders:3:9: error: unknown flag `--privat` for `publish`\n  \
             |\n3 | publish --privat 3000\n  |         ^^^^^^^^\n  = help: did you mean `--private`?"
        );
    }

    #[test]
    fn warnings_say_warning() {
        let d = Diagnostic::file(Path::new("certs/app.test.key"), "a private key is in git")
            .with_severity(Severity::Warning)
            .with_help("move it");
        assert_eq!(
            d.to_string(),
            "certs/app.test.key:1:1: warning: a private key is in git\n  = help: move it"
        );
        // Diagnostics stored before severities existed read back as errors.
        let old = r#"{"path":"a","line":1,"column":1,"width":1,"message":"m","help":null,"source_line":""}"#;
        let d: Diagnostic = serde_json::from_str(old).unwrap();
        assert_eq!(d.severity, Severity::Error);
        assert!(serde_json::to_string(&d.with_severity(Severity::Warning))
            .unwrap()
            .contains(r#""severity":"warning""#));
    }

    #[test]
    fn gutter_grows_with_line_number() {
        let d = Diagnostic::at(
            Path::new("a.orders"),
            120,
            1,
            4,
            "drai 5s",
            "unknown keyword",
        );
        assert_eq!(
            d.to_string(),
            "a.orders:120:1: error: unknown keyword\n    |\n120 | drai 5s\n    | ^^^^"
        );
    }

    #[test]
    fn file_errors_have_no_source_block() {
        let d = Diagnostic::file(Path::new("x.orders"), "cannot read file").with_help("fix it");
        assert_eq!(
            d.to_string(),
            "x.orders:1:1: error: cannot read file\n  = help: fix it"
        );
    }

    #[test]
    fn multi_line_help_is_indented() {
        let d = Diagnostic::file(Path::new("x"), "m").with_help("one\ntwo");
        assert_eq!(
            d.to_string(),
            "x:1:1: error: m\n  = help: one\n          two"
        );
    }

    #[test]
    fn tabs_expand_and_carets_follow() {
        let d = Diagnostic::at(Path::new("a"), 1, 2, 3, "\tfoo", "m");
        assert_eq!(
            d.to_string(),
            "a:1:2: error: m\n  |\n1 |     foo\n  |     ^^^"
        );
    }

    #[test]
    fn multibyte_chars_count_as_one_column() {
        let d = Diagnostic::at(Path::new("a"), 1, 3, 1, "éé x", "m");
        assert!(d.to_string().ends_with("1 | éé x\n  |   ^"));
    }

    #[test]
    fn long_lines_are_windowed_around_the_caret() {
        let line = format!("{}BAD{}", "a".repeat(1000), "b".repeat(1000));
        let d = Diagnostic::at(Path::new("a"), 1, 1001, 3, &line, "m");
        let text = d.to_string();
        let shown = text.lines().nth(2).unwrap();
        let carets = text.lines().nth(3).unwrap();
        assert!(shown.chars().count() < 200, "{shown}");
        let caret_at = carets.chars().position(|c| c == '^').unwrap();
        let under: String = shown.chars().skip(caret_at).take(3).collect();
        assert_eq!(under, "BAD");
        assert_eq!(carets.matches('^').count(), 3);
    }

    #[test]
    fn control_chars_are_not_printed_raw() {
        let d = Diagnostic::at(Path::new("a"), 1, 1, 1, "\u{1b}[31mx", "m");
        assert!(!d.to_string().contains('\u{1b}'));
        assert_eq!(quote("a\u{1b}b"), "`a\\u{1b}b`");
    }

    #[test]
    fn carets_past_end_of_line_do_not_panic() {
        let d = Diagnostic::at(Path::new("a"), 1, 50, 9, "short", "m");
        assert!(d.to_string().ends_with("|      ^"));
    }
}
