//! Load-balancing policies: given the servers of one upstream, pick one.
//!
//! Pure and I/O-free: a policy sees servers only through [`Servers`] (weight,
//! availability, in-flight requests, latency, a slow start's ramp) and takes its randomness from the
//! caller, so every policy is property-tested with a seeded generator. The
//! request path owns the live numbers; this module owns only the state a policy
//! needs between picks (round-robin weights, the hash ring).

mod consistent_hash;
mod least_conn;
mod p2c_ewma;
mod random;
mod round_robin;
mod servers;
#[doc(hidden)]
pub mod testing;

pub use consistent_hash::Ring;
pub use p2c_ewma::PeakEwma;
pub use round_robin::SmoothRoundRobin;
pub use servers::{Servers, hash_key};

use crate::plan::Balance;

/// A policy with its state, built once per upstream and config generation.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(SmoothRoundRobin),
    LeastConn,
    Random,
    P2cEwma,
    ConsistentHash(Ring),
}

impl Balancer {
    /// `ids` names each server stably (its address), so a hash ring keeps its
    /// shape when servers are added or removed.
    pub fn new(balance: &Balance, weights: &[u32], ids: &[String]) -> Self {
        match balance {
            Balance::RoundRobin => Self::RoundRobin(SmoothRoundRobin::new(weights)),
            Balance::LeastConn => Self::LeastConn,
            Balance::Random => Self::Random,
            Balance::P2cEwma => Self::P2cEwma,
            Balance::ConsistentHash(_) => Self::ConsistentHash(Ring::new(ids, weights)),
        }
    }

    /// Picks an available server. `key` is the request's hash key for
    /// `consistent_hash` (when missing, that policy falls back to random).
    pub fn pick(
        &self,
        servers: &impl Servers,
        key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        match self {
            Self::RoundRobin(rr) => rr.pick(servers),
            Self::LeastConn => least_conn::pick(servers, rng),
            Self::Random => random::pick(servers, rng),
            Self::P2cEwma => p2c_ewma::pick(servers, rng),
            Self::ConsistentHash(ring) => match key {
                Some(key) => ring.pick(servers, key),
                None => random::pick(servers, rng),
            },
        }
    }

    /// Whether the policy reads latency (so the request path measures it).
    pub fn wants_latency(&self) -> bool {
        matches!(self, Self::P2cEwma)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Fixed;
    use super::*;
    use crate::plan::HashKey;

    fn every_policy() -> Vec<Balance> {
        vec![
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::Random,
            Balance::P2cEwma,
            Balance::ConsistentHash(HashKey::ClientIp),
        ]
    }

    /// Whatever the policy (and with or without a hash key), the pick is
    /// the one server up, and nothing when none is.
    #[test]
    fn every_policy_picks_only_available_servers() {
        let ids: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:80")).collect();
        let mut s = Fixed::new(vec![1, 1, 1]);
        let mut rng = fastrand::Rng::with_seed(5);
        for balance in every_policy() {
            let balancer = Balancer::new(&balance, &s.weights, &ids);
            s.up = vec![false, false, true];
            for key in [None, Some(hash_key(b"203.0.113.7")), Some(7)] {
                for _ in 0..20 {
                    assert_eq!(balancer.pick(&s, key, &mut rng), Some(2), "{balance:?}");
                }
            }
            s.up = vec![false; 3];
            assert_eq!(balancer.pick(&s, Some(7), &mut rng), None, "{balance:?}");
            assert_eq!(balancer.pick(&s, None, &mut rng), None, "{balance:?}");
        }
    }

    /// Only P2C reads latency; the request path measures it for no other.
    #[test]
    fn only_p2c_ewma_wants_latency() {
        for balance in every_policy() {
            let balancer = Balancer::new(&balance, &[1], &["10.0.0.1:80".to_owned()]);
            assert_eq!(
                balancer.wants_latency(),
                balance == Balance::P2cEwma,
                "{balance:?}"
            );
        }
    }
}
