//! The SQL a bulk warm reads with: every row of a rule's table (or the author's set-based
//! `bulk_query`), key columns first, in key order, optionally after a resume point and under an
//! operator's `--where`. Pure.

use super::WarmError;
use crate::rules::{Rule, Strategy};
use crate::sql::{quote_ident, split_table};

/// ` WHERE …` for a bulk read: the user's `--where`, and when resuming, key columns after the
/// last key written (`$1..$n`). Empty when there is neither.
fn where_clause(key_cols: &[String], where_sql: Option<&str>, after: bool) -> String {
    let mut conds = Vec::new();
    if let Some(w) = where_sql {
        conds.push(format!("({w})"));
    }
    if after {
        let params: Vec<String> = (1..=key_cols.len()).map(|i| format!("${i}")).collect();
        conds.push(format!(
            "({}) > ({})",
            key_cols.join(", "),
            params.join(", ")
        ));
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// The SQL that reads every row of a rule for bulk warming: the key columns and args as text,
/// then the value — the warm query as a correlated subquery (refresh) or every column as text
/// (write-through, rendered as JSON like the worker does).
pub(super) fn bulk_sql(
    rule: &Rule,
    columns: &[String],
    where_sql: Option<&str>,
    after: bool,
) -> Result<(String, String, Vec<String>), WarmError> {
    let warm = rule.warm.as_ref().ok_or(WarmError::NotWarm)?;
    let (schema, table) = split_table(&rule.table);
    let q = |c: &str| quote_ident(c);
    // Key columns first (what the key template needs), in a stable order.
    let mut key_cols: Vec<String> = Vec::new();
    let names = warm
        .key
        .value
        .fields()
        .map(|(_, c)| c)
        .chain(warm.args.iter().map(|a| a.value.as_str()));
    for c in names {
        if !key_cols.iter().any(|k| k == c) {
            key_cols.push(c.to_string());
        }
    }
    let mut select: Vec<String> = key_cols
        .iter()
        .map(|c| format!("cw_row__.{}::text", q(c)))
        .collect();
    if let (Some(bulk), Strategy::Refresh) = (&warm.bulk_query, rule.strategy) {
        // The author's set-based query: key columns by name, the value last.
        let names: Vec<String> = key_cols.iter().map(|c| q(c)).collect();
        let cols: Vec<String> = key_cols
            .iter()
            .map(|c| format!("b.{}::text", q(c)))
            .collect();
        let order: Vec<String> = key_cols.iter().map(|c| format!("b.{}", q(c))).collect();
        let from = format!(
            "FROM ({}) AS b({}, cw_value){}",
            bulk.value.trim().trim_end_matches(';'),
            names.join(", "),
            where_clause(&order, where_sql, after)
        );
        let sql = format!(
            "SELECT {}, b.cw_value {from} ORDER BY {}",
            cols.join(", "),
            order.join(", ")
        );
        return Ok((sql, format!("SELECT count(*) {from}"), key_cols));
    }
    match (&warm.query, rule.strategy) {
        (Some(query), Strategy::Refresh) => {
            let mut sub = query.value.clone();
            for (i, a) in warm.args.iter().enumerate().rev() {
                sub = sub.replace(&format!("${}", i + 1), &format!("cw_row__.{}", q(&a.value)));
            }
            select.push(format!("({sub})"));
        }
        _ => {
            for c in columns {
                select.push(format!("cw_row__.{}::text", q(c)));
            }
        }
    }
    let pk: Vec<String> = key_cols
        .iter()
        .map(|c| format!("cw_row__.{}", q(c)))
        .collect();
    let from = format!(
        "FROM {}.{} cw_row__{}",
        q(schema),
        q(table),
        where_clause(&pk, where_sql, after)
    );
    let sql = format!(
        "SELECT {} {from} ORDER BY {}",
        select.join(", "),
        pk.join(", ")
    );
    Ok((sql, format!("SELECT count(*) {from}"), key_cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    #[test]
    fn bulk_sql_turns_the_warm_query_into_a_correlated_subquery() {
        let rules = parse_file(
            Path::new("r.toml"),
            "[[rule]]\nname='c'\ntable='public.courses'\nstrategy='refresh'\n[rule.warm]\nkey='course:{id}'\n\
             query='SELECT row_to_json(c)::text FROM public.courses c WHERE c.id = $1'\nargs=['id']\n",
        )
        .unwrap();
        let (sql, count, cols) = bulk_sql(&rules[0], &[], Some("published"), true).unwrap();
        assert_eq!(
            count,
            "SELECT count(*) FROM \"public\".\"courses\" cw_row__ WHERE (published) AND (cw_row__.\"id\") > ($1)"
        );
        assert_eq!(cols, ["id"]);
        assert_eq!(
            sql,
            "SELECT cw_row__.\"id\"::text, (SELECT row_to_json(c)::text FROM public.courses c WHERE c.id = cw_row__.\"id\") \
             FROM \"public\".\"courses\" cw_row__ WHERE (published) AND (cw_row__.\"id\") > ($1) ORDER BY cw_row__.\"id\""
        );
    }
}
