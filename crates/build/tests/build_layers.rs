//! Builds run in real runc build containers and are cached by (commit, build lines).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use starphleet_build::{BuildRequest, Builder};
use starphleet_runtime::Runtime;

static N: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "spbt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct RuntimeRoot(std::path::PathBuf);
impl Drop for RuntimeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn build(
    builder: &Builder,
    tmp: &Path,
    commit: &str,
    lines: &[String],
) -> anyhow::Result<starphleet_build::Layer> {
    let export = |dest: &Path| -> anyhow::Result<()> {
        std::fs::write(dest.join("input.txt"), format!("source of {commit}\n"))?;
        Ok(())
    };
    let id = unique();
    builder.build(&BuildRequest {
        service: "svc",
        commit,
        build_lines: lines,
        env: &[
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("WHO".into(), "builder".into()),
        ],
        export: &export,
        log: &tmp.join("build.log"),
        container_id: &id,
        cgroups_path: &format!("/{id}"),
        fresh: false,
    })
}

#[test]
fn builds_once_then_reuses_the_layer_and_failures_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RuntimeRoot(Path::new("/run/starphleet-test").join(unique()));
    let builder = Builder::new(tmp.path().join("builds"), Runtime::new("runc", &root.0));
    let lines = vec![
        "cat input.txt > built.txt".to_string(),
        "echo \"by $WHO as $(id -u)\" >> built.txt".to_string(),
    ];

    let layer = build(&builder, tmp.path(), "c1", &lines).unwrap();
    assert!(!layer.cached);
    let built = std::fs::read_to_string(layer.dir.join("app/built.txt")).unwrap();
    assert_eq!(built, "source of c1\nby builder as 9000\n");
    let log = std::fs::read_to_string(tmp.path().join("build.log")).unwrap();
    assert!(log.contains("build step 2/2"), "{log}");

    let again = build(&builder, tmp.path(), "c1", &lines).unwrap();
    assert!(again.cached);
    assert_eq!(again.dir, layer.dir);

    let failing = vec!["echo compiling; echo broken >&2; exit 7".to_string()];
    let err = build(&builder, tmp.path(), "c2", &failing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited with code 7"), "{err}");
    let log = std::fs::read_to_string(tmp.path().join("build.log")).unwrap();
    assert!(log.contains("broken"), "build output is in the log: {log}");
    let entries: Vec<_> = std::fs::read_dir(tmp.path().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        std::slice::from_ref(&layer.key),
        "a failed build leaves no layer or staging dir"
    );
}
