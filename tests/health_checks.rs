//! Active health checks judged by their statuses, a body's text and the
//! `Host` they send, and what `/status` says of a server they took down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;

/// What a checked upstream answers at `/healthz`.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// An upstream named `name` (in `x-backend`) whose `/healthz` answers as
/// the returned `Answer` says (at first a 200 that says "ready"), noting the
/// `Host` of every check.
async fn checked(name: &'static str) -> (Upstream, Arc<Mutex<Answer>>, Arc<Mutex<Vec<String>>>) {
    let answer = Arc::new(Mutex::new(Answer {
        status: 200,
        body: b"status: ready".to_vec(),
    }));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let (said, seen) = (answer.clone(), hosts.clone());
    let up = upstream(move |req: Request<Incoming>| {
        let reply = if req.uri().path() == "/healthz" {
            let host = req.headers()[http::header::HOST]
                .to_str()
                .unwrap()
                .to_owned();
            seen.lock().unwrap().push(host);
            let answer = said.lock().unwrap();
            Some((answer.status, answer.body.clone()))
        } else {
            None
        };
        async move {
            let (status, body) = reply.unwrap_or((200, Vec::new()));
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    (up, answer, hosts)
}

fn set(answer: &Mutex<Answer>, status: u16, body: &[u8]) {
    *answer.lock().unwrap() = Answer {
        status,
        body: body.to_vec(),
    };
}

const CHECK: &str = r#"[upstreams.health_check]
path = "/healthz"
interval = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
statuses = [200, 204]
host = "health.internal"
body_contains = "ready"
"#;

fn server(status: &serde_json::Value) -> &serde_json::Value {
    &status["upstreams"][0]["servers"][0]
}

#[tokio::test]
async fn a_check_passes_on_its_statuses_with_its_text_and_status_says_why_it_failed() {
    let (a, answer, hosts) = checked("a").await;
    let (b, _, _) = checked("b").await;
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr], CHECK)).await;
    let status = corral
        .wait_status(|s| !hosts.lock().unwrap().is_empty() && server(s)["state"] == "healthy")
        .await;
    assert!(server(&status)["down"].is_null(), "{status:#}");
    assert!(
        hosts.lock().unwrap().iter().all(|h| h == "health.internal"),
        "{:?}",
        hosts.lock().unwrap()
    );

    // The status passes, the text is missing.
    set(&answer, 200, b"status: starting");
    let status = corral
        .wait_status(|s| server(s)["state"] == "unhealthy")
        .await;
    let down = &server(&status)["down"];
    assert_eq!(
        down["reason"], "answered 200 OK without \"ready\" in the first 64 KiB of its body",
        "{status:#}"
    );
    let since = down["since"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
    }

    // The text is there, the status is not one of the check's (a 2xx
    // would pass a check without `statuses`). The reason is the latest
    // failure's; the time is when the server went down.
    set(&answer, 202, b"status: ready");
    let status = corral
        .wait_status(|s| {
            server(s)["down"]["reason"] == "answered 202 Accepted, expected 200 or 204"
        })
        .await;
    assert_eq!(server(&status)["down"]["since"], since.as_str());

    // Text past the first 64 KiB is not looked at.
    let mut long = vec![b'x'; 64 * 1024];
    long.extend_from_slice(b"ready");
    set(&answer, 200, &long);
    corral
        .wait_status(|s| {
            server(s)["down"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("answered 200 OK without"))
        })
        .await;

    // Back on a 200 with the text, and the note goes with the failure.
    set(&answer, 200, b"status: ready");
    let status = corral
        .wait_status(|s| server(s)["state"] == "healthy")
        .await;
    assert!(server(&status)["down"].is_null(), "{status:#}");
}

#[tokio::test]
async fn the_text_is_found_across_the_pieces_of_a_body() {
    // Chunks written apart arrive as frames apart: "rea", then "dy".
    let split = scripted(|_| Wire {
        writes: vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n".to_vec(),
            b"2\r\ndy\r\n0\r\n\r\n".to_vec(),
        ],
        ..Wire::bytes(b"").then(Then::Close)
    })
    .await;
    let corral = Corral::start(&cluster_config(&[split.addr], CHECK)).await;
    // Checks run one after another: once the second has arrived, the
    // first has been judged, and the first check decides at once.
    split
        .wait("two checks", |events| {
            let checks = events
                .iter()
                .filter(|e| matches!(e, Event::Request(r) if r.target == "/healthz"))
                .count();
            (checks >= 2).then_some(())
        })
        .await;
    let status = corral.status().await;
    assert_eq!(server(&status)["state"], "healthy", "{status:#}");
}

/// An h2 upstream is checked in h2: each probe is an HTTP/2 request whose
/// `:authority` is the check's host, judged like any other.
#[tokio::test]
async fn an_h2_upstream_is_checked_over_h2() {
    let probes = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(Mutex::new(Answer {
        status: 200,
        body: b"status: ready".to_vec(),
    }));
    let (noted, said) = (probes.clone(), answer.clone());
    let up = upstream(move |req: Request<Incoming>| {
        let authority = req.uri().authority().map(ToString::to_string);
        noted.lock().unwrap().push((req.version(), authority));
        let answer = said.lock().unwrap();
        let reply = Response::builder()
            .status(answer.status)
            .body(full(answer.body.clone()))
            .unwrap();
        async move { reply }
    })
    .await;
    let config = cluster_config(&[up.addr], &format!("protocol = \"h2\"\n{CHECK}"));
    let corral = Corral::start(&config).await;
    // A probe is announced by nothing corral says while the server stays up.
    until("two probes", async || probes.lock().unwrap().len() >= 2).await;
    corral
        .wait_status(|s| server(s)["state"] == "healthy")
        .await;
    let authority = Some("health.internal".to_owned());
    assert!(
        probes
            .lock()
            .unwrap()
            .iter()
            .all(|p| *p == (http::Version::HTTP_2, authority.clone())),
        "{:?}",
        probes.lock().unwrap()
    );
    set(&answer, 200, b"status: starting");
    let status = corral
        .wait_status(|s| server(s)["state"] == "unhealthy")
        .await;
    let reason = server(&status)["down"]["reason"].as_str().unwrap();
    assert!(reason.contains("without \"ready\""), "{reason}");
}
