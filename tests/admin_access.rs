//! Who may use the admin endpoint: off loopback only a bearer-token holder
//! (corral refuses to start otherwise), with a token configured every
//! client must present it, and actions take POST alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use http::{Method, StatusCode};

const TOKEN: &str = "s3cret-token_0123456789";

/// A corral whose admin endpoint on loopback reads its token from a file;
/// the token file's path, and the upstream, which lives as long as it does.
async fn guarded(token: &str) -> (Corral, std::path::PathBuf, Upstream) {
    let app = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = cluster_config(&[app.addr], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[listeners]]",
        "listen = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n[[listeners]]",
    );
    let config_path = dir.path().join("corral.toml");
    std::fs::write(&config_path, config).unwrap();
    (Corral::start_at(dir, config_path).await, token_file, app)
}

#[tokio::test]
async fn an_admin_endpoint_off_loopback_without_a_token_is_refused_at_start() {
    let config = simple_config(&["127.0.0.1:9".parse().unwrap()], "").replace(
        "[[listeners]]",
        "[admin]\nlisten = \"0.0.0.0:0\"\n\n[[listeners]]",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, &config).unwrap();
    let out = output_patiently(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("CORRAL_ADMIN_TOKEN"),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.listen: 0.0.0.0:0 is not a loopback address")
            && stderr.contains("set admin.token_file or CORRAL_ADMIN_TOKEN"),
        "{stderr}"
    );
    // `check` says the same, and a token from the environment satisfies it
    // (checked, not run: a test binds loopback alone).
    let checked = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config"]).arg(&path);
        match token {
            Some(t) => command.env("CORRAL_ADMIN_TOKEN", t),
            None => command.env_remove("CORRAL_ADMIN_TOKEN"),
        };
        output_patiently(&mut command)
    };
    assert!(!checked(None).status.success());
    assert!(checked(Some(TOKEN)).status.success());
    let spaced = checked(Some("two words"));
    assert!(!spaced.status.success());
    assert!(
        String::from_utf8_lossy(&spaced.stderr).contains("CORRAL_ADMIN_TOKEN: the token must be"),
        "{spaced:?}"
    );
}

#[tokio::test]
async fn a_token_file_that_cannot_be_read_is_a_config_error_at_its_key() {
    let config = simple_config(&["127.0.0.1:9".parse().unwrap()], "").replace(
        "[[listeners]]",
        "[admin]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"missing.token\"\n\n[[listeners]]",
    );
    let (ok, text, _) = check(&config);
    assert!(!ok);
    assert!(text.contains("admin.token_file: cannot read"), "{text}");
    assert!(!text.contains("is not a loopback address"), "{text}");
}

#[tokio::test]
async fn with_a_token_every_request_must_present_it() {
    let (corral, _, _app) = guarded(TOKEN).await;
    let admin = corral.admin.unwrap();
    for (method, path) in [
        (Method::GET, "/status"),
        (Method::GET, "/metrics"),
        (Method::GET, "/config"),
        (Method::GET, "/healthz"),
        (Method::POST, "/reload"),
    ] {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let (status, body) = admin_call_with(admin, method.clone(), path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}: {body}"
            );
            assert_eq!(body, "401 Unauthorized: a valid bearer token is required\n");
        }
    }
    let (status, body) = admin_call_with(admin, Method::GET, "/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The scheme's name in any case (RFC 9110 §11.1).
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nAuthorization: bEARER {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    patiently(
        "the answer",
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let (status, body) = admin_call_with(admin, Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn corral_reload_sends_the_token_from_the_environment() {
    let (corral, _, _app) = guarded(TOKEN).await;
    let admin = corral.admin.unwrap().to_string();
    let reload = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["reload", "--admin", &admin]);
        match token {
            Some(t) => command.env("CORRAL_ADMIN_TOKEN", t),
            None => command.env_remove("CORRAL_ADMIN_TOKEN"),
        };
        output_patiently(&mut command)
    };
    let refused = reload(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    assert!(reload(Some(TOKEN)).status.success());
}

#[tokio::test]
async fn a_reload_rotates_the_token() {
    let (corral, token_file, _app) = guarded(TOKEN).await;
    let admin = corral.admin.unwrap();
    let next = "next-token-9876543210";
    std::fs::write(&token_file, next).unwrap();
    let (status, body) = admin_call_with(admin, Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = admin_call_with(admin, Method::GET, "/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin_call_with(admin, Method::GET, "/status", Some(next)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn actions_take_post_alone() {
    let app = echo("app").await;
    let corral = Corral::start(&cluster_config(&[app.addr], "")).await;
    let admin = corral.admin.unwrap();
    for method in [Method::GET, Method::HEAD, Method::PUT] {
        let (status, _) = admin_call(admin, method.clone(), "/reload").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    // None of them reloaded: still the first generation, no reload recorded.
    let status = corral.status().await;
    assert_eq!(status["generation"], 1, "{status}");
    let (status, _) = admin_call(admin, Method::POST, "/status").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
