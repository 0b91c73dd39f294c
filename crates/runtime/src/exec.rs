//! Bounded waits on child processes and on container init processes (pidfd + poll).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};

/// How long a child's pipes may stay open after it exited (held by something it started)
/// before the rest of its output is given up.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// `timeout` from now; a timeout too large to represent means "practically never".
pub(crate) fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Spawns `cmd` with no stdin as the leader of a new process group, so that on a timeout
/// everything it started can be killed with it.
pub(crate) fn spawn(cmd: &mut Command) -> io::Result<Child> {
    cmd.stdin(Stdio::null()).process_group(0).spawn()
}

/// Runs `cmd` collecting stdout and stderr; `Ok(None)` when it ran past `timeout`, in which
/// case its process group was SIGKILLed and it was reaped.
pub(crate) fn output(cmd: &mut Command, timeout: Duration) -> io::Result<Option<Output>> {
    let mut child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let mut pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let pumped = pump(&child, &mut pipes, deadline(timeout), &mut |i, chunk| {
        if i == 0 { &mut stdout } else { &mut stderr }.extend_from_slice(chunk)
    });
    if !matches!(pumped, Ok(Pumped::Done)) {
        kill_group(&child);
    }
    let status = child.wait()?;
    match pumped? {
        Pumped::TimedOut => Ok(None),
        Pumped::Done | Pumped::Lingering => Ok(Some(Output {
            status,
            stdout,
            stderr,
        })),
    }
}

/// Runs `cmd` with the stdout/stderr it was given; `Ok(None)` when it ran past `timeout`,
/// in which case its process group was SIGKILLed and it was reaped.
pub(crate) fn status(cmd: &mut Command, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let mut child = spawn(cmd)?;
    let pumped = pump(&child, &mut [], deadline(timeout), &mut |_, _| {});
    if !matches!(pumped, Ok(Pumped::Done)) {
        kill_group(&child);
    }
    let status = child.wait()?;
    match pumped? {
        Pumped::TimedOut => Ok(None),
        Pumped::Done | Pumped::Lingering => Ok(Some(status)),
    }
}

/// SIGKILLs the process group that `child` leads. Call it before reaping the child: until
/// then its group id cannot have been reused.
pub(crate) fn kill_group(child: &Child) {
    let _ = kill_process_group(Pid::from_child(child), Signal::KILL);
}

/// How [`pump`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// The child exited and every pipe reached EOF.
    Done,
    /// The child exited, but something it started still holds a pipe open.
    Lingering,
    /// The child was still running at the deadline.
    TimedOut,
}

/// Feeds whatever arrives on `pipes` to `sink` (with the pipe's index) until `child` has
/// exited and every pipe reached EOF, or until `deadline`. Never reaps the child.
///
/// Pipes that reach EOF are set to `None`, so a second call carries on where this one stopped.
pub(crate) fn pump(
    child: &Child,
    pipes: &mut [Option<File>],
    deadline: Instant,
    sink: &mut dyn FnMut(usize, &[u8]),
) -> io::Result<Pumped> {
    let pidfd = pidfd_open(Pid::from_child(child), PidfdFlags::empty())?;
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
        let mut fds: Vec<PollFd<'_>> = pipes
            .iter()
            .flatten()
            .map(|f| PollFd::new(f, PollFlags::IN))
            .collect();
        if !exited {
            fds.push(PollFd::new(&pidfd, PollFlags::IN));
        }
        if !poll_for(&mut fds, left)? {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut at = 0;
        for (i, slot) in pipes.iter_mut().enumerate() {
            let Some(file) = slot else { continue };
            if ready[at] {
                match file.read(&mut buf) {
                    Ok(0) => *slot = None,
                    Ok(n) => sink(i, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            at += 1;
        }
        if !exited && ready[at] {
            exited = true;
            deadline = deadline.min(Instant::now() + DRAIN_GRACE);
        }
    }
}

/// A pidfd naming the process `pid` (not necessarily a child), so waiting on it cannot be
/// fooled by pid reuse. `Err` when it is already gone.
pub(crate) fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Waits until the process behind `pidfd` exited; false when `timeout` passed first.
pub(crate) fn wait_exit(pidfd: &impl AsFd, timeout: Duration) -> bool {
    let until = deadline(timeout);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll_for(&mut fds, left) {
            Ok(true) if !fds[0].revents().is_empty() => return true,
            Ok(_) if !left.is_zero() => {}
            _ => return false,
        }
    }
}

/// One poll(2) of at most `left`; `Ok(false)` when interrupted by a signal.
fn poll_for(fds: &mut [PollFd<'_>], left: Duration) -> io::Result<bool> {
    let timeout = Timespec::try_from(left).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(fds, Some(&timeout)) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
