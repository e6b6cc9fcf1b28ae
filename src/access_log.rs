//! Access logs: one line per request, as JSON or in the combined log format,
//! to stderr or a file.
//!
//! Off by default. The request path never waits for the log: a finished
//! request formats its line and hands it to a bounded queue; a writer thread
//! drains the queue through a buffer and flushes whenever the queue runs dry.
//! If the disk cannot keep up and the queue is full, lines are dropped and
//! counted (and the count is logged) rather than slowing requests. The file
//! is opened for appending and reopened on request (SIGUSR1 to the master),
//! for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use http::{Method, Version, header};
use serde_json::json;

use crate::plan::{AccessLogConfig, LogFormat, LogTarget};

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 64 * 1024;

enum Message {
    Line(String),
    Reopen,
}

/// A running access log; the writer thread ends when this is dropped.
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    queue: SyncSender<Message>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Line(_) => "Line",
            Self::Reopen => "Reopen",
        })
    }
}

impl AccessLog {
    pub fn start(config: &AccessLogConfig) -> io::Result<Arc<Self>> {
        let sink = Sink::open(&config.target)?;
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        let target = config.target.clone();
        std::thread::Builder::new()
            .name("corral-access-log".into())
            .spawn(move || write_loop(sink, target, lines))?;
        Ok(Arc::new(Self {
            config: config.clone(),
            queue,
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.queue.try_send(Message::Reopen);
    }

    fn push(&self, line: String) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "access log cannot keep up; dropping lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// What a request looks like to the log, taken when it arrives.
    pub fn entry<B>(self: &Arc<Self>, request: &http::Request<B>, client: IpAddr) -> Entry {
        let text = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Entry {
            log: self.clone(),
            at: SystemTime::now(),
            client,
            line: Some(RequestLine {
                method: request.method().clone(),
                uri: request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| request.uri().to_string(), |p| p.as_str().to_owned()),
                version: request.version(),
            }),
            host: request
                .uri()
                .host()
                .map(str::to_owned)
                .or_else(|| text(header::HOST)),
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
        }
    }

    /// Logs a request refused before it could be parsed (so with no
    /// request line), which took `elapsed` from its first byte.
    pub fn unparsed(self: &Arc<Self>, client: IpAddr, status: u16, bytes: u64, elapsed: Duration) {
        let entry = Entry {
            log: self.clone(),
            at: SystemTime::now() - elapsed,
            client,
            line: None,
            host: None,
            referer: None,
            user_agent: None,
        };
        entry.write(Outcome {
            status,
            bytes,
            elapsed,
            route: crate::metrics::NONE,
            upstream: crate::metrics::NONE,
            server: None,
        });
    }
}

/// One request's line, filled in as the request goes.
#[derive(Debug)]
pub struct Entry {
    log: Arc<AccessLog>,
    at: SystemTime,
    client: IpAddr,
    /// `None` for a request refused before it could be parsed.
    line: Option<RequestLine>,
    host: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
}

#[derive(Debug)]
struct RequestLine {
    method: Method,
    uri: String,
    version: Version,
}

/// How a request ended, for its log line.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub status: u16,
    pub bytes: u64,
    pub elapsed: Duration,
    pub route: &'a str,
    pub upstream: &'a str,
    pub server: Option<&'a str>,
}

impl Entry {
    /// Formats the line and queues it.
    pub fn write(self, outcome: Outcome<'_>) {
        let Outcome {
            status,
            bytes,
            elapsed,
            route,
            upstream,
            server,
        } = outcome;
        let line = match self.log.config.format {
            LogFormat::Json => json!({
                "time": humantime::format_rfc3339_millis(self.at).to_string(),
                "client": self.client.to_canonical().to_string(),
                "method": self.line.as_ref().map(|l| l.method.as_str()),
                "uri": self.line.as_ref().map(|l| &l.uri),
                "version": self.line.as_ref().map(|l| format!("{:?}", l.version)),
                "host": self.host,
                "status": status,
                "bytes": bytes,
                "duration_ms": millis(elapsed),
                "route": route,
                "upstream": upstream,
                "server": server,
                "referer": self.referer,
                "user_agent": self.user_agent,
            })
            .to_string(),
            LogFormat::Combined => format!(
                "{} - - [{}] \"{}\" {status} {bytes} \"{}\" \"{}\" {:.3} {route} {upstream} {}",
                self.client.to_canonical(),
                clf_time(self.at),
                self.line.as_ref().map_or_else(
                    || "-".to_owned(),
                    |l| format!("{} {} {:?}", l.method, l.uri, l.version)
                ),
                quoted(self.referer.as_deref()),
                quoted(self.user_agent.as_deref()),
                elapsed.as_secs_f64(),
                server.unwrap_or("-"),
            ),
        };
        self.log.push(line);
    }
}

/// Milliseconds to the microsecond: `0.414`, never `0.41375500000000004`.
/// Dividing whole microseconds once gives the double nearest to the
/// three-decimal value, which JSON then prints as written.
fn millis(elapsed: Duration) -> f64 {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    micros as f64 / 1000.0
}

/// `26/Nov/2026:14:00:00 +0000`, the combined log format's time.
fn clf_time(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 2026-11-26T14:00:00Z
    let iso = humantime::format_rfc3339_seconds(at).to_string();
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    match (iso.get(0..4), month, iso.get(8..10), iso.get(11..19)) {
        (Some(year), Some(month), Some(day), Some(time)) => {
            format!("{day}/{month}/{year}:{time} +0000")
        }
        _ => iso,
    }
}

/// A header value inside double quotes, with quotes and backslashes escaped.
fn quoted(value: Option<&str>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |v| v.replace('\\', "\\\\").replace('"', "\\\""),
    )
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    Stderr(BufWriter<io::Stderr>),
    File(BufWriter<File>),
}

impl Sink {
    fn open(target: &LogTarget) -> io::Result<Self> {
        Ok(match target {
            LogTarget::Stdout => Self::Stdout(BufWriter::new(io::stdout())),
            LogTarget::Stderr => Self::Stderr(BufWriter::new(io::stderr())),
            LogTarget::File(path) => Self::File(BufWriter::new(open(path)?)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Stdout(w) => w,
            Self::Stderr(w) => w,
            Self::File(w) => w,
        }
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(mut sink: Sink, target: LogTarget, lines: Receiver<Message>) {
    // Block for the first message, then take whatever else is queued before
    // flushing: one write per burst, not per line.
    while let Ok(first) = lines.recv() {
        for message in std::iter::once(first).chain(lines.try_iter()) {
            match message {
                Message::Line(line) => {
                    let w = sink.writer();
                    let _ = w
                        .write_all(line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"));
                }
                Message::Reopen => {
                    let _ = sink.writer().flush();
                    match Sink::open(&target) {
                        Ok(reopened) => {
                            sink = reopened;
                            tracing::info!(log = ?target, "access log reopened");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reopening the access log failed; keeping the old file")
                        }
                    }
                }
            }
        }
        if let Err(e) = sink.writer().flush() {
            tracing::warn!(error = %e, "writing the access log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_time_reads_like_apache() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_701_600);
        assert_eq!(clf_time(at), "26/Nov/2026:14:00:00 +0000");
    }

    #[test]
    fn json_durations_print_to_the_microsecond() {
        let elapsed = Duration::from_nanos(413_755);
        assert_eq!(
            json!({ "d": millis(elapsed) }).to_string(),
            r#"{"d":0.413}"#
        );
        let long = Duration::from_millis(1234) + Duration::from_micros(567);
        assert_eq!(
            json!({ "d": millis(long) }).to_string(),
            r#"{"d":1234.567}"#
        );
    }

    #[test]
    fn quoted_values_escape_quotes() {
        assert_eq!(quoted(Some("a \"b\"")), "a \\\"b\\\"");
        assert_eq!(quoted(None), "-");
    }
}
