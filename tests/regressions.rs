//! Bugs found by trying corral as a new user would, each pinned by a test
//! named after what broke: the config watcher, reload bookkeeping, paths,
//! settings that cannot work, answers to unparsable requests, the command
//! line and the logs of a stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::Stdio;

use common::*;
use http::{Method, StatusCode};

/// `corral_config_reloads_total{result}` from a scrape.
async fn reloads(corral: &Corral, result: &str) -> u64 {
    let (_, text) = admin_call(corral.admin.unwrap(), Method::GET, "/metrics").await;
    let line = format!("corral_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
        .parse()
        .unwrap()
}

/// Writes a file beside the config and the config again as it is, and
/// waits until the master has looked at the file because of it.
async fn stir_the_folder(corral: &Corral, round: usize) {
    let sibling = corral.config_path.with_file_name(format!("other-{round}"));
    std::fs::write(sibling, "x").unwrap();
    let text = std::fs::read_to_string(&corral.config_path).unwrap();
    corral.write_config(&text);
    corral
        .wait_for_logs("config file as last read; nothing to reload", round)
        .await;
}

#[tokio::test]
async fn the_master_reads_a_changed_config_once_and_reports_a_broken_file_once() {
    let app = echo("a").await;
    let good = cluster_config(&[app.addr], "");
    let corral = Corral::start(&good).await;
    corral.write_config(&format!("{good}\nbroken = \n"));
    // Startup's READY=1, then the failed reload's.
    corral.wait_readies(2).await;
    assert_eq!(reloads(&corral, "failure").await, 1);

    // The master's own read must not count as a change, nor must other
    // files in the folder, nor the same text written again: each look
    // finds the text it last read.
    stir_the_folder(&corral, 1).await;
    assert_eq!(reloads(&corral, "failure").await, 1);

    // A reload asked for keeps its own result in `/status`.
    let (status, _) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    stir_the_folder(&corral, 2).await;
    let status = corral.status().await;
    assert_eq!(
        status["last_reload"]["trigger"], "POST /reload",
        "{status:#}"
    );
    assert_eq!(reloads(&corral, "failure").await, 2);
    assert_eq!(
        corral.wait_for_logs("config reload failed", 2).await.len(),
        2
    );
}

#[tokio::test]
async fn a_reload_of_an_unchanged_file_is_no_new_generation() {
    let app = echo("a").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let (status, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["generation"], 1, "{answer}");
    assert_eq!(answer["unchanged"], true, "{answer}");
    corral.signal(nix::sys::signal::Signal::SIGHUP);
    corral
        .wait_for_logs("config unchanged; nothing to reload", 2)
        .await;
    let status = corral.status().await;
    assert_eq!(status["generation"], 1, "{status:#}");
    assert!(status["last_reload"].is_null(), "{status:#}");
    assert_eq!(reloads(&corral, "success").await, 0);
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_fails_check_and_run_and_is_refused_by_reload() {
    let app = echo("a").await;
    let missing = "[access_log]\npath = \"no-such-folder/access.log\"\n";
    let (ok, text, path) = check(&format!("{missing}{}", simple_config(&[app.addr], "")));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{}:2:8: access_log.path:", path.display()))
            && text.contains("no-such-folder"),
        "{text}"
    );

    // `run` exits 1 at once instead of crash-looping its workers.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        format!("{missing}{}", simple_config(&[app.addr], "")),
    )
    .unwrap();
    let out = output_patiently(
        std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("access_log.path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let good = cluster_config(&[app.addr], "");
    let corral = Corral::start(&good).await;
    corral.write_config(&format!("{missing}{good}"));
    let (status, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("access_log.path"), "{body}");
    assert_eq!(corral.status().await["generation"], 1);
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn access_log_stdout_writes_to_stdout_not_a_file_named_stdout() {
    let app = echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    let text = format!(
        "[access_log]\npath = \"stdout\"\n{}",
        simple_config(&[app.addr], "").replace("workers = 2", "workers = 1")
    );
    std::fs::write(&config, text).unwrap();
    let notices = Notices::bind(&dir.path().join("notify.sock"));
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", notices.address())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = notices.wait_ready(1).await.listeners()["public"];
    assert_eq!(get(addr, "/logged", &[]).await.status, StatusCode::OK);
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let line = patiently("an access log line on stdout", async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        line
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["uri"], "/logged", "{line}");
    assert!(!dir.path().join("stdout").exists());
}

#[tokio::test]
async fn check_diff_works_from_another_folder_than_the_one_corral_was_started_in() {
    let app = echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corral.toml"),
        cluster_config(&[app.addr], ""),
    )
    .unwrap();
    let notices = Notices::bind(&dir.path().join("notify.sock"));
    // Started with a relative path, from the config's folder.
    let _child = tokio::process::Command::new(BIN)
        .args(["run", "--config", "corral.toml"])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", notices.address())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = notices.wait_ready(1).await.admin().unwrap();
    let admin = addr.to_string();
    let (_, body) = admin_call(addr, Method::GET, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    let path = config["path"].as_str().unwrap();
    assert_eq!(
        std::path::Path::new(path),
        dir.path().join("corral.toml"),
        "the master keeps its config's absolute path"
    );

    let next = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        next.path(),
        cluster_config(&[app.addr], "").replace("workers = 2", "workers = 3"),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = output_patiently(
        std::process::Command::new(BIN)
            .args(["check", "--diff", "--admin", &admin, "--config"])
            .arg(next.path())
            .current_dir(elsewhere.path()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("~ runtime: workers 2 -> 3"), "{stdout}");
}

#[test]
fn settings_that_cannot_work_are_refused_with_their_line() {
    let app: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let rest = simple_config(&[app], "");
    let rest = &rest[rest.find("[[listeners]]").unwrap()..];
    let heartbeat = format!("[runtime]\nheartbeat_timeout = \"1ms\"\n{rest}");
    let (ok, text, path) = check(&heartbeat);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{}:2:21: runtime.heartbeat_timeout:",
            path.display()
        )) && text.contains("at least 100ms"),
        "{text}"
    );

    let check_timeout = simple_config(
        &[app],
        "[upstreams.health_check]\ninterval = \"1s\"\ntimeout = \"3s\"\n",
    );
    let (ok, text, _) = check(&check_timeout);
    assert!(!ok);
    assert!(
        text.contains("upstreams.health_check.timeout: 3s is longer than the interval 1s"),
        "{text}"
    );
    // A short interval alone is fine: the default timeout shrinks to fit.
    let short = simple_config(&[app], "[upstreams.health_check]\ninterval = \"1s\"\n");
    let (ok, text, _) = check(&short);
    assert!(ok, "{text}");
}

/// Sends `raw` on a new connection and reads until corral closes it.
fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = StdTcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_malformed_request_or_an_oversized_head_gets_a_body_and_is_counted_and_logged() {
    let app = echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    let text = cluster_config(&[app.addr], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        "listen = \"127.0.0.1:0\"\nmax_header_bytes = \"16 KiB\"\n\n[[routes]]",
    );
    std::fs::write(
        &config,
        format!("[access_log]\npath = \"access.log\"\nformat = \"combined\"\n{text}"),
    )
    .unwrap();
    let corral = Corral::start_at(dir, config).await;
    let addr = corral.addr("public");

    let bad = tokio::task::spawn_blocking(move || exchange(addr, b"NOT A REQUEST\r\n\r\n"))
        .await
        .unwrap();
    assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
    assert!(
        bad.ends_with("\r\n\r\n400 Bad Request: malformed request\n"),
        "{bad}"
    );

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let big = tokio::task::spawn_blocking(move || exchange(addr, big.as_bytes()))
        .await
        .unwrap();
    assert!(
        big.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{big}"
    );
    assert!(
        big.ends_with("\r\n\r\n431 Request Header Fields Too Large: request head too large\n"),
        "{big}"
    );

    // An upstream's own empty 400 is the upstream's answer, passed on as is.
    let strict =
        upstream(|_req| async { http::Response::builder().status(400).body(empty()).unwrap() })
            .await;
    let text = cluster_config(&[strict.addr], "");
    let other = Corral::start(&text).await;
    let mut conn = H1::connect(other.addr("public")).await;
    for _ in 0..2 {
        let reply = conn.get("/", &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.body.is_empty(), "{:?}", reply.body);
    }

    let (_, metrics) = admin_call(corral.admin.unwrap(), Method::GET, "/metrics").await;
    for code in ["400", "431"] {
        let line = format!(
            "corral_requests_total{{route=\"(none)\",upstream=\"(none)\",code=\"{code}\"}} 1"
        );
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    let log_path = corral.config_path.with_file_name("access.log");
    let lines = wait_for_lines(&log_path, 2).await;
    let log = lines.join("\n");
    // The byte counts are the bodies' lengths, as for every answer. Each
    // worker writes its own lines, so the two may come in either order.
    for body in [
        "400 Bad Request: malformed request\n",
        "431 Request Header Fields Too Large: request head too large\n",
    ] {
        let entry = format!("] \"-\" {} {} ", &body[..3], body.len());
        assert!(lines.iter().any(|l| l.contains(&entry)), "{log}");
    }
}

#[test]
fn the_command_line_says_what_it_needs() {
    let run = output_patiently(std::process::Command::new(BIN).arg("run"));
    assert_eq!(
        run.status.code(),
        Some(2),
        "run without --config is bad usage"
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("--config"));

    let admin_alone = output_patiently(std::process::Command::new(BIN).args([
        "check",
        "--config",
        "config/corral.toml",
        "--admin",
        "127.0.0.1:9901",
    ]));
    assert_eq!(admin_alone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&admin_alone.stderr).contains("--diff"));

    let help = cli_ok(&["echo", "--help"]);
    let listen = help
        .lines()
        .find(|l| l.trim_start().starts_with("--listen"))
        .unwrap();
    assert!(listen.contains("IP:PORT"), "{help}");
}

#[test]
fn an_error_says_its_cause_once() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    // Bound and never listening: connections to it are refused.
    let refusing = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .to_string();
    let out =
        output_patiently(std::process::Command::new(BIN).args(["reload", "--admin", &refusing]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_graceful_stop_is_not_logged_as_a_reload_or_a_crash() {
    let app = echo("a").await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let workers = corral.worker_pids().await;
    // Ctrl-C in a terminal: SIGINT to the master and every worker at once.
    let group = nix::unistd::Pid::from_raw(corral.pid() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(corral.wait_exit().await, Some(0));
    let log = corral
        .wait_for_log("corral::master::process: stopped")
        .await;
    assert!(!log.is_empty());
    for wrong in [
        "worker exited; replacing it",
        "listener removed",
        "worker reloaded",
        "keeps exiting",
    ] {
        assert!(
            corral.logged(wrong).is_empty(),
            "a stop logged {wrong:?}: {:?}",
            corral.logged(wrong)
        );
    }
    assert_eq!(workers.len(), 2);
}
