//! The optimization advisor (`cachewarden advise`, `GET /api/v1/advice`): gathers figures from
//! the journal (what each rule invalidated, how often each key, by pattern or by key),
//! `cache_metrics` (the families' memory), Redis (which key templates the application actually
//! caches, the keyspace, memory against `maxmemory`) and the rules, then [`suggest`] turns them
//! into suggestions, each with the figures behind it and the exact rule-file change.
//!
//! * `suggest` — the judgement, pure.

mod suggest;

use std::collections::HashMap;

use serde::Serialize;

pub use suggest::{render_text, suggest, Suggestion};

use crate::config::Config;
use crate::monitor::families::Families;
use crate::rules::RuleSet;
use crate::target::{CacheTarget, Targets};

/// Figures about one key template of a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateFigures {
    pub template: String,
    /// Keys of the template's family in Redis (estimated unless `exact`).
    pub key_count: u64,
    pub exact: bool,
    /// Keys the scan saw, and the keyspace's size then.
    pub scanned: u64,
    pub total: u64,
}

/// Figures about one rule over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFigures {
    pub name: String,
    pub table: String,
    /// `file:line`.
    pub at: String,
    /// Switched on in `cache_configs`.
    pub active: bool,
    pub ttl: Option<u64>,
    /// The rule's key templates, as written.
    pub key_templates: Vec<String>,
    /// The rule's pattern templates, as written.
    pub patterns: Vec<String>,
    pub templates: Vec<TemplateFigures>,
    /// Journal rows of the rule.
    pub invalidations: u64,
    /// Keys those rows named.
    pub keys_invalidated: u64,
    /// Pattern invalidations (each a keyspace pass).
    pub pattern_rows: u64,
    /// Median time between two invalidations of one key of the rule.
    pub median_interval_secs: Option<f64>,
    /// How many such intervals the median is over.
    pub intervals: u64,
    /// The family's memory in the latest `cache_metrics` sample.
    pub memory_bytes: Option<u64>,
    /// Misses of the family's keys in the window (`cache_metrics`, with `[monitor]
    /// keyspace_events`); `None` where no sample measured them.
    pub misses: Option<u64>,
    /// The rule fires on updates with no `changed`, `ignore_changed` or `when` filter.
    pub fires_on_every_update: bool,
    /// Columns its templates, warm arguments and condition read.
    pub read_columns: Vec<String>,
}

/// What the advisor judges from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub window_seconds: u64,
    /// Journal rows in the window, all rules.
    pub journal_rows: u64,
    /// Keys in the Redis database.
    pub keyspace: u64,
    pub used_memory: Option<u64>,
    pub maxmemory: Option<u64>,
    pub rules: Vec<RuleFigures>,
    /// Which columns updates changed, per table (from the running worker, since it started;
    /// empty when it could not be asked).
    pub column_changes: std::collections::BTreeMap<String, crate::monitor::columns::TableColumns>,
}

/// Why figures could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum AdviceError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Cache(#[from] crate::target::CacheError),
}

/// Gathers the figures of the last `window_seconds` for `rules`; `column_changes` comes from the
/// running worker ([`crate::status::Status::column_changes`]).
pub async fn gather(
    config: &Config,
    client: &tokio_postgres::Client,
    rules: &RuleSet,
    window_seconds: u64,
    column_changes: std::collections::BTreeMap<String, crate::monitor::columns::TableColumns>,
) -> Result<Figures, AdviceError> {
    let since = chrono::Utc::now() - chrono::Duration::seconds(window_seconds as i64);
    let journal_rows: i64 = client
        .query_one(
            "SELECT count(*) FROM cache_invalidations WHERE triggered_at >= $1",
            &[&since],
        )
        .await?
        .get(0);
    let mut per_rule: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for row in client
        .query(
            "SELECT rule_name, count(*), COALESCE(sum(key_count), 0)::int8, \
                    COALESCE(sum(CASE kind WHEN 'pattern' THEN 1 WHEN 'patterns' THEN key_count ELSE 0 END), 0)::int8 \
             FROM cache_invalidations WHERE triggered_at >= $1 AND rule_name IS NOT NULL \
             GROUP BY rule_name",
            &[&since],
        )
        .await?
    {
        per_rule.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
    }
    let mut intervals: HashMap<String, (f64, i64)> = HashMap::new();
    for row in client
        .query(
            "WITH k AS ( \
                 SELECT rule_name, unnest(CASE WHEN kind = 'keys' THEN keys ELSE ARRAY[key_pattern] END) AS key, \
                        triggered_at \
                 FROM cache_invalidations \
                 WHERE triggered_at >= $1 AND rule_name IS NOT NULL AND kind IN ('key', 'keys')), \
             d AS ( \
                 SELECT rule_name, extract(epoch FROM triggered_at - lag(triggered_at) \
                        OVER (PARTITION BY rule_name, key ORDER BY triggered_at))::float8 AS gap \
                 FROM k) \
             SELECT rule_name, percentile_cont(0.5) WITHIN GROUP (ORDER BY gap), count(*) \
             FROM d WHERE gap IS NOT NULL AND gap > 0 GROUP BY rule_name",
            &[&since],
        )
        .await?
    {
        intervals.insert(row.get(0), (row.get(1), row.get(2)));
    }
    let mut misses: HashMap<String, i64> = HashMap::new();
    for row in client
        .query(
            "SELECT c.name, sum(m.miss_count)::int8 FROM cache_metrics m JOIN cache_configs c \
             ON c.id = m.config_id WHERE m.\"timestamp\" >= $1 AND m.miss_count IS NOT NULL \
             GROUP BY c.name",
            &[&since],
        )
        .await?
    {
        misses.insert(row.get(0), row.get(1));
    }
    let mut active: HashMap<String, bool> = HashMap::new();
    let mut memory: HashMap<String, i64> = HashMap::new();
    for row in client
        .query(
            "SELECT c.name, c.is_active, m.memory_usage FROM cache_configs c \
             LEFT JOIN LATERAL (SELECT memory_usage FROM cache_metrics WHERE config_id = c.id \
                                ORDER BY \"timestamp\" DESC LIMIT 1) m ON true",
            &[],
        )
        .await?
    {
        active.insert(row.get(0), row.get(1));
        if let Some(m) = row.get::<_, Option<i64>>(2) {
            memory.insert(row.get(0), m);
        }
    }
    let mut cache = Targets::open(config)?;
    let stats = cache.stats().await?;
    let families = Families::per_template(&rules.rules, &config.redis.key_prefix);
    let estimates = cache
        .sample_families(&families, config.sample_limits())
        .await?;
    let by_template: HashMap<&str, &crate::monitor::families::Estimate> =
        families.rules().zip(estimates.iter()).collect();
    let keyspace = estimates.first().map_or(0, |e| e.scanned.max(e.key_count));
    let mut out = Vec::new();
    for r in &rules.rules {
        let (rows, keys, patterns) = per_rule.get(&r.name).copied().unwrap_or_default();
        let (median, n) = intervals
            .get(&r.name)
            .map_or((None, 0), |(m, n)| (Some(*m), *n));
        let warm = r.warm.iter().map(|w| &w.key);
        let mut seen = std::collections::HashSet::new();
        let templates = r
            .keys
            .iter()
            .chain(warm)
            .filter(|t| seen.insert(t.value.source.clone()))
            .map(|t| {
                let e = by_template
                    .get(format!("{} {}", r.name, t.value.source).as_str())
                    .copied()
                    .copied()
                    .unwrap_or_default();
                TemplateFigures {
                    template: t.value.source.clone(),
                    key_count: e.key_count,
                    exact: e.exact,
                    scanned: e.scanned,
                    total: e.scanned,
                }
            })
            .collect();
        out.push(RuleFigures {
            name: r.name.clone(),
            table: r.table.clone(),
            at: format!("{}:{}", r.at.file.display(), r.at.line),
            active: active.get(&r.name).copied().unwrap_or(true),
            ttl: r.ttl,
            key_templates: r.keys.iter().map(|k| k.value.source.clone()).collect(),
            patterns: r.patterns.iter().map(|p| p.value.source.clone()).collect(),
            templates,
            invalidations: rows.max(0) as u64,
            keys_invalidated: keys.max(0) as u64,
            pattern_rows: patterns.max(0) as u64,
            median_interval_secs: median,
            intervals: n.max(0) as u64,
            memory_bytes: memory.get(&r.name).map(|m| (*m).max(0) as u64),
            misses: misses.get(&r.name).map(|m| (*m).max(0) as u64),
            fires_on_every_update: r
                .ops
                .contains(&crate::rules::OpKey::from(crate::source::Op::Update))
                && r.changed.is_empty()
                && r.ignore_changed.is_empty()
                && r.when.is_none(),
            read_columns: read_columns(r),
        });
    }
    Ok(Figures {
        window_seconds,
        journal_rows: journal_rows.max(0) as u64,
        keyspace,
        used_memory: Some(stats.used_memory),
        maxmemory: Some(stats.maxmemory),
        rules: out,
        column_changes,
    })
}

/// The columns a rule reads: its templates', its warm arguments' and its condition's.
fn read_columns(r: &crate::rules::Rule) -> Vec<String> {
    let mut cols: Vec<String> = r
        .all_templates()
        .chain(r.warm.iter().map(|w| &w.key))
        .flat_map(|t| t.value.fields().map(|(_, c)| c.to_string()))
        .chain(
            r.warm
                .iter()
                .flat_map(|w| w.args.iter().map(|a| a.value.clone())),
        )
        .chain(
            r.when
                .iter()
                .flat_map(|w| w.value.columns().into_iter().map(|(_, c, _)| c.to_string())),
        )
        .collect();
    cols.sort();
    cols.dedup();
    cols
}
