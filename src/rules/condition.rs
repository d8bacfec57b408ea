//! `when` conditions: a small boolean language over a change's old and new rows.
//!
//! ```text
//! new.published or old.published
//! new.price != old.price and new.status in ('active', 'trial')
//! not (old.deleted_at is null) or new.owner_id >= 100
//! ```
//!
//! Grammar (keywords are case-insensitive):
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | compare
//! compare := operand (cmp operand | "is" ["not"] "null" | ["not"] "in" list)?
//! cmp     := "==" | "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! operand := literal | column | "(" expr ")"
//! column  := ("old" | "new") "." name | name          -- a bare name is the current row
//! literal := number | 'text' | "text" | true | false | null
//! list    := "(" literal ("," literal)* ")" | "[" ... "]"
//! ```
//!
//! Parsing and evaluation are pure. Evaluation is three-valued: a value the source did not carry
//! makes the result unknown, and an unknown condition fires the rule — a condition can narrow
//! invalidation only when it knows. NULL (and the absent old row of an insert) is false in a
//! boolean position and never equal to anything; test it with `is null`. [`Condition::check`]
//! type-checks against column types so `cachewarden check` reports conditions that can never be
//! evaluated.

use std::fmt;

use super::template::{Lookup, RowView, Side};
use crate::source::oid;

/// A parse or type error at a byte offset within the condition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, ConditionError> {
    Err(ConditionError {
        offset,
        message: message.into(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Num(f64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Literal),
    Column {
        side: Side,
        name: String,
        offset: usize,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
        offset: usize,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Literal>,
        negated: bool,
        offset: usize,
    },
}

/// A parsed `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub source: String,
    pub expr: Expr,
}

/// Three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
    fn from_bool(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ConditionError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => out.push((start, Tok::LParen)),
            b')' => out.push((start, Tok::RParen)),
            b'[' => out.push((start, Tok::LBracket)),
            b']' => out.push((start, Tok::RBracket)),
            b',' => out.push((start, Tok::Comma)),
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push((start, Tok::Dot))
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op = match two {
                    "==" => "==",
                    "!=" => "!=",
                    "<>" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => match c {
                        b'=' => "=",
                        b'<' => "<",
                        b'>' => ">",
                        _ => return err(start, "unexpected '!' (use != or not)"),
                    },
                };
                i += if op.len() == 2 || two == "<>" { 2 } else { 1 };
                out.push((start, Tok::Op(op)));
                continue;
            }
            b'\'' | b'"' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return err(start, "unterminated string");
                    };
                    if b == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            s.push(quote as char);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                    s.push(ch);
                    i += ch.len_utf8();
                }
                out.push((start, Tok::Str(s)));
                continue;
            }
            b'0'..=b'9' | b'-' | b'.' => {
                let mut j = i + 1;
                while j < bytes.len()
                    && (bytes[j].is_ascii_digit() || matches!(bytes[j], b'.' | b'e' | b'E'))
                {
                    j += 1;
                }
                let text = &src[i..j];
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => out.push((start, Tok::Num(n))),
                    _ => return err(start, format!("'{text}' is not a number")),
                }
                i = j;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'$'))
                {
                    j += 1;
                }
                out.push((start, Tok::Ident(src[i..j].to_string())));
                i = j;
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return err(start, format!("unexpected character '{ch}'"));
            }
        }
        i += 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parser<'a> {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    src: &'a str,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.src.len(), |t| t.0)
    }
    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let yes = self.keyword(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ConditionError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            err(self.offset(), format!("expected {what}"))
        }
    }

    fn expr(&mut self) -> Result<Expr, ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.offset(), "condition nests too deeply");
        }
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.unary()?;
        while self.eat_keyword("and") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.eat_keyword("not") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return err(self.offset(), "condition nests too deeply");
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, ConditionError> {
        let left = self.operand()?;
        let offset = self.offset();
        if let Some(Tok::Op(op)) = self.peek() {
            let op = match *op {
                "==" | "=" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            self.pos += 1;
            let right = self.operand()?;
            return Ok(Expr::Cmp {
                op,
                left: Box::new(left),
                right: Box::new(right),
                offset,
            });
        }
        if self.eat_keyword("is") {
            let negated = self.eat_keyword("not");
            if !self.eat_keyword("null") {
                return err(self.offset(), "expected 'null' after 'is'");
            }
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let save = self.pos;
        let negated = self.eat_keyword("not");
        if self.eat_keyword("in") {
            let list = self.list()?;
            return Ok(Expr::In {
                expr: Box::new(left),
                list,
                negated,
                offset,
            });
        }
        self.pos = save;
        Ok(left)
    }

    fn list(&mut self) -> Result<Vec<Literal>, ConditionError> {
        let close = match self.peek() {
            Some(Tok::LParen) => Tok::RParen,
            Some(Tok::LBracket) => Tok::RBracket,
            _ => return err(self.offset(), "expected a list like ('a', 'b') after 'in'"),
        };
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            let at = self.offset();
            match self.operand()? {
                Expr::Lit(l) => items.push(l),
                _ => return err(at, "lists after 'in' hold literals only"),
            }
            if self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                continue;
            }
            self.expect(close, "',' or the end of the list")?;
            return Ok(items);
        }
    }

    fn operand(&mut self) -> Result<Expr, ConditionError> {
        let offset = self.offset();
        let Some((_, tok)) = self.toks.get(self.pos).cloned() else {
            return err(offset, "unexpected end of condition");
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Lit(Literal::Num(n))),
            Tok::Str(s) => Ok(Expr::Lit(Literal::Text(s))),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::Ident(id) => {
                let lower = id.to_ascii_lowercase();
                match lower.as_str() {
                    "true" => return Ok(Expr::Lit(Literal::Bool(true))),
                    "false" => return Ok(Expr::Lit(Literal::Bool(false))),
                    "null" => return Ok(Expr::Lit(Literal::Null)),
                    "and" | "or" | "not" | "in" | "is" => {
                        return err(offset, format!("expected a value, found '{id}'"))
                    }
                    _ => {}
                }
                if self.peek() == Some(&Tok::Dot) {
                    let side = match lower.as_str() {
                        "old" => Side::Old,
                        "new" => Side::New,
                        _ => {
                            return err(
                                offset,
                                format!("unknown row '{id}': use old.column or new.column"),
                            )
                        }
                    };
                    self.pos += 1;
                    match self.toks.get(self.pos).cloned() {
                        Some((_, Tok::Ident(name))) => {
                            self.pos += 1;
                            Ok(Expr::Column { side, name, offset })
                        }
                        _ => err(self.offset(), "expected a column name after '.'"),
                    }
                } else {
                    Ok(Expr::Column {
                        side: Side::Current,
                        name: id,
                        offset,
                    })
                }
            }
            _ => err(offset, "expected a value, a column or '('"),
        }
    }
}

impl Condition {
    /// Parses a condition.
    pub fn parse(src: &str) -> Result<Condition, ConditionError> {
        let toks = lex(src)?;
        if toks.is_empty() {
            return err(0, "empty condition");
        }
        let mut p = Parser {
            toks,
            pos: 0,
            src,
            depth: 0,
        };
        let expr = p.expr()?;
        if p.pos < p.toks.len() {
            return err(
                p.offset(),
                "unexpected text after the condition (missing 'and'/'or'?)",
            );
        }
        Ok(Condition {
            source: src.to_string(),
            expr,
        })
    }

    /// Every column the condition reads.
    pub fn columns(&self) -> Vec<(Side, &str, usize)> {
        fn walk<'a>(e: &'a Expr, out: &mut Vec<(Side, &'a str, usize)>) {
            match e {
                Expr::Lit(_) => {}
                Expr::Column { side, name, offset } => out.push((*side, name, *offset)),
                Expr::Not(a) => walk(a, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Cmp { left, right, .. } => {
                    walk(left, out);
                    walk(right, out);
                }
                Expr::IsNull { expr, .. } | Expr::In { expr, .. } => walk(expr, out),
            }
        }
        let mut out = Vec::new();
        walk(&self.expr, &mut out);
        out
    }

    /// Evaluates against a change.
    pub fn eval(&self, row: &RowView<'_>) -> Truth {
        truth(&value(&self.expr, row))
    }

    /// Type-checks against column types (`type_of` returns a column's type OID, or None when
    /// the column does not exist).
    pub fn check(&self, type_of: &dyn Fn(&str) -> Option<u32>) -> Result<(), ConditionError> {
        match ty(&self.expr, type_of)? {
            Ty::Bool | Ty::Null => Ok(()),
            other => err(0, format!("the condition is {other}, not true/false")),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Null,
    Unknown,
    Bool(bool),
    Num(f64),
    Text(std::borrow::Cow<'a, str>),
}

fn truth(v: &Val<'_>) -> Truth {
    match v {
        Val::Bool(b) => Truth::from_bool(*b),
        Val::Null => Truth::False,
        // Unknown, or a non-boolean in a boolean position (refused by `check`): do not narrow.
        _ => Truth::Unknown,
    }
}

fn from_truth(t: Truth) -> Val<'static> {
    match t {
        Truth::True => Val::Bool(true),
        Truth::False => Val::Bool(false),
        Truth::Unknown => Val::Unknown,
    }
}

fn lit(l: &Literal) -> Val<'_> {
    match l {
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Num(n) => Val::Num(*n),
        Literal::Text(s) => Val::Text(s.as_str().into()),
    }
}

fn column<'a>(row: &RowView<'a>, side: Side, name: &str) -> Val<'a> {
    match row.get(side, name) {
        Lookup::Value(v) => match row.type_of(name) {
            Some(oid::BOOL) => match v {
                "true" | "t" => Val::Bool(true),
                "false" | "f" => Val::Bool(false),
                _ => Val::Unknown,
            },
            Some(t) if oid::is_numeric(t) => v.parse().map_or(Val::Unknown, Val::Num),
            _ => Val::Text(v.into()),
        },
        Lookup::Null | Lookup::Absent => Val::Null,
        Lookup::Unknown => Val::Unknown,
    }
}

fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>) -> Val<'static> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Val::Unknown, _) | (_, Val::Unknown) => return Val::Unknown,
        (Val::Null, _) | (_, Val::Null) => return Val::Bool(false),
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Text(x), Val::Text(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        // Text against a number: compare numerically when the text is a number.
        (Val::Text(x), Val::Num(y)) => x.parse::<f64>().ok().and_then(|x| x.partial_cmp(y)),
        (Val::Num(x), Val::Text(y)) => y.parse::<f64>().ok().and_then(|y| x.partial_cmp(&y)),
        _ => None,
    };
    let Some(ord) = ord else {
        return Val::Unknown;
    };
    Val::Bool(match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    })
}

fn value<'a>(e: &'a Expr, row: &RowView<'a>) -> Val<'a> {
    match e {
        Expr::Lit(l) => lit(l),
        Expr::Column { side, name, .. } => column(row, *side, name),
        Expr::Not(a) => from_truth(truth(&value(a, row)).not()),
        Expr::And(a, b) => {
            let x = truth(&value(a, row));
            if x == Truth::False {
                return Val::Bool(false);
            }
            match (x, truth(&value(b, row))) {
                (_, Truth::False) => Val::Bool(false),
                (Truth::True, Truth::True) => Val::Bool(true),
                _ => Val::Unknown,
            }
        }
        Expr::Or(a, b) => {
            let x = truth(&value(a, row));
            if x == Truth::True {
                return Val::Bool(true);
            }
            match (x, truth(&value(b, row))) {
                (_, Truth::True) => Val::Bool(true),
                (Truth::False, Truth::False) => Val::Bool(false),
                _ => Val::Unknown,
            }
        }
        Expr::Cmp {
            op, left, right, ..
        } => compare(*op, &value(left, row), &value(right, row)),
        Expr::IsNull { expr, negated } => match value(expr, row) {
            Val::Unknown => Val::Unknown,
            Val::Null => Val::Bool(!negated),
            _ => Val::Bool(*negated),
        },
        Expr::In {
            expr,
            list,
            negated,
            ..
        } => {
            let v = value(expr, row);
            let mut result = Truth::False;
            for l in list {
                match compare(CmpOp::Eq, &v, &lit(l)) {
                    Val::Bool(true) => {
                        result = Truth::True;
                        break;
                    }
                    Val::Unknown => result = Truth::Unknown,
                    _ => {}
                }
            }
            from_truth(if *negated { result.not() } else { result })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Type checking

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Null,
    Bool,
    Num,
    Text,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ty::Null => "null",
            Ty::Bool => "a boolean",
            Ty::Num => "a number",
            Ty::Text => "text",
        })
    }
}

fn lit_ty(l: &Literal) -> Ty {
    match l {
        Literal::Null => Ty::Null,
        Literal::Bool(_) => Ty::Bool,
        Literal::Num(_) => Ty::Num,
        Literal::Text(_) => Ty::Text,
    }
}

fn comparable(a: Ty, b: Ty) -> bool {
    a == b || a == Ty::Null || b == Ty::Null
}

fn ty(e: &Expr, type_of: &dyn Fn(&str) -> Option<u32>) -> Result<Ty, ConditionError> {
    let boolean = |e: &Expr| -> Result<(), ConditionError> {
        match ty(e, type_of)? {
            Ty::Bool | Ty::Null => Ok(()),
            other => err(
                offset_of(e),
                format!("expected true/false here, found {other}"),
            ),
        }
    };
    match e {
        Expr::Lit(l) => Ok(lit_ty(l)),
        Expr::Column { name, offset, .. } => match type_of(name) {
            None => err(*offset, format!("column {name:?} does not exist")),
            Some(oid::BOOL) => Ok(Ty::Bool),
            Some(t) if oid::is_numeric(t) => Ok(Ty::Num),
            Some(_) => Ok(Ty::Text),
        },
        Expr::Not(a) => boolean(a).map(|_| Ty::Bool),
        Expr::And(a, b) | Expr::Or(a, b) => {
            boolean(a)?;
            boolean(b)?;
            Ok(Ty::Bool)
        }
        Expr::Cmp {
            op,
            left,
            right,
            offset,
        } => {
            let (l, r) = (ty(left, type_of)?, ty(right, type_of)?);
            if l == Ty::Null || r == Ty::Null {
                return err(
                    *offset,
                    "comparing with null is never true: use 'is null' / 'is not null'",
                );
            }
            if !comparable(l, r) {
                return err(*offset, format!("cannot compare {l} with {r}"));
            }
            if l == Ty::Bool && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                return err(*offset, "booleans compare only with == and !=");
            }
            Ok(Ty::Bool)
        }
        Expr::IsNull { expr, .. } => ty(expr, type_of).map(|_| Ty::Bool),
        Expr::In {
            expr, list, offset, ..
        } => {
            let t = ty(expr, type_of)?;
            for l in list {
                if !comparable(t, lit_ty(l)) || lit_ty(l) == Ty::Null {
                    return err(*offset, format!("cannot compare {t} with {}", lit_ty(l)));
                }
            }
            Ok(Ty::Bool)
        }
    }
}

fn offset_of(e: &Expr) -> usize {
    match e {
        Expr::Column { offset, .. } | Expr::Cmp { offset, .. } | Expr::In { offset, .. } => *offset,
        Expr::Not(a) | Expr::And(a, _) | Expr::Or(a, _) => offset_of(a),
        Expr::IsNull { expr, .. } => offset_of(expr),
        Expr::Lit(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Change, Column, Datum, Op, Relation, Tuple};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn change(op: Op, old: Option<Vec<Datum>>, new: Option<Vec<Datum>>) -> Change {
        let col = |n: &str, t: u32| Column {
            name: n.into(),
            type_oid: t,
            is_key: n == "id",
        };
        Change {
            relation: Arc::new(Relation {
                oid: 1,
                schema: "public".into(),
                name: "courses".into(),
                replica_identity: b'f',
                columns: vec![
                    col("id", oid::INT4),
                    col("published", oid::BOOL),
                    col("status", oid::TEXT),
                    col("price", oid::NUMERIC),
                ],
            }),
            op,
            old: old.map(Tuple),
            new: new.map(Tuple),
            undecodable: None,
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn eval(cond: &str, c: &Change) -> Truth {
        Condition::parse(cond).unwrap().eval(&RowView::new(c))
    }

    fn types(name: &str) -> Option<u32> {
        match name {
            "id" => Some(oid::INT4),
            "published" => Some(oid::BOOL),
            "status" => Some(oid::TEXT),
            "price" => Some(oid::NUMERIC),
            _ => None,
        }
    }

    #[test]
    fn the_documented_example() {
        let up = change(
            Op::Update,
            Some(vec![t("1"), t("false"), t("draft"), t("10.00")]),
            Some(vec![t("1"), t("true"), t("live"), t("10.00")]),
        );
        assert_eq!(eval("new.published or old.published", &up), Truth::True);
        let ins = change(
            Op::Insert,
            None,
            Some(vec![t("1"), t("false"), t("a"), t("1")]),
        );
        // No old row: old.published is null, which is false.
        assert_eq!(eval("new.published or old.published", &ins), Truth::False);
    }

    #[test]
    fn comparisons_in_and_null_checks() {
        let c = change(
            Op::Update,
            Some(vec![t("1"), t("true"), t("draft"), t("10.00")]),
            Some(vec![t("1"), t("true"), Datum::Null, t("12.5")]),
        );
        assert_eq!(eval("new.price > old.price", &c), Truth::True);
        assert_eq!(
            eval("new.price >= 12.5 and old.price < 11", &c),
            Truth::True
        );
        assert_eq!(eval("old.status in ('draft', 'review')", &c), Truth::True);
        assert_eq!(eval("old.status not in ['draft']", &c), Truth::False);
        assert_eq!(eval("new.status is null", &c), Truth::True);
        assert_eq!(eval("new.status == 'x'", &c), Truth::False);
        assert_eq!(eval("not (new.status is not null)", &c), Truth::True);
        assert_eq!(eval("NEW.published = TRUE AND id <> 2", &c), Truth::True);
    }

    #[test]
    fn unknown_values_make_the_condition_unknown_unless_decided() {
        let c = change(
            Op::Update,
            Some(vec![t("1"), Datum::Unknown, Datum::Unknown, Datum::Unknown]),
            Some(vec![t("1"), t("false"), t("a"), t("1")]),
        );
        assert_eq!(eval("old.published", &c), Truth::Unknown);
        assert_eq!(eval("new.published or old.published", &c), Truth::Unknown);
        assert_eq!(eval("new.published and old.published", &c), Truth::False);
        assert_eq!(eval("old.price > 3 or new.status == 'a'", &c), Truth::True);
    }

    #[test]
    fn parse_errors_point_at_the_problem() {
        let e = Condition::parse("new.published or").unwrap_err();
        assert_eq!(e.offset, 16);
        let e = Condition::parse("row.x").unwrap_err();
        assert!(e.message.contains("unknown row"), "{e}");
        let e = Condition::parse("new.a new.b").unwrap_err();
        assert_eq!(e.offset, 6);
        assert!(Condition::parse("'abc").is_err());
        assert!(Condition::parse("a in (b)").is_err());
        assert!(Condition::parse("").is_err());
        assert!(Condition::parse(&"not ".repeat(200)).is_err());
        assert!(Condition::parse(&format!("{}x{}", "(".repeat(200), ")".repeat(200))).is_err());
    }

    #[test]
    fn type_errors() {
        let check = |s: &str| Condition::parse(s).unwrap().check(&types);
        assert!(check("new.published or old.published").is_ok());
        assert!(check("new.price > 3 and status in ('a', 'b')").is_ok());
        assert!(check("new.title == 'x'")
            .unwrap_err()
            .message
            .contains("does not exist"));
        assert!(check("new.status > 3")
            .unwrap_err()
            .message
            .contains("cannot compare text with a number"));
        assert!(check("new.price")
            .unwrap_err()
            .message
            .contains("not true/false"));
        assert!(check("new.status and new.published").is_err());
        assert!(check("new.status == null")
            .unwrap_err()
            .message
            .contains("is null"));
        assert!(check("new.published < true").is_err());
    }

    fn arb_expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("new.published".to_string()),
            Just("old.published".to_string()),
            Just("new.price > 5".to_string()),
            Just("old.status in ('a', 'b')".to_string()),
            Just("new.status is null".to_string()),
            Just("true".to_string()),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
                inner.prop_map(|a| format!("not ({a})")),
            ]
        })
    }

    fn datum_bool() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(t("true")),
            Just(t("false")),
            Just(Datum::Null),
            Just(Datum::Unknown)
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Condition::parse(&s);
        }

        #[test]
        fn well_typed_conditions_check_and_evaluate(
            e in arb_expr(), old_pub in datum_bool(), new_pub in datum_bool(),
        ) {
            let cond = Condition::parse(&e).unwrap();
            prop_assert!(cond.check(&types).is_ok());
            let c = change(
                Op::Update,
                Some(vec![t("1"), old_pub, t("a"), t("3")]),
                Some(vec![t("1"), new_pub, Datum::Null, t("7")]),
            );
            let _ = cond.eval(&RowView::new(&c));
        }

        #[test]
        fn not_inverts_known_results(e in arb_expr(), old_pub in datum_bool(), new_pub in datum_bool()) {
            let c = change(
                Op::Update,
                Some(vec![t("1"), old_pub, t("a"), t("3")]),
                Some(vec![t("1"), new_pub, Datum::Null, t("7")]),
            );
            let row = RowView::new(&c);
            let a = Condition::parse(&e).unwrap().eval(&row);
            let b = Condition::parse(&format!("not ({e})")).unwrap().eval(&row);
            prop_assert_eq!(a.not(), b);
        }
    }
}
