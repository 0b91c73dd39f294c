//! Builds run in real runc build containers and are cached by (commit, build lines).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::{Duration, Instant};

use starphleet_build::{
    BuildError, BuildRequest, Builder, Declared, Tools, DEFAULT_BUILD_TIMEOUT,
    DEFAULT_MAX_LOG_BYTES,
};
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
) -> Result<starphleet_build::Layer, BuildError> {
    build_with(
        builder,
        tmp,
        commit,
        lines,
        DEFAULT_BUILD_TIMEOUT,
        DEFAULT_MAX_LOG_BYTES,
    )
}

fn build_with(
    builder: &Builder,
    tmp: &Path,
    commit: &str,
    lines: &[String],
    timeout: Duration,
    max_log_bytes: u64,
) -> Result<starphleet_build::Layer, BuildError> {
    let export = |dest: &Path| -> std::io::Result<()> {
        std::fs::write(dest.join("input.txt"), format!("source of {commit}\n"))
    };
    let id = unique();
    let declared = Declared {
        build: lines.to_vec(),
        start: Some("cat built.txt".into()),
        buildpacks: Vec::new(),
    };
    builder.build(&BuildRequest {
        service: "svc",
        app: "svc",
        commit,
        declared: &declared,
        tools: &Tools::default(),
        base: None,
        git: &starphleet_git::Git::default(),
        network: None,
        env: &[
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("WHO".into(), "builder".into()),
        ],
        export: &export,
        log: &tmp.join("build.log"),
        container_id: &id,
        cgroups_path: &format!("/{id}"),
        fresh: false,
        timeout,
        max_log_bytes,
    })
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
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
    assert_eq!(layer.start, "cat built.txt");
    assert_eq!(layer.start_script(), "exec cat built.txt");
    let built = std::fs::read_to_string(layer.dir.join("app/built.txt")).unwrap();
    assert_eq!(built, "source of c1\nby builder as 9000\n");
    let log = std::fs::read_to_string(tmp.path().join("build.log")).unwrap();
    assert!(log.contains("build step 2/2"), "{log}");

    let again = build(&builder, tmp.path(), "c1", &lines).unwrap();
    assert!(again.cached);
    assert_eq!(again.dir, layer.dir);
    assert_eq!(again.plan, layer.plan, "a cached layer knows its plan");
    assert_eq!(again.start, layer.start);

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

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_build_past_its_timeout_is_killed_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RuntimeRoot(Path::new("/run/starphleet-test").join(unique()));
    let runtime = Runtime::new("runc", &root.0);
    let builder = Builder::new(tmp.path().join("builds"), runtime.clone());
    let lines = vec!["echo started".to_string(), "sleep 30".to_string()];

    let t = Instant::now();
    let err = build_with(
        &builder,
        tmp.path(),
        "c3",
        &lines,
        Duration::from_secs(1),
        DEFAULT_MAX_LOG_BYTES,
    )
    .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, BuildError::TimedOut { .. }), "{err}");
    assert!(err.to_string().contains("`sleep 30`"), "{err}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        runtime.list().unwrap().is_empty(),
        "a build container is left"
    );
    assert!(
        entries(&tmp.path().join("builds")).is_empty(),
        "staging or bundle left"
    );
    let log = std::fs::read_to_string(tmp.path().join("build.log")).unwrap();
    assert!(log.contains("started"), "{log}");
    assert!(log.contains("build timeout of 1s ran out"), "{log}");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn build_output_past_the_cap_is_cut_and_the_log_stays_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RuntimeRoot(Path::new("/run/starphleet-test").join(unique()));
    let builder = Builder::new(tmp.path().join("builds"), Runtime::new("runc", &root.0));
    // About 590 kB of output against a 64 KiB cap.
    let lines = vec!["seq 1 100000".to_string(), "echo done".to_string()];
    let layer = build_with(
        &builder,
        tmp.path(),
        "c4",
        &lines,
        DEFAULT_BUILD_TIMEOUT,
        64 << 10,
    )
    .unwrap();
    assert!(layer.dir.join("app").is_dir());
    let log = std::fs::read_to_string(tmp.path().join("build.log")).unwrap();
    assert!(log.len() <= 64 << 10, "{} bytes", log.len());
    assert!(
        log.contains("build step 1/2: seq 1 100000\n1\n2\n3\n"),
        "the head is kept"
    );
    assert!(log.contains("bytes of output cut here"), "the cut is noted");
    assert!(
        log.ends_with("99999\n100000\n[svc] build step 2/2: echo done\ndone\n"),
        "the tail is kept"
    );
}
