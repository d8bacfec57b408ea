//! Semantic checks of a rule set against the database schema.
//!
//! [`load_catalog`] ([`crate::catalog`]) reads what the rules need to know about their tables
//! (columns, replica identity); [`check`] is pure and reports unknown tables and columns, and
//! rules that read old-row columns the table's REPLICA IDENTITY does not carry, with the exact
//! `ALTER TABLE … REPLICA IDENTITY FULL` that fixes them.

use std::collections::{BTreeSet, HashMap};

use super::{Diagnostic, Location, RuleSet, Severity, Side};
pub use crate::catalog::{load_catalog, names_by_oid, primary_keys, table_oids, TableInfo};
use crate::source::Op;

/// Prepares every `[rule.warm] query` to report SQL errors, wrong placeholder counts and
/// result shapes before the worker runs it. Needs a database connection.
pub async fn check_queries(client: &tokio_postgres::Client, rules: &RuleSet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        let Some(q) = rule.warm.as_ref().and_then(|w| w.query.as_ref()) else {
            continue;
        };
        match client.prepare(&q.value).await {
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string());
                out.push(diag(
                    &q.at,
                    Severity::Error,
                    format!("rule {:?}: warm query does not prepare: {msg}", rule.name),
                ));
            }
            Ok(st) if st.columns().len() != 1 => out.push(diag(
                &q.at,
                Severity::Error,
                format!(
                    "rule {:?}: the warm query must return one column (the value), not {}",
                    rule.name,
                    st.columns().len()
                ),
            )),
            Ok(_) => {}
        }
    }
    out
}

/// Keyspace passes per hour from which a rule's patterns are worth a warning.
const FREQUENT_PASSES_PER_HOUR: i64 = 60;

/// Warns about rules whose patterns fire often, from what the journal recorded over the last
/// hour: each firing costs a pass over the whole Redis database, and a family that changes
/// this often is better served by tags or a bump. Nothing to say before there is a journal.
pub async fn check_pattern_costs(
    client: &tokio_postgres::Client,
    rules: &RuleSet,
) -> Vec<Diagnostic> {
    let names: Vec<&str> = rules
        .rules
        .iter()
        .filter(|r| !r.patterns.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(rows) = client
        .query(
            "SELECT rule_name, count(*) FROM cache_invalidations \
             WHERE rule_name = ANY($1) AND kind IN ('pattern', 'patterns') \
               AND created_at > now() - interval '1 hour' GROUP BY 1",
            &[&names],
        )
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in rows {
        let (name, passes): (String, i64) = (row.get(0), row.get(1));
        let Some(rule) = rules.rules.iter().find(|r| r.name == name) else {
            continue;
        };
        if passes >= FREQUENT_PASSES_PER_HOUR {
            out.push(diag(
                &rule.patterns[0].at,
                Severity::Warning,
                format!(
                    "rule {name:?}: its patterns cost {passes} passes over the whole Redis \
                     keyspace in the last hour (the journal's count); for a key family that \
                     changes this often prefer tags or a bump, which cost what they touch"
                ),
            ));
        }
    }
    out
}

fn diag(at: &Location, severity: Severity, message: String) -> Diagnostic {
    Diagnostic {
        at: at.clone(),
        severity,
        message,
    }
}

/// Checks every rule against the catalog. Pure.
pub fn check(rules: &RuleSet, catalog: &HashMap<String, TableInfo>) -> Vec<Diagnostic> {
    check_with(rules, catalog, false)
}

/// [`check`]; with `tables_elsewhere` (the Kafka source: the changes may come from another
/// database than the worker's), a table missing from the catalog is a warning, not an error.
pub fn check_with(
    rules: &RuleSet,
    catalog: &HashMap<String, TableInfo>,
    tables_elsewhere: bool,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        let Some(info) = catalog.get(&rule.table) else {
            if tables_elsewhere {
                out.push(diag(
                    &rule.table_at,
                    Severity::Warning,
                    format!(
                        "rule {:?}: table {} is not in the [postgres] database: its columns and \
                         types come from the events alone (enable the JSON converter's schemas \
                         for dates and decimals, and use REPLICA IDENTITY FULL for old-row keys)",
                        rule.name, rule.table
                    ),
                ));
                continue;
            }
            out.push(diag(
                &rule.table_at,
                Severity::Error,
                format!("rule {:?}: table {} does not exist", rule.name, rule.table),
            ));
            continue;
        };
        let unknown_column = |col: &str, at: &Location| {
            diag(
                at,
                Severity::Error,
                format!(
                    "rule {:?}: column {col:?} does not exist in {} (columns: {})",
                    rule.name,
                    rule.table,
                    info.columns.join(", ")
                ),
            )
        };
        let warm_args = rule.warm.iter().flat_map(|w| w.args.iter());
        for c in rule
            .changed
            .iter()
            .chain(rule.ignore_changed.iter())
            .chain(warm_args)
        {
            if !info.columns.contains(&c.value) {
                out.push(unknown_column(&c.value, &c.at));
            }
        }
        let fires_on_delete = rule.ops.contains(&Op::Delete.into());
        let needs_old =
            |side: Side| side == Side::Old || (side == Side::Current && fires_on_delete);
        if let Some(when) = &rule.when {
            let type_of = |name: &str| info.column_index(name).map(|i| info.types[i]);
            if let Err(e) = when.value.check(&type_of) {
                out.push(diag(
                    &when.at,
                    Severity::Error,
                    format!("rule {:?}: when = {:?}: {e}", rule.name, when.value.source),
                ));
            }
            for (side, col, _) in when.value.columns() {
                if info.column_index(col).is_some()
                    && needs_old(side)
                    && !info.identity_columns.contains(col)
                {
                    out.push(diag(
                        &when.at,
                        Severity::Error,
                        format!(
                            "rule {:?}: when reads old.{col}, but {}'s REPLICA IDENTITY ({}) does not carry it, \
                             so the condition can never be evaluated; fix with: ALTER TABLE {} REPLICA IDENTITY FULL;",
                            rule.name,
                            rule.table,
                            identity_name(info.replica_identity),
                            rule.table
                        ),
                    ));
                }
            }
        }
        for t in rule.all_templates() {
            for (side, col) in t.value.fields() {
                if !info.columns.iter().any(|c| c == col) {
                    out.push(unknown_column(col, &t.at));
                    continue;
                }
                let reads_old = needs_old(side);
                if reads_old && !info.identity_columns.contains(col) {
                    let why = if side == Side::Old {
                        format!("{{old.{col}}}")
                    } else {
                        format!("{{{col}}} on delete")
                    };
                    out.push(diag(
                        &t.at,
                        Severity::Error,
                        format!(
                            "rule {:?}: {why} reads the old row, but {}'s REPLICA IDENTITY ({}) \
                             does not carry column {col:?}; fix with: ALTER TABLE {} REPLICA IDENTITY FULL;",
                            rule.name,
                            rule.table,
                            identity_name(info.replica_identity),
                            rule.table
                        ),
                    ));
                }
            }
        }
        out.extend(bare_placeholder_warnings(rule, info));
        if !rule.changed.is_empty() && info.replica_identity != 'f' {
            let missing: Vec<&str> = rule
                .changed
                .iter()
                .map(|c| c.value.as_str())
                .filter(|c| !info.identity_columns.contains(*c))
                .collect();
            if !missing.is_empty() {
                out.push(diag(
                    &rule.changed[0].at,
                    Severity::Warning,
                    format!(
                        "rule {:?}: changed = [...] cannot see old values of {} without REPLICA \
                         IDENTITY FULL, so every update fires; fix with: ALTER TABLE {} REPLICA IDENTITY FULL;",
                        rule.name,
                        missing.join(", "),
                        rule.table
                    ),
                ));
            }
        }
    }
    out
}

/// A bare `{col}` renders the new row on update: when `col` itself changes, the key of the old
/// value is never invalidated. Warns for bare placeholders of columns outside the row's key
/// (which an update does not change in practice), unless the rule also renders `{old.col}`.
fn bare_placeholder_warnings(rule: &super::Rule, info: &TableInfo) -> Vec<Diagnostic> {
    if !rule.ops.is_empty() && !rule.ops.contains(&Op::Update.into()) {
        return Vec::new();
    }
    let key: &BTreeSet<String> =
        &if info.replica_identity == 'f' || info.identity_columns.is_empty() {
            info.primary_key.iter().cloned().collect()
        } else {
            info.identity_columns.clone()
        };
    let renders_old: BTreeSet<&str> = rule
        .all_templates()
        .flat_map(|t| t.value.fields())
        .filter(|(side, _)| *side == Side::Old)
        .map(|(_, c)| c)
        .collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for t in rule.all_templates() {
        for (side, col) in t.value.fields() {
            if side != Side::Current
                || key.contains(col)
                || renders_old.contains(col)
                || !info.columns.iter().any(|c| c == col)
                || !seen.insert((t.value.source.clone(), col.to_string()))
            {
                continue;
            }
            let old = t
                .value
                .source
                .replace(&format!("{{{col}}}"), &format!("{{old.{col}}}"));
            let new = t
                .value
                .source
                .replace(&format!("{{{col}}}"), &format!("{{new.{col}}}"));
            out.push(diag(
                &t.at,
                Severity::Warning,
                format!(
                    "rule {:?}: {{{col}}} in {:?} reads the new row on update, so when {col} changes \
                     the key of its old value stays cached; use both \"{old}\" and \"{new}\"",
                    rule.name, t.value.source
                ),
            ));
        }
    }
    out
}

fn identity_name(c: char) -> &'static str {
    match c {
        'f' => "FULL",
        'n' => "NOTHING",
        'i' => "USING INDEX",
        _ => "DEFAULT, the primary key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    fn rules(text: &str) -> RuleSet {
        RuleSet::new(parse_file(Path::new("r.toml"), text).unwrap())
    }

    fn catalog(ident: char) -> HashMap<String, TableInfo> {
        let cols = ["id", "slug", "title"];
        HashMap::from([(
            "public.courses".to_string(),
            TableInfo {
                oid: 1,
                columns: cols.iter().map(|s| s.to_string()).collect(),
                types: vec![
                    crate::source::oid::INT4,
                    crate::source::oid::TEXT,
                    crate::source::oid::TEXT,
                ],
                typmods: vec![-1; 3],
                identity_columns: if ident == 'f' {
                    cols.iter().map(|s| s.to_string()).collect()
                } else {
                    BTreeSet::from(["id".to_string()])
                },
                replica_identity: ident,
                primary_key: vec!["id".to_string()],
            },
        )])
    }

    #[test]
    fn unknown_table_and_column_are_errors() {
        let r = rules("[[rule]]\nname='a'\ntable='nope'\nkeys=['k:{id}']\n");
        let d = check(&r, &catalog('d'));
        assert!(
            d[0].to_string().starts_with("r.toml:3:7: error:"),
            "{}",
            d[0]
        );
        let r = rules("[[rule]]\nname='a'\ntable='courses'\nkeys=['k:{titel}']\n");
        let d = check(&r, &catalog('f'));
        assert!(
            d[0].message.contains("\"titel\" does not exist"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn old_columns_outside_replica_identity_print_the_fix() {
        let r = rules("[[rule]]\nname='a'\ntable='courses'\nkeys=['s:{old.slug}', 'c:{id}']\n");
        let d = check(&r, &catalog('d'));
        assert_eq!(d.len(), 1);
        assert!(d[0]
            .message
            .contains("ALTER TABLE public.courses REPLICA IDENTITY FULL;"));
        assert!(check(&r, &catalog('f')).is_empty());
        // {slug} on delete reads the old row too.
        let r = rules("[[rule]]\nname='a'\ntable='courses'\nops=['delete']\nkeys=['s:{slug}']\n");
        assert_eq!(check(&r, &catalog('d')).len(), 1);
    }

    #[test]
    fn conditions_are_type_checked() {
        let r =
            rules("[[rule]]\nname='a'\ntable='courses'\nkeys=['c:{id}']\nwhen='new.slug > 3'\n");
        let d = check(&r, &catalog('f'));
        assert!(d[0].to_string().starts_with("r.toml:5:6: error: rule \"a\": when = \"new.slug > 3\": cannot compare text with a number"), "{}", d[0]);
        let r = rules(
            "[[rule]]\nname='a'\ntable='courses'\nkeys=['c:{id}']\nwhen='old.slug != new.slug'\n",
        );
        assert!(check(&r, &catalog('d'))[0]
            .message
            .contains("REPLICA IDENTITY FULL"));
        assert!(check(&r, &catalog('f')).is_empty());
        let r = rules("[[rule]]\nname='a'\ntable='courses'\ntags=['t:{nope}']\n");
        assert!(check(&r, &catalog('f'))[0]
            .message
            .contains("\"nope\" does not exist"));
    }

    #[test]
    fn changed_without_full_identity_warns() {
        let r = rules("[[rule]]\nname='a'\ntable='courses'\nchanged=['title']\nops=['update']\nkeys=['c:{id}']\n");
        let d = check(&r, &catalog('d'));
        assert_eq!(d[0].severity, Severity::Warning);
    }

    #[test]
    fn a_bare_placeholder_of_a_column_that_can_change_warns_with_the_fix() {
        let r =
            rules("[[rule]]\nname='w'\ntable='courses'\nkeys=['widget-name:{slug}', 'c:{id}']\n");
        let d = check(&r, &catalog('f'));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].severity, Severity::Warning);
        assert!(
            d[0].message
                .contains("use both \"widget-name:{old.slug}\" and \"widget-name:{new.slug}\""),
            "{}",
            d[0].message
        );
        // Handled: the rule renders the old value too; or the rule never sees updates.
        let r = rules("[[rule]]\nname='w'\ntable='courses'\nkeys=['w:{slug}', 'w:{old.slug}']\n");
        assert!(check(&r, &catalog('f')).is_empty());
        let r = rules("[[rule]]\nname='w'\ntable='courses'\nops=['insert']\nkeys=['w:{slug}']\n");
        assert!(check(&r, &catalog('f')).is_empty());
    }
}
