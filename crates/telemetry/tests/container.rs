//! A real container under runc, in its own network namespace: runc writes its stdout and
//! stderr straight to files, the collector stores every line exactly once, and sampling reads
//! its cgroup and veth counters from the kernel. Needs root, runc and iproute2-style netns
//! support, like the runtime crate's own tests.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starphleet_runtime::{cgroups, net, unmount_under, ContainerSpec, Runtime};
use starphleet_telemetry::metrics::{render, sample_container, ContainerLabels, Scrape};
use starphleet_telemetry::{Collector, Kind, Limits, LogStore, Query, RecordMeta};

/// Everything the test creates; dropping it removes all of it, pass or fail.
struct Env {
    dir: PathBuf,
    runtime: Runtime,
    runtime_root: PathBuf,
    cgroup_parent: String,
    container: Option<(String, PathBuf)>,
    netns: Vec<String>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some((id, bundle)) = &self.container {
            if let Err(e) = self.runtime.stop(id, bundle, Duration::ZERO) {
                eprintln!("cleanup: stopping {id}: {e:#}");
            }
        }
        for ns in self.netns.iter().rev() {
            if let Err(e) = net::delete_netns(ns) {
                eprintln!("cleanup: deleting netns {ns}: {e:#}");
            }
        }
        if let Err(e) = cgroups::remove(&self.cgroup_parent) {
            eprintln!("cleanup: removing cgroup {}: {e:#}", self.cgroup_parent);
        }
        let _ = unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.runtime_root);
    }
}

/// Runs an async block on a current-thread runtime inside the netns at `path`.
fn block_on_in<T: Send, Fut: std::future::Future<Output = T>>(
    path: &Path,
    make: impl FnOnce() -> Fut + Send,
) -> T {
    net::run_in_netns(path, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
    .unwrap()
}

fn lines(store: &LogStore, stream: &str) -> Vec<String> {
    store
        .query(&Query {
            service: Some("echo".into()),
            kind: Some(Kind::App),
            ..Query::default()
        })
        .unwrap()
        .into_iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.line)
        .collect()
}

#[test]
#[ignore = "root tier (runc, network namespaces): run by scripts/test"]
fn a_real_containers_output_is_collected_and_its_counters_sampled() {
    let tag = format!("sptl{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("starphleet-test-{tag}"));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let runtime_root = PathBuf::from(format!("/run/starphleet-test-{tag}"));
    let mut env = Env {
        runtime: Runtime::new("/usr/sbin/runc", runtime_root.join("runc")),
        runtime_root,
        cgroup_parent: format!("/starphleet-test-{tag}"),
        container: None,
        netns: Vec::new(),
        dir: dir.clone(),
    };

    // The bridge and the container's veth live in a test netns: the host's links are untouched.
    let test_ns = format!("{tag}t");
    env.netns.push(test_ns.clone());
    let test_ns_path = net::create_netns(&test_ns).unwrap();
    let (cns, bridge, host_if) = (format!("{tag}c"), format!("{tag}b"), format!("{tag}h"));
    env.netns.push(cns.clone());
    let (gateway, ip) = (Ipv4Addr::new(10, 89, 0, 1), Ipv4Addr::new(10, 89, 0, 2));
    let cns_path = block_on_in(&test_ns_path, || async {
        net::ensure_bridge(&bridge, gateway, 24).await?;
        net::create_container_netns(&cns, &host_if, &bridge, ip, 24, gateway).await
    })
    .unwrap();

    let id = format!("{tag}-echo");
    let spec = ContainerSpec {
        id: id.clone(),
        bundle_dir: dir.join("bundles").join(&id),
        layers: Vec::new(),
        args: [
            "/bin/sh",
            "-c",
            "i=1; while [ $i -le 3000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; \
             exec sleep 600",
        ]
        .map(String::from)
        .to_vec(),
        env: Vec::new(),
        cwd: "/app".into(),
        user: (9000, 9000),
        hostname: "echo".into(),
        netns: Some(cns_path),
        hosts: Vec::new(),
        binds: Vec::new(),
        cgroups_path: format!("{}/{id}", env.cgroup_parent),
        stdout: dir.join(format!("logs/{id}.stdout.log")),
        stderr: dir.join(format!("logs/{id}.stderr.log")),
        readonly_app: false,
        limits: Default::default(),
        base: None,
    };
    env.container = Some((id.clone(), spec.bundle_dir.clone()));

    let store = LogStore::open(&dir.join("logstore"), Limits::default()).unwrap();
    let collector = Arc::new(Collector::new(store.clone()));
    for (path, stream) in [(&spec.stdout, "stdout"), (&spec.stderr, "stderr")] {
        let meta = RecordMeta {
            ship: "ship1".into(),
            service: "echo".into(),
            version: "abc123-r1".into(),
            container: id.clone(),
            kind: Kind::App,
            stream: stream.into(),
        };
        collector.add(path, meta).unwrap();
    }
    let thread = collector.spawn(Duration::from_millis(10)).unwrap();

    let pid = env.runtime.start(&spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&store, "stderr").len() < 3000 || lines(&store, "stdout").len() < 3000 {
        assert!(
            Instant::now() < deadline,
            "the container's output was not all collected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Traffic to a closed port: the container receives SYNs and answers with RSTs.
    let sample = block_on_in(&test_ns_path, || async {
        for _ in 0..3 {
            let refused =
                TcpStream::connect_timeout(&SocketAddr::from((ip, 9)), Duration::from_secs(2));
            assert!(refused.is_err());
        }
        let start = Instant::now();
        let sample = sample_container(pid, Some(&host_if)).await;
        (sample, start.elapsed())
    });
    let (sample, took) = (sample.0.unwrap(), sample.1);
    println!("sampled in {took:?}: {sample:?}");
    assert!(sample.cpu_usage_ns > 0, "{sample:?}");
    assert!(sample.memory_working_set_bytes > 0, "{sample:?}");
    assert!(sample.threads >= 1, "{sample:?}");
    let now = starphleet_telemetry::now_ns() as f64 / 1e9;
    assert!(
        sample.started_at_s <= now + 1.0 && sample.started_at_s > now - 60.0,
        "{sample:?}"
    );
    let net = sample.net.clone().expect("the veth exists");
    assert!(net.rx_packets >= 3 && net.tx_packets >= 3, "{net:?}");
    assert!(net.rx_bytes > 0 && net.tx_bytes > 0, "{net:?}");

    let text = render(Scrape {
        containers: vec![(
            ContainerLabels {
                ship: "ship1".into(),
                service: "echo".into(),
                version: "abc123-r1".into(),
                container: id.clone(),
            },
            sample,
        )],
        ..Scrape::default()
    });
    assert!(text.contains(&format!(
        "container_network_receive_packets_total{{ship=\"ship1\",service=\"echo\",version=\"abc123-r1\",container=\"{id}\"}} {}",
        net.rx_packets
    )), "{text}");

    env.runtime
        .stop(&id, &spec.bundle_dir, Duration::from_millis(100))
        .unwrap();
    env.container = None;
    drop(thread);
    assert_eq!(collector.remove(&spec.stdout).unwrap(), Some(0));
    assert_eq!(collector.remove(&spec.stderr).unwrap(), Some(0));
    let expected = |s: &str| (1..=3000).map(|i| format!("{s} {i}")).collect::<Vec<_>>();
    assert_eq!(lines(&store, "stdout"), expected("out"));
    assert_eq!(lines(&store, "stderr"), expected("err"));
    assert!(
        block_on(sample_container(pid, None)).is_err(),
        "a stopped container cannot be sampled"
    );
}

/// Runs a future to completion on a throw-away runtime.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}
