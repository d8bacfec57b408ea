//! [`PgJournal`]: the journal in PostgreSQL. Every statement on `cache_invalidations` is here:
//! the batch insert of `pending` rows (parallel arrays, one statement for a whole batch), the
//! transitions to `completed`/`failed`/back to `pending`, the recovery scan, the claim of
//! application requests (`FOR UPDATE SKIP LOCKED`, so several instances never run one request
//! twice), the operator's own requests, and failed warm writes.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_postgres::{Client, Config, Statement};

use super::{entries, JournalError, JournalStore, OpenRow};
use crate::action::{Action, Target, WarmJob};

struct Prepared {
    client: Client,
    insert: Statement,
    complete: Statement,
    fail: Statement,
    reopen: Statement,
    schedule: Statement,
}

/// The PostgreSQL journal: `cache_invalidations` in the database of `[postgres] url`, on a
/// connection of its own with prepared statements, reopened after a failure.
pub struct PgJournal {
    config: Config,
    conn: Option<Prepared>,
}

// Rows come as parallel arrays; the members of grouped rows as a flat array with the 1-based
// row number of each member, aggregated back per row.
const INSERT: &str = "WITH r AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], \
                            $6::text[], $7::text[], $8::int4[]) \
       WITH ORDINALITY AS u(k, kd, rs, t, rn, st, l, n, ord)), \
     m AS (SELECT g, array_agg(key ORDER BY i) AS keys \
           FROM unnest($9::int8[], $10::text[]) WITH ORDINALITY AS x(g, key, i) GROUP BY g) \
     INSERT INTO cache_invalidations \
       (key_pattern, kind, keys, key_count, reason, status, triggered_at, rule_name, source_table, lsn) \
     SELECT r.k, r.kd, m.keys, r.n, r.rs, 'pending', r.t, r.rn, r.st, r.l::pg_lsn \
     FROM r LEFT JOIN m ON m.g = r.ord \
     RETURNING id::text";
/// The same rows as [`INSERT`], scheduled to run at `$11` (delayed passes).
fn schedule_sql() -> String {
    INSERT
        .replace("'pending', r.t", "'scheduled', r.t")
        .replace("source_table, lsn)", "source_table, lsn, due_at)")
        .replace("r.l::pg_lsn FROM", "r.l::pg_lsn, $11::timestamptz FROM")
}

const COMPLETE: &str =
    "UPDATE cache_invalidations SET status = 'completed', completed_at = $2, error = NULL \
     WHERE id = ANY($1::text[]::uuid[])";
const FAIL: &str =
    "UPDATE cache_invalidations SET status = 'failed', completed_at = now(), error = $2 \
     WHERE id = ANY($1::text[]::uuid[])";
const REOPEN: &str = "UPDATE cache_invalidations SET status = 'pending', error = $2 \
     WHERE id = ANY($1::text[]::uuid[])";

impl PgJournal {
    /// Creates a journal; the connection is opened on first use.
    pub fn new(config: Config) -> Self {
        PgJournal { config, conn: None }
    }

    async fn prepared(&mut self) -> Result<&Prepared, JournalError> {
        if self.conn.as_ref().is_some_and(|p| p.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = crate::db::connect(&self.config).await?;
            // A journal statement that hangs must fail (and be retried), not stall the stream.
            client
                .batch_execute("SET statement_timeout = '30s'")
                .await?;
            let insert = client.prepare(INSERT).await?;
            let complete = client.prepare(COMPLETE).await?;
            let fail = client.prepare(FAIL).await?;
            let reopen = client.prepare(REOPEN).await?;
            let schedule = client.prepare(&schedule_sql()).await?;
            self.conn = Some(Prepared {
                client,
                insert,
                complete,
                fail,
                reopen,
                schedule,
            });
        }
        self.conn
            .as_ref()
            .ok_or(JournalError::Unavailable("no connection"))
    }

    /// Inserts the batch's rows as `pending`, or as `scheduled` to run at `due`; returns their
    /// ids.
    async fn insert_rows(
        &mut self,
        actions: &[Action],
        due: Option<DateTime<Utc>>,
    ) -> Result<Vec<String>, JournalError> {
        let rows = entries::entries(actions);
        let n = rows.len();
        let mut keys = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut rules = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        let mut lsns = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut member_row: Vec<i64> = Vec::new();
        let mut members: Vec<&str> = Vec::new();
        for (i, e) in rows.iter().enumerate() {
            keys.push(e.key_pattern.as_str());
            kinds.push(e.kind);
            reasons.push(e.reason.as_str());
            times.push(e.triggered_at);
            rules.push(e.rule.as_str());
            tables.push(e.table.as_str());
            lsns.push(e.lsn.to_string());
            counts.push(e.members.len().max(1) as i32);
            for m in &e.members {
                member_row.push(i as i64 + 1);
                members.push(m);
            }
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &keys,
            &kinds,
            &reasons,
            &times,
            &rules,
            &tables,
            &lsns,
            &counts,
            &member_row,
            &members,
        ];
        let p = self.prepared().await?;
        let statement = match &due {
            None => &p.insert,
            Some(due) => {
                params.push(due);
                &p.schedule
            }
        };
        let rows = p.client.query(statement, &params).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Marks rows `completed` at `at` (when Redis confirmed).
    async fn mark_completed(
        &mut self,
        ids: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.prepared().await?;
        p.client.execute(&p.complete, &[&ids, &at]).await?;
        Ok(())
    }

    /// Marks rows `failed` with the error text.
    async fn mark_failed(&mut self, ids: &[String], error: &str) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.prepared().await?;
        p.client.execute(&p.fail, &[&ids, &error]).await?;
        Ok(())
    }

    /// Rows still `pending` or `running`, oldest first, at most `limit`.
    async fn open(
        &mut self,
        limit: i64,
        min_age: std::time::Duration,
    ) -> Result<Vec<OpenRow>, JournalError> {
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                "SELECT id::text, key_pattern, kind, keys, lsn::text FROM cache_invalidations \
                 WHERE status IN ('pending', 'running') \
                   AND created_at <= now() - make_interval(secs => $2) \
                 ORDER BY created_at LIMIT $1",
                &[&limit, &min_age.as_secs_f64()],
            )
            .await?;
        self.keep_valid(&rows).await
    }

    async fn reopen_rows(&mut self, ids: &[String], error: &str) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.prepared().await?;
        p.client.execute(&p.reopen, &[&ids, &error]).await?;
        Ok(())
    }

    /// Claims application requests (`pending`, no rule) by moving them to `running`; returns
    /// them. Skips rows another instance holds.
    pub async fn claim_requests(&mut self, limit: i64) -> Result<Vec<OpenRow>, JournalError> {
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                "UPDATE cache_invalidations SET status = 'running' WHERE id IN ( \
                     SELECT id FROM cache_invalidations \
                     WHERE status = 'pending' AND rule_name IS NULL \
                     ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id::text, key_pattern, kind, keys, lsn::text",
                &[&limit],
            )
            .await?;
        self.keep_valid(&rows).await
    }

    /// The rows that can be executed; the others are marked `failed` with their reason at once,
    /// so a malformed row never stalls or crashes anything.
    async fn keep_valid(
        &mut self,
        rows: &[tokio_postgres::Row],
    ) -> Result<Vec<OpenRow>, JournalError> {
        let mut good = Vec::with_capacity(rows.len());
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for r in rows {
            match read_row(r) {
                Ok(row) => good.push(row),
                Err((id, reason)) => {
                    tracing::warn!(id = %id, reason = %reason, "journal row cannot be executed; marked failed");
                    bad_ids.push(id);
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            let p = self.prepared().await?;
            p.client
                .execute(
                    "UPDATE cache_invalidations c SET status = 'failed', completed_at = now(), error = u.e \
                     FROM unnest($1::text[], $2::text[]) AS u(id, e) WHERE c.id = u.id::uuid",
                    &[&bad_ids, &reasons],
                )
                .await?;
        }
        Ok(good)
    }

    async fn insert_dead_letters(
        &mut self,
        letters: &[crate::source::DeadLetter],
    ) -> Result<(), JournalError> {
        if letters.is_empty() {
            return Ok(());
        }
        let sources: Vec<&str> = letters.iter().map(|l| l.source).collect();
        let positions: Vec<&str> = letters.iter().map(|l| l.position.as_str()).collect();
        let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
        let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
        let p = self.prepared().await?;
        p.client
            .execute(
                "INSERT INTO cache_dead_letters (source, position, payload, error) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])",
                &[&sources, &positions, &payloads, &errors],
            )
            .await?;
        Ok(())
    }

    async fn claim_due_rows(
        &mut self,
        limit: i64,
        all: bool,
    ) -> Result<Vec<OpenRow>, JournalError> {
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                "UPDATE cache_invalidations SET status = 'running' WHERE id IN ( \
                     SELECT id FROM cache_invalidations \
                     WHERE status = 'scheduled' AND ($2 OR due_at <= now()) \
                     ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id::text, key_pattern, kind, keys, lsn::text",
                &[&limit, &all],
            )
            .await?;
        self.keep_valid(&rows).await
    }

    /// Journals an operator's request as `running` (this process executes it next); returns
    /// its id.
    pub async fn insert_request(
        &mut self,
        target: &Target,
        reason: &str,
    ) -> Result<String, JournalError> {
        let p = self.prepared().await?;
        let row = p
            .client
            .query_one(
                "INSERT INTO cache_invalidations (key_pattern, kind, reason, status) \
                 VALUES ($1, $2, $3, 'running') RETURNING id::text",
                &[&target.text(), &target.kind(), &reason],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Journals warm jobs that could not be filled as `failed` rows (one per key).
    pub async fn record_warm_failures(
        &mut self,
        jobs: &[WarmJob],
        error: &str,
    ) -> Result<(), JournalError> {
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        let reasons: Vec<String> = jobs
            .iter()
            .map(|j| format!("warm failed: rule={} lsn={}", j.rule, j.version))
            .collect();
        let rules: Vec<&str> = jobs.iter().map(|j| j.rule.as_str()).collect();
        let p = self.prepared().await?;
        p.client
            .execute(
                "INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, error, completed_at) \
                 SELECT k, 'key', r, 'failed', rn, $4, now() FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, r, rn)",
                &[&keys, &reasons, &rules, &error],
            )
            .await?;
        Ok(())
    }
}

/// Reads a row as an [`OpenRow`], or says why it cannot be executed (the row's id and the
/// reason). Nothing read here is trusted: applications write these rows.
fn read_row(r: &tokio_postgres::Row) -> Result<OpenRow, (String, String)> {
    let id: String = r.get(0);
    let invalid = |e: &dyn std::fmt::Display| (id.clone(), format!("invalid row: {e}"));
    let text: String = r.try_get(1).map_err(|e| invalid(&e))?;
    let kind: String = r.try_get(2).map_err(|e| invalid(&e))?;
    let members: Option<Vec<Option<String>>> = r
        .try_get(3)
        .map_err(|e| invalid(&entries::RowError::BadArray(e.to_string())))?;
    let targets = entries::row_targets(&kind, text, members).map_err(|e| invalid(&e))?;
    // Where the row came from in the stream, when it did (applications' rows have none).
    let version = r
        .try_get::<_, Option<String>>(4)
        .ok()
        .flatten()
        .and_then(|l| l.parse::<crate::source::Lsn>().ok())
        .map(crate::fence::Version::from);
    Ok(OpenRow {
        id,
        targets,
        version,
    })
}

impl JournalStore for PgJournal {
    fn record_pending<'a>(
        &'a mut self,
        actions: &'a [Action],
    ) -> BoxFuture<'a, Result<Vec<String>, JournalError>> {
        self.insert_rows(actions, None).boxed()
    }

    fn complete<'a>(
        &'a mut self,
        ids: &'a [String],
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.mark_completed(ids, at).boxed()
    }

    fn fail<'a>(
        &'a mut self,
        ids: &'a [String],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.mark_failed(ids, error).boxed()
    }

    fn reopen<'a>(
        &'a mut self,
        ids: &'a [String],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.reopen_rows(ids, error).boxed()
    }

    fn record_dead_letters<'a>(
        &'a mut self,
        letters: &'a [crate::source::DeadLetter],
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.insert_dead_letters(letters).boxed()
    }

    fn open_rows(
        &mut self,
        limit: i64,
        min_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        self.open(limit, min_age).boxed()
    }

    fn schedule<'a>(
        &'a mut self,
        actions: &'a [Action],
        due: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move { self.insert_rows(actions, Some(due)).await.map(|_| ()) }.boxed()
    }

    fn claim_due(
        &mut self,
        limit: i64,
        all: bool,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        self.claim_due_rows(limit, all).boxed()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scheduled_rows_are_the_pending_insert_with_a_due_time() {
        let sql = super::schedule_sql();
        assert!(sql.contains("'scheduled', r.t"), "{sql}");
        assert!(sql.contains("source_table, lsn, due_at)"), "{sql}");
        assert!(sql.contains("r.l::pg_lsn, $11::timestamptz FROM"), "{sql}");
    }
}
