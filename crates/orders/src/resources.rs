//! What a service's containers run on and may use: `memory`, `cpus`, `pids` and `base`,
//! written the same way in an order and in the app's `Starphleet` file.

use serde::{Deserialize, Serialize};

use crate::diagnostic::quote;
use crate::lex::{reject_extra, twice, Report, SourceLine, Word};
use crate::order::take_flag;
use crate::values::{check_http_url, parse_size, show_size, SIZE_HELP};

/// Limits for each container of a service; `None` leaves that one unlimited (or to the app).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// `memory SIZE`: the most memory the container may use, in bytes (at least 4 MiB).
    pub memory_bytes: Option<u64>,
    /// `cpus N`: CPU time per second of wall time, in thousandths of a CPU (`0.5` = 500).
    pub cpu_millis: Option<u64>,
    /// `pids N`: the most processes and threads at once (at least 16).
    pub pids: Option<i64>,
}

impl Resources {
    /// These limits (the order's) over `app`'s: each field set here wins, the others come from `app`.
    pub fn over(&self, app: &Resources) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes.or(app.memory_bytes),
            cpu_millis: self.cpu_millis.or(app.cpu_millis),
            pids: self.pids.or(app.pids),
        }
    }
}

/// The root filesystem a service runs on instead of the ship's own: `base SOURCE [--sha256 HEX]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BaseImage {
    /// `file:///…` on the ship, `http://…` / `https://…`, or a path relative to the app
    /// repository's root (never with `..`), as written.
    pub source: String,
    /// The file's expected sha256, 64 lower-case hex digits.
    pub sha256: Option<String>,
}

/// Smallest `memory`: below this the runtime and the service's init cannot start.
const MIN_MEMORY: u64 = 4 << 20;
/// Most `cpus`: more than any ship has.
const MAX_CPU_MILLIS: u64 = 256_000;
/// Smallest `pids`: room for init, the app and a shell.
const MIN_PIDS: i64 = 16;
/// Most `pids`: Linux's largest `pid_max`.
const MAX_PIDS: i64 = 4_194_304;

const MEMORY_HELP: &str = "`memory` takes the most memory each container of the service may \
     use, at least 4M, e.g. `memory 512M` or `memory 2G`";
const CPUS_HELP: &str = "`cpus` takes how many CPUs each container may keep busy, from 0.01 to \
     256 with at most 2 decimals, e.g. `cpus 0.5` or `cpus 2`";
const PIDS_HELP: &str = "`pids` takes the most processes and threads each container may run at \
     once, from 16 to 4194304, e.g. `pids 512`";
pub(crate) const BASE_HELP: &str = "`base` takes a root filesystem tarball and an optional \
     checksum: `base https://example.com/debian-12.tar.gz --sha256 <64 hex digits>`, \
     `base file:///srv/bases/debian-12.tar` (on the ship) or `base images/root.tar` (in the app \
     repository)";

/// Lines where each resource keyword was first given, to report repeats.
#[derive(Debug, Default)]
pub(crate) struct ResourceLines {
    memory: Option<usize>,
    cpus: Option<usize>,
    pids: Option<usize>,
}

/// Parse a `memory`, `cpus` or `pids` line (`words[0]`, any case, is one of them) into
/// `out`, reporting every problem.
pub(crate) fn resource_line(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    words: &[Word],
    seen: &mut ResourceLines,
    out: &mut Resources,
) {
    let kw = &words[0];
    let lower = kw.text.to_lowercase();
    let (first, help, what) = match lower.as_str() {
        "memory" => (&mut seen.memory, MEMORY_HELP, "a size"),
        "cpus" => (&mut seen.cpus, CPUS_HELP, "a number"),
        _ => (&mut seen.pids, PIDS_HELP, "a number"),
    };
    if let Some(first) = *first {
        twice(report, line, kw, first);
        return;
    }
    *first = Some(line.number);
    let Some(arg) = words.get(1) else {
        report.error(
            line,
            kw.span,
            format!("`{lower}` needs {what}"),
            help.into(),
        );
        return;
    };
    reject_extra(report, line, words, 2, help.into());
    match lower.as_str() {
        "memory" => match parse_size(&arg.text) {
            Some(n) if n >= MIN_MEMORY => out.memory_bytes = Some(n),
            Some(n) => report.error(
                line,
                arg.span,
                format!("`memory` must be at least 4M, not {}", show_size(n)),
                format!("{MEMORY_HELP}; less leaves no room for the service to start"),
            ),
            None => report.error(
                line,
                arg.span,
                format!("invalid size {} for `memory`", quote(&arg.text)),
                format!("{MEMORY_HELP}; {SIZE_HELP}"),
            ),
        },
        "cpus" => match parse_cpus(&arg.text) {
            Some(n) => out.cpu_millis = Some(n),
            None => report.error(
                line,
                arg.span,
                format!(
                    "`cpus` must be a number from 0.01 to 256 with at most 2 decimals, not {}",
                    quote(&arg.text)
                ),
                CPUS_HELP.into(),
            ),
        },
        _ => {
            let n = (arg.text.len() <= 7 && arg.text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| arg.text.parse::<i64>().ok())
                .flatten()
                .filter(|n| (MIN_PIDS..=MAX_PIDS).contains(n));
            match n {
                Some(n) => out.pids = Some(n),
                None => report.error(
                    line,
                    arg.span,
                    format!(
                        "`pids` must be a whole number from 16 to 4194304, not {}",
                        quote(&arg.text)
                    ),
                    PIDS_HELP.into(),
                ),
            }
        }
    }
}

/// `0.5` → 500, `2` → 2000: a positive number of CPUs with at most 2 decimals, up to 256.
fn parse_cpus(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || whole.len() > 3
        || frac.len() > 2
        || (s.contains('.') && frac.is_empty())
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac_millis = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>().ok()? * 100,
        _ => frac.parse::<u64>().ok()? * 10,
    };
    let millis = whole.parse::<u64>().ok()? * 1000 + frac_millis;
    (1..=MAX_CPU_MILLIS).contains(&millis).then_some(millis)
}

/// Parse `base SOURCE [--sha256 HEX]` (`words[0]` is `base`), reporting every problem.
pub(crate) fn base_line(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    words: &[Word],
) -> Option<BaseImage> {
    let kw = &words[0];
    let errors_before = report.diags.len();
    let mut source: Option<String> = None;
    let mut source_given = false;
    let mut sha256: Option<String> = None;
    let mut sha_given = false;
    let mut extra_reported = false;
    let mut i = 1;
    while i < words.len() {
        let w = &words[i];
        if w.text.starts_with("--") {
            let flag = take_flag(words, &mut i);
            if flag.lower != "--sha256" {
                report.error(
                    line,
                    flag.name.span,
                    format!("unknown flag {} for `base`", quote(&flag.name.text)),
                    BASE_HELP.into(),
                );
                continue;
            }
            if sha_given {
                report.error(
                    line,
                    flag.name.span,
                    "`--sha256` is given twice".into(),
                    "keep one `--sha256`".into(),
                );
                continue;
            }
            sha_given = true;
            let sha_help =
                "write the file's sha256 as 64 hex digits, as `sha256sum FILE` prints it";
            match flag.value {
                None => report.error(
                    line,
                    flag.name.span,
                    "`--sha256` needs 64 hex digits".into(),
                    sha_help.into(),
                ),
                Some(v) if v.text.len() == 64 && v.text.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    sha256 = Some(v.text.to_ascii_lowercase())
                }
                Some(v) => report.error(
                    line,
                    v.span,
                    format!(
                        "`--sha256` must be 64 hex digits, not {} ({} characters)",
                        quote(&v.text),
                        v.text.chars().count()
                    ),
                    sha_help.into(),
                ),
            }
            continue;
        }
        i += 1;
        if source_given {
            if !extra_reported {
                extra_reported = true;
                report.error(
                    line,
                    w.span,
                    format!("unexpected argument {} for `base`", quote(&w.text)),
                    BASE_HELP.into(),
                );
            }
            continue;
        }
        source_given = true;
        match check_base_source(&w.text) {
            Ok(()) => source = Some(w.text.clone()),
            Err((message, help)) => report.error(line, w.span, message, help),
        }
    }
    if !source_given {
        report.error(
            line,
            kw.span,
            "`base` needs a root filesystem: a URL or a path in the app repository".into(),
            BASE_HELP.into(),
        );
    }
    if report.diags.len() != errors_before {
        return None;
    }
    source.map(|source| BaseImage { source, sha256 })
}

/// Whether `raw` is a usable `base` source; `Err((message, help))` if not.
fn check_base_source(raw: &str) -> Result<(), (String, String)> {
    let lower = raw.to_ascii_lowercase();
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            format!("base {} must not contain whitespace", quote(raw)),
            BASE_HELP.into(),
        ));
    }
    if let Some(path) = lower.strip_prefix("file://") {
        if !path.starts_with('/') || path == "/" {
            return Err((
                format!(
                    "base {} must name a file on the ship by its full path",
                    quote(raw)
                ),
                "write three slashes, e.g. `file:///srv/bases/debian-12.tar`".into(),
            ));
        }
        if path.split('/').any(|c| c == "..") {
            return Err((
                format!("base {} must not contain `..`", quote(raw)),
                "write the file's full path, e.g. `file:///srv/bases/debian-12.tar`".into(),
            ));
        }
        return Ok(());
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return check_http_url(raw).map_err(|why| {
            (
                format!("invalid base URL {}: {why}", quote(raw)),
                BASE_HELP.into(),
            )
        });
    }
    if lower.contains("://") {
        return Err((
            format!("unsupported base source {}", quote(raw)),
            format!("use `file://`, `http://` or `https://`, or a path in the app repository; {BASE_HELP}"),
        ));
    }
    if raw.starts_with('/') {
        return Err((
            format!(
                "base path {} must be relative to the app repository",
                quote(raw)
            ),
            format!(
                "write it without the leading `/` for a file in the app repository, or as {} \
                 for a file on the ship",
                quote(&format!("file://{raw}"))
            ),
        ));
    }
    if raw.split('/').any(|c| c == "..") {
        return Err((
            format!("base path {} must not contain `..`", quote(raw)),
            "a relative base is a file inside the app repository; name a file on the ship as \
             `file:///…`"
                .into(),
        ));
    }
    if raw.split('/').all(|c| c.is_empty() || c == ".") {
        return Err((
            format!("base path {} does not name a file", quote(raw)),
            BASE_HELP.into(),
        ));
    }
    Ok(())
}

/// Report a repeated `base`; true if it was.
pub(crate) fn base_repeated(
    report: &mut Report<'_>,
    line: SourceLine<'_>,
    kw: &Word,
    first: &mut Option<usize>,
) -> bool {
    if let Some(first) = *first {
        twice(report, line, kw, first);
        return true;
    }
    *first = Some(line.number);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_thousandths() {
        assert_eq!(parse_cpus("0.5"), Some(500));
        assert_eq!(parse_cpus("2"), Some(2000));
        assert_eq!(parse_cpus("0.01"), Some(10));
        assert_eq!(parse_cpus("1.25"), Some(1250));
        assert_eq!(parse_cpus("256"), Some(256_000));
        assert_eq!(parse_cpus("007.5"), Some(7500));
        for bad in [
            "0", "0.0", "0.001", "257", "256.01", ".5", "2.", "-1", "1e3", "", "1.2.3", "one",
            "1,5",
        ] {
            assert_eq!(parse_cpus(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_order_wins_field_by_field() {
        let app = Resources {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(2000),
            pids: None,
        };
        let order = Resources {
            memory_bytes: None,
            cpu_millis: Some(500),
            pids: Some(64),
        };
        assert_eq!(
            order.over(&app),
            Resources {
                memory_bytes: Some(1 << 30),
                cpu_millis: Some(500),
                pids: Some(64),
            }
        );
        assert_eq!(Resources::default().over(&app), app);
    }

    #[test]
    fn base_sources() {
        for good in [
            "file:///srv/bases/debian.tar",
            "https://example.com/b.tar.gz?x=1",
            "http://10.0.0.1:8080/b.tar",
            "images/root.tar",
            "./root.tar",
        ] {
            assert_eq!(check_base_source(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("file://host/x", "full path"),
            ("file:///", "full path"),
            ("file:///srv/../etc/x", "`..`"),
            ("https://", "invalid base URL"),
            ("docker://debian", "unsupported"),
            ("/srv/root.tar", "relative"),
            ("images/../../x", "`..`"),
            (".", "does not name"),
        ] {
            let e = check_base_source(bad).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
