//! The `ships` file at the HQ root: the phleet's ships and their admin endpoints.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{quote, Diagnostic};
use crate::lex::{source_lines, Report};
use crate::values::check_admin_url;

/// The file listing the phleet's ships, at the HQ root.
pub const SHIPS_FILE: &str = "ships";

/// One valid line of `ships`: `NAME URL`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShipEntry {
    /// The ship's name as written: a host-name-like label, at most 63 chars.
    pub name: String,
    /// Its admin endpoint, normalised to `http://host:port` or `https://host:port` (lower case).
    pub url: String,
    /// 1-based line in `ships`.
    pub line: usize,
}

/// Longest ship name: one DNS label.
const MAX_SHIP_NAME: usize = 63;

/// The form of a line, for help texts.
const LINE_HELP: &str = "one ship per line: `NAME URL`, e.g. `north http://10.1.0.11:9797`";

/// Whether `s` is `[A-Za-z0-9][A-Za-z0-9-]*` of at most 63 chars.
fn is_ship_name(s: &str) -> bool {
    s.len() <= MAX_SHIP_NAME
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parse a `ships` file: the valid lines, and a diagnostic for every other one.
///
/// Names are compared without case, URLs after normalising: a repeat of either is
/// an error on the later line, which is then left out.
pub fn parse_ships(path: &Path, text: &str) -> (Vec<ShipEntry>, Vec<Diagnostic>) {
    let mut report = Report::new(path);
    let mut ships: Vec<ShipEntry> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut urls: HashMap<String, usize> = HashMap::new();
    let file = path.display().to_string();
    for line in source_lines(text) {
        let Some(lexed) = report.lex(line) else {
            continue;
        };
        let words = &lexed.words;
        let Some(name) = words.first() else {
            continue;
        };
        let mut ok = true;
        if !is_ship_name(&name.text) {
            ok = false;
            let why = if name.text.len() > MAX_SHIP_NAME {
                format!(
                    "{} characters, at most {MAX_SHIP_NAME}",
                    name.text.chars().count()
                )
            } else {
                "names are letters, digits and `-`, starting with a letter or digit".into()
            };
            report.error(
                line,
                name.span,
                format!("invalid ship name {}: {why}", quote(&name.text)),
                format!("a ship name is a host-name-like label such as `north` or `ship-2`; {LINE_HELP}"),
            );
        }
        let Some(url) = words.get(1) else {
            report.error(
                line,
                name.span,
                format!("ship {} needs an admin URL", quote(&name.text)),
                format!("{LINE_HELP}: the address `starphleet ship --admin` listens on"),
            );
            continue;
        };
        let normal = match check_admin_url(&url.text) {
            Ok(normal) => Some(normal),
            Err(why) => {
                ok = false;
                report.error(
                    line,
                    url.span,
                    format!("invalid admin URL {}: {why}", quote(&url.text)),
                    "write `http://HOST:PORT` or `https://HOST:PORT`, e.g. \
                     `http://10.1.0.11:9797`: the address `starphleet ship --admin` listens on"
                        .into(),
                );
                None
            }
        };
        if let Some(extra) = words.get(2) {
            ok = false;
            report.error(
                line,
                extra.span,
                format!("unexpected argument {} in `ships`", quote(&extra.text)),
                LINE_HELP.into(),
            );
        }
        let key = name.text.to_ascii_lowercase();
        if let Some(&first) = names.get(&key) {
            ok = false;
            report.error(
                line,
                name.span,
                format!(
                    "ship name {} is already used on {file}:{first}",
                    quote(&name.text)
                ),
                "every ship needs its own name (names are compared without case); rename or \
                 remove one of the two lines"
                    .into(),
            );
        }
        if let Some(normal) = &normal {
            if let Some(&first) = urls.get(normal) {
                ok = false;
                report.error(
                    line,
                    url.span,
                    format!(
                        "admin URL {} is already listed on {file}:{first}",
                        quote(&url.text)
                    ),
                    "two lines for the same ship would show it twice in phleet views; remove \
                     one of them"
                        .into(),
                );
            }
        }
        if !ok {
            continue;
        }
        let Some(normal) = normal else { continue };
        names.insert(key, line.number);
        urls.insert(normal.clone(), line.number);
        ships.push(ShipEntry {
            name: name.text.clone(),
            url: normal,
            line: line.number,
        });
    }
    (ships, report.finish())
}
