//! The chunked transfer coding, decoded strictly (RFC 9112 §7.1): a chunk
//! size is hex digits alone (no sign, no overflow), extensions are skipped
//! but may not hold control characters, every line ends in CRLF, and chunk
//! data is followed by CRLF. Trailer fields are parsed like a head.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The longest chunk-size line, extensions included. Real ones are a few
/// bytes; the bound keeps a server that sends nothing else from growing
/// the buffer.
pub const MAX_SIZE_LINE: usize = 4096;

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What the bytes decoded so far hold next.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is over; nothing of the buffer past it was taken.
    End,
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunk size")]
    Size,
    #[error("chunk-size line longer than {MAX_SIZE_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("malformed trailer fields")]
    Trailers,
    #[error("trailer fields larger than {0} bytes")]
    TrailersTooLarge(usize),
}

impl Chunked {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what it can from the front of `buf`, taking it off; chunk
    /// data comes out as slices of `buf`'s memory, not copies. Trailer
    /// fields may take up to `max_trailers` bytes.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => match size_line(buf)? {
                    None => return Ok(Decoded::NeedMore),
                    Some((len, size)) => {
                        buf.advance(len);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::Data(size)
                        };
                    }
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    self.state = match left - n as u64 {
                        0 => State::DataEnd,
                        rest => State::Data(rest),
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::DataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Size;
                    }
                    Some(_) => return Err(ChunkError::MissingCrlf),
                    None if buf.first().is_some_and(|&b| b != b'\r') => {
                        return Err(ChunkError::MissingCrlf);
                    }
                    None => return Ok(Decoded::NeedMore),
                },
                State::Trailers => {
                    let Some((len, trailers)) = trailers(buf, max_trailers)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(len);
                    self.state = State::Done;
                    if !trailers.is_empty() {
                        return Ok(Decoded::Trailers(trailers));
                    }
                }
                State::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// A complete chunk-size line at the front of `buf`: its length with the
/// CRLF, and the size it gives.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, ChunkError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return if buf.is_empty() {
            Ok(None)
        } else {
            Err(ChunkError::Size)
        };
    }
    // 16 hex digits hold any u64; leading zeros aside, more overflow.
    let significant = &buf[..digits];
    let significant = &significant[significant.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > 16 {
        return Err(ChunkError::Size);
    }
    let size = significant.iter().fold(0u64, |n, &b| (n << 4) | hex(b));
    // After the digits: optional whitespace and `;` extensions, then CRLF.
    let mut in_extension = false;
    for (i, &b) in buf.iter().enumerate().skip(digits) {
        if i >= MAX_SIZE_LINE {
            return Err(ChunkError::LineTooLong);
        }
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err(ChunkError::Size),
                    None => Ok(None),
                };
            }
            b';' => in_extension = true,
            b' ' | b'\t' => {}
            b if in_extension && b >= 0x20 && b != 0x7f => {}
            _ => return Err(ChunkError::Size),
        }
    }
    if buf.len() >= MAX_SIZE_LINE {
        return Err(ChunkError::LineTooLong);
    }
    Ok(None)
}

fn hex(b: u8) -> u64 {
    u64::from(match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    })
}

/// The trailer section at the front of `buf` (fields, then an empty line):
/// its length and fields, once it is all there.
fn trailers(buf: &[u8], max: usize) -> Result<Option<(usize, HeaderMap)>, ChunkError> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) if len > max => {
            return Err(ChunkError::TrailersTooLarge(max));
        }
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(ChunkError::TrailersTooLarge(max)),
        Err(_) => return Err(ChunkError::Trailers),
    };
    if super::head::has_bare_lf(&buf[..len]) {
        return Err(ChunkError::Trailers);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ChunkError::Trailers)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ChunkError::Trailers)?;
        map.append(name, value);
    }
    Ok(Some((len, map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` whole, fed `step` bytes at a time.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf, 1024)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers)),
                Decoded::NeedMore if fed == wire.len() => return Err(ChunkError::MissingCrlf),
                Decoded::NeedMore => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunks_extensions_and_trailers_decode_however_the_bytes_arrive() {
        let wire = b"5;name=\"v a\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0 ; last\r\nx-sum: 1\r\nx-more: 2\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode(wire, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
            let trailers = trailers.unwrap();
            assert_eq!(trailers["x-sum"], "1");
            assert_eq!(trailers["x-more"], "2");
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap(), (vec![], None));
        // Leading zeros are still a size.
        assert_eq!(
            decode(b"00000000000000000003\r\nabc\r\n0\r\n\r\n", 4)
                .unwrap()
                .0,
            b"abc"
        );
    }

    #[test]
    fn lies_about_chunk_framing_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"-1\r\nx\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"5\r\nhello\r\n0\r\nbad field\r\n\r\n",
        ] {
            assert!(
                decode(wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
            assert!(
                decode(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let endless = vec![b'1'; MAX_SIZE_LINE + 1];
        assert_eq!(decode(&endless, 512), Err(ChunkError::Size));
        let mut long = b"1;".to_vec();
        long.resize(MAX_SIZE_LINE + 1, b'x');
        assert_eq!(decode(&long, 512), Err(ChunkError::LineTooLong));
    }

    #[test]
    fn nothing_past_the_end_is_taken() {
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        let mut decoder = Chunked::new();
        assert_eq!(
            decoder.decode(&mut buf, 64),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut buf, 64), Ok(Decoded::End));
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }
}
