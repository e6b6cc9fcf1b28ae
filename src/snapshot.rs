//! The snapshot the data path serves from: one config generation's plan,
//! compiled.
//!
//! Routes, upstreams (with their servers' live state), listener settings
//! (with TLS) and the metric series they count into live together in one
//! immutable [`Snapshot`], swapped as a whole through an `ArcSwap`, so no
//! request can see new routes with old servers. A request keeps the snapshot
//! it started with until it ends.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::challenges::SharedAnswers;
use crate::metrics::{Counter, Family, Gauge, NONE, Recorder, RouteSeries};
use crate::plan::{ListenerConfig, Plan};
use crate::routing::RouteTable;
use crate::tls::{self, TlsError};
use crate::upstream::{Ejection, Server, Upstream};

/// The live snapshot, shared by every connection of a worker.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// The `kind` label values of `corral_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 5] = ["connect", "timeout", "tls", "reset", "protocol"];

/// The `reason` label values of `corral_upstream_ejections_total`: the
/// error kinds, and an answer with one of `eject.statuses`.
pub const EJECTION_REASONS: [&str; 6] =
    ["connect", "timeout", "tls", "reset", "protocol", "status"];

/// Where a worker's data path tells its control loop what the master
/// should hear of: ejections (see `upstream::eject`).
pub type Notices = tokio::sync::mpsc::UnboundedSender<Ejection>;

/// The `reason` label values of `corral_upstream_retries_total`.
pub const RETRY_REASONS: [&str; 3] = ["connect", "status", "reset"];

/// The `outcome` label values of `corral_upstream_queued_total`.
pub const QUEUE_OUTCOMES: [&str; 2] = ["served", "timeout"];

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub plan: Arc<Plan>,
    pub routes: RouteTable,
    /// Metric series per route, by [`crate::routing::Route::index`].
    pub route_series: Vec<Arc<RouteSeries>>,
    /// Metric series of requests that matched no route.
    pub unrouted: Arc<RouteSeries>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub listeners: Vec<Arc<ListenerSnapshot>>,
    pub recorder: Arc<Recorder>,
    pub access_log: Option<Arc<AccessLog>>,
    /// `None` where no master listens (in-process tests).
    pub notices: Option<Notices>,
    /// The ACME challenges pending now; one for the worker's life, shared
    /// by each snapshot with the next.
    pub challenges: SharedAnswers,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("listener `{listener}`: {source}")]
    Tls {
        listener: String,
        #[source]
        source: TlsError,
    },
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
    /// Only the master makes the key; a worker must not invent one, or
    /// each worker would name servers differently.
    #[error("upstream `{upstream}` is sticky, but the plan has no key to sign its cookie")]
    NoStickyKey { upstream: String },
}

/// A listener's settings as connections see them.
#[derive(Debug)]
pub struct ListenerSnapshot {
    pub config: ListenerConfig,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub connections: Counter,
    pub connections_active: Gauge,
    /// Times accepting paused at `max_connections`.
    pub accept_pauses: Counter,
    /// Connections shed to keep request heads within the worker's budget.
    pub connections_shed: Counter,
    /// TLS handshakes by outcome (TLS listeners only).
    pub handshakes: Option<Handshakes>,
}

/// A TLS listener's handshake counters, made at zero so that every series
/// is there before the first handshake.
#[derive(Debug)]
pub struct Handshakes {
    /// By version (1.2, 1.3), then whether resumed.
    success: [[Counter; 2]; 2],
    failure: Counter,
    timeout: Counter,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Done { tls13: bool, resumed: bool },
    Failed,
    TimedOut,
}

impl Handshakes {
    fn new(recorder: &Arc<Recorder>, listener: &str) -> Self {
        let count = |result, version, resumed| {
            recorder.counter(Family::TlsHandshakes, &[listener, result, version, resumed])
        };
        let success =
            ["TLSv1.2", "TLSv1.3"].map(|v| ["false", "true"].map(|r| count("success", v, r)));
        Self {
            success,
            failure: count("failure", "", "false"),
            timeout: count("timeout", "", "false"),
        }
    }

    pub fn count(&self, handshake: Handshake) {
        match handshake {
            Handshake::Done { tls13, resumed } => {
                self.success[usize::from(tls13)][usize::from(resumed)].add(1);
            }
            Handshake::Failed => self.failure.add(1),
            Handshake::TimedOut => self.timeout.add(1),
        }
    }
}

/// Creates every known upstream series, at zero, so that dashboards and
/// alerts see them before the first error; and reports each server's
/// in-flight count through a gauge.
fn upstream_series(recorder: &Arc<Recorder>, upstreams: &[Arc<Upstream>]) {
    for u in upstreams {
        for reason in RETRY_REASONS {
            recorder.counter(Family::UpstreamRetries, &[u.name(), reason]);
        }
        recorder.counter(Family::RetryBudgetExhausted, &[u.name()]);
        for outcome in QUEUE_OUTCOMES {
            recorder.counter(Family::UpstreamQueued, &[u.name(), outcome]);
        }
        for s in &u.servers {
            for kind in UPSTREAM_ERROR_KINDS {
                recorder.counter(Family::UpstreamErrors, &[u.name(), &s.label, kind]);
            }
            if u.config.eject.is_some() {
                for reason in EJECTION_REASONS {
                    recorder.counter(Family::UpstreamEjections, &[u.name(), &s.label, reason]);
                }
            }
            s.report_in_flight(|| {
                recorder.gauge(
                    Family::UpstreamInFlight,
                    &[u.name(), &s.label, recorder.worker()],
                )
            });
        }
    }
}

impl Snapshot {
    /// Compiles `plan`. Servers that `previous` already has (same upstream
    /// name, address and settings) keep their state: pools, health, latency.
    pub fn build(
        plan: Plan,
        generation: u64,
        previous: Option<&Snapshot>,
        recorder: &Arc<Recorder>,
        notices: Option<Notices>,
    ) -> Result<Self, BuildError> {
        // An unchanged access log keeps its file and writer thread.
        let access_log = match (
            &plan.access_log,
            previous.and_then(|p| p.access_log.as_ref()),
        ) {
            (None, _) => None,
            (Some(wanted), Some(running)) if running.config() == wanted => Some(running.clone()),
            (Some(wanted), _) => Some(AccessLog::start(wanted).map_err(BuildError::AccessLog)?),
        };
        if plan.sticky_key.is_none() {
            if let Some(u) = plan.upstreams.iter().find(|u| u.sticky.is_some()) {
                let upstream = u.name.clone();
                return Err(BuildError::NoStickyKey { upstream });
            }
        }
        let challenges = previous.map_or_else(SharedAnswers::default, |p| p.challenges.clone());
        let previous = previous.map_or(&[][..], |p| &p.upstreams[..]);
        let upstreams =
            crate::upstream::rebuild(&plan.upstreams, previous, plan.sticky_key.as_ref());
        let index: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name(), i))
            .collect();
        let routes = RouteTable::new(&plan.routes, |name| index.get(name).copied());
        let route_series = routes
            .routes()
            .iter()
            .map(|r| {
                Arc::new(RouteSeries::new(
                    recorder,
                    &r.name,
                    upstreams[r.upstream].name(),
                ))
            })
            .collect();
        upstream_series(recorder, &upstreams);
        let listeners = plan
            .listeners
            .iter()
            .map(|l| {
                let tls = l
                    .tls
                    .as_ref()
                    .map(|t| tls::server_config(t, plan.ticket_keys.as_ref(), Some(&challenges)))
                    .transpose()
                    .map_err(|source| BuildError::Tls {
                        listener: l.name.clone(),
                        source,
                    })?;
                Ok(Arc::new(ListenerSnapshot {
                    config: l.clone(),
                    tls,
                    connections: recorder.counter(Family::Connections, &[&l.name]),
                    connections_active: recorder
                        .gauge(Family::ConnectionsActive, &[&l.name, recorder.worker()]),
                    accept_pauses: recorder.counter(Family::AcceptPauses, &[&l.name]),
                    connections_shed: recorder.counter(Family::ConnectionsShed, &[&l.name]),
                    handshakes: l.tls.is_some().then(|| Handshakes::new(recorder, &l.name)),
                }))
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Self {
            generation,
            plan: Arc::new(plan),
            routes,
            route_series,
            unrouted: Arc::new(RouteSeries::new(recorder, NONE, NONE)),
            upstreams,
            listeners,
            recorder: recorder.clone(),
            access_log,
            notices,
            challenges,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSnapshot>> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }

    /// Counts a request sent again to another server of `upstream`.
    pub fn count_retry(&self, upstream: &str, reason: &str) {
        self.recorder
            .counter(Family::UpstreamRetries, &[upstream, reason])
            .add(1);
    }

    /// Counts a request that waited for room at `upstream`'s servers.
    pub fn count_queued(&self, upstream: &str, outcome: &str) {
        self.recorder
            .counter(Family::UpstreamQueued, &[upstream, outcome])
            .add(1);
    }

    /// Counts a retry the budget of `upstream` did not allow.
    pub fn count_budget_exhausted(&self, upstream: &str) {
        self.recorder
            .counter(Family::RetryBudgetExhausted, &[upstream])
            .add(1);
    }

    /// Counts, logs and tells the master of `server` of `upstream` taken
    /// out by passive health.
    pub fn ejected(&self, server: &Server, ejection: Ejection) {
        self.recorder
            .counter(
                Family::UpstreamEjections,
                &[&ejection.upstream, &server.label, &ejection.reason],
            )
            .add(1);
        tracing::warn!(
            upstream = %ejection.upstream,
            server = %ejection.server,
            reason = %ejection.reason,
            cool_down = ?ejection.cool_down,
            "server ejected after failures in a row"
        );
        if let Some(notices) = &self.notices {
            // Gone only while the worker stops: nobody is left to tell.
            let _ = notices.send(ejection);
        }
    }

    /// Counts one failed exchange with `server` of `upstream`.
    pub fn count_upstream_error(&self, upstream: &str, server: &str, kind: &str) {
        self.recorder
            .counter(Family::UpstreamErrors, &[upstream, server, kind])
            .add(1);
    }
}
