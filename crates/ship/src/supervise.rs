//! The supervisor: notices the moment a container's init process exits (a pidfd per container,
//! so nothing polls) and tells the owner, with the last lines the container printed.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::layout::process_alive;
use crate::owner::{Event, OwnerTx, View};
use crate::state::ContainerRecord;

/// How often a process is checked where pidfds are not available.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(200);

/// Watches every started container of the state until `stop`.
pub(crate) async fn run(
    owner: OwnerTx,
    names: crate::names::Names,
    mut view: watch::Receiver<View>,
    stop: CancellationToken,
) {
    let mut watching: HashMap<String, (u32, AbortHandle)> = HashMap::new();
    loop {
        let wanted: HashMap<String, ContainerRecord> = {
            let v = view.borrow_and_update();
            v.snapshot
                .state
                .services
                .values()
                .flat_map(|s| {
                    s.current
                        .iter()
                        .chain(s.switching.iter())
                        .flat_map(|v| v.containers.iter())
                })
                .filter(|c| c.pid != 0)
                .map(|c| (c.id.clone(), c.clone()))
                .collect()
        };
        watching.retain(|id, (pid, task)| {
            let keep = wanted.get(id).is_some_and(|c| c.pid == *pid);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, c) in wanted {
            if watching.contains_key(&id) {
                continue;
            }
            let owner = owner.clone();
            let pid = c.pid;
            let cgroup = names.cgroup(&c.id);
            let task = tokio::spawn(async move {
                exited(pid).await;
                let tail = tokio::task::spawn_blocking(move || {
                    // Its cgroup outlives its processes until the container is deleted.
                    let mut tail = crate::deploy::tail_output(&c);
                    if let Some(n) = starphleet_runtime::cgroups::oom_kills_at(&cgroup)
                        .filter(|&n| n > 0)
                    {
                        tail = format!(
                            "the kernel killed it for running out of memory ({n} OOM kill{}; raise `memory` in its order or Starphleet)\n{tail}",
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    (c.id, tail)
                })
                .await;
                if let Ok((container, tail)) = tail {
                    owner.send(Event::Exited { container, tail });
                }
            });
            watching.insert(id, (pid, task.abort_handle()));
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    for (_, (_, task)) in watching {
        task.abort();
    }
}

/// Returns once process `pid` has exited (a zombie counts as exited).
async fn exited(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd >= 0 {
        // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the pidfd is owned by the AsyncFd and stays open for as long as it is registered.
        if let Ok(fd) = unsafe { AsyncFd::register(fd) } {
            // A pidfd becomes readable when the process terminates.
            let _ = fd.readable().await;
            return;
        }
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return;
    }
    while process_alive(pid) {
        tokio::time::sleep(POLL_WITHOUT_PIDFD).await;
    }
}
