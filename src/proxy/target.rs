//! Which host a request is for, and what it asks of it (RFC 9112 §3.2, RFC
//! 9110 §7.2), checked before routing so that the router and the upstream
//! cannot read a request differently:
//!
//! - exactly one `Host` in HTTP/1.1 (at most one before), and a valid one: a host and an optional port, no
//!   userinfo, nothing a path or a second authority could hide in;
//! - an absolute-form target (HTTP/1.1) or `:authority` (HTTP/2) wins over
//!   `Host` (RFC 9112 §3.2.2) and must agree with it; the upstream gets
//!   origin-form with the target's authority as `Host` (see `set_target`);
//! - the asterisk-form `*` only with `OPTIONS`;
//! - `CONNECT` never: no route tunnels.

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri, Version};

/// What makes a request's target unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request has no Host header")]
    MissingHost,
    #[error("more than one Host header")]
    TwoHosts,
    #[error("malformed Host header or target authority")]
    BadHost,
    #[error("Host header disagrees with the request target")]
    HostMismatch,
    #[error("request target has a scheme other than http or https")]
    BadScheme,
    #[error("asterisk-form target with a method other than OPTIONS")]
    Asterisk,
    #[error("CONNECT requested")]
    Connect,
}

impl TargetError {
    /// The client's answer: 400 for a target or host no one may read
    /// alike, 501 for CONNECT, which no route serves.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Connect => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The words in the client's answer.
    pub fn detail(self) -> &'static str {
        match self {
            Self::MissingHost => "missing Host header",
            Self::TwoHosts => "more than one Host header",
            Self::BadHost => "malformed host",
            Self::HostMismatch => "Host header disagrees with the request target",
            Self::BadScheme => "request target scheme is not http or https",
            Self::Asterisk => "asterisk-form target is for OPTIONS only",
            Self::Connect => "CONNECT is not served",
        }
    }
}

/// A checked request's host and form.
#[derive(Debug)]
pub struct Target {
    /// The authority of the target, else the `Host` header; `None` when the
    /// request names no host (HTTP/1.0).
    pub host: Option<HeaderValue>,
    /// `OPTIONS *`: routed as `/`, forwarded as `*`.
    pub asterisk: bool,
}

/// Checks `request`'s target and `Host` and says which host it is for.
pub fn check<B>(request: &Request<B>) -> Result<Target, TargetError> {
    if request.method() == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    let uri = request.uri();
    let asterisk = is_asterisk(uri);
    if asterisk && request.method() != Method::OPTIONS {
        return Err(TargetError::Asterisk);
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::TwoHosts);
    }
    // RFC 9112 §3.2: even with an absolute-form target.
    if host_header.is_none() && request.version() == Version::HTTP_11 {
        return Err(TargetError::MissingHost);
    }
    if let Some(h) = host_header.filter(|h| !valid_authority(h.as_bytes())) {
        tracing::trace!(host = ?h, "malformed Host");
        return Err(TargetError::BadHost);
    }
    let Some(authority) = uri.authority() else {
        return Ok(Target {
            host: host_header.cloned(),
            asterisk,
        });
    };
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "80",
        Some(s) if s.eq_ignore_ascii_case("https") => "443",
        _ => return Err(TargetError::BadScheme),
    };
    let authority = authority.as_str();
    if !valid_authority(authority.as_bytes()) {
        return Err(TargetError::BadHost);
    }
    if let Some(h) = host_header {
        if !same_authority(h.as_bytes(), authority.as_bytes(), default_port) {
            return Err(TargetError::HostMismatch);
        }
    }
    Ok(Target {
        host: HeaderValue::from_str(authority).ok(),
        asterisk,
    })
}

/// Whether `uri`'s path is the asterisk-form `*` (over HTTP/2 the URI
/// carries `:authority` beside it).
pub fn is_asterisk(uri: &Uri) -> bool {
    uri.path_and_query().map(PathAndQuery::as_str) == Some("*")
}

/// Whether `bytes` is `host [":" port]` (RFC 3986 §3.2.2-3): a non-empty
/// reg-name or IPv4 address of unreserved characters, sub-delims and
/// escapes, or a bracketed IPv6 literal; then digits after one colon.
/// Userinfo (`@`), a path, a query, spaces and backslashes are refused.
fn valid_authority(bytes: &[u8]) -> bool {
    let (host, port) = match bytes.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &rest[..end];
                let valid = literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                (valid && !literal.is_empty(), &rest[end + 1..])
            }
            None => return false,
        },
        None => {
            let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
            let name = &bytes[..end];
            // An http(s) URI's host is never empty (RFC 9110 §4.2.1).
            let valid = !name.is_empty() && name.iter().all(|&b| REG_NAME[usize::from(b)]);
            (valid, &bytes[end..])
        }
    };
    let port = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host && port
}

/// Bytes a reg-name may hold: unreserved, sub-delims and `%` of escapes.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether two authorities name the same host and port: case aside, and
/// with the scheme's default port written or not.
fn same_authority(a: &[u8], b: &[u8], default_port: &str) -> bool {
    let strip = |x: &'_ [u8]| -> usize {
        let suffix_len = default_port.len() + 1;
        let ends_with_default = x.len() > suffix_len
            && x[x.len() - suffix_len] == b':'
            && x.ends_with(default_port.as_bytes());
        if ends_with_default {
            x.len() - suffix_len
        } else {
            x.len()
        }
    };
    a[..strip(a)].eq_ignore_ascii_case(&b[..strip(b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, hosts: &[&str]) -> Request<()> {
        // HTTP/1.0: a Host is optional, so that its rules can be seen alone.
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .version(Version::HTTP_10);
        for h in hosts {
            builder = builder.header(header::HOST, *h);
        }
        builder.body(()).expect("a valid request")
    }

    fn host_of(method: &str, target: &str, hosts: &[&str]) -> Result<Option<String>, TargetError> {
        check(&request(method, target, hosts))
            .map(|t| t.host.map(|h| h.to_str().unwrap_or_default().to_owned()))
    }

    #[test]
    fn the_host_is_the_target_authority_else_the_host_header() {
        assert_eq!(
            host_of("GET", "/", &["a.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(host_of("GET", "/", &[]), Ok(None));
        assert_eq!(
            host_of("GET", "http://a.example/x", &[]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_of("GET", "http://A.example:80/x", &["a.EXAMPLE"]),
            Ok(Some("A.example:80".into()))
        );
        assert_eq!(
            host_of("GET", "https://a.example/x", &["a.example:443"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_of("GET", "/", &["[::1]:8080"]),
            Ok(Some("[::1]:8080".into()))
        );
    }

    #[test]
    fn an_ambiguous_host_is_refused() {
        let refused = |target: &str, hosts: &[&str]| host_of("GET", target, hosts).unwrap_err();
        assert_eq!(refused("/", &["a", "b"]), TargetError::TwoHosts);
        assert_eq!(refused("/", &["a", "a"]), TargetError::TwoHosts);
        assert_eq!(
            refused("http://a.example/", &["b.example"]),
            TargetError::HostMismatch
        );
        assert_eq!(
            refused("http://a.example:8080/", &["a.example"]),
            TargetError::HostMismatch
        );
        assert_eq!(refused("ftp://a.example/", &[]), TargetError::BadScheme);
        assert_eq!(refused("http://u@a.example/", &[]), TargetError::BadHost);
        for bad in [
            "a@b", "a/b", "a b", "a\\b", "a?b", "a#b", "a:8x", "[::1", "[zz]", "[::1]x", "a:1:2",
            "", ":80", "[]", "[::1]:8x",
        ] {
            assert_eq!(refused("/", &[bad]), TargetError::BadHost, "{bad}");
        }
    }

    #[test]
    fn http_1_1_needs_a_host_even_with_an_absolute_target() {
        let mut request = request("GET", "http://a.example/", &[]);
        *request.version_mut() = Version::HTTP_11;
        assert_eq!(check(&request).unwrap_err(), TargetError::MissingHost);
    }

    #[test]
    fn asterisk_form_is_for_options_alone_and_connect_for_nobody() {
        assert!(check(&request("OPTIONS", "*", &["a"])).is_ok_and(|t| t.asterisk));
        assert_eq!(
            check(&request("GET", "*", &["a"])).unwrap_err(),
            TargetError::Asterisk
        );
        assert_eq!(
            check(&request("CONNECT", "a.example:443", &["a.example:443"])).unwrap_err(),
            TargetError::Connect
        );
    }
}
