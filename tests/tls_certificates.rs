//! What corral shows of its listeners' certificates and the OCSP responses
//! it staples: `corral_tls_certificate_expiry_timestamp_seconds` and
//! `/status`'s `certificates` for each certificate of a listener, both
//! following a certificate renewed on disk; an `ocsp` file's response
//! stapled to TLS 1.3 and 1.2 handshakes as `openssl s_client -status`
//! reads it; and an `ocsp` file not there yet, which `corral check` warns
//! of and which is stapled once it is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
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
                "ocsp": null,
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
                "ocsp": null,
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

/// `openssl s_client -status` to listener `public` for a.example.com with
/// `version`; what it printed, the request answered.
async fn status_request(addr: SocketAddr, version: &str) -> String {
    let args = ["-status", "-servername", "a.example.com", version];
    let request = b"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    let printed = s_client(addr, &args, request).await;
    assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
    printed
}

/// Asserts that `printed` shows the response in the file `response`, as
/// stapled: successful, the certificate good, and produced when the file's
/// was (to the second, which tells two responses apart).
fn shows_staple(printed: &str, response: &std::path::Path) {
    let text = ocsp_text(response);
    let produced = text
        .lines()
        .find(|l| l.trim_start().starts_with("Produced At:"))
        .unwrap_or_else(|| panic!("no Produced At in {text}"));
    for line in [
        "OCSP Response Status: successful (0x0)",
        "Cert Status: good",
        produced.trim(),
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
}

#[tokio::test]
async fn an_ocsp_response_is_stapled_to_tls13_and_tls12_handshakes() {
    let app = echo("app").await;
    let pki = Pki::new("ocsp-ca");
    let a = pki.issue("a", &["a.example.com"]);
    let response = pki.dir.path().join("a.ocsp.der");
    ocsp_response(&pki, &a, &response);
    let ocsp = format!(", ocsp = {:?}", response.display().to_string());
    let config = tls_cluster_config(app.addr, &a.entry(&ocsp));
    let (ok, text, _) = check(&config);
    assert!(ok && !text.contains("warning"), "{text}");
    let corral = Corral::start(&config).await;

    for version in ["-tls1_3", "-tls1_2"] {
        let printed = status_request(corral.addr("public"), version).await;
        shows_staple(&printed, &response);
    }
    let status = corral.status().await;
    assert_eq!(
        status["certificates"][0]["ocsp"],
        serde_json::json!({ "path": response.display().to_string(), "stapled": true }),
        "{status:#}"
    );
}

#[tokio::test]
async fn an_ocsp_file_not_there_yet_is_warned_of_and_stapled_once_written() {
    let app = echo("app").await;
    let pki = Pki::new("ocsp-ca");
    let a = pki.issue("a", &["a.example.com"]);
    let response = pki.dir.path().join("a.ocsp.der");
    let ocsp = format!(", ocsp = {:?}", response.display().to_string());
    let config = tls_cluster_config(app.addr, &a.entry(&ocsp));
    let (ok, text, _) = check(&config);
    assert!(ok, "{text}");
    let warning = format!(
        "listeners.tls.certificates.ocsp: {} does not exist (yet); the certificate is served without a stapled OCSP response until it does",
        response.display()
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning: ") && l.ends_with(&warning)),
        "{text}"
    );
    let corral = Corral::start(&config).await;
    let printed = status_request(corral.addr("public"), "-tls1_3").await;
    assert!(
        printed.contains("OCSP response: no response sent"),
        "{printed}"
    );
    let stapled = |s: &serde_json::Value| s["certificates"][0]["ocsp"]["stapled"].clone();
    assert_eq!(stapled(&corral.status().await), false);

    // Written whole and renamed into place, as a fetcher should.
    let fetched = pki.dir.path().join("fetched.der");
    ocsp_response(&pki, &a, &fetched);
    std::fs::rename(&fetched, &response).unwrap();
    corral.wait_status(|s| stapled(s) == true).await;
    let printed = status_request(corral.addr("public"), "-tls1_3").await;
    shows_staple(&printed, &response);
}
