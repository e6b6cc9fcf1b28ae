//! Shared test fixtures: the real `corral` binary on a config written to a
//! temp dir, in-process proxies for paused-clock tests, real upstreams on
//! 127.0.0.1:0, and small HTTP clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// How long a test waits for something that should take milliseconds; only
/// a guard against hanging forever, never a synchronisation.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `future`'s output, or `None` once [`PATIENCE`] of real time has passed.
///
/// Real time, not tokio's: on a paused clock (the in-process tests) a tokio
/// timer would fire as soon as everything waits, or cut short a wait that
/// the test means to last longer than `PATIENCE` of virtual time; and a
/// pending real-time alarm holds back no auto-advance.
pub async fn within_patience<F: Future>(future: F) -> Option<F::Output> {
    let alarm = real_time_alarm(PATIENCE);
    tokio::select! {
        biased;
        out = future => Some(out),
        _ = alarm => None,
    }
}

/// `future`'s output; panics, naming `what`, if it takes longer than
/// [`PATIENCE`] of real time (so a hung corral fails the test instead of
/// hanging the run).
pub async fn patiently<F: Future>(what: &str, future: F) -> F::Output {
    within_patience(future)
        .await
        .unwrap_or_else(|| panic!("{what}: nothing after {PATIENCE:?}"))
}

/// An alarm that rings after `after` of real time.
struct Alarm {
    at: std::time::Instant,
    ring: tokio::sync::oneshot::Sender<()>,
}

/// Completes after `after` of real time. One thread per test binary rings
/// every alarm, in order: they are all set `PATIENCE` ahead, so the queue is
/// sorted by construction.
fn real_time_alarm(after: Duration) -> tokio::sync::oneshot::Receiver<()> {
    static CLOCK: OnceLock<Mutex<std::sync::mpsc::Sender<Alarm>>> = OnceLock::new();
    let clock = CLOCK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Alarm>();
        std::thread::spawn(move || {
            let mut queue: VecDeque<Alarm> = VecDeque::new();
            loop {
                let now = std::time::Instant::now();
                while queue.front().is_some_and(|a| a.at <= now) {
                    let _ = queue.pop_front().unwrap().ring.send(());
                }
                // Load's clients set an alarm per request and drop most of
                // them at once; forget those so the queue stays small.
                if queue.len() > 4096 {
                    queue.retain(|a| !a.ring.is_closed());
                }
                let next = match queue.front() {
                    Some(a) => rx.recv_timeout(a.at.saturating_duration_since(now)),
                    None => rx
                        .recv()
                        .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(alarm) => queue.push_back(alarm),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        Mutex::new(tx)
    });
    let (ring, rung) = tokio::sync::oneshot::channel();
    let alarm = Alarm {
        at: std::time::Instant::now() + after,
        ring,
    };
    clock.lock().unwrap().send(alarm).unwrap();
    rung
}

/// One datagram corral sent to its `NOTIFY_SOCKET` (sd_notify(3)): its
/// `KEY=VALUE` lines, in order.
#[derive(Debug, Clone)]
pub struct Notice(Vec<(String, String)>);

impl Notice {
    fn parse(datagram: &[u8]) -> Self {
        let text = String::from_utf8_lossy(datagram);
        let fields = text
            .lines()
            .map(|l| {
                let (key, value) = l.split_once('=').unwrap_or((l, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect();
        Self(fields)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// `READY=1`: every worker slot serves (at startup, or as a reload ends).
    pub fn is_ready(&self) -> bool {
        self.get("READY") == Some("1")
    }

    pub fn is_reloading(&self) -> bool {
        self.get("RELOADING") == Some("1")
    }

    pub fn is_stopping(&self) -> bool {
        self.get("STOPPING") == Some("1")
    }

    pub fn main_pid(&self) -> Option<u32> {
        self.get("MAINPID")?.parse().ok()
    }

    pub fn generation(&self) -> Option<u64> {
        self.get("X_CORRAL_GENERATION")?.parse().ok()
    }

    /// `X_CORRAL_LISTENERS`: each listener's bound address by name.
    pub fn listeners(&self) -> HashMap<String, SocketAddr> {
        let value = self
            .get("X_CORRAL_LISTENERS")
            .unwrap_or_else(|| panic!("no X_CORRAL_LISTENERS in {self:?}"));
        value
            .split_whitespace()
            .map(|pair| {
                let (name, addr) = pair.split_once('=').unwrap();
                (name.to_owned(), addr.parse().unwrap())
            })
            .collect()
    }

    /// `X_CORRAL_ADMIN`: the admin endpoint's address, if there is one.
    pub fn admin(&self) -> Option<SocketAddr> {
        Some(self.get("X_CORRAL_ADMIN")?.parse().unwrap())
    }
}

/// The service manager's end of sd_notify(3): a datagram socket that
/// corral is pointed at with `NOTIFY_SOCKET`, and every notice it has
/// received so far (from every corral process that inherited the variable).
pub struct Notices {
    /// `NOTIFY_SOCKET`'s value for it.
    address: std::ffi::OsString,
    received: watch::Receiver<Vec<Notice>>,
    /// Shut down when dropped, which ends the receiving thread.
    socket: std::os::unix::net::UnixDatagram,
}

impl Notices {
    /// A socket at `path` (in the test's temp dir).
    pub fn bind(path: &Path) -> Self {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        Self::receive(socket, path.as_os_str().to_owned())
    }

    /// A socket in the abstract namespace, `@name` in `NOTIFY_SOCKET`.
    pub fn bind_abstract(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        Self::receive(socket, format!("@{name}").into())
    }

    /// A thread reads each datagram as it comes: corral sends without
    /// waiting, so a queue left unread would lose notices.
    fn receive(socket: std::os::unix::net::UnixDatagram, address: std::ffi::OsString) -> Self {
        let reader = socket.try_clone().unwrap();
        let (notices, received) = watch::channel(Vec::new());
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            // 0 bytes: shut down (corral never sends an empty datagram).
            while let Ok(n @ 1..) = reader.recv(&mut buf) {
                let notice = Notice::parse(&buf[..n]);
                eprintln!("[notify] {notice:?}");
                notices.send_modify(|all| all.push(notice));
            }
        });
        Self {
            address,
            received,
            socket,
        }
    }

    /// The value to give corral as `NOTIFY_SOCKET`.
    pub fn address(&self) -> &std::ffi::OsStr {
        &self.address
    }

    /// Every notice received so far.
    pub fn all(&self) -> Vec<Notice> {
        self.received.borrow().clone()
    }

    /// Waits until `n` notices satisfy `matches` (seen before or after
    /// now) and returns them; `what` names them if they do not come.
    pub async fn wait_for(
        &self,
        what: &str,
        n: usize,
        matches: impl Fn(&Notice) -> bool,
    ) -> Vec<Notice> {
        let mut received = self.received.clone();
        let enough = |all: &Vec<Notice>| all.iter().filter(|m| matches(m)).count() >= n;
        match tokio::time::timeout(PATIENCE, received.wait_for(enough)).await {
            Ok(Ok(all)) => all.iter().filter(|m| matches(m)).cloned().collect(),
            _ => panic!(
                "fewer than {n} notices {what}; received: {:#?}",
                self.received.borrow()
            ),
        }
    }

    /// The first `READY=1` of generation `generation`.
    pub async fn wait_ready(&self, generation: u64) -> Notice {
        let what = format!("READY=1 of generation {generation}");
        let ready = |m: &Notice| m.is_ready() && m.generation() == Some(generation);
        self.wait_for(&what, 1, ready).await.remove(0)
    }

    /// The first `n` `READY=1` notices: startup is the first, and the end
    /// of each reload, applied or not, one more.
    pub async fn wait_readies(&self, n: usize) -> Vec<Notice> {
        self.wait_for("READY=1", n, Notice::is_ready).await
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }
}

/// The corral binary, running `corral run` on a config. Every wait is
/// async: tests serve their upstreams on their own runtime, which a blocking
/// wait would freeze.
///
/// Readiness comes from corral's notices (sd_notify(3), see [`Notices`]):
/// corral starts with `NOTIFY_SOCKET` set, and its `READY=1` says where it
/// listens. Waits on `/status` are woken by what corral writes to stderr:
/// corral updates its state (`/status`, sockets, files) before it logs the
/// change, so each new line is the moment to look again.
pub struct Corral {
    child: tokio::process::Child,
    pid: u32,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    /// Every stderr line of every corral process so far.
    log: watch::Receiver<Vec<String>>,
    /// What every corral process has told its service manager so far.
    pub notices: Notices,
    _dir: tempfile::TempDir,
}

impl Corral {
    /// Starts corral on `config` and waits until it reports ready.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("corral.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::start_at(dir, config_path).await
    }

    /// Starts corral on a config file the test laid out in `dir`.
    pub async fn start_at(dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        Self::start_exe(Path::new(BIN), dir, config_path).await
    }

    /// [`Corral::start_at`] with the binary at `exe` (a copy that a test
    /// may replace, as an upgrade does).
    pub async fn start_exe(exe: &Path, dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        let notices = Notices::bind(&dir.path().join("notify.sock"));
        Self::start_notifying(exe, dir, config_path, notices).await
    }

    /// [`Corral::start_exe`] with the service manager's socket of the
    /// test's choice.
    pub async fn start_notifying(
        exe: &Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        notices: Notices,
    ) -> Self {
        // Its own process group, so that dropping the fixture also ends
        // masters started by an upgrade and every worker.
        let mut child = tokio::process::Command::new(exe)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("CORRAL_LOG", "info,corral=debug")
            .env("NOTIFY_SOCKET", notices.address())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stderr = std::fs::File::from(child.stderr.take().unwrap().into_owned_fd().unwrap());
        let (lines, log) = watch::channel(Vec::new());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[corral] {line}");
                lines.send_modify(|lines| lines.push(line));
            }
        });
        let ready = tokio::select! {
            ready = notices.wait_ready(1) => ready,
            exited = child.wait() => panic!("corral exited before it was ready: {exited:?}"),
        };
        Self {
            child,
            pid,
            listeners: ready.listeners(),
            admin: ready.admin(),
            config_path,
            log,
            notices,
            _dir: dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The first `READY=1` of generation `generation` (see [`Notices`]).
    pub async fn wait_ready(&self, generation: u64) -> Notice {
        self.notices.wait_ready(generation).await
    }

    /// The first `n` `READY=1` notices: startup, then one as each reload ends.
    pub async fn wait_readies(&self, n: usize) -> Vec<Notice> {
        self.notices.wait_readies(n).await
    }

    /// The first notice that satisfies `matches`; `what` names it if it
    /// does not come.
    pub async fn wait_for_notice(&self, what: &str, matches: impl Fn(&Notice) -> bool) -> Notice {
        self.notices.wait_for(what, 1, matches).await.remove(0)
    }

    /// `READY=1` from a master other than the first: the new master of a
    /// binary upgrade serves.
    pub async fn wait_successor_ready(&self) -> Notice {
        let first = self.pid;
        let successor = |m: &Notice| m.is_ready() && m.main_pid().is_some_and(|p| p != first);
        self.wait_for_notice("READY=1 from a new master", successor)
            .await
    }

    /// Waits for a log line containing `needle` (seen before or after now).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(needle, 1).await.remove(0)
    }

    /// Waits for `n` log lines containing `needle` and returns them.
    pub async fn wait_for_logs(&self, needle: &str, n: usize) -> Vec<String> {
        let matching = |line: &&String| line.contains(needle);
        let mut log = self.log.clone();
        let enough = |lines: &Vec<String>| lines.iter().filter(matching).count() >= n;
        match tokio::time::timeout(PATIENCE, log.wait_for(enough)).await {
            Ok(Ok(lines)) => lines.iter().filter(matching).cloned().collect(),
            _ => panic!("fewer than {n} log lines with {needle:?}"),
        }
    }

    /// Replaces the config file's content (as an editor that writes in
    /// place would).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal).unwrap();
    }

    /// Waits for the process started (the first master) to exit and
    /// returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("corral did not exit");
        status.unwrap().code()
    }

    /// Peak resident memory so far (VmHWM) of the master and its workers
    /// together, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid.to_string())
            .chain(children.split_whitespace().map(str::to_owned))
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        // tokio reaps the first master in the background.
        let group = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `key=value` out of a corral log line (quotes trimmed).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    field(line, key)
}

/// When corral logged `line`: its leading timestamp (tracing's default
/// format, RFC 3339 in UTC with microseconds).
pub fn log_time(line: &str) -> std::time::SystemTime {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("no timestamp ({e}) in {line:?}"))
}

/// `key=value` out of a tracing log line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_owned(),
    )
}

/// Runs the corral binary with `args` to its end, asserts that it succeeded,
/// and returns its stdout.
pub fn cli_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = output_patiently(Command::new(BIN).args(args));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `corral check` on `config`; returns (success, stdout + stderr, path).
pub fn check(config: &str) -> (bool, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, config).unwrap();
    let out = output_patiently(Command::new(BIN).args(["check", "--config"]).arg(&path));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Keep the path printable after the temp dir is gone.
    (out.status.success(), text, path)
}

/// Runs `command` to its end with stdin closed, as `Command::output` does,
/// but kills it and panics after [`PATIENCE`].
pub fn output_patiently(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child)
}

/// Collects a spawned child's output (its pipes are the caller's choice);
/// kills it and panics if it runs longer than [`PATIENCE`].
pub fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (done_tx, done) = std::sync::mpsc::channel();
    // wait_with_output reads both pipes to their end; a thread does that
    // while this one watches the clock.
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Not reaped yet (its waiter is still blocked), so the pid is still ours.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("process {pid} still running after {PATIENCE:?}");
        }
    }
}

/// Keeps the address of [`refusing_addr`] refusing connections while it lives.
#[must_use = "the address refuses connections only while this lives"]
pub struct Refusing(socket2::Socket);

/// A loopback address that refuses every connection for as long as the
/// returned guard lives (bind it to a named variable, not `_`): a socket is
/// bound to it and never listens. The socket holds the port (without
/// `SO_REUSEADDR`, so nothing else can bind it), unlike a port bound and
/// dropped, which another test may take in the meantime.
pub fn refusing_addr() -> (Refusing, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (Refusing(socket), addr)
}

pub type TestBody = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A running test upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// corral's own echo server, in-process.
pub async fn echo(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(corral::echo::serve(listener, name.to_owned(), stop.clone()));
    Upstream { addr, stop }
}

/// An HTTP/1.1 + h2c upstream answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_with_peers(handler).await.0
}

/// The client addresses of the connections an upstream accepted: one per
/// connection corral opened to it.
pub type Peers = Arc<Mutex<std::collections::HashSet<SocketAddr>>>;

/// [`upstream`], noting where each of its connections came from.
pub async fn upstream_with_peers<F, Fut>(handler: F) -> (Upstream, Peers)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let peers = Peers::default();
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            seen.lock().unwrap().insert(peer);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (Upstream { addr, stop }, peers)
}

/// An upstream that holds its first request: the receiver completes when
/// that request arrives, and it is answered `done` once the sender fires.
/// Later requests are answered `done` at once.
pub async fn holding() -> (
    Upstream,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let hooks = Arc::new(Mutex::new(Some((arrived_tx, release_rx))));
    let up = upstream(move |_req| {
        let hooks = hooks.lock().unwrap().take();
        async move {
            if let Some((arrived, release)) = hooks {
                arrived.send(()).unwrap();
                let _ = release.await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    (up, arrived_rx, release_tx)
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo server's name, from `x-backend`.
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// A keep-alive HTTP/1.1 client connection. Every wait (connect, response
/// head, body) is bounded by [`PATIENCE`].
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    host: String,
    local: SocketAddr,
    /// When the client began to open the connection.
    opened_at: std::time::Instant,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        patiently(&format!("connecting to {addr}"), async {
            let opened_at = std::time::Instant::now();
            let stream = TcpStream::connect(addr).await.unwrap();
            let local = stream.local_addr().unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn.with_upgrades());
            Self {
                sender,
                host: addr.to_string(),
                local,
                opened_at,
            }
        })
        .await
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `request` and waits for the response head.
    pub async fn send(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        patiently("waiting for a response head", async {
            self.sender.ready().await?;
            self.sender.send_request(request).await
        })
        .await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request = request.header("host", self.host.clone());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self.send(request.body(empty()).unwrap()).await.unwrap();
        read(response).await
    }
}

/// Reads a response's body to its end (within [`PATIENCE`]).
pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = patiently("reading a response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get(path, headers).await
}

/// An HTTP/2 (prior knowledge) client connection.
/// (Its handshake is bounded by [`PATIENCE`]; bound the requests sent on it
/// with [`patiently`].)
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    patiently(&format!("an HTTP/2 handshake with {addr}"), async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    })
    .await
}

/// A config with one listener `public` on port 0 routing everything to one
/// upstream `app` with `servers`, plus `extra` TOML appended.
///
/// Its heartbeat timeout is generous, so that a worker starved of CPU on a
/// loaded machine is not killed as hung in the middle of an unrelated test;
/// a test of the heartbeat sets its own (replace [`GENEROUS_HEARTBEAT`]).
/// The `[runtime]` line of [`simple_config`] that sets the heartbeat timeout.
pub const GENEROUS_HEARTBEAT: &str = "heartbeat_timeout = \"10s\"";

pub fn simple_config(servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ addr = \"{s}\" }}"))
        .collect();
    format!(
        r#"
[runtime]
workers = 2
shutdown_timeout = "5s"
{GENEROUS_HEARTBEAT}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
upstream = "app"

[[upstreams]]
name = "app"
servers = [{}]
{extra}
"#,
        servers.join(", ")
    )
}

/// [`simple_config`] to `app`, with `settings` added to its listener.
pub fn listener_config(app: SocketAddr, settings: &str) -> String {
    simple_config(&[app], "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{settings}"),
    )
}

/// [`simple_config`] plus the admin endpoint on a free port.
pub fn cluster_config(servers: &[SocketAddr], extra: &str) -> String {
    simple_config(servers, extra).replace(
        "[[listeners]]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]",
    )
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

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
    let snapshot = corral::snapshot::Snapshot::build(config, 1, None, &recorder).unwrap();
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

impl Corral {
    /// `GET /status` from the admin endpoint.
    pub async fn status(&self) -> serde_json::Value {
        let (status, body) = admin_call(
            self.admin.expect("no admin endpoint"),
            http::Method::GET,
            "/status",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Worker pids by slot, from `/status` (every slot must have a worker).
    pub async fn worker_pids(&self) -> Vec<u64> {
        pids_of(&self.status().await)
    }

    /// Waits until `/status` satisfies `ready`, reading it again after each
    /// new log line (the master logs a change after `/status` shows it).
    pub async fn wait_status(
        &self,
        mut ready: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut log = self.log.clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            log.mark_unchanged();
            let status = self.status().await;
            if ready(&status) {
                return status;
            }
            let logged = tokio::time::timeout_at(deadline, log.changed()).await;
            assert!(
                matches!(logged, Ok(Ok(()))),
                "status never matched: {status:#}"
            );
        }
    }
}

pub async fn admin_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> (StatusCode, String) {
    patiently(
        &format!("{method} {path} on the admin endpoint"),
        corral::admin::client::call(addr, method.clone(), path),
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

/// Whether every worker slot in a `/status` document is serving.
pub fn all_ready(status: &serde_json::Value) -> bool {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "ready")
}

/// One request's outcome under load.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub at: std::time::Instant,
    pub ok: bool,
    pub fresh: bool,
    pub error: String,
    /// The client's end of the connection the request went on, and when
    /// the client began to open that connection (none if connecting failed).
    pub local: Option<SocketAddr>,
    pub opened_at: Option<std::time::Instant>,
}

/// Clients sending requests back to back: `keepalive` of them over reused
/// connections, `fresh` of them on a new connection per request.
pub struct Load {
    stop: CancellationToken,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    successes: watch::Sender<usize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, keepalive: usize, fresh: usize) -> Self {
        let stop = CancellationToken::new();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let successes = watch::Sender::new(0);
        let mut tasks = Vec::new();
        for i in 0..keepalive + fresh {
            let (stop, outcomes, successes) = (stop.clone(), outcomes.clone(), successes.clone());
            let fresh = i >= keepalive;
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<H1> = None;
                while !stop.is_cancelled() {
                    let mut used = None;
                    // A request that hangs is a failure like any other, not a
                    // client that stops sending.
                    let result = within_patience(async {
                        if fresh || conn.is_none() {
                            let opened_at = std::time::Instant::now();
                            let stream = TcpStream::connect(addr)
                                .await
                                .map_err(|e| format!("connect: {e}"))?;
                            let local = stream.local_addr().map_err(|e| format!("connect: {e}"))?;
                            let (sender, driver) =
                                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                    .await
                                    .map_err(|e| format!("handshake: {e}"))?;
                            tokio::spawn(driver);
                            conn = Some(H1 {
                                sender,
                                host: addr.to_string(),
                                local,
                                opened_at,
                            });
                        }
                        let c = conn.as_mut().unwrap();
                        used = Some((c.local, c.opened_at));
                        let request = Request::get("/load")
                            .header("host", "load.test")
                            .body(empty())
                            .unwrap();
                        c.sender
                            .ready()
                            .await
                            .map_err(|e| format!("request: {e}"))?;
                        let response = c
                            .sender
                            .send_request(request)
                            .await
                            .map_err(|e| format!("request: {e}"))?;
                        let status = response.status();
                        let keep = response
                            .headers()
                            .get("connection")
                            .is_none_or(|v| v != "close");
                        response
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| format!("body: {e}"))?;
                        if !keep {
                            conn = None;
                        }
                        if status == StatusCode::OK {
                            Ok(())
                        } else {
                            Err(format!("status {status}"))
                        }
                    })
                    .await
                    .unwrap_or_else(|| Err(format!("no answer after {PATIENCE:?}")));
                    if result.is_err() || fresh {
                        conn = None;
                    }
                    if result.is_ok() {
                        successes.send_modify(|n| *n += 1);
                    }
                    let outcome = Outcome {
                        at: std::time::Instant::now(),
                        ok: result.is_ok(),
                        fresh,
                        error: result.err().unwrap_or_default(),
                        local: used.map(|(local, _)| local),
                        opened_at: used.map(|(_, at)| at),
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            }));
        }
        Self {
            stop,
            outcomes,
            successes,
            tasks,
        }
    }

    /// Waits until `n` more requests have succeeded.
    pub async fn wait_successes(&self, n: usize) {
        let mut successes = self.successes.subscribe();
        let target = *successes.borrow_and_update() + n;
        let reached = tokio::time::timeout(PATIENCE, successes.wait_for(|&s| s >= target)).await;
        assert!(matches!(reached, Ok(Ok(_))), "load stalled");
    }

    /// Stops the clients and returns the requests that failed, after
    /// printing how many were sent `during` what the test did.
    pub async fn finish(self, during: &str) -> Vec<Outcome> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        let total = outcomes.len();
        let failures: Vec<Outcome> = outcomes.into_iter().filter(|o| !o.ok).collect();
        eprintln!("{total} requests {during}, {} failed", failures.len());
        failures
    }
}

/// Inodes of the TCP sockets listening on exactly `addr` (IPv4). The
/// address counts, not only the port: a port number in use on one loopback
/// address may be handed out again on another.
pub fn listening_inodes(addr: SocketAddr) -> std::collections::HashSet<u64> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("{addr} is not IPv4");
    };
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1] == wanted && f[3] == "0A")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Keeps `addr`'s port from being taken by anyone else while it lives, and
/// never accepts: a socket bound beside corral's (`SO_REUSEPORT`, as
/// theirs) that never listens. Once corral's sockets close, a connection to
/// the port is refused, not taken by another test's listener.
pub fn hold_port(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket
}

/// An upstream named `a` (in `x-backend`) whose `/healthz` fails while the
/// returned flag is set.
pub async fn sickly() -> (Upstream, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let failing = req.uri().path() == "/healthz" && flag.load(Ordering::SeqCst);
        async move {
            let status = if failing { 500 } else { 200 };
            Response::builder()
                .status(status)
                .header("x-backend", "a")
                .body(empty())
                .unwrap()
        }
    })
    .await;
    (up, sick)
}

impl Corral {
    /// The log lines so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        let lines = self.log.borrow();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// One sample of a `/metrics` page: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a page in Prometheus' text format.
pub fn parse_metrics(page: &str) -> Vec<Sample> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series, std::collections::BTreeMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap();
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// `GET /metrics` from the admin endpoint, parsed.
pub async fn scrape_metrics(corral: &Corral) -> Vec<Sample> {
    let (code, page) = admin_call(corral.admin.unwrap(), http::Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK, "{page}");
    parse_metrics(&page)
}

/// The lines of the file at `path` (none while it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` has `n` lines, looking again whenever its folder
/// changes (workers write their lines off the request path).
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    use notify::Watcher;
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |_| {
        let _ = changed_tx.send(());
    })
    .unwrap();
    watcher
        .watch(path.parent().unwrap(), notify::RecursiveMode::NonRecursive)
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        let event = tokio::time::timeout_at(deadline, changed.recv()).await;
        assert!(
            event.is_ok(),
            "{} of {n} lines in {}: {lines:?}",
            lines.len(),
            path.display()
        );
    }
}

/// Whether `holds` comes true within `rounds` intervals of virtual time,
/// asked once per interval: tests on the paused clock wait on an outcome
/// this way rather than for a fixed time it is expected to take.
pub async fn within_intervals<F: Future<Output = bool>>(
    rounds: u32,
    interval: Duration,
    mut holds: impl FnMut() -> F,
) -> bool {
    for _ in 0..rounds {
        if holds().await {
            return true;
        }
        tokio::time::sleep(interval).await;
    }
    holds().await
}
