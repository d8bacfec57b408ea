//! A histogram that takes many equal observations at once: a transaction's lag is the same for
//! each of its changes, and `cachewarden_lag_seconds` counts per change, so a 100,000-row
//! transaction is one [`Weighted::observe_n`] (one lock) instead of 100,000 observations.
//! Encoded as an ordinary Prometheus histogram by `prometheus-client`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;

/// Distributions observed by the worker.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Source commit → the change's cache actions done, in seconds (one observation per change).
    pub lag_seconds: Weighted,
    /// Changes per executed batch.
    pub batch_changes: Weighted,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            // 0.5 ms … about 16 s.
            lag_seconds: Weighted::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1 … 65,536 changes.
            batch_changes: Weighted::new(exponential_buckets(1.0, 4.0, 9)),
        }
    }
}

/// Bucketed counts and their sum; clones share them.
#[derive(Debug, Clone)]
pub struct Weighted {
    /// Upper bounds, ascending, ending in +Inf.
    bounds: Arc<[f64]>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Clone)]
struct Inner {
    sum: f64,
    count: u64,
    /// Observations per bucket (not cumulative).
    buckets: Vec<u64>,
}

impl Weighted {
    /// Buckets with the given upper bounds (+Inf is added).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds.into_iter().collect();
        bounds.push(f64::INFINITY);
        Weighted {
            inner: Arc::new(Mutex::new(Inner {
                sum: 0.0,
                count: 0,
                buckets: vec![0; bounds.len()],
            })),
            bounds: bounds.into(),
        }
    }

    /// Records `n` observations of `v`.
    pub fn observe_n(&self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sum += v * n as f64;
        inner.count += n;
        if let Some(b) = inner.buckets.get_mut(i) {
            *b += n;
        }
    }

    /// Records one observation of `v`.
    pub fn observe(&self, v: f64) {
        self.observe_n(v, 1);
    }

    /// (sum, count) so far.
    pub fn totals(&self) -> (f64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.sum, inner.count)
    }
}

impl EncodeMetric for Weighted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let buckets: Vec<(f64, u64)> = self.bounds.iter().copied().zip(inner.buckets).collect();
        encoder.encode_histogram::<NoLabelSet>(inner.sum, inner.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_observations_at_once_are_many_observations() {
        let h = Weighted::new([0.1, 1.0]);
        h.observe_n(0.05, 3);
        h.observe(1.0);
        h.observe_n(5.0, 2);
        h.observe_n(9.0, 0);
        assert_eq!(h.totals(), (0.15 + 1.0 + 10.0, 6));
        let mut r = prometheus_client::registry::Registry::default();
        r.register("lag", "lag", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "lag_count 6",
            "lag_bucket{le=\"0.1\"} 3",
            "lag_bucket{le=\"1.0\"} 4",
            "lag_bucket{le=\"+Inf\"} 6",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
