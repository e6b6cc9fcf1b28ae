//! Hot reload: every trigger, under load, with broken files, listener and
//! slot changes, state that must survive, and connections that must not be cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use http::{Method, StatusCode};
use nix::sys::signal::Signal;

/// A cluster config: `/ws` to a fixed WebSocket upstream, everything else
/// to the `app` upstream on `app`.
fn config(app: SocketAddr, ws: SocketAddr, extra_listener: &str, workers: usize) -> String {
    format!(
        r#"
[runtime]
workers = {workers}
shutdown_timeout = "5s"
{GENEROUS_HEARTBEAT}

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{extra_listener}
[[routes]]
path_prefix = "/ws"
upstream = "ws"

[[routes]]
upstream = "app"

[[upstreams]]
name = "app"
servers = [{{ addr = "{app}" }}]

[[upstreams]]
name = "ws"
servers = [{{ addr = "{ws}" }}]
"#
    )
}

async fn ws_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn generation(corral: &Corral) -> u64 {
    corral.status().await["generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_by_every_trigger_fail_no_request() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 2)).await;
    let master = corral.status().await["pid"].clone();
    let public = corral.addr("public");
    let upgrade = tokio_tungstenite::connect_async(format!("ws://{public}/ws"));
    let (mut socket, _) = patiently("the WebSocket upgrade", upgrade).await.unwrap();
    let load = Load::start(public, 12, 4);
    load.wait_successes(200).await;

    for i in 0..20 {
        let (target, name) = if i % 2 == 0 {
            (b.addr, "b")
        } else {
            (a.addr, "a")
        };
        let before = generation(&corral).await;
        corral.write_config(&config(target, ws, "", 2));
        let trigger = match i % 3 {
            0 => {
                corral.signal(Signal::SIGHUP);
                "SIGHUP"
            }
            1 => {
                let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
                assert_eq!(code, StatusCode::OK, "{body}");
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(answer["generation"].as_u64().unwrap() > before);
                "POST /reload"
            }
            _ => "file change",
        };
        // The watcher sees every write too, and reloads 200 ms after it: on a
        // loaded machine it may come first, and the signal or POST then
        // finds the file unchanged. Either way one reload serves the text.
        let status = corral
            .wait_status(|s| {
                // The record, not `generation`: that moves as soon as the
                // reload starts, the record once every worker serves it.
                s["last_reload"]["generation"].as_u64() > Some(before)
                    && (s["last_reload"]["trigger"] == trigger
                        || s["last_reload"]["trigger"] == "file change")
            })
            .await;
        assert_eq!(
            status["generation"].as_u64(),
            Some(before + 1),
            "{status:#}"
        );
        // A reload is recorded once every worker serves it.
        assert_eq!(get(public, "/", &[]).await.backend(), name, "switch {i}");
        load.wait_successes(50).await;
        let ping = socket.send(Message::text(format!("ping {i}")));
        patiently("sending on the WebSocket", ping).await.unwrap();
        let echoed = patiently("the WebSocket echo", socket.next()).await;
        assert_eq!(
            echoed.unwrap().unwrap().into_text().unwrap(),
            format!("ping {i}")
        );
    }
    let failures = load.finish("across 20 reloads").await;
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    let status = corral.status().await;
    assert_eq!(status["pid"], master, "the master was restarted");
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["restarts"] == 0)
    );
}

#[tokio::test]
async fn a_broken_file_is_rejected_whole_and_the_old_config_keeps_serving() {
    let (a, ws) = (echo("a").await, ws_upstream().await);
    let good = config(a.addr, ws, "", 2);
    let corral = Corral::start(&good).await;
    let broken = [
        (
            "syntax",
            good.replace(
                "[[routes]]\nupstream = \"app\"",
                "[[routes]\nupstream = \"app\"",
            ),
            "[[routes]",
        ),
        (
            "unknown upstream",
            good.replace("upstream = \"app\"", "upstream = \"nope\""),
            "\"nope\"",
        ),
        (
            "bad address",
            good.replace(&a.addr.to_string(), "127.0.0.1:99999"),
            "\"127.0.0.1:99999\"",
        ),
        (
            "unknown key",
            good.replace("name = \"app\"", "name = \"app\"\ncolour = \"red\""),
            "colour",
        ),
    ];
    for (i, (kind, text, needle)) in broken.iter().enumerate() {
        corral.write_config(text);
        let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{kind}: {body}");
        let offset = text.rfind(needle).unwrap();
        let line = text[..offset].matches('\n').count() + 1;
        let prefix = format!("{}:{line}:", corral.config_path.display());
        assert!(
            body.lines().any(|l| l.starts_with(&prefix)),
            "{kind}: expected {prefix} in {body}"
        );
        let status = corral.status().await;
        assert_eq!(status["generation"], 1, "{kind}");
        assert_eq!(status["last_reload"]["result"], "failure");
        assert!(
            status["last_reload"]["error"]
                .as_str()
                .unwrap()
                .contains(&prefix)
        );
        assert!(status["reloads"]["failure"].as_u64().unwrap() > i as u64);
        assert_eq!(
            get(corral.addr("public"), "/", &[]).await.backend(),
            "a",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn corral_reload_reports_success_and_failure() {
    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 1)).await;
    let admin = corral.admin.unwrap().to_string();
    corral.write_config(&config(b.addr, ws, "", 1));
    let stdout = cli_ok(&["reload", "--admin", &admin]);
    assert_eq!(
        stdout,
        format!(
            "reloaded: now serving generation 2\n  + server {} in upstream `app` (weight 1)\n  - server {} in upstream `app`\n",
            b.addr, a.addr
        )
    );
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
    // The same file again changes nothing, so it is no new generation.
    let stdout = cli_ok(&["reload", "--admin", &admin]);
    assert_eq!(stdout, "unchanged: still serving generation 2\n");

    corral.write_config("[[listeners]]\nname = 7\n");
    let out = std::process::Command::new(BIN)
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", corral.config_path.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up_without_a_signal() {
    use std::os::unix::fs::symlink;
    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/corral.toml"), config(a.addr, ws, "", 2)).unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/corral.toml", root.join("corral.toml")).unwrap();
    let path = root.join("corral.toml");
    let corral = Corral::start_at(dir, path.clone()).await;
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "a");

    // What kubelet does: a new folder, then one atomic rename of `..data`.
    let root = path.parent().unwrap();
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/corral.toml"), config(b.addr, ws, "", 2)).unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();

    corral
        .wait_status(|s| s["generation"] == 2 && s["last_reload"]["trigger"] == "file change")
        .await;
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
}

#[tokio::test]
async fn a_busy_file_beside_the_config_does_not_hold_back_its_reload() {
    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 1)).await;
    // A log beside the config, written more often than the watcher's
    // settling time: were its writes taken for the config's, the burst
    // would never settle.
    let log = corral.config_path.with_file_name("access.log");
    let writer = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
        loop {
            every.tick().await;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            std::io::Write::write_all(&mut f, b"GET / 200\n").unwrap();
        }
    });
    // An edit in place, then an editor's write-and-rename.
    corral.write_config(&config(b.addr, ws, "", 1));
    corral
        .wait_status(|s| s["generation"] == 2 && s["last_reload"]["trigger"] == "file change")
        .await;
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
    let temp = corral.config_path.with_file_name(".corral.toml.swp");
    std::fs::write(&temp, config(a.addr, ws, "", 1)).unwrap();
    std::fs::rename(&temp, &corral.config_path).unwrap();
    corral
        .wait_status(|s| s["generation"] == 3 && s["last_reload"]["trigger"] == "file change")
        .await;
    writer.abort();
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "a");
}

#[tokio::test]
async fn listeners_added_by_reload_serve_and_removed_ones_stop_accepting() {
    let (a, ws) = (echo("a").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 2)).await;
    let second = "[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\n";
    corral.write_config(&config(a.addr, ws, second, 2));
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("+ listener `second`"), "{body}");
    let added = corral.wait_ready(2).await.listeners()["second"];
    for _ in 0..10 {
        assert_eq!(get(added, "/", &[]).await.backend(), "a");
    }
    // An open connection on the listener outlives its removal.
    let mut open = H1::connect(added).await;
    assert_eq!(open.get("/", &[]).await.status, StatusCode::OK);
    let sockets = listening_inodes(added);
    assert_eq!(sockets.len(), 2, "one socket per slot");

    corral.write_config(&config(a.addr, ws, "", 2));
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("- listener `second`"), "{body}");
    // Workers confirm a reload once they have closed removed sockets. The
    // sockets themselves are looked for, not a refused connect: another
    // test may listen on the port by now.
    assert!(
        listening_inodes(added).is_disjoint(&sockets),
        "the removed listener's sockets are still open"
    );
    assert_eq!(open.get("/", &[]).await.status, StatusCode::OK);
    assert_eq!(
        get(corral.addr("public"), "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn changing_the_worker_count_adds_and_retires_slots() {
    let (a, ws) = (echo("a").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 2)).await;
    for (workers, generation) in [(3, 2), (1, 3)] {
        corral.write_config(&config(a.addr, ws, "", workers));
        let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let status = corral.status().await;
        let slots = status["workers"].as_array().unwrap();
        assert_eq!(slots.len(), workers);
        assert!(
            slots
                .iter()
                .all(|w| w["state"] == "ready" && w["generation"] == generation),
            "{status:#}"
        );
        // A retired slot's socket closes once its worker has drained and
        // exited, and the master has relayed what was queued on it.
        for slot in workers..3 {
            corral
                .wait_for_log(&format!("worker slot stopped slot={slot}"))
                .await;
        }
        assert_eq!(listening_inodes(corral.addr("public")).len(), workers);
        for _ in 0..6 {
            assert_eq!(
                get(corral.addr("public"), "/", &[]).await.status,
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn a_worker_started_after_a_reload_runs_the_current_generation() {
    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 1)).await;
    corral.write_config(&config(b.addr, ws, "", 1));
    corral.signal(Signal::SIGHUP);
    corral
        .wait_status(|s| s["generation"] == 2 && all_ready(s))
        .await;
    let victim = corral.worker_pids().await[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let status = corral
        .wait_status(|s| all_ready(s) && s["workers"][0]["pid"].as_u64() != Some(victim))
        .await;
    assert_eq!(status["workers"][0]["generation"], 2);
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
}

#[tokio::test]
async fn unchanged_servers_keep_their_pooled_connections_across_a_reload() {
    let (upstream, peers) =
        upstream_with_peers(|_| async { http::Response::new(full("ok")) }).await;
    let app = upstream.addr;
    let ws = ws_upstream().await;
    let corral = Corral::start(&config(app, ws, "", 1)).await;
    let mut client = H1::connect(corral.addr("public")).await;
    for _ in 0..5 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    let before = peers.lock().unwrap().len();
    // A change elsewhere in the file: a new route.
    let changed = config(app, ws, "", 1).replace(
        "[[routes]]\nupstream = \"app\"",
        "[[routes]]\npath_prefix = \"/v2/\"\nupstream = \"app\"\n\n[[routes]]\nupstream = \"app\"",
    );
    corral.write_config(&changed);
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for _ in 0..5 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        peers.lock().unwrap().len(),
        before,
        "the reload opened new upstream connections"
    );
}

#[tokio::test]
async fn check_diff_shows_what_a_reload_would_change() {
    let (a, b, ws) = (echo("a").await, echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 2)).await;
    let next = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(next.path(), config(b.addr, ws, "", 3)).unwrap();
    let admin = corral.admin.unwrap().to_string();
    let path = path_of(next.path());
    let stdout = cli_ok(&["check", "--diff", "--admin", &admin, "--config", &path]);
    assert!(stdout.contains("~ runtime: workers 2 -> 3"), "{stdout}");
    assert!(
        stdout.contains(&format!("+ server {} in upstream `app`", b.addr)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("- server {} in upstream `app`", a.addr)),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_long_download_is_not_cut_by_reloads() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let (more_tx, more_rx) = tokio::sync::mpsc::channel::<()>(1);
    let more = std::sync::Arc::new(tokio::sync::Mutex::new(Some(more_rx)));
    let app = upstream(move |_req| {
        let more = more.clone();
        async move {
            let more = more.lock().await.take().unwrap();
            let stream = futures_util::stream::unfold((0, more), |(sent, mut more)| async move {
                if sent == 3 || (sent > 0 && more.recv().await.is_none()) {
                    return None;
                }
                let part = Frame::data(Bytes::from(format!("part {sent}\n")));
                Some((Ok::<_, std::io::Error>(part), (sent + 1, more)))
            });
            http::Response::new(StreamBody::new(stream).boxed())
        }
    })
    .await;
    let (b, ws) = (echo("b").await, ws_upstream().await);
    let corral = Corral::start(&config(app.addr, ws, "", 2)).await;
    let mut client = H1::connect(corral.addr("public")).await;
    let request = http::Request::get("/download")
        .header("host", "x")
        .body(empty())
        .unwrap();
    let mut body = client.send(request).await.unwrap().into_body();
    let mut received = String::new();
    let first = patiently("the first part", body.frame()).await;
    let first = first.unwrap().unwrap().into_data().unwrap();
    received.push_str(std::str::from_utf8(&first).unwrap());
    for part in 0..2 {
        // Each reload moves new requests to `b`; the download goes on.
        let target = if part == 0 { b.addr } else { app.addr };
        corral.write_config(&config(target, ws, "", 2));
        let (code, body_text) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
        assert_eq!(code, StatusCode::OK, "{body_text}");
        more_tx.send(()).await.unwrap();
        let chunk = patiently("the next part", body.frame()).await;
        let chunk = chunk.unwrap().unwrap().into_data().unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(received, "part 0\npart 1\npart 2\n");
}

/// README "Config reload": a changed `admin.listen` applies on reload. One
/// that cannot be bound fails the reload and the endpoint stays; one that
/// can moves it: the new address answers, the old refuses connections.
#[tokio::test]
async fn a_reload_moves_the_admin_endpoint_to_a_new_admin_listen() {
    let (a, ws) = (echo("a").await, ws_upstream().await);
    let corral = Corral::start(&config(a.addr, ws, "", 2)).await;
    let old = corral.admin.unwrap();
    let with_admin = |listen: &str| {
        config(a.addr, ws, "", 2).replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{listen}\""),
        )
    };

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    corral.write_config(&with_admin(&taken_addr.to_string()));
    let (code, body) = admin_call(old, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains(&format!("cannot listen on {taken_addr} (admin.listen)")),
        "{body}"
    );
    let (code, _) = admin_call(old, Method::GET, "/status").await;
    assert_eq!(code, StatusCode::OK, "the old endpoint still answers");
    drop(taken);

    // Another loopback address, so that the old port cannot be it.
    corral.write_config(&with_admin("127.0.0.3:0"));
    let (code, body) = admin_call(old, Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("~ admin: listen"), "{body}");
    let line = corral
        .wait_for_logs("admin endpoint listening", 2)
        .await
        .into_iter()
        .find(|l| l.contains("127.0.0.3:"))
        .unwrap();
    let new: SocketAddr = log_field(&line, "addr").unwrap().parse().unwrap();
    let (code, status) = admin_call(new, Method::GET, "/status").await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert!(status.contains("\"generation\""), "{status}");
    let refused = tokio::net::TcpStream::connect(old).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{old}"
    );
    assert!(listening_inodes(old).is_empty(), "{old} still listens");
}
