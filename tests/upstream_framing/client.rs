//! A raw HTTP/1.1 client that reads exactly one response at a time and
//! says how it ended: complete as its framing promised, or cut short. A
//! test sees every byte corral sent, including what follows a response.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::patiently;

/// How a response's body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Where its framing said it ends.
    Complete,
    /// Before that: the connection closed or was reset, or corral sent what
    /// its own framing does not allow.
    Cut(String),
}

/// One final response as the client read it; `status` 0 and a cut
/// ending if the connection ended before any head.
#[derive(Clone)]
pub struct Got {
    pub status: u16,
    /// The 1xx responses read before it.
    pub informational: Vec<u16>,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub ending: Ending,
}

/// `text` cut short past 200 characters: a test's head may be large.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = |fields: &[(String, String)]| -> Vec<(String, String)> {
            fields.iter().map(|(n, v)| (n.clone(), short(v))).collect()
        };
        f.debug_struct("Got")
            .field("status", &self.status)
            .field("informational", &self.informational)
            .field("headers", &fields(&self.headers))
            .field("body", &short(&self.text()))
            .field("trailers", &fields(&self.trailers))
            .field("ending", &self.ending)
            .finish()
    }
}

impl Got {
    /// Every value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    stream: TcpStream,
    /// Read but not yet part of a response.
    buf: Vec<u8>,
    /// Every byte read so far.
    pub received: Vec<u8>,
    /// How the connection ended, once it did.
    ended: Option<String>,
}

/// A GET of `path` that asks for trailers.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: upstream.test\r\nTE: trailers\r\n\r\n")
}

/// One GET of `path` on a new connection.
pub async fn fetch(addr: SocketAddr, path: &str) -> Got {
    Client::connect(addr).await.get(path).await
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = patiently("connecting to corral", TcpStream::connect(addr))
            .await
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
            received: Vec::new(),
            ended: None,
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.send(get_request(path).as_bytes()).await;
        self.response(false).await
    }

    pub async fn head(&mut self, path: &str) -> Got {
        let raw = format!("HEAD {path} HTTP/1.1\r\nHost: upstream.test\r\n\r\n");
        self.send(raw.as_bytes()).await;
        self.response(true).await
    }

    /// The connection itself, for a test that writes on it in the
    /// background.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Reads until `leftover` holds at least `n` bytes (or the connection
    /// ends); what it holds.
    pub async fn read_at_least(&mut self, n: usize) -> Vec<u8> {
        patiently("more bytes", async {
            while self.buf.len() < n && self.fill().await {}
        })
        .await;
        std::mem::take(&mut self.buf)
    }

    /// Reads one final response (skipping 1xx but a 101) to a request that
    /// was a HEAD if `head`.
    pub async fn response(&mut self, head: bool) -> Got {
        patiently("a response", self.read_response(head)).await
    }

    async fn read_response(&mut self, head: bool) -> Got {
        let mut informational = Vec::new();
        loop {
            let Some((status, headers)) = self.read_head().await else {
                return Got {
                    status: 0,
                    informational,
                    headers: Vec::new(),
                    body: Vec::new(),
                    trailers: Vec::new(),
                    ending: self.cut("before any response head"),
                };
            };
            let mut got = Got {
                status,
                informational: informational.clone(),
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
                ending: Ending::Complete,
            };
            if (100..200).contains(&status) && status != 101 {
                informational.push(status);
                continue;
            }
            if head || status == 101 || status == 204 || status == 304 {
                return got;
            }
            let length = got.header("content-length").first().map(|v| v.parse());
            let chunked = got.header("transfer-encoding").contains(&"chunked");
            got.ending = match (chunked, length) {
                (true, _) => self.read_chunked(&mut got).await,
                (false, Some(Ok(length))) => self.read_length(&mut got.body, length).await,
                (false, Some(Err(_))) => Ending::Cut("bad content-length".into()),
                (false, None) => self.read_to_close(&mut got.body).await,
            };
            return got;
        }
    }

    /// A response head: status and headers; `None` if the connection ends
    /// before a byte of one; a panic naming what came if it is no head.
    async fn read_head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap();
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_ascii_lowercase(), value)
                        })
                        .collect();
                    self.buf.drain(..len);
                    return Some((status, headers));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => panic!("not a response ({e}): {:?}", self.shown()),
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "cut in a head: {:?}", self.shown());
                return None;
            }
        }
    }

    async fn read_length(&mut self, body: &mut Vec<u8>, length: usize) -> Ending {
        while self.buf.len() < length {
            if !self.fill().await {
                body.append(&mut self.buf);
                return self.cut(&format!("{} of {length} bytes", body.len()));
            }
        }
        body.extend(self.buf.drain(..length));
        Ending::Complete
    }

    async fn read_chunked(&mut self, got: &mut Got) -> Ending {
        loop {
            let Some(line) = self.line().await else {
                return self.cut("in a chunk size line");
            };
            let size = line.split(';').next().unwrap_or_default();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return Ending::Cut(format!("chunk size line {line:?}"));
            };
            if size == 0 {
                break;
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    got.body.append(&mut self.buf);
                    return self.cut("in a chunk");
                }
            }
            got.body.extend(self.buf.drain(..size));
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Ending::Cut("no CRLF after a chunk".into());
            }
        }
        loop {
            let Some(line) = self.line().await else {
                return self.cut("in the trailers");
            };
            if line.is_empty() {
                return Ending::Complete;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let field = (name.to_ascii_lowercase(), value.trim().to_owned());
            got.trailers.push(field);
        }
    }

    async fn read_to_close(&mut self, body: &mut Vec<u8>) -> Ending {
        while self.fill().await {}
        body.append(&mut self.buf);
        match &self.ended {
            Some(how) if how != "closed" => Ending::Cut(how.clone()),
            _ => Ending::Complete,
        }
    }

    /// One CRLF-ended line without its CRLF; `None` if the connection ends
    /// first.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    fn cut(&self, where_: &str) -> Ending {
        let how = self.ended.as_deref().unwrap_or("ended");
        Ending::Cut(format!("{how} {where_}"))
    }

    /// Reads more; false once the connection has ended (closed or reset).
    async fn fill(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => self.ended = Some("closed".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.received.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) => self.ended = Some(format!("{:?}", e.kind())),
        }
        false
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
