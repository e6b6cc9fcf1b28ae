//! A raw-TCP upstream that answers each request with exactly the bytes a
//! test scripted, and records what happened on each connection it accepted:
//! which requests came on it (head as sent, framing, body, trailers) and
//! when it closed. Tests of corral's upstream client read from it whether a
//! connection was reused and what a lying upstream made of the client's
//! answer; differential tests read from it what reached an upstream.
//!
//! It parses requests strictly (httparse, one framing), but writes whatever
//! it is told: framing lies are the point.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::patience::PATIENCE;
use super::raw_requests::{Arrived, read_body, read_head};
use super::recording::echo_tunnel;

/// What happened at the upstream, in order.
#[derive(Debug, Clone)]
pub enum Event {
    Accepted {
        conn: usize,
        peer: SocketAddr,
    },
    Request(Arrived),
    /// The connection ended: the peer closed it, or the script did.
    Closed {
        conn: usize,
    },
}

/// What the upstream does once its answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Reads the next request on the same connection.
    Next,
    /// Closes the connection.
    Close,
    /// Neither reads nor closes: a server that stopped listening.
    Hold,
    /// Echoes every byte that comes after, as a switched protocol would.
    Echo,
}

/// The answer to one request: `writes`, each written (and sent, the
/// socket has `TCP_NODELAY`) on its own, then `then`.
#[derive(Debug, Clone)]
pub struct Wire {
    pub writes: Vec<Vec<u8>>,
    pub then: Then,
    /// Answer as soon as the head is read, without reading the body (and
    /// then hold the connection: its body is never read).
    pub before_body: bool,
}

impl Wire {
    /// `bytes` in one write, then the next request.
    pub fn bytes(bytes: impl AsRef<[u8]>) -> Self {
        Self {
            writes: vec![bytes.as_ref().to_vec()],
            then: Then::Next,
            before_body: false,
        }
    }

    /// `bytes`, one write per byte.
    pub fn byte_at_a_time(bytes: impl AsRef<[u8]>) -> Self {
        Self {
            writes: bytes.as_ref().iter().map(|b| vec![*b]).collect(),
            ..Self::bytes(b"")
        }
    }

    /// Written once the head is read, before any of the body.
    pub fn before_body(mut self) -> Self {
        self.before_body = true;
        self
    }

    pub fn then(mut self, then: Then) -> Self {
        self.then = then;
        self
    }

    /// A well-framed `200` whose body is the request's target.
    pub fn target(arrived: &Arrived) -> Self {
        let body = &arrived.target;
        Self::bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

type ScriptFn = Arc<dyn Fn(&Arrived) -> Wire + Send + Sync>;

/// A running scripted upstream; stops (and drops every connection) when
/// dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    events: watch::Receiver<Vec<Event>>,
    /// A second handle on each open connection's socket, by connection.
    sockets: Arc<Mutex<HashMap<usize, std::net::TcpStream>>>,
    /// What arrived on [`Then::Echo`] connections after their answer.
    pub tunnel: Arc<Mutex<Vec<u8>>>,
    stop: CancellationToken,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream answering each request with what `script` says. The
/// script is asked once a head is in (its body still empty), so that it may
/// answer before the body, and unless it did, again once the body is in.
pub async fn scripted(script: impl Fn(&Arrived) -> Wire + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (log, events) = watch::channel(Vec::new());
    let shared = Shared {
        script: Arc::new(script),
        log,
        sockets: Arc::default(),
        tunnel: Arc::default(),
        stop: CancellationToken::new(),
    };
    let upstream = Scripted {
        addr,
        events,
        sockets: shared.sockets.clone(),
        tunnel: shared.tunnel.clone(),
        stop: shared.stop.clone(),
    };
    tokio::spawn(async move {
        for conn in 0.. {
            let (stream, peer) = tokio::select! {
                () = shared.stop.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            stream.set_nodelay(true).unwrap();
            let stream = stream.into_std().unwrap();
            let second = stream.try_clone().unwrap();
            shared.sockets.lock().unwrap().insert(conn, second);
            let stream = TcpStream::from_std(stream).unwrap();
            shared.note(Event::Accepted { conn, peer });
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shared.stop.cancelled() => {}
                    () = serve(conn, stream, &shared) => {}
                }
                // The second handle would keep the socket open.
                shared.sockets.lock().unwrap().remove(&conn);
                shared.note(Event::Closed { conn });
            });
        }
    });
    upstream
}

#[derive(Clone)]
struct Shared {
    script: ScriptFn,
    log: watch::Sender<Vec<Event>>,
    sockets: Arc<Mutex<HashMap<usize, std::net::TcpStream>>>,
    tunnel: Arc<Mutex<Vec<u8>>>,
    stop: CancellationToken,
}

impl Shared {
    fn note(&self, event: Event) {
        self.log.send_modify(|events| events.push(event));
    }
}

async fn serve(conn: usize, mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    loop {
        let Some(mut arrived) = read_head(conn, &mut stream, &mut buf).await else {
            return;
        };
        let early = (shared.script)(&arrived);
        let reply = if early.before_body {
            shared.note(Event::Request(arrived));
            early
        } else {
            if read_body(&mut arrived, &mut stream, &mut buf)
                .await
                .is_none()
            {
                return;
            }
            let reply = (shared.script)(&arrived);
            shared.note(Event::Request(arrived));
            reply
        };
        for write in &reply.writes {
            if stream.write_all(write).await.is_err() {
                return;
            }
        }
        match (reply.before_body, reply.then) {
            (true, _) | (false, Then::Hold) => return shared.stop.cancelled().await,
            (false, Then::Next) => {}
            (false, Then::Close) => return,
            (false, Then::Echo) => return echo_tunnel(stream, buf, shared.tunnel.clone()).await,
        }
    }
}

impl Scripted {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.borrow().clone()
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Arrived> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Waits until `find` finds something in what happened.
    pub async fn wait<T>(&self, what: &str, mut find: impl FnMut(&[Event]) -> Option<T>) -> T {
        let mut events = self.events.clone();
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(t) = find(&events.borrow_and_update()) {
                    return t;
                }
                events.changed().await.unwrap();
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "the upstream never saw {what}: {:#?}",
                *self.events.borrow()
            )
        })
    }

    /// The request for `target`, once it came.
    pub async fn request(&self, target: &str) -> Arrived {
        self.wait(&format!("a request for {target}"), |events| {
            events.iter().find_map(|e| match e {
                Event::Request(r) if r.target == target => Some(r.clone()),
                _ => None,
            })
        })
        .await
    }

    /// The connection the request for `target` came on, once it came.
    pub async fn conn_of(&self, target: &str) -> usize {
        self.request(target).await.conn
    }

    /// Returns once connection `conn` has closed.
    pub async fn closed(&self, conn: usize) {
        self.wait(&format!("connection {conn} close"), |events| {
            events
                .iter()
                .any(|e| matches!(e, Event::Closed { conn: c } if *c == conn))
                .then_some(())
        })
        .await;
    }

    /// Whether connection `conn` has closed by now.
    pub fn is_closed(&self, conn: usize) -> bool {
        self.events()
            .iter()
            .any(|e| matches!(e, Event::Closed { conn: c } if *c == conn))
    }

    /// The client address of connection `conn`: corral's end of it.
    pub fn peer(&self, conn: usize) -> SocketAddr {
        self.events()
            .iter()
            .find_map(|e| match e {
                Event::Accepted { conn: c, peer } if *c == conn => Some(*peer),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no connection {conn}"))
    }

    /// Writes `bytes` on connection `conn` now, whatever it is doing: an
    /// upstream that sends what nobody asked for.
    pub fn inject(&self, conn: usize, bytes: &[u8]) {
        let mut sockets = self.sockets.lock().unwrap();
        let socket = sockets.get_mut(&conn).expect("the connection is closed");
        // Small enough for an empty send buffer: one call writes it all.
        assert_eq!(socket.write(bytes).unwrap(), bytes.len());
    }

    /// Closes connection `conn` at once: its FIN is on its way before this
    /// returns.
    pub fn hang_up(&self, conn: usize) {
        if let Some(socket) = self.sockets.lock().unwrap().get(&conn) {
            socket.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }
}
