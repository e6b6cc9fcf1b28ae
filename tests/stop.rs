//! Graceful stop (README "Signals"): what SIGTERM and SIGINT promise beyond
//! finishing a request in flight (tests/cluster.rs has that): the cut at
//! `runtime.shutdown_timeout`, the GOAWAY that HTTP/2 clients get, and how
//! idle and busy HTTP/1.1 keep-alive connections are closed while a worker
//! drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// `config` with a heartbeat timeout that CPU starvation on a loaded test
/// machine cannot hit, and `shutdown_timeout` set to `shutdown`.
fn stop_config(config: String, shutdown: &str) -> String {
    let config = if config.contains("heartbeat_timeout") {
        config
    } else {
        config.replace("[runtime]\n", "[runtime]\nheartbeat_timeout = \"10s\"\n")
    };
    config.replace(
        "shutdown_timeout = \"5s\"",
        &format!("shutdown_timeout = \"{shutdown}\""),
    )
}

fn alive(pid: u64) -> bool {
    // Zombies count as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// An upstream that never answers; the receiver completes when the first
/// request has arrived.
async fn never_answers() -> (Upstream, tokio::sync::oneshot::Receiver<()>) {
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let arrived = Arc::new(Mutex::new(Some(arrived_tx)));
    let up = upstream(move |_req| {
        if let Some(arrived) = arrived.lock().unwrap().take() {
            arrived.send(()).unwrap();
        }
        std::future::pending::<Response<TestBody>>()
    })
    .await;
    (up, arrived_rx)
}

/// A keep-alive HTTP/1.1 client connection whose driver the test keeps: it
/// ends `Ok` when the server closes the idle connection.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        Self {
            sender,
            driver: tokio::spawn(conn),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let request = Request::get(path)
            .header("host", "keepalive.test")
            .body(empty())
            .unwrap();
        self.sender.ready().await.unwrap();
        read(self.sender.send_request(request).await.unwrap()).await
    }

    /// Waits for the connection to end; `Ok` means the server closed it cleanly.
    async fn closed(self) -> Result<(), hyper::Error> {
        tokio::time::timeout(PATIENCE, self.driver)
            .await
            .expect("the connection was never closed")
            .unwrap()
    }
}

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame as it came off the wire.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Bytes,
}

impl Frame {
    /// A GOAWAY's (last stream id, error code).
    fn goaway(&self) -> (u32, u32) {
        assert_eq!(self.kind, FRAME_GOAWAY);
        let mut p = self.payload.clone();
        (p.get_u32() & 0x7fff_ffff, p.get_u32())
    }
}

/// An h2c (prior knowledge) client that speaks frames, so the test sees
/// exactly what corral sends: hyper's client would act on a GOAWAY without
/// showing it. It acknowledges SETTINGS and PING as any client must (the
/// server's graceful shutdown waits for a PING's answer before its final
/// GOAWAY).
struct RawH2 {
    stream: TcpStream,
}

impl RawH2 {
    /// Connects and waits for the server's SETTINGS, so corral has accepted
    /// and is serving the connection.
    async fn connect(addr: SocketAddr) -> Self {
        let mut h2 = Self {
            stream: TcpStream::connect(addr).await.unwrap(),
        };
        let mut hello = BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
        put_frame(&mut hello, FRAME_SETTINGS, 0, 0, &[]);
        h2.stream.write_all(&hello).await.unwrap();
        loop {
            let frame = h2.next().await.expect("closed before its SETTINGS");
            if frame.kind == FRAME_SETTINGS && frame.flags & FLAG_ACK == 0 {
                return h2;
            }
        }
    }

    /// Opens stream `id` with a GET of `path`.
    async fn get(&mut self, id: u32, path: &str) {
        // HPACK: :method GET, :scheme http (static table entries 2 and 6),
        // then :path and :authority as literals named by entries 4 and 1.
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 7]);
        block.extend_from_slice(b"h2.test");
        let mut frame = BytesMut::new();
        put_frame(
            &mut frame,
            FRAME_HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            id,
            &block,
        );
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame, or `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            match self.stream.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) => panic!("reading a frame: {e}"),
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.unwrap();
            Some(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload: payload.into(),
            })
        };
        let frame = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("no frame and no close")?;
        let ack = match frame.kind {
            FRAME_SETTINGS | FRAME_PING if frame.flags & FLAG_ACK == 0 => Some(&frame.payload),
            _ => None,
        };
        if let Some(payload) = ack {
            // A SETTINGS ACK carries no payload; a PING ACK echoes the ping's.
            let payload = if frame.kind == FRAME_PING {
                &payload[..]
            } else {
                &[][..]
            };
            let mut reply = BytesMut::new();
            put_frame(&mut reply, frame.kind, FLAG_ACK, 0, payload);
            // The server may already have closed after its last GOAWAY.
            let _ = self.stream.write_all(&reply).await;
        }
        Some(frame)
    }

    /// Every frame until the server closes the connection.
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

fn put_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

#[tokio::test]
async fn a_request_still_in_flight_at_the_shutdown_timeout_is_cut_and_the_master_exits_0_then() {
    const SHUTDOWN: Duration = Duration::from_secs(2);
    let (app, arrived) = never_answers().await;
    let mut corral = Corral::start(&stop_config(simple_config(&[app.addr], ""), "2s")).await;
    let addr = corral.addr("public");
    let in_flight = tokio::spawn(async move {
        let mut conn = H1::connect(addr).await;
        let request = Request::get("/forever")
            .header("host", "stop.test")
            .body(empty())
            .unwrap();
        let outcome = conn.send(request).await.map(|r| r.status());
        (outcome, Instant::now())
    });
    arrived.await.unwrap();
    let signalled = Instant::now();
    corral.signal(Signal::SIGTERM);
    assert_eq!(corral.wait_exit().await, Some(0));
    let exited = signalled.elapsed();
    let (outcome, cut_at) = in_flight.await.unwrap();
    let cut = cut_at.duration_since(signalled);
    assert!(
        outcome.is_err(),
        "the request was answered instead of cut: {outcome:?}"
    );
    assert!(
        cut >= SHUTDOWN,
        "cut {cut:?} after SIGTERM, before the timeout"
    );
    assert!(exited >= SHUTDOWN, "exited {exited:?} after SIGTERM");
    // Generous for a loaded machine; a stop that ignored the setting would
    // wait out the upstream (forever) or the 30 s default.
    assert!(
        exited < SHUTDOWN + Duration::from_secs(8),
        "exited {exited:?} after SIGTERM"
    );
    // The worker cut it itself: the master's backstop, a second later,
    // would kill the worker instead.
    let line = corral
        .wait_for_log("drain timeout passed; closed remaining connections")
        .await;
    assert!(line.contains("open=1"), "{line}");
}

#[tokio::test]
async fn sigterm_sends_http2_clients_a_goaway_and_still_finishes_their_streams() {
    let (app, arrived, release) = holding().await;
    let mut corral = Corral::start(&stop_config(cluster_config(&[app.addr], ""), "30s")).await;
    let workers = corral.worker_pids().await.len();
    let addr = corral.addr("public");
    let mut busy = RawH2::connect(addr).await;
    busy.get(1, "/slow").await;
    arrived.await.unwrap();
    let mut idle = RawH2::connect(addr).await;
    // And a real client's idle connection, which has served a request.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let request = Request::get("http://h2.test/").body(empty()).unwrap();
    assert_eq!(
        read(sender.send_request(request).await.unwrap())
            .await
            .status,
        StatusCode::OK
    );

    corral.signal(Signal::SIGTERM);
    corral
        .wait_for_logs("draining on the master's request", workers)
        .await;

    // The idle connection: GOAWAY (no error, no stream of its own), then
    // closed by corral.
    let frames = idle.until_closed().await;
    let goaways: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.kind == FRAME_GOAWAY)
        .map(Frame::goaway)
        .collect();
    assert!(!goaways.is_empty(), "closed without a GOAWAY: {frames:?}");
    assert!(goaways.iter().all(|&(_, code)| code == 0), "{goaways:?}");
    assert_eq!(goaways.last().unwrap().0, 0, "{goaways:?}");

    // hyper's client ends its connection cleanly on it, and takes no more
    // requests there.
    let ended = tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("the idle h2 connection was never closed")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let request = Request::get("http://h2.test/").body(empty()).unwrap();
    assert!(sender.send_request(request).await.is_err());

    // The busy connection: the GOAWAY comes while its stream is in flight...
    loop {
        let frame = busy
            .next()
            .await
            .expect("closed while a stream was in flight");
        assert_ne!(
            frame.stream, 1,
            "stream 1 answered before release: {frame:?}"
        );
        if frame.kind == FRAME_GOAWAY {
            assert_eq!(frame.goaway().1, 0, "{frame:?}");
            break;
        }
    }
    // ...and the stream still completes before corral closes it.
    release.send(()).unwrap();
    let frames = busy.until_closed().await;
    let headers = frames
        .iter()
        .find(|f| f.kind == FRAME_HEADERS && f.stream == 1)
        .unwrap_or_else(|| panic!("no response headers: {frames:?}"));
    // HPACK static table entry 8 is `:status: 200`.
    assert_eq!(headers.payload.first(), Some(&0x88), "{headers:?}");
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == FRAME_DATA && f.stream == 1)
        .flat_map(|f| f.payload.to_vec())
        .collect();
    assert_eq!(body, b"done");
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 1 && f.flags & FLAG_END_STREAM != 0),
        "stream 1 never ended: {frames:?}"
    );
    // The final GOAWAY (after the client answered the server's PING) names
    // stream 1 as the last one the server is finishing.
    let last = frames
        .iter()
        .rev()
        .find(|f| f.kind == FRAME_GOAWAY)
        .unwrap_or_else(|| panic!("no final GOAWAY: {frames:?}"));
    assert_eq!(last.goaway(), (1, 0), "{frames:?}");
    assert_eq!(corral.wait_exit().await, Some(0));
}

/// DRAIN_IDLE in src/worker/conn.rs.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn draining_closes_idle_keepalive_connections_after_5s_and_answers_others_with_close() {
    let (app, arrived, release) = holding().await;
    // One worker, so every connection is on the worker that drains; the
    // stop lasts (a request held, a long shutdown_timeout) so that only
    // corral's idle rule can close the idle connection.
    let config =
        stop_config(simple_config(&[app.addr], ""), "30s").replace("workers = 2", "workers = 1");
    let mut corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let held = tokio::spawn(async move { get(addr, "/held", &[]).await });
    arrived.await.unwrap();
    let mut busy = KeepAlive::connect(addr).await;
    assert_eq!(busy.get("/").await.status, StatusCode::OK);
    let mut idle = KeepAlive::connect(addr).await;
    let idle_from = Instant::now();
    assert_eq!(idle.get("/").await.status, StatusCode::OK);

    let signalled = Instant::now();
    corral.signal(Signal::SIGTERM);
    corral
        .wait_for_log("draining on the master's request")
        .await;

    // A keep-alive connection that asks during the drain is answered and
    // told the connection closes.
    let reply = busy.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    assert!(busy.closed().await.is_ok());

    let ended = idle.closed().await;
    let idle_for = idle_from.elapsed();
    let into_drain = signalled.elapsed();
    assert!(ended.is_ok(), "{ended:?}");
    // corral counts idleness from the end of the response, which came
    // after `idle_from`; 100 ms for its millisecond clock.
    assert!(
        idle_for >= DRAIN_IDLE - Duration::from_millis(100),
        "closed after {idle_for:?} idle"
    );
    // Generous for a loaded machine, and far from the 30 s shutdown_timeout
    // and the 60 s keepalive_timeout.
    assert!(
        into_drain < Duration::from_secs(12),
        "closed {into_drain:?} into the drain"
    );
    assert!(!held.is_finished(), "the drain ended early");

    release.send(()).unwrap();
    let reply = held.await.unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "done")
    );
    assert_eq!(corral.wait_exit().await, Some(0));
}

#[tokio::test]
async fn sigint_stops_gracefully_like_sigterm() {
    let (app, arrived, release) = holding().await;
    let mut corral = Corral::start(&stop_config(cluster_config(&[app.addr], ""), "30s")).await;
    let workers = corral.worker_pids().await;
    let addr = corral.addr("public");
    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    arrived.await.unwrap();
    corral.signal(Signal::SIGINT);
    corral
        .wait_for_notice("STOPPING=1", Notice::is_stopping)
        .await;
    corral
        .wait_for_logs("draining on the master's request", workers.len())
        .await;
    release.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "done")
    );
    assert_eq!(reply.headers["connection"], "close");
    assert_eq!(corral.wait_exit().await, Some(0));
    for w in &workers {
        assert!(!alive(*w), "worker {w} outlived the master");
    }
}
