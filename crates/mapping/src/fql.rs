//! The subscription (trigger) language of Segment's Actions destinations: the FQL subset
//! that `@segment/destination-subscriptions` parses. Parsed once into a [`Subscription`],
//! evaluated per event without re-parsing.
//!
//! Grammar: comparisons `field op value` (`=`, `!=`, `<`, `<=`, `>`, `>=`), the functions
//! `contains(field, "x")` and `match(field, "x*")` (optionally negated with `!`),
//! parentheses, `and` / `or`. Strings are double-quoted (`\"` and `\\` escape); numbers,
//! `true`, `false` and `null` are literals. Fields are dotted paths (`properties.total`);
//! other characters in a path are backslash-escaped (`properties.product\ 1.price`).
//!
//! Semantics follow the reference (segment-compat 3.5): at one parenthesis level every
//! child is joined by the *last* `and`/`or` written there (Segment's quirk; mix them only
//! with parentheses); `=` is strict equality with the literal's kind (`userId = 123`
//! matches only the string "123" for the event-level fields `type`, `event`, `name`,
//! `userId`, `anonymousId`, and the number 123 elsewhere); `!=` is true when the field is
//! missing; ordering comparisons need a JSON number; `contains`/`match` need a string;
//! `x = null` means "does not exist", `x != null` "exists" (neither undefined nor null).

use serde_json::Value;

/// A parse error: where, what was expected, what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subscription at position {position}: expected {expected}, found {found}")]
pub struct FqlError {
    /// Character offset (0-based) into the subscription text.
    pub position: usize,
    pub expected: String,
    pub found: String,
}

/// Largest subscription accepted (Segment's limit for FQL statements).
pub const MAX_LEN: usize = 5 * 1024;
/// Deepest parenthesis nesting accepted.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Compare {
        path: Vec<String>,
        op: Op,
        value: Literal,
    },
    Contains {
        path: Vec<String>,
        needle: String,
        negated: bool,
    },
    StartsWith {
        path: Vec<String>,
        prefix: String,
        negated: bool,
    },
    EndsWith {
        path: Vec<String>,
        suffix: String,
        negated: bool,
    },
    All(Vec<Cond>),
    Any(Vec<Cond>),
}

/// A parsed subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    root: Cond,
}

impl Subscription {
    pub fn parse(text: &str) -> Result<Subscription, FqlError> {
        if text.trim().is_empty() {
            return Err(FqlError {
                position: 0,
                expected: "a condition such as type = \"track\"".into(),
                found: "an empty subscription".into(),
            });
        }
        if text.len() > MAX_LEN {
            return Err(FqlError {
                position: MAX_LEN,
                expected: format!("at most {MAX_LEN} bytes"),
                found: format!("{} bytes", text.len()),
            });
        }
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            at: 0,
            end: text.chars().count(),
        };
        let root = p.group(0)?;
        if let Some(t) = p.peek() {
            return Err(p.error_at(t.pos, "`and`, `or` or the end", &t.kind.describe()));
        }
        Ok(Subscription { root })
    }

    /// Whether the event matches.
    pub fn matches(&self, event: &Value) -> bool {
        eval(&self.root, event)
    }

    pub fn condition(&self) -> &Cond {
        &self.root
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(Vec<String>),
    Str(String),
    Num(f64),
    True,
    False,
    Null,
    And,
    Or,
    Not,
    LParen,
    RParen,
    Comma,
    Op(Op),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Ident(p) => format!("`{}`", p.join(".")),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::Num(n) => format!("the number {n}"),
            Kind::True => "`true`".into(),
            Kind::False => "`false`".into(),
            Kind::Null => "`null`".into(),
            Kind::And => "`and`".into(),
            Kind::Or => "`or`".into(),
            Kind::Not => "`!`".into(),
            Kind::LParen => "`(`".into(),
            Kind::RParen => "`)`".into(),
            Kind::Comma => "`,`".into(),
            Kind::Op(op) => format!("`{}`", op_text(*op)),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    pos: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, FqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, expected: &str, found: String| FqlError {
        position: pos,
        expected: expected.into(),
        found,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                out.push(Token {
                    kind: Kind::LParen,
                    pos: start,
                });
                i += 1;
            }
            ')' => {
                out.push(Token {
                    kind: Kind::RParen,
                    pos: start,
                });
                i += 1;
            }
            ',' => {
                out.push(Token {
                    kind: Kind::Comma,
                    pos: start,
                });
                i += 1;
            }
            '=' => {
                out.push(Token {
                    kind: Kind::Op(Op::Eq),
                    pos: start,
                });
                i += 1;
            }
            '!' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Token {
                        kind: Kind::Op(Op::Ne),
                        pos: start,
                    });
                    i += 2;
                } else {
                    out.push(Token {
                        kind: Kind::Not,
                        pos: start,
                    });
                    i += 1;
                }
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    _ => Op::Ge,
                };
                out.push(Token {
                    kind: Kind::Op(op),
                    pos: start,
                });
                i += if eq { 2 } else { 1 };
            }
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(err(
                                start,
                                "a closing `\"`",
                                "the end of the subscription".into(),
                            ))
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(n) => s.push(*n),
                                None => {
                                    return Err(err(i, "a character after `\\`", "the end".into()))
                                }
                            }
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    kind: Kind::Str(s),
                    pos: start,
                });
            }
            '-' | '0'..='9' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_digit()
                        || matches!(chars[j], '.' | 'e' | 'E' | '+' | '-'))
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let n: f64 = text
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or_else(|| err(start, "a number", format!("{text:?}")))?;
                out.push(Token {
                    kind: Kind::Num(n),
                    pos: start,
                });
                i = j;
            }
            c if c.is_alphabetic() || c == '_' || c == '$' || c == '\\' => {
                // A dotted path; backslash escapes any character.
                let mut parts = vec![String::new()];
                while i < chars.len() {
                    let ch = chars[i];
                    if ch == '\\' {
                        match chars.get(i + 1) {
                            Some(n) => {
                                if let Some(last) = parts.last_mut() {
                                    last.push(*n);
                                }
                                i += 2;
                                continue;
                            }
                            None => return Err(err(i, "a character after `\\`", "the end".into())),
                        }
                    }
                    if ch == '.' {
                        parts.push(String::new());
                        i += 1;
                        continue;
                    }
                    if ch.is_alphanumeric() || ch == '_' || ch == '$' || ch == '-' {
                        if let Some(last) = parts.last_mut() {
                            last.push(ch);
                        }
                        i += 1;
                        continue;
                    }
                    break;
                }
                if parts.iter().any(String::is_empty) {
                    return Err(err(
                        start,
                        "a field path like properties.total",
                        format!("{:?}", parts.join(".")),
                    ));
                }
                let kind = if parts.len() == 1 {
                    match parts[0].as_str() {
                        "and" => Kind::And,
                        "or" => Kind::Or,
                        "true" => Kind::True,
                        "false" => Kind::False,
                        "null" => Kind::Null,
                        _ => Kind::Ident(parts),
                    }
                } else {
                    Kind::Ident(parts)
                };
                out.push(Token { kind, pos: start });
            }
            other => {
                return Err(err(
                    start,
                    "a field, a value, an operator or a parenthesis",
                    format!("`{other}`"),
                ))
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    end: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Joiner {
    And,
    Or,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn error_at(&self, pos: usize, expected: &str, found: &str) -> FqlError {
        FqlError {
            position: pos,
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn unexpected(&self, t: Option<&Token>, expected: &str) -> FqlError {
        match t {
            Some(t) => self.error_at(t.pos, expected, &t.kind.describe()),
            None => self.error_at(self.end, expected, "the end of the subscription"),
        }
    }

    /// Terms joined by and/or up to `)` or the end; all joined by the last joiner seen.
    fn group(&mut self, depth: usize) -> Result<Cond, FqlError> {
        if depth > MAX_DEPTH {
            let t = self.peek().cloned();
            return Err(self.unexpected(
                t.as_ref(),
                &format!("at most {MAX_DEPTH} nested parentheses"),
            ));
        }
        let mut terms = vec![self.term(depth)?];
        let mut joiner = Joiner::And;
        loop {
            match self.peek().map(|t| t.kind.clone()) {
                Some(Kind::And) => {
                    self.at += 1;
                    joiner = Joiner::And;
                }
                Some(Kind::Or) => {
                    self.at += 1;
                    joiner = Joiner::Or;
                }
                _ => break,
            }
            terms.push(self.term(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Cond::All(Vec::new()))
        } else if joiner == Joiner::And {
            Cond::All(terms)
        } else {
            Cond::Any(terms)
        })
    }

    fn term(&mut self, depth: usize) -> Result<Cond, FqlError> {
        let t = self.next();
        match t.as_ref().map(|t| &t.kind) {
            Some(Kind::LParen) => {
                let inner = self.group(depth + 1)?;
                match self.next() {
                    Some(Token {
                        kind: Kind::RParen, ..
                    }) => Ok(inner),
                    other => Err(self.unexpected(other.as_ref(), "`)`")),
                }
            }
            Some(Kind::Not) => {
                let f = self.next();
                match f.as_ref().map(|t| &t.kind) {
                    Some(Kind::Ident(p))
                        if p.len() == 1 && (p[0] == "contains" || p[0] == "match") =>
                    {
                        let name = p[0].clone();
                        self.function(&name, true, f.as_ref().map(|t| t.pos).unwrap_or(0))
                    }
                    _ => Err(self.unexpected(f.as_ref(), "`contains(` or `match(` after `!`")),
                }
            }
            Some(Kind::Ident(p)) => {
                let path = p.clone();
                let pos = t.as_ref().map(|t| t.pos).unwrap_or(0);
                if path.len() == 1
                    && (path[0] == "contains" || path[0] == "match")
                    && matches!(self.peek().map(|t| &t.kind), Some(Kind::LParen))
                {
                    return self.function(&path[0], false, pos);
                }
                let op = match self.next() {
                    Some(Token {
                        kind: Kind::Op(op), ..
                    }) => op,
                    other => {
                        return Err(
                            self.unexpected(other.as_ref(), "an operator (=, !=, <, <=, >, >=)")
                        )
                    }
                };
                let v = self.next();
                let value = match v.as_ref().map(|t| &t.kind) {
                    Some(Kind::Str(s)) => Literal::Str(s.clone()),
                    Some(Kind::Num(n)) => Literal::Num(*n),
                    Some(Kind::True) => Literal::Bool(true),
                    Some(Kind::False) => Literal::Bool(false),
                    Some(Kind::Null) => Literal::Null,
                    _ => {
                        return Err(self.unexpected(
                            v.as_ref(),
                            "a value (a \"string\", a number, true, false or null)",
                        ))
                    }
                };
                if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge)
                    && !matches!(value, Literal::Num(_))
                {
                    let at = v.as_ref().map(|t| t.pos).unwrap_or(self.end);
                    return Err(self.error_at(
                        at,
                        &format!("a number after `{}`", op_text(op)),
                        &value_describe(&value),
                    ));
                }
                Ok(Cond::Compare { path, op, value })
            }
            _ => Err(self.unexpected(
                t.as_ref(),
                "a condition (a field, `!`, `contains(`, `match(` or `(`)",
            )),
        }
    }

    fn function(&mut self, name: &str, negated: bool, pos: usize) -> Result<Cond, FqlError> {
        match self.next() {
            Some(Token {
                kind: Kind::LParen, ..
            }) => {}
            other => return Err(self.unexpected(other.as_ref(), &format!("`(` after `{name}`"))),
        }
        let f = self.next();
        let path = match f.as_ref().map(|t| &t.kind) {
            Some(Kind::Ident(p)) => p.clone(),
            _ => {
                return Err(self.unexpected(
                    f.as_ref(),
                    &format!("a field as the first argument of `{name}`"),
                ))
            }
        };
        if path.len() == 1 && path[0] == "type" {
            return Err(self.error_at(
                pos,
                &format!("a field other than `type` in `{name}`"),
                "`type`",
            ));
        }
        match self.next() {
            Some(Token {
                kind: Kind::Comma, ..
            }) => {}
            other => return Err(self.unexpected(other.as_ref(), "`,`")),
        }
        let s = self.next();
        let arg = match s.as_ref().map(|t| &t.kind) {
            Some(Kind::Str(s)) => s.clone(),
            _ => {
                return Err(self.unexpected(
                    s.as_ref(),
                    &format!("a \"string\" as the second argument of `{name}`"),
                ))
            }
        };
        match self.next() {
            Some(Token {
                kind: Kind::RParen, ..
            }) => {}
            other => return Err(self.unexpected(other.as_ref(), "`)`")),
        }
        Ok(match name {
            "contains" => Cond::Contains {
                path,
                needle: arg,
                negated,
            },
            _ => match arg.strip_suffix('*') {
                Some(prefix) => Cond::StartsWith {
                    path,
                    prefix: prefix.to_string(),
                    negated,
                },
                None => Cond::EndsWith {
                    path,
                    suffix: arg.chars().skip(1).collect(),
                    negated,
                },
            },
        })
    }
}

fn value_describe(v: &Literal) -> String {
    match v {
        Literal::Str(s) => format!("the string {s:?}"),
        Literal::Num(n) => format!("the number {n}"),
        Literal::Bool(b) => format!("`{b}`"),
        Literal::Null => "`null`".into(),
    }
}

/// Event-level fields compared as strings (Segment's root fields).
fn is_root_string_field(path: &[String]) -> bool {
    path.len() == 1
        && matches!(
            path[0].as_str(),
            "type" | "event" | "name" | "userId" | "anonymousId" | "previousId" | "groupId"
        )
}

fn lookup<'a>(event: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = event;
    for key in path {
        v = match v {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn num_eq(a: f64, b: f64) -> bool {
    a == b
}

fn eval(c: &Cond, event: &Value) -> bool {
    match c {
        Cond::All(cs) => cs.iter().all(|c| eval(c, event)),
        Cond::Any(cs) => cs.iter().any(|c| eval(c, event)),
        Cond::Compare { path, op, value } => {
            let actual = lookup(event, path);
            let present = actual.filter(|v| !v.is_null());
            match (op, value) {
                (Op::Eq, Literal::Null) => present.is_none(),
                (Op::Ne, Literal::Null) => present.is_some(),
                (Op::Eq, lit) => equals(path, actual, lit),
                (Op::Ne, lit) => !equals(path, actual, lit),
                (op, Literal::Num(n)) => match actual.and_then(Value::as_f64) {
                    Some(a) => match op {
                        Op::Lt => a < *n,
                        Op::Le => a <= *n,
                        Op::Gt => a > *n,
                        _ => a >= *n,
                    },
                    None => false,
                },
                _ => false,
            }
        }
        Cond::Contains {
            path,
            needle,
            negated,
        } => {
            let hit = lookup(event, path)
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains(needle.as_str()));
            hit != *negated
        }
        Cond::StartsWith {
            path,
            prefix,
            negated,
        } => {
            let hit = lookup(event, path)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(prefix.as_str()));
            hit != *negated
        }
        Cond::EndsWith {
            path,
            suffix,
            negated,
        } => {
            let hit = lookup(event, path)
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(suffix.as_str()));
            hit != *negated
        }
    }
}

fn equals(path: &[String], actual: Option<&Value>, lit: &Literal) -> bool {
    let Some(actual) = actual else { return false };
    if is_root_string_field(path) {
        let text = match lit {
            Literal::Str(s) => s.clone(),
            Literal::Num(n) => number_text(*n),
            Literal::Bool(b) => b.to_string(),
            Literal::Null => return actual.is_null(),
        };
        return actual.as_str() == Some(text.as_str());
    }
    match lit {
        Literal::Str(s) => actual.as_str() == Some(s.as_str()),
        Literal::Num(n) => actual.as_f64().is_some_and(|a| num_eq(a, *n)),
        Literal::Bool(b) => actual.as_bool() == Some(*b),
        Literal::Null => actual.is_null(),
    }
}

/// A number as JavaScript prints it (`123`, `1.5`).
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(sub: &str, event: Value) -> bool {
        Subscription::parse(sub)
            .unwrap_or_else(|e| panic!("{sub}: {e}"))
            .matches(&event)
    }

    #[test]
    fn common_default_subscriptions() {
        let track = json!({"type": "track", "event": "Order Completed", "properties": {"total": 30, "coupon": "WINTER25"}});
        let identify = json!({"type": "identify", "traits": {"email": "a@example.com"}});
        assert!(m(r#"type = "track""#, track.clone()));
        assert!(!m(r#"type = "track""#, identify.clone()));
        assert!(m(
            r#"type = "track" and event = "Order Completed""#,
            track.clone()
        ));
        assert!(!m(
            r#"type = "track" and event = "Product Viewed""#,
            track.clone()
        ));
        assert!(m(
            r#"type = "identify" or type = "track""#,
            identify.clone()
        ));
        assert!(m(r#"type = "identify" or type = "track""#, track.clone()));
        assert!(!m(r#"type = "page" or type = "screen""#, track.clone()));
    }

    #[test]
    fn operators_and_kinds() {
        let e = json!({"type": "track", "userId": "123", "event": "Signed Up",
            "properties": {"total": 30, "n": "5", "ok": true, "none": null, "product 1": {"price": 9}},
            "context": {"page": {"path": "/checkout/step"}}});
        assert!(
            m("userId = 123", e.clone()),
            "root fields compare as strings"
        );
        assert!(
            !m("properties.n = 5", e.clone()),
            "a string is not the number 5"
        );
        assert!(m("properties.total = 30", e.clone()));
        assert!(m("properties.total != 31", e.clone()));
        assert!(
            m("properties.missing != 31", e.clone()),
            "!= is true when missing"
        );
        assert!(!m("properties.missing = 31", e.clone()));
        assert!(m(
            "properties.total > 29.5 and properties.total <= 30",
            e.clone()
        ));
        assert!(!m("properties.n > 1", e.clone()), "ordering needs a number");
        assert!(m("properties.ok = true", e.clone()));
        assert!(!m("properties.ok = false", e.clone()));
        assert!(
            m("properties.none = null", e.clone()),
            "null is not existing"
        );
        assert!(m("properties.missing = null", e.clone()));
        assert!(m("properties.total != null", e.clone()));
        assert!(!m("properties.none != null", e.clone()));
        assert!(m(r#"properties.product\ 1.price = 9"#, e.clone()));
        assert!(m(r#"contains(event, "Sign")"#, e.clone()));
        assert!(m(r#"!contains(event, "Order")"#, e.clone()));
        assert!(m(r#"match(context.page.path, "/checkout*")"#, e.clone()));
        assert!(m(r#"match(context.page.path, "*step")"#, e.clone()));
        assert!(!m(r#"match(context.page.path, "*checkout")"#, e.clone()));
        assert!(m(r#"!match(event, "Order*")"#, e.clone()));
        assert!(
            !m(r#"contains(properties.total, "3")"#, e.clone()),
            "contains needs a string"
        );
    }

    #[test]
    fn grouping_follows_the_last_joiner_per_level() {
        let e = json!({"type": "track", "event": "A"});
        // `a and b or c` at one level: all joined by `or` (the last one).
        assert!(m(
            r#"type = "page" and event = "B" or event = "A""#,
            e.clone()
        ));
        // Parentheses give the usual meaning.
        assert!(!m(
            r#"type = "page" and (event = "B" or event = "A")"#,
            e.clone()
        ));
        assert!(m(
            r#"(type = "page" or type = "track") and (event = "B" or event = "A")"#,
            e.clone()
        ));
    }

    #[test]
    fn errors_name_position_and_expectation() {
        let cases = [
            ("", 0, "a condition"),
            ("type = ", 7, "a value"),
            ("type \"track\"", 5, "an operator"),
            (r#"type = "track" and"#, 18, "a condition"),
            (r#"(type = "track""#, 15, "`)`"),
            (
                r#"type = "track" event = "x""#,
                15,
                "`and`, `or` or the end",
            ),
            (r#"type = "track"#, 7, "a closing"),
            ("properties.total > \"5\"", 19, "a number after `>`"),
            (r#"contains(type, "x")"#, 0, "other than `type`"),
            (r#"contains(event "x")"#, 15, "`,`"),
            ("type = 'track'", 7, "a field, a value"),
            ("properties..x = 1", 0, "a field path"),
        ];
        for (text, pos, expected) in cases {
            let e = Subscription::parse(text).unwrap_err();
            assert_eq!(e.position, pos, "{text}: {e}");
            assert!(e.expected.contains(expected), "{text}: {e}");
        }
        let deep = format!("{}type = \"t\"{}", "(".repeat(40), ")".repeat(40));
        assert!(Subscription::parse(&deep).is_err());
        assert!(Subscription::parse(&"a".repeat(6000)).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics_and_errors_point_inside(s in "[a-zA-Z_=!<>()\" .,0-9*\\\\-]{0,120}") {
            match Subscription::parse(&s) {
                Ok(sub) => { let _ = sub.matches(&serde_json::json!({"type": "track", "properties": {"a": 1}})); }
                Err(e) => prop_assert!(e.position <= s.chars().count(), "{e} for {s:?}"),
            }
        }

        #[test]
        fn a_comparison_of_a_string_field_matches_exactly_that_string(v in "[a-zA-Z0-9 _-]{0,20}", other in "[a-zA-Z0-9 _-]{0,20}") {
            let sub = Subscription::parse(&format!("properties.x = \"{v}\"")).unwrap();
            let same = serde_json::json!({"properties": {"x": v.clone()}});
            prop_assert!(sub.matches(&same));
            prop_assert_eq!(sub.matches(&serde_json::json!({"properties": {"x": other.clone()}})), other == v);
            let neg = Subscription::parse(&format!("properties.x != \"{v}\"")).unwrap();
            prop_assert_eq!(neg.matches(&serde_json::json!({"properties": {"x": other.clone()}})), other != v);
        }
    }
}
