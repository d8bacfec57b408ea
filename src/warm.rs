//! Warming: fill keys after their invalidation without ever writing a stale value.
//!
//! # Never stale
//!
//! Every warmed value carries a version: the WAL position of the change that asked for it (or,
//! for bulk warming, a position taken before the read's snapshot). Before any key of a
//! `refresh`/`write-through` rule is unlinked, the worker raises the key's *mark*
//! (`cw:v:<key>`) to the invalidating change's position, and TRUNCATE raises the rule's mark.
//! A warm write is a compare-and-set in Lua ([`crate::cache::Cache::write_versioned`]): it lands
//! only if its version is not older than both marks. (A write need not raise marks itself: two
//! refetches with no invalidation between them read the same data.) Bulk writes share one
//! version, and while the rule's *max mark* (`cw:v:max:<rule>`, raised with every key mark)
//! is older than it, no key can refuse them: they go as native SETs in a WATCHed MULTI/EXEC
//! that aborts if any mark of the rule moves ([`crate::cache::Cache::write_versioned_bulk`]).
//! So for a refetch that started before a later change C: if its write comes after C's
//! invalidation, C's mark is newer and the write is refused; if it comes before, C's
//! invalidation removes it. Changes are processed in commit order, so marks only grow. A refresh
//! reads only once the triggering transaction is visible to its snapshot (checked with
//! `pg_visible_in_snapshot`), so a value versioned `L` never predates `L`.
//!
//! Warming runs after the invalidation is journaled and never delays the replication position:
//! jobs go through a bounded queue (dropped, and counted, when it is full — the key simply
//! stays invalidated), queries are prepared and pipelined, writes are pipelined, and failures
//! are journaled as `failed` rows and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::cache::{Cache, VersionedWrite};
use crate::config::Config;
use crate::control::Live;
use crate::plan::{rule_mark_key, Fill, WarmJob};
use crate::rules::{Rule, Strategy};
use crate::source::Lsn;
use crate::status::{add, Status};

/// A query argument sent in text format, so PostgreSQL parses it as whatever type the
/// parameter has (as psql would).
#[derive(Debug)]
pub struct TextArg<'a>(pub Option<&'a str>);

impl ToSql for TextArg<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }
    tokio_postgres::types::to_sql_checked!();
}

/// A result value as bytes, whatever its textual type (text, varchar, json, jsonb, bytea).
#[derive(Debug)]
pub struct RawValue(pub Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // Binary jsonb starts with a version byte.
        if *ty == Type::JSONB {
            return Ok(RawValue(raw.get(1..).unwrap_or_default().to_vec()));
        }
        Ok(RawValue(raw.to_vec()))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::JSON
                | Type::JSONB
                | Type::BYTEA
        ) || ty.name() == "citext"
    }
}

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
pub async fn wait_visible(client: &Client, xids: &[u32]) -> Result<(), String> {
    let xids: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
    let start = Instant::now();
    loop {
        let visible: bool = client
            .query_one(VISIBLE, &[&xids])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if visible {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err("the changed rows did not become visible within 5 s".into());
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
    cache: Cache,
    db: Option<(Client, HashMap<String, Statement>)>,
}

/// Jobs queued for the warmer; full means dropped.
pub const QUEUE: usize = 256;

impl Warmer {
    pub fn spawn(
        config: Config,
        live: Arc<Live>,
        status: Arc<Status>,
    ) -> Result<(mpsc::Sender<Vec<WarmJob>>, tokio::task::JoinHandle<()>), crate::cache::CacheError>
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cache = Cache::new(&config.redis.url, config.cache_options())?;
        let warmer = Warmer {
            config,
            live,
            status,
            cache,
            db: None,
        };
        Ok((tx, tokio::spawn(warmer.run(rx))))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Vec<WarmJob>>) {
        while let Some(mut jobs) = rx.recv().await {
            // Take whatever else is queued: one round of queries and one pipeline for all.
            while let Ok(more) = rx.try_recv() {
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
                self.journal_failure(&jobs, &e).await;
            }
        }
    }

    async fn client(&mut self) -> Result<&mut (Client, HashMap<String, Statement>), String> {
        if self.db.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.db = None;
        }
        if self.db.is_none() {
            let pg = self.config.postgres_config().map_err(|e| e.to_string())?;
            let client = crate::journal::connect(&pg)
                .await
                .map_err(|e| e.to_string())?;
            self.db = Some((client, HashMap::new()));
        }
        self.db.as_mut().ok_or_else(|| "no connection".to_string())
    }

    async fn warm(&mut self, jobs: &[WarmJob]) -> Result<(), String> {
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
                    let st = client
                        .prepare(&query.value)
                        .await
                        .map_err(|e| e.to_string())?;
                    stmts.insert(query.value.clone(), st);
                }
                let stmt = &stmts[&query.value];
                let batch: Vec<&WarmJob> = idx.iter().map(|&i| &jobs[i]).collect();
                let fetched = fetch(client, stmt, &batch, 64)
                    .await
                    .map_err(|e| e.to_string())?;
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
                    rule_mark: &marks[i],
                }),
                None => empty += 1,
            }
        }
        let written = self
            .cache
            .write_versioned(&writes)
            .await
            .map_err(|e| e.to_string())?;
        let ok = written.iter().filter(|w| **w).count() as u64;
        let c = &self.status.counters;
        add(&c.warm_writes, ok);
        add(&c.warm_rejected, written.len() as u64 - ok);
        add(&c.warm_empty, empty);
        Ok(())
    }

    async fn journal_failure(&mut self, jobs: &[WarmJob], error: &str) {
        let Ok((client, _)) = self.client().await else {
            return;
        };
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        let reasons: Vec<String> = jobs
            .iter()
            .map(|j| format!("warm failed: rule={} lsn={}", j.rule, j.version))
            .collect();
        let rules: Vec<&str> = jobs.iter().map(|j| j.rule.as_str()).collect();
        let _ = client
            .execute(
                "INSERT INTO cache_invalidations (key_pattern, kind, reason, status, rule_name, error, completed_at) \
                 SELECT k, 'key', r, 'failed', rn, $4, now() FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, r, rn)",
                &[&keys, &reasons, &rules, &error],
            )
            .await;
    }
}

/// Progress of a bulk warm, for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub written: u64,
    pub elapsed: Duration,
}

/// ` WHERE …` for a bulk read: the user's `--where`, and when resuming, key columns after the
/// last key written (`$1..$n`). Empty when there is neither.
fn where_clause(key_cols: &[String], where_sql: Option<&str>, after: bool) -> String {
    let mut conds = Vec::new();
    if let Some(w) = where_sql {
        conds.push(format!("({w})"));
    }
    if after {
        let params: Vec<String> = (1..=key_cols.len()).map(|i| format!("${i}")).collect();
        conds.push(format!(
            "({}) > ({})",
            key_cols.join(", "),
            params.join(", ")
        ));
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// The SQL that reads every row of a rule for bulk warming: the key columns and args as text,
/// then the value — the warm query as a correlated subquery (refresh) or every column as text
/// (write-through, rendered as JSON like the worker does).
fn bulk_sql(
    rule: &Rule,
    columns: &[String],
    where_sql: Option<&str>,
    after: bool,
) -> Result<(String, String, Vec<String>), String> {
    let warm = rule.warm.as_ref().ok_or("the rule has no [rule.warm]")?;
    let (schema, table) = crate::source::postgres::split_table(&rule.table);
    let q = |c: &str| crate::source::replication::quote_ident(c);
    // Key columns first (what the key template needs), in a stable order.
    let mut key_cols: Vec<String> = Vec::new();
    let names = warm
        .key
        .value
        .fields()
        .map(|(_, c)| c)
        .chain(warm.args.iter().map(|a| a.value.as_str()));
    for c in names {
        if !key_cols.iter().any(|k| k == c) {
            key_cols.push(c.to_string());
        }
    }
    let mut select: Vec<String> = key_cols
        .iter()
        .map(|c| format!("cw_row__.{}::text", q(c)))
        .collect();
    if let (Some(bulk), Strategy::Refresh) = (&warm.bulk_query, rule.strategy) {
        // The author's set-based query: key columns by name, the value last.
        let names: Vec<String> = key_cols.iter().map(|c| q(c)).collect();
        let cols: Vec<String> = key_cols
            .iter()
            .map(|c| format!("b.{}::text", q(c)))
            .collect();
        let order: Vec<String> = key_cols.iter().map(|c| format!("b.{}", q(c))).collect();
        let from = format!(
            "FROM ({}) AS b({}, cw_value){}",
            bulk.value.trim().trim_end_matches(';'),
            names.join(", "),
            where_clause(&order, where_sql, after)
        );
        let sql = format!(
            "SELECT {}, b.cw_value {from} ORDER BY {}",
            cols.join(", "),
            order.join(", ")
        );
        return Ok((sql, format!("SELECT count(*) {from}"), key_cols));
    }
    match (&warm.query, rule.strategy) {
        (Some(query), Strategy::Refresh) => {
            let mut sub = query.value.clone();
            for (i, a) in warm.args.iter().enumerate().rev() {
                sub = sub.replace(&format!("${}", i + 1), &format!("cw_row__.{}", q(&a.value)));
            }
            select.push(format!("({sub})"));
        }
        _ => {
            for c in columns {
                select.push(format!("cw_row__.{}::text", q(c)));
            }
        }
    }
    let pk: Vec<String> = key_cols
        .iter()
        .map(|c| format!("cw_row__.{}", q(c)))
        .collect();
    let from = format!(
        "FROM {}.{} cw_row__{}",
        q(schema),
        q(table),
        where_clause(&pk, where_sql, after)
    );
    let sql = format!(
        "SELECT {} {from} ORDER BY {}",
        select.join(", "),
        pk.join(", ")
    );
    Ok((sql, format!("SELECT count(*) {from}"), key_cols))
}

/// Fills every key of `rule` from the database: streams rows in key order, renders keys,
/// writes values with compare-and-set in pipelines of `chunk`. Resumes after `resume_from`
/// (the key columns of the last row written) when given. Returns the last key columns written.
#[allow(clippy::too_many_arguments)]
pub async fn bulk_warm(
    client: &Client,
    cache: &mut Cache,
    rule: &Rule,
    key_prefix: &str,
    where_sql: Option<&str>,
    resume_from: Option<Vec<String>>,
    chunk: usize,
    mut progress: impl FnMut(Progress, &[String]),
) -> Result<Progress, String> {
    let catalog = crate::rules::check::load_catalog(client, std::slice::from_ref(&rule.table))
        .await
        .map_err(|e| e.to_string())?;
    let info = catalog
        .get(&rule.table)
        .ok_or_else(|| format!("table {} does not exist", rule.table))?;
    let (sql, count_sql, key_cols) =
        bulk_sql(rule, &info.columns, where_sql, resume_from.is_some())?;
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .await
        .map_err(|e| e.to_string())?;
    // Version: a position taken before the snapshot, so changes the read may miss are newer.
    // A transaction whose commit record is already in the WAL but not yet visible would break
    // that; wait until the transactions in progress at that moment are visible or aborted
    // (those still running after 2 s are long transactions that have not committed).
    let row = client
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0')::text, \
                    ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text)",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let version: String = row.get(0);
    let in_progress: Vec<String> = row.get(1);
    let version = Lsn(version.parse().map_err(|_| "bad LSN".to_string())?);
    let settle = Instant::now();
    while !in_progress.is_empty() && settle.elapsed() < Duration::from_secs(2) {
        let settled: bool = client
            .query_one(
                "SELECT coalesce(bool_and(pg_xact_status(x::xid8) = 'aborted' \
                     OR pg_visible_in_snapshot(x::xid8, pg_current_snapshot())), true) \
                 FROM unnest($1::text[]) AS x",
                &[&in_progress],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resume_args: Vec<TextArg<'_>> = resume_from
        .as_ref()
        .map(|r| r.iter().map(|v| TextArg(Some(v.as_str()))).collect())
        .unwrap_or_default();
    let params: Vec<&(dyn ToSql + Sync)> = resume_args
        .iter()
        .map(|a| a as &(dyn ToSql + Sync))
        .collect();
    let total: i64 = client
        .query_one(&count_sql, &params)
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let started = Instant::now();
    let mut p = Progress {
        total: total.max(0) as u64,
        ..Progress::default()
    };
    let rows = client
        .query_raw(&sql, params.iter().copied())
        .await
        .map_err(|e| e.to_string())?;
    futures_util::pin_mut!(rows);
    let rule_mark = rule_mark_key(key_prefix, &rule.name);
    let rule_max_mark = crate::plan::rule_max_mark_key(key_prefix, &rule.name);
    let type_of = |c: &str| {
        info.column_index(c)
            .map(|i| info.types[i])
            .unwrap_or(crate::source::oid::TEXT)
    };
    let key_relation = relation_of(
        &rule.table,
        &key_cols
            .iter()
            .map(|c| (c.clone(), type_of(c)))
            .collect::<Vec<_>>(),
    );
    let row_relation = relation_of(
        &rule.table,
        &info
            .columns
            .iter()
            .zip(info.types.iter())
            .map(|(c, t)| (c.clone(), *t))
            .collect::<Vec<_>>(),
    );
    let warm = rule.warm.as_ref().ok_or("the rule has no [rule.warm]")?;
    // Reading rows and writing to Redis overlap: the reader hands full chunks to the writer
    // through a small queue (bounded, so memory stays bounded).
    type Chunk = (Vec<(String, Vec<u8>)>, u64, Vec<String>);
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let reader = async {
        let mut buf: Vec<(String, Vec<u8>)> = Vec::with_capacity(chunk);
        let mut read = 0u64;
        let mut last: Vec<String> = Vec::new();
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| e.to_string())?;
            let keys: Vec<Option<String>> = (0..key_cols.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect();
            let value: Option<Vec<u8>> = if rule.strategy == Strategy::Refresh {
                row.get::<_, Option<RawValue>>(key_cols.len()).map(|v| v.0)
            } else {
                let vals: Vec<Option<String>> =
                    (key_cols.len()..row.len()).map(|i| row.get(i)).collect();
                crate::plan::row_json(&row_change(&row_relation, vals)).map(String::into_bytes)
            };
            last = keys.iter().map(|k| k.clone().unwrap_or_default()).collect();
            // Render the key like the worker: canonical values of the current row.
            let change = row_change(&key_relation, keys);
            if let (crate::rules::Rendered::Key(k), Some(v)) = (
                warm.key
                    .value
                    .render(&crate::rules::RowView::new(&change), key_prefix),
                value,
            ) {
                buf.push((k, v));
            }
            read += 1;
            if buf.len() >= chunk {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(chunk));
                if tx.send((full, read, last.clone())).await.is_err() {
                    return Ok(());
                }
                read = 0;
            }
        }
        if read > 0 || !buf.is_empty() {
            let _ = tx.send((buf, read, last)).await;
        }
        drop(tx);
        Ok::<(), String>(())
    };
    let writer = async {
        while let Some((buf, read, last)) = rx.recv().await {
            p.written += cache
                .write_versioned_bulk(&buf, version, rule.ttl, &rule_mark, &rule_max_mark)
                .await
                .map_err(|e| e.to_string())?;
            p.done += read;
            p.elapsed = started.elapsed();
            progress(p, &last);
        }
        Ok::<(), String>(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r?;
    w?;
    p.elapsed = started.elapsed();
    Ok(p)
}

/// Bulk-warms `rule`, resuming an unfinished run with the same `where_sql` unless `restart`,
/// and recording progress in `cachewarden_warm_runs` after every pipeline.
pub async fn resumable_warm(
    client: &Client,
    cache: &mut Cache,
    rule: &Rule,
    key_prefix: &str,
    where_sql: Option<&str>,
    restart: bool,
    mut progress: impl FnMut(Progress),
) -> Result<Progress, String> {
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
            .await
            .map_err(|e| e.to_string())?
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
        .map_err(|e| e.to_string())?;
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
        .await
        .map_err(|e| e.to_string())?;
    Ok(p)
}

/// A relation of `cols` with their types, for rendering rows read by SQL like decoded ones.
fn relation_of(table: &str, cols: &[(String, u32)]) -> Arc<crate::source::Relation> {
    let (schema, name) = crate::source::postgres::split_table(table);
    Arc::new(crate::source::Relation {
        oid: 0,
        schema: schema.into(),
        name: name.into(),
        replica_identity: b'f',
        columns: cols
            .iter()
            .map(|(c, t)| crate::source::Column {
                name: c.clone(),
                type_oid: *t,
                is_key: false,
            })
            .collect(),
    })
}

/// A row read as text, as the insert the worker would have decoded (canonical values).
fn row_change(
    relation: &Arc<crate::source::Relation>,
    values: Vec<Option<String>>,
) -> crate::source::Change {
    crate::source::Change {
        relation: relation.clone(),
        op: crate::source::Op::Insert,
        old: None,
        new: Some(crate::source::Tuple(
            relation
                .columns
                .iter()
                .zip(values)
                .map(|(c, v)| match v {
                    Some(v) => {
                        crate::source::Datum::Text(crate::source::canonical_text(c.type_oid, v))
                    }
                    None => crate::source::Datum::Null,
                })
                .collect(),
        )),
        undecodable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    #[test]
    fn bulk_sql_turns_the_warm_query_into_a_correlated_subquery() {
        let rules = parse_file(
            Path::new("r.toml"),
            "[[rule]]\nname='c'\ntable='public.courses'\nstrategy='refresh'\n[rule.warm]\nkey='course:{id}'\n\
             query='SELECT row_to_json(c)::text FROM public.courses c WHERE c.id = $1'\nargs=['id']\n",
        )
        .unwrap();
        let (sql, count, cols) = bulk_sql(&rules[0], &[], Some("published"), true).unwrap();
        assert_eq!(
            count,
            "SELECT count(*) FROM \"public\".\"courses\" cw_row__ WHERE (published) AND (cw_row__.\"id\") > ($1)"
        );
        assert_eq!(cols, ["id"]);
        assert_eq!(
            sql,
            "SELECT cw_row__.\"id\"::text, (SELECT row_to_json(c)::text FROM public.courses c WHERE c.id = cw_row__.\"id\") \
             FROM \"public\".\"courses\" cw_row__ WHERE (published) AND (cw_row__.\"id\") > ($1) ORDER BY cw_row__.\"id\""
        );
    }
}
