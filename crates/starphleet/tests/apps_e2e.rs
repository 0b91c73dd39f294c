//! Apps deployed as they are, through a whole ship: detection, the app's `.env` and
//! `healthcheck` conventions, websockets through the proxy, a base tarball, a missing
//! toolchain, and outbound network (with and without `--no-outbound`).
//!
//! Real runc, git, npm (the registry is reached through the test namespace's uplink), HTTP
//! and websockets; each ship in its own network namespace.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// npm installs from the registry: generous on a loaded machine.
const BUILD: Duration = Duration::from_secs(300);

/// The original Starphleet echo example, shaped as its users wrote it: no `Starphleet`, no
/// `Procfile`; `.env` with `export` lines (and a `PORT` the order overrides); `healthcheck`.
fn node_echo(repo: &Repo) {
    repo.write(
        "package.json",
        r#"{ "name": "echo", "version": "1.0.0", "main": "index.js",
  "dependencies": { "express": "^4.19.0", "ws": "^8.17.0" } }
"#,
    )
    .write(
        "index.js",
        r#"const express = require('express');
const http = require('http');
const { WebSocketServer } = require('ws');
const app = express();
app.set('case sensitive routing', true);
let checks = 0;
app.get('/hi', (req, res) => { checks += 1; res.send('hi'); });
app.get('/checks', (req, res) => res.send(String(checks)));
app.get('/greeting', (req, res) => res.send(process.env.GREETING || 'none'));
app.get('/:what', (req, res) => res.send(req.params.what));
const server = http.createServer(app);
new WebSocketServer({ server }).on('connection', (ws) => ws.on('message', (m) => ws.send(String(m))));
server.listen(process.env.PORT);
"#,
    )
    .write(".env", "export PORT=3001\nexport GREETING=\"hello from .env\"\n")
    .write("healthcheck", "/hi\n");
    repo.commit("echo");
}

fn static_site(repo: &Repo) {
    repo.write("index.html", "<!doctype html><title>site</title>home\n")
        .write("style.css", "body { color: navy }\n");
    repo.commit("site");
}

/// A root filesystem tarball of one static busybox, in the app's repository, with an app
/// whose build and start are busybox commands.
fn busybox_app(repo: &Repo, tmp: &Path) {
    let root = tmp.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (scripts/deps)");
    for applet in ["sh", "test", "echo", "httpd", "mkdir", "cat"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let tarball = repo.dir.join("base.tar.gz");
    let out = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo.write(
        "Starphleet",
        "base base.tar.gz\n\
         build mkdir -p www && (test -e /usr/bin/python3 && echo host-usr || echo no-host-usr) > www/usr.txt\n\
         start httpd -f -p $PORT -h /app/www\n",
    );
    repo.commit("busybox");
}

/// (status, content type, body) of `GET http://127.0.0.1:80<path>` in the ship's namespace.
fn get_typed(ship: &TestShip, path: &str) -> (u16, String, String) {
    let url = format!("http://127.0.0.1:80{path}");
    ship.net.run(move || {
        let r = ureq::get(&url).call().expect("GET");
        let ct = r.header("content-type").unwrap_or("").to_string();
        (r.status(), ct, r.into_string().unwrap())
    })
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn apps_deploy_as_they_are_through_the_ship() {
    let mut ship = TestShip::new();
    let _uplink = ship.net.uplink();
    let echo = Repo::new(ship.path("echo"));
    node_echo(&echo);
    let site = Repo::new(ship.path("site"));
    static_site(&site);
    let busy = Repo::new(ship.path("busy"));
    busybox_app(&busy, ship.tmp.path());
    ship.hq
        .write(
            "echo.orders",
            &format!(
                "autodeploy {}\npublish --private 3000 --public 80 --url /echo\n",
                echo.url()
            ),
        )
        .write(
            "site.orders",
            &format!(
                "autodeploy {}\npublish --private 8080 --url /site\n",
                site.url()
            ),
        )
        .write(
            "busy.orders",
            &format!(
                "autodeploy {}\npublish --private 8081 --url /busy\n",
                busy.url()
            ),
        )
        .commit("apps");
    ship.start();

    // The Node app: detected, npm-installed, started with `node index.js` on the order's port.
    ship.wait_for_body(80, "/echo/Hi", "Hi", BUILD);
    assert_eq!(
        ship.get(80, "/echo/greeting").unwrap(),
        (200, "hello from .env".into())
    );
    let echo_svc = ship.service("echo");
    let health = echo_svc.to_string();
    let build_log = std::fs::read_to_string(ship.state.join("logs/echo/build.log"))
        .or_else(|_| {
            // The log folder is the service's file-safe name; find it.
            let dir = std::fs::read_dir(ship.state.join("logs"))
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("echo"))
                .expect("echo's log folder")
                .path();
            std::fs::read_to_string(dir.join("build.log"))
        })
        .unwrap();
    assert!(
        build_log.contains("Node.js app detected"),
        "the detection is announced:\n{build_log}"
    );
    assert!(
        build_log.contains("PORT=3001") && build_log.contains("PORT=3000"),
        "the overridden PORT is named:\n{build_log}"
    );
    // Only the ship's health check asks for /hi: the `healthcheck` file named it.
    let (code, checks) = ship.get(80, "/echo/checks").unwrap();
    assert_eq!(code, 200);
    assert!(
        checks.trim().parse::<u32>().unwrap() >= 1,
        "the healthcheck file's /hi was never checked ({checks}): {health}"
    );

    // A websocket through the proxy to the app's `ws` server.
    let reply = ship.net.run(|| {
        let (mut ws, _) = tungstenite::connect("ws://127.0.0.1:80/echo/socket").expect("websocket");
        ws.send(tungstenite::Message::text("over the proxy"))
            .unwrap();
        loop {
            match ws.read().unwrap() {
                tungstenite::Message::Text(t) => return t.to_string(),
                tungstenite::Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
                _ => continue,
            }
        }
    });
    assert_eq!(reply, "over the proxy");

    // The static site, served by the ship's own binary with content types.
    ship.wait_for_body(80, "/site/style.css", "body { color: navy }", BUILD);
    let (code, ct, body) = get_typed(&ship, "/site/");
    assert_eq!((code, body.contains("home")), (200, true), "{body}");
    assert!(ct.starts_with("text/html"), "{ct}");
    let (_, ct, _) = get_typed(&ship, "/site/style.css");
    assert!(ct.starts_with("text/css"), "{ct}");

    // The busybox base: built and run without the host's /usr, the init on the ship's libs.
    ship.wait_for_body(80, "/busy/usr.txt", "no-host-usr", BUILD);

    // A toolchain the ship lacks (cargo is not in /usr/bin): the deploy fails saying what to
    // install, and the site's previous version keeps serving.
    assert!(
        !Path::new("/usr/bin/cargo").exists(),
        "this test needs a ship without cargo in /usr/bin"
    );
    site.write(
        "Cargo.toml",
        "[package]\nname = \"site\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    site.commit("now a Rust app");
    let deadline = Instant::now() + BUILD;
    let outcome = loop {
        let svc = ship.service("site");
        let last = svc["deploys"].as_array().and_then(|d| d.last()).cloned();
        let outcome = last
            .as_ref()
            .and_then(|d| d["outcome"].as_str())
            .unwrap_or("")
            .to_string();
        if outcome.contains("cargo") {
            break outcome;
        }
        assert!(
            Instant::now() < deadline,
            "no failed deploy naming cargo: {svc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(outcome.contains("apt-get install cargo"), "{outcome}");
    assert_eq!(
        ship.get(80, "/site/style.css").unwrap(),
        (200, "body { color: navy }\n".into())
    );
}

/// A server in a namespace of its own, reachable from the host through its uplink.
struct Remote {
    net: TestNet,
    uplink: Uplink,
    child: Child,
    dir: tempfile::TempDir,
}

impl Remote {
    fn start() -> Remote {
        let net = TestNet::new();
        let uplink = net.uplink();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ping"), "pong from the remote\n").unwrap();
        let child = net
            .command("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "8099",
                "--bind",
                &uplink.inside.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Remote {
            net,
            uplink,
            child,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}:8099/ping", self.uplink.inside)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = (&self.net, &self.dir);
    }
}

/// A service that answers `GET /` with what it got from `$REMOTE`, or why it could not.
const CALLER: &str = r#"
import os, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            body = urllib.request.urlopen(os.environ["REMOTE"], timeout=3).read()
        except Exception as e:
            body = ("unreachable: %s" % e).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn caller_ship(remote: &Remote, extra_args: &[&str]) -> (TestShip, Uplink) {
    let mut ship = TestShip::new();
    let uplink = ship.net.uplink();
    let app = Repo::new(ship.path("caller"));
    app.write("caller.py", CALLER)
        .write("Starphleet", "start /usr/bin/python3 caller.py\n");
    app.commit("caller");
    ship.hq
        .write(
            "caller.orders",
            &format!(
                "autodeploy {}\nexport REMOTE={}\npublish --private 8000 --url /out\n",
                app.url(),
                remote.url()
            ),
        )
        .commit("caller");
    let hq = ship.hq.url();
    let mut args = vec!["ship", "--headquarters", &hq, "--poll-interval", "200ms"];
    args.extend_from_slice(extra_args);
    ship.start_with(&args);
    (ship, uplink)
}

fn wait_for_answer(ship: &TestShip) -> String {
    let deadline = Instant::now() + BUILD;
    loop {
        if let Ok((200, body)) = ship.get(80, "/out/") {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the caller never answered\n--- ship log ---\n{}",
            ship.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ship's nftables table as `nft` lists it; empty when there is none.
fn table(ship: &TestShip, id: &str) -> String {
    let out = ship
        .net
        .command("nft")
        .args(["list", "table", "ip", &format!("starphleet-{id}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn services_call_out_unless_the_ship_says_no_outbound() {
    let remote = Remote::start();
    let (mut open, _up1) = caller_ship(&remote, &[]);
    let (mut closed, _up2) = caller_ship(&remote, &["--no-outbound"]);

    assert_eq!(wait_for_answer(&open).trim(), "pong from the remote");
    let (open_id, closed_id) = (open.ship_id(), closed.ship_id());
    assert!(
        table(&open, &open_id).contains("masquerade"),
        "the ship set its outbound NAT"
    );
    let answer = wait_for_answer(&closed);
    assert!(answer.starts_with("unreachable"), "{answer}");
    let closed_table = table(&closed, &closed_id);
    assert!(
        !closed_table.contains("masquerade") && closed_table.contains("drop"),
        "--no-outbound sets no NAT and drops what leaves the bridge, even on a routing host:\n{closed_table}"
    );

    for (ship, id) in [(&mut open, open_id), (&mut closed, closed_id)] {
        let out = ship.down();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(table(ship, &id), "", "down removes the ship's table");
    }
}
