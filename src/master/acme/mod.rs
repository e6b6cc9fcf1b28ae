//! ACME (RFC 8555): the master obtains and renews the certificates of
//! `[listeners.tls.acme]`. One task per certificate sleeps until its
//! renewal is due (two thirds into the lifetime of the one in the state
//! folder, or at once when there is none), orders, and writes the result
//! into the state folder; the file watch then reloads it like any renewed
//! certificate file, so every worker changes at once, and a restart finds
//! it. A failed order is retried with a growing backoff while the last
//! good certificate (or the placeholder) keeps serving. Masters that share
//! a state folder (a binary upgrade's old and new one, replicas on one
//! volume) take turns: each orders under a lock on the certificate's file,
//! and looks again at what is stored once it has the lock.

mod http;
mod order;
mod publish;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::order::Method;
use self::publish::Publisher;
use super::status::StatusBoard;
use crate::challenges::Challenges;
use crate::plan::{AcmeConfig, Plan};
use crate::tls::inspect::CertificateFacts;

/// The longest one order may take, from the account to the chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The first retry's wait after a failed order; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);

/// How often a master waiting for another's order tries the lock again.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// What one task keeps: what to order, where the issued chain and key go
/// (where the config loads them from), and how its names are proven.
#[derive(Debug, Clone, PartialEq)]
struct Kept {
    acme: AcmeConfig,
    cert: PathBuf,
    key: PathBuf,
    method: Method,
}

pub struct Acme {
    publisher: Arc<Publisher>,
    tasks: Vec<(Kept, JoinHandle<()>)>,
}

impl Acme {
    /// Keeps the certificates of `plan` (see [`follow`](Self::follow));
    /// and the challenges for slot supervisors to pass to their workers.
    pub fn start(
        plan: &Plan,
        status: Arc<StatusBoard>,
    ) -> (Self, watch::Receiver<Arc<Challenges>>) {
        let (publisher, challenges) = Publisher::new(status);
        let mut acme = Self {
            publisher: Arc::new(publisher),
            tasks: Vec::new(),
        };
        acme.follow(plan);
        (acme, challenges)
    }

    /// Keeps the ACME certificates `plan` names, from now on: tasks for
    /// ones it did not keep start (their state folders made now, before the
    /// file watch looks for them), and those `plan` no longer names stop.
    pub fn follow(&mut self, plan: &Plan) {
        let wanted = wanted(plan);
        self.tasks.retain(|(kept, task)| {
            let stays = wanted.contains(kept);
            if !stays {
                task.abort();
            }
            stays
        });
        for kept in wanted {
            if self.tasks.iter().any(|(k, _)| *k == kept) {
                continue;
            }
            if let Err(e) = store::prepare(&kept.cert, &kept.key) {
                tracing::error!(file = %kept.cert.display(), error = %e, "cannot make the ACME state folder");
            }
            let task = tokio::spawn(keep(kept.clone(), self.publisher.clone()));
            self.tasks.push((kept, task));
        }
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// The ACME certificates of `plan`, each with the challenge that proves
/// its names: HTTP-01 where the cluster has a plain listener (what ACME
/// servers reach on port 80), else TLS-ALPN-01 on the TLS listener.
fn wanted(plan: &Plan) -> Vec<Kept> {
    let method = if plan.listeners.iter().any(|l| l.tls.is_none()) {
        Method::Http01
    } else {
        Method::TlsAlpn01
    };
    let mut wanted: Vec<Kept> = Vec::new();
    let certificates = plan.listeners.iter().filter_map(|l| l.tls.as_ref());
    for c in certificates.flat_map(|t| &t.certificates) {
        let Some(acme) = &c.acme else { continue };
        let kept = Kept {
            // Whether a placeholder serves now does not change what is ordered.
            acme: AcmeConfig {
                placeholder: false,
                ..acme.clone()
            },
            cert: c.cert.clone(),
            key: c.key.clone(),
            method,
        };
        if !wanted.contains(&kept) {
            wanted.push(kept);
        }
    }
    wanted
}

/// Keeps one certificate issued, until aborted.
async fn keep(kept: Kept, publisher: Arc<Publisher>) {
    let config = &kept.acme;
    let names = config.domains.join(", ");
    let mut failures = 0u32;
    loop {
        let due = renewal_due(&kept);
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tracing::info!(names, renew_in = ?Duration::from_secs(wait.as_secs()), "ACME certificate current");
            tokio::time::sleep(wait).await;
        }
        let saved = match ordering_lock(&kept.cert, &names).await {
            // Another master may have renewed it while this one waited.
            Ok(_) if renewal_due(&kept) > SystemTime::now() => continue,
            Ok(_lock) => order(&kept, &names, &publisher).await,
            Err(e) => Err(format!("cannot lock the certificate's file: {e}")),
        };
        match saved {
            Ok(()) => {
                failures = 0;
                tracing::info!(names, file = %kept.cert.display(), "ACME certificate issued");
            }
            Err(error) => {
                failures += 1;
                let wait = backoff(failures);
                tracing::error!(names, error, retry_in = ?wait, "ACME order failed; the current certificate keeps serving");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Orders the certificate and stores it where the config loads it from.
async fn order(kept: &Kept, names: &str, publisher: &Publisher) -> Result<(), String> {
    let config = &kept.acme;
    tracing::info!(names, directory = %config.directory, "ordering a certificate by ACME");
    let issued = tokio::time::timeout(ORDER_TIMEOUT, order::issue(config, kept.method, publisher));
    match issued.await {
        Ok(Ok(pem)) => {
            store::save_certificate(&kept.cert, &kept.key, &pem).map_err(|e| e.to_string())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no certificate within {ORDER_TIMEOUT:?}")),
    }
}

/// The lock on `cert`'s ordering, once no other master holds it.
async fn ordering_lock(cert: &std::path::Path, names: &str) -> std::io::Result<store::Lock> {
    let mut said = false;
    loop {
        if let Some(lock) = store::lock(cert)? {
            return Ok(lock);
        }
        if !std::mem::replace(&mut said, true) {
            tracing::info!(names, file = %cert.display(), "another corral is ordering this certificate; waiting for it");
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// How long to wait after the `failures`-th failure in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

/// When the certificate in the state folder should be renewed: two thirds
/// into its lifetime, as Let's Encrypt advises; now when there is none, or
/// it does not cover every name asked for, or its key does not fit it.
fn renewal_due(kept: &Kept) -> SystemTime {
    let issued = crate::config::issued_certificate(&kept.cert, &kept.key);
    match issued.as_ref().map(CertificateFacts::of) {
        Some(Ok(facts)) if kept.acme.domains.iter().all(|d| facts.covers(d)) => {
            let lifetime = facts
                .not_after
                .duration_since(facts.not_before)
                .unwrap_or_default();
            facts.not_before + lifetime * 2 / 3
        }
        _ => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
