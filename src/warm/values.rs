//! How warming talks to PostgreSQL about values: arguments sent in text format (parsed by the
//! server as whatever type the parameter has, as psql would) and results taken as raw bytes
//! whatever their textual type.

use bytes::BytesMut;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

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
