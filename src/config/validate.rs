//! [`RawConfig`] -> [`Plan`]: meaning, defaults, cross-references, and the
//! certificate files read and checked.
//!
//! Each check records a [`Problem`] at the span of the value at fault and
//! carries on, so one run reports everything wrong with the file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::error::Problem;
use super::raw::*;
use crate::plan::*;
use crate::tls::TlsError;

pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Short enough that a hung worker is replaced within a second (checks run
/// every quarter of it), long enough that a busy one is never mistaken for hung.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(750);
/// Pings go out every quarter of the timeout and are answered by the
/// worker's event loop between requests; below this, a loop busy for a few
/// milliseconds would be killed as hung.
const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(100);
/// Long enough for a new master on a busy host to spawn every worker and
/// have each build its snapshot.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKLOG: u32 = 1024;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper needs room for at least one full read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_MAX_IDLE_PER_SERVER: usize = 128;
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(2).expect("non-zero");
const DEFAULT_UNHEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).expect("non-zero");

pub fn validate(path: &Path, raw: RawConfig, problems: &mut Vec<Problem>) -> Option<Plan> {
    let mut v = Validator {
        problems,
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        dropped: raw.dropped,
    };
    let runtime = v.runtime(raw.runtime);
    let admin = raw.admin.and_then(|a| {
        v.socket_addr(&a.listen, "admin.listen")
            .map(|listen| AdminConfig { listen })
    });
    let access_log = raw.access_log.map(|a| AccessLogConfig {
        target: v.log_target(&a.path),
        format: match a.format {
            None | Some(RawLogFormat::Json) => LogFormat::Json,
            Some(RawLogFormat::Combined) => LogFormat::Combined,
        },
    });
    let listeners = v.listeners(raw.listeners);
    if listeners.is_empty() && v.problems.is_empty() {
        v.problem(
            0..0,
            "no listeners: add a [[listeners]] table with a name and a listen address",
        );
    }
    let upstreams = v.upstreams(raw.upstreams);
    let routes = v.routes(raw.routes, &upstreams);
    Some(Plan {
        runtime,
        admin,
        access_log,
        listeners,
        routes,
        upstreams,
    })
}

struct Validator<'a> {
    problems: &'a mut Vec<Problem>,
    /// The config file's folder; relative file paths resolve against it.
    base: PathBuf,
    /// What parsing already reported and left out: a check that would only
    /// repeat it in other words (a list now empty, a default now in force)
    /// stays quiet.
    dropped: Dropped,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem::new(span, message));
    }

    /// How many problems are recorded: compared before and after a check,
    /// it tells whether that check found its value at fault.
    fn reported(&self) -> usize {
        self.problems.len()
    }

    fn runtime(&mut self, raw: RawRuntime) -> RuntimeConfig {
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        let workers = match raw.workers {
            None => cores,
            Some(w) => match w.get_ref() {
                IntOrString::Str(s) if s == "auto" => cores,
                IntOrString::Int(n) => match usize::try_from(*n).ok().and_then(NonZeroUsize::new) {
                    Some(n) if n.get() <= 1024 => n,
                    _ => {
                        self.problem(w.span(), format!("runtime.workers: {n} is out of range, expected 1 to 1024 or \"auto\""));
                        cores
                    }
                },
                IntOrString::Str(s) => {
                    self.problem(w.span(), format!("runtime.workers: `{s}` is not a worker count, expected a number from 1 to 1024 or \"auto\""));
                    cores
                }
            },
        };
        RuntimeConfig {
            workers,
            shutdown_timeout: self
                .duration_allow_zero(raw.shutdown_timeout.as_ref(), "runtime.shutdown_timeout")
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            cpu_affinity: raw.cpu_affinity.unwrap_or(false),
            heartbeat_timeout: self.timeout_at_least(
                raw.heartbeat_timeout.as_ref(),
                "runtime.heartbeat_timeout",
                MIN_HEARTBEAT_TIMEOUT,
                DEFAULT_HEARTBEAT_TIMEOUT,
            ),
            upgrade_timeout: self.timeout(
                raw.upgrade_timeout.as_ref(),
                "runtime.upgrade_timeout",
                DEFAULT_UPGRADE_TIMEOUT,
            ),
        }
    }

    /// `stdout`, `stderr`, or a file that can be opened for appending: its
    /// folder exists and the file (or, for a new one, the folder) is
    /// writable. Checked here, without creating anything, so that `check`
    /// and a reload refuse a log that every worker would fail to open.
    fn log_target(&mut self, raw: &Text) -> LogTarget {
        let path = match raw.get_ref().as_str() {
            "stdout" => return LogTarget::Stdout,
            "stderr" => return LogTarget::Stderr,
            path => self.base.join(path),
        };
        let folder = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let problem = if path.is_dir() {
            Some("is a folder".to_owned())
        } else if !folder.is_dir() {
            Some(format!("its folder {} does not exist", folder.display()))
        } else {
            let probe = if path.exists() {
                path.as_path()
            } else {
                folder
            };
            nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK)
                .err()
                .map(|e| format!("{} is not writable ({})", probe.display(), e.desc()))
        };
        if let Some(why) = problem {
            self.problem(
                raw.span(),
                format!("access_log.path: cannot open {} for appending: {why}; expected \"stdout\", \"stderr\" or a writable file", path.display()),
            );
        }
        LogTarget::File(path)
    }

    fn listeners(&mut self, raw: Vec<Spanned<RawListener>>) -> Vec<ListenerConfig> {
        let mut names = Names::new("listener");
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut out = Vec::new();
        for item in raw {
            let l = item.into_inner();
            names.check(self, &l.name);
            // A bad address still leaves the rest of the listener to check.
            let addr = self.socket_addr(&l.listen, "listeners.listen");
            // Port 0 asks for any free port, so two such listeners never clash.
            let taken = match addr {
                Some(addr) if addr.port() != 0 => addrs.insert(addr, l.name.get_ref().clone()),
                _ => None,
            };
            if let (Some(addr), Some(other)) = (addr, taken) {
                self.problem(
                    l.listen.span(),
                    format!("listeners.listen: {addr} is already used by listener `{other}`"),
                );
            }
            let tls = l.tls.map(|t| self.tls(t));
            let backlog = l
                .backlog
                .and_then(|b| self.int_in(&b, 1, 65535, "listeners.backlog"))
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(DEFAULT_BACKLOG);
            let max_request_body = l
                .max_request_body
                .and_then(|s| self.size(&s, 1, u64::MAX, "listeners.max_request_body"));
            let max_header_bytes = l
                .max_header_bytes
                .and_then(|s| {
                    self.size(
                        &s,
                        MIN_HEADER_BYTES,
                        MAX_HEADER_BYTES,
                        "listeners.max_header_bytes",
                    )
                })
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
            let header_timeout = self.timeout(
                l.header_timeout.as_ref(),
                "listeners.header_timeout",
                DEFAULT_HEADER_TIMEOUT,
            );
            let keepalive_timeout = self.timeout(
                l.keepalive_timeout.as_ref(),
                "listeners.keepalive_timeout",
                DEFAULT_KEEPALIVE_TIMEOUT,
            );
            let body_timeout = self.timeout(
                l.body_timeout.as_ref(),
                "listeners.body_timeout",
                DEFAULT_BODY_TIMEOUT,
            );
            let Some(addr) = addr else {
                continue;
            };
            out.push(ListenerConfig {
                name: l.name.into_inner(),
                addr,
                tls: tls.flatten(),
                backlog,
                header_timeout,
                keepalive_timeout,
                body_timeout,
                max_request_body,
                max_header_bytes,
                path_encoded_slashes: match l.path_encoded_slashes {
                    None | Some(RawEncodedSlashes::Reject) => EncodedSlashes::Reject,
                    Some(RawEncodedSlashes::Decode) => EncodedSlashes::Decode,
                    Some(RawEncodedSlashes::Keep) => EncodedSlashes::Keep,
                },
            });
        }
        out
    }

    fn tls(&mut self, raw: Spanned<RawTls>) -> Option<TlsConfig> {
        let certs = raw.into_inner().certificates;
        if certs.get_ref().is_empty() {
            // Emptied by parsing, which reported why.
            if !self.dropped.elements.contains(&certs.span()) {
                self.problem(
                    certs.span(),
                    "listeners.tls.certificates: at least one { cert, key } pair is needed",
                );
            }
            return None;
        }
        let mut certificates = Vec::new();
        for c in certs.into_inner() {
            certificates.extend(self.certificate(&c));
        }
        (!certificates.is_empty()).then_some(TlsConfig { certificates })
    }

    /// Reads a chain and its key, once: the plan carries these bytes, so
    /// what was checked here is what every worker serves. Both files are
    /// read, so that two unreadable files are two problems reported at once.
    fn certificate(&mut self, raw: &RawCertificate) -> Option<CertificateConfig> {
        let cert = self.base.join(raw.cert.get_ref());
        let key = self.base.join(raw.key.get_ref());
        let mut read = |path: &Path, what: &str, span: Range<usize>| {
            let text = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|e| format!("not PEM text ({})", e.utf8_error()))
                });
            text.map_err(|e| {
                self.problem(
                    span,
                    format!("listeners.tls: cannot read {what} {}: {e}", path.display()),
                );
            })
            .ok()
        };
        let chain = read(&cert, "certificate", raw.cert.span());
        let key_pem = read(&key, "private key", raw.key.span());
        let pem = CertifiedPem {
            chain: chain?,
            key: key_pem?,
        };
        let (at, why) = match crate::tls::certified_key(&pem) {
            Ok(_) => return Some(CertificateConfig { cert, key, pem }),
            Err(e @ TlsError::Chain(_)) => (
                raw.cert.span(),
                format!("cannot read certificate {}: {e}", cert.display()),
            ),
            Err(e @ TlsError::Key(_)) => (
                raw.key.span(),
                format!("cannot read private key {}: {e}", key.display()),
            ),
            Err(e) => (
                raw.key.span(),
                format!(
                    "key {} does not fit certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            ),
        };
        self.problem(at, format!("listeners.tls: {why}"));
        None
    }

    fn upstreams(&mut self, raw: Vec<Spanned<RawUpstream>>) -> Vec<UpstreamConfig> {
        let mut names = Names::new("upstream");
        let mut out = Vec::new();
        for item in raw {
            let span = item.span();
            let u = item.into_inner();
            names.check(self, &u.name);
            let servers = self.servers(&u.servers);
            // A balance written but unreadable is not round_robin: a hash_key
            // beside it may well be meant for it.
            let balance = if self.dropped.key(&span, "balance") {
                Balance::RoundRobin
            } else {
                self.balance(u.balance.as_ref(), u.hash_key.as_ref())
            };
            let health_check = u.health_check.map(|h| self.health_check(h));
            out.push(UpstreamConfig {
                name: u.name.into_inner(),
                balance,
                protocol: match u.protocol {
                    None | Some(RawProtocol::Http1) => Protocol::Http1,
                    Some(RawProtocol::H2) => Protocol::H2,
                },
                servers,
                connect_timeout: self.timeout(
                    u.connect_timeout.as_ref(),
                    "upstreams.connect_timeout",
                    DEFAULT_CONNECT_TIMEOUT,
                ),
                response_timeout: self.timeout(
                    u.response_timeout.as_ref(),
                    "upstreams.response_timeout",
                    DEFAULT_RESPONSE_TIMEOUT,
                ),
                idle_timeout: self.timeout(
                    u.idle_timeout.as_ref(),
                    "upstreams.idle_timeout",
                    DEFAULT_IDLE_TIMEOUT,
                ),
                max_idle_per_server: u
                    .max_idle_per_server
                    .and_then(|n| self.int_in(&n, 0, 65535, "upstreams.max_idle_per_server"))
                    .map_or(DEFAULT_MAX_IDLE_PER_SERVER, |n| n as usize),
                fail_timeout: self.timeout(
                    u.fail_timeout.as_ref(),
                    "upstreams.fail_timeout",
                    DEFAULT_FAIL_TIMEOUT,
                ),
                health_check,
            });
        }
        out
    }

    fn servers(&mut self, raw: &Spanned<Vec<RawServer>>) -> Vec<ServerConfig> {
        // A list emptied by parsing was not written empty; parsing said why.
        if raw.get_ref().is_empty() && !self.dropped.elements.contains(&raw.span()) {
            self.problem(raw.span(), "upstreams.servers: the list is empty, expected at least one { addr = \"IP:PORT\" }");
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for s in raw.get_ref() {
            let addr = self.socket_addr(&s.addr, "upstreams.servers.addr");
            if let Some(addr) = addr.filter(|a| !seen.insert(*a)) {
                self.problem(
                    s.addr.span(),
                    format!("upstreams.servers.addr: {addr} is listed twice in this upstream"),
                );
            }
            let weight = match &s.weight {
                None => NonZeroU32::MIN,
                Some(w) => self
                    .int_in(w, 1, 10_000, "upstreams.servers.weight")
                    .and_then(|n| u32::try_from(n).ok())
                    .and_then(NonZeroU32::new)
                    .unwrap_or(NonZeroU32::MIN),
            };
            if let Some(addr) = addr {
                out.push(ServerConfig { addr, weight });
            }
        }
        out
    }

    fn balance(&mut self, raw: Option<&Spanned<RawBalance>>, hash_key: Option<&Text>) -> Balance {
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

    fn hash_key(&mut self, raw: &Text) -> Option<HashKey> {
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

    fn health_check(&mut self, raw: Spanned<RawHealthCheck>) -> HealthCheckConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let path = match raw.path {
            None => DEFAULT_HEALTH_PATH.to_owned(),
            Some(p)
                if p.get_ref().starts_with('/')
                    && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok() =>
            {
                p.into_inner()
            }
            Some(p) => {
                self.problem(p.span(), format!("upstreams.health_check.path: `{}` is not a request path, expected one starting with /", p.get_ref()));
                DEFAULT_HEALTH_PATH.to_owned()
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
            DEFAULT_HEALTH_INTERVAL,
        );
        // Compared with an interval that was written wrong, the timeout
        // would be faulted for the interval's mistake.
        let interval_as_written = self.reported() == before && !self.dropped.key(&span, "interval");
        let timeout = self.timeout(
            raw.timeout.as_ref(),
            "upstreams.health_check.timeout",
            DEFAULT_HEALTH_TIMEOUT.min(interval),
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
        HealthCheckConfig {
            path,
            interval,
            timeout,
            healthy_threshold: threshold(
                self,
                raw.healthy_threshold,
                "upstreams.health_check.healthy_threshold",
                DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: threshold(
                self,
                raw.unhealthy_threshold,
                "upstreams.health_check.unhealthy_threshold",
                DEFAULT_UNHEALTHY_THRESHOLD,
            ),
        }
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        upstreams: &[UpstreamConfig],
    ) -> Vec<RouteConfig> {
        let mut seen = HashSet::new();
        let mut names = Names::new("route");
        let mut out = Vec::new();
        for item in raw {
            let span = item.span();
            let r = item.into_inner();
            let host = r.host.as_ref().map(|h| self.host(h));
            let path_prefix = match &r.path_prefix {
                None => Some("/".to_owned()),
                Some(p)
                    if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#', ' ']) =>
                {
                    Some(p.get_ref().clone())
                }
                Some(p) => {
                    self.problem(p.span(), format!("routes.path_prefix: `{}` is not a path prefix, expected one starting with / and without ? or #", p.get_ref()));
                    None
                }
            };
            self.upstream_ref(&r.upstream, upstreams);
            if let Some(n) = &r.name {
                names.check(self, n);
            }
            // Only a route whose host and prefix are as written can be
            // compared with the others: a bad or unreadable one reads as the
            // default, and would clash for that reason alone.
            let (host, path_prefix) = match (host, path_prefix) {
                (Some(None), _) | (_, None) => continue,
                _ if self.dropped.key(&span, "host") || self.dropped.key(&span, "path_prefix") => {
                    continue;
                }
                (host, Some(path_prefix)) => (host.flatten(), path_prefix),
            };
            if !seen.insert((host.clone(), path_prefix.clone())) {
                self.problem(span, format!(
                    "routes: a route for host {} and path_prefix `{path_prefix}` is already defined above; it would never match",
                    host.as_ref().map_or("(any)".to_owned(), |h| format!("`{h}`"))
                ));
            }
            let name = match r.name {
                Some(n) => n.into_inner(),
                None => format!(
                    "{}{path_prefix}",
                    host.as_ref().map_or("*".to_owned(), ToString::to_string)
                ),
            };
            out.push(RouteConfig {
                name,
                host,
                path_prefix,
                upstream: r.upstream.into_inner(),
                strip_prefix: r.strip_prefix,
            });
        }
        out
    }

    /// A route's upstream must be defined. One that was written but could
    /// not be read was reported where it is; naming it here is no second
    /// problem. Nor is any name, when an upstream's own name was unreadable:
    /// the route may name that one.
    fn upstream_ref(&mut self, name: &Text, upstreams: &[UpstreamConfig]) {
        let wanted = name.get_ref();
        let unreadable = &self.dropped.upstreams;
        if upstreams.iter().any(|u| &u.name == wanted)
            || unreadable
                .iter()
                .any(|u| u.as_ref().is_none_or(|u| u == wanted))
        {
            return;
        }
        let known = upstreams
            .iter()
            .map(|u| &u.name)
            .chain(unreadable.iter().flatten())
            .map(|u| format!("`{u}`"))
            .collect::<Vec<_>>();
        let hint = if known.is_empty() {
            "no upstreams are defined".to_owned()
        } else {
            format!("defined: {}", known.join(", "))
        };
        self.problem(
            name.span(),
            format!("routes.upstream: unknown upstream `{wanted}` ({hint})"),
        );
    }

    fn host(&mut self, raw: &Text) -> Option<HostPattern> {
        let text = raw.get_ref().to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            self.problem(raw.span(), format!(
                "routes.host: `{}` is not a host name, expected a name such as api.example.com or *.example.com (no port)",
                raw.get_ref()
            ));
            return None;
        }
        Some(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    fn socket_addr(&mut self, raw: &Text, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(raw.span(), format!("{key}: `{}` is not an address, expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080", raw.get_ref()));
                None
            }
        }
    }

    /// A duration that must be greater than zero; `default` when absent or invalid.
    fn timeout(&mut self, raw: Option<&Text>, key: &str, default: Duration) -> Duration {
        match self.duration_allow_zero(raw, key) {
            Some(d) if d.is_zero() => {
                if let Some(raw) = raw {
                    self.problem(raw.span(), format!("{key}: must be greater than zero"));
                }
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A duration of at least `min`; `default` when absent or invalid.
    fn timeout_at_least(
        &mut self,
        raw: Option<&Text>,
        key: &str,
        min: Duration,
        default: Duration,
    ) -> Duration {
        match self.duration_allow_zero(raw, key) {
            Some(d) if d < min => {
                if let Some(raw) = raw {
                    let min = humantime::format_duration(min);
                    self.problem(
                        raw.span(),
                        format!(
                            "{key}: `{}` is too short, expected at least {min}",
                            raw.get_ref()
                        ),
                    );
                }
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    fn duration_allow_zero(&mut self, raw: Option<&Text>, key: &str) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(raw.span(), format!("{key}: `{}` is not a duration ({e}), expected e.g. \"150ms\", \"2s\" or \"1m\"", raw.get_ref()));
                None
            }
        }
    }

    fn int_in(&mut self, raw: &Int, min: i64, max: i64, key: &str) -> Option<i64> {
        let n = *raw.get_ref();
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.problem(
                raw.span(),
                format!("{key}: {n} is out of range, expected {min} to {max}"),
            );
            None
        }
    }

    /// A byte size written as a number of bytes or a string like "10 MiB".
    fn size(&mut self, raw: &Spanned<IntOrString>, min: u64, max: u64, key: &str) -> Option<u64> {
        let n = match raw.get_ref() {
            IntOrString::Int(n) => u64::try_from(*n).ok(),
            IntOrString::Str(s) => s.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    raw.span(),
                    format!("{key}: {n} bytes is out of range, expected {min} to {max}"),
                );
                None
            }
            None => {
                self.problem(raw.span(), format!("{key}: not a size, expected bytes as a number or a string such as \"10 MiB\""));
                None
            }
        }
    }
}

/// Reports a name defined twice in one section.
struct Names {
    what: &'static str,
    seen: HashSet<String>,
}

impl Names {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            seen: HashSet::new(),
        }
    }

    fn check(&mut self, v: &mut Validator<'_>, name: &Text) {
        let n = name.get_ref();
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            v.problem(
                name.span(),
                format!(
                    "{}: name `{n}` must be non-empty and use only letters, digits, -, _ and .",
                    self.what
                ),
            );
        } else if !self.seen.insert(n.clone()) {
            v.problem(
                name.span(),
                format!("{}: the name `{n}` is defined twice", self.what),
            );
        }
    }
}
