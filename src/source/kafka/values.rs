//! Debezium's JSON value encodings, turned into the PostgreSQL text a key embeds.
//!
//! A rule must give the same key whichever source delivered the change, so every value is
//! rendered exactly as [`crate::source::canonical_text`] renders PostgreSQL's own text output
//! for the same column: a `numeric(10,2)` of 10.50 is `10.50` whether Debezium sent the
//! base64 unscaled integer of `decimal.handling.mode = precise`, the string of `string`, or
//! (when the column's scale is known from the catalog) the double of `double`; a `date` sent
//! as days since the epoch is `2026-12-01`; a `timestamptz` sent as Debezium's
//! `ZonedTimestamp` string is `2026-11-24T22:15:00.5Z`.
//!
//! What a value means comes from the event's own schema (the JSON converter with
//! `schemas.enable = true`: Connect type, logical name, decimal scale, optionality) or, for
//! schema-less events, from the catalog's column types ([`FieldType::pg`]); with neither, a
//! value is rendered from its JSON kind. Pure: no I/O.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use crate::source::{canonical_text, oid, Datum};

/// Debezium's placeholder for a TOASTed value the change did not carry.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// What is known of a column's type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldType {
    /// The Connect schema type (`int32`, `string`, `bytes`, …), when the event has a schema.
    pub connect: Option<String>,
    /// The schema's logical name (`io.debezium.time.Date`, `org.apache.kafka.connect.data.Decimal`, …).
    pub logical: Option<String>,
    /// A Connect `Decimal`'s scale parameter.
    pub scale: Option<u32>,
    /// Whether the schema marks the field optional (`None`: no schema).
    pub optional: Option<bool>,
    /// The column's PostgreSQL type, from the catalog.
    pub pg: Option<PgType>,
}

/// A column's type as the catalog knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    /// `numeric(p, s)`'s scale.
    pub scale: Option<u32>,
    /// Fractional-second precision of `time`/`timestamp`/`timestamptz` (`None`: 6).
    pub precision: Option<u32>,
}

/// A value that does not fit its declared type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn logical(t: &FieldType) -> &str {
    t.logical.as_deref().unwrap_or("")
}

/// The PostgreSQL type a column of this field type has (for rendering and comparisons).
pub fn type_oid(t: &FieldType, v: &Value) -> u32 {
    if let Some(pg) = t.pg {
        return pg.oid;
    }
    match logical(t) {
        "org.apache.kafka.connect.data.Decimal" | "io.debezium.data.VariableScaleDecimal" => {
            return oid::NUMERIC
        }
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => return oid::DATE,
        "io.debezium.time.Timestamp"
        | "io.debezium.time.MicroTimestamp"
        | "io.debezium.time.NanoTimestamp"
        | "org.apache.kafka.connect.data.Timestamp" => return oid::TIMESTAMP,
        "io.debezium.time.ZonedTimestamp" => return oid::TIMESTAMPTZ,
        "io.debezium.time.Time"
        | "io.debezium.time.MicroTime"
        | "io.debezium.time.NanoTime"
        | "org.apache.kafka.connect.data.Time" => return oid::TIME,
        "io.debezium.data.Uuid" => return oid::UUID,
        "io.debezium.data.Json" => return oid::JSON,
        _ => {}
    }
    match t.connect.as_deref() {
        Some("boolean") => oid::BOOL,
        Some("int8" | "int16") => oid::INT2,
        Some("int32") => oid::INT4,
        Some("int64") => oid::INT8,
        Some("float32") => oid::FLOAT4,
        Some("float64") => oid::FLOAT8,
        Some("bytes") => oid::BYTEA,
        Some(_) => oid::TEXT,
        None => match v {
            Value::Bool(_) => oid::BOOL,
            Value::Number(_) => oid::NUMERIC,
            _ => oid::TEXT,
        },
    }
}

/// Renders one value. `Datum::UnchangedToast` for Debezium's unavailable-value placeholder.
pub fn render(v: &Value, t: &FieldType) -> Result<Datum, ValueError> {
    if v.is_null() {
        return Ok(Datum::Null);
    }
    if is_unavailable(v) {
        return Ok(Datum::UnchangedToast);
    }
    let oid = type_oid(t, v);
    let text = match logical(t) {
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = t.scale.or(t.pg.and_then(|p| p.scale)).unwrap_or(0);
            match v {
                Value::String(s) => decimal_from_base64(s, scale)?,
                other => numeric_text(other, t)?,
            }
        }
        "io.debezium.data.VariableScaleDecimal" => {
            let scale = v
                .get("scale")
                .and_then(Value::as_u64)
                .ok_or_else(|| ValueError("VariableScaleDecimal without scale".into()))?;
            let value = v
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| ValueError("VariableScaleDecimal without value".into()))?;
            decimal_from_base64(value, scale as u32)?
        }
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => date(int(v)?)?,
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => {
            timestamp(int(v)?.checked_mul(1000).ok_or_else(|| range(v))?)?
        }
        "io.debezium.time.MicroTimestamp" => timestamp(int(v)?)?,
        "io.debezium.time.NanoTimestamp" => timestamp(int(v)?.div_euclid(1000))?,
        "io.debezium.time.ZonedTimestamp" => zoned_timestamp(str(v)?)?,
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => {
            time(int(v)?.checked_mul(1000).ok_or_else(|| range(v))?)?
        }
        "io.debezium.time.MicroTime" => time(int(v)?)?,
        "io.debezium.time.NanoTime" => time(int(v)?.div_euclid(1000))?,
        "io.debezium.data.Uuid" => str(v)?.to_ascii_lowercase(),
        _ if t.connect.is_some() => match (t.connect.as_deref(), v) {
            (Some("bytes"), Value::String(s)) => bytea(s)?,
            (_, other) => plain(other),
        },
        // No schema: what the catalog says the column is.
        _ => match t.pg.map(|p| p.oid) {
            Some(oid::NUMERIC) => numeric_text(v, t)?,
            Some(oid::DATE) if v.is_number() => date(int(v)?)?,
            Some(oid::TIMESTAMP) if v.is_number() => timestamp(micros(v, t)?)?,
            Some(oid::TIMESTAMPTZ) if v.is_string() => zoned_timestamp(str(v)?)?,
            Some(oid::TIME) if v.is_number() => time(micros(v, t)?)?,
            Some(oid::BYTEA) if v.is_string() => bytea(str(v)?)?,
            _ => plain(v),
        },
    };
    Ok(Datum::Text(canonical_text(oid, text)))
}

/// Whether `v` is Debezium's unavailable-TOAST placeholder (as text, or as bytes in base64).
pub fn is_unavailable(v: &Value) -> bool {
    match v {
        Value::String(s) => s == UNAVAILABLE || s == "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
        Value::Array(items) => items.len() == 1 && is_unavailable(&items[0]),
        _ => false,
    }
}

/// Whether a `before` value may be a filler rather than the row's value: under REPLICA
/// IDENTITY DEFAULT Debezium sends only the key columns of the old row and fills the others
/// with null (optional fields) or the type's default (`""`, `0`, `false`, `"AA=="`, the epoch).
/// A field the schema marks optional is filled with null only, so a non-null value of it is
/// real.
pub fn may_be_filler(v: &Value, t: &FieldType) -> bool {
    match v {
        Value::Null => true,
        _ if t.optional == Some(true) => false,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            s.is_empty()
                || s == "AA=="
                || s.parse::<f64>().is_ok_and(|f| f == 0.0)
                || DateTime::parse_from_rfc3339(s).is_ok_and(|d| d.timestamp_micros() == 0)
                || s.starts_with("00:00:00")
        }
        Value::Object(o) => o.get("value").and_then(Value::as_str) == Some("AA==") || o.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Bool(b) => if *b { "true" } else { "false" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn range(v: &Value) -> ValueError {
    ValueError(format!("{v} is out of range"))
}

fn int(v: &Value) -> Result<i64, ValueError> {
    v.as_i64()
        .ok_or_else(|| ValueError(format!("expected an integer, got {v}")))
}

fn str(v: &Value) -> Result<&str, ValueError> {
    v.as_str()
        .ok_or_else(|| ValueError(format!("expected a string, got {v}")))
}

/// A schema-less time value: Debezium's adaptive precision sends milliseconds for precision
/// 0–3 and microseconds for 4–6 (the default).
fn micros(v: &Value, t: &FieldType) -> Result<i64, ValueError> {
    let n = int(v)?;
    match t.pg.and_then(|p| p.precision) {
        Some(p) if p <= 3 => n.checked_mul(1000).ok_or_else(|| range(v)),
        _ => Ok(n),
    }
}

/// A numeric sent as a string (`decimal.handling.mode = string`), a double (`double`: the
/// catalog's scale restores the trailing zeros), or base64 without a schema (`precise`, scale
/// from the catalog).
fn numeric_text(v: &Value, t: &FieldType) -> Result<String, ValueError> {
    let scale = t.scale.or(t.pg.and_then(|p| p.scale));
    match v {
        Value::String(s) if looks_decimal(s) => Ok(s.clone()),
        Value::String(s) => decimal_from_base64(s, scale.unwrap_or(0)),
        Value::Number(n) => match (scale, n.as_f64()) {
            (Some(s), Some(f)) if !n.is_i64() || s > 0 => Ok(format!("{f:.*}", s as usize)),
            _ => Ok(n.to_string()),
        },
        other => Ok(plain(other)),
    }
}

fn looks_decimal(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().filter(|b| *b == b'.').count() <= 1
        || matches!(s, "NaN" | "Infinity" | "-Infinity")
}

fn decode_base64(s: &str) -> Result<Vec<u8>, ValueError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ValueError(format!("invalid base64 {s:?}: {e}")))
}

/// PostgreSQL's hex output of a `bytea`.
fn bytea(s: &str) -> Result<String, ValueError> {
    let bytes = decode_base64(s)?;
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// A Connect `Decimal`: a big-endian two's-complement unscaled integer, and the scale.
pub fn decimal_from_base64(s: &str, scale: u32) -> Result<String, ValueError> {
    Ok(decimal_text(&decode_base64(s)?, scale))
}

fn decimal_text(bytes: &[u8], scale: u32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement: invert and add one.
        for b in &mut magnitude {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by ten of the base-256 number.
    let mut digits = Vec::new();
    let mut n: Vec<u8> = magnitude;
    while n.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in &mut n {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    let scale = scale as usize;
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let mut out = String::with_capacity(digits.len() + 2);
    if negative {
        out.push('-');
    }
    let point = digits.len() - scale;
    out.push_str(std::str::from_utf8(&digits[..point]).unwrap_or("0"));
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[point..]).unwrap_or(""));
    }
    out
}

fn date(days: i64) -> Result<String, ValueError> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let d = chrono::Duration::try_days(days)
        .and_then(|d| epoch.checked_add_signed(d))
        .ok_or_else(|| ValueError(format!("date {days} is out of range")))?;
    Ok(d.format("%Y-%m-%d").to_string())
}

/// Seconds and a fraction as PostgreSQL prints them: microseconds, trailing zeros dropped.
fn fraction(micros: u32) -> String {
    if micros == 0 {
        return String::new();
    }
    let f = format!(".{micros:06}");
    f.trim_end_matches('0').to_string()
}

/// A timestamp without time zone from microseconds since the epoch, as `canonical_text`
/// renders PostgreSQL's (`2026-01-02T03:04:05.123456`).
fn timestamp(micros: i64) -> Result<String, ValueError> {
    let t = DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| ValueError(format!("timestamp {micros} is out of range")))?;
    Ok(format!(
        "{}{}",
        t.format("%Y-%m-%d %H:%M:%S"),
        fraction(t.timestamp_subsec_micros())
    ))
}

/// Debezium's `ZonedTimestamp` (ISO 8601 with an offset) as PostgreSQL prints a
/// `timestamptz` in UTC.
fn zoned_timestamp(s: &str) -> Result<String, ValueError> {
    if matches!(s, "infinity" | "-infinity") {
        return Ok(s.to_string());
    }
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| ValueError(format!("invalid ZonedTimestamp {s:?}: {e}")))?
        .with_timezone(&Utc);
    Ok(format!(
        "{}{}+00",
        t.format("%Y-%m-%d %H:%M:%S"),
        fraction(t.timestamp_subsec_micros())
    ))
}

fn time(micros: i64) -> Result<String, ValueError> {
    if !(0..=86_400_000_000).contains(&micros) {
        return Err(ValueError(format!("time {micros} is out of range")));
    }
    let secs = micros / 1_000_000;
    Ok(format!(
        "{:02}:{:02}:{:02}{}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        fraction((micros % 1_000_000) as u32)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema(connect: &str, logical: Option<&str>, scale: Option<u32>) -> FieldType {
        FieldType {
            connect: Some(connect.into()),
            logical: logical.map(Into::into),
            scale,
            optional: Some(false),
            pg: None,
        }
    }

    fn text(v: Value, t: &FieldType) -> String {
        match render(&v, t).unwrap() {
            Datum::Text(s) => s,
            other => panic!("{other:?}"),
        }
    }

    const DECIMAL: Option<&str> = Some("org.apache.kafka.connect.data.Decimal");

    #[test]
    fn decimals_keep_their_scale() {
        let t = schema("bytes", DECIMAL, Some(2));
        assert_eq!(text(json!("BBo="), &t), "10.50"); // 1050
        assert_eq!(text(json!("AA=="), &t), "0.00");
        assert_eq!(text(json!("/rc="), &t), "-3.29"); // -329
        assert_eq!(text(json!("AQ=="), &schema("bytes", DECIMAL, Some(0))), "1");
        let vsd = FieldType {
            logical: Some("io.debezium.data.VariableScaleDecimal".into()),
            ..schema("struct", None, None)
        };
        assert_eq!(text(json!({"scale": 1, "value": "Ag=="}), &vsd), "0.2");
    }

    #[test]
    fn schema_less_numerics_use_the_catalog_scale() {
        let t = FieldType {
            pg: Some(PgType {
                oid: oid::NUMERIC,
                scale: Some(2),
                precision: None,
            }),
            ..FieldType::default()
        };
        assert_eq!(text(json!("10.50"), &t), "10.50"); // string mode
        assert_eq!(text(json!(10.5), &t), "10.50"); // double mode
        assert_eq!(text(json!("BBo="), &t), "10.50"); // precise without schema
        assert_eq!(text(json!(10.5), &FieldType::default()), "10.5"); // no knowledge: scale lost
    }

    #[test]
    fn times_render_like_postgres() {
        let date = schema("int32", Some("io.debezium.time.Date"), None);
        assert_eq!(text(json!(20788), &date), "2026-12-01");
        let micro = schema("int64", Some("io.debezium.time.MicroTimestamp"), None);
        assert_eq!(
            text(json!(1_767_323_045_123_456_i64), &micro),
            "2026-01-02T03:04:05.123456"
        );
        let milli = schema("int64", Some("io.debezium.time.Timestamp"), None);
        assert_eq!(
            text(json!(1_767_323_045_500_i64), &milli),
            "2026-01-02T03:04:05.5"
        );
        let zoned = schema("string", Some("io.debezium.time.ZonedTimestamp"), None);
        assert_eq!(
            text(json!("2026-11-24T22:15:00.500000Z"), &zoned),
            "2026-11-24T22:15:00.5Z"
        );
        assert_eq!(
            text(json!("2026-11-24T23:15:00+01:00"), &zoned),
            "2026-11-24T22:15:00Z"
        );
        let t = schema("int64", Some("io.debezium.time.MicroTime"), None);
        assert_eq!(text(json!(3_723_000_100_i64), &t), "01:02:03.0001");
    }

    #[test]
    fn other_types() {
        assert_eq!(text(json!(true), &schema("boolean", None, None)), "true");
        assert_eq!(text(json!("AP8="), &schema("bytes", None, None)), "\\x00ff");
        let uuid = schema("string", Some("io.debezium.data.Uuid"), None);
        assert_eq!(text(json!("A0EE-BC"), &uuid), "a0ee-bc");
        let bpchar = FieldType {
            pg: Some(PgType {
                oid: oid::BPCHAR,
                ..PgType::default()
            }),
            ..schema("string", None, None)
        };
        assert_eq!(text(json!("AB    "), &bpchar), "AB");
        assert_eq!(
            render(&json!(UNAVAILABLE), &schema("string", None, None)),
            Ok(Datum::UnchangedToast)
        );
        assert_eq!(
            render(&Value::Null, &schema("string", None, None)),
            Ok(Datum::Null)
        );
        assert!(render(
            &json!("x"),
            &schema("int32", Some("io.debezium.time.Date"), None)
        )
        .is_err());
    }

    #[test]
    fn fillers() {
        let required = schema("string", None, None);
        let optional = FieldType {
            optional: Some(true),
            ..required.clone()
        };
        for v in [
            json!(""),
            json!(0),
            json!(false),
            json!("AA=="),
            Value::Null,
        ] {
            assert!(may_be_filler(&v, &required), "{v}");
        }
        assert!(may_be_filler(&Value::Null, &optional));
        assert!(!may_be_filler(&json!(""), &optional));
        assert!(!may_be_filler(&json!("x"), &required));
        assert!(!may_be_filler(&json!(7), &FieldType::default()));
        assert!(may_be_filler(&json!("1970-01-01T00:00:00Z"), &required));
    }

    proptest! {
        #[test]
        fn decimals_round_trip(unscaled: i64, scale in 0u32..12) {
            let bytes = unscaled.to_be_bytes();
            let text = decimal_text(&bytes, scale);
            let digits = text.replace(['.', '-'], "");
            let back: i128 = digits.parse().unwrap();
            prop_assert_eq!(if text.starts_with('-') { -back } else { back }, i128::from(unscaled));
            prop_assert_eq!(text.split('.').nth(1).map_or(0, str::len), scale as usize);
        }
    }
}
