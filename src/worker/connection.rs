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
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::head_budget::HeadBudget;
use super::http1::serve_h1;
use super::http2::serve_h2;
use super::open_connections::Opened;
use super::proxy_header::client_of;
use super::service::Conn;
use super::socket::{Prefixed, Watched};
use super::timeouts::Activity;
use crate::challenges::ACME_TLS_ALPN;
use crate::proxy::Client;
use crate::snapshot::{Handshake, ListenerSnapshot, SharedSnapshot};

/// Serves one accepted connection until it closes; it counts against its
/// listener's `max_connections` (`_opened`) until then.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerSnapshot>,
    snapshot: SharedSnapshot,
    shutdown: Arc<CancellationToken>,
    heads: Arc<HeadBudget>,
    _opened: Option<Opened>,
) {
    listener.connections.add(1);
    listener.connections_active.inc();
    let _open = Open(listener.clone());
    // No TCP_NODELAY call here: accepted sockets inherit it from the
    // listening socket (see `master::sockets::bind`).
    let activity = Activity::new(shutdown);
    // One header timeout for everything before the first request, as
    // `Activity` counts it from the connection's start.
    let deadline = Instant::now() + listener.config.header_timeout;
    let proxy_protocol = listener.config.proxy_protocol.as_ref();
    // From here on `peer` is the client, whom a load balancer's header may
    // have named.
    let Some(peer) = client_of(&mut stream, peer, proxy_protocol, deadline).await else {
        return;
    };
    let mut stream = Watched::new(stream, activity.clone());
    let client = Arc::new(Client::new(peer, listener.tls.is_some(), listener.clone()));
    let conn = Conn {
        listener,
        snapshot,
        activity,
        client,
        heads,
    };
    if let Some(tls) = conn.listener.tls.clone() {
        // Boxed: the handshake's state is large, and plain connections
        // should not carry room for it.
        return Box::pin(serve_tls(stream, tls, conn, deadline)).await;
    }
    // A plain connection is served here rather than by a function of its
    // own: an `async fn` keeps its arguments apart from its locals, and an
    // idle connection would hold its socket twice.
    let Some((prefix, h2)) = sniff(&mut stream, &conn, deadline).await else {
        return;
    };
    let io = Prefixed::new(prefix, stream, conn.activity.clone());
    if h2 {
        // Boxed: an HTTP/2 connection's state is half again an HTTP/1.1
        // one's, and every idle keep-alive connection would carry room for
        // it.
        Box::pin(serve_h2(io, &conn)).await
    } else {
        serve_h1(&mut Some(io), &conn).await
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much the first read of a plain connection asks for: a whole typical
/// request head, which hyper then takes from the prefix, so that sniffing
/// the protocol costs no read of its own.
const FIRST_READ: usize = 4096;

/// The first bytes of a plain connection, and whether they are HTTP/2's
/// preface; `None` (logged) if they did not come by `deadline`.
async fn sniff(
    stream: &mut Watched<TcpStream>,
    conn: &Conn,
    deadline: Instant,
) -> Option<(Bytes, bool)> {
    match tokio::time::timeout_at(deadline, read_preface(stream)).await {
        Ok(Ok(sniffed)) => Some(sniffed),
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.peer(), error = %e, "reading the connection failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %conn.peer(), "request head not received in time; closing");
            None
        }
    }
}

/// Reads until the bytes are, or cannot be, the HTTP/2 preface.
async fn read_preface(stream: &mut Watched<TcpStream>) -> std::io::Result<(Bytes, bool)> {
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
    mut conn: Conn,
    deadline: Instant,
) {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let count = |handshake| {
        if let Some(h) = &conn.listener.handshakes {
            h.count(handshake);
        }
    };
    let stream = match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            count(Handshake::Failed);
            return tracing::debug!(client = %conn.peer(), error = %e, "TLS handshake failed");
        }
        Err(_) => {
            count(Handshake::TimedOut);
            return tracing::debug!(client = %conn.peer(), "TLS handshake timed out");
        }
    };
    let session = stream.get_ref().1;
    count(Handshake::Done {
        tls13: session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
        resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    });
    if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the certificate was the answer, and
        // no request follows (RFC 8737 §3).
        let mut stream = stream;
        return drop(stream.shutdown().await);
    }
    if let Some(subject) = subject(session, &conn) {
        conn.client = Arc::new(conn.client.with_subject(subject));
    }
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = Prefixed::new(Bytes::new(), stream, conn.activity.clone());
    if h2 {
        // Boxed for the same reason as in `serve`.
        Box::pin(serve_h2(io, &conn)).await
    } else {
        serve_h1(&mut Some(io), &conn).await
    }
}

/// The subject of the certificate the client showed, as the value of the
/// listener's `client_subject_header`; `None` where no header is asked
/// for, so that nothing is decoded for listeners that do not forward it.
/// Made once, for every request of the connection.
fn subject(session: &rustls::ServerConnection, conn: &Conn) -> Option<HeaderValue> {
    conn.listener.config.client_subject_header()?;
    // rustls verified it, in this handshake or in the one whose session
    // resumed (whose ticket is bound to the same `client_ca`).
    let certificate = session.peer_certificates()?.first()?;
    let Some(text) = crate::tls::subject::of_certificate(certificate) else {
        tracing::warn!(client = %conn.peer(), "client certificate subject does not decode; not forwarded");
        return None;
    };
    // ASCII by construction, so always a valid value.
    HeaderValue::try_from(text).ok()
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
        let connection = future_size(|| {
            serve(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let h1 = future_size(|| serve_h1::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        let h2 = future_size(|| serve_h2::<Watched<TcpStream>>(unreachable!(), unreachable!()));
        assert!(h2 > h1, "HTTP/2 state {h2} bytes, HTTP/1.1 {h1}");
        assert!(
            connection < h2,
            "a plain connection holds {connection} bytes, HTTP/2 state {h2}"
        );
    }
}
