//! Reading an upstream's response head: httparse for the syntax, then the
//! checks that turn a lying or sloppy upstream into an error instead of a
//! second opinion on where the message ends (RFC 9112 §2.2, §6).
//!
//! Refused: bare LF line ends, obs-fold, a head over the listener's
//! `max_header_bytes`, `Content-Length` beside `Transfer-Encoding`,
//! `Transfer-Encoding` in an HTTP/1.0 response, a transfer coding other
//! than a lone `chunked`, and a `Content-Length` that is not one plain
//! number (a list of equal ones is that number).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

/// The most header lines a response head may have.
pub const MAX_HEADERS: usize = 100;

/// A parsed response head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The server keeps the connection open after this response: HTTP/1.1
    /// without `Connection: close`.
    pub keep_alive: bool,
}

/// Where a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: 1xx, 204, 304, or an answer to HEAD.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the server closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Syntax(httparse::Error),
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error("bare LF in the response head")]
    BareLf,
    #[error("status code out of range")]
    Status,
    #[error("malformed header line")]
    Header,
    #[error("malformed or conflicting Content-Length")]
    ContentLength,
    #[error("Content-Length beside Transfer-Encoding")]
    BothFramings,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("a transfer coding other than chunked")]
    TransferCoding,
}

/// Offsets of one header line's name and value in the head.
type Line = (u32, u32, u32, u32);

/// The header lines nearly every head fits in. Room for them costs a
/// fraction of what room for [`MAX_HEADERS`] does to clear; a head with
/// more is parsed again with that.
const FEW_HEADERS: usize = 24;

/// Parses the response head at the start of `buf`: `None` while it is
/// incomplete (and under `max_bytes`). A complete head is taken off the
/// front of `buf`, and header values share its bytes rather than copying
/// them. `to_head` says the request was HEAD, whose answer has no body.
pub fn parse(
    buf: &mut BytesMut,
    max_bytes: usize,
    to_head: bool,
) -> Result<Option<Head>, HeadError> {
    parse_with::<FEW_HEADERS>(buf, max_bytes, to_head).unwrap_or_else(|| {
        parse_with::<MAX_HEADERS>(buf, max_bytes, to_head)
            .unwrap_or(Err(HeadError::TooLarge(max_bytes)))
    })
}

/// [`parse`] with room for `N` header lines; `None` if the head has more.
fn parse_with<const N: usize>(
    buf: &mut BytesMut,
    max_bytes: usize,
    to_head: bool,
) -> Option<Result<Option<Head>, HeadError>> {
    let mut lines: [Line; N] = [(0, 0, 0, 0); N];
    let (len, code, version, count) = {
        let mut headers = [const { MaybeUninit::uninit() }; N];
        let mut response = httparse::Response::new(&mut []);
        let len =
            match parser().parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
                Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
                Ok(httparse::Status::Partial) if buf.len() <= max_bytes => return Some(Ok(None)),
                Err(httparse::Error::TooManyHeaders) => return None,
                Ok(_) => return Some(Err(HeadError::TooLarge(max_bytes))),
                Err(e) => return Some(Err(HeadError::Syntax(e))),
            };
        if has_bare_lf(&buf[..len]) {
            return Some(Err(HeadError::BareLf));
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (line, h) in lines.iter_mut().zip(response.headers.iter()) {
            let (name, value) = (h.name.as_bytes(), h.value);
            *line = (
                offset(name),
                offset(name) + name.len() as u32,
                offset(value),
                offset(value) + value.len() as u32,
            );
        }
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        (
            len,
            response.code.unwrap_or(0),
            version,
            response.headers.len(),
        )
    };
    Some(complete(buf, len, code, version, &lines[..count], to_head).map(Some))
}

/// The head of `len` bytes at the start of `buf`, whose status code and
/// version httparse read and whose lines are at `lines`.
fn complete(
    buf: &mut BytesMut,
    len: usize,
    code: u16,
    version: Version,
    lines: &[Line],
    to_head: bool,
) -> Result<Head, HeadError> {
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status)?;
    let bytes = buf.split_to(len).freeze();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let (headers, fields) = header_map(&bytes, lines, switching)?;
    let framing = framing(status, version, &fields, to_head)?;
    Ok(Head {
        status,
        version,
        headers,
        framing,
        keep_alive: version == Version::HTTP_11 && !fields.close,
    })
}

/// httparse's defaults are its strict settings: obs-fold, a space before
/// a colon and extra spaces around the status code are all errors (see
/// the tests below, which hold them to that).
fn parser() -> httparse::ParserConfig {
    httparse::ParserConfig::default()
}

/// Whether any line of `head` ends in LF alone (httparse accepts that;
/// RFC 9112 §2.2 lets a recipient, and a proxy should not).
pub(super) fn has_bare_lf(head: &[u8]) -> bool {
    // Every byte against the one before it, with no early exit: the
    // compiler does this many bytes at a time, where stopping at each LF
    // (or a search for it) cost more than parsing the head.
    let after_first = head.iter().skip(1).zip(head);
    after_first.fold(head.first() == Some(&b'\n'), |bare, (&byte, &before)| {
        bare | ((byte == b'\n') & (before != b'\r'))
    })
}

/// What the fields that frame a message and manage its connection said.
#[derive(Debug, Default)]
struct Fields {
    /// The one length every `Content-Length` line and list item says.
    length: Option<u64>,
    /// Some `Transfer-Encoding` line was there.
    coded: bool,
    /// The codings, over every line, are `chunked` alone.
    only_chunked: bool,
    /// `Connection` says `close`.
    close: bool,
}

/// The header map of a head whose lines are at `lines` in `bytes`, less
/// the fields that are this connection's alone (RFC 9110 §7.6.1), which
/// the client consumes as it reads them, so that the proxy need not look
/// for them again: `Transfer-Encoding` (the body is handed on decoded),
/// `Connection` and every field it names, `Keep-Alive`, `Upgrade`, `TE`
/// (but `TE: trailers`, as the proxy keeps it on requests),
/// `Proxy-Connection` and `HTTP2-Settings`. A 101 (`switching`) keeps
/// them but for `Transfer-Encoding`, `Keep-Alive` and a `Connection` line
/// that names no field: the proxy decides what of the switch goes on.
/// `Content-Length` stays as one plain number, so that a list of equal
/// values reaches the next hop as the value it means, not as text the
/// next parser may read otherwise.
fn header_map(
    bytes: &Bytes,
    lines: &[Line],
    switching: bool,
) -> Result<(HeaderMap, Fields), HeadError> {
    let mut headers = HeaderMap::with_capacity(lines.len());
    let mut fields = Fields::default();
    let mut codings = 0;
    // The fields `Connection` names, removed once every line is in.
    let mut named = Vec::new();
    let mut seen_te = false;
    for &(ns, ne, vs, ve) in lines {
        let (name, plain) = header_name(&bytes[ns as usize..ne as usize])?;
        let value = &bytes[vs as usize..ve as usize];
        if plain {
            headers.append(name, parsed_value(bytes, value));
            continue;
        }
        if name == header::CONTENT_LENGTH {
            for item in value.split(|&b| b == b',') {
                let item = item.trim_ascii();
                let n = digits(item).ok_or(HeadError::ContentLength)?;
                if fields.length.is_some_and(|l| l != n) {
                    return Err(HeadError::ContentLength);
                }
                if fields.length.is_none() {
                    // The first item, at the first line's place.
                    headers.append(header::CONTENT_LENGTH, parsed_value(bytes, item));
                }
                fields.length = Some(n);
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            fields.coded = true;
            for coding in tokens(value) {
                codings += 1;
                fields.only_chunked = codings == 1 && coding.eq_ignore_ascii_case(b"chunked");
            }
            continue;
        }
        if name == header::CONNECTION {
            let mut names_fields = false;
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    fields.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    names_fields = true;
                    // A token that is no field name names nothing.
                    named.extend(HeaderName::from_bytes(token).ok());
                }
            }
            if !(names_fields && switching) {
                continue;
            }
        } else if name == KEEP_ALIVE {
            continue;
        } else if !switching {
            if name == header::TE {
                // The first line decides, as for requests.
                if !std::mem::replace(&mut seen_te, true) && value.eq_ignore_ascii_case(b"trailers")
                {
                    headers.append(header::TE, HeaderValue::from_static("trailers"));
                }
                continue;
            }
            if name == header::UPGRADE || name == PROXY_CONNECTION || name == HTTP2_SETTINGS {
                continue;
            }
        }
        headers.append(name, parsed_value(bytes, value));
    }
    if !switching {
        for name in named {
            headers.remove(name);
        }
    }
    if fields.coded && fields.length.is_some() {
        // Both framings pass only on a message without a body (`framing`
        // refuses them otherwise): the coding decides, so no length goes on.
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok((headers, fields))
}

/// A header value as httparse read it from `bytes`, or part of one. The
/// bytes httparse lets through in a value (HTAB, SP, visible ASCII and
/// obs-text; never CR, LF or another control) are exactly the ones a
/// `HeaderValue` may hold, as the test `every_byte_httparse_takes_in_a_value_is_one_a_header_value_takes`
/// holds them to, so checking them again for `HeaderValue` (most of the
/// cost of making one) is left out.
#[allow(unsafe_code)]
fn parsed_value(bytes: &Bytes, value: &[u8]) -> HeaderValue {
    let shared = bytes.slice_ref(value);
    // SAFETY: `value` lies in a header value httparse accepted (see above);
    // a debug build checks it again.
    unsafe { HeaderValue::from_maybe_shared_unchecked(shared) }
}

/// The field name `bytes` spell, and whether it is known to be plain (no
/// part in framing or in managing the connection, so nothing to look at
/// but its value). The names nearly every response carries, as servers
/// capitalise them, are one comparison each; any other goes through
/// `HeaderName::from_bytes`, which lowercases the name into a buffer and
/// then looks it up, several times the work.
fn header_name(bytes: &[u8]) -> Result<(HeaderName, bool), HeadError> {
    Ok(match bytes {
        b"Content-Length" => (header::CONTENT_LENGTH, false),
        b"Content-Type" => (header::CONTENT_TYPE, true),
        b"Date" => (header::DATE, true),
        b"Server" => (header::SERVER, true),
        b"Connection" => (header::CONNECTION, false),
        b"Cache-Control" => (header::CACHE_CONTROL, true),
        b"Transfer-Encoding" => (header::TRANSFER_ENCODING, false),
        b"Last-Modified" => (header::LAST_MODIFIED, true),
        b"ETag" => (header::ETAG, true),
        b"Vary" => (header::VARY, true),
        b"Set-Cookie" => (header::SET_COOKIE, true),
        _ => (
            HeaderName::from_bytes(bytes).map_err(|_| HeadError::Header)?,
            false,
        ),
    })
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The comma-separated, trimmed, non-empty tokens of a field value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn framing(
    status: StatusCode,
    version: Version,
    fields: &Fields,
    to_head: bool,
) -> Result<Framing, HeadError> {
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || to_head;
    if no_body {
        return Ok(Framing::Empty);
    }
    if fields.coded {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingInHttp10);
        }
        if fields.length.is_some() {
            return Err(HeadError::BothFramings);
        }
        if !fields.only_chunked {
            return Err(HeadError::TransferCoding);
        }
        return Ok(Framing::Chunked);
    }
    Ok(fields.length.map_or(Framing::Close, Framing::Length))
}

/// A non-empty run of ASCII digits as a number, without overflow.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(wire: &[u8], to_head: bool) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(wire), 8192, to_head)
    }

    fn framing_of(wire: &str) -> Result<Framing, HeadError> {
        parse_all(wire.as_bytes(), false).map(|h| h.expect("complete").framing)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_its_values_share_it() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"[..],
        );
        let head = parse(&mut buf, 8192, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn the_connection_s_own_fields_are_consumed_and_the_length_made_one_number() {
        let names = |wire: &str| {
            let head = parse_all(wire.as_bytes(), false).unwrap().unwrap();
            let fields: Vec<String> = head
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            fields.join("; ")
        };
        assert_eq!(
            names(
                "HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 5, 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nX-B: 1\r\n\r\n"
            ),
            "server: a; content-length: 5; x-b: 1"
        );
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
            ""
        );
        // The fields a `Connection` line names go with it, wherever they are.
        assert_eq!(
            names(
                "HTTP/1.1 200 OK\r\nX-Secret: 0\r\nConnection: keep-alive\r\nConnection: x-secret, x-other\r\nX-Secret: 1\r\nX-Other: 2\r\nContent-Length: 0\r\n\r\n"
            ),
            "content-length: 0"
        );
        // The other hop-by-hop fields go too; `TE: trailers` stays.
        assert_eq!(
            names(
                "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nTE: trailers\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"
            ),
            "te: trailers; x-a: 1; content-length: 0"
        );
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nTE: gzip\r\nContent-Length: 0\r\n\r\n"),
            "content-length: 0"
        );
        // A switch keeps them but what frames this hop: the proxy decides.
        assert_eq!(
            names(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: timeout=5\r\n\r\n"
            ),
            "connection: Upgrade; upgrade: websocket"
        );
        // Without a body, the coding still decides: no length goes on.
        let head = parse_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            true,
        )
        .unwrap()
        .unwrap();
        assert!(head.headers.is_empty());
    }

    #[test]
    fn every_byte_httparse_takes_in_a_value_is_one_a_header_value_takes() {
        for byte in 0..=255u8 {
            let mut wire = b"HTTP/1.1 200 OK\r\nX-A: a".to_vec();
            wire.extend([byte, b'b']);
            wire.extend(b"\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut response = httparse::Response::new(&mut headers);
            let taken = parser().parse_response(&mut response, &wire).is_ok();
            let value = HeaderValue::from_bytes(&[b'a', byte, b'b']).is_ok();
            assert_eq!(taken, value, "byte {byte:#04x}");
        }
    }

    #[test]
    fn common_names_are_the_names_from_bytes_makes() {
        for name in [
            "Content-Length",
            "Content-Type",
            "Date",
            "Server",
            "Connection",
            "Cache-Control",
            "Transfer-Encoding",
            "Last-Modified",
            "ETag",
            "Vary",
            "Set-Cookie",
            "content-length",
            "X-Custom",
        ] {
            let (made, plain) = header_name(name.as_bytes()).unwrap();
            assert_eq!(made, HeaderName::from_bytes(name.as_bytes()).unwrap());
            // Only the names that take part in framing or the connection
            // (and any not listed) are looked at again.
            let special = [
                "content-length",
                "connection",
                "transfer-encoding",
                "x-custom",
            ];
            assert_eq!(plain, !special.contains(&made.as_str()), "{name}");
        }
        assert_eq!(header_name(b"Bad Name"), Err(HeadError::Header));
    }

    #[test]
    fn a_bare_lf_is_found_wherever_it_is() {
        assert!(!has_bare_lf(b""));
        assert!(!has_bare_lf(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"));
        for bare in [
            &b"\n"[..],
            b"\nHTTP/1.1",
            b"HTTP/1.1 200 OK\nA: b\r\n\r\n",
            b"A: b\r\n\n",
        ] {
            assert!(has_bare_lf(bare), "{:?}", String::from_utf8_lossy(bare));
        }
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let wire = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
        for cut in 0..wire.len() {
            assert!(
                parse_all(&wire[..cut], false).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        assert!(parse_all(wire, false).unwrap().is_some());
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n"),
            Ok(Framing::Length(7))
        );
        for empty in [
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
            "103 Early Hints",
            "101 Switching Protocols",
        ] {
            let wire = format!("HTTP/1.1 {empty}\r\nContent-Length: 9\r\n\r\n");
            assert_eq!(framing_of(&wire), Ok(Framing::Empty), "{empty}");
        }
        let to_head = parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(to_head.framing, Framing::Empty);
        assert_eq!(to_head.headers["content-length"], "9");
    }

    #[test]
    fn keep_alive_is_http_1_1_without_close() {
        let keeps = |wire: &str| {
            parse_all(wire.as_bytes(), false)
                .unwrap()
                .unwrap()
                .keep_alive
        };
        assert!(keeps("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keeps(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keeps(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn lies_about_framing_are_errors() {
        use HeadError as E;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::BothFramings,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::TransferEncodingInHttp10,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                E::TransferCoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3,\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                E::ContentLength,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n",
                E::ContentLength,
            ),
            ("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", E::BareLf),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", E::BareLf),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", E::BareLf),
            ("HTTP/1.1 099 Low\r\n\r\n", E::Status),
        ];
        for (wire, error) in cases {
            assert_eq!(
                parse_all(wire.as_bytes(), false).map(|_| ()),
                Err(error),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn what_httparse_refuses_is_a_syntax_error() {
        for wire in [
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Space : a\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1  200 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad\0Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(wire.as_bytes(), false), Err(HeadError::Syntax(_))),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn a_head_past_the_limit_is_an_error_complete_or_not() {
        let long = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n", "a".repeat(200));
        let limit = 100;
        assert_eq!(
            parse(&mut BytesMut::from(long.as_bytes()), limit, false).map(|_| ()),
            Err(HeadError::TooLarge(limit))
        );
        assert_eq!(
            parse(&mut BytesMut::from(&long.as_bytes()[..150]), limit, false).map(|_| ()),
            Err(HeadError::TooLarge(limit))
        );
        let many = |n| {
            let lines: String = (0..n).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("HTTP/1.1 200 OK\r\n{lines}Content-Length: 0\r\n\r\n")
        };
        assert_eq!(
            parse_all(many(MAX_HEADERS).as_bytes(), false).map(|_| ()),
            Err(HeadError::TooLarge(8192))
        );
        // More lines than the first try has room for, and fewer than the limit.
        let head = parse_all(many(FEW_HEADERS).as_bytes(), false)
            .unwrap()
            .unwrap();
        assert_eq!(head.headers.len(), FEW_HEADERS + 1);
        assert_eq!(head.headers["x-23"], "v");
        let head = parse_all(many(MAX_HEADERS - 1).as_bytes(), false)
            .unwrap()
            .unwrap();
        assert_eq!(head.headers.len(), MAX_HEADERS);
        // Partial, with more lines than the first try has room for.
        let partial = many(FEW_HEADERS + 5);
        let partial = &partial.as_bytes()[..partial.len() - 4];
        assert!(parse_all(partial, false).unwrap().is_none());
    }
}
