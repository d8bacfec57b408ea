//! SQL text helpers shared by every module that builds statements: identifier and literal
//! quoting, and `schema.table` names. Pure.

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Splits `schema.table` (default schema `public`) into its parts.
pub fn split_table(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("public", name))
}

/// `"schema"."table"` for a rule's `schema.table`.
pub fn quote_table(name: &str) -> String {
    let (schema, table) = split_table(name);
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(split_table("courses"), ("public", "courses"));
        assert_eq!(quote_table("app.t"), "\"app\".\"t\"");
    }
}
