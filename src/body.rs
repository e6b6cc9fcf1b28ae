//! The two bodies that cross corral, both streamed frame by frame.
//!
//! [`RequestBody`] carries a client's request body upstream and enforces the
//! listener's limits on it (size, pause between reads) without buffering.
//! [`ResponseBody`] carries an upstream's response (or a short local answer)
//! back to the client. When it is dropped, the request is over: the upstream
//! lease is released (the server's in-flight count drops and an HTTP/1.1
//! connection that finished cleanly goes back to its pool) and the request is
//! counted and logged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::access_log::{Entry, Outcome};
use crate::metrics::RouteSeries;
use crate::upstream::Lease;

/// Why a client's request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body stalled for longer than {0:?}")]
    Timeout(Duration),
    #[error("reading the request body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// A client's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    idle_timeout: Duration,
    /// Created on the first pause and reused after, so a streaming upload
    /// allocates one timer, not one per frame.
    idle: Option<Pin<Box<Sleep>>>,
    idle_armed: bool,
    /// Dropped (or fired) once the body has been sent in full, which is
    /// when the wait for the upstream's answer starts to count.
    sent: Option<oneshot::Sender<()>>,
    /// Where the bytes read are counted.
    series: Arc<RouteSeries>,
}

/// Says when a request body has been sent in full (or dropped unsent).
/// The default has no body to wait for.
#[derive(Debug, Default)]
pub struct BodySent(Option<oneshot::Receiver<()>>);

impl BodySent {
    /// Waits until the body is through.
    pub async fn wait(&mut self) {
        if let Some(rx) = &mut self.0 {
            let _ = rx.await;
            self.0 = None;
        }
    }

    /// Whether the body is through.
    pub fn is_done(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        self.0
            .as_mut()
            .is_none_or(|rx| !matches!(rx.try_recv(), Err(TryRecvError::Empty)))
    }
}

impl RequestBody {
    /// Wraps `inner`, and says when it has been sent. A request without a
    /// body (most of them) is sent as soon as its head is, so it needs no
    /// channel for that.
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        idle_timeout: Duration,
        series: Arc<RouteSeries>,
    ) -> (Self, BodySent) {
        let (tx, rx) = if inner.is_end_stream() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let body = Self {
            inner,
            limit,
            seen: 0,
            idle_timeout,
            idle: None,
            idle_armed: false,
            sent: tx,
            series,
        };
        (body, BodySent(rx))
    }

    fn mark_sent(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.series.add_request_bytes(self.seen);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle_armed = false;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(limit) = this.limit.filter(|&l| this.seen > l) {
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                    }
                }
                if this.inner.is_end_stream() {
                    this.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.mark_sent();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.idle_armed {
                    idle.as_mut().reset(deadline);
                    this.idle_armed = true;
                }
                ready!(idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Timeout(this.idle_timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to count (and log) when a request is over.
#[derive(Debug)]
pub struct Completion {
    pub series: Arc<RouteSeries>,
    pub status: u16,
    pub started: Instant,
    /// Present when access logging is on. Boxed: every response carries
    /// this, and hyper moves responses several times on their way out.
    pub log: Option<Box<Entry>>,
}

impl Completion {
    fn finish(self, sent: u64, server: Option<&str>) {
        let elapsed = self.started.elapsed();
        self.series.record(self.status, elapsed, sent);
        if let Some(entry) = self.log {
            entry.write(Outcome {
                status: self.status,
                bytes: sent,
                elapsed,
                route: self.series.route(),
                upstream: self.series.upstream(),
                server,
            });
        }
    }
}

/// A response on its way to the client.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    /// Body bytes handed to the client so far.
    sent: u64,
    /// The upstream's body said it had ended. hyper knows the end of a body
    /// of known length in advance (`is_end_stream`), but the end of a
    /// chunked or close-delimited one only once it was read.
    ended: bool,
    /// Released when the body is dropped.
    lease: Option<Lease>,
    completion: Option<Completion>,
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// An upstream's body; `lease` is released when it ends.
    pub fn upstream(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner: Inner::Upstream(inner),
            sent: 0,
            ended: false,
            lease: Some(lease),
            completion: None,
        }
    }

    /// A body corral writes itself (error pages, the admin endpoint, echo).
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            inner: Inner::Local((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            ended: false,
            lease: None,
            completion: None,
        }
    }

    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    /// Counts (and logs) the request when the body is done.
    pub fn complete_with(mut self, completion: Completion) -> Self {
        self.completion = Some(completion);
        self
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The lease goes first, so a request that is counted or logged is
        // no longer in flight anywhere.
        let server = self.lease.take().map(|lease| {
            let server = lease.server().clone();
            // Read to the end: the connection is clean and can serve again.
            // Dropped early (client gone, upstream error): it cannot.
            let clean =
                self.ended || matches!(&self.inner, Inner::Upstream(b) if b.is_end_stream());
            lease.release(clean);
            server
        });
        if let Some(completion) = self.completion.take() {
            completion.finish(self.sent, server.as_ref().map(|s| s.label.as_str()));
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(bytes) => bytes.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}
