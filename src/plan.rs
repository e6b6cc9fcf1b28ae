//! The plan: a validated configuration with every value resolved, as the
//! master hands it to each worker.
//!
//! Durations are durations, addresses are socket addresses, references
//! between sections are checked, and certificates and keys are the bytes
//! that were read and checked, not file names. Everything here is
//! serialisable: the master sends a worker its plan over the control
//! channel, and the worker builds what it serves from that alone, so every
//! worker of a generation serves exactly what the master checked. Built
//! only by the config module; nothing here reads a file.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A validated configuration, every value resolved. Built only by
/// `config::load` and `config::from_str`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub runtime: RuntimeConfig,
    pub admin: Option<AdminConfig>,
    /// `None`: no access log.
    pub access_log: Option<AccessLogConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `None`: names are looked up as the system does.
    pub resolver: Option<ResolverConfig>,
    /// `None`: reloads are never undone by themselves.
    pub reload_guard: Option<ReloadGuardConfig>,
    /// What the file allows but should not (`FILE:LINE:COL: reason`), for
    /// `corral check` and the master's log; workers never see them.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// What sticky cookies are signed with. The file never says: the master
    /// sets it on every plan it makes (the same key for the life of the
    /// cluster, binary upgrades included), and workers receive it with the
    /// plan, so that every worker issues and recognises the same values.
    /// `None` in a plan only checked (`corral check`).
    pub sticky_key: Option<StickyKey>,
    /// The keys TLS session tickets are sealed with, first the current
    /// one; like `sticky_key`, the master's, the same in every worker, and
    /// `None` in a plan only checked.
    pub ticket_keys: Option<TicketKeys>,
}

/// How often the master makes a new session-ticket key (keeping the one
/// before, so tickets live between one and two rotations).
pub const TICKET_ROTATION: Duration = Duration::from_secs(12 * 60 * 60);

/// Bytes from the operating system's random source: the master's secrets.
fn random<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    ring::rand::generate(&ring::rand::SystemRandom::new()).map(|r| r.expose())
}

/// One session-ticket key: an id tickets name it by, and its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    id: [u8; 8],
    secret: [u8; 32],
}

impl TicketKey {
    fn generate() -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            id: random()?,
            secret: random()?,
        })
    }

    pub fn id(&self) -> &[u8] {
        &self.id
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The current key first, then the one it replaced.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKeys {
    pub keys: Vec<TicketKey>,
}

impl TicketKeys {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            keys: vec![TicketKey::generate()?],
        })
    }

    /// A new current key, the current one kept to open what it sealed.
    pub fn rotated(&self) -> Result<Self, ring::error::Unspecified> {
        let mut keys = vec![TicketKey::generate()?];
        keys.extend(self.keys.first().cloned());
        Ok(Self { keys })
    }
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKeys({}, redacted)", self.keys.len())
    }
}

/// The secret that signs sticky cookie values (see `upstream::sticky`):
/// random, made once by the master, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyKey([u8; STICKY_KEY_BYTES]);

/// As long as HMAC-SHA256's output: a longer key adds nothing.
const STICKY_KEY_BYTES: usize = 32;

impl StickyKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        random().map(Self)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickyKey(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// What every client must send as `Authorization: Bearer`, when set;
    /// read from `admin.token_file` or `CORRAL_ADMIN_TOKEN`, never the
    /// config text. Always set when `listen` is not a loopback address.
    /// The master's alone: workers, which get the plan, never see it.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

/// A bearer token: visible ASCII, compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// `None` unless `text` is a non-empty run of visible ASCII.
    pub fn new(text: &str) -> Option<Self> {
        let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| Self(text.to_owned()))
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogTarget {
    Stdout,
    Stderr,
    /// Opened for appending; relative paths resolve against the config's folder.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    Json,
    /// Apache's combined format, plus duration, route, upstream and server.
    Combined,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// What an encoded slash or backslash in a request path gets.
    pub path_encoded_slashes: EncodedSlashes,
    /// What a request header whose name holds `_` gets.
    pub underscores_in_headers: Underscores,
    /// Peers whose `X-Forwarded-For`, `-Proto` and `-Host` are kept and
    /// extended; `None`: everyone's are (appended to, as nginx does).
    /// Once set, anyone else's are replaced.
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// Whether connections start with a PROXY protocol header (v1 or v2),
    /// and from which peers it is believed.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Open connections a worker serves on this listener at once; at the
    /// limit it stops accepting until one closes. `None`: no limit.
    pub max_connections: Option<NonZeroUsize>,
    /// A plain listener that answers every request with a 308 to HTTPS on
    /// this port, path and query kept.
    pub redirect_https: Option<u16>,
}

impl ListenerConfig {
    /// The header upstreams learn the client certificate's subject from.
    pub fn client_subject_header(&self) -> Option<&HeaderName> {
        self.tls
            .as_ref()?
            .client_auth
            .as_ref()?
            .subject_header
            .as_ref()
    }
}

/// What a listener does with a request header whose name holds `_`, which
/// upstreams that map headers to variables (CGI, many frameworks) cannot
/// tell from `-`: `X_Forwarded_For` would pass for `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Underscores {
    /// Removed before forwarding, as nginx does.
    Drop,
    /// 400.
    Reject,
    /// Forwarded.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyProtocolConfig {
    /// The peers (load balancers) whose PROXY header is believed.
    pub trusted: Vec<IpNet>,
}

/// What a listener does with `%2F` and `%5C` in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncodedSlashes {
    /// 400: the upstream might decode it into a path the router never saw.
    Reject,
    /// Into `/` and `\`, before dot segments are resolved.
    Decode,
    /// Passed on as is.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// Certificate chains and keys; SNI picks one by the names in its
    /// certificate, and the first one answers clients that send no SNI.
    pub certificates: Vec<CertificateConfig>,
    /// Whether clients get session tickets (sealed with the plan's
    /// `ticket_keys`, so any worker resumes them).
    pub session_tickets: bool,
    /// The oldest protocol version a client may speak.
    pub min_version: TlsVersion,
    /// The certificates clients must show (mTLS); `None`: none is asked for.
    pub client_auth: Option<ClientAuth>,
}

/// `client_ca` on a TLS listener: every client shows a certificate that
/// chains to one of `roots`, or its handshake fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// Where `roots` were read from, for messages and the file watch.
    pub ca: PathBuf,
    /// The CA certificates, as the master read them.
    pub roots: Certificates,
    /// The request header that tells upstreams the verified certificate's
    /// subject (RFC 4514); whatever a client sent in it is dropped.
    /// `None`: nothing is added, and the header passes as any other.
    #[serde(with = "header_name::optional")]
    pub subject_header: Option<HeaderName>,
}

/// A TLS protocol version corral speaks (rustls has none older).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateConfig {
    /// Where the chain was read from, for messages.
    pub cert: PathBuf,
    /// Where the key was read from, for messages.
    pub key: PathBuf,
    /// The chain and key as read when the config was checked: PEM text
    /// that decodes, and a key that fits the chain's first certificate.
    pub pem: CertifiedPem,
    /// `ocsp`: the OCSP response stapled to handshakes (listeners only).
    pub ocsp: Option<OcspStaple>,
    /// Set for the certificate the master obtains by ACME, kept in `cert`
    /// and `key` under the state folder.
    pub acme: Option<AcmeConfig>,
}

/// `[listeners.tls.acme]`: what the master orders, and from whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    pub email: Option<String>,
    /// The names the certificate covers, lowercase; the first names it.
    pub domains: Vec<String>,
    /// The CA that signs the ACME server's own certificate (`ca`); `None`:
    /// the system's roots.
    pub roots: Option<Certificates>,
    /// Where the account key and the issued certificates live.
    pub state_dir: PathBuf,
    /// No issued certificate was found: `pem` is a self-signed stand-in.
    pub placeholder: bool,
}

impl CertificateConfig {
    /// The OCSP response to staple, if one was read.
    pub fn ocsp_response(&self) -> Option<&[u8]> {
        Some(&self.ocsp.as_ref()?.response.as_ref()?.0)
    }
}

/// An `ocsp` file and what it held when the config was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcspStaple {
    /// Where the response is read from (and watched, so a renewed one is
    /// served).
    pub path: PathBuf,
    /// `None` while the file does not exist: the certificate is served
    /// without a staple until it does.
    pub response: Option<Der>,
}

/// DER bytes; base64 text in the plan, a length in logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Der(#[serde(with = "base64_bytes")] pub Vec<u8>);

impl std::fmt::Debug for Der {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Der({} bytes)", self.0.len())
    }
}

/// A certificate chain and its private key, PEM-encoded. The key is never
/// printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedPem {
    pub chain: String,
    pub key: String,
}

impl std::fmt::Debug for CertifiedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedPem")
            .field("chain", &format_args!("{} bytes", self.chain.len()))
            .field("key", &format_args!("redacted"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub protocol: Protocol,
    /// The servers: those written as `IP:PORT`, then (in a plan the master
    /// made) those its names resolve to.
    pub servers: Vec<ServerConfig>,
    /// The entries written as `NAME:PORT`.
    pub names: Vec<NamedServer>,
    /// How often the names are looked up again (sooner when their TTL
    /// says so, never more often than every second).
    pub dns_refresh: Duration,
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    pub response_timeout: Duration,
    /// The longest pause between reads of a response body.
    pub body_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    pub max_idle_per_server: usize,
    /// How long a server that refused a connection is skipped.
    pub fail_timeout: Duration,
    /// Statuses on which an idempotent request without a body moves to
    /// another server, sorted.
    pub retry_on: Vec<u16>,
    /// The share of requests that may be retries (see `upstream::budget`).
    pub retry_budget: f64,
    /// How long a server added by a reload, or back from a failed health
    /// check, takes to ramp from a tenth of its weight to all of it.
    pub slow_start: Option<Duration>,
    /// Requests one worker sends one server at once; more wait in a queue.
    pub max_in_flight: Option<u32>,
    /// Connections one worker keeps to one server, busy and idle (HTTP/1.1:
    /// each busy one carries a request, so this caps requests too).
    pub max_connections: Option<u32>,
    /// How long a request waits for room before it gets a 503.
    pub queue_timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// TLS to the servers (health checks included); `None`: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// Passive health (see `upstream::eject`); `None`: off.
    pub eject: Option<EjectConfig>,
    /// Clients kept on the server that first answered them, by a cookie.
    pub sticky: Option<StickyConfig>,
}

/// `[upstreams.sticky]`: the cookie corral sets to name a client's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyConfig {
    /// The cookie's name: an RFC 6265 token.
    pub cookie: String,
    /// The cookie's `Max-Age`, whole seconds; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EjectConfig {
    /// Failures in a row that take a server out.
    pub consecutive_failures: NonZeroU32,
    /// Answers that count as failures, sorted; empty: none do.
    pub statuses: Vec<u16>,
    /// The first cool-down; each ejection soon after the last doubles it.
    pub base_time: Duration,
    /// The largest share of the upstream's servers out at once.
    pub max_share: f64,
}

/// How corral speaks TLS to an upstream's servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// The name sent as SNI and that each server's certificate must carry;
    /// `None`: the server's address.
    pub server_name: Option<String>,
    /// Where `roots` were read from, for messages; `None`: the system's
    /// trust store.
    pub ca: Option<PathBuf>,
    /// The CA certificates servers are verified against, as the master
    /// read them; empty with `insecure_skip_verify`.
    pub roots: Certificates,
    /// The certificate corral shows servers that ask for one (mTLS).
    pub client: Option<CertificateConfig>,
    /// Accept any certificate: the connection is encrypted but the server
    /// is not authenticated.
    pub insecure_skip_verify: bool,
}

/// DER certificates; base64 text in the plan, a count in logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates(#[serde(with = "base64_list")] pub Vec<Vec<u8>>);

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certificates({})", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
    P2cEwma,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashKey {
    ClientIp,
    Header(#[serde(with = "header_name")] HeaderName),
    Cookie(String),
    Path,
}

/// What corral speaks to the servers of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed over one connection per server.
    H2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub weight: NonZeroU32,
    /// The DNS name the address was found by, when it was (see
    /// [`NamedServer`]): what TLS verifies, and what health checks send
    /// as `Host`.
    pub host: Option<String>,
}

/// A server entry written as `NAME:PORT`: the master resolves it and puts
/// a server for every address it has into the upstream's `servers`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamedServer {
    pub host: String,
    pub port: u16,
    pub weight: NonZeroU32,
}

impl std::fmt::Display for NamedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `[reload_guard]`: how the master judges a new generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadGuardConfig {
    /// How long after a reload the new generation is watched.
    pub window: Duration,
    /// The share of its answers that are 5xx above which (and above the
    /// generation before's share) it is rolled back.
    pub max_error_ratio: f64,
    /// Answers the new generation must have given before it is judged.
    pub min_requests: u64,
}

/// `[resolver]`: where the master looks up server names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverConfig {
    /// Asked in order; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query may take.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down server back.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures that take a server down.
    pub unhealthy_threshold: NonZeroU32,
    /// The statuses that pass, sorted; empty: any 2xx or 3xx.
    pub statuses: Vec<u16>,
    /// The `Host` the probe sends; `None`: the server's address.
    pub host: Option<String>,
    /// What the start of the body must contain to pass (see
    /// `master::health` for how much of it is read).
    pub body_contains: Option<String>,
}

impl UpstreamConfig {
    /// How many requests one worker may have in flight to one server.
    pub fn request_cap(&self) -> Option<u32> {
        let connections = self
            .max_connections
            .filter(|_| self.protocol == Protocol::Http1);
        match (self.max_in_flight, connections) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl HealthCheckConfig {
    pub fn passes(&self, status: http::StatusCode) -> bool {
        if self.statuses.is_empty() {
            status.is_success() || status.is_redirection()
        } else {
            self.statuses.binary_search(&status.as_u16()).is_ok()
        }
    }
}

impl Plan {
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Byte strings as base64 text: a third longer, where JSON's arrays of
/// numbers would be four times as long.
mod base64_list {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|bytes| STANDARD.encode(bytes)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| STANDARD.decode(text).map_err(de::Error::custom))
            .collect()
    }
}

/// One byte string as base64 text, as [`base64_list`] writes each.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(de::Error::custom)
    }
}

/// A header name as its text (`http` has no serde support).
mod header_name {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        let text = String::deserialize(d)?;
        HeaderName::from_bytes(text.as_bytes()).map_err(de::Error::custom)
    }

    pub mod optional {
        use http::HeaderName;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            name: &Option<HeaderName>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match name {
                Some(name) => super::serialize(name, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<HeaderName>, D::Error> {
            #[derive(Deserialize)]
            struct Name(#[serde(with = "super")] HeaderName);
            Ok(Option::<Name>::deserialize(d)?.map(|Name(name)| name))
        }
    }
}
