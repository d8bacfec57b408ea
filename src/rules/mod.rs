//! Rules: load rule files, validate them, match changes, and render keys.
//!
//! A rule file in `rules/` holds `[[rule]]` tables that map a table's row changes to cache keys
//! and patterns. This module owns the whole path from TOML text to "these keys must go": parsing
//! with exact positions ([`load_dir`], [`parse_file`]), validation that refuses anything ambiguous
//! with `file:line:col: error: reason`, semantic checks against the live schema ([`check`]), and the
//! pure matching of a [`Change`] against the rules (`RuleSet::matches`). A rule set is
//! immutable once built; a new one replaces it whole, so a broken file never half-applies.

pub mod check;
pub mod condition;
mod families;
mod parse;
pub mod reverse;
pub mod template;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::source::{Change, Datum, Op};
pub use condition::{Condition, Truth};
pub use families::check_families;
pub use parse::{max_placeholder, parse_duration, parse_file, OWN_TABLES};
pub use template::{Lookup, Rendered, RowView, Side, Template, TemplateKind};

/// A place in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a rule file, printed as `file:line:col: error: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Location,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.at, self.message)
    }
}

/// The diagnostics that made a rule set invalid.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RuleErrors(pub Vec<Diagnostic>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// What the worker does for a rule's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Unlink the keys.
    Invalidate,
    /// Unlink, then refetch with `[rule.warm] query` and write with compare-and-set.
    Refresh,
    /// Unlink, then write the value rendered from the change itself (the new row as JSON).
    WriteThrough,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Invalidate => "invalidate",
            Strategy::Refresh => "refresh",
            Strategy::WriteThrough => "write-through",
        }
    }
}

/// `[rule.warm]`: which key to fill, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Warm {
    /// The key to fill (also invalidated with the rule's keys).
    pub key: Located<Template>,
    /// `refresh`: a query returning the value (one text column) for `$1..$n`.
    pub query: Option<Located<String>>,
    /// Columns of the changed row bound to `$1..$n`.
    pub args: Vec<Located<String>>,
    /// Optional set-based query for `cachewarden warm`: returns the key columns (named as in
    /// the key template) and then the value, for every row. Without it, bulk warming runs the
    /// warm query once per row as a correlated subquery.
    pub bulk_query: Option<Located<String>>,
}

/// A positioned template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub at: Location,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// `schema.table`.
    pub table: String,
    pub ops: BTreeSet<OpKey>,
    /// Updates fire only when one of these columns changed (empty: any update).
    pub changed: Vec<Located<String>>,
    /// Updates that change only these columns do not fire.
    pub ignore_changed: Vec<Located<String>>,
    /// Fires only when this holds (unknown values count as holding).
    pub when: Option<Located<Condition>>,
    pub keys: Vec<Located<Template>>,
    pub patterns: Vec<Located<Template>>,
    /// Tag sets `tag:<name>` whose members are unlinked with the set.
    pub tags: Vec<Located<Template>>,
    /// Version keys to `INCR`.
    pub bumps: Vec<Located<Template>>,
    pub ttl: Option<u64>,
    pub strategy: Strategy,
    pub warm: Option<Warm>,
    /// Invalidate (or, for refresh, refetch) the rule's keys once more after this delay,
    /// against the cache-aside fill race.
    pub reinvalidate_after: Option<std::time::Duration>,
    /// Fill every key of the rule when the worker starts.
    pub warm_on_start: bool,
    /// Raise fill marks with every invalidation of the rule's keys, tags and patterns, so that
    /// applications filling through the fenced-fill protocol (the Django companion's
    /// `get_or_fill`) never cache a value read before the invalidation ([`crate::fence`]).
    pub fenced_fills: bool,
    pub at: Location,
    pub table_at: Location,
}

/// [`Op`] with an order, for sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpKey(pub u8);

impl From<Op> for OpKey {
    fn from(op: Op) -> Self {
        OpKey(op as u8)
    }
}

/// Why a rule did or did not fire for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fires,
    /// TRUNCATE or an undecodable change: every key family of the rule.
    FiresWholeFamily,
    OpNotSelected(Op),
    NothingWatchedChanged,
    OnlyIgnoredChanged,
    ConditionFalse,
}

/// Whether a column's value differs between the old and new row of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnChange {
    Unchanged,
    Changed,
    /// The old value is unknown (REPLICA IDENTITY without it): assume changed.
    Unknown,
}

fn column_change(change: &Change, column: &str) -> ColumnChange {
    let Some(i) = change.relation.column_index(column) else {
        return ColumnChange::Unknown;
    };
    let new = change.new.as_ref().and_then(|t| t.0.get(i));
    let old = change.old.as_ref().and_then(|t| t.0.get(i));
    match (old, new) {
        (_, Some(Datum::UnchangedToast)) => ColumnChange::Unchanged,
        (Some(Datum::Unknown | Datum::UnchangedToast) | None, _)
        | (_, Some(Datum::Unknown) | None) => ColumnChange::Unknown,
        (Some(o), Some(n)) if o == n => ColumnChange::Unchanged,
        _ => ColumnChange::Changed,
    }
}

impl Rule {
    /// Decides whether this rule fires for `change` (which must be on the rule's table).
    pub fn verdict(&self, change: &Change) -> Verdict {
        if change.undecodable.is_some() || change.op == Op::Truncate {
            return Verdict::FiresWholeFamily;
        }
        if !self.ops.contains(&change.op.into()) {
            return Verdict::OpNotSelected(change.op);
        }
        if change.op == Op::Update
            && !self.changed.is_empty()
            && self
                .changed
                .iter()
                .all(|c| column_change(change, &c.value) == ColumnChange::Unchanged)
        {
            return Verdict::NothingWatchedChanged;
        }
        if change.op == Op::Update
            && !self.ignore_changed.is_empty()
            && change.relation.columns.iter().all(|c| {
                self.ignore_changed.iter().any(|i| i.value == c.name)
                    || column_change(change, &c.name) == ColumnChange::Unchanged
            })
        {
            return Verdict::OnlyIgnoredChanged;
        }
        if let Some(when) = &self.when {
            if when.value.eval(&RowView::new(change)) == Truth::False {
                return Verdict::ConditionFalse;
            }
        }
        Verdict::Fires
    }

    /// Every template of the rule: keys, then patterns.
    pub fn templates(&self) -> impl Iterator<Item = &Located<Template>> {
        self.keys.iter().chain(self.patterns.iter())
    }

    /// Every template of the rule, including tags and bumps.
    pub fn all_templates(&self) -> impl Iterator<Item = &Located<Template>> {
        self.templates()
            .chain(self.tags.iter())
            .chain(self.bumps.iter())
    }
}

/// An immutable, validated set of rules indexed by table.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Rule positions by schema, then table: a change's relation finds its rules without
    /// building its `schema.table` name (once per change on the hot path), and a
    /// `schema.table` name (a rule's `table`) by its two parts.
    by_schema: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_schema: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let (schema, table) = crate::sql::split_table(&r.table);
            by_schema
                .entry(schema.to_string())
                .or_default()
                .entry(table.to_string())
                .or_default()
                .push(i);
        }
        RuleSet { rules, by_schema }
    }

    /// The tables the rules watch, sorted.
    pub fn tables(&self) -> Vec<String> {
        let tables: BTreeSet<&str> = self.rules.iter().map(|r| r.table.as_str()).collect();
        tables.into_iter().map(String::from).collect()
    }

    /// The rules on `table` (`schema.table`, as rules name it: neither part holds a dot).
    pub fn for_table<'a>(&'a self, table: &str) -> Box<dyn Iterator<Item = &'a Rule> + 'a> {
        match table.split_once('.') {
            Some((schema, name)) => self.in_table(schema, name),
            None => Box::new(std::iter::empty()),
        }
    }

    /// The rules a change concerns: its table's, or every rule when the change could not even
    /// be attributed to a table.
    pub fn concerned<'a>(&'a self, change: &Change) -> Box<dyn Iterator<Item = &'a Rule> + 'a> {
        let r = &change.relation;
        if r.schema.is_empty() {
            Box::new(self.rules.iter())
        } else {
            self.in_table(&r.schema, &r.name)
        }
    }

    fn in_table<'a>(
        &'a self,
        schema: &str,
        table: &str,
    ) -> Box<dyn Iterator<Item = &'a Rule> + 'a> {
        let found = self.by_schema.get(schema).and_then(|t| t.get(table));
        Box::new(found.into_iter().flatten().map(move |&i| &self.rules[i]))
    }

    /// The columns each table's rules read (templates, `changed`, `when`, warm arguments), so a
    /// source can drop the others' values. A table with a `write-through` rule (it writes the
    /// whole row) or an `ignore_changed` list (it compares every column) keeps all columns.
    /// `extra` adds columns by table (primary keys, named in journal reasons).
    pub fn needed_columns(
        &self,
        extra: &HashMap<String, Vec<String>>,
    ) -> crate::source::ColumnFilter {
        let mut tables: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
        for r in &self.rules {
            let entry = tables
                .entry(r.table.clone())
                .or_insert_with(|| Some(BTreeSet::new()));
            if r.strategy == Strategy::WriteThrough || !r.ignore_changed.is_empty() {
                *entry = None;
            }
            let Some(cols) = entry else { continue };
            for t in r.all_templates() {
                cols.extend(t.value.fields().map(|(_, c)| c.to_string()));
            }
            cols.extend(r.changed.iter().map(|c| c.value.clone()));
            if let Some(w) = &r.when {
                cols.extend(w.value.columns().into_iter().map(|(_, c, _)| c.to_string()));
            }
            if let Some(w) = &r.warm {
                cols.extend(w.key.value.fields().map(|(_, c)| c.to_string()));
                cols.extend(w.args.iter().map(|a| a.value.clone()));
            }
        }
        for (t, cols) in tables.iter_mut() {
            if let (Some(set), Some(more)) = (cols.as_mut(), extra.get(t)) {
                set.extend(more.iter().cloned());
            }
        }
        crate::source::ColumnFilter { tables }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Loads every `*.toml` file in `dir` (sorted by name) into one validated rule set.
pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleErrors> {
    let missing = |msg: String| {
        RuleErrors(vec![Diagnostic {
            at: Location {
                file: dir.to_path_buf(),
                line: 0,
                col: 0,
            },
            severity: Severity::Error,
            message: msg,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| missing(format!("cannot read rules directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    let mut diags = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => match parse_file(file, &text) {
                Ok(rules) => all.extend(rules),
                Err(RuleErrors(d)) => diags.extend(d),
            },
            Err(e) => diags.push(Diagnostic {
                at: Location {
                    file: file.clone(),
                    line: 0,
                    col: 0,
                },
                severity: Severity::Error,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut seen: HashMap<&str, &Location> = HashMap::new();
    for r in &all {
        if let Some(first) = seen.insert(&r.name, &r.at) {
            diags.push(Diagnostic {
                at: r.at.clone(),
                severity: Severity::Error,
                message: format!(
                    "duplicate rule name {:?} (first defined at {first})",
                    r.name
                ),
            });
        }
    }
    if all.is_empty() && diags.is_empty() {
        diags.push(Diagnostic {
            at: Location {
                file: dir.to_path_buf(),
                line: 0,
                col: 0,
            },
            severity: Severity::Error,
            message: "no rules found (expected [[rule]] tables in *.toml files)".into(),
        });
    }
    if diags.is_empty() {
        Ok(RuleSet::new(all))
    } else {
        Err(RuleErrors(diags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `concerned` finds a relation's rules by schema, then table; it names exactly the
        /// rules `for_table` finds by the relation's `schema.table` (dots and all).
        #[test]
        fn concerned_is_for_table_by_qualified_name(
            schema in "(public|other|pub|lic|a\\.b|)",
            name in "(t|u|lic\\.t|b\\.t|public\\.t|)",
        ) {
            let rules = RuleSet::new(
                parse_file(
                    Path::new("r.toml"),
                    "[[rule]]\nname='pt'\ntable='public.t'\nkeys=['t:{id}']\n\
                     [[rule]]\nname='t'\ntable='t'\nkeys=['t2:{id}']\n\
                     [[rule]]\nname='ou'\ntable='other.u'\nkeys=['u:{id}']\n\
                     [[rule]]\nname='pu'\ntable='public.u'\nkeys=['u2:{id}']\n",
                )
                .unwrap(),
            );
            let base = crate::source::Relation::text_courses(&["id"]);
            let relation = std::sync::Arc::new(crate::source::Relation {
                schema: schema.clone(),
                name: name.clone(),
                ..(*base).clone()
            });
            let change = Change {
                relation: relation.clone(),
                op: Op::Insert,
                old: None,
                new: None,
                undecodable: None,
            };
            let by_relation: Vec<&str> = rules.concerned(&change).map(|r| r.name.as_str()).collect();
            let by_name: Vec<&str> = if schema.is_empty() {
                rules.rules.iter().map(|r| r.name.as_str()).collect()
            } else {
                rules.for_table(&relation.qualified_name()).map(|r| r.name.as_str()).collect()
            };
            prop_assert_eq!(by_relation, by_name);
        }
    }

    #[test]
    fn needed_columns_are_what_rules_read() {
        let rules = RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                "[[rule]]\nname='a'\ntable='public.t'\nkeys=['t:{old.slug}']\nchanged=['title']\nwhen='new.n > 1'\n\
                 [[rule]]\nname='w'\ntable='public.u'\nstrategy='write-through'\n[rule.warm]\nkey='u:{id}'\n",
            )
            .unwrap(),
        );
        let f = rules.needed_columns(&HashMap::from([(
            "public.t".to_string(),
            vec!["id".to_string()],
        )]));
        assert_eq!(
            f.tables["public.t"]
                .as_ref()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            ["id", "n", "slug", "title"]
        );
        assert_eq!(
            f.tables["public.u"], None,
            "write-through keeps the whole row"
        );
        assert!(f.keeps("public.other", "x"));
    }

    fn parse(text: &str) -> Result<Vec<Rule>, RuleErrors> {
        parse_file(Path::new("rules/x.toml"), text)
    }

    fn first_error(text: &str) -> String {
        parse(text).unwrap_err().0[0].to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let rules = parse(
            r#"
[[rule]]
name = "course-detail"
table = "public.courses"
ops = ["insert", "update", "delete"]
changed = ["title", "slug", "price"]
keys = ["course:{id}", "course-slug:{old.slug}", "course-slug:{new.slug}"]
patterns = ["catalog:page:*"]
ttl = 3600
strategy = "invalidate"
"#,
        )
        .unwrap();
        let r = &rules[0];
        assert_eq!(r.name, "course-detail");
        assert_eq!(r.table, "public.courses");
        assert_eq!(r.keys.len(), 3);
        assert_eq!(r.keys[1].at.line, 7);
        assert!(!r.ops.contains(&Op::Truncate.into()));
        assert_eq!(r.ttl, Some(3600));
    }

    #[test]
    fn table_defaults_to_public_and_ops_to_all() {
        let r = &parse("[[rule]]\nname='a'\ntable='lessons'\nkeys=['l:{id}']\n").unwrap()[0];
        assert_eq!(r.table, "public.lessons");
        assert_eq!(r.ops.len(), 4);
    }

    #[test]
    fn errors_carry_file_line_and_column() {
        let e = first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['k:{id']\n");
        assert!(e.starts_with("rules/x.toml:4:"), "{e}");
        assert!(e.contains("unclosed"), "{e}");
        let e = first_error("[[rule]]\nname='a'\ntable='t'\nkeyz=['k']\n");
        assert!(
            e.starts_with("rules/x.toml:4:1: error: unknown field `keyz`"),
            "{e}"
        );
        let e = first_error("[[rule]]\nname='a'\ntable='t'\nops=['upsert']\nkeys=['k']\n");
        assert!(
            e.contains("rules/x.toml:4:6: error: unknown operation"),
            "{e}"
        );
        let e = first_error("[[rule]\n");
        assert!(e.starts_with("rules/x.toml:1:"), "{e}");
    }

    #[test]
    fn refuses_ambiguous_rules() {
        assert!(first_error("[[rule]]\nname='a'\ntable='t'\n").contains("invalidates nothing"));
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nchanged=['a']\nignore_changed=['b']\n"
        )
        .contains("not both"));
        assert!(
            first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nstrategy='refresh'\n")
                .contains("needs [rule.warm]")
        );
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nstrategy='refresh'\n[rule.warm]\nkey='c:{id}'\nquery='select $1, $2'\nargs=['id']\n"
        )
        .contains("$2"));
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nreinvalidate_after='soon'\n"
        )
        .contains("duration"));
        let e = first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nwhen='new.x and'\n");
        assert!(
            e.starts_with("rules/x.toml:5:16: error: when: unexpected end"),
            "{e}"
        );
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nops=['insert']\nkeys=['c']\nwhen='old.x'\n"
        )
        .contains("can never be evaluated"));
        assert!(first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['c:*']\n").contains("glob"));
        assert!(
            first_error("[[rule]]\nname='a'\ntable='t'\npatterns=['c:1']\n")
                .contains("no wildcard")
        );
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nops=['insert']\nkeys=['c:{old.id}']\n"
        )
        .contains("no old row"));
        assert!(first_error(
            "[[rule]]\nname='a'\ntable='t'\nops=['insert']\nchanged=['x']\nkeys=['c']\n"
        )
        .contains("filters updates"));
        assert!(
            first_error("[[rule]]\nname='a'\ntable='cache_invalidations'\nkeys=['c']\n")
                .contains("own")
        );
        assert!(first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nttl=-1\n").contains("ttl"));
        assert!(
            first_error("[[rule]]\nname='a'\ntable='t'\nkeys=['c']\nstrategy='nope'\n")
                .contains("unknown strategy")
        );
    }

    #[test]
    fn load_dir_reports_duplicates_across_files() {
        let dir = std::env::temp_dir().join(format!("cw-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[rule]]\nname='x'\ntable='t'\nkeys=['k']\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.toml"),
            "[[rule]]\nname='x'\ntable='u'\nkeys=['k']\n",
        )
        .unwrap();
        let err = load_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("b.toml:1:1: error: duplicate rule name \"x\""),
            "{err}"
        );
    }
}
