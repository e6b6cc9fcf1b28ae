//! HTTP clients: bodies, one request ([`get`], [`H1`], [`h2c`]), and a
//! [`Load`] of clients sending back to back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::patience::{PATIENCE, patiently, within_patience};

pub type TestBody = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of `pieces` pieces of `ab`, `pause` apart, that then ends, or,
/// if `stall`, never does.
pub fn trickle(pieces: usize, pause: std::time::Duration, stall: bool) -> TestBody {
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if i == pieces {
            if stall {
                std::future::pending::<()>().await;
            }
            return None;
        }
        let piece = hyper::body::Frame::data(Bytes::from_static(b"ab"));
        Some((Ok::<_, std::io::Error>(piece), i + 1))
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo server's name, from `x-backend`.
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// A keep-alive HTTP/1.1 client connection. Every wait (connect, response
/// head, body) is bounded by [`PATIENCE`].
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    host: String,
    local: SocketAddr,
    /// When the client began to open the connection.
    opened_at: std::time::Instant,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        patiently(&format!("connecting to {addr}"), async {
            let opened_at = std::time::Instant::now();
            let stream = TcpStream::connect(addr).await.unwrap();
            let local = stream.local_addr().unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn.with_upgrades());
            Self {
                sender,
                host: addr.to_string(),
                local,
                opened_at,
            }
        })
        .await
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `request` and waits for the response head.
    pub async fn send(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        patiently("waiting for a response head", async {
            self.sender.ready().await?;
            self.sender.send_request(request).await
        })
        .await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request = request.header("host", self.host.clone());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self.send(request.body(empty()).unwrap()).await.unwrap();
        read(response).await
    }
}

/// Reads a response's body to its end (within [`PATIENCE`]).
pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = patiently("reading a response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get(path, headers).await
}

/// An HTTP/2 (prior knowledge) client connection.
/// (Its handshake is bounded by [`PATIENCE`]; bound the requests sent on it
/// with [`patiently`].)
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    patiently(&format!("an HTTP/2 handshake with {addr}"), async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    })
    .await
}

/// One request's outcome under load.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub at: std::time::Instant,
    pub ok: bool,
    pub fresh: bool,
    pub error: String,
    /// The client's end of the connection the request went on, and when
    /// the client began to open that connection (none if connecting failed).
    pub local: Option<SocketAddr>,
    pub opened_at: Option<std::time::Instant>,
}

/// Clients sending requests back to back: `keepalive` of them over reused
/// connections, `fresh` of them on a new connection per request.
pub struct Load {
    stop: CancellationToken,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    successes: watch::Sender<usize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, keepalive: usize, fresh: usize) -> Self {
        let stop = CancellationToken::new();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let successes = watch::Sender::new(0);
        let mut tasks = Vec::new();
        for i in 0..keepalive + fresh {
            let (stop, outcomes, successes) = (stop.clone(), outcomes.clone(), successes.clone());
            let fresh = i >= keepalive;
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<H1> = None;
                while !stop.is_cancelled() {
                    let mut used = None;
                    // A request that hangs is a failure like any other, not a
                    // client that stops sending.
                    let result = within_patience(async {
                        if fresh || conn.is_none() {
                            let opened_at = std::time::Instant::now();
                            let stream = TcpStream::connect(addr)
                                .await
                                .map_err(|e| format!("connect: {e}"))?;
                            let local = stream.local_addr().map_err(|e| format!("connect: {e}"))?;
                            let (sender, driver) =
                                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                    .await
                                    .map_err(|e| format!("handshake: {e}"))?;
                            tokio::spawn(driver);
                            conn = Some(H1 {
                                sender,
                                host: addr.to_string(),
                                local,
                                opened_at,
                            });
                        }
                        let c = conn.as_mut().unwrap();
                        used = Some((c.local, c.opened_at));
                        let request = Request::get("/load")
                            .header("host", "load.test")
                            .body(empty())
                            .unwrap();
                        c.sender
                            .ready()
                            .await
                            .map_err(|e| format!("request: {e}"))?;
                        let response = c
                            .sender
                            .send_request(request)
                            .await
                            .map_err(|e| format!("request: {e}"))?;
                        let status = response.status();
                        let keep = response
                            .headers()
                            .get("connection")
                            .is_none_or(|v| v != "close");
                        response
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| format!("body: {e}"))?;
                        if !keep {
                            conn = None;
                        }
                        if status == StatusCode::OK {
                            Ok(())
                        } else {
                            Err(format!("status {status}"))
                        }
                    })
                    .await
                    .unwrap_or_else(|| Err(format!("no answer after {PATIENCE:?}")));
                    if result.is_err() || fresh {
                        conn = None;
                    }
                    if result.is_ok() {
                        successes.send_modify(|n| *n += 1);
                    }
                    let outcome = Outcome {
                        at: std::time::Instant::now(),
                        ok: result.is_ok(),
                        fresh,
                        error: result.err().unwrap_or_default(),
                        local: used.map(|(local, _)| local),
                        opened_at: used.map(|(_, at)| at),
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            }));
        }
        Self {
            stop,
            outcomes,
            successes,
            tasks,
        }
    }

    /// Waits until `n` more requests have succeeded.
    pub async fn wait_successes(&self, n: usize) {
        let mut successes = self.successes.subscribe();
        let target = *successes.borrow_and_update() + n;
        let reached = tokio::time::timeout(PATIENCE, successes.wait_for(|&s| s >= target)).await;
        assert!(matches!(reached, Ok(Ok(_))), "load stalled");
    }

    /// Stops the clients and returns the requests that failed, after
    /// printing how many were sent `during` what the test did.
    pub async fn finish(self, during: &str) -> Vec<Outcome> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        let total = outcomes.len();
        let failures: Vec<Outcome> = outcomes.into_iter().filter(|o| !o.ok).collect();
        eprintln!("{total} requests {during}, {} failed", failures.len());
        failures
    }
}

/// Whether, of ten requests to `addr` (all answered), `a_share` went to
/// the echo named `a` and the rest to `b`.
pub async fn spread(addr: SocketAddr, a_share: usize) -> bool {
    let mut a_count = 0;
    for _ in 0..10 {
        let reply = get(addr, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        match reply.backend().as_str() {
            "a" => a_count += 1,
            "b" => {}
            other => panic!("answered by {other:?}"),
        }
    }
    a_count == a_share
}
