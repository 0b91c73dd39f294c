//! Builds app versions into cached read-only layers in build containers.
//!
//! A layer is a directory holding `app/`: the app's tree at one commit after
//! its `build` lines ran in a build container with the tree mounted at `/app`.
//! Layers are keyed by (app commit, build spec), written under a temporary
//! name and renamed into place only when every build line succeeded, so a
//! layer that exists is complete and is reused across ship restarts.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use starphleet_runtime::{Bind, ContainerSpec, Runtime};

/// The uid and gid apps run as inside their containers.
pub const APP_USER: (u32, u32) = (9000, 9000);

/// What to build.
pub struct BuildRequest<'a> {
    /// Service name, for logs.
    pub service: &'a str,
    /// The app commit being built.
    pub commit: &'a str,
    /// The app's `build` lines, run in order with `/bin/sh -c`.
    pub build_lines: &'a [String],
    /// Environment for the build container.
    pub env: &'a [(String, String)],
    /// Writes the app's tree at `commit` into the given directory.
    pub export: &'a dyn Fn(&Path) -> Result<()>,
    /// Build output (every line of every build step) is appended here.
    pub log: &'a Path,
    /// Unique container id for the build container.
    pub container_id: &'a str,
    /// Absolute cgroup path for the build container.
    pub cgroups_path: &'a str,
    /// Build again even if a layer for this commit and spec exists (`starphleet redeploy`).
    pub fresh: bool,
}

/// A finished, read-only build layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The cache key: sha256 over (commit, build lines).
    pub key: String,
    /// The layer directory (contains `app/`), used as an overlay lower dir.
    pub dir: PathBuf,
    /// True when the layer came from the cache.
    pub cached: bool,
}

/// The build cache: `<dir>/<key>/app`.
#[derive(Debug, Clone)]
pub struct Builder {
    dir: PathBuf,
    runtime: Runtime,
}

/// The cache key of a build: the commit and every build line.
pub fn layer_key(commit: &str, build_lines: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(commit.as_bytes());
    for line in build_lines {
        h.update([0]);
        h.update(line.as_bytes());
    }
    hex::encode(h.finalize())[..24].to_string()
}

impl Builder {
    /// A builder keeping layers under `dir` and running build containers with `runtime`.
    pub fn new(dir: impl Into<PathBuf>, runtime: Runtime) -> Self {
        Builder {
            dir: dir.into(),
            runtime,
        }
    }

    /// Returns the cached layer for `req`, or builds it.
    pub fn build(&self, req: &BuildRequest<'_>) -> Result<Layer> {
        let mut key = layer_key(req.commit, req.build_lines);
        if req.fresh {
            // A new key, because the running version may still use the cached layer as its root.
            key = format!("{key}-{}", now_ms());
        }
        let dir = self.dir.join(&key);
        if dir.join("app").is_dir() {
            return Ok(Layer {
                key,
                dir,
                cached: true,
            });
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating build cache {}", self.dir.display()))?;
        // Unique per build container, so concurrent builds never share a staging dir.
        let staging = self.dir.join(format!(".{key}.{}.tmp", req.container_id));
        let _ = std::fs::remove_dir_all(&staging);
        let result = self.build_into(req, &staging);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        match std::fs::rename(&staging, &dir) {
            Ok(()) => {}
            // Another build of the same key won the race: its layer is as good as ours.
            Err(_) if dir.join("app").is_dir() => {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e) => return Err(e).with_context(|| format!("publishing layer {}", dir.display())),
        }
        Ok(Layer {
            key,
            dir,
            cached: false,
        })
    }

    fn build_into(&self, req: &BuildRequest<'_>, staging: &Path) -> Result<()> {
        let app = staging.join("app");
        std::fs::create_dir_all(&app)?;
        (req.export)(&app).context("exporting the app's tree")?;
        chown_tree(&app, APP_USER)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.log)
            .with_context(|| format!("opening build log {}", req.log.display()))?;
        for (step, line) in req.build_lines.iter().enumerate() {
            writeln!(
                log,
                "[{}] build step {}/{}: {line}",
                req.service,
                step + 1,
                req.build_lines.len()
            )?;
            let bundle = staging.with_extension(format!("bundle{step}"));
            let spec = ContainerSpec {
                id: format!("{}-b{step}", req.container_id),
                bundle_dir: bundle.clone(),
                layers: Vec::new(),
                args: vec!["/bin/sh".into(), "-c".into(), line.clone()],
                env: req.env.to_vec(),
                cwd: "/app".into(),
                user: APP_USER,
                hostname: "build".into(),
                netns: None,
                hosts: Vec::new(),
                binds: vec![Bind {
                    source: app.clone(),
                    destination: "/app".into(),
                    readonly: false,
                }],
                cgroups_path: format!("{}-b{step}", req.cgroups_path),
                stdout: req.log.to_path_buf(),
                stderr: req.log.to_path_buf(),
                readonly_app: false,
                limits: Default::default(),
            };
            let code = self
                .runtime
                .run_to_completion(&spec, std::time::Duration::from_secs(15 * 60));
            let _ = std::fs::remove_dir_all(&bundle);
            let code = code.with_context(|| format!("running build step `{line}`"))?;
            if code != 0 {
                writeln!(
                    log,
                    "[{}] build step `{line}` exited with {code}",
                    req.service
                )?;
                bail!("build step `{line}` exited with code {code}");
            }
        }
        Ok(())
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_commit_and_every_line() {
        let a = layer_key("c1", &["make".into()]);
        assert_eq!(a, layer_key("c1", &["make".into()]));
        assert_ne!(a, layer_key("c2", &["make".into()]));
        assert_ne!(a, layer_key("c1", &["make all".into()]));
        assert_ne!(
            layer_key("c1", &["a".into(), "b".into()]),
            layer_key("c1", &["ab".into()])
        );
    }
}
