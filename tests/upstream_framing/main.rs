//! corral's HTTP/1.1 upstream client held to RFC 9112 and to upstreams that
//! lie, from outside: the real binary (one worker, so one connection pool)
//! in front of a raw upstream that answers with exact scripted bytes and
//! records each connection it accepted. Each case asserts what the client
//! got (status, headers, body, and whether the body was cut) and whether the
//! upstream connection was reused for the next request.
//!
//! - `valid`: every framing RFC 9112 §6.3 allows, 1xx, split and joined
//!   writes: relayed whole, the connection reused unless it cannot be.
//! - `lies`: framing that cannot be trusted: a 502 (or, once the head has
//!   gone out, a cut body), and the connection closed, never lent again.
//! - `codings`: `Transfer-Encoding` values, valid and not.
//! - `pooling`: idle connections the upstream closed or wrote junk on,
//!   junk after a response, an answer before the request body was sent.
//! - `upgrades`: Pingora's upgrade advisories as regression classes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod client;
mod codings;
mod lies;
mod pooling;
mod upgrades;
mod valid;

use std::net::SocketAddr;

use client::{Ending, Got, fetch};
use common::*;

/// corral with one worker in front of a scripted upstream.
struct Fixture {
    _corral: Corral,
    up: Scripted,
    addr: SocketAddr,
}

/// [`fixture_with`] without listener settings.
async fn fixture(script: impl Fn(&Arrived) -> Wire + Send + Sync + 'static) -> Fixture {
    fixture_with("", script).await
}

/// corral, its listener with `settings`, in front of an upstream that
/// answers with `script`.
async fn fixture_with(
    settings: &str,
    script: impl Fn(&Arrived) -> Wire + Send + Sync + 'static,
) -> Fixture {
    let up = scripted(script).await;
    // One worker: every request of a test shares one pool, whichever
    // client connection it comes on.
    let config = listener_config(up.addr, settings).replace("workers = 2", "workers = 1");
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    Fixture {
        _corral: corral,
        up,
        addr,
    }
}

/// A script answering each target in `cases` with its wire, and anything
/// else with [`Wire::target`].
fn by_target(cases: Vec<(String, Wire)>) -> impl Fn(&Arrived) -> Wire + Send + Sync + 'static {
    move |arrived| {
        cases
            .iter()
            .find(|(target, _)| *target == arrived.target)
            .map_or_else(|| Wire::target(arrived), |(_, wire)| wire.clone())
    }
}

/// A fixture whose upstream answers `/case` with `wire`.
async fn one_case(wire: Wire) -> Fixture {
    fixture(by_target(vec![("/case".into(), wire)])).await
}

impl Fixture {
    /// GET `path` on a new client connection; the upstream connection it
    /// went on, and what the client got.
    async fn get(&self, path: &str) -> (usize, Got) {
        let got = fetch(self.addr, path).await;
        (self.up.conn_of(path).await, got)
    }

    /// GET `next` after a request that went on `previous`: it is answered
    /// as its own request; whether it reused `previous`.
    async fn next_reuses(&self, previous: usize, next: &str) -> bool {
        let (conn, got) = self.get(next).await;
        assert_eq!((got.status, got.text().as_str()), (200, next), "{got:?}");
        assert_eq!(got.ending, Ending::Complete);
        conn == previous
    }

    /// The request for `path` went on a connection that corral closed and
    /// lent to no later request: the next one goes on another.
    async fn dropped(&self, path: &str, case: &str) {
        if let Some(failure) = self.check_dropped(path, case).await {
            panic!("{failure}");
        }
    }

    /// [`Fixture::dropped`], saying what went wrong instead of panicking.
    async fn check_dropped(&self, path: &str, case: &str) -> Option<String> {
        let conn = self.up.conn_of(path).await;
        if self.next_reuses(conn, &format!("{path}/next")).await {
            return Some(format!("{case:?}: its connection was reused"));
        }
        self.up.closed(conn).await;
        None
    }

    /// Each of `lies`, the answer to a GET, gets the client a 502 and the
    /// connection is dropped. Every case is tried; the failures are listed
    /// together.
    async fn refuses(&self, lies: &[(&str, Wire)]) {
        let mut failures = Vec::new();
        for (i, (case, _)) in lies.iter().enumerate() {
            let path = format!("/lie/{i}");
            let got = fetch(self.addr, &path).await;
            if got.status != 502 {
                failures.push(format!("{case:?}: the client got {got:?}"));
            }
            failures.extend(self.check_dropped(&path, case).await);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Each of `lies`, the answer to a GET whose head may already have
    /// gone out, gets the client a 502 or a cut body (or no answer at
    /// all), never a complete one; and the connection is dropped.
    async fn cuts(&self, lies: &[(&str, Wire)]) {
        let mut failures = Vec::new();
        for (i, (case, _)) in lies.iter().enumerate() {
            let path = format!("/lie/{i}");
            let got = fetch(self.addr, &path).await;
            if got.status != 502 && got.ending == Ending::Complete {
                failures.push(format!("{case:?}: the client got {got:?}"));
            }
            failures.extend(self.check_dropped(&path, case).await);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// A fixture whose upstream answers `/lie/{i}` with the i-th of `lies`.
async fn lying(settings: &str, lies: &[(&str, Wire)]) -> Fixture {
    let cases = lies
        .iter()
        .enumerate()
        .map(|(i, (_, wire))| (format!("/lie/{i}"), wire.clone()))
        .collect();
    fixture_with(settings, by_target(cases)).await
}

/// A lie answered with `head`, a blank line, then `body`; the upstream
/// then waits for the next request, so that only corral closes it.
fn lie(head: &str, body: &str) -> Wire {
    Wire::bytes(format!("{head}\r\n\r\n{body}"))
}
