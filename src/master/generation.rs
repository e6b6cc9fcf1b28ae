//! A config generation: what the master publishes to every slot
//! supervisor at start and at each reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::sockets::ListenerSockets;
use crate::plan::Plan;
use crate::upstream::Upstream;

/// One config generation: the file's text, the plan made from it (what
/// every worker is sent and serves), its listening sockets, and the
/// master's own copies of its upstreams, whose servers carry the health
/// checks' verdicts. All of it changes at once, so `/status` never shows a
/// generation with another's upstreams.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub path: PathBuf,
    pub text: String,
    /// A digest of the files the config names (certificates, keys), as the
    /// plan holds them, so that files renewed under an unchanged text still
    /// make a new generation.
    pub files: u64,
    pub plan: Arc<Plan>,
    pub sockets: Arc<Vec<ListenerSockets>>,
    /// Health-checked here; workers get the verdicts, not these objects.
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    pub loaded_at: SystemTime,
}

impl Generation {
    /// The first generation, from the file as read at start.
    pub fn first(path: PathBuf, text: String, plan: Plan, sockets: Vec<ListenerSockets>) -> Self {
        Self {
            number: 1,
            path,
            text,
            files: files_digest(&plan),
            upstreams: Arc::new(crate::upstream::rebuild(&plan.upstreams, &[])),
            plan: Arc::new(plan),
            sockets: Arc::new(sockets),
            loaded_at: SystemTime::now(),
        }
    }

    /// The generation after this one. Upstream servers whose settings are
    /// unchanged keep their state (the health checks' verdicts among it).
    pub fn next(&self, text: String, plan: Plan, sockets: Vec<ListenerSockets>) -> Self {
        Self {
            number: self.number + 1,
            path: self.path.clone(),
            text,
            files: files_digest(&plan),
            upstreams: Arc::new(crate::upstream::rebuild(&plan.upstreams, &self.upstreams)),
            plan: Arc::new(plan),
            sockets: Arc::new(sockets),
            loaded_at: SystemTime::now(),
        }
    }

    /// The same generation with no listening sockets: a stopping master's
    /// last, which lets every socket close as its worker stops accepting.
    pub fn without_sockets(&self) -> Self {
        Self {
            sockets: Arc::new(Vec::new()),
            ..self.clone()
        }
    }

    /// Slot `slot`'s socket of every listener, by name.
    pub fn slot_sockets(
        &self,
        slot: usize,
    ) -> impl Iterator<Item = (&str, &std::net::TcpListener, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(move |l| Some((l.name.as_str(), l.slots.get(slot)?, l.bound)))
    }
}

/// A digest of the certificate and key bytes `plan` holds.
pub fn files_digest(plan: &Plan) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let pems = plan
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| &t.certificates)
        .flat_map(|c| [&c.pem.chain, &c.pem.key]);
    for pem in pems {
        hasher.update(&(pem.len() as u64).to_le_bytes());
        hasher.update(pem.as_bytes());
    }
    hasher.digest()
}
