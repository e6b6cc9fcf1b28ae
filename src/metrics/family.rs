//! The metric families workers count, their labels and buckets, and how a
//! series' label values are stored.

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Where a histogram's count and sum sit among its series' values: after
/// its buckets, one per bound plus `+Inf`.
pub const HISTOGRAM_COUNT: usize = LATENCY_BUCKETS.len() + 1;
pub const HISTOGRAM_SUM: usize = HISTOGRAM_COUNT + 1;

/// The label value for requests that matched no route (and so no upstream);
/// config names cannot contain parentheses, so it never collides.
pub const NONE: &str = "(none)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family counted by workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Requests,
    RequestDuration,
    RequestBytes,
    ResponseBytes,
    UpstreamErrors,
    ConnectionsActive,
    Connections,
    UpstreamInFlight,
    AcceptPauses,
    ConnectionsShed,
    RequestHeadsBytes,
    UpstreamRetries,
    RetryBudgetExhausted,
    UpstreamQueued,
    UpstreamEjections,
    TlsHandshakes,
}

impl Family {
    pub const ALL: [Family; 16] = [
        Family::Requests,
        Family::RequestDuration,
        Family::RequestBytes,
        Family::ResponseBytes,
        Family::UpstreamErrors,
        Family::ConnectionsActive,
        Family::Connections,
        Family::UpstreamInFlight,
        Family::AcceptPauses,
        Family::ConnectionsShed,
        Family::RequestHeadsBytes,
        Family::UpstreamRetries,
        Family::RetryBudgetExhausted,
        Family::UpstreamQueued,
        Family::UpstreamEjections,
        Family::TlsHandshakes,
    ];

    pub fn id(self) -> u64 {
        self as u64 + 1
    }

    pub fn from_id(id: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Requests => "corral_requests_total",
            Self::RequestDuration => "corral_request_duration_seconds",
            Self::RequestBytes => "corral_request_bytes_total",
            Self::ResponseBytes => "corral_response_bytes_total",
            Self::UpstreamErrors => "corral_upstream_errors_total",
            Self::ConnectionsActive => "corral_connections_active",
            Self::Connections => "corral_connections_total",
            Self::UpstreamInFlight => "corral_upstream_in_flight",
            Self::AcceptPauses => "corral_accept_pauses_total",
            Self::ConnectionsShed => "corral_connections_shed_total",
            Self::RequestHeadsBytes => "corral_request_heads_bytes",
            Self::UpstreamRetries => "corral_upstream_retries_total",
            Self::RetryBudgetExhausted => "corral_upstream_retry_budget_exhausted_total",
            Self::UpstreamQueued => "corral_upstream_queued_total",
            Self::UpstreamEjections => "corral_upstream_ejections_total",
            Self::TlsHandshakes => "corral_tls_handshakes_total",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Self::Requests => "Requests answered, by route, upstream and status code.",
            Self::RequestDuration => "Time from a request's arrival to the end of its response.",
            Self::RequestBytes => "Request body bytes received from clients.",
            Self::ResponseBytes => "Response body bytes sent to clients.",
            Self::UpstreamErrors => {
                "Failed upstream exchanges, by kind: connect, timeout, tls, reset, protocol."
            }
            Self::ConnectionsActive => "Client connections open now, per listener and worker.",
            Self::Connections => "Client connections accepted, per listener.",
            Self::UpstreamInFlight => {
                "Requests being served by each upstream server now, per worker."
            }
            Self::AcceptPauses => {
                "Times a worker stopped accepting on a listener because it held max_connections."
            }
            Self::ConnectionsShed => {
                "Client connections answered 503 and closed mid-head to keep the request heads in flight within a worker's memory budget."
            }
            Self::RequestHeadsBytes => {
                "Memory charged to the request heads being received now, per worker (max_header_bytes plus 16 KiB each)."
            }
            Self::UpstreamRetries => {
                "Requests sent again to another server, by reason: connect, status, reset."
            }
            Self::RetryBudgetExhausted => {
                "Retries not made because the upstream's retry budget was spent."
            }
            Self::UpstreamQueued => {
                "Requests that waited for a server below max_in_flight, by outcome: served, timeout."
            }
            Self::TlsHandshakes => {
                "TLS handshakes on listeners, by result (success, failure, timeout), protocol version and whether the session was resumed."
            }
            Self::UpstreamEjections => {
                "Servers a worker took out of its picks after failures in a row, by the failure that completed the streak."
            }
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::RequestDuration => Kind::Histogram,
            Self::ConnectionsActive | Self::UpstreamInFlight | Self::RequestHeadsBytes => {
                Kind::Gauge
            }
            _ => Kind::Counter,
        }
    }

    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Self::Requests => &["route", "upstream", "code"],
            Self::RequestDuration | Self::RequestBytes | Self::ResponseBytes => {
                &["route", "upstream"]
            }
            Self::UpstreamErrors => &["upstream", "server", "kind"],
            Self::ConnectionsActive => &["listener", "worker"],
            Self::Connections | Self::AcceptPauses | Self::ConnectionsShed => &["listener"],
            Self::UpstreamInFlight => &["upstream", "server", "worker"],
            Self::RequestHeadsBytes => &["worker"],
            Self::UpstreamRetries => &["upstream", "reason"],
            Self::RetryBudgetExhausted => &["upstream"],
            Self::UpstreamQueued => &["upstream", "outcome"],
            Self::UpstreamEjections => &["upstream", "server", "reason"],
            Self::TlsHandshakes => &["listener", "result", "version", "resumed"],
        }
    }
}

/// Label values joined for storage; config names never contain this byte.
const SEPARATOR: char = '\u{1f}';

pub fn join_labels(values: &[&str]) -> String {
    values.join(&SEPARATOR.to_string())
}

pub fn split_labels(joined: &str) -> Vec<&str> {
    joined.split(SEPARATOR).collect()
}
