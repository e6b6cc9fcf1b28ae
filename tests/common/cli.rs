//! The binary's one-shot commands (`corral check`, `corral reload`, ...)
//! run to their end, each bounded by [`PATIENCE`].

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use super::corral_fixture::BIN;
use super::patience::PATIENCE;

/// Runs the corral binary with `args` to its end, asserts that it succeeded,
/// and returns its stdout.
pub fn cli_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = output_patiently(Command::new(BIN).args(args));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `corral check` on `config`; returns (success, stdout + stderr, path).
pub fn check(config: &str) -> (bool, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, config).unwrap();
    let out = output_patiently(Command::new(BIN).args(["check", "--config"]).arg(&path));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Keep the path printable after the temp dir is gone.
    (out.status.success(), text, path)
}

/// Runs `command` to its end with stdin closed, as `Command::output` does,
/// but kills it and panics after [`PATIENCE`].
pub fn output_patiently(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child)
}

/// Collects a spawned child's output (its pipes are the caller's choice);
/// kills it and panics if it runs longer than [`PATIENCE`].
pub fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (done_tx, done) = std::sync::mpsc::channel();
    // wait_with_output reads both pipes to their end; a thread does that
    // while this one watches the clock.
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Not reaped yet (its waiter is still blocked), so the pid is still ours.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("process {pid} still running after {PATIENCE:?}");
        }
    }
}
