//! Test upstreams on 127.0.0.1:0: corral's echo server, one answering with
//! any handler, one that holds a request, one whose health check fails.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::clients::{TestBody, empty, full};

/// A running test upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub(super) stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// corral's own echo server, in-process.
pub async fn echo(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(corral::echo::serve(listener, name.to_owned(), stop.clone()));
    Upstream { addr, stop }
}

/// An HTTP/1.1 + h2c upstream answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_with_peers(handler).await.0
}

/// The client addresses of the connections an upstream accepted: one per
/// connection corral opened to it.
pub type Peers = Arc<Mutex<std::collections::HashSet<SocketAddr>>>;

/// [`upstream`], noting where each of its connections came from.
pub async fn upstream_with_peers<F, Fut>(handler: F) -> (Upstream, Peers)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let peers = Peers::default();
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            seen.lock().unwrap().insert(peer);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (Upstream { addr, stop }, peers)
}

/// An upstream that holds its first request: the receiver completes when
/// that request arrives, and it is answered `done` once the sender fires.
/// Later requests are answered `done` at once.
pub async fn holding() -> (
    Upstream,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let hooks = Arc::new(Mutex::new(Some((arrived_tx, release_rx))));
    let up = upstream(move |_req| {
        let hooks = hooks.lock().unwrap().take();
        async move {
            if let Some((arrived, release)) = hooks {
                arrived.send(()).unwrap();
                let _ = release.await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    (up, arrived_rx, release_tx)
}

/// An upstream named `a` (in `x-backend`) whose `/healthz` fails while the
/// returned flag is set.
pub async fn sickly() -> (Upstream, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let failing = req.uri().path() == "/healthz" && flag.load(Ordering::SeqCst);
        async move {
            let status = if failing { 500 } else { 200 };
            Response::builder()
                .status(status)
                .header("x-backend", "a")
                .body(empty())
                .unwrap()
        }
    })
    .await;
    (up, sick)
}
