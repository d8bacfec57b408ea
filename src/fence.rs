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
//! # Fenced fills
//!
//! Applications that fill the cache themselves (cache-aside) race the worker: a reader misses,
//! reads the old row, the change commits and is invalidated, then the reader SETs the old value,
//! which stays until the next change. For rules with `fenced_fills = true` the worker raises
//! *fill marks* with every invalidation of the rule's keys, tags and patterns — the same key
//! marks ([`mark_key`]; a tag set's mark is the mark of its key `<prefix>tag:<name>`) and, for a
//! pattern, a *pattern mark* ([`pattern_mark_key`], `<prefix>cw:p:<the pattern's literal
//! prefix>`) — before anything is unlinked. A cooperating reader
//! (`clients/django`, [`FILL_SCRIPT`]) takes a *token* before it reads
//! the database: the newest version among the key's mark, its tags' marks and the pattern marks
//! of every prefix of the key and of the tag keys. Its fill is a script that recomputes the token
//! and sets the value (and adds the key to its tag sets) only if the token is unchanged. If the
//! invalidation's marks were raised after the token was taken, the fill is refused; if before,
//! the reader's database read began after the mark, so after the commit, and read the new row;
//! a fill that lands before the marks is unlinked by the invalidation that follows them.
//! Versions only grow (commit positions in commit order), so "unchanged" is "nothing raised".
//! Rules without `fenced_fills` pay nothing; a fenced rule pays one mark script per key, tag or
//! pattern it invalidates, in the same pipeline as the unlinks.
//!
//! Planning raises marks for the rules' own firings (`crate::plan`); every other invalidation
//! — another rule's key, a delayed pass, an application request, the CLI — raises the marks
//! [`fences`] computes for its targets. The cache target raises marks before it unlinks
//! anything ([`crate::target::CacheTarget::execute`]). This module is pure: key names, versions
//! and the fence computation; the compare-and-set itself is the target's.

use std::collections::HashMap;

use crate::action::Target;
use crate::glob::{glob_match, literal_prefix, may_overlap};
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

/// The pattern mark of `pattern` (a full glob): `<prefix>cw:p:<its literal prefix under
/// key_prefix>`, raised when the pattern is invalidated for a fenced rule. `None` when the
/// pattern cannot match a key under `key_prefix`. A pattern whose literal text stops inside the
/// prefix (`*`, `:*`) may match any key: its mark is the empty prefix's, which every fill checks.
pub fn pattern_mark_key(key_prefix: &str, pattern: &str) -> Option<String> {
    let lit = literal_prefix(pattern);
    let rest = match lit.strip_prefix(key_prefix) {
        Some(rest) => rest,
        None if key_prefix.starts_with(lit) => "",
        None => return None,
    };
    Some(format!("{key_prefix}cw:p:{rest}"))
}

/// The fill mark an invalidation of `target` raises for a rule with fenced fills (bumps need
/// none: a key under an old namespace version is never read again).
pub fn fill_mark(key_prefix: &str, target: &Target) -> Option<String> {
    match target {
        Target::Key(k) | Target::Tag(k) => Some(mark_key(key_prefix, k)),
        Target::Pattern(p) | Target::TagPattern(p) => pattern_mark_key(key_prefix, p),
        Target::Bump(_) | Target::BumpPattern(_) => None,
    }
}

/// The fenced fill, one script in two modes. KEYS[1] the key, KEYS[2..] its tag sets; ARGV[1]
/// key_prefix. The *token* is the newest version among the key's mark, its tag sets' marks and
/// the pattern marks of every prefix of the key and of each tag key (what any invalidation of
/// them raises; "" when no mark exists).
///
/// * With ARGV[1] alone, it returns the token (taken before the database read).
/// * With ARGV[2] the token taken, ARGV[3] the value and ARGV[4] the TTL in seconds (0: none),
///   it sets KEYS[1] (with `EX`) and adds it to the tag sets only if the token is unchanged;
///   returns 1 when filled, 0 when refused.
pub const FILL_SCRIPT: &str = r"
local function token(keys, prefix)
  local best = ''
  local function see(v) if v and v > best then best = v end end
  local plen = #prefix
  for _, k in ipairs(keys) do
    local rest = k
    if k:sub(1, plen) == prefix then rest = k:sub(plen + 1) end
    see(redis.call('GET', prefix .. 'cw:v:' .. rest))
    for i = 0, #rest do
      see(redis.call('GET', prefix .. 'cw:p:' .. rest:sub(1, i)))
    end
  end
  return best
end
local now = token(KEYS, ARGV[1])
if #ARGV == 1 then return now end
if now ~= ARGV[2] then return 0 end
local ttl = tonumber(ARGV[4])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[3])
end
for i = 2, #KEYS do redis.call('SADD', KEYS[i], KEYS[1]) end
return 1
";

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
    // Fenced-fill rules' families: keys (and their patterns' keys), and tag sets.
    let tag_prefix = format!("{key_prefix}tag:");
    let mut fenced_keys: Vec<String> = Vec::new();
    let mut fenced_tags: Vec<String> = Vec::new();
    for r in rules.rules.iter().filter(|r| r.fenced_fills) {
        let warm = r.warm.as_ref().map(|w| &w.key);
        for t in r.keys.iter().chain(&r.patterns).chain(warm) {
            fenced_keys.push(t.value.family_pattern(key_prefix));
        }
        for t in &r.tags {
            fenced_tags.push(t.value.family_pattern(&tag_prefix));
        }
    }
    if families.is_empty() && fenced_keys.is_empty() && fenced_tags.is_empty() {
        return Vec::new();
    }
    let mut out: HashMap<String, Version> = HashMap::new();
    let mut raise = |k: String, lsn: Version| {
        let m = out.entry(k).or_insert(lsn);
        *m = (*m).max(lsn);
    };
    for (target, lsn) in targets {
        let fenced = match target {
            Target::Key(k) => fenced_keys.iter().any(|f| glob_match(f, k)),
            Target::Tag(t) => fenced_tags.iter().any(|f| glob_match(f, t)),
            Target::Pattern(p) => fenced_keys.iter().any(|f| may_overlap(p, f)),
            Target::TagPattern(p) => fenced_tags.iter().any(|f| may_overlap(p, f)),
            Target::Bump(_) | Target::BumpPattern(_) => false,
        };
        if let Some(m) = fenced.then(|| fill_mark(key_prefix, target)).flatten() {
            raise(m, lsn);
        }
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
    fn fenced_rules_raise_fill_marks_for_keys_tags_and_patterns() {
        let rules = RuleSet::new(
            parse_file(
                Path::new("f.toml"),
                "[[rule]]\nname='f'\ntable='courses'\nkeys=['course:{id}']\npatterns=['catalog:page:*']\n\
                 tags=['course:{id}']\nfenced_fills=true\n\
                 [[rule]]\nname='plain'\ntable='lessons'\nkeys=['lesson:{id}']\n",
            )
            .unwrap(),
        );
        let t = |s: &str| s.to_string();
        let targets = [
            Target::Key(t(":1:course:9")),
            Target::Key(t(":1:catalog:page:2")),
            Target::Tag(t(":1:tag:course:9")),
            Target::Pattern(t(":1:catalog:*")),
            Target::TagPattern(t(":1:tag:course:*")),
            Target::Key(t(":1:lesson:1")),
            Target::Pattern(t(":1:lesson:*")),
            Target::Pattern(t("*")),
        ];
        let f = fences(&rules, ":1:", targets.iter().map(|t| (t, Version(7))));
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                ":1:cw:p:",
                ":1:cw:p:catalog:",
                ":1:cw:p:tag:course:",
                ":1:cw:v:catalog:page:2",
                ":1:cw:v:course:9",
                ":1:cw:v:tag:course:9",
            ],
            "the plain rule's lesson keys raise nothing"
        );
    }

    #[test]
    fn a_patterns_mark_is_its_literal_prefix_under_the_key_prefix() {
        assert_eq!(
            pattern_mark_key(":1:", ":1:catalog:page:*").as_deref(),
            Some(":1:cw:p:catalog:page:")
        );
        assert_eq!(
            pattern_mark_key(":1:", ":1:cour?e:*").as_deref(),
            Some(":1:cw:p:cour")
        );
        assert_eq!(pattern_mark_key(":1:", "*").as_deref(), Some(":1:cw:p:"));
        assert_eq!(pattern_mark_key(":1:", ":*").as_deref(), Some(":1:cw:p:"));
        assert_eq!(pattern_mark_key(":1:", ":2:course:*"), None);
        assert_eq!(fill_mark(":1:", &Target::Bump(":1:ns:1".into())), None);
    }

    #[test]
    fn the_django_companion_runs_this_very_fill_script() {
        let py = include_str!("../clients/django/src/cachewarden_django/fill.py");
        let between = |name: &str| {
            let start = py.find(&format!("{name} = r\"\"\"")).unwrap() + name.len() + 7;
            let end = start + py[start..].find("\"\"\"").unwrap();
            py[start..end].trim().to_string()
        };
        assert_eq!(between("FILL_SCRIPT"), FILL_SCRIPT.trim());
    }

    #[test]
    fn versions_compare_as_text_like_numbers() {
        assert!(Version(0xFF).text() < Version(0x100).text());
        assert_eq!(Version(0x16_B374_D848).to_string(), "16/B374D848");
    }
}
