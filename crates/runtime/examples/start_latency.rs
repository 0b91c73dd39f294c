//! Measures what starting a container costs: `Runtime::start` (bundle + overlay root +
//! `runc run -d`) next to a bare `runc run -d` of a minimal hand-made bundle, plus the
//! netlink setup of a container netns. Prints medians.
//!
//! Run as root: `cargo run --release -p starphleet-runtime --example start_latency -- [RUNS]`

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use starphleet_runtime::{cgroups, net, unmount_under, ContainerSpec, Runtime};

const RUNC: &str = "/usr/sbin/runc";
const SCRIPT: &str = "echo up; exec /bin/sleep 600";

/// Removes everything the benchmark made, however it ends.
struct Cleanup {
    dir: PathBuf,
    root: PathBuf,
    cgroup: String,
    netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            let _ = net::delete_netns(ns);
        }
        let _ = cgroups::remove_tree(&self.cgroup);
        let _ = unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.root.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(15);
    let tag = format!("spbench{}", std::process::id());
    let mut cleanup = Cleanup {
        dir: std::env::temp_dir().join(&tag),
        root: PathBuf::from(format!("/run/{tag}/runc")),
        cgroup: format!("/{tag}"),
        netns: Vec::new(),
    };
    std::fs::create_dir_all(&cleanup.dir)?;
    let runtime = Runtime::new(RUNC, &cleanup.root);
    println!("{}; {runs} runs each", runtime.check()?);

    let mut start = Vec::new();
    let mut start_up = Vec::new();
    let mut stop = Vec::new();
    for i in 0..runs {
        let spec = ContainerSpec {
            id: format!("{tag}-{i}"),
            bundle_dir: cleanup.dir.join(format!("bundle-{i}")),
            layers: Vec::new(),
            args: vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()],
            env: Vec::new(),
            cwd: "/app".into(),
            user: (9000, 9000),
            hostname: "bench".into(),
            netns: None,
            hosts: Vec::new(),
            binds: Vec::new(),
            cgroups_path: format!("/{tag}/c{i}"),
            stdout: cleanup.dir.join(format!("out-{i}.log")),
            stderr: cleanup.dir.join(format!("err-{i}.log")),
            ..Default::default()
        };
        let t = Instant::now();
        runtime.start(&spec)?;
        start.push(t.elapsed());
        wait_for(&spec.stdout, "up")?;
        start_up.push(t.elapsed());
        let t = Instant::now();
        runtime.stop(&spec.id, &spec.bundle_dir, Duration::ZERO)?;
        stop.push(t.elapsed());
    }

    let bundle = bare_bundle(&cleanup.dir, &format!("/{tag}/bare"))?;
    let mut bare = Vec::new();
    let mut bare_up = Vec::new();
    for i in 0..runs {
        let id = format!("{tag}-bare-{i}");
        let out = cleanup.dir.join(format!("bare-{i}.log"));
        let t = Instant::now();
        let status = Command::new(RUNC)
            .arg("--root")
            .arg(&cleanup.root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::inherit())
            .status()?;
        bare.push(t.elapsed());
        if !status.success() {
            bail!("bare runc run failed: {status}");
        }
        wait_for(&out, "up")?;
        bare_up.push(t.elapsed());
        Command::new(RUNC)
            .arg("--root")
            .arg(&cleanup.root)
            .args(["delete", "--force", &id])
            .status()?;
    }

    // Netns setup runs inside a namespace of its own so the host's links are never touched.
    let bench_ns = format!("{tag}n");
    cleanup.netns.push(bench_ns.clone());
    let bench_path = net::create_netns(&bench_ns)?;
    let mut netns_times = Vec::new();
    let names: Vec<String> = (0..runs).map(|i| format!("{tag}c{i}")).collect();
    cleanup.netns.extend(names.iter().cloned());
    net::run_in_netns(&bench_path, || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let gateway = Ipv4Addr::new(10, 55, 0, 1);
            net::ensure_bridge("spbench0", gateway, 16).await?;
            for (i, ns) in names.iter().enumerate() {
                let ip = Ipv4Addr::new(10, 55, 1, i as u8 + 2);
                let t = Instant::now();
                net::create_container_netns(ns, &format!("spv{i}"), "spbench0", ip, 16, gateway)
                    .await?;
                netns_times.push(t.elapsed());
                net::delete_netns(ns)?;
            }
            Ok(())
        })
    })??;

    println!("median over {runs} runs:");
    println!(
        "  Runtime::start (bundle + overlay + runc run -d): {:>6.1} ms, first output at {:>6.1} ms",
        median_ms(&mut start),
        median_ms(&mut start_up)
    );
    println!(
        "  bare runc run -d (hand-made bundle):            {:>6.1} ms, first output at {:>6.1} ms",
        median_ms(&mut bare),
        median_ms(&mut bare_up)
    );
    println!(
        "  Runtime::stop (SIGKILL + delete + unmount):     {:>6.1} ms",
        median_ms(&mut stop)
    );
    println!(
        "  net::create_container_netns (netns + veth + ip + route): {:>6.1} ms",
        median_ms(&mut netns_times)
    );
    Ok(())
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

fn wait_for(file: &Path, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains(needle)
    {
        if Instant::now() > deadline {
            bail!("no {needle:?} in {} after 10 s", file.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// The baseline: `runc spec` with the host's /usr bound read-only into a plain directory
/// root holding the merged-usr symlinks, sharing the host netns like the measured starts.
fn bare_bundle(dir: &Path, cgroups_path: &str) -> Result<PathBuf> {
    let bundle = dir.join("bare");
    let rootfs = bundle.join("rootfs");
    for d in ["usr", "proc", "dev", "sys", "tmp", "app"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    for link in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
            std::os::unix::fs::symlink(target, rootfs.join(link))?;
        }
    }
    let status = Command::new(RUNC)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path)?).context("parsing config.json")?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", SCRIPT]);
    config["process"]["user"] = serde_json::json!({"uid": 9000, "gid": 9000});
    config["process"]["cwd"] = "/app".into();
    config["linux"]["cgroupsPath"] = cgroups_path.into();
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .context("namespaces")?;
    namespaces.retain(|ns| ns["type"] != "network");
    config["mounts"]
        .as_array_mut()
        .context("mounts")?
        .push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro", "nosuid", "nodev"]
        }));
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}
