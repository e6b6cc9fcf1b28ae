//! The master process (`corral run`): the control plane.
//!
//! It validates the config, owns every listening socket (one `SO_REUSEPORT`
//! socket per listener and worker slot, see [`sockets`]), spawns one worker
//! process per slot by re-executing its own binary, supervises them
//! ([`slot`]), runs the active health checks once for the whole cluster and
//! sends the results to every worker, serves the admin endpoint, and handles
//! signals: SIGTERM/SIGINT graceful stop, SIGQUIT fast stop, SIGUSR2 binary
//! upgrade ([`upgrade`]). It never serves client traffic itself.

mod slot;
pub mod sockets;
mod status;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::ipc::{self, ServerHealth};
use crate::upstream::{HealthChecker, Upstream};
use slot::{ConfigText, SlotContext};
use sockets::{BindError, Inherited, ListenerSockets};
use status::StatusBoard;
use upgrade::{ENV_UPGRADE, UpgradeError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot listen on {addr} (admin endpoint): {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binary upgrade failed: {0}")]
    Upgrade(#[from] UpgradeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the master until it is stopped.
pub fn run(path: &Path) -> Result<(), RunError> {
    // Resolved now: after an upgrade replaces the file, this path names the
    // new binary, while /proc/self/exe would still name the old one.
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let handover = match std::env::var_os(ENV_UPGRADE) {
            Some(_) => Some(upgrade::receive().await?),
            None => None,
        };
        Master::start(exe, path, handover).await?.run().await
    })
}

struct Master {
    exe: PathBuf,
    path: PathBuf,
    /// The master's own hold on every listening socket.
    listeners: Option<Arc<Vec<ListenerSockets>>>,
    admin: Option<std::net::TcpListener>,
    admin_stop: CancellationToken,
    ctx: Arc<SlotContext>,
    supervisors: Vec<JoinHandle<()>>,
    status: Arc<StatusBoard>,
    /// Where to say `Ready` when this master took over from another.
    predecessor: Option<ipc::Sender>,
    _health: HealthChecker,
}

impl Master {
    async fn start(
        exe: PathBuf,
        path: &Path,
        handover: Option<upgrade::Handover>,
    ) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::from_str(path, &text)?;
        let (mut inherited, inherited_admin, predecessor) = match handover {
            Some(h) => (h.listeners, h.admin, Some(h.reply)),
            None => (Inherited::new(), None, None),
        };
        // The admin socket first, without SO_REUSEPORT: a second corral on
        // the same config fails here instead of silently sharing the ports.
        let admin = match &config.admin {
            None => None,
            Some(a) => Some(
                match inherited_admin
                    .filter(|s| s.local_addr().is_ok_and(|l| same_addr(l, a.listen)))
                {
                    Some(socket) => socket,
                    None => {
                        std::net::TcpListener::bind(a.listen).map_err(|source| RunError::Admin {
                            addr: a.listen,
                            source,
                        })?
                    }
                },
            ),
        };
        let slots = config.runtime.workers.get();
        let listeners = Arc::new(sockets::bind_all(&config, slots, &mut inherited)?);
        drop(inherited);
        for l in listeners.iter() {
            tracing::info!(listener = %l.name, addr = %l.bound, sockets = l.slots.len(), "listening");
        }
        log_slot_retirement();

        let checked: Arc<Vec<Arc<Upstream>>> = Arc::new(
            config
                .upstreams
                .iter()
                .map(|u| Arc::new(Upstream::new(u, |_| None)))
                .collect(),
        );
        let (health_tx, health_rx) = watch::channel(Arc::new(health_of(&checked)));
        let on_change = {
            let checked = checked.clone();
            Arc::new(move |_: &str, _: &crate::upstream::Server, _: bool| {
                health_tx.send_replace(Arc::new(health_of(&checked)));
            })
        };
        let health = HealthChecker::start(&checked, on_change);

        let status = Arc::new(StatusBoard::new(slots));
        let loaded_at = SystemTime::now();
        let (_, config_rx) = watch::channel(Arc::new(ConfigText {
            generation: 1,
            path: path.to_path_buf(),
            text,
        }));
        let ctx = Arc::new(SlotContext {
            exe: exe.clone(),
            cpu_affinity: config.runtime.cpu_affinity,
            heartbeat_timeout: config.runtime.heartbeat_timeout,
            shutdown_timeout: config.runtime.shutdown_timeout,
            config: config_rx,
            health: health_rx,
            status: status.clone(),
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
        });
        let supervisors = (0..slots)
            .map(|i| tokio::spawn(slot::supervise(i, listeners.clone(), ctx.clone())))
            .collect();

        let admin_stop = CancellationToken::new();
        if let Some(socket) = &admin {
            let socket = socket.try_clone()?;
            socket.set_nonblocking(true)?;
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tracing::info!(addr = %socket.local_addr()?, "admin endpoint listening");
            let view = Arc::new(View {
                pid: std::process::id(),
                path: path.to_path_buf(),
                generation: 1,
                loaded_at,
                status: status.clone(),
                upstreams: checked,
            });
            tokio::spawn(admin::serve(socket, view, admin_stop.clone()));
        }
        Ok(Self {
            exe,
            path: path.to_path_buf(),
            listeners: Some(listeners),
            admin,
            admin_stop,
            ctx,
            supervisors,
            status,
            predecessor,
            _health: health,
        })
    }

    async fn run(mut self) -> Result<(), RunError> {
        let mut signals = Signals::new()?;
        let mut announced = false;
        loop {
            tokio::select! {
                () = self.status.all_ready(), if !announced => {
                    announced = true;
                    tracing::info!(workers = self.supervisors.len(), "ready");
                    if let Some(reply) = self.predecessor.take() {
                        if let Err(e) = upgrade::announce_ready(reply).await {
                            tracing::warn!(error = %e, "could not tell the previous master we are ready");
                        }
                    }
                }
                _ = signals.term.recv() => {
                    tracing::info!("SIGTERM: stopping gracefully");
                    return self.stop(false).await;
                }
                _ = signals.int.recv() => {
                    tracing::info!("SIGINT: stopping gracefully");
                    return self.stop(false).await;
                }
                _ = signals.quit.recv() => {
                    tracing::info!("SIGQUIT: stopping now");
                    return self.stop(true).await;
                }
                _ = signals.usr2.recv() => {
                    tracing::info!(exe = %self.exe.display(), "SIGUSR2: starting a new master");
                    let Some(listeners) = &self.listeners else { continue };
                    match upgrade::start_successor(&self.exe, &self.path, listeners, self.admin.as_ref()).await {
                        Ok(pid) => {
                            tracing::info!(new_master = pid, "the new master is serving; draining and exiting");
                            return self.stop(false).await;
                        }
                        Err(e) => tracing::error!(error = %e, "binary upgrade failed; this master keeps serving"),
                    }
                }
                _ = signals.hup.recv() => {
                    tracing::warn!("SIGHUP: configuration reload is not available in this version; ignoring");
                }
            }
        }
    }

    async fn stop(mut self, fast: bool) -> Result<(), RunError> {
        self.admin_stop.cancel();
        self.admin = None;
        if fast {
            self.ctx.kill.cancel();
        }
        self.ctx.stop.cancel();
        self.listeners = None;
        for supervisor in self.supervisors.drain(..) {
            let _ = supervisor.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    usr2: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr2: signal(SignalKind::user_defined2())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Port 0 in the config matches whatever port the inherited socket has.
fn same_addr(bound: SocketAddr, configured: SocketAddr) -> bool {
    bound == configured || (configured.port() == 0 && bound.ip() == configured.ip())
}

fn log_slot_retirement() {
    match sockets::migrate_req_enabled() {
        Some(true) => tracing::info!(
            "net.ipv4.tcp_migrate_req is on: connections queued on a retired worker slot's socket move to the other slots"
        ),
        _ => tracing::info!(
            "net.ipv4.tcp_migrate_req is off: retiring a worker slot would reset connections queued on its socket; \
             replacing a worker never does, because the master keeps every slot's socket open"
        ),
    }
}

/// The health of every server that has active checks.
fn health_of(upstreams: &[Arc<Upstream>]) -> Vec<ServerHealth> {
    upstreams
        .iter()
        .filter(|u| u.config.health_check.is_some())
        .flat_map(|u| {
            u.servers.iter().map(|s| ServerHealth {
                upstream: u.name().to_owned(),
                server: s.addr,
                healthy: s.is_healthy(),
            })
        })
        .collect()
}

/// The master as the admin endpoint sees it.
struct View {
    pid: u32,
    path: PathBuf,
    generation: u64,
    loaded_at: SystemTime,
    status: Arc<StatusBoard>,
    upstreams: Arc<Vec<Arc<Upstream>>>,
}

impl admin::Backend for View {
    fn status(&self) -> serde_json::Value {
        let upstreams: Vec<_> = self
            .upstreams
            .iter()
            .map(|u| {
                let servers: Vec<_> = u
                    .servers
                    .iter()
                    .map(|s| {
                        json!({
                            "addr": s.addr.to_string(),
                            "weight": s.weight,
                            "state": if s.is_healthy() { "healthy" } else { "unhealthy" },
                            "health_checked": u.config.health_check.is_some(),
                        })
                    })
                    .collect();
                json!({ "name": u.name(), "servers": servers })
            })
            .collect();
        json!({
            "pid": self.pid,
            "version": env!("CARGO_PKG_VERSION"),
            "generation": self.generation,
            "config": { "path": self.path.display().to_string(), "loaded_at": status::timestamp(self.loaded_at) },
            "last_reload": null,
            "workers": self.status.workers(),
            "upstreams": upstreams,
        })
    }

    fn healthz(&self) -> Result<(), String> {
        match self.status.not_ready().as_slice() {
            [] => Ok(()),
            slots => Err(format!("worker slots not serving: {slots:?}")),
        }
    }
}
