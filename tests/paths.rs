//! One path, seen alike by the router and the upstream: dot segments, raw
//! or percent-encoded, are resolved before routing, and the upstream gets
//! the path the router matched; encoded slashes are refused, decoded or
//! kept as the listener says. Raw requests, so that no client library
//! tidies the path on the way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/api/` goes to the `api` upstream (prefix kept), `/strip/` to `api`
/// with its prefix stripped, everything else to `web`.
async fn proxy(listener_settings: &str) -> (InProcess, Upstream, Upstream) {
    let (api, web) = (echo("api").await, echo("web").await);
    let config = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_settings}

[[routes]]
path_prefix = "/api/"
upstream = "api"

[[routes]]
path_prefix = "/strip/"
upstream = "api"
strip_prefix = true

[[routes]]
upstream = "web"

[[upstreams]]
name = "api"
servers = [{{ addr = "{}" }}]

[[upstreams]]
name = "web"
servers = [{{ addr = "{}" }}]
"#,
        api.addr, web.addr
    );
    (in_process(&config).await, api, web)
}

/// The status, and the body, of `GET target` sent as is.
async fn raw_get(proxy: &InProcess, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    patiently("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Which echo answered, and the target it was sent.
async fn reached(proxy: &InProcess, target: &str) -> (String, String) {
    let (status, body) = raw_get(proxy, target).await;
    assert_eq!(status, 200, "{target}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let uri = json["uri"].as_str().unwrap().to_owned();
    (json["name"].as_str().unwrap().to_owned(), uri)
}

#[tokio::test]
async fn a_dot_segment_never_carries_a_request_out_of_the_prefix_it_matched() {
    let (proxy, _api, _web) = proxy("").await;
    for target in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/.%2E/admin",
        "/api/./../admin",
    ] {
        assert_eq!(
            reached(&proxy, target).await,
            ("web".to_owned(), "/admin".to_owned()),
            "{target}"
        );
    }
    // Resolved inside the prefix, it stays there.
    assert_eq!(
        reached(&proxy, "/api/v1/../users").await,
        ("api".to_owned(), "/api/users".to_owned())
    );
    // The upstream sees the normal path the route stripped.
    assert_eq!(
        reached(&proxy, "/strip/./a/%2E%2E/users?id=%2e%2e").await,
        ("api".to_owned(), "/users?id=%2e%2e".to_owned())
    );
    // Unreserved characters are decoded; the rest keep their escapes.
    assert_eq!(
        reached(&proxy, "/%61pi/a%20b").await,
        ("api".to_owned(), "/api/a%20b".to_owned())
    );
}

#[tokio::test]
async fn an_encoded_slash_is_refused_by_default_and_never_forwarded() {
    let (proxy, _api, _web) = proxy("").await;
    for target in ["/api/..%2fadmin", "/api/..%5Cadmin"] {
        let (status, body) = raw_get(&proxy, target).await;
        assert_eq!(status, 400, "{target}");
        assert_eq!(body, "400 Bad Request: encoded slash in path\n");
    }
    let (status, body) = raw_get(&proxy, "/api/%zz").await;
    assert_eq!(
        (status, body.as_str()),
        (400, "400 Bad Request: malformed path\n")
    );
}

#[tokio::test]
async fn a_listener_may_decode_encoded_slashes_or_keep_them() {
    let (decoding, _api, _web) = proxy("path_encoded_slashes = \"decode\"").await;
    assert_eq!(
        reached(&decoding, "/api/..%2fadmin").await,
        ("web".to_owned(), "/admin".to_owned())
    );
    let (keeping, _api, _web) = proxy("path_encoded_slashes = \"keep\"").await;
    assert_eq!(
        reached(&keeping, "/api/..%2fadmin").await,
        ("api".to_owned(), "/api/..%2Fadmin".to_owned())
    );
}
