//! The serving loop: accept connections on already-bound listeners and serve
//! each on its own task until shutdown.
//!
//! [`serve`] takes its listeners and a shutdown token from the caller, so the
//! same code runs in a worker process on inherited sockets and in tests on
//! sockets bound to port 0. On shutdown it stops accepting, asks every
//! connection to finish its in-flight requests and close, and waits for them
//! up to the drain timeout.

mod activity;
mod conn;
pub mod process;

use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::SharedRuntime;

/// A bound listening socket and the name of its `[[listeners]]` entry.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
}

/// How a [`serve`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished.
    Clean,
    /// The drain timeout passed with connections still open; they were cut.
    TimedOut { open: usize },
}

/// Serves `listeners` until `shutdown` is cancelled, then drains for at most
/// `drain_timeout`.
pub async fn serve(
    listeners: Vec<Listener>,
    runtime: SharedRuntime,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> Drained {
    let connections = TaskTracker::new();
    let accepting = TaskTracker::new();
    for listener in listeners {
        accepting.spawn(accept_loop(
            listener,
            runtime.clone(),
            shutdown.clone(),
            connections.clone(),
        ));
    }
    accepting.close();
    accepting.wait().await;
    connections.close();
    match tokio::time::timeout(drain_timeout, connections.wait()).await {
        Ok(()) => Drained::Clean,
        Err(_) => Drained::TimedOut {
            open: connections.len(),
        },
    }
}

async fn accept_loop(
    listener: Listener,
    runtime: SharedRuntime,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                // Each connection reads its listener's settings (timeouts,
                // certificates) from the snapshot current when it arrives.
                let Some(settings) = runtime.load().listener(&listener.name).cloned() else {
                    tracing::debug!(listener = %listener.name, "listener is no longer configured; refusing");
                    continue;
                };
                connections.spawn(conn::serve(
                    stream,
                    peer,
                    settings,
                    runtime.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                // Out of file descriptors or memory: wait for some to be
                // released instead of spinning, then go on accepting.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::warn!(listener = %listener.name, error = %e, ?backoff, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
