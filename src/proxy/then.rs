//! A future whose output a closure turns into another, as `FutureExt::map`
//! does, but without moving the future: `futures_util`'s `Map` takes its
//! closure back by replacing itself whole, which copies a request's entire
//! future (over a kilobyte) at every completion.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project_lite::pin_project! {
    /// See [`then`].
    pub struct Then<Fut, F> {
        #[pin]
        future: Fut,
        f: Option<F>,
    }
}

/// `future`, its output passed through `f`.
pub fn then<Fut: Future, F: FnOnce(Fut::Output) -> T, T>(future: Fut, f: F) -> Then<Fut, F> {
    Then { future, f: Some(f) }
}

impl<Fut: Future, F: FnOnce(Fut::Output) -> T, T> Future for Then<Fut, F> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.project();
        if this.f.is_none() {
            // Polled again after completing: never completes again, as
            // the contract of `Future` allows, rather than polling the
            // finished future inside.
            return Poll::Pending;
        }
        let output = ready!(this.future.poll(cx));
        match this.f.take() {
            Some(f) => Poll::Ready(f(output)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_output_goes_through_the_closure_once_the_future_is_ready() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let doubled = tokio::spawn(then(rx, |n: Result<u32, _>| n.unwrap() * 2));
        tx.send(21).unwrap();
        assert_eq!(doubled.await.unwrap(), 42);
    }
}
