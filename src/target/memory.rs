//! An in-memory cache target for unit tests of the pipeline: values and marks in maps, every
//! executed target recorded in order, and failures injected on demand ([`MemoryTarget::fail_next`]).
//! It keeps the trait's promises (marks first, idempotent unlinks, compare-and-set writes), so
//! tests of the worker exercise the same contract as Redis.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{
    CacheError, CacheStats, CacheTarget, Cached, ExecReport, Inspected, Preview, VersionedWrite,
};
use crate::action::Target;
use crate::fence::{mark_key, Version};
use crate::glob::glob_match;
use crate::monitor::families::{estimate, Estimate, Families, SampleLimits, Tally};

/// What the in-memory cache holds.
#[derive(Debug, Default)]
pub struct MemoryCache {
    pub values: BTreeMap<String, Vec<u8>>,
    pub marks: BTreeMap<String, Version>,
    /// Every target executed successfully, as `kind:text`, in order.
    pub executed: Vec<String>,
    /// Calls still to fail before any work is done.
    pub fail_next: u32,
    /// Fail every call that includes a pattern (a keyspace pass that cannot finish yet).
    pub refuse_patterns: bool,
    /// When set, each execution records whether this priority was urgent meanwhile.
    pub watch: Option<Arc<super::priority::Priority>>,
    pub urgent_during: Vec<bool>,
}

/// A shared handle on one in-memory cache.
#[derive(Debug, Clone, Default)]
pub struct MemoryTarget {
    state: Arc<Mutex<MemoryCache>>,
}

impl MemoryTarget {
    pub fn new() -> Self {
        MemoryTarget::default()
    }

    pub fn state(&self) -> MutexGuard<'_, MemoryCache> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `n` calls fail as if the server were unreachable.
    pub fn fail_next(&self, n: u32) {
        self.state().fail_next = n;
    }

    fn check(&self) -> Result<MutexGuard<'_, MemoryCache>, CacheError> {
        let mut s = self.state();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(CacheError::Timeout);
        }
        Ok(s)
    }
}

fn raise(marks: &mut BTreeMap<String, Version>, key: &str, v: Version) {
    let m = marks.entry(key.to_string()).or_insert(v);
    *m = (*m).max(v);
}

impl CacheTarget for MemoryTarget {
    fn name(&self) -> String {
        "memory".into()
    }

    fn execute<'a>(
        &'a mut self,
        marks: &'a [(String, Version)],
        targets: &'a [&'a Target],
    ) -> BoxFuture<'a, Result<ExecReport, CacheError>> {
        async move {
            let mut s = self.check()?;
            if let Some(urgent) = s.watch.as_ref().map(|p| p.is_urgent()) {
                s.urgent_during.push(urgent);
            }
            if s.refuse_patterns && targets.iter().any(|t| t.is_pattern()) {
                return Err(CacheError::Timeout);
            }
            for (k, v) in marks {
                raise(&mut s.marks, k, *v);
            }
            let mut report = ExecReport::default();
            for t in targets {
                let gone: Vec<String> = match t {
                    Target::Key(k) | Target::Tag(k) => vec![k.clone()],
                    Target::Pattern(p) | Target::TagPattern(p) => s
                        .values
                        .keys()
                        .filter(|k| glob_match(p, k))
                        .cloned()
                        .collect(),
                    Target::Bump(k) => {
                        let n = s
                            .values
                            .get(k)
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                            .unwrap_or(0);
                        s.values.insert(k.clone(), (n + 1).to_string().into_bytes());
                        report.bumps += 1;
                        Vec::new()
                    }
                    Target::BumpPattern(_) => Vec::new(),
                };
                for k in gone {
                    if s.values.remove(&k).is_some() {
                        report.removed += 1;
                    }
                }
                s.executed.push(format!("{}:{}", t.kind(), t.text()));
            }
            Ok(report)
        }
        .boxed()
    }

    fn write_versioned<'a>(
        &'a mut self,
        writes: &'a [VersionedWrite<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, CacheError>> {
        async move {
            let mut s = self.check()?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let newer = |k: &str| s.marks.get(k).is_some_and(|m| *m > w.version);
                let refused = newer(&mark_key(w.key_prefix, w.key)) || newer(w.rule_mark);
                if !refused {
                    s.values.insert(w.key.to_string(), w.value.to_vec());
                }
                out.push(!refused);
            }
            Ok(out)
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
        _rule_max_mark: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        async move {
            let vw: Vec<VersionedWrite<'_>> = writes
                .iter()
                .map(|(k, v)| VersionedWrite {
                    key: k,
                    value: v,
                    version,
                    ttl,
                    key_prefix,
                    rule_mark,
                })
                .collect();
            let landed = self.write_versioned(&vw).await?;
            Ok(landed.iter().filter(|l| **l).count() as u64)
        }
        .boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), CacheError>> {
        async move { self.check().map(|_| ()) }.boxed()
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<CacheStats, CacheError>> {
        async move {
            let s = self.check()?;
            Ok(CacheStats {
                used_memory: s.values.values().map(|v| v.len() as u64).sum(),
                ..CacheStats::default()
            })
        }
        .boxed()
    }

    fn take_counters<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, CacheError>> {
        async move {
            let mut s = self.check()?;
            Ok(keys
                .iter()
                .map(|k| {
                    s.values
                        .remove(k)
                        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                })
                .collect())
        }
        .boxed()
    }

    fn read<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Cached>, CacheError>> {
        async move {
            let s = self.check()?;
            Ok(keys
                .iter()
                .map(|k| match s.values.get(k) {
                    Some(v) => Cached::Value(v.clone()),
                    None => Cached::Absent,
                })
                .collect())
        }
        .boxed()
    }

    fn inspect<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Inspected, CacheError>> {
        async move {
            let s = self.check()?;
            Ok(match s.values.get(key) {
                Some(v) => Inspected {
                    kind: "string".into(),
                    ttl: None,
                    value: Some(v.clone()),
                    memory: Some(v.len() as u64),
                    reads: 1,
                },
                None => Inspected::absent(),
            })
        }
        .boxed()
    }

    fn put<'a>(
        &'a mut self,
        key: &'a str,
        value: &'a [u8],
        _ttl: Option<u64>,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        async move {
            self.check()?.values.insert(key.to_string(), value.to_vec());
            Ok(())
        }
        .boxed()
    }

    fn preview<'a>(
        &'a mut self,
        target: &'a Target,
        sample: usize,
    ) -> BoxFuture<'a, Result<Preview, CacheError>> {
        async move {
            let s = self.check()?;
            let names: Vec<String> = match target {
                Target::Key(k) => s.values.keys().filter(|v| *v == k).cloned().collect(),
                Target::Pattern(p) => s
                    .values
                    .keys()
                    .filter(|k| glob_match(p, k))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            Ok(Preview {
                count: names.len() as u64,
                sample: names.into_iter().take(sample).collect(),
                reads: 0,
            })
        }
        .boxed()
    }

    fn sample_families<'a>(
        &'a mut self,
        families: &'a Families,
        _limits: SampleLimits,
    ) -> BoxFuture<'a, Result<Vec<Estimate>, CacheError>> {
        async move {
            let s = self.check()?;
            let mut tally = Tally::new(families);
            for (k, v) in &s.values {
                tally.add(families.matching(k), v.len() as u64);
            }
            tally.scanned = s.values.len() as u64;
            tally.total = tally.scanned;
            tally.complete = true;
            Ok(estimate(&tally))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_refuse_older_writes_and_failures_do_nothing() {
        let mut t = MemoryTarget::new();
        let key = Target::Key("k".into());
        t.execute(&[(mark_key("", "k"), Version(5))], &[&key])
            .await
            .unwrap();
        let w = |v| VersionedWrite {
            key: "k",
            value: b"x",
            version: Version(v),
            ttl: None,
            key_prefix: "",
            rule_mark: "r",
        };
        assert_eq!(
            t.write_versioned(&[w(4), w(5)]).await.unwrap(),
            [false, true]
        );
        t.fail_next(1);
        assert!(t.execute(&[], &[&key]).await.is_err());
        assert!(
            t.state().values.contains_key("k"),
            "a failed call did nothing"
        );
        assert_eq!(t.state().executed, ["key:k"]);
    }
}
