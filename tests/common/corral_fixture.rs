//! The `corral` binary under test: [`Corral`], a `corral run` process, its
//! readiness, log, `/status` and exit, and reading fields out of its log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use http::StatusCode;
use tokio::sync::watch;

use super::admin::{admin_call, pids_of};
use super::notices::{Notice, Notices};
use super::patience::PATIENCE;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// A variable's value for [`Corral::start_in_env`]: the master's own pid.
pub const OWN_PID: &str = "$$";

/// The corral binary, running `corral run` on a config. Every wait is
/// async: tests serve their upstreams on their own runtime, which a blocking
/// wait would freeze.
///
/// Readiness comes from corral's notices (sd_notify(3), see [`Notices`]):
/// corral starts with `NOTIFY_SOCKET` set, and its `READY=1` says where it
/// listens. Waits on `/status` are woken by what corral writes to stderr:
/// corral updates its state (`/status`, sockets, files) before it logs the
/// change, so each new line is the moment to look again.
pub struct Corral {
    child: tokio::process::Child,
    pid: u32,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    /// Every stderr line of every corral process so far.
    log: watch::Receiver<Vec<String>>,
    /// What every corral process has told its service manager so far.
    pub notices: Notices,
    _dir: tempfile::TempDir,
}

impl Corral {
    /// Starts corral on `config` and waits until it reports ready.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("corral.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_at(dir, config_path).await
    }

    /// Starts corral on a config file the test laid out in `dir`.
    pub async fn start_at(dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        Self::start_exe(Path::new(BIN), dir, config_path).await
    }

    /// [`Corral::start_at`] with the binary at `exe` (a copy that a test
    /// may replace, as an upgrade does).
    pub async fn start_exe(exe: &Path, dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        let notices = Notices::bind(&dir.path().join("notify.sock"));
        Self::start_notifying(exe, dir, config_path, notices).await
    }

    /// [`Corral::start_exe`] with the service manager's socket of the
    /// test's choice.
    pub async fn start_notifying(
        exe: &Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        notices: Notices,
    ) -> Self {
        Self::start_with_env(exe, dir, config_path, notices, &[]).await
    }

    /// [`Corral::start`] with these variables in corral's environment, as
    /// a service manager sets them; [`OWN_PID`] as a value stands for the
    /// master's own pid.
    pub async fn start_in_env(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("corral.toml");
        std::fs::write(&config_path, config).unwrap();
        let notices = Notices::bind(&dir.path().join("notify.sock"));
        Self::start_with_env(Path::new(BIN), dir, config_path, notices, env).await
    }

    /// [`Corral::start_notifying`] with these variables in corral's
    /// environment (see [`Corral::start_in_env`]).
    pub async fn start_with_env(
        exe: &Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        notices: Notices,
        env: &[(&str, &str)],
    ) -> Self {
        // A variable naming the master's own pid, as systemd sets
        // `WATCHDOG_PID`, is set by a shell that then becomes corral.
        let own: Vec<&str> = env
            .iter()
            .filter(|(_, v)| *v == OWN_PID)
            .map(|(k, _)| *k)
            .collect();
        let mut command = if own.is_empty() {
            tokio::process::Command::new(exe)
        } else {
            let exports: String = own.iter().map(|k| format!("export {k}=$$; ")).collect();
            let mut sh = tokio::process::Command::new("sh");
            sh.arg("-c")
                .arg(format!("{exports}exec \"$0\" \"$@\""))
                .arg(exe);
            sh
        };
        command.envs(env.iter().filter(|(_, v)| *v != OWN_PID).copied());
        // Its own process group, so that dropping the fixture also ends
        // masters started by an upgrade and every worker.
        let mut child = command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("CORRAL_LOG", "info,corral=debug")
            .env("NOTIFY_SOCKET", notices.address())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stderr = std::fs::File::from(child.stderr.take().unwrap().into_owned_fd().unwrap());
        let (lines, log) = watch::channel(Vec::new());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[corral] {line}");
                lines.send_modify(|lines| lines.push(line));
            }
        });
        let ready = tokio::select! {
            ready = notices.wait_ready(1) => ready,
            exited = child.wait() => panic!("corral exited before it was ready: {exited:?}"),
        };
        Self {
            child,
            pid,
            listeners: ready.listeners(),
            admin: ready.admin(),
            config_path,
            log,
            notices,
            _dir: dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The first `READY=1` of generation `generation` (see [`Notices`]).
    pub async fn wait_ready(&self, generation: u64) -> Notice {
        self.notices.wait_ready(generation).await
    }

    /// The first `n` `READY=1` notices: startup, then one as each reload ends.
    pub async fn wait_readies(&self, n: usize) -> Vec<Notice> {
        self.notices.wait_readies(n).await
    }

    /// The first notice that satisfies `matches`; `what` names it if it
    /// does not come.
    pub async fn wait_for_notice(&self, what: &str, matches: impl Fn(&Notice) -> bool) -> Notice {
        self.notices.wait_for(what, 1, matches).await.remove(0)
    }

    /// `READY=1` from a master other than the first: the new master of a
    /// binary upgrade serves.
    pub async fn wait_successor_ready(&self) -> Notice {
        let first = self.pid;
        let successor = |m: &Notice| m.is_ready() && m.main_pid().is_some_and(|p| p != first);
        self.wait_for_notice("READY=1 from a new master", successor)
            .await
    }

    /// Waits for a log line containing `needle` (seen before or after now).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(needle, 1).await.remove(0)
    }

    /// Waits for `n` log lines containing `needle` and returns them.
    pub async fn wait_for_logs(&self, needle: &str, n: usize) -> Vec<String> {
        let matching = |line: &&String| line.contains(needle);
        let mut log = self.log.clone();
        let enough = |lines: &Vec<String>| lines.iter().filter(matching).count() >= n;
        match tokio::time::timeout(PATIENCE, log.wait_for(enough)).await {
            Ok(Ok(lines)) => lines.iter().filter(matching).cloned().collect(),
            _ => panic!("fewer than {n} log lines with {needle:?}"),
        }
    }

    /// Replaces the config file's content (as an editor that writes in
    /// place would).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal).unwrap();
    }

    /// Waits for the process started (the first master) to exit and
    /// returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("corral did not exit");
        status.unwrap().code()
    }

    /// Peak resident memory so far (VmHWM) of the master and its workers
    /// together, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid.to_string())
            .chain(children.split_whitespace().map(str::to_owned))
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        // tokio reaps the first master in the background.
        let group = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `key=value` out of a corral log line (quotes trimmed).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    field(line, key)
}

/// When corral logged `line`: its leading timestamp (tracing's default
/// format, RFC 3339 in UTC with microseconds).
pub fn log_time(line: &str) -> std::time::SystemTime {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("no timestamp ({e}) in {line:?}"))
}

/// `key=value` out of a tracing log line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_owned(),
    )
}

impl Corral {
    /// `GET /status` from the admin endpoint.
    pub async fn status(&self) -> serde_json::Value {
        let (status, body) = admin_call(
            self.admin.expect("no admin endpoint"),
            http::Method::GET,
            "/status",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Worker pids by slot, from `/status` (every slot must have a worker).
    pub async fn worker_pids(&self) -> Vec<u64> {
        pids_of(&self.status().await)
    }

    /// Waits until `/status` satisfies `ready`, reading it again after each
    /// new log line (the master logs a change after `/status` shows it).
    pub async fn wait_status(
        &self,
        mut ready: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut log = self.log.clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            log.mark_unchanged();
            let status = self.status().await;
            if ready(&status) {
                return status;
            }
            let logged = tokio::time::timeout_at(deadline, log.changed()).await;
            assert!(
                matches!(logged, Ok(Ok(()))),
                "status never matched: {status:#}"
            );
        }
    }
}

impl Corral {
    /// The log lines so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        let lines = self.log.borrow();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}
