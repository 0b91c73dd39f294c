//! The compiled route table the hot path reads, and the counters that outlive any one table.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::header::HeaderValue;

use crate::inflight::{InFlight, Watch};
use crate::stats::{AccessFile, RouteCounters, RouteStats};
use crate::RouteTable;
use std::path::PathBuf;

/// A [`RouteTable`] prepared for lookups: routes sorted longest prefix first, header values and
/// upstream authorities built once, counters attached.
pub(crate) struct Compiled {
    /// The table as programmed, reported back in `Status`.
    pub table: RouteTable,
    /// Sorted by port, for a binary search without hashing.
    ports: Vec<(u16, Box<[CRoute]>)>,
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

impl Compiled {
    /// An empty table, served before the control plane programs the proxy.
    pub fn empty() -> Self {
        Compiled {
            table: RouteTable::default(),
            ports: Vec::new(),
        }
    }

    /// The longest prefix on `port` matching `path` on a segment boundary, with the rest of the
    /// path after the prefix (empty when the path is exactly the prefix).
    #[cfg(test)]
    pub fn lookup<'p>(&self, port: u16, path: &'p str) -> Option<(&CRoute, &'p str)> {
        self.lookup_at(port, path)
            .map(|(at, rest)| (self.route(at), rest))
    }

    /// The longest prefix on `port` matching `path` on a segment boundary — where it is in the
    /// table, for [`Compiled::route`] — with the rest of the path after the prefix (empty when
    /// the path is exactly the prefix).
    pub fn lookup_at<'p>(&self, port: u16, path: &'p str) -> Option<(RouteAt, &'p str)> {
        let p = self.ports.binary_search_by_key(&port, |p| p.0).ok()?;
        self.ports[p].1.iter().enumerate().find_map(|(r, route)| {
            if &*route.prefix == "/" {
                return Some(((p, r), path));
            }
            let rest = path.strip_prefix(&*route.prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(((p, r), rest))
        })
    }

    /// The route found at `at` by [`Compiled::lookup_at`] on this table.
    pub fn route(&self, (p, r): RouteAt) -> &CRoute {
        &self.ports[p].1[r]
    }
}

/// Where a route is in a [`Compiled`] table: port and route index.
pub(crate) type RouteAt = (usize, usize);

impl CRoute {
    /// Whether the prefix is `/`, which leaves paths untouched.
    pub fn is_root(&self) -> bool {
        &*self.prefix == "/"
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

/// Counters keyed by name, kept across tables: in-flight per container (so a container that just
/// left the table can be watched draining) and requests per service.
#[derive(Default)]
pub(crate) struct Counters {
    in_flight: HashMap<String, Arc<InFlight>>,
    requests: HashMap<String, Arc<AtomicU64>>,
    routes: HashMap<(u16, String), Arc<RouteStats>>,
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
                        .get(&(port, prefix.to_string()))
                        .map(|s| s.snapshot(port, prefix, &r.service))
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
            let mut compiled: Vec<CRoute> = routes
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
                            .entry((port, prefix.to_string()))
                            .or_default()
                            .clone(),
                        upstreams,
                        retry_after: HeaderValue::from(r.retry_after.unwrap_or(1)),
                        next: AtomicUsize::new(0),
                    }
                })
                .collect();
            compiled.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            ports.push((port, compiled.into_boxed_slice()));
        }
        Ok(Compiled { table, ports })
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
            if !seen.insert(normalise(p)) {
                return Err(format!(
                    "port {port}: prefix {} is routed twice",
                    normalise(p)
                ));
            }
        }
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
                retry_after: None,
            })
            .collect();
        RouteTable {
            ship: "s".into(),
            generation: 0,
            ports: [(80, routes)].into(),
        }
    }

    fn matched(c: &Compiled, path: &str) -> Option<(String, String)> {
        c.lookup(80, path)
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
        assert!(c.lookup(81, "/").is_none());
        let c = Counters::default().compile(table(&["/echo"])).unwrap();
        assert_eq!(matched(&c, "/other"), None);
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut counters = Counters::default();
        assert!(counters.compile(table(&["echo"])).is_err());
        assert!(counters.compile(table(&["/a", "/a/"])).is_err());
        assert!(counters.compile(table(&["/a?b"])).is_err());
    }

    #[test]
    fn idle_containers_that_left_are_forgotten() {
        let mut counters = Counters::default();
        let old = counters.compile(table(&["/a"])).unwrap();
        let busy = old.lookup(80, "/a").unwrap().0.upstreams[0]
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
        let busy = old.lookup(80, "/a").unwrap().0.upstreams[0]
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
        let counter = &again.lookup(80, "/a").unwrap().0.upstreams[0].in_flight;
        assert!(Arc::ptr_eq(counter, &busy));
        drop(watch);
        assert!(counters.in_flight(&empty).is_empty());
    }
}
