//! What a container is ([`ContainerSpec`]) and how its OCI bundle is laid out on disk.
//!
//! Bundle layout (all under `bundle_dir`):
//! `config.json`, `rootfs/` (overlay mount point), `upper/` + `work/` (the throw-away
//! writable layer), `skeleton/` (the lowest layer: mount points and merged-usr symlinks),
//! `etc/` (generated, bound read-only at `/etc`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capabilities,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::error::RuntimeError;
use crate::mounts::{mount_overlay, mountinfo};

type Result<T> = std::result::Result<T, RuntimeError>;

/// Size of a container's `/tmp` (a tmpfs) unless [`Limits::tmp_bytes`] says otherwise.
///
/// Without a size a tmpfs may grow to half the host's memory; 64 MiB is plenty for the
/// scratch files servers write, and a limit makes a runaway writer fail with ENOSPC.
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;

/// The CPU accounting period used for [`Limits::cpu_millis`], in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Resource limits of one container. `None` leaves that resource unlimited.
///
/// The default limits nothing except `/tmp`, which gets [`DEFAULT_TMP_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory (anonymous + page cache + tmpfs) before the kernel OOM-kills in the container;
    /// swap is limited to the same total, so the limit really holds.
    pub memory_bytes: Option<u64>,
    /// Processes and threads at once; a fork past it fails with EAGAIN.
    pub pids: Option<i64>,
    /// CPU time per wall time, in thousandths of a core: 1000 = one core, 500 = half a core.
    pub cpu_millis: Option<u64>,
    /// Size of the `/tmp` tmpfs; `None` is the kernel's default (half the host's memory).
    pub tmp_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: None,
            pids: None,
            cpu_millis: None,
            tmp_bytes: Some(DEFAULT_TMP_BYTES),
        }
    }
}

/// Everything needed to run one container.
///
/// `Default` gives empty values, so callers can name what they set and write
/// `..Default::default()` for the rest; [`Runtime::start`](crate::Runtime::start) checks
/// that the required fields (id, args, absolute paths) are filled in.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// Unique per machine, e.g. `sp-a1b2c3-echo-7f3e21`.
    pub id: String,
    /// Created by `start()`: config.json, rootfs/ (overlay mount point), upper/, work/, etc/.
    pub bundle_dir: PathBuf,
    /// Read-only lower dirs, top first; the crate adds its own skeleton as the lowest layer.
    pub layers: Vec<PathBuf>,
    /// The process to run, e.g. `["/bin/sh", "-c", "exec python3 server.py"]`.
    pub args: Vec<String>,
    /// Environment; `PATH` and `HOME` defaults are added when missing.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container, e.g. `/app`.
    pub cwd: String,
    /// Non-root uid/gid the process runs as; the generated /etc/passwd names it `app`.
    pub user: (u32, u32),
    /// The container's host name (own UTS namespace).
    pub hostname: String,
    /// `Some(path)` joins this pre-made netns; `None` shares the caller's network namespace.
    pub netns: Option<PathBuf>,
    /// Extra /etc/hosts lines (localhost lines are always present).
    pub hosts: Vec<(IpAddr, String)>,
    /// Extra bind mounts, e.g. the app dir read-write at /app for builds.
    pub binds: Vec<Bind>,
    /// Absolute cgroup path, e.g. `/starphleet-<ship>/<id>`.
    pub cgroups_path: String,
    /// File the container's stdout is appended to (must be outside `bundle_dir`).
    pub stdout: PathBuf,
    /// File the container's stderr is appended to (must be outside `bundle_dir`).
    pub stderr: PathBuf,
    /// Mounts `/app` read-only over the layers (only when some layer provides `app/`).
    pub readonly_app: bool,
    /// Memory, process, CPU and `/tmp` limits.
    pub limits: Limits,
    /// A root filesystem (an unpacked base tarball) to run on instead of the host's `/usr`,
    /// `/bin`, `/lib*` and `/etc` dirs; `None` binds the host's read-only (the default base).
    /// It sits under `layers`; only `hosts`, `hostname`, `resolv.conf`, `passwd` and `group`
    /// are generated over its `/etc` (the last two keep its own entries and add the app user).
    pub base: Option<PathBuf>,
}

/// An extra bind mount into the container.
#[derive(Clone, Debug)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    /// Mount read-only.
    pub readonly: bool,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Top-level host entries that are symlinks on merged-usr systems and real dirs elsewhere.
const HOST_ROOT_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host /etc entries worth sharing read-only: TLS roots and the alternatives symlink farm
/// that many /usr/bin commands point into.
const HOST_ETC_DIRS: &[&str] = &["ssl", "ca-certificates", "alternatives"];

/// The /etc files generated over a base's own /etc.
const BASE_ETC_FILES: &[&str] = &["passwd", "group", "hosts", "hostname", "resolv.conf"];

impl ContainerSpec {
    pub(crate) fn rootfs(&self) -> PathBuf {
        self.bundle_dir.join("rootfs")
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let id_ok = !self.id.is_empty()
            && self
                .id
                .chars()
                // What runc accepts (`^[\w+-.]+$`).
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
        if !id_ok {
            return invalid(format!(
                "container id {:?} must be non-empty ASCII letters, digits, '-', '_', '.' or '+'",
                self.id
            ));
        }
        if self.user.0 == 0 {
            return invalid(format!(
                "container {}: user {:?} must be a non-root uid (apps never run as root)",
                self.id, self.user
            ));
        }
        if self.args.is_empty() {
            return invalid(format!(
                "container {}: no command to run (args is empty)",
                self.id
            ));
        }
        if !self.cwd.starts_with('/') {
            return invalid(format!(
                "container {}: cwd {:?} must be absolute",
                self.id, self.cwd
            ));
        }
        if !self.cgroups_path.starts_with('/') {
            return invalid(format!(
                "container {}: cgroups_path {:?} must be absolute, or runc nests it under its caller's cgroup",
                self.id,
                self.cgroups_path
            ));
        }
        if !self.bundle_dir.is_absolute() {
            return invalid(format!(
                "container {}: bundle_dir {} must be absolute",
                self.id,
                self.bundle_dir.display()
            ));
        }
        for log in [&self.stdout, &self.stderr] {
            if log.starts_with(&self.bundle_dir) {
                return invalid(format!(
                    "container {}: log file {} must live outside the bundle dir, which stop() removes",
                    self.id,
                    log.display()
                ));
            }
        }
        for bind in &self.binds {
            if !bind.destination.starts_with('/') {
                return invalid(format!(
                    "container {}: bind destination {:?} must be absolute",
                    self.id, bind.destination
                ));
            }
        }
        if let Some(base) = &self.base {
            if !base.is_absolute() || !base.join("etc").is_dir() {
                return invalid(format!(
                    "container {}: base {} must be an absolute path to an unpacked root filesystem (with an etc/ dir)",
                    self.id,
                    base.display()
                ));
            }
        }
        self.validate_limits()
    }

    /// Refuses limits the kernel or runc would reject later with a vaguer message.
    fn validate_limits(&self) -> Result<()> {
        let l = &self.limits;
        let too_big = |v: u64| i64::try_from(v).is_err();
        let problem = if l.memory_bytes.is_some_and(|m| m < 1 << 20 || too_big(m)) {
            Some("limits.memory_bytes must be at least 1 MiB (1048576) and below 2^63")
        } else if l.pids.is_some_and(|p| p < 1) {
            Some("limits.pids must be at least 1")
        } else if l
            .cpu_millis
            .is_some_and(|c| c < 10 || too_big(c.saturating_mul(CPU_PERIOD_US / 1000)))
        {
            Some("limits.cpu_millis must be at least 10 (1% of a core); 1000 is one core")
        } else if l.tmp_bytes == Some(0) {
            Some("limits.tmp_bytes must be above 0; use None for the kernel's default size")
        } else {
            None
        };
        match problem {
            Some(p) => invalid(format!("container {}: {p}", self.id)),
            None => Ok(()),
        }
    }

    /// Lays out the bundle, mounts the overlay root and writes config.json.
    ///
    /// The caller has validated the spec; on error it cleans up (unmount + remove `bundle_dir`).
    pub(crate) fn prepare_bundle(&self) -> Result<()> {
        let b = &self.bundle_dir;
        fs::create_dir_all(b)
            .map_err(|e| RuntimeError::io(format!("creating bundle dir {}", b.display()), e))?;
        for sub in ["rootfs", "upper", "work"] {
            let dir = b.join(sub);
            fs::create_dir(&dir).map_err(|e| io_at("creating", &dir, e))?;
        }
        let host_dirs = self.write_skeleton(&b.join("skeleton"))?;
        let etc_dirs = self.write_etc(&b.join("etc"))?;

        let mut lowers = self.layers.clone();
        lowers.extend(self.base.clone());
        lowers.push(b.join("skeleton"));
        mount_overlay(&lowers, &b.join("upper"), &b.join("work"), &self.rootfs())?;

        let spec = self
            .oci_spec(&host_dirs, &etc_dirs, swap_is_accounted())
            .map_err(|cause| RuntimeError::Config {
                id: self.id.clone(),
                cause,
            })?;
        let config = b.join("config.json");
        let json = serde_json::to_vec(&spec).map_err(|e| io_at("serializing", &config, e))?;
        fs::write(&config, json).map_err(|e| io_at("writing", &config, e))?;
        Ok(())
    }

    /// Creates the lowest layer: mount points, writable scratch dirs and merged-usr symlinks.
    /// Returns the host top-level dirs that are real directories and must be bound instead.
    fn write_skeleton(&self, dir: &Path) -> Result<Vec<&'static str>> {
        let mkdir = |rel: &str, mode: u32| -> Result<()> {
            let path = dir.join(rel);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&path)
                .map_err(|e| io_at("creating", &path, e))?;
            // The umask may have trimmed the mode; sticky world-writable dirs need it exact.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| io_at("setting the mode of", &path, e))?;
            Ok(())
        };
        for d in ["usr", "proc", "dev", "sys", "etc", "run", "var"] {
            mkdir(d, 0o755)?;
        }
        mkdir("tmp", 0o1777)?;
        mkdir("var/tmp", 0o1777)?;
        mkdir("root", 0o700)?;
        // The app's own dir, writable by the app even when no layer provides one.
        mkdir("app", 0o755)?;
        let app = dir.join("app");
        std::os::unix::fs::chown(&app, Some(self.user.0), Some(self.user.1))
            .map_err(|e| io_at("chown", &app, e))?;

        let mut bound = Vec::new();
        if self.base.is_some() {
            // The base brings its own /bin, /lib, ...: nothing of the host's is bound.
            return Ok(bound);
        }
        for name in HOST_ROOT_DIRS {
            let host = Path::new("/").join(name);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&host).map_err(|e| io_at("reading", &host, e))?;
                    let link = dir.join(name);
                    symlink(target, &link).map_err(|e| io_at("creating", &link, e))?;
                }
                Ok(m) if m.is_dir() => {
                    mkdir(name, 0o755)?;
                    bound.push(*name);
                }
                _ => {}
            }
        }
        Ok(bound)
    }

    /// Writes the generated /etc and returns the host /etc dirs to bind read-only into it.
    fn write_etc(&self, dir: &Path) -> Result<Vec<&'static str>> {
        fs::create_dir(dir).map_err(|e| io_at("creating", dir, e))?;
        let (uid, gid) = self.user;
        let write = |name: &str, text: &str| -> Result<()> {
            let path = dir.join(name);
            fs::write(&path, text).map_err(|e| io_at("writing", &path, e))
        };
        let base_etc = self.base.as_ref().map(|b| b.join("etc"));
        let base_file = |name: &str| {
            base_etc
                .as_ref()
                .and_then(|etc| fs::read_to_string(etc.join(name)).ok())
        };
        let passwd = match base_file("passwd") {
            Some(text) => with_entry(
                &text,
                "app",
                uid,
                &format!("app:x:{uid}:{gid}:app:/app:/bin/sh"),
            ),
            None => format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 app:x:{uid}:{gid}:app:/app:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        };
        write("passwd", &passwd)?;
        let group = match base_file("group") {
            Some(text) => with_entry(&text, "app", gid, &format!("app:x:{gid}:")),
            None => format!("root:x:0:\napp:x:{gid}:\nnogroup:x:65534:\n"),
        };
        write("group", &group)?;
        write("hostname", &format!("{}\n", self.hostname))?;
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            self.hostname
        );
        for (ip, name) in &self.hosts {
            let _ = writeln!(hosts, "{ip}\t{name}");
        }
        write("hosts", &hosts)?;
        write("resolv.conf", &resolv_conf(self.netns.is_some()))?;
        if self.base.is_some() {
            // Everything else in /etc is the base's own.
            return Ok(Vec::new());
        }
        // Copied, not bound: each is small, and a copy keeps the host's file out of reach.
        for name in [
            "ld.so.cache",
            "nsswitch.conf",
            "services",
            "protocols",
            "mime.types",
        ] {
            let host = Path::new("/etc").join(name);
            if host.is_file() {
                fs::copy(&host, dir.join(name)).map_err(|e| io_at("copying", &host, e))?;
            }
        }
        if let Ok(target) = fs::read_link("/etc/localtime") {
            let link = dir.join("localtime");
            symlink(target, &link).map_err(|e| io_at("creating", &link, e))?;
        }
        let mut bound = Vec::new();
        for name in HOST_ETC_DIRS {
            if Path::new("/etc").join(name).is_dir() {
                let sub = dir.join(name);
                fs::create_dir(&sub).map_err(|e| io_at("creating", &sub, e))?;
                bound.push(*name);
            }
        }
        Ok(bound)
    }

    /// The OCI config; `swap_accounted` says whether the kernel can limit swap (see
    /// [`swap_is_accounted`]).
    fn oci_spec(
        &self,
        host_dirs: &[&str],
        etc_dirs: &[&str],
        swap_accounted: bool,
    ) -> std::result::Result<Spec, OciSpecError> {
        let (uid, gid) = self.user;
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (key, default) in [("PATH", DEFAULT_PATH), ("HOME", "/app")] {
            if !self.env.iter().any(|(k, _)| k == key) {
                env.push(format!("{key}={default}"));
            }
        }
        // The app needs no capability; runc does its setup before dropping them.
        let none = Capabilities::new();
        let no_caps = LinuxCapabilitiesBuilder::default()
            .bounding(none.clone())
            .effective(none.clone())
            .inheritable(none.clone())
            .permitted(none.clone())
            .ambient(none)
            .build()?;
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .additional_gids(vec![gid])
                    .build()?,
            )
            .args(self.args.clone())
            .env(env)
            .cwd(&self.cwd)
            .no_new_privileges(true)
            .capabilities(no_caps)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(nofile_limit())
                .hard(nofile_limit())
                .build()?])
            .build()?;

        let ro_bind =
            |src: &Path, dst: &str, extra: &[&str]| -> std::result::Result<Mount, OciSpecError> {
                let options: Vec<String> = ["rbind", "ro", "nosuid", "nodev"]
                    .iter()
                    .chain(extra)
                    .map(|s| s.to_string())
                    .collect();
                MountBuilder::default()
                    .destination(dst)
                    .typ("bind")
                    .source(src)
                    .options(options)
                    .build()
            };
        let mut mounts = get_default_mounts();
        if self.base.is_some() {
            for name in BASE_ETC_FILES {
                let file = format!("/etc/{name}");
                mounts.push(ro_bind(
                    &self.bundle_dir.join("etc").join(name),
                    &file,
                    &["noexec"],
                )?);
            }
        } else {
            mounts.push(ro_bind(Path::new("/usr"), "/usr", &[])?);
            for name in host_dirs {
                let path = Path::new("/").join(name);
                mounts.push(ro_bind(&path, &path.to_string_lossy(), &[])?);
            }
            mounts.push(ro_bind(&self.bundle_dir.join("etc"), "/etc", &["noexec"])?);
            for name in etc_dirs {
                let path = Path::new("/etc").join(name);
                mounts.push(ro_bind(&path, &path.to_string_lossy(), &["noexec"])?);
            }
        }
        let mut tmp_options: Vec<String> =
            ["nosuid", "nodev", "mode=1777"].map(String::from).to_vec();
        if let Some(size) = self.limits.tmp_bytes {
            tmp_options.push(format!("size={size}"));
        }
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(tmp_options)
                .build()?,
        );
        if self.readonly_app && self.layers.iter().any(|l| l.join("app").is_dir()) {
            // Bound from the merged root so the app sees its layers' /app, minus write access.
            mounts.push(ro_bind(&self.rootfs().join("app"), "/app", &[])?);
        }
        for bind in &self.binds {
            let mode = if bind.readonly { "ro" } else { "rw" };
            mounts.push(
                MountBuilder::default()
                    .destination(&bind.destination)
                    .typ("bind")
                    .source(&bind.source)
                    .options(
                        ["rbind", mode, "nosuid", "nodev"]
                            .map(String::from)
                            .to_vec(),
                    )
                    .build()?,
            );
        }

        let mut namespaces = Vec::new();
        for typ in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ] {
            namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
        }
        let mut sysctl = HashMap::new();
        if let Some(path) = &self.netns {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path)
                    .build()?,
            );
            // The netns is the container's own: let the non-root app bind any port in it.
            sysctl.insert(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            );
        }
        let mut resources =
            LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?]);
        // validate() has checked that every value fits the signed fields.
        let limits = &self.limits;
        if let Some(bytes) = limits.memory_bytes {
            let mut memory = LinuxMemoryBuilder::default().limit(bytes as i64);
            if swap_accounted {
                // memory + swap = memory: no swap at all, or the limit would leak into swap.
                memory = memory.swap(bytes as i64);
            }
            resources = resources.memory(memory.build()?);
        }
        if let Some(pids) = limits.pids {
            resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
        }
        if let Some(millis) = limits.cpu_millis {
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota((millis * (CPU_PERIOD_US / 1000)) as i64)
                    .period(CPU_PERIOD_US)
                    .build()?,
            );
        }
        let resources = resources.build()?;
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .cgroups_path(&self.cgroups_path)
            .resources(resources)
            .sysctl(sysctl)
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .build()?;

        SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(false)
                    .build()?,
            )
            .hostname(&self.hostname)
            .process(process)
            .mounts(mounts)
            .linux(linux)
            .build()
    }
}

/// A passwd or group file with `entry` for `name`/`id` in place of any line naming either.
fn with_entry(text: &str, name: &str, id: u32, entry: &str) -> String {
    let id = id.to_string();
    let mut out: String = text
        .lines()
        .filter(|l| {
            let mut fields = l.split(':');
            let n = fields.next();
            let i = fields.nth(1);
            n != Some(name) && i != Some(id.as_str())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(entry);
    out.push('\n');
    out
}

fn invalid<T>(message: String) -> Result<T> {
    Err(RuntimeError::InvalidSpec(message))
}

fn io_at(action: &str, path: &Path, cause: impl Into<std::io::Error>) -> RuntimeError {
    RuntimeError::io(format!("{action} {}", path.display()), cause)
}

/// Whether runc can be given a swap limit: on cgroup v1 only when the kernel accounts swap
/// (`memory.memsw.*` exists, `swapaccount=1`); runc fails on the missing file otherwise.
/// On cgroup v2 runc skips a swap limit the kernel cannot apply, so it is always given.
fn swap_is_accounted() -> bool {
    let Ok(mounts) = mountinfo() else {
        return true;
    };
    match mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
    {
        Some(v1) => v1.mount_point.join("memory.memsw.limit_in_bytes").exists(),
        None => true,
    }
}

/// Servers need more than the default 1024 open files. Raising the hard limit above the
/// caller's needs CAP_SYS_RESOURCE, which the ship may lack, so use the caller's hard limit.
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max.min(1 << 20)
}

/// The host's resolver config, minus loopback name servers when the container has its own
/// netns (they would point at the container itself).
fn resolv_conf(own_netns: bool) -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let usable = |text: &str| -> String {
        text.lines()
            .filter(|l| {
                let mut words = l.split_whitespace();
                !(own_netns
                    && words.next() == Some("nameserver")
                    && words
                        .next()
                        .and_then(|ip| ip.parse::<IpAddr>().ok())
                        .is_some_and(|ip| ip.is_loopback()))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let has_ns = |text: &str| text.lines().any(|l| l.starts_with("nameserver"));
    let host = usable(&read("/etc/resolv.conf"));
    if has_ns(&host) {
        return host;
    }
    // systemd-resolved keeps the real upstream servers here when /etc/resolv.conf is its stub.
    let upstream = usable(&read("/run/systemd/resolve/resolv.conf"));
    if has_ns(&upstream) {
        return upstream;
    }
    "nameserver 8.8.8.8\nnameserver 1.1.1.1\n".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "sp-test-1".into(),
            bundle_dir: "/tmp/sp-bundle".into(),
            layers: vec![],
            args: vec!["/bin/true".into()],
            env: vec![("PORT".into(), "8080".into())],
            cwd: "/app".into(),
            user: (9000, 9000),
            hostname: "echo".into(),
            netns: Some("/var/run/netns/x".into()),
            hosts: vec![],
            binds: vec![Bind {
                source: "/srv/data".into(),
                destination: "/data".into(),
                readonly: true,
            }],
            cgroups_path: "/starphleet-t/sp-test-1".into(),
            stdout: "/tmp/out".into(),
            stderr: "/tmp/err".into(),
            ..Default::default()
        }
    }

    fn mount_options(json: &serde_json::Value, dest: &str) -> Vec<String> {
        json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
            .map(|m| serde_json::from_value(m["options"].clone()).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn default_limits_bound_only_tmp() {
        let s = spec();
        let json = serde_json::to_value(s.oci_spec(&[], &[], true).unwrap()).unwrap();
        let resources = &json["linux"]["resources"];
        assert!(resources.get("memory").is_none(), "{resources}");
        assert!(resources.get("pids").is_none(), "{resources}");
        assert!(resources.get("cpu").is_none(), "{resources}");
        assert!(mount_options(&json, "/tmp").contains(&format!("size={DEFAULT_TMP_BYTES}")));

        let mut s = spec();
        s.limits.tmp_bytes = None;
        let json = serde_json::to_value(s.oci_spec(&[], &[], true).unwrap()).unwrap();
        assert!(!mount_options(&json, "/tmp")
            .iter()
            .any(|o| o.starts_with("size=")));
    }

    #[test]
    fn limits_are_written_into_the_config() {
        let mut s = spec();
        s.limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(16),
            cpu_millis: Some(1500),
            tmp_bytes: Some(4 << 20),
        };
        let json = serde_json::to_value(s.oci_spec(&[], &[], true).unwrap()).unwrap();
        let r = &json["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(
            r["memory"]["swap"],
            64 << 20,
            "swap limited to the same total"
        );
        assert_eq!(r["pids"]["limit"], 16);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert!(mount_options(&json, "/tmp").contains(&"size=4194304".to_string()));

        // A v1 kernel without swap accounting gets no swap limit (runc would fail on it).
        let json = serde_json::to_value(s.oci_spec(&[], &[], false).unwrap()).unwrap();
        let memory = &json["linux"]["resources"]["memory"];
        assert_eq!(memory["limit"], 64 << 20);
        assert!(memory.get("swap").is_none(), "{memory}");
    }

    #[test]
    fn validation_names_the_bad_limit() {
        type Breaker = fn(&mut Limits);
        let cases: [(Breaker, &str); 4] = [
            (|l| l.memory_bytes = Some(1000), "limits.memory_bytes"),
            (|l| l.pids = Some(0), "limits.pids"),
            (|l| l.cpu_millis = Some(5), "limits.cpu_millis"),
            (|l| l.tmp_bytes = Some(0), "limits.tmp_bytes"),
        ];
        for (break_it, field) in cases {
            let mut s = spec();
            break_it(&mut s.limits);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn config_has_user_env_netns_and_no_caps() {
        let s = spec();
        let json = serde_json::to_value(s.oci_spec(&[], &["ssl"], true).unwrap()).unwrap();
        let p = &json["process"];
        assert_eq!(p["user"]["uid"], 9000);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], false);
        assert_eq!(p["capabilities"]["bounding"], serde_json::json!([]));
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PORT=8080"));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/x"));
        assert_eq!(json["linux"]["cgroupsPath"], "/starphleet-t/sp-test-1");
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in ["/proc", "/usr", "/etc", "/etc/ssl", "/tmp", "/data"] {
            assert!(dests.contains(&d), "{d} missing from {dests:?}");
        }
    }

    #[test]
    fn validation_rejects_relative_cgroups_and_logs_in_bundle() {
        let mut s = spec();
        s.cgroups_path = "x/y".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.stdout = "/tmp/sp-bundle/out.log".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.id = "bad id".into();
        assert!(s.validate().is_err());
        // The ship writes `team/api`'s containers as `sp-…-team+api`, which runc accepts.
        let mut s = spec();
        s.id = "sp-a1b2c3-1f-team+api".into();
        assert!(s.validate().is_ok());
        let mut s = spec();
        s.user = (0, 0);
        assert!(s.validate().unwrap_err().to_string().contains("non-root"));
    }

    #[test]
    fn a_base_replaces_the_host_dirs_and_keeps_its_own_users() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("etc")).unwrap();
        std::fs::write(
            base.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nold:x:9000:9000::/:/bin/sh\ndaemon:x:1:1::/:/bin/false\n",
        )
        .unwrap();
        let mut s = spec();
        s.base = Some(base.path().to_path_buf());
        s.validate().unwrap();
        let json = serde_json::to_value(s.oci_spec(&[], &[], true).unwrap()).unwrap();
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(!dests.contains(&"/usr"), "{dests:?}");
        assert!(!dests.contains(&"/etc"), "{dests:?}");
        for f in ["/etc/passwd", "/etc/hosts", "/etc/resolv.conf"] {
            assert!(dests.contains(&f), "{f} missing from {dests:?}");
        }
        let etc = tempfile::tempdir().unwrap();
        let dir = etc.path().join("etc");
        assert!(s.write_etc(&dir).unwrap().is_empty());
        let passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\napp:x:9000:9000:app:/app:/bin/sh\n"
        );
        assert!(
            !dir.join("ld.so.cache").exists(),
            "nothing of the host's /etc"
        );

        s.base = Some("relative/base".into());
        assert!(s.validate().unwrap_err().to_string().contains("base"));
    }

    #[test]
    fn resolv_conf_always_names_a_server() {
        assert!(resolv_conf(true).contains("nameserver"));
    }
}
