//! Faults at once: reloads while workers die or hang, a crash-looping slot
//! under fresh connections, a slot retired with connections queued on it,
//! and kills, reloads and upstream restarts together under load. No reload
//! may fail or stall, and no client may wait on a slot without a worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What an admin request may take while a reload is pending or faults
/// happen around it: a fraction of the 10 s a live worker gets to confirm
/// a reload, so waiting on any worker shows.
const ANSWERED: Duration = Duration::from_secs(3);

/// What one request on a fresh connection may take here: well under the
/// 10 s header timeout a client stuck in a queue nobody accepts from would
/// run into, and far above what serving it takes on a loaded machine.
const SERVED: Duration = Duration::from_secs(3);

fn kill(pid: u64, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Waits until process `pid` is stopped (SIGSTOP has taken effect).
async fn wait_stopped(pid: u64) {
    until(&format!("process {pid} to stop"), async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(") ").unwrap().1.starts_with('T')
    })
    .await;
}

/// An admin call that must answer within [`ANSWERED`].
async fn admin_soon(corral: &Corral, method: Method, path: &str) -> (StatusCode, String) {
    let call = corral::admin::client::call(corral.admin.unwrap(), method.clone(), path, None);
    match tokio::time::timeout(ANSWERED, call).await {
        Ok(answer) => answer.unwrap(),
        Err(_) => panic!("{method} {path} not answered within {ANSWERED:?}"),
    }
}

/// How a request on a fresh connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// The status code of a complete response.
    Answered(u16),
    /// Refused, reset or closed without a response.
    Failed(String),
    /// Nothing within the deadline.
    Stalled,
}

/// `GET /` on a connection of its own, written at once and read to its end
/// within `deadline`.
async fn fresh_get(addr: SocketAddr, deadline: Duration) -> Ending {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        exchange(&mut stream).await
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(code)) => Ending::Answered(code),
        Ok(Err(e)) => Ending::Failed(e),
        Err(_) => Ending::Stalled,
    }
}

/// Sends `GET /` with `Connection: close` and reads the answer to its end.
async fn exchange(stream: &mut tokio::net::TcpStream) -> Result<u16, String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: faults.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .ok_or_else(|| format!("no response: {text:?}"))
}

/// Connections the kernel has queued on the listening socket `inode`, not
/// yet accepted (`/proc/net/tcp` shows a listener's queue as `rx_queue`).
fn queued_on(inode: u64) -> usize {
    tcp_sockets()
        .into_iter()
        .find(|s| s.inode == inode)
        .map(|s| s.rx_queue as usize)
        .unwrap_or_else(|| panic!("no socket with inode {inode}"))
}

/// `clients` clients at once, each sending `each` requests on a fresh
/// connection to `addr`: every one is answered 200 within [`SERVED`].
async fn all_served_fresh(addr: SocketAddr, clients: usize, each: usize) {
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut endings = Vec::new();
                for _ in 0..each {
                    endings.push(fresh_get(addr, SERVED).await);
                }
                endings
            })
        })
        .collect();
    for client in clients {
        for ending in client.await.unwrap() {
            assert_eq!(ending, Ending::Answered(200));
        }
    }
}

/// The listening socket of `addr` that process `pid` holds.
fn listener_held_by(pid: u64, addr: SocketAddr) -> u64 {
    let held = socket_inodes(pid);
    let listening = listening_inodes(addr);
    let mut mine = held.into_iter().filter(|i| listening.contains(i));
    let inode = mine.next().expect("the worker holds no listening socket");
    assert!(mine.next().is_none(), "one listener, one socket per slot");
    inode
}

#[tokio::test]
async fn the_admin_endpoint_answers_while_a_reload_waits_on_a_worker_and_a_kill_ends_the_wait() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    // Stopped, slot 1's worker cannot confirm anything: the reload waits.
    kill(workers[1], Signal::SIGSTOP);
    wait_stopped(workers[1]).await;
    corral.write_config(&format!("{config}\n# generation 2\n"));
    let admin = corral.admin.unwrap();
    let reload = tokio::spawn(async move {
        let started = Instant::now();
        let answer = corral::admin::client::call(admin, Method::POST, "/reload", None).await;
        (answer.unwrap(), started.elapsed())
    });
    corral
        .wait_status(|s| s["workers"][0]["generation"] == 2)
        .await;

    let (code, body) = admin_soon(&corral, Method::GET, "/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("\"generation\": 2"), "{body}");
    let (code, body) = admin_soon(&corral, Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("corral_workers 2"), "{body}");
    let (code, body) = admin_soon(&corral, Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // Another reload is no more held up than any other request.
    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("\"unchanged\": true"), "{body}");
    assert!(!reload.is_finished(), "the reload did not wait for slot 1");

    // Killed, slot 1's worker is replaced on the new generation, and that
    // ends the wait: its death is its own event, not the reload's failure.
    kill(workers[1], Signal::SIGKILL);
    let ((code, body), took) = patiently("the reload", reload).await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("\"generation\": 2"), "{body}");
    let status = corral.status().await;
    let slot = &status["workers"][1];
    assert_eq!(slot["state"], "ready", "{status:#}");
    assert_eq!(slot["generation"], 2, "{status:#}");
    assert_ne!(slot["pid"].as_u64(), Some(workers[1]), "{status:#}");
    assert_eq!(status["last_reload"]["result"], "success", "{status:#}");
    eprintln!("the reload took {took:?}, the kill included");
}

#[tokio::test]
async fn a_reload_does_not_wait_for_a_slot_backing_off_whose_next_worker_starts_on_it() {
    let app = echo("app").await;
    let (_logs, dir, config) = crash_prone(app.addr);
    let corral = Corral::start(&config).await;
    corral.wait_status(all_ready).await;
    std::fs::remove_dir_all(&dir).unwrap();
    kill(corral.worker_pids().await[0], Signal::SIGKILL);
    // Its fifth quick exit in a row (the fourth it backs off after): slot 0
    // now waits 2 s before the next start, and has no worker meanwhile.
    let backoffs = corral
        .wait_for_logs("worker keeps exiting; backing off slot=0", 4)
        .await;
    assert_eq!(log_field(&backoffs[3], "crash_loop").as_deref(), Some("5"));
    std::fs::create_dir(&dir).unwrap();
    corral.write_config(&format!("{config}\n# generation 2\n"));

    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("\"generation\": 2"), "{body}");
    // Answered within the backoff: the reload did not wait for it.
    let status = corral.status().await;
    assert_eq!(status["workers"][0]["state"], "backoff", "{status:#}");
    assert_eq!(status["workers"][1]["generation"], 2, "{status:#}");

    let status = corral
        .wait_status(|s| s["workers"][0]["state"] == "ready")
        .await;
    assert_eq!(status["workers"][0]["generation"], 2, "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fresh_connection_waits_on_a_crash_looping_slot() {
    let app = echo("app").await;
    let (_logs, dir, config) = crash_prone(app.addr);
    let corral = Corral::start(&config).await;
    corral.wait_status(all_ready).await;
    std::fs::remove_dir_all(&dir).unwrap();
    kill(corral.worker_pids().await[0], Signal::SIGKILL);
    corral
        .wait_for_log("worker keeps exiting; backing off slot=0")
        .await;

    // The kernel still gives slot 0's socket its share of the port's new
    // connections (about half): each must be served, through slot 1's
    // worker, across backoffs and failing starts alike.
    let public = corral.addr("public");
    all_served_fresh(public, 4, 12).await;
    let status = corral.status().await;
    assert_ne!(status["workers"][0]["state"], "ready", "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_worker_count_resets_no_connection_queued_on_a_retired_slot() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    let public = corral.addr("public");
    let retired = listener_held_by(workers[1], public);
    // Stopped, slot 1's worker accepts nothing: what the kernel gives its
    // socket stays queued there.
    kill(workers[1], Signal::SIGSTOP);
    wait_stopped(workers[1]).await;
    const CLIENTS: usize = 24;
    let answered = Arc::new(Mutex::new(0usize));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let ending = fresh_get(public, PATIENCE).await;
                *answered.lock().unwrap() += 1;
                ending
            })
        })
        .collect();
    until("every client answered or queued on slot 1", async || {
        *answered.lock().unwrap() + queued_on(retired) >= CLIENTS
    })
    .await;
    let queued = queued_on(retired);
    assert!(
        queued > 0,
        "nothing queued on slot 1; the test proves nothing"
    );

    corral.write_config(&config.replace("workers = 2", "workers = 1"));
    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for client in clients {
        let ending = tokio::time::timeout(SERVED, client).await;
        assert!(
            matches!(ending, Ok(Ok(Ending::Answered(200)))),
            "a connection queued on the retired slot: {ending:?}"
        );
    }
    eprintln!("{queued} connections were queued on the retired slot");
    // Only now may it drain; its socket then closes.
    kill(workers[1], Signal::SIGCONT);
    corral.wait_for_log("worker slot stopped slot=1").await;
    until("the retired socket to close", async || {
        !listening_inodes(public).contains(&retired)
    })
    .await;
    assert_eq!(fresh_get(public, SERVED).await, Ending::Answered(200));
}

#[tokio::test]
async fn a_pending_reload_keeps_no_socket_of_a_slot_a_later_reload_retires() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "").replace("workers = 2", "workers = 3");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    let public = corral.addr("public");
    let retired = listener_held_by(workers[2], public);
    // Stopped, slot 0's worker confirms nothing: reload A stays pending.
    kill(workers[0], Signal::SIGSTOP);
    wait_stopped(workers[0]).await;
    corral.write_config(&format!("{config}\n# generation 2\n"));
    let admin = corral.admin.unwrap();
    let reload = |admin| {
        tokio::spawn(corral::admin::client::call(
            admin,
            Method::POST,
            "/reload",
            None,
        ))
    };
    let a = reload(admin);
    corral
        .wait_status(|s| s["workers"][1]["generation"] == 2)
        .await;
    // Reload B retires slot 2 meanwhile.
    corral.write_config(&config.replace("workers = 3", "workers = 2"));
    let b = reload(admin);
    corral.wait_for_log("worker slot stopped slot=2").await;
    let closed = tokio::time::timeout(
        ANSWERED,
        until("slot 2's socket to close", async || {
            !listening_inodes(public).contains(&retired)
        }),
    );
    assert!(
        closed.await.is_ok(),
        "slot 2's socket still listens, with nobody accepting on it"
    );
    assert!(!a.is_finished(), "reload A was no longer pending");

    kill(workers[0], Signal::SIGCONT);
    for (name, reload) in [("A", a), ("B", b)] {
        let (code, body) = patiently("the reloads", reload).await.unwrap().unwrap();
        assert_eq!(code, StatusCode::OK, "reload {name}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_number_given_back_while_its_retired_worker_drains_keeps_both_slots_whole() {
    let app = echo("app").await;
    // The retired workers, stopped, cannot drain: they are killed once
    // the shutdown timeout (and a second) has passed.
    let config = cluster_config(&[app.addr], "")
        .replace("workers = 2", "workers = 4")
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"4s\"");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    let public = corral.addr("public");
    for pid in &workers[2..] {
        kill(*pid, Signal::SIGSTOP);
        wait_stopped(*pid).await;
    }
    corral.write_config(&config.replace("workers = 4", "workers = 2"));
    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    corral.write_config(&config);
    let admin = corral.admin.unwrap();
    let grown = tokio::spawn(corral::admin::client::call(
        admin,
        Method::POST,
        "/reload",
        None,
    ));
    corral.wait_status(|s| s["generation"] == 3).await;

    // While the retired workers still hold their sockets, every fresh
    // connection is served, whichever socket the kernel gives it to.
    all_served_fresh(public, 4, 8).await;
    let (code, body) = patiently("the reload to 4 workers", grown)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");

    // The old supervisors' last words leave the new slots' rows alone.
    corral.wait_for_log("worker slot stopped slot=2").await;
    corral.wait_for_log("worker slot stopped slot=3").await;
    let status = corral.status().await;
    assert!(all_ready(&status), "{status:#}");
    for slot in 2..4 {
        let pid = status["workers"][slot]["pid"].as_u64();
        assert!(pid.is_some() && pid != Some(workers[slot]), "{status:#}");
    }
    let (code, body) = admin_soon(&corral, Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(fresh_get(public, SERVED).await, Ending::Answered(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_slots_socket_gets_no_new_connection_while_it_is_emptied() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    let public = corral.addr("public");
    // Stopped, slot 1's retired worker keeps its socket open.
    kill(workers[1], Signal::SIGSTOP);
    wait_stopped(workers[1]).await;
    corral.write_config(&config.replace("workers = 2", "workers = 1"));
    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // With the master stopped too, nobody accepts on the retired socket:
    // a connection the kernel gave it would wait.
    let master = u64::from(corral.pid());
    kill(master, Signal::SIGSTOP);
    wait_stopped(master).await;
    let mut endings = Vec::new();
    for _ in 0..24 {
        endings.push(fresh_get(public, SERVED).await);
    }
    kill(master, Signal::SIGCONT);
    kill(workers[1], Signal::SIGCONT);
    assert!(
        endings.iter().all(|e| *e == Ending::Answered(200)),
        "{endings:?}"
    );
    corral.wait_for_log("worker slot stopped slot=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrinking_the_cluster_under_fresh_connections_resets_none() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "").replace("workers = 2", "workers = 4");
    let corral = Corral::start(&config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    let public = corral.addr("public");
    let retired: Vec<u64> = workers[1..]
        .iter()
        .map(|pid| listener_held_by(*pid, public))
        .collect();
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut endings = Vec::new();
                while !stop.is_cancelled() {
                    endings.push(fresh_get(public, SERVED).await);
                }
                endings
            })
        })
        .collect();
    corral.write_config(&config.replace("workers = 4", "workers = 1"));
    let (code, body) = admin_soon(&corral, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for slot in 1..4 {
        corral
            .wait_for_log(&format!("worker slot stopped slot={slot}"))
            .await;
    }
    stop.cancel();
    let mut endings = Vec::new();
    for client in clients {
        endings.extend(client.await.unwrap());
    }
    let failed: Vec<&Ending> = endings
        .iter()
        .filter(|e| **e != Ending::Answered(200))
        .collect();
    eprintln!(
        "{} requests, {} not answered 200",
        endings.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let listening = listening_inodes(public);
    assert!(retired.iter().all(|i| !listening.contains(i)));
}

/// corral's echo server on a port it can be stopped and started again on.
struct Restartable {
    name: &'static str,
    addr: SocketAddr,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl Restartable {
    async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::serve(name, addr, listener)
    }

    fn serve(name: &'static str, addr: SocketAddr, listener: tokio::net::TcpListener) -> Self {
        let stop = CancellationToken::new();
        let serving = tokio::spawn(corral::echo::serve(listener, name.to_owned(), stop.clone()));
        Self {
            name,
            addr,
            stop,
            serving,
        }
    }

    /// Stops it, leaves the port closed for `down`, and starts it again.
    async fn restart(self, down: Duration) -> Self {
        self.stop.cancel();
        // Once the accept loop has ended, its socket is closed.
        self.serving.await.unwrap();
        tokio::time::sleep(down).await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        Self::serve(self.name, self.addr, listener)
    }
}

/// The faults [`inject`] caused.
#[derive(Debug, Default)]
struct Faults {
    kills: usize,
    /// How long each reload took to answer.
    reloads: Vec<Duration>,
    restarts: usize,
}

/// What a reload may take in the compound run, a worker's restart included.
const RELOADED: Duration = Duration::from_secs(5);

/// For `run`: a worker SIGKILLed every 1.5 s (only while every slot
/// serves, so that one always does), a reload every 0.7 s (each must
/// succeed within [`RELOADED`]) and one of `upstreams` restarted every 4 s.
async fn inject(
    corral: &Corral,
    config: &str,
    upstreams: &mut Vec<Restartable>,
    run: Duration,
) -> Faults {
    let started = tokio::time::Instant::now();
    let (mut next_kill, mut next_reload, mut next_restart) = (
        started + Duration::from_millis(1500),
        started + Duration::from_millis(700),
        started + Duration::from_secs(4),
    );
    let mut faults = Faults::default();
    while started.elapsed() < run {
        // Pacing the faults, not waiting for anything.
        tokio::time::sleep_until(next_kill.min(next_reload).min(next_restart)).await;
        let now = tokio::time::Instant::now();
        if now >= next_reload {
            next_reload += Duration::from_millis(700);
            let n = faults.reloads.len();
            corral.write_config(&format!("{config}\n# reload {n}\n"));
            let asked = Instant::now();
            let call =
                corral::admin::client::call(corral.admin.unwrap(), Method::POST, "/reload", None);
            let answer = tokio::time::timeout(RELOADED, call).await;
            let took = asked.elapsed();
            let (code, body) = answer
                .unwrap_or_else(|_| panic!("reload {n} took over {RELOADED:?}"))
                .unwrap();
            assert_eq!(code, StatusCode::OK, "reload {n}: {body}");
            faults.reloads.push(took);
        }
        if now >= next_kill {
            next_kill += Duration::from_millis(1500);
            let status = corral.status().await;
            if all_ready(&status) {
                let workers = pids_of(&status);
                kill(workers[fastrand::usize(..workers.len())], Signal::SIGKILL);
                faults.kills += 1;
            }
        }
        if now >= next_restart {
            next_restart += Duration::from_secs(4);
            let i = faults.restarts % upstreams.len();
            let upstream = upstreams.remove(i);
            upstreams.insert(i, upstream.restart(Duration::from_millis(200)).await);
            faults.restarts += 1;
        }
    }
    faults
}

/// Issue 15's compound faults ([`inject`]), shortened, under load from
/// clients opening a connection per request. A kill may cost each client
/// the one connection it has open; nothing may stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_reloads_and_upstream_restarts_under_load_fail_no_reload_and_stall_no_client() {
    const CLIENTS: usize = 4;
    let mut upstreams = vec![
        Restartable::start("a").await,
        Restartable::start("b").await,
        Restartable::start("c").await,
    ];
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let config = cluster_config(&addrs, "");
    let corral = Corral::start(&config).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut endings = Vec::new();
                while !stop.is_cancelled() {
                    endings.push(fresh_get(public, SERVED).await);
                }
                endings
            })
        })
        .collect();
    let faults = inject(&corral, &config, &mut upstreams, Duration::from_secs(9)).await;
    stop.cancel();
    let mut endings = Vec::new();
    for client in clients {
        endings.extend(client.await.unwrap());
    }

    let count = |wanted: fn(&Ending) -> bool| endings.iter().filter(|e| wanted(e)).count();
    let ok = count(|e| *e == Ending::Answered(200));
    let bad_gateway = count(|e| *e == Ending::Answered(502));
    let failed: Vec<&Ending> = endings
        .iter()
        .filter(|e| matches!(e, Ending::Failed(_)))
        .collect();
    eprintln!(
        "{} requests: {ok} answered 200, {bad_gateway} 502, {} failed {failed:?}; {faults:?}",
        endings.len(),
        failed.len()
    );
    assert_eq!(count(|e| *e == Ending::Stalled), 0, "a client stalled");
    assert!(
        faults.kills >= 2 && faults.reloads.len() >= 10,
        "too few faults to tell"
    );
    assert!(
        failed.len() <= CLIENTS * faults.kills,
        "more failures than the kills account for"
    );
    for f in &failed {
        assert!(
            !matches!(f, Ending::Failed(e) if e.starts_with("connect")),
            "a connection was refused: {f:?}"
        );
    }
    assert_eq!(
        ok + bad_gateway + failed.len(),
        endings.len(),
        "{endings:?}"
    );
    assert!(ok > endings.len() / 2, "mostly served");
}
