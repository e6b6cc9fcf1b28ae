//! Active health checks as the master runs them: exact thresholds, the
//! first check deciding at once, the check timeout, one prober for the
//! whole cluster, and streaks that survive a reload.
//!
//! The upstream hands probes to the test, which answers them. The master
//! checks a server one probe at a time and records each result before it
//! sends the next, so when probe k+1 arrives `/status` shows the outcome of
//! probes 1..=k, and nothing changes it until the test answers. The test
//! holds a probe only while it reads `/status`, far less than the check
//! timeout of a second (which may not exceed the interval). Until the test
//! is ready to take over, the upstream answers probes itself, so that a
//! slow start cannot leave a probe waiting past its timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

/// An HTTP/1.1 upstream answering each request with the status code
/// `handler` gives for it and the address it came from. It serves until
/// the test ends.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = u16> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let answer = handler(peer, req);
                async move {
                    let code = answer.await;
                    Ok::<_, Infallible>(Response::builder().status(code).body(empty()).unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A probe that arrived; `answer` is there while the test is to answer it.
struct Probe {
    answer: Option<oneshot::Sender<u16>>,
}

impl Probe {
    fn answer(self, code: u16) {
        // A probe that timed out meanwhile has nobody to answer.
        let _ = self.answer.expect("probe answered already").send(code);
    }
}

/// The probes an upstream receives.
struct Probes {
    rx: mpsc::UnboundedReceiver<Probe>,
    /// Answers probes at once while set; the test answers them once unset.
    auto: Arc<Mutex<Option<u16>>>,
}

impl Probes {
    /// The next probe of any kind.
    async fn next_any(&mut self) -> Probe {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("no health probe came")
            .unwrap()
    }

    /// The next probe the test is to answer.
    async fn next(&mut self) -> Probe {
        loop {
            let probe = self.next_any().await;
            if probe.answer.is_some() {
                return probe;
            }
        }
    }

    /// From now on every probe waits for the test's answer. Waits for one
    /// probe answered by the upstream first, so that the first check (which
    /// decides at once) is over and the server is in the state `auto` gives.
    async fn take_over(&mut self) {
        assert!(self.next_any().await.answer.is_none());
        *self.auto.lock().unwrap() = None;
    }
}

/// An upstream whose `/healthz` answers `auto` until the test takes over;
/// other requests get 200.
async fn probed(auto: Option<u16>) -> (SocketAddr, Probes) {
    let (tx, rx) = mpsc::unbounded_channel();
    let auto = Arc::new(Mutex::new(auto));
    let answers = auto.clone();
    let addr = serve(move |_peer, req: Request<Incoming>| {
        let tx = tx.clone();
        let auto = *answers.lock().unwrap();
        async move {
            if req.uri().path() != "/healthz" {
                return 200;
            }
            if let Some(code) = auto {
                let _ = tx.send(Probe { answer: None });
                return code;
            }
            let (answer, answered) = oneshot::channel();
            let _ = tx.send(Probe {
                answer: Some(answer),
            });
            answered.await.unwrap_or(503)
        }
    })
    .await;
    (addr, Probes { rx, auto })
}

/// A cluster on `servers` whose upstream is checked with `check` (keys of
/// `[upstreams.health_check]`, besides its path).
fn config(servers: &[SocketAddr], check: &str) -> String {
    let text = cluster_config(
        servers,
        &format!("[upstreams.health_check]\npath = \"/healthz\"\n{check}\n"),
    );
    // A worker starved of CPU must not be killed as hung mid-test.
    if text.contains("heartbeat_timeout") {
        text
    } else {
        text.replace("[runtime]\n", "[runtime]\nheartbeat_timeout = \"10s\"\n")
    }
}

/// A second between checks, and as long to answer each.
const CHECK: &str = "interval = \"1s\"\ntimeout = \"1s\"";

/// Server `i`'s state in `/status`.
async fn state(corral: &Corral, i: usize) -> String {
    let status = corral.status().await;
    status["upstreams"][0]["servers"][i]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Takes over `probes` and answers them with each code of `script` in
/// turn, checking at the arrival of each next probe that the server is in
/// the state the script says the answers so far leave it in.
async fn run_script(corral: &Corral, probes: &mut Probes, script: &[(u16, &str)]) {
    probes.take_over().await;
    for (i, (code, _)) in script.iter().enumerate() {
        let probe = probes.next().await;
        if let Some((_, expected)) = i.checked_sub(1).map(|i| script[i]) {
            assert_eq!(
                state(corral, 0).await,
                expected,
                "after answers {:?}",
                &script[..i]
            );
        }
        probe.answer(*code);
    }
    let _last = probes.next().await;
    assert_eq!(
        state(corral, 0).await,
        script.last().unwrap().1,
        "after answers {script:?}"
    );
}

#[tokio::test]
async fn a_server_goes_down_at_the_third_failure_in_a_row_not_before() {
    let (up, mut probes) = probed(Some(200)).await;
    let corral = Corral::start(&config(
        &[up],
        &format!("{CHECK}\nunhealthy_threshold = 3\nhealthy_threshold = 2"),
    ))
    .await;
    let script = [
        (500, "healthy"),
        (500, "healthy"),
        // A pass breaks the run of failures.
        (200, "healthy"),
        (500, "healthy"),
        (500, "healthy"),
        (500, "unhealthy"),
    ];
    run_script(&corral, &mut probes, &script).await;
}

#[tokio::test]
async fn a_server_comes_back_at_the_second_pass_in_a_row_not_before() {
    // Failing from its first check on, so down from the start.
    let (up, mut probes) = probed(Some(500)).await;
    let corral = Corral::start(&config(
        &[up],
        &format!("{CHECK}\nunhealthy_threshold = 3\nhealthy_threshold = 2"),
    ))
    .await;
    let script = [
        (200, "unhealthy"),
        // A failure breaks the run of passes.
        (500, "unhealthy"),
        (200, "unhealthy"),
        (200, "healthy"),
    ];
    run_script(&corral, &mut probes, &script).await;
}

#[tokio::test]
async fn the_first_check_decides_at_once() {
    let (failing, mut failing_probes) = probed(None).await;
    let (passing, mut passing_probes) = probed(Some(200)).await;
    let corral = Corral::start(&config(
        &[failing, passing],
        &format!("{CHECK}\nunhealthy_threshold = 3\nhealthy_threshold = 2"),
    ))
    .await;
    // Should a slow start keep the test from answering in time, the probe
    // fails by timing out: a failure all the same, and short of three.
    failing_probes.next().await.answer(500);
    let _second = failing_probes.next().await;
    assert_eq!(state(&corral, 0).await, "unhealthy");
    passing_probes.next_any().await;
    assert_eq!(state(&corral, 1).await, "healthy");
}

#[tokio::test]
async fn a_check_slower_than_the_timeout_fails() {
    let (up, mut probes) = probed(Some(200)).await;
    let corral = Corral::start(&config(
        &[up],
        &format!("{CHECK}\nunhealthy_threshold = 1\nhealthy_threshold = 1"),
    ))
    .await;
    probes.take_over().await;
    let slow = probes.next().await;
    // Only the slow probe's timing out lets the master send the next one.
    let next = probes.next().await;
    assert_eq!(state(&corral, 0).await, "unhealthy");
    corral.wait_for_log("reason=no answer within 1s").await;
    // Answered now, after the timeout: too late to count. The next one,
    // answered at once, passes.
    slow.answer(200);
    next.answer(200);
    let _after = probes.next().await;
    assert_eq!(state(&corral, 0).await, "healthy");
}

/// The pid among `pids` holding the local end of the TCP connection from
/// `peer` to `server`, found through the socket's inode.
/// Which of `pids` holds the connection from `peer` to `server`: `Some`
/// of it or `None` of them, or `Err` when the connection closed before it
/// could be traced (a probe that timed out on a loaded machine).
fn owner(peer: SocketAddr, server: SocketAddr, pids: &[u32]) -> Result<Option<u32>, ()> {
    // A closed socket's row lingers with inode 0.
    let inode = || {
        tcp_sockets()
            .into_iter()
            .find(|s| s.local.port() == peer.port() && s.remote.port() == server.port())
            .map(|s| s.inode)
            .filter(|&inode| inode != 0)
    };
    let before = inode().ok_or(())?;
    let found = pids
        .iter()
        .copied()
        .find(|&pid| socket_inodes(u64::from(pid)).contains(&before));
    match found {
        None if inode().as_ref() != Some(&before) => Err(()),
        found => Ok(found),
    }
}

#[tokio::test]
async fn the_master_alone_probes_each_server_once_per_interval() {
    const INTERVAL: Duration = Duration::from_millis(500);
    const WINDOW: Duration = Duration::from_secs(5);
    // Each probe is traced to the process that sent it while its
    // connection is open, that is, before it is answered.
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let upstream_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (senders_tx, mut senders) = mpsc::unbounded_channel();
    let (trace_pids, trace_addr) = (pids.clone(), upstream_addr.clone());
    let up = serve(move |peer, _req| {
        let pids = trace_pids.lock().unwrap().clone();
        let server = *trace_addr.lock().unwrap();
        if let (false, Some(server)) = (pids.is_empty(), server) {
            let _ = senders_tx.send(owner(peer, server, &pids));
        }
        async { 200 }
    })
    .await;
    *upstream_addr.lock().unwrap() = Some(up);
    let corral = Corral::start(&config(&[up], "interval = \"500ms\"\ntimeout = \"500ms\"")).await;
    corral.wait_status(all_ready).await;
    let master = corral.pid();
    let workers = corral.worker_pids().await;
    assert_eq!(workers.len(), 2);
    *pids.lock().unwrap() = std::iter::once(master)
        .chain(workers.into_iter().map(|p| p as u32))
        .collect();

    // Counting probes takes a window of time. They come one per interval:
    // at most one more than the window holds (a loaded machine only delays
    // them), where a prober per worker, or a second one in the master,
    // would send twice as many.
    let mut seen = 0;
    let window = tokio::time::sleep(WINDOW);
    tokio::pin!(window);
    loop {
        let sender = tokio::select! {
            () = &mut window => break,
            sender = senders.recv() => sender.unwrap(),
        };
        if let Ok(sender) = sender {
            assert_eq!(
                sender,
                Some(master),
                "a probe from someone other than the master (pid {master})"
            );
        }
        seen += 1;
    }
    let most = WINDOW.as_millis() / INTERVAL.as_millis() + 2;
    assert!(
        (1..=most).contains(&seen),
        "{seen} probes in {WINDOW:?} at an interval of {INTERVAL:?}"
    );
}

#[tokio::test]
async fn a_failure_streak_survives_a_reload() {
    let (up, mut probes) = probed(Some(200)).await;
    let text = config(&[up], &format!("{CHECK}\nunhealthy_threshold = 3"));
    let corral = Corral::start(&text).await;
    probes.take_over().await;
    probes.next().await.answer(500);
    probes.next().await.answer(500);
    // The third failure is on its way while the reload happens. A checker
    // the reload restarted would drop it and start over, so that the
    // probe after it would find the server still healthy. (Should the
    // reload outlast the check timeout, the probe fails by timing out,
    // which is a failure all the same.)
    let third = probes.next().await;
    assert_eq!(state(&corral, 0).await, "healthy");
    corral.write_config(&text.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"6s\""));
    let (code, body) = admin_call(corral.admin.unwrap(), Method::POST, "/reload").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    corral
        .wait_status(|s| s["generation"] == 2 && all_ready(s))
        .await;
    third.answer(500);
    let _next = probes.next().await;
    assert_eq!(state(&corral, 0).await, "unhealthy");
}
