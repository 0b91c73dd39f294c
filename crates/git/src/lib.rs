//! Git access for headquarters and app repositories through the git CLI.
//!
//! The `git` command line is used rather than a library so that every URL
//! form git accepts (`file://`, `https://`, `ssh://`, `git@host:path`) and
//! every credential setup the operator already has keeps working.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

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
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, GitError>;

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

impl Git {
    /// A git runner; `ssh` is the identity for private repositories, if any.
    pub fn new(ssh: Option<SshIdentity>) -> Self {
        Git { ssh }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.stdin(Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C");
        let ssh = match &self.ssh {
            Some(id) => format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                id.key.display(),
                id.known_hosts.display()
            ),
            None => "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new".to_string(),
        };
        cmd.env("GIT_SSH_COMMAND", ssh);
        cmd
    }

    fn run<I, S>(&self, dir: Option<&Path>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        cmd.args(&args);
        let out = cmd.output().map_err(GitError::Missing)?;
        if out.status.success() {
            Ok(out)
        } else {
            let what = format!(
                "git {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
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
        let out = self.run(None, ["ls-remote", url])?;
        let text = String::from_utf8_lossy(&out.stdout);
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
        if !dir.join("HEAD").exists() {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| GitError::Failed {
                    what: format!("create {}", parent.display()),
                    stderr: e.to_string(),
                })?;
            }
            self.run(
                None,
                [OsStr::new("init"), OsStr::new("--bare"), dir.as_os_str()],
            )?;
        }
        if self.has_commit(dir, commit) {
            return Ok(());
        }
        self.run(
            Some(dir),
            [
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "--tags",
                url,
                "+refs/heads/*:refs/heads/*",
            ],
        )?;
        if self.has_commit(dir, commit) {
            return Ok(());
        }
        // Not on any branch or tag: ask for the commit itself (servers that allow it).
        self.run(Some(dir), ["fetch", "--quiet", url, commit])?;
        Ok(())
    }

    /// True when the repository at `dir` has `commit`.
    pub fn has_commit(&self, dir: &Path, commit: &str) -> bool {
        self.run(
            Some(dir),
            ["cat-file", "-e", &format!("{commit}^{{commit}}")],
        )
        .is_ok()
    }

    /// The contents of `path` at `commit`, or `None` when the file does not exist there.
    pub fn read_file(&self, dir: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let spec = format!("{commit}:{path}");
        if self.run(Some(dir), ["cat-file", "-e", &spec]).is_err() {
            return Ok(None);
        }
        Ok(Some(
            self.run(Some(dir), ["cat-file", "blob", &spec])?.stdout,
        ))
    }

    /// Writes the tree of `commit` into `dest` (created if missing) without any `.git`.
    pub fn export(&self, dir: &Path, commit: &str, dest: &Path) -> Result<()> {
        let io = |e: std::io::Error| GitError::Failed {
            what: format!("export {commit} to {}", dest.display()),
            stderr: e.to_string(),
        };
        std::fs::create_dir_all(dest).map_err(io)?;
        // A private index keeps the mirror untouched by the checkout.
        let index = dest.with_extension("index");
        let mut cmd = self.command();
        cmd.current_dir(dir)
            .env("GIT_INDEX_FILE", &index)
            .arg("--work-tree")
            .arg(dest)
            .args(["checkout", "--force", commit, "--", "."]);
        let out = cmd.output().map_err(GitError::Missing)?;
        let _ = std::fs::remove_file(&index);
        if !out.status.success() {
            return Err(GitError::Failed {
                what: format!("git checkout {commit} into {}", dest.display()),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Brings the working checkout at `dir` to exactly `commit` of `url` (used for HQ).
    pub fn checkout(&self, url: &str, dir: &Path, commit: &str) -> Result<()> {
        if !dir.join(".git").exists() {
            std::fs::create_dir_all(dir).map_err(|e| GitError::Failed {
                what: format!("create {}", dir.display()),
                stderr: e.to_string(),
            })?;
            self.run(Some(dir), ["init", "--quiet"])?;
        }
        if !self.has_commit(dir, commit) {
            self.run(
                Some(dir),
                [
                    "fetch",
                    "--quiet",
                    "--force",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
            )?;
            if !self.has_commit(dir, commit) {
                self.run(Some(dir), ["fetch", "--quiet", url, commit])?;
            }
        }
        self.run(Some(dir), ["reset", "--quiet", "--hard", commit])?;
        self.run(Some(dir), ["clean", "--quiet", "-fdx"])?;
        Ok(())
    }

    /// The commit currently checked out at `dir`, if any.
    pub fn head(&self, dir: &Path) -> Option<String> {
        let out = self.run(Some(dir), ["rev-parse", "HEAD"]).ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
