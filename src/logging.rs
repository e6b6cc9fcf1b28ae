//! How every corral process logs: to stderr, as text or as JSON lines.
//!
//! The master picks the format (`--log-format`, else `CORRAL_LOG_FORMAT`)
//! and passes it on in `CORRAL_LOG_FORMAT` to the processes it starts, its
//! workers and a binary upgrade's new master, so that one corral writes
//! one format. The level filter is `CORRAL_LOG`.

use std::sync::OnceLock;

/// The variable that carries the format to processes a master starts.
pub const ENV_LOG_FORMAT: &str = "CORRAL_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`, and the spans (`master{pid}`, `worker{slot}`).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    /// `text` or `json`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// What `CORRAL_LOG_FORMAT` says; text when unset or unknown.
    pub fn from_env() -> Self {
        std::env::var(ENV_LOG_FORMAT)
            .ok()
            .and_then(|v| Self::parse(&v))
            .unwrap_or_default()
    }
}

static CHOSEN: OnceLock<LogFormat> = OnceLock::new();

/// The format this process logs in, to hand on to the processes it starts.
pub fn format() -> LogFormat {
    CHOSEN.get().copied().unwrap_or_default()
}

/// Installs the process's subscriber, once.
pub fn init(format: LogFormat) {
    // The protocol libraries warn about what clients send (h2 of each
    // unsolicited PING ack): at the edge that is the client's text, and
    // a client could fill the log with it. corral logs what it decides.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=error,hyper=error"));
    let _ = CHOSEN.set(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
