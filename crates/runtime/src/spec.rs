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

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capabilities,
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::mounts::mount_overlay;

/// Everything needed to run one container.
#[derive(Clone, Debug)]
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

impl ContainerSpec {
    pub(crate) fn rootfs(&self) -> PathBuf {
        self.bundle_dir.join("rootfs")
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let id_ok = !self.id.is_empty()
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            bail!(
                "container id {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.id
            );
        }
        if self.args.is_empty() {
            bail!("container {}: no command to run (args is empty)", self.id);
        }
        if !self.cwd.starts_with('/') {
            bail!("container {}: cwd {:?} must be absolute", self.id, self.cwd);
        }
        if !self.cgroups_path.starts_with('/') {
            bail!(
                "container {}: cgroups_path {:?} must be absolute, or runc nests it under its caller's cgroup",
                self.id,
                self.cgroups_path
            );
        }
        if !self.bundle_dir.is_absolute() {
            bail!(
                "container {}: bundle_dir {} must be absolute",
                self.id,
                self.bundle_dir.display()
            );
        }
        for log in [&self.stdout, &self.stderr] {
            if log.starts_with(&self.bundle_dir) {
                bail!(
                    "container {}: log file {} must live outside the bundle dir, which stop() removes",
                    self.id,
                    log.display()
                );
            }
        }
        for bind in &self.binds {
            if !bind.destination.starts_with('/') {
                bail!(
                    "container {}: bind destination {:?} must be absolute",
                    self.id,
                    bind.destination
                );
            }
        }
        Ok(())
    }

    /// Lays out the bundle, mounts the overlay root and writes config.json.
    ///
    /// The caller has validated the spec; on error it cleans up (unmount + remove `bundle_dir`).
    pub(crate) fn prepare_bundle(&self) -> Result<()> {
        let b = &self.bundle_dir;
        fs::create_dir_all(b).with_context(|| format!("creating bundle dir {}", b.display()))?;
        for sub in ["rootfs", "upper", "work"] {
            fs::create_dir(b.join(sub))
                .with_context(|| format!("creating {}", b.join(sub).display()))?;
        }
        let host_dirs = self.write_skeleton(&b.join("skeleton"))?;
        let etc_dirs = self.write_etc(&b.join("etc"))?;

        let mut lowers = self.layers.clone();
        lowers.push(b.join("skeleton"));
        mount_overlay(&lowers, &b.join("upper"), &b.join("work"), &self.rootfs())?;

        let spec = self.oci_spec(&host_dirs, &etc_dirs)?;
        spec.save(b.join("config.json"))
            .with_context(|| format!("writing {}/config.json", b.display()))?;
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
                .with_context(|| format!("creating {}", path.display()))?;
            // The umask may have trimmed the mode; sticky world-writable dirs need it exact.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
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
        std::os::unix::fs::chown(dir.join("app"), Some(self.user.0), Some(self.user.1))?;

        let mut bound = Vec::new();
        for name in HOST_ROOT_DIRS {
            let host = Path::new("/").join(name);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    symlink(fs::read_link(&host)?, dir.join(name))?;
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
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (uid, gid) = self.user;
        let write = |name: &str, text: &str| -> Result<()> {
            fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))
        };
        write(
            "passwd",
            &format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 app:x:{uid}:{gid}:app:/app:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        )?;
        write(
            "group",
            &format!("root:x:0:\napp:x:{gid}:\nnogroup:x:65534:\n"),
        )?;
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
                fs::copy(&host, dir.join(name))
                    .with_context(|| format!("copying {}", host.display()))?;
            }
        }
        if let Ok(target) = fs::read_link("/etc/localtime") {
            symlink(target, dir.join("localtime"))?;
        }
        let mut bound = Vec::new();
        for name in HOST_ETC_DIRS {
            if Path::new("/etc").join(name).is_dir() {
                fs::create_dir(dir.join(name))?;
                bound.push(*name);
            }
        }
        Ok(bound)
    }

    fn oci_spec(&self, host_dirs: &[&str], etc_dirs: &[&str]) -> Result<Spec> {
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

        let ro_bind = |src: &Path, dst: &str, extra: &[&str]| -> Result<Mount> {
            let options: Vec<String> = ["rbind", "ro", "nosuid", "nodev"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            Ok(MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(options)
                .build()?)
        };
        let mut mounts = get_default_mounts();
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
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(["nosuid", "nodev", "mode=1777"].map(String::from).to_vec())
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
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?])
            .build()?;
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .cgroups_path(&self.cgroups_path)
            .resources(resources)
            .sysctl(sysctl)
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .build()?;

        Ok(SpecBuilder::default()
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
            .build()?)
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
            readonly_app: false,
        }
    }

    #[test]
    fn config_has_user_env_netns_and_no_caps() {
        let s = spec();
        let json = serde_json::to_value(s.oci_spec(&[], &["ssl"]).unwrap()).unwrap();
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
    }

    #[test]
    fn resolv_conf_always_names_a_server() {
        assert!(resolv_conf(true).contains("nameserver"));
    }
}
