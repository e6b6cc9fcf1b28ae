//! `Transfer-Encoding` in responses, after the request smuggling fixed in
//! Pingora 0.8.0 (early 2026: a list or repeat of codings read as chunked,
//! a body framed by close where none may be), turned on the upstream side:
//! only the chunked coding alone frames a body. Its name is case-insensitive and
//! whitespace around it is no part of it (RFC 9110 §5.5); anything else
//! (another coding, chunked twice, chunked with parameters, a name that
//! merely contains it, any coding in an HTTP/1.0 response) is a 502.
//!
//! RFC 9112 §6.3 rule 4 would have a client read a response whose final
//! coding is not chunked until close; but corral removes
//! `Transfer-Encoding` as hop-by-hop, so it could only pass such a body on
//! stripped of its coding, and refuses it as it refuses such requests
//! (501, docs/proxy.md). Each lie is followed by a close, so that a client
//! that reads to the close shows what it relayed rather than hanging.

use crate::client::Ending;
use crate::common::*;
use crate::{lie, lying, one_case};

#[tokio::test]
async fn chunked_in_capitals_or_with_whitespace_around_it_is_chunked() {
    for value in ["Chunked", "CHUNKED", "chunked ", "chunked\t"] {
        let f = one_case(lie(
            &format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {value}"),
            "5\r\nhello\r\n0\r\n\r\n",
        ))
        .await;
        let (conn, got) = f.get("/case").await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "hello"),
            "{value:?}: {got:?}"
        );
        assert_eq!(got.ending, Ending::Complete);
        assert!(f.next_reuses(conn, "/next").await, "{value:?}: not reused");
    }
}

#[tokio::test]
async fn a_transfer_coding_other_than_a_lone_chunked_is_a_502() {
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let lies = [
        "gzip",
        "xchunked",
        "chunkedx",
        "chunked;q=1",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "",
    ]
    .map(|codings| {
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}");
        (codings, lie(&head, body).then(Then::Close))
    });
    lying("", &lies).await.refuses(&lies).await;
}

/// RFC 9112 §6.1: a client that receives an HTTP/1.0 message with
/// Transfer-Encoding "MUST treat the message as if the framing is faulty,
/// even if a Content-Length is present".
#[tokio::test]
async fn transfer_encoding_in_an_http_1_0_response_is_a_502() {
    let lies = [
        (
            "chunked",
            lie(
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunked and a length",
            lie(
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                "hello",
            ),
        ),
    ]
    .map(|(case, wire)| (case, wire.then(Then::Close)));
    lying("", &lies).await.refuses(&lies).await;
}
