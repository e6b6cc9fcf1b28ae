//! Config reload: what asks for one, what it answers, and [`prepare`],
//! which reads and checks the file and makes the next generation.
//!
//! A file that does not validate is rejected whole: the running generation
//! keeps serving, and the failure is logged, shown in `/status` and counted.
//! A valid one gets the next generation number; listeners whose address is
//! unchanged keep their sockets, new ones are bound before anything is
//! published (a port in use rejects the reload). The master then publishes
//! it (`process`): each slot supervisor sends its worker the new plan and
//! any new sockets, and workers keep serving throughout. The reload is then
//! [`Pending`]: it succeeds once every live slot serves the new generation
//! ([`settled`]). A slot that has no worker meanwhile (one died, or backs
//! off) is not waited for: whichever worker it starts next starts on the
//! new generation, and is waited for once it is starting. Nothing else
//! waits for a pending reload: the next one may be published meanwhile, and
//! the admin endpoint answers throughout.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;

use super::generation::{Generation, Summary, certificates};
use super::guard::Rollback;
use super::sockets::{self, BindError};
use super::status::{Confirmation, StatusBoard};
use crate::config::{ConfigError, diff};
use crate::plan::Plan;

/// How long a live worker gets to confirm a new generation. One that takes
/// longer is stuck (a dead one is not waited for), and its heartbeat
/// timeout replaces it.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Admin,
    File,
    /// The reload guard, undoing a generation that answered worse.
    Guard,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::Admin => "POST /reload",
            Self::File => "file change",
            Self::Guard => "reload guard",
        }
    }
}

/// Where a reload's outcome goes.
pub type Reply = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// A reload asked for through the admin endpoint.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: Reply,
}

/// A reload published and not yet confirmed by every live worker. It holds
/// no [`Generation`]: that would keep the sockets of slots that a later
/// reload retires open, and queueing, for as long as this one is pending.
#[derive(Debug)]
pub struct Pending {
    pub trigger: Trigger,
    pub started: std::time::Instant,
    pub generation: u64,
    /// What the service manager is told when it is confirmed.
    pub summary: Summary,
    pub changes: Vec<String>,
    pub deadline: tokio::time::Instant,
    pub reply: Option<Reply>,
    /// The text of the generation before, for the reload guard to return
    /// to; `None` for a rollback, which is not judged.
    pub previous_text: Option<String>,
    /// What this reload undoes, when the guard made it.
    pub rollback: Option<Rollback>,
}

/// Resolves once `pending` (the oldest; never, without one) has an outcome:
/// every live slot serves its generation or a later one, a worker could not
/// apply it, or live workers did not confirm it by its deadline.
pub async fn settled(status: &StatusBoard, pending: Option<&Pending>) -> Result<(), ReloadError> {
    let Some(pending) = pending else {
        return std::future::pending().await;
    };
    let generation = pending.generation;
    let settled = tokio::time::timeout_at(pending.deadline, status.settled(generation)).await;
    match settled.unwrap_or_else(|_| status.confirmation(generation)) {
        Confirmation::Confirmed => Ok(()),
        Confirmation::Waiting(slots) => Err(ReloadError::NotConfirmed {
            generation,
            timeout: CONFIRM_TIMEOUT,
            slots,
        }),
        Confirmation::Refused { slot, error } => Err(ReloadError::Refused {
            generation,
            slot,
            error,
        }),
    }
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
        "cannot listen on {addr} (admin.listen): {source}; the admin endpoint stays where it was"
    )]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "workers did not confirm generation {generation} within {timeout:?}; slots not serving it: {slots:?}"
    )]
    NotConfirmed {
        generation: u64,
        timeout: Duration,
        slots: Vec<usize>,
    },
    /// The worker's own words, from the control channel.
    #[error("the worker of slot {slot} could not apply generation {generation}: {error}")]
    Refused {
        generation: u64,
        slot: usize,
        error: String,
    },
    #[error("the master is stopping")]
    Stopping,
}

impl ReloadError {
    /// The admin endpoint's status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Bind(_) | Self::Admin { .. } => StatusCode::CONFLICT,
            Self::NotConfirmed { .. } | Self::Refused { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

/// The outcome of one reload, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub result: &'static str,
    pub at: String,
    pub trigger: &'static str,
    pub generation: u64,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// What a successful reload changed, one line each (as it logs them).
    pub changes: Vec<String>,
    /// Whether the reload guard made this reload, returning to the
    /// generation before one that answered worse (`rollback` says which).
    pub rolled_back: bool,
    pub rollback: Option<Rollback>,
}

/// What a reload found in the file.
#[derive(Debug)]
pub enum Prepared {
    /// The same text, certificate bytes and admin token: nothing to do.
    Unchanged,
    /// The generation to publish (its new sockets already bound), and what
    /// changed, one line each.
    Next {
        generation: Generation,
        changes: Vec<String>,
        /// A changed `admin.listen`: the new socket (bound), or `None`
        /// when the endpoint is removed.
        admin: Option<AdminMove>,
    },
}

/// Where the admin endpoint moves to on a reload.
#[derive(Debug)]
pub enum AdminMove {
    To(std::net::TcpListener),
    Off,
}

/// Reads the file at `path`; `last_text` becomes the text as read, valid
/// or not (`None`: unreadable).
pub fn read(path: &Path, last_text: &mut Option<String>) -> Result<String, ReloadError> {
    let read = std::fs::read_to_string(path);
    *last_text = read.as_ref().ok().cloned();
    Ok(read.map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?)
}

/// Checks `text` (the file at `path`, or what it held before) and makes the
/// generation after `current` from it. Server names get the addresses
/// `names` has for them. Nothing is published here.
pub fn prepare(
    current: &Generation,
    path: &Path,
    text: String,
    names: &super::discovery::Names,
) -> Result<Prepared, ReloadError> {
    let mut plan = crate::config::from_str(path, &text)?;
    warn(&plan);
    // Names already known are served at once; new ones once looked up.
    super::discovery::resolve(&mut plan, names);
    // The cluster's key, not the file's: clients keep their servers.
    plan.sticky_key.clone_from(&current.plan.sticky_key);
    plan.ticket_keys.clone_from(&current.plan.ticket_keys);
    let renewed = certificates(&plan) != certificates(&current.plan);
    let token = |p: &Plan| p.admin.as_ref().and_then(|a| a.token.clone());
    let rotated = token(&plan) != token(&current.plan);
    if text == current.text && !renewed && !rotated {
        return Ok(Prepared::Unchanged);
    }
    let mut changes = diff::diff(&current.plan, &plan);
    if renewed {
        changes.push("~ certificate, key or OCSP files: contents changed, read again".to_owned());
    }
    if rotated {
        changes.push("~ admin token: changed".to_owned());
    }
    let listen = |p: &Plan| p.admin.as_ref().map(|a| a.listen);
    // Bound before anything is published: an address that cannot be had
    // fails the reload, and the old endpoint goes on.
    let admin = match listen(&plan) {
        new if new == listen(&current.plan) => None,
        None => Some(AdminMove::Off),
        Some(addr) => Some(AdminMove::To(
            std::net::TcpListener::bind(addr)
                .map_err(|source| ReloadError::Admin { addr, source })?,
        )),
    };
    let listeners = sockets::rebind(&current.sockets, &plan, plan.runtime.workers.get())?;
    for l in listeners
        .iter()
        .filter(|l| !current.sockets.iter().any(|c| c.bound == l.bound))
    {
        tracing::info!(listener = %l.name, addr = %l.bound, sockets = l.slots.len(), "listening");
    }
    Ok(Prepared::Next {
        generation: current.next(text, plan, listeners),
        changes,
        admin,
    })
}

/// Logs what the new config allows but should not.
pub(super) fn warn(plan: &Plan) {
    for warning in &plan.warnings {
        tracing::warn!("config: {warning}");
    }
}
