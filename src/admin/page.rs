//! The status page `GET /` answers: one static HTML document
//! (`status.html`, inline style and script, no outside assets) that fetches
//! `/status` and `/metrics` itself and renders them.
//!
//! It holds no data, so it is served without the admin token: a browser
//! cannot send `Authorization` on a navigation. The page's own fetches
//! send the token its user types in (kept in the tab's sessionStorage);
//! the token never travels in a URL, where logs and history would keep it.

use std::sync::LazyLock;

use base64::Engine;
use http::{Response, StatusCode, header};

use crate::body::response::ResponseBody;

const PAGE: &str = include_str!("status.html");

/// The page's Content-Security-Policy: its one inline style and one inline
/// script by hash, fetches to this origin alone, nothing else, no framing.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_of("script"),
        hash_of("style"),
    )
});

/// `'sha256-…'` of the contents of the page's `<tag>` element, as CSP
/// hashes it; `'none'` if the page had no such element.
fn hash_of(tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = PAGE.find(&open).map(|i| i + open.len()) else {
        return "'none'".to_owned();
    };
    let Some(len) = PAGE[start..].find(&close) else {
        return "'none'".to_owned();
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &PAGE.as_bytes()[start..start + len]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!("'sha256-{encoded}'")
}

/// The page, with headers that keep it from being framed, sniffed as
/// something else, cached or given anything it did not bring.
pub fn response() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(PAGE.to_owned()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    if let Ok(policy) = header::HeaderValue::from_str(&POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_inline_script_and_style_by_hash() {
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(!PAGE.contains("<script src") && !PAGE.contains("<link"));
        assert_eq!(POLICY.matches("'sha256-").count(), 2, "{}", *POLICY);
        assert!(!POLICY.contains("'none'; style") && !POLICY.contains("unsafe"));
    }
}
