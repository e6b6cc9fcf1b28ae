//! Counters carried from one master to the next across a binary upgrade.
//!
//! [`Totals`] is every counter and histogram of a metrics page as plain
//! numbers, by family name and label pairs: what an old master hands its
//! successor, which adds it to its own page as a base (as it adds the
//! totals of its exited workers), so that no counter goes backwards across
//! SIGUSR2. Families and labels go by name, not by a binary's internal ids,
//! so that masters of different versions understand each other; a family
//! the receiving binary does not know is shown as it came. Gauges are not
//! carried: they describe the process that has them.

use prometheus::proto::{self, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

/// Counters and histograms, summed over a whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub families: Vec<FamilyTotals>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyTotals {
    pub name: String,
    #[serde(default)]
    pub help: String,
    /// A histogram's series carry buckets and a count; a counter's, a value.
    #[serde(default)]
    pub histogram: bool,
    pub series: Vec<SeriesTotals>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesTotals {
    pub labels: Vec<(String, String)>,
    /// A counter's value, or a histogram's sum.
    pub value: f64,
    #[serde(default)]
    pub count: u64,
    /// Cumulative counts by upper bound, as Prometheus has them.
    #[serde(default)]
    pub buckets: Vec<(f64, u64)>,
}

impl Totals {
    /// The counters and histograms of `families`.
    pub fn of(families: &[MetricFamily]) -> Self {
        let families = families
            .iter()
            .filter_map(|mf| {
                let histogram = match mf.get_field_type() {
                    MetricType::COUNTER => false,
                    MetricType::HISTOGRAM => true,
                    _ => return None,
                };
                let series = mf
                    .get_metric()
                    .iter()
                    .map(|m| series_of(m, histogram))
                    .collect();
                Some(FamilyTotals {
                    name: mf.name().to_owned(),
                    help: mf.help().to_owned(),
                    histogram,
                    series,
                })
            })
            .collect();
        Self { families }
    }

    /// Adds these totals into `families`: into the series with the same
    /// name and labels, else as series (or families) of their own.
    pub fn add_to(&self, families: &mut Vec<MetricFamily>) {
        for family in &self.families {
            let index = match families.iter().position(|mf| mf.name() == family.name) {
                Some(i) => i,
                None => {
                    families.push(empty_family(family));
                    families.len() - 1
                }
            };
            let target = &mut families[index];
            if is_histogram(target) != family.histogram {
                tracing::warn!(metric = %family.name, "a carried metric changed its type; dropped");
                continue;
            }
            for series in &family.series {
                add_series(target, series, family.histogram);
            }
        }
    }
}

fn is_histogram(mf: &MetricFamily) -> bool {
    mf.get_field_type() == MetricType::HISTOGRAM
}

fn series_of(m: &proto::Metric, histogram: bool) -> SeriesTotals {
    let labels = m
        .get_label()
        .iter()
        .map(|p| (p.name().to_owned(), p.value().to_owned()))
        .collect();
    if histogram {
        let h = m.get_histogram();
        SeriesTotals {
            labels,
            value: h.get_sample_sum(),
            count: h.get_sample_count(),
            buckets: h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    } else {
        SeriesTotals {
            labels,
            value: m.get_counter().get_value(),
            count: 0,
            buckets: Vec::new(),
        }
    }
}

fn empty_family(family: &FamilyTotals) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(family.name.clone());
    mf.set_help(family.help.clone());
    mf.set_field_type(if family.histogram {
        MetricType::HISTOGRAM
    } else {
        MetricType::COUNTER
    });
    mf
}

fn same_labels(m: &proto::Metric, labels: &[(String, String)]) -> bool {
    let mine = m.get_label();
    mine.len() == labels.len()
        && labels
            .iter()
            .all(|(n, v)| mine.iter().any(|p| p.name() == n && p.value() == v))
}

fn add_series(target: &mut MetricFamily, series: &SeriesTotals, histogram: bool) {
    let metrics = target.mut_metric();
    let index = match metrics.iter().position(|m| same_labels(m, &series.labels)) {
        Some(i) => i,
        None => {
            metrics.push(zero_metric(series, histogram));
            metrics.len() - 1
        }
    };
    let m = &mut metrics[index];
    if histogram {
        let mut h = proto::Histogram::clone(m.get_histogram());
        h.set_sample_sum(h.get_sample_sum() + series.value);
        h.set_sample_count(h.get_sample_count() + series.count);
        let mut buckets = h.get_bucket().to_vec();
        for b in &mut buckets {
            // Bounds are constants of corral; one this binary lacks is
            // left out rather than put into the wrong bucket.
            if let Some((_, n)) = series.buckets.iter().find(|(le, _)| *le == b.upper_bound()) {
                b.set_cumulative_count(b.cumulative_count() + n);
            }
        }
        h.set_bucket(buckets);
        m.set_histogram(h);
    } else {
        let mut c = proto::Counter::clone(m.get_counter());
        c.set_value(c.get_value() + series.value);
        m.set_counter(c);
    }
}

fn zero_metric(series: &SeriesTotals, histogram: bool) -> proto::Metric {
    let mut m = proto::Metric::default();
    let pairs = series
        .labels
        .iter()
        .map(|(n, v)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(n.clone());
            pair.set_value(v.clone());
            pair
        })
        .collect();
    m.set_label(pairs);
    if histogram {
        let mut h = proto::Histogram::default();
        let buckets = series
            .buckets
            .iter()
            .map(|(le, _)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*le);
                b
            })
            .collect();
        h.set_bucket(buckets);
        m.set_histogram(h);
    } else {
        m.set_counter(proto::Counter::default());
    }
    m
}
