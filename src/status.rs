//! The worker's shared state, as `/status` and `/readyz` show it.
//!
//! [`Status`] is the worker's shared, lock-light state (atomics for counters, one mutex for the
//! few strings and the lag window): the pipeline and the tasks beside it write it, the HTTP
//! endpoints ([`crate::api`]) and `/metrics` ([`crate::metrics`]) only read it. It decides
//! readiness ([`Status::not_ready_reasons`]) and makes the `/status` [`Snapshot`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::source::{Op, Progress};

const LAG_WINDOW: usize = 8192;

/// Counters, as monotonically increasing totals.
#[derive(Debug, Default)]
pub struct Counters {
    pub transactions: AtomicU64,
    pub changes: AtomicU64,
    pub batches: AtomicU64,
    pub keys: AtomicU64,
    pub patterns: AtomicU64,
    /// Tag sets invalidated (members and set) and version keys bumped, as Redis executed them.
    pub tags: AtomicU64,
    pub bumps: AtomicU64,
    pub keys_removed: AtomicU64,
    pub journal_rows: AtomicU64,
    /// Trailing journal groups written (one commit each).
    pub journal_groups: AtomicU64,
    /// Keyspace passes run beside the stream (each covering every pattern requested before it).
    pub pattern_passes: AtomicU64,
    pub skipped_keys: AtomicU64,
    pub widened_keys: AtomicU64,
    pub undecodable_changes: AtomicU64,
    pub redis_errors: AtomicU64,
    pub journal_errors: AtomicU64,
    pub source_errors: AtomicU64,
    pub recovered_rows: AtomicU64,
    /// Time spent writing the journal (pending rows and their completion), in microseconds.
    pub journal_us: AtomicU64,
    /// Time spent executing actions on Redis, in microseconds.
    pub redis_us: AtomicU64,
    /// Time spent in keyspace passes (beside the stream), in microseconds: with
    /// `pattern_passes`, what one pass over the keyspace costs. It includes
    /// `pattern_deferred_us`.
    pub pattern_pass_us: AtomicU64,
    /// Time keyspace passes held their pages back for the stream's exact keys, in microseconds.
    pub pattern_deferred_us: AtomicU64,
    /// Patterns that joined a running keyspace pass, which unlinked what they match in the
    /// rest of it ahead of the pass that covers them (each distinct pattern once a pass, per
    /// cache).
    pub pattern_joins: AtomicU64,
    /// Successful rule reloads.
    pub rule_reloads: AtomicU64,
    /// Application invalidation requests executed.
    pub requests: AtomicU64,
    /// Warm writes that landed, were refused by compare-and-set (a newer invalidation came
    /// first), found no row, failed, or were dropped because the queue was full.
    pub warm_writes: AtomicU64,
    pub warm_rejected: AtomicU64,
    pub warm_empty: AtomicU64,
    pub warm_failures: AtomicU64,
    pub warm_dropped: AtomicU64,
    /// Delayed second invalidations executed (`reinvalidate_after`).
    pub reinvalidations: AtomicU64,
    /// Input the source could not understand, kept in `cache_dead_letters`.
    pub dead_letters: AtomicU64,
    /// Times a rule table was found missing from the publication and re-added.
    pub publication_repairs: AtomicU64,
    /// Keys the consistency probe found consistent, inconsistent, or could not decide.
    pub probe_consistent: AtomicU64,
    pub probe_inconsistent: AtomicU64,
    pub probe_inconclusive: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The newest rules in force (what the operator API matches keys against).
    rule_set: Option<std::sync::Arc<crate::rules::RuleSet>>,
    /// `postgres` or `kafka`.
    source_kind: &'static str,
    slot: String,
    publication: String,
    progress: Progress,
    role: Role,
    rules_loaded: usize,
    tables: Vec<String>,
    last_error: Option<String>,
    last_batch_at: Option<chrono::DateTime<chrono::Utc>>,
    redis_stats: Option<crate::target::CacheStats>,
    rules_error: Option<String>,
    disabled_rules: Vec<String>,
    drift: Vec<String>,
    schema_drift: Vec<String>,
    /// Commit-to-invalidated latencies in milliseconds, newest last.
    lag_ms: VecDeque<f64>,
    /// The oldest commit of the batch being worked on, until it is done.
    in_flight: Option<chrono::DateTime<chrono::Utc>>,
    /// Readiness thresholds (`[monitor]`): memory ratio and lag in milliseconds.
    max_memory_ratio: Option<f64>,
    max_lag_ms: Option<f64>,
    /// The slot's retained WAL beyond which the worker is not ready, in bytes.
    max_slot_wal: Option<u64>,
    /// Dependencies failing now, with their error.
    failing: std::collections::BTreeMap<Dependency, String>,
    /// The source's own figures (slot WAL, Kafka consumer lag), from the source watch.
    source_figures: SourceFigures,
    /// The last `cache_metrics` sample and the figures it could not measure.
    monitor: Option<MonitorSnapshot>,
    /// The last consistency probe.
    consistency: Option<ConsistencySnapshot>,
}

/// What the worker depends on, for `/status`'s `failing` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    /// The change stream (replication slot, Kafka brokers).
    Source,
    /// The cache targets.
    Redis,
    /// Journal writes to `cache_invalidations`.
    Journal,
}

impl Dependency {
    fn name(self) -> &'static str {
        match self {
            Dependency::Source => "source",
            Dependency::Redis => "redis",
            Dependency::Journal => "journal",
        }
    }
}

/// The source's figures beyond its position (read beside the stream).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceFigures {
    /// WAL the replication slot retains (`pg_current_wal_lsn() - restart_lsn`), in bytes.
    pub slot_retained_wal_bytes: Option<u64>,
    /// WAL written since the slot's confirmed position (`pg_current_wal_lsn() -
    /// confirmed_flush_lsn`), in bytes: what the worker still has to go through.
    pub source_lag_bytes: Option<u64>,
    /// Messages not yet consumed per Kafka partition (`topic/partition` → messages).
    pub consumer_lag: Option<std::collections::BTreeMap<String, u64>>,
}

/// The last consistency probe, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsistencySnapshot {
    /// When it ran (RFC 3339).
    pub probed_at: String,
    /// Consistent / conclusively checked keys (`None` when none was).
    pub ratio: Option<f64>,
    pub consistent: u64,
    pub inconsistent: u64,
    pub inconclusive: u64,
    /// The stale values found, with both values truncated.
    pub inconsistencies: Vec<Inconsistency>,
    /// Why there is no ratio.
    pub reason: Option<String>,
}

/// A cached value the database does not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inconsistency {
    pub key: String,
    pub rule: String,
    pub cached: String,
    pub database: String,
}

/// The last `cache_metrics` sample, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MonitorSnapshot {
    /// When the sample was taken (RFC 3339).
    pub sampled_at: String,
    /// Per active rule: its family's keys and memory.
    pub rules: std::collections::BTreeMap<String, crate::monitor::families::Estimate>,
    /// Figures written as NULL, and why.
    pub unmeasured: Vec<String>,
}

/// Shared worker state.
#[derive(Debug)]
pub struct Status {
    started: Instant,
    pub source_connected: AtomicBool,
    pub redis_connected: AtomicBool,
    pub counters: Counters,
    /// Batches' journal work handed to the trailing writer and not yet durable.
    pub journal_trailing: AtomicU64,
    /// Pattern requests waiting for a keyspace pass to cover them.
    pub passes_waiting: AtomicU64,
    /// Source positions waiting for the journal or a pass before they are confirmed.
    pub positions_waiting: AtomicU64,
    histograms: crate::metrics::histogram::Histograms,
    /// Reads of cached keys the worker itself made (the consistency probe), which Redis counts
    /// in its hits and misses: the `cache_metrics` deltas leave them out. Held while the reads
    /// run and while `INFO` is taken, so each read is counted on the right side of a sample.
    pub own_reads: tokio::sync::Mutex<OwnReads>,
    /// Changes processed per table (`schema.table`), by operation (in [`Op::ALL`] order).
    changes_by_table: Mutex<std::collections::BTreeMap<String, [u64; 4]>>,
    /// Which columns updates change (tables with REPLICA IDENTITY FULL), for the advisor.
    columns: Mutex<crate::monitor::columns::ColumnTally>,
    inner: Mutex<Inner>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            started: Instant::now(),
            source_connected: AtomicBool::new(false),
            redis_connected: AtomicBool::new(false),
            counters: Counters::default(),
            journal_trailing: AtomicU64::new(0),
            passes_waiting: AtomicU64::new(0),
            positions_waiting: AtomicU64::new(0),
            histograms: crate::metrics::histogram::Histograms::default(),
            own_reads: tokio::sync::Mutex::default(),
            changes_by_table: Mutex::default(),
            columns: Mutex::default(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// The worker's own reads of cached keys since they were last taken.
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnReads {
    pub hits: u64,
    pub misses: u64,
}

/// Whether this instance works the slot or waits for it (see the worker's lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not yet connected far enough to know.
    #[default]
    Starting,
    /// Holds the slot's lease and streams.
    Active,
    /// Another instance holds the lease; this one waits, touching nothing.
    Standby,
}

impl Role {
    /// The name `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// The rules' state: how many are loaded, which are switched off, where `cache_configs` or the
/// schema drifts from the files, and why the last reload was refused.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RulesState {
    pub rules_loaded: usize,
    pub disabled: Vec<String>,
    pub drift: Vec<String>,
    /// Why the last reload was refused.
    pub error: Option<String>,
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub source: &'static str,
    /// Why `/readyz` is 503 (empty when ready).
    pub not_ready: Vec<String>,
    /// `active`, `standby` or `starting`.
    pub role: Role,
    pub slot: String,
    pub publication: String,
    pub source_connected: bool,
    pub redis_connected: bool,
    pub confirmed_lsn: String,
    pub server_lsn: String,
    /// WAL bytes received from the server but not yet confirmed.
    pub lag_bytes: u64,
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_samples: usize,
    /// Journal items handed over and not yet durable (bounded by `journal_trail_batches`).
    pub journal_trailing: u64,
    /// Pattern requests not yet covered by a finished pass.
    pub passes_waiting: u64,
    /// Positions held until the journal and the passes before them are done.
    pub positions_waiting: u64,
    pub rules_loaded: usize,
    pub tables: Vec<String>,
    pub uptime_seconds: u64,
    pub last_batch_at: Option<String>,
    pub last_error: Option<String>,
    /// Dependencies failing now, with their error (`source`, `redis`, `journal`).
    pub failing: std::collections::BTreeMap<Dependency, String>,
    /// The source's own figures: the slot's retained WAL, or Kafka consumer lag.
    pub source_figures: SourceFigures,
    /// The last `cache_metrics` sample: per-rule key counts and memory, and what could not
    /// be measured.
    pub monitor: Option<MonitorSnapshot>,
    /// The last consistency probe: `ratio` of conclusively checked keys found consistent.
    pub consistency: Option<ConsistencySnapshot>,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// The last Redis INFO sample: hit ratio, memory against maxmemory, evictions.
    pub redis: Option<RedisSnapshot>,
    /// Why the last rule reload was refused (the previous rules keep running).
    pub rules_error: Option<String>,
    /// Rules switched off in `cache_configs`.
    pub disabled_rules: Vec<String>,
    /// `cache_configs` values that differ from the rule files.
    pub drift: Vec<String>,
    /// Per table with REPLICA IDENTITY FULL: the sets of columns updates changed since the
    /// worker started (what the advisor's `ignore_changed` suggestions count).
    pub column_changes: std::collections::BTreeMap<String, crate::monitor::columns::TableColumns>,
}

#[derive(Debug, Serialize)]
pub struct RedisSnapshot {
    #[serde(flatten)]
    pub stats: crate::target::CacheStats,
    pub hit_ratio: Option<f64>,
    pub memory_ratio: Option<f64>,
}

/// A position, or `0/0` before the source reported one (what clients parse).
fn or_zero(position: &str) -> String {
    if position.is_empty() {
        "0/0".into()
    } else {
        position.to_string()
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some((sorted[idx.min(sorted.len() - 1)] * 100.0).round() / 100.0)
}

impl Status {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_source(&self, slot: &str, publication: &str, tables: Vec<String>, rules: usize) {
        let mut i = self.inner();
        i.slot = slot.into();
        i.publication = publication.into();
        i.tables = tables;
        i.rules_loaded = rules;
    }

    /// Records the newest rules in force.
    pub fn set_rule_set(&self, rules: std::sync::Arc<crate::rules::RuleSet>) {
        self.inner().rule_set = Some(rules);
    }

    /// The newest rules in force, once a worker started.
    pub fn rule_set(&self) -> Option<std::sync::Arc<crate::rules::RuleSet>> {
        self.inner().rule_set.clone()
    }

    /// Rules switched off in `cache_configs`.
    pub fn disabled(&self) -> Vec<String> {
        self.inner().disabled_rules.clone()
    }

    /// The rules' state as `/status` shows it (drift includes schema drift), without building
    /// a whole snapshot: the API's live views ask every second.
    pub fn rules_state(&self) -> RulesState {
        let i = self.inner();
        RulesState {
            rules_loaded: i.rules_loaded,
            disabled: i.disabled_rules.clone(),
            drift: i.drift.iter().chain(&i.schema_drift).cloned().collect(),
            error: i.rules_error.clone(),
        }
    }

    /// The source's last confirmed position, as the source writes it (empty before one).
    pub fn confirmed_position(&self) -> String {
        self.inner().progress.confirmed.clone()
    }

    /// Which kind of source feeds the worker (`postgres`, `kafka`).
    pub fn set_source_kind(&self, kind: &'static str) {
        self.inner().source_kind = kind;
    }

    /// Where the source stands (positions only move forward at the source).
    pub fn set_progress(&self, progress: Progress) {
        self.inner().progress = progress;
    }

    pub fn set_rules(&self, tables: Vec<String>, rules: usize) {
        let mut i = self.inner();
        i.tables = tables;
        i.rules_loaded = rules;
    }

    pub fn set_rules_error(&self, e: Option<String>) {
        self.inner().rules_error = e;
    }

    pub fn set_disabled(&self, names: Vec<String>) {
        self.inner().disabled_rules = names;
    }

    pub fn set_drift(&self, drift: Vec<String>) {
        self.inner().drift = drift;
    }

    pub fn set_role(&self, role: Role) {
        self.inner().role = role;
    }

    pub fn role(&self) -> Role {
        self.inner().role
    }

    /// Differences between the rule files and the schema (a renamed table).
    pub fn set_schema_drift(&self, drift: Vec<String>) {
        self.inner().schema_drift = drift;
    }

    pub fn set_redis_stats(&self, stats: crate::target::CacheStats) {
        self.inner().redis_stats = Some(stats);
    }

    /// The last Redis `INFO` sample, if one was taken.
    pub fn redis_stats(&self) -> Option<crate::target::CacheStats> {
        self.inner().redis_stats
    }

    /// Counts a batch's changes per table and operation: one lock per batch, and one map
    /// lookup per run of changes to the same table with the same operation.
    pub fn count_changes<'a>(&self, changes: impl IntoIterator<Item = &'a crate::source::Change>) {
        let mut runs: Vec<(&'a crate::source::Relation, Op, u64)> = Vec::new();
        let mut columns: Option<std::sync::MutexGuard<'_, crate::monitor::columns::ColumnTally>> =
            None;
        for c in changes {
            if c.op == Op::Update && c.old.is_some() {
                columns
                    .get_or_insert_with(|| self.columns.lock().unwrap_or_else(|p| p.into_inner()))
                    .add(c);
            }
            match runs.last_mut() {
                Some((r, op, n)) if std::ptr::eq(*r, &*c.relation) && *op == c.op => *n += 1,
                _ => runs.push((&c.relation, c.op, 1)),
            }
        }
        let mut by_table = self
            .changes_by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (r, op, n) in runs {
            let slot = Op::ALL.iter().position(|o| *o == op).unwrap_or(0);
            match by_table.get_mut(r.qualified_name().as_str()) {
                Some(counts) => counts[slot] += n,
                None => {
                    let mut counts = [0; 4];
                    counts[slot] = n;
                    by_table.insert(r.qualified_name(), counts);
                }
            }
        }
    }

    /// Changes processed per table, by operation (in [`Op::ALL`] order).
    /// Which columns updates changed, per table (see [`crate::monitor::columns`]).
    pub fn column_changes(
        &self,
    ) -> std::collections::BTreeMap<String, crate::monitor::columns::TableColumns> {
        self.columns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }

    pub fn changes_by_table(&self) -> Vec<(String, [u64; 4])> {
        let by_table = self
            .changes_by_table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        by_table.iter().map(|(t, c)| (t.clone(), *c)).collect()
    }

    /// The distributions `/metrics` exposes.
    pub fn histograms(&self) -> &crate::metrics::histogram::Histograms {
        &self.histograms
    }

    /// Records that `dependency` is failing with `error` (also the last error).
    pub fn set_dependency_error(&self, dependency: Dependency, error: impl Into<String>) {
        let error = error.into();
        let mut i = self.inner();
        i.last_error = Some(format!("{}: {error}", dependency.name()));
        i.failing.insert(dependency, error);
    }

    /// Records that `dependency` works again.
    pub fn clear_dependency_error(&self, dependency: Dependency) {
        let mut i = self.inner();
        if i.failing.remove(&dependency).is_some() && i.failing.is_empty() {
            i.last_error = None;
        }
    }

    /// The source's own figures (slot WAL, consumer lag).
    pub fn set_source_figures(&self, figures: SourceFigures) {
        self.inner().source_figures = figures;
    }

    pub fn source_figures(&self) -> SourceFigures {
        self.inner().source_figures.clone()
    }

    /// The last `cache_metrics` sample.
    pub fn set_monitor(&self, m: MonitorSnapshot) {
        self.inner().monitor = Some(m);
    }

    pub fn monitor(&self) -> Option<MonitorSnapshot> {
        self.inner().monitor.clone()
    }

    /// The last consistency probe.
    pub fn set_consistency(&self, c: ConsistencySnapshot) {
        self.inner().consistency = Some(c);
    }

    pub fn consistency(&self) -> Option<ConsistencySnapshot> {
        self.inner().consistency.clone()
    }

    /// A batch whose oldest transaction committed at `oldest` is being worked on: while it
    /// runs, its age counts as lag (a batch stuck in retries is not a lag of zero).
    pub fn batch_started(&self, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        self.inner().in_flight = oldest;
    }

    /// Records commit-to-invalidated latencies for one batch: `(milliseconds, changes)` per
    /// transaction. `/status` keeps a window of them per transaction; the `/metrics`
    /// histogram counts each change.
    pub fn record_lags(&self, lags_ms: impl IntoIterator<Item = (f64, usize)>) {
        let mut i = self.inner();
        for (l, changes) in lags_ms {
            let l = l.max(0.0);
            self.histograms
                .lag_seconds
                .observe_n(l / 1000.0, changes as u64);
            if i.lag_ms.len() == LAG_WINDOW {
                i.lag_ms.pop_front();
            }
            i.lag_ms.push_back(l);
        }
        i.in_flight = None;
        i.last_batch_at = Some(chrono::Utc::now());
    }

    /// Ready: streaming, the cache reachable, and no schema drift (which degrades
    /// invalidation to whole families and needs a person).
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Sets the readiness thresholds of `[monitor]`.
    pub fn set_thresholds(
        &self,
        max_memory_ratio: f64,
        max_lag: std::time::Duration,
        max_slot_wal: u64,
    ) {
        let mut i = self.inner();
        i.max_memory_ratio = Some(max_memory_ratio);
        i.max_lag_ms = Some(max_lag.as_secs_f64() * 1000.0);
        i.max_slot_wal = Some(max_slot_wal);
    }

    /// Every reason `/readyz` is not 200: the source or the cache unreachable, journal writes
    /// failing, schema drift, Redis memory past `[monitor] max_memory_ratio`, the last lag past
    /// `[monitor] max_lag`, the slot's retained WAL past `[monitor] max_slot_wal`.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.source_connected.load(Ordering::Relaxed) {
            reasons.push(match self.role() {
                Role::Standby => "standby: another instance is active".into(),
                _ => "the source is not connected".into(),
            });
        }
        let i = self.inner();
        if !self.redis_connected.load(Ordering::Relaxed) {
            reasons.push(match i.failing.get(&Dependency::Redis) {
                Some(e) => format!("the cache is not reachable: {e}"),
                None => "the cache is not reachable".into(),
            });
        }
        if let Some(e) = i.failing.get(&Dependency::Journal) {
            reasons.push(format!("journal writes are failing: {e}"));
        }
        if let (Some(max), Some(wal)) = (i.max_slot_wal, i.source_figures.slot_retained_wal_bytes) {
            if wal > max {
                reasons.push(format!(
                    "the replication slot retains {} of WAL, above [monitor] max_slot_wal {}",
                    crate::config::format_size(wal),
                    crate::config::format_size(max)
                ));
            }
        }
        if !i.schema_drift.is_empty() {
            reasons.push(format!("schema drift:\n{}", i.schema_drift.join("\n")));
        }
        if let (Some(max), Some(ratio)) = (
            i.max_memory_ratio,
            i.redis_stats.and_then(|s| s.memory_ratio()),
        ) {
            if ratio > max {
                reasons.push(format!(
                    "Redis memory at {:.0}% of maxmemory, above the {:.0}% of [monitor] max_memory_ratio",
                    ratio * 100.0,
                    max * 100.0
                ));
            }
        }
        let in_flight_ms = i
            .in_flight
            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64);
        let current = match (i.lag_ms.back().copied(), in_flight_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let (Some(max), Some(last)) = (i.max_lag_ms, current) {
            if last > max {
                reasons.push(format!(
                    "lag {:.1} s, above [monitor] max_lag {:.1} s",
                    last / 1000.0,
                    max / 1000.0
                ));
            }
        }
        reasons
    }

    pub fn snapshot(&self) -> Snapshot {
        let not_ready = self.not_ready_reasons();
        let i = self.inner();
        let mut lags: Vec<f64> = i.lag_ms.iter().copied().collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            ("transactions", get(&c.transactions)),
            ("changes", get(&c.changes)),
            ("batches", get(&c.batches)),
            ("keys", get(&c.keys)),
            ("patterns", get(&c.patterns)),
            ("tags", get(&c.tags)),
            ("bumps", get(&c.bumps)),
            ("keys_removed", get(&c.keys_removed)),
            ("journal_rows", get(&c.journal_rows)),
            ("journal_groups", get(&c.journal_groups)),
            ("pattern_passes", get(&c.pattern_passes)),
            ("skipped_keys", get(&c.skipped_keys)),
            ("widened_keys", get(&c.widened_keys)),
            ("undecodable_changes", get(&c.undecodable_changes)),
            ("redis_errors", get(&c.redis_errors)),
            ("journal_errors", get(&c.journal_errors)),
            ("source_errors", get(&c.source_errors)),
            ("recovered_rows", get(&c.recovered_rows)),
            ("journal_us", get(&c.journal_us)),
            ("redis_us", get(&c.redis_us)),
            ("pattern_pass_us", get(&c.pattern_pass_us)),
            ("pattern_deferred_us", get(&c.pattern_deferred_us)),
            ("pattern_joins", get(&c.pattern_joins)),
            ("rule_reloads", get(&c.rule_reloads)),
            ("requests", get(&c.requests)),
            ("warm_writes", get(&c.warm_writes)),
            ("warm_rejected", get(&c.warm_rejected)),
            ("warm_empty", get(&c.warm_empty)),
            ("warm_failures", get(&c.warm_failures)),
            ("warm_dropped", get(&c.warm_dropped)),
            ("reinvalidations", get(&c.reinvalidations)),
            ("dead_letters", get(&c.dead_letters)),
            ("publication_repairs", get(&c.publication_repairs)),
            ("probe_consistent", get(&c.probe_consistent)),
            ("probe_inconsistent", get(&c.probe_inconsistent)),
            ("probe_inconclusive", get(&c.probe_inconclusive)),
        ]
        .into_iter()
        .collect();
        Snapshot {
            not_ready,
            source: if i.source_kind.is_empty() {
                "postgres"
            } else {
                i.source_kind
            },
            role: i.role,
            slot: i.slot.clone(),
            publication: i.publication.clone(),
            source_connected: self.source_connected.load(Ordering::Relaxed),
            redis_connected: self.redis_connected.load(Ordering::Relaxed),
            confirmed_lsn: or_zero(&i.progress.confirmed),
            server_lsn: or_zero(&i.progress.head),
            lag_bytes: i.progress.lag,
            lag_ms_p50: quantile(&lags, 0.5),
            lag_ms_p99: quantile(&lags, 0.99),
            lag_samples: lags.len(),
            journal_trailing: self.journal_trailing.load(Ordering::Relaxed),
            passes_waiting: self.passes_waiting.load(Ordering::Relaxed),
            positions_waiting: self.positions_waiting.load(Ordering::Relaxed),
            rules_loaded: i.rules_loaded,
            tables: i.tables.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            last_batch_at: i.last_batch_at.map(|t| t.to_rfc3339()),
            last_error: i.last_error.clone(),
            failing: i.failing.clone(),
            source_figures: i.source_figures.clone(),
            monitor: i.monitor.clone(),
            consistency: i.consistency.clone(),
            counters,
            redis: i.redis_stats.map(|stats| RedisSnapshot {
                hit_ratio: stats.hit_ratio(),
                memory_ratio: stats.memory_ratio(),
                stats,
            }),
            rules_error: i.rules_error.clone(),
            disabled_rules: i.disabled_rules.clone(),
            drift: i.drift.iter().chain(&i.schema_drift).cloned().collect(),
            column_changes: self.column_changes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag_reasons(s: &Status) -> Vec<String> {
        s.not_ready_reasons()
            .into_iter()
            .filter(|r| r.starts_with("lag "))
            .collect()
    }

    #[test]
    fn a_batch_stuck_in_retries_counts_its_age_as_lag() {
        let s = Status::default();
        s.set_thresholds(0.7, std::time::Duration::from_secs(1), 1 << 30);
        s.record_lags([(5.0, 1)]);
        assert!(lag_reasons(&s).is_empty());
        // A batch committed 5 s ago, still not done (Redis down, say).
        s.batch_started(Some(chrono::Utc::now() - chrono::Duration::seconds(5)));
        let r = lag_reasons(&s);
        assert!(r.len() == 1 && r[0].contains("max_lag"), "{r:?}");
        // Done: the lag is what it measured.
        s.record_lags([(20.0, 3)]);
        assert!(lag_reasons(&s).is_empty());
    }

    #[test]
    fn a_failing_dependency_is_named_until_it_works_again() {
        let s = Status::default();
        s.set_dependency_error(Dependency::Journal, "relation does not exist");
        let snap = s.snapshot();
        assert_eq!(
            snap.last_error.as_deref(),
            Some("journal: relation does not exist")
        );
        assert!(s
            .not_ready_reasons()
            .iter()
            .any(|r| r == "journal writes are failing: relation does not exist"));
        s.clear_dependency_error(Dependency::Journal);
        assert!(s.snapshot().failing.is_empty());
        assert_eq!(s.snapshot().last_error, None);
    }
}
