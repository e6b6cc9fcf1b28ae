//! TLS listeners: certificates chosen by SNI, ALPN picking HTTP/2 or HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

struct Certs {
    roots: rustls::RootCertStore,
    dir: tempfile::TempDir,
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for (file, names) in [
        ("a", vec!["a.example.com".to_owned()]),
        ("wild", vec!["*.example.org".to_owned()]),
    ] {
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(dir.path().join(format!("{file}.pem")), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join(format!("{file}.key")),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        roots
            .add(CertificateDer::from(cert.cert.der().to_vec()))
            .unwrap();
    }
    Certs { roots, dir }
}

async fn connect(
    addr: SocketAddr,
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
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    // The handshake verifies the served certificate against `sni`.
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let app = echo("app").await;
    let certs = make_certs();
    let d = certs.dir.path().display();
    let config = listener_config(
        app.addr,
        &format!(
            "[listeners.tls]\ncertificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/wild.pem\", key = \"{d}/wild.key\" }}]"
        ),
    );
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");

    let tls = connect(addr, &certs.roots, "a.example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = h2
        .send_request(
            Request::get("https://a.example.com/x")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let reply = read(response).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");

    let tls = connect(addr, &certs.roots, "shop.example.org", &[b"http/1.1"]).await;
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/y")
        .header("host", "shop.example.org")
        .body(empty())
        .unwrap();
    let reply = read(h1.send_request(request).await.unwrap()).await;
    assert_eq!(reply.version, http::Version::HTTP_11);
    assert_eq!(
        reply.json()["headers"]["x-forwarded-host"],
        "shop.example.org"
    );
}
