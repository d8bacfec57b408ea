//! Type-checking a condition against column types, for `cachewarden check`.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
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

pub(super) fn lit_ty(l: &Literal) -> Ty {
    match l {
        Literal::Null => Ty::Null,
        Literal::Bool(_) => Ty::Bool,
        Literal::Num(_) => Ty::Num,
        Literal::Text(_) => Ty::Text,
    }
}

pub(super) fn comparable(a: Ty, b: Ty) -> bool {
    a == b || a == Ty::Null || b == Ty::Null
}

pub(super) fn ty(e: &Expr, type_of: &dyn Fn(&str) -> Option<u32>) -> Result<Ty, ConditionError> {
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

pub(super) fn offset_of(e: &Expr) -> usize {
    match e {
        Expr::Column { offset, .. } | Expr::Cmp { offset, .. } | Expr::In { offset, .. } => *offset,
        Expr::Not(a) | Expr::And(a, _) | Expr::Or(a, _) => offset_of(a),
        Expr::IsNull { expr, .. } => offset_of(expr),
        Expr::Lit(_) => 0,
    }
}
