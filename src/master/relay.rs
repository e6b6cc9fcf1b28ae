//! Relaying what queues on a slot that has no serving worker.
//!
//! The kernel spreads a port's new connections over every slot's socket,
//! whether or not a worker accepts on it. A slot without a serving worker
//! (its first worker starting, a replacement on its way, a crash loop's
//! backoff, a retirement by a reload that lowers `runtime.workers`) would
//! leave its share of clients waiting. So the master, which holds every
//! slot's sockets, covers such a slot: a [`Relay`] accepts on its sockets
//! and hands each connection to a live worker, in turn, through that
//! worker's [`Inbox`]; the slot's supervisor sends it over the control
//! channel, the descriptor as `SCM_RIGHTS`. A crash loop costs the port
//! capacity, never a stalled client.
//!
//! A retired slot's sockets get no new connection (the master steers them
//! away, see `steering`), and its relay keeps them, whatever later reloads
//! do with the slot's number, until its worker is gone and handshakes begun
//! there before the retirement have had [`HANDSHAKES`]; then it takes what
//! is queued, and closes each socket as soon as a pass finds it empty. So
//! shrinking resets nothing, also where the kernel does not move a closing
//! socket's queue (`net.ipv4.tcp_migrate_req`).
//!
//! It must not block on one worker: each inbox is bounded, a full one is
//! passed over, and a connection that finds all full takes room in any.
//! It must not take a connection that no worker can serve: it accepts only
//! while some inbox is open, and lets go of what it holds when the master
//! stops.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::generation::Generation;
use super::steering::PortSocket;

/// How many relayed connections may wait in the master for one worker. A
/// worker this far behind is passed over: the others take the next ones.
const INBOX: usize = 256;

/// After an accept error that is not the client's (out of descriptors), the
/// pause before the next try, so that the relay does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// How long after its retirement a slot's sockets are still accepted on as
/// before, for handshakes begun there before new connections were steered
/// away: one whose SYN-ACK was lost once is retransmitted after a second
/// (RFC 6298's initial timeout), and its client answers a round trip later.
const HANDSHAKES: Duration = Duration::from_secs(2);

/// The most passes of the last sweep over a retired slot's sockets. Each
/// closes the sockets it finds empty; with new connections steered away,
/// the second finds every one so. More are for where steering failed and
/// connections keep arriving: the last closes whatever is left.
const SWEEPS: usize = 4;

/// A slot's sockets, by listener name.
pub type Sockets = Vec<(String, Arc<PortSocket>)>;

/// A client connection accepted on `listener`'s socket of a covered slot.
#[derive(Debug)]
pub struct Relayed {
    pub listener: String,
    pub stream: std::net::TcpStream,
}

/// The inbox of every serving worker, each under an id of its own (not its
/// slot's number: a retired slot's worker and the one of a slot that took
/// its number may both have had one).
#[derive(Debug)]
pub struct Inboxes {
    open: watch::Sender<Vec<(u64, mpsc::Sender<Relayed>)>>,
    /// The next inbox's id.
    next_id: AtomicU64,
    /// How many connections each inbox holds at most.
    room: usize,
    /// Woken whenever a supervisor takes a connection out of its inbox:
    /// a delivery waiting for room may find it there.
    taken: Notify,
    /// Where the next offer starts, so connections go round the workers.
    turn: AtomicUsize,
    /// The master is stopping: nothing relayed will be served.
    closed: CancellationToken,
}

impl Inboxes {
    /// `closed` is cancelled when the master stops.
    pub fn new(closed: CancellationToken) -> Self {
        Self::with_room(closed, INBOX)
    }

    fn with_room(closed: CancellationToken, room: usize) -> Self {
        Self {
            open: watch::Sender::new(Vec::new()),
            next_id: AtomicU64::new(0),
            room,
            taken: Notify::new(),
            turn: AtomicUsize::new(0),
            closed,
        }
    }

    /// Opens an inbox for a worker that serves and takes relayed connections.
    pub fn open(self: &Arc<Self>) -> Inbox {
        let (tx, rx) = mpsc::channel(self.room);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.send_modify(|open| open.push((id, tx)));
        Inbox {
            id,
            rx,
            inboxes: self.clone(),
        }
    }

    /// Delivers `conn` to some open inbox, waiting for one if need be.
    pub fn redeliver(self: &Arc<Self>, conn: Relayed) {
        let Err(conn) = self.offer(conn) else {
            return;
        };
        // Called from drops too, which a runtime shutting down runs last;
        // nothing would serve the connection then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inboxes = self.clone();
            runtime.spawn(async move { inboxes.deliver(conn).await });
        }
    }

    /// Puts `conn` in the next open inbox with room, if there is one.
    fn offer(&self, mut conn: Relayed) -> Result<(), Relayed> {
        let open = self.open.borrow();
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        let n = open.len();
        for (_, tx) in open.iter().cycle().skip(first % n.max(1)).take(n) {
            match tx.try_send(conn) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(c) | TrySendError::Closed(c)) => conn = c,
            }
        }
        Err(conn)
    }

    /// Delivers `conn`, waiting while every inbox is full or none is open
    /// (for room in any of them: one whose worker hangs holds up nothing);
    /// drops it (the client sees it close) if the master stops first.
    async fn deliver(&self, mut conn: Relayed) {
        let mut open = self.open.subscribe();
        loop {
            // Registered before the offer, so that room made between the
            // offer and the wait is not missed.
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            open.mark_unchanged();
            conn = match self.offer(conn) {
                Ok(()) => return,
                Err(conn) => conn,
            };
            tokio::select! {
                () = self.closed.cancelled() => return,
                Ok(()) = open.changed() => {}
                () = taken => {}
            }
        }
    }

    /// Resolves once some inbox is open.
    async fn any_open(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`: this never fails.
        let _ = open.wait_for(|open| !open.is_empty()).await;
    }
}

/// One serving worker's relayed connections, for its supervisor to send.
/// Dropping it (the worker drains, dies, or is killed) closes it, and what
/// is still in it goes to the other workers.
#[derive(Debug)]
pub struct Inbox {
    id: u64,
    rx: mpsc::Receiver<Relayed>,
    inboxes: Arc<Inboxes>,
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Relayed> {
        let conn = self.rx.recv().await;
        self.inboxes.taken.notify_waiters();
        conn
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let id = self.id;
        self.inboxes
            .open
            .send_modify(|open| open.retain(|(i, _)| *i != id));
        self.rx.close();
        while let Ok(conn) = self.rx.try_recv() {
            self.inboxes.redeliver(conn);
        }
    }
}

/// Covers one slot: accepts on its sockets and relays each connection,
/// until dropped (its worker serves again, or the master stops) or
/// [`finish`](Relay::finish)ed.
#[derive(Debug)]
pub struct Relay {
    stop: CancellationToken,
    sweep: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Covers `slot` on its sockets in the current generation, following
    /// reloads until `retired` is cancelled. From then on it keeps the
    /// sockets it has, or `held` (what the slot's worker was sent) if it
    /// starts retired: those of a retired slot are what it must empty, and
    /// a later reload may give the slot's number to a new slot with sockets
    /// of its own.
    pub fn start(
        slot: usize,
        generation: watch::Receiver<Arc<Generation>>,
        held: Sockets,
        retired: CancellationToken,
        inboxes: Arc<Inboxes>,
    ) -> Self {
        // Borrowed before the check: the master retires a slot before it
        // publishes the generation without it, so a generation borrowed
        // while the slot is not retired has the slot's current sockets.
        let current = slot_sockets(&generation.borrow(), slot);
        let sockets = if current.is_empty() || retired.is_cancelled() {
            held
        } else {
            current
        };
        let (stop, sweep) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(run(
            slot,
            Following {
                generation,
                retired,
            },
            sockets,
            inboxes,
            stop.clone(),
            sweep.clone(),
        ));
        Self {
            stop,
            sweep,
            task: Some(task),
        }
    }

    /// The slot is retired and its worker gone, so only this relay still
    /// holds its sockets: accepts what is queued on them once more, relays
    /// it, and lets the sockets close.
    pub async fn finish(mut self) {
        self.sweep.cancel();
        if let Some(task) = self.task.take() {
            // A relay that panicked has let go of its sockets already.
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A connection being delivered still goes; nothing more is accepted.
        self.stop.cancel();
    }
}

/// Slot `slot`'s sockets in `generation`; none if it has no such slot.
pub fn slot_sockets(generation: &Generation, slot: usize) -> Sockets {
    generation
        .slot_sockets(slot)
        .map(|(name, socket, _)| (name.to_owned(), socket.clone()))
        .collect()
}

/// The generations a relay follows, until its slot is retired.
struct Following {
    generation: watch::Receiver<Arc<Generation>>,
    retired: CancellationToken,
}

async fn run(
    slot: usize,
    mut following: Following,
    mut sockets: Sockets,
    inboxes: Arc<Inboxes>,
    stop: CancellationToken,
    sweep: CancellationToken,
) {
    let mut follows = !following.retired.is_cancelled();
    let mut retired_at = None;
    loop {
        let listening = listen(slot, &sockets);
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = sweep.cancelled() => {
                    let retired_at = retired_at.unwrap_or_else(Instant::now);
                    return finish(sockets, listening, &inboxes, retired_at).await;
                }
                () = following.retired.cancelled(), if retired_at.is_none() => {
                    retired_at = Some(Instant::now());
                    follows = false;
                    continue;
                }
                changed = following.generation.changed(), if follows => match changed {
                    Ok(()) => break,
                    Err(_) => {
                        follows = false;
                        continue;
                    }
                },
                accepted = accept(&listening, &inboxes) => accepted,
            };
            if let Some(conn) = accepted {
                // Not cancelled by a stop: an accepted connection is served.
                inboxes.deliver(conn).await;
            }
        }
        let current = slot_sockets(&following.generation.borrow_and_update(), slot);
        // Checked after the borrow, as in `Relay::start`.
        if following.retired.is_cancelled() {
            follows = false;
        } else if !current.is_empty() {
            sockets = current;
        }
    }
}

/// Registers a copy of each socket with this runtime, to accept on.
fn listen(slot: usize, sockets: &Sockets) -> Vec<(String, TcpListener)> {
    sockets
        .iter()
        .filter_map(|(name, socket)| {
            let copy = socket
                .try_clone()
                .and_then(TcpListener::from_std)
                .inspect_err(|e| tracing::warn!(slot, listener = %name, error = %e, "cannot cover this socket"))
                .ok()?;
            Some((name.clone(), copy))
        })
        .collect()
}

/// The next connection on any of `listening`, once some worker can take
/// it; `None` after an accept error.
async fn accept(listening: &[(String, TcpListener)], inboxes: &Inboxes) -> Option<Relayed> {
    inboxes.any_open().await;
    let accepted = poll_fn(|cx| {
        for (name, listener) in listening {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready(accepted.map(|(stream, _)| (name, stream)));
            }
        }
        Poll::Pending
    })
    .await;
    match accepted.and_then(|(name, stream)| Ok((name, stream.into_std()?))) {
        Ok((name, stream)) => Some(Relayed {
            listener: name.clone(),
            stream,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "accept failed on a covered slot's socket");
            tokio::time::sleep(ACCEPT_PAUSE).await;
            None
        }
    }
}

/// The last of a retired slot, whose worker is gone: relays as before
/// until [`HANDSHAKES`] after `retired_at`, then what is queued on each
/// socket until a pass finds it empty, closing each as soon as it is.
async fn finish(
    sockets: Sockets,
    listening: Vec<(String, TcpListener)>,
    inboxes: &Inboxes,
    retired_at: Instant,
) {
    let until = retired_at + HANDSHAKES;
    loop {
        let accepted = tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            accepted = accept(&listening, inboxes) => accepted,
        };
        if let Some(conn) = accepted {
            inboxes.deliver(conn).await;
        }
    }
    // The copies registered to accept on would keep the sockets open.
    drop(listening);
    let mut open = sockets;
    for pass in 1..=SWEEPS {
        let mut left = Sockets::new();
        for (name, socket) in open {
            let took = take_queued(&name, &socket, inboxes).await;
            if took > 0 && pass < SWEEPS {
                left.push((name, socket));
            }
            // Otherwise dropped here, and closed: only this relay still
            // held it.
        }
        if left.is_empty() {
            return;
        }
        open = left;
    }
}

/// Accepts and relays what `socket` has queued now; how many.
async fn take_queued(name: &str, socket: &PortSocket, inboxes: &Inboxes) -> usize {
    if let Err(e) = socket.set_nonblocking(true) {
        tracing::warn!(listener = %name, error = %e, "cannot empty a retired socket");
        return 0;
    }
    let mut took = 0;
    loop {
        match socket.accept() {
            Ok((stream, _)) => {
                took += 1;
                let listener = name.to_owned();
                inboxes.deliver(Relayed { listener, stream }).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return took,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "cannot empty a retired socket");
                return took;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener as StdListener;

    use super::super::sockets::{ListenerSockets, bind};
    use super::super::steering::Port;
    use super::*;

    /// A connected client socket, as a relay would have accepted it.
    fn accepted(on: &StdListener, listener: &str) -> (Relayed, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(on.local_addr().unwrap()).unwrap();
        let (stream, _) = on.accept().unwrap();
        let relayed = Relayed {
            listener: listener.to_owned(),
            stream,
        };
        (relayed, client)
    }

    #[tokio::test]
    async fn connections_go_round_the_open_inboxes() {
        let on = StdListener::bind("127.0.0.1:0").unwrap();
        let inboxes = Arc::new(Inboxes::new(CancellationToken::new()));
        let (mut a, mut b) = (inboxes.open(), inboxes.open());
        let mut clients = Vec::new();
        for i in 0..4 {
            let (relayed, client) = accepted(&on, &format!("l{i}"));
            inboxes.redeliver(relayed);
            clients.push(client);
        }
        let names = |inbox: &mut Inbox| {
            std::iter::from_fn(|| inbox.rx.try_recv().ok())
                .map(|r| r.listener)
                .collect::<Vec<_>>()
        };
        let (to_a, to_b) = (names(&mut a), names(&mut b));
        assert_eq!((to_a.len(), to_b.len()), (2, 2), "{to_a:?} {to_b:?}");
    }

    #[tokio::test]
    async fn what_a_closing_inbox_holds_goes_to_the_others() {
        let on = StdListener::bind("127.0.0.1:0").unwrap();
        let inboxes = Arc::new(Inboxes::new(CancellationToken::new()));
        let closing = inboxes.open();
        let (relayed, _client) = accepted(&on, "public");
        inboxes.redeliver(relayed);
        let mut open = inboxes.open();
        drop(closing);
        let moved = open.rx.try_recv().expect("the connection moved");
        assert_eq!(moved.listener, "public");
        assert!(inboxes.open.borrow().iter().all(|(id, _)| *id == open.id));
    }

    #[tokio::test]
    async fn a_relayed_connection_waits_for_an_inbox_and_a_stop_lets_it_go() {
        let on = StdListener::bind("127.0.0.1:0").unwrap();
        let closed = CancellationToken::new();
        let inboxes = Arc::new(Inboxes::new(closed.clone()));
        let (relayed, _client) = accepted(&on, "public");
        // No worker serves: it waits, then goes to the first that does.
        inboxes.redeliver(relayed);
        tokio::task::yield_now().await;
        let mut late = inboxes.open();
        let got = tokio::time::timeout(Duration::from_secs(5), late.recv()).await;
        assert_eq!(got.unwrap().unwrap().listener, "public");
        // Once the master stops, nothing waits.
        drop(late);
        let (relayed, _client) = accepted(&on, "public");
        let delivering = tokio::spawn({
            let inboxes = inboxes.clone();
            async move { inboxes.deliver(relayed).await }
        });
        closed.cancel();
        tokio::time::timeout(Duration::from_secs(5), delivering)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_relayed_connection_takes_room_in_whichever_inbox_frees_first() {
        let on = StdListener::bind("127.0.0.1:0").unwrap();
        let inboxes = Arc::new(Inboxes::with_room(CancellationToken::new(), 1));
        // The first inbox's worker hangs; the second's takes its next one.
        let (_hung, mut live) = (inboxes.open(), inboxes.open());
        let mut clients = Vec::new();
        for i in 0..2 {
            let (relayed, client) = accepted(&on, &format!("filling {i}"));
            inboxes.redeliver(relayed);
            clients.push(client);
        }
        let (relayed, _client) = accepted(&on, "waiting");
        let delivering = tokio::spawn({
            let inboxes = inboxes.clone();
            async move { inboxes.deliver(relayed).await }
        });
        tokio::task::yield_now().await;
        assert!(!delivering.is_finished(), "both inboxes were full");
        assert!(live.recv().await.is_some());
        tokio::time::timeout(Duration::from_secs(5), delivering)
            .await
            .expect("the delivery waited on the hung worker's inbox")
            .unwrap();
        assert_eq!(live.rx.try_recv().unwrap().listener, "waiting");
    }

    /// Generation `number`, whose listener `public` has `slots`.
    fn generation(number: u64, port: &Arc<Port>, slots: Vec<Arc<PortSocket>>) -> Arc<Generation> {
        let text = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
                    [[routes]]\nupstream = \"app\"\n\n\
                    [[upstreams]]\nname = \"app\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n";
        let path = std::path::PathBuf::from("corral.toml");
        let plan = crate::config::from_str(&path, text).unwrap();
        let bound = slots[0].local_addr().unwrap();
        let sockets = vec![ListenerSockets {
            name: "public".to_owned(),
            addr: bound,
            bound,
            backlog: 16,
            slots,
            port: port.clone(),
        }];
        let mut generation = Generation::first(path, text.to_owned(), plan, sockets);
        generation.number = number;
        Arc::new(generation)
    }

    #[tokio::test]
    async fn a_retired_relay_keeps_its_sockets_when_a_reload_gives_its_slot_number_back() {
        let inboxes = Arc::new(Inboxes::new(CancellationToken::new()));
        let mut serving = inboxes.open();
        let port = Port::new();
        // Each on a port of its own: only the relay accepts there.
        let socket = || Arc::new(port.join(bind("127.0.0.1:0".parse().unwrap(), 16).unwrap()));
        let (first, old) = (socket(), socket());
        let (publish, generations) =
            watch::channel(generation(1, &port, vec![first.clone(), old.clone()]));
        let retired = CancellationToken::new();
        // Slot 1 backs off, covered; then a reload retires it and the next
        // adds a slot 1 again, with a new socket.
        let _relay = Relay::start(
            1,
            generations,
            Sockets::new(),
            retired.clone(),
            inboxes.clone(),
        );
        // It is accepting on the old socket when the slot is retired.
        tokio::task::yield_now().await;
        retired.cancel();
        publish.send_replace(generation(2, &port, vec![first.clone()]));
        publish.send_replace(generation(3, &port, vec![first.clone(), socket()]));
        let _client = std::net::TcpStream::connect(old.local_addr().unwrap()).unwrap();
        let relayed = tokio::time::timeout(Duration::from_secs(5), serving.recv()).await;
        assert!(
            matches!(relayed, Ok(Some(_))),
            "what queued on the retired socket was not relayed"
        );
    }
}
