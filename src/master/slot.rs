//! Supervision of one worker slot: spawn the worker, hand it its sockets,
//! keep it on the current config generation, watch its heartbeats, and
//! replace it when it exits or hangs.
//!
//! A first replacement starts at once; a slot whose workers keep dying
//! within `STABLE` of starting backs off exponentially (250 ms doubling to
//! 30 s), which shows in `/status` and the log. The master never dies
//! because a worker did.
//!
//! While the slot has no serving worker, or is retired and its worker
//! drains, a [`Relay`] takes what queues on its sockets to the other slots'
//! workers; while its own worker serves, the supervisor sends it what the
//! other slots' relays hand to its [`Inbox`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ejections::Ejections;
use super::generation::Generation;
use super::relay::{Inbox, Inboxes, Relay, Relayed, Sockets};
use super::status::{Seat, StatusBoard, describe};
use super::steering::PortSocket;
use crate::challenges::Challenges;
use crate::ipc::{self, ServerHealth, ToMaster, ToWorker};
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::Plan;
use crate::worker::process::{ENV_CPU_AFFINITY, ENV_MASTER_PID, ENV_SLOT};

/// A worker that lived this long was not crash-looping.
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What every slot's supervisor shares.
#[derive(Debug)]
pub struct SlotContext {
    pub exe: PathBuf,
    pub generation: watch::Receiver<Arc<Generation>>,
    pub health: watch::Receiver<Arc<Vec<ServerHealth>>>,
    /// The ACME challenges every worker answers.
    pub challenges: watch::Receiver<Arc<Challenges>>,
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<ClusterMetrics>,
    /// Bumped when log files should be reopened (SIGUSR1).
    pub reopen_logs: watch::Receiver<u64>,
    /// Fast stop: kill every worker.
    pub kill: CancellationToken,
    /// The master stops (rather than a reload retiring a slot): nothing is
    /// relayed any more.
    pub stopping: CancellationToken,
    /// Where covered slots' relays hand connections to serving workers.
    pub inboxes: Arc<Inboxes>,
    /// The servers workers ejected.
    pub ejections: Arc<Ejections>,
}

/// How a worker's life ended.
enum End {
    Exited {
        how: String,
        lived: Duration,
        /// The sockets its worker had.
        held: Sockets,
    },
    Stopped,
}

/// Keeps slot `slot` served until `stop` (a graceful stop or the slot's
/// retirement): then its worker drains and is not replaced.
pub async fn supervise(seat: Seat, ctx: Arc<SlotContext>, stop: CancellationToken) {
    let slot = seat.slot;
    let mut quick_exits = 0u32;
    let mut relay = Some(cover(slot, &ctx, Sockets::new(), &stop));
    while !stop.is_cancelled() {
        // The worker counts into memory this master owns; whatever it
        // counted stays in the cluster's totals after it ends.
        let (region, region_fd) = match ctx.metrics.workers.add() {
            Ok(region) => region,
            Err(e) => {
                tracing::error!(slot, error = %e, "cannot create the worker's metrics memory; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let end = run_worker(seat, &ctx, &stop, region_fd, &mut relay).await;
        ctx.metrics.workers.retire(region);
        // Its ejections went with it: the next worker starts with none.
        ctx.ejections.forget(slot);
        match end {
            End::Stopped => break,
            End::Exited { how, lived, held } => {
                relay.get_or_insert_with(|| cover(slot, &ctx, held, &stop));
                ctx.metrics.restarts.inc();
                quick_exits = if lived < STABLE { quick_exits + 1 } else { 0 };
                let delay = backoff(quick_exits);
                // The board first, then the log: whoever reads the log
                // line finds `/status` already saying so.
                ctx.status
                    .exited(seat, how.clone(), quick_exits, Some(delay));
                if delay.is_zero() {
                    tracing::warn!(slot, how, "worker exited; replacing it");
                } else {
                    tracing::error!(
                        slot,
                        how,
                        crash_loop = quick_exits,
                        ?delay,
                        "worker keeps exiting; backing off"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    // Retired: its worker is gone, and the relay empties its sockets
    // before they close. A stopping master lets them go as they are.
    if let Some(relay) = relay.take() {
        if !ctx.stopping.is_cancelled() {
            relay.finish().await;
        }
    }
    ctx.status.stopped(seat);
    tracing::info!(slot, "worker slot stopped");
}

/// A relay for `slot`, which has no serving worker; `stop` retires it.
fn cover(slot: usize, ctx: &SlotContext, held: Sockets, stop: &CancellationToken) -> Relay {
    Relay::start(
        slot,
        ctx.generation.clone(),
        held,
        stop.clone(),
        ctx.inboxes.clone(),
    )
}

/// No wait for the first quick exit, then 250 ms doubling up to 30 s.
fn backoff(quick_exits: u32) -> Duration {
    match quick_exits {
        0 | 1 => Duration::ZERO,
        n => FIRST_BACKOFF
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_BACKOFF),
    }
}

/// The sockets a worker has, by listener name: what it was last sent.
type Held = HashMap<String, (SocketAddr, Arc<PortSocket>)>;

/// Where a worker is in its life, as its supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Starting or serving: heartbeats are checked, reloads passed on.
    Running,
    /// Told to drain; killed if it is not gone by `deadline`.
    Draining { deadline: Instant },
    /// Killed; its exit is awaited. `stopping`: the slot is stopping, so
    /// the exit ends it rather than calling for a replacement.
    Killed { stopping: bool },
}

/// One worker process and its end of the control channel.
struct Worker {
    seat: Seat,
    child: Child,
    tx: ipc::Sender,
    rx: ipc::Receiver,
    /// The worker's end of the channel is still open.
    control_open: bool,
    held: Held,
    life: Life,
    born: Instant,
    /// The generation it was started on.
    started_on: u64,
    /// How long it may leave its channel unread (the heartbeat timeout).
    hung_after: Duration,
    /// Open while it serves: connections other slots' relays hand it.
    inbox: Option<Inbox>,
}

/// Runs one worker until it ends. `relay` covers the slot until the worker
/// serves, and again while a retired slot's worker drains.
async fn run_worker(
    seat: Seat,
    ctx: &SlotContext,
    stop: &CancellationToken,
    region: OwnedFd,
    relay: &mut Option<Relay>,
) -> End {
    let mut generation = ctx.generation.clone();
    let current = generation.borrow_and_update().clone();
    let slot = seat.slot;
    let mut worker = match Worker::start(seat, ctx, &current, region).await {
        Ok(worker) => worker,
        // It never ran: a quick exit, as far as the backoff goes.
        Err(how) => {
            return End::Exited {
                how,
                lived: Duration::ZERO,
                held: Sockets::new(),
            };
        }
    };
    let heartbeat_timeout = current.plan.runtime.heartbeat_timeout;
    drop(current);
    let mut health = ctx.health.clone();
    health.mark_unchanged();
    let mut reopen_logs = ctx.reopen_logs.clone();
    reopen_logs.mark_unchanged();
    let mut challenges = pending_challenges(ctx);
    // Four pings per timeout: one lost to scheduling noise never kills a worker.
    let mut heartbeat = tokio::time::interval(heartbeat_timeout / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pong = Instant::now();
    let mut seq = 0u64;
    loop {
        let running = worker.life == Life::Running;
        let drain_deadline = worker.drain_deadline();
        tokio::select! {
            status = worker.child.wait() => return worker.ended(status),
            message = worker.rx.recv::<ToMaster>(), if worker.control_open => {
                if worker.received(message, ctx) {
                    last_pong = Instant::now();
                }
                if worker.inbox.is_some() {
                    // It serves: the slot needs no cover.
                    *relay = None;
                }
            }
            Some(conn) = next_relayed(&mut worker.inbox) => worker.pass(conn, ctx).await,
            _ = heartbeat.tick(), if running => {
                if last_pong.elapsed() > heartbeat_timeout {
                    tracing::error!(slot, pid = worker.child.id(), timeout = ?heartbeat_timeout, "worker stopped answering heartbeats; killing it");
                    worker.kill(false);
                } else if worker.control_open {
                    seq += 1;
                    worker.send(&ToWorker::Ping { seq }).await;
                }
            }
            Ok(()) = health.changed() => {
                let servers = health.borrow_and_update().to_vec();
                worker.send(&ToWorker::Health { servers }).await;
            }
            Ok(()) = challenges.changed() => {
                let challenges = Challenges::clone(&challenges.borrow_and_update());
                worker.send(&ToWorker::Challenges { challenges }).await;
            }
            Ok(()) = reopen_logs.changed() => {
                reopen_logs.mark_unchanged();
                worker.send(&ToWorker::ReopenLogs).await;
            }
            Ok(()) = generation.changed(), if running && !stop.is_cancelled() => {
                let next = generation.borrow_and_update().clone();
                // A stop's last generation (no sockets) is no reload; the
                // stop branch drains the worker next.
                if !stop.is_cancelled() {
                    worker.reload(&next).await;
                }
            }
            () = stop.cancelled(), if !matches!(worker.life, Life::Draining { .. } | Life::Killed { stopping: true }) => {
                let grace = ctx.generation.borrow().plan.runtime.shutdown_timeout;
                worker.drain(ctx, grace).await;
                if ctx.stopping.is_cancelled() {
                    // A stopping master lets every socket close as soon as
                    // its worker stops accepting.
                    worker.held.clear();
                    *relay = None;
                } else {
                    // Retired, the slot's sockets go on queueing until they
                    // close: cover them while the worker drains.
                    *relay = Some(cover(slot, ctx, worker.sockets(), stop));
                }
            }
            () = sleep_until(drain_deadline) => {
                tracing::warn!(slot, "worker did not finish draining in time; killing it");
                worker.kill(true);
            }
            () = ctx.kill.cancelled(), if !matches!(worker.life, Life::Killed { stopping: true }) => worker.kill(true),
        }
    }
}

/// The ACME challenges to follow: what is pending now reaches a new
/// worker as soon as it serves.
fn pending_challenges(ctx: &SlotContext) -> watch::Receiver<Arc<Challenges>> {
    let mut challenges = ctx.challenges.clone();
    if challenges.borrow_and_update().version > 0 {
        challenges.mark_changed();
    }
    challenges
}

impl Worker {
    /// Spawns the worker and sends it its start: the generation's plan,
    /// the metrics `region`, its sockets and the health of every checked
    /// server. On failure, how it ended.
    async fn start(
        seat: Seat,
        ctx: &SlotContext,
        generation: &Generation,
        region: OwnedFd,
    ) -> Result<Self, String> {
        let slot = seat.slot;
        let (ours, theirs) =
            ipc::pair().map_err(|e| format!("could not create a control channel: {e}"))?;
        let mut command = Command::new(&ctx.exe);
        command
            .arg("worker")
            .stdin(Stdio::from(theirs))
            .env(ENV_MASTER_PID, std::process::id().to_string())
            .env(ENV_SLOT, slot.to_string())
            .env(
                crate::logging::ENV_LOG_FORMAT,
                crate::logging::format().as_str(),
            )
            .env_remove(super::upgrade::ENV_UPGRADE)
            .env_remove(super::notify::ENV_SOCKET)
            .env_remove(super::notify::ENV_WATCHDOG_USEC)
            .env_remove(super::notify::ENV_WATCHDOG_PID)
            .kill_on_drop(true);
        if generation.plan.runtime.cpu_affinity {
            command.env(ENV_CPU_AFFINITY, "1");
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not start: {e}"))?;
        ctx.status.spawned(seat, child.id());
        let (tx, rx) = match ipc::channel(ours) {
            Ok(halves) => halves,
            Err(e) => return Err(reap(&mut child, format!("control channel failed: {e}")).await),
        };
        let mut worker = Self {
            seat,
            child,
            tx,
            rx,
            control_open: true,
            held: Held::new(),
            life: Life::Running,
            born: Instant::now(),
            started_on: generation.number,
            hung_after: generation.plan.runtime.heartbeat_timeout,
            inbox: None,
        };
        let (listeners, mut fds) = sockets_to_send(generation, slot, &mut worker.held);
        fds.insert(0, region.as_fd());
        let start = ToWorker::Start {
            slot,
            generation: generation.number,
            plan: Plan::clone(&generation.plan),
            listeners,
            health: ctx.health.borrow().to_vec(),
        };
        if let Err(e) = worker.tx.send_with_fds(&start, &fds).await {
            return Err(reap(&mut worker.child, format!("could not be started: {e}")).await);
        }
        Ok(worker)
    }

    /// How the worker's life ended, given its exit status.
    fn ended(&self, status: std::io::Result<ExitStatus>) -> End {
        match self.life {
            Life::Draining { .. } | Life::Killed { stopping: true } => End::Stopped,
            Life::Running | Life::Killed { stopping: false } => End::Exited {
                how: status.map_or_else(|e| format!("wait failed: {e}"), describe),
                lived: self.born.elapsed(),
                held: self.sockets(),
            },
        }
    }

    /// The sockets it was sent, by listener name.
    fn sockets(&self) -> Sockets {
        self.held
            .iter()
            .map(|(name, (_, socket))| (name.clone(), socket.clone()))
            .collect()
    }

    /// Sends the worker a connection another slot's relay accepted; if it
    /// cannot take it (it is going), another worker gets it.
    async fn pass(&mut self, conn: Relayed, ctx: &SlotContext) {
        let message = ToWorker::Connection {
            listener: conn.listener.clone(),
        };
        if !self.transmit(&message, &[conn.stream.as_fd()]).await {
            self.inbox = None;
            ctx.inboxes.redeliver(conn);
        }
    }

    /// Acts on what the worker said; whether it shows the worker alive.
    fn received(
        &mut self,
        message: Result<Option<ipc::Received<ToMaster>>, ipc::IpcError>,
        ctx: &SlotContext,
    ) -> bool {
        let (seat, slot) = (self.seat, self.seat.slot);
        match message {
            Ok(Some(received)) => match received.message {
                ToMaster::Ready { generation } | ToMaster::Reloaded { generation } => {
                    if self.life == Life::Running {
                        ctx.status.ready(seat, generation);
                        if self.inbox.is_none() {
                            self.inbox = Some(ctx.inboxes.open());
                        }
                    }
                    tracing::info!(slot, pid = self.child.id(), generation, "worker ready");
                    true
                }
                ToMaster::Pong { .. } => true,
                ToMaster::Challenged { version } => {
                    ctx.status.challenged(seat, version);
                    true
                }
                ToMaster::Ejected { ejection } => {
                    tracing::info!(slot, upstream = %ejection.upstream, server = %ejection.server, reason = %ejection.reason, cool_down = ?ejection.cool_down, "worker ejected a server");
                    ctx.ejections.record(slot, ejection);
                    true
                }
                ToMaster::Failed { error } => {
                    tracing::error!(slot, error, "worker could not start");
                    ctx.status.refused(seat, self.started_on, error);
                    false
                }
                ToMaster::ReloadFailed { generation, error } => {
                    // The master checked this plan; a worker that cannot
                    // apply it is replaced by one that starts on it.
                    tracing::error!(
                        slot,
                        generation,
                        error,
                        "worker could not reload; replacing it"
                    );
                    ctx.status.refused(seat, generation, error);
                    self.kill(false);
                    false
                }
            },
            // The worker is on its way out; its exit is seen next.
            Ok(None) => {
                self.control_open = false;
                false
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "bad message from worker; replacing it");
                self.control_open = false;
                self.kill(false);
                false
            }
        }
    }

    /// Sends the worker the next generation's plan and any new sockets.
    async fn reload(&mut self, next: &Generation) {
        let (sockets, fds) = sockets_to_send(next, self.seat.slot, &mut self.held);
        let reload = ToWorker::Reload {
            generation: next.number,
            plan: Plan::clone(&next.plan),
            listeners: next
                .slot_sockets(self.seat.slot)
                .map(|(name, ..)| name.to_owned())
                .collect(),
            sockets,
        };
        if !self.transmit(&reload, &fds).await && self.life == Life::Running {
            // A worker that missed a generation must not go on serving the
            // old one: its replacement starts on the new.
            tracing::warn!(
                slot = self.seat.slot,
                "could not send the reload; replacing the worker"
            );
            self.kill(false);
        }
    }

    /// Asks the worker to drain, giving it `grace` (and a second) to go.
    async fn drain(&mut self, ctx: &SlotContext, grace: Duration) {
        ctx.status.draining(self.seat);
        // What is relayed to it from now on would not be served.
        self.inbox = None;
        self.life = Life::Draining {
            deadline: Instant::now() + grace + Duration::from_secs(1),
        };
        self.send(&ToWorker::Drain).await;
    }

    fn drain_deadline(&self) -> Option<Instant> {
        match self.life {
            Life::Draining { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Kills the worker. `stopping`: the slot is stopping (as it is
    /// already when the worker was draining), so its exit ends the slot.
    fn kill(&mut self, stopping: bool) {
        self.inbox = None;
        if let Err(e) = self.child.start_kill() {
            // Only when it has exited already, which `wait` reports.
            tracing::debug!(slot = self.seat.slot, error = %e, "could not kill the worker");
        }
        let stopping = stopping
            || matches!(
                self.life,
                Life::Draining { .. } | Life::Killed { stopping: true }
            );
        self.life = Life::Killed { stopping };
    }

    /// Sends a message that needs no answer. A failed send means the worker
    /// is going (its channel closed); its exit is what the supervisor acts
    /// on, so the failure is only noted.
    async fn send(&mut self, message: &ToWorker) {
        self.transmit(message, &[]).await;
    }

    /// Sends `message` with `fds`; whether it went. A failed send means the
    /// worker is going. One that takes nothing from its channel for a
    /// heartbeat timeout is hung, and killed as if it had missed its
    /// heartbeats: else a full channel (relayed connections fill it fast)
    /// would hold this supervisor, heartbeat checks included, for good.
    async fn transmit(&mut self, message: &ToWorker, fds: &[BorrowedFd<'_>]) -> bool {
        let sent = tokio::time::timeout(self.hung_after, self.tx.send_with_fds(message, fds));
        match sent.await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(slot = self.seat.slot, error = %e, "could not reach the worker");
                false
            }
            Err(_) => {
                tracing::error!(slot = self.seat.slot, pid = self.child.id(), timeout = ?self.hung_after, "worker stopped reading its control channel; killing it");
                self.kill(false);
                false
            }
        }
    }
}

/// The sockets of `generation` for `slot` that the worker does not have
/// yet (new listeners, changed addresses), recording them in `held`.
fn sockets_to_send<'g>(
    generation: &'g Generation,
    slot: usize,
    held: &mut Held,
) -> (Vec<String>, Vec<BorrowedFd<'g>>) {
    let mut names = Vec::new();
    let mut fds = Vec::new();
    for (name, socket, bound) in generation.slot_sockets(slot) {
        if held.get(name).map(|(addr, _)| *addr) != Some(bound) {
            held.insert(name.to_owned(), (bound, socket.clone()));
            names.push(name.to_owned());
            fds.push(socket.as_fd());
        }
    }
    held.retain(|name, _| generation.slot_sockets(slot).any(|(n, ..)| n == name));
    (names, fds)
}

/// The next connection relayed to a serving worker; never, without an inbox.
async fn next_relayed(inbox: &mut Option<Inbox>) -> Option<Relayed> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Kills a worker that could not be started and waits for it to go.
async fn reap(child: &mut Child, why: String) -> String {
    // Either fails only when the child has already exited.
    let _ = child.start_kill();
    let _ = child.wait().await;
    why
}

/// Sleeps until `at`, or forever when there is no deadline (a `select!`
/// branch that is off until one is set).
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_zero_and_doubles_to_a_cap() {
        let delays: Vec<u64> = (0..8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 250, 500, 1000, 2000, 4000, 8000]);
        // README: "doubling up to 30 s".
        assert_eq!(backoff(8), Duration::from_millis(16_000));
        assert_eq!(backoff(9), Duration::from_secs(30));
        assert_eq!(backoff(30), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
