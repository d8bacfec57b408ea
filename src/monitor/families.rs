//! What a sample of the cache's keyspace says about each rule's key family: how many keys it
//! holds and how much memory they use. Pure: the cache target scans and asks `MEMORY USAGE`;
//! this module classifies keys and turns the tally into estimates with their error.
//!
//! A rule's family is the globs of every key it can write: its `keys`, its `patterns` and its
//! warm key, under `key_prefix` (tag sets and version keys are bookkeeping, not cached values).
//! A key that two rules' families both match counts for both.
//!
//! **Sampling error.** A scan that reaches the end of the keyspace counts exactly (each key
//! once: duplicates `SCAN` may return while Redis rehashes are dropped). One stopped by its
//! budget has seen `n` distinct keys of the `N` the database holds; Redis' `SCAN` walks hash
//! buckets in an order that has nothing to do with key names, so those `n` are a uniform
//! random sample of the keyspace and a family's count is estimated as `m / n · N` (`m` of the
//! sample matched), with standard error `N · sqrt(p (1 − p) / n · (1 − n / N))`, `p = m / n`.
//! The true count lies within three standard errors of the estimate 99.7% of the time. Memory
//! is estimated the same way, from the matched keys' `MEMORY USAGE`.

use crate::glob::{glob_match, literal_prefix};
use crate::rules::Rule;

/// Every rule's key family, in rule order.
#[derive(Debug, Clone, Default)]
pub struct Families {
    rules: Vec<Family>,
}

#[derive(Debug, Clone)]
struct Family {
    rule: String,
    /// `(literal prefix, glob)`: the prefix rejects most keys without running the glob.
    globs: Vec<(String, String)>,
}

impl Families {
    /// The families of `rules` under `key_prefix`.
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Rule>, key_prefix: &str) -> Families {
        let rules = rules
            .into_iter()
            .map(|r| {
                let mut globs: Vec<String> = r
                    .keys
                    .iter()
                    .chain(&r.patterns)
                    .chain(r.warm.iter().map(|w| &w.key))
                    .map(|t| t.value.family_pattern(key_prefix))
                    .collect();
                globs.sort();
                globs.dedup();
                Family {
                    rule: r.name.clone(),
                    globs: globs
                        .into_iter()
                        .map(|g| (literal_prefix(&g).to_string(), g))
                        .collect(),
                }
            })
            .collect();
        Families { rules }
    }

    /// One family per key template (and warm key) of each rule, named `rule template` — for
    /// the advisor, which asks which templates the application actually caches.
    pub fn per_template<'a>(
        rules: impl IntoIterator<Item = &'a Rule>,
        key_prefix: &str,
    ) -> Families {
        let mut out = Vec::new();
        for r in rules {
            let warm = r.warm.iter().map(|w| &w.key);
            let mut seen = std::collections::HashSet::new();
            for t in r.keys.iter().chain(warm) {
                if !seen.insert(t.value.source.clone()) {
                    continue;
                }
                let g = t.value.family_pattern(key_prefix);
                out.push(Family {
                    rule: format!("{} {}", r.name, t.value.source),
                    globs: vec![(literal_prefix(&g).to_string(), g)],
                });
            }
        }
        Families { rules: out }
    }

    /// The rules' names, in the order of [`Tally`]'s and [`estimate`]'s entries.
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|f| f.rule.as_str())
    }

    /// The name of the rule at `index` (as [`Families::matching`] yields it).
    pub fn rule(&self, index: usize) -> &str {
        self.rules[index].rule.as_str()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The indexes of the rules whose family matches `key`.
    pub fn matching<'a>(&'a self, key: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.rules.iter().enumerate().filter_map(move |(i, f)| {
            f.globs
                .iter()
                .any(|(prefix, glob)| key.starts_with(prefix.as_str()) && glob_match(glob, key))
                .then_some(i)
        })
    }
}

pub use crate::config::SampleLimits;

/// What one scan saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct keys scanned.
    pub scanned: u64,
    /// Per rule (in [`Families`] order): keys matched and their `MEMORY USAGE` in bytes.
    pub matched: Vec<(u64, u64)>,
    /// Keys in the database (`DBSIZE`) while the scan ran.
    pub total: u64,
    /// The scan reached the end of the keyspace.
    pub complete: bool,
}

impl Tally {
    /// An empty tally for `families`.
    pub fn new(families: &Families) -> Tally {
        Tally {
            matched: vec![(0, 0); families.len()],
            ..Tally::default()
        }
    }

    /// Counts one distinct scanned key, matched by `rules`, using `memory` bytes.
    pub fn add(&mut self, rules: impl IntoIterator<Item = usize>, memory: u64) {
        for i in rules {
            if let Some(m) = self.matched.get_mut(i) {
                m.0 += 1;
                m.1 += memory;
            }
        }
    }
}

/// One rule's family, estimated from a [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Keys (exact when the scan was complete).
    pub key_count: u64,
    /// Standard error of `key_count` (0 when exact).
    pub key_count_error: f64,
    /// Bytes, by `MEMORY USAGE`.
    pub memory_bytes: u64,
    /// The figures are counts, not estimates.
    pub exact: bool,
    /// Distinct keys the scan saw (of every family and none).
    pub scanned: u64,
}

impl Estimate {
    /// The sum of independent estimates (one per cache target): counts add, errors add in
    /// quadrature.
    pub fn merge(self, other: Estimate) -> Estimate {
        Estimate {
            key_count: self.key_count + other.key_count,
            key_count_error: self.key_count_error.hypot(other.key_count_error),
            memory_bytes: self.memory_bytes + other.memory_bytes,
            exact: self.exact && other.exact,
            scanned: self.scanned + other.scanned,
        }
    }
}

/// Each rule's estimate from `tally` (see the module docs for the formulas).
pub fn estimate(tally: &Tally) -> Vec<Estimate> {
    let n = tally.scanned;
    // The database cannot hold fewer keys than the scan saw.
    let total = tally.total.max(n);
    tally
        .matched
        .iter()
        .map(|&(m, memory)| {
            if tally.complete || n == 0 || n >= total {
                return Estimate {
                    key_count: m,
                    key_count_error: 0.0,
                    memory_bytes: memory,
                    exact: tally.complete || n >= total,
                    scanned: n,
                };
            }
            let (n_f, total_f) = (n as f64, total as f64);
            let p = m as f64 / n_f;
            let scale = total_f / n_f;
            // A sample where every key (or none) matched has a plug-in error of 0, which would
            // claim an exact count; the error is taken at (m + 1/2) / (n + 1) then.
            let pe = if m == 0 || m == n {
                (m as f64 + 0.5) / (n_f + 1.0)
            } else {
                p
            };
            let error = total_f
                * (pe * (1.0 - pe) / n_f * (1.0 - n_f / total_f))
                    .max(0.0)
                    .sqrt();
            Estimate {
                key_count: (m as f64 * scale).round() as u64,
                key_count_error: (error * 10.0).round() / 10.0,
                memory_bytes: (memory as f64 * scale).round() as u64,
                exact: false,
                scanned: n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{parse_file, RuleSet};
    use proptest::prelude::*;
    use std::path::Path;

    fn families() -> Families {
        let rules = RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                "[[rule]]\nname='course'\ntable='public.c'\nkeys=['course:{id}', 'course-slug:{slug}']\n\
                 patterns=['catalog:page:*']\n\
                 [[rule]]\nname='lessons'\ntable='public.l'\nkeys=['course:{course_id}:lessons']\n\
                 [[rule]]\nname='user'\ntable='public.u'\nstrategy='refresh'\nkeys=['user:{id}']\n\
                 [rule.warm]\nkey='user-by-id:{id}'\nquery='select $1'\nargs=['id']\n",
            )
            .unwrap(),
        );
        Families::of(&rules.rules, ":1:")
    }

    #[test]
    fn keys_match_the_families_of_their_rules() {
        let f = families();
        let of = |k: &str| f.matching(k).collect::<Vec<_>>();
        assert_eq!(of(":1:course:42"), [0]);
        assert_eq!(of(":1:catalog:page:3"), [0]);
        // `course:*` also matches the lesson list: both rules count it.
        assert_eq!(of(":1:course:42:lessons"), [0, 1]);
        assert_eq!(of(":1:user-by-id:7"), [2]);
        assert_eq!(of("course:42"), Vec::<usize>::new());
        assert_eq!(of(":2:user:7"), Vec::<usize>::new());
        assert_eq!(f.rules().collect::<Vec<_>>(), ["course", "lessons", "user"]);
    }

    #[test]
    fn a_complete_scan_counts_exactly() {
        let t = Tally {
            scanned: 10,
            matched: vec![(4, 400), (0, 0)],
            total: 12,
            complete: true,
        };
        let e = estimate(&t);
        assert_eq!(e[0].key_count, 4);
        assert_eq!(e[0].memory_bytes, 400);
        assert!(e[0].exact && e[0].key_count_error == 0.0);
        assert_eq!(e[1].key_count, 0);
    }

    #[test]
    fn a_partial_scan_scales_with_its_error() {
        let t = Tally {
            scanned: 1_000,
            matched: vec![(250, 25_000)],
            total: 10_000,
            complete: false,
        };
        let e = estimate(&t)[0];
        assert_eq!(e.key_count, 2_500);
        assert_eq!(e.memory_bytes, 250_000);
        assert!(!e.exact);
        // 10000 · sqrt(0.25 · 0.75 / 1000 · 0.9) = 129.9
        assert!((e.key_count_error - 129.9).abs() < 0.1, "{e:?}");
    }

    #[test]
    fn merged_estimates_add_counts_and_errors_in_quadrature() {
        let a = Estimate {
            key_count: 10,
            key_count_error: 3.0,
            memory_bytes: 5,
            exact: false,
            scanned: 4,
        };
        let m = a.merge(Estimate {
            key_count_error: 4.0,
            exact: true,
            ..a
        });
        assert_eq!((m.key_count, m.memory_bytes, m.scanned), (20, 10, 8));
        assert_eq!(m.key_count_error, 5.0);
        assert!(!m.exact);
    }

    proptest! {
        /// A uniform sample's estimate is within five standard errors of the truth (the
        /// property the documented error rests on), for any family share and sample size;
        /// three sampled keys' weight of slack covers families too small for the normal
        /// approximation (none of them in the sample).
        #[test]
        fn uniform_samples_land_within_the_error(
            total in 1_000u64..50_000,
            share in 0.0f64..1.0,
            fraction in 0.05f64..0.9,
            seed in any::<u64>(),
        ) {
            let members = (total as f64 * share) as u64;
            let n = ((total as f64 * fraction) as u64).max(1);
            // A deterministic shuffle: the first `n` of a permutation of 0..total.
            let mut keys: Vec<u64> = (0..total).collect();
            let mut s = seed | 1;
            for i in (1..keys.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                keys.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let m = keys[..n as usize].iter().filter(|k| **k < members).count() as u64;
            let e = estimate(&Tally { scanned: n, matched: vec![(m, m)], total, complete: false })[0];
            let off = (e.key_count as f64 - members as f64).abs();
            let weight = total as f64 / n as f64;
            prop_assert!(off <= 5.0 * e.key_count_error + 3.0 * weight, "{e:?} vs {members}");
        }
    }
}
