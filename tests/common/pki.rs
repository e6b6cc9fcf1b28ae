//! A private CA made at test time, the certificates it signs (written to
//! files a config can name, and renewed in place), and HTTPS upstreams
//! that present them, optionally asking clients for a certificate of their
//! own (mTLS).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::clients::full;
use super::upstreams::Upstream;

/// A CA and the folder its files go to.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_path: PathBuf,
    /// The CA's private key, PEM (for tools that sign as the CA: `openssl
    /// ocsp`).
    pub ca_key_path: PathBuf,
}

/// A certificate the CA signed, with its key, in memory and on disk.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Leaf {
    /// Its entry in `listeners.tls.certificates`, with `extra` keys (`,
    /// ocsp = "..."`).
    pub fn entry(&self, extra: &str) -> String {
        format!(
            "{{ cert = {:?}, key = {:?}{extra} }}",
            self.cert_path.display().to_string(),
            self.key_path.display().to_string()
        )
    }
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let ca_key_path = dir.path().join(format!("{name}.key"));
        std::fs::write(&ca_key_path, ca.key().serialize_pem()).unwrap();
        Self {
            dir,
            ca,
            ca_path,
            ca_key_path,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), written as
    /// `FILE.pem` and `FILE.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Leaf {
        self.issue_with(file, names, |_| {})
    }

    /// A client certificate whose subject is `subject`, in the order
    /// given (the first is the certificate's first relative name), written
    /// as `FILE.pem` and `FILE.key`.
    pub fn issue_client(&self, file: &str, subject: &[(rcgen::DnType, &str)]) -> Leaf {
        self.issue_with(file, &[], |params| {
            params.distinguished_name = rcgen::DistinguishedName::new();
            for (kind, value) in subject {
                params.distinguished_name.push(kind.clone(), *value);
            }
        })
    }

    /// [`Pki::issue`] with `edit` applied to the certificate's parameters
    /// (its validity, say).
    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = self.sign(&key, names, edit);
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_path,
            key_path,
        }
    }

    /// A new certificate for `leaf`'s key and `names`, `edit`ed, put in
    /// place of `leaf`'s certificate file at once (a rename), as a renewal
    /// that keeps its key does.
    pub fn renew(
        &self,
        leaf: &Leaf,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::try_from(&leaf.key).unwrap();
        let cert = self.sign(&key, names, edit);
        let next = leaf.cert_path.with_extension("pem.next");
        std::fs::write(&next, cert.pem()).unwrap();
        std::fs::rename(&next, &leaf.cert_path).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: leaf.key.clone_key(),
            cert_path: leaf.cert_path.clone(),
            key_path: leaf.key_path.clone(),
        }
    }

    fn sign(
        &self,
        key: &KeyPair,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> rcgen::Certificate {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        edit(&mut params);
        params.signed_by(key, &self.ca).unwrap()
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

/// What an HTTPS upstream saw.
#[derive(Default)]
pub struct Seen {
    /// TLS connections it accepted (handshakes that completed).
    pub connections: AtomicUsize,
}

/// An HTTPS upstream presenting `leaf`, offering h2 and http/1.1 by ALPN,
/// answering every request with `NAME VERSION client-cert=yes|no`. With
/// `clients`, a client must show a certificate that CA signed.
pub async fn https_upstream(
    name: &str,
    leaf: &Leaf,
    clients: Option<&Pki>,
) -> (Upstream, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(pki) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(pki.roots()))
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            let (acceptor, counts, name) = (acceptor.clone(), counts.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counts.connections.fetch_add(1, Ordering::SeqCst);
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let text = format!(
                        "{name} {:?} client-cert={}",
                        req.version(),
                        if client_cert { "yes" } else { "no" }
                    );
                    async move { Ok::<_, Infallible>(http::Response::new(full(text))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (Upstream { addr, stop }, seen)
}

/// A TLS connection to `addr`, verified against `roots` for `sni`,
/// offering `alpn`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    // The handshake verifies the served certificate against `sni`.
    super::patience::patiently(
        "a TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream),
    )
    .await
    .unwrap()
}
