//! Runs one git command with a deadline, in a process group of its own.
//!
//! git talks to remotes through helpers (`ssh`, `git-remote-https`), so killing git alone
//! would leave a hung helper behind: the whole group goes on timeout.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};

/// How long git's pipes may stay open after git itself exited (held by a helper it left
/// behind) before that helper's group is killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What a git run that finished in time left.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Spawns `cmd` with piped stdout/stderr as the leader of a new process group.
pub(crate) fn spawn(cmd: &mut Command) -> io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
}

/// Collects the child's output as it comes (a full pipe never stalls it) and waits for it
/// until `timeout`. Past that its whole process group is SIGKILLed and reaped: `Ok(None)`.
pub(crate) fn collect(mut child: Child, timeout: Duration) -> io::Result<Option<Finished>> {
    // A timeout too large to represent means "practically never".
    let deadline = Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
    let group = Pid::from_child(&child);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let pumped = pump(&mut child, deadline, &mut stdout, &mut stderr);
    // The leader is not reaped yet, so the group id cannot have been reused by anyone else.
    let finished = matches!(pumped, Ok(Pumped::Done));
    if !finished {
        let _ = kill_process_group(group, Signal::KILL);
    }
    let status = child.wait()?;
    match pumped? {
        Pumped::TimedOut => Ok(None),
        Pumped::Done | Pumped::Lingering => Ok(Some(Finished {
            status,
            stdout,
            stderr,
        })),
    }
}

enum Pumped {
    /// Exited and both pipes reached EOF.
    Done,
    /// Exited, but something it started still holds a pipe open.
    Lingering,
    /// Still running at the deadline.
    TimedOut,
}

fn pump(
    child: &mut Child,
    deadline: Instant,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> io::Result<Pumped> {
    let pidfd = pidfd_open(Pid::from_child(child), PidfdFlags::empty())?;
    let mut pipes: [Option<File>; 2] = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut exited = false;
    let mut deadline = deadline;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exited && pipes.iter().all(Option::is_none) {
            return Ok(Pumped::Done);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(if exited {
                Pumped::Lingering
            } else {
                Pumped::TimedOut
            });
        }
        let (ready, pid_ready) = {
            let mut fds: Vec<PollFd<'_>> = pipes
                .iter()
                .flatten()
                .map(|f| PollFd::new(f, PollFlags::IN))
                .collect();
            if !exited {
                fds.push(PollFd::new(&pidfd, PollFlags::IN));
            }
            let timeout = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            let pid_ready = !exited && ready.last().copied().unwrap_or(false);
            (ready, pid_ready)
        };
        let mut i = 0;
        for (pipe, sink) in pipes.iter_mut().zip([&mut *stdout, &mut *stderr]) {
            let Some(file) = pipe else { continue };
            if ready[i] {
                match file.read(&mut buf) {
                    Ok(0) => *pipe = None,
                    Ok(n) => sink.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            i += 1;
        }
        if pid_ready {
            exited = true;
            deadline = deadline.min(Instant::now() + DRAIN_GRACE);
        }
    }
}
