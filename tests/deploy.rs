//! deploy/: the Prometheus config and alert rules pass promtool, the
//! certificate alerts fire when their tests (`tests/prometheus/`) say, and
//! every metric the rules and the Grafana dashboard use is one corral
//! exports; the systemd unit passes `systemd-analyze verify` and
//! `security`, and its user is the one its sysusers.d file makes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is needed (Debian package `prometheus`)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    promtool(&[
        "check",
        "config",
        &format!("{DEPLOY}/prometheus/prometheus.yml"),
    ]);
    promtool(&[
        "check",
        "rules",
        &format!("{DEPLOY}/prometheus/corral-alerts.yml"),
    ]);
    promtool(&[
        "test",
        "rules",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/prometheus/certificate-alerts.yml"
        ),
    ]);
}

/// `corral_*` names in a text, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("corral_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name.clone(), |n, s| {
                n.strip_suffix(s).map_or(n.clone(), str::to_owned)
            });
        names.insert(base);
    }
    names
}

#[tokio::test]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let app = echo("app").await;
    // A TLS listener beside the plain one, for the certificate metrics.
    let pki = Pki::new("deploy-ca");
    let leaf = pki.issue("site", &["localhost"]);
    let secure = format!(
        "[[listeners]]\nname = \"secure\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{}]\n\n[[routes]]",
        leaf.entry("")
    );
    let config = cluster_config(&[app.addr], "").replace("[[routes]]", &secure);
    let corral = Corral::start(&config).await;
    get(corral.addr("public"), "/", &[]).await;
    let (_, page) = admin_call(corral.admin.unwrap(), http::Method::GET, "/metrics").await;
    let exported = metric_names(&page);
    for file in [
        "prometheus/corral-alerts.yml",
        "grafana/corral-dashboard.json",
    ] {
        let used = metric_names(&std::fs::read_to_string(format!("{DEPLOY}/{file}")).unwrap());
        assert!(!used.is_empty());
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics corral does not export: {unknown:?}"
        );
    }
}

/// The unit's text.
fn unit_text() -> String {
    std::fs::read_to_string(format!("{DEPLOY}/systemd/corral.service")).unwrap()
}

/// The unit's settings, `KEY=VALUE` lines outside comments, in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn setting(text: &str, key: &str) -> String {
    let values: Vec<String> = settings(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "{key}= should be set once: {values:?}");
    values[0].clone()
}

/// The unit as it would be installed, in a folder of its own, with the
/// binary under test where it names /usr/local/bin/corral: `systemd-analyze
/// verify` checks that each command it runs is an executable file.
fn installed_unit() -> (tempfile::TempDir, PathBuf) {
    let text = unit_text();
    let installed = "/usr/local/bin/corral";
    assert!(
        setting(&text, "ExecStart").starts_with(&format!("{installed} run --config ")),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("corral.service");
    std::fs::write(&unit, text.replace(installed, BIN)).unwrap();
    (dir, unit)
}

/// Runs systemd-analyze, which the tests need (it is in Debian's package
/// `systemd`; scripts/test installs it).
fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is needed (Debian package `systemd`)")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let (_dir, unit) = installed_unit();
    let out = systemd_analyze(&["verify"], &unit);
    // A setting systemd cannot parse (or does not know, as an older
    // systemd a newer one's) is only a warning, and verify exits 0: it
    // must say nothing at all.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify ({}):\n{}",
        out.status,
        said(&out)
    );
}

#[test]
fn the_systemd_unit_is_hardened() {
    let (_dir, unit) = installed_unit();
    // `security` scores exposure from 0 (locked down) to 10, and exits
    // non-zero above the threshold, in tenths: at most 2.0, "OK".
    let out = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &unit);
    assert!(
        out.status.success(),
        "systemd-analyze security ({}):\n{}",
        out.status,
        said(&out)
    );
}

#[test]
fn the_systemd_unit_fits_how_corral_starts_reloads_and_stops() {
    let text = unit_text();
    assert_eq!(setting(&text, "Type"), "notify");
    assert_eq!(setting(&text, "NotifyAccess"), "main");
    assert_eq!(setting(&text, "KillMode"), "mixed");
    assert_eq!(
        setting(&text, "ExecReload"),
        "/usr/local/bin/corral reload",
        "a reload that waits for the outcome"
    );
    let duration = |key: &str| humantime::parse_duration(&setting(&text, key)).unwrap();
    assert!(duration("WatchdogSec") > Duration::ZERO);
    // systemd must let the master drain for the whole shutdown_timeout.
    let minimal = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
                   [[routes]]\nupstream = \"app\"\n\n\
                   [[upstreams]]\nname = \"app\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n";
    let plan = corral::config::from_str(Path::new("corral.toml"), minimal).unwrap();
    let drain = plan.runtime.shutdown_timeout;
    assert!(
        duration("TimeoutStopSec") > drain,
        "TimeoutStopSec= within the default shutdown_timeout, {drain:?}"
    );
}

#[test]
fn the_sysusers_file_makes_the_units_user() {
    let text = unit_text();
    let user = setting(&text, "User");
    assert_eq!(setting(&text, "Group"), user);
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(format!("{DEPLOY}/systemd/corral.sysusers"))
        .output()
        .expect("systemd-sysusers is needed (Debian package `systemd`)");
    assert!(out.status.success(), "systemd-sysusers: {}", said(&out));
    for file in ["passwd", "group"] {
        let entries = std::fs::read_to_string(root.path().join("etc").join(file)).unwrap();
        assert!(
            entries.lines().any(|l| l.starts_with(&format!("{user}:"))),
            "no {user} in {file}: {entries}"
        );
    }
}
