//! The background warmer: fills keys of `refresh`/`write-through` rules after their
//! invalidation is journaled, with versioned compare-and-set writes (see [`crate::fence`]).
//!
//! Warming never delays the source position: jobs come through a bounded queue (dropped, and
//! counted, when it is full — the key simply stays invalidated), a refresh reads only once the
//! triggering transaction is visible, queries are prepared and pipelined, writes are pipelined,
//! and failures are journaled as `failed` rows and counted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::values::{RawValue, TextArg};
use super::WarmError;
use crate::action::{Fill, WarmJob};
use crate::config::Config;
use crate::control::Live;
use crate::fence::rule_mark_key;
use crate::journal::PgJournal;
use crate::rules::{Rule, Strategy};
use crate::status::{add, Status};
use crate::target::{CacheTarget, Targets, VersionedWrite};

/// Whether the transactions `xids` (32-bit) are visible to a snapshot taken now.
const VISIBLE: &str = "SELECT coalesce(bool_and(pg_visible_in_snapshot( \
       (CASE WHEN ((m.xmax >> 32) << 32 | x) > m.xmax \
             THEN (((m.xmax >> 32) - 1) << 32 | x) \
             ELSE ((m.xmax >> 32) << 32 | x) END)::text::xid8, s.snap)), true) \
     FROM (SELECT pg_current_snapshot() AS snap) s, \
          LATERAL (SELECT pg_snapshot_xmax(s.snap)::text::bigint AS xmax) m, \
          unnest($1::bigint[]) AS x";

/// Waits until every transaction in `xids` is visible; an error after 5 s (the refresh is then
/// dropped: reading before the commit is visible could write an old value under a new version).
pub async fn wait_visible(client: &Client, xids: &[u32]) -> Result<(), WarmError> {
    let xids: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
    let start = Instant::now();
    loop {
        let visible: bool = client.query_one(VISIBLE, &[&xids]).await?.get(0);
        if visible {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(WarmError::NotVisible);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs a refresh query for each job (pipelined on one connection, `concurrency` in flight)
/// and returns the value per job (`None`: no row, the key stays deleted).
async fn fetch(
    client: &Client,
    stmt: &Statement,
    jobs: &[&WarmJob],
    concurrency: usize,
) -> Result<Vec<Option<Vec<u8>>>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(jobs.len());
    for group in jobs.chunks(concurrency.max(1)) {
        let futures = group.iter().map(|job| {
            let args: Vec<Option<String>> = match &job.fill {
                Fill::Query { args } => args.clone(),
                Fill::Value(_) => Vec::new(),
            };
            async move {
                let args: Vec<TextArg<'_>> = args.iter().map(|a| TextArg(a.as_deref())).collect();
                let params: Vec<&(dyn ToSql + Sync)> =
                    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                let row = client.query_opt(stmt, &params).await?;
                Ok::<_, tokio_postgres::Error>(
                    row.and_then(|r| r.get::<_, Option<RawValue>>(0))
                        .map(|v| v.0),
                )
            }
        });
        // Queries issued together are pipelined on the one connection.
        for r in futures_util::future::join_all(futures).await {
            out.push(r?);
        }
    }
    Ok(out)
}

/// The background warmer of the worker.
pub struct Warmer {
    config: Config,
    live: Arc<Live>,
    status: Arc<Status>,
    cache: Targets,
    journal: PgJournal,
    db: Option<(Client, HashMap<String, Statement>)>,
}

/// Jobs queued for the warmer; full means dropped.
pub const QUEUE: usize = 256;
/// Warm jobs taken into one round of queries and writes.
const ROUND: usize = 10_000;

impl Warmer {
    /// A warmer and the sender that feeds it; the returned future runs until every sender is
    /// dropped and the queue is empty.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        config: Config,
        live: Arc<Live>,
        status: Arc<Status>,
    ) -> Result<(mpsc::Sender<Vec<WarmJob>>, impl Future<Output = ()>), WarmError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cache = Targets::open(&config)?;
        let journal = PgJournal::new(config.postgres_config()?);
        let warmer = Warmer {
            config,
            live,
            status,
            cache,
            journal,
            db: None,
        };
        Ok((tx, warmer.run(rx)))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Vec<WarmJob>>) {
        while let Some(mut jobs) = rx.recv().await {
            // Take whatever else is queued: one round of queries and one pipeline for all.
            // (Up to a bound: a round's memory does not grow with the queue.)
            while jobs.len() < ROUND {
                let Ok(more) = rx.try_recv() else { break };
                jobs.extend(more);
            }
            // One job per key: the newest version wins (older ones would be refused anyway).
            let mut newest: HashMap<&str, usize> = HashMap::new();
            for (i, j) in jobs.iter().enumerate() {
                let e = newest.entry(j.key.as_str()).or_insert(i);
                if jobs[*e].version <= j.version {
                    *e = i;
                }
            }
            let mut keep: Vec<usize> = newest.into_values().collect();
            keep.sort_unstable();
            let jobs: Vec<WarmJob> = keep.into_iter().map(|i| jobs[i].clone()).collect();
            if let Err(e) = self.warm(&jobs).await {
                add(&self.status.counters.warm_failures, jobs.len() as u64);
                tracing::warn!(error = %e, jobs = jobs.len(), "warming failed; the keys stay invalidated");
                self.db = None;
                if let Err(je) = self
                    .journal
                    .record_warm_failures(&jobs, &e.to_string())
                    .await
                {
                    tracing::debug!(error = %je, "could not journal the warm failure");
                }
            }
        }
    }

    async fn client(&mut self) -> Result<&mut (Client, HashMap<String, Statement>), WarmError> {
        if self.db.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.db = None;
        }
        if self.db.is_none() {
            let pg = self.config.postgres_config()?;
            let client = crate::db::connect(&pg).await?;
            self.db = Some((client, HashMap::new()));
        }
        self.db.as_mut().ok_or(WarmError::NotConnected)
    }

    async fn warm(&mut self, jobs: &[WarmJob]) -> Result<(), WarmError> {
        let snap = self.live.snapshot();
        let rules: HashMap<&str, &Rule> = snap
            .rules
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        let prefix = snap.cx.key_prefix.clone();
        let mut values: Vec<Option<Vec<u8>>> = vec![None; jobs.len()];
        let refresh: Vec<usize> = (0..jobs.len())
            .filter(|&i| matches!(jobs[i].fill, Fill::Query { .. }))
            .collect();
        for (i, job) in jobs.iter().enumerate() {
            if let Fill::Value(v) = &job.fill {
                values[i] = Some(v.clone().into_bytes());
            }
        }
        if !refresh.is_empty() {
            let mut xids: Vec<u32> = refresh.iter().map(|&i| jobs[i].xid).collect();
            xids.sort_unstable();
            xids.dedup();
            let (client, stmts) = self.client().await?;
            wait_visible(client, &xids).await?;
            let mut by_rule: HashMap<&str, Vec<usize>> = HashMap::new();
            for &i in &refresh {
                by_rule.entry(jobs[i].rule.as_str()).or_default().push(i);
            }
            for (rule, idx) in by_rule {
                let Some(query) = rules
                    .get(rule)
                    .filter(|r| r.strategy == Strategy::Refresh)
                    .and_then(|r| r.warm.as_ref())
                    .and_then(|w| w.query.as_ref())
                else {
                    continue; // the rule was reloaded away
                };
                // Keyed by the query text: a reloaded rule with a new query prepares anew.
                if !stmts.contains_key(&query.value) {
                    let st = client.prepare(&query.value).await?;
                    stmts.insert(query.value.clone(), st);
                }
                let stmt = &stmts[&query.value];
                let batch: Vec<&WarmJob> = idx.iter().map(|&i| &jobs[i]).collect();
                let fetched = fetch(client, stmt, &batch, 64).await?;
                for (i, v) in idx.into_iter().zip(fetched) {
                    values[i] = v;
                }
            }
        }
        let marks: Vec<String> = jobs
            .iter()
            .map(|j| rule_mark_key(&prefix, &j.rule))
            .collect();
        let mut writes = Vec::new();
        let mut empty = 0u64;
        for (i, job) in jobs.iter().enumerate() {
            match &values[i] {
                Some(v) => writes.push(VersionedWrite {
                    key: &job.key,
                    value: v,
                    version: job.version,
                    ttl: job.ttl,
                    key_prefix: &prefix,
                    rule_mark: &marks[i],
                }),
                None => empty += 1,
            }
        }
        let written = self.cache.write_versioned(&writes).await?;
        let ok = written.iter().filter(|w| **w).count() as u64;
        let c = &self.status.counters;
        add(&c.warm_writes, ok);
        add(&c.warm_rejected, written.len() as u64 - ok);
        add(&c.warm_empty, empty);
        Ok(())
    }
}
