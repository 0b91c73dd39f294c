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
            span_line: 2,
            hosts: Vec::new(),
            tls: false,
            redirect: false,
            max_body: None,
            timeout: None,
            body_timeout: None,
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
         env, healthcheck, drain, instances, memory, cpus, pids, base"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}frobnicate\n")).1,
        "valid keywords: autodeploy, publish, export, env, healthcheck, drain, instances, memory, \
         cpus, pids, base"
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
         ^^^^^\n  = help: did you mean `start`? valid keywords: build, start, healthcheck, export, env, memory, \
         cpus, pids, buildpack, base"
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
    write(root, "ships", b"ship1 http://10.1.0.11:9797\n");

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
    assert!(hq.ships_broken());
    let help = "  = help: orders and settings are a few lines each: check that the right file is \
                committed under this name, and keep anything large out of headquarters";
    assert_eq!(
        hq.render_errors(),
        format!(
            ".starphleet:1:1: error: file is 68719476736 bytes; headquarters files may be at most \
             1048576 bytes (1 MiB)\n{help}\n\n\
             ships:1:1: error: file is 68719476736 bytes; headquarters files may be at most \
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

// ---- publish at the edge: hosts, TLS, body size, timeout -------------------------------

#[test]
fn publish_hosts_tls_and_limits() {
    let o = ok(&format!(
        "{ECHO}publish --private 3000 --host App.Example.com --host '*.example.org' --tls \
         --max-body 10m --timeout 30s --body-timeout 2m --url /\n\
         publish --private 3000 --tls --no-redirect --public 8443 --host=api.example.com\n\
         publish --private 3000 --public 8080 --max-body=512k\n\
         publish --private 3000 --TLS --Host a.example.com --url /a\n"
    ));
    let p = &o.publish[0];
    assert_eq!(p.hosts, ["app.example.com", "*.example.org"]);
    assert!(p.tls && p.redirect);
    assert_eq!(p.public, 443, "`--tls` publishes on 443 by default");
    assert_eq!(p.url, "/");
    assert_eq!(p.max_body, Some(10 << 20));
    assert_eq!(p.timeout, Some(Duration::from_secs(30)));
    assert_eq!(p.body_timeout, Some(Duration::from_secs(120)));
    let p = &o.publish[1];
    assert!(p.tls && !p.redirect);
    assert_eq!(
        (p.public, p.hosts.as_slice()),
        (8443, &["api.example.com".to_string()][..])
    );
    let p = &o.publish[2];
    assert!(!p.tls && !p.redirect && p.hosts.is_empty());
    assert_eq!(
        (p.public, p.max_body, p.timeout),
        (8080, Some(512 << 10), None)
    );
    assert!(o.publish[3].tls);
    // Without the new flags nothing changes.
    let plain = &ok(&format!("{ECHO}publish --private 3000\n")).publish[0];
    assert_eq!(
        (
            plain.public,
            plain.tls,
            plain.redirect,
            plain.max_body,
            plain.timeout,
            plain.body_timeout
        ),
        (80, false, false, None, None, None)
    );
    assert!(plain.hosts.is_empty());
}

#[test]
fn tls_is_not_on_port_80() {
    assert_eq!(
        one(&format!("{ECHO}publish --private 3000 --tls --public 80\n")),
        "echo.orders:2:39: error: a `--tls` publish cannot use port 80\n  |\n\
         2 | publish --private 3000 --tls --public 80\n  |                                       ^^\n  \
         = help: port 80 stays plain HTTP: it carries the redirect to HTTPS and ACME HTTP-01 \
         challenges; use `--public 443` (the default with `--tls`) or another port"
    );
}

#[test]
fn no_redirect_needs_tls() {
    assert_eq!(
        one(&format!("{ECHO}publish --private 3000 --no-redirect\n")),
        "echo.orders:2:24: error: `--no-redirect` needs `--tls`\n  |\n\
         2 | publish --private 3000 --no-redirect\n  |                        ^^^^^^^^^^^^^\n  \
         = help: only a `--tls` publish redirects plain HTTP on port 80 to HTTPS; remove \
         `--no-redirect`, or add `--tls`"
    );
}

#[test]
fn publish_edge_flag_errors() {
    let p = |flags: &str| msg_help(&format!("{ECHO}publish --private 3000 {flags}\n"));
    assert_eq!(
        p("--host app.test:8080"),
        (
            "invalid host `app.test:8080`: write it without a port".into(),
            "`--host` matches the name in the request's Host header whatever the port; the port \
             goes in `--public`"
                .into()
        )
    );
    assert_eq!(
        p("--host a.*.test").0,
        "invalid host `a.*.test`: `*` may only be the whole leftmost label"
    );
    assert_eq!(
        p("--host '*.test'").0,
        "invalid host `*.test`: a wildcard needs a domain of at least two labels under it"
    );
    assert_eq!(
        p("--host https://app.test/").0,
        "invalid host `https://app.test/`: write the host name alone"
    );
    assert_eq!(
        p("--host"),
        (
            "`--host` needs a host name".into(),
            "`--host` limits the route to requests for this host name, e.g. `--host \
             app.example.com` or `--host '*.example.com'`; repeat it for more names"
                .into()
        )
    );
    assert_eq!(
        p("--host A.test --host a.test").0,
        "host `a.test` is given twice in one `publish` line"
    );
    assert_eq!(
        p("--tls=yes"),
        (
            "`--tls` takes no value".into(),
            "write `--tls` alone".into()
        )
    );
    assert_eq!(
        p("--tls --tls").0,
        "`--tls` is given twice in one `publish` line"
    );
    assert_eq!(p("--max-body 0").0, "`--max-body` must be more than 0");
    assert_eq!(
        p("--max-body lots"),
        (
            "invalid size `lots` for `--max-body`".into(),
            "`--max-body` is the largest request body the route accepts (bigger requests get \
             413), e.g. `--max-body 10m`; write a whole number of bytes or one with a binary \
             unit: `512k`, `64M`, `10m`, `1G` (1k = 1024 bytes; case does not matter)"
                .into()
        )
    );
    assert_eq!(
        p("--max-body 1m --max-body 2m").0,
        "`--max-body` is given twice in one `publish` line"
    );
    assert_eq!(p("--timeout 0").0, "`--timeout` must be more than 0");
    assert_eq!(p("--timeout 2d").0, "invalid duration `2d` for `--timeout`");
    assert_eq!(p("--timeout 25h").0, "`25h` is too long for `--timeout`");
    assert_eq!(
        p("--body-timeout 0"),
        (
            "`--body-timeout` must be more than 0".into(),
            "`--body-timeout` is how long a request body may go without a byte arriving before \
             the client gets 408 (default 30s), e.g. `--body-timeout 2m` for slow uploads"
                .into()
        )
    );
    assert_eq!(p("--body-timeout").0, "`--body-timeout` needs a duration");
    assert_eq!(
        p("--body-timeout 1s --body-timeout 2s").0,
        "`--body-timeout` is given twice in one `publish` line"
    );
    assert_eq!(
        p("--hots app.test"),
        (
            "unknown flag `--hots` for `publish`".into(),
            "did you mean `--host`? `publish` also takes `--host NAME` (repeatable), `--tls`, \
             `--no-redirect` (with `--tls`), `--max-body SIZE`, `--timeout DURATION` and \
             `--body-timeout DURATION`"
                .into()
        )
    );
    // A switch never swallows the next word: the stray port is explained.
    assert_eq!(
        msg_help(&format!("{ECHO}publish --tls 3000\n")).1,
        format!(
            "did you mean `--private 3000`? `--private` is the port your service listens on \
             inside its container (it receives it as $PORT); `--public` is the port users \
             connect to on the ship (default 80)"
        )
    );
}

#[test]
fn routes_in_one_order_clash_by_port_host_and_prefix() {
    // Different hosts, or hosts and no host, share a port and prefix.
    let o = ok(&format!(
        "{ECHO}publish --private 3000 --host a.test\npublish --private 3001 --host b.test\n\
         publish --private 3002\npublish --private 3003 --host '*.a.test'\n"
    ));
    assert_eq!(o.publish.len(), 4);
    assert_eq!(
        one(&format!(
            "{ECHO}publish --private 3000 --host a.test --host b.test\n\
             publish --private 3001 --host B.test\n"
        )),
        "echo.orders:3:1: error: port 80, host `b.test` and URL prefix `/echo` are already \
         published on line 2\n  |\n3 | publish --private 3001 --host B.test\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: remove one of the two `publish` lines, \
         or change `--public`, `--host` or `--url` in one"
    );
    assert_eq!(
        one(&format!(
            "{ECHO}publish --private 3000 --public 8443 --tls\n\
             publish --private 3000 --public 8443 --url /x\n"
        )),
        "echo.orders:3:1: error: port 8443 is published with `--tls` by line 2; this `publish` \
         has no `--tls`\n  |\n3 | publish --private 3000 --public 8443 --url /x\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: a port speaks either TLS or \
         plain HTTP: add `--tls` here, or use another `--public` port"
    );
}

#[test]
fn headquarters_routes_clash_by_port_host_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let order = |publish: &str| format!("{ECHO}{publish}\n");
    write(
        root,
        "a.orders",
        order("publish --private 1 --url / --host a.test").as_bytes(),
    );
    write(
        root,
        "b.orders",
        order("publish --private 1 --url / --host b.test").as_bytes(),
    );
    write(
        root,
        "c.orders",
        order("publish --private 1 --url /").as_bytes(),
    );
    write(
        root,
        "d.orders",
        order("publish --private 1 --url / --host '*.a.test'").as_bytes(),
    );
    write(
        root,
        "e.orders",
        order("publish --private 1 --url / --host A.test").as_bytes(),
    );
    write(
        root,
        "f.orders",
        order("publish --private 1 --public 443 --url /").as_bytes(),
    );
    write(
        root,
        "g.orders",
        order("publish --private 1 --tls --host g.test --url /").as_bytes(),
    );
    write(
        root,
        "h.orders",
        order("publish --private 1 --public 8443 --tls --host h.test").as_bytes(),
    );
    write(
        root,
        "i.orders",
        order("publish --private 1 --public 8443 --url /i").as_bytes(),
    );
    let hq = load_headquarters(root);
    let services: Vec<_> = hq.orders.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(services, ["a", "b", "c", "d", "f", "h"]);
    assert_eq!(
        hq.render_errors(),
        "e.orders:2:1: error: port 80, host `a.test` and URL prefix `/` are already published by \
         a.orders:2\n  |\n2 | publish --private 1 --url / --host A.test\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: two services cannot share a public \
         port, host and URL prefix; change `--url`, `--host` or `--public` in one of the two \
         orders\n\n\
         g.orders:2:1: error: port 443 is published without `--tls` by f.orders:2; this \
         `publish` has `--tls`\n  |\n2 | publish --private 1 --tls --host g.test --url /\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: a port speaks either TLS or \
         plain HTTP: remove `--tls` here, or use another `--public` port (with `--tls` the \
         default is 443)\n\n\
         i.orders:2:1: error: port 8443 is published with `--tls` by h.orders:2; this `publish` \
         has no `--tls`\n  |\n2 | publish --private 1 --public 8443 --url /i\n  | \
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: a port speaks either TLS or plain \
         HTTP: add `--tls` here, or use another `--public` port\n"
    );
}

// ---- resource limits, build timeout, base, buildpacks -------------------------------------

#[test]
fn resource_limits_in_orders_and_apps() {
    let o = ok(&format!("{ECHO}memory 512M\ncpus 0.5\nPIDS 256\n"));
    assert_eq!(
        o.resources,
        Resources {
            memory_bytes: Some(512 << 20),
            cpu_millis: Some(500),
            pids: Some(256)
        }
    );
    assert_eq!(ok(ECHO).resources, Resources::default());
    let app = parse_app(Path::new("Starphleet"), "start ./run\nmemory 1G\ncpus 2\n").unwrap();
    assert_eq!(
        app.resources,
        Resources {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(2000),
            pids: None
        }
    );
    assert_eq!(
        o.resources.over(&app.resources),
        Resources {
            memory_bytes: Some(512 << 20),
            cpu_millis: Some(500),
            pids: Some(256)
        }
    );
}

#[test]
fn resource_limit_errors() {
    assert_eq!(
        one(&format!("{ECHO}memory 1M\n")),
        "echo.orders:2:8: error: `memory` must be at least 4M, not 1M\n  |\n2 | memory 1M\n  |        \
         ^^\n  = help: `memory` takes the most memory each container of the service may use, at \
         least 4M, e.g. `memory 512M` or `memory 2G`; less leaves no room for the service to start"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}memory lots\n")).0,
        "invalid size `lots` for `memory`"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}memory\n")).0,
        "`memory` needs a size"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}memory 1G 2G\n")).0,
        "unexpected argument `2G` for `memory`"
    );
    assert_eq!(
        one(&format!("{ECHO}cpus 0.333\n")),
        "echo.orders:2:6: error: `cpus` must be a number from 0.01 to 256 with at most 2 \
         decimals, not `0.333`\n  |\n2 | cpus 0.333\n  |      ^^^^^\n  = help: `cpus` takes how \
         many CPUs each container may keep busy, from 0.01 to 256 with at most 2 decimals, e.g. \
         `cpus 0.5` or `cpus 2`"
    );
    for bad in ["0", "300", "-1", ".5", "half"] {
        assert!(msg_help(&format!("{ECHO}cpus {bad}\n"))
            .0
            .starts_with("`cpus` must be a number"));
    }
    assert_eq!(
        msg_help(&format!("{ECHO}pids 8\n")),
        (
            "`pids` must be a whole number from 16 to 4194304, not `8`".into(),
            "`pids` takes the most processes and threads each container may run at once, from 16 \
             to 4194304, e.g. `pids 512`"
                .into()
        )
    );
    assert_eq!(
        msg_help(&format!("{ECHO}cpus 1\ncpus 2\n")).0,
        "`cpus` is given twice; the first is on line 2"
    );
    let app = |t: &str| parse_app(Path::new("Starphleet"), t).unwrap_err();
    assert_eq!(
        app("pids 99999999\n")[0].message,
        "`pids` must be a whole number from 16 to 4194304, not `99999999`"
    );
    assert_eq!(
        app("memory 1G\nMemory 2G\n")[0].message,
        "`memory` is given twice; the first is on line 1"
    );
}

#[test]
fn build_timeout_in_orders_and_apps() {
    assert_eq!(
        ok(&format!("{ECHO}build --timeout 20m\n")).build_timeout,
        Some(Duration::from_secs(1200))
    );
    assert_eq!(
        ok(&format!("{ECHO}BUILD --TIMEOUT=1h\n")).build_timeout,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(ok(ECHO).build_timeout, None);
    // Any other `build` in an order stays where it belongs.
    assert!(msg_help(&format!("{ECHO}build make --timeout 5m\n"))
        .1
        .starts_with("`build` belongs in the `Starphleet` file at the root of the app repository"));
    let build_help = "`build --timeout DURATION` sets how long a build may take before it is \
                      stopped and the deploy fails, e.g. `build --timeout 20m` (at most 24h)";
    assert_eq!(
        one(&format!("{ECHO}build --timeout\n")),
        format!(
            "echo.orders:2:7: error: `--timeout` needs a duration\n  |\n2 | build --timeout\n  |       \
             ^^^^^^^^^\n  = help: {build_help}"
        )
    );
    assert_eq!(
        msg_help(&format!("{ECHO}build --timeout 25h\n")).0,
        "`25h` is too long for `build --timeout`"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}build --timeout 0\n")).0,
        "`build --timeout` must be more than 0"
    );
    assert_eq!(
        msg_help(&format!("{ECHO}build --timeout 5m make\n")),
        (
            "unexpected argument `make` for `build`".into(),
            build_help.into()
        )
    );
    assert_eq!(
        msg_help(&format!("{ECHO}build --timeout 5m\nbuild --timeout 6m\n")).0,
        "`build` is given twice; the first is on line 2"
    );

    let app = parse_app(
        Path::new("Starphleet"),
        "build --timeout 30m\nbuild npm ci\nbuild npm run build\nstart node server.js\n",
    )
    .unwrap();
    assert_eq!(app.build, ["npm ci", "npm run build"]);
    assert_eq!(app.build_timeout, Some(Duration::from_secs(1800)));
    let e = parse_app(Path::new("Starphleet"), "build --timeout=forever\n").unwrap_err();
    assert_eq!(
        e[0].message,
        "invalid duration `forever` for `build --timeout`"
    );
}

#[test]
fn buildpacks_and_base_in_apps() {
    let sha = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    let app = parse_app(
        Path::new("Starphleet"),
        &format!(
            "buildpack https://github.com/heroku/heroku-buildpack-python.git\n\
             buildpack https://github.com/heroku/heroku-buildpack-nodejs.git#v250\n\
             base https://example.com/debian-12.tar.gz --sha256 {sha}\n"
        ),
    )
    .unwrap();
    assert_eq!(
        app.buildpacks,
        [
            GitSource {
                url: "https://github.com/heroku/heroku-buildpack-python.git".into(),
                reference: None
            },
            GitSource {
                url: "https://github.com/heroku/heroku-buildpack-nodejs.git".into(),
                reference: Some("v250".into())
            }
        ]
    );
    assert_eq!(
        app.base,
        Some(BaseImage {
            source: "https://example.com/debian-12.tar.gz".into(),
            sha256: Some(sha.to_ascii_lowercase())
        })
    );
    let base = |line: &str| parse_app(Path::new("Starphleet"), line).map(|a| a.base);
    assert_eq!(
        base("base images/root.tar\n").unwrap(),
        Some(BaseImage {
            source: "images/root.tar".into(),
            sha256: None
        })
    );
    assert_eq!(
        base("base root.tar --sha256=").unwrap_err()[0].message,
        "`--sha256` needs 64 hex digits"
    );
    let errs = |t: &str| parse_app(Path::new("Starphleet"), t).unwrap_err();
    assert_eq!(
        errs("buildpack\n")[0].to_string(),
        "Starphleet:1:1: error: `buildpack` needs a git URL\n  |\n1 | buildpack\n  | ^^^^^^^^^\n  \
         = help: e.g. `buildpack https://github.com/heroku/heroku-buildpack-python.git` or \
         `buildpack https://github.com/heroku/heroku-buildpack-nodejs.git#v250`"
    );
    assert_eq!(
        errs("buildpack https://h/bp.git v2\n")[0].help.as_deref(),
        Some("`buildpack` takes one git URL; to use a branch, tag or commit write `https://h/bp.git#v2`")
    );
    assert_eq!(
        errs("base /srv/root.tar\n")[0].to_string(),
        "Starphleet:1:6: error: base path `/srv/root.tar` must be relative to the app \
         repository\n  |\n1 | base /srv/root.tar\n  |      ^^^^^^^^^^^^^\n  = help: write it \
         without the leading `/` for a file in the app repository, or as \
         `file:///srv/root.tar` for a file on the ship"
    );
    assert_eq!(
        errs("base ../other/root.tar\n")[0].message,
        "base path `../other/root.tar` must not contain `..`"
    );
    assert_eq!(
        errs("base root.tar --sha256 abc\n")[0].message,
        "`--sha256` must be 64 hex digits, not `abc` (3 characters)"
    );
    assert_eq!(
        errs("base root.tar --md5 abc\n")[0].message,
        "unknown flag `--md5` for `base`"
    );
    assert_eq!(
        errs("base a.tar b.tar\n")[0].message,
        "unexpected argument `b.tar` for `base`"
    );
    assert_eq!(
        errs("base --sha256 abc\n")
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>(),
        [
            "`base` needs a root filesystem: a URL or a path in the app repository",
            "`--sha256` must be 64 hex digits, not `abc` (3 characters)"
        ]
    );
    assert_eq!(
        errs("base a.tar\nbase b.tar\n")[0].message,
        "`base` is given twice; the first is on line 1"
    );
    assert_eq!(
        errs("base docker://debian:12\n")[0].message,
        "unsupported base source `docker://debian:12`"
    );
}

#[test]
fn orders_may_choose_the_base() {
    let o = ok(&format!("{ECHO}base file:///srv/bases/debian-12.tar\n"));
    assert_eq!(
        o.base,
        Some(BaseImage {
            source: "file:///srv/bases/debian-12.tar".into(),
            sha256: None
        })
    );
    assert!(msg_help(&format!("{ECHO}buildpack https://h/bp.git\n"))
        .1
        .starts_with(
            "`buildpack` belongs in the `Starphleet` file at the root of the app repository"
        ));
    assert_eq!(
        msg_help(&format!("{ECHO}base file://host/x.tar\n")),
        (
            "base `file://host/x.tar` must name a file on the ship by its full path".into(),
            "write three slashes, e.g. `file:///srv/bases/debian-12.tar`".into()
        )
    );
}

// ---- apps as they are: healthcheck file, .env ---------------------------------------------

#[test]
fn healthcheck_file_is_its_first_path() {
    assert_eq!(
        parse_healthcheck_file("/health\n").as_deref(),
        Some("/health")
    );
    assert_eq!(
        parse_healthcheck_file(
            "\u{feff}# probed by the ship\r\n\r\n  /status?full=1  \r\n/other\n"
        )
        .as_deref(),
        Some("/status?full=1")
    );
    assert_eq!(parse_healthcheck_file(""), None);
    assert_eq!(parse_healthcheck_file("# only a comment\n\n"), None);
    assert_eq!(parse_healthcheck_file("health\n/health\n"), None);
    assert_eq!(parse_healthcheck_file("/a b\n"), None);
}

#[test]
fn heroku_style_dot_env_files() {
    let text = "# Local development settings\n\
                DATABASE_URL=postgres://app:s3cr3t@db.internal:5432/app?sslmode=require\n\
                SECRET_KEY_BASE=dGhpcyBpcyBub3QgYSByZWFsIGtleQ==\n\
                export RACK_ENV=production\n\
                WELCOME=\"Hello, world & friends\"\n\
                SINGLE='no $expansion here'\n\
                EMPTY=\n\
                QUOTED_EMPTY=\"\"\n\
                \n\
                WEB_CONCURRENCY=3 # comment after a value\n\
                REDIRECT_URL=https://app.example.com/callback#done\r\n\
                JSON='{\"a\": [1, 2]}'\n";
    let env = parse_env_file(Path::new(".env"), text).unwrap();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [
            (
                "DATABASE_URL",
                "postgres://app:s3cr3t@db.internal:5432/app?sslmode=require"
            ),
            ("SECRET_KEY_BASE", "dGhpcyBpcyBub3QgYSByZWFsIGtleQ=="),
            ("RACK_ENV", "production"),
            ("WELCOME", "Hello, world & friends"),
            ("SINGLE", "no $expansion here"),
            ("EMPTY", ""),
            ("QUOTED_EMPTY", ""),
            ("WEB_CONCURRENCY", "3"),
            ("REDIRECT_URL", "https://app.example.com/callback#done"),
            ("JSON", "{\"a\": [1, 2]}"),
        ]
    );
    // An unquoted space is the one thing that needs fixing, and it says how.
    assert_eq!(
        parse_env_file(Path::new(".env"), "GREETING=hello world\n").unwrap_err()[0].to_string(),
        ".env:1:16: error: missing `=` in `world`\n  |\n1 | GREETING=hello world\n  |                \
         ^^^^^\n  = help: a value with spaces must be quoted, e.g. `GREETING=\"hello world\"`"
    );
}

// ---- ships ---------------------------------------------------------------------------------

fn ships(text: &str) -> (Vec<ShipEntry>, Vec<Diagnostic>) {
    parse_ships(Path::new("ships"), text)
}

#[test]
fn ships_file_lists_names_and_admin_urls() {
    let (list, diags) = ships(
        "# the phleet\n\nnorth http://10.1.0.11:9797\nSouth-2  HTTPS://South.Example.com:443/  # TLS\n\
         v6 http://[fd00::2]:9797\n",
    );
    assert!(diags.is_empty(), "{}", render(&diags));
    assert_eq!(
        list,
        [
            ShipEntry {
                name: "north".into(),
                url: "http://10.1.0.11:9797".into(),
                line: 3
            },
            ShipEntry {
                name: "South-2".into(),
                url: "https://south.example.com:443".into(),
                line: 4
            },
            ShipEntry {
                name: "v6".into(),
                url: "http://[fd00::2]:9797".into(),
                line: 5
            },
        ]
    );
    assert_eq!(ships(""), (Vec::new(), Vec::new()));
}

#[test]
fn ships_file_errors() {
    let url_help =
        "write `http://HOST:PORT` or `https://HOST:PORT`, e.g. `http://10.1.0.11:9797`: \
                    the address `starphleet ship --admin` listens on";
    assert_eq!(
        render(&ships("north 10.1.0.11:9797\n").1),
        format!(
            "ships:1:7: error: invalid admin URL `10.1.0.11:9797`: it must start with `http://` \
             or `https://`\n  |\n1 | north 10.1.0.11:9797\n  |       ^^^^^^^^^^^^^^\n  = help: \
             {url_help}"
        )
    );
    let message = |text: &str| {
        let (_, d) = ships(text);
        assert_eq!(d.len(), 1, "{}", render(&d));
        d[0].message.clone()
    };
    assert_eq!(
        message("north http://10.1.0.11\n"),
        "invalid admin URL `http://10.1.0.11`: it needs a port, e.g. `:9797`"
    );
    assert_eq!(
        message("north http://10.1.0.11:9797/status\n"),
        "invalid admin URL `http://10.1.0.11:9797/status`: it must not have a path: the ship's \
         admin endpoint is at its root"
    );
    assert_eq!(
        message("north http://admin:pw@10.1.0.11:9797\n"),
        "invalid admin URL `http://admin:pw@10.1.0.11:9797`: it must not contain a user name or \
         password: requests are authenticated with the phleet token"
    );
    assert_eq!(
        render(&ships("ship_1 http://10.1.0.11:9797\n").1),
        "ships:1:1: error: invalid ship name `ship_1`: names are letters, digits and `-`, \
         starting with a letter or digit\n  |\n1 | ship_1 http://10.1.0.11:9797\n  | ^^^^^^\n  \
         = help: a ship name is a host-name-like label such as `north` or `ship-2`; one ship per \
         line: `NAME URL`, e.g. `north http://10.1.0.11:9797`"
    );
    assert_eq!(
        message(&format!("{} http://a:1\n", "n".repeat(64))),
        "invalid ship name `nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn…`: 64 characters, at most 63"
    );
    assert_eq!(message("north\n"), "ship `north` needs an admin URL");
    assert_eq!(
        render(&ships("north http://10.1.0.11:9797 primary\n").1),
        "ships:1:29: error: unexpected argument `primary` in `ships`\n  |\n\
         1 | north http://10.1.0.11:9797 primary\n  |                             ^^^^^^^\n  \
         = help: one ship per line: `NAME URL`, e.g. `north http://10.1.0.11:9797`"
    );
    let (list, diags) = ships(
        "north http://10.1.0.11:9797\nsouth http://10.1.0.12:9797\n\nNorth http://10.1.0.13:9797\n\
         east HTTP://10.1.0.12:9797/\n",
    );
    assert_eq!(list.len(), 2);
    assert_eq!(
        render(&diags),
        "ships:4:1: error: ship name `North` is already used on ships:1\n  |\n\
         4 | North http://10.1.0.13:9797\n  | ^^^^^\n  = help: every ship needs its own name \
         (names are compared without case); rename or remove one of the two lines\n\n\
         ships:5:6: error: admin URL `HTTP://10.1.0.12:9797/` is already listed on ships:2\n  |\n\
         5 | east HTTP://10.1.0.12:9797/\n  |      ^^^^^^^^^^^^^^^^^^^^^^\n  = help: two lines \
         for the same ship would show it twice in phleet views; remove one of them"
    );
}

#[test]
fn headquarters_reads_ships() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "echo.orders", ECHO.as_bytes());
    write(
        dir.path(),
        "ships",
        b"north http://10.1.0.11:9797\nsouth 10.1.0.12\n",
    );
    let hq = load_headquarters(dir.path());
    assert_eq!(hq.orders.len(), 1);
    assert!(hq.ships_broken());
    assert!(!hq.settings_broken());
    assert_eq!(
        hq.ships,
        [ShipEntry {
            name: "north".into(),
            url: "http://10.1.0.11:9797".into(),
            line: 1
        }]
    );
    assert_eq!(hq.errors.len(), 1);
    assert!(hq.errors[0]
        .to_string()
        .starts_with("ships:2:7: error: invalid admin URL"));

    // A symlinked `ships` is reported once, by the walk, and still counts as broken.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("ships")).unwrap();
    let hq = load_headquarters(dir.path());
    assert!(hq.ships.is_empty());
    assert!(hq.ships_broken());
    assert_eq!(
        hq.render_errors(),
        "ships:1:1: error: symlinks are not allowed in headquarters\n  = help: replace the \
         symlink with the file or folder itself; symlinks in headquarters are never followed\n"
    );
    assert!(!load_headquarters(&std::env::temp_dir().join("no-such-hq")).ships_broken());
}

// ---- phleet settings in .starphleet ---------------------------------------------------------

#[test]
fn phleet_settings_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".starphleet",
        b"export LOG_FORMAT=json\nSTARPHLEET_POLL_INTERVAL=5s\nSTARPHLEET_GIT_TIMEOUT=30s\n\
          STARPHLEET_BUILD_CACHE_MAX=20G\nSTARPHLEET_ROLLOUT=2\nSTARPHLEET_ROLLOUT_SOAK=0\n\
          STARPHLEET_ROLLOUT_WAIT=5m\nSTARPHLEET_ACME_EMAIL=ops@example.com\n\
          STARPHLEET_ACME_DIRECTORY=https://127.0.0.1:14000/dir\nSTARPHLEET_ROLLOUT=3\n",
    );
    let hq = load_headquarters(dir.path());
    assert!(hq.errors.is_empty(), "{}", hq.render_errors());
    assert_eq!(
        hq.phleet,
        PhleetSettings {
            poll_interval: Some(Duration::from_secs(5)),
            git_timeout: Some(Duration::from_secs(30)),
            build_cache_max: 20 << 30,
            rollout: Some(3),
            rollout_soak: Duration::ZERO,
            rollout_wait: Duration::from_secs(300),
            acme_email: Some("ops@example.com".into()),
            acme_directory: "https://127.0.0.1:14000/dir".into(),
        }
    );
    // They are env for services too, as before.
    assert_eq!(hq.settings.len(), 10);
    assert_eq!(hq.phleet.fetch_timeout(), Duration::from_secs(600));
    let long = PhleetSettings {
        git_timeout: Some(Duration::from_secs(900)),
        ..Default::default()
    };
    assert_eq!(long.fetch_timeout(), Duration::from_secs(900));

    let defaults = PhleetSettings::default();
    assert_eq!(defaults.build_cache_max, 10 << 30);
    assert_eq!(defaults.rollout, None);
    assert_eq!(defaults.rollout_soak, Duration::from_secs(10));
    assert_eq!(defaults.rollout_wait, Duration::from_secs(120));
    assert_eq!(
        defaults.acme_directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(
        load_headquarters(tempfile::tempdir().unwrap().path()).phleet,
        defaults
    );
    // Empty means the default, as an unset variable would.
    write(
        dir.path(),
        ".starphleet",
        b"STARPHLEET_ROLLOUT=\nSTARPHLEET_BUILD_CACHE_MAX=\n",
    );
    let hq = load_headquarters(dir.path());
    assert!(hq.errors.is_empty(), "{}", hq.render_errors());
    assert_eq!(hq.phleet, defaults);
}

#[test]
fn bad_phleet_settings_are_errors_on_their_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".starphleet",
        b"export GREETING=hi\nexport STARPHLEET_POLL_INTERVAL=soon\nSTARPHLEET_ROLLOUT=0\n\
          STARPHLEET_ACME_EMAIL=ops.example.com\nSTARPHLEET_BUILD_CACHE_MAX=10 # fine\n\
          STARPHLEET_ROLLOUT_WAIT=0s STARPHLEET_ACME_DIRECTORY=letsencrypt\n\
          STARPHLEET_GIT_TIMEOUT=2d\nSTARPHLEET_ROLLOUT_SOAK=forever\nSTARPHLEET_BUILD_CACHE_MAX=0\n",
    );
    write(dir.path(), "echo.orders", ECHO.as_bytes());
    let hq = load_headquarters(dir.path());
    assert!(hq.settings_broken());
    assert!(hq.settings.is_empty(), "a broken .starphleet gives nothing");
    assert_eq!(hq.phleet, PhleetSettings::default());
    assert_eq!(hq.orders.len(), 1);
    let first = hq.errors[0].to_string();
    assert_eq!(
        first,
        format!(
            ".starphleet:2:33: error: `STARPHLEET_POLL_INTERVAL` must be a duration of more than \
             0, e.g. `5s`, not `soon`\n  |\n2 | export STARPHLEET_POLL_INTERVAL=soon\n  | {}^^^^\n  \
             = help: how often every ship checks HQ and app refs (default 2s; `starphleet ship \
             --poll-interval` overrides it on one ship); write a whole number with a unit: \
             `500ms`, `30s`, `5m` or `1h` (a bare number means seconds), at most 24h",
            " ".repeat(32)
        )
    );
    let lines: Vec<_> = hq
        .errors
        .iter()
        .map(|d| (d.line, d.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (
                2,
                "`STARPHLEET_POLL_INTERVAL` must be a duration of more than 0, e.g. `5s`, not \
                 `soon`"
            ),
            (
                3,
                "`STARPHLEET_ROLLOUT` must be a whole number of at least 1, e.g. `2`, not `0`"
            ),
            (
                4,
                "`STARPHLEET_ACME_EMAIL` must be an email address, e.g. `ops@example.com`, not \
                 `ops.example.com`"
            ),
            (
                6,
                "`STARPHLEET_ROLLOUT_WAIT` must be a duration of more than 0, e.g. `2m`, not `0s`"
            ),
            (
                6,
                "`STARPHLEET_ACME_DIRECTORY` must be an `http://` or `https://` URL, not \
                 `letsencrypt`"
            ),
            (
                7,
                "`STARPHLEET_GIT_TIMEOUT` must be a duration of more than 0, e.g. `30s`, not `2d`"
            ),
            (
                8,
                "`STARPHLEET_ROLLOUT_SOAK` must be a duration, e.g. `10s`, not `forever`"
            ),
            (
                9,
                "`STARPHLEET_BUILD_CACHE_MAX` must be a size of more than 0, e.g. `20G`, not `0`"
            ),
        ]
    );
    assert_eq!(hq.errors[4].column, 54);
    assert_eq!(
        hq.errors[4].help.as_deref(),
        Some(
            "the ACME server's directory URL (default Let's Encrypt: \
             https://acme-v02.api.letsencrypt.org/directory); it must start with `http://` or \
             `https://`"
        )
    );
}

// ---- certificates in headquarters ------------------------------------------------------------

fn key_warning(stem: &str, host: &str) -> String {
    format!(
        "certs/{stem}.key:1:1: warning: a private key is in git; anyone who can read headquarters \
         can impersonate {host} — prefer <state-dir>/certs on each ship or ACME\n  = help: put \
         `{stem}.crt` and `{stem}.key` in `<state-dir>/certs/` on each ship instead, or set \
         `STARPHLEET_ACME_EMAIL` in `.starphleet` to get certificates from ACME; then remove the \
         key from headquarters and from its git history"
    )
}

#[test]
fn certificates_in_headquarters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secret = unique_secret();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
    write(root, "certs/app.test.crt", b"-----BEGIN CERTIFICATE-----\n");
    write(root, "certs/app.test.key", pem.as_bytes());
    write(root, "certs/_wildcard.example.com.crt", b"chain");
    write(root, "certs/_wildcard.example.com.key", pem.as_bytes());
    write(root, "certs/lonely.test.crt", b"chain");
    write(root, "certs/keyonly.test.key", pem.as_bytes());
    write(root, "certs/Upper.test.crt", b"chain");
    write(root, "certs/Upper.test.key", pem.as_bytes());
    write(root, "certs/empty.test.crt", b"");
    write(root, "certs/empty.test.key", pem.as_bytes());
    write(root, "certs/README.md", b"how we rotate");
    write(root, "certs/.gitkeep", b"");
    let hq = load_headquarters(root);
    assert_eq!(
        hq.certs,
        [
            HqCert {
                host: "*.example.com".into(),
                crt: "certs/_wildcard.example.com.crt".into(),
                key: "certs/_wildcard.example.com.key".into(),
            },
            HqCert {
                host: "app.test".into(),
                crt: "certs/app.test.crt".into(),
                key: "certs/app.test.key".into(),
            },
        ]
    );
    assert_eq!(
        hq.render_errors(),
        "certs/Upper.test.crt:1:1: error: `Upper.test.crt` does not name a host\n  = help: name \
         the pair after the host it serves, in lower case: `certs/app.example.com.crt` and \
         `certs/app.example.com.key`, or `certs/_wildcard.example.com.crt` and `.key` for \
         `*.example.com`\n\n\
         certs/Upper.test.key:1:1: error: `Upper.test.key` does not name a host\n  = help: name \
         the pair after the host it serves, in lower case: `certs/app.example.com.crt` and \
         `certs/app.example.com.key`, or `certs/_wildcard.example.com.crt` and `.key` for \
         `*.example.com`\n\n\
         certs/empty.test.crt:1:1: error: file is empty\n  = help: commit the PEM file itself, \
         or remove it\n\n\
         certs/keyonly.test.key:1:1: error: key without a certificate: add \
         certs/keyonly.test.crt\n  = help: a key is used only with its certificate chain, named \
         the same with `.crt`; or remove the key\n\n\
         certs/lonely.test.crt:1:1: error: certificate without a key: add \
         certs/lonely.test.key\n  = help: a certificate is used only with its private key, \
         named the same with `.key`; or remove the certificate\n"
    );
    assert_eq!(
        hq.render_warnings(),
        [
            key_warning("Upper.test", "Upper.test"),
            key_warning("_wildcard.example.com", "*.example.com"),
            key_warning("app.test", "app.test"),
            key_warning("empty.test", "empty.test"),
            key_warning("keyonly.test", "keyonly.test"),
        ]
        .join("\n\n")
            + "\n"
    );
    assert!(hq.warnings.iter().all(|w| w.severity == Severity::Warning));
    assert!(hq.errors.iter().all(|e| e.severity == Severity::Error));
    // The keys' contents are never read into anything a consumer could show.
    assert!(!everything_shown(&hq).contains(&secret));
    assert!(!hq.render_warnings().contains(&secret));
}

#[test]
fn certificate_symlinks_and_odd_entries() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "certs/a.test.crt", b"chain");
    symlink("/etc/ssl/private/ship.key", root.join("certs/a.test.key")).unwrap();
    std::fs::create_dir_all(root.join("certs/b.test.crt")).unwrap();
    write(root, "certs/b.test.key", b"key");
    let hq = load_headquarters(root);
    assert!(hq.certs.is_empty());
    // The symlink once (from the walk), no "missing key" on top; a folder is not a file.
    assert_eq!(
        hq.render_errors(),
        "certs/b.test.crt:1:1: error: not a regular file (a folder)\n  = help: headquarters \
         files must be plain files committed to git\n\n\
         certs/a.test.key:1:1: error: symlinks are not allowed in headquarters\n  = help: \
         replace the symlink with the file or folder itself; symlinks in headquarters are never \
         followed\n"
    );
    assert_eq!(hq.warnings.len(), 1, "{}", hq.render_warnings());

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "certs", b"not a folder");
    let hq = load_headquarters(dir.path());
    assert_eq!(hq.errors[0].message, "`certs` is not a folder");
}

#[test]
fn tls_hosts_without_a_certificate_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "web.orders",
        format!(
            "{ECHO}publish --private 3000 --tls --host app.test --host api.test --url /\n\
             publish --private 3000 --tls --host x.example.com --host '*.wild.test' --url /w\n\
             publish --private 3000 --public 8080 --host plain.test\n\
             publish --private 3000 --public 8443 --tls --url /any\n"
        )
        .as_bytes(),
    );
    write(root, "certs/_wildcard.example.com.crt", b"chain");
    write(root, "certs/_wildcard.example.com.key", b"key");
    write(root, "certs/api.test.crt", b"chain");
    write(root, "certs/api.test.key", b"key");
    let hq = load_headquarters(root);
    assert!(hq.errors.is_empty(), "{}", hq.render_errors());
    assert_eq!(hq.orders.len(), 1, "warnings never block an order");
    let tls_warnings: Vec<String> = hq
        .warnings
        .iter()
        .filter(|w| w.path == Path::new("web.orders"))
        .map(|w| w.to_string())
        .collect();
    assert_eq!(
        tls_warnings,
        [
            "web.orders:2:37: warning: no certificate for `app.test` in headquarters, and ACME is \
             off (no `STARPHLEET_ACME_EMAIL`)\n  |\n2 | publish --private 3000 --tls --host \
             app.test --host api.test --url /\n  |                                     ^^^^^^^^\n  \
             = help: fine if every ship has `<state-dir>/certs/app.test.crt` and `.key` (check \
             cannot see them); otherwise put them there, or commit `certs/app.test.crt` and \
             `certs/app.test.key` to headquarters; or set `STARPHLEET_ACME_EMAIL=you@example.com` \
             in `.starphleet` so ships get one from ACME (Let's Encrypt unless \
             `STARPHLEET_ACME_DIRECTORY` says otherwise)",
            "web.orders:3:58: warning: no certificate for `*.wild.test` in headquarters\n  |\n\
             3 | publish --private 3000 --tls --host x.example.com --host '*.wild.test' --url /w\n  \
             |                                                          ^^^^^^^^^^^^^\n  = help: \
             fine if every ship has `<state-dir>/certs/_wildcard.wild.test.crt` and `.key` (check \
             cannot see them); otherwise put them there, or commit \
             `certs/_wildcard.wild.test.crt` and `certs/_wildcard.wild.test.key` to headquarters",
            "web.orders:5:38: warning: `--tls` without `--host`: certificates go by host name, \
             so port 8443 reaches this route only under names other `--tls --host` publishes have \
             certificates for\n  |\n5 | publish --private 3000 --public 8443 --tls --url /any\n  \
             |                                      ^^^^^\n  = help: add `--host NAME` for each \
             name users type (e.g. `--host shop.example.com`)",
        ]
    );

    // With ACME on, only the wildcard is left: HTTP-01 cannot get one.
    write(
        root,
        ".starphleet",
        b"STARPHLEET_ACME_EMAIL=ops@example.com\n",
    );
    let hq = load_headquarters(root);
    let messages: Vec<_> = hq
        .warnings
        .iter()
        .filter(|w| w.path == Path::new("web.orders"))
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "no certificate for `*.wild.test` in headquarters, and ACME cannot get a wildcard \
          certificate (HTTP-01 covers single names only)",
            "`--tls` without `--host`: certificates go by host name, so port 8443 reaches this \
             route only under names other `--tls --host` publishes have certificates for",
        ]
    );
    // A broken `.starphleet` says nothing about ACME: no guesses.
    write(root, ".starphleet", b"STARPHLEET_ACME_EMAIL=nobody\n");
    let hq = load_headquarters(root);
    assert!(hq.settings_broken());
    assert!(hq.warnings.iter().all(|w| w.path.starts_with("certs")));
}

#[test]
fn certificates_cover_one_label_of_a_wildcard() {
    use crate::certs::covers;
    assert!(covers("app.test", "app.test"));
    assert!(covers("*.example.com", "a.example.com"));
    assert!(covers("*.example.com", "*.example.com"));
    assert!(!covers("*.example.com", "example.com"));
    assert!(!covers("*.example.com", "a.b.example.com"));
    assert!(!covers("*.b.example.com", "*.example.com"));
    assert!(!covers("a.test", "b.test"));
}

#[test]
fn new_grammar_never_panics() {
    let long = "x".repeat(100_000);
    let inputs = [
        "publish --tls=".to_string(),
        "publish --host".into(),
        "publish --host=*".into(),
        "publish --host '*.'".into(),
        "publish --max-body 99999999999999999999999999g".into(),
        "publish --private 1 --tls --public 80 --no-redirect=x".into(),
        "memory 18446744073709551615T".into(),
        "cpus 999999999999999999999.99".into(),
        "pids -9223372036854775808".into(),
        "base --sha256".into(),
        "base file://".into(),
        "base http://[".into(),
        "build --timeout=".into(),
        "build --timeout 99999999999999999999h".into(),
        "buildpack #".into(),
        format!("base {long}"),
        format!("publish --private 1 --host {long}"),
        format!("{long} http://{long}:1"),
        "n http://[::1".into(),
        "n http://a:99999999999".into(),
        "STARPHLEET_ROLLOUT=99999999999\nSTARPHLEET_ACME_DIRECTORY=http://[".into(),
    ];
    for text in &inputs {
        for d in parse_order("echo", Path::new("echo.orders"), text)
            .err()
            .into_iter()
            .flatten()
            .chain(
                parse_app(Path::new("Starphleet"), text)
                    .err()
                    .into_iter()
                    .flatten(),
            )
            .chain(ships(text).1)
        {
            assert!(d.line >= 1 && d.column >= 1 && d.width >= 1);
            let _ = d.to_string();
        }
        let _ = parse_healthcheck_file(text);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".starphleet", text.as_bytes());
        let _ = load_headquarters(dir.path()).render_errors();
    }
}
