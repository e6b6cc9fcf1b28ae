//! corral: a clustered HTTP reverse proxy and load balancer.
pub mod accept;
pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod echo;
pub mod ipc;
pub mod master;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod routing;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod worker;
