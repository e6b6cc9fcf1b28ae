//! The request path: route -> balance -> forward -> stream back.
//!
//! [`handle`] turns one client request into one response. It never panics on
//! network input and never buffers a body: the client's body is handed to the
//! upstream connection as a stream, and the upstream's body back to the
//! client. Failures become short plain-text answers (see `error`). A connect
//! failure is retried once on another server; a request that reached an
//! upstream is not retried, because its body may already be gone.

mod error;
mod exchange;
pub mod headers;
pub mod path;
mod redirect;
mod target;
pub mod then;
mod upgrade;

pub use upgrade::Tunnel;

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use error::{Fault, ProxyError, error_text, local_response};

use self::exchange::{Message, Outgoing};
use crate::access_log::Entry;
use crate::balance::hash_key;
use crate::body::request::RequestBody;
use crate::body::response::{Completion, ResponseBody, Upstream as UpstreamBody};
use crate::challenges::HTTP01_PREFIX;
use crate::metrics::RouteSeries;
use crate::plan::{EncodedSlashes, HashKey, Protocol, Underscores};
use crate::routing::{Route, rewrite_path};
use crate::snapshot::{ListenerSnapshot, Snapshot};
use crate::upstream::http1::Outbound;
use crate::upstream::{Lease, Upstream};

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddr,
    /// `addr`'s IP as it goes into `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// Whether the request's `X-Forwarded-*` headers are believed.
    pub earlier_forwarded: headers::Earlier,
    pub tls: bool,
    /// The subject of the certificate the client showed, when the listener
    /// tells upstreams in its `client_subject_header`.
    pub subject: Option<HeaderValue>,
    pub listener: Arc<ListenerSnapshot>,
    /// The tunnel to start once this connection has switched protocols.
    /// Boxed: every connection, idle ones too, holds the slot, and few
    /// ever fill it.
    pub tunnel: std::sync::Mutex<Option<Box<Tunnel>>>,
}

impl Client {
    pub fn new(addr: SocketAddr, tls: bool, listener: Arc<ListenerSnapshot>) -> Self {
        Self {
            addr,
            forwarded_for: headers::client_value(addr.ip()),
            earlier_forwarded: headers::Earlier::of(
                addr.ip(),
                listener.config.trusted_proxies.as_deref(),
            ),
            tls,
            subject: None,
            listener,
            tunnel: std::sync::Mutex::new(None),
        }
    }

    /// This client, known by the subject of its verified certificate
    /// (learnt after the handshake, before any request, so no tunnel is
    /// set up yet).
    pub fn with_subject(&self, subject: HeaderValue) -> Self {
        Self {
            addr: self.addr,
            forwarded_for: self.forwarded_for.clone(),
            earlier_forwarded: self.earlier_forwarded,
            tls: self.tls,
            subject: Some(subject),
            listener: self.listener.clone(),
            tunnel: std::sync::Mutex::new(None),
        }
    }

    fn upgrade(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(tunnel));
    }

    /// The tunnel a 101 response set up, if any.
    pub fn take_tunnel(&self) -> Option<Box<Tunnel>> {
        self.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Serves one request from `snapshot`.
///
/// The checks and rewriting happen here, before the first await; only the
/// exchange with the upstream is a future. Combinators join the steps rather
/// than `async` blocks, which would each store their inner future's state
/// again, and hyper moves a request's whole future at least once.
pub fn handle(
    snapshot: Arc<Snapshot>,
    client: Arc<Client>,
    mut request: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
    let started = Instant::now();
    let log = snapshot
        .access_log
        .as_ref()
        .map(|l| Box::new(l.entry(&request, client.addr.ip())));
    let host = check(&mut request, client.listener.config.path_encoded_slashes);
    let challenge = (!client.tls)
        .then(|| challenge_answer(&snapshot, &request))
        .flatten();
    let redirect = client.listener.config.redirect_https;
    if challenge.is_some() || redirect.is_some() {
        let local = match challenge {
            Some(found) => Ok(found),
            None => host.and_then(|host| {
                host.zip(redirect)
                    .and_then(|(h, port)| redirect::to_https(&h, request.uri(), port))
                    .ok_or(ProxyError::NoRedirectHost)
            }),
        };
        let answer = Answer {
            series: snapshot.unrouted.clone(),
            client,
            started,
            log,
        };
        return Either::Right(std::future::ready(answer.finish(local)));
    }
    let route = host
        .as_ref()
        .ok()
        .and_then(|host| route_of(&snapshot, &request, host.as_ref()));
    let series = route
        .map_or(&snapshot.unrouted, |r| &snapshot.route_series[r.index])
        .clone();
    let outgoing =
        host.and_then(|host| prepare(&snapshot, &client, request, host, route, &series, started));
    let answer = Answer {
        client,
        series,
        started,
        log,
    };
    match outgoing {
        Ok(mut outgoing) => {
            let upgrade = outgoing.upgrade.take();
            let body_timeout = snapshot.upstreams[outgoing.upstream].config.body_timeout;
            Either::Left(then::then(
                exchange::exchange(snapshot, outgoing),
                move |exchanged| {
                    let forwarded = exchanged.and_then(|(response, lease)| {
                        let upgrading = upgrade.as_ref().map(|offer| (&*answer.client, offer));
                        respond(response, lease, upgrading, body_timeout)
                    });
                    answer.finish(forwarded)
                },
            ))
        }
        Err(e) => Either::Right(std::future::ready(answer.finish(Err(e)))),
    }
}

/// What turns a request's outcome into the client's response.
struct Answer {
    client: Arc<Client>,
    series: Arc<RouteSeries>,
    started: Instant,
    log: Option<Box<Entry>>,
}

impl Answer {
    fn finish(
        self,
        forwarded: Result<Response<ResponseBody>, ProxyError>,
    ) -> Response<ResponseBody> {
        let response = forwarded.unwrap_or_else(|e| {
            // Failures a server is blamed for were logged where the server
            // is known.
            if e.upstream_kind().is_none() {
                tracing::debug!(client = %self.client.addr, error = %e, "request refused");
            }
            e.response()
        });
        let status = response.status().as_u16();
        response.map(|body| {
            body.complete_with(Completion {
                series: self.series,
                status,
                started: self.started,
                log: self.log,
            })
        })
    }
}

/// The answer to an ACME HTTP-01 validation (a `GET` for a token the
/// master has pending), which no upstream sees; other requests under the
/// well-known path route as usual, to a backend that runs its own client.
fn challenge_answer<B>(
    snapshot: &Snapshot,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    if !matches!(*request.method(), http::Method::GET | http::Method::HEAD)
        || !request.uri().path().starts_with(HTTP01_PREFIX)
    {
        return None;
    }
    let key_authorization = snapshot.challenges.load().http01(request.uri().path())?;
    let mut response = Response::new(ResponseBody::local(key_authorization));
    let octets = HeaderValue::from_static("application/octet-stream");
    response.headers_mut().insert(header::CONTENT_TYPE, octets);
    Some(response)
}

/// Checks the request's target and host (see [`target`]) and normalises
/// its path, so that the path routed is the path forwarded; the host it is
/// for.
fn check<B>(
    request: &mut Request<B>,
    slashes: EncodedSlashes,
) -> Result<Option<HeaderValue>, ProxyError> {
    let target = target::check(request)?;
    if !target.asterisk {
        normalize_path(request, slashes)?;
    }
    Ok(target.host)
}

/// Normalises the request's path in place (see [`path`]), keeping its
/// query; most paths are normal already and cost one scan.
fn normalize_path<B>(request: &mut Request<B>, slashes: EncodedSlashes) -> Result<(), ProxyError> {
    let uri = request.uri();
    let mut target = match path::normalize(uri.path(), slashes)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normal) => normal,
    };
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    // What normalising makes of a valid target is a valid target.
    parts.path_and_query =
        Some(PathAndQuery::try_from(target).map_err(|_| path::PathError::BadEscape)?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| path::PathError::BadEscape)?;
    Ok(())
}

/// The route for a request with `host`, if any.
fn route_of<'r, B>(
    snapshot: &'r Snapshot,
    request: &Request<B>,
    host: Option<&HeaderValue>,
) -> Option<&'r Route> {
    // `OPTIONS *` asks about the host's server as a whole: its root's.
    let path = if target::is_asterisk(request.uri()) {
        "/"
    } else {
        request.uri().path()
    };
    snapshot
        .routes
        .find(host.and_then(|h| h.to_str().ok()), path)
}

/// Checks the request against the route and listener, and rewrites it for
/// the upstream. Synchronous, so that the request's future carries the
/// rewritten request only, not the steps to it.
fn prepare(
    snapshot: &Snapshot,
    client: &Client,
    request: Request<Incoming>,
    host: Option<HeaderValue>,
    route: Option<&Route>,
    series: &Arc<RouteSeries>,
    started: Instant,
) -> Result<Outgoing, ProxyError> {
    let Some(route) = route else {
        return Err(if host.is_none() {
            ProxyError::BadTarget(target::TargetError::MissingHost)
        } else {
            ProxyError::NoRoute
        });
    };
    let upstream = &snapshot.upstreams[route.upstream];
    let listener = &client.listener.config;
    if let (Some(limit), Some(length)) = (listener.max_request_body, content_length(&request)) {
        if length > limit {
            return Err(ProxyError::BodyTooLarge { length, limit });
        }
    }
    let underscores = listener.underscores_in_headers;
    let found = headers::Found::of(request.headers(), underscores != Underscores::Allow);
    if found.transfer_encoding() && headers::unknown_transfer_coding(request.headers()) {
        return Err(ProxyError::TransferCoding);
    }
    if found.underscore() && underscores == Underscores::Reject {
        return Err(ProxyError::UnderscoredHeader);
    }
    let protocol = upstream.config.protocol;
    let upgrade =
        (found.upgrade() && protocol == Protocol::Http1 && request.version() == Version::HTTP_11)
            .then(|| headers::upgrade_offer(request.headers()).cloned())
            .flatten();

    let (key, named) = wanted(upstream, &request, client.addr.ip());

    let (mut parts, body) = request.into_parts();
    // A repeat must not do twice what the client asked once (RFC 9110
    // §9.2.2), nor lack a body it no longer has.
    let replayable = upstream.servers.len() > 1
        && parts.method.is_idempotent()
        && http_body::Body::is_end_stream(&body)
        && upgrade.is_none();
    scrub(&mut parts.headers, &found, upgrade.is_some(), client);
    // Written behind the request's own fields where nothing is to be
    // merged (most requests), not inserted into the map.
    let fresh = protocol == Protocol::Http1 && !found.forwarded();
    if !fresh {
        headers::add_forwarded(
            &mut parts.headers,
            &client.forwarded_for,
            client.tls,
            host.as_ref(),
            client.earlier_forwarded,
        );
    }
    let scheme = match upstream.config.tls {
        Some(_) => Scheme::HTTPS,
        None => Scheme::HTTP,
    };
    set_target(&mut parts, route, protocol, scheme, host.as_ref());
    let (body, body_sent) = RequestBody::new(
        body,
        listener.max_request_body,
        listener.body_timeout,
        series.clone(),
    );
    let (message, replay) = if protocol == Protocol::Http1 {
        let added = fresh
            .then(|| headers::fresh_forwarded(&client.forwarded_for, client.tls, host.as_ref()))
            .into_iter()
            .flatten();
        let outbound = Box::new(Outbound::new(&parts, added, Some(body)));
        let replay = replayable.then(|| outbound.replay()).flatten();
        (Message::Http1(outbound), replay.map(Message::Http1))
    } else {
        let replay = replayable.then(|| {
            let again = Request::from_parts(parts.clone(), RequestBody::empty(&body));
            Message::Http2(Box::new(again))
        });
        let request = Request::from_parts(parts, body);
        (Message::Http2(Box::new(request)), replay)
    };
    Ok(Outgoing {
        upstream: route.upstream,
        message,
        max_head: listener.max_header_bytes,
        body_sent,
        key,
        named,
        tls: client.tls,
        upgrade,
        started,
        replay,
    })
}

/// Removes what the client sent that is not the upstream's to see: the
/// hop-by-hop fields, names with `_` where the listener drops them, and
/// `Expect` (corral answers `100-continue` itself when it starts reading
/// the body); and sets the subject of the client's certificate where the
/// listener forwards it, in place of whatever the client sent.
fn scrub(fields: &mut http::HeaderMap, found: &headers::Found, upgrading: bool, client: &Client) {
    if found.underscore() {
        headers::remove_underscored(fields);
    }
    headers::remove_found(fields, found, upgrading);
    if let Some(name) = client.listener.config.client_subject_header() {
        headers::set_client_subject(fields, name, client.subject.as_ref());
    }
    fields.remove(header::EXPECT);
}

/// Turns the upstream's response into the client's. `upgrading` is the
/// client and the protocols it offered, when it asked to switch;
/// `body_timeout` the longest pause its body may take.
fn respond(
    response: Response<UpstreamBody>,
    lease: Lease,
    upgrading: Option<(&Client, &HeaderValue)>,
    body_timeout: Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, mut body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only a 101 to a protocol the client offered is a switch: any
        // other would tunnel bytes that neither side framed as agreed.
        let switch = upgrading.filter(|(_, offer)| headers::accepts_offer(&parts.headers, offer));
        let upstream = match &mut body {
            UpstreamBody::Http1(body) => body.take_upgraded(),
            UpstreamBody::Http2(_) => None,
        };
        let (Some((client, _)), Some(upstream)) = (switch, upstream) else {
            return Ok(local_response(
                StatusCode::BAD_GATEWAY,
                "invalid response from upstream",
            ));
        };
        headers::remove_hop_by_hop(&mut parts.headers, true);
        // The client's connection switches once the 101 is written; its
        // serving loop takes the tunnel from here then.
        client.upgrade(Tunnel { upstream, lease });
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    // An HTTP/1.1 response comes without them: corral's client consumes
    // them as it reads the head. The h2 crate refuses most in HTTP/2, but
    // not all (`HTTP2-Settings`).
    if let UpstreamBody::Http2(_) = body {
        headers::remove_hop_by_hop(&mut parts.headers, false);
    }
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, lease, body_timeout),
    ))
}

fn content_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Points the request at the upstream: origin-form (or `*`) with a `Host`
/// header for HTTP/1.1, an absolute URI (whose scheme and authority become
/// `:scheme` and `:authority`) for h2. The path loses the route's prefix
/// when the route strips it.
fn set_target(
    parts: &mut http::request::Parts,
    route: &Route,
    protocol: Protocol,
    scheme: Scheme,
    host: Option<&HeaderValue>,
) {
    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let rewritten = rewrite_path(route, original);
    let needs_origin_form = parts.uri.scheme().is_some() || parts.uri.authority().is_some();
    let path = match (&rewritten, needs_origin_form || protocol == Protocol::H2) {
        (None, false) => None,
        (Some(p), _) => PathAndQuery::try_from(p.as_str()).ok(),
        (None, true) => parts.uri.path_and_query().cloned(),
    };
    match protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            if let Some(path) = path {
                parts.uri = Uri::from(path);
            }
            // An absolute-form target's authority is the host (checked to
            // agree with any `Host`, but written as the target has it).
            if let Some(host) = host {
                if needs_origin_form || !parts.headers.contains_key(header::HOST) {
                    parts.headers.insert(header::HOST, host.clone());
                }
            }
        }
        Protocol::H2 => {
            parts.version = Version::HTTP_2;
            let authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(scheme);
            uri.authority = authority;
            uri.path_and_query = path.or_else(|| Some(PathAndQuery::from_static("/")));
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
                // The authority carries the host in HTTP/2.
                parts.headers.remove(header::HOST);
            }
        }
    }
}

/// What the request asks of its upstream's pick: its key, when the
/// upstream balances by consistent hashing, and the server its sticky
/// cookie names, when the upstream is sticky. An upstream with neither
/// costs two branches.
fn wanted<B>(
    upstream: &Upstream,
    request: &Request<B>,
    client_ip: IpAddr,
) -> (Option<u64>, Option<usize>) {
    let key = upstream
        .hash_key()
        .and_then(|k| request_key(k, request, client_ip));
    let named = upstream
        .sticky
        .as_ref()
        .and_then(|s| s.named(cookie(request.headers(), s.cookie())?));
    (key, named)
}

/// The request's key for consistent hashing; `None` when it has none (the
/// balancer then falls back to a random pick).
fn request_key<B>(key: &HashKey, request: &Request<B>, client_ip: IpAddr) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match client_ip.to_canonical() {
            IpAddr::V4(ip) => hash_key(&ip.octets()),
            IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
        HashKey::Header(name) => request.headers().get(name).map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => cookie(request.headers(), name).map(|v| hash_key(v.as_bytes())),
        HashKey::Path => Some(hash_key(request.uri().path().as_bytes())),
    }
}

fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_several_headers() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    /// The size of the future `make` would return; `make` never runs.
    fn future_size<F>(_make: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves every request's future at least once, and an HTTP/2
    /// connection holds one per stream: its state is the request path's
    /// cost in memory and copies. About 1.6 KiB; passing the request by
    /// value between async steps once made it 2 KiB.
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_request_s_future_stays_small() {
        let size = future_size(|| handle(unreachable!(), unreachable!(), unreachable!()));
        assert!(size <= 1792, "a request's future is {size} bytes");
    }
}
