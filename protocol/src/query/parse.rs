//! The query parser: text → [`Query`]. Syntax first (field name, operator, raw value), then
//! meaning (known field, allowed operator, typed value).

use super::error::{QueryError, TermPos, suggest_field};
use super::{Decimal, Field, Kind, Op, Query, Scalar, Term, Value};
use crate::price::{FixedError, parse_fixed};
use crate::spec::{ComputeCapability, Interconnect};

/// Characters that end or break a bare value and so must be quoted.
const SPECIAL: &[char] = &['=', '<', '>', '!', '~', '[', ']', ',', '"', '\''];

/// Characters operators are made of.
fn is_op_char(c: char) -> bool {
    matches!(c, '=' | '!' | '<' | '>' | '~')
}

/// Whether `s` can be printed as a bare value and read back unchanged.
pub(super) fn is_bare_safe(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || SPECIAL.contains(&c))
}

/// Base58 (Bitcoin alphabet), the characters of a node id.
fn is_base58(c: char) -> bool {
    c.is_ascii_alphanumeric() && !matches!(c, '0' | 'O' | 'I' | 'l')
}

pub(super) fn parse_query(input: &str) -> Result<Query, QueryError> {
    let mut p = Parser { s: input, pos: 0 };
    let mut terms = Vec::new();
    loop {
        p.skip_ws();
        if p.peek().is_none() {
            return Ok(Query { terms });
        }
        let index = terms.len() + 1;
        terms.push(p.term(index)?);
    }
}

/// A value as written, before it is typed by its field.
enum Raw {
    Bare(String),
    Quoted(String),
    List(Vec<String>),
}

struct Parser<'a> {
    s: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.pos]
    }

    fn skip_ws(&mut self) {
        self.eat_while(char::is_whitespace);
    }

    /// The byte offset of the next whitespace at or after `from`, or the end.
    fn token_end(&self, from: usize) -> usize {
        self.s[from..].find(char::is_whitespace).map_or(self.s.len(), |i| from + i)
    }

    fn term(&mut self, index: usize) -> Result<Term, QueryError> {
        let start = self.pos;
        let input = self.s;
        let at = |end: usize| TermPos::new(input, index, start, end);

        let name = self.eat_while(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = self.token_end(start);
            return Err(QueryError::MissingField { at: at(end), found: self.s[start..end].to_string() });
        }
        let name_end = self.pos;
        self.skip_ws();
        let op = match self.peek() {
            Some(c) if is_op_char(c) => {
                let text = self.eat_while(is_op_char);
                match text {
                    "=" | "==" => Op::Eq,
                    "!=" => Op::Ne,
                    "<" => Op::Lt,
                    "<=" => Op::Le,
                    ">" => Op::Gt,
                    ">=" => Op::Ge,
                    "~" => Op::Contains,
                    _ => {
                        let end = self.token_end(self.pos);
                        return Err(QueryError::UnknownOperator { at: at(end), op: text.to_string() });
                    }
                }
            }
            Some(c) if c.is_alphanumeric() || c == '_' => {
                let word = self.eat_while(|c| c.is_alphanumeric() || c == '_');
                if word.eq_ignore_ascii_case("in") {
                    Op::In
                } else if word.eq_ignore_ascii_case("notin") {
                    Op::NotIn
                } else {
                    return Err(QueryError::MissingOperator {
                        at: at(name_end),
                        field: name.to_string(),
                        found: Some(word.to_string()),
                    });
                }
            }
            found => {
                return Err(QueryError::MissingOperator {
                    at: at(name_end),
                    field: name.to_string(),
                    found: found.map(String::from),
                });
            }
        };

        let field = Field::from_name(name);
        let expected = field.map_or("a value", Field::value_hint);
        let raw = self.value(index, start, op, expected);
        // Field and operator errors come first; they name the whole term when the value
        // could be read, else as much of it as the value error does.
        let at = match &raw {
            Ok(_) => at(self.pos),
            Err(e) => e.term().clone(),
        };
        let Some(field) = field else {
            return Err(QueryError::UnknownField {
                at,
                field: name.to_string(),
                suggestion: suggest_field(name),
            });
        };
        if !field.ops().contains(&op) {
            return Err(QueryError::OperatorNotAllowed { at, op, field });
        }
        let value = match (raw?, op.takes_list()) {
            (Raw::List(items), true) => Value::List(scalars(field, items, &at)?),
            (Raw::Quoted(s), true) => Value::List(scalars(field, vec![s], &at)?),
            (Raw::Bare(s), true) => {
                let items: Vec<String> = s.split(',').map(String::from).collect();
                if items.iter().any(String::is_empty) {
                    return Err(QueryError::EmptyListItem { at });
                }
                Value::List(scalars(field, items, &at)?)
            }
            (Raw::List(_), false) => return Err(QueryError::ListNeedsIn { at, op }),
            (Raw::Bare(s), false) if s.contains(',') => {
                return Err(QueryError::ListNeedsIn { at, op });
            }
            (Raw::Bare(s) | Raw::Quoted(s), false) => Value::One(scalar(field, s, &at)?),
        };
        Ok(Term { field, op, value })
    }

    /// Reads the value after an operator (the parser is just past the operator).
    fn value(
        &mut self,
        index: usize,
        start: usize,
        op: Op,
        expected: &'static str,
    ) -> Result<Raw, QueryError> {
        let op_end = self.pos;
        let input = self.s;
        let at = |end: usize| TermPos::new(input, index, start, end);
        self.skip_ws();
        let spaced = self.pos > op_end;
        let raw = match self.peek() {
            None => {
                return Err(QueryError::MissingValue { at: at(op_end), op, expected });
            }
            Some('[') => Raw::List(self.list(index, start, op)?),
            Some('"' | '\'') => Raw::Quoted(self.quoted(index, start)?),
            Some(_) => {
                let token = self.eat_while(|c| !c.is_whitespace());
                if let Some(ch) = token.chars().find(|c| SPECIAL.contains(c) && *c != ',') {
                    // `gpu= vram>=80`: the "value" is the next term.
                    if spaced && token.contains(is_op_char) {
                        return Err(QueryError::MissingValue { at: at(op_end), op, expected });
                    }
                    return Err(QueryError::UnquotedSpecial {
                        at: at(self.pos),
                        value: token.to_string(),
                        ch,
                    });
                }
                Raw::Bare(token.to_string())
            }
        };
        match self.peek() {
            Some(c) if !c.is_whitespace() => {
                Err(QueryError::JunkAfterValue { at: at(self.token_end(self.pos)), found: c })
            }
            _ => Ok(raw),
        }
    }

    /// Reads `[item, …]` (the parser is at `[`).
    fn list(&mut self, index: usize, start: usize, op: Op) -> Result<Vec<String>, QueryError> {
        let input = self.s;
        let at = |end: usize| TermPos::new(input, index, start, end);
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return Err(QueryError::UnterminatedList { at: at(self.s.len()) });
                }
                Some(']') if items.is_empty() => {
                    self.bump();
                    return Err(QueryError::EmptyList { at: at(self.pos), op });
                }
                Some(',' | ']') => {
                    return Err(QueryError::EmptyListItem { at: at(self.token_end(self.pos)) });
                }
                Some('"' | '\'') => items.push(self.quoted(index, start)?),
                Some(_) => {
                    let item = self.eat_while(|c| !c.is_whitespace() && c != ',' && c != ']');
                    if let Some(ch) = item.chars().find(|c| SPECIAL.contains(c)) {
                        return Err(QueryError::UnquotedSpecial {
                            at: at(self.token_end(self.pos)),
                            value: item.to_string(),
                            ch,
                        });
                    }
                    items.push(item.to_string());
                }
            }
            self.skip_ws();
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(items),
                None => {
                    return Err(QueryError::UnterminatedList { at: at(self.s.len()) });
                }
                Some(found) => {
                    return Err(QueryError::ListSyntax { at: at(self.token_end(self.pos)), found });
                }
            }
        }
    }

    /// Reads a quoted string (the parser is at the opening quote) and unescapes it.
    fn quoted(&mut self, index: usize, start: usize) -> Result<String, QueryError> {
        let input = self.s;
        let at = |end: usize| TermPos::new(input, index, start, end);
        let quote = self.bump().unwrap_or('"');
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(QueryError::UnterminatedQuote { at: at(self.s.len()), quote });
                }
                Some('\\') => match self.bump() {
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    Some(escape) => {
                        return Err(QueryError::BadEscape { at: at(self.token_end(self.pos)), escape });
                    }
                    None => {
                        return Err(QueryError::UnterminatedQuote { at: at(self.s.len()), quote });
                    }
                },
                Some(c) if c == quote => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }
}

fn scalars(field: Field, items: Vec<String>, at: &TermPos) -> Result<Vec<Scalar>, QueryError> {
    items.into_iter().map(|s| scalar(field, s, at)).collect()
}

/// Types one value by its field.
fn scalar(field: Field, value: String, at: &TermPos) -> Result<Scalar, QueryError> {
    let at = at.clone();
    match field.kind() {
        Kind::Text => {
            let empty = match field {
                Field::Gpu => !value.chars().any(|c| c.is_ascii_alphanumeric()),
                _ => value.is_empty(),
            };
            if empty {
                return Err(QueryError::EmptyValue { at, field, value });
            }
            if field == Field::Region && !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(QueryError::BadRegion { at, value });
            }
            if field == Field::Provider && !value.chars().all(is_base58) {
                return Err(QueryError::BadProvider { at, value });
            }
            Ok(Scalar::Text(value))
        }
        Kind::Whole => number(field, value, 0, at).map(Scalar::Whole),
        Kind::Decimal => number(field, value, Decimal::SCALE, at).map(|n| Scalar::Decimal(Decimal(n))),
        Kind::Cc => {
            let parsed = if value.chars().all(|c| c.is_ascii_digit() || c == '.') {
                value.parse::<ComputeCapability>().ok()
            } else {
                None
            };
            parsed.map(Scalar::Cc).ok_or(QueryError::BadComputeCapability { at, value })
        }
        Kind::Interconnect => value
            .parse::<Interconnect>()
            .map(Scalar::Interconnect)
            .map_err(|_| QueryError::BadInterconnect { at, value }),
    }
}

/// Parses a non-negative decimal with at most `scale` fractional digits into a `u64` scaled
/// by `10^scale`. Only `price` may start with `$`.
fn number(field: Field, value: String, scale: u32, at: TermPos) -> Result<u64, QueryError> {
    if value.starts_with('$') && field != Field::Price {
        return Err(QueryError::NotANumber { at, field, value });
    }
    match parse_fixed(&value, scale).map(u64::try_from) {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) | Err(FixedError::TooLarge) => Err(QueryError::NumberTooLarge { at, field, value }),
        Err(FixedError::NotANumber) => Err(QueryError::NotANumber { at, field, value }),
        Err(FixedError::TooPrecise) if scale == 0 => Err(QueryError::NotWholeNumber { at, field, value }),
        Err(FixedError::TooPrecise) => Err(QueryError::TooPrecise { at, field, value }),
    }
}
