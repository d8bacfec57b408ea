//! Input shapes the OpenAPI document allows and serde alone would refuse: JSON Schema counts
//! `15.0` as an integer, so integer fields accept a number with no fractional part.

use serde::{Deserialize, Deserializer};

/// An optional integer written as `15` or `15.0` (null or absent: `None`).
pub fn int_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<serde_json::Number>::deserialize(d)?;
    let Some(n) = v else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Ok(Some(f as i64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "{n}: expected an integer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::int_like")]
        n: Option<i64>,
    }

    fn n(json: &str) -> Result<Option<i64>, serde_json::Error> {
        serde_json::from_str::<T>(json).map(|t| t.n)
    }

    #[test]
    fn integers_may_be_written_as_whole_floats() {
        assert_eq!(n(r#"{"n": 15}"#).unwrap(), Some(15));
        assert_eq!(n(r#"{"n": 15141805.0}"#).unwrap(), Some(15141805));
        assert_eq!(n(r#"{"n": -3}"#).unwrap(), Some(-3));
        assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(n("{}").unwrap(), None);
        assert!(n(r#"{"n": 1.5}"#).is_err());
        assert!(n(r#"{"n": 1e300}"#).is_err());
        assert!(n(r#"{"n": "7"}"#).is_err());
        assert!(n(r#"{"n": 18446744073709551615}"#).is_err());
    }
}
