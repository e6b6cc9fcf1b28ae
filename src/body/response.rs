//! A response on its way to the client (an upstream's, or one corral
//! writes), which ends the request when it is dropped: the upstream lease
//! is released and the request counted and logged. An upstream's body that
//! pauses for longer than its upstream's `body_timeout`, or breaks, is cut
//! there, and the failure counted against its server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

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
    stall: Stall,
}

/// How long an upstream's body may pause, and the timer that holds it to
/// that. The timer is made at the body's first pause and then moved only
/// when it fires before the pause at hand is due (as nginx's timers are
/// lazy): a streamed body costs a clock reading per pause, not a timer.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Timer>>>,
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    struct Timer {
        #[pin]
        sleep: Sleep,
        // When the pause under way is due to end the body, if it is paused.
        due: Option<Instant>,
    }
}

impl Stall {
    /// Ready once the body, which has nothing for now, has had nothing
    /// for the limit.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| {
            let due = Instant::now() + self.limit;
            Box::pin(Timer {
                sleep: tokio::time::sleep_until(due),
                due: Some(due),
            })
        });
        let mut timer = timer.as_mut().project();
        let due = *timer.due.get_or_insert_with(|| Instant::now() + self.limit);
        loop {
            ready!(timer.sleep.as_mut().poll(cx));
            if timer.sleep.deadline() >= due {
                return Poll::Ready(());
            }
            timer.sleep.as_mut().reset(due);
        }
    }

    /// The body gave something: a pause starts afresh.
    fn progressed(&mut self) {
        if let Some(timer) = &mut self.timer {
            *timer.as_mut().project().due = None;
        }
    }
}

/// An upstream's body gave nothing for its upstream's `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the response body stalled for {0:?}")]
struct Stalled(Duration);

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
    /// An upstream's body, cut when it pauses for longer than
    /// `body_timeout`; `lease` is released when it ends.
    pub fn upstream(inner: Upstream, lease: Lease, body_timeout: Duration) -> Self {
        Self {
            inner: Inner::Upstream(inner),
            sent: 0,
            lease: Some(lease),
            completion: None,
            stall: Stall {
                limit: body_timeout,
                timer: None,
            },
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
            stall: Stall {
                limit: Duration::ZERO,
                timer: None,
            },
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

    /// Counts and logs the failure of an upstream's body (of `kind`, as
    /// `corral_upstream_errors_total` names it), which ends the response.
    fn failed(&self, kind: &str, e: BodyError) -> BodyError {
        if let (Some(lease), Some(completion)) = (&self.lease, &self.completion) {
            let server = lease.server();
            completion.series.count_upstream_error(&server.label, kind);
            tracing::warn!(upstream = completion.series.upstream(), server = %server.addr, error = %e, "upstream failure in the response body");
        }
        e
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
            Inner::Upstream(Upstream::Http1(body)) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| (if e.is_protocol() { "protocol" } else { "reset" }, e.into())),
            Inner::Upstream(Upstream::Http2(body)) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| ("reset", e.into())),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                this.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err((kind, e)))) => Poll::Ready(Some(Err(this.failed(kind, e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.stall.poll(cx));
                let stalled = Stalled(this.stall.limit).into();
                Poll::Ready(Some(Err(this.failed("timeout", stalled))))
            }
        }
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
