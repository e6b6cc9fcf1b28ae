//! `corral worker`: the worker process, started by the master.
//!
//! The master re-executes its own binary with the control channel as
//! stdin. This sets the process up (signals, the master's death signal,
//! CPU pinning) and runs [`control::serve`](super::control::serve) on a
//! single-threaded runtime. SIGINT is blocked from the start: a terminal's
//! Ctrl-C reaches the whole process group, and the master, which gets it
//! too, stops the workers in order. If the master dies, the kernel sends
//! SIGTERM, which drains the worker.

use std::os::fd::AsFd;

use nix::sys::signal::Signal;

pub use super::control::WorkerError;

/// Environment variables the master sets for its workers.
pub const ENV_MASTER_PID: &str = "CORRAL_MASTER_PID";
pub const ENV_SLOT: &str = "CORRAL_WORKER_SLOT";
pub const ENV_CPU_AFFINITY: &str = "CORRAL_CPU_AFFINITY";

/// Runs the worker; returns when it has drained.
pub fn run() -> Result<(), WorkerError> {
    // Blocked from the first instant (and so for every thread the runtime
    // starts): a Ctrl-C that reaches the whole process group while the
    // worker starts must not kill it either. The master stops it in order.
    nix::sys::signal::SigSet::from(Signal::SIGINT).thread_block()?;
    // If the master dies, the kernel sends SIGTERM: drain and exit.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    let master = std::env::var(ENV_MASTER_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if master.is_some_and(|pid| nix::unistd::getppid().as_raw() != pid) {
        // It died before the death signal was armed.
        return Err(WorkerError::MasterGone);
    }
    if std::env::var(ENV_CPU_AFFINITY).is_ok() {
        let slot = std::env::var(ENV_SLOT)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        pin_to_cpu(slot)?;
    }
    let control = std::io::stdin().as_fd().try_clone_to_owned()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(super::control::serve(control))
}

/// Pins this process to the slot's CPU among those it may run on.
fn pin_to_cpu(slot: usize) -> Result<(), nix::Error> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if let Some(&cpu) = cpus.get(slot % cpus.len().max(1)) {
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &set)?;
        tracing::info!(cpu, "pinned to CPU");
    }
    Ok(())
}
