//! Resource limits under real runc: memory (OOM kill, seen in the cgroup stats), pids
//! (a fork bomb), CPU quota, /tmp size; bounded foreground runs; cgroup tree removal.

mod common;

use std::time::{Duration, Instant};

use common::{mounts_under, unique, wait_for_output, TestEnv};
use starphleet_runtime::{cgroups, CgroupError, Limits, RuntimeError, DEFAULT_TMP_BYTES};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const PYTHON: &str = "/usr/bin/python3";

/// Allocates and touches 200 MB.
const HOG: &str = "x = b'\\x01' * (200 << 20)\nprint('survived', flush=True)";

fn memory_limited(mb: u64) -> Limits {
    Limits {
        memory_bytes: Some(mb << 20),
        ..Limits::default()
    }
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_process_over_its_memory_limit_is_oom_killed_and_the_stats_show_it() {
    let mut env = TestEnv::new();

    // As the container's init: the whole run ends with SIGKILL (128 + 9).
    let mut spec = env.spec("hog", &[PYTHON, "-c", HOG]);
    spec.limits = memory_limited(64);
    let code = env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap();
    assert_eq!(code, 137, "killed by signal 9");
    let out = std::fs::read_to_string(&spec.stdout).unwrap_or_default();
    assert!(!out.contains("survived"), "{out}");

    // Under a shell that outlives it, so its cgroup can be read after the kill.
    let script = format!("{PYTHON} -c \"$HOG\"; echo exit=$?; exec sleep 600");
    let mut spec = env.spec("hog2", &["/bin/sh", "-c", &script]);
    spec.env = vec![("HOG".into(), HOG.into())];
    spec.limits = memory_limited(64);
    let pid = env.runtime.start(&spec).unwrap();
    let out = wait_for_output(&spec.stdout, "exit=", Duration::from_secs(30));
    assert!(out.contains("exit=137"), "stdout: {out:?}");
    let stats = cgroups::stats(pid).unwrap();
    println!("{stats:?}");
    assert!(stats.oom_kills.is_some_and(|n| n >= 1), "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, Some(64 << 20), "{stats:?}");
    assert!(stats.memory_bytes < 64 << 20, "{stats:?}");

    // Without a limit the same cgroup files say so.
    let free = env.spec("free", &["/bin/sleep", "600"]);
    let pid = env.runtime.start(&free).unwrap();
    let stats = cgroups::stats(pid).unwrap();
    assert_eq!(stats.memory_limit_bytes, None, "{stats:?}");
    assert_eq!(stats.oom_kills, Some(0), "{stats:?}");
}

/// Tries 200 forks; children sleep. Prints how many worked.
const FORK_BOMB: &str = r#"
import os, time
ok = failed = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    ok += 1
print(f"forked {ok} failed {failed}", flush=True)
time.sleep(600)
"#;

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_pids_limit_stops_a_fork_bomb_and_the_cpu_quota_is_applied() {
    let mut env = TestEnv::new();
    let mut spec = env.spec("bomb", &[PYTHON, "-c", FORK_BOMB]);
    spec.limits = Limits {
        pids: Some(16),
        cpu_millis: Some(500),
        ..Limits::default()
    };
    let pid = env.runtime.start(&spec).unwrap();
    let out = wait_for_output(&spec.stdout, "forked", Duration::from_secs(30));
    let words: Vec<&str> = out.split_whitespace().collect();
    let (ok, failed): (u32, u32) = match words.as_slice() {
        ["forked", ok, "failed", failed, ..] => (ok.parse().unwrap(), failed.parse().unwrap()),
        _ => panic!("stdout: {out:?}"),
    };
    assert!(
        ok <= 15,
        "{ok} forks succeeded under a limit of 16 (init is one)"
    );
    assert!(failed >= 185, "{failed} forks failed");
    let stats = cgroups::stats(pid).unwrap();
    assert!(stats.pids <= 16, "{stats:?}");
    // The host is unharmed: it still starts processes.
    assert!(std::process::Command::new("/bin/true")
        .status()
        .unwrap()
        .success());

    // 500 millis = half a core: a quota of half the period.
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let quota = membership.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctl.split(',').any(|c| c == "cpu") {
            let dir = format!("/sys/fs/cgroup/{ctl}{path}");
            let quota = std::fs::read_to_string(format!("{dir}/cpu.cfs_quota_us")).ok()?;
            let period = std::fs::read_to_string(format!("{dir}/cpu.cfs_period_us")).ok()?;
            Some(format!("{} {}", quota.trim(), period.trim()))
        } else if ctl.is_empty() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).ok()?;
            Some(max.trim().to_string())
        } else {
            None
        }
    });
    assert_eq!(quota.as_deref(), Some("50000 100000"), "{membership}");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn tmp_is_a_tmpfs_of_its_size_and_writing_past_it_fails() {
    let mut env = TestEnv::new();
    let script = "dd if=/dev/zero of=/tmp/small bs=1M count=2 2>/dev/null && echo small-ok; \
                  dd if=/dev/zero of=/tmp/big bs=1M count=8 2>&1; echo dd=$?";
    let mut spec = env.spec("tmp", &["/bin/sh", "-c", script]);
    spec.limits.tmp_bytes = Some(4 << 20);
    assert_eq!(
        env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap(),
        0
    );
    let out = std::fs::read_to_string(&spec.stdout).unwrap();
    assert!(out.contains("small-ok"), "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("dd=1"), "{out}");

    // The default size.
    let spec = env.spec("tmpdefault", &["/bin/sh", "-c", "df -k /tmp | tail -n 1"]);
    assert_eq!(
        env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap(),
        0
    );
    let out = std::fs::read_to_string(&spec.stdout).unwrap();
    let size_kib = out.split_whitespace().nth(1).unwrap_or_default();
    assert_eq!(size_kib, (DEFAULT_TMP_BYTES / 1024).to_string(), "{out}");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_run_past_its_timeout_is_killed_and_removed() {
    let mut env = TestEnv::new();
    let spec = env.spec("slow", &["/bin/sleep", "30"]);
    let t = Instant::now();
    let err = env
        .runtime
        .run_to_completion(&spec, Duration::from_secs(1))
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, RuntimeError::TimedOut { .. }), "{err}");
    assert!(
        err.to_string().contains("did not finish within 1s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(env.runtime.state(&spec.id).unwrap().is_none());
    assert!(env.runtime.list().unwrap().is_empty());
    assert!(mounts_under(&spec.bundle_dir).is_empty());
    assert!(!spec.bundle_dir.exists());
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn output_can_be_taken_as_it_comes() {
    let mut env = TestEnv::new();
    // Far more than a pipe holds: the reader must keep up while the container writes.
    let spec = env.spec(
        "piped",
        &[
            "/bin/sh",
            "-c",
            // runc relays stdout and stderr separately: pauses keep their order certain.
            "echo first; sleep 0.2; echo second >&2; sleep 0.2; seq 1 200000; sleep 0.2; \
             echo last >&2",
        ],
    );
    let mut got = Vec::new();
    let code = env
        .runtime
        .run_to_completion_with_output(&spec, RUN_TIMEOUT, &mut |chunk| {
            got.extend_from_slice(chunk)
        })
        .unwrap();
    assert_eq!(code, 0);
    let text = String::from_utf8(got).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200_003);
    assert_eq!(&lines[..3], ["first", "second", "1"]);
    assert_eq!(&lines[200_001..], ["200000", "last"]);
    assert!(!spec.stdout.exists(), "the spec's files are not used");
}

/// Cgroup directories made by a test, removed again whatever happens.
struct CgroupGuard(String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = cgroups::remove_tree(&self.0);
    }
}

fn cgroup_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| left.split(' ').nth(4).map(String::from))?
        })
        .collect()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn remove_tree_removes_a_cgroup_and_its_children_everywhere() {
    let name = format!("/starphleet-test-{}", unique("cgt"));
    let _guard = CgroupGuard(name.clone());
    let mounts = cgroup_mounts();
    assert!(!mounts.is_empty());
    for m in &mounts {
        std::fs::create_dir_all(format!("{m}{name}/a/b")).unwrap();
        std::fs::create_dir_all(format!("{m}{name}/c")).unwrap();
    }

    // A process in one child keeps that child (and so its parents) busy; the rest goes.
    let busy_mount = mounts
        .iter()
        .find(|m| m.ends_with("/pids") || m.ends_with("/unified") || m.as_str() == "/sys/fs/cgroup")
        .unwrap_or(&mounts[0])
        .clone();
    let mut sleeper = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(
        format!("{busy_mount}{name}/c/cgroup.procs"),
        sleeper.id().to_string(),
    )
    .unwrap();
    let err = cgroups::remove_tree(&name).unwrap_err();
    assert!(matches!(err, CgroupError::Remove { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{busy_mount}{name}")),
        "{err}"
    );
    for m in &mounts {
        assert!(
            !std::path::Path::new(&format!("{m}{name}/a")).exists(),
            "{m}"
        );
        assert_eq!(
            std::path::Path::new(&format!("{m}{name}")).exists(),
            *m == busy_mount,
            "{m}"
        );
    }

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // The busy mount still has the parent and c.
    assert_eq!(cgroups::remove_tree(&name).unwrap(), 2);
    for m in &mounts {
        assert!(!std::path::Path::new(&format!("{m}{name}")).exists(), "{m}");
    }
    assert_eq!(cgroups::remove_tree(&name).unwrap(), 0, "absent is fine");
}
