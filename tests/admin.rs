//! What the admin endpoint, the metrics gauges and the logs promise (README
//! "Admin endpoint", "Metrics", "Access logs", "Binary upgrade", "Config
//! reload", "Architecture"): the fields of `/status` and `/config`, `/healthz`
//! naming the slot that does not serve, in-flight counts summed over every
//! worker, the slot, worker and health gauges, the reload-duration count,
//! `check --diff`'s output, access logs off by default and appended to, the
//! new master's pid and fresh counters after an upgrade, the startup line on
//! `tcp_migrate_req`, and health and latency that a reload leaves alone.
//!
//! (`draining` in `/status` is not pinned here: a worker drains only when its
//! slot is retired, which takes the slot off the board, or when its master
//! stops, which closes that master's admin endpoint first, so no `/status`
//! can show it.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::watch;

fn kill(pid: u64, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Now, rounded down to the second: `/status` writes its times to the
/// second, so a time taken within the same second may read as earlier.
fn now_to_the_second() -> SystemTime {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// `value` as an RFC 3339 time, no earlier than `since` and not in the future.
fn assert_time_since(value: &serde_json::Value, since: SystemTime, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no time in {value}"));
    let at = humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what}: {text:?} is not RFC 3339: {e}"));
    assert!(at >= since, "{what}: {text} is before the test started");
    assert!(at <= SystemTime::now(), "{what}: {text} is in the future");
}

/// `path` relative to this process's working directory, which the corral
/// it starts shares: `../..` up to the root, then the path from there.
fn relative_to_cwd(path: &Path) -> PathBuf {
    // `..` is resolved by the kernel through the real folders, so count those.
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let mut relative = PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.join(path.canonicalize().unwrap().strip_prefix("/").unwrap())
}

async fn post_reload(corral: &Corral) -> serde_json::Value {
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn get_config(corral: &Corral) -> serde_json::Value {
    let (code, body) = admin_call(corral.admin.unwrap(), Method::GET, "/config").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

// ---- /status, /config, /healthz ----

#[tokio::test]
async fn status_reports_version_absolute_config_path_times_weights_and_the_last_reload() {
    let started = now_to_the_second();
    let (a, b) = (echo("a").await, echo("b").await);
    let text = cluster_config(&[a.addr, b.addr], "").replace(
        &format!("{{ addr = \"{}\" }}", a.addr),
        &format!("{{ addr = \"{}\", weight = 3 }}", a.addr),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.toml");
    std::fs::write(&file, &text).unwrap();
    // Started on a relative path, so that an absolute one in `/status` is
    // corral's doing.
    let relative = relative_to_cwd(&file);
    assert!(relative.is_relative());
    let corral = Corral::start_at(dir, relative).await;
    let status = corral.wait_status(all_ready).await;

    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    assert_eq!(status["pid"], corral.pid(), "{status:#}");
    assert_eq!(status["generation"], 1);
    let path = status["config"]["path"].as_str().unwrap();
    assert!(Path::new(path).is_absolute(), "{status:#}");
    assert_eq!(
        Path::new(path).canonicalize().unwrap(),
        file.canonicalize().unwrap(),
        "{status:#}"
    );
    assert_time_since(&status["config"]["loaded_at"], started, "config.loaded_at");
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{status:#}");
    for (slot, w) in workers.iter().enumerate() {
        assert_eq!(w["slot"], slot);
        assert_eq!(w["state"], "ready", "{status:#}");
        assert_eq!(w["generation"], 1);
        assert_time_since(&w["started_at"], started, "worker started_at");
    }
    let servers = status["upstreams"][0]["servers"].as_array().unwrap();
    assert_eq!(status["upstreams"][0]["name"], "app");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["addr"], a.addr.to_string());
    assert_eq!(servers[0]["weight"], 3, "{status:#}");
    assert_eq!(servers[1]["addr"], b.addr.to_string());
    assert_eq!(servers[1]["weight"], 1, "{status:#}");
    for s in servers {
        assert_eq!(s["state"], "healthy");
        assert_eq!(s["in_flight"], 0);
    }

    let before_reload = now_to_the_second();
    corral.write_config(&text.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"6s\""));
    assert_eq!(post_reload(&corral).await["generation"], 2);
    let after = corral.status().await;
    let last = &after["last_reload"];
    assert_eq!(last["result"], "success", "{after:#}");
    assert_eq!(last["trigger"], "POST /reload", "{after:#}");
    assert_eq!(last["generation"], 2, "{after:#}");
    assert!(last["error"].is_null(), "{after:#}");
    assert!(last["duration_ms"].is_u64(), "{after:#}");
    assert_time_since(&last["at"], before_reload, "last_reload.at");
    assert_time_since(&after["config"]["loaded_at"], before_reload, "loaded_at");
    assert_eq!(after["config"]["path"], path);
    // A reload keeps its workers: same processes, same start times.
    for (old, new) in workers.iter().zip(after["workers"].as_array().unwrap()) {
        assert_eq!(old["pid"], new["pid"], "{after:#}");
        assert_eq!(old["started_at"], new["started_at"], "{after:#}");
        assert_eq!(new["generation"], 2);
    }
}

#[tokio::test]
async fn get_config_answers_the_running_generation_its_path_and_exact_text() {
    let app = echo("app").await;
    // Comments and odd spacing: `text` is the file, not a rendering of it.
    let first = format!(
        "# the first\n{}\n#   trailing comment   \n",
        cluster_config(&[app.addr], "")
    );
    let corral = Corral::start(&first).await;
    let path = path_of(&corral.config_path);
    let config = get_config(&corral).await;
    assert_eq!(config["generation"], 1, "{config:#}");
    assert_eq!(config["path"], path.as_str());
    assert_eq!(config["text"], first.as_str());

    let second = first.replace("# the first", "# the second\n\n");
    corral.write_config(&second);
    assert_eq!(post_reload(&corral).await["generation"], 2);
    let config = get_config(&corral).await;
    assert_eq!(config["generation"], 2, "{config:#}");
    assert_eq!(config["path"], path.as_str());
    assert_eq!(config["text"], second.as_str());
}

/// The slots a `/healthz` body names: the numbers in its detail (after
/// `503 Service Unavailable: `).
fn named_slots(body: &str) -> Vec<u64> {
    let detail = body.split_once(": ").map_or(body, |(_, d)| d);
    detail
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn healthz_is_503_naming_the_slot_that_cannot_start_and_200_once_it_serves() {
    let app = echo("app").await;
    // The certificate lies outside the config's folder, so that breaking it
    // is no file change for corral to reload on.
    let certs = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (certs.path().join("c.pem"), certs.path().join("c.key"));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key_pem = cert.signing_key.serialize_pem();
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let tls = format!(
        "name = \"public\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert_path.display(),
        key_path.display()
    );
    let text = cluster_config(&[app.addr], "")
        .replace("name = \"public\"\nlisten = \"127.0.0.1:0\"", &tls);
    let corral = Corral::start(&text).await;
    let admin = corral.admin.unwrap();
    corral.wait_status(all_ready).await;
    let (code, body) = admin_call(admin, Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // A worker starts by loading the key: with it gone, slot 1's
    // replacement exits at every start and the slot never serves again until
    // the key is back, so what /healthz says cannot change under the test.
    std::fs::remove_file(&key_path).unwrap();
    let victim = corral.worker_pids().await[1];
    kill(victim, Signal::SIGKILL);
    let status = corral
        .wait_status(|s| s["workers"][1]["state"] != "ready")
        .await;
    assert_eq!(status["workers"][0]["state"], "ready", "{status:#}");
    let (code, body) = admin_call(admin, Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(named_slots(&body), [1], "{body}");

    std::fs::write(&key_path, &key_pem).unwrap();
    corral.wait_status(all_ready).await;
    let (code, body) = admin_call(admin, Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// An upstream that holds every request until `release` is set to true;
/// `arrived` gets one message per request as it arrives.
async fn hold_all() -> (
    Upstream,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    watch::Sender<bool>,
) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = watch::Sender::new(false);
    let released = release.subscribe();
    let up = upstream(move |_req| {
        let (arrived_tx, mut released) = (arrived_tx.clone(), released.clone());
        async move {
            let _ = arrived_tx.send(());
            let _ = released.wait_for(|r| *r).await;
            Response::new(full("done"))
        }
    })
    .await;
    (up, arrived, release)
}

#[tokio::test]
async fn status_in_flight_sums_the_requests_held_by_every_worker() {
    let (held, mut arrived, release) = hold_all().await;
    let corral = Corral::start(&cluster_config(&[held.addr], "")).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    let server = held.addr.to_string();
    // The kernel spreads fresh connections over the workers' sockets; open
    // them one at a time until both workers hold a request.
    let mut pending = Vec::new();
    let holders = loop {
        assert!(pending.len() < 64, "64 connections all went to one worker");
        pending.push(tokio::spawn(async move { get(public, "/held", &[]).await }));
        patiently("a held request to arrive", arrived.recv())
            .await
            .unwrap();
        let samples = scrape_metrics(&corral).await;
        let holders: HashSet<String> = samples
            .iter()
            .filter(|s| {
                s.name == "corral_upstream_in_flight"
                    && s.labels.get("server") == Some(&server)
                    && s.value > 0.0
            })
            .map(|s| s.labels["worker"].clone())
            .collect();
        if holders.len() == 2 {
            break holders;
        }
    };
    eprintln!("{} requests held by workers {holders:?}", pending.len());
    let status = corral.status().await;
    assert_eq!(
        status["upstreams"][0]["servers"][0]["in_flight"],
        pending.len(),
        "{status:#}"
    );

    release.send_replace(true);
    for p in pending {
        assert_eq!(p.await.unwrap().status, StatusCode::OK);
    }
}

// ---- gauges and reload counts ----

#[tokio::test]
async fn slot_and_worker_gauges_follow_a_reload_of_runtime_workers() {
    let app = echo("app").await;
    let text = cluster_config(&[app.addr], "");
    let corral = Corral::start(&text).await;
    corral.wait_status(all_ready).await;
    let gauges = |s: &[Sample]| {
        (
            metric_sum(s, "corral_worker_slots", &[]),
            metric_sum(s, "corral_workers", &[]),
        )
    };
    assert_eq!(gauges(&scrape_metrics(&corral).await), (2.0, 2.0));
    for workers in [3, 1] {
        corral.write_config(&text.replace("workers = 2", &format!("workers = {workers}")));
        post_reload(&corral).await;
        // A reload reports success once every slot serves it.
        let samples = scrape_metrics(&corral).await;
        let expected = f64::from(workers);
        assert_eq!(
            gauges(&samples),
            (expected, expected),
            "workers = {workers}"
        );
    }
}

#[tokio::test]
async fn the_server_healthy_gauge_drops_to_0_when_a_health_check_takes_the_server_out() {
    let (sick, failing) = sickly().await;
    let fine = echo("fine").await;
    // One failed check takes a server out. The timeout is what a loaded
    // machine needs so that `fine` never fails one by being slow; the
    // interval can be no shorter.
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"500ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 1\n";
    let corral = Corral::start(&cluster_config(&[sick.addr, fine.addr], check)).await;
    let (sick_label, fine_label) = (sick.addr.to_string(), fine.addr.to_string());
    let healthy = |s: &[Sample], server: &str| {
        metric_sum(
            s,
            "corral_upstream_server_healthy",
            &[("upstream", "app"), ("server", server)],
        )
    };
    let state = |s: &serde_json::Value, i: usize| s["upstreams"][0]["servers"][i]["state"].clone();
    corral
        .wait_status(|s| state(s, 0) == "healthy" && state(s, 1) == "healthy")
        .await;
    let samples = scrape_metrics(&corral).await;
    assert_eq!(healthy(&samples, &sick_label), 1.0);
    assert_eq!(healthy(&samples, &fine_label), 1.0);

    failing.store(true, Ordering::SeqCst);
    // Once out, it stays out: its check keeps failing.
    corral.wait_status(|s| state(s, 0) == "unhealthy").await;
    let samples = scrape_metrics(&corral).await;
    assert_eq!(healthy(&samples, &sick_label), 0.0);
    assert_eq!(healthy(&samples, &fine_label), 1.0);
}

#[tokio::test]
async fn the_reload_duration_count_grows_by_one_per_reload_and_not_for_an_unchanged_file() {
    let app = echo("app").await;
    let text = cluster_config(&[app.addr], "");
    let corral = Corral::start(&text).await;
    let count = |s: &[Sample]| metric_sum(s, "corral_config_reload_duration_seconds_count", &[]);
    assert_eq!(
        count(&scrape_metrics(&corral).await),
        0.0,
        "starting is no reload"
    );

    for (n, timeout) in [(1.0, "6s"), (2.0, "7s")] {
        corral.write_config(&text.replace(
            "shutdown_timeout = \"5s\"",
            &format!("shutdown_timeout = \"{timeout}\""),
        ));
        let answer = post_reload(&corral).await;
        assert_eq!(answer["unchanged"], false, "{answer}");
        assert_eq!(count(&scrape_metrics(&corral).await), n);
        let answer = post_reload(&corral).await;
        assert_eq!(answer["unchanged"], true, "{answer}");
        assert_eq!(
            count(&scrape_metrics(&corral).await),
            n,
            "an unchanged file counted"
        );
    }
}

// ---- corral check --diff ----

#[tokio::test]
async fn check_diff_prints_the_ok_line_then_the_changes_against_the_running_generation() {
    let app = echo("app").await;
    let text = cluster_config(&[app.addr], "");
    let corral = Corral::start(&text).await;
    // A second generation, so the number printed is the running one.
    let running = text.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"6s\"");
    corral.write_config(&running);
    assert_eq!(post_reload(&corral).await["generation"], 2);
    let admin = corral.admin.unwrap().to_string();
    let diff = |text: &str| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let path = path_of(file.path());
        let out = cli_ok(&["check", "--config", &path, "--diff", "--admin", &admin]);
        (path, out)
    };

    let (path, same) = diff(&running);
    let lines: Vec<&str> = same.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{path}: ok (1 listeners, 1 routes, 1 upstreams)").as_str(),
            "no changes against the running generation 2",
        ],
        "{same}"
    );

    let more = format!(
        "{running}\n[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\npath_prefix = \"/b/\"\nupstream = \"b\"\n\n\
         [[upstreams]]\nname = \"b\"\nservers = [{{ addr = \"{}\" }}]\n",
        app.addr
    );
    let (path, changed) = diff(&more);
    let lines: Vec<&str> = changed.lines().collect();
    assert_eq!(
        lines[0],
        format!("{path}: ok (2 listeners, 2 routes, 2 upstreams)"),
        "{changed}"
    );
    assert_eq!(
        lines[1], "changes against the running generation 2:",
        "{changed}"
    );
    assert!(lines.len() > 2, "{changed}");
    for line in &lines[2..] {
        assert!(
            line.starts_with("  + ") || line.starts_with("  - ") || line.starts_with("  ~ "),
            "{changed}"
        );
    }
    assert!(changed.contains("  + route"), "{changed}");
    assert!(changed.contains("upstream `b`"), "{changed}");
}

// ---- access logs ----

/// `corral run` started by the test itself, for what the `Corral` fixture
/// does not show: its stdout, its whole stderr to the end, or a start
/// through another program (`unshare`).
struct Run {
    child: tokio::process::Child,
    pid: u32,
    stderr: watch::Receiver<Vec<String>>,
    stderr_done: tokio::task::JoinHandle<()>,
    stdout: tokio::task::JoinHandle<String>,
    notices: Notices,
    /// The notify socket's folder: not the config's, whose files a test counts.
    _notify_dir: tempfile::TempDir,
}

impl Run {
    /// Spawns `command` (which must end up running `corral run`) in its own
    /// process group, with stdout and stderr captured and `NOTIFY_SOCKET`
    /// set.
    fn spawn(mut command: tokio::process::Command) -> Self {
        let notify_dir = tempfile::tempdir().unwrap();
        let notices = Notices::bind(&notify_dir.path().join("notify.sock"));
        let mut child = command
            .env("CORRAL_LOG", "info,corral=debug")
            .env("NOTIFY_SOCKET", notices.address())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut stdout_pipe = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stdout_pipe.read_to_string(&mut text).await;
            text
        });
        let mut lines_in = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (lines, stderr) = watch::channel(Vec::new());
        let stderr_done = tokio::spawn(async move {
            while let Ok(Some(line)) = lines_in.next_line().await {
                eprintln!("[corral] {line}");
                lines.send_modify(|l| l.push(line));
            }
        });
        Self {
            child,
            pid,
            stderr,
            stderr_done,
            stdout,
            notices,
            _notify_dir: notify_dir,
        }
    }

    /// Waits until corral serves (its first `READY=1`).
    async fn ready(&self) -> Notice {
        self.notices.wait_ready(1).await
    }

    /// Stops corral gracefully and returns all it wrote: stdout, and
    /// stderr read to its end (every process of it has exited then).
    async fn stop(mut self) -> (String, Vec<String>) {
        kill(u64::from(self.pid), Signal::SIGTERM);
        let exited = patiently("corral to stop", self.child.wait()).await;
        assert!(exited.unwrap().success());
        patiently("corral's stderr to end", &mut self.stderr_done)
            .await
            .unwrap();
        let stdout = patiently("corral's stdout to end", &mut self.stdout)
            .await
            .unwrap();
        let stderr = self.stderr.borrow().clone();
        (stdout, stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    }
}

#[tokio::test]
async fn access_logs_are_off_by_default() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, simple_config(&[app.addr], "")).unwrap();
    let mut command = tokio::process::Command::new(BIN);
    command.args(["run", "--config"]).arg(&config);
    let run = Run::spawn(command);
    let public = run.ready().await.listeners()["public"];
    // A path no log line of corral's own has reason to name.
    for i in 0..10 {
        let reply = get(public, &format!("/never-logged-{i}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // Every line a worker wrote is in before its stderr ends.
    let (stdout, stderr) = run.stop().await;
    assert_eq!(stdout, "", "something was written to stdout");
    let logged: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("never-logged") || l.starts_with('{'))
        .collect();
    assert!(logged.is_empty(), "access log lines on stderr: {logged:?}");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["corral.toml"], "files in the config's folder");
}

#[tokio::test]
async fn an_access_log_file_is_appended_to_at_start_and_at_reopen() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let earlier = ["an earlier line", "and another"];
    std::fs::write(&log, format!("{}\n{}\n", earlier[0], earlier[1])).unwrap();
    // Relative: it names the file beside the config.
    let text = cluster_config(&[app.addr], "[access_log]\npath = \"access.log\"\n");
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, text).unwrap();
    let corral = Corral::start_at(dir, config).await;
    let public = corral.addr("public");
    for i in 0..3 {
        get(public, &format!("/first/{i}"), &[]).await;
    }
    let lines = wait_for_lines(&log, 5).await;
    assert_eq!(lines[..2], earlier, "{lines:#?}");
    for line in &lines[2..] {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            entry["uri"].as_str().unwrap().starts_with("/first/"),
            "{line}"
        );
    }

    // Reopened in place (nothing moved it): appended to again, not cut.
    corral.signal(Signal::SIGUSR1);
    corral.wait_for_logs("access log reopened", 2).await;
    get(public, "/second", &[]).await;
    let after = wait_for_lines(&log, 6).await;
    assert_eq!(after[..5], lines[..5], "{after:#?}");
    assert!(after[5].contains("\"/second\""), "{after:#?}");
}

// ---- binary upgrade ----

#[tokio::test]
async fn after_an_upgrade_the_new_masters_pid_is_logged_and_its_counters_carry_on() {
    let app = echo("app").await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    corral.wait_status(all_ready).await;
    let public = corral.addr("public");
    for _ in 0..5 {
        assert_eq!(get(public, "/before", &[]).await.status, StatusCode::OK);
    }
    let requests = |s: &[Sample]| metric_sum(s, "corral_requests_total", &[]);
    assert_eq!(requests(&scrape_metrics(&corral).await), 5.0);
    let old = corral.pid();
    // Every line a master logs names it.
    corral.wait_for_log(&format!("master{{pid={old}}}: ")).await;

    corral.signal(Signal::SIGUSR2);
    let ready = corral.wait_successor_ready().await;
    assert_eq!(corral.wait_exit().await, Some(0));
    // The old master and its workers are gone: only the new one answers.
    let status = corral.wait_status(all_ready).await;
    let new = status["pid"].as_u64().unwrap();
    assert_ne!(new, u64::from(old));
    assert_eq!(ready.main_pid().map(u64::from), Some(new), "{ready:?}");
    let serving = corral.wait_for_log("the new master is serving").await;
    assert_eq!(
        log_field(&serving, "new_master"),
        Some(new.to_string()),
        "{serving}"
    );
    corral.wait_for_log(&format!("master{{pid={new}}}: ")).await;

    // The old master's counts, from the regions it handed over or its
    // final totals: 5 either way (tests/upgrade.rs has the details).
    assert_eq!(requests(&scrape_metrics(&corral).await), 5.0);
    for _ in 0..3 {
        assert_eq!(get(public, "/after", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(requests(&scrape_metrics(&corral).await), 8.0);
}

// ---- tcp_migrate_req ----

/// The one startup line about `net.ipv4.tcp_migrate_req`, and whether it
/// says the setting is on (`Some(true)`) or off (`Some(false)`).
fn migrate_req_line(lines: &[String]) -> (String, Option<bool>) {
    let about: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("tcp_migrate_req"))
        .collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    let line = about[0].clone();
    let on = line.contains("tcp_migrate_req is on");
    let off = line.contains("tcp_migrate_req is off");
    let says = match (on, off) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    (line, says)
}

#[tokio::test]
async fn the_startup_log_says_whether_tcp_migrate_req_is_on() {
    // The host as it is.
    let app = echo("app").await;
    let mut corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    // Stopped, so that every startup line has been read.
    corral.signal(Signal::SIGTERM);
    assert_eq!(corral.wait_exit().await, Some(0));
    corral
        .wait_for_log("corral::master::process: stopped")
        .await;
    let (line, says) = migrate_req_line(&corral.logged(""));
    assert_eq!(says, Some(host), "{line}");
    drop(corral);

    // Both settings, each in a network namespace of its own (where the
    // setting can be changed without touching the host's): a line that
    // never changed would pass the check above on one of them.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    // Nothing connects in there (its loopback is down); corral only starts.
    std::fs::write(&config, simple_config(&[app.addr], "")).unwrap();
    for value in [1, 0] {
        let mut command = tokio::process::Command::new("unshare");
        command
            .args(["--net", "sh", "-c"])
            .arg(format!(
                "echo {value} > /proc/sys/net/ipv4/tcp_migrate_req && exec \"$0\" run --config \"$1\""
            ))
            .arg(BIN)
            .arg(&config);
        let run = Run::spawn(command);
        run.ready().await;
        let (_, stderr) = run.stop().await;
        let (line, says) = migrate_req_line(&stderr);
        assert_eq!(says, Some(value == 1), "tcp_migrate_req = {value}: {line}");
    }
}

// ---- state a reload keeps ----

#[tokio::test]
async fn an_unhealthy_server_stays_unhealthy_across_a_reload_of_unrelated_settings() {
    let (sick, failing) = sickly().await;
    failing.store(true, Ordering::SeqCst);
    // The first check takes the server out at once; the next is an hour
    // away, so only a reload that lost the state could bring it back.
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"1h\"\nunhealthy_threshold = 1\n";
    let text = cluster_config(&[sick.addr], check);
    let corral = Corral::start(&text).await;
    let state = |s: &serde_json::Value| s["upstreams"][0]["servers"][0]["state"].clone();
    corral
        .wait_status(|s| all_ready(s) && state(s) == "unhealthy")
        .await;
    // From now on a check would pass: a server rebuilt by the reload, or a
    // check started anew, would read as healthy.
    failing.store(false, Ordering::SeqCst);
    let public = corral.addr("public");
    let unserved = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    };
    for _ in 0..4 {
        unserved(get(public, "/x", &[]).await);
    }

    corral.write_config(&text.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"6s\""));
    assert_eq!(post_reload(&corral).await["generation"], 2);
    let status = corral.status().await;
    assert_eq!(state(&status), "unhealthy", "{status:#}");
    assert!(all_ready(&status), "{status:#}");
    // Every worker, on the new generation, still skips it.
    for _ in 0..8 {
        unserved(get(public, "/x", &[]).await);
    }
    assert_eq!(state(&corral.status().await), "unhealthy");
}

/// An upstream named `name` (in `x-backend`) that answers every request
/// after `delay`: a slow or a fast server, as p2c_ewma sees it.
async fn answering_after(name: &'static str, delay: Duration) -> Upstream {
    upstream(move |_req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::builder()
            .header("x-backend", name)
            .body(empty())
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn p2c_ewma_keeps_its_latencies_across_a_reload_of_unrelated_settings() {
    // The delays are the servers' behaviour, not waits of the test. `slow`
    // once measured costs 1.5 s, decaying over 10 s; `fast` costs 5 ms or
    // more. So for tens of seconds after its one slow answer `slow` is
    // never chosen, while a server not yet measured (1 ms) beats `fast`.
    let slow = answering_after("slow", Duration::from_millis(1500)).await;
    let fast = answering_after("fast", Duration::from_millis(5)).await;
    let text = cluster_config(&[slow.addr, fast.addr], "balance = \"p2c_ewma\"\n");
    let corral = Corral::start(&text).await;
    corral.wait_status(all_ready).await;
    // One connection: one worker, whose latencies the test follows.
    let mut client = H1::connect(corral.addr("public")).await;
    // Unmeasured, `slow` is chosen by the first or the second request.
    let mut chosen = Vec::new();
    while !chosen.contains(&"slow".to_owned()) {
        assert!(chosen.len() < 2, "slow never chosen: {chosen:?}");
        chosen.push(client.get("/x", &[]).await.backend());
    }
    for _ in 0..5 {
        assert_eq!(client.get("/x", &[]).await.backend(), "fast");
    }

    corral.write_config(&text.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"6s\""));
    assert_eq!(post_reload(&corral).await["generation"], 2);
    // Had the reload forgotten the latencies, both servers would be
    // unmeasured again and `slow` chosen by the first or second request.
    for i in 0..6 {
        let reply = client.get("/x", &[]).await;
        assert_eq!(reply.backend(), "fast", "request {i} after the reload");
    }
}
