//! A response on its way to the client (an upstream's, or one corral
//! writes), which ends the request when it is dropped: the upstream lease
//! is released and the request counted and logged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{Entry, Outcome};
use crate::metrics::RouteSeries;
use crate::upstream::Lease;

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
