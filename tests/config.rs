//! The README's configuration reference, key by key: every default, every
//! range's edges, the duration and size syntaxes, names, relative paths, and
//! unknown keys in every table. Read through `config::from_str` (the same
//! code `corral check`, start and reload use), and through `corral check`
//! where the `FILE:LINE:COL: reason` it prints is the promise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use common::*;
use corral::config::{ConfigError, from_str};
use corral::plan::{
    Balance, HashKey, HealthCheckConfig, ListenerConfig, LogTarget, Plan, Protocol, RouteConfig,
    UpstreamConfig,
};

/// The smallest valid config: one of each required table, every optional
/// key left out so that what comes back is the defaults.
const BASE: &str = r#"[runtime]

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "api"

[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001" }]
"#;

/// Where the config is said to live; only the folder matters, for relative paths.
const CONFIG_PATH: &str = "/some/dir/corral.toml";

/// `text` with `line` (`key = value`) set in the table headed `header`:
/// replacing that key if the table has it, appended to the file with its
/// header if the table is missing. Tables are found by their header line,
/// so `[upstreams.health_check]` appended after BASE belongs to its upstream.
fn set(text: &str, header: &str, line: &str) -> String {
    let key = line.split('=').next().unwrap().trim();
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        return format!("{text}\n{header}\n{line}\n");
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let existing = (start + 1..end).find(|&i| {
        lines[i]
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key)
    });
    match existing {
        Some(i) => lines[i] = line,
        None => lines.insert(start + 1, line),
    }
    lines.join("\n") + "\n"
}

/// BASE with one key set.
fn base_with(header: &str, line: &str) -> String {
    set(BASE, header, line)
}

fn load_at(path: &Path, text: &str) -> Plan {
    from_str(path, text).unwrap_or_else(|e| panic!("rejected:\n{e}\nconfig:\n{text}"))
}

fn load(text: &str) -> Plan {
    load_at(Path::new(CONFIG_PATH), text)
}

fn listener(text: &str) -> ListenerConfig {
    load(text).listeners.remove(0)
}

fn route(text: &str) -> RouteConfig {
    load(text).routes.remove(0)
}

fn upstream(text: &str) -> UpstreamConfig {
    load(text).upstreams.remove(0)
}

/// The health check of BASE's upstream with `lines` in its table.
fn health_check(lines: &[&str]) -> HealthCheckConfig {
    let mut text = format!("{BASE}\n[upstreams.health_check]\n");
    for line in lines {
        text = set(&text, "[upstreams.health_check]", line);
    }
    upstream(&text).health_check.expect("a health check")
}

/// The 1-based line and column where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{text}"));
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} is ambiguous in:\n{text}"
    );
    let line = text[..offset].matches('\n').count() + 1;
    let col = text[text[..offset].rfind('\n').map_or(0, |i| i + 1)..offset]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Expects `text` rejected with an error at `needle` that mentions `reason`.
fn rejected(text: &str, needle: &str, reason: &str) {
    let err = match from_str(Path::new(CONFIG_PATH), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    let ConfigError::Invalid { diagnostics } = &err else {
        panic!("not a validation error: {err}");
    };
    let (line, col) = position(text, needle);
    let found = diagnostics
        .iter()
        .find(|d| (d.line, d.col) == (line, col))
        .unwrap_or_else(|| panic!("no error at {line}:{col} ({needle:?}) in:\n{err}"));
    assert!(
        found.message.contains(reason),
        "error at {line}:{col} does not mention {reason:?}: {found}"
    );
}

fn cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap()
}

// --- [runtime] ---------------------------------------------------------------

#[test]
fn runtime_defaults_are_the_documented_ones() {
    let runtime = load(BASE).runtime;
    assert_eq!(runtime.workers, cores(), "workers left out means \"auto\"");
    assert_eq!(runtime.shutdown_timeout, Duration::from_secs(30));
    assert!(!runtime.cpu_affinity);
    assert_eq!(runtime.heartbeat_timeout, Duration::from_millis(750));
    assert_eq!(runtime.upgrade_timeout, Duration::from_secs(60));
}

#[test]
fn workers_auto_is_the_available_cores_and_a_count_is_taken_as_written() {
    let auto = load(&base_with("[runtime]", r#"workers = "auto""#));
    assert_eq!(auto.runtime.workers, cores());
    // A count other than the cores shows the number is read, not ignored.
    let n = if cores().get() == 3 { 5 } else { 3 };
    let counted = load(&base_with("[runtime]", &format!("workers = {n}")));
    assert_eq!(counted.runtime.workers.get(), n);
}

#[test]
fn workers_range_from_1_to_1024() {
    for n in [1, 1024] {
        let config = load(&base_with("[runtime]", &format!("workers = {n}")));
        assert_eq!(config.runtime.workers.get(), n);
    }
    for n in ["0", "1025"] {
        rejected(
            &base_with("[runtime]", &format!("workers = {n}")),
            &format!("{n}\n"),
            &format!("runtime.workers: {n} is out of range, expected 1 to 1024"),
        );
    }
}

#[test]
fn a_shutdown_timeout_of_zero_is_allowed() {
    let config = load(&base_with("[runtime]", r#"shutdown_timeout = "0s""#));
    assert_eq!(config.runtime.shutdown_timeout, Duration::ZERO);
}

#[test]
fn heartbeat_timeout_is_at_least_100ms() {
    let config = load(&base_with("[runtime]", r#"heartbeat_timeout = "100ms""#));
    assert_eq!(config.runtime.heartbeat_timeout, Duration::from_millis(100));
    rejected(
        &base_with("[runtime]", r#"heartbeat_timeout = "99ms""#),
        r#""99ms""#,
        "runtime.heartbeat_timeout: `99ms` is too short, expected at least 100ms",
    );
}

// --- durations and sizes -----------------------------------------------------

#[test]
fn durations_read_as_milliseconds_seconds_and_minutes() {
    let mut text = base_with("[[listeners]]", r#"header_timeout = "150ms""#);
    text = set(&text, "[[listeners]]", r#"keepalive_timeout = "2s""#);
    text = set(&text, "[[listeners]]", r#"body_timeout = "1m""#);
    let l = listener(&text);
    assert_eq!(l.header_timeout, Duration::from_millis(150));
    assert_eq!(l.keepalive_timeout, Duration::from_secs(2));
    assert_eq!(l.body_timeout, Duration::from_secs(60));
}

#[test]
fn sizes_read_as_a_byte_count_or_a_string_with_a_unit() {
    let bytes = listener(&base_with("[[listeners]]", "max_request_body = 1048576"));
    assert_eq!(bytes.max_request_body, Some(1_048_576));
    let unit = listener(&base_with(
        "[[listeners]]",
        r#"max_request_body = "10 MiB""#,
    ));
    assert_eq!(unit.max_request_body, Some(10 * 1024 * 1024));
}

#[test]
fn max_header_bytes_ranges_from_8_kib_to_1_mib() {
    for n in [8192, 1_048_576] {
        let l = listener(&base_with(
            "[[listeners]]",
            &format!("max_header_bytes = {n}"),
        ));
        assert_eq!(l.max_header_bytes, n);
    }
    for n in ["8191", "1048577"] {
        rejected(
            &base_with("[[listeners]]", &format!("max_header_bytes = {n}")),
            n,
            &format!(
                "listeners.max_header_bytes: {n} bytes is out of range, expected 8192 to 1048576"
            ),
        );
    }
}

// --- [[listeners]] -----------------------------------------------------------

#[test]
fn listener_defaults_are_the_documented_ones() {
    let l = listener(BASE);
    assert_eq!(l.backlog, 1024);
    assert_eq!(l.header_timeout, Duration::from_secs(10));
    assert_eq!(l.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(l.body_timeout, Duration::from_secs(60));
    assert_eq!(l.max_request_body, None, "unlimited");
    assert_eq!(l.max_header_bytes, 64 * 1024);
    assert_eq!(l.tls, None);
}

#[test]
fn listener_names_use_letters_digits_dash_underscore_and_dot() {
    let name = "Edge-01_v2.public";
    let l = listener(&base_with("[[listeners]]", &format!("name = \"{name}\"")));
    assert_eq!(l.name, name);
    for bad in ["\"pub lic\"", "\"pub/lic\""] {
        rejected(
            &base_with("[[listeners]]", &format!("name = {bad}")),
            bad,
            "must be non-empty and use only letters, digits, -, _ and .",
        );
    }
}

// --- [[routes]] --------------------------------------------------------------

#[test]
fn route_defaults_are_the_documented_ones() {
    let r = route(BASE);
    assert_eq!(r.path_prefix, "/");
    assert!(!r.strip_prefix);
    assert_eq!(r.host, None);
    assert_eq!(r.name, "*/");
}

#[test]
fn a_route_is_named_after_its_host_and_prefix_unless_named() {
    let api = base_with("[[routes]]", r#"path_prefix = "/api/""#);
    assert_eq!(route(&api).name, "*/api/");
    let hosted = set(&api, "[[routes]]", r#"host = "api.example.com""#);
    assert_eq!(route(&hosted).name, "api.example.com/api/");
    let named = set(&hosted, "[[routes]]", r#"name = "api""#);
    assert_eq!(route(&named).name, "api");
}

// --- [[upstreams]] -----------------------------------------------------------

#[test]
fn upstream_defaults_are_the_documented_ones() {
    let u = upstream(BASE);
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.protocol, Protocol::Http1);
    assert_eq!(u.connect_timeout, Duration::from_secs(5));
    assert_eq!(u.response_timeout, Duration::from_secs(60));
    assert_eq!(u.body_timeout, Duration::from_secs(60));
    assert_eq!(u.idle_timeout, Duration::from_secs(20));
    assert_eq!(u.max_idle_per_server, 128);
    assert_eq!(u.fail_timeout, Duration::from_secs(10));
    assert_eq!(u.servers[0].weight.get(), 1);
    assert_eq!(u.retry_on, [502, 503, 504]);
    assert_eq!(u.retry_budget, 0.2);
    assert_eq!(u.slow_start, None);
    assert_eq!(u.max_in_flight, None);
    assert_eq!(u.max_connections, None);
    assert_eq!(u.request_cap(), None);
    assert_eq!(u.queue_timeout, Duration::from_secs(1));
    assert_eq!(u.health_check, None, "no active checks unless asked for");
}

#[test]
fn retry_on_is_sorted_and_may_be_empty() {
    let u = upstream(&format!(
        "{BASE}retry_on = [504, 500, 500]\nretry_budget = 0.5\n"
    ));
    assert_eq!(
        (u.retry_on.as_slice(), u.retry_budget),
        (&[500, 504][..], 0.5)
    );
    let u = upstream(&format!("{BASE}retry_on = []\nretry_budget = 0\n"));
    assert_eq!((u.retry_on.as_slice(), u.retry_budget), (&[][..], 0.0));
}

#[test]
fn slow_start_is_a_duration() {
    let u = upstream(&format!("{BASE}slow_start = \"30s\"\n"));
    assert_eq!(u.slow_start, Some(Duration::from_secs(30)));
}

#[test]
fn consistent_hash_keys_on_the_client_ip_by_default() {
    let u = upstream(&base_with(
        "[[upstreams]]",
        r#"balance = "consistent_hash""#,
    ));
    assert_eq!(u.balance, Balance::ConsistentHash(HashKey::ClientIp));
}

#[test]
fn server_weights_range_from_1_to_10000() {
    let servers = |weight: &str| {
        base_with(
            "[[upstreams]]",
            &format!(r#"servers = [{{ addr = "127.0.0.1:9001", weight = {weight} }}]"#),
        )
    };
    assert_eq!(upstream(&servers("10000")).servers[0].weight.get(), 10_000);
    for bad in ["0", "10001"] {
        rejected(
            &servers(bad),
            &format!("{bad} }}"),
            &format!("upstreams.servers.weight: {bad} is out of range, expected 1 to 10000"),
        );
    }
}

#[test]
fn health_check_defaults_are_the_documented_ones() {
    let h = health_check(&[]);
    assert_eq!(h.path, "/");
    assert_eq!(h.interval, Duration::from_secs(5));
    assert_eq!(h.timeout, Duration::from_secs(2));
    assert_eq!(h.healthy_threshold.get(), 2);
    assert_eq!(h.unhealthy_threshold.get(), 3);
}

#[test]
fn the_default_health_check_timeout_shrinks_to_a_shorter_interval() {
    let h = health_check(&[r#"interval = "1s""#]);
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_secs(1));
}

// --- relative paths ----------------------------------------------------------

#[test]
fn a_relative_certificate_path_resolves_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["site.example.com".to_owned()]).unwrap();
    std::fs::write(dir.path().join("certs/site.pem"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("certs/site.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let text = format!(
        "{BASE}\n[listeners.tls]\ncertificates = [{{ cert = \"certs/site.pem\", key = \"certs/site.key\" }}]\n"
    );
    // The tests run in the crate's folder, where certs/site.pem does not
    // exist: only resolving against the config's folder finds the files.
    assert!(!Path::new("certs/site.pem").exists());
    let config = load_at(&dir.path().join("corral.toml"), &text);
    let tls = config.listeners[0].tls.as_ref().expect("TLS");
    assert_eq!(tls.certificates[0].cert, dir.path().join("certs/site.pem"));
    assert_eq!(tls.certificates[0].key, dir.path().join("certs/site.key"));
}

#[test]
fn a_relative_access_log_path_resolves_against_the_config_folder() {
    // A temp dir, not /some/dir: the log's folder has to exist to be accepted.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let text = base_with("[access_log]", r#"path = "logs/access.log""#);
    let config = load_at(&dir.path().join("corral.toml"), &text);
    assert_eq!(
        config.access_log.unwrap().target,
        LogTarget::File(dir.path().join("logs/access.log"))
    );
}

// --- [access_log] ------------------------------------------------------------

#[test]
fn check_rejects_an_access_log_path_that_is_a_folder_naming_it() {
    let folder = tempfile::tempdir().unwrap();
    let value = format!("\"{}\"", folder.path().display());
    let text = base_with("[access_log]", &format!("path = {value}"));
    let (ok, out, path) = check(&text);
    assert!(!ok, "accepted:\n{out}");
    let (line, col) = position(&text, &value);
    let prefix = format!("{}:{line}:{col}: ", path.display());
    let found = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no error at {prefix} in:\n{out}"));
    let reason = format!(
        "access_log.path: cannot open {} for appending: is a folder",
        folder.path().display()
    );
    assert!(found.contains(&reason), "{found}");
}

#[test]
fn access_log_to_stdout_or_stderr_is_accepted() {
    for (name, target) in [("stdout", LogTarget::Stdout), ("stderr", LogTarget::Stderr)] {
        let text = base_with("[access_log]", &format!("path = \"{name}\""));
        let (ok, out, _) = check(&text);
        assert!(ok, "{name} rejected:\n{out}");
        assert_eq!(load(&text).access_log.unwrap().target, target);
    }
}

// --- unknown keys ------------------------------------------------------------

#[test]
fn an_unknown_key_is_an_error_in_every_table() {
    // (table, a key it needs to be valid, a key the error lists as expected:
    // it shows the key was refused by that table and not another)
    let tables = [
        ("[runtime]", None, "`workers`"),
        ("[admin]", Some(r#"listen = "127.0.0.1:9901""#), "`listen`"),
        ("[access_log]", Some(r#"path = "stdout""#), "`format`"),
        ("[[listeners]]", None, "`backlog`"),
        ("[listeners.tls]", None, "`certificates`"),
        ("[[routes]]", None, "`strip_prefix`"),
        ("[[upstreams]]", None, "`fail_timeout`"),
        ("[upstreams.health_check]", None, "`unhealthy_threshold`"),
    ];
    for (table, needed, expected) in tables {
        let mut text = BASE.to_owned();
        if let Some(line) = needed {
            text = set(&text, table, line);
        }
        text = set(&text, table, r#"colour = "blue""#);
        rejected(&text, "colour", "unknown field `colour`");
        rejected(&text, "colour", expected);
    }
    // Servers are tables too, written inline.
    let server = base_with(
        "[[upstreams]]",
        r#"servers = [{ addr = "127.0.0.1:9001", colour = "blue" }]"#,
    );
    rejected(
        &server,
        "colour",
        "unknown field `colour`, expected `addr` or `weight`",
    );
}

#[test]
fn a_certificate_without_its_key_is_one_problem_not_also_an_empty_list() {
    let text = base_with(
        "[listeners.tls]",
        r#"certificates = [{ cert = "site.pem" }]"#,
    );
    let Err(ConfigError::Invalid { diagnostics }) = from_str(Path::new(CONFIG_PATH), &text) else {
        panic!("accepted or unread:\n{text}");
    };
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        ["listeners.tls.certificates: missing field `key`"],
        "{text}"
    );
}

#[test]
fn health_check_statuses_are_sorted_and_replace_the_2xx_3xx_default() {
    let h = health_check(&["statuses = [204, 200, 204]"]);
    assert_eq!(h.statuses, [200, 204]);
    assert!(h.passes(http::StatusCode::NO_CONTENT));
    assert!(!h.passes(http::StatusCode::ACCEPTED));
    assert!(!h.passes(http::StatusCode::MOVED_PERMANENTLY));
    let default = health_check(&[]);
    assert!(default.statuses.is_empty());
    assert_eq!(
        (default.host.as_deref(), default.body_contains.as_deref()),
        (None, None)
    );
    assert!(default.passes(http::StatusCode::ACCEPTED));
    assert!(default.passes(http::StatusCode::MOVED_PERMANENTLY));
    assert!(!default.passes(http::StatusCode::NOT_FOUND));
    let h = health_check(&[r#"host = "api.internal:8080""#, r#"body_contains = "ok""#]);
    assert_eq!(h.host.as_deref(), Some("api.internal:8080"));
    assert_eq!(h.body_contains.as_deref(), Some("ok"));
}

#[test]
fn a_servers_request_cap_is_the_lower_limit_and_max_connections_counts_over_http1_only() {
    let both = upstream(&format!("{BASE}max_in_flight = 8\nmax_connections = 3\n"));
    assert_eq!(both.request_cap(), Some(3));
    let h2 = upstream(&format!("{BASE}protocol = \"h2\"\nmax_connections = 3\n"));
    assert_eq!(
        h2.request_cap(),
        None,
        "one multiplexed connection carries them all"
    );
}
