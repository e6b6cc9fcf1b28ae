//! Readiness for a service manager (docs/operations.md "Readiness"): the
//! sd_notify(3) datagrams the master sends to `NOTIFY_SOCKET` when it
//! serves, reloads, stops and hands over to a new master, with where it
//! listens; and that workers never speak for the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Method, StatusCode};
use nix::sys::signal::Signal;

/// CLOCK_MONOTONIC now, in µs: what `MONOTONIC_USEC` is measured against.
fn monotonic_usec() -> i128 {
    match sd_notify::NotifyState::monotonic_usec_now().unwrap() {
        sd_notify::NotifyState::MonotonicUsec(usec) => usec,
        other => panic!("not a time: {other:?}"),
    }
}

/// What each notice says, in order: `READY N` (with its generation),
/// `RELOADING`, `STOPPING`, or the keys it holds. Every line of each must
/// be `KEY=VALUE` with an upper-case key, as sd_notify(3) has them.
fn kinds(notices: &[Notice]) -> Vec<String> {
    notices
        .iter()
        .map(|m| {
            let well_formed =
                |k: &&str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
            assert!(m.keys().iter().all(well_formed), "{m:?}");
            if m.is_ready() {
                format!("READY {}", m.generation().unwrap())
            } else if m.is_reloading() {
                "RELOADING".to_owned()
            } else if m.is_stopping() {
                "STOPPING".to_owned()
            } else {
                m.keys().join(",")
            }
        })
        .collect()
}

/// The variables of `pid`'s environment, as `KEY=VALUE`.
fn environment(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test]
async fn ready_names_the_master_and_where_each_listener_and_the_admin_endpoint_listen() {
    let app = echo("app").await;
    let second = "[[listeners]]\nname = \"second.one\"\nlisten = \"127.0.0.1:0\"\n";
    let config = format!("{}{second}", cluster_config(&[app.addr], ""));
    let corral = Corral::start(&config).await;
    let notices = corral.notices.all();
    assert_eq!(kinds(&notices), ["READY 1"], "{notices:#?}");
    let ready = &notices[0];
    assert_eq!(ready.main_pid(), Some(corral.pid()), "{ready:?}");
    assert!(
        ready
            .get("STATUS")
            .is_some_and(|s| s.contains("generation 1")),
        "{ready:?}"
    );

    let listeners = ready.listeners();
    let mut names: Vec<&str> = listeners.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["public", "second.one"], "{ready:?}");
    for addr in listeners.values() {
        assert_ne!(addr.port(), 0, "{ready:?}");
        let reply = get(*addr, "/through", &[]).await;
        assert_eq!(
            (reply.status, reply.backend()),
            (StatusCode::OK, "app".into())
        );
    }
    let admin = ready.admin().expect("no X_CORRAL_ADMIN");
    let (code, body) = admin_call(admin, Method::GET, "/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(corral.pid())));
    assert!(
        all_ready(&status),
        "READY=1 before every slot served: {status:#}"
    );
}

#[tokio::test]
async fn no_admin_endpoint_means_no_x_corral_admin() {
    let app = echo("app").await;
    let corral = Corral::start(&simple_config(&[app.addr], "")).await;
    let ready = corral.wait_ready(1).await;
    assert_eq!(ready.admin(), None, "{ready:?}");
    assert_eq!(ready.listeners().len(), 1, "{ready:?}");
}

#[tokio::test]
async fn a_reload_is_reloading_then_ready_whether_it_applied_or_failed() {
    let (a, b) = (echo("a").await, echo("b").await);
    let corral = Corral::start(&cluster_config(&[a.addr], "")).await;

    // SIGHUP, as `systemctl reload` sends it to a Type=notify-reload unit.
    corral.write_config(&cluster_config(&[b.addr], ""));
    let before = monotonic_usec();
    corral.signal(Signal::SIGHUP);
    let applied = corral.wait_ready(2).await;
    let after = monotonic_usec();
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");
    assert!(
        applied
            .get("STATUS")
            .is_some_and(|s| s.contains("reloaded")),
        "{applied:?}"
    );
    assert_eq!(applied.listeners(), corral.listeners, "{applied:?}");

    std::fs::write(&corral.config_path, "this is not [valid toml").unwrap();
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let failed = corral.wait_readies(3).await.remove(2);
    let end = monotonic_usec();
    assert_eq!(failed.generation(), Some(2), "{failed:?}");
    let status = failed.get("STATUS").unwrap();
    assert!(
        status.contains("failed") && status.contains("generation 2"),
        "{failed:?}"
    );
    // The old generation still serves.
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "b");

    let notices = corral.notices.all();
    assert_eq!(
        kinds(&notices),
        ["READY 1", "RELOADING", "READY 2", "RELOADING", "READY 2"],
        "{notices:#?}"
    );
    let usec = |m: &Notice| -> i128 { m.get("MONOTONIC_USEC").unwrap().parse().unwrap() };
    let (first, second) = (usec(&notices[1]), usec(&notices[3]));
    assert!(
        (before..=after).contains(&first),
        "{first} not within [{before}, {after}]"
    );
    assert!(
        (after..=end).contains(&second),
        "{second} not within [{after}, {end}]"
    );
}

#[tokio::test]
async fn a_reload_then_sigterm_say_reloading_ready_then_stopping_and_nothing_after() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut corral = Corral::start(&cluster_config(&[a.addr], "")).await;
    corral.write_config(&cluster_config(&[b.addr], ""));
    corral.signal(Signal::SIGHUP);
    corral.wait_ready(2).await;
    corral.signal(Signal::SIGTERM);
    corral
        .wait_for_notice("STOPPING=1", Notice::is_stopping)
        .await;
    assert_eq!(corral.wait_exit().await, Some(0));
    let notices = corral.notices.all();
    assert_eq!(
        kinds(&notices),
        ["READY 1", "RELOADING", "READY 2", "STOPPING"],
        "{notices:#?}"
    );
}

/// The environment systemd gives a unit with `WatchdogSec=0.2s`: the
/// watchdog's interval and the process it is for.
const WATCHDOG: [(&str, &str); 2] = [("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", OWN_PID)];

#[tokio::test]
async fn workers_do_not_inherit_notify_socket_nor_the_watchdog() {
    let app = echo("app").await;
    let corral = Corral::start_in_env(&cluster_config(&[app.addr], ""), &WATCHDOG).await;
    let has = |env: &[String], var: &str| env.iter().any(|v| v.starts_with(&format!("{var}=")));
    let vars = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
    // The master had them to pass on.
    let master = environment(u64::from(corral.pid()));
    for var in vars {
        assert!(has(&master, var), "the master has no {var}: {master:?}");
    }
    let workers = corral.worker_pids().await;
    assert_eq!(workers.len(), 2);
    for pid in workers {
        let env = environment(pid);
        assert!(
            has(&env, "CORRAL_MASTER_PID"),
            "{pid} is no worker: {env:?}"
        );
        for var in vars {
            assert!(!has(&env, var), "worker {pid} has {var}");
        }
    }
    // Whatever was sent, the master sent.
    corral
        .notices
        .wait_for("WATCHDOG=1", 1, Notice::is_watchdog)
        .await;
    let notices = corral.notices.all();
    assert!(
        notices.iter().all(|m| m.sender() == corral.pid()),
        "{notices:#?}"
    );
}

#[tokio::test]
async fn with_a_watchdog_the_master_pings_it_once_it_serves() {
    let app = echo("app").await;
    let corral = Corral::start_in_env(&cluster_config(&[app.addr], ""), &WATCHDOG).await;
    let pings = corral
        .notices
        .wait_for("WATCHDOG=1", 3, Notice::is_watchdog)
        .await;
    for ping in &pings {
        assert_eq!(ping.keys(), ["WATCHDOG"], "{ping:?}");
        assert_eq!(ping.sender(), corral.pid(), "{ping:?}");
    }
    // The first after READY=1: before it, the start timeout is what counts.
    let notices = corral.notices.all();
    assert_eq!(
        kinds(&notices[..2]),
        ["READY 1", "WATCHDOG"],
        "{notices:#?}"
    );

    // Pings go on across a reload.
    let seen = corral
        .notices
        .all()
        .iter()
        .filter(|m| m.is_watchdog())
        .count();
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    corral.wait_readies(2).await;
    corral
        .notices
        .wait_for("WATCHDOG=1 after a reload", seen + 2, Notice::is_watchdog)
        .await;
}

#[tokio::test]
async fn no_watchdog_pings_without_watchdog_usec_or_for_another_process() {
    let app = echo("app").await;
    let config = cluster_config(&[app.addr], "");
    let mut unset = Corral::start(&config).await;
    let mut other = Corral::start_in_env(
        &config,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    )
    .await;
    // The clock: a master with a watchdog (and no WATCHDOG_PID, which
    // sd_watchdog_enabled(3) takes as this process), started once both
    // serve, pings three times, two intervals apart, while they serve.
    let pinging = Corral::start_in_env(&config, &[("WATCHDOG_USEC", "200000")]).await;
    pinging
        .notices
        .wait_for("WATCHDOG=1", 3, Notice::is_watchdog)
        .await;
    for corral in [&mut unset, &mut other] {
        corral.signal(Signal::SIGTERM);
        assert_eq!(corral.wait_exit().await, Some(0));
        let notices = corral.notices.all();
        assert_eq!(kinds(&notices), ["READY 1", "STOPPING"], "{notices:#?}");
    }
}

#[tokio::test]
async fn after_a_binary_upgrade_mainpid_names_the_new_master_and_the_old_one_never_says_stopping() {
    let app = echo("app").await;
    let mut corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let old = corral.pid();
    corral.signal(Signal::SIGUSR2);
    let ready = corral.wait_successor_ready().await;
    let new = ready.main_pid().unwrap();
    assert_ne!(new, old);
    // The same sockets, handed over.
    assert_eq!(ready.listeners(), corral.listeners, "{ready:?}");
    assert_eq!(ready.admin(), corral.admin, "{ready:?}");
    assert_eq!(corral.wait_exit().await, Some(0));
    let status = corral.status().await;
    assert_eq!(status["pid"].as_u64(), Some(u64::from(new)), "{status:#}");

    // A reload by the new master, after the old one has exited: its
    // notices come after everything the old master sent.
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    corral.wait_readies(3).await;
    let notices = corral.notices.all();
    assert!(
        !notices.iter().any(Notice::is_stopping),
        "STOPPING=1 would stop the service: {notices:#?}"
    );
    let named: Vec<u32> = notices.iter().filter_map(Notice::main_pid).collect();
    assert_eq!(named.first(), Some(&old), "{notices:#?}");
    assert_eq!(named.last(), Some(&new), "{notices:#?}");
    // The old master names its successor itself, for a manager that takes
    // notices from the main process only.
    assert!(
        notices
            .iter()
            .any(|m| !m.is_ready() && m.main_pid() == Some(new)),
        "{notices:#?}"
    );
}

#[tokio::test]
async fn after_a_binary_upgrade_the_new_master_pings_the_watchdog() {
    let app = echo("app").await;
    let mut corral = Corral::start_in_env(&cluster_config(&[app.addr], ""), &WATCHDOG).await;
    let old = corral.pid();
    let from = |pid: u32| move |m: &Notice| m.is_watchdog() && m.sender() == pid;
    corral
        .notices
        .wait_for("WATCHDOG=1 from the first master", 1, from(old))
        .await;
    corral.signal(Signal::SIGUSR2);
    let new = corral.wait_successor_ready().await.main_pid().unwrap();
    assert_eq!(corral.wait_exit().await, Some(0));
    corral
        .notices
        .wait_for("WATCHDOG=1 from the new master", 3, from(new))
        .await;

    // It inherited the interval, but not WATCHDOG_PID, which named the
    // old master.
    let env = environment(u64::from(new));
    assert!(env.iter().any(|v| v == "WATCHDOG_USEC=200000"), "{env:?}");
    assert!(
        !env.iter().any(|v| v.starts_with("WATCHDOG_PID=")),
        "{env:?}"
    );
    let notices = corral.notices.all();
    let sent_by = |pid: u32| -> Vec<String> {
        let theirs: Vec<Notice> = notices
            .iter()
            .filter(|m| m.sender() == pid)
            .cloned()
            .collect();
        kinds(&theirs)
    };
    // The old master pinged until it named its successor, and with that,
    // so that the new one's next ping is due within the interval even if
    // its first came before the manager took it for the main process; and
    // no more.
    let by_old = sent_by(old);
    let handover = by_old.iter().position(|k| k == "MAINPID,WATCHDOG,STATUS");
    assert_eq!(handover, Some(by_old.len() - 1), "{notices:#?}");
    assert!(
        by_old[..by_old.len() - 1]
            .iter()
            .all(|k| k == "READY 1" || k == "WATCHDOG"),
        "{notices:#?}"
    );
    // The new one said nothing before it served: a manager that takes
    // notices from the main process only would have refused its pings.
    let by_new = sent_by(new);
    assert_eq!(
        by_new.first().map(String::as_str),
        Some("READY 1"),
        "{notices:#?}"
    );
    assert!(by_new[1..].iter().all(|k| k == "WATCHDOG"), "{notices:#?}");
    // Nobody else spoke.
    assert!(
        notices
            .iter()
            .all(|m| m.sender() == old || m.sender() == new),
        "{notices:#?}"
    );
}

#[tokio::test]
async fn an_abstract_notify_socket_is_notified_too() {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, simple_config(&[app.addr], "")).unwrap();
    let name = format!("corral-test-{}-abstract", std::process::id());
    let notices = Notices::bind_abstract(&name);
    assert_eq!(notices.address(), format!("@{name}").as_str());
    let exe = std::path::Path::new(BIN);
    let corral = Corral::start_notifying(exe, dir, config, notices).await;
    assert_eq!(get(corral.addr("public"), "/", &[]).await.backend(), "app");
}
