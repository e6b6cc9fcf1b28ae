//! Passive health end to end: a server answering 500 is ejected by the
//! worker whose requests it failed, `/status` shows it with its reason and
//! cool-down, it is counted, no request reaches it while it is out, and it
//! is taken back once the cool-down ends; when every server fails, no more
//! than `max_share` of them go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;

/// An upstream named `name` (in `x-backend`) that answers 500 while the
/// returned flag is set, counting the requests it gets.
async fn failing(name: &'static str) -> (Upstream, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let broken = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (broken.clone(), hits.clone());
    let up = upstream(move |_: Request<Incoming>| {
        count.fetch_add(1, Ordering::SeqCst);
        let status = if flag.load(Ordering::SeqCst) {
            500
        } else {
            200
        };
        async move {
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(empty())
                .unwrap()
        }
    })
    .await;
    (up, broken, hits)
}

const EJECT: &str = r#"[upstreams.eject]
consecutive_failures = 3
statuses = [500]
base_time = "1s"
"#;

#[tokio::test]
async fn a_server_answering_500_is_ejected_shown_counted_and_taken_back() {
    let (a, _, _) = failing("a").await;
    let (b, _, _) = failing("b").await;
    let (c, c_broken, c_hits) = failing("c").await;
    c_broken.store(true, Ordering::SeqCst);
    let config =
        cluster_config(&[a.addr, b.addr, c.addr], EJECT).replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    let public = corral.addr("public");

    // Round robin: every third request is c's 500, until its third.
    let mut fives = 0;
    while fives < 3 {
        let reply = get(public, "/", &[]).await;
        fives += usize::from(reply.status == 500);
    }
    let status = corral
        .wait_status(|s| {
            !s["upstreams"][0]["servers"][2]["ejected"]
                .as_array()
                .unwrap()
                .is_empty()
        })
        .await;
    let ejected = &status["upstreams"][0]["servers"][2]["ejected"][0];
    assert_eq!(ejected["slot"], 0, "{status:#}");
    assert_eq!(ejected["reason"], "status", "{status:#}");
    assert!(ejected["until"].as_str().unwrap() >= ejected["since"].as_str().unwrap());
    let metrics = scrape_metrics(&corral).await;
    let c_label = c.addr.to_string();
    assert_eq!(
        metric_sum(
            &metrics,
            "corral_upstream_ejections_total",
            &[
                ("upstream", "app"),
                ("server", &c_label),
                ("reason", "status")
            ]
        ),
        1.0
    );

    // Out: a and b take everything. Once c is fixed and its second is up,
    // it is back in the rotation.
    c_broken.store(false, Ordering::SeqCst);
    let before = c_hits.load(Ordering::SeqCst);
    for _ in 0..12 {
        let reply = get(public, "/", &[]).await;
        assert_eq!(reply.status, 200);
        if c_hits.load(Ordering::SeqCst) > before {
            // Only possible once the cool-down ended.
            break;
        }
        assert_ne!(reply.backend(), "c");
    }
    let mut back = false;
    patiently("c to be taken back", async {
        while !back {
            back = get(public, "/", &[]).await.backend() == "c";
        }
    })
    .await;
    corral.wait_for_log("worker ejected a server").await;
}

#[tokio::test]
async fn when_every_server_fails_no_more_than_max_share_is_ejected() {
    let (a, a_broken, _) = failing("a").await;
    let (b, b_broken, _) = failing("b").await;
    a_broken.store(true, Ordering::SeqCst);
    b_broken.store(true, Ordering::SeqCst);
    let config = cluster_config(&[a.addr, b.addr], &EJECT.replace("\"1s\"", "\"1m\""))
        .replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    let public = corral.addr("public");
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = get(public, "/", &[]).await;
        // Still answered by a server, never "no healthy upstream server".
        assert_eq!(reply.status, 500);
        backends.insert(reply.backend());
    }
    let metrics = scrape_metrics(&corral).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "corral_upstream_ejections_total",
            &[("upstream", "app")]
        ),
        1.0
    );
    let status = corral.status().await;
    let out: usize = status["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ejected"].as_array().unwrap().len())
        .sum();
    assert_eq!(out, 1, "{status:#}");
    assert_eq!(backends.len(), 2, "{backends:?}");
}

#[tokio::test]
async fn a_server_that_resets_is_ejected_while_its_requests_go_elsewhere() {
    let rude = scripted(|_| Wire::bytes(b"").then(Then::Close)).await;
    let (good, _, _) = failing("good").await;
    let config = cluster_config(
        &[rude.addr, good.addr],
        "[upstreams.eject]\nconsecutive_failures = 2\nbase_time = \"1m\"\n",
    )
    .replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    for _ in 0..10 {
        // A GET reset before any byte is retried on the good server.
        let reply = get(corral.addr("public"), "/", &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.backend().as_str()),
            (200, "good")
        );
    }
    let metrics = scrape_metrics(&corral).await;
    let rude_label = rude.addr.to_string();
    assert_eq!(
        metric_sum(
            &metrics,
            "corral_upstream_ejections_total",
            &[("server", &rude_label), ("reason", "reset")]
        ),
        1.0
    );
    // Two resets, then out for the minute: the rest went to the good one.
    assert_eq!(
        metric_sum(
            &metrics,
            "corral_upstream_errors_total",
            &[("server", &rude_label), ("kind", "reset")]
        ),
        2.0
    );
}
