//! Passive health's rules on tokio's paused clock, through the upstreams a
//! worker builds from a plan: a streak of failures ejects, an answer ends a
//! streak, cool-downs double when ejections follow closely and start over
//! once a server stayed in, `max_share` is never exceeded, and an ejected
//! server is out of every pick until its cool-down ends, when it starts
//! with a clean streak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral::upstream::{Upstream, rebuild};

fn upstream(servers: usize, eject: &str) -> Arc<Upstream> {
    let servers: Vec<String> = (1..=servers)
        .map(|i| format!("{{ addr = \"10.0.0.{i}:80\" }}"))
        .collect();
    let text = format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nupstream = \"app\"\n\n[[upstreams]]\nname = \"app\"\nservers = [{}]\n\n[upstreams.eject]\n{eject}",
        servers.join(", ")
    );
    let plan = corral::config::from_str(Path::new("/etc/corral/corral.toml"), &text).unwrap();
    rebuild(&plan.upstreams, &[], None).remove(0)
}

/// Fails server `index` `n` times with a reset; the last ejection made.
fn fail(up: &Upstream, index: usize, n: usize) -> Option<corral::upstream::Ejection> {
    let server = &up.servers[index];
    (0..n)
        .filter_map(|_| up.note_failure(server, "reset"))
        .last()
}

fn picks_of(up: &Upstream, index: usize) -> usize {
    let mut rng = fastrand::Rng::with_seed(1);
    (0..100)
        .filter(|_| up.pick(None, None, &mut rng) == Some(index))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_streak_ejects_and_an_answer_ends_the_streak() {
    let up = upstream(
        3,
        "consecutive_failures = 3\nstatuses = [500]\nbase_time = \"10s\"\n",
    );
    assert!(fail(&up, 0, 2).is_none());
    // A good answer: the streak starts over.
    assert!(up.note_answer(&up.servers[0], 200).is_none());
    assert!(fail(&up, 0, 2).is_none());
    // A 500 is one of the statuses: the third failure in a row.
    let ejection = up.note_answer(&up.servers[0], 500).expect("ejected");
    assert_eq!(ejection.reason, "status");
    assert_eq!(ejection.cool_down, Duration::from_secs(10));
    assert_eq!(ejection.server, up.servers[0].addr);
    assert_eq!(picks_of(&up, 0), 0);
    // Out for its whole cool-down, then back.
    tokio::time::advance(Duration::from_millis(9_900)).await;
    assert_eq!(picks_of(&up, 0), 0);
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(picks_of(&up, 0) > 20);
}

#[tokio::test(start_paused = true)]
async fn cool_downs_double_when_ejections_follow_closely_and_start_over_after() {
    let up = upstream(2, "consecutive_failures = 1\nbase_time = \"1s\"\n");
    let mut lengths = Vec::new();
    for _ in 0..8 {
        let ejection = fail(&up, 0, 1).expect("ejected");
        lengths.push(ejection.cool_down.as_secs());
        // Back, and failing again at once.
        tokio::time::advance(ejection.cool_down).await;
    }
    assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 32, 32]);
    // In for longer than the last cool-down: the next one is short again.
    tokio::time::advance(Duration::from_secs(33)).await;
    assert_eq!(fail(&up, 0, 1).expect("ejected").cool_down.as_secs(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_share_of_the_servers_is_out_at_once() {
    let up = upstream(4, "consecutive_failures = 1\n");
    let ejected: Vec<usize> = (0..4).filter(|&i| fail(&up, i, 3).is_some()).collect();
    assert_eq!(ejected, [0, 1], "half of four");
    assert!(picks_of(&up, 2) > 20 && picks_of(&up, 3) > 20);

    // The only server of an upstream is never ejected.
    let single = upstream(1, "consecutive_failures = 1\nmax_share = 0.9\n");
    assert!(fail(&single, 0, 10).is_none());

    // Without the table, failures count for nothing.
    let plan = corral::config::from_str(
        Path::new("/etc/corral/corral.toml"),
        "[[listeners]]\nname = \"p\"\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nupstream = \"app\"\n[[upstreams]]\nname = \"app\"\nservers = [{ addr = \"10.0.0.1:80\" }, { addr = \"10.0.0.2:80\" }]\n",
    )
    .unwrap();
    let plain = rebuild(&plan.upstreams, &[], None).remove(0);
    assert!(fail(&plain, 0, 100).is_none());
}

#[tokio::test(start_paused = true)]
async fn failures_of_requests_sent_before_an_ejection_do_not_start_the_next_streak() {
    let up = upstream(2, "consecutive_failures = 3\nbase_time = \"1s\"\n");
    assert!(fail(&up, 0, 3).is_some());
    // Requests already in flight to it fail during the cool-down.
    assert!(fail(&up, 0, 5).is_none());
    tokio::time::advance(Duration::from_millis(1_100)).await;
    // Back with a clean slate: a whole streak takes it out again.
    assert!(fail(&up, 0, 2).is_none());
    assert!(fail(&up, 0, 1).is_some());
}
