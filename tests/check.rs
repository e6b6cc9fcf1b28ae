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

#[test]
fn an_ocsp_file_that_holds_nothing_to_staple_is_an_error_at_its_key() {
    let (dir, cert, key) = certificate_files();
    let d = dir.path();
    std::fs::write(d.join("empty.der"), b"").unwrap();
    std::fs::write(d.join("pem.der"), b"-----BEGIN OCSP RESPONSE-----\n").unwrap();
    // An OCSPResponse whose responseStatus is tryLater (3).
    std::fs::write(d.join("later.der"), [0x30, 0x03, 0x0a, 0x01, 0x03]).unwrap();
    std::fs::create_dir(d.join("folder.der")).unwrap();
    let path = |file: &str| d.join(file).display().to_string();
    let entry = |file: &str| format!("{{ cert = {cert}, key = {key}, ocsp = {:?} }}", path(file));
    let files = [
        "empty.der",
        "pem.der",
        "later.der",
        "folder.der",
        "gone/a.der",
    ];
    let entries: Vec<String> = files.iter().map(|f| entry(f)).collect();
    let text = format!(
        "[[listeners]]\nname = \"secure\"\nlisten = \"127.0.0.1:8443\"\n[listeners.tls]\ncertificates = [\n  {},\n]\n",
        entries.join(",\n  ")
    );
    let at = |file: &str| format!("{:?}", path(file));
    let no_staple = |file: &str, why: &str| {
        let file = path(file);
        format!("listeners.tls.certificates.ocsp: {file} holds no OCSP response to staple: {why}")
    };
    let unreadable = |file: &str, why: &str| {
        let file = path(file);
        format!("listeners.tls.certificates.ocsp: cannot read OCSP response {file}: {why}")
    };
    let problems = [
        (at("empty.der"), no_staple("empty.der", "the file is empty")),
        (
            at("pem.der"),
            no_staple(
                "pem.der",
                "not a DER OCSPResponse (a SEQUENCE starting with its responseStatus)",
            ),
        ),
        (
            at("later.der"),
            no_staple(
                "later.der",
                "its responseStatus is tryLater, not successful: there is nothing to staple",
            ),
        ),
        (
            at("folder.der"),
            unreadable("folder.der", "Is a directory (os error 21)"),
        ),
        (
            at("gone/a.der"),
            unreadable(
                "gone/a.der",
                &format!("its folder {} does not exist", path("gone")),
            ),
        ),
    ];
    let problems: Vec<(&str, &str)> = problems
        .iter()
        .map(|(at, message)| (at.as_str(), message.as_str()))
        .collect();
    expect_exactly(&text, &problems);
}

/// Checks `text` and expects it rejected with exactly `problems` and no other
/// line: each is a message in full and the text it is reported at (where that
/// text first starts). `{dir}` in a message stands for the config's folder.
fn expect_exactly(text: &str, problems: &[(&str, &str)]) {
    let (ok, out, path) = check(text);
    assert!(!ok, "accepted:\n{text}");
    let dir = path.parent().unwrap().display().to_string();
    let mut expected: Vec<String> = problems
        .iter()
        .map(|(needle, message)| {
            let (line, col) = position(text, needle);
            let message = message.replace("{dir}", &dir);
            format!("{}:{line}:{col}: {message}", path.display())
        })
        .collect();
    let mut printed: Vec<&str> = out.lines().collect();
    expected.sort();
    printed.sort();
    assert_eq!(printed, expected, "for:\n{text}");
}

/// A certificate and its key for localhost, written to a folder that lives
/// as long as the returned guard; their paths as TOML would quote them.
fn certificate_files() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let (cert, key) = (quoted(&cert), quoted(&key));
    (dir, cert, key)
}

const LISTENER_KEYS: &str = "expected one of `name`, `listen`, `tls`, `backlog`, `header_timeout`, `keepalive_timeout`, `body_timeout`, `max_request_body`, `max_header_bytes`, `path_encoded_slashes`, `underscores_in_headers`, `trusted_proxies`, `proxy_protocol`, `max_connections`, `redirect_https`, `redirect_https_port`";
const HEALTH_CHECK_KEYS: &str = "expected one of `path`, `interval`, `timeout`, `healthy_threshold`, `unhealthy_threshold`, `statuses`, `host`, `body_contains`";

#[test]
fn every_unknown_key_is_reported_once_at_its_own_line_and_column() {
    let (_dir, cert, key) = certificate_files();
    let text = format!(
        r#"
[runtime]
workrs = 2
cpu_afinity = true

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
colour = "blue"
flavour = "mint"
[listeners.tls]
certificates = [{{ cert = {cert}, key = {key}, comment = "site" }}]
ciphers = "all"
sessions = 10

[[routes]]
upstream = "web"
priority = 1
weighting = 2

[[upstreams]]
name = "web"
servers = [{{ addr = "127.0.0.1:9001" }}, {{ addr = "127.0.0.1:9002", wieght = 2, zone = "a" }}]
[upstreams.health_check]
intervl = "2s"
timout = "1s"
"#
    );
    let runtime = "expected one of `workers`, `shutdown_timeout`, `cpu_affinity`, `heartbeat_timeout`, `upgrade_timeout`";
    let route = "expected one of `name`, `host`, `path_prefix`, `upstream`, `strip_prefix`";
    let unknown = |key: &str, table: &str, expected: &str| {
        format!("{table}: unknown field `{key}`, {expected}")
    };
    let cases = [
        ("workrs", unknown("workrs", "runtime", runtime)),
        ("cpu_afinity", unknown("cpu_afinity", "runtime", runtime)),
        ("colour", unknown("colour", "listeners", LISTENER_KEYS)),
        ("flavour", unknown("flavour", "listeners", LISTENER_KEYS)),
        (
            "comment",
            unknown(
                "comment",
                "listeners.tls.certificates",
                "expected one of `cert`, `key`, `ocsp`",
            ),
        ),
        (
            "ciphers",
            unknown(
                "ciphers",
                "listeners.tls",
                "expected one of `certificates`, `acme`, `session_tickets`, `min_version`, `client_ca`, `client_subject_header`",
            ),
        ),
        (
            "sessions",
            unknown(
                "sessions",
                "listeners.tls",
                "expected one of `certificates`, `acme`, `session_tickets`, `min_version`, `client_ca`, `client_subject_header`",
            ),
        ),
        ("priority", unknown("priority", "routes", route)),
        ("weighting", unknown("weighting", "routes", route)),
        (
            "wieght",
            unknown("wieght", "upstreams.servers", "expected `addr` or `weight`"),
        ),
        (
            "zone",
            unknown("zone", "upstreams.servers", "expected `addr` or `weight`"),
        ),
        (
            "intervl",
            unknown("intervl", "upstreams.health_check", HEALTH_CHECK_KEYS),
        ),
        (
            "timout",
            unknown("timout", "upstreams.health_check", HEALTH_CHECK_KEYS),
        ),
    ];
    let cases: Vec<(&str, &str)> = cases.iter().map(|(k, m)| (*k, m.as_str())).collect();
    expect_exactly(&text, &cases);
}

/// One listener routing to one upstream `app`, whose keys may follow.
const ONE_UPSTREAM: &str = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "app"

[[upstreams]]
name = "app"
servers = [{ addr = "127.0.0.1:9001" }]
"#;

#[test]
fn a_health_check_judged_by_statuses_host_and_text_says_what_is_wrong_with_each() {
    let base = format!("{ONE_UPSTREAM}[upstreams.health_check]\n");
    let cases = [
        (
            "statuses = [200, 99, 600]",
            "99,",
            "upstreams.health_check.statuses: 99 is out of range, expected 100 to 599",
        ),
        (
            "statuses = []",
            "[]",
            "upstreams.health_check.statuses: empty, expected at least one status such as 200",
        ),
        (
            r#"host = "user@api.internal""#,
            r#""user@"#,
            r#"upstreams.health_check.host: `user@api.internal` is not a host, expected a name or address with an optional port, such as "api.internal" or "10.0.0.5:8080""#,
        ),
        (
            r#"host = "api internal""#,
            r#""api "#,
            r#"upstreams.health_check.host: `api internal` is not a host, expected a name or address with an optional port, such as "api.internal" or "10.0.0.5:8080""#,
        ),
        (
            r#"body_contains = """#,
            r#""""#,
            "upstreams.health_check.body_contains: 0 bytes, expected 1 to 1024",
        ),
    ];
    for (line, needle, message) in cases {
        let text = format!("{base}{line}\n");
        if line.starts_with("statuses = [200") {
            // Both out-of-range entries are reported, each at its place.
            let high = "upstreams.health_check.statuses: 600 is out of range, expected 100 to 599";
            expect_exactly(&text, &[(needle, message), ("600]", high)]);
        } else {
            expect_exactly(&text, &[(needle, message)]);
        }
    }
}

#[test]
fn a_retry_budget_outside_0_to_1_a_status_outside_100_to_599_or_no_slow_start_is_refused() {
    let text = format!(
        "{ONE_UPSTREAM}retry_budget = 1.5\nretry_on = [502, 700]\nslow_start = \"0s\"\nmax_in_flight = 0\n"
    );
    expect_exactly(
        &text,
        &[
            (
                "1.5",
                "upstreams.retry_budget: 1.5 is out of range, expected a share from 0 to 1, such as 0.2",
            ),
            (
                "700]",
                "upstreams.retry_on: 700 is out of range, expected 100 to 599",
            ),
            ("\"0s\"", "upstreams.slow_start: must be greater than zero"),
            (
                "0\n",
                "upstreams.max_in_flight: 0 is out of range, expected 1 to 1000000",
            ),
        ],
    );
}

#[test]
fn a_typo_in_a_server_is_the_only_error_not_a_missing_upstream() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "web"

[[upstreams]]
name = "web"
servers = [{ addr = "127.0.0.1:9001", wieght = 2 }]
"#;
    expect_exactly(
        text,
        &[(
            "wieght",
            "upstreams.servers: unknown field `wieght`, expected `addr` or `weight`",
        )],
    );
}

#[test]
fn an_upstream_that_cannot_be_read_is_reported_where_it_is_not_where_it_is_named() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
path_prefix = "/a/"
upstream = "web"

[[routes]]
path_prefix = "/b/"
upstream = "api"

[[routes]]
path_prefix = "/c/"
upstream = "nope"

[[upstreams]]
name = "web"
servers = "127.0.0.1:9001"

[[upstreams]]
name = "api"
servers = [{ weight = 2 }]
"#;
    expect_exactly(
        text,
        &[
            (
                "\"127.0.0.1:9001\"",
                "upstreams.servers: invalid type: string \"127.0.0.1:9001\", expected an array",
            ),
            ("{ weight", "upstreams.servers: missing field `addr`"),
            (
                "\"nope\"",
                "routes.upstream: unknown upstream `nope` (defined: `api`, `web`)",
            ),
        ],
    );
}

#[test]
fn an_upstream_without_a_name_is_reported_once() {
    // Any route might mean the upstream whose name is missing.
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "web"

[[upstreams]]
servers = [{ addr = "127.0.0.1:9001" }]
"#;
    expect_exactly(
        text,
        &[("[[upstreams]]", "upstreams: missing field `name`")],
    );
}

#[test]
fn a_bad_listen_address_does_not_hide_the_listener_s_other_problems() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:99999"
backlog = "big"
max_request_body = "ten megs"
max_header_bytes = 100
"#;
    expect_exactly(
        text,
        &[
            (
                "\"127.0.0.1:99999\"",
                "listeners.listen: `127.0.0.1:99999` is not an address, expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080",
            ),
            (
                "\"big\"",
                "listeners.backlog: invalid type: string \"big\", expected an integer",
            ),
            (
                "\"ten megs\"",
                "listeners.max_request_body: not a size, expected bytes as a number or a string such as \"10 MiB\"",
            ),
            (
                "100",
                "listeners.max_header_bytes: 100 bytes is out of range, expected 8192 to 1048576",
            ),
        ],
    );
}

#[test]
fn every_table_reports_all_its_problems_and_none_that_follow_from_them() {
    let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
[listeners.tls]
certificates = [{ cert = "missing.pem", key = "missing.key" }]

[[routes]]
path_prefix = "api"
upstream = "nope"

[[routes]]
name = "bad name"
host = "bad host!"
upstream = "api"

# Without its host this route would read as the next one.
[[routes]]
host = 5
upstream = "api"

[[routes]]
upstream = "api"

[[upstreams]]
name = "api"
# A hash_key is fine with the balance meant here.
balance = "consistent_hsah"
hash_key = "header:x-user"
servers = [{ addr = "localhost", weight = 0 }]
# Not longer than an interval written right.
[upstreams.health_check]
interval = "often"
timeout = "6s"
"#;
    expect_exactly(
        text,
        &[
            (
                "\"missing.pem\"",
                "listeners.tls: cannot read certificate {dir}/missing.pem: No such file or directory (os error 2)",
            ),
            (
                "\"missing.key\"",
                "listeners.tls: cannot read private key {dir}/missing.key: No such file or directory (os error 2)",
            ),
            (
                "\"api\"\nupstream",
                "routes.path_prefix: `api` is not a path prefix, expected one starting with / and without ? or #",
            ),
            (
                "\"nope\"",
                "routes.upstream: unknown upstream `nope` (defined: `api`)",
            ),
            (
                "\"bad name\"",
                "route: name `bad name` must be non-empty and use only letters, digits, -, _ and .",
            ),
            (
                "\"bad host!\"",
                "routes.host: `bad host!` is not a host name, expected a name such as api.example.com or *.example.com (no port)",
            ),
            (
                "5\n",
                "routes.host: invalid type: integer `5`, expected a string",
            ),
            (
                "\"consistent_hsah\"",
                "upstreams.balance: unknown variant `consistent_hsah`, expected one of `round_robin`, `least_conn`, `random`, `p2c_ewma`, `consistent_hash`",
            ),
            (
                "\"localhost\"",
                "upstreams.servers.addr: `localhost` is not an address, expected IP:PORT or NAME:PORT such as 127.0.0.1:8080, [::1]:8080 or api.internal:8080",
            ),
            (
                "0 }",
                "upstreams.servers.weight: 0 is out of range, expected 1 to 10000",
            ),
            (
                "\"often\"",
                "upstreams.health_check.interval: `often` is not a duration (expected number at 0), expected e.g. \"150ms\", \"2s\" or \"1m\"",
            ),
        ],
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let text = r#"
[runtime]
workers = true
shutdown_timeout = 31

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
header_timeout = 30

[[routes]]
upstream = "api"
strip_prefix = "yes"

[[upstreams]]
name = "api"
servers = [{ addr = "127.0.0.1:9001", weight = "2" }]
[upstreams.health_check]
interval = 7
"#;
    expect_exactly(
        text,
        &[
            (
                "true",
                "runtime.workers: invalid type: boolean `true`, expected an integer or a string",
            ),
            (
                "31",
                "runtime.shutdown_timeout: invalid type: integer `31`, expected a string",
            ),
            (
                "30",
                "listeners.header_timeout: invalid type: integer `30`, expected a string",
            ),
            (
                "\"yes\"",
                "routes.strip_prefix: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "\"2\"",
                "upstreams.servers.weight: invalid type: string \"2\", expected an integer",
            ),
            (
                "7\n",
                "upstreams.health_check.interval: invalid type: integer `7`, expected a string",
            ),
        ],
    );
}
