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
    /// The latest generation a worker of this slot could not apply, and why.
    #[serde(skip)]
    pub refused: Option<(u64, String)>,
}

impl WorkerStatus {
    /// Whether the slot has a worker that serves or is about to: one a
    /// reload waits for, as it does for a replacement that starts at once.
    /// A slot backing off has none; whichever worker it starts next starts
    /// on the current generation.
    fn live(&self) -> bool {
        match self.state {
            WorkerState::Starting | WorkerState::Ready => true,
            WorkerState::Backoff => self.next_start_in_ms == Some(0),
            WorkerState::Draining | WorkerState::Stopped => false,
        }
    }

    fn serves(&self, generation: u64) -> bool {
        self.state == WorkerState::Ready && self.generation >= Some(generation)
    }
}

/// Where the slots stand with a published generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Every live slot serves it or a later one.
    Confirmed,
    /// These slots' workers do not serve it yet.
    Waiting(Vec<usize>),
    /// A worker of `slot` could not apply it or a later one.
    Refused { slot: usize, error: String },
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
            refused: None,
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

    /// A worker of `slot` could not start on, or switch to, `generation`.
    pub fn refused(&self, slot: usize, generation: u64, error: String) {
        self.update(slot, |w| w.refused = Some((generation, error)));
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

    /// Where the slots stand with `generation`. A worker's death is its
    /// own event, not the generation's: its slot backs off or starts its
    /// next worker on the current generation, and counts once that one
    /// serves. Only a worker that could not apply the generation refuses it.
    pub fn confirmation(&self, generation: u64) -> Confirmation {
        let workers = self.workers();
        let refusal = workers.iter().find_map(|w| match &w.refused {
            Some((refused, error)) if *refused >= generation => Some((w.slot, error.clone())),
            _ => None,
        });
        if let Some((slot, error)) = refusal {
            return Confirmation::Refused { slot, error };
        }
        let waiting: Vec<usize> = workers
            .iter()
            .filter(|w| w.live() && !w.serves(generation))
            .map(|w| w.slot)
            .collect();
        if waiting.is_empty() {
            Confirmation::Confirmed
        } else {
            Confirmation::Waiting(waiting)
        }
    }

    /// Resolves once `generation` is confirmed or refused.
    pub async fn settled(&self, generation: u64) -> Confirmation {
        let mut changes = self.version.subscribe();
        loop {
            let now = self.confirmation(generation);
            if !matches!(now, Confirmation::Waiting(_)) || changes.changed().await.is_err() {
                return now;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two slots serving generation 1.
    fn serving() -> StatusBoard {
        let board = StatusBoard::new(2);
        for slot in 0..2 {
            board.spawned(slot, Some(100 + slot as u32));
            board.ready(slot, 1);
        }
        board
    }

    #[test]
    fn a_generation_is_confirmed_once_every_live_slot_serves_it() {
        let board = serving();
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![0, 1]));
        board.ready(0, 2);
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![1]));
        board.ready(1, 3);
        assert_eq!(board.confirmation(2), Confirmation::Confirmed);
    }

    #[test]
    fn a_slot_backing_off_is_not_waited_for_but_a_replacement_starting_at_once_is() {
        let board = serving();
        board.ready(0, 2);
        // Slot 1's worker confirmed, then died: the board keeps its last
        // generation, which must not make the slot look served.
        board.ready(1, 2);
        board.exited(1, "killed by SIGKILL".into(), 1, Some(Duration::ZERO));
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![0, 1]));
        board.exited(
            1,
            "killed by SIGKILL".into(),
            3,
            Some(Duration::from_secs(8)),
        );
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![0]));
        board.ready(0, 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
        // Its replacement starts on the current generation and is waited for.
        board.spawned(1, Some(200));
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![1]));
        board.ready(1, 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
    }

    #[test]
    fn a_worker_that_cannot_apply_a_generation_refuses_it_but_not_an_earlier_one() {
        let board = serving();
        board.refused(1, 2, "cannot open the access log".into());
        assert_eq!(
            board.confirmation(2),
            Confirmation::Refused {
                slot: 1,
                error: "cannot open the access log".into()
            }
        );
        board.ready(0, 3);
        board.ready(1, 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
    }

    #[tokio::test]
    async fn settling_waits_for_the_board_to_change() {
        let board = std::sync::Arc::new(serving());
        let waiting = tokio::spawn({
            let board = board.clone();
            async move { board.settled(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        board.ready(0, 2);
        board.exited(
            1,
            "killed by SIGKILL".into(),
            2,
            Some(Duration::from_millis(250)),
        );
        assert_eq!(waiting.await.unwrap(), Confirmation::Confirmed);
    }
}
