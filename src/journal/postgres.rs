//! [`PgJournal`]: the journal in PostgreSQL. Every statement on `cache_invalidations` is here:
//! the batch insert of `pending` rows (parallel arrays, one statement for a whole batch), the
//! transitions to `completed`/`failed`/back to `pending`, the recovery scan, the claim of
//! application requests (`FOR UPDATE SKIP LOCKED`, so several instances never run one request
//! twice), the operator's own requests, and failed warm writes. Open rows are found through
//! `cache_invalidation_queue`, which triggers keep (migration 0008), so that no index of the
//! journal reads a column its lifecycle changes and every update can be HOT.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_postgres::{Client, Statement};

use super::trail::Item;
use super::{entries, JournalError, JournalStore, OpenRow};
use crate::action::{Action, Target, WarmJob};
use crate::source::DeadLetter;

struct Prepared {
    client: Client,
    insert: Statement,
    complete: Statement,
    fail: Statement,
    reopen: Statement,
}

/// The PostgreSQL journal: `cache_invalidations` in the database of `[postgres] url`, on a
/// connection of its own with prepared statements, reopened after a failure.
pub struct PgJournal {
    config: crate::db::PgConfig,
    conn: Option<Prepared>,
}

// Rows come as parallel arrays, each with its status and, where they have one, completion time,
// error and due time; the members of grouped rows as a flat array with the 1-based row number
// of each member, aggregated back per row. One statement (one commit) for any number of rows.
const INSERT: &str = "WITH r AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], \
                            $6::text[], $7::text[], $8::int4[], $11::text[], $12::timestamptz[], \
                            $13::text[], $14::timestamptz[]) \
       WITH ORDINALITY AS u(k, kd, rs, t, rn, st, l, n, s, ca, e, du, ord)), \
     m AS (SELECT g, array_agg(key ORDER BY i) AS keys \
           FROM unnest($9::int8[], $10::text[]) WITH ORDINALITY AS x(g, key, i) GROUP BY g) \
     INSERT INTO cache_invalidations \
       (key_pattern, kind, keys, key_count, reason, status, triggered_at, rule_name, source_table, \
        lsn, completed_at, error, due_at) \
     SELECT r.k, r.kd, m.keys, r.n, r.rs, r.s, r.t, r.rn, r.st, r.l::pg_lsn, r.ca, r.e, r.du \
     FROM r LEFT JOIN m ON m.g = r.ord ORDER BY r.ord \
     RETURNING id::text";

/// The state a row is written in.
#[derive(Debug, Clone, Copy)]
enum Written<'a> {
    Pending,
    Completed(DateTime<Utc>),
    Failed(&'a str),
    Scheduled(DateTime<Utc>),
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
    pub fn new(config: crate::db::PgConfig) -> Self {
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
            self.conn = Some(Prepared {
                client,
                insert,
                complete,
                fail,
                reopen,
            });
        }
        self.conn
            .as_ref()
            .ok_or(JournalError::Unavailable("no connection"))
    }

    /// Inserts rows for each group of actions, in the state given with it, in one statement;
    /// returns their ids.
    async fn insert_rows(
        &mut self,
        groups: &[(Vec<entries::Entry>, Written<'_>)],
    ) -> Result<Vec<String>, JournalError> {
        let n: usize = groups.iter().map(|(rows, _)| rows.len()).sum();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut rules = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        let mut lsns = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut statuses: Vec<&str> = Vec::with_capacity(n);
        let mut completed: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut dues: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
        let mut member_row: Vec<i64> = Vec::new();
        let mut members: Vec<&str> = Vec::new();
        let now = Utc::now();
        for (rows, state) in groups {
            let (status, at, error, due) = match *state {
                Written::Pending => ("pending", None, None, None),
                Written::Completed(at) => ("completed", Some(at), None, None),
                Written::Failed(e) => ("failed", Some(now), Some(e), None),
                Written::Scheduled(due) => ("scheduled", None, None, Some(due)),
            };
            for e in rows {
                keys.push(e.key_pattern.as_str());
                kinds.push(e.kind);
                reasons.push(e.reason_text().into_owned());
                times.push(e.triggered_at);
                rules.push(e.rule.as_str());
                tables.push(e.table.as_str());
                lsns.push(e.lsn.to_string());
                counts.push(e.members.len().max(1) as i32);
                statuses.push(status);
                completed.push(at);
                errors.push(error);
                dues.push(due);
                for m in &e.members {
                    member_row.push(keys.len() as i64);
                    members.push(m);
                }
            }
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
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
            &statuses,
            &completed,
            &errors,
            &dues,
        ];
        let p = self.prepared().await?;
        let rows = p.client.query(&p.insert, &params).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Writes a trailing group: its rows in their final states and its dead letters, in one
    /// transaction (one statement when there are no dead letters). Returns the rows written.
    async fn write(&mut self, items: &[Item]) -> Result<usize, JournalError> {
        let (groups, letters) = final_rows(items);
        let rows: usize = groups.iter().map(|(r, _)| r.len()).sum();
        let letters: Vec<DeadLetter> = letters.into_iter().cloned().collect();
        if letters.is_empty() {
            self.insert_rows(&groups).await?;
            return Ok(rows);
        }
        self.prepared().await?.client.batch_execute("BEGIN").await?;
        let r = async {
            self.insert_rows(&groups).await?;
            self.insert_dead_letters(&letters).await
        }
        .await;
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.prepared().await?.client.batch_execute(end).await;
        r?;
        ended?;
        Ok(rows)
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
                "SELECT c.id::text, c.key_pattern, c.kind, c.keys, c.lsn::text \
                 FROM cache_invalidation_queue q JOIN cache_invalidations c USING (id) \
                 WHERE c.status IN ('pending', 'running') \
                   AND c.created_at <= now() - make_interval(secs => $2) \
                 ORDER BY q.due_at LIMIT $1",
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
                     SELECT c.id FROM cache_invalidation_queue q JOIN cache_invalidations c USING (id) \
                     WHERE q.request AND c.status = 'pending' \
                     ORDER BY q.due_at LIMIT $1 FOR UPDATE OF c SKIP LOCKED) \
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
        let topics: Vec<Option<&str>> = letters
            .iter()
            .map(|l| l.kafka.as_ref().map(|k| k.0.as_str()))
            .collect();
        let partitions: Vec<Option<i32>> = letters
            .iter()
            .map(|l| l.kafka.as_ref().map(|k| k.1))
            .collect();
        let offsets: Vec<Option<i64>> = letters
            .iter()
            .map(|l| l.kafka.as_ref().map(|k| k.2))
            .collect();
        let p = self.prepared().await?;
        p.client
            .execute(
                "INSERT INTO cache_dead_letters \
                     (source, position, payload, error, kafka_topic, kafka_partition, kafka_offset) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], \
                                      $5::text[], $6::int4[], $7::int8[])",
                &[&sources, &positions, &payloads, &errors, &topics, &partitions, &offsets],
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
                     SELECT c.id FROM cache_invalidation_queue q JOIN cache_invalidations c USING (id) \
                     WHERE c.status = 'scheduled' AND ($2 OR q.due_at <= now()) \
                     ORDER BY q.due_at LIMIT $1 FOR UPDATE OF c SKIP LOCKED) \
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
        async move {
            self.insert_rows(&[(entries::entries(actions), Written::Pending)])
                .await
        }
        .boxed()
    }

    fn write_group<'a>(
        &'a mut self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<usize, JournalError>> {
        self.write(items).boxed()
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

    fn open_rows(
        &mut self,
        limit: i64,
        min_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        self.open(limit, min_age).boxed()
    }

    fn claim_due(
        &mut self,
        limit: i64,
        all: bool,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        self.claim_due_rows(limit, all).boxed()
    }
}

/// A trailing group's rows, by the state each is written in, and its dead letters. Completed
/// actions of every batch in the group are folded together, so a key family changed in many
/// batches costs one row per group (its completion time the latest). Pure.
fn final_rows(items: &[Item]) -> (Vec<(Vec<entries::Entry>, Written<'_>)>, Vec<&DeadLetter>) {
    let mut completed: Vec<entries::Entry> = Vec::new();
    let mut latest: Option<DateTime<Utc>> = None;
    let mut groups = Vec::new();
    let mut letters = Vec::new();
    for item in items {
        match item {
            Item::Completed { rows, at } => {
                latest = latest.max(Some(*at));
                completed.extend(rows.iter().cloned());
            }
            Item::Failed { rows, error } => groups.push((rows.clone(), Written::Failed(error))),
            Item::Scheduled { rows, due } => groups.push((rows.clone(), Written::Scheduled(*due))),
            Item::DeadLetters(l) => letters.extend(l.iter()),
        }
    }
    if let Some(at) = latest {
        groups.insert(0, (entries::fold(completed), Written::Completed(at)));
    }
    (groups, letters)
}

/// Deletes up to `limit` final (`completed`/`failed`) rows created before `cutoff` and returns
/// how many went. Open rows are never deleted. `triggered_at` (the source commit time, never
/// after `created_at`) is indexed, so the index narrows the candidates and no scan walks the
/// recent rows; small batches keep each delete short and let vacuum keep up.
pub async fn delete_expired(
    client: &Client,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM cache_invalidations WHERE id IN ( \
               SELECT id FROM cache_invalidations \
               WHERE triggered_at < $1 AND created_at < $1 \
                 AND status IN ('completed', 'failed') \
               LIMIT $2)",
            &[&cutoff, &limit],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::Version;

    fn action(key: &str, lsn: u64) -> Action {
        Action {
            target: Target::Key(key.into()),
            reason: format!("change at {lsn}"),
            rule: "r".into(),
            table: "public.t".into(),
            version: Version::from(crate::source::Lsn(lsn)),
            triggered_at: Utc::now(),
            causes: 1,
            also: Vec::new(),
            family: "t:*".into(),
        }
    }

    #[test]
    fn a_group_folds_every_batch_s_completed_keys_into_one_row_per_family() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::milliseconds(5);
        let items = vec![
            Item::completed(&[action("t:1", 10), action("t:2", 10)], t0),
            Item::completed(&[action("t:2", 20), action("t:3", 20)], t1),
            Item::Scheduled {
                rows: entries::entries(&[action("t:1", 10)]),
                due: t1,
            },
        ];
        let (groups, letters) = final_rows(&items);
        assert!(letters.is_empty());
        assert_eq!(groups.len(), 2);
        let (rows, state) = &groups[0];
        assert!(matches!(state, Written::Completed(at) if *at == t1));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].members, ["t:1", "t:2", "t:3"]);
        assert!(
            rows[0].reason_text().contains("+3 more"),
            "{}",
            rows[0].reason
        );
        assert!(matches!(groups[1].1, Written::Scheduled(_)));
    }
}
