//! The balancing policies through the real binary: `least_conn` follows the
//! requests in flight (per unit of weight), `random` follows the weights,
//! `p2c_ewma` is fed each server's latency, and `consistent_hash` keeps every
//! `hash_key` kind on one server across workers and reloads, moving only the
//! removed server's keys, and places keyless requests at random.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use http::{Request, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

/// `config` with `workers` worker processes and a heartbeat timeout that CPU
/// starvation on a loaded machine cannot reach.
fn tuned(config: String, workers: usize) -> String {
    let config = config.replace("workers = 2\n", &format!("workers = {workers}\n"));
    if config.contains("heartbeat_timeout") {
        config
    } else {
        config.replace("[runtime]\n", "[runtime]\nheartbeat_timeout = \"10s\"\n")
    }
}

/// Gives the server at `addr` a weight in a [`simple_config`].
fn weighted(config: String, addr: SocketAddr, weight: u32) -> String {
    config.replace(
        &format!("{{ addr = \"{addr}\" }}"),
        &format!("{{ addr = \"{addr}\", weight = {weight} }}"),
    )
}

fn named(name: &str) -> Response<TestBody> {
    Response::builder()
        .header("x-backend", name)
        .body(full("done"))
        .unwrap()
}

/// A request that reached a gated server and waits there for `release`.
struct Arrival {
    server: &'static str,
    release: oneshot::Sender<()>,
}

/// An upstream that reports every request on `arrivals` and answers it only
/// when the test releases it, so the test decides what is in flight.
async fn gated(name: &'static str, arrivals: mpsc::UnboundedSender<Arrival>) -> Upstream {
    upstream(move |_req| {
        let arrivals = arrivals.clone();
        async move {
            let (release, released) = oneshot::channel();
            arrivals
                .send(Arrival {
                    server: name,
                    release,
                })
                .unwrap();
            let _ = released.await;
            named(name)
        }
    })
    .await
}

async fn next_arrival(arrivals: &mut mpsc::UnboundedReceiver<Arrival>) -> Arrival {
    tokio::time::timeout(PATIENCE, arrivals.recv())
        .await
        .expect("no request reached a server")
        .unwrap()
}

/// Sends a GET on a fresh connection in the background and waits until it is
/// held by a gated server.
async fn hold(
    addr: SocketAddr,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) -> (Arrival, tokio::task::JoinHandle<Reply>) {
    let reply = tokio::spawn(async move { get(addr, "/", &[]).await });
    (next_arrival(arrivals).await, reply)
}

/// Releases a held request and checks its answer came from where it was held.
///
/// The worker drops a response body, and with it the server's in-flight
/// count, before it writes the body's last bytes (hyper clears the body in
/// the same poll, on a current-thread runtime), so once the reply is read the
/// server no longer counts this request.
async fn answer(arrival: Arrival, reply: tokio::task::JoinHandle<Reply>) {
    arrival.release.send(()).unwrap();
    let reply = tokio::time::timeout(PATIENCE, reply)
        .await
        .expect("released request never answered")
        .unwrap();
    assert_eq!(reply.backend(), arrival.server);
}

#[tokio::test]
async fn least_conn_sends_nothing_to_a_server_busy_with_a_request_while_others_are_idle() {
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let servers = [
        gated("a", tx.clone()).await,
        gated("b", tx.clone()).await,
        gated("c", tx).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    // One worker: in-flight counts are each worker's own.
    let config = tuned(simple_config(&addrs, "balance = \"least_conn\""), 1);
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");

    // With every earlier request still held, each new one must go to a server
    // holding none.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hold(addr, &mut arrivals).await);
    }
    let first: HashSet<&str> = held.iter().map(|(a, _)| a.server).collect();
    assert_eq!(
        first.len(),
        3,
        "three in flight, not one per server: {first:?}"
    );

    // The first server stays busy with one request; the others go idle.
    let (busy, busy_reply) = held.remove(0);
    for (arrival, reply) in held {
        answer(arrival, reply).await;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for _ in 0..30 {
        let (arrival, reply) = hold(addr, &mut arrivals).await;
        assert_ne!(
            arrival.server, busy.server,
            "a request went to the busy server while two were idle"
        );
        *counts.entry(arrival.server).or_default() += 1;
        answer(arrival, reply).await;
    }
    // The two idle servers tie every time; ties are broken at random, so both
    // get some (all 30 on one has probability 2^-29).
    assert_eq!(counts.len(), 2, "ties not spread: {counts:?}");
    answer(busy, busy_reply).await;
}

#[tokio::test]
async fn least_conn_counts_requests_in_flight_per_unit_of_weight() {
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let (a, b) = (gated("a", tx.clone()).await, gated("b", tx).await);
    let config = simple_config(&[a.addr, b.addr], "balance = \"least_conn\"");
    let config = tuned(weighted(config, a.addr, 3), 1);
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");

    // Held requests only accumulate, so after 8 picks the loads in_flight /
    // weight are equal: 6/3 = 2/1 (unweighted it would be 4 and 4).
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(hold(addr, &mut arrivals).await);
    }
    let (on_b, on_a): (Vec<_>, Vec<_>) = held.into_iter().partition(|(a, _)| a.server == "b");
    assert_eq!((on_a.len(), on_b.len()), (6, 2));

    // With b's requests answered, b's load is 0 against a's 2, then 1 against
    // 2: the next two requests must both go to b (round robin would pick a).
    for (arrival, reply) in on_b {
        answer(arrival, reply).await;
    }
    let mut next = Vec::new();
    for _ in 0..2 {
        let (arrival, reply) = hold(addr, &mut arrivals).await;
        assert_eq!(
            arrival.server, "b",
            "a's 6 in flight at weight 3 outweigh b's"
        );
        next.push((arrival, reply));
    }
    for (arrival, reply) in on_a.into_iter().chain(next) {
        answer(arrival, reply).await;
    }
}

#[tokio::test]
async fn random_follows_the_weights_without_a_fixed_rotation() {
    let (a, b) = (echo("a").await, echo("b").await);
    let config = simple_config(&[a.addr, b.addr], "balance = \"random\"");
    let config = tuned(weighted(config, a.addr, 3), 2);
    let corral = Corral::start(&config).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let picks: String = {
        let mut picks = String::new();
        for _ in 0..2000 {
            picks.push_str(&client.get("/", &[]).await.backend());
        }
        picks
    };
    assert_eq!(picks.len(), 2000, "every answer names a or b");
    // a's count is Binomial(2000, 3/4): mean 1500, sd 19.4. 120 is over six
    // sd, exceeded with probability about 1e-9; an even split (1000) or
    // ignoring the weight is far outside.
    let on_a = picks.matches('a').count();
    assert!(
        on_a.abs_diff(1500) <= 120,
        "{on_a} of 2000 on a, weight 3 of 4"
    );
    // Smooth round robin at 3:1 repeats `aaba`, which never has b twice in a
    // row; at random, b follows b about 125 times in 2000 picks, so never
    // seeing it has probability about 1e-47.
    assert!(picks.contains("bb"), "a fixed rotation: {}", &picks[..40]);
}

#[tokio::test]
async fn p2c_ewma_moves_traffic_off_a_server_once_it_has_answered_slowly() {
    let slow = upstream(|_req| async {
        // The latency is what is under test: this server is slow.
        tokio::time::sleep(Duration::from_millis(200)).await;
        named("slow")
    })
    .await;
    let (fast1, fast2) = (echo("fast1").await, echo("fast2").await);
    let config = simple_config(
        &[slow.addr, fast1.addr, fast2.addr],
        "balance = \"p2c_ewma\"",
    );
    let corral = Corral::start(&tuned(config, 2)).await;
    // One connection, so one worker's averages decide every pick.
    let mut client = H1::connect(corral.addr("public")).await;
    let mut on_slow = 0;
    for _ in 0..60 {
        on_slow += usize::from(client.get("/", &[]).await.backend() == "slow");
    }
    // Once measured at 200 ms, the slow server loses every draw against a
    // fast one (well under a millisecond). Without latency fed in, every cost
    // is equal and it would get a third (about 20; 6 or fewer has probability
    // about 3e-5).
    assert!(
        on_slow <= 6,
        "{on_slow} of 60 requests went to the slow server"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_gives_a_server_that_was_slow_once_traffic_again_after_its_average_decays() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let first = std::sync::Arc::new(AtomicBool::new(true));
    let flaky = upstream(move |_req| {
        let slow = first.swap(false, Ordering::SeqCst);
        async move {
            // One slow answer (a GC pause, say), then fast ones.
            if slow {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            named("flaky")
        }
    })
    .await;
    let steady = echo("steady").await;
    let config = simple_config(&[flaky.addr, steady.addr], "balance = \"p2c_ewma\"");
    // In-process on the paused clock, so latencies are exact: the flaky
    // server's one sample is 200 ms, every other one 0.
    let proxy = in_process(&config).await;
    let mut client = H1::connect(proxy.addr).await;
    let mut slow_answered = false;
    // Both cost the same until the flaky server is measured, so it is picked
    // within 40 requests (probability 1 - 2^-40).
    for _ in 0..40 {
        if client.get("/", &[]).await.backend() == "flaky" {
            slow_answered = true;
            break;
        }
    }
    assert!(slow_answered, "the flaky server was never picked");
    drop(client);

    // Twelve decay periods later that one sample weighs e^-12 of what it did.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let mut client = H1::connect(proxy.addr).await;
    let mut on_flaky = 0;
    for _ in 0..40 {
        on_flaky += usize::from(client.get("/", &[]).await.backend() == "flaky");
    }
    assert!(
        on_flaky >= 1,
        "one 200 ms answer two minutes ago still keeps every request off the server"
    );
}

/// How a `consistent_hash` test gives a request its key.
#[derive(Clone, Copy, Debug)]
enum KeyKind {
    ClientIp,
    Header,
    Cookie,
    Path,
}

impl KeyKind {
    fn hash_key(self) -> &'static str {
        match self {
            Self::ClientIp => "client_ip",
            Self::Header => "header:x-user",
            Self::Cookie => "cookie:session",
            Self::Path => "path",
        }
    }
}

/// One GET on a fresh connection carrying key number `key` (none: without
/// the key). Returns the server that answered and the connection, which
/// stays open while the sender lives.
async fn keyed_get(
    addr: SocketAddr,
    kind: KeyKind,
    key: Option<u8>,
) -> (String, SendRequest<TestBody>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let (KeyKind::ClientIp, Some(k)) = (kind, key) {
        // All of 127.0.0.0/8 is loopback: each key is a client address.
        socket
            .bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 1, k + 1)),
                0,
            ))
            .unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::get("/").header("host", "balance.test");
    match (kind, key) {
        (KeyKind::Header, Some(k)) => request = request.header("x-user", format!("user-{k}")),
        (KeyKind::Header, None) => request = request.header("x-other", "user-0"),
        // The key cookie among others, as browsers send it.
        (KeyKind::Cookie, Some(k)) => {
            request = request.header("cookie", format!("theme=dark; session=s{k}; lang=en"));
        }
        (KeyKind::Cookie, None) => request = request.header("cookie", "theme=dark; lang=en"),
        (KeyKind::Path, Some(k)) => {
            request = Request::get(format!("/items/{k}")).header("host", "balance.test");
        }
        // The client address went into the socket; every request has a path.
        (KeyKind::ClientIp, _) | (KeyKind::Path, None) => {}
    }
    let response = sender
        .send_request(request.body(empty()).unwrap())
        .await
        .unwrap();
    (read(response).await.backend(), sender)
}

/// The server each of `keys` lands on, each asked on a fresh connection.
async fn placement(addr: SocketAddr, kind: KeyKind, keys: u8) -> Vec<String> {
    let mut placed = Vec::new();
    for k in 0..keys {
        placed.push(keyed_get(addr, kind, Some(k)).await.0);
    }
    placed
}

/// Whether a `/metrics` page shows open connections on both workers.
fn both_workers_hold_connections(page: &str) -> bool {
    (0..2).all(|w| {
        page.lines()
            .filter_map(|l| {
                l.strip_prefix(&format!(
                    "corral_connections_active{{listener=\"public\",worker=\"{w}\"}} "
                ))
            })
            .any(|n| n.trim().parse::<f64>().is_ok_and(|n| n >= 1.0))
    })
}

/// Pins `consistent_hash` with one `hash_key` kind on a 2-worker corral.
async fn consistent_hash_keeps_keys(kind: KeyKind) {
    let names = ["a", "b", "c", "d"];
    let mut servers = Vec::new();
    for name in names {
        servers.push(echo(name).await);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let extra = format!(
        "balance = \"consistent_hash\"\nhash_key = \"{}\"",
        kind.hash_key()
    );
    let corral = Corral::start(&tuned(cluster_config(&addrs, &extra), 2)).await;
    let addr = corral.addr("public");

    // One key on 40 connections held open together: the kernel spreads them
    // over both workers (all on one has probability 2^-39), and each worker
    // builds its own ring, yet they agree.
    let mut open = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let (server, conn) = keyed_get(addr, kind, Some(7)).await;
        seen.insert(server);
        open.push(conn);
    }
    assert_eq!(
        seen.len(),
        1,
        "{kind:?}: one key on several servers: {seen:?}"
    );
    let (_, page) = admin_call(corral.admin.unwrap(), http::Method::GET, "/metrics").await;
    assert!(both_workers_hold_connections(&page), "{page}");
    drop(open);

    let keys = 60;
    let before = placement(addr, kind, keys).await;
    let used: HashSet<&str> = before.iter().map(String::as_str).collect();
    // Each server owns about a quarter of the ring; one with none of 60 keys
    // has probability about 1e-7.
    assert_eq!(used, HashSet::from(names), "{kind:?}: {before:?}");

    // Removing b, which is not last, so the ring must be keyed by server
    // address, not position: keys on a, c and d stay; only b's move.
    let remaining = [addrs[0], addrs[2], addrs[3]];
    corral.write_config(&tuned(cluster_config(&remaining, &extra), 2));
    corral
        .wait_status(|s| {
            s["generation"] == 2
                && all_ready(s)
                && s["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|w| w["generation"] == 2)
        })
        .await;
    let after = placement(addr, kind, keys).await;
    let mut moved = 0;
    for (k, (was, is)) in before.iter().zip(&after).enumerate() {
        if was == "b" {
            assert_ne!(is, "b", "{kind:?}: key {k} still on the removed server");
            assert!(!is.is_empty(), "{kind:?}: key {k} got no server");
            moved += 1;
        } else {
            assert_eq!(was, is, "{kind:?}: key {k} moved off a server that stayed");
        }
    }
    assert!(
        moved >= 1 && moved < usize::from(keys) / 2,
        "{kind:?}: {moved} moved"
    );
}

/// Requests without the key spread over the servers instead of sharing one.
async fn keyless_requests_spread(kind: KeyKind) {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let extra = format!(
        "balance = \"consistent_hash\"\nhash_key = \"{}\"",
        kind.hash_key()
    );
    let config = simple_config(&[a.addr, b.addr, c.addr], &extra);
    let corral = Corral::start(&tuned(config, 2)).await;
    let mut seen = HashSet::new();
    for _ in 0..40 {
        seen.insert(keyed_get(corral.addr("public"), kind, None).await.0);
    }
    // At random, all 40 on one of three servers has probability 3^-39.
    assert!(
        seen.len() >= 2,
        "{kind:?}: every keyless request on {seen:?}"
    );
}

#[tokio::test]
async fn consistent_hash_by_client_ip_keeps_each_address_on_one_server_and_moves_only_the_removed_servers_keys()
 {
    consistent_hash_keeps_keys(KeyKind::ClientIp).await;
}

#[tokio::test]
async fn consistent_hash_by_header_keeps_each_value_on_one_server_and_moves_only_the_removed_servers_keys()
 {
    consistent_hash_keeps_keys(KeyKind::Header).await;
}

#[tokio::test]
async fn consistent_hash_by_cookie_keeps_each_value_on_one_server_and_moves_only_the_removed_servers_keys()
 {
    consistent_hash_keeps_keys(KeyKind::Cookie).await;
}

#[tokio::test]
async fn consistent_hash_by_path_keeps_each_path_on_one_server_and_moves_only_the_removed_servers_keys()
 {
    consistent_hash_keeps_keys(KeyKind::Path).await;
}

#[tokio::test]
async fn consistent_hash_places_requests_without_the_header_at_random() {
    keyless_requests_spread(KeyKind::Header).await;
}

#[tokio::test]
async fn consistent_hash_places_requests_without_the_cookie_at_random() {
    keyless_requests_spread(KeyKind::Cookie).await;
}
