//! One upstream server's live state (requests in flight, latency, health,
//! recent connect failures, its connection pool) and the lease a request
//! holds on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::connect::{ConnectError, Connector};
use super::http1;
use super::pool::{Conn, Pool};
use crate::balance::PeakEwma;
use crate::metrics::Gauge;
use crate::plan::{Protocol, ServerConfig, UpstreamConfig};

/// A request waiting for room on `servers`, counted on each while it waits
/// (however the wait ends), so that their leases wake it.
pub(super) struct Waiting<'a>(&'a [Arc<Server>]);

impl<'a> Waiting<'a> {
    pub(super) fn on(servers: &'a [Arc<Server>]) -> Self {
        for server in servers {
            server.waiting.fetch_add(1, Ordering::Relaxed);
        }
        Self(servers)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for server in self.0 {
            server.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A server's failures in a row, and its ejections that followed one
/// another closely (see `upstream::eject`).
#[derive(Debug, Default)]
pub(super) struct Streak {
    pub(super) failures: AtomicU32,
    /// Ejections in a row (each soon after the last one ended).
    pub(super) ejections: AtomicU32,
}

/// One upstream server and what is known about it.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The address as text: the `server` label in metrics and logs.
    pub label: String,
    /// The DNS name the address was found by, if it was.
    pub host: Option<String>,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    /// Milliseconds after `born` until which the server is skipped because
    /// it refused or timed out a connection.
    failed_until: AtomicU64,
    /// Milliseconds after `born`, plus one, at which a slow start began;
    /// 0 when none did.
    ramp_from: AtomicU64,
    /// Milliseconds after `born` until which passive health holds the
    /// server out; 0 when it never did.
    ejected_until: AtomicU64,
    /// The length of its latest cool-down, in milliseconds.
    ejected_for: AtomicU64,
    pub(super) streak: Streak,
    /// Requests waiting for room on this server: while there are any, each
    /// lease that ends wakes them.
    waiting: AtomicU32,
    room: Notify,
    born: Instant,
    fail_timeout: Duration,
    ewma: Mutex<PeakEwma>,
    pool: Arc<Pool>,
    /// The in-flight count where the master can read it (workers only).
    shared_in_flight: OnceLock<Gauge>,
}

impl Server {
    pub fn new(config: &ServerConfig, upstream: &UpstreamConfig) -> Self {
        let addr = config.addr;
        Self {
            addr,
            weight: config.weight.get(),
            label: addr.to_string(),
            host: config.host.clone(),
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            failed_until: AtomicU64::new(0),
            ramp_from: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejected_for: AtomicU64::new(0),
            streak: Streak::default(),
            waiting: AtomicU32::new(0),
            room: Notify::new(),
            born: Instant::now(),
            fail_timeout: upstream.fail_timeout,
            ewma: Mutex::new(PeakEwma::new()),
            pool: Arc::new(Pool::new(upstream)),
            shared_in_flight: OnceLock::new(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> f64 {
        let now = Instant::now().into_std();
        self.ewma.lock().map_or(0.0, |e| e.value_at(now))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A server that comes back from a failed health check starts slowly
    /// (when its upstream has a `slow_start`).
    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            self.start_ramp();
        }
    }

    /// Completes when a lease on this server ends (once registered, see
    /// [`tokio::sync::futures::Notified::enable`]), for a request counted
    /// as waiting ([`Waiting`]).
    pub(super) fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Begins a slow start: from now, the server takes a tenth of its
    /// weight, rising evenly to all of it over its upstream's `slow_start`.
    pub fn start_ramp(&self) {
        self.ramp_at(Instant::now());
    }

    fn ramp_at(&self, at: Instant) {
        let at = self.millis(at);
        self.ramp_from
            .store(at.saturating_add(1), Ordering::Relaxed);
    }

    /// Takes the server out of this worker's picks for `cool_down` from
    /// `now`; it comes back slowly (under a slow start) when that ends.
    pub(super) fn eject(&self, now: Instant, cool_down: Duration) {
        let until = now + cool_down;
        self.ejected_until
            .store(self.millis(until).max(1), Ordering::Relaxed);
        let length = u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX);
        self.ejected_for.store(length, Ordering::Relaxed);
        self.ramp_at(until);
    }

    /// Whether passive health holds the server out; reads the clock
    /// (`now`) only if it ever did.
    pub fn is_ejected(&self, now: impl FnOnce() -> Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.millis(now()) < until
    }

    /// How long ago the latest cool-down ended, and how long it was; `None`
    /// while one lasts, or if none ever did.
    pub(super) fn since_ejection_ended(&self, now: Instant) -> Option<(Duration, Duration)> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ago = self.millis(now).checked_sub(until).filter(|_| until != 0)?;
        let length = self.ejected_for.load(Ordering::Relaxed);
        Some((Duration::from_millis(ago), Duration::from_millis(length)))
    }

    /// The share of its weight the server takes at `now` under a slow start
    /// `over` long: 1 when none began, or once it is over.
    pub fn ramp(&self, now: Instant, over: Duration) -> f64 {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 {
            return 1.0;
        }
        let elapsed = self.millis(now).saturating_sub(from - 1);
        let done = elapsed as f64 / over.as_millis().max(1) as f64;
        (0.1 + 0.9 * done).min(1.0)
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn recently_failed(&self, now: impl FnOnce() -> Instant) -> bool {
        let until = self.failed_until.load(Ordering::Relaxed);
        until != 0 && self.millis(now()) < until
    }

    /// Skips this server for `fail_timeout` after a failed connect.
    pub fn mark_failed(&self) {
        let until = self.millis(Instant::now() + self.fail_timeout);
        self.failed_until.store(until, Ordering::Relaxed);
    }

    pub fn observe_latency(&self, sample: Duration) {
        if let Ok(mut e) = self.ewma.lock() {
            e.observe(sample, Instant::now().into_std());
        }
    }

    /// Also reports the in-flight count through `gauge` (once; a server
    /// carried into a new generation keeps its gauge).
    pub fn report_in_flight(&self, gauge: impl FnOnce() -> Gauge) {
        self.shared_in_flight.get_or_init(gauge);
    }

    /// Counts a request against this server until the lease is released.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = self.shared_in_flight.get() {
            g.inc();
        }
        Lease {
            server: self.clone(),
        }
    }

    /// A connection to this server: a pooled one if any is idle, else a new
    /// one made by `connector`. The flag says whether it was reused. `now`
    /// is a recent clock reading, against which pooled connections' idle
    /// time is measured.
    pub async fn connection(
        &self,
        connector: &Connector,
        now: Instant,
    ) -> Result<(Conn, bool), ConnectError> {
        let host = self.host.as_deref();
        self.pool.get(self.addr, host, connector, now).await
    }

    pub fn protocol(&self) -> Protocol {
        self.pool.protocol()
    }
}

/// A request's claim on a server: counted in flight while it lives.
#[derive(Debug)]
pub struct Lease {
    server: Arc<Server>,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Ends the lease at `now`, giving back `conn` (an HTTP/1.1 connection
    /// whose exchange ended cleanly) to serve another request.
    pub fn release(self, conn: Option<http1::Connection>, now: Instant) {
        if let Some(conn) = conn {
            self.server.pool.checkin(conn, now, self.server.in_flight());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.server.waiting.load(Ordering::Relaxed) > 0 {
            self.server.room.notify_waiters();
        }
        if let Some(g) = self.server.shared_in_flight.get() {
            g.dec();
        }
    }
}
