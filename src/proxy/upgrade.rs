//! Tunnels for upgraded connections (WebSocket and any other HTTP/1.1
//! `Upgrade`): once the upstream answers 101, bytes are copied both ways
//! until either side closes.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::upstream::Lease;
use crate::upstream::http1::Connection;

/// An upstream that answered 101, waiting for the client's side.
#[derive(Debug)]
pub struct Tunnel {
    /// The upstream connection, with any bytes it sent after its 101.
    pub(super) upstream: Connection,
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
            let server = self.lease.server().addr;
            let (mut upstream, early) = self.upstream.into_parts();
            if let Err(e) = client.write_all(&early).await {
                drop(self.lease);
                return tracing::debug!(error = %e, %server, "tunnel ended before it began");
            }
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(up, down, %server, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, %server, "tunnel ended with an error"),
            }
            drop(self.lease);
        });
    }
}
