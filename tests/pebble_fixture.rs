//! The pebble fixture itself (tests/common/pebble.rs): pebble starts, its
//! HTTPS certificate is trusted through the CA file corral's acme `ca` key
//! would name, and its issuing root comes from the management port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{DnsServer, Pebble, https_get};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn pebble_serves_its_directory_and_issuing_root() {
    let dns = DnsServer::start().await;
    // Nothing here is validated: any ports will do.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let pebble = Pebble::start(free(), free(), dns.addr, Duration::from_secs(3600)).await;

    // Trust only what the CA file says, as corral would.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pebble.ca_pem_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let rest = pebble.directory.strip_prefix("https://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let addr: SocketAddr = authority.parse().unwrap();
    assert_eq!(path, "/dir");
    let reply = https_get(addr, &roots, path).await;
    assert!(reply.status.is_success(), "{reply:?}\n{}", pebble.log());
    let directory = reply.json();
    assert!(
        directory["newOrder"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{directory}"
    );

    let root = pebble.issuing_root().await;
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
}
