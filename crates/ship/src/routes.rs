//! The route programmer: the one task that sends route tables to the proxy, and the keeper of
//! the proxy process. Tables carry a generation the proxy checks, so an older table can never
//! replace a newer one; a proxy that goes away is noticed at once (its control connection
//! closes), started again and given the current table.
//!
//! The table is the owner's (routes, hosts, limits, TLS ports; built by [`TableBuilder`]) with
//! the certificate task's [`Edge`] on top: the certificates to serve and the ACME challenges
//! to answer. The keeper holds duplicates of the proxy's listening sockets, and a proxy it
//! starts again gets them (`STARPHLEET_LISTEN_FDS`): while no proxy runs, clients queue in the
//! kernel instead of being refused.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use starphleet_proxy::{
    AcmeChallenges, CertFiles, ControlConnection, ControlError, ProxyClient, Route, RouteTable,
    Upstream, LISTEN_FDS_ENV,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::layout::process_alive;
use crate::owner::{DesiredRoutes, Event, OwnerTx};
use crate::state::PublishRecord;

/// The plain-HTTP port a `--tls` host's redirect (and ACME HTTP-01) answers on.
pub(crate) const HTTP_PORT: u16 = 80;

/// Builds the route table orders call for: one route per publish, with its hosts and limits;
/// a `--tls` publish makes its port speak TLS and, unless `--no-redirect`, adds a 308 route to
/// it on port 80 for the same hosts and prefix (after every real route, so a service
/// publishing on port 80 itself keeps it).
pub(crate) struct TableBuilder {
    table: RouteTable,
    redirects: Vec<Route>,
}

impl TableBuilder {
    /// An empty table of `ship`.
    pub fn new(ship: &str) -> Self {
        TableBuilder {
            table: RouteTable {
                ship: ship.to_string(),
                ..RouteTable::default()
            },
            redirects: Vec::new(),
        }
    }

    /// Adds `service`'s publish `p` served by `upstreams`, unless an earlier one claimed its
    /// port, hosts and prefix.
    pub fn add(&mut self, service: &str, p: &PublishRecord, upstreams: Vec<Upstream>) {
        let routes = self.table.ports.entry(p.public).or_default();
        if claimed(routes, &p.hosts, &p.url) {
            return;
        }
        routes.push(Route {
            prefix: p.url.clone(),
            service: service.to_string(),
            upstreams,
            retry_after: Some(2),
            hosts: p.hosts.clone(),
            max_body: p.max_body,
            timeout_ms: p.timeout_ms,
            body_timeout_ms: p.body_timeout_ms,
            https_redirect: None,
        });
        if p.tls {
            self.table.tls_ports.insert(p.public);
            if p.redirect && p.public != HTTP_PORT {
                self.redirects.push(Route {
                    prefix: p.url.clone(),
                    service: service.to_string(),
                    hosts: p.hosts.clone(),
                    https_redirect: Some(p.public),
                    ..Route::default()
                });
            }
        }
    }

    /// The table, redirects added.
    pub fn finish(mut self) -> RouteTable {
        if !self.table.tls_ports.contains(&HTTP_PORT) {
            for r in self.redirects {
                let plain = self.table.ports.entry(HTTP_PORT).or_default();
                if !claimed(plain, &r.hosts, &r.prefix) {
                    plain.push(r);
                }
            }
        }
        self.table
    }
}

fn claimed(routes: &[Route], hosts: &[String], prefix: &str) -> bool {
    routes
        .iter()
        .any(|r| r.prefix == prefix && r.hosts == hosts)
}

/// The host names the certificate task must find certificates for: those of every route on
/// a TLS port.
pub(crate) fn tls_hosts(table: &RouteTable) -> BTreeSet<String> {
    table
        .ports
        .iter()
        .filter(|(port, _)| table.tls_ports.contains(port))
        .flat_map(|(_, routes)| routes.iter().flat_map(|r| r.hosts.iter().cloned()))
        .collect()
}

/// What the certificate task adds to the table: certificates and pending ACME challenges.
/// `version` grows with every change, a renewed certificate in the same files included, so the
/// proxy loads the files again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Edge {
    /// Grows by one with every change.
    pub version: u64,
    /// The certificates to serve, one per host.
    pub certs: Vec<CertFiles>,
    /// Challenges the proxy must answer now.
    pub acme: AcmeChallenges,
}

/// The owner's table with `edge` on top. While HTTP-01 challenges are pending, port 80 is
/// listened on even when no route uses it.
fn full_table(want: &RouteTable, edge: &Edge) -> RouteTable {
    let mut table = want.clone();
    table.certs = edge.certs.clone();
    table.acme = edge.acme.clone();
    if !table.acme.http01.is_empty() && !table.tls_ports.contains(&HTTP_PORT) {
        table.ports.entry(HTTP_PORT).or_default();
    }
    table
}

/// How long a ping may take before the proxy counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a freshly started proxy may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry delays after a failure: from this, doubling, up to `MAX_RETRY`.
const MIN_RETRY: Duration = Duration::from_millis(25);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Why the proxy could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProcessError {
    /// A proxy process of this ship is alive but does not answer; a second one is never started.
    #[error("the proxy (pid {pid}) is running but does not answer its control socket: {source}")]
    Unresponsive {
        /// Its pid.
        pid: u32,
        /// What the ping saw.
        source: ControlError,
    },
    /// The proxy could not be started.
    #[error("starting the proxy {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: String,
        /// Why.
        source: std::io::Error,
    },
    /// A started proxy did not come up.
    #[error("the proxy did not come up within {START_TIMEOUT:?}; see {log}")]
    NotUp {
        /// Its log file.
        log: String,
    },
    /// The control connection failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Keeps the ship's proxy programmed until `stop`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    owner: OwnerTx,
    mut desired: watch::Receiver<Arc<DesiredRoutes>>,
    applied: watch::Sender<u64>,
    mut edge: watch::Receiver<Arc<Edge>>,
    edge_applied: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut conn: Option<ControlConnection> = None;
    // Wire generation = desired version + edge version + offset: each connection continues
    // from the generation the proxy has.
    let mut offset: i128 = 0;
    let mut applied_here: Option<(u64, u64)> = None;
    let mut retry = MIN_RETRY;
    let mut last_problem = String::new();
    // Duplicates of the proxy's listening sockets: a proxy started again serves them.
    let mut held: Vec<(u16, OwnedFd)> = Vec::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let want = desired.borrow_and_update().clone();
        let extra = edge.borrow_and_update().clone();
        let number = (want.version + extra.version) as i128;
        if conn.is_none() {
            match connect(&ctx, &held).await {
                Ok((c, generation)) => {
                    offset = generation as i128 + 1 - number;
                    conn = Some(c);
                    applied_here = None;
                }
                Err(e) => {
                    let problem = e.to_string();
                    if problem != last_problem {
                        warn!("cannot program the proxy, retrying: {problem}");
                        last_problem = problem;
                    }
                    if !pause(&stop, &mut retry).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if applied_here != Some((want.version, extra.version)) {
            let mut table = full_table(&want.table, &extra);
            table.generation = (number + offset).max(0) as u64;
            match c.set_routes(&table).await {
                Ok(()) => {
                    applied_here = Some((want.version, extra.version));
                    retry = MIN_RETRY;
                    last_problem.clear();
                    applied.send_replace(want.version);
                    edge_applied.send_replace(extra.version);
                    owner.send(Event::RoutesApplied(want.version));
                    tokio::spawn(report_bind_errors(ctx.proxy.clone()));
                    // The table may have opened or closed ports: hold what it listens on now.
                    match ctx.proxy.listeners().await {
                        Ok(sockets) => held = sockets,
                        Err(e) => warn!("cannot take the proxy's listening sockets: {e}"),
                    }
                }
                Err(ControlError::Stale { current }) => {
                    // Another programmer's table (a previous ship) is newer: continue after it.
                    offset = current as i128 + 1 - number;
                }
                Err(e) => {
                    warn!("programming the proxy failed, retrying: {e}");
                    conn = None;
                    if !pause(&stop, &mut retry).await {
                        return;
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            changed = edge.changed() => if changed.is_err() { return },
            () = c.closed() => {
                warn!("the proxy went away; starting it again and reprogramming it");
                conn = None;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Waits `retry` (doubling it for next time) unless the ship stops; `false` when it stops.
async fn pause(stop: &CancellationToken, retry: &mut Duration) -> bool {
    let wait = *retry;
    *retry = (*retry * 2).min(MAX_RETRY);
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stop.cancelled() => false,
    }
}

async fn report_bind_errors(proxy: ProxyClient) {
    if let Ok(status) = proxy.status().await {
        for (port, err) in &status.bind_errors {
            warn!(port, "proxy cannot listen: {err}");
        }
    }
}

/// Connects to the ship's proxy, starting it (on the `held` sockets) when no proxy process of
/// this ship is alive. Returns the connection and the generation of the table the proxy has.
async fn connect(
    ctx: &Ctx,
    held: &[(u16, OwnedFd)],
) -> Result<(ControlConnection, u64), ProxyProcessError> {
    match ctx.proxy.ping(PING_TIMEOUT).await {
        Ok(pong) => {
            remember_pid(ctx, pong.pid);
        }
        Err(source) => {
            if let Some(pid) = proxy_pid(ctx) {
                return Err(ProxyProcessError::Unresponsive { pid, source });
            }
            start_proxy(ctx, held).await?;
        }
    }
    let mut conn = ctx.proxy.connect().await?;
    let pong = conn.ping(PING_TIMEOUT).await?;
    Ok((conn, pong.generation))
}

/// The pid of this ship's proxy process, if it is alive (and really a proxy of this state dir).
fn proxy_pid(ctx: &Ctx) -> Option<u32> {
    let pid = crate::layout::live_pid(&ctx.layout.proxy_pid_file())?;
    is_proxy_of(pid, ctx.layout.root()).then_some(pid)
}

/// Whether `pid` runs `starphleet proxy --state-dir <root>` (a reused pid does not).
fn is_proxy_of(pid: u32, root: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.contains(&b"proxy".as_slice()) && args.contains(&root.as_os_str().as_encoded_bytes())
}

fn remember_pid(ctx: &Ctx, pid: u32) {
    let file = ctx.layout.proxy_pid_file();
    let known = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    if known != Some(pid) {
        if let Err(e) = crate::state::write_atomic(&file, pid.to_string().as_bytes()) {
            warn!("recording the proxy's pid in {}: {e}", file.display());
        }
    }
}

async fn start_proxy(ctx: &Ctx, held: &[(u16, OwnedFd)]) -> Result<(), ProxyProcessError> {
    let exe = ctx.opts.self_exe.clone();
    let spawn_error = |source| ProxyProcessError::Spawn {
        exe: exe.display().to_string(),
        source,
    };
    let logs = ctx.layout.logs();
    std::fs::create_dir_all(&logs).map_err(spawn_error)?;
    let log_path = logs.join("proxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(spawn_error)?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("proxy")
        .arg("--state-dir")
        .arg(ctx.layout.root())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error)?)
        .stderr(log);
    // The held sockets become descriptors 3, 4, …, named in the environment.
    let spec: Vec<String> = held
        .iter()
        .enumerate()
        .map(|(i, (port, _))| format!("{port}:{}", FIRST_FD + i as i32))
        .collect();
    if !spec.is_empty() {
        cmd.env(LISTEN_FDS_ENV, spec.join(","));
    }
    let fds: Vec<i32> = held.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // Its own session, so signals to the ship (or its terminal) never reach the proxy.
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setsid, fcntl and dup2, which are async-signal-safe;
    // `fds` is moved into the closure and only read.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            place_fds(&fds)
        });
    }
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let pid = child.id();
    // Reap it if it exits while we live; after we exit, init does.
    std::thread::spawn(move || child.wait());
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if ctx.proxy.ping(PING_TIMEOUT).await.is_ok() {
            remember_pid(ctx, pid);
            info!(pid, "proxy started");
            return Ok(());
        }
        if !process_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ProxyProcessError::NotUp {
        log: log_path.display().to_string(),
    })
}

/// The descriptor the first inherited listening socket gets in the proxy.
const FIRST_FD: i32 = 3;

/// In a forked child: puts `fds` at descriptors 3, 4, … without close-on-exec. Each is first
/// copied above every target (close-on-exec), so placing one never overwrites another.
fn place_fds(fds: &[i32]) -> std::io::Result<()> {
    let above = FIRST_FD + fds.len() as i32;
    let mut copies = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: fcntl on a descriptor we own; async-signal-safe.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        copies.push(copy);
    }
    for (i, copy) in copies.into_iter().enumerate() {
        // SAFETY: dup2 onto a descriptor number below `above`; async-signal-safe. The copy
        // closes at exec.
        if unsafe { libc::dup2(copy, FIRST_FD + i as i32) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(public: u16, url: &str, hosts: &[&str], tls: bool, redirect: bool) -> PublishRecord {
        PublishRecord {
            private: 8000,
            public,
            url: url.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls,
            redirect,
            max_body: Some(1024),
            timeout_ms: Some(1500),
            body_timeout_ms: Some(2500),
        }
    }

    #[test]
    fn tls_publishes_get_their_port_hosts_limits_and_a_redirect_on_port_80() {
        let mut b = TableBuilder::new("north");
        b.add(
            "app",
            &publish(443, "/", &["app.test"], true, true),
            Vec::new(),
        );
        b.add(
            "api",
            &publish(443, "/", &["api.test"], true, false),
            Vec::new(),
        );
        let t = b.finish();
        assert_eq!(t.tls_ports, BTreeSet::from([443]));
        let tls = &t.ports[&443];
        assert_eq!(
            tls.len(),
            2,
            "same port and prefix, different hosts: {tls:?}"
        );
        assert_eq!(tls[0].hosts, ["app.test"]);
        assert_eq!(tls[0].max_body, Some(1024));
        assert_eq!(tls[0].timeout_ms, Some(1500));
        assert_eq!(tls[0].body_timeout_ms, Some(2500));
        assert_eq!(tls[0].https_redirect, None);
        let plain = &t.ports[&80];
        assert_eq!(plain.len(), 1, "--no-redirect adds none: {plain:?}");
        assert_eq!(plain[0].hosts, ["app.test"]);
        assert_eq!(plain[0].https_redirect, Some(443));
        assert_eq!(
            tls_hosts(&t),
            BTreeSet::from(["api.test".to_string(), "app.test".to_string()])
        );
    }

    #[test]
    fn a_service_on_port_80_keeps_it_over_a_redirect_and_the_first_claim_wins() {
        let mut b = TableBuilder::new("north");
        b.add(
            "a-tls",
            &publish(443, "/", &["app.test"], true, true),
            Vec::new(),
        );
        b.add(
            "b-plain",
            &publish(80, "/", &["app.test"], false, false),
            Vec::new(),
        );
        b.add(
            "c-late",
            &publish(80, "/", &["app.test"], false, false),
            Vec::new(),
        );
        let t = b.finish();
        let plain = &t.ports[&80];
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert_eq!(plain[0].service, "b-plain");
        assert_eq!(plain[0].https_redirect, None);
        assert!(!t.tls_ports.contains(&80));
    }

    #[test]
    fn pending_http01_challenges_open_port_80_and_certificates_ride_along() {
        let mut b = TableBuilder::new("north");
        b.add(
            "app",
            &publish(443, "/", &["app.test"], true, false),
            Vec::new(),
        );
        let want = b.finish();
        assert!(!want.ports.contains_key(&80));
        let mut edge = Edge {
            version: 3,
            certs: vec![CertFiles {
                hosts: vec!["app.test".into()],
                cert_path: "/c".into(),
                key_path: "/k".into(),
            }],
            acme: AcmeChallenges::default(),
        };
        let t = full_table(&want, &edge);
        assert_eq!(t.certs, edge.certs);
        assert!(!t.ports.contains_key(&80));
        edge.acme.http01.insert("tok".into(), "auth".into());
        let t = full_table(&want, &edge);
        assert_eq!(t.ports[&80], Vec::<Route>::new());
        assert_eq!(t.acme.http01["tok"], "auth");
    }

    #[test]
    fn placed_descriptors_survive_exec_at_3_onwards() {
        use std::os::fd::AsRawFd;
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fds = [b.as_raw_fd(), a.as_raw_fd()];
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "ls -l /proc/self/fd/3 /proc/self/fd/4"]);
        use std::os::unix::process::CommandExt;
        // SAFETY: place_fds only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(move || place_fds(&fds));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let inode = |l: &std::net::TcpListener| {
            std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd()))
                .unwrap()
                .display()
                .to_string()
        };
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(&inode(&b)),
            "fd 3 is the first socket: {text}"
        );
        assert!(lines[1].ends_with(&inode(&a)), "fd 4 is the second: {text}");
    }
}
