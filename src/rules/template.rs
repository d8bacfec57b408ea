//! Key templates: `course:{id}`, `course-slug:{old.slug}`, `catalog:page:*`.
//!
//! A template is literal text with `{column}`, `{old.column}` or `{new.column}` placeholders
//! (`{{` and `}}` stand for literal braces). Rendering is pure: it takes a [`RowView`] and
//! returns an exact key, a SCAN pattern, or a reason to skip. The promise is conservative:
//! a value that is absent (no old row on insert) or NULL skips the key, while a value the source
//! did not carry (unknown) widens the key into a pattern rather than dropping it, so an
//! invalidation is never silently lost. Values placed into patterns are glob-escaped.

use std::fmt;

use crate::source::{Change, Datum, Op};

/// Which row a placeholder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// `{col}`: the new row, or the old row on delete.
    Current,
    /// `{old.col}`
    Old,
    /// `{new.col}`
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Field { side: Side, column: String },
}

/// Whether a template names one key or a glob pattern of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    Key,
    Pattern,
}

/// A parsed key or pattern template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub kind: TemplateKind,
    pub segments: Vec<Segment>,
}

/// A template syntax error, at a byte offset within the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// The result of rendering a template against a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// One exact key.
    Key(String),
    /// A glob pattern: the template is a pattern, or a value it needs was not carried.
    Pattern(String),
    /// Not rendered, with the reason (absent row, NULL value).
    Skipped(String),
}

/// Where a placeholder's value comes from, as the source delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Value(&'a str),
    Null,
    /// The row does not exist for this operation (old row of an insert, new row of a delete).
    Absent,
    /// The row exists but the source did not carry this column.
    Unknown,
}

/// Column access to one change, by side.
pub struct RowView<'a> {
    change: &'a Change,
}

impl<'a> RowView<'a> {
    pub fn new(change: &'a Change) -> Self {
        RowView { change }
    }

    /// The type OID of a column of the change's table.
    pub fn type_of(&self, column: &str) -> Option<u32> {
        let rel = &self.change.relation;
        rel.column_index(column).map(|i| rel.columns[i].type_oid)
    }

    pub fn get(&self, side: Side, column: &str) -> Lookup<'a> {
        let c = self.change;
        let row = match side {
            Side::Old => c.old.as_ref(),
            Side::New => c.new.as_ref(),
            Side::Current if c.op == Op::Delete => c.old.as_ref(),
            Side::Current => c.new.as_ref(),
        };
        let Some(row) = row else {
            return Lookup::Absent;
        };
        let Some(i) = c.relation.column_index(column) else {
            return Lookup::Unknown;
        };
        match row.0.get(i) {
            Some(Datum::Text(v)) => Lookup::Value(v),
            Some(Datum::Null) => Lookup::Null,
            _ => Lookup::Unknown,
        }
    }
}

/// Characters with a meaning in Redis glob patterns.
pub fn is_glob_char(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '\\')
}

/// Escapes a literal for use inside a Redis glob pattern.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_escaped(&mut out, s);
    out
}

/// Appends `s` to `out`, escaped for a Redis glob pattern (planning does this for every key
/// family of every change: whole runs without a glob character are copied at once).
pub fn push_escaped(out: &mut String, s: &str) {
    let mut rest = s;
    // Glob characters are ASCII, so a byte position is a character boundary.
    while let Some(i) = rest.bytes().position(|b| is_glob_char(b as char)) {
        out.push_str(&rest[..i]);
        out.push('\\');
        out.push_str(&rest[i..i + 1]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

impl Template {
    /// Parses a template.
    pub fn parse(source: &str, kind: TemplateKind) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let bytes: Vec<(usize, char)> = source.char_indices().collect();
        let mut i = 0;
        while i < bytes.len() {
            let (at, c) = bytes[i];
            match c {
                '{' if bytes.get(i + 1).map(|b| b.1) == Some('{') => {
                    lit.push('{');
                    i += 2;
                }
                '}' if bytes.get(i + 1).map(|b| b.1) == Some('}') => {
                    lit.push('}');
                    i += 2;
                }
                '}' => {
                    return Err(TemplateError {
                        offset: at,
                        message: "unmatched '}' (write '}}' for a literal brace)".into(),
                    })
                }
                '{' => {
                    let close = bytes[i + 1..]
                        .iter()
                        .find(|b| b.1 == '}' || b.1 == '{')
                        .filter(|b| b.1 == '}')
                        .ok_or_else(|| TemplateError {
                            offset: at,
                            message: "unclosed '{' (write '{{' for a literal brace)".into(),
                        })?
                        .0;
                    let inner = source[at + 1..close].trim();
                    let (side, column) = match inner.split_once('.') {
                        Some(("old", col)) => (Side::Old, col),
                        Some(("new", col)) => (Side::New, col),
                        Some((q, _)) => {
                            return Err(TemplateError {
                                offset: at + 1,
                                message: format!(
                                    "unknown row qualifier '{q}' in {{{inner}}}: use {{column}}, {{old.column}} or {{new.column}}"
                                ),
                            })
                        }
                        None => (Side::Current, inner),
                    };
                    if !is_ident(column) {
                        return Err(TemplateError {
                            offset: at + 1,
                            message: if inner.is_empty() {
                                "empty placeholder {}: name a column, as in {id}".into()
                            } else {
                                format!("'{column}' is not a column name")
                            },
                        });
                    }
                    if !lit.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Field {
                        side,
                        column: column.to_string(),
                    });
                    i = bytes.partition_point(|b| b.0 <= close);
                }
                c => {
                    lit.push(c);
                    i += 1;
                }
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Template {
            source: source.to_string(),
            kind,
            segments,
        })
    }

    /// The placeholders of this template.
    pub fn fields(&self) -> impl Iterator<Item = (Side, &str)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field { side, column } => Some((*side, column.as_str())),
            Segment::Literal(_) => None,
        })
    }

    /// The literal text (placeholders removed), for validation.
    pub fn literal_text(&self) -> String {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::Field { .. } => None,
            })
            .collect()
    }

    fn push_literal(&self, out: &mut String, lit: &str, as_pattern: bool) {
        match (self.kind, as_pattern) {
            (TemplateKind::Key, true) => push_escaped(out, lit),
            _ => out.push_str(lit),
        }
    }

    /// Renders against `row`, with `prefix` (a literal) in front.
    pub fn render(&self, row: &RowView<'_>, prefix: &str) -> Rendered {
        let mut values = Vec::with_capacity(self.segments.len());
        let mut widened = self.kind == TemplateKind::Pattern;
        for (side, column) in self.fields() {
            match row.get(side, column) {
                Lookup::Value(v) => values.push(Some(v)),
                Lookup::Unknown => {
                    widened = true;
                    values.push(None);
                }
                Lookup::Null => {
                    return Rendered::Skipped(format!("{} is NULL", describe(side, column)))
                }
                Lookup::Absent => {
                    return Rendered::Skipped(format!(
                        "{} is absent (no {} row)",
                        describe(side, column),
                        row_name(side)
                    ))
                }
            }
        }
        let mut out = String::with_capacity(prefix.len() + self.source.len() + 16);
        if widened {
            push_escaped(&mut out, prefix);
        } else {
            out.push_str(prefix);
        }
        let mut values = values.into_iter();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => self.push_literal(&mut out, l, widened),
                Segment::Field { .. } => match values.next().flatten() {
                    Some(v) if widened => push_escaped(&mut out, v),
                    Some(v) => out.push_str(v),
                    None => push_star(&mut out),
                },
            }
        }
        if widened {
            Rendered::Pattern(out)
        } else {
            Rendered::Key(out)
        }
    }

    /// The column values that render `key` under `prefix`, when the key has exactly one
    /// reading: `(column, value)` per column, in placeholder order. `None` when the key is not
    /// of this template, or when it reads two ways (placeholders side by side, or a value that
    /// may contain the literal text after it): the caller cannot tell which row it is.
    pub fn parse_key(&self, key: &str, prefix: &str) -> Option<Vec<(String, String)>> {
        let rest = key.strip_prefix(prefix)?;
        let shortest = split_key(&self.segments, rest, false)?;
        let longest = split_key(&self.segments, rest, true)?;
        (shortest == longest).then_some(shortest)
    }

    /// The pattern matching every key this template can produce (for TRUNCATE).
    pub fn family_pattern(&self, prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + self.source.len());
        push_escaped(&mut out, prefix);
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => self.push_literal(&mut out, l, true),
                Segment::Field { .. } => push_star(&mut out),
            }
        }
        out
    }
}

/// Splits `text` along `segments`, each placeholder taking the shortest (or longest) text
/// before the next literal.
fn split_key(segments: &[Segment], text: &str, longest: bool) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
            Segment::Field { column, .. } => {
                let value = match segments.get(i + 1) {
                    None => rest,
                    Some(Segment::Literal(next)) => {
                        let at = if longest {
                            rest.rfind(next.as_str())
                        } else {
                            rest.find(next.as_str())
                        }?;
                        &rest[..at]
                    }
                    Some(Segment::Field { .. }) => return None,
                };
                rest = &rest[value.len()..];
                match out.iter().find(|(c, _)| c == column) {
                    Some((_, v)) if v != value => return None,
                    Some(_) => {}
                    None => out.push((column.clone(), value.to_string())),
                }
            }
        }
    }
    rest.is_empty().then_some(out)
}

fn push_star(out: &mut String) {
    if !out.ends_with('*') || out.ends_with("\\*") {
        out.push('*');
    }
}

fn describe(side: Side, column: &str) -> String {
    match side {
        Side::Current => format!("{{{column}}}"),
        Side::Old => format!("{{old.{column}}}"),
        Side::New => format!("{{new.{column}}}"),
    }
}

fn row_name(side: Side) -> &'static str {
    match side {
        Side::Old => "old",
        Side::New => "new",
        Side::Current => "current",
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Relation, Tuple};
    use proptest::prelude::*;

    #[test]
    fn keys_parse_back_into_their_values_when_unambiguous() {
        let t = Template::parse("course:{id}:lesson:{new.n}", TemplateKind::Key).unwrap();
        assert_eq!(
            t.parse_key(":1:course:42:lesson:7", ":1:"),
            Some(vec![("id".into(), "42".into()), ("n".into(), "7".into())])
        );
        assert_eq!(t.parse_key(":2:course:42:lesson:7", ":1:"), None);
        assert_eq!(t.parse_key(":1:course:42:lessons:7", ":1:"), None);
        // "a:lesson:b" could be the id, or part of it: two readings.
        assert_eq!(t.parse_key("course:a:lesson:b:lesson:7", ""), None);
        let t = Template::parse("u:{a}{b}", TemplateKind::Key).unwrap();
        assert_eq!(t.parse_key("u:12", ""), None);
        let t = Template::parse("u:{id}:x:{old.id}", TemplateKind::Key).unwrap();
        assert_eq!(
            t.parse_key("u:5:x:5", ""),
            Some(vec![("id".into(), "5".into())])
        );
        assert_eq!(t.parse_key("u:5:x:6", ""), None);
    }

    proptest! {
        #[test]
        fn rendered_keys_parse_back(id in "[a-z0-9-]{0,12}", n in "[0-9]{1,6}") {
            let t = Template::parse("c:{id}:l:{n}", TemplateKind::Key).unwrap();
            let key = format!("p:c:{id}:l:{n}");
            prop_assert_eq!(
                t.parse_key(&key, "p:"),
                Some(vec![("id".to_string(), id), ("n".to_string(), n)])
            );
        }
    }

    fn change(op: Op, old: Option<Vec<Datum>>, new: Option<Vec<Datum>>) -> Change {
        Change {
            relation: Relation::text_courses(&["id", "slug"]),
            op,
            old: old.map(Tuple),
            new: new.map(Tuple),
            undecodable: None,
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn key(s: &str) -> Template {
        Template::parse(s, TemplateKind::Key).unwrap()
    }

    #[test]
    fn parses_placeholders_and_escapes() {
        let tpl = key("a{{b}}:{id}:{old.slug}:{ new.slug }");
        assert_eq!(
            tpl.segments,
            vec![
                Segment::Literal("a{b}:".into()),
                Segment::Field {
                    side: Side::Current,
                    column: "id".into()
                },
                Segment::Literal(":".into()),
                Segment::Field {
                    side: Side::Old,
                    column: "slug".into()
                },
                Segment::Literal(":".into()),
                Segment::Field {
                    side: Side::New,
                    column: "slug".into()
                },
            ]
        );
    }

    #[test]
    fn syntax_errors_have_offsets() {
        let e = Template::parse("course:{id", TemplateKind::Key).unwrap_err();
        assert_eq!(e.offset, 7);
        assert!(Template::parse("x:{}", TemplateKind::Key).is_err());
        assert!(Template::parse("x:{row.id}", TemplateKind::Key)
            .unwrap_err()
            .message
            .contains("qualifier"));
        assert!(Template::parse("x}", TemplateKind::Key).is_err());
        assert!(Template::parse("x:{1id}", TemplateKind::Key).is_err());
    }

    #[test]
    fn renders_current_old_and_new() {
        let c = change(
            Op::Update,
            Some(vec![t("1"), t("old-s")]),
            Some(vec![t("1"), t("new-s")]),
        );
        let row = RowView::new(&c);
        assert_eq!(
            key("course:{id}").render(&row, ":1:"),
            Rendered::Key(":1:course:1".into())
        );
        assert_eq!(
            key("s:{old.slug}").render(&row, ""),
            Rendered::Key("s:old-s".into())
        );
        assert_eq!(
            key("s:{slug}").render(&row, ""),
            Rendered::Key("s:new-s".into())
        );
        let d = change(Op::Delete, Some(vec![t("7"), t("x")]), None);
        assert_eq!(
            key("c:{id}").render(&RowView::new(&d), ""),
            Rendered::Key("c:7".into())
        );
    }

    #[test]
    fn absent_and_null_skip_but_unknown_widens() {
        let ins = change(Op::Insert, None, Some(vec![t("1"), Datum::Null]));
        let row = RowView::new(&ins);
        assert!(matches!(
            key("s:{old.slug}").render(&row, ""),
            Rendered::Skipped(_)
        ));
        assert!(matches!(
            key("s:{slug}").render(&row, ""),
            Rendered::Skipped(_)
        ));
        let up = change(
            Op::Update,
            Some(vec![t("1"), Datum::Unknown]),
            Some(vec![t("1*"), t("b")]),
        );
        assert_eq!(
            key("c:{id}:{old.slug}").render(&RowView::new(&up), "p["),
            Rendered::Pattern("p\\[c:1\\*:*".into())
        );
    }

    #[test]
    fn patterns_keep_globs_and_escape_values() {
        let c = change(Op::Insert, None, Some(vec![t("4?"), t("s")]));
        let p = Template::parse("catalog:{id}:*", TemplateKind::Pattern).unwrap();
        assert_eq!(
            p.render(&RowView::new(&c), ""),
            Rendered::Pattern("catalog:4\\?:*".into())
        );
        assert_eq!(p.family_pattern(":1:"), ":1:catalog:*:*");
        assert_eq!(key("c*:{id}").family_pattern(""), "c\\*:*");
    }

    proptest! {
        #[test]
        fn rendered_key_contains_value_verbatim(v in "\\PC{0,30}") {
            let c = change(Op::Insert, None, Some(vec![t(&v), t("s")]));
            prop_assert_eq!(key("c:{id}").render(&RowView::new(&c), ""), Rendered::Key(format!("c:{v}")));
        }

        #[test]
        fn escaping_in_runs_is_escaping_each_character(v in "(\\PC|[*?\\[\\]\\\\]){0,30}") {
            let mut each = String::new();
            for c in v.chars() {
                if is_glob_char(c) {
                    each.push('\\');
                }
                each.push(c);
            }
            let mut runs = String::from("p:");
            push_escaped(&mut runs, &v);
            prop_assert_eq!(&runs[2..], each.as_str());
            prop_assert_eq!(escape_glob(&v), each);
        }

        #[test]
        fn escaped_values_match_only_themselves(v in "[a-z*?\\[\\]\\\\]{0,12}") {
            let escaped = escape_glob(&v);
            prop_assert!(crate::glob::glob_match(&escaped, &v));
            prop_assert_eq!(escaped.chars().filter(|c| !is_glob_char(*c)).count(),
                v.chars().filter(|c| !is_glob_char(*c)).count());
        }

        #[test]
        fn every_rendered_key_matches_its_family_pattern(
            lit in "[a-z:*?\\[\\]-]{0,8}", v in "\\PC{0,12}", prefix in "[a-z:*]{0,4}",
        ) {
            let tpl = Template::parse(&format!("{lit}{{id}}:{lit}"), TemplateKind::Key);
            prop_assume!(tpl.is_ok());
            let tpl = tpl.unwrap();
            let c = change(Op::Insert, None, Some(vec![t(&v), t("s")]));
            if let Rendered::Key(k) = tpl.render(&RowView::new(&c), &prefix) {
                prop_assert!(crate::glob::glob_match(&tpl.family_pattern(&prefix), &k), "{k}");
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Template::parse(&s, TemplateKind::Key);
        }
    }
}
