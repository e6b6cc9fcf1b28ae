//! How server names become servers, without a network: the addresses a
//! name has (or not yet) make the upstream's servers, an address written
//! as `IP:PORT` keeps its entry, and an upstream whose names never
//! resolved picks no server under any policy (its requests get 503).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use corral::master::discovery::{Names, resolve};

fn plan(balance: &str) -> corral::plan::Plan {
    let text = format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nupstream = \"app\"\n\n[[upstreams]]\nname = \"app\"\nbalance = \"{balance}\"\nservers = [{{ addr = \"api.internal:8080\", weight = 2 }}, {{ addr = \"10.0.0.9:8080\" }}]\n"
    );
    corral::config::from_str(Path::new("/etc/corral/corral.toml"), &text).unwrap()
}

#[test]
fn a_name_never_resolved_leaves_only_the_written_addresses() {
    let mut plan = plan("round_robin");
    resolve(&mut plan, &Names::default());
    let servers: Vec<String> = plan.upstreams[0]
        .servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect();
    assert_eq!(servers, ["10.0.0.9:8080"]);
}

#[test]
fn an_upstream_without_servers_picks_none_under_every_policy() {
    for balance in [
        "round_robin",
        "least_conn",
        "random",
        "p2c_ewma",
        "consistent_hash",
    ] {
        let mut plan = plan(balance);
        // Only the name: nothing resolved yet.
        plan.upstreams[0].servers.clear();
        resolve(&mut plan, &Names::default());
        let upstreams = corral::upstream::rebuild(&plan.upstreams, &[], None);
        let mut rng = fastrand::Rng::with_seed(3);
        assert!(upstreams[0].servers.is_empty());
        assert_eq!(
            upstreams[0].pick(Some(7), None, &mut rng),
            None,
            "{balance}"
        );
    }
}
