//! mTLS at the edge: a listener with `client_ca` lets through only
//! clients whose certificate chains to that bundle, and with
//! `client_subject_header` tells the upstream each one's subject
//! (RFC 4514), replacing whatever the client sent in that header. Clients
//! are rustls (tokio-rustls) and `openssl s_client`; the upstream records
//! every request head exactly as it arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::DnType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "x-client-subject";

/// The certificates of a test: the listeners' own (signed by `server`),
/// and clients' from `clients` (the CA the listener trusts, copied to
/// `trusted`) and from `strangers` (one it does not).
struct Certs {
    server: Pki,
    site: Leaf,
    clients: Pki,
    strangers: Pki,
    /// The `client_ca` file.
    trusted: PathBuf,
}

fn certs() -> Certs {
    let server = Pki::new("server-ca");
    let site = server.issue("site", &["a.example.com"]);
    let clients = Pki::new("client-ca");
    let trusted = server.dir.path().join("trusted.pem");
    std::fs::copy(&clients.ca_path, &trusted).unwrap();
    Certs {
        server,
        site,
        clients,
        strangers: Pki::new("stranger-ca"),
        trusted,
    }
}

/// Listener `public` requires a certificate from `certs.trusted`, with
/// `settings` added to its `[listeners.tls]`; listener `open`, on the same
/// certificate, asks for none. Both route to `app`.
fn config(certs: &Certs, app: SocketAddr, settings: &str) -> String {
    let cert = format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        path_of(&certs.site.cert_path),
        path_of(&certs.site.key_path)
    );
    let public = format!(
        "name = \"public\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\n{cert}\nclient_ca = \"{}\"\n{settings}\n",
        path_of(&certs.trusted)
    );
    let open = format!(
        "[[listeners]]\nname = \"open\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\n{cert}\n"
    );
    // After the admin endpoint is added: it goes before every `[[listeners]]`.
    let config = cluster_config(&[app], "") + &open;
    config.replace("name = \"public\"\nlisten = \"127.0.0.1:0\"\n", &public)
}

const FORWARDED: &str = "client_subject_header = \"X-Client-Subject\"";

/// A rustls client for a.example.com, trusting the listener's CA,
/// offering `alpn` and showing `cert` when there is one.
fn client(certs: &Certs, cert: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(certs.server.roots());
    let mut config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    patiently("a TLS handshake", connect).await
}

/// An HTTP/1.1 connection through a handshake that must succeed.
async fn http1(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let tls = connect(addr, config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A GET of `path` with `headers`, which must be answered 200.
fn get(path: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    let mut request = Request::get(path).header("host", "a.example.com");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(empty()).unwrap()
}

/// What came of a client that must be refused: the handshake's error, or
/// (TLS 1.3 clients finish their side before the server has checked their
/// certificate) the error that ends the connection when a request is
/// sent. Panics if anything is answered.
async fn refused(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    let mut tls = match connect(addr, config).await {
        Err(e) => return e.to_string(),
        Ok(tls) => tls,
    };
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = patiently("the refusal", tls.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&answer)
    );
    read.expect_err("the connection ends in an error")
        .to_string()
}

/// `openssl s_client` to a.example.com with `args`, sending one request
/// that carries `headers`; what it printed.
async fn openssl(addr: SocketAddr, args: &[&str], headers: &str) -> String {
    let mut all = vec!["-servername", "a.example.com"];
    all.extend_from_slice(args);
    let request = format!(
        "GET /openssl HTTP/1.1\r\nHost: a.example.com\r\n{headers}Connection: close\r\n\r\n"
    );
    s_client(addr, &all, request.as_bytes()).await
}

/// `-cert` and `-key` for `leaf`.
fn shows(leaf: &Leaf) -> [&str; 4] {
    [
        "-cert",
        leaf.cert_path.to_str().unwrap(),
        "-key",
        leaf.key_path.to_str().unwrap(),
    ]
}

/// The values of the subject header on each request the upstream saw.
fn subjects(upstream: &Recording) -> Vec<Vec<String>> {
    let requests = upstream.requests();
    let values = |r: &Recorded| r.header(SUBJECT).iter().map(|v| v.to_string()).collect();
    requests.iter().map(values).collect()
}

#[tokio::test]
async fn a_certificate_from_client_ca_gets_through_and_its_subject_is_forwarded() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let addr = corral.addr("public");
    // The certificate's relative names run from O to CN; RFC 4514 writes
    // them the other way round.
    let alice = certs.clients.issue_client(
        "alice",
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "alice"),
        ],
    );
    let mut h1 = http1(addr, client(&certs, Some(&alice), &[b"http/1.1"])).await;
    for path in ["/one", "/two"] {
        let reply = read(h1.send_request(get(path, &[])).await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // openssl as the client, with a subject that needs escaping.
    let bob = certs.clients.issue_client(
        "bob",
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "Bob, Jr."),
        ],
    );
    let printed = openssl(addr, &shows(&bob), "").await;
    assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
    assert_eq!(
        subjects(&app),
        [
            vec!["CN=alice,O=Example"],
            vec!["CN=alice,O=Example"],
            vec![r"CN=Bob\, Jr.,O=Example"],
        ]
    );
}

#[tokio::test]
async fn a_subject_header_the_client_sent_is_replaced_not_added_to() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let addr = corral.addr("public");
    let alice = certs
        .clients
        .issue_client("alice", &[(DnType::CommonName, "alice")]);
    let forged = [(SUBJECT, "CN=admin"), ("X-Client-Subject", "CN=root")];
    let mut h1 = http1(addr, client(&certs, Some(&alice), &[b"http/1.1"])).await;
    let reply = read(h1.send_request(get("/h1", &forged)).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Named in `Connection` too: removed as hop-by-hop, then set.
    let hop = [("connection", "x-client-subject"), (SUBJECT, "CN=admin")];
    let reply = read(h1.send_request(get("/hop", &hop)).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);

    let tls = connect(addr, client(&certs, Some(&alice), &[b"h2"]))
        .await
        .unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("https://a.example.com/h2")
        .header(SUBJECT, "CN=admin")
        .header(SUBJECT, "CN=root")
        .body(empty())
        .unwrap();
    assert_eq!(
        read(h2.send_request(request).await.unwrap()).await.status,
        StatusCode::OK
    );

    let printed = openssl(addr, &shows(&alice), "X-Client-Subject: CN=admin\r\n").await;
    assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
    assert_eq!(subjects(&app), vec![vec!["CN=alice"]; 4]);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let addr = corral.addr("public");
    let error = refused(addr, client(&certs, None, &[b"http/1.1"])).await;
    assert!(error.contains("CertificateRequired"), "{error}");
    for version in ["-tls1_3", "-tls1_2"] {
        let printed = openssl(addr, &[version], "").await;
        assert!(!printed.contains("HTTP/1.1"), "{version}: {printed}");
    }
    // Nothing reached the upstream: the one request it sees is a client's
    // with a certificate, sent after the refusals ended.
    let alice = certs
        .clients
        .issue_client("alice", &[(DnType::CommonName, "alice")]);
    let mut h1 = http1(addr, client(&certs, Some(&alice), &[b"http/1.1"])).await;
    let reply = read(h1.send_request(get("/", &[])).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(subjects(&app), [["CN=alice"]]);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let addr = corral.addr("public");
    let mallory = certs
        .strangers
        .issue_client("mallory", &[(DnType::CommonName, "alice")]);
    let error = refused(addr, client(&certs, Some(&mallory), &[b"http/1.1"])).await;
    assert!(error.contains("UnknownCA"), "{error}");
    for version in ["-tls1_3", "-tls1_2"] {
        let mut args = vec![version];
        args.extend(shows(&mallory));
        let printed = openssl(addr, &args, "").await;
        assert!(!printed.contains("HTTP/1.1"), "{version}: {printed}");
    }
    assert!(app.requests().is_empty());
    let metrics = scrape_metrics(&corral).await;
    let failed = [("listener", "public"), ("result", "failure")];
    assert!(metric_sum(&metrics, "corral_tls_handshakes_total", &failed) >= 1.0);
}

#[tokio::test]
async fn check_refuses_a_subject_header_without_client_ca() {
    let certs = certs();
    let header = "client_subject_header = \"X-Client-Subject\"";
    let text = config(&certs, "127.0.0.1:9".parse().unwrap(), "")
        .replace(
            &format!("client_ca = \"{}\"\n", path_of(&certs.trusted)),
            "",
        )
        .replacen(
            "[listeners.tls]\ncertificates",
            &format!("[listeners.tls]\n{header}\ncertificates"),
            1,
        );
    let (ok, printed, path) = check(&text);
    assert!(!ok, "{printed}");
    let at = text.find(header).unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let column = "client_subject_header = ".len() + 1;
    let expected = format!(
        "{}:{line}:{column}: listeners.tls.client_subject_header: only used with client_ca",
        path.display()
    );
    assert!(
        printed.contains(&expected),
        "{expected:?} not in:\n{printed}"
    );
}

#[tokio::test]
async fn with_no_subject_header_nothing_is_added_and_the_client_s_passes() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, "")).await;
    let alice = certs
        .clients
        .issue_client("alice", &[(DnType::CommonName, "alice")]);
    let mut h1 = http1(
        corral.addr("public"),
        client(&certs, Some(&alice), &[b"http/1.1"]),
    )
    .await;
    for headers in [&[][..], &[(SUBJECT, "anything")][..]] {
        let reply = read(h1.send_request(get("/", headers)).await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(subjects(&app), [vec![], vec!["anything"]]);
}

/// Whether `printed` (by openssl) says the session was resumed.
fn reused(printed: &str) -> bool {
    printed.lines().any(|l| l.starts_with("Reused, "))
}

/// Session-ticket keys are every listener's and outlive reloads, and
/// rustls resumes a session with the certificate it was made with; the
/// ticket is bound to the `client_ca` it was made under, so a session from
/// a listener that asked for no certificate starts afresh (and is refused)
/// rather than resuming past the check.
#[tokio::test]
async fn a_session_resumes_only_where_it_was_made_under_the_same_client_ca() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let (public, open) = (corral.addr("public"), corral.addr("open"));
    let alice = certs
        .clients
        .issue_client("alice", &[(DnType::CommonName, "alice")]);
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let session = |name: &str| path_of(&dir.path().join(format!("{name}{version}")));
        let (anonymous, alices) = (session("open"), session("alice"));
        let printed = openssl(open, &[version, "-sess_out", &anonymous], "").await;
        assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
        let printed = openssl(public, &[version, "-sess_in", &anonymous], "").await;
        assert!(
            !printed.contains("HTTP/1.1") && !reused(&printed),
            "{version}: {printed}"
        );

        let mut args = vec![version, "-sess_out", &alices];
        args.extend(shows(&alice));
        let printed = openssl(public, &args, "").await;
        assert!(
            printed.contains("HTTP/1.1 200 OK") && !reused(&printed),
            "{printed}"
        );
        // Resumed without showing the certificate again: the session's is
        // the one its subject comes from.
        let printed = openssl(public, &[version, "-sess_in", &alices], "").await;
        assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
        assert!(reused(&printed), "{version}: not resumed:\n{printed}");
    }
    let seen = subjects(&app);
    let through_public: Vec<_> = seen.iter().filter(|s| !s.is_empty()).collect();
    assert_eq!(
        through_public,
        vec![&vec!["CN=alice".to_owned()]; 4],
        "{seen:?}"
    );
}

/// The `client_ca` file is watched like certificates: rewritten, it is a
/// new generation, and clients are checked against what it says now.
#[tokio::test]
async fn a_rewritten_client_ca_file_is_read_again() {
    let app = recording().await;
    let certs = certs();
    let corral = Corral::start(&config(&certs, app.addr, FORWARDED)).await;
    let addr = corral.addr("public");
    corral.wait_status(all_ready).await;
    let alice = certs
        .clients
        .issue_client("alice", &[(DnType::CommonName, "alice")]);
    let mallory = certs
        .strangers
        .issue_client("mallory", &[(DnType::CommonName, "mallory")]);
    refused(addr, client(&certs, Some(&mallory), &[b"http/1.1"])).await;

    std::fs::copy(&certs.strangers.ca_path, &certs.trusted).unwrap();
    let status = corral
        .wait_status(|s| {
            s["generation"] == 2 && all_ready(s) && s["last_reload"]["result"] == "success"
        })
        .await;
    assert_eq!(
        status["last_reload"]["trigger"], "file change",
        "{status:#}"
    );
    let mut h1 = http1(addr, client(&certs, Some(&mallory), &[b"http/1.1"])).await;
    let reply = read(h1.send_request(get("/", &[])).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let error = refused(addr, client(&certs, Some(&alice), &[b"http/1.1"])).await;
    assert!(error.contains("UnknownCA"), "{error}");
    assert_eq!(subjects(&app), [["CN=mallory"]]);
}
