//! corral: a clustered HTTP reverse proxy and load balancer.
pub mod balance;
pub mod config;
pub mod routing;
pub mod tls;
