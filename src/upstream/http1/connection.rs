//! An HTTP/1.1 connection to an upstream server: its socket and the bytes
//! read from it but not yet used.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// The first read of a response reserves this much: most heads, and many
/// whole responses, fit.
pub(super) const FIRST_READ: usize = 8 * 1024;

/// An HTTP/1.1 connection to an upstream server.
#[derive(Debug)]
pub struct Connection {
    pub(super) stream: TcpStream,
    /// Bytes read and not yet used. Empty, and without an allocation, while
    /// the connection waits in the pool.
    pub(super) buf: BytesMut,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether the server closed the connection (or sent something nobody
    /// asked for) while it was idle. Costs no system call unless the
    /// socket became readable, which an idle connection only does when
    /// the server has ended it.
    pub fn is_closed(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The socket, and what was read past the last response (the first
    /// bytes of an upgraded protocol).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Reads what the socket has into the buffer, reserving `size` bytes
    /// if less is free; 0 at end of stream.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        size: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < size / 2 {
            self.buf.reserve(size);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(read),
            }
        }
    }

    /// Leaves the connection as the pool keeps it: nothing buffered.
    pub(super) fn idle(mut self) -> Self {
        self.buf = BytesMut::new();
        self
    }
}
