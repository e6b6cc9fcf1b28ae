//! The config file as written: serde types that mirror the TOML one to one.
//!
//! Every struct denies unknown keys, and every value that validation may reject
//! keeps its span so the error can point at it. Nothing here checks meaning;
//! that is `validate`'s job. The same types, their doc comments and their
//! `#[schemars]` attributes make the file's JSON Schema (`corral schema`):
//! each key's description, its default (from `defaults`) and the shape of its
//! value (from `shapes`), so the schema cannot drift from what is parsed.

mod listener;
mod scalar;
mod shapes;
mod upstream;

use std::collections::HashSet;
use std::ops::Range;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::defaults;
pub use listener::*;
pub use scalar::*;
use shapes::*;
pub use upstream::*;

/// `[runtime]`: the worker processes and how the master stops and replaces them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRuntime {
    /// Worker processes, 1 to 1024, or "auto" for the available cores.
    #[schemars(with = "Option<Workers>", extend("default" = "auto"))]
    pub workers: Option<Spanned<IntOrString>>,
    /// How long a graceful stop waits for in-flight requests ("0s" allowed).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::SHUTDOWN_TIMEOUT))
    )]
    pub shutdown_timeout: Option<Text>,
    /// Pin worker i to the i-th CPU the process may use (mod their count).
    #[schemars(extend("default" = false))]
    pub cpu_affinity: Option<bool>,
    /// A worker that answers no heartbeat for this long is killed and replaced; at least "100ms".
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::HEARTBEAT_TIMEOUT))
    )]
    pub heartbeat_timeout: Option<Text>,
    /// How long a binary upgrade waits for the new master to serve before it kills it.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::UPGRADE_TIMEOUT))
    )]
    pub upgrade_timeout: Option<Text>,
}

/// `[admin]`: the admin endpoint (/metrics, /status, /reload, /healthz); none without it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAdmin {
    /// Address of the admin endpoint, IP:PORT (bound without SO_REUSEPORT).
    #[schemars(with = "String")]
    pub listen: Text,
    /// File holding the bearer token; required, or CORRAL_ADMIN_TOKEN, when `listen` is not loopback.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<Text>,
}

/// `[reload_guard]`: a reload whose generation answers clearly worse than
/// the one before is undone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawReloadGuard {
    /// How long after a reload the new generation is watched (at least 2s).
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::RELOAD_GUARD_WINDOW))
    )]
    pub window: Option<Text>,
    /// The share of 5xx answers above which (and above the generation before's) it is rolled back.
    #[schemars(
        with = "Option<Share>",
        extend("default" = defaults::RELOAD_GUARD_MAX_ERROR_RATIO)
    )]
    pub max_error_ratio: Option<Spanned<f64>>,
    /// Answers the new generation must give before it is judged.
    #[schemars(
        with = "Option<i64>",
        range(min = 1, max = 1_000_000),
        extend("default" = defaults::RELOAD_GUARD_MIN_REQUESTS)
    )]
    pub min_requests: Option<Int>,
}

/// `[resolver]`: how server names (`NAME:PORT`) are looked up.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawResolver {
    /// Nameservers to ask, as "IP:PORT" or "IP" (port 53); default: the system's (resolv.conf).
    #[schemars(with = "Option<Vec<String>>")]
    pub nameservers: Option<Spanned<Vec<Text>>>,
    /// How long to wait for each answer.
    #[schemars(
        with = "Option<Duration>",
        extend("default" = defaults::written(defaults::RESOLVER_TIMEOUT))
    )]
    pub timeout: Option<Text>,
}

/// `[[routes]]`: which upstream serves a request, by host and path prefix.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRoute {
    /// The route's label in logs and metrics; default: host + prefix, e.g. "*/api/".
    #[schemars(with = "Option<String>")]
    pub name: Option<Text>,
    /// Exact ("api.example.com") or wildcard ("*.example.com"); case-insensitive; default: any host.
    #[schemars(with = "Option<String>")]
    pub host: Option<Text>,
    /// Byte prefix of the request path.
    #[schemars(with = "Option<String>", extend("default" = "/"))]
    pub path_prefix: Option<Text>,
    /// Name of an [[upstreams]] entry.
    #[schemars(with = "String")]
    pub upstream: Text,
    /// Remove `path_prefix` before forwarding ("/api/users?id=7" -> "/users?id=7").
    #[serde(default)]
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawLogFormat {
    /// One JSON object a line.
    Json,
    /// The combined log format of Apache and nginx.
    Combined,
}

/// `[access_log]`: one line per request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAccessLog {
    /// "stdout", "stderr", or a file appended to (relative to the config's folder).
    #[schemars(with = "String")]
    pub path: Text,
    /// The line format.
    #[schemars(extend("default" = "json"))]
    pub format: Option<RawLogFormat>,
}

/// The whole file. Built section by section (see `parse.rs`) so that one bad
/// route does not hide the errors in the next; the JSON Schema of the file
/// (`corral schema`) is derived from it and the types it holds.
#[derive(Debug, Default, JsonSchema)]
#[schemars(
    deny_unknown_fields,
    title = "corral config",
    description = "The config file of corral, a clustered HTTP reverse proxy: `corral check --config FILE` validates one."
)]
pub struct RawConfig {
    /// Worker processes and how the master stops and replaces them.
    #[schemars(with = "Option<RawRuntime>")]
    pub runtime: RawRuntime,
    /// The admin endpoint (/metrics, /status, /reload, /healthz); none without it.
    pub admin: Option<RawAdmin>,
    /// One line per request; none without it.
    pub access_log: Option<RawAccessLog>,
    /// Where clients connect: one table per address, written [[listeners]].
    #[schemars(with = "Option<Vec<RawListener>>")]
    pub listeners: Vec<Spanned<RawListener>>,
    /// Which upstream serves a request: the most specific host, then the longest path prefix.
    #[schemars(with = "Option<Vec<RawRoute>>")]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Pools of servers that routes send requests to.
    #[schemars(with = "Option<Vec<RawUpstream>>")]
    pub upstreams: Vec<Spanned<RawUpstream>>,
    /// How server names (`NAME:PORT`) are looked up.
    pub resolver: Option<RawResolver>,
    /// Rolls back a reload whose generation answers clearly worse.
    pub reload_guard: Option<RawReloadGuard>,
    #[schemars(skip)]
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
