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
use crate::upstream::http1::Http1Body;

/// Why a response body broke off.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

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
    fn finish(self, sent: u64, server: Option<&str>, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
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
    /// Released when the body is dropped.
    lease: Option<Lease>,
    completion: Option<Completion>,
}

/// An upstream's body, as each protocol's client reads it.
#[derive(Debug)]
pub enum Upstream {
    Http1(Http1Body),
    Http2(Incoming),
}

#[derive(Debug)]
enum Inner {
    Upstream(Upstream),
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// An upstream's body; `lease` is released when it ends.
    pub fn upstream(inner: Upstream, lease: Lease) -> Self {
        Self {
            inner: Inner::Upstream(inner),
            sent: 0,
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

impl ResponseBody {
    /// Ends the request at `now`, as dropping the body does (which reads
    /// the clock for it), for a caller that has read the clock already.
    pub fn finish(&mut self, now: Instant) {
        // The lease goes first, so a request that is counted or logged is
        // no longer in flight anywhere.
        let server = self.lease.take().map(|lease| {
            let server = lease.server().clone();
            // Read to a clean end, an HTTP/1.1 connection serves again;
            // dropped early (client gone, upstream error), it cannot.
            let conn = match &mut self.inner {
                Inner::Upstream(Upstream::Http1(body)) => body.take_reusable(),
                _ => None,
            };
            lease.release(conn, now);
            server
        });
        if let Some(completion) = self.completion.take() {
            completion.finish(self.sent, server.as_ref().map(|s| s.label.as_str()), now);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.lease.is_some() || self.completion.is_some() {
            self.finish(Instant::now());
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(Upstream::Http1(body)) => {
                Pin::new(body).poll_frame(cx).map_err(BodyError::from)
            }
            Inner::Upstream(Upstream::Http2(body)) => {
                Pin::new(body).poll_frame(cx).map_err(BodyError::from)
            }
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(bytes) => bytes.is_none(),
            Inner::Upstream(Upstream::Http1(body)) => body.is_end_stream(),
            Inner::Upstream(Upstream::Http2(body)) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Upstream(Upstream::Http1(body)) => body.size_hint(),
            Inner::Upstream(Upstream::Http2(body)) => body.size_hint(),
        }
    }
}
