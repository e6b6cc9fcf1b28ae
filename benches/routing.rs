//! How long does finding the route for a request take in a table of 1000 routes?
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use corral::plan::{HostPattern, RouteConfig};
use corral::routing::RouteTable;
use criterion::{Criterion, criterion_group, criterion_main};

fn table() -> RouteTable {
    let mut routes = Vec::new();
    for h in 0..100 {
        for p in 0..8 {
            routes.push(RouteConfig {
                name: format!("r{h}-{p}"),
                host: Some(HostPattern::Exact(format!("service{h}.example.com"))),
                path_prefix: format!("/api/v{p}/"),
                upstream: "app".into(),
                strip_prefix: false,
            });
        }
    }
    for w in 0..150 {
        routes.push(RouteConfig {
            name: format!("w{w}"),
            host: Some(HostPattern::Wildcard(format!(".tenant{w}.example.org"))),
            path_prefix: "/".into(),
            upstream: "app".into(),
            strip_prefix: false,
        });
    }
    for p in 0..50 {
        routes.push(RouteConfig {
            name: format!("any{p}"),
            host: None,
            path_prefix: format!("/static/{p}/"),
            upstream: "app".into(),
            strip_prefix: false,
        });
    }
    assert_eq!(routes.len(), 1000);
    RouteTable::new(&routes, |_| Some(0))
}

fn bench(c: &mut Criterion) {
    let t = table();
    let mut g = c.benchmark_group("route lookup, 1000 routes");
    g.bench_function("exact host, longest prefix", |b| {
        b.iter(|| {
            t.find(
                black_box(Some("Service42.example.com:8080")),
                black_box("/api/v7/users/7"),
            )
        })
    });
    g.bench_function("wildcard host", |b| {
        b.iter(|| {
            t.find(
                black_box(Some("shop.tenant99.example.org")),
                black_box("/cart"),
            )
        })
    });
    g.bench_function("no host route, prefix", |b| {
        b.iter(|| t.find(black_box(Some("other.net")), black_box("/static/49/app.js")))
    });
    g.bench_function("miss", |b| {
        b.iter(|| t.find(black_box(Some("other.net")), black_box("/nothing")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
