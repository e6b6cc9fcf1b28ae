//! Edges of README promises that the other test files leave open: a request
//! target too long for hyper (a plain 414, counted and logged as unparsable),
//! an HTTP/2 header list over `max_header_bytes` (the h2 library's 431,
//! neither forwarded nor counted), a request that reached its upstream never
//! being retried, a tunnel ending when the upstream closes its side,
//! `body_timeout` as the longest pause rather than a total, health checks
//! passing on 3xx and failing on 4xx, listening sockets kept across a reload
//! that keeps their address, the watcher seeing an editor's write-and-rename,
//! and new connections refused while a graceful stop drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// hyper refuses a request target longer than this with 414: `MAX_URI_LEN`
/// (`u16::MAX - 1`) in hyper's `src/proto/h1/role.rs`.
const HYPER_MAX_URI: usize = 65_534;

/// `config` with a JSON access log on corral's stderr, where the fixture
/// sees its lines.
fn with_json_access_log(config: &str) -> String {
    format!("[access_log]\npath = \"stderr\"\nformat = \"json\"\n{config}")
}

/// `config` with `settings` added to the `public` listener.
fn with_listener_settings(config: &str, settings: &str) -> String {
    let public = "listen = \"127.0.0.1:0\"\n\n[[routes]]";
    assert!(config.contains(public), "no public listener in {config}");
    config.replace(
        public,
        &format!("listen = \"127.0.0.1:0\"\n{settings}\n\n[[routes]]"),
    )
}

/// An upstream that counts the requests reaching it and answers each with
/// the length of its path.
async fn counting() -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = upstream(move |req: Request<Incoming>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let len = req.uri().path().len();
        async move { Response::new(full(len.to_string())) }
    })
    .await;
    (up, hits)
}

/// Reads until the peer closes (or resets) the connection; what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    patiently("the peer to close", async {
        let mut out = Vec::new();
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
        out
    })
    .await
}

/// Reads a message head (through its blank line) and returns it with
/// whatever followed it in the same reads.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    patiently("a message head", async {
        let mut bytes = Vec::new();
        let mut buf = vec![0; 4096];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = bytes.split_off(end + 4);
                return (String::from_utf8(bytes).unwrap(), rest);
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// Sends `raw` on a new connection and reads the answer until corral closes.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
}

/// A GET whose request target is `len` bytes long.
fn get_with_target(len: usize) -> Vec<u8> {
    let target = format!("/{}", "a".repeat(len - 1));
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

async fn metrics(corral: &Corral) -> String {
    let (code, page) = admin_call(corral.admin.unwrap(), Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    page
}

/// Sum of `corral_requests_total` over every series of the page.
fn requests_total(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("corral_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

// ---- answers corral or its libraries give themselves ----

#[tokio::test]
async fn a_request_target_over_hypers_limit_gets_a_plain_414_counted_and_logged_under_route_none() {
    let (app, hits) = counting().await;
    // The head has to fit in `max_header_bytes`, or it is refused as too
    // large (431) before its target is looked at.
    let config = with_listener_settings(
        &cluster_config(&[app.addr], ""),
        "max_header_bytes = \"256 KiB\"",
    );
    let corral = Corral::start(&with_json_access_log(&config)).await;
    let addr = corral.addr("public");

    // At the limit, the request goes through: the 414 is about the length.
    let at_limit = exchange(addr, &get_with_target(HYPER_MAX_URI)).await;
    assert!(at_limit.starts_with("HTTP/1.1 200 "), "{at_limit:.200}");
    assert!(at_limit.ends_with(&format!("\r\n\r\n{HYPER_MAX_URI}")));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let over = exchange(addr, &get_with_target(HYPER_MAX_URI + 1)).await;
    let (head, body) = over.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{over}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{head}");
    assert_eq!(body, "414 URI Too Long: request target too long\n");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the request was forwarded");

    let page = metrics(&corral).await;
    let line = "corral_requests_total{route=\"(none)\",upstream=\"(none)\",code=\"414\"} 1";
    assert!(page.contains(line), "no {line} in\n{page}");

    let logged = corral.wait_for_log("\"status\":414").await;
    let entry: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(entry["method"], serde_json::Value::Null, "{logged}");
    assert_eq!(entry["uri"], serde_json::Value::Null, "{logged}");
    assert_eq!(entry["route"], "(none)", "{logged}");
    assert_eq!(entry["upstream"], "(none)", "{logged}");
    assert_eq!(entry["bytes"], body.len(), "{logged}");
}

/// README: "On HTTP/2, a header list over the limit is refused by the HTTP/2
/// library itself: a 431 with no body, not counted". Pinned as it is: no
/// sample and no access log line, while the same connection's next request
/// is both.
#[tokio::test]
async fn an_http2_header_list_over_max_header_bytes_gets_a_bodiless_431_that_is_neither_forwarded_nor_counted()
 {
    let (app, hits) = counting().await;
    let config = with_listener_settings(
        &cluster_config(&[app.addr], ""),
        "max_header_bytes = \"32 KiB\"",
    );
    let corral = Corral::start(&with_json_access_log(&config)).await;
    let mut client = h2c(corral.addr("public")).await;

    let big = Request::get("http://x/big")
        .header("x-big", "b".repeat(40 * 1024))
        .body(empty())
        .unwrap();
    let response = patiently("the 431", client.send_request(big)).await;
    let refused = read(response.unwrap()).await;
    assert_eq!(refused.version, http::Version::HTTP_2);
    assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(refused.body.is_empty(), "{:?}", refused.body);

    let after = Request::get("http://x/after").body(empty()).unwrap();
    let response = patiently("the next answer", client.send_request(after)).await;
    let answered = read(response.unwrap()).await;
    assert_eq!(answered.status, StatusCode::OK);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the refused head was forwarded"
    );

    // Lines of one connection are queued in order, so a line for the 431
    // would be there by the time the next request's is.
    corral.wait_for_log("\"uri\":\"/after\"").await;
    assert_eq!(corral.logged("\"status\":431"), Vec::<String>::new());
    let page = metrics(&corral).await;
    assert_eq!(requests_total(&page), 1.0, "{page}");
    assert!(!page.contains("code=\"431\""), "{page}");
}

// ---- retries ----

/// A raw HTTP/1.1 upstream that answers its first `answered` requests with
/// a keep-alive 200 and resets the connection (RST, with nothing answered)
/// once it has read any later one. Each request is reported on arrival as
/// (connection number, request number on that connection), both from 1.
async fn resetting(answered: usize) -> (SocketAddr, mpsc::UnboundedReceiver<(usize, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let requests = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            connections += 1;
            let (connection, arrived_tx, requests) =
                (connections, arrived_tx.clone(), requests.clone());
            tokio::spawn(async move {
                let mut on_connection = 0;
                let mut bytes = Vec::new();
                let mut buf = vec![0; 4096];
                loop {
                    // Bodiless GETs: a request ends at its blank line.
                    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                        bytes.drain(..end + 4);
                        on_connection += 1;
                        let _ = arrived_tx.send((connection, on_connection));
                        if requests.fetch_add(1, Ordering::SeqCst) >= answered {
                            socket2::SockRef::from(&stream)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nreset";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(n @ 1..) => bytes.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, arrived)
}

/// What came in on `arrived` so far.
fn arrivals(arrived: &mut mpsc::UnboundedReceiver<(usize, usize)>) -> Vec<(usize, usize)> {
    std::iter::from_fn(|| arrived.try_recv().ok()).collect()
}

/// `n` GETs, one after another, each on a new client connection: their
/// (status, body) sorted.
async fn answers(addr: SocketAddr, n: usize) -> Vec<(StatusCode, String)> {
    let mut answers = Vec::new();
    for _ in 0..n {
        let reply = get(addr, "/x", &[]).await;
        answers.push((reply.status, reply.text()));
    }
    answers.sort();
    answers
}

/// In process: one worker, so round robin alternates between the two
/// servers. A GET is idempotent and has no body: reset before a byte of an
/// answer, it goes to the other server.
#[tokio::test]
async fn a_get_reset_before_any_answer_on_a_new_connection_goes_to_the_other_server() {
    let (reset, mut arrived) = resetting(0).await;
    let (healthy, hits) = counting().await;
    let proxy = in_process(&simple_config(&[reset, healthy.addr], "")).await;
    let answers = answers(proxy.addr, 2).await;
    assert_eq!(answers, vec![(StatusCode::OK, "2".to_owned()); 2]);
    // Each request the resetting server had, the healthy one answered.
    let reset_first = arrivals(&mut arrived);
    assert_eq!(reset_first.first(), Some(&(1, 1)));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The same on a pooled connection, where a connection that closed before
/// the request went out is replaced transparently, and one that resets
/// after the request was read sends it to the other server.
#[tokio::test]
async fn a_get_reset_before_any_answer_on_a_pooled_connection_goes_to_the_other_server() {
    let (reset, mut arrived) = resetting(1).await;
    let (healthy, hits) = counting().await;
    let proxy = in_process(&simple_config(&[reset, healthy.addr], "")).await;
    let answers = answers(proxy.addr, 4).await;
    let mut expected = vec![(StatusCode::OK, "2".to_owned()); 3];
    expected.push((StatusCode::OK, "reset".to_owned()));
    assert_eq!(answers, expected);
    assert_eq!(
        arrivals(&mut arrived)[..2],
        [(1, 1), (1, 2)],
        "the second request did not reuse the pooled connection"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// Once a byte of the answer has come, the exchange is the server's: a
/// reset then is a 502, never a second request elsewhere.
#[tokio::test]
async fn a_get_reset_midway_through_its_answer_is_a_502_and_goes_nowhere_else() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let halfway = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut stream).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                let _ = stream.flush().await;
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            });
        }
    });
    let (healthy, hits) = counting().await;
    let proxy = in_process(&simple_config(&[halfway, healthy.addr], "")).await;
    let answers = answers(proxy.addr, 2).await;
    assert_eq!(
        answers,
        vec![
            (StatusCode::OK, "2".to_owned()),
            (
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: invalid response from upstream\n".to_owned()
            ),
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// ---- upgrades ----

#[tokio::test]
async fn a_tunnel_ends_for_the_client_when_the_upstream_closes_its_side() {
    // A raw upstream: it switches protocols, answers one message, and
    // closes, so the close is the upstream's and not the client's.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (head, rest) = read_head(&mut stream).await;
        assert!(head.starts_with("GET /tunnel HTTP/1.1\r\n"), "{head}");
        assert!(rest.is_empty(), "{rest:?}");
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
                  Upgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let mut ping = [0u8; 4];
        stream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        stream.write_all(b"pong").await.unwrap();
    });
    let corral = Corral::start(&simple_config(&[app], "")).await;
    let mut client = TcpStream::connect(corral.addr("public")).await.unwrap();
    client
        .write_all(
            b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, mut received) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    client.write_all(b"ping").await.unwrap();
    // Ends only if the upstream's close reaches the client; the client has
    // not closed anything.
    received.extend(read_to_close(&mut client).await);
    assert_eq!(String::from_utf8_lossy(&received), "pong");
}

// ---- body_timeout, on the paused clock ----

const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Shorter than [`BODY_TIMEOUT`].
const PAUSE: Duration = Duration::from_secs(4);
const PIECE: &[u8] = b"0123456789";

/// An upstream that reports how much of its request body has arrived after
/// each piece and answers with the body's length.
async fn body_watcher() -> (Upstream, mpsc::UnboundedReceiver<usize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = upstream(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let mut body = req.into_body();
            let mut received = 0;
            while let Some(Ok(frame)) = body.frame().await {
                received += frame.data_ref().map_or(0, |d| d.len());
                let _ = tx.send(received);
            }
            Response::new(full(received.to_string()))
        }
    })
    .await;
    (up, rx)
}

/// Sends `pieces` pieces of a 100-byte body (after its head), pausing
/// [`PAUSE`] after each. A pause starts once the upstream has the piece, so
/// that corral has read it: the clock is not let run while a piece is on
/// its way.
async fn send_slowly(
    stream: &mut TcpStream,
    received: &mut mpsc::UnboundedReceiver<usize>,
    pieces: usize,
) {
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut sent = 0;
    for i in 0..pieces {
        if i > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        stream.write_all(PIECE).await.unwrap();
        sent += PIECE.len();
        while patiently("the piece upstream", received.recv())
            .await
            .unwrap()
            < sent
        {}
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_whose_pauses_are_each_under_body_timeout_is_not_cut_however_long_it_takes() {
    let (app, mut received) = body_watcher().await;
    let proxy = in_process(&listener_config(app.addr, "body_timeout = \"5s\"")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    send_slowly(&mut stream, &mut received, 10).await;
    // Nine pauses: over seven times the body timeout in all.
    assert!(started.elapsed() >= 9 * PAUSE);
    let reply = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.ends_with("\r\n\r\n100"), "{reply}");
}

#[tokio::test(start_paused = true)]
async fn a_pause_over_body_timeout_after_some_of_the_body_gets_408_at_the_timeout() {
    let (app, mut received) = body_watcher().await;
    let proxy = in_process(&listener_config(app.addr, "body_timeout = \"5s\"")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Three pieces over 8 s, longer than the timeout, then nothing more.
    send_slowly(&mut stream, &mut received, 3).await;
    let stalled = Instant::now();
    let reply = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    let waited = stalled.elapsed();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\n408 Request Timeout: request body timed out\n"),
        "{reply}"
    );
    assert!(
        waited >= BODY_TIMEOUT && waited < BODY_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
}

// ---- health checks, on the paused clock ----

const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_health_check_answered_3xx_passes_and_one_answered_4xx_fails() {
    // `a`'s `/healthz` answers with `code`; a redirect points at a page that
    // would fail, so a check that followed it would fail too.
    let code = Arc::new(AtomicU16::new(404));
    let answer = code.clone();
    let a = upstream(move |req: Request<Incoming>| {
        let status = match req.uri().path() {
            "/healthz" => answer.load(Ordering::SeqCst),
            "/moved" => 404,
            _ => 200,
        };
        async move {
            Response::builder()
                .status(status)
                .header("location", "/moved")
                .header("x-backend", "a")
                .body(empty())
                .unwrap()
        }
    })
    .await;
    let b = echo("b").await;
    // One answer decides either way, so each state shows the latest check.
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\n\
                 unhealthy_threshold = 1\nhealthy_threshold = 1";
    let proxy = in_process(&simple_config(&[a.addr, b.addr], check)).await;
    let addr = proxy.addr;
    // 3xx from its lowest to its highest code, and 4xx likewise.
    for (status, healthy) in [
        (404, false),
        (302, true),
        (400, false),
        (399, true),
        (499, false),
        (300, true),
    ] {
        code.store(status, Ordering::SeqCst);
        let share = if healthy { 5 } else { 0 };
        assert!(
            within_intervals(3, CHECK_INTERVAL, || spread(addr, share)).await,
            "a check answered {status} did not leave the server {}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        // And it stays so, check after check.
        for _ in 0..3 {
            tokio::time::sleep(CHECK_INTERVAL).await;
            assert!(spread(addr, share).await, "answered {status}");
        }
    }
}

// ---- reloads ----

/// `POST /reload`, then waits until every worker serves `generation`.
async fn reload_to(corral: &Corral, generation: u64) {
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    // 200 also when the file watcher reloaded the change first.
    assert_eq!(code, StatusCode::OK, "{body}");
    at_generation(corral, generation).await;
}

/// Waits until the last reload succeeded at `generation` and every worker
/// serves it.
async fn at_generation(corral: &Corral, generation: u64) -> serde_json::Value {
    corral
        .wait_status(|s| {
            s["last_reload"]["result"] == "success"
                && s["last_reload"]["generation"] == generation
                && all_ready(s)
                && s["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|w| w["generation"] == generation)
        })
        .await
}

#[tokio::test]
async fn a_reload_that_keeps_a_listeners_address_keeps_its_sockets_and_one_that_moves_it_does_not()
{
    let (a, b) = (echo("a").await, echo("b").await);
    let text = cluster_config(&[a.addr], "");
    let corral = Corral::start(&text).await;
    corral.wait_status(all_ready).await;
    let old = corral.addr("public");
    let before = listening_inodes(old);
    assert_eq!(before.len(), 2, "one socket per slot: {before:?}");

    // Everything but the listener's address changes: its other settings
    // and the upstream's server.
    let kept = with_listener_settings(
        &cluster_config(&[b.addr], ""),
        "backlog = 64\nheader_timeout = \"7s\"",
    );
    corral.write_config(&kept);
    reload_to(&corral, 2).await;
    assert_eq!(listening_inodes(old), before, "the sockets were replaced");
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");

    // Another loopback address is another listener: new sockets, and the
    // old ones closed by the time the reload succeeds.
    let moved = kept.replace(
        "listen = \"127.0.0.1:0\"\nbacklog",
        "listen = \"127.0.0.2:0\"\nbacklog",
    );
    assert_ne!(moved, kept);
    corral.write_config(&moved);
    reload_to(&corral, 3).await;
    assert!(
        listening_inodes(old).is_disjoint(&before),
        "the old address's sockets are still open"
    );
    let ready = corral.wait_ready(3).await;
    let new = ready.listeners()["public"];
    assert_eq!(new.ip().to_string(), "127.0.0.2", "{ready:?}");
    let after = listening_inodes(new);
    assert_eq!(after.len(), 2, "one socket per slot: {after:?}");
    assert!(after.is_disjoint(&before));
    assert_eq!(get(new, "/", &[]).await.backend(), "b");
}

#[tokio::test]
async fn an_editors_write_and_rename_is_reloaded_without_a_signal_each_time() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let corral = Corral::start(&cluster_config(&[a.addr], "")).await;
    // The master's look at the folder after a burst of events, when the
    // file is as it last read it.
    const LOOKED: &str = "config file as last read; nothing to reload";
    // Twice: a watch on the file's first inode would see at most the first
    // rename, which takes that inode away.
    for (generation, server, name) in [(2, &b, "b"), (3, &c, "c")] {
        let temp = corral.config_path.with_file_name(".corral.toml.swp");
        let looked = corral.logged(LOOKED).len();
        std::fs::write(&temp, cluster_config(&[server.addr], "")).unwrap();
        // The temp file is none of the watcher's business. The config
        // written again as it is makes the master look once, after the
        // temp file's events: from then on only the rename is left to show
        // the change (a watcher that reacted to writes alone would
        // otherwise pass by reading the file after the rename).
        let text = std::fs::read_to_string(&corral.config_path).unwrap();
        corral.write_config(&text);
        corral.wait_for_logs(LOOKED, looked + 1).await;
        std::fs::rename(&temp, &corral.config_path).unwrap();
        let status = at_generation(&corral, generation).await;
        assert_eq!(status["last_reload"]["trigger"], "file change");
        assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), name);
    }
}

// ---- graceful stop ----

#[tokio::test]
async fn new_connections_are_refused_while_a_graceful_stop_drains() {
    let (app, arrived, release) = holding().await;
    // Generous: the stop must outlast the test's steps, however slow the
    // machine, and still ends as soon as the held request is released.
    let config = cluster_config(&[app.addr], "")
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"60s\"");
    let mut corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let sockets = listening_inodes(addr);
    assert_eq!(sockets.len(), 2, "one socket per slot: {sockets:?}");
    let _port = hold_port(addr);
    let in_flight = tokio::spawn(async move { get(addr, "/held", &[]).await });
    patiently("the request upstream", arrived).await.unwrap();

    corral.signal(Signal::SIGTERM);
    corral
        .wait_for_notice("STOPPING=1", Notice::is_stopping)
        .await;
    // The sockets close at once, not when the drain ends: polled in
    // /proc, the one place their closing shows.
    patiently("the listening sockets to close", async {
        while !listening_inodes(addr).is_disjoint(&sockets) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!in_flight.is_finished(), "the held request ended early");
    let refused = TcpStream::connect(addr).await.map(|_| ());
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    release.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "done")
    );
    assert_eq!(corral.wait_exit().await, Some(0));
}
