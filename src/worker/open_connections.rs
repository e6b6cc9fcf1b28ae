//! How many connections a listener has open in this worker, which is what
//! `max_connections` limits: [`OpenConnections`] counts them, each holding
//! an [`Opened`] until it closes, and wakes the listener's accept loop when
//! one closes or the limit may have changed (a reload).
//!
//! It only counts and wakes; the accept loop decides (see `server`).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The open connections of one listener in this worker.
#[derive(Debug, Default)]
pub struct OpenConnections {
    open: AtomicUsize,
    /// Woken when a connection closes or the config changes. `notify_one`
    /// keeps the wake-up for a loop that is not waiting yet, so none is
    /// lost between its check and its wait.
    changed: Notify,
}

impl OpenConnections {
    /// Counts a connection open until the returned guard is dropped.
    pub fn open(self: &Arc<Self>) -> Opened {
        self.open.fetch_add(1, Ordering::Relaxed);
        Opened(self.clone())
    }

    /// Whether `limit` connections (or more) are open.
    pub fn at(&self, limit: Option<NonZeroUsize>) -> bool {
        limit.is_some_and(|limit| self.open.load(Ordering::Relaxed) >= limit.get())
    }

    /// Resolves after a connection closed or [`Self::wake`] was called
    /// (possibly before this call); the count may still be at the limit.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Wakes the loop waiting in [`Self::changed`], for a new limit.
    pub fn wake(&self) {
        self.changed.notify_one();
    }
}

/// One open connection; it counts as closed when dropped.
#[derive(Debug)]
pub struct Opened(Arc<OpenConnections>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: usize) -> Option<NonZeroUsize> {
        NonZeroUsize::new(n)
    }

    #[tokio::test]
    async fn a_close_wakes_the_waiting_loop_even_if_it_came_first() {
        let open = Arc::new(OpenConnections::default());
        let first = open.open();
        let _second = open.open();
        assert!(open.at(limit(2)));
        assert!(!open.at(limit(3)));
        assert!(!open.at(None));
        drop(first);
        assert!(!open.at(limit(2)));
        // The close came before the wait: the wait still ends.
        open.changed().await;
    }

    #[tokio::test]
    async fn a_wake_ends_the_wait_with_nothing_closed() {
        let open = Arc::new(OpenConnections::default());
        let _held = open.open();
        open.wake();
        open.changed().await;
        assert!(open.at(limit(1)));
    }
}
