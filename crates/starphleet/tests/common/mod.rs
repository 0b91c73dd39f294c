//! Test harness: a ship in its own network namespace, real git repos, real HTTP.
//!
//! Every name is unique per test (pid + counter) and every guard cleans up on
//! drop, also when the test fails.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Root-tier tests call this first: run without root they fail saying why, never pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, runc, mounts): run it with scripts/test as root"
    );
}

/// A unique short name for this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{:x}{:x}",
        std::process::id() & 0xffff,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace the ship runs in, so ports and bridges never collide between tests.
pub struct TestNet {
    pub name: String,
}

impl TestNet {
    pub fn new() -> Self {
        require_root();
        let name = unique("spt");
        sh(Command::new("ip").args(["netns", "add", &name]));
        let net = TestNet { name };
        sh(Command::new("ip").args(["-n", &net.name, "link", "set", "lo", "up"]));
        net
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that lives in this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only; the thread ends after f.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let file = std::fs::File::open(self.path()).expect("open netns");
        let mut cmd = Command::new(program);
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Interface names in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = sh(Command::new("ip").args(["-n", &self.name, "-o", "link", "show"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A git repository on disk.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn write(&self, path: &str, text: &str) -> &Self {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.dir.join(path)).unwrap();
        self
    }

    pub fn commit(&self, msg: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = sh(Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tiny app: answers `GET /x` with `$GREETING` + `x`, on `$PORT`.
pub const GREETER: &str = r#"import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        body = (os.environ.get("GREETING", "") + self.path.lstrip("/")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("greeter up", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

/// An app repository holding the greeter.
pub fn greeter_repo(dir: &Path) -> Repo {
    let repo = Repo::new(dir);
    repo.write("server.py", GREETER)
        .write("Starphleet", "start /usr/bin/python3 server.py\n");
    repo.commit("greeter");
    repo
}

/// The example echo app from the project's `examples/`.
pub fn echo_repo(dir: &Path) -> Repo {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/echo");
    let repo = Repo::new(dir);
    for f in ["server.py", "Starphleet"] {
        repo.write(f, &std::fs::read_to_string(root.join(f)).unwrap());
    }
    repo.commit("echo");
    repo
}

/// A ship under test: netns, state dir, HQ repo, the daemon process.
pub struct TestShip {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub hq: Repo,
    pub child: Option<Child>,
    pub net: TestNet,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_starphleet")
}

impl TestShip {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("sptest").tempdir().unwrap();
        let state = tmp.path().join("state");
        let hq = Repo::new(tmp.path().join("hq"));
        TestShip {
            net: TestNet::new(),
            state,
            hq,
            child: None,
            tmp,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn start(&mut self) {
        let hq = self.hq.url();
        self.start_with(&[
            "ship",
            "--headquarters",
            &hq,
            "--poll-interval",
            "200ms",
            "--name",
            "testship",
        ]);
    }

    /// Starts `starphleet ARGS… --state-dir <state>` in the namespace, output to the ship log.
    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "ship already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("ship.log"))
            .unwrap();
        let child = self
            .net
            .command(bin())
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .env("STARPHLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ship");
        self.child = Some(child);
    }

    /// SIGKILLs the control plane (services and proxy keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("ship.log")).unwrap_or_default()
    }

    /// Runs the CLI against this ship, inside its namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.net
            .command(bin())
            .args(args)
            .env("STARPHLEET_STATE_DIR", &self.state)
            .output()
            .unwrap()
    }

    pub fn ship_id(&self) -> String {
        std::fs::read_to_string(self.state.join("ship-id"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `GET http://127.0.0.1:<port><path>` from inside the namespace: (status, body), or an error string.
    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://127.0.0.1:{port}{path}");
        self.net.run(move || http_get(&url))
    }

    /// Polls until `GET path` answers 200 with `body`, or panics with the ship log.
    pub fn wait_for_body(&self, port: u16, path: &str, body: &str, timeout: Duration) {
        let start = Instant::now();
        let mut last = Err(String::from("no request yet"));
        while start.elapsed() < timeout {
            last = self.get(port, path);
            if matches!(&last, Ok((200, b)) if b.trim() == body) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "GET {path} never answered {body:?} within {timeout:?}; last: {last:?}\n--- ship log ---\n{}",
            self.log()
        );
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The service `name` in `status --json`; panics naming the status when it is missing.
    pub fn service(&self, name: &str) -> serde_json::Value {
        let st = self.status_json();
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name} in {st}"))
    }

    /// Runs `starphleet down` for this ship.
    pub fn down(&mut self) -> Output {
        self.kill();
        self.cli(&["down"])
    }
}

impl Drop for TestShip {
    fn drop(&mut self) {
        if self.state.join("ship-id").exists() {
            let _ = self.down();
        }
    }
}

/// A real HTTP/1.1 GET with a short timeout.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    match agent.get(url).call() {
        Ok(r) => {
            let code = r.status();
            Ok((code, r.into_string().map_err(|e| e.to_string())?))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Mount points under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Named network namespaces whose name starts with `prefix`.
pub fn netns_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Containers the OCI runtime knows for ship `id`.
pub fn runc_containers(id: &str) -> Vec<String> {
    let root = format!("/run/starphleet/{id}/runtime");
    if !Path::new(&root).exists() {
        return Vec::new();
    }
    let out = Command::new("runc")
        .args(["--root", &root, "list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A route out of a test namespace through the host: a veth pair with a /30, a default route
/// in the namespace and masquerade on the host, so builds in a ship there reach the package
/// registries. Removed on drop (the namespace end goes with its peer).
pub struct Uplink {
    host_if: String,
    table: String,
    /// The namespace end's address.
    pub inside: std::net::Ipv4Addr,
}

static UPLINKS: AtomicU32 = AtomicU32::new(0);

impl TestNet {
    /// Gives this namespace a way out (see [`Uplink`]).
    pub fn uplink(&self) -> Uplink {
        let n = (std::process::id() * 8 + UPLINKS.fetch_add(1, Ordering::SeqCst)) % 16384;
        // 10.252.0.0/16: one /30 per uplink, away from the ships' 10.200-249.
        let base = u32::from(std::net::Ipv4Addr::new(10, 252, 0, 0)) + n * 4;
        let outside = std::net::Ipv4Addr::from(base + 1);
        let inside = std::net::Ipv4Addr::from(base + 2);
        let host_if = unique("spu");
        let up = Uplink {
            table: format!("sptest-{host_if}"),
            host_if,
            inside,
        };
        sh(Command::new("ip").args([
            "link",
            "add",
            &up.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "uplink0",
            "netns",
            &self.name,
        ]));
        sh(Command::new("ip").args(["addr", "add", &format!("{outside}/30"), "dev", &up.host_if]));
        sh(Command::new("ip").args(["link", "set", &up.host_if, "up"]));
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend_from_slice(args);
            sh(Command::new("ip").args(&all));
        };
        ns(&["addr", "add", &format!("{inside}/30"), "dev", "uplink0"]);
        ns(&["link", "set", "uplink0", "up"]);
        ns(&["route", "add", "default", "via", &outside.to_string()]);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        let script = format!(
            "table ip {t} {{\n chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {inside}/30 oifname != \"{i}\" masquerade\n }}\n chain forward {{ type filter hook forward priority filter; policy accept;\n  iifname \"{i}\" accept\n  oifname \"{i}\" accept\n }}\n}}\n",
            t = up.table,
            i = up.host_if,
        );
        let file = std::env::temp_dir().join(format!("{}.nft", up.table));
        std::fs::write(&file, script).unwrap();
        let out = Command::new("nft")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("nft");
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        up
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// (user + system CPU seconds, resident bytes) of a process.
pub fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}
