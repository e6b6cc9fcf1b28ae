//! deploy/: the Prometheus config and alert rules pass promtool, the
//! certificate alerts fire when their tests (`tests/prometheus/`) say, and
//! every metric the rules and the Grafana dashboard use is one corral
//! exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

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
