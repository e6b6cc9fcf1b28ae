//! The reload guard (`[reload_guard]`): a reload that validates can still
//! break traffic (every request sent to a dead upstream, a route lost). For
//! `window` after a reload is confirmed, the master compares the new
//! generation's share of 5xx answers with what the generation before
//! answered over the `window` before the reload; once the new one has
//! `min_requests` answers, a share above `max_error_ratio` and above the
//! one before is a verdict: the master republishes the text of the
//! generation before, as a reload of its own. The bad file stays where it
//! is, and is not read again until it changes.
//!
//! Answers are read from the cluster's counters once a second; upstream
//! failures reach clients as 502, 503 or 504, so they count among the 5xx.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::cluster::Answered;
use crate::plan::ReloadGuardConfig;

/// How often the guard reads the counters.
pub const TICK: Duration = Duration::from_secs(1);

/// What a rollback undid, for the log and `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    /// The generation that answered worse.
    pub from_generation: u64,
    pub requests: u64,
    pub error_ratio: f64,
    /// The share of 5xx of the generation before, over the window before
    /// the reload.
    pub previous_error_ratio: f64,
}

/// A generation found worse: the rollback to make, and the text to make
/// it from.
#[derive(Debug)]
pub struct Verdict {
    pub rollback: Rollback,
    pub previous_text: String,
}

/// A generation being watched.
#[derive(Debug)]
struct Watch {
    generation: u64,
    previous_text: String,
    config: ReloadGuardConfig,
    /// The counters when it was confirmed.
    started: Answered,
    /// What the generation before answered over the window before.
    before: Answered,
    until: Instant,
}

#[derive(Debug, Default)]
pub struct Guard {
    /// The counters once a second, over the last window.
    samples: VecDeque<(Instant, Answered)>,
    watching: Option<Watch>,
}

impl Guard {
    /// Watches `generation`, just confirmed, against the generation before
    /// it (made from `previous_text`); a later reload replaces the watch.
    pub fn watch(
        &mut self,
        generation: u64,
        previous_text: String,
        config: &ReloadGuardConfig,
        now: Answered,
    ) {
        let oldest = self.samples.front().map_or(now, |(_, a)| *a);
        self.watching = Some(Watch {
            generation,
            previous_text,
            config: config.clone(),
            started: now,
            before: now.since(oldest),
            until: Instant::now() + config.window,
        });
    }

    /// Stops watching (a reload that is not to be judged, such as a
    /// rollback, or one of a config without a guard).
    pub fn forget(&mut self) {
        self.watching = None;
    }

    /// Takes a sample of the counters, keeping `window` of them (none
    /// without a guard), and judges the generation watched, if any.
    pub fn sample(&mut self, now: Answered, config: Option<&ReloadGuardConfig>) -> Option<Verdict> {
        let at = Instant::now();
        self.samples.push_back((at, now));
        let window = config.map_or(Duration::ZERO, |c| c.window);
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        let watch = self.watching.as_ref()?;
        let answered = now.since(watch.started);
        let worse = answered.requests >= watch.config.min_requests
            && answered.error_ratio() > watch.config.max_error_ratio
            && answered.error_ratio() > watch.before.error_ratio();
        if worse {
            let watch = self.watching.take()?;
            let rollback = Rollback {
                from_generation: watch.generation,
                requests: answered.requests,
                error_ratio: answered.error_ratio(),
                previous_error_ratio: watch.before.error_ratio(),
            };
            return Some(Verdict {
                rollback,
                previous_text: watch.previous_text,
            });
        }
        if at >= watch.until {
            tracing::info!(
                generation = watch.generation,
                requests = answered.requests,
                error_ratio = answered.error_ratio(),
                "reload guard: the generation answered well enough over its window; kept"
            );
            self.watching = None;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: ReloadGuardConfig = ReloadGuardConfig {
        window: Duration::from_secs(30),
        max_error_ratio: 0.5,
        min_requests: 10,
    };

    fn answered(requests: u64, errors: u64) -> Answered {
        Answered { requests, errors }
    }

    #[tokio::test]
    async fn a_generation_is_rolled_back_only_when_clearly_worse_and_judged_on_enough() {
        let mut guard = Guard::default();
        assert!(guard.sample(answered(100, 1), Some(&CONFIG)).is_none());
        guard.watch(2, "old".into(), &CONFIG, answered(100, 1));
        // Too few answers to judge, however bad.
        assert!(guard.sample(answered(109, 10), Some(&CONFIG)).is_none());
        let verdict = guard
            .sample(answered(110, 11), Some(&CONFIG))
            .expect("worse");
        assert_eq!(verdict.previous_text, "old");
        assert_eq!(verdict.rollback.from_generation, 2);
        assert_eq!(verdict.rollback.requests, 10);
        // Judged once: no second verdict.
        assert!(guard.sample(answered(200, 100), Some(&CONFIG)).is_none());
    }

    #[tokio::test]
    async fn no_worse_than_the_generation_before_is_kept() {
        let mut guard = Guard::default();
        // The generation before failed as often already.
        guard.sample(answered(0, 0), Some(&CONFIG));
        guard.watch(2, "old".into(), &CONFIG, answered(100, 90));
        assert!(guard.sample(answered(200, 180), Some(&CONFIG)).is_none());
    }
}
