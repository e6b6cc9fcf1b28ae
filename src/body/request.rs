//! A client's request body on its way upstream: streamed, with the
//! listener's size and pause limits enforced, and a signal when it has been
//! sent in full.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::metrics::RouteSeries;

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
    /// `None`: no body, as a request repeated elsewhere has.
    inner: Option<Incoming>,
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
            inner: Some(inner),
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

    /// No body, counted where `like`'s bytes are.
    pub fn empty(like: &Self) -> Self {
        Self {
            inner: None,
            limit: None,
            seen: 0,
            idle_timeout: like.idle_timeout,
            idle: None,
            idle_armed: false,
            sent: None,
            series: like.series.clone(),
        }
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
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle_armed = false;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(limit) = this.limit.filter(|&l| this.seen > l) {
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                    }
                }
                if inner.is_end_stream() {
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
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}
