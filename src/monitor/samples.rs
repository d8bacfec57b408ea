//! The `cache_metrics` rows: every `[monitor] interval` (60 s) from start, one whole-instance
//! row and one row per active rule, written together with one timestamp. At start only the
//! `INFO` baseline is taken (a start often drains a backlog: the keyspace sample waits).
//!
//! * The whole-instance row (`config_id` NULL) holds the exact per-interval deltas of Redis'
//!   `keyspace_hits`, `keyspace_misses` and `evicted_keys` (the `INFO` counters of the sample
//!   minus those of the one before) and `used_memory` at the sample (a level). A delta that
//!   cannot be exact is NULL: a server unreachable at start leaves the first interval without
//!   a baseline, and a server that restarted or had its statistics reset (uptime or a counter went backwards) lost part of
//!   its interval.
//! * Each active rule's row (its `cache_configs` row) holds its key family's `key_count` (with
//!   `key_count_error`, the standard error; 0 when the scan was complete) and `memory_usage`,
//!   from one `SCAN` of the keyspace within `[monitor] sample_budget` and `sample_max_keys`
//!   ([`super::families`] documents the estimate). Hits per rule cannot be seen outside the
//!   application: they are what applications report by `INCR <key_prefix>cw:hits:<rule>`
//!   ([`hits_key`]), taken and reset at each sample, and NULL for a rule nobody reported. Misses and evictions per rule come from Redis' keyspace notifications
//!   when `[monitor] keyspace_events` is on and the subscription held for the whole interval
//!   ([`super::keyspace_events`]); otherwise they are NULL.
//!
//! Every NULL figure's reason is in `/status` (`monitor.unmeasured`).

use std::sync::Arc;

use tokio_postgres::Client;

use super::families::Families;
use super::keyspace_events::SharedTally;
use super::MonitorError;
use crate::config::Config;
use crate::control::Live;
use crate::runtime::Shutdown;
use crate::status::{MonitorSnapshot, OwnReads, Status};
use crate::target::{CacheStats, CacheTarget, Targets};

/// The counter an application increments for each cache hit of a rule's keys
/// (`<key_prefix>cw:hits:<rule>`); each sample takes and resets it (`GETDEL`), so a row holds
/// the hits of its interval exactly.
pub fn hits_key(key_prefix: &str, rule: &str) -> String {
    format!("{key_prefix}cw:hits:{rule}")
}

/// Per-interval deltas of the `INFO` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deltas {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// The exact deltas from `before` to `now`, less the worker's own reads in between, or why
/// there are none. Pure.
pub fn deltas(
    before: Option<&CacheStats>,
    now: &CacheStats,
    own: OwnReads,
) -> Result<Deltas, &'static str> {
    let Some(b) = before else {
        return Err("no earlier sample since the worker started");
    };
    if now.uptime_seconds < b.uptime_seconds {
        return Err("Redis restarted during the interval");
    }
    match (
        now.keyspace_hits
            .checked_sub(b.keyspace_hits)
            .and_then(|d| d.checked_sub(own.hits)),
        now.keyspace_misses
            .checked_sub(b.keyspace_misses)
            .and_then(|d| d.checked_sub(own.misses)),
        now.evicted_keys.checked_sub(b.evicted_keys),
    ) {
        (Some(hits), Some(misses), Some(evictions)) => Ok(Deltas {
            hits,
            misses,
            evictions,
        }),
        _ => Err("Redis' statistics were reset during the interval (CONFIG RESETSTAT)"),
    }
}

/// Runs until shutdown (not at all when rows are switched off).
pub async fn run(
    config: Config,
    live: Arc<Live>,
    mut targets: Targets,
    status: Arc<Status>,
    events: SharedTally,
    mut shutdown: Shutdown,
) {
    let Some(interval) = config.metrics_interval() else {
        return;
    };
    let mut sampler = Sampler {
        config,
        live,
        status,
        events,
        db: None,
        before: None,
    };
    // At start only the baseline of the first interval's deltas: a start often drains a
    // backlog, and the keyspace sample would compete with it for Redis.
    sampler.baseline(&mut targets).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
        if let Err(e) = sampler.sample(&mut targets).await {
            tracing::warn!(error = %e, "cache_metrics: sample failed; trying again next interval");
            sampler.db = None;
        }
    }
}

struct Sampler {
    config: Config,
    live: Arc<Live>,
    status: Arc<Status>,
    /// Per-rule misses and evictions from keyspace notifications.
    events: SharedTally,
    db: Option<Client>,
    /// The previous `INFO` sample.
    before: Option<CacheStats>,
}

impl Sampler {
    async fn client(&mut self) -> Result<&Client, tokio_postgres::Error> {
        if self.db.as_ref().is_none_or(|c| c.is_closed()) {
            self.db = Some(crate::db::connect(&self.config.postgres_config()?).await?);
        }
        match &self.db {
            Some(c) => Ok(c),
            None => unreachable!("connected above"),
        }
    }

    /// Takes the `INFO` figures the first interval's deltas start from.
    async fn baseline(&mut self, targets: &mut Targets) {
        let mut own = self.status.own_reads.lock().await;
        if let Ok(stats) = targets.stats().await {
            self.before = Some(stats);
        }
        *own = OwnReads::default();
    }

    /// Takes one sample and writes its rows.
    async fn sample(&mut self, targets: &mut Targets) -> Result<(), MonitorError> {
        // The probe's reads are counted on one side of this INFO or the other, never both.
        let (stats, own) = {
            let mut own = self.status.own_reads.lock().await;
            let stats = targets.stats().await?;
            (stats, std::mem::take(&mut *own))
        };
        let mut unmeasured = Vec::new();
        let d = deltas(self.before.as_ref(), &stats, own);
        self.before = Some(stats);
        if let Err(why) = d {
            unmeasured.push(format!(
                "whole-instance hits, misses and evictions of this interval: {why}"
            ));
        }
        let snap = self.live.snapshot();
        let active: Vec<_> = snap
            .rules
            .rules
            .iter()
            .filter(|r| !snap.cx.disabled.contains(&r.name))
            .collect();
        let families = Families::of(active.iter().copied(), &snap.cx.key_prefix);
        let estimates = targets
            .sample_families(&families, self.config.sample_limits())
            .await?;
        // Hits per rule exist only where applications report them (INCR of hits_key).
        let hit_keys: Vec<String> = families
            .rules()
            .map(|r| hits_key(&snap.cx.key_prefix, r))
            .collect();
        let reported = {
            // Redis counts these reads in its hits and misses: the worker's own, left out of the
            // next interval's deltas.
            let mut own = self.status.own_reads.lock().await;
            let reported = targets.take_counters(&hit_keys).await?;
            own.hits += reported.iter().filter(|r| r.is_some()).count() as u64;
            own.misses += reported.iter().filter(|r| r.is_none()).count() as u64;
            reported
        };
        if reported.iter().any(Option::is_none) {
            unmeasured.push(format!(
                "per-rule hits of rules no application reported this interval (INCR {}<rule>): \
                 only the application sees which rule a hit belongs to",
                hits_key(&snap.cx.key_prefix, "")
            ));
        }
        let events = if self.config.monitor.keyspace_events {
            let counts = self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
            if counts.is_none() {
                unmeasured.push(
                    "per-rule misses and evictions of this interval: the keyspace notification \
                     subscription did not hold for all of it"
                        .to_string(),
                );
            }
            counts
        } else {
            unmeasured.push(
                "per-rule misses and evictions: [monitor] keyspace_events is off (they need \
                 Redis keyspace notifications)"
                    .to_string(),
            );
            None
        };
        let names: Vec<String> = families.rules().map(str::to_string).collect();
        let client = self.client().await?;
        let ids: std::collections::HashMap<String, String> = client
            .query(
                "SELECT name, id::text FROM cache_configs WHERE name = ANY($1) AND is_active",
                &[&names],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let v = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut config_ids: Vec<Option<String>> = vec![None];
        let mut hits: Vec<Option<i64>> = vec![d.ok().map(|d| v(d.hits))];
        let mut misses: Vec<Option<i64>> = vec![d.ok().map(|d| v(d.misses))];
        let mut evictions: Vec<Option<i64>> = vec![d.ok().map(|d| v(d.evictions))];
        let mut memory: Vec<Option<i64>> = vec![Some(v(stats.used_memory))];
        let mut key_counts: Vec<Option<i64>> = vec![None];
        let mut key_errors: Vec<Option<f64>> = vec![None];
        let mut rules = std::collections::BTreeMap::new();
        for ((name, e), reported) in names.iter().zip(&estimates).zip(&reported) {
            rules.insert(name.clone(), *e);
            let Some(id) = ids.get(name) else { continue };
            config_ids.push(Some(id.clone()));
            hits.push(reported.map(v));
            let counted = events
                .as_ref()
                .map(|c| c.get(name).copied().unwrap_or_default());
            misses.push(counted.map(|c| v(c.0)));
            evictions.push(counted.map(|c| v(c.1)));
            memory.push(Some(v(e.memory_bytes)));
            key_counts.push(Some(v(e.key_count)));
            key_errors.push(Some(e.key_count_error));
        }
        client
            .execute(
                "INSERT INTO cache_metrics (config_id, hit_count, miss_count, eviction_count, \
                     memory_usage, key_count, key_count_error) \
                 SELECT c::uuid, h, m, e, mem, k, ke FROM unnest($1::text[], $2::int8[], \
                     $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::float8[]) \
                     AS t(c, h, m, e, mem, k, ke)",
                &[
                    &config_ids,
                    &hits,
                    &misses,
                    &evictions,
                    &memory,
                    &key_counts,
                    &key_errors,
                ],
            )
            .await?;
        self.status.set_monitor(MonitorSnapshot {
            sampled_at: chrono::Utc::now().to_rfc3339(),
            rules,
            unmeasured,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(uptime: u64, hits: u64, misses: u64, evicted: u64) -> CacheStats {
        CacheStats {
            keyspace_hits: hits,
            keyspace_misses: misses,
            evicted_keys: evicted,
            uptime_seconds: uptime,
            ..CacheStats::default()
        }
    }

    #[test]
    fn deltas_are_exact_or_absent_with_a_reason() {
        let none = OwnReads::default();
        let d = |hits, misses, evictions| {
            Ok(Deltas {
                hits,
                misses,
                evictions,
            })
        };
        assert_eq!(
            deltas(Some(&at(10, 5, 2, 0)), &at(70, 25, 3, 4), none),
            d(20, 1, 4)
        );
        // The probe's own reads are not the application's.
        let own = OwnReads { hits: 3, misses: 1 };
        assert_eq!(
            deltas(Some(&at(10, 5, 2, 0)), &at(70, 25, 3, 4), own),
            d(17, 0, 4)
        );
        let why = |r: Result<Deltas, &'static str>| r.unwrap_err();
        assert!(why(deltas(None, &at(1, 0, 0, 0), none)).contains("no earlier"));
        // A restart that already counted past the old figures is still caught by the uptime.
        assert!(why(deltas(Some(&at(100, 5, 0, 0)), &at(3, 50, 0, 0), none)).contains("restarted"));
        assert!(why(deltas(Some(&at(100, 5, 9, 0)), &at(160, 6, 0, 0), none)).contains("reset"));
    }
}
