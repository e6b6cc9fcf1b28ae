//! How long does each balancing policy take to pick one of 16 servers?
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use corral::balance::testing::Fixed;
use corral::balance::{Balancer, hash_key};
use corral::plan::{Balance, HashKey};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let servers = Fixed {
        weights: (0..16).map(|i| 1 + i % 3).collect(),
        // One server down, as the policies must skip it.
        up: (0..16).map(|i| i != 3).collect(),
        in_flight: (0..16).map(|i| (i * 7) % 5).collect(),
        latency: (0..16).map(|i| 0.001 * f64::from(1 + i % 4)).collect(),
    };
    let ids: Vec<String> = (0..16).map(|i| format!("10.0.0.{i}:8080")).collect();
    let policies = [
        ("round_robin", Balance::RoundRobin),
        ("least_conn", Balance::LeastConn),
        ("random", Balance::Random),
        ("p2c_ewma", Balance::P2cEwma),
        (
            "consistent_hash",
            Balance::ConsistentHash(HashKey::ClientIp),
        ),
    ];
    let mut g = c.benchmark_group("pick one of 16 servers");
    for (name, policy) in policies {
        let balancer = Balancer::new(&policy, &servers.weights, &ids);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut k = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                k = k.wrapping_add(1);
                balancer.pick(
                    black_box(&servers),
                    Some(hash_key(&k.to_le_bytes())),
                    &mut rng,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
