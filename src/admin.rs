//! The admin endpoint (`admin.listen`): its HTTP client side, used by
//! `corral reload` and the tests.

pub mod client {
    //! A minimal HTTP/1.1 client for the admin endpoint.

    use std::net::SocketAddr;

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
    }

    /// Sends `method path` and returns the status and body text.
    pub async fn call(
        addr: SocketAddr,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, String), AdminError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(AdminError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn post(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), AdminError> {
        call(addr, Method::POST, path).await
    }
}
