//! `corral run`: load the config, bind the listeners, serve until a signal.
//!
//! For now one process serves every listener on a multi-threaded runtime with
//! `runtime.workers` threads; the supervisor that spawns worker processes on
//! shared sockets takes this place.

pub mod sockets;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;
use crate::tls::TlsError;
use crate::upstream::HealthChecker;
use crate::worker::{self, Drained, Listener};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} (listener `{name}`): {source}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub fn run(path: &Path) -> Result<(), RunError> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.workers.get())
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), RunError> {
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let bind_error = |source| RunError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        };
        let socket = sockets::bind(l.addr, l.backlog).map_err(bind_error)?;
        let socket = tokio::net::TcpListener::from_std(socket).map_err(bind_error)?;
        let addr = socket.local_addr()?;
        tracing::info!(listener = %l.name, %addr, tls = l.tls.is_some(), "listening");
        listeners.push(Listener {
            name: l.name.clone(),
            socket,
        });
    }
    let shutdown_timeout = config.runtime.shutdown_timeout;
    let snapshot = Runtime::build(config, 1, None)?;
    let _health = HealthChecker::start(&snapshot.upstreams, Arc::new(|_, _, _| {}));
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    tracing::info!(listeners = listeners.len(), "ready");

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
        }
        stop.cancel();
    });
    match worker::serve(listeners, shared, shutdown, shutdown_timeout).await {
        Drained::Clean => tracing::info!("stopped"),
        Drained::TimedOut { open } => tracing::warn!(
            open,
            "shutdown timeout passed; closed remaining connections"
        ),
    }
    Ok(())
}
