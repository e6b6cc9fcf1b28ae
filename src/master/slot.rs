//! Supervision of one worker slot: spawn the worker, hand it its sockets,
//! watch its heartbeats, and replace it when it exits or hangs.
//!
//! A first replacement starts at once; a slot whose workers keep dying
//! within `STABLE` of starting backs off exponentially (250 ms doubling to
//! 30 s), which shows in `/status` and the log. The master never dies
//! because a worker did.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sockets::ListenerSockets;
use super::status::StatusBoard;
use crate::ipc::{self, ServerHealth, ToMaster, ToWorker};
use crate::worker::process::{ENV_CPU_AFFINITY, ENV_MASTER_PID, ENV_SLOT};

/// A worker that lived this long was not crash-looping.
const STABLE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The config every new worker starts with.
#[derive(Debug)]
pub struct ConfigText {
    pub generation: u64,
    pub path: PathBuf,
    pub text: String,
}

/// What every slot's supervisor shares.
#[derive(Debug)]
pub struct SlotContext {
    pub exe: PathBuf,
    pub cpu_affinity: bool,
    pub heartbeat_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub config: watch::Receiver<Arc<ConfigText>>,
    pub health: watch::Receiver<Arc<Vec<ServerHealth>>>,
    pub status: Arc<StatusBoard>,
    /// Graceful stop: drain the worker, do not replace it.
    pub stop: CancellationToken,
    /// Fast stop: kill the worker.
    pub kill: CancellationToken,
}

/// How a worker's life ended.
enum End {
    Exited { how: String, lived: Duration },
    Stopped,
}

/// Keeps slot `slot` served until a stop.
pub async fn supervise(slot: usize, sockets: Arc<Vec<ListenerSockets>>, ctx: Arc<SlotContext>) {
    let mut sockets = Some(sockets);
    let mut quick_exits = 0u32;
    while !ctx.stop.is_cancelled() {
        match run_worker(slot, &mut sockets, &ctx).await {
            End::Stopped => break,
            End::Exited { how, lived } => {
                quick_exits = if lived < STABLE { quick_exits + 1 } else { 0 };
                let delay = backoff(quick_exits);
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
                ctx.status.exited(slot, how, quick_exits, Some(delay));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = ctx.stop.cancelled() => break,
                }
            }
        }
    }
    ctx.status.stopped(slot);
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

async fn run_worker(
    slot: usize,
    sockets: &mut Option<Arc<Vec<ListenerSockets>>>,
    ctx: &SlotContext,
) -> End {
    let born = Instant::now();
    let exited = |how: String| End::Exited {
        how,
        lived: born.elapsed(),
    };
    let Some(held) = sockets.as_ref() else {
        return End::Stopped;
    };
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
        .kill_on_drop(true);
    if ctx.cpu_affinity {
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
    let start = {
        let config = ctx.config.borrow().clone();
        ToWorker::Start {
            slot,
            generation: config.generation,
            config_path: config.path.clone(),
            config: config.text.clone(),
            listeners: held.iter().map(|l| l.name.clone()).collect(),
            health: ctx.health.borrow().to_vec(),
        }
    };
    let fds: Vec<_> = held.iter().map(|l| l.slots[slot].as_fd()).collect();
    if let Err(e) = tx.send_with_fds(&start, &fds).await {
        return exited(reap(&mut child, format!("could not be started: {e}")).await);
    }

    let mut health = ctx.health.clone();
    health.mark_unchanged();
    // Four pings per timeout: one lost to scheduling noise never kills a worker.
    let mut heartbeat = tokio::time::interval(ctx.heartbeat_timeout / 4);
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
                    ToMaster::Ready { generation } => {
                        last_pong = Instant::now();
                        if !draining {
                            ctx.status.ready(slot, generation);
                        }
                        tracing::info!(slot, pid = child.id(), generation, "worker ready");
                    }
                    ToMaster::Pong { .. } => last_pong = Instant::now(),
                    ToMaster::Failed { error } => tracing::error!(slot, error, "worker could not start"),
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
                if last_pong.elapsed() > ctx.heartbeat_timeout {
                    tracing::error!(slot, pid = child.id(), timeout = ?ctx.heartbeat_timeout, "worker stopped answering heartbeats; killing it");
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
            () = ctx.stop.cancelled(), if !draining => {
                draining = true;
                ctx.status.draining(slot);
                // Let go of the slot's sockets now, so the port closes as
                // soon as the worker stops accepting (no queue left to reset
                // later) -- unless another master holds them.
                *sockets = None;
                let _ = tx.send(&ToWorker::Drain).await;
                drain_deadline = Some(Instant::now() + ctx.shutdown_timeout + Duration::from_secs(1));
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn reap(child: &mut Child, why: String) -> String {
    let _ = child.start_kill();
    let _ = child.wait().await;
    why
}

fn describe(status: ExitStatus) -> String {
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
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
