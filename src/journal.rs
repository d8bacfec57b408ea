//! The journal: every invalidation's lifecycle as rows of `cache_invalidations`.
//!
//! For each batch the worker writes one `pending` row per planned action (one statement for the
//! whole batch, via `unnest`), executes the actions on Redis, then moves all of them to
//! `completed` — or to `failed` with the error — in one more statement. Rows are never written one
//! round trip per key. The journal is part of the acknowledgement contract (see
//! [`crate::worker`]): a position is confirmed only after its rows are final. Rows left `pending`
//! or `running` by a crash are re-executed by [`Journal::open_rows`] at start, so every row ends
//! final.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::plan::{Action, Target};

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
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// A row left open by an earlier run or requested by an application.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub id: String,
    pub target: Target,
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

const INSERT: &str = "INSERT INTO cache_invalidations \
       (key_pattern, kind, reason, status, triggered_at, rule_name, source_table, lsn) \
     SELECT k, kd, r, 'pending', t, rn, st, l::pg_lsn \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[]) \
          AS u(k, kd, r, t, rn, st, l) \
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

    /// Inserts one `pending` row per action; returns their ids.
    pub async fn record_pending(
        &mut self,
        actions: &[Action],
    ) -> Result<Vec<String>, JournalError> {
        let n = actions.len();
        let mut keys = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut rules = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        let mut lsns = Vec::with_capacity(n);
        for a in actions {
            keys.push(a.target.text());
            kinds.push(a.target.kind());
            reasons.push(if a.causes > 1 {
                format!("{} (+{} more changes)", a.reason, a.causes - 1)
            } else {
                a.reason.clone()
            });
            times.push(a.triggered_at);
            rules.push(a.rule.as_str());
            tables.push(a.table.as_str());
            lsns.push(a.lsn.to_string());
        }
        let p = self.prepared().await?;
        let rows = p
            .client
            .query(
                &p.insert,
                &[&keys, &kinds, &reasons, &times, &rules, &tables, &lsns],
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
                "SELECT id::text, key_pattern, kind FROM cache_invalidations \
                 WHERE status IN ('pending', 'running') ORDER BY created_at LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let text: String = r.get(1);
                let kind: String = r.get(2);
                OpenRow {
                    id: r.get(0),
                    target: if kind == "key" {
                        Target::Key(text)
                    } else {
                        Target::Pattern(text)
                    },
                }
            })
            .collect())
    }

    /// A client for other bookkeeping (config sync, metrics).
    pub async fn client(&mut self) -> Result<&Client, JournalError> {
        Ok(&self.prepared().await?.client)
    }
}
