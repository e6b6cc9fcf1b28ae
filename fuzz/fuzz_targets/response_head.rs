//! `corral::upstream::http1`'s response-head parser and chunked decoder on
//! any bytes from a server. Beyond never panicking:
//!
//! - the heads, interim 1xx ones read past as the client does: one
//!   parse of everything and one fed in pieces (as reads arrive) agree;
//!   a complete head takes at most the input, every proper prefix of it
//!   is incomplete, and it reads the same alone; no header value holds
//!   CR, LF or NUL; no line ends in a bare LF; the framing is what
//!   RFC 9112 §6.3 says of its status and headers: `Empty` for 1xx, 204,
//!   304 and HEAD, `Chunked` for a lone `chunked` coding with no
//!   `Content-Length` in HTTP/1.1, `Length` for exactly one distinct
//!   `Content-Length` number, else `Close`; keep-alive is HTTP/1.1
//!   without `Connection: close`;
//! - a chunked body, decoded from what follows the head: fed in the same
//!   pieces and all at once, it gives the same data, trailers and ending
//!   (errors may differ in kind, not in being errors); it never yields
//!   more data than it was fed, nor empty data, nor asks for more once
//!   done; it takes nothing past its end, and the bytes it took decode
//!   alone to the same body, which a plain reference decoder agrees with.
//!
//! Input: byte 0 is HEAD (bit 0) and the head limit ((byte 0 >> 1) + 1
//! times 64 bytes); byte 1 the trailer limit (times 8); bytes 2 and 3 four
//! nibbles, each a piece size (1 + n²) of the pattern reads follow; then
//! the server's bytes.
#![no_main]

use bytes::BytesMut;
use corral::upstream::http1::{ChunkError, Chunked, Decoded, Framing, Head, HeadError, parse_head};
use http::header::{self, HeaderMap};
use http::{StatusCode, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((settings, wire)) = data.split_first_chunk::<4>() else {
        return;
    };
    let to_head = settings[0] & 1 != 0;
    let max_bytes = (usize::from(settings[0] >> 1) + 1) * 64;
    let max_trailers = usize::from(settings[1]) * 8;
    let mut pieces = Pieces::new(settings[2], settings[3]);
    let Some((head, end, buf, fed)) = final_head(wire, max_bytes, to_head, &mut pieces) else {
        return;
    };
    if head.framing == Framing::Chunked {
        check_body(&wire[end..], buf, &wire[fed..], &mut pieces, max_trailers);
    }
});

/// Reads the heads at the front of `wire` at once and in `pieces`, past
/// interim ones, and checks they agree and hold. A complete final head
/// comes with where it ends in `wire`, what was read past it in pieces,
/// and how much of `wire` was read.
fn final_head(
    wire: &[u8],
    max_bytes: usize,
    to_head: bool,
    pieces: &mut Pieces,
) -> Option<(Head, usize, BytesMut, usize)> {
    let mut rest = BytesMut::from(wire);
    let mut interim = Vec::new();
    let (whole, start) = loop {
        let start = wire.len() - rest.len();
        match parse_head(&mut rest, max_bytes, to_head) {
            Ok(Some(head)) if is_interim(&head) => {
                let taken = &wire[start..wire.len() - rest.len()];
                check_head(&head, taken, max_bytes, to_head);
                interim.push(summary(&head));
            }
            parsed => break (parsed, start),
        }
    };
    let (interim_in_pieces, piecewise, buf, fed) =
        heads_in_pieces(wire, max_bytes, to_head, pieces);
    assert_eq!(interim, interim_in_pieces, "interim heads fed in pieces");
    let head = match (whole, piecewise) {
        (Ok(None), Ok(None)) => {
            let left = wire.len() - start;
            assert!(left <= max_bytes, "{left} bytes incomplete");
            return None;
        }
        // Past the limit, reads stop before the bad byte the whole shows.
        (Err(e), Err(p))
            if e == p
                || (p == HeadError::TooLarge(max_bytes) && matches!(e, HeadError::Syntax(_))) =>
        {
            return None;
        }
        (Ok(Some(head)), Ok(Some(again))) => {
            assert_eq!(summary(&head), summary(&again), "fed in pieces");
            assert_eq!(wire.len() - rest.len(), fed - buf.len(), "fed in pieces");
            head
        }
        (whole, piecewise) => panic!("whole: {whole:?}\nin pieces: {piecewise:?}"),
    };
    let end = wire.len() - rest.len();
    check_head(&head, &wire[start..end], max_bytes, to_head);
    Some((head, end, buf, fed))
}

/// Decodes the chunked `body` at once, and from `buf` then `more` in
/// `pieces`, and checks they agree and hold.
fn check_body(body: &[u8], buf: BytesMut, more: &[u8], pieces: &mut Pieces, max_trailers: usize) {
    let at_once = decode(BytesMut::from(body), &[], pieces, max_trailers);
    let in_pieces = decode(buf, more, pieces, max_trailers);
    assert_eq!(at_once.data, in_pieces.data, "data, fed in pieces");
    assert_eq!(
        at_once.trailers, in_pieces.trailers,
        "trailers, fed in pieces"
    );
    match (&at_once.ending, &in_pieces.ending) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "ending, fed in pieces"),
        // A size line or trailer section both too long and malformed is
        // called one or the other depending on what had arrived.
        (Err(_), Err(_)) => {}
        (a, b) => panic!("at once: {a:?}, in pieces: {b:?}"),
    }
    if at_once.ending != Ok(Ending::End) {
        return;
    }
    assert_eq!(at_once.consumed, in_pieces.consumed, "taken, fed in pieces");
    let taken = &body[..at_once.consumed];
    let alone = decode(BytesMut::from(taken), &[], pieces, max_trailers);
    assert_eq!(alone, at_once, "the body's own bytes alone");
    let (data, trailers_at) = reference(taken).expect("the reference decoder refused it");
    assert_eq!(data, at_once.data, "the reference decoder's data");
    assert!(trailers_at <= at_once.consumed);
}

/// The piece sizes reads come in, in turn.
struct Pieces {
    sizes: [usize; 4],
    next: usize,
}

impl Pieces {
    fn new(a: u8, b: u8) -> Self {
        let size = |n: u8| 1 + usize::from(n) * usize::from(n);
        Self {
            sizes: [size(a & 15), size(a >> 4), size(b & 15), size(b >> 4)],
            next: 0,
        }
    }

    /// Moves the next piece of `wire` (from `fed`) into `buf`; false when
    /// nothing is left.
    fn feed(&mut self, buf: &mut BytesMut, wire: &[u8], fed: &mut usize) -> bool {
        if *fed == wire.len() {
            return false;
        }
        let end = (*fed + self.sizes[self.next % 4]).min(wire.len());
        self.next += 1;
        buf.extend_from_slice(&wire[*fed..end]);
        *fed = end;
        true
    }
}

/// A 1xx response the client reads past to the final one; 101 is final.
fn is_interim(head: &Head) -> bool {
    head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
}

/// Parses heads as the client does: after each read, past interim ones,
/// until a final one is complete or one is wrong. Gives the interim heads,
/// the buffer after the last one and how much was read.
fn heads_in_pieces(
    wire: &[u8],
    max_bytes: usize,
    to_head: bool,
    pieces: &mut Pieces,
) -> (
    Vec<Summary>,
    Result<Option<Head>, HeadError>,
    BytesMut,
    usize,
) {
    let (mut interim, mut buf, mut fed) = (Vec::new(), BytesMut::new(), 0);
    loop {
        if !buf.is_empty() {
            match parse_head(&mut buf, max_bytes, to_head) {
                Ok(Some(head)) if is_interim(&head) => {
                    interim.push(summary(&head));
                    continue;
                }
                Ok(None) => {}
                parsed => return (interim, parsed, buf, fed),
            }
        }
        if !pieces.feed(&mut buf, wire, &mut fed) {
            return (interim, Ok(None), buf, fed);
        }
    }
}

type Summary = (StatusCode, Version, HeaderMap, Framing, bool);

fn summary(head: &Head) -> Summary {
    (
        head.status,
        head.version,
        head.headers.clone(),
        head.framing,
        head.keep_alive,
    )
}

/// What a complete head `taken` off the input must be.
fn check_head(head: &Head, taken: &[u8], max_bytes: usize, to_head: bool) {
    assert!(
        !taken.is_empty() && taken.len() <= max_bytes,
        "{} bytes",
        taken.len()
    );
    // Every cut of a short head, and a sample of a long one's.
    for cut in (0..taken.len()).step_by(1 + taken.len() / 512) {
        let cut_head = parse_head(&mut BytesMut::from(&taken[..cut]), max_bytes, to_head);
        assert!(matches!(cut_head, Ok(None)), "cut at {cut}: {cut_head:?}");
    }
    let mut alone = BytesMut::from(taken);
    let again = parse_head(&mut alone, max_bytes, to_head);
    assert!(alone.is_empty(), "the head alone left {alone:?}");
    assert_eq!(
        summary(&again.unwrap().unwrap()),
        summary(head),
        "the head alone"
    );
    let bare_lf = taken
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || taken[i - 1] != b'\r'));
    assert!(!bare_lf, "a bare LF in {taken:?}");
    for (name, value) in &head.headers {
        let bad = value
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0));
        assert!(!bad, "{name}: {value:?}");
    }
    assert!((100..=999).contains(&head.status.as_u16()));
    assert_eq!(head.framing, framing(head, to_head), "{:?}", head.headers);
    let close = tokens(&head.headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"close"));
    assert_eq!(head.keep_alive, head.version == Version::HTTP_11 && !close);
}

/// The framing RFC 9112 §6.3 gives a head the parser accepted.
fn framing(head: &Head, to_head: bool) -> Framing {
    let headers = &head.headers;
    let mut lengths: Vec<u64> = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|item| {
            let item = item.trim_ascii();
            assert!(
                !item.is_empty() && item.iter().all(u8::is_ascii_digit),
                "Content-Length item {item:?}"
            );
            std::str::from_utf8(item)
                .unwrap()
                .parse()
                .expect("a Content-Length over u64")
        })
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    assert!(lengths.len() <= 1, "Content-Length: {lengths:?}");
    let status = head.status.as_u16();
    if (100..200).contains(&status) || status == 204 || status == 304 || to_head {
        return Framing::Empty;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        assert!(lengths.is_empty(), "Transfer-Encoding and Content-Length");
        assert_eq!(head.version, Version::HTTP_11);
        let codings: Vec<_> = tokens(headers, header::TRANSFER_ENCODING).collect();
        assert!(
            codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"),
            "{codings:?}"
        );
        return Framing::Chunked;
    }
    lengths
        .first()
        .map_or(Framing::Close, |&n| Framing::Length(n))
}

/// The non-empty comma-separated items of every `name` line.
fn tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[derive(Debug, PartialEq, Eq)]
enum Ending {
    End,
    /// The input ran out first.
    NeedMore,
}

#[derive(Debug, PartialEq)]
struct Body {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    ending: Result<Ending, ChunkError>,
    /// Bytes the decoder took (meaningful once it ended).
    consumed: usize,
}

/// Decodes a chunked body from `buf`, then from `more` in `pieces` when it
/// asks for them.
fn decode(mut buf: BytesMut, more: &[u8], pieces: &mut Pieces, max_trailers: usize) -> Body {
    let mut decoder = Chunked::new();
    let (mut data, mut trailers, mut fed) = (Vec::new(), None, 0);
    let given = buf.len();
    let ending = loop {
        let decoded = match decoder.decode(&mut buf, max_trailers) {
            Ok(decoded) => decoded,
            Err(e) => break Err(e),
        };
        match decoded {
            Decoded::Data(d) => {
                assert!(!d.is_empty() && trailers.is_none() && !decoder.is_done());
                data.extend_from_slice(&d);
            }
            Decoded::Trailers(t) => {
                assert!(trailers.is_none() && !t.is_empty() && decoder.is_done());
                for (name, value) in &t {
                    let bad = value
                        .as_bytes()
                        .iter()
                        .any(|b| matches!(b, b'\r' | b'\n' | 0));
                    assert!(!bad, "trailer {name}: {value:?}");
                }
                trailers = Some(t);
            }
            Decoded::End => {
                assert!(decoder.is_done());
                let left = buf.clone();
                assert_eq!(decoder.decode(&mut buf, max_trailers), Ok(Decoded::End));
                assert_eq!(buf, left, "taken after the end");
                break Ok(Ending::End);
            }
            Decoded::NeedMore => {
                assert!(!decoder.is_done(), "more asked for once done");
                if !pieces.feed(&mut buf, more, &mut fed) {
                    break Ok(Ending::NeedMore);
                }
            }
        }
    };
    assert!(data.len() <= given + fed);
    Body {
        data,
        trailers,
        ending,
        consumed: given + fed - buf.len(),
    }
}

/// A plain decoder of a chunked body the real one ended: its data, and
/// where its trailer section starts.
fn reference(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut data, mut at) = (Vec::new(), 0);
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = &body[at..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let hex = std::str::from_utf8(&line[..digits])
            .ok()?
            .trim_start_matches('0');
        let size = if hex.is_empty() {
            0
        } else {
            usize::from_str_radix(hex, 16).ok()?
        };
        let after = line[digits..].trim_ascii_start();
        if digits == 0 || !(after.is_empty() || after[0] == b';') {
            return None;
        }
        at = line_end + 2;
        if size == 0 {
            return Some((data, at));
        }
        data.extend_from_slice(body.get(at..at + size)?);
        at += size;
        if body.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}
