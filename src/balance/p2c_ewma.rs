//! Power of two choices over a peak-sensitive EWMA of latency.
//!
//! Two distinct available servers are drawn at random and the one with the
//! lower cost `latency * (in_flight + 1) / weight` wins (Finagle's and
//! Linkerd's "P2C + peak EWMA"). Drawing two instead of scanning all keeps a
//! slow server from being starved of the probes that would show it recovered.

use std::time::{Duration, Instant};

use super::servers::Servers;

/// Latency assumed for a server not yet measured, so new servers are tried
/// but not flooded.
const UNMEASURED: f64 = 0.001;

pub fn pick(servers: &impl Servers, rng: &mut fastrand::Rng) -> Option<usize> {
    let n = servers.len();
    let available = (0..n).filter(|&i| servers.available(i)).count();
    let nth_available = |k: usize| (0..n).filter(|&i| servers.available(i)).nth(k);
    match available {
        0 => None,
        1 => nth_available(0),
        _ => {
            let a = rng.usize(..available);
            let mut b = rng.usize(..available - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth_available(a)?, nth_available(b)?);
            Some(if cost(servers, b) < cost(servers, a) {
                b
            } else {
                a
            })
        }
    }
}

fn cost(servers: &impl Servers, i: usize) -> f64 {
    let latency = servers.latency(i);
    let latency = if latency > 0.0 { latency } else { UNMEASURED };
    latency * f64::from(servers.in_flight(i) + 1) / f64::from(servers.weight(i).max(1))
}

/// A latency average that jumps up to a slow sample at once and decays
/// towards faster ones over `DECAY`, so a server that turns slow loses
/// traffic immediately and regains it gradually.
///
/// Read, it also decays towards zero while no sample arrives (as tower's
/// `PeakEwma` does): a server that answered slowly once and so stopped
/// being picked would otherwise keep that sample forever, and P2C, which
/// always takes the cheaper of two, would never pick it again to learn
/// that it recovered.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    value: f64,
    at: Option<Instant>,
}

const DECAY: Duration = Duration::from_secs(10);

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    pub const fn new() -> Self {
        Self {
            value: 0.0,
            at: None,
        }
    }

    /// Seconds, as of the last sample; 0 until the first.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// Seconds, as of `now`: the last sample's value, decayed for the time
    /// since it.
    pub fn value_at(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.value * (-elapsed / DECAY.as_secs_f64()).exp()
            }
            None => self.value,
        }
    }

    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        match self.at {
            Some(at) if sample < self.value => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                let w = (-elapsed / DECAY.as_secs_f64()).exp();
                self.value = self.value * w + sample * (1.0 - w);
            }
            _ => self.value = sample,
        }
        self.at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use proptest::prelude::*;

    /// The README's cost, computed here rather than by the policy:
    /// `latency EWMA × (in-flight + 1) / weight`, for a measured server.
    fn readme_cost(s: &Fixed, i: usize) -> f64 {
        s.latency[i] * f64::from(s.in_flight[i] + 1) / f64::from(s.weights[i])
    }

    #[test]
    fn prefers_the_faster_server() {
        let mut s = Fixed::new(vec![1, 1]);
        s.latency = vec![0.010, 0.001];
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..100).all(|_| pick(&s, &mut rng) == Some(1)));
    }

    #[test]
    fn in_flight_work_outweighs_a_small_latency_gap() {
        let mut s = Fixed::new(vec![1, 1]);
        s.latency = vec![0.002, 0.001];
        s.in_flight = vec![0, 5];
        assert_eq!(pick(&s, &mut fastrand::Rng::with_seed(3)), Some(0));
    }

    #[test]
    fn weight_divides_the_cost() {
        let mut s = Fixed::new(vec![1, 4]);
        // 2 ms against 6 ms / 4 = 1.5 ms.
        s.latency = vec![0.002, 0.006];
        let mut rng = fastrand::Rng::with_seed(5);
        assert!((0..100).all(|_| pick(&s, &mut rng) == Some(1)));
    }

    /// A server not yet measured is tried before a slow one, but does not
    /// take the traffic of a fast one while requests pile up on it.
    #[test]
    fn an_unmeasured_server_is_tried_but_not_flooded() {
        let mut s = Fixed::new(vec![1, 1]);
        s.latency = vec![0.0, 0.050];
        let mut rng = fastrand::Rng::with_seed(9);
        assert!((0..100).all(|_| pick(&s, &mut rng) == Some(0)));
        s.latency = vec![0.0, 0.002];
        s.in_flight = vec![5, 0];
        assert!((0..100).all(|_| pick(&s, &mut rng) == Some(1)));
    }

    /// Two distinct servers drawn at random, the cheaper wins: of four with
    /// distinct costs, the k-th cheapest wins when drawn with a costlier
    /// one: 3/6, 2/6, 1/6 and none of the picks.
    #[test]
    fn two_random_choices_give_each_rank_its_share() {
        let mut s = Fixed::new(vec![1; 4]);
        // Ranks: server 2 cheapest, then 0, 3, 1.
        s.latency = vec![0.002, 0.008, 0.001, 0.004];
        let mut rng = fastrand::Rng::with_seed(17);
        let n = 60_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[pick(&s, &mut rng).unwrap()] += 1;
        }
        let share = |i: usize| counts[i] as f64 / n as f64;
        for (i, expected) in [(2, 3.0 / 6.0), (0, 2.0 / 6.0), (3, 1.0 / 6.0), (1, 0.0)] {
            assert!((share(i) - expected).abs() < 0.01, "server {i}: {counts:?}");
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new();
        e.observe(Duration::from_millis(10), t0);
        assert_eq!(e.value(), 0.010);
        // A slow sample is taken at once.
        e.observe(Duration::from_millis(100), t0 + Duration::from_millis(1));
        assert_eq!(e.value(), 0.100);
        // A fast one 10 s later (the decay's time constant) has closed the
        // gap by a factor e.
        e.observe(
            Duration::from_millis(10),
            t0 + Duration::from_millis(10_001),
        );
        let expected = 0.010 + (0.100 - 0.010) / std::f64::consts::E;
        assert!((e.value() - expected).abs() < 1e-9, "{}", e.value());
    }

    /// Read without new samples, the average fades towards zero by a factor
    /// e every 10 s, so a server slow once is drawn again in the end.
    #[test]
    fn the_average_fades_while_no_sample_arrives() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new();
        assert_eq!(e.value_at(t0), 0.0);
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.value_at(t0), 0.100);
        let later = e.value_at(t0 + Duration::from_secs(10));
        assert!(
            (later - 0.100 / std::f64::consts::E).abs() < 1e-9,
            "{later}"
        );
        // Reading changes nothing: the last sample stays the reference.
        assert_eq!(e.value(), 0.100);
        assert_eq!(e.value_at(t0 + Duration::from_secs(10)), later);
    }

    proptest! {
        /// The pick is available, it is never the costliest of the available
        /// servers unless others cost as much, and of two it is the cheaper.
        #[test]
        fn picks_available_and_never_the_unique_worst(
            spec in proptest::collection::vec((1u32..4, 0u32..10, 1u32..50, any::<bool>()), 1..8),
            seed in any::<u64>(),
        ) {
            let mut s = Fixed::new(spec.iter().map(|x| x.0).collect());
            s.in_flight = spec.iter().map(|x| x.1).collect();
            s.latency = spec.iter().map(|x| f64::from(x.2) / 1000.0).collect();
            s.up = spec.iter().map(|x| x.3).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            let up: Vec<usize> = (0..s.weights.len()).filter(|&i| s.up[i]).collect();
            match pick(&s, &mut rng) {
                None => prop_assert!(up.is_empty()),
                Some(i) => {
                    prop_assert!(s.up[i]);
                    let mine = readme_cost(&s, i);
                    if up.len() >= 2 {
                        let worst = up.iter().map(|&j| readme_cost(&s, j)).fold(f64::MIN, f64::max);
                        let worst_count = up.iter().filter(|&&j| readme_cost(&s, j) == worst).count();
                        prop_assert!(mine < worst || worst_count > 1);
                    }
                    if up.len() == 2 {
                        let other = if up[0] == i { up[1] } else { up[0] };
                        prop_assert!(mine <= readme_cost(&s, other));
                    }
                }
            }
        }
    }
}
