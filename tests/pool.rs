//! Upstream connection pools: a pooled connection the upstream closed is
//! replaced without the client noticing; a connection whose exchange did not
//! end cleanly (response cut short, client gone before the head or mid-body,
//! request body still going) is never lent again, while one whose response
//! was read to the end (with a length or chunked) is; idle connections are
//! reused last-in first-out, closed at `idle_timeout`, and kept only up to
//! `max_idle_per_server`.
//!
//! The proxy runs in-process, so the pool is one worker's, in front of
//! upstreams that note which connection each request came on and when each
//! connection closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a [`Tracked`] upstream saw, in order.
#[derive(Debug, Clone)]
enum Seen {
    Request { peer: SocketAddr, path: String },
    Closed { peer: SocketAddr, at: Instant },
}

/// An HTTP/1.1 upstream that notes which connection each request came on
/// and when each connection closed, and can close one from under its server.
struct Tracked {
    addr: SocketAddr,
    seen: watch::Receiver<Vec<Seen>>,
    /// A second handle on each open connection's socket.
    sockets: Arc<Mutex<HashMap<SocketAddr, std::net::TcpStream>>>,
    stop: CancellationToken,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn tracked<F, Fut>(handler: F) -> Tracked
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (log, seen) = watch::channel(Vec::new());
    let sockets = Arc::new(Mutex::new(HashMap::new()));
    let stop = CancellationToken::new();
    let (token, handles) = (stop.clone(), sockets.clone());
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            let stream = stream.into_std().unwrap();
            handles
                .lock()
                .unwrap()
                .insert(peer, stream.try_clone().unwrap());
            let stream = TcpStream::from_std(stream).unwrap();
            let (handler, log, handles) = (handler.clone(), log.clone(), handles.clone());
            tokio::spawn(async move {
                let noted = log.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let path = req.uri().path().to_owned();
                    noted.send_modify(|s| s.push(Seen::Request { peer, path }));
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                // The second handle would keep the socket open.
                handles.lock().unwrap().remove(&peer);
                let at = Instant::now();
                log.send_modify(|s| s.push(Seen::Closed { peer, at }));
            });
        }
    });
    Tracked {
        addr,
        seen,
        sockets,
        stop,
    }
}

impl Tracked {
    /// Waits until `find` finds something in what the upstream saw.
    async fn wait<T>(&self, what: &str, mut find: impl FnMut(&[Seen]) -> Option<T>) -> T {
        let mut seen = self.seen.clone();
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(t) = find(&seen.borrow_and_update()) {
                    return t;
                }
                seen.changed().await.unwrap();
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("the upstream never saw {what}: {:?}", *self.seen.borrow()))
    }

    /// The connection the request for `path` came on (once it came).
    async fn peer_of(&self, path: &str) -> SocketAddr {
        self.wait(&format!("a request for {path}"), |seen| {
            seen.iter().find_map(|s| match s {
                Seen::Request { peer, path: p } if p == path => Some(*peer),
                _ => None,
            })
        })
        .await
    }

    /// When the connection from `peer` closed (once it did).
    async fn closed(&self, peer: SocketAddr) -> Instant {
        self.wait(&format!("{peer} close"), |seen| {
            seen.iter().find_map(|s| match s {
                Seen::Closed { peer: p, at } if *p == peer => Some(*at),
                _ => None,
            })
        })
        .await
    }

    /// The connections closed so far.
    fn closed_now(&self) -> HashSet<SocketAddr> {
        self.seen
            .borrow()
            .iter()
            .filter_map(|s| match s {
                Seen::Closed { peer, .. } => Some(*peer),
                Seen::Request { .. } => None,
            })
            .collect()
    }

    /// Closes the connection from `peer` at once, as an upstream that ends
    /// idle keep-alive connections does: its FIN is on its way before this
    /// returns.
    fn hang_up(&self, peer: SocketAddr) {
        self.sockets.lock().unwrap()[&peer]
            .shutdown(Shutdown::Both)
            .unwrap();
    }
}

/// Answers "ok" to everything.
async fn ok(_req: Request<Incoming>) -> Response<TestBody> {
    Response::new(full("ok"))
}

/// Requests whose path the test has not let go yet wait at the upstream.
#[derive(Clone)]
struct Gates(Arc<watch::Sender<HashSet<String>>>);

impl Gates {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(HashSet::new())))
    }

    fn open(&self, path: &str) {
        self.0.send_modify(|open| {
            open.insert(path.to_owned());
        });
    }

    /// An upstream answering `path` with `path` once its gate is open.
    async fn upstream(&self) -> Tracked {
        let gates = self.0.clone();
        tracked(move |req: Request<Incoming>| {
            let mut open = gates.subscribe();
            async move {
                let path = req.uri().path().to_owned();
                let _ = open.wait_for(|o| o.contains(&path)).await;
                Response::new(full(path))
            }
        })
        .await
    }
}

/// A GET of `path` on its own connection, answered in the background.
fn spawn_get(addr: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move { get(addr, path, &[]).await })
}

/// Waits for a spawned GET and checks it was answered by the upstream.
async fn answered(request: tokio::task::JoinHandle<Reply>, body: &str) {
    let reply = tokio::time::timeout(PATIENCE, request)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), body);
}

/// Reads one response with a `Content-Length` from a raw client stream;
/// returns its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let read = async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        let mut body = buf[head_end..].to_vec();
        body.resize(length, 0);
        stream
            .read_exact(&mut body[buf.len() - head_end..])
            .await
            .unwrap();
        (head, body)
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no response")
}

/// A raw client's GET of `path` on a keep-alive connection.
async fn raw_get(stream: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_the_client_noticing() {
    let up = tracked(ok).await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = H1::connect(proxy.addr).await;
    let mut previous = None;
    for i in 0..5 {
        let path = format!("/{i}");
        let reply = client.get(&path, &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "ok")
        );
        let peer = up.peer_of(&path).await;
        assert_ne!(Some(peer), previous, "a closed connection carried {path}");
        previous = Some(peer);
        up.hang_up(peer);
        up.closed(peer).await;
    }
}

/// The close races the next request: the upstream's FIN is already in
/// corral's socket, but corral has not read it yet when the request takes
/// the connection from the pool (the client's request is written first, the
/// close follows before corral runs), so it is the send that finds the
/// connection gone. The request, never written, goes out on a new one.
#[tokio::test]
async fn a_pooled_connection_that_closed_just_before_the_request_went_out_is_replaced() {
    let up = tracked(ok).await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let (head, _) = raw_get(&mut client, "/0").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut previous = up.peer_of("/0").await;
    for i in 1..6 {
        let path = format!("/{i}");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        // Neither step yields to corral's tasks in between.
        assert_eq!(client.try_write(request.as_bytes()).unwrap(), request.len());
        up.hang_up(previous);
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"ok");
        let peer = up.peer_of(&path).await;
        assert_ne!(peer, previous, "a closed connection carried {path}");
        previous = peer;
    }
}

/// An upstream that reads a request head, answers without announcing
/// `Connection: close`, and closes: every pooled connection it leaves is
/// dead. Returns its address and the client address of each connection.
async fn closes_after_each_response() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0];
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, peers)
}

#[tokio::test]
async fn an_upstream_that_closes_after_every_response_costs_the_client_nothing() {
    let (app, peers) = closes_after_each_response().await;
    let proxy = in_process(&simple_config(&[app], "")).await;
    let mut client = H1::connect(proxy.addr).await;
    for i in 0..10 {
        let reply = client.get(&format!("/{i}"), &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
    }
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 10, "{peers:?}");
    assert_eq!(peers.iter().collect::<HashSet<_>>().len(), 10, "{peers:?}");
}

#[tokio::test]
async fn a_connection_whose_response_the_client_left_unread_is_never_reused() {
    // A long body: its first piece, then nothing until the client is gone.
    let up = tracked(|req: Request<Incoming>| async move {
        if req.uri().path() != "/long" {
            return Response::new(full("ok"));
        }
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
        });
        let body = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        Response::builder()
            .header("content-length", 1 << 20)
            .body(BodyExt::boxed(StreamBody::new(body)))
            .unwrap()
    })
    .await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    while !received.windows(5).any(|w| w == b"\r\n\r\nx") {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(PATIENCE, client.read(&mut chunk))
            .await
            .expect("the body never started")
            .unwrap();
        assert!(n > 0, "closed early");
        received.extend_from_slice(&chunk[..n]);
    }
    let cut = up.peer_of("/long").await;
    drop(client);
    // It cannot carry anything else: corral lets it go.
    up.closed(cut).await;
    assert_eq!(get(proxy.addr, "/next", &[]).await.status, StatusCode::OK);
    assert_ne!(up.peer_of("/next").await, cut);
}

#[tokio::test]
async fn a_connection_whose_client_left_before_the_response_head_is_never_reused() {
    let gates = Gates::new();
    let up = gates.upstream().await;
    gates.open("/next");
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let aborted = up.peer_of("/slow").await;
    drop(client);
    up.closed(aborted).await;
    // Were it pooled, its late answer would be read as the next request's.
    gates.open("/slow");
    let reply = get(proxy.addr, "/next", &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "/next")
    );
    assert_ne!(up.peer_of("/next").await, aborted);
}

#[tokio::test]
async fn a_connection_whose_client_left_mid_request_body_is_never_reused() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let up = tracked(move |req: Request<Incoming>| {
        let started = started_tx.clone();
        async move {
            let mut body = req.into_body();
            if let Some(Ok(_)) = body.frame().await {
                started.send(()).unwrap();
                let _ = body.collect().await;
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the body never reached the upstream");
    let aborted = up.peer_of("/upload").await;
    drop(client);
    up.closed(aborted).await;
    assert_eq!(get(proxy.addr, "/next", &[]).await.status, StatusCode::OK);
    assert_ne!(up.peer_of("/next").await, aborted);
}

/// The upstream answers before reading the body, and the client has read
/// that whole answer while its upload is still going: the connection is
/// busy until the body ends, so the next request goes elsewhere, neither
/// waiting for the upload nor cutting it off.
#[tokio::test]
async fn a_connection_still_carrying_a_request_body_is_not_lent_to_the_next_request() {
    let (uploaded_tx, mut uploaded) = tokio::sync::mpsc::unbounded_channel();
    let up = tracked(move |req: Request<Incoming>| {
        let uploaded = uploaded_tx.clone();
        async move {
            if req.uri().path() == "/early" {
                // Read the body meanwhile, as it comes, so that it is the
                // client that holds the connection up.
                tokio::spawn(async move {
                    let body = req.into_body().collect().await;
                    uploaded.send(body.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()))
                });
                return Response::new(full("early"));
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut uploader = TcpStream::connect(proxy.addr).await.unwrap();
    uploader
        .write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    let (head, body) = read_response(&mut uploader).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"early");
    let busy = up.peer_of("/early").await;
    let reply = tokio::time::timeout(PATIENCE, get(proxy.addr, "/next", &[]))
        .await
        .expect("the next request waited for another client's upload");
    assert_eq!(reply.status, StatusCode::OK);
    let next = up.peer_of("/next").await;
    assert_ne!(next, busy);
    uploader.write_all(&[b'.'; 90]).await.unwrap();
    let upload = tokio::time::timeout(PATIENCE, uploaded.recv())
        .await
        .expect("the upload never ended")
        .unwrap();
    assert_eq!(upload, Ok(100), "the upload was cut off");
    // Both exchanges are over: no third connection is needed.
    assert_eq!(get(proxy.addr, "/after", &[]).await.status, StatusCode::OK);
    assert!([busy, next].contains(&up.peer_of("/after").await));
}

#[tokio::test]
async fn the_most_recently_returned_connection_is_reused_first() {
    let gates = Gates::new();
    let up = gates.upstream().await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    // Three requests at once: three connections.
    let held = [
        spawn_get(proxy.addr, "/a"),
        spawn_get(proxy.addr, "/b"),
        spawn_get(proxy.addr, "/c"),
    ];
    let (a, b, c) = (
        up.peer_of("/a").await,
        up.peer_of("/b").await,
        up.peer_of("/c").await,
    );
    assert_eq!(HashSet::from([a, b, c]).len(), 3);
    // Returned in the order b, c, a: each is back in the pool before its
    // client has the last byte of the answer.
    let [on_a, on_b, on_c] = held;
    for (path, request) in [("/b", on_b), ("/c", on_c), ("/a", on_a)] {
        gates.open(path);
        answered(request, path).await;
    }
    // Taken while the ones before are still busy: a, then c, then b.
    let mut again = Vec::new();
    let mut taken = Vec::new();
    for path in ["/x", "/y", "/z"] {
        again.push((path, spawn_get(proxy.addr, path)));
        taken.push(up.peer_of(path).await);
    }
    assert_eq!(
        taken,
        [a, c, b],
        "connections returned in the order b, c, a"
    );
    for (path, request) in again {
        gates.open(path);
        answered(request, path).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_at_the_idle_timeout_without_waiting_for_a_request() {
    let up = tracked(ok).await;
    let proxy = in_process(&simple_config(&[up.addr], "idle_timeout = \"8s\"")).await;
    assert_eq!(get(proxy.addr, "/1", &[]).await.status, StatusCode::OK);
    let idle_from = Instant::now();
    let first = up.peer_of("/1").await;
    let idle = up.closed(first).await - idle_from;
    assert!(
        idle >= Duration::from_secs(8) && idle < Duration::from_secs(9),
        "closed after {idle:?} idle"
    );
    assert_eq!(get(proxy.addr, "/2", &[]).await.status, StatusCode::OK);
    assert_ne!(up.peer_of("/2").await, first);
}

/// Each idle connection has its own deadline: the one returned later
/// closes later, and the closes do not wait for each other.
#[tokio::test(start_paused = true)]
async fn each_idle_connection_closes_idle_timeout_after_its_own_return() {
    let gates = Gates::new();
    let up = gates.upstream().await;
    let proxy = in_process(&simple_config(&[up.addr], "idle_timeout = \"8s\"")).await;
    let (on_a, on_b) = (spawn_get(proxy.addr, "/a"), spawn_get(proxy.addr, "/b"));
    let (a, b) = (up.peer_of("/a").await, up.peer_of("/b").await);
    gates.open("/a");
    answered(on_a, "/a").await;
    let a_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    gates.open("/b");
    answered(on_b, "/b").await;
    let b_idle = Instant::now();
    let a_closed = up.closed(a).await - a_idle;
    let b_closed = up.closed(b).await - b_idle;
    for (name, idle) in [("a", a_closed), ("b", b_closed)] {
        assert!(
            idle >= Duration::from_secs(8) && idle < Duration::from_secs(9),
            "{name} closed after {idle:?} idle"
        );
    }
}

#[tokio::test]
async fn idle_connections_beyond_max_idle_per_server_are_closed() {
    let gates = Gates::new();
    let up = gates.upstream().await;
    let config = simple_config(&[up.addr], "max_idle_per_server = 2\nidle_timeout = \"1h\"");
    let proxy = in_process(&config).await;
    let first = ["/a", "/b", "/c"].map(|p| spawn_get(proxy.addr, p));
    let mut opened = HashSet::new();
    for path in ["/a", "/b", "/c"] {
        opened.insert(up.peer_of(path).await);
    }
    assert_eq!(opened.len(), 3);
    for (path, request) in ["/a", "/b", "/c"].into_iter().zip(first) {
        gates.open(path);
        answered(request, path).await;
    }
    // Two fit; the third is let go at once.
    let extra = up
        .wait("a connection close", |seen| {
            seen.iter().find_map(|s| match s {
                Seen::Closed { peer, .. } => Some(*peer),
                Seen::Request { .. } => None,
            })
        })
        .await;
    assert!(opened.contains(&extra));
    // The two kept are what the next three requests at once find; the
    // third opens a new connection.
    let second = ["/d", "/e", "/f"].map(|p| spawn_get(proxy.addr, p));
    let mut reused = HashSet::new();
    for path in ["/d", "/e"] {
        reused.insert(up.peer_of(path).await);
    }
    let kept: HashSet<_> = opened.iter().copied().filter(|p| *p != extra).collect();
    assert_eq!(reused, kept);
    assert!(!opened.contains(&up.peer_of("/f").await));
    assert_eq!(up.closed_now(), HashSet::from([extra]));
    for (path, request) in ["/d", "/e", "/f"].into_iter().zip(second) {
        gates.open(path);
        answered(request, path).await;
    }
}

#[tokio::test]
async fn with_max_idle_per_server_zero_no_connection_is_kept() {
    let up = tracked(ok).await;
    let proxy = in_process(&simple_config(
        &[up.addr],
        "max_idle_per_server = 0\nidle_timeout = \"1h\"",
    ))
    .await;
    let mut client = H1::connect(proxy.addr).await;
    let mut peers = HashSet::new();
    for path in ["/1", "/2", "/3"] {
        assert_eq!(client.get(path, &[]).await.status, StatusCode::OK);
        let peer = up.peer_of(path).await;
        up.closed(peer).await;
        peers.insert(peer);
    }
    assert_eq!(peers.len(), 3);
}

/// A body without a length (chunked, as streaming backends send) ends when
/// its last chunk is read; the connection is as clean as after a
/// `Content-Length` body.
#[tokio::test]
async fn a_chunked_response_read_to_the_end_returns_its_connection_to_the_pool() {
    let up = tracked(|_req| async move {
        let chunks = ["one ", "two"].map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from(c))));
        Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
    })
    .await;
    let proxy = in_process(&simple_config(&[up.addr], "")).await;
    let mut client = H1::connect(proxy.addr).await;
    for path in ["/1", "/2", "/3"] {
        let reply = client.get(path, &[]).await;
        assert_eq!(reply.text(), "one two");
        assert_eq!(
            reply.headers.get("transfer-encoding").unwrap(),
            "chunked",
            "the body must not have a length for this test"
        );
    }
    let first = up.peer_of("/1").await;
    assert_eq!(up.peer_of("/2").await, first, "not reused after /1");
    assert_eq!(up.peer_of("/3").await, first, "not reused after /2");
    assert!(up.closed_now().is_empty(), "{:?}", up.closed_now());
}
