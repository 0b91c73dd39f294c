//! Heroku classic buildpacks: fetched with git into `<state>/buildpacks`, run in the build
//! container as `bin/detect`, `bin/compile` and `bin/release` (see the plan's steps).

use std::path::{Path, PathBuf};

use starphleet_git::{cache_name, Git};
use starphleet_orders::GitSource;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{io_err, BuildError, Result};

/// A buildpack ready to mount.
pub(crate) struct Fetched {
    /// `<buildpacks>/trees/<commit>`: the buildpack's tree.
    pub dir: PathBuf,
    /// The commit its ref resolved to.
    pub commit: String,
}

/// Resolves `source`'s ref and makes its tree ready under `store`; a tree once exported is
/// reused by every build that resolves to the same commit.
pub(crate) fn fetch(store: &Path, git: &Git, source: &GitSource) -> Result<Fetched> {
    let failed = |cause| BuildError::BuildpackFetch {
        buildpack: source.to_string(),
        cause,
    };
    let commit = git
        .resolve(&source.url, source.reference.as_deref())
        .map_err(failed)?;
    let dir = store.join("trees").join(&commit);
    if dir.is_dir() {
        return Ok(Fetched { dir, commit });
    }
    let mirrors = store.join("git");
    std::fs::create_dir_all(&mirrors).map_err(io_err("creating", &mirrors))?;
    let name = cache_name(&source.url);
    // Builds of different apps may fetch the same buildpack at once: one git at a time per mirror.
    let lock_path = mirrors.join(format!("{name}.lock"));
    let lock_file = std::fs::File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("locking", &lock_path)(e.into()))?;
    if dir.is_dir() {
        return Ok(Fetched { dir, commit });
    }
    let mirror = mirrors.join(&name);
    git.fetch_commit(&source.url, &mirror, &commit)
        .map_err(failed)?;
    let tmp = store
        .join("trees")
        .join(format!(".{commit}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = git.export(&mirror, &commit, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(failed(e));
    }
    std::fs::rename(&tmp, &dir).map_err(io_err("publishing buildpack", &dir))?;
    Ok(Fetched { dir, commit })
}

/// Writes the Heroku ENV_DIR: one file per variable, named after it, holding its value.
pub(crate) fn write_env_dir(dir: &Path, env: &[(String, String)]) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    for (key, value) in env {
        // A name that is no file name cannot be passed this way; buildpacks never read one.
        if key.is_empty() || key.contains('/') || key == "." || key == ".." {
            continue;
        }
        let path = dir.join(key);
        std::fs::write(&path, value).map_err(io_err("writing", &path))?;
    }
    Ok(())
}

/// `default_process_types.web` of a `bin/release` output, if it names one.
pub(crate) fn release_web(yaml: &str) -> Option<String> {
    let docs = YamlLoader::load_from_str(yaml).ok()?;
    let web = &docs.first()?["default_process_types"]["web"];
    match web {
        Yaml::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_names_the_web_process() {
        let out = "---\naddons: []\nconfig_vars:\n  PATH: /app/bin\ndefault_process_types:\n  web: \"node server.js --port $PORT\"\n  worker: node w.js\n";
        assert_eq!(
            release_web(out).as_deref(),
            Some("node server.js --port $PORT")
        );
        assert_eq!(release_web("--- {}\n"), None);
        assert_eq!(release_web("default_process_types:\n  worker: x\n"), None);
        assert_eq!(release_web(""), None);
        assert_eq!(release_web("default_process_types: [unclosed"), None);
    }

    #[test]
    fn the_env_dir_has_one_file_per_variable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("env");
        write_env_dir(
            &dir,
            &[
                ("GREETING".into(), "hello world".into()),
                ("a/b".into(), "skipped".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("GREETING")).unwrap(),
            "hello world"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
