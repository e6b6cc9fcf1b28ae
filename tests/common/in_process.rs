//! The proxy served in-process, so that tests can run it on tokio's paused
//! clock.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The proxy served in-process (so tests can run it on tokio's paused clock).
pub struct InProcess {
    pub addr: SocketAddr,
    pub runtime: corral::snapshot::SharedSnapshot,
    stop: CancellationToken,
    _health: corral::master::health::HealthChecker,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn in_process(config: &str) -> InProcess {
    let config =
        corral::config::from_str(Path::new("test.toml"), config).unwrap_or_else(|e| panic!("{e}"));
    let mut listeners = Vec::new();
    let mut addr = None;
    for l in &config.listeners {
        let socket = corral::master::sockets::bind(l.addr, l.backlog).unwrap();
        let socket = TcpListener::from_std(socket).unwrap();
        addr.get_or_insert(socket.local_addr().unwrap());
        listeners.push(corral::worker::Listener {
            name: l.name.clone(),
            socket,
        });
    }
    let recorder = corral::metrics::Recorder::private().unwrap();
    let snapshot = corral::snapshot::Snapshot::build(config, 1, None, &recorder, None).unwrap();
    let health =
        corral::master::health::HealthChecker::start(&snapshot.upstreams, Arc::new(|_, _, _| {}));
    let runtime = Arc::new(arc_swap::ArcSwap::from_pointee(snapshot));
    let stop = CancellationToken::new();
    tokio::spawn(corral::worker::serve(
        listeners,
        runtime.clone(),
        stop.clone(),
        Duration::from_secs(1),
    ));
    InProcess {
        addr: addr.unwrap(),
        runtime,
        stop,
        _health: health,
    }
}
