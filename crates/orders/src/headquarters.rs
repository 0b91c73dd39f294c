//! A whole headquarters checkout: every order, the phleet settings, and cross-order checks.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::env::parse_env_file;
use crate::lex::{source_lines, split_words};
use crate::order::{parse_order, words_span, Order};

/// The phleet-wide settings file at the HQ root.
pub const SETTINGS_FILE: &str = ".starphleet";

/// Everything an HQ checkout says, valid or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headquarters {
    /// The valid orders, sorted by service.
    pub orders: Vec<Order>,
    /// `.starphleet` pairs in file order (empty when it is missing or broken).
    pub settings: Vec<(String, String)>,
    /// Orders that could not be accepted; they keep their last good version.
    pub broken: Vec<BrokenOrder>,
    /// Every diagnostic, `.starphleet` first, then orders in path order.
    pub errors: Vec<Diagnostic>,
}

/// An order file that has errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenOrder {
    /// Service name, as it would be if the order were valid.
    pub service: String,
    /// Path relative to HQ.
    pub path: PathBuf,
    /// What is wrong with it.
    pub diagnostics: Vec<Diagnostic>,
}

impl Headquarters {
    /// All diagnostics rendered, separated by blank lines, ending in a newline (empty if none).
    pub fn render_errors(&self) -> String {
        let mut out = self
            .errors
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Whether `.starphleet` has errors: consumers should then keep their last good settings.
    pub fn settings_broken(&self) -> bool {
        self.errors
            .iter()
            .any(|d| d.path == Path::new(SETTINGS_FILE))
    }
}

/// Find `*.orders` files under `dir` (relative paths), skipping hidden entries and
/// symlinked folders (which could loop).
fn find_orders(root: &Path, rel: &Path, found: &mut Vec<PathBuf>, errors: &mut Vec<Diagnostic>) {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            let shown = if rel.as_os_str().is_empty() {
                root
            } else {
                rel
            };
            errors.push(Diagnostic::file(
                shown,
                format!("cannot read headquarters folder: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let rel_path = rel.join(&name);
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            find_orders(root, &rel_path, found, errors);
        } else if name.as_encoded_bytes().ends_with(b".orders") {
            // A symlink to a file counts; fs::metadata follows it.
            if kind.is_file() || fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                found.push(rel_path);
            }
        }
    }
}

/// The service name for an order path: components joined by `/`, `.orders` removed.
fn service_name(rel: &Path) -> String {
    let joined = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    joined
        .strip_suffix(".orders")
        .unwrap_or(&joined)
        .to_string()
}

/// Read a file as UTF-8 text, or explain why not (pointing at the first bad byte).
fn read_text(root: &Path, rel: &Path) -> Result<String, Diagnostic> {
    let bytes = fs::read(root.join(rel))
        .map_err(|e| Diagnostic::file(rel, format!("cannot read file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&bytes[..good]);
        let line_no = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let rest = &bytes[good..];
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&bytes[..good + line_end]);
        let text = line[line_start..].trim_end_matches('\r').to_string();
        Diagnostic::at(
            rel,
            line_no,
            column,
            1,
            &text,
            format!("file is not valid UTF-8 (byte 0x{:02x})", bytes[good]),
        )
        .with_help("save the file as UTF-8 text")
    })
}

/// One order file's outcome while loading.
struct Loaded {
    service: String,
    path: PathBuf,
    text: String,
    result: Result<Order, Vec<Diagnostic>>,
}

/// Load a whole HQ checkout: never fails, every problem becomes a diagnostic.
pub fn load_headquarters(dir: &Path) -> Headquarters {
    let mut hq = Headquarters::default();
    let settings_rel = Path::new(SETTINGS_FILE);
    if dir.join(settings_rel).exists() {
        match read_text(dir, settings_rel)
            .map_err(|d| vec![d])
            .and_then(|text| parse_env_file(settings_rel, &text))
        {
            Ok(settings) => hq.settings = settings,
            Err(diags) => hq.errors.extend(diags),
        }
    }

    let mut paths = Vec::new();
    find_orders(dir, Path::new(""), &mut paths, &mut hq.errors);
    paths.sort();

    let mut loaded: Vec<Loaded> = paths
        .into_iter()
        .map(|path| {
            let service = service_name(&path);
            let (text, result) = match read_text(dir, &path) {
                Ok(text) => {
                    let result = parse_order(&service, &path, &text);
                    (text, result)
                }
                Err(d) => (String::new(), Err(vec![d])),
            };
            Loaded {
                service,
                path,
                text,
                result,
            }
        })
        .collect();

    // Later orders (by path) lose a clash over public port + URL prefix.
    let mut claims: HashMap<(u16, String), (PathBuf, usize)> = HashMap::new();
    for item in &mut loaded {
        let Ok(order) = &item.result else {
            continue;
        };
        let mut clashes = Vec::new();
        for p in &order.publish {
            if let Some((other, other_line)) = claims.get(&(p.public, p.url.clone())) {
                let text = source_lines(&item.text)
                    .nth(p.span_line - 1)
                    .map_or("", |l| l.text);
                let span = split_words(text).map_or(crate::lex::Span { col: 1, width: 1 }, |l| {
                    words_span(&l.words)
                });
                clashes.push(
                    Diagnostic::at(
                        &item.path,
                        p.span_line,
                        span.col,
                        span.width,
                        text,
                        format!(
                            "port {} and URL prefix `{}` are already published by {}:{}",
                            p.public,
                            p.url,
                            other.display(),
                            other_line
                        ),
                    )
                    .with_help(
                        "two services cannot share a public port and URL prefix; change `--url` \
                         or `--public` in one of the two orders",
                    ),
                );
            }
        }
        if clashes.is_empty() {
            for p in &order.publish {
                claims.insert((p.public, p.url.clone()), (item.path.clone(), p.span_line));
            }
        } else {
            item.result = Err(clashes);
        }
    }

    for item in loaded {
        match item.result {
            Ok(order) => hq.orders.push(order),
            Err(diagnostics) => {
                hq.errors.extend(diagnostics.iter().cloned());
                hq.broken.push(BrokenOrder {
                    service: item.service,
                    path: item.path,
                    diagnostics,
                });
            }
        }
    }
    hq.orders.sort_by(|a, b| a.service.cmp(&b.service));
    hq
}
