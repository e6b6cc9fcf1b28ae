//! The master process: its state, its start, its event loop, and its
//! stop; reloads as it applies them are in [`reloading`].
//!
//! Everything the master holds about the running config is one
//! [`Generation`], published through a watch channel that every slot
//! supervisor and the admin endpoint read; a reload makes the next one
//! whole ([`reload::prepare`]) before anything is published, and is then
//! pending until its workers confirm it: the loop goes on meanwhile, and
//! never waits for one worker.

mod reloading;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acme::Acme;
use super::admin_backend::AdminBackend;
use super::discovery::{self, Discovery};
use super::filewatch;
use super::generation::{self, Generation};
use super::guard::{self, Guard};
use super::health::{self, HealthChecker};
use super::notify::Notifier;
use super::relay::Inboxes;
use super::reload::{self, AdminMove, Pending, ReloadRequest, Trigger};
use super::slot::{self, SlotContext, sleep_until};
use super::sockets::{self, BindError, Inherited};
use super::status::StatusBoard;
use super::upgrade::{self, ENV_UPGRADE, UpgradeError};
use crate::config::ConfigError;
use crate::ipc::{self, ServerHealth};
use crate::metrics::cluster::ClusterMetrics;
use crate::plan::{Plan, StickyKey, TICKET_ROTATION, TicketKeys};

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
    #[error(transparent)]
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

/// A generation just published, and what changed, one line each.
type Published = (Arc<Generation>, Vec<String>);

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
    health: watch::Sender<Arc<Vec<ServerHealth>>>,
    checker: HealthChecker,
    metrics: Arc<ClusterMetrics>,
    /// Bumped on SIGUSR1; workers reopen their log files.
    reopen_logs: watch::Sender<u64>,
    admin_backend: Arc<AdminBackend>,
    admin: Option<std::net::TcpListener>,
    admin_stop: CancellationToken,
    reloads: mpsc::Receiver<ReloadRequest>,
    /// Reloads published and not yet confirmed, oldest first.
    pending: VecDeque<Pending>,
    /// Where to say `Ready` when this master took over from another.
    predecessor: Option<ipc::Sender>,
    /// The service manager's socket (`NOTIFY_SOCKET`), if any.
    notify: Notifier,
    /// The config text as last read, valid or not (`None`: unreadable): a
    /// file event reloads only when the file reads differently, so a broken
    /// file is reported once per change.
    last_text: Option<String>,
    discovery: Discovery,
    /// Orders and renews the ACME certificates of the plan.
    acme: Acme,
    /// Judges each new generation, with `[reload_guard]`.
    guard: Guard,
}

/// The config file's text and the plan made of it, its warnings logged.
fn first_plan(path: &Path) -> Result<(String, Plan), RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let plan = crate::config::from_str(path, &text)?;
    super::reload::warn(&plan);
    Ok((text, plan))
}

impl Master {
    async fn start(
        exe: PathBuf,
        path: &Path,
        handover: Option<upgrade::Handover>,
    ) -> Result<Self, RunError> {
        let (text, mut plan) = first_plan(path)?;
        let (inherited, inherited_admin, predecessor, sticky_key, counters) =
            upgrade::Handover::parts(handover);
        // Made once per cluster: reloads copy it, upgrades hand it on.
        plan.sticky_key = Some(match sticky_key {
            Some(key) => key,
            None => StickyKey::generate().map_err(|_| no_random_source())?,
        });
        plan.ticket_keys = Some(TicketKeys::generate().map_err(|_| no_random_source())?);
        // The admin socket first, without SO_REUSEPORT: a second corral on
        // the same config fails here instead of silently sharing the ports.
        let admin = bind_admin(&plan, inherited_admin)?;
        let slots = plan.runtime.workers.get();
        let listeners = bind_listeners(&plan, slots, inherited)?;

        let metrics =
            Arc::new(ClusterMetrics::new().map_err(|e| std::io::Error::other(e.to_string()))?);
        metrics.generation.set(1);
        upgrade::carry_counters(counters, &metrics);
        let mut discovery = Discovery::start(&mut plan, &metrics).await;
        let first = Arc::new(Generation::first(
            path.to_path_buf(),
            text.clone(),
            plan,
            listeners,
        ));
        let (health, health_rx) = watch::channel(Arc::new(health::health_of(&first.upstreams)));
        let (generation, generation_rx) = watch::channel(first);
        let checker = HealthChecker::start(
            &generation.borrow().upstreams,
            health::on_change_publish(generation_rx.clone(), health.clone()),
        );
        discovery.follow(generation_rx.clone(), metrics.clone());
        let status = Arc::new(StatusBoard::new());
        let (acme, challenges) = Acme::start(&generation.borrow().plan, status.clone());
        let (reopen_logs, reopen_rx) = watch::channel(0);
        let stopping = CancellationToken::new();
        let ctx = Arc::new(SlotContext {
            exe: exe.clone(),
            generation: generation_rx.clone(),
            health: health_rx,
            challenges,
            status: status.clone(),
            metrics: metrics.clone(),
            reopen_logs: reopen_rx,
            kill: CancellationToken::new(),
            stopping: stopping.clone(),
            inboxes: Arc::new(Inboxes::new(stopping)),
            ejections: Arc::default(),
        });
        let (reload_tx, reloads) = mpsc::channel(8);
        let admin_backend = Arc::new(AdminBackend::new(
            generation_rx,
            status.clone(),
            metrics.clone(),
            reload_tx,
            checker.notes(),
            ctx.ejections.clone(),
            discovery.names.clone(),
        ));
        let admin_stop = CancellationToken::new();
        if let Some(socket) = &admin {
            serve_admin(socket, admin_backend.clone(), admin_stop.clone())?;
        }
        let notify = Notifier::from_env(admin.as_ref().and_then(|a| a.local_addr().ok()));
        let mut master = Self {
            exe,
            path: path.to_path_buf(),
            generation,
            ctx,
            slots: Vec::new(),
            status,
            health,
            checker,
            metrics,
            reopen_logs,
            admin_backend,
            admin,
            admin_stop,
            reloads,
            pending: VecDeque::new(),
            predecessor,
            notify,
            last_text: Some(text),
            discovery,
            acme,
            guard: Guard::default(),
        };
        master.add_slots(slots);
        Ok(master)
    }

    /// Retires the slots from `slots` up. Each supervisor drains its worker
    /// and empties the slot's sockets on its own.
    fn retire_slots(&mut self, slots: usize) {
        while self.slots.len() > slots {
            if let Some(retired) = self.slots.pop() {
                tracing::info!(slot = self.slots.len(), "retiring worker slot");
                retired.stop.cancel();
                drop(retired.task);
            }
        }
    }

    /// Starts supervisors for slots up to `slots`, and shows that many.
    fn add_slots(&mut self, slots: usize) {
        let seats = self.status.resize(slots);
        self.metrics
            .slots
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
        for seat in seats {
            let stop = CancellationToken::new();
            let task = tokio::spawn(slot::supervise(seat, self.ctx.clone(), stop.clone()));
            self.slots.push(SlotHandle { stop, task });
        }
    }

    async fn run(mut self) -> Result<(), RunError> {
        let mut signals = Signals::new()?;
        let mut watched = self.watched_files();
        let mut watch = filewatch::Watch::logged(&watched);
        let mut settle_at: Option<Instant> = None;
        let mut rotation =
            tokio::time::interval_at(Instant::now() + TICKET_ROTATION, TICKET_ROTATION);
        let mut judging = tokio::time::interval(guard::TICK);
        let mut announced = false;
        loop {
            // A reload may have named other certificate files.
            let files = self.watched_files();
            if files != watched {
                watch = filewatch::Watch::logged(&files);
                watched = files;
            }
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
                    self.notify.serving(&self.generation.borrow(), self.slots.len());
                }
                // Each reload logs, counts and records its outcome itself.
                _ = signals.hup.recv() => self.reload(Trigger::Signal, None),
                _ = signals.usr1.recv() => {
                    tracing::info!("SIGUSR1: workers reopen their log files");
                    self.reopen_logs.send_modify(|n| *n += 1);
                }
                Some(request) = self.reloads.recv() => self.reload(Trigger::Admin, Some(request.reply)),
                Some(()) = self.discovery.changed.recv() => self.rediscover(),
                _ = rotation.tick() => self.rotate_ticket_keys(),
                _ = judging.tick(), if self.generation.borrow().plan.reload_guard.is_some() => self.judge(),
                () = self.notify.watchdog_due() => self.notify.watchdog(),
                outcome = reload::settled(&self.status, self.pending.front()) => {
                    if let Some(pending) = self.pending.pop_front() {
                        self.conclude(pending, outcome);
                    }
                }
                () = changed(&mut watch) => {
                    // Editors and ConfigMap updates change several files in a
                    // burst; act once it has settled.
                    settle_at = Some(Instant::now() + filewatch::SETTLE);
                }
                () = sleep_until(settle_at) => {
                    settle_at = None;
                    let renewed = generation::tls_files_changed(&self.generation.borrow().plan);
                    if renewed || filewatch::changed(&self.path, self.last_text.as_deref()) {
                        self.reload(Trigger::File, None);
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
                    if let Some(successor) = self.upgrade().await {
                        let metrics = self.metrics.clone();
                        let stopped = self.stop(false).await;
                        // Last: every worker has exited, so these hold all it counted.
                        successor.hand_final_totals(&metrics).await;
                        return stopped;
                    }
                }
            }
        }
    }

    /// SIGUSR2: starts a new master on this one's sockets; `None` when it
    /// failed and this one keeps serving.
    async fn upgrade(&mut self) -> Option<upgrade::Successor> {
        tracing::info!(exe = %self.exe.display(), "SIGUSR2: starting a new master");
        let (sockets, sticky_key, ready_timeout) = {
            let generation = self.generation.borrow();
            let plan = &generation.plan;
            (
                generation.sockets.clone(),
                plan.sticky_key.clone(),
                plan.runtime.upgrade_timeout,
            )
        };
        // From the hand-over on, the admin socket is the new master's to
        // answer (what queues there waits for it): a scrape of this master
        // would miss what the new workers count, and so show less than one
        // of the new master just before it.
        self.admin_stop.cancel();
        let metrics = self.metrics.clone();
        let handing = upgrade::Handing {
            listeners: &sockets,
            admin: self.admin.as_ref(),
            sticky_key,
            metrics: &metrics,
        };
        let successor = upgrade::start_successor(&self.exe, &self.path, handing, ready_timeout);
        match self.notify.pinging(successor).await {
            Ok(successor) => {
                tracing::info!(
                    new_master = successor.pid,
                    "the new master is serving; draining and exiting"
                );
                self.notify.handed_over(successor.pid);
                Some(successor)
            }
            Err(e) => {
                tracing::error!(error = %e, "binary upgrade failed; this master keeps serving");
                self.admin_stop = CancellationToken::new();
                if let Some(socket) = &self.admin {
                    if let Err(e) =
                        serve_admin(socket, self.admin_backend.clone(), self.admin_stop.clone())
                    {
                        tracing::error!(error = %e, "cannot serve the admin endpoint again");
                    }
                }
                None
            }
        }
    }

    async fn stop(mut self, fast: bool) -> Result<(), RunError> {
        self.notify.stopping(fast);
        // Their requests are answered that the master stops.
        self.pending.clear();
        self.ctx.stopping.cancel();
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
        sockets::release(&self.generation.borrow().sockets);
        self.generation
            .send_modify(|g| *g = Arc::new(g.without_sockets()));
        for slot in self.slots.drain(..) {
            // A supervisor that panicked has nothing left to stop.
            let _ = slot.task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// The config file and the certificate files the current generation
    /// was read from.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(generation::tls_files(&self.generation.borrow().plan));
        files
    }

    /// Serves the current generation with the servers DNS now gives its
    /// names, when they changed (the same generation, to workers a reload).
    fn rediscover(&mut self) {
        let current = self.generation.borrow().clone();
        let mut plan = Plan::clone(&current.plan);
        discovery::resolve(&mut plan, &self.discovery.names);
        if plan == *current.plan {
            return;
        }
        discovery::log_changes(&current.plan, &plan);
        self.republish(&current, plan);
    }

    /// Makes a new session-ticket key, keeping the current one to open the
    /// tickets it sealed, and gives it to every worker.
    fn rotate_ticket_keys(&mut self) {
        let current = self.generation.borrow().clone();
        let mut plan = Plan::clone(&current.plan);
        match plan.ticket_keys.as_ref().map(TicketKeys::rotated) {
            Some(Ok(keys)) => plan.ticket_keys = Some(keys),
            Some(Err(_)) => {
                return tracing::error!(
                    "no random source for a new session-ticket key; the current one stays"
                );
            }
            None => return,
        }
        tracing::info!("session-ticket key rotated");
        self.republish(&current, plan);
    }

    /// Serves `current` on `plan` (new servers or keys, the same file): the
    /// same generation, to workers a reload.
    fn republish(&mut self, current: &Generation, plan: Plan) {
        let next = Arc::new(current.republished(plan));
        self.generation.send_replace(next.clone());
        self.checker.update(&next.upstreams);
        self.health
            .send_replace(Arc::new(health::health_of(&next.upstreams)));
    }

    /// A reload's new `admin.listen`: serves on the new socket and closes
    /// the old one (requests it accepted are still answered, this
    /// reload's own among them), so that its address refuses connections.
    fn move_admin(&mut self, to: AdminMove) {
        self.admin_stop.cancel();
        self.admin_stop = CancellationToken::new();
        self.admin = match to {
            AdminMove::Off => None,
            AdminMove::To(socket) => {
                if let Err(e) =
                    serve_admin(&socket, self.admin_backend.clone(), self.admin_stop.clone())
                {
                    tracing::error!(error = %e, "cannot serve the admin endpoint on its new address");
                }
                Some(socket)
            }
        };
        let addr = self.admin.as_ref().and_then(|s| s.local_addr().ok());
        self.notify.set_admin(addr);
        if addr.is_none() {
            tracing::info!("admin endpoint closed");
        }
    }
}

/// Every listener's sockets, one per slot, taking the inherited ones
/// where they fit.
fn bind_listeners(
    plan: &Plan,
    slots: usize,
    mut inherited: Inherited,
) -> Result<Vec<sockets::ListenerSockets>, RunError> {
    let listeners = sockets::bind_all(plan, slots, &mut inherited)?;
    for l in &listeners {
        tracing::info!(listener = %l.name, addr = %l.bound, sockets = l.slots.len(), "listening");
    }
    log_slot_retirement();
    Ok(listeners)
}

fn no_random_source() -> std::io::Error {
    std::io::Error::other("no random source for the sticky key")
}

/// The admin socket: the one handed over by a previous master when its
/// address is still the configured one, else a new one.
fn bind_admin(
    plan: &Plan,
    inherited: Option<std::net::TcpListener>,
) -> Result<Option<std::net::TcpListener>, RunError> {
    let Some(admin) = &plan.admin else {
        return Ok(None);
    };
    if let Some(socket) =
        inherited.filter(|s| s.local_addr().is_ok_and(|l| same_addr(l, admin.listen)))
    {
        return Ok(Some(socket));
    }
    std::net::TcpListener::bind(admin.listen)
        .map(Some)
        .map_err(|source| RunError::Admin {
            addr: admin.listen,
            source,
        })
}

/// Serves the admin endpoint on (a copy of) `socket` until `stop`.
fn serve_admin(
    socket: &std::net::TcpListener,
    backend: Arc<AdminBackend>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let socket = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpListener::from_std(socket)?;
    tracing::info!(addr = %socket.local_addr()?, "admin endpoint listening");
    tokio::spawn(crate::admin::serve(socket, backend, stop));
    Ok(())
}

async fn changed(watch: &mut Option<filewatch::Watch>) {
    match watch {
        Some(watch) => watch.changed().await,
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
            "net.ipv4.tcp_migrate_req is on: the master relays what queues on a retired worker slot's socket \
             to the other workers, and the kernel moves what arrives as it closes"
        ),
        _ => tracing::info!(
            "net.ipv4.tcp_migrate_req is off: the master relays what queues on a retired worker slot's socket \
             to the other workers before closing it"
        ),
    }
}
