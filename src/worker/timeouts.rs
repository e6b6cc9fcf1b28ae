//! Per-connection timekeeping for the client-side timeouts: [`Activity`].
//!
//! hyper's own HTTP/1.1 header timer starts as soon as a connection is idle,
//! which would make the keep-alive timeout equal the header timeout, and
//! hyper-util's protocol sniffing has no timer at all. So corral keeps its
//! own: the socket wrapper `Watched` (see `socket`) notes the first byte that arrives while
//! no request is in flight, the service notes requests starting and ending,
//! and [`Activity::deadline`] says when the connection has waited too long:
//!
//! - before the first request, and from the first byte of any later one:
//!   `header_timeout` to deliver a complete request head;
//! - between requests: `keepalive_timeout` of silence;
//! - while a request is in flight: no limit here (upstream and body timeouts
//!   apply instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Requests begun over the connection's life.
    requests: AtomicU64,
    /// The status hyper refused an unparsable request with, or 0 (see
    /// `parse_error`).
    refused: AtomicU16,
    /// When the connection last became idle (ms since `epoch`).
    idle_since: AtomicU64,
    /// When the first byte of a new request head arrived (ms since `epoch`),
    /// or `NONE` while the connection is silent or busy.
    head_since: AtomicU64,
    /// HTTP/2 multiplexes control frames with requests, so bytes between
    /// requests say nothing about a request head.
    multiplexed: AtomicBool,
    /// Set to end an idle HTTP/1.1 connection's hyper state at its next read
    /// (see `socket::Prefixed`).
    park: AtomicBool,
    /// Set once the worker's request-head budget shed the head being read
    /// (see `head_budget`): the connection answers 503 and closes.
    shed: AtomicBool,
    /// Set once the connection has seen the worker start to drain. A flag
    /// the request path can read for the price of a load, where the
    /// shutdown token takes a lock.
    draining: AtomicBool,
    /// The worker's shutdown, which `draining` mirrors.
    shutdown: Arc<CancellationToken>,
}

/// Why a connection's wait is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head took longer than `header_timeout`.
    Header,
    /// No request for `keepalive_timeout`.
    Idle,
}

impl Activity {
    /// A new connection's, in a worker that stops at `shutdown`.
    pub fn new(shutdown: Arc<CancellationToken>) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU16::new(0),
            idle_since: AtomicU64::new(0),
            // The connection is open: its first request head is due.
            head_since: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            park: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown,
        })
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes arrived from the client.
    pub fn saw_bytes(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request arrived; the guard marks its end when dropped.
    pub fn begin(self: &Arc<Self>, multiplexed: bool) -> RequestGuard {
        if multiplexed {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
            ended: false,
        }
    }

    /// Requests begun over the connection's life.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Notes that hyper refused a request it could not parse.
    pub fn refused(&self, status: http::StatusCode) {
        self.refused.store(status.as_u16(), Ordering::Relaxed);
    }

    /// The status a request was refused with, if one was (and clears it).
    pub fn take_refused(&self) -> Option<http::StatusCode> {
        http::StatusCode::from_u16(self.refused.swap(0, Ordering::Relaxed)).ok()
    }

    /// How long the request head now arriving has taken so far.
    pub fn head_elapsed(&self) -> Option<Duration> {
        let head = self.head_since.load(Ordering::Relaxed);
        (head != NONE).then(|| Duration::from_millis(self.now_ms().saturating_sub(head)))
    }

    /// How long the connection has been idle between requests (`None`
    /// while a request is in flight or a head is arriving).
    pub fn idle_for(&self) -> Option<Duration> {
        let idle = self.idle_since.load(Ordering::Relaxed);
        let quiet = self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE;
        (quiet && idle != 0)
            .then(|| self.now_ms().saturating_sub(idle))
            .map(Duration::from_millis)
    }

    /// Whether an HTTP/1.1 connection is waiting for the rest of a request
    /// head (or, new, for its first one): no request in flight, and not
    /// idle between requests.
    pub fn reading_head(&self) -> bool {
        !self.multiplexed.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) != NONE
    }

    /// Sheds the request head being read: the connection is to answer 503
    /// and close.
    pub fn request_shed(&self) {
        self.shed.store(true, Ordering::Relaxed);
    }

    /// Whether the head being read was shed. Never while a request is in
    /// flight: a response may be on its way, and the shed concerns a head.
    pub fn shed_requested(&self) -> bool {
        self.shed.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Notes that the worker is draining.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the connection has noted the drain yet (a load).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the worker drains, from its shutdown token (which takes a
    /// lock) until that says so, noted from then on.
    pub fn draining(&self) -> bool {
        if !self.is_draining() && self.shutdown.is_cancelled() {
            self.drain();
        }
        self.is_draining()
    }

    /// The worker's shutdown, for a wait that must end with it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Ends the HTTP/1.1 state of an idle connection at its next read.
    pub fn request_park(&self) {
        self.park.store(true, Ordering::Relaxed);
    }

    /// Whether a park is requested.
    pub fn park_requested(&self) -> bool {
        self.park.load(Ordering::Relaxed)
    }

    /// Whether a park was requested (and clears the request).
    pub fn take_park(&self) -> bool {
        self.park.swap(false, Ordering::Relaxed)
    }

    /// Why the connection's wait is over now, if it is (a request may have
    /// started since the timer was set).
    pub fn expired(
        &self,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> Option<Expired> {
        let (deadline, why) = self.deadline(header_timeout, keepalive_timeout);
        if deadline > Instant::now() { None } else { why }
    }

    /// When the connection's current wait runs out, and why.
    pub fn deadline(
        &self,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> (Instant, Option<Expired>) {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: look again later.
            return (Instant::now() + keepalive_timeout, None);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        // A request head is arriving, or (HTTP/2, where bytes between
        // requests may be control frames) no request has been made yet.
        if head != NONE && (!self.multiplexed.load(Ordering::Relaxed) || idle_since == 0) {
            return (self.at(head) + header_timeout, Some(Expired::Header));
        }
        (self.at(idle_since) + keepalive_timeout, Some(Expired::Idle))
    }
}

/// Marks the end of a request when dropped (with its response body), or
/// at [`RequestGuard::end`].
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
    ended: bool,
}

impl RequestGuard {
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Marks the end of the request at `now`, a reading the caller has.
    pub fn end(&mut self, now: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let a = &self.activity;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // `max(1)`: 0 means "never idle yet" to `deadline`.
            a.idle_since.store(a.ms_at(now).max(1), Ordering::Relaxed);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const KEEPALIVE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_a_request_head() {
        let a = Activity::new(Arc::default());
        let (at, why) = a.deadline(HEADER, KEEPALIVE);
        assert_eq!(why, Some(Expired::Header));
        assert_eq!(at, a.epoch + HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_keepalive_then_a_started_head_gets_header_timeout() {
        let a = Activity::new(Arc::default());
        drop(a.begin(false));
        tokio::time::advance(Duration::from_secs(30)).await;
        let (at, why) = a.deadline(HEADER, KEEPALIVE);
        assert_eq!(why, Some(Expired::Idle));
        assert!(at > Instant::now());
        a.saw_bytes();
        let (at, why) = a.deadline(HEADER, KEEPALIVE);
        assert_eq!(why, Some(Expired::Header));
        assert_eq!(at, Instant::now() + HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_never_expire() {
        let a = Activity::new(Arc::default());
        let _g = a.begin(false);
        a.saw_bytes();
        assert_eq!(a.deadline(HEADER, KEEPALIVE).1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_being_read_from_the_start_and_after_bytes_between_requests() {
        let a = Activity::new(Arc::default());
        assert!(a.reading_head());
        let request = a.begin(false);
        assert!(!a.reading_head());
        drop(request);
        assert!(!a.reading_head(), "idle between requests");
        a.saw_bytes();
        assert!(a.reading_head());
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_between_requests_do_not_start_a_head() {
        let a = Activity::new(Arc::default());
        drop(a.begin(true));
        a.saw_bytes();
        assert_eq!(a.deadline(HEADER, KEEPALIVE).1, Some(Expired::Idle));
    }
}
