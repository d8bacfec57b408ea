//! The journal: every invalidation's lifecycle as rows of `cache_invalidations`.
//!
//! For each batch the worker writes `pending` rows (one statement for the whole batch),
//! executes the actions on Redis, then moves all of them to `completed` — or to `failed` with the
//! error — in one more statement. Never one round trip per key.
//!
//! A row is one invalidation: one exact key or pattern, or — when one rule template produced
//! many keys in the same batch — all of them in one row (`kind = 'keys'`, the keys in `keys`,
//! their family glob in `key_pattern`). Grouping keeps the journal's cost a small fraction of
//! the changes it records: a 100-row transaction costs one journal row per template, not 100.
//!
//! The journal is part of the acknowledgement contract (see [`crate::worker`]): a position is
//! confirmed only after its rows are final. Rows left `pending` or `running` by a crash are
//! re-executed via [`Journal::open_rows`] at start, so every row ends final.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::plan::{Action, Target};
use crate::source::Lsn;

/// Errors writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Opens a regular (non-replication) connection and drives it in the background.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("cachewarden");
    // Notice a dead peer (a half-open connection) within about half a minute.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// One `cache_invalidations` row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key_pattern: String,
    pub kind: &'static str,
    /// The members of a `keys`/`patterns` row.
    pub members: Vec<String>,
    pub reason: String,
    pub triggered_at: DateTime<Utc>,
    pub rule: String,
    pub table: String,
    pub lsn: Lsn,
}

/// Groups a batch's actions into journal rows: one per pattern or key, except that keys (or
/// patterns) sharing a template family are folded into one row. Pure.
pub fn entries(actions: &[Action]) -> Vec<Entry> {
    let mut groups: Vec<Vec<&Action>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for a in actions {
        let slot = *index
            .entry((a.family.as_str(), a.target.kind()))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[slot].push(a);
    }
    groups
        .into_iter()
        .map(|g| {
            let first = g[0];
            let causes: u32 = g.iter().map(|a| a.causes).sum();
            let reason = if causes > 1 {
                format!("{} (+{} more changes)", first.reason, causes - 1)
            } else {
                first.reason.clone()
            };
            let (key_pattern, kind, members) = if g.len() == 1 {
                (
                    first.target.text().to_string(),
                    first.target.kind(),
                    Vec::new(),
                )
            } else {
                (
                    first.family.clone(),
                    plural(first.target.kind()),
                    g.iter().map(|a| a.target.text().to_string()).collect(),
                )
            };
            Entry {
                key_pattern,
                kind,
                members,
                reason,
                triggered_at: g
                    .iter()
                    .map(|a| a.triggered_at)
                    .min()
                    .unwrap_or(first.triggered_at),
                rule: first.rule.clone(),
                table: first.table.clone(),
                lsn: first.lsn,
            }
        })
        .collect()
}

/// The `kind` of a row holding several targets of one kind.
pub fn plural(kind: &str) -> &'static str {
    match kind {
        "key" => "keys",
        "pattern" => "patterns",
        "tag" => "tags",
        "tag-pattern" => "tag-patterns",
        "bump" => "bumps",
        _ => "bump-patterns",
    }
}

/// The targets of a journal row (`kind`, `key_pattern`, `keys`). Unknown kinds are treated as
/// one pattern: the widest reading of an application's request.
pub fn row_targets(kind: &str, key_pattern: String, members: Option<Vec<String>>) -> Vec<Target> {
    let singular = match kind {
        "keys" => "key",
        "patterns" => "pattern",
        "tags" => "tag",
        "tag-patterns" => "tag-pattern",
        "bumps" => "bump",
        "bump-patterns" => "bump-pattern",
        other => {
            let fallback = Target::Pattern(key_pattern.clone());
            return vec![Target::from_kind(other, key_pattern).unwrap_or(fallback)];
        }
    };
    members
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| Target::from_kind(singular, m))
        .collect()
}

/// A row left open by an earlier run or requested by an application.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub id: String,
    pub targets: Vec<Target>,
}

struct Prepared {
    client: Client,
    insert: Statement,
    complete: Statement,
    fail: Statement,
}

/// Writes `cache_invalidations` rows, reconnecting after a lost connection.
pub struct Journal {
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
const COMPLETE: &str =
    "UPDATE cache_invalidations SET status = 'completed', completed_at = $2, error = NULL \
     WHERE id = ANY($1::text[]::uuid[])";
const FAIL: &str =
    "UPDATE cache_invalidations SET status = 'failed', completed_at = now(), error = $2 \
     WHERE id = ANY($1::text[]::uuid[])";

impl Journal {
    /// Creates a journal; the connection is opened on first use.
    pub fn new(config: Config) -> Self {
        Journal { config, conn: None }
    }

    async fn prepared(&mut self) -> Result<&Prepared, JournalError> {
        if self.conn.as_ref().is_some_and(|p| p.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = connect(&self.config).await?;
            // A journal statement that hangs must fail (and be retried), not stall the stream.
            client
                .batch_execute("SET statement_timeout = '30s'")
                .await?;
            let insert = client.prepare(INSERT).await?;
            let complete = client.prepare(COMPLETE).await?;
            let fail = client.prepare(FAIL).await?;
            self.conn = Some(Prepared {
                client,
                insert,
                complete,
                fail,
            });
        }
        Ok(self.conn.as_ref().expect("connection was just set"))
    }

    /// Inserts the batch's rows as `pending`; returns their ids.
    pub async fn record_pending(
        &mut self,
        actions: &[Action],
    ) -> Result<Vec<String>, JournalError> {
        let rows = entries(actions);
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
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                &p.insert,
                &[
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
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Marks rows `completed` at `at` (when Redis confirmed).
    pub async fn mark_completed(
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
    pub async fn mark_failed(&mut self, ids: &[String], error: &str) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.prepared().await?;
        p.client.execute(&p.fail, &[&ids, &error]).await?;
        Ok(())
    }

    /// Rows still `pending` or `running`, oldest first, at most `limit`.
    pub async fn open_rows(&mut self, limit: i64) -> Result<Vec<OpenRow>, JournalError> {
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                "SELECT id::text, key_pattern, kind, keys FROM cache_invalidations \
                 WHERE status IN ('pending', 'running') ORDER BY created_at LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let text: String = r.get(1);
                let kind: String = r.get(2);
                let members: Option<Vec<String>> = r.get(3);
                let targets = row_targets(&kind, text, members);
                OpenRow {
                    id: r.get(0),
                    targets,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(target: Target, family: &str, causes: u32) -> Action {
        Action {
            target,
            reason: "public.t update id=1 lsn=0/1 rule=r".into(),
            rule: "r".into(),
            table: "public.t".into(),
            lsn: Lsn(1),
            triggered_at: Utc::now(),
            causes,
            family: family.into(),
        }
    }

    #[test]
    fn groups_keys_by_family_and_keeps_singletons_plain() {
        let e = entries(&[
            action(Target::Key("c:1".into()), "c:*", 1),
            action(Target::Key("s:a".into()), "s:*", 1),
            action(Target::Key("c:2".into()), "c:*", 2),
            action(Target::Pattern("p:*".into()), "p:*", 1),
        ]);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].kind, e[0].key_pattern.as_str()), ("keys", "c:*"));
        assert_eq!(e[0].members, ["c:1", "c:2"]);
        assert!(
            e[0].reason.ends_with("(+2 more changes)"),
            "{}",
            e[0].reason
        );
        assert_eq!((e[1].kind, e[1].key_pattern.as_str()), ("key", "s:a"));
        assert!(e[1].members.is_empty());
        assert_eq!((e[2].kind, e[2].key_pattern.as_str()), ("pattern", "p:*"));
    }
}
