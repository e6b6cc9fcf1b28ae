//! DNS discovery end to end, against a DNS server the test runs on
//! loopback: servers follow the answers while a load runs (new addresses
//! get traffic, removed ones stop, no request fails), a failed lookup
//! keeps the last answer and says so, a name never resolved answers 503
//! until it does (and `corral check` warns), one address family failing
//! keeps its servers, a TTL of 0 is refreshed every second, and TLS
//! verifies the name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const NAME: &str = "api.internal";

/// Echo servers named `a`, `b`, ... on 127.0.0.2, 127.0.0.3, ... and one
/// port: the addresses one name can resolve to.
async fn echoes(n: u8) -> (u16, Vec<IpAddr>, CancellationToken) {
    let stop = CancellationToken::new();
    'port: loop {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind(SocketAddr::from(([127, 0, 0, 2 + i], port))).await {
                Ok(l) => listeners.push(l),
                // Taken on that address: another port.
                Err(_) => continue 'port,
            }
        }
        let mut ips = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            ips.push(listener.local_addr().unwrap().ip());
            let name = char::from(b'a' + i as u8).to_string();
            tokio::spawn(corral::echo::serve(listener, name, stop.clone()));
        }
        return (port, ips, stop);
    }
}

fn named_config(dns: &DnsServer, server: &str, extra: &str) -> String {
    cluster_config(&[], extra)
        .replace(
            "servers = []",
            &format!("servers = [{{ addr = \"{server}\" }}]\ndns_refresh = \"1s\""),
        )
        .replace(
            "[[listeners]]",
            &format!(
                "[resolver]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n\n[[listeners]]",
                dns.addr
            ),
        )
}

/// Waits until both workers serve the servers of DNS change number `n`
/// (each takes it as a reload of the same generation).
async fn workers_take(corral: &Corral, n: usize) {
    corral
        .wait_for_logs("upstream servers changed by DNS", n)
        .await;
    corral.wait_for_logs("worker reloaded", 2 * n).await;
}

/// Sends requests on fresh connections until every one of `names` has
/// answered one.
async fn reach_all(addr: SocketAddr, names: &[&str]) {
    patiently("every server to answer", async {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < names.len() {
            let reply = get(addr, "/", &[]).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let backend = reply.backend();
            assert!(names.contains(&backend.as_str()), "{backend}");
            seen.insert(backend);
        }
    })
    .await;
}

/// The backends that answer `n` requests on fresh connections.
async fn backends(addr: SocketAddr, n: usize) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let reply = get(addr, "/", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        seen.insert(reply.backend());
    }
    seen
}

#[tokio::test]
async fn servers_follow_the_answers_without_a_failed_request() {
    let dns = DnsServer::start().await;
    let (port, ips, _stop) = echoes(3).await;
    dns.set(NAME, &ips[..1], 1);
    let corral = Corral::start(&named_config(&dns, &format!("{NAME}:{port}"), "")).await;
    let public = corral.addr("public");
    assert_eq!(backends(public, 4).await, ["a".to_owned()].into());

    let load = Load::start(public, 2, 2);
    load.wait_successes(20).await;
    // A second and third address: traffic within the refresh.
    dns.set(NAME, &ips, 1);
    workers_take(&corral, 1).await;
    load.wait_successes(20).await;
    reach_all(public, &["a", "b", "c"]).await;

    // The first goes: no request fails, and it gets none once the workers
    // have the change.
    dns.set(NAME, &ips[1..], 1);
    workers_take(&corral, 2).await;
    load.wait_successes(20).await;
    let failed = load.finish("while DNS answers changed").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        backends(public, 8).await,
        ["b", "c"].map(String::from).into()
    );

    let status = corral.status().await;
    let dns_status = &status["upstreams"][0]["dns"][0];
    assert_eq!(dns_status["name"], format!("{NAME}:{port}"));
    assert_eq!(
        dns_status["addresses"],
        serde_json::json!(["127.0.0.3", "127.0.0.4"])
    );
    assert!(dns_status["error"].is_null(), "{status:#}");
    assert_eq!(status["generation"], 1, "DNS changes are no reload");
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_answer_and_says_so() {
    let dns = DnsServer::start().await;
    let (port, ips, _stop) = echoes(1).await;
    dns.set(NAME, &ips, 1);
    let corral = Corral::start(&named_config(&dns, &format!("{NAME}:{port}"), "")).await;
    let public = corral.addr("public");
    assert_eq!(backends(public, 2).await, ["a".to_owned()].into());

    dns.fail(true);
    corral
        .wait_for_log("DNS lookup failed; keeping the last answer")
        .await;
    assert_eq!(backends(public, 4).await, ["a".to_owned()].into());
    let status = corral.status().await;
    let error = &status["upstreams"][0]["dns"][0]["error"];
    assert!(error["reason"].as_str().is_some(), "{status:#}");
    assert!(error["since"].as_str().is_some(), "{status:#}");
    let metrics = scrape_metrics(&corral).await;
    let name = format!("{NAME}:{port}");
    assert!(
        metric_sum(
            &metrics,
            "corral_dns_lookups_total",
            &[("name", &name), ("result", "failure")]
        ) >= 1.0
    );

    // A dead nameserver is a failure too; then answers come back.
    dns.fail(false);
    dns.silent(true);
    corral
        .wait_for_logs("DNS lookup failed; keeping the last answer", 2)
        .await;
    dns.silent(false);
    let status = corral
        .wait_status(|s| s["upstreams"][0]["dns"][0]["error"].is_null())
        .await;
    assert_eq!(
        status["upstreams"][0]["dns"][0]["addresses"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(backends(public, 2).await, ["a".to_owned()].into());
}

#[tokio::test]
async fn a_name_never_resolved_answers_503_until_it_does_and_check_warns() {
    let dns = DnsServer::start().await;
    dns.negative_ttl(0);
    let (port, ips, _stop) = echoes(1).await;
    let config = named_config(&dns, &format!("{NAME}:{port}"), "");
    let (ok, text, _) = check(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: ")
            && text.contains(&format!("upstream server {NAME}:{port} does not resolve")),
        "{text}"
    );
    let corral = Corral::start(&config).await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());

    dns.set(NAME, &ips, 1);
    workers_take(&corral, 1).await;
    // Every worker: fresh connections land on either.
    assert_eq!(
        backends(corral.addr("public"), 6).await,
        ["a".to_owned()].into()
    );
}

#[tokio::test]
async fn tls_verifies_the_name_the_server_was_found_by() {
    let dns = DnsServer::start().await;
    let pki = Pki::new("test-ca");
    let leaf = pki.issue("secure", &["secure.internal"]);
    let (server, _) = https_upstream("secure", &leaf, None).await;
    dns.set("secure.internal", &[server.addr.ip()], 30);
    let extra = format!("tls = {{ ca = \"{}\" }}\n", pki.ca_path.display());
    let config = named_config(
        &dns,
        &format!("secure.internal:{}", server.addr.port()),
        &extra,
    );
    let corral = Corral::start(&config).await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "secure HTTP/1.1 client-cert=no");
}

#[tokio::test]
async fn one_family_failing_keeps_its_addresses_while_the_other_changes() {
    let dns = DnsServer::start().await;
    let (port, ips, _stop) = echoes(2).await;
    let v6: IpAddr = "::1".parse().unwrap();
    dns.set(NAME, &[ips[0], v6], 1);
    let corral = Corral::start(&named_config(&dns, &format!("{NAME}:{port}"), "")).await;
    let addresses = |s: &serde_json::Value| s["upstreams"][0]["dns"][0]["addresses"].clone();
    assert_eq!(
        addresses(&corral.status().await),
        serde_json::json!(["127.0.0.2", "::1"])
    );

    // AAAA fails while A moves on: the v6 server stays.
    dns.fail_type(Some(hickory_proto::rr::RecordType::AAAA));
    dns.set(NAME, &[ips[0], ips[1]], 1);
    let status = corral
        .wait_status(|s| addresses(s).to_string().contains("127.0.0.3"))
        .await;
    assert_eq!(
        addresses(&status),
        serde_json::json!(["127.0.0.2", "127.0.0.3", "::1"])
    );
    // Said as a failure nonetheless: those addresses may be stale.
    let reason = status["upstreams"][0]["dns"][0]["error"]["reason"].as_str();
    assert!(
        reason.is_some_and(|r| r.starts_with("AAAA query failed, its last addresses kept")),
        "{status:#}"
    );
    corral
        .wait_for_log("DNS lookup failed; keeping the last answer")
        .await;

    // Answered again, the AAAA answer (none now) decides.
    dns.fail_type(None);
    let status = corral
        .wait_status(|s| !addresses(s).to_string().contains("::1"))
        .await;
    assert_eq!(
        addresses(&status),
        serde_json::json!(["127.0.0.2", "127.0.0.3"])
    );
    assert!(
        status["upstreams"][0]["dns"][0]["error"].is_null(),
        "{status:#}"
    );
}

#[tokio::test]
async fn a_ttl_of_zero_refreshes_at_the_floor_not_at_dns_refresh() {
    let dns = DnsServer::start().await;
    let (port, ips, _stop) = echoes(1).await;
    dns.set(NAME, &ips, 0);
    let config = named_config(&dns, &format!("{NAME}:{port}"), "")
        .replace("dns_refresh = \"1s\"", "dns_refresh = \"1h\"");
    let _corral = Corral::start(&config).await;
    // One lookup (an A and an AAAA query) at start, more a second later.
    let first = dns.queries(NAME);
    dns.wait_queries(NAME, first + 4).await;
}
