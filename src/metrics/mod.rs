//! Prometheus metrics: `GET /metrics` in the OpenMetrics text format.
//!
//! [`Histograms`] are the distributions the worker observes as it goes (commit → actions done
//! per transaction, changes per batch); everything else is read from [`Status`] at scrape time
//! (its counters and the last Redis `INFO` sample), so a scrape costs one pass over a few
//! dozen atomics and nothing on the hot path. Names follow Prometheus' conventions: prefix
//! `cachewarden_`, base units (`_seconds`, `_bytes`), counters end in `_total`. The encoding
//! is the maintained `prometheus-client` crate's; `histogram` adds [`Weighted`], a histogram
//! that records a transaction's lag once for all its changes.

pub mod histogram;

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};

pub use histogram::{Histograms, Weighted};
use prometheus_client::registry::Registry;

use crate::status::Status;

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, &'static str)>;
type OwnedLabels = Vec<(&'static str, String)>;

/// A labelled counter family: name, help, label name, and (label value, count) pairs.
type FamilySpec<'a> = (
    &'static str,
    &'static str,
    &'static str,
    &'a [(&'static str, u64)],
);

/// A counter family with one series per `(label value, count)`.
fn family(label: &'static str, values: &[(&'static str, u64)]) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    for (v, n) in values {
        f.get_or_create(&vec![(label, *v)]).inc_by(*n);
    }
    f
}

/// The metrics of `status` in the OpenMetrics text format.
pub fn render(status: &Status) -> String {
    let c = &status.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut r = Registry::with_prefix("cachewarden");

    r.register(
        "up",
        "1 while the worker process runs",
        ConstGauge::new(1i64),
    );
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    r.register("build_info", "The running build (value 1)", info);
    let connected = |b: &std::sync::atomic::AtomicBool| i64::from(b.load(Ordering::Relaxed));
    r.register(
        "source_connected",
        "1 while the change stream is connected",
        ConstGauge::new(connected(&status.source_connected)),
    );
    r.register(
        "redis_connected",
        "1 while the cache is reachable",
        ConstGauge::new(connected(&status.redis_connected)),
    );

    for (name, help, value) in [
        (
            "transactions",
            "Source transactions processed",
            get(&c.transactions),
        ),
        ("batches", "Batches executed", get(&c.batches)),
        (
            "keys_removed",
            "Keys Redis reported removed",
            get(&c.keys_removed),
        ),
        ("journal_rows", "Journal rows written", get(&c.journal_rows)),
        (
            "journal_groups",
            "Trailing journal groups written (one commit each)",
            get(&c.journal_groups),
        ),
        (
            "pattern_passes",
            "Keyspace passes run for patterns",
            get(&c.pattern_passes),
        ),
        (
            "pattern_joins",
            "Patterns that joined a running keyspace pass, per cache (unlinked ahead of the pass covering them)",
            get(&c.pattern_joins),
        ),
        (
            "skipped_keys",
            "Keys not rendered because a value was missing",
            get(&c.skipped_keys),
        ),
        (
            "widened_keys",
            "Keys widened to their family pattern",
            get(&c.widened_keys),
        ),
        (
            "undecodable_changes",
            "Changes the source could not decode (answered by whole families)",
            get(&c.undecodable_changes),
        ),
        (
            "dead_letters",
            "Input kept in cache_dead_letters",
            get(&c.dead_letters),
        ),
        (
            "recovered_rows",
            "Journal rows re-executed after a crash",
            get(&c.recovered_rows),
        ),
        (
            "rule_reloads",
            "Successful rule reloads",
            get(&c.rule_reloads),
        ),
        (
            "requests",
            "Application invalidation requests executed",
            get(&c.requests),
        ),
        (
            "publication_repairs",
            "Rule tables re-added to the publication",
            get(&c.publication_repairs),
        ),
    ] {
        r.register(name, help, ConstCounter::new(value));
    }
    let changes = Family::<Vec<(&'static str, String)>, Counter>::default();
    for (table, counts) in status.changes_by_table() {
        for (op, n) in crate::source::Op::ALL.iter().zip(counts) {
            if n > 0 {
                changes
                    .get_or_create(&vec![
                        ("table", table.clone()),
                        ("op", op.as_str().to_string()),
                    ])
                    .inc_by(n);
            }
        }
    }
    r.register(
        "changes",
        "Row changes processed, by table and operation",
        changes,
    );
    let families: [FamilySpec<'_>; 4] = [
        (
            "actions",
            "Cache actions executed, by kind",
            "kind",
            &[
                ("unlink", get(&c.keys)),
                ("pattern", get(&c.patterns)),
                ("tag", get(&c.tags)),
                ("bump", get(&c.bumps)),
                ("warm", get(&c.warm_writes)),
                ("reinvalidate", get(&c.reinvalidations)),
            ],
        ),
        (
            "probe_keys",
            "Keys the consistency probe compared, by result",
            "result",
            &[
                ("consistent", get(&c.probe_consistent)),
                ("inconsistent", get(&c.probe_inconsistent)),
                ("inconclusive", get(&c.probe_inconclusive)),
            ],
        ),
        (
            "warm_outcomes",
            "Warm writes that did not land, by reason",
            "reason",
            &[
                ("rejected", get(&c.warm_rejected)),
                ("empty", get(&c.warm_empty)),
                ("failed", get(&c.warm_failures)),
                ("dropped", get(&c.warm_dropped)),
            ],
        ),
        (
            "errors",
            "Errors, by the dependency that failed",
            "kind",
            &[
                ("redis", get(&c.redis_errors)),
                ("journal", get(&c.journal_errors)),
                ("source", get(&c.source_errors)),
            ],
        ),
    ];
    for (name, help, label, values) in families {
        r.register(name, help, family(label, values));
    }
    for (name, help, us) in [
        (
            "journal_write_seconds",
            "Time spent writing the journal",
            &c.journal_us,
        ),
        (
            "redis_seconds",
            "Time spent executing actions on Redis",
            &c.redis_us,
        ),
        (
            "pattern_pass_seconds",
            "Time spent in keyspace passes for patterns (including pattern_deferred_seconds)",
            &c.pattern_pass_us,
        ),
        (
            "pattern_deferred_seconds",
            "Time keyspace passes held their pages back for the stream's exact keys",
            &c.pattern_deferred_us,
        ),
    ] {
        r.register(name, help, ConstCounter::new(get(us) as f64 / 1e6));
    }
    for (name, help, value) in [
        (
            "journal_trailing",
            "Batches whose journal work is not yet durable",
            &status.journal_trailing,
        ),
        (
            "passes_waiting",
            "Pattern requests no finished keyspace pass covers yet",
            &status.passes_waiting,
        ),
        (
            "positions_waiting",
            "Source positions waiting to be confirmed",
            &status.positions_waiting,
        ),
    ] {
        r.register(name, help, ConstGauge::new(get(value) as i64));
    }

    let h = status.histograms();
    r.register(
        "lag_seconds",
        "Source commit to the change's cache actions done, per change",
        h.lag_seconds.clone(),
    );
    r.register(
        "batch_changes",
        "Row changes per executed batch",
        h.batch_changes.clone(),
    );

    let source = status.source_figures();
    for (name, help, value) in [
        (
            "source_lag_bytes",
            "WAL written since the replication slot's confirmed position",
            source.source_lag_bytes,
        ),
        (
            "slot_retained_wal_bytes",
            "WAL the replication slot keeps the server from removing",
            source.slot_retained_wal_bytes,
        ),
    ] {
        if let Some(v) = value {
            r.register(name, help, ConstGauge::new(v as i64));
        }
    }
    if let Some(lag) = source.consumer_lag {
        let f = Family::<OwnedLabels, Gauge>::default();
        for (at, n) in lag {
            let (topic, partition) = at.rsplit_once('/').unwrap_or((at.as_str(), ""));
            f.get_or_create(&vec![
                ("topic", topic.to_string()),
                ("partition", partition.to_string()),
            ])
            .set(n as i64);
        }
        r.register(
            "kafka_consumer_lag_messages",
            "Messages the consumer group has not consumed yet, per partition",
            f,
        );
    }
    if let Some(ratio) = status.consistency().and_then(|c| c.ratio) {
        r.register(
            "consistency_ratio",
            "Fraction of the keys the last consistency probe checked conclusively that the cache holds as the database does",
            ConstGauge::new(ratio),
        );
    }
    if let Some(m) = status.monitor() {
        let keys = Family::<OwnedLabels, Gauge>::default();
        let memory = Family::<OwnedLabels, Gauge>::default();
        for (rule, e) in &m.rules {
            let labels = vec![("rule", rule.clone())];
            keys.get_or_create(&labels).set(e.key_count as i64);
            memory.get_or_create(&labels).set(e.memory_bytes as i64);
        }
        r.register(
            "rule_keys",
            "Keys of the rule's key family at the last sample (estimated when the scan was partial)",
            keys,
        );
        r.register(
            "rule_memory_bytes",
            "MEMORY USAGE of the rule's key family at the last sample",
            memory,
        );
    }

    if let Some(s) = status.redis_stats() {
        let redis = r.sub_registry_with_prefix("redis");
        for (name, help, value) in [
            (
                "used_memory_bytes",
                "Redis used_memory at the last INFO sample",
                s.used_memory,
            ),
            (
                "maxmemory_bytes",
                "Redis maxmemory at the last INFO sample (0: no limit)",
                s.maxmemory,
            ),
        ] {
            redis.register(name, help, ConstGauge::new(value as i64));
        }
        if let Some(ratio) = s.memory_ratio() {
            redis.register(
                "memory_utilization_ratio",
                "used_memory / maxmemory at the last INFO sample",
                ConstGauge::new(ratio),
            );
        }
        for (name, help, value) in [
            (
                "keyspace_hits",
                "Redis keyspace_hits (server-wide)",
                s.keyspace_hits,
            ),
            (
                "keyspace_misses",
                "Redis keyspace_misses (server-wide)",
                s.keyspace_misses,
            ),
            (
                "evicted_keys",
                "Redis evicted_keys (server-wide)",
                s.evicted_keys,
            ),
        ] {
            redis.register(name, help, ConstCounter::new(value));
        }
    }

    let mut out = String::new();
    // Writing to a String cannot fail, and every metric above encodes.
    if let Err(e) = encode(&mut out, &r) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_info() {
        let status = Status::default();
        crate::status::add(&status.counters.changes, 3);
        crate::status::add(&status.counters.keys, 2);
        status.record_lags([(1.0, 1), (2000.0, 1)]);
        let text = render(&status);
        for line in [
            "cachewarden_up 1",
            "cachewarden_actions_total{kind=\"unlink\"} 2",
            "cachewarden_lag_seconds_count 2",
            "cachewarden_lag_seconds_bucket{le=\"0.001\"} 1",
            "# TYPE cachewarden_lag_seconds histogram",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "cachewarden_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        // No Redis sample yet: no Redis figures rather than zeros.
        assert!(
            !text.contains("cachewarden_redis_used_memory_bytes"),
            "{text}"
        );
    }

    /// Every metric the shipped Grafana dashboard and alert rules query is one the worker
    /// exports (with every optional figure present).
    #[test]
    fn the_deploy_files_query_only_exported_metrics() {
        let status = Status::default();
        status.set_redis_stats(crate::target::CacheStats {
            used_memory: 1,
            maxmemory: 2,
            ..Default::default()
        });
        status.set_source_figures(crate::status::SourceFigures {
            slot_retained_wal_bytes: Some(1),
            source_lag_bytes: Some(1),
            consumer_lag: Some([("t/0".to_string(), 1)].into()),
        });
        status.set_monitor(crate::status::MonitorSnapshot {
            rules: [("r".to_string(), Default::default())].into(),
            ..Default::default()
        });
        status.set_consistency(crate::status::ConsistencySnapshot {
            ratio: Some(1.0),
            ..Default::default()
        });
        let relation = std::sync::Arc::new(crate::source::Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: Vec::new(),
        });
        status.count_changes(&[crate::source::Change {
            relation,
            op: crate::source::Op::Insert,
            old: None,
            new: None,
            undecodable: None,
        }]);
        let text = render(&status);
        let families: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let exported = |name: &str| {
            families.contains(name)
                || ["_total", "_bucket", "_count", "_sum"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|base| families.contains(base))
                })
        };
        for (file, body) in [
            (
                "deploy/grafana/cachewarden-dashboard.json",
                include_str!("../../deploy/grafana/cachewarden-dashboard.json"),
            ),
            (
                "deploy/prometheus/cachewarden-alerts.yml",
                include_str!("../../deploy/prometheus/cachewarden-alerts.yml"),
            ),
        ] {
            let mut names = 0;
            for (at, _) in body.match_indices("cachewarden_") {
                let name: String = body[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                assert!(
                    exported(&name),
                    "{file} queries {name}, which /metrics does not export"
                );
                names += 1;
            }
            assert!(names > 10, "{file}: {names} metric references");
        }
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../deploy/grafana/cachewarden-dashboard.json"
        ))
        .expect("the dashboard is JSON");
        assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
    }
}
