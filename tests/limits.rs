//! `max_in_flight` and `max_connections`: a server with as many requests in
//! flight (or HTTP/1.1 connections) as the limit takes no more from that
//! worker; a request no server has room for waits up to `queue_timeout` for
//! one, then gets a 503, and both are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;

/// One worker, so that one set of counts sees every request.
fn limited(servers: &[std::net::SocketAddr], extra: &str) -> String {
    cluster_config(servers, &format!("max_in_flight = 1\n{extra}"))
        .replace("workers = 2", "workers = 1")
}

fn queued(samples: &[Sample], outcome: &str) -> f64 {
    metric_sum(
        samples,
        "corral_upstream_queued_total",
        &[("upstream", "app"), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn a_request_waits_for_room_and_is_served_when_the_one_in_flight_ends() {
    let (app, arrived, release) = holding().await;
    let corral = Corral::start(&limited(&[app.addr], "queue_timeout = \"60s\"\n")).await;
    let public = corral.addr("public");
    let first = tokio::spawn(async move { get(public, "/held", &[]).await });
    patiently("the first request upstream", arrived)
        .await
        .unwrap();
    // The server has no room: this one waits in the queue.
    let second = tokio::spawn(async move { get(public, "/queued", &[]).await });
    corral.wait_for_log("the request waits for room").await;
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);
    let samples = scrape_metrics(&corral).await;
    assert_eq!(queued(&samples, "served"), 1.0);
    assert_eq!(queued(&samples, "timeout"), 0.0);
}

#[tokio::test]
async fn a_request_no_server_has_room_for_within_queue_timeout_gets_a_503() {
    let (app, arrived, release) = holding().await;
    let corral = Corral::start(&limited(&[app.addr], "queue_timeout = \"200ms\"\n")).await;
    let public = corral.addr("public");
    let first = tokio::spawn(async move { get(public, "/held", &[]).await });
    patiently("the first request upstream", arrived)
        .await
        .unwrap();
    let refused = get(public, "/queued", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.text(),
        "503 Service Unavailable: upstream servers busy\n"
    );
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let samples = scrape_metrics(&corral).await;
    assert_eq!(queued(&samples, "timeout"), 1.0);
    assert_eq!(queued(&samples, "served"), 0.0);
}

#[tokio::test]
async fn a_server_at_its_limit_passes_the_next_request_to_another_with_room() {
    let (held, arrived, release) = holding().await;
    let other = echo("other").await;
    let corral = Corral::start(&limited(&[held.addr, other.addr], "")).await;
    let public = corral.addr("public");
    // One worker's round robin starts at the first server: the held one.
    let first = tokio::spawn(async move { get(public, "/held", &[]).await });
    patiently("the first request upstream", arrived)
        .await
        .unwrap();
    // Round robin would alternate; while the held server has no room,
    // every request goes to the other one, without waiting.
    let mut answered = Vec::new();
    for _ in 0..6 {
        answered.push(get(public, "/", &[]).await.backend());
    }
    assert!(answered.iter().all(|b| b == "other"), "{answered:?}");
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued(&scrape_metrics(&corral).await, "served"), 0.0);
}

#[tokio::test]
async fn max_connections_caps_a_servers_connections_busy_and_idle() {
    use std::sync::{Arc, Mutex};
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((arrived_tx, released))));
    let (app, peers) = upstream_with_peers(move |req: http::Request<hyper::body::Incoming>| {
        let hold = (req.uri().path() == "/held")
            .then(|| gate.lock().unwrap().take())
            .flatten();
        async move {
            if let Some((arrived, released)) = hold {
                arrived.send(()).unwrap();
                let _ = released.await;
            }
            http::Response::new(full("done"))
        }
    })
    .await;
    let config = cluster_config(
        &[app.addr],
        "max_connections = 1\nqueue_timeout = \"60s\"\n",
    )
    .replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    let public = corral.addr("public");
    let first = tokio::spawn(async move { get(public, "/held", &[]).await });
    patiently("the first request upstream", arrived)
        .await
        .unwrap();
    let second = tokio::spawn(async move { get(public, "/queued", &[]).await });
    corral.wait_for_log("the request waits for room").await;
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(get(public, "/", &[]).await.status, StatusCode::OK);
    }
    // One connection carried all seven, one after another.
    assert_eq!(peers.lock().unwrap().len(), 1);
    assert_eq!(queued(&scrape_metrics(&corral).await, "served"), 1.0);
}
