//! Responses an HTTP/2 client holds back with its flow control: a client
//! that never opens its window (or never reads its socket) would keep each
//! such stream, and its upstream connection, forever. [`Stalling`] wraps a
//! response body and notes when it waits on the client (hyper polls a body
//! only once the client's window and the stream's send buffer have room);
//! [`Stalls::sweep`], once a period, says whether one has waited a whole
//! period. Counting costs an atomic add per frame, no clock reading: waits
//! are counted per period, in two buckets, the current one and the last.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// How many of a connection's responses wait on the client, by the period
/// in which they began to.
#[derive(Debug, Default)]
pub struct Stalls {
    period: AtomicU32,
    waiting: [AtomicU32; 2],
}

impl Stalls {
    /// A response begins to wait; returns the period it began in.
    fn begin(&self) -> u32 {
        let period = self.period.load(Ordering::Relaxed);
        self.bucket(period).fetch_add(1, Ordering::Relaxed);
        period
    }

    /// A response that began to wait in `period` no longer does.
    fn end(&self, period: u32) {
        self.bucket(period).fetch_sub(1, Ordering::Relaxed);
    }

    fn bucket(&self, period: u32) -> &AtomicU32 {
        &self.waiting[(period & 1) as usize]
    }

    /// Ends a period: true if a response has been waiting since the one
    /// before (at least a period, at most two). Otherwise the next period
    /// begins, in the bucket that just proved empty.
    pub fn sweep(&self) -> bool {
        let period = self.period.load(Ordering::Relaxed);
        let last = period.wrapping_sub(1);
        if self.bucket(last).load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.period.store(period.wrapping_add(1), Ordering::Relaxed);
        false
    }
}

/// A response body that notes when it waits on the client: from the moment
/// it is handed to hyper, and after each frame it yields, until hyper polls
/// it again.
pub struct Stalling<B> {
    body: B,
    stalls: Arc<Stalls>,
    /// The period it began to wait in, while it waits.
    waiting: Option<u32>,
}

impl<B> Stalling<B> {
    pub fn new(body: B, stalls: Arc<Stalls>) -> Self {
        let waiting = Some(stalls.begin());
        Self {
            body,
            stalls,
            waiting,
        }
    }

    fn stop_waiting(&mut self) {
        if let Some(period) = self.waiting.take() {
            self.stalls.end(period);
        }
    }
}

impl<B> Drop for Stalling<B> {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl<B: Body + Unpin> Body for Stalling<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        this.stop_waiting();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // A frame handed over: hyper comes back once the client has room
        // for more. (Pending waits on the upstream, not the client.)
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream() {
            this.waiting = Some(this.stalls.begin());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    #[test]
    fn a_wait_is_found_once_it_has_lasted_a_whole_period() {
        let stalls = Arc::new(Stalls::default());
        let body = Stalling::new(http_body_util::Empty::<Bytes>::new(), stalls.clone());
        assert!(!stalls.sweep(), "it began in the period just ended");
        assert!(stalls.sweep(), "it has waited through a whole period");
        drop(body);
        assert!(!stalls.sweep());
    }

    #[test]
    fn a_body_polled_again_within_the_period_is_not_stalled() {
        let stalls = Arc::new(Stalls::default());
        let mut body = Stalling::new(http_body_util::Empty::<Bytes>::new(), stalls.clone());
        assert!(!stalls.sweep());
        let _ = Pin::new(&mut body).poll_frame(&mut Context::from_waker(std::task::Waker::noop()));
        assert!(!stalls.sweep(), "polled: no longer waiting");
        assert!(!stalls.sweep());
    }

    #[tokio::test]
    async fn each_frame_handed_over_starts_a_wait_until_the_next_poll() {
        let stalls = Arc::new(Stalls::default());
        let frames = futures_util::stream::iter(
            ["a", "b"].map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)))),
        );
        let mut body = Stalling::new(StreamBody::new(frames), stalls.clone());
        body.frame().await.unwrap().unwrap();
        assert!(!stalls.sweep());
        assert!(stalls.sweep(), "a frame handed over, and no poll since");
        body.frame().await.unwrap().unwrap();
        assert!(!stalls.sweep());
        assert!(body.frame().await.is_none());
        drop(body);
        assert!(!stalls.sweep());
        assert!(!stalls.sweep());
    }
}
