//! Git access for headquarters and app repositories through the git CLI.
//!
//! The `git` command line is used rather than a library so that every URL
//! form git accepts (`file://`, `https://`, `ssh://`, `git@host:path`) and
//! every credential setup the operator already has keeps working.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

mod exec;

/// A failed git operation, with what git itself said.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The `git` binary could not be run at all.
    #[error("cannot run git ({0}); install it with `apt-get install git`")]
    Missing(std::io::Error),
    /// git ran and failed.
    #[error("{what} failed: {stderr}")]
    Failed {
        /// What was attempted, e.g. "git ls-remote file:///hq".
        what: String,
        /// git's own explanation, trimmed.
        stderr: String,
    },
    /// The named branch, tag or sha does not exist in the repository.
    #[error("ref `{reference}` not found in {url}; use a branch, a tag or a full commit sha that exists there")]
    RefNotFound {
        /// The repository URL.
        url: String,
        /// The reference that was asked for.
        reference: String,
    },
    /// git did not finish in time; it and every helper it started were killed.
    #[error("{what} timed out after {}; check that the remote is reachable, or raise the git timeouts", humantime::format_duration(*after))]
    TimedOut {
        /// What was attempted, e.g. "git ls-remote https://example.com/app.git".
        what: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A local file operation around git failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was attempted, naming the path, e.g. "creating /var/lib/starphleet/git".
        what: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The ssh key or known_hosts path cannot be put into a shell command.
    #[error("ssh path {path:?} contains a NUL byte; move the file to a plain path")]
    SshPath {
        /// The offending path.
        path: PathBuf,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, GitError>;

/// How long each kind of git command may run before it is killed.
///
/// Each git process gets its own timeout: an operation that runs several (e.g. a fetch
/// that falls back to fetching one commit) can take a multiple of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GitTimeouts {
    /// `git ls-remote` (resolving a ref), default 15 s.
    pub ls_remote: Duration,
    /// `git fetch` of a mirror or checkout, default 10 min.
    pub fetch: Duration,
    /// Commands that touch only local repositories (export, read_file, reset, ...), default 60 s.
    pub local: Duration,
}

impl Default for GitTimeouts {
    fn default() -> Self {
        GitTimeouts {
            ls_remote: Duration::from_secs(15),
            fetch: Duration::from_secs(10 * 60),
            local: Duration::from_secs(60),
        }
    }
}

/// The ssh identity used for private repositories.
#[derive(Clone, Debug)]
pub struct SshIdentity {
    /// Private key file.
    pub key: PathBuf,
    /// known_hosts file, filled on first contact (accept-new).
    pub known_hosts: PathBuf,
}

/// Runs git with the ship's settings (ssh identity, no prompts).
#[derive(Clone, Debug, Default)]
pub struct Git {
    ssh: Option<SshIdentity>,
    timeouts: GitTimeouts,
}

/// Why the ssh key in the state dir cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyProblem(pub String);

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Finds and checks the ssh private key in `ssh_dir` (`id_ed25519`, `id_ecdsa`, `id_rsa`).
///
/// Returns `Ok(None)` when there is no key (public repositories only), the key
/// when it is usable, and a problem naming the file and the fix otherwise.
pub fn check_ssh_key(ssh_dir: &Path) -> std::result::Result<Option<PathBuf>, KeyProblem> {
    let Some(key) = ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| ssh_dir.join(name))
        .find(|p| p.exists())
    else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&key)
        .map_err(|e| KeyProblem(format!("{}: cannot read: {e}", key.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyProblem(format!(
            "{}: permissions {mode:o} are too open; ssh refuses such keys. Fix: chmod 600 {}",
            key.display(),
            key.display()
        )));
    }
    let text = std::fs::read_to_string(&key)
        .map_err(|e| KeyProblem(format!("{}: cannot read: {e}", key.display())))?;
    if !text.contains("PRIVATE KEY-----") {
        return Err(KeyProblem(format!(
            "{}: not a private key (no `-----BEGIN … PRIVATE KEY-----` block). Fix: put the deploy key's private half there",
            key.display()
        )));
    }
    // ssh-keygen -y parses the key for real; it needs no network.
    match Command::new("ssh-keygen")
        .arg("-y")
        .arg("-P")
        .arg("")
        .arg("-f")
        .arg(&key)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(Some(key)),
        Ok(out) => Err(KeyProblem(format!(
            "{}: does not parse as an unencrypted private key ({}). Fix: use a key without a passphrase",
            key.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        // Without ssh-keygen the format check above is all we can do.
        Err(_) => Ok(Some(key)),
    }
}

/// A stable directory name for a repository URL.
pub fn cache_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    let tail: String = url
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(24)
        .collect();
    format!("{tail}-{}", &hex::encode(digest)[..12])
}

/// True for a full 40-hex-digit commit id.
pub fn is_full_sha(reference: &str) -> bool {
    reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Which timeout of [`GitTimeouts`] a command runs under.
#[derive(Clone, Copy)]
enum Kind {
    LsRemote,
    Fetch,
    Local,
}

/// Quotes `word` (made from `path`) for the shell that runs `GIT_SSH_COMMAND`: git hands
/// that command to `sh -c`.
fn shell_quoted(word: &[u8], path: &Path) -> Result<OsString> {
    shlex::bytes::try_quote(word)
        .map(|q| OsString::from_vec(q.into_owned()))
        .map_err(|_| GitError::SshPath {
            path: path.to_path_buf(),
        })
}

/// The `GIT_SSH_COMMAND` for `ssh`: no prompts, new host keys accepted and remembered.
fn ssh_command(ssh: Option<&SshIdentity>) -> Result<OsString> {
    let mut cmd = OsString::from("ssh");
    if let Some(id) = ssh {
        cmd.push(" -i ");
        cmd.push(shell_quoted(id.key.as_os_str().as_bytes(), &id.key)?);
        cmd.push(" -o IdentitiesOnly=yes");
    }
    cmd.push(" -o BatchMode=yes -o StrictHostKeyChecking=accept-new");
    if let Some(id) = ssh {
        // ssh splits this option's value at spaces into several files unless it is in
        // double quotes (with `\` and `"` escaped); the shell must then keep it one word.
        let mut value = b"UserKnownHostsFile=\"".to_vec();
        for &b in id.known_hosts.as_os_str().as_bytes() {
            if b == b'"' || b == b'\\' {
                value.push(b'\\');
            }
            value.push(b);
        }
        value.push(b'"');
        cmd.push(" -o ");
        cmd.push(shell_quoted(&value, &id.known_hosts)?);
    }
    Ok(cmd)
}

impl Git {
    /// A git runner with the default timeouts; `ssh` is the identity for private repositories, if any.
    pub fn new(ssh: Option<SshIdentity>) -> Self {
        Git {
            ssh,
            timeouts: GitTimeouts::default(),
        }
    }

    /// The same runner with other timeouts.
    pub fn with_timeouts(mut self, timeouts: GitTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new("git");
        cmd.stdin(Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C")
            .env("GIT_SSH_COMMAND", ssh_command(self.ssh.as_ref())?);
        Ok(cmd)
    }

    fn timeout(&self, kind: Kind) -> Duration {
        match kind {
            Kind::LsRemote => self.timeouts.ls_remote,
            Kind::Fetch => self.timeouts.fetch,
            Kind::Local => self.timeouts.local,
        }
    }

    fn run<I, S>(&self, kind: Kind, dir: Option<&Path>, args: I) -> Result<Vec<u8>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command()?;
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        cmd.args(&args);
        let what = format!(
            "git {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.finish(kind, cmd, what)
    }

    /// Runs a prepared command under the timeout of `kind`; `what` names it in errors.
    fn finish(&self, kind: Kind, mut cmd: Command, what: String) -> Result<Vec<u8>> {
        let child = exec::spawn(&mut cmd).map_err(|cause| match cmd.get_current_dir() {
            // A missing working dir fails the spawn just like a missing git would.
            Some(dir) if !dir.is_dir() => GitError::Io {
                what: format!("running `{what}` in {}", dir.display()),
                cause,
            },
            _ => GitError::Missing(cause),
        })?;
        let after = self.timeout(kind);
        let ran = exec::collect(child, after).map_err(|cause| GitError::Io {
            what: format!("waiting for `{what}`"),
            cause,
        })?;
        let Some(out) = ran else {
            return Err(GitError::TimedOut { what, after });
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::Failed {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Resolves `reference` (branch, tag, full sha; `None` = the remote HEAD) to a commit sha
    /// with one `git ls-remote` round trip; a full sha is returned without contacting the remote.
    pub fn resolve(&self, url: &str, reference: Option<&str>) -> Result<String> {
        if let Some(r) = reference {
            if is_full_sha(r) {
                return Ok(r.to_ascii_lowercase());
            }
        }
        let out = self.run(Kind::LsRemote, None, ["ls-remote", url])?;
        let text = String::from_utf8_lossy(&out);
        let refs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
        let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(s, _)| *s);
        let found = match reference {
            None => find("HEAD"),
            Some(r) => find(&format!("refs/heads/{r}"))
                .or_else(|| find(&format!("refs/tags/{r}^{{}}")))
                .or_else(|| find(&format!("refs/tags/{r}")))
                .or_else(|| find(r)),
        };
        found
            .map(str::to_string)
            .ok_or_else(|| GitError::RefNotFound {
                url: url.to_string(),
                reference: reference.unwrap_or("HEAD").to_string(),
            })
    }

    /// Makes sure the bare mirror at `dir` holds `commit` of `url`, cloning or fetching as needed.
    pub fn fetch_commit(&self, url: &str, dir: &Path, commit: &str) -> Result<()> {
        remove_stale_locks(dir);
        if !dir.join("HEAD").exists() {
            if let Some(parent) = dir.parent() {
                create_dir_all(parent)?;
            }
            self.run(
                Kind::Local,
                None,
                [OsStr::new("init"), OsStr::new("--bare"), dir.as_os_str()],
            )?;
        }
        if self.contains(dir, commit)? {
            return Ok(());
        }
        self.run(
            Kind::Fetch,
            Some(dir),
            [
                "-c",
                ATOMIC_FETCH,
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "--tags",
                url,
                "+refs/heads/*:refs/heads/*",
            ],
        )?;
        if self.contains(dir, commit)? {
            return Ok(());
        }
        // Not on any branch or tag: ask for the commit itself (servers that allow it).
        self.run(
            Kind::Fetch,
            Some(dir),
            ["-c", ATOMIC_FETCH, "fetch", "--quiet", url, commit],
        )?;
        Ok(())
    }

    /// True when the repository at `dir` has `commit` (false also when git cannot tell).
    pub fn has_commit(&self, dir: &Path, commit: &str) -> bool {
        self.contains(dir, commit).unwrap_or(false)
    }

    /// Whether `dir` has `commit`; a git that hangs or cannot run is an error, not a "no".
    fn contains(&self, dir: &Path, commit: &str) -> Result<bool> {
        self.exists(dir, &format!("{commit}^{{commit}}"))
    }

    /// `git cat-file -e <object>`: a failure means "no such object".
    fn exists(&self, dir: &Path, object: &str) -> Result<bool> {
        match self.run(Kind::Local, Some(dir), ["cat-file", "-e", object]) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The contents of `path` at `commit`, or `None` when the file does not exist there.
    pub fn read_file(&self, dir: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let spec = format!("{commit}:{path}");
        if !self.exists(dir, &spec)? {
            return Ok(None);
        }
        Ok(Some(self.run(
            Kind::Local,
            Some(dir),
            ["cat-file", "blob", &spec],
        )?))
    }

    /// Writes the tree of `commit` into `dest` (created if missing) without any `.git`.
    pub fn export(&self, dir: &Path, commit: &str, dest: &Path) -> Result<()> {
        create_dir_all(dest)?;
        // A private index keeps the mirror untouched by the checkout.
        let index = dest.with_extension("index");
        let mut cmd = self.command()?;
        cmd.current_dir(dir)
            .env("GIT_INDEX_FILE", &index)
            .arg("--work-tree")
            .arg(dest)
            .args(["checkout", "--force", commit, "--", "."]);
        let what = format!("git checkout {commit} into {}", dest.display());
        let result = self.finish(Kind::Local, cmd, what);
        let _ = std::fs::remove_file(&index);
        result.map(drop)
    }

    /// Brings the working checkout at `dir` to exactly `commit` of `url` (used for HQ).
    pub fn checkout(&self, url: &str, dir: &Path, commit: &str) -> Result<()> {
        // A run cut short (a full disk, a kill) leaves lock files that fail every later one.
        remove_stale_locks(&dir.join(".git"));
        if !dir.join(".git").exists() {
            create_dir_all(dir)?;
            self.run(Kind::Local, Some(dir), ["init", "--quiet"])?;
        }
        if !self.contains(dir, commit)? {
            self.run(
                Kind::Fetch,
                Some(dir),
                [
                    "-c",
                    ATOMIC_FETCH,
                    "fetch",
                    "--quiet",
                    "--force",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
            )?;
            if !self.contains(dir, commit)? {
                self.run(
                    Kind::Fetch,
                    Some(dir),
                    ["-c", ATOMIC_FETCH, "fetch", "--quiet", url, commit],
                )?;
            }
        }
        let reset = ["reset", "--quiet", "--hard", commit];
        if self.run(Kind::Local, Some(dir), reset).is_err() {
            // Objects a git before this one wrote halfway (loose, so not all or nothing):
            // fetch everything again, then check out.
            self.run(
                Kind::Fetch,
                Some(dir),
                [
                    "-c",
                    ATOMIC_FETCH,
                    "fetch",
                    "--quiet",
                    "--refetch",
                    "--force",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
            )?;
            self.run(Kind::Local, Some(dir), reset)?;
        }
        self.run(Kind::Local, Some(dir), ["clean", "--quiet", "-fdx"])?;
        Ok(())
    }

    /// The commit currently checked out at `dir`, if any.
    pub fn head(&self, dir: &Path) -> Option<String> {
        let out = self
            .run(Kind::Local, Some(dir), ["rev-parse", "HEAD"])
            .ok()?;
        Some(String::from_utf8_lossy(&out).trim().to_string())
    }
}

/// Fetched objects are kept as one pack, written all or nothing: a fetch cut short (a full
/// disk, a timeout) leaves no half set of loose objects that looks complete.
const ATOMIC_FETCH: &str = "fetch.unpackLimit=1";

/// Removes the lock files git leaves when it is interrupted, under `git_dir`. Only for
/// repositories this process alone writes (the ship serialises its git work per repository).
pub fn remove_stale_locks(git_dir: &Path) {
    fn walk(dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && depth < 6 && e.file_name() != "objects" {
                walk(&path, depth + 1);
            } else if kind.is_file() && path.extension().is_some_and(|x| x == "lock") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    walk(git_dir, 0);
}

fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|cause| GitError::Io {
        what: format!("creating {}", dir.display()),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn repo_with_commits() -> (tempfile::TempDir, String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("a.txt"), "one").unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", "one"]);
        let first = git(&src, &["rev-parse", "HEAD"]);
        git(&src, &["tag", "-a", "v1", "-m", "v1"]);
        std::fs::write(src.join("a.txt"), "two").unwrap();
        git(&src, &["commit", "-q", "-am", "two"]);
        let second = git(&src, &["rev-parse", "HEAD"]);
        (tmp, first, second)
    }

    #[test]
    fn resolves_head_branch_tag_and_sha() {
        let (tmp, first, second) = repo_with_commits();
        let url = format!("file://{}", tmp.path().join("src").display());
        let g = Git::default();
        assert_eq!(g.resolve(&url, None).unwrap(), second);
        assert_eq!(g.resolve(&url, Some("main")).unwrap(), second);
        assert_eq!(
            g.resolve(&url, Some("v1")).unwrap(),
            first,
            "annotated tag is peeled"
        );
        assert_eq!(g.resolve(&url, Some(&first)).unwrap(), first);
        let err = g.resolve(&url, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("ref `nope` not found"), "{err}");
    }

    #[test]
    fn fetch_export_and_read_file() {
        let (tmp, first, second) = repo_with_commits();
        let url = format!("file://{}", tmp.path().join("src").display());
        let g = Git::default();
        let mirror = tmp.path().join("cache/mirror.git");
        g.fetch_commit(&url, &mirror, &first).unwrap();
        assert!(g.has_commit(&mirror, &second));
        assert_eq!(
            g.read_file(&mirror, &first, "a.txt").unwrap().unwrap(),
            b"one"
        );
        assert_eq!(g.read_file(&mirror, &first, "missing").unwrap(), None);
        let out = tmp.path().join("out");
        g.export(&mirror, &second, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "two");
        assert!(!out.join(".git").exists());
    }

    #[test]
    fn checkout_follows_commits_and_unknown_url_fails_clearly() {
        let (tmp, first, second) = repo_with_commits();
        let url = format!("file://{}", tmp.path().join("src").display());
        let g = Git::default();
        let hq = tmp.path().join("hq");
        g.checkout(&url, &hq, &first).unwrap();
        assert_eq!(std::fs::read_to_string(hq.join("a.txt")).unwrap(), "one");
        g.checkout(&url, &hq, &second).unwrap();
        assert_eq!(g.head(&hq).unwrap(), second);
        let err = g
            .resolve("file:///nonexistent/starphleet-repo", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("git ls-remote"), "{err}");
        let err = g
            .read_file(&tmp.path().join("no-such-mirror"), &first, "a.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-mirror"), "{err}");
        assert!(!err.contains("install"), "{err}");
    }

    #[test]
    fn a_checkout_cut_short_is_finished_by_the_next_one() {
        let (tmp, first, second) = repo_with_commits();
        let url = format!("file://{}", tmp.path().join("src").display());
        let g = Git::default();
        let hq = tmp.path().join("hq");
        g.checkout(&url, &hq, &first).unwrap();
        // What a git killed (or out of disk) halfway through leaves behind.
        std::fs::write(hq.join(".git/index.lock"), "").unwrap();
        std::fs::write(hq.join(".git/HEAD.lock"), "").unwrap();
        g.checkout(&url, &hq, &second).unwrap();
        assert_eq!(g.head(&hq).unwrap(), second);
        assert!(!hq.join(".git/index.lock").exists());
    }

    #[test]
    fn a_commit_whose_objects_were_half_written_is_fetched_again() {
        let (tmp, _, second) = repo_with_commits();
        let url = format!("file://{}", tmp.path().join("src").display());
        let g = Git::default();
        let hq = tmp.path().join("hq");
        std::fs::create_dir_all(&hq).unwrap();
        // A plain fetch (loose objects), then the second commit's tree lost, as a full disk
        // would leave it: the commit is there, its tree is not.
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .current_dir(&hq)
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        git(&["init", "--quiet"]);
        git(&[
            "fetch",
            "--quiet",
            &url,
            "+refs/heads/*:refs/remotes/origin/*",
        ]);
        let tree = git(&["rev-parse", &format!("{second}^{{tree}}")]);
        std::fs::remove_file(hq.join(".git/objects").join(&tree[..2]).join(&tree[2..])).unwrap();
        g.checkout(&url, &hq, &second).unwrap();
        assert_eq!(g.head(&hq).unwrap(), second);
    }

    #[test]
    fn ssh_key_checks_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(check_ssh_key(tmp.path()), Ok(None));
        let key = tmp.path().join("id_ed25519");
        std::fs::write(&key, "not a key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_ssh_key(tmp.path()).unwrap_err().0;
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = check_ssh_key(tmp.path()).unwrap_err().0;
        assert!(err.contains("not a private key"), "{err}");
    }

    #[test]
    fn cache_names_are_stable_and_distinct() {
        let a = cache_name("https://github.com/wballard/echo.git");
        assert!(a.starts_with("echo-"), "{a}");
        assert_eq!(a, cache_name("https://github.com/wballard/echo.git"));
        assert_ne!(a, cache_name("git@github.com:wballard/echo.git"));
    }

    #[test]
    fn large_files_are_read_whole() {
        let (tmp, _, _) = repo_with_commits();
        let src = tmp.path().join("src");
        // Far beyond a pipe's buffer: git blocks on a full pipe unless it is drained as it writes.
        let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("big.bin"), &big).unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", "big"]);
        let commit = git(&src, &["rev-parse", "HEAD"]);
        let g = Git::default();
        let got = g.read_file(&src, &commit, "big.bin").unwrap().unwrap();
        assert!(got == big, "read {} of {} bytes", got.len(), big.len());
    }

    #[test]
    fn ssh_command_keeps_paths_with_spaces_and_quotes_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my keys/it's \"here\"");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id ed25519");
        std::fs::write(&key, "").unwrap();
        let known_hosts = dir.join("known \\ hosts");
        let id = SshIdentity {
            key: key.clone(),
            known_hosts: known_hosts.clone(),
        };
        let cmd = ssh_command(Some(&id)).unwrap();

        // git runs the command with `sh -c`: see which words a real shell makes of it.
        let mut script = OsString::from("printf '%s\\n' ");
        script.push(&cmd);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let kh = known_hosts
            .to_str()
            .unwrap()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let expected = [
            "ssh".to_string(),
            "-i".into(),
            key.to_str().unwrap().into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            format!("UserKnownHostsFile=\"{kh}\""),
        ];
        assert_eq!(words, expected, "{cmd:?}");

        // And ssh itself reads both paths back intact (-G prints its config, connecting nowhere).
        let mut script = cmd.clone();
        script.push(" -G example.invalid");
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let config = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = config.lines().collect();
        let want_key = format!("identityfile {}", key.display());
        let want_kh = format!("userknownhostsfile {}", known_hosts.display());
        assert!(
            lines.contains(&want_key.as_str()),
            "{want_key} not in\n{config}"
        );
        assert!(
            lines.contains(&want_kh.as_str()),
            "{want_kh} not in\n{config}"
        );

        let plain = ssh_command(None).unwrap();
        assert_eq!(
            plain,
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
        );
    }

    /// A loopback TCP server that accepts connections and never answers, like a hung remote.
    struct SilentServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl SilentServer {
        fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !flag.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => held.push(conn),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            SilentServer {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for SilentServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Live (non-zombie) processes: (pid, process group, state, command line).
    fn processes() -> Vec<(u32, u32, char, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let state = fields[0].chars().next().unwrap_or('?');
            let pgrp = fields[2].parse().unwrap_or(0);
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            if state != 'Z' {
                out.push((pid, pgrp, state, cmdline));
            }
        }
        out
    }

    /// Runs `call` while recording every process whose command line mentions `needle`.
    fn watching<T>(needle: &str, call: impl FnOnce() -> T) -> (T, Vec<(u32, u32, char, String)>) {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    for p in processes() {
                        if p.3.contains(needle)
                            && !seen.iter().any(|q: &(u32, u32, char, String)| q.0 == p.0)
                        {
                            seen.push(p);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen
            });
            let result = call();
            done.store(true, Ordering::SeqCst);
            (result, watcher.join().unwrap())
        })
    }

    #[test]
    fn a_remote_that_never_answers_times_out_and_leaves_no_process() {
        let server = SilentServer::start();
        let url = format!("http://{}/app.git", server.addr);
        let g = Git::default().with_timeouts(GitTimeouts {
            ls_remote: Duration::from_secs(1),
            fetch: Duration::from_millis(1500),
            ..GitTimeouts::default()
        });

        let t = Instant::now();
        let (result, seen) = watching(&url, || g.resolve(&url, None));
        let elapsed = t.elapsed();
        let err = result.unwrap_err();
        assert!(matches!(err, GitError::TimedOut { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("git ls-remote {url} timed out after 1s")),
            "{msg}"
        );
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

        // git ran its http helper in a process group of its own, and that whole group is gone.
        assert!(
            seen.iter().any(|p| p.3.contains("remote-http")),
            "the http helper should have been seen: {seen:?}"
        );
        let own_group = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        let groups: HashSet<u32> = seen.iter().map(|p| p.1).collect();
        assert!(!groups.contains(&own_group), "{seen:?}");
        let left: Vec<_> = processes()
            .into_iter()
            .filter(|p| groups.contains(&p.1))
            .collect();
        assert!(left.is_empty(), "still running: {left:?}");

        // A fetch from it is bounded too, by the fetch timeout.
        let tmp = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let err = g
            .fetch_commit(&url, &tmp.path().join("mirror.git"), &"a".repeat(40))
            .unwrap_err();
        assert!(
            err.to_string().contains("timed out after 1s 500ms"),
            "{err}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
    }
}
