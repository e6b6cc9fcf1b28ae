//! The status page at the admin endpoint's `/`, rendered by headless
//! Chromium: it shows the workers and the servers with their health, turns
//! a server that went down red within a refresh (on a page kept open and
//! asked over the DevTools protocol), computes rates from two scrapes, asks
//! for the token where one is set, and is served with headers that keep it
//! to itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

const CHECK: &str = r#"[upstreams.health_check]
path = "/healthz"
interval = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#;

/// How Chromium runs here: headless, and kept off the network it would
/// otherwise reach for (updates, sync, QUIC) on this closed machine.
const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Kills `child`'s process group (Chromium's renderers and helpers too).
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let group = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// One headless Chromium that loads a page and prints its DOM once its
/// scripts have had `budget_ms` of virtual time (which stands still while
/// fetches are pending, so a slow corral does not cut it short). It runs
/// in a process group of its own with a fresh profile, and the whole group
/// is killed when this is dropped, if it is still running.
struct Chromium {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn load(url: &str, budget_ms: u32) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new("chromium")
            .args(HEADLESS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is needed (Debian package `chromium`)");
        Self {
            child,
            _profile: profile,
        }
    }

    /// The page's DOM as Chromium serialised it.
    async fn dom(mut self) -> String {
        let mut stdout = self.child.stdout.take().unwrap();
        let mut stderr = self.child.stderr.take().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (read_out, read_err, status) = patiently("chromium's DOM dump", async {
            tokio::join!(
                tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out),
                tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut err),
                self.child.wait(),
            )
        })
        .await;
        read_out.unwrap();
        read_err.unwrap();
        let err = String::from_utf8_lossy(&err);
        assert!(status.unwrap().success(), "chromium failed: {err}");
        let dom = String::from_utf8(out).unwrap();
        assert!(dom.contains("</html>"), "no DOM: {dom}\n{err}");
        dom
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&self.child);
    }
}

/// The page at `admin`, refreshing every 200 ms, after 1.5 s of its time.
async fn render(admin: SocketAddr) -> String {
    Chromium::load(&format!("http://{admin}/?refresh=0.2"), 1500)
        .dom()
        .await
}

/// The attributes of each `<tag …>` in `dom` that has attribute `key`.
fn tagged(dom: &str, tag: &str, key: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    dom.match_indices(&open)
        .map(|(at, _)| {
            let rest = &dom[at + open.len()..];
            let head = &rest[..rest.find('>').unwrap()];
            let mut attrs = HashMap::new();
            for pair in head.split("\" ") {
                if let Some((name, value)) = pair.split_once("=\"") {
                    let value = value.trim_end_matches('"').replace("&quot;", "\"");
                    attrs.insert(name.trim().to_owned(), value.replace("&amp;", "&"));
                }
            }
            attrs
        })
        .filter(|attrs| attrs.contains_key(key))
        .collect()
}

/// The `data-state` of each server row, by `data-server`.
fn server_states(dom: &str) -> HashMap<String, String> {
    tagged(dom, "tr", "data-server")
        .into_iter()
        .map(|row| (row["data-server"].clone(), row["data-state"].clone()))
        .collect()
}

fn server_state(status: &serde_json::Value, addr: SocketAddr) -> String {
    status["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr.to_string())
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_page_shows_workers_and_servers_and_a_server_that_went_down() {
    let (a, b) = (echo("a").await, echo("b").await);
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr], CHECK)).await;
    let admin = corral.admin.unwrap();
    corral
        .wait_status(|s| {
            all_ready(s)
                && server_state(s, a.addr) == "healthy"
                && server_state(s, b.addr) == "healthy"
        })
        .await;
    for _ in 0..4 {
        assert_eq!(
            get(corral.addr("public"), "/", &[]).await.status,
            StatusCode::OK
        );
    }

    let dom = render(admin).await;
    let workers: Vec<_> = tagged(&dom, "tr", "data-worker-slot")
        .into_iter()
        .map(|w| (w["data-worker-slot"].clone(), w["data-state"].clone()))
        .collect();
    assert_eq!(
        workers,
        [("0".into(), "ready".into()), ("1".into(), "ready".into())],
        "{dom}"
    );
    let healthy = HashMap::from([
        (a.addr.to_string(), "healthy".to_owned()),
        (b.addr.to_string(), "healthy".to_owned()),
    ]);
    assert_eq!(server_states(&dom), healthy, "{dom}");
    // Rates are drawn from two scrapes: the page refreshed by itself.
    let body = &tagged(&dom, "body", "data-refreshes")[0];
    assert!(body["data-refreshes"].parse::<u32>().unwrap() >= 2, "{dom}");
    assert_eq!(body["data-rates"], "ready", "{dom}");
    let routes = tagged(&dom, "tr", "data-route");
    assert!(routes.iter().any(|r| r["data-upstream"] == "app"), "{dom}");

    // Stopped: its listener closes, so its next check cannot connect.
    let b_addr = b.addr;
    drop(b);
    corral
        .wait_status(|s| server_state(s, b_addr) == "unhealthy")
        .await;
    let dom = render(admin).await;
    let states = server_states(&dom);
    assert_eq!(states[&a.addr.to_string()], "healthy", "{dom}");
    assert_eq!(states[&b_addr.to_string()], "unhealthy", "{dom}");
    // And why: the failed check's reason, as /status has it.
    assert!(
        dom.contains(&format!("connecting to {b_addr} failed")),
        "{dom}"
    );
}

/// A corral on loopback whose admin endpoint wants `token`.
async fn guarded(token: &str) -> (Corral, Upstream) {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), token).unwrap();
    let config = cluster_config(&[app.addr], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[listeners]]",
        "listen = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n[[listeners]]",
    );
    let config_path = dir.path().join("corral.toml");
    std::fs::write(&config_path, config).unwrap();
    (Corral::start_at(dir, config_path).await, app)
}

#[tokio::test]
async fn with_a_token_the_page_is_served_and_asks_for_it_while_the_data_stays_refused() {
    let (corral, _app) = guarded("page-token-0123456789").await;
    let admin = corral.admin.unwrap();
    let page = get(admin, "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let (status, _) = admin_call(admin, http::Method::GET, "/status").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let dom = render(admin).await;
    let form = &tagged(&dom, "form", "id")[0];
    assert_eq!(form["id"], "token-form");
    assert!(!form.contains_key("hidden"), "{dom}");
    assert!(tagged(&dom, "tr", "data-worker-slot").is_empty(), "{dom}");
}

#[tokio::test]
async fn the_page_is_static_and_served_with_headers_that_keep_it_to_itself() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let page = get(corral.admin.unwrap(), "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let header = |name: &str| page.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-store");
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    // Nothing from elsewhere, and no data of this corral in it.
    let text = page.text();
    for outside in ["http://", "https://", "src=", "<link"] {
        assert!(!text.contains(outside), "{outside}");
    }
    assert!(!text.contains(&app.addr.to_string()));
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page open, asked questions in JavaScript
/// over its DevTools socket. Its process group is killed when dropped.
struct Browser {
    child: tokio::process::Child,
    socket: Socket,
    asked: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(url: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new("chromium")
            .args(HEADLESS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is needed (Debian package `chromium`)");
        // Chromium writes the port it took (0 asks for any) into the profile.
        let active = profile.path().join("DevToolsActivePort");
        until("chromium's DevTools port", async || active.exists()).await;
        let mut port = None;
        until("chromium's DevTools port", async || {
            port = std::fs::read_to_string(&active)
                .ok()
                .and_then(|t| t.lines().next()?.parse::<u16>().ok());
            port.is_some()
        })
        .await;
        let devtools = std::net::SocketAddr::from(([127, 0, 0, 1], port.unwrap()));
        let mut page = None;
        until("the page's DevTools target", async || {
            let targets = get(devtools, "/json/list", &[]).await.json();
            page = targets.as_array().unwrap().iter().find_map(|t| {
                (t["type"] == "page" && t["url"].as_str()?.starts_with(url))
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))?
            });
            page.is_some()
        })
        .await;
        let (socket, _) = tokio_tungstenite::connect_async(page.unwrap())
            .await
            .unwrap();
        Self {
            child,
            socket,
            asked: 0,
            _profile: profile,
        }
    }

    /// The value of `expression` in the page.
    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        self.asked += 1;
        let id = self.asked;
        let ask = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        self.socket
            .send(Message::text(ask.to_string()))
            .await
            .unwrap();
        loop {
            let message = patiently("a DevTools answer", self.socket.next()).await;
            let text = message.unwrap().unwrap().into_text().unwrap();
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                return answer["result"]["result"]["value"].clone();
            }
        }
    }

    /// The state the page shows for `server`, and how many times it has
    /// refreshed (nothing and 0 while it is still loading).
    async fn shown(&mut self, server: &str) -> (String, u64) {
        let expression = format!(
            "[document.querySelector('[data-server=\"{server}\"]')?.dataset.state ?? '', Number(document.body?.dataset.refreshes ?? 0)]"
        );
        let value = self.eval(&expression).await;
        let state = value[0].as_str().unwrap_or_default().to_owned();
        (state, value[1].as_u64().unwrap_or(0))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&self.child);
    }
}

#[tokio::test]
async fn an_open_page_shows_a_server_going_down_within_one_refresh() {
    let (a, b) = (echo("a").await, echo("b").await);
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr], CHECK)).await;
    let url = format!("http://{}/?refresh=0.2", corral.admin.unwrap());
    let mut page = Browser::open(&url).await;
    let (down, up) = (b.addr.to_string(), a.addr.to_string());
    until("the page showing both servers healthy", async || {
        page.shown(&down).await.0 == "healthy" && page.shown(&up).await.0 == "healthy"
    })
    .await;

    drop(b);
    let status = corral
        .wait_status(|s| {
            s["upstreams"][0]["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["addr"] == down.as_str() && v["state"] == "unhealthy")
        })
        .await;
    // A refresh that began before corral knew may still say healthy; the
    // one after it began after, and must not.
    let (_, known_at) = page.shown(&down).await;
    let mut last = (String::new(), 0);
    until("a refresh after the next", async || {
        last = page.shown(&down).await;
        last.1 >= known_at + 2
    })
    .await;
    assert_eq!(last.0, "unhealthy", "{status}");
    assert_eq!(page.shown(&up).await.0, "healthy");
}
