//! corral as processes: the two ways a worker learns that its master is
//! gone (the control channel closing, and the kernel's SIGTERM as a
//! backstop), the admin socket that keeps a second corral from starting on
//! the same config, and the command line's exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;
use std::process::Stdio;

use common::*;
use http::StatusCode;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;

/// A worker started the way the master starts it (`corral worker`, the
/// control channel as stdin, a `Start` message), but by a shell standing in
/// for the master, while the test keeps the master's end of the channel: so
/// the test can end the stand-in master and the channel separately.
struct StandIn {
    master: tokio::process::Child,
    worker: Pid,
    tx: corral::ipc::Sender,
    rx: corral::ipc::Receiver,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _app: Upstream,
}

impl StandIn {
    /// Starts the worker and checks it serves.
    async fn start() -> Self {
        let app = echo("app").await;
        let dir = tempfile::tempdir().unwrap();
        let config = simple_config(&[app.addr], "");
        let socket = corral::master::sockets::bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = socket.local_addr().unwrap();
        let (_region, region_fd) = corral::metrics::shm::Region::create().unwrap();
        let (ours, theirs) = corral::ipc::pair().unwrap();
        let log_path = dir.path().join("worker.log");

        // A background job's stdin is /dev/null unless redirected, hence fd 3.
        let script =
            r#"exec 3<&0; CORRAL_MASTER_PID=$$ "$0" worker <&3 3<&- >/dev/null & echo $!; wait"#;
        let mut master = tokio::process::Command::new("sh")
            .args(["-c", script, BIN])
            .env(corral::worker::process::ENV_SLOT, "0")
            .env("CORRAL_LOG", "info")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut pid_line = String::new();
        tokio::io::BufReader::new(master.stdout.take().unwrap())
            .read_line(&mut pid_line)
            .await
            .unwrap();
        let worker = Pid::from_raw(pid_line.trim().parse().unwrap());

        let (mut tx, mut rx) = corral::ipc::channel(ours).unwrap();
        let start = corral::ipc::ToWorker::Start {
            slot: 0,
            generation: 1,
            plan: corral::config::from_str(&dir.path().join("corral.toml"), &config).unwrap(),
            listeners: vec!["public".to_owned()],
            health: Vec::new(),
        };
        tx.send_with_fds(&start, &[region_fd.as_fd(), socket.as_fd()])
            .await
            .unwrap();
        drop((region_fd, socket));
        let ready = patiently(
            "the worker's answer to its start",
            rx.recv::<corral::ipc::ToMaster>(),
        )
        .await
        .unwrap()
        .expect("the worker closed its channel instead of starting");
        assert!(
            matches!(
                ready.message,
                corral::ipc::ToMaster::Ready { generation: 1 }
            ),
            "{:?}",
            ready.message
        );
        let reply = get(addr, "/", &[]).await;
        assert_eq!(
            (reply.status, reply.backend()),
            (StatusCode::OK, "app".into())
        );
        Self {
            master,
            worker,
            tx,
            rx,
            log_path,
            _dir: dir,
            _app: app,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap()
    }
}

/// Only the kernel's SIGTERM (`PR_SET_PDEATHSIG`) can tell this worker that
/// its stand-in master was SIGKILLed: the channel stays open.
#[tokio::test]
async fn a_killed_masters_worker_drains_on_the_kernels_sigterm_with_its_channel_still_open() {
    let mut w = StandIn::start().await;
    w.master.start_kill().unwrap();
    w.master.wait().await.unwrap();
    // The worker's end closes when it exits; nothing else closes it.
    let exited = within_patience(async {
        while let Some(message) = w.rx.recv::<corral::ipc::ToMaster>().await.unwrap() {
            eprintln!("worker said {:?}", message.message);
        }
    })
    .await;
    if exited.is_none() {
        let _ = kill(w.worker, Signal::SIGKILL);
        panic!("the worker outlived its killed master: no SIGTERM from the kernel");
    }
    let log = w.log();
    // It drained (its SIGTERM handler ran), and not because of the channel.
    assert!(log.contains("worker drained"), "{log}");
    assert!(!log.contains("closed the control channel"), "{log}");
    // Held open to the end, so the channel could not be what stopped it.
    drop(w.tx);
}

/// The master still lives, so no signal comes: only the closed channel can
/// tell the worker to leave.
#[tokio::test]
async fn a_worker_whose_control_channel_closes_drains_and_exits_with_its_master_alive() {
    let StandIn {
        mut master,
        worker,
        tx,
        rx,
        log_path,
        _dir,
        _app,
    } = StandIn::start().await;
    drop((tx, rx));
    // The stand-in's `wait` returns once the worker has exited.
    let ended = within_patience(master.wait()).await;
    if ended.is_none() {
        let _ = kill(worker, Signal::SIGKILL);
        panic!("the worker outlived its closed control channel");
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("closed the control channel"), "{log}");
    assert!(log.contains("worker drained"), "{log}");
}

#[tokio::test]
async fn a_second_corral_on_the_same_config_exits_1_and_the_first_keeps_serving() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "");
    let first = Corral::start(&config).await;
    let (admin, public) = (first.admin.unwrap(), first.addr("public"));
    // The same config as the first now runs: both of its ports fixed.
    let same = config
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{public}\""),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, &same).unwrap();
    let second = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = Pid::from_raw(second.id().unwrap() as i32);
    let Some(out) = within_patience(second.wait_with_output()).await else {
        // It shares the ports (the listeners' SO_REUSEPORT lets it) and
        // serves beside the first.
        let _ = killpg(group, Signal::SIGKILL);
        panic!("a second corral started on the same admin address");
    };
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {admin} (admin endpoint)"))
            && stderr.contains("in use"),
        "{stderr}"
    );

    let status = first.status().await;
    assert_eq!(status["pid"], first.pid());
    assert!(all_ready(&status), "{status:#}");
    let reply = get(public, "/still", &[]).await;
    assert_eq!(
        (reply.status, reply.backend()),
        (StatusCode::OK, "app".into())
    );
}

/// Runs the binary with `args`; returns its exit code and stderr.
fn corral_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = output_patiently(std::process::Command::new(BIN).args(args));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["run", "--no-such-flag"],
        &["check", "--config"],
        &["echo"],
        &["echo", "--listen", "not-an-address"],
        &["reload", "--admin", "nowhere"],
    ] {
        let (code, stderr) = corral_exit(args);
        assert_eq!(code, Some(2), "corral {args:?}: {stderr}");
        assert!(!stderr.is_empty(), "corral {args:?} said nothing");
    }
}

#[test]
fn an_invalid_config_exits_1_in_check_and_in_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    // A misspelt key on line 3 (so `listen` is missing too).
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"public\"\nlisten_on = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let missing = dir.path().join("missing.toml").display().to_string();
    for command in ["check", "run"] {
        let (code, stderr) = corral_exit(&[command, "--config", &file]);
        assert_eq!(code, Some(1), "corral {command}: {stderr}");
        assert!(
            stderr.contains(&format!("{file}:3:")),
            "corral {command}: {stderr}"
        );
        let (code, stderr) = corral_exit(&[command, "--config", &missing]);
        assert_eq!(
            code,
            Some(1),
            "corral {command} on a missing file: {stderr}"
        );
        assert!(stderr.contains(&missing), "corral {command}: {stderr}");
    }
}
