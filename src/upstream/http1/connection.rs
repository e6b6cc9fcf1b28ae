//! An HTTP/1.1 connection to an upstream server: its socket, the bytes
//! read from it but not yet used, and the timer its exchanges wait on.

use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::time::{Instant, Sleep};

use crate::upstream::stream::Stream;

/// The first read of a response reserves this much: most heads, and many
/// whole responses, fit.
pub(super) const FIRST_READ: usize = 8 * 1024;

/// An HTTP/1.1 connection to an upstream server. Boxed once, when it is
/// opened: it moves between the pool, the exchange and the response body,
/// and every response (which hyper moves several times) would otherwise
/// carry it inline.
#[derive(Debug)]
pub struct Connection(Box<Parts>);

#[derive(Debug)]
/// What a connection holds.
pub struct Parts {
    pub(super) stream: Stream,
    /// Bytes read and not yet used. Empty, and without an allocation, while
    /// the connection waits in the pool.
    pub(super) buf: BytesMut,
    /// The response timeout of the exchange under way, kept from one
    /// exchange to the next (see `poll_deadline`). Boxed: a timer is
    /// pinned where it is registered, and the connection moves.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn new(stream: Stream) -> Self {
        Self(Box::new(Parts {
            stream,
            buf: BytesMut::new(),
            timer: None,
        }))
    }

    /// Whether the server closed the connection (or sent something nobody
    /// asked for) while it was idle; see [`Stream::is_closed`].
    pub fn is_closed(&mut self) -> bool {
        self.stream.is_closed()
    }

    /// The socket, and what was read past the last response (the first
    /// bytes of an upgraded protocol).
    pub fn into_parts(self) -> (Stream, BytesMut) {
        let Parts { stream, buf, .. } = *self.0;
        (stream, buf)
    }

    /// Reads what the socket has into the buffer, reserving `size` bytes
    /// if less is free; 0 at end of stream.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        size: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // As it comes out of the pool: a plain allocation costs half
            // what growing an empty buffer does.
            self.buf = BytesMut::with_capacity(size);
        } else if self.buf.capacity() - self.buf.len() < size / 2 {
            self.buf.reserve(size);
        }
        // Through `AsyncRead`, which (unlike `try_read_buf`) takes a read
        // that did not fill the buffer to have emptied the socket, and
        // clears its readiness: `is_closed` then costs no system call when
        // the connection is checked out again.
        let Parts { stream, buf, .. } = &mut *self.0;
        tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
    }

    /// Ready once `deadline` has passed; until then the task `cx` belongs
    /// to is woken when it does.
    ///
    /// The timer stays registered between exchanges, and is moved only
    /// when it fires before the deadline at hand (as nginx's timers are
    /// lazy): with a timeout of seconds and exchanges of milliseconds, an
    /// exchange then costs one poll of the timer rather than a timer's
    /// registration and removal.
    pub(super) fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Never later than the deadline: a reload may have shortened it.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() == deadline {
                return Poll::Ready(());
            }
            // An earlier exchange's deadline.
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Leaves the connection as the pool keeps it: nothing buffered.
    pub(super) fn idle(mut self) -> Self {
        self.buf = BytesMut::new();
        self
    }
}

impl Deref for Connection {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Parts {
        &mut self.0
    }
}
