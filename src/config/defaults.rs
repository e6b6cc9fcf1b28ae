//! The value each optional key takes when the file leaves it out.
//!
//! One place for two readers: validation falls back to these, and the JSON
//! Schema (`corral schema`) shows them as each key's `default`, so an editor
//! and `corral check` cannot disagree. Limits (the smallest and largest value
//! a key accepts) stay beside the checks that enforce them.

use std::num::NonZeroU32;
use std::time::Duration;

// `[runtime]`
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Short enough that a hung worker is replaced within a second (checks run
/// every quarter of it), long enough that a busy one is never mistaken for hung.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(750);
/// Long enough for a new master on a busy host to spawn every worker and
/// have each build its snapshot.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

// `[resolver]`
/// Long enough for a nameserver across a datacenter, short enough that a
/// dead one does not hold back the next.
pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);

// `[reload_guard]`
pub const RELOAD_GUARD_WINDOW: Duration = Duration::from_secs(30);
pub const RELOAD_GUARD_MAX_ERROR_RATIO: f64 = 0.5;
/// Few enough to judge a quiet service within its window, enough that a
/// handful of unlucky answers does not undo a good reload.
pub const RELOAD_GUARD_MIN_REQUESTS: u64 = 20;

// `[[listeners]]`
pub const BACKLOG: u32 = 1024;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Where the ACME state folder is when the file does not say: the folder
/// systemd's `StateDirectory=corral` makes.
pub const ACME_STATE_DIR: &str = "/var/lib/corral/acme";

// `[[upstreams]]`
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const UPSTREAM_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
pub const MAX_IDLE_PER_SERVER: usize = 128;
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// What a gateway says when the server behind it failed; a retry on
/// another server may fare better.
pub const RETRY_ON: [u16; 3] = [502, 503, 504];
pub const RETRY_BUDGET: f64 = 0.2;
/// Long enough to ride out a burst, short enough that a client is not left
/// guessing.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DNS_REFRESH: Duration = Duration::from_secs(5);
pub const EJECT_AFTER: NonZeroU32 = NonZeroU32::new(5).expect("non-zero");
pub const EJECT_TIME: Duration = Duration::from_secs(10);
/// Half: one bad deploy of two cannot take the other out with it.
pub const EJECT_SHARE: f64 = 0.5;
pub const HEALTH_PATH: &str = "/";
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(2).expect("non-zero");
pub const UNHEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).expect("non-zero");

/// A duration as README writes it (`"750ms"`, `"60s"`): how the schema
/// shows a default.
pub fn written(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
