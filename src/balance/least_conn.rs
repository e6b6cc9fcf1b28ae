//! Least connections, weighted: the server with the fewest in-flight requests
//! per unit of weight. Ties are broken at random so that an idle cluster does
//! not send every request to the first server.

use super::servers::Servers;

pub fn pick(servers: &impl Servers, rng: &mut fastrand::Rng) -> Option<usize> {
    let n = servers.len();
    if n == 0 {
        return None;
    }
    let start = rng.usize(..n);
    let mut best: Option<usize> = None;
    let mut ties = 0u32;
    for i in (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| servers.available(i))
    {
        match best {
            None => {
                best = Some(i);
                ties = 1;
            }
            Some(b) => match load(servers, i).cmp(&load(servers, b)) {
                std::cmp::Ordering::Less => {
                    best = Some(i);
                    ties = 1;
                }
                std::cmp::Ordering::Equal => {
                    // Reservoir sampling: each tied server wins with equal chance.
                    ties += 1;
                    if rng.u32(..ties) == 0 {
                        best = Some(i);
                    }
                }
                std::cmp::Ordering::Greater => {}
            },
        }
    }
    best
}

/// in_flight / weight, compared exactly as a fraction.
fn load(servers: &impl Servers, i: usize) -> Load {
    Load {
        num: u64::from(servers.in_flight(i)),
        den: u64::from(servers.weight(i).max(1)),
    }
}

#[derive(Clone, Copy)]
struct Load {
    num: u64,
    den: u64,
}

impl PartialEq for Load {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Load {}
impl PartialOrd for Load {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Load {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.num * other.den).cmp(&(other.num * self.den))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use proptest::prelude::*;

    /// Whether server `i` carries no more in-flight requests per unit of
    /// weight than server `j`: the fractions compared by cross-multiplying,
    /// independently of the policy's own comparison.
    fn no_busier(s: &Fixed, i: usize, j: usize) -> bool {
        u64::from(s.in_flight[i]) * u64::from(s.weights[j])
            <= u64::from(s.in_flight[j]) * u64::from(s.weights[i])
    }

    proptest! {
        /// The pick is available and no available server has a lower load.
        #[test]
        fn picks_a_least_loaded_server(
            spec in proptest::collection::vec((1u32..5, 0u32..20, any::<bool>()), 1..10),
            seed in any::<u64>(),
        ) {
            let mut s = Fixed::new(spec.iter().map(|x| x.0).collect());
            s.in_flight = spec.iter().map(|x| x.1).collect();
            s.up = spec.iter().map(|x| x.2).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            match pick(&s, &mut rng) {
                None => prop_assert!(s.up.iter().all(|u| !u)),
                Some(i) => {
                    prop_assert!(s.up[i]);
                    for j in (0..s.weights.len()).filter(|&j| s.up[j]) {
                        prop_assert!(no_busier(&s, i, j), "picked {} over {}: {:?}", i, j, s);
                    }
                }
            }
        }
    }

    #[test]
    fn ties_spread_over_all_tied_servers() {
        let s = Fixed::new(vec![1, 1, 1, 1]);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[pick(&s, &mut rng).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    /// Ties are broken among the least loaded only, evenly: 1/2, 1/2 here,
    /// whatever the position of the tied servers.
    #[test]
    fn ties_spread_evenly_over_the_least_loaded_only() {
        let mut s = Fixed::new(vec![1, 2, 1, 1, 3]);
        // Loads 1, 1/2, 0, 2, 0.
        s.in_flight = vec![1, 1, 0, 2, 0];
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = [0; 5];
        for _ in 0..10_000 {
            counts[pick(&s, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[1] + counts[3], 0, "{counts:?}");
        assert!((4_500..=5_500).contains(&counts[2]), "{counts:?}");
    }

    /// Three tied servers met in an order that depends on where the scan
    /// starts, two busier ones after them: each tied server still gets a
    /// third. (Keeping a tie with any chance other than 1/k, for the k-th
    /// tie met, would favour the one most often met last.)
    #[test]
    fn three_tied_servers_get_a_third_each_whatever_the_order_they_are_met_in() {
        let mut s = Fixed::new(vec![1; 5]);
        s.in_flight = vec![0, 0, 0, 4, 4];
        let mut rng = fastrand::Rng::with_seed(23);
        let mut counts = [0; 5];
        for _ in 0..30_000 {
            counts[pick(&s, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[3] + counts[4], 0, "{counts:?}");
        assert!(
            counts[..3].iter().all(|&c| (9_000..=11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn weight_scales_the_load() {
        let mut s = Fixed::new(vec![3, 1]);
        s.in_flight = vec![2, 1];
        // 2/3 < 1/1
        assert_eq!(pick(&s, &mut fastrand::Rng::with_seed(1)), Some(0));
        // 4/3 > 1/1
        s.in_flight = vec![4, 1];
        assert_eq!(pick(&s, &mut fastrand::Rng::with_seed(1)), Some(1));
    }
}
