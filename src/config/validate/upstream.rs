//! `[[upstreams]]`: servers, balancing and health checks.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use crate::config::raw::*;
use crate::plan::*;

use super::validator::{Names, Validator};
use crate::config::defaults;

/// The longest text a health check may look for in a body.
const MAX_BODY_CONTAINS: usize = 1024;

/// Whether some host name matches both route hosts (`None`: any host).
fn may_overlap(a: Option<&HostPattern>, b: Option<&HostPattern>) -> bool {
    use HostPattern::{Exact, Wildcard};
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(Exact(a)), Some(Exact(b))) => a == b,
        (Some(Exact(name)), Some(Wildcard(suffix)))
        | (Some(Wildcard(suffix)), Some(Exact(name))) => name.ends_with(suffix.as_str()),
        (Some(Wildcard(a)), Some(Wildcard(b))) => {
            a.ends_with(b.as_str()) || b.ends_with(a.as_str())
        }
    }
}

/// A server's address as written.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Addr {
    Ip(std::net::SocketAddr),
    Name(String, u16),
}

impl Validator<'_> {
    pub fn upstreams(&mut self, raw: Vec<Spanned<RawUpstream>>) -> Vec<UpstreamConfig> {
        let mut names = Names::new("upstream");
        let mut out = Vec::new();
        for item in raw {
            let span = item.span();
            let u = item.into_inner();
            names.check(self, &u.name);
            out.push(self.upstream(span, u));
        }
        out
    }

    /// Warns at the second of two sticky upstreams with one cookie name
    /// (`cookies`: each sticky upstream's name and cookie, in file order)
    /// that `routes` serve under a common host: the cookie is the host's,
    /// so a client of both gets each one's in turn, which names no server
    /// of the other, and stays with neither.
    pub fn shared_cookies(
        &mut self,
        cookies: &[(String, Spanned<String>)],
        routes: &[RouteConfig],
    ) {
        let hosts = |upstream: &str| -> Vec<Option<&HostPattern>> {
            routes
                .iter()
                .filter(|r| r.upstream == upstream)
                .map(|r| r.host.as_ref())
                .collect()
        };
        for (i, (second, cookie)) in cookies.iter().enumerate() {
            let theirs = hosts(second);
            let first = cookies[..i].iter().find(|(first, other)| {
                other.get_ref() == cookie.get_ref()
                    && hosts(first)
                        .iter()
                        .any(|a| theirs.iter().any(|b| may_overlap(*a, *b)))
            });
            if let Some((first, _)) = first {
                self.warning(
                    cookie.span(),
                    format!(
                        "upstreams.sticky.cookie: `{}` is also the cookie of upstream `{first}` under a host both are routed from; a client of both stays on a server of neither, so give each its own name",
                        cookie.get_ref()
                    ),
                );
            }
        }
    }

    /// The `dns_refresh` of an upstream whose `NAME:PORT` servers are
    /// `names` (a refresh written without any is a mistake).
    fn dns_refresh(&mut self, raw: Option<&Text>, names: &[NamedServer]) -> Duration {
        if let (Some(t), true) = (raw, names.is_empty()) {
            self.problem(
                t.span(),
                "upstreams.dns_refresh: no server of this upstream is written as NAME:PORT",
            );
        }
        let key = "upstreams.dns_refresh";
        self.timeout_at_least(raw, key, Duration::from_secs(1), defaults::DNS_REFRESH)
    }

    /// One upstream, its keys checked; `span` is where its table is.
    fn upstream(&mut self, span: std::ops::Range<usize>, u: RawUpstream) -> UpstreamConfig {
        let (servers, names) = self.servers(&u.servers);
        let dns_refresh = self.dns_refresh(u.dns_refresh.as_ref(), &names);
        // A balance written but unreadable is not round_robin: a hash_key
        // beside it may well be meant for it.
        let balance = if self.dropped.key(&span, "balance") {
            Balance::RoundRobin
        } else {
            self.balance(u.balance.as_ref(), u.hash_key.as_ref())
        };
        let health_check = u.health_check.map(|h| self.health_check(h));
        let protocol = match u.protocol {
            None | Some(RawProtocol::Http1) => Protocol::Http1,
            Some(RawProtocol::H2) => Protocol::H2,
        };
        let tls = u.tls.and_then(|t| self.upstream_tls(t, protocol));
        let sticky = u.sticky.map(|s| self.sticky(s.into_inner()));
        UpstreamConfig {
            name: u.name.into_inner(),
            balance,
            protocol,
            servers,
            names,
            dns_refresh,
            connect_timeout: self.timeout(
                u.connect_timeout.as_ref(),
                "upstreams.connect_timeout",
                defaults::CONNECT_TIMEOUT,
            ),
            response_timeout: self.timeout(
                u.response_timeout.as_ref(),
                "upstreams.response_timeout",
                defaults::RESPONSE_TIMEOUT,
            ),
            body_timeout: self.timeout(
                u.body_timeout.as_ref(),
                "upstreams.body_timeout",
                defaults::UPSTREAM_BODY_TIMEOUT,
            ),
            idle_timeout: self.timeout(
                u.idle_timeout.as_ref(),
                "upstreams.idle_timeout",
                defaults::IDLE_TIMEOUT,
            ),
            max_idle_per_server: u
                .max_idle_per_server
                .and_then(|n| self.int_in(&n, 0, 65535, "upstreams.max_idle_per_server"))
                .map_or(defaults::MAX_IDLE_PER_SERVER, |n| n as usize),
            fail_timeout: self.timeout(
                u.fail_timeout.as_ref(),
                "upstreams.fail_timeout",
                defaults::FAIL_TIMEOUT,
            ),
            retry_on: u.retry_on.map_or_else(
                || defaults::RETRY_ON.to_vec(),
                |list| self.statuses(&list, "upstreams.retry_on"),
            ),
            retry_budget: self.share(
                u.retry_budget,
                "upstreams.retry_budget",
                defaults::RETRY_BUDGET,
            ),
            max_in_flight: u
                .max_in_flight
                .and_then(|n| self.int_in(&n, 1, 1_000_000, "upstreams.max_in_flight"))
                .and_then(|n| u32::try_from(n).ok()),
            max_connections: u
                .max_connections
                .and_then(|n| self.int_in(&n, 1, 1_000_000, "upstreams.max_connections"))
                .and_then(|n| u32::try_from(n).ok()),
            queue_timeout: self.timeout(
                u.queue_timeout.as_ref(),
                "upstreams.queue_timeout",
                defaults::QUEUE_TIMEOUT,
            ),
            slow_start: u
                .slow_start
                .as_ref()
                .map(|t| self.timeout(Some(t), "upstreams.slow_start", Duration::from_secs(30))),
            health_check,
            tls,
            eject: u.eject.map(|e| self.eject(e)),
            sticky: sticky.flatten(),
        }
    }

    /// A share from 0 to 1; `default` when absent or out of range.
    pub(super) fn share(&mut self, raw: Option<Spanned<f64>>, key: &str, default: f64) -> f64 {
        let Some(raw) = raw else {
            return default;
        };
        let share = *raw.get_ref();
        if (0.0..=1.0).contains(&share) {
            return share;
        }
        self.problem(
            raw.span(),
            format!(
                "{key}: {share} is out of range, expected a share from 0 to 1, such as {default}"
            ),
        );
        default
    }

    pub fn eject(&mut self, raw: RawEject) -> EjectConfig {
        EjectConfig {
            consecutive_failures: raw
                .consecutive_failures
                .and_then(|n| self.int_in(&n, 1, 1000, "upstreams.eject.consecutive_failures"))
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new)
                .unwrap_or(defaults::EJECT_AFTER),
            statuses: raw.statuses.map_or_else(Vec::new, |list| {
                self.statuses(&list, "upstreams.eject.statuses")
            }),
            base_time: self.timeout(
                raw.base_time.as_ref(),
                "upstreams.eject.base_time",
                defaults::EJECT_TIME,
            ),
            max_share: self.share(
                raw.max_share,
                "upstreams.eject.max_share",
                defaults::EJECT_SHARE,
            ),
        }
    }

    /// The entries written `IP:PORT`, and those written `NAME:PORT`.
    pub fn servers(
        &mut self,
        raw: &Spanned<Vec<RawServer>>,
    ) -> (Vec<ServerConfig>, Vec<NamedServer>) {
        // A list emptied by parsing was not written empty; parsing said why.
        if raw.get_ref().is_empty() && !self.dropped.elements.contains(&raw.span()) {
            self.problem(raw.span(), "upstreams.servers: the list is empty, expected at least one { addr = \"IP:PORT\" } or { addr = \"NAME:PORT\" }");
        }
        let mut seen = HashSet::new();
        let (mut servers, mut names) = (Vec::new(), Vec::new());
        for s in raw.get_ref() {
            let weight = match &s.weight {
                None => NonZeroU32::MIN,
                Some(w) => self
                    .int_in(w, 1, 10_000, "upstreams.servers.weight")
                    .and_then(|n| u32::try_from(n).ok())
                    .and_then(NonZeroU32::new)
                    .unwrap_or(NonZeroU32::MIN),
            };
            let Some(addr) = self.server_addr(&s.addr) else {
                continue;
            };
            if !seen.insert(addr.clone()) {
                self.problem(
                    s.addr.span(),
                    format!(
                        "upstreams.servers.addr: {} is listed twice in this upstream",
                        s.addr.get_ref()
                    ),
                );
            }
            match addr {
                Addr::Ip(addr) => servers.push(ServerConfig {
                    addr,
                    weight,
                    host: None,
                }),
                Addr::Name(host, port) => names.push(NamedServer { host, port, weight }),
            }
        }
        (servers, names)
    }

    /// `IP:PORT`, or `NAME:PORT` with a DNS name (lower-cased).
    fn server_addr(&mut self, raw: &Text) -> Option<Addr> {
        let text = raw.get_ref();
        if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
            return Some(Addr::Ip(addr));
        }
        let named = text.rsplit_once(':').and_then(|(host, port)| {
            let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
            let is_name = host.parse::<std::net::IpAddr>().is_err()
                && rustls::pki_types::DnsName::try_from(host).is_ok();
            is_name.then(|| Addr::Name(host.to_ascii_lowercase(), port))
        });
        if named.is_none() {
            self.problem(raw.span(), format!("upstreams.servers.addr: `{text}` is not an address, expected IP:PORT or NAME:PORT such as 127.0.0.1:8080, [::1]:8080 or api.internal:8080"));
        }
        named
    }

    pub fn balance(
        &mut self,
        raw: Option<&Spanned<RawBalance>>,
        hash_key: Option<&Text>,
    ) -> Balance {
        let kind = raw.map_or(RawBalance::RoundRobin, |b| *b.get_ref());
        if kind != RawBalance::ConsistentHash {
            if let Some(k) = hash_key {
                self.problem(
                    k.span(),
                    "upstreams.hash_key: only used with balance = \"consistent_hash\"",
                );
            }
        }
        match kind {
            RawBalance::RoundRobin => Balance::RoundRobin,
            RawBalance::LeastConn => Balance::LeastConn,
            RawBalance::Random => Balance::Random,
            RawBalance::P2cEwma => Balance::P2cEwma,
            RawBalance::ConsistentHash => Balance::ConsistentHash(match hash_key {
                None => HashKey::ClientIp,
                Some(k) => self.hash_key(k).unwrap_or(HashKey::ClientIp),
            }),
        }
    }

    pub fn hash_key(&mut self, raw: &Text) -> Option<HashKey> {
        let text = raw.get_ref().as_str();
        let key = match text.split_once(':') {
            None if text == "client_ip" => Some(HashKey::ClientIp),
            None if text == "path" => Some(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(HashKey::Header),
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                Some(HashKey::Cookie(name.to_owned()))
            }
            _ => None,
        };
        if key.is_none() {
            self.problem(raw.span(), format!("upstreams.hash_key: `{text}` is not a hash key, expected client_ip, path, header:NAME or cookie:NAME"));
        }
        key
    }

    /// `None` when the cookie name is unusable (reported).
    pub fn sticky(&mut self, raw: RawSticky) -> Option<StickyConfig> {
        let max_age = raw.max_age.as_ref().and_then(|text| {
            let before = self.reported();
            let age = self.timeout_at_least(
                Some(text),
                "upstreams.sticky.max_age",
                Duration::from_secs(1),
                Duration::ZERO,
            );
            // `Max-Age` counts whole seconds; rounding would quietly
            // change what was written.
            if self.reported() == before && age.subsec_nanos() != 0 {
                self.problem(text.span(), format!("upstreams.sticky.max_age: `{}` is not a whole number of seconds, expected e.g. \"30m\" or \"1h\"", text.get_ref()));
            }
            (self.reported() == before).then_some(age)
        });
        let name = raw.cookie.get_ref();
        if !is_token(name) {
            self.problem(raw.cookie.span(), format!("upstreams.sticky.cookie: `{name}` is not a cookie name, expected letters, digits and !#$%&'*+-.^_`|~ such as \"srv\""));
            return None;
        }
        Some(StickyConfig {
            cookie: raw.cookie.into_inner(),
            max_age,
        })
    }

    pub fn health_check(&mut self, raw: Spanned<RawHealthCheck>) -> HealthCheckConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let path = match raw.path {
            None => defaults::HEALTH_PATH.to_owned(),
            Some(p)
                if p.get_ref().starts_with('/')
                    && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok() =>
            {
                p.into_inner()
            }
            Some(p) => {
                self.problem(p.span(), format!("upstreams.health_check.path: `{}` is not a request path, expected one starting with /", p.get_ref()));
                defaults::HEALTH_PATH.to_owned()
            }
        };
        let threshold = |v: &mut Self, raw: Option<Int>, key, default| {
            raw.and_then(|n| v.int_in(&n, 1, 100, key))
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new)
                .unwrap_or(default)
        };
        let before = self.reported();
        let interval = self.timeout(
            raw.interval.as_ref(),
            "upstreams.health_check.interval",
            defaults::HEALTH_INTERVAL,
        );
        // Compared with an interval that was written wrong, the timeout
        // would be faulted for the interval's mistake.
        let interval_as_written = self.reported() == before && !self.dropped.key(&span, "interval");
        let timeout = self.timeout(
            raw.timeout.as_ref(),
            "upstreams.health_check.timeout",
            defaults::HEALTH_TIMEOUT.min(interval),
        );
        // A check still waiting when the next is due would overlap it.
        if timeout > interval && interval_as_written {
            let at = raw.timeout.as_ref().or(raw.interval.as_ref());
            let span = at.map_or(0..0, Spanned::span);
            self.problem(span, format!(
                "upstreams.health_check.timeout: {} is longer than the interval {}, expected a timeout no longer than the interval",
                humantime::format_duration(timeout),
                humantime::format_duration(interval),
            ));
        }
        let statuses = raw.statuses.map(|list| {
            if list.get_ref().is_empty() {
                self.problem(list.span(), "upstreams.health_check.statuses: empty, expected at least one status such as 200");
            }
            self.statuses(&list, "upstreams.health_check.statuses")
        });
        let host = raw.host.and_then(|h| {
            let host = h.get_ref();
            let ok = !host.contains('@') && host.parse::<http::uri::Authority>().is_ok();
            if !ok {
                self.problem(h.span(), format!("upstreams.health_check.host: `{host}` is not a host, expected a name or address with an optional port, such as \"api.internal\" or \"10.0.0.5:8080\""));
            }
            ok.then(|| h.into_inner())
        });
        let body_contains = raw.body_contains.and_then(|b| {
            let len = b.get_ref().len();
            let ok = (1..=MAX_BODY_CONTAINS).contains(&len);
            if !ok {
                self.problem(b.span(), format!("upstreams.health_check.body_contains: {len} bytes, expected 1 to {MAX_BODY_CONTAINS}"));
            }
            ok.then(|| b.into_inner())
        });
        HealthCheckConfig {
            statuses: statuses.unwrap_or_default(),
            host,
            body_contains,
            path,
            interval,
            timeout,
            healthy_threshold: threshold(
                self,
                raw.healthy_threshold,
                "upstreams.health_check.healthy_threshold",
                defaults::HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: threshold(
                self,
                raw.unhealthy_threshold,
                "upstreams.health_check.unhealthy_threshold",
                defaults::UNHEALTHY_THRESHOLD,
            ),
        }
    }
}

/// Whether `name` is an RFC 9110 token (what RFC 6265 asks of a cookie
/// name): visible ASCII other than the separators `"(),/:;<=>?@[\\]{}`.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
