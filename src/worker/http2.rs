//! Serving a client connection over HTTP/2: its streams run inside the
//! connection's own task, and the responses that finish together leave in
//! one write (see `batched_writes`). The header and keep-alive timeouts end
//! the connection with GOAWAY, as a drain does. Settings a client may ask
//! of an HTTP/2 connection (extended CONNECT for WebSockets, RFC 8441)
//! belong here, and so do the limits h2 enforces on a client; those it does
//! not are `http2_guard`'s and `http2_stalls`'.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hyper::server::conn::http2::Builder;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::batched_writes::NextTurn;
use super::http2_guard::{Abuse, Guard, Guarded};
use super::http2_stalls::{Stalling, Stalls};
use super::service::{Conn, service};
use super::socket::Prefixed;
use super::timeouts::Expired;
use crate::plan::ListenerConfig;

/// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS;
/// RFC 9113 advises no fewer than 100). h2 refuses those beyond it with
/// REFUSED_STREAM, and each refusal counts as a reset (see `http2_guard`).
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Streams the client may reset before corral has taken them up; past it,
/// GOAWAY(ENHANCE_YOUR_CALM). Such streams no longer count as open, so this
/// bounds the memory a burst of HEADERS and RST_STREAM pairs can take
/// between two reads (h2's default, set here so that it stays).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams corral may reset for the client's protocol errors over the
/// connection's life (MadeYouReset's lever); past it, GOAWAY. A backstop:
/// `http2_guard` counts the same resets against a budget that refills.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// How much of a request body the client may send ahead of the upstream
/// reading it, per stream and for the whole connection: 1 MiB a connection
/// whatever its streams do.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 20;

/// How much of a response h2 buffers per stream beyond what the client's
/// window lets it send; past it, corral stops reading that upstream. A
/// client reading none of 100 streams holds about 25 MiB (hyper's
/// default, 400 KiB, would make that 40).
const SEND_BUFFER: usize = 256 << 10;

/// The HTTP/2 server for `settings`' connections.
fn builder(settings: &ListenerConfig, streams: Streams) -> Builder<Streams> {
    let mut builder = Builder::new(streams);
    // The same bound as HTTP/1.1's head, counted as RFC 9113 §6.5.2 does
    // (names, values and 32 bytes a field); h2 answers 431 past it. h2
    // derives its bound on CONTINUATION frames from it (a header block
    // may span a quarter more frames than the list needs), and closes
    // with GOAWAY(ENHANCE_YOUR_CALM) past that.
    let max_header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
    // No timer: hyper's HTTP/2 server uses one only for keep-alive PINGs and
    // the adaptive window, both off here.
    builder
        .max_header_list_size(max_header_list)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER)
        // corral's own timeouts end idle connections; a server PING would
        // only add acks to the client's control budget.
        .keep_alive_interval(None);
    builder
}

pub async fn serve_h2<S>(io: Prefixed<S>, conn: &Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &conn.listener.config;
    let guard = Arc::new(Guard::default());
    let stalls = Arc::new(Stalls::default());
    let service = service(conn);
    let watched = stalls.clone();
    // hyper moves each stream's future on its way to `Streams`; boxed, a
    // move is a pointer instead of kilobytes.
    let service = service_fn(move |request| {
        let stalls = watched.clone();
        Box::pin(
            service
                .call(request)
                .map(|r| r.map(|response| response.map(|body| Stalling::new(body, stalls)))),
        )
    });
    let running = Running(Streams::default());
    let streams = &running.0;
    let serving = builder(settings, streams.clone())
        .serve_connection(TokioIo::new(Guarded::new(io, guard.clone())), service);
    tokio::pin!(serving);
    // Once GOAWAY is sent, the connection only finishes its streams: the
    // shutdown and the idle timer, both still ready, must not fire again.
    let mut closing = false;
    // Responses that finish wait for the worker's next turn (see `batched_writes`).
    let mut turn = NextTurn::default();
    // A response the client's flow control holds back gets as long as a
    // request body may pause (one to two periods, see `http2_stalls`).
    let mut sweep_at = Instant::now() + settings.body_timeout;
    loop {
        let (header, idle) = (settings.header_timeout, settings.keepalive_timeout);
        let (deadline, _) = conn.activity.deadline(header, idle);
        tokio::select! {
            biased;
            ended = std::future::poll_fn(|cx| {
                // The streams first: those whose upstreams answered queue
                // their responses, which the connection writes in its poll.
                streams.run(cx, &mut turn);
                if turn.waiting() {
                    return Poll::Pending;
                }
                let ended = serving.as_mut().poll(cx);
                // Start the streams it handed over in the same turn.
                streams.run(cx, &mut turn);
                ended
            }) => {
                if let Some(why) = guard.tripped() {
                    // Its streams end here, and their upstream requests.
                    return tracing::info!(client = %conn.peer(), abuse = why.as_str(), "HTTP/2 client over its limits; sent GOAWAY(ENHANCE_YOUR_CALM)");
                }
                if let Err(e) = ended {
                    tracing::debug!(client = %conn.peer(), error = %e, "connection ended with an error");
                }
                // Streams still answering finish first.
                return std::future::poll_fn(|cx| streams.poll_all(cx)).await;
            }
            // GOAWAY: the client finishes its streams and opens new ones
            // elsewhere, with no race.
            () = conn.activity.shutdown().cancelled(), if !closing => {
                closing = true;
                serving.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline), if !closing => match conn.activity.expired(header, idle) {
                Some(Expired::Header) => {
                    return tracing::debug!(client = %conn.peer(), "no request in time; closing");
                }
                Some(Expired::Idle) => {
                    closing = true;
                    serving.as_mut().graceful_shutdown();
                }
                None => {}
            },
            // The guard sends the GOAWAY as the connection is next polled.
            () = tokio::time::sleep_until(sweep_at) => {
                sweep_at += settings.body_timeout;
                if stalls.sweep() {
                    guard.trip(Abuse::Stalled);
                }
            }
        }
    }
}

/// An HTTP/2 connection's streams, run inside the connection's own task
/// rather than as a tokio task each: a task costs an aligned allocation and
/// a trip through the scheduler per stream, and a connection's streams share
/// its worker thread either way.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<FuturesUnordered<Stream>>>);

/// A connection's hold on its streams: they end with it, however its
/// task ends. Each stream holds the executor (hyper's, for upgrades), so
/// streams still running when the connection ends would otherwise keep each
/// other alive, and their upstream requests with them.
struct Running(Streams);

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped outside the lock: a stream's drop may reach for it.
        let streams = std::mem::take(&mut *self.0.lock());
        drop(streams);
    }
}

/// One stream's work, as hyper hands it over.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Streams {
    fn execute(&self, stream: F) {
        self.lock().push(Box::pin(stream));
    }
}

impl Streams {
    /// The list guards no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, FuturesUnordered<Stream>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls the streams that were woken and those not yet polled; ready
    /// once none is left.
    fn poll_all(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_finished(cx);
        if self.lock().is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Polls the streams that were woken and those not yet polled. When any
    /// finished, the connection holds its writes back until `turn` comes, so
    /// that the responses finishing in this turn leave together.
    fn run(&self, cx: &mut Context<'_>, turn: &mut NextTurn) {
        if self.poll_finished(cx) > 0 {
            turn.wait(cx);
        }
    }

    /// Polls the streams that were woken and those not yet polled; how many
    /// finished.
    fn poll_finished(&self, cx: &mut Context<'_>) -> usize {
        let mut streams = self.lock();
        let mut finished = 0;
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
            finished += 1;
        }
        finished
    }
}
