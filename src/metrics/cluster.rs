//! The master side of metrics: one page for the whole cluster.
//!
//! Every worker counts into its own shared region; at scrape time the
//! master sums them all, plus the totals of workers that have exited (folded
//! in when they went, so counters never go backwards while the master
//! lives), plus its own metrics (reloads, generation, workers, restarts,
//! server health, certificate expiry), and renders them through one explicit `prometheus`
//! registry. Gauges of exited workers are dropped, not kept: their
//! connections are gone.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::family::{Family, HISTOGRAM_COUNT, HISTOGRAM_SUM, Kind, LATENCY_BUCKETS, split_labels};
use super::shm::{Region, SeriesKey, ShmError, VALUES};

type Values = [u64; VALUES];

/// The workers' regions, live and folded.
#[derive(Debug)]
pub struct Workers {
    live: Mutex<HashMap<u64, Region>>,
    /// Counters and histograms of workers that exited, by series.
    retired: Mutex<BTreeMap<SeriesKey, Values>>,
    next: AtomicU64,
    descs: Vec<Desc>,
}

impl Workers {
    fn new() -> Result<Self, prometheus::Error> {
        let descs = Family::ALL
            .iter()
            .map(|f| {
                let labels = f.labels().iter().map(|l| (*l).to_owned()).collect();
                Desc::new(
                    f.name().to_owned(),
                    f.help().to_owned(),
                    labels,
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            live: Mutex::default(),
            retired: Mutex::default(),
            next: AtomicU64::new(1),
            descs,
        })
    }

    /// A region for a worker about to start: its id, and the descriptor to
    /// send the worker.
    pub fn add(&self) -> Result<(u64, OwnedFd), ShmError> {
        let (region, fd) = Region::create()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, region);
        Ok((id, fd))
    }

    /// Folds an exited worker's counters into the retained totals.
    pub fn retire(&self, id: u64) {
        let Some(region) = lock(&self.live).remove(&id) else {
            return;
        };
        let mut retired = lock(&self.retired);
        for (key, values) in read(&region) {
            if Family::from_id(key.family).is_some_and(|f| f.kind() != Kind::Gauge) {
                add_into(&mut retired, key, &values);
            }
        }
    }

    /// Requests in flight per (upstream, server), over all live workers.
    pub fn in_flight(&self) -> HashMap<(String, String), i64> {
        let mut out = HashMap::new();
        for region in lock(&self.live).values() {
            for (key, values) in read(region) {
                if key.family == Family::UpstreamInFlight.id() {
                    if let [upstream, server, _worker] = split_labels(&key.labels)[..] {
                        *out.entry((upstream.to_owned(), server.to_owned()))
                            .or_insert(0) += values[0] as i64;
                    }
                }
            }
        }
        out
    }

    /// Requests answered across the cluster so far, and how many of them
    /// with a 5xx: what the reload guard judges generations by.
    pub fn answered(&self) -> Answered {
        let mut answered = Answered::default();
        for (key, values) in self.totals() {
            if Family::from_id(key.family) != Some(Family::Requests) {
                continue;
            }
            answered.requests += values[0];
            // Labels: route, upstream, code.
            if split_labels(&key.labels)
                .get(2)
                .is_some_and(|c| c.starts_with('5'))
            {
                answered.errors += values[0];
            }
        }
        answered
    }

    /// Every series summed over the cluster.
    fn totals(&self) -> BTreeMap<SeriesKey, Values> {
        let mut totals = lock(&self.retired).clone();
        for region in lock(&self.live).values() {
            for (key, values) in read(region) {
                add_into(&mut totals, key, &values);
            }
        }
        totals
    }
}

/// Requests answered, and those of them that were 5xx.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    pub requests: u64,
    pub errors: u64,
}

impl Answered {
    /// What was answered between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }

    /// The share of errors; 0 with no requests.
    pub fn error_ratio(self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.errors as f64 / self.requests as f64
    }
}

/// Adds one series' values into `totals` (gauges wrap, as they are stored).
fn add_into(totals: &mut BTreeMap<SeriesKey, Values>, key: SeriesKey, values: &Values) {
    let total = totals.entry(key).or_insert([0; VALUES]);
    for (t, v) in total.iter_mut().zip(values) {
        *t = t.wrapping_add(*v);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(region: &Region) -> Vec<(SeriesKey, Values)> {
    region
        .series()
        .into_iter()
        .map(|(key, slot)| {
            let mut values = [0; VALUES];
            for (v, cell) in values.iter_mut().zip(region.values(slot)) {
                *v = cell.load(Ordering::Relaxed);
            }
            (key, values)
        })
        .collect()
}

impl Collector for Workers {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.totals();
        Family::ALL
            .iter()
            .map(|&family| {
                let mut mf = MetricFamily::default();
                mf.set_name(family.name().to_owned());
                mf.set_help(family.help().to_owned());
                mf.set_field_type(match family.kind() {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Histogram => MetricType::HISTOGRAM,
                });
                let metrics = totals
                    .iter()
                    .filter(|(key, _)| key.family == family.id())
                    .map(|(key, values)| metric(family, &key.labels, values))
                    .collect();
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}

fn metric(family: Family, labels: &str, values: &Values) -> proto::Metric {
    let mut m = proto::Metric::default();
    let pairs = family
        .labels()
        .iter()
        .zip(split_labels(labels))
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value(value.to_owned());
            pair
        })
        .collect();
    m.set_label(pairs);
    match family.kind() {
        Kind::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(values[0] as f64);
            m.set_counter(c);
        }
        Kind::Gauge => {
            let mut g = proto::Gauge::default();
            g.set_value(values[0] as i64 as f64);
            m.set_gauge(g);
        }
        Kind::Histogram => {
            let mut h = proto::Histogram::default();
            let mut cumulative = 0;
            let buckets = LATENCY_BUCKETS
                .iter()
                .zip(values)
                .map(|(bound, count)| {
                    cumulative += count;
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            h.set_sample_count(values[HISTOGRAM_COUNT]);
            h.set_sample_sum(values[HISTOGRAM_SUM] as f64 / 1e9);
            m.set_histogram(h);
        }
    }
    m
}

/// All of the cluster's metrics and the registry that renders them.
#[derive(Debug)]
pub struct ClusterMetrics {
    registry: Registry,
    pub workers: Arc<Workers>,
    pub reloads: IntCounterVec,
    pub reload_duration: prometheus::Histogram,
    pub generation: IntGauge,
    pub ready_workers: IntGauge,
    pub slots: IntGauge,
    pub restarts: IntCounter,
    /// Generations the reload guard rolled back.
    pub rollbacks: IntCounter,
    pub healthy: IntGaugeVec,
    /// When each listener certificate expires, set at scrape time from the
    /// generation served.
    pub certificate_expiry: IntGaugeVec,
    /// Lookups of upstream server names, by name and result.
    pub dns_lookups: IntCounterVec,
}

impl ClusterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let workers = Arc::new(Workers::new()?);
        let reloads = IntCounterVec::new(
            Opts::new(
                "corral_config_reloads_total",
                "Config reloads, by result: success or failure.",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let reload_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "corral_config_reload_duration_seconds",
                "Time from reading the config file to every worker serving it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let generation = IntGauge::new(
            "corral_config_generation",
            "The config generation being served.",
        )?;
        let ready_workers = IntGauge::new("corral_workers", "Worker processes serving now.")?;
        let slots = IntGauge::new(
            "corral_worker_slots",
            "Worker processes configured (runtime.workers).",
        )?;
        let restarts = IntCounter::new(
            "corral_worker_restarts_total",
            "Worker processes replaced after they exited or hung.",
        )?;
        let rollbacks = IntCounter::new(
            "corral_config_rollbacks_total",
            "Generations the reload guard rolled back to the one before, for answering clearly worse.",
        )?;
        let healthy = IntGaugeVec::new(
            Opts::new(
                "corral_upstream_server_healthy",
                "1 when a server passes its health checks (or has none), else 0.",
            ),
            &["upstream", "server"],
        )?;
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "corral_tls_certificate_expiry_timestamp_seconds",
                "When a TLS listener's certificate expires (its notAfter), in Unix seconds; name is its first DNS name, else its subject CN.",
            ),
            &["listener", "name"],
        )?;
        let dns_lookups = IntCounterVec::new(
            Opts::new(
                "corral_dns_lookups_total",
                "Lookups of upstream server names (NAME:PORT), by result: success (addresses, or none), failure (the last answer is kept).",
            ),
            &["name", "result"],
        )?;
        registry.register(Box::new(WorkersCollector(workers.clone())))?;
        registry.register(Box::new(dns_lookups.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(reload_duration.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(ready_workers.clone()))?;
        registry.register(Box::new(slots.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        Ok(Self {
            registry,
            workers,
            reloads,
            reload_duration,
            generation,
            ready_workers,
            slots,
            restarts,
            rollbacks,
            healthy,
            certificate_expiry,
            dns_lookups,
        })
    }

    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers the shared `Workers` (the registry wants to own its collectors).
struct WorkersCollector(Arc<Workers>);

impl Collector for WorkersCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Recorder;

    #[test]
    fn totals_survive_a_worker_and_gauges_do_not() {
        let metrics = ClusterMetrics::new().unwrap();
        let (id, fd) = metrics.workers.add().unwrap();
        let recorder = Recorder::open(&fd, 0).unwrap();
        recorder
            .counter(Family::Requests, &["r", "u", "200"])
            .add(3);
        recorder
            .gauge(Family::ConnectionsActive, &["public", "0"])
            .inc();
        let page = metrics.render();
        assert!(
            page.contains("corral_requests_total{route=\"r\",upstream=\"u\",code=\"200\"} 3"),
            "{page}"
        );
        assert!(
            page.contains("corral_connections_active{listener=\"public\",worker=\"0\"} 1"),
            "{page}"
        );
        metrics.workers.retire(id);
        let (_, fd) = metrics.workers.add().unwrap();
        Recorder::open(&fd, 0)
            .unwrap()
            .counter(Family::Requests, &["r", "u", "200"])
            .add(1);
        let page = metrics.render();
        assert!(
            page.contains("corral_requests_total{route=\"r\",upstream=\"u\",code=\"200\"} 4"),
            "{page}"
        );
        assert!(!page.contains("corral_connections_active{"), "{page}");
    }
}
