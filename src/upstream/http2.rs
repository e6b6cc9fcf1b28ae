//! An HTTP/2 connection to a server, as the pool shares it and health
//! checks use it: opened over the connector's stream with windows fit for
//! sharing, hyper's handle to it, and the TLS error that ended it, read
//! from the stream beneath (hyper keeps no more than "the connection
//! closed").

use std::io::{IoSlice, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connect::{ConnectError, Connector};
use super::stream::Stream;

/// The receive window of an HTTP/2 connection to a server, which every
/// request a worker sends it shares: far above a stream's (hyper's 2 MiB),
/// so that the streams of clients that stop reading hold their own windows
/// and never the whole connection's (hyper's 5 MiB would starve every other
/// stream once three such clients held theirs), as Go's HTTP/2 transport
/// does. What corral buffers stays bounded by the streams' windows.
const H2_CONNECTION_WINDOW: u32 = 1 << 30;

/// The text of the TLS error that ended a connection, once one did.
type Refused = Arc<OnceLock<String>>;

/// An HTTP/2 connection: the handle its requests are sent on, and the TLS
/// error that ended it, if one did. hyper tells a request queued on a
/// connection that failed only that it closed, and under TLS 1.3 a server
/// refuses corral's client certificate (or the lack of one) that way: with
/// an alert once the handshake seemed done, as the first thing read.
#[derive(Debug)]
pub struct Http2<B> {
    pub sender: SendRequest<B>,
    addr: SocketAddr,
    refused: Refused,
}

impl<B> Clone for Http2<B> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            addr: self.addr,
            refused: self.refused.clone(),
        }
    }
}

impl<B> Http2<B> {
    /// An HTTP/2 connection to `addr` through `connector` (prior knowledge,
    /// or ALPN over TLS; `host` as for [`Connector::stream`]), pinged every
    /// 30 s so that a dead peer is noticed while the connection is idle.
    pub async fn connect(
        connector: &Connector,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<Self, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (stream, refused) = Watched::new(connector.stream(addr, host).await?);
        let (sender, driver) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        Ok(Self {
            sender,
            addr,
            refused,
        })
    }

    /// The refused handshake a TLS error that ended the connection amounts
    /// to, if one did; known before any request on it hears that it closed.
    pub fn refusal(&self) -> Option<ConnectError> {
        self.refused.get().map(|text| ConnectError::Tls {
            addr: self.addr,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()),
        })
    }
}

/// A stream that keeps the first TLS error read from it (tokio-rustls'
/// `InvalidData`, which a TCP read never gives) before hyper turns it into
/// a closed connection. A write that fails looks for one too: a server that
/// refuses the session sends its alert and closes, so hyper's next write
/// often meets the reset before anything reads the alert that explains it.
struct Watched {
    stream: Stream,
    refused: Refused,
}

impl Watched {
    /// `stream`, watched, and where it keeps the error.
    fn new(stream: Stream) -> (Self, Refused) {
        let refused = Refused::default();
        let watched = Self {
            stream,
            refused: refused.clone(),
        };
        (watched, refused)
    }

    /// Notes `result` if it is a TLS error.
    fn note<T>(&self, result: &Poll<std::io::Result<T>>) {
        if let Poll::Ready(Err(e)) = result
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            let _ = self.refused.set(e.to_string());
        }
    }

    /// After a failed write: reads what the server sent before it closed,
    /// for an alert. Straight from the socket, not through tokio, whose
    /// readiness may not have caught up with the reset that failed the
    /// write, into the TLS session, where a later read still finds any
    /// data among it.
    fn explain<T>(&mut self, result: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let (Poll::Ready(Err(_)), Stream::Tls(tls)) = (&result, &mut self.stream) {
            let (tcp, session) = tls.get_mut();
            let mut bytes = vec![0u8; 16 * 1024];
            if let Ok(n) = (&*socket2::SockRef::from(&*tcp)).read(&mut bytes) {
                let _ = session.read_tls(&mut &bytes[..n]);
                if let Err(e) = session.process_new_packets() {
                    let _ = self.refused.set(e.to_string());
                }
            }
        }
        result
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.note(&read);
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.explain(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.explain(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.explain(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
