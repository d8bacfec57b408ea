//! Retention: final `cache_invalidations` rows older than `[journal] retention` (default 7
//! days) and `cache_metrics` rows older than `[monitor] retention` (default 30 days) are
//! deleted, at start and then every [`INTERVAL`], in batches of [`BATCH`] rows with a pause
//! between batches, so that no delete holds locks or bloats the table for long and vacuum keeps
//! up. Open journal rows (`pending`, `running`, `scheduled`) are never deleted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::config::Config;
use crate::runtime::Shutdown;

/// How often expired rows are looked for.
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Rows per delete statement.
pub const BATCH: i64 = 1000;
/// Pause between two batches.
const PAUSE: Duration = Duration::from_millis(50);

/// Runs until shutdown.
pub async fn run(config: Config, mut shutdown: Shutdown) {
    let mut db: Option<Client> = None;
    loop {
        match sweep(&config, &mut db, &mut shutdown).await {
            Ok((journal, metrics)) if journal + metrics > 0 => {
                tracing::info!(
                    journal_rows = journal,
                    metric_rows = metrics,
                    "retention: expired rows deleted"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "retention: could not delete expired rows; trying again later");
                db = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// One pass over both tables: (journal rows, metric rows) deleted.
async fn sweep(
    config: &Config,
    db: &mut Option<Client>,
    shutdown: &mut Shutdown,
) -> Result<(u64, u64), tokio_postgres::Error> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        *db = Some(crate::db::connect(&config.postgres_config()?).await?);
    }
    let Some(client) = db.as_ref() else {
        return Ok((0, 0));
    };
    let now = Utc::now();
    let cutoff = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let journal_cutoff = cutoff(config.journal_retention());
    let metrics_cutoff = cutoff(config.metrics_retention());
    let mut journal = 0;
    let mut metrics = 0;
    loop {
        let j = crate::journal::delete_expired(client, journal_cutoff, BATCH).await?;
        let m = delete_expired_metrics(client, metrics_cutoff, BATCH).await?;
        journal += j;
        metrics += m;
        if j < BATCH as u64 && m < BATCH as u64 {
            return Ok((journal, metrics));
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = shutdown.recv() => return Ok((journal, metrics)),
        }
    }
}

/// Deletes up to `limit` `cache_metrics` rows sampled before `cutoff` (through the
/// `timestamp` index).
async fn delete_expired_metrics(
    client: &Client,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM cache_metrics WHERE id IN ( \
               SELECT id FROM cache_metrics WHERE \"timestamp\" < $1 LIMIT $2)",
            &[&cutoff, &limit],
        )
        .await
}
