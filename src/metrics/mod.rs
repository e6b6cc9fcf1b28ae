//! Metrics: what is counted, where it lives, and how the cluster's totals
//! reach Prometheus.
//!
//! Workers count into shared memory the master owns ([`shm`]) through
//! handles resolved once per series ([`recorder`]); the master reads every
//! worker's region at scrape time, keeps the totals of workers that are gone,
//! adds its own metrics, and renders one text page through the `prometheus`
//! crate with an explicit registry ([`cluster`]). Labels come only from
//! config names (route, upstream, server, listener), worker slots, status
//! codes and fixed kinds, never from request data.

pub mod carry;
pub mod cluster;
mod family;
pub mod recorder;
pub mod shm;

pub use family::{
    Family, HISTOGRAM_COUNT, HISTOGRAM_SUM, Kind, LATENCY_BUCKETS, NONE, join_labels, split_labels,
};
pub use recorder::{Counter, Gauge, Histogram, Recorder, RouteSeries};
