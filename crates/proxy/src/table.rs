//! The compiled route table the hot path reads, and the counters that outlive any one table.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::inflight::{InFlight, Watch};
use crate::stats::{AccessFile, RouteCounters, RouteStats};
use crate::RouteTable;
use std::path::PathBuf;

/// A [`RouteTable`] prepared for lookups: routes sorted longest prefix first per host, header
/// values and upstream authorities built once, counters attached.
pub(crate) struct Compiled {
    /// The table as programmed, reported back in `Status`.
    pub table: RouteTable,
    /// Sorted by port, for a binary search without hashing.
    ports: Vec<(u16, PortRoutes)>,
    /// ACME HTTP-01 key authorizations by token.
    pub http01: HashMap<String, Bytes>,
}

/// The routes of one port, indexed by the hosts they answer for.
struct PortRoutes {
    routes: Box<[CRoute]>,
    /// Routes naming a host exactly, longest prefix first.
    exact: HashMap<Box<str>, Box<[usize]>>,
    /// Routes naming `*.<key>`, longest prefix first.
    wildcard: HashMap<Box<str>, Box<[usize]>>,
    /// Routes for any host, longest prefix first.
    any: Box<[usize]>,
}

/// A route ready to serve.
pub(crate) struct CRoute {
    /// Normalised: no trailing slash, except the root `/`.
    prefix: Box<str>,
    /// `X-Forwarded-Prefix`, absent for the root.
    pub forwarded_prefix: Option<HeaderValue>,
    /// The service name, for counts, logs and error pages.
    pub service: Arc<str>,
    /// Requests served for this service, shared by every route of the service.
    pub requests: Arc<AtomicU64>,
    /// This route's status classes, bytes and latencies, kept across tables.
    pub stats: Arc<RouteStats>,
    /// Where requests may go; empty means 503.
    pub upstreams: Box<[CUpstream]>,
    /// `Retry-After` of the 503 answered when there are no upstreams.
    pub retry_after: HeaderValue,
    /// The largest request body accepted.
    pub max_body: Option<u64>,
    /// How long the upstream may take to answer with a response head.
    pub timeout: Duration,
    /// How long the request body may stall; `None`: the proxy's limit.
    pub body_timeout: Option<Duration>,
    /// Redirect to HTTPS on this port instead of proxying.
    pub https_redirect: Option<u16>,
    /// Rotates the starting point of the least-in-flight scan, so ties spread evenly.
    next: AtomicUsize,
}

/// An upstream ready to receive requests.
pub(crate) struct CUpstream {
    /// The container's address and private port.
    pub addr: SocketAddr,
    /// The container's name, for counts and logs.
    pub container: Arc<str>,
    /// Shared with every table naming the same container, so counts survive swaps.
    pub in_flight: Arc<InFlight>,
    /// The version it runs, for the access log.
    pub version: Arc<str>,
    /// Its access log, when the proxy writes them.
    pub access: Option<Arc<AccessFile>>,
}

/// How long an upstream may take to send a response head when its route does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl Compiled {
    /// An empty table, served before the control plane programs the proxy.
    pub fn empty() -> Self {
        Compiled {
            table: RouteTable::default(),
            ports: Vec::new(),
            http01: HashMap::new(),
        }
    }

    /// The route on `port` for `host` (lower-case, without a port) whose prefix is the longest
    /// matching `path` on a segment boundary, with the rest of the path after the prefix.
    #[cfg(test)]
    pub fn lookup<'p>(
        &self,
        port: u16,
        host: Option<&str>,
        path: &'p str,
    ) -> Option<(&CRoute, &'p str)> {
        self.lookup_at(port, host, path)
            .map(|(at, rest)| (self.route(at), rest))
    }

    /// Like `lookup`, with where the route is in the table for [`Compiled::route`]: routes
    /// naming `host` exactly first, then wildcards, then routes for any host.
    pub fn lookup_at<'p>(
        &self,
        port: u16,
        host: Option<&str>,
        path: &'p str,
    ) -> Option<(RouteAt, &'p str)> {
        let p = self.ports.binary_search_by_key(&port, |p| p.0).ok()?;
        let routes = &self.ports[p].1;
        let found = |candidates: &[usize]| {
            candidates.iter().find_map(|&r| {
                let rest = routes.routes[r].strip(path)?;
                Some(((p, r), rest))
            })
        };
        if let Some(host) = host.filter(|_| !routes.exact.is_empty() || !routes.wildcard.is_empty())
        {
            if let Some(hit) = routes.exact.get(host).and_then(|c| found(c)) {
                return Some(hit);
            }
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(hit) = routes.wildcard.get(parent).and_then(|c| found(c)) {
                    return Some(hit);
                }
            }
        }
        found(&routes.any)
    }

    /// The route found at `at` by [`Compiled::lookup_at`] on this table.
    pub fn route(&self, (p, r): RouteAt) -> &CRoute {
        &self.ports[p].1.routes[r]
    }

    /// Whether `port` speaks TLS in this table.
    pub fn is_tls(&self, port: u16) -> bool {
        self.table.tls_ports.contains(&port)
    }
}

/// Where a route is in a [`Compiled`] table: port and route index.
pub(crate) type RouteAt = (usize, usize);

impl CRoute {
    /// Whether the prefix is `/`, which leaves paths untouched.
    pub fn is_root(&self) -> bool {
        &*self.prefix == "/"
    }

    /// The rest of `path` after this route's prefix, if the prefix matches on a segment boundary.
    fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.is_root() {
            return Some(path);
        }
        let rest = path.strip_prefix(&*self.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// The index of the upstream with the fewest requests in flight, or none when the route has
    /// none.
    pub fn pick_at(&self) -> Option<usize> {
        let n = self.upstreams.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = self.upstreams[start].in_flight.get_relaxed();
        for i in 1..n {
            let u = (start + i) % n;
            let load = self.upstreams[u].in_flight.get_relaxed();
            if load < best_load {
                best = u;
                best_load = load;
            }
        }
        Some(best)
    }
}

/// A route's identity across tables: port, hosts (as listed) and normalised prefix.
type RouteKey = (u16, Vec<String>, String);

/// Counters keyed by name, kept across tables: in-flight per container (so a container that just
/// left the table can be watched draining) and requests per service.
#[derive(Default)]
pub(crate) struct Counters {
    in_flight: HashMap<String, Arc<InFlight>>,
    requests: HashMap<String, Arc<AtomicU64>>,
    routes: HashMap<RouteKey, Arc<RouteStats>>,
    access_dir: Option<PathBuf>,
    access: HashMap<String, Arc<AccessFile>>,
}

impl Counters {
    /// A registry that writes access logs under `access_dir`, if given.
    pub fn new(access_dir: Option<PathBuf>) -> Self {
        Counters {
            access_dir,
            ..Counters::default()
        }
    }

    fn access_file(&mut self, container: &str) -> Option<Arc<AccessFile>> {
        let dir = self.access_dir.as_ref()?;
        if let Some(f) = self.access.get(container) {
            return Some(f.clone());
        }
        match AccessFile::open(dir, container) {
            Ok(f) => {
                let f = Arc::new(f);
                self.access.insert(container.to_owned(), f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::warn!(container, "cannot open access log: {e}");
                None
            }
        }
    }

    /// Writes every access log's pending lines.
    pub fn flush_access_logs(&self) {
        for file in self.access.values() {
            file.flush();
        }
    }

    /// Counters of every route in `table`.
    pub fn routes(&self, table: &RouteTable) -> Vec<RouteCounters> {
        table
            .ports
            .iter()
            .flat_map(|(&port, routes)| {
                routes.iter().filter_map(move |r| {
                    let prefix = normalise(&r.prefix);
                    self.routes
                        .get(&(port, r.hosts.clone(), prefix.to_string()))
                        .map(|s| s.snapshot(port, &r.hosts, prefix, &r.service))
                })
            })
            .collect()
    }

    /// Checks and compiles a table, attaching this registry's counters.
    pub fn compile(&mut self, table: RouteTable) -> Result<Compiled, String> {
        validate(&table)?;
        let containers: Vec<String> = table
            .ports
            .values()
            .flatten()
            .flat_map(|r| r.upstreams.iter().map(|u| u.container.clone()))
            .collect();
        let access: HashMap<String, Option<Arc<AccessFile>>> = containers
            .iter()
            .map(|c| (c.clone(), self.access_file(c)))
            .collect();
        let mut ports = Vec::with_capacity(table.ports.len());
        for (&port, routes) in &table.ports {
            let compiled: Vec<CRoute> = routes
                .iter()
                .map(|r| {
                    let prefix = normalise(&r.prefix);
                    let upstreams = r
                        .upstreams
                        .iter()
                        .map(|u| CUpstream {
                            addr: u.addr,
                            container: Arc::from(u.container.as_str()),
                            in_flight: counter(&mut self.in_flight, &u.container),
                            version: Arc::from(u.version.as_str()),
                            access: access.get(&u.container).cloned().flatten(),
                        })
                        .collect();
                    CRoute {
                        forwarded_prefix: (prefix != "/").then(|| {
                            HeaderValue::from_str(prefix).expect("validated as header-safe")
                        }),
                        prefix: prefix.into(),
                        service: Arc::from(r.service.as_str()),
                        requests: counter(&mut self.requests, &r.service),
                        stats: self
                            .routes
                            .entry((port, r.hosts.clone(), prefix.to_string()))
                            .or_default()
                            .clone(),
                        upstreams,
                        retry_after: HeaderValue::from(r.retry_after.unwrap_or(1)),
                        max_body: r.max_body,
                        timeout: r.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
                        body_timeout: r.body_timeout_ms.map(Duration::from_millis),
                        https_redirect: r.https_redirect,
                        next: AtomicUsize::new(0),
                    }
                })
                .collect();
            let mut exact: HashMap<Box<str>, Vec<usize>> = HashMap::new();
            let mut wildcard: HashMap<Box<str>, Vec<usize>> = HashMap::new();
            let mut any = Vec::new();
            for (i, r) in routes.iter().enumerate() {
                if r.hosts.is_empty() {
                    any.push(i);
                }
                for host in &r.hosts {
                    match host.strip_prefix("*.") {
                        Some(parent) => wildcard.entry(parent.into()).or_default().push(i),
                        None => exact.entry(host.as_str().into()).or_default().push(i),
                    }
                }
            }
            let longest_first = |mut v: Vec<usize>| {
                v.sort_by_key(|&i| std::cmp::Reverse(compiled[i].prefix.len()));
                v.into_boxed_slice()
            };
            let exact = exact
                .into_iter()
                .map(|(h, v)| (h, longest_first(v)))
                .collect();
            let wildcard = wildcard
                .into_iter()
                .map(|(h, v)| (h, longest_first(v)))
                .collect();
            let any = longest_first(any);
            ports.push((
                port,
                PortRoutes {
                    routes: compiled.into_boxed_slice(),
                    exact,
                    wildcard,
                    any,
                },
            ));
        }
        let http01 = table
            .acme
            .http01
            .iter()
            .map(|(token, auth)| (token.clone(), Bytes::from(auth.clone())))
            .collect();
        Ok(Compiled {
            table,
            ports,
            http01,
        })
    }

    /// Watches the named containers' requests in flight; a container the proxy does not know
    /// has none.
    pub fn watch(&self, containers: &[String]) -> Watch {
        let names: std::collections::BTreeSet<&String> = containers.iter().collect();
        Watch::new(
            names
                .into_iter()
                .filter_map(|name| self.in_flight.get(name).cloned())
                .collect(),
        )
    }

    /// In-flight counts for the containers in `table` and for any other container still busy
    /// or watched; idle containers that left the table are forgotten here.
    pub fn in_flight(&mut self, table: &RouteTable) -> BTreeMap<String, u64> {
        let named: std::collections::HashSet<&str> = table
            .ports
            .values()
            .flatten()
            .flat_map(|r| r.upstreams.iter().map(|u| u.container.as_str()))
            .collect();
        self.in_flight.retain(|name, count| {
            named.contains(name.as_str()) || count.get() > 0 || count.is_watched()
        });
        let live = &self.in_flight;
        self.access.retain(|name, _| live.contains_key(name));
        self.in_flight
            .iter()
            .map(|(name, count)| (name.clone(), count.get()))
            .collect()
    }

    /// Requests served per service since the proxy started.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.requests
            .iter()
            .map(|(name, count)| (name.clone(), count.load(Ordering::Relaxed)))
            .collect()
    }
}

fn counter<T: Default>(map: &mut HashMap<String, Arc<T>>, name: &str) -> Arc<T> {
    if let Some(c) = map.get(name) {
        return c.clone();
    }
    let c = Arc::new(T::default());
    map.insert(name.to_owned(), c.clone());
    c
}

/// `/echo/` and `/echo` are the same prefix; trailing slashes would break segment matching.
fn normalise(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/"
    } else {
        trimmed
    }
}

/// Rejects tables the proxy could not serve unambiguously; the old table then stays in force.
fn validate(table: &RouteTable) -> Result<(), String> {
    for (&port, routes) in &table.ports {
        if port == 0 {
            return Err("port 0 cannot be listened on".into());
        }
        let mut seen = std::collections::HashSet::new();
        for route in routes {
            let p = &route.prefix;
            if !p.starts_with('/') || p.contains(['?', '#']) || HeaderValue::from_str(p).is_err() {
                return Err(format!(
                    "port {port}: prefix {p:?} must be a URL path starting with '/'"
                ));
            }
            for host in &route.hosts {
                check_host(host).map_err(|e| format!("port {port}, prefix {p}: {e}"))?;
            }
            if route.https_redirect == Some(0) {
                return Err(format!(
                    "port {port}, prefix {p}: https_redirect must name a port, 1 to 65535"
                ));
            }
            let hosts: Vec<Option<&str>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                route.hosts.iter().map(|h| Some(h.as_str())).collect()
            };
            for host in hosts {
                if !seen.insert((host, normalise(p))) {
                    let on = host.map_or(String::new(), |h| format!(" for host {h}"));
                    return Err(format!(
                        "port {port}: prefix {} is routed twice{on}",
                        normalise(p)
                    ));
                }
            }
        }
    }
    let certs = table.certs.iter().chain(&table.acme.tls_alpn01);
    for cert in certs {
        if cert.hosts.is_empty() {
            return Err(format!(
                "certificate {} names no host",
                cert.cert_path.display()
            ));
        }
        for host in &cert.hosts {
            check_host(host)
                .map_err(|e| format!("certificate {}: {e}", cert.cert_path.display()))?;
        }
    }
    Ok(())
}

/// A host name as routes and certificates name them: lower-case DNS labels, the leftmost one
/// possibly `*`, no port.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "host {host:?} must be a lower-case DNS name (letters, digits, '-', dots), \
             optionally `*.` and a name, without a port"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Route, Upstream};

    fn table(prefixes: &[&str]) -> RouteTable {
        let routes = prefixes
            .iter()
            .map(|p| Route {
                prefix: p.to_string(),
                service: format!("svc{p}"),
                upstreams: vec![Upstream {
                    addr: "127.0.0.1:9".parse().unwrap(),
                    version: "v1".into(),
                    container: format!("c{p}"),
                }],
                ..Route::default()
            })
            .collect();
        RouteTable {
            ship: "s".into(),
            ports: [(80, routes)].into(),
            ..RouteTable::default()
        }
    }

    fn matched(c: &Compiled, path: &str) -> Option<(String, String)> {
        c.lookup(80, None, path)
            .map(|(r, rest)| (r.prefix.to_string(), rest.to_string()))
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let c = Counters::default()
            .compile(table(&["/", "/echo", "/echo/deep/"]))
            .unwrap();
        let m = |p| matched(&c, p);
        assert_eq!(m("/echo"), Some(("/echo".into(), "".into())));
        assert_eq!(m("/echo/"), Some(("/echo".into(), "/".into())));
        assert_eq!(m("/echo/x"), Some(("/echo".into(), "/x".into())));
        assert_eq!(m("/echoes"), Some(("/".into(), "/echoes".into())));
        assert_eq!(m("/echo/deep/x"), Some(("/echo/deep".into(), "/x".into())));
        assert_eq!(m("/echo/deeper"), Some(("/echo".into(), "/deeper".into())));
        assert!(c.lookup(81, None, "/").is_none());
        let c = Counters::default().compile(table(&["/echo"])).unwrap();
        assert_eq!(matched(&c, "/other"), None);
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut counters = Counters::default();
        assert!(counters.compile(table(&["echo"])).is_err());
        assert!(counters.compile(table(&["/a", "/a/"])).is_err());
        assert!(counters.compile(table(&["/a?b"])).is_err());
        for bad in [
            "Example.com",
            "a.example.com:80",
            "*",
            "*.",
            "a..b",
            "a.*.b",
            "",
        ] {
            let mut t = table(&["/"]);
            t.ports.get_mut(&80).unwrap()[0].hosts = vec![bad.into()];
            assert!(counters.compile(t).is_err(), "{bad:?}");
        }
        // One prefix twice is fine for different hosts, not for the same one.
        let mut t = table(&["/a", "/a/"]);
        t.ports.get_mut(&80).unwrap()[0].hosts = vec!["a.test".into()];
        assert!(counters.compile(t.clone()).is_ok());
        t.ports.get_mut(&80).unwrap()[1].hosts = vec!["b.test".into(), "a.test".into()];
        let err = counters.compile(t).err().unwrap();
        assert!(err.contains("for host a.test"), "{err}");
    }

    #[test]
    fn exact_hosts_then_wildcards_then_any_host() {
        let mut t = table(&["/", "/", "/", "/api", "/x"]);
        let routes = t.ports.get_mut(&80).unwrap();
        for (i, r) in routes.iter_mut().enumerate() {
            r.service = format!("s{i}");
        }
        routes[0].hosts = vec!["a.example.com".into()];
        routes[1].hosts = vec!["*.example.com".into()];
        routes[3].hosts = vec!["*.example.com".into()];
        routes[4].hosts = vec!["a.example.com".into(), "other.test".into()];
        let c = Counters::default().compile(t).unwrap();
        let m = |host: Option<&str>, path| {
            c.lookup(80, host, path)
                .map(|(r, rest)| format!("{} {rest}", r.service))
        };
        assert_eq!(m(Some("a.example.com"), "/y").unwrap(), "s0 /y");
        assert_eq!(m(Some("a.example.com"), "/x/1").unwrap(), "s4 /1");
        // Exact hosts first, even over a longer prefix of a wildcard.
        assert_eq!(m(Some("a.example.com"), "/api/v").unwrap(), "s0 /api/v");
        // An exact host without a matching prefix falls through to routes for any host.
        assert_eq!(m(Some("other.test"), "/api").unwrap(), "s2 /api");
        assert_eq!(m(Some("b.example.com"), "/api").unwrap(), "s3 ");
        assert_eq!(m(Some("b.example.com"), "/z").unwrap(), "s1 /z");
        // Exactly one label more: neither the parent nor a grandchild.
        assert_eq!(m(Some("example.com"), "/z").unwrap(), "s2 /z");
        assert_eq!(m(Some("a.b.example.com"), "/z").unwrap(), "s2 /z");
        assert_eq!(m(None, "/x").unwrap(), "s2 /x");
        assert_eq!(m(Some("other.test"), "/x").unwrap(), "s4 ");
    }

    #[test]
    fn idle_containers_that_left_are_forgotten() {
        let mut counters = Counters::default();
        let old = counters.compile(table(&["/a"])).unwrap();
        let busy = old.lookup(80, None, "/a").unwrap().0.upstreams[0]
            .in_flight
            .clone();
        busy.enter();
        let empty = RouteTable::default();
        assert_eq!(counters.in_flight(&empty).get("c/a"), Some(&1));
        busy.leave();
        assert!(counters.in_flight(&empty).is_empty());
    }

    #[test]
    fn a_watched_container_is_not_forgotten() {
        let mut counters = Counters::default();
        let old = counters.compile(table(&["/a"])).unwrap();
        let busy = old.lookup(80, None, "/a").unwrap().0.upstreams[0]
            .in_flight
            .clone();
        busy.enter();
        let watch = counters.watch(&["c/a".into(), "c/a".into(), "unknown".into()]);
        assert_eq!(
            watch.busy(),
            1,
            "each container counts once, unknown ones as 0"
        );
        busy.leave();
        let empty = RouteTable::default();
        assert_eq!(counters.in_flight(&empty).get("c/a"), Some(&0));
        // Named again, the container keeps the counter the watch holds.
        let again = counters.compile(table(&["/a"])).unwrap();
        let counter = &again.lookup(80, None, "/a").unwrap().0.upstreams[0].in_flight;
        assert!(Arc::ptr_eq(counter, &busy));
        drop(watch);
        assert!(counters.in_flight(&empty).is_empty());
    }
}
