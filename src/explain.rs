//! Dry runs: which keys would a change invalidate, and why (or why not)?
//!
//! `cachewarden explain --event FILE` reads events and prints, for each
//! rule on the event's table, whether it fires and the exact keys and patterns it would
//! invalidate, including skipped keys with their reason. Everything here is pure: the same
//! rendering code the worker uses runs against a [`Change`] built from the JSON.
//!
//! A file holds one event, an array of them, or a sequence (JSON Lines). An event is a
//! Debezium change event (with or without the `schema`/`payload` envelope, decoded by the
//! Kafka source's own decoder, so the keys are the worker's), a Kafka record holding one
//! (`{"topic", "key", "value"}` with the raw key and value), or the project's format:
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
use crate::source::kafka::debezium::Decoded;
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

/// One event to explain: a row change, whichever format it was written in.
#[derive(Debug, Clone)]
pub struct Event {
    pub table: String,
    pub op: Op,
    pub change: Change,
}

impl From<EventJson> for Event {
    fn from(e: EventJson) -> Self {
        Event {
            change: e.to_change(),
            table: e.table,
            op: e.op,
        }
    }
}

/// A Kafka record as the fixtures hold it (`{"topic", "key", "value"}`) or as `kcat -J` prints
/// it (`{"topic", "partition", "offset", "key", "payload"}`): key and value as raw strings (or
/// as JSON).
type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

fn kafka_record(value: &Value) -> Option<RawRecord> {
    let o = value.as_object()?;
    if o.contains_key("op") {
        return None;
    }
    // kcat's payload is the record's value as a string; a Debezium envelope's is an object.
    let field = if o.contains_key("value") && !o.contains_key("payload") {
        "value"
    } else if o.contains_key("topic")
        && matches!(o.get("payload"), Some(Value::String(_) | Value::Null))
    {
        "payload"
    } else {
        return None;
    };
    let bytes = |k: &str| match o.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone().into_bytes()),
        Some(other) => Some(other.to_string().into_bytes()),
    };
    Some((bytes("key"), bytes(field)))
}

/// Reads one item: the project's format, a Debezium change event (with or without the
/// `schema`/`payload` envelope), or a Kafka record holding one. `None`: nothing to explain
/// (a tombstone, a transaction marker).
fn parse_one(value: Value, index: usize) -> Result<Option<Event>, EventError> {
    let invalid = |message: String| EventError::Invalid { index, message };
    let debezium =
        |key: Option<&[u8]>, value: Option<&[u8]>| match crate::source::kafka::debezium::decode(
            key,
            value,
            &Default::default(),
        ) {
            Ok(Decoded::Skip(_)) => Ok(None),
            Ok(Decoded::Change(e)) => Ok(Some(Event {
                table: e.change.relation.qualified_name(),
                op: e.change.op,
                change: e.change,
            })),
            Err(e) => Err(invalid(e.to_string())),
        };
    if let Some((key, val)) = kafka_record(&value) {
        return debezium(key.as_deref(), val.as_deref());
    }
    let payload = value
        .get("payload")
        .filter(|p| p.is_object())
        .unwrap_or(&value);
    if payload.get("source").is_some() && payload.get("op").is_some() {
        return debezium(None, Some(value.to_string().as_bytes()));
    }
    let event: EventJson = serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            "{e} (expected {{\"table\", \"op\", \"old\", \"new\"}}, a Debezium change event or a Kafka record {{\"key\", \"value\"}})"
        ))
    })?;
    let need = match event.op {
        Op::Insert => event.new.is_none().then_some("an insert needs \"new\""),
        Op::Update => event.new.is_none().then_some("an update needs \"new\""),
        Op::Delete => event.old.is_none().then_some("a delete needs \"old\""),
        Op::Truncate => None,
    };
    if let Some(message) = need {
        return Err(invalid(message.into()));
    }
    Ok(Some(event.into()))
}

/// Parses events: one object, an array of them, or a sequence of them (JSON Lines), each in
/// the project's format, Debezium's, or a Kafka record's.
pub fn parse_events(text: &str) -> Result<Vec<Event>, EventError> {
    let json_err = |e: serde_json::Error| EventError::Json {
        line: e.line(),
        col: e.column(),
        message: e.to_string(),
    };
    let mut items = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value.map_err(json_err)? {
            Value::Array(list) => items.extend(list),
            other => items.push(other),
        }
    }
    let mut events = Vec::new();
    for (index, v) in items.into_iter().enumerate() {
        events.extend(parse_one(v, index)?);
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
pub fn explain(rules: &RuleSet, prefix: &str, event: &Event) -> Explanation {
    let change = &event.change;
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
        match rule.verdict(change) {
            v @ (Verdict::Fires | Verdict::FiresWholeFamily) => {
                o.fires = true;
                let out =
                    crate::plan::rule_targets(rule, change, prefix, v == Verdict::FiresWholeFamily);
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
