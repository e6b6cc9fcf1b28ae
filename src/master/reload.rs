//! Config reload: read, validate, publish the next generation, and wait for
//! every worker to confirm it.
//!
//! A file that does not validate is rejected whole: the running generation
//! keeps serving, and the failure is logged, shown in `/status` and counted.
//! A valid one gets the next generation number; listeners whose address is
//! unchanged keep their sockets, new ones are bound before anything is
//! published (a port in use rejects the reload), and each slot supervisor
//! sends its worker the new config and any new sockets. Workers keep serving
//! throughout; the master reports success once all of them serve the new
//! generation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;

use super::Master;
use super::slot::Generation;
use super::sockets::{self, BindError};
use super::status::timestamp;
use crate::config::{ConfigError, diff};
use crate::plan::Plan;

/// How long workers get to confirm a new generation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Admin,
    File,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::Admin => "POST /reload",
            Self::File => "file change",
        }
    }
}

/// A reload asked for through the admin endpoint.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<Reloaded, ReloadError>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    /// What changed, one line each (see `config::diff`).
    pub changes: Vec<String>,
    /// Nothing had changed, so nothing was reloaded: `generation` is the
    /// running one.
    pub unchanged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(
        "workers did not confirm generation {generation} within {timeout:?}; slots not serving it: {slots:?}"
    )]
    NotConfirmed {
        generation: u64,
        timeout: Duration,
        slots: Vec<usize>,
    },
    #[error("the master is stopping")]
    Stopping,
}

impl ReloadError {
    /// The admin endpoint's status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Bind(_) => StatusCode::CONFLICT,
            Self::NotConfirmed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// One line per problem (every config error as `FILE:LINE:COL: reason`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Invalid(e) => e.lines(),
            other => vec![other.to_string()],
        }
    }
}

/// The outcome of the last reload, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub result: &'static str,
    pub at: String,
    pub trigger: &'static str,
    pub generation: u64,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl Master {
    pub(super) async fn reload(&mut self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        self.notify.reloading();
        let started = std::time::Instant::now();
        let result = self.apply().await;
        let elapsed = started.elapsed();
        let current = self.generation.borrow().number;
        let record = |result, error| ReloadRecord {
            result,
            at: timestamp(SystemTime::now()),
            trigger: trigger.as_str(),
            generation: current,
            error,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        match &result {
            // Not a reload: no new generation, nothing counted or recorded.
            Ok(done) if done.unchanged => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = done.generation,
                    "config unchanged; nothing to reload"
                );
            }
            Ok(done) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.reload_duration.observe(elapsed.as_secs_f64());
                self.metrics
                    .generation
                    .set(i64::try_from(done.generation).unwrap_or(i64::MAX));
                // `/status` first, then the log, so a log reader finds it updated.
                self.view.record_reload(record("success", None));
                let changes: String = done.changes.iter().map(|c| format!("\n  {c}")).collect();
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = done.generation,
                    ?elapsed,
                    "config reloaded{changes}"
                );
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                self.metrics
                    .generation
                    .set(i64::try_from(current).unwrap_or(i64::MAX));
                let error = e.lines().join("\n");
                self.view
                    .record_reload(record("failure", Some(error.clone())));
                tracing::error!(
                    trigger = trigger.as_str(),
                    generation = current,
                    "config reload failed; still serving generation {current}:\n{error}"
                );
            }
        }
        self.notify_reloaded(&result);
        result
    }

    async fn apply(&mut self) -> Result<Reloaded, ReloadError> {
        let current = self.generation.borrow().clone();
        let read = std::fs::read_to_string(&self.path);
        self.last_text = read.as_ref().ok().cloned();
        let text = read.map_err(|source| ConfigError::Read {
            path: self.path.clone(),
            source,
        })?;
        let plan = crate::config::from_str(&self.path, &text)?;
        let files = files_digest(&plan);
        if text == current.text && files == current.files {
            return Ok(Reloaded {
                generation: current.number,
                changes: Vec::new(),
                unchanged: true,
            });
        }
        let mut changes = diff::diff(&current.plan, &plan);
        if files != current.files {
            changes.push("~ certificate or key files: contents changed, read again".to_owned());
        }
        if plan.admin != current.plan.admin {
            tracing::warn!("admin.listen changed; it {}", diff::ADMIN_AT_RESTART);
        }
        let slots = plan.runtime.workers.get();
        let listeners = sockets::rebind(&current.sockets, &plan, slots)?;
        for l in listeners
            .iter()
            .filter(|l| !current.sockets.iter().any(|c| c.bound == l.bound))
        {
            tracing::info!(listener = %l.name, addr = %l.bound, sockets = l.slots.len(), "listening");
        }
        let next = Arc::new(Generation {
            number: current.number + 1,
            path: self.path.clone(),
            text,
            files,
            plan: Arc::new(plan),
            sockets: Arc::new(listeners),
            loaded_at: SystemTime::now(),
        });
        let upstreams = crate::upstream::rebuild(&next.plan.upstreams, &self.checked.load());
        self.checked.store(Arc::new(upstreams));
        self.checker.update(&self.checked.load());
        self.health
            .send_replace(Arc::new(super::health_of(&self.checked.load())));
        self.generation.send_replace(next.clone());
        self.resize_slots(slots);
        drop(current);

        let confirmed =
            tokio::time::timeout(CONFIRM_TIMEOUT, self.status.all_at(next.number)).await;
        if confirmed.is_err() {
            let slots = self
                .status
                .workers()
                .iter()
                .filter(|w| w.generation < Some(next.number))
                .map(|w| w.slot)
                .collect();
            return Err(ReloadError::NotConfirmed {
                generation: next.number,
                timeout: CONFIRM_TIMEOUT,
                slots,
            });
        }
        Ok(Reloaded {
            generation: next.number,
            changes,
            unchanged: false,
        })
    }
}

/// A digest of the certificate and key bytes `plan` holds.
pub(super) fn files_digest(plan: &Plan) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let pems = plan
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| &t.certificates)
        .flat_map(|c| [&c.pem.chain, &c.pem.key]);
    for pem in pems {
        hasher.update(&(pem.len() as u64).to_le_bytes());
        hasher.update(pem.as_bytes());
    }
    hasher.digest()
}
