//! Dry runs: which keys would a change invalidate, and why (or why not)?
//!
//! `cachewarden explain --event FILE` reads the project's own event JSON and prints, for each
//! rule on the event's table, whether it fires and the exact keys and patterns it would
//! invalidate, including skipped keys with their reason. Everything here is pure: the same
//! rendering code the worker uses runs against a [`Change`] built from the JSON.
//!
//! Event format (one object, or an array of them):
//! ```json
//! {"table": "public.courses", "op": "update",
//!  "old": {"id": 42, "slug": "rust-101"}, "new": {"id": 42, "slug": "rust-102"}}
//! ```
//! Values are rendered canonically, as the worker renders them (`true`, numbers as written,
//! `null` → NULL).
//! On update, a missing `old` means the source did not carry the old row (REPLICA IDENTITY
//! DEFAULT): old-row values are then unknown and keys that need them widen to patterns.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::rules::{RuleSet, Verdict};
use crate::source::{oid, Change, Column, Datum, Op, Relation, Tuple};

/// An event as users write it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    pub table: String,
    pub op: Op,
    #[serde(default)]
    pub old: Option<Map<String, Value>>,
    #[serde(default)]
    pub new: Option<Map<String, Value>>,
}

/// Errors reading an event file.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("invalid event JSON at line {line}, column {col}: {message}")]
    Json {
        line: usize,
        col: usize,
        message: String,
    },
    #[error("event {index}: {message}")]
    Invalid { index: usize, message: String },
}

/// Why a Debezium event cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebeziumError {
    #[error("unknown Debezium op {0:?}")]
    UnknownOp(String),
    #[error("Debezium event without source.table")]
    NoTable,
}

/// Reads a Debezium change event (with or without the `schema`/`payload` envelope) as an
/// [`EventJson`]; `None` when the value is not one.
pub fn from_debezium(value: &Value) -> Option<Result<EventJson, DebeziumError>> {
    let payload = value
        .get("payload")
        .filter(|p| p.is_object())
        .unwrap_or(value);
    let source = payload.get("source")?.as_object()?;
    let op = payload.get("op")?.as_str()?;
    let op = match op {
        "c" | "r" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" => Op::Truncate,
        other => return Some(Err(DebeziumError::UnknownOp(other.to_string()))),
    };
    let schema = source
        .get("schema")
        .and_then(Value::as_str)
        .unwrap_or("public");
    let Some(table) = source.get("table").and_then(Value::as_str) else {
        return Some(Err(DebeziumError::NoTable));
    };
    let row = |k: &str| payload.get(k).and_then(Value::as_object).cloned();
    Some(Ok(EventJson {
        table: format!("{schema}.{table}"),
        op,
        old: row("before"),
        new: row("after"),
    }))
}

fn parse_one(value: Value, index: usize) -> Result<EventJson, EventError> {
    if let Some(ev) = from_debezium(&value) {
        return ev.map_err(|e| EventError::Invalid {
            index,
            message: e.to_string(),
        });
    }
    serde_json::from_value(value).map_err(|e| EventError::Invalid {
        index,
        message: format!(
            "{e} (expected {{\"table\", \"op\", \"old\", \"new\"}} or a Debezium change event)"
        ),
    })
}

/// Parses one event object or an array of them, in the project's format or Debezium's.
pub fn parse_events(text: &str) -> Result<Vec<EventJson>, EventError> {
    let json_err = |e: serde_json::Error| EventError::Json {
        line: e.line(),
        col: e.column(),
        message: e.to_string(),
    };
    let value: Value = serde_json::from_str(text).map_err(json_err)?;
    let events: Vec<EventJson> = match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_one(v, i))
            .collect::<Result<_, _>>()?,
        other => vec![parse_one(other, 0)?],
    };
    for (index, e) in events.iter().enumerate() {
        let need = match e.op {
            Op::Insert => e.new.is_none().then_some("an insert needs \"new\""),
            Op::Update => e.new.is_none().then_some("an update needs \"new\""),
            Op::Delete => e.old.is_none().then_some("a delete needs \"old\""),
            Op::Truncate => None,
        };
        if let Some(message) = need {
            return Err(EventError::Invalid {
                index,
                message: message.into(),
            });
        }
    }
    Ok(events)
}

fn to_datum(v: &Value) -> Datum {
    match v {
        Value::Null => Datum::Null,
        Value::Bool(b) => Datum::Text(if *b { "true" } else { "false" }.into()),
        Value::Number(n) => Datum::Text(n.to_string()),
        Value::String(s) => Datum::Text(s.clone()),
        other => Datum::Text(other.to_string()),
    }
}

impl EventJson {
    /// Builds the [`Change`] the source would have produced.
    pub fn to_change(&self) -> Change {
        let (schema, name) = crate::sql::split_table(&self.table);
        let mut names: Vec<&String> = Vec::new();
        for row in [&self.old, &self.new].into_iter().flatten() {
            for k in row.keys() {
                if !names.contains(&k) {
                    names.push(k);
                }
            }
        }
        let relation = Arc::new(Relation {
            oid: 0,
            schema: schema.to_string(),
            name: name.to_string(),
            replica_identity: if self.old.is_some() { b'f' } else { b'd' },
            columns: names
                .iter()
                .map(|n| Column {
                    name: n.to_string(),
                    type_oid: [&self.new, &self.old]
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.get(n.as_str()))
                        .find(|v| !v.is_null())
                        .map_or(oid::TEXT, |v| match v {
                            Value::Bool(_) => oid::BOOL,
                            Value::Number(_) => oid::NUMERIC,
                            _ => oid::TEXT,
                        }),
                    is_key: n.as_str() == "id",
                })
                .collect(),
        });
        let tuple = |row: &Map<String, Value>| {
            Tuple(
                names
                    .iter()
                    .map(|n| row.get(n.as_str()).map_or(Datum::Unknown, to_datum))
                    .collect(),
            )
        };
        let new = self.new.as_ref().map(tuple);
        let old = match (&self.old, self.op) {
            (Some(o), _) => Some(tuple(o)),
            // The WAL's view of an update without an old tuple: only the key is known.
            (None, Op::Update) => Some(Tuple(vec![Datum::Unknown; names.len()])),
            (None, _) => None,
        };
        Change {
            relation,
            op: self.op,
            old,
            new,
            undecodable: None,
        }
    }
}

/// One rule's outcome for an event.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    pub rule: String,
    pub defined_at: String,
    pub fires: bool,
    /// Why the rule did not fire, when it did not.
    pub reason: Option<String>,
    /// `(kind, text)`: kind is key, pattern, tag, tag-pattern, bump or bump-pattern.
    pub targets: Vec<(&'static str, String)>,
    pub skipped: Vec<String>,
}

impl RuleOutcome {
    /// The targets of one kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| t.as_str())
            .collect()
    }
}

/// The explanation of one event.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub table: String,
    pub op: Op,
    pub rules: Vec<RuleOutcome>,
}

/// Explains one event against the rules. Pure.
pub fn explain(rules: &RuleSet, prefix: &str, event: &EventJson) -> Explanation {
    let change = event.to_change();
    let table = change.relation.qualified_name();
    let mut out = Vec::new();
    for rule in rules.for_table(&table) {
        let mut o = RuleOutcome {
            rule: rule.name.clone(),
            defined_at: rule.at.to_string(),
            fires: false,
            reason: None,
            targets: vec![],
            skipped: vec![],
        };
        match rule.verdict(&change) {
            v @ (Verdict::Fires | Verdict::FiresWholeFamily) => {
                o.fires = true;
                let out = crate::plan::rule_targets(
                    rule,
                    &change,
                    prefix,
                    v == Verdict::FiresWholeFamily,
                );
                for (t, _) in out.targets {
                    let line = (t.kind(), t.text().to_string());
                    if !o.targets.contains(&line) {
                        o.targets.push(line);
                    }
                }
                o.skipped = out.skipped;
            }
            Verdict::OpNotSelected(op) => {
                let ops: Vec<&str> = Op::ALL
                    .iter()
                    .filter(|o| rule.ops.contains(&(**o).into()))
                    .map(|o| o.as_str())
                    .collect();
                o.reason = Some(format!("{op} is not in ops = [{}]", ops.join(", ")));
            }
            Verdict::OnlyIgnoredChanged => {
                let cols: Vec<&str> = rule
                    .ignore_changed
                    .iter()
                    .map(|c| c.value.as_str())
                    .collect();
                o.reason = Some(format!(
                    "only ignore_changed = [{}] columns changed",
                    cols.join(", ")
                ));
            }
            Verdict::ConditionFalse => {
                o.reason = Some(format!(
                    "when = {:?} is false",
                    rule.when.as_ref().map_or("", |w| w.value.source.as_str())
                ));
            }
            Verdict::NothingWatchedChanged => {
                let cols: Vec<&str> = rule.changed.iter().map(|c| c.value.as_str()).collect();
                o.reason = Some(format!("none of changed = [{}] changed", cols.join(", ")));
            }
        }
        out.push(o);
    }
    Explanation {
        table,
        op: event.op,
        rules: out,
    }
}

/// Human-readable rendering of explanations.
pub fn render_text(explanations: &[Explanation]) -> String {
    let mut s = String::new();
    for e in explanations {
        let _ = writeln!(s, "event: {} {}", e.op, e.table);
        if e.rules.is_empty() {
            let _ = writeln!(s, "  no rule watches {}", e.table);
        }
        for r in &e.rules {
            match &r.reason {
                None => {
                    let _ = writeln!(s, "  rule {} ({}): fires", r.rule, r.defined_at);
                }
                Some(why) => {
                    let _ = writeln!(
                        s,
                        "  rule {} ({}): does not fire: {why}",
                        r.rule, r.defined_at
                    );
                }
            }
            for (kind, t) in &r.targets {
                let _ = writeln!(s, "    {kind:<8} {t}");
            }
            for k in &r.skipped {
                let _ = writeln!(s, "    skipped  {k}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    fn rules() -> RuleSet {
        RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                "[[rule]]\nname='c'\ntable='public.courses'\nchanged=['slug']\n\
                 keys=['course:{id}','slug:{old.slug}','slug:{new.slug}']\n",
            )
            .unwrap(),
        )
    }

    #[test]
    fn explains_an_update() {
        let ev = &parse_events(
            r#"{"table":"courses","op":"update","old":{"id":1,"slug":"a"},"new":{"id":1,"slug":"b"}}"#,
        )
        .unwrap()[0];
        let text = render_text(&[explain(&rules(), ":1:", ev)]);
        assert!(text.contains("rule c (r.toml:1:1): fires"), "{text}");
        assert!(text.contains("key      :1:course:1\n"), "{text}");
        assert!(text.contains("key      :1:slug:a\n"), "{text}");
        assert!(text.contains("key      :1:slug:b\n"), "{text}");
    }

    #[test]
    fn explains_why_not() {
        let ev = &parse_events(
            r#"[{"table":"courses","op":"update","old":{"id":1,"slug":"a"},"new":{"id":1,"slug":"a"}}]"#,
        )
        .unwrap()[0];
        let e = explain(&rules(), "", ev);
        assert_eq!(
            e.rules[0].reason.as_deref(),
            Some("none of changed = [slug] changed")
        );
    }

    #[test]
    fn update_without_old_row_widens_old_keys() {
        let ev = &parse_events(r#"{"table":"courses","op":"update","new":{"id":1,"slug":"b"}}"#)
            .unwrap()[0];
        let e = explain(&rules(), "", ev);
        assert_eq!(e.rules[0].of_kind("pattern"), ["slug:*"]);
    }

    #[test]
    fn reads_debezium_events() {
        let text = r#"{"schema": {}, "payload": {
            "before": {"id": 1, "slug": "a"}, "after": {"id": 1, "slug": "b"},
            "source": {"connector": "postgresql", "schema": "public", "table": "courses"},
            "op": "u", "ts_ms": 1}}"#;
        let ev = &parse_events(text).unwrap()[0];
        assert_eq!((ev.table.as_str(), ev.op), ("public.courses", Op::Update));
        let e = explain(&rules(), "", ev);
        assert_eq!(e.rules[0].of_kind("key"), ["course:1", "slug:a", "slug:b"]);
        let bare = r#"{"before": null, "after": {"id": 2, "slug": "c"},
                       "source": {"schema": "public", "table": "courses"}, "op": "c"}"#;
        assert_eq!(parse_events(bare).unwrap()[0].op, Op::Insert);
    }

    #[test]
    fn bad_events_are_clear_errors() {
        assert!(parse_events("{")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse_events(r#"{"table":"t","op":"upsert"}"#).is_err());
        assert!(parse_events(r#"{"table":"t","op":"delete"}"#)
            .unwrap_err()
            .to_string()
            .contains("needs \"old\""));
    }
}
