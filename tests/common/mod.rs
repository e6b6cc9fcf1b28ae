//! Shared test fixtures: the real `corral` binary on a config written to a
//! temp dir, in-process proxies for paused-clock tests, real upstreams on
//! 127.0.0.1:0 (among them a raw one that answers with scripted bytes), and
//! small HTTP clients, each concern in its own file below.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod cli;
mod clients;
mod configs;
mod corral_fixture;
mod dns;
mod files;
mod in_process;
mod metrics;
mod notices;
mod openssl;
mod patience;
mod pebble;
mod pki;
mod raw_requests;
mod recording;
mod scripted;
mod sockets;
mod upstreams;

// Each test binary uses part of the fixtures, so some of these re-exports
// go unused in each one.
#[allow(unused_imports)]
pub use self::{
    admin::*, cli::*, clients::*, configs::*, corral_fixture::*, dns::*, files::*, in_process::*,
    metrics::*, notices::*, openssl::*, patience::*, pebble::*, pki::*, raw_requests::*,
    recording::*, scripted::*, sockets::*, upstreams::*,
};
