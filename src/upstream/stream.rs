//! A connection's byte stream to an upstream server: plain TCP, or TLS over
//! it. Everything above (the HTTP/1.1 client, hyper's HTTP/2, tunnels, the
//! health probes) reads and writes through this one type.
//!
//! Plain TCP keeps its direct path: writes go out with
//! `try_write_vectored` as soon as the socket is ready, and an idle
//! connection is checked for a close without a waker. TLS goes through
//! tokio-rustls, which may hold written records until flushed, so writers
//! end with [`Stream::poll_flush`].

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is several kilobytes, and most upstreams are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the server closed the connection (or sent something nobody
    /// asked for) while it was idle. Plain TCP costs no system call unless
    /// the socket became readable, which an idle connection only does when
    /// the server has ended it. Over TLS, records that carry no data (a
    /// TLS 1.3 session ticket, say) are taken in and do not count.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self {
            Self::Plain(tcp) => {
                !matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Self::Tls(tls) => {
                // Nothing waits on this poll: the next exchange polls again
                // with its own waker.
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut byte);
                !Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// Writes as much of `slices` as the connection takes now.
    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write_vectored(slices) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return Poll::Ready(result),
                }
            },
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, slices),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(_) => Poll::Ready(Ok(())),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
