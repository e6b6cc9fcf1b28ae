//! The limits a listener puts on client input, on the real binary:
//! `max_header_bytes` (431 on HTTP/1.1 and HTTP/2, never forwarded; a head
//! within it passes), `max_request_body` on a chunked body (413, never
//! delivered whole), and `Expect: 100-continue`, which corral answers itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KIB: usize = 1024;

/// [`listener_config`] with `settings` (its heartbeat timeout is already
/// generous, see [`GENEROUS_HEARTBEAT`]).
fn config(app: SocketAddr, settings: &str) -> String {
    let config = listener_config(app, settings);
    assert!(config.contains(GENEROUS_HEARTBEAT));
    config
}

/// An upstream that counts the requests reaching it and answers with the
/// length of their `x-big` header.
async fn counting() -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = upstream(move |req: Request<Incoming>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let len = req.headers().get("x-big").map_or(0, |v| v.len());
        async move { Response::new(full(len.to_string())) }
    })
    .await;
    (up, hits)
}

/// `n` bytes of header value.
fn filler(n: usize) -> String {
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// An HTTP/1.1 GET head of exactly `size` bytes, most of them in `x-big`.
fn head_of(size: usize) -> Vec<u8> {
    let start = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ";
    let end = "\r\n\r\n";
    let head = format!("{start}{}{end}", filler(size - start.len() - end.len()));
    assert_eq!(head.len(), size);
    head.into_bytes()
}

/// Reads until the peer closes (or resets) the connection; what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let reading = async {
        let mut out = Vec::new();
        let mut buf = vec![0; 16 * KIB];
        // A reset after the answer (corral closes with the rest of an
        // oversized head unread) ends the reading like a close does.
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
        out
    };
    tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("corral never closed the connection")
}

/// Reads until `bytes` holds a whole response head.
async fn read_head(stream: &mut TcpStream, bytes: &mut Vec<u8>) {
    let reading = async {
        let mut buf = vec![0; 4 * KIB];
        while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(bytes));
            bytes.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("no response head");
}

/// A raw HTTP/1.1 response: status, lower-cased headers, body.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = rest.as_bytes().to_vec();
        if let Some((_, length)) = headers.iter().find(|(k, _)| k == "content-length") {
            body.truncate(length.parse().unwrap());
        }
        Self {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` on a fresh HTTP/1.1 connection and returns the answer.
async fn send_head(addr: SocketAddr, head: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // corral may answer and close before reading all of an oversized head,
    // which fails the rest of this write; the answer is still there to read.
    let _ = stream.write_all(head).await;
    RawReply::parse(&read_to_close(&mut stream).await)
}

/// One HTTP/2 (prior knowledge) GET with an `x-big` header of `n` bytes.
async fn h2_get_with(addr: SocketAddr, n: usize) -> Reply {
    let mut client = h2c(addr).await;
    let request = Request::get("http://x/")
        .header("x-big", filler(n))
        .body(empty())
        .unwrap();
    let response = patiently("an HTTP/2 response head", client.send_request(request)).await;
    read(response.unwrap()).await
}

#[tokio::test]
async fn an_http11_head_over_max_header_bytes_gets_431_and_is_not_forwarded() {
    let (app, hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "max_header_bytes = \"16 KiB\"")).await;
    // Over 16 KiB, under the 64 KiB default: only the configured limit
    // refuses it.
    let reply = send_head(corral.addr("public"), &head_of(40 * KIB)).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the head was forwarded");
}

#[tokio::test]
async fn an_http11_head_just_under_max_header_bytes_passes() {
    let (app, hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "max_header_bytes = \"16 KiB\"")).await;
    let head = head_of(16 * KIB - 64);
    let reply = send_head(corral.addr("public"), &head).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let value =
        head.len() - "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: \r\n\r\n".len();
    assert_eq!(reply.body, value.to_string().as_bytes());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// README: errors are short plain text, 431 included (hyper's own 431 has
/// an empty body).
#[tokio::test]
async fn a_431_for_a_head_too_large_has_a_plain_text_body() {
    let (app, _hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "max_header_bytes = \"16 KiB\"")).await;
    let reply = send_head(corral.addr("public"), &head_of(40 * KIB)).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(
        !body.trim().is_empty() && body.len() < 200,
        "431 body {body:?}"
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type:?}");
}

/// HTTP/2 with a limit other than hyper's 16 KiB header-list default, so
/// that both sides of it show the setting is what counts.
#[tokio::test]
async fn an_http2_head_over_max_header_bytes_gets_431_and_is_not_forwarded() {
    let (app, hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "max_header_bytes = \"32 KiB\"")).await;
    let reply = h2_get_with(corral.addr("public"), 40 * KIB).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the head was forwarded");
}

#[tokio::test]
async fn an_http2_head_just_under_max_header_bytes_passes() {
    let (app, hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "max_header_bytes = \"32 KiB\"")).await;
    // HTTP/2 counts 32 bytes per field beside its name and value, and the
    // pseudo-headers: 1 KiB leaves room for them.
    let reply = h2_get_with(corral.addr("public"), 31 * KIB).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), (31 * KIB).to_string());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The default (64 KiB) governs HTTP/2 too.
#[tokio::test]
async fn an_http2_head_within_the_default_max_header_bytes_passes() {
    let (app, hits) = counting().await;
    let corral = Corral::start(&config(app.addr, "")).await;
    let reply = h2_get_with(corral.addr("public"), 40 * KIB).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), (40 * KIB).to_string());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_corral_before_the_body_is_sent() {
    // The upstream says whether it saw `Expect`, and returns the body.
    let app = upstream(|req: Request<Incoming>| async move {
        let expect = req.headers().contains_key("expect");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::builder()
            .header("x-saw-expect", expect.to_string())
            .body(full(body))
            .unwrap()
    })
    .await;
    let corral = Corral::start(&config(app.addr, "")).await;
    let mut stream = TcpStream::connect(corral.addr("public")).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // No body until told to go on: without the 100 this waits forever.
    let mut interim = Vec::new();
    read_head(&mut stream, &mut interim).await;
    assert_eq!(
        String::from_utf8_lossy(&interim),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    stream.write_all(b"hello world").await.unwrap();
    let reply = RawReply::parse(&read_to_close(&mut stream).await);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, b"hello world");
    // corral answered the expectation, so it does not pass it on.
    assert_eq!(reply.header("x-saw-expect"), Some("false"));
}

/// A chunked body declares no length, so the limit can only be found while
/// it streams: the head and the bytes within the limit go upstream as they
/// arrive (bodies are never buffered), and the upstream never gets the
/// body whole.
#[tokio::test]
async fn a_chunked_body_over_max_request_body_gets_413_and_never_arrives_whole() {
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (outcome_tx, mut outcome_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = upstream(move |req: Request<Incoming>| {
        let (first_tx, outcome_tx) = (first_tx.clone(), outcome_tx.clone());
        async move {
            let mut body = req.into_body();
            let mut received = 0;
            let outcome = loop {
                match body.frame().await {
                    None => break Ok(received),
                    Some(Err(e)) => break Err((received, e.to_string())),
                    Some(Ok(frame)) => {
                        received += frame.data_ref().map_or(0, |d| d.len());
                        let _ = first_tx.send(());
                    }
                }
            };
            let _ = outcome_tx.send(outcome);
            Response::new(empty())
        }
    })
    .await;
    let corral = Corral::start(&config(app.addr, "max_request_body = \"1 KiB\"")).await;
    let mut stream = TcpStream::connect(corral.addr("public")).await.unwrap();
    let mut request = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                        Connection: close\r\n\r\n200\r\n"
        .to_vec();
    request.extend_from_slice(&[b'a'; 512]);
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.unwrap();
    tokio::time::timeout(PATIENCE, first_rx.recv())
        .await
        .expect("the body's first chunk never reached the upstream");
    // 512 more bytes than the limit allows, then the body's end.
    let mut rest = b"400\r\n".to_vec();
    rest.extend_from_slice(&[b'b'; 1024]);
    rest.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&rest).await.unwrap();
    let reply = RawReply::parse(&read_to_close(&mut stream).await);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        "413 Payload Too Large: request body too large\n"
    );
    let outcome = tokio::time::timeout(PATIENCE, outcome_rx.recv())
        .await
        .expect("the upstream's request never ended")
        .unwrap();
    match outcome {
        Ok(received) => panic!("the upstream got the whole body ({received} bytes)"),
        Err((received, _)) => assert!(received <= KIB, "{received} bytes went upstream"),
    }
}
