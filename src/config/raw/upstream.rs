//! `[[upstreams]]` as written: servers, balancing, timeouts and health.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::scalar::{Int, Text};
use super::shapes::*;
use crate::config::defaults;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    /// Smooth weighted round robin, as nginx's.
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConn,
    /// Weighted random.
    Random,
    /// The better of two random servers by latency × load / weight.
    P2cEwma,
    /// A ring by `hash_key`; removing one of N servers moves about 1/N of the keys.
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawProtocol {
    /// Pooled keep-alive HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, one multiplexed connection per server; use for gRPC.
    H2,
}

/// `[[upstreams]]`: a pool of servers that routes send requests to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstream {
    /// Unique; routes name it in `upstream`.
    #[schemars(with = "String")]
    pub name: Text,
    /// The load-balancing policy.
    #[schemars(with = "Option<RawBalance>", extend("default" = "round_robin"))]
    pub balance: Option<Spanned<RawBalance>>,
    /// For balance = "consistent_hash": client_ip, path, header:NAME or cookie:NAME.
    #[schemars(with = "Option<HashKey>", extend("default" = "client_ip"))]
    pub hash_key: Option<Text>,
    /// How corral talks to the servers.
    #[schemars(extend("default" = "http1"))]
    pub protocol: Option<RawProtocol>,
    /// The servers; non-empty. A name is a server per address it resolves to.
    #[schemars(with = "Vec<RawServer>", length(min = 1))]
    pub servers: Spanned<Vec<RawServer>>,
    /// Time to connect to a server; then 504 (or a retry on another server).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::CONNECT_TIMEOUT))
    )]
    pub connect_timeout: Option<Text>,
    /// Wait for the response head, counted from the end of the request body; then 504.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::RESPONSE_TIMEOUT))
    )]
    pub response_timeout: Option<Text>,
    /// Longest pause between reads of a response body; then the response is cut.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::UPSTREAM_BODY_TIMEOUT))
    )]
    pub body_timeout: Option<Text>,
    /// How long an idle pooled connection is kept.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::IDLE_TIMEOUT))
    )]
    pub idle_timeout: Option<Text>,
    /// Idle connections kept per server.
    #[schemars(
        with = "Option<i64>",
        range(min = 0, max = 65535),
        extend("default" = defaults::MAX_IDLE_PER_SERVER)
    )]
    pub max_idle_per_server: Option<Int>,
    /// A server that refused a connection is skipped for this long.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::FAIL_TIMEOUT))
    )]
    pub fail_timeout: Option<Text>,
    /// Statuses on which an idempotent, bodiless request tries one more server.
    #[schemars(with = "Option<Vec<Status>>", extend("default" = defaults::RETRY_ON))]
    pub retry_on: Option<Spanned<Vec<Int>>>,
    /// Share of requests that may be retries, per worker over 10 s, plus 10.
    #[schemars(with = "Option<Share>", extend("default" = defaults::RETRY_BUDGET))]
    pub retry_budget: Option<Spanned<f64>>,
    /// A server added, or back from a failed check, ramps up from 10% of its weight over this long. Default: off.
    #[schemars(with = "Option<Duration>")]
    pub slow_start: Option<Text>,
    /// Requests in flight per worker and server; more wait up to `queue_timeout`, then 503. Default: no limit.
    #[schemars(with = "Option<i64>", range(min = 1, max = 1000000))]
    pub max_in_flight: Option<Int>,
    /// HTTP/1.1 connections per worker and server; more wait up to `queue_timeout`, then 503. Default: no limit.
    #[schemars(with = "Option<i64>", range(min = 1, max = 1000000))]
    pub max_connections: Option<Int>,
    /// How long a request waits for `max_in_flight` or `max_connections`.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::QUEUE_TIMEOUT))
    )]
    pub queue_timeout: Option<Text>,
    /// Active health checks: GET requests from the master. Default: off.
    #[schemars(with = "Option<RawHealthCheck>")]
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// Server names are looked up again this often, or at their TTL if sooner (at least 1s).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::DNS_REFRESH))
    )]
    pub dns_refresh: Option<Text>,
    /// TLS to the servers: true (system roots) or a table. Default: off.
    #[schemars(with = "Option<RawUpstreamTls>")]
    pub tls: Option<Spanned<RawUpstreamTls>>,
    /// Passive health: servers that fail requests are ejected for a while. Default: off.
    pub eject: Option<RawEject>,
    /// A signed cookie keeps a client on its server. Default: off.
    #[schemars(with = "Option<RawSticky>")]
    pub sticky: Option<Spanned<RawSticky>>,
}

/// `eject`: passive health, from the answers to real requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawEject {
    /// Failures in a row that eject a server.
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 1000),
        extend("default" = defaults::EJECT_AFTER.get())
    )]
    pub consecutive_failures: Option<Int>,
    /// Answers that count as failures, e.g. [500, 502, 503, 504]; default: none (only connection failures).
    #[schemars(with = "Option<Vec<Status>>")]
    pub statuses: Option<Spanned<Vec<Int>>>,
    /// The first cool-down; each ejection that follows doubles it (up to 32 times).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::EJECT_TIME))
    )]
    pub base_time: Option<Text>,
    /// The largest share of the upstream's servers out at once.
    #[schemars(with = "Option<Share>", extend("default" = defaults::EJECT_SHARE))]
    pub max_share: Option<Spanned<f64>>,
}

/// `tls = true` (the defaults) or `[upstreams.tls]` with settings.
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum RawUpstreamTls {
    /// true: TLS verified against the system's roots; false: plain.
    On(bool),
    Table(RawUpstreamTlsTable),
}

impl<'de> Deserialize<'de> for RawUpstreamTls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpstreamTls;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a table")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawUpstreamTls::On(v))
            }
            // Through the table's own type, so that an unknown key in it
            // is named as in every other table.
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawUpstreamTls::Table)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `[upstreams.tls]`: TLS to the servers, with settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstreamTlsTable {
    /// SNI, and the name the certificate must carry; default: the server's host.
    #[schemars(with = "Option<String>")]
    pub server_name: Option<Text>,
    /// PEM CA bundle to trust instead of the system's roots.
    #[schemars(with = "Option<String>")]
    pub ca: Option<Text>,
    /// PEM client certificate chain, for mTLS (with `key`).
    #[schemars(with = "Option<String>")]
    pub cert: Option<Text>,
    /// PEM private key of `cert`.
    #[schemars(with = "Option<String>")]
    pub key: Option<Text>,
    /// Do not verify servers' certificates (`check` warns; contradicts `ca`).
    #[schemars(with = "Option<bool>", extend("default" = false))]
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

/// `sticky`: a signed cookie keeps a client on its server.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawSticky {
    /// The cookie's name, an RFC 6265 token such as "srv".
    #[schemars(with = "String")]
    pub cookie: Text,
    /// The cookie's Max-Age, whole seconds such as "1h"; default: a session cookie.
    #[schemars(with = "Option<Duration>")]
    pub max_age: Option<Text>,
}

/// One server of an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServer {
    /// "IP:PORT", or "NAME:PORT" looked up by the resolver.
    #[schemars(with = "String")]
    pub addr: Text,
    /// The server's share of requests against the others'.
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 10000),
        extend("default" = 1)
    )]
    pub weight: Option<Int>,
}

/// `health_check`: active GET checks, run once for the cluster by the master.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHealthCheck {
    /// The request path (and query) of the probe.
    #[schemars(with = "Option<String>", extend("default" = defaults::HEALTH_PATH))]
    pub path: Option<Text>,
    /// Time between probes.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::HEALTH_INTERVAL))
    )]
    pub interval: Option<Text>,
    /// A probe slower than this fails; no longer than `interval` (default: 2s, or the interval if shorter).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::HEALTH_TIMEOUT))
    )]
    pub timeout: Option<Text>,
    /// Passes in a row that bring a server back.
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 100),
        extend("default" = defaults::HEALTHY_THRESHOLD.get())
    )]
    pub healthy_threshold: Option<Int>,
    /// Failures in a row that take it out (the first probe decides at once).
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 100),
        extend("default" = defaults::UNHEALTHY_THRESHOLD.get())
    )]
    pub unhealthy_threshold: Option<Int>,
    /// The statuses that pass, e.g. [200, 204]; default: any 2xx or 3xx.
    #[schemars(with = "Option<Vec<Status>>", length(min = 1))]
    pub statuses: Option<Spanned<Vec<Int>>>,
    /// The Host header sent; default: the server's address.
    #[schemars(with = "Option<String>")]
    pub host: Option<Text>,
    /// Text (1 to 1024 bytes) the first 64 KiB of the body must hold.
    #[schemars(with = "Option<String>", length(min = 1, max = 1024))]
    pub body_contains: Option<Text>,
}
