//! Requests sent again to another server: on an answer in `retry_on` and on
//! a connection that broke before any byte of an answer, for idempotent
//! requests without a body, within the upstream's retry budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

/// An upstream named `name` answering every request with `status`, and
/// how many requests it has had.
async fn answering(name: &'static str, status: u16) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let up = upstream(move |_req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(full(format!("{status} from {name}\n")))
                .unwrap()
        }
    })
    .await;
    (up, hits)
}

/// One worker, so that one retry budget sees every request.
fn one_worker(servers: &[std::net::SocketAddr], extra: &str) -> String {
    cluster_config(servers, extra).replace("workers = 2", "workers = 1")
}

fn retries(samples: &[Sample], reason: &str) -> f64 {
    metric_sum(
        samples,
        "corral_upstream_retries_total",
        &[("upstream", "app"), ("reason", reason)],
    )
}

fn exhausted(samples: &[Sample]) -> f64 {
    metric_sum(
        samples,
        "corral_upstream_retry_budget_exhausted_total",
        &[("upstream", "app")],
    )
}

#[tokio::test]
async fn a_get_answered_503_is_answered_by_another_server_and_counted() {
    for protocol in ["http1", "h2"] {
        let (bad, bad_hits) = answering("bad", 503).await;
        let (good, good_hits) = answering("good", 200).await;
        let extra = format!("protocol = \"{protocol}\"\n");
        let corral = Corral::start(&one_worker(&[bad.addr, good.addr], &extra)).await;
        for _ in 0..10 {
            let reply = get(corral.addr("public"), "/", &[]).await;
            assert_eq!(
                (reply.status, reply.backend()),
                (StatusCode::OK, "good".to_owned()),
                "{protocol}"
            );
        }
        let tried_bad = bad_hits.load(Ordering::SeqCst);
        assert!(
            tried_bad > 0,
            "{protocol}: round robin never picked the bad server"
        );
        assert_eq!(good_hits.load(Ordering::SeqCst), 10, "{protocol}");
        let samples = scrape_metrics(&corral).await;
        assert_eq!(retries(&samples, "status"), tried_bad as f64, "{protocol}");
        assert_eq!(retries(&samples, "reset"), 0.0, "{protocol}");
        assert_eq!(exhausted(&samples), 0.0, "{protocol}");
    }
}

#[tokio::test]
async fn a_request_with_a_body_or_a_status_not_in_retry_on_gets_the_first_answer() {
    let (bad, bad_hits) = answering("bad", 503).await;
    let (good, _) = answering("good", 200).await;
    let corral = Corral::start(&one_worker(&[bad.addr, good.addr], "")).await;
    // Round robin alternates: some of these reach the bad server first.
    let mut client = H1::connect(corral.addr("public")).await;
    let mut unavailable = 0;
    for _ in 0..4 {
        let request = Request::post("/")
            .header("host", "x")
            .body(full("a body"))
            .unwrap();
        let reply = read(client.send(request).await.unwrap()).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.backend(), "bad");
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, bad_hits.load(Ordering::SeqCst));
    assert!(unavailable > 0);
    assert_eq!(retries(&scrape_metrics(&corral).await, "status"), 0.0);

    // With `retry_on` empty, a GET's 503 reaches the client too.
    let (bad, bad_hits) = answering("bad", 503).await;
    let (good, _) = answering("good", 200).await;
    let corral = Corral::start(&one_worker(&[bad.addr, good.addr], "retry_on = []\n")).await;
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(get(corral.addr("public"), "/", &[]).await.status);
        }
        out
    };
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(refused, bad_hits.load(Ordering::SeqCst), "{statuses:?}");
    assert!(refused > 0, "{statuses:?}");
}

#[tokio::test]
async fn a_connection_that_breaks_before_any_answer_sends_a_get_to_another_server() {
    // Reads the request, then hangs up without a byte.
    let rude = scripted(|_| Wire::bytes(b"").then(Then::Close)).await;
    let (good, _) = answering("good", 200).await;
    let corral = Corral::start(&one_worker(&[rude.addr, good.addr], "")).await;
    for _ in 0..6 {
        let reply = get(corral.addr("public"), "/", &[]).await;
        assert_eq!(
            (reply.status, reply.backend()),
            (StatusCode::OK, "good".to_owned())
        );
    }
    let reached = rude.requests().len();
    assert!(reached > 0);
    let samples = scrape_metrics(&corral).await;
    assert_eq!(retries(&samples, "reset"), reached as f64);
    // Each is still an error of the server that broke it.
    let resets = metric_sum(
        &samples,
        "corral_upstream_errors_total",
        &[
            ("upstream", "app"),
            ("server", &rude.addr.to_string()),
            ("kind", "reset"),
        ],
    );
    assert_eq!(resets, reached as f64);
}

#[tokio::test]
async fn when_every_server_fails_retries_stay_within_the_budget() {
    let (a, a_hits) = answering("a", 503).await;
    let (b, b_hits) = answering("b", 503).await;
    // No share: only the floor of ten retries in ten seconds.
    let corral = Corral::start(&one_worker(&[a.addr, b.addr], "retry_budget = 0.0\n")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    for _ in 0..50 {
        assert_eq!(
            client.get("/", &[]).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let samples = scrape_metrics(&corral).await;
    let made = retries(&samples, "status");
    assert!(made <= 10.0, "{made} retries");
    // Every request tried once, and only the retries on top.
    let hits = (a_hits.load(Ordering::SeqCst) + b_hits.load(Ordering::SeqCst)) as f64;
    assert_eq!(hits, 50.0 + made);
    assert_eq!(exhausted(&samples), 50.0 - made);
}

/// Connect failures draw on the same budget: with every server refusing,
/// a POST (which only a connect failure moves) is retried within it.
#[tokio::test]
async fn when_every_server_refuses_connect_retries_stay_within_the_budget() {
    let (_a, a) = refusing_addr();
    let (_b, b) = refusing_addr();
    let corral = Corral::start(&one_worker(&[a, b], "retry_budget = 0.0\n")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    for _ in 0..50 {
        let request = Request::post("/")
            .header("host", "app")
            .body(full("x"))
            .unwrap();
        let reply = read(client.send(request).await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    }
    let samples = scrape_metrics(&corral).await;
    let made = retries(&samples, "connect");
    assert!((1.0..=10.0).contains(&made), "{made} retries");
    // Every request wanted its one retry: the budget refused the rest.
    assert_eq!(exhausted(&samples), 50.0 - made);
}
