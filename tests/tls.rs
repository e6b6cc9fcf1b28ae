//! TLS listeners: certificates chosen by SNI (the first one for clients
//! without SNI), ALPN picking HTTP/2 or HTTP/1.1, and the header timeout
//! bounding the handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
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

    let tls = tls_connect(addr, &certs.roots, "a.example.com", &[b"h2", b"http/1.1"]).await;
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

    let tls = tls_connect(addr, &certs.roots, "shop.example.org", &[b"http/1.1"]).await;
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

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    out
}

/// The first bytes a real client sends: its whole ClientHello.
fn client_hello(roots: &rustls::RootCertStore) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let name = ServerName::try_from("a.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).unwrap();
    }
    hello
}

#[tokio::test(start_paused = true)]
async fn a_tls_handshake_that_never_finishes_is_cut_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;
    let app = echo("app").await;
    let certs = make_certs();
    let d = certs.dir.path().display();
    let proxy = in_process(&listener_config(
        app.addr,
        &format!(
            "header_timeout = \"3s\"\nkeepalive_timeout = \"60s\"\n[listeners.tls]\ncertificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]"
        ),
    ))
    .await;
    let hello = client_hello(&certs.roots);
    assert!(hello.len() > 100, "{} bytes", hello.len());

    // One connection at a time: the clock jumps to the next timer whenever
    // everything waits, so a second connection that corral had not yet
    // accepted would start its timer late.
    for (what, first_bytes) in [
        ("silent", &[][..]),
        ("half a ClientHello", &hello[..hello.len() / 2]),
    ] {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(first_bytes).await.unwrap();
        // Bounded in real time: a timer on the paused clock would be the
        // next one it jumps to, before corral had even accepted.
        let bytes = within_patience(read_to_close(&mut stream))
            .await
            .unwrap_or_else(|| panic!("{what}: the unfinished handshake stayed open"));
        let waited = started.elapsed();
        // Closed without a word: no ServerHello, no alert.
        assert!(bytes.is_empty(), "{what}: {bytes:?}");
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
            "{what}: closed after {waited:?}"
        );
    }
}

/// A self-signed certificate for `names` (and for 127.0.0.1, so that a
/// client connecting by address accepts whichever one is served), written
/// to `dir` as `file`.pem and `file`.key.
fn write_cert(dir: &std::path::Path, file: &str, names: &[&str]) -> CertificateDer<'static> {
    let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    names.push("127.0.0.1".to_owned());
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{file}.key")),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    CertificateDer::from(cert.cert.der().to_vec())
}

/// `openssl s_client -noservername`: sends `request` without SNI and
/// returns everything it printed (the served certificate, then the reply).
async fn openssl_without_sni(addr: SocketAddr, request: &str) -> String {
    s_client(addr, &["-noservername"], request.as_bytes()).await
}

#[tokio::test]
async fn the_first_certificate_answers_clients_without_sni() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert(dir.path(), "a", &["a.example.com"]);
    let b = write_cert(dir.path(), "b", &["b.example.com"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.clone()).unwrap();
    roots.add(b.clone()).unwrap();
    let d = dir.path().display();
    let (a_entry, b_entry) = (
        format!("{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}"),
        format!("{{ cert = \"{d}/b.pem\", key = \"{d}/b.key\" }}"),
    );
    // The same two certificates in both orders, so "first" is told apart
    // from any fixed choice.
    let config = listener_config(
        app.addr,
        &format!("[listeners.tls]\ncertificates = [{a_entry}, {b_entry}]"),
    )
    .replace(
        "[[routes]]",
        &format!(
            "[[listeners]]\nname = \"reversed\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{b_entry}, {a_entry}]\n\n[[routes]]"
        ),
    );
    let corral = Corral::start(&config).await;

    for (listener, first) in [("public", &a), ("reversed", &b)] {
        let addr = corral.addr(listener);
        // rustls sends no SNI when the server is named by its address.
        let tls = tls_connect(addr, &roots, "127.0.0.1", &[b"http/1.1"]).await;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert!(served == *first, "{listener}: not its first certificate");
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/no-sni")
            .header("host", addr.to_string())
            .body(empty())
            .unwrap();
        let reply = read(
            patiently("a request without SNI", h1.send_request(request))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::OK, "{listener}");
        assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");

        // The same through OpenSSL, a second client implementation.
        let printed = openssl_without_sni(
            addr,
            "GET /openssl HTTP/1.1\r\nHost: openssl.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let pem = printed
            .find("-----BEGIN CERTIFICATE-----")
            .map(|start| &printed[start..])
            .unwrap_or_else(|| panic!("{listener}: no certificate from openssl:\n{printed}"));
        let served = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(
            served == *first,
            "{listener}: openssl got another certificate"
        );
        assert!(
            printed.contains("HTTP/1.1 200 OK") && printed.contains("\"uri\":\"/openssl\""),
            "{listener}: {printed}"
        );
    }
}

/// The leaf certificate each of `n` fresh connections is served.
async fn served_leaves(addr: SocketAddr, roots: &rustls::RootCertStore, n: usize) -> Vec<Vec<u8>> {
    let mut leaves = Vec::new();
    for _ in 0..n {
        let tls = tls_connect(addr, roots, "a.example.com", &[b"http/1.1"]).await;
        let chain = tls.get_ref().1.peer_certificates().unwrap();
        leaves.push(chain[0].to_vec());
    }
    leaves
}

/// A certificate pair, and the roots that trust it.
fn pair() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["a.example.com".to_owned()]).unwrap()
}

/// A config whose listener `public` serves the pair at `cert` and `key`.
fn tls_config(app: SocketAddr, cert: &std::path::Path, key: &std::path::Path) -> String {
    let tls = format!(
        "listen = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert.display(),
        key.display()
    );
    let config = cluster_config(&[app], "").replacen("listen = \"127.0.0.1:0\"", &tls, 2);
    config.replacen(&tls, "listen = \"127.0.0.1:0\"", 1)
}

/// The master reads certificate files when it checks the config, and
/// watches them: a pair rewritten on disk is a new generation within
/// moments, with no reload asked for, and every worker (a replacement
/// too) serves the same bytes. A broken file is refused, with its name and
/// why, and the pair before it goes on serving.
#[tokio::test]
async fn a_certificate_rewritten_on_disk_is_served_without_a_reload_command() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    let (first, second) = (pair(), pair());
    let mut roots = rustls::RootCertStore::empty();
    for cert in [&first, &second] {
        roots
            .add(CertificateDer::from(cert.cert.der().to_vec()))
            .unwrap();
    }
    std::fs::write(&cert_path, first.cert.pem()).unwrap();
    std::fs::write(&key_path, first.signing_key.serialize_pem()).unwrap();
    let corral = Corral::start(&tls_config(app.addr, &cert_path, &key_path)).await;
    let addr = corral.addr("public");
    corral.wait_status(all_ready).await;

    // Another valid pair, under the same names (as certbot renews).
    std::fs::write(&key_path, second.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, second.cert.pem()).unwrap();
    let status = corral
        .wait_status(|s| {
            s["generation"] == 2 && all_ready(s) && s["last_reload"]["result"] == "success"
        })
        .await;
    assert_eq!(
        status["last_reload"]["trigger"], "file change",
        "{status:#}"
    );
    let second_leaf = second.cert.der().to_vec();
    for leaf in served_leaves(addr, &roots, 32).await {
        assert!(leaf == second_leaf, "a worker serves the old certificate");
    }

    // A broken certificate: refused, said with its file, the pair before
    // it still served.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let status = corral
        .wait_status(|s| s["last_reload"]["result"] == "failure")
        .await;
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains(&cert_path.display().to_string())
            && error.contains("cannot read certificate"),
        "{error}"
    );
    assert_eq!(status["generation"], 2);
    for leaf in served_leaves(addr, &roots, 8).await {
        assert!(leaf == second_leaf, "the broken file reached a worker");
    }

    // A replacement worker serves what its siblings serve, not the file.
    let replaced = status["workers"][0]["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(replaced).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    corral
        .wait_status(|s| all_ready(s) && s["workers"][0]["pid"].as_u64() != Some(replaced))
        .await;
    for leaf in served_leaves(addr, &roots, 32).await {
        assert!(leaf == second_leaf, "a replacement serves something else");
    }
}

/// A Kubernetes Secret mounted as files: each file is a symlink through
/// `..data`, which kubelet swaps to a new folder in one rename.
#[tokio::test]
async fn a_secret_swapped_under_its_symlinks_is_served_without_a_reload_command() {
    use std::os::unix::fs::symlink;
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (first, second) = (pair(), pair());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(second.cert.der().to_vec()))
        .unwrap();
    roots
        .add(CertificateDer::from(first.cert.der().to_vec()))
        .unwrap();
    for (version, cert) in [("..v1", &first), ("..v2", &second)] {
        std::fs::create_dir(root.join(version)).unwrap();
        std::fs::write(root.join(version).join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(
            root.join(version).join("tls.key"),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
    }
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let config = tls_config(app.addr, &root.join("tls.crt"), &root.join("tls.key"));
    let corral = Corral::start(&config).await;
    corral.wait_status(all_ready).await;

    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    corral
        .wait_status(|s| {
            s["generation"] == 2 && all_ready(s) && s["last_reload"]["result"] == "success"
        })
        .await;
    let second_leaf = second.cert.der().to_vec();
    for leaf in served_leaves(corral.addr("public"), &roots, 16).await {
        assert!(leaf == second_leaf, "a worker serves the old certificate");
    }
}
