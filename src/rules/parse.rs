//! Parsing and validating one rule file: TOML with exact spans, then every rule checked field
//! by field, so anything ambiguous is refused with `file:line:col: error: reason` and a broken
//! file never half-applies. Pure: the schema checks that need a database are in
//! [`super::check`].

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::span::line_col;

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
    fenced_fills: Option<bool>,
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
                        cx.error(loc, e.to_string())
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
        fenced_fills: raw.fenced_fills.unwrap_or(false),
        at,
        table_at,
    })
}
