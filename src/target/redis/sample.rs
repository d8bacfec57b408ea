//! Sampling the keyspace for per-rule figures: `SCAN` pages (never `KEYS`), each key classified
//! by [`Families`], and one pipelined `MEMORY USAGE` per page for the keys a family matched.
//! Stops at the end of the keyspace or at the sample's limits; the estimate and its error are
//! [`crate::monitor::families`]' business.

use std::collections::HashSet;
use std::time::Instant;

use super::RedisTarget;
use crate::monitor::families::{estimate, Estimate, Families, SampleLimits, Tally};
use crate::target::CacheError;

impl RedisTarget {
    /// Scans within `limits` and estimates each family's keys and memory.
    pub async fn sample_families(
        &mut self,
        families: &Families,
        limits: SampleLimits,
    ) -> Result<Vec<Estimate>, CacheError> {
        let mut c = self.connection().await?;
        let started = Instant::now();
        let r: Result<u64, _> = redis::cmd("DBSIZE").query_async(&mut c).await;
        let size_before = self.forget_on_error(r)?;
        let mut tally = Tally::new(families);
        let mut seen: HashSet<String> = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let r: Result<(u64, Vec<Vec<u8>>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(self.opts.scan_count)
                .query_async(&mut c)
                .await;
            let (next, keys) = self.forget_on_error(r)?;
            let mut matched: Vec<(String, Vec<usize>)> = Vec::new();
            // Keys are read as bytes: one that is not UTF-8 (the application's own) is no rule's
            // (rules render keys from text) and must not fail the sample.
            for k in keys.into_iter().filter_map(|k| String::from_utf8(k).ok()) {
                if seen.contains(&k) {
                    continue;
                }
                let rules: Vec<usize> = families.matching(&k).collect();
                if !rules.is_empty() {
                    matched.push((k.clone(), rules));
                }
                seen.insert(k);
            }
            if !matched.is_empty() {
                let mut pipe = redis::pipe();
                for (k, _) in &matched {
                    pipe.cmd("MEMORY").arg("USAGE").arg(k);
                }
                let r: Result<Vec<Option<u64>>, _> = pipe.query_async(&mut c).await;
                let sizes = self.forget_on_error(r)?;
                for ((_, rules), size) in matched.into_iter().zip(sizes) {
                    // Gone since the scan saw it (expired, evicted, invalidated): not counted.
                    if let Some(size) = size {
                        tally.add(rules, size);
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                tally.complete = true;
                break;
            }
            if started.elapsed() >= limits.budget || seen.len() >= limits.max_keys {
                break;
            }
        }
        let r: Result<u64, _> = redis::cmd("DBSIZE").query_async(&mut c).await;
        let size_after = self.forget_on_error(r)?;
        tally.scanned = seen.len() as u64;
        tally.total = (size_before + size_after) / 2;
        Ok(estimate(&tally))
    }
}
