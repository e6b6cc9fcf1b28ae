//! `[reload_guard]`: a reload that validates but sends every request to a
//! dead upstream is rolled back to the generation before within its
//! window, said in `/status` and counted; the bad file stays, and a later
//! edit of it reloads as usual.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::*;

const GUARD: &str = "[reload_guard]\nwindow = \"30s\"\nmax_error_ratio = 0.5\nmin_requests = 10\n";

/// An address nothing listens on: connections to it are refused.
fn dead() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn a_reload_that_breaks_traffic_is_rolled_back_and_a_later_edit_reloads() {
    let (app, next) = (echo("app").await, echo("next").await);
    let corral = Corral::start(&cluster_config(&[app.addr], GUARD)).await;
    let public = corral.addr("public");
    for _ in 0..5 {
        assert_eq!(get(public, "/", &[]).await.status, 200);
    }

    // Valid, but every request now meets a refused connection: a 502.
    let broken = cluster_config(&[dead()], GUARD);
    corral.write_config(&broken);
    corral.wait_status(|s| reloaded_to(s, 2)).await;
    for _ in 0..10 {
        assert_eq!(get(public, "/", &[]).await.status, 502);
    }
    let status = corral
        .wait_status(|s| reloaded_to(s, 3) && s["last_reload"]["rolled_back"] == true)
        .await;
    let record = &status["last_reload"];
    assert_eq!(record["trigger"], "reload guard", "{status}");
    assert_eq!(record["rollback"]["from_generation"], 2, "{status}");
    assert!(
        record["rollback"]["error_ratio"].as_f64().unwrap() > 0.5,
        "{status}"
    );
    assert_eq!(get(public, "/", &[]).await.status, 200);
    let samples = scrape_metrics(&corral).await;
    assert_eq!(
        metric_sum(&samples, "corral_config_rollbacks_total", &[]),
        1.0
    );
    // The bad file is left for the operator.
    assert_eq!(
        std::fs::read_to_string(&corral.config_path).unwrap(),
        broken
    );

    // An edit of the file reloads as usual, and is judged in its turn.
    corral.write_config(&cluster_config(&[next.addr], GUARD));
    let status = corral.wait_status(|s| reloaded_to(s, 4)).await;
    assert_eq!(status["last_reload"]["rolled_back"], false, "{status}");
    let reply = get(public, "/", &[]).await;
    assert_eq!(reply.headers["x-backend"], "next");
}

#[tokio::test]
async fn a_reload_that_answers_as_well_as_before_is_kept() {
    let (app, next) = (echo("app").await, echo("next").await);
    let corral = Corral::start(&cluster_config(
        &[app.addr],
        GUARD.replace("30s", "2s").as_str(),
    ))
    .await;
    corral.write_config(&cluster_config(&[next.addr], &GUARD.replace("30s", "2s")));
    corral.wait_status(|s| reloaded_to(s, 2)).await;
    for _ in 0..20 {
        assert_eq!(get(corral.addr("public"), "/", &[]).await.status, 200);
    }
    corral
        .wait_for_log("reload guard: the generation answered well enough")
        .await;
    assert_eq!(corral.status().await["generation"], 2);
}

#[test]
fn check_refuses_a_guard_it_could_not_apply() {
    let app: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let bad = "[reload_guard]\nwindow = \"500ms\"\nmax_error_ratio = 1.5\nmin_requests = 0\n";
    let (ok, out, _) = check(&simple_config(&[app], bad));
    assert!(!ok, "{out}");
    for why in [
        "reload_guard.window: `500ms` is too short, expected at least 2s",
        "reload_guard.max_error_ratio: 1.5 is out of range",
        "reload_guard.min_requests",
    ] {
        assert!(out.contains(why), "{why}\n{out}");
    }
}
