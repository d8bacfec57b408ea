//! Planning: a batch of transactions becomes one deduplicated set of cache actions.
//!
//! [`build`] is pure. It runs every change through the rules of its table, renders keys and
//! patterns with the configured prefix, and keeps each distinct target once, remembering the
//! first change that caused it (for the journal's `reason`), the earliest commit time
//! (`triggered_at`) and how many changes asked for it. TRUNCATE and undecodable changes ask for
//! every key family their table's rules can produce. Planning never drops a target it cannot
//! render exactly: it widens it to a pattern instead.

use std::collections::HashMap;

use crate::action::{Action, Fill, Target, WarmJob};
use crate::encode::row_json;
use crate::fence::{fences, mark_key, rule_mark_key, rule_max_mark_key, Version};
use crate::rules::{Rendered, RowView, Rule, RuleSet, Template, Verdict};
use crate::source::{Change, Datum, Op, Transaction};

/// Which family of targets a template produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Cache,
    Tag,
    Bump,
}

impl Flavor {
    fn exact(self, s: String) -> Target {
        match self {
            Flavor::Cache => Target::Key(s),
            Flavor::Tag => Target::Tag(s),
            Flavor::Bump => Target::Bump(s),
        }
    }
    fn pattern(self, s: String) -> Target {
        match self {
            Flavor::Cache => Target::Pattern(s),
            Flavor::Tag => Target::TagPattern(s),
            Flavor::Bump => Target::BumpPattern(s),
        }
    }
}

/// A deduplicated set of actions for one batch.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Keys to fill after the invalidation, one per key (the last change wins).
    pub warms: Vec<WarmJob>,
    /// Mark keys to raise to a version before anything is unlinked, so no older warm write
    /// can land afterwards.
    pub marks: Vec<(String, Version)>,
    /// Keys that were skipped (absent or NULL values), for logs and `explain`.
    pub skipped: usize,
    /// Keys widened to patterns because a value was not carried by the source.
    pub widened: usize,
    /// Changes that could not be decoded.
    pub undecodable: usize,
    /// `rule: column of table` for columns rules read that the changed table no longer has:
    /// their keys were widened to whole families.
    pub missing_columns: std::collections::BTreeSet<String>,
}

impl Plan {
    /// Adds another plan's work (planned with other rules) to this one: targets already
    /// present are kept once, marks and warm jobs are kept (the highest mark wins on the
    /// target; the warmer keeps the newest job per key).
    pub fn absorb(&mut self, other: Plan) {
        let have: std::collections::HashSet<Target> =
            self.actions.iter().map(|a| a.target.clone()).collect();
        self.actions.extend(
            other
                .actions
                .into_iter()
                .filter(|a| !have.contains(&a.target)),
        );
        self.warms.extend(other.warms);
        self.marks.extend(other.marks);
        self.skipped += other.skipped;
        self.widened += other.widened;
        self.undecodable += other.undecodable;
        self.missing_columns.extend(other.missing_columns);
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().filter_map(|a| match &a.target {
            Target::Key(k) => Some(k.as_str()),
            _ => None,
        })
    }
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().filter_map(|a| match &a.target {
            Target::Pattern(p) => Some(p.as_str()),
            _ => None,
        })
    }
}

/// What planning needs besides the rules.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Prepended to every key and pattern.
    pub key_prefix: String,
    /// Primary key columns by `schema.table`, to name rows in reasons. Tables missing here
    /// fall back to the replica identity columns the source marked.
    pub primary_keys: HashMap<String, Vec<String>>,
    /// Rules switched off in `cache_configs` (`is_active = false`).
    pub disabled: std::collections::HashSet<String>,
    /// The rules live when these changes were committed are not known (a new instance with
    /// other rules inherited them): every change fires its table's rules' whole key families.
    pub whole_families: bool,
    /// Rules that no longer match the schema (a column or table gone): every change of their
    /// table fires their whole key families until the rule file is fixed.
    pub conservative: std::collections::HashSet<String>,
    /// Rule tables by identity (OID): a renamed table's changes, which arrive under its new
    /// name, still reach the rules that name it by its old one.
    pub tables_by_oid: HashMap<u32, String>,
}

/// Appends `id=42` (the primary key, or else the replica identity columns) to `out`, for
/// reasons; nothing when the row names no column.
fn write_identity(out: &mut String, change: &Change, primary_key: Option<&[String]>) {
    let row = if change.op == Op::Delete {
        change.old.as_ref()
    } else {
        change.new.as_ref().or(change.old.as_ref())
    };
    let Some(row) = row else { return };
    let start = out.len();
    for (c, d) in change.relation.columns.iter().zip(row.0.iter()) {
        let named = match primary_key {
            Some(pk) if !pk.is_empty() => pk.contains(&c.name),
            _ => c.is_key,
        };
        if named {
            if out.len() > start {
                out.push(',');
            }
            out.push_str(&c.name);
            match d {
                Datum::Text(v) => {
                    out.push('=');
                    out.push_str(v);
                }
                _ => out.push_str("=?"),
            }
        }
    }
}

/// The rules a change concerns: by its table's name, or by its identity when the table was
/// renamed since the rules were loaded.
fn rules_for<'r>(
    rules: &'r RuleSet,
    cx: &Context,
    change: &Change,
) -> Box<dyn Iterator<Item = &'r Rule> + 'r> {
    match cx.tables_by_oid.get(&change.relation.oid) {
        Some(name) if !change.relation.schema.is_empty() && !change.relation.is_named(name) => {
            rules.for_table(name)
        }
        _ => rules.concerned(change),
    }
}

struct Builder<'a> {
    cx: &'a Context,
    index: HashMap<Target, usize>,
    plan: Plan,
    warms: HashMap<String, Option<WarmJob>>,
    warm_order: Vec<String>,
    marks: HashMap<String, Version>,
}

impl Builder<'_> {
    /// `table` is the change's `schema.table` (or `relation <oid>`), named once per change.
    fn add(
        &mut self,
        target: Target,
        family: String,
        rule: &Rule,
        change: &Change,
        table: &str,
        tx: &Transaction,
    ) {
        if let Some(&i) = self.index.get(&target) {
            let a = &mut self.plan.actions[i];
            a.causes += 1;
            a.triggered_at = a.triggered_at.min(tx.commit_time);
            if a.rule != rule.name && !a.also.contains(&rule.name) {
                a.also.push(rule.name.clone());
            }
            return;
        }
        let table = table.to_string();
        // `public.courses update id=42 lsn=16/B374D848 rule=course-detail`, built in place
        // (one per distinct target: the hot path's largest string).
        let mut reason = String::with_capacity(table.len() + rule.name.len() + 48);
        reason.push_str(&table);
        reason.push(' ');
        reason.push_str(change.op.as_str());
        let pk = self.cx.primary_keys.get(&table).map(Vec::as_slice);
        reason.push(' ');
        let before = reason.len();
        write_identity(&mut reason, change, pk);
        if reason.len() > before {
            reason.push(' ');
        }
        reason.push_str("lsn=");
        tx.commit_lsn.push_to(&mut reason);
        reason.push_str(" rule=");
        reason.push_str(&rule.name);
        if let Some(why) = &change.undecodable {
            reason.push_str(" undecodable: ");
            reason.push_str(why);
        }
        self.index.insert(target.clone(), self.plan.actions.len());
        self.plan.actions.push(Action {
            target,
            reason,
            rule: rule.name.clone(),
            table,
            version: tx.commit_lsn.into(),
            triggered_at: tx.commit_time,
            causes: 1,
            family,
            also: Vec::new(),
        });
    }

    fn change(&mut self, rules: &RuleSet, change: &Change, tx: &Transaction) {
        if change.undecodable.is_some() {
            self.plan.undecodable += 1;
        }
        let mut table = None;
        for rule in rules_for(rules, self.cx, change) {
            if self.cx.disabled.contains(&rule.name) {
                continue;
            }
            let whole_family = match rule.verdict(change) {
                _ if self.cx.whole_families || self.cx.conservative.contains(&rule.name) => true,
                Verdict::FiresWholeFamily => true,
                Verdict::Fires => false,
                _ => continue,
            };
            if rule.warm.is_some() {
                self.warm(rule, change, tx, whole_family);
            }
            let out = rule_targets(rule, change, &self.cx.key_prefix, whole_family);
            self.plan.skipped += out.skipped.len();
            self.plan.widened += out.widened;
            for c in out.missing_columns {
                self.plan.missing_columns.insert(format!(
                    "rule {:?} reads column {c:?}, which {} no longer has",
                    rule.name,
                    change.relation.qualified_name()
                ));
            }
            for (target, family) in out.targets {
                if rule.fenced_fills {
                    if let Some(m) = crate::fence::fill_mark(&self.cx.key_prefix, &target) {
                        self.mark(m, tx.commit_lsn.into());
                    }
                }
                let table = table.get_or_insert_with(|| {
                    if change.relation.schema.is_empty() {
                        format!("relation {}", change.relation.oid)
                    } else {
                        change.relation.qualified_name()
                    }
                });
                self.add(target, family, rule, change, table, tx);
            }
        }
    }
}

impl Builder<'_> {
    fn mark(&mut self, key: String, lsn: Version) {
        let m = self.marks.entry(key).or_insert(lsn);
        *m = (*m).max(lsn);
    }

    /// Marks and warm jobs of a `refresh`/`write-through` rule that fires.
    fn warm(&mut self, rule: &Rule, change: &Change, tx: &Transaction, whole_family: bool) {
        let Some(warm) = &rule.warm else {
            return;
        };
        let prefix = &self.cx.key_prefix;
        let rendered = if whole_family {
            None
        } else {
            match warm.key.value.render(&RowView::new(change), prefix) {
                Rendered::Key(k) => Some(k),
                _ => None,
            }
        };
        let Some(key) = rendered else {
            // The whole family (or an unrenderable key) is invalidated: fence every in-flight
            // warm write of this rule.
            self.mark(rule_mark_key(prefix, &rule.name), tx.commit_lsn.into());
            for job in self.warms.values_mut() {
                if job.as_ref().is_some_and(|j| j.rule == rule.name) {
                    *job = None;
                }
            }
            return;
        };
        self.mark(mark_key(prefix, &key), tx.commit_lsn.into());
        self.mark(rule_max_mark_key(prefix, &rule.name), tx.commit_lsn.into());
        let fill = match (rule.strategy, change.op) {
            (_, Op::Delete) => None,
            (crate::rules::Strategy::WriteThrough, _) => row_json(change).map(Fill::Value),
            _ => {
                let row = RowView::new(change);
                let args = warm
                    .args
                    .iter()
                    .map(|a| match row.get(crate::rules::Side::Current, &a.value) {
                        crate::rules::Lookup::Value(v) => Some(Some(v.to_string())),
                        crate::rules::Lookup::Null => Some(None),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>();
                args.map(|args| Fill::Query { args })
            }
        };
        if !self.warms.contains_key(&key) {
            self.warm_order.push(key.clone());
        }
        let job = fill.map(|fill| WarmJob {
            rule: rule.name.clone(),
            key: key.clone(),
            version: tx.commit_lsn.into(),
            xid: tx.xid,
            ttl: rule.ttl,
            fill,
        });
        self.warms.insert(key, job);
    }
}

/// What one firing rule asks for on one change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleTargets {
    /// Each target with the family glob of the template that produced it.
    pub targets: Vec<(Target, String)>,
    /// Templates not rendered, with the reason (`course-slug:{old.slug}: {old.slug} is absent`).
    pub skipped: Vec<String>,
    /// Keys widened to patterns because a value was not carried.
    pub widened: usize,
    /// Columns the rule reads that the changed table no longer has (dropped or renamed).
    pub missing_columns: Vec<String>,
}

/// Renders every template of a rule that fires on `change`: keys, patterns, tags (`tag:`
/// prefixed) and bumps, or — for TRUNCATE and undecodable changes — their whole families.
/// Pure; used by planning and by `explain`.
pub fn rule_targets(
    rule: &Rule,
    change: &Change,
    key_prefix: &str,
    whole_family: bool,
) -> RuleTargets {
    let tag_prefix = if rule.tags.is_empty() {
        String::new()
    } else {
        format!("{key_prefix}tag:")
    };
    let row = RowView::new(change);
    let mut out = RuleTargets::default();
    let groups = [
        (Flavor::Cache, &rule.keys, key_prefix),
        (Flavor::Cache, &rule.patterns, key_prefix),
        (Flavor::Tag, &rule.tags, tag_prefix.as_str()),
        (Flavor::Bump, &rule.bumps, key_prefix),
    ];
    for (flavor, templates, prefix) in groups {
        for t in templates {
            let t: &Template = &t.value;
            let family = t.family_pattern(prefix);
            if whole_family {
                out.targets.push((flavor.pattern(family.clone()), family));
                continue;
            }
            match t.render(&row, prefix) {
                Rendered::Key(k) => out.targets.push((flavor.exact(k), family)),
                Rendered::Pattern(p) => {
                    let missing: Vec<&str> = t
                        .fields()
                        .map(|(_, c)| c)
                        .filter(|c| {
                            !change.relation.schema.is_empty()
                                && change.relation.column_index(c).is_none()
                        })
                        .collect();
                    if !missing.is_empty() {
                        out.missing_columns
                            .extend(missing.into_iter().map(String::from));
                    } else if t.kind == crate::rules::TemplateKind::Key {
                        out.widened += 1;
                    }
                    let family = if t.kind == crate::rules::TemplateKind::Pattern {
                        p.clone()
                    } else {
                        family
                    };
                    out.targets.push((flavor.pattern(p), family));
                }
                Rendered::Skipped(why) => out.skipped.push(format!("{}: {why}", t.source)),
            }
        }
    }
    out
}

/// Plans a batch of transactions. Pure.
pub fn build(rules: &RuleSet, cx: &Context, transactions: &[Transaction]) -> Plan {
    // Most changes name a target of their own: sized once, the index never rehashes.
    let changes: usize = transactions.iter().map(|t| t.changes.len()).sum();
    let mut b = Builder {
        cx,
        index: HashMap::with_capacity(changes),
        plan: Plan {
            actions: Vec::with_capacity(changes),
            ..Plan::default()
        },
        warms: HashMap::new(),
        warm_order: Vec::new(),
        marks: HashMap::new(),
    };
    for tx in transactions {
        for change in &tx.changes {
            b.change(rules, change, tx);
        }
    }
    let mut plan = b.plan;
    let mut warms = b.warms;
    plan.warms = b
        .warm_order
        .iter()
        .filter_map(|k| warms.remove(k).flatten())
        .collect();
    let mut marks = b.marks;
    let others = plan.actions.iter().map(|a| (&a.target, a.version));
    for (k, lsn) in fences(rules, &cx.key_prefix, others) {
        let m = marks.entry(k).or_insert(lsn);
        *m = (*m).max(lsn);
    }
    let mut marks: Vec<(String, Version)> = marks.into_iter().collect();
    marks.sort();
    plan.marks = marks;
    plan
}

mod families;
#[cfg(test)]
mod tests;

pub use families::families;
