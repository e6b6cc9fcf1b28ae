//! Overload, on the real binary: `max_connections` pauses accepting (the
//! next connection waits in the kernel's queue, at no CPU cost, until one
//! closes or a reload raises the limit).
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

/// Waits until `n` connections wait in `addr`'s accept queue.
async fn wait_queued(addr: SocketAddr, n: u64) {
    patiently(&format!("{n} connections queued on {addr}"), async {
        while accept_queue(addr) != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
