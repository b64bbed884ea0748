//! The query language of Bitbucket Cloud collections, as far as the simulator supports it:
//! partial responses (`fields=`), filtering (`q=`) and sorting (`sort=`) — API-FACTS §A.6–A.7.
//! Pure; no I/O. Errors are user-facing messages for a 400 with the Cloud error shape.

use std::cmp::Ordering;

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::timestamp;

/// A parsed `fields=` value.
#[derive(Debug, PartialEq)]
pub(crate) struct Fields {
    select: Vec<Vec<String>>,
    add: Vec<Vec<String>>,
    remove: Vec<Vec<String>>,
}

impl Fields {
    /// Parses the comma-separated list. A bare path selects (and switches to select-only
    /// mode), `+path` adds, `-path` removes; `*` matches every key at its level.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut fields = Self {
            select: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        };
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (list, path) = match item.as_bytes()[0] {
                b'+' => (&mut fields.add, &item[1..]),
                b'-' => (&mut fields.remove, &item[1..]),
                _ => (&mut fields.select, item),
            };
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!("Invalid field specification: '{item}'"));
            }
            list.push(segments);
        }
        Ok(fields)
    }

    /// Applies the specification to a whole response (envelope included).
    pub(crate) fn apply(&self, full: Value) -> Value {
        if !self.select.is_empty() {
            let wanted: Vec<&[String]> = self
                .select
                .iter()
                .chain(&self.add)
                .map(Vec::as_slice)
                .collect();
            let mut picked = pick(&full, &wanted).unwrap_or(Value::Object(Map::new()));
            for path in &self.remove {
                remove(&mut picked, path);
            }
            return picked;
        }
        let mut result = full.clone();
        for path in &self.remove {
            remove(&mut result, path);
        }
        // `+` re-adds what a wildcard removal took away (`-*,+values.slug`); the simulator has
        // no fields that are hidden by default.
        for path in &self.add {
            if let Some(extra) = pick(&full, &[path.as_slice()]) {
                merge(&mut result, extra);
            }
        }
        result
    }
}

/// The parts of `value` reached by `paths`; arrays apply the paths to each element.
fn pick(value: &Value, paths: &[&[String]]) -> Option<Value> {
    if paths.iter().any(|p| p.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Array(items) => Some(Value::Array(
            items.iter().filter_map(|item| pick(item, paths)).collect(),
        )),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, child) in map {
                let rest: Vec<&[String]> = paths
                    .iter()
                    .filter(|p| p[0] == *key || p[0] == "*")
                    .map(|p| &p[1..])
                    .collect();
                if !rest.is_empty()
                    && let Some(picked) = pick(child, &rest)
                {
                    out.insert(key.clone(), picked);
                }
            }
            Some(Value::Object(out))
        }
        // `values.mainbranch.name` on an empty repository still says `"mainbranch": null`.
        Value::Null => Some(Value::Null),
        _ => None,
    }
}

fn remove(value: &mut Value, path: &[String]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| remove(item, path)),
        Value::Object(map) => {
            let (head, rest) = (&path[0], &path[1..]);
            if rest.is_empty() {
                if head == "*" {
                    map.clear();
                } else {
                    map.remove(head);
                }
            } else {
                for (key, child) in map.iter_mut() {
                    if key == head || head == "*" {
                        remove(child, rest);
                    }
                }
            }
        }
        _ => {}
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        a.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (existing, value) in a.iter_mut().zip(b) {
                merge(existing, value);
            }
        }
        (slot, value) => *slot = value,
    }
}

/// A parsed `q=` filter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Compare {
        field: String,
        op: Op,
        value: Literal,
    },
    In {
        field: String,
        negated: bool,
        values: Vec<Literal>,
    },
}

/// Comparison operators of the `q` language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
    Gt,
    Ge,
    Lt,
    Le,
}

/// Literal values of the `q` language.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
    Time(Timestamp),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Op(Op),
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '"' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string".to_owned()),
                        Some('"') => break,
                        Some('\\') => {
                            value.extend(chars.get(i + 1));
                            i += 2;
                        }
                        Some(other) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                i += 1;
                tokens.push(Token::Text(value));
            }
            '=' | '~' => {
                tokens.push(Token::Op(if c == '=' { Op::Eq } else { Op::Contains }));
                i += 1;
            }
            '!' | '>' | '<' => {
                let next = chars.get(i + 1).copied();
                let (op, width) = match (c, next) {
                    ('!', Some('=')) => (Op::Ne, 2),
                    ('!', Some('~')) => (Op::NotContains, 2),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('>', _) => (Op::Gt, 1),
                    ('<', _) => (Op::Lt, 1),
                    _ => return Err(format!("unexpected '{c}'")),
                };
                tokens.push(Token::Op(op));
                i += width;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | ',' | '=' | '!' | '~' | '"')
                    // `>`/`<` end a word unless it is a datetime offset such as `+01:00`.
                    && !matches!(chars[i], '>' | '<')
                {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }
    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expression(&mut self) -> Result<Filter, String> {
        let mut left = self.conjunction()?;
        while self.keyword("OR") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.conjunction()?));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Filter, String> {
        let mut left = self.primary()?;
        while self.keyword("AND") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Filter, String> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.expression()?;
            if self.next() != Some(Token::Close) {
                return Err("expected ')'".to_owned());
            }
            return Ok(inner);
        }
        let field = match self.next() {
            Some(Token::Word(word)) if word.starts_with(|c: char| c.is_ascii_alphabetic()) => word,
            other => return Err(format!("expected a field name, found {other:?}")),
        };
        let negated = self.keyword("NOT");
        if negated {
            self.at += 1;
        }
        if self.keyword("IN") {
            self.at += 1;
            return Ok(Filter::In {
                field,
                negated,
                values: self.list()?,
            });
        }
        if negated {
            return Err("expected IN after NOT".to_owned());
        }
        let Some(Token::Op(op)) = self.next() else {
            return Err(format!("expected an operator after '{field}'"));
        };
        Ok(Filter::Compare {
            field,
            op,
            value: self.literal()?,
        })
    }

    fn list(&mut self) -> Result<Vec<Literal>, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected '(' after IN".to_owned());
        }
        let mut values = vec![self.literal()?];
        loop {
            match self.next() {
                Some(Token::Comma) => values.push(self.literal()?),
                Some(Token::Close) => return Ok(values),
                _ => return Err("expected ',' or ')' in list".to_owned()),
            }
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Token::Text(text)) => Ok(Literal::Text(text)),
            Some(Token::Word(word)) => match word.as_str() {
                "true" => Ok(Literal::Bool(true)),
                "false" => Ok(Literal::Bool(false)),
                "null" => Ok(Literal::Null),
                _ => {
                    if let Some(time) = word
                        .contains('-')
                        .then(|| timestamp::parse(&word))
                        .flatten()
                    {
                        Ok(Literal::Time(time))
                    } else if let Ok(number) = word.parse::<f64>() {
                        Ok(Literal::Number(number))
                    } else {
                        Err(format!("'{word}' is not a value (quote strings)"))
                    }
                }
            },
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

impl Filter {
    /// Parses a `q` expression.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser {
            tokens: tokenize(text)?,
            at: 0,
        };
        let filter = parser.expression()?;
        if parser.at < parser.tokens.len() {
            return Err(format!("unexpected {:?}", parser.tokens[parser.at]));
        }
        Ok(filter)
    }

    /// Every field name the filter uses (checked against the object's fields up front, so an
    /// unknown field is a 400 even when nothing would match).
    pub(crate) fn fields(&self) -> Vec<&str> {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                let mut all = a.fields();
                all.extend(b.fields());
                all
            }
            Self::Compare { field, .. } | Self::In { field, .. } => vec![field.as_str()],
        }
    }

    /// Evaluates the filter; `lookup` yields a field's value by dotted path.
    pub(crate) fn matches(&self, lookup: &impl Fn(&str) -> Value) -> bool {
        match self {
            Self::And(a, b) => a.matches(lookup) && b.matches(lookup),
            Self::Or(a, b) => a.matches(lookup) || b.matches(lookup),
            Self::Compare { field, op, value } => compare(&lookup(field), *op, value),
            Self::In {
                field,
                negated,
                values,
            } => {
                let actual = lookup(field);
                values.iter().any(|v| compare(&actual, Op::Eq, v)) != *negated
            }
        }
    }
}

fn compare(actual: &Value, op: Op, expected: &Literal) -> bool {
    let ordering = match (actual, expected) {
        (Value::Null, Literal::Null) => Some(Ordering::Equal),
        (_, Literal::Null) | (Value::Null, _) => None,
        (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (Value::Number(a), Literal::Number(b)) => a.as_f64().and_then(|a| a.partial_cmp(b)),
        (Value::String(a), Literal::Time(b)) => timestamp::parse(a).map(|a| a.cmp(b)),
        (Value::String(a), Literal::Text(b)) => {
            match op {
                Op::Contains => return a.to_lowercase().contains(&b.to_lowercase()),
                Op::NotContains => return !a.to_lowercase().contains(&b.to_lowercase()),
                _ => {}
            }
            // Quoted datetimes compare as times.
            match (timestamp::parse(a), timestamp::parse(b)) {
                (Some(a), Some(b)) => Some(a.cmp(&b)),
                _ => Some(a.as_str().cmp(b.as_str())),
            }
        }
        _ => None,
    };
    let Some(ordering) = ordering else {
        return matches!(op, Op::Ne | Op::NotContains);
    };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Contains => ordering == Ordering::Equal,
        Op::NotContains => ordering != Ordering::Equal,
    }
}

/// A parsed `sort=`: one field, `-` for descending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sort {
    pub field: String,
    pub descending: bool,
}

impl Sort {
    pub(crate) fn parse(text: &str) -> Self {
        let text = text.trim();
        match text.strip_prefix('-') {
            Some(field) => Self {
                field: field.to_owned(),
                descending: true,
            },
            None => Self {
                field: text.to_owned(),
                descending: false,
            },
        }
    }
}

/// Orders two field values: times chronologically, numbers numerically, the rest as text.
pub(crate) fn order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => match (timestamp::parse(a), timestamp::parse(b)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => a.cmp(b),
        },
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn page() -> Value {
        json!({
            "pagelen": 10, "next": "n",
            "values": [
                {"slug": "a", "mainbranch": null, "links": {"clone": [1], "html": {"href": "h"}}},
                {"slug": "b", "mainbranch": {"name": "main", "type": "branch"}, "links": {"clone": [2], "html": {"href": "h"}}}
            ]
        })
    }

    #[test]
    fn select_only_fields_keep_exactly_the_named_paths_including_the_envelope() {
        let fields =
            Fields::parse("next,values.slug,values.links.clone,values.mainbranch.name").unwrap();
        assert_eq!(
            fields.apply(page()),
            json!({"next": "n", "values": [
                {"slug": "a", "mainbranch": null, "links": {"clone": [1]}},
                {"slug": "b", "mainbranch": {"name": "main"}, "links": {"clone": [2]}}
            ]})
        );
    }

    #[test]
    fn removing_fields_keeps_the_rest_and_plus_re_adds_after_a_wildcard() {
        let fields = Fields::parse("-values.links").unwrap();
        let trimmed = fields.apply(page());
        assert!(trimmed["values"][0].get("links").is_none());
        assert_eq!(trimmed["pagelen"], 10);
        let fields = Fields::parse("-*,+values.slug").unwrap();
        assert_eq!(
            fields.apply(page()),
            json!({"values": [{"slug": "a"}, {"slug": "b"}]})
        );
    }

    fn repo(key: &str, updated: &str) -> impl Fn(&str) -> Value {
        let key = key.to_owned();
        let updated = updated.to_owned();
        move |field: &str| match field {
            "project.key" => json!(key),
            "updated_on" => json!(updated),
            _ => Value::Null,
        }
    }

    #[test]
    fn project_and_date_filters_combine_with_and() {
        let filter = Filter::parse(
            r#"project.key IN ("API","WEB") AND updated_on > 2026-01-01T00:00:00+00:00"#,
        )
        .unwrap();
        assert!(filter.matches(&repo("API", "2026-02-01T00:00:00.000000+00:00")));
        assert!(!filter.matches(&repo("OPS", "2026-02-01T00:00:00.000000+00:00")));
        assert!(!filter.matches(&repo("WEB", "2025-12-31T23:59:59.000000+00:00")));
        let filter = Filter::parse(r#"project.key = "OPS" OR (project.key != "API")"#).unwrap();
        assert!(filter.matches(&repo("WEB", "")));
        assert_eq!(filter.fields(), vec!["project.key", "project.key"]);
    }

    #[test]
    fn malformed_filters_are_rejected() {
        for bad in [
            r#"project.key = "API"#,
            "project.key =",
            "= \"x\"",
            "slug ~ unquoted",
            "(slug = \"a\"",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
