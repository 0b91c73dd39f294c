//! `starphleet down`: stop the ship, its proxy and every service; remove what they created; keep state and logs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use starphleet_proxy::ProxyClient;
use starphleet_runtime::Runtime;

use crate::layout::{live_pid, process_alive, Layout};
use crate::ship::NetPlan;
use crate::state::ShipState;

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// The control plane was running and was stopped.
    pub stopped_ship: bool,
    /// The proxy was running and was stopped.
    pub stopped_proxy: bool,
    /// Containers stopped and removed.
    pub containers: usize,
    /// Network namespaces removed.
    pub netns: usize,
    /// Mounts removed.
    pub mounts: usize,
    /// Problems met on the way (down carries on past each).
    pub problems: Vec<String>,
}

fn stop_process(pid: u32, grace: Duration) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        while process_alive(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Tears the ship in `state_dir` down. `runtime` is the OCI runtime binary it used.
pub async fn down(state_dir: &Path, runtime: &str) -> Result<DownReport> {
    let layout = Layout::new(state_dir);
    let mut report = DownReport::default();
    let Ok(id) = std::fs::read_to_string(layout.ship_id_file()) else {
        return Ok(report);
    };
    let id = id.trim().to_string();

    if let Some(pid) = live_pid(&layout.ship_pid_file()) {
        stop_process(pid, Duration::from_secs(10));
        report.stopped_ship = true;
    }
    let proxy = ProxyClient::new(layout.proxy_socket());
    let proxy_pid = live_pid(&layout.proxy_pid_file());
    if proxy.is_running().await {
        let _ = proxy.shutdown().await;
        report.stopped_proxy = true;
    }
    if let Some(pid) = proxy_pid {
        stop_process(pid, Duration::from_secs(5));
        report.stopped_proxy = true;
    }

    let rt = Runtime::new(runtime, Layout::runtime_root(&id));
    match rt.list() {
        Ok(list) => {
            for c in list {
                match rt.stop(&c.id, &c.bundle, Duration::from_secs(5)) {
                    Ok(()) => report.containers += 1,
                    Err(e) => report.problems.push(format!("container {}: {e:#}", c.id)),
                }
            }
        }
        Err(e) => report.problems.push(format!("listing containers: {e:#}")),
    }
    match starphleet_runtime::net::list_netns(&format!("sp-{id}-")) {
        Ok(names) => {
            for ns in names {
                match starphleet_runtime::net::delete_netns(&ns) {
                    Ok(()) => report.netns += 1,
                    Err(e) => report.problems.push(format!("netns {ns}: {e:#}")),
                }
            }
        }
        Err(e) => report.problems.push(format!("listing netns: {e:#}")),
    }
    match starphleet_runtime::net::list_links(&format!("sp{id}")).await {
        Ok(names) => {
            for name in names {
                if let Err(e) = starphleet_runtime::net::delete_link(&name).await {
                    report.problems.push(format!("veth {name}: {e:#}"));
                }
            }
        }
        Err(e) => report.problems.push(format!("listing veths: {e:#}")),
    }
    if let Err(e) = starphleet_runtime::net::delete_link(&NetPlan::for_ship(&id).bridge).await {
        report.problems.push(format!("bridge: {e:#}"));
    }
    let runtime_dir = Layout::runtime_root(&id);
    for dir in [layout.root(), runtime_dir.parent().unwrap_or(&runtime_dir)] {
        match starphleet_runtime::unmount_under(dir) {
            Ok(n) => report.mounts += n,
            Err(e) => report
                .problems
                .push(format!("unmounting under {}: {e:#}", dir.display())),
        }
    }
    let _ = std::fs::remove_dir_all(runtime_dir.parent().unwrap_or(&runtime_dir));
    remove_cgroups(&id);

    // Keep what ran and its history, but nothing runs any more.
    if let Ok(mut state) = ShipState::load(&layout.state_file()) {
        for svc in state.services.values_mut() {
            svc.current = None;
            svc.draining.clear();
            svc.pending.clear();
        }
        state.save(&layout.state_file())?;
    }
    let _ = std::fs::remove_dir_all(layout.bundles());
    for f in [
        layout.ship_pid_file(),
        layout.proxy_pid_file(),
        layout.proxy_socket(),
        layout.admin_socket(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    Ok(report)
}

/// Removes the ship's parent cgroups (runc removes each container's own on delete).
fn remove_cgroups(id: &str) {
    let name = format!("starphleet-{id}");
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for ctl in controllers.flatten() {
        for dir in [
            ctl.path().join(&name),
            std::path::PathBuf::from("/sys/fs/cgroup").join(&name),
        ] {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}
