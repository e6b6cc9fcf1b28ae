//! Supervision of one worker slot: spawn the worker, hand it its sockets,
//! keep it on the current config generation, watch its heartbeats, and
//! replace it when it exits or hangs.
//!
//! A first replacement starts at once; a slot whose workers keep dying
//! within `STABLE` of starting backs off exponentially (250 ms doubling to
//! 30 s), which shows in `/status` and the log. The master never dies
//! because a worker did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sleep_until;
use super::sockets::ListenerSockets;
use super::status::StatusBoard;
use crate::ipc::{self, ServerHealth, ToMaster, ToWorker};
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::Plan;
use crate::worker::process::{ENV_CPU_AFFINITY, ENV_MASTER_PID, ENV_SLOT};

/// A worker that lived this long was not crash-looping.
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One config generation: the file's text, the plan made from it (what
/// every worker is sent and serves), and its listening sockets.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub path: PathBuf,
    pub text: String,
    /// A digest of the files the config names (certificates, keys), as the
    /// plan holds them, so that files renewed under an unchanged text still
    /// make a new generation.
    pub files: u64,
    pub plan: Arc<Plan>,
    pub sockets: Arc<Vec<ListenerSockets>>,
    pub loaded_at: SystemTime,
}

impl Generation {
    /// Slot `slot`'s socket of every listener, by name.
    fn slot_sockets(
        &self,
        slot: usize,
    ) -> impl Iterator<Item = (&str, &std::net::TcpListener, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(move |l| Some((l.name.as_str(), l.slots.get(slot)?, l.bound)))
    }
}

/// What every slot's supervisor shares.
#[derive(Debug)]
pub struct SlotContext {
    pub exe: PathBuf,
    pub generation: watch::Receiver<Arc<Generation>>,
    pub health: watch::Receiver<Arc<Vec<ServerHealth>>>,
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<ClusterMetrics>,
    /// Bumped when log files should be reopened (SIGUSR1).
    pub reopen_logs: watch::Receiver<u64>,
    /// Fast stop: kill every worker.
    pub kill: CancellationToken,
}

/// How a worker's life ended.
enum End {
    Exited { how: String, lived: Duration },
    Stopped,
}

/// Keeps slot `slot` served until `stop` (a graceful stop or the slot's
/// retirement): then its worker drains and is not replaced.
pub async fn supervise(slot: usize, ctx: Arc<SlotContext>, stop: CancellationToken) {
    let mut quick_exits = 0u32;
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
        let end = run_worker(slot, &ctx, &stop, region_fd).await;
        ctx.metrics.workers.retire(region);
        match end {
            End::Stopped => break,
            End::Exited { how, lived } => {
                ctx.metrics.restarts.inc();
                quick_exits = if lived < STABLE { quick_exits + 1 } else { 0 };
                let delay = backoff(quick_exits);
                // The board first, then the log: whoever reads the log
                // line finds `/status` already saying so.
                ctx.status
                    .exited(slot, how.clone(), quick_exits, Some(delay));
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
    ctx.status.stopped(slot);
    tracing::info!(slot, "worker slot stopped");
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
type Held = HashMap<String, SocketAddr>;

async fn run_worker(
    slot: usize,
    ctx: &SlotContext,
    stop: &CancellationToken,
    region: OwnedFd,
) -> End {
    let born = Instant::now();
    let exited = |how: String| End::Exited {
        how,
        lived: born.elapsed(),
    };
    let mut generation = ctx.generation.clone();
    let current = generation.borrow_and_update().clone();
    let runtime = &current.plan.runtime;
    let (heartbeat_timeout, cpu_affinity) = (runtime.heartbeat_timeout, runtime.cpu_affinity);
    let (ours, theirs) = match ipc::pair() {
        Ok(pair) => pair,
        Err(e) => return exited(format!("could not create a control channel: {e}")),
    };
    let mut command = Command::new(&ctx.exe);
    command
        .arg("worker")
        .stdin(Stdio::from(theirs))
        .env(ENV_MASTER_PID, std::process::id().to_string())
        .env(ENV_SLOT, slot.to_string())
        .env_remove(super::upgrade::ENV_UPGRADE)
        .env_remove(super::notify::ENV_SOCKET)
        .kill_on_drop(true);
    if cpu_affinity {
        command.env(ENV_CPU_AFFINITY, "1");
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return exited(format!("could not start: {e}")),
    };
    ctx.status.spawned(slot, child.id());
    let (mut tx, mut rx) = match ipc::channel(ours) {
        Ok(halves) => halves,
        Err(e) => return exited(format!("control channel failed: {e}")),
    };
    let mut held = Held::new();
    let (listeners, mut fds) = sockets_to_send(&current, slot, &mut held);
    fds.insert(0, region.as_fd());
    let start = ToWorker::Start {
        slot,
        generation: current.number,
        plan: Plan::clone(&current.plan),
        listeners,
        health: ctx.health.borrow().to_vec(),
    };
    if let Err(e) = tx.send_with_fds(&start, &fds).await {
        return exited(reap(&mut child, format!("could not be started: {e}")).await);
    }
    drop(fds);
    drop(current);
    drop(region);

    let mut health = ctx.health.clone();
    health.mark_unchanged();
    let mut reopen_logs = ctx.reopen_logs.clone();
    reopen_logs.mark_unchanged();
    // Four pings per timeout: one lost to scheduling noise never kills a worker.
    let mut heartbeat = tokio::time::interval(heartbeat_timeout / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pong = Instant::now();
    let (mut seq, mut control_open, mut draining, mut killed) = (0u64, true, false, false);
    let mut drain_deadline = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                let how = status.map_or_else(|e| format!("wait failed: {e}"), describe);
                return if draining { End::Stopped } else { exited(how) };
            }
            message = rx.recv::<ToMaster>(), if control_open => match message {
                Ok(Some(received)) => match received.message {
                    ToMaster::Ready { generation } | ToMaster::Reloaded { generation } => {
                        last_pong = Instant::now();
                        if !draining {
                            ctx.status.ready(slot, generation);
                        }
                        tracing::info!(slot, pid = child.id(), generation, "worker ready");
                    }
                    ToMaster::Pong { .. } => last_pong = Instant::now(),
                    ToMaster::Failed { error } => tracing::error!(slot, error, "worker could not start"),
                    ToMaster::ReloadFailed { generation, error } => {
                        // The master validated this config; a worker that cannot
                        // apply it is replaced by one that starts on it.
                        tracing::error!(slot, generation, error, "worker could not reload; replacing it");
                        let _ = child.start_kill();
                    }
                },
                // The worker is on its way out; its exit is seen above.
                Ok(None) => control_open = false,
                Err(e) => {
                    tracing::warn!(slot, error = %e, "bad message from worker; replacing it");
                    control_open = false;
                    let _ = child.start_kill();
                }
            },
            _ = heartbeat.tick(), if !draining && !killed => {
                if last_pong.elapsed() > heartbeat_timeout {
                    tracing::error!(slot, pid = child.id(), timeout = ?heartbeat_timeout, "worker stopped answering heartbeats; killing it");
                    let _ = child.start_kill();
                    killed = true;
                } else if control_open {
                    seq += 1;
                    let _ = tx.send(&ToWorker::Ping { seq }).await;
                }
            }
            Ok(()) = health.changed() => {
                let servers = health.borrow_and_update().to_vec();
                let _ = tx.send(&ToWorker::Health { servers }).await;
            }
            Ok(()) = reopen_logs.changed() => {
                reopen_logs.mark_unchanged();
                let _ = tx.send(&ToWorker::ReopenLogs).await;
            }
            Ok(()) = generation.changed(), if !draining && !stop.is_cancelled() => {
                let next = generation.borrow_and_update().clone();
                // A stop's last generation (no sockets) is no reload; the
                // stop branch drains the worker next.
                if stop.is_cancelled() {
                    continue;
                }
                let (listeners, fds) = sockets_to_send(&next, slot, &mut held);
                let reload = ToWorker::Reload {
                    generation: next.number,
                    plan: Plan::clone(&next.plan),
                    listeners: next.slot_sockets(slot).map(|(name, ..)| name.to_owned()).collect(),
                    sockets: listeners,
                };
                if tx.send_with_fds(&reload, &fds).await.is_err() {
                    let _ = child.start_kill();
                }
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                ctx.status.draining(slot);
                let _ = tx.send(&ToWorker::Drain).await;
                let grace = ctx.generation.borrow().plan.runtime.shutdown_timeout;
                drain_deadline = Some(Instant::now() + grace + Duration::from_secs(1));
            }
            () = sleep_until(drain_deadline) => {
                tracing::warn!(slot, "worker did not finish draining in time; killing it");
                let _ = child.start_kill();
                drain_deadline = None;
            }
            () = ctx.kill.cancelled(), if !killed => {
                let _ = child.start_kill();
                killed = true;
                draining = true;
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
        if held.get(name) != Some(&bound) {
            held.insert(name.to_owned(), bound);
            names.push(name.to_owned());
            fds.push(socket.as_fd());
        }
    }
    held.retain(|name, _| generation.slot_sockets(slot).any(|(n, ..)| n == name));
    (names, fds)
}

async fn reap(child: &mut Child, why: String) -> String {
    let _ = child.start_kill();
    let _ = child.wait().await;
    why
}

/// How a child process ended, for the log.
pub(super) fn describe(status: ExitStatus) -> String {
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
