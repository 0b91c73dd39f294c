//! Container networking over in-process netlink: one bridge per ship, one named network
//! namespace + veth pair + IP per container.
//!
//! Named namespaces live in `/var/run/netns` exactly as `ip netns` keeps them, so operators
//! can inspect them with `ip netns exec`. Nothing here ever moves a caller's thread into
//! another namespace: namespace work happens on short-lived dedicated threads.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

mod outbound;
pub use outbound::{
    ensure_isolated, ensure_outbound, has_outbound, outbound_table, remove_outbound,
};

/// A failed network namespace or netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace or interface name that cannot be used; the message gives the rule.
    #[error("{0}")]
    InvalidName(String),
    /// The namespace or interface (named in the message) is already there.
    #[error("{0} already exists")]
    Exists(String),
    /// The container netns needs its bridge first.
    #[error("bridge {0} does not exist; call ensure_bridge first")]
    NoBridge(String),
    /// The interface exists and is something else.
    #[error("interface {0} exists but is not a bridge")]
    NotABridge(String),
    /// An interface that was just created (or must exist) is not there.
    #[error("interface {name} is missing {place}")]
    LinkMissing {
        /// The interface.
        name: String,
        /// Where it was looked for, e.g. "in netns sp-1-2" or "right after creation".
        place: String,
    },
    /// The kernel refused a netlink request.
    #[error("{what}: {cause}")]
    Netlink {
        /// What was asked, e.g. "creating bridge spbr0".
        what: String,
        /// The kernel's answer.
        cause: rtnetlink::Error,
    },
    /// A file, mount or namespace operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was attempted, naming the path.
        what: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A command the network setup needs is not installed.
    #[error("`{command}` not found: install it with apt-get install {package}")]
    NotInstalled {
        /// The command, e.g. `nft`.
        command: String,
        /// The Debian package that has it.
        package: String,
    },
    /// A command of the network setup failed.
    #[error("{what}: {output}")]
    Command {
        /// What was attempted, e.g. "writing nftables table starphleet-a1b2c3".
        what: String,
        /// What the command said, trimmed.
        output: String,
    },
    /// A command of the network setup hung and was killed.
    #[error("{what}: no answer within {}; it was killed", humantime::format_duration(*after))]
    CommandTimedOut {
        /// What was attempted.
        what: String,
        /// The timeout that ran out.
        after: std::time::Duration,
    },
    /// Setting up a container netns failed at one step; everything made was removed again.
    #[error("setting up netns {ns}: {cause}")]
    Setup {
        /// The namespace.
        ns: String,
        /// The step that failed.
        cause: Box<NetError>,
    },
}

type Result<T, E = NetError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>, cause: impl Into<std::io::Error>) -> NetError {
    NetError::Io {
        what: what.into(),
        cause: cause.into(),
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |cause| NetError::Netlink { what, cause }
}

/// Where named network namespaces are bind-mounted (shared with iproute2).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Interface names are limited to IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;

/// Serializes namespace-dir setup and creation within this process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Traffic counters of one interface.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// The path of the named network namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

fn check_ns_name(ns: &str) -> Result<()> {
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') {
        return Err(NetError::InvalidName(format!(
            "invalid network namespace name {ns:?}: no '/', not '.' or '..'"
        )));
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(NetError::InvalidName(format!(
            "invalid interface name {name:?}: 1-{IFNAME_MAX} bytes, no '/', ':' or spaces"
        )));
    }
    Ok(())
}

/// Runs `f` on a short-lived thread that has joined the network namespace at `path`.
///
/// Sockets created by `f` stay in that namespace; the caller's threads never change namespace.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns =
        File::open(path).map_err(|e| io_err(format!("opening netns {}", path.display()), e))?;
    std::thread::scope(|s| {
        let thread = s.spawn(|| -> Result<T> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err(format!("entering netns {}", path.display()), e))?;
            Ok(f())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Creates an empty named network namespace (like `ip netns add`); returns its path.
pub fn create_netns(ns: &str) -> Result<PathBuf> {
    check_ns_name(ns)?;
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    make_netns_dir_shared()?;
    let path = netns_path(ns);
    match nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) => {}
        Err(Errno::EEXIST) => return Err(NetError::Exists(format!("network namespace {ns}"))),
        Err(e) => return Err(io_err(format!("creating {}", path.display()), e)),
    }
    // A fresh namespace is made on a throw-away thread, then pinned by bind-mounting it.
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io_err(
                    format!("bind-mounting the new netns on {}", path.display()),
                    e,
                )
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Makes the netns dir a shared mount, as iproute2 does, so deleting a namespace here also
/// unmounts copies that other mount namespaces made, and the namespace is really freed.
fn make_netns_dir_shared() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| io_err(format!("creating {NETNS_DIR}"), e))?;
    let share = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {} // not a mount point yet
        Err(e) => return Err(io_err(format!("making {NETNS_DIR} a shared mount"), e)),
    }
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err(format!("bind-mounting {NETNS_DIR} on itself"), e))?;
    share().map_err(|e| io_err(format!("making {NETNS_DIR} a shared mount"), e))
}

/// Unmounts and removes a named netns; ok if absent (its veth pair dies with it).
pub fn delete_netns(ns: &str) -> Result<()> {
    check_ns_name(ns)?;
    let path = netns_path(ns);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err(format!("unmounting {}", path.display()), e)),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Names of the named network namespaces starting with `prefix`, sorted.
pub fn list_netns(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| io_err(format!("listing {NETNS_DIR}"), e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A netlink connection in the calling thread's network namespace.
fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| io_err("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection into the namespace at `path` (the socket is born there).
fn connect_in(path: &Path) -> Result<Handle> {
    let socket = run_in_netns(path, || Socket::new(NETLINK_ROUTE))?.map_err(|e| {
        io_err(
            format!("opening a netlink socket in netns {}", path.display()),
            e,
        )
    })?;
    // SAFETY: the fd comes straight out of an owned Socket and is handed over exactly once.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Treats "already exists" as success: these requests make a state true, idempotently.
fn ok_if_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink(format!("looking up interface {name}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

async fn has_address(h: &Handle, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<bool> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(netlink("listing addresses"))?
    {
        let same = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip)
                if *ip == IpAddr::V4(addr))
        });
        if msg.header.index == index && msg.header.prefix_len == prefix_len && same {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A stable, locally administered MAC derived from the bridge name.
///
/// A bridge with a random MAC takes the lowest MAC of its ports, so it would change as
/// containers come and go and break their ARP entries for the gateway.
fn bridge_mac(name: &str) -> Vec<u8> {
    // FNV-1a: tiny, deterministic across runs and platforms.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = hash.to_be_bytes();
    vec![0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Creates the bridge if missing, sets its address if missing, and brings it up; idempotent.
pub async fn ensure_bridge(name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
    check_ifname(name)?;
    let h = connect()?;
    let link = match get_link(&h, name).await? {
        Some(link) => link,
        None => {
            let add = h
                .link()
                .add(LinkBridge::new(name).address(bridge_mac(name)).build())
                .execute()
                .await;
            ok_if_exists(add).map_err(netlink(format!("creating bridge {name}")))?;
            get_link(&h, name)
                .await?
                .ok_or_else(|| NetError::LinkMissing {
                    name: name.to_string(),
                    place: "right after its creation".into(),
                })?
        }
    };
    let is_bridge = link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    });
    if !is_bridge {
        return Err(NetError::NotABridge(name.to_string()));
    }
    let index = link.header.index;
    if !has_address(&h, index, addr, prefix_len).await? {
        let add = h
            .address()
            .add(index, addr.into(), prefix_len)
            .execute()
            .await;
        ok_if_exists(add).map_err(netlink(format!("adding {addr}/{prefix_len} to {name}")))?;
    }
    set_up(&h, index)
        .await
        .map_err(netlink(format!("bringing {name} up")))
}

/// Deletes an interface by name; ok if absent.
pub async fn delete_link(name: &str) -> Result<()> {
    check_ifname(name)?;
    let h = connect()?;
    let Some(link) = get_link(&h, name).await? else {
        return Ok(());
    };
    match h.link().del(link.header.index).execute().await {
        Err(e) if errno(&e) != Some(libc::ENODEV) => {
            Err(netlink(format!("deleting interface {name}"))(e))
        }
        _ => Ok(()),
    }
}

/// Names of the interfaces in the caller's namespace that start with `prefix`.
pub async fn list_links(prefix: &str) -> Result<Vec<String>> {
    let h = connect()?;
    let mut links = h.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(netlink("listing interfaces"))?
    {
        for attr in link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                if name.starts_with(prefix) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

/// Creates a named netns (`/var/run/netns/<ns>`), a veth pair (`host_if` on the bridge, peer
/// `eth0` in the ns), gives eth0 `ip/prefix_len`, brings lo + eth0 up, default route via
/// `gateway`. Returns the netns path. Cleans up partial work on failure.
pub async fn create_container_netns(
    ns: &str,
    host_if: &str,
    bridge: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<PathBuf> {
    check_ifname(host_if)?;
    check_ns_name(ns)?;
    let h = connect()?;
    let bridge_index = get_link(&h, bridge)
        .await?
        .ok_or_else(|| NetError::NoBridge(bridge.to_string()))?
        .header
        .index;
    if get_link(&h, host_if).await?.is_some() {
        return Err(NetError::Exists(format!("interface {host_if}")));
    }
    let path = create_netns(ns)?;
    let result = async {
        let netns =
            File::open(&path).map_err(|e| io_err(format!("opening {}", path.display()), e))?;
        // The peer is born inside the namespace as eth0: no temporary name, no rename.
        let peer = LinkUnspec::new_with_name("eth0")
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(host_if, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge_index)
            .up()
            .build();
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(netlink(format!("creating veth {host_if} on {bridge}")))?;
        drop(netns);

        let c = connect_in(&path)?;
        for name in ["lo", "eth0"] {
            let index = get_link(&c, name)
                .await?
                .ok_or_else(|| NetError::LinkMissing {
                    name: name.to_string(),
                    place: format!("in netns {ns}"),
                })?
                .header
                .index;
            if name == "eth0" {
                c.address()
                    .add(index, ip.into(), prefix_len)
                    .execute()
                    .await
                    .map_err(netlink(format!("adding {ip}/{prefix_len} to eth0")))?;
                // Announce the address when eth0 comes up: a reused IP with a new MAC must
                // replace the bridge's stale neighbour entry at once, not after ~30 s.
                run_in_netns(&path, || {
                    std::fs::write("/proc/sys/net/ipv4/conf/eth0/arp_notify", "1")
                })?
                .map_err(|e| io_err("enabling arp_notify on eth0", e))?;
            }
            set_up(&c, index)
                .await
                .map_err(netlink(format!("bringing {name} up in {ns}")))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        c.route()
            .add(route)
            .execute()
            .await
            .map_err(netlink(format!("adding default route via {gateway}")))?;
        Ok::<(), NetError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = delete_link(host_if).await;
        let _ = delete_netns(ns);
        return Err(NetError::Setup {
            ns: ns.to_string(),
            cause: Box::new(e),
        });
    }
    Ok(path)
}

/// Traffic counters of an interface (e.g. a container's host-side veth); `None` if absent.
pub async fn link_stats(name: &str) -> Result<Option<LinkStats>> {
    check_ifname(name)?;
    let h = connect()?;
    let Some(link) = get_link(&h, name).await? else {
        return Ok(None);
    };
    Ok(Some(stats_of(&link.attributes)))
}

/// The 64-bit counters among a link's attributes (zero when the kernel sent none).
fn stats_of(attributes: &[LinkAttribute]) -> LinkStats {
    attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(LinkStats {
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
                rx_packets: s.rx_packets,
                tx_packets: s.tx_packets,
                rx_errors: s.rx_errors,
                tx_errors: s.tx_errors,
                rx_dropped: s.rx_dropped,
                tx_dropped: s.tx_dropped,
            }),
            _ => None,
        })
        .unwrap_or_default()
}

/// Counters of every interface whose name starts with `prefix`, by name, from one netlink
/// dump: sampling hundreds of containers costs one request, not one each.
pub async fn link_stats_all(prefix: &str) -> Result<std::collections::HashMap<String, LinkStats>> {
    let h = connect()?;
    let mut links = h.link().get().execute();
    let mut out = std::collections::HashMap::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(netlink("listing interfaces"))?
    {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) if n.starts_with(prefix) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            out.insert(name, stats_of(&link.attributes));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_ifname("spb1234567x123").is_ok());
        assert!(check_ifname("this-is-too-long-1").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ns_name("../etc").is_err());
    }

    #[test]
    fn bridge_mac_is_stable_and_local_unicast() {
        let mac = bridge_mac("spbr0");
        assert_eq!(mac, bridge_mac("spbr0"));
        assert_ne!(mac, bridge_mac("spbr1"));
        assert_eq!(mac[0] & 0x03, 0x02);
    }
}
