//! Opening a connection to an upstream server: the one way corral reaches
//! a server, shared by the request pools and the master's health checks.
//! TCP now; upstream TLS will wrap the stream here, so that every
//! connection to a server, probe or request, is made the same way.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::plan::UpstreamConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connecting to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// How to reach the servers of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    timeout: Duration,
}

impl Connector {
    pub fn new(upstream: &UpstreamConfig) -> Self {
        Self {
            timeout: upstream.connect_timeout,
        }
    }

    /// An HTTP/2 connection to `addr` (prior knowledge), pinged every 30 s
    /// so that a dead peer is noticed while the connection is idle.
    pub async fn http2<B>(&self, addr: SocketAddr) -> Result<http2::SendRequest<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.stream(addr).await?;
        let (conn, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        Ok(conn)
    }

    /// A TCP connection to `addr`, ready for HTTP/1.1.
    pub async fn stream(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let timeout = self.timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Requests and responses are written whole; Nagle would only delay them.
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Io { addr, source })?;
        Ok(stream)
    }
}
