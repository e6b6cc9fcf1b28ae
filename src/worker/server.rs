//! The accept loops: accept connections on already-bound listeners and serve
//! each on its own task until shutdown.
//!
//! A [`Server`] takes its listeners and a shutdown token from the caller, so
//! the same code runs in a worker process on sockets from the master and in
//! tests on sockets bound to port 0. Listeners can be added and removed while
//! it serves (a reload); connections already accepted are never affected. On
//! shutdown it stops accepting, asks every connection to finish its in-flight
//! requests and close, and waits for them up to the drain timeout.

use std::collections::HashMap;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use crate::accept;
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
}

#[derive(Debug)]
struct AcceptLoop {
    stop: CancellationToken,
    /// Ends once the loop has dropped its socket.
    task: JoinHandle<()>,
}

impl Server {
    pub fn new(snapshot: SharedSnapshot, shutdown: CancellationToken) -> Self {
        Self {
            snapshot,
            shutdown,
            connections: TaskTracker::new(),
            accepting: HashMap::new(),
        }
    }

    /// Starts accepting on `listener`, replacing any listener of that name.
    pub async fn listen(&mut self, listener: Listener) {
        self.stop_listening(&listener.name).await;
        let stop = self.shutdown.child_token();
        let name = listener.name.clone();
        let task = tokio::spawn(accept_loop(
            listener,
            self.snapshot.clone(),
            stop.clone(),
            self.shutdown.clone(),
            self.connections.clone(),
        ));
        self.accepting.insert(name, AcceptLoop { stop, task });
    }

    /// Stops accepting on `name` and returns once its socket is closed (so
    /// the master can report a removed listener gone); its open connections
    /// carry on.
    pub async fn stop_listening(&mut self, name: &str) {
        if let Some(accepting) = self.accepting.remove(name) {
            accepting.stop.cancel();
            let _ = accepting.task.await;
        }
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
        let Some(settings) = self.snapshot.load().listener(listener).cloned() else {
            tracing::debug!(
                listener,
                "relayed connection for an unknown listener; refusing"
            );
            return;
        };
        self.connections.spawn(Box::pin(connection::serve(
            stream,
            peer,
            settings,
            self.snapshot.clone(),
            self.shutdown.clone(),
        )));
    }

    pub fn listening(&self) -> impl Iterator<Item = &str> {
        self.accepting.keys().map(String::as_str)
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
    snapshot: SharedSnapshot,
    stop: CancellationToken,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    while let Some((stream, peer)) = accept::next(&listener.socket, &listener.name, &stop).await {
        // Each connection reads its listener's settings (timeouts,
        // certificates) from the snapshot current when it arrives.
        let Some(settings) = snapshot.load().listener(&listener.name).cloned() else {
            tracing::debug!(listener = %listener.name, "listener is no longer configured; refusing");
            continue;
        };
        // Boxed: a connection's future is a few kilobytes, and spawning
        // moves it several times on its way into the task.
        connections.spawn(Box::pin(connection::serve(
            stream,
            peer,
            settings,
            snapshot.clone(),
            shutdown.clone(),
        )));
    }
}
