//! One client connection: TLS, HTTP/1.1 or HTTP/2, timeouts, drain, and
//! parking idle connections.
//!
//! A TLS connection speaks what ALPN chose; a plain one is sniffed (HTTP/2
//! with prior knowledge starts with a fixed preface). Each request goes to
//! [`proxy::handle`] with the snapshot current when it arrived.
//!
//! An HTTP/1.1 connection idle for [`PARK_AFTER`] is parked: its hyper
//! state (two 8 KiB buffers) is dropped and only the socket is kept, until
//! the client's next request arrives and a fresh hyper connection picks it
//! up. So ten thousand idle keep-alive connections cost their sockets, not
//! 160 MiB of buffers. The same mechanism hands the socket to the tunnel
//! after a protocol switch (WebSocket).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Expired, Prefixed, RequestGuard, WaitReadable, Watched};
use super::parse_error::{self, ParseErrors};
use super::turn::NextTurn;
use crate::body::ResponseBody;
use crate::proxy::{self, Client};
use crate::snapshot::{ListenerSnapshot, SharedSnapshot};

/// While draining, an HTTP/1.1 connection idle this long is closed. Until
/// then it stays open so that the client's next request is answered (with
/// `Connection: close`) rather than racing the close; a client that pauses
/// longer than this between requests is taken to be done.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// An HTTP/1.1 connection idle this long gives up its buffers. Clients that
/// send requests back to back never pay for re-creating them.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What every request of a connection shares.
struct Conn {
    peer: SocketAddr,
    listener: Arc<ListenerSnapshot>,
    runtime: SharedSnapshot,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
    client: Arc<Client>,
}

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerSnapshot>,
    runtime: SharedSnapshot,
    shutdown: CancellationToken,
) {
    listener.connections.add(1);
    listener.connections_active.inc();
    let _open = Open(listener.clone());
    // No TCP_NODELAY call here: accepted sockets inherit it from the
    // listening socket (see `master::sockets::bind`).
    let activity = Activity::new();
    let stream = Watched::new(stream, activity.clone());
    let client = Arc::new(Client::new(peer, listener.tls.is_some(), listener.clone()));
    let conn = Conn {
        peer,
        listener,
        runtime,
        activity,
        shutdown,
        client,
    };
    match conn.listener.tls.clone() {
        None => serve_plain(stream, &conn).await,
        // Boxed: the handshake's state is large, and plain connections
        // should not carry room for it.
        Some(tls) => Box::pin(serve_tls(stream, tls, &conn)).await,
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve_plain(mut stream: Watched<TcpStream>, conn: &Conn) {
    let sniffed =
        tokio::time::timeout(conn.listener.config.header_timeout, sniff(&mut stream)).await;
    let (prefix, h2) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            return tracing::debug!(client = %conn.peer, error = %e, "reading the connection failed");
        }
        Err(_) => {
            return tracing::debug!(client = %conn.peer, "request head not received in time; closing");
        }
    };
    let io = Prefixed::new(prefix, stream, conn.activity.clone());
    if h2 {
        // Boxed: an HTTP/2 connection's state is half again an HTTP/1.1
        // one's, and every idle keep-alive connection would carry room for
        // it.
        Box::pin(serve_h2(io, conn)).await
    } else {
        serve_h1(io, conn).await
    }
}

/// How much the first read of a plain connection asks for: a whole typical
/// request head, which hyper then takes from the prefix, so that sniffing
/// the protocol costs no read of its own.
const FIRST_READ: usize = 4096;

/// Reads until the bytes are, or cannot be, the HTTP/2 preface.
async fn sniff(stream: &mut Watched<TcpStream>) -> std::io::Result<(Bytes, bool)> {
    // The buffer is taken only once there is something to read, so that
    // connections that stay silent hold none.
    stream.get_ref().readable().await?;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        let read = stream.read_buf(&mut buf).await?;
        let n = buf.len().min(H2_PREFACE.len());
        if read == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok((buf.freeze(), false));
        }
        if n == H2_PREFACE.len() {
            return Ok((buf.freeze(), true));
        }
    }
}

async fn serve_tls(stream: Watched<TcpStream>, tls: Arc<rustls::ServerConfig>, conn: &Conn) {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout(conn.listener.config.header_timeout, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return tracing::debug!(client = %conn.peer, error = %e, "TLS handshake failed");
        }
        Err(_) => return tracing::debug!(client = %conn.peer, "TLS handshake timed out"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = Prefixed::new(Bytes::new(), stream, conn.activity.clone());
    if h2 {
        // Boxed for the same reason as in `serve_plain`.
        Box::pin(serve_h2(io, conn)).await
    } else {
        serve_h1(io, conn).await
    }
}

/// The service every request of `conn` goes through (it owns what it
/// needs, so each request's future stands on its own).
fn service(
    conn: &Conn,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Tracked>, Infallible>> + Send + use<>,
> + Clone
+ Send
+ use<> {
    let activity = conn.activity.clone();
    let runtime = conn.runtime.clone();
    let client = conn.client.clone();
    service_fn(move |request: Request<Incoming>| {
        let multiplexed = request.version() == Version::HTTP_2;
        let guard = activity.begin(multiplexed);
        let snapshot = runtime.load_full();
        let client = client.clone();
        // A combinator, not an `async` block (see `proxy::handle`).
        proxy::handle(snapshot, client, request).map(move |mut response| {
            if guard.activity().is_draining() && !multiplexed {
                // Tell the client, before it sends another request on this
                // connection, that the connection is closing.
                let close = http::HeaderValue::from_static("close");
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, close);
            }
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _guard: guard,
            }))
        })
    })
}

async fn serve_h1<S>(mut io: Prefixed<S>, conn: &Conn)
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
{
    let settings = &conn.listener.config;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // `Activity` enforces the header and keep-alive timeouts (see there).
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes)
        // One buffer per response (head and small body copied together)
        // costs fewer instructions than hyper's vectored writes.
        .writev(false)
        .keep_alive(true);
    let service = service(conn);
    let mut parked = false;
    loop {
        if parked && !io.has_prefix() {
            // Parked: wait for the next request with nothing but the socket.
            match park(&mut io, conn).await {
                Some(first) => io.unread(first),
                None => return,
            }
        }
        let answering = ParseErrors::new(io, conn.activity.clone());
        let serving = builder
            .serve_connection(TokioIo::new(answering), service.clone())
            .without_shutdown();
        tokio::pin!(serving);
        let mut parking = false;
        // One timer, moved rather than re-created: it runs at least every
        // PARK_AFTER, which is how an idle connection gets parked without
        // waking its task on every request.
        let timer = tokio::time::sleep(PARK_AFTER);
        tokio::pin!(timer);
        let parts = loop {
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
            tokio::select! {
                // The drain first, so that a response finished in the same
                // turn already asks the client to close.
                biased;
                () = conn.shutdown.cancelled(), if !conn.activity.is_draining() => conn.activity.drain(),
                ended = serving.as_mut() => match ended {
                    Ok(parts) => break parts,
                    Err(e) => {
                        if let Some(status) = conn.activity.take_refused() {
                            let elapsed = conn.activity.head_elapsed().unwrap_or_default();
                            parse_error::record(&conn.runtime.load(), conn.peer.ip(), status, elapsed);
                        }
                        return tracing::debug!(client = %conn.peer, error = %e, "connection ended with an error");
                    }
                },
                () = timer.as_mut(), if !parking => match conn.activity.expired(header, idle) {
                    Some(Expired::Header) => {
                        return tracing::debug!(client = %conn.peer, "request head not received in time; closing");
                    }
                    // Idle: end hyper's connection at its next read (which
                    // now reads as end-of-file) and keep the socket.
                    Some(Expired::Idle) => {
                        conn.activity.request_park();
                        parking = true;
                    }
                    None => {}
                },
            }
        };
        parked = conn.activity.take_park();
        let mut rest = parts.io.into_inner().into_inner();
        rest.unread(parts.read_buf);
        if let Some(tunnel) = conn.client.take_tunnel() {
            return tunnel.spawn(rest);
        }
        if !parked {
            // hyper ended the connection itself: the client closed it, or
            // asked for `Connection: close`.
            return;
        }
        io = rest;
    }
}

/// Waits, with no HTTP state, for the next request; `None` when the
/// connection should close instead (keep-alive timeout, client gone, drain).
async fn park<S: WaitReadable>(io: &mut Prefixed<S>, conn: &Conn) -> Option<Bytes> {
    loop {
        let idle = conn.activity.idle_for().unwrap_or_default();
        let limit = keepalive(conn);
        let deadline = Instant::now() + limit.saturating_sub(idle);
        tokio::select! {
            read = io.get_mut().wait_readable() => return read.ok(),
            () = conn.shutdown.cancelled(), if !conn.activity.is_draining() => conn.activity.drain(),
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

async fn serve_h2<S>(io: Prefixed<S>, conn: &Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &conn.listener.config;
    let service = service(conn);
    // hyper moves each stream's future on its way to `Streams`; boxed, a
    // move is a pointer instead of kilobytes.
    let service = service_fn(move |request| Box::pin(service.call(request)));
    let streams = Streams::default();
    // The same bound as HTTP/1.1's head, counted as RFC 9113 §6.5.2 does
    // (names, values and 32 bytes a field); h2 answers 431 past it.
    let max_header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
    let serving = hyper::server::conn::http2::Builder::new(streams.clone())
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_list)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(serving);
    // Once GOAWAY is sent, the connection only finishes its streams: the
    // shutdown and the idle timer, both still ready, must not fire again.
    let mut closing = false;
    // Responses that finish wait for the worker's next turn (see `turn`).
    let mut turn = NextTurn::default();
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
                if let Err(e) = ended {
                    tracing::debug!(client = %conn.peer, error = %e, "connection ended with an error");
                }
                // Streams still answering finish first.
                return std::future::poll_fn(|cx| streams.poll_all(cx)).await;
            }
            // GOAWAY: the client finishes its streams and opens new ones
            // elsewhere, with no race.
            () = conn.shutdown.cancelled(), if !closing => {
                closing = true;
                serving.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline), if !closing => match conn.activity.expired(header, idle) {
                Some(Expired::Header) => {
                    return tracing::debug!(client = %conn.peer, "no request in time; closing");
                }
                Some(Expired::Idle) => {
                    closing = true;
                    serving.as_mut().graceful_shutdown();
                }
                None => {}
            },
        }
    }
}

/// An HTTP/2 connection's streams, run inside the connection's own task
/// rather than as a tokio task each: a task costs an aligned allocation and
/// a trip through the scheduler per stream, and a connection's streams share
/// its worker thread either way.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<FuturesUnordered<Stream>>>);

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

/// Counts the connection as closed however its task ends.
struct Open(Arc<ListenerSnapshot>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// A response body that marks its request finished for [`Activity`] when
/// hyper is done with it.
struct Tracked {
    body: ResponseBody,
    _guard: RequestGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` would return; `make` never runs.
    fn future_size<F>(_make: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Idle keep-alive connections are plain HTTP/1.1 ones: their state
    /// must not hold room for HTTP/2's, the larger of the two.
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_plain_connection_does_not_carry_http2_state() {
        let plain = future_size(|| serve_plain(unreachable!(), unreachable!()));
        let h1 = future_size(|| serve_h1::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        let h2 = future_size(|| serve_h2::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        assert!(h2 > h1, "HTTP/2 state {h2} bytes, HTTP/1.1 {h1}");
        assert!(
            plain < h2,
            "a plain connection holds {plain} bytes, HTTP/2 state {h2}"
        );
    }
}
