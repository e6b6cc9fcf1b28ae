//! What the master knows about its worker slots, for `/status`, `/healthz`
//! and the startup wait. Slot supervisors write it; readers take copies.

use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned, not yet serving.
    Starting,
    Ready,
    /// Exited; waiting out a crash-loop backoff before the next start.
    Backoff,
    Draining,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: WorkerState,
    pub started_at: Option<String>,
    pub restarts: u64,
    pub generation: Option<u64>,
    /// How the previous worker in this slot ended.
    pub last_exit: Option<String>,
    /// Quick exits in a row; above one the slot backs off before respawning.
    pub crash_loop: u32,
    pub next_start_in_ms: Option<u64>,
}

#[derive(Debug)]
pub struct StatusBoard {
    workers: Mutex<Vec<WorkerStatus>>,
    /// Bumped on every change, so waiters can `changed().await` without races.
    version: watch::Sender<u64>,
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl StatusBoard {
    pub fn new(slots: usize) -> Self {
        let workers = (0..slots).map(Self::fresh).collect();
        Self {
            workers: Mutex::new(workers),
            version: watch::Sender::new(0),
        }
    }

    fn fresh(slot: usize) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid: None,
            state: WorkerState::Starting,
            started_at: None,
            restarts: 0,
            generation: None,
            last_exit: None,
            crash_loop: 0,
            next_start_in_ms: None,
        }
    }

    fn update(&self, slot: usize, change: impl FnOnce(&mut WorkerStatus)) {
        if let Some(w) = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            change(w);
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn spawned(&self, slot: usize, pid: Option<u32>) {
        self.update(slot, |w| {
            w.pid = pid;
            w.state = WorkerState::Starting;
            w.started_at = Some(timestamp(SystemTime::now()));
            w.generation = None;
            w.next_start_in_ms = None;
        });
    }

    pub fn ready(&self, slot: usize, generation: u64) {
        self.update(slot, |w| {
            w.state = WorkerState::Ready;
            w.generation = Some(generation);
        });
    }

    pub fn draining(&self, slot: usize) {
        self.update(slot, |w| w.state = WorkerState::Draining);
    }

    pub fn exited(&self, slot: usize, how: String, crash_loop: u32, next_start: Option<Duration>) {
        self.update(slot, |w| {
            w.pid = None;
            w.state = if next_start.is_some() {
                WorkerState::Backoff
            } else {
                WorkerState::Stopped
            };
            w.restarts += 1;
            w.last_exit = Some(how);
            w.crash_loop = crash_loop;
            w.next_start_in_ms =
                next_start.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        });
    }

    pub fn stopped(&self, slot: usize) {
        self.update(slot, |w| {
            w.pid = None;
            w.state = WorkerState::Stopped;
        });
    }

    /// Follows a change of `runtime.workers`: new slots start out as
    /// starting, retired ones leave the board.
    pub fn resize(&self, slots: usize) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.truncate(slots);
        for slot in workers.len()..slots {
            workers.push(Self::fresh(slot));
        }
        drop(workers);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Slots without a serving worker, for `/healthz`.
    pub fn not_ready(&self) -> Vec<usize> {
        self.workers()
            .iter()
            .filter(|w| w.state != WorkerState::Ready)
            .map(|w| w.slot)
            .collect()
    }

    /// Resolves once every slot has a serving worker.
    pub async fn all_ready(&self) {
        self.wait_for(|w| w.state == WorkerState::Ready).await;
    }

    /// Resolves once every slot's worker serves `generation` or later.
    pub async fn all_at(&self, generation: u64) {
        self.wait_for(|w| w.state == WorkerState::Ready && w.generation >= Some(generation))
            .await;
    }

    async fn wait_for(&self, done: impl Fn(&WorkerStatus) -> bool) {
        let mut changes = self.version.subscribe();
        while !self.workers().iter().all(&done) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How a child process ended, for the log.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => "ended".to_owned(),
    }
}
