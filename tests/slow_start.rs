//! Slow start: a server a reload adds to an upstream, or one that comes
//! back from a failed health check, takes a tenth of its share at first and
//! all of it after `slow_start`, under every policy that uses weights. On
//! tokio's paused clock, through the upstreams a worker builds from a plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral::upstream::{Upstream, rebuild};

fn config(servers: &[&str], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ addr = \"{s}\" }}"))
        .collect();
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nupstream = \"app\"\n\n[[upstreams]]\nname = \"app\"\nservers = [{}]\nslow_start = \"10s\"\n{extra}",
        servers.join(", ")
    )
}

fn upstreams(text: &str, previous: &[Arc<Upstream>]) -> Vec<Arc<Upstream>> {
    let plan = corral::config::from_str(Path::new("/etc/corral/corral.toml"), text).unwrap();
    rebuild(&plan.upstreams, previous, plan.sticky_key.as_ref())
}

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";

/// The share of `picks` that went to the server at `index`, each pick with
/// a key of its own (for `consistent_hash`), under a steady load: the last
/// 32 picks stay in flight (for `least_conn` and `p2c_ewma`), and every
/// server has answered in a millisecond (for `p2c_ewma`).
fn share(upstream: &Upstream, index: usize, picks: u64) -> f64 {
    for server in &upstream.servers {
        server.observe_latency(Duration::from_millis(1));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut in_flight = std::collections::VecDeque::new();
    let mut hits = 0;
    for k in 0..picks {
        let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let Some(picked) = upstream.pick(Some(key), None, &mut rng) else {
            continue;
        };
        hits += u64::from(picked == index);
        in_flight.push_back(upstream.servers[picked].lease());
        if in_flight.len() > 32 {
            in_flight.pop_front();
        }
    }
    hits as f64 / picks as f64
}

#[tokio::test(start_paused = true)]
async fn a_server_a_reload_adds_ramps_from_a_tenth_of_its_weight_to_all_of_it() {
    for balance in [
        "round_robin",
        "random",
        "least_conn",
        "p2c_ewma",
        "consistent_hash",
    ] {
        let extra = format!("balance = \"{balance}\"\n");
        let first = upstreams(&config(&[A], &extra), &[]);
        let next = upstreams(&config(&[A, B], &extra), &first);
        let app = &next[0];
        // Weights 1 and 1: B's full share is a half. Ramped to `r` of its
        // weight it takes r / (r + 1) of the picks; on the ring, `r` of the
        // keys it owns.
        let expected = |r: f64| {
            if balance == "consistent_hash" {
                r / 2.0
            } else {
                r / (r + 1.0)
            }
        };
        for (elapsed, ramp) in [(0, 0.1), (5, 0.55), (10, 1.0)] {
            let got = share(app, 1, 20_000);
            let want = expected(ramp);
            assert!(
                (got - want).abs() < 0.03,
                "{balance}: {got} of the picks {elapsed} s in, expected {want}"
            );
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn servers_there_from_the_start_or_kept_by_a_reload_take_their_whole_share_at_once() {
    let first = upstreams(&config(&[A, B], ""), &[]);
    assert!((0.45..0.55).contains(&share(&first[0], 1, 10_000)));
    // A reload that changes the servers' settings rebuilds them: not new.
    let next = upstreams(&config(&[A, B], "idle_timeout = \"7s\"\n"), &first);
    assert!((0.45..0.55).contains(&share(&next[0], 1, 10_000)));
    // Without `slow_start`, a new server takes its share at once.
    let plain = |servers: &[&str]| config(servers, "").replace("slow_start = \"10s\"\n", "");
    let first = upstreams(&plain(&[A]), &[]);
    let next = upstreams(&plain(&[A, B]), &first);
    assert!((0.45..0.55).contains(&share(&next[0], 1, 10_000)));
}

#[tokio::test(start_paused = true)]
async fn a_server_back_from_a_failed_health_check_starts_slowly() {
    let app = upstreams(&config(&[A, B], ""), &[]).remove(0);
    app.servers[1].set_healthy(false);
    assert_eq!(share(&app, 1, 1_000), 0.0);
    app.servers[1].set_healthy(true);
    let at_start = share(&app, 1, 20_000);
    assert!((0.07..0.12).contains(&at_start), "{at_start}");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!((0.45..0.55).contains(&share(&app, 1, 20_000)));
}
