//! Requests: each sent by hyper's client through corral and straight to
//! an upstream; what the two upstreams saw must agree (request line,
//! headers, framing, body, trailers), and so must what the two clients
//! got back.
//!
//! Allowed differences, and why:
//! - corral appends `X-Forwarded-For` and sets `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` (README, Proxy semantics): removed from corral's
//!   side before comparing, and checked to be there once each (and absent
//!   from hyper's side, so that the removal hides nothing the client sent).
//! - hop-by-hop headers in the answers ([`crate::HOP_BY_HOP`]): each hop
//!   frames its own connection.
//!
//! Nothing else: `Host` is preserved, bodies keep their framing (a length
//! stays a length, chunked stays chunked), trailers pass.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::common::*;
use crate::{Differences, answer, by_name, end_to_end, exchange, pair};

const FORWARDING: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// One request of the set, made anew for each side (a body is sent once).
type Make = fn() -> Request<TestBody>;

fn base(method: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .header("host", "differential.test")
        .header("user-agent", "differential/1")
}

fn streamed(frames: Vec<Frame<Bytes>>) -> TestBody {
    let frames = frames.into_iter().map(Ok::<_, std::io::Error>);
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

fn get_with_many_headers() -> Request<TestBody> {
    let mut request = base("GET", "/search?q=a%20b&x=1&x=2&empty=&e=%C3%A9");
    for i in 0..40 {
        request = request.header(format!("x-many-{i:02}"), format!("value {i}"));
    }
    let obs_text = HeaderValue::from_bytes(b"caf\xe9").unwrap();
    request
        .header("accept", "text/html")
        .header("accept", "application/json;q=0.9")
        .header("x-repeated", "one")
        .header("x-other", "between")
        .header("x-repeated", "two")
        .header("x-odd", "a  b\tc")
        .header("x-quoted", "\"a, b\", c;d=\"e\"")
        .header("x-empty", "")
        .header("x-obs", obs_text)
        .header("x-long", "v".repeat(4000))
        .header("cookie", "a=1; b=2")
        .body(empty())
        .unwrap()
}

fn head() -> Request<TestBody> {
    base("HEAD", "/head?x=1").body(empty()).unwrap()
}

fn post_with_a_length() -> Request<TestBody> {
    base("POST", "/form")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("name=value&other=%26"))
        .unwrap()
}

fn post_chunked_with_trailers() -> Request<TestBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let frames = vec![
        Frame::data(Bytes::from_static(b"first,")),
        Frame::data(Bytes::from_static(b"second")),
        Frame::trailers(trailers),
    ];
    base("POST", "/chunked")
        .header("trailer", "x-checksum")
        .header("te", "trailers")
        .body(streamed(frames))
        .unwrap()
}

/// 1 MiB streamed in 64 KiB frames, with its length announced.
fn put_large() -> Request<TestBody> {
    let frames = (0..16u8)
        .map(|i| Frame::data(Bytes::from(vec![b'a' + i; 64 * 1024])))
        .collect();
    base("PUT", "/large")
        .header("content-length", 1 << 20)
        .body(streamed(frames))
        .unwrap()
}

fn options() -> Request<TestBody> {
    base("OPTIONS", "/options")
        .header("access-control-request-method", "PUT")
        .body(empty())
        .unwrap()
}

fn delete_with_a_body() -> Request<TestBody> {
    base("DELETE", "/items/7?soft=true")
        .header("content-type", "application/json")
        .body(full(r#"{"why":"test"}"#))
        .unwrap()
}

fn post_empty() -> Request<TestBody> {
    base("POST", "/empty")
        .header("content-length", "0")
        .body(empty())
        .unwrap()
}

const REQUESTS: [(&str, Make); 8] = [
    ("GET with many headers", get_with_many_headers),
    ("HEAD", head),
    ("POST with a length", post_with_a_length),
    ("POST chunked with trailers", post_chunked_with_trailers),
    ("PUT of 1 MiB streamed", put_large),
    ("OPTIONS", options),
    ("DELETE with a body", delete_with_a_body),
    ("POST of nothing", post_empty),
];

#[tokio::test]
async fn corral_forwards_each_request_as_hyper_sends_it() {
    let p = pair(answer).await;
    let mut differences = Differences::default();
    for (i, (case, make)) in REQUESTS.iter().enumerate() {
        let through = exchange(p.proxy, make()).await;
        let straight = exchange(p.direct.addr, make()).await;
        let (via, reference) = (&p.behind.requests()[i], &p.direct.requests()[i]);
        compare_requests(&mut differences, case, via, reference);
        let d = &mut differences;
        d.compare(case, "status", &through.status, &straight.status);
        let (a, b) = (end_to_end(through.headers), end_to_end(straight.headers));
        d.compare_fields(case, "response header", &a, &b);
        d.compare_bodies(case, "response body", &through.body, &straight.body);
    }
    differences.assert_none();
    // The set exercises what it says it does: hyper sent these framings.
    let reference = p.direct.requests();
    assert_eq!(reference[3].framing, Framing::Chunked);
    let checksum = ("x-checksum".to_owned(), b"abc123".to_vec());
    assert_eq!(reference[3].trailers, [checksum]);
    assert_eq!(reference[4].framing, Framing::Length(1 << 20));
    assert_eq!(reference[4].body.len(), 1 << 20);
    assert_eq!(reference[6].framing, Framing::Length(14));
}

/// What the upstream behind corral saw, against what the one hyper
/// reached directly saw.
fn compare_requests(d: &mut Differences, case: &str, via: &Arrived, reference: &Arrived) {
    let line = |a: &Arrived| {
        let head = String::from_utf8_lossy(&a.head).into_owned();
        head.lines().next().unwrap_or_default().to_owned()
    };
    d.compare(case, "request line", &line(via), &line(reference));
    let fields = |a: &Arrived| by_name(a.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let (mut seen, sent) = (fields(via), fields(reference));
    for name in FORWARDING {
        let added = seen.remove(name).unwrap_or_default();
        d.compare(case, &format!("{name} lines added"), &added.len(), &1);
        d.compare(
            case,
            &format!("{name} sent"),
            &sent.contains_key(name),
            &false,
        );
    }
    d.compare_fields(case, "header", &seen, &sent);
    d.compare(case, "framing", &via.framing, &reference.framing);
    d.compare_bodies(case, "body", &via.body, &reference.body);
    d.compare(case, "trailers", &via.trailers, &reference.trailers);
}
