//! The OCI runtime CLI driver: `runc` (default), `crun` or `youki`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;
use crate::exec::{self, Pumped};
use crate::mounts::unmount_under;
use crate::spec::ContainerSpec;

type Result<T> = std::result::Result<T, RuntimeError>;

/// Where a foreground run's output goes instead of the spec's files.
type OutputSink<'a> = &'a mut dyn FnMut(&[u8]);

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

/// How long stop() waits for a SIGKILLed init to be gone before deleting anyway, and how
/// long a timed-out `runc run` may take to exit after its container was killed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The most any runtime command other than a foreground `run` may take (state, list, kill,
/// delete, `run --detach`). They take milliseconds; one that hangs must not hang the ship.
pub const RUNTIME_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

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
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--version");
        let out = self.output(&mut cmd, "--version")?;
        if !out.status.success() {
            return Err(self.failed("--version", out.status, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// Prepares the root filesystem and bundle, then starts the container detached. Returns its init pid.
    pub fn start(&self, spec: &ContainerSpec) -> Result<u32> {
        self.check_unused(spec)?;
        let result = self.start_inner(spec);
        if result.is_err() {
            self.discard(spec);
        }
        result
    }

    fn start_inner(&self, spec: &ContainerSpec) -> Result<u32> {
        spec.prepare_bundle()?;
        let pid_file = spec.bundle_dir.join("init.pid");
        let mut cmd = self.command_for(spec)?;
        cmd.arg("run")
            .arg("--detach")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--bundle")
            .arg(&spec.bundle_dir)
            .arg(&spec.id);
        let what = format!("run --detach {}", spec.id);
        let status = match exec::status(&mut cmd, RUNTIME_COMMAND_TIMEOUT) {
            Ok(Some(status)) => status,
            Ok(None) => {
                return Err(RuntimeError::CommandTimedOut {
                    command: self.describe(&what),
                    after: RUNTIME_COMMAND_TIMEOUT,
                })
            }
            Err(e) => return Err(self.spawn_error(e)),
        };
        if !status.success() {
            return Err(RuntimeError::Failed {
                command: self.describe(&what),
                status: status.to_string(),
                output: runtime_log(spec),
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| RuntimeError::io(format!("reading {}", pid_file.display()), e))?;
        pid.trim().parse().map_err(|_| {
            RuntimeError::io(
                format!("reading {}", pid_file.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad pid {pid:?}")),
            )
        })
    }

    /// Runs a container to completion in the foreground (for builds); returns the exit code.
    ///
    /// Its stdout and stderr are appended to the spec's files. Past `timeout` (counted from
    /// the call) the container is killed and [`RuntimeError::TimedOut`] returned. The bundle
    /// is removed afterwards either way. A process killed by signal N reports 128+N.
    pub fn run_to_completion(&self, spec: &ContainerSpec, timeout: Duration) -> Result<i32> {
        self.run_checked(spec, timeout, None)
    }

    /// [`run_to_completion`](Self::run_to_completion), but the container's stdout and stderr
    /// both go to `output`, as they arrive, instead of the spec's files (which are not used).
    /// For callers that filter or cap the output. A foreground runc relays each stream on its
    /// own, so what one stream wrote just before the other may arrive just after it.
    pub fn run_to_completion_with_output(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<i32> {
        self.run_checked(spec, timeout, Some(output))
    }

    fn run_checked(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
        output: Option<OutputSink<'_>>,
    ) -> Result<i32> {
        let deadline = exec::deadline(timeout);
        self.check_unused(spec)?;
        let result = self.run_inner(spec, (deadline, timeout), output);
        self.discard(spec);
        result
    }

    fn run_inner(
        &self,
        spec: &ContainerSpec,
        (deadline, timeout): (Instant, Duration),
        output: Option<OutputSink<'_>>,
    ) -> Result<i32> {
        spec.prepare_bundle()?;
        let what = format!("run {}", spec.id);
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(spec.bundle_dir.join("runtime.log"))
            .arg("run")
            .arg("--bundle")
            .arg(&spec.bundle_dir)
            .arg(&spec.id);
        let mut pipes = Vec::new();
        let mut ignore = |_: &[u8]| {};
        let sink: &mut dyn FnMut(&[u8]) = match output {
            Some(sink) => {
                let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| RuntimeError::io("creating the output pipe", e))?;
                let writer2 = writer
                    .try_clone()
                    .map_err(|e| RuntimeError::io("creating the output pipe", e))?;
                cmd.stdout(writer).stderr(writer2);
                pipes.push(Some(File::from(reader)));
                sink
            }
            None => {
                cmd.stdout(open_log(&spec.stdout)?)
                    .stderr(open_log(&spec.stderr)?);
                &mut ignore
            }
        };
        let mut child = exec::spawn(&mut cmd).map_err(|e| self.spawn_error(e))?;
        // The Command holds copies of the pipe's write end: EOF comes only once they are closed.
        drop(cmd);
        let pumped = exec::pump(&child, &mut pipes, deadline, &mut |_, chunk| sink(chunk));
        if !matches!(pumped, Ok(Pumped::Done | Pumped::Lingering)) {
            // Out of time (or unable to watch): kill the container; `runc run` then exits.
            let _ = self.kill(&spec.id, "KILL");
            let gone = exec::pump(
                &child,
                &mut pipes,
                Instant::now() + KILL_WAIT,
                &mut |_, chunk| sink(chunk),
            );
            if !matches!(gone, Ok(Pumped::Done | Pumped::Lingering)) {
                exec::kill_group(&child);
            }
            let _ = child.wait();
            return Err(match pumped {
                Err(e) => RuntimeError::io(format!("waiting for `{}`", self.describe(&what)), e),
                Ok(_) => RuntimeError::TimedOut {
                    id: spec.id.clone(),
                    after: timeout,
                },
            });
        }
        let status = child
            .wait()
            .map_err(|e| RuntimeError::io(format!("waiting for `{}`", self.describe(&what)), e))?;
        let Some(code) = status.code() else {
            return Err(RuntimeError::Killed {
                command: self.describe(&what),
                status: status.to_string(),
            });
        };
        // runc exits 1 both for its own failures and for an app exiting 1; its log tells them apart.
        let log = runtime_log(spec);
        if code != 0 && log.contains("level=error") {
            return Err(RuntimeError::Failed {
                command: self.describe(&what),
                status: status.to_string(),
                output: log,
            });
        }
        Ok(code)
    }

    /// Refuses a spec whose id or bundle belongs to another container, before anything is
    /// created, so the clean-up after a failure can never touch that other container.
    fn check_unused(&self, spec: &ContainerSpec) -> Result<()> {
        spec.validate()?;
        // runc, crun and youki all keep a container's state in `<root>/<id>`.
        if self.root.join(&spec.id).exists() {
            return Err(RuntimeError::Exists {
                id: spec.id.clone(),
            });
        }
        if spec.rootfs().exists() {
            return Err(RuntimeError::BundleInUse {
                dir: spec.bundle_dir.clone(),
            });
        }
        Ok(())
    }

    /// The runtime command for `run --detach`: logs to the bundle, stdio on the container's log files.
    fn command_for(&self, spec: &ContainerSpec) -> Result<Command> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(spec.bundle_dir.join("runtime.log"))
            .stdout(open_log(&spec.stdout)?)
            .stderr(open_log(&spec.stderr)?);
        Ok(cmd)
    }

    /// Best-effort removal of everything a failed start or a finished run left behind.
    fn discard(&self, spec: &ContainerSpec) {
        let _ = self.output(
            self.command().args(["delete", "--force", &spec.id]),
            "delete --force",
        );
        if let Err(e) = remove_bundle(&spec.bundle_dir) {
            tracing::warn!(container = %spec.id, "cleaning up bundle: {e}");
        }
    }

    /// The container's state, or `None` when the runtime does not know it.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        let what = format!("state {id}");
        let out = self.output(self.command().args(["state", id]), &what)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("does not exist") || err.contains("not exist") {
                return Ok(None);
            }
            return Err(self.failed(&what, out.status, &out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|cause| RuntimeError::Parse {
                command: self.describe(&what),
                cause,
            })
    }

    /// Every container under this runtime root.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let what = "list --format json";
        let out = self.output(self.command().args(["list", "--format", "json"]), what)?;
        if !out.status.success() {
            return Err(self.failed(what, out.status, &out.stderr));
        }
        // runc prints `null` when there are none.
        let list: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out.stdout).map_err(|cause| RuntimeError::Parse {
                command: self.describe(what),
                cause,
            })?;
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
                let pidfd = exec::open_pidfd(state.pid).ok();
                self.kill(id, "TERM")?;
                let exited = pidfd.as_ref().is_some_and(|fd| exec::wait_exit(fd, grace));
                if !exited {
                    self.kill(id, "KILL")?;
                    if let Some(fd) = &pidfd {
                        exec::wait_exit(fd, KILL_WAIT);
                    }
                }
            }
            let what = format!("delete --force {id}");
            let out = self.output(self.command().args(["delete", "--force", id]), &what)?;
            if !out.status.success() && self.state(id)?.is_some() {
                return Err(self.failed(&what, out.status, &out.stderr));
            }
        }
        remove_bundle(bundle_dir)
    }

    /// Sends a signal through the runtime, tolerating a container that has just exited.
    fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let what = format!("kill {id} {signal}");
        let out = self.output(self.command().args(["kill", id, signal]), &what)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || err.contains("not running") || err.contains("does not exist") {
            return Ok(());
        }
        Err(self.failed(&what, out.status, &out.stderr))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// `<binary> <args>`, as errors show it.
    fn describe(&self, args: &str) -> String {
        format!("{} {args}", self.binary)
    }

    /// Runs a short runtime command under [`RUNTIME_COMMAND_TIMEOUT`]; `what` names its arguments.
    fn output(&self, cmd: &mut Command, what: &str) -> Result<Output> {
        match exec::output(cmd, RUNTIME_COMMAND_TIMEOUT) {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(RuntimeError::CommandTimedOut {
                command: self.describe(what),
                after: RUNTIME_COMMAND_TIMEOUT,
            }),
            Err(e) => Err(self.spawn_error(e)),
        }
    }

    fn failed(&self, what: &str, status: ExitStatus, stderr: &[u8]) -> RuntimeError {
        RuntimeError::Failed {
            command: self.describe(what),
            status: status.to_string(),
            output: String::from_utf8_lossy(stderr).trim().to_string(),
        }
    }

    fn spawn_error(&self, e: std::io::Error) -> RuntimeError {
        if e.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::NotInstalled {
                binary: self.binary.clone(),
            }
        } else {
            RuntimeError::Spawn {
                binary: self.binary.clone(),
                cause: e,
            }
        }
    }
}

/// Opens (creating it and its directory) a container log file for appending.
fn open_log(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| RuntimeError::io(format!("opening log file {}", path.display()), e))
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
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io(
            format!("removing bundle {}", bundle_dir.display()),
            e,
        )),
        _ => Ok(()),
    }
}
