//! The data-plane reverse proxy: routing table, upstream in-flight counts and its control socket.
//!
//! `run` is a small long-lived process of its own (`starphleet proxy`), separate from the control
//! plane, so restarting the ship never drops a request: the control plane only programs it with
//! a whole [`RouteTable`] over a Unix socket ([`ProxyClient`]), and the proxy keeps serving the last
//! table it was given. Tables are numbered ([`RouteTable::generation`]), so a control plane that
//! fell behind cannot put back a table older than the one in force. Draining a container is
//! pushed, not polled: [`ProxyClient::wait_idle`] is answered the moment its last request ends.
//!
//! The edge: public ports may speak TLS ([`RouteTable::tls_ports`], certificates picked by SNI
//! from [`RouteTable::certs`]) with HTTP/2 by ALPN; routes may be limited to host names
//! ([`Route::hosts`]); every connection is bounded by [`Limits`]. Fields added since the first
//! tables are optional on the wire and left out when unset, so older tables still parse. The proxy can hand its listening
//! sockets to the control plane ([`ProxyClient::listeners`]) and start from inherited ones
//! ([`ProxyOptions::inherited`], [`inherit_listeners`]), so a proxy that crashes leaves its ports
//! queueing for its successor instead of refusing clients.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub mod control;
mod daemon;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod guard;
mod h1;
mod inflight;
mod listen;
mod stats;
mod table;
mod tls;
mod upstream;

pub use control::{ControlConnection, ControlError, Idle, Pong, ProxyClient};
pub use daemon::{run, ProxyError};
pub use listen::{inherit_listeners, listen_fds, ListenFdsError, LISTEN_FDS_ENV};
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
    /// Public ports that speak TLS (1.2 and 1.3, ALPN `h2` and `http/1.1`); the others speak
    /// plain HTTP/1.1 (and HTTP/2 with prior knowledge).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tls_ports: BTreeSet<u16>,
    /// Certificates for TLS ports, picked by the SNI of each handshake: an exact host first,
    /// then a wildcard. Loaded when the table is set; a certificate that fails to load keeps the
    /// one loaded before for its hosts (see `Status::cert_errors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<CertFiles>,
    /// ACME challenges the proxy answers while a certificate is being issued.
    #[serde(default, skip_serializing_if = "AcmeChallenges::is_empty")]
    pub acme: AcmeChallenges,
    /// The ship is taken out of its load balancers: `/starphleet/health` answers 503 `offline`
    /// on every public port; everything else is still served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
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
    /// Host names this route answers for, lower-case; `*.example.com` matches exactly one more
    /// label on the left (`a.example.com`, not `example.com` nor `a.b.example.com`). Empty:
    /// any host. On a port, routes naming the request's host exactly are tried first, then
    /// wildcards, then routes without hosts; within each, the longest prefix wins. The `Host`
    /// header (HTTP/2: `:authority`) decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The largest request body accepted, in bytes: a larger `Content-Length`, or a streamed
    /// body growing past it, is answered 413 and the connection closed. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// How long the upstream may take to send its response head, in milliseconds, before the
    /// client is answered 504. `None`: 60 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How long the client's request body may go without a byte arriving, in milliseconds,
    /// before it is answered 408 and the connection closed. `None`: the proxy's
    /// [`Limits::body_idle_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout_ms: Option<u64>,
    /// Answer `308 Location: https://<host>[:port]<path?query>` instead of proxying, to this
    /// HTTPS port (443 leaves the port out): the plain-HTTP side of a TLS host. ACME HTTP-01
    /// challenges (`/.well-known/acme-challenge/`) are never redirected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<u16>,
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

/// A certificate and its key, as PEM files, for some host names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFiles {
    /// The names it serves, lower-case; `*.example.com` for a wildcard certificate.
    pub hosts: Vec<String>,
    /// The certificate chain, leaf first (PEM).
    pub cert_path: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Challenges of ACME (RFC 8555) validations in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallenges {
    /// HTTP-01: `GET /.well-known/acme-challenge/<token>` on any plain-HTTP port, for any host,
    /// answers the key authorization (`text/plain`), before routing and redirects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http01: BTreeMap<String, String>,
    /// TLS-ALPN-01 (RFC 8737): a handshake on a TLS port offering ALPN `acme-tls/1` for one of
    /// these hosts gets this (self-signed, challenge-bearing) certificate, and the connection is
    /// closed once the handshake is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_alpn01: Vec<CertFiles>,
}

impl AcmeChallenges {
    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        self.http01.is_empty() && self.tls_alpn01.is_empty()
    }
}

/// Bounds on what one client may cost the proxy. The defaults are those of a public edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest request head (request line and headers) accepted; larger ones are answered
    /// 431. Default 32 KiB (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// How long a request head may take to arrive, from its first byte; then 408 and the
    /// connection is closed (slowloris). Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a request body may go without a byte arriving, and a response without the
    /// client taking any of it; then 408 (if nothing was answered yet) and close. Default 30 s.
    pub body_idle_timeout: Duration,
    /// How long a connection may sit idle between requests before it is closed. Default 60 s.
    pub keep_alive_timeout: Duration,
    /// Open connections allowed from one client IP; more are closed as soon as they are
    /// accepted. Default 512.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections_per_ip: 512,
        }
    }
}

/// Options for the data plane.
#[derive(Debug)]
pub struct ProxyOptions {
    /// The Unix socket the control plane programs the proxy through.
    pub control_socket: PathBuf,
    /// The address public ports are bound on (0.0.0.0 by default).
    pub listen_ip: IpAddr,
    /// Where each container's access log (`<container>.log`, logfmt) is written; `None` = nowhere.
    pub access_log_dir: Option<PathBuf>,
    /// Per-connection bounds.
    pub limits: Limits,
    /// Listening sockets handed down by the process that started this one (see [`inherit_listeners`]):
    /// a port listed here is served from its socket instead of being bound anew, from the first
    /// table that names it on. Until then the socket queues connections; a table without its
    /// port closes it.
    pub inherited: Vec<(u16, OwnedFd)>,
}

impl ProxyOptions {
    /// Options for a control socket, listening on every IPv4 address, with default limits.
    pub fn new(control_socket: impl Into<PathBuf>) -> Self {
        ProxyOptions {
            control_socket: control_socket.into(),
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            access_log_dir: None,
            limits: Limits::default(),
            inherited: Vec::new(),
        }
    }
}
