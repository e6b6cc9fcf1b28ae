//! The books corral keeps: what a reload refused or moved (a taken port, a
//! changed listener address, the reload counters), and metrics that must be
//! exact (body bytes, upstream errors by kind, connections across a killed
//! worker, unmatched requests, in-flight and open-connection gauges).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cluster of two workers with the admin endpoint: listener `public` on
/// `public`, route `app` (`/app/`) to upstream `app` on `app`, then
/// `extra` (whole tables: more listeners, `[access_log]`).
fn config(app: SocketAddr, public: &str, extra: &str) -> String {
    format!(
        r#"
[runtime]
workers = 2
shutdown_timeout = "5s"
heartbeat_timeout = "10s"

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "{public}"

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"

[[upstreams]]
name = "app"
servers = [{{ addr = "{app}" }}]

{extra}
"#
    )
}

/// The access log on stderr: a request's line is written after it is
/// counted, so waiting for the line is waiting for the count.
const ACCESS_LOG: &str = "[access_log]\npath = \"stderr\"\n";

/// Waits until `n` requests to paths starting with `prefix` are logged.
async fn logged(corral: &Corral, prefix: &str, n: usize) {
    corral
        .wait_for_logs(&format!("\"uri\":\"{prefix}"), n)
        .await;
}

/// Scrapes until `ready` holds. For gauges that follow a client's close:
/// corral logs nothing when a connection ends, so there is no event to wait
/// on but the gauge itself.
async fn scrape_until(corral: &Corral, what: &str, ready: impl Fn(&[Sample]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let samples = scrape_metrics(corral).await;
        if ready(&samples) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_reload(corral: &Corral) -> (StatusCode, String) {
    admin_call(corral.admin.unwrap(), Method::POST, "/reload").await
}

// ---- reload ----

#[tokio::test]
async fn a_reload_onto_a_taken_port_is_a_409_and_changes_nothing() {
    let (a, b) = (echo("a").await, echo("b").await);
    // Bound without SO_REUSEPORT, so corral's sockets cannot join it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let corral = Corral::start(&config(a.addr, "127.0.0.1:0", "")).await;
    let public = corral.addr("public");

    // The same file also moves the route to `b`: none of it may apply.
    let second = format!("[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:{port}\"\n");
    corral.write_config(&config(b.addr, "127.0.0.1:0", &second));
    let (code, body) = post_reload(&corral).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");

    let status = corral.status().await;
    assert_eq!(status["generation"], 1, "{status:#}");
    assert_eq!(status["last_reload"]["result"], "failure");
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{status:#}"
    );
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["generation"] == 1),
        "{status:#}"
    );
    for _ in 0..6 {
        assert_eq!(get(public, "/app/x", &[]).await.backend(), "a");
    }
    // corral holds none of the port it could not have.
    assert_eq!(listening_inodes(taken.local_addr().unwrap()).len(), 1);
    drop(taken);
}

#[tokio::test]
async fn reloads_are_counted_once_each_by_result() {
    let app = echo("app").await;
    // The certificate lives outside the config's folder, which corral
    // watches: a renewed or broken certificate changes no file there, so
    // only the POSTs below reload (a file event could add a reload of its
    // own, and the counts would depend on which came first).
    let certs = tempfile::tempdir().unwrap();
    let (pem, key) = (certs.path().join("site.pem"), certs.path().join("site.key"));
    let issue = || {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&pem, cert.cert.pem()).unwrap();
        std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    };
    issue();
    let secure = format!(
        "[[listeners]]\nname = \"secure\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pem.display(),
        key.display()
    );
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", &secure)).await;
    let reloads =
        |s: &[Sample], result| metric_sum(s, "corral_config_reloads_total", &[("result", result)]);
    // Starting is not a reload.
    let start = scrape_metrics(&corral).await;
    assert_eq!(reloads(&start, "success"), 0.0);
    assert_eq!(reloads(&start, "failure"), 0.0);

    issue();
    let (code, body) = post_reload(&corral).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    std::fs::write(&pem, "not a certificate\n").unwrap();
    let (code, body) = post_reload(&corral).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    let samples = scrape_metrics(&corral).await;
    assert_eq!(reloads(&samples, "success"), 1.0);
    assert_eq!(reloads(&samples, "failure"), 1.0);
    assert_eq!(metric_sum(&samples, "corral_config_generation", &[]), 2.0);
    let status = corral.status().await;
    assert_eq!(status["reloads"]["success"], 1, "{status:#}");
    assert_eq!(status["reloads"]["failure"], 1, "{status:#}");
    assert_eq!(status["generation"], 2);
}

#[tokio::test]
async fn a_changed_listener_address_serves_on_the_new_one_and_stops_accepting_on_the_old() {
    let app = echo("app").await;
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", "")).await;
    let old = corral.addr("public");
    let mut open = H1::connect(old).await;
    assert_eq!(open.get("/app/x", &[]).await.status, StatusCode::OK);

    // Held, so that the refused connect below cannot reach another test's
    // listener on a port handed out again.
    let _old_port = hold_port(old);
    // Another loopback address: a port-0 listener keeps its sockets only
    // while its configured address stays the same.
    corral.write_config(&config(app.addr, "127.0.0.2:0", ""));
    let (code, body) = post_reload(&corral).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let ready = corral.wait_ready(2).await;
    let moved = ready.listeners()["public"];
    assert_eq!(moved.ip().to_string(), "127.0.0.2", "{ready:?}");
    for _ in 0..6 {
        assert_eq!(get(moved, "/app/x", &[]).await.status, StatusCode::OK);
    }
    // Workers confirm a reload once they have closed removed sockets.
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old address still accepts"
    );
    assert_eq!(open.get("/app/y", &[]).await.status, StatusCode::OK);
}

// ---- metrics ----

#[tokio::test]
async fn body_bytes_are_counted_exactly_in_both_directions() {
    const ANSWER: usize = 1234;
    let app = upstream(|req: Request<Incoming>| async move {
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(full(vec![b'x'; ANSWER]))
    })
    .await;
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", ACCESS_LOG)).await;
    let public = corral.addr("public");
    let mut client = H1::connect(public).await;
    let uploads = [0, 1, 100, 10_000, 300_000];
    for size in uploads {
        let request = Request::post("/app/upload")
            .header("host", "x")
            .body(full(vec![b'u'; size]))
            .unwrap();
        let reply = read(client.send(request).await.unwrap()).await;
        assert_eq!(reply.body.len(), ANSWER);
    }
    let unrouted = client.get("/elsewhere", &[]).await;
    assert_eq!(unrouted.status, StatusCode::NOT_FOUND);
    logged(&corral, "/app/", uploads.len()).await;
    logged(&corral, "/elsewhere", 1).await;

    let samples = scrape_metrics(&corral).await;
    let app_series = [("route", "app"), ("upstream", "app")];
    assert_eq!(
        metric_sum(&samples, "corral_request_bytes_total", &app_series),
        uploads.iter().sum::<usize>() as f64
    );
    assert_eq!(
        metric_sum(&samples, "corral_response_bytes_total", &app_series),
        (uploads.len() * ANSWER) as f64
    );
    // corral's own answer counts as what the client received.
    assert_eq!(
        metric_sum(
            &samples,
            "corral_response_bytes_total",
            &[("route", "(none)")]
        ),
        unrouted.body.len() as f64
    );
}

/// An upstream on raw TCP: reads each request head, writes `reply` and
/// closes the connection.
async fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_errors_are_counted_exactly_by_kind() {
    // Bound but not listening: connects to it are refused, and no one else
    // can take the port while the socket lives.
    let refusing =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refusing
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let connect = refusing.local_addr().unwrap().as_socket().unwrap();
    let silent = upstream(|_req| async move {
        std::future::pending::<()>().await;
        Response::new(empty())
    })
    .await;
    let reset = raw_upstream(b"").await;
    let protocol = raw_upstream(b"SPDY/9 what is this\r\n\r\n").await;
    // Each kind its own upstream and its own count, so that a request
    // counted under the wrong kind, or twice, shows.
    let cases = [
        ("connect", connect, 1, StatusCode::BAD_GATEWAY),
        ("timeout", silent.addr, 2, StatusCode::GATEWAY_TIMEOUT),
        ("reset", reset, 3, StatusCode::BAD_GATEWAY),
        ("protocol", protocol, 4, StatusCode::BAD_GATEWAY),
    ];
    let mut text = String::from(
        "[runtime]\nworkers = 2\nshutdown_timeout = \"5s\"\nheartbeat_timeout = \"10s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n",
    );
    for (kind, addr, _, _) in &cases {
        text += &format!(
            "\n[[routes]]\nname = \"{kind}\"\npath_prefix = \"/{kind}/\"\nupstream = \"{kind}\"\n\n\
             [[upstreams]]\nname = \"{kind}\"\nservers = [{{ addr = \"{addr}\" }}]\n"
        );
        // Only the silent upstream gets a short wait; the others keep the
        // default, so that a slow machine cannot turn their errors into
        // timeouts.
        if *kind == "timeout" {
            text += "response_timeout = \"300ms\"\n";
        }
    }
    let corral = Corral::start(&text).await;
    let public = corral.addr("public");
    for (kind, _, n, code) in &cases {
        for i in 0..*n {
            let reply = get(public, &format!("/{kind}/{i}"), &[]).await;
            assert_eq!(reply.status, *code, "{kind}: {}", reply.text());
        }
    }
    let samples = scrape_metrics(&corral).await;
    for (upstream, addr, n, _) in &cases {
        let server = addr.to_string();
        for (kind, _, _, _) in &cases {
            let expected = if kind == upstream { *n } else { 0 };
            assert_eq!(
                metric_sum(
                    &samples,
                    "corral_upstream_errors_total",
                    &[("upstream", upstream), ("server", &server), ("kind", kind)]
                ),
                f64::from(expected),
                "upstream {upstream}, kind {kind}"
            );
        }
    }
}

#[tokio::test]
async fn connections_total_keeps_what_a_killed_worker_accepted() {
    let app = echo("app").await;
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", "")).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    let total = |s: &[Sample]| metric_sum(s, "corral_connections_total", &[("listener", "public")]);
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut client = H1::connect(public).await;
        assert_eq!(client.get("/app/x", &[]).await.status, StatusCode::OK);
        open.push(client);
    }
    let samples = scrape_metrics(&corral).await;
    assert_eq!(total(&samples), 8.0);
    // The victim is the worker holding the most of them, so that the test
    // does not depend on how the kernel spread the connections.
    let active = |slot: &str| {
        metric_sum(
            &samples,
            "corral_connections_active",
            &[("listener", "public"), ("worker", slot)],
        )
    };
    assert_eq!(active("0") + active("1"), 8.0);
    let slot = usize::from(active("1") > active("0"));
    assert!(active(&slot.to_string()) >= 4.0);
    let victim = corral.worker_pids().await[slot];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    assert_eq!(total(&scrape_metrics(&corral).await), 8.0);
    corral
        .wait_status(|s| all_ready(s) && s["workers"][slot]["pid"].as_u64() != Some(victim))
        .await;
    drop(open);
    assert_eq!(total(&scrape_metrics(&corral).await), 8.0);
    for _ in 0..4 {
        assert_eq!(get(public, "/app/y", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(total(&scrape_metrics(&corral).await), 12.0);
}

#[tokio::test]
async fn unmatched_requests_are_counted_under_route_none() {
    let app = echo("app").await;
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", ACCESS_LOG)).await;
    let public = corral.addr("public");
    for i in 0..3 {
        let reply = get(public, &format!("/nowhere/{i}"), &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(get(public, "/app/x", &[]).await.status, StatusCode::OK);
    logged(&corral, "/nowhere/", 3).await;
    logged(&corral, "/app/", 1).await;
    let samples = scrape_metrics(&corral).await;
    let none = [("route", "(none)"), ("upstream", "(none)")];
    assert_eq!(
        metric_sum(
            &samples,
            "corral_requests_total",
            &[none[0], none[1], ("code", "404")]
        ),
        3.0
    );
    assert_eq!(metric_sum(&samples, "corral_requests_total", &none), 3.0);
    assert_eq!(
        metric_sum(&samples, "corral_request_duration_seconds_count", &none),
        3.0
    );
    assert_eq!(
        metric_sum(&samples, "corral_requests_total", &[("route", "app")]),
        1.0
    );
    assert_eq!(metric_sum(&samples, "corral_requests_total", &[]), 4.0);
}

#[tokio::test]
async fn the_upstream_in_flight_gauge_counts_a_held_request_and_drops_after() {
    let (slow, arrived, release) = holding().await;
    let corral = Corral::start(&config(slow.addr, "127.0.0.1:0", ACCESS_LOG)).await;
    let public = corral.addr("public");
    let pending = tokio::spawn(async move { get(public, "/app/slow", &[]).await });
    arrived.await.unwrap();
    let server = slow.addr.to_string();
    let series = [("upstream", "app"), ("server", server.as_str())];
    let samples = scrape_metrics(&corral).await;
    assert_eq!(
        metric_sum(&samples, "corral_upstream_in_flight", &series),
        1.0
    );
    // One worker holds it, and says so under its own slot.
    let holders = samples
        .iter()
        .filter(|s| s.name == "corral_upstream_in_flight" && s.value != 0.0)
        .count();
    assert_eq!(holders, 1);
    release.send(()).unwrap();
    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    // corral releases the server before it logs the request.
    logged(&corral, "/app/slow", 1).await;
    let samples = scrape_metrics(&corral).await;
    assert_eq!(
        metric_sum(&samples, "corral_upstream_in_flight", &series),
        0.0
    );
}

#[tokio::test]
async fn the_active_connections_gauge_follows_clients_opening_and_closing() {
    let app = echo("app").await;
    let corral = Corral::start(&config(app.addr, "127.0.0.1:0", "")).await;
    let public = corral.addr("public");
    let active =
        |s: &[Sample]| metric_sum(s, "corral_connections_active", &[("listener", "public")]);
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut client = H1::connect(public).await;
        // Answered, so accepted: the gauge counts it from accept on.
        assert_eq!(client.get("/app/x", &[]).await.status, StatusCode::OK);
        open.push(client);
    }
    assert_eq!(active(&scrape_metrics(&corral).await), 5.0);
    open.truncate(2);
    scrape_until(&corral, "2 open after 3 closed", |s| active(s) == 2.0).await;
    drop(open);
    scrape_until(&corral, "0 open after all closed", |s| active(s) == 0.0).await;
}
