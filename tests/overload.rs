//! Overload, on the real binary: `max_connections` pauses accepting (the
//! next connection waits in the kernel's queue, at no CPU cost, until one
//! closes or a reload raises the limit); request heads in flight past a
//! worker's memory budget shed the oldest with a 503 while fast clients are
//! served; and thousands of idle keep-alive connections beside a
//! slow-header flood hold worker memory flat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config of `workers` workers with the admin endpoint, in front of
/// `app`, with `settings` on its listener.
fn config(app: SocketAddr, workers: usize, settings: &str) -> String {
    listener_config(app, settings)
        .replace("workers = 2", &format!("workers = {workers}"))
        .replacen(
            "[[listeners]]",
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]",
            1,
        )
}

/// An upstream answering `ok` to everything.
async fn app() -> Upstream {
    upstream(|_| async { Response::new(full("ok")) }).await
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// The start of a request head that never ends: a slowloris.
const SLOW_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n";

/// One response read off `stream`: its head (lower-cased) and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    patiently("a whole response", async {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                if bytes.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]);
                    return (head, body.into_owned());
                }
            }
            let n = stream.read(&mut buf).await.unwrap_or(0);
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// Asserts that `stream` is answered `200 ok`.
async fn assert_served(stream: &mut TcpStream) {
    let (head, body) = read_response(stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
}

/// A connection to `addr` that has sent a request (answered or not).
async fn requesting(addr: SocketAddr) -> TcpStream {
    let mut stream = patiently("connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    stream.write_all(REQUEST).await.unwrap();
    stream
}

/// A keep-alive connection to `addr`, served once.
async fn served(addr: SocketAddr) -> TcpStream {
    let mut stream = requesting(addr).await;
    assert_served(&mut stream).await;
    stream
}

/// A connection to `addr` that has sent part of a request head.
async fn slow_head(addr: SocketAddr) -> TcpStream {
    let mut stream = patiently("connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    stream.write_all(SLOW_HEAD).await.unwrap();
    stream
}

/// Waits until `n` connections wait in `addr`'s accept queue.
async fn wait_queued(addr: SocketAddr, n: u64) {
    until(&format!("{n} connections queued on {addr}"), async || {
        accept_queue(addr) == n
    })
    .await;
}

/// CPU time `pid` has used, in clock ticks (USER_HZ, 100 a second on
/// Linux): `utime` plus `stime` of /proc/PID/stat.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's `(name)`, fields start at the third (state).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Resident memory of `pids` together (VmRSS), in KiB.
fn rss_kib(pids: &[u64]) -> u64 {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .unwrap();
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

async fn metric(corral: &Corral, name: &str) -> f64 {
    metric_sum(&scrape_metrics(corral).await, name, &[])
}

/// Rewrites the config with `settings` on the listener and reloads it.
async fn reload(corral: &Corral, app: SocketAddr, settings: &str) {
    corral.write_config(&config(app, 1, settings));
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn at_max_connections_the_next_connection_waits_unaccepted_until_one_closes() {
    let app = app().await;
    let corral = Corral::start(&config(app.addr, 1, "max_connections = 3")).await;
    let addr = corral.addr("public");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(served(addr).await);
    }
    let mut waiting = requesting(addr).await;
    wait_queued(addr, 1).await;

    let worker = corral.worker_pids().await[0];
    let before = cpu_ticks(worker);
    // The held connections are still served meanwhile.
    for stream in &mut held {
        stream.write_all(REQUEST).await.unwrap();
        assert_served(stream).await;
    }
    // Not a synchronisation but the measurement: a second in which an
    // accept loop spinning at the limit would burn most of a core.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(worker) - before;
    assert!(
        spent < 25,
        "the worker used {spent} ticks of 100 at the limit"
    );
    assert_eq!(accept_queue(addr), 1, "the fourth connection was accepted");
    let mut byte = [0u8; 1];
    let read = waiting.try_read(&mut byte);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{read:?}"
    );
    assert!(metric(&corral, "corral_accept_pauses_total").await >= 1.0);

    drop(held.pop());
    assert_served(&mut waiting).await;
    assert_eq!(accept_queue(addr), 0);
}

#[tokio::test]
async fn a_reload_that_changes_max_connections_applies_to_the_accepting_listener() {
    let app = app().await;
    let corral = Corral::start(&config(app.addr, 1, "max_connections = 1")).await;
    let addr = corral.addr("public");
    let first = served(addr).await;
    let mut second = requesting(addr).await;
    wait_queued(addr, 1).await;

    // Raised: the queued connection is served with the first still open.
    reload(&corral, app.addr, "max_connections = 2").await;
    assert_served(&mut second).await;

    // Lowered: with one connection open a new one waits again.
    reload(&corral, app.addr, "max_connections = 1").await;
    drop(first);
    let mut third = requesting(addr).await;
    wait_queued(addr, 1).await;
    drop(second);
    assert_served(&mut third).await;
}

/// What each head in flight of a listener with `max_header_bytes = "1
/// MiB"` is charged: 1 MiB and 16 KiB (README, Overload).
const CHARGE: usize = (1 << 20) + (16 << 10);

/// How many such heads a worker's 32 MiB budget holds.
const CAP: usize = (32 << 20) / CHARGE;

/// Waits until the worker's heads in flight are charged `heads` times
/// [`CHARGE`].
async fn wait_charged(corral: &Corral, heads: usize) {
    let want = (heads * CHARGE) as f64;
    until(&format!("{heads} heads charged"), async || {
        metric(corral, "corral_request_heads_bytes").await == want
    })
    .await;
}

#[tokio::test]
async fn past_the_head_budget_the_oldest_slow_heads_get_503_while_fast_clients_are_served() {
    const EXTRA: usize = 5;
    let app = app().await;
    let settings = "max_header_bytes = \"1 MiB\"\nheader_timeout = \"60s\"";
    let corral = Corral::start(&config(app.addr, 1, settings)).await;
    let addr = corral.addr("public");
    let mut keepalive = served(addr).await;
    let mut slow = Vec::new();
    for i in 0..CAP {
        slow.push(slow_head(addr).await);
        // One at a time, so that their age is their order here.
        wait_charged(&corral, i + 1).await;
    }
    for i in 0..EXTRA {
        slow.push(slow_head(addr).await);
        // The oldest head makes room for the new one.
        let (head, body) = read_response(&mut slow[i]).await;
        assert!(
            head.starts_with("http/1.1 503 service unavailable"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ncontent-type: text/plain"), "{head}");
        assert_eq!(
            body,
            "503 Service Unavailable: overloaded, try again later\n"
        );
        let mut rest = Vec::new();
        let closed = patiently(
            "the shed connection to close",
            slow[i].read_to_end(&mut rest),
        );
        assert!(closed.await.is_ok_and(|n| n == 0), "{rest:?}");
    }
    wait_charged(&corral, CAP).await;

    // Fast clients' heads arrive whole and are never charged or shed.
    keepalive.write_all(REQUEST).await.unwrap();
    assert_served(&mut keepalive).await;
    for _ in 0..20 {
        served(addr).await;
    }
    let samples = scrape_metrics(&corral).await;
    let shed = metric_sum(
        &samples,
        "corral_connections_shed_total",
        &[("listener", "public")],
    );
    assert_eq!(shed, EXTRA as f64);
    let answered = metric_sum(&samples, "corral_requests_total", &[("code", "503")]);
    assert_eq!(answered, EXTRA as f64);
    let charged = metric_sum(&samples, "corral_request_heads_bytes", &[]);
    assert_eq!(charged, (CAP * CHARGE) as f64);
    // The heads kept are the newest, still waiting for their ends.
    for stream in &slow[EXTRA..] {
        let mut byte = [0u8; 1];
        let read = stream.try_read(&mut byte);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
    }
}

/// Lets this process hold as many descriptors as it may (corral, started
/// after, inherits the limit).
fn raise_descriptor_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= needed,
        "{needed} descriptors are needed, the hard limit is {hard}"
    );
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// Opens `n` connections to `addr` with `open`, `at_once` at a time.
async fn open_many<F, Fut>(n: usize, at_once: usize, open: F) -> Vec<TcpStream>
where
    F: Fn() -> Fut,
    Fut: Future<Output = TcpStream> + Send + 'static,
{
    let mut streams = Vec::with_capacity(n);
    while streams.len() < n {
        let batch: Vec<_> = (0..at_once.min(n - streams.len()))
            .map(|_| tokio::spawn(open()))
            .collect();
        for opening in batch {
            streams.push(opening.await.unwrap());
        }
    }
    streams
}

/// Per idle keep-alive connection, what a worker may hold: 3.7 to 4.9 KiB
/// are measured (docs/performance.md); a connection that kept its HTTP
/// buffers would hold 20.
const IDLE_KIB: u64 = 8;

/// Per slow-header connection admitted, what a worker may hold: hyper's
/// two 8 KiB buffers and the connection's state (about 21 KiB measured).
const SLOW_KIB: u64 = 32;

/// Waits until the resident memory of `workers` has grown by at most
/// `bound` KiB since `before`; by how much it has grown then.
async fn settled(workers: &[u64], before: u64, bound: u64, what: &str) -> u64 {
    // Idle connections give up their buffers after a second, and workers
    // return freed memory every two: the growth comes down to the bound.
    let grown = || rss_kib(workers).saturating_sub(before);
    until(
        &format!("worker memory to settle with {what}"),
        async || grown() <= bound,
    )
    .await;
    grown()
}

/// `idle` idle keep-alive connections, then `slow` slow-header ones, on
/// two workers: memory grows by a bounded amount per connection, every head
/// past the budget is shed, and fast clients are served throughout.
async fn idle_and_slow_connections_hold_memory_flat(idle: usize, slow: usize) {
    raise_descriptor_limit((idle + slow) as u64 + 256);
    let app = app().await;
    let corral = Corral::start(&config(app.addr, 2, "header_timeout = \"60s\"")).await;
    let addr = corral.addr("public");
    let workers = corral.worker_pids().await;
    for _ in 0..100 {
        served(addr).await;
    }
    let before = rss_kib(&workers);
    let started = std::time::Instant::now();
    let _idle = open_many(idle, 100, move || served(addr)).await;
    let opened = started.elapsed();
    let idle_grown = settled(&workers, before, idle as u64 * IDLE_KIB, "idle connections").await;
    eprintln!(
        "{idle} idle connections opened in {opened:?}; workers grew by {idle_grown} KiB, {:.2} KiB each",
        idle_grown as f64 / idle as f64
    );

    let before = rss_kib(&workers);
    let _slow = open_many(slow, 100, move || slow_head(addr)).await;
    // Every slow head is charged or shed: two workers keep at most 409
    // heads of the default 64 KiB and 16 KiB each in 32 MiB.
    let charge = (64 << 10) + (16 << 10);
    let per_worker = (32 << 20) / charge;
    let (mut kept, mut shed) = (0, 0);
    until("every slow head charged or shed", async || {
        let samples = scrape_metrics(&corral).await;
        kept = metric_sum(&samples, "corral_request_heads_bytes", &[]) as usize / charge;
        shed = metric_sum(&samples, "corral_connections_shed_total", &[]) as usize;
        kept + shed == slow
    })
    .await;
    assert!(kept <= 2 * per_worker, "{kept} heads kept");
    assert!(shed >= slow.saturating_sub(2 * per_worker), "{shed} shed");
    let fast = std::time::Instant::now();
    for _ in 0..50 {
        served(addr).await;
    }
    eprintln!(
        "50 requests on fresh connections beside them took {:?}",
        fast.elapsed()
    );
    let slow_grown = settled(&workers, before, kept as u64 * SLOW_KIB, "slow heads").await;
    eprintln!(
        "{slow} slow heads, {kept} kept and {shed} shed; workers grew by {slow_grown} KiB, {:.2} KiB a head kept",
        slow_grown as f64 / kept as f64
    );
    for _ in 0..50 {
        served(addr).await;
    }
}

/// The size: ten thousand idle connections and a thousand slow
/// heads. The figures in docs/performance.md come from this run on a
/// release build.
#[tokio::test]
async fn ten_thousand_idle_and_a_thousand_slow_header_connections_hold_memory_flat() {
    idle_and_slow_connections_hold_memory_flat(10_000, 1_000).await;
}
