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

use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::carry::Totals;
use super::family::{Family, HISTOGRAM_COUNT, HISTOGRAM_SUM, Kind, LATENCY_BUCKETS, split_labels};
use super::shm::{Region, SeriesKey, ShmError, VALUES};

type Values = [u64; VALUES];

/// The workers' regions, live and folded.
#[derive(Debug)]
pub struct Workers {
    /// Each live worker's region, with its descriptor to hand on in an
    /// upgrade.
    live: Mutex<HashMap<u64, (Region, OwnedFd)>>,
    /// Counters and histograms of workers that exited, by series.
    retired: Mutex<BTreeMap<SeriesKey, Values>>,
    /// The regions of the previous master's workers, handed over in an
    /// upgrade: read like live ones (counters and histograms only) until
    /// that master's final totals replace them.
    inherited: Mutex<Vec<Region>>,
    next: AtomicU64,
}

/// What an old master hands on of its workers' metrics: the totals of
/// those that exited and of any regions it inherited itself, and the
/// descriptors of its live workers' regions, which the successor reads
/// as they go on counting. Each region is in exactly one of the two.
#[derive(Debug)]
pub struct HandedWorkers {
    pub retired: Vec<MetricFamily>,
    pub regions: Vec<OwnedFd>,
}

impl Workers {
    fn new() -> Self {
        Self {
            live: Mutex::default(),
            retired: Mutex::default(),
            inherited: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    /// A region for a worker about to start: its id, and the descriptor to
    /// send the worker.
    pub fn add(&self) -> Result<(u64, OwnedFd), ShmError> {
        let (region, fd) = Region::create()?;
        let kept = fd.try_clone()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, (region, kept));
        Ok((id, fd))
    }

    /// Folds an exited worker's counters into the retained totals.
    pub fn retire(&self, id: u64) {
        // Both locks at once (always live first), so that a hand-over
        // finds each region either live or retired, never neither.
        let mut live = lock(&self.live);
        let Some((region, _fd)) = live.remove(&id) else {
            return;
        };
        let mut retired = lock(&self.retired);
        for (key, values) in read(&region) {
            if !is_gauge(&key) {
                add_into(&mut retired, key, &values);
            }
        }
    }

    /// Requests in flight per (upstream, server), over all live workers.
    pub fn in_flight(&self) -> HashMap<(String, String), i64> {
        let mut out = HashMap::new();
        for (region, _) in lock(&self.live).values() {
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
        let live = lock(&self.live);
        let mut totals = self.totals_without_live();
        for (region, _) in live.values() {
            for (key, values) in read(region) {
                add_into(&mut totals, key, &values);
            }
        }
        totals
    }

    /// The retired and inherited series; callers hold the live lock, so
    /// that no region moves from live to retired meanwhile.
    fn totals_without_live(&self) -> BTreeMap<SeriesKey, Values> {
        let mut totals = lock(&self.retired).clone();
        for region in lock(&self.inherited).iter() {
            for (key, values) in read(region) {
                if !is_gauge(&key) {
                    add_into(&mut totals, key, &values);
                }
            }
        }
        totals
    }

    /// For a successor: the totals without the live regions, and those
    /// regions' descriptors (at most `limit`; the values of any beyond
    /// it go into the totals, read now).
    pub fn hand_over(&self, limit: usize) -> HandedWorkers {
        let live = lock(&self.live);
        let mut regions = Vec::new();
        let mut totals = self.totals_without_live();
        for (region, fd) in live.values() {
            match fd.try_clone() {
                Ok(fd) if regions.len() < limit => regions.push(fd),
                _ => {
                    for (key, values) in read(region) {
                        if !is_gauge(&key) {
                            add_into(&mut totals, key, &values);
                        }
                    }
                }
            }
        }
        HandedWorkers {
            retired: families_of(&totals),
            regions,
        }
    }

    /// Reads the previous master's workers' regions from now on.
    fn inherit(&self, regions: Vec<OwnedFd>) {
        let mut inherited = lock(&self.inherited);
        for fd in regions {
            match Region::adopt(&fd) {
                Ok(region) => inherited.push(region),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a previous worker's metrics memory; its counts arrive when the previous master exits")
                }
            }
        }
    }

    /// Stops reading the previous master's regions (its totals now hold
    /// what they counted).
    fn forget_inherited(&self) {
        lock(&self.inherited).clear();
    }

    fn families(&self) -> Vec<MetricFamily> {
        families_of(&self.totals())
    }
}

fn is_gauge(key: &SeriesKey) -> bool {
    Family::from_id(key.family).is_none_or(|f| f.kind() == Kind::Gauge)
}

fn families_of(totals: &BTreeMap<SeriesKey, Values>) -> Vec<MetricFamily> {
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
    /// What the masters before this one counted (binary upgrades), added
    /// to every page.
    base: Mutex<Totals>,
}

impl ClusterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let workers = Arc::new(Workers::new());
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
        let build_info = IntGaugeVec::new(
            Opts::new(
                "corral_build_info",
                "Always 1; version is the running master's corral version.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
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
            base: Mutex::default(),
        })
    }

    /// Every family of the page: the master's own, the workers', and the
    /// base carried from earlier masters.
    fn families(&self) -> Vec<MetricFamily> {
        // The base is locked first and throughout, here and wherever it
        // changes, so that no page sees a new base and the regions it
        // replaces together.
        let base = lock(&self.base);
        let mut families = self.registry.gather();
        families.extend(self.workers.families());
        base.add_to(&mut families);
        // The text format has no empty families.
        families.retain(|mf| !mf.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }

    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.families(), &mut out) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Old master, handing over: its totals without its live workers'
    /// regions, and those regions' descriptors (at most `limit`).
    pub fn hand_over(&self, limit: usize) -> (Totals, Vec<OwnedFd>) {
        let base = lock(&self.base);
        let HandedWorkers { retired, regions } = self.workers.hand_over(limit);
        let mut families = self.registry.gather();
        families.extend(retired);
        base.add_to(&mut families);
        (Totals::of(&families), regions)
    }

    /// Old master, at its very end: everything it counted.
    pub fn final_totals(&self) -> Totals {
        Totals::of(&self.families())
    }

    /// New master: counts on from what the previous master handed over.
    pub fn inherit(&self, totals: Totals, regions: Vec<OwnedFd>) {
        let mut base = lock(&self.base);
        self.workers.inherit(regions);
        *base = totals;
    }

    /// New master: the previous master's final totals replace what it
    /// handed over (its regions are in them).
    pub fn inherit_final(&self, totals: Totals) {
        let mut base = lock(&self.base);
        self.workers.forget_inherited();
        *base = totals;
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

    #[test]
    fn a_successor_counts_on_from_the_handed_totals_and_regions_once() {
        let old = ClusterMetrics::new().unwrap();
        old.reloads.with_label_values(&["success"]).inc();
        let (gone, fd) = old.workers.add().unwrap();
        let series = &["r", "u", "200"];
        Recorder::open(&fd, 0)
            .unwrap()
            .counter(Family::Requests, series)
            .add(2);
        old.workers.retire(gone);
        let (_, fd) = old.workers.add().unwrap();
        let draining = Recorder::open(&fd, 0).unwrap();
        draining.counter(Family::Requests, series).add(3);
        let (totals, regions) = old.hand_over(8);
        assert_eq!(regions.len(), 1, "the live region, not the retired one");
        let new = ClusterMetrics::new().unwrap();
        new.inherit(totals, regions);
        let requests = "corral_requests_total{route=\"r\",upstream=\"u\",code=\"200\"}";
        let page = new.render();
        assert!(page.contains(&format!("{requests} 5")), "{page}");
        assert!(
            page.contains("corral_config_reloads_total{result=\"success\"} 1"),
            "{page}"
        );
        // The old worker goes on counting while it drains.
        draining.counter(Family::Requests, series).add(1);
        assert!(new.render().contains(&format!("{requests} 6")));
        new.inherit_final(old.final_totals());
        let page = new.render();
        assert!(page.contains(&format!("{requests} 6")), "{page}");
        assert!(!page.contains("corral_connections_active{"), "{page}");
    }
}
