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
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC`, while this master serves,
//!   when the manager asks for a watchdog (`WatchdogSec=`) and
//!   `WATCHDOG_PID` is unset or names this process (sd_watchdog_enabled(3)).
//!   The master's loop sends it ([`Notifier::watchdog_due`] is one of its
//!   branches), so a loop that is stuck stops the pings and the manager
//!   restarts the service. The one wait in the loop that may outlast a
//!   ping interval, a binary upgrade's for its successor (up to
//!   `runtime.upgrade_timeout`), pings as it waits ([`Notifier::pinging`]).
//!   The successor inherits `WATCHDOG_USEC` without `WATCHDOG_PID`
//!   ([`hand_on_watchdog`]): `WATCHDOG_PID` names the old master, and the
//!   new one is the process to ping once the old one names it `MAINPID`.
//!   It starts pinging when it serves, as it says `READY=1`; that first
//!   ping may reach the manager before the old master's `MAINPID` and be
//!   refused, so the datagram with `MAINPID` pings too.
//!
//! Workers never inherit `NOTIFY_SOCKET` nor the watchdog's variables: the
//! master alone speaks for the service. Without `NOTIFY_SOCKET` nothing is
//! sent. This module only reports what the master did; a datagram that
//! cannot be sent is logged at debug and forgotten, so readiness reporting
//! never holds up or stops the master.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{self, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Interval, MissedTickBehavior};

use super::generation::{Generation, Summary};
use super::reload::{ReloadError, Reloaded};

/// Where the service manager listens; removed from every worker's environment.
pub const ENV_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog's interval, in µs, and the process it is for; removed from
/// every worker's environment.
pub const ENV_WATCHDOG_USEC: &str = "WATCHDOG_USEC";
pub const ENV_WATCHDOG_PID: &str = "WATCHDOG_PID";

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
    /// When the next `WATCHDOG=1` is due, if the manager wants them.
    watchdog: Option<Interval>,
}

impl Notifier {
    /// The admin endpoint moved (a reload): later `READY=1`s say where.
    pub(super) fn set_admin(&mut self, admin: Option<SocketAddr>) {
        self.admin = admin;
    }

    /// Reads `NOTIFY_SOCKET` and the watchdog's variables; a master
    /// without `NOTIFY_SOCKET` sends nothing. Called in the runtime, whose
    /// timer the watchdog's interval is.
    pub(super) fn from_env(admin: Option<SocketAddr>) -> Self {
        let to = std::env::var_os(ENV_SOCKET).and_then(|value| match address(&value) {
            Ok(to) => Some(to),
            Err(e) => {
                tracing::debug!(socket = ?value, error = %e, "NOTIFY_SOCKET names no usable socket; not notifying");
                None
            }
        });
        let watchdog = to
            .as_ref()
            .and_then(|_| ping_interval(sd_notify::watchdog_enabled()))
            .map(|every| {
                tracing::info!(every = ?every, "the service manager's watchdog is on; pinging it");
                // After a stall, the next ping a whole interval later: a
                // burst would not make up for the pings missed.
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval
            });
        Self {
            to,
            phase: Phase::Starting,
            admin,
            watchdog,
        }
    }

    /// Completes when the next `WATCHDOG=1` is due: the first as soon as
    /// this master serves, then every interval. Never without a watchdog,
    /// before this master serves (the manager's start timeout covers that,
    /// and a successor is not the main process yet) or once it has handed
    /// over.
    pub(super) async fn watchdog_due(&mut self) {
        match &mut self.watchdog {
            Some(interval) if self.phase == Phase::Serving => {
                interval.tick().await;
            }
            _ => std::future::pending().await,
        }
    }

    /// `WATCHDOG=1`: the master's loop is alive.
    pub(super) fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Waits for `work`, a wait of the master's loop that may outlast a
    /// ping interval (a binary upgrade's), sending `WATCHDOG=1` as they
    /// fall due meanwhile.
    pub(super) async fn pinging<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = self.watchdog_due() => self.watchdog(),
            }
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
    /// With a watchdog, the same datagram pings it: the successor's first
    /// ping, sent as it said `READY=1`, may have come before the manager
    /// took it for the main process and been refused, and its next is half
    /// an interval away.
    pub(super) fn handed_over(&mut self, successor: u32) {
        let status = format!("handed over to the new master {successor}");
        let mut states = vec![NotifyState::MainPid(successor)];
        if self.watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        states.push(NotifyState::Status(&status));
        self.send(&states);
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

/// How often to ping a watchdog of `timeout`: at half of it, as
/// sd_watchdog_enabled(3) advises; none for no watchdog or a zero one
/// (which systemd never sets, and a timer cannot tick at).
fn ping_interval(timeout: Option<Duration>) -> Option<Duration> {
    timeout.filter(|t| !t.is_zero()).map(|t| t / 2)
}

/// Sets up the watchdog for a binary upgrade's successor, which inherits
/// this master's environment. A watchdog that is this master's
/// (`WATCHDOG_PID` unset or naming it) passes on with `WATCHDOG_PID`
/// removed, since it names the old master: the successor pings it once it
/// serves, with the same `WATCHDOG_USEC`, and the manager takes its pings
/// once the old master has named it `MAINPID` (`NotifyAccess=main`). A
/// watchdog meant for another process is not passed on.
pub(super) fn hand_on_watchdog(command: &mut tokio::process::Command) {
    command.env_remove(ENV_WATCHDOG_PID);
    if sd_notify::watchdog_enabled().is_none() {
        command.env_remove(ENV_WATCHDOG_USEC);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        let timeout = Some(Duration::from_micros(200_000));
        assert_eq!(ping_interval(timeout), Some(Duration::from_millis(100)));
        assert_eq!(ping_interval(Some(Duration::ZERO)), None);
        assert_eq!(ping_interval(None), None);
    }
}
