//! The data-plane reverse proxy: routing table, upstream in-flight counts and its control socket.
//!
//! `run` is a small long-lived process of its own (`starphleet proxy`), separate from the control
//! plane, so restarting the ship never drops a request: the control plane only programs it with
//! a whole [`RouteTable`] over a Unix socket ([`ProxyClient`]), and the proxy keeps serving the last
//! table it was given. Tables are numbered ([`RouteTable::generation`]), so a control plane that
//! fell behind cannot put back a table older than the one in force. Draining a container is
//! pushed, not polled: [`ProxyClient::wait_idle`] is answered the moment its last request ends.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

pub mod control;
mod daemon;
mod forward;
mod h1;
mod inflight;
mod listen;
mod stats;
mod table;
mod upstream;

pub use control::{ControlConnection, ControlError, Idle, Pong, ProxyClient};
pub use daemon::{run, ProxyError};
pub use stats::{RouteCounters, LATENCY_BOUNDS_S};

/// The whole routing state of the proxy, replaced atomically by each `SetRoutes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// The ship's name, shown in the proxy's own error pages.
    pub ship: String,
    /// Monotonic number of this table; the proxy refuses a table older than the one in force.
    #[serde(default)]
    pub generation: u64,
    /// Routes per public port; every port named here is listened on.
    #[serde(deserialize_with = "port_map")]
    pub ports: BTreeMap<u16, Vec<Route>>,
}

/// Reads `ports`, whose keys JSON writes as strings of digits. serde_json parses such keys into
/// numbers itself, but not once serde has buffered the table, as it does inside the internally
/// tagged `control::Request`.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, Vec<Route>>, D::Error> {
    use serde::de::{Error, Unexpected};
    BTreeMap::<String, Vec<Route>>::deserialize(d)?
        .into_iter()
        .map(|(port, routes)| match port.parse() {
            Ok(port) => Ok((port, routes)),
            Err(_) => Err(D::Error::invalid_value(
                Unexpected::Str(&port),
                &"a port number, 1 to 65535",
            )),
        })
        .collect()
}

/// One URL prefix on one public port, served by one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The URL prefix, `/echo` or `/`; it is stripped before the request reaches the service.
    pub prefix: String,
    /// The service name, for counts, logs and error pages.
    pub service: String,
    /// Where requests go; the one with the fewest requests in flight is chosen.
    pub upstreams: Vec<Upstream>,
    /// With no upstreams the proxy answers 503 with this `Retry-After` (seconds, default 1).
    pub retry_after: Option<u32>,
}

/// One running container of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The container's address and private port.
    pub addr: SocketAddr,
    /// The service version the container runs, for logs.
    pub version: String,
    /// The container's name: in-flight counts are kept per container.
    pub container: String,
}

/// Options for the data plane.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The Unix socket the control plane programs the proxy through.
    pub control_socket: PathBuf,
    /// The address public ports are bound on (0.0.0.0 by default).
    pub listen_ip: IpAddr,
    /// Where each container's access log (`<container>.log`, logfmt) is written; `None` = nowhere.
    pub access_log_dir: Option<PathBuf>,
}

impl ProxyOptions {
    /// Options for a control socket, listening on every IPv4 address.
    pub fn new(control_socket: impl Into<PathBuf>) -> Self {
        ProxyOptions {
            control_socket: control_socket.into(),
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            access_log_dir: None,
        }
    }
}
