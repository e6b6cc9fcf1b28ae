//! What the requests of one client connection share ([`Conn`]) and the
//! hyper service each of them goes through: it hands the request to
//! [`proxy::handle`] with the snapshot current when it arrived, and marks
//! the request's start and end for the connection's timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;

use super::head_budget::HeadBudget;
use super::timeouts::{Activity, RequestGuard};
use crate::body::response::{BodyError, ResponseBody};
use crate::proxy::{self, Client};
use crate::snapshot::{ListenerSnapshot, SharedSnapshot};

/// What every request of a connection shares.
pub struct Conn {
    pub listener: Arc<ListenerSnapshot>,
    pub snapshot: SharedSnapshot,
    pub activity: Arc<Activity>,
    pub client: Arc<Client>,
    /// The worker's budget for request heads in flight.
    pub heads: Arc<HeadBudget>,
}

impl Conn {
    /// The client (whom a load balancer's PROXY header may have named).
    pub fn peer(&self) -> SocketAddr {
        self.client.addr
    }
}

/// The service every request of `conn` goes through (it owns what it
/// needs, so each request's future stands on its own).
pub fn service(
    conn: &Conn,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Tracked>, Infallible>> + Send + use<>,
> + Clone
+ Send
+ use<> {
    let activity = conn.activity.clone();
    let shared = conn.snapshot.clone();
    let client = conn.client.clone();
    service_fn(move |request: Request<Incoming>| {
        let multiplexed = request.version() == Version::HTTP_2;
        let guard = activity.begin(multiplexed);
        let snapshot = shared.load_full();
        let client = client.clone();
        // A combinator, not an `async` block (see `proxy::handle`).
        proxy::then::then(
            proxy::handle(snapshot, client, request),
            move |mut response| {
                // Read as the response leaves, not when the connection
                // task last looked (see `http1`).
                if !multiplexed && guard.activity().draining() {
                    // Tell the client, before it sends another request on this
                    // connection, that the connection is closing.
                    let close = http::HeaderValue::from_static("close");
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, close);
                }
                Ok::<_, Infallible>(response.map(|body| Tracked { body, guard }))
            },
        )
    })
}

/// A response body that marks its request finished for [`Activity`] when
/// hyper is done with it.
pub struct Tracked {
    body: ResponseBody,
    guard: RequestGuard,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // One clock reading for all that ends with the request.
        let now = tokio::time::Instant::now();
        self.body.finish(now);
        self.guard.end(now);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
