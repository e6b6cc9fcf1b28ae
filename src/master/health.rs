//! Active health checks, run by the master for the whole cluster: a
//! periodic `GET` to each server of an upstream that has
//! `[upstreams.health_check]`. Workers get the verdicts.
//!
//! An answer within the timeout passes if its status is one of the check's
//! `statuses` (any 2xx or 3xx by default) and, with `body_contains`, the
//! first 64 KiB of its body contain that text. The first probe decides a
//! server's state at once; after that it takes `unhealthy_threshold` failures
//! in a row to take a server down and `healthy_threshold` passes to bring it
//! back, so one slow answer does not flap it. Probes use their own short-lived
//! connections, never the request pools, made by the upstream's
//! [`Connector`] as request connections are. Why a server is down, and
//! since when, is kept for `/status` ([`DownNotes`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::generation::Generation;
use crate::ipc::ServerHealth;
use crate::plan::{HealthCheckConfig, Protocol};
use crate::upstream::{ConnectError, Connector, Http2, Server, Upstream, http1};

/// Called when a server's health changes: (upstream name, server, healthy).
pub type OnChange = Arc<dyn Fn(&str, &Server, bool) + Send + Sync>;

/// Runs one check task per checked server; tasks stop when dropped.
pub struct HealthChecker {
    on_change: OnChange,
    notes: Arc<DownNotes>,
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
            notes: Arc::default(),
            tasks: HashMap::new(),
        };
        checker.update(upstreams);
        checker
    }

    /// Why the servers whose checks took them down are down.
    pub fn notes(&self) -> Arc<DownNotes> {
        self.notes.clone()
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
        // A check restarted with new settings keeps its server's note.
        self.notes.retain(|key| wanted.contains_key(key));
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
            let task = watch(
                key.clone(),
                probe.clone(),
                self.on_change.clone(),
                self.notes.clone(),
            );
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

/// Why each server that its checks took down is down, by (upstream,
/// server address).
#[derive(Debug, Default)]
pub struct DownNotes(Mutex<HashMap<(String, SocketAddr), Down>>);

/// A server its checks hold down: since when, and what its latest failed
/// check said.
#[derive(Debug, Clone)]
pub struct Down {
    pub since: SystemTime,
    pub reason: String,
}

impl DownNotes {
    /// The table guards no invariant a panic could break halfway.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, SocketAddr), Down>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, upstream: &str, addr: SocketAddr) -> Option<Down> {
        self.lock().get(&(upstream.to_owned(), addr)).cloned()
    }

    /// A failed check of a server that is down: the reason is the latest,
    /// the time the first. Whether the reason is new.
    fn failed(&self, key: &(String, SocketAddr), reason: String) -> bool {
        match self.lock().entry(key.clone()) {
            Entry::Occupied(mut down) if down.get().reason != reason => {
                down.get_mut().reason = reason;
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(Down {
                    since: SystemTime::now(),
                    reason,
                });
                true
            }
        }
    }

    fn cleared(&self, key: &(String, SocketAddr)) {
        self.lock().remove(key);
    }

    fn retain(&self, keep: impl Fn(&(String, SocketAddr)) -> bool) {
        self.lock().retain(|key, _| keep(key));
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

async fn watch(
    key: (String, SocketAddr),
    checked: Probe,
    on_change: OnChange,
    notes: Arc<DownNotes>,
) {
    let Probe {
        check,
        server,
        connector,
    } = checked;
    let upstream = key.0.as_str();
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut streak = 0u32;
    loop {
        interval.tick().await;
        let result = probe(&connector, &server, &check).await;
        let passed = result.is_ok();
        let was = server.is_healthy();
        streak = if passed == was { 0 } else { streak + 1 };
        let needed = if was {
            check.unhealthy_threshold
        } else {
            check.healthy_threshold
        };
        let turns = (first && passed != was) || streak >= needed.get();
        let healthy = if turns { passed } else { was };
        // The note first: `/status` never shows a server down without why.
        match &result {
            _ if healthy => notes.cleared(&key),
            Err(e) => {
                // The log says what `/status` now says, once per change.
                if notes.failed(&key, e.to_string()) && !turns {
                    tracing::warn!(upstream, server = %server.addr, reason = %e, "server still unhealthy");
                }
            }
            // A pass on the way back: the last failure still says why.
            Ok(()) => {}
        }
        if turns {
            streak = 0;
            server.set_healthy(passed);
            match &result {
                Ok(()) => tracing::info!(upstream, server = %server.addr, "server is healthy"),
                Err(e) => {
                    tracing::warn!(upstream, server = %server.addr, reason = %e, "server is unhealthy")
                }
            }
            on_change(upstream, &server, passed);
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
    /// A path or host the request cannot carry; validation keeps them out
    /// of any config that loads.
    #[error("cannot make the check's request: {0}")]
    Request(String),
    #[error("HTTP failed: {0}")]
    Http(#[from] http1::Error),
    #[error("HTTP/2 failed: {0}")]
    Http2(#[from] hyper::Error),
    #[error("answered {0}, expected {1}")]
    Status(http::StatusCode, String),
    #[error("answered {0} without {1:?} in the first 64 KiB of its body")]
    Body(http::StatusCode, String),
}

/// The most a probe's response head may take.
const PROBE_HEAD_LIMIT: usize = 64 * 1024;

/// How much of a body `body_contains` looks through: enough for any status
/// page, little enough that a server answering with a download costs the
/// check no more.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// One health probe: `GET path` on a fresh connection to `server`, in its
/// upstream's protocol (HTTP/1.1, or h2 for `protocol = "h2"`), judged by
/// `check`. Its `Host` (or `:authority`) is the check's, else the server's
/// name and port (when DNS found it), else its address.
pub async fn probe(
    connector: &Connector,
    server: &Server,
    check: &HealthCheckConfig,
) -> Result<(), ProbeError> {
    let addr = server.addr;
    let host = check.host.clone().unwrap_or_else(|| match &server.host {
        Some(name) => format!("{name}:{}", addr.port()),
        None => addr.to_string(),
    });
    let attempt = async {
        let (status, body) = match server.protocol() {
            Protocol::Http1 => {
                let stream = connector.stream(addr, server.host.as_deref()).await?;
                let (status, body) = send_http1(stream, check, host).await?;
                (status, Probed::Http1(body))
            }
            Protocol::H2 => {
                let conn = Http2::connect(connector, addr, server.host.as_deref()).await?;
                let (status, body) = send_h2(conn, connector, check, &host).await?;
                (status, Probed::H2(body))
            }
        };
        if !check.passes(status) {
            return Err(ProbeError::Status(status, expected(&check.statuses)));
        }
        let Some(needle) = &check.body_contains else {
            return Ok(());
        };
        let found = match body {
            Probed::Http1(body) => body_contains(body, needle.as_bytes()).await?,
            Probed::H2(body) => body_contains(body, needle.as_bytes()).await?,
        };
        if found {
            Ok(())
        } else {
            Err(ProbeError::Body(status, needle.clone()))
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(check.timeout))?
}

/// A probe's answer body, as its protocol's client reads it.
enum Probed {
    Http1(http1::Http1Body),
    H2(hyper::body::Incoming),
}

/// The check's request for `uri` with corral's user agent, and `host` as
/// its `Host` unless the URI carries it (h2's `:authority`).
fn request(uri: &str, host: Option<&str>) -> Result<http::Request<()>, ProbeError> {
    let mut request = http::Request::get(uri).header(
        http::header::USER_AGENT,
        concat!("corral-health/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(host) = host {
        request = request.header(http::header::HOST, host);
    }
    request
        .body(())
        .map_err(|e| ProbeError::Request(e.to_string()))
}

/// Sends the check's request over HTTP/1.1 on `stream`.
async fn send_http1(
    stream: crate::upstream::Stream,
    check: &HealthCheckConfig,
    host: String,
) -> Result<(http::StatusCode, http1::Http1Body), ProbeError> {
    let (request, ()) = request(check.path.as_str(), Some(&host))?.into_parts();
    let outbound = Box::new(http1::Outbound::new(&request, std::iter::empty(), None));
    let connection = http1::Connection::new(stream);
    let response = http1::send(connection, outbound, PROBE_HEAD_LIMIT, None)
        .await
        .map_err(|e| {
            ProbeError::Http(match e {
                http1::SendError::Upstream(e) | http1::SendError::Unanswered(e) => e,
                http1::SendError::Unsent(e, _) => http1::Error::Io(e),
                // A probe has no body to fail, and its timeout is the
                // caller's.
                http1::SendError::ClientBody(_) | http1::SendError::TimedOut(_) => {
                    http1::Error::Closed
                }
            })
        })?;
    Ok((response.status(), response.into_body()))
}

/// Sends the check's request over h2 on `sender`, its host as the
/// `:authority`, its scheme `https` over TLS.
async fn send_h2(
    mut conn: Http2<http_body_util::Empty<bytes::Bytes>>,
    connector: &Connector,
    check: &HealthCheckConfig,
    host: &str,
) -> Result<(http::StatusCode, hyper::body::Incoming), ProbeError> {
    let scheme = if connector.is_tls() { "https" } else { "http" };
    let uri = format!("{scheme}://{host}{}", check.path);
    let request = request(&uri, None)?.map(|()| http_body_util::Empty::new());
    let response = conn
        .sender
        .send_request(request)
        .await
        .map_err(|e| conn.refusal().map_or(ProbeError::from(e), ProbeError::from))?;
    Ok((response.status(), response.into_body()))
}

/// The statuses a check passes on, as a failure names them.
fn expected(statuses: &[u16]) -> String {
    match statuses {
        [] => "2xx or 3xx".to_owned(),
        [one] => one.to_string(),
        [some @ .., last] => {
            let some: Vec<String> = some.iter().map(u16::to_string).collect();
            format!("{} or {last}", some.join(", "))
        }
    }
}

/// Whether the first [`PROBE_BODY_LIMIT`] bytes of `body` contain `needle`;
/// reads no further than it must.
async fn body_contains<B>(mut body: B, needle: &[u8]) -> Result<bool, ProbeError>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    ProbeError: From<B::Error>,
{
    if needle.is_empty() {
        return Ok(true);
    }
    let mut seen = Vec::new();
    while seen.len() < PROBE_BODY_LIMIT {
        let Some(frame) = body.frame().await else {
            return Ok(false);
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        // Only where the needle may end in the new bytes is new to look at.
        let from = seen.len().saturating_sub(needle.len() - 1);
        let room = PROBE_BODY_LIMIT - seen.len();
        seen.extend_from_slice(&data[..data.len().min(room)]);
        if seen[from..].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_keeps_its_first_time_and_its_latest_reason() {
        let notes = DownNotes::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let key = ("app".to_owned(), addr);
        assert!(notes.failed(&key, "first".to_owned()));
        let since = notes.get("app", addr).unwrap().since;
        assert!(!notes.failed(&key, "first".to_owned()), "no news");
        assert!(notes.failed(&key, "second".to_owned()));
        let down = notes.get("app", addr).unwrap();
        assert_eq!((down.since, down.reason.as_str()), (since, "second"));
        notes.cleared(&key);
        assert!(notes.get("app", addr).is_none());
    }

    #[test]
    fn a_failed_status_names_what_would_have_passed() {
        assert_eq!(expected(&[]), "2xx or 3xx");
        assert_eq!(expected(&[200]), "200");
        assert_eq!(expected(&[200, 204]), "200 or 204");
        assert_eq!(expected(&[200, 204, 301]), "200, 204 or 301");
    }
}
