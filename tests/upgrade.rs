//! Binary upgrade that goes wrong (README "Binary upgrade"): corral runs from
//! a copy of its binary that the test then replaces, as an operator would,
//! with a successor that crashes or never becomes ready. The old master
//! kills and reaps it, says why, leaves no process of it behind and keeps
//! serving; a good upgrade afterwards still works. (tests/cluster.rs has the
//! upgrade under load and the one that fails on a broken config.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use nix::sys::signal::Signal;

/// corral started from its own copy of the binary, which the test can
/// replace; the fixture's process group holds every master and worker it
/// starts, and every successor it tries.
struct Upgradable {
    corral: Corral,
    /// Where the running binary lies; what SIGUSR2 starts.
    exe: PathBuf,
}

impl std::ops::Deref for Upgradable {
    type Target = Corral;

    fn deref(&self) -> &Corral {
        &self.corral
    }
}

impl std::ops::DerefMut for Upgradable {
    fn deref_mut(&mut self) -> &mut Corral {
        &mut self.corral
    }
}

impl Upgradable {
    async fn start(config: &str) -> Self {
        Self::start_in_env(config, &[]).await
    }

    /// [`Upgradable::start`] with these variables in corral's environment
    /// (see [`Corral::start_in_env`]).
    async fn start_in_env(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("corral");
        copy(Path::new(BIN), &exe);
        let config_path = dir.path().join("corral.toml");
        std::fs::write(&config_path, config).unwrap();
        let notices = Notices::bind(&dir.path().join("notify.sock"));
        Self {
            corral: Corral::start_with_env(&exe, dir, config_path, notices, env).await,
            exe,
        }
    }

    fn folder(&self) -> &Path {
        self.exe.parent().unwrap()
    }

    /// Puts `source` where the running binary lies, as an operator's
    /// install does: a new file renamed over the old path.
    fn replace_exe(&self, source: &Path) {
        let next = self.folder().join("corral.next");
        copy(source, &next);
        std::fs::rename(&next, &self.exe).unwrap();
    }

    /// Puts a shell script with `body` where the running binary lies.
    fn replace_exe_with_script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let script = self.folder().join("successor.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.replace_exe(&script);
    }
}

/// Copies `from` to a new file `to` in another process: a file this
/// process had open for writing could be inherited, for the moment
/// between fork and exec, by a process another test spawns, and exec of it
/// would then fail with ETXTBSY.
fn copy(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// Announces the fake successor in corral's log (it inherits the master's
/// stderr), with its pid, which `exec` keeps.
const ANNOUNCE: &str = "echo \"fake successor pid=$$ started\" >&2";

/// The pid the fake successor announced.
async fn successor_pid(corral: &Upgradable) -> u32 {
    let line = corral.wait_for_log("fake successor pid=").await;
    log_field(&line, "pid").unwrap().parse().unwrap()
}

/// Every process in process group `group`.
fn group_members(group: u32) -> HashSet<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            // Fields after the command name: state, ppid, pgrp.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
                after.split_whitespace().nth(2) == Some(&group.to_string())
            })
        })
        .collect()
}

fn upgrade_config(app: SocketAddr, extra_runtime: &str) -> String {
    let config = cluster_config(&[app], "");
    let config = if config.contains("heartbeat_timeout") {
        config
    } else {
        config.replace("[runtime]\n", "[runtime]\nheartbeat_timeout = \"10s\"\n")
    };
    config.replace("[runtime]\n", &format!("[runtime]\n{extra_runtime}"))
}

/// After a failed upgrade: the fake successor `pid` is gone (reaped: not
/// even a zombie), nothing else of it is left in the group, and the old
/// master still serves with the workers it had.
async fn assert_old_master_serves_alone(corral: &Upgradable, pid: u32, workers: &[u64]) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the failed successor {pid} is still there"
    );
    let expected: HashSet<u64> = std::iter::once(u64::from(corral.pid()))
        .chain(workers.iter().copied())
        .collect();
    assert_eq!(
        group_members(corral.pid()),
        expected,
        "master and workers only"
    );
    let status = corral.status().await;
    assert_eq!(status["pid"].as_u64(), Some(u64::from(corral.pid())));
    assert_eq!(pids_of(&status), workers, "the workers were not disturbed");
    assert!(all_ready(&status), "{status:#}");
    for _ in 0..4 {
        assert_eq!(
            get(corral.addr("public"), "/", &[]).await.status,
            StatusCode::OK
        );
    }
}

/// Puts the real binary back and upgrades to it: the failure left
/// nothing in the way.
async fn assert_a_good_upgrade_still_works(corral: &mut Upgradable) {
    corral.replace_exe(Path::new(BIN));
    corral.signal(Signal::SIGUSR2);
    corral.wait_successor_ready().await;
    assert_eq!(corral.wait_exit().await, Some(0));
    let status = corral.status().await;
    let new_master = status["pid"].as_u64().unwrap();
    assert_ne!(new_master, u64::from(corral.pid()));
    assert!(all_ready(&status), "{status:#}");
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_crashing_upgrade_binary_is_reaped_and_the_old_master_keeps_serving() {
    let app = echo("app").await;
    let mut corral = Upgradable::start(&upgrade_config(app.addr, "")).await;
    let workers = pids_of(&corral.status().await);
    corral.replace_exe_with_script(&format!("{ANNOUNCE}\nexit 1"));
    corral.signal(Signal::SIGUSR2);
    let failed = corral
        .wait_for_log("binary upgrade failed; this master keeps serving")
        .await;
    let pid = successor_pid(&corral).await;
    eprintln!("failure logged as: {failed}");
    assert_old_master_serves_alone(&corral, pid, &workers).await;
    assert_a_good_upgrade_still_works(&mut corral).await;
}

/// An operator needs to know why the new binary did not take over.
#[tokio::test]
async fn a_crashing_upgrade_binary_is_logged_with_its_exit_status() {
    let app = echo("app").await;
    let corral = Upgradable::start(&upgrade_config(app.addr, "")).await;
    corral.replace_exe_with_script(&format!("{ANNOUNCE}\nexit 3"));
    corral.signal(Signal::SIGUSR2);
    let failed = corral
        .wait_for_log("binary upgrade failed; this master keeps serving")
        .await;
    assert!(
        failed.contains("status 3") || failed.contains("status: 3"),
        "the exit status is not named: {failed}"
    );
}

#[tokio::test]
async fn an_upgrade_binary_that_never_becomes_ready_is_killed_at_upgrade_timeout() {
    const LIMIT: Duration = Duration::from_secs(2);
    let app = echo("app").await;
    let mut corral =
        Upgradable::start(&upgrade_config(app.addr, "upgrade_timeout = \"2s\"\n")).await;
    let workers = pids_of(&corral.status().await);
    corral.replace_exe_with_script(&format!("{ANNOUNCE}\nexec sleep 1000"));
    let signalled = Instant::now();
    corral.signal(Signal::SIGUSR2);
    let pid = successor_pid(&corral).await;
    assert!(
        group_members(corral.pid()).contains(&u64::from(pid)),
        "the successor {pid} is not seen running"
    );
    // While the old master waits for it, its workers still serve.
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
    let failed = corral
        .wait_for_log("binary upgrade failed; this master keeps serving")
        .await;
    let waited = signalled.elapsed();
    eprintln!("failure logged as: {failed}");
    assert!(failed.contains("not ready within 2s"), "{failed}");
    assert!(waited >= LIMIT, "gave up after {waited:?}");
    // Generous for a loaded machine, and far below the 60 s default.
    assert!(
        waited < LIMIT + Duration::from_secs(8),
        "gave up after {waited:?}"
    );
    assert_old_master_serves_alone(&corral, pid, &workers).await;
    assert_a_good_upgrade_still_works(&mut corral).await;
}

#[tokio::test]
async fn the_old_master_pings_the_watchdog_while_it_waits_for_its_successor() {
    let app = echo("app").await;
    // systemd's environment for `WatchdogSec=0.2s`; the wait for the
    // successor (upgrade_timeout, 60 s) is far longer.
    let watchdog = [("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", OWN_PID)];
    let corral = Upgradable::start_in_env(&upgrade_config(app.addr, ""), &watchdog).await;
    let old = corral.pid();
    let pings = || {
        let all = corral.notices.all();
        all.iter()
            .filter(|m| m.is_watchdog() && m.sender() == old)
            .count()
    };
    corral.replace_exe_with_script(&format!("{ANNOUNCE}\nexec sleep 1000"));
    corral.signal(Signal::SIGUSR2);
    // Started: the old master waits for it to say it serves, which it never
    // does.
    let pid = successor_pid(&corral).await;
    let before = pings();
    corral
        .notices
        .wait_for("WATCHDOG=1 while waiting", before + 3, |m| {
            m.is_watchdog() && m.sender() == old
        })
        .await;
    assert!(
        group_members(corral.pid()).contains(&u64::from(pid)),
        "the successor {pid} is not waited for any more"
    );
}

/// `corral_requests_total` and the reload counter, as the admin endpoint
/// answers now (whichever master that is).
async fn counters(corral: &Upgradable) -> (f64, f64) {
    let samples = scrape_metrics(corral).await;
    (
        metric_sum(&samples, "corral_requests_total", &[]),
        metric_sum(
            &samples,
            "corral_config_reloads_total",
            &[("result", "success")],
        ),
    )
}

/// Sends `n` requests, scraping after each: no counter ever goes backwards.
async fn requests_and_scrapes(corral: &Upgradable, n: usize, last: &mut (f64, f64)) {
    for _ in 0..n {
        assert_eq!(
            get(corral.addr("public"), "/", &[]).await.status,
            StatusCode::OK
        );
        let now = counters(corral).await;
        assert!(
            now.0 >= last.0 && now.1 >= last.1,
            "a counter went backwards: {last:?} then {now:?}"
        );
        *last = now;
    }
}

/// README "Binary upgrade": the new master counts on from the old one's
/// totals, its workers' requests included, and counts none twice: the
/// old workers' requests served while they drain are read from the
/// regions handed over, then come with the old master's final totals.
#[tokio::test]
async fn counters_carry_across_an_upgrade_exactly_and_never_go_backwards() {
    let app = echo("app").await;
    let config = upgrade_config(app.addr, "");
    let mut corral = Upgradable::start(&config).await;
    assert_eq!(pids_of(&corral.status().await).len(), 2, "two workers");
    for _ in 0..20 {
        assert_eq!(
            get(corral.addr("public"), "/", &[]).await.status,
            StatusCode::OK
        );
    }
    corral.write_config(&upgrade_config(app.addr, "upgrade_timeout = \"59s\"\n"));
    let (code, body) = admin_call(corral.admin.unwrap(), http::Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // The file watch may have started it first; counted once either way.
    corral.wait_for_log("config reloaded").await;
    let before = counters(&corral).await;
    assert_eq!(before, (20.0, 1.0));

    let old = corral.pid();
    corral.signal(Signal::SIGUSR2);
    let mut last = before;
    // While the new master starts, and once it serves with the old
    // workers draining.
    requests_and_scrapes(&corral, 15, &mut last).await;
    corral.wait_successor_ready().await;
    requests_and_scrapes(&corral, 15, &mut last).await;
    assert_eq!(corral.wait_exit().await, Some(0), "the old master exits");
    assert!(!Path::new(&format!("/proc/{old}")).exists());
    requests_and_scrapes(&corral, 5, &mut last).await;
    corral
        .wait_for_log("the previous master's final counters are in")
        .await;
    let after = counters(&corral).await;
    assert_eq!(after, (20.0 + 35.0, 1.0), "before {before:?}");
    let status = corral.status().await;
    assert_ne!(status["pid"].as_u64(), Some(u64::from(old)));
}
