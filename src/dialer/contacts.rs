//! Contacts CSV import, streaming: each row is checked and handed to a callback, so a file of
//! a million rows never sits in memory (only the customer ids seen, to report duplicates).
//!
//! The format (UTF-8 with or without BOM, a header row) is documented in `docs/campaigns.md`.
//! Bad rows are reported with their line number and the column at fault, and skipped; a
//! problem with the header stops the import before any row is handed over.
use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::io::Read;
use std::sync::Arc;

use chrono::NaiveDate;
use chrono_tz::Tz;

use crate::ivr::dialplan::{did_you_mean, printable};

/// Columns every file must have (`timezone` may be left out when the campaign sets a default).
pub const REQUIRED_COLUMNS: [&str; 3] = ["customer_id", "phone", "timezone"];
/// Columns with a meaning of their own; every other column is a message field.
pub const OPTIONAL_COLUMNS: [&str; 3] = ["consent", "birth_date", "segment"];
/// Longest row accepted, in bytes (a guard against a file that is not a contact list).
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// Longest customer id, in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

/// One valid contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    pub customer_id: String,
    /// E.164: `+` and 8 to 15 digits, separators removed.
    pub phone: String,
    pub tz: Tz,
    pub consent: Option<bool>,
    pub birth_date: Option<NaiveDate>,
    pub segment: Option<String>,
    /// The message fields (every other column), in header order, values trimmed.
    pub fields: Vec<(Arc<str>, String)>,
    /// Line of the row's first character in the file (1-based; the header is line 1).
    pub line: u64,
}

impl ContactRow {
    /// A message field's value by column name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    /// The column at fault, when one is.
    pub column: Option<String>,
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}: {column}: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Column names as written (trimmed).
    pub header: Vec<String>,
    /// Data rows read (not counting the header and blank lines).
    pub rows: u64,
    pub imported: u64,
    /// Rows skipped for a problem in the row.
    pub bad: u64,
    /// Rows skipped because an earlier row had the same customer id.
    pub duplicates: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Used for rows whose `timezone` is empty; with it the column may be left out.
    pub default_tz: Option<Tz>,
    /// Message fields that must be present in the header and non-empty in every row (the
    /// fields the message template uses).
    pub required_fields: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("cannot read the contacts file near line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: csv::Error,
    },
    #[error(
        "the contacts file is empty: its first line must be a header such as \
         customer_id,phone,timezone,name"
    )]
    Empty,
    #[error("line {line}: the header has no '{column}' column{hint}")]
    MissingColumn {
        line: u64,
        column: String,
        hint: String,
    },
    #[error(
        "line {line}: the message template uses {} that the header does not have: {}",
        if .fields.len() == 1 { "a field" } else { "fields" },
        .fields.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ")
    )]
    MissingFields { line: u64, fields: Vec<String> },
    #[error("line {line}: column '{column}' appears twice (columns {first} and {second})")]
    DuplicateColumn {
        line: u64,
        column: String,
        first: usize,
        second: usize,
    },
    #[error("line {line}: column {index} has no name")]
    UnnamedColumn { line: u64, index: usize },
    #[error(
        "line {line}: column {index} of the header is not valid UTF-8 (save the file as UTF-8)"
    )]
    HeaderEncoding { line: u64, index: usize },
    #[error("import stopped at line {line}: {source}")]
    Sink {
        line: u64,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// What a header column is.
#[derive(Debug, Clone)]
enum Column {
    CustomerId,
    Phone,
    Timezone,
    Consent,
    BirthDate,
    Segment,
    Field { name: Arc<str>, required: bool },
}

/// The header, resolved.
struct Layout {
    columns: Vec<Column>,
    names: Vec<String>,
}

/// Reads contacts with default options. See [`read_contacts_with`].
pub fn read_contacts<R, E, F, B>(
    reader: R,
    on_row: F,
    on_bad: B,
) -> Result<ImportSummary, ContactsError>
where
    R: Read,
    E: Into<Box<dyn StdError + Send + Sync>>,
    F: FnMut(ContactRow) -> Result<(), E>,
    B: FnMut(BadRow),
{
    read_contacts_with(reader, &ImportOptions::default(), on_row, on_bad)
}

/// Reads a contacts CSV, handing each valid row to `on_row` and each skipped row to `on_bad`,
/// in file order. An error from `on_row` stops the import (`ContactsError::Sink`). For
/// progress, wrap `reader` (e.g. `indicatif::ProgressBar::wrap_read`).
pub fn read_contacts_with<R, E, F, B>(
    reader: R,
    options: &ImportOptions,
    mut on_row: F,
    mut on_bad: B,
) -> Result<ImportSummary, ContactsError>
where
    R: Read,
    E: Into<Box<dyn StdError + Send + Sync>>,
    F: FnMut(ContactRow) -> Result<(), E>,
    B: FnMut(BadRow),
{
    let mut csv = csv_reader(reader);
    let mut record = csv::ByteRecord::new();
    let layout = read_layout(&mut csv, &mut record, options)?;
    let mut summary = ImportSummary {
        header: layout.names.clone(),
        ..ImportSummary::default()
    };
    let mut seen: HashMap<Box<str>, u64> = HashMap::new();
    let mut zones = ZoneCache::default();
    while let Some(line) = next_record(&mut csv, &mut record)? {
        summary.rows = summary.rows.saturating_add(1);
        let row = match parse_row(&record, &layout, options, &mut zones, line) {
            Ok(row) => row,
            Err(bad) => {
                summary.bad = summary.bad.saturating_add(1);
                on_bad(bad);
                continue;
            }
        };
        if let Some(first) = seen.get(row.customer_id.as_str()) {
            summary.duplicates = summary.duplicates.saturating_add(1);
            on_bad(BadRow {
                line,
                column: Some("customer_id".to_string()),
                reason: format!(
                    "duplicate customer_id '{}' (first at line {first}; that row is kept)",
                    printable(&row.customer_id)
                ),
            });
            continue;
        }
        seen.insert(row.customer_id.clone().into_boxed_str(), line);
        on_row(row).map_err(|e| ContactsError::Sink {
            line,
            source: e.into(),
        })?;
        summary.imported = summary.imported.saturating_add(1);
    }
    Ok(summary)
}

/// The header's column names (trimmed), checked as an import would check them.
pub fn read_header<R: Read>(
    reader: R,
    options: &ImportOptions,
) -> Result<Vec<String>, ContactsError> {
    let mut csv = csv_reader(reader);
    let mut record = csv::ByteRecord::new();
    Ok(read_layout(&mut csv, &mut record, options)?.names)
}

/// Checks that every template field is a column of `header`.
pub fn check_template_fields(header: &[String], fields: &[String]) -> Result<(), ContactsError> {
    missing_fields(header, fields, 1)
}

fn missing_fields(header: &[String], fields: &[String], line: u64) -> Result<(), ContactsError> {
    let missing: Vec<String> = fields
        .iter()
        .filter(|f| !header.iter().any(|h| h == *f))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ContactsError::MissingFields {
            line,
            fields: missing,
        })
    }
}

fn csv_reader<R: Read>(reader: R) -> csv::Reader<LineIndex<R>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(LineIndex::new(reader))
}

/// Reads the next record; returns the line it starts on, `None` at the end.
fn next_record<R: Read>(
    csv: &mut csv::Reader<LineIndex<R>>,
    record: &mut csv::ByteRecord,
) -> Result<Option<u64>, ContactsError> {
    match csv.read_byte_record(record) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(source) => {
            let line = csv.get_ref().line_at(csv.position().byte());
            return Err(ContactsError::Read { line, source });
        }
    }
    // csv's own line numbers drift with CRLF line ends and blank lines, so count newlines.
    // A record's position is where the previous one ended; line ends and blank lines may
    // follow before its first byte.
    let at = record.position().map_or(0, |p| p.byte());
    Ok(Some(csv.get_mut().line_of_record_at(at)))
}

/// A reader that remembers where the line ends it passed on were, to number lines.
struct LineIndex<R> {
    inner: R,
    /// Bytes passed on so far.
    offset: u64,
    /// Offsets of newlines not yet counted, ascending.
    pending: VecDeque<u64>,
    /// Newlines counted (all before the last record start asked about).
    counted: u64,
    /// Runs of `\r`/`\n` bytes not yet passed, as `start..end`, ascending.
    runs: VecDeque<(u64, u64)>,
}

impl<R: Read> LineIndex<R> {
    fn new(inner: R) -> Self {
        LineIndex {
            inner,
            offset: 0,
            pending: VecDeque::new(),
            counted: 0,
            runs: VecDeque::new(),
        }
    }

    /// The 1-based line of the first byte of a record that csv says starts at `at` (after
    /// any line ends there). Calls must not go backwards (records are read in order).
    fn line_of_record_at(&mut self, at: u64) -> u64 {
        while self.runs.front().is_some_and(|(_, end)| *end <= at) {
            self.runs.pop_front();
        }
        let start = match self.runs.front() {
            Some((run_start, run_end)) if *run_start <= at => *run_end,
            _ => at,
        };
        while self.pending.front().is_some_and(|n| *n < start) {
            self.pending.pop_front();
            self.counted = self.counted.saturating_add(1);
        }
        self.counted.saturating_add(1)
    }

    /// The 1-based line of the byte at `at` (for read errors).
    fn line_at(&self, at: u64) -> u64 {
        let later = self.pending.iter().take_while(|n| **n < at).count() as u64;
        self.counted.saturating_add(later).saturating_add(1)
    }
}

impl<R: Read> Read for LineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, byte) in buf.iter().take(n).enumerate() {
            if matches!(byte, b'\r' | b'\n') {
                let at = self.offset.saturating_add(i as u64);
                match self.runs.back_mut() {
                    Some((_, end)) if *end == at => *end = at.saturating_add(1),
                    _ => self.runs.push_back((at, at.saturating_add(1))),
                }
                if *byte == b'\n' {
                    self.pending.push_back(at);
                }
            }
        }
        self.offset = self.offset.saturating_add(n as u64);
        Ok(n)
    }
}

fn read_layout<R: Read>(
    csv: &mut csv::Reader<LineIndex<R>>,
    record: &mut csv::ByteRecord,
    options: &ImportOptions,
) -> Result<Layout, ContactsError> {
    let Some(line) = next_record(csv, record)? else {
        return Err(ContactsError::Empty);
    };
    let mut names = Vec::with_capacity(record.len());
    let mut columns = Vec::with_capacity(record.len());
    let mut known: HashMap<String, usize> = HashMap::new();
    for (i, raw) in record.iter().enumerate() {
        let index = i.saturating_add(1);
        let name = std::str::from_utf8(raw)
            .map_err(|_| ContactsError::HeaderEncoding { line, index })?
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(ContactsError::UnnamedColumn { line, index });
        }
        // Known columns are matched without regard to case ("Phone" is phone).
        let lower = name.to_ascii_lowercase();
        let column = match lower.as_str() {
            "customer_id" => Column::CustomerId,
            "phone" => Column::Phone,
            "timezone" => Column::Timezone,
            "consent" => Column::Consent,
            "birth_date" => Column::BirthDate,
            "segment" => Column::Segment,
            _ => Column::Field {
                name: Arc::from(name.as_str()),
                required: options.required_fields.contains(&name),
            },
        };
        let key = match column {
            Column::Field { .. } => name.clone(),
            _ => lower,
        };
        if let Some(first) = known.insert(key, index) {
            return Err(ContactsError::DuplicateColumn {
                line,
                column: name,
                first,
                second: index,
            });
        }
        names.push(name);
        columns.push(column);
    }
    for required in REQUIRED_COLUMNS {
        if known.contains_key(required) || (required == "timezone" && options.default_tz.is_some())
        {
            continue;
        }
        let near = names
            .iter()
            .find(|n| {
                let n = n.to_ascii_lowercase().replace([' ', '-'], "_");
                n == required || n.trim_end_matches('s') == required.trim_end_matches('s')
            })
            .map(|n| format!(" (found '{}'; rename it to '{required}')", printable(n)))
            .unwrap_or_else(|| {
                format!(
                    "; the header must name the columns {} (found: {})",
                    REQUIRED_COLUMNS.join(", "),
                    names
                        .iter()
                        .map(|n| printable(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        return Err(ContactsError::MissingColumn {
            line,
            column: required.to_string(),
            hint: near,
        });
    }
    missing_fields(&names, &options.required_fields, line)?;
    Ok(Layout { columns, names })
}

/// Time zones by name, and the problem with unknown names: a file repeats a handful of zones
/// (or of misspellings) a million times.
#[derive(Default)]
struct ZoneCache {
    zones: HashMap<String, Result<Tz, String>>,
}

impl ZoneCache {
    fn get(&mut self, name: &str) -> Result<Tz, String> {
        if let Some(found) = self.zones.get(name) {
            return found.clone();
        }
        let found = name.parse::<Tz>().map_err(|_| {
            let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()))
                .map(|s| format!("did you mean '{s}'?"))
                .unwrap_or_else(|| {
                    "use an IANA name such as America/New_York or Europe/London".to_string()
                });
            format!("unknown time zone '{}' ({hint})", printable(name))
        });
        if self.zones.len() < 4096 {
            self.zones.insert(name.to_string(), found.clone());
        }
        found
    }
}

fn parse_row(
    record: &csv::ByteRecord,
    layout: &Layout,
    options: &ImportOptions,
    zones: &mut ZoneCache,
    line: u64,
) -> Result<ContactRow, BadRow> {
    let bad = |column: Option<&str>, reason: String| BadRow {
        line,
        column: column.map(str::to_string),
        reason,
    };
    if record.as_slice().len() > MAX_ROW_BYTES {
        return Err(bad(
            None,
            format!("the row is longer than {} KiB", MAX_ROW_BYTES / 1024),
        ));
    }
    if record.len() != layout.columns.len() {
        return Err(bad(
            None,
            format!(
                "has {} field{} but the header has {} columns (a missing or extra comma, or an \
                 unclosed quote?)",
                record.len(),
                if record.len() == 1 { "" } else { "s" },
                layout.columns.len()
            ),
        ));
    }
    let mut customer_id = None;
    let mut phone = None;
    let mut tz = None;
    let mut consent = None;
    let mut birth_date = None;
    let mut segment = None;
    let mut fields = Vec::new();
    for ((raw, column), name) in record.iter().zip(&layout.columns).zip(&layout.names) {
        let value = std::str::from_utf8(raw)
            .map_err(|_| {
                bad(
                    Some(name),
                    "not valid UTF-8 (save the file as UTF-8)".into(),
                )
            })?
            .trim();
        match column {
            Column::CustomerId => {
                customer_id = Some(customer_id_value(value).map_err(|r| bad(Some(name), r))?)
            }
            Column::Phone => phone = Some(normalize_phone(value).map_err(|r| bad(Some(name), r))?),
            Column::Timezone => {
                if !value.is_empty() {
                    tz = Some(zones.get(value).map_err(|r| bad(Some(name), r))?);
                }
            }
            Column::Consent => {
                consent = parse_consent(value).map_err(|r| bad(Some(name), r))?;
            }
            Column::BirthDate => {
                if !value.is_empty() {
                    birth_date = Some(parse_iso_date(value).ok_or_else(|| {
                        bad(
                            Some(name),
                            format!(
                                "'{}' is not a date in the form YYYY-MM-DD",
                                printable(value)
                            ),
                        )
                    })?);
                }
            }
            Column::Segment => {
                if !value.is_empty() {
                    segment = Some(value.to_string());
                }
            }
            Column::Field { name, required } => {
                if *required && value.is_empty() {
                    return Err(bad(
                        Some(name),
                        "is empty, but the message template uses it".into(),
                    ));
                }
                fields.push((Arc::clone(name), value.to_string()));
            }
        }
    }
    let tz = tz.or(options.default_tz).ok_or_else(|| {
        bad(
            Some("timezone"),
            "is empty (give the callee's IANA time zone, or set default_timezone in the campaign)"
                .into(),
        )
    })?;
    // The header check guarantees both columns exist.
    let (Some(customer_id), Some(phone)) = (customer_id, phone) else {
        return Err(bad(None, "customer_id or phone column missing".into()));
    };
    Ok(ContactRow {
        customer_id,
        phone,
        tz,
        consent,
        birth_date,
        segment,
        fields,
        line,
    })
}

fn customer_id_value(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.chars().count() > MAX_CUSTOMER_ID_CHARS {
        return Err(format!("is longer than {MAX_CUSTOMER_ID_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "'{}' contains control characters",
            printable(value)
        ));
    }
    Ok(value.to_string())
}

/// Normalises a phone number to E.164 (`+` and 8 to 15 digits), dropping spaces, dashes,
/// dots and parentheses.
pub fn normalize_phone(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("is empty".into());
    }
    let Some(rest) = value.strip_prefix('+') else {
        return Err(format!(
            "'{}' does not start with + and the country code (E.164, e.g. +12125550100)",
            printable(value)
        ));
    };
    let mut out = String::with_capacity(16);
    out.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => {
                if out.len() > 16 {
                    return Err(format!(
                        "'{}' has more than 15 digits (E.164 allows 8 to 15 after the +)",
                        printable(value)
                    ));
                }
                out.push(c);
            }
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(format!(
                    "'{}' contains '{}'; a phone number has only digits after the + \
                     (spaces, dashes, dots and parentheses are ignored)",
                    printable(value),
                    c.escape_default()
                ))
            }
        }
    }
    let digits = out.len() - 1;
    if !(8..=15).contains(&digits) {
        return Err(format!(
            "'{}' has {digits} digit{}; E.164 numbers have 8 to 15 after the +",
            printable(value),
            if digits == 1 { "" } else { "s" }
        ));
    }
    if out.as_bytes().get(1) == Some(&b'0') {
        return Err(format!(
            "'{}': country codes do not start with 0",
            printable(value)
        ));
    }
    Ok(out)
}

/// `yes/no/true/false/1/0/y/n` in any case; empty means unknown.
pub fn parse_consent(value: &str) -> Result<Option<bool>, String> {
    match value.to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "yes" | "y" | "true" | "1" => Ok(Some(true)),
        "no" | "n" | "false" | "0" => Ok(Some(false)),
        _ => Err(format!(
            "'{}' is not yes/no (use yes, no, true, false, 1 or 0; empty for unknown)",
            printable(value)
        )),
    }
}

/// Strictly `YYYY-MM-DD`.
pub fn parse_iso_date(value: &str) -> Option<NaiveDate> {
    let b = value.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = value.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn import(
        text: &str,
        options: &ImportOptions,
    ) -> (Vec<ContactRow>, Vec<BadRow>, ImportSummary) {
        let mut rows = Vec::new();
        let mut bad = Vec::new();
        let summary = read_contacts_with(
            text.as_bytes(),
            options,
            |row| {
                rows.push(row);
                Ok::<(), Infallible>(())
            },
            |b| bad.push(b),
        )
        .unwrap_or_else(|e| panic!("import failed: {e}"));
        (rows, bad, summary)
    }

    fn import_err(text: &str, options: &ImportOptions) -> ContactsError {
        let mut rows = 0;
        match read_contacts_with(
            text.as_bytes(),
            options,
            |_| {
                rows += 1;
                Ok::<(), Infallible>(())
            },
            |_| {},
        ) {
            Ok(s) => panic!("expected an error, imported {s:?}"),
            Err(e) => {
                assert_eq!(rows, 0, "nothing is imported on a header error");
                e
            }
        }
    }

    #[test]
    fn good_rows_import_with_every_column() {
        let text = "\u{feff}customer_id,phone,timezone,consent,birth_date,segment,name,amount\n\
                    c1,+1 212-555-0100,America/New_York,yes,1980-02-29,gold,Ann,$10\n\
                    c2,+44 (20) 7946.0958,Europe/London,,,,\"Bob, Jr.\",£5\n";
        let (rows, bad, summary) = import(text, &ImportOptions::default());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(summary.rows, 2);
        assert_eq!(summary.imported, 2);
        assert_eq!(summary.header[0], "customer_id", "BOM stripped");
        let a = &rows[0];
        assert_eq!(a.customer_id, "c1");
        assert_eq!(a.phone, "+12125550100");
        assert_eq!(a.tz, chrono_tz::America::New_York);
        assert_eq!(a.consent, Some(true));
        assert_eq!(a.birth_date, NaiveDate::from_ymd_opt(1980, 2, 29));
        assert_eq!(a.segment.as_deref(), Some("gold"));
        assert_eq!(a.field("name"), Some("Ann"));
        assert_eq!(a.field("amount"), Some("$10"));
        assert_eq!(a.line, 2);
        let b = &rows[1];
        assert_eq!(b.phone, "+442079460958");
        assert_eq!(
            (b.consent, b.birth_date, b.segment.as_deref()),
            (None, None, None)
        );
        assert_eq!(b.field("name"), Some("Bob, Jr."));
        assert_eq!(b.line, 3);
    }

    #[test]
    fn bad_rows_are_reported_with_line_and_column_and_skipped() {
        let text = "customer_id,phone,timezone,consent,birth_date,name\n\
                    c1,+12125550100,America/New_York,yes,,Ann\n\
                    c2,2125550100,America/New_York,,,Bob\n\
                    c3,+12125550101,America/New_Yrok,,,Cy\n\
                    c4,+12125550102,Europe/London,maybe,,Di\n\
                    c5,+12125550103,Europe/London,,1980-13-01,Ed\n\
                    c6,+12125550104,Europe/London,,\n\
                    ,+12125550105,Europe/London,,,Fay\n\
                    c1,+12125550106,Europe/London,,,Gus\n\
                    c7,+1212,Europe/London,,,Hal\n\
                    c8,+1 212 555 0107 x2,Europe/London,,,Ida\n\
                    c9,+12125550108,Asia/Shanghai,no,,Jo\n";
        let (rows, bad, summary) = import(text, &ImportOptions::default());
        let shown: Vec<String> = bad.iter().map(ToString::to_string).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.customer_id.as_str()).collect();
        assert_eq!(ids, ["c1", "c9"], "{shown:#?}");
        assert_eq!(summary.rows, 11);
        assert_eq!(
            (summary.imported, summary.bad, summary.duplicates),
            (2, 8, 1)
        );
        let expect = [
            (3, Some("phone"), "does not start with +"),
            (
                4,
                Some("timezone"),
                "unknown time zone 'America/New_Yrok' (did you mean 'America/New_York'?)",
            ),
            (5, Some("consent"), "'maybe' is not yes/no"),
            (6, Some("birth_date"), "'1980-13-01' is not a date"),
            (7, None, "has 5 fields but the header has 6 columns"),
            (8, Some("customer_id"), "is empty"),
            (
                9,
                Some("customer_id"),
                "duplicate customer_id 'c1' (first at line 2",
            ),
            (10, Some("phone"), "has 4 digits"),
            (11, Some("phone"), "contains 'x'"),
        ];
        assert_eq!(bad.len(), expect.len(), "{shown:#?}");
        for (b, (line, column, needle)) in bad.iter().zip(expect) {
            assert_eq!(b.line, line, "{b}");
            assert_eq!(b.column.as_deref(), column, "{b}");
            assert!(b.reason.contains(needle), "{b}");
        }
        assert_eq!(
            shown[0],
            "line 3: phone: '2125550100' does not start with + and the country code (E.164, e.g. +12125550100)"
        );
    }

    #[test]
    fn line_numbers_count_quoted_multi_line_fields_and_blank_lines() {
        let text = "customer_id,phone,timezone,note\r\n\
                    c1,+12125550100,Europe/London,\"two\r\nlines\"\r\n\
                    \r\n\
                    c2,bad,Europe/London,x\r\n\
                    c3,+12125550101,Europe/London,\"a\nb\nc\"\n\
                    c4,+1,Europe/London,y\n";
        let (rows, bad, _) = import(text, &ImportOptions::default());
        assert_eq!(rows[0].field("note"), Some("two\r\nlines"));
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 6);
        let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [5, 9]);
    }

    #[test]
    fn header_problems_stop_the_import() {
        let opts = ImportOptions::default();
        let e = import_err(
            "customer_id,Phone Number,timezone\nc1,+12125550100,UTC\n",
            &opts,
        );
        assert_eq!(
            e.to_string(),
            "line 1: the header has no 'phone' column; the header must name the columns \
             customer_id, phone, timezone (found: customer_id, Phone Number, timezone)"
        );
        let e = import_err("customer_ids,phone,timezone\n", &opts);
        assert!(
            e.to_string().contains(
                "no 'customer_id' column (found 'customer_ids'; rename it to 'customer_id')"
            ),
            "{e}"
        );
        let e = import_err("customer_id,phone,timezone,name,name\n", &opts);
        assert_eq!(
            e.to_string(),
            "line 1: column 'name' appears twice (columns 4 and 5)"
        );
        let e = import_err("customer_id,phone,Phone,timezone\n", &opts);
        assert!(matches!(e, ContactsError::DuplicateColumn { .. }), "{e}");
        let e = import_err("customer_id,,phone,timezone\n", &opts);
        assert_eq!(e.to_string(), "line 1: column 2 has no name");
        let e = import_err("", &opts);
        assert!(matches!(e, ContactsError::Empty));
        let e = import_err("\r\n\ncustomer_id,timezone\n", &opts);
        assert!(
            e.to_string()
                .starts_with("line 3: the header has no 'phone' column"),
            "{e}"
        );
        let e = read_header(&b"customer_id,ph\xffone,timezone\n"[..], &opts).unwrap_err();
        assert!(
            matches!(e, ContactsError::HeaderEncoding { index: 2, .. }),
            "{e}"
        );
        let opts = ImportOptions {
            default_tz: None,
            required_fields: vec!["name".into(), "amount".into()],
        };
        let e = import_err("customer_id,phone,timezone,name\n", &opts);
        assert_eq!(
            e.to_string(),
            "line 1: the message template uses a field that the header does not have: 'amount'"
        );
    }

    #[test]
    fn known_columns_ignore_case_and_default_timezone_fills_gaps() {
        let opts = ImportOptions {
            default_tz: Some(chrono_tz::Europe::Paris),
            required_fields: vec!["Name".into()],
        };
        let (rows, bad, _) = import(
            "Customer_ID , PHONE,Name\nc1,+33123456789,Zoé\nc2,+33123456788,\n",
            &opts,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tz, chrono_tz::Europe::Paris);
        assert_eq!(rows[0].field("Name"), Some("Zoé"));
        assert_eq!(
            bad[0].to_string(),
            "line 3: Name: is empty, but the message template uses it"
        );
        let opts = ImportOptions {
            default_tz: Some(chrono_tz::Europe::Paris),
            required_fields: vec![],
        };
        let (rows, _, _) = import(
            "customer_id,phone,timezone\nc1,+33123456789,\nc2,+33123456788,Asia/Tokyo\n",
            &opts,
        );
        assert_eq!(rows[0].tz, chrono_tz::Europe::Paris);
        assert_eq!(rows[1].tz, chrono_tz::Asia::Tokyo);
        // Without a default, an empty time zone is a bad row.
        let (_, bad, _) = import(
            "customer_id,phone,timezone\nc1,+33123456789,\n",
            &ImportOptions::default(),
        );
        assert_eq!(bad[0].column.as_deref(), Some("timezone"));
    }

    #[test]
    fn invalid_utf8_and_oversized_rows_are_bad_rows() {
        let mut text = b"customer_id,phone,timezone,name\nc1,+12125550100,UTC,Ca\xe9\n".to_vec();
        text.extend_from_slice(b"c2,+12125550101,UTC,");
        text.extend(std::iter::repeat_n(b'a', MAX_ROW_BYTES + 1));
        text.extend_from_slice(b"\nc3,+12125550102,UTC,ok\n");
        let mut rows = Vec::new();
        let mut bad = Vec::new();
        read_contacts(
            text.as_slice(),
            |r| {
                rows.push(r);
                Ok::<(), Infallible>(())
            },
            |b| bad.push(b),
        )
        .expect("import");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            bad[0].to_string(),
            "line 2: name: not valid UTF-8 (save the file as UTF-8)"
        );
        assert!(bad[1].reason.contains("longer than 64 KiB"), "{}", bad[1]);
    }

    #[test]
    fn a_failing_sink_stops_the_import_at_that_line() {
        let text = "customer_id,phone,timezone\nc1,+12125550100,UTC\nc2,+12125550101,UTC\nc3,+12125550102,UTC\n";
        let mut seen = 0;
        let err = read_contacts(
            text.as_bytes(),
            |row| {
                seen += 1;
                if row.customer_id == "c2" {
                    Err(std::io::Error::other("database is gone"))
                } else {
                    Ok(())
                }
            },
            |_| {},
        )
        .unwrap_err();
        assert_eq!(seen, 2);
        assert_eq!(
            err.to_string(),
            "import stopped at line 3: database is gone"
        );
    }

    #[test]
    fn template_fields_are_checked_against_the_header() {
        let header: Vec<String> = ["customer_id", "phone", "timezone", "name", "amount"]
            .map(String::from)
            .to_vec();
        assert!(check_template_fields(&header, &["name".into(), "amount".into()]).is_ok());
        let err =
            check_template_fields(&header, &["name".into(), "expiry_date".into(), "x".into()])
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: the message template uses fields that the header does not have: 'expiry_date', 'x'"
        );
        let read = read_header("a,b\n".as_bytes(), &ImportOptions::default());
        assert!(matches!(read, Err(ContactsError::MissingColumn { .. })));
        let read = read_header(
            "customer_id,phone,timezone,name\n".as_bytes(),
            &ImportOptions::default(),
        )
        .expect("header");
        assert_eq!(read.len(), 4);
    }

    #[test]
    fn phone_consent_and_date_parsers() {
        assert_eq!(
            normalize_phone(" +86 138-0013-8000 ").as_deref(),
            Ok("+8613800138000")
        );
        assert_eq!(normalize_phone("+12345678").as_deref(), Ok("+12345678"));
        assert!(normalize_phone("+1234567").is_err(), "7 digits");
        assert!(normalize_phone("+1234567890123456").is_err(), "16 digits");
        assert!(normalize_phone(&format!("+1{}", "2".repeat(10_000))).is_err());
        assert!(normalize_phone("+012345678").is_err());
        assert!(normalize_phone("++12345678").is_err());
        assert!(normalize_phone("").is_err());
        for (v, want) in [
            ("YES", Some(true)),
            ("n", Some(false)),
            ("0", Some(false)),
            ("", None),
        ] {
            assert_eq!(parse_consent(v), Ok(want), "{v}");
        }
        assert!(parse_consent("2").is_err());
        assert_eq!(
            parse_iso_date("2026-11-20"),
            NaiveDate::from_ymd_opt(2026, 11, 20)
        );
        for bad in [
            "2026-1-20",
            "2026/11/20",
            "2026-02-30",
            "20261120xx",
            "+026-11-20",
            "２０２６-11-20",
        ] {
            assert_eq!(parse_iso_date(bad), None, "{bad}");
        }
    }

    /// A contacts file of `n` rows in a few time zones, for throughput tests.
    pub(crate) fn generate_csv(n: usize) -> String {
        const ZONES: [&str; 4] = [
            "America/New_York",
            "Europe/London",
            "Asia/Shanghai",
            "America/Los_Angeles",
        ];
        let mut out = String::with_capacity(n * 96 + 128);
        out.push_str("customer_id,phone,timezone,consent,segment,name,amount,expiry_date\n");
        for i in 0..n {
            out.push_str(&format!(
                "C{i:08},+1 212 {:03}-{:04},{},{},{},Customer {i},${}.00,2026-12-{:02}\n",
                (i / 10_000) % 1000,
                i % 10_000,
                ZONES[i % ZONES.len()],
                if i % 3 == 0 { "yes" } else { "" },
                if i % 2 == 0 { "gold" } else { "silver" },
                i % 500,
                1 + i % 28,
            ));
        }
        out
    }

    #[test]
    fn ten_thousand_generated_rows_import_and_report_the_rate() {
        let text = generate_csv(10_000);
        let options = ImportOptions {
            default_tz: None,
            required_fields: vec!["name".into(), "amount".into(), "expiry_date".into()],
        };
        let started = std::time::Instant::now();
        let mut last = None;
        let mut count = 0u64;
        let summary = read_contacts_with(
            text.as_bytes(),
            &options,
            |row| {
                count += 1;
                last = Some(row);
                Ok::<(), Infallible>(())
            },
            |b| panic!("unexpected bad row {b}"),
        )
        .expect("import");
        let elapsed = started.elapsed();
        assert_eq!(
            (summary.rows, summary.imported, count),
            (10_000, 10_000, 10_000)
        );
        let last = last.expect("rows");
        assert_eq!(last.customer_id, "C00009999");
        assert_eq!(last.phone, "+12120009999");
        assert_eq!(last.line, 10_001);
        assert_eq!(last.tz, chrono_tz::America::Los_Angeles);
        assert_eq!(last.field("expiry_date"), Some("2026-12-04"));
        let rate = 10_000.0 / elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "contacts import: 10000 rows ({} bytes) in {:.1} ms = {:.0} rows/s",
            text.len(),
            elapsed.as_secs_f64() * 1e3,
            rate
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        prop_compose! {
            /// (note cell as written, CRLF?, blank lines before, phone valid?)
            fn arb_record()(
                note in proptest::sample::select(vec!["x", "\"a\nb\"", "\"a\r\nb\r\n\"", "\"\"", "\"q\"\"\n\"", ""]),
                crlf in any::<bool>(),
                blanks in proptest::sample::select(vec!["", "", "\n", "\r\n", "\n\r\n"]),
                valid in proptest::bool::weighted(0.8),
            ) -> (&'static str, bool, &'static str, bool) {
                (note, crlf, blanks, valid)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn line_numbers_match_an_independent_count(
                bom in any::<bool>(),
                records in proptest::collection::vec(arb_record(), 1..12),
            ) {
                let mut text = String::new();
                if bom { text.push('\u{feff}'); }
                text.push_str("customer_id,phone,timezone,note\r\n");
                let mut want_good = Vec::new();
                let mut want_bad = Vec::new();
                for (i, (note, crlf, blanks, valid)) in records.iter().enumerate() {
                    text.push_str(blanks);
                    let line = text.matches('\n').count() as u64 + 1;
                    if *valid { want_good.push(line) } else { want_bad.push(line) }
                    let phone = if *valid { "+12125550100" } else { "555" };
                    text.push_str(&format!("c{i},{phone},UTC,{note}{}", if *crlf { "\r\n" } else { "\n" }));
                }
                let (rows, bad, _) = import(&text, &ImportOptions::default());
                let good: Vec<u64> = rows.iter().map(|r| r.line).collect();
                let bad: Vec<u64> = bad.iter().map(|b| b.line).collect();
                prop_assert_eq!(good, want_good, "{:?}", text);
                prop_assert_eq!(bad, want_bad, "{:?}", text);
            }

            #[test]
            fn random_bytes_never_panic_and_lines_are_in_range(
                body in proptest::collection::vec(
                    proptest::sample::select(b"abc,+123456789 \"\n\r\xff/_".to_vec()), 0..400)
            ) {
                let mut text = b"customer_id,phone,timezone,name\n".to_vec();
                text.extend(body);
                let lines = text.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                let mut problems = Vec::new();
                let mut rows = Vec::new();
                let result = read_contacts(text.as_slice(), |r| { rows.push(r); Ok::<(), Infallible>(()) },
                    |b| problems.push(b));
                let summary = result.expect("only the header can fail, and it is valid");
                prop_assert_eq!(summary.rows, summary.imported + summary.bad + summary.duplicates);
                for b in &problems { prop_assert!(b.line >= 2 && b.line <= lines, "{}", b); }
                for r in &rows {
                    prop_assert!(r.line >= 2 && r.line <= lines);
                    prop_assert!(r.phone.starts_with('+') && (9..=16).contains(&r.phone.len()));
                }
            }
        }
    }
}
