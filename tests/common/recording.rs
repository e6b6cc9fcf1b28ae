//! A strict upstream that records exactly what reached it: each request's
//! head as sent and its body, parsed with httparse, and for a connection it
//! switched, every byte that came after its 101. It answers `200 ok`, or
//! what the test's reply function says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The head exactly as received, request line to blank line.
    pub head: String,
    pub method: String,
    pub target: String,
    /// Names lower-cased, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes that had arrived beyond the request when it was parsed.
    pub early: Vec<u8>,
}

impl Recorded {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How the recording upstream answers a request.
pub enum Answer {
    /// `200` with body `ok`.
    Ok,
    /// A raw response, written as is; the connection then ends.
    Raw(&'static str),
    /// `101` switching to this protocol; bytes after it are recorded in
    /// `tunnel` and echoed back.
    Switch(&'static str),
}

pub struct Recording {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// What arrived on switched connections after their 101.
    pub tunnel: Arc<Mutex<Vec<u8>>>,
    stop: CancellationToken,
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Recording {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

type ReplyFn = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

/// A recording upstream answering every request `200 ok`.
pub async fn recording() -> Recording {
    recording_with(|_| Answer::Ok).await
}

/// A recording upstream answering with `reply`.
pub async fn recording_with(
    reply: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
) -> Recording {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let tunnel = Arc::new(Mutex::new(Vec::new()));
    let reply: ReplyFn = Arc::new(reply);
    let (token, seen, tunneled) = (stop.clone(), requests.clone(), tunnel.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap().0,
            };
            let (seen, tunneled, reply) = (seen.clone(), tunneled.clone(), reply.clone());
            tokio::spawn(serve(stream, seen, tunneled, reply));
        }
    });
    Recording {
        addr,
        requests,
        tunnel,
        stop,
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Recorded>>>,
    tunnel: Arc<Mutex<Vec<u8>>>,
    reply: ReplyFn,
) {
    let mut buf = Vec::new();
    loop {
        let Some((recorded, used)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        buf.drain(..used);
        let answer = reply(&recorded);
        seen.lock().unwrap().push(recorded);
        match answer {
            Answer::Ok => {
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Answer::Raw(raw) => {
                let _ = stream.write_all(raw.as_bytes()).await;
                return;
            }
            Answer::Switch(protocol) => {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                return echo_tunnel(stream, buf, tunnel).await;
            }
        }
    }
}

/// Records and echoes what follows a 101, starting with what was buffered.
pub(super) async fn echo_tunnel(
    mut stream: TcpStream,
    early: Vec<u8>,
    tunnel: Arc<Mutex<Vec<u8>>>,
) {
    let mut chunk = early;
    loop {
        if !chunk.is_empty() {
            tunnel.lock().unwrap().extend_from_slice(&chunk);
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
        chunk = vec![0; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => chunk.truncate(n),
        }
    }
}

/// Reads one request (head, then a Content-Length or chunked body) from
/// `buf` and the stream; the request and how many bytes of `buf` it took.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Recorded, usize)> {
    let (mut recorded, head_len, length, chunked) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = request.parse(buf).ok()? {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let value = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
            let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let recorded = Recorded {
                head: String::from_utf8_lossy(&buf[..len]).into_owned(),
                method: request.method?.to_owned(),
                target: request.path?.to_owned(),
                headers,
                body: Vec::new(),
                early: Vec::new(),
            };
            break (recorded, len, length, chunked);
        }
        fill(stream, buf).await?;
    };
    let mut at = head_len;
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + i;
                }
                fill(stream, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            while buf.len() < at + size + 2 {
                fill(stream, buf).await?;
            }
            recorded.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = length {
        while buf.len() < at + length {
            fill(stream, buf).await?;
        }
        recorded.body = buf[at..at + length].to_vec();
        at += length;
    }
    recorded.early = buf[at..].to_vec();
    Some((recorded, at))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
