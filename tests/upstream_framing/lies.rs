//! Responses whose framing cannot be trusted. A head that cannot be read
//! gets the client a 502; a body that goes wrong after its head went out
//! can only be cut (the client must see it end short, never a clean
//! shorter body). Either way corral closes the connection and lends it to
//! no later request: whatever follows a lie on it is no response.

use crate::client::{Ending, fetch};
use crate::common::*;
use crate::{lie, lying};

/// RFC 9112 §6.3 rule 3: Transfer-Encoding overrides Content-Length, and
/// such a message "ought to be handled as an error": two parsers may end
/// it in two places. corral answers 502 (docs/proxy.md, Upstream
/// responses), whichever comes first and whatever the length says.
#[tokio::test]
async fn content_length_beside_transfer_encoding_is_a_502() {
    let lies = [
        (
            "length first",
            lie(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "coding first",
            lie(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 15",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
    ];
    lying("", &lies).await.refuses(&lies).await;
}

#[tokio::test]
async fn differing_content_lengths_are_a_502() {
    let lies = [
        (
            "two lines",
            lie(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
                "hello!",
            ),
        ),
        (
            "one list",
            lie("HTTP/1.1 200 OK\r\nContent-Length: 5, 6", "hello!"),
        ),
    ];
    lying("", &lies).await.refuses(&lies).await;
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6): no sign, no suffix, not
/// empty, and a value the recipient can hold.
#[tokio::test]
async fn a_malformed_content_length_is_a_502() {
    let lies = ["+5", "5x", "-1", "", "0x5", "18446744073709551616"].map(|value| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}");
        (value, lie(&head, "hello"))
    });
    lying("", &lies).await.refuses(&lies).await;
}

/// RFC 9112 §2.2 lets a recipient take a bare LF as a line end; a proxy
/// that does, in front of clients that do not, reads a different message
/// from the same bytes. corral's client is to refuse them.
#[tokio::test]
async fn bare_lf_line_endings_are_a_502() {
    let lies = [
        (
            "everywhere",
            Wire::bytes("HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        ),
        (
            "one header",
            Wire::bytes("HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok"),
        ),
        (
            "the end of the head",
            Wire::bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok"),
        ),
    ];
    lying("", &lies).await.refuses(&lies).await;
}

/// RFC 9112 §5.2: a proxy either replaces an obs-fold with spaces or
/// answers 502; corral answers 502.
#[tokio::test]
async fn an_obs_fold_is_a_502() {
    let lies = [
        (
            "space",
            lie(
                "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2",
                "ok",
            ),
        ),
        (
            "tab",
            lie(
                "HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\nContent-Length: 2",
                "ok",
            ),
        ),
        (
            "before the length",
            lie("HTTP/1.1 200 OK\r\nContent-Length:\r\n 2", "ok"),
        ),
    ];
    lying("", &lies).await.refuses(&lies).await;
}

#[tokio::test]
async fn a_malformed_chunk_cuts_the_response_and_drops_the_connection() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked";
    let lies = [
        ("size zz", lie(chunked, "zz\r\nhello\r\n0\r\n\r\n")),
        ("size -1", lie(chunked, "-1\r\nhello\r\n0\r\n\r\n")),
        (
            "size past u64",
            lie(chunked, "10000000000000000\r\nhello\r\n0\r\n\r\n"),
        ),
        ("no CRLF after data", lie(chunked, "5\r\nhelloXX0\r\n\r\n")),
        ("bare LF after size", lie(chunked, "5\nhello\r\n0\r\n\r\n")),
    ];
    lying("", &lies).await.cuts(&lies).await;
}

/// The listener's `max_header_bytes` bounds what corral buffers for a
/// head, the upstream's as well as the client's: a head of 12 KiB under a
/// limit of 8 KiB is refused, one of 4 KiB is not.
#[tokio::test]
async fn a_response_head_over_max_header_bytes_is_a_502() {
    let big = |kib: usize| {
        let filler = "a".repeat(kib * 1024);
        lie(
            &format!("HTTP/1.1 200 OK\r\nX-Big: {filler}\r\nContent-Length: 2"),
            "ok",
        )
    };
    let settings = "max_header_bytes = \"8 KiB\"";
    let lies = [("12 KiB head", big(12))];
    let f = lying(settings, &lies).await;
    f.refuses(&lies).await;
    // Under the limit, the same kind of head passes.
    let f = lying(settings, &[("4 KiB head", big(4))]).await;
    let got = fetch(f.addr, "/lie/0").await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (200, "ok"),
        "{:?}",
        got.status
    );
    assert_eq!(got.header("x-big")[0].len(), 4 * 1024);
}

#[tokio::test]
async fn a_status_line_that_is_not_http_is_a_502() {
    let lies = [
        ("garbage", lie("SSH-2.0-OpenSSH_9.6", "")),
        (
            "four-digit status",
            lie("HTTP/1.1 2000 OK\r\nContent-Length: 2", "ok"),
        ),
        (
            "two-digit status",
            lie("HTTP/1.1 20 OK\r\nContent-Length: 2", "ok"),
        ),
        (
            "HTTP/2 version",
            lie("HTTP/2 200 OK\r\nContent-Length: 2", "ok"),
        ),
        ("no version", lie("200 OK\r\nContent-Length: 2", "ok")),
    ];
    lying("", &lies).await.refuses(&lies).await;
}

/// The upstream promises more than it sends, then closes: the client must
/// see its response end short (with HTTP/1.1, by the connection closing
/// before the promised length or the last chunk), never a clean shorter
/// body it would take for the whole.
#[tokio::test]
async fn a_body_shorter_than_its_framing_is_cut_for_the_client() {
    let lies = [
        (
            "length",
            lie("HTTP/1.1 200 OK\r\nContent-Length: 10", "hello").then(Then::Close),
        ),
        (
            "chunked",
            lie(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
                "5\r\nhello\r\n",
            )
            .then(Then::Close),
        ),
    ];
    let f = lying("", &lies).await;
    for (i, (case, _)) in lies.iter().enumerate() {
        let got = fetch(f.addr, &format!("/lie/{i}")).await;
        assert!(
            got.status == 502 || matches!(got.ending, Ending::Cut(_)),
            "{case}: the client got {got:?}"
        );
        if got.status == 200 {
            assert_eq!(got.text(), "hello", "{case}");
        }
    }
}
