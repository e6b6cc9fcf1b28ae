//! Passive health (`[upstreams.eject]`): a server whose requests fail
//! `consecutive_failures` times in a row (connect failures, TLS refusals,
//! resets, timeouts, garbage, and the statuses the table names) is taken out
//! of this worker's picks for a cool-down: `base_time`, doubled for each
//! ejection that follows soon after the last (up to [`MAX_DOUBLINGS`]),
//! back to `base_time` once the server has stayed in for a cool-down's
//! length. Never more than `max_share` of an upstream's servers are out at
//! once, so one bad deploy cannot empty it. A server's cool-down ends by
//! itself; it then ramps up under the upstream's slow start.
//!
//! Each worker judges from its own requests, as nginx's `max_fails` and
//! Envoy's outlier detection do; the worker tells the master (see
//! [`Ejection`]) so that `/status` shows every worker's view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::server::Server;
use crate::plan::EjectConfig;

/// A cool-down doubles at most this many times (10 s grows to 320 s).
pub const MAX_DOUBLINGS: u32 = 5;

/// A server one worker took out, as the master hears of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ejection {
    pub upstream: String,
    pub server: SocketAddr,
    /// The kind of the failure that completed the streak: `connect`,
    /// `timeout`, `tls`, `reset`, `protocol` or `status`.
    pub reason: String,
    /// How long the server is out.
    pub cool_down: Duration,
}

/// Counts a failure of `server` (of `upstream`, among `servers`) of kind
/// `reason`; the ejection, when it completed a streak and the upstream can
/// spare the server.
pub(super) fn failure(
    eject: &EjectConfig,
    upstream: &str,
    servers: &[Arc<Server>],
    server: &Server,
    reason: &str,
) -> Option<Ejection> {
    // Requests picked before the ejection still fail during it; they must
    // not start the next streak, or the first failure after the cool-down
    // would eject the server again.
    let now = Instant::now();
    if server.is_ejected(|| now) {
        return None;
    }
    let streak = &server.streak;
    let failures = streak.failures.fetch_add(1, Ordering::Relaxed) + 1;
    if failures < eject.consecutive_failures.get() {
        return None;
    }
    // The share is of the servers, floored: one of two may go, the only
    // server of an upstream never does (it would turn 502s into 503s).
    let spare = (eject.max_share * servers.len() as f64).floor() as usize;
    let out = servers.iter().filter(|s| s.is_ejected(|| now)).count();
    if out >= spare {
        tracing::debug!(upstream, server = %server.addr, "not ejected: max_share of the upstream is out");
        return None;
    }
    // Soon after the last cool-down ended (within its length), the next
    // one is twice as long.
    let again = server
        .since_ejection_ended(now)
        .is_some_and(|(ended, last)| ended < last);
    let doublings = if again {
        streak.ejections.load(Ordering::Relaxed).min(MAX_DOUBLINGS)
    } else {
        0
    };
    streak.ejections.store(doublings + 1, Ordering::Relaxed);
    streak.failures.store(0, Ordering::Relaxed);
    let cool_down = eject.base_time * 2u32.pow(doublings);
    server.eject(now, cool_down);
    Some(Ejection {
        upstream: upstream.to_owned(),
        server: server.addr,
        reason: reason.to_owned(),
        cool_down,
    })
}

/// Ends `server`'s streak of failures: it answered with a status that is
/// not a failure.
pub(super) fn success(server: &Server) {
    // A load first: the common case, no streak, writes nothing.
    let failures = &server.streak.failures;
    if failures.load(Ordering::Relaxed) != 0 {
        failures.store(0, Ordering::Relaxed);
    }
}
