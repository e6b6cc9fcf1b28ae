//! The config file as written: serde types that mirror the TOML one to one.
//!
//! Every struct denies unknown keys, and every value that validation may reject
//! keeps its span so the error can point at it. Nothing here checks meaning;
//! that is `validate.rs`'s job.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// A value that may be written either as an integer or as a string, such as
/// `workers = 4` / `workers = "auto"` or `max_request_body = 1048576` / `"1 MiB"`.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom("integer is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

pub type Text = Spanned<String>;
pub type Int = Spanned<i64>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRuntime {
    pub workers: Option<Spanned<IntOrString>>,
    pub shutdown_timeout: Option<Text>,
    pub cpu_affinity: Option<bool>,
    pub heartbeat_timeout: Option<Text>,
    pub upgrade_timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAdmin {
    pub listen: Text,
    pub token_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawListener {
    pub name: Text,
    pub listen: Text,
    pub tls: Option<Spanned<RawTls>>,
    pub backlog: Option<Int>,
    pub header_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub body_timeout: Option<Text>,
    pub max_request_body: Option<Spanned<IntOrString>>,
    pub max_header_bytes: Option<Spanned<IntOrString>>,
    pub path_encoded_slashes: Option<RawEncodedSlashes>,
    pub underscores_in_headers: Option<RawUnderscores>,
    pub trusted_proxies: Option<Spanned<Vec<Text>>>,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub max_connections: Option<Int>,
    pub redirect_https: Option<Spanned<bool>>,
    pub redirect_https_port: Option<Int>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawUnderscores {
    Drop,
    Reject,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawProxyProtocol {
    pub trusted: Spanned<Vec<Text>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawEncodedSlashes {
    Reject,
    Decode,
    Keep,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTls {
    pub certificates: Option<Spanned<Vec<RawCertificate>>>,
    pub acme: Option<Spanned<RawAcme>>,
    pub session_tickets: Option<bool>,
    pub min_version: Option<Text>,
    pub client_ca: Option<Text>,
    pub client_subject_header: Option<Text>,
}

/// `[listeners.tls.acme]`: a certificate corral obtains and renews itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAcme {
    pub directory: Text,
    pub email: Option<Text>,
    pub domains: Spanned<Vec<Text>>,
    pub ca: Option<Text>,
    pub state_dir: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawCertificate {
    pub cert: Text,
    pub key: Text,
    pub ocsp: Option<Text>,
}

/// `[reload_guard]`: a reload whose generation answers clearly worse than
/// the one before is undone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawReloadGuard {
    pub window: Option<Text>,
    pub max_error_ratio: Option<Spanned<f64>>,
    pub min_requests: Option<Int>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawResolver {
    pub nameservers: Option<Spanned<Vec<Text>>>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRoute {
    pub name: Option<Text>,
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub upstream: Text,
    #[serde(default)]
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    LeastConn,
    Random,
    P2cEwma,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawProtocol {
    Http1,
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstream {
    pub name: Text,
    pub balance: Option<Spanned<RawBalance>>,
    pub hash_key: Option<Text>,
    pub protocol: Option<RawProtocol>,
    pub servers: Spanned<Vec<RawServer>>,
    pub connect_timeout: Option<Text>,
    pub response_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub max_idle_per_server: Option<Int>,
    pub fail_timeout: Option<Text>,
    pub retry_on: Option<Spanned<Vec<Int>>>,
    pub retry_budget: Option<Spanned<f64>>,
    pub slow_start: Option<Text>,
    pub max_in_flight: Option<Int>,
    pub max_connections: Option<Int>,
    pub queue_timeout: Option<Text>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub dns_refresh: Option<Text>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub eject: Option<RawEject>,
    pub sticky: Option<Spanned<RawSticky>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawEject {
    pub consecutive_failures: Option<Int>,
    pub statuses: Option<Spanned<Vec<Int>>>,
    pub base_time: Option<Text>,
    pub max_share: Option<Spanned<f64>>,
}

/// `tls = true` (the defaults) or `[upstreams.tls]` with settings.
#[derive(Debug)]
pub enum RawUpstreamTls {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstreamTlsTable {
    pub server_name: Option<Text>,
    pub ca: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawSticky {
    pub cookie: Text,
    pub max_age: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServer {
    pub addr: Text,
    pub weight: Option<Int>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHealthCheck {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub healthy_threshold: Option<Int>,
    pub unhealthy_threshold: Option<Int>,
    pub statuses: Option<Spanned<Vec<Int>>>,
    pub host: Option<Text>,
    pub body_contains: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawLogFormat {
    Json,
    Combined,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAccessLog {
    pub path: Text,
    pub format: Option<RawLogFormat>,
}

/// The whole file. Built section by section (see `parse.rs`) so that one bad
/// route does not hide the errors in the next.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub runtime: RawRuntime,
    pub admin: Option<RawAdmin>,
    pub access_log: Option<RawAccessLog>,
    pub listeners: Vec<Spanned<RawListener>>,
    pub routes: Vec<Spanned<RawRoute>>,
    pub upstreams: Vec<Spanned<RawUpstream>>,
    pub resolver: Option<RawResolver>,
    pub reload_guard: Option<RawReloadGuard>,
    pub dropped: Dropped,
}

/// What parsing reported and then left out, so that validation can tell a
/// default from a value that was written but unreadable, and does not
/// report a consequence of a reported problem as a new one.
#[derive(Debug, Default)]
pub struct Dropped {
    /// Keys left out, by the span of the table that held them.
    pub keys: HashSet<(Range<usize>, String)>,
    /// Arrays that lost an unreadable element, by span.
    pub elements: HashSet<Range<usize>>,
    /// `[[upstreams]]` tables left out, by name (`None` where the name
    /// itself could not be read): routes may name them.
    pub upstreams: Vec<Option<String>>,
}

impl Dropped {
    /// Whether `key` was written in the table at `table` but left out.
    pub fn key(&self, table: &Range<usize>, key: &str) -> bool {
        self.keys.contains(&(table.clone(), key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_neither_kind_says_it_wants_an_integer_or_a_string() {
        let error =
            toml::from_str::<RawRuntime>("workers = true").expect_err("a bool is no worker count");
        assert!(
            error.message().contains("expected an integer or a string"),
            "{error}"
        );
    }
}
