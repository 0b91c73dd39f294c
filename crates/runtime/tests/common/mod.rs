//! Shared fixtures: unique names and a guard that removes everything a test made.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use starphleet_runtime::{cgroups, net, unmount_under, ContainerSpec, Runtime};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, short enough for an interface (≤ 15 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{tag}{}x{n}", std::process::id())
}

/// Everything one test creates; dropping it stops and removes all of it, pass or fail.
pub struct TestEnv {
    pub name: String,
    pub dir: PathBuf,
    pub runtime: Runtime,
    runtime_root: PathBuf,
    pub cgroup_parent: String,
    containers: Vec<(String, PathBuf)>,
    netns: Vec<String>,
}

impl TestEnv {
    pub fn new() -> Self {
        let name = unique("sprt");
        let dir = std::env::temp_dir().join(format!("starphleet-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let runtime_root = PathBuf::from(format!("/run/starphleet-test-{name}/runc"));
        TestEnv {
            runtime: Runtime::new("/usr/sbin/runc", &runtime_root),
            cgroup_parent: format!("/starphleet-test-{name}"),
            name,
            dir,
            runtime_root,
            containers: Vec::new(),
            netns: Vec::new(),
        }
    }

    /// A spec with sane defaults for container `tag`; the guard will stop it.
    pub fn spec(&mut self, tag: &str, args: &[&str]) -> ContainerSpec {
        let id = format!("{}-{tag}", self.name);
        let bundle_dir = self.dir.join("bundles").join(&id);
        self.containers.push((id.clone(), bundle_dir.clone()));
        ContainerSpec {
            cgroups_path: format!("{}/{id}", self.cgroup_parent),
            id,
            bundle_dir,
            layers: Vec::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: "/app".into(),
            user: (9000, 9000),
            hostname: tag.into(),
            netns: None,
            hosts: Vec::new(),
            binds: Vec::new(),
            stdout: self.dir.join(format!("logs/{tag}.out")),
            stderr: self.dir.join(format!("logs/{tag}.err")),
            ..Default::default()
        }
    }

    /// Creates a named netns that the guard deletes.
    pub fn netns(&mut self, tag: &str) -> (String, PathBuf) {
        let name = unique(tag);
        self.netns.push(name.clone());
        let path = net::create_netns(&name).unwrap();
        (name, path)
    }

    /// Registers a netns made by someone else (e.g. create_container_netns) for deletion.
    pub fn track_netns(&mut self, name: &str) {
        self.netns.push(name.to_string());
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (id, bundle) in self.containers.iter().rev() {
            if let Err(e) = self.runtime.stop(id, bundle, Duration::ZERO) {
                eprintln!("cleanup: stopping {id}: {e}");
            }
        }
        // Container netns first: their veths sit in the test netns.
        for ns in self.netns.iter().rev() {
            if let Err(e) = net::delete_netns(ns) {
                eprintln!("cleanup: deleting netns {ns}: {e}");
            }
        }
        if let Err(e) = cgroups::remove_tree(&self.cgroup_parent) {
            eprintln!("cleanup: removing cgroup {}: {e}", self.cgroup_parent);
        }
        let _ = unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.runtime_root.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// Runs an async block on a current-thread runtime inside the netns at `path`.
pub fn block_on_in<T, F, Fut>(path: &Path, make: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    net::run_in_netns(path, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
    .unwrap()
}

/// `GET path` over HTTP/1.0, retrying the connection until `timeout`; returns the whole response.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                return Ok(out);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until `file` contains `needle`; returns its contents.
pub fn wait_for_output(file: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points at or under `dir` in this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|p| p.starts_with(&dir))
        .collect()
}
