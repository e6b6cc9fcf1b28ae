//! `redirect_https` on a plain listener: every request is answered with a
//! 308 to the same host, path and query over HTTPS (308, not 301: the
//! method and body are kept), and reaches no upstream.

use http::{HeaderValue, Response, StatusCode, Uri, header};

use crate::body::response::ResponseBody;

/// The redirect for a request to `host` (its `Host`, maybe with a port)
/// for `uri`, to HTTPS on `port`; `None` when no valid URL comes of it.
pub fn to_https(host: &HeaderValue, uri: &Uri, port: u16) -> Option<Response<ResponseBody>> {
    let authority: http::uri::Authority = host.to_str().ok()?.parse().ok()?;
    let name = authority.host();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{name}{target}"),
        port => format!("https://{name}:{port}{target}"),
    };
    let location = HeaderValue::try_from(location).ok()?;
    let mut response = Response::new(ResponseBody::local(String::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, uri: &str, port: u16) -> Option<String> {
        let response = to_https(&HeaderValue::from_str(host).ok()?, &uri.parse().ok()?, port)?;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        Some(
            response.headers()[header::LOCATION]
                .to_str()
                .ok()?
                .to_owned(),
        )
    }

    #[test]
    fn the_host_path_and_query_are_kept_and_the_port_is_the_https_one() {
        assert_eq!(
            location("example.com:8080", "/a/b?c=1&d", 443).as_deref(),
            Some("https://example.com/a/b?c=1&d")
        );
        assert_eq!(
            location("example.com", "/", 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            location("[::1]:80", "/x", 443).as_deref(),
            Some("https://[::1]/x")
        );
        // Absolute-form: the target's path and query.
        assert_eq!(
            location("example.com", "http://example.com/p?q", 443).as_deref(),
            Some("https://example.com/p?q")
        );
        assert_eq!(location("bad host", "/", 443), None);
    }
}
