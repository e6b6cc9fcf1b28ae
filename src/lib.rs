//! corral: a clustered HTTP reverse proxy and load balancer.
//!
//! # Processes
//!
//! `corral run` starts the master: the control path. It reads and checks
//! the config once, turning it into a [`plan::Plan`] (every value resolved,
//! certificates read), binds every listening socket, and starts one worker
//! process per slot by re-executing its own binary (`corral worker`), with a
//! control channel as its stdin. It supervises the workers, runs the health
//! checks, applies reloads and binary upgrades, and serves the admin
//! endpoint; it never serves client traffic. Each worker receives the plan
//! and its sockets over the control channel ([`ipc`]) and serves clients on
//! a single-threaded runtime: the data path. Workers count into shared
//! memory that the master reads ([`metrics`]).
//!
//! # The rule
//!
//! The data path never imports the control path. Nothing under [`worker`],
//! [`proxy`], [`proxy_protocol`], [`upstream`], [`balance`], [`routing`],
//! [`body`] or [`snapshot`], nor [`plan`], [`tls`] or [`challenges`] which it shares, uses
//! [`master`], [`admin`] or [`config`], directly or through another file: a
//! worker reads no file and parses no config, it builds what it serves from
//! the plan alone. No two source files import each other, directly or around a loop.
//! No file is over 800 lines, no function over 100. `tests/layout/` holds
//! the source tree to all of this.
//!
//! # Map
//!
//! Control path (the master, and `corral check`):
//! - [`config`]: the TOML file -> [`plan::Plan`], every problem as
//!   `FILE:LINE:COL: reason`; `config::diff` for reload reports,
//!   `config::schema` for the file's JSON Schema (`corral schema`).
//! - [`master`]: sockets per slot, slot supervision, reload and the reload
//!   guard, file watch, health checks, ACME orders, `/status`, binary
//!   upgrade, signals.
//! - [`admin`]: the admin endpoint's routes (the status page at `/`), and
//!   its client (`corral reload`).
//!
//! Shared by both:
//! - [`plan`]: the validated, serialisable description of what to serve.
//! - [`ipc`]: the control channel's messages and framing.
//! - [`metrics`]: metric families, shared-memory counters, cluster totals.
//! - [`tls`]: certificates from PEM bytes, SNI, OCSP staples, the rustls
//!   server config, clients' certificates (mTLS) and their subjects;
//!   `tls::inspect` for what a certificate says of itself.
//! - [`challenges`]: the ACME challenges the master orders certificates
//!   with, and how workers answer them.
//! - [`accept`]: the accept step that never spins.
//! - [`logging`]: text or JSON lines to stderr, one format per corral.
//!
//! Data path (a worker):
//! - [`worker`]: the process, its control channel, accept loops, and each
//!   connection (TLS or sniffing, HTTP/1.1 with parking, HTTP/2, timeouts).
//! - [`snapshot`]: one generation's plan compiled into what requests use.
//! - [`proxy`]: one request: route, rewrite, pick, forward, answer; errors.
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer sends
//!   first, parsed.
//! - [`routing`]: the route table. [`balance`]: the policies.
//! - [`upstream`]: servers, their live state, pools and the connector.
//! - [`body`]: request and response bodies, streamed.
//! - [`access_log`]: access log lines and their writer thread.
//! - [`echo`]: the demo upstream (`corral echo`).
pub mod accept;
pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod challenges;
pub mod config;
pub mod echo;
pub mod ipc;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod proxy_protocol;
pub mod routing;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod worker;
