//! One client connection: TLS, HTTP/1.1 or HTTP/2, timeouts, and drain.
//!
//! A TLS connection speaks what ALPN chose; a plain one is sniffed by
//! hyper-util (HTTP/1.1, or HTTP/2 with prior knowledge). Each request goes to
//! [`proxy::handle`] with the snapshot current when it arrived.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Expired, RequestGuard, Watched};
use crate::body::ResponseBody;
use crate::proxy::{self, Client};
use crate::runtime::{ListenerRuntime, SharedRuntime};

/// While draining, an HTTP/1.1 connection idle this long is closed. Until
/// then it stays open so that the client's next request is answered (with
/// `Connection: close`) rather than racing the close; a client that pauses
/// longer than this between requests is taken to be done.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// Which protocols a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocols {
    Http1,
    Http2,
    Sniff,
}

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    runtime: SharedRuntime,
    shutdown: CancellationToken,
) {
    listener.connections.add(1);
    listener.connections_active.inc();
    let _open = Open(listener.clone());
    // No TCP_NODELAY call here: accepted sockets inherit it from the
    // listening socket (see `master::sockets::bind`).
    let activity = Activity::new();
    let stream = Watched::new(stream, activity.clone());
    match listener.tls.clone() {
        None => {
            serve_http(
                stream,
                Protocols::Sniff,
                peer,
                listener,
                runtime,
                activity,
                shutdown,
            )
            .await
        }
        // Boxed: the handshake's state is large, and plain connections
        // should not carry room for it.
        Some(tls) => {
            Box::pin(serve_tls(
                stream, tls, peer, listener, runtime, activity, shutdown,
            ))
            .await
        }
    }
}

async fn serve_tls(
    stream: Watched<TcpStream>,
    tls: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    runtime: SharedRuntime,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout(listener.config.header_timeout, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
    };
    let protocols = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocols::Http2,
        _ => Protocols::Http1,
    };
    serve_http(
        stream, protocols, peer, listener, runtime, activity, shutdown,
    )
    .await;
}

async fn serve_http<S>(
    io: S,
    protocols: Protocols,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    runtime: SharedRuntime,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &listener.config;
    let (header_timeout, keepalive_timeout) = (settings.header_timeout, settings.keepalive_timeout);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `Activity` enforces the header and keep-alive timeouts (see there).
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = match protocols {
        Protocols::Http1 => builder.http1_only(),
        Protocols::Http2 => builder.http2_only(),
        Protocols::Sniff => builder,
    };
    let client = Arc::new(Client {
        addr: peer,
        forwarded_for: crate::proxy::headers::client_value(peer.ip()),
        tls: listener.tls.is_some(),
        listener: listener.clone(),
    });
    let service = {
        let activity = activity.clone();
        let draining = shutdown.clone();
        service_fn(move |request: Request<Incoming>| {
            let multiplexed = request.version() == Version::HTTP_2;
            let guard = activity.begin(multiplexed);
            let snapshot = runtime.load_full();
            let client = client.clone();
            let draining = draining.clone();
            async move {
                let mut response = proxy::handle(snapshot, &client, request).await;
                if draining.is_cancelled() && !multiplexed {
                    // Tell the client, before it sends another request on
                    // this connection, that the connection is closing.
                    let close = http::HeaderValue::from_static("close");
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, close);
                }
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _guard: guard,
                }))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut closing = false;
    let mut keepalive = keepalive_timeout;
    loop {
        let (deadline, why) = activity.deadline(header_timeout, keepalive);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                if protocols == Protocols::Http2 || activity.is_multiplexed() {
                    // GOAWAY: the client finishes its streams and opens new
                    // ones elsewhere, with no race.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    // Closing an idle HTTP/1.1 connection races with a request
                    // the client may be sending right now. Busy connections
                    // get `Connection: close` on their next response instead;
                    // only those idle for a while are closed.
                    keepalive = keepalive.min(DRAIN_IDLE);
                }
            }
            () = tokio::time::sleep_until(deadline) => match why {
                // Re-read: a request may have started while the timer ran.
                _ if activity.deadline(header_timeout, keepalive).0 > tokio::time::Instant::now() => {}
                Some(Expired::Header) => {
                    return tracing::debug!(client = %peer, "request head not received in time; closing");
                }
                Some(Expired::Idle) if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Some(Expired::Idle) | None => {}
            },
        }
    }
}

/// Counts the connection as closed however its task ends.
struct Open(Arc<ListenerRuntime>);

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
