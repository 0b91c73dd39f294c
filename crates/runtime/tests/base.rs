//! A container on a base root filesystem instead of the host's /usr.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::TestEnv;

/// A root filesystem of one static busybox, the way a base tarball unpacks.
fn busybox_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/usr/bin/busybox", dir.join("bin/busybox"))
        .expect("busybox-static is installed (scripts/deps busybox:busybox-static)");
    for applet in ["sh", "ls", "cat", "id", "test"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/motd"), "from the base\n").unwrap();
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_container_runs_on_its_base_and_sees_nothing_of_the_hosts_usr() {
    let mut env = TestEnv::new();
    let base = env.dir.join("base");
    busybox_root(&base);
    let layer = env.dir.join("layer");
    std::fs::create_dir_all(layer.join("app")).unwrap();
    std::fs::write(layer.join("app/hello.txt"), "from the app layer\n").unwrap();
    let mut spec = env.spec(
        "base",
        &[
            "/bin/sh",
            "-c",
            "cat /etc/motd /app/hello.txt; id -un; \
             if test -e /usr/bin/python3; then echo host-usr-visible; else echo no-host-usr; fi; \
             ls /usr 2>&1 | cat",
        ],
    );
    spec.base = Some(base.clone());
    spec.layers = vec![layer];
    let code = env
        .runtime
        .run_to_completion(&spec, Duration::from_secs(30))
        .unwrap();
    let out = std::fs::read_to_string(&spec.stdout).unwrap_or_default();
    let err = std::fs::read_to_string(&spec.stderr).unwrap_or_default();
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..4],
        &["from the base", "from the app layer", "app", "no-host-usr"],
        "{out}"
    );
    assert!(!out.contains("python"), "{out}");
    // The base itself is never written to.
    assert!(!base.join("app").exists());
    assert_eq!(
        std::fs::read_to_string(base.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
}
