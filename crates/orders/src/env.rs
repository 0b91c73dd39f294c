//! `KEY=VALUE` env files: `.starphleet` in HQ and the ship's env folder.

use std::path::Path;

use crate::diagnostic::Diagnostic;
use crate::lex::{did_you_mean, parse_pairs, source_lines, Report};
use crate::order::unknown_keyword;

/// Parse `KEY=VALUE` / `export KEY=VALUE` lines (several pairs per line allowed), in file order.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, Vec<Diagnostic>> {
    let mut report = Report::new(path);
    let mut out = Vec::new();
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
            parse_pairs(&mut report, line, Some(first), &words[1..], &mut out);
        } else if is_word && words.len() > 1 && did_you_mean(&lower, &["export"]).is_some() {
            unknown_keyword(&mut report, line, first, &["export"], (&[], ""));
        } else {
            parse_pairs(&mut report, line, None, words, &mut out);
        }
    }
    let diags = report.finish();
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}
