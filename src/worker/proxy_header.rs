//! Whom a client connection is from, on a listener that takes PROXY
//! protocol headers: the peer itself, unless it is a trusted load balancer,
//! whose header (see [`proxy_protocol`]) is read off the socket and names
//! the client. Nothing past the header is read: those bytes stay in the
//! socket for TLS or HTTP.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::plan::ProxyProtocolConfig;
use crate::proxy_protocol::{self, Header, Parsed};

/// How much one look at the socket takes: any v1 line, or a v2 header with
/// IPv6 addresses and a few TLVs, in one go (a longer one takes more).
const PEEK: usize = 256;

/// The client behind `stream`: `peer`, or what a trusted peer's header
/// says (`peer` again for a header that names no client, such as a health
/// check's `LOCAL`). `None`: a trusted peer sent no valid header by
/// `deadline`, and the connection is to be closed, as no request on it can
/// be told from whom it came.
pub async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    config: Option<&ProxyProtocolConfig>,
    deadline: Instant,
) -> Option<SocketAddr> {
    let Some(config) = config else {
        return Some(peer);
    };
    let ip = peer.ip().to_canonical();
    if !config.trusted.iter().any(|net| net.contains(&ip)) {
        // Served as a direct client: a header it sends is not believed,
        // and fails as HTTP.
        return Some(peer);
    }
    // Boxed: reading the header takes room for the longest one, which the
    // connection's future would otherwise carry for as long as it lives.
    match Box::pin(tokio::time::timeout_at(deadline, read_header(stream))).await {
        Ok(Ok(header)) => Some(header.addresses.map_or(peer, |a| a.source)),
        Ok(Err(Refused::Header(e))) => {
            // A trusted peer that sends a bad header is misconfigured:
            // worth a line for each connection it costs.
            tracing::warn!(peer = %peer, error = %e, "PROXY protocol header refused; closing");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "no PROXY protocol header; closing");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "PROXY protocol header not received in time; closing");
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Header(#[from] proxy_protocol::Error),
    #[error("closed before its PROXY header ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the header and not a byte more: it looks at what has arrived
/// (peeks), and takes off the socket only the bytes the header has proved
/// to be its own.
async fn read_header(stream: &mut TcpStream) -> Result<Header, Refused> {
    let mut buf = Vec::with_capacity(PEEK);
    loop {
        let taken = buf.len();
        buf.resize(taken + PEEK, 0);
        let seen = stream.peek(&mut buf[taken..]).await?;
        if seen == 0 {
            return Err(Refused::Closed);
        }
        buf.truncate(taken + seen);
        // The parser bounds `buf`: it refuses a header past its limit
        // rather than ask for more.
        let parsed = proxy_protocol::parse(&buf)?;
        let end = match &parsed {
            Parsed::Header(header) => header.len,
            // All of it belongs to the header, which is still to end.
            Parsed::Incomplete => buf.len(),
        };
        // Bytes peeked are in the socket: this read takes them at once.
        let header_bytes = buf
            .get_mut(taken..end)
            .ok_or(io::Error::from(io::ErrorKind::InvalidData))?;
        stream.read_exact(header_bytes).await?;
        if let Parsed::Header(header) = parsed {
            return Ok(header);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    fn trusting(net: &str) -> ProxyProtocolConfig {
        ProxyProtocolConfig {
            trusted: vec![net.parse().unwrap()],
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn the_header_is_read_in_pieces_and_nothing_after_it() {
        let (mut client, mut server) = pair().await;
        let peer = client.local_addr().unwrap();
        let config = trusting("127.0.0.0/8");
        let reading = tokio::spawn(async move {
            let addr = client_of(&mut server, peer, Some(&config), soon()).await;
            let mut rest = vec![0; 5];
            server.read_exact(&mut rest).await.unwrap();
            (addr, rest)
        });
        client.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
        client.flush().await.unwrap();
        tokio::task::yield_now().await;
        client
            .write_all(b"198.51.100.1 56324 443\r\nGET /")
            .await
            .unwrap();
        let (addr, rest) = reading.await.unwrap();
        assert_eq!(addr, Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(rest, b"GET /");
    }

    #[tokio::test]
    async fn an_untrusted_peer_is_its_own_client_and_its_bytes_stay() {
        let (mut client, mut server) = pair().await;
        let peer = client.local_addr().unwrap();
        client.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        let config = trusting("10.0.0.0/8");
        let addr = client_of(&mut server, peer, Some(&config), soon()).await;
        assert_eq!(addr, Some(peer));
        let mut first = [0; 6];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PROXY ");
    }

    #[tokio::test]
    async fn a_trusted_peer_without_a_header_is_refused() {
        let (mut client, mut server) = pair().await;
        let peer = client.local_addr().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let config = trusting("127.0.0.1/32");
        assert_eq!(
            client_of(&mut server, peer, Some(&config), soon()).await,
            None
        );
        drop(client);
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            client_of(&mut server, peer, Some(&config), soon()).await,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trusted_peer_that_stalls_is_refused_at_the_deadline() {
        let (_client, mut server) = pair().await;
        let peer = "127.0.0.1:1".parse().unwrap();
        let config = trusting("127.0.0.1/32");
        let deadline = Instant::now() + Duration::from_secs(3);
        assert_eq!(
            client_of(&mut server, peer, Some(&config), deadline).await,
            None
        );
        assert!(Instant::now() >= deadline);
    }
}
