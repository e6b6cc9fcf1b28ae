//! Responses: the same upstream answers read by hyper's client directly
//! and by a hyper client through corral; status, end-to-end headers, body
//! and trailers must agree.
//!
//! Allowed differences, and why:
//! - hop-by-hop headers ([`crate::HOP_BY_HOP`]): corral frames the body
//!   anew for its client (a body that ended at close reaches it chunked),
//!   so `Transfer-Encoding` and `Connection` are each hop's own.
//!
//! - a 304's `Content-Length`: RFC 9110 §8.6 lets a server send, on a 304,
//!   the length a 200 would have had, or nothing; corral's server (hyper)
//!   sends nothing. If it sends one, it must be the upstream's.
//!
//! Nothing else: every answer carries its own `Date`, so that corral's
//! server has none to add; `Content-Length` is end to end where the
//! upstream sent one (a HEAD's included).

use http::Request;

use crate::common::*;
use crate::{Differences, end_to_end, exchange, pair};

const DATE: &str = "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n";

/// Each case: the target asked for, and the upstream's answer.
fn answers() -> Vec<(&'static str, Wire)> {
    let large: Vec<Vec<u8>> = std::iter::once(
        format!(
            "HTTP/1.1 200 OK\r\n{DATE}Content-Length: {}\r\n\r\n",
            1 << 20
        )
        .into_bytes(),
    )
    .chain((0..16u8).map(|i| vec![b'a' + i; 64 * 1024]))
    .collect();
    vec![
        (
            "/length",
            wire(format!(
                "HTTP/1.1 200 OK\r\n{DATE}Content-Length: 11\r\nX-Case: length\r\n\r\nhello world"
            )),
        ),
        (
            "/chunked",
            wire(format!(
                "HTTP/1.1 200 OK\r\n{DATE}Transfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n"
            )),
        ),
        (
            "/close",
            wire(format!(
                "HTTP/1.1 200 OK\r\n{DATE}X-Case: close\r\n\r\n{}",
                "until close ".repeat(1000)
            ))
            .then(Then::Close),
        ),
        (
            "/head",
            wire(format!(
                "HTTP/1.1 200 OK\r\n{DATE}Content-Length: 1234\r\nX-Case: head\r\n\r\n"
            )),
        ),
        (
            "/no-content",
            wire(format!(
                "HTTP/1.1 204 No Content\r\n{DATE}X-Case: 204\r\n\r\n"
            )),
        ),
        (
            "/not-modified",
            wire(format!(
                "HTTP/1.1 304 Not Modified\r\n{DATE}ETag: \"v1\"\r\nContent-Length: 99\r\n\r\n"
            )),
        ),
        (
            "/error",
            wire(format!(
                "HTTP/1.1 503 Service Unavailable\r\n{DATE}Retry-After: 5\r\nContent-Length: 4\r\n\r\nbusy"
            )),
        ),
        (
            "/large",
            Wire {
                writes: large,
                ..Wire::bytes(b"")
            },
        ),
    ]
}

fn wire(text: String) -> Wire {
    Wire::bytes(text)
}

#[tokio::test]
async fn a_client_through_corral_reads_each_response_as_hyper_reads_it_directly() {
    let cases = answers();
    let script = {
        let cases = cases.clone();
        move |arrived: &Arrived| {
            cases
                .iter()
                .find(|(target, _)| *target == arrived.target)
                .map_or_else(|| Wire::target(arrived), |(_, wire)| wire.clone())
        }
    };
    let p = pair(script).await;
    let mut differences = Differences::default();
    let mut lengths = Vec::new();
    for (target, _) in &cases {
        let request = || {
            let method = if *target == "/head" { "HEAD" } else { "GET" };
            Request::builder()
                .method(method)
                .uri(*target)
                .header("host", "differential.test")
                .header("te", "trailers")
                .body(empty())
                .unwrap()
        };
        let through = exchange(p.proxy, request()).await;
        let straight = exchange(p.direct.addr, request()).await;
        let d = &mut differences;
        d.compare(target, "status", &through.status, &straight.status);
        let (mut a, mut b) = (end_to_end(through.headers), end_to_end(straight.headers));
        if through.status == 304 {
            if let Some(length) = a.remove("content-length") {
                d.compare(
                    target,
                    "304 length",
                    &Some(length),
                    &b.get("content-length").cloned(),
                );
            }
            b.remove("content-length");
        }
        d.compare_fields(target, "header", &a, &b);
        d.compare_bodies(target, "body", &through.body, &straight.body);
        d.compare_fields(target, "trailer", &through.trailers, &straight.trailers);
        lengths.push((*target, straight.body.len(), straight.trailers.len()));
    }
    differences.assert_none();
    // The set exercises what it says it does, as hyper read it.
    assert!(lengths.contains(&("/chunked", 11, 1)), "{lengths:?}");
    assert!(lengths.contains(&("/close", 12_000, 0)), "{lengths:?}");
    assert!(lengths.contains(&("/large", 1 << 20, 0)), "{lengths:?}");
}
