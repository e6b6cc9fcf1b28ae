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

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::head_budget::HeadBudget;
use super::open_connections::OpenConnections;
use crate::accept;
use crate::metrics::Family;
use crate::snapshot::SharedSnapshot;

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
    snapshot: SharedSnapshot,
    shutdown: CancellationToken,
    connections: TaskTracker,
    /// Accept loops by listener name; cancelling one stops that loop only.
    accepting: HashMap<String, AcceptLoop>,
    heads: Arc<HeadBudget>,
}

#[derive(Debug)]
struct AcceptLoop {
    stop: CancellationToken,
    /// Ends once the loop has dropped its socket.
    task: JoinHandle<()>,
    open: Arc<OpenConnections>,
}

/// What an accept loop hands each connection it accepts, besides the socket.
#[derive(Debug, Clone)]
struct Shared {
    snapshot: SharedSnapshot,
    shutdown: CancellationToken,
    connections: TaskTracker,
    heads: Arc<HeadBudget>,
}

impl Server {
    pub fn new(snapshot: SharedSnapshot, shutdown: CancellationToken) -> Self {
        let recorder = snapshot.load().recorder.clone();
        let charged = recorder.gauge(Family::RequestHeadsBytes, &[recorder.worker()]);
        Self {
            snapshot,
            shutdown,
            connections: TaskTracker::new(),
            accepting: HashMap::new(),
            heads: HeadBudget::new(charged),
        }
    }

    /// Starts accepting on `listener`, replacing any listener of that name
    /// (whose open connections still count against its limit).
    pub async fn listen(&mut self, listener: Listener) {
        let open = self
            .stop_listening(&listener.name)
            .await
            .unwrap_or_default();
        let stop = self.shutdown.child_token();
        let name = listener.name.clone();
        let shared = Shared {
            snapshot: self.snapshot.clone(),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
            heads: self.heads.clone(),
        };
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
        self.shutdown.cancel();
        self.connections.close();
        match tokio::time::timeout(timeout, self.connections.wait()).await {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::TimedOut {
                open: self.connections.len(),
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
        let opened = open.open();
        // Boxed: a connection's future is a few kilobytes, and spawning
        // moves it several times on its way into the task.
        let serving = Box::pin(connection::serve(
            stream,
            peer,
            settings,
            shared.snapshot.clone(),
            shared.shutdown.clone(),
            shared.heads.clone(),
        ));
        shared.connections.spawn(async move {
            serving.await;
            drop(opened);
        });
    }
}
