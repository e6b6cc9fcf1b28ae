//! A worker: the data path of one process.
//!
//! - [`process`]: the process itself (signals, CPU pinning, its runtime),
//!   and [`control`]: its side of the control channel (start, reloads,
//!   health, heartbeats, drain).
//! - `server`: the accept loops over the listening sockets, and drain;
//!   `open_connections` (what `max_connections` counts) and `head_budget`
//!   (the memory request heads in flight may hold, and shedding past it).
//! - `connection`: one client connection's set-up (a trusted load
//!   balancer's PROXY header, read in `proxy_header`; TLS or protocol
//!   sniffing), then `http1` (serving and parking) or `http2` (with
//!   `http2_guard` and `http2_stalls`, the limits h2 leaves to corral),
//!   through the `service` every request goes through.
//! - `timeouts` (client-side header and keep-alive timekeeping), `socket`
//!   (the socket layers under hyper), `parse_error` (corral's answers to
//!   unparsable requests) and `batched_writes`.

mod batched_writes;
mod connection;
pub mod control;
mod head_budget;
mod http1;
mod http2;
mod http2_guard;
mod http2_stalls;
mod memory;
mod open_connections;
mod parse_error;
pub mod process;
mod proxy_header;
mod server;
mod service;
mod socket;
mod timeouts;

pub use server::{Drained, Listener, Server, serve};
