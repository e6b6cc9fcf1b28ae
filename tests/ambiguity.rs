//! Every ambiguous request normalised or refused before it reaches an
//! upstream: the host it is for (one `Host`, absolute-form agreeing with
//! it, `*` with OPTIONS alone, no CONNECT), header names with `_`,
//! hop-by-hop headers, and upgrades that switch only on a real 101. Raw
//! bytes from the client, and a strict upstream that records exactly what
//! reached it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `a.example` goes to `a`, `/ws` on any host to `ws`, `/` on any other
/// host to `b`.
async fn proxy(listener_settings: &str, a: &Recording, b: &Recording, ws: &Recording) -> InProcess {
    let config = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_settings}

[[routes]]
host = "a.example"
upstream = "a"

[[routes]]
path_prefix = "/ws"
upstream = "ws"

[[routes]]
host = "b.example"
upstream = "b"

[[upstreams]]
name = "a"
servers = [{{ addr = "{}" }}]

[[upstreams]]
name = "b"
servers = [{{ addr = "{}" }}]

[[upstreams]]
name = "ws"
servers = [{{ addr = "{}" }}]
"#,
        a.addr, b.addr, ws.addr
    );
    in_process(&config).await
}

struct Fixture {
    proxy: InProcess,
    a: Recording,
    b: Recording,
    ws: Recording,
}

async fn fixture(listener_settings: &str) -> Fixture {
    fixture_with(listener_settings, |_| Answer::Ok).await
}

/// [`fixture`] whose `ws` upstream answers with `ws_reply`.
async fn fixture_with(
    listener_settings: &str,
    ws_reply: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
) -> Fixture {
    let (a, b, ws) = (
        recording().await,
        recording().await,
        recording_with(ws_reply).await,
    );
    let proxy = proxy(listener_settings, &a, &b, &ws).await;
    Fixture { proxy, a, b, ws }
}

impl Fixture {
    /// Every request any upstream recorded.
    fn forwarded(&self) -> Vec<Recorded> {
        [&self.a, &self.b, &self.ws]
            .iter()
            .flat_map(|u| u.requests())
            .collect()
    }
}

/// Sends `raw` and reads until corral closes the connection.
async fn send(proxy: &InProcess, raw: &str) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    patiently("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of each response in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Sends `raw`, expects one answer of `status` with `detail` in its body,
/// and nothing forwarded.
async fn refused(f: &Fixture, raw: &str, status: u16, detail: &str) {
    let answer = send(&f.proxy, raw).await;
    assert_eq!(statuses(&answer), [status], "{raw:?} got {answer}");
    assert!(answer.contains(detail), "{raw:?} got {answer}");
    assert!(
        f.forwarded().is_empty(),
        "{raw:?} reached {:?}",
        f.forwarded()
    );
}

#[tokio::test]
async fn two_host_headers_are_refused_whatever_they_say() {
    let f = fixture("").await;
    for hosts in [
        "a.example\r\nHost: b.example",
        "a.example\r\nHost: a.example",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {hosts}\r\nConnection: close\r\n\r\n");
        refused(&f, &raw, 400, "more than one Host header").await;
    }
}

#[tokio::test]
async fn a_malformed_or_missing_host_is_refused() {
    let f = fixture("").await;
    for host in [
        "a.example@b.example",
        "a.example/x",
        "a.example:80x",
        "[::1",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        refused(&f, &raw, 400, "malformed host").await;
    }
    let raw = "GET http://a.example/ HTTP/1.1\r\nConnection: close\r\n\r\n";
    refused(&f, raw, 400, "missing Host header").await;
}

#[tokio::test]
async fn an_absolute_form_target_wins_and_reaches_the_upstream_in_origin_form() {
    let f = fixture("").await;
    // Host names `b`, case and the default port aside the same as the
    // target's: the request goes where the target says, as the target says.
    let raw =
        "GET http://A.example:80/x?q=1 HTTP/1.1\r\nHost: a.EXAMPLE\r\nConnection: close\r\n\r\n";
    let answer = send(&f.proxy, raw).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = f.a.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/x?q=1");
    assert_eq!(got[0].header("host"), ["A.example:80"]);
    assert!(
        got[0].head.starts_with("GET /x?q=1 HTTP/1.1\r\n"),
        "{}",
        got[0].head
    );
    assert!(f.b.requests().is_empty());
}

#[tokio::test]
async fn an_absolute_form_target_that_disagrees_with_host_is_refused() {
    let f = fixture("").await;
    let raw = "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    refused(
        &f,
        raw,
        400,
        "Host header disagrees with the request target",
    )
    .await;
    let raw = "GET http://a.example:8080/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    refused(&f, raw, 400, "Host header disagrees").await;
    let raw = "GET http://user@a.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    refused(&f, raw, 400, "malformed host").await;
    let raw = "GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    refused(&f, raw, 400, "scheme is not http or https").await;
}

#[tokio::test]
async fn the_asterisk_form_is_for_options_alone() {
    let f = fixture("").await;
    let raw = "GET * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    refused(&f, raw, 400, "asterisk-form target is for OPTIONS only").await;
    let raw = "OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let answer = send(&f.proxy, raw).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = f.a.requests();
    assert_eq!(
        (got[0].method.as_str(), got[0].target.as_str()),
        ("OPTIONS", "*")
    );
}

#[tokio::test]
async fn connect_is_refused_and_nothing_is_tunnelled() {
    let f = fixture("").await;
    // A TLS ClientHello's first bytes right behind the request: they must
    // not reach anyone either.
    let raw =
        "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01\x02\x00\x01";
    let answer = send(&f.proxy, raw).await;
    assert!(answer.starts_with("HTTP/1.1 501 "), "{answer}");
    assert!(answer.contains("CONNECT is not served"), "{answer}");
    assert!(f.forwarded().is_empty());
}

const UNDERSCORED: &str = "GET / HTTP/1.1\r\nHost: a.example\r\nX_Forwarded_For: 6.6.6.6\r\nX_Auth_User: admin\r\nX-Kept: yes\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn header_names_with_underscores_are_dropped_by_default() {
    let f = fixture("").await;
    let answer = send(&f.proxy, UNDERSCORED).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = &f.a.requests()[0];
    assert!(!got.head.contains('_'), "{}", got.head);
    assert_eq!(got.header("x-kept"), ["yes"]);
    assert_eq!(got.header("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn header_names_with_underscores_are_refused_or_allowed_as_the_listener_says() {
    let f = fixture("underscores_in_headers = \"reject\"").await;
    refused(&f, UNDERSCORED, 400, "underscore in a header name").await;

    let f = fixture("underscores_in_headers = \"allow\"").await;
    let answer = send(&f.proxy, UNDERSCORED).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = &f.a.requests()[0];
    assert_eq!(got.header("x_auth_user"), ["admin"]);
}

#[tokio::test]
async fn hop_by_hop_headers_reach_no_upstream() {
    let f = fixture("").await;
    let raw = "GET / HTTP/1.1\r\nHost: a.example\r\nProxy-Connection: keep-alive\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nKeep-Alive: timeout=5\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nTE: gzip\r\n\r\n";
    let answer = send(&f.proxy, raw).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = &f.a.requests()[0];
    for name in [
        "proxy-connection",
        "http2-settings",
        "keep-alive",
        "x-secret",
        "te",
        "upgrade",
    ] {
        assert!(got.header(name).is_empty(), "{name} in {}", got.head);
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http_1_1_and_never_passed_on() {
    // An upstream that would switch to h2c if asked.
    let f = fixture_with("", |r| match r.header("upgrade").first() {
        Some(_) => Answer::Switch("h2c"),
        None => Answer::Ok,
    })
    .await;
    for offer in ["h2c", "websocket, h2c"] {
        let raw = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {offer}\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let answer = send(&f.proxy, &raw).await;
        // Both requests answered, in HTTP/1.1: nothing switched.
        assert_eq!(statuses(&answer), [200, 200], "{answer}");
    }
    for got in f.ws.requests() {
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(got.header(name).is_empty(), "{name} in {}", got.head);
        }
    }
    assert!(f.ws.tunnel.lock().unwrap().is_empty());
}

const WEBSOCKET: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn bytes_behind_a_refused_upgrade_are_requests_corral_routes_itself() {
    // The upstream refuses to switch: what the client sent behind its
    // upgrade request is no tunnel's payload but the next request, which
    // corral reads and routes (here to nothing), never the upstream.
    let f = fixture_with("", |_| Answer::Ok).await;
    let raw = format!(
        "{WEBSOCKET}GET /internal HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n"
    );
    let answer = send(&f.proxy, &raw).await;
    assert_eq!(statuses(&answer), [200, 404], "{answer}");
    let got = f.forwarded();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].target, "/ws");
    assert!(got[0].early.is_empty(), "{:?}", got[0].early);
}

#[tokio::test]
async fn a_101_to_a_protocol_nobody_offered_switches_nothing() {
    let f = fixture_with("", |_| Answer::Switch("h2c")).await;
    let answer = send(&f.proxy, &format!("{WEBSOCKET}hello")).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(f.ws.tunnel.lock().unwrap().is_empty());

    // Nor does one to a request that asked for no switch.
    let plain = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nhello";
    let answer = send(&f.proxy, plain).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(f.ws.tunnel.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_client_s_early_bytes_reach_the_upstream_only_after_its_101() {
    let f = fixture_with("", |_| Answer::Switch("websocket")).await;
    let mut stream = TcpStream::connect(f.proxy.addr).await.unwrap();
    stream
        .write_all(format!("{WEBSOCKET}early").as_bytes())
        .await
        .unwrap();
    let mut echoed = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&echoed).ends_with("early") {
        let n = patiently("the echo", stream.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&echoed));
        echoed.extend_from_slice(&chunk[..n]);
    }
    let echoed = String::from_utf8_lossy(&echoed);
    assert!(echoed.starts_with("HTTP/1.1 101 "), "{echoed}");
    let got = &f.ws.requests()[0];
    // The upstream read its request alone; `early` came after its 101.
    assert!(got.early.is_empty(), "{:?}", got.early);
    assert_eq!(f.ws.tunnel.lock().unwrap().as_slice(), b"early");
}

/// Sends `request` over HTTP/2 with prior knowledge; its status.
async fn h2_status(proxy: &InProcess, request: http::Request<TestBody>) -> u16 {
    let mut sender = h2c(proxy.addr).await;
    let response = patiently("an HTTP/2 answer", sender.send_request(request))
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn over_http2_the_authority_wins_and_must_agree_with_any_host() {
    let f = fixture("").await;
    let request = |host: Option<&str>| {
        let mut r = http::Request::builder().uri("http://a.example/h2");
        if let Some(host) = host {
            r = r.header("host", host);
        }
        r.body(empty()).unwrap()
    };
    assert_eq!(h2_status(&f.proxy, request(None)).await, 200);
    assert_eq!(h2_status(&f.proxy, request(Some("a.example"))).await, 200);
    assert_eq!(f.a.requests().len(), 2);
    assert_eq!(f.a.requests()[0].header("host"), ["a.example"]);
    assert_eq!(h2_status(&f.proxy, request(Some("b.example"))).await, 400);
    assert!(f.b.requests().is_empty());
    assert_eq!(f.a.requests().len(), 2);
}

#[tokio::test]
async fn over_http2_an_asterisk_with_any_method_but_options_is_refused() {
    let f = fixture("").await;
    let mut request = http::Request::builder()
        .uri("http://a.example/")
        .body(empty())
        .unwrap();
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some("*".parse().unwrap());
    *request.uri_mut() = http::Uri::from_parts(parts).unwrap();
    assert_eq!(h2_status(&f.proxy, request).await, 400);
    assert!(f.forwarded().is_empty(), "{:?}", f.forwarded());
}

#[tokio::test]
async fn over_http2_connect_is_refused() {
    let f = fixture("").await;
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("a.example:443")
        .body(empty())
        .unwrap();
    assert_eq!(h2_status(&f.proxy, connect).await, 501);
    assert!(f.forwarded().is_empty());
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused() {
    // hyper itself answers 400 to codings that leave chunked out or not
    // last; one that ends in chunked it decodes, and corral refuses.
    let f = fixture("").await;
    for codings in ["gzip, chunked", "gzip\r\nTransfer-Encoding: chunked"] {
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: {codings}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        refused(&f, &raw, 501, "transfer coding not supported").await;
    }
}

#[tokio::test]
async fn a_request_with_both_framings_reaches_the_upstream_chunked_alone() {
    let f = fixture("").await;
    let raw = "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = send(&f.proxy, raw).await;
    // Answered, then closed (RFC 9112 §6.1): nothing behind it is read.
    assert_eq!(statuses(&answer), [200], "{answer}");
    let got = &f.a.requests()[0];
    assert!(got.header("content-length").is_empty(), "{}", got.head);
    assert_eq!(got.body, b"hello");
}

/// What a client reads of the response an upstream that frames it
/// `response` sends.
async fn relayed(response: &'static str) -> String {
    let f = fixture_with("", move |_| Answer::Raw(response)).await;
    send(
        &f.proxy,
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn an_upstream_s_double_framing_is_a_502_and_a_list_of_one_length_is_that_length() {
    // Content-Length beside Transfer-Encoding is a message two parsers may
    // end in two places (RFC 9112 §6.3): no client gets it.
    let answer =
        relayed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(!answer.contains("hel"), "{answer}");

    // A list of one length reaches the client as that length.
    let answer = relayed("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello").await;
    assert!(answer.contains("\r\ncontent-length: 5\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
}
