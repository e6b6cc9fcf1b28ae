//! Setting up one client connection: counting it, the PROXY protocol
//! header from a trusted load balancer (see
//! [`proxy_header`](super::proxy_header)), then the TLS handshake (ALPN
//! picks the protocol) or, on a plain listener, sniffing for HTTP/2's
//! prior-knowledge preface, all within the header timeout; then the
//! connection is served by [`http1`](super::http1) or
//! [`http2`](super::http2). Anything a connection must do before its first
//! request belongs here.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::head_budget::HeadBudget;
use super::http1::serve_h1;
use super::http2::serve_h2;
use super::proxy_header::client_of;
use super::service::Conn;
use super::socket::{Prefixed, Watched};
use super::timeouts::Activity;
use crate::proxy::Client;
use crate::snapshot::{ListenerSnapshot, SharedSnapshot};

/// Serves one accepted connection until it closes.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerSnapshot>,
    snapshot: SharedSnapshot,
    shutdown: Arc<CancellationToken>,
    heads: Arc<HeadBudget>,
) {
    listener.connections.add(1);
    listener.connections_active.inc();
    let _open = Open(listener.clone());
    // No TCP_NODELAY call here: accepted sockets inherit it from the
    // listening socket (see `master::sockets::bind`).
    let activity = Activity::new();
    // One header timeout for everything before the first request, as
    // `Activity` counts it from the connection's start.
    let deadline = Instant::now() + listener.config.header_timeout;
    let proxy_protocol = listener.config.proxy_protocol.as_ref();
    // From here on `peer` is the client, whom a load balancer's header may
    // have named.
    let Some(peer) = client_of(&mut stream, peer, proxy_protocol, deadline).await else {
        return;
    };
    let stream = Watched::new(stream, activity.clone());
    let client = Arc::new(Client::new(peer, listener.tls.is_some(), listener.clone()));
    let conn = Conn {
        peer,
        listener,
        snapshot,
        activity,
        shutdown,
        client,
        heads,
    };
    match conn.listener.tls.clone() {
        None => serve_plain(stream, &conn, deadline).await,
        // Boxed: the handshake's state is large, and plain connections
        // should not carry room for it.
        Some(tls) => Box::pin(serve_tls(stream, tls, &conn, deadline)).await,
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve_plain(mut stream: Watched<TcpStream>, conn: &Conn, deadline: Instant) {
    let sniffed = tokio::time::timeout_at(deadline, sniff(&mut stream)).await;
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

async fn serve_tls(
    stream: Watched<TcpStream>,
    tls: Arc<rustls::ServerConfig>,
    conn: &Conn,
    deadline: Instant,
) {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout_at(deadline, accept).await {
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

/// Counts the connection as closed however its task ends.
struct Open(Arc<ListenerSnapshot>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.dec();
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
        let plain = future_size(|| serve_plain(unreachable!(), unreachable!(), unreachable!()));
        let h1 = future_size(|| serve_h1::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        let h2 = future_size(|| serve_h2::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        assert!(h2 > h1, "HTTP/2 state {h2} bytes, HTTP/1.1 {h1}");
        assert!(
            plain < h2,
            "a plain connection holds {plain} bytes, HTTP/2 state {h2}"
        );
    }
}
