//! Weighted random: each available server with probability weight / total.

use super::servers::Servers;

pub fn pick(servers: &impl Servers, rng: &mut fastrand::Rng) -> Option<usize> {
    let available = |i: &usize| servers.available(*i);
    let total: u64 = (0..servers.len())
        .filter(available)
        .map(|i| u64::from(servers.weight(i)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.u64(..total);
    for i in (0..servers.len()).filter(available) {
        let w = u64::from(servers.weight(i));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn picks_only_available_servers(
            spec in proptest::collection::vec((1u32..5, any::<bool>()), 1..10),
            seed in any::<u64>(),
        ) {
            let mut s = Fixed::new(spec.iter().map(|x| x.0).collect());
            s.up = spec.iter().map(|x| x.1).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..10 {
                match pick(&s, &mut rng) {
                    None => prop_assert!(s.up.iter().all(|u| !u)),
                    Some(i) => prop_assert!(s.up[i]),
                }
            }
        }
    }

    #[test]
    fn frequencies_follow_weights() {
        let s = Fixed::new(vec![3, 1]);
        let mut rng = fastrand::Rng::with_seed(42);
        let n = 40_000;
        let first = (0..n).filter(|_| pick(&s, &mut rng) == Some(0)).count();
        let share = first as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    /// A down server's share goes to the others in proportion to their weights.
    #[test]
    fn a_down_server_s_share_is_split_by_weight() {
        let mut s = Fixed::new(vec![3, 5, 2]);
        s.up[1] = false;
        let mut rng = fastrand::Rng::with_seed(8);
        let n = 40_000;
        let first = (0..n).filter(|_| pick(&s, &mut rng) == Some(0)).count();
        let share = first as f64 / n as f64;
        assert!((share - 0.6).abs() < 0.02, "{share}");
    }
}
