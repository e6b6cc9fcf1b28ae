//! The HTTP client ACME requests go through: one HTTPS connection per
//! request, with hyper's HTTP/1.1 client over tokio-rustls, trusting the
//! `ca` of the config (a private ACME server's) or the system's roots.
//! ACME is a handful of requests per certificate every few weeks; a pool
//! would buy nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use crate::plan::Certificates;

/// How long one request may take, connection and TLS included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Https(tokio_rustls::TlsConnector);

impl Https {
    /// A client trusting `roots`, or the system's roots when `None`.
    pub fn new(roots: Option<&Certificates>) -> Result<Self, Error> {
        let (store, _unusable) = match roots {
            Some(roots) => crate::tls::root_store(roots),
            None => {
                let system = rustls_native_certs::load_native_certs().certs;
                let mut store = RootCertStore::empty();
                let (_, unusable) = store.add_parsable_certificates(system);
                (store, unusable)
            }
        };
        if store.is_empty() {
            return Err(other("no CA certificate to verify the ACME server with"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Self(tokio_rustls::TlsConnector::from(Arc::new(config))))
    }
}

fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Other(e.into())
}

impl HttpClient for Https {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.0.clone();
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, send(tls, request))
                .await
                .map_err(|_| other("the ACME server did not answer in time"))?
        })
    }
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    request: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, Error> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .ok_or_else(|| other("an ACME URL without a host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, authority.port_u16().unwrap_or(443)))
        .await
        .map_err(other)?;
    let name = ServerName::try_from(host.to_owned()).map_err(other)?;
    let stream = tls.connect(name, tcp).await.map_err(other)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    tokio::spawn(connection);
    let host = HeaderValue::from_str(authority.as_str()).map_err(other)?;
    parts.headers.insert(header::HOST, host);
    // The request line takes the path; the host went in its header.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(other)?;
    Ok(BytesResponse::from(response))
}
