//! The status page watched live: one headless Chromium keeps the page
//! open (driven over the DevTools protocol) while a server goes down, and
//! the page shows it within one refresh of corral knowing, without being
//! loaded again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const CHECK: &str = r#"[upstreams.health_check]
path = "/healthz"
interval = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#;

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
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
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
        if let Some(pid) = self.child.id() {
            let group = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
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
