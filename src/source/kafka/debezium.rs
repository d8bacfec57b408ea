//! Debezium change events (Kafka Connect's JSON converter) → [`Change`]s.
//!
//! [`decode`] reads one Kafka record — its key and value, each with or without the
//! `schema`/`payload` envelope — into the row vocabulary the rules speak, so planning never
//! learns about Kafka. It promises:
//!
//! * ops `c`/`r` (snapshot read) are inserts, `u` updates, `d` deletes, `t` truncates;
//!   tombstones, transaction markers and logical-decoding messages are skipped, not errors;
//! * values render exactly as the PostgreSQL source renders the same column ([`values`]);
//! * a key is never rendered from a filler: under REPLICA IDENTITY DEFAULT Debezium's `before`
//!   holds only the key columns and fills the others with type defaults. A `before` column is
//!   taken as real only when it is a key column (the record's key names them), the table is
//!   known (from the catalog) to be REPLICA IDENTITY FULL, or — identity unknown — its value
//!   cannot be a filler ([`values::may_be_filler`]). Otherwise it is [`Datum::Unknown`], and
//!   keys that need it widen to patterns, as with the PostgreSQL source;
//! * unknown fields (newer `source` blocks: `origin`, `origin_lsn`, snapshot markers
//!   `first`/`last`/`first_in_data_collection`/…) are ignored;
//! * anything else that cannot be read is a [`DecodeError`], naming the table when it is known
//!   so the caller can answer it with a conservative invalidation of that table.
//!
//! Pure: no I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::values::{self, FieldType, PgType};
use crate::source::{Change, Column, Datum, Lsn, Op, Relation, Tuple};

/// What the catalog knows of a table (when the worker's database has it): its replica
/// identity and column types. Schema-less events need it to read dates, decimals and
/// `char(n)`; every event uses it to know which `before` columns are real.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableHints {
    /// `relreplident`: `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: u8,
    pub columns: Vec<ColumnHint>,
}

/// One catalog column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnHint {
    pub name: String,
    pub pg: PgType,
    /// Part of the replica identity (the primary key or the identity index).
    pub is_key: bool,
}

/// Catalog knowledge by `schema.table`.
pub type Catalog = HashMap<String, TableHints>;

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Nothing to do: a tombstone, a transaction marker or a logical-decoding message.
    Skip(&'static str),
    Change(Box<Event>),
}

/// A row change and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub change: Change,
    /// `source.lsn`: the version warm writes are ordered by.
    pub lsn: Option<Lsn>,
    /// `source.txId`.
    pub txid: Option<u64>,
    /// When the change committed (`source.ts_ms`, else the event's `ts_ms`).
    pub committed: Option<DateTime<Utc>>,
}

/// Why a record cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a Debezium change event: {0}")]
    NotAChangeEvent(&'static str),
    #[error("unknown Debezium op {op:?} on {table}")]
    UnknownOp { table: String, op: String },
    #[error("{table}.{column}: {message}")]
    Value {
        table: String,
        column: String,
        message: String,
    },
}

impl DecodeError {
    /// The table the record was about, when that much could be read.
    pub fn table(&self) -> Option<&str> {
        match self {
            DecodeError::UnknownOp { table, .. } | DecodeError::Value { table, .. } => Some(table),
            _ => None,
        }
    }
}

/// The `payload` of an enveloped message, and the schema beside it.
fn unwrap(v: &Value) -> (Option<&Value>, &Value) {
    match v.as_object() {
        Some(o) if o.contains_key("payload") && o.contains_key("schema") => {
            (o.get("schema").filter(|s| !s.is_null()), &o["payload"])
        }
        _ => (None, v),
    }
}

/// The field types of a struct schema (`before`/`after` of a value, or a key).
fn field_types(schema: &Value) -> Vec<(String, FieldType)> {
    let Some(fields) = schema.get("fields").and_then(Value::as_array) else {
        return vec![];
    };
    fields
        .iter()
        .filter_map(|f| {
            let name = f.get("field")?.as_str()?.to_string();
            let scale = f
                .get("parameters")
                .and_then(|p| p.get("scale"))
                .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or(s.as_u64()))
                .map(|s| s as u32);
            Some((
                name,
                FieldType {
                    connect: f.get("type").and_then(Value::as_str).map(Into::into),
                    logical: f.get("name").and_then(Value::as_str).map(Into::into),
                    scale,
                    optional: Some(f.get("optional").and_then(Value::as_bool).unwrap_or(false)),
                    pg: None,
                },
            ))
        })
        .collect()
}

/// The row schema inside a value schema (its `before` or `after` field).
fn row_schema(schema: &Value) -> Option<&Value> {
    schema.get("fields")?.as_array()?.iter().find(|f| {
        matches!(
            f.get("field").and_then(Value::as_str),
            Some("after" | "before")
        )
    })
}

/// The key columns a record's key names.
fn key_columns(key: Option<&[u8]>) -> Option<BTreeSet<String>> {
    let v: Value = serde_json::from_slice(key?).ok()?;
    let (_, payload) = unwrap(&v);
    Some(payload.as_object()?.keys().cloned().collect())
}

/// Decodes one Kafka record. `key` and `value` are the raw bytes (`None`: absent).
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    catalog: &Catalog,
) -> Result<Decoded, DecodeError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(Decoded::Skip("tombstone"));
    };
    let v: Value = serde_json::from_slice(value).map_err(|e| DecodeError::Json(e.to_string()))?;
    let (schema, payload) = unwrap(&v);
    let Some(p) = payload.as_object() else {
        return Err(DecodeError::NotAChangeEvent("the payload is not an object"));
    };
    if p.contains_key("status") && p.contains_key("id") && !p.contains_key("op") {
        return Ok(Decoded::Skip("transaction marker"));
    }
    let op = p
        .get("op")
        .and_then(Value::as_str)
        .ok_or(DecodeError::NotAChangeEvent("no op"))?;
    let source = p
        .get("source")
        .and_then(Value::as_object)
        .ok_or(DecodeError::NotAChangeEvent("no source block"))?;
    if op == "m" {
        return Ok(Decoded::Skip("logical decoding message"));
    }
    let table_name = source
        .get("table")
        .and_then(Value::as_str)
        .ok_or(DecodeError::NotAChangeEvent("no source.table"))?;
    let schema_name = source
        .get("schema")
        .and_then(Value::as_str)
        .unwrap_or("public");
    let table = format!("{schema_name}.{table_name}");
    let op = match op {
        "c" | "r" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" => Op::Truncate,
        other => {
            return Err(DecodeError::UnknownOp {
                table,
                op: other.to_string(),
            })
        }
    };
    let hints = catalog.get(&table);
    let keys = key_columns(key).unwrap_or_else(|| {
        hints.map_or_else(BTreeSet::new, |h| {
            h.columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.clone())
                .collect()
        })
    });

    // Columns: the schema's order, else the catalog's, else as they appear.
    let mut columns: Vec<(String, FieldType)> = schema
        .and_then(row_schema)
        .map(field_types)
        .unwrap_or_default();
    if columns.is_empty() {
        if let Some(h) = hints {
            columns = h
                .columns
                .iter()
                .map(|c| (c.name.clone(), FieldType::default()))
                .collect();
        }
    }
    let rows = |k: &str| p.get(k).and_then(Value::as_object);
    let (before, after) = (rows("before"), rows("after"));
    for row in [after, before].into_iter().flatten() {
        for name in row.keys() {
            if !columns.iter().any(|(n, _)| n == name) {
                columns.push((name.clone(), FieldType::default()));
            }
        }
    }
    if let Some(h) = hints {
        for (name, t) in &mut columns {
            t.pg = h.columns.iter().find(|c| &c.name == name).map(|c| c.pg);
        }
    }
    let identity = hints.map(|h| h.replica_identity);
    let relation = Arc::new(Relation {
        oid: 0,
        schema: schema_name.to_string(),
        name: table_name.to_string(),
        replica_identity: identity.unwrap_or(b'd'),
        columns: columns
            .iter()
            .map(|(name, t)| Column {
                name: name.clone(),
                type_oid: values::type_oid(
                    t,
                    [after, before]
                        .into_iter()
                        .flatten()
                        .find_map(|r| r.get(name).filter(|v| !v.is_null()))
                        .unwrap_or(&Value::Null),
                ),
                is_key: keys.contains(name),
            })
            .collect(),
    });

    let render = |row: &Map<String, Value>, old: bool| -> Result<Tuple, DecodeError> {
        let mut out = Vec::with_capacity(columns.len());
        for ((name, t), col) in columns.iter().zip(&relation.columns) {
            let Some(v) = row.get(name) else {
                out.push(Datum::Unknown);
                continue;
            };
            let real = !old
                || col.is_key
                || match identity {
                    Some(b'f') => true,
                    Some(_) => false,
                    None => !values::may_be_filler(v, t),
                };
            if !real {
                out.push(Datum::Unknown);
                continue;
            }
            out.push(values::render(v, t).map_err(|e| DecodeError::Value {
                table: table.clone(),
                column: name.clone(),
                message: e.0,
            })?);
        }
        Ok(Tuple(out))
    };
    let old = before.map(|b| render(b, true)).transpose()?;
    let mut new = after.map(|a| render(a, false)).transpose()?;
    // An unchanged TOASTed value: the old row has it when the identity is FULL.
    if let (Some(n), Some(o)) = (&mut new, &old) {
        for (d, od) in n.0.iter_mut().zip(&o.0) {
            if *d == Datum::UnchangedToast {
                if let Datum::Text(t) = od {
                    *d = Datum::Text(t.clone());
                }
            }
        }
    }
    let old = match (op, old, &new) {
        (_, Some(o), _) => Some(o),
        // An update that did not change the key: the old key is the new one.
        (Op::Update, None, Some(n)) => Some(key_only(&relation, n)),
        // A delete without any old row (REPLICA IDENTITY NOTHING): nothing is known.
        (Op::Delete, None, _) => Some(Tuple(vec![Datum::Unknown; relation.columns.len()])),
        (_, None, _) => None,
    };
    if matches!(op, Op::Insert | Op::Update) && new.is_none() {
        return Err(DecodeError::NotAChangeEvent(
            "an insert or update without after",
        ));
    }
    let lsn = source.get("lsn").and_then(Value::as_u64).map(Lsn);
    let txid = source.get("txId").and_then(Value::as_u64);
    let committed = source
        .get("ts_ms")
        .or_else(|| p.get("ts_ms"))
        .and_then(Value::as_i64)
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    Ok(Decoded::Change(Box::new(Event {
        change: Change {
            relation: relation.clone(),
            op,
            old: if op == Op::Truncate { None } else { old },
            new: if op == Op::Truncate { None } else { new },
            undecodable: None,
        },
        lsn,
        txid,
        committed,
    })))
}

fn key_only(relation: &Relation, new: &Tuple) -> Tuple {
    Tuple(
        new.0
            .iter()
            .zip(&relation.columns)
            .map(|(d, c)| if c.is_key { d.clone() } else { Datum::Unknown })
            .collect(),
    )
}

/// A change that stands for a record of `table` that could not be decoded: planning answers
/// it by invalidating every key family of the table.
pub fn undecodable(table: &str, error: &DecodeError) -> Change {
    let (schema, name) = crate::sql::split_table(table);
    Change {
        relation: Arc::new(Relation {
            oid: 0,
            schema: schema.to_string(),
            name: name.to_string(),
            replica_identity: b'd',
            columns: vec![],
        }),
        // As the PostgreSQL source answers an undecodable change: like a truncation.
        op: Op::Truncate,
        old: None,
        new: None,
        undecodable: Some(error.to_string()),
    }
}

#[cfg(test)]
mod tests;
