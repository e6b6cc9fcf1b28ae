//! Connections to one server kept for reuse (the connector opens them).
//!
//! HTTP/1.1 connections wait in a LIFO list (the most recently used is the
//! least likely to have been closed by the server; one the server did close
//! is noticed before it is handed out) and are closed once idle
//! for `idle_timeout` (by a sweeper task that runs while the list is not
//! empty, so an unused server holds no sockets open) or beyond
//! `max_idle_per_server`. An HTTP/2 server gets one shared, multiplexed
//! connection, replaced when it closes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::connect::{ConnectError, Connector};
use super::http1;
use super::http2::Http2;
use crate::body::request::RequestBody;
use crate::plan::{Protocol, UpstreamConfig};

/// A connection ready to carry one request.
#[derive(Debug)]
pub enum Conn {
    Http1(http1::Connection),
    Http2(Http2<RequestBody>),
}

#[derive(Debug)]
struct Idle {
    conn: http1::Connection,
    since: Instant,
}

/// Idle HTTP/1.1 connections, oldest first.
#[derive(Debug, Default)]
struct IdleList {
    conns: Vec<Idle>,
    /// A sweeper task is running for this list.
    swept: bool,
}

#[derive(Debug)]
pub(super) struct Pool {
    protocol: Protocol,
    idle_timeout: Duration,
    max_idle: usize,
    /// Busy and idle connections at most (`max_connections`).
    max_connections: Option<usize>,
    idle: Mutex<IdleList>,
    shared: Mutex<Option<Http2<RequestBody>>>,
}

/// Pool locks guard plain lists; a panic while one was held leaves nothing
/// half-done, so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub(super) fn new(upstream: &UpstreamConfig) -> Self {
        Self {
            protocol: upstream.protocol,
            idle_timeout: upstream.idle_timeout,
            max_idle: upstream.max_idle_per_server,
            max_connections: upstream.max_connections.map(|n| n as usize),
            idle: Mutex::new(IdleList::default()),
            shared: Mutex::new(None),
        }
    }

    pub(super) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A connection to `addr`: a pooled one if any is idle, else a new
    /// one; the flag says whether it was reused. `now` is a recent clock
    /// reading, against which pooled connections' idle time is measured.
    pub(super) async fn get(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
        connector: &Connector,
        now: Instant,
    ) -> Result<(Conn, bool), ConnectError> {
        match self.protocol {
            Protocol::Http1 => {
                if let Some(conn) = self.take_idle(now) {
                    return Ok((Conn::Http1(conn), true));
                }
                // Boxed: connecting is rarer than reusing, and every
                // request's future would otherwise carry room for it.
                let stream = Box::pin(connector.stream(addr, host)).await?;
                Ok((Conn::Http1(http1::Connection::new(stream)), false))
            }
            Protocol::H2 => {
                if let Some(conn) = lock(&self.shared)
                    .as_ref()
                    .filter(|c| !c.sender.is_closed())
                {
                    return Ok((Conn::Http2(conn.clone()), true));
                }
                let conn = Box::pin(Http2::connect(connector, addr, host)).await?;
                *lock(&self.shared) = Some(conn.clone());
                Ok((Conn::Http2(conn), false))
            }
        }
    }

    fn take_idle(&self, now: Instant) -> Option<http1::Connection> {
        let mut idle = lock(&self.idle);
        while let Some(mut entry) = idle.conns.pop() {
            if now.saturating_duration_since(entry.since) >= self.idle_timeout {
                // LIFO: everything below this one has waited even longer.
                idle.conns.clear();
                return None;
            }
            if !entry.conn.is_closed() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Pools `conn`, idle since `now`; says whether a sweeper must be
    /// started for the list.
    fn put_idle(&self, conn: http1::Connection, now: Instant, busy: usize) -> bool {
        let mut idle = lock(&self.idle);
        // Pooled, it turns from busy to idle: the total stays `idle + busy`.
        let over = self
            .max_connections
            .is_some_and(|max| idle.conns.len() + busy > max);
        if idle.conns.len() >= self.max_idle || over {
            return false;
        }
        idle.conns.push(Idle { conn, since: now });
        !std::mem::replace(&mut idle.swept, true)
    }

    /// Closes the connections idle for `idle_timeout` by `now` (and any the
    /// server closed); returns when the next one expires, or `None` once
    /// the list is empty and its sweeper should end.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut idle = lock(&self.idle);
        let timeout = self.idle_timeout;
        idle.conns.retain_mut(|c| {
            now.saturating_duration_since(c.since) < timeout && !c.conn.is_closed()
        });
        let next = idle.conns.first().map(|oldest| oldest.since + timeout);
        idle.swept = next.is_some();
        next
    }
    /// Takes back an HTTP/1.1 connection whose request and response both
    /// ended cleanly, at `now`, while `busy` connections (this one among
    /// them) carry requests.
    pub(super) fn checkin(self: &Arc<Self>, conn: http1::Connection, now: Instant, busy: u32) {
        if !self.put_idle(conn, now, busy as usize) {
            return;
        }
        // Outside a runtime (never while serving) the list is only trimmed
        // by `take_idle`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Closes a pool's idle connections as they expire, while it has any.
/// Holds the pool only weakly, so the pool of a server removed by a reload
/// is freed with its connections.
async fn sweep(pool: Weak<Pool>) {
    while let Some(next) = pool.upgrade().and_then(|p| p.expire(Instant::now())) {
        tokio::time::sleep_until(next).await;
    }
}
