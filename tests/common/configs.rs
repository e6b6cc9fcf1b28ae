//! Config files for tests: one listener in front of one upstream, with
//! the admin endpoint or listener settings added.

use std::net::SocketAddr;
use std::path::Path;

/// The `[runtime]` line of [`simple_config`] that sets the heartbeat timeout.
pub const GENEROUS_HEARTBEAT: &str = "heartbeat_timeout = \"10s\"";

/// A config with one listener `public` on port 0 routing everything to one
/// upstream `app` with `servers`, plus `extra` TOML appended.
///
/// Its heartbeat timeout is generous, so that a worker starved of CPU on a
/// loaded machine is not killed as hung in the middle of an unrelated test;
/// a test of the heartbeat sets its own (replace [`GENEROUS_HEARTBEAT`]).
pub fn simple_config(servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ addr = \"{s}\" }}"))
        .collect();
    format!(
        r#"
[runtime]
workers = 2
shutdown_timeout = "5s"
{GENEROUS_HEARTBEAT}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
upstream = "app"

[[upstreams]]
name = "app"
servers = [{}]
{extra}
"#,
        servers.join(", ")
    )
}

/// [`simple_config`] to `app`, with `settings` added to its listener.
pub fn listener_config(app: SocketAddr, settings: &str) -> String {
    simple_config(&[app], "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{settings}"),
    )
}

/// [`simple_config`] plus the admin endpoint on a free port.
pub fn cluster_config(servers: &[SocketAddr], extra: &str) -> String {
    simple_config(servers, extra).replace(
        "[[listeners]]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]",
    )
}

/// [`cluster_config`] to `app` whose listener speaks TLS with
/// `certificates`, the entries of its TOML array (see `Leaf::entry`).
pub fn tls_cluster_config(app: SocketAddr, certificates: &str) -> String {
    listener_config(
        app,
        &format!("[listeners.tls]\ncertificates = [{certificates}]"),
    )
    .replace(
        "[[listeners]]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]",
    )
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// A config with an access log in a folder the test can remove: workers
/// that start then cannot open it, and exit at once (a crash loop).
pub fn crash_prone(app: SocketAddr) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let extra = format!(
        "[access_log]\npath = \"{}\"\n",
        dir.join("access.log").display()
    );
    (logs, dir, cluster_config(&[app], &extra))
}
