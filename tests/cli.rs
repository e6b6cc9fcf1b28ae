//! The command line around serving (README "Command line"): `--version`,
//! shell completions, and `--log-format json` for the master and the
//! workers it starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// How long a loaded machine may take to start a corral.
const PATIENCE: Duration = Duration::from_secs(30);

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "corral {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_prints_the_crate_version() {
    assert_eq!(
        stdout_of(&["--version"]).trim(),
        format!("corral {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        assert!(!script.is_empty(), "{shell}: empty");
        assert!(script.contains("run"), "{shell}: no `run` in\n{script}");
        assert!(script.contains("check"), "{shell}: no `check` in\n{script}");
    }
}

/// Runs corral on a small config (two workers) with `args` and `env`
/// until it says it is ready, stops it with SIGTERM, and returns every
/// line it wrote to stderr.
fn stderr_of_a_run(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        "[runtime]\nworkers = 2\nshutdown_timeout = \"2s\"\n\n\
         [[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"app\"\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("CORRAL_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            eprintln!("[corral] {line}");
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("corral never said it is ready");
        let ready = line.contains("ready") && line.contains("workers");
        lines.push(line);
        if ready {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

/// Every line a JSON object with the fields a log pipeline indexes; some
/// from the master, some from a worker.
fn assert_json_lines(lines: &[String]) {
    let mut spans = Vec::new();
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        assert!(value["target"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
        spans.push(value["span"]["name"].as_str().unwrap_or("").to_owned());
    }
    assert!(spans.iter().any(|s| s == "master"), "{lines:#?}");
    assert!(spans.iter().any(|s| s == "worker"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"stopped\"")),
        "{lines:#?}"
    );
}

#[test]
fn log_format_json_makes_every_line_of_master_and_workers_json() {
    // The flag wins over the environment.
    let lines = stderr_of_a_run(&["--log-format", "json"], &[("CORRAL_LOG_FORMAT", "text")]);
    assert_json_lines(&lines);
}

#[test]
fn corral_log_format_json_in_the_environment_does_the_same() {
    assert_json_lines(&stderr_of_a_run(&[], &[("CORRAL_LOG_FORMAT", "json")]));
    let text = stderr_of_a_run(&["--log-format", "text"], &[("CORRAL_LOG_FORMAT", "json")]);
    assert!(
        text.iter().all(|l| !l.starts_with('{')),
        "the flag wins: {text:#?}"
    );
}
