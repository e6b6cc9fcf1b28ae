//! Listening sockets, owned by the master for as long as it lives.
//!
//! For every listener the master binds one `SO_REUSEPORT` socket per worker
//! slot and hands slot i's sockets to worker i. Because the master keeps its
//! own descriptor for each, a worker that dies never closes its socket:
//! connections the kernel queued on it are not reset, and the master relays
//! them to the other workers until the replacement serves (`relay`). A
//! binary upgrade passes the same sockets to the new master. Each
//! address's sockets are one `steering::Port`, which steers new connections
//! away from those of retired slots ([`steer`]).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use super::steering::{Port, PortSocket};
use crate::plan::{ListenerConfig, Plan};

/// Binds a non-blocking TCP listener with `SO_REUSEPORT`, so that several
/// sockets (one per worker slot) can share `addr` and the kernel spreads new
/// connections across them.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY on Linux, saving a call per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// One listener's sockets, one per worker slot.
#[derive(Debug)]
pub struct ListenerSockets {
    pub name: String,
    /// The address in the config.
    pub addr: SocketAddr,
    /// The address actually bound (differs from `addr` when its port is 0).
    pub bound: SocketAddr,
    pub backlog: u32,
    /// Shared, not duplicated: whoever holds one (a generation, a slot
    /// supervisor relaying a retired slot's queue) keeps it open.
    pub slots: Vec<Arc<PortSocket>>,
    /// The group these sockets are in, with any retired ones still open.
    pub port: Arc<Port>,
}

impl ListenerSockets {
    /// Whether these sockets can serve `listener`: same address, or, for
    /// port 0 (any free port), same name too.
    pub fn serves(&self, listener: &ListenerConfig) -> bool {
        self.addr == listener.addr && (listener.addr.port() != 0 || self.name == listener.name)
    }
}

/// Sockets received from the previous master in a binary upgrade, keyed by
/// (listener name, configured address, slot).
pub type Inherited = HashMap<(String, SocketAddr, usize), TcpListener>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (listener `{name}`): {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

impl BindError {
    /// Wraps an error of listener `l`'s sockets.
    fn of(l: &ListenerConfig) -> impl Fn(io::Error) -> Self + '_ {
        move |source| Self {
            name: l.name.clone(),
            addr: l.addr,
            source,
        }
    }
}

/// Binds (or takes over from `inherited`) `slots` sockets for every listener.
pub fn bind_all(
    config: &Plan,
    slots: usize,
    inherited: &mut Inherited,
) -> Result<Vec<ListenerSockets>, BindError> {
    config
        .listeners
        .iter()
        .map(|l| {
            let port = Port::new();
            bind_listener(l, slots, &port, |slot| {
                let socket = inherited.remove(&(l.name.clone(), l.addr, slot))?;
                Some(Arc::new(port.join(socket)))
            })
        })
        .collect()
}

/// The sockets for a reloaded config: a listener whose address is unchanged
/// keeps its sockets (whatever its name now), so nothing queued on them is
/// lost; new addresses get new sockets; extra slots get new sockets on the
/// same port. Sockets no longer wanted close when the last holder lets go.
pub fn rebind(
    previous: &[ListenerSockets],
    config: &Plan,
    slots: usize,
) -> Result<Vec<ListenerSockets>, BindError> {
    config
        .listeners
        .iter()
        .map(|l| {
            let old = previous.iter().find(|p| p.serves(l));
            let port = old.map_or_else(Port::new, |o| o.port.clone());
            let sockets = bind_listener(l, slots, &port, |slot| old?.slots.get(slot).cloned())?;
            if old.is_some_and(|o| o.backlog != l.backlog) {
                // listen(2) on a listening socket just resizes its queue.
                for s in &sockets.slots {
                    socket2::SockRef::from(&**s)
                        .listen(i32::try_from(l.backlog).unwrap_or(i32::MAX))
                        .map_err(BindError::of(l))?;
                }
            }
            Ok(sockets)
        })
        .collect()
}

/// `l`'s sockets for `slots`: those `reuse` gives, and new ones, which
/// join `port` as they start listening, in slot order.
fn bind_listener(
    l: &ListenerConfig,
    slots: usize,
    port: &Arc<Port>,
    mut reuse: impl FnMut(usize) -> Option<Arc<PortSocket>>,
) -> Result<ListenerSockets, BindError> {
    let error = BindError::of(l);
    let mut sockets = Vec::with_capacity(slots);
    let mut bound = l.addr;
    for slot in 0..slots {
        let socket = match reuse(slot) {
            Some(socket) => socket,
            // Port 0 asks the kernel for a free port; every further slot
            // must join that same port.
            None => Arc::new(port.join(bind(bound, l.backlog).map_err(&error)?)),
        };
        bound = socket.local_addr().map_err(&error)?;
        sockets.push(socket);
    }
    Ok(ListenerSockets {
        name: l.name.clone(),
        addr: l.addr,
        bound,
        backlog: l.backlog,
        slots: sockets,
        port: port.clone(),
    })
}

/// Steers each port's new connections to the sockets of `listeners` (the
/// current generation's): those of retired slots, still open while their
/// relays empty them, get none.
pub fn steer(listeners: &[ListenerSockets]) {
    for l in listeners {
        l.port.serve(l.slots.iter().map(|s| &**s));
    }
}

/// Lets go of the steering of `listeners`' ports (the master stops or hands
/// over): the kernel's hash picks again.
pub fn release(listeners: &[ListenerSockets]) {
    for l in listeners {
        l.port.release();
    }
}

/// What the kernel does with connections queued on a socket that closes:
/// with `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+) it moves them to another
/// socket of the same port; otherwise it resets them.
pub fn migrate_req_enabled() -> Option<bool> {
    let value = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(value.trim() == "1")
}
