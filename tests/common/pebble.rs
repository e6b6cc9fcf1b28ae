//! Pebble, Let's Encrypt's test ACME server (Debian's `pebble` package,
//! /usr/bin/pebble), run as a child process on loopback: the CA that
//! corral's ACME client orders certificates from in the tests.
//!
//! Pebble ships no HTTPS certificate of its own, so one is made here, by a
//! [`Pki`] of the test's, whose CA file is what corral's acme `ca` key
//! names. Its validation authority connects to the ports the test gives it
//! (corral's listeners) on whatever address the test DNS server gives for
//! the identifier.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;

use super::clients::{Reply, empty, read};
use super::patience::{patiently, until};
use super::pki::{Pki, tls_connect};

/// A running pebble; killed and reaped when dropped.
pub struct Pebble {
    /// The ACME directory URL, `https://127.0.0.1:PORT/dir`.
    pub directory: String,
    /// PEM of the CA that signed pebble's HTTPS certificate: what corral's
    /// acme `ca` key takes.
    pub ca_pem_path: PathBuf,
    /// The management interface (`/roots/0` and friends), same certificate.
    management: SocketAddr,
    child: Child,
    /// The folder of pebble's certificate, config and logs, and the CA.
    pki: Pki,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pebble {
    /// `http_port`/`tls_port`: where its validation authority connects
    /// (corral's plain and TLS listener ports); `dns`: the test DNS server
    /// it resolves identifiers through; `validity`: certificate lifetime.
    ///
    /// Returns once both its ACME and management ports accept connections;
    /// panics with its log if it exits first.
    pub async fn start(http_port: u16, tls_port: u16, dns: SocketAddr, validity: Duration) -> Self {
        let pki = Pki::new("pebble-https-ca");
        let leaf = pki.issue("pebble", &["localhost", "127.0.0.1"]);
        // Pebble binds port 0 but then names it nowhere, so free ports are
        // found here and handed over (a race no other test here loses).
        let listen = free_addr();
        let management = free_addr();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": leaf.cert_path,
                "privateKey": leaf.key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        let dir = pki.dir.path();
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("writing pebble's config");
        let log = |name: &str| File::create(dir.join(name)).expect("creating a pebble log file");
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            // Not `-strict false`: Go reads that as `-strict` and stops
            // parsing flags at `false`.
            .arg("-strict=false")
            .current_dir(dir)
            // No random 0-4 s sleep before each validation.
            .env("PEBBLE_VA_NOSLEEP", "1")
            // No nonces rejected at random (5% by default).
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates anew rather than reusing half the time
            // an authorization that is already valid.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.stdout"))
            .stderr(log("pebble.stderr"))
            .spawn()
            .expect("starting pebble (apt-get install pebble)");
        // Pebble logs "Listening on" before it binds: only a connection
        // that is accepted says it is ready.
        until("pebble to listen", async || {
            if let Some(status) = child.try_wait().expect("asking after pebble") {
                panic!(
                    "pebble exited ({status}) before listening:\n{}",
                    log_in(dir)
                );
            }
            tokio::net::TcpStream::connect(listen).await.is_ok()
                && tokio::net::TcpStream::connect(management).await.is_ok()
        })
        .await;
        Self {
            directory: format!("https://{listen}/dir"),
            ca_pem_path: pki.ca_path.clone(),
            management,
            child,
            pki,
        }
    }

    /// PEM of the root that signs the certificates pebble issues (it makes
    /// a new one each run).
    pub async fn issuing_root(&self) -> String {
        let reply = https_get(self.management, &self.pki.roots(), "/roots/0").await;
        assert!(reply.status.is_success(), "GET /roots/0: {reply:?}");
        reply.text()
    }

    /// Roots that trust pebble's HTTPS certificate (the CA of `ca_pem_path`).
    pub fn https_roots(&self) -> rustls::RootCertStore {
        self.pki.roots()
    }

    /// What pebble wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        log_in(self.pki.dir.path())
    }
}

/// One GET of `path` over HTTPS (HTTP/1.1) to `addr`, verified against
/// `roots` as 127.0.0.1.
pub async fn https_get(addr: SocketAddr, roots: &rustls::RootCertStore, path: &str) -> Reply {
    let tls = tls_connect(addr, roots, "127.0.0.1", &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("an HTTP/1.1 handshake over TLS");
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(empty())
        .expect("a GET request");
    let response = patiently(
        &format!("GET https://{addr}{path}"),
        sender.send_request(request),
    )
    .await
    .expect("a response head");
    read(response).await
}

/// A loopback address whose port was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserving a loopback port")
}

/// Pebble's stdout then stderr, from the files in `dir`.
fn log_in(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!(
        "--- stdout\n{}--- stderr\n{}",
        read("pebble.stdout"),
        read("pebble.stderr")
    )
}
