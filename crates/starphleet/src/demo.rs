//! `starphleet demo`: local git repositories for an HQ and the echo app, generated from `examples/`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const ECHO_SERVER: &str = include_str!("../../../examples/echo/server.py");
const ECHO_STARPHLEET: &str = include_str!("../../../examples/echo/Starphleet");
const ECHO_ORDER: &str = include_str!("../../../examples/hq/echo.orders");

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "starphleet demo")
        .env("GIT_AUTHOR_EMAIL", "demo@starphleet.invalid")
        .env("GIT_COMMITTER_NAME", "starphleet demo")
        .env("GIT_COMMITTER_EMAIL", "demo@starphleet.invalid")
        .output()
        .context("running git (install it with `apt-get install git`)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes `files` into a git repository at `dir` and commits them if anything changed.
fn commit_repo(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    if !dir.join(".git").exists() {
        git(dir, &["init", "--quiet", "--initial-branch", "main"])?;
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    git(dir, &["add", "--all"])?;
    let clean = Command::new("git")
        .current_dir(dir)
        .args(["diff", "--cached", "--quiet"])
        .status()?
        .success();
    let has_head = Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .output()?
        .status
        .success();
    if !clean || !has_head {
        git(
            dir,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                "starphleet demo",
            ],
        )?;
    }
    Ok(())
}

/// Creates (or updates) the demo repositories under `state_dir/demo` and returns the HQ URL.
pub fn prepare(state_dir: &Path, port: u16) -> Result<String> {
    let root = state_dir.join("demo");
    let echo = root.join("echo");
    let hq = root.join("hq");
    commit_repo(
        &echo,
        &[
            ("server.py", ECHO_SERVER.to_string()),
            ("Starphleet", ECHO_STARPHLEET.to_string()),
        ],
    )?;
    let order = ECHO_ORDER
        .replace("{{ECHO_URL}}", &format!("file://{}", echo.display()))
        .replace("{{PORT}}", &port.to_string());
    commit_repo(&hq, &[("echo.orders", order)])?;
    Ok(format!("file://{}", hq.display()))
}
