//! The wire around a request: IPv6 listeners, HTTP/1.1 chunked trailers in
//! both directions, and the combined access-log line with its file found
//! next to the config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

#[tokio::test]
async fn an_ipv6_listener_serves_http1_and_h2c() {
    // Fail here, naming the cause, rather than as a corral that never
    // reports ready.
    std::net::TcpListener::bind("[::1]:0")
        .expect("::1 is not available on this machine; this test needs IPv6 loopback");
    let app = echo("app").await;
    let config =
        simple_config(&[app.addr], "").replace("listen = \"127.0.0.1:0\"", "listen = \"[::1]:0\"");
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    assert_eq!(addr.ip(), "::1".parse::<std::net::IpAddr>().unwrap());

    let reply = get(addr, "/six", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "app");
    let seen = reply.json();
    assert_eq!(seen["uri"], "/six");
    // The client's IPv6 address is what the upstream is told.
    assert_eq!(seen["headers"]["x-forwarded-for"], "::1");

    let mut h2 = h2c(addr).await;
    let request = Request::get(format!("http://{addr}/six/h2"))
        .body(empty())
        .unwrap();
    let reply = read(
        patiently("an HTTP/2 request", h2.send_request(request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (reply.version, reply.status),
        (http::Version::HTTP_2, StatusCode::OK)
    );
    assert_eq!(reply.json()["uri"], "/six/h2");
}

fn trailer(name: &'static str, value: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(name, value.parse().unwrap());
    trailers
}

/// A body of `data` then `trailers`, of no known length, so HTTP/1.1 sends
/// it chunked.
fn with_trailers(data: &'static str, trailers: HeaderMap) -> TestBody {
    let frames = vec![
        Ok(Frame::data(Bytes::from(data))),
        Ok(Frame::trailers(trailers)),
    ];
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn chunked_request_trailers_reach_an_http1_upstream() {
    let app = upstream(|req: Request<Incoming>| async move {
        let version = req.version();
        let collected = req.into_body().collect().await.unwrap();
        let checksum = collected
            .trailers()
            .and_then(|t| t.get("x-checksum"))
            .map_or_else(|| "none".to_owned(), |v| v.to_str().unwrap().to_owned());
        let body = format!("{version:?} {} {checksum}", collected.to_bytes().len());
        Response::new(full(body))
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let addr = corral.addr("public");
    let mut client = H1::connect(addr).await;
    // hyper writes only the trailer fields that `Trailer` announces.
    let request = Request::post("/upload")
        .header("host", addr.to_string())
        .header("trailer", "x-checksum")
        .body(with_trailers("hello", trailer("x-checksum", "c0ffee")))
        .unwrap();
    let reply = read(client.send(request).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "HTTP/1.1 5 c0ffee");
}

#[tokio::test]
async fn chunked_response_trailers_reach_an_http1_client() {
    let app = upstream(|req: Request<Incoming>| async move {
        // What corral forwarded of the client's `TE: trailers`, without
        // which an HTTP/1.1 server may not send trailers at all.
        let te = req
            .headers()
            .get("te")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("trailer", "x-digest")
            .header("x-te-seen", te)
            .body(with_trailers("streamed", trailer("x-digest", "d1g35t")))
            .unwrap()
    })
    .await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let request = Request::get("/download")
        .header("host", "trailers.test")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(response.headers()["x-te-seen"], "trailers");
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let collected = patiently("the response body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "streamed");
    let trailers = trailers.expect("the response arrived without its trailers");
    assert_eq!(trailers["x-digest"], "d1g35t");
}

/// Splits a combined-format line as Apache writes it, plus corral's four
/// fields: (client, time, request, status, bytes, referer, user agent,
/// duration, route, upstream, server).
fn combined_fields(line: &str) -> [String; 11] {
    let bad = || malformed("line", line);
    let (client, rest) = line.split_once(" - - [").unwrap_or_else(bad);
    let (time, rest) = rest.split_once("] \"").unwrap_or_else(bad);
    let (request, rest) = rest.split_once("\" ").unwrap_or_else(bad);
    let (status, rest) = rest.split_once(' ').unwrap_or_else(bad);
    let (bytes, rest) = rest.split_once(" \"").unwrap_or_else(bad);
    let (referer, rest) = rest.split_once("\" \"").unwrap_or_else(bad);
    let (agent, rest) = rest.split_once("\" ").unwrap_or_else(bad);
    let tail: Vec<&str> = rest.split(' ').collect();
    let [duration, route, upstream, server] = tail[..] else {
        return malformed("line", line);
    };
    [
        client, time, request, status, bytes, referer, agent, duration, route, upstream, server,
    ]
    .map(str::to_owned)
}

fn malformed<T>(what: &str, text: &str) -> T {
    panic!("not a combined log {what}: {text}")
}

/// `26/Nov/2026:14:00:00 +0000` as a point in time.
fn clf_time(text: &str) -> SystemTime {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let bad = || malformed("time", text);
    let (date, zone) = text.split_once(' ').unwrap_or_else(bad);
    assert_eq!(zone, "+0000", "{text}");
    let (day, rest) = date.split_once('/').unwrap_or_else(bad);
    let (month, rest) = rest.split_once('/').unwrap_or_else(bad);
    let (year, clock) = rest.split_once(':').unwrap_or_else(bad);
    let month = MONTHS
        .iter()
        .position(|m| *m == month)
        .unwrap_or_else(|| malformed("time", text))
        + 1;
    assert_eq!((day.len(), year.len(), clock.len()), (2, 4, 8), "{text}");
    humantime::parse_rfc3339(&format!("{year}-{month:02}-{day}T{clock}Z"))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test]
async fn combined_access_log_lines_have_apaches_shape_and_a_relative_path_is_beside_the_config() {
    let app = upstream(|_req: Request<Incoming>| async {
        Response::builder()
            .status(StatusCode::CREATED)
            .body(full("ten bytes!"))
            .unwrap()
    })
    .await;
    // Relative, while corral runs in this test's current directory and its
    // config lies in a temporary one.
    let file = "relative-access.log";
    let config = simple_config(
        &[app.addr],
        &format!("[access_log]\npath = \"{file}\"\nformat = \"combined\"\n"),
    )
    .replace(
        "[[routes]]\nupstream = \"app\"",
        "[[routes]]\nname = \"logged\"\nupstream = \"app\"",
    );
    let corral = Corral::start(&config).await;
    let beside_config = corral.config_path.parent().unwrap().join(file);
    let addr = corral.addr("public");
    let mut client = H1::connect(addr).await;
    let before = SystemTime::now();
    let request = Request::put("/items/7?x=1")
        .header("host", "log.test")
        .header("referer", "https://ref.example/page")
        .header("user-agent", "tester/2.0 (\"quoted\")")
        .body(empty())
        .unwrap();
    let reply = read(client.send(request).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    // Without referer or user agent: Apache writes "-" for each.
    let reply = read(
        client
            .send(
                Request::get("/bare")
                    .header("host", "log.test")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);

    let mut lines = wait_for_lines(&beside_config, 2).await;
    let in_cwd = Path::new(file);
    if lines.len() < 2 && in_cwd.exists() {
        let _ = std::fs::remove_file(in_cwd);
        panic!("the relative access log went to the current directory, not the config's folder");
    }
    assert_eq!(lines.len(), 2, "{lines:?} in {}", beside_config.display());
    // One connection, so one worker and one queue: lines in request order.
    let bare = lines.pop().unwrap();
    let full_line = lines.pop().unwrap();

    let [
        client_ip,
        time,
        request,
        status,
        bytes,
        referer,
        agent,
        duration,
        route,
        upstream,
        server,
    ] = combined_fields(&full_line);
    assert_eq!(client_ip, "127.0.0.1");
    let at = clf_time(&time);
    // The line's time is when the request arrived, to the second.
    let skew = at
        .duration_since(before - Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("{time} is before the request"));
    assert!(skew < PATIENCE, "{time} is long after the request");
    assert_eq!(request, "PUT /items/7?x=1 HTTP/1.1");
    assert_eq!((status.as_str(), bytes.as_str()), ("201", "10"));
    assert_eq!(referer, "https://ref.example/page");
    assert_eq!(agent, r#"tester/2.0 (\"quoted\")"#);
    let (whole, fraction) = duration.split_once('.').unwrap();
    assert!(
        whole.parse::<u64>().is_ok() && fraction.len() == 3 && fraction.parse::<u64>().is_ok(),
        "duration in seconds with milliseconds: {duration}"
    );
    assert!(duration.parse::<f64>().unwrap() < PATIENCE.as_secs_f64());
    assert_eq!(
        (route.as_str(), upstream.as_str(), server.as_str()),
        ("logged", "app", app.addr.to_string().as_str())
    );

    let fields = combined_fields(&bare);
    assert_eq!(fields[2], "GET /bare HTTP/1.1");
    assert_eq!((fields[5].as_str(), fields[6].as_str()), ("-", "-"));
    assert_eq!(fields[8..], ["logged", "app", &app.addr.to_string()]);
}
