//! ACME certificates (`[listeners.tls.acme]`) against pebble, the ACME
//! test server Let's Encrypt publishes, on loopback: issuance answered by
//! HTTP-01 on a plain listener and by TLS-ALPN-01 on a TLS-only cluster,
//! every worker serving the issued chain, the account and certificate
//! kept across a restart, renewal at two thirds of the lifetime, the
//! placeholder while the ACME server cannot be reached, and the checks of
//! the settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const NAME: &str = "shop.test";

/// A port nothing listens on now, for a listener that must be known
/// before it starts: pebble validates on fixed ports, and corral's
/// config names pebble's directory.
fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// What a test that orders from pebble starts with: an upstream, pebble
/// validating on the free ports `http` and `tls` and issuing certificates
/// valid for `validity`, with a DNS server that resolves [`NAME`] to
/// 127.0.0.1, and the `[listeners.tls.acme]` table ordering from it into
/// the state folder `state`, in the temporary folder `dir`.
struct Acme {
    app: Upstream,
    http: u16,
    tls: u16,
    pebble: Pebble,
    dir: tempfile::TempDir,
    state: PathBuf,
    acme: String,
    _dns: DnsServer,
}

impl Acme {
    async fn start(validity: Duration) -> Self {
        let app = echo("app").await;
        let dns = DnsServer::start().await;
        dns.set(NAME, &["127.0.0.1".parse().unwrap()], 60);
        let (http, tls) = (free_port(), free_port());
        let pebble = Pebble::start(http, tls, dns.addr, validity).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("acme");
        let acme = acme_table(&pebble.directory, &pebble.ca_pem_path, &state);
        Self {
            app,
            http,
            tls,
            pebble,
            dir,
            state,
            acme,
            _dns: dns,
        }
    }

    /// The config of [`config`] with a plain listener on `http` or none.
    fn config(&self, plain: bool) -> String {
        config(
            self.app.addr,
            plain.then_some(self.http),
            self.tls,
            &self.acme,
        )
    }
}

/// The `[listeners.tls.acme]` table ordering [`NAME`] from `pebble`.
fn acme_table(directory: &str, ca: &Path, state: &Path) -> String {
    format!(
        "[listeners.tls.acme]\ndirectory = \"{directory}\"\nemail = \"ops@shop.test\"\ndomains = [\"{NAME}\"]\nca = \"{}\"\nstate_dir = \"{}\"\n",
        ca.display(),
        state.display()
    )
}

/// Two workers: a plain listener `public` on `http` (or none) and a TLS
/// listener `secure` on `tls` with `acme`, both in front of `app`.
fn config(app: SocketAddr, http: Option<u16>, tls: u16, acme: &str) -> String {
    let plain = http.map_or(String::new(), |port| {
        format!("[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\n\n")
    });
    format!(
        r#"
[runtime]
workers = 2
{GENEROUS_HEARTBEAT}

[admin]
listen = "127.0.0.1:0"

{plain}[[listeners]]
name = "secure"
listen = "127.0.0.1:{tls}"
{acme}
[[routes]]
upstream = "app"

[[upstreams]]
name = "app"
servers = [{{ addr = "{app}" }}]
"#
    )
}

fn trusting(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// The leaf certificates `n` connections to `secure` are served, each
/// verified for [`NAME`] against `roots` (SO_REUSEPORT spreads them over
/// both workers).
async fn served_leaves(corral: &Corral, roots: &rustls::RootCertStore, n: usize) -> Vec<Vec<u8>> {
    let mut leaves = Vec::new();
    for _ in 0..n {
        let tls = tls_connect(corral.addr("secure"), roots, NAME, &[b"http/1.1"]).await;
        leaves.push(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec());
    }
    leaves
}

/// Waits for generation `n` to be served by every worker, after a reload
/// that succeeded: the one the state folder's new certificate brings.
async fn wait_generation(corral: &Corral, n: u64) {
    corral.wait_status(|s| reloaded_to(s, n)).await;
}

#[tokio::test]
async fn http01_issues_a_certificate_every_worker_serves_and_a_restart_keeps() {
    let acme = Acme::start(Duration::from_secs(3600)).await;
    let (pebble, dir, state) = (&acme.pebble, &acme.dir, &acme.state);
    let config = acme.config(true);

    let corral = Corral::start(&config).await;
    wait_generation(&corral, 2).await;
    let root = pebble.issuing_root().await;
    let roots = trusting(&root);
    let leaves = served_leaves(&corral, &roots, 8).await;
    assert!(
        leaves.windows(2).all(|w| w[0] == w[1]),
        "workers serve different certificates"
    );
    assert_eq!(
        corral.logged("ordering a certificate").len(),
        1,
        "{}",
        pebble.log()
    );

    // curl, trusting only pebble's root, sees the issued certificate.
    let root_file = dir.path().join("root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let port = corral.addr("secure").port();
    // Not std's: the upstream answers on this test's runtime meanwhile.
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--http2", "--cacert"])
        .arg(&root_file)
        .args(["--resolve", &format!("{NAME}:{port}:127.0.0.1")])
        .arg(format!("https://{NAME}:{port}/"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The account and the certificate are in the state folder; a new
    // corral on the same config serves the certificate at once, orders
    // nothing, and neither makes a second account.
    let accounts = std::fs::read_dir(state.join("accounts")).unwrap().count();
    assert_eq!(accounts, 1);
    let key_mode = std::fs::metadata(state.join("certificates").join(format!("{NAME}.key")))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o077,
        0
    );
    // Stopped, not killed: a dying master's listening sockets, sharing
    // the port by SO_REUSEPORT, would reset connections meant for the next.
    let mut corral = corral;
    corral.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(corral.wait_exit().await, Some(0));
    let again = Corral::start(&config).await;
    assert_eq!(again.status().await["generation"], 1);
    assert_eq!(served_leaves(&again, &roots, 4).await[0], leaves[0]);
    again.wait_for_log("ACME certificate current").await;
    assert!(again.logged("ordering a certificate").is_empty());
    assert_eq!(
        std::fs::read_dir(state.join("accounts")).unwrap().count(),
        1
    );
}

#[tokio::test]
async fn tls_alpn01_issues_on_a_cluster_without_a_plain_listener() {
    let acme = Acme::start(Duration::from_secs(3600)).await;
    let corral = Corral::start(&acme.config(false)).await;
    wait_generation(&corral, 2).await;
    let roots = trusting(&acme.pebble.issuing_root().await);
    served_leaves(&corral, &roots, 4).await;

    // Offering only acme-tls/1 with nothing pending fails the handshake,
    // rather than completing it with the served certificate.
    let printed = s_client(
        corral.addr("secure"),
        &["-servername", NAME, "-alpn", "acme-tls/1"],
        b"",
    )
    .await;
    assert!(!printed.contains("ALPN protocol: acme-tls/1"), "{printed}");
}

/// Masters that share a state folder take turns: while another holds the
/// certificate's lock (here the test, as a master ordering it would), a
/// master waits, and once it has the lock it orders only if what is
/// stored by then is still due.
#[tokio::test]
async fn a_master_waits_out_another_ordering_and_then_orders_only_if_still_due() {
    let acme = Acme::start(Duration::from_secs(3600)).await;
    let certificates = acme.state.join("certificates");
    std::fs::create_dir_all(&certificates).unwrap();
    let lock = std::fs::File::create(certificates.join(format!("{NAME}.pem.lock"))).unwrap();
    lock.try_lock().unwrap();

    let corral = Corral::start(&acme.config(true)).await;
    corral
        .wait_for_log("another corral is ordering this certificate; waiting")
        .await;
    // What the other master's order left: a certificate for the name.
    let pki = Pki::new("other-ca");
    let leaf = pki.issue("issued", &[NAME]);
    std::fs::copy(&leaf.key_path, certificates.join(format!("{NAME}.key"))).unwrap();
    std::fs::copy(&leaf.cert_path, certificates.join(format!("{NAME}.pem"))).unwrap();
    wait_generation(&corral, 2).await;
    drop(lock);
    corral.wait_for_log("ACME certificate current").await;
    assert!(
        corral.logged("ordering a certificate").is_empty(),
        "{}",
        acme.pebble.log()
    );
    let roots = trusting(&std::fs::read_to_string(&pki.ca_path).unwrap());
    served_leaves(&corral, &roots, 2).await;
}

#[tokio::test]
async fn a_certificate_is_renewed_two_thirds_into_its_lifetime() {
    // Renewal is due 6 s after each issuance.
    let acme = Acme::start(Duration::from_secs(9)).await;
    let corral = Corral::start(&acme.config(true)).await;
    let roots = trusting(&acme.pebble.issuing_root().await);
    wait_generation(&corral, 2).await;
    let first = served_leaves(&corral, &roots, 1).await;
    wait_generation(&corral, 3).await;
    let renewed = served_leaves(&corral, &roots, 4).await;
    assert!(
        renewed.iter().all(|leaf| *leaf != first[0]),
        "the first certificate is still served"
    );
    assert_eq!(corral.logged("ACME certificate issued").len(), 2);
}

#[tokio::test]
async fn a_placeholder_serves_while_the_acme_server_cannot_be_reached() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("nobody");
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let acme = acme_table(&directory, &ca.ca_path, &dir.path().join("acme"));

    let corral = Corral::start(&config(app.addr, None, free_port(), &acme)).await;
    corral.wait_for_log("self-signed placeholder").await;
    corral.wait_for_log("ACME order failed").await;
    let status = corral.status().await;
    assert_eq!(status["certificates"][0]["placeholder"], true, "{status}");
    // A placeholder is no certificate anyone renews: no expiry to alert on.
    let samples = scrape_metrics(&corral).await;
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "corral_tls_certificate_expiry_timestamp_seconds")
    );
    let printed = s_client(corral.addr("secure"), &["-servername", NAME], b"").await;
    let subject = printed.lines().find(|l| l.starts_with("subject=")).unwrap();
    let issuer = printed.lines().find(|l| l.starts_with("issuer=")).unwrap();
    assert_eq!(
        subject["subject=".len()..],
        issuer["issuer=".len()..],
        "{printed}"
    );
}

#[test]
fn check_warns_of_the_placeholder_and_refuses_what_acme_cannot_order() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("acme");
    let app: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let good = acme_table(
        "https://acme.example/dir",
        &ca.ca_path,
        &dir.path().join("acme"),
    );
    let (ok, out, _) = check(&config(app, None, 8443, &good));
    assert!(ok, "{out}");
    assert!(out.contains("self-signed placeholder"), "{out}");
    assert!(
        !dir.path().join("acme").exists(),
        "check wrote the state folder"
    );

    // TLS-ALPN-01 cannot pass a listener that requires client certificates.
    let mtls = format!(
        "[listeners.tls]\nclient_ca = \"{}\"\n{good}",
        ca.ca_path.display()
    );
    let (ok, out, _) = check(&config(app, None, 8443, &mtls));
    assert!(
        !ok && out
            .contains("which a listener requiring client certificates (client_ca) cannot answer"),
        "{out}"
    );
    let (ok, out, _) = check(&config(app, Some(8080), 8443, &mtls));
    assert!(ok, "{out}");

    let bad = good
        .replace("https://acme.example/dir", "http://acme.example/dir")
        .replace(&format!("[\"{NAME}\"]"), "[\"*.shop.test\", \"10.0.0.1\"]");
    let (ok, out, path) = check(&config(app, None, 8443, &bad));
    assert!(!ok, "{out}");
    let at = path.display();
    for why in [
        "listeners.tls.acme.directory: `http://acme.example/dir` is not an https:// URL",
        "listeners.tls.acme.domains: `*.shop.test`: a wildcard needs the DNS-01 challenge",
        "listeners.tls.acme.domains: `10.0.0.1`: not a DNS name",
    ] {
        assert!(
            out.contains(why) && out.contains(&format!("{at}:")),
            "{why}\n{out}"
        );
    }
}
