//! The exchange with an upstream: picking a server, connecting (moving
//! to another server when a connection cannot be opened), sending the
//! request and waiting for the response head, and sending a request that
//! may be repeated to another server when its answer or a broken
//! connection says so, within the upstream's retry budget.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http2};
use tokio::time::Instant;

use super::error::{Fault, ProxyError};
use crate::body::request::{BodySent, RequestBody};
use crate::body::response::Upstream as UpstreamBody;
use crate::snapshot::Snapshot;
use crate::upstream::http1::{self, Outbound, SendError};
use crate::upstream::{Conn, Http2, Lease, NoPick, Server, Sticky, Upstream};

/// A request rewritten for its upstream, ready to go.
pub(super) struct Outgoing {
    /// The index of the route's upstream in the snapshot.
    pub upstream: usize,
    pub message: Message,
    /// The most bytes an HTTP/1.1 response head may take: the listener's
    /// `max_header_bytes`, as for a request head.
    pub max_head: usize,
    /// Completes once the request body has been sent.
    pub body_sent: BodySent,
    /// The consistent-hashing key, if the upstream balances by one.
    pub key: Option<u64>,
    /// The server the request's sticky cookie names, when the upstream is
    /// sticky and the cookie names one of its servers.
    pub named: Option<usize>,
    /// Whether the client is on TLS: a sticky cookie set for it is `Secure`.
    pub tls: bool,
    /// The protocols the client offered to switch to, if it asked to.
    pub upgrade: Option<HeaderValue>,
    /// When the request arrived: the clock reading its exchange goes by.
    pub started: Instant,
    /// The request again, for another server, if it may be repeated (an
    /// idempotent method, no body) and the upstream has another server.
    pub replay: Option<Message>,
}

/// The request as its upstream's protocol sends it.
pub(super) enum Message {
    /// The head already encoded. Both are boxed: every request's future
    /// holds one, and would otherwise be larger by a whole request.
    Http1(Box<Outbound>),
    Http2(Box<Request<RequestBody>>),
    /// Taken by an exchange that did not hand it back.
    Sent,
}

/// Picks a server, sends the request and waits for the response head.
///
/// `outgoing` is used in place, not taken apart or passed on by value: the
/// parts would be copies in the future's state, beside the original.
pub(super) async fn exchange(
    snapshot: Arc<Snapshot>,
    mut outgoing: Outgoing,
) -> Result<(Response<UpstreamBody>, Lease), ProxyError> {
    let snapshot = &*snapshot;
    let upstream = &snapshot.upstreams[outgoing.upstream];
    let mut rng = fastrand::Rng::new();
    let (key, named) = (outgoing.key, outgoing.named);
    let mut index = match upstream.pick_named(key, named, &mut rng) {
        Some(index) => index,
        // Boxed: the wait is rare, and its state would otherwise be
        // carried by every request's future.
        None => Box::pin(queued(snapshot, upstream, key, named, &mut rng)).await?,
    };
    // A connection that could not be opened moves the request to another
    // server once per request, however many connections it takes.
    let mut may_move = true;
    // A connection can close between checkout and send; a request none of
    // which left goes out again on a fresh connection.
    let mut unsent_retries = 2;
    // The latest clock reading: the request's arrival until time may have
    // passed (a new connection, a retry), so that a pooled exchange reads
    // the clock no more.
    let mut now = outgoing.started;
    // Every request that a retry could move counts toward the budget that
    // every retry draws on, whatever its method (a connect failure moves a
    // POST too).
    if upstream.servers.len() > 1 {
        upstream.retries.request(now);
    }
    loop {
        let mut picked = Picked {
            upstream,
            key: outgoing.key,
            index,
            may_move,
        };
        let (conn, lease) = picked.connect(snapshot, &mut rng, &mut now).await?;
        (index, may_move) = (picked.index, picked.may_move);
        let server = &upstream.servers[index];
        let message = std::mem::replace(&mut outgoing.message, Message::Sent);
        let mut attempt = Attempt {
            snapshot,
            upstream,
            index,
            rng: &mut rng,
            unsent_retries: &mut unsent_retries,
        };
        let limit = upstream.config.response_timeout;
        // The sends are awaited here; plain functions judge what they came to.
        let next = match (conn, message) {
            (Conn::Http1(conn), Message::Http1(outbound)) => {
                // The connection's own timer, not one per request.
                let timeout = http1::ResponseTimeout { sent: now, limit };
                let sent = http1::send(conn, outbound, outgoing.max_head, Some(timeout)).await;
                attempt.http1(&mut outgoing, sent)?
            }
            (Conn::Http2(mut conn), Message::Http2(request)) => {
                let body_sent = &mut outgoing.body_sent;
                let sender = &mut conn.sender;
                let sent = Box::pin(send_h2(sender, *request, limit, body_sent, now)).await;
                attempt.http2(&mut outgoing, sent, &conn)?
            }
            // A server's protocol is its upstream's, which prepared the message.
            _ => {
                let e = ProxyError::ProtocolMismatch;
                return Err(failed(snapshot, upstream, server, e));
            }
        };
        match next {
            Next::Answered(mut response) => {
                if upstream.balancer.wants_latency() {
                    server.observe_latency(now.elapsed());
                }
                if let Some(sticky) = &upstream.sticky {
                    remember(sticky, &outgoing, index, response.headers_mut());
                }
                return Ok((response, lease));
            }
            Next::Again(next) => index = next,
        }
        now = Instant::now();
    }
}

/// A server for a request no server could take at once: one that had room
/// within the upstream's `queue_timeout`, when it caps requests in flight.
async fn queued(
    snapshot: &Snapshot,
    upstream: &Upstream,
    key: Option<u64>,
    named: Option<usize>,
    rng: &mut fastrand::Rng,
) -> Result<usize, ProxyError> {
    let name = || upstream.name().to_owned();
    match upstream.queue(key, named, rng).await {
        Ok(index) => {
            snapshot.count_queued(upstream.name(), "served");
            Ok(index)
        }
        Err(NoPick::Unavailable) => Err(ProxyError::NoServer { upstream: name() }),
        Err(NoPick::Full) => {
            snapshot.count_queued(upstream.name(), "timeout");
            Err(ProxyError::QueueFull { upstream: name() })
        }
    }
}

/// Names the server at `index`, which answered, in a sticky cookie for the
/// client, unless the request's cookie named it already: the client had no
/// cookie, an invalid one, or one naming a server that could not take the
/// request. The upstream's own `Set-Cookie` headers stay.
fn remember(sticky: &Sticky, outgoing: &Outgoing, index: usize, headers: &mut http::HeaderMap) {
    if outgoing.named == Some(index) {
        return;
    }
    if let Some(cookie) = sticky.set_cookie(index, outgoing.tls) {
        headers.append(http::header::SET_COOKIE, cookie.clone());
    }
}

/// What an attempt came to.
// Returned and matched at once, never stored: boxing the response would
// cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A response head for the client.
    Answered(Response<UpstreamBody>),
    /// The message goes out again, to this server: another one, or the
    /// same one on a fresh connection.
    Again(usize),
}

/// One attempt at the exchange, with the server at `index`.
struct Attempt<'a> {
    snapshot: &'a Snapshot,
    upstream: &'a Upstream,
    index: usize,
    rng: &'a mut fastrand::Rng,
    /// How many more times a request none of which left may go out again.
    unsent_retries: &'a mut u32,
}

impl Attempt<'_> {
    fn server(&self) -> &Server {
        &self.upstream.servers[self.index]
    }

    fn failed(&self, e: ProxyError) -> ProxyError {
        // A session the server refused once the handshake seemed done
        // (TLS 1.3's alert) is a refused connection found out late: the
        // server is passed over as after one.
        if e.upstream_kind() == Some("tls") {
            self.server().mark_failed();
        }
        failed(self.snapshot, self.upstream, self.server(), e)
    }

    /// What an HTTP/1.1 exchange's outcome leads to.
    fn http1(
        &mut self,
        outgoing: &mut Outgoing,
        sent: Result<Response<http1::Http1Body>, SendError>,
    ) -> Result<Next, ProxyError> {
        match sent {
            Ok(response) => Ok(self.answered(outgoing, response.map(UpstreamBody::Http1))),
            Err(SendError::Unsent(e, outbound)) if *self.unsent_retries > 0 => {
                tracing::debug!(server = %self.server().addr, error = %e, "connection closed before the request left; sending it again");
                *self.unsent_retries -= 1;
                outgoing.message = Message::Http1(outbound);
                Ok(Next::Again(self.index))
            }
            Err(SendError::Unanswered(e)) => {
                let e = self.failed(ProxyError::Http1(e));
                self.elsewhere(outgoing, "reset").map(Next::Again).ok_or(e)
            }
            Err(e) => Err(self.failed(ProxyError::from(e))),
        }
    }

    /// What an HTTP/2 exchange's outcome (`Err`: the response timeout) on
    /// `conn` leads to.
    fn http2(
        &mut self,
        outgoing: &mut Outgoing,
        sent: Result<Result<Response<Incoming>, TrySendError<Request<RequestBody>>>, Duration>,
        conn: &Http2<RequestBody>,
    ) -> Result<Next, ProxyError> {
        match sent.map_err(|limit| self.failed(ProxyError::ResponseTimeout(limit)))? {
            Ok(response) => Ok(self.answered(outgoing, response.map(UpstreamBody::Http2))),
            Err(mut e) => match e.take_message() {
                // A server that refused the session refuses a fresh one too.
                Some(unsent) if *self.unsent_retries > 0 && conn.refusal().is_none() => {
                    *self.unsent_retries -= 1;
                    outgoing.message = Message::Http2(Box::new(unsent));
                    Ok(Next::Again(self.index))
                }
                _ => {
                    let e = match conn.refusal() {
                        Some(refused) => ProxyError::from(refused),
                        None => ProxyError::from_send(e.into_error()),
                    };
                    let e = self.failed(e);
                    // No response head had come: a reset is one before any byte.
                    if !matches!(e.upstream_kind(), Some("reset" | "tls")) {
                        return Err(e);
                    }
                    self.elsewhere(outgoing, "reset").map(Next::Again).ok_or(e)
                }
            },
        }
    }

    /// The response for the client, unless its status is one of the
    /// upstream's `retry_on` and the request goes to another server.
    fn answered(&mut self, outgoing: &mut Outgoing, response: Response<UpstreamBody>) -> Next {
        let status = response.status().as_u16();
        let server = self.server();
        if let Some(ejection) = self.upstream.note_answer(server, status) {
            self.snapshot.ejected(server, ejection);
        }
        if outgoing.replay.is_none()
            || self
                .upstream
                .config
                .retry_on
                .binary_search(&status)
                .is_err()
        {
            return Next::Answered(response);
        }
        match self.elsewhere(outgoing, "status") {
            Some(next) => {
                tracing::debug!(upstream = self.upstream.name(), server = %self.server().addr, status, "answer retried on another server");
                Next::Again(next)
            }
            None => Next::Answered(response),
        }
    }

    /// Another server for the request's one repeat, when it may be
    /// repeated, there is another server and the upstream's retry budget
    /// allows it; the repeat is then the message to send, and counted.
    fn elsewhere(&mut self, outgoing: &mut Outgoing, reason: &str) -> Option<usize> {
        outgoing.replay.as_ref()?;
        let upstream = self.upstream;
        let next = upstream.pick(outgoing.key, Some(self.index), self.rng)?;
        if !within_budget(self.snapshot, upstream, Instant::now()) {
            return None;
        }
        outgoing.message = outgoing.replay.take()?;
        self.snapshot.count_retry(upstream.name(), reason);
        Some(next)
    }
}

/// Whether `upstream`'s retry budget has room for one more retry at `now`
/// (then counted in it); a retry it refuses is counted as such.
fn within_budget(snapshot: &Snapshot, upstream: &Upstream, now: Instant) -> bool {
    let allowed = upstream.retries.try_retry(now);
    if !allowed {
        snapshot.count_budget_exhausted(upstream.name());
    }
    allowed
}

/// The server picked for a request, and whether the request may still move
/// to another one.
struct Picked<'u> {
    upstream: &'u Upstream,
    key: Option<u64>,
    index: usize,
    may_move: bool,
}

impl Picked<'_> {
    /// A connection to the picked server (pooled or new) and the request's
    /// lease on it. A connection that cannot be opened marks its server
    /// failed, and moves the request to another server when it still may
    /// and the error says that is safe.
    async fn connect(
        &mut self,
        snapshot: &Snapshot,
        rng: &mut fastrand::Rng,
        now: &mut Instant,
    ) -> Result<(Conn, Lease), ProxyError> {
        let upstream = self.upstream;
        loop {
            let server = &upstream.servers[self.index];
            let lease = server.lease();
            let e = match server.connection(&upstream.connector, *now).await {
                Ok((conn, reused)) => {
                    if !reused {
                        *now = Instant::now();
                    }
                    return Ok((conn, lease));
                }
                Err(e) => ProxyError::from(e),
            };
            *now = Instant::now();
            server.mark_failed();
            let e = failed(snapshot, upstream, server, e);
            let next = (self.may_move && e.retry_safe())
                .then(|| upstream.pick(self.key, Some(self.index), rng))
                .flatten()
                .filter(|_| within_budget(snapshot, upstream, *now));
            match next {
                Some(next) => {
                    snapshot.count_retry(upstream.name(), "connect");
                    self.may_move = false;
                    self.index = next;
                }
                None => return Err(e),
            }
        }
    }
}

/// The HTTP/2 exchange: sends `request` and waits for the response head,
/// or for the response timeout (`Err`, the limit), counted from the end of
/// the request body, so that a long upload is not cut off (a stalled one
/// is, by the body timeout); `now` is when the request went out. Boxed
/// where it is awaited: it is the largest state a request's future would
/// hold, and hyper moves every request's future, HTTP/1.1 ones too, whole.
async fn send_h2(
    sender: &mut http2::SendRequest<RequestBody>,
    request: Request<RequestBody>,
    limit: Duration,
    body_sent: &mut BodySent,
    now: Instant,
) -> Result<Result<Response<Incoming>, TrySendError<Request<RequestBody>>>, Duration> {
    let deadline = async {
        let from = if body_sent.is_done() {
            now
        } else {
            body_sent.wait().await;
            Instant::now()
        };
        tokio::time::sleep_until(from + limit).await;
    };
    tokio::select! {
        biased;
        r = sender.try_send_request(request) => Ok(r),
        () = deadline => Err(limit),
    }
}

/// Counts a failure against `server` (toward its ejection too) and logs
/// it; returns it.
fn failed(snapshot: &Snapshot, upstream: &Upstream, server: &Server, e: ProxyError) -> ProxyError {
    if let Some(kind) = e.upstream_kind() {
        snapshot.count_upstream_error(upstream.name(), &server.label, kind);
        if let Some(ejection) = upstream.note_failure(server, kind) {
            snapshot.ejected(server, ejection);
        }
    }
    if e.fault() == Fault::Upstream {
        tracing::warn!(upstream = %upstream.name(), server = %server.addr, error = %e, "upstream failure");
    }
    e
}
