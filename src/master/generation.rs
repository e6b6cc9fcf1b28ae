//! A config generation: what the master publishes to every slot
//! supervisor at start and at each reload, and what it shows of the
//! listeners' certificates (read once per generation, not per scrape).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::sockets::ListenerSockets;
use super::steering::PortSocket;
use crate::plan::{CertificateConfig, Certificates, CertifiedPem, ClientAuth, Plan, UpstreamTls};
use crate::tls::inspect::CertificateFacts;
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
    pub plan: Arc<Plan>,
    pub sockets: Arc<Vec<ListenerSockets>>,
    /// Health-checked here; workers get the verdicts, not these objects.
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    /// Every certificate of every TLS listener, in config order.
    pub certificates: Arc<Vec<ListenerCertificate>>,
    pub loaded_at: SystemTime,
}

/// One certificate of a TLS listener, as `/status` and the expiry metric
/// show it.
#[derive(Debug, Clone)]
pub struct ListenerCertificate {
    pub listener: String,
    pub facts: CertificateFacts,
    pub source: CertificateSource,
    /// The `ocsp` file, when one is configured.
    pub ocsp: Option<OcspFile>,
}

/// Where a listener's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// `cert` and `key` files, read with the config.
    File { cert: PathBuf, key: PathBuf },
    /// Ordered by the master from `directory`, kept in `state_dir`; a
    /// `placeholder` is self-signed, serving until the first issuance.
    Acme {
        directory: String,
        state_dir: PathBuf,
        placeholder: bool,
    },
}

#[derive(Debug, Clone)]
pub struct OcspFile {
    pub path: PathBuf,
    /// Whether it held a response, now stapled (else it did not exist).
    pub stapled: bool,
}

impl Generation {
    /// The first generation, from the file as read at start.
    pub fn first(path: PathBuf, text: String, plan: Plan, sockets: Vec<ListenerSockets>) -> Self {
        Self::build(1, path, text, plan, sockets, &[])
    }

    /// The generation after this one. Upstream servers whose settings are
    /// unchanged keep their state (the health checks' verdicts among it).
    pub fn next(&self, text: String, plan: Plan, sockets: Vec<ListenerSockets>) -> Self {
        let path = self.path.clone();
        Self::build(self.number + 1, path, text, plan, sockets, &self.upstreams)
    }

    /// This generation on `plan`, which only the master changed (servers
    /// DNS gave its names, a new session-ticket key): the same number,
    /// file and sockets; servers that stay keep their state.
    pub fn republished(&self, plan: Plan) -> Self {
        let mut next = Self::build(
            self.number,
            self.path.clone(),
            self.text.clone(),
            plan,
            Vec::new(),
            &self.upstreams,
        );
        next.sockets = self.sockets.clone();
        next.loaded_at = self.loaded_at;
        next
    }

    fn build(
        number: u64,
        path: PathBuf,
        text: String,
        plan: Plan,
        sockets: Vec<ListenerSockets>,
        previous: &[Arc<Upstream>],
    ) -> Self {
        Self {
            number,
            path,
            text,
            upstreams: Arc::new(crate::upstream::rebuild(
                &plan.upstreams,
                previous,
                plan.sticky_key.as_ref(),
            )),
            certificates: Arc::new(listener_certificates(&plan)),
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
    ) -> impl Iterator<Item = (&str, &Arc<PortSocket>, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(move |l| Some((l.name.as_str(), l.slots.get(slot)?, l.bound)))
    }
}

/// A generation's number and where its listeners are bound: what a reload
/// pending confirmation keeps of it (the service manager is told this when
/// it ends), rather than the generation, whose sockets would stay open with
/// it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub number: u64,
    /// Each listener's name and bound address.
    pub listeners: Vec<(String, SocketAddr)>,
}

impl Summary {
    pub fn of(generation: &Generation) -> Self {
        Self {
            number: generation.number,
            listeners: generation
                .sockets
                .iter()
                .map(|l| (l.name.clone(), l.bound))
                .collect(),
        }
    }
}

/// What `plan`'s listeners' certificates say of themselves. The config
/// check read each one (see `config::validate::listener`), so none is left
/// out but for a reason logged here.
fn listener_certificates(plan: &Plan) -> Vec<ListenerCertificate> {
    let entries = plan.listeners.iter().flat_map(|l| {
        let certificates = l.tls.iter().flat_map(|t| &t.certificates);
        certificates.map(move |c| (l.name.as_str(), c))
    });
    entries
        .filter_map(|(listener, c)| match CertificateFacts::of(&c.pem) {
            Ok(facts) => Some(ListenerCertificate {
                listener: listener.to_owned(),
                facts,
                source: match &c.acme {
                    Some(acme) => CertificateSource::Acme {
                        directory: acme.directory.clone(),
                        state_dir: acme.state_dir.clone(),
                        placeholder: acme.placeholder,
                    },
                    None => CertificateSource::File {
                        cert: c.cert.clone(),
                        key: c.key.clone(),
                    },
                },
                ocsp: c.ocsp.as_ref().map(|o| OcspFile {
                    path: o.path.clone(),
                    stapled: o.response.is_some(),
                }),
            }),
            Err(e) => {
                tracing::warn!(listener, cert = %c.cert.display(), error = %e, "certificate left out of /status and metrics");
                None
            }
        })
        .collect()
}

/// Every certificate and key `plan` holds: the listeners', then the
/// upstreams' client certificates.
fn pairs(plan: &Plan) -> impl Iterator<Item = &CertificateConfig> {
    let listeners = plan.listeners.iter().filter_map(|l| l.tls.as_ref());
    let clients = plan
        .upstreams
        .iter()
        .filter_map(|u| u.tls.as_ref()?.client.as_ref());
    listeners.flat_map(|t| &t.certificates).chain(clients)
}

/// The upstreams' TLS settings.
fn upstream_tls(plan: &Plan) -> impl Iterator<Item = &UpstreamTls> {
    plan.upstreams.iter().filter_map(|u| u.tls.as_ref())
}

/// The CA certificates listeners check their clients' against.
fn client_cas(plan: &Plan) -> impl Iterator<Item = &ClientAuth> {
    plan.listeners
        .iter()
        .filter_map(|l| l.tls.as_ref()?.client_auth.as_ref())
}

/// The CA bundles `plan` read from files, and what it read: upstreams'
/// `tls.ca`, then listeners' `tls.client_ca`.
fn bundles(plan: &Plan) -> impl Iterator<Item = (&PathBuf, &Certificates)> {
    let upstreams = upstream_tls(plan).filter_map(|t| Some((t.ca.as_ref()?, &t.roots)));
    upstreams.chain(client_cas(plan).map(|a| (&a.ca, &a.roots)))
}

/// A certificate chain and key, and the OCSP response stapled with them.
type Served<'a> = (&'a CertifiedPem, Option<&'a [u8]>);

/// The certificate chains and keys (each with its OCSP response) and the
/// CA certificates `plan` holds, in order: what a reload compares to see
/// whether files renewed under an unchanged text call for a new generation.
pub fn certificates(plan: &Plan) -> (Vec<Served<'_>>, Vec<&Certificates>) {
    let chains = pairs(plan).map(|c| (&c.pem, c.ocsp_response())).collect();
    let roots = upstream_tls(plan).map(|t| &t.roots);
    (
        chains,
        roots.chain(client_cas(plan).map(|a| &a.roots)).collect(),
    )
}

/// The certificate, key, OCSP and CA files `plan` was read from (an OCSP
/// file also before it exists): what the file watch follows besides the
/// config.
pub fn tls_files(plan: &Plan) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = pairs(plan)
        .flat_map(|c| {
            let ocsp = c.ocsp.as_ref().map(|o| o.path.clone());
            [c.cert.clone(), c.key.clone()].into_iter().chain(ocsp)
        })
        .chain(bundles(plan).map(|(path, _)| path.clone()))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Whether any certificate, key, OCSP or CA file of `plan` now reads
/// differently from what `plan` holds (or cannot be read; an OCSP file
/// that did not exist and still does not is unchanged).
pub fn tls_files_changed(plan: &Plan) -> bool {
    let text = |path: &PathBuf| std::fs::read_to_string(path).ok();
    let pair_changed = |c: &CertificateConfig| {
        if c.acme.as_ref().is_some_and(|a| a.placeholder) {
            // Nothing was issued when it was read: whether something is now.
            return c.cert.exists();
        }
        text(&c.cert).as_deref() != Some(c.pem.chain.as_str())
            || text(&c.key).as_deref() != Some(c.pem.key.as_str())
            || c.ocsp
                .as_ref()
                .is_some_and(|o| std::fs::read(&o.path).ok().as_deref() != c.ocsp_response())
    };
    let bundle = |path: &PathBuf| {
        use rustls::pki_types::pem::PemObject as _;
        let pem = std::fs::read(path).ok()?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .map(|c| c.to_vec())
            .collect::<Vec<_>>();
        Some(certs)
    };
    pairs(plan).any(pair_changed)
        || bundles(plan).any(|(path, roots)| bundle(path).as_ref() != Some(&roots.0))
}
