//! Key families that reach too far. A template's family is the glob of every key it can render
//! (what a TRUNCATE or a conservative invalidation unlinks). A family with no literal text
//! before its first wildcard — a template that is only a placeholder, with no `key_prefix` —
//! would wipe the whole Redis database; one that may match cachewarden's own keys (the
//! never-stale marks `cw:v:…` and `<key_prefix>cw:v:…`) would erase the fences that keep warm
//! writes from going stale. Both are refused at load, with the template's file and line. Pure.

use super::{Diagnostic, RuleSet, Severity};
use crate::glob::{literal_prefix, may_overlap};

/// The globs of cachewarden's own keys: marks and reported hit counters under `key_prefix`
/// (and the marks of versions before 0.2, outside it).
fn own_keys(key_prefix: &str) -> [String; 2] {
    ["cw:v:*".to_string(), format!("{key_prefix}cw:*")]
}

/// Errors for every template whose family matches everything or may match cachewarden's own
/// keys, given the configured `key_prefix`.
pub fn check_families(rules: &RuleSet, key_prefix: &str) -> Vec<Diagnostic> {
    let tag_prefix = format!("{key_prefix}tag:");
    let own = own_keys(key_prefix);
    let mut out = Vec::new();
    for rule in &rules.rules {
        let groups = [
            (&rule.keys, key_prefix),
            (&rule.patterns, key_prefix),
            (&rule.bumps, key_prefix),
            (&rule.tags, tag_prefix.as_str()),
        ];
        for (templates, prefix) in groups {
            for t in templates {
                let family = t.value.family_pattern(prefix);
                let message = if literal_prefix(&family).is_empty() {
                    format!(
                        "rule {:?}: {:?} can match every key in the Redis database (family {family:?}): \
                         start the template with literal text, or set [redis] key_prefix",
                        rule.name, t.value.source
                    )
                } else if let Some(o) = own.iter().find(|o| may_overlap(&family, o)) {
                    format!(
                        "rule {:?}: {:?} may match cachewarden's own keys ({o}, the marks that keep \
                         warm writes from going stale): start the template with literal text that is \
                         not \"cw:v:\"",
                        rule.name, t.value.source
                    )
                } else {
                    continue;
                };
                out.push(Diagnostic {
                    at: t.at.clone(),
                    severity: Severity::Error,
                    message,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    fn rules(body: &str) -> RuleSet {
        RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                &format!("[[rule]]\nname = 'r'\ntable = 'public.t'\n{body}\n"),
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_family_that_matches_everything_is_refused() {
        let d = check_families(&rules("keys = ['{slug}']"), "");
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("every key"), "{}", d[0].message);
        assert_eq!(d[0].at.line, 4);
        assert_eq!(check_families(&rules("patterns = ['*']"), "").len(), 1);
    }

    #[test]
    fn a_family_that_may_match_the_marks_is_refused() {
        assert_eq!(check_families(&rules("keys = ['c{id}']"), "").len(), 1);
        assert_eq!(check_families(&rules("keys = ['{slug}']"), ":1:").len(), 1);
        assert_eq!(check_families(&rules("patterns = ['cw:v:*']"), "").len(), 1);
    }

    #[test]
    fn ordinary_families_pass() {
        assert!(check_families(&rules("keys = ['course:{id}']"), ":1:").is_empty());
        assert!(check_families(&rules("keys = ['course:{id}']"), "").is_empty());
        assert!(check_families(&rules("tags = ['{slug}']"), "").is_empty());
        assert!(check_families(&rules("patterns = ['catalog:page:*']"), ":1:").is_empty());
    }
}
