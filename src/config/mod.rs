//! Configuration: the TOML file, checked before anything uses it.
//!
//! Two stages, as the rest of corral expects: [`raw`] mirrors the file with
//! serde (unknown keys rejected, spans kept), then [`validate`] turns it into
//! the typed [`Config`] below: durations, socket addresses, non-zero weights,
//! resolved references. Every problem is reported as `FILE:LINE:COL: reason`,
//! all of them at once. Nothing here opens sockets or touches the data path.

pub mod diff;
mod error;
mod parse;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use error::{ConfigError, Diagnostic, Problem};

/// A validated configuration. Built only by [`Config::load`] / [`Config::from_str`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub runtime: RuntimeConfig,
    pub admin: Option<AdminConfig>,
    /// `None`: no access log.
    pub access_log: Option<AccessLogConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Worker processes; `"auto"` resolves to the available cores.
    pub workers: NonZeroUsize,
    /// How long a graceful stop waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// Pin worker i to CPU i (mod the CPU count).
    pub cpu_affinity: bool,
    /// A worker that answers no heartbeat for this long is declared hung
    /// and replaced.
    pub heartbeat_timeout: Duration,
    /// How long a new master started by a binary upgrade has to serve.
    pub upgrade_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    /// Opened for appending; relative paths resolve against the config's folder.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    /// Apache's combined format, plus duration, route, upstream and server.
    Combined,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Accept queue length requested from the kernel for each socket.
    pub backlog: u32,
    /// Time a client has to send a complete request head, counted from the
    /// connection's start or from the first byte of a later request.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Longest pause allowed between two reads of a request body.
    pub body_timeout: Duration,
    /// Largest request body accepted; `None` means no limit.
    pub max_request_body: Option<u64>,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Certificate chains and keys; SNI picks one by the names in its
    /// certificate, and the first one answers clients that send no SNI.
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The `route` label in metrics and logs; defaults to host and prefix,
    /// e.g. `api.example.com/api/` or `*/`.
    pub name: String,
    pub host: Option<HostPattern>,
    pub path_prefix: String,
    pub upstream: String,
    pub strip_prefix: bool,
}

/// A route's host, lower-cased and without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches any
    /// name that ends with it (not `example.com` itself).
    Wildcard(String),
}

impl HostPattern {
    /// How specific the pattern is: longer wins, and an exact name beats a
    /// wildcard of the same length.
    pub fn specificity(&self) -> (usize, bool) {
        match self {
            Self::Exact(name) => (name.len(), true),
            Self::Wildcard(suffix) => (suffix.len(), false),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub protocol: Protocol,
    pub servers: Vec<ServerConfig>,
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    pub max_idle_per_server: usize,
    /// How long a server that refused a connection is skipped.
    pub fail_timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
    P2cEwma,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
    Path,
}

/// What corral speaks to the servers of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed over one connection per server.
    H2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub weight: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down server back.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures that take a server down.
    pub unhealthy_threshold: NonZeroU32,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(path, &text)
    }

    /// Validates `text` as if read from `path` (relative certificate paths
    /// resolve against `path`'s folder).
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let config = parse::parse(text, &mut problems)
            .and_then(|raw| validate::validate(path, raw, &mut problems));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                problems.sort_by_key(|p| p.span.start);
                Err(ConfigError::Invalid {
                    diagnostics: problems
                        .into_iter()
                        .map(|p| Diagnostic::locate(path, text, p))
                        .collect(),
                })
            }
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
