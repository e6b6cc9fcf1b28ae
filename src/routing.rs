//! The route table: which route serves a request, by host and path.
//!
//! Compiled once per config generation from [`RouteConfig`]s; lookups are pure
//! and allocate nothing. The most specific route wins: an exact host, then the
//! longest matching wildcard (`*.example.com`), then routes without a host; within
//! a host, the longest matching path prefix. Hosts compare case-insensitively and
//! without their port.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::plan::{HostPattern, RouteConfig};

/// A compiled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in [`RouteTable::routes`].
    pub index: usize,
    pub name: String,
    /// Index into the upstreams of the same snapshot.
    pub upstream: usize,
    pub path_prefix: String,
    pub strip_prefix: bool,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Route indices per exact host, longest prefix first.
    exact: HostMap,
    /// Route indices per wildcard suffix (`.example.com`), longest prefix first.
    wildcard: HostMap,
    /// Routes without a host, longest prefix first.
    any: Vec<usize>,
}

/// Route indices by host. Hashed with xxh3 rather than SipHash: the keys
/// come from the config, so a client choosing the host it looks up cannot
/// make the table slow, and xxh3 hashes a short name several times faster.
type HostMap = HashMap<Box<str>, Vec<usize>, Xxh3DefaultBuilder>;

/// Longest host name DNS allows; longer Host headers match no host route.
const MAX_HOST: usize = 253;

impl RouteTable {
    /// Compiles `routes`; `upstream_index` maps an upstream name to its index.
    pub fn new(routes: &[RouteConfig], upstream_index: impl Fn(&str) -> Option<usize>) -> Self {
        let mut table = Self::default();
        for r in routes {
            let Some(upstream) = upstream_index(&r.upstream) else {
                continue;
            };
            let i = table.routes.len();
            table.routes.push(Route {
                index: i,
                name: r.name.clone(),
                upstream,
                path_prefix: r.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
            });
            let list = match &r.host {
                Some(HostPattern::Exact(h)) => table.exact.entry(h.as_str().into()).or_default(),
                Some(HostPattern::Wildcard(s)) => {
                    table.wildcard.entry(s.as_str().into()).or_default()
                }
                None => &mut table.any,
            };
            list.push(i);
        }
        let routes = &table.routes;
        let by_prefix = |list: &mut Vec<usize>| {
            // Stable: among equal prefixes the first in the file wins.
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].path_prefix.len()));
        };
        table.exact.values_mut().for_each(by_prefix);
        table.wildcard.values_mut().for_each(by_prefix);
        by_prefix(&mut table.any);
        table
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request to `host` (a Host header or URI authority,
    /// possibly with a port; `None` if the request had none) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let mut buf = [0u8; MAX_HOST];
        // A table without host routes needs no host.
        let by_host = !(self.exact.is_empty() && self.wildcard.is_empty());
        let host = host
            .filter(|_| by_host)
            .and_then(|h| normalize_host(h, &mut buf));
        if let Some(host) = host {
            if let Some(r) = self.exact.get(host).and_then(|l| self.first_match(l, path)) {
                return Some(r);
            }
            if !self.wildcard.is_empty() {
                // Try suffixes from the longest: for a.b.example.com that is
                // .b.example.com, then .example.com, then .com.
                for (dot, _) in host.match_indices('.') {
                    if dot == 0 {
                        continue;
                    }
                    if let Some(r) = self
                        .wildcard
                        .get(&host[dot..])
                        .and_then(|l| self.first_match(l, path))
                    {
                        return Some(r);
                    }
                }
            }
        }
        self.first_match(&self.any, path)
    }

    fn first_match(&self, list: &[usize], path: &str) -> Option<&Route> {
        list.iter()
            .map(|&i| &self.routes[i])
            .find(|r| path.starts_with(r.path_prefix.as_str()))
    }
}

/// Lower-cases `host` into `buf` and drops a port and a trailing dot.
/// `None` if it is too long or empty.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let host = if host.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the `]`.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// The path and query to send upstream for `path_and_query` under `route`.
/// `None` when nothing changes (the common case, which then allocates nothing).
pub fn rewrite_path(route: &Route, path_and_query: &str) -> Option<String> {
    if !route.strip_prefix || route.path_prefix == "/" {
        return None;
    }
    let rest = path_and_query.get(route.path_prefix.len()..).unwrap_or("");
    Some(if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(host: Option<&str>, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            name: format!("{}{prefix}", host.unwrap_or("*")),
            host: host.map(|h| match h.strip_prefix('*') {
                Some(s) => HostPattern::Wildcard(s.to_owned()),
                None => HostPattern::Exact(h.to_owned()),
            }),
            path_prefix: prefix.to_owned(),
            upstream: upstream.to_owned(),
            strip_prefix: false,
        }
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        let names = ["a", "b", "c", "d", "e"];
        RouteTable::new(routes, |n| names.iter().position(|x| *x == n))
    }

    fn upstream_for(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.find(host, path).map(|r| r.upstream)
    }

    #[test]
    fn most_specific_host_then_longest_prefix_wins() {
        let t = table(&[
            route(None, "/", "a"),
            route(Some("*.example.com"), "/", "b"),
            route(Some("api.example.com"), "/", "c"),
            route(Some("api.example.com"), "/v2/", "d"),
            route(Some("*.eu.example.com"), "/", "e"),
        ]);
        assert_eq!(upstream_for(&t, Some("api.example.com"), "/v2/x"), Some(3));
        assert_eq!(
            upstream_for(&t, Some("API.Example.COM:8080"), "/v1"),
            Some(2)
        );
        assert_eq!(upstream_for(&t, Some("www.example.com"), "/"), Some(1));
        assert_eq!(upstream_for(&t, Some("x.eu.example.com"), "/"), Some(4));
        assert_eq!(upstream_for(&t, Some("example.com"), "/"), Some(0));
        assert_eq!(upstream_for(&t, None, "/"), Some(0));
        assert_eq!(upstream_for(&t, Some("api.example.com."), "/"), Some(2));
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_back_to_less_specific_routes() {
        let t = table(&[
            route(Some("api.example.com"), "/api/", "a"),
            route(None, "/", "b"),
        ]);
        assert_eq!(upstream_for(&t, Some("api.example.com"), "/other"), Some(1));
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[route(Some("api.example.com"), "/", "a")]);
        assert_eq!(upstream_for(&t, Some("other.com"), "/"), None);
        assert_eq!(upstream_for(&t, None, "/"), None);
    }

    #[test]
    fn routes_are_listed_in_file_order_without_those_of_unknown_upstreams() {
        let t = table(&[
            route(None, "/", "b"),
            route(None, "/lost/", "nope"),
            route(Some("api.example.com"), "/", "a"),
        ]);
        let listed: Vec<(usize, &str, usize)> = t
            .routes()
            .iter()
            .map(|r| (r.index, r.name.as_str(), r.upstream))
            .collect();
        assert_eq!(listed, [(0, "*/", 1), (1, "api.example.com/", 0)]);
        let found = t.find(Some("api.example.com"), "/").expect("a route");
        assert_eq!(&t.routes()[found.index], found);
    }

    /// A name of `len` characters ending in `.example.com`, in DNS labels.
    fn long_name(len: usize) -> String {
        let suffix = ".example.com";
        let mut name = String::new();
        while name.len() < len - suffix.len() {
            if !name.is_empty() {
                name.push('.');
            }
            let room = len - suffix.len() - name.len();
            name.push_str(&"a".repeat(room.min(63)));
        }
        name + suffix
    }

    #[test]
    fn hosts_longer_than_dns_allows_match_only_routes_without_a_host() {
        let (longest, too_long) = (long_name(MAX_HOST), long_name(MAX_HOST + 1));
        assert_eq!((longest.len(), too_long.len()), (253, 254));
        let t = table(&[
            route(None, "/", "a"),
            route(Some("*.example.com"), "/", "b"),
            route(Some(longest.as_str()), "/", "c"),
        ]);
        assert_eq!(upstream_for(&t, Some(&longest), "/"), Some(2));
        assert_eq!(
            upstream_for(&t, Some(&format!("{longest}:8080")), "/"),
            Some(2)
        );
        assert_eq!(upstream_for(&t, Some(&too_long), "/"), Some(0));
        let far_too_long = long_name(4 * MAX_HOST);
        assert_eq!(upstream_for(&t, Some(&far_too_long), "/"), Some(0));
    }

    #[test]
    fn ipv6_hosts_lose_only_their_port() {
        let mut buf = [0; MAX_HOST];
        assert_eq!(normalize_host("[::1]:8080", &mut buf), Some("[::1]"));
        assert_eq!(normalize_host("[::1]", &mut buf), Some("[::1]"));
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        let r = |prefix: &str| Route {
            index: 0,
            name: String::new(),
            upstream: 0,
            path_prefix: prefix.into(),
            strip_prefix: true,
        };
        assert_eq!(
            rewrite_path(&r("/api/"), "/api/users?id=7").as_deref(),
            Some("/users?id=7")
        );
        assert_eq!(
            rewrite_path(&r("/api"), "/api/users?id=7").as_deref(),
            Some("/users?id=7")
        );
        assert_eq!(rewrite_path(&r("/api"), "/api").as_deref(), Some("/"));
        assert_eq!(
            rewrite_path(&r("/api"), "/api?x=1").as_deref(),
            Some("/?x=1")
        );
        assert_eq!(rewrite_path(&r("/"), "/x"), None);
    }

    proptest! {
        /// Whatever the table, the route found matches the request and no
        /// matching route is more specific.
        #[test]
        fn found_route_is_the_most_specific_match(
            specs in proptest::collection::vec((0usize..4, 0usize..4), 1..12),
            host_i in 0usize..5,
            path_i in 0usize..5,
        ) {
            let hosts = [None, Some("*.example.com"), Some("*.a.example.com"), Some("x.a.example.com")];
            let prefixes = ["/", "/a", "/a/", "/a/b"];
            let mut seen = std::collections::HashSet::new();
            let routes: Vec<RouteConfig> = specs.iter()
                .filter(|s| seen.insert(**s))
                .map(|&(h, p)| route(hosts[h], prefixes[p], "a"))
                .collect();
            let t = RouteTable::new(&routes, |_| Some(0));
            let req_hosts = [None, Some("x.a.example.com"), Some("y.a.example.com"), Some("b.example.com"), Some("other.org")];
            let req_paths = ["/", "/a", "/a/", "/a/b/c", "/b"];
            let (host, path) = (req_hosts[host_i], req_paths[path_i]);
            let matches = |r: &RouteConfig| {
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(HostPattern::Exact(e)), Some(h)) => e == h,
                    (Some(HostPattern::Wildcard(s)), Some(h)) => h.ends_with(s.as_str()) && h.len() > s.len(),
                    (Some(_), None) => false,
                };
                host_ok && path.starts_with(r.path_prefix.as_str())
            };
            let rank = |r: &RouteConfig| (r.host.as_ref().map_or((0, false), |h| h.specificity()), r.path_prefix.len());
            let best = routes.iter().filter(|r| matches(r)).map(rank).max();
            let found = t.find(host, path).map(|f| routes.iter().find(|r| r.name == f.name).expect("known route"));
            prop_assert_eq!(found.map(rank), best);
            if let Some(f) = found { prop_assert!(matches(f)); }
        }
    }
}
