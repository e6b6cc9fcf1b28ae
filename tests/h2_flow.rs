//! HTTP/2 flow control on the one connection a worker shares to an h2
//! server: clients that stop reading hold their own streams' windows, not
//! the connection's, so every other request on it still gets its answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Streams whose client stops reading.
const STALLED: usize = 4;
/// A stalled response: more than every window on its way.
const LARGE: usize = 8 << 20;
const CHUNK: usize = 64 << 10;
/// hyper's default connection window, 5 MiB: what the stalled streams,
/// 2 MiB each, would hold together and starve every other of.
const CONNECTION_WINDOW: usize = 5 << 20;

/// An h2 client whose windows are the protocol's default (64 KiB), so
/// that corral can send its streams next to nothing they do not read.
async fn slow_reader(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn clients_that_stop_reading_do_not_starve_the_shared_connection() {
    // What the server has handed to its HTTP/2 stack of the large answers.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counted = pulled.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let counted = counted.clone();
        async move {
            if req.uri().path() != "/large" {
                return Response::new(full("small"));
            }
            let chunks = futures_util::stream::iter((0..LARGE / CHUNK).map(move |_| {
                counted.fetch_add(CHUNK, Ordering::Relaxed);
                Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; CHUNK])))
            }));
            Response::new(StreamBody::new(chunks).boxed())
        }
    })
    .await;
    // One worker: every request shares its one connection to the server.
    let config =
        cluster_config(&[up.addr], "protocol = \"h2\"").replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    let public = corral.addr("public");
    // Responses whose bodies are never read.
    let mut reader = slow_reader(public).await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let request = Request::get(format!("http://{public}/large"))
            .body(empty())
            .unwrap();
        stalled.push(
            patiently("a large answer's head", reader.send_request(request))
                .await
                .unwrap(),
        );
    }
    // Together, the stalled streams take more than a connection window
    // of hyper's default size: with one, nothing would be left for any
    // other stream.
    until("the stalled streams to fill their windows", async || {
        pulled.load(Ordering::Relaxed) > CONNECTION_WINDOW + (1 << 20)
    })
    .await;
    let reply = patiently(
        "an answer beside the stalled ones",
        get(public, "/small", &[]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "small");
    drop(stalled);
}
