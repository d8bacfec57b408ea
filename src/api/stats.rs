//! `/api/v1/stats?window=15m`: what the dashboard charts. Hit, miss and eviction deltas and
//! ratios over the window (from the whole-instance `cache_metrics` rows, each an exact
//! per-interval delta), memory and its utilization, lag percentiles, invalidations per second
//! (from the journal), per-rule figures (the latest sample of each rule), and the same as time
//! series. The current Redis figures and readiness come from the worker's own state.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, Query};
use super::Ctx;

/// Shortest and longest windows.
const MIN_WINDOW: u64 = 60;
const MAX_WINDOW: u64 = 30 * 86400;
/// Points per invalidation series.
const BUCKETS: u64 = 60;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// How far back: `5m`, `15m` (default), `1h`, `24h`, `7d`; clamped to 1 minute .. 30 days.
    #[param(pattern = "^[1-9][0-9]{0,8}[smhd]$")]
    pub window: Option<String>,
}

/// One `cache_metrics` interval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    pub at: DateTime<Utc>,
    /// Null when the interval could not be measured exactly (a Redis restart).
    pub hits: Option<i64>,
    pub misses: Option<i64>,
    pub evictions: Option<i64>,
    pub hit_ratio: Option<f64>,
    pub memory_bytes: Option<i64>,
}

/// Invalidations in one bucket of the window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvalidationPoint {
    pub at: DateTime<Utc>,
    /// Journal rows triggered in the bucket.
    pub invalidations: i64,
    /// Keys they named.
    pub keys: i64,
    /// Invalidations per second over the bucket.
    pub per_second: f64,
}

/// A rule's latest figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleStats {
    pub rule: String,
    pub at: DateTime<Utc>,
    /// Keys of the rule's family (estimated when the scan was partial, see `key_count_error`).
    pub key_count: Option<i64>,
    /// Standard error of `key_count` (0 on a complete scan).
    pub key_count_error: Option<f64>,
    pub memory_bytes: Option<i64>,
    /// Hits the application reported (`INCR <prefix>cw:hits:<rule>`), over the window.
    pub hits: Option<i64>,
    pub misses: Option<i64>,
    pub evictions: Option<i64>,
    /// Invalidations of the rule over the window (journal rows).
    pub invalidations: i64,
}

/// Redis now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RedisNow {
    pub used_memory: u64,
    /// 0 when no limit is set.
    pub maxmemory: u64,
    pub memory_ratio: Option<f64>,
    /// Since the server started.
    pub hit_ratio: Option<f64>,
    pub evicted_keys: u64,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub window_seconds: u64,
    pub now: DateTime<Utc>,
    pub ready: bool,
    /// Why the worker is not ready (empty when it is).
    pub not_ready: Vec<String>,
    pub role: String,
    /// Totals over the window (null when no interval was measured).
    pub hits: Option<i64>,
    pub misses: Option<i64>,
    pub evictions: Option<i64>,
    pub hit_ratio: Option<f64>,
    pub redis: Option<RedisNow>,
    /// Commit → invalidated, recent changes.
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub invalidations: i64,
    pub invalidations_per_second: f64,
    pub consistency_ratio: Option<f64>,
    pub series: Vec<MetricPoint>,
    pub invalidation_series: Vec<InvalidationPoint>,
    pub rules: Vec<RuleStats>,
}

fn ratio(h: Option<i64>, m: Option<i64>) -> Option<f64> {
    match (h, m) {
        (Some(h), Some(m)) if h + m > 0 => Some(h as f64 / (h + m) as f64),
        _ => None,
    }
}

/// The window in seconds, clamped to [`MIN_WINDOW`] .. [`MAX_WINDOW`].
fn window(p: &StatsParams) -> Result<u64, ApiError> {
    let text = p.window.as_deref().unwrap_or("15m");
    match crate::config::parse_period(text).map(|d| d.as_secs()) {
        Some(s) => Ok(s.clamp(MIN_WINDOW, MAX_WINDOW)),
        None => Err(ApiError::bad_request(format!(
            "window {text:?}: expected a period such as \"15m\", \"24h\" or \"7d\""
        ))),
    }
}

/// The dashboard's figures over a window.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    operation_id = "get_stats",
    tag = "stats",
    params(StatsParams),
    responses(
        (status = 200, description = "Figures over the window", body = Stats),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn stats(
    State(ctx): State<Arc<Ctx>>,
    Query(p): Query<StatsParams>,
) -> Result<Json<Stats>, ApiError> {
    let secs = window(&p)?;
    let now = Utc::now();
    let start = now - chrono::Duration::seconds(secs as i64);
    let client = ctx.db().await?;
    let db_err = |e| ApiError::unavailable("postgres", e);
    let series: Vec<MetricPoint> = client
        .query(
            "SELECT \"timestamp\", hit_count, miss_count, eviction_count, memory_usage \
             FROM cache_metrics WHERE config_id IS NULL AND \"timestamp\" >= $1 \
             ORDER BY \"timestamp\"",
            &[&start],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            let (hits, misses) = (r.get(1), r.get(2));
            MetricPoint {
                at: r.get(0),
                hits,
                misses,
                evictions: r.get(3),
                hit_ratio: ratio(hits, misses),
                memory_bytes: r.get(4),
            }
        })
        .collect();
    let sum = |f: fn(&MetricPoint) -> Option<i64>| -> Option<i64> {
        let vals: Vec<i64> = series.iter().filter_map(f).collect();
        (!vals.is_empty()).then(|| vals.iter().sum())
    };
    let (hits, misses, evictions) = (sum(|p| p.hits), sum(|p| p.misses), sum(|p| p.evictions));
    let bucket = (secs / BUCKETS).max(1);
    let invalidation_series: Vec<InvalidationPoint> = client
        .query(
            "SELECT date_bin(make_interval(secs => $2), triggered_at, $1) AS b, count(*), \
                    COALESCE(sum(key_count), 0)::int8 \
             FROM cache_invalidations WHERE triggered_at >= $1 GROUP BY b ORDER BY b",
            &[&start, &(bucket as f64)],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            let n: i64 = r.get(1);
            InvalidationPoint {
                at: r.get(0),
                invalidations: n,
                keys: r.get(2),
                per_second: n as f64 / bucket as f64,
            }
        })
        .collect();
    let invalidations: i64 = invalidation_series.iter().map(|p| p.invalidations).sum();
    let rules: Vec<RuleStats> = client
        .query(
            "WITH latest AS ( \
                 SELECT DISTINCT ON (config_id) config_id, \"timestamp\", key_count, \
                        key_count_error, memory_usage \
                 FROM cache_metrics WHERE config_id IS NOT NULL AND \"timestamp\" >= $1 \
                 ORDER BY config_id, \"timestamp\" DESC), \
             sums AS ( \
                 SELECT config_id, sum(hit_count)::int8 AS h, sum(miss_count)::int8 AS m, \
                        sum(eviction_count)::int8 AS e \
                 FROM cache_metrics WHERE config_id IS NOT NULL AND \"timestamp\" >= $1 \
                 GROUP BY config_id), \
             inv AS ( \
                 SELECT rule_name, count(*) AS n FROM cache_invalidations \
                 WHERE triggered_at >= $1 AND rule_name IS NOT NULL GROUP BY rule_name) \
             SELECT c.name, l.\"timestamp\", l.key_count, l.key_count_error, l.memory_usage, \
                    s.h, s.m, s.e, COALESCE(inv.n, 0) \
             FROM latest l JOIN cache_configs c ON c.id = l.config_id \
             LEFT JOIN sums s ON s.config_id = l.config_id \
             LEFT JOIN inv ON inv.rule_name = c.name ORDER BY c.name",
            &[&start],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| RuleStats {
            rule: r.get(0),
            at: r.get(1),
            key_count: r.get(2),
            key_count_error: r.get(3),
            memory_bytes: r.get(4),
            hits: r.get(5),
            misses: r.get(6),
            evictions: r.get(7),
            invalidations: r.get(8),
        })
        .collect();
    let snap = ctx.status.snapshot();
    let redis = ctx.status.redis_stats().map(|s| RedisNow {
        used_memory: s.used_memory,
        maxmemory: s.maxmemory,
        memory_ratio: s.memory_ratio(),
        hit_ratio: s.hit_ratio(),
        evicted_keys: s.evicted_keys,
    });
    Ok(Json(Stats {
        window_seconds: secs,
        now,
        ready: snap.not_ready.is_empty(),
        not_ready: snap.not_ready,
        role: snap.role.as_str().to_string(),
        hits,
        misses,
        evictions,
        hit_ratio: ratio(hits, misses),
        redis,
        lag_ms_p50: snap.lag_ms_p50,
        lag_ms_p99: snap.lag_ms_p99,
        invalidations,
        invalidations_per_second: invalidations as f64 / secs as f64,
        consistency_ratio: snap.consistency.as_ref().and_then(|c| c.ratio),
        series,
        invalidation_series,
        rules,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded_periods() {
        let w = |s: &str| {
            window(&StatsParams {
                window: Some(s.into()),
            })
        };
        assert_eq!(window(&StatsParams::default()).unwrap(), 900);
        assert_eq!(w("24h").unwrap(), 86400);
        assert!(w("").is_err());
        assert_eq!(w("10s").unwrap(), 60);
        assert_eq!(w("31d").unwrap(), 30 * 86400);
        assert_eq!(w("999999999d").unwrap(), 30 * 86400);
        assert!(w("soon").is_err());
        assert!(w("1e30d").is_err());
        assert_eq!(ratio(Some(8), Some(2)), Some(0.8));
        assert_eq!(ratio(Some(0), Some(0)), None);
        assert_eq!(ratio(None, Some(2)), None);
    }
}
