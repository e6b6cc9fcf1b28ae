//! Tunnels for upgraded connections (WebSocket and any other HTTP/1.1
//! `Upgrade`): once the upstream answers 101, bytes are copied both ways
//! until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::upstream::Lease;

/// Joins the client's and the upstream's upgraded streams. The lease keeps
/// the server's in-flight count up for as long as the tunnel lives.
pub fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, lease: Lease) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(up, down, server = %lease.server().addr, "tunnel closed")
            }
            Err(e) => {
                tracing::debug!(error = %e, server = %lease.server().addr, "tunnel ended with an error")
            }
        }
        lease.release(false);
    });
}
