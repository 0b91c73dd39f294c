//! Resource usage of a container, read from its cgroups (v1, v2 and hybrid layouts).
//!
//! Where a container's cgroup lives is read from `/proc/<pid>/cgroup`, never assumed: on
//! v1 each controller may put it somewhere else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mounts::{mountinfo, MountInfo};

/// A cgroup could not be read or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The process's cgroup membership could not be read.
    #[error("reading /proc/{pid}/cgroup (is the process gone?): {cause}")]
    Membership {
        /// The process.
        pid: u32,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The mount table could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountTable(std::io::Error),
    /// The process is in no cgroup that has this controller.
    #[error("pid {pid}: no {controller} cgroup found; is the {controller} controller mounted?")]
    NoController {
        /// The process.
        pid: u32,
        /// The controller, e.g. `memory`.
        controller: &'static str,
    },
    /// A cgroup file could not be read.
    #[error("reading {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A cgroup file did not hold the number it should.
    #[error("parsing {} ({text:?}): not a number", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held, trimmed.
        text: String,
    },
    /// The path names the root (or climbs out of it): removing it is never intended.
    #[error("refusing to remove cgroup {0:?}: give a path below the root, without `..`")]
    Refused(String),
    /// A cgroup directory could not be removed (`EBUSY`: processes still run in it).
    #[error("removing cgroup {}: {cause}", path.display())]
    Remove {
        /// The cgroup directory.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// A v1 limit at or above this is the kernel's "unlimited" (`PAGE_COUNTER_MAX` pages).
const V1_UNLIMITED: u64 = 1 << 62;

/// A snapshot of one container's cgroup counters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time consumed, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Working set: memory in use minus inactive file cache (what the OOM killer looks at).
    pub memory_bytes: u64,
    /// Highest memory usage seen, when the kernel tracks it.
    pub memory_peak_bytes: Option<u64>,
    /// Number of processes and threads.
    pub pids: u64,
    /// The memory limit, `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in this cgroup, when the kernel reports it
    /// (v2 `memory.events`, v1 `memory.oom_control`, Linux 4.13+).
    pub oom_kills: Option<u64>,
}

/// Where one process's cgroups are: per v1 controller, and its v2 group.
struct Membership {
    v1: Vec<(Vec<String>, PathBuf)>,
    v2: Option<PathBuf>,
}

impl Membership {
    fn of(pid: u32) -> Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|cause| CgroupError::Membership { pid, cause })?;
        Ok(Self::parse(&text, &cgroup_mount_table()?))
    }

    /// Resolves /proc/<pid>/cgroup lines against the cgroup mounts of the mount table.
    fn parse(text: &str, mounts: &[MountInfo]) -> Self {
        let mounts: Vec<&MountInfo> = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .collect();
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in text.lines() {
            // "4:memory:/a/b", "10:cpu,cpuacct:/x", "1:name=systemd:/y" or "0::/z" (v2)
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                v2 = mounts
                    .iter()
                    .find(|m| m.fstype == "cgroup2")
                    .map(|m| join(m, path));
                continue;
            }
            let names: Vec<String> = controllers.split(',').map(String::from).collect();
            let mount = mounts.iter().find(|m| {
                m.fstype == "cgroup"
                    && names
                        .iter()
                        .all(|n| m.super_options.split(',').any(|o| o == n))
            });
            if let Some(mount) = mount {
                v1.push((names, join(mount, path)));
            }
        }
        Membership { v1, v2 }
    }

    /// The v1 hierarchy dir holding `controller`, if it is mounted as v1.
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(names, _)| names.iter().any(|n| n == controller))
            .map(|(_, p)| p.as_path())
    }

    /// The v1 dir of `controller`, else the v2 dir (pure v2, or hybrid without that v1
    /// controller); the flag says which.
    fn dir(&self, pid: u32, controller: &'static str) -> Result<(&Path, bool)> {
        match (self.v1_dir(controller), &self.v2) {
            (Some(dir), _) => Ok((dir, true)),
            (None, Some(dir)) => Ok((dir, false)),
            (None, None) => Err(CgroupError::NoController { pid, controller }),
        }
    }
}

/// Joins a cgroup path from /proc/<pid>/cgroup with the mount point of its hierarchy,
/// allowing for mounts of a sub-tree (inside a cgroup namespace).
fn join(mount: &MountInfo, path: &str) -> PathBuf {
    let rel = Path::new(path)
        .strip_prefix(&mount.root)
        .unwrap_or(Path::new(path.trim_start_matches('/')));
    mount.mount_point.join(rel)
}

/// Reads the CPU, memory, OOM and pids counters of the cgroups `pid` belongs to.
pub fn stats(pid: u32) -> Result<CgroupStats> {
    read_stats(&Membership::of(pid)?, pid)
}

fn read_stats(m: &Membership, pid: u32) -> Result<CgroupStats> {
    let cpu_usage_ns = match m.dir(pid, "cpuacct")? {
        (dir, true) => read_u64(&dir.join("cpuacct.usage"))?,
        (dir, false) => stat_field(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000,
    };

    let (dir, v1) = m.dir(pid, "memory")?;
    let (usage, peak, inactive, limit, events) = if v1 {
        (
            "memory.usage_in_bytes",
            "memory.max_usage_in_bytes",
            "total_inactive_file",
            "memory.limit_in_bytes",
            "memory.oom_control",
        )
    } else {
        (
            "memory.current",
            "memory.peak",
            "inactive_file",
            "memory.max",
            "memory.events",
        )
    };
    let usage = read_u64(&dir.join(usage))?;
    let inactive = stat_field(&dir.join("memory.stat"), inactive)?.unwrap_or(0);
    let limit = dir.join(limit);
    let memory_limit_bytes = match read_text(&limit)?.as_str() {
        "max" => None,
        text => Some(parse_u64(&limit, text)?).filter(|&l| l < V1_UNLIMITED),
    };
    // Both files are "key value" lines; older kernels lack the oom_kill line (or v1 file).
    let events = dir.join(events);
    let oom_kills = if events.exists() {
        stat_field(&events, "oom_kill")?
    } else {
        None
    };

    Ok(CgroupStats {
        cpu_usage_ns,
        memory_bytes: usage.saturating_sub(inactive),
        // memory.peak is missing before Linux 5.19.
        memory_peak_bytes: read_u64(&dir.join(peak)).ok(),
        pids: read_u64(&m.dir(pid, "pids")?.0.join("pids.current"))?,
        memory_limit_bytes,
        oom_kills,
    })
}

/// Removes the (empty) cgroup `path` from every mounted hierarchy; absent is fine.
///
/// runc removes a container's own cgroup on delete but not the parents it created,
/// e.g. `/starphleet-<ship>`: tests use this for those. [`remove_tree`] also takes
/// what is left below.
pub fn remove(path: &str) -> Result<()> {
    let rel = checked_relative(path)?;
    let mut first_error = None;
    for mount in cgroup_mounts()? {
        let dir = mount.join(rel);
        if let Err(e) = remove_dir(&dir) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes the cgroup `path` and every cgroup below it, deepest first, from every mounted
/// hierarchy (each v1 controller and the v2 tree); returns how many directories went.
///
/// Only empty cgroups can be removed: one that still holds processes is left in place and
/// reported (`EBUSY`) once everything else that could go has gone. Absent is fine (0).
/// `starphleet down` uses this for `/starphleet-<ship>` after stopping every container.
pub fn remove_tree(path: &str) -> Result<usize> {
    let rel = checked_relative(path)?;
    let mut removed = 0;
    let mut first_error = None;
    for mount in cgroup_mounts()? {
        remove_below(&mount.join(rel), &mut removed, &mut first_error);
    }
    first_error.map_or(Ok(removed), Err)
}

fn remove_below(dir: &Path, removed: &mut usize, first_error: &mut Option<CgroupError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(cause) => {
            first_error.get_or_insert(CgroupError::Remove {
                path: dir.to_path_buf(),
                cause,
            });
            return;
        }
    };
    // A cgroup's files cannot be deleted (and need not be): its sub-directories are the children.
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_below(&entry.path(), removed, first_error);
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => *removed += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(cause) => {
            first_error.get_or_insert(CgroupError::Remove {
                path: dir.to_path_buf(),
                cause,
            });
        }
    }
}

/// `path` without its leading `/`, refusing the root itself and `..`.
fn checked_relative(path: &str) -> Result<&str> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(CgroupError::Refused(path.to_string()));
    }
    Ok(rel)
}

/// The cgroup mounts (v1 and v2) of the mount table, read once: they do not move while a
/// ship runs, and the whole table grows with every container (its overlay, its netns file).
fn cgroup_mount_table() -> Result<std::borrow::Cow<'static, [MountInfo]>> {
    static TABLE: std::sync::OnceLock<Vec<MountInfo>> = std::sync::OnceLock::new();
    if let Some(table) = TABLE.get() {
        return Ok(table.as_slice().into());
    }
    let table: Vec<MountInfo> = mountinfo()
        .map_err(CgroupError::MountTable)?
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .collect();
    if table.is_empty() {
        // Nothing mounted yet: look again next time.
        return Ok(table.into());
    }
    Ok(TABLE.get_or_init(|| table).as_slice().into())
}

/// Mount points of every cgroup hierarchy (v1 and v2).
fn cgroup_mounts() -> Result<Vec<PathBuf>> {
    Ok(cgroup_mount_table()?
        .iter()
        .map(|m| m.mount_point.clone())
        .collect())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CgroupError::Remove {
            path: dir.to_path_buf(),
            cause: e,
        }),
        _ => Ok(()),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|cause| CgroupError::Read {
            path: path.to_path_buf(),
            cause,
        })
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    text.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        text: text.to_string(),
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, &read_text(path)?)
}

/// A `key value` line of a flat-keyed stat file (memory.stat, cpu.stat, memory.events).
fn stat_field(path: &Path, key: &str) -> Result<Option<u64>> {
    Ok(read_text(path)?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    }))
}

/// How often the kernel killed a process of the cgroup at absolute `path` (a container's
/// `cgroupsPath`) for running out of memory; readable while the cgroup exists, also after
/// its processes are gone — which is when the ship asks why a container died.
pub fn oom_kills_at(path: &str) -> Option<u64> {
    let mounts = cgroup_mount_table().ok()?;
    let rel = path.trim_start_matches('/');
    let v1 = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
        .map(|m| m.mount_point.join(rel).join("memory.oom_control"));
    let v2 = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point.join(rel).join("memory.events"));
    [v1, v2]
        .into_iter()
        .flatten()
        .find(|f| f.exists())
        .and_then(|f| stat_field(&f, "oom_kill").ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fstype: &str, opts: &str) -> MountInfo {
        MountInfo {
            root: "/".into(),
            mount_point: point.into(),
            fstype: fstype.into(),
            super_options: opts.into(),
        }
    }

    #[test]
    fn resolves_hybrid_v1_paths_per_controller() {
        let mounts = [
            mount("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
            mount("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            mount("/sys/fs/cgroup/unified", "cgroup2", "rw"),
            mount("/", "ext4", "rw"),
        ];
        let m = Membership::parse(
            "5:cpu,cpuacct:/sp/c1\n4:memory:/parent/sp/c1\n1:name=systemd:/x\n0::/sp/c1\n",
            &mounts,
        );
        assert_eq!(
            m.dir(1, "cpuacct").unwrap(),
            (Path::new("/sys/fs/cgroup/cpu,cpuacct/sp/c1"), true)
        );
        assert_eq!(
            m.dir(1, "memory").unwrap(),
            (Path::new("/sys/fs/cgroup/memory/parent/sp/c1"), true)
        );
        // pids is not a v1 controller here: fall back to the v2 group.
        assert_eq!(
            m.dir(1, "pids").unwrap(),
            (Path::new("/sys/fs/cgroup/unified/sp/c1"), false)
        );
    }

    #[test]
    fn reads_pure_v2_counters() {
        let root = tempfile::tempdir().unwrap();
        let group = root.path().join("sp/c1");
        std::fs::create_dir_all(&group).unwrap();
        let write = |name: &str, text: &str| std::fs::write(group.join(name), text).unwrap();
        write(
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write("memory.current", "10000\n");
        write("memory.peak", "12000\n");
        write("memory.stat", "anon 6000\nfile 4000\ninactive_file 3000\n");
        write("pids.current", "3\n");
        write("memory.max", "max\n");
        write(
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
        let mounts = [mount(&root.path().to_string_lossy(), "cgroup2", "rw")];
        let m = Membership::parse("0::/sp/c1\n", &mounts);
        assert_eq!(
            read_stats(&m, 1).unwrap(),
            CgroupStats {
                cpu_usage_ns: 2_500_000,
                memory_bytes: 7000,
                memory_peak_bytes: Some(12000),
                pids: 3,
                memory_limit_bytes: None,
                oom_kills: Some(2),
            }
        );
        write("memory.max", "67108864\n");
        assert_eq!(
            read_stats(&m, 1).unwrap().memory_limit_bytes,
            Some(64 << 20)
        );
    }

    #[test]
    fn reads_v1_counters_and_treats_the_huge_limit_as_none() {
        let root = tempfile::tempdir().unwrap();
        let at = |ctl: &str| {
            let dir = root.path().join(ctl).join("sp/c1");
            std::fs::create_dir_all(&dir).unwrap();
            move |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap()
        };
        at("cpuacct")("cpuacct.usage", "123456\n");
        let mem = at("memory");
        mem("memory.usage_in_bytes", "50000\n");
        mem("memory.max_usage_in_bytes", "60000\n");
        mem("memory.stat", "cache 100\ntotal_inactive_file 10000\n");
        mem("memory.limit_in_bytes", "9223372036854771712\n");
        mem(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        at("pids")("pids.current", "5\n");
        let base = root.path().to_string_lossy().into_owned();
        let mounts = [
            mount(&format!("{base}/cpuacct"), "cgroup", "rw,cpuacct"),
            mount(&format!("{base}/memory"), "cgroup", "rw,memory"),
            mount(&format!("{base}/pids"), "cgroup", "rw,pids"),
        ];
        let m = Membership::parse(
            "3:pids:/sp/c1\n2:memory:/sp/c1\n1:cpuacct:/sp/c1\n",
            &mounts,
        );
        let stats = read_stats(&m, 1).unwrap();
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: 123456,
                memory_bytes: 40000,
                memory_peak_bytes: Some(60000),
                pids: 5,
                memory_limit_bytes: None,
                oom_kills: Some(1),
            }
        );
        mem("memory.limit_in_bytes", "67108864\n");
        assert_eq!(
            read_stats(&m, 1).unwrap().memory_limit_bytes,
            Some(64 << 20)
        );
    }

    #[test]
    fn remove_refuses_the_root_and_dotdot() {
        assert!(remove("/").is_err());
        assert!(remove("/a/../b").is_err());
        assert!(remove_tree("").is_err());
        assert!(remove_tree("/x/..").is_err());
        remove("/starphleet-nonexistent-cgroup").unwrap();
        assert_eq!(remove_tree("/starphleet-nonexistent-cgroup").unwrap(), 0);
    }
}
