//! Tests of the grammars as users meet them: whole files in, rendered errors out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

const ECHO: &str = "autodeploy https://github.com/wballard/echo.git\n";

fn parse(text: &str) -> Result<Order, Vec<Diagnostic>> {
    parse_order("echo", Path::new("echo.orders"), text)
}

fn ok(text: &str) -> Order {
    match parse(text) {
        Ok(o) => o,
        Err(e) => panic!("unexpected errors:\n{}", render(&e)),
    }
}

fn errs(text: &str) -> Vec<Diagnostic> {
    parse(text).expect_err("expected errors")
}

/// Exactly one error, rendered.
fn one(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error, got:\n{}", render(&e));
    e[0].to_string()
}

fn render(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The single error's message and help.
fn msg_help(text: &str) -> (String, String) {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error, got:\n{}", render(&e));
    (e[0].message.clone(), e[0].help.clone().unwrap_or_default())
}

// ---- orders: the happy path -------------------------------------------------

#[test]
fn seed_example_parses() {
    let o = ok("autodeploy https://github.com/wballard/echo.git\n\
                publish --private 3000 --public 80  --url /echo\n");
    assert_eq!(o.service, "echo");
    assert_eq!(o.path, PathBuf::from("echo.orders"));
    assert_eq!(
        o.autodeploy,
        GitSource {
            url: "https://github.com/wballard/echo.git".into(),
            reference: None
        }
    );
    assert_eq!(
        o.publish,
        [Publish {
            private: 3000,
            public: 80,
            url: "/echo".into(),
            span_line: 2
        }]
    );
    assert!(o.env.is_empty());
    assert_eq!(o.healthcheck, None);
    assert_eq!(o.revision.len(), 64);
    assert!(o.revision.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn full_order_with_every_keyword() {
    let o = ok("# the echo service\n\
                autodeploy git@host:team/app.git#release-2   # pinned branch\n\
                publish --private=3000 --public=8080 --url=/api/\n\
                publish --private 3000\n\
                export GREETING=\"hello world\" LEVEL=info\n\
                env GREETING='bye'\n\
                healthcheck /health --timeout 90s\n\
                drain 500ms\n\
                instances 3\n");
    assert_eq!(o.autodeploy.url, "git@host:team/app.git");
    assert_eq!(o.autodeploy.reference.as_deref(), Some("release-2"));
    assert_eq!(o.autodeploy.to_string(), "git@host:team/app.git#release-2");
    assert_eq!(o.publish[0].public, 8080);
    assert_eq!(o.publish[0].url, "/api");
    assert_eq!(o.publish[1].public, 80);
    assert_eq!(o.publish[1].url, "/echo");
    assert_eq!(
        o.env,
        [
            ("GREETING".to_string(), "hello world".to_string()),
            ("LEVEL".into(), "info".into()),
            ("GREETING".into(), "bye".into()),
        ]
    );
    assert_eq!(o.healthcheck.as_deref(), Some("/health"));
    assert_eq!(o.health_timeout, Some(Duration::from_secs(90)));
    assert_eq!(o.drain, Some(Duration::from_millis(500)));
    assert_eq!(o.instances, Some(3));
}

#[test]
fn default_url_is_the_service_name() {
    let o = parse_order(
        "team/api",
        Path::new("team/api.orders"),
        &format!("{ECHO}publish --private 3000"),
    )
    .unwrap();
    assert_eq!(o.publish[0].url, "/team/api");
    assert_eq!(o.service, "team/api");
}

#[test]
fn revision_is_the_sha256_of_the_bytes() {
    let a = ok(ECHO);
    assert_eq!(
        a.revision,
        // sha256 of "autodeploy https://github.com/wballard/echo.git\n"
        crate::tests::sha256_hex(ECHO.as_bytes())
    );
    assert_ne!(ok(&format!("{ECHO}# changed\n")).revision, a.revision);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn keywords_and_flags_are_case_insensitive() {
    let o = ok("AutoDeploy https://h/a.git\nPUBLISH --Private 3000 --PUBLIC 81\nExport A=1\n");
    assert_eq!(o.publish[0].private, 3000);
    assert_eq!(o.publish[0].public, 81);
    assert_eq!(o.env, [("A".to_string(), "1".to_string())]);
}

#[test]
fn comments_blank_lines_crlf_tabs_and_bom() {
    let o = ok("\u{feff}# comment\r\n\r\n\tautodeploy\thttps://h/a.git#main\t# c\r\n  publish --private 3000 # c\r\n");
    assert_eq!(o.autodeploy.reference.as_deref(), Some("main"));
    assert_eq!(o.publish.len(), 1);
}

// ---- autodeploy -------------------------------------------------------------

#[test]
fn ref_is_split_on_the_last_hash() {
    let o = ok("autodeploy https://h/a#b.git#v1.2.0\n");
    assert_eq!(o.autodeploy.url, "https://h/a#b.git");
    assert_eq!(o.autodeploy.reference.as_deref(), Some("v1.2.0"));
    assert!(!o.autodeploy.is_full_sha());
    let sha = "0123456789abcdef0123456789ABCDEF01234567";
    let o = ok(&format!("autodeploy https://h/a.git#{sha}\n"));
    assert!(o.autodeploy.is_full_sha());
    let short = GitSource {
        url: "u".into(),
        reference: Some("0123456".into()),
    };
    assert!(!short.is_full_sha());
}

#[test]
fn missing_autodeploy() {
    assert_eq!(
        one("publish --private 3000\n"),
        "echo.orders:1:1: error: missing `autodeploy`: every order needs the git repository to run\n  \
         |\n1 | publish --private 3000\n  | ^\n  = help: add a line `autodeploy <git url>`, e.g. \
         `autodeploy https://github.com/wballard/echo.git`"
    );
    // An empty file has nothing to show.
    assert_eq!(
        one(""),
        "echo.orders:1:1: error: missing `autodeploy`: every order needs the git repository to run\n  \
         = help: add a line `autodeploy <git url>`, e.g. `autodeploy https://github.com/wballard/echo.git`"
    );
}

#[test]
fn repeated_autodeploy_names_the_first() {
    assert_eq!(
        one("autodeploy https://h/a.git\n\nautodeploy https://h/b.git\n"),
        "echo.orders:3:1: error: `autodeploy` is given twice; the first is on line 1\n  |\n\
         3 | autodeploy https://h/b.git\n  | ^^^^^^^^^^\n  = help: an order deploys exactly one \
         repository: keep one `autodeploy` line"
    );
}

#[test]
fn autodeploy_argument_errors() {
    assert_eq!(msg_help("autodeploy\n").0, "`autodeploy` needs a git URL");
    assert_eq!(
        msg_help("autodeploy ''\n").0,
        "`autodeploy` needs a git URL"
    );
    let e = errs("autodeploy https://h/a.git main\n");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].column, e[0].width), (28, 4));
    assert!(e[0]
        .help
        .as_deref()
        .unwrap()
        .contains("`https://h/a.git#main`"));
    let e = errs("autodeploy https://h/a.git#\n");
    assert_eq!(e[0].message, "empty git ref after `#`");
    assert_eq!(e[0].column, 27);
    assert_eq!(
        msg_help("autodeploy '#main'\n").0,
        "missing git URL before `#`"
    );
    assert_eq!(
        msg_help("autodeploy --upload-pack=x\n").0,
        "git URL `--upload-pack=x` must not start with `-`"
    );
    let e = errs("autodeploy https://h/a.git#bad..ref\n");
    assert_eq!(e[0].message, "`bad..ref` is not a valid git ref");
    assert_eq!((e[0].column, e[0].width), (28, 8));
    assert_eq!(
        msg_help("autodeploy https://h/a.git#-x\n").0,
        "`-x` is not a valid git ref"
    );
    assert_eq!(
        msg_help("autodeploy 'https://h/a b.git'\n").0,
        "git URL `https://h/a b.git` must not contain whitespace"
    );
}

// ---- publish ----------------------------------------------------------------

#[test]
fn unknown_flag_did_you_mean() {
    let text = "# the API\n\npublish --privat 3000\n";
    let d = parse_order(
        "team/api",
        Path::new("team/api.orders"),
        &format!("{text}autodeploy https://h/a.git\n"),
    )
    .unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        "team/api.orders:3:9: error: unknown flag `--privat` for `publish`\n  |\n\
         3 | publish --privat 3000\n  |         ^^^^^^^^\n  = help: did you mean `--private`? \
         `--private` is the port your service listens on inside its container (it receives it as \
         $PORT); `--public` is the port users connect to on the ship (default 80)"
    );
    let (m, h) = msg_help(&format!("{ECHO}publish --private 1 --pubic 80\n"));
    assert_eq!(m, "unknown flag `--pubic` for `publish`");
    assert!(h.starts_with("did you mean `--public`? `--public` is the port users connect to"));
    let (m, h) = msg_help(&format!("{ECHO}publish --private 1 --ulr=/x\n"));
    assert_eq!(m, "unknown flag `--ulr` for `publish`");
    assert!(h.starts_with("did you mean `--url`?"));
    let (_, h) = msg_help(&format!("{ECHO}publish --private 1 --verbose\n"));
    assert_eq!(
        h,
        "`publish` takes `--private PORT` (required), `--public PORT` (default 80) and \
         `--url /PREFIX` (default /<service>)"
    );
}

#[test]
fn private_errors_explain_what_private_means() {
    for text in [
        "publish\n",
        "publish --public 80\n",
        "publish --private\n",
        "publish --private --public 80\n",
        "publish --private=\n",
        "publish --private abc\n",
        "publish --private 0\n",
        "publish --private 65536\n",
        "publish --private 99999999999999999999\n",
        "publish --private +80\n",
        "publish --private -1\n",
    ] {
        let (m, h) = msg_help(&format!("{ECHO}{text}"));
        assert!(m.contains("--private"), "{text}: {m}");
        assert!(
            h.contains("the port your service listens on inside its container")
                && h.contains("$PORT")
                && h.contains("`--public` is the port users connect to on the ship"),
            "{text}: {h}"
        );
    }
    assert_eq!(
        msg_help(&format!("{ECHO}publish --private abc\n")).0,
        "`--private` must be a port from 1 to 65535, not `abc`"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}publish --private\n")).0,
        "`--private` needs a port number"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}publish --public 80\n")).0,
        "`publish` needs `--private PORT`"
    );
}

#[test]
fn port_ranges() {
    assert_eq!(
        ok(&format!("{ECHO}publish --private 1 --public 65535")).publish[0].public,
        65535
    );
    let (m, h) = msg_help(&format!("{ECHO}publish --private 3000 --public 0\n"));
    assert_eq!(m, "`--public` must be a port from 1 to 65535, not `0`");
    assert!(h.starts_with("`--public` is the port users connect to on the ship (default 80)"));
    let e = errs(&format!("{ECHO}publish --private 3000 --public=70000\n"));
    assert_eq!((e[0].line, e[0].column, e[0].width), (2, 33, 5));
}

#[test]
fn old_port_flag_gets_a_helpful_error() {
    assert_eq!(
        one(&format!("{ECHO}publish --port 3000 --public 80\n")),
        "echo.orders:2:9: error: `--port` is now `--private`: the port your service listens on \
         inside its container\n  |\n2 | publish --port 3000 --public 80\n  |         ^^^^^^\n  \
         = help: write `--private 3000`; your service receives it as $PORT. `--public` is the port \
         users connect to on the ship (default 80)"
    );
}

#[test]
fn positional_port_suggests_private() {
    let (m, h) = msg_help(&format!("{ECHO}publish 3000\n"));
    assert_eq!(m, "unexpected argument `3000` for `publish`");
    assert!(h.starts_with("did you mean `--private 3000`?"));
    // Only the first extra argument is reported.
    let e = errs(&format!("{ECHO}publish --private 3000 a b c\n"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].message, "unexpected argument `a` for `publish`");
}

#[test]
fn flag_given_twice() {
    let (m, _) = msg_help(&format!("{ECHO}publish --private 1 --url /a --url /b\n"));
    assert_eq!(m, "`--url` is given twice in one `publish` line");
}

#[test]
fn url_prefix_rules() {
    let url = |u: &str| {
        ok(&format!("{ECHO}publish --private 1 --url {u}\n")).publish[0]
            .url
            .clone()
    };
    assert_eq!(url("/echo/"), "/echo");
    assert_eq!(url("//a//b//"), "/a/b");
    assert_eq!(url("/"), "/");
    assert_eq!(url("///"), "/");
    assert_eq!(url("/starphleetx"), "/starphleetx");
    assert_eq!(url("/api/starphleet"), "/api/starphleet");

    let bad = |u: &str| msg_help(&format!("{ECHO}publish --private 1 --url {u}\n"));
    assert_eq!(
        bad("echo"),
        (
            "URL prefix `echo` must start with `/`".into(),
            "did you mean `/echo`?".into()
        )
    );
    for reserved in [
        "/starphleet",
        "/starphleet/",
        "/starphleet/health",
        "//starphleet//x",
    ] {
        let (m, h) = bad(reserved);
        assert!(m.ends_with("is reserved"), "{reserved}: {m}");
        assert!(h.contains("/starphleet/health"));
    }
    assert_eq!(
        bad("'/a b'").0,
        "URL prefix `/a b` must not contain whitespace"
    );
    assert_eq!(bad("/a?b").0, "URL prefix `/a?b` must not contain `?`");
    assert_eq!(bad("/a#b").0, "URL prefix `/a#b` must not contain `#`");
    assert_eq!(
        bad("/a/../b").0,
        "URL prefix `/a/../b` must not contain `.` or `..` segments"
    );
    assert_eq!(bad("''").0, "`--url` needs a URL prefix");

    let d = &errs(&format!("{ECHO}publish --private 1 --url=/starphleet/x\n"))[0];
    assert_eq!((d.column, d.width), (27, 13));
}

#[test]
fn default_url_from_a_reserved_service_name() {
    let e = parse_order(
        "starphleet",
        Path::new("starphleet.orders"),
        &format!("{ECHO}publish --private 1\n"),
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].message,
        "the default URL prefix comes from the service name: URL prefix `/starphleet` is reserved"
    );
    assert_eq!(
        e[0].help.as_deref(),
        Some("add `--url /PREFIX` to this `publish` line")
    );
}

#[test]
fn same_port_and_prefix_twice_in_one_order() {
    assert_eq!(
        one(&format!("{ECHO}publish --private 1 --url /a\npublish --private 2 --public 80 --url /a/\n")),
        "echo.orders:3:1: error: port 80 and URL prefix `/a` are already published on line 2\n  |\n\
         3 | publish --private 2 --public 80 --url /a/\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: remove one of the two `publish` \
         lines, or change `--public` or `--url` in one"
    );
    // Same prefix on another port is fine.
    assert_eq!(
        ok(&format!(
            "{ECHO}publish --private 1\npublish --private 1 --public 8080\n"
        ))
        .publish
        .len(),
        2
    );
}

// ---- env --------------------------------------------------------------------

#[test]
fn env_errors() {
    let (m, h) = msg_help(&format!("{ECHO}export FOO\n"));
    assert_eq!(m, "missing `=` in `FOO`");
    assert_eq!(h, "write `FOO=value` (or `FOO=` for an empty value)");
    let (m, h) = msg_help(&format!("{ECHO}export GREETING=hello world\n"));
    assert_eq!(m, "missing `=` in `world`");
    assert!(h.contains("must be quoted"));
    let e = errs(&format!("{ECHO}export A=\"ü\" 1X=2\n"));
    assert_eq!(e[0].message, "invalid variable name `1X`");
    assert_eq!((e[0].line, e[0].column, e[0].width), (2, 14, 2));
    assert_eq!(
        msg_help(&format!("{ECHO}env =x\n")).0,
        "missing variable name before `=`"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}export\n")).0,
        "`export` needs at least one KEY=VALUE"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}export A-B=1\n")).0,
        "invalid variable name `A-B`"
    );
    let o = ok(&format!("{ECHO}export EMPTY= URL=http://x/?a=b\n"));
    assert_eq!(o.env[0], ("EMPTY".into(), "".into()));
    assert_eq!(o.env[1], ("URL".into(), "http://x/?a=b".into()));
}

#[test]
fn unterminated_quote_points_at_the_quote() {
    assert_eq!(
        one(&format!("{ECHO}export GREETING=\"hello world\n")),
        "echo.orders:2:17: error: unterminated double quote\n  |\n2 | export GREETING=\"hello world\n  \
         |                 ^\n  = help: close it with `\"` on the same line; a value cannot span lines"
    );
    let e = errs(&format!("{ECHO}export A='x\n"));
    assert_eq!(
        (e[0].column, e[0].message.as_str()),
        (10, "unterminated single quote")
    );
    assert_eq!(
        msg_help(&format!("{ECHO}export A=x\\\n")).0,
        "line ends with a backslash"
    );
    // A quoting error on the autodeploy line is the only error.
    assert_eq!(
        msg_help("autodeploy \"https://h/a.git\n").0,
        "unterminated double quote"
    );
}

// ---- healthcheck, drain, instances --------------------------------------------

#[test]
fn healthcheck_forms() {
    let o = ok(&format!("{ECHO}healthcheck --timeout=2m\n"));
    assert_eq!(
        (o.healthcheck, o.health_timeout),
        (None, Some(Duration::from_secs(120)))
    );
    let o = ok(&format!("{ECHO}healthcheck /health?deep=1\n"));
    assert_eq!(
        (o.healthcheck.as_deref(), o.health_timeout),
        (Some("/health?deep=1"), None)
    );

    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck health\n")),
        (
            "health check path `health` must start with `/`".into(),
            "did you mean `/health`?".into()
        )
    );
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck /a\nhealthcheck /b\n")).0,
        "`healthcheck` is given twice; the first is on line 2"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck\n")).0,
        "`healthcheck` needs a path or `--timeout`"
    );
    let (m, h) = msg_help(&format!("{ECHO}healthcheck /a --timout 5s\n"));
    assert_eq!(m, "unknown flag `--timout` for `healthcheck`");
    assert!(h.starts_with("did you mean `--timeout`?"));
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck /a --timeout 0\n")).0,
        "`--timeout` must be more than 0"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck /a --timeout\n")).0,
        "`--timeout` needs a duration"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck /a /b\n")).0,
        "unexpected argument `/b` for `healthcheck`"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}healthcheck '/a b'\n")).0,
        "health check path `/a b` must not contain whitespace"
    );
}

#[test]
fn durations() {
    let d = |s: &str| ok(&format!("{ECHO}drain {s}\n")).drain.unwrap();
    assert_eq!(d("500ms"), Duration::from_millis(500));
    assert_eq!(d("30s"), Duration::from_secs(30));
    assert_eq!(d("5m"), Duration::from_secs(300));
    assert_eq!(d("1h"), Duration::from_secs(3600));
    assert_eq!(d("90"), Duration::from_secs(90));
    assert_eq!(d("0"), Duration::ZERO);
    assert_eq!(d("24h"), Duration::from_secs(86400));
    for bad in ["1.5s", "abc", "5d", "s", "-1s", "99999999999999999999h"] {
        let (m, h) = msg_help(&format!("{ECHO}drain {bad}\n"));
        assert!(m.starts_with("invalid duration"), "{bad}: {m}");
        assert!(h.contains("`500ms`, `30s`, `5m` or `1h`"));
    }
    assert_eq!(
        msg_help(&format!("{ECHO}drain 25h\n")).0,
        "`25h` is too long for `drain`"
    );
}

#[test]
fn drain_and_instances_rules() {
    assert_eq!(
        msg_help(&format!("{ECHO}drain\n")).0,
        "`drain` needs a duration"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}drain 1s\ndrain 2s\n")).0,
        "`drain` is given twice; the first is on line 2"
    );
    let e = errs(&format!("{ECHO}drain 1s 2s 3s\n"));
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].message.as_str(), e[0].column),
        ("unexpected argument `2s` for `drain`", 10)
    );
    assert_eq!(ok(&format!("{ECHO}instances 64\n")).instances, Some(64));
    assert_eq!(ok(&format!("{ECHO}instances 1\n")).instances, Some(1));
    for bad in ["0", "65", "x", "-1", "1.5", "999999999999"] {
        assert_eq!(
            msg_help(&format!("{ECHO}instances {bad}\n")).0,
            format!("`instances` must be a whole number from 1 to 64, not `{bad}`")
        );
    }
    assert_eq!(
        msg_help(&format!("{ECHO}instances\n")).0,
        "`instances` needs a number"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}instances 2\nInstances 3\n")).0,
        "`instances` is given twice; the first is on line 2"
    );
}

// ---- unknown keywords, collecting everything ----------------------------------

#[test]
fn unknown_keyword_did_you_mean() {
    assert_eq!(
        one(&format!("{ECHO}publsh --private 3000\n")),
        "echo.orders:2:1: error: unknown keyword `publsh`\n  |\n2 | publsh --private 3000\n  \
         | ^^^^^^\n  = help: did you mean `publish`? valid keywords: autodeploy, publish, export, \
         env, healthcheck, drain, instances"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}frobnicate\n")).1,
        "valid keywords: autodeploy, publish, export, env, healthcheck, drain, instances"
    );
    assert!(msg_help(&format!("{ECHO}build make\n"))
        .1
        .starts_with("`build` belongs in the `Starphleet` file at the root of the app repository"));
    assert_eq!(
        msg_help(&format!("{ECHO}GREETING=hi\n")).1,
        "to set an environment variable write `export GREETING=hi`"
    );
}

#[test]
fn every_error_is_reported_in_line_order() {
    let e = errs("publsh --private 3000\nexport 1A=2\ninstances 0\n");
    let lines: Vec<_> = e.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(
        lines,
        [
            (
                1,
                "missing `autodeploy`: every order needs the git repository to run"
            ),
            (1, "unknown keyword `publsh`"),
            (2, "invalid variable name `1A`"),
            (
                3,
                "`instances` must be a whole number from 1 to 64, not `0`"
            ),
        ]
    );
}

#[test]
fn error_flood_is_capped() {
    let text = format!("{ECHO}export {}\n", "x ".repeat(10_000));
    let e = errs(&text);
    assert_eq!(e.len(), 51);
    assert_eq!(e[50].message, "… and 9950 more errors in this file");
    let text = format!("{ECHO}{}", "publish --private 1\n".repeat(5_000));
    assert_eq!(errs(&text).len(), 51);
}

#[test]
fn invalid_service_names() {
    for name in ["my app", "a//b", "", "x/.hidden", "naïve"] {
        let e = parse_order(name, Path::new("x.orders"), ECHO).unwrap_err();
        assert!(e[0].message.starts_with("invalid service name"), "{name}");
        assert_eq!(
            (e[0].line, e[0].column, e[0].source_line.as_str()),
            (1, 1, "")
        );
    }
    assert!(parse_order("team/api-v2.x_y", Path::new("x.orders"), ECHO).is_ok());
}

#[test]
fn columns_count_chars_not_bytes() {
    let e = errs(&format!("{ECHO}# ünïcödé\nexport Ä=1\n"));
    assert_eq!((e[0].line, e[0].column, e[0].width), (3, 8, 1));
    assert!(e[0].to_string().contains("3 | export Ä=1\n  |        ^"));
}

#[test]
fn nothing_panics_on_nasty_input() {
    let long = "x".repeat(100_000);
    let inputs = [
        String::new(),
        "\n\n\n".into(),
        "\r".into(),
        "\"".into(),
        "'".into(),
        "\\".into(),
        "#".into(),
        "publish --".into(),
        "publish --=".into(),
        "publish --private=".into(),
        "publish --url".into(),
        "autodeploy #".into(),
        "autodeploy ##".into(),
        "autodeploy a#".into(),
        "autodeploy '#'".into(),
        "export =".into(),
        "export ==".into(),
        "healthcheck --timeout=".into(),
        "drain ''".into(),
        "\u{0}\u{1b}[2J\u{7f}".into(),
        "é\té\t\"é".into(),
        format!("publish --private {long}"),
        format!("autodeploy {long}#{long}"),
        format!("{long} {long}"),
        "\u{fffd}\u{fffd}".into(),
        "publish\u{a0}--private\u{2003}3000".into(),
    ];
    for text in &inputs {
        for service in ["echo", "", "a b", "starphleet"] {
            if let Err(ds) = parse_order(service, Path::new("x.orders"), text) {
                for d in ds {
                    let _ = d.to_string();
                    assert!(d.line >= 1 && d.column >= 1 && d.width >= 1);
                }
            }
        }
        if let Err(ds) = parse_app(Path::new("Starphleet"), text) {
            ds.iter().for_each(|d| drop(d.to_string()));
        }
        if let Err(ds) = parse_env_file(Path::new(".starphleet"), text) {
            ds.iter().for_each(|d| drop(d.to_string()));
        }
        let _ = parse_procfile(text);
    }
}

// ---- the app's Starphleet file ---------------------------------------------------

#[test]
fn app_spec_keeps_raw_commands() {
    let app = parse_app(
        Path::new("Starphleet"),
        "# build it\r\n\
         build python3 -m compileall .   # compile\n\
         BUILD echo \"a # b\" 'c  d' $HOME#x\n\
         start  python3 server.py --greeting \"hi there\"  \n\
         healthcheck /\n\
         export LOG_LEVEL=info\n",
    )
    .unwrap();
    assert_eq!(
        app.build,
        ["python3 -m compileall .", "echo \"a # b\" 'c  d' $HOME#x"]
    );
    assert_eq!(
        app.start.as_deref(),
        Some("python3 server.py --greeting \"hi there\"")
    );
    assert_eq!(app.healthcheck.as_deref(), Some("/"));
    assert_eq!(app.env, [("LOG_LEVEL".to_string(), "info".to_string())]);
    // No start is not an error here: the Procfile may provide it.
    assert_eq!(
        parse_app(Path::new("Starphleet"), "build make\n")
            .unwrap()
            .start,
        None
    );
}

#[test]
fn app_spec_errors() {
    let app = |t: &str| parse_app(Path::new("Starphleet"), t).unwrap_err();
    let e = app("start a\nstart b\n");
    assert_eq!(
        e[0].message,
        "`start` is given twice; the first is on line 1"
    );
    assert_eq!(
        app("strat python3 server.py\n")[0].to_string(),
        "Starphleet:1:1: error: unknown keyword `strat`\n  |\n1 | strat python3 server.py\n  | \
         ^^^^^\n  = help: did you mean `start`? valid keywords: build, start, healthcheck, export, env"
    );
    assert!(app("publish --private 3000\n")[0]
        .help
        .as_deref()
        .unwrap()
        .starts_with("`publish` belongs in the service's `.orders` file in headquarters"));
    assert_eq!(
        app("build   # nothing\n")[0].message,
        "`build` needs a command"
    );
    assert_eq!(app("start\n")[0].message, "`start` needs a command");
    assert_eq!(
        app("start echo 'oops\n")[0].message,
        "unterminated single quote"
    );
    assert_eq!(
        app("healthcheck\n")[0].message,
        "`healthcheck` needs a path"
    );
    assert_eq!(
        app("healthcheck /a --timeout 5s\n")[0].message,
        "unexpected argument `--timeout` for `healthcheck`"
    );
    assert_eq!(
        app("healthcheck /a\nhealthcheck /b\n")[0].message,
        "`healthcheck` is given twice; the first is on line 1"
    );
    assert_eq!(app("export X\n")[0].message, "missing `=` in `X`");
}

#[test]
fn procfile_web_line() {
    assert_eq!(
        parse_procfile("worker: celery\r\nweb:  gunicorn app:app  \r\n").as_deref(),
        Some("gunicorn app:app")
    );
    assert_eq!(
        parse_procfile("web:python3 s.py").as_deref(),
        Some("python3 s.py")
    );
    assert_eq!(parse_procfile("# web: x\nworker: y\n"), None);
    assert_eq!(parse_procfile("web:\n"), None);
    assert_eq!(parse_procfile("webby: x\n"), None);
    assert_eq!(parse_procfile(""), None);
}

// ---- env files ----------------------------------------------------------------------

#[test]
fn env_file_forms() {
    let env = parse_env_file(
        Path::new(".starphleet"),
        "# phleet settings\n\nA=1\nexport B=\"two words\" C='x'\r\nEXPORT D=\nA=override # later wins\n",
    )
    .unwrap();
    let keys: Vec<_> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(keys, ["A=1", "B=two words", "C=x", "D=", "A=override"]);
}

#[test]
fn env_file_errors() {
    let e = |t: &str| parse_env_file(Path::new(".starphleet"), t).unwrap_err();
    assert_eq!(
        e("A=hello world\n")[0].to_string(),
        ".starphleet:1:9: error: missing `=` in `world`\n  |\n1 | A=hello world\n  |         \
         ^^^^^\n  = help: a value with spaces must be quoted, e.g. `GREETING=\"hello world\"`"
    );
    assert_eq!(
        e("exprot A=1\n")[0].help.as_deref(),
        Some("did you mean `export`? valid keywords: export")
    );
    assert_eq!(
        e("export\n")[0].message,
        "`export` needs at least one KEY=VALUE"
    );
    assert_eq!(e("9A=1\n")[0].message, "invalid variable name `9A`");
    assert_eq!(e("A=\"x\n")[0].message, "unterminated double quote");
    assert_eq!(e("A\nB=1\nC\n").len(), 2);
}

// ---- headquarters -------------------------------------------------------------------

fn write(root: &Path, rel: &str, text: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn headquarters_loads_good_broken_and_clashing_orders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, ".starphleet", b"export PHLEET=1\nLEVEL=debug\n");
    write(
        root,
        "echo.orders",
        b"autodeploy https://h/echo.git\npublish --private 3000\n",
    );
    write(
        root,
        "team/api.orders",
        b"autodeploy https://h/api.git#main\npublish --private 8080 --url /api\n",
    );
    // z/late.orders claims team/api's port and prefix: it is the later one by path.
    write(
        root,
        "z/late.orders",
        b"autodeploy https://h/late.git\n# same place\npublish --private 1 --public 80 --url /api/\n",
    );
    write(
        root,
        "broken.orders",
        b"autodeploy https://h/b.git\npublish --privat 3000\n",
    );
    write(
        root,
        "latin1.orders",
        b"autodeploy https://h/x.git\nexport A=caf\xe9\n",
    );
    // Hidden folders (git's own, editors') and non-orders files are ignored.
    write(root, ".git/hooks/x.orders", b"garbage");
    write(root, ".hidden.orders", b"garbage");
    write(root, "README.md", b"# hq");
    write(root, "ships", b"ship1\n");

    let hq = load_headquarters(root);
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["echo", "team/api"]);
    assert_eq!(hq.orders[1].path, PathBuf::from("team/api.orders"));
    assert_eq!(hq.orders[1].publish[0].url, "/api");
    assert_eq!(
        hq.settings,
        [
            ("PHLEET".to_string(), "1".to_string()),
            ("LEVEL".into(), "debug".into())
        ]
    );
    assert!(!hq.settings_broken());

    let broken: Vec<_> = hq.broken.iter().map(|b| b.service.as_str()).collect();
    assert_eq!(broken, ["broken", "latin1", "z/late"]);
    assert_eq!(hq.errors.len(), 3);
    let late = &hq.broken[2];
    assert_eq!(late.path, PathBuf::from("z/late.orders"));
    assert_eq!(
        late.diagnostics[0].to_string(),
        "z/late.orders:3:1: error: port 80 and URL prefix `/api` are already published by \
         team/api.orders:2\n  |\n3 | publish --private 1 --public 80 --url /api/\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: two services cannot share a public \
         port and URL prefix; change `--url` or `--public` in one of the two orders"
    );
    assert_eq!(
        hq.broken[1].diagnostics[0].to_string(),
        "latin1.orders:2:13: error: file is not valid UTF-8 (byte 0xe9)\n  |\n\
         2 | export A=caf\u{fffd}\n  |             ^\n  = help: save the file as UTF-8 text"
    );

    let rendered = hq.render_errors();
    assert!(
        rendered.starts_with("broken.orders:2:9: error: unknown flag `--privat` for `publish`\n")
    );
    assert!(rendered.contains("\n\nlatin1.orders:2:13:"));
    assert!(rendered.contains("\n\nz/late.orders:3:1:"));
    assert!(rendered.ends_with("in one of the two orders\n"));
}

#[test]
fn headquarters_reports_a_broken_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".starphleet", b"PHLEET\n");
    write(dir.path(), "echo.orders", ECHO.as_bytes());
    let hq = load_headquarters(dir.path());
    assert_eq!(hq.orders.len(), 1);
    assert!(hq.settings.is_empty());
    assert!(hq.settings_broken());
    assert_eq!(
        hq.render_errors(),
        ".starphleet:1:1: error: missing `=` in `PHLEET`\n  |\n1 | PHLEET\n  | ^^^^^^\n  \
         = help: write `PHLEET=value` (or `PHLEET=` for an empty value)\n"
    );
}

#[test]
fn headquarters_without_settings_or_orders() {
    let dir = tempfile::tempdir().unwrap();
    let hq = load_headquarters(dir.path());
    assert_eq!(hq, Headquarters::default());
    assert_eq!(hq.render_errors(), "");

    let missing = load_headquarters(&dir.path().join("nope"));
    assert_eq!(missing.errors.len(), 1);
    assert!(missing.errors[0]
        .message
        .starts_with("cannot read headquarters folder"));
}

#[test]
fn headquarters_folders_named_orders_are_folders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("odd.orders")).unwrap();
    write(dir.path(), "odd.orders/inner.orders", ECHO.as_bytes());
    let hq = load_headquarters(dir.path());
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["odd.orders/inner"]);
    assert!(hq.errors.is_empty(), "{}", hq.render_errors());
}

// ---- what headquarters may contain: symlinks, sizes ---------------------------------

/// A string that appears nowhere but in the files a test plants outside HQ.
fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("SECRET{}x{nanos}", std::process::id())
}

/// Everything a consumer of `hq` could show: rendered errors and the whole value as JSON.
fn everything_shown(hq: &Headquarters) -> String {
    format!(
        "{}\n{}",
        hq.render_errors(),
        serde_json::to_string(hq).unwrap()
    )
}

#[test]
fn headquarters_never_follows_a_symlink() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let secret = unique_secret();
    // If followed, these would parse into an order, settings, and diagnostics quoting lines.
    let valid = outside.path().join("valid");
    std::fs::write(&valid, format!("autodeploy https://h/{secret}.git\n")).unwrap();
    let invalid = outside.path().join("shadow");
    std::fs::write(&invalid, format!("root:{secret}:19000:0:99999:7:::\n")).unwrap();
    let env = outside.path().join("env");
    std::fs::write(&env, format!("LEAK={secret}\n")).unwrap();
    let folder = outside.path().join("folder");
    write(
        &folder,
        "inner.orders",
        format!("{secret} oops\n").as_bytes(),
    );

    let hq_dir = tempfile::tempdir().unwrap();
    let root = hq_dir.path();
    write(root, "echo.orders", ECHO.as_bytes());
    symlink(&invalid, root.join("shadow.orders")).unwrap();
    symlink(&valid, root.join("looks-fine.orders")).unwrap();
    symlink(&env, root.join(".starphleet")).unwrap();
    symlink(&folder, root.join("team")).unwrap();
    symlink(root, root.join("loop")).unwrap();
    symlink("/nonexistent/target", root.join("dangling.orders")).unwrap();
    write(root, "nested/ok.orders", ECHO.as_bytes());
    symlink(&invalid, root.join("nested/README.md")).unwrap();

    let hq = load_headquarters(root);
    let shown = everything_shown(&hq);
    assert!(
        !shown.contains(&secret),
        "a byte from outside HQ leaked:\n{shown}"
    );
    assert!(!shown.contains("19000"), "{shown}");

    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["echo", "nested/ok"]);
    // A symlinked order is a broken order: the ship keeps its last good version.
    let broken: Vec<_> = hq.broken.iter().map(|b| b.service.as_str()).collect();
    assert_eq!(broken, ["dangling", "looks-fine", "shadow"]);
    assert!(hq.settings.is_empty());
    assert!(hq.settings_broken());

    let file_help = "  = help: replace the symlink with the file itself; symlinks in headquarters \
                     are never followed";
    let walk_help = "  = help: replace the symlink with the file or folder itself; symlinks in \
                     headquarters are never followed";
    let rendered: Vec<String> = hq.errors.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        rendered,
        [
            format!(".starphleet:1:1: error: symlinks are not allowed in headquarters\n{file_help}"),
            format!("loop:1:1: error: symlinks are not allowed in headquarters\n{walk_help}"),
            format!(
                "nested/README.md:1:1: error: symlinks are not allowed in headquarters\n{walk_help}"
            ),
            format!("team:1:1: error: symlinks are not allowed in headquarters\n{walk_help}"),
            format!(
                "dangling.orders:1:1: error: symlinks are not allowed in headquarters\n{file_help}"
            ),
            format!(
                "looks-fine.orders:1:1: error: symlinks are not allowed in headquarters\n{file_help}"
            ),
            format!(
                "shadow.orders:1:1: error: symlinks are not allowed in headquarters\n{file_help}"
            ),
        ]
    );
}

#[test]
fn hq_files_are_read_without_following_symlinks() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let secret = unique_secret();
    let key = outside.path().join("key");
    std::fs::write(&key, format!("-----BEGIN {secret}-----\n\u{ff}")).unwrap();
    write(outside.path(), "certs/api.key", secret.as_bytes());

    let hq = tempfile::tempdir().unwrap();
    let root = hq.path();
    write(root, "ships", b"ship-1\nship-2\n");
    write(root, "certs/web.crt", b"-----BEGIN CERTIFICATE-----\n");
    write(root, "latin1", b"caf\xe9\n");
    symlink(&key, root.join("certs/api.key")).unwrap();
    symlink("/nonexistent", root.join("certs/gone.key")).unwrap();
    symlink(outside.path().join("certs"), root.join("linked")).unwrap();
    std::fs::create_dir(root.join("folder")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let read = |rel: &str| read_hq_file(root, Path::new(rel));
    assert_eq!(read("ships").unwrap().as_deref(), Some("ship-1\nship-2\n"));
    assert_eq!(
        read("certs/web.crt").unwrap().as_deref(),
        Some("-----BEGIN CERTIFICATE-----\n")
    );
    // Absent files and folders are not errors: the ship decides whether it needs them.
    assert_eq!(read("certs/none.crt").unwrap(), None);
    assert_eq!(read("nope/none.crt").unwrap(), None);
    assert_eq!(read("ships/under-a-file").unwrap(), None);

    let err = |rel: &str| read(rel).unwrap_err().to_string();
    let help = "  = help: replace the symlink with the file itself; symlinks in headquarters are \
                never followed";
    assert_eq!(
        err("certs/api.key"),
        format!("certs/api.key:1:1: error: symlinks are not allowed in headquarters\n{help}")
    );
    assert_eq!(
        err("certs/gone.key"),
        format!("certs/gone.key:1:1: error: symlinks are not allowed in headquarters\n{help}")
    );
    // A symlinked folder on the way is named, whatever is (or is not) behind it.
    assert_eq!(
        err("linked/api.key"),
        format!(
            "linked:1:1: error: symlinks are not allowed in headquarters: cannot read \
             `linked/api.key` through it\n{help}"
        )
    );
    assert_eq!(
        err("linked/missing"),
        format!(
            "linked:1:1: error: symlinks are not allowed in headquarters: cannot read \
             `linked/missing` through it\n{help}"
        )
    );
    // A FIFO is refused without being opened (opening it would block).
    assert_eq!(
        err("fifo"),
        "fifo:1:1: error: not a regular file (a named pipe)\n  = help: headquarters files must \
         be plain files committed to git"
    );
    assert_eq!(
        err("folder"),
        "folder:1:1: error: not a regular file (a folder)\n  = help: headquarters files must be \
         plain files committed to git"
    );
    for outside_hq in ["../x", "/etc/passwd", "certs/../ships", "", "."] {
        let d = read(outside_hq).unwrap_err();
        assert!(
            d.message.ends_with("is not a path inside headquarters"),
            "{outside_hq}: {d}"
        );
    }
    assert_eq!(
        read("latin1").unwrap_err().message,
        "file is not valid UTF-8 (byte 0xe9)"
    );
    assert_eq!(
        read_hq_bytes(root, Path::new("latin1")).unwrap().unwrap(),
        b"caf\xe9\n"
    );
    let d = read_hq_bytes(root, Path::new("certs/api.key")).unwrap_err();
    assert!(!format!("{d}{d:?}").contains(&secret));
    let missing_root = read_hq_file(&root.join("nope"), Path::new("ships")).unwrap_err();
    assert!(missing_root
        .message
        .starts_with("cannot read headquarters folder"));
    // A diagnostic works as an error value.
    let _: Box<dyn std::error::Error> = Box::new(missing_root);
}

#[test]
fn files_over_one_mib_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Exactly the limit is fine: a valid order padded with a comment.
    let mut exact = format!("{ECHO}# ").into_bytes();
    exact.resize(MAX_HQ_FILE_BYTES as usize - 1, b'x');
    exact.push(b'\n');
    write(root, "exact.orders", &exact);
    let mut over = exact.clone();
    over.push(b'\n');
    write(root, "over.orders", &over);
    // Sparse 64 GiB files: reading them would take minutes and all the memory.
    let huge = std::fs::File::create(root.join("huge.orders")).unwrap();
    huge.set_len(64 << 30).unwrap();
    let settings = std::fs::File::create(root.join(".starphleet")).unwrap();
    settings.set_len(64 << 30).unwrap();
    std::fs::File::create(root.join("ships"))
        .unwrap()
        .set_len(64 << 30)
        .unwrap();

    let started = std::time::Instant::now();
    let hq = load_headquarters(root);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["exact"]);
    assert!(hq.settings_broken());
    let help = "  = help: orders and settings are a few lines each: check that the right file is \
                committed under this name, and keep anything large out of headquarters";
    assert_eq!(
        hq.render_errors(),
        format!(
            ".starphleet:1:1: error: file is 68719476736 bytes; headquarters files may be at most \
             1048576 bytes (1 MiB)\n{help}\n\n\
             huge.orders:1:1: error: file is 68719476736 bytes; headquarters files may be at most \
             1048576 bytes (1 MiB)\n{help}\n\n\
             over.orders:1:1: error: file is 1048577 bytes; headquarters files may be at most \
             1048576 bytes (1 MiB)\n{help}\n"
        )
    );
    assert_eq!(
        read_hq_file(root, Path::new("ships")).unwrap_err().message,
        "file is 68719476736 bytes; headquarters files may be at most 1048576 bytes (1 MiB)"
    );
}

// ---- service names a deploy can use -------------------------------------------------

#[test]
fn service_names_must_fit_a_hostname() {
    let name_err = |name: &str| {
        let path = PathBuf::from(format!("{name}.orders"));
        parse_order(name, &path, ECHO).unwrap_err()[0].to_string()
    };
    assert_eq!(
        name_err("team/my app"),
        "team/my app.orders:1:1: error: invalid service name `team/my app` (from the file name)\n  \
         = help: rename the file (and folders) so each part starts with a letter or digit and has \
         only letters, digits, `-`, `_` and `.`, e.g. `team/my-app.orders`: the name becomes the \
         container's hostname, its log folder and the default URL"
    );
    for bad in [
        "-api", "_api", ".api", "team/-x", "a b", "naïve", "x:y", "a/", "",
    ] {
        let e = parse_order(bad, Path::new("x.orders"), ECHO).unwrap_err();
        assert!(e[0].message.starts_with("invalid service name"), "{bad}");
    }
    assert!(name_err("-api").contains("e.g. `api.orders`"));

    let longest = "a".repeat(MAX_SERVICE_NAME);
    assert_eq!(MAX_SERVICE_NAME, 63);
    assert!(parse_order(&longest, Path::new("x.orders"), ECHO).is_ok());
    let nested = format!("t/{}", "b".repeat(61));
    assert!(parse_order(&nested, Path::new("x.orders"), ECHO).is_ok());
    let too_long = format!("team/{}", "b".repeat(59));
    assert_eq!(
        name_err(&too_long),
        format!(
            "{too_long}.orders:1:1: error: invalid service name `team/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb…` \
             (from the file name): 64 characters, at most 63\n  = help: rename the file or its \
             folders to something shorter: the name becomes the container's hostname, its log \
             folder and the default URL, and Linux refuses hostnames over 64 characters"
        )
    );

    assert!(parse_order("a/b/c/d", Path::new("x.orders"), ECHO).is_ok());
    assert_eq!(
        name_err("a/b/c/d/e"),
        "a/b/c/d/e.orders:1:1: error: invalid service name `a/b/c/d/e` (from the file name): 5 \
         parts deep, at most 4\n  = help: move the file up to at most 3 folders deep, e.g. \
         `a/b/c/e.orders`"
    );
}

#[test]
fn headquarters_rejects_file_names_a_deploy_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "my app.orders", ECHO.as_bytes());
    write(root, "a/b/c/d/e.orders", ECHO.as_bytes());
    write(root, &format!("{}.orders", "x".repeat(64)), ECHO.as_bytes());
    write(root, "ok.orders", ECHO.as_bytes());
    let hq = load_headquarters(root);
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["ok"]);
    let broken: Vec<_> = hq.broken.iter().map(|b| b.path.to_string_lossy()).collect();
    assert_eq!(
        broken,
        [
            "a/b/c/d/e.orders".to_string(),
            "my app.orders".into(),
            format!("{}.orders", "x".repeat(64))
        ]
    );
    assert!(hq.errors[1]
        .to_string()
        .starts_with("my app.orders:1:1: error: invalid service name `my app`"));
}

#[test]
fn folders_nested_too_deep_are_not_searched() {
    let dir = tempfile::tempdir().unwrap();
    let deep = (1..=17)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    write(dir.path(), &format!("{deep}/x.orders"), ECHO.as_bytes());
    let hq = load_headquarters(dir.path());
    assert!(hq.orders.is_empty() && hq.broken.is_empty());
    assert_eq!(hq.errors.len(), 1);
    assert_eq!(
        hq.errors[0].to_string(),
        format!(
            "{deep}:1:1: error: folder is nested more than 16 deep; it is not searched for \
             orders\n  = help: service names are at most 4 parts, e.g. `team/api/v2/web.orders`: \
             move the orders up"
        )
    );
}

// ---- environment sizes a deploy can start -----------------------------------------------

const E2BIG: &str = "Linux refuses to start a process with an environment this large \
                     (\"argument list too long\"), so the deploy would fail; remove variables, or \
                     pass large data to the app as a file";

#[test]
fn too_many_env_variables() {
    let vars = |n: usize| {
        (0..n)
            .map(|i| format!("export V{i}=x\n"))
            .collect::<String>()
    };
    assert_eq!(ok(&format!("{ECHO}{}", vars(MAX_ENV_VARS))).env.len(), 4096);
    assert_eq!(
        one(&format!("{ECHO}{}", vars(MAX_ENV_VARS + 1))),
        format!(
            "echo.orders:4098:1: error: too many environment variables: 4097, at most 4096\n     \
             |\n4098 | export V4096=x\n     | ^^^^^^^^^^^^^^\n     = help: {E2BIG}"
        )
    );
    // The ship folds repeats (later wins): they count once.
    let repeats = "export SAME=x\n".repeat(MAX_ENV_VARS + 10);
    assert_eq!(ok(&format!("{ECHO}{repeats}")).env.len(), 4106);
}

#[test]
fn env_too_large_in_bytes() {
    // 100000-byte values: five fit in 512 KiB, six do not.
    let value = "v".repeat(100_000);
    let lines = |n: usize| {
        (0..n)
            .map(|i| format!("export B{i}={value}\n"))
            .collect::<String>()
    };
    assert!(parse(&format!("{ECHO}{}", lines(5))).is_ok());
    let e = errs(&format!("{ECHO}{}", lines(6)));
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].line, e[0].column, e[0].message.as_str()),
        (
            7,
            1,
            "environment too large: 600024 bytes, at most 524288 (512 KiB, counting each \
             KEY=VALUE plus one byte)"
        )
    );
    assert_eq!(e[0].help.as_deref(), Some(E2BIG));
    // Overwriting a large value with a small one brings it back under: what counts is what runs.
    assert!(parse(&format!("{ECHO}{}export B0=small\n", lines(6))).is_ok());
}

#[test]
fn one_env_variable_too_long() {
    // `X=` + value + NUL: 131072 bytes is Linux's limit for one variable.
    let fits = "v".repeat(MAX_ENV_ENTRY_BYTES - 3);
    assert!(parse(&format!("{ECHO}export X={fits}\n")).is_ok());
    let e = errs(&format!("{ECHO}export X={fits}v\n"));
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].line, e[0].column, e[0].width),
        (2, 10, MAX_ENV_ENTRY_BYTES - 2)
    );
    assert_eq!(
        e[0].message,
        "variable `X` is too long: 131073 bytes, at most 131072 (128 KiB, counting KEY=VALUE plus \
         one byte)"
    );
    // The app's `Starphleet` and env files go into the same environment.
    let app = parse_app(Path::new("Starphleet"), &format!("export X={fits}vv\n")).unwrap_err();
    assert!(app[0].message.starts_with("variable `X` is too long"));
}

#[test]
fn env_limits_count_starphleet_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let vars = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("export {prefix}{i}=x\n"))
            .collect::<String>()
    };
    write(root, ".starphleet", vars("S", 3000).as_bytes());
    write(
        root,
        "small.orders",
        format!("{ECHO}{}", vars("O", 1000)).as_bytes(),
    );
    write(
        root,
        "big.orders",
        format!("{ECHO}{}", vars("O", 1100)).as_bytes(),
    );
    // Overriding `.starphleet`'s variables adds nothing.
    write(
        root,
        "same.orders",
        format!("{ECHO}{}", vars("S", 3000)).as_bytes(),
    );
    let hq = load_headquarters(root);
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["same", "small"]);
    assert_eq!(hq.settings.len(), 3000);
    assert_eq!(
        hq.render_errors(),
        format!(
            "big.orders:1:1: error: with `.starphleet`, too many environment variables: 4100, at \
             most 4096\n  = help: `.starphleet` gives every service 3000 variables (22890 bytes) \
             as well; remove some there or in this order. {E2BIG}\n"
        )
    );

    write(root, ".starphleet", vars("S", 4097).as_bytes());
    let hq = load_headquarters(root);
    assert!(hq.settings_broken());
    assert_eq!(
        hq.errors[0].to_string(),
        format!(
            ".starphleet:1:1: error: too many environment variables: 4097, at most 4096\n  = \
             help: every service gets these variables; {E2BIG}"
        )
    );
}

// ---- ports the ship holds ---------------------------------------------------------------

#[test]
fn reserved_ports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "admin.orders",
        format!("{ECHO}publish --private 3000 --public 9797\n").as_bytes(),
    );
    write(
        root,
        "eq.orders",
        format!("{ECHO}publish --private 3000 --PUBLIC=9797 --url /eq\n").as_bytes(),
    );
    write(
        root,
        "web.orders",
        format!("{ECHO}# default port\npublish --private 3000\n").as_bytes(),
    );
    write(
        root,
        "fine.orders",
        format!("{ECHO}publish --private 9797 --public 8080\n").as_bytes(),
    );
    let opts = HqOptions {
        reserved_ports: vec![
            (9797, "the ship's admin endpoint (--admin)".into()),
            (80, "the test's own server".into()),
        ],
    };
    let hq = load_headquarters_with(root, &opts);
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["fine"]);
    let help = |port: u16| {
        format!(
            "  = help: publish this service on another port with `--public PORT`; the ship \
             cannot listen on {port} twice"
        )
    };
    let carets_at_33 = format!("  | {}^^^^", " ".repeat(32));
    let admin = "the ship's admin endpoint (--admin)";
    assert_eq!(
        hq.render_errors(),
        [
            format!(
                "admin.orders:2:33: error: public port 9797 is reserved for {admin}\n  |\n\
                 2 | publish --private 3000 --public 9797\n{carets_at_33}\n{}",
                help(9797)
            ),
            format!(
                "eq.orders:2:33: error: public port 9797 is reserved for {admin}\n  |\n\
                 2 | publish --private 3000 --PUBLIC=9797 --url /eq\n{carets_at_33}\n{}",
                help(9797)
            ),
            format!(
                "web.orders:3:1: error: public port 80 (the default `--public`) is reserved for \
                 the test's own server\n  |\n3 | publish --private 3000\n  | {}\n{}\n",
                "^".repeat(22),
                help(80)
            ),
        ]
        .join("\n\n")
    );
    // Without options nothing is reserved.
    assert_eq!(load_headquarters(root).orders.len(), 4);
}
