//! Three-valued evaluation of a condition against a change's rows.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val<'a> {
    Null,
    Unknown,
    Bool(bool),
    Num(f64),
    Text(std::borrow::Cow<'a, str>),
}

pub(super) fn truth(v: &Val<'_>) -> Truth {
    match v {
        Val::Bool(b) => Truth::from_bool(*b),
        Val::Null => Truth::False,
        // Unknown, or a non-boolean in a boolean position (refused by `check`): do not narrow.
        _ => Truth::Unknown,
    }
}

pub(super) fn from_truth(t: Truth) -> Val<'static> {
    match t {
        Truth::True => Val::Bool(true),
        Truth::False => Val::Bool(false),
        Truth::Unknown => Val::Unknown,
    }
}

pub(super) fn lit(l: &Literal) -> Val<'_> {
    match l {
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Num(n) => Val::Num(*n),
        Literal::Text(s) => Val::Text(s.as_str().into()),
    }
}

pub(super) fn column<'a>(row: &RowView<'a>, side: Side, name: &str) -> Val<'a> {
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

pub(super) fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>) -> Val<'static> {
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

pub(super) fn value<'a>(e: &'a Expr, row: &RowView<'a>) -> Val<'a> {
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
