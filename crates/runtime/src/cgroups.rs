//! Resource usage of a container, read from its cgroups (v1, v2 and hybrid layouts).
//!
//! Where a container's cgroup lives is read from `/proc/<pid>/cgroup`, never assumed: on
//! v1 each controller may put it somewhere else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::mounts::{mountinfo, MountInfo};

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
}

/// Where one process's cgroups are: per v1 controller, and its v2 group.
struct Membership {
    v1: Vec<(Vec<String>, PathBuf)>,
    v2: Option<PathBuf>,
}

impl Membership {
    fn of(pid: u32) -> Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup (is the process gone?)"))?;
        Ok(Self::parse(&text, &mountinfo()?))
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
    fn dir(&self, pid: u32, controller: &str) -> Result<(&Path, bool)> {
        match (self.v1_dir(controller), &self.v2) {
            (Some(dir), _) => Ok((dir, true)),
            (None, Some(dir)) => Ok((dir, false)),
            (None, None) => bail!("pid {pid}: no {controller} cgroup found"),
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

/// Reads the CPU, memory and pids counters of the cgroups `pid` belongs to.
pub fn stats(pid: u32) -> Result<CgroupStats> {
    read_stats(&Membership::of(pid)?, pid)
}

fn read_stats(m: &Membership, pid: u32) -> Result<CgroupStats> {
    let cpu_usage_ns = match m.dir(pid, "cpuacct")? {
        (dir, true) => read_u64(&dir.join("cpuacct.usage"))?,
        (dir, false) => stat_field(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000,
    };

    let (dir, v1) = m.dir(pid, "memory")?;
    let (usage, peak, inactive) = if v1 {
        (
            "memory.usage_in_bytes",
            "memory.max_usage_in_bytes",
            "total_inactive_file",
        )
    } else {
        ("memory.current", "memory.peak", "inactive_file")
    };
    let usage = read_u64(&dir.join(usage))?;
    let inactive = stat_field(&dir.join("memory.stat"), inactive)?.unwrap_or(0);

    Ok(CgroupStats {
        cpu_usage_ns,
        memory_bytes: usage.saturating_sub(inactive),
        // memory.peak is missing before Linux 5.19.
        memory_peak_bytes: read_u64(&dir.join(peak)).ok(),
        pids: read_u64(&m.dir(pid, "pids")?.0.join("pids.current"))?,
    })
}

/// Removes the (empty) cgroup `path` from every mounted hierarchy; absent is fine.
///
/// runc removes a container's own cgroup on delete but not the parents it created,
/// e.g. `/starphleet-<ship>`: `starphleet down` and tests use this for those.
pub fn remove(path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        bail!("refusing to remove cgroup {path:?}");
    }
    for mount in mountinfo()?
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
    {
        let dir = mount.mount_point.join(rel);
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing cgroup {}", dir.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_u64(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("parsing {} ({:?})", path.display(), text.trim()))
}

/// A `key value` line of a flat-keyed stat file (memory.stat, cpu.stat).
fn stat_field(path: &Path, key: &str) -> Result<Option<u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    }))
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
        let mounts = [mount(&root.path().to_string_lossy(), "cgroup2", "rw")];
        let m = Membership::parse("0::/sp/c1\n", &mounts);
        assert_eq!(
            read_stats(&m, 1).unwrap(),
            CgroupStats {
                cpu_usage_ns: 2_500_000,
                memory_bytes: 7000,
                memory_peak_bytes: Some(12000),
                pids: 3,
            }
        );
    }

    #[test]
    fn remove_refuses_the_root_and_dotdot() {
        assert!(remove("/").is_err());
        assert!(remove("/a/../b").is_err());
        remove("/starphleet-nonexistent-cgroup").unwrap();
    }
}
