//! Where everything lives in the state dir.

use std::path::{Path, PathBuf};

/// The ship's state dir (`--state-dir`, default `/var/lib/starphleet`) and the paths inside it.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/starphleet";

impl Layout {
    /// The layout of the state dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The HQ working checkout.
    pub fn hq(&self) -> PathBuf {
        self.root.join("hq")
    }
    /// The file holding the HQ URL (`starphleet headquarters URL`).
    pub fn headquarters_file(&self) -> PathBuf {
        self.root.join("headquarters")
    }
    /// Bare mirrors of app repositories.
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    /// The build layer cache.
    pub fn builds(&self) -> PathBuf {
        self.root.join("builds")
    }
    /// Container bundles (config.json, overlay dirs).
    pub fn bundles(&self) -> PathBuf {
        self.root.join("containers")
    }
    /// All logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The log store: every record the ship keeps, per service, rotated and capped.
    pub fn log_store(&self) -> PathBuf {
        self.root.join("logstore")
    }
    /// The proxy's access logs, one file per container.
    pub fn access_logs(&self) -> PathBuf {
        self.logs().join("access")
    }
    /// Logs of one service (its container output and build log).
    pub fn service_logs(&self, service: &str) -> PathBuf {
        self.logs().join(crate::names::safe_name(service))
    }
    /// The ship's own env folder: every file holds `KEY=VALUE` lines for every service.
    pub fn env_dir(&self) -> PathBuf {
        self.root.join("env")
    }
    /// Where the ssh deploy key lives.
    pub fn ssh_dir(&self) -> PathBuf {
        self.root.join("ssh")
    }
    /// Persisted ship state.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// The random id that makes this ship's names unique on the machine.
    pub fn ship_id_file(&self) -> PathBuf {
        self.root.join("ship-id")
    }
    /// The proxy's control socket.
    pub fn proxy_socket(&self) -> PathBuf {
        self.root.join("proxy.sock")
    }
    /// The admin endpoint's local socket, used by the CLI.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
    /// The phleet token guarding the admin endpoint beyond loopback.
    pub fn phleet_token(&self) -> PathBuf {
        self.root.join("phleet.token")
    }

    /// The secret signing the forges' push events (`POST /hooks/git`).
    pub fn webhook_secret(&self) -> PathBuf {
        self.root.join("webhook.secret")
    }
    /// Pid of the running `starphleet ship`.
    pub fn ship_pid_file(&self) -> PathBuf {
        self.root.join("ship.pid")
    }
    /// Pid of the running proxy.
    pub fn proxy_pid_file(&self) -> PathBuf {
        self.root.join("proxy.pid")
    }
    /// The OCI runtime's `--root` for this ship: on tmpfs, because container state dies with a reboot.
    pub fn runtime_root(ship_id: &str) -> PathBuf {
        PathBuf::from("/run/starphleet")
            .join(ship_id)
            .join("runtime")
    }
}

/// Reads a pid file and returns the pid when that process is alive.
pub fn live_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    process_alive(pid).then_some(pid)
}

/// True when `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}
