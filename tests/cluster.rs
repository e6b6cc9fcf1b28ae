//! The master and its workers, under load: shared sockets, supervision,
//! crash-loop backoff, binary upgrade, and stopping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
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

/// Socket inodes a process holds.
fn socket_inodes(pid: u64) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
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

    let listening = listening_inodes(corral.addr("public").port());
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
    let load = Load::start(corral.addr("public"), 16, 4);
    load.wait_successes(500).await;

    let victim = corral.worker_pids().await[0];
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL);
    let status = corral
        .wait_status(|s| {
            all_ready(s) && s["workers"][0]["pid"].as_u64().is_some_and(|p| p != victim)
        })
        .await;
    let replaced_in = killed_at.elapsed();
    assert!(
        replaced_in < Duration::from_secs(1),
        "replaced after {replaced_in:?}"
    );
    assert_eq!(status["workers"][0]["restarts"], 1);
    assert_eq!(status["workers"][0]["last_exit"], "killed by SIGKILL");

    load.wait_successes(2000).await;
    let failures = load
        .finish(&format!("with a worker replaced in {replaced_in:?}"))
        .await;
    // At most the requests in flight on the killed worker's connections.
    assert!(
        failures.len() <= 20,
        "{} failures: {failures:?}",
        failures.len()
    );
    for f in &failures {
        assert!(
            f.at.duration_since(killed_at) < Duration::from_secs(1),
            "late failure: {f:?}"
        );
        assert!(
            !f.error.starts_with("connect"),
            "a fresh connection was refused: {f:?}"
        );
    }
}

#[tokio::test]
async fn a_hung_worker_is_detected_by_heartbeat_and_replaced() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    corral.wait_status(all_ready).await;
    let victim = corral.worker_pids().await[1];
    kill(victim, Signal::SIGSTOP);
    let status = corral
        .wait_status(|s| {
            all_ready(s) && s["workers"][1]["pid"].as_u64().is_some_and(|p| p != victim)
        })
        .await;
    assert_eq!(status["workers"][1]["last_exit"], "killed by SIGKILL");
    corral.wait_for_log("stopped answering heartbeats").await;
    assert!(!alive(victim));
}

#[tokio::test]
async fn a_crash_looping_slot_backs_off_and_says_so() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "listen = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert_path.display(),
        key_path.display()
    );
    let corral = Corral::start(
        &cluster_config(&[app.addr], "")
            .replacen("listen = \"127.0.0.1:0\"", &tls, 2)
            .replacen(&tls, "listen = \"127.0.0.1:0\"", 1),
    )
    .await;
    corral.wait_status(all_ready).await;
    // New workers can no longer load the certificate; the running ones are unaffected.
    std::fs::remove_file(&key_path).unwrap();
    kill(corral.worker_pids().await[0], Signal::SIGKILL);
    let status = corral
        .wait_status(|s| s["workers"][0]["crash_loop"].as_u64() >= Some(3))
        .await;
    assert_eq!(status["workers"][0]["state"], "backoff");
    assert!(status["workers"][0]["next_start_in_ms"].as_u64().unwrap() >= 500);
    corral
        .wait_for_log("worker keeps exiting; backing off")
        .await;
    corral.wait_for_log("cannot read private key").await;
    let (code, _) = admin_call(corral.admin.unwrap(), http::Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    // The other slot still serves.
    assert_eq!(status["workers"][1]["state"], "ready");
    assert!(alive(status["workers"][1]["pid"].as_u64().unwrap()));
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
    corral.wait_for_log("the new master is serving").await;
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

#[tokio::test]
async fn workers_leave_when_the_master_is_killed() {
    let app = echo("app").await;
    let corral = Corral::start(
        &cluster_config(&[app.addr], "")
            .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"1s\""),
    )
    .await;
    let workers = corral.worker_pids().await;
    corral.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    for w in &workers {
        wait_gone(*w).await;
    }
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
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
    let in_flight =
        tokio::spawn(async move { read(client.send_request(request).await.unwrap()).await });
    started_rx.await.unwrap();
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
    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    started_rx.await.unwrap();
    corral.signal(Signal::SIGTERM);
    corral.wait_for_log("SIGTERM: stopping gracefully").await;
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
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "port still open after exit"
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
    let app = echo("app").await;
    let mut corral = Corral::start(
        &cluster_config(&[app.addr], "")
            .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"60s\""),
    )
    .await;
    let workers = corral.worker_pids().await;
    // A keep-alive connection that would hold a graceful stop for a while.
    let mut idle = H1::connect(corral.addr("public")).await;
    assert_eq!(idle.get("/", &[]).await.status, StatusCode::OK);
    let started = Instant::now();
    corral.signal(Signal::SIGQUIT);
    assert_eq!(corral.wait_exit().await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    for w in &workers {
        assert!(!alive(*w), "worker {w} survived a fast stop");
    }
}
