//! How long does rewriting a typical request's headers for forwarding take
//! (hop-by-hop removal plus X-Forwarded-*)?
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use corral::proxy::headers::{Earlier, add_forwarded, client_value, remove_hop_by_hop};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};

fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("upgrade-insecure-requests", "1"),
        ("cache-control", "max-age=0"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let client = client_value("203.0.113.7".parse().unwrap());
    let host = HeaderValue::from_static("shop.example.com");
    let mut g = c.benchmark_group("request header rewrite");
    g.bench_function("browser request, no X-Forwarded-For", |b| {
        b.iter_batched_ref(
            browser_request,
            |h| {
                remove_hop_by_hop(h, false);
                add_forwarded(h, black_box(&client), false, Some(&host), Earlier::Extended);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("hop-by-hop removal only", |b| {
        b.iter_batched_ref(
            browser_request,
            |h| remove_hop_by_hop(h, false),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("X-Forwarded-* only", |b| {
        b.iter_batched_ref(
            browser_request,
            |h| add_forwarded(h, black_box(&client), false, Some(&host), Earlier::Extended),
            BatchSize::SmallInput,
        )
    });
    for (name, earlier) in [
        (
            "behind another proxy (X-Forwarded-For present)",
            Earlier::Extended,
        ),
        (
            "X-Forwarded-For from an untrusted client, replaced",
            Earlier::Replaced,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let mut h = browser_request();
                    h.insert(
                        "x-forwarded-for",
                        HeaderValue::from_static("198.51.100.1, 192.0.2.9"),
                    );
                    h
                },
                |h| {
                    remove_hop_by_hop(h, false);
                    add_forwarded(h, black_box(&client), true, Some(&host), earlier);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
