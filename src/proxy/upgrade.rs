//! Tunnels for upgraded connections (WebSocket and any other HTTP/1.1
//! `Upgrade`): once the upstream answers 101, bytes are copied both ways
//! until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::upstream::Lease;

/// An upstream that answered 101, waiting for the client's side.
#[derive(Debug)]
pub struct Tunnel {
    pub(super) upstream: OnUpgrade,
    /// Keeps the server's in-flight count up for as long as the tunnel lives.
    pub(super) lease: Lease,
}

impl Tunnel {
    /// Copies bytes between `client` (the switched client connection) and
    /// the upstream's, until either side closes.
    pub fn spawn<C>(self, mut client: C)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let upstream = match self.upstream.await {
                Ok(upstream) => upstream,
                Err(e) => return tracing::debug!(error = %e, "upstream upgrade did not complete"),
            };
            let server = self.lease.server().addr;
            match tokio::io::copy_bidirectional(&mut client, &mut TokioIo::new(upstream)).await {
                Ok((up, down)) => tracing::debug!(up, down, %server, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, %server, "tunnel ended with an error"),
            }
            self.lease.release(false);
        });
    }
}
