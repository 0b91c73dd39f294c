//! Real containers under real runc: serving HTTP in their own netns, identity and
//! privileges, stop/cleanup, exit codes, cgroup stats and failure reporting.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{block_on_in, http_get, mounts_under, unique, wait_for_output, TestEnv};
use starphleet_runtime::{cgroups, net};

/// Generous: these runs take well under a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const SERVER_PY: &str = r#"
import http.server, json, os, pwd, socket, sys
port = int(os.environ["PORT"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        nnp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
        body = json.dumps({
            "uid": os.getuid(), "gid": os.getgid(), "user": pwd.getpwuid(os.getuid()).pw_name,
            "cwd": os.getcwd(), "port": os.environ.get("PORT"),
            "greeting": os.environ.get("GREETING"), "nnp": nnp,
            "hostname": socket.gethostname(), "path": self.path,
            "upstream": socket.gethostbyname("upstream.test"),
            "app_writable": os.access("/app", os.W_OK),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", port), Handler)
print(f"listening on {port}", flush=True)
print("stderr works", file=sys.stderr, flush=True)
server.serve_forever()
"#;

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn serves_http_from_its_own_netns_as_a_non_root_user() {
    let mut env = TestEnv::new();
    let (_, test_ns) = env.netns("spt");
    let layer = env.dir.join("layer");
    std::fs::create_dir_all(layer.join("app")).unwrap();
    std::fs::write(layer.join("app/server.py"), SERVER_PY).unwrap();

    // Bridge and container netns live inside the test netns: the host's links are untouched.
    let cns = unique("spc");
    env.track_netns(&cns);
    let (bridge, host_if) = (unique("spb"), unique("sph"));
    let gateway = Ipv4Addr::new(10, 88, 0, 1);
    let ip = Ipv4Addr::new(10, 88, 0, 2);
    let cpath = block_on_in(&test_ns, || async {
        net::ensure_bridge(&bridge, gateway, 24).await?;
        net::create_container_netns(&cns, &host_if, &bridge, ip, 24, gateway).await
    })
    .unwrap();

    let mut spec = env.spec("web", &["/usr/bin/python3", "server.py"]);
    spec.layers = vec![layer.clone()];
    spec.netns = Some(cpath);
    // Port 80 as uid 9000: the container's own netns allows unprivileged low ports.
    spec.env = vec![
        ("PORT".into(), "80".into()),
        ("GREETING".into(), "hello world".into()),
    ];
    spec.hosts = vec![("10.88.0.99".parse().unwrap(), "upstream.test".into())];
    spec.readonly_app = true;
    let pid = env.runtime.start(&spec).unwrap();

    let state = env.runtime.state(&spec.id).unwrap().unwrap();
    assert_eq!(state.status, "running");
    assert_eq!(state.pid, pid);
    assert!(env.runtime.list().unwrap().iter().any(|c| c.id == spec.id));

    let response = net::run_in_netns(&test_ns, || {
        http_get(SocketAddr::from((ip, 80)), "/hi", Duration::from_secs(15))
    })
    .unwrap()
    .unwrap_or_else(|e| {
        panic!(
            "GET failed: {e}\nstderr: {}",
            std::fs::read_to_string(&spec.stderr).unwrap_or_default()
        )
    });
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["uid"], 9000);
    assert_eq!(body["gid"], 9000);
    assert_eq!(body["user"], "app");
    assert_eq!(body["cwd"], "/app");
    assert_eq!(body["port"], "80");
    assert_eq!(body["greeting"], "hello world");
    assert_eq!(body["nnp"], "1");
    assert_eq!(body["hostname"], "web");
    assert_eq!(body["path"], "/hi");
    assert_eq!(body["upstream"], "10.88.0.99");
    assert_eq!(
        body["app_writable"], false,
        "readonly_app mounts /app read-only"
    );

    let out = wait_for_output(&spec.stdout, "listening", Duration::from_secs(5));
    assert!(out.contains("listening on 80"), "stdout: {out:?}");
    let err = wait_for_output(&spec.stderr, "stderr works", Duration::from_secs(5));
    assert!(err.contains("stderr works"), "stderr: {err:?}");
    assert!(
        block_on_in(&test_ns, || net::link_stats(&host_if))
            .unwrap()
            .unwrap()
            .tx_bytes
            > 0
    );

    env.runtime
        .stop(&spec.id, &spec.bundle_dir, Duration::from_millis(200))
        .unwrap();
    assert!(env.runtime.state(&spec.id).unwrap().is_none());
    assert!(!spec.bundle_dir.exists());
    assert!(mounts_under(&spec.bundle_dir).is_empty());
    assert!(spec.stdout.exists(), "stop() must keep the logs");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn runs_as_app_user_without_new_privileges_and_reports_exit_codes() {
    let mut env = TestEnv::new();
    let mut spec = env.spec(
        "id",
        &[
            "/bin/sh",
            "-c",
            "id -u; id -un; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status; \
             pwd; echo \"$GREETING\"; touch /app/written && echo app-writable; \
             touch /etc/x 2>/dev/null || echo etc-readonly; echo to-stderr >&2",
        ],
    );
    spec.env = vec![("GREETING".into(), "hi there".into())];
    assert_eq!(
        env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap(),
        0
    );
    let out = std::fs::read_to_string(&spec.stdout).unwrap();
    assert_eq!(
        out,
        "9000\napp\nNoNewPrivs:\t1\nCapEff:\t0000000000000000\n/app\nhi there\napp-writable\netc-readonly\n"
    );
    assert_eq!(
        std::fs::read_to_string(&spec.stderr).unwrap(),
        "to-stderr\n"
    );
    assert!(
        !spec.bundle_dir.exists(),
        "run_to_completion removes its bundle"
    );

    let spec = env.spec("exit3", &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(
        env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap(),
        3
    );
    assert!(env.runtime.state(&spec.id).unwrap().is_none());
    assert!(mounts_under(&spec.bundle_dir).is_empty());
    assert!(!spec.bundle_dir.exists());
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn builds_write_through_a_read_write_bind() {
    let mut env = TestEnv::new();
    let app = env.dir.join("app-src");
    std::fs::create_dir_all(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(9000), Some(9000)).unwrap();
    let mut spec = env.spec("build", &["/bin/sh", "-c", "echo built > /app/artifact"]);
    spec.binds = vec![starphleet_runtime::Bind {
        source: app.clone(),
        destination: "/app".into(),
        readonly: false,
    }];
    assert_eq!(
        env.runtime.run_to_completion(&spec, RUN_TIMEOUT).unwrap(),
        0
    );
    assert_eq!(
        std::fs::read_to_string(app.join("artifact")).unwrap(),
        "built\n"
    );
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn stop_terminates_gracefully_and_removes_container_mount_and_bundle() {
    let mut env = TestEnv::new();
    let spec = env.spec(
        "graceful",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo up; while :; do sleep 0.05; done",
        ],
    );
    env.runtime.start(&spec).unwrap();
    assert!(wait_for_output(&spec.stdout, "up", Duration::from_secs(5)).contains("up"));
    assert_eq!(mounts_under(&spec.bundle_dir).len(), 1, "the overlay root");

    let t = Instant::now();
    env.runtime
        .stop(&spec.id, &spec.bundle_dir, Duration::from_secs(20))
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a TERM-handling app must not wait out the grace: {:?}",
        t.elapsed()
    );
    assert!(std::fs::read_to_string(&spec.stdout)
        .unwrap()
        .contains("got-term"));
    assert!(env.runtime.state(&spec.id).unwrap().is_none());
    assert!(!env.runtime.list().unwrap().iter().any(|c| c.id == spec.id));
    assert!(mounts_under(&spec.bundle_dir).is_empty());
    assert!(!spec.bundle_dir.exists());

    // Stopping again, or something never started, is fine.
    env.runtime
        .stop(&spec.id, &spec.bundle_dir, Duration::ZERO)
        .unwrap();

    // An app that ignores TERM (pid 1 without a handler) is killed after the grace.
    let stubborn = env.spec("stubborn", &["/bin/sleep", "600"]);
    env.runtime.start(&stubborn).unwrap();
    let t = Instant::now();
    env.runtime
        .stop(
            &stubborn.id,
            &stubborn.bundle_dir,
            Duration::from_millis(300),
        )
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(env.runtime.state(&stubborn.id).unwrap().is_none());
    assert!(!stubborn.bundle_dir.exists());
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn cgroup_stats_of_a_running_container_are_non_zero() {
    let mut env = TestEnv::new();
    let spec = env.spec(
        "busy",
        &[
            "/usr/bin/python3",
            "-c",
            "import time\nx = [i * i for i in range(300000)]\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    let pid = env.runtime.start(&spec).unwrap();
    assert!(wait_for_output(&spec.stdout, "ready", Duration::from_secs(10)).contains("ready"));

    let stats = cgroups::stats(pid).unwrap();
    println!("{stats:?}");
    assert!(stats.cpu_usage_ns > 1_000_000, "{stats:?}");
    assert!(stats.memory_bytes > 1_000_000, "{stats:?}");
    assert!(
        stats.memory_peak_bytes.unwrap_or(1) >= stats.memory_bytes,
        "{stats:?}"
    );
    assert!(stats.pids >= 1, "{stats:?}");

    // The absolute cgroupsPath is honoured by every controller.
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in membership.lines().filter(|l| {
        let controllers = l.split(':').nth(1).unwrap_or("");
        ["memory", "cpuacct", "pids"]
            .iter()
            .any(|c| controllers.split(',').any(|x| x == *c))
    }) {
        assert!(line.ends_with(&spec.cgroups_path), "{line}");
    }

    env.runtime
        .stop(&spec.id, &spec.bundle_dir, Duration::from_millis(100))
        .unwrap();
    assert!(cgroups::stats(pid).is_err(), "the process is gone");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn failed_start_reports_runc_output_and_leaves_nothing() {
    let mut env = TestEnv::new();
    let spec = env.spec("broken", &["/nonexistent/app-binary"]);
    let err = format!("{:#}", env.runtime.start(&spec).unwrap_err());
    assert!(err.contains("/nonexistent/app-binary"), "{err}");
    assert!(env.runtime.state(&spec.id).unwrap().is_none());
    assert!(mounts_under(&spec.bundle_dir).is_empty());
    assert!(!spec.bundle_dir.exists());

    // A duplicate id is refused without touching the running container.
    let first = env.spec("dup", &["/bin/sleep", "600"]);
    env.runtime.start(&first).unwrap();
    let mut second = first.clone();
    second.bundle_dir = env.dir.join("bundles/other");
    let err = format!("{:#}", env.runtime.start(&second).unwrap_err());
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        env.runtime.state(&first.id).unwrap().unwrap().status,
        "running"
    );
    assert!(first.bundle_dir.join("config.json").exists());
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn check_explains_a_missing_binary_and_an_unused_root_lists_nothing() {
    let rt = starphleet_runtime::Runtime::new("/nonexistent/runc", "/run/starphleet-none");
    let err = format!("{:#}", rt.check().unwrap_err());
    assert!(err.contains("apt-get install runc"), "{err}");
    let version = starphleet_runtime::Runtime::new("/usr/sbin/runc", "/run/x")
        .check()
        .unwrap();
    assert!(version.contains("runc version"), "{version}");

    let env = TestEnv::new();
    assert!(env.runtime.list().unwrap().is_empty());
    assert!(env.runtime.state("sp-never-started").unwrap().is_none());
}
