//! A request on its way to an upstream: its head encoded once, and a
//! writer that sends the head and streams the body after it, chunked or
//! by length, with the socket's backpressure. A small first body frame
//! that is already there leaves in the head's write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Method;
use http::header::{self, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

use crate::body::request::{BodyError, RequestBody};
use crate::upstream::stream::Stream;

/// Body frames up to this size are copied behind what is queued (one
/// buffer, one write); larger ones are written from where they are.
const COPY_UP_TO: usize = 8 * 1024;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
}

/// A request ready to be sent, and how far the sending got.
#[derive(Debug)]
pub struct Outbound {
    /// Bytes to write before anything else: the head at first, then
    /// small frames and chunk framing.
    queued: BytesMut,
    /// A large body frame, written after `queued`.
    frame: Bytes,
    /// Written after `frame`: the CRLF that ends a chunk.
    frame_end: &'static [u8],
    body: Option<RequestBody>,
    framing: Framing,
    /// Bytes of the request written so far.
    written: u64,
    pub(super) to_head: bool,
}

/// Why a request could not be sent in full.
#[derive(Debug)]
pub enum WriteError {
    Io(io::Error),
    /// The client's body failed (too large, stalled, cut off).
    Body(BodyError),
}

impl Outbound {
    /// Encodes `request`'s head. A body that is over before it began sends
    /// no framing of its own (any `Content-Length` the client gave stays);
    /// otherwise a `Content-Length` frames it, or one from the body's exact
    /// size, or else chunked.
    /// `added` are fields written behind `parts`' own. `body` is `None`
    /// for a request that has none (a health probe).
    pub fn new<'a>(
        parts: &'a http::request::Parts,
        added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + Clone,
        body: Option<RequestBody>,
    ) -> Self {
        let body = body.filter(|b| !b.is_end_stream());
        let mut framing = match &body {
            None => Framing::None,
            Some(_) if parts.headers.contains_key(header::CONTENT_LENGTH) => Framing::Length,
            Some(_) => Framing::Chunked,
        };
        let exact = body.as_ref().and_then(|b| b.size_hint().exact());
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = BytesMut::with_capacity(head_size(parts, added.clone(), target));
        head.put_slice(parts.method.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(target.as_bytes());
        head.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in parts.headers.iter().chain(added) {
            field(&mut head, name.as_str().as_bytes(), value);
        }
        if framing == Framing::Chunked {
            match exact {
                Some(length) => {
                    let mut digits = itoa::Buffer::new();
                    let length = HeaderValue::from_str(digits.format(length))
                        .unwrap_or_else(|_| HeaderValue::from_static("0"));
                    field(&mut head, b"content-length", &length);
                    framing = Framing::Length;
                }
                None => field(
                    &mut head,
                    b"transfer-encoding",
                    &HeaderValue::from_static("chunked"),
                ),
            }
        }
        head.put_slice(b"\r\n");
        Self {
            queued: head,
            frame: Bytes::new(),
            frame_end: b"",
            body,
            framing,
            written: 0,
            to_head: parts.method == Method::HEAD,
        }
    }

    /// The request again, to send elsewhere, if it has no body: a copy of
    /// its head, of which nothing has been written.
    pub fn replay(&self) -> Option<Box<Self>> {
        (self.body.is_none() && self.written == 0).then(|| {
            Box::new(Self {
                queued: self.queued.clone(),
                frame: Bytes::new(),
                frame_end: b"",
                body: None,
                framing: self.framing,
                written: 0,
                to_head: self.to_head,
            })
        })
    }

    /// Whether any byte of the request has reached the socket: until then,
    /// it can still go out on another connection.
    pub fn has_left(&self) -> bool {
        self.written > 0
    }

    /// Whether everything, body included, has been written.
    pub fn is_sent(&self) -> bool {
        self.body.is_none() && self.queued.is_empty() && self.frame.is_empty()
    }

    /// Writes what is queued, and the body frames as they come, until all
    /// is sent or either the socket or the body has to wait. Frames that
    /// are there at once (a small body behind the head, say) are gathered
    /// into one write.
    pub fn poll_write(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            let gathering = self.frame.is_empty() && self.queued.len() < COPY_UP_TO;
            if let Some(body) = self.body.as_mut().filter(|_| gathering) {
                match std::pin::Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // A body that knows it is over is not polled again:
                        // hyper's server ends the stream only once its
                        // connection task runs again, which may be never.
                        let over = body.is_end_stream();
                        self.queue(frame);
                        if over {
                            self.end_body();
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        return Poll::Ready(Err(WriteError::Body(e)));
                    }
                    Poll::Ready(None) => {
                        self.end_body();
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if self.queued.is_empty() && self.frame.is_empty() && self.frame_end.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(self.poll_flush(stream, cx)).map_err(WriteError::Io)?;
        }
    }

    fn end_body(&mut self) {
        if self.framing == Framing::Chunked {
            self.queued.put_slice(b"0\r\n\r\n");
        }
        self.body = None;
    }

    fn queue(&mut self, frame: Frame<Bytes>) {
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => return,
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), self.framing) {
                    self.queued.put_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        field(&mut self.queued, name.as_str().as_bytes(), value);
                    }
                    self.queued.put_slice(b"\r\n");
                    // The trailers ended the body; nothing more is framed.
                    self.framing = Framing::None;
                }
                return;
            }
        };
        let chunked = self.framing == Framing::Chunked;
        if chunked {
            let mut size = [0u8; 16];
            let digits = hex(frame.len(), &mut size);
            self.queued.put_slice(digits);
            self.queued.put_slice(b"\r\n");
        }
        let end: &'static [u8] = if chunked { b"\r\n" } else { b"" };
        if frame.len() <= COPY_UP_TO {
            self.queued.put_slice(&frame);
            self.queued.put_slice(end);
        } else {
            self.frame = frame;
            self.frame_end = end;
        }
    }

    /// Writes `queued`, then `frame` and `frame_end`, in as few writes as
    /// the socket takes, and flushes them (over TLS, records may wait in
    /// the session until then).
    fn poll_flush(&mut self, stream: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !(self.queued.is_empty() && self.frame.is_empty() && self.frame_end.is_empty()) {
            let slices = [
                IoSlice::new(&self.queued),
                IoSlice::new(&self.frame),
                IoSlice::new(self.frame_end),
            ];
            let n = match ready!(stream.poll_write_vectored(cx, &slices)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(e)),
            };
            self.written += n as u64;
            self.advance(n);
        }
        Pin::new(stream).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        let queued = n.min(self.queued.len());
        self.queued.advance(queued);
        n -= queued;
        let frame = n.min(self.frame.len());
        self.frame.advance(frame);
        n -= frame;
        self.frame_end = &self.frame_end[n.min(self.frame_end.len())..];
    }
}

fn field(head: &mut BytesMut, name: &[u8], value: &HeaderValue) {
    head.put_slice(name);
    head.put_slice(b": ");
    head.put_slice(value.as_bytes());
    head.put_slice(b"\r\n");
}

/// The head's size, so it is written into one allocation.
fn head_size<'a>(
    parts: &'a http::request::Parts,
    added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    target: &str,
) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .chain(added)
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    // Request line, framing header, final CRLF, and room for a small body.
    parts.method.as_str().len() + target.len() + fields + 64
}

/// `n` in lower-case hex, written into `out`.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}
