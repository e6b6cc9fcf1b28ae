//! Sticky sessions (`[upstreams.sticky]`): the first answer names its
//! server in a cookie, the same in every worker; a client that sends it
//! back stays on that server while the server is up, and moves (with a new
//! cookie) only when it goes down; a value that names no server gets a
//! policy's pick. And what the config may say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use corral::config::{ConfigError, from_str};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;

/// A server named `name` (in `x-backend`) that sets a cookie of its own,
/// and answers its health checks and requests with 200 while `up` holds,
/// 503 once it is cleared.
async fn server(name: &'static str) -> (Upstream, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    let upstream = upstream(move |_: Request<Incoming>| {
        let status = if flag.load(Ordering::Relaxed) {
            200
        } else {
            503
        };
        async move {
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .header("set-cookie", format!("app={name}; Path=/"))
                .body(empty())
                .unwrap()
        }
    })
    .await;
    (upstream, up)
}

const STICKY: &str = r#"[upstreams.sticky]
cookie = "srv"
max_age = "1h"

[upstreams.health_check]
path = "/healthz"
interval = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#;

/// The value of the `srv` cookie corral set, if it set one.
fn sticky_cookie(reply: &Reply) -> Option<String> {
    let set: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|v| v.starts_with("srv="))
        .collect();
    assert!(set.len() <= 1, "{set:?}");
    let (pair, _) = set.first()?.split_once(';').unwrap();
    Some(pair.strip_prefix("srv=").unwrap().to_owned())
}

/// One GET of `/` on a fresh connection (so that either worker may take
/// it), with `cookie` if any.
async fn visit(addr: SocketAddr, cookie: Option<&str>) -> Reply {
    let header = cookie.map(|c| format!("theme=dark; srv={c}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("cookie", h.as_str())).collect();
    let reply = get(addr, "/", &headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

fn server_state(status: &serde_json::Value, index: usize) -> String {
    status["upstreams"][0]["servers"][index]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_sticky_cookie_keeps_a_client_on_one_of_three_servers_until_that_server_goes_down() {
    let (a, a_up) = server("a").await;
    let (b, b_up) = server("b").await;
    let (c, c_up) = server("c").await;
    let ups: HashMap<&str, &Arc<AtomicBool>> = [("a", &a_up), ("b", &b_up), ("c", &c_up)].into();
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr, c.addr], STICKY)).await;
    corral
        .wait_status(|s| (0..3).all(|i| server_state(s, i) == "healthy"))
        .await;
    let addr = corral.addr("public");

    // Without a cookie, round robin spreads the clients, each told its
    // server. Fresh connections land on both workers, and every worker
    // names a server by the same value.
    let mut values: HashMap<String, String> = HashMap::new();
    for _ in 0..30 {
        let reply = visit(addr, None).await;
        let value = sticky_cookie(&reply).expect("a first answer sets the cookie");
        let known = values
            .entry(reply.backend())
            .or_insert_with(|| value.clone());
        assert_eq!(*known, value, "one server, two values");
        // The server's own cookie is kept beside corral's.
        let app = format!("app={}; Path=/", reply.backend());
        assert!(
            reply
                .headers
                .get_all("set-cookie")
                .iter()
                .any(|v| *v == *app)
        );
    }
    assert_eq!(values.len(), 3, "{values:?}");
    let mut names: Vec<&String> = values.values().collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "two servers share a value: {values:?}");
    assert!(values.values().all(|v| !v.contains("127.0.0.1")));

    // The client that got server b's cookie stays there, on every
    // connection and worker, and is not told again.
    let cookie = values["b"].clone();
    for _ in 0..50 {
        let reply = visit(addr, Some(&cookie)).await;
        assert_eq!(reply.backend(), "b");
        assert_eq!(sticky_cookie(&reply), None, "{:?}", reply.headers);
    }

    // b goes down: the client moves, and is told where to.
    b_up.store(false, Ordering::Relaxed);
    corral
        .wait_status(|s| server_state(s, 1) == "unhealthy")
        .await;
    let reply = visit(addr, Some(&cookie)).await;
    let moved_to = reply.backend();
    assert_ne!(moved_to, "b");
    let new_cookie = sticky_cookie(&reply).expect("a move sets the cookie again");
    assert_eq!(new_cookie, values[moved_to.as_str()]);

    // It stays on its new server, also once b is back.
    for _ in 0..20 {
        assert_eq!(visit(addr, Some(&new_cookie)).await.backend(), moved_to);
    }
    b_up.store(true, Ordering::Relaxed);
    corral
        .wait_status(|s| server_state(s, 1) == "healthy")
        .await;
    for _ in 0..20 {
        let reply = visit(addr, Some(&new_cookie)).await;
        assert_eq!(reply.backend(), moved_to);
        assert_eq!(sticky_cookie(&reply), None);
    }
    // Nothing else went down on the way.
    assert!(ups.values().all(|up| up.load(Ordering::Relaxed)));
}

#[tokio::test]
async fn a_value_that_names_no_server_gets_a_policy_pick_and_a_fresh_cookie() {
    let (a, _) = server("a").await;
    let (b, _) = server("b").await;
    let corral = Corral::start(&cluster_config(&[a.addr, b.addr], STICKY)).await;
    let addr = corral.addr("public");
    let real = sticky_cookie(&visit(addr, None).await).unwrap();
    // The right length and alphabet, and one character off; an address;
    // nothing; text.
    let mut flipped = real.clone().into_bytes();
    flipped[5] = if flipped[5] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    for forged in [flipped.as_str(), "127.0.0.1", "", "b", "garbage%20value"] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let reply = visit(addr, Some(forged)).await;
            let value = sticky_cookie(&reply).expect("an invalid cookie is replaced");
            assert_ne!(value, forged);
            seen.push(reply.backend());
        }
        // Round robin, not one server for every forger.
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 2, "{forged:?} went to {seen:?}");
    }
}

#[tokio::test]
async fn the_cookie_is_httponly_samesite_lax_for_every_path_with_its_max_age_and_secure_on_tls() {
    let app = echo("app").await;
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["a.example.com".to_owned()]).unwrap();
    let dir = certs.path();
    std::fs::write(dir.join("a.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), cert.signing_key.serialize_pem()).unwrap();
    let d = dir.display();
    let sticky = "[upstreams.sticky]\ncookie = \"route_id\"\nmax_age = \"1h 30m\"\n";
    let secure = format!(
        "[[listeners]]\nname = \"secure\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.tls]\ncertificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]\n\n\
         [[routes]]"
    );
    let config = cluster_config(&[app.addr], sticky).replace("[[routes]]", &secure);
    let corral = Corral::start(&config).await;

    let plain = get(corral.addr("public"), "/some/path", &[]).await;
    let set = plain.headers["set-cookie"].to_str().unwrap();
    let (pair, attributes) = set.split_once("; ").unwrap();
    assert!(pair.starts_with("route_id="), "{set}");
    assert_eq!(attributes, "Path=/; HttpOnly; SameSite=Lax; Max-Age=5400");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let secure = get_over_tls(corral.addr("secure"), &roots).await;
    let set = secure.headers["set-cookie"].to_str().unwrap();
    assert_eq!(set, format!("{pair}; {attributes}; Secure"));
}

/// One GET of `/` over TLS (HTTP/1.1) to `a.example.com`.
async fn get_over_tls(addr: SocketAddr, roots: &rustls::RootCertStore) -> Reply {
    let stream = tls_connect(addr, roots, "a.example.com", &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", "a.example.com")
        .body(empty())
        .unwrap();
    let response = patiently("a response over TLS", sender.send_request(request))
        .await
        .unwrap();
    read(response).await
}

/// The key stays the cluster's: a reload (which builds every upstream
/// again) and a binary upgrade (a new master, new workers) keep every
/// client's cookie naming its server.
#[tokio::test]
async fn cookies_name_the_same_servers_after_a_reload_and_a_binary_upgrade() {
    let (a, _) = server("a").await;
    let (b, _) = server("b").await;
    let servers = [a.addr, b.addr];
    let config = cluster_config(&servers, "[upstreams.sticky]\ncookie = \"srv\"\n");
    let corral = Corral::start(&config).await;
    let addr = corral.addr("public");
    let mut cookies = HashMap::new();
    while cookies.len() < 2 {
        let reply = visit(addr, None).await;
        cookies.insert(reply.backend(), sticky_cookie(&reply).unwrap());
    }
    let stays = async |what: &str| {
        for (name, cookie) in &cookies {
            for _ in 0..5 {
                let reply = visit(addr, Some(cookie)).await;
                assert_eq!(reply.backend(), *name, "after {what}");
                assert_eq!(sticky_cookie(&reply), None, "after {what}");
            }
        }
    };

    corral.write_config(&config.replace("cookie = \"srv\"", "cookie = \"srv\"\nmax_age = \"1h\""));
    corral.signal(nix::sys::signal::Signal::SIGHUP);
    corral.wait_ready(2).await;
    stays("a reload").await;

    corral.signal(nix::sys::signal::Signal::SIGUSR2);
    corral.wait_successor_ready().await;
    stays("a binary upgrade").await;
}

/// The rules of every pick hold for the named server: it takes the
/// request only while it is up, not recently failed and below its cap,
/// and like any server it is tried anyway when every server just failed.
#[tokio::test]
async fn the_named_server_is_picked_only_when_a_pick_could_choose_it() {
    let text = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\
        [[routes]]\nupstream = \"app\"\n\
        [[upstreams]]\nname = \"app\"\nmax_in_flight = 1\n\
        servers = [{ addr = \"10.0.0.1:80\" }, { addr = \"10.0.0.2:80\" }, { addr = \"10.0.0.3:80\" }]\n\
        [upstreams.sticky]\ncookie = \"srv\"\n";
    let mut plan = from_str(Path::new("corral.toml"), text).unwrap();
    plan.sticky_key = Some(corral::plan::StickyKey::generate().unwrap());
    let upstreams = corral::upstream::rebuild(&plan.upstreams, &[], plan.sticky_key.as_ref());
    let app = &upstreams[0];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut picks = |named| -> Vec<Option<usize>> {
        (0..6)
            .map(|_| app.pick_named(None, named, &mut rng))
            .collect()
    };
    assert!(picks(Some(1)).iter().all(|p| *p == Some(1)));
    // No name, or one past the servers: round robin.
    for named in [None, Some(3)] {
        let mut seen = picks(named);
        seen.sort();
        seen.dedup();
        assert_eq!(seen, [Some(0), Some(1), Some(2)]);
    }

    let b = &app.servers[1];
    let lease = b.lease();
    assert!(picks(Some(1)).iter().all(|p| *p != Some(1)), "at its cap");
    drop(lease);
    b.set_healthy(false);
    assert!(picks(Some(1)).iter().all(|p| *p != Some(1)), "down");
    b.set_healthy(true);
    b.mark_failed();
    assert!(
        picks(Some(1)).iter().all(|p| *p != Some(1)),
        "recently failed"
    );
    // With every other server down, a server that just failed is tried anyway.
    app.servers[0].set_healthy(false);
    app.servers[2].set_healthy(false);
    assert!(picks(Some(1)).iter().all(|p| *p == Some(1)));
    assert!(picks(None).iter().all(|p| *p == Some(1)));
}

/// A worker never makes up a key of its own: it would name servers
/// unlike every other worker.
#[test]
fn a_worker_refuses_a_sticky_plan_without_a_key() {
    let text = format!("{BASE}[upstreams.sticky]\ncookie = \"srv\"\n");
    let plan = from_str(Path::new("corral.toml"), &text).unwrap();
    let recorder = corral::metrics::Recorder::private().unwrap();
    let built = corral::snapshot::Snapshot::build(plan, 1, None, &recorder, None);
    let error = built.expect_err("built without a key").to_string();
    assert!(error.contains("upstream `api` is sticky"), "{error}");
}

// --- config ------------------------------------------------------------------

const BASE: &str = r#"[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "api"

[[upstreams]]
name = "api"
balance = "least_conn"
servers = [{ addr = "127.0.0.1:9001" }]
"#;

/// The diagnostics for BASE with `sticky` as its upstream's sticky table,
/// as `LINE:COL: reason`.
fn problems(sticky: &str) -> Vec<String> {
    let text = format!("{BASE}[upstreams.sticky]\n{sticky}\n");
    match from_str(Path::new("corral.toml"), &text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { diagnostics }) => diagnostics
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect(),
        Err(e) => panic!("not a validation error: {e}"),
    }
}

#[test]
fn a_sticky_table_names_its_cookie_and_may_give_it_a_max_age_under_any_policy() {
    let text = format!("{BASE}[upstreams.sticky]\ncookie = \"srv\"\nmax_age = \"2h\"\n");
    let plan = from_str(Path::new("corral.toml"), &text).unwrap();
    let sticky = plan.upstreams[0].sticky.clone().unwrap();
    assert_eq!(sticky.cookie, "srv");
    assert_eq!(sticky.max_age, Some(std::time::Duration::from_secs(7200)));
    // A plan only checked has no key; the master makes one, and it is
    // never printed.
    assert!(plan.sticky_key.is_none());
    let key = corral::plan::StickyKey::generate().unwrap();
    assert_eq!(format!("{key:?}"), "StickyKey(redacted)");
    let session = problems("cookie = \"__Host-srv.v1\"");
    assert!(session.is_empty(), "{session:?}");
}

#[test]
fn a_sticky_cookie_name_is_a_token_and_its_max_age_whole_positive_seconds() {
    // BASE has 11 lines and the table's header is line 12: its keys are
    // on lines 13 and 14.
    for bad in ["", "a b", "srv;x", "a=b", "s\\\"rv", "séance", "(srv)"] {
        let found = problems(&format!("cookie = \"{bad}\""));
        assert!(
            found.len() == 1
                && found[0].starts_with("13:10: upstreams.sticky.cookie: ")
                && found[0].contains("is not a cookie name"),
            "{bad:?}: {found:?}"
        );
    }
    for (bad, reason) in [
        ("0s", "is too short, expected at least 1s"),
        ("500ms", "is too short, expected at least 1s"),
        ("1500ms", "is not a whole number of seconds"),
        ("soon", "is not a duration"),
    ] {
        let found = problems(&format!("cookie = \"srv\"\nmax_age = \"{bad}\""));
        assert!(
            found.len() == 1
                && found[0].starts_with("14:11: upstreams.sticky.max_age: ")
                && found[0].contains(reason),
            "{bad:?}: {found:?}"
        );
    }
}

#[test]
fn a_sticky_table_needs_a_cookie_and_knows_no_other_keys() {
    let missing = problems("max_age = \"1h\"");
    assert!(
        missing.iter().any(|p| p.contains("missing field `cookie`")),
        "{missing:?}"
    );
    let unknown = problems("cookie = \"srv\"\ndomain = \"example.com\"");
    assert!(
        unknown.len() == 1
            && unknown[0].starts_with("14:1: ")
            && unknown[0].contains("unknown field `domain`, expected `cookie` or `max_age`"),
        "{unknown:?}"
    );
}

#[test]
fn corral_check_accepts_a_sticky_upstream_without_a_running_master() {
    let (ok, out, _) = check(&format!("{BASE}[upstreams.sticky]\ncookie = \"srv\"\n"));
    assert!(ok, "{out}");
}
