//! The rule registry: `cache_configs` (one row per rule, kept in step with the rule files) and
//! `cachewarden_slots` (the rule files each slot's active instance runs).
//!
//! At start the worker upserts every loaded rule by its unique name (key patterns, TTL,
//! strategy, table, file) without touching `is_active`, which belongs to operators. Rows of rules
//! that no longer exist are left alone so their metrics history stays attached.

use tokio_postgres::Client;

use crate::rules::RuleSet;

/// The `key_pattern` column for a rule: its keys, patterns, tags and bumps, comma-separated.
pub fn key_pattern(rule: &crate::rules::Rule) -> String {
    rule.all_templates()
        .map(|t| t.value.source.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upserts every rule into `cache_configs` in one statement; returns rows inserted or changed.
pub async fn sync(client: &Client, rules: &RuleSet) -> Result<u64, tokio_postgres::Error> {
    let mut names = Vec::new();
    let mut tables = Vec::new();
    let mut patterns = Vec::new();
    let mut ttls: Vec<Option<i32>> = Vec::new();
    let mut strategies = Vec::new();
    let mut files = Vec::new();
    for r in &rules.rules {
        names.push(r.name.clone());
        tables.push(r.table.clone());
        patterns.push(key_pattern(r));
        ttls.push(r.ttl.map(|t| i32::try_from(t).unwrap_or(i32::MAX)));
        strategies.push(r.strategy.as_str().to_string());
        files.push(r.at.file.display().to_string());
    }
    client
        .execute(
            "INSERT INTO cache_configs (name, table_name, key_pattern, ttl, strategy, rule_file) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[]) \
             ON CONFLICT (name) DO UPDATE SET \
                 table_name = EXCLUDED.table_name, key_pattern = EXCLUDED.key_pattern, \
                 ttl = EXCLUDED.ttl, strategy = EXCLUDED.strategy, rule_file = EXCLUDED.rule_file, \
                 updated_at = now(), updated_by = 'rule file' \
             WHERE (cache_configs.table_name, cache_configs.key_pattern, cache_configs.ttl, \
                    cache_configs.strategy, cache_configs.rule_file) \
                   IS DISTINCT FROM (EXCLUDED.table_name, EXCLUDED.key_pattern, EXCLUDED.ttl, \
                    EXCLUDED.strategy, EXCLUDED.rule_file)",
            &[&names, &tables, &patterns, &ttls, &strategies, &files],
        )
        .await
}

/// The rule files of a directory, by file name, as recorded in `cachewarden_slots`.
pub fn rule_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                if let (Some(name), Ok(text)) = (
                    p.file_name().map(|n| n.to_string_lossy().into_owned()),
                    std::fs::read_to_string(&p),
                ) {
                    out.insert(name, text);
                }
            }
        }
    }
    out
}

/// The rule files recorded for `slot`, if any.
pub async fn slot_rules(
    client: &Client,
    slot: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, tokio_postgres::Error> {
    let v: Option<serde_json::Value> = client
        .query_opt(
            "SELECT rules FROM cachewarden_slots WHERE slot = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// Records the rule files `slot` runs from now on; returns the ones recorded before, if any.
pub async fn swap_slot_rules(
    client: &Client,
    slot: &str,
    files: &std::collections::BTreeMap<String, String>,
) -> Result<Option<std::collections::BTreeMap<String, String>>, tokio_postgres::Error> {
    let json = serde_json::to_value(files).unwrap_or_default();
    let before: Option<serde_json::Value> = client
        .query_opt(
            "SELECT rules FROM cachewarden_slots WHERE slot = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    client
        .execute(
            "INSERT INTO cachewarden_slots (slot, rules) VALUES ($1, $2) \
             ON CONFLICT (slot) DO UPDATE SET rules = EXCLUDED.rules, updated_at = now()",
            &[&slot, &json],
        )
        .await?;
    Ok(before.and_then(|v| serde_json::from_value(v).ok()))
}

/// Parses recorded rule files into a rule set; `None` if any no longer parses.
pub fn parse_recorded(files: &std::collections::BTreeMap<String, String>) -> Option<RuleSet> {
    let mut rules = Vec::new();
    for (name, text) in files {
        rules.extend(crate::rules::parse_file(std::path::Path::new(name), text).ok()?);
    }
    Some(RuleSet::new(rules))
}

/// The table identities recorded for `slot`: rule table name → OID.
pub async fn slot_tables(
    client: &Client,
    slot: &str,
) -> Result<std::collections::HashMap<String, u32>, tokio_postgres::Error> {
    let v: Option<serde_json::Value> = client
        .query_opt(
            "SELECT tables FROM cachewarden_slots WHERE slot = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    Ok(v.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default())
}

/// Records the table identities `slot`'s rules name (rule table name → OID).
pub async fn record_slot_tables(
    client: &Client,
    slot: &str,
    tables: &std::collections::HashMap<u32, String>,
) -> Result<(), tokio_postgres::Error> {
    let by_name: std::collections::BTreeMap<&str, u32> = tables
        .iter()
        .map(|(oid, name)| (name.as_str(), *oid))
        .collect();
    let json = serde_json::to_value(by_name).unwrap_or_default();
    client
        .execute(
            "UPDATE cachewarden_slots SET tables = $2, updated_at = now() WHERE slot = $1",
            &[&slot, &json],
        )
        .await?;
    Ok(())
}
