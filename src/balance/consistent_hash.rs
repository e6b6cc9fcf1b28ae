//! Consistent hashing on a ring with virtual nodes (ketama).
//!
//! Each server owns `VNODES * weight` points on a 64-bit ring, placed by
//! hashing its address; a key goes to the first point at or after its hash.
//! Removing one of N servers moves only the keys it owned (about 1/N), and a
//! server that is down is skipped by walking on to the next point, so its keys
//! spread over the others and come back when it does.

use super::{Servers, hash_key};

/// Points per unit of weight: enough that N servers get shares within a few
/// percent of 1/N.
const VNODES: u32 = 160;

#[derive(Debug)]
pub struct Ring {
    /// (point, server index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(ids: &[String], weights: &[u32]) -> Self {
        let mut points = Vec::new();
        for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
            let Ok(server) = u32::try_from(i) else { break };
            for v in 0..VNODES * w.max(1) {
                points.push((hash_key(format!("{id}#{v}").as_bytes()), server));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    pub fn pick(&self, servers: &impl Servers, key: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < key);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| i < servers.len() && servers.available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn shares_are_close_to_even() {
        let n = 5;
        let ring = Ring::new(&ids(n), &vec![1; n]);
        let s = Fixed::new(vec![1; n]);
        let mut counts = vec![0usize; n];
        let keys = 50_000;
        for k in 0..keys {
            counts[ring
                .pick(&s, hash_key(format!("user-{k}").as_bytes()))
                .unwrap()] += 1;
        }
        for c in counts {
            let share = c as f64 / keys as f64;
            assert!((share - 0.2).abs() < 0.04, "share {share}");
        }
    }

    proptest! {
        /// Removing one server moves only the keys that server owned, and
        /// those are about 1/N of all keys.
        #[test]
        fn removing_one_server_remaps_only_its_keys(n in 2usize..10, removed in 0usize..10) {
            let removed = removed % n;
            let all = ids(n);
            let full = Ring::new(&all, &vec![1; n]);
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
            let smaller = Ring::new(&rest, &vec![1; n - 1]);
            let s_full = Fixed::new(vec![1; n]);
            let s_rest = Fixed::new(vec![1; n - 1]);
            let keys = 4000;
            let mut moved = 0;
            for k in 0..keys {
                let key = hash_key(format!("k{k}").as_bytes());
                let before = &all[full.pick(&s_full, key).unwrap()];
                let after = &rest[smaller.pick(&s_rest, key).unwrap()];
                if before != after {
                    prop_assert_eq!(before, &all[removed]);
                    moved += 1;
                }
            }
            let share = moved as f64 / keys as f64;
            prop_assert!((share - 1.0 / n as f64).abs() < 0.1, "moved {}", share);
        }

        /// A down server's keys go elsewhere; everyone else's stay put.
        #[test]
        fn a_down_server_is_skipped_without_moving_other_keys(n in 2usize..8, down in 0usize..8) {
            let down = down % n;
            let ring = Ring::new(&ids(n), &vec![1; n]);
            let up = Fixed::new(vec![1; n]);
            let mut partly = up.clone();
            partly.up[down] = false;
            for k in 0..1000 {
                let key = hash_key(format!("k{k}").as_bytes());
                let before = ring.pick(&up, key).unwrap();
                let after = ring.pick(&partly, key).unwrap();
                prop_assert_ne!(after, down);
                if before != down {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }
}
