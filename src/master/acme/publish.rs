//! The master's side of ACME challenges: what is pending across every
//! order, sent to every worker (see [`crate::challenges`]); an order tells
//! its ACME server a challenge is ready only once every serving worker
//! confirmed it answers it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::challenges::Challenges;
use crate::master::status::StatusBoard;
use crate::plan::CertifiedPem;

/// How long an order waits for the workers to confirm its answers before
/// going ahead anyway (a worker that is that slow will be replaced).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer to show.
#[derive(Debug, Clone)]
pub enum Answer {
    /// HTTP-01: the token and its key authorization.
    Http {
        token: String,
        key_authorization: String,
    },
    /// TLS-ALPN-01: the name and the certificate that proves it.
    TlsAlpn {
        name: String,
        certificate: CertifiedPem,
    },
}

/// The challenges every worker answers.
pub struct Publisher {
    pending: Mutex<Challenges>,
    workers: watch::Sender<Arc<Challenges>>,
    status: Arc<StatusBoard>,
}

impl Publisher {
    /// A publisher, and what slot supervisors follow to tell their workers.
    pub fn new(status: Arc<StatusBoard>) -> (Self, watch::Receiver<Arc<Challenges>>) {
        let (workers, rx) = watch::channel(Arc::new(Challenges::default()));
        let publisher = Self {
            pending: Mutex::default(),
            workers,
            status,
        };
        (publisher, rx)
    }

    /// Shows `answers` from every worker, and resolves once each serving
    /// worker does (or [`CONFIRM_TIMEOUT`] passed, said in the log).
    pub async fn show(&self, answers: &[Answer]) {
        let version = self.change(|c| {
            for a in answers {
                match a.clone() {
                    Answer::Http {
                        token,
                        key_authorization,
                    } => {
                        c.http.insert(token, key_authorization);
                    }
                    Answer::TlsAlpn { name, certificate } => {
                        c.tls_alpn.insert(name, certificate);
                    }
                }
            }
        });
        let confirmed = self.status.answering(version);
        if tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?CONFIRM_TIMEOUT,
                "not every worker confirmed the ACME challenge answers; going ahead"
            );
        }
    }

    /// Stops showing `answers`.
    pub fn withdraw(&self, answers: &[Answer]) {
        self.change(|c| {
            for a in answers {
                match a {
                    Answer::Http { token, .. } => drop(c.http.remove(token)),
                    Answer::TlsAlpn { name, .. } => drop(c.tls_alpn.remove(name)),
                }
            }
        });
    }

    /// Applies `change` and sends the result under a new version.
    fn change(&self, change: impl FnOnce(&mut Challenges)) -> u64 {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut pending);
        pending.version += 1;
        self.workers.send_replace(Arc::new(pending.clone()));
        pending.version
    }
}
