//! Configuration: the TOML file, checked before anything uses it.
//!
//! Two stages, as the rest of corral expects: `raw` mirrors the file with
//! serde (unknown keys rejected, spans kept), then `validate` turns it into
//! the [`Plan`]: durations, socket addresses, non-zero weights, resolved
//! references, certificates read and checked. Every problem is reported as
//! `FILE:LINE:COL: reason`, all of them at once. Only the master (and
//! `corral check`) runs this; workers receive the plan it made. Nothing here
//! opens sockets or touches the data path.
//!
//! `defaults` holds what each key left out means, for validation and for
//! `schema`, the file's JSON Schema, which the raw types derive.

mod defaults;
pub mod diff;
mod error;
mod parse;
mod raw;
mod schema;
mod validate;

use std::path::Path;

pub use error::{ConfigError, Diagnostic, Problem};
pub use schema::schema;
pub use validate::{ADMIN_TOKEN_ENV, issued as issued_certificate};

use crate::plan::Plan;

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(path, &text)
}

/// Validates `text` as if read from `path` (relative certificate paths
/// resolve against `path`'s folder, and are read).
pub fn from_str(path: &Path, text: &str) -> Result<Plan, ConfigError> {
    let mut problems = Vec::new();
    let plan = parse::parse(text, &mut problems)
        .and_then(|raw| validate::validate(path, raw, &mut problems));
    match plan {
        Some((mut plan, warnings)) if problems.is_empty() => {
            plan.warnings = warnings
                .into_iter()
                .map(|w| Diagnostic::locate(path, text, w).to_string())
                .collect();
            Ok(plan)
        }
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

#[cfg(test)]
mod tests {
    //! Validation through [`from_str`], the one way in: what a file
    //! may say and what it becomes.
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use http::HeaderName;

    use super::*;
    use crate::plan::*;

    /// A valid file; each test appends the tables it is about.
    const BASE: &str = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001" }]
[[routes]]
upstream = "api"
"#;

    fn load_at(path: &Path, extra: &str) -> Result<Plan, Vec<String>> {
        from_str(path, &format!("{BASE}{extra}")).map_err(|e| e.lines())
    }

    fn accepted(extra: &str) -> Plan {
        load_at(Path::new("t.toml"), extra)
            .unwrap_or_else(|lines| panic!("rejected {extra:?}: {lines:?}"))
    }

    fn rejected(extra: &str, reason: &str) {
        match load_at(Path::new("t.toml"), extra) {
            Ok(_) => panic!("accepted {extra:?}"),
            Err(lines) => assert!(
                lines.iter().any(|l| l.contains(reason)),
                "no {reason:?} for {extra:?} in {lines:?}"
            ),
        }
    }

    fn listener(keys: &str) -> String {
        format!("[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:8081\"\n{keys}\n")
    }

    fn upstream(keys: &str) -> String {
        format!(
            "[[upstreams]]\nname = \"other\"\nservers = [{{ addr = \"127.0.0.1:9002\" }}]\n{keys}\n"
        )
    }

    fn route_host(host: &str) -> String {
        format!("[[routes]]\nhost = \"{host}\"\nupstream = \"api\"\n")
    }

    #[test]
    fn workers_are_a_count_from_1_to_1024_or_auto() {
        let workers = |v: &str| {
            accepted(&format!("[runtime]\nworkers = {v}\n"))
                .runtime
                .workers
        };
        assert_eq!(workers("1024").get(), 1024);
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        assert_eq!(workers("\"auto\""), cores);
        rejected(
            "[runtime]\nworkers = 1025\n",
            "runtime.workers: 1025 is out of range",
        );
        rejected(
            "[runtime]\nworkers = \"lots\"\n",
            "`lots` is not a worker count",
        );
    }

    #[test]
    fn a_server_may_be_a_name_and_the_resolver_names_its_nameservers() {
        let plan = accepted(
            "[[upstreams]]\nname = \"named\"\nservers = [{ addr = \"API.internal:8080\", weight = 3 }, { addr = \"10.0.0.1:80\" }]\ndns_refresh = \"30s\"\n[resolver]\nnameservers = [\"127.0.0.11\", \"[::1]:5353\"]\n",
        );
        let named = plan.upstream("named").expect("upstream");
        assert_eq!(named.names.len(), 1);
        assert_eq!(named.names[0].to_string(), "api.internal:8080");
        assert_eq!(named.names[0].weight.get(), 3);
        assert_eq!(
            named.servers.len(),
            1,
            "the IP:PORT entry only, until resolved"
        );
        assert_eq!(named.dns_refresh, Duration::from_secs(30));
        assert_eq!(plan.upstreams[0].dns_refresh, Duration::from_secs(5));
        let resolver = plan.resolver.as_ref().expect("resolver");
        assert_eq!(
            resolver.nameservers,
            [
                "127.0.0.11:53".parse().expect("addr"),
                "[::1]:5353".parse().expect("addr")
            ]
        );
        assert_eq!(resolver.timeout, Duration::from_secs(2));
        assert!(accepted("").resolver.is_none());
        for (text, error) in [
            (
                "[resolver]\nnameservers = [\"dns.example\"]\n",
                "resolver.nameservers: `dns.example` is not a nameserver address",
            ),
            (
                "[resolver]\nnameservers = []\n",
                "resolver.nameservers: empty",
            ),
            (
                "[resolver]\ntimeout = \"0s\"\n",
                "resolver.timeout: must be greater than zero",
            ),
            (
                "[[upstreams]]\nname = \"n\"\nservers = [{ addr = \"a.internal:80\" }]\ndns_refresh = \"500ms\"\n",
                "upstreams.dns_refresh: `500ms` is too short, expected at least 1s",
            ),
            (
                "[[upstreams]]\nname = \"n\"\nservers = [{ addr = \"10.0.0.1:80\" }]\ndns_refresh = \"5s\"\n",
                "upstreams.dns_refresh: no server of this upstream is written as NAME:PORT",
            ),
            (
                "[[upstreams]]\nname = \"n\"\nservers = [{ addr = \"a.internal:0\" }]\n",
                "upstreams.servers.addr: `a.internal:0` is not an address",
            ),
            (
                "[[upstreams]]\nname = \"n\"\nservers = [{ addr = \"a b:80\" }]\n",
                "upstreams.servers.addr: `a b:80` is not an address",
            ),
            (
                "[[upstreams]]\nname = \"n\"\nservers = [{ addr = \"a.internal:80\" }, { addr = \"A.internal:80\" }]\n",
                "upstreams.servers.addr: A.internal:80 is listed twice",
            ),
        ] {
            rejected(text, error);
        }
    }

    #[test]
    fn a_tls_listener_speaks_1_2_and_up_unless_it_says_1_3() {
        use crate::plan::TlsVersion;
        let dir = tempfile::tempdir().expect("dir");
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        std::fs::write(dir.path().join("a.pem"), cert.cert.pem()).expect("write");
        std::fs::write(dir.path().join("a.key"), cert.signing_key.serialize_pem()).expect("write");
        let path = dir.path().join("corral.toml");
        let tls = |line: &str| {
            format!(
                "[[listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:8443\"\n[listeners.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n{line}\n"
            )
        };
        let version = |line: &str| {
            let plan = load_at(&path, &tls(line)).expect("valid");
            plan.listeners[1].tls.as_ref().expect("tls").min_version
        };
        assert_eq!(version(""), TlsVersion::Tls12);
        assert_eq!(version("min_version = \"1.3\""), TlsVersion::Tls13);
        let errors = load_at(&path, &tls("min_version = \"1.1\"")).expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.contains("listeners.tls.min_version: `1.1` is not a TLS version corral speaks, expected \"1.2\" or \"1.3\"")),
            "{errors:?}"
        );
    }

    #[test]
    fn an_eject_table_has_defaults_and_checked_values() {
        let eject = accepted("[upstreams.eject]\n").upstreams[0]
            .eject
            .clone()
            .expect("eject");
        assert_eq!(eject.consecutive_failures.get(), 5);
        assert!(eject.statuses.is_empty());
        assert_eq!(eject.base_time, Duration::from_secs(10));
        assert_eq!(eject.max_share, 0.5);
        assert!(accepted("").upstreams[0].eject.is_none());
        let set = accepted("[upstreams.eject]\nstatuses = [503, 500]\nmax_share = 1.0\n");
        let set = set.upstreams[0].eject.as_ref().expect("eject");
        assert_eq!(
            (set.statuses.as_slice(), set.max_share),
            (&[500, 503][..], 1.0)
        );
        for (line, error) in [
            (
                "consecutive_failures = 0",
                "upstreams.eject.consecutive_failures: 0 is out of range, expected 1 to 1000",
            ),
            (
                "max_share = 1.5",
                "upstreams.eject.max_share: 1.5 is out of range",
            ),
            (
                "statuses = [700]",
                "upstreams.eject.statuses: 700 is out of range",
            ),
            (
                "base_time = \"0s\"",
                "upstreams.eject.base_time: must be greater than zero",
            ),
            ("after = 3", "upstreams.eject: unknown field `after`"),
        ] {
            rejected(&format!("[upstreams.eject]\n{line}\n"), error);
        }
    }

    #[test]
    fn heartbeat_timeout_is_at_least_100ms() {
        let timeout = |v: &str| {
            let c = accepted(&format!("[runtime]\nheartbeat_timeout = \"{v}\"\n"));
            c.runtime.heartbeat_timeout
        };
        assert_eq!(timeout("100ms"), Duration::from_millis(100));
        assert_eq!(timeout("2s"), Duration::from_secs(2));
        assert_eq!(
            accepted("").runtime.heartbeat_timeout,
            Duration::from_millis(750)
        );
        rejected(
            "[runtime]\nheartbeat_timeout = \"99ms\"\n",
            "`99ms` is too short, expected at least 100ms",
        );
    }

    #[test]
    fn max_header_bytes_is_from_8_kib_to_1_mib() {
        let bytes = |v: &str| {
            accepted(&listener(&format!("max_header_bytes = {v}"))).listeners[1].max_header_bytes
        };
        assert_eq!(bytes("8192"), 8192);
        assert_eq!(bytes("\"1 MiB\""), 1024 * 1024);
        for v in ["8191", "1048577"] {
            rejected(
                &listener(&format!("max_header_bytes = {v}")),
                &format!(
                    "listeners.max_header_bytes: {v} bytes is out of range, expected 8192 to 1048576"
                ),
            );
        }
    }

    #[test]
    fn encoded_slashes_are_rejected_unless_a_listener_decodes_or_keeps_them() {
        let policy = |v: &str| {
            accepted(&listener(&format!("path_encoded_slashes = \"{v}\""))).listeners[1]
                .path_encoded_slashes
        };
        assert_eq!(
            accepted("").listeners[0].path_encoded_slashes,
            EncodedSlashes::Reject
        );
        assert_eq!(policy("reject"), EncodedSlashes::Reject);
        assert_eq!(policy("decode"), EncodedSlashes::Decode);
        assert_eq!(policy("keep"), EncodedSlashes::Keep);
        rejected(
            &listener("path_encoded_slashes = \"allow\""),
            "listeners.path_encoded_slashes: unknown variant `allow`",
        );
    }

    #[test]
    fn underscored_header_names_are_dropped_unless_a_listener_rejects_or_allows_them() {
        let policy = |v: &str| {
            accepted(&listener(&format!("underscores_in_headers = \"{v}\""))).listeners[1]
                .underscores_in_headers
        };
        assert_eq!(
            accepted("").listeners[0].underscores_in_headers,
            Underscores::Drop
        );
        assert_eq!(policy("reject"), Underscores::Reject);
        assert_eq!(policy("allow"), Underscores::Allow);
        rejected(
            &listener("underscores_in_headers = \"keep\""),
            "listeners.underscores_in_headers: unknown variant `keep`",
        );
    }

    #[test]
    fn trusted_networks_are_cidrs_or_addresses() {
        let c = accepted(&listener(
            "trusted_proxies = [\"10.1.2.3/8\", \"::1\"]\n[listeners.proxy_protocol]\ntrusted = [\"127.0.0.1\"]",
        ));
        let nets = |list: &[ipnet::IpNet]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(c.listeners[0].trusted_proxies, None);
        assert_eq!(c.listeners[0].proxy_protocol, None);
        let extra = &c.listeners[1];
        assert_eq!(
            nets(extra.trusted_proxies.as_deref().unwrap_or_default()),
            ["10.0.0.0/8", "::1/128"]
        );
        let pp = extra.proxy_protocol.as_ref().map(|p| nets(&p.trusted));
        assert_eq!(pp, Some(vec!["127.0.0.1/32".to_owned()]));
        rejected(
            &listener("trusted_proxies = [\"10.0.0.0/33\"]"),
            "listeners.trusted_proxies: `10.0.0.0/33` is not a network",
        );
        rejected(
            &listener("[listeners.proxy_protocol]\ntrusted = [\"lb\"]"),
            "listeners.proxy_protocol.trusted: `lb` is not a network",
        );
    }

    #[test]
    fn a_connection_limit_is_positive() {
        let c = accepted(&listener("max_connections = 5000"));
        assert_eq!(c.listeners[0].max_connections, None);
        assert_eq!(c.listeners[1].max_connections.map(|n| n.get()), Some(5000));
        rejected(
            &listener("max_connections = 0"),
            "listeners.max_connections: 0 is out of range",
        );
    }

    #[test]
    fn listeners_may_share_port_0_but_no_other_address() {
        let c = accepted(
            &listener("")
                .replace("8081", "0")
                .repeat(2)
                .replacen("extra", "extra2", 1),
        );
        assert_eq!(c.listeners.len(), 3);
        rejected(
            &listener("").replace("8081", "8080"),
            "listeners.listen: 127.0.0.1:8080 is already used by listener `public`",
        );
    }

    #[test]
    fn an_access_log_file_needs_a_folder_that_exists() {
        // A bare name resolves against the folder of a config named without one.
        let c = accepted("[access_log]\npath = \"access.log\"\n");
        let log = c.access_log.expect("access log");
        assert_eq!(log.target, LogTarget::File("access.log".into()));
        rejected(
            "[access_log]\npath = \"/no/such/folder/access.log\"\n",
            "its folder /no/such/folder does not exist",
        );
    }

    #[test]
    fn tls_certificates_resolve_against_the_config_s_folder_and_are_read_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let (chain, key) = (pair.cert.pem(), pair.signing_key.serialize_pem());
        std::fs::write(dir.path().join("cert.pem"), &chain).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &key).expect("write key");
        let tls = "[listeners.tls]\ncertificates = [{ cert = \"cert.pem\", key = \"key.pem\" }]";
        let c = load_at(&dir.path().join("corral.toml"), &listener(tls)).expect("valid");
        let certificates = c.listeners[1].tls.as_ref().map(|t| t.certificates.clone());
        assert_eq!(
            certificates,
            Some(vec![CertificateConfig {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                pem: CertifiedPem { chain, key },
                acme: None,
                ocsp: None,
            }])
        );
    }

    #[test]
    fn hash_keys_are_the_client_ip_the_path_a_header_or_a_cookie() {
        let key = |k: &str| {
            let c = accepted(&upstream(&format!(
                "balance = \"consistent_hash\"\nhash_key = \"{k}\""
            )));
            c.upstream("other").map(|u| u.balance.clone())
        };
        let hashed = |k| Some(Balance::ConsistentHash(k));
        assert_eq!(key("client_ip"), hashed(HashKey::ClientIp));
        assert_eq!(key("path"), hashed(HashKey::Path));
        assert_eq!(
            key("header:x-user"),
            hashed(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(key("cookie:sid"), hashed(HashKey::Cookie("sid".to_owned())));
        for bad in ["ip", "cookie:", "cookie:a=b", "cookie:a;b", "cookie:a b"] {
            rejected(
                &upstream(&format!(
                    "balance = \"consistent_hash\"\nhash_key = \"{bad}\""
                )),
                &format!("upstreams.hash_key: `{bad}` is not a hash key"),
            );
        }
    }

    #[test]
    fn health_check_paths_are_request_paths() {
        let c = accepted(&upstream(
            "[upstreams.health_check]\npath = \"/healthz?full=1\"",
        ));
        let check = c.upstream("other").and_then(|u| u.health_check.clone());
        assert_eq!(check.map(|h| h.path).as_deref(), Some("/healthz?full=1"));
        for bad in ["healthz", "/bad path"] {
            rejected(
                &upstream(&format!("[upstreams.health_check]\npath = \"{bad}\"")),
                &format!("upstreams.health_check.path: `{bad}` is not a request path"),
            );
        }
    }

    #[test]
    fn a_health_check_timeout_is_no_longer_than_its_interval() {
        for timeout in ["1s", "5s"] {
            accepted(&upstream(&format!(
                "[upstreams.health_check]\ninterval = \"5s\"\ntimeout = \"{timeout}\""
            )));
        }
        rejected(
            &upstream("[upstreams.health_check]\ninterval = \"5s\"\ntimeout = \"6s\""),
            "upstreams.health_check.timeout: 6s is longer than the interval 5s",
        );
    }

    /// `len` characters of DNS labels of at most 63, ending in `.example.com`.
    fn name_of_len(len: usize) -> String {
        let mut labels = Vec::new();
        let mut left = len - ".example.com".len();
        while left > 0 {
            let n = left.min(63);
            labels.push("a".repeat(n));
            left = left.saturating_sub(n + 1);
        }
        labels.join(".") + ".example.com"
    }

    #[test]
    fn route_hosts_are_dns_names_or_wildcards() {
        let host = |h: &str| accepted(&route_host(h)).routes[1].host.clone();
        let exact = |h: &str| Some(HostPattern::Exact(h.to_owned()));
        assert_eq!(host("API.Example.COM"), exact("api.example.com"));
        assert_eq!(
            host("*.example.com"),
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(host("a-b_c.example.com"), exact("a-b_c.example.com"));
        let longest_label = format!("{}.example.com", "a".repeat(63));
        assert_eq!(host(&longest_label), exact(&longest_label));
        let longest = name_of_len(253);
        assert_eq!(longest.len(), 253);
        assert_eq!(host(&longest), exact(&longest));
        let too_long = name_of_len(254);
        assert_eq!(too_long.len(), 254);
        let long_label = format!("{}.example.com", "a".repeat(64));
        for bad in [
            "*.",
            "a..example.com",
            "bad!.example.com",
            "example.com:8080",
            &long_label,
            &too_long,
        ] {
            rejected(
                &route_host(bad),
                &format!("routes.host: `{bad}` is not a host name"),
            );
        }
    }

    #[test]
    fn a_route_without_a_name_is_named_after_its_host_and_prefix() {
        let c = accepted(
            "[[routes]]\nhost = \"*.Example.com\"\npath_prefix = \"/v2/\"\nupstream = \"api\"\n",
        );
        let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["*/", "*.example.com/v2/"]);
        assert_eq!(
            HostPattern::Exact("api.example.com".into()).to_string(),
            "api.example.com"
        );
    }

    #[test]
    fn names_use_only_letters_digits_dashes_underscores_and_dots() {
        accepted(&listener("").replace("extra", "a-b_c.9"));
        for bad in ["my listener", ""] {
            rejected(
                &listener("").replace("extra", bad),
                &format!(
                    "listener: name `{bad}` must be non-empty and use only letters, digits, -, _ and ."
                ),
            );
        }
    }

    #[test]
    fn upstreams_are_found_by_name() {
        let c = accepted(&upstream(""));
        assert_eq!(c.upstream("other").map(|u| u.name.as_str()), Some("other"));
        assert_eq!(c.upstream("api").map(|u| u.name.as_str()), Some("api"));
        assert!(c.upstream("nope").is_none());
    }

    #[test]
    fn durations_longer_than_ten_years_are_refused_at_their_key() {
        // Doubled as a cool-down, or added to a clock, such a figure
        // overflows; ten years is accepted.
        rejected(
            &upstream("[upstreams.eject]\nbase_time = \"100000000years\""),
            "upstreams.eject.base_time: `100000000years` is too long, expected at most 10 years",
        );
        rejected(
            &upstream("queue_timeout = \"11years\""),
            "queue_timeout: `11years` is too long",
        );
        let plan = accepted(&upstream("[upstreams.eject]\nbase_time = \"10years\""));
        let eject = plan.upstream("other").unwrap().eject.as_ref().unwrap();
        assert_eq!(eject.base_time, Duration::from_secs(315_576_000));
    }

    #[test]
    fn two_upstreams_with_one_sticky_cookie_under_one_host_are_warned_of() {
        let sticky = |name: &str, port: u16, host: &str| {
            format!(
                "[[routes]]\nhost = \"{host}\"\nupstream = \"{name}\"\n[[upstreams]]\nname = \"{name}\"\nservers = [{{ addr = \"127.0.0.1:{port}\" }}]\n[upstreams.sticky]\ncookie = \"srv\"\n"
            )
        };
        let warnings = |hosts: [&str; 2]| {
            let text = format!(
                "{}{}",
                sticky("one", 9002, hosts[0]),
                sticky("two", 9003, hosts[1])
            );
            accepted(&text).warnings
        };
        let shared = warnings(["app.example.com", "*.example.com"]);
        let [warning] = shared.as_slice() else {
            panic!("{shared:?}");
        };
        assert!(warning.starts_with("t.toml:25:10: "), "{warning}");
        assert!(
            warning.contains("`srv` is also the cookie of upstream `one`"),
            "{warning}"
        );
        // The cookie is the host's: under other hosts, each has its own.
        assert!(warnings(["app.example.com", "admin.example.com"]).is_empty());
        assert!(warnings(["*.example.com", "*.example.org"]).is_empty());
    }
}
