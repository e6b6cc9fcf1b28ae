//! The control channel: master <-> worker, and old master <-> new master
//! during a binary upgrade.
//!
//! One Unix stream socketpair per peer carries typed messages, each framed as
//! an 8-byte header (`version: u16`, `fd_count: u16`, `length: u32`, big
//! endian) and a JSON body. File descriptors (listening sockets, and the
//! client connections the master relays, see `master::relay`) travel with
//! their message as `SCM_RIGHTS`. A peer that speaks another protocol
//! version is refused with an error naming both versions, so a new master
//! never misreads an old worker. Nothing here knows about HTTP.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::challenges::Challenges;
use crate::metrics::carry::Totals;
use crate::plan::{Plan, StickyKey};
use crate::upstream::Ejection;

/// Bumped whenever a message changes shape.
pub const VERSION: u16 = 2;
const HEADER: usize = 8;
/// Plans are the largest messages; this bounds a broken peer.
const MAX_BODY: usize = 64 << 20;
/// The kernel's limit on descriptors in one `SCM_RIGHTS` message.
pub const MAX_FDS: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("control channel I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("peer speaks control protocol v{theirs}, this corral speaks v{VERSION}")]
    Version { theirs: u16 },
    #[error("malformed control message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("control message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("control message announced {expected} file descriptors but {got} arrived")]
    MissingFds { expected: usize, got: usize },
}

/// Master -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// The first message. Its descriptors are the worker's metrics region
    /// (see `metrics::shm`), then its listening sockets, one per name in
    /// `listeners`, in order.
    Start {
        slot: usize,
        generation: u64,
        plan: Plan,
        listeners: Vec<String>,
        health: Vec<ServerHealth>,
    },
    /// Switch to a new config generation, described by `plan`. `listeners` names every listener
    /// to accept on from now on (stop the others); the message's descriptors
    /// are new sockets for the names in `sockets`, in order, replacing any
    /// socket the worker has under that name.
    Reload {
        generation: u64,
        plan: Plan,
        listeners: Vec<String>,
        sockets: Vec<String>,
    },
    /// Answer with `Pong` carrying the same number.
    Ping { seq: u64 },
    /// The health of every checked server.
    Health { servers: Vec<ServerHealth> },
    /// The ACME challenges to answer from now on; answer `Challenged`.
    Challenges { challenges: Challenges },
    /// Reopen log files (after logrotate moved them).
    ReopenLogs,
    /// Stop accepting, finish in-flight work, exit.
    Drain,
    /// Serve a client connection that the master accepted on `listener`'s
    /// socket of a slot with no worker; its descriptor comes with this.
    Connection { listener: String },
}

/// Worker -> master.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMaster {
    /// A server this worker took out of its picks (passive health).
    Ejected {
        ejection: Ejection,
    },
    /// Serving `generation`.
    Ready {
        generation: u64,
    },
    Pong {
        seq: u64,
    },
    /// Could not start; the worker exits after sending this.
    Failed {
        error: String,
    },
    /// Answering the challenges of `version`.
    Challenged {
        version: u64,
    },
    /// Now serving `generation`.
    Reloaded {
        generation: u64,
    },
    /// Still serving the previous generation.
    ReloadFailed {
        generation: u64,
        error: String,
    },
}

/// Between an old and a new master during a binary upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Upgrade {
    /// Old -> new: every listening socket, descriptors in the same order,
    /// and the key sticky cookies are signed with, so that clients keep
    /// their servers across the upgrade. Defaulted, not a new protocol
    /// version: a master that sends none (an older binary) can still hand
    /// over its sockets, and the new one makes a key of its own.
    Sockets {
        sockets: Vec<HandedSocket>,
        #[serde(default)]
        sticky_key: Option<StickyKey>,
        /// A `Counters` message follows (an older master sends none).
        #[serde(default)]
        counters: bool,
    },
    /// Old -> new, right after `Sockets`: the old master's counters without
    /// its live workers, and the descriptors of those workers' metrics
    /// regions (`regions` of them), which the new master reads as they go
    /// on counting while they drain. A message of its own, so that an older
    /// new master, which reads `Sockets` alone, never sees descriptors it
    /// did not expect.
    Counters { totals: Totals, regions: usize },
    /// New -> old: the new master's workers are serving; drain and exit.
    Ready { pid: u32 },
    /// Old -> new, once its workers have all exited and just before it
    /// exits: everything it counted, which replaces `Counters` and the
    /// regions.
    Final { totals: Totals },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandedSocket {
    Listener {
        name: String,
        addr: SocketAddr,
        slot: usize,
    },
    Admin {
        addr: SocketAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub upstream: String,
    pub server: SocketAddr,
    pub healthy: bool,
}

/// A message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received<T> {
    pub message: T,
    pub fds: Vec<OwnedFd>,
    /// Descriptors the message announced that never arrived: the kernel
    /// drops those a receiver at its open-files limit cannot take, and
    /// says so (`MSG_CTRUNC`). The message itself is whole; whether it is
    /// of use without them is the receiver's call.
    pub missing: usize,
}

/// Creates a connected pair: our end, and the end to hand to a child process
/// (as its stdin).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Wraps one end of a pair; must be called inside a tokio runtime.
pub fn channel(fd: OwnedFd) -> io::Result<(Sender, Receiver)> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    let stream = Arc::new(UnixStream::from_std(std)?);
    Ok((
        Sender {
            stream: stream.clone(),
        },
        Receiver {
            stream,
            buf: Vec::new(),
            consumed: 0,
            batches: VecDeque::new(),
        },
    ))
}

/// The sending half. Sends are whole: concurrent senders must not interleave,
/// so each half has one owner.
#[derive(Debug)]
pub struct Sender {
    stream: Arc<UnixStream>,
}

impl Sender {
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), IpcError> {
        self.send_with_fds(message, &[]).await
    }

    pub async fn send_with_fds<T: Serialize>(
        &mut self,
        message: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), IpcError> {
        let body = serde_json::to_vec(message)?;
        if body.len() > MAX_BODY {
            return Err(IpcError::TooLarge(body.len()));
        }
        if fds.len() > MAX_FDS {
            return Err(IpcError::Io(io::Error::other(
                "too many descriptors for one message",
            )));
        }
        let mut frame = Vec::with_capacity(HEADER + body.len());
        frame.extend_from_slice(&VERSION.to_be_bytes());
        frame.extend_from_slice(&(fds.len() as u16).to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while sent < frame.len() {
            // Descriptors ride on the first byte of the frame only.
            let rights = if sent == 0 && !raw.is_empty() {
                vec![ControlMessage::ScmRights(&raw)]
            } else {
                Vec::new()
            };
            let n = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    sendmsg::<()>(
                        self.stream.as_raw_fd(),
                        &[IoSlice::new(&frame[sent..])],
                        &rights,
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(io::Error::from)
                })
                .await?;
            sent += n;
        }
        Ok(())
    }
}

/// The receiving half; `recv` is cancel-safe (partial frames are kept).
#[derive(Debug)]
pub struct Receiver {
    stream: Arc<UnixStream>,
    buf: Vec<u8>,
    /// Where in the stream `buf` starts.
    consumed: u64,
    /// Descriptors received, each batch with the frame it came with.
    batches: VecDeque<Batch>,
}

/// The descriptors of one frame, as they arrived.
#[derive(Debug)]
struct Batch {
    /// Where the frame starts in the stream.
    frame: u64,
    fds: Vec<OwnedFd>,
    /// The kernel dropped some of them.
    truncated: bool,
}

impl Receiver {
    /// The next message, or `None` when the peer closed the channel.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<Received<T>>, IpcError> {
        loop {
            if let Some(received) = self.take_frame()? {
                return Ok(Some(received));
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    fn take_frame<T: DeserializeOwned>(&mut self) -> Result<Option<Received<T>>, IpcError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let version = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        if version != VERSION {
            return Err(IpcError::Version { theirs: version });
        }
        let fd_count = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_BODY {
            return Err(IpcError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let (fds, missing) = self.fds_of_frame(fd_count)?;
        let message = serde_json::from_slice(&self.buf[HEADER..HEADER + len])?;
        self.buf.drain(..HEADER + len);
        self.consumed += (HEADER + len) as u64;
        Ok(Some(Received {
            message,
            fds,
            missing,
        }))
    }

    /// The descriptors of the frame at the front of `buf`, which announced
    /// `expected`, and how many of those the kernel dropped.
    fn fds_of_frame(&mut self, expected: usize) -> Result<(Vec<OwnedFd>, usize), IpcError> {
        // A batch no earlier frame claimed is the peer's mistake; closed.
        while self
            .batches
            .front()
            .is_some_and(|b| b.frame < self.consumed)
        {
            self.batches.pop_front();
        }
        if expected == 0 {
            return Ok((Vec::new(), 0));
        }
        let batch = match self.batches.front() {
            Some(b) if b.frame == self.consumed => self.batches.pop_front(),
            _ => None,
        };
        let (fds, truncated) = batch.map_or((Vec::new(), false), |b| (b.fds, b.truncated));
        match expected.checked_sub(fds.len()) {
            Some(missing) if missing == 0 || truncated => Ok((fds, missing)),
            _ => Err(IpcError::MissingFds {
                expected,
                got: fds.len(),
            }),
        }
    }

    async fn read_more(&mut self) -> Result<usize, IpcError> {
        let mut chunk = [0u8; 16 * 1024];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (n, fds, truncated) = self
            .stream
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                // Truncated, the control data is not read (nix refuses to):
                // the space here fits any message a peer sends, so only a
                // receiver at its open-files limit sees this, and the
                // kernel installed none of a one-descriptor message's (a
                // relayed connection); the few it may have installed of a
                // larger one stay open until this process, which cannot
                // go on without them, exits.
                let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                if !truncated {
                    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            fds.extend(raw.into_iter().map(adopt_fd));
                        }
                    }
                }
                Ok((msg.bytes, fds, truncated))
            })
            .await?;
        let from = self.buf.len();
        self.buf.extend_from_slice(&chunk[..n]);
        if !fds.is_empty() || truncated {
            // The kernel ends a read with the data its descriptors came
            // with, and they ride on the first byte of their frame: they
            // belong to the last frame that starts in this read.
            let frame = self.consumed + last_frame_start(&self.buf, from) as u64;
            self.batches.push_back(Batch {
                frame,
                fds,
                truncated,
            });
        }
        Ok(n)
    }
}

/// Where in `buf` (which starts with a frame) the last frame starting at
/// or after `from` starts; the first start past `from` if none is in `buf`.
fn last_frame_start(buf: &[u8], from: usize) -> usize {
    let mut at = 0usize;
    let mut last = None;
    loop {
        if at >= from {
            if at >= buf.len() {
                return last.unwrap_or(at);
            }
            last = Some(at);
        }
        let Some(header) = buf.get(at..at + HEADER) else {
            return last.unwrap_or(at);
        };
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        at = at.saturating_add(HEADER + len);
    }
}

/// Takes ownership of a descriptor the kernel just installed in this process
/// through `SCM_RIGHTS`.
#[allow(unsafe_code)]
fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `recvmsg` returned this descriptor as newly installed for us;
    // nothing else in the process knows it, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn messages_and_descriptors_arrive_together_and_in_order() {
        let (a, b) = pair().unwrap();
        let (mut tx, _) = channel(a).unwrap();
        let (_, mut rx) = channel(b).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tx.send(&ToMaster::Pong { seq: 1 }).await.unwrap();
        tx.send_with_fds(&ToWorker::Drain, &[listener.as_fd()])
            .await
            .unwrap();
        tx.send(&ToMaster::Ready { generation: 7 }).await.unwrap();

        let first = rx.recv::<ToMaster>().await.unwrap().unwrap();
        assert!(matches!(first.message, ToMaster::Pong { seq: 1 }) && first.fds.is_empty());
        let second = rx.recv::<ToWorker>().await.unwrap().unwrap();
        assert_eq!(second.fds.len(), 1);
        let passed = std::net::TcpListener::from(second.fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr);
        let third = rx.recv::<ToMaster>().await.unwrap().unwrap();
        assert!(matches!(third.message, ToMaster::Ready { generation: 7 }));
        drop(tx);
        assert!(rx.recv::<ToMaster>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_by_name() {
        use std::io::Write;
        let (a, b) = pair().unwrap();
        let mut raw = std::os::unix::net::UnixStream::from(a);
        raw.write_all(&[0, 9, 0, 0, 0, 0, 0, 2, b'{', b'}'])
            .unwrap();
        let (_, mut rx) = channel(b).unwrap();
        let err = rx.recv::<ToMaster>().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer speaks control protocol v9, this corral speaks v2"
        );
    }
}
