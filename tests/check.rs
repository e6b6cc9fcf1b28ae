//! `corral check`: every problem reported as FILE:LINE:COL: reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// The 1-based line and column where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config"));
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Checks `text` and expects it rejected with `reason` at `needle`.
fn expect_rejected(text: &str, needle: &str, reason: &str) {
    let (ok, out, path) = check(text);
    assert!(!ok, "accepted:\n{text}");
    expect_error(text, &out, &path, needle, reason);
}

fn expect_error(text: &str, output: &str, path: &std::path::Path, needle: &str, reason: &str) {
    let (line, col) = position(text, needle);
    let prefix = format!("{}:{line}:{col}: ", path.display());
    let found = output.lines().find(|l| l.starts_with(&prefix));
    let found = found.unwrap_or_else(|| panic!("no error at {prefix} in:\n{output}"));
    assert!(
        found.contains(reason),
        "error at {prefix} does not mention {reason:?}: {found}"
    );
}

#[test]
fn the_shipped_config_is_valid() {
    cli_ok(&[
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/corral.toml"),
    ]);
}

#[test]
fn a_route_to_an_unknown_upstream_names_its_line() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
path_prefix = "/"
upstream = "nope"

[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001" }]
"#;
    expect_rejected(text, "\"nope\"", "unknown upstream `nope` (defined: `api`)");
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let text = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\n";
    let (ok, out, path) = check(text);
    assert!(!ok);
    let prefix = format!("{}:3:", path.display());
    assert!(out.lines().any(|l| l.starts_with(&prefix)), "{out}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[runtime]
workers = 0
shutdown_timeout = "soon"

[[listeners]]
name = "public"
listen = "127.0.0.1:80800"
colour = "blue"

[[listeners]]
name = "public"
listen = "127.0.0.1:8081"
header_timeout = "0s"

[[routes]]
host = "bad host!"
upstream = "api"

[[routes]]
path_prefix = "api"
upstream = "api"

[[upstreams]]
name = "api"
balance = "fastest"
servers = []

[[upstreams]]
name = "api"
hash_key = "header:x-user"
servers = [{ addr = "127.0.0.1:9001", weight = 0 }, { addr = "localhost" }, { addr = "127.0.0.1:9001" }]
"#;
    let (ok, out, path) = check(text);
    assert!(!ok);
    let cases = [
        ("0\nshutdown", "runtime.workers: 0 is out of range"),
        (
            "\"soon\"",
            "runtime.shutdown_timeout: `soon` is not a duration",
        ),
        (
            "\"127.0.0.1:80800\"",
            "listeners.listen: `127.0.0.1:80800` is not an address",
        ),
        ("colour", "unknown field `colour`"),
        (
            "\"public\"\nlisten = \"127.0.0.1:8081\"",
            "the name `public` is defined twice",
        ),
        (
            "\"0s\"",
            "listeners.header_timeout: must be greater than zero",
        ),
        (
            "\"bad host!\"",
            "routes.host: `bad host!` is not a host name",
        ),
        (
            "\"api\"\nupstream = \"api\"\n\n[[upstreams]]",
            "routes.path_prefix: `api` is not a path prefix",
        ),
        ("\"fastest\"", "unknown variant `fastest`"),
        ("[]\n", "upstreams.servers: the list is empty"),
        (
            "\"header:x-user\"",
            "only used with balance = \"consistent_hash\"",
        ),
        ("0 }", "upstreams.servers.weight: 0 is out of range"),
        ("\"localhost\"", "`localhost` is not an address"),
        ("\"127.0.0.1:9001\" }]", "127.0.0.1:9001 is listed twice"),
    ];
    for (needle, reason) in cases {
        expect_error(text, &out, &path, needle, reason);
    }
    // The duplicate upstream name is reported at its second definition.
    let second = text.rfind("name = \"api\"").unwrap() + "name = ".len();
    let line = text[..second].matches('\n').count() + 1;
    assert!(
        out.contains(&format!(
            ":{line}:8: upstream: the name `api` is defined twice"
        )),
        "{out}"
    );
}

#[test]
fn an_unknown_section_is_an_error() {
    let text = "[[listeners]]\nname = \"p\"\nlisten = \"127.0.0.1:1\"\n\n[[server]]\nlisten = 80\n";
    expect_rejected(text, "server]]", "unknown section `server`");
}

#[test]
fn tls_files_that_do_not_exist_are_reported() {
    let text = r#"
[[listeners]]
name = "secure"
listen = "127.0.0.1:8443"
[listeners.tls]
certificates = [{ cert = "missing.pem", key = "missing.key" }]
"#;
    expect_rejected(text, "\"missing.pem\"", "cannot read certificate");
}
