//! Builds app versions into cached read-only layers in build containers.
//!
//! A layer is a directory holding `app/`: the app's tree at one commit after
//! its `build` lines ran in a build container with the tree mounted at `/app`.
//! Layers are keyed by (app commit, build spec), written under a temporary
//! name and renamed into place only when every build line succeeded, so a
//! layer that exists is complete and is reused across ship restarts.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use starphleet_runtime::{Bind, ContainerSpec, Limits, Runtime, RuntimeError};

pub mod plan;

pub use plan::{plan, AppKind, BuildPlan, CacheMount, Declared, PlanError, Step, StepRole, Tools};

/// The uid and gid apps run as inside their containers.
pub const APP_USER: (u32, u32) = (9000, 9000);

/// How long all build lines of one build may run together, unless the request says otherwise.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How much output of one build the build log keeps, unless the request says otherwise.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 16 << 20;

/// Size of `/tmp` in build containers: package managers unpack and compile there, so it
/// is larger than a service's (the tmpfs only takes memory for what is written).
pub const BUILD_TMP_BYTES: u64 = 1 << 30;

/// Room kept in the log budget for the line saying how much was cut.
const CUT_NOTE_RESERVE: u64 = 256;

/// Why a build produced no layer.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The app's tree could not be written into the staging dir.
    #[error("exporting the app's tree at {commit} into {}: {cause}", dir.display())]
    Export {
        /// The commit being exported.
        commit: String,
        /// Where it was to go.
        dir: PathBuf,
        /// What the exporter reported.
        cause: std::io::Error,
    },
    /// A build line exited non-zero.
    #[error("build step `{line}` exited with code {code}{}; its output is in {}", exit_hint(*code), log.display())]
    StepFailed {
        /// The build line.
        line: String,
        /// Its exit code (128 + N when killed by signal N).
        code: i32,
        /// The build log holding its output.
        log: PathBuf,
    },
    /// The build lines together ran past the build timeout; the build container was killed.
    #[error("build step `{line}` was still running when the build timeout of {} ran out; it was killed. Make the build faster or raise its timeout", humantime::format_duration(*after))]
    TimedOut {
        /// The build line that was running.
        line: String,
        /// The build timeout.
        after: Duration,
    },
    /// The build container could not be run.
    #[error("running build step `{line}`: {cause}")]
    Runtime {
        /// The build line.
        line: String,
        /// What the runtime reported.
        cause: RuntimeError,
    },
    /// A file operation of the build cache or build log failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// What was attempted, e.g. "writing build log".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

/// What an exit code says beyond the number.
fn exit_hint(code: i32) -> String {
    match code {
        137 => " (killed by signal 9: out of memory, or killed)".to_string(),
        129..=192 => format!(" (killed by signal {})", code - 128),
        _ => String::new(),
    }
}

type Result<T> = std::result::Result<T, BuildError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |cause| BuildError::Io { what, path, cause }
}

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
    pub export: &'a dyn Fn(&Path) -> std::io::Result<()>,
    /// Build output (every line of every build step) is appended here.
    pub log: &'a Path,
    /// Unique container id for the build container.
    pub container_id: &'a str,
    /// Absolute cgroup path for the build container.
    pub cgroups_path: &'a str,
    /// Build again even if a layer for this commit and spec exists (`starphleet redeploy`).
    pub fresh: bool,
    /// How long the build lines together may run ([`DEFAULT_BUILD_TIMEOUT`]); past it the
    /// build container is killed and the build fails with [`BuildError::TimedOut`].
    pub timeout: Duration,
    /// How many bytes of this build's output the log keeps ([`DEFAULT_MAX_LOG_BYTES`]).
    /// Past it the first half and the last part are kept, with a line saying how much was cut
    /// between them; the last part reaches the log when the build ends.
    pub max_log_bytes: u64,
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
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating build cache", &self.dir))?;
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
            Err(e) => return Err(io_err("publishing layer", &dir)(e)),
        }
        Ok(Layer {
            key,
            dir,
            cached: false,
        })
    }

    fn build_into(&self, req: &BuildRequest<'_>, staging: &Path) -> Result<()> {
        let app = staging.join("app");
        std::fs::create_dir_all(&app).map_err(io_err("creating", &app))?;
        (req.export)(&app).map_err(|cause| BuildError::Export {
            commit: req.commit.to_string(),
            dir: app.clone(),
            cause,
        })?;
        chown_tree(&app, APP_USER)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.log)
            .map_err(io_err("opening build log", req.log))?;
        let mut log = CappedLog::new(file, req.max_log_bytes);
        let result = self.run_steps(req, staging, &app, &mut log);
        // The kept end of the output goes in whatever happened: it explains a failure.
        let written = log.finish().map_err(io_err("writing build log", req.log));
        result.and(written)
    }

    fn run_steps(
        &self,
        req: &BuildRequest<'_>,
        staging: &Path,
        app: &Path,
        log: &mut CappedLog,
    ) -> Result<()> {
        let deadline = Instant::now().checked_add(req.timeout);
        for (step, line) in req.build_lines.iter().enumerate() {
            log.write(
                format!(
                    "[{}] build step {}/{}: {line}\n",
                    req.service,
                    step + 1,
                    req.build_lines.len()
                )
                .as_bytes(),
            );
            let bundle = staging.with_extension(format!("bundle{step}"));
            let spec = ContainerSpec {
                id: format!("{}-b{step}", req.container_id),
                bundle_dir: bundle.clone(),
                args: vec!["/bin/sh".into(), "-c".into(), line.clone()],
                env: req.env.to_vec(),
                cwd: "/app".into(),
                user: APP_USER,
                hostname: "build".into(),
                binds: vec![Bind {
                    source: app.to_path_buf(),
                    destination: "/app".into(),
                    readonly: false,
                }],
                cgroups_path: format!("{}-b{step}", req.cgroups_path),
                limits: Limits {
                    tmp_bytes: Some(BUILD_TMP_BYTES),
                    ..Limits::default()
                },
                ..Default::default()
            };
            // No deadline (a timeout beyond what Instant holds) means the full timeout each step.
            let left =
                deadline.map_or(req.timeout, |d| d.saturating_duration_since(Instant::now()));
            let code = self
                .runtime
                .run_to_completion_with_output(&spec, left, &mut |chunk| log.write(chunk));
            let _ = std::fs::remove_dir_all(&bundle);
            let code = match code {
                Ok(code) => code,
                Err(RuntimeError::TimedOut { .. }) => {
                    log.write(
                        format!(
                            "[{}] build step `{line}` killed: the build timeout of {} ran out\n",
                            req.service,
                            humantime::format_duration(req.timeout)
                        )
                        .as_bytes(),
                    );
                    return Err(BuildError::TimedOut {
                        line: line.clone(),
                        after: req.timeout,
                    });
                }
                Err(cause) => {
                    return Err(BuildError::Runtime {
                        line: line.clone(),
                        cause,
                    })
                }
            };
            if code != 0 {
                log.write(
                    format!(
                        "[{}] build step `{line}` exited with {code}{}\n",
                        req.service,
                        exit_hint(code)
                    )
                    .as_bytes(),
                );
                return Err(BuildError::StepFailed {
                    line: line.clone(),
                    code,
                    log: req.log.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// One build's share of the build log, at most `cap` bytes: the first half goes straight
/// to the file, the last part is held in memory (dropping what is older) and written by
/// [`finish`](Self::finish) after a line saying how much was cut.
struct CappedLog {
    file: File,
    cap: u64,
    head_left: u64,
    tail: VecDeque<u8>,
    tail_cap: usize,
    cut: u64,
    ends_with_newline: bool,
    error: Option<std::io::Error>,
}

impl CappedLog {
    fn new(file: File, cap: u64) -> Self {
        let budget = cap.saturating_sub(CUT_NOTE_RESERVE);
        let head = budget / 2;
        CappedLog {
            file,
            cap,
            head_left: head,
            tail: VecDeque::new(),
            tail_cap: usize::try_from(budget - head).unwrap_or(usize::MAX),
            cut: 0,
            ends_with_newline: true,
            error: None,
        }
    }

    /// Takes output; a failed write is kept and reported by `finish`.
    fn write(&mut self, data: &[u8]) {
        let direct = data
            .len()
            .min(usize::try_from(self.head_left).unwrap_or(usize::MAX));
        if direct > 0 {
            self.head_left -= direct as u64;
            self.put(&data[..direct]);
        }
        let rest = &data[direct..];
        if rest.is_empty() {
            return;
        }
        self.tail.extend(rest);
        let excess = self.tail.len().saturating_sub(self.tail_cap);
        if excess > 0 {
            self.tail.drain(..excess);
            self.cut += excess as u64;
        }
    }

    fn put(&mut self, data: &[u8]) {
        if let Some(&last) = data.last() {
            self.ends_with_newline = last == b'\n';
        }
        if self.error.is_none() {
            if let Err(e) = self.file.write_all(data) {
                self.error = Some(e);
            }
        }
    }

    /// Writes the held last part (after the cut note, if anything was cut).
    fn finish(&mut self) -> std::io::Result<()> {
        let mut tail: Vec<u8> = self.tail.drain(..).collect();
        if self.cut > 0 {
            // Start the kept part at a line boundary; the partial line counts as cut.
            if let Some(i) = tail.iter().position(|&b| b == b'\n') {
                self.cut += i as u64 + 1;
                tail.drain(..=i);
            }
            let note = format!(
                "{}[build log: {} bytes of output cut here; at most {} bytes are kept per build]\n",
                if self.ends_with_newline { "" } else { "\n" },
                self.cut,
                self.cap
            );
            if note.len() as u64 <= CUT_NOTE_RESERVE.min(self.cap) {
                self.put(note.as_bytes());
            }
        }
        self.put(&tail);
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io_err("chown", dir))?;
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            chown_tree(&entry.map_err(io_err("listing", dir))?.path(), (uid, gid))?;
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

    fn capped(cap: u64, writes: &[&[u8]]) -> (String, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        std::fs::write(&path, "before\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let mut log = CappedLog::new(file, cap);
        for w in writes {
            log.write(w);
        }
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        (text["before\n".len()..].to_string(), log.cut)
    }

    #[test]
    fn a_log_under_its_cap_is_kept_whole() {
        let (text, cut) = capped(4096, &[b"one\n", b"two\n"]);
        assert_eq!(text, "one\ntwo\n");
        assert_eq!(cut, 0);
    }

    #[test]
    fn a_log_over_its_cap_keeps_head_and_tail_and_says_how_much_was_cut() {
        let lines: Vec<String> = (1..=5000).map(|i| format!("line {i}\n")).collect();
        let total: usize = lines.iter().map(String::len).sum();
        let writes: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let (text, cut) = capped(4096, &writes);
        assert!(text.len() <= 4096, "{} bytes", text.len());
        assert!(text.starts_with("line 1\nline 2\n"), "{text}");
        assert!(text.ends_with("line 4999\nline 5000\n"), "{text}");
        let note = format!(
            "[build log: {cut} bytes of output cut here; at most 4096 bytes are kept per build]\n"
        );
        assert!(text.contains(&note), "{text}");
        // Every byte is either kept or counted as cut, and the kept tail starts on a line;
        // a head that ends inside a line gets a newline before the note.
        let all = lines.concat();
        let head = ((4096 - CUT_NOTE_RESERVE) / 2) as usize;
        let inserted = usize::from(all.as_bytes()[head - 1] != b'\n');
        assert_eq!(text.len() - note.len() - inserted + cut as usize, total);
        assert!(text.contains(&format!("\n{note}")), "{text}");
        let after = &text[text.find(&note).unwrap() + note.len()..];
        assert!(after.starts_with("line "), "{after}");
    }
}
