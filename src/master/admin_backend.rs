//! What the admin endpoint answers, from the master's state: `/status`,
//! `/healthz`, `/metrics`, `/config`, and `POST /reload` (which it forwards
//! to the master's loop). Each answer reads one generation, so the number
//! and the upstreams it shows belong together.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::discovery::Names;
use super::ejections::Ejections;
use super::generation::{CertificateSource, Generation, ListenerCertificate};
use super::health::DownNotes;
use super::reload::{ReloadError, ReloadRecord, ReloadRequest, Reloaded};
use super::status::{StatusBoard, WorkerState, timestamp};
use crate::admin::{Backend, ReloadAnswer};
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::AdminToken;

/// How many reloads `/status` lists in `recent_reloads`: enough to see
/// what a run of edits did, while the document stays small.
const RELOADS_KEPT: usize = 10;

pub struct AdminBackend {
    pid: u32,
    generation: watch::Receiver<Arc<Generation>>,
    status: Arc<StatusBoard>,
    metrics: Arc<ClusterMetrics>,
    reloads: mpsc::Sender<ReloadRequest>,
    /// The latest reloads' outcomes, newest first, at most
    /// [`RELOADS_KEPT`] (their counts are in `metrics`).
    recent_reloads: Mutex<VecDeque<ReloadRecord>>,
    /// Why the servers their health checks took down are down.
    down: Arc<DownNotes>,
    ejections: Arc<Ejections>,
    /// The answers for server names.
    names: Arc<Names>,
}

impl AdminBackend {
    pub fn new(
        generation: watch::Receiver<Arc<Generation>>,
        status: Arc<StatusBoard>,
        metrics: Arc<ClusterMetrics>,
        reloads: mpsc::Sender<ReloadRequest>,
        down: Arc<DownNotes>,
        ejections: Arc<Ejections>,
        names: Arc<Names>,
    ) -> Self {
        Self {
            pid: std::process::id(),
            generation,
            status,
            metrics,
            reloads,
            recent_reloads: Mutex::new(VecDeque::with_capacity(RELOADS_KEPT)),
            down,
            ejections,
            names,
        }
    }

    pub fn record_reload(&self, record: ReloadRecord) {
        let mut recent = self
            .recent_reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.truncate(RELOADS_KEPT - 1);
        recent.push_front(record);
    }
}

impl Backend for AdminBackend {
    fn token(&self) -> Option<AdminToken> {
        let generation = self.generation.borrow();
        generation.plan.admin.as_ref()?.token.clone()
    }

    fn status(&self) -> serde_json::Value {
        let generation = self.generation.borrow().clone();
        let in_flight = self.metrics.workers.in_flight();
        let now = std::time::SystemTime::now();

        let upstreams: Vec<_> = generation
            .upstreams
            .iter()
            .map(|u| {
                let servers: Vec<_> = u
                    .servers
                    .iter()
                    .map(|s| {
                        json!({
                            "addr": s.addr.to_string(),
                            "weight": s.weight,
                            "state": if s.is_healthy() { "healthy" } else { "unhealthy" },
                            "health_checked": u.config.health_check.is_some(),
                            "in_flight": in_flight.get(&(u.name().to_owned(), s.label.clone())).copied().unwrap_or(0),
                            // A server a reload replaced is healthy until
                            // its first check, whatever the old one said.
                            "down": self.down.get(u.name(), s.addr).filter(|_| !s.is_healthy()).map(|d| json!({
                                "since": timestamp(d.since),
                                "reason": d.reason,
                            })),
                            "ejected": self.ejections.current(u.name(), s.addr, now).iter().map(|e| json!({
                                "slot": e.slot,
                                "reason": e.reason,
                                "since": timestamp(e.since),
                                "until": timestamp(e.until),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let dns: Vec<_> = u.config.names.iter().map(|n| {
                    let answer = self.names.get(&(n.host.clone(), n.port)).unwrap_or_default();
                    json!({
                        "name": n.to_string(),
                        "addresses": answer.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "resolved_at": answer.resolved_at.map(timestamp),
                        "error": answer.error.map(|(reason, since)| json!({
                            "reason": reason,
                            "since": timestamp(since),
                        })),
                    })
                }).collect();
                json!({ "name": u.name(), "servers": servers, "dns": dns })
            })
            .collect();
        let recent_reloads: Vec<ReloadRecord> = self
            .recent_reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let reloads = |result| self.metrics.reloads.with_label_values(&[result]).get();
        json!({
            "pid": self.pid,
            "version": env!("CARGO_PKG_VERSION"),
            "generation": generation.number,
            "config": {
                "path": generation.path.display().to_string(),
                "loaded_at": timestamp(generation.loaded_at),
            },
            "last_reload": recent_reloads.first(),
            "recent_reloads": recent_reloads,
            "reloads": { "success": reloads("success"), "failure": reloads("failure") },
            "workers": self.status.workers(),
            "upstreams": upstreams,
            "certificates": certificates(&generation),
        })
    }

    fn healthz(&self) -> Result<(), String> {
        match self.status.not_ready().as_slice() {
            [] => Ok(()),
            slots => Err(format!("worker slots not serving: {slots:?}")),
        }
    }

    fn metrics(&self) -> String {
        let ready = self
            .status
            .workers()
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        self.metrics
            .ready_workers
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
        self.metrics.healthy.reset();
        let generation = self.generation.borrow().clone();
        for u in generation.upstreams.iter() {
            for s in &u.servers {
                self.metrics
                    .healthy
                    .with_label_values(&[u.name(), &s.label])
                    .set(i64::from(s.is_healthy()));
            }
        }
        self.metrics.certificate_expiry.reset();
        for ((listener, name), not_after) in expiries(&generation) {
            self.metrics
                .certificate_expiry
                .with_label_values(&[listener, name])
                .set(not_after);
        }
        self.metrics.render()
    }

    fn config(&self) -> serde_json::Value {
        let generation = self.generation.borrow().clone();
        json!({
            "generation": generation.number,
            "path": generation.path.display().to_string(),
            "text": generation.text,
        })
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = ReloadAnswer> + Send>> {
        let reloads = self.reloads.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let outcome = match reloads.send(ReloadRequest { reply }).await {
                Ok(()) => answer.await.unwrap_or(Err(ReloadError::Stopping)),
                Err(_) => Err(ReloadError::Stopping),
            };
            match outcome {
                Ok(Reloaded {
                    generation,
                    changes,
                    unchanged,
                }) => ReloadAnswer::Done {
                    generation,
                    changes,
                    unchanged,
                },
                Err(e) => ReloadAnswer::Refused {
                    status: e.status(),
                    lines: e.lines(),
                },
            }
        })
    }
}

/// `/status`'s `certificates`: each certificate of each TLS listener.
fn certificates(generation: &Generation) -> Vec<serde_json::Value> {
    let path = |p: &std::path::Path| p.display().to_string();
    generation
        .certificates
        .iter()
        .map(|c| {
            let mut entry = json!({
                "listener": c.listener,
                "names": c.facts.names,
                "issuer": c.facts.issuer,
                "not_before": timestamp(c.facts.not_before),
                "not_after": timestamp(c.facts.not_after),
                "ocsp": c.ocsp.as_ref().map(|o| json!({
                    "path": path(&o.path),
                    "stapled": o.stapled,
                })),
            });
            // `source` says where the certificate comes from; the fields
            // beside it are that source's own.
            match &c.source {
                CertificateSource::File { cert, key } => {
                    entry["source"] = json!("file");
                    entry["cert"] = json!(path(cert));
                    entry["key"] = json!(path(key));
                }
                CertificateSource::Acme {
                    directory,
                    state_dir,
                    placeholder,
                } => {
                    entry["source"] = json!("acme");
                    entry["directory"] = json!(directory);
                    entry["state_dir"] = json!(path(state_dir));
                    entry["placeholder"] = json!(placeholder);
                }
            }
            entry
        })
        .collect()
}

/// The expiry gauge's series: by listener and certificate name, the
/// soonest `notAfter` (two certificates of one name, RSA and ECDSA say,
/// are one series, and the one to renew first is the one to watch). An
/// ACME placeholder has none: it is no certificate anyone renews.
fn expiries(generation: &Generation) -> std::collections::BTreeMap<(&str, &str), i64> {
    let mut out = std::collections::BTreeMap::new();
    let placeholder = |c: &&ListenerCertificate| {
        matches!(
            c.source,
            CertificateSource::Acme {
                placeholder: true,
                ..
            }
        )
    };
    for c in generation.certificates.iter().filter(|c| !placeholder(c)) {
        let not_after = crate::tls::inspect::unix_seconds(c.facts.not_after);
        out.entry((c.listener.as_str(), c.facts.label()))
            .and_modify(|t: &mut i64| *t = (*t).min(not_after))
            .or_insert(not_after);
    }
    out
}
