//! Serving a client connection over HTTP/1.1, and parking it while idle.
//!
//! An HTTP/1.1 connection idle for [`PARK_AFTER`] is parked: its hyper
//! state (two 8 KiB buffers) is dropped and only the socket is kept, until
//! the client's next request arrives and a fresh hyper connection picks it
//! up. So ten thousand idle keep-alive connections cost their sockets, not
//! 160 MiB of buffers. The same mechanism hands the socket to the tunnel
//! after a protocol switch (WebSocket). A request head that takes more than
//! one read is charged to the worker's budget for heads in flight while it
//! arrives, and shed past it (see `head_budget`).

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::head_budget::HeadAccount;
use super::parse_error::{self, ParseErrors};
use super::service::{Conn, service};
use super::socket::{Prefixed, WaitReadable};
use super::timeouts::Expired;

/// While draining, an HTTP/1.1 connection idle this long is closed. Until
/// then it stays open so that the client's next request is answered (with
/// `Connection: close`) rather than racing the close; a client that pauses
/// longer than this between requests is taken to be done.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// An HTTP/1.1 connection idle this long gives up its buffers. Clients that
/// send requests back to back never pay for re-creating them.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Serves the connection `io` holds. The caller keeps the socket (`io` is
/// `None` while hyper has it): an `async fn` keeps its arguments apart from
/// its locals, so a socket taken by value would be held twice for as long
/// as the connection lives.
pub async fn serve_h1<S>(io: &mut Option<Prefixed<S>>, conn: &Conn)
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
{
    while let Some(serving) = io.take() {
        // Boxed: hyper's connection state is most of a connection's
        // future, and a parked connection should not carry room for it.
        let Some(rest) = Box::pin(serve_until_parked(serving, conn)).await else {
            return;
        };
        let rest = io.insert(rest);
        if !rest.has_prefix() {
            // Parked: wait for the next request with nothing but the socket.
            match park(rest, conn).await {
                Some(first) => rest.unread(first),
                None => return,
            }
        }
    }
}

/// Serves requests with one hyper connection until it is parked (the
/// socket, with any bytes read past the last request, is handed back) or
/// the connection is over (`None`).
async fn serve_until_parked<S>(io: Prefixed<S>, conn: &Conn) -> Option<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
{
    let settings = &conn.listener.config;
    // Charges the heads that take more than one read (see `head_budget`).
    let mut head = HeadAccount::new(
        conn.heads.clone(),
        settings.max_header_bytes,
        conn.listener.connections_shed.clone(),
    );
    let answering = ParseErrors::new(io, conn.activity.clone());
    let serving = builder(settings.max_header_bytes)
        .serve_connection(TokioIo::new(answering), service(conn))
        .without_shutdown();
    tokio::pin!(serving);
    let mut parking = false;
    // One timer, moved rather than re-created: it runs at least every
    // PARK_AFTER, which is how an idle connection gets parked, and how a
    // connection between requests learns that the worker drains, without
    // waking its task on every request.
    let timer = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(timer);
    let parts = loop {
        // The drain is noticed here between requests; a response on its
        // way looks for it itself (see `service`), so as to ask the client
        // to close.
        conn.activity.draining();
        let idle = keepalive(conn).min(PARK_AFTER);
        let header = settings.header_timeout;
        let deadline = conn
            .activity
            .deadline(header, idle)
            .0
            .min(Instant::now() + PARK_AFTER);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Whether the timer holds this task's waker for its deadline. A
        // connection's future is polled by its own task only, so once it
        // does, the timer needs a poll again only when it has fired: most
        // wakes are the sockets', and they poll the HTTP state alone.
        let mut armed = false;
        let ended = std::future::poll_fn(|cx| {
            let ended = serving.as_mut().poll(cx);
            head.settle(&conn.activity, cx);
            if let Poll::Ready(ended) = ended {
                return Poll::Ready(Some(ended));
            }
            if parking || (armed && !timer.is_elapsed()) {
                return Poll::Pending;
            }
            armed = true;
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match ended {
            Some(Ok(parts)) => break parts,
            Some(Err(e)) => {
                record_refusal(conn);
                tracing::debug!(client = %conn.peer(), error = %e, "connection ended with an error");
                return None;
            }
            None => {}
        }
        match conn.activity.expired(header, idle) {
            Some(Expired::Header) => {
                tracing::debug!(client = %conn.peer(), "request head not received in time; closing");
                return None;
            }
            // Idle: end hyper's connection at its next read (which now
            // reads as end-of-file) and keep the socket.
            Some(Expired::Idle) => {
                conn.activity.request_park();
                parking = true;
            }
            None => {}
        }
    };
    if record_refusal(conn) {
        // Shed before its first byte (a TLS connection's first head):
        // dropped whole, the socket lingers after the answer.
        return None;
    }
    let parked = conn.activity.take_park();
    let mut rest = parts.io.into_inner().into_inner();
    rest.unread(parts.read_buf);
    if let Some(tunnel) = conn.client.take_tunnel() {
        tunnel.spawn(rest);
        return None;
    }
    // Not parked: hyper ended the connection itself, because the client
    // closed it or asked for `Connection: close`.
    parked.then_some(rest)
}

/// hyper's HTTP/1.1 server, as every connection uses it.
fn builder(max_header_bytes: usize) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No timer: hyper's HTTP/1.1 server uses one only for its header read
    // timeout, off here because `Activity` enforces the header and
    // keep-alive timeouts (see there). Left at its default, the timeout
    // would be dropped with a warning at every connection.
    builder
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes)
        // One buffer per response (head and small body copied together)
        // costs fewer instructions than hyper's vectored writes.
        .writev(false)
        .keep_alive(true);
    builder
}

/// Counts and logs the request corral refused on `conn`, if it refused one;
/// whether it did.
fn record_refusal(conn: &Conn) -> bool {
    let Some(status) = conn.activity.take_refused() else {
        return false;
    };
    if status == http::StatusCode::SERVICE_UNAVAILABLE {
        tracing::debug!(client = %conn.peer(), "request head shed: the worker's heads in flight are over budget");
    }
    let elapsed = conn.activity.head_elapsed().unwrap_or_default();
    parse_error::record(&conn.snapshot.load(), conn.peer().ip(), status, elapsed);
    true
}

/// Waits, with no HTTP state, for the next request; `None` when the
/// connection should close instead (keep-alive timeout, client gone, drain).
async fn park<S: WaitReadable>(io: &mut Prefixed<S>, conn: &Conn) -> Option<Bytes> {
    loop {
        let idle = conn.activity.idle_for().unwrap_or_default();
        let limit = keepalive(conn);
        let deadline = Instant::now() + limit.saturating_sub(idle);
        tokio::select! {
            read = std::future::poll_fn(|cx| io.get_mut().poll_readable(cx)) => return read.ok(),
            () = conn.activity.shutdown().cancelled(), if !conn.activity.is_draining() => conn.activity.drain(),
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// How long an HTTP/1.1 connection may stay idle between requests.
fn keepalive(conn: &Conn) -> Duration {
    let settings = &conn.listener.config;
    if conn.activity.is_draining() {
        settings.keepalive_timeout.min(DRAIN_IDLE)
    } else {
        settings.keepalive_timeout
    }
}
