//! Accepting connections on a listening socket without spinning: the one
//! accept loop step that the workers, the admin endpoint and the echo
//! server share.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener` (`name` in logs), or `None` once
/// `stop` is cancelled. A failure that concerns only the connection being
/// accepted is skipped; any other (out of file descriptors or memory) is
/// logged and waited out, doubling the wait, so that descriptors can be
/// released instead of the loop spinning.
pub async fn next(
    listener: &TcpListener,
    name: &str,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some(connection),
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                tracing::warn!(listener = name, error = %e, ?backoff, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
