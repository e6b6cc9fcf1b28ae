//! The worker's side of the control channel.
//!
//! The first message is `Start`: the slot, the generation's plan, the
//! metrics region and the listening sockets. The worker builds its snapshot
//! from the plan alone, starts accepting and says `Ready` (or `Failed`, and
//! exits). Then it answers heartbeats, applies health updates and reloads
//! (a new plan, and any new sockets), serves the client connections the
//! master relays to it, reopens its logs, and drains when
//! told to, when the master's end of the channel closes, or on SIGTERM.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::memory;
use super::server::{Drained, Listener, Server};
use crate::challenges::Answers;
use crate::ipc::{self, IpcError, Received, ServerHealth, ToMaster, ToWorker};
use crate::metrics::Recorder;
use crate::metrics::shm::ShmError;
use crate::plan::Plan;
use crate::snapshot::{BuildError, Notices, SharedSnapshot, Snapshot};

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
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sys(#[from] nix::Error),
}

/// Serves what the master sends on `control` until drained.
pub async fn serve(control: OwnedFd) -> Result<(), WorkerError> {
    // Before anything else, so that a SIGTERM that comes once the master
    // knows this worker (the kernel's, if the master dies) drains it.
    let mut term = signal(SignalKind::terminate())?;
    let (mut tx, mut rx) = ipc::channel(control)?;
    let first = rx
        .recv::<ToWorker>()
        .await?
        .ok_or(WorkerError::MasterGone)?;
    let (notices, mut noticed) = tokio::sync::mpsc::unbounded_channel();
    let (snapshot, listeners) = match start(first, notices) {
        Ok(started) => started,
        Err(e) => {
            tx.send(&ToMaster::Failed {
                error: e.to_string(),
            })
            .await?;
            return Err(e);
        }
    };
    let generation = snapshot.generation;
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let shutdown = CancellationToken::new();
    let mut server = Server::new(shared.clone(), shutdown.clone());
    for listener in listeners {
        server.listen(listener).await;
    }
    tx.send(&ToMaster::Ready { generation }).await?;
    tracing::info!(generation, "worker serving");

    let mut trim = memory::trim_interval();
    while !shutdown.is_cancelled() {
        tokio::select! {
            message = rx.recv::<ToWorker>() => match message {
                Ok(Some(received)) if incomplete(&received) => {
                    tracing::error!(missing = received.missing, "a control message came without its descriptors (at the open files limit?); draining");
                    shutdown.cancel();
                }
                Ok(Some(received)) => {
                    if let Some(reply) = answer(received, &shared, &mut server, &shutdown).await? {
                        tx.send(&reply).await?;
                    }
                }
                Ok(None) => {
                    tracing::warn!("the master closed the control channel; draining");
                    shutdown.cancel();
                }
                Err(e) => {
                    tracing::error!(error = %e, "control channel failed; draining");
                    shutdown.cancel();
                }
            },
            Some(ejection) = noticed.recv() => {
                tx.send(&ToMaster::Ejected { ejection }).await?;
            }
            _ = trim.tick() => memory::return_free(),
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

/// The snapshot and listening sockets a `Start` message describes. Its
/// descriptors are the metrics region, then one socket per listener name.
fn start(
    first: Received<ToWorker>,
    notices: Notices,
) -> Result<(Snapshot, Vec<Listener>), WorkerError> {
    let ToWorker::Start {
        slot,
        generation,
        plan,
        listeners,
        health,
    } = first.message
    else {
        return Err(WorkerError::NoStart);
    };
    let mut fds = first.fds.into_iter();
    let region = fds.next().ok_or(WorkerError::NoStart)?;
    let recorder = Recorder::open(&region, slot)?;
    let snapshot = Snapshot::build(plan, generation, None, &recorder, Some(notices))?;
    apply_health(&snapshot, &health);
    Ok((snapshot, sockets(listeners, fds.collect())?))
}

/// Acts on one message from the master; what to answer, if anything.
async fn answer(
    received: Received<ToWorker>,
    shared: &SharedSnapshot,
    server: &mut Server,
    shutdown: &CancellationToken,
) -> Result<Option<ToMaster>, WorkerError> {
    let reply = match received.message {
        ToWorker::Ping { seq } => Some(ToMaster::Pong { seq }),
        ToWorker::Health { servers } => {
            apply_health(&shared.load(), &servers);
            None
        }
        ToWorker::Reload {
            generation,
            plan,
            listeners,
            sockets: names,
        } => Some(match reload(shared, generation, plan).await {
            Ok(()) => {
                server.reconfigured();
                adopt_listeners(server, &listeners, names, received.fds).await?;
                tracing::info!(generation, "worker reloaded");
                ToMaster::Reloaded { generation }
            }
            Err(e) => {
                tracing::error!(generation, error = %e, "reload failed; still serving the previous config");
                ToMaster::ReloadFailed {
                    generation,
                    error: e.to_string(),
                }
            }
        }),
        ToWorker::Challenges { challenges } => {
            let answers = Answers::new(&challenges, crate::tls::challenge_keys(&challenges));
            shared.load().challenges.store(Arc::new(answers));
            Some(ToMaster::Challenged {
                version: challenges.version,
            })
        }
        ToWorker::ReopenLogs => {
            if let Some(log) = &shared.load().access_log {
                log.reopen();
            }
            None
        }
        ToWorker::Drain => {
            tracing::info!("draining on the master's request");
            shutdown.cancel();
            None
        }
        ToWorker::Connection { listener } => {
            match received.fds.into_iter().next() {
                Some(fd) => server.serve_relayed(&listener, std::net::TcpStream::from(fd)),
                // Its client is lost (the master's copy closes); this
                // worker goes on serving, and the channel stays in step.
                None => tracing::warn!(
                    listener,
                    "relayed connection came without its socket (at the open files limit?)"
                ),
            }
            None
        }
        ToWorker::Start { .. } => {
            tracing::warn!("ignoring a second start message");
            None
        }
    };
    Ok(reply)
}

/// Whether a message lacks descriptors it cannot do without: any but a
/// relayed connection, which costs only its own client when the kernel
/// could not give this worker its descriptor.
fn incomplete(received: &Received<ToWorker>) -> bool {
    received.missing > 0 && !matches!(received.message, ToWorker::Connection { .. })
}

/// Builds the next snapshot on a blocking thread (decoding certificates
/// stays off the event loop), keeping the state of unchanged servers, and
/// swaps it in. Requests in flight finish on the old one.
async fn reload(shared: &SharedSnapshot, generation: u64, plan: Plan) -> Result<(), WorkerError> {
    let previous = shared.load_full();
    let next = tokio::task::spawn_blocking(move || {
        let notices = previous.notices.clone();
        Snapshot::build(
            plan,
            generation,
            Some(&previous),
            &previous.recorder,
            notices,
        )
    })
    .await
    .map_err(std::io::Error::other)??;
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

/// Marks each checked server healthy or not, as the master's checks say.
pub fn apply_health(snapshot: &Snapshot, servers: &[ServerHealth]) {
    for s in servers {
        if let Some(server) = snapshot
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
