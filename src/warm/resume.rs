//! Resumable bulk warming: progress is recorded in `cachewarden_warm_runs` after every
//! pipeline, so an interrupted run (a crash, a stop, a failed connection) resumes after the last
//! key it wrote, unless the operator asks to restart.

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::bulk::{bulk_warm, Progress};
use super::WarmError;
use crate::rules::Rule;
use crate::target::CacheTarget;

/// Bulk-warms `rule`, resuming an unfinished run with the same `where_sql` unless `restart`,
/// and recording progress in `cachewarden_warm_runs` after every pipeline.
pub async fn resumable_warm(
    client: &Client,
    cache: &mut dyn CacheTarget,
    rule: &Rule,
    key_prefix: &str,
    where_sql: Option<&str>,
    restart: bool,
    mut progress: impl FnMut(Progress),
) -> Result<Progress, WarmError> {
    let wh = where_sql.unwrap_or("");
    let resume: Option<Vec<String>> = if restart {
        None
    } else {
        client
            .query_opt(
                "SELECT last_key FROM cachewarden_warm_runs \
                 WHERE rule_name = $1 AND where_sql = $2 AND finished_at IS NULL",
                &[&rule.name, &wh],
            )
            .await?
            .and_then(|r| r.get::<_, Option<Vec<String>>>(0))
    };
    if let Some(r) = &resume {
        tracing::info!(rule = %rule.name, after = ?r, "resuming an interrupted warm run");
    }
    client
        .execute(
            "INSERT INTO cachewarden_warm_runs (rule_name, where_sql, last_key) VALUES ($1, $2, $3) \
             ON CONFLICT (rule_name, where_sql) DO UPDATE SET finished_at = NULL, updated_at = now(), \
               last_key = EXCLUDED.last_key, \
               started_at = CASE WHEN EXCLUDED.last_key IS NULL THEN now() ELSE cachewarden_warm_runs.started_at END",
            &[&rule.name, &wh, &resume],
        )
        .await
        ?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(Progress, Vec<String>)>();
    let run = bulk_warm(
        client,
        cache,
        rule,
        key_prefix,
        where_sql,
        resume,
        5_000,
        move |p, last| {
            let _ = tx.send((p, last.to_vec()));
        },
    );
    // Record progress concurrently with the run (same connection: statements are pipelined).
    let record = async {
        while let Some((p, last)) = rx.recv().await {
            let (mut p, mut last) = (p, last);
            while let Ok((np, nl)) = rx.try_recv() {
                p = np;
                last = nl;
            }
            progress(p);
            let _ = client
                .execute(
                    "UPDATE cachewarden_warm_runs SET last_key = $3, done = $4, total = $5, updated_at = now() \
                     WHERE rule_name = $1 AND where_sql = $2",
                    &[&rule.name, &wh, &last, &(p.done as i64), &(p.total as i64)],
                )
                .await;
        }
    };
    let (result, ()) = tokio::join!(run, record);
    let p = result?;
    client
        .execute(
            "UPDATE cachewarden_warm_runs SET finished_at = now(), updated_at = now() \
             WHERE rule_name = $1 AND where_sql = $2",
            &[&rule.name, &wh],
        )
        .await?;
    Ok(p)
}
