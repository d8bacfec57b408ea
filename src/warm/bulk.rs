//! Bulk warming: fill every key of a rule from the database (`cachewarden warm`,
//! `warm_on_start`). Rows stream in key order and are rendered exactly as the worker renders
//! decoded changes; reading and writing overlap through a small bounded queue. All writes share
//! one version taken before the read's snapshot (see [`crate::fence`]), so a change the read
//! may miss is newer and wins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::bulk_sql::bulk_sql;
use super::values::{RawValue, TextArg};
use super::WarmError;
use crate::encode::row_json;
use crate::fence::{rule_mark_key, rule_max_mark_key, Version};
use crate::rules::{Rule, Strategy};
use crate::sql::split_table;
use crate::target::CacheTarget;

/// Progress of a bulk warm, for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub written: u64,
    pub elapsed: Duration,
}

/// Fills every key of `rule` from the database: streams rows in key order, renders keys,
/// writes values with compare-and-set in pipelines of `chunk`. Resumes after `resume_from`
/// (the key columns of the last row written) when given. Returns the last key columns written.
#[allow(clippy::too_many_arguments)]
pub async fn bulk_warm(
    client: &Client,
    cache: &mut dyn CacheTarget,
    rule: &Rule,
    key_prefix: &str,
    where_sql: Option<&str>,
    resume_from: Option<Vec<String>>,
    chunk: usize,
    mut progress: impl FnMut(Progress, &[String]),
) -> Result<Progress, WarmError> {
    let catalog = crate::catalog::load_catalog(client, std::slice::from_ref(&rule.table)).await?;
    let info = catalog
        .get(&rule.table)
        .ok_or_else(|| WarmError::NoTable(rule.table.clone()))?;
    let (sql, count_sql, key_cols) =
        bulk_sql(rule, &info.columns, where_sql, resume_from.is_some())?;
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .await?;
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
        .await?;
    let version: String = row.get(0);
    let in_progress: Vec<String> = row.get(1);
    let version = Version(
        version
            .parse()
            .map_err(|_| WarmError::BadPosition(version))?,
    );
    let settle = Instant::now();
    while !in_progress.is_empty() && settle.elapsed() < Duration::from_secs(2) {
        let settled: bool = client
            .query_one(
                "SELECT coalesce(bool_and(pg_xact_status(x::xid8) = 'aborted' \
                     OR pg_visible_in_snapshot(x::xid8, pg_current_snapshot())), true) \
                 FROM unnest($1::text[]) AS x",
                &[&in_progress],
            )
            .await?
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
    let total: i64 = client.query_one(&count_sql, &params).await?.get(0);
    let started = Instant::now();
    let mut p = Progress {
        total: total.max(0) as u64,
        ..Progress::default()
    };
    let rows = client.query_raw(&sql, params.iter().copied()).await?;
    futures_util::pin_mut!(rows);
    let rule_mark = rule_mark_key(key_prefix, &rule.name);
    let rule_max_mark = rule_max_mark_key(key_prefix, &rule.name);
    let render = RowRender::new(rule, info, &key_cols)?;
    type Chunk = (Vec<(String, Vec<u8>)>, u64, Vec<String>);
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let reader = async {
        let mut buf: Vec<(String, Vec<u8>)> = Vec::with_capacity(chunk);
        let mut read = 0u64;
        let mut last: Vec<String> = Vec::new();
        while let Some(row) = rows.next().await {
            let row = row?;
            let (keys, rendered) = render.render(&row, key_prefix);
            last = keys;
            if let Some(kv) = rendered {
                buf.push(kv);
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
        Ok::<(), WarmError>(())
    };
    let writer = async {
        while let Some((buf, read, last)) = rx.recv().await {
            p.written += cache
                .write_versioned_bulk(
                    &buf,
                    version,
                    rule.ttl,
                    key_prefix,
                    &rule_mark,
                    &rule_max_mark,
                )
                .await?;
            p.done += read;
            p.elapsed = started.elapsed();
            progress(p, &last);
        }
        Ok::<(), WarmError>(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r?;
    w?;
    p.elapsed = started.elapsed();
    Ok(p)
}

/// Turns a row of [`bulk_sql`]'s query into the key and value the worker would write for it,
/// exactly as it renders decoded changes.
pub(super) struct RowRender<'a> {
    rule: &'a Rule,
    warm: &'a crate::rules::Warm,
    key_cols: usize,
    key_relation: Arc<crate::source::Relation>,
    row_relation: Arc<crate::source::Relation>,
}

impl<'a> RowRender<'a> {
    /// For `rule`'s rows of the table `info` describes, key columns `key_cols` first.
    pub(super) fn new(
        rule: &'a Rule,
        info: &crate::catalog::TableInfo,
        key_cols: &[String],
    ) -> Result<Self, WarmError> {
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
        Ok(RowRender {
            rule,
            warm: rule.warm.as_ref().ok_or(WarmError::NotWarm)?,
            key_cols: key_cols.len(),
            key_relation,
            row_relation,
        })
    }

    /// The row's key columns (as text) and, when it renders to a key with a value, the key
    /// under `key_prefix` and the value.
    pub(super) fn render(
        &self,
        row: &tokio_postgres::Row,
        key_prefix: &str,
    ) -> (Vec<String>, Option<(String, Vec<u8>)>) {
        let keys: Vec<Option<String>> = (0..self.key_cols)
            .map(|i| row.get::<_, Option<String>>(i))
            .collect();
        let value: Option<Vec<u8>> = if self.rule.strategy == Strategy::Refresh {
            row.get::<_, Option<RawValue>>(self.key_cols).map(|v| v.0)
        } else {
            let vals: Vec<Option<String>> =
                (self.key_cols..row.len()).map(|i| row.get(i)).collect();
            row_json(&row_change(&self.row_relation, vals)).map(String::into_bytes)
        };
        let last = keys.iter().map(|k| k.clone().unwrap_or_default()).collect();
        let change = row_change(&self.key_relation, keys);
        let rendered = match (
            self.warm
                .key
                .value
                .render(&crate::rules::RowView::new(&change), key_prefix),
            value,
        ) {
            (crate::rules::Rendered::Key(k), Some(v)) => Some((k, v)),
            _ => None,
        };
        (last, rendered)
    }
}

/// A relation of `cols` with their types, for rendering rows read by SQL like decoded ones.
fn relation_of(table: &str, cols: &[(String, u32)]) -> Arc<crate::source::Relation> {
    let (schema, name) = split_table(table);
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
