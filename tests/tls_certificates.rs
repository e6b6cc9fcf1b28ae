//! What corral shows of its listeners' certificates:
//! `corral_tls_certificate_expiry_timestamp_seconds` and `/status`'s
//! `certificates` for each certificate of a listener, both following a
//! certificate renewed on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::UNIX_EPOCH;

use common::*;

const EXPIRY: &str = "corral_tls_certificate_expiry_timestamp_seconds";

/// Valid from the first to the second date (`"YYYY-MM-DD"`, midnight UTC).
fn valid(from: &str, until: &str) -> impl FnOnce(&mut rcgen::CertificateParams) {
    let (from, until) = (ymd(from), ymd(until));
    move |params| {
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    }
}

fn ymd(day: &str) -> (i32, u8, u8) {
    let parts: Vec<&str> = day.split('-').collect();
    let [year, month, day] = parts[..] else {
        panic!("{day:?} is no YYYY-MM-DD date");
    };
    (
        year.parse().unwrap(),
        month.parse().unwrap(),
        day.parse().unwrap(),
    )
}

/// Midnight UTC of `day` in Unix seconds, as the gauge has it.
fn unix(day: &str) -> f64 {
    let at = humantime::parse_rfc3339(&format!("{day}T00:00:00Z")).unwrap();
    at.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

/// The expiry gauge's series: (listener, name) and value.
fn expiries(samples: &[Sample]) -> Vec<((String, String), f64)> {
    samples
        .iter()
        .filter(|s| s.name == EXPIRY)
        .map(|s| {
            (
                (s.labels["listener"].clone(), s.labels["name"].clone()),
                s.value,
            )
        })
        .collect()
}

fn series(name: &str, value: &str) -> ((String, String), f64) {
    (("public".to_owned(), name.to_owned()), unix(value))
}

async fn metrics_page(corral: &Corral) -> String {
    let (code, page) = admin_call(corral.admin.unwrap(), http::Method::GET, "/metrics").await;
    assert_eq!(code, http::StatusCode::OK, "{page}");
    page
}

#[tokio::test]
async fn expiry_and_status_show_each_certificate_and_follow_a_renewal() {
    let app = echo("app").await;
    let pki = Pki::new("corral-test-ca");
    let names_a = ["a.example.com", "www.a.example.com"];
    let a = pki.issue_with("a", &names_a, valid("2026-01-01", "2031-05-06"));
    let b = pki.issue_with("b", &["b.example.com"], valid("2026-02-03", "2032-07-08"));
    let config = tls_cluster_config(app.addr, &format!("{}, {}", a.entry(""), b.entry("")));
    let corral = Corral::start(&config).await;

    let page = metrics_page(&corral).await;
    promtool_accepts(&page);
    assert_eq!(
        expiries(&parse_metrics(&page)),
        [
            series("a.example.com", "2031-05-06"),
            series("b.example.com", "2032-07-08")
        ],
        "{page}"
    );
    let status = corral.status().await;
    let path = |p: &std::path::Path| p.display().to_string();
    assert_eq!(
        status["certificates"],
        serde_json::json!([
            {
                "listener": "public",
                "names": names_a,
                "issuer": "CN=corral-test-ca",
                "not_before": "2026-01-01T00:00:00Z",
                "not_after": "2031-05-06T00:00:00Z",
                "source": "file",
                "cert": path(&a.cert_path),
                "key": path(&a.key_path),
            },
            {
                "listener": "public",
                "names": ["b.example.com"],
                "issuer": "CN=corral-test-ca",
                "not_before": "2026-02-03T00:00:00Z",
                "not_after": "2032-07-08T00:00:00Z",
                "source": "file",
                "cert": path(&b.cert_path),
                "key": path(&b.key_path),
            },
        ]),
        "{status:#}"
    );

    // Renewed in place: the file watch reloads, and both follow.
    pki.renew(&a, &names_a, valid("2026-04-01", "2033-09-10"));
    let status = corral
        .wait_status(|s| s["certificates"][0]["not_after"] == "2033-09-10T00:00:00Z")
        .await;
    assert_eq!(status["generation"], 2, "{status:#}");
    assert_eq!(
        status["certificates"][0]["not_before"],
        "2026-04-01T00:00:00Z"
    );
    assert_eq!(
        status["certificates"][1]["not_after"],
        "2032-07-08T00:00:00Z"
    );
    let page = metrics_page(&corral).await;
    promtool_accepts(&page);
    assert_eq!(
        expiries(&parse_metrics(&page)),
        [
            series("a.example.com", "2033-09-10"),
            series("b.example.com", "2032-07-08")
        ],
        "{page}"
    );
}
