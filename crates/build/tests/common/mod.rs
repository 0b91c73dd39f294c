//! A small ship for real builds: a bridge in the host's namespace with outbound NAT (so
//! builds reach the package registries), a builder in a temp state dir, and service
//! containers started from the layers in their own namespaces. Dropping it removes all of it.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use starphleet_build::{
    BaseRef, BuildError, BuildNetwork, BuildRequest, Builder, Declared, Layer, Tools,
    DEFAULT_BUILD_TIMEOUT, DEFAULT_MAX_LOG_BYTES, STARPHLEET_IN_CONTAINER,
};
use starphleet_runtime::{cgroups, net, unmount_under, Bind, ContainerSpec, Runtime};

static N: AtomicU32 = AtomicU32::new(0);

/// Ships of this process, each with its own subnet.
static SHIPS: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    N.fetch_add(1, Ordering::SeqCst)
}

/// Runs `f` on a current-thread tokio runtime on its own thread.
pub fn block_on<T: Send, F: std::future::Future<Output = T>>(f: impl FnOnce() -> F + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    })
}

/// The state of one test ship; everything it made goes when it is dropped.
pub struct Ship {
    /// Unique name part.
    pub name: String,
    /// The state dir.
    pub dir: PathBuf,
    pub builder: Builder,
    pub runtime: Runtime,
    runtime_root: PathBuf,
    cgroup_parent: String,
    bridge: String,
    prefix: [u8; 3],
    ship_id: String,
    hosts: AtomicU32,
    containers: Mutex<Vec<(String, PathBuf)>>,
    netns: Mutex<Vec<String>>,
}

/// An app's tree: files and their contents.
pub type Files<'a> = &'a [(&'a str, &'a [u8])];

impl Ship {
    pub fn new() -> Self {
        let n = next();
        let ship_no = SHIPS.fetch_add(1, Ordering::SeqCst);
        assert!(ship_no < 8, "at most 8 test ships per process get a subnet");
        let pid = std::process::id();
        let name = format!("{}x{n}", pid % 100_000);
        let dir = std::env::temp_dir().join(format!("starphleet-apps-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let runtime_root = PathBuf::from(format!("/run/starphleet-apps-{name}/runc"));
        let runtime = Runtime::new("/usr/sbin/runc", &runtime_root);
        // One /24 per ship of this process, away from the ship's own 10.200-249 range.
        let third = ((pid % 31) * 8 + ship_no) as u8;
        let prefix = [172, 31, third];
        let bridge = format!("spab{name}");
        let ship_id = format!("bt{name}");
        let gateway = Ipv4Addr::new(172, 31, third, 1);
        let ship = Ship {
            builder: Builder::new(dir.join("builds"), runtime.clone()),
            runtime,
            runtime_root,
            cgroup_parent: format!("/starphleet-apps-{name}"),
            bridge: bridge.clone(),
            prefix,
            ship_id: ship_id.clone(),
            hosts: AtomicU32::new(2),
            containers: Mutex::new(Vec::new()),
            netns: Mutex::new(Vec::new()),
            name,
            dir,
        };
        block_on(|| net::ensure_bridge(&bridge, gateway, 24)).unwrap();
        net::ensure_outbound(&bridge, gateway, 24, &ship_id).unwrap();
        ship
    }

    fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A fresh address and netns/veth names on the bridge (the netns is tracked for removal).
    fn allocate(&self) -> (Ipv4Addr, String, String) {
        let host = self.hosts.fetch_add(1, Ordering::SeqCst);
        assert!(host < 250, "test ship out of addresses");
        let [a, b, c] = self.prefix;
        let n = next();
        let ns = format!("spa-{}-{n}", self.name);
        let host_if = format!("spah{:x}x{n:x}", std::process::id() % 0xfffff);
        self.netns.lock().unwrap().push(ns.clone());
        (Ipv4Addr::new(a, b, c, host as u8), ns, host_if)
    }

    /// Builds `files` as commit `commit`; returns the layer and how long it took.
    pub fn build(
        &self,
        commit: &str,
        files: Files<'_>,
        declared: &Declared,
        base: Option<BaseRef<'_>>,
        env: &[(String, String)],
    ) -> (Result<Layer, BuildError>, Duration) {
        let export = |dest: &Path| -> std::io::Result<()> {
            for (name, data) in files {
                let path = dest.join(name);
                std::fs::create_dir_all(path.parent().unwrap())?;
                std::fs::write(path, data)?;
            }
            Ok(())
        };
        let (ip, netns, host_if) = self.allocate();
        let network = BuildNetwork {
            netns,
            host_if,
            bridge: self.bridge.clone(),
            ip,
            prefix_len: 24,
            gateway: self.gateway(),
        };
        let id = format!("spa-{}-b{}", self.name, next());
        let started = Instant::now();
        let layer = self.builder.build(&BuildRequest {
            service: "app",
            app: "app",
            commit,
            declared,
            tools: &Tools::probe(),
            base,
            env,
            export: &export,
            git: &starphleet_git::Git::default(),
            network: Some(&network),
            log: &self.log(),
            container_id: &id,
            cgroups_path: &format!("{}/{id}", self.cgroup_parent),
            fresh: false,
            timeout: DEFAULT_BUILD_TIMEOUT,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        });
        (layer, started.elapsed())
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts the layer's service as the ship would (its run env under `env`, `PORT`
    /// last) and returns its address.
    pub fn start(&self, layer: &Layer, env: &[(String, String)]) -> SocketAddr {
        const PORT: u16 = 8080;
        let (ip, ns, host_if) = self.allocate();
        let (bridge, gateway) = (self.bridge.clone(), self.gateway());
        let path =
            block_on(|| net::create_container_netns(&ns, &host_if, &bridge, ip, 24, gateway))
                .unwrap();
        let id = format!("spa-{}-s{}", self.name, next());
        let bundle = self.dir.join("bundles").join(&id);
        self.containers
            .lock()
            .unwrap()
            .push((id.clone(), bundle.clone()));
        let mut merged: Vec<(String, String)> = Vec::new();
        for (k, v) in layer
            .run_env()
            .iter()
            .chain(env)
            .cloned()
            .chain([("PORT".to_string(), PORT.to_string())])
        {
            merged.retain(|(key, _)| *key != k);
            merged.push((k, v));
        }
        let spec = ContainerSpec {
            id: id.clone(),
            bundle_dir: bundle,
            layers: vec![layer.dir.clone()],
            base: layer.base.clone(),
            args: vec!["/bin/sh".into(), "-c".into(), layer.start_script()],
            env: merged,
            cwd: "/app".into(),
            user: starphleet_build::APP_USER,
            hostname: "app".into(),
            netns: Some(path),
            binds: vec![Bind {
                source: starphleet_binary(),
                destination: STARPHLEET_IN_CONTAINER.into(),
                readonly: true,
            }],
            cgroups_path: format!("{}/{id}", self.cgroup_parent),
            stdout: self.dir.join(format!("logs/{id}.out")),
            stderr: self.dir.join(format!("logs/{id}.err")),
            ..Default::default()
        };
        self.runtime.start(&spec).unwrap();
        SocketAddr::new(ip.into(), PORT)
    }

    /// What a started service printed.
    pub fn output(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        out
    }
}

impl Drop for Ship {
    fn drop(&mut self) {
        for (id, bundle) in self.containers.lock().unwrap().iter().rev() {
            if let Err(e) = self.runtime.stop(id, bundle, Duration::ZERO) {
                eprintln!("cleanup: stopping {id}: {e}");
            }
        }
        for ns in self.netns.lock().unwrap().iter() {
            if let Err(e) = net::delete_netns(ns) {
                eprintln!("cleanup: netns {ns}: {e}");
            }
        }
        if let Err(e) = net::remove_outbound(&self.ship_id) {
            eprintln!("cleanup: nftables table: {e}");
        }
        let bridge = self.bridge.clone();
        if let Err(e) = block_on(|| net::delete_link(&bridge)) {
            eprintln!("cleanup: bridge {bridge}: {e}");
        }
        if let Err(e) = cgroups::remove_tree(&self.cgroup_parent) {
            eprintln!("cleanup: cgroups: {e}");
        }
        let _ = unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.runtime_root.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// The `starphleet` binary of this build (the test binary lives in `target/<profile>/deps`).
pub fn starphleet_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("starphleet"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p starphleet` (scripts/test does)",
        bin.display()
    );
    bin
}

/// `GET path` until the service answers (or `timeout` passes): (status, content type, body).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let deadline = Instant::now() + timeout;
    loop {
        match agent.get(&format!("http://{addr}{path}")).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let status = r.status();
                let ctype = r.header("content-type").unwrap_or("").to_string();
                return (status, ctype, r.into_string().unwrap_or_default());
            }
            Err(e) if Instant::now() >= deadline => panic!("GET {path} on {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Bytes of all files under `dir` (symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            total += dir_size(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// The env of an app's `.env`, as the ship reads it.
pub fn dot_env(text: &str) -> Vec<(String, String)> {
    starphleet_orders::parse_env_file(Path::new(".env"), text).unwrap()
}
