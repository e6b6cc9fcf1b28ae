//! The config file watcher: a burst of writes is one reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test]
async fn a_burst_of_writes_is_coalesced_into_one_reload() {
    let (a, b) = (echo("a").await, echo("b").await);
    let corral = Corral::start(&cluster_config(&[a.addr], "")).await;
    // Twenty different texts in a row, each a complete valid file, as an
    // editor or a deploy tool writing several times might leave them.
    for weight in 1..=20 {
        let text = cluster_config(&[a.addr], "").replace(
            &format!("{{ addr = \"{}\" }}", a.addr),
            &format!("{{ addr = \"{}\", weight = {weight} }}", a.addr),
        );
        corral.write_config(&text);
    }
    let last = cluster_config(&[b.addr], "");
    corral.write_config(&last);
    let status = corral
        .wait_status(|s| {
            s["last_reload"]["result"] == "success"
                && s["upstreams"][0]["servers"][0]["addr"] == b.addr.to_string()
        })
        .await;
    // The writes take microseconds and the watcher waits for 200 ms of
    // quiet, so this is one reload; two leaves room for one stall of the
    // test's thread on a loaded machine, and is still far from 21.
    let generation = status["generation"].as_u64().unwrap();
    assert!((2..=3).contains(&generation), "{status:#}");
    assert_eq!(status["last_reload"]["trigger"], "file change");
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
}
