//! How a batch's actions become `cache_invalidations` rows, and journal rows become targets
//! again. Pure.
//!
//! A row is one invalidation: one exact key or pattern, or — when one rule template produced
//! many keys in the same batch — all of them in one row (`kind = 'keys'`, the keys in `keys`,
//! their family glob in `key_pattern`). Grouping keeps the journal's cost a small fraction of
//! the changes it records: a 100-row transaction costs one journal row per template, not 100.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::action::{Action, Target};
use crate::source::Lsn;

/// One `cache_invalidations` row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key_pattern: String,
    pub kind: &'static str,
    /// The members of a `keys`/`patterns` row.
    pub members: Vec<String>,
    pub reason: String,
    pub triggered_at: DateTime<Utc>,
    pub rule: String,
    pub table: String,
    pub lsn: Lsn,
}

/// Groups a batch's actions into journal rows: one per pattern or key, except that keys (or
/// patterns) sharing a template family are folded into one row. Pure.
pub fn entries(actions: &[Action]) -> Vec<Entry> {
    let mut groups: Vec<Vec<&Action>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for a in actions {
        let slot = *index
            .entry((a.family.as_str(), a.target.kind()))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[slot].push(a);
    }
    groups
        .into_iter()
        .map(|g| {
            let first = g[0];
            let causes: u32 = g.iter().map(|a| a.causes).sum();
            let reason = if causes > 1 {
                format!("{} (+{} more changes)", first.reason, causes - 1)
            } else {
                first.reason.clone()
            };
            let (key_pattern, kind, members) = if g.len() == 1 {
                (
                    first.target.text().to_string(),
                    first.target.kind(),
                    Vec::new(),
                )
            } else {
                (
                    first.family.clone(),
                    plural(first.target.kind()),
                    g.iter().map(|a| a.target.text().to_string()).collect(),
                )
            };
            Entry {
                key_pattern,
                kind,
                members,
                reason,
                triggered_at: g
                    .iter()
                    .map(|a| a.triggered_at)
                    .min()
                    .unwrap_or(first.triggered_at),
                rule: first.rule.clone(),
                table: first.table.clone(),
                lsn: first.version.lsn(),
            }
        })
        .collect()
}

/// The `kind` of a row holding several targets of one kind.
pub fn plural(kind: &str) -> &'static str {
    match kind {
        "key" => "keys",
        "pattern" => "patterns",
        "tag" => "tags",
        "tag-pattern" => "tag-patterns",
        "bump" => "bumps",
        _ => "bump-patterns",
    }
}

/// Why a journal row (one an application wrote, typically) cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("kind {0:?} needs a non-empty keys array")]
    NoMembers(String),
    #[error("keys has a NULL element at position {0}")]
    NullMember(usize),
    #[error("key_pattern is empty")]
    EmptyTarget,
    #[error("keys is not a one-dimensional text array ({0})")]
    BadArray(String),
}

/// The targets of a journal row (`kind`, `key_pattern`, `keys`), validated: the values come
/// from outside. Unknown kinds are treated as one pattern: the widest reading of an
/// application's request.
pub fn row_targets(
    kind: &str,
    key_pattern: String,
    members: Option<Vec<Option<String>>>,
) -> Result<Vec<Target>, RowError> {
    let make: fn(String) -> Target = match kind {
        "keys" => Target::Key,
        "patterns" => Target::Pattern,
        "tags" => Target::Tag,
        "tag-patterns" => Target::TagPattern,
        "bumps" => Target::Bump,
        "bump-patterns" => Target::BumpPattern,
        other => {
            if key_pattern.is_empty() {
                return Err(RowError::EmptyTarget);
            }
            let fallback = Target::Pattern(key_pattern.clone());
            return Ok(vec![
                Target::from_kind(other, key_pattern).unwrap_or(fallback)
            ]);
        }
    };
    let members = members
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RowError::NoMembers(kind.to_string()))?;
    members
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m {
            Some(m) if !m.is_empty() => Ok(make(m)),
            Some(_) => Err(RowError::EmptyTarget),
            None => Err(RowError::NullMember(i + 1)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_outside_are_validated() {
        let m = |v: &[Option<&str>]| Some(v.iter().map(|s| s.map(String::from)).collect());
        assert_eq!(
            row_targets("keys", "c:*".into(), m(&[Some("c:1"), Some("c:2")])),
            Ok(vec![Target::Key("c:1".into()), Target::Key("c:2".into())])
        );
        assert_eq!(
            row_targets("keys", "c:*".into(), m(&[Some("c:1"), None])),
            Err(RowError::NullMember(2))
        );
        assert_eq!(
            row_targets("keys", "c:*".into(), None),
            Err(RowError::NoMembers("keys".into()))
        );
        assert_eq!(
            row_targets("key", String::new(), None),
            Err(RowError::EmptyTarget)
        );
        assert_eq!(
            row_targets("mystery", "x:*".into(), None),
            Ok(vec![Target::Pattern("x:*".into())]),
            "the widest reading"
        );
    }

    fn action(target: Target, family: &str, causes: u32) -> Action {
        Action {
            target,
            reason: "public.t update id=1 lsn=0/1 rule=r".into(),
            rule: "r".into(),
            table: "public.t".into(),
            version: crate::fence::Version(1),
            triggered_at: Utc::now(),
            causes,
            family: family.into(),
            also: Vec::new(),
        }
    }

    #[test]
    fn groups_keys_by_family_and_keeps_singletons_plain() {
        let e = entries(&[
            action(Target::Key("c:1".into()), "c:*", 1),
            action(Target::Key("s:a".into()), "s:*", 1),
            action(Target::Key("c:2".into()), "c:*", 2),
            action(Target::Pattern("p:*".into()), "p:*", 1),
        ]);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].kind, e[0].key_pattern.as_str()), ("keys", "c:*"));
        assert_eq!(e[0].members, ["c:1", "c:2"]);
        assert!(
            e[0].reason.ends_with("(+2 more changes)"),
            "{}",
            e[0].reason
        );
        assert_eq!((e[1].kind, e[1].key_pattern.as_str()), ("key", "s:a"));
        assert!(e[1].members.is_empty());
        assert_eq!((e[2].kind, e[2].key_pattern.as_str()), ("pattern", "p:*"));
    }
}
