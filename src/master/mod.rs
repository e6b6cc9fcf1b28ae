//! The master process (`corral run`): the control plane.
//!
//! It validates the config into a plan, owns every listening socket (one
//! `SO_REUSEPORT` socket per listener and worker slot, see [`sockets`]),
//! spawns one worker process per slot by re-executing its own binary,
//! supervises them (`slot`), hands what queues on a slot without a serving
//! worker to the others' workers (`relay`), steers new connections away
//! from retired slots' sockets (`steering`), applies config reloads
//! (`reload`, confirmed without holding up anything else) from
//! SIGHUP, the admin endpoint and a file watcher (`filewatch`), runs the
//! active health checks once for the whole cluster and sends the results to
//! every worker ([`health`]), answers the admin endpoint
//! (`admin_backend`), tells a service manager when it is ready, reloading or
//! stopping (`notify`), and handles signals: SIGTERM/SIGINT graceful stop,
//! SIGQUIT fast stop, SIGUSR2 binary upgrade ([`upgrade`]). What it holds
//! about the running config is one `generation`; its state and event loop
//! are in `process`. It never serves client traffic itself: a connection
//! it relays is accepted here and served by a worker.

mod acme;
mod admin_backend;
pub mod discovery;
mod ejections;
mod filewatch;
mod generation;
mod guard;
pub mod health;
mod notify;
mod process;
mod relay;
mod reload;
mod slot;
pub mod sockets;
mod status;
mod steering;
pub mod upgrade;

pub use process::{RunError, run};
pub use reload::ReloadError;
