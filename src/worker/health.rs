//! The cache health watch: keeps `redis_connected` (and so `/readyz`) truthful while the worker
//! is idle by pinging the cache targets every second on connections of their own, and every
//! `metrics_interval` samples their figures into `/status` and a whole-instance `cache_metrics`
//! row (NULL `config_id`: Redis keeps no per-rule figures).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::runtime::Shutdown;
use crate::status::Status;
use crate::target::{CacheStats, CacheTarget, Targets};

/// Runs until shutdown.
pub(crate) async fn watch(
    config: Config,
    mut targets: Targets,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    let interval = Duration::from_secs(config.worker.metrics_interval_secs.max(1));
    let mut next_sample = Instant::now();
    let mut db: Option<tokio_postgres::Client> = None;
    loop {
        let ok = targets.ping().await.is_ok();
        status.redis_connected.store(ok, Ordering::Relaxed);
        if ok && config.worker.metrics_interval_secs > 0 && Instant::now() >= next_sample {
            next_sample = Instant::now() + interval;
            if let Ok(stats) = targets.stats().await {
                status.set_redis_stats(stats);
                if let Err(e) = record_metrics(&config, &mut db, &stats).await {
                    tracing::debug!(error = %e, "could not record cache_metrics");
                    db = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.recv() => return,
        }
    }
}

async fn record_metrics(
    config: &Config,
    db: &mut Option<tokio_postgres::Client>,
    stats: &CacheStats,
) -> Result<(), tokio_postgres::Error> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        let pg = config.postgres_config()?;
        *db = Some(crate::db::connect(&pg).await?);
    }
    let Some(client) = db.as_ref() else {
        return Ok(());
    };
    let v = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO cache_metrics (config_id, hit_count, miss_count, eviction_count, memory_usage) \
             VALUES (NULL, $1, $2, $3, $4)",
            &[&v(stats.keyspace_hits), &v(stats.keyspace_misses), &v(stats.evicted_keys), &v(stats.used_memory)],
        )
        .await?;
    Ok(())
}
