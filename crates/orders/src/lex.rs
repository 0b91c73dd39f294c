//! Line splitting and POSIX-shell-like word splitting that remembers columns.
//!
//! No shell is ever run: quotes and backslashes are interpreted here so users
//! can write values with spaces, and every word keeps where it came from so a
//! diagnostic can put its caret under the exact chars.

use std::path::Path;

use crate::diagnostic::{quote, Diagnostic};
use crate::env::{entry_bytes, MAX_ENV_ENTRY_BYTES};

/// One line of a file, without its line ending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceLine<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The text, `\r\n` endings already stripped.
    pub text: &'a str,
}

/// Split a file into lines; a UTF-8 byte order mark is ignored, CRLF is accepted.
pub(crate) fn source_lines(text: &str) -> impl Iterator<Item = SourceLine<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().map(|(i, l)| SourceLine {
        number: i + 1,
        text: l.strip_suffix('\r').unwrap_or(l),
    })
}

/// Where something is on a line: 1-based char column and char count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub col: usize,
    pub width: usize,
}

/// A word after quote removal, with where each of its chars came from.
#[derive(Debug, Clone)]
pub(crate) struct Word {
    /// The word's value (quotes and escapes removed).
    pub text: String,
    /// The whole word as written, quotes included.
    pub span: Span,
    /// Byte offset just past the word in the line.
    pub end_byte: usize,
    /// Source column of each char of `text`.
    cols: Vec<usize>,
}

/// Part of a word (e.g. the value of `--url=/x`), with its span.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub text: String,
    pub span: Span,
}

impl Word {
    /// Span of chars `start..end` of `text` in the source; the whole word if that is empty.
    pub fn sub_span(&self, start: usize, end: usize) -> Span {
        if start < end && end <= self.cols.len() {
            let col = self.cols[start];
            Span {
                col,
                width: self.cols[end - 1] + 1 - col,
            }
        } else {
            self.span
        }
    }

    /// The whole word as a `Part`.
    pub fn part(&self) -> Part {
        Part {
            text: self.text.clone(),
            span: self.span,
        }
    }

    /// Split at the first `=` into name and value parts.
    pub fn split_eq(&self) -> Option<(Part, Part)> {
        let byte = self.text.find('=')?;
        let eq = self.text[..byte].chars().count();
        let len = self.text.chars().count();
        let name = Part {
            text: self.text[..byte].to_string(),
            span: if eq == 0 {
                self.sub_span(0, 1)
            } else {
                self.sub_span(0, eq)
            },
        };
        let value = Part {
            text: self.text[byte + 1..].to_string(),
            span: if eq + 1 == len {
                self.sub_span(eq, eq + 1)
            } else {
                self.sub_span(eq + 1, len)
            },
        };
        Some((name, value))
    }
}

/// A line split into words, plus where a trailing comment starts.
#[derive(Debug, Clone)]
pub(crate) struct Lexed {
    pub words: Vec<Word>,
    /// Byte offset of the `#` that starts a comment, if any.
    pub comment_byte: Option<usize>,
}

/// Why a line could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LexError {
    /// A quote opened at this column is never closed on the line.
    Unterminated { col: usize, quote: char },
    /// The line ends with an unquoted backslash.
    TrailingBackslash { col: usize },
}

/// Split one line into words like a POSIX shell would (without expansions).
pub(crate) fn split_words(line: &str) -> Result<Lexed, LexError> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let byte_at = |i: usize| chars.get(i).map_or(line.len(), |&(b, _)| b);
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < n && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i == n {
            return Ok(Lexed {
                words,
                comment_byte: None,
            });
        }
        // `#` is a comment only where a new word would start, as in sh.
        if chars[i].1 == '#' {
            return Ok(Lexed {
                words,
                comment_byte: Some(byte_at(i)),
            });
        }
        let start = i;
        let mut text = String::new();
        let mut cols = Vec::new();
        while i < n && !chars[i].1.is_whitespace() {
            match chars[i].1 {
                '\'' => {
                    let open = i;
                    i += 1;
                    loop {
                        if i == n {
                            return Err(LexError::Unterminated {
                                col: open + 1,
                                quote: '\'',
                            });
                        }
                        if chars[i].1 == '\'' {
                            i += 1;
                            break;
                        }
                        text.push(chars[i].1);
                        cols.push(i + 1);
                        i += 1;
                    }
                }
                '"' => {
                    let open = i;
                    i += 1;
                    loop {
                        if i == n {
                            return Err(LexError::Unterminated {
                                col: open + 1,
                                quote: '"',
                            });
                        }
                        let c = chars[i].1;
                        if c == '"' {
                            i += 1;
                            break;
                        }
                        // Inside double quotes only these are escapable, as in sh.
                        if c == '\\'
                            && i + 1 < n
                            && matches!(chars[i + 1].1, '"' | '\\' | '$' | '`')
                        {
                            text.push(chars[i + 1].1);
                            cols.push(i + 2);
                            i += 2;
                            continue;
                        }
                        text.push(c);
                        cols.push(i + 1);
                        i += 1;
                    }
                }
                '\\' => {
                    if i + 1 == n {
                        return Err(LexError::TrailingBackslash { col: i + 1 });
                    }
                    text.push(chars[i + 1].1);
                    cols.push(i + 2);
                    i += 2;
                }
                c => {
                    text.push(c);
                    cols.push(i + 1);
                    i += 1;
                }
            }
        }
        words.push(Word {
            text,
            span: Span {
                col: start + 1,
                width: i - start,
            },
            end_byte: byte_at(i),
            cols,
        });
    }
}

/// Diagnostics kept per file: past this a file is not worth reading error by
/// error, and each one holds a copy of its (possibly huge) line.
const MAX_DIAGNOSTICS: usize = 50;

/// Collects diagnostics for one file.
pub(crate) struct Report<'a> {
    path: &'a Path,
    pub diags: Vec<Diagnostic>,
    /// Errors found beyond `MAX_DIAGNOSTICS`.
    dropped: usize,
}

impl<'a> Report<'a> {
    /// An empty report for `path`.
    pub fn new(path: &'a Path) -> Self {
        Report {
            path,
            diags: Vec::new(),
            dropped: 0,
        }
    }

    /// Record an error at `span` of `line`.
    pub fn error(&mut self, line: SourceLine<'_>, span: Span, message: String, help: String) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            self.dropped += 1;
            return;
        }
        self.diags.push(
            Diagnostic::at(
                self.path,
                line.number,
                span.col,
                span.width,
                line.text,
                message,
            )
            .with_help(help),
        );
    }

    /// Split `line` into words, reporting quoting errors; `None` if it cannot be split.
    pub fn lex(&mut self, line: SourceLine<'_>) -> Option<Lexed> {
        match split_words(line.text) {
            Ok(lexed) => Some(lexed),
            Err(LexError::Unterminated { col, quote: q }) => {
                let name = if q == '"' { "double" } else { "single" };
                self.error(
                    line,
                    Span { col, width: 1 },
                    format!("unterminated {name} quote"),
                    format!("close it with `{q}` on the same line; a value cannot span lines"),
                );
                None
            }
            Err(LexError::TrailingBackslash { col }) => {
                self.error(
                    line,
                    Span { col, width: 1 },
                    "line ends with a backslash".into(),
                    "lines do not continue onto the next one; put it all on one line, \
                     or quote a literal backslash: '\\'"
                        .into(),
                );
                None
            }
        }
    }

    /// Sorted by position, so output reads top to bottom.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| (d.line, d.column));
        if self.dropped > 0 {
            self.diags.push(
                Diagnostic::file(
                    self.path,
                    format!("… and {} more errors in this file", self.dropped),
                )
                .with_help("fix the errors above and check again"),
            );
        }
        self.diags
    }
}

/// Report the first word after `taken` words as unexpected, if there is one.
pub(crate) fn reject_extra(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    words: &[Word],
    taken: usize,
    help: String,
) {
    if let Some(extra) = words.get(taken) {
        report.error(
            line,
            extra.span,
            format!(
                "unexpected argument {} for {}",
                quote(&extra.text),
                quote(&words[0].text)
            ),
            help,
        );
    }
}

/// Report a keyword that may appear once, given again.
pub(crate) fn twice(report: &mut Report<'_>, line: SourceLine<'_>, kw: &Word, first: usize) {
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

/// Whether `s` is a valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse `KEY=VALUE` words into `out`, reporting each bad one.
///
/// `words` are the pair words only (the keyword, if any, already removed);
/// `keyword` names it in the "needs at least one" error.
pub(crate) fn parse_pairs(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    keyword: Option<&Word>,
    words: &[Word],
    out: &mut Vec<(String, String)>,
) {
    parse_pairs_spanned(report, line, keyword, words, out, &mut Vec::new());
}

/// [`parse_pairs`], also pushing the span of each accepted value to `spans`.
pub(crate) fn parse_pairs_spanned(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    keyword: Option<&Word>,
    words: &[Word],
    out: &mut Vec<(String, String)>,
    spans: &mut Vec<Span>,
) {
    if words.is_empty() {
        if let Some(kw) = keyword {
            report.error(
                line,
                kw.span,
                format!("{} needs at least one KEY=VALUE", quote(&kw.text)),
                format!("e.g. `{} GREETING=\"hello world\"`", kw.text.to_lowercase()),
            );
        }
        return;
    }
    let mut saw_pair = false;
    for w in words {
        let Some((name, value)) = w.split_eq() else {
            let help = if saw_pair {
                "a value with spaces must be quoted, e.g. `GREETING=\"hello world\"`".to_string()
            } else if is_env_name(&w.text) {
                format!(
                    "write `{}=value` (or `{}=` for an empty value)",
                    w.text, w.text
                )
            } else {
                "write `NAME=value`".to_string()
            };
            report.error(
                line,
                w.span,
                format!("missing `=` in {}", quote(&w.text)),
                help,
            );
            continue;
        };
        saw_pair = true;
        if name.text.is_empty() {
            report.error(
                line,
                name.span,
                "missing variable name before `=`".into(),
                "write `NAME=value`".into(),
            );
        } else if !is_env_name(&name.text) {
            report.error(
                line,
                name.span,
                format!("invalid variable name {}", quote(&name.text)),
                "names start with a letter or `_` and contain only letters, digits and `_`".into(),
            );
        } else if entry_bytes(&name.text, &value.text) > MAX_ENV_ENTRY_BYTES {
            report.error(
                line,
                value.span,
                format!(
                    "variable {} is too long: {} bytes, at most {MAX_ENV_ENTRY_BYTES} (128 KiB, \
                     counting KEY=VALUE plus one byte)",
                    quote(&name.text),
                    entry_bytes(&name.text, &value.text)
                ),
                "Linux refuses to start a process with a variable this long (\"argument list too \
                 long\"), so the deploy would fail; pass large data to the app as a file"
                    .into(),
            );
        } else {
            out.push((name.text, value.text));
            spans.push(value.span);
        }
    }
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .map(|&c| (strsim::damerau_levenshtein(&word, c), c))
        .filter(|&(d, c)| d > 0 && d <= (c.chars().count() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split_words(line)
            .unwrap()
            .words
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(words("a  b\tc"), ["a", "b", "c"]);
        assert_eq!(
            words(r#"export G="hello world""#),
            ["export", "G=hello world"]
        );
        assert_eq!(words("x='a b'c"), ["x=a bc"]);
        assert_eq!(words(r"a\ b"), ["a b"]);
        assert_eq!(words(r#""a\"b\\c\$d\n""#), [r#"a"b\c$d\n"#]);
        assert_eq!(words(r"'a\b'"), [r"a\b"]);
        assert_eq!(words(r#""" ''"#), ["", ""]);
    }

    #[test]
    fn hash_is_a_comment_only_at_a_word_start() {
        let l = split_words("autodeploy git@h:a.git#main # the app").unwrap();
        assert_eq!(l.words.len(), 2);
        assert_eq!(l.words[1].text, "git@h:a.git#main");
        assert_eq!(l.comment_byte, Some(28));
        assert_eq!(words("a '#b' \"#c\" \\#d #e"), ["a", "#b", "#c", "#d"]);
        assert!(words("# all comment").is_empty());
    }

    #[test]
    fn remembers_columns_in_chars() {
        let l = split_words("é  \"x y\"=z").unwrap();
        assert_eq!(l.words[1].span, Span { col: 4, width: 7 });
        // The `z` after the closing quote is column 10.
        let (name, value) = l.words[1].split_eq().unwrap();
        assert_eq!(name.text, "x y");
        assert_eq!(name.span, Span { col: 5, width: 3 });
        assert_eq!(value.span, Span { col: 10, width: 1 });
    }

    #[test]
    fn unterminated_quotes_point_at_the_quote() {
        assert_eq!(
            split_words("export A=\"abc").unwrap_err(),
            LexError::Unterminated {
                col: 10,
                quote: '"'
            }
        );
        assert_eq!(
            split_words("a 'b").unwrap_err(),
            LexError::Unterminated {
                col: 3,
                quote: '\''
            }
        );
        assert_eq!(
            split_words("a b\\").unwrap_err(),
            LexError::TrailingBackslash { col: 4 }
        );
    }

    #[test]
    fn lines_strip_crlf_and_bom() {
        let lines: Vec<_> = source_lines("\u{feff}a\r\nb\n").map(|l| l.text).collect();
        assert_eq!(lines, ["a", "b", ""]);
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("_A1"));
        assert!(is_env_name("a"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn suggestions_need_to_be_close() {
        let kws = ["publish", "autodeploy", "env"];
        assert_eq!(did_you_mean("publsh", &kws), Some("publish"));
        assert_eq!(did_you_mean("PUBLSH", &kws), Some("publish"));
        assert_eq!(did_you_mean("autodeplyo", &kws), Some("autodeploy"));
        assert_eq!(did_you_mean("xyz", &kws), None);
        assert_eq!(did_you_mean("publish", &kws), None);
    }
}
