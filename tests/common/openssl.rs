//! `openssl s_client` against a listener: a second TLS implementation as
//! the client, the way operators check a server by hand; and `openssl
//! ocsp` answering for a test CA, to make the responses corral staples.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::cli::output_patiently;
use super::patience::patiently;
use super::pki::{Leaf, Pki};

/// Connects to `addr` with `args` (before `-connect`), sends `input`,
/// keeps reading after it (`-ign_eof`) until the server closes, and
/// returns what openssl printed.
pub async fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(args)
        .args(["-ign_eof", "-connect"])
        .arg(addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is not installed (CI installs it in .ci/run)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = patiently("openssl s_client", child.wait_with_output())
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes to `out` a DER OCSP response in which `pki`'s CA says `leaf` is
/// good for a day, as a responder would answer (`openssl ocsp` acting as
/// one, over an index file of the CA's certificates).
pub fn ocsp_response(pki: &Pki, leaf: &Leaf, out: &Path) {
    let serial = openssl(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&leaf.cert_path),
    );
    let serial = serial.trim().trim_start_matches("serial=");
    // ca(1)'s index: status, expiry, revocation, serial, file, subject.
    let index = out.with_extension("index.txt");
    let entry = format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=leaf\n");
    std::fs::write(&index, entry).unwrap();
    let ca = &pki.ca_path;
    openssl(
        Command::new("openssl")
            .arg("ocsp")
            .arg("-index")
            .arg(&index)
            .arg("-rsigner")
            .arg(ca)
            .arg("-CA")
            .arg(ca)
            .arg("-issuer")
            .arg(ca)
            .arg("-rkey")
            .arg(&pki.ca_key_path)
            .arg("-cert")
            .arg(&leaf.cert_path)
            .arg("-respout")
            .arg(out)
            .args(["-ndays", "1"]),
    );
}

/// A DER OCSP response as `openssl ocsp` prints it, as `s_client -status`
/// prints what it was stapled.
pub fn ocsp_text(response: &Path) -> String {
    openssl(
        Command::new("openssl")
            .args(["ocsp", "-resp_text", "-noverify", "-respin"])
            .arg(response),
    )
}

/// What `command` (an openssl one) printed; it must succeed.
fn openssl(command: &mut Command) -> String {
    let output = output_patiently(command);
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
