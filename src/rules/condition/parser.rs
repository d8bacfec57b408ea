//! The recursive-descent parser of the grammar in the module docs, with a depth limit.

use super::*;

pub(super) struct Parser<'a> {
    pub(super) toks: Vec<(usize, Tok)>,
    pub(super) pos: usize,
    pub(super) src: &'a str,
    pub(super) depth: usize,
}

pub(super) const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    pub(super) fn offset(&self) -> usize {
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

    pub(super) fn expr(&mut self) -> Result<Expr, ConditionError> {
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
