//! What a reload would change: two validated configs compared by name.
//!
//! Listeners, routes and upstreams are matched by name; servers by address.
//! Each difference is one line: `+` added, `-` removed, `~` changed with the
//! keys that differ, old and new. Used by `corral check --diff` and by the
//! master's reload log.

use std::fmt::Debug;
use std::time::Duration;

use super::{Config, ListenerConfig, RouteConfig, UpstreamConfig};

/// The differences from `old` to `new`, one line each; empty when equal.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    changed(&mut out, "runtime".into(), &runtime(old), &runtime(new));
    let admin = |c: &Config| {
        vec![(
            "admin.listen",
            c.admin
                .as_ref()
                .map(|a| a.listen.to_string())
                .unwrap_or_else(|| "none".into()),
        )]
    };
    changed(&mut out, "admin".into(), &admin(old), &admin(new));
    let log = |c: &Config| {
        vec![(
            "access_log",
            c.access_log.as_ref().map_or("off".into(), text),
        )]
    };
    changed(&mut out, "access_log".into(), &log(old), &log(new));
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
    for u in new.upstreams.iter() {
        if let Some(before) = old.upstreams.iter().find(|o| o.name == u.name) {
            servers(&mut out, before, u);
        }
    }
    out
}

type Fields = Vec<(&'static str, String)>;

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

fn servers(out: &mut Vec<String>, old: &UpstreamConfig, new: &UpstreamConfig) {
    for s in &new.servers {
        match old.servers.iter().find(|o| o.addr == s.addr) {
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
    for o in old
        .servers
        .iter()
        .filter(|o| !new.servers.iter().any(|s| s.addr == o.addr))
    {
        out.push(format!("- server {} in upstream `{}`", o.addr, new.name));
    }
}

fn summary(fields: &Fields) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(d: &impl Debug) -> String {
    format!("{d:?}")
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn runtime(c: &Config) -> Fields {
    let r = &c.runtime;
    vec![
        ("workers", r.workers.to_string()),
        ("shutdown_timeout", duration(r.shutdown_timeout)),
        ("cpu_affinity", r.cpu_affinity.to_string()),
        ("heartbeat_timeout", duration(r.heartbeat_timeout)),
    ]
}

fn listener(l: &ListenerConfig) -> Fields {
    vec![
        ("listen", l.addr.to_string()),
        (
            "tls",
            l.tls
                .as_ref()
                .map_or("none".into(), |t| text(&t.certificates)),
        ),
        ("backlog", l.backlog.to_string()),
        ("header_timeout", duration(l.header_timeout)),
        ("keepalive_timeout", duration(l.keepalive_timeout)),
        ("body_timeout", duration(l.body_timeout)),
        (
            "max_request_body",
            l.max_request_body
                .map_or("unlimited".into(), |b| b.to_string()),
        ),
        ("max_header_bytes", l.max_header_bytes.to_string()),
    ]
}

fn route(r: &RouteConfig) -> Fields {
    vec![
        (
            "host",
            r.host.as_ref().map_or("any".into(), ToString::to_string),
        ),
        ("path_prefix", r.path_prefix.clone()),
        ("upstream", r.upstream.clone()),
        ("strip_prefix", r.strip_prefix.to_string()),
    ]
}

fn upstream(u: &UpstreamConfig) -> Fields {
    vec![
        ("balance", text(&u.balance)),
        ("protocol", text(&u.protocol)),
        ("servers", u.servers.len().to_string()),
        ("connect_timeout", duration(u.connect_timeout)),
        ("response_timeout", duration(u.response_timeout)),
        ("idle_timeout", duration(u.idle_timeout)),
        ("max_idle_per_server", u.max_idle_per_server.to_string()),
        ("fail_timeout", duration(u.fail_timeout)),
        (
            "health_check",
            u.health_check.as_ref().map_or("none".into(), text),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::from_str(Path::new("t.toml"), text).unwrap()
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
                "~ listener `public`: listen 127.0.0.1:8080 -> 127.0.0.1:8081",
                "+ listener `internal` (listen 127.0.0.1:9000, tls none, backlog 1024, header_timeout 10s, keepalive_timeout 1m, body_timeout 1m, max_request_body unlimited, max_header_bytes 65536)",
                "+ route `v2` (host any, path_prefix /v2/, upstream api, strip_prefix false)",
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
}
