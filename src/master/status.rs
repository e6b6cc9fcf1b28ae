//! What the master knows about its worker slots, for `/status`, `/healthz`
//! and the startup wait. Slot supervisors write it, each through the
//! [`Seat`] it was given; readers take copies.
//!
//! A slot number comes back when a reload retires a slot and a later one
//! adds it again, possibly while the retired slot's supervisor still drains
//! its worker. Each seat carries the epoch of the slot it was made for, and
//! what a stale seat reports is ignored, so the old supervisor's last words
//! never overwrite the new slot's row.

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
    /// The version of the ACME challenges its worker answers.
    #[serde(skip)]
    pub challenges: u64,
    pub next_start_in_ms: Option<u64>,
    /// The latest generation a worker of this slot could not apply, and why.
    #[serde(skip)]
    pub refused: Option<Refusal>,
    /// Which supervisor's row this is (see [`Seat`]).
    #[serde(skip)]
    epoch: u64,
}

/// A worker's refusal of a generation.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub generation: u64,
    pub error: String,
    /// What the slot served when its worker refused: the refusal concerns
    /// no generation up to that one, which the slot did confirm.
    served: Option<u64>,
}

/// Where one slot supervisor writes on the board: its slot's row, for as
/// long as the row is the one made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub slot: usize,
    epoch: u64,
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

    /// Its worker's refusal, if that stands in the way of `generation`:
    /// one of it or a later one (a worker may be sent only the latest of
    /// several), while the slot does not serve it and had not served it.
    fn refusal_of(&self, generation: u64) -> Option<&Refusal> {
        self.refused.as_ref().filter(|r| {
            r.generation >= generation && r.served < Some(generation) && !self.serves(generation)
        })
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
    workers: Mutex<Rows>,
    /// Bumped on every change, so waiters can `changed().await` without races.
    version: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Rows {
    rows: Vec<WorkerStatus>,
    /// The epoch the next new row gets.
    next_epoch: u64,
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl StatusBoard {
    /// A board without slots; [`resize`](Self::resize) adds them.
    pub fn new() -> Self {
        Self {
            workers: Mutex::new(Rows::default()),
            version: watch::Sender::new(0),
        }
    }

    fn fresh(slot: usize, epoch: u64) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid: None,
            state: WorkerState::Starting,
            started_at: None,
            restarts: 0,
            generation: None,
            last_exit: None,
            crash_loop: 0,
            challenges: 0,
            next_start_in_ms: None,
            refused: None,
            epoch,
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to `seat`'s row, unless the row is another seat's.
    fn update(&self, seat: Seat, change: impl FnOnce(&mut WorkerStatus)) {
        let mut rows = self.rows();
        let Some(w) = rows.rows.get_mut(seat.slot) else {
            return;
        };
        if w.epoch != seat.epoch {
            return;
        }
        change(w);
        drop(rows);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn spawned(&self, seat: Seat, pid: Option<u32>) {
        self.update(seat, |w| {
            w.pid = pid;
            w.challenges = 0;
            w.state = WorkerState::Starting;
            w.started_at = Some(timestamp(SystemTime::now()));
            w.generation = None;
            w.next_start_in_ms = None;
        });
    }

    /// The slot's worker serves `generation`: a refusal of it or of an
    /// earlier one no longer stands.
    pub fn ready(&self, seat: Seat, generation: u64) {
        self.update(seat, |w| {
            w.state = WorkerState::Ready;
            w.generation = Some(generation);
            if w.refused
                .as_ref()
                .is_some_and(|r| r.generation <= generation)
            {
                w.refused = None;
            }
        });
    }

    /// A worker of the slot could not start on, or switch to, `generation`.
    pub fn refused(&self, seat: Seat, generation: u64, error: String) {
        self.update(seat, |w| {
            let served = w.generation.filter(|_| w.state == WorkerState::Ready);
            w.refused = Some(Refusal {
                generation,
                error,
                served,
            });
        });
    }

    /// The slot's worker answers the ACME challenges of `version`.
    pub fn challenged(&self, seat: Seat, version: u64) {
        self.update(seat, |w| w.challenges = w.challenges.max(version));
    }

    /// Resolves once every slot's worker that serves, or is about to,
    /// answers the challenges of `version`.
    pub async fn answering(&self, version: u64) {
        self.wait_for(|w| !w.live() || w.challenges >= version)
            .await;
    }

    pub fn draining(&self, seat: Seat) {
        self.update(seat, |w| w.state = WorkerState::Draining);
    }

    pub fn exited(&self, seat: Seat, how: String, crash_loop: u32, next_start: Option<Duration>) {
        self.update(seat, |w| {
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

    pub fn stopped(&self, seat: Seat) {
        self.update(seat, |w| {
            w.pid = None;
            w.state = WorkerState::Stopped;
        });
    }

    /// Follows a change of `runtime.workers`: retired slots leave the
    /// board, and new ones start out as starting, each with a new epoch;
    /// the seats of the new ones, for their supervisors.
    pub fn resize(&self, slots: usize) -> Vec<Seat> {
        let mut rows = self.rows();
        rows.rows.truncate(slots);
        let mut seats = Vec::new();
        for slot in rows.rows.len()..slots {
            let epoch = rows.next_epoch;
            rows.next_epoch += 1;
            rows.rows.push(Self::fresh(slot, epoch));
            seats.push(Seat { slot, epoch });
        }
        drop(rows);
        self.version.send_modify(|v| *v += 1);
        seats
    }

    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.rows().rows.clone()
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
        let refusal = workers
            .iter()
            .find_map(|w| Some((w.slot, w.refusal_of(generation)?.error.clone())));
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

    /// Two slots serving generation 1, and their seats.
    fn serving() -> (StatusBoard, Vec<Seat>) {
        let board = StatusBoard::new();
        let seats = board.resize(2);
        for seat in &seats {
            board.spawned(*seat, Some(100 + seat.slot as u32));
            board.ready(*seat, 1);
        }
        (board, seats)
    }

    #[test]
    fn a_generation_is_confirmed_once_every_live_slot_serves_it() {
        let (board, s) = serving();
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![0, 1]));
        board.ready(s[0], 2);
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![1]));
        board.ready(s[1], 3);
        assert_eq!(board.confirmation(2), Confirmation::Confirmed);
    }

    #[test]
    fn a_slot_backing_off_is_not_waited_for_but_a_replacement_starting_at_once_is() {
        let (board, s) = serving();
        board.ready(s[0], 2);
        // Slot 1's worker confirmed, then died: the board keeps its last
        // generation, which must not make the slot look served.
        board.ready(s[1], 2);
        board.exited(s[1], "killed by SIGKILL".into(), 1, Some(Duration::ZERO));
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![0, 1]));
        board.exited(
            s[1],
            "killed by SIGKILL".into(),
            3,
            Some(Duration::from_secs(8)),
        );
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![0]));
        board.ready(s[0], 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
        // Its replacement starts on the current generation and is waited for.
        board.spawned(s[1], Some(200));
        assert_eq!(board.confirmation(3), Confirmation::Waiting(vec![1]));
        board.ready(s[1], 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
    }

    #[test]
    fn a_worker_that_cannot_apply_a_generation_refuses_it_but_not_an_earlier_one() {
        let (board, s) = serving();
        board.refused(s[1], 2, "cannot open the access log".into());
        assert_eq!(
            board.confirmation(2),
            Confirmation::Refused {
                slot: 1,
                error: "cannot open the access log".into()
            }
        );
        board.ready(s[0], 3);
        board.ready(s[1], 3);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
    }

    #[test]
    fn a_refusal_of_the_next_generation_does_not_fail_one_every_slot_served() {
        let (board, s) = serving();
        board.ready(s[0], 2);
        board.ready(s[1], 2);
        // Before the master looks at generation 2, slot 1 refuses 3.
        board.refused(s[1], 3, "cannot open the access log".into());
        assert_eq!(board.confirmation(2), Confirmation::Confirmed);
        // Its worker is replaced for that, and the replacement is waited
        // for; the refusal still fails generation 3 itself.
        board.exited(s[1], "killed by SIGKILL".into(), 1, Some(Duration::ZERO));
        board.spawned(s[1], Some(300));
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![1]));
        assert!(matches!(
            board.confirmation(3),
            Confirmation::Refused { slot: 1, .. }
        ));
        // Once the replacement serves 3, the refusal no longer stands.
        board.ready(s[1], 3);
        board.ready(s[0], 3);
        assert_eq!(board.confirmation(2), Confirmation::Confirmed);
        assert_eq!(board.confirmation(3), Confirmation::Confirmed);
    }

    #[test]
    fn a_retired_slots_supervisor_cannot_write_over_the_slot_that_took_its_number() {
        let board = StatusBoard::new();
        let first = board.resize(4);
        for seat in &first {
            board.spawned(*seat, Some(100 + seat.slot as u32));
            board.ready(*seat, 1);
        }
        // Slots 2 and 3 are retired; before their supervisors are done, a
        // reload adds them again.
        assert!(board.resize(2).is_empty());
        let again = board.resize(4);
        assert_eq!(again.iter().map(|s| s.slot).collect::<Vec<_>>(), [2, 3]);
        board.spawned(again[0], Some(300));
        board.ready(again[0], 2);
        // The old supervisor of slot 2 finishes.
        board.draining(first[2]);
        board.stopped(first[2]);
        let row = &board.workers()[2];
        assert_eq!((row.state, row.pid), (WorkerState::Ready, Some(300)));
        assert_eq!(board.confirmation(2), Confirmation::Waiting(vec![0, 1, 3]));
    }

    #[tokio::test]
    async fn settling_waits_for_the_board_to_change() {
        let (board, s) = serving();
        let board = std::sync::Arc::new(board);
        let waiting = tokio::spawn({
            let board = board.clone();
            async move { board.settled(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        board.ready(s[0], 2);
        board.exited(
            s[1],
            "killed by SIGKILL".into(),
            2,
            Some(Duration::from_millis(250)),
        );
        assert_eq!(waiting.await.unwrap(), Confirmation::Confirmed);
    }
}
