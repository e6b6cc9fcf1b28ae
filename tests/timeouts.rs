//! Every timeout, on tokio's paused clock: the proxy runs in-process over real
//! loopback sockets, and time only moves when everything is waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads until the peer closes; returns what arrived. Bounded in real time
/// (the paused clock jumps ahead whenever everything waits, so only a proxy
/// that never closes would reach the bound).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = patiently("the proxy to close", stream.read_to_end(&mut out)).await;
    out
}

/// The paused clock moves straight to the next timer, so a close at the
/// deadline is exactly on it; a millisecond is the timer wheel's grain.
fn at_deadline(waited: Duration, deadline: Duration) -> bool {
    waited >= deadline && waited < deadline + Duration::from_millis(1)
}

/// Whether `waited` ends within the second after `deadline` (for answers
/// that go through more than one timer).
fn in_the_second_after(waited: Duration, deadline: Duration) -> bool {
    waited >= deadline && waited < deadline + Duration::from_secs(1)
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let app = echo("app").await;
    let proxy = in_process(&listener_config(
        app.addr,
        "header_timeout = \"3s\"\nkeepalive_timeout = \"60s\"",
    ))
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Still open a millisecond before the deadline...
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        Duration::from_secs(3) - Duration::from_millis(1),
        stream.read(&mut byte),
    )
    .await;
    assert!(
        early.is_err(),
        "closed before the header timeout: {early:?}"
    );
    // ...and closed, with nothing said, at it.
    assert!(read_to_close(&mut stream).await.is_empty());
    let waited = started.elapsed();
    assert!(at_deadline(waited, Duration::from_secs(3)), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_head_is_cut_at_the_header_timeout() {
    let app = echo("app").await;
    let proxy = in_process(&listener_config(app.addr, "header_timeout = \"3s\"")).await;
    // The timeout counts from the connection's start, bytes or not.
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(&mut stream).await;
    let waited = started.elapsed();
    assert!(at_deadline(waited, Duration::from_secs(3)), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keepalive_connection_lasts_the_keepalive_timeout_not_the_header_timeout() {
    let app = echo("app").await;
    let proxy = in_process(&listener_config(
        app.addr,
        "header_timeout = \"3s\"\nkeepalive_timeout = \"20s\"",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = patiently("the answer", stream.read(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Still open well past the header timeout (and parked, without its
    // buffers, after a second of idleness): a second request works.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = patiently("the answer", stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_from_2 = Instant::now();
    read_to_close(&mut stream).await;
    let idle = idle_from_2.elapsed();
    assert!(
        idle >= Duration::from_secs(20) && idle < Duration::from_secs(21),
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_gets_408() {
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(empty())
    })
    .await;
    let proxy = in_process(&listener_config(app.addr, "body_timeout = \"5s\"")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    let started = Instant::now();
    let reply = read_to_close(&mut stream).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let waited = started.elapsed();
    assert!(
        in_the_second_after(waited, Duration::from_secs(5)),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_never_answers_gets_504_at_the_response_timeout() {
    let app = upstream(|_req| async move {
        std::future::pending::<()>().await;
        Response::new(empty())
    })
    .await;
    let proxy = in_process(&simple_config(&[app.addr], "response_timeout = \"7s\"")).await;
    let started = Instant::now();
    let reply = get(proxy.addr, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "504 Gateway Timeout: upstream timed out\n");
    let waited = started.elapsed();
    assert!(
        in_the_second_after(waited, Duration::from_secs(7)),
        "{waited:?}"
    );
}

/// A pooled connection keeps one timer for its exchanges' response
/// timeouts, left where an earlier exchange set it: a later request's
/// timeout still counts from that request, whether the earlier deadline
/// is still ahead or passed while the connection waited in the pool.
#[tokio::test(start_paused = true)]
async fn a_reused_connection_times_a_response_from_its_own_request() {
    let (app, peers) = upstream_with_peers(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            std::future::pending::<()>().await;
        }
        Response::new(full("fast"))
    })
    .await;
    let proxy = in_process(&simple_config(&[app.addr], "response_timeout = \"7s\"")).await;
    for pause in [Duration::from_secs(5), Duration::from_secs(12)] {
        assert_eq!(get(proxy.addr, "/fast", &[]).await.status, StatusCode::OK);
        // The fast exchange's deadline is 7 s off: still ahead after 5 s,
        // passed after 12 (the pool keeps connections 20 s).
        tokio::time::advance(pause).await;
        let started = Instant::now();
        let reply = get(proxy.addr, "/slow", &[]).await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        let waited = started.elapsed();
        assert!(
            in_the_second_after(waited, Duration::from_secs(7)),
            "after {pause:?} in the pool: {waited:?}"
        );
    }
    // Each slow request went out on the connection the fast one left in
    // the pool (a timed-out exchange's connection is not kept).
    assert_eq!(peers.lock().unwrap().len(), 2);
}

/// The response timeout counts from the end of the request body: an upload
/// that takes longer than it, but never stalls, is answered.
#[tokio::test(start_paused = true)]
async fn a_long_upload_is_not_cut_by_the_response_timeout() {
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        Response::new(full(body.len().to_string()))
    })
    .await;
    let config = simple_config(&[app.addr], "response_timeout = \"3s\"");
    let proxy = in_process(&config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // 5 s of upload on the paused clock, a piece a second: longer than the
    // response timeout, shorter than the body timeout between pieces. The
    // clock is moved by hand: the client is slow, corral is not waited on.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        stream.write_all(b"0123456789").await.unwrap();
    }
    let reply = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n50"), "{reply}");
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_gets_504_at_the_connect_timeout() {
    // A listener with a full accept queue drops further SYNs: connects hang.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let full = socket.local_addr().unwrap().as_socket().unwrap();
    let _filler = std::net::TcpStream::connect(full).unwrap();
    let proxy = in_process(&simple_config(&[full], "connect_timeout = \"2s\"")).await;
    let started = Instant::now();
    let reply = get(proxy.addr, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        in_the_second_after(waited, Duration::from_secs(2)),
        "{waited:?}"
    );
}

/// The health checks' interval in the tests below.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn health_checks_take_a_failing_server_out_and_bring_it_back() {
    use std::sync::atomic::Ordering;
    let (a, sick) = sickly().await;
    let b = echo("b").await;
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\nunhealthy_threshold = 2\nhealthy_threshold = 2";
    let proxy = in_process(&simple_config(&[a.addr, b.addr], check)).await;
    // All answered, `a_share` of ten by `a`: a server taken out must mean
    // its traffic moves to the other, not that requests fail.
    let spread = |a_share: usize| spread(proxy.addr, a_share);
    assert!(
        within_intervals(2, CHECK_INTERVAL, || spread(5)).await,
        "a healthy server gets no traffic"
    );
    sick.store(true, Ordering::SeqCst);
    // Two failed checks take it out.
    assert!(
        within_intervals(4, CHECK_INTERVAL, || spread(0)).await,
        "a failing server still gets traffic"
    );
    sick.store(false, Ordering::SeqCst);
    assert!(
        within_intervals(4, CHECK_INTERVAL, || spread(5)).await,
        "a recovered server gets no traffic"
    );
}

#[tokio::test(start_paused = true)]
async fn no_healthy_server_is_a_503() {
    let a = upstream(|_req| async move { Response::builder().status(503).body(empty()).unwrap() })
        .await;
    let check = "[upstreams.health_check]\ninterval = \"1s\"";
    let proxy = in_process(&simple_config(&[a.addr], check)).await;
    let refused = || async move {
        let reply = get(proxy.addr, "/", &[]).await;
        reply.status == StatusCode::SERVICE_UNAVAILABLE
            && reply.text() == "503 Service Unavailable: no healthy upstream server\n"
    };
    assert!(
        within_intervals(3, CHECK_INTERVAL, refused).await,
        "a failing server still gets traffic"
    );
}

/// A GET on a fresh connection, read until corral closes it.
async fn get_to_close(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(read_to_close(&mut stream).await).unwrap()
}

/// (The same for an h2 upstream, and the count, are in tests/failures.rs,
/// on the real clock: under the paused one, a test h2 server's later DATA
/// frames can wait for the clock to jump past the timeout.)
#[tokio::test(start_paused = true)]
async fn a_response_body_that_stalls_is_cut_at_the_upstreams_body_timeout() {
    let app = upstream(|_req| async { Response::new(trickle(1, Duration::ZERO, true)) }).await;
    let proxy = in_process(&simple_config(&[app.addr], "body_timeout = \"5s\"")).await;
    let started = Instant::now();
    let reply = get_to_close(proxy.addr).await;
    let waited = started.elapsed();
    // The head and the first piece came; the body never ended.
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n2\r\nab\r\n"), "{reply}");
    assert!(
        in_the_second_after(waited, Duration::from_secs(5)),
        "{waited:?}"
    );
}

/// The body timeout bounds each pause, not the whole body: a body that
/// takes longer than it, a piece at a time, arrives whole.
#[tokio::test(start_paused = true)]
async fn a_response_body_that_pauses_less_than_the_body_timeout_arrives_whole() {
    let app =
        upstream(|_req| async { Response::new(trickle(4, Duration::from_secs(3), false)) }).await;
    let proxy = in_process(&simple_config(&[app.addr], "body_timeout = \"5s\"")).await;
    let started = Instant::now();
    let reply = get_to_close(proxy.addr).await;
    assert!(started.elapsed() >= Duration::from_secs(9));
    let body = reply.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body,
        "2\r\nab\r\n2\r\nab\r\n2\r\nab\r\n2\r\nab\r\n0\r\n\r\n"
    );
}
