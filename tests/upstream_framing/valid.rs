//! Every response framing RFC 9112 §6.3 allows, relayed whole, and its
//! connection reused for the next request unless the framing means it
//! cannot be (a body that ends at close, `Connection: close`).

use crate::client::{Client, Ending};
use crate::common::*;
use crate::one_case;

#[tokio::test]
async fn a_content_length_body_is_relayed_and_its_connection_reused() {
    let f = one_case(Wire::bytes(
        "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Case: length\r\n\r\nhello world",
    ))
    .await;
    let (conn, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello world"));
    assert_eq!(got.ending, Ending::Complete);
    assert_eq!(got.header("x-case"), ["length"]);
    assert_eq!(got.header("content-length"), ["11"]);
    assert!(f.next_reuses(conn, "/next").await, "not reused");
}

/// Chunk extensions are the upstream's business and go no further; the
/// trailers reach a client that said `TE: trailers`.
#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_is_relayed_and_its_connection_reused() {
    let f = one_case(Wire::bytes(concat!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n",
        "5;name=value\r\nhello\r\n",
        "6;a;b=\"q;x\"\r\n world\r\n",
        "0;last\r\nX-Sum: 42\r\n\r\n",
    )))
    .await;
    let (conn, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello world"));
    assert_eq!(got.ending, Ending::Complete);
    assert_eq!(got.trailers, [("x-sum".to_owned(), "42".to_owned())]);
    assert!(got.header("content-length").is_empty(), "{got:?}");
    assert!(f.next_reuses(conn, "/next").await, "not reused");
}

/// No `Content-Length`, no `Transfer-Encoding`: the body is everything
/// until the upstream closes (RFC 9112 §6.3 rule 8), here more than one
/// read's worth.
#[tokio::test]
async fn a_close_delimited_body_is_relayed_whole_and_its_connection_never_reused() {
    let body: String = (0..20_000).map(|i| format!("{i:05}")).collect();
    let wire = Wire::bytes(format!("HTTP/1.1 200 OK\r\nX-Case: eof\r\n\r\n{body}"));
    let f = one_case(wire.then(Then::Close)).await;
    let (conn, got) = f.get("/case").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.ending, Ending::Complete, "{:?}", got.headers);
    assert_eq!(got.body.len(), body.len());
    assert!(got.text() == body, "the body differs");
    assert!(!f.next_reuses(conn, "/next").await, "reused");
}

#[tokio::test]
async fn a_response_that_says_connection_close_is_never_reused() {
    // The upstream says it will close, then waits for another request: a
    // client that reused the connection would wait for an answer forever.
    let f = one_case(Wire::bytes(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let (conn, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert!(!f.next_reuses(conn, "/next").await, "reused");
    f.up.closed(conn).await;
}

/// The `Content-Length` of a HEAD response is the length a GET would
/// have had, not a body to wait for (RFC 9110 §9.3.2).
#[tokio::test]
async fn a_head_response_with_a_content_length_has_no_body_and_its_connection_is_reused() {
    let f = one_case(Wire::bytes(
        "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Case: head\r\n\r\n",
    ))
    .await;
    let got = Client::connect(f.addr).await.head("/case").await;
    let conn = f.up.conn_of("/case").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-case"), ["head"]);
    assert_eq!(got.header("content-length"), ["1234"]);
    assert!(f.next_reuses(conn, "/next").await, "not reused");
}

/// Neither 204 nor 304 has a body, whatever its headers say: a 304's
/// `Content-Length` is the representation's (RFC 9110 §8.6).
#[tokio::test]
async fn responses_204_and_304_have_no_body_and_their_connection_is_reused() {
    for (status, head) in [
        (204, "HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\n"),
        (
            304,
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 99\r\n\r\n",
        ),
    ] {
        let f = one_case(Wire::bytes(head)).await;
        let mut client = Client::connect(f.addr).await;
        let got = client.get("/case").await;
        let conn = f.up.conn_of("/case").await;
        assert_eq!(got.status, status, "{got:?}");
        // The next response on the same client connection starts right
        // after the head: no body was relayed.
        let next = client.get("/same-client").await;
        assert_eq!((next.status, next.text().as_str()), (200, "/same-client"));
        assert_eq!(
            f.up.conn_of("/same-client").await,
            conn,
            "{status}: not reused"
        );
    }
}

/// A 100, a 103 with its hints, and the final head with its body, in one
/// write: the final response is the answer; the upstream connection is as
/// clean as after any other.
#[tokio::test]
async fn informational_responses_before_the_final_one_are_skipped() {
    let f = one_case(Wire::bytes(concat!(
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: final\r\n\r\nfinal",
    )))
    .await;
    let (conn, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "final"), "{got:?}");
    assert_eq!(got.header("x-case"), ["final"]);
    assert!(got.informational.iter().all(|s| [100, 103].contains(s)));
    assert!(f.next_reuses(conn, "/next").await, "not reused");
}

/// The head and body in one-byte writes: the client's parser must carry
/// every partial line, chunk size and CRLF across reads.
#[tokio::test]
async fn a_response_written_a_byte_at_a_time_is_relayed_whole() {
    let length = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Case: slow\r\n\r\n0123456789";
    let chunked = concat!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "3;e=1\r\nabc\r\n0\r\n\r\n",
    );
    for (wire, body) in [(length, "0123456789"), (chunked, "abc")] {
        let f = one_case(Wire::byte_at_a_time(wire)).await;
        let (conn, got) = f.get("/case").await;
        assert_eq!((got.status, got.text().as_str()), (200, body), "{got:?}");
        assert_eq!(got.ending, Ending::Complete);
        assert!(
            f.next_reuses(conn, "/next").await,
            "not reused after {wire:?}"
        );
    }
}
