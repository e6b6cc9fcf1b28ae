//! The open-files limit: workers run with the highest the master may give
//! them, and one that reaches it anyway loses a relayed client, never its
//! control channel. Each test changes a process's limit (its own, or a
//! child's through a wrapper script), so they run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use corral::ipc::{self, ToWorker};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;

/// Held by each test: they change open-files limits and spawn processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A script that runs corral under `ulimit ARGS`.
fn corral_under_ulimit(dir: &Path, args: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("corral-limited");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nulimit {args} || exit 97\nexec '{BIN}' \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// (soft, hard) open-files limits of process `pid`.
fn open_files_limit(pid: u64) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Connections to `addr` that corral has not closed yet, queued ones among
/// them (`/proc/net/tcp`: neither listening, 0A, nor in TIME_WAIT, 06).
fn connections_on(addr: std::net::SocketAddr) -> usize {
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    let local = format!("0100007F:{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&local.as_str()) && !["0A", "06"].contains(&f[3]))
        .count()
}

/// Starts corral on `config` through `exe`.
async fn start_through(exe: &Path, config: &str) -> Corral {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, config).unwrap();
    Corral::start_exe(exe, dir, path).await
}

#[tokio::test]
async fn workers_run_with_the_open_files_limit_raised_to_the_hard_limit() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard > 256,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    let scripts = tempfile::tempdir().unwrap();
    let exe = corral_under_ulimit(scripts.path(), "-S -n 256");
    let app = echo("app").await;
    let corral = start_through(&exe, &cluster_config(&[app.addr], "")).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    assert_eq!(open_files_limit(u64::from(corral.pid())), (hard, hard));
    for pid in workers {
        assert_eq!(open_files_limit(pid), (hard, hard), "worker {pid}");
    }
}

/// The lowest descriptor number free now: with the soft limit there, the
/// process can open nothing more.
fn lowest_free_descriptor() -> u64 {
    let probe = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    probe.as_raw_fd() as u64
}

#[tokio::test]
async fn a_descriptor_the_kernel_could_not_install_is_missing_from_its_message_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (a, b) = ipc::pair().unwrap();
    let (mut tx, _) = ipc::channel(a).unwrap();
    let (_, mut rx) = ipc::channel(b).unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relayed = |listener: &str| ToWorker::Connection {
        listener: listener.to_owned(),
    };
    tx.send_with_fds(&relayed("first"), &[socket.as_fd()])
        .await
        .unwrap();
    tx.send(&ToWorker::Ping { seq: 1 }).await.unwrap();
    tx.send_with_fds(&relayed("second"), &[socket.as_fd()])
        .await
        .unwrap();

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free_descriptor(), hard).unwrap();
    let first = rx.recv::<ToWorker>().await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let first = first.unwrap().unwrap();
    assert!(matches!(&first.message, ToWorker::Connection { listener } if listener == "first"));
    assert_eq!((first.fds.len(), first.missing), (0, 1));
    // The channel is in step: what follows arrives whole.
    let ping = rx.recv::<ToWorker>().await.unwrap().unwrap();
    assert!(matches!(ping.message, ToWorker::Ping { seq: 1 }));
    let second = rx.recv::<ToWorker>().await.unwrap().unwrap();
    assert!(matches!(&second.message, ToWorker::Connection { listener } if listener == "second"));
    assert_eq!((second.fds.len(), second.missing), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_at_its_open_files_limit_loses_a_relayed_client_not_its_channel() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scripts = tempfile::tempdir().unwrap();
    let exe = corral_under_ulimit(scripts.path(), "-n 128");
    let app = echo("app").await;
    // Workers that start once its folder is gone cannot open the access
    // log, and exit at once: slot 0 crash-loops, and what queues on its
    // socket is relayed to slot 1's worker.
    let (_logs, folder, config) = crash_prone(app.addr);
    let corral = start_through(&exe, &config).await;
    let workers = pids_of(&corral.wait_status(all_ready).await);
    std::fs::remove_dir_all(&folder).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    corral
        .wait_for_log("worker keeps exiting; backing off slot=0")
        .await;

    // Idle clients use up slot 1's worker's descriptors, until one relayed
    // to it comes without its own.
    let public = corral.addr("public");
    let lost = "relayed connection came without its socket";
    let mut idle = Vec::new();
    while corral.logged(lost).is_empty() {
        assert!(idle.len() < 1000, "no relayed connection was lost");
        idle.push(tokio::net::TcpStream::connect(public).await.unwrap());
        tokio::task::yield_now().await;
    }
    assert!(corral.logged("draining").is_empty(), "a worker drained");
    // Once the worker has accepted and closed what the idle clients left,
    // it takes relayed connections again.
    drop(idle);
    until(
        "the idle connections to be closed on corral's side",
        async || connections_on(public) == 0,
    )
    .await;
    let served = tokio::time::timeout(Duration::from_secs(5), get(public, "/", &[])).await;
    assert_eq!(served.expect("not served").status, 200);
    let status = corral.status().await;
    assert_eq!(
        status["workers"][1]["pid"].as_u64(),
        Some(workers[1]),
        "{status:#}"
    );
    assert_eq!(status["workers"][1]["state"], "ready", "{status:#}");
}
