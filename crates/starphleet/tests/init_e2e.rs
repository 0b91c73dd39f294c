//! `starphleet init`, the PID 1 of every container: the app's output survives a full disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("spdisk").tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

fn wait_for(path: &Path, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.contains(text) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never appeared in {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "root tier (mounts a tmpfs): run by scripts/test"]
fn a_full_disk_drops_and_counts_output_without_failing_the_app() {
    require_root();
    let disk = SmallDisk::new("256k");
    let flag = disk.dir.path().parent().unwrap().join(unique("spflag"));
    let log = disk.path("app.stdout.log");
    let filler = disk.path("filler");
    // The app writes far more than fits, failing loudly (exit 9) if any write fails, then
    // waits for the test to free space and writes once more.
    let script = format!(
        "i=0; while [ $i -lt 20000 ]; do echo \"line $i of chatter\" || exit 9; i=$((i+1)); done; \
         echo filled >&2; while [ ! -e {flag} ]; do sleep 0.05; done; echo after-space-returned; exit 0",
        flag = flag.display()
    );
    std::fs::write(&filler, vec![b'x'; 128 * 1024]).unwrap();
    let stdout = std::fs::File::create(&log).unwrap();
    let err_log = disk.dir.path().parent().unwrap().join(unique("sperr"));
    let stderr = std::fs::File::create(&err_log).unwrap();
    let mut init = Command::new(bin())
        .args(["init", "/bin/sh", "-c", &script])
        .stdout(stdout)
        .stderr(stderr)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&err_log, "filled", Duration::from_secs(20));
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(&flag, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = init.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "init never exited");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&flag);
    let errors = std::fs::read_to_string(&err_log).unwrap_or_default();
    let _ = std::fs::remove_file(&err_log);
    assert_eq!(
        status.code(),
        Some(0),
        "the app's writes never failed: {errors}"
    );
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("line 0 of chatter"), "the start was kept");
    assert!(
        out.contains("bytes of the app's stdout were dropped"),
        "the loss is counted: {}",
        &out[out.len().saturating_sub(300)..]
    );
    assert!(out.ends_with("after-space-returned\n"), "writing resumed");
    assert!(errors.contains("the app exited with code 0"), "{errors}");
}

#[test]
fn the_app_gets_its_exit_code_and_signals() {
    let mut init = Command::new(bin())
        .args([
            "init",
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = init.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(init.id() as i32, libc::SIGTERM) };
    let status = init.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(7));
}
