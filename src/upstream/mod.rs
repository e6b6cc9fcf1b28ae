//! Upstreams: their servers, the live state of each server, and leases.
//!
//! A [`Server`] carries what the data path learns about it: requests in
//! flight, a latency average, whether health checks pass, when it last
//! refused a connection, and its connection pool. An [`Upstream`] pairs its
//! servers with the balancing policy that picks among them. Servers are shared
//! (`Arc`) so that a config reload can carry unchanged ones, and their pools,
//! into the next snapshot.

mod health;
mod pool;

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

pub use health::{HealthChecker, OnChange, probe};
pub use pool::{Conn, ConnectError};

use crate::balance::{Balancer, PeakEwma, Servers};
use crate::body::BodySent;
use crate::metrics::Gauge;
use crate::plan::{HashKey, Protocol, ServerConfig, UpstreamConfig};
use pool::Pool;

#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<Server>>,
    pub balancer: Balancer,
}

impl Upstream {
    /// Builds the upstream, taking each server from `reuse` when it offers one
    /// (a reload keeps the state of servers that did not change).
    pub fn new(
        config: &UpstreamConfig,
        reuse: impl Fn(&ServerConfig) -> Option<Arc<Server>>,
    ) -> Self {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| {
                reuse(s).unwrap_or_else(|| Arc::new(Server::new(s.addr, s.weight.get(), config)))
            })
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let ids: Vec<String> = servers.iter().map(|s| s.label.clone()).collect();
        Self {
            balancer: Balancer::new(&config.balance, &weights, &ids),
            config: config.clone(),
            servers,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.config.balance {
            crate::plan::Balance::ConsistentHash(key) => Some(key),
            _ => None,
        }
    }

    /// Picks a server, never `exclude` (the one a retry is moving away from).
    /// When every healthy server recently refused a connection, they are
    /// tried anyway (as nginx does): skipping them all would turn a blip
    /// into `fail_timeout` of errors.
    pub fn pick(
        &self,
        key: Option<u64>,
        exclude: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let mut view = View {
            servers: &self.servers,
            exclude,
            now: OnceCell::new(),
            forgive: false,
        };
        self.balancer.pick(&view, key, rng).or_else(|| {
            view.forgive = true;
            self.balancer.pick(&view, key, rng)
        })
    }
}

/// Builds the upstreams of a new config generation. A server whose upstream
/// name, address, weight and connection settings are unchanged from
/// `previous` is carried over as is: its pool, health and latency survive.
pub fn rebuild(configs: &[UpstreamConfig], previous: &[Arc<Upstream>]) -> Vec<Arc<Upstream>> {
    configs
        .iter()
        .map(|config| {
            let old = previous
                .iter()
                .find(|u| u.name() == config.name && keeps_servers(config, &u.config));
            Arc::new(Upstream::new(config, |wanted| {
                old?.servers
                    .iter()
                    .find(|s| s.addr == wanted.addr && s.weight == wanted.weight.get())
                    .cloned()
            }))
        })
        .collect()
}

/// Whether servers built for `old` can serve `new` unchanged: everything a
/// server or its pool was built from is the same.
fn keeps_servers(new: &UpstreamConfig, old: &UpstreamConfig) -> bool {
    new.protocol == old.protocol
        && new.idle_timeout == old.idle_timeout
        && new.max_idle_per_server == old.max_idle_per_server
        && new.fail_timeout == old.fail_timeout
}

/// The balancer's view of the servers at one instant.
struct View<'a> {
    servers: &'a [Arc<Server>],
    exclude: Option<usize>,
    /// Read from the clock only once a server that has failed is seen.
    now: OnceCell<Instant>,
    /// Ignore recent connect failures (health checks still count).
    forgive: bool,
}

impl Servers for View<'_> {
    fn len(&self) -> usize {
        self.servers.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.servers[i].weight
    }
    fn available(&self, i: usize) -> bool {
        let s = &self.servers[i];
        self.exclude != Some(i)
            && s.is_healthy()
            && (self.forgive || !s.recently_failed(|| *self.now.get_or_init(Instant::now)))
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.servers[i].in_flight()
    }
    fn latency(&self, i: usize) -> f64 {
        self.servers[i].latency()
    }
}

/// One upstream server and what is known about it.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The address as text: the `server` label in metrics and logs.
    pub label: String,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    /// Milliseconds after `born` until which the server is skipped because
    /// it refused or timed out a connection.
    failed_until: AtomicU64,
    born: Instant,
    fail_timeout: Duration,
    ewma: Mutex<PeakEwma>,
    pool: Pool,
    /// The in-flight count where the master can read it (workers only).
    shared_in_flight: OnceLock<Gauge>,
}

impl Server {
    pub fn new(addr: SocketAddr, weight: u32, upstream: &UpstreamConfig) -> Self {
        Self {
            addr,
            weight,
            label: addr.to_string(),
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            failed_until: AtomicU64::new(0),
            born: Instant::now(),
            fail_timeout: upstream.fail_timeout,
            ewma: Mutex::new(PeakEwma::new()),
            pool: Pool::new(upstream),
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

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    fn recently_failed(&self, now: impl FnOnce() -> Instant) -> bool {
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
            conn: None,
            body_sent: None,
        }
    }

    /// A connection to this server: a pooled one if any is idle, else a new one.
    /// The flag says whether it was reused. `now` is a recent clock reading,
    /// against which pooled connections' idle time is measured.
    pub async fn connection(
        &self,
        connect_timeout: Duration,
        now: Instant,
    ) -> Result<(Conn, bool), ConnectError> {
        self.pool.get(self.addr, connect_timeout, now).await
    }

    pub fn protocol(&self) -> Protocol {
        self.pool.protocol()
    }
}

/// A request's claim on a server: counted in flight while it lives, and
/// holding the HTTP/1.1 connection to return to the pool once the response
/// has been read to its end.
#[derive(Debug)]
pub struct Lease {
    server: Arc<Server>,
    conn: Option<hyper::client::conn::http1::SendRequest<crate::body::RequestBody>>,
    /// Completes when the request body has been sent in full (or dropped).
    body_sent: Option<BodySent>,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Keeps `conn` to give back to the pool on a clean release, once
    /// `body_sent` says the request body is through too.
    pub fn hold(
        &mut self,
        conn: hyper::client::conn::http1::SendRequest<crate::body::RequestBody>,
        body_sent: BodySent,
    ) {
        self.conn = Some(conn);
        self.body_sent = Some(body_sent);
    }

    /// Ends the lease; `clean` when the response was read to its end. The
    /// connection then serves another request, unless its request body is
    /// still being sent (an upstream may answer before reading it all).
    pub fn release(mut self, clean: bool) {
        let body_done = self.body_sent.as_mut().is_some_and(BodySent::is_done);
        if let Some(conn) = self.conn.take().filter(|_| clean && body_done) {
            pool::checkin(&self.server, conn);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = self.server.shared_in_flight.get() {
            g.dec();
        }
    }
}
