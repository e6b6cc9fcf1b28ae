//! TLS for listeners: decoding certificates, choosing one by SNI, and the
//! rustls server config (ALPN offers h2 and http/1.1); [`client`] makes the
//! configs corral connects to TLS upstreams with, and [`inspect`] reads what
//! a certificate says for the master to show. Certificates (and their OCSP
//! responses, stapled to handshakes) arrive as bytes in the plan; nothing
//! here reads a file.
//!
//! Certificates are matched by the DNS names in their subjectAltName; the first
//! certificate of a listener answers clients that send no SNI or a name no
//! certificate covers, as nginx's default server does.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::plan::{CertifiedPem, TicketKeys, TlsConfig, TlsVersion};

pub mod client;
pub mod inspect;
mod tickets;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("not a PEM certificate chain: {0}")]
    Chain(#[source] pem::Error),
    #[error("not a PEM private key: {0}")]
    Key(#[source] pem::Error),
    #[error("the key does not fit the certificate: {0}")]
    Mismatch(#[source] rustls::Error),
    #[error("TLS settings rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("no usable CA certificate to verify servers with")]
    NoRoots,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Decodes a PEM certificate chain and its PEM private key, checking that
/// the key fits the chain's first certificate.
pub fn certified_key(pem: &CertifiedPem) -> Result<CertifiedKey, TlsError> {
    let (chain, key) = chain_and_key(pem)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Mismatch)
}

/// Decodes a PEM certificate chain (at least one certificate) and its PEM
/// private key.
fn chain_and_key(
    pem: &CertifiedPem,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .and_then(|chain| {
            if chain.is_empty() {
                Err(pem::Error::NoItemsFound)
            } else {
                Ok(chain)
            }
        })
        .map_err(TlsError::Chain)?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(TlsError::Key)?;
    Ok((chain, key))
}

/// The server config for one TLS listener. With session tickets on and
/// `keys`, tickets are sealed with them; on without keys (a plan only
/// checked), rustls's own per-process ticketer stands in.
pub fn server_config(
    tls: &TlsConfig,
    keys: Option<&TicketKeys>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut resolver = SniResolver::default();
    for c in &tls.certificates {
        let mut key = certified_key(&c.pem)?;
        // rustls staples it to every handshake that asks: TLS 1.2's
        // CertificateStatus, TLS 1.3's extension of the leaf's entry.
        key.ocsp = c.ocsp_response().map(<[u8]>::to_vec);
        resolver.add(Arc::new(key));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls.min_version))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls.session_tickets {
        if let Some(ticketer) = keys.and_then(tickets::Ticketer::new) {
            config.ticketer = Arc::new(ticketer);
        }
    } else {
        // No tickets in TLS 1.3 or 1.2; a TLS 1.2 client may still resume
        // by session id on the worker that made it.
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The versions a listener speaks, from `min` up; rustls's cipher suites
/// for each are its safe defaults, and nothing older than TLS 1.2 exists.
fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => rustls::DEFAULT_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after the `*`, e.g. `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, key: Arc<CertifiedKey>) {
        if let Some(der) = key.cert.first() {
            if let Ok(cert) = webpki::EndEntityCert::try_from(der) {
                for name in cert.valid_dns_names() {
                    let name = name.to_ascii_lowercase();
                    let map = match name.strip_prefix('*') {
                        Some(suffix) => self.wildcard.entry(suffix.to_owned()),
                        None => self.exact.entry(name),
                    };
                    map.or_insert_with(|| key.clone());
                }
            }
        }
        self.default.get_or_insert(key);
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            // A wildcard covers exactly one label: `*.example.com` matches
            // `a.example.com`, not `a.b.example.com`.
            let dot = name.find('.')?;
            self.wildcard.get(&name[dot..])
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.find(name))
            .or(self.default.as_ref())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certified(names: &[&str]) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("generate certificate");
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
        Arc::new(
            CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider())
                .expect("certified key"),
        )
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_first() {
        let a = certified(&["a.example.com"]);
        let wild = certified(&["*.example.com"]);
        let mut r = SniResolver::default();
        r.add(a.clone());
        r.add(wild.clone());
        assert!(Arc::ptr_eq(r.find("A.example.com").expect("exact"), &a));
        assert!(Arc::ptr_eq(
            r.find("b.example.com").expect("wildcard"),
            &wild
        ));
        assert!(r.find("x.b.example.com").is_none());
        assert!(r.find("other.org").is_none());
        assert!(Arc::ptr_eq(r.default.as_ref().expect("default"), &a));
    }
}
