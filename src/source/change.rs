//! The vocabulary every source speaks: [`Relation`], [`Datum`], [`Change`], [`Transaction`],
//! and [`Lsn`] (a WAL position: PostgreSQL's commit position, which Debezium events also carry in
//! `source.lsn`). Rules and planning depend on these types only, never on a wire protocol.
//! Values are kept in PostgreSQL's text form, made canonical by [`canonical_text`] so that a key
//! renders the same from any source.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A position in PostgreSQL's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Lsn {
    /// Appends the same text as `Display` (`16/B374D848`) without the formatting machinery:
    /// planning writes one into the reason of every distinct target.
    pub fn push_to(self, out: &mut String) {
        push_hex(out, self.0 >> 32);
        out.push('/');
        push_hex(out, self.0 & 0xffff_ffff);
    }
}

/// Upper-case hexadecimal without leading zeros (`0` for zero), as `{:X}` writes it.
fn push_hex(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789ABCDEF"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| d as char));
}

/// Error for a string that is not of the form `16/B374D848`.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// The kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}: expected insert, update, delete or truncate")]
pub struct UnknownOp(pub String);

impl FromStr for Op {
    type Err = UnknownOp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insert" => Ok(Op::Insert),
            "update" => Ok(Op::Update),
            "delete" => Ok(Op::Delete),
            "truncate" => Ok(Op::Truncate),
            other => Err(UnknownOp(other.to_string())),
        }
    }
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the table's replica identity (its key as carried in the WAL).
    pub is_key: bool,
}

/// A table as described by the source, with its columns in tuple order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// PostgreSQL's `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[cfg(test)]
impl Relation {
    /// A table for tests: `public.courses` (OID 1), REPLICA IDENTITY FULL, every column `text`,
    /// `id` the key.
    pub(crate) fn text_courses(columns: &[&str]) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "courses".into(),
            replica_identity: b'f',
            columns: columns
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_oid: 25,
                    is_key: *n == "id",
                })
                .collect(),
        })
    }
}

impl Relation {
    /// `schema.name`, the form rules use.
    pub fn qualified_name(&self) -> String {
        let mut s = String::with_capacity(self.schema.len() + 1 + self.name.len());
        s.push_str(&self.schema);
        s.push('.');
        s.push_str(&self.name);
        s
    }

    /// Whether `qualified` is this table's `schema.table`, without building that name.
    pub fn is_named(&self, qualified: &str) -> bool {
        qualified.len() == self.schema.len() + 1 + self.name.len()
            && qualified.starts_with(self.schema.as_str())
            && qualified[self.schema.len()..].starts_with('.')
            && qualified.ends_with(self.name.as_str())
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column value of a tuple as the source delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// The value in PostgreSQL's text output format.
    Text(String),
    /// A TOASTed value that the update did not change and the source did not resend.
    UnchangedToast,
    /// The source did not carry this column (e.g. a non-key column of a key-only old tuple).
    Unknown,
}

/// A row's values, one per column of its [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// A single committed row change (or a table truncation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub relation: Arc<Relation>,
    pub op: Op,
    /// The old row: full with REPLICA IDENTITY FULL, key columns only otherwise; absent on
    /// insert, and on an update that did not change the key.
    pub old: Option<Tuple>,
    /// The new row on insert and update.
    pub new: Option<Tuple>,
    /// A change that could not be decoded; planning invalidates every key family of its table.
    pub undecodable: Option<String>,
}

impl Change {
    /// Roughly how much memory the change holds: its values' text and a fixed overhead.
    pub fn approx_bytes(&self) -> usize {
        let tuple = |t: &Option<Tuple>| {
            t.as_ref().map_or(0, |t| {
                t.0.iter()
                    .map(|d| match d {
                        Datum::Text(s) => s.len() + 24,
                        _ => 24,
                    })
                    .sum()
            })
        };
        64 + tuple(&self.old) + tuple(&self.new) + self.undecodable.as_ref().map_or(0, String::len)
    }
}

/// A committed transaction: its changes in order, and where it ends in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the transaction is done.
    pub end_lsn: Lsn,
    pub commit_time: DateTime<Utc>,
    pub changes: Vec<Change>,
}

/// Well-known PostgreSQL type OIDs that rendering treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const JSON: u32 = 114;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;

    /// Whether values of this type compare as numbers in conditions.
    pub fn is_numeric(t: u32) -> bool {
        matches!(t, INT2 | INT4 | INT8 | OID | FLOAT4 | FLOAT8 | NUMERIC)
    }
}

/// The canonical text of a value, as keys embed it. The replication session runs with
/// `TimeZone=UTC` and `DateStyle=ISO`, so PostgreSQL's text output is already stable; on top:
/// booleans are `true`/`false`, timestamps are ISO 8601 (`2026-11-24T22:15:00.5Z` for
/// timestamptz, no zone for timestamp), `char(n)` loses its padding. Integers, numeric (with
/// its scale, like Django's `DecimalField`), uuid (lowercase), text and dates are unchanged.
pub fn canonical_text(type_oid: u32, text: String) -> String {
    match type_oid {
        oid::BOOL => match text.as_str() {
            "t" => "true".into(),
            "f" => "false".into(),
            _ => text,
        },
        oid::TIMESTAMPTZ | oid::TIMESTAMP if text.len() > 10 && text.as_bytes()[10] == b' ' => {
            let mut s = text;
            s.replace_range(10..11, "T");
            if type_oid == oid::TIMESTAMPTZ {
                if let Some(stripped) = s.strip_suffix("+00") {
                    s = format!("{stripped}Z");
                }
            }
            s
        }
        oid::BPCHAR => text.trim_end_matches(' ').to_string(),
        _ => text,
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a PostgreSQL timestamp (µs since 2000-01-01 UTC) to a `DateTime`.
pub fn pg_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_OFFSET_MICROS))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The current time as PostgreSQL microseconds since 2000-01-01 UTC.
pub fn pg_now_micros() -> i64 {
    Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_relation_knows_its_qualified_name_without_building_it() {
        let r = Relation::text_courses(&["id"]);
        assert_eq!(r.qualified_name(), "public.courses");
        assert!(r.is_named("public.courses"));
        for other in [
            "public.course",
            "publiccourses",
            "public_courses",
            "pub.courses",
            "",
            ".",
        ] {
            assert!(!r.is_named(other), "{other}");
        }
        let odd = Relation {
            schema: "a.b".into(),
            name: "c".into(),
            ..(*r).clone()
        };
        assert!(odd.is_named("a.b.c"));
        assert!(!odd.is_named("a.bxc"));
    }

    #[test]
    fn lsn_formats_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn canonical_values() {
        assert_eq!(canonical_text(oid::BOOL, "t".into()), "true");
        assert_eq!(canonical_text(oid::BOOL, "f".into()), "false");
        assert_eq!(
            canonical_text(oid::TIMESTAMPTZ, "2026-11-24 22:15:00.5+00".into()),
            "2026-11-24T22:15:00.5Z"
        );
        assert_eq!(
            canonical_text(oid::TIMESTAMP, "2026-11-24 22:15:00".into()),
            "2026-11-24T22:15:00"
        );
        assert_eq!(
            canonical_text(oid::TIMESTAMPTZ, "infinity".into()),
            "infinity"
        );
        assert_eq!(canonical_text(oid::BPCHAR, "ab  ".into()), "ab");
        assert_eq!(canonical_text(oid::NUMERIC, "10.50".into()), "10.50");
        assert_eq!(canonical_text(oid::UUID, "a0ee-bc".into()), "a0ee-bc");
    }

    proptest! {
        #[test]
        fn lsn_round_trips(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn lsn_push_to_writes_what_display_writes(v: u64, small in 0u64..70_000) {
            for lsn in [Lsn(v), Lsn(small), Lsn(small << 32)] {
                let mut s = String::from("lsn=");
                lsn.push_to(&mut s);
                prop_assert_eq!(s, format!("lsn={lsn}"));
            }
        }
    }
}
