//! A response body read straight from the upstream socket, framed as its
//! head said, in frames that share the read buffer's memory. At a clean
//! end the connection can serve another request; see [`Http1Body::take_reusable`].

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{Chunked, Decoded};
use super::connection::{Connection, FIRST_READ};
use super::error::Error;
use super::head::Framing;
use super::request::Outbound;

/// Reads grow to this size while each one fills what it was given: large
/// bodies move in fewer system calls, small ones keep small buffers.
const MAX_READ: usize = 256 * 1024;

#[derive(Debug)]
pub struct Http1Body {
    /// `None` once taken back, or after an error.
    conn: Option<Connection>,
    reading: Reading,
    /// The request body still being sent, after an early response.
    sending: Option<Box<Outbound>>,
    /// The connection may serve again once this body ends: the server
    /// keeps it open and had the whole request before it answered.
    reusable: bool,
    max_trailers: usize,
    read_size: usize,
}

#[derive(Debug)]
enum Reading {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
    /// A 101: the connection belongs to the tunnel.
    Upgraded,
}

impl Http1Body {
    pub(super) fn new(
        conn: Connection,
        framing: Framing,
        keep_alive: bool,
        sending: Option<Box<Outbound>>,
        max_trailers: usize,
    ) -> Self {
        let reading = match framing {
            Framing::Empty | Framing::Length(0) => Reading::Done,
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(Chunked::new()),
            Framing::Close => Reading::Close,
        };
        Self {
            reusable: keep_alive && sending.is_none() && !matches!(reading, Reading::Close),
            conn: Some(conn),
            reading,
            sending,
            max_trailers,
            read_size: FIRST_READ,
        }
    }

    pub(super) fn upgraded(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            reading: Reading::Upgraded,
            sending: None,
            reusable: false,
            max_trailers: 0,
            read_size: FIRST_READ,
        }
    }

    /// The connection, if the body ended cleanly and it can carry another
    /// request: complete framing, nothing read past it, the whole request
    /// sent before the response began, and the server keeping it open.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        let clean = matches!(self.reading, Reading::Done) && self.reusable;
        self.conn
            .take_if(|c| clean && c.buf.is_empty())
            .map(Connection::idle)
    }

    /// The connection of a 101 response, with any bytes of the new
    /// protocol already read.
    pub fn take_upgraded(&mut self) -> Option<Connection> {
        matches!(self.reading, Reading::Upgraded)
            .then(|| self.conn.take())
            .flatten()
    }

    /// Keeps sending a request body the server answered early; once that
    /// fails, it is given up (the server need not read it).
    fn poll_send(&mut self, cx: &mut Context<'_>) {
        if let (Some(out), Some(conn)) = (self.sending.as_mut(), self.conn.as_mut()) {
            if let Poll::Ready(result) = out.poll_write(&mut conn.stream, cx) {
                if let Err(e) = result {
                    tracing::debug!(error = ?e, "request body not sent after an early response");
                }
                self.sending = None;
            }
        }
    }

    /// Reads more; `Ok(false)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let before = conn.buf.capacity() - conn.buf.len();
        let n = ready!(conn.poll_read(cx, self.read_size))?;
        if n >= before.max(self.read_size) && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n > 0))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut self.reading {
                Reading::Done | Reading::Upgraded => return Poll::Ready(None),
                Reading::Length(left) if !buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        self.reading = Reading::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Close if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                Reading::Chunked(chunked) => match chunked.decode(buf, self.max_trailers)? {
                    Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Decoded::Trailers(trailers) => {
                        self.reading = Reading::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Decoded::End => {
                        self.reading = Reading::Done;
                        return Poll::Ready(None);
                    }
                    Decoded::NeedMore => {}
                },
                Reading::Length(_) | Reading::Close => {}
            }
            if !ready!(self.poll_fill(cx))? {
                return Poll::Ready(match self.reading {
                    Reading::Close => {
                        self.reading = Reading::Done;
                        None
                    }
                    Reading::Length(left) => Some(Err(Error::Short(left))),
                    _ => Some(Err(Error::Closed)),
                });
            }
        }
    }
}

impl Drop for Http1Body {
    /// A response that ended while its request body was still going: the
    /// client is still sending, and the server may still be reading, so the
    /// upload is finished on a task of its own (the body's own timeouts
    /// bound it). The connection closes after it, never to be reused.
    fn drop(&mut self) {
        let (Reading::Done, Some(mut out), Some(mut conn)) =
            (&self.reading, self.sending.take(), self.conn.take())
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let sent = std::future::poll_fn(|cx| out.poll_write(&mut conn.stream, cx)).await;
                if let Err(e) = sent {
                    tracing::debug!(error = ?e, "request body not sent in full after its response");
                }
            });
        }
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        this.poll_send(cx);
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // Nothing more can be read of a connection whose framing broke.
            this.conn = None;
            this.reading = Reading::Done;
            this.reusable = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done | Reading::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Done | Reading::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
