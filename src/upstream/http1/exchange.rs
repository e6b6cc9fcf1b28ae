//! One request and its response head over a [`Connection`]: the writing
//! and the reading are polled together, so a server that answers before
//! the request body is through (413, say) is heard at once, and a body
//! still being sent then travels on with the response body.

use std::io;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::body::Http1Body;
use super::connection::{Connection, FIRST_READ};
use super::error::Error;
use super::head::{self, Head};
use super::request::{Outbound, WriteError};
use crate::body::request::BodyError;

#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request reached the server: it may go out again, on
    /// another connection.
    Unsent(io::Error, Box<Outbound>),
    Upstream(Error),
    /// The request left, and the connection ended or broke before a byte
    /// of a response came back: a request that may be repeated may go to
    /// another server.
    Unanswered(Error),
    /// The client's body failed while it was being sent.
    ClientBody(BodyError),
    /// No response head within the response timeout (the limit).
    TimedOut(Duration),
}

/// How long a server has to answer: `limit`, counted from the end of the
/// request body, so that a long upload is not cut off (a stalled one is,
/// by the body timeout). `sent` is when the request went out, where the
/// count starts for a request that leaves whole at once.
#[derive(Debug, Clone, Copy)]
pub struct ResponseTimeout {
    pub sent: Instant,
    pub limit: Duration,
}

/// Sends `outbound` over `conn` and reads the response head, skipping
/// interim (1xx) responses other than 101. `max_head` bounds the head.
pub async fn send(
    mut conn: Connection,
    mut outbound: Box<Outbound>,
    max_head: usize,
    timeout: Option<ResponseTimeout>,
) -> Result<Response<Http1Body>, SendError> {
    let mut write_failed = None;
    // Whether the request is still on its first poll, then when the
    // response is due (once the request is through).
    let mut first = true;
    let mut due = None;
    // Whether any byte of a response has come back.
    let mut heard = false;
    let head = std::future::poll_fn(|cx| {
        if write_failed.is_none() && !outbound.is_sent() {
            match outbound.poll_write(&mut conn.stream, cx) {
                Poll::Ready(Err(WriteError::Io(e))) if !outbound.has_left() => {
                    return Poll::Ready(Err(Stop::Unsent(e)));
                }
                // The server may have answered and stopped reading: hear it out.
                Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
                Poll::Ready(Err(WriteError::Body(e))) => {
                    return Poll::Ready(Err(Stop::ClientBody(e)));
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if let Poll::Ready(head) = poll_head(&mut conn, cx, max_head, outbound.to_head, &mut heard)
        {
            return Poll::Ready(head.map_err(Stop::Upstream));
        }
        let through = outbound.is_sent() || write_failed.is_some();
        if let (Some(timeout), None, true) = (timeout, due, through) {
            let from = if first { timeout.sent } else { Instant::now() };
            due = Some(from + timeout.limit);
        }
        first = false;
        match (timeout, due) {
            (Some(timeout), Some(due)) => conn
                .poll_deadline(cx, due)
                .map(|()| Err(Stop::TimedOut(timeout.limit))),
            _ => Poll::Pending,
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(Stop::Unsent(e)) => return Err(SendError::Unsent(e, outbound)),
        Err(Stop::ClientBody(e)) => return Err(SendError::ClientBody(e)),
        Err(Stop::TimedOut(limit)) => return Err(SendError::TimedOut(limit)),
        Err(Stop::Upstream(e)) => {
            // A write that failed explains an end of stream better.
            let e = match (e, write_failed) {
                (Error::Closed, Some(written)) => Error::Io(written),
                (e, _) => e,
            };
            let broke = matches!(e, Error::Closed | Error::Io(_));
            return Err(if broke && !heard {
                SendError::Unanswered(e)
            } else {
                SendError::Upstream(e)
            });
        }
    };
    let Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    } = head;
    let sending = (!outbound.is_sent() && write_failed.is_none()).then_some(outbound);
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        Http1Body::upgraded(conn)
    } else {
        Http1Body::new(conn, framing, keep_alive, sending, max_head)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(response)
}

enum Stop {
    Unsent(io::Error),
    ClientBody(BodyError),
    Upstream(Error),
    TimedOut(Duration),
}

/// Reads until a final response head (or a 101) is complete.
fn poll_head(
    conn: &mut Connection,
    cx: &mut Context<'_>,
    max_head: usize,
    to_head: bool,
    heard: &mut bool,
) -> Poll<Result<Head, Error>> {
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) = head::parse(&mut conn.buf, max_head, to_head)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
        }
        if ready!(conn.poll_read(cx, FIRST_READ))? == 0 {
            return Poll::Ready(Err(Error::Closed));
        }
        *heard = true;
    }
}
