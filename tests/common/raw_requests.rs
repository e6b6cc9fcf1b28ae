//! Reading requests off a raw stream as a strict server does: the head
//! with httparse, one framing (a length, or chunked alone), then the body
//! and its trailers. What [`super::scripted`] records of each request.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How a request's body was framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`.
    None,
    Length(usize),
    Chunked,
}

/// One request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// Which accepted connection it came on, counting from 0.
    pub conn: usize,
    /// The head exactly as received, request line to blank line.
    pub head: Vec<u8>,
    pub method: String,
    pub target: String,
    /// Names lower-cased, in order, repeats kept; values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub framing: Framing,
    pub body: Vec<u8>,
    /// The chunked body's trailer fields, as [`Arrived::headers`].
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Arrived {
    /// Every value of header `name` (lower-case), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// Reads one request head from `buf` and the stream, and takes it out of
/// `buf`; `None` once the connection ends or sends what is not a request.
pub async fn read_head(conn: usize, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Arrived> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = request.parse(buf).ok()? {
            let headers: Vec<(String, Vec<u8>)> = request
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            let framing = framing(&headers)?;
            let arrived = Arrived {
                conn,
                head: buf[..len].to_vec(),
                method: request.method?.to_owned(),
                target: request.path?.to_owned(),
                headers,
                framing,
                body: Vec::new(),
                trailers: Vec::new(),
            };
            buf.drain(..len);
            return Some(arrived);
        }
        fill(stream, buf).await?;
    }
}

/// A request's framing; `None` for any a strict server refuses.
fn framing(headers: &[(String, Vec<u8>)]) -> Option<Framing> {
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    match (
        &values("transfer-encoding")[..],
        &values("content-length")[..],
    ) {
        ([], []) => Some(Framing::None),
        ([b"chunked"], []) => Some(Framing::Chunked),
        ([], [length]) => Some(Framing::Length(
            std::str::from_utf8(length).ok()?.parse().ok()?,
        )),
        _ => None,
    }
}

/// Reads `arrived`'s body (and trailers) from `buf` and the stream, and
/// takes it out of `buf`.
pub async fn read_body(
    arrived: &mut Arrived,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<()> {
    match arrived.framing {
        Framing::None => {}
        Framing::Length(length) => {
            while buf.len() < length {
                fill(stream, buf).await?;
            }
            arrived.body = buf.drain(..length).collect();
        }
        Framing::Chunked => loop {
            let line = read_line(stream, buf).await?;
            let size = std::str::from_utf8(&line).ok()?.split(';').next()?;
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                break read_trailers(arrived, stream, buf).await?;
            }
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            arrived.body.extend(buf.drain(..size));
            (buf.drain(..2).as_slice() == b"\r\n").then_some(())?;
        },
    }
    Some(())
}

async fn read_trailers(
    arrived: &mut Arrived,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<()> {
    loop {
        let line = read_line(stream, buf).await?;
        if line.is_empty() {
            return Some(());
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = String::from_utf8(line[..colon].to_vec()).ok()?;
        let value = line[colon + 1..].trim_ascii().to_vec();
        arrived.trailers.push((name.to_ascii_lowercase(), value));
    }
}

/// One CRLF-ended line, without its CRLF.
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..at].to_vec();
            buf.drain(..at + 2);
            return Some(line);
        }
        fill(stream, buf).await?;
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = vec![0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
