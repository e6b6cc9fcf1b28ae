//! `/metrics` for the whole cluster: exact, never going backwards, bounded
//! labels, valid for promtool; `/status` in-flight counts; access logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use common::*;
use http::{Method, Request, Response, StatusCode};
use nix::sys::signal::Signal;

fn config(app: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[runtime]
workers = 2
shutdown_timeout = "5s"
{GENEROUS_HEARTBEAT}

[admin]
listen = "127.0.0.1:0"
{extra}
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"

[[upstreams]]
name = "app"
servers = [{{ addr = "{app}" }}]
"#
    )
}

fn sum(samples: &[Sample], name: &str, filter: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter(&s.labels))
        .map(|s| s.value)
        .sum()
}

async fn scrape(corral: &Corral) -> String {
    let (code, page) = admin_call(corral.admin.unwrap(), Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    page
}

/// Sends `n` GETs of `path` over `connections` parallel keep-alive connections.
async fn requests(addr: SocketAddr, path: &str, n: usize, connections: usize) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let path = path.to_owned();
        let share = n / connections + usize::from(c < n % connections);
        tasks.push(tokio::spawn(async move {
            let mut client = H1::connect(addr).await;
            for _ in 0..share {
                client.get(&path, &[]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn app() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let status = if req.uri().path().ends_with("/fail") {
            500
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(full("answer"))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_workers_and_never_go_back() {
    let app = app().await;
    let corral = Corral::start(&config(app.addr, "")).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    requests(public, "/app/ok", 850, 10).await;
    requests(public, "/nothing/here", 100, 10).await;
    requests(public, "/app/fail", 50, 10).await;

    let page = scrape(&corral).await;
    let samples = parse_metrics(&page);
    let code = |c: &'static str| move |l: &BTreeMap<String, String>| l["code"] == c;
    assert_eq!(
        sum(&samples, "corral_requests_total", |_| true),
        1000.0,
        "{page}"
    );
    assert_eq!(sum(&samples, "corral_requests_total", code("200")), 850.0);
    assert_eq!(sum(&samples, "corral_requests_total", code("404")), 100.0);
    assert_eq!(sum(&samples, "corral_requests_total", code("500")), 50.0);
    assert_eq!(
        sum(&samples, "corral_request_duration_seconds_count", |_| true),
        1000.0
    );
    assert_eq!(sum(&samples, "corral_workers", |_| true), 2.0);
    // Both workers served: each has its own connection gauge series.
    let workers: HashSet<&String> = samples
        .iter()
        .filter(|s| s.name == "corral_connections_active")
        .map(|s| &s.labels["worker"])
        .collect();
    assert_eq!(workers.len(), 2);
    for name in [
        "corral_requests_total",
        "corral_request_duration_seconds_bucket",
        "corral_upstream_errors_total",
        "corral_upstream_server_healthy",
        "corral_connections_active",
        "corral_config_reloads_total",
        "corral_config_generation",
        "corral_workers",
        "corral_worker_restarts_total",
        "corral_request_bytes_total",
        "corral_response_bytes_total",
        "corral_config_reload_duration_seconds_count",
        "corral_accept_pauses_total",
        "corral_connections_shed_total",
        "corral_request_heads_bytes",
        "corral_build_info",
    ] {
        assert!(
            samples.iter().any(|s| s.name == name),
            "{name} missing from\n{page}"
        );
    }
    promtool_accepts(&page);

    let victim = corral.worker_pids().await[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let after_kill = parse_metrics(&scrape(&corral).await);
    assert_eq!(sum(&after_kill, "corral_requests_total", |_| true), 1000.0);
    corral
        .wait_status(|s| all_ready(s) && s["workers"][0]["pid"].as_u64() != Some(victim))
        .await;
    requests(public, "/app/ok", 100, 10).await;
    let page = scrape(&corral).await;
    let samples = parse_metrics(&page);
    assert_eq!(
        sum(&samples, "corral_requests_total", |_| true),
        1100.0,
        "{page}"
    );
    assert_eq!(
        sum(&samples, "corral_request_duration_seconds_count", |_| true),
        1100.0
    );
    assert_eq!(sum(&samples, "corral_worker_restarts_total", |_| true), 1.0);
    promtool_accepts(&page);
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let (_refusing, dead) = refusing_addr();
    let corral = Corral::start(&config(dead, "")).await;
    for _ in 0..3 {
        assert_eq!(
            get(corral.addr("public"), "/app/x", &[]).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let samples = parse_metrics(&scrape(&corral).await);
    let kind = |k: &'static str| {
        move |l: &BTreeMap<String, String>| l["kind"] == k && l["upstream"] == "app"
    };
    assert_eq!(
        sum(&samples, "corral_upstream_errors_total", kind("connect")),
        3.0
    );
    assert_eq!(
        sum(&samples, "corral_upstream_errors_total", kind("timeout")),
        0.0
    );
    assert_eq!(
        sum(&samples, "corral_requests_total", |l| l["code"] == "502"),
        3.0
    );
}

#[tokio::test]
async fn labels_never_come_from_request_data() {
    let app = app().await;
    let corral = Corral::start(&config(app.addr, "")).await;
    let public = corral.addr("public");
    get(public, "/app/a", &[]).await;
    get(public, "/elsewhere", &[]).await;
    let series = |page: &str| {
        parse_metrics(page)
            .into_iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect::<HashSet<_>>()
    };
    let before = series(&scrape(&corral).await);
    for i in 0..50 {
        get(
            public,
            &format!("/app/{i}?q={i}"),
            &[("host", &format!("h{i}.example.com"))],
        )
        .await;
        get(
            public,
            &format!("/other/{i}"),
            &[("host", &format!("x{i}.test"))],
        )
        .await;
    }
    let after = series(&scrape(&corral).await);
    assert_eq!(before, after, "new series from request data");
}

#[tokio::test]
async fn status_counts_requests_in_flight_per_server() {
    let (slow, arrived_rx, release_tx) = holding().await;
    // The access log on stderr says when the request is over; corral
    // releases the server before it logs.
    let log = "[access_log]\npath = \"stderr\"\n";
    let corral = Corral::start(&config(slow.addr, log)).await;
    let public = corral.addr("public");
    let pending = tokio::spawn(async move { get(public, "/app/slow", &[]).await });
    patiently("the request to arrive", arrived_rx)
        .await
        .unwrap();
    let status = corral.status().await;
    assert_eq!(status["upstreams"][0]["servers"][0]["in_flight"], 1);
    release_tx.send(()).unwrap();
    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    corral.wait_for_log("\"uri\":\"/app/slow\"").await;
    let status = corral.status().await;
    assert_eq!(status["upstreams"][0]["servers"][0]["in_flight"], 0);
}

#[tokio::test]
async fn access_log_lines_are_written_and_the_file_reopens_on_sigusr1() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let section = format!(
        "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
        log.display()
    );
    let corral = Corral::start(&config(app.addr, &section)).await;
    let public = corral.addr("public");
    for i in 0..5 {
        get(public, &format!("/app/{i}"), &[("user-agent", "tester/1")]).await;
    }
    let lines = wait_for_lines(&log, 5).await;
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "app");
    assert_eq!(first["upstream"], "app");
    assert_eq!(first["server"], app.addr.to_string());
    assert_eq!(first["user_agent"], "tester/1");
    assert!(first["uri"].as_str().unwrap().starts_with("/app/"));

    // What logrotate does: move the file, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    corral.signal(Signal::SIGUSR1);
    // Both workers flush what they had to the moved file and reopen.
    corral.wait_for_logs("access log reopened", 2).await;
    assert_eq!(read_lines(&rotated).len(), 5);
    get(public, "/app/after", &[]).await;
    let lines = wait_for_lines(&log, 1).await;
    assert!(lines[0].contains("/app/after"), "{lines:?}");
}
