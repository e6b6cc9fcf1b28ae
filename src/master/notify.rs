//! Readiness for a service manager: the systemd notification protocol
//! (sd_notify(3)), so that a `Type=notify` or `Type=notify-reload` unit, or a
//! test, knows when corral serves and where.
//!
//! When `NOTIFY_SOCKET` names a socket (a path, or `@name` in Linux's
//! abstract namespace), the master sends one datagram per change:
//! - `READY=1` once every worker slot serves, and again when a reload ends,
//!   whether it applied or not (the old generation serves either way; the
//!   `STATUS` says which). Every `READY=1` carries `MAINPID`, `STATUS` and
//!   where corral is: `X_CORRAL_GENERATION=N`,
//!   `X_CORRAL_LISTENERS=NAME=ADDR NAME=ADDR …` (each listener's bound
//!   address; names never hold a space or `=`) and, with an admin endpoint,
//!   `X_CORRAL_ADMIN=ADDR`.
//! - `RELOADING=1` with `MONOTONIC_USEC` when a reload begins.
//! - `STOPPING=1` when a stop begins.
//! - After a binary upgrade, the old master names its successor as `MAINPID`
//!   and falls silent: it must not say `STOPPING=1`, since the service goes
//!   on. The successor inherits `NOTIFY_SOCKET` and says `READY=1` itself.
//!
//! Workers never inherit `NOTIFY_SOCKET`: the master alone speaks for the
//! service. Without it nothing is sent. This module only reports what the
//! master did; a datagram that cannot be sent is logged at debug and
//! forgotten, so readiness reporting never holds up or stops the master.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{self, UnixDatagram};

use sd_notify::NotifyState;

use super::generation::{Generation, Summary};
use super::reload::{ReloadError, Reloaded};

/// Where the service manager listens; removed from every worker's environment.
pub const ENV_SOCKET: &str = "NOTIFY_SOCKET";

/// Where this master is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not ready yet: a reload now (a file change during startup) is no
    /// reload of the service, and says nothing.
    Starting,
    Serving,
    /// A successor is the service's main process now; this master says
    /// nothing more.
    HandedOver,
}

/// The master's end of the notification socket.
pub(super) struct Notifier {
    to: Option<net::SocketAddr>,
    phase: Phase,
    /// The admin endpoint's bound address, said in every `READY=1`.
    admin: Option<SocketAddr>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; a master without it sends nothing.
    pub(super) fn from_env(admin: Option<SocketAddr>) -> Self {
        let to = std::env::var_os(ENV_SOCKET).and_then(|value| match address(&value) {
            Ok(to) => Some(to),
            Err(e) => {
                tracing::debug!(socket = ?value, error = %e, "NOTIFY_SOCKET names no usable socket; not notifying");
                None
            }
        });
        Self {
            to,
            phase: Phase::Starting,
            admin,
        }
    }

    /// `READY=1`: every slot serves `generation`.
    pub(super) fn serving(&mut self, generation: &Generation, workers: usize) {
        let status = format!(
            "serving generation {} on {workers} workers",
            generation.number
        );
        self.ready(&status, &Summary::of(generation));
        self.phase = Phase::Serving;
    }

    /// `READY=1` at the end of a reload, saying how it went; `current` is
    /// the generation serving now.
    pub(super) fn reloaded(&self, current: &Summary, result: &Result<Reloaded, ReloadError>) {
        if self.phase != Phase::Serving {
            return;
        }
        let number = current.number;
        let status = match result {
            Ok(done) if done.unchanged => format!("config unchanged; serving generation {number}"),
            Ok(_) => format!("reloaded; serving generation {number}"),
            // One line: a newline would end the STATUS field.
            Err(e) => format!(
                "reload failed; still serving generation {number}: {}",
                e.lines().first().map_or("", String::as_str)
            ),
        };
        self.ready(&status, current);
    }

    /// `RELOADING=1`: a reload begins. `Type=notify-reload` waits for it
    /// after SIGHUP, and for the `READY=1` that ends it.
    pub(super) fn reloading(&self) {
        if self.phase != Phase::Serving {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the config"),
            ]),
            // systemd 253 and later fail a reload whose RELOADING=1 comes
            // without the time, so none is sent without it.
            Err(e) => {
                tracing::debug!(error = %e, "cannot read CLOCK_MONOTONIC; not notifying the reload")
            }
        }
    }

    /// `STOPPING=1`, unless a successor has taken over.
    pub(super) fn stopping(&self, fast: bool) {
        if self.phase == Phase::HandedOver {
            return;
        }
        let status = if fast {
            "stopping now"
        } else {
            "stopping: draining connections"
        };
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Names the new master of a binary upgrade as the service's main
    /// process, so that a manager which takes notices from the main
    /// process alone (systemd's default `NotifyAccess=main`) follows it.
    pub(super) fn handed_over(&mut self, successor: u32) {
        let status = format!("handed over to the new master {successor}");
        self.send(&[
            NotifyState::MainPid(successor),
            NotifyState::Status(&status),
        ]);
        self.phase = Phase::HandedOver;
    }

    /// `READY=1` with where corral listens.
    fn ready(&self, status: &str, generation: &Summary) {
        let listeners: Vec<String> = generation
            .listeners
            .iter()
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect();
        let listeners = format!("X_CORRAL_LISTENERS={}", listeners.join(" "));
        let number = format!("X_CORRAL_GENERATION={}", generation.number);
        let admin = self.admin.map(|a| format!("X_CORRAL_ADMIN={a}"));
        let mut states = vec![
            NotifyState::Ready,
            NotifyState::MainPid(std::process::id()),
            NotifyState::Status(status),
            NotifyState::Custom(&number),
            NotifyState::Custom(&listeners),
        ];
        states.extend(admin.as_deref().map(NotifyState::Custom));
        self.send(&states);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(to) = &self.to else {
            return;
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = send_to(to, message.as_bytes()) {
            tracing::debug!(socket = ?to, error = %e, "could not notify the service manager");
        }
    }
}

/// `NOTIFY_SOCKET`'s value as an address: `@` starts a name in the
/// abstract namespace (sd_notify(3)), anything else is a path.
fn address(value: &OsStr) -> io::Result<net::SocketAddr> {
    match value.as_bytes().strip_prefix(b"@") {
        Some(name) => net::SocketAddr::from_abstract_name(name),
        None => net::SocketAddr::from_pathname(value),
    }
}

/// One datagram, without waiting: a manager that has stopped reading must
/// not stall the master's loop (a full queue is an error, logged and
/// forgotten). The socket is made per message: notices are rare.
fn send_to(to: &net::SocketAddr, message: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let sent = socket.send_to_addr(message, to)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", message.len()),
        ))
    }
}
