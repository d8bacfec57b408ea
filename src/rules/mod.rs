//! Rules: load rule files, validate them, match changes, and render keys.
//!
//! A rule file in `rules/` holds `[[rule]]` tables that map a table's row changes to cache keys
//! and patterns. This module owns the whole path from TOML text to "these keys must go": parsing
//! with exact positions ([`load_dir`], [`parse_file`]), validation that refuses anything ambiguous
//! with `file:line:col: error: reason`, semantic checks against the live schema ([`check`]), and the
//! pure matching of a [`Change`] against the rules ([`RuleSet::matches`]). A rule set is
//! immutable once built; a new one replaces it whole, so a broken file never half-applies.

pub mod check;
pub mod condition;
pub mod template;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::source::{Change, Datum, Op};
pub use condition::{Condition, Truth};
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
    by_table: HashMap<String, Vec<usize>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_table: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            by_table.entry(r.table.clone()).or_default().push(i);
        }
        RuleSet { rules, by_table }
    }

    /// The tables the rules watch, sorted.
    pub fn tables(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_table.keys().cloned().collect();
        t.sort();
        t
    }

    /// The rules on `table` (`schema.table`).
    pub fn for_table<'a>(&'a self, table: &str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.by_table
            .get(table)
            .into_iter()
            .flatten()
            .map(move |&i| &self.rules[i])
    }

    /// The rules a change concerns: its table's, or every rule when the change could not even
    /// be attributed to a table.
    pub fn concerned<'a>(&'a self, change: &Change) -> Box<dyn Iterator<Item = &'a Rule> + 'a> {
        if change.relation.schema.is_empty() {
            Box::new(self.rules.iter())
        } else {
            Box::new(self.for_table(&change.relation.qualified_name()))
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    table: Spanned<String>,
    ops: Option<Spanned<Vec<Spanned<String>>>>,
    changed: Option<Vec<Spanned<String>>>,
    ignore_changed: Option<Vec<Spanned<String>>>,
    when: Option<Spanned<String>>,
    keys: Option<Vec<Spanned<String>>>,
    patterns: Option<Vec<Spanned<String>>>,
    tags: Option<Vec<Spanned<String>>>,
    bump: Option<Vec<Spanned<String>>>,
    ttl: Option<Spanned<i64>>,
    strategy: Option<Spanned<String>>,
    warm: Option<Spanned<RawWarm>>,
    reinvalidate_after: Option<Spanned<String>>,
    warm_on_start: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarm {
    key: Spanned<String>,
    query: Option<Spanned<String>>,
    args: Option<Vec<Spanned<String>>>,
    bulk_query: Option<Spanned<String>>,
}

/// Parses `500ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// The highest `$n` placeholder in a query (0 when it has none).
pub fn max_placeholder(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let j = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if j > 0 {
                max = max.max(sql[i + 1..i + 1 + j].parse().unwrap_or(0));
            }
            i += j + 1;
        } else {
            i += 1;
        }
    }
    max
}

/// Tables cachewarden owns; rules may never watch them.
pub const OWN_TABLES: [&str; 5] = [
    "cache_invalidations",
    "cache_metrics",
    "cache_configs",
    "cachewarden_migrations",
    "cachewarden_warm_runs",
];

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

struct FileCtx<'a> {
    path: &'a Path,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl FileCtx<'_> {
    fn at(&self, offset: usize) -> Location {
        let (line, col) = line_col(self.text, offset);
        Location {
            file: self.path.to_path_buf(),
            line,
            col,
        }
    }
    /// Location inside a string value: `span` covers the quotes, `offset` is within the string.
    fn inside(&self, span: std::ops::Range<usize>, offset: usize) -> Location {
        self.at(span.start + 1 + offset)
    }
    fn error(&mut self, at: Location, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            at,
            severity: Severity::Error,
            message: message.into(),
        });
    }
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn is_sql_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Parses and validates one rule file. Returns its rules, or every problem found.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Rule>, RuleErrors> {
    let mut cx = FileCtx {
        path,
        text,
        diags: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let at = cx.at(e.span().map_or(0, |s| s.start));
            let msg = e.message().trim().replace('\n', " ");
            cx.error(at, msg);
            return Err(RuleErrors(cx.diags));
        }
    };
    let mut rules = Vec::new();
    for spanned in raw.rule {
        let rule_at = cx.at(spanned.span().start);
        let raw = spanned.into_inner();
        if let Some(rule) = validate_rule(&mut cx, rule_at, raw) {
            rules.push(rule);
        }
    }
    if cx.diags.iter().any(|d| d.severity == Severity::Error) {
        Err(RuleErrors(cx.diags))
    } else {
        Ok(rules)
    }
}

fn parse_templates(
    cx: &mut FileCtx<'_>,
    items: Option<Vec<Spanned<String>>>,
    kind: TemplateKind,
) -> Vec<Located<Template>> {
    let mut out = Vec::new();
    for item in items.unwrap_or_default() {
        let span = item.span();
        let at = cx.at(span.start);
        match Template::parse(item.get_ref(), kind) {
            Ok(t) => {
                let lit = t.literal_text();
                match kind {
                    TemplateKind::Key if lit.chars().any(template::is_glob_char) => cx.error(
                        at,
                        format!(
                            "key {:?} contains a glob character; list it under patterns = [...] \
                             to delete every matching key, or remove the character",
                            t.source
                        ),
                    ),
                    TemplateKind::Pattern if !lit.chars().any(|c| matches!(c, '*' | '?' | '[')) => {
                        cx.error(
                            at,
                            format!(
                                "pattern {:?} has no wildcard; list it under keys = [...] instead",
                                t.source
                            ),
                        )
                    }
                    _ => out.push(Located { value: t, at }),
                }
            }
            Err(e) => {
                let loc = cx.inside(span, e.offset);
                cx.error(loc, format!("in {:?}: {}", item.get_ref(), e.message));
            }
        }
    }
    out
}

fn parse_columns(
    cx: &mut FileCtx<'_>,
    field: &str,
    items: Option<Vec<Spanned<String>>>,
) -> Vec<Located<String>> {
    let mut out = Vec::new();
    for c in items.unwrap_or_default() {
        let loc = cx.at(c.span().start);
        let col = c.into_inner();
        if !is_sql_ident(&col) {
            cx.error(loc, format!("{field}: {col:?} is not a column name"));
        } else {
            out.push(Located {
                value: col,
                at: loc,
            });
        }
    }
    out
}

fn validate_rule(cx: &mut FileCtx<'_>, at: Location, raw: RawRule) -> Option<Rule> {
    let errors_before = cx.diags.len();
    let name = raw.name.get_ref().trim().to_string();
    if !is_valid_name(&name) {
        let loc = cx.at(raw.name.span().start);
        cx.error(
            loc,
            format!("rule name {name:?} must be non-empty letters, digits, '-', '_', '.' or ':'"),
        );
    }
    let table_at = cx.at(raw.table.span().start);
    let table_raw = raw.table.get_ref().trim();
    let (schema, tbl) = crate::sql::split_table(table_raw);
    let table = format!("{schema}.{tbl}");
    if !is_sql_ident(schema) || !is_sql_ident(tbl) {
        cx.error(
            table_at.clone(),
            format!("table {table_raw:?} must be 'schema.table' or 'table' (unquoted identifiers)"),
        );
    } else if OWN_TABLES.contains(&tbl) {
        cx.error(
            table_at.clone(),
            format!("table {table_raw:?} is cachewarden's own; rules cannot watch it"),
        );
    }
    let mut ops = BTreeSet::new();
    let mut op_list = Vec::new();
    match raw.ops {
        None => {
            ops.extend(Op::ALL.iter().map(|&o| OpKey::from(o)));
            op_list.extend(Op::ALL);
        }
        Some(list) => {
            let list_at = cx.at(list.span().start);
            let items = list.into_inner();
            if items.is_empty() {
                cx.error(
                    list_at,
                    "ops is empty: the rule would never fire (omit ops for all operations)",
                );
            }
            for op in items {
                match op.get_ref().parse::<Op>() {
                    Ok(o) => {
                        ops.insert(o.into());
                        op_list.push(o);
                    }
                    Err(e) => {
                        let loc = cx.at(op.span().start);
                        cx.error(loc, e)
                    }
                }
            }
        }
    }
    let changed = parse_columns(cx, "changed", raw.changed);
    let ignore_changed = parse_columns(cx, "ignore_changed", raw.ignore_changed);
    for (field, list) in [("changed", &changed), ("ignore_changed", &ignore_changed)] {
        if !list.is_empty() && !op_list.contains(&Op::Update) {
            let loc = list[0].at.clone();
            cx.error(
                loc,
                format!("{field} = [...] filters updates, but ops does not include \"update\""),
            );
        }
    }
    if !changed.is_empty() && !ignore_changed.is_empty() {
        let loc = ignore_changed[0].at.clone();
        cx.error(
            loc,
            "use either changed = [...] or ignore_changed = [...], not both",
        );
    }
    let only_insert = op_list.iter().all(|o| *o == Op::Insert);
    let only_delete = op_list.iter().all(|o| *o == Op::Delete);
    let when = match raw.when {
        None => None,
        Some(w) => {
            let span = w.span();
            match Condition::parse(w.get_ref()) {
                Ok(c) => {
                    for (side, col, offset) in c.columns() {
                        let never = (side == Side::Old && only_insert)
                            || (side == Side::New && only_delete);
                        if never {
                            let loc = cx.inside(span.clone(), offset);
                            cx.error(
                                loc,
                                format!(
                                    "when: {}.{col} can never be evaluated: the rule only fires on {}",
                                    if side == Side::Old { "old" } else { "new" },
                                    if only_insert { "insert" } else { "delete" }
                                ),
                            );
                        }
                    }
                    Some(Located {
                        value: c,
                        at: cx.at(span.start),
                    })
                }
                Err(e) => {
                    let loc = cx.inside(span, e.offset);
                    cx.error(loc, format!("when: {e}"));
                    None
                }
            }
        }
    };
    let keys = parse_templates(cx, raw.keys, TemplateKind::Key);
    let patterns = parse_templates(cx, raw.patterns, TemplateKind::Pattern);
    let tags = parse_templates(cx, raw.tags, TemplateKind::Key);
    let bumps = parse_templates(cx, raw.bump, TemplateKind::Key);
    if keys.is_empty()
        && patterns.is_empty()
        && tags.is_empty()
        && bumps.is_empty()
        && raw.warm.is_none()
        && cx.diags.len() == errors_before
    {
        cx.error(
            at.clone(),
            format!(
                "rule {name:?} invalidates nothing: give it keys, patterns, tags or bump = [...]"
            ),
        );
    }
    for t in keys
        .iter()
        .chain(patterns.iter())
        .chain(tags.iter())
        .chain(bumps.iter())
    {
        for (side, col) in t.value.fields() {
            let never = match side {
                Side::Old => only_insert,
                Side::New => only_delete,
                Side::Current => false,
            };
            if never {
                cx.error(
                    t.at.clone(),
                    format!(
                        "{:?} uses {{{}.{col}}} but the rule only fires on {}, which has no {} row",
                        t.value.source,
                        if side == Side::Old { "old" } else { "new" },
                        if only_insert { "insert" } else { "delete" },
                        if side == Side::Old { "old" } else { "new" },
                    ),
                );
            }
        }
    }
    let ttl = match raw.ttl {
        Some(t) if *t.get_ref() < 0 => {
            let loc = cx.at(t.span().start);
            cx.error(loc, "ttl must be zero or more seconds");
            None
        }
        Some(t) => Some(*t.get_ref() as u64),
        None => None,
    };
    let strategy = match raw
        .strategy
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("invalidate", _)) => Strategy::Invalidate,
        Some(("refresh", _)) => Strategy::Refresh,
        Some(("write-through", _)) => Strategy::WriteThrough,
        Some((other, span)) => {
            let loc = cx.at(span.start);
            cx.error(
                loc,
                format!("unknown strategy {other:?}: expected \"invalidate\", \"refresh\" or \"write-through\""),
            );
            Strategy::Invalidate
        }
    };
    let mut keys = keys;
    let warm = match raw.warm {
        None => {
            if strategy != Strategy::Invalidate {
                cx.error(
                    at.clone(),
                    format!(
                        "strategy {:?} needs [rule.warm] with the key to fill{}",
                        strategy.as_str(),
                        if strategy == Strategy::Refresh {
                            " and its query"
                        } else {
                            ""
                        }
                    ),
                );
            }
            None
        }
        Some(w) => {
            let warm_at = cx.at(w.span().start);
            let w = w.into_inner();
            let key = parse_templates(cx, Some(vec![w.key]), TemplateKind::Key).pop();
            let args = parse_columns(cx, "args", w.args);
            let bulk_query = w.bulk_query.map(|q| Located {
                at: cx.at(q.span().start),
                value: q.into_inner(),
            });
            if let (Some(b), Strategy::WriteThrough) = (&bulk_query, strategy) {
                cx.error(b.at.clone(), "bulk_query goes with strategy \"refresh\"");
            }
            let query = w.query.map(|q| Located {
                at: cx.at(q.span().start),
                value: q.into_inner(),
            });
            match (strategy, &query) {
                (Strategy::Invalidate, _) => cx.error(
                    warm_at.clone(),
                    "[rule.warm] fills keys: set strategy = \"refresh\" or \"write-through\"",
                ),
                (Strategy::Refresh, None) => {
                    cx.error(warm_at.clone(), "strategy \"refresh\" needs [rule.warm] query = \"SELECT ...\"")
                }
                (Strategy::Refresh, Some(q)) => {
                    let needed = max_placeholder(&q.value);
                    if needed != args.len() {
                        cx.error(
                            q.at.clone(),
                            format!(
                                "the query uses ${needed} but args names {} column(s); list one column per placeholder",
                                args.len()
                            ),
                        );
                    }
                }
                (Strategy::WriteThrough, Some(q)) => cx.error(
                    q.at.clone(),
                    "strategy \"write-through\" renders the value from the change itself: remove query (or use \"refresh\")",
                ),
                (Strategy::WriteThrough, None) => {}
            }
            key.map(|key| {
                // The filled key is always invalidated first.
                if !keys.iter().any(|k| k.value.source == key.value.source) {
                    keys.push(key.clone());
                }
                Warm {
                    key,
                    query,
                    args,
                    bulk_query,
                }
            })
        }
    };
    let reinvalidate_after = raw.reinvalidate_after.and_then(|d| {
        let parsed = parse_duration(d.get_ref()).filter(|d| *d <= std::time::Duration::from_secs(3600));
        if parsed.is_none() {
            let loc = cx.at(d.span().start);
            cx.error(loc, format!("reinvalidate_after {:?} is not a duration between 1ms and 1h (like \"500ms\", \"2s\")", d.get_ref()));
        }
        parsed
    });
    let warm_on_start = match raw.warm_on_start {
        Some(w) if *w.get_ref() && strategy == Strategy::Invalidate => {
            let loc = cx.at(w.span().start);
            cx.error(
                loc,
                "warm_on_start needs strategy = \"refresh\" or \"write-through\"",
            );
            false
        }
        Some(w) => *w.get_ref(),
        None => false,
    };
    if cx.diags.len() > errors_before {
        return None;
    }
    Some(Rule {
        name,
        table,
        ops,
        changed,
        ignore_changed,
        when,
        keys,
        patterns,
        tags,
        bumps,
        ttl,
        strategy,
        warm,
        reinvalidate_after,
        warm_on_start,
        at,
        table_at,
    })
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
