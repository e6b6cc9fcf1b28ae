//! What the tests stand on: an HTTP/1.1 upstream written on raw sockets
//! that records each request and each connection's close, and a
//! well-behaved HTTP/2 client that keeps asking through an attack.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{PATIENCE, empty, h2c, within_patience};

/// What the upstream saw: each request with the connection it came on
/// (numbered from 0), and the connections closed.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: Vec<(usize, String)>,
    pub closed: HashSet<usize>,
}

impl Seen {
    pub fn count(&self, path: &str) -> usize {
        self.requests.iter().filter(|(_, p)| p == path).count()
    }

    /// The connections requests for `path` came on.
    pub fn conns(&self, path: &str) -> Vec<usize> {
        self.requests
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// The length `/long` announces; it sends a sixty-fourth of it, then waits.
pub const LONG: usize = 1 << 20;

/// An HTTP/1.1 upstream on raw sockets. `/hold` is never answered;
/// `/long` gets a head and the start of its body, then nothing; anything
/// else `ok`, on a connection kept alive. A connection is closed (and
/// recorded so) once corral closes it.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (log, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            for id in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, id, log.clone()));
            }
        });
        Self { addr, seen, task }
    }

    /// Waits until what the upstream saw satisfies `done`.
    pub async fn wait(&self, what: &str, mut done: impl FnMut(&Seen) -> bool) {
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(PATIENCE, seen.wait_for(|s| done(s))).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the upstream never saw {what}: {:?}",
            *self.seen.borrow()
        );
    }

    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.borrow())
    }
}

async fn serve(mut stream: TcpStream, id: usize, log: watch::Sender<Seen>) {
    let mut buf = Vec::new();
    while let Some(path) = read_head(&mut stream, &mut buf).await {
        log.send_modify(|s| s.requests.push((id, path.clone())));
        let answer = match path.as_str() {
            "/hold" => None,
            "/long" => {
                let mut head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {LONG}\r\n\r\n").into_bytes();
                head.extend(vec![b'x'; LONG / 64]);
                Some(head)
            }
            _ => {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
                if stream.write_all(&ok).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if let Some(answer) = answer {
            let _ = stream.write_all(&answer).await;
        }
        // Nothing more for this connection: wait for corral to close it.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        break;
    }
    log.send_modify(|s| {
        s.closed.insert(id);
    });
}

/// The path of the next request head on `stream` (requests carry no body
/// here), or `None` once the connection is closed.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let line = String::from_utf8_lossy(&head).into_owned();
            return line.split_whitespace().nth(1).map(str::to_owned);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A well-behaved HTTP/2 client asking `GET /` over one connection, one
/// request after another, for as long as it lives.
pub struct Bystander {
    served: watch::Receiver<usize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    pub async fn start(addr: SocketAddr) -> Self {
        let mut sender = h2c(addr).await;
        let (count, served) = watch::channel(0);
        let failures = Arc::new(Mutex::new(Vec::new()));
        let failed = failures.clone();
        let task = tokio::spawn(async move {
            loop {
                let request = Request::get(format!("http://{addr}/"))
                    .body(empty())
                    .unwrap();
                let outcome = within_patience(async {
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    match (status, &body.to_bytes()[..]) {
                        (StatusCode::OK, b"ok") => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await
                .unwrap_or_else(|| Err(format!("no answer after {PATIENCE:?}")));
                match outcome {
                    Ok(()) => count.send_modify(|n| *n += 1),
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        return;
                    }
                }
            }
        });
        let bystander = Self {
            served,
            failures,
            task,
        };
        bystander.served_more(1).await;
        bystander
    }

    /// Waits until `n` more of its requests have been answered.
    pub async fn served_more(&self, n: usize) {
        let mut served = self.served.clone();
        let target = *served.borrow_and_update() + n;
        let waited = tokio::time::timeout(PATIENCE, served.wait_for(|&s| s >= target)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the well-behaved client stalled: {:?}",
            self.failures.lock().unwrap()
        );
    }

    /// Checks that it was served throughout, and stops it.
    pub async fn finish(self) {
        self.served_more(1).await;
        self.task.abort();
        assert_eq!(*self.failures.lock().unwrap(), Vec::<String>::new());
    }
}
