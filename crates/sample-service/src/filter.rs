//! A small OData `$filter` parser and evaluator.
//!
//! It covers what a gateway typically generates (comparisons, `and`/`or`/`not`,
//! `in`, a few string functions) and rejects everything else with a message,
//! so the service answers 400 the way a real server does for syntax it lacks.

use super::value::{Val, compare_vals, is_guid, parse_date, parse_datetime};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

/// Supported canonical functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    /// `contains(s, t)`
    Contains,
    /// `startswith(s, t)`
    StartsWith,
    /// `endswith(s, t)`
    EndsWith,
    /// `tolower(s)`
    ToLower,
    /// `toupper(s)`
    ToUpper,
    /// `length(s)`
    Length,
    /// `trim(s)`
    Trim,
    /// `indexof(s, t)`
    IndexOf,
}

/// Parsed filter expression.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    /// A literal value.
    Lit(Val),
    /// A property path such as `name` or `address/city`.
    Prop(Vec<String>),
    /// `a op b`
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    /// `a in (b, c, ...)`
    In(Box<Expr>, Vec<Expr>),
    /// `a and b`
    And(Box<Expr>, Box<Expr>),
    /// `a or b`
    Or(Box<Expr>, Box<Expr>),
    /// `not a`
    Not(Box<Expr>),
    /// A function call.
    Call(Func, Vec<Expr>),
}

impl Expr {
    /// Whether any node of the tree satisfies `pred`; used for the knobs that
    /// make the service refuse `in` or `or`, and for property validation.
    pub(crate) fn any(&self, pred: &mut dyn FnMut(&Expr) -> bool) -> bool {
        if pred(self) {
            return true;
        }
        match self {
            Expr::Lit(_) | Expr::Prop(_) => false,
            Expr::Cmp(a, _, b) | Expr::And(a, b) | Expr::Or(a, b) => a.any(pred) || b.any(pred),
            Expr::In(a, list) => a.any(pred) || list.iter().any(|e| e.any(pred)),
            Expr::Not(a) => a.any(pred),
            Expr::Call(_, args) => args.iter().any(|e| e.any(pred)),
        }
    }

    /// First property whose leading path segment `known` rejects.
    pub(crate) fn unknown_property(&self, known: &dyn Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        self.any(&mut |e| match e {
            Expr::Prop(path) if !path.first().is_some_and(|p| known(p)) => {
                found = Some(path.join("/"));
                true
            }
            _ => false,
        });
        found
    }
}

/// Lexical tokens.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open,
    Close,
    Comma,
    Word(String),
    Lit(Val),
}

/// Parentheses, `not` and function calls nested deeper than this are refused, so that no URL
/// a client can send makes the parser recurse without bound.
const MAX_DEPTH: usize = 32;
/// Tokens in one `$filter`; bounds the length of `and`/`or` chains, and with them how deep
/// evaluation recurses.
const MAX_TOKENS: usize = 4096;

/// Parses a `$filter` expression.
pub(crate) fn parse(text: &str) -> Result<Expr, String> {
    let toks = tokenize(text)?;
    if toks.len() > MAX_TOKENS {
        return Err(format!("$filter has more than {MAX_TOKENS} tokens"));
    }
    let mut parser = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let expr = parser.or_expr()?;
    match parser.peek() {
        None => Ok(expr),
        Some(tok) => Err(format!("unexpected {} in $filter", describe(Some(tok)))),
    }
}

/// Parses a single literal, as found in a key predicate like `('A''1')`.
pub(crate) fn parse_literal(text: &str) -> Result<Val, String> {
    match tokenize(text)?.as_slice() {
        [Tok::Lit(v)] => Ok(v.clone()),
        [Tok::Word(w)] => word_literal(w).ok_or_else(|| format!("invalid literal '{text}'")),
        _ => Err(format!("invalid literal '{text}'")),
    }
}

/// Splits `text` at `sep` outside of parentheses and single-quoted strings,
/// e.g. `$expand=A($select=x,y),B` at commas, or a composite key predicate.
pub(crate) fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Evaluates a filter against one row; anything but `true` excludes the row.
pub(crate) fn matches(expr: &Expr, row: &Map<String, Value>) -> bool {
    matches!(eval(expr, row), Val::Bool(true))
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | ',' => {
                toks.push(match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    _ => Tok::Comma,
                });
                i += 1;
            }
            '\'' => {
                let (s, next) = lex_string(&chars, i)?;
                toks.push(Tok::Lit(Val::Str(s)));
                i = next;
            }
            _ => {
                let start = i;
                while chars.get(i).is_some_and(|&c| is_atom_char(c)) {
                    i += 1;
                }
                if i == start {
                    return Err(format!("unexpected character '{c}' in $filter"));
                }
                let atom: String = chars[start..i].iter().collect();
                toks.push(classify_atom(&atom)?);
            }
        }
    }
    Ok(toks)
}

/// Characters that may form identifiers, numbers, GUIDs and timestamps.
fn is_atom_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '+' | '/' | '$' | '@')
}

/// Reads a single-quoted string starting at `start`, unescaping `''`.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err("unterminated string literal in $filter".to_string()),
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                out.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((out, i + 1)),
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// Decides what an unquoted run of characters is.
fn classify_atom(atom: &str) -> Result<Tok, String> {
    let invalid = || format!("invalid token '{atom}' in $filter");
    if is_guid(atom) {
        return Ok(Tok::Lit(Val::Guid(atom.to_ascii_lowercase())));
    }
    let first = atom.chars().next().unwrap_or(' ');
    let second = atom.chars().nth(1).unwrap_or(' ');
    if first.is_ascii_digit() && atom.len() >= 10 && atom.as_bytes().get(4) == Some(&b'-') {
        if atom.contains(['T', 't']) {
            return parse_datetime(atom)
                .map(|t| Tok::Lit(Val::DateTime(t)))
                .ok_or_else(invalid);
        }
        return parse_date(atom)
            .map(|d| Tok::Lit(Val::Date(d)))
            .ok_or_else(invalid);
    }
    if first.is_ascii_digit() || (first == '-' && second.is_ascii_digit()) {
        if let Ok(i) = atom.parse::<i64>() {
            return Ok(Tok::Lit(Val::Int(i)));
        }
        return atom
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| Tok::Lit(Val::Dec(f)))
            .ok_or_else(invalid);
    }
    let word_ok = (first.is_alphabetic() || matches!(first, '_' | '$' | '@'))
        && !atom.contains([':', '+', '-']);
    if word_ok {
        Ok(Tok::Word(atom.to_string()))
    } else {
        Err(invalid())
    }
}

/// Keywords that stand for literals.
fn word_literal(word: &str) -> Option<Val> {
    match word {
        "true" => Some(Val::Bool(true)),
        "false" => Some(Val::Bool(false)),
        "null" => Some(Val::Null),
        _ => None,
    }
}

fn cmp_op(word: &str) -> Option<CmpOp> {
    Some(match word {
        "eq" => CmpOp::Eq,
        "ne" => CmpOp::Ne,
        "gt" => CmpOp::Gt,
        "ge" => CmpOp::Ge,
        "lt" => CmpOp::Lt,
        "le" => CmpOp::Le,
        _ => return None,
    })
}

/// Maps a function name to the function and its arity.
fn function(name: &str) -> Option<(Func, usize)> {
    Some(match name {
        "contains" => (Func::Contains, 2),
        "startswith" => (Func::StartsWith, 2),
        "endswith" => (Func::EndsWith, 2),
        "indexof" => (Func::IndexOf, 2),
        "tolower" => (Func::ToLower, 1),
        "toupper" => (Func::ToUpper, 1),
        "length" => (Func::Length, 1),
        "trim" => (Func::Trim, 1),
        _ => return None,
    })
}

fn describe(tok: Option<&Tok>) -> String {
    match tok {
        None => "end of expression".to_string(),
        Some(Tok::Open) => "'('".to_string(),
        Some(Tok::Close) => "')'".to_string(),
        Some(Tok::Comma) => "','".to_string(),
        Some(Tok::Word(w)) => format!("'{w}'"),
        Some(Tok::Lit(v)) => format!("literal {v:?}"),
    }
}

/// Recursive-descent parser; precedence from loosest: `or`, `and`, `not`,
/// comparison / `in`, primary.
struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    /// Nesting of the expression being parsed, bounded by [`MAX_DEPTH`].
    depth: usize,
}

impl Parser {
    /// Runs `inner` one nesting level deeper.
    fn nested<T>(
        &mut self,
        inner: impl FnOnce(&mut Parser) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!("$filter is nested deeper than {MAX_DEPTH} levels"));
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn bump(&mut self) -> Option<Tok> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let hit = self.peek_word() == Some(word);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect(&mut self, want: &Tok) -> Result<(), String> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {} but found {} in $filter",
                describe(Some(want)),
                describe(self.peek())
            ))
        }
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.eat_word("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.not_expr()?;
        while self.eat_word("and") {
            left = Expr::And(Box::new(left), Box::new(self.not_expr()?));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        if self.eat_word("not") {
            return Ok(Expr::Not(Box::new(self.nested(|p| p.not_expr())?)));
        }
        self.cmp_expr()
    }

    fn cmp_expr(&mut self) -> Result<Expr, String> {
        let left = self.primary()?;
        if let Some(op) = self.peek_word().and_then(cmp_op) {
            self.pos += 1;
            return Ok(Expr::Cmp(Box::new(left), op, Box::new(self.primary()?)));
        }
        if self.eat_word("in") {
            self.expect(&Tok::Open)?;
            let items = self.list(|p| p.primary())?;
            if items.is_empty() {
                return Err("empty list after 'in' in $filter".to_string());
            }
            return Ok(Expr::In(Box::new(left), items));
        }
        Ok(left)
    }

    /// Comma-separated items up to and including the closing parenthesis.
    fn list(
        &mut self,
        mut item: impl FnMut(&mut Parser) -> Result<Expr, String>,
    ) -> Result<Vec<Expr>, String> {
        let mut items = Vec::new();
        if self.peek() == Some(&Tok::Close) {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            match self.bump() {
                Some(Tok::Comma) => continue,
                Some(Tok::Close) => return Ok(items),
                other => {
                    return Err(format!(
                        "expected ',' or ')' but found {} in $filter",
                        describe(other.as_ref())
                    ));
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.bump() {
            Some(Tok::Open) => {
                let inner = self.nested(|p| p.or_expr())?;
                self.expect(&Tok::Close)?;
                Ok(inner)
            }
            Some(Tok::Lit(v)) => Ok(Expr::Lit(v)),
            Some(Tok::Word(w)) => self.word(w),
            other => Err(format!(
                "unexpected {} in $filter",
                describe(other.as_ref())
            )),
        }
    }

    /// A word in operand position: literal keyword, function call or property.
    fn word(&mut self, word: String) -> Result<Expr, String> {
        if let Some(v) = word_literal(&word) {
            return Ok(Expr::Lit(v));
        }
        if self.peek() == Some(&Tok::Open) {
            let (func, arity) =
                function(&word).ok_or_else(|| format!("unsupported function '{word}'"))?;
            self.pos += 1;
            let args = self.nested(|p| p.list(|p| p.or_expr()))?;
            if args.len() != arity {
                return Err(format!("{word} expects {arity} argument(s)"));
            }
            return Ok(Expr::Call(func, args));
        }
        if cmp_op(&word).is_some() || matches!(word.as_str(), "and" | "or" | "not" | "in") {
            return Err(format!("unexpected '{word}' in $filter"));
        }
        let path: Vec<String> = word.split('/').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("invalid property path '{word}'"));
        }
        Ok(Expr::Prop(path))
    }
}

fn eval(expr: &Expr, row: &Map<String, Value>) -> Val {
    match expr {
        Expr::Lit(v) => v.clone(),
        Expr::Prop(path) => lookup(row, path).map_or(Val::Null, Val::from_json),
        Expr::Cmp(a, op, b) => Val::Bool(compare(*op, &eval(a, row), &eval(b, row))),
        Expr::In(a, list) => {
            let left = eval(a, row);
            Val::Bool(
                list.iter()
                    .any(|item| compare(CmpOp::Eq, &left, &eval(item, row))),
            )
        }
        Expr::And(a, b) => Val::Bool(matches(a, row) && matches(b, row)),
        Expr::Or(a, b) => Val::Bool(matches(a, row) || matches(b, row)),
        Expr::Not(a) => Val::Bool(!matches(a, row)),
        Expr::Call(func, args) => {
            let args: Vec<Val> = args.iter().map(|a| eval(a, row)).collect();
            call(*func, &args)
        }
    }
}

/// Follows a property path through nested JSON objects.
fn lookup<'a>(row: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(row.get(first)?, |value, segment| value.get(segment))
}

fn compare(op: CmpOp, a: &Val, b: &Val) -> bool {
    let ord = compare_vals(a, b);
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
    }
}

/// Applies a string function; a null or non-string argument yields null, which
/// in turn makes the surrounding comparison false, as on a real server.
fn call(func: Func, args: &[Val]) -> Val {
    let text = |i: usize| match args.get(i) {
        Some(Val::Str(s) | Val::Guid(s)) => Some(s.as_str()),
        _ => None,
    };
    let (Some(a), b) = (text(0), text(1)) else {
        return Val::Null;
    };
    let two = |f: fn(&str, &str) -> Val| b.map_or(Val::Null, |b| f(a, b));
    match func {
        Func::Contains => two(|a, b| Val::Bool(a.contains(b))),
        Func::StartsWith => two(|a, b| Val::Bool(a.starts_with(b))),
        Func::EndsWith => two(|a, b| Val::Bool(a.ends_with(b))),
        Func::IndexOf => two(|a, b| {
            Val::Int(
                a.find(b)
                    .map_or(-1, |byte| a[..byte].chars().count() as i64),
            )
        }),
        Func::ToLower => Val::Str(a.to_lowercase()),
        Func::ToUpper => Val::Str(a.to_uppercase()),
        Func::Trim => Val::Str(a.trim().to_string()),
        Func::Length => Val::Int(a.chars().count() as i64),
    }
}
