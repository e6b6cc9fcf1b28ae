//! Binary upgrade (SIGUSR2): hand every listening socket to a new master.
//!
//! The old master starts the binary at its own path as `corral run` with
//! `CORRAL_UPGRADE=1` and a control channel as stdin, and sends it every
//! listening socket (each listener's slots, and the admin socket) over that
//! channel, with the key that signs sticky cookies (so that every client
//! stays on its server). The new master binds nothing it was given, spawns
//! its workers on those same sockets, and once they all serve it says
//! `Ready`; only then do the old workers drain and the old master exit.
//! Connections queued on the shared sockets are accepted by whichever
//! generation is accepting, so none is refused or reset. If the new master exits or is not ready in time, the
//! old one kills it and keeps serving. The new master inherits
//! `NOTIFY_SOCKET` and tells the service manager itself that it is ready,
//! and takes over the watchdog (see `master/notify.rs`).
//!
//! Counters carry over too, so that none goes backwards and none counts a
//! request twice. With the sockets the old master sends its totals
//! without its live workers (exited workers, its own counters, its own
//! base) and the descriptors of the live workers' metrics regions: the new
//! master adds the totals as a base and reads those regions as its own
//! while the old workers drain, so each request is counted once, in one
//! place, at every scrape. When its workers have all exited the old master
//! sends its final totals, which replace both (they also hold whatever it
//! counted after the hand-over: a worker it restarted, a DNS lookup), and
//! exits. See docs/operations.md.

use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::sockets::{Inherited, ListenerSockets};
use crate::ipc::{self, HandedSocket, IpcError, Upgrade};
use crate::metrics::carry::Totals;
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::StickyKey;

/// Set for the new master; its stdin is then the channel to the old one.
pub const ENV_UPGRADE: &str = "CORRAL_UPGRADE";
/// How long a new master whose control channel failed gets to exit, so
/// that the log can say how it ended: a channel breaks because its peer died.
const EXIT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("could not start the new master: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("the new master {0} before it was ready")]
    Exited(String),
    #[error("the new master closed its control channel before it was ready")]
    Closed,
    #[error("the new master was not ready within {0:?}")]
    Timeout(Duration),
    #[error("expected the old master's sockets first")]
    NoSockets,
    #[error("the old master sent {sockets} sockets but {fds} descriptors")]
    Mismatch { sockets: usize, fds: usize },
}

/// What the old master hands to its successor.
pub struct Handing<'a> {
    pub listeners: &'a [ListenerSockets],
    pub admin: Option<&'a TcpListener>,
    pub sticky_key: Option<StickyKey>,
    pub metrics: &'a ClusterMetrics,
}

/// A successor that serves: its pid, and the channel to it.
pub struct Successor {
    pub pid: u32,
    channel: ipc::Sender,
}

impl Successor {
    /// Old master, its workers all gone: hands on everything it counted.
    pub async fn hand_final_totals(mut self, metrics: &ClusterMetrics) {
        let totals = metrics.final_totals();
        if let Err(e) = self.channel.send(&Upgrade::Final { totals }).await {
            tracing::warn!(error = %e, "could not hand the final counters to the new master");
        }
    }
}

/// Old master: starts the successor and waits up to `ready_timeout` until it
/// serves. On failure the successor is killed and reaped.
pub async fn start_successor(
    exe: &Path,
    config: &Path,
    handing: Handing<'_>,
    ready_timeout: Duration,
) -> Result<Successor, UpgradeError> {
    let Handing {
        listeners,
        admin,
        sticky_key,
        metrics,
    } = handing;
    let (ours, theirs) = ipc::pair().map_err(UpgradeError::Spawn)?;
    let mut command = Command::new(exe);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(ENV_UPGRADE, "1")
        .env(
            crate::logging::ENV_LOG_FORMAT,
            crate::logging::format().as_str(),
        )
        .stdin(Stdio::from(theirs));
    super::notify::hand_on_watchdog(&mut command);
    let mut child = command.spawn().map_err(UpgradeError::Spawn)?;
    let (mut tx, mut rx) = ipc::channel(ours).map_err(UpgradeError::Spawn)?;
    let mut sockets = Vec::new();
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    for l in listeners {
        // In the kernel's order, which the new master's slots then follow:
        // it knows where each socket is in the port's array.
        let mut ordered: Vec<_> = l.slots.iter().collect();
        ordered.sort_by_key(|s| l.port.index_of(s));
        for (slot, socket) in ordered.into_iter().enumerate() {
            sockets.push(HandedSocket::Listener {
                name: l.name.clone(),
                addr: l.addr,
                slot,
            });
            fds.push(socket.as_fd());
        }
    }
    if let Some(admin) = admin {
        if let Ok(addr) = admin.local_addr() {
            sockets.push(HandedSocket::Admin { addr });
            fds.push(admin.as_fd());
        }
    }
    let handed = Upgrade::Sockets {
        sockets,
        sticky_key,
        counters: true,
    };
    let mut handed = tx.send_with_fds(&handed, &fds).await;
    if handed.is_ok() {
        handed = hand_counters(&mut tx, metrics).await;
    }
    let outcome = match handed {
        Err(e) => Err(UpgradeError::Ipc(e)),
        Ok(()) => tokio::select! {
            message = rx.recv::<Upgrade>() => match message {
                Ok(Some(ipc::Received { message: Upgrade::Ready { pid }, .. })) => Ok(pid),
                Ok(_) => Err(UpgradeError::Closed),
                Err(e) => Err(UpgradeError::Ipc(e)),
            },
            status = child.wait() => Err(exited(status)),
            () = tokio::time::sleep(ready_timeout) => Err(UpgradeError::Timeout(ready_timeout)),
        },
    };
    let error = match outcome {
        Ok(pid) => return Ok(Successor { pid, channel: tx }),
        Err(error) => error,
    };
    let error = match error {
        UpgradeError::Ipc(_) | UpgradeError::Closed => {
            match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                Ok(status) => exited(status),
                Err(_) => error,
            }
        }
        other => other,
    };
    // Its workers see their channel close and drain on their own.
    if let Err(e) = child.start_kill() {
        tracing::debug!(error = %e, "the failed new master had already exited");
    }
    if let Err(e) = child.wait().await {
        tracing::warn!(error = %e, "could not reap the failed new master");
    }
    Err(error)
}

/// The `Counters` message: the totals and live regions, as of now.
async fn hand_counters(tx: &mut ipc::Sender, metrics: &ClusterMetrics) -> Result<(), IpcError> {
    let (totals, regions) = metrics.hand_over(ipc::MAX_FDS);
    let fds: Vec<BorrowedFd<'_>> = regions.iter().map(AsFd::as_fd).collect();
    let message = Upgrade::Counters {
        totals,
        regions: fds.len(),
    };
    tx.send_with_fds(&message, &fds).await
}

fn exited(status: std::io::Result<std::process::ExitStatus>) -> UpgradeError {
    UpgradeError::Exited(status.map_or_else(
        |e| format!("could not be waited for ({e})"),
        super::status::describe,
    ))
}

/// What a new master receives from the old one.
#[derive(Debug)]
pub struct Handover {
    pub listeners: Inherited,
    pub admin: Option<TcpListener>,
    /// The old master's sticky key (`None` from one that sent none).
    pub sticky_key: Option<StickyKey>,
    /// Where to say `Ready`.
    pub reply: ipc::Sender,
    /// The old master's counters and its live workers' metrics regions
    /// (`None` from an older master, which sends none).
    pub counters: Option<(Totals, Vec<OwnedFd>)>,
    /// Where the old master's final totals arrive.
    pub from_predecessor: ipc::Receiver,
}

/// The old master's counters, and where its final ones arrive.
pub type Counters = (Option<(Totals, Vec<OwnedFd>)>, ipc::Receiver);

impl Handover {
    /// Its parts, as a master without a predecessor has them when `None`:
    /// sockets, admin socket, where to say `Ready`, sticky key, counters.
    #[allow(clippy::type_complexity)]
    pub fn parts(
        handover: Option<Self>,
    ) -> (
        Inherited,
        Option<TcpListener>,
        Option<ipc::Sender>,
        Option<StickyKey>,
        Option<Counters>,
    ) {
        match handover {
            Some(h) => (
                h.listeners,
                h.admin,
                Some(h.reply),
                h.sticky_key,
                Some((h.counters, h.from_predecessor)),
            ),
            None => (Inherited::new(), None, None, None, None),
        }
    }
}

/// New master: counts on from the old master's totals, and follows it
/// until its final ones arrive.
pub fn carry_counters(counters: Option<Counters>, metrics: &std::sync::Arc<ClusterMetrics>) {
    let Some((handed, from_predecessor)) = counters else {
        return;
    };
    if let Some((totals, regions)) = handed {
        metrics.inherit(totals, regions);
    }
    tokio::spawn(follow_predecessor(from_predecessor, metrics.clone()));
}

/// New master: reads the old master's sockets from stdin.
pub async fn receive() -> Result<Handover, UpgradeError> {
    let stdin: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(UpgradeError::Spawn)?;
    let (reply, mut rx) = ipc::channel(stdin).map_err(UpgradeError::Spawn)?;
    let received = rx.recv::<Upgrade>().await?.ok_or(UpgradeError::NoSockets)?;
    let Upgrade::Sockets {
        sockets,
        sticky_key,
        counters,
    } = received.message
    else {
        return Err(UpgradeError::NoSockets);
    };
    if sockets.len() != received.fds.len() {
        return Err(UpgradeError::Mismatch {
            sockets: sockets.len(),
            fds: received.fds.len(),
        });
    }
    let counters = match counters {
        true => receive_counters(&mut rx).await,
        false => None,
    };
    let mut handover = Handover {
        listeners: Inherited::new(),
        admin: None,
        sticky_key,
        reply,
        counters,
        from_predecessor: rx,
    };
    for (socket, fd) in sockets.into_iter().zip(received.fds) {
        let listener = TcpListener::from(fd);
        match socket {
            HandedSocket::Listener { name, addr, slot } => {
                handover.listeners.insert((name, addr, slot), listener);
            }
            HandedSocket::Admin { .. } => handover.admin = Some(listener),
        }
    }
    Ok(handover)
}

/// New master: the `Counters` message that follows the sockets. Without it
/// the new master still serves, counting from zero.
async fn receive_counters(rx: &mut ipc::Receiver) -> Option<(Totals, Vec<OwnedFd>)> {
    match rx.recv::<Upgrade>().await {
        Ok(Some(ipc::Received {
            message: Upgrade::Counters { totals, .. },
            fds,
            ..
        })) => Some((totals, fds)),
        Ok(other) => {
            let what = other.map(|r| format!("{:?}", r.message));
            tracing::warn!(
                ?what,
                "the old master's counters did not arrive; counting from zero"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "the old master's counters did not arrive; counting from zero");
            None
        }
    }
}

/// New master: waits for the old master's final totals and makes them
/// the base; if it exits without them (killed), the regions it handed
/// over stay read as they are.
pub async fn follow_predecessor(mut rx: ipc::Receiver, metrics: std::sync::Arc<ClusterMetrics>) {
    loop {
        match rx.recv::<Upgrade>().await {
            Ok(Some(ipc::Received {
                message: Upgrade::Final { totals },
                ..
            })) => {
                metrics.inherit_final(totals);
                return tracing::info!("the previous master's final counters are in");
            }
            Ok(Some(_)) => {}
            Ok(None) => return tracing::debug!("the previous master left without final counters"),
            Err(e) => {
                return tracing::warn!(error = %e, "the previous master's final counters did not arrive");
            }
        }
    }
}

/// New master: tells the old one it can go.
pub async fn announce_ready(mut reply: ipc::Sender) -> Result<(), IpcError> {
    reply
        .send(&Upgrade::Ready {
            pid: std::process::id(),
        })
        .await
}
