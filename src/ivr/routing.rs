//! Routing conditions: the small expression language of a dialplan's `[[routes]] when = "..."`
//! (`age >= 65`, `segment == 'vip' and not open_complaint`, `voice == 'rejected' or watchlist`).
//!
//! A condition is parsed once when the dialplan loads (errors carry the byte offset inside the
//! expression, which the dialplan turns into `file:line:column`) and evaluated per call against
//! what the flow knows about the caller ([`Facts`]). Plain data: no I/O.
//!
//! Grammar (keywords and field names are lower case):
//! ```text
//! expr    = and ("or" and)*
//! and     = unary ("and" unary)*
//! unary   = "not" unary | primary
//! primary = "(" expr ")" | "true" | "false" | field [op literal]
//! op      = "==" | "!=" | ">=" | "<=" | ">" | "<"
//! literal = integer | 'text' | "text" | true | false
//! ```
//! A comparison with a value the flow does not know (no age on file, no voice check yet) is
//! false, whichever the operator: `age < 65` does not match a caller of unknown age.
use std::fmt;

use crate::ivr::caller::{CallerProfile, VoiceDecision};
use crate::ivr::dialplan::did_you_mean;

/// Longest condition (characters): a condition is a line, not a program.
pub const MAX_CONDITION_CHARS: usize = 500;
/// Deepest nesting of parentheses and `not`.
const MAX_DEPTH: usize = 32;

/// A fact about the call a condition can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Age in whole years (number).
    Age,
    /// The bank's segment, e.g. `'vip'` (text, compared ignoring case).
    Segment,
    /// Preferred language code, e.g. `'zh'` (text, compared ignoring case).
    Language,
    /// The customer id (text, compared exactly).
    CustomerId,
    /// The number is a known customer (flag).
    Known,
    /// An open complaint is on file (flag).
    OpenComplaint,
    /// The voiceprint decision of this call: `'accepted'`, `'rejected'`,
    /// `'not_enough_speech'`, `'not_enrolled'` (text; unknown before a check).
    Voice,
    /// The caller's number matched the fraud watchlist during this call (flag).
    Watchlist,
}

/// The shape of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Flag,
}

const FIELDS: &[(&str, Field, Kind)] = &[
    ("age", Field::Age, Kind::Number),
    ("segment", Field::Segment, Kind::Text),
    ("language", Field::Language, Kind::Text),
    ("customer_id", Field::CustomerId, Kind::Text),
    ("known", Field::Known, Kind::Flag),
    ("open_complaint", Field::OpenComplaint, Kind::Flag),
    ("voice", Field::Voice, Kind::Text),
    ("watchlist", Field::Watchlist, Kind::Flag),
];

/// The values `voice` can be compared with.
const VOICE_VALUES: &[&str] = &["accepted", "rejected", "not_enough_speech", "not_enrolled"];

impl Field {
    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or("?", |(n, _, _)| n)
    }
}

/// The name a voice decision has in conditions.
pub fn voice_name(decision: VoiceDecision) -> &'static str {
    match decision {
        VoiceDecision::Accepted => "accepted",
        VoiceDecision::Rejected => "rejected",
        VoiceDecision::NotEnoughSpeech => "not_enough_speech",
        VoiceDecision::NotEnrolled => "not_enrolled",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Ge => ">=",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Lt => "<",
        }
    }
}

/// A literal a field is compared with (already checked against the field's kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Number(u32),
    /// Lower-cased for `segment`, `language` and `voice`.
    Text(String),
    Flag(bool),
}

/// A parsed condition tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Const(bool),
    /// A flag field on its own (`open_complaint`, `watchlist`, `known`).
    Flag(Field),
    Compare {
        field: Field,
        op: CmpOp,
        value: Value,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A problem in a condition, at a byte offset inside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    /// Byte offset in the condition text where the problem starts.
    pub offset: usize,
    pub message: String,
}

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub profile: &'a CallerProfile,
    /// The voiceprint decision of this call, once a check ran.
    pub voice: Option<VoiceDecision>,
    /// Whether a watchlist hit was reported during this call.
    pub watchlist: bool,
}

/// A parsed condition with its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    /// Parses and type-checks `text`.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        if text.chars().count() > MAX_CONDITION_CHARS {
            return Err(ConditionError {
                offset: 0,
                message: format!("a condition is at most {MAX_CONDITION_CHARS} characters"),
            });
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            end: text.len(),
            depth: 0,
        };
        let expr = parser.expr()?;
        if let Some(token) = parser.peek() {
            return Err(ConditionError {
                offset: token.offset,
                message: format!(
                    "unexpected {} after a complete condition (join conditions with 'and' / 'or')",
                    token.tok
                ),
            });
        }
        Ok(Condition {
            source: text.to_string(),
            expr,
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the condition holds for `facts`.
    pub fn eval(&self, facts: &Facts<'_>) -> bool {
        eval(&self.expr, facts)
    }

    /// Whether the condition reads `field` (the flow re-checks routes that read `voice` or
    /// `watchlist` when those change).
    pub fn uses(&self, field: Field) -> bool {
        uses(&self.expr, field)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn uses(expr: &Expr, field: Field) -> bool {
    match expr {
        Expr::Const(_) => false,
        Expr::Flag(f) | Expr::Compare { field: f, .. } => *f == field,
        Expr::Not(e) => uses(e, field),
        Expr::And(a, b) | Expr::Or(a, b) => uses(a, field) || uses(b, field),
    }
}

fn eval(expr: &Expr, facts: &Facts<'_>) -> bool {
    match expr {
        Expr::Const(b) => *b,
        Expr::Flag(field) => flag(*field, facts),
        Expr::Compare { field, op, value } => compare(*field, *op, value, facts),
        Expr::Not(e) => !eval(e, facts),
        Expr::And(a, b) => eval(a, facts) && eval(b, facts),
        Expr::Or(a, b) => eval(a, facts) || eval(b, facts),
    }
}

fn flag(field: Field, facts: &Facts<'_>) -> bool {
    match field {
        Field::Known => facts.profile.is_known(),
        Field::OpenComplaint => facts.profile.open_complaint,
        Field::Watchlist => facts.watchlist,
        _ => false,
    }
}

fn compare(field: Field, op: CmpOp, value: &Value, facts: &Facts<'_>) -> bool {
    let p = facts.profile;
    match value {
        Value::Number(n) => {
            let Some(age) = (field == Field::Age).then_some(p.age).flatten() else {
                return false;
            };
            match op {
                CmpOp::Eq => age == *n,
                CmpOp::Ne => age != *n,
                CmpOp::Ge => age >= *n,
                CmpOp::Le => age <= *n,
                CmpOp::Gt => age > *n,
                CmpOp::Lt => age < *n,
            }
        }
        Value::Text(t) => {
            let actual: Option<String> = match field {
                Field::Segment => p.segment.as_deref().map(str::to_lowercase),
                Field::Language => p.language.as_deref().map(str::to_lowercase),
                Field::CustomerId => p.customer_id.clone(),
                Field::Voice => facts.voice.map(|v| voice_name(v).to_string()),
                _ => None,
            };
            match (actual, op) {
                (Some(a), CmpOp::Eq) => a == *t,
                (Some(a), CmpOp::Ne) => a != *t,
                _ => false,
            }
        }
        Value::Flag(b) => {
            let actual = flag(field, facts);
            match op {
                CmpOp::Eq => actual == *b,
                CmpOp::Ne => actual != *b,
                _ => false,
            }
        }
    }
}

// --- tokens ----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Number(String),
    Text(String),
    Op(CmpOp),
    Open,
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{}'", short(s)),
            Tok::Number(s) => write!(f, "number {}", short(s)),
            Tok::Text(s) => write!(f, "text '{}'", short(s)),
            Tok::Op(op) => write!(f, "'{}'", op.symbol()),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
        }
    }
}

fn short(s: &str) -> String {
    crate::ivr::dialplan::printable(s)
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    offset: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ConditionError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(offset, c)) = chars.peek() {
        let err = |message: String| ConditionError { offset, message };
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let tok = match c {
            '(' => {
                chars.next();
                Tok::Open
            }
            ')' => {
                chars.next();
                Tok::Close
            }
            '\'' | '"' => {
                chars.next();
                let mut value = String::new();
                let mut closed = false;
                for (_, ch) in chars.by_ref() {
                    if ch == c {
                        closed = true;
                        break;
                    }
                    value.push(ch);
                }
                if !closed {
                    return Err(err(format!("text starting here has no closing {c}")));
                }
                Tok::Text(value)
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let eq = chars.peek().is_some_and(|&(_, n)| n == '=');
                if eq {
                    chars.next();
                }
                match (c, eq) {
                    ('=', true) => Tok::Op(CmpOp::Eq),
                    ('!', true) => Tok::Op(CmpOp::Ne),
                    ('>', true) => Tok::Op(CmpOp::Ge),
                    ('<', true) => Tok::Op(CmpOp::Le),
                    ('>', false) => Tok::Op(CmpOp::Gt),
                    ('<', false) => Tok::Op(CmpOp::Lt),
                    ('=', false) => return Err(err("write '==' to compare (not '=')".into())),
                    _ => return Err(err("write 'not' to negate, or '!=' for 'differs'".into())),
                }
            }
            c if c.is_ascii_digit() => {
                let mut digits = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_alphanumeric() && d != '_' {
                        break;
                    }
                    digits.push(d);
                    chars.next();
                }
                Tok::Number(digits)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut word = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_alphanumeric() && d != '_' {
                        break;
                    }
                    word.push(d);
                    chars.next();
                }
                Tok::Ident(word)
            }
            '&' | '|' => {
                return Err(err(format!(
                    "write '{}' instead of '{c}'",
                    if c == '&' { "and" } else { "or" }
                )))
            }
            other => {
                return Err(err(format!(
                    "unexpected character '{}'",
                    other.escape_default()
                )))
            }
        };
        out.push(Token { tok, offset });
    }
    Ok(out)
}

// --- parser ----------------------------------------------------------------------------------

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    /// Byte length of the text: where "unexpected end" errors point.
    end: usize,
    depth: usize,
}

fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(n, _, _)| *n)
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&'t Token> {
        let t = self.tokens.get(self.pos);
        if t.is_some() {
            self.pos = self.pos.saturating_add(1);
        }
        t
    }

    fn at_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Ident(w), .. }) if w == word)
    }

    fn end_error(&self, expected: &str) -> ConditionError {
        ConditionError {
            offset: self.end,
            message: format!("the condition ends where {expected} is expected"),
        }
    }

    fn expr(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.and()?;
        while self.at_keyword("or") {
            self.next();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.unary()?;
        while self.at_keyword("and") {
            self.next();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn deeper(&mut self, offset: usize) -> Result<(), ConditionError> {
        self.depth = self.depth.saturating_add(1);
        if self.depth > MAX_DEPTH {
            return Err(ConditionError {
                offset,
                message: format!("nested more than {MAX_DEPTH} levels deep"),
            });
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.at_keyword("not") {
            let end = self.end;
            let offset = self.next().map_or(end, |t| t.offset);
            self.deeper(offset)?;
            let inner = self.unary()?;
            self.depth = self.depth.saturating_sub(1);
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ConditionError> {
        let Some(token) = self.next().cloned() else {
            return Err(self.end_error("a field such as age, segment or open_complaint"));
        };
        match token.tok {
            Tok::Open => {
                self.deeper(token.offset)?;
                let inner = self.expr()?;
                self.depth = self.depth.saturating_sub(1);
                match self.next() {
                    Some(Token { tok: Tok::Close, .. }) => Ok(inner),
                    Some(other) => Err(ConditionError {
                        offset: other.offset,
                        message: format!("expected ')' to close the '(', found {}", other.tok),
                    }),
                    None => Err(ConditionError {
                        offset: token.offset,
                        message: "this '(' is never closed".to_string(),
                    }),
                }
            }
            Tok::Ident(word) if word == "true" || word == "false" => {
                Ok(Expr::Const(word == "true"))
            }
            Tok::Ident(word) if matches!(word.as_str(), "and" | "or" | "not") => {
                Err(ConditionError {
                    offset: token.offset,
                    message: format!("'{word}' needs a condition before it"),
                })
            }
            Tok::Ident(word) => self.field_term(&word, token.offset),
            Tok::Number(_) | Tok::Text(_) => Err(ConditionError {
                offset: token.offset,
                message: format!(
                    "a condition starts with a field, found {}: write the field first, e.g. age >= 65",
                    token.tok
                ),
            }),
            Tok::Op(_) | Tok::Close => Err(ConditionError {
                offset: token.offset,
                message: format!(
                    "expected a field such as age, segment or open_complaint, found {}",
                    token.tok
                ),
            }),
        }
    }

    fn field_term(&mut self, word: &str, offset: usize) -> Result<Expr, ConditionError> {
        let Some(&(_, field, kind)) = FIELDS.iter().find(|(n, _, _)| *n == word) else {
            let hint = match did_you_mean(word, field_names()) {
                Some(s) => format!(" (did you mean '{s}'?)"),
                None => format!(
                    "; fields are {}",
                    field_names().collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(ConditionError {
                offset,
                message: format!("unknown field '{}'{hint}", short(word)),
            });
        };
        let op = match self.peek() {
            Some(Token {
                tok: Tok::Op(op), ..
            }) => *op,
            _ if kind == Kind::Flag => return Ok(Expr::Flag(field)),
            _ => {
                let example = match kind {
                    Kind::Number => format!("{word} >= 65"),
                    _ if field == Field::Voice => "voice == 'rejected'".to_string(),
                    _ => format!("{word} == 'vip'"),
                };
                return Err(ConditionError {
                    offset,
                    message: format!("'{word}' needs a comparison, e.g. {example}"),
                });
            }
        };
        let end = self.end;
        let op_offset = self.next().map_or(end, |t| t.offset);
        let Some(literal) = self.next().cloned() else {
            return Err(self.end_error("a value to compare with"));
        };
        let value = match (kind, &literal.tok) {
            (Kind::Number, Tok::Number(digits)) => match digits.parse::<u32>() {
                Ok(n) => Value::Number(n),
                Err(_) => {
                    return Err(ConditionError {
                        offset: literal.offset,
                        message: format!("'{}' is not a whole number", short(digits)),
                    })
                }
            },
            (Kind::Text, Tok::Text(text)) => {
                let text = if field == Field::CustomerId {
                    text.clone()
                } else {
                    text.to_lowercase()
                };
                if field == Field::Voice && !VOICE_VALUES.contains(&text.as_str()) {
                    let hint = did_you_mean(&text, VOICE_VALUES.iter().copied())
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    return Err(ConditionError {
                        offset: literal.offset,
                        message: format!(
                            "unknown voice decision '{}'{hint}: use one of {}",
                            short(&text),
                            VOICE_VALUES.join(", ")
                        ),
                    });
                }
                Value::Text(text)
            }
            (Kind::Flag, Tok::Ident(w)) if w == "true" || w == "false" => Value::Flag(w == "true"),
            (_, other) => {
                let expected = match kind {
                    Kind::Number => "a whole number, e.g. 65",
                    Kind::Text => "a text in quotes, e.g. 'vip'",
                    Kind::Flag => "true or false",
                };
                return Err(ConditionError {
                    offset: literal.offset,
                    message: format!("'{word}' is compared with {expected}, found {other}"),
                });
            }
        };
        let ordering = matches!(op, CmpOp::Ge | CmpOp::Le | CmpOp::Gt | CmpOp::Lt);
        if ordering && kind != Kind::Number {
            return Err(ConditionError {
                offset: op_offset,
                message: format!(
                    "'{}' only compares numbers; '{word}' takes == or !=",
                    op.symbol()
                ),
            });
        }
        Ok(Expr::Compare { field, op, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> CallerProfile {
        CallerProfile {
            customer_id: Some("C-17".into()),
            name: Some("Ada".into()),
            age: Some(70),
            segment: Some("vip".into()),
            language: Some("en".into()),
            open_complaint: false,
        }
    }

    fn holds(text: &str, profile: &CallerProfile, voice: Option<VoiceDecision>, wl: bool) -> bool {
        let c = Condition::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        c.eval(&Facts {
            profile,
            voice,
            watchlist: wl,
        })
    }

    fn error(text: &str) -> ConditionError {
        match Condition::parse(text) {
            Err(e) => e,
            Ok(c) => panic!("{text} parsed as {:?}", c.expr()),
        }
    }

    #[test]
    fn comparisons_and_flags_evaluate_against_the_profile() {
        let p = profile();
        assert!(holds("age >= 65", &p, None, false));
        assert!(!holds("age < 65", &p, None, false));
        assert!(holds(
            "age > 69 and age <= 70 and age != 3 and age == 70",
            &p,
            None,
            false
        ));
        assert!(
            holds("segment == 'VIP'", &p, None, false),
            "case-insensitive"
        );
        assert!(holds("segment != \"standard\"", &p, None, false));
        assert!(holds("customer_id == 'C-17' and known", &p, None, false));
        assert!(
            !holds("customer_id == 'c-17'", &p, None, false),
            "ids are exact"
        );
        assert!(holds("language == 'en'", &p, None, false));
        assert!(!holds("open_complaint", &p, None, false));
        assert!(holds("open_complaint == false", &p, None, false));
        assert!(holds("not open_complaint", &p, None, false));
        assert!(holds("true", &p, None, false));
        assert!(!holds("false", &p, None, false));
    }

    #[test]
    fn unknown_values_never_match_a_comparison() {
        let p = CallerProfile::default();
        assert!(!holds("age >= 65", &p, None, false));
        assert!(!holds("age < 65", &p, None, false));
        assert!(!holds("segment != 'vip'", &p, None, false));
        assert!(holds("not (segment == 'vip')", &p, None, false));
        assert!(!holds("known", &p, None, false));
        assert!(!holds("voice == 'rejected'", &p, None, false));
        assert!(!holds("voice != 'rejected'", &p, None, false));
    }

    #[test]
    fn voice_and_watchlist_come_from_the_call() {
        let p = profile();
        assert!(holds(
            "voice == 'rejected'",
            &p,
            Some(VoiceDecision::Rejected),
            false
        ));
        assert!(holds(
            "voice == 'not_enough_speech'",
            &p,
            Some(VoiceDecision::NotEnoughSpeech),
            false
        ));
        assert!(!holds(
            "voice == 'accepted'",
            &p,
            Some(VoiceDecision::Rejected),
            false
        ));
        assert!(holds("watchlist", &p, None, true));
        assert!(!holds("watchlist", &p, None, false));
        let c = Condition::parse("voice == 'rejected' or watchlist").unwrap();
        assert!(c.uses(Field::Voice) && c.uses(Field::Watchlist) && !c.uses(Field::Age));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let p = profile();
        // or binds looser than and: true or (false and false) = true.
        assert!(holds(
            "age >= 65 or segment == 'x' and known == false",
            &p,
            None,
            false
        ));
        // (true or false) and false = false.
        assert!(!holds(
            "(age >= 65 or segment == 'x') and known == false",
            &p,
            None,
            false
        ));
        assert!(!holds("not age >= 65 or false", &p, None, false));
        assert_eq!(
            Condition::parse("not known and watchlist").unwrap().expr(),
            &Expr::And(
                Box::new(Expr::Not(Box::new(Expr::Flag(Field::Known)))),
                Box::new(Expr::Flag(Field::Watchlist))
            )
        );
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let e = error("agee >= 65");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("did you mean 'age'"), "{e}");
        let e = error("age >= 'old'");
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("whole number"), "{e}");
        let e = error("segment >= 'vip'");
        assert_eq!(e.offset, 8);
        assert!(e.message.contains("only compares numbers"), "{e}");
        let e = error("age = 65");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("'=='"), "{e}");
        let e = error("age >= 65 and");
        assert_eq!(e.offset, 13);
        let e = error("(age >= 65");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("never closed"), "{e}");
        let e = error("segment == 'vip");
        assert_eq!(e.offset, 11);
        let e = error("voice == 'rejectd'");
        assert!(e.message.contains("did you mean 'rejected'"), "{e}");
        let e = error("age >= 65 known");
        assert_eq!(e.offset, 10);
        let e = error("age");
        assert!(e.message.contains("age >= 65"), "{e}");
        let e = error("65 <= age");
        assert_eq!(e.offset, 0);
        let e = error("age >= 99999999999");
        assert!(e.message.contains("whole number"), "{e}");
        let e = error("known && watchlist");
        assert!(e.message.contains("'and'"), "{e}");
        let e = error("");
        assert_eq!(e.offset, 0);
        let e = error("ü == 1");
        assert_eq!(e.offset, 0);
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = format!("{}known{}", "(".repeat(40), ")".repeat(40));
        assert!(error(&deep).message.contains("nested"));
        let nots = format!("{}known", "not ".repeat(40));
        assert!(error(&nots).message.contains("nested"));
        let ok = format!("{}known{}", "(".repeat(10), ")".repeat(10));
        assert!(Condition::parse(&ok).is_ok());
        let long = format!("known{}", " or known".repeat(100));
        assert!(error(&long).message.contains("at most"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn random_text_never_panics(text in "\\PC{0,120}") {
                if let Err(e) = Condition::parse(&text) {
                    prop_assert!(e.offset <= text.len());
                }
            }

            #[test]
            fn exprish_text_never_panics_and_errors_point_into_it(
                text in "(age|segment|voice|known|watchlist|open_complaint|and|or|not|true|[()<>=! '\"]|[0-9]{1,12}|'vip'| ){0,30}"
            ) {
                match Condition::parse(&text) {
                    Ok(c) => {
                        let p = profile();
                        let _ = c.eval(&Facts { profile: &p, voice: None, watchlist: true });
                    }
                    Err(e) => prop_assert!(e.offset <= text.len() && text.is_char_boundary(e.offset)),
                }
            }
        }
    }
}
