//! The never-stale fence protocol: how invalidations and warm writes are ordered so that a
//! warm write can never put an older value over a newer invalidation.
//!
//! # Never stale
//!
//! Every warmed value carries a [`Version`]: the commit position of the change that asked for
//! it (or, for bulk warming, a position taken before the read's snapshot). Before any key of a
//! `refresh`/`write-through` rule is unlinked, the worker raises the key's *mark*
//! ([`mark_key`], `<key_prefix>cw:v:<key without the prefix>`: every key the worker writes
//! lives under `key_prefix`, so a Redis ACL limited to the application's prefix is enough) to the invalidating change's version, and a whole-family
//! invalidation (TRUNCATE, an undecodable change, an overlapping pattern) raises the rule's mark
//! ([`rule_mark_key`]). A warm write is a compare-and-set on the cache target: it lands only if
//! its version is not older than both marks. (A write need not raise marks itself: two refetches
//! with no invalidation between them read the same data.) Bulk writes share one version, and
//! while the rule's *max mark* ([`rule_max_mark_key`], raised with every key mark) is older than
//! it, no key can refuse them, so they may go as plain writes guarded by a watch on the rule's
//! marks.
//!
//! So for a refetch that started before a later change C: if its write comes after C's
//! invalidation, C's mark is newer and the write is refused; if it comes before, C's
//! invalidation removes it. Changes are processed in commit order, so marks only grow. A refresh
//! reads only once the triggering transaction is visible to its snapshot (see
//! [`crate::warm`]), so a value versioned `V` never predates `V`.
//!
//! Planning raises marks for the rules' own firings (`crate::plan`); every other invalidation
//! — another rule's key, a delayed pass, an application request, the CLI — raises the marks
//! [`fences`] computes for its targets. The cache target raises marks before it unlinks
//! anything ([`crate::target::CacheTarget::execute`]). This module is pure: key names, versions
//! and the fence computation; the compare-and-set itself is the target's.

use std::collections::HashMap;

use crate::action::Target;
use crate::glob::{glob_match, may_overlap};
use crate::rules::RuleSet;
pub use crate::version::Version;

/// How long marks live: long enough to outlast any in-flight warm write.
pub const MARK_TTL_SECS: u64 = 86_400;

/// The mark key recording the newest invalidation of `key` (a full key, under `key_prefix`).
pub fn mark_key(key_prefix: &str, key: &str) -> String {
    let rest = key.strip_prefix(key_prefix).unwrap_or(key);
    format!("{key_prefix}cw:v:{rest}")
}

/// Where versions before 0.2 kept a key's mark (outside `key_prefix`); moved at start
/// ([`crate::target::redis`]'s migration).
pub fn legacy_mark_key(key: &str) -> String {
    format!("cw:v:{key}")
}

/// The mark key recording the newest invalidation of any single key of a rule: bulk warming
/// writes natively while it is older than its snapshot.
pub fn rule_max_mark_key(prefix: &str, rule: &str) -> String {
    format!("{prefix}cw:v:max:{rule}")
}

/// The mark key recording the newest whole-family invalidation of a rule.
pub fn rule_mark_key(prefix: &str, rule: &str) -> String {
    format!("{prefix}cw:v:rule:{rule}")
}

/// Marks that invalidations outside a warm rule's own firing must raise: a key unlinked by
/// another rule, a request or a delayed pass may be a warmed key, and a refetch in flight must
/// not land after it. Keys matching a warm rule's key family get their key mark (and the rule's
/// max mark); patterns that may overlap a family (their literal prefixes are compatible) raise
/// the rule's mark. Pure.
pub fn fences<'a>(
    rules: &RuleSet,
    key_prefix: &str,
    targets: impl IntoIterator<Item = (&'a Target, Version)>,
) -> Vec<(String, Version)> {
    let families: Vec<(String, &str)> = rules
        .rules
        .iter()
        .filter_map(|r| {
            r.warm
                .as_ref()
                .map(|w| (w.key.value.family_pattern(key_prefix), r.name.as_str()))
        })
        .collect();
    if families.is_empty() {
        return Vec::new();
    }
    let mut out: HashMap<String, Version> = HashMap::new();
    let mut raise = |k: String, lsn: Version| {
        let m = out.entry(k).or_insert(lsn);
        *m = (*m).max(lsn);
    };
    for (target, lsn) in targets {
        for (family, rule) in &families {
            match target {
                Target::Key(k) if glob_match(family, k) => {
                    raise(mark_key(key_prefix, k), lsn);
                    raise(rule_max_mark_key(key_prefix, rule), lsn);
                }
                Target::Pattern(p) if may_overlap(p, family) => {
                    raise(rule_mark_key(key_prefix, rule), lsn);
                }
                _ => {}
            }
        }
    }
    let mut v: Vec<(String, Version)> = out.into_iter().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    #[test]
    fn other_invalidations_fence_warmed_keys() {
        let rules = RuleSet::new(
            parse_file(
                Path::new("w.toml"),
                "[[rule]]\nname='w'\ntable='public.courses'\nstrategy='refresh'\nttl=60\n[rule.warm]\nkey='course:{id}'\n\
                 query = 'SELECT title FROM courses WHERE id = $1'\nargs = ['id']\n",
            )
            .unwrap(),
        );
        let key = Target::Key("p:course:9".into());
        let other = Target::Key("p:lesson:1".into());
        let pattern = Target::Pattern("p:cour*".into());
        let unrelated = Target::Pattern("p:catalog:*".into());
        let f = fences(
            &rules,
            "p:",
            [
                (&key, Version(5)),
                (&other, Version(5)),
                (&pattern, Version(7)),
                (&unrelated, Version(8)),
            ],
        );
        assert_eq!(
            f,
            [
                ("p:cw:v:course:9".to_string(), Version(5)),
                ("p:cw:v:max:w".to_string(), Version(5)),
                ("p:cw:v:rule:w".to_string(), Version(7)),
            ]
        );
    }

    #[test]
    fn versions_compare_as_text_like_numbers() {
        assert!(Version(0xFF).text() < Version(0x100).text());
        assert_eq!(Version(0x16_B374_D848).to_string(), "16/B374D848");
    }
}
