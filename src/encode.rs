//! The write-through encoding: a changed row as the JSON object `write-through` rules write
//! (numbers, booleans and null typed by column type, everything else as strings). Pure; used by
//! planning for changes and by bulk warming for rows read with SQL, so both write the same bytes.

use crate::source::{oid, Change, Datum};

/// A change's new row as a JSON object, typed by column type (numbers, booleans, null,
/// strings) — the value `write-through` writes.
pub fn row_json(change: &Change) -> Option<String> {
    let row = change.new.as_ref()?;
    let mut map = serde_json::Map::new();
    for (c, d) in change.relation.columns.iter().zip(row.0.iter()) {
        let v = match d {
            Datum::Null => serde_json::Value::Null,
            Datum::Text(t) if c.type_oid == oid::BOOL => serde_json::Value::Bool(t == "true"),
            Datum::Text(t) if oid::is_numeric(c.type_oid) => {
                serde_json::from_str::<serde_json::Number>(t)
                    .map(serde_json::Value::Number)
                    .unwrap_or_else(|_| serde_json::Value::String(t.clone()))
            }
            Datum::Text(t) => serde_json::Value::String(t.clone()),
            // A value the WAL did not carry: the row cannot be rendered faithfully.
            Datum::Unknown | Datum::UnchangedToast => return None,
        };
        map.insert(c.name.clone(), v);
    }
    Some(serde_json::Value::Object(map).to_string())
}
