//! `starphleet down`: stop the ship, its proxy and every service; remove what they created; keep state and logs.

use std::path::Path;
use std::time::{Duration, Instant};

use starphleet_proxy::ProxyClient;
use starphleet_runtime::Runtime;

use crate::layout::{live_pid, process_alive, Layout};
use crate::names::Names;
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

/// Why `down` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    /// The state file could not be rewritten to say nothing runs.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
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
pub async fn down(state_dir: &Path, runtime: &str) -> Result<DownReport, DownError> {
    let layout = Layout::new(state_dir);
    let mut report = DownReport::default();
    let Ok(id) = std::fs::read_to_string(layout.ship_id_file()) else {
        return Ok(report);
    };
    let names = Names::new(id.trim());

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

    let rt = Runtime::new(runtime, Layout::runtime_root(names.ship_id()));
    match rt.list() {
        Ok(list) => {
            for c in list {
                match rt.stop(&c.id, &c.bundle, Duration::from_secs(5)) {
                    Ok(()) => report.containers += 1,
                    Err(e) => report.problems.push(format!("container {}: {e}", c.id)),
                }
            }
        }
        Err(e) => report.problems.push(format!("listing containers: {e}")),
    }
    match starphleet_runtime::net::list_netns(&names.netns_prefix()) {
        Ok(found) => {
            for ns in found {
                match starphleet_runtime::net::delete_netns(&ns) {
                    Ok(()) => report.netns += 1,
                    Err(e) => report.problems.push(format!("netns {ns}: {e}")),
                }
            }
        }
        Err(e) => report.problems.push(format!("listing netns: {e}")),
    }
    match starphleet_runtime::net::list_links(&names.veth_prefix()).await {
        Ok(found) => {
            for name in found {
                if let Err(e) = starphleet_runtime::net::delete_link(&name).await {
                    report.problems.push(format!("veth {name}: {e}"));
                }
            }
        }
        Err(e) => report.problems.push(format!("listing veths: {e}")),
    }
    if let Err(e) = starphleet_runtime::net::delete_link(&names.net().bridge).await {
        report.problems.push(format!("bridge: {e}"));
    }
    let id = names.ship_id().to_string();
    match tokio::task::spawn_blocking(move || starphleet_runtime::net::remove_outbound(&id)).await {
        // Without nft there was never a table to remove.
        Ok(Ok(()) | Err(starphleet_runtime::NetError::NotInstalled { .. })) => {}
        Ok(Err(e)) => report.problems.push(format!("outbound NAT: {e}")),
        Err(e) => report
            .problems
            .push(format!("outbound NAT: the thread failed: {e}")),
    }
    let runtime_dir = Layout::runtime_root(names.ship_id());
    let run_dir = runtime_dir.parent().unwrap_or(&runtime_dir).to_path_buf();
    for dir in [layout.root(), run_dir.as_path()] {
        match starphleet_runtime::unmount_under(dir) {
            Ok(n) => report.mounts += n,
            Err(e) => report
                .problems
                .push(format!("unmounting under {}: {e}", dir.display())),
        }
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    if let Err(e) = starphleet_runtime::cgroups::remove_tree(&names.cgroup_parent()) {
        report.problems.push(format!("cgroups: {e}"));
    }

    // Keep what ran and its history, but nothing runs any more.
    if let Ok(mut state) = ShipState::load(&layout.state_file()) {
        for svc in state.services.values_mut() {
            svc.current = None;
            svc.switching = None;
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
