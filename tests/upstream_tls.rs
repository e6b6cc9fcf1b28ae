//! TLS to upstreams: servers verified against a private CA made at test
//! time, over HTTP/1.1 and h2 (chosen by ALPN), a client certificate for a
//! server that demands one, a certificate for another name refused (502,
//! counted, and the health check says why), and `insecure_skip_verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use common::*;

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn a_private_ca_verifies_the_servers_over_http1_and_h2() {
    let pki = Pki::new("test-ca");
    let leaf = pki.issue("backend", &["backend.internal", "127.0.0.1"]);
    let (one, seen) = https_upstream("one", &leaf, None).await;
    let (two, two_seen) = https_upstream("two", &leaf, None).await;
    // `app` names the server; `grpc` leaves it to the address (an IP SAN).
    let extra = format!(
        r#"[upstreams.tls]
ca = "{ca}"
server_name = "backend.internal"

[[routes]]
path_prefix = "/h2/"
upstream = "grpc"

[[upstreams]]
name = "grpc"
protocol = "h2"
servers = [{{ addr = "{two}" }}]
tls = {{ ca = "{ca}" }}
health_check = {{ path = "/", interval = "100ms", unhealthy_threshold = 1, body_contains = "HTTP/2.0" }}
"#,
        ca = path(&pki.ca_path),
        two = two.addr,
    );
    let corral = Corral::start(&cluster_config(&[one.addr], &extra)).await;
    // Health checks speak h2 to it too (a connection each), and pass only
    // if the server saw HTTP/2.
    until("two probes", async || {
        two_seen.connections.load(Ordering::SeqCst) >= 2
    })
    .await;
    let status = corral.status().await;
    assert_eq!(
        status["upstreams"][1]["servers"][0]["state"], "healthy",
        "{status:#}"
    );
    let mut client = H1::connect(corral.addr("public")).await;
    for _ in 0..3 {
        let reply = client.get("/", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "one HTTP/1.1 client-cert=no");
    }
    // Pooled: the session is reused rather than handshaken again.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    let reply = client.get("/h2/x", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "two HTTP/2.0 client-cert=no");
}

#[tokio::test]
async fn a_server_that_demands_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new("test-ca");
    let leaf = pki.issue("backend", &["127.0.0.1"]);
    let client_leaf = pki.issue("corral-client", &["corral.internal"]);
    let (strict, _) = https_upstream("strict", &leaf, Some(&pki)).await;
    let extra = format!(
        r#"[upstreams.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[routes]]
path_prefix = "/anonymous/"
upstream = "anonymous"

[[upstreams]]
name = "anonymous"
servers = [{{ addr = "{addr}" }}]
tls = {{ ca = "{ca}" }}

[[routes]]
path_prefix = "/anonymous-h2/"
upstream = "anonymous-h2"

[[upstreams]]
name = "anonymous-h2"
protocol = "h2"
servers = [{{ addr = "{addr}" }}]
tls = {{ ca = "{ca}" }}

[[routes]]
path_prefix = "/probed-h2/"
upstream = "probed-h2"

[[upstreams]]
name = "probed-h2"
protocol = "h2"
servers = [{{ addr = "{addr}" }}]
tls = {{ ca = "{ca}" }}
health_check = {{ interval = "100ms" }}
"#,
        ca = path(&pki.ca_path),
        cert = path(&client_leaf.cert_path),
        key = path(&client_leaf.key_path),
        addr = strict.addr,
    );
    let corral = Corral::start(&cluster_config(&[strict.addr], &extra)).await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "strict HTTP/1.1 client-cert=yes");

    // Without a certificate the server ends the handshake: under TLS 1.3
    // with an alert after corral's side of it is done, which is still a
    // refused handshake, in HTTP/1.1 and in h2.
    for path in ["/anonymous/", "/anonymous-h2/"] {
        let reply = get(corral.addr("public"), path, &[]).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_eq!(
            reply.text(),
            "502 Bad Gateway: upstream TLS handshake failed\n",
            "{path}"
        );
    }
    let metrics = scrape_metrics(&corral).await;
    for upstream in ["anonymous", "anonymous-h2"] {
        let refused = |kind| {
            metric_sum(
                &metrics,
                "corral_upstream_errors_total",
                &[("upstream", upstream), ("kind", kind)],
            )
        };
        assert_eq!((refused("tls"), refused("reset")), (1.0, 0.0), "{upstream}");
    }
    // A health probe over h2 says why too.
    let status = corral
        .wait_status(|s| s["upstreams"][3]["servers"][0]["state"] == "unhealthy")
        .await;
    let reason = status["upstreams"][3]["servers"][0]["down"]["reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.starts_with("TLS handshake with") && reason.contains("received fatal alert"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_counted_and_shown_in_status() {
    let pki = Pki::new("test-ca");
    let impostor = pki.issue("impostor", &["other.internal"]);
    let (server, seen) = https_upstream("impostor", &impostor, None).await;
    let extra = format!(
        r#"[upstreams.tls]
ca = "{ca}"
server_name = "backend.internal"

[upstreams.health_check]
interval = "100ms"
unhealthy_threshold = 1
"#,
        ca = path(&pki.ca_path),
    );
    let corral = Corral::start(&cluster_config(&[server.addr], &extra)).await;
    let status = corral
        .wait_status(|s| s["upstreams"][0]["servers"][0]["state"] == "unhealthy")
        .await;
    let reason = status["upstreams"][0]["servers"][0]["down"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("TLS handshake") && reason.contains("not valid for name"),
        "{reason}"
    );

    // Down by its check, the server gets no request; taken back by a reload
    // without the check, it is tried and refused.
    let text = cluster_config(
        &[server.addr],
        &format!(
            "[upstreams.tls]\nca = \"{}\"\nserver_name = \"backend.internal\"\n",
            path(&pki.ca_path)
        ),
    );
    corral.write_config(&text);
    let (code, body) = admin_call(corral.admin.unwrap(), http::Method::POST, "/reload").await;
    assert_eq!(code, 200, "{body}");
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.text(),
        "502 Bad Gateway: upstream TLS handshake failed\n"
    );
    let metrics = scrape_metrics(&corral).await;
    assert!(
        metric_sum(
            &metrics,
            "corral_upstream_errors_total",
            &[("upstream", "app"), ("kind", "tls")]
        ) >= 1.0
    );
    // No handshake was ever completed with the impostor.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate_and_check_warns() {
    // A CA corral is never told about.
    let pki = Pki::new("unknown-ca");
    let leaf = pki.issue("backend", &["whatever.example"]);
    let (server, _) = https_upstream("unverified", &leaf, None).await;
    let config = cluster_config(
        &[server.addr],
        "[upstreams.tls]\ninsecure_skip_verify = true\n",
    );
    let (ok, text, _) = check(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: ")
            && text.contains(
                "upstreams.tls.insecure_skip_verify: servers' certificates are not verified"
            ),
        "{text}"
    );
    let corral = Corral::start(&config).await;
    corral.wait_for_log("certificates are not verified").await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "unverified HTTP/1.1 client-cert=no");
}
