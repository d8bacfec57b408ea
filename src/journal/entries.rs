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
    /// Why: the first change that asked for it (see [`Entry::reason_text`]).
    pub reason: String,
    /// How many changes asked for the row's targets.
    pub causes: u32,
    /// The glob covering the row's family (rows of one family fold together).
    pub family: String,
    pub triggered_at: DateTime<Utc>,
    pub rule: String,
    pub table: String,
    pub lsn: Lsn,
}

/// Groups actions into journal rows: one per pattern or key, except that keys (or patterns)
/// sharing a template family are folded into one row. A target asked for more than once (by
/// several batches of a journal group) is one member; its changes all count. Pure.
pub fn entries<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Vec<Entry> {
    let actions = actions.into_iter();
    let mut groups: Vec<Vec<&Action>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(actions.size_hint().0);
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
            let mut seen = std::collections::HashSet::with_capacity(g.len());
            let distinct: Vec<&str> = g
                .iter()
                .map(|a| a.target.text())
                .filter(|t| seen.insert(*t))
                .collect();
            let (key_pattern, kind, members) = if distinct.len() == 1 {
                (
                    first.target.text().to_string(),
                    first.target.kind(),
                    Vec::new(),
                )
            } else {
                (
                    first.family.clone(),
                    plural(first.target.kind()),
                    distinct.into_iter().map(str::to_string).collect(),
                )
            };
            Entry {
                key_pattern,
                kind,
                members,
                reason: first.reason.clone(),
                causes,
                family: first.family.clone(),
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

impl Entry {
    /// The `reason` column: the first change, and how many more asked for the same row.
    pub fn reason_text(&self) -> std::borrow::Cow<'_, str> {
        if self.causes > 1 {
            format!("{} (+{} more changes)", self.reason, self.causes - 1).into()
        } else {
            self.reason.as_str().into()
        }
    }

    /// The targets' texts: the members, or the one key or pattern.
    fn texts(&self) -> impl Iterator<Item = &str> {
        let one = self.members.is_empty().then_some(self.key_pattern.as_str());
        self.members.iter().map(String::as_str).chain(one)
    }
}

/// Folds rows of the same family and kind (from the batches of one journal group) into one
/// row each: members merged without repeats, changes counted, the earliest trigger kept. Pure.
pub fn fold(rows: Vec<Entry>) -> Vec<Entry> {
    let mut groups: Vec<Vec<Entry>> = Vec::new();
    let mut index: HashMap<(String, &'static str), usize> = HashMap::new();
    for e in rows {
        let slot = *index
            .entry((e.family.clone(), singular(e.kind)))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[slot].push(e);
    }
    groups
        .into_iter()
        .filter_map(|g| {
            // Each target once, in the order first asked for: one pass over the group.
            let members: usize = g.iter().map(|e| e.members.len().max(1)).sum();
            let mut seen = std::collections::HashSet::with_capacity(members);
            let texts: Vec<String> = g
                .iter()
                .flat_map(Entry::texts)
                .filter(|t| seen.insert(*t))
                .map(str::to_string)
                .collect();
            let mut rows = g.into_iter();
            let mut into = rows.next()?;
            for e in rows {
                into.causes += e.causes;
                into.triggered_at = into.triggered_at.min(e.triggered_at);
            }
            if texts.len() > 1 {
                into.key_pattern = into.family.clone();
                into.kind = plural(singular(into.kind));
                into.members = texts;
            }
            Some(into)
        })
        .collect()
}

/// The `kind` of one target, from a row's (singular or plural) kind.
fn singular(kind: &'static str) -> &'static str {
    match kind {
        "keys" => "key",
        "patterns" => "pattern",
        "tags" => "tag",
        "tag-patterns" => "tag-pattern",
        "bumps" => "bump",
        "bump-patterns" => "bump-pattern",
        other => other,
    }
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
            e[0].reason_text().ends_with("(+2 more changes)"),
            "{}",
            e[0].reason_text()
        );
        assert_eq!((e[1].kind, e[1].key_pattern.as_str()), ("key", "s:a"));
        assert!(e[1].members.is_empty());
        assert_eq!((e[2].kind, e[2].key_pattern.as_str()), ("pattern", "p:*"));
    }

    #[test]
    fn rows_of_one_family_fold_across_batches() {
        let first = entries(&[action(Target::Key("c:1".into()), "c:*", 1)]);
        let second = entries(&[
            action(Target::Key("c:1".into()), "c:*", 1),
            action(Target::Key("c:2".into()), "c:*", 1),
            action(Target::Pattern("p:*".into()), "p:*", 1),
        ]);
        let third = entries(&[action(Target::Key("c:3".into()), "c:*", 1)]);
        let rows = fold(first.into_iter().chain(second).chain(third).collect());
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (rows[0].kind, rows[0].key_pattern.as_str()),
            ("keys", "c:*")
        );
        assert_eq!(rows[0].members, ["c:1", "c:2", "c:3"]);
        assert_eq!(rows[0].causes, 4);
        assert!(rows[0].reason_text().ends_with("(+3 more changes)"));
        assert_eq!(
            (rows[1].kind, rows[1].key_pattern.as_str()),
            ("pattern", "p:*")
        );
        // One key asked for twice stays a plain row.
        let rows = fold(
            [
                entries(&[action(Target::Key("c:1".into()), "c:*", 1)]),
                entries(&[action(Target::Key("c:1".into()), "c:*", 1)]),
            ]
            .concat(),
        );
        assert_eq!((rows[0].kind, rows[0].key_pattern.as_str()), ("key", "c:1"));
        assert_eq!(rows[0].causes, 2);
    }
}
