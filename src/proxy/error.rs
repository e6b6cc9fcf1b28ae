//! Everything that can stop a request, whose fault it is, and what the client
//! is told.
//!
//! One exhaustive `match` ([`ProxyError::verdict`]) maps each case to its
//! status code, whose fault it is, the `kind` label of
//! `corral_upstream_errors_total` and the words the client reads. Bodies
//! are short plain text that names the problem, never addresses or internal
//! errors. [`ProxyError::retry_safe`] says whether another server may take
//! the request.

use http::{Response, StatusCode, header};

use super::path::PathError;
use super::target::TargetError;
use crate::body::request::BodyError;
use crate::body::response::ResponseBody;
use crate::upstream::ConnectError;
use crate::upstream::http1::{self, SendError};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Config,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error(transparent)]
    BadPath(#[from] PathError),
    #[error("a transfer coding other than chunked")]
    TransferCoding,
    #[error("a request header name holds an underscore")]
    UnderscoredHeader,
    #[error("no route matches the request")]
    NoRoute,
    #[error("no host to redirect to HTTPS")]
    NoRedirectHost,
    #[error("request body of {length} bytes exceeds the limit of {limit}")]
    BodyTooLarge { length: u64, limit: u64 },
    #[error("request body failed: {0}")]
    ClientBody(#[source] BodyError),
    #[error("upstream `{upstream}` has no available server")]
    NoServer { upstream: String },
    #[error("no server of upstream `{upstream}` had room within its queue_timeout")]
    QueueFull { upstream: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no response within {0:?}")]
    ResponseTimeout(std::time::Duration),
    #[error("upstream request failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream exchange failed: {0}")]
    Http1(#[source] http1::Error),
    #[error("a server's protocol is not its upstream's")]
    ProtocolMismatch,
}

impl From<SendError> for ProxyError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Unsent(e, _) => Self::Http1(http1::Error::Io(e)),
            SendError::Upstream(e) | SendError::Unanswered(e) => Self::Http1(e),
            SendError::ClientBody(e) => Self::ClientBody(e),
            SendError::TimedOut(limit) => Self::ResponseTimeout(limit),
        }
    }
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

    /// How this failure is answered, counted and blamed: one row per case.
    fn verdict(&self) -> Verdict {
        use BodyError as Body;
        use ConnectError as Connect;
        use StatusCode as S;
        let (status, fault, kind, detail) = match self {
            Self::BadTarget(e) => client(e.status(), e.detail()),
            Self::TransferCoding => client(S::NOT_IMPLEMENTED, "transfer coding not supported"),
            Self::UnderscoredHeader => client(S::BAD_REQUEST, "underscore in a header name"),
            Self::BadPath(PathError::EncodedSlash) => {
                client(S::BAD_REQUEST, "encoded slash in path")
            }
            Self::BadPath(PathError::BadEscape) => client(S::BAD_REQUEST, "malformed path"),
            Self::NoRedirectHost => client(S::BAD_REQUEST, "no host to redirect to"),
            Self::NoRoute => (
                StatusCode::NOT_FOUND,
                Fault::Config,
                None,
                "no route for this request",
            ),
            Self::BodyTooLarge { .. } | Self::ClientBody(Body::TooLarge { .. }) => {
                client(S::PAYLOAD_TOO_LARGE, "request body too large")
            }
            Self::ClientBody(Body::Timeout(_)) => {
                client(S::REQUEST_TIMEOUT, "request body timed out")
            }
            Self::ClientBody(Body::Client(_)) => client(S::BAD_REQUEST, "request body incomplete"),
            // Every server is down or failing: the upstream's doing. No
            // server to count it against.
            Self::NoServer { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Fault::Upstream,
                None,
                "no healthy upstream server",
            ),
            // Every server is as busy as the config lets it be.
            Self::QueueFull { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Fault::Upstream,
                None,
                "upstream servers busy",
            ),
            Self::Connect(Connect::Timeout { .. }) | Self::ResponseTimeout(_) => {
                server(S::GATEWAY_TIMEOUT, "timeout", "upstream timed out")
            }
            Self::Connect(Connect::Io { .. }) => server(S::BAD_GATEWAY, "connect", UNREACHABLE),
            // A certificate that does not verify, or a server that will not
            // speak TLS: the server is not the one configured.
            Self::Connect(Connect::Tls { .. }) => server(S::BAD_GATEWAY, "tls", TLS_REFUSED),
            Self::Connect(Connect::Handshake { .. }) => {
                server(S::BAD_GATEWAY, "protocol", UNREACHABLE)
            }
            Self::Upstream(e) if e.is_parse() || e.is_parse_status() => {
                server(S::BAD_GATEWAY, "protocol", INVALID)
            }
            Self::Http1(e) if e.is_protocol() => server(S::BAD_GATEWAY, "protocol", INVALID),
            // The server ended the session with a TLS alert once the
            // handshake seemed done: under TLS 1.3, how it refuses a client
            // certificate, or the lack of one.
            Self::Upstream(_) | Self::Http1(_) if self.tls_alert() => {
                server(S::BAD_GATEWAY, "tls", TLS_REFUSED)
            }
            Self::Upstream(_) | Self::Http1(_) | Self::ProtocolMismatch => {
                server(S::BAD_GATEWAY, "reset", INVALID)
            }
        };
        Verdict {
            status,
            fault,
            kind,
            detail,
        }
    }

    /// Whether a TLS error (an alert from the server) lies under an
    /// exchange that failed.
    fn tls_alert(&self) -> bool {
        let top: &(dyn std::error::Error + 'static) = match self {
            Self::Upstream(e) => e,
            Self::Http1(http1::Error::Io(e)) => e,
            _ => return false,
        };
        std::iter::successors(Some(top), |e| match e.downcast_ref::<std::io::Error>() {
            // An io::Error's source skips the error it wraps.
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        })
        .any(|e| e.is::<rustls::Error>())
    }

    pub fn status(&self) -> StatusCode {
        self.verdict().status
    }

    pub fn fault(&self) -> Fault {
        self.verdict().fault
    }

    /// The `kind` label of `corral_upstream_errors_total`; `None` when no
    /// server is to blame.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        self.verdict().kind
    }

    /// Whether the request may go to another server: only when it never
    /// left corral, because no connection to the server could be opened.
    /// Once any of it was sent, its body may be gone, and the upstream may
    /// have acted on it.
    pub fn retry_safe(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    /// The answer the client gets.
    pub fn response(&self) -> Response<ResponseBody> {
        let Verdict { status, detail, .. } = self.verdict();
        local_response(status, detail)
    }
}

/// A row for a request the client got wrong, which no server is blamed for.
fn client(status: StatusCode, detail: &'static str) -> Row {
    (status, Fault::Client, None, detail)
}

/// A row for a failure a server is blamed for, counted under `kind`.
fn server(status: StatusCode, kind: &'static str, detail: &'static str) -> Row {
    (status, Fault::Upstream, Some(kind), detail)
}

const UNREACHABLE: &str = "upstream unreachable";
const INVALID: &str = "invalid response from upstream";
const TLS_REFUSED: &str = "upstream TLS handshake failed";

/// Status, fault, `kind` label and the client's words.
type Row = (StatusCode, Fault, Option<&'static str>, &'static str);

struct Verdict {
    status: StatusCode,
    fault: Fault,
    kind: Option<&'static str>,
    detail: &'static str,
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
