//! HTTP/2 abuse, each attack on raw frames against the real binary (one
//! worker, so that the attacker and a well-behaved client share it): rapid
//! reset of accepted streams, MadeYouReset, a burst of streams reset before
//! they are accepted, CONTINUATION, PING and SETTINGS floods, streams beyond
//! the advertised limit, responses the client's window never lets out. Each
//! ends with GOAWAY(ENHANCE_YOUR_CALM) within a bound, the well-behaved
//! client served between the attack's steps and after it, the worker's
//! memory bounded, and every upstream request of the abusive connection
//! cancelled. Then, in-process: a stream the client resets cancels its
//! upstream request (an HTTP/1.1 connection closed, an h2 stream reset),
//! and an upstream connection half read is never pooled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod raw;
mod upstream;

use std::net::SocketAddr;

use common::*;
use raw::*;
use upstream::{Bystander, Upstream};

/// How much the worker's peak memory may pass its resident size before the
/// attack: room for the attack's streams and buffers, far below what an
/// unbounded queue of answers or streams would take.
const MEMORY_BOUND_KIB: u64 = 16 << 10;

/// corral with one worker in front of a recording upstream, and a
/// well-behaved client being served.
struct Setup {
    corral: Corral,
    up: Upstream,
    addr: SocketAddr,
    bystander: Bystander,
    worker: u64,
    resident_kib: u64,
}

async fn setup(listener_settings: &str) -> Setup {
    let up = Upstream::start().await;
    let config = listener_config(up.addr, listener_settings)
        .replace("workers = 2", "workers = 1")
        .replace(
            "[[listeners]]",
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]",
        );
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let worker = corral.worker_pids().await[0];
    let bystander = Bystander::start(addr).await;
    let resident_kib = memory_kib(worker, "VmRSS:");
    Setup {
        corral,
        up,
        addr,
        bystander,
        worker,
        resident_kib,
    }
}

impl Setup {
    /// The bystander was served throughout, the worker's memory stayed
    /// bounded, and the abusive connection's upstream requests were all
    /// cancelled.
    async fn finish(self) {
        self.up
            .wait("every held request cancelled", |s| {
                s.conns("/hold")
                    .iter()
                    .chain(&s.conns("/long"))
                    .all(|c| s.closed.contains(c))
            })
            .await;
        self.bystander.finish().await;
        let peak = memory_kib(self.worker, "VmHWM:");
        eprintln!(
            "worker: {} KiB resident before, {peak} KiB peak",
            self.resident_kib
        );
        assert!(
            peak < self.resident_kib + MEMORY_BOUND_KIB,
            "worker peaked at {peak} KiB from {} KiB",
            self.resident_kib
        );
        drop(self.corral);
    }
}

/// A field of /proc/PID/status, in KiB.
fn memory_kib(pid: u64, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Sends `frames` over and over, the bystander served between two sends,
/// until the server answers with GOAWAY or closes; how many of `frames` the
/// server answered (`answer` says which frames are answers), and the
/// GOAWAY's code and debug data.
async fn flood(
    s: &Setup,
    attacker: &mut Raw,
    frames: &[u8],
    answer: impl Fn(&Received) -> bool,
) -> (usize, Option<(u32, String)>) {
    for _ in 0..20 {
        if !attacker.send(frames).await {
            break;
        }
        s.bystander.served_more(1).await;
    }
    let mut answered = 0;
    let goaway = attacker
        .until(|f| {
            answered += usize::from(answer(f));
            f.kind == GOAWAY
        })
        .await;
    let goaway = goaway.map(|f| {
        (
            f.word(4),
            String::from_utf8_lossy(&f.payload[8..]).into_owned(),
        )
    });
    (answered, goaway)
}

#[tokio::test]
async fn a_ping_flood_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    let pings: Vec<u8> = (0..200).flat_map(|_| ping()).collect();
    let (acked, goaway) = flood(&s, &mut attacker, &pings, |f| f.kind == PING).await;
    assert_eq!(
        goaway,
        Some((ENHANCE_YOUR_CALM, "control frame flood".into()))
    );
    assert!(acked < 20 * 200, "{acked} PINGs answered");
    s.finish().await;
}

#[tokio::test]
async fn a_settings_flood_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    let one = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]);
    let frames: Vec<u8> = (0..200).flat_map(|_| one.clone()).collect();
    let is_ack = |f: &Received| f.kind == SETTINGS && f.flags & ACK != 0;
    let (acked, goaway) = flood(&s, &mut attacker, &frames, is_ack).await;
    assert_eq!(
        goaway,
        Some((ENHANCE_YOUR_CALM, "control frame flood".into()))
    );
    assert!(acked < 20 * 200, "{acked} SETTINGS acknowledged");
    s.finish().await;
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    // A header block that never ends: one small field a frame.
    let mut frames = frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]);
    for _ in 0..1000 {
        frames.extend(frame(
            CONTINUATION,
            0,
            1,
            &[0x00, 0x03, b'x', b'-', b'a', 0x01, b'b'],
        ));
    }
    attacker.send(&frames).await;
    let (code, _) = attacker.goaway().await.expect("closed without GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    s.finish().await;
}

/// Rounds of 99 requests for `/hold`, each round waited for at the
/// upstream (so every stream was taken up and its upstream request
/// started), then each stream given `end`, then a PING. Ends at the GOAWAY
/// (its code), or once `rounds` rounds were all answered (`None`).
async fn rounds_of(
    s: &Setup,
    attacker: &mut Raw,
    rounds: usize,
    end: impl Fn(u32) -> Vec<u8>,
) -> Option<u32> {
    for round in 0..rounds as u32 {
        let streams: Vec<u32> = (0..99).map(|i| 1 + 2 * (99 * round + i)).collect();
        let held = s.up.seen(|seen| seen.count("/hold"));
        let requests: Vec<u8> = streams
            .iter()
            .flat_map(|&id| request(id, "/hold"))
            .collect();
        // corral may have tripped on the last round's resets, after the
        // PING that closed that round, and closed the connection since.
        if !attacker.send(&requests).await {
            return attacker.goaway().await.map(|(code, _)| code);
        }
        tokio::select! {
            () = s.up.wait("a round of requests", |seen| seen.count("/hold") == held + 99) => {}
            goaway = attacker.goaway() => return goaway.map(|(code, _)| code),
        }
        let mut ends: Vec<u8> = streams.iter().flat_map(|&id| end(id)).collect();
        ends.extend(ping());
        attacker.send(&ends).await;
        let answer = attacker
            .until(|f| f.kind == GOAWAY || (f.kind == PING && f.flags & ACK != 0))
            .await
            .expect("closed without GOAWAY");
        if answer.kind == GOAWAY {
            return Some(answer.word(4));
        }
        s.bystander.served_more(1).await;
    }
    None
}

#[tokio::test]
async fn rapid_reset_of_accepted_streams_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    let goaway = rounds_of(&s, &mut attacker, 10, |id| rst(id, CANCEL)).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    s.finish().await;
}

#[tokio::test]
async fn made_you_reset_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    // Fewer than h2's own limit of resets over a connection's life (1024).
    let goaway = rounds_of(&s, &mut attacker, 8, self_dependent).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    let resets = attacker.received[usize::from(RST_STREAM)];
    assert!(resets >= 99, "corral reset {resets} streams");
    s.finish().await;
}

#[tokio::test]
async fn a_burst_of_streams_reset_before_they_are_taken_up_gets_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    let burst: Vec<u8> = (0..500u32)
        .flat_map(|i| [request(2 * i + 1, "/hold"), rst(2 * i + 1, CANCEL)].concat())
        .collect();
    attacker.send(&burst).await;
    let (code, _) = attacker.goaway().await.expect("closed without GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    s.finish().await;
}

#[tokio::test]
async fn streams_beyond_the_advertised_limit_are_refused_then_goaway() {
    let s = setup("").await;
    let mut attacker = Raw::connect(s.addr, &[]).await;
    assert!(
        attacker
            .server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 100))
    );
    let open: Vec<u8> = (0..100u32)
        .flat_map(|i| request(2 * i + 1, "/hold"))
        .collect();
    attacker.send(&open).await;
    s.up.wait("100 requests", |seen| seen.count("/hold") == 100)
        .await;
    // Fewer than h2's own limit of refusals over a connection's life (1024).
    let mut refused = 0;
    let mut goaway = None;
    for batch in 0..9u32 {
        let mut more: Vec<u8> = (0..100u32)
            .flat_map(|i| request(201 + 2 * (100 * batch + i), "/hold"))
            .collect();
        more.extend(ping());
        attacker.send(&more).await;
        let answer = attacker
            .until(|f| {
                refused += usize::from(f.kind == RST_STREAM && f.word(0) == REFUSED_STREAM);
                f.kind == GOAWAY || (f.kind == PING && f.flags & ACK != 0)
            })
            .await
            .expect("closed without GOAWAY");
        if answer.kind == GOAWAY {
            goaway = Some(answer.word(4));
            break;
        }
        s.bystander.served_more(1).await;
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(refused >= 100, "{refused} streams refused");
    assert_eq!(s.up.seen(|seen| seen.count("/hold")), 100);
    s.finish().await;
}

#[tokio::test]
async fn responses_the_client_window_never_lets_out_get_goaway_after_the_body_timeout() {
    let s = setup("body_timeout = \"1s\"").await;
    let mut attacker = Raw::connect(s.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let open: Vec<u8> = (0..10u32)
        .flat_map(|i| request(2 * i + 1, "/long"))
        .collect();
    attacker.send(&open).await;
    s.up.wait("10 requests", |seen| seen.count("/long") == 10)
        .await;
    let (mut heads, mut data) = (0, 0);
    let goaway = attacker
        .until(|f| {
            heads += usize::from(f.kind == HEADERS);
            data += usize::from(f.kind == DATA);
            f.kind == GOAWAY
        })
        .await
        .expect("closed without GOAWAY");
    s.bystander.served_more(3).await;
    assert_eq!(
        (goaway.word(4), &goaway.payload[8..]),
        (ENHANCE_YOUR_CALM, &b"responses stalled by flow control"[..])
    );
    assert_eq!((heads, data), (10, 0));
    s.finish().await;
}

#[tokio::test]
async fn a_client_that_pings_with_every_request_is_never_cut_off() {
    let s = setup("").await;
    let mut client = Raw::connect(s.addr, &[]).await;
    // More PINGs than the control budget holds, each paid for by a request.
    for batch in 0..30u32 {
        let mut frames = Vec::new();
        for i in 0..50 {
            frames.extend(request(1 + 2 * (50 * batch + i), "/"));
            frames.extend(ping());
        }
        assert!(client.send(&frames).await);
        let mut done = 0;
        let last = client
            .until(|f| {
                done += usize::from(f.kind == DATA && f.flags & END_STREAM != 0);
                done == 50 || f.kind == GOAWAY
            })
            .await
            .expect("connection closed");
        assert_ne!(last.kind, GOAWAY, "cut off after {batch} batches");
    }
    s.finish().await;
}

mod cancelled {
    //! In-process: what a reset stream does to its upstream request.

    use std::sync::Arc;

    use http::{Request, Response};
    use hyper::body::Incoming;
    use tokio::sync::watch;

    use super::*;

    #[tokio::test]
    async fn a_stream_reset_before_its_response_closes_its_http1_upstream_connection() {
        let up = Upstream::start().await;
        let proxy = in_process(&simple_config(&[up.addr], "")).await;
        let mut client = Raw::connect(proxy.addr, &[]).await;
        client.send(&request(1, "/hold")).await;
        up.wait("the request", |s| s.count("/hold") == 1).await;
        let held = up.seen(|s| s.conns("/hold")[0]);
        client.send(&rst(1, CANCEL)).await;
        up.wait("its connection closed", |s| s.closed.contains(&held))
            .await;
    }

    #[tokio::test]
    async fn an_upstream_connection_whose_response_a_reset_stream_left_half_read_is_never_reused() {
        let up = Upstream::start().await;
        let proxy = in_process(&simple_config(&[up.addr], "")).await;
        let mut client = Raw::connect(proxy.addr, &[]).await;
        client.send(&request(1, "/long")).await;
        client
            .until(|f| f.kind == DATA && f.stream == 1)
            .await
            .expect("no body");
        let half_read = up.seen(|s| s.conns("/long")[0]);
        client.send(&rst(1, CANCEL)).await;
        up.wait("its connection closed", |s| s.closed.contains(&half_read))
            .await;
        client.send(&request(3, "/next")).await;
        let done = client
            .until(|f| f.kind == DATA && f.stream == 3 && f.flags & END_STREAM != 0)
            .await;
        assert_eq!(done.map(|f| f.payload), Some(b"ok".to_vec()));
        assert_ne!(up.seen(|s| s.conns("/next")), vec![half_read]);
    }

    /// Counts on drop: the upstream's handler was cancelled.
    struct Cancelled(Arc<watch::Sender<usize>>);

    impl Drop for Cancelled {
        fn drop(&mut self) {
            self.0.send_modify(|n| *n += 1);
        }
    }

    #[tokio::test]
    async fn a_stream_reset_before_its_response_resets_its_stream_at_an_h2_upstream() {
        let arrived = Arc::new(watch::Sender::new(0usize));
        let cancelled = Arc::new(watch::Sender::new(0usize));
        let (a, c) = (arrived.clone(), cancelled.clone());
        let up = common::upstream(move |_req: Request<Incoming>| {
            let (a, c) = (a.clone(), c.clone());
            async move {
                let _cancelled = Cancelled(c);
                a.send_modify(|n| *n += 1);
                std::future::pending::<Response<TestBody>>().await
            }
        })
        .await;
        let proxy = in_process(&simple_config(&[up.addr], "protocol = \"h2\"")).await;
        let mut client = Raw::connect(proxy.addr, &[]).await;
        client.send(&request(1, "/hold")).await;
        patiently("the request", arrived.subscribe().wait_for(|&n| n == 1))
            .await
            .unwrap();
        client.send(&rst(1, CANCEL)).await;
        patiently(
            "its upstream stream reset",
            cancelled.subscribe().wait_for(|&n| n == 1),
        )
        .await
        .unwrap();
    }
}
