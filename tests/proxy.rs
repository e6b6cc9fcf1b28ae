//! The real `corral` binary in front of real upstreams: balancing, routing,
//! header rules, streaming, upgrades, HTTP/2 and error answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

#[tokio::test]
async fn round_robin_splits_requests_evenly() {
    let (a, b) = (echo("a").await, echo("b").await);
    let corral = Corral::start(&simple_config(&[a.addr, b.addr], "")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let reply = client.get("/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        *counts.entry(reply.backend()).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([("a".into(), 20), ("b".into(), 20)]));
}

#[tokio::test]
async fn weights_shape_the_split() {
    let (a, b) = (echo("a").await, echo("b").await);
    let config = simple_config(&[], "").replace(
        "servers = []",
        &format!(
            "servers = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\" }}]",
            a.addr, b.addr
        ),
    );
    let corral = Corral::start(&config).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let mut a_count = 0;
    for _ in 0..40 {
        a_count += usize::from(client.get("/", &[]).await.backend() == "a");
    }
    assert_eq!(a_count, 30);
}

#[tokio::test]
async fn host_and_prefix_routing_with_strip_prefix() {
    let (api, web, wild, fallback) = (
        echo("api").await,
        echo("web").await,
        echo("wild").await,
        echo("any").await,
    );
    let config = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
host = "api.example.com"
path_prefix = "/api/"
upstream = "api"
strip_prefix = true

[[routes]]
host = "api.example.com"
upstream = "web"

[[routes]]
host = "*.example.com"
upstream = "wild"

[[routes]]
upstream = "any"

[[upstreams]]
name = "api"
servers = [{{ addr = "{}" }}]
[[upstreams]]
name = "web"
servers = [{{ addr = "{}" }}]
[[upstreams]]
name = "wild"
servers = [{{ addr = "{}" }}]
[[upstreams]]
name = "any"
servers = [{{ addr = "{}" }}]
"#,
        api.addr, web.addr, wild.addr, fallback.addr
    );
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let reply = get(addr, "/api/users?id=7", &[("host", "API.example.com:8080")]).await;
    assert_eq!(reply.backend(), "api");
    assert_eq!(reply.json()["uri"], "/users?id=7");
    assert_eq!(
        get(addr, "/other", &[("host", "api.example.com")])
            .await
            .backend(),
        "web"
    );
    assert_eq!(
        get(addr, "/api/x", &[("host", "www.example.com")])
            .await
            .backend(),
        "wild"
    );
    assert_eq!(
        get(addr, "/api/x", &[("host", "example.org")])
            .await
            .backend(),
        "any"
    );
}

#[tokio::test]
async fn unmatched_requests_get_404_and_reach_nobody() {
    let app = echo("app").await;
    let config = simple_config(&[app.addr], "").replace(
        "[[routes]]\nupstream = \"app\"",
        "[[routes]]\nhost = \"only.example.com\"\nupstream = \"app\"",
    );
    let corral = Corral::start(&config).await;
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(reply.text(), "404 Not Found: no route for this request\n");
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop_rules() {
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().into()))
            .collect();
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "must not reach the client")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(full(serde_json::to_vec(&headers).unwrap()))
            .unwrap()
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let reply = get(
        corral.addr("public"),
        "/",
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-secret"),
            ("x-secret", "must not reach the upstream"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
        ],
    )
    .await;
    let seen = reply.json();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com");
    assert_eq!(seen["host"], "shop.example.com");
    for hop in ["x-secret", "proxy-connection", "te"] {
        assert!(seen.get(hop).is_none(), "{hop} was forwarded: {seen}");
    }
    assert!(!reply.headers.contains_key("x-hop"));
    assert!(!reply.headers.contains_key("keep-alive"));
    assert_eq!(reply.headers["x-end-to-end"], "kept");
}

/// The first read of a connection takes at most 4 KiB; a longer request
/// head continues from the socket.
#[tokio::test]
async fn a_request_head_longer_than_the_first_read_arrives_whole() {
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        let value = req.headers()["x-long"].to_str().unwrap().to_owned();
        Response::new(full(value))
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let long: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = get(corral.addr("public"), "/", &[("x-long", &long)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), long);
}

#[tokio::test]
async fn unreachable_upstream_is_a_quick_502() {
    let (_refusing, dead) = refusing_addr();
    // Quick means the refusal itself answers, not a connect timeout: with
    // the timeout far above the bound below, only that can pass. The bound
    // is generous so that a loaded machine cannot fail it.
    let config = simple_config(&[dead], "connect_timeout = \"60s\"");
    let corral = Corral::start(&config).await;
    let started = std::time::Instant::now();
    let reply = get(corral.addr("public"), "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "502 Bad Gateway: upstream unreachable\n");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_server() {
    let (_refusing, dead) = refusing_addr();
    let live = echo("live").await;
    let corral = Corral::start(&simple_config(&[dead, live.addr], "")).await;
    for _ in 0..6 {
        let reply = get(corral.addr("public"), "/", &[]).await;
        assert_eq!(
            (reply.status, reply.backend().as_str()),
            (StatusCode::OK, "live")
        );
    }
}

/// An upstream answering with an event stream: a first event, then a last
/// one once the returned sender fires, so that the first must reach the
/// client before the stream ends.
async fn event_stream() -> (Upstream, tokio::sync::oneshot::Sender<()>) {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = std::sync::Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let app = upstream(move |_req| {
        let release = release.lock().unwrap().take();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                    .await
                    .unwrap();
                if let Some(release) = release {
                    let _ = release.await;
                }
                tx.send(Ok(Frame::data(Bytes::from("data: last\n\n"))))
                    .await
                    .unwrap();
            });
            let body = StreamBody::new(tokio_stream_from(rx));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap()
        }
    })
    .await;
    (app, release_tx)
}

/// Reads the first event, lets the upstream end the stream, reads the rest.
async fn expect_events(mut body: hyper::body::Incoming, release: tokio::sync::oneshot::Sender<()>) {
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    release.send(()).unwrap();
    let rest = patiently("the rest of the events", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: last\n\n");
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let (app, release) = event_stream().await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let request = Request::get("/events")
        .header("host", "x")
        .body(empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    expect_events(response.into_body(), release).await;
}

/// Over HTTP/2, with other streams of the connection finishing meanwhile:
/// a connection holds its writes for a turn when streams finish, and an
/// unfinished stream's events must still go out as they come.
#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent_over_http2() {
    let (events, release) = event_stream().await;
    let app = echo("app").await;
    let config = format!(
        "{}\n[[routes]]\npath_prefix = \"/events\"\nupstream = \"events\"\n[[upstreams]]\nname = \"events\"\nservers = [{{ addr = \"{}\" }}]\n",
        simple_config(&[app.addr], ""),
        events.addr
    );
    let corral = Corral::start(&config).await;
    let mut client = h2c(corral.addr("public")).await;
    let exchange = async move {
        let stream = client
            .send_request(Request::get("http://x/events").body(empty()).unwrap())
            .await
            .unwrap();
        let others: Vec<_> = (0..20)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let uri = format!("http://x/other/{i}");
                    let response = client
                        .send_request(Request::get(uri).body(empty()).unwrap())
                        .await
                        .unwrap();
                    read(response).await.json()["uri"].clone()
                })
            })
            .collect();
        expect_events(stream.into_body(), release).await;
        for (i, other) in others.into_iter().enumerate() {
            assert_eq!(other.await.unwrap(), format!("/other/{i}"));
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("HTTP/2 responses stalled");
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[tokio::test]
async fn websocket_is_tunnelled_after_the_upstreams_101() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let corral = Corral::start(&simple_config(&[ws_addr], "")).await;
    let url = format!("ws://{}/chat", corral.addr("public"));
    let (mut ws, response) = patiently("the upgrade", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = patiently("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap(), format!("hello {i}"));
    }
    patiently("the close", ws.close(None)).await.unwrap();
}

#[tokio::test]
async fn large_bodies_stream_both_ways_in_constant_memory() {
    const SIZE: usize = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    // Downloads: the upstream streams SIZE bytes; uploads: the echo counts them.
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
            }
            return Response::new(full(n.to_string()));
        }
        let chunks = futures_util::stream::iter(
            (0..SIZE / CHUNK).map(|_| Ok(Frame::data(Bytes::from(vec![7u8; CHUNK])))),
        );
        Response::new(StreamBody::new(chunks).boxed())
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let before = corral.peak_rss_kib();
    let mut client = H1::connect(corral.addr("public")).await;

    let chunks = futures_util::stream::iter(
        (0..SIZE / CHUNK)
            .map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![1u8; CHUNK])))),
    );
    let upload = Request::post("/upload")
        .header("host", "x")
        .body(StreamBody::new(chunks).boxed())
        .unwrap();
    let reply = read(client.send(upload).await.unwrap()).await;
    assert_eq!(reply.text(), SIZE.to_string());

    let download = Request::get("/download")
        .header("host", "x")
        .body(empty())
        .unwrap();
    let mut body = client.send(download).await.unwrap().into_body();
    let mut received = 0usize;
    while let Some(frame) = patiently("the next download frame", body.frame()).await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(received, SIZE);
    let grown = corral.peak_rss_kib().saturating_sub(before);
    eprintln!(
        "corral grew by {grown} KiB moving {} MiB each way",
        SIZE >> 20
    );
    // A few buffers per process (about 2 MiB here, whatever the size):
    // buffering even a thirtieth of the body would show.
    assert!(
        grown < 8 * 1024,
        "corral grew by {grown} KiB moving {} MiB",
        SIZE >> 20
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_answered_over_http2() {
    let app = echo("app").await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let mut client = h2c(corral.addr("public")).await;
    let uri = "http://h2.example.com/path?q=1";
    let request = client.send_request(Request::get(uri).body(empty()).unwrap());
    let response = patiently("the response", request).await.unwrap();
    let reply = read(response).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    let seen = reply.json();
    // The upstream speaks HTTP/1.1 and gets the authority as its Host.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"], "h2.example.com");
    assert_eq!(seen["uri"], "/path?q=1");
}

#[tokio::test]
async fn h2_upstreams_carry_grpc_style_trailers() {
    let app = upstream(|req: Request<hyper::body::Incoming>| async move {
        assert_eq!(req.version(), http::Version::HTTP_2);
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from(format!(
                "te={}",
                te.unwrap_or_default()
            )))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap()
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "protocol = \"h2\"")).await;
    let mut client = h2c(corral.addr("public")).await;
    let request = Request::post("http://grpc.example.com/pkg.Service/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("payload"))
        .unwrap();
    let response = patiently("the response", client.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = patiently("the body", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "te=trailers");
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413_and_are_not_forwarded() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = upstream(move |req: Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = req.into_body().collect().await;
            Response::new(empty())
        }
    })
    .await;
    let corral = Corral::start(&listener_config(app.addr, "max_request_body = \"1 KiB\"")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let request = Request::post("/")
        .header("host", "x")
        .body(full(vec![0u8; 4096]))
        .unwrap();
    assert_eq!(
        client.send(request).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mut client = H1::connect(corral.addr("public")).await;
    let request = Request::post("/")
        .header("host", "x")
        .body(full(vec![0u8; 512]))
        .unwrap();
    assert_eq!(client.send(request).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn http11_without_host_is_a_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = echo("app").await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let connect = tokio::net::TcpStream::connect(corral.addr("public"));
    let mut stream = patiently("connecting", connect).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 256];
    let n = patiently("the answer", stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
