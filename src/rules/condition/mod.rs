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

mod eval;
mod lex;
mod parser;
#[cfg(test)]
mod tests;
mod typecheck;

use eval::*;
use lex::*;
use parser::*;
use typecheck::*;

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
