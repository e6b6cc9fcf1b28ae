//! The socket layers under a client connection's HTTP server: [`Watched`]
//! reports incoming bytes to the connection's [`Activity`] (for the header
//! and keep-alive timeouts), and [`Prefixed`] replays bytes already read
//! (sniffed, or left over by an earlier hyper connection) and ends hyper's
//! connection at a park. [`WaitReadable`] waits for a parked connection's
//! next request without buffers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::timeouts::Activity;

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
        if self.activity.park_requested() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

forward_write!(Prefixed);

/// Waiting, without buffers, for a parked connection's next request.
///
/// A poll rather than a future: the socket's own readiness holds the
/// waker, so a parked connection keeps no waiting state of its own (tokio's
/// readiness futures are a quarter of a kilobyte).
pub trait WaitReadable {
    /// Ready once the client has sent something (or closed), with
    /// whatever had to be read to find out.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>>;
}

impl WaitReadable for Watched<tokio::net::TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        // Peek, not read: the bytes stay in the socket for hyper to read in
        // one go. (Readiness alone is not enough: tokio may still hold it
        // from before the socket was drained.)
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match std::task::ready!(self.inner.poll_peek(cx, &mut buf))? {
            0 => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            _ => Poll::Ready(Ok(Bytes::new())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WaitReadable for tokio_rustls::server::TlsStream<S> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        // The socket being readable says nothing about decrypted bytes, so
        // read one.
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        std::task::ready!(Pin::new(self).poll_read(cx, &mut buf))?;
        Poll::Ready(match buf.filled() {
            [] => Err(io::ErrorKind::UnexpectedEof.into()),
            read => Ok(Bytes::copy_from_slice(read)),
        })
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

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
        let mut io = Prefixed::new(prefix, &b"HTTP/1.1"[..], Activity::new(Arc::default()));
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
        let mut io = Prefixed::new(Bytes::new(), &b""[..], Activity::new(Arc::default()));
        io.unread(remnant);
        assert!(freed.load(Ordering::Relaxed));
        assert!(!io.has_prefix());
    }
}
