//! The consistency probe: the production check that the cache holds no stale data (Meta's
//! Polaris is the model). Every `[monitor] probe_interval` (10 s) it takes up to `[monitor]
//! probe_sample` (100) keys of rules with a `[rule.warm]` that were invalidated in the last
//! hour, at least [`SETTLE`] ago, and are cached again (refreshed by the worker or refilled by
//! the application), and compares each cache's value with what the rule's warm query gives
//! now ([`crate::warm::expected_value`]).
//!
//! A mismatch is not yet an inconsistency: the row may have changed after the cache was read,
//! its invalidation still on its way. So the probe notes the WAL position after its database
//! read, waits until the worker has confirmed it (PostgreSQL: the slot's
//! `confirmed_flush_lsn`; Kafka: the observed lag, twice, at most `[monitor] max_lag`), then
//! reads the cache and the database again. The key is **inconsistent** only if the row did not
//! change in between and the cache still holds a value the database does not: a stale value
//! that outlived its invalidation. A key gone from the cache, a row that changed again, or a
//! worker that did not catch up in time make the key **inconclusive**, counted apart.
//!
//! The fraction of conclusive keys found consistent is `cachewarden_consistency_ratio` and
//! `consistency.ratio` in `/status`; each inconsistency is logged with its key, rule and both
//! values (truncated). The probe's reads count in Redis' hits and misses; the `cache_metrics`
//! deltas leave them out ([`crate::status::OwnReads`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::MonitorError;
use crate::catalog::TableInfo;
use crate::config::Config;
use crate::control::Live;
use crate::rules::Rule;
use crate::runtime::Shutdown;
use crate::source::Lsn;
use crate::status::{add, ConsistencySnapshot, Inconsistency, Status};
use crate::target::{CacheTarget, Cached, Targets};
use crate::warm::{expected_value, Expected};

/// How long after its invalidation completed a key may be probed (a refresh lands in time).
pub const SETTLE: Duration = Duration::from_secs(1);
/// Candidate keys read from the journal per probe, per key probed.
const CANDIDATES_PER_KEY: i64 = 5;
/// Bytes of each value shown in logs and `/status`.
const SHOWN: usize = 200;

/// What one probe found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Findings {
    pub consistent: u64,
    pub inconsistent: Vec<Inconsistency>,
    pub inconclusive: u64,
}

/// Runs until shutdown (not at all with `probe_sample = 0`).
pub async fn run(
    config: Config,
    live: Arc<Live>,
    mut targets: Targets,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    if config.monitor.probe_sample == 0 {
        return;
    }
    let mut db: Option<Client> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.probe_interval()) => {}
            _ = shutdown.recv() => return,
        }
        let probe = Probe {
            config: &config,
            live: &live,
            status: &status,
        };
        match probe.run(&mut db, &mut targets).await {
            Ok(None) => {}
            Ok(Some(f)) => publish(&status, f),
            Err(e) => {
                tracing::warn!(error = %e, "consistency probe failed; trying again next interval");
                db = None;
            }
        }
    }
}

/// Records a probe's findings in `/status` and the counters.
fn publish(status: &Status, f: Findings) {
    let c = &status.counters;
    add(&c.probe_consistent, f.consistent);
    add(&c.probe_inconsistent, f.inconsistent.len() as u64);
    add(&c.probe_inconclusive, f.inconclusive);
    let conclusive = f.consistent + f.inconsistent.len() as u64;
    for i in &f.inconsistent {
        tracing::warn!(key = %i.key, rule = %i.rule, cached = %i.cached, database = %i.database,
            "consistency probe: the cache holds a value the database does not");
    }
    status.set_consistency(ConsistencySnapshot {
        probed_at: chrono::Utc::now().to_rfc3339(),
        ratio: (conclusive > 0).then(|| f.consistent as f64 / conclusive as f64),
        consistent: f.consistent,
        inconsistent: f.inconsistent.len() as u64,
        inconclusive: f.inconclusive,
        inconsistencies: f.inconsistent,
        reason: (conclusive == 0).then(|| {
            "no key was conclusively checked in the last probe (none refilled since its \
             invalidation, or the worker did not catch up in time)"
                .to_string()
        }),
    });
}

struct Probe<'a> {
    config: &'a Config,
    live: &'a Live,
    status: &'a Status,
}

/// A key to compare, with its rule and first reading.
struct Candidate<'r> {
    key: String,
    rule: &'r Rule,
    cached: Vec<u8>,
    expected: Expected,
}

impl Probe<'_> {
    /// One probe; `None` when no rule can be probed (the reason is in `/status`).
    async fn run(
        &self,
        db: &mut Option<Client>,
        targets: &mut Targets,
    ) -> Result<Option<Findings>, MonitorError> {
        let snap = self.live.snapshot();
        let prefix = snap.cx.key_prefix.as_str();
        let rules: HashMap<&str, &Rule> = snap
            .rules
            .rules
            .iter()
            .filter(|r| r.warm.is_some() && !snap.cx.disabled.contains(&r.name))
            .map(|r| (r.name.as_str(), r))
            .collect();
        if rules.is_empty() {
            self.status.set_consistency(ConsistencySnapshot {
                reason: Some("no active rule has a [rule.warm] query to compare with".into()),
                ..ConsistencySnapshot::default()
            });
            return Ok(None);
        }
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            let client = crate::db::connect(&self.config.postgres_config()?).await?;
            client
                .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
                .await?;
            *db = Some(client);
        }
        let Some(client) = db.as_ref() else {
            return Ok(None);
        };
        let names: Vec<String> = rules.keys().map(|n| n.to_string()).collect();
        let tables: Vec<String> = rules.values().map(|r| r.table.clone()).collect();
        let catalog = crate::catalog::load_catalog(client, &tables).await?;
        let sample = self.config.monitor.probe_sample;
        let recent = recent_keys(client, &names, sample as i64 * CANDIDATES_PER_KEY).await?;
        let mut findings = Findings::default();
        for target in targets.each_mut() {
            // Keys of a rule's warm key that are cached again.
            let traceable: Vec<(String, &Rule)> = recent
                .iter()
                .filter_map(|(rule, key)| {
                    let r = *rules.get(rule.as_str())?;
                    let warm = r.warm.as_ref()?;
                    warm.key.value.parse_key(key, prefix)?;
                    Some((key.clone(), r))
                })
                .collect();
            let keys: Vec<String> = traceable.iter().map(|(k, _)| k.clone()).collect();
            let cached = self.read(target.as_mut(), &keys).await?;
            let mut candidates = Vec::new();
            for ((key, rule), value) in traceable.into_iter().zip(cached) {
                if candidates.len() == sample {
                    break;
                }
                let (Cached::Value(value), Some(info)) = (value, catalog.get(&rule.table)) else {
                    continue;
                };
                let expected = expected_value(client, rule, info, &key, prefix).await?;
                if expected == Expected::Unknown {
                    continue;
                }
                candidates.push(Candidate {
                    key,
                    rule,
                    cached: value,
                    expected,
                });
            }
            let (agree, mut differ): (Vec<_>, Vec<_>) = candidates
                .into_iter()
                .partition(|c| matches(&c.cached, &c.expected));
            findings.consistent += agree.len() as u64;
            if differ.is_empty() {
                continue;
            }
            // Let the worker pass everything the database reads above reflect.
            if !self.caught_up(client).await? {
                findings.inconclusive += differ.len() as u64;
                continue;
            }
            let keys: Vec<String> = differ.iter().map(|c| c.key.clone()).collect();
            let again = self.read(target.as_mut(), &keys).await?;
            for (c, now) in differ.drain(..).zip(again) {
                let Cached::Value(now) = now else {
                    findings.inconclusive += 1;
                    continue;
                };
                let info: &TableInfo = match catalog.get(&c.rule.table) {
                    Some(i) => i,
                    None => continue,
                };
                let expected_now = expected_value(client, c.rule, info, &c.key, prefix).await?;
                if matches(&now, &expected_now) {
                    findings.consistent += 1;
                } else if expected_now != c.expected {
                    // The row changed again: its invalidation may be on its way.
                    findings.inconclusive += 1;
                } else {
                    findings.inconsistent.push(Inconsistency {
                        key: c.key,
                        rule: c.rule.name.clone(),
                        cached: shown(&now),
                        database: match &expected_now {
                            Expected::Value(v) => shown(v),
                            _ => "(no row: the key should not be cached)".into(),
                        },
                    });
                }
            }
        }
        Ok(Some(findings))
    }

    /// Reads `keys`, counting the reads as the worker's own.
    async fn read(
        &self,
        target: &mut dyn CacheTarget,
        keys: &[String],
    ) -> Result<Vec<Cached>, MonitorError> {
        let mut own = self.status.own_reads.lock().await;
        let values = target.read(keys).await?;
        // Absent keys were not read (see `CacheTarget::read`).
        for v in &values {
            match v {
                Cached::Absent => {}
                Cached::Vanished => own.misses += 1,
                Cached::Value(_) | Cached::Other => own.hits += 1,
            }
        }
        Ok(values)
    }

    /// Waits until the worker has confirmed the WAL position read now (Kafka: the observed
    /// lag), within `[monitor] max_lag`; false when it did not.
    async fn caught_up(&self, client: &Client) -> Result<bool, MonitorError> {
        let limit = self.config.max_lag();
        if self.config.is_kafka() {
            let p99 = self.status.snapshot().lag_ms_p99.unwrap_or(0.0);
            let wait = Duration::from_secs_f64((2.0 * p99 / 1000.0 + 1.0).min(limit.as_secs_f64()));
            tokio::time::sleep(wait).await;
            return Ok(true);
        }
        let at: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let Ok(at) = at.parse::<Lsn>() else {
            return Ok(false);
        };
        let start = Instant::now();
        loop {
            // The worker's own confirmed position is the freshest; the slot's is the server's.
            let ours = self.status.confirmed_position().parse::<Lsn>().ok();
            let slot: Option<String> = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.config.postgres.slot],
                )
                .await?
                .and_then(|r| r.get(0));
            let slot = slot.and_then(|s| s.parse::<Lsn>().ok());
            if ours.max(slot).is_some_and(|c| c >= at) {
                return Ok(true);
            }
            if start.elapsed() > limit {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a cached value is what the database says.
fn matches(cached: &[u8], expected: &Expected) -> bool {
    matches!(expected, Expected::Value(v) if v == cached)
}

/// A value as logs show it: text up to [`SHOWN`] bytes.
fn shown(v: &[u8]) -> String {
    let end = v.len().min(SHOWN);
    let mut s = String::from_utf8_lossy(&v[..end]).into_owned();
    if v.len() > SHOWN {
        s.push_str(&format!("… ({} bytes)", v.len()));
    }
    s
}

/// Keys of `rules` invalidated in the last hour, at least [`SETTLE`] ago, newest first and
/// each once (at most `limit` rows read, through the `triggered_at` index).
async fn recent_keys(
    client: &Client,
    rules: &[String],
    limit: i64,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let settle = SETTLE.as_secs_f64();
    let rows = client
        .query(
            "SELECT rule_name, k FROM ( \
               SELECT rule_name, triggered_at, \
                      unnest(CASE WHEN kind = 'key' THEN ARRAY[key_pattern] ELSE keys END) AS k \
               FROM cache_invalidations \
               WHERE triggered_at > now() - interval '1 hour' \
                 AND status = 'completed' AND kind IN ('key', 'keys') \
                 AND rule_name = ANY($1) \
                 AND completed_at < now() - make_interval(secs => $2) \
               ORDER BY triggered_at DESC LIMIT $3) s",
            &[&rules, &settle, &limit],
        )
        .await?;
    let mut seen = std::collections::HashSet::new();
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, k)| seen.insert(k.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_truncated() {
        assert_eq!(shown(b"abc"), "abc");
        let long = vec![b'x'; 300];
        let s = shown(&long);
        assert!(
            s.starts_with(&"x".repeat(200)) && s.ends_with("(300 bytes)"),
            "{s}"
        );
    }

    #[test]
    fn only_an_equal_value_matches() {
        assert!(matches(b"1", &Expected::Value(b"1".to_vec())));
        assert!(!matches(b"1", &Expected::Value(b"2".to_vec())));
        assert!(!matches(b"1", &Expected::Nothing));
    }
}
