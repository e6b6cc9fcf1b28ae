//! Everything that can stop a request, whose fault it is, and what the client
//! is told.
//!
//! One exhaustive `match` maps each case to a status code, and another to the
//! `kind` label of `corral_upstream_errors_total`. Bodies are short plain text
//! that names the problem, never addresses or internal errors.

use http::{Response, StatusCode, header};

use crate::body::{BodyError, ResponseBody};
use crate::upstream::ConnectError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Config,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host header")]
    MissingHost,
    #[error("no route matches the request")]
    NoRoute,
    #[error("request body of {length} bytes exceeds the limit of {limit}")]
    BodyTooLarge { length: u64, limit: u64 },
    #[error("request body failed: {0}")]
    ClientBody(#[source] BodyError),
    #[error("upstream `{upstream}` has no available server")]
    NoServer { upstream: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no response within {0:?}")]
    ResponseTimeout(std::time::Duration),
    #[error("upstream request failed: {0}")]
    Upstream(#[source] hyper::Error),
}

impl ProxyError {
    /// Sorts a failed upstream exchange: when the client's body broke it,
    /// that is the client's fault, not the upstream's.
    pub fn from_send(error: hyper::Error) -> Self {
        let cause =
            std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .find_map(|e| e.downcast_ref::<BodyError>())
            .map(|b| match b {
                BodyError::TooLarge { limit } => Some(BodyError::TooLarge { limit: *limit }),
                BodyError::Timeout(d) => Some(BodyError::Timeout(*d)),
                BodyError::Client(_) => None,
            });
        match cause {
            Some(Some(body)) => Self::ClientBody(body),
            Some(None) => Self::ClientBody(BodyError::Client(error)),
            None => Self::Upstream(error),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBody(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBody(BodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Self::ClientBody(BodyError::Client(_)) => StatusCode::BAD_REQUEST,
            Self::NoServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect(ConnectError::Io { .. } | ConnectError::Handshake { .. }) => {
                StatusCode::BAD_GATEWAY
            }
            Self::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::MissingHost | Self::BodyTooLarge { .. } | Self::ClientBody(_) => Fault::Client,
            Self::NoRoute | Self::NoServer { .. } => Fault::Config,
            Self::Connect(_) | Self::ResponseTimeout(_) | Self::Upstream(_) => Fault::Upstream,
        }
    }

    /// The `kind` label for upstream errors; `None` when the upstream is not at fault.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::Connect(ConnectError::Timeout { .. }) | Self::ResponseTimeout(_) => {
                Some("timeout")
            }
            Self::Connect(ConnectError::Io { .. }) => Some("connect"),
            Self::Connect(ConnectError::Handshake { .. }) => Some("protocol"),
            Self::Upstream(e) if e.is_parse() || e.is_parse_status() => Some("protocol"),
            Self::Upstream(_) => Some("reset"),
            Self::MissingHost
            | Self::NoRoute
            | Self::BodyTooLarge { .. }
            | Self::ClientBody(_)
            | Self::NoServer { .. } => None,
        }
    }

    /// The answer the client gets.
    pub fn response(&self) -> Response<ResponseBody> {
        let status = self.status();
        let detail = match self {
            Self::MissingHost => "missing Host header",
            Self::NoRoute => "no route for this request",
            Self::BodyTooLarge { .. } | Self::ClientBody(BodyError::TooLarge { .. }) => {
                "request body too large"
            }
            Self::ClientBody(BodyError::Timeout(_)) => "request body timed out",
            Self::ClientBody(BodyError::Client(_)) => "request body incomplete",
            Self::NoServer { .. } => "no healthy upstream server",
            Self::Connect(ConnectError::Timeout { .. }) | Self::ResponseTimeout(_) => {
                "upstream timed out"
            }
            Self::Connect(_) => "upstream unreachable",
            Self::Upstream(_) => "invalid response from upstream",
        };
        local_response(status, detail)
    }
}

/// The body of every error corral answers itself: `STATUS Reason: detail`.
pub fn error_text(status: StatusCode, detail: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    format!("{} {reason}: {detail}\n", status.as_u16())
}

/// A short plain-text response, e.g. `502 Bad Gateway: upstream unreachable`.
pub fn local_response(status: StatusCode, detail: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(error_text(status, detail)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
