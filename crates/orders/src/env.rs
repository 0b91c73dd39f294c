//! `KEY=VALUE` env files: `.starphleet` in HQ and the ship's env folder.

use std::collections::HashMap;
use std::path::Path;

use crate::diagnostic::Diagnostic;
use crate::lex::{did_you_mean, parse_pairs_spanned, source_lines, Report, Span};
use crate::order::unknown_keyword;

/// Parse `KEY=VALUE` / `export KEY=VALUE` lines (several pairs per line allowed), in file order.
///
/// This is the grammar of `.starphleet`, of the ship's env folder and of an app's own
/// Heroku-style `.env`: values are split like a shell splits words (quote values with
/// spaces; `#` starts a comment at the start of a word) but never expanded.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, Vec<Diagnostic>> {
    parse_env_entries(path, text).map(|(pairs, _)| pairs)
}

/// Where a pair of an env file was written: its line number and the span of its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvAt {
    /// 1-based line.
    pub line: usize,
    /// The value on that line.
    pub span: Span,
}

/// The pairs of an env file in file order, and where each was written.
pub(crate) type EnvEntries = (Vec<(String, String)>, Vec<EnvAt>);

/// [`parse_env_file`], with where each pair was written.
pub(crate) fn parse_env_entries(path: &Path, text: &str) -> Result<EnvEntries, Vec<Diagnostic>> {
    let mut report = Report::new(path);
    let mut out = Vec::new();
    let mut spans = Vec::new();
    let mut lines = Vec::new();
    for line in source_lines(text) {
        let Some(lexed) = report.lex(line) else {
            continue;
        };
        let words = &lexed.words;
        let Some(first) = words.first() else {
            continue;
        };
        let is_word = first.split_eq().is_none();
        let lower = first.text.to_lowercase();
        if is_word && (lower == "export" || lower == "env") {
            parse_pairs_spanned(
                &mut report,
                line,
                Some(first),
                &words[1..],
                &mut out,
                &mut spans,
            );
        } else if is_word && words.len() > 1 && did_you_mean(&lower, &["export"]).is_some() {
            unknown_keyword(&mut report, line, first, &["export"], (&[], ""));
        } else {
            parse_pairs_spanned(&mut report, line, None, words, &mut out, &mut spans);
        }
        lines.resize(spans.len(), line.number);
    }
    let diags = report.finish();
    if diags.is_empty() {
        let at = lines
            .into_iter()
            .zip(spans)
            .map(|(line, span)| EnvAt { line, span })
            .collect();
        Ok((out, at))
    } else {
        Err(diags)
    }
}

/// Most environment variables one service may get from headquarters (`.starphleet` and its order).
pub const MAX_ENV_VARS: usize = 4096;

/// Most bytes of environment one service may get from headquarters, counting each
/// `KEY=VALUE` plus the NUL that ends it, as `execve` does. Linux allows a quarter of
/// the stack limit in total (2 MiB by default); this leaves room for the rest.
pub const MAX_ENV_BYTES: usize = 512 * 1024;

/// Longest single `KEY=VALUE` plus its NUL: Linux's `MAX_ARG_STRLEN` (32 pages of 4 KiB).
pub const MAX_ENV_ENTRY_BYTES: usize = 128 * 1024;

/// Why an over-limit environment could not be started.
pub(crate) const E2BIG_HELP: &str = "Linux refuses to start a process with an environment this \
     large (\"argument list too long\"), so the deploy would fail; remove variables, or pass large \
     data to the app as a file";

/// Bytes `execve` counts for one variable: `KEY=VALUE` and a NUL.
pub(crate) fn entry_bytes(key: &str, value: &str) -> usize {
    key.len() + 1 + value.len() + 1
}

/// The size of an environment as the ship will fold it (later values replace earlier ones).
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvSize {
    /// Bytes of each variable's current value.
    sizes: HashMap<String, usize>,
    /// Sum of `sizes`.
    total: usize,
}

/// Which limit an environment exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvExcess {
    /// This many variables, more than [`MAX_ENV_VARS`].
    Vars(usize),
    /// This many bytes, more than [`MAX_ENV_BYTES`].
    Bytes(usize),
}

impl EnvSize {
    /// The size of `pairs` folded.
    pub fn of(pairs: &[(String, String)]) -> Self {
        let mut size = Self::default();
        size.add_all(pairs);
        size
    }

    /// Add (or replace) each variable of `pairs`, in order.
    pub fn add_all(&mut self, pairs: &[(String, String)]) {
        for (key, value) in pairs {
            let bytes = entry_bytes(key, value);
            match self.sizes.get_mut(key) {
                Some(old) => {
                    self.total = self.total - *old + bytes;
                    *old = bytes;
                }
                None => {
                    self.sizes.insert(key.clone(), bytes);
                    self.total += bytes;
                }
            }
        }
    }

    /// How many variables there are.
    pub fn vars(&self) -> usize {
        self.sizes.len()
    }

    /// How many bytes they take.
    pub fn bytes(&self) -> usize {
        self.total
    }

    /// The limit this environment exceeds, if any.
    pub fn excess(&self) -> Option<EnvExcess> {
        if self.vars() > MAX_ENV_VARS {
            Some(EnvExcess::Vars(self.vars()))
        } else if self.total > MAX_ENV_BYTES {
            Some(EnvExcess::Bytes(self.total))
        } else {
            None
        }
    }
}

impl EnvExcess {
    /// One line saying what is over which limit.
    pub fn message(self) -> String {
        match self {
            EnvExcess::Vars(n) => {
                format!("too many environment variables: {n}, at most {MAX_ENV_VARS}")
            }
            EnvExcess::Bytes(n) => format!(
                "environment too large: {n} bytes, at most {MAX_ENV_BYTES} (512 KiB, counting \
                 each KEY=VALUE plus one byte)"
            ),
        }
    }
}
