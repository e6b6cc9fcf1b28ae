//! The retry budget of one upstream in one worker: over the last ten
//! seconds, retries may be at most a share of the requests, plus a small
//! floor so that a quiet upstream can still retry at all (as Finagle's
//! `RetryBudget` and Envoy's retry budgets bound them). When every server
//! fails, retries then add at most that share to the load instead of
//! multiplying it.

use std::sync::Mutex;

use tokio::time::Instant;

/// Seconds the budget looks back over, one bucket each.
const WINDOW: usize = 10;

/// Retries allowed over a window whatever the share: one a second.
const FLOOR: u32 = WINDOW as u32;

#[derive(Debug)]
pub struct RetryBudget {
    share: f64,
    born: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The second (since `born`) of the newest bucket.
    newest: u64,
    /// Requests and retries per second, by second modulo `WINDOW`.
    requests: [u32; WINDOW],
    retries: [u32; WINDOW],
}

impl Window {
    /// Moves the window on to `second`, emptying the buckets it passed.
    fn advance(&mut self, second: u64) {
        if second <= self.newest {
            return;
        }
        let passed = usize::try_from(second - self.newest).unwrap_or(WINDOW);
        for s in 1..=passed.min(WINDOW) {
            let bucket = bucket(self.newest + s as u64);
            self.requests[bucket] = 0;
            self.retries[bucket] = 0;
        }
        self.newest = second;
    }
}

fn bucket(second: u64) -> usize {
    // The remainder is below WINDOW, so it fits.
    (second % WINDOW as u64) as usize
}

impl RetryBudget {
    pub fn new(share: f64) -> Self {
        Self {
            share,
            born: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// The window, moved on to `now`.
    fn at(&self, now: Instant) -> (std::sync::MutexGuard<'_, Window>, usize) {
        let second = now.saturating_duration_since(self.born).as_secs();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.advance(second);
        (window, bucket(second))
    }

    /// Counts a request (its first attempt).
    pub fn request(&self, now: Instant) {
        let (mut window, bucket) = self.at(now);
        window.requests[bucket] = window.requests[bucket].saturating_add(1);
    }

    /// Whether a retry fits the budget; one that does is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let (mut window, bucket) = self.at(now);
        let requests: u32 = window.requests.iter().sum();
        let retries: u32 = window.retries.iter().sum();
        let allowed = self.share * f64::from(requests) + f64::from(FLOOR);
        if f64::from(retries) < allowed {
            window.retries[bucket] = window.retries[bucket].saturating_add(1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_stay_within_the_share_plus_the_floor() {
        let budget = RetryBudget::new(0.2);
        let now = budget.born;
        for _ in 0..100 {
            budget.request(now);
        }
        let granted = (0..100).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 20 + FLOOR as usize);
    }

    #[test]
    fn no_share_still_leaves_the_floor() {
        let budget = RetryBudget::new(0.0);
        let now = budget.born;
        for _ in 0..1000 {
            budget.request(now);
        }
        assert_eq!(
            (0..100).filter(|_| budget.try_retry(now)).count(),
            FLOOR as usize
        );
    }

    #[test]
    fn the_window_forgets_what_is_older_than_ten_seconds() {
        let budget = RetryBudget::new(0.0);
        let start = budget.born;
        assert_eq!(
            (0..100).filter(|_| budget.try_retry(start)).count(),
            FLOOR as usize
        );
        // Nine seconds on, the spent retries still count; ten on, they do not.
        assert!(!budget.try_retry(start + Duration::from_secs(9)));
        let later = start + Duration::from_secs(10);
        assert_eq!(
            (0..100).filter(|_| budget.try_retry(later)).count(),
            FLOOR as usize
        );
        // A long quiet spell empties every bucket.
        let much_later = start + Duration::from_secs(1000);
        assert_eq!(
            (0..100).filter(|_| budget.try_retry(much_later)).count(),
            FLOOR as usize
        );
    }
}
