//! A whole headquarters checkout: every order, the phleet settings, and cross-order checks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::certs::{covers, file_stem, load_certs, HqCert};
use crate::diagnostic::{Diagnostic, Severity};
use crate::env::{parse_env_entries, EnvSize, E2BIG_HELP};
use crate::hq_file::{
    kind_at, open_root, open_subdir, read_text_beneath, Kind, OpenDirError, SYMLINK_MESSAGE,
    WALK_SYMLINK_HELP,
};
use crate::lex::{source_lines, split_words, Span};
use crate::order::{
    flag_values, parse_order, public_port_span, route_keys, tls_mismatch_help,
    tls_mismatch_message, words_span, Order, RouteKey, MAX_SERVICE_DEPTH,
};
use crate::phleet::{phleet_settings, PhleetSettings};
use crate::ships::{parse_ships, ShipEntry, SHIPS_FILE};

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
    /// Every error: `.starphleet`, `ships`, `certs/`, then orders in path order.
    pub errors: Vec<Diagnostic>,
    /// The valid lines of `ships`, in file order (empty without a `ships` file).
    #[serde(default)]
    pub ships: Vec<ShipEntry>,
    /// The `STARPHLEET_*` settings of `.starphleet`, typed (all defaults when it is
    /// missing or broken).
    #[serde(default)]
    pub phleet: PhleetSettings,
    /// The complete certificate pairs in `certs/`, sorted by host.
    #[serde(default)]
    pub certs: Vec<HqCert>,
    /// Things that work but are probably not what the operator wants (never in `errors`,
    /// never blocking anything): keys in git, `--tls` hosts without a known certificate.
    #[serde(default)]
    pub warnings: Vec<Diagnostic>,
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

    /// All warnings rendered like [`Headquarters::render_errors`] (empty if none).
    pub fn render_warnings(&self) -> String {
        let mut out = self
            .warnings
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Whether `.starphleet` has errors: consumers should then keep their last good
    /// settings (`settings` and `phleet`).
    pub fn settings_broken(&self) -> bool {
        self.errors
            .iter()
            .any(|d| d.path == Path::new(SETTINGS_FILE))
    }

    /// Whether `ships` has errors (`ships` then holds only its valid lines).
    pub fn ships_broken(&self) -> bool {
        self.errors.iter().any(|d| d.path == Path::new(SHIPS_FILE))
    }
}

/// Folders nested deeper than this are not searched: orders that deep could not have a
/// valid service name anyway, and it bounds the recursion on a hostile tree.
const MAX_FOLDER_DEPTH: usize = 16;

/// The names and types in a folder, sorted, without `.` and `..`.
pub(crate) fn list(dir: &mut Dir) -> Result<Vec<(OsString, Option<Type>)>, Errno> {
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            entries.push((name.to_os_string(), entry.file_type()));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Find `*.orders` files under the folder `dir` (at `rel` in HQ), skipping hidden entries.
/// Nothing is followed: a symlink is a diagnostic, or an order candidate the reader refuses.
fn find_orders(
    mut dir: Dir,
    rel: &Path,
    depth: usize,
    found: &mut Vec<PathBuf>,
    errors: &mut Vec<Diagnostic>,
) {
    let shown = |rel: &Path| -> PathBuf {
        if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel.to_path_buf()
        }
    };
    let entries = match list(&mut dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(Diagnostic::file(
                &shown(rel),
                format!("cannot read headquarters folder: {}", io::Error::from(e)),
            ));
            return;
        }
    };
    for (name, kind) in entries {
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let rel_path = rel.join(&name);
        let kind = match kind {
            Some(Type::Directory) => Kind::Dir,
            Some(Type::Symlink) => Kind::Symlink,
            Some(Type::File) => Kind::File,
            // The folder's file system does not say: look, without following.
            _ => match kind_at(dir.as_fd(), &name) {
                Ok(kind) => kind,
                Err(_) => continue,
            },
        };
        let is_order = name.as_encoded_bytes().ends_with(b".orders");
        match kind {
            // The reader refuses it with the same diagnostic, as a broken order.
            Kind::Symlink if is_order => found.push(rel_path),
            Kind::Symlink => errors
                .push(Diagnostic::file(&rel_path, SYMLINK_MESSAGE).with_help(WALK_SYMLINK_HELP)),
            Kind::Dir if depth >= MAX_FOLDER_DEPTH => errors.push(
                Diagnostic::file(
                    &rel_path,
                    format!(
                        "folder is nested more than {MAX_FOLDER_DEPTH} deep; it is not searched \
                         for orders"
                    ),
                )
                .with_help(format!(
                    "service names are at most {MAX_SERVICE_DEPTH} parts, e.g. \
                     `team/api/v2/web.orders`: move the orders up"
                )),
            ),
            Kind::Dir => match open_subdir(dir.as_fd(), &name, &rel_path) {
                Ok(fd) => match Dir::from_fd(fd) {
                    Ok(sub) => find_orders(sub, &rel_path, depth + 1, found, errors),
                    Err(e) => errors.push(Diagnostic::file(
                        &rel_path,
                        format!("cannot read headquarters folder: {}", io::Error::from(e)),
                    )),
                },
                Err(OpenDirError::Symlink(d)) => {
                    errors.push(d.with_help(WALK_SYMLINK_HELP));
                }
                // Replaced since it was listed: it is gone, or no longer a folder.
                Err(OpenDirError::NotADir | OpenDirError::Io(Errno::ENOENT)) => {}
                Err(OpenDirError::Io(e)) => errors.push(Diagnostic::file(
                    &rel_path,
                    format!("cannot read headquarters folder: {}", io::Error::from(e)),
                )),
            },
            // FIFOs and devices named `*.orders` are candidates too: the reader says what they are.
            Kind::File | Kind::Other(_) if is_order => found.push(rel_path),
            Kind::File | Kind::Other(_) => {}
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

/// One order file's outcome while loading.
struct Loaded {
    service: String,
    path: PathBuf,
    text: String,
    result: Result<Order, Vec<Diagnostic>>,
}

/// What a ship knows about itself that orders must respect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HqOptions {
    /// Ports no order may publish on, each with what holds it, e.g.
    /// `(9797, "the ship's admin endpoint (--admin)")`.
    pub reserved_ports: Vec<(u16, String)>,
}

/// Load a whole HQ checkout with no reserved ports; see [`load_headquarters_with`].
pub fn load_headquarters(dir: &Path) -> Headquarters {
    load_headquarters_with(dir, &HqOptions::default())
}

/// Load a whole HQ checkout: never fails, every problem becomes a diagnostic.
///
/// Nothing in it is followed out of `dir`: symlinks are refused, files over
/// [`MAX_HQ_FILE_BYTES`](crate::MAX_HQ_FILE_BYTES) are not read, and an order is
/// rejected for anything a deploy would reject (its name, its environment with
/// `.starphleet`, a port in `opts.reserved_ports`).
pub fn load_headquarters_with(dir: &Path, opts: &HqOptions) -> Headquarters {
    let mut hq = Headquarters::default();
    let root = match open_root(dir) {
        Ok(root) => root,
        Err(d) => {
            hq.errors.push(d);
            return hq;
        }
    };
    let settings_rel = Path::new(SETTINGS_FILE);
    match read_text_beneath(root.as_fd(), settings_rel) {
        Ok(None) => {}
        Ok(Some(text)) => match parse_env_entries(settings_rel, &text) {
            Ok((settings, at)) => match EnvSize::of(&settings).excess() {
                Some(excess) => hq.errors.push(
                    Diagnostic::file(settings_rel, excess.message())
                        .with_help(format!("every service gets these variables; {E2BIG_HELP}")),
                ),
                None => {
                    let (phleet, diags) = phleet_settings(settings_rel, &text, &settings, &at);
                    if diags.is_empty() {
                        hq.settings = settings;
                        hq.phleet = phleet;
                    } else {
                        hq.errors.extend(diags);
                    }
                }
            },
            Err(diags) => hq.errors.extend(diags),
        },
        Err(d) => hq.errors.push(d),
    }

    let ships_rel = Path::new(SHIPS_FILE);
    // A symlink is reported by the walk below, as every symlink in HQ is.
    if kind_at(root.as_fd(), ships_rel.as_os_str()) != Ok(Kind::Symlink) {
        match read_text_beneath(root.as_fd(), ships_rel) {
            Ok(None) => {}
            Ok(Some(text)) => {
                let (ships, diags) = parse_ships(ships_rel, &text);
                hq.ships = ships;
                hq.errors.extend(diags);
            }
            Err(d) => hq.errors.push(d),
        }
    }

    let certs = load_certs(root.as_fd());
    hq.certs = certs.certs;
    hq.errors.extend(certs.errors);
    hq.warnings.extend(certs.warnings);

    let mut paths = Vec::new();
    // Its own descriptor for listing (fdopendir takes it), with its own read position.
    match openat(
        root.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .and_then(Dir::from_fd)
    {
        Ok(top) => find_orders(top, Path::new(""), 0, &mut paths, &mut hq.errors),
        Err(e) => hq.errors.push(Diagnostic::file(
            dir,
            format!("cannot read headquarters folder: {}", io::Error::from(e)),
        )),
    }
    paths.sort();

    let settings_size = EnvSize::of(&hq.settings);
    let mut loaded: Vec<Loaded> = paths
        .into_iter()
        .filter_map(|path| {
            let service = service_name(&path);
            let (text, result) = match read_text_beneath(root.as_fd(), &path) {
                // Listed a moment ago, gone now: it is deleted, not broken.
                Ok(None) => return None,
                Ok(Some(text)) => {
                    let result = parse_order(&service, &path, &text).and_then(|order| {
                        let mut errors = reserved_port_errors(&order, &text, opts);
                        errors.extend(merged_env_error(&order, &settings_size));
                        if errors.is_empty() {
                            Ok(order)
                        } else {
                            Err(errors)
                        }
                    });
                    (text, result)
                }
                Err(d) => (String::new(), Err(vec![d])),
            };
            Some(Loaded {
                service,
                path,
                text,
                result,
            })
        })
        .collect();

    // Later orders (by path) lose a clash over public port + host + URL prefix, and over
    // whether a port speaks TLS.
    let mut claims: HashMap<RouteKey, (PathBuf, usize)> = HashMap::new();
    let mut port_tls: HashMap<u16, (bool, PathBuf, usize)> = HashMap::new();
    for item in &mut loaded {
        let Ok(order) = &item.result else {
            continue;
        };
        let mut clashes = Vec::new();
        for p in &order.publish {
            let text = line_of(&item.text, p.span_line);
            let span =
                split_words(text).map_or(Span { col: 1, width: 1 }, |l| words_span(&l.words));
            let at = |message: String| {
                Diagnostic::at(&item.path, p.span_line, span.col, span.width, text, message)
            };
            if let Some((other_tls, other, other_line)) = port_tls.get(&p.public) {
                if *other_tls != p.tls {
                    let other = format!("{}:{}", other.display(), other_line);
                    clashes.push(
                        at(tls_mismatch_message(p.public, *other_tls, &other))
                            .with_help(tls_mismatch_help(*other_tls)),
                    );
                    continue;
                }
            }
            let clash = route_keys(p)
                .into_iter()
                .find_map(|key| claims.get(&key).map(|other| (key, other)));
            if let Some(((_, host, _), (other, other_line))) = clash {
                let d = match host {
                    None => at(format!(
                        "port {} and URL prefix `{}` are already published by {}:{}",
                        p.public,
                        p.url,
                        other.display(),
                        other_line
                    ))
                    .with_help(
                        "two services cannot share a public port and URL prefix; change `--url` \
                         or `--public` in one of the two orders",
                    ),
                    Some(host) => at(format!(
                        "port {}, host `{host}` and URL prefix `{}` are already published by {}:{}",
                        p.public,
                        p.url,
                        other.display(),
                        other_line
                    ))
                    .with_help(
                        "two services cannot share a public port, host and URL prefix; change \
                         `--url`, `--host` or `--public` in one of the two orders",
                    ),
                };
                clashes.push(d);
            }
        }
        if clashes.is_empty() {
            for p in &order.publish {
                for key in route_keys(p) {
                    claims.insert(key, (item.path.clone(), p.span_line));
                }
                port_tls
                    .entry(p.public)
                    .or_insert_with(|| (p.tls, item.path.clone(), p.span_line));
            }
        } else {
            item.result = Err(clashes);
        }
    }

    // Only when `.starphleet` is good: with it broken, ships keep the ACME setting they had.
    if !hq.settings_broken() {
        for item in &loaded {
            if let Ok(order) = &item.result {
                hq.warnings.extend(certificate_warnings(
                    order, &item.text, &hq.certs, &hq.phleet,
                ));
            }
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

/// A warning for each `--tls --host` of `order` that no HQ certificate covers and ACME
/// cannot get: the ship may still have one in its state dir, which `check` cannot see.
fn certificate_warnings(
    order: &Order,
    text: &str,
    certs: &[HqCert],
    phleet: &PhleetSettings,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in order.publish.iter().filter(|p| p.tls) {
        let line = line_of(text, p.span_line);
        let words = split_words(line).map(|l| l.words).unwrap_or_default();
        let whole_line = words_span(&words);
        let warning = |span: Span, message: String, help: String| {
            Diagnostic::at(
                &order.path,
                p.span_line,
                span.col,
                span.width,
                line,
                message,
            )
            .with_severity(Severity::Warning)
            .with_help(help)
        };
        if p.hosts.is_empty() {
            let span = words
                .iter()
                .find(|w| w.text.eq_ignore_ascii_case("--tls"))
                .map_or(whole_line, |w| w.span);
            out.push(warning(
                span,
                format!(
                    "`--tls` without `--host`: certificates go by host name, so port {} \
                     reaches this route only under names other `--tls --host` publishes \
                     have certificates for",
                    p.public
                ),
                "add `--host NAME` for each name users type (e.g. `--host shop.example.com`)"
                    .to_string(),
            ));
        }
        let spans = flag_values(line, "--host");
        for host in &p.hosts {
            let wildcard = host.starts_with("*.");
            if certs.iter().any(|c| covers(&c.host, host))
                || (!wildcard && phleet.acme_email.is_some())
            {
                continue;
            }
            let span = spans
                .iter()
                .find(|v| v.text.eq_ignore_ascii_case(host))
                .map_or(whole_line, |v| v.span);
            let stem = file_stem(host);
            let (message, acme) = if wildcard && phleet.acme_email.is_some() {
                (
                    format!(
                        "no certificate for `{host}` in headquarters, and ACME cannot get a \
                         wildcard certificate (HTTP-01 covers single names only)"
                    ),
                    String::new(),
                )
            } else if wildcard {
                (
                    format!("no certificate for `{host}` in headquarters"),
                    String::new(),
                )
            } else {
                (
                    format!(
                        "no certificate for `{host}` in headquarters, and ACME is off \
                         (no `STARPHLEET_ACME_EMAIL`)"
                    ),
                    "; or set `STARPHLEET_ACME_EMAIL=you@example.com` in `.starphleet` so ships \
                     get one from ACME (Let's Encrypt unless `STARPHLEET_ACME_DIRECTORY` says \
                     otherwise)"
                        .to_string(),
                )
            };
            out.push(warning(
                span,
                message,
                format!(
                    "fine if every ship has `<state-dir>/certs/{stem}.crt` and `.key` (check \
                     cannot see them); otherwise put them there, or commit \
                     `certs/{stem}.crt` and `certs/{stem}.key` to headquarters{acme}"
                ),
            ));
        }
    }
    out
}

/// The line `line_no` of `text` (1-based), or empty.
fn line_of(text: &str, line_no: usize) -> &str {
    source_lines(text)
        .nth(line_no.saturating_sub(1))
        .map_or("", |l| l.text)
}

/// Every `publish` of `order` on a reserved port, as a diagnostic on its line.
fn reserved_port_errors(order: &Order, text: &str, opts: &HqOptions) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in &order.publish {
        let Some((_, why)) = opts
            .reserved_ports
            .iter()
            .find(|(port, _)| *port == p.public)
        else {
            continue;
        };
        let line = line_of(text, p.span_line);
        let (span, port) = match public_port_span(line) {
            Some(span) => (span, format!("public port {}", p.public)),
            None => (
                split_words(line).map_or(Span { col: 1, width: 1 }, |l| words_span(&l.words)),
                format!("public port {} (the default `--public`)", p.public),
            ),
        };
        out.push(
            Diagnostic::at(
                &order.path,
                p.span_line,
                span.col,
                span.width,
                line,
                format!("{port} is reserved for {why}"),
            )
            .with_help(format!(
                "publish this service on another port with `--public PORT`; the ship cannot \
                 listen on {} twice",
                p.public
            )),
        );
    }
    out
}

/// The diagnostic if `.starphleet` and the order's env together are over a limit.
fn merged_env_error(order: &Order, settings_size: &EnvSize) -> Option<Diagnostic> {
    if settings_size.vars() == 0 {
        return None;
    }
    let mut merged = settings_size.clone();
    merged.add_all(&order.env);
    let excess = merged.excess()?;
    Some(
        Diagnostic::file(
            &order.path,
            format!("with `.starphleet`, {}", excess.message()),
        )
        .with_help(format!(
            "`.starphleet` gives every service {} variables ({} bytes) as well; remove some there \
             or in this order. {E2BIG_HELP}",
            settings_size.vars(),
            settings_size.bytes()
        )),
    )
}
