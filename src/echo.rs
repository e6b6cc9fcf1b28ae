//! `corral echo`: the built-in demo upstream.
//!
//! Answers every request 200 with JSON describing what it received (method,
//! path, query, version, headers, body size, peer) and an `x-backend: NAME`
//! header, so balancing and header rewriting can be seen with curl. Request
//! bodies are counted as they stream in, never held, so it also serves large
//! uploads. Speaks HTTP/1.1 and HTTP/2 with prior knowledge.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept;
use crate::body::response::ResponseBody;

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, name: String, shutdown: CancellationToken) {
    let name = Arc::new(name);
    while let Some((stream, peer)) = accept::next(&listener, "echo", &shutdown).await {
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, peer, name.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "echo: connection ended with an error");
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    name: Arc<String>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        headers.insert(name.to_string(), json!(values.join(", ")));
    }
    let report = json!({
        "name": *name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "peer": peer.to_string(),
    });
    let mut text = report.to_string();
    text.push('\n');
    let mut response = Response::new(ResponseBody::local(text));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-backend", v);
    }
    Ok(response)
}
