//! Which of a port's listening sockets the kernel gives new connections.
//!
//! The `SO_REUSEPORT` sockets listening on one address form a group in the
//! kernel: an array in which a socket takes the next place when it starts
//! listening, and leaves its place to the array's last when it closes. The
//! kernel picks the socket of each new connection by a hash of its
//! addresses, unless a classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) returns an index; one out of range falls
//! back to the hash.
//!
//! A [`Port`] mirrors that array for the sockets this master holds, each a
//! [`PortSocket`], and knows which of them serve: those of the current
//! generation's slots. While all do, nothing is steered. While some do not
//! (a retired slot's, which its relay empties before they close), the
//! port's program picks uniformly among the serving ones, so from the
//! reload on a retired socket gets no new connection: only what was queued
//! there, and handshakes already under way. When a socket closes and the
//! array's last takes its place, a program right for both arrays is
//! attached first, and the exact one once it has closed.
//!
//! The mirror is exact for sockets this master binds and closes: a retired
//! slot's close when its relay, the last holder, lets go after its worker
//! has exited. It is not for sockets that processes other than corral's
//! listen with on the same address. A master that stops, or hands over to
//! a new one, lets go of the steering ([`Port::release`]).

use std::net::TcpListener;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::libc;

/// A listening socket of a [`Port`]; closed when dropped.
#[derive(Debug)]
pub struct PortSocket {
    /// Taken only by `drop`, to close it while the port is locked.
    socket: Option<TcpListener>,
    id: u64,
    port: Arc<Port>,
}

impl Deref for PortSocket {
    type Target = TcpListener;

    fn deref(&self) -> &TcpListener {
        match &self.socket {
            Some(socket) => socket,
            None => unreachable!("a port socket is taken only when dropped"),
        }
    }
}

impl AsFd for PortSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        TcpListener::as_fd(self)
    }
}

impl Drop for PortSocket {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            self.port.leave(self.id, socket);
        }
    }
}

/// One address's group of listening sockets, as far as this master holds
/// them.
#[derive(Debug, Default)]
pub struct Port {
    group: Mutex<Group>,
}

#[derive(Debug, Default)]
struct Group {
    /// In the kernel's order.
    members: Vec<Member>,
    next_id: u64,
    /// A program that steers is attached.
    steering: bool,
    /// The master let go: nothing more is attached.
    released: bool,
    /// A failure to attach was logged.
    warned: bool,
}

#[derive(Debug)]
struct Member {
    id: u64,
    /// Open as long as the member is in the group: a socket leaves it
    /// before it closes.
    fd: RawFd,
    serving: bool,
}

impl Port {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `socket`, which has just started listening on this port's
    /// address (or was handed over listening, in the order the previous
    /// master's group had), so the kernel's array has it last. It serves.
    pub fn join(self: &Arc<Self>, socket: TcpListener) -> PortSocket {
        let mut group = self.group();
        let id = group.next_id;
        group.next_id += 1;
        group.members.push(Member {
            id,
            fd: socket.as_raw_fd(),
            serving: true,
        });
        PortSocket {
            socket: Some(socket),
            id,
            port: self.clone(),
        }
    }

    /// From now on exactly `serving` serve: new connections go to them
    /// alone while any other socket of the port still listens.
    pub fn serve<'a>(&self, serving: impl IntoIterator<Item = &'a PortSocket>) {
        let ids: Vec<u64> = serving.into_iter().map(|s| s.id).collect();
        let mut group = self.group();
        for member in &mut group.members {
            member.serving = ids.contains(&member.id);
        }
        group.steer();
    }

    /// Where `socket` is in the kernel's array.
    pub fn index_of(&self, socket: &PortSocket) -> Option<usize> {
        self.group().members.iter().position(|m| m.id == socket.id)
    }

    /// Stops steering: the kernel's hash picks again, and nothing this
    /// master does changes that any more (its sockets may live on in a new
    /// master, which steers them itself).
    pub fn release(&self) {
        let mut group = self.group();
        if group.steering {
            if let Some(fd) = group.members.first().map(|m| m.fd) {
                group.attach(fd, &[hash()]);
            }
            group.steering = false;
        }
        group.released = true;
    }

    /// Closes `socket`, member `id`, keeping the mirror and the program in
    /// step with the kernel's array, which moves its last into the gap.
    fn leave(&self, id: u64, socket: TcpListener) {
        let mut group = self.group();
        let Some(at) = group.members.iter().position(|m| m.id == id) else {
            return;
        };
        let moved = at + 1 != group.members.len();
        group.members.swap_remove(at);
        if group.released {
            return;
        }
        if moved && group.steering {
            // Until the close, the moving socket is still at the end and
            // the leaving one at `at`: steer to neither.
            let both: Vec<u32> = serving_indices(&group.members)
                .into_iter()
                .filter(|&i| i as usize != at)
                .collect();
            let program = steer_to(&both, group.members.len() + 1);
            group.attach(socket.as_raw_fd(), &program);
        }
        drop(socket);
        group.steer();
    }
}

impl Group {
    /// Attaches the program for the members as they are now.
    fn steer(&mut self) {
        if self.released {
            return;
        }
        let serving = serving_indices(&self.members);
        let Some(fd) = self.members.first().map(|m| m.fd) else {
            return;
        };
        if serving.len() == self.members.len() {
            if self.steering {
                self.attach(fd, &[hash()]);
                self.steering = false;
            }
            return;
        }
        let program = steer_to(&serving, self.members.len());
        self.attach(fd, &program);
        self.steering = true;
    }

    fn attach(&mut self, fd: RawFd, program: &[libc::sock_filter]) {
        if let Err(e) = attach(fd, program) {
            if !self.warned {
                self.warned = true;
                tracing::warn!(error = %e, "cannot steer new connections away from retired sockets; one that arrives on such a socket as it closes may be reset");
            }
        }
    }
}

fn serving_indices(members: &[Member]) -> Vec<u32> {
    (0u32..)
        .zip(members)
        .filter(|(_, m)| m.serving)
        .map(|(i, _)| i)
        .collect()
}

/// A program that picks one of `indices` (of an array of `len`) at random,
/// or leaves the pick to the kernel's hash when they are all or none.
fn steer_to(indices: &[u32], len: usize) -> Vec<libc::sock_filter> {
    let count = u32::try_from(indices.len()).unwrap_or(u32::MAX);
    if indices.is_empty() || indices.len() >= len {
        return vec![hash()];
    }
    // A = random % count; then the count-th serving index for each A that
    // is not already one.
    let mut program = vec![
        statement(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        statement(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, count),
    ];
    for (nth, &index) in (0u32..).zip(indices) {
        if nth != index {
            program.push(libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: nth,
            });
            program.push(statement(libc::BPF_RET | libc::BPF_K, index));
        }
    }
    program.push(statement(libc::BPF_RET | libc::BPF_A, 0));
    program
}

/// Returns an index no array has: the kernel picks by its hash.
fn hash() -> libc::sock_filter {
    statement(libc::BPF_RET | libc::BPF_K, u32::MAX)
}

fn statement(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Attaches `program` to the reuseport group of the socket `fd`.
#[allow(unsafe_code)]
fn attach(fd: RawFd, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(std::io::Error::other)?,
        // The kernel only reads through it.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` and the program it points to outlive the call, which
    // copies them; `fd` is open (a member's, or the socket being closed).
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` sockets listening on one new port, joined in order.
    fn port_of(n: usize) -> (Arc<Port>, Vec<PortSocket>) {
        let port = Port::new();
        let first = super::super::sockets::bind("127.0.0.1:0".parse().unwrap(), 256).unwrap();
        let addr = first.local_addr().unwrap();
        let mut sockets = vec![port.join(first)];
        for _ in 1..n {
            let next = super::super::sockets::bind(addr, 256).unwrap();
            sockets.push(port.join(next));
        }
        (port, sockets)
    }

    /// How many of 64 new connections each socket got.
    fn spread(sockets: &[&PortSocket]) -> Vec<usize> {
        let addr = sockets[0].local_addr().unwrap();
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let got = sockets
            .iter()
            .map(|s| std::iter::from_fn(|| s.accept().ok()).count())
            .collect();
        drop(clients);
        got
    }

    #[test]
    fn new_connections_go_to_the_serving_sockets_alone() {
        let (port, sockets) = port_of(4);
        let all: Vec<&PortSocket> = sockets.iter().collect();
        port.serve(&sockets[..2]);
        let got = spread(&all);
        assert!(got[0] > 0 && got[1] > 0 && got[2] + got[3] == 0, "{got:?}");
        // Once all serve (or the master lets go), the kernel's hash picks.
        port.serve(&sockets);
        let got = spread(&all);
        assert!(got.iter().all(|&n| n > 0), "{got:?}");
        port.serve(&sockets[..1]);
        port.release();
        let got = spread(&all);
        assert!(got.iter().all(|&n| n > 0), "{got:?}");
    }

    #[test]
    fn a_closing_socket_leaves_its_place_to_the_last_and_steering_follows() {
        // Two retired sockets in the middle, a serving one after them.
        let (port, mut sockets) = port_of(5);
        port.serve([&sockets[0], &sockets[1], &sockets[4]]);
        // The kernel moves the last socket into the closing one's place.
        drop(sockets.remove(2));
        assert_eq!(port.index_of(&sockets[3]), Some(2));
        let all: Vec<&PortSocket> = sockets.iter().collect();
        let got = spread(&all);
        assert!(
            got[0] > 0 && got[1] > 0 && got[3] > 0 && got[2] == 0,
            "the retired socket got some: {got:?}"
        );
    }
}
