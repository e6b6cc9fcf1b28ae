//! TLS for listeners: decoding certificates, choosing one by SNI, the
//! rustls server config (ALPN offers h2 and http/1.1) and, with
//! `client_ca`, the verifier of clients' certificates ([`subject`] writes
//! a verified one's subject for upstreams); [`client`] makes the configs
//! corral connects to TLS upstreams with, and [`inspect`] reads what a
//! certificate says for the master to show. Certificates (and their OCSP
//! responses, stapled to handshakes) arrive as bytes in the plan; nothing
//! here reads a file.
//!
//! Certificates are matched by the DNS names in their subjectAltName; the first
//! certificate of a listener answers clients that send no SNI or a name no
//! certificate covers, as nginx's default server does.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::challenges::{ACME_TLS_ALPN, Challenges, SharedAnswers};
use crate::plan::{Certificates, CertifiedPem, TicketKeys, TlsConfig, TlsVersion};

pub mod client;
pub mod inspect;
pub mod subject;
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
    #[error("{unusable} of its {all} certificates are not usable as CA certificates")]
    UnusableRoots { unusable: usize, all: usize },
    #[error("no verifier of client certificates: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
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

/// [`certified_key`] without the check that the key fits: for TLS-ALPN-01
/// certificates, which the master made, and whose critical acmeIdentifier
/// extension webpki (the check parses the certificate with) refuses.
fn unchecked_certified_key(pem: &CertifiedPem) -> Result<CertifiedKey, TlsError> {
    let (chain, key) = chain_and_key(pem)?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Mismatch)?;
    Ok(CertifiedKey::new(chain, key))
}

/// The TLS-ALPN-01 certificates of `challenges`, decoded; one that does
/// not decode is left out, and logged.
pub fn challenge_keys(challenges: &Challenges) -> HashMap<String, Arc<CertifiedKey>> {
    let decoded = challenges
        .tls_alpn
        .iter()
        .map(|(name, pem)| (name, unchecked_certified_key(pem)));
    decoded
        .filter_map(|(name, key)| match key {
            Ok(key) => Some((name.clone(), Arc::new(key))),
            Err(e) => {
                tracing::error!(name, error = %e, "unusable TLS-ALPN-01 certificate");
                None
            }
        })
        .collect()
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

/// A self-signed certificate and new key for `names`.
pub fn self_signed(names: &[String]) -> Result<CertifiedPem, rcgen::Error> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())?;
    Ok(CertifiedPem {
        chain: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
    })
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for
/// `name` (RFC 8737 §3): the key authorization's `digest` in a critical
/// acmeIdentifier extension.
pub fn acme_identifier(name: &str, digest: &[u8]) -> Result<CertifiedPem, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedPem {
        chain: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The server config for one TLS listener. With session tickets on and
/// `keys`, tickets are sealed with them; on without keys (a plan only
/// checked), rustls's own per-process ticketer stands in. With `answers`,
/// TLS-ALPN-01 validations get the pending challenges' certificates.
pub fn server_config(
    tls: &TlsConfig,
    keys: Option<&TicketKeys>,
    answers: Option<&SharedAnswers>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut resolver = SniResolver {
        answers: answers.cloned(),
        ..SniResolver::default()
    };
    for c in &tls.certificates {
        let mut key = certified_key(&c.pem)?;
        // rustls staples it to every handshake that asks: TLS 1.2's
        // CertificateStatus, TLS 1.3's extension of the leaf's entry.
        key.ocsp = c.ocsp_response().map(<[u8]>::to_vec);
        resolver.add(Arc::new(key));
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls.min_version))?;
    let builder = match &tls.client_auth {
        Some(auth) => builder.with_client_cert_verifier(client_verifier(&auth.roots)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // Last, and chosen only by a client that offers nothing else: an ACME
    // validation, which the resolver alone answers.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    if tls.session_tickets {
        let bound = tickets::Binding::of(tls.client_auth.as_ref());
        if let Some(ticketer) = keys.and_then(|keys| tickets::Ticketer::new(keys, bound)) {
            config.ticketer = Arc::new(ticketer);
        }
    } else {
        // No tickets in TLS 1.3 or 1.2; a TLS 1.2 client may still resume
        // by session id on the worker that made it.
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// A trust store of `roots`, and how many of them webpki could not use.
pub fn root_store(roots: &Certificates) -> (RootCertStore, usize) {
    let mut store = RootCertStore::empty();
    let ders = roots
        .0
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()));
    let (_, unusable) = store.add_parsable_certificates(ders);
    (store, unusable)
}

/// What checks the certificates of a listener's clients: they must show
/// one, and it must chain to one of `roots`. Every certificate of the
/// bundle must be one webpki can use, so that none is silently left out.
pub fn client_verifier(roots: &Certificates) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let all = roots.0.len();
    let (store, unusable) = root_store(roots);
    if unusable > 0 {
        return Err(TlsError::UnusableRoots { unusable, all });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(TlsError::ClientVerifier)
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
    /// The pending ACME challenges, for TLS-ALPN-01 validations.
    answers: Option<SharedAnswers>,
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
        if acme_validation(&hello) {
            // Only the challenge's certificate answers one (RFC 8737 §3);
            // with none pending, the handshake fails.
            let name = hello.server_name()?;
            return self.answers.as_ref()?.load().tls_alpn01(name);
        }
        hello
            .server_name()
            .and_then(|name| self.find(name))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Whether `hello` is a TLS-ALPN-01 validation: `acme-tls/1` is the one
/// protocol it offers.
fn acme_validation(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut offered| {
        offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none()
    })
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
