//! The snapshot the data path serves from: one config generation, compiled.
//!
//! Routes, upstreams (with their servers' live state) and listener settings
//! (with TLS) live together in one immutable [`Runtime`], swapped as a whole
//! through an `ArcSwap`, so no request can see new routes with old servers. A
//! request keeps the snapshot it started with until it ends.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ListenerConfig};
use crate::routing::RouteTable;
use crate::tls::{self, TlsError};
use crate::upstream::Upstream;

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
        let previous = previous.map_or(&[][..], |p| &p.upstreams[..]);
        let upstreams = crate::upstream::rebuild(&config.upstreams, previous);
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
