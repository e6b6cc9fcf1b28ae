//! Consistent hashing on a ring with virtual nodes (ketama).
//!
//! Each server owns `VNODES * weight` points on a 64-bit ring, placed by
//! hashing its address; a key goes to the first point at or after its hash.
//! Removing one of N servers moves only the keys it owned (about 1/N), and a
//! server that is down is skipped by walking on to the next point, so its keys
//! spread over the others and come back when it does. A server in its slow
//! start keeps only its share of its keys and passes the rest on the same way.

use super::servers::{Servers, hash_key};

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
        // A server ramping up takes the keys whose coin falls within its
        // share; the rest walk on, as past a server that is down.
        let coin = || hash_key(&key.to_le_bytes()) as f64 / u64::MAX as f64;
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| {
                let admits = |ramp: f64| ramp >= 1.0 || coin() < ramp;
                i < servers.len()
                    && servers.available(i)
                    && (!servers.ramping() || admits(servers.ramp(i)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn key(k: usize) -> u64 {
        hash_key(format!("user-{k}").as_bytes())
    }

    /// Which server (by id) each of `keys` keys goes to on a ring of `ids`
    /// with `weights`, all up.
    fn owners(ids: &[String], weights: &[u32], keys: usize) -> Vec<String> {
        let ring = Ring::new(ids, weights);
        let s = Fixed::new(weights.to_vec());
        (0..keys)
            .map(|k| ids[ring.pick(&s, key(k)).unwrap()].clone())
            .collect()
    }

    /// With 160 points per server a share strays from its mean by about
    /// 1/sqrt(160), 8 % of itself; 35 % is over four such deviations (the
    /// rings below stray by 15 % at most). Everything here is deterministic:
    /// the points and the keys are hashes of fixed names.
    fn close_to(share: f64, expected: f64) -> bool {
        (share - expected).abs() < 0.35 * expected
    }

    #[test]
    fn shares_are_close_to_even() {
        let n = 5;
        let keys = 50_000;
        let owners = owners(&ids(n), &vec![1; n], keys);
        for id in ids(n) {
            let share = owners.iter().filter(|o| **o == id).count() as f64 / keys as f64;
            assert!(close_to(share, 0.2), "{id}: share {share}");
        }
    }

    /// 160 points per unit of weight: a server of weight 3 among four of
    /// weight 1 takes 3/7 of the keys.
    #[test]
    fn shares_follow_weights() {
        let ids = ids(5);
        let keys = 50_000;
        let owners = owners(&ids, &[3, 1, 1, 1, 1], keys);
        let heavy = owners.iter().filter(|o| **o == ids[0]).count() as f64 / keys as f64;
        assert!(close_to(heavy, 3.0 / 7.0), "share {heavy}");
    }

    /// Removing one of N servers moves only the keys it owned, and those are
    /// about 1/N of all keys; the others stay where they were. Every N and
    /// every removed server, compared key by key between the two rings.
    #[test]
    fn removing_one_server_remaps_only_its_keys() {
        let keys = 20_000;
        for n in 2..10 {
            let all = ids(n);
            let before = owners(&all, &vec![1; n], keys);
            for removed in 0..n {
                let rest: Vec<String> = all
                    .iter()
                    .filter(|id| **id != all[removed])
                    .cloned()
                    .collect();
                let after = owners(&rest, &vec![1; n - 1], keys);
                let mut moved = 0;
                for (b, a) in before.iter().zip(&after) {
                    if b == &all[removed] {
                        moved += 1;
                    } else {
                        assert_eq!(b, a, "n={n}: a key of a remaining server moved");
                    }
                }
                let share = moved as f64 / keys as f64;
                assert!(close_to(share, 1.0 / n as f64), "n={n}: moved {share}");
            }
        }
    }

    /// A down server's keys move to the next server on the ring (where a
    /// ring without it would put them), everyone else's stay put, and they
    /// all come back when it recovers.
    #[test]
    fn a_down_server_s_keys_go_to_the_next_server_and_come_back() {
        let keys = 5_000;
        for n in 2..8 {
            let all = ids(n);
            let ring = Ring::new(&all, &vec![1; n]);
            let up = Fixed::new(vec![1; n]);
            for down in 0..n {
                let rest: Vec<String> =
                    all.iter().filter(|id| **id != all[down]).cloned().collect();
                let without = owners(&rest, &vec![1; n - 1], keys);
                let mut partly = up.clone();
                partly.up[down] = false;
                for (k, elsewhere) in without.iter().enumerate() {
                    let before = ring.pick(&up, key(k)).unwrap();
                    let during = ring.pick(&partly, key(k)).unwrap();
                    assert_eq!(&all[during], elsewhere, "n={n} down={down} key {k}");
                    if before != down {
                        assert_eq!(before, during, "n={n} down={down}: key {k} moved");
                    }
                    assert_eq!(
                        ring.pick(&up, key(k)),
                        Some(before),
                        "key {k} did not come back"
                    );
                }
            }
        }
    }

    #[test]
    fn a_key_equal_to_a_point_belongs_to_that_points_server() {
        let ids = ids(3);
        let ring = Ring::new(&ids, &[1, 1, 1]);
        let s = Fixed::new(vec![1, 1, 1]);
        for (server, id) in ids.iter().enumerate() {
            for v in 0..VNODES {
                let point = hash_key(format!("{id}#{v}").as_bytes());
                assert_eq!(ring.pick(&s, point), Some(server), "{id}#{v}");
            }
        }
    }

    /// A ring built for more servers than the list it is asked about (never
    /// the case when both come from one config) still names only servers
    /// of that list.
    #[test]
    fn a_pick_never_names_a_server_the_list_lacks() {
        let ring = Ring::new(&ids(3), &[1, 1, 1]);
        let s = Fixed::new(vec![1, 1]);
        for k in 0..2_000 {
            let picked = ring.pick(&s, key(k));
            assert!(matches!(picked, Some(0 | 1)), "{picked:?}");
        }
    }

    #[test]
    fn no_server_up_is_no_pick() {
        let ring = Ring::new(&ids(3), &[1, 1, 1]);
        let mut s = Fixed::new(vec![1, 1, 1]);
        s.up = vec![false; 3];
        assert_eq!(ring.pick(&s, key(1)), None);
    }
}
