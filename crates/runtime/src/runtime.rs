//! The OCI runtime CLI driver: `runc` (default), `crun` or `youki`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::mounts::unmount_under;
use crate::spec::ContainerSpec;

/// Drives an OCI runtime CLI (runc by default; crun/youki accepted).
#[derive(Clone, Debug)]
pub struct Runtime {
    binary: String,
    root: PathBuf,
}

/// A container as the runtime reports it (`runc state`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ContainerState {
    /// The container id.
    pub id: String,
    /// Host pid of its init process (0 once stopped).
    pub pid: u32,
    /// `created`, `running`, `stopped` or `paused`.
    pub status: String,
    /// Its bundle directory.
    pub bundle: PathBuf,
}

/// How long stop() waits for a SIGKILLed init to be gone before deleting anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl Runtime {
    /// `root` is the runtime's `--root` state dir, one per ship (e.g. `/run/starphleet-<ship>/runc`).
    pub fn new(binary: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Runtime {
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// Runs `<binary> --version` and returns its first line.
    pub fn check(&self) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            bail!(
                "`{} --version` failed ({}): {}",
                self.binary,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// Prepares the root filesystem and bundle, then starts the container detached. Returns its init pid.
    pub fn start(&self, spec: &ContainerSpec) -> Result<u32> {
        self.check_unused(spec)
            .with_context(|| format!("starting container {}", spec.id))?;
        let result = self.start_inner(spec);
        if result.is_err() {
            self.discard(spec);
        }
        result.with_context(|| format!("starting container {}", spec.id))
    }

    fn start_inner(&self, spec: &ContainerSpec) -> Result<u32> {
        spec.prepare_bundle()?;
        let pid_file = spec.bundle_dir.join("init.pid");
        let status = self
            .command_for(spec)?
            .arg("run")
            .arg("--detach")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--bundle")
            .arg(&spec.bundle_dir)
            .arg(&spec.id)
            .status()
            .map_err(|e| self.spawn_error(e))?;
        if !status.success() {
            bail!(
                "`{} run` failed ({status}): {}",
                self.binary,
                runtime_log(spec)
            );
        }
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        pid.trim()
            .parse()
            .with_context(|| format!("bad pid {pid:?} in {}", pid_file.display()))
    }

    /// Runs a container to completion in the foreground (for builds); returns the exit code.
    ///
    /// The bundle is removed afterwards either way. A process killed by signal N reports 128+N.
    pub fn run_to_completion(&self, spec: &ContainerSpec) -> Result<i32> {
        self.check_unused(spec)
            .with_context(|| format!("running container {}", spec.id))?;
        let result = self.run_inner(spec);
        self.discard(spec);
        result.with_context(|| format!("running container {}", spec.id))
    }

    fn run_inner(&self, spec: &ContainerSpec) -> Result<i32> {
        spec.prepare_bundle()?;
        let status = self
            .command_for(spec)?
            .arg("run")
            .arg("--bundle")
            .arg(&spec.bundle_dir)
            .arg(&spec.id)
            .status()
            .map_err(|e| self.spawn_error(e))?;
        let Some(code) = status.code() else {
            bail!("`{} run` was killed ({status})", self.binary);
        };
        // runc exits 1 both for its own failures and for an app exiting 1; its log tells them apart.
        let log = runtime_log(spec);
        if code != 0 && log.contains("level=error") {
            bail!("`{} run` failed ({status}): {log}", self.binary);
        }
        Ok(code)
    }

    /// Refuses a spec whose id or bundle belongs to another container, before anything is
    /// created, so the clean-up after a failure can never touch that other container.
    fn check_unused(&self, spec: &ContainerSpec) -> Result<()> {
        spec.validate()?;
        // runc, crun and youki all keep a container's state in `<root>/<id>`.
        if self.root.join(&spec.id).exists() {
            bail!("a container with id {} already exists", spec.id);
        }
        if spec.rootfs().exists() {
            bail!(
                "bundle dir {} is already in use; stop the container that owns it first",
                spec.bundle_dir.display()
            );
        }
        Ok(())
    }

    /// The runtime command for run: logs to the bundle, stdio on the container's log files.
    fn command_for(&self, spec: &ContainerSpec) -> Result<Command> {
        let open = |path: &Path| -> Result<File> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))
        };
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(spec.bundle_dir.join("runtime.log"))
            .stdin(Stdio::null())
            .stdout(open(&spec.stdout)?)
            .stderr(open(&spec.stderr)?);
        Ok(cmd)
    }

    /// Best-effort removal of everything a failed start or a finished run left behind.
    fn discard(&self, spec: &ContainerSpec) {
        let _ = self
            .command()
            .args(["delete", "--force", &spec.id])
            .output();
        if let Err(e) = remove_bundle(&spec.bundle_dir) {
            tracing::warn!(container = %spec.id, "cleaning up bundle: {e:#}");
        }
    }

    /// The container's state, or `None` when the runtime does not know it.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        let out = self.output(self.command().args(["state", id]))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("does not exist") || err.contains("not exist") {
                return Ok(None);
            }
            bail!("`{} state {id}` failed: {}", self.binary, err.trim());
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .with_context(|| format!("parsing `{} state {id}` output", self.binary))
    }

    /// Every container under this runtime root.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let out = self.output(self.command().args(["list", "--format", "json"]))?;
        if !out.status.success() {
            bail!(
                "`{} list` failed: {}",
                self.binary,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // runc prints `null` when there are none.
        let list: Option<Vec<ContainerState>> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `{} list` output", self.binary))?;
        Ok(list.unwrap_or_default())
    }

    /// SIGTERM, wait up to `grace`, SIGKILL, `delete`, unmount its rootfs, remove its bundle dir (NOT the log files).
    ///
    /// A container that is already gone is fine: the bundle is still cleaned up. Note that an
    /// init process (pid 1 of its namespace) without a SIGTERM handler ignores SIGTERM, so such
    /// an app always takes the whole `grace`.
    pub fn stop(&self, id: &str, bundle_dir: &Path, grace: Duration) -> Result<()> {
        if let Some(state) = self.state(id)? {
            if state.status == "running" && state.pid != 0 {
                // A pidfd names this very process, so waiting cannot be fooled by pid reuse.
                let pidfd = pidfd_open(state.pid).ok();
                self.kill(id, "TERM")?;
                let exited = pidfd.as_ref().is_some_and(|fd| wait_readable(fd, grace));
                if !exited {
                    self.kill(id, "KILL")?;
                    if let Some(fd) = &pidfd {
                        wait_readable(fd, KILL_WAIT);
                    }
                }
            }
            let out = self.output(self.command().args(["delete", "--force", id]))?;
            if !out.status.success() && self.state(id)?.is_some() {
                bail!(
                    "`{} delete {id}` failed: {}",
                    self.binary,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        remove_bundle(bundle_dir)
    }

    /// Sends a signal through the runtime, tolerating a container that has just exited.
    fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let out = self.output(self.command().args(["kill", id, signal]))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || err.contains("not running") || err.contains("does not exist") {
            return Ok(());
        }
        bail!(
            "`{} kill {id} {signal}` failed: {}",
            self.binary,
            err.trim()
        )
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    fn output(&self, cmd: &mut Command) -> Result<Output> {
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "OCI runtime `{}` not found: install it with apt-get install runc",
                self.binary
            )
        } else {
            anyhow!("running `{}`: {e}", self.binary)
        }
    }
}

/// The runtime's own log for this container (errors explaining a failed run), trimmed.
fn runtime_log(spec: &ContainerSpec) -> String {
    let log = std::fs::read_to_string(spec.bundle_dir.join("runtime.log")).unwrap_or_default();
    let log = log.trim();
    if log.is_empty() {
        return format!("(no output; see {})", spec.stderr.display());
    }
    // The last lines carry the error; earlier ones are warnings and noise.
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(0);
    log[start..].to_string()
}

/// Unmounts the overlay root (and anything else under the bundle) and removes the bundle.
fn remove_bundle(bundle_dir: &Path) -> Result<()> {
    unmount_under(bundle_dir)?;
    match std::fs::remove_dir_all(bundle_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing bundle {}", bundle_dir.display()))
        }
        _ => Ok(()),
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until a pidfd is readable (its process exited) or `timeout` passes.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, owned by this frame.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        let interrupted =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}
