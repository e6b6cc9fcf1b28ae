//! Holding an HTTP/2 connection's writes until the scheduler's next turn:
//! until the worker has run the other tasks that are ready and checked its
//! sockets once more.
//!
//! An HTTP/2 connection holds its writes back this long when streams finish,
//! so that responses whose upstreams answer at about the same time leave in
//! one write (and the client's next requests come in one read) instead of a
//! system call each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

/// A wait for the next turn, started by [`NextTurn::wait`].
#[derive(Default)]
pub struct NextTurn(Option<Arc<Turn>>);

/// Wakes the waiting task when the turn comes, and remembers that it came:
/// the task may be woken sooner for other reasons.
struct Turn {
    come: AtomicBool,
    task: Waker,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.come.store(true, Ordering::Relaxed);
        self.task.wake_by_ref();
    }
}

impl NextTurn {
    /// Starts waiting for the next turn, unless a wait is already on.
    pub fn wait(&mut self, cx: &Context<'_>) {
        if self.0.is_some() {
            return;
        }
        let turn = Arc::new(Turn {
            come: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        // `yield_now` gives its waker to the scheduler, which wakes it after
        // its next check of the sockets; the future itself is done with.
        let waker = Waker::from(turn.clone());
        let _ = std::pin::pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
        self.0 = Some(turn);
    }

    /// Whether a wait is on and its turn has not come; a wait whose turn
    /// has come is over.
    pub fn waiting(&mut self) -> bool {
        match &self.0 {
            Some(turn) if !turn.come.load(Ordering::Relaxed) => true,
            _ => {
                self.0 = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::poll_fn;
    use std::task::Poll;

    #[tokio::test]
    async fn a_wait_lasts_until_the_ready_tasks_have_run_and_the_sockets_were_checked() {
        let waiter = tokio::spawn(async {
            let ran = Arc::new(AtomicBool::new(false));
            let mut turn = NextTurn::default();
            // (waiting, whether the other task has run) at each poll.
            let mut seen = Vec::new();
            poll_fn(|cx| {
                if seen.is_empty() {
                    turn.wait(cx);
                    let ran = ran.clone();
                    tokio::spawn(async move { ran.store(true, Ordering::Relaxed) });
                    // Woken before the turn, as a connection is by its streams.
                    cx.waker().wake_by_ref();
                }
                let waiting = turn.waiting();
                seen.push((waiting, ran.load(Ordering::Relaxed)));
                if waiting {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            seen
        });
        let seen = waiter.await.unwrap_or_default();
        assert_eq!(seen, [(true, false), (true, true), (false, true)]);
    }
}
