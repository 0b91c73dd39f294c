//! The naming scheme of everything a ship creates on the machine: containers, network
//! namespaces, veths, cgroups, the bridge and its subnet, and per-service directories.
//!
//! Every name carries the ship id (6 hex digits, unique per state dir), so several ships can
//! share one kernel and `down` can find what belongs to a ship from the system alone.

use std::net::Ipv4Addr;

/// Names for one ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ship_id: String,
}

/// The longest container id the ship makes (runc accepts more; hostnames and logs read better).
const MAX_CONTAINER_ID: usize = 64;

impl Names {
    /// The names of ship `ship_id`.
    pub fn new(ship_id: &str) -> Self {
        Names {
            ship_id: ship_id.to_string(),
        }
    }

    /// The ship id.
    pub fn ship_id(&self) -> &str {
        &self.ship_id
    }

    /// The OCI runtime's id of container number `seq` of `service`.
    pub fn container(&self, seq: u32, service: &str) -> String {
        let id = format!("sp-{}-{seq:x}-{}", self.ship_id, safe_name(service));
        id.chars().take(MAX_CONTAINER_ID).collect()
    }

    /// The id of build container number `seq`.
    pub fn build_container(&self, seq: u32) -> String {
        format!("sp-{}-{seq:x}-build", self.ship_id)
    }

    /// Prefix of every container id of this ship.
    pub fn container_prefix(&self) -> String {
        format!("sp-{}-", self.ship_id)
    }

    /// The network namespace of container number `seq`.
    pub fn netns(&self, seq: u32) -> String {
        format!("sp-{}-{seq:x}", self.ship_id)
    }

    /// Prefix of every network namespace of this ship.
    pub fn netns_prefix(&self) -> String {
        format!("sp-{}-", self.ship_id)
    }

    /// The host end of container number `seq`'s veth (at most 15 characters, the kernel's limit).
    pub fn host_veth(&self, seq: u32) -> String {
        format!("sp{}{:05x}", self.ship_id, seq & 0xfffff)
    }

    /// Prefix of every host veth of this ship.
    pub fn veth_prefix(&self) -> String {
        format!("sp{}", self.ship_id)
    }

    /// The parent cgroup of everything this ship runs.
    pub fn cgroup_parent(&self) -> String {
        format!("/starphleet-{}", self.ship_id)
    }

    /// The absolute cgroup path of a container.
    pub fn cgroup(&self, container: &str) -> String {
        format!("{}/{container}", self.cgroup_parent())
    }

    /// The ship's bridge and subnet.
    pub fn net(&self) -> NetPlan {
        NetPlan::for_ship(&self.ship_id)
    }
}

/// The host name a service's containers get: its last path component, made DNS-safe.
pub fn hostname(service: &str) -> String {
    let last = service.rsplit('/').next().unwrap_or(service);
    let name: String = last
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "app".to_string()
    } else {
        name.to_string()
    }
}

/// A service name usable in file names and container ids, different for different services:
/// letters, digits, `_`, `-` and `.` stay, `/` becomes `+`, any other byte `++xx` (hex).
/// (`team/api` → `team+api`, `team_api` stays `team_api`; names never hold `+` or `//`.)
pub fn safe_name(service: &str) -> String {
    let mut out = String::with_capacity(service.len());
    for b in service.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => out.push(b as char),
            b'/' => out.push('+'),
            other => out.push_str(&format!("++{other:02x}")),
        }
    }
    out
}

/// The ship's network: one bridge and one /20 (4 093 container addresses) derived from the
/// ship id, inside 10.200.0.0–10.249.255.255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Bridge name.
    pub bridge: String,
    /// The subnet's first address.
    pub network: Ipv4Addr,
}

/// The subnet's prefix length.
const PREFIX_LEN: u8 = 20;

impl NetPlan {
    /// The network plan of ship `id` (6 hex digits).
    pub fn for_ship(id: &str) -> Self {
        let n = u32::from_str_radix(id, 16).unwrap_or(0);
        // 50 second octets × 16 blocks of /20 = 800 subnets, spread by the id.
        let second = 200 + ((n >> 4) % 50) as u8;
        let third = ((n & 0xf) << 4) as u8;
        NetPlan {
            bridge: format!("spb-{id}"),
            network: Ipv4Addr::new(10, second, third, 0),
        }
    }
    /// The bridge's (gateway) address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
    /// Host address `n` in the subnet (1 is the gateway; containers get 2 ..= capacity + 1).
    pub fn host(&self, n: u16) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + u32::from(n))
    }
    /// The prefix length of the subnet.
    pub fn prefix_len(&self) -> u8 {
        PREFIX_LEN
    }
    /// How many containers the subnet holds (all but the network, gateway and broadcast addresses).
    pub fn capacity(&self) -> u16 {
        ((1u32 << (32 - PREFIX_LEN)) - 3) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_differ_for_different_services() {
        assert_eq!(safe_name("echo"), "echo");
        assert_eq!(safe_name("team/api"), "team+api");
        assert_ne!(safe_name("team/api"), safe_name("team_api"));
        assert_ne!(safe_name("a b"), safe_name("a/20"));
        assert_ne!(safe_name("a b"), safe_name("a_b"));
    }

    #[test]
    fn names_carry_the_ship_id_and_fit_kernel_limits() {
        let n = Names::new("a1b2c3");
        let id = n.container(0x1f, "team/api");
        assert_eq!(id, "sp-a1b2c3-1f-team+api");
        assert!(id.starts_with(&n.container_prefix()));
        assert!(n.netns(7).starts_with(&n.netns_prefix()));
        assert!(n.host_veth(u32::MAX).len() <= 15);
        assert!(n.host_veth(3).starts_with(&n.veth_prefix()));
        assert_eq!(n.cgroup(&id), format!("/starphleet-a1b2c3/{id}"));
        assert!(n.container(1, &"x".repeat(200)).len() <= 64);
    }

    #[test]
    fn the_subnet_holds_thousands_and_its_hosts_stay_inside() {
        let net = NetPlan::for_ship("a1b2c3");
        assert_eq!(net.capacity(), 4093);
        assert_eq!(u32::from(net.network) & 0xfff, 0, "aligned on a /20");
        assert_eq!(net.gateway(), net.host(1));
        let last = net.host(net.capacity() + 1);
        assert_eq!(u32::from(last) >> 12, u32::from(net.network) >> 12);
        assert_ne!(NetPlan::for_ship("a1b2c4").network, net.network);
    }

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(hostname("team/api"), "api");
        assert_eq!(hostname("my_app"), "my-app");
        assert_eq!(hostname("___"), "app");
        assert!(hostname(&"y".repeat(100)).len() <= 63);
    }
}
