//! The accept loops: accept connections on already-bound listeners and serve
//! each on its own task until shutdown.
//!
//! A [`Server`] takes its listeners and a shutdown token from the caller, so
//! the same code runs in a worker process on sockets from the master and in
//! tests on sockets bound to port 0. Listeners can be added and removed while
//! it serves (a reload); connections already accepted are never affected. On
//! shutdown it stops accepting, asks every connection to finish its in-flight
//! requests and close, and waits for them up to the drain timeout.
//!
//! A listener's `max_connections` pauses its accept loop: with that many of
//! its connections open, the loop stops calling accept (the kernel queues
//! new connections, up to the backlog) until one closes or a reload changes
//! the limit. The server also holds the worker's budget for request heads
//! in flight (see `head_budget`), which every connection shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::head_budget::HeadBudget;
use super::open_connections::{OpenConnections, Opened};
use crate::accept;
use crate::metrics::Family;
use crate::snapshot::{ListenerSnapshot, SharedSnapshot};

/// A bound listening socket and the name of its `[[listeners]]` entry.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished.
    Clean,
    /// The drain timeout passed with connections still open; they were cut.
    TimedOut { open: usize },
}

/// The accept loops and connections of one worker.
#[derive(Debug)]
pub struct Server {
    shared: Shared,
    /// Accept loops by listener name; cancelling one stops that loop only.
    accepting: HashMap<String, AcceptLoop>,
}

#[derive(Debug)]
struct AcceptLoop {
    stop: CancellationToken,
    /// Ends once the loop has dropped its socket.
    task: JoinHandle<()>,
    open: Arc<OpenConnections>,
}

/// What every connection of the worker is served with, besides its socket.
#[derive(Debug, Clone)]
struct Shared {
    snapshot: SharedSnapshot,
    /// Shared by reference count: every connection holds it, and cloning
    /// the token itself takes its lock.
    shutdown: Arc<CancellationToken>,
    connections: TaskTracker,
    heads: Arc<HeadBudget>,
}

impl Server {
    pub fn new(snapshot: SharedSnapshot, shutdown: CancellationToken) -> Self {
        let recorder = snapshot.load().recorder.clone();
        let charged = recorder.gauge(Family::RequestHeadsBytes, &[recorder.worker()]);
        Self {
            shared: Shared {
                snapshot,
                shutdown: Arc::new(shutdown),
                connections: TaskTracker::new(),
                heads: HeadBudget::new(charged),
            },
            accepting: HashMap::new(),
        }
    }

    /// Starts accepting on `listener`, replacing any listener of that name
    /// (whose open connections still count against its limit).
    pub async fn listen(&mut self, listener: Listener) {
        let open = self
            .stop_listening(&listener.name)
            .await
            .unwrap_or_default();
        let stop = self.shared.shutdown.child_token();
        let name = listener.name.clone();
        let shared = self.shared.clone();
        let task = tokio::spawn(accept_loop(listener, open.clone(), stop.clone(), shared));
        self.accepting.insert(name, AcceptLoop { stop, task, open });
    }

    /// Stops accepting on `name` and returns once its socket is closed (so
    /// the master can report a removed listener gone), with the count of
    /// its open connections, which carry on.
    pub async fn stop_listening(&mut self, name: &str) -> Option<Arc<OpenConnections>> {
        let accepting = self.accepting.remove(name)?;
        accepting.stop.cancel();
        let _ = accepting.task.await;
        Some(accepting.open)
    }

    /// Serves a connection the master accepted on `listener`'s socket of a
    /// slot that had no worker (see `master::relay`), as if accepted here.
    pub fn serve_relayed(&self, listener: &str, stream: std::net::TcpStream) {
        let accepted = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
            .and_then(|stream| Ok((stream.peer_addr()?, stream)));
        let (peer, stream) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // The client is gone already.
                tracing::debug!(listener, error = %e, "relayed connection unusable");
                return;
            }
        };
        // A reload may have removed the listener since the master took it.
        let Some(settings) = self.shared.snapshot.load().listener(listener).cloned() else {
            tracing::debug!(
                listener,
                "relayed connection for an unknown listener; refusing"
            );
            return;
        };
        // Counted against `max_connections` like an accepted one, but
        // served even at the limit: it was accepted already, and refusing
        // it now would reset its client.
        let opened = self.accepting.get(listener).map(|a| a.open.open());
        self.shared.serve(stream, peer, settings, opened);
    }

    pub fn listening(&self) -> impl Iterator<Item = &str> {
        self.accepting.keys().map(String::as_str)
    }

    /// To be called once a new snapshot is in place: accept loops paused at
    /// their listener's `max_connections` look at the limit again.
    pub fn reconfigured(&self) {
        for accepting in self.accepting.values() {
            accepting.open.wake();
        }
    }

    /// Stops accepting everywhere and waits at most `timeout` for open
    /// connections (which see the shutdown token) to finish.
    pub async fn drain(self, timeout: Duration) -> Drained {
        self.shared.shutdown.cancel();
        self.shared.connections.close();
        match tokio::time::timeout(timeout, self.shared.connections.wait()).await {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::TimedOut {
                open: self.shared.connections.len(),
            },
        }
    }
}

/// Serves `listeners` until `shutdown` is cancelled, then drains for at most
/// `drain_timeout`.
pub async fn serve(
    listeners: Vec<Listener>,
    snapshot: SharedSnapshot,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> Drained {
    let mut server = Server::new(snapshot, shutdown.clone());
    for listener in listeners {
        server.listen(listener).await;
    }
    shutdown.cancelled().await;
    server.drain(drain_timeout).await
}

async fn accept_loop(
    listener: Listener,
    open: Arc<OpenConnections>,
    stop: CancellationToken,
    shared: Shared,
) {
    let name = &listener.name;
    let mut paused = false;
    loop {
        // The limit of the snapshot current now, so that a reload applies
        // at the next connection.
        let snapshot = shared.snapshot.load();
        let at_limit = snapshot
            .listener(name)
            .filter(|l| open.at(l.config.max_connections));
        if let Some(settings) = at_limit {
            if !std::mem::replace(&mut paused, true) {
                settings.accept_pauses.add(1);
                tracing::debug!(listener = %name, "at max_connections; accepting paused");
            }
            drop(snapshot);
            // Not a poll: a connection's close or a reload wakes the loop.
            tokio::select! {
                () = stop.cancelled() => return,
                () = open.changed() => continue,
            }
        }
        drop(snapshot);
        if std::mem::take(&mut paused) {
            tracing::debug!(listener = %name, "below max_connections; accepting again");
        }
        let Some((stream, peer)) = accept::next(&listener.socket, name, &stop).await else {
            return;
        };
        // Each connection reads its listener's settings (timeouts,
        // certificates) from the snapshot current when it arrives.
        let Some(settings) = shared.snapshot.load().listener(name).cloned() else {
            tracing::debug!(listener = %name, "listener is no longer configured; refusing");
            continue;
        };
        shared.serve(stream, peer, settings, Some(open.open()));
    }
}

impl Shared {
    /// Serves one connection on its own task, counted open (`opened`) until
    /// it closes.
    fn serve(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        settings: Arc<ListenerSnapshot>,
        opened: Option<Opened>,
    ) {
        // Spawned as it is, not boxed apart: an idle connection's state is
        // under a kilobyte (what a busy one adds is boxed inside), and one
        // allocation for both costs less memory than two.
        self.connections.spawn(connection::serve(
            stream,
            peer,
            settings,
            self.snapshot.clone(),
            self.shutdown.clone(),
            self.heads.clone(),
            opened,
        ));
    }
}
