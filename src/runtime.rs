//! The snapshot the data path serves from: one config generation, compiled.
//!
//! Routes, upstreams (with their servers' live state) and listener settings
//! (with TLS) live together in one immutable [`Runtime`], swapped as a whole
//! through an `ArcSwap`, so no request can see new routes with old servers. A
//! request keeps the snapshot it started with until it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ListenerConfig};
use crate::routing::RouteTable;
use crate::tls::{self, TlsError};
use crate::upstream::{Server, Upstream};

/// The live snapshot, shared by every connection of a worker.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

#[derive(Debug)]
pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: Vec<Arc<Upstream>>,
    pub listeners: Vec<Arc<ListenerRuntime>>,
}

/// A listener's settings as connections see them.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Runtime {
    /// Compiles `config`. Servers that `previous` already has (same upstream
    /// name, address and settings) keep their state: pools, health, latency.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Self, TlsError> {
        let mut reusable: HashMap<(&str, SocketAddr), &Arc<Server>> = HashMap::new();
        if let Some(prev) = previous {
            for u in &prev.upstreams {
                let same_settings = config
                    .upstream(u.name())
                    .is_some_and(|c| keeps_servers(c, &u.config));
                if same_settings {
                    for s in &u.servers {
                        reusable.insert((u.name(), s.addr), s);
                    }
                }
            }
        }
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(Upstream::new(u, |addr| {
                    let weight = u
                        .servers
                        .iter()
                        .find(|s| s.addr == addr)
                        .map(|s| s.weight.get());
                    reusable
                        .get(&(u.name.as_str(), addr))
                        .filter(|s| Some(s.weight) == weight)
                        .map(|s| Arc::clone(s))
                }))
            })
            .collect();
        let index: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name(), i))
            .collect();
        let routes = RouteTable::new(&config.routes, |name| index.get(name).copied());
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let tls = l.tls.as_ref().map(tls::server_config).transpose()?;
                Ok(Arc::new(ListenerRuntime {
                    config: l.clone(),
                    tls,
                }))
            })
            .collect::<Result<_, TlsError>>()?;
        Ok(Self {
            generation,
            config: Arc::new(config),
            routes,
            upstreams,
            listeners,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }
}

/// Whether servers built for `old` can serve `new` unchanged: everything a
/// server or its pool was built from is the same.
fn keeps_servers(new: &crate::config::UpstreamConfig, old: &crate::config::UpstreamConfig) -> bool {
    new.protocol == old.protocol
        && new.idle_timeout == old.idle_timeout
        && new.max_idle_per_server == old.max_idle_per_server
        && new.fail_timeout == old.fail_timeout
}
