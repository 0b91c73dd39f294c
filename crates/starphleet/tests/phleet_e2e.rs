//! A phleet end to end: three `starphleet ship` processes, each in its own network namespace
//! with its own state dir, joined by a bridge in a hub namespace where `git daemon` serves HQ.
//! One phleet is shared by as many assertions as possible (it is slow to build).

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(90);
const ADMIN_PORT: u16 = 9797;
const SECRET: &str = "phleet-e2e-webhook-secret";

/// The hub's address on the phleet bridge; ship `i` (1-based) is `10.250.0.i`.
const HUB_IP: &str = "10.250.0.254";

fn ship_ip(i: usize) -> String {
    format!("10.250.0.{i}")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The hub namespace: the phleet bridge and `git daemon` serving HQ.
struct Hub {
    net: TestNet,
    _daemon: Option<Killed>,
}

impl Hub {
    fn new() -> Hub {
        let net = TestNet::new();
        run_ok(Command::new("ip").args(["-n", &net.name, "link", "add", "br0", "type", "bridge"]));
        run_ok(Command::new("ip").args(["-n", &net.name, "link", "set", "br0", "up"]));
        run_ok(Command::new("ip").args([
            "-n",
            &net.name,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ]));
        Hub { net, _daemon: None }
    }

    /// Connects `ship` to the bridge with `ip`.
    fn join(&self, ship: &TestNet, ip: &str) {
        let (a, b) = (unique("pva"), unique("pvb"));
        run_ok(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
        run_ok(Command::new("ip").args(["link", "set", &a, "netns", &self.net.name]));
        run_ok(Command::new("ip").args(["link", "set", &b, "netns", &ship.name]));
        run_ok(Command::new("ip").args([
            "-n",
            &self.net.name,
            "link",
            "set",
            &a,
            "master",
            "br0",
            "up",
        ]));
        run_ok(Command::new("ip").args([
            "-n",
            &ship.name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &b,
        ]));
        run_ok(Command::new("ip").args(["-n", &ship.name, "link", "set", &b, "up"]));
    }

    /// Serves the repositories under `base` over git://HUB_IP/.
    fn serve_git(&mut self, base: &Path) {
        let child = self
            .net
            .command("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--timeout=30",
                &format!("--listen={HUB_IP}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        self._daemon = Some(Killed(child));
        let start = Instant::now();
        while self
            .net
            .run(|| std::net::TcpStream::connect((HUB_IP, 9418)).is_err())
        {
            assert!(start.elapsed() < Duration::from_secs(10), "git daemon");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes a secret file with mode 0600.
fn secret_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A GET from inside `net`, with an optional `Authorization` header.
fn get_auth(net: &TestNet, url: &str, auth: Option<&str>) -> Result<(u16, String), String> {
    let (url, auth) = (url.to_string(), auth.map(str::to_string));
    net.run(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let mut req = agent.get(&url);
        if let Some(a) = &auth {
            req = req.set("Authorization", a);
        }
        match req.call() {
            Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// Posts a GitHub push event naming `repo_url` from inside `net`, signed with `secret`.
fn post_push(net: &TestNet, url: &str, repo_url: &str, secret: &str) -> (u16, String) {
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "repository": { "clone_url": repo_url },
    })
    .to_string();
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = openssl.wait_with_output().unwrap();
    let sig = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let url = url.to_string();
    net.run(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        match agent
            .post(&url)
            .set("X-GitHub-Event", "push")
            .set("X-Hub-Signature-256", &format!("sha256={sig}"))
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("posting the push event: {e}"),
        }
    })
}

fn phleet_status(ship: &TestShip) -> serde_json::Value {
    let out = ship.cli(&["status", "--phleet", "--json"]);
    assert!(
        out.status.success(),
        "status --phleet: {}\n--- ship log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        ship.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The app commit each ship serves echo at, in `ships` order.
fn echo_commits(view: &serde_json::Value) -> Vec<Option<String>> {
    view["ships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["services"]
                .as_array()
                .and_then(|ss| ss.iter().find(|x| x["name"] == "echo"))
                .and_then(|e| e["app_commit"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Kills a ship's control plane and its proxy (its containers keep running).
fn kill_ship(ship: &mut TestShip) {
    ship.kill();
    if let Ok(pid) = std::fs::read_to_string(ship.state.join("proxy.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill has no memory preconditions; the pid is the ship's proxy.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
#[ignore = "root tier (network namespaces, runc, git daemon): run by scripts/test"]
fn three_ships_one_phleet() {
    require_root();
    let t0 = Instant::now();
    let mut hub = Hub::new();
    let mut ships: Vec<TestShip> = (0..3).map(|_| TestShip::new()).collect();
    for (i, s) in ships.iter().enumerate() {
        hub.join(&s.net, &ship_ip(i + 1));
    }

    // HQ (served by git daemon) orders echo and lists the three ships.
    let base = ships[0].path("git");
    let hq = Repo::new(base.join("hq"));
    let echo = echo_repo(&ships[0].path("echo"));
    hq.write(
        "echo.orders",
        &format!(
            "autodeploy {}\npublish --private 3000 --public 80 --url /echo\n",
            echo.url()
        ),
    )
    .write(
        "ships",
        &(1..=3)
            .map(|i| format!("s{i} http://{}:{ADMIN_PORT}\n", ship_ip(i)))
            .collect::<String>(),
    );
    let hq_commit = hq.commit("phleet");
    hub.serve_git(&base);
    let hq_url = format!("git://{HUB_IP}/hq");

    // Without a token, a ship with its admin endpoint beyond loopback refuses to start.
    let lonely = ships[0].path("lonely");
    let out = hub
        .net
        .command(bin())
        .args(["ship", "--headquarters", &hq_url, "--admin", "0.0.0.0:9797"])
        .arg("--state-dir")
        .arg(&lonely)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("starphleet token >"), "{err}");

    let token = run_ok(Command::new(bin()).arg("token")).trim().to_string();
    assert!(token.len() >= 16, "{token}");
    for (i, s) in ships.iter_mut().enumerate() {
        secret_file(&s.state.join("phleet.token"), &token);
        secret_file(&s.state.join("webhook.secret"), SECRET);
        let (name, admin) = (
            format!("s{}", i + 1),
            format!("{}:{ADMIN_PORT}", ship_ip(i + 1)),
        );
        s.start_with(&[
            "ship",
            "--headquarters",
            &hq_url,
            "--name",
            &name,
            "--admin",
            &admin,
            "--poll-interval",
            "5m",
        ]);
    }
    for s in &ships {
        s.wait_for_body(80, "/echo/Hi", "Hi", DEPLOY);
    }
    eprintln!("phleet serving after {:?}", t0.elapsed());

    // status --phleet from any ship: three ships, all at the same HQ commit.
    for s in &ships {
        let view = phleet_status(s);
        let listed = view["ships"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{view:#}");
        for (i, v) in listed.iter().enumerate() {
            assert_eq!(v["name"], format!("s{}", i + 1), "{view:#}");
            assert_eq!(v["reachable"], true, "{view:#}");
            assert_eq!(v["hq_commit"], hq_commit.as_str(), "{view:#}");
        }
        let text = String::from_utf8_lossy(&s.cli(&["status", "--phleet"]).stdout).into_owned();
        for i in 1..=3 {
            assert!(text.contains(&format!("s{i}")), "{text}");
        }
    }
    let own = ships[0].status_json();
    assert_eq!(
        own["phleet"], "ship s1 of a phleet of 3 (HQ's ships)",
        "{own:#}"
    );

    // logs --phleet echo: lines from all three, each labelled.
    let out = ships[1].cli(&["logs", "--phleet", "echo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=3 {
        let name = format!("s{i}");
        assert!(
            text.lines()
                .any(|l| serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["ship"] == name.as_str() && v["service"] == "echo")),
            "no echo line from {name}:\n{text}"
        );
    }

    let out = ships[1].cli(&["logs", "--phleet", "echo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 1..=3 {
        let column = format!(" s{i} echo ");
        assert!(
            text.lines().any(|l| l.contains(&column)),
            "no `{column}` column:\n{text}"
        );
    }

    // The admin endpoint beyond loopback: 401 without or with a wrong token.
    let status_url = format!("http://{}:{ADMIN_PORT}/status", ship_ip(1));
    let (code, _) = get_auth(&hub.net, &status_url, None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = get_auth(
        &hub.net,
        &status_url,
        Some("Bearer wrong-token-wrong-token"),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (code, body) = get_auth(&hub.net, &status_url, Some(&format!("Bearer {token}"))).unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = get_auth(
        &hub.net,
        &format!("http://{}:{ADMIN_PORT}/metrics", ship_ip(1)),
        Some(&format!("Bearer {token}")),
    )
    .unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("starphleet_admin_refused_total{ship=\"s1\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter:\n{metrics}"));
    assert!(refused >= 2, "{refused}");

    // offline / online: health 503 then 200, requests served meanwhile.
    let out = ships[0].cli(&["offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while ships[0].get(80, "/starphleet/health").map(|r| r.0) != Ok(503) {
        assert!(start.elapsed() < Duration::from_secs(5), "never offline");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ships[0].get(80, "/echo/still").unwrap().0, 200);
    assert_eq!(ships[0].status_json()["offline"], true);
    let out = ships[0].cli(&["online"]);
    assert!(out.status.success());
    let start = Instant::now();
    while ships[0].get(80, "/starphleet/health").map(|r| r.0) != Ok(200) {
        assert!(start.elapsed() < Duration::from_secs(5), "never online");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A signed push event posted to one ship: all three follow within 2 s (poll: 5 min).
    let hook_url = format!("http://{}:{ADMIN_PORT}/hooks/git", ship_ip(2));
    let before = echo_commits(&phleet_status(&ships[0]));
    echo.write(
        "server.py",
        &(std::fs::read_to_string(echo.dir.join("server.py")).unwrap() + "# v2\n"),
    );
    let v2 = echo.commit("v2");
    let (code, body) = post_push(&hub.net, &hook_url, &echo.url(), "not-the-secret");
    assert_eq!(code, 401, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        echo_commits(&phleet_status(&ships[0])),
        before,
        "a wrongly signed event changes nothing"
    );
    let pushed = Instant::now();
    let (code, body) = post_push(&hub.net, &hook_url, &echo.url(), SECRET);
    assert_eq!(code, 202, "{body}");
    let want = vec![Some(v2.clone()); 3];
    loop {
        let now = echo_commits(&phleet_status(&ships[0]));
        if now == want {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(20),
            "not every ship deployed {v2}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = pushed.elapsed();
    eprintln!("push → all three serving the new commit: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // logs --phleet -f keeps streaming while a ship is gone, and picks it up again.
    let mut follow = ships[0]
        .net
        .command(bin())
        .args(["logs", "--phleet", "echo", "-f", "--json", "--since", "1s"])
        .env("STARPHLEET_STATE_DIR", &ships[0].state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<serde_json::Value>();
    let stdout = follow.stdout.take().unwrap();
    let _follow = Killed(follow);
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&l) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // Waits until every (ship, word) pair has shown up in a line, in any order.
    let wait_lines = |want: &[(&str, &str)], what: &str| {
        let mut missing: Vec<(String, String)> = want
            .iter()
            .map(|(s, w)| (s.to_string(), w.to_string()))
            .collect();
        let start = Instant::now();
        while !missing.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "logs --phleet -f never showed {what}: missing {missing:?}"
            );
            if let Ok(v) = lines.recv_timeout(Duration::from_millis(200)) {
                missing.retain(|(ship, word)| {
                    !(v["ship"] == ship.as_str()
                        && v["line"]
                            .as_str()
                            .is_some_and(|l| l.contains(word.as_str())))
                });
            }
        }
    };
    let mark =
        |s: &TestShip, word: &str| assert_eq!(s.get(80, &format!("/echo/{word}")).unwrap().0, 200);
    for (i, s) in ships.iter().enumerate() {
        mark(s, &format!("before{i}"));
    }
    wait_lines(
        &[("s1", "before0"), ("s2", "before1"), ("s3", "before2")],
        "a line from each ship",
    );

    kill_ship(&mut ships[2]);
    let asked = Instant::now();
    let view = phleet_status(&ships[0]);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let listed = view["ships"].as_array().unwrap();
    assert_eq!(listed[2]["reachable"], false, "{view:#}");
    assert_eq!(listed[0]["reachable"], true, "{view:#}");
    assert_eq!(listed[1]["reachable"], true, "{view:#}");
    mark(&ships[0], "during0");
    mark(&ships[1], "during1");
    wait_lines(
        &[("s1", "during0"), ("s2", "during1")],
        "the others' lines while s3 is gone",
    );

    let (name, admin) = ("s3".to_string(), format!("{}:{ADMIN_PORT}", ship_ip(3)));
    ships[2].start_with(&[
        "ship",
        "--headquarters",
        &hq_url,
        "--name",
        &name,
        "--admin",
        &admin,
        "--poll-interval",
        "5m",
    ]);
    let back = Instant::now();
    while !phleet_status(&ships[0])["ships"][2]["reachable"]
        .as_bool()
        .unwrap_or(false)
    {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "s3 never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ships[2].wait_for_body(80, "/echo/after2", "after2", DEPLOY);
    wait_lines(&[("s3", "after2")], "s3's lines once it is back");

    // Prometheus scrapes the phleet through /phleet/targets.
    prometheus_scrapes(&hub, &ships[0].path("prometheus"), &token, &ships[0]);

    // STARPHLEET_ROLLOUT=1: a good commit goes s1 → s2 → s3, each after the soak.
    hq.write(
        ".starphleet",
        "STARPHLEET_ROLLOUT=1\nSTARPHLEET_ROLLOUT_SOAK=2s\n",
    );
    let hq2 = hq.commit("rollout one ship at a time");
    let (code, body) = post_push(&hub.net, &hook_url, &hq_url, SECRET);
    assert_eq!(code, 202, "{body}");
    let start = Instant::now();
    loop {
        let view = phleet_status(&ships[0]);
        let at: Vec<_> = view["ships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["hq_commit"].as_str().map(str::to_string))
            .collect();
        let settled = view["ships"].as_array().unwrap().iter().all(|s| {
            s["services"]
                .as_array()
                .is_some_and(|ss| ss.iter().all(|x| x["state"] == "serving"))
        });
        if at == vec![Some(hq2.clone()); 3] && settled {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{view:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    echo.write(
        "server.py",
        &(std::fs::read_to_string(echo.dir.join("server.py")).unwrap() + "# v3\n"),
    );
    let v3 = echo.commit("v3");
    let (code, body) = post_push(&hub.net, &hook_url, &echo.url(), SECRET);
    assert_eq!(code, 202, "{body}");
    let pushed = Instant::now();
    let mut reached: [Option<Duration>; 3] = [None; 3];
    while reached.iter().any(Option::is_none) {
        for (i, c) in echo_commits(&phleet_status(&ships[0])).iter().enumerate() {
            if reached[i].is_none() && c.as_deref() == Some(v3.as_str()) {
                reached[i] = Some(pushed.elapsed());
            }
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(40),
            "rollout of {v3} stalled: {reached:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let [r1, r2, r3] = reached.map(Option::unwrap);
    eprintln!("rollout of one good commit: s1 {r1:?}, s2 {r2:?}, s3 {r3:?}");
    assert!(r2 >= r1 + Duration::from_secs(2), "{reached:?}");
    assert!(r3 >= r2 + Duration::from_secs(2), "{reached:?}");

    // A version that never gets healthy fails on s1 and is never started on s2 and s3.
    echo.write("server.py", "raise SystemExit('broken on purpose')\n");
    let broken = echo.commit("broken");
    let (code, body) = post_push(&hub.net, &hook_url, &echo.url(), SECRET);
    assert_eq!(code, 202, "{body}");
    let start = Instant::now();
    loop {
        let view = phleet_status(&ships[0]);
        let s1_failed = view["ships"][0]["services"]
            .as_array()
            .and_then(|ss| ss.iter().find(|x| x["name"] == "echo"))
            .and_then(|e| e["last_deploy"]["outcome"].as_str())
            .is_some_and(|o| o.starts_with("failed"));
        let notes: Vec<String> = (1..3)
            .filter_map(|i| {
                view["ships"][i]["services"]
                    .as_array()
                    .and_then(|ss| ss.iter().find(|x| x["name"] == "echo"))
                    .and_then(|e| e["rollout"].as_str())
                    .map(str::to_string)
            })
            .collect();
        if s1_failed && notes.len() == 2 && notes.iter().all(|n| n.contains("not started here")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the broken version's rollout did not stop at s1: {view:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let now = echo_commits(&phleet_status(&ships[0]));
    assert_eq!(now, vec![Some(v3.clone()); 3], "{broken} started somewhere");
    for s in &ships[1..] {
        let st = s.status_json();
        let deploys = st["services"][0]["deploys"].as_array().unwrap();
        assert!(
            deploys.iter().all(|d| d["app_commit"] != broken.as_str()),
            "{st:#}"
        );
    }
    eprintln!("phleet e2e done in {:?}", t0.elapsed());
}

/// Runs Debian's Prometheus in the hub with `http_sd_configs` on ship 1's `/phleet/targets`
/// and waits for `up == 1` on three targets labelled with their ship.
fn prometheus_scrapes(hub: &Hub, dir: &Path, token: &str, first: &TestShip) {
    std::fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let port = 19090;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: phleet\n    authorization:\n      type: Bearer\n      credentials_file: {tf}\n    http_sd_configs:\n      - url: http://{ip}:{ADMIN_PORT}/phleet/targets\n        refresh_interval: 1s\n        authorization:\n          type: Bearer\n          credentials_file: {tf}\n",
        tf = token_file.display(),
        ip = ship_ip(1)
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let child = hub
        .net
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let _prometheus = Killed(child);
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=up");
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = get_auth(&hub.net, &url, None) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let mut up: Vec<String> = v["data"]["result"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter(|s| s["value"][1] == "1")
                        .filter_map(|s| s["metric"]["ship"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            up.sort();
            if up == ["s1", "s2", "s3"] {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never saw 3 ships up\n{}\n--- s1 log ---\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default(),
            first.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
