//! The worker side of metrics: handles that count into the shared region.
//!
//! A series is looked up (or created) once, when a config generation is
//! built or a new status code first appears on a route; after that counting
//! is a single atomic add on memory the master reads. When the region is
//! full, further new series count nowhere (and say so once in the log) rather
//! than fail requests.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::family::{Family, HISTOGRAM_COUNT, HISTOGRAM_SUM, LATENCY_BUCKETS, join_labels};
use super::shm::{Region, ShmError};

/// Where this process counts.
#[derive(Debug)]
pub struct Recorder {
    region: Region,
    /// The `worker` label of per-worker gauges.
    worker: String,
    /// Serialises allocation and finds existing series by (family, labels).
    index: Mutex<HashMap<(u64, String), usize>>,
    full: AtomicBool,
}

impl Recorder {
    /// Counts into the region the master created for worker slot `worker`.
    pub fn open(fd: &OwnedFd, worker: usize) -> Result<Arc<Self>, ShmError> {
        Ok(Self::new(Region::open(fd)?, worker.to_string()))
    }

    /// Counts into a region nobody else reads (a server without a master).
    pub fn private() -> Result<Arc<Self>, ShmError> {
        Ok(Self::new(Region::private()?, "0".to_owned()))
    }

    fn new(region: Region, worker: String) -> Arc<Self> {
        Arc::new(Self {
            region,
            worker,
            index: Mutex::new(HashMap::new()),
            full: AtomicBool::new(false),
        })
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    fn slot(&self, family: Family, labels: &[&str]) -> Option<usize> {
        debug_assert_eq!(labels.len(), family.labels().len());
        let key = (family.id(), join_labels(labels));
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&slot) = index.get(&key) {
            return Some(slot);
        }
        match self.region.allocate(key.0, &key.1) {
            Some(slot) => {
                index.insert(key, slot);
                Some(slot)
            }
            None => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::error!("the metrics region is full; new series are not counted");
                }
                None
            }
        }
    }

    pub fn counter(self: &Arc<Self>, family: Family, labels: &[&str]) -> Counter {
        Counter(Handle {
            recorder: self.clone(),
            slot: self.slot(family, labels),
        })
    }

    pub fn gauge(self: &Arc<Self>, family: Family, labels: &[&str]) -> Gauge {
        Gauge(Handle {
            recorder: self.clone(),
            slot: self.slot(family, labels),
        })
    }

    pub fn histogram(self: &Arc<Self>, family: Family, labels: &[&str]) -> Histogram {
        Histogram(Handle {
            recorder: self.clone(),
            slot: self.slot(family, labels),
        })
    }
}

#[derive(Debug, Clone)]
struct Handle {
    recorder: Arc<Recorder>,
    /// `None` when the region was full.
    slot: Option<usize>,
}

impl Handle {
    fn add(&self, value: usize, n: u64) {
        if let Some(slot) = self.slot {
            self.recorder.region.values(slot)[value].fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Counter(Handle);

impl Counter {
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.add(0, n);
        }
    }
}

/// A gauge, stored as a wrapping u64 (two's complement).
#[derive(Debug, Clone)]
pub struct Gauge(Handle);

impl Gauge {
    pub fn inc(&self) {
        self.0.add(0, 1);
    }

    pub fn dec(&self) {
        self.0.add(0, u64::MAX);
    }

    pub fn add(&self, n: u64) {
        self.0.add(0, n);
    }

    pub fn sub(&self, n: u64) {
        self.0.add(0, n.wrapping_neg());
    }
}

/// A histogram: non-cumulative bucket counts, then count, then the sum in
/// nanoseconds (exact, and addable atomically).
#[derive(Debug, Clone)]
pub struct Histogram(Handle);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.0.add(bucket, 1);
        self.0.add(HISTOGRAM_COUNT, 1);
        self.0.add(
            HISTOGRAM_SUM,
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }
}

/// Everything counted for a route (and its upstream), resolved once per
/// config generation.
#[derive(Debug)]
pub struct RouteSeries {
    recorder: Arc<Recorder>,
    route: String,
    upstream: String,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    /// Requests by status code; a route sees few distinct codes.
    codes: Mutex<Vec<(u16, Counter)>>,
}

impl RouteSeries {
    pub fn new(recorder: &Arc<Recorder>, route: &str, upstream: &str) -> Self {
        let labels = [route, upstream];
        Self {
            recorder: recorder.clone(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            duration: recorder.histogram(Family::RequestDuration, &labels),
            request_bytes: recorder.counter(Family::RequestBytes, &labels),
            response_bytes: recorder.counter(Family::ResponseBytes, &labels),
            codes: Mutex::new(Vec::new()),
        }
    }

    /// Counts a failed exchange with `server` of the route's upstream.
    pub fn count_upstream_error(&self, server: &str, kind: &str) {
        self.recorder
            .counter(Family::UpstreamErrors, &[&self.upstream, server, kind])
            .add(1);
    }

    /// Request body bytes received.
    pub fn add_request_bytes(&self, n: u64) {
        self.request_bytes.add(n);
    }

    /// One finished request.
    pub fn record(&self, code: u16, elapsed: Duration, response_bytes: u64) {
        self.duration.observe(elapsed);
        self.response_bytes.add(response_bytes);
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        match codes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.add(1),
            None => {
                let text = code.to_string();
                let counter = self
                    .recorder
                    .counter(Family::Requests, &[&self.route, &self.upstream, &text]);
                counter.add(1);
                codes.push((code, counter));
            }
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}
