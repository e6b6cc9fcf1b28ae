//! TLS sessions on listeners, through `openssl s_client`: resumption
//! across workers (the master's session-ticket keys are every worker's,
//! so a session saved on one connection resumes on the next whichever
//! worker it lands on, TLS 1.3 and 1.2); `session_tickets = false`; and
//! the versions a listener speaks (`min_version`, never below TLS 1.2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;

/// A TLS listener `public` (two workers) in front of an echo, on a
/// self-signed certificate for a.example.com written to `dir`.
fn config(dir: &Path, app: SocketAddr, tickets: &str) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["a.example.com".to_owned()]).unwrap();
    std::fs::write(dir.join("a.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "listen = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n{tickets}",
        dir.join("a.pem").display(),
        dir.join("a.key").display()
    );
    let config = cluster_config(&[app], "").replacen("listen = \"127.0.0.1:0\"", &tls, 2);
    config.replacen(&tls, "listen = \"127.0.0.1:0\"", 1)
}

/// One `openssl s_client` connection with `args`, a request sent and its
/// answer read (TLS 1.3 tickets come after the handshake), which must be a
/// 200; what it printed.
async fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let printed = attempt(addr, args).await;
    assert!(printed.contains("HTTP/1.1 200 OK"), "{printed}");
    printed
}

/// [`s_client`], whatever came of it.
async fn attempt(addr: SocketAddr, args: &[&str]) -> String {
    let mut all = vec!["-servername", "a.example.com"];
    all.extend_from_slice(args);
    let request = b"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    common::s_client(addr, &all, request).await
}

/// Whether `printed` says the session was resumed.
fn reused(printed: &str) -> bool {
    printed.lines().any(|l| l.starts_with("Reused, "))
}

#[tokio::test]
async fn a_session_saved_on_one_connection_resumes_on_either_worker() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&config(dir.path(), app.addr, "")).await;
    let addr = corral.addr("public");
    for version in ["-tls1_3", "-tls1_2"] {
        let session = dir.path().join(format!("session{version}"));
        let session = session.to_str().unwrap();
        let first = s_client(addr, &[version, "-sess_out", session]).await;
        assert!(!reused(&first), "{first}");
        // The kernel spreads connections over both workers by their source
        // ports: with one worker's keys, about half would start afresh.
        for _ in 0..12 {
            let next = s_client(addr, &[version, "-sess_in", session]).await;
            assert!(reused(&next), "{version}: not resumed:\n{next}");
        }
    }
    // Counted by version and resumption, every worker's together.
    let metrics = scrape_metrics(&corral).await;
    let handshakes = |version, resumed| {
        let labels = [
            ("listener", "public"),
            ("result", "success"),
            ("version", version),
            ("resumed", resumed),
        ];
        metric_sum(&metrics, "corral_tls_handshakes_total", &labels)
    };
    assert_eq!(handshakes("TLSv1.3", "false"), 1.0);
    assert_eq!(handshakes("TLSv1.3", "true"), 12.0);
    assert_eq!(handshakes("TLSv1.2", "false"), 1.0);
    assert_eq!(handshakes("TLSv1.2", "true"), 12.0);
}

#[tokio::test]
async fn with_session_tickets_off_a_tls13_session_does_not_resume() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&config(dir.path(), app.addr, "session_tickets = false")).await;
    let addr = corral.addr("public");
    let session = dir.path().join("session");
    let session = session.to_str().unwrap();
    s_client(addr, &["-tls1_3", "-sess_out", session]).await;
    // Without a ticket, openssl has no TLS 1.3 session to save at all.
    assert!(
        !std::path::Path::new(session).exists(),
        "a session was saved, so a ticket was given"
    );
}

#[tokio::test]
async fn a_listener_speaks_tls_1_2_and_up_or_only_1_3() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let corral = Corral::start(&config(dir.path(), app.addr, "")).await;
    let addr = corral.addr("public");
    for version in ["-tls1_2", "-tls1_3"] {
        s_client(addr, &[version]).await;
    }
    // Older versions are not spoken at all (openssl may refuse to offer
    // them itself: either way no session comes of it).
    for version in ["-tls1", "-tls1_1"] {
        let printed = attempt(addr, &[version]).await;
        assert!(!printed.contains("HTTP/1.1 200 OK"), "{version}: {printed}");
    }
    // A client with nothing in common is a failed handshake, counted (a
    // client that offers nothing at all never reaches the server).
    let garbage = common::s_client(
        addr,
        &[
            "-tls1_2",
            "-cipher",
            "NULL-SHA256",
            "-servername",
            "a.example.com",
        ],
        b"",
    )
    .await;
    assert!(!garbage.contains("HTTP/1.1"), "{garbage}");
    let metrics = scrape_metrics(&corral).await;
    let failed = [("listener", "public"), ("result", "failure")];
    assert!(metric_sum(&metrics, "corral_tls_handshakes_total", &failed) >= 1.0);

    let dir = tempfile::tempdir().unwrap();
    let strict = Corral::start(&config(dir.path(), app.addr, "min_version = \"1.3\"")).await;
    let addr = strict.addr("public");
    s_client(addr, &["-tls1_3"]).await;
    let printed = attempt(addr, &["-tls1_2"]).await;
    assert!(!printed.contains("HTTP/1.1 200 OK"), "{printed}");
}
