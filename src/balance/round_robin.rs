//! Smooth weighted round robin, as nginx does it.
//!
//! Each pick adds every available server's weight to its running score, takes
//! the highest score and subtracts the total from it. Over any window of
//! `sum(weights)` picks each server is chosen exactly `weight` times, and the
//! choices are spread out (weights 5,1,1 give a a b a c a a, not a a a a a b c).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::servers::Servers;

#[derive(Debug)]
pub struct SmoothRoundRobin {
    /// With equal weights the smooth algorithm is a plain rotation, which a
    /// counter does without a lock.
    uniform: bool,
    next: AtomicUsize,
    current: Mutex<Vec<i64>>,
}

impl SmoothRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            uniform: weights.windows(2).all(|w| w[0] == w[1]),
            next: AtomicUsize::new(0),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }

    pub fn pick(&self, servers: &impl Servers) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        if self.uniform && !servers.ramping() {
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            if servers.available(turn % n) {
                return Some(turn % n);
            }
            // Hand the down server's turn to the available ones in rotation,
            // rather than always to its neighbour.
            let up = (0..n).filter(|&i| servers.available(i)).count();
            return (0..n)
                .filter(|&i| servers.available(i))
                .nth(turn % up.max(1));
        }
        // A poisoned lock only means another pick panicked mid-update; the
        // scores are still usable numbers.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.len() != n {
            *current = vec![0; n];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|&i| servers.available(i)) {
            let w = i64::from(servers.weight(i));
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use proptest::prelude::*;

    /// nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`),
    /// written here from its description as the oracle: every up peer's
    /// current weight grows by its weight, the highest (the first of equals)
    /// wins and gives back the total. Down peers take no part and keep
    /// their current weight.
    fn nginx_pick(weights: &[u32], up: &[bool], current: &mut [i64]) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for peer in 0..weights.len() {
            if !up[peer] {
                continue;
            }
            current[peer] += i64::from(weights[peer]);
            total += i64::from(weights[peer]);
            match best {
                Some(b) if current[peer] <= current[b] => {}
                _ => best = Some(peer),
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }

    #[test]
    fn nginx_example_sequence() {
        let s = Fixed::new(vec![5, 1, 1]);
        let rr = SmoothRoundRobin::new(&s.weights);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&s).unwrap()).collect();
        // The README's (and nginx's) a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        // The oracle agrees with the known sequence, so it is worth comparing with.
        let mut current = [0; 3];
        let oracle: Vec<_> = (0..7)
            .map(|_| nginx_pick(&[5, 1, 1], &[true; 3], &mut current).unwrap())
            .collect();
        assert_eq!(oracle, picks);
    }

    #[test]
    fn skips_unavailable_servers() {
        let mut s = Fixed::new(vec![1, 1, 1]);
        s.up[1] = false;
        let rr = SmoothRoundRobin::new(&s.weights);
        let picks: Vec<_> = (0..600).map(|_| rr.pick(&s).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 300);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 300);
        s.up = vec![false; 3];
        assert_eq!(rr.pick(&s), None);
    }

    proptest! {
        /// With every server up, the picks are nginx's, equal weights (which
        /// take a lock-free path) included.
        #[test]
        fn picks_are_nginx_s_sequence(weights in proptest::collection::vec(1u32..8, 1..8)) {
            let s = Fixed::new(weights.clone());
            let rr = SmoothRoundRobin::new(&weights);
            let mut current = vec![0; weights.len()];
            let total: u32 = weights.iter().sum();
            for _ in 0..3 * total {
                prop_assert_eq!(rr.pick(&s), nginx_pick(&weights, &s.up, &mut current));
            }
        }

        /// Unequal weights follow nginx also while servers go down and come
        /// back between picks.
        #[test]
        fn unequal_weights_follow_nginx_as_servers_come_and_go(
            weights in proptest::collection::vec(1u32..8, 2..8),
            ups in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 8), 1..60),
        ) {
            prop_assume!(weights.windows(2).any(|w| w[0] != w[1]));
            let mut s = Fixed::new(weights.clone());
            let rr = SmoothRoundRobin::new(&weights);
            let mut current = vec![0; weights.len()];
            for up in ups {
                s.up = up[..weights.len()].to_vec();
                prop_assert_eq!(rr.pick(&s), nginx_pick(&weights, &s.up, &mut current));
            }
        }

        /// The README's promise: every window of sum(weights) consecutive
        /// picks, wherever it starts, holds each server exactly weight times.
        #[test]
        fn every_window_of_sum_weights_picks_matches_the_weights(
            weights in proptest::collection::vec(1u32..8, 1..8),
        ) {
            let s = Fixed::new(weights.clone());
            let rr = SmoothRoundRobin::new(&weights);
            let total = weights.iter().sum::<u32>() as usize;
            let picks: Vec<usize> = (0..3 * total).map(|_| rr.pick(&s).unwrap()).collect();
            for window in picks.windows(total) {
                let mut counts = vec![0u32; weights.len()];
                for &i in window {
                    counts[i] += 1;
                }
                prop_assert_eq!(&counts, &weights);
            }
        }

        /// Only available servers are picked, and one is picked whenever any is up.
        #[test]
        fn never_picks_a_down_server(weights in proptest::collection::vec(1u32..8, 1..8), up in proptest::collection::vec(any::<bool>(), 8)) {
            let mut s = Fixed::new(weights.clone());
            s.up = up[..weights.len()].to_vec();
            let rr = SmoothRoundRobin::new(&weights);
            for _ in 0..20 {
                match rr.pick(&s) {
                    Some(i) => prop_assert!(s.up[i]),
                    None => prop_assert!(s.up.iter().all(|u| !u)),
                }
            }
        }
    }
}
