//! `openssl s_client` against a listener: a second TLS implementation as
//! the client, the way operators check a server by hand.

use std::net::SocketAddr;

use super::patience::patiently;

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
