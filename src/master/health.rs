//! Active health checks, run by the master for the whole cluster: a
//! periodic `GET` to each server of an upstream that has
//! `[upstreams.health_check]`. Workers get the verdicts.
//!
//! A 2xx or 3xx answer within the timeout passes. The first probe decides a
//! server's state at once; after that it takes `unhealthy_threshold` failures
//! in a row to take a server down and `healthy_threshold` passes to bring it
//! back, so one slow answer does not flap it. Probes use their own short-lived
//! connections, never the request pools, made by the upstream's
//! [`Connector`] as request connections are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::generation::Generation;
use crate::ipc::ServerHealth;
use crate::plan::HealthCheckConfig;
use crate::upstream::{ConnectError, Connector, Server, Upstream, http1};

/// Called when a server's health changes: (upstream name, server, healthy).
pub type OnChange = Arc<dyn Fn(&str, &Server, bool) + Send + Sync>;

/// Runs one check task per checked server; tasks stop when dropped.
pub struct HealthChecker {
    on_change: OnChange,
    /// By (upstream, server address): what its task checks, and the task's
    /// stop token.
    tasks: HashMap<(String, SocketAddr), (Probe, CancellationToken)>,
}

/// What one task checks: the check, the server it runs against, and how it
/// connects.
#[derive(Clone)]
struct Probe {
    check: HealthCheckConfig,
    server: Arc<Server>,
    connector: Connector,
}

impl Probe {
    /// Whether a task running `self` can go on as `wanted`.
    fn same(&self, wanted: &Probe) -> bool {
        self.check == wanted.check
            && Arc::ptr_eq(&self.server, &wanted.server)
            && self.connector == wanted.connector
    }
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("checks", &self.tasks.len())
            .finish()
    }
}

impl HealthChecker {
    pub fn start(upstreams: &[Arc<Upstream>], on_change: OnChange) -> Self {
        let mut checker = Self {
            on_change,
            tasks: HashMap::new(),
        };
        checker.update(upstreams);
        checker
    }

    /// Follows a config reload: checks for servers that are gone stop, new
    /// ones start, and those whose server, check and connection settings
    /// are unchanged keep running undisturbed (no re-probe, no lost streak).
    pub fn update(&mut self, upstreams: &[Arc<Upstream>]) {
        let mut wanted = HashMap::new();
        for upstream in upstreams {
            let Some(check) = &upstream.config.health_check else {
                continue;
            };
            for server in &upstream.servers {
                let probe = Probe {
                    check: check.clone(),
                    server: server.clone(),
                    connector: upstream.connector.clone(),
                };
                wanted.insert((upstream.name().to_owned(), server.addr), probe);
            }
        }
        self.tasks.retain(|key, (running, stop)| {
            let keep = wanted.get(key).is_some_and(|w| running.same(w));
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, probe) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let stop = CancellationToken::new();
            let task = watch(key.0.clone(), probe.clone(), self.on_change.clone());
            let token = stop.clone();
            tokio::spawn(async move { token.run_until_cancelled(task).await });
            self.tasks.insert(key, (probe, stop));
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, stop) in self.tasks.values() {
            stop.cancel();
        }
    }
}

/// Republishes every checked server's health, from the current
/// generation's upstreams, when one changes.
pub fn on_change_publish(
    generation: watch::Receiver<Arc<Generation>>,
    health: watch::Sender<Arc<Vec<ServerHealth>>>,
) -> OnChange {
    Arc::new(move |_, _, _| {
        health.send_replace(Arc::new(health_of(&generation.borrow().upstreams)));
    })
}

/// The health of every server that has active checks.
pub fn health_of(upstreams: &[Arc<Upstream>]) -> Vec<ServerHealth> {
    upstreams
        .iter()
        .filter(|u| u.config.health_check.is_some())
        .flat_map(|u| {
            u.servers.iter().map(|s| ServerHealth {
                upstream: u.name().to_owned(),
                server: s.addr,
                healthy: s.is_healthy(),
            })
        })
        .collect()
}

async fn watch(upstream: String, checked: Probe, on_change: OnChange) {
    let Probe {
        check,
        server,
        connector,
    } = checked;
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut streak = 0u32;
    loop {
        interval.tick().await;
        let result = probe(&connector, server.addr, &check.path, check.timeout).await;
        let passed = result.is_ok();
        let was = server.is_healthy();
        streak = if passed == was { 0 } else { streak + 1 };
        let needed = if was {
            check.unhealthy_threshold
        } else {
            check.healthy_threshold
        };
        if (first && passed != was) || streak >= needed.get() {
            streak = 0;
            server.set_healthy(passed);
            match &result {
                Ok(()) => tracing::info!(upstream, server = %server.addr, "server is healthy"),
                Err(e) => {
                    tracing::warn!(upstream, server = %server.addr, reason = %e, "server is unhealthy")
                }
            }
            on_change(&upstream, &server, passed);
        }
        first = false;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP failed: {0}")]
    Http(#[source] http1::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
}

/// The most a probe's response head may take.
const PROBE_HEAD_LIMIT: usize = 64 * 1024;

/// One health probe: `GET path` on a fresh connection.
pub async fn probe(
    connector: &Connector,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = connector.stream(addr).await?;
        let (request, ()) = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(
                http::header::USER_AGENT,
                concat!("corral-health/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|_| ProbeError::Status(http::StatusCode::BAD_REQUEST))?
            .into_parts();
        let outbound = Box::new(http1::Outbound::new(&request, std::iter::empty(), None));
        let connection = http1::Connection::new(stream);
        let response = http1::send(connection, outbound, PROBE_HEAD_LIMIT, None)
            .await
            .map_err(|e| {
                ProbeError::Http(match e {
                    http1::SendError::Upstream(e) => e,
                    http1::SendError::Unsent(e, _) => http1::Error::Io(e),
                    // A probe has no body to fail, and its timeout is
                    // the caller's.
                    http1::SendError::ClientBody(_) | http1::SendError::TimedOut(_) => {
                        http1::Error::Closed
                    }
                })
            })?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}
