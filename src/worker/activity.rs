//! Per-connection timekeeping for the client-side timeouts.
//!
//! hyper's own HTTP/1.1 header timer starts as soon as a connection is idle,
//! which would make the keep-alive timeout equal the header timeout, and
//! hyper-util's protocol sniffing has no timer at all. So corral keeps its
//! own: the socket wrapper [`Watched`] notes the first byte that arrives while
//! no request is in flight, the service notes requests starting and ending,
//! and [`Activity::deadline`] says when the connection has waited too long:
//!
//! - before the first request, and from the first byte of any later one:
//!   `header_timeout` to deliver a complete request head;
//! - between requests: `keepalive_timeout` of silence;
//! - while a request is in flight: no limit here (upstream and body timeouts
//!   apply instead).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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
    /// (see [`Prefixed`]).
    park: AtomicBool,
    /// Set once the connection has seen the worker start to drain. A flag
    /// the request path can read for the price of a load, where the
    /// shutdown token takes a lock.
    draining: AtomicBool,
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
    pub fn new() -> Arc<Self> {
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
            draining: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn saw_bytes(&self) {
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
        RequestGuard(self.clone())
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

    /// Notes that the worker is draining.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ends the HTTP/1.1 state of an idle connection at its next read.
    pub fn request_park(&self) {
        self.park.store(true, Ordering::Relaxed);
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

/// Marks the end of a request when dropped (with its response body).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    pub fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // `max(1)`: 0 means "never idle yet" to `deadline`.
            self.0
                .idle_since
                .store(self.0.now_ms().max(1), Ordering::Relaxed);
        }
    }
}

/// Both socket layers write straight through to the socket below.
macro_rules! forward_write {
    ($layer:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $layer<S> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

/// The top of a client connection's IO, under the HTTP/1.1 server: first
/// the bytes already read from the socket (sniffed, or left over by an
/// earlier hyper connection), then the socket. When a park is requested it
/// reads as end-of-file, which ends hyper's connection cleanly while idle
/// and hands the socket back (`without_shutdown`), nothing lost: any bytes
/// the client sent meanwhile are still in the socket.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S, activity: Arc<Activity>) -> Self {
        Self {
            prefix,
            inner,
            activity,
        }
    }

    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Puts `bytes` back in front of whatever is still unread.
    pub fn unread(&mut self, bytes: Bytes) {
        // An empty remnant is not kept: it may still hold its whole buffer
        // (hyper's read buffer, when a connection parks).
        if bytes.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = bytes.to_vec();
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.into();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // Let go of the buffer the prefix was cut from.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if self.activity.park.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

forward_write!(Prefixed);

/// Waiting, without buffers, for a parked connection's next request.
pub trait WaitReadable {
    /// Resolves once the client has sent something (or closed), with
    /// whatever had to be read to find out.
    fn wait_readable(&mut self) -> impl Future<Output = io::Result<Bytes>> + Send;
}

impl WaitReadable for Watched<tokio::net::TcpStream> {
    async fn wait_readable(&mut self) -> io::Result<Bytes> {
        // Peek, not read: the bytes stay in the socket for hyper to read in
        // one go. (Readiness alone is not enough: tokio may still hold it
        // from before the socket was drained.)
        match self.inner.peek(&mut [0u8; 1]).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(Bytes::new()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WaitReadable for tokio_rustls::server::TlsStream<S> {
    async fn wait_readable(&mut self) -> io::Result<Bytes> {
        // The socket being readable says nothing about decrypted bytes, so
        // read one.
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match self.read(&mut byte).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(Bytes::copy_from_slice(&byte)),
        }
    }
}

/// A client socket that reports incoming bytes to its [`Activity`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.saw_bytes();
        }
        polled
    }
}

forward_write!(Watched);

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const KEEPALIVE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_a_request_head() {
        let a = Activity::new();
        let (at, why) = a.deadline(HEADER, KEEPALIVE);
        assert_eq!(why, Some(Expired::Header));
        assert_eq!(at, a.epoch + HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_keepalive_then_a_started_head_gets_header_timeout() {
        let a = Activity::new();
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
        let a = Activity::new();
        let _g = a.begin(false);
        a.saw_bytes();
        assert_eq!(a.deadline(HEADER, KEEPALIVE).1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_between_requests_do_not_start_a_head() {
        let a = Activity::new();
        drop(a.begin(true));
        a.saw_bytes();
        assert_eq!(a.deadline(HEADER, KEEPALIVE).1, Some(Expired::Idle));
    }

    /// A buffer that says when it is freed.
    struct Watchful(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for Watchful {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Watchful {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    fn watched_buffer(content: &[u8]) -> (Bytes, Arc<AtomicBool>) {
        let freed = Arc::new(AtomicBool::new(false));
        let mut buf = content.to_vec();
        buf.reserve(4096);
        (Bytes::from_owner(Watchful(buf, freed.clone())), freed)
    }

    #[tokio::test]
    async fn a_consumed_prefix_lets_go_of_its_buffer() {
        use tokio::io::AsyncReadExt as _;
        let (prefix, freed) = watched_buffer(b"GET / ");
        let mut io = Prefixed::new(prefix, &b"HTTP/1.1"[..], Activity::new());
        let mut first = [0u8; 4];
        io.read_exact(&mut first).await.unwrap();
        assert!(!freed.load(Ordering::Relaxed), "still two bytes to read");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"/ HTTP/1.1");
        assert!(freed.load(Ordering::Relaxed));
    }

    #[test]
    fn an_empty_remnant_is_not_kept() {
        let (remnant, freed) = watched_buffer(b"");
        let mut io = Prefixed::new(Bytes::new(), &b""[..], Activity::new());
        io.unread(remnant);
        assert!(freed.load(Ordering::Relaxed));
        assert!(!io.has_prefix());
    }
}
