//! `[runtime]` and `[access_log]`.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use crate::config::raw::*;
use crate::plan::*;

use super::validator::Validator;
use crate::config::defaults;

/// Pings go out every quarter of the timeout and are answered by the
/// worker's event loop between requests; below this, a loop busy for a few
/// milliseconds would be killed as hung.
const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(100);

impl Validator<'_> {
    pub fn runtime(&mut self, raw: RawRuntime) -> RuntimeConfig {
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        let workers = match raw.workers {
            None => cores,
            Some(w) => match w.get_ref() {
                IntOrString::Str(s) if s == "auto" => cores,
                IntOrString::Int(n) => match usize::try_from(*n).ok().and_then(NonZeroUsize::new) {
                    Some(n) if n.get() <= 1024 => n,
                    _ => {
                        self.problem(w.span(), format!("runtime.workers: {n} is out of range, expected 1 to 1024 or \"auto\""));
                        cores
                    }
                },
                IntOrString::Str(s) => {
                    self.problem(w.span(), format!("runtime.workers: `{s}` is not a worker count, expected a number from 1 to 1024 or \"auto\""));
                    cores
                }
            },
        };
        RuntimeConfig {
            workers,
            shutdown_timeout: self
                .duration_allow_zero(raw.shutdown_timeout.as_ref(), "runtime.shutdown_timeout")
                .unwrap_or(defaults::SHUTDOWN_TIMEOUT),
            cpu_affinity: raw.cpu_affinity.unwrap_or(false),
            heartbeat_timeout: self.timeout_at_least(
                raw.heartbeat_timeout.as_ref(),
                "runtime.heartbeat_timeout",
                MIN_HEARTBEAT_TIMEOUT,
                defaults::HEARTBEAT_TIMEOUT,
            ),
            upgrade_timeout: self.timeout(
                raw.upgrade_timeout.as_ref(),
                "runtime.upgrade_timeout",
                defaults::UPGRADE_TIMEOUT,
            ),
        }
    }

    /// `stdout`, `stderr`, or a file that can be opened for appending: its
    /// folder exists and the file (or, for a new one, the folder) is
    /// writable. Checked here, without creating anything, so that `check`
    /// and a reload refuse a log that every worker would fail to open.
    pub fn log_target(&mut self, raw: &Text) -> LogTarget {
        let path = match raw.get_ref().as_str() {
            "stdout" => return LogTarget::Stdout,
            "stderr" => return LogTarget::Stderr,
            path => self.base.join(path),
        };
        let folder = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let problem = if path.is_dir() {
            Some("is a folder".to_owned())
        } else if !folder.is_dir() {
            Some(format!("its folder {} does not exist", folder.display()))
        } else {
            let probe = if path.exists() {
                path.as_path()
            } else {
                folder
            };
            nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK)
                .err()
                .map(|e| format!("{} is not writable ({})", probe.display(), e.desc()))
        };
        if let Some(why) = problem {
            self.problem(
                raw.span(),
                format!("access_log.path: cannot open {} for appending: {why}; expected \"stdout\", \"stderr\" or a writable file", path.display()),
            );
        }
        LogTarget::File(path)
    }
}
