//! What a key of a warm rule should hold now, read from the database the way bulk warming
//! reads (the warm query as a correlated subquery for `refresh`, the row as JSON for
//! `write-through`) for the one row the key names. The consistency probe compares the cache
//! with it.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::bulk::RowRender;
use super::bulk_sql::bulk_sql;
use super::values::TextArg;
use super::WarmError;
use crate::catalog::TableInfo;
use crate::rules::Rule;
use crate::sql::quote_ident;

/// What the database says a key should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The value a warm would write now.
    Value(Vec<u8>),
    /// No row renders this key (or its value is NULL): the key should not be cached.
    Nothing,
    /// The key cannot be traced back to one row (not of the rule's warm key, or ambiguous).
    Unknown,
}

/// The value `key` (under `key_prefix`) of `rule` should hold, with the session in UTC and ISO
/// dates (as bulk warming sets it).
pub async fn expected_value(
    client: &Client,
    rule: &Rule,
    info: &TableInfo,
    key: &str,
    key_prefix: &str,
) -> Result<Expected, WarmError> {
    let warm = rule.warm.as_ref().ok_or(WarmError::NotWarm)?;
    let Some(fields) = warm.key.value.parse_key(key, key_prefix) else {
        return Ok(Expected::Unknown);
    };
    // One row through the per-row path: the author's set-based query cannot be narrowed.
    let mut per_row = rule.clone();
    if let Some(w) = per_row.warm.as_mut() {
        if w.query.is_some() {
            w.bulk_query = None;
        } else if w.bulk_query.is_some() {
            return Ok(Expected::Unknown);
        }
    }
    let condition = fields
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("cw_row__.{}::text = ${}", quote_ident(c), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let (sql, _, key_cols) = bulk_sql(&per_row, &info.columns, Some(&condition), false)?;
    let args: Vec<TextArg<'_>> = fields.iter().map(|(_, v)| TextArg(Some(v))).collect();
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&sql, &params).await?;
    let render = RowRender::new(&per_row, info, &key_cols)?;
    for row in &rows {
        if let (_, Some((k, v))) = render.render(row, key_prefix) {
            if k == key {
                return Ok(Expected::Value(v));
            }
        }
    }
    Ok(Expected::Nothing)
}
