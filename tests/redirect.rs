//! `redirect_https` on a plain listener: a 308 to HTTPS with the host,
//! path and query kept (and the configured port), for every method, while
//! no request reaches an upstream; and the keys' rules in `corral check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

#[tokio::test]
async fn a_plain_listener_redirects_every_request_to_https() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = upstream(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { http::Response::new(empty()) }
    })
    .await;
    let config = listener_config(
        app.addr,
        "redirect_https = true\nredirect_https_port = 8443",
    );
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let reply = get(addr, "/a/b?c=1", &[("host", "shop.example:8080")]).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        "https://shop.example:8443/a/b?c=1"
    );
    let mut client = H1::connect(addr).await;
    let request = http::Request::post("/form")
        .header("host", "shop.example")
        .body(full("x=1"))
        .unwrap();
    let reply = read(client.send(request).await.unwrap()).await;
    assert_eq!(reply.status, 308);
    assert_eq!(reply.headers["location"], "https://shop.example:8443/form");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request reached the upstream"
    );
}

#[test]
fn redirect_https_is_for_plain_listeners_and_its_port_needs_it() {
    let app = "127.0.0.1:9".parse().unwrap();
    let (ok, text, _) = check(&listener_config(app, "redirect_https_port = 8443"));
    assert!(
        !ok && text.contains("listeners.redirect_https_port: only used with redirect_https = true"),
        "{text}"
    );
    let (ok, text, _) = check(&listener_config(
        app,
        "redirect_https = true\nredirect_https_port = 0",
    ));
    assert!(
        !ok && text.contains("listeners.redirect_https_port: 0 is out of range"),
        "{text}"
    );
    let (ok, text, _) = check(&listener_config(app, "redirect_https = true"));
    assert!(ok, "{text}");
}
