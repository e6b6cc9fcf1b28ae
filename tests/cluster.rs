//! The master and its workers, under load: shared sockets, supervision,
//! crash-loop backoff, binary upgrade, and stopping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use nix::sys::signal::Signal;

fn kill(pid: u64, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

fn alive(pid: u64) -> bool {
    // Zombies count as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Waits until process `pid` (any process, not only a child) has exited:
/// its pidfd turns readable then.
async fn wait_gone(pid: u64) {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let target = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let pidfd = match pidfd_open(target, PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Exited and already reaped.
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => panic!("pidfd_open({pid}): {e}"),
    };
    let patience = PATIENCE.try_into().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        poll(&mut [PollFd::new(&pidfd, PollFlags::IN)], Some(&patience))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ready, 1, "process {pid} is still running");
}

/// Waits until process `pid` is stopped (SIGSTOP has taken effect). Nothing
/// announces that to a process other than the parent, so this looks at
/// `/proc` until it shows.
async fn wait_stopped(pid: u64) {
    patiently(&format!("process {pid} to stop"), async {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let state = stat.rsplit_once(") ").unwrap().1.chars().next();
            if state == Some('T') {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// The client ports of the connections that process `pid` holds on local
/// port `port`: the connections it accepted on that listener.
fn clients_held_by(pid: u64, port: u16) -> HashSet<u16> {
    let inodes = socket_inodes(pid);
    tcp_sockets()
        .into_iter()
        // A listening one is the slot's socket itself, not a connection.
        .filter(|s| s.local.port() == port && !s.listening && inodes.contains(&s.inode))
        .map(|s| s.remote.port())
        .collect()
}

#[tokio::test]
async fn workers_share_per_slot_reuseport_sockets_held_by_the_master() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let status = corral.wait_status(all_ready).await;
    let workers = pids_of(&status);
    assert_eq!(workers.len(), 2);
    assert_eq!(status["pid"].as_u64(), Some(u64::from(corral.pid())));
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", corral.pid())).unwrap();
    let children: HashSet<u64> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children, workers.iter().copied().collect());

    let listening = listening_inodes(corral.addr("public"));
    assert_eq!(listening.len(), 2, "one listening socket per slot");
    let master: HashSet<u64> = socket_inodes(u64::from(corral.pid()))
        .intersection(&listening)
        .copied()
        .collect();
    assert_eq!(master, listening, "the master holds every slot's socket");
    let held: Vec<HashSet<u64>> = workers
        .iter()
        .map(|&w| socket_inodes(w).intersection(&listening).copied().collect())
        .collect();
    assert!(
        held.iter().all(|h| h.len() == 1) && held[0] != held[1],
        "each worker holds its own slot's socket: {held:?}"
    );

    let (code, body) = admin_call(corral.admin.unwrap(), http::Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_killed_worker_is_replaced_at_once_and_costs_only_its_own_connections() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    let load = Load::start(public, 16, 4);
    load.wait_successes(500).await;

    let victim = corral.worker_pids().await[0];
    // Stopped, the victim accepts nothing more, so the connections it holds
    // now are all it will ever have: those (and only those) may fail.
    kill(victim, Signal::SIGSTOP);
    wait_stopped(victim).await;
    let stopped_at = Instant::now();
    let victims = clients_held_by(victim, public.port());
    assert!(
        !victims.is_empty(),
        "the victim held none of the load's connections; the test proves nothing"
    );
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL);
    let status = corral
        .wait_status(|s| {
            all_ready(s) && s["workers"][0]["pid"].as_u64().is_some_and(|p| p != victim)
        })
        .await;
    let replaced_in = killed_at.elapsed();
    // At once: the master took the no-backoff path (a crash loop's first
    // backoff would say "backing off").
    let exit = corral
        .wait_for_log("worker exited; replacing it slot=0")
        .await;
    assert!(exit.contains("how=\"killed by SIGKILL\""), "{exit}");
    // Only a guard: a replacement is one exec and start, which a loaded
    // machine may delay well beyond the milliseconds it takes.
    assert!(
        replaced_in < Duration::from_secs(5),
        "replaced after {replaced_in:?}"
    );
    assert_eq!(status["workers"][0]["restarts"], 1);
    assert_eq!(status["workers"][0]["last_exit"], "killed by SIGKILL");

    load.wait_successes(2000).await;
    let failures = load
        .finish(&format!(
            "with a worker holding {} of them replaced in {replaced_in:?}",
            victims.len()
        ))
        .await;
    for f in &failures {
        assert!(
            !f.error.starts_with("connect"),
            "a fresh connection was refused: {f:?}"
        );
        // A client port names a connection only among those open at once;
        // one opened after the stop may reuse a victim's port.
        let on_victim = f.local.is_some_and(|l| victims.contains(&l.port()))
            && f.opened_at.is_some_and(|t| t < stopped_at);
        assert!(
            on_victim,
            "a connection the killed worker did not hold failed: {f:?}"
        );
    }
    // Each of its connections costs at most the request on it; the client
    // reconnects after.
    let failed: HashSet<_> = failures.iter().filter_map(|f| f.local).collect();
    assert_eq!(failed.len(), failures.len(), "{failures:?}");
}

#[tokio::test]
async fn a_hung_worker_is_detected_by_heartbeat_and_replaced() {
    let app = echo("app").await;
    // Short, unlike the other tests' generous timeout: this is the one test of it.
    let config =
        cluster_config(&[app.addr], "").replace(GENEROUS_HEARTBEAT, "heartbeat_timeout = \"1s\"");
    let corral = Corral::start(&config).await;
    corral.wait_status(all_ready).await;
    let victim = corral.worker_pids().await[1];
    kill(victim, Signal::SIGSTOP);
    let status = corral
        .wait_status(|s| {
            all_ready(s) && s["workers"][1]["pid"].as_u64().is_some_and(|p| p != victim)
        })
        .await;
    assert_eq!(status["workers"][1]["last_exit"], "killed by SIGKILL");
    corral
        .wait_for_log(&format!(
            "stopped answering heartbeats; killing it slot=1 pid={victim} timeout=1s"
        ))
        .await;
    assert!(!alive(victim));
}

/// The delay the README promises before restarting a slot after its `n`th
/// quick exit in a row: none for the first, then 250 ms doubling.
fn promised_backoff(n: u32) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(250) * 2u32.pow(n - 2),
    }
}

/// Measures the backoff from the master's own log timestamps (the moment it
/// saw each exit), and the reset after a worker that lived 10 s. That
/// reset costs 10 s of wall time, which is what the promise is about.
#[tokio::test]
async fn a_crash_looping_slot_backs_off_and_says_so() {
    let app = echo("app").await;
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().join("logs");
    std::fs::create_dir(&log_dir).unwrap();
    let access_log = format!(
        "[access_log]\npath = \"{}\"\n",
        log_dir.join("access.log").display()
    );
    let corral = Corral::start(&cluster_config(&[app.addr], &access_log)).await;
    corral.wait_status(all_ready).await;
    // New workers can no longer open the access log (each opens it itself);
    // the running ones keep the file they have.
    std::fs::remove_dir_all(&log_dir).unwrap();
    kill(corral.worker_pids().await[0], Signal::SIGKILL);
    // The first quick exit restarts at once; from the second on, the slot
    // waits. Each gap between the exits seen after the 2nd, 3rd, 4th and
    // 5th is that backoff plus one failing start.
    let exits = corral
        .wait_for_logs("worker keeps exiting; backing off slot=0", 4)
        .await;
    for (i, pair) in exits.windows(2).enumerate() {
        let n = u32::try_from(i).unwrap() + 2;
        assert_eq!(
            log_field(&pair[0], "crash_loop"),
            Some(n.to_string()),
            "{pair:?}"
        );
        let gap = log_time(&pair[1])
            .duration_since(log_time(&pair[0]))
            .unwrap();
        let backoff = promised_backoff(n);
        // Never shorter than the backoff. The 500 ms above it are for the
        // failing start between the two exits (tens of milliseconds, more
        // on a loaded machine), and still tell doubling from a fixed delay,
        // a faster growth, or a backoff half again as long.
        assert!(
            gap >= backoff && gap <= backoff + Duration::from_millis(500),
            "after quick exit {n}: {gap:?}, promised {backoff:?}"
        );
    }

    // A worker that lives 10 s was not crash-looping: its exit is replaced
    // at once, and the count starts over.
    std::fs::create_dir(&log_dir).unwrap();
    let status = corral
        .wait_status(|s| s["workers"][0]["state"] == "ready")
        .await;
    let stable = status["workers"][0]["pid"].as_u64().unwrap();
    let at_once = "worker exited; replacing it slot=0";
    let before = corral.wait_for_logs(at_once, 1).await.len();
    // Not a synchronisation: living this long is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    kill(stable, Signal::SIGKILL);
    let replaced = corral.wait_for_logs(at_once, before + 1).await;
    assert!(
        replaced[before].contains("how=\"killed by SIGKILL\""),
        "{}",
        replaced[before]
    );
    let status = corral
        .wait_status(|s| {
            s["workers"][0]["state"] == "ready" && s["workers"][0]["pid"].as_u64() != Some(stable)
        })
        .await;
    assert_eq!(status["workers"][0]["crash_loop"], 0, "{status:#}");
}

#[tokio::test]
async fn a_binary_upgrade_under_load_loses_nothing() {
    let app = echo("app").await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let old_workers = pids_of(&corral.wait_status(all_ready).await);
    let load = Load::start(corral.addr("public"), 16, 4);
    load.wait_successes(500).await;

    corral.signal(Signal::SIGUSR2);
    let old_pid = u64::from(corral.pid());
    corral.wait_successor_ready().await;
    assert_eq!(
        corral.wait_exit().await,
        Some(0),
        "the old master exits cleanly"
    );
    for w in &old_workers {
        assert!(!alive(*w), "old worker {w} still running");
    }
    // Only the new master holds the admin socket now.
    let after = corral.status().await;
    let new_master = after["pid"].as_u64().unwrap();
    assert_ne!(new_master, old_pid);
    assert!(all_ready(&after), "{after:#}");
    assert!(alive(new_master));
    load.wait_successes(2000).await;
    let failures = load.finish("across the upgrade").await;
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_master_serving() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    corral.wait_status(all_ready).await;
    std::fs::write(&corral.config_path, "this is not [valid toml").unwrap();
    corral.signal(Signal::SIGUSR2);
    corral
        .wait_for_log("binary upgrade failed; this master keeps serving")
        .await;
    let status = corral.status().await;
    assert_eq!(status["pid"].as_u64(), Some(u64::from(corral.pid())));
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
}

/// `GET /held` to `addr`, for a test whose upstream never answers it.
async fn send_held(
    addr: SocketAddr,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    let request = http::Request::get("/held")
        .header("host", "x")
        .body(empty())
        .unwrap();
    H1::connect(addr).await.send(request).await
}

#[tokio::test]
async fn workers_leave_when_the_master_is_killed() {
    let (app, arrived, _release) = holding().await;
    let corral = Corral::start(
        &cluster_config(&[app.addr], "")
            .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"1s\""),
    )
    .await;
    let workers = corral.worker_pids().await;
    // A request the upstream never answers: its worker leaves only by
    // draining for shutdown_timeout and then cutting it.
    let addr = corral.addr("public");
    let _held = tokio::spawn(send_held(addr));
    patiently("the held request to arrive", arrived)
        .await
        .unwrap();
    // Read before the kill: a test descheduled between the two would
    // otherwise see the drain as shorter than it was.
    let killed_at = Instant::now();
    corral.signal(Signal::SIGKILL);
    for w in &workers {
        wait_gone(*w).await;
    }
    let took = killed_at.elapsed();
    corral
        .wait_for_log("drain timeout passed; closed remaining connections open=1")
        .await;
    assert!(
        took >= Duration::from_secs(1),
        "a worker cut its request before shutdown_timeout: {took:?}"
    );
    // Generous for a loaded machine; without the cut the held request would
    // keep its worker as long as the upstream holds it: forever.
    assert!(
        took < Duration::from_secs(10),
        "workers outlived the master by {took:?}"
    );
}

/// HTTP/2 streams run inside their connection's task; a graceful stop
/// still lets one in flight finish.
#[tokio::test]
async fn sigterm_finishes_an_http2_stream_in_flight() {
    let (app, started_rx, finish_tx) = holding().await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let workers = corral.worker_pids().await.len();
    let mut client = h2c(corral.addr("public")).await;
    let request = http::Request::get("http://h2.example.com/slow")
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = patiently("the response", client.send_request(request)).await;
        read(response.unwrap()).await
    });
    patiently("the request to arrive", started_rx)
        .await
        .unwrap();
    corral.signal(Signal::SIGTERM);
    // Every worker, so the stream's own worker is draining too.
    corral
        .wait_for_logs("draining on the master's request", workers)
        .await;
    finish_tx.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.version, reply.status, reply.text().as_str()),
        (http::Version::HTTP_2, StatusCode::OK, "done")
    );
    assert_eq!(corral.wait_exit().await, Some(0));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_everything_exits() {
    let (app, started_rx, finish_tx) = holding().await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let workers = corral.worker_pids().await;
    let addr = corral.addr("public");
    let sockets = listening_inodes(addr);
    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    patiently("the request to arrive", started_rx)
        .await
        .unwrap();
    corral.signal(Signal::SIGTERM);
    corral
        .wait_for_notice("STOPPING=1", Notice::is_stopping)
        .await;
    // Nothing accepts new connections any more, on any worker.
    corral
        .wait_for_logs("draining on the master's request", workers.len())
        .await;
    finish_tx.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "done")
    );
    // The client learns that this connection takes no more requests.
    assert_eq!(reply.headers["connection"], "close");
    assert_eq!(corral.wait_exit().await, Some(0));
    for w in &workers {
        assert!(!alive(*w), "worker {w} outlived the master");
    }
    // Its listening sockets are gone (not merely refusing: a connect could
    // reach another test's listener that took the port since).
    assert!(
        listening_inodes(addr).is_disjoint(&sockets),
        "a listening socket outlived corral"
    );
}

#[tokio::test]
async fn health_checks_run_in_the_master_and_steer_every_worker() {
    use std::sync::atomic::Ordering;
    let (a, sick) = sickly().await;
    let b = echo("b").await;
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 1";
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr], check)).await;
    sick.store(true, Ordering::SeqCst);
    corral
        .wait_status(|s| s["upstreams"][0]["servers"][0]["state"] == "unhealthy")
        .await;
    corral.wait_for_log("server is unhealthy").await;
    // Fresh connections land on both workers; none reaches the sick server.
    for _ in 0..20 {
        assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
    }
}

#[tokio::test]
async fn cpu_affinity_pins_each_worker_to_its_own_cpu() {
    let app = echo("app").await;
    let corral = Corral::start(
        &cluster_config(&[app.addr], "").replace("workers = 2", "workers = 2\ncpu_affinity = true"),
    )
    .await;
    let mut cpus = Vec::new();
    for pid in corral.worker_pids().await {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        assert!(
            allowed.parse::<usize>().is_ok(),
            "worker {pid} may run on {allowed}"
        );
        cpus.push(allowed);
    }
    let available = std::thread::available_parallelism().unwrap().get();
    if available > 1 {
        assert_ne!(cpus[0], cpus[1]);
    }
}

#[tokio::test]
async fn sigquit_stops_at_once() {
    let (app, arrived, _release) = holding().await;
    let mut corral = Corral::start(
        &cluster_config(&[app.addr], "")
            .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"60s\""),
    )
    .await;
    let workers = corral.worker_pids().await;
    // A request in flight that the upstream never answers: a graceful stop
    // would wait the whole shutdown_timeout for it.
    let addr = corral.addr("public");
    let _held = tokio::spawn(send_held(addr));
    patiently("the held request to arrive", arrived)
        .await
        .unwrap();
    let started = Instant::now();
    corral.signal(Signal::SIGQUIT);
    assert_eq!(corral.wait_exit().await, Some(0));
    // Generous for a loaded machine, and far below the 60 s a graceful stop
    // would take.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    for w in &workers {
        assert!(!alive(*w), "worker {w} survived a fast stop");
    }
}
