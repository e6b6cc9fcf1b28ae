//! The admin endpoint (`admin.listen`), served by the master: the status
//! page `/`, `/status`, `/healthz`, `/config` and `POST /reload`; and the
//! small client that `corral reload` and `corral check --diff` use to
//! reach it.
//!
//! The endpoint knows nothing of workers or configs itself: it asks a
//! [`Backend`] (the master) and renders the answer. With a token
//! configured (required off loopback), every client must send it as
//! `Authorization: Bearer`, except for the page, which holds no data (see
//! [`page`]); actions take `POST` alone, so no link or prefetch can
//! trigger one.

mod page;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept;
use crate::body::response::ResponseBody;
use crate::plan::AdminToken;
use crate::proxy::local_response;

/// What the admin endpoint reports on.
pub trait Backend: Send + Sync + 'static {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// `Ok` when the master and every worker slot are up, else why not.
    fn healthz(&self) -> Result<(), String>;
    /// The Prometheus text page for the whole cluster.
    fn metrics(&self) -> String;
    /// The running config: `generation`, `path` and `text`.
    fn config(&self) -> serde_json::Value;
    /// Reloads the config file.
    fn reload(&self) -> Pin<Box<dyn Future<Output = ReloadAnswer> + Send>>;
    /// The token every client must present, if one is set, as the
    /// running generation has it (a reload rotates it).
    fn token(&self) -> Option<AdminToken>;
}

/// How a `POST /reload` ended.
#[derive(Debug)]
pub enum ReloadAnswer {
    Done {
        generation: u64,
        changes: Vec<String>,
        /// The file and the files it names read as the running generation's:
        /// nothing was reloaded.
        unchanged: bool,
    },
    /// Still serving the previous generation; `lines` say why (config
    /// errors as `FILE:LINE:COL: reason`).
    Refused {
        status: StatusCode,
        lines: Vec<String>,
    },
}

/// Serves the admin endpoint until `stop` is cancelled.
pub async fn serve(listener: TcpListener, backend: Arc<dyn Backend>, stop: CancellationToken) {
    while let Some((stream, peer)) = accept::next(&listener, "admin", &stop).await {
        let backend = backend.clone();
        // One request per connection, and no cut-off at stop: during a
        // binary upgrade a request the old master accepted is still answered.
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let backend = backend.clone();
                async move {
                    let answer = match refusal(&*backend, peer.ip(), &request) {
                        Some(refused) => refused,
                        None => answer(&*backend, &request).await,
                    };
                    Ok::<_, Infallible>(answer)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection failed");
            }
        });
    }
}

/// The answer to a client that may not use the endpoint: with a token
/// configured (always, off loopback), one that does not present it. `None`
/// lets the request through.
fn refusal<B>(
    backend: &dyn Backend,
    peer: IpAddr,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    // The page is the same static text for everyone; what it shows it
    // fetches with the token.
    if request.method() == Method::GET && request.uri().path() == "/" {
        return None;
    }
    let token = backend.token()?;
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    if presented.is_some_and(|p| token.matches(p.trim_ascii())) {
        return None;
    }
    tracing::info!(client = %peer, path = %request.uri().path(), "admin request refused: no valid token");
    let mut refused = local_response(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"corral\""),
    );
    Some(refused)
}

async fn answer(backend: &dyn Backend, request: &Request<Incoming>) -> Response<ResponseBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => page::response(),
        (&Method::GET, "/status") => json(StatusCode::OK, &backend.status()),
        (&Method::GET, "/config") => json(StatusCode::OK, &backend.config()),
        (&Method::GET, "/metrics") => typed(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            backend.metrics(),
        ),
        (&Method::GET, "/healthz") => match backend.healthz() {
            Ok(()) => local_response(StatusCode::OK, "healthy"),
            Err(why) => local_response(StatusCode::SERVICE_UNAVAILABLE, &why),
        },
        (&Method::POST, "/reload") => match backend.reload().await {
            ReloadAnswer::Done {
                generation,
                changes,
                unchanged,
            } => json(
                StatusCode::OK,
                &serde_json::json!({ "generation": generation, "changes": changes, "unchanged": unchanged }),
            ),
            ReloadAnswer::Refused { status, lines } => {
                typed(status, "text/plain; charset=utf-8", lines.join("\n") + "\n")
            }
        },
        (_, "/" | "/status" | "/config" | "/healthz" | "/metrics") => {
            local_response(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        (_, "/reload") => local_response(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => local_response(StatusCode::NOT_FOUND, "unknown admin path"),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    typed(status, "application/json", text)
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = status;
    let content_type = header::HeaderValue::from_static(content_type);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

pub mod client {
    //! A minimal HTTP/1.1 client for the admin endpoint.

    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpStream;

    #[derive(Debug, thiserror::Error)]
    pub enum AdminError {
        #[error("connect failed: {0}")]
        Connect(#[source] std::io::Error),
        #[error("HTTP failed: {0}")]
        Http(#[from] hyper::Error),
        #[error("bad request: {0}")]
        Request(#[from] http::Error),
        #[error("no answer within {0:?}")]
        Timeout(Duration),
    }

    /// Longer than a reload may take (workers get 10 s to confirm one), so
    /// only a hung endpoint runs into it.
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Sends `method path`, with `token` as a bearer token if given, and
    /// returns the status and body text.
    pub async fn call(
        addr: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), AdminError> {
        tokio::time::timeout(TIMEOUT, exchange(addr, method, path, token))
            .await
            .unwrap_or(Err(AdminError::Timeout(TIMEOUT)))
    }

    async fn exchange(
        addr: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), AdminError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(AdminError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string());
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
