//! Real apps, deployed as they are: each is built in runc build containers that reach the
//! package registries through the test ship's NAT, and its layer is started and answers HTTP.
//! Run with `--nocapture` to see the build times and layer sizes.

mod common;

use std::time::Duration;

use common::{dir_size, dot_env, get, Files, Ship};
use starphleet_build::{AppKind, BaseRef, BuildError, Declared};

/// Generous: a cold npm or pip install from the registry takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn report(what: &str, cold: Duration, warm: Duration, layer: &starphleet_build::Layer) {
    eprintln!(
        "[measure] {what}: cold build {:.1}s, warm rebuild after a one-line change {:.1}s, layer {:.1} MB",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        dir_size(&layer.dir) as f64 / 1e6
    );
}

const ECHO_PACKAGE: &[u8] = br#"{
  "name": "echo",
  "version": "1.0.0",
  "main": "index.js",
  "dependencies": { "express": "^4.19.0", "ws": "^8.17.0" }
}
"#;

fn echo_index(version: &str) -> Vec<u8> {
    format!(
        r#"const express = require('express');
const {{ WebSocketServer }} = require('ws');
const app = express();
app.get('/hi', (req, res) => res.send(`${{process.env.GREETING}} from echo {version}`));
const server = app.listen(process.env.PORT, () => console.log('listening on', process.env.PORT));
new WebSocketServer({{ server }}).on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
"#
    )
    .into_bytes()
}

const ECHO_ENV: &[u8] = b"export GREETING=howdy\n";

#[test]
#[ignore = "root tier (runc, network namespaces, registries): run by scripts/test"]
fn the_node_echo_app_deploys_as_it_is_and_rebuilds_warm() {
    let ship = Ship::new();
    let env = dot_env(std::str::from_utf8(ECHO_ENV).unwrap());
    let v1 = echo_index("v1");
    let files: Files = &[
        ("package.json", ECHO_PACKAGE),
        ("index.js", &v1),
        (".env", ECHO_ENV),
        ("healthcheck", b"/hi\n"),
    ];
    let (layer, cold) = ship.build("c1", files, &Declared::default(), None, &env);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert!(!layer.cached);
    assert_eq!(layer.plan.kind, Some(AppKind::Node));
    assert_eq!(layer.start, "node index.js");
    let log = ship.log_text();
    assert!(
        log.contains("[app] -----> Node.js app detected (package.json): npm install\n"),
        "{log}"
    );
    assert!(layer.dir.join("app/node_modules/express").is_dir());
    assert!(layer.dir.join("app/node_modules/ws").is_dir());
    let addr = ship.start(&layer, &env);
    let (status, _, body) = get(addr, "/hi", START_TIMEOUT);
    assert_eq!(
        (status, body.as_str()),
        (200, "howdy from echo v1"),
        "{}",
        ship.output()
    );

    // A one-line change: a new commit, built with the npm cache of the first build.
    let v2 = echo_index("v2");
    let files: Files = &[
        ("package.json", ECHO_PACKAGE),
        ("index.js", &v2),
        (".env", ECHO_ENV),
    ];
    let (layer2, warm) = ship.build("c2", files, &Declared::default(), None, &env);
    let layer2 = layer2.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_ne!(layer2.dir, layer.dir);
    assert!(
        warm * 3 < cold,
        "a warm rebuild ({warm:?}) is much faster than the first build ({cold:?})"
    );
    assert!(
        ship.log_text().contains("-----> package.json unchanged since an earlier build: reusing its node_modules, skipping the install steps"),
        "{}",
        ship.log_text()
    );
    let addr = ship.start(&layer2, &env);
    let (_, _, body) = get(addr, "/hi", START_TIMEOUT);
    assert_eq!(body, "howdy from echo v2");
    assert!(
        ship.builder
            .cache_dir("app")
            .join("npm")
            .read_dir()
            .unwrap()
            .count()
            > 0
    );

    let (again, cached) = ship.build("c2", files, &Declared::default(), None, &env);
    let again = again.unwrap();
    assert!(again.cached);
    assert_eq!(again.start, "node index.js");
    assert!(cached < Duration::from_millis(500), "{cached:?}");
    report("node echo (npm install, express + ws)", cold, warm, &layer2);
}

const HELLO_PY: &[u8] = b"import os\nfrom flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef hello():\n    return 'hello from flask ' + os.environ.get('VERSION', '?')\n";

#[test]
#[ignore = "root tier (runc, network namespaces, registries): run by scripts/test"]
fn a_python_app_with_requirements_and_a_procfile_deploys() {
    let ship = Ship::new();
    let procfile: &[u8] = b"web: flask --app hello run --host 0.0.0.0 --port $PORT\n";
    let files: Files = &[
        ("requirements.txt", b"flask\n"),
        ("Procfile", procfile),
        ("hello.py", HELLO_PY),
        (".env", b"VERSION=1\n"),
    ];
    let env = dot_env("VERSION=1\n");
    let (layer, cold) = ship.build("p1", files, &Declared::default(), None, &env);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_eq!(layer.plan.kind, Some(AppKind::Python));
    assert!(layer.dir.join("app/.venv/bin/flask").exists());
    let log = ship.log_text();
    assert!(
        log.contains("-----> start (Procfile): flask --app hello run"),
        "{log}"
    );
    let addr = ship.start(&layer, &env);
    let (status, _, body) = get(addr, "/", START_TIMEOUT);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from flask 1"),
        "{}",
        ship.output()
    );

    let hello2 = [HELLO_PY, b"# one more line\n"].concat();
    let files: Files = &[
        ("requirements.txt", b"flask\n"),
        ("Procfile", procfile),
        ("hello.py", &hello2),
    ];
    let (layer2, warm) = ship.build("p2", files, &Declared::default(), None, &env);
    let layer2 = layer2.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert!(warm * 3 < cold, "warm {warm:?} vs cold {cold:?}");
    assert!(
        ship.log_text().contains("reusing its .venv"),
        "{}",
        ship.log_text()
    );

    // New requirements install again, with the pip cache of the earlier builds.
    let files: Files = &[
        (
            "requirements.txt",
            b"flask
itsdangerous
",
        ),
        ("Procfile", procfile),
        ("hello.py", &hello2),
    ];
    let (layer3, changed) = ship.build("p3", files, &Declared::default(), None, &env);
    layer3.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    eprintln!(
        "[measure] python flask, requirements.txt changed: {:.1}s",
        changed.as_secs_f64()
    );
    let addr = ship.start(&layer2, &env);
    assert_eq!(get(addr, "/", START_TIMEOUT).2, "hello from flask 1");
    report(
        "python flask (venv + pip install -r requirements.txt)",
        cold,
        warm,
        &layer2,
    );
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_static_site_is_served_by_the_ship_binary() {
    let ship = Ship::new();
    let css = "h1 { color: teal; }\n".repeat(30);
    let files: Files = &[
        ("public/index.html", b"<!doctype html><h1>static</h1>"),
        ("public/style.css", css.as_bytes()),
        ("README.md", b"not served"),
    ];
    let (layer, took) = ship.build("s1", files, &Declared::default(), None, &[]);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_eq!(layer.plan.kind, Some(AppKind::Static));
    assert!(layer.plan.steps.is_empty());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let addr = ship.start(&layer, &[]);
    let (status, ctype, body) = get(addr, "/", START_TIMEOUT);
    assert_eq!(status, 200, "{}", ship.output());
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert_eq!(body, "<!doctype html><h1>static</h1>");
    let (_, ctype, body) = get(addr, "/style.css", START_TIMEOUT);
    assert_eq!(ctype, "text/css; charset=utf-8");
    assert_eq!(body, css);
    assert_eq!(get(addr, "/README.md", START_TIMEOUT).0, 404);
}

/// Writes a classic buildpack into a git repository and returns its file:// URL.
fn tiny_buildpack(dir: &std::path::Path) -> String {
    let files: &[(&str, &str)] = &[
        (
            "bin/detect",
            "#!/bin/sh\n[ -f \"$1/hello.txt\" ] || exit 1\necho Tiny\n",
        ),
        (
            "bin/compile",
            r#"#!/bin/sh
set -e
build=$1 cache=$2 env=$3
echo "-----> compiling in $build"
count=$(cat "$cache/count" 2>/dev/null || echo 0)
count=$((count + 1))
echo $count > "$cache/count"
cat "$env/GREETING" > "$build/greeting.txt"
echo $count > "$build/builds.txt"
mkdir -p "$build/.profile.d"
echo 'export TINY_PROFILE=sourced' > "$build/.profile.d/tiny.sh"
cat > "$build/serve.py" <<'PY'
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = " ".join([open("/app/greeting.txt").read().strip(), os.environ.get("TINY_PROFILE", "-"), open("/app/builds.txt").read().strip()]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
PY
"#,
        ),
        (
            "bin/release",
            "#!/bin/sh\ncat <<'YAML'\n---\naddons: []\ndefault_process_types:\n  web: /usr/bin/python3 /app/serve.py\nYAML\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t.invalid")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "--quiet", "--initial-branch", "main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "tiny buildpack"]);
    format!("file://{}", dir.display())
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_classic_buildpack_builds_and_names_the_start_command() {
    let ship = Ship::new();
    let url = tiny_buildpack(&ship.dir.join("tiny-buildpack"));
    let dot = format!("export BUILDPACK_URL={url}#main\nexport GREETING=ahoy\n");
    let env = dot_env(&dot);
    let files: Files = &[("hello.txt", b"hi"), (".env", dot.as_bytes())];
    let (layer, _) = ship.build("bp1", files, &Declared::default(), None, &env);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_eq!(layer.plan.kind, Some(AppKind::Buildpacks));
    assert_eq!(layer.start, "/usr/bin/python3 /app/serve.py");
    assert!(layer.profile_d);
    let log = ship.log_text();
    for line in [
        "-----> Tiny app detected",
        "-----> compiling in /app",
        "-----> default web process (bin/release): /usr/bin/python3 /app/serve.py",
    ] {
        assert!(log.contains(line), "{line} missing from:\n{log}");
    }
    assert!(
        !ship.dir.join("builds").read_dir().unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".env") || name.ends_with(".out")
        }),
        "the ENV_DIR with the app's env is not left behind"
    );
    let addr = ship.start(&layer, &env);
    let (status, _, body) = get(addr, "/", START_TIMEOUT);
    assert_eq!(
        (status, body.as_str()),
        (200, "ahoy sourced 1"),
        "{}",
        ship.output()
    );

    // The buildpack's CACHE_DIR survives into the next build of the app.
    let files: Files = &[("hello.txt", b"hi again"), (".env", dot.as_bytes())];
    let (layer2, _) = ship.build("bp2", files, &Declared::default(), None, &env);
    let addr = ship.start(&layer2.unwrap(), &env);
    assert_eq!(get(addr, "/", START_TIMEOUT).2, "ahoy sourced 2");

    // A buildpack whose bin/detect refuses the app fails the build and says so.
    let files: Files = &[("other.txt", b"x"), (".env", dot.as_bytes())];
    let (err, _) = ship.build("bp3", files, &Declared::default(), None, &env);
    let err = err.unwrap_err();
    assert!(
        matches!(err, BuildError::BuildpackRejected { code: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not fit this app"), "{err}");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_go_app_builds_with_the_ships_go_and_serves() {
    let ship = Ship::new();
    let main = br#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from go") })
	http.ListenAndServe(":"+os.Getenv("PORT"), nil)
}
"#;
    let files: Files = &[
        ("go.mod", b"module example.com/hello\n\ngo 1.19\n"),
        ("main.go", main),
    ];
    let (layer, cold) = ship.build("g1", files, &Declared::default(), None, &[]);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_eq!(layer.plan.kind, Some(AppKind::Go));
    assert!(layer.dir.join("app/.bin/app").is_file());
    let addr = ship.start(&layer, &[]);
    let (status, _, body) = get(addr, "/", START_TIMEOUT);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from go"),
        "{}",
        ship.output()
    );
    let main2 = [&main[..], b"\n// one more line\n"].concat();
    let files: Files = &[
        ("go.mod", b"module example.com/hello\n\ngo 1.19\n"),
        ("main.go", &main2),
    ];
    let (layer2, warm) = ship.build("g2", files, &Declared::default(), None, &[]);
    report(
        "go (go build, standard library only)",
        cold,
        warm,
        &layer2.unwrap(),
    );
}

/// A gzipped root filesystem tarball of a static busybox.
fn busybox_tarball() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let add_dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    add_dir(&mut builder, "bin");
    add_dir(&mut builder, "etc");
    let busybox =
        std::fs::read("/usr/bin/busybox").expect("busybox-static is installed (scripts/deps)");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    builder
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    for applet in ["sh", "mkdir", "echo", "test", "httpd"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    builder
        .append_data(&mut h, "etc/passwd", &passwd[..])
        .unwrap();
    let raw = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn an_app_on_a_base_tarball_builds_and_runs_without_the_hosts_usr() {
    let ship = Ship::new();
    let tarball = busybox_tarball();
    let sha = hex_sha256(&tarball);
    let declared = Declared {
        build: vec![
            "mkdir -p www && echo built-on-base > www/index.html".into(),
            "test ! -e /usr/bin/python3".into(),
        ],
        start: Some("httpd -f -p $PORT -h /app/www".into()),
        buildpacks: Vec::new(),
    };
    let files: Files = &[("rootfs.tar.gz", &tarball)];
    let base = BaseRef {
        source: "rootfs.tar.gz",
        sha256: Some(&sha),
    };
    let (layer, _) = ship.build("base1", files, &declared, Some(base), &[]);
    let layer = layer.unwrap_or_else(|e| panic!("{e}\n{}", ship.log_text()));
    assert_eq!(layer.base, Some(ship.dir.join("bases").join(&sha)));
    assert!(ship.log_text().contains(&format!(
        "-----> base rootfs.tar.gz (sha256 {}, fetched)",
        &sha[..12]
    )));
    let addr = ship.start(&layer, &[]);
    let (status, _, body) = get(addr, "/index.html", START_TIMEOUT);
    assert_eq!(
        (status, body.trim()),
        (200, "built-on-base"),
        "{}",
        ship.output()
    );

    let wrong = "f".repeat(64);
    let base = BaseRef {
        source: "rootfs.tar.gz",
        sha256: Some(&wrong),
    };
    let (err, _) = ship.build("base2", files, &declared, Some(base), &[]);
    assert!(matches!(err, Err(BuildError::Base(_))), "{err:?}");
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
