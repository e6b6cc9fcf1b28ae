//! What a reload would change: two validated configs compared by name.
//!
//! Listeners, routes and upstreams are matched by name; servers by address.
//! Each difference is one line: `+` added, `-` removed, `~` changed with the
//! keys that differ, old and new. Keys and values are written as in the
//! config file (`balance "round_robin" -> "least_conn"`), and a key that is
//! not set reads `unset`. Used by `corral check --diff` and by the master's
//! reload log and answer.

use std::time::Duration;

use crate::plan::{
    Balance, HashKey, ListenerConfig, LogFormat, LogTarget, Plan, Protocol, RouteConfig,
    UpstreamConfig,
};

/// The differences from `old` to `new`, one line each; empty when equal.
pub fn diff(old: &Plan, new: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    changed(&mut out, "runtime".into(), &runtime(old), &runtime(new));
    let admin = |c: &Plan| {
        vec![(
            "listen",
            c.admin.as_ref().map_or(UNSET.into(), |a| string(a.listen)),
        )]
    };
    changed(&mut out, "admin".into(), &admin(old), &admin(new));
    changed(
        &mut out,
        "access_log".into(),
        &access_log(old),
        &access_log(new),
    );
    changed(
        &mut out,
        "reload_guard".into(),
        &reload_guard(old),
        &reload_guard(new),
    );
    section(
        &mut out,
        "listener",
        &old.listeners,
        &new.listeners,
        |l| &l.name,
        listener,
    );
    section(
        &mut out,
        "route",
        &old.routes,
        &new.routes,
        |r| &r.name,
        route,
    );
    section(
        &mut out,
        "upstream",
        &old.upstreams,
        &new.upstreams,
        |u| &u.name,
        upstream,
    );
    for u in &new.upstreams {
        let before = old.upstreams.iter().find(|o| o.name == u.name);
        servers(&mut out, before, u);
    }
    out
}

type Fields = Vec<(&'static str, String)>;

/// How a key that is not set reads.
const UNSET: &str = "unset";

fn section<T>(
    out: &mut Vec<String>,
    what: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    fields: impl Fn(&T) -> Fields,
) {
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => out.push(format!("+ {what} `{}` ({})", name(n), summary(&fields(n)))),
            Some(o) => changed(out, format!("{what} `{}`", name(n)), &fields(o), &fields(n)),
        }
    }
    for o in old
        .iter()
        .filter(|o| !new.iter().any(|n| name(n) == name(o)))
    {
        out.push(format!("- {what} `{}`", name(o)));
    }
}

fn changed(out: &mut Vec<String>, what: String, old: &Fields, new: &Fields) {
    let diffs: Vec<String> = old
        .iter()
        .zip(new)
        .filter(|(a, b)| a.1 != b.1)
        .map(|((key, a), (_, b))| format!("{key} {a} -> {b}"))
        .collect();
    if !diffs.is_empty() {
        out.push(format!("~ {what}: {}", diffs.join(", ")));
    }
}

/// Server lines of upstream `new`, against its previous version if any.
fn servers(out: &mut Vec<String>, old: Option<&UpstreamConfig>, new: &UpstreamConfig) {
    let old_servers = old.map_or(&[][..], |o| &o.servers[..]);
    for s in &new.servers {
        match old_servers.iter().find(|o| o.addr == s.addr) {
            None => out.push(format!(
                "+ server {} in upstream `{}` (weight {})",
                s.addr, new.name, s.weight
            )),
            Some(o) if o.weight != s.weight => {
                out.push(format!(
                    "~ server {} in upstream `{}`: weight {} -> {}",
                    s.addr, new.name, o.weight, s.weight
                ));
            }
            Some(_) => {}
        }
    }
    if old.is_none() {
        return;
    }
    for o in old_servers
        .iter()
        .filter(|o| !new.servers.iter().any(|s| s.addr == o.addr))
    {
        out.push(format!("- server {} in upstream `{}`", o.addr, new.name));
    }
}

/// The keys that are set, as `key value`.
fn summary(fields: &Fields) -> String {
    fields
        .iter()
        .filter(|(_, v)| v != UNSET)
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A TOML string.
fn string(s: impl ToString) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn duration(d: Duration) -> String {
    string(humantime::format_duration(d))
}

fn runtime(c: &Plan) -> Fields {
    let r = &c.runtime;
    vec![
        ("workers", r.workers.to_string()),
        ("shutdown_timeout", duration(r.shutdown_timeout)),
        ("cpu_affinity", r.cpu_affinity.to_string()),
        ("heartbeat_timeout", duration(r.heartbeat_timeout)),
        ("upgrade_timeout", duration(r.upgrade_timeout)),
    ]
}

fn access_log(c: &Plan) -> Fields {
    let Some(log) = &c.access_log else {
        return vec![("path", UNSET.into()), ("format", UNSET.into())];
    };
    let path = match &log.target {
        LogTarget::Stdout => string("stdout"),
        LogTarget::Stderr => string("stderr"),
        LogTarget::File(path) => string(path.display()),
    };
    let format = match log.format {
        LogFormat::Json => "json",
        LogFormat::Combined => "combined",
    };
    vec![("path", path), ("format", string(format))]
}

/// The ACME certificate's settings (the certificate itself shows in
/// `tls.certificates`).
fn acme(l: &ListenerConfig) -> String {
    let acme = l
        .tls
        .iter()
        .flat_map(|t| &t.certificates)
        .find_map(|c| c.acme.as_ref());
    acme.map_or(UNSET.into(), |a| {
        let domains: Vec<String> = a.domains.iter().map(string).collect();
        format!(
            "{{ directory = {}, domains = [{}], state_dir = {} }}",
            string(&a.directory),
            domains.join(", "),
            string(a.state_dir.display())
        )
    })
}

fn reload_guard(c: &Plan) -> Fields {
    let Some(g) = &c.reload_guard else {
        return vec![("window", UNSET.into())];
    };
    vec![
        ("window", duration(g.window)),
        ("max_error_ratio", g.max_error_ratio.to_string()),
        ("min_requests", g.min_requests.to_string()),
    ]
}

fn listener(l: &ListenerConfig) -> Fields {
    let mut fields = vec![("listen", string(l.addr))];
    fields.extend(listener_tls(l));
    fields.extend([
        ("backlog", l.backlog.to_string()),
        ("header_timeout", duration(l.header_timeout)),
        ("keepalive_timeout", duration(l.keepalive_timeout)),
        ("body_timeout", duration(l.body_timeout)),
        (
            "max_request_body",
            l.max_request_body.map_or(UNSET.into(), |b| b.to_string()),
        ),
        ("max_header_bytes", l.max_header_bytes.to_string()),
        (
            "path_encoded_slashes",
            string(format!("{:?}", l.path_encoded_slashes).to_lowercase()),
        ),
        (
            "underscores_in_headers",
            string(format!("{:?}", l.underscores_in_headers).to_lowercase()),
        ),
        (
            "trusted_proxies",
            l.trusted_proxies.as_deref().map_or(UNSET.into(), networks),
        ),
        (
            "proxy_protocol.trusted",
            l.proxy_protocol
                .as_ref()
                .map_or(UNSET.into(), |p| networks(&p.trusted)),
        ),
        (
            "max_connections",
            l.max_connections.map_or(UNSET.into(), |n| n.to_string()),
        ),
    ]);
    fields
}

/// The fields of a listener's `tls` table.
fn listener_tls(l: &ListenerConfig) -> Fields {
    let path = |p: &std::path::Path| string(p.display());
    let client_auth = l.tls.as_ref().and_then(|t| t.client_auth.as_ref());
    let certificates = l.tls.as_ref().map_or(UNSET.into(), |t| {
        let list: Vec<String> = t
            .certificates
            .iter()
            .map(|c| {
                let ocsp = c.ocsp.as_ref().map_or_else(String::new, |o| {
                    format!(", ocsp = {}", string(o.path.display()))
                });
                format!(
                    "{{ cert = {}, key = {}{ocsp} }}",
                    string(c.cert.display()),
                    string(c.key.display())
                )
            })
            .collect();
        format!("[{}]", list.join(", "))
    });
    vec![
        ("tls.certificates", certificates),
        ("tls.acme", acme(l)),
        (
            "tls.min_version",
            l.tls.as_ref().map_or(UNSET.into(), |t| {
                string(match t.min_version {
                    crate::plan::TlsVersion::Tls12 => "1.2",
                    crate::plan::TlsVersion::Tls13 => "1.3",
                })
            }),
        ),
        (
            "tls.session_tickets",
            l.tls
                .as_ref()
                .map_or(UNSET.into(), |t| t.session_tickets.to_string()),
        ),
        (
            "tls.client_ca",
            client_auth.map_or(UNSET.into(), |a| path(&a.ca)),
        ),
        (
            "tls.client_subject_header",
            client_auth
                .and_then(|a| a.subject_header.as_ref())
                .map_or(UNSET.into(), |h| string(h.as_str())),
        ),
    ]
}

fn networks(list: &[ipnet::IpNet]) -> String {
    let list: Vec<String> = list.iter().map(string).collect();
    format!("[{}]", list.join(", "))
}

fn route(r: &RouteConfig) -> Fields {
    vec![
        ("host", r.host.as_ref().map_or(UNSET.into(), string)),
        ("path_prefix", string(&r.path_prefix)),
        ("upstream", string(&r.upstream)),
        ("strip_prefix", r.strip_prefix.to_string()),
    ]
}

fn upstream(u: &UpstreamConfig) -> Fields {
    let (balance, hash_key) = match &u.balance {
        Balance::RoundRobin => ("round_robin", None),
        Balance::LeastConn => ("least_conn", None),
        Balance::Random => ("random", None),
        Balance::P2cEwma => ("p2c_ewma", None),
        Balance::ConsistentHash(key) => ("consistent_hash", Some(key)),
    };
    let hash_key = hash_key.map_or(UNSET.into(), |key| {
        string(match key {
            HashKey::ClientIp => "client_ip".to_owned(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
            HashKey::Path => "path".to_owned(),
        })
    });
    let protocol = match u.protocol {
        Protocol::Http1 => "http1",
        Protocol::H2 => "h2",
    };
    let check = u.health_check.as_ref();
    let checked =
        |f: &dyn Fn(&crate::plan::HealthCheckConfig) -> String| check.map_or(UNSET.into(), f);
    let mut fields = vec![
        ("balance", string(balance)),
        ("hash_key", hash_key),
        ("protocol", string(protocol)),
        ("connect_timeout", duration(u.connect_timeout)),
        ("response_timeout", duration(u.response_timeout)),
        ("body_timeout", duration(u.body_timeout)),
        ("idle_timeout", duration(u.idle_timeout)),
        ("max_idle_per_server", u.max_idle_per_server.to_string()),
        ("fail_timeout", duration(u.fail_timeout)),
        ("retry_on", format!("{:?}", u.retry_on)),
        ("retry_budget", u.retry_budget.to_string()),
        ("slow_start", u.slow_start.map_or(UNSET.into(), duration)),
        (
            "max_in_flight",
            u.max_in_flight.map_or(UNSET.into(), |n| n.to_string()),
        ),
        (
            "max_connections",
            u.max_connections.map_or(UNSET.into(), |n| n.to_string()),
        ),
        ("queue_timeout", duration(u.queue_timeout)),
        ("health_check.path", checked(&|h| string(&h.path))),
        ("health_check.interval", checked(&|h| duration(h.interval))),
        ("health_check.timeout", checked(&|h| duration(h.timeout))),
        (
            "health_check.healthy_threshold",
            checked(&|h| h.healthy_threshold.to_string()),
        ),
        (
            "health_check.unhealthy_threshold",
            checked(&|h| h.unhealthy_threshold.to_string()),
        ),
        (
            "health_check.statuses",
            checked(&|h| match h.statuses.as_slice() {
                [] => UNSET.into(),
                list => format!("{list:?}"),
            }),
        ),
        (
            "health_check.host",
            checked(&|h| h.host.as_ref().map_or(UNSET.into(), string)),
        ),
        (
            "health_check.body_contains",
            checked(&|h| h.body_contains.as_ref().map_or(UNSET.into(), string)),
        ),
        (
            "sticky.cookie",
            u.sticky
                .as_ref()
                .map_or(UNSET.into(), |s| string(&s.cookie)),
        ),
        (
            "sticky.max_age",
            u.sticky
                .as_ref()
                .and_then(|s| s.max_age)
                .map_or(UNSET.into(), duration),
        ),
    ];
    fields.extend(passive_health_and_tls(u));
    fields
}

/// The fields of an upstream's `eject` and `tls` tables.
fn passive_health_and_tls(u: &UpstreamConfig) -> Fields {
    let eject =
        |f: &dyn Fn(&crate::plan::EjectConfig) -> String| u.eject.as_ref().map_or(UNSET.into(), f);
    let tls =
        |f: &dyn Fn(&crate::plan::UpstreamTls) -> String| u.tls.as_ref().map_or(UNSET.into(), f);
    let path = |p: &std::path::Path| string(p.display().to_string());
    vec![
        (
            "eject.consecutive_failures",
            eject(&|e| e.consecutive_failures.to_string()),
        ),
        ("eject.statuses", eject(&|e| format!("{:?}", e.statuses))),
        ("eject.base_time", eject(&|e| duration(e.base_time))),
        ("eject.max_share", eject(&|e| e.max_share.to_string())),
        (
            "tls.server_name",
            tls(&|t| t.server_name.as_ref().map_or(UNSET.into(), string)),
        ),
        (
            "tls.ca",
            tls(&|t| t.ca.as_deref().map_or_else(|| "system roots".into(), path)),
        ),
        (
            "tls.cert",
            tls(&|t| t.client.as_ref().map_or(UNSET.into(), |c| path(&c.cert))),
        ),
        (
            "tls.insecure_skip_verify",
            tls(&|t| t.insecure_skip_verify.to_string()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Plan {
        crate::config::from_str(Path::new("t.toml"), text).unwrap()
    }

    const BASE: &str = r#"
[runtime]
workers = 2
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
[[routes]]
name = "all"
upstream = "api"
[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }]
"#;

    #[test]
    fn equal_configs_have_no_diff() {
        assert!(diff(&config(BASE), &config(BASE)).is_empty());
    }

    #[test]
    fn every_kind_of_change_is_named() {
        let new = BASE
            .replace("workers = 2", "workers = 4")
            .replace("127.0.0.1:8080", "127.0.0.1:8081")
            .replace(
                "{ addr = \"127.0.0.1:9002\" }",
                "{ addr = \"127.0.0.1:9003\", weight = 2 }",
            )
            + "[[listeners]]\nname = \"internal\"\nlisten = \"127.0.0.1:9000\"\n"
            + "[[routes]]\nname = \"v2\"\npath_prefix = \"/v2/\"\nupstream = \"api\"\n";
        let lines = diff(&config(BASE), &config(&new));
        assert_eq!(
            lines,
            [
                "~ runtime: workers 2 -> 4",
                "~ listener `public`: listen \"127.0.0.1:8080\" -> \"127.0.0.1:8081\"",
                "+ listener `internal` (listen \"127.0.0.1:9000\", backlog 1024, header_timeout \"10s\", keepalive_timeout \"1m\", body_timeout \"1m\", max_header_bytes 65536, path_encoded_slashes \"reject\", underscores_in_headers \"drop\")",
                "+ route `v2` (path_prefix \"/v2/\", upstream \"api\", strip_prefix false)",
                "+ server 127.0.0.1:9003 in upstream `api` (weight 2)",
                "- server 127.0.0.1:9002 in upstream `api`",
            ]
        );
        let back = diff(&config(&new), &config(BASE));
        assert!(
            back.contains(&"- listener `internal`".to_owned()),
            "{back:?}"
        );
        assert!(back.contains(&"- route `v2`".to_owned()), "{back:?}");
    }

    #[test]
    fn a_server_s_new_weight_is_named() {
        let new = BASE.replace(
            "{ addr = \"127.0.0.1:9001\" }",
            "{ addr = \"127.0.0.1:9001\", weight = 3 }",
        );
        assert_eq!(
            diff(&config(BASE), &config(&new)),
            ["~ server 127.0.0.1:9001 in upstream `api`: weight 1 -> 3"]
        );
    }

    #[test]
    fn changes_read_as_config_keys_and_values() {
        let new = BASE.replace("[[listeners]]", "[admin]\nlisten = \"127.0.0.1:9901\"\n[access_log]\npath = \"stdout\"\nformat = \"combined\"\n[[listeners]]")
            + "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"\nprotocol = \"h2\"\n"
            + "[upstreams.health_check]\ninterval = \"2s\"\n";
        let lines = diff(&config(BASE), &config(&new));
        assert_eq!(
            lines,
            [
                "~ admin: listen unset -> \"127.0.0.1:9901\"".to_owned(),
                "~ access_log: path unset -> \"stdout\", format unset -> \"combined\"".to_owned(),
                "~ upstream `api`: balance \"round_robin\" -> \"consistent_hash\", hash_key unset -> \"header:x-user\", protocol \"http1\" -> \"h2\", health_check.path unset -> \"/\", health_check.interval unset -> \"2s\", health_check.timeout unset -> \"2s\", health_check.healthy_threshold unset -> 2, health_check.unhealthy_threshold unset -> 3".to_owned(),
            ]
        );
    }

    #[test]
    fn client_certificates_asked_for_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        std::fs::write(dir.path().join("a.pem"), cert.cert.pem()).expect("write");
        std::fs::write(dir.path().join("a.key"), cert.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).expect("write");
        let load = |text: &str| crate::config::from_str(&dir.path().join("c.toml"), text).unwrap();
        let old = format!(
            "{BASE}[[listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:8443\"\n[listeners.tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n"
        );
        let new =
            format!("{old}client_ca = \"ca.pem\"\nclient_subject_header = \"X-Client-Subject\"\n");
        let ca = dir.path().join("ca.pem");
        assert_eq!(
            diff(&load(&old), &load(&new)),
            [format!(
                "~ listener `tls`: tls.client_ca unset -> \"{}\", tls.client_subject_header unset -> \"x-client-subject\"",
                ca.display()
            )]
        );
    }
}
