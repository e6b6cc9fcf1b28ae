//! The admin endpoint from a test: one call, and what a `/status`
//! document says of the workers.

use std::net::SocketAddr;

use http::StatusCode;

use super::patience::patiently;

pub async fn admin_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> (StatusCode, String) {
    admin_call_with(addr, method, path, None).await
}

/// [`admin_call`] presenting `token` as a bearer token.
pub async fn admin_call_with(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    patiently(
        &format!("{method} {path} on the admin endpoint"),
        corral::admin::client::call(addr, method.clone(), path, token),
    )
    .await
    .unwrap()
}

/// Worker pids by slot in a `/status` document; every slot must have one.
pub fn pids_of(status: &serde_json::Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("no worker: {w}"))
        })
        .collect()
}

/// Whether a `/status` document shows a reload to generation `n` that
/// succeeded, every worker slot serving it (or a later one).
pub fn reloaded_to(status: &serde_json::Value, n: u64) -> bool {
    let workers = status["workers"].as_array().unwrap();
    status["last_reload"]["generation"] == n
        && status["last_reload"]["result"] == "success"
        && workers
            .iter()
            .all(|w| w["state"] == "ready" && w["generation"].as_u64() >= Some(n))
}

/// Whether every worker slot in a `/status` document is serving.
pub fn all_ready(status: &serde_json::Value) -> bool {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "ready")
}
