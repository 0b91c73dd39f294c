//! Reusing installed dependencies across builds of one app.
//!
//! After the install steps of a build ran, the dir they filled (`node_modules`, `.venv`,
//! `vendor/bundle`) is copied to `<state>/cache/<app>/deps/<key>`, the key covering the
//! files that decide what gets installed, the install commands and the toolchain binaries.
//! A later build with the same key copies it back and skips the install steps: a one-line
//! change to the code rebuilds in well under a second instead of re-resolving everything
//! against the registry. Only the newest copy per app is kept. Copies, not hard links: a
//! later step may write into the dir, and must not reach into an older layer.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::plan::{Deps, Step, StepRole};
use crate::APP_USER;

/// Where toolchain binaries are looked up, relative to a root.
const BIN_DIRS: &[&str] = &["usr/local/bin", "usr/bin", "bin"];

/// The key of what `steps` would install for `deps` in the tree at `app`, built on `root`
/// (`None`: the host).
pub(crate) fn key(
    app: &Path,
    deps: &Deps,
    steps: &[Step],
    root: Option<&Path>,
) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(b"deps-v1");
    part(deps.dir.as_bytes());
    for input in &deps.inputs {
        part(input.as_bytes());
        part(&std::fs::read(app.join(input))?);
    }
    for step in steps.iter().filter(|s| s.role == StepRole::Install) {
        part(step.command.as_bytes());
    }
    let host = Path::new("/");
    let root = root.unwrap_or(host);
    part(root.as_os_str().as_encoded_bytes());
    for tool in &deps.tools {
        let found = BIN_DIRS.iter().find_map(|dir| {
            let path = root.join(dir).join(tool);
            if root == host {
                std::fs::metadata(path).ok()
            } else {
                std::fs::symlink_metadata(path).ok()
            }
        });
        let stamp = found.map(|m| format!("{tool} {} {} {}", m.ino(), m.len(), m.mtime()));
        part(stamp.unwrap_or_default().as_bytes());
    }
    Ok(hex::encode(h.finalize())[..24].to_string())
}

/// Copies the saved dir of `key` to `app/<dir>`; false when there is none.
pub(crate) fn restore(saved: &Path, key: &str, app: &Path, dir: &str) -> std::io::Result<bool> {
    let src = saved.join(key).join("tree");
    if !src.is_dir() {
        return Ok(false);
    }
    let dst = app.join(dir);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    copy_tree(&src, &dst)?;
    Ok(true)
}

/// Saves `app/<dir>` as the copy of `key`, replacing any older copy; false when the install
/// steps made no such dir.
pub(crate) fn save(saved: &Path, key: &str, app: &Path, dir: &str) -> std::io::Result<bool> {
    let src = app.join(dir);
    if !src.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(saved)?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unique per save: builds of one app may run at once.
    let tmp = saved.join(format!(".{key}.{}-{n}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    let copied = copy_tree(&src, &tmp.join("tree"));
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    for entry in std::fs::read_dir(saved)?.flatten() {
        let name = entry.file_name();
        if name != tmp.file_name().unwrap_or_default() && !name.to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    match std::fs::rename(&tmp, saved.join(key)) {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another build of the app saved the same key meanwhile.
            if saved.join(key).is_dir() {
                Ok(true)
            } else {
                Err(e)
            }
        }
    }
}

/// Copies a tree (dirs, files with their modes, symlinks as links), owned by the app user.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ty = meta.file_type();
    if ty.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ty.is_dir() {
        std::fs::create_dir(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions())?;
    } else if ty.is_file() {
        std::fs::copy(src, dst)?;
    } else {
        // Sockets and fifos left by an install are not worth keeping.
        return Ok(());
    }
    std::os::unix::fs::lchown(dst, Some(APP_USER.0), Some(APP_USER.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps() -> Deps {
        Deps {
            dir: "node_modules".into(),
            inputs: vec!["package.json".into()],
            tools: vec!["sh".into()],
        }
    }

    #[test]
    fn the_key_follows_inputs_and_install_commands_only() {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(app.path().join("package.json"), "{}").unwrap();
        std::fs::write(app.path().join("index.js"), "1").unwrap();
        let steps = vec![
            Step {
                command: "npm install".into(),
                role: StepRole::Install,
            },
            Step {
                command: "npm run build".into(),
                role: StepRole::Build,
            },
        ];
        let a = key(app.path(), &deps(), &steps, None).unwrap();
        std::fs::write(app.path().join("index.js"), "2").unwrap();
        assert_eq!(
            a,
            key(app.path(), &deps(), &steps[..1], None).unwrap(),
            "code changes keep it"
        );
        std::fs::write(app.path().join("package.json"), "{\"x\":1}").unwrap();
        assert_ne!(a, key(app.path(), &deps(), &steps, None).unwrap());
        std::fs::write(app.path().join("package.json"), "{}").unwrap();
        let mut other = steps.clone();
        other[0].command = "npm ci".into();
        assert_ne!(a, key(app.path(), &deps(), &other, None).unwrap());
    }

    #[test]
    fn saved_dirs_come_back_whole_and_only_the_newest_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (app, saved) = (tmp.path().join("app"), tmp.path().join("saved"));
        std::fs::create_dir_all(app.join("node_modules/a/bin")).unwrap();
        std::fs::write(app.join("node_modules/a/index.js"), "x").unwrap();
        std::fs::write(app.join("node_modules/a/bin/run"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            app.join("node_modules/a/bin/run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("../a/bin/run", app.join("node_modules/.bin")).unwrap();
        assert!(save(&saved, "k1", &app, "node_modules").unwrap());
        assert!(save(&saved, "k2", &app, "node_modules").unwrap());
        let names: Vec<_> = std::fs::read_dir(&saved)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["k2"]);
        assert!(!save(&saved, "k3", &app, "missing").unwrap());

        let other = tmp.path().join("other");
        assert!(restore(&saved, "k2", &other, "node_modules").unwrap());
        assert!(!restore(&saved, "k1", &other, "node_modules").unwrap());
        assert_eq!(
            std::fs::read_to_string(other.join("node_modules/a/index.js")).unwrap(),
            "x"
        );
        let mode = std::fs::metadata(other.join("node_modules/a/bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(other.join("node_modules/.bin")).unwrap(),
            Path::new("../a/bin/run")
        );
        let meta = std::fs::symlink_metadata(other.join("node_modules/a/index.js")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), APP_USER);
    }
}
