//! Retries and `fail_timeout`, on tokio's paused clock (the proxy runs
//! in-process over real loopback sockets): a connect failure (refused or
//! timed out) is retried once on another server, and the failed server is
//! skipped for `fail_timeout`, then tried again.
//!
//! A refusing server here is a socket bound but not listening, which can be
//! made to listen later: a server that is skipped gets no connection even
//! once it would answer, and one that is tried again answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A server that refuses connections until it is started.
struct Dormant {
    socket: socket2::Socket,
    addr: SocketAddr,
}

impl Dormant {
    /// Bound, so the port stays ours and connections to it are refused, but
    /// not listening.
    fn new() -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Self { socket, addr }
    }

    /// From now on, corral's echo server named `name` answers on the
    /// address, until the guard is dropped.
    fn start(self, name: &str) -> DropGuard {
        self.socket.listen(128).unwrap();
        self.socket.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(self.socket.into()).unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(corral::echo::serve(listener, name.to_owned(), stop.clone()));
        stop.drop_guard()
    }
}

/// A server whose connects hang: its accept queue is full, so the kernel
/// drops further SYNs. Both sockets must stay open.
fn hanging() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (socket, filler, addr)
}

/// One GET on a fresh connection: its status, backend and how long it took.
async fn timed_get(addr: SocketAddr) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let reply = get(addr, "/", &[]).await;
    (reply.status, reply.backend(), started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_refused_server_is_skipped_for_fail_timeout_then_tried_again() {
    const FAIL_TIMEOUT: Duration = Duration::from_secs(30);
    let a = Dormant::new();
    let b = echo("b").await;
    let config = simple_config(&[a.addr, b.addr], "fail_timeout = \"30s\"");
    let proxy = in_process(&config).await;
    let before = Instant::now();
    // Round robin gives `a` one of the first two turns; it refuses, and the
    // request is retried on `b`.
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/", &[]).await.backend(), "b");
    }
    let failed_by = Instant::now();
    // `a` answers from now on, so a turn given to it would show.
    let _a = a.start("a");
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/", &[]).await.backend(), "b");
    }
    // Late in the window (measured from before `a` could have failed),
    // `a` is still skipped: the configured 30 s count, not the default 10 s.
    tokio::time::sleep_until(before + FAIL_TIMEOUT - Duration::from_secs(5)).await;
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/", &[]).await.backend(), "b");
    }
    assert!(
        Instant::now() < before + FAIL_TIMEOUT,
        "the window check ran late: {:?}",
        Instant::now() - before
    );
    // Once the window is over (measured from after `a` failed), `a` gets
    // its turns again.
    tokio::time::sleep_until(failed_by + FAIL_TIMEOUT).await;
    let mut backends = HashSet::new();
    for _ in 0..2 {
        backends.insert(get(proxy.addr, "/", &[]).await.backend());
    }
    assert_eq!(backends, HashSet::from(["a".to_owned(), "b".to_owned()]));
}

#[tokio::test(start_paused = true)]
async fn a_connect_timeout_is_retried_on_another_server() {
    let (_socket, _filler, stuck) = hanging();
    let good = echo("good").await;
    let config = simple_config(&[stuck, good.addr], "connect_timeout = \"2s\"");
    let proxy = in_process(&config).await;
    // Round robin gives the hanging server one of the first two turns: that
    // request waits out the connect timeout and is answered by `good`. The
    // other goes straight to `good`, also when it comes second, since a
    // timed-out server is skipped like a refusing one.
    let first = timed_get(proxy.addr).await;
    let second = timed_get(proxy.addr).await;
    for (status, backend, _) in [&first, &second] {
        assert_eq!((*status, backend.as_str()), (StatusCode::OK, "good"));
    }
    let mut took = [first.2, second.2];
    took.sort();
    assert!(took[0] < Duration::from_secs(1), "{took:?}");
    assert!(
        took[1] >= Duration::from_secs(2) && took[1] < Duration::from_secs(3),
        "{took:?}"
    );
}

/// "Retried once": of three refusing servers, a request tries two. The two
/// it tried are then skipped for `fail_timeout`, so once all three answer,
/// every request goes to the one it did not try. (Had it tried all three,
/// all three would be skipped, and so, as nginx does, none would be; had it
/// tried one, two would share the requests.)
#[tokio::test(start_paused = true)]
async fn a_request_to_refusing_servers_tries_two_of_them_then_gets_502() {
    let dormant: Vec<Dormant> = (0..3).map(|_| Dormant::new()).collect();
    let addrs: Vec<SocketAddr> = dormant.iter().map(|d| d.addr).collect();
    let proxy = in_process(&simple_config(&addrs, "fail_timeout = \"1h\"")).await;
    let reply = get(proxy.addr, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "502 Bad Gateway: upstream unreachable\n");
    let _servers: Vec<DropGuard> = dormant
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.start(&format!("s{i}")))
        .collect();
    let mut backends = HashSet::new();
    for _ in 0..6 {
        let reply = get(proxy.addr, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        backends.insert(reply.backend());
    }
    assert_eq!(backends.len(), 1, "requests went to {backends:?}");
}

/// "Retried once", timed: of three servers whose connects hang, a request
/// waits out two connect timeouts, not three, then gets 504.
#[tokio::test(start_paused = true)]
async fn a_request_to_hanging_servers_waits_out_two_connect_timeouts_then_gets_504() {
    let hung: Vec<_> = (0..3).map(|_| hanging()).collect();
    let addrs: Vec<SocketAddr> = hung.iter().map(|(_, _, addr)| *addr).collect();
    let proxy = in_process(&simple_config(&addrs, "connect_timeout = \"2s\"")).await;
    let started = Instant::now();
    let reply = get(proxy.addr, "/", &[]).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "504 Gateway Timeout: upstream timed out\n");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}
