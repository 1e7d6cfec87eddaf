//! Campaign files (`campaigns/<name>.toml`): who to call, with what message, when, how often.
//!
//! Like dialplans, a campaign file is validated completely in one pass and every problem is
//! reported as `file:line:column` (a holidays file's problems point into that file). TOML
//! syntax errors are reported first; the campaign checks run once the file parses. The format
//! is documented in `docs/campaigns.md`.
use std::collections::BTreeSet;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate, NaiveTime, Weekday, WeekdaySet};
use chrono_tz::Tz;
use toml::de::{DeTable, DeValue};

use crate::tomlcheck::{Diagnostics, Item, Key, Span, ValueReader};

use crate::dialer::contacts::{normalize_phone, parse_iso_date, ImportOptions};
use crate::dialer::policy::{
    fmt_duration, parse_duration, CallingWindow, CampaignRules, ContactCounting, FatigueRule,
    PolicyError, RetryOutcome, RetryRules, DEFAULT_FINISH_MARGIN,
};
use crate::ivr::dialplan::{did_you_mean, printable, prompt_name_problem};
use crate::ivr::dialplan::{normalize_dtmf, Diagnostic, Severity};

pub const DEFAULT_CONFIRM_KEY: char = '1';
pub const DEFAULT_OPT_OUT_KEY: char = '9';
pub const DEFAULT_AGENT_KEY: char = '0';
/// Accepted `max_concurrent` range.
pub const MAX_CONCURRENT_RANGE: (i64, i64) = (1, 256);
/// Accepted `calls_per_second` range.
pub const CALLS_PER_SECOND_RANGE: (f64, f64) = (0.01, 50.0);
/// Accepted `max_attempts` range.
pub const MAX_ATTEMPTS_RANGE: (i64, i64) = (1, 20);
/// Accepted `max_retries` range.
pub const MAX_RETRIES_RANGE: (i64, i64) = (0, 10);
/// Accepted fatigue `max_contacts` range.
pub const MAX_CONTACTS_RANGE: (i64, i64) = (1, 100);
/// Largest campaign or holidays file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest campaign id, trunk, dialplan or prompt name.
const MAX_NAME_LEN: usize = 64;

fn retry_delay_range() -> (Duration, Duration) {
    (Duration::minutes(1), Duration::days(30))
}
fn finish_margin_range() -> (Duration, Duration) {
    (Duration::zero(), Duration::hours(2))
}
fn fatigue_window_range() -> (Duration, Duration) {
    (Duration::hours(1), Duration::days(365))
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("cannot read campaign {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every diagnostic found (errors and warnings), ordered by file and position.
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_diagnostics(diags: &[Diagnostic]) -> String {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let mut out = format!(
        "invalid campaign: {errors} error{}",
        if errors == 1 { "" } else { "s" }
    );
    for d in diags {
        out.push('\n');
        out.push_str(&d.to_string());
    }
    out
}

/// What the callee hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A dialplan menu (`dialplans/<name>.toml`) runs the call.
    Dialplan { name: String },
    /// Recorded prompts played back to back; the template is what text-to-speech will say
    /// once it is available (the prompts are played until then).
    Recorded {
        prompts: Vec<String>,
        template: Option<Template>,
    },
}

/// A message text with `{field}` placeholders filled from the contact's CSV columns.
/// `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses a template; on error, the byte offset in `text` and what is wrong.
    pub fn parse(text: &str) -> Result<Template, (usize, String)> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err((
                        i,
                        "'}' without '{' (write '}}' for a literal brace)".to_string(),
                    ))
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, n) in chars.by_ref() {
                        if n == '}' {
                            closed = true;
                            break;
                        }
                        name.push(n);
                    }
                    if !closed {
                        return Err((
                            i,
                            "'{' is not closed (write '{{' for a literal brace)".to_string(),
                        ));
                    }
                    if let Some(problem) = field_name_problem(&name) {
                        return Err((i, problem));
                    }
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(TemplatePart::Field(name));
                }
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Text(literal));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn parts(&self) -> &[TemplatePart] {
        &self.parts
    }

    /// The field names used, each once, in order of first use.
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for part in &self.parts {
            if let TemplatePart::Field(name) = part {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// Fills the placeholders; `Err(name)` for the first field `lookup` does not know.
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut out = String::with_capacity(self.text.len());
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Field(name) => {
                    out.push_str(lookup(name).ok_or_else(|| name.clone())?)
                }
            }
        }
        Ok(out)
    }
}

fn field_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("'{}' has no field name; write '{name}' with a CSV column name".to_string());
    }
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 64
    {
        return Some(format!(
            "invalid field name '{}': use a CSV column name of letters, digits and '_' \
             (not starting with a digit)",
            printable(name)
        ));
    }
    None
}

/// The keys a callee can press during a recorded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    pub confirm: Option<char>,
    pub opt_out: char,
    pub agent: Option<char>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            confirm: Some(DEFAULT_CONFIRM_KEY),
            opt_out: DEFAULT_OPT_OUT_KEY,
            agent: Some(DEFAULT_AGENT_KEY),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    pub max_concurrent: u32,
    pub calls_per_second: f64,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            max_concurrent: 1,
            calls_per_second: 1.0,
        }
    }
}

/// Numbers and customer ids this campaign never calls (besides the global opt-out list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoNotCall {
    /// E.164.
    pub numbers: BTreeSet<String>,
    pub customers: BTreeSet<String>,
}

/// What to do when an answering machine picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineAction {
    /// Hang up and retry under the `machine` retry rule. The default: a voicemail may be
    /// heard by someone other than the customer.
    #[default]
    Hangup,
    /// Wait for the beep (or silence) and play the message; the contact is then completed.
    LeaveMessage,
}

/// A validated campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Stored with every attempt; defaults to the file name.
    pub id: String,
    pub description: String,
    /// The SIP trunk's name in the configuration.
    pub trunk: String,
    /// E.164.
    pub caller_id: String,
    pub message: Message,
    pub keys: Keys,
    pub window: CallingWindow,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub pacing: Pacing,
    pub retry: RetryRules,
    /// The global rule, or the campaign's stricter one.
    pub fatigue: FatigueRule,
    pub answering_machine: MachineAction,
    pub require_consent: bool,
    /// Time zone for contacts whose CSV row has none.
    pub default_timezone: Option<Tz>,
    /// The contacts CSV, resolved against the campaign file's folder.
    pub contacts: PathBuf,
    /// This campaign's own do-not-call list (`do_not_call = "file.txt"`).
    pub do_not_call: DoNotCall,
    /// The language the template is spoken in (a voice in `[speech] voices`).
    pub language: String,
    /// The campaign file itself.
    pub file: PathBuf,
}

impl Campaign {
    /// Reads and validates a campaign file. Warnings come back with the campaign; any error
    /// makes it [`CampaignError::Invalid`] with every diagnostic found.
    pub fn load(
        path: &Path,
        global_fatigue: &FatigueRule,
    ) -> Result<(Campaign, Vec<Diagnostic>), CampaignError> {
        let io_error = |source| CampaignError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = read_limited(path).map_err(io_error)?;
        match String::from_utf8(bytes) {
            Ok(text) => Self::parse_str(path, &text, global_fatigue),
            Err(err) => {
                let valid = err.utf8_error().valid_up_to();
                let prefix =
                    String::from_utf8_lossy(err.as_bytes().get(..valid).unwrap_or_default())
                        .into_owned();
                let mut checker = Checker::new(path, &prefix);
                checker.error(
                    valid..valid,
                    "the file is not valid UTF-8 (save it as UTF-8 text)".to_string(),
                );
                Err(CampaignError::Invalid(checker.sorted_diags()))
            }
        }
    }

    /// Validates campaign text. `file` names it in diagnostics and anchors the relative
    /// `contacts` and `holidays` paths (which are read from disk).
    pub fn parse_str(
        file: &Path,
        text: &str,
        global_fatigue: &FatigueRule,
    ) -> Result<(Campaign, Vec<Diagnostic>), CampaignError> {
        let mut checker = Checker::new(file, text);
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            for err in &syntax_errors {
                let span = err.span().unwrap_or(0..0);
                let message = format!("TOML syntax: {}", err.message());
                checker.error(span, message);
            }
            return Err(CampaignError::Invalid(checker.sorted_diags()));
        }
        let default_id = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "campaign".to_string());
        let campaign = checker.document(doc.get_ref(), default_id, global_fatigue);
        match campaign {
            Some(c) if !checker.diags.has_errors() => Ok((c, checker.sorted_diags())),
            _ => {
                if !checker.diags.has_errors() {
                    checker.error(0..0, "the campaign is incomplete".to_string());
                }
                Err(CampaignError::Invalid(checker.sorted_diags()))
            }
        }
    }

    /// The CSV columns the message template uses (empty without a template); the contacts
    /// file must have them.
    pub fn template_fields(&self) -> Vec<String> {
        match &self.message {
            Message::Recorded {
                template: Some(t), ..
            } => t.fields(),
            _ => Vec::new(),
        }
    }

    /// The recorded prompts the message plays (empty for a dialplan message, whose prompts
    /// the dialplan check covers); each must exist under `voice-prompts/`.
    pub fn prompt_names(&self) -> &[String] {
        match &self.message {
            Message::Recorded { prompts, .. } => prompts,
            Message::Dialplan { .. } => &[],
        }
    }

    /// The rules [`crate::dialer::policy::decide`] applies.
    pub fn rules(&self) -> CampaignRules {
        CampaignRules {
            window: self.window.clone(),
            fatigue: self.fatigue,
            retry: self.retry,
            start_date: self.start_date,
            end_date: self.end_date,
            require_consent: self.require_consent,
        }
    }

    /// Whether this campaign's do-not-call list names the number or the customer.
    pub fn do_not_call(&self, phone: &str, customer_id: &str) -> bool {
        self.do_not_call.numbers.contains(phone) || self.do_not_call.customers.contains(customer_id)
    }

    /// How to import this campaign's contacts file.
    pub fn import_options(&self) -> ImportOptions {
        ImportOptions {
            default_tz: self.default_timezone,
            required_fields: self.template_fields(),
        }
    }
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

const TOP_FIELDS: &[&str] = &[
    "id",
    "description",
    "trunk",
    "caller_id",
    "contacts",
    "start_date",
    "end_date",
    "require_consent",
    "answering_machine",
    "default_timezone",
    "do_not_call",
    "language",
    "message",
    "keys",
    "window",
    "pacing",
    "retry",
    "fatigue",
];
const MESSAGE_FIELDS: &[&str] = &["dialplan", "template", "prompt"];
const KEY_FIELDS: &[&str] = &["confirm", "opt_out", "agent"];
const WINDOW_FIELDS: &[&str] = &["start", "end", "days", "holidays", "finish_margin"];
const PACING_FIELDS: &[&str] = &["max_concurrent", "calls_per_second"];
const RETRY_FIELDS: &[&str] = &["max_attempts", "busy", "no_answer", "failed", "machine"];
const RETRY_RULE_FIELDS: &[&str] = &["delay", "max_retries"];
const FATIGUE_FIELDS: &[&str] = &["max_contacts", "window", "counts"];
const MACHINE_ACTIONS: &[&str] = &["hangup", "leave_message"];
const DAY_NAMES: &[&str] = &[
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    diags: Diagnostics<'a>,
}

/// Campaign fields as read, before the cross-checks.
#[derive(Default)]
struct Draft {
    id: Option<(String, Span)>,
    description: String,
    trunk: Option<String>,
    caller_id: Option<String>,
    contacts: Option<PathBuf>,
    start_date: Option<(NaiveDate, Span)>,
    end_date: Option<(NaiveDate, Span)>,
    require_consent: bool,
    answering_machine: MachineAction,
    default_timezone: Option<Tz>,
    message: Option<Message>,
    keys: Option<(Keys, Span)>,
    window: Option<CallingWindow>,
    pacing: Pacing,
    retry: RetryRules,
    fatigue: Option<FatigueRule>,
    do_not_call: Option<DoNotCall>,
    language: Option<String>,
}

impl ValueReader for Checker<'_> {
    fn error(&mut self, span: Span, message: String) {
        self.diags.push(span, Severity::Error, message);
    }
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Checker {
            file,
            text,
            diags: Diagnostics::new(file, text),
        }
    }

    /// The campaign file's diagnostics first, then other files' (holidays), each by position.
    fn sorted_diags(mut self) -> Vec<Diagnostic> {
        let own = self.file.to_path_buf();
        self.diags.list.sort_by(|a, b| {
            (a.file != own, &a.file, a.line, a.column, a.severity).cmp(&(
                b.file != own,
                &b.file,
                b.line,
                b.column,
                b.severity,
            ))
        });
        self.diags.list
    }

    // --- generic value readers --------------------------------------------------------------

    fn integer(&mut self, value: &Item<'_>, field: &str, range: (i64, i64)) -> Option<i64> {
        let DeValue::Integer(i) = value.get_ref() else {
            self.type_error(value, field, "a whole number");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (range.0..=range.1).contains(&n) => Some(n),
            _ => {
                self.error(
                    value.span(),
                    format!("'{field}' must be between {} and {}", range.0, range.1),
                );
                None
            }
        }
    }

    fn number(&mut self, value: &Item<'_>, field: &str, range: (f64, f64)) -> Option<f64> {
        let n = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|v| v as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.type_error(value, field, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() && n >= range.0 && n <= range.1 => Some(n),
            _ => {
                self.error(
                    value.span(),
                    format!("'{field}' must be between {} and {}", range.0, range.1),
                );
                None
            }
        }
    }

    /// A duration string such as "10m" within `range`.
    fn duration(
        &mut self,
        value: &Item<'_>,
        field: &str,
        range: (Duration, Duration),
    ) -> Option<Duration> {
        let Some(text) = value.get_ref().as_str() else {
            self.type_error(value, field, "a duration such as \"10m\", \"2h\" or \"7d\"");
            return None;
        };
        match parse_duration(text) {
            Ok(d) if d >= range.0 && d <= range.1 => Some(d),
            Ok(_) => {
                self.error(
                    value.span(),
                    format!(
                        "'{field}' must be between {} and {}",
                        fmt_duration(range.0),
                        fmt_duration(range.1)
                    ),
                );
                None
            }
            Err(problem) => {
                self.error(
                    value.span(),
                    format!("invalid '{field}' \"{}\": {problem}", printable(text)),
                );
                None
            }
        }
    }

    /// A TOML local date (`2026-11-23`) or a string "2026-11-23".
    fn date(&mut self, value: &Item<'_>, field: &str) -> Option<NaiveDate> {
        let parsed = match value.get_ref() {
            DeValue::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (Some(d), None, None) => {
                    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                }
                _ => None,
            },
            DeValue::String(s) => parse_iso_date(s.as_ref()),
            _ => {
                self.type_error(value, field, "a date such as 2026-11-23");
                return None;
            }
        };
        if parsed.is_none() {
            self.error(
                value.span(),
                format!("'{field}' must be a date such as 2026-11-23 (no time, no zone)"),
            );
        }
        parsed
    }

    /// A string "09:00" / "09:00:30" or a TOML local time (`09:00:00`).
    fn time(&mut self, value: &Item<'_>, field: &str) -> Option<NaiveTime> {
        let parsed = match value.get_ref() {
            DeValue::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (None, Some(t), None) => NaiveTime::from_hms_opt(
                    u32::from(t.hour),
                    u32::from(t.minute),
                    u32::from(t.second.unwrap_or(0)),
                ),
                _ => None,
            },
            DeValue::String(s) => parse_clock(s.as_ref()),
            _ => {
                self.type_error(value, field, "a time such as \"09:00\"");
                return None;
            }
        };
        if parsed.is_none() {
            let hint = match value.get_ref().as_str() {
                Some(s) if s.starts_with("24") => {
                    "; the latest is \"23:59\" (a window cannot cross midnight)"
                }
                _ => "",
            };
            self.error(
                value.span(),
                format!("'{field}' must be a time of day such as \"09:00\" (24-hour){hint}"),
            );
        }
        parsed
    }

    /// One name or a non-empty list of names, each checked by `problem`.
    fn names(
        &mut self,
        value: &Item<'_>,
        field: &str,
        problem: fn(&str) -> Option<String>,
    ) -> Option<Vec<String>> {
        let items: Vec<&Item<'_>> = match value.get_ref() {
            DeValue::String(_) => vec![value],
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            DeValue::Array(_) => {
                self.error(value.span(), format!("'{field}' needs at least one name"));
                return None;
            }
            _ => {
                self.type_error(value, field, "a name or a list of names");
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Some(name) = item.get_ref().as_str() else {
                self.type_error(item, field, "a name (a string)");
                ok = false;
                continue;
            };
            match problem(name) {
                Some(p) => {
                    self.error(
                        item.span(),
                        format!("invalid name '{}' in '{field}': {p}", printable(name)),
                    );
                    ok = false;
                }
                None => out.push(name.to_string()),
            }
        }
        ok.then_some(out)
    }

    fn simple_name(&mut self, value: &Item<'_>, field: &str) -> Option<String> {
        let name = self.string(value, field)?;
        match simple_name_problem(&name) {
            Some(p) => {
                self.error(
                    value.span(),
                    format!("invalid {field} '{}': {p}", printable(&name)),
                );
                None
            }
            None => Some(name),
        }
    }

    /// A file path relative to the campaign file's folder.
    fn relative_path(&mut self, value: &Item<'_>, field: &str) -> Option<PathBuf> {
        let text = self.string(value, field)?;
        if text.trim().is_empty() {
            self.error(value.span(), format!("'{field}' must name a file"));
            return None;
        }
        let base = self.file.parent().unwrap_or_else(|| Path::new(""));
        Some(base.join(text))
    }

    // --- document ---------------------------------------------------------------------------

    fn document(
        &mut self,
        doc: &DeTable<'_>,
        default_id: String,
        global: &FatigueRule,
    ) -> Option<Campaign> {
        let mut d = Draft::default();
        let mut window_item = None;
        let mut fatigue_item = None;
        for (key, value) in doc.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "id" => d.id = self.simple_name(value, "id").map(|n| (n, value.span())),
                "description" => d.description = self.string(value, field).unwrap_or_default(),
                "trunk" => d.trunk = self.simple_name(value, "trunk"),
                "caller_id" => {
                    d.caller_id = self.string(value, field).and_then(|s| {
                        normalize_phone(&s)
                            .map_err(|p| self.error(value.span(), format!("caller_id {p}")))
                            .ok()
                    })
                }
                "contacts" => {
                    d.contacts = self.relative_path(value, field).and_then(|path| {
                        if path.is_file() {
                            Some(path)
                        } else {
                            self.error(
                                value.span(),
                                format!("contacts file not found: {}", path.display()),
                            );
                            None
                        }
                    })
                }
                "start_date" => d.start_date = self.date(value, field).map(|x| (x, value.span())),
                "end_date" => d.end_date = self.date(value, field).map(|x| (x, value.span())),
                "require_consent" => {
                    d.require_consent = self.boolean(value, field).unwrap_or_default()
                }
                "answering_machine" => {
                    if let Some(s) = self.string(value, field) {
                        match s.as_str() {
                            "hangup" => d.answering_machine = MachineAction::Hangup,
                            "leave_message" => d.answering_machine = MachineAction::LeaveMessage,
                            _ => self.unknown_value(value, &s, field, MACHINE_ACTIONS),
                        }
                    }
                }
                "default_timezone" => {
                    d.default_timezone =
                        self.string(value, field)
                            .and_then(|name| match name.parse::<Tz>() {
                                Ok(tz) => Some(tz),
                                Err(_) => {
                                    let hint = did_you_mean(
                                        &name,
                                        chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()),
                                    )
                                    .map(|s| format!(" (did you mean '{s}'?)"))
                                    .unwrap_or_else(|| {
                                        "; use an IANA name such as \"America/New_York\""
                                            .to_string()
                                    });
                                    self.error(
                                        value.span(),
                                        format!("unknown time zone '{}'{hint}", printable(&name)),
                                    );
                                    None
                                }
                            })
                }
                "message" => {
                    d.message = self
                        .table(value, field)
                        .and_then(|t| self.message(t, value))
                }
                "keys" => {
                    d.keys = self
                        .table(value, field)
                        .and_then(|t| self.keys(t))
                        .map(|k| (k, key.span()))
                }
                "window" => window_item = Some(value),
                "pacing" => {
                    if let Some(t) = self.table(value, field) {
                        d.pacing = self.pacing(t);
                    }
                }
                "retry" => {
                    if let Some(t) = self.table(value, field) {
                        d.retry = self.retry(t);
                    }
                }
                "fatigue" => fatigue_item = Some(value),
                "do_not_call" => d.do_not_call = self.do_not_call(value),
                "language" => {
                    if let Some(l) = self.string(value, field) {
                        if crate::ivr::dialplan::LANGUAGES.contains(&l.as_str()) {
                            d.language = Some(l);
                        } else {
                            self.unknown_value(value, &l, field, crate::ivr::dialplan::LANGUAGES);
                        }
                    }
                }
                _ => self.unknown_field(key, TOP_FIELDS, "the campaign"),
            }
        }
        for (field, present, example) in [
            ("trunk", doc.contains_key("trunk"), "trunk = \"main\""),
            (
                "caller_id",
                doc.contains_key("caller_id"),
                "caller_id = \"+12125550100\"",
            ),
            (
                "contacts",
                doc.contains_key("contacts"),
                "contacts = \"coupon-expiry.csv\"",
            ),
            (
                "start_date",
                doc.contains_key("start_date"),
                "start_date = 2026-11-23",
            ),
            (
                "[message]",
                doc.contains_key("message"),
                "[message] with a dialplan or prompt",
            ),
            (
                "[window]",
                doc.contains_key("window"),
                "[window] with start, end and days",
            ),
        ] {
            if !present {
                self.error(0..0, format!("missing {field}, e.g. {example}"));
            }
        }
        if let Some(value) = window_item {
            if let Some(t) = self.table(value, "window") {
                d.window = self.window(t, value.span());
            }
        }
        d.fatigue = match fatigue_item {
            Some(value) => self
                .table(value, "fatigue")
                .and_then(|t| self.fatigue(t, global)),
            None => Some(*global),
        };
        if let (Some((start, _)), Some((end, end_span))) = (&d.start_date, &d.end_date) {
            if end < start {
                self.error(
                    end_span.clone(),
                    format!("end_date {end} is before start_date {start}"),
                );
            }
        }
        let id = match d.id {
            Some((id, span)) => {
                if id != default_id {
                    self.diags.warning(
                        span,
                        format!(
                            "id '{id}' differs from the file name '{}': commands name the \
                             campaign by file, the ledger by id",
                            printable(&default_id)
                        ),
                    );
                }
                Some(id)
            }
            None if doc.contains_key("id") => None,
            None => match simple_name_problem(&default_id) {
                None => Some(default_id),
                Some(p) => {
                    self.error(
                        0..0,
                        format!(
                            "the file name '{}' is not a valid campaign id ({p}); rename the \
                             file or set id = \"...\"",
                            printable(&default_id)
                        ),
                    );
                    None
                }
            },
        };
        if let (Some(Message::Dialplan { name }), Some((_, span))) = (&d.message, &d.keys) {
            self.diags.warning(
                span.clone(),
                format!(
                    "[keys] has no effect when the message is the dialplan '{name}': its menu \
                     options decide what keys do"
                ),
            );
        }
        Some(Campaign {
            id: id?,
            description: d.description,
            trunk: d.trunk?,
            caller_id: d.caller_id?,
            message: d.message?,
            keys: d.keys.map(|(k, _)| k).unwrap_or_default(),
            window: d.window?,
            start_date: d.start_date?.0,
            end_date: d.end_date.map(|(e, _)| e),
            pacing: d.pacing,
            retry: d.retry,
            fatigue: d.fatigue?,
            answering_machine: d.answering_machine,
            require_consent: d.require_consent,
            default_timezone: d.default_timezone,
            contacts: d.contacts?,
            do_not_call: d.do_not_call.unwrap_or_default(),
            language: d
                .language
                .unwrap_or_else(|| crate::ivr::dialplan::DEFAULT_LANGUAGE.to_string()),
            file: self.file.to_path_buf(),
        })
    }

    fn unknown_value(&mut self, value: &Item<'_>, given: &str, field: &str, allowed: &[&str]) {
        let hint = match did_you_mean(given, allowed.iter().copied()) {
            Some(s) => format!(" (did you mean '{s}'?)"),
            None => format!("; use one of: {}", allowed.join(", ")),
        };
        self.error(
            value.span(),
            format!("invalid {field} '{}'{hint}", printable(given)),
        );
    }

    fn message(&mut self, table: &DeTable<'_>, whole: &Item<'_>) -> Option<Message> {
        let mut dialplan = None;
        let mut template = None;
        let mut prompts = None;
        let mut ok = true;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "dialplan" => {
                    dialplan = Some((key.span(), self.simple_name(value, "dialplan")));
                }
                "template" => template = Some((key.span(), self.template(value))),
                "prompt" => {
                    prompts = Some((key.span(), self.names(value, "prompt", prompt_name_problem)))
                }
                _ => {
                    self.unknown_field(key, MESSAGE_FIELDS, "[message]");
                    ok = false;
                }
            }
        }
        match (dialplan, template, prompts) {
            (Some((_, name)), None, None) => Some(Message::Dialplan { name: name? }),
            (Some(_), Some((span, _)), _) | (Some(_), None, Some((span, _))) => {
                self.error(
                    span,
                    "[message] has a 'dialplan' and also a template or prompts: use either a \
                     dialplan menu, or a template with its recorded prompts"
                        .to_string(),
                );
                None
            }
            (None, Some((span, _)), None) => {
                self.error(
                    span,
                    "a template needs 'prompt': the recorded prompt(s) played until \
                     text-to-speech is available"
                        .to_string(),
                );
                None
            }
            (None, template, Some((_, prompts))) => {
                let template = match template {
                    Some((_, t)) => Some(t?),
                    None => None,
                };
                let prompts = prompts?;
                ok.then_some(Message::Recorded { prompts, template })
            }
            (None, None, None) => {
                self.error(
                    whole.span(),
                    "[message] needs a 'dialplan' (a menu) or 'prompt' (recorded prompts, with \
                     an optional 'template')"
                        .to_string(),
                );
                None
            }
        }
    }

    fn template(&mut self, value: &Item<'_>) -> Option<Template> {
        let text = self.string(value, "template")?;
        if text.trim().is_empty() {
            self.error(value.span(), "'template' is empty".to_string());
            return None;
        }
        match Template::parse(&text) {
            Ok(t) => Some(t),
            Err((offset, problem)) => {
                // Point into the string when the file holds it verbatim (no escapes).
                let span = value.span();
                let raw = self.text.get(span.clone()).unwrap_or_default();
                let inner = raw
                    .get(1..raw.len().saturating_sub(1))
                    .filter(|inner| *inner == text);
                let at = match inner {
                    Some(_) => span.start.saturating_add(1).saturating_add(offset),
                    None => span.start,
                };
                self.error(at..at, format!("template: {problem}"));
                None
            }
        }
    }

    fn keys(&mut self, table: &DeTable<'_>) -> Option<Keys> {
        let mut keys = Keys::default();
        let mut ok = true;
        let mut seen: Vec<(char, &str, Span)> = Vec::new();
        // In file order, so "already the ... key" names the earlier line.
        let mut entries: Vec<(&Key<'_>, &Item<'_>)> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let field = key.get_ref().as_ref();
            let Some(slot) = KEY_FIELDS.iter().find(|f| **f == field) else {
                self.unknown_field(key, KEY_FIELDS, "[keys]");
                ok = false;
                continue;
            };
            let text = match value.get_ref() {
                DeValue::Integer(i) => i.as_str().to_string(),
                DeValue::String(s) => s.as_ref().to_string(),
                _ => {
                    self.type_error(value, field, "one DTMF key such as \"1\"");
                    ok = false;
                    continue;
                }
            };
            let key_char =
                if text == "none" {
                    if *slot == "opt_out" {
                        self.error(
                        value.span(),
                        "opt_out cannot be \"none\": callees must always be able to stop the calls"
                            .to_string(),
                    );
                        ok = false;
                        continue;
                    }
                    None
                } else {
                    let mut chars = text.chars();
                    match (chars.next().and_then(normalize_dtmf), chars.next()) {
                        (Some(c), None) => Some(c),
                        _ => {
                            self.error(
                                value.span(),
                                format!(
                                "invalid key '{}' for {field}: use one DTMF key (0-9, *, #, A-D){}",
                                printable(&text),
                                if *slot == "opt_out" { "" } else { " or \"none\"" }
                            ),
                            );
                            ok = false;
                            continue;
                        }
                    }
                };
            if let Some(c) = key_char {
                if let Some((_, other, _)) = seen.iter().find(|(k, _, _)| *k == c) {
                    self.error(
                        value.span(),
                        format!("key '{c}' is already the {other} key"),
                    );
                    ok = false;
                    continue;
                }
                seen.push((c, slot, value.span()));
            }
            match *slot {
                "confirm" => keys.confirm = key_char,
                "agent" => keys.agent = key_char,
                _ => keys.opt_out = key_char.unwrap_or(DEFAULT_OPT_OUT_KEY),
            }
        }
        // A default key may collide with one moved onto it ("confirm = 9" keeps opt_out 9).
        let defaults = [
            ("confirm", keys.confirm),
            ("opt_out", Some(keys.opt_out)),
            ("agent", keys.agent),
        ];
        for (i, (a, ka)) in defaults.iter().enumerate() {
            for (b, kb) in defaults.iter().skip(i + 1) {
                if ka.is_some() && ka == kb && ok {
                    let span = seen
                        .iter()
                        .find(|(k, _, _)| Some(*k) == *ka)
                        .map(|(_, _, s)| s.clone())
                        .unwrap_or(0..0);
                    self.error(
                        span,
                        format!(
                            "{a} and {b} would both be key '{}': set both explicitly",
                            ka.unwrap_or(' ')
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(keys)
    }

    fn window(&mut self, table: &DeTable<'_>, whole: Span) -> Option<CallingWindow> {
        let mut start = None;
        let mut end = None;
        let mut days = None;
        let mut holidays = Some(BTreeSet::new());
        let mut margin = Some(DEFAULT_FINISH_MARGIN);
        let (mut end_span, mut days_span, mut margin_span) =
            (whole.clone(), whole.clone(), whole.clone());
        for (key, value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "start" => start = Some(self.time(value, field)),
                "end" => {
                    end = Some(self.time(value, field));
                    end_span = value.span();
                }
                "days" => {
                    days = Some(self.days(value));
                    days_span = value.span();
                }
                "holidays" => holidays = self.holidays(value),
                "finish_margin" => {
                    margin = self.duration(value, field, finish_margin_range());
                    margin_span = value.span();
                }
                _ => self.unknown_field(key, WINDOW_FIELDS, "[window]"),
            }
        }
        for (name, present) in [
            ("start", start.is_some()),
            ("end", end.is_some()),
            ("days", days.is_some()),
        ] {
            if !present {
                let example = match name {
                    "start" => "start = \"09:00\"",
                    "end" => "end = \"20:00\"",
                    _ => "days = \"mon-fri\"",
                };
                self.error(
                    whole.clone(),
                    format!("[window] needs '{name}', e.g. {example}"),
                );
            }
        }
        let (start, end, days) = (start??, end??, days??);
        match CallingWindow::new(start, end, days, holidays?, margin?) {
            Ok(w) => Some(w),
            Err(e) => {
                let span = match e {
                    PolicyError::WindowCrossesMidnight { .. } => end_span,
                    PolicyError::NoCallingDays => days_span,
                    _ => margin_span,
                };
                self.error(span, e.to_string());
                None
            }
        }
    }

    /// `"mon-fri"`, `["mon-fri", "sat"]`, `["monday", "wednesday"]`.
    fn days(&mut self, value: &Item<'_>) -> Option<WeekdaySet> {
        let items: Vec<&Item<'_>> = match value.get_ref() {
            DeValue::String(_) => vec![value],
            DeValue::Array(items) => items.iter().collect(),
            _ => {
                self.type_error(
                    value,
                    "days",
                    "day names such as \"mon-fri\" or [\"mon\", \"wed\"]",
                );
                return None;
            }
        };
        let mut set = WeekdaySet::EMPTY;
        let mut ok = true;
        for item in items {
            let Some(text) = item.get_ref().as_str() else {
                self.type_error(
                    item,
                    "days",
                    "a day name such as \"mon\" or a range \"mon-fri\"",
                );
                ok = false;
                continue;
            };
            let lower = text.trim().to_ascii_lowercase();
            let (first, last) = match lower.split_once('-') {
                Some((a, b)) => (a.trim().to_string(), b.trim().to_string()),
                None => (lower.clone(), lower.clone()),
            };
            match (day(&first), day(&last)) {
                (Some(a), Some(b)) => {
                    // Ranges run forward and may wrap ("fri-mon" is Fri, Sat, Sun, Mon).
                    let mut d = a;
                    loop {
                        set.insert(d);
                        if d == b {
                            break;
                        }
                        d = d.succ();
                    }
                }
                (a, _) => {
                    let bad = if a.is_none() { &first } else { &last };
                    let hint = did_you_mean(bad, DAY_NAMES.iter().copied())
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_else(|| {
                            "; use mon, tue, wed, thu, fri, sat, sun or a range such as mon-fri"
                                .to_string()
                        });
                    self.error(
                        item.span(),
                        format!("unknown day '{}'{hint}", printable(bad)),
                    );
                    ok = false;
                }
            }
        }
        if ok && set.is_empty() {
            self.error(value.span(), "'days' names no day".to_string());
            return None;
        }
        ok.then_some(set)
    }

    /// The campaign's do-not-call file: one phone number or customer id per line, `#` comments.
    fn do_not_call(&mut self, value: &Item<'_>) -> Option<DoNotCall> {
        let path = self.relative_path(value, "do_not_call")?;
        let text = match read_limited(&path).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                self.error(
                    value.span(),
                    format!("do-not-call file {} is not valid UTF-8", path.display()),
                );
                return None;
            }
            Err(e) => {
                self.error(
                    value.span(),
                    format!("cannot read do-not-call file {}: {e}", path.display()),
                );
                return None;
            }
        };
        let mut list = DoNotCall::default();
        for line in text.lines() {
            let content = line.split('#').next().unwrap_or_default().trim();
            let content = content.trim_start_matches('\u{feff}');
            if content.is_empty() {
                continue;
            }
            // A number in any usual writing is matched as E.164; anything else is a customer id.
            match normalize_phone(content) {
                Ok(number) => list.numbers.insert(number),
                Err(_) => list.customers.insert(content.to_string()),
            };
        }
        Some(list)
    }

    /// A holidays file (relative path) or an inline list of dates.
    fn holidays(&mut self, value: &Item<'_>) -> Option<BTreeSet<NaiveDate>> {
        if let DeValue::Array(items) = value.get_ref() {
            let mut out = BTreeSet::new();
            let mut ok = true;
            for item in items.iter() {
                match self.date(item, "holidays") {
                    Some(d) => {
                        out.insert(d);
                    }
                    None => ok = false,
                }
            }
            return ok.then_some(out);
        }
        if value.get_ref().as_str().is_none() {
            self.type_error(
                value,
                "holidays",
                "a file name (\"holidays.txt\") or a list of dates",
            );
            return None;
        }
        let path = self.relative_path(value, "holidays")?;
        let text = match read_limited(&path).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                self.error(
                    value.span(),
                    format!("holidays file {} is not valid UTF-8", path.display()),
                );
                return None;
            }
            Err(e) => {
                self.error(
                    value.span(),
                    format!("cannot read holidays file {}: {e}", path.display()),
                );
                return None;
            }
        };
        let mut out = BTreeSet::new();
        let mut ok = true;
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or_default();
            let Some(token) = content.split_whitespace().next() else {
                continue;
            };
            let token = token.trim_start_matches('\u{feff}');
            match parse_iso_date(token) {
                Some(d) => {
                    out.insert(d);
                }
                None => {
                    let column = line
                        .find(token)
                        .and_then(|b| line.get(..b))
                        .map_or(0, |s| s.chars().count());
                    self.diags.list.push(Diagnostic {
                        file: path.clone(),
                        line: index.saturating_add(1),
                        column: column.saturating_add(1),
                        severity: Severity::Error,
                        message: format!(
                            "'{}' is not a date: write one YYYY-MM-DD date per line, \
                             optionally followed by a name (\"2026-12-25 Christmas Day\")",
                            printable(token)
                        ),
                    });
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn pacing(&mut self, table: &DeTable<'_>) -> Pacing {
        let mut pacing = Pacing::default();
        for (key, value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "max_concurrent" => {
                    if let Some(n) = self.integer(value, field, MAX_CONCURRENT_RANGE) {
                        pacing.max_concurrent = u32::try_from(n).unwrap_or(1);
                    }
                }
                "calls_per_second" => {
                    if let Some(n) = self.number(value, field, CALLS_PER_SECOND_RANGE) {
                        pacing.calls_per_second = n;
                    }
                }
                _ => self.unknown_field(key, PACING_FIELDS, "[pacing]"),
            }
        }
        pacing
    }

    fn retry(&mut self, table: &DeTable<'_>) -> RetryRules {
        let mut rules = RetryRules::default();
        for (key, value) in table.iter() {
            let field = key.get_ref().as_ref();
            if field == "max_attempts" {
                if let Some(n) = self.integer(value, field, MAX_ATTEMPTS_RANGE) {
                    rules.max_attempts = u32::try_from(n).unwrap_or(1);
                }
                continue;
            }
            let Some(outcome) = RetryOutcome::parse(field) else {
                self.unknown_retry_outcome(key);
                continue;
            };
            let Some(rule_table) = self.table(value, field) else {
                continue;
            };
            let rule = rules.rule_mut(outcome);
            let place = format!("[retry] {field}");
            for (k, v) in rule_table.iter() {
                match k.get_ref().as_ref() {
                    "delay" => {
                        if let Some(d) = self.duration(v, "delay", retry_delay_range()) {
                            rule.delay = d;
                        }
                    }
                    "max_retries" => {
                        if let Some(n) = self.integer(v, "max_retries", MAX_RETRIES_RANGE) {
                            rule.max_retries = u32::try_from(n).unwrap_or(0);
                        }
                    }
                    _ => self.unknown_field(k, RETRY_RULE_FIELDS, &place),
                }
            }
        }
        rules
    }

    fn unknown_retry_outcome(&mut self, key: &Key<'_>) {
        use crate::dialer::policy::{AttemptOutcome, Disposition};
        let name = key.get_ref().as_ref();
        let message = match AttemptOutcome::parse(name).map(AttemptOutcome::disposition) {
            Some(Disposition::Retry(kind)) => {
                format!("'{name}' outcomes are retried under '{kind}'; set [retry] {kind} instead")
            }
            Some(Disposition::InvalidNumber) => {
                format!("'{name}' is never retried: the number does not exist")
            }
            Some(Disposition::OptedOut) => {
                format!("'{name}' is never retried: the callee asked not to be called")
            }
            Some(Disposition::Completed) => {
                format!("'{name}' is never retried: the message was delivered")
            }
            None => {
                let hint = did_you_mean(name, RETRY_FIELDS.iter().copied())
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default();
                format!(
                    "unknown retry outcome '{}'{hint}; [retry] takes max_attempts and busy, \
                     no_answer, failed, machine",
                    printable(name)
                )
            }
        };
        self.error(key.span(), message);
    }

    fn fatigue(&mut self, table: &DeTable<'_>, global: &FatigueRule) -> Option<FatigueRule> {
        let mut rule = *global;
        let mut spans: Vec<(&str, Span)> = Vec::new();
        let mut ok = true;
        for (key, value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "max_contacts" => match self.integer(value, field, MAX_CONTACTS_RANGE) {
                    Some(n) => rule.max_contacts = u32::try_from(n).unwrap_or(1),
                    None => ok = false,
                },
                "window" => match self.duration(value, field, fatigue_window_range()) {
                    Some(d) => rule.window = d,
                    None => ok = false,
                },
                "counts" => match self.string(value, field) {
                    Some(s) => match ContactCounting::parse(&s) {
                        Some(c) => rule.counts = c,
                        None => {
                            let names: Vec<&str> =
                                ContactCounting::ALL.iter().map(|c| c.as_str()).collect();
                            self.unknown_value(value, &s, "counts", &names);
                            ok = false;
                        }
                    },
                    None => ok = false,
                },
                _ => {
                    self.unknown_field(key, FATIGUE_FIELDS, "[fatigue]");
                    ok = false;
                    continue;
                }
            }
            spans.push((FATIGUE_FIELDS.iter().find(|f| **f == field)?, value.span()));
        }
        if !ok {
            return None;
        }
        match FatigueRule::stricter_of(global, &rule) {
            Ok(rule) => Some(rule),
            Err(e) => {
                let field = match e {
                    PolicyError::ShorterWindow { .. } => "window",
                    PolicyError::LooserCounting { .. } => "counts",
                    _ => "max_contacts",
                };
                let span = spans
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(_, s)| s.clone())
                    .unwrap_or(0..0);
                self.error(span, e.to_string());
                None
            }
        }
    }
}

fn day(name: &str) -> Option<Weekday> {
    let index = DAY_NAMES.iter().position(|d| *d == name)?;
    Weekday::try_from(u8::try_from(index % 7).ok()?).ok()
}

/// `HH:MM` or `HH:MM:SS`, 24-hour.
fn parse_clock(text: &str) -> Option<NaiveTime> {
    let text = text.trim();
    let ok_shape = matches!(text.len(), 5 | 8)
        && text.chars().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        });
    if !ok_shape {
        return None;
    }
    let part = |i: usize| text.get(i..i + 2).and_then(|p| p.parse::<u32>().ok());
    let seconds = if text.len() == 8 { part(6)? } else { 0 };
    NaiveTime::from_hms_opt(part(0)?, part(3)?, seconds)
}

/// Campaign ids, trunk and dialplan names: letters, digits, `-` and `_`.
fn simple_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("use 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("use letters, digits, '-' and '_'".to_string());
    }
    None
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Dialplan { name } => write!(f, "dialplan '{name}'"),
            Message::Recorded { prompts, template } => {
                write!(f, "prompts {}", prompts.join(", "))?;
                if let Some(t) = template {
                    write!(f, " (template \"{}\")", t.text())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialer::policy::RetryRule;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(
                dir.path().join("contacts.csv"),
                "customer_id,phone,timezone,name,amount,expiry_date\n",
            )
            .expect("write csv");
            Dir { dir }
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        }

        fn campaign_path(&self) -> PathBuf {
            self.dir.path().join("t.toml")
        }

        fn parse(&self, text: &str) -> Result<(Campaign, Vec<Diagnostic>), CampaignError> {
            Campaign::parse_str(&self.campaign_path(), text, &FatigueRule::default())
        }

        fn ok(&self, text: &str) -> (Campaign, Vec<Diagnostic>) {
            self.parse(text)
                .unwrap_or_else(|e| panic!("expected a valid campaign, got:\n{e}"))
        }

        fn diags(&self, text: &str) -> Vec<Diagnostic> {
            match self.parse(text) {
                Err(CampaignError::Invalid(d)) => d,
                Err(e) => panic!("expected Invalid, got {e}"),
                Ok(_) => panic!("expected errors, the campaign was accepted"),
            }
        }
    }

    fn one<'d>(diags: &'d [Diagnostic], needle: &str) -> &'d Diagnostic {
        let found: Vec<&Diagnostic> = diags
            .iter()
            .filter(|d| d.message.contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "want exactly one diagnostic containing {needle:?}, got: {diags:#?}"
        );
        found[0]
    }

    fn at(d: &Diagnostic) -> (usize, usize) {
        (d.line, d.column)
    }

    fn date(s: &str) -> NaiveDate {
        parse_iso_date(s).expect("date")
    }

    const MINIMAL: &str = r#"trunk = "main"
caller_id = "+1 212 555 0100"
contacts = "contacts.csv"
start_date = 2026-11-23

[message]
prompt = "coupon-reminder"

[window]
start = "09:00"
end = "20:00"
days = "mon-fri"
"#;

    #[test]
    fn minimal_campaign_gets_defaults() {
        let dir = Dir::new();
        let (c, warnings) = dir.ok(MINIMAL);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.id, "t", "id defaults to the file name");
        assert_eq!(c.trunk, "main");
        assert_eq!(c.caller_id, "+12125550100");
        assert_eq!(c.contacts, dir.dir.path().join("contacts.csv"));
        assert_eq!(c.start_date, date("2026-11-23"));
        assert_eq!(c.end_date, None);
        assert_eq!(
            c.message,
            Message::Recorded {
                prompts: vec!["coupon-reminder".into()],
                template: None
            }
        );
        assert_eq!(c.keys, Keys::default());
        assert_eq!(c.pacing, Pacing::default());
        assert_eq!(c.retry, RetryRules::default());
        assert_eq!(c.fatigue, FatigueRule::default());
        assert_eq!(c.answering_machine, MachineAction::Hangup);
        assert!(!c.require_consent);
        assert_eq!(c.window.describe(), "09:00–20:00 Mon–Fri");
        assert_eq!(c.window.finish_margin(), DEFAULT_FINISH_MARGIN);
        assert!(c.template_fields().is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let dir = Dir::new();
        dir.file(
            "holidays.txt",
            "# public holidays\n2026-12-25 Christmas Day\n\n2026-12-26   # Boxing Day\n",
        );
        let text = r#"id = "t"
description = "Coupons expiring soon"
trunk = "carrier-1"
caller_id = "+442079460958"
contacts = "contacts.csv"
start_date = "2026-11-23"
end_date = 2026-12-31
require_consent = true
answering_machine = "leave_message"
default_timezone = "Europe/London"

[message]
template = "{name}, your coupon of {amount} expires on {expiry_date}. {{Press}} 1, {name}."
prompt = ["en/coupon-reminder", "en/press-1-9-0"]

[keys]
confirm = 2
opt_out = "*"
agent = "none"

[window]
start = 08:30:00
end = "19:45"
days = ["mon-wed", "Friday", "sat-sat"]
holidays = "holidays.txt"
finish_margin = "10m"

[pacing]
max_concurrent = 8
calls_per_second = 2.5

[retry]
max_attempts = 6
busy = { delay = "5m", max_retries = 4 }
machine = { max_retries = 0 }

[fatigue]
window = "14d"
counts = "attempted"
"#;
        let (c, warnings) = dir.ok(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.description, "Coupons expiring soon");
        assert_eq!(c.end_date, Some(date("2026-12-31")));
        assert!(c.require_consent);
        assert_eq!(c.answering_machine, MachineAction::LeaveMessage);
        assert_eq!(c.default_timezone, Some(chrono_tz::Europe::London));
        assert_eq!(c.template_fields(), ["name", "amount", "expiry_date"]);
        let Message::Recorded {
            prompts,
            template: Some(t),
        } = &c.message
        else {
            panic!("{:?}", c.message)
        };
        assert_eq!(prompts.len(), 2);
        let rendered = t
            .render(|f| match f {
                "name" => Some("Ann"),
                "amount" => Some("$5"),
                "expiry_date" => Some("Dec 1"),
                _ => None,
            })
            .expect("render");
        assert_eq!(
            rendered,
            "Ann, your coupon of $5 expires on Dec 1. {Press} 1, Ann."
        );
        assert_eq!(
            c.keys,
            Keys {
                confirm: Some('2'),
                opt_out: '*',
                agent: None
            }
        );
        let w = &c.window;
        assert_eq!(w.describe(), "08:30–19:45 Mon–Wed, Fri, Sat");
        assert_eq!(w.finish_margin(), Duration::minutes(10));
        let holidays: Vec<NaiveDate> = w.holidays().iter().copied().collect();
        assert_eq!(holidays, [date("2026-12-25"), date("2026-12-26")]);
        assert_eq!(
            c.pacing,
            Pacing {
                max_concurrent: 8,
                calls_per_second: 2.5
            }
        );
        assert_eq!(c.retry.max_attempts, 6);
        assert_eq!(
            c.retry.busy,
            RetryRule {
                delay: Duration::minutes(5),
                max_retries: 4
            }
        );
        assert_eq!(c.retry.machine.max_retries, 0);
        assert_eq!(c.retry.machine.delay, RetryRules::default().machine.delay);
        assert_eq!(c.retry.no_answer, RetryRules::default().no_answer);
        assert_eq!(
            c.fatigue,
            FatigueRule {
                max_contacts: 1,
                window: Duration::days(14),
                counts: ContactCounting::Attempted
            }
        );
        let rules = c.rules();
        assert!(rules.require_consent);
        assert_eq!(rules.fatigue, c.fatigue);
        let opts = c.import_options();
        assert_eq!(opts.required_fields, ["name", "amount", "expiry_date"]);
        assert_eq!(opts.default_tz, Some(chrono_tz::Europe::London));
    }

    #[test]
    fn dialplan_messages_and_key_warnings() {
        let dir = Dir::new();
        let text = MINIMAL.replace(
            "prompt = \"coupon-reminder\"",
            "dialplan = \"coupon-menu\"\n[keys]\nagent = \"none\"",
        );
        let (c, warnings) = dir.ok(&text);
        assert_eq!(
            c.message,
            Message::Dialplan {
                name: "coupon-menu".into()
            }
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(at(&warnings[0]), (8, 2));
        assert!(warnings[0].message.contains("[keys] has no effect"));
    }

    #[test]
    fn all_problems_are_reported_in_one_pass_with_positions() {
        let dir = Dir::new();
        let text = r#"trunkk = "main"
caller_id = "2125550100"
contacts = "missing.csv"
start_date = "2026-02-30"
end_date = 2026-01-01
default_timezone = "America/New_Yrok"
answering_machine = "voicemail"

[message]
template = "Hello {name}, {amount"
prompt = "x.wav"

[keys]
confirm = "9"
opt_out = "none"
agent = "12"

[window]
strat = "09:00"
start = "9am"
end = "24:00"
days = ["mon-fry", 3]

[pacing]
max_concurrent = 0
calls_per_second = "fast"

[retry]
bussy = { delay = "10m" }
invalid = { delay = "1h" }
interrupted = { delay = "1h" }
no_answer = { delay = "10x", max_retries = 99, tries = 1 }

[fatigue]
max_contacts = 2
"#;
        let d = dir.diags(text);
        let expect: &[(&str, (usize, usize))] = &[
            (
                "unknown field 'trunkk' in the campaign (did you mean 'trunk'?)",
                (1, 1),
            ),
            ("caller_id '2125550100' does not start with +", (2, 13)),
            ("contacts file not found", (3, 12)),
            ("'start_date' must be a date such as 2026-11-23", (4, 14)),
            (
                "unknown time zone 'America/New_Yrok' (did you mean 'America/New_York'?)",
                (6, 20),
            ),
            (
                "invalid answering_machine 'voicemail'; use one of: hangup, leave_message",
                (7, 21),
            ),
            ("template: '{' is not closed", (10, 27)),
            (
                "invalid name 'x.wav' in 'prompt': write it without .wav",
                (11, 10),
            ),
            ("opt_out cannot be \"none\"", (15, 11)),
            ("invalid key '12' for agent", (16, 9)),
            (
                "unknown field 'strat' in [window] (did you mean 'start'?)",
                (19, 1),
            ),
            (
                "'start' must be a time of day such as \"09:00\" (24-hour)",
                (20, 9),
            ),
            ("the latest is \"23:59\"", (21, 7)),
            ("unknown day 'fry' (did you mean 'fri'?)", (22, 9)),
            ("'days' must be a day name such as \"mon\"", (22, 20)),
            ("'max_concurrent' must be between 1 and 256", (25, 18)),
            (
                "'calls_per_second' must be a number, found string",
                (26, 20),
            ),
            (
                "unknown retry outcome 'bussy' (did you mean 'busy'?)",
                (29, 1),
            ),
            (
                "'invalid' is never retried: the number does not exist",
                (30, 1),
            ),
            ("'interrupted' outcomes are retried under 'failed'", (31, 1)),
            ("invalid 'delay' \"10x\"", (32, 23)),
            ("'max_retries' must be between 0 and 10", (32, 44)),
            (
                "unknown field 'tries' in [retry] no_answer; expected one of: delay, max_retries",
                (32, 48),
            ),
            (
                "max_contacts = 2 allows more contacts than the global limit of 1",
                (35, 16),
            ),
            ("missing trunk, e.g. trunk = \"main\"", (1, 1)),
        ];
        for (needle, pos) in expect {
            assert_eq!(at(one(&d, needle)), *pos, "{needle}");
        }
        // end_date before start_date is not reported when start_date itself is invalid.
        assert!(d
            .iter()
            .all(|x| !x.message.contains("is before start_date")));
        assert_eq!(d.len(), expect.len(), "{d:#?}");
        let shown = CampaignError::Invalid(d.clone()).to_string();
        assert!(
            shown.starts_with(&format!("invalid campaign: {} errors\n", d.len())),
            "{shown}"
        );
        assert!(shown.contains(&format!(
            "{}:1:1: error: unknown field 'trunkk'",
            dir.campaign_path().display()
        )));
    }

    #[test]
    fn window_and_date_cross_checks() {
        let dir = Dir::new();
        let d = dir.diags(
            &MINIMAL
                .replace("end = \"20:00\"", "end = \"06:00\"")
                .replace("start = \"09:00\"", "start = \"21:00\""),
        );
        let e = one(&d, "crosses midnight");
        assert_eq!(at(e), (11, 7));
        let d = dir.diags(&format!(
            "{}finish_margin = \"3h\"\n",
            MINIMAL.replace("end = \"20:00\"", "end = \"10:00\"")
        ));
        assert!(one(&d, "'finish_margin' must be between 0s and 2h").line == 13);
        let d = dir.diags(&format!(
            "{}finish_margin = \"1h\"\n",
            MINIMAL.replace("end = \"20:00\"", "end = \"10:00\"")
        ));
        assert_eq!(at(one(&d, "finish margin 1h leaves no time")), (13, 17));
        let d = dir.diags(&MINIMAL.replace(
            "start_date = 2026-11-23",
            "start_date = 2026-11-23\nend_date = 2026-11-22",
        ));
        assert_eq!(
            at(one(
                &d,
                "end_date 2026-11-22 is before start_date 2026-11-23"
            )),
            (5, 12)
        );
        let d = dir.diags(&MINIMAL.replace("days = \"mon-fri\"", "days = []"));
        one(&d, "'days' names no day");
        let d = dir.diags(&MINIMAL.replace(
            "start_date = 2026-11-23",
            "start_date = 2026-11-23T10:00:00Z",
        ));
        one(&d, "no time, no zone");
        let d = dir.diags(&MINIMAL.replace("[window]\nstart = \"09:00\"\n", "[window]\n"));
        assert_eq!(at(one(&d, "[window] needs 'start'")), (9, 1));
        // Wrapping day ranges.
        let (c, _) = dir.ok(&MINIMAL.replace("days = \"mon-fri\"", "days = \"fri-mon\""));
        assert_eq!(c.window.describe(), "09:00–20:00 Mon, Fri–Sun");
    }

    #[test]
    fn fatigue_overrides_must_be_stricter() {
        let dir = Dir::new();
        let global = FatigueRule {
            max_contacts: 2,
            window: Duration::days(7),
            counts: ContactCounting::Answered,
        };
        let parse = |extra: &str| {
            Campaign::parse_str(
                &dir.campaign_path(),
                &format!("{MINIMAL}\n[fatigue]\n{extra}"),
                &global,
            )
        };
        let (c, _) = parse("max_contacts = 1\nwindow = \"30d\"\ncounts = \"attempted\"\n")
            .expect("stricter is fine");
        assert_eq!(c.fatigue.max_contacts, 1);
        assert_eq!(c.fatigue.window, Duration::days(30));
        let (c, _) = parse("window = \"2w\"\n").expect("partial override");
        assert_eq!(
            c.fatigue,
            FatigueRule {
                window: Duration::days(14),
                ..global
            }
        );
        let (c, _) = Campaign::parse_str(&dir.campaign_path(), MINIMAL, &global).expect("none");
        assert_eq!(c.fatigue, global, "no [fatigue]: the global rule");
        let err = |extra: &str| match parse(extra) {
            Err(CampaignError::Invalid(d)) => d,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let d = err("window = \"3d\"\n");
        assert_eq!(
            at(one(
                &d,
                "window = \"3d\" is shorter than the global window of 7d"
            )),
            (15, 10)
        );
        let d = err("counts = \"answered_by_person\"\n");
        assert_eq!(at(one(&d, "(allowed: answered, attempted)")), (15, 10));
        let d = err("counts = \"answerd\"\n");
        one(&d, "invalid counts 'answerd' (did you mean 'answered'?)");
        let d = err("max_contacts = 3\nwindow = \"14d\"\n");
        assert_eq!(
            at(one(
                &d,
                "max_contacts = 3 allows more contacts than the global limit of 2"
            )),
            (15, 16)
        );
        let d = err("max_contacts = 0\n");
        one(&d, "'max_contacts' must be between 1 and 100");
        let d = err("maximum = 1\n");
        one(&d, "unknown field 'maximum' in [fatigue]");
    }

    #[test]
    fn message_shapes() {
        let dir = Dir::new();
        let with = |message: &str| MINIMAL.replace("prompt = \"coupon-reminder\"", message);
        let d = dir.diags(&with("template = \"Hi {name}\""));
        assert_eq!(at(one(&d, "a template needs 'prompt'")), (7, 1));
        let d = dir.diags(&with("dialplan = \"menu\"\nprompt = \"p\""));
        one(&d, "has a 'dialplan' and also a template or prompts");
        let d = dir.diags(&with("promt = \"p\""));
        one(
            &d,
            "unknown field 'promt' in [message] (did you mean 'prompt'?)",
        );
        let d = dir.diags(&with(""));
        assert_eq!(at(one(&d, "[message] needs a 'dialplan'")), (6, 1));
        let d = dir.diags(&with("prompt = []"));
        one(&d, "'prompt' needs at least one name");
        let d = dir.diags(&with("prompt = \"p\"\ntemplate = \"Hi {first name}\""));
        assert_eq!(at(one(&d, "invalid field name 'first name'")), (8, 16));
        let d = dir.diags(&with("prompt = \"p\"\ntemplate = \"Hi } {{\""));
        assert_eq!(at(one(&d, "'}' without '{'")), (8, 16));
        // With an escape in the TOML string the column falls back to the string's start.
        let d = dir.diags(&with("prompt = \"p\"\ntemplate = \"\\tHi {}\""));
        assert_eq!(at(one(&d, "'{}' has no field name")), (8, 12));
        let d = dir.diags(&with("dialplan = \"../etc\""));
        one(&d, "invalid dialplan '../etc'");
    }

    #[test]
    fn key_conflicts() {
        let dir = Dir::new();
        let with = |keys: &str| format!("{MINIMAL}[keys]\n{keys}");
        let d = dir.diags(&with("confirm = \"9\"\n"));
        one(
            &d,
            "confirm and opt_out would both be key '9': set both explicitly",
        );
        let (c, _) = dir.ok(&with("confirm = \"9\"\nopt_out = \"1\"\n"));
        assert_eq!((c.keys.confirm, c.keys.opt_out), (Some('9'), '1'));
        let d = dir.diags(&with("confirm = \"3\"\nagent = \"3\"\n"));
        one(&d, "key '3' is already the confirm key");
        let (c, _) = dir.ok(&with("agent = \"d\"\n"));
        assert_eq!(c.keys.agent, Some('D'));
        let d = dir.diags(&with("cancel = \"1\"\n"));
        one(&d, "unknown field 'cancel' in [keys]");
    }

    #[test]
    fn do_not_call_file_and_language() {
        let dir = Dir::new();
        dir.file(
            "dnc.txt",
            "# numbers and customer ids\n+1 (212) 555-0199\ncust-42   # asked by letter\n\n",
        );
        let text = format!("do_not_call = \"dnc.txt\"\nlanguage = \"zh\"\n{MINIMAL}");
        let (c, _) = dir.ok(&text);
        assert!(c.do_not_call("+12125550199", "someone"));
        assert!(c.do_not_call("+19999999999", "cust-42"));
        assert!(!c.do_not_call("+19999999999", "cust-43"));
        assert_eq!(c.language, "zh");
        let (c, _) = dir.ok(MINIMAL);
        assert_eq!(c.language, "en");
        assert!(!c.do_not_call("+12125550199", "cust-42"));
        let d = dir.diags(&format!("language = \"fr\"\n{MINIMAL}"));
        assert!(
            one(&d, "invalid language 'fr'").message.contains("en"),
            "{d:#?}"
        );
        let d = dir.diags(&format!("do_not_call = \"missing.txt\"\n{MINIMAL}"));
        one(&d, "cannot read do-not-call file");
    }

    #[test]
    fn holidays_file_problems_point_into_that_file() {
        let dir = Dir::new();
        let holidays = dir.file(
            "hol.txt",
            "2026-12-25 Christmas\n  25/12/2026 wrong\n2026-13-01\n# 2026-99-99 commented out\n",
        );
        let text = MINIMAL.replace(
            "days = \"mon-fri\"",
            "days = \"mon-fri\"\nholidays = \"hol.txt\"",
        );
        let d = dir.diags(&text);
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].file, holidays);
        assert_eq!(at(&d[0]), (2, 3));
        assert!(
            d[0].message.contains("'25/12/2026' is not a date"),
            "{}",
            d[0]
        );
        assert_eq!(at(&d[1]), (3, 1));
        let d = dir.diags(&MINIMAL.replace(
            "days = \"mon-fri\"",
            "days = \"mon-fri\"\nholidays = \"nope.txt\"",
        ));
        assert_eq!(at(one(&d, "cannot read holidays file")), (13, 12));
        let (c, _) = dir.ok(&MINIMAL.replace(
            "days = \"mon-fri\"",
            "days = \"mon-fri\"\nholidays = [2026-12-25, \"2026-12-28\"]",
        ));
        assert_eq!(c.window.holidays().len(), 2);
    }

    #[test]
    fn required_fields_and_ids() {
        let dir = Dir::new();
        let d = dir.diags("description = \"x\"\n");
        for field in [
            "trunk",
            "caller_id",
            "contacts",
            "start_date",
            "[message]",
            "[window]",
        ] {
            assert_eq!(at(one(&d, &format!("missing {field},"))), (1, 1), "{field}");
        }
        let (c, warnings) = dir.ok(&format!("id = \"other\"\n{MINIMAL}"));
        assert_eq!(c.id, "other");
        assert!(warnings[0]
            .message
            .contains("differs from the file name 't'"));
        let d = dir.diags(&format!("id = \"a b\"\n{MINIMAL}"));
        one(&d, "invalid id 'a b'");
        let bad_name = dir.dir.path().join("bad name.toml");
        let err = Campaign::parse_str(&bad_name, MINIMAL, &FatigueRule::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("the file name 'bad name' is not a valid campaign id"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_and_files() {
        let dir = Dir::new();
        let d = dir.diags("trunk = \"main\nstart_date = \n");
        assert!(
            d.iter().all(|x| x.message.starts_with("TOML syntax")),
            "{d:#?}"
        );
        assert_eq!(d[0].line, 1);
        let err =
            Campaign::load(&dir.dir.path().join("nope.toml"), &FatigueRule::default()).unwrap_err();
        assert!(matches!(err, CampaignError::Io { .. }), "{err}");
        let path = dir.file("t.toml", MINIMAL);
        let (c, _) = Campaign::load(&path, &FatigueRule::default()).expect("loads");
        assert_eq!(c.file, path);
        let bad = dir.dir.path().join("enc.toml");
        std::fs::write(&bad, b"trunk = \"main\"\n# caf\xe9\n").expect("write");
        let CampaignError::Invalid(d) = Campaign::load(&bad, &FatigueRule::default()).unwrap_err()
        else {
            panic!("not Invalid")
        };
        assert_eq!(at(&d[0]), (2, 6));
        let huge = dir.dir.path().join("huge.toml");
        std::fs::write(&huge, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
        let err = Campaign::load(&huge, &FatigueRule::default()).unwrap_err();
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }

    #[test]
    fn templates() {
        let t = Template::parse("{a}{b} and {a}, {{literal}} }}").expect("parses");
        assert_eq!(t.fields(), ["a", "b"]);
        assert_eq!(
            t.render(|f| Some(if f == "a" { "1" } else { "2" })),
            Ok("12 and 1, {literal} }".to_string())
        );
        assert_eq!(t.render(|_| None), Err("a".to_string()));
        assert_eq!(Template::parse("ab {").unwrap_err().0, 3);
        assert_eq!(Template::parse("é}").unwrap_err().0, 2);
        assert!(Template::parse("{9lives}").is_err());
        assert!(Template::parse("{_ok9}").is_ok());
    }

    #[test]
    fn did_you_mean_is_case_insensitive_and_bounded() {
        assert_eq!(
            did_you_mean("trunkk", TOP_FIELDS.iter().copied()),
            Some("trunk")
        );
        assert_eq!(
            did_you_mean("EUROPE/LONDON", ["Europe/London"]),
            Some("Europe/London")
        );
        assert_eq!(did_you_mean("zzz", ["busy"]), None);
    }

    fn repo_root() -> PathBuf {
        let here = Path::new(file!());
        let here = if here.is_absolute() {
            here.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(here)
        };
        here.ancestors().nth(3).expect("repo root").to_path_buf()
    }

    #[test]
    fn docs_reference_example_is_the_bundled_example() {
        let doc = include_str!("../../docs/campaigns.md");
        let start = doc.find("```toml\n").expect("a toml example") + "```toml\n".len();
        let len = doc[start..].find("```").expect("closing fence");
        let path = repo_root().join("campaigns/coupon-expiry.toml");
        let file = std::fs::read_to_string(&path).expect("example file");
        assert_eq!(
            &doc[start..start + len],
            file,
            "docs example and {} differ",
            path.display()
        );
        let (c, warnings) =
            Campaign::parse_str(&path, &doc[start..start + len], &FatigueRule::default())
                .unwrap_or_else(|e| panic!("docs example: {e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.id, "coupon-expiry");
    }

    #[test]
    fn example_campaigns_load_and_their_contacts_import() {
        use crate::dialer::contacts::read_contacts_with;
        use crate::dialer::policy::{decide, ContactView, Decision, History};
        let root = repo_root();
        let global = FatigueRule::default();
        let (c, warnings) =
            Campaign::load(&root.join("campaigns/coupon-expiry.toml"), &global).expect("loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.template_fields(), ["name", "amount", "expiry_date"]);
        assert_eq!(c.prompt_names(), ["reminders/coupon-expiry"]);
        assert_eq!(c.window.holidays().len(), 7);
        let mut rows = Vec::new();
        let mut bad = Vec::new();
        let file = std::fs::File::open(&c.contacts).expect("csv");
        let summary = read_contacts_with(
            file,
            &c.import_options(),
            |row| {
                rows.push(row);
                Ok::<(), std::convert::Infallible>(())
            },
            |b| bad.push(b.to_string()),
        )
        .expect("imports");
        assert_eq!((summary.rows, summary.imported, summary.bad), (10, 8, 2));
        // The docs quote these two messages.
        let doc = include_str!("../../docs/campaigns.md");
        for b in &bad {
            assert!(doc.contains(b.as_str()), "docs/campaigns.md lacks: {b}");
        }
        assert!(bad[0].starts_with("line 5: phone:"), "{bad:?}");
        assert!(bad[1].starts_with("line 9: timezone:"), "{bad:?}");

        // Monday 2026-11-23 15:00Z: 10:00 in New York, 23:00 in Shanghai.
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T15:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let rules = c.rules();
        let codes: Vec<(String, &str)> = rows
            .iter()
            .map(|r| {
                let view = ContactView {
                    customer_id: r.customer_id.clone(),
                    phone: r.phone.clone(),
                    tz: r.tz,
                    consent: r.consent,
                    opted_out_global: false,
                    campaign_dnc: false,
                };
                let d = decide(&view, &History::default(), &rules, now);
                if r.customer_id == "C1005" {
                    assert!(matches!(d, Decision::WaitUntil { .. }), "{d}");
                    assert!(
                        d.to_string()
                            .starts_with("wait until 2026-11-24T01:00Z: window"),
                        "{d}"
                    );
                }
                (r.customer_id.clone(), d.code())
            })
            .collect();
        let expect = [
            ("C1001", "dial"),
            ("C1002", "dial"),
            ("C1003", "dial"),
            ("C1005", "wait_window"),
            ("C1006", "skip_no_consent"),
            ("C1007", "skip_no_consent"),
            ("C1009", "dial"),
            ("C1010", "dial"),
        ];
        let got: Vec<(&str, &str)> = codes.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        assert_eq!(got, expect);

        let (f, warnings) =
            Campaign::load(&root.join("campaigns/account-followup.toml"), &global).expect("loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(f.id, "account-followup");
        assert_eq!(
            f.message,
            Message::Dialplan {
                name: "demo-bank".into()
            }
        );
        assert_eq!(f.fatigue.window, Duration::days(14));
        assert_eq!(f.fatigue.counts, ContactCounting::Answered);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_text_never_panics(text in "\\PC{0,300}") {
                let _ = Campaign::parse_str(Path::new("campaigns/x.toml"), &text, &FatigueRule::default());
            }

            #[test]
            fn mutated_minimal_never_panics_and_points_into_the_file(
                edits in proptest::collection::vec((0usize..400, "[\\[\\]{}=\"'.,#:a-z0-9_ \n-]{0,6}", 0usize..6), 1..4)
            ) {
                let mut text = MINIMAL.to_string();
                for (pos, insert, delete) in edits {
                    let at = pos.min(text.len());
                    let end = at.saturating_add(delete).min(text.len());
                    text.replace_range(at..end, &insert);
                }
                let lines = text.lines().count().max(1) + 1;
                if let Err(CampaignError::Invalid(d)) =
                    Campaign::parse_str(Path::new("campaigns/x.toml"), &text, &FatigueRule::default())
                {
                    prop_assert!(d.iter().any(|x| x.severity == Severity::Error));
                    for x in d { prop_assert!(x.line >= 1 && x.line <= lines && x.column >= 1, "{}", x); }
                }
            }
        }
    }
}
