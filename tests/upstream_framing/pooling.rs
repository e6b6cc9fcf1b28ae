//! What may and may not be lent again: a pooled connection the upstream
//! closed is replaced without the client noticing; bytes an upstream sends
//! after a complete response, at once or while the connection idles, are
//! never read as the next request's response (nginx's keepalive module
//! drops such a connection, nginx/nginx#929); a connection whose upstream
//! answered before the request body was all sent is never reused.

use tokio::io::AsyncWriteExt;

use crate::client::{Client, Ending, fetch};
use crate::common::*;
use crate::{by_target, fixture, one_case};

/// The upstream closes right after a response that announced no close,
/// then, the next time, a while after it: either way the next request is
/// answered, on a new connection, with no 502 (a request never written can
/// go on another connection).
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_without_a_502() {
    let f =
        one_case(Wire::bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").then(Then::Close))
            .await;
    let (closing, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    f.up.closed(closing).await;
    let (later, got) = f.get("/after-close").await;
    assert_eq!((got.status, got.text().as_str()), (200, "/after-close"));
    assert_ne!(later, closing);

    // Now idle in the pool when the upstream hangs up.
    f.up.hang_up(later);
    f.up.closed(later).await;
    let (next, got) = f.get("/after-hang-up").await;
    assert_eq!((got.status, got.text().as_str()), (200, "/after-hang-up"));
    assert_ne!(next, later);
}

/// A second response right behind the first, in the same write: whether
/// or not corral reuses the connection, the next request gets its own
/// answer, not the one nobody asked for.
#[tokio::test]
async fn a_response_pipelined_behind_a_complete_one_never_answers_the_next_request() {
    let f = one_case(Wire::bytes(concat!(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk",
    )))
    .await;
    let (_, got) = f.get("/case").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    // On the same connection or another (reused, corral must have dropped
    // what was left over first).
    let (_, next) = f.get("/next").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "/next"),
        "{next:?}"
    );
}

/// Junk written on a connection idle in the pool, once it has reached
/// corral's socket (or corral has closed it): the next request never takes
/// it for its response.
#[tokio::test]
async fn junk_on_an_idle_pooled_connection_never_answers_the_next_request() {
    let f = fixture(Wire::target).await;
    let (conn, got) = f.get("/first").await;
    assert_eq!(got.status, 200);
    f.up.inject(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk");
    let (corral_end, up_end) = (f.up.peer(conn), f.up.addr);
    until(
        "the junk in corral's socket, or the connection closed",
        async || {
            let queued = tcp_sockets()
                .into_iter()
                .find(|s| s.local == corral_end && s.remote == up_end)
                .is_some_and(|s| s.rx_queue > 0);
            queued || f.up.is_closed(conn)
        },
    )
    .await;
    let (_, next) = f.get("/next").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "/next"),
        "{next:?}"
    );
}

/// The upstream refuses a large upload after its head alone (413, no
/// `Connection: close`) and stops reading. The client gets the 413; it
/// then sends the rest of its body anyway, which may all fit in the
/// sockets' buffers, so that the upload looks finished. The connection is
/// still not lent again: the upstream never read that body, and would take
/// it for the next request's head.
#[tokio::test]
async fn an_answer_before_the_request_body_was_sent_drops_the_connection() {
    const LENGTH: usize = 1 << 20;
    let early = "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!";
    let f = fixture(by_target(vec![(
        "/upload".into(),
        Wire::bytes(early).before_body(),
    )]))
    .await;
    let mut uploader = Client::connect(f.addr).await;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: {LENGTH}\r\n\r\n");
    uploader.send(head.as_bytes()).await;
    uploader.send(&[b'x'; 16 * 1024]).await;
    let got = uploader.response(false).await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (413, "too big!"),
        "{got:?}"
    );
    assert_eq!(got.ending, Ending::Complete);
    let conn = f.up.conn_of("/upload").await;
    // The rest, in the background: corral may stop reading it, and the
    // client's writes then wait until the test ends.
    let mut stream = uploader.into_stream();
    let rest = tokio::spawn(async move {
        let _ = stream.write_all(&vec![b'x'; LENGTH - 16 * 1024]).await;
        stream
    });
    // Lent again, the connection would never answer (the upstream reads
    // no more): the client would wait out its patience.
    let next = fetch(f.addr, "/next").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "/next"),
        "{next:?}"
    );
    assert_ne!(
        f.up.conn_of("/next").await,
        conn,
        "reused after an early answer"
    );
    rest.abort();
}
