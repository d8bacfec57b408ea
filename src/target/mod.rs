//! Cache targets: where planned actions are executed.
//!
//! [`CacheTarget`] is the seam between planning and a cache server. Its contract:
//!
//! * [`CacheTarget::execute`] raises the given fence marks first (see [`crate::fence`]), then
//!   runs every target — unlink keys, unlink every match of a pattern (scanning to the end),
//!   invalidate tag sets, increment version keys — and returns `Ok` only when all of it is done.
//!   It is idempotent apart from version bumps (a retried bump only invalidates once more), so
//!   the caller may retry it after any error, and does: this is what lets a source position be
//!   confirmed only after its actions completed.
//! * Versioned writes ([`CacheTarget::write_versioned`], [`CacheTarget::write_versioned_bulk`])
//!   are compare-and-set against the marks: they never land over a newer invalidation.
//! * [`CacheTarget::ping`], [`CacheTarget::stats`] and [`CacheTarget::sample_families`] serve
//!   health and monitoring; sampling scans in pages and never blocks the server.
//!
//! * A target that runs keyspace passes may be told to hold each page back while the stream has
//!   exact keys in flight ([`CacheTarget::defer_to`], [`priority`]), and to unlink, for the
//!   rest of a running pass, what patterns requested meanwhile match ([`CacheTarget::join_from`],
//!   [`early`]).
//!
//! [`Targets`] is the list the worker holds (one per configured cache; each action must succeed
//! on all). [`redis`] is the implementation for Redis; `memory` an in-memory one for tests.

pub mod early;
#[cfg(test)]
pub(crate) mod memory;
pub mod priority;
pub mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::action::Target;
use crate::config::Config;
use crate::fence::Version;
use crate::monitor::families::{Estimate, Families, SampleLimits};

pub use self::redis::RedisTarget;

/// Errors of a cache target.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis: connection timed out")]
    Timeout,
    #[error("{0}")]
    Tls(String),
}

/// What executing a plan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExecReport {
    /// Keys Redis reported as removed (existing keys; absent keys are not counted).
    pub removed: u64,
    /// UNLINK commands sent.
    pub unlink_commands: u64,
    /// SCAN iterations run for patterns.
    pub scans: u64,
    /// Tag sets invalidated.
    pub tags: u64,
    /// Version keys incremented.
    pub bumps: u64,
    /// Time keyspace passes held pages back for the stream ([`priority`]), in microseconds.
    pub deferred_us: u64,
    /// Patterns that joined a running pass ([`early`]).
    pub joined: u64,
}

impl ExecReport {
    /// Adds another report's figures to this one.
    pub fn add(&mut self, other: &ExecReport) {
        self.removed += other.removed;
        self.unlink_commands += other.unlink_commands;
        self.scans += other.scans;
        self.tags += other.tags;
        self.bumps += other.bumps;
        self.deferred_us += other.deferred_us;
        self.joined += other.joined;
    }
}

/// One versioned write.
#[derive(Debug, Clone)]
pub struct VersionedWrite<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub version: Version,
    pub ttl: Option<u64>,
    /// The configured `key_prefix` (the key's mark lives under it).
    pub key_prefix: &'a str,
    pub rule_mark: &'a str,
}

/// A key as a read finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// A string value.
    Value(Vec<u8>),
    /// No such key.
    Absent,
    /// Deleted between the check that it exists and the read (which the server counted as
    /// a miss).
    Vanished,
    /// A key of another type (a hash, a set, …).
    Other,
}

/// A key as an operator inspects it ([`CacheTarget::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Redis' type name (`string`, `hash`, `set`, …; `none` when the key does not exist).
    pub kind: String,
    /// Seconds left, `None` without an expiry (or without the key).
    pub ttl: Option<i64>,
    /// The value of a string key.
    pub value: Option<Vec<u8>>,
    /// Bytes the key takes (`MEMORY USAGE`), when it exists.
    pub memory: Option<u64>,
    /// Reads that moved the server's keyspace hit counter (for the monitor to leave out).
    pub reads: u64,
}

impl Inspected {
    /// A key the cache does not hold.
    pub fn absent() -> Self {
        Inspected {
            kind: "none".into(),
            ttl: None,
            value: None,
            memory: None,
            reads: 0,
        }
    }
}

/// What an invalidation would touch ([`CacheTarget::preview`]), touching nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preview {
    /// Keys (or tag members, or version keys) the target would remove or bump.
    pub count: u64,
    /// Some of them, at most the sample size asked for.
    pub sample: Vec<String>,
    /// Reads that moved the server's keyspace hit counter (for the monitor to leave out).
    pub reads: u64,
}

/// Figures users judge a cache by (from Redis `INFO`).
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CacheStats {
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub evicted_keys: u64,
    pub used_memory: u64,
    /// 0 when no limit is set.
    pub maxmemory: u64,
    /// Seconds since the server started (counters restart with it).
    pub uptime_seconds: u64,
}

impl CacheStats {
    /// Hits / (hits + misses), when there were any lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.keyspace_hits + self.keyspace_misses;
        (total > 0).then(|| self.keyspace_hits as f64 / total as f64)
    }

    /// used_memory / maxmemory, when a limit is set.
    pub fn memory_ratio(&self) -> Option<f64> {
        (self.maxmemory > 0).then(|| self.used_memory as f64 / self.maxmemory as f64)
    }
}

/// A cache that executes actions; see the module docs for the contract.
pub trait CacheTarget: Send {
    /// A short name for logs (`redis 127.0.0.1:6379/0`, never with a password).
    fn name(&self) -> String;

    /// Raises `marks`, then executes every target.
    fn execute<'a>(
        &'a mut self,
        marks: &'a [(String, Version)],
        targets: &'a [&'a Target],
    ) -> BoxFuture<'a, Result<ExecReport, CacheError>>;

    /// Compare-and-set writes; returns which landed.
    fn write_versioned<'a>(
        &'a mut self,
        writes: &'a [VersionedWrite<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, CacheError>>;

    /// Bulk compare-and-set writes sharing a version, TTL and rule; returns how many landed.
    fn write_versioned_bulk<'a>(
        &'a mut self,
        writes: &'a [(String, Vec<u8>)],
        version: Version,
        ttl: Option<u64>,
        key_prefix: &'a str,
        rule_mark: &'a str,
        rule_max_mark: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>>;

    /// From now on, hold each page of a keyspace pass back while `priority` has urgent
    /// commands in flight (a target without passes ignores it).
    fn defer_to(&mut self, _priority: Arc<priority::Priority>) {}

    /// From now on, let patterns offered to `early` join each running keyspace pass: the
    /// pass also unlinks what they match in the part of the keyspace it has still to read
    /// (a target without passes ignores it). Never a substitute for the pass that covers them.
    fn join_from(&mut self, _early: Arc<early::Early>) {}

    /// Checks the connection.
    fn ping(&mut self) -> BoxFuture<'_, Result<(), CacheError>>;

    /// Reads hit, miss, eviction and memory figures.
    fn stats(&mut self) -> BoxFuture<'_, Result<CacheStats, CacheError>>;

    /// Moves marks earlier versions kept outside `key_prefix` under it; returns how many
    /// moved (nothing to move by default).
    fn migrate_legacy_marks<'a>(
        &'a mut self,
        _key_prefix: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        async { Ok(0) }.boxed()
    }

    /// Reads and deletes counters (`GETDEL`): each one's value, `None` where it did not exist.
    /// Applications report per-rule hits this way ([`crate::monitor::samples`]).
    fn take_counters<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, CacheError>>;

    /// Reads `keys` (for the consistency probe). Only keys that exist are read, so the reads
    /// count as the server's hits (a miss only in a race with a delete); the caller accounts
    /// for them.
    fn read<'a>(&'a mut self, keys: &'a [String])
        -> BoxFuture<'a, Result<Vec<Cached>, CacheError>>;

    /// Type, TTL, value (of a string) and memory of one key. The read of the value counts in
    /// the server's hits and misses; the caller accounts for it.
    fn inspect<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Inspected, CacheError>>;

    /// Sets a string value (manual warming), with an expiry when `ttl` is given.
    fn put<'a>(
        &'a mut self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
    ) -> BoxFuture<'a, Result<(), CacheError>>;

    /// Counts what executing `target` would touch and returns up to `sample` of the names,
    /// changing nothing (a pattern is a whole keyspace pass, as executing it is).
    fn preview<'a>(
        &'a mut self,
        target: &'a Target,
        sample: usize,
    ) -> BoxFuture<'a, Result<Preview, CacheError>>;

    /// Estimates each rule family's keys and memory from a scan within `limits` (see
    /// [`crate::monitor::families`]), in `families`' order.
    fn sample_families<'a>(
        &'a mut self,
        families: &'a Families,
        limits: SampleLimits,
    ) -> BoxFuture<'a, Result<Vec<Estimate>, CacheError>>;
}

/// The worker's cache targets. Every action runs on each, in order; the first error fails the
/// whole call (which is then retried whole: executing is idempotent).
pub struct Targets {
    targets: Vec<Box<dyn CacheTarget>>,
    /// The stream's targets: their executions are urgent ([`priority`]).
    urgent: Option<Arc<priority::Priority>>,
}

impl Targets {
    pub fn new(targets: Vec<Box<dyn CacheTarget>>) -> Self {
        Targets {
            targets,
            urgent: None,
        }
    }

    /// Marks every execution on these targets urgent in `priority` while it runs: keyspace
    /// passes that defer to it hold their pages back meanwhile. The worker gives it the
    /// stream's targets (its batches, and the recovery of rows left pending before it streams).
    pub fn urgent_with(&mut self, priority: Arc<priority::Priority>) {
        self.urgent = Some(priority);
    }

    /// The targets a configuration names.
    pub fn open(config: &Config) -> Result<Self, CacheError> {
        let redis = RedisTarget::new(
            redis::client(&config.redis)?,
            redis::CacheOptions::from_config(&config.redis),
        )?;
        Ok(Targets::new(vec![Box::new(redis)]))
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Each target on its own (the probe checks every cache).
    pub fn each_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn CacheTarget>> {
        self.targets.iter_mut()
    }
}

impl CacheTarget for Targets {
    fn name(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn execute<'a>(
        &'a mut self,
        marks: &'a [(String, Version)],
        targets: &'a [&'a Target],
    ) -> BoxFuture<'a, Result<ExecReport, CacheError>> {
        async move {
            let _urgent = self.urgent.as_ref().map(|p| p.urgent());
            let mut total = ExecReport::default();
            for t in &mut self.targets {
                total.add(&t.execute(marks, targets).await?);
            }
            Ok(total)
        }
        .boxed()
    }

    fn defer_to(&mut self, priority: Arc<priority::Priority>) {
        for t in &mut self.targets {
            t.defer_to(priority.clone());
        }
    }

    fn join_from(&mut self, early: Arc<early::Early>) {
        for t in &mut self.targets {
            t.join_from(early.clone());
        }
    }

    fn write_versioned<'a>(
        &'a mut self,
        writes: &'a [VersionedWrite<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, CacheError>> {
        async move {
            let mut landed = vec![true; writes.len()];
            for t in &mut self.targets {
                for (l, w) in landed.iter_mut().zip(t.write_versioned(writes).await?) {
                    *l &= w;
                }
            }
            Ok(landed)
        }
        .boxed()
    }

    fn write_versioned_bulk<'a>(
        &'a mut self,
        writes: &'a [(String, Vec<u8>)],
        version: Version,
        ttl: Option<u64>,
        key_prefix: &'a str,
        rule_mark: &'a str,
        rule_max_mark: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        async move {
            let mut landed: Option<u64> = None;
            for t in &mut self.targets {
                let n = t
                    .write_versioned_bulk(
                        writes,
                        version,
                        ttl,
                        key_prefix,
                        rule_mark,
                        rule_max_mark,
                    )
                    .await?;
                landed = Some(landed.map_or(n, |l| l.min(n)));
            }
            Ok(landed.unwrap_or(0))
        }
        .boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            for t in &mut self.targets {
                t.ping().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<CacheStats, CacheError>> {
        async move {
            let mut total = CacheStats::default();
            for t in &mut self.targets {
                let s = t.stats().await?;
                total.keyspace_hits += s.keyspace_hits;
                total.keyspace_misses += s.keyspace_misses;
                total.evicted_keys += s.evicted_keys;
                total.used_memory += s.used_memory;
                total.maxmemory += s.maxmemory;
                total.uptime_seconds = match total.uptime_seconds {
                    0 => s.uptime_seconds,
                    u => u.min(s.uptime_seconds),
                };
            }
            Ok(total)
        }
        .boxed()
    }

    fn migrate_legacy_marks<'a>(
        &'a mut self,
        key_prefix: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        async move {
            let mut moved = 0;
            for t in &mut self.targets {
                moved += t.migrate_legacy_marks(key_prefix).await?;
            }
            Ok(moved)
        }
        .boxed()
    }

    /// Summed over the targets (`None` where none had the counter).
    fn take_counters<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, CacheError>> {
        async move {
            let mut total: Vec<Option<u64>> = vec![None; keys.len()];
            for t in &mut self.targets {
                for (sum, v) in total.iter_mut().zip(t.take_counters(keys).await?) {
                    if let Some(v) = v {
                        *sum = Some(sum.unwrap_or(0) + v);
                    }
                }
            }
            Ok(total)
        }
        .boxed()
    }

    /// The first target's values (use [`Targets::each_mut`] to read every cache).
    fn read<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Cached>, CacheError>> {
        async move {
            match self.targets.first_mut() {
                Some(t) => t.read(keys).await,
                None => Ok(vec![Cached::Absent; keys.len()]),
            }
        }
        .boxed()
    }

    fn sample_families<'a>(
        &'a mut self,
        families: &'a Families,
        limits: SampleLimits,
    ) -> BoxFuture<'a, Result<Vec<Estimate>, CacheError>> {
        async move {
            let mut total: Option<Vec<Estimate>> = None;
            for t in &mut self.targets {
                let each = t.sample_families(families, limits).await?;
                total = Some(match total {
                    None => each,
                    Some(sum) => sum.into_iter().zip(each).map(|(a, b)| a.merge(b)).collect(),
                });
            }
            Ok(total.unwrap_or_else(|| vec![Estimate::default(); families.len()]))
        }
        .boxed()
    }

    /// The first cache's view (every cache holds the same keys).
    fn inspect<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Inspected, CacheError>> {
        async move {
            match self.targets.first_mut() {
                Some(t) => t.inspect(key).await,
                None => Ok(Inspected::absent()),
            }
        }
        .boxed()
    }

    fn put<'a>(
        &'a mut self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        async move {
            for t in &mut self.targets {
                t.put(key, value, ttl).await?;
            }
            Ok(())
        }
        .boxed()
    }

    /// The largest count among the caches, with the first cache's sample.
    fn preview<'a>(
        &'a mut self,
        target: &'a Target,
        sample: usize,
    ) -> BoxFuture<'a, Result<Preview, CacheError>> {
        async move {
            let mut out = Preview::default();
            for t in &mut self.targets {
                let p = t.preview(target, sample).await?;
                if out.sample.is_empty() {
                    out.sample = p.sample;
                }
                out.count = out.count.max(p.count);
                out.reads += p.reads;
            }
            Ok(out)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryTarget;
    use super::priority::Priority;
    use super::*;

    #[tokio::test]
    async fn the_stream_targets_are_urgent_while_they_execute_and_only_then() {
        let memory = MemoryTarget::new();
        let priority = Arc::new(Priority::default());
        memory.state().watch = Some(priority.clone());
        let mut stream = Targets::new(vec![Box::new(memory.clone())]);
        stream.urgent_with(priority.clone());
        let key = Target::Key("k".into());
        stream.execute(&[], &[&key]).await.unwrap();
        assert!(!priority.is_urgent(), "released once done");
        // A failed execution releases it too.
        memory.fail_next(1);
        assert!(stream.execute(&[], &[&key]).await.is_err());
        assert!(!priority.is_urgent());
        // Other targets (the passes', the API's) are not urgent.
        let mut other = Targets::new(vec![Box::new(memory.clone())]);
        other.execute(&[], &[&key]).await.unwrap();
        assert_eq!(memory.state().urgent_during, [true, false]);
    }
}
