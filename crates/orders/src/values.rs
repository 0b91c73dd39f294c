//! Small value grammars shared by several files: sizes, host names, URLs.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::diagnostic::quote;

/// How to write a size, for help lines.
pub(crate) const SIZE_HELP: &str = "write a whole number of bytes or one with a binary unit: \
     `512k`, `64M`, `10m`, `1G` (1k = 1024 bytes; case does not matter)";

/// Parse a size: bare bytes, or a whole number with a binary unit `k`, `m`, `g` or `t`
/// (any case, optionally followed by `b` or `ib`: `64M` = `64MiB` = 64 × 2^20 bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 || digits > 20 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].to_ascii_lowercase();
    let (prefix, suffix) = match unit.char_indices().next() {
        Some((_, c)) if "kmgt".contains(c) => unit.split_at(1),
        _ => ("", unit.as_str()),
    };
    let shift = match prefix {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => 40,
    };
    match (prefix, suffix) {
        ("", "" | "b") => {}
        (_, "" | "b" | "ib") if !prefix.is_empty() => {}
        _ => return None,
    }
    n.checked_mul(1u64 << shift)
}

/// A size for messages: `64M`, `1G`, `1536k` or bytes, whichever is exact and shortest.
pub(crate) fn show_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "k")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Whether `s` is a DNS name: dot-separated labels of letters, digits and `-` (not at
/// either end of a label), each at most 63 chars, at most 253 in all, no trailing dot.
pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Validate a `publish --host` value and lower-case it: a DNS name, or `*.domain` with
/// the `*` as the whole leftmost label; `Err((message, help))` if it cannot be matched.
pub(crate) fn check_host(raw: &str) -> Result<String, (String, String)> {
    const FORM: &str = "a host name like `app.example.com`, or a wildcard like `*.example.com` \
         (the `*` stands for exactly one label)";
    let host = raw.to_ascii_lowercase();
    let bad = |what: &str| {
        Err((
            format!("invalid host {}: {what}", quote(raw)),
            FORM.to_string(),
        ))
    };
    if host.is_empty() {
        return bad("it is empty");
    }
    if host.contains("://") || host.contains('/') {
        return Err((
            format!("invalid host {}: write the host name alone", quote(raw)),
            "`--host` matches the name in the request's Host header, e.g. `--host app.example.com`; \
             the path goes in `--url`"
                .into(),
        ));
    }
    if host.contains(':') {
        return Err((
            format!("invalid host {}: write it without a port", quote(raw)),
            "`--host` matches the name in the request's Host header whatever the port; the port \
             goes in `--public`"
                .into(),
        ));
    }
    if host.ends_with('.') && host.len() > 1 {
        return Err((
            format!("invalid host {}: it ends with `.`", quote(raw)),
            format!("write {}", quote(host.trim_end_matches('.'))),
        ));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    if name.contains('*') {
        return bad("`*` may only be the whole leftmost label");
    }
    if !is_dns_name(name) {
        return bad(
            "labels are letters, digits and `-` (not first or last), separated by `.`, each at \
             most 63 characters",
        );
    }
    if wild && !name.contains('.') {
        return bad("a wildcard needs a domain of at least two labels under it");
    }
    Ok(host)
}

/// Validate a ship's admin URL and normalise it to `scheme://host:port` (lower case);
/// `Err(what is wrong)`.
pub(crate) fn check_admin_url(raw: &str) -> Result<String, String> {
    let lower = raw.to_ascii_lowercase();
    let (scheme, rest) = if let Some(rest) = lower.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = lower.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err("it must start with `http://` or `https://`".into());
    };
    if rest.contains(['?', '#']) {
        return Err("it must not have a query or fragment".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err("it must not have a path: the ship's admin endpoint is at its root".into());
    }
    if authority.contains('@') {
        return Err(
            "it must not contain a user name or password: requests are authenticated \
                    with the phleet token"
                .into(),
        );
    }
    let (host, port) = host_port(authority)?;
    let Some(port) = port else {
        return Err("it needs a port, e.g. `:9797`".into());
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Split `host[:port]` (or `[v6][:port]`) and check both; the host is returned as written.
fn host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err("its IPv6 address has no closing `]`".into());
        };
        if rest[..end].parse::<Ipv6Addr>().is_err() {
            return Err(format!("{} is not an IPv6 address", quote(&rest[..end])));
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(port) => (&authority[..end + 2], Some(port)),
            None if after.is_empty() => (&authority[..end + 2], None),
            None => return Err("unexpected text after the IPv6 address".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if !host.starts_with('[') && host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
        return Err(format!("{} is not a host name or IP address", quote(host)));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("its port {} is not from 1 to 65535", quote(p)))?,
        ),
    };
    Ok((host, port))
}

/// Check an `http://` or `https://` URL with a host (any port and path); `Err(what is wrong)`.
pub(crate) fn check_http_url(raw: &str) -> Result<(), String> {
    let lower = raw.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return Err("it must start with `http://` or `https://`".into());
    };
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it must not contain whitespace".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port(host).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("12b"), Some(12));
        assert_eq!(parse_size("512k"), Some(512 * 1024));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10mb"), Some(10 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2t"), Some(2 << 40));
        for bad in [
            "",
            "k",
            "1.5G",
            "-1",
            "1 G",
            "1x",
            "1kk",
            "1ibk",
            "1ib",
            "99999999999999999999999",
            "20000000T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(show_size(64 << 20), "64M");
        assert_eq!(show_size(1536 << 10), "1536k");
        assert_eq!(show_size(1000), "1000");
        assert_eq!(show_size(0), "0");
    }

    #[test]
    fn hosts_are_dns_names_or_one_wildcard_label() {
        assert_eq!(check_host("App.Example.COM").unwrap(), "app.example.com");
        assert_eq!(check_host("*.example.com").unwrap(), "*.example.com");
        assert_eq!(check_host("localhost").unwrap(), "localhost");
        assert_eq!(check_host("10.0.0.1").unwrap(), "10.0.0.1");
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "x*.example.com",
            "**.example.com",
            "-a.com",
            "a-.com",
            "a..com",
            ".a.com",
            "a_b.com",
            "a.com:443",
            "https://a.com",
            "a.com/x",
            "é.com",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert_eq!(check_host("a.com.").unwrap_err().1, "write `a.com`");
        assert!(check_host(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(check_host(&format!("{}.com", "a".repeat(63))).is_ok());
    }

    #[test]
    fn admin_urls_need_scheme_host_and_port_only() {
        assert_eq!(
            check_admin_url("http://10.1.0.11:9797").unwrap(),
            "http://10.1.0.11:9797"
        );
        assert_eq!(
            check_admin_url("HTTPS://North.Example:443/").unwrap(),
            "https://north.example:443"
        );
        assert_eq!(
            check_admin_url("http://[::1]:9797").unwrap(),
            "http://[::1]:9797"
        );
        for (bad, why) in [
            ("10.1.0.11:9797", "must start with"),
            ("ftp://a:1", "must start with"),
            ("http://a", "needs a port"),
            ("http://a:", "is not from 1 to 65535"),
            ("http://a:0", "is not from 1 to 65535"),
            ("http://a:65536", "is not from 1 to 65535"),
            ("http://a:1/status", "must not have a path"),
            ("http://u:p@a:1", "user name or password"),
            ("http://a:1?x", "query"),
            ("http://:1", "has no host"),
            ("http://a b:1", "not a host name"),
            ("http://[::1:9797", "no closing"),
            ("http://[zz]:1", "not an IPv6"),
            ("http://[::1]x", "unexpected text"),
        ] {
            let e = check_admin_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn http_urls() {
        assert!(check_http_url("https://acme-v02.api.letsencrypt.org/directory").is_ok());
        assert!(check_http_url("http://127.0.0.1:14000/dir").is_ok());
        assert!(check_http_url("https://u@h/x?y#z").is_ok());
        assert!(check_http_url("acme.example").is_err());
        assert!(check_http_url("https://").is_err());
        assert!(check_http_url("https://a b/").is_err());
    }
}
