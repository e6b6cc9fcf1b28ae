//! Upstreams that misbehave: what the client gets, and what is never retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw TCP upstream that reads `bytes` bytes, answers `reply`, and closes.
async fn raw_upstream(bytes: usize, reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; bytes];
                let _ = stream.read_exact(&mut buf).await;
                let _ = stream.write_all(reply).await;
                // Dropping with unread data resets the connection.
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_request_whose_body_started_streaming_is_never_retried() {
    let breaks_midway = raw_upstream(2048, b"").await;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let healthy = upstream(move |req: Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = req.into_body().collect().await;
            Response::new(empty())
        }
    })
    .await;
    // Round robin sends the first request to the first server.
    let corral = Corral::start(&simple_config(&[breaks_midway, healthy.addr], "")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let chunks =
        (0..64).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))));
    let request = Request::post("/upload")
        .header("host", "x")
        .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        .unwrap();
    let status = match client.send(request).await {
        Ok(response) => response.status(),
        // corral may close the connection while the client is still sending.
        Err(_) => StatusCode::BAD_GATEWAY,
    };
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the upload was replayed on another server"
    );
}

#[tokio::test]
async fn garbage_from_the_upstream_is_a_502() {
    let liar = raw_upstream(16, b"HELLO THERE\r\n\r\n").await;
    let corral = Corral::start(&simple_config(&[liar], "")).await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.text(),
        "502 Bad Gateway: invalid response from upstream\n"
    );
}

#[tokio::test]
async fn an_upstream_that_hangs_up_without_answering_is_a_502() {
    let rude = raw_upstream(16, b"").await;
    let corral = Corral::start(&simple_config(&[rude], "")).await;
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn pooled_connections_are_reused_across_requests() {
    let (app, peers) = upstream_with_peers(|_| async { Response::new(full("ok")) }).await;
    let corral =
        Corral::start(&simple_config(&[app.addr], "").replace("workers = 2", "workers = 1")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    for _ in 0..20 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    let connections = peers.lock().unwrap().len();
    assert!(
        connections <= 2,
        "{connections} upstream connections for 20 sequential requests"
    );
}

/// What corral counted of `kind` against the one server of `app`.
async fn upstream_errors(corral: &Corral, kind: &str) -> f64 {
    let metrics = scrape_metrics(corral).await;
    metric_sum(
        &metrics,
        "corral_upstream_errors_total",
        &[("upstream", "app"), ("kind", kind)],
    )
}

/// A response body that goes silent for the upstream's `body_timeout` is
/// cut there and counted as a timeout; one that pauses for less arrives
/// whole; over HTTP/1.1 and h2 upstreams. (On the real clock: the paused
/// one is in tests/timeouts.rs, for HTTP/1.1.)
#[tokio::test]
async fn a_response_body_that_stalls_is_cut_at_the_body_timeout_and_counted() {
    for protocol in ["http1", "h2"] {
        let app = upstream(|req: Request<hyper::body::Incoming>| async move {
            let stall = req.uri().path() == "/stall";
            let pause = std::time::Duration::from_millis(100);
            Response::new(trickle(3, pause, stall))
        })
        .await;
        let extra = format!("body_timeout = \"1s\"\nprotocol = \"{protocol}\"\n");
        let corral = Corral::start(&cluster_config(&[app.addr], &extra)).await;
        let mut client = H1::connect(corral.addr("public")).await;
        let reply = client.get("/trickle", &[]).await;
        assert_eq!(reply.text(), "ababab", "{protocol}");

        let started = std::time::Instant::now();
        let request = Request::get("/stall").header("host", "x").body(empty());
        let response = client.send(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol}");
        let cut = response.into_body().collect().await;
        assert!(cut.is_err(), "{protocol}: the body ended cleanly");
        assert!(started.elapsed() >= std::time::Duration::from_secs(1));
        assert_eq!(upstream_errors(&corral, "timeout").await, 1.0, "{protocol}");
    }
}

/// A response the server breaks off after its head reaches the client
/// cut short (or, when both came in one read, not at all), and is counted
/// against the server as a reset.
#[tokio::test]
async fn a_response_body_the_server_breaks_off_is_counted_as_a_reset() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    let halfway = scripted(move |_| Wire::bytes(head).then(Then::Close)).await;
    let corral = Corral::start(&cluster_config(&[halfway.addr], "")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let request = Request::get("/").header("host", "x").body(empty());
    if let Ok(response) = client.send(request.unwrap()).await {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err());
    }
    assert_eq!(upstream_errors(&corral, "reset").await, 1.0);
}
