//! The rule registry in `cache_configs`: one row per rule, kept in step with the rule files.
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
                 updated_at = now() \
             WHERE (cache_configs.table_name, cache_configs.key_pattern, cache_configs.ttl, \
                    cache_configs.strategy, cache_configs.rule_file) \
                   IS DISTINCT FROM (EXCLUDED.table_name, EXCLUDED.key_pattern, EXCLUDED.ttl, \
                    EXCLUDED.strategy, EXCLUDED.rule_file)",
            &[&names, &tables, &patterns, &ttls, &strategies, &files],
        )
        .await
}
