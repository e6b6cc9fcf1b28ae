//! What an HTTP/1.1 client gets when hyper cannot parse its request.
//!
//! hyper answers a request it cannot parse (400 for a malformed request
//! line or header, 414 for a long target, 431 for a head over
//! `max_header_bytes`) on its own: an empty body, and the request never
//! reaches corral's service, so it would be neither logged nor counted.
//! [`ParseErrors`] sits between hyper and the socket and puts corral's own
//! short plain-text answer in place of hyper's, noting its status in the
//! connection's [`Activity`]; the connection then records the refusal like
//! any other answer ([`record`]). A head shed for the worker's memory
//! budget (see `head_budget`) is refused the same way, with a 503.
//!
//! hyper's automatic answer is recognised as a response head written when
//! every request hyper handed to the service already has its response head:
//! hyper writes the head of a response only once the previous response was
//! flushed whole, so every head starts a write, and counting the final
//! (non-1xx) heads against the requests begun tells the two apart. Once it
//! is seen, everything else hyper writes on the connection (nothing, as
//! hyper then closes it) is dropped.
//!
//! After such an answer the connection lingers: it stops sending, then
//! reads and discards what the client still sends for a moment before it
//! closes. Closing a socket with unread bytes makes the kernel reset the
//! connection, and a reset can destroy the answer before the client reads
//! it (the client is typically still sending the rest of its head).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::timeouts::Activity;
use crate::proxy::error_text;
use crate::snapshot::Snapshot;

/// How long a refused connection keeps reading what its client still sends
/// before it closes (see the module docs). Long enough for a client to finish
/// sending a head of up to 1 MiB on a slow link and read the answer; short
/// enough that a client that never stops costs a moment, not a connection.
const LINGER: Duration = Duration::from_secs(2);

/// The socket layer under hyper's HTTP/1.1 server that swaps its automatic
/// error answers for corral's.
#[derive(Debug)]
pub struct ParseErrors<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once given back or handed to [`linger`].
    inner: Option<S>,
    activity: Arc<Activity>,
    /// The connection's request count when this hyper connection started.
    base: u64,
    /// Final response heads written since.
    heads: u64,
    answer: Option<Refusal>,
}

/// corral's answer in place of hyper's, and how much of it is written.
#[derive(Debug)]
struct Refusal {
    bytes: Vec<u8>,
    written: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ParseErrors<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner: Some(inner),
            base: activity.requests(),
            activity,
            heads: 0,
            answer: None,
        }
    }

    pub fn into_inner(mut self) -> S {
        self.inner
            .take()
            .unwrap_or_else(|| unreachable!("taken only here or on drop"))
    }

    fn inner(&mut self) -> Pin<&mut S> {
        Pin::new(
            self.inner
                .as_mut()
                .unwrap_or_else(|| unreachable!("present until dropped")),
        )
    }

    /// Writes what is left of corral's answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(answer) = &mut self.answer else {
            return Poll::Ready(Ok(()));
        };
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while answer.written < answer.bytes.len() {
            let rest = &answer.bytes[answer.written..];
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            answer.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for ParseErrors<S> {
    fn drop(&mut self) {
        if let (Some(_), Some(inner)) = (&self.answer, self.inner.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(linger(inner));
            }
        }
    }
}

/// Finishes sending, then reads and discards for up to [`LINGER`] before the
/// socket closes.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let drain = async {
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(LINGER, drain).await {
        tracing::debug!(error = %e, "a refused connection ended with an error");
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for ParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.activity.shed_requested() {
            // Shed (see `head_budget`): corral's 503 goes out, and the end
            // of file that hyper then reads mid-head ends its connection.
            if self.answer.is_none() {
                self.activity.refused(StatusCode::SERVICE_UNAVAILABLE);
                self.answer = Some(Refusal {
                    bytes: page(StatusCode::SERVICE_UNAVAILABLE),
                    written: 0,
                });
            }
            ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(()));
        }
        self.inner().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for ParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let status = if self.answer.is_none() {
            response_status(buf)
        } else {
            None
        };
        match status {
            Some(status) if status.is_informational() => {}
            Some(status) if self.heads == self.activity.requests() - self.base => {
                // No request is waiting for this head: hyper's own answer.
                if matches!(status.as_u16(), 400 | 414 | 431) {
                    self.activity.refused(status);
                    self.answer = Some(Refusal {
                        bytes: page(status),
                        written: 0,
                    });
                }
            }
            Some(_) => self.heads += 1,
            None => {}
        }
        if self.answer.is_some() {
            ready!(self.poll_answer(cx))?;
            // hyper's own bytes are taken and dropped.
            return Poll::Ready(Ok(buf.len()));
        }
        self.inner().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        self.inner().poll_shutdown(cx)
    }
}

/// The status of a response head at the start of `buf`, if one starts there.
fn response_status(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    StatusCode::from_bytes(rest.get(..3)?).ok()
}

/// corral's answer for `status`: short plain text, as every error corral
/// answers itself, and the connection closes.
fn page(status: StatusCode) -> Vec<u8> {
    let text = body(status);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// The page's body.
fn body(status: StatusCode) -> String {
    let detail = match status.as_u16() {
        414 => "request target too long",
        431 => "request head too large",
        503 => "overloaded, try again later",
        _ => "malformed request",
    };
    error_text(status, detail)
}

/// Counts and logs a request hyper refused, like every other answer: under
/// `route="(none)"`, with the head's arrival as its start.
pub fn record(rt: &Snapshot, client: IpAddr, status: StatusCode, elapsed: Duration) {
    let bytes = body(status).len() as u64;
    rt.unrouted.record(status.as_u16(), elapsed, bytes);
    if let Some(log) = &rt.access_log {
        log.unparsed(client, status.as_u16(), bytes, elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_recognised() {
        assert_eq!(
            response_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(
            response_status(b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(response_status(b"0\r\n\r\n"), None);
        assert_eq!(response_status(b"HTTP/1.1 4"), None);
    }

    /// Writes `heads` through the layer after `requests` requests began,
    /// and returns what reached the socket.
    async fn written(activity: &Arc<Activity>, requests: usize, heads: &[&[u8]]) -> Vec<u8> {
        let (socket, mut client) = tokio::io::duplex(64 * 1024);
        let mut layer = ParseErrors::new(socket, activity.clone());
        let guards: Vec<_> = (0..requests).map(|_| activity.begin(false)).collect();
        drop(guards);
        for head in heads {
            layer.write_all(head).await.unwrap();
        }
        layer.flush().await.unwrap();
        drop(layer);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn an_upstreams_400_to_a_real_request_passes_through() {
        let upstream = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let activity = Activity::new(Arc::default());
        assert_eq!(written(&activity, 1, &[upstream]).await, upstream);
        assert_eq!(activity.take_refused(), None);
    }

    #[tokio::test]
    async fn hypers_400_after_the_answered_requests_is_replaced_and_the_socket_lingers() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
        let automatic = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let activity = Activity::new(Arc::default());
        // Ends only because the lingering socket is shut down for writing.
        let out = written(&activity, 1, &[continue_, ok, automatic]).await;
        let mut expected = [&continue_[..], &ok[..]].concat();
        expected.extend(page(StatusCode::BAD_REQUEST));
        assert_eq!(out, expected);
        assert_eq!(activity.take_refused(), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn the_page_is_short_plain_text_and_closes() {
        let page = String::from_utf8(page(StatusCode::BAD_REQUEST)).unwrap();
        assert!(page.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{page}");
        assert!(page.contains("\r\nconnection: close\r\n"), "{page}");
        assert!(
            page.ends_with("\r\n\r\n400 Bad Request: malformed request\n"),
            "{page}"
        );
        assert_eq!(body(StatusCode::BAD_REQUEST).len(), 35);
    }
}
