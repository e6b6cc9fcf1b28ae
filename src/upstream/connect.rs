//! Opening a connection to an upstream server: the one way corral reaches
//! a server, shared by the request pools and the master's health checks.
//! TCP, then TLS for an upstream with `tls`, so that every connection to a
//! server, probe or request, is made and verified the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::stream::Stream;
use crate::plan::{Protocol, UpstreamConfig, UpstreamTls};

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
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
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
#[derive(Clone)]
pub struct Connector {
    /// For the TCP connect and the TLS handshake together.
    timeout: Duration,
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    /// What the connector was built from: two connectors are the same when
    /// this is (see `PartialEq`).
    settings: (UpstreamTls, Protocol),
    /// `Err`: the settings rustls refused (validation makes sure it does
    /// not), said on every connect rather than served without TLS.
    connector: Result<TlsConnector, Arc<str>>,
    /// `None`: each server's address.
    name: Option<ServerName<'static>>,
}

impl PartialEq for Connector {
    fn eq(&self, other: &Self) -> bool {
        self.timeout == other.timeout
            && self.tls.as_ref().map(|t| &t.settings) == other.tls.as_ref().map(|t| &t.settings)
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    pub fn new(upstream: &UpstreamConfig) -> Self {
        let tls = upstream.tls.as_ref().map(|tls| Tls {
            settings: (tls.clone(), upstream.protocol),
            connector: crate::tls::client::config(tls, upstream.protocol)
                .map(TlsConnector::from)
                .map_err(|e| {
                    tracing::error!(upstream = %upstream.name, error = %e, "upstream TLS settings rejected");
                    Arc::from(e.to_string())
                }),
            name: tls
                .server_name
                .as_deref()
                .and_then(|name| ServerName::try_from(name.to_owned()).ok()),
        });
        Self {
            timeout: upstream.connect_timeout,
            tls,
        }
    }

    /// Whether connections are TLS (the upstream's `tls`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection to `addr`, TLS when the upstream has it, ready for
    /// HTTP/1.1 (or h2, see [`Http2::connect`](super::Http2::connect)):
    /// connected and handshaken within `connect_timeout`. TLS verifies the
    /// upstream's `server_name`, else `host` (the DNS name the address came
    /// from), else the address itself.
    pub async fn stream(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<Stream, ConnectError> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Requests and responses are written whole; Nagle would only delay them.
        tcp.set_nodelay(true)
            .map_err(|source| ConnectError::Io { addr, source })?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let connector = tls.connector.as_ref().map_err(|e| ConnectError::Tls {
            addr,
            source: std::io::Error::other(e.to_string()),
        })?;
        let name = tls
            .name
            .clone()
            .or_else(|| host.and_then(|h| ServerName::try_from(h.to_owned()).ok()))
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let session = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map_err(|source| ConnectError::Tls { addr, source })?;
        Ok(Stream::Tls(Box::new(session)))
    }
}
