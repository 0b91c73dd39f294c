//! Mount table reading, overlay mounting and recursive unmounting.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};

use crate::error::RuntimeError;

type Result<T> = std::result::Result<T, RuntimeError>;

/// One line of `/proc/self/mountinfo`, reduced to the fields this crate needs.
#[derive(Clone, Debug)]
pub(crate) struct MountInfo {
    /// The path inside the filesystem that is mounted (not `/` for bind mounts).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: String,
}

/// Parses the calling process's mount table, in mount order.
pub(crate) fn mountinfo() -> std::io::Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    // "36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let root = left.nth(3)?;
    let mount_point = left.next()?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("");
    Some(MountInfo {
        root: PathBuf::from(unescape(root)),
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: fstype.to_string(),
        super_options: super_options.to_string(),
    })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount point strictly under `dir` (deepest first); returns how many.
pub fn unmount_under(dir: &Path) -> Result<usize> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(RuntimeError::io(format!("resolving {}", dir.display()), e)),
    };
    let mut points: Vec<PathBuf> = mountinfo()
        .map_err(|e| RuntimeError::io("reading /proc/self/mountinfo", e))?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&dir) && *p != dir)
        .collect();
    // Later mounts sit on top of earlier ones, and children must go before their parents.
    points.reverse();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut count = 0;
    for point in points {
        match umount2(&point, MntFlags::empty()) {
            Ok(()) => count += 1,
            // Still in use (e.g. by a dying container): detach now, the kernel frees it later.
            Err(Errno::EBUSY) => {
                umount2(&point, MntFlags::MNT_DETACH)
                    .map_err(|e| RuntimeError::io(format!("unmounting {}", point.display()), e))?;
                count += 1;
            }
            // Already gone, e.g. taken away with a parent by propagation.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("unmounting {}", point.display()),
                    e,
                ))
            }
        }
    }
    Ok(count)
}

/// Mounts an overlay of `lowers` (top first) with a writable `upper` at `target`.
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    for dir in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = dir.to_string_lossy();
        if s.contains([',', ':']) || !dir.is_absolute() {
            return Err(RuntimeError::InvalidSpec(format!(
                "overlay layer path {} must be absolute and contain no ',' or ':'",
                dir.display()
            )));
        }
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let mount = |data: &str| {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data),
        )
    };
    // `volatile` (Linux 5.10+): the upper layer is thrown away with the container, so skip
    // every sync to it; they made each unmount wait for the disk.
    match mount(&format!("{data},volatile")) {
        Err(Errno::EINVAL) => mount(&data),
        r => r,
    }
    .map_err(|e| {
        RuntimeError::io(
            format!("mounting overlay at {} ({data})", target.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines_with_escapes() {
        let m = parse_mountinfo_line(
            "36 35 98:0 / /mnt/a\\040b rw,noatime shared:1 - overlay overlay rw,lowerdir=/x",
        )
        .unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m.root, PathBuf::from("/"));
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.super_options, "rw,lowerdir=/x");
        let m =
            parse_mountinfo_line("1 2 0:3 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory")
                .unwrap();
        assert_eq!(m.super_options, "rw,memory");
    }

    #[test]
    fn unmount_under_a_missing_dir_is_zero() {
        assert_eq!(
            unmount_under(Path::new("/nonexistent/starphleet")).unwrap(),
            0
        );
    }
}
