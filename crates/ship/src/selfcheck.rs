//! The start-up self-check: everything a ship needs from the machine, checked before it
//! starts, each problem on one line with its fix.

use std::path::Path;

use starphleet_runtime::Runtime;

/// Checks the machine; returns one line per problem (empty when all is well).
pub(crate) fn run(state_dir: &Path, runtime: &Runtime) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = runtime.check() {
        problems.push(e.to_string());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    problems.extend(cgroups_problem(&mountinfo));
    problems.extend(state_dir_problem(state_dir));
    problems
}

/// Whether a cgroup filesystem is mounted where runc looks for it.
pub(crate) fn cgroups_problem(mountinfo: &str) -> Option<String> {
    let mounted = mountinfo.lines().any(|l| {
        // The filesystem type follows the " - " separator.
        l.split_once(" - ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|fs| fs == "cgroup" || fs == "cgroup2")
    });
    (!mounted).then(|| {
        "no cgroup filesystem is visible under /sys/fs/cgroup, so no container can start; \
         this happens under `ip netns exec` (it remounts /sys): start the ship with \
         `nsenter --net=/var/run/netns/NAME -- starphleet ship …` instead"
            .to_string()
    })
}

/// Whether the state dir can be written.
fn state_dir_problem(dir: &Path) -> Option<String> {
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!(
            "the state dir {} is not writable ({e}); give the ship a writable --state-dir",
            dir.display()
        )),
    }
}

/// Raises this process's open-file limit to its hard limit: a ship holds a few files per
/// container and per connection. Returns the limit now in force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Below this much free space the state dir's disk counts as full.
pub(crate) const DISK_LOW: u64 = 1 << 20;

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own from a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Whether the filesystem holding `dir` is (nearly) full.
pub(crate) fn disk_nearly_full(dir: &Path) -> bool {
    free_bytes(dir).is_some_and(|f| f < DISK_LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_a_cgroup_mount_is_named_with_the_fix() {
        let with = "30 23 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
        assert_eq!(cgroups_problem(with), None);
        let v2 = "31 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroups_problem(v2), None);
        let without = "22 1 0:21 / /sys rw - sysfs sysfs rw\n";
        assert!(cgroups_problem(without).unwrap().contains("nsenter --net="));
    }

    #[test]
    fn an_unwritable_state_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state_dir_problem(dir.path()), None);
        let missing = dir.path().join("nope/deeper");
        assert!(state_dir_problem(&missing)
            .unwrap()
            .contains("is not writable"));
    }
}
