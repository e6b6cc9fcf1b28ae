//! Upstreams: their servers, the live state of each server, and leases.
//!
//! A [`Server`] carries what the data path learns about it: requests in
//! flight, a latency average, whether health checks pass, when it last
//! refused a connection, and its connection pool. An [`Upstream`] pairs its
//! servers with the balancing policy that picks among them, and with its
//! sticky cookie when it has one (`sticky`). Servers are shared
//! (`Arc`) so that a config reload can carry unchanged ones, and their pools,
//! into the next snapshot.

mod budget;
mod connect;
mod eject;
pub mod http1;
mod http2;
mod pool;
mod server;
mod sticky;
mod stream;

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use budget::RetryBudget;
pub use connect::{ConnectError, Connector};
pub use eject::Ejection;
pub use http2::Http2;
pub use pool::Conn;
pub use server::{Lease, Server};
pub use sticky::Sticky;
pub use stream::Stream;

use crate::balance::{Balancer, Servers};
use crate::plan::{HashKey, ServerConfig, StickyKey, UpstreamConfig};

#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<Server>>,
    pub balancer: Balancer,
    /// How new connections to the servers are made.
    pub connector: Connector,
    /// How many of this worker's requests to the upstream may be retries.
    pub retries: RetryBudget,
    /// The cookie that keeps clients on a server, when the upstream has
    /// `sticky` (and the plan a key to sign it with).
    pub sticky: Option<Sticky>,
}

impl Upstream {
    /// Builds the upstream, taking each server from `reuse` when it offers one
    /// (a reload keeps the state of servers that did not change). `key`
    /// signs the sticky cookie, if the upstream has one.
    pub fn new(
        config: &UpstreamConfig,
        key: Option<&StickyKey>,
        reuse: impl Fn(&ServerConfig) -> Option<Arc<Server>>,
    ) -> Self {
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|s| reuse(s).unwrap_or_else(|| Arc::new(Server::new(s, config))))
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let ids: Vec<String> = servers.iter().map(|s| s.label.clone()).collect();
        let sticky = config.sticky.as_ref().zip(key).map(|(sticky, key)| {
            Sticky::new(sticky, key, &config.name, servers.iter().map(|s| s.addr))
        });
        Self {
            sticky,
            balancer: Balancer::new(&config.balance, &weights, &ids),
            connector: Connector::new(config),
            retries: RetryBudget::new(config.retry_budget),
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
        self.pick_within(key, None, exclude, rng, self.config.request_cap())
    }

    /// Picks the server at `named` (the one a sticky cookie names) when it
    /// could be picked now: up, not recently failed, with room; else a
    /// server by the policy, as [`pick`](Self::pick) does.
    pub fn pick_named(
        &self,
        key: Option<u64>,
        named: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        self.pick_within(key, named, None, rng, self.config.request_cap())
    }

    /// A server for a request that [`pick`](Self::pick) found none for: one
    /// that has room within `queue_timeout`, when every server that could
    /// take it is at its cap ([`UpstreamConfig::request_cap`]); `named`
    /// first, as [`pick_named`](Self::pick_named) has it.
    pub async fn queue(
        &self,
        key: Option<u64>,
        named: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Result<usize, NoPick> {
        // Without a cap, or with no server that could take it at all, there
        // is nothing to wait for.
        if self.config.request_cap().is_none()
            || self.pick_within(key, None, None, rng, None).is_none()
        {
            return Err(NoPick::Unavailable);
        }
        let deadline = Instant::now() + self.config.queue_timeout;
        let _waiting = server::Waiting::on(&self.servers);
        tracing::debug!(
            upstream = self.name(),
            "every server at its limit; the request waits for room"
        );
        loop {
            let mut room: Vec<_> = self.servers.iter().map(|s| Box::pin(s.room())).collect();
            // Registered before the next look, so that a lease ending
            // after it still wakes this request.
            for wait in &mut room {
                wait.as_mut().enable();
            }
            if let Some(index) = self.pick_named(key, named, rng) {
                return Ok(index);
            }
            let woken = futures_util::future::select_all(room);
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(NoPick::Full);
            }
        }
    }

    /// Counts a failure of `server` of kind `reason` toward its ejection
    /// (with `[upstreams.eject]`); the ejection, if this made one.
    pub fn note_failure(&self, server: &Server, reason: &str) -> Option<Ejection> {
        let eject = self.config.eject.as_ref()?;
        eject::failure(eject, self.name(), &self.servers, server, reason)
    }

    /// Judges an answer from `server`: a failure when its status is one of
    /// `eject.statuses`, else the end of the server's streak.
    pub fn note_answer(&self, server: &Server, status: u16) -> Option<Ejection> {
        let eject = self.config.eject.as_ref()?;
        if eject.statuses.binary_search(&status).is_ok() {
            return eject::failure(eject, self.name(), &self.servers, server, "status");
        }
        eject::success(server);
        None
    }

    fn pick_within(
        &self,
        key: Option<u64>,
        named: Option<usize>,
        exclude: Option<usize>,
        rng: &mut fastrand::Rng,
        cap: Option<u32>,
    ) -> Option<usize> {
        let mut view = View {
            servers: &self.servers,
            exclude,
            now: OnceCell::new(),
            forgive: false,
            slow_start: self.config.slow_start,
            cap,
        };
        // The named server is held to the same rules as the policy's
        // choices, in both rounds.
        let pick = |view: &View<'_>, rng: &mut fastrand::Rng| {
            named
                .filter(|&i| i < view.len() && view.available(i))
                .or_else(|| self.balancer.pick(view, key, rng))
        };
        pick(&view, rng).or_else(|| {
            view.forgive = true;
            pick(&view, rng)
        })
    }
}

/// Builds the upstreams of a new config generation. A server whose upstream
/// name, address, weight and connection settings are unchanged from
/// `previous` is carried over as is: its pool, health and latency survive.
/// A server new to an upstream that was there before starts slowly.
/// Servers of an upstream without a health check are healthy.
/// `key` signs the sticky cookies of the upstreams that have one.
pub fn rebuild(
    configs: &[UpstreamConfig],
    previous: &[Arc<Upstream>],
    key: Option<&StickyKey>,
) -> Vec<Arc<Upstream>> {
    configs
        .iter()
        .map(|config| {
            let named = previous.iter().find(|u| u.name() == config.name);
            let old = named.filter(|u| keeps_servers(config, &u.config));
            let upstream = Upstream::new(config, key, |wanted| {
                old?.servers
                    .iter()
                    .find(|s| {
                        s.addr == wanted.addr
                            && s.weight == wanted.weight.get()
                            && s.host == wanted.host
                    })
                    .cloned()
            });
            if let Some(before) = named {
                for server in &upstream.servers {
                    if !before.servers.iter().any(|s| s.addr == server.addr) {
                        server.start_ramp();
                    }
                }
            }
            // Only a health check takes a server out; with none left, no
            // server stays down for a check that no longer runs.
            if config.health_check.is_none() {
                for server in &upstream.servers {
                    server.set_healthy(true);
                }
            }
            Arc::new(upstream)
        })
        .collect()
}

/// Whether servers built for `old` can serve `new` unchanged: everything a
/// server or its pool was built from is the same.
fn keeps_servers(new: &UpstreamConfig, old: &UpstreamConfig) -> bool {
    new.protocol == old.protocol
        && new.max_connections == old.max_connections
        && new.idle_timeout == old.idle_timeout
        && new.max_idle_per_server == old.max_idle_per_server
        && new.fail_timeout == old.fail_timeout
        // Pooled sessions were verified under the old TLS settings.
        && new.tls == old.tls
}

/// The balancer's view of the servers at one instant.
struct View<'a> {
    servers: &'a [Arc<Server>],
    exclude: Option<usize>,
    /// Read from the clock only once a server that has failed is seen.
    now: OnceCell<Instant>,
    /// Ignore recent connect failures and ejections (health checks still
    /// count): when every server is out, each is tried anyway.
    forgive: bool,
    /// The upstream's slow start, when it has one.
    slow_start: Option<Duration>,
    /// Servers with this many requests in flight have no room.
    cap: Option<u32>,
}

/// Why no server was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// None is healthy (or every one just refused a connection).
    Unavailable,
    /// Every one that could take the request stayed at its cap
    /// (`max_in_flight`, or `max_connections` over HTTP/1.1) for
    /// `queue_timeout`.
    Full,
}

impl View<'_> {
    fn now(&self) -> Instant {
        *self.now.get_or_init(Instant::now)
    }
}

/// Weights are scaled by this while a slow start may be under way, so that
/// a tenth of weight 1 is still a whole number.
const RAMP_SCALE: f64 = 100.0;

impl Servers for View<'_> {
    fn len(&self) -> usize {
        self.servers.len()
    }
    fn weight(&self, i: usize) -> u32 {
        let weight = self.servers[i].weight;
        if self.slow_start.is_none() {
            return weight;
        }
        // At most 10 000 x 100: it fits.
        (f64::from(weight) * RAMP_SCALE * self.ramp(i))
            .round()
            .max(1.0) as u32
    }
    fn ramping(&self) -> bool {
        self.slow_start.is_some()
    }
    fn ramp(&self, i: usize) -> f64 {
        self.slow_start
            .map_or(1.0, |over| self.servers[i].ramp(self.now(), over))
    }
    fn available(&self, i: usize) -> bool {
        let s = &self.servers[i];
        self.exclude != Some(i)
            && self.cap.is_none_or(|cap| s.in_flight() < cap)
            && s.is_healthy()
            && (self.forgive || !(s.recently_failed(|| self.now()) || s.is_ejected(|| self.now())))
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.servers[i].in_flight()
    }
    fn latency(&self, i: usize) -> f64 {
        self.servers[i].latency()
    }
}
