//! How long a test waits: [`PATIENCE`], the real-time guard against a hang;
//! [`until`], for state nothing announces; and [`within_intervals`], for
//! outcomes on tokio's paused clock.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long a test waits for something that should take milliseconds; only
/// a guard against hanging forever, never a synchronisation.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `future`'s output, or `None` once [`PATIENCE`] of real time has passed.
///
/// Real time, not tokio's: on a paused clock (the in-process tests) a tokio
/// timer would fire as soon as everything waits, or cut short a wait that
/// the test means to last longer than `PATIENCE` of virtual time; and a
/// pending real-time alarm holds back no auto-advance.
pub async fn within_patience<F: Future>(future: F) -> Option<F::Output> {
    let alarm = real_time_alarm(PATIENCE);
    tokio::select! {
        biased;
        out = future => Some(out),
        _ = alarm => None,
    }
}

/// `future`'s output; panics, naming `what`, if it takes longer than
/// [`PATIENCE`] of real time (so a hung corral fails the test instead of
/// hanging the run).
pub async fn patiently<F: Future>(what: &str, future: F) -> F::Output {
    within_patience(future)
        .await
        .unwrap_or_else(|| panic!("{what}: nothing after {PATIENCE:?}"))
}

/// How often [`until`] looks again: cheap on a 2-core machine, quick
/// against anything a test waits for.
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// Returns once `holds` is true; panics, naming `what`, after [`PATIENCE`].
///
/// For state that nothing announces: the kernel's accept queues and
/// sockets, a process's state or memory in /proc, a metrics scrape. Where
/// corral says what happened (a log line, a notice, `/status`), wait on
/// that instead (see `Corral::wait_for_log` and `Corral::wait_status`).
pub async fn until(what: &str, mut holds: impl AsyncFnMut() -> bool) {
    patiently(what, async {
        while !holds().await {
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    })
    .await;
}

/// An alarm that rings after `after` of real time.
struct Alarm {
    at: std::time::Instant,
    ring: tokio::sync::oneshot::Sender<()>,
}

/// Completes after `after` of real time. One thread per test binary rings
/// every alarm, in order: they are all set `PATIENCE` ahead, so the queue is
/// sorted by construction.
fn real_time_alarm(after: Duration) -> tokio::sync::oneshot::Receiver<()> {
    static CLOCK: OnceLock<Mutex<std::sync::mpsc::Sender<Alarm>>> = OnceLock::new();
    let clock = CLOCK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Alarm>();
        std::thread::spawn(move || {
            let mut queue: VecDeque<Alarm> = VecDeque::new();
            loop {
                let now = std::time::Instant::now();
                while queue.front().is_some_and(|a| a.at <= now) {
                    let _ = queue.pop_front().unwrap().ring.send(());
                }
                // Load's clients set an alarm per request and drop most of
                // them at once; forget those so the queue stays small.
                if queue.len() > 4096 {
                    queue.retain(|a| !a.ring.is_closed());
                }
                let next = match queue.front() {
                    Some(a) => rx.recv_timeout(a.at.saturating_duration_since(now)),
                    None => rx
                        .recv()
                        .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(alarm) => queue.push_back(alarm),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        Mutex::new(tx)
    });
    let (ring, rung) = tokio::sync::oneshot::channel();
    let alarm = Alarm {
        at: std::time::Instant::now() + after,
        ring,
    };
    clock.lock().unwrap().send(alarm).unwrap();
    rung
}

/// Whether `holds` comes true within `rounds` intervals of virtual time,
/// asked once per interval: tests on the paused clock wait on an outcome
/// this way rather than for a fixed time it is expected to take.
pub async fn within_intervals<F: Future<Output = bool>>(
    rounds: u32,
    interval: Duration,
    mut holds: impl FnMut() -> F,
) -> bool {
    for _ in 0..rounds {
        if holds().await {
            return true;
        }
        tokio::time::sleep(interval).await;
    }
    holds().await
}
