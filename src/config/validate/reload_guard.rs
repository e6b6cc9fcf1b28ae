//! `[reload_guard]`: how long a new generation is watched, and how much
//! worse than the one before it may answer before it is rolled back.

use std::time::Duration;

use super::validator::Validator;
use crate::config::defaults;
use crate::config::raw::RawReloadGuard;
use crate::plan::ReloadGuardConfig;

/// The guard judges once a second: a shorter window could not be judged.
const MIN_WINDOW: Duration = Duration::from_secs(2);

impl Validator<'_> {
    pub fn reload_guard(&mut self, raw: RawReloadGuard) -> ReloadGuardConfig {
        let window = self.timeout_at_least(
            raw.window.as_ref(),
            "reload_guard.window",
            MIN_WINDOW,
            defaults::RELOAD_GUARD_WINDOW,
        );
        let max_error_ratio = self.share(
            raw.max_error_ratio,
            "reload_guard.max_error_ratio",
            defaults::RELOAD_GUARD_MAX_ERROR_RATIO,
        );
        let min_requests = raw
            .min_requests
            .and_then(|n| self.int_in(&n, 1, 1_000_000, "reload_guard.min_requests"))
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(defaults::RELOAD_GUARD_MIN_REQUESTS);
        ReloadGuardConfig {
            window,
            max_error_ratio,
            min_requests,
        }
    }
}
