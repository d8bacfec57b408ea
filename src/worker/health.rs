//! The cache health watch: keeps `redis_connected` (and so `/readyz`) truthful while the worker
//! is idle by pinging the cache targets every second on connections of their own, and every
//! [`STATS_EVERY`] reads their `INFO` figures into `/status` (memory against `maxmemory` is a
//! readiness condition, so it must be fresh). When Redis first answers it moves the marks
//! earlier versions kept outside `key_prefix` under it. The `cache_metrics` rows are
//! [`crate::monitor::samples`]' business.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::Shutdown;
use crate::status::Status;
use crate::target::{CacheTarget, Targets};

/// How often `INFO` is read into `/status`.
pub const STATS_EVERY: Duration = Duration::from_secs(2);

/// Runs until shutdown.
pub(crate) async fn watch(
    mut targets: Targets,
    key_prefix: String,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    let mut next_sample = Instant::now();
    let mut marks_moved = false;
    loop {
        match targets.ping().await {
            Ok(()) => {
                status.redis_connected.store(true, Ordering::Relaxed);
                status.clear_dependency_error(crate::status::Dependency::Redis);
                if !marks_moved {
                    // Once per start, when Redis first answers (`target::redis::legacy`).
                    match targets.migrate_legacy_marks(&key_prefix).await {
                        Ok(0) => marks_moved = true,
                        Ok(n) => {
                            marks_moved = true;
                            tracing::info!(marks = n, "moved never-stale marks under key_prefix");
                        }
                        Err(e) if e.to_string().contains("NOPERM") => {
                            // A user limited to the prefix cannot see them: they expire on
                            // their own within a day (`fence::MARK_TTL_SECS`).
                            marks_moved = true;
                            tracing::info!(error = %e, "legacy marks outside key_prefix cannot be moved by this Redis user; they expire within a day");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "moving legacy marks failed; trying again")
                        }
                    }
                }
            }
            Err(e) => {
                status.redis_connected.store(false, Ordering::Relaxed);
                status.set_dependency_error(crate::status::Dependency::Redis, e.to_string());
            }
        }
        if status.redis_connected.load(Ordering::Relaxed) && Instant::now() >= next_sample {
            next_sample = Instant::now() + STATS_EVERY;
            if let Ok(stats) = targets.stats().await {
                status.set_redis_stats(stats);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.recv() => return,
        }
    }
}
