//! `corral worker`: one worker process, started by the master.
//!
//! The master re-executes its own binary with the control channel as stdin.
//! The worker reads its `Start` message (slot, the generation's plan,
//! listening sockets), serves on a single-threaded runtime, answers heartbeats, applies
//! health updates, and drains when told to, when the master's end of the
//! channel closes, or on SIGTERM (also sent by the kernel if the master dies,
//! as a backstop). SIGINT is blocked from the start: a terminal's Ctrl-C
//! reaches the whole process group, and the master, which gets it too,
//! stops the workers in order.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{Drained, Listener, Server};
use crate::ipc::{self, IpcError, ServerHealth, ToMaster, ToWorker};
use crate::metrics::Recorder;
use crate::metrics::shm::ShmError;
use crate::plan::Plan;
use crate::snapshot::{BuildError, SharedSnapshot, Snapshot};

/// Environment variables the master sets for its workers.
pub const ENV_MASTER_PID: &str = "CORRAL_MASTER_PID";
pub const ENV_SLOT: &str = "CORRAL_WORKER_SLOT";
pub const ENV_CPU_AFFINITY: &str = "CORRAL_CPU_AFFINITY";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the master is gone")]
    MasterGone,
    #[error("expected a start message from the master")]
    NoStart,
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Metrics(#[from] ShmError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sys(#[from] nix::Error),
}

/// Runs the worker; returns when it has drained.
pub fn run() -> Result<(), WorkerError> {
    // Blocked from the first instant (and so for every thread the runtime
    // starts): a Ctrl-C that reaches the whole process group while the
    // worker starts must not kill it either. The master stops it in order.
    nix::sys::signal::SigSet::from(Signal::SIGINT).thread_block()?;
    // If the master dies, the kernel sends SIGTERM: drain and exit.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    let master = std::env::var(ENV_MASTER_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if master.is_some_and(|pid| nix::unistd::getppid().as_raw() != pid) {
        // It died before the death signal was armed.
        return Err(WorkerError::MasterGone);
    }
    if std::env::var(ENV_CPU_AFFINITY).is_ok() {
        let slot = std::env::var(ENV_SLOT)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        pin_to_cpu(slot)?;
    }
    let control = std::io::stdin().as_fd().try_clone_to_owned()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(control))
}

async fn serve(control: OwnedFd) -> Result<(), WorkerError> {
    // Before anything else, so that a SIGTERM that comes once the master
    // knows this worker (the kernel's, if the master dies) drains it.
    let mut term = signal(SignalKind::terminate())?;
    let (mut tx, mut rx) = ipc::channel(control)?;
    let start = rx
        .recv::<ToWorker>()
        .await?
        .ok_or(WorkerError::MasterGone)?;
    let ToWorker::Start {
        slot,
        generation,
        plan,
        listeners,
        health,
    } = start.message
    else {
        return Err(WorkerError::NoStart);
    };
    let mut fds = start.fds.into_iter();
    let region = fds.next().ok_or(WorkerError::NoStart)?;
    let started = Recorder::open(&region, slot)
        .map_err(WorkerError::from)
        .and_then(|recorder| Ok(Snapshot::build(plan, generation, None, &recorder)?))
        .and_then(|runtime| Ok((runtime, sockets(listeners, fds.collect())?)));
    let (runtime, listeners) = match started {
        Ok(ok) => ok,
        Err(e) => {
            tx.send(&ToMaster::Failed {
                error: e.to_string(),
            })
            .await?;
            return Err(e);
        }
    };
    apply_health(&runtime, &health);
    let shared = Arc::new(ArcSwap::from_pointee(runtime));
    let shutdown = CancellationToken::new();
    let mut server = Server::new(shared.clone(), shutdown.clone());
    for listener in listeners {
        server.listen(listener).await;
    }
    tx.send(&ToMaster::Ready { generation }).await?;
    tracing::info!(generation, "worker serving");

    let mut trim = tokio::time::interval(TRIM_EVERY);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() {
        tokio::select! {
            message = rx.recv::<ToWorker>() => match message {
                Ok(Some(ipc::Received { message, fds })) => match message {
                    ToWorker::Ping { seq } => tx.send(&ToMaster::Pong { seq }).await?,
                    ToWorker::Health { servers } => apply_health(&shared.load(), &servers),
                    ToWorker::Reload { generation, plan, listeners, sockets: names } => {
                        let reply = match reload(&shared, generation, plan).await {
                            Ok(()) => {
                                adopt_listeners(&mut server, &listeners, names, fds).await?;
                                tracing::info!(generation, "worker reloaded");
                                ToMaster::Reloaded { generation }
                            }
                            Err(e) => {
                                tracing::error!(generation, error = %e, "reload failed; still serving the previous config");
                                ToMaster::ReloadFailed { generation, error: e.to_string() }
                            }
                        };
                        tx.send(&reply).await?;
                    }
                    ToWorker::ReopenLogs => {
                        if let Some(log) = &shared.load().access_log {
                            log.reopen();
                        }
                    }
                    ToWorker::Drain => {
                        tracing::info!("draining on the master's request");
                        shutdown.cancel();
                    }
                    ToWorker::Start { .. } => tracing::warn!("ignoring a second start message"),
                },
                Ok(None) => {
                    tracing::warn!("the master closed the control channel; draining");
                    shutdown.cancel();
                }
                Err(e) => {
                    tracing::error!(error = %e, "control channel failed; draining");
                    shutdown.cancel();
                }
            },
            _ = trim.tick() => {
                if let Err(code) = return_free_memory() {
                    tracing::debug!(code, "returning free memory failed");
                }
            }
            _ = term.recv() => shutdown.cancel(),
        }
    }
    let drain_timeout = shared.load().plan.runtime.shutdown_timeout;
    match server.drain(drain_timeout).await {
        Drained::Clean => tracing::info!("worker drained"),
        Drained::TimedOut { open } => {
            tracing::warn!(open, "drain timeout passed; closed remaining connections")
        }
    }
    Ok(())
}

/// How often a worker hands freed heap memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Returns the heap's free pages to the system. jemalloc purges unused pages
/// as the program allocates; an idle worker allocates nothing, so after a
/// burst (thousands of connections whose buffers were freed when they went
/// idle) the burst's peak would stay resident.
#[allow(unsafe_code)]
fn return_free_memory() -> Result<(), i32> {
    // 4096 is MALLCTL_ARENAS_ALL: every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and purging takes and returns no
    // value (all pointers null); it touches no memory the program holds.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code == 0 { Ok(()) } else { Err(code) }
}

/// Builds the next snapshot on a blocking thread (decoding certificates
/// stays off the event loop), keeping the state of unchanged servers, and
/// swaps it in. Requests in flight finish on the old one.
async fn reload(shared: &SharedSnapshot, generation: u64, plan: Plan) -> Result<(), WorkerError> {
    let previous = shared.load_full();
    let next = tokio::task::spawn_blocking(move || -> Result<Snapshot, WorkerError> {
        Ok(Snapshot::build(
            plan,
            generation,
            Some(&previous),
            &previous.recorder,
        )?)
    })
    .await
    .map_err(|e| WorkerError::Io(std::io::Error::other(e)))??;
    shared.store(Arc::new(next));
    Ok(())
}

/// Accepts on exactly `keep` from now on; `names` are new sockets, in the
/// order of `fds`.
async fn adopt_listeners(
    server: &mut Server,
    keep: &[String],
    names: Vec<String>,
    fds: Vec<OwnedFd>,
) -> Result<(), WorkerError> {
    let gone: Vec<String> = server
        .listening()
        .filter(|l| !keep.iter().any(|k| k == l))
        .map(str::to_owned)
        .collect();
    for name in gone {
        tracing::info!(listener = %name, "listener removed; no longer accepting on it");
        server.stop_listening(&name).await;
    }
    for listener in sockets(names, fds)? {
        server.listen(listener).await;
    }
    Ok(())
}

/// Listening sockets received from the master, named.
fn sockets(names: Vec<String>, fds: Vec<OwnedFd>) -> Result<Vec<Listener>, WorkerError> {
    if names.len() != fds.len() {
        return Err(WorkerError::Io(std::io::Error::other(format!(
            "{} listener names but {} sockets from the master",
            names.len(),
            fds.len()
        ))));
    }
    let listeners = names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| {
            let socket = std::net::TcpListener::from(fd);
            socket.set_nonblocking(true)?;
            Ok(Listener {
                name,
                socket: tokio::net::TcpListener::from_std(socket)?,
            })
        })
        .collect::<Result<_, std::io::Error>>()?;
    Ok(listeners)
}

pub fn apply_health(runtime: &Snapshot, servers: &[ServerHealth]) {
    for s in servers {
        if let Some(server) = runtime
            .upstream(&s.upstream)
            .and_then(|u| find(&u.servers, s.server))
        {
            server.set_healthy(s.healthy);
        }
    }
}

fn find(
    servers: &[Arc<crate::upstream::Server>],
    addr: SocketAddr,
) -> Option<&Arc<crate::upstream::Server>> {
    servers.iter().find(|s| s.addr == addr)
}

/// Pins this process to the slot's CPU among those it may run on.
fn pin_to_cpu(slot: usize) -> Result<(), nix::Error> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if let Some(&cpu) = cpus.get(slot % cpus.len().max(1)) {
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &set)?;
        tracing::info!(cpu, "pinned to CPU");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_memory_goes_back_to_the_system() {
        // jemalloc refuses a purge given any value pointer (EPERM); this
        // checks the call is one it accepts.
        assert_eq!(super::return_free_memory(), Ok(()));
    }
}
