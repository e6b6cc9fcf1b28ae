//! The master as the admin endpoint sees it: `/status`, `/healthz`,
//! `/config` and `POST /reload` (which it forwards to the master's loop).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::reload::{ReloadError, ReloadRecord, ReloadRequest, Reloaded};
use super::slot::Generation;
use super::status::{StatusBoard, WorkerState, timestamp};
use crate::admin::{Backend, ReloadAnswer};
use crate::metrics::cluster::ClusterMetrics;
use crate::upstream::Upstream;

pub struct View {
    pid: u32,
    generation: watch::Receiver<Arc<Generation>>,
    status: Arc<StatusBoard>,
    upstreams: Arc<ArcSwap<Vec<Arc<Upstream>>>>,
    metrics: Arc<ClusterMetrics>,
    reloads: mpsc::Sender<ReloadRequest>,
    history: Mutex<ReloadHistory>,
}

/// Reload outcomes since the master started.
#[derive(Debug, Default)]
pub struct ReloadHistory {
    pub last: Option<ReloadRecord>,
    pub successes: u64,
    pub failures: u64,
    pub last_duration: Duration,
}

impl View {
    pub fn new(
        generation: watch::Receiver<Arc<Generation>>,
        status: Arc<StatusBoard>,
        upstreams: Arc<ArcSwap<Vec<Arc<Upstream>>>>,
        metrics: Arc<ClusterMetrics>,
        reloads: mpsc::Sender<ReloadRequest>,
    ) -> Self {
        Self {
            pid: std::process::id(),
            generation,
            status,
            upstreams,
            metrics,
            reloads,
            history: Mutex::new(ReloadHistory::default()),
        }
    }

    pub fn record_reload(&self, record: ReloadRecord, took: Duration) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        match record.result {
            "success" => history.successes += 1,
            _ => history.failures += 1,
        }
        history.last_duration = took;
        history.last = Some(record);
    }
}

impl Backend for View {
    fn status(&self) -> serde_json::Value {
        let generation = self.generation.borrow().clone();
        let in_flight = self.metrics.workers.in_flight();
        let upstreams: Vec<_> = self
            .upstreams
            .load()
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
                        })
                    })
                    .collect();
                json!({ "name": u.name(), "servers": servers })
            })
            .collect();
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "pid": self.pid,
            "version": env!("CARGO_PKG_VERSION"),
            "generation": generation.number,
            "config": {
                "path": generation.path.display().to_string(),
                "loaded_at": timestamp(generation.loaded_at),
            },
            "last_reload": history.last,
            "reloads": { "success": history.successes, "failure": history.failures },
            "workers": self.status.workers(),
            "upstreams": upstreams,
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
        for u in self.upstreams.load().iter() {
            for s in &u.servers {
                self.metrics
                    .healthy
                    .with_label_values(&[u.name(), &s.label])
                    .set(i64::from(s.is_healthy()));
            }
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
                }) => ReloadAnswer::Done {
                    generation,
                    changes,
                },
                Err(e) => ReloadAnswer::Refused {
                    status: e.status(),
                    lines: e.lines(),
                },
            }
        })
    }
}
