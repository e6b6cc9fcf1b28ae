//! A raw HTTP/2 client: frames written by hand on a TCP socket, as an
//! abusive client would, and every frame the server sends, read in the
//! background.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::common::patiently;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` on `stream`, the request complete in one HEADERS frame.
/// HPACK without Huffman or indexing: `:method GET` and `:scheme http`
/// from the static table, `:path` and `:authority` as literals.
pub fn request(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (name_index, value) in [(4u8, path), (1, "h2.test")] {
        block.push(name_index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping() -> Vec<u8> {
    frame(PING, 0, 0, &[0; 8])
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// A stream that depends on itself: a stream error (RFC 9113 §5.3.1),
/// which the server answers by resetting that stream.
pub fn self_dependent(stream: u32) -> Vec<u8> {
    let mut payload = stream.to_be_bytes().to_vec();
    payload.push(15);
    frame(PRIORITY, 0, stream, &payload)
}

/// One frame the server sent.
#[derive(Debug)]
pub struct Received {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Received {
    /// The payload's 32-bit word at `at`.
    pub fn word(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A client connection speaking raw frames.
pub struct Raw {
    write: OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<Received>,
    /// The server's SETTINGS, as (identifier, value).
    pub server_settings: Vec<(u16, u32)>,
    /// Frames received so far by type (those of unknown types not
    /// counted).
    pub received: [usize; 10],
}

impl Raw {
    /// Connects, sends the preface with `params`, and acknowledges the
    /// server's SETTINGS.
    pub async fn connect(addr: SocketAddr, params: &[(u16, u32)]) -> Self {
        let (mut read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let mut head = [0u8; 9];
                if read.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; len];
                if read.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let stream = u32::from_be_bytes(head[5..9].try_into().unwrap());
                let _ = tx.send(Received {
                    kind: head[3],
                    flags: head[4],
                    stream,
                    payload,
                });
            }
        });
        let mut raw = Self {
            write,
            frames,
            server_settings: Vec::new(),
            received: [0; 10],
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(params));
        assert!(raw.send(&hello).await);
        let theirs = raw
            .until(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .await
            .expect("no SETTINGS from the server");
        raw.server_settings = theirs
            .payload
            .chunks(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes(p[2..6].try_into().unwrap()),
                )
            })
            .collect();
        assert!(raw.send(&frame(SETTINGS, ACK, 0, &[])).await);
        raw
    }

    /// Writes `bytes`; false once the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        patiently("writing frames", self.write.write_all(bytes))
            .await
            .is_ok()
    }

    /// The server's frames until one satisfies `wanted` (or `None` once
    /// the connection is closed).
    pub async fn until(&mut self, mut wanted: impl FnMut(&Received) -> bool) -> Option<Received> {
        patiently("a frame from the server", async {
            while let Some(f) = self.frames.recv().await {
                if let Some(n) = self.received.get_mut(usize::from(f.kind)) {
                    *n += 1;
                }
                if wanted(&f) {
                    return Some(f);
                }
            }
            None
        })
        .await
    }

    /// The GOAWAY's error code and debug data, once it comes; `None` if the
    /// connection closed without one.
    pub async fn goaway(&mut self) -> Option<(u32, String)> {
        let goaway = self.until(|f| f.kind == GOAWAY).await?;
        let debug = String::from_utf8_lossy(&goaway.payload[8..]).into_owned();
        Some((goaway.word(4), debug))
    }
}
