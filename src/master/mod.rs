//! The master process (`corral run`): the control plane.
//!
//! It validates the config, owns every listening socket (one `SO_REUSEPORT`
//! socket per listener and worker slot, see [`sockets`]), spawns one worker
//! process per slot by re-executing its own binary, supervises them
//! ([`slot`]), applies config reloads ([`reload`]) from SIGHUP, the admin
//! endpoint and a file watcher ([`filewatch`]), runs the active health
//! checks once for the whole cluster and sends the results to every worker,
//! serves the admin endpoint ([`view`]), tells a service manager when it is
//! ready, reloading or stopping ([`notify`]), and handles signals:
//! SIGTERM/SIGINT graceful stop, SIGQUIT fast stop, SIGUSR2 binary upgrade
//! ([`upgrade`]).
//! It never serves client traffic itself.

mod filewatch;
mod notify;
mod reload;
mod slot;
pub mod sockets;
mod status;
pub mod upgrade;
mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::ipc::{self, ServerHealth};
use crate::metrics::cluster::ClusterMetrics;
use crate::upstream::{HealthChecker, Upstream};
use reload::{ReloadRequest, Trigger};
use slot::{Generation, SlotContext};
use sockets::{BindError, Inherited};
use status::StatusBoard;
use upgrade::{ENV_UPGRADE, UpgradeError};
use view::View;

pub use reload::ReloadError;

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
    raise_open_files_limit();
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

struct SlotHandle {
    /// Stops this slot alone (retirement) or with all others (a stop).
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Master {
    exe: PathBuf,
    path: PathBuf,
    /// The current generation; every slot supervisor follows it.
    generation: watch::Sender<Arc<Generation>>,
    ctx: Arc<SlotContext>,
    slots: Vec<SlotHandle>,
    status: Arc<StatusBoard>,
    /// The master's own copies of the upstreams, for health checks and `/status`.
    checked: Arc<ArcSwap<Vec<Arc<Upstream>>>>,
    health: watch::Sender<Arc<Vec<ServerHealth>>>,
    checker: HealthChecker,
    metrics: Arc<ClusterMetrics>,
    /// Bumped on SIGUSR1; workers reopen their log files.
    reopen_logs: watch::Sender<u64>,
    view: Arc<View>,
    admin: Option<std::net::TcpListener>,
    admin_stop: CancellationToken,
    reloads: mpsc::Receiver<ReloadRequest>,
    /// Where to say `Ready` when this master took over from another.
    predecessor: Option<ipc::Sender>,
    /// The service manager's socket (`NOTIFY_SOCKET`), if any.
    notify: notify::Notifier,
    /// The config text as last read, valid or not (`None`: unreadable): a
    /// file event reloads only when the file reads differently, so a broken
    /// file is reported once per change.
    last_text: Option<String>,
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
        let plan = crate::config::from_str(path, &text)?;
        let (mut inherited, inherited_admin, predecessor) = match handover {
            Some(h) => (h.listeners, h.admin, Some(h.reply)),
            None => (Inherited::new(), None, None),
        };
        // The admin socket first, without SO_REUSEPORT: a second corral on
        // the same config fails here instead of silently sharing the ports.
        let admin = match &plan.admin {
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
        let slots = plan.runtime.workers.get();
        let listeners = sockets::bind_all(&plan, slots, &mut inherited)?;
        drop(inherited);
        for l in &listeners {
            tracing::info!(listener = %l.name, addr = %l.bound, sockets = l.slots.len(), "listening");
        }
        log_slot_retirement();

        let checked = Arc::new(ArcSwap::from_pointee(crate::upstream::rebuild(
            &plan.upstreams,
            &[],
        )));
        let (health, health_rx) = watch::channel(Arc::new(health_of(&checked.load())));
        let checker = HealthChecker::start(
            &checked.load(),
            on_health_change(checked.clone(), health.clone()),
        );

        let generation = Arc::new(Generation {
            number: 1,
            path: path.to_path_buf(),
            text: text.clone(),
            files: reload::files_digest(&plan),
            plan: Arc::new(plan),
            sockets: Arc::new(listeners),
            loaded_at: SystemTime::now(),
        });
        let (generation_tx, generation_rx) = watch::channel(generation);
        let status = Arc::new(StatusBoard::new(slots));
        let metrics =
            Arc::new(ClusterMetrics::new().map_err(|e| std::io::Error::other(e.to_string()))?);
        metrics.generation.set(1);
        let (reopen_logs, reopen_rx) = watch::channel(0);
        let ctx = Arc::new(SlotContext {
            exe: exe.clone(),
            generation: generation_rx.clone(),
            health: health_rx,
            status: status.clone(),
            metrics: metrics.clone(),
            reopen_logs: reopen_rx,
            kill: CancellationToken::new(),
        });
        let (reload_tx, reloads) = mpsc::channel(8);
        let view = Arc::new(View::new(
            generation_rx,
            status.clone(),
            checked.clone(),
            metrics.clone(),
            reload_tx,
        ));
        let admin_stop = CancellationToken::new();
        if let Some(socket) = &admin {
            let socket = socket.try_clone()?;
            socket.set_nonblocking(true)?;
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tracing::info!(addr = %socket.local_addr()?, "admin endpoint listening");
            tokio::spawn(crate::admin::serve(
                socket,
                view.clone(),
                admin_stop.clone(),
            ));
        }
        let mut master = Self {
            exe,
            path: path.to_path_buf(),
            generation: generation_tx,
            ctx,
            slots: Vec::new(),
            status,
            checked,
            health,
            checker,
            metrics,
            reopen_logs,
            view,
            admin,
            admin_stop,
            reloads,
            predecessor,
            notify: notify::Notifier::from_env(),
            last_text: Some(text),
        };
        master.resize_slots(slots);
        Ok(master)
    }

    /// Starts supervisors for new slots, or retires the highest ones.
    fn resize_slots(&mut self, slots: usize) {
        self.status.resize(slots);
        self.metrics
            .slots
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
        while self.slots.len() > slots {
            if let Some(retired) = self.slots.pop() {
                tracing::info!(slot = self.slots.len(), "retiring worker slot");
                retired.stop.cancel();
                // The supervisor drains its worker on its own.
                drop(retired.task);
            }
        }
        for slot in self.slots.len()..slots {
            let stop = CancellationToken::new();
            let task = tokio::spawn(slot::supervise(slot, self.ctx.clone(), stop.clone()));
            self.slots.push(SlotHandle { stop, task });
        }
    }

    async fn run(mut self) -> Result<(), RunError> {
        let mut signals = Signals::new()?;
        let (_watcher, mut file_events) = match filewatch::watch(&self.path) {
            Ok((watcher, events)) => (Some(watcher), Some(events)),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot watch the config file; reload with SIGHUP or POST /reload");
                (None, None)
            }
        };
        let mut settle_at: Option<Instant> = None;
        let mut announced = false;
        loop {
            tokio::select! {
                () = self.status.all_ready(), if !announced => {
                    announced = true;
                    tracing::info!(workers = self.slots.len(), "ready");
                    if let Some(reply) = self.predecessor.take() {
                        if let Err(e) = upgrade::announce_ready(reply).await {
                            tracing::warn!(error = %e, "could not tell the previous master we are ready");
                        }
                    }
                    // Only once the predecessor has agreed to go: a service
                    // manager told that this is the main process would take
                    // the service for dead if the predecessor killed it now.
                    self.notify_ready();
                }
                _ = signals.hup.recv() => {
                    let _ = self.reload(Trigger::Signal).await;
                }
                _ = signals.usr1.recv() => {
                    tracing::info!("SIGUSR1: workers reopen their log files");
                    self.reopen_logs.send_modify(|n| *n += 1);
                }
                Some(request) = self.reloads.recv() => {
                    let result = self.reload(Trigger::Admin).await;
                    let _ = request.reply.send(result);
                }
                Some(()) = recv(&mut file_events) => {
                    // Editors and ConfigMap updates change several files in a
                    // burst; act once it has settled.
                    settle_at = Some(Instant::now() + filewatch::SETTLE);
                }
                () = sleep_until(settle_at) => {
                    settle_at = None;
                    if filewatch::changed(&self.path, self.last_text.as_deref()) {
                        let _ = self.reload(Trigger::File).await;
                    } else {
                        tracing::debug!("config file as last read; nothing to reload");
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
                    let (sockets, ready_timeout) = {
                        let generation = self.generation.borrow();
                        (generation.sockets.clone(), generation.plan.runtime.upgrade_timeout)
                    };
                    match upgrade::start_successor(&self.exe, &self.path, &sockets, self.admin.as_ref(), ready_timeout).await {
                        Ok(pid) => {
                            tracing::info!(new_master = pid, "the new master is serving; draining and exiting");
                            self.notify.handed_over(pid);
                            return self.stop(false).await;
                        }
                        Err(e) => tracing::error!(error = %e, "binary upgrade failed; this master keeps serving"),
                    }
                }
            }
        }
    }

    async fn stop(mut self, fast: bool) -> Result<(), RunError> {
        self.notify.stopping(fast);
        self.admin_stop.cancel();
        self.admin = None;
        if fast {
            self.ctx.kill.cancel();
        }
        for slot in &self.slots {
            slot.stop.cancel();
        }
        // Let go of every listening socket: each closes as soon as its
        // worker stops accepting, so new connections are refused rather
        // than queued and then reset (unless a new master holds them).
        // Supervisors, already stopped, do not pass it on as a reload.
        self.generation.send_modify(|g| {
            let mut last = Generation::clone(g);
            last.sockets = Arc::new(Vec::new());
            *g = Arc::new(last);
        });
        for slot in self.slots.drain(..) {
            let _ = slot.task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn recv(events: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is no deadline (a `select!`
/// branch that is off until one is set).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Each connection costs a descriptor (two when proxied); the usual soft
/// limit of 1024 would cap a worker at a few hundred. Raise it to the hard
/// limit, as the workers inherit it.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
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

/// Republishes every checked server's health when one changes.
fn on_health_change(
    checked: Arc<ArcSwap<Vec<Arc<Upstream>>>>,
    health: watch::Sender<Arc<Vec<ServerHealth>>>,
) -> crate::upstream::OnChange {
    Arc::new(move |_, _, _| {
        health.send_replace(Arc::new(health_of(&checked.load())));
    })
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
