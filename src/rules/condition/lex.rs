//! Lexing a `when` condition into tokens with byte offsets.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
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

pub(super) fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ConditionError> {
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
