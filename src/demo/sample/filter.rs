//! `$filter` for the sample service: comparisons (`eq ne gt ge lt le`),
//! `in`, `and`, `or`, `not`, parentheses, bare Boolean properties and the
//! string functions `contains`, `startswith` and `endswith`.
//!
//! Literals are type-checked against the property they are compared with
//! when parsing, so evaluation never meets a type mismatch and a bad
//! request is answered with 400 instead of silently matching nothing.

use super::data::{EdmType, Product, Prop, Value, parse_timestamp};

/// Parenthesis and `not` nesting allowed; keeps recursion bounded for any
/// URL a client can send.
const MAX_DEPTH: usize = 32;

/// A parsed `$filter` expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Filter {
    // `and`/`or` chains are kept flat so a long chain does not build a deep
    // tree that would recurse once per term.
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        op: CompareOp,
        left: Operand,
        right: Operand,
    },
    In {
        operand: Operand,
        list: Vec<Value>,
    },
    Text {
        function: TextFunction,
        haystack: Operand,
        needle: Operand,
    },
}

/// The comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// The supported string functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TextFunction {
    Contains,
    StartsWith,
    EndsWith,
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Operand {
    Property(Prop),
    Literal(Value),
}

/// The comparable kinds; Int32 and Decimal share `Number`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Number,
    Str,
    Bool,
    DateTime,
}

impl Filter {
    /// Parses a percent-decoded `$filter` value.
    pub(crate) fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            position: 0,
            depth: 0,
        };
        let filter = parser.or_expression()?;
        match parser.peek() {
            None => Ok(filter),
            Some(token) => Err(format!("unexpected {} in $filter", token.describe())),
        }
    }

    /// Whether `product` satisfies the filter.
    pub(crate) fn matches(&self, product: &Product) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|term| term.matches(product)),
            Filter::Or(terms) => terms.iter().any(|term| term.matches(product)),
            Filter::Not(inner) => !inner.matches(product),
            Filter::Compare { op, left, right } => {
                op.holds(&left.evaluate(product), &right.evaluate(product))
            }
            Filter::In { operand, list } => {
                let value = operand.evaluate(product);
                list.iter().any(|item| equal(&value, item))
            }
            Filter::Text {
                function,
                haystack,
                needle,
            } => match (haystack.evaluate(product), needle.evaluate(product)) {
                (Value::Str(haystack), Value::Str(needle)) => function.holds(&haystack, &needle),
                _ => false,
            },
        }
    }
}

impl CompareOp {
    fn from_word(word: &str) -> Option<CompareOp> {
        match word {
            "eq" => Some(CompareOp::Eq),
            "ne" => Some(CompareOp::Ne),
            "gt" => Some(CompareOp::Gt),
            "ge" => Some(CompareOp::Ge),
            "lt" => Some(CompareOp::Lt),
            "le" => Some(CompareOp::Le),
            _ => None,
        }
    }

    /// OData null semantics: `eq`/`ne` treat null as a value; ordering
    /// comparisons involving null are false.
    fn holds(self, left: &Value, right: &Value) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            CompareOp::Eq => equal(left, right),
            CompareOp::Ne => !equal(left, right),
            CompareOp::Gt => left.compare(right) == Some(Greater),
            CompareOp::Ge => matches!(left.compare(right), Some(Greater | Equal)),
            CompareOp::Lt => left.compare(right) == Some(Less),
            CompareOp::Le => matches!(left.compare(right), Some(Less | Equal)),
        }
    }
}

fn equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Null, Value::Null) => true,
        _ => left.compare(right) == Some(std::cmp::Ordering::Equal),
    }
}

impl TextFunction {
    fn from_word(word: &str) -> Option<TextFunction> {
        match word {
            "contains" => Some(TextFunction::Contains),
            "startswith" => Some(TextFunction::StartsWith),
            "endswith" => Some(TextFunction::EndsWith),
            _ => None,
        }
    }

    fn holds(self, haystack: &str, needle: &str) -> bool {
        match self {
            TextFunction::Contains => haystack.contains(needle),
            TextFunction::StartsWith => haystack.starts_with(needle),
            TextFunction::EndsWith => haystack.ends_with(needle),
        }
    }
}

impl Operand {
    fn evaluate(&self, product: &Product) -> Value {
        match self {
            Operand::Property(prop) => product.value(*prop),
            Operand::Literal(value) => value.clone(),
        }
    }

    /// The operand's kind; `None` for a null literal, which fits anything.
    fn kind(&self) -> Option<Kind> {
        match self {
            Operand::Property(prop) => Some(kind_of_type(prop.edm_type())),
            Operand::Literal(value) => kind_of_value(value),
        }
    }
}

fn kind_of_type(edm_type: EdmType) -> Kind {
    match edm_type {
        EdmType::Int32 | EdmType::Decimal => Kind::Number,
        EdmType::String => Kind::Str,
        EdmType::Boolean => Kind::Bool,
        EdmType::DateTimeOffset => Kind::DateTime,
    }
}

fn kind_of_value(value: &Value) -> Option<Kind> {
    match value {
        Value::Null => None,
        Value::Number(_) => Some(Kind::Number),
        Value::Str(_) => Some(Kind::Str),
        Value::Bool(_) => Some(Kind::Bool),
        Value::DateTime(_) => Some(Kind::DateTime),
    }
}

/// Makes a literal fit the property it is compared with. Quoted numbers and
/// timestamps are accepted because clients used to CAP's string decimals
/// (`price eq '12.50'`) send them.
fn coerce(value: Value, prop: Prop) -> Result<Value, String> {
    let wanted = kind_of_type(prop.edm_type());
    match (kind_of_value(&value), value) {
        (None, value) => Ok(value),
        (Some(kind), value) if kind == wanted => Ok(value),
        (Some(Kind::Str), Value::Str(text)) if wanted == Kind::Number => parse_number(&text),
        (Some(Kind::Str), Value::Str(text)) if wanted == Kind::DateTime => parse_timestamp(&text)
            .map(Value::DateTime)
            .ok_or_else(|| format!("'{text}' is not a valid Edm.DateTimeOffset")),
        (_, value) => Err(format!(
            "cannot compare {} ({}) with {}",
            prop.name(),
            prop.edm_type().qualified_name(),
            describe_value(&value)
        )),
    }
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Number(number) => format!("number {number}"),
        Value::Str(text) => format!("string '{text}'"),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::DateTime(_) => "a date/time".to_owned(),
    }
}

fn parse_number(text: &str) -> Result<Value, String> {
    text.parse::<f64>()
        .ok()
        .filter(|number| number.is_finite())
        .map(Value::Number)
        .ok_or_else(|| format!("'{text}' is not a valid number"))
}

/// Parses an unquoted literal that starts with a digit or `-`: a number or
/// a date/time (`2024-05-01`, `2024-05-01T10:00:00Z`).
fn parse_unquoted(text: &str) -> Result<Value, String> {
    let looks_like_date = text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-');
    if looks_like_date {
        return parse_timestamp(text)
            .map(Value::DateTime)
            .ok_or_else(|| format!("'{text}' is not a valid Edm.DateTimeOffset"));
    }
    parse_number(text)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    Comma,
    /// A quoted string with `''` unescaped.
    Quoted(String),
    /// An identifier or keyword.
    Word(String),
    /// An unquoted number or date/time.
    Unquoted(String),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Open => "'('".to_owned(),
            Token::Close => "')'".to_owned(),
            Token::Comma => "','".to_owned(),
            Token::Quoted(text) => format!("'{text}'"),
            Token::Word(text) | Token::Unquoted(text) => format!("'{text}'"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        let token = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' | ')' | ',' => {
                chars.next();
                match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                }
            }
            '\'' => {
                chars.next();
                Token::Quoted(quoted(&mut chars)?)
            }
            c if c.is_ascii_digit() || c == '-' => {
                Token::Unquoted(take_while(text, start, &mut chars, |c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '+')
                }))
            }
            c if c.is_alphabetic() || c == '_' => {
                Token::Word(take_while(text, start, &mut chars, |c| {
                    c.is_alphanumeric() || c == '_'
                }))
            }
            other => return Err(format!("unexpected character '{other}' in $filter")),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

fn take_while(text: &str, start: usize, chars: &mut Chars<'_>, accept: fn(char) -> bool) -> String {
    let mut end = start;
    while let Some(&(index, c)) = chars.peek() {
        if !accept(c) {
            break;
        }
        end = index + c.len_utf8();
        chars.next();
    }
    text[start..end].to_owned()
}

/// Reads the rest of a quoted string; the opening quote is consumed.
fn quoted(chars: &mut Chars<'_>) -> Result<String, String> {
    let mut value = String::new();
    while let Some((_, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if chars.next_if(|&(_, next)| next == '\'').is_some() {
            value.push('\'');
        } else {
            return Ok(value);
        }
    }
    Err("unterminated string literal in $filter".to_owned())
}

/// Recursive-descent parser; precedence from loose to tight:
/// `or`, `and`, `not`, comparison.
struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += usize::from(token.is_some());
        token
    }

    fn eat(&mut self, expected: &Token) -> bool {
        let found = self.peek() == Some(expected);
        self.position += usize::from(found);
        found
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Word(w)) if w == word);
        self.position += usize::from(found);
        found
    }

    fn expect(&mut self, expected: &Token) -> Result<(), String> {
        if self.eat(expected) {
            return Ok(());
        }
        Err(match self.peek() {
            Some(token) => format!(
                "expected {} but found {}",
                expected.describe(),
                token.describe()
            ),
            None => format!("expected {} at end of $filter", expected.describe()),
        })
    }

    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Parser) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            return Err("$filter is nested too deeply".to_owned());
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn or_expression(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.and_expression()?];
        while self.eat_word("or") {
            terms.push(self.and_expression()?);
        }
        Ok(combine(terms, Filter::Or))
    }

    fn and_expression(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.unary()?];
        while self.eat_word("and") {
            terms.push(self.unary()?);
        }
        Ok(combine(terms, Filter::And))
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.eat_word("not") {
            return self.nested(|parser| Ok(Filter::Not(Box::new(parser.unary()?))));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, String> {
        if self.eat(&Token::Open) {
            let inner = self.nested(Parser::or_expression)?;
            self.expect(&Token::Close)?;
            return Ok(inner);
        }
        if let Some(function) = self.text_function() {
            return self.text_call(function);
        }
        let left = self.operand()?;
        if let Some(op) = self.comparison_operator() {
            let right = self.operand()?;
            return compare(op, left, right);
        }
        if self.eat_word("in") {
            return self.in_list(left);
        }
        // A Boolean property (or literal) is a predicate on its own.
        if left.kind() == Some(Kind::Bool) {
            return compare(CompareOp::Eq, left, Operand::Literal(Value::Bool(true)));
        }
        Err(match self.peek() {
            Some(token) => format!(
                "expected a comparison operator but found {}",
                token.describe()
            ),
            None => "expected a comparison operator at end of $filter".to_owned(),
        })
    }

    fn comparison_operator(&mut self) -> Option<CompareOp> {
        let op = match self.peek() {
            Some(Token::Word(word)) => CompareOp::from_word(word),
            _ => None,
        }?;
        self.position += 1;
        Some(op)
    }

    fn text_function(&mut self) -> Option<TextFunction> {
        let function = match self.peek() {
            Some(Token::Word(word)) => TextFunction::from_word(word),
            _ => None,
        }?;
        self.position += 1;
        Some(function)
    }

    fn text_call(&mut self, function: TextFunction) -> Result<Filter, String> {
        self.expect(&Token::Open)?;
        let haystack = self.operand()?;
        self.expect(&Token::Comma)?;
        let needle = self.operand()?;
        self.expect(&Token::Close)?;
        for operand in [&haystack, &needle] {
            if !matches!(operand.kind(), Some(Kind::Str)) {
                return Err("string functions take string arguments".to_owned());
            }
        }
        Ok(Filter::Text {
            function,
            haystack,
            needle,
        })
    }

    fn in_list(&mut self, operand: Operand) -> Result<Filter, String> {
        self.expect(&Token::Open)?;
        let mut list = Vec::new();
        loop {
            let item = match self.operand()? {
                Operand::Literal(value) => value,
                Operand::Property(prop) => {
                    return Err(format!(
                        "'in' lists take literals, found property {}",
                        prop.name()
                    ));
                }
            };
            list.push(match &operand {
                Operand::Property(prop) => coerce(item, *prop)?,
                Operand::Literal(_) => item,
            });
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        self.expect(&Token::Close)?;
        Ok(Filter::In { operand, list })
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some(Token::Quoted(text)) => Ok(Operand::Literal(Value::Str(text))),
            Some(Token::Unquoted(text)) => parse_unquoted(&text).map(Operand::Literal),
            Some(Token::Word(word)) => word_operand(&word),
            Some(token) => Err(format!(
                "expected a property or literal but found {}",
                token.describe()
            )),
            None => Err("unexpected end of $filter".to_owned()),
        }
    }
}

fn word_operand(word: &str) -> Result<Operand, String> {
    match word {
        "true" => Ok(Operand::Literal(Value::Bool(true))),
        "false" => Ok(Operand::Literal(Value::Bool(false))),
        "null" => Ok(Operand::Literal(Value::Null)),
        _ => Prop::from_name(word)
            .map(Operand::Property)
            .ok_or_else(|| format!("unknown property or unsupported expression '{word}'")),
    }
}

/// Joins terms with `wrap`, leaving a single term unwrapped.
fn combine(mut terms: Vec<Filter>, wrap: fn(Vec<Filter>) -> Filter) -> Filter {
    if terms.len() == 1
        && let Some(only) = terms.pop()
    {
        return only;
    }
    wrap(terms)
}

/// Builds a comparison, coercing literals to the property's type.
fn compare(op: CompareOp, left: Operand, right: Operand) -> Result<Filter, String> {
    let (left, right) = match (left, right) {
        (Operand::Property(prop), Operand::Literal(value)) => (
            Operand::Property(prop),
            Operand::Literal(coerce(value, prop)?),
        ),
        (Operand::Literal(value), Operand::Property(prop)) => (
            Operand::Literal(coerce(value, prop)?),
            Operand::Property(prop),
        ),
        (left, right) => match (left.kind(), right.kind()) {
            (Some(a), Some(b)) if a != b => {
                return Err("cannot compare values of different types".to_owned());
            }
            _ => (left, right),
        },
    };
    Ok(Filter::Compare { op, left, right })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i32, name: &str, price_cents: i64, stock: i32, discontinued: bool) -> Product {
        Product {
            id,
            name: Some(name.to_owned()),
            category: Some("Office".to_owned()),
            price_cents: Some(price_cents),
            stock: Some(stock),
            discontinued,
            modified_at: 1_704_067_200_000 + i64::from(id) * 86_400_000,
        }
    }

    fn sample() -> Vec<Product> {
        vec![
            product(1, "Desk Lamp", 1999, 10, false),
            product(2, "Fountain Pen", 4550, 0, true),
            product(3, "O'Brien's Notebook", 350, 120, false),
            product(4, "Monitor Stand", 8900, 7, false),
            Product {
                name: None,
                ..product(5, "", 100, 1, false)
            },
        ]
    }

    /// IDs of the sample rows matching `filter`.
    fn ids(filter: &str) -> Vec<i32> {
        let parsed = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        sample()
            .into_iter()
            .filter(|p| parsed.matches(p))
            .map(|p| p.id)
            .collect()
    }

    #[test]
    fn key_comparisons() {
        assert_eq!(ids("ID eq 5"), [5]);
        assert_eq!(ids("ID in (1,2,3)"), [1, 2, 3]);
        assert_eq!(ids("ID in ( 4 , 9 )"), [4]);
        assert_eq!(ids("ID ne 1"), [2, 3, 4, 5]);
        assert_eq!(ids("ID gt 3"), [4, 5]);
        assert_eq!(ids("ID ge 3"), [3, 4, 5]);
        assert_eq!(ids("ID lt 2"), [1]);
        assert_eq!(ids("ID le 2"), [1, 2]);
        assert_eq!(ids("2 ge ID"), [1, 2]);
    }

    #[test]
    fn typed_literals() {
        assert_eq!(ids("name eq 'Desk Lamp'"), [1]);
        assert_eq!(ids("name eq 'O''Brien''s Notebook'"), [3]);
        assert_eq!(ids("name gt 'N'"), [3]);
        assert_eq!(ids("price lt 20"), [1, 3, 5]);
        assert_eq!(ids("price eq 19.99"), [1]);
        assert_eq!(ids("price eq '45.50'"), [2]);
        assert_eq!(ids("stock eq 0"), [2]);
        assert_eq!(ids("discontinued eq true"), [2]);
        assert_eq!(ids("discontinued"), [2]);
        assert_eq!(ids("not discontinued and stock gt 9"), [1, 3]);
        assert_eq!(ids("modifiedAt lt 2024-01-03T00:00:00Z"), [1]);
        assert_eq!(ids("modifiedAt ge '2024-01-05T01:00:00+01:00'"), [4, 5]);
        assert_eq!(ids("name eq null"), [5]);
        assert_eq!(ids("name ne null and price ge -1"), [1, 2, 3, 4]);
    }

    #[test]
    fn null_never_orders() {
        // Row 5 has no name: ordering comparisons with null are false.
        assert_eq!(ids("name lt 'Z'"), [1, 2, 3, 4]);
    }

    #[test]
    fn boolean_logic_and_precedence() {
        assert_eq!(ids("ID eq 1 or ID eq 2 and stock gt 5"), [1]);
        assert_eq!(ids("(ID eq 1 or ID eq 2) and stock gt 5"), [1]);
        assert_eq!(ids("(ID eq 1 or ID eq 2) and (stock eq 0)"), [2]);
        assert_eq!(ids("not (ID le 3)"), [4, 5]);
        assert_eq!(ids("((ID eq 4))"), [4]);
        assert_eq!(
            ids("contains(name,'Pen') or endswith(name, 'Stand')"),
            [2, 4]
        );
        assert_eq!(ids("startswith(name,'Desk')"), [1]);
    }

    #[test]
    fn long_chains_stay_flat() {
        let chain = (1..=2000)
            .map(|id| format!("ID eq {id}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert_eq!(ids(&chain), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        for bad in [
            "",
            "ID",
            "ID eq",
            "ID eq 5 ID",
            "ID eq 'five'",
            "name eq 5",
            "discontinued eq 'yes'",
            "colour eq 'red'",
            "tolower(name) eq 'x'",
            "ID in ()",
            "ID in (1,2",
            "ID in (name)",
            "name eq 'open",
            "ID eq 1 and",
            "ID EQ 1",
            "price eq 1e999",
            "ID eq 5 # comment",
            "modifiedAt gt 2024-13-01",
            "contains(ID, '1')",
            "1 eq 'one'",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}ID eq 1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(Filter::parse(&deep).is_err());
        let nots = format!("{}discontinued", "not ".repeat(1000));
        assert!(Filter::parse(&nots).is_err());
        let fine = format!("{}ID eq 1{}", "(".repeat(10), ")".repeat(10));
        assert_eq!(ids(&fine), [1]);
    }
}
