//! Who is calling: the customer source that turns a caller's number into a [`CallerProfile`].
//!
//! Two sources, used alone or together:
//! - a CSV file loaded into memory ([`CustomerTable`]), keyed by the normalised number; the
//!   shell reloads it by calling [`CustomerTable::load`] again and swapping the table;
//! - an HTTP hook into the bank's systems ([`HttpHook`]), asked first when configured, with a
//!   short timeout; when it fails the CSV table (or nothing) answers and the status says
//!   [`LookupStatus::Fallback`].
//!
//! Ages are whole years on the call's date in the configured time zone; a source may give an age
//! or a birth date (a 29 February birthday counts from 1 March in common years).
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::ivr::caller::{CallerProfile, LookupStatus};
use crate::store::normalise_number;

/// Columns a customers file must have.
pub const REQUIRED_COLUMNS: [&str; 2] = ["number", "customer_id"];
/// Columns read when present; others are ignored.
pub const OPTIONAL_COLUMNS: [&str; 6] = [
    "name",
    "birth_date",
    "age",
    "segment",
    "language",
    "open_complaint",
];
/// Oldest age accepted from a source; anything above is a typo.
pub const MAX_AGE: u32 = 130;
/// Row problems kept word for word in a [`LoadReport`]; the rest are only counted.
pub const MAX_REPORTED_ROWS: usize = 50;
/// Largest hook response read; a bigger one is a misconfigured URL.
pub const MAX_HOOK_BODY: usize = 64 * 1024;
/// Where the number goes in the hook URL.
pub const NUMBER_PLACEHOLDER: &str = "{number}";

#[derive(Debug, thiserror::Error)]
pub enum CustomersError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: missing column '{header}' in the header line (found: {found}; required: number, \
         customer_id)",
        path.display()
    )]
    MissingHeader {
        path: PathBuf,
        header: &'static str,
        found: String,
    },
    #[error("{}: header line: {why}", path.display())]
    BadHeader { path: PathBuf, why: String },
    #[error("customer hook URL \"{url}\": {why}")]
    BadUrl { url: String, why: String },
    #[error("customer hook: cannot set up TLS: {0}")]
    Tls(String),
}

/// Why the HTTP hook gave no usable answer (the lookup then falls back).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response is not a customer record: {0}")]
    BadResponse(String),
}

/// One customer as the CSV file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRecord {
    pub customer_id: String,
    pub name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    /// Used when there is no birth date.
    pub age: Option<u32>,
    /// Lower-cased.
    pub segment: Option<String>,
    pub language: Option<String>,
    pub open_complaint: bool,
    /// Line in the file, for messages about duplicates.
    pub line: u64,
}

impl CustomerRecord {
    /// The profile on `date` (the call's local date).
    pub fn profile_on(&self, date: NaiveDate) -> CallerProfile {
        CallerProfile {
            customer_id: Some(self.customer_id.clone()),
            name: self.name.clone(),
            age: match self.birth_date {
                Some(b) => age_on(b, date),
                None => self.age,
            },
            segment: self.segment.clone(),
            language: self.language.clone(),
            open_complaint: self.open_complaint,
        }
    }
}

/// Whole years from `birth` to `date`; `None` for a birth date after `date`.
pub fn age_on(birth: NaiveDate, date: NaiveDate) -> Option<u32> {
    date.years_since(birth)
}

/// A rejected row: `file.csv:line N: column: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub column: String,
    pub why: String,
}

/// What a load did, for the log at start-up and after each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub path: PathBuf,
    pub loaded: usize,
    /// Rows skipped; the first [`MAX_REPORTED_ROWS`] are in `errors`.
    pub bad_rows: usize,
    pub errors: Vec<RowError>,
}

impl LoadReport {
    /// Each kept row problem as `file.csv:line N: column: why`.
    pub fn messages(&self) -> impl Iterator<Item = String> + '_ {
        self.errors.iter().map(|e| {
            format!(
                "{}:line {}: {}: {}",
                self.path.display(),
                e.line,
                e.column,
                e.why
            )
        })
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} customers loaded, {} bad rows skipped",
            self.path.display(),
            self.loaded,
            self.bad_rows
        )
    }
}

/// The customers file in memory, keyed by normalised number.
#[derive(Debug, Clone, Default)]
pub struct CustomerTable {
    path: PathBuf,
    by_number: HashMap<String, CustomerRecord>,
}

impl CustomerTable {
    /// Reads a customers CSV file. Bad rows are skipped and listed in the report; only an
    /// unreadable file or a header without the required columns fails.
    pub fn load(path: &Path) -> Result<(CustomerTable, LoadReport), CustomersError> {
        let file = std::fs::File::open(path).map_err(|source| CustomersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(path, std::io::BufReader::new(file))
    }

    /// As [`CustomerTable::load`], from any reader; `path` names it in messages.
    pub fn from_reader<R: Read>(
        path: &Path,
        reader: R,
    ) -> Result<(CustomerTable, LoadReport), CustomersError> {
        let io_err = |e: csv::Error| match e.into_kind() {
            csv::ErrorKind::Io(source) => CustomersError::Io {
                path: path.to_path_buf(),
                source,
            },
            other => CustomersError::BadHeader {
                path: path.to_path_buf(),
                why: format!("{other:?}"),
            },
        };
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(LineCounter::new(reader));
        let header: Vec<String> = rdr
            .byte_headers()
            .map_err(io_err)?
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_ascii_lowercase())
            .collect();
        let column = |name: &str| header.iter().position(|h| h == name);
        let mut cols = Columns::default();
        for name in REQUIRED_COLUMNS {
            if column(name).is_none() {
                return Err(CustomersError::MissingHeader {
                    path: path.to_path_buf(),
                    header: name,
                    found: if header.iter().all(String::is_empty) {
                        "an empty line".into()
                    } else {
                        header.join(", ")
                    },
                });
            }
        }
        cols.number = column("number").unwrap_or(0);
        cols.customer_id = column("customer_id").unwrap_or(0);
        cols.name = column("name");
        cols.birth_date = column("birth_date");
        cols.age = column("age");
        cols.segment = column("segment");
        cols.language = column("language");
        cols.open_complaint = column("open_complaint");

        let mut table = CustomerTable {
            path: path.to_path_buf(),
            by_number: HashMap::new(),
        };
        let mut report = LoadReport {
            path: path.to_path_buf(),
            loaded: 0,
            bad_rows: 0,
            errors: Vec::new(),
        };
        let reject = |report: &mut LoadReport, e: RowError| {
            report.bad_rows = report.bad_rows.saturating_add(1);
            if report.errors.len() < MAX_REPORTED_ROWS {
                report.errors.push(e);
            }
        };
        let mut record = csv::ByteRecord::new();
        loop {
            match rdr.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    match e.into_kind() {
                        csv::ErrorKind::Io(source) => {
                            return Err(CustomersError::Io {
                                path: path.to_path_buf(),
                                source,
                            })
                        }
                        other => {
                            reject(
                                &mut report,
                                RowError {
                                    line,
                                    column: "row".into(),
                                    why: format!("{other:?}"),
                                },
                            );
                            continue;
                        }
                    }
                }
            }
            // csv's own line numbers skip blank lines; count newlines before the record instead.
            let line = match record.position() {
                Some(p) => rdr.get_mut().line_at(p.byte()),
                None => 0,
            };
            if record.iter().all(|f| f.is_empty()) {
                continue; // blank line
            }
            match parse_row(&record, &header, &cols, line) {
                Ok((number, rec)) => {
                    if let Some(first) = table.by_number.get(&number) {
                        reject(
                            &mut report,
                            RowError {
                                line,
                                column: "number".into(),
                                why: format!(
                                    "{number} is already on line {} (the first row is kept)",
                                    first.line
                                ),
                            },
                        );
                    } else {
                        table.by_number.insert(number, rec);
                        report.loaded = report.loaded.saturating_add(1);
                    }
                }
                Err(e) => reject(&mut report, e),
            }
        }
        Ok((table, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    /// The record for a number written any way (`+1 555 0100`, `sip:+15550100@pbx`).
    pub fn get(&self, raw_number: &str) -> Option<&CustomerRecord> {
        self.by_number.get(&normalise_number(raw_number))
    }
}

/// Passes bytes through and remembers where lines with content start, so a record's line can
/// be told from its byte offset (asked in increasing order). csv places a record at the end of
/// the previous one, before any line break and blank lines, so the record's line is that of
/// the first content at or after its offset.
struct LineCounter<R> {
    inner: R,
    /// Bytes read so far.
    read: u64,
    /// Newlines read so far.
    newlines: u64,
    /// The last byte read ended a line (or nothing was read yet).
    at_line_start: bool,
    /// (offset, 1-based line) of the first content byte of lines not yet asked about.
    starts: std::collections::VecDeque<(u64, u64)>,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        LineCounter {
            inner,
            read: 0,
            newlines: 0,
            at_line_start: true,
            starts: std::collections::VecDeque::new(),
        }
    }

    fn line_at(&mut self, offset: u64) -> u64 {
        while self.starts.front().is_some_and(|&(at, _)| at < offset) {
            self.starts.pop_front();
        }
        self.starts
            .front()
            .map_or(self.newlines.saturating_add(1), |&(_, line)| line)
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for b in buf.iter().take(n) {
            let at = self.read;
            self.read = at.saturating_add(1);
            match b {
                b'\n' => {
                    self.newlines = self.newlines.saturating_add(1);
                    self.at_line_start = true;
                }
                b'\r' => self.at_line_start = true,
                _ => {
                    if self.at_line_start {
                        self.starts.push_back((at, self.newlines.saturating_add(1)));
                    }
                    self.at_line_start = false;
                }
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Default)]
struct Columns {
    number: usize,
    customer_id: usize,
    name: Option<usize>,
    birth_date: Option<usize>,
    age: Option<usize>,
    segment: Option<usize>,
    language: Option<usize>,
    open_complaint: Option<usize>,
}

fn parse_row(
    record: &csv::ByteRecord,
    header: &[String],
    cols: &Columns,
    line: u64,
) -> Result<(String, CustomerRecord), RowError> {
    let fail = |col: usize, why: String| RowError {
        line,
        column: header.get(col).cloned().unwrap_or_default(),
        why,
    };
    // The text of a column, `None` when the column is absent, short or empty.
    let text = |col: Option<usize>| -> Result<Option<&str>, RowError> {
        let Some(col) = col else { return Ok(None) };
        match record.get(col) {
            None => Ok(None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok("") => Ok(None),
                Ok(s) => Ok(Some(s)),
                Err(_) => Err(fail(col, "not valid UTF-8".into())),
            },
        }
    };
    let raw = text(Some(cols.number))?.ok_or_else(|| fail(cols.number, "empty".into()))?;
    let number = normalise_number(raw);
    if !number.chars().any(|c| c.is_ascii_digit()) {
        return Err(fail(cols.number, format!("\"{raw}\" has no digits")));
    }
    let customer_id = text(Some(cols.customer_id))?
        .ok_or_else(|| fail(cols.customer_id, "empty".into()))?
        .to_string();
    let birth_date = match text(cols.birth_date)? {
        None => None,
        Some(s) => Some(NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
            fail(
                cols.birth_date.unwrap_or(0),
                format!("\"{s}\" is not a date like 1950-04-30"),
            )
        })?),
    };
    let age = match text(cols.age)? {
        None => None,
        Some(s) => Some(parse_age(s).map_err(|why| fail(cols.age.unwrap_or(0), why))?),
    };
    let open_complaint = match text(cols.open_complaint)? {
        None => false,
        Some(s) => parse_flag(s).ok_or_else(|| {
            fail(
                cols.open_complaint.unwrap_or(0),
                format!("\"{s}\" is not true/false, yes/no or 1/0"),
            )
        })?,
    };
    Ok((
        number,
        CustomerRecord {
            customer_id,
            name: text(cols.name)?.map(str::to_string),
            birth_date,
            age,
            segment: text(cols.segment)?.map(str::to_lowercase),
            language: text(cols.language)?.map(str::to_string),
            open_complaint,
            line,
        },
    ))
}

fn parse_age(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(a) if a <= MAX_AGE => Ok(a),
        _ => Err(format!(
            "\"{s}\" is not an age (a whole number 0..={MAX_AGE})"
        )),
    }
}

/// `true/false`, `yes/no`, `1/0`, any case.
fn parse_flag(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP hook
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookMethod {
    /// `GET <url with {number}>`.
    #[default]
    Get,
    /// `POST <url>` with `{"number": "+15550100001"}`.
    Post,
}

/// Asks the bank's customer service about a number. Clones share one connection pool.
#[derive(Clone)]
pub struct HttpHook {
    template: String,
    method: HookMethod,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for HttpHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHook")
            .field("template", &self.template)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpHook {
    /// `template` is an `http://` or `https://` URL; `{number}` in it is replaced by the
    /// normalised number, percent-encoded (required for GET).
    pub fn new(
        template: &str,
        method: HookMethod,
        timeout: Duration,
    ) -> Result<HttpHook, CustomersError> {
        let bad = |why: &str| CustomersError::BadUrl {
            url: template.to_string(),
            why: why.to_string(),
        };
        if method == HookMethod::Get && !template.contains(NUMBER_PLACEHOLDER) {
            return Err(bad("a GET hook needs {number} in the URL"));
        }
        let uri: Uri = template
            .replace(NUMBER_PLACEHOLDER, "%2B15550100001")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| {
                bad(&format!("{e} (use an http:// or https:// URL with a host)"))
            })?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            return Err(bad("use an http:// or https:// URL with a host"));
        }
        let tls =
            native_tls::TlsConnector::new().map_err(|e| CustomersError::Tls(e.to_string()))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = HttpsConnector::from((http, tokio_native_tls::TlsConnector::from(tls)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(HttpHook {
            template: template.to_string(),
            method,
            timeout,
            client,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL asked for `number` (already normalised).
    pub fn url_for(&self, number: &str) -> String {
        self.template
            .replace(NUMBER_PLACEHOLDER, &percent_encode(number))
    }

    /// `Ok(None)`: the service does not know the number (404, `null`, `{"found": false}` or no
    /// `customer_id`). `today` is the call's local date, for ages from birth dates.
    pub async fn fetch(
        &self,
        number: &str,
        today: NaiveDate,
    ) -> Result<Option<CallerProfile>, HookError> {
        match tokio::time::timeout(self.timeout, self.fetch_inner(number, today)).await {
            Ok(r) => r,
            Err(_) => Err(HookError::Timeout(self.timeout.as_millis())),
        }
    }

    async fn fetch_inner(
        &self,
        number: &str,
        today: NaiveDate,
    ) -> Result<Option<CallerProfile>, HookError> {
        let url = self.url_for(number);
        let builder = Request::builder()
            .uri(url.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "warmline");
        let request = match self.method {
            HookMethod::Get => builder.method(Method::GET).body(Full::new(Bytes::new())),
            HookMethod::Post => {
                let body = serde_json::json!({ "number": number }).to_string();
                builder
                    .method(Method::POST)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
            }
        }
        .map_err(|e| HookError::Request(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| HookError::Request(error_chain(&e)))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(HookError::Status(status.as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_HOOK_BODY)
            .collect()
            .await
            .map_err(|e| HookError::BadResponse(format!("reading the body: {e}")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| HookError::BadResponse(format!("not JSON: {e}")))?;
        profile_from_json(&value, today).map_err(HookError::BadResponse)
    }
}

/// The error and its causes on one line (hyper's errors say little at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Everything except unreserved characters (RFC 3986) as `%XX`, so `+` survives.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Maps the hook's JSON to a profile. Fields: `customer_id` (string or number; absent or null:
/// unknown caller), `name`, `age` or `birth_date`, `segment`, `language`, `open_complaint`
/// (bool, 0/1 or "yes"/"no"). `null` or `{"found": false}`: unknown caller.
pub fn profile_from_json(value: &Value, today: NaiveDate) -> Result<Option<CallerProfile>, String> {
    let obj = match value {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "expected a JSON object, found {}",
                json_kind(other)
            ))
        }
    };
    if obj.get("found") == Some(&Value::Bool(false)) {
        return Ok(None);
    }
    let customer_id = match obj.get("customer_id") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "customer_id must be a string or a number, found {}",
                json_kind(other)
            ))
        }
    };
    let string = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(other) => Err(format!(
                "{key} must be a string, found {}",
                json_kind(other)
            )),
        }
    };
    let age = match string("birth_date")? {
        Some(b) => {
            let birth = NaiveDate::parse_from_str(&b, "%Y-%m-%d")
                .map_err(|_| format!("birth_date \"{b}\" is not a date like 1950-04-30"))?;
            age_on(birth, today)
        }
        None => match obj.get("age") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|a| u32::try_from(a).ok())
                    .filter(|a| *a <= MAX_AGE)
                    .ok_or_else(|| format!("age {n} is not a whole number 0..={MAX_AGE}"))?,
            ),
            Some(Value::String(s)) => Some(parse_age(s.trim()).map_err(|e| format!("age: {e}"))?),
            Some(other) => return Err(format!("age must be a number, found {}", json_kind(other))),
        },
    };
    let open_complaint = match obj.get("open_complaint") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
            n.as_u64() == Some(1)
        }
        Some(Value::String(s)) => parse_flag(s)
            .ok_or_else(|| format!("open_complaint \"{s}\" is not true/false, yes/no or 1/0"))?,
        Some(other) => {
            return Err(format!(
                "open_complaint must be true or false, found {}",
                json_kind(other)
            ))
        }
    };
    Ok(Some(CallerProfile {
        customer_id: Some(customer_id),
        name: string("name")?,
        age,
        segment: string("segment")?.map(|s| s.to_lowercase()),
        language: string("language")?,
        open_complaint,
    }))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------

/// What answers when the hook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookFallback {
    /// The CSV table, if one is loaded.
    #[default]
    Csv,
    /// Nobody: the caller is treated as unknown.
    Unknown,
}

/// The configured lookup: time zone, optional hook and what to do when it fails. The CSV table
/// is passed to each lookup so the shell can swap it on reload.
#[derive(Debug, Clone)]
pub struct CustomerLookup {
    pub tz: Tz,
    pub hook: Option<HttpHook>,
    pub fallback: HookFallback,
}

impl CustomerLookup {
    /// Looks up the caller of a call that arrived at `at`. Never fails: problems are logged and
    /// show in the status.
    pub async fn lookup(
        &self,
        table: Option<&CustomerTable>,
        raw_number: &str,
        at: DateTime<Utc>,
    ) -> (CallerProfile, LookupStatus) {
        let today = at.with_timezone(&self.tz).date_naive();
        if self.hook.is_none() && table.is_none() {
            return (CallerProfile::default(), LookupStatus::Disabled);
        }
        let number = normalise_number(raw_number);
        if !number.chars().any(|c| c.is_ascii_digit()) {
            // Anonymous or withheld: nothing to ask about.
            return (CallerProfile::default(), LookupStatus::NotFound);
        }
        let from_table = |t: &CustomerTable| t.by_number.get(&number).map(|r| r.profile_on(today));
        let Some(hook) = &self.hook else {
            return match table.and_then(from_table) {
                Some(p) => (p, LookupStatus::Found),
                None => (CallerProfile::default(), LookupStatus::NotFound),
            };
        };
        match hook.fetch(&number, today).await {
            Ok(Some(p)) => (p, LookupStatus::Found),
            Ok(None) => (CallerProfile::default(), LookupStatus::NotFound),
            Err(e) => {
                let profile = match self.fallback {
                    HookFallback::Csv => table.and_then(from_table),
                    HookFallback::Unknown => None,
                };
                tracing::warn!(
                    url = %hook.url_for(&number),
                    error = %e,
                    fallback_found = profile.is_some(),
                    "customer hook failed; using the fallback"
                );
                (profile.unwrap_or_default(), LookupStatus::Fallback)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SAMPLE: &str = "\
number,customer_id,name,birth_date,age,segment,language,open_complaint
+1 (555) 010-0001,C1,Ada Lovelace,1950-02-28,,VIP,en,no
+15550100002,C2,Grace,,71,standard,en,TRUE
+15550100003,C3,,,,,,
";

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn table(text: &str) -> (CustomerTable, LoadReport) {
        CustomerTable::from_reader(Path::new("customers.csv"), text.as_bytes()).expect("loads")
    }

    #[test]
    fn loads_rows_keyed_by_normalised_number() {
        let (t, report) = table(SAMPLE);
        assert_eq!(
            (report.loaded, report.bad_rows),
            (3, 0),
            "{:?}",
            report.errors
        );
        assert_eq!(t.len(), 3);
        let ada = t.get("sip:+15550100001@trunk").expect("found by SIP URI");
        assert_eq!(ada.customer_id, "C1");
        assert_eq!(ada.segment.as_deref(), Some("vip"), "lower-cased");
        assert!(!ada.open_complaint);
        let p = ada.profile_on(date("2026-02-27"));
        assert_eq!(p.age, Some(75), "the day before the 76th birthday");
        assert_eq!(ada.profile_on(date("2026-02-28")).age, Some(76));
        let grace = t.get("+1 555 010 0002").expect("found");
        assert_eq!(grace.profile_on(date("2026-01-01")).age, Some(71));
        assert!(grace.open_complaint);
        let bare = t
            .get("+15550100003")
            .expect("found")
            .profile_on(date("2026-01-01"));
        assert_eq!(
            bare,
            CallerProfile {
                customer_id: Some("C3".into()),
                ..CallerProfile::default()
            }
        );
        assert!(t.get("+15550100009").is_none());
        assert_eq!(
            report.to_string(),
            "customers.csv: 3 customers loaded, 0 bad rows skipped"
        );
    }

    #[test]
    fn bad_rows_are_skipped_counted_and_placed() {
        let text = "\
Number , Customer_ID,age,birth_date,open_complaint,extra
+15550100001,C1,40,,yes,x
anonymous,C2,,,,
+15550100003,,,,,
+15550100004,C4,two,,,
+15550100005,C5,,30/04/1950,,
+15550100006,C6,,,maybe,
+1 555 010 0001,C7,,,,

+15550100008,C8,131,,,
+15550100009,C9
";
        let (t, report) = table(text);
        assert_eq!(t.len(), 2, "C1 and C9 load");
        assert_eq!(report.loaded, 2);
        assert_eq!(report.bad_rows, 7);
        let msgs: Vec<String> = report.messages().collect();
        let expect = [
            "customers.csv:line 3: number: \"anonymous\" has no digits",
            "customers.csv:line 4: customer_id: empty",
            "customers.csv:line 5: age: \"two\" is not an age (a whole number 0..=130)",
            "customers.csv:line 6: birth_date: \"30/04/1950\" is not a date like 1950-04-30",
            "customers.csv:line 7: open_complaint: \"maybe\" is not true/false, yes/no or 1/0",
            "customers.csv:line 8: number: +15550100001 is already on line 2 (the first row is kept)",
            "customers.csv:line 10: age: \"131\" is not an age (a whole number 0..=130)",
        ];
        assert_eq!(msgs, expect);
        assert_eq!(
            t.get("+15550100009").map(|r| r.age),
            Some(None),
            "short row"
        );
    }

    #[test]
    fn line_numbers_count_blank_lines_and_crlf() {
        let text = "number,customer_id,age\r\n\r\n+1555,C1,\r\n\r\n\r\n+1556,C2,x\r\n\"+1557\",\"C\r\n3\",y\r\n";
        let (t, report) = table(text);
        assert_eq!(t.len(), 1);
        let msgs: Vec<String> = report.messages().collect();
        assert_eq!(
            msgs,
            [
                "customers.csv:line 6: age: \"x\" is not an age (a whole number 0..=130)",
                "customers.csv:line 7: age: \"y\" is not an age (a whole number 0..=130)",
            ],
            "a quoted field spanning lines is placed at its first line"
        );
    }

    #[test]
    fn missing_header_names_it() {
        let err =
            CustomerTable::from_reader(Path::new("c.csv"), "phone,customer_id\n1,2\n".as_bytes())
                .expect_err("no number column");
        let s = err.to_string();
        assert!(s.starts_with("c.csv: missing column 'number'"), "{s}");
        assert!(s.contains("found: phone, customer_id"), "{s}");
        let err = CustomerTable::from_reader(Path::new("c.csv"), "number\n1\n".as_bytes())
            .expect_err("no id column");
        assert!(err.to_string().contains("'customer_id'"), "{err}");
        let err =
            CustomerTable::from_reader(Path::new("c.csv"), "".as_bytes()).expect_err("empty file");
        assert!(err.to_string().contains("found: an empty line"), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 6] = [
            b"number,customer_id\n\xff\xfe,\xc3\x28\n",
            b"number,customer_id\n\"unterminated,1\n",
            b"\xef\xbb\xbfnumber,customer_id\n+1555,C1\n",
            b"number,customer_id\n,,,,,,,,,,,,\n\n\n",
            b"number,number,customer_id\n1,2,3\n",
            b"number,customer_id\r\n+1555,C1\r\n+1556,\"C,2\"\r\n",
        ];
        for input in inputs {
            let r = CustomerTable::from_reader(Path::new("x.csv"), input);
            if let Ok((t, rep)) = r {
                assert!(t.len() + rep.bad_rows <= 3);
            }
        }
        // A UTF-8 byte-order mark does not hide the first column.
        let (t, _) = CustomerTable::from_reader(Path::new("x.csv"), inputs[2]).expect("bom");
        assert_eq!(t.len(), 1);
        let (t, rep) = CustomerTable::from_reader(Path::new("x.csv"), inputs[0]).expect("ok");
        assert_eq!((t.len(), rep.bad_rows), (0, 1));
    }

    #[test]
    fn the_shipped_sample_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let (t, report) = CustomerTable::load(&dir.join("customers.csv")).expect("sample loads");
        assert_eq!(report.bad_rows, 0, "{:?}", report.errors);
        assert!(t.len() >= 5);
        let (_, report) = CustomerTable::load(&dir.join("customers-bad.csv")).expect("loads");
        assert!(report.bad_rows >= 3, "{report}");
        let err = CustomerTable::load(&dir.join("customers-missing.csv")).expect_err("no file");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn hook_json_mapping() {
        let today = date("2026-11-22");
        let j = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        let p = profile_from_json(
            &j(
                r#"{"customer_id": 42, "name": "Ada", "birth_date": "1950-11-23",
                  "segment": "VIP", "language": "en", "open_complaint": "yes", "extra": [1]}"#,
            ),
            today,
        )
        .expect("valid")
        .expect("known");
        assert_eq!(p.customer_id.as_deref(), Some("42"));
        assert_eq!(p.age, Some(75), "birthday is tomorrow");
        assert_eq!(p.segment.as_deref(), Some("vip"));
        assert!(p.open_complaint);
        for unknown in [
            "null",
            "{}",
            r#"{"found": false, "customer_id": "x"}"#,
            r#"{"customer_id": ""}"#,
        ] {
            assert_eq!(profile_from_json(&j(unknown), today), Ok(None), "{unknown}");
        }
        for bad in [
            "[1]",
            r#"{"customer_id": true}"#,
            r#"{"customer_id": "1", "age": -3}"#,
            r#"{"customer_id": "1", "age": 1e3}"#,
            r#"{"customer_id": "1", "birth_date": "yesterday"}"#,
            r#"{"customer_id": "1", "open_complaint": 2}"#,
            r#"{"customer_id": "1", "name": 7}"#,
        ] {
            assert!(profile_from_json(&j(bad), today).is_err(), "{bad}");
        }
    }

    #[test]
    fn hook_url_template() {
        let ms = Duration::from_millis(300);
        let h = HttpHook::new(
            "http://crm.local:8080/callers/{number}?src=ivr",
            HookMethod::Get,
            ms,
        )
        .expect("valid");
        assert_eq!(
            h.url_for("+15550100001"),
            "http://crm.local:8080/callers/%2B15550100001?src=ivr"
        );
        for (url, method, why) in [
            ("http://crm.local/callers", HookMethod::Get, "{number}"),
            ("ftp://crm.local/{number}", HookMethod::Get, "http://"),
            ("crm.local/{number}", HookMethod::Get, "http://"),
            ("http://crm local/{number}", HookMethod::Get, "invalid"),
        ] {
            let e = HttpHook::new(url, method, ms).expect_err(url).to_string();
            assert!(e.contains(url) && e.contains(why), "{e}");
        }
        assert!(HttpHook::new("https://crm.local/lookup", HookMethod::Post, ms).is_ok());
    }

    /// A one-route HTTP server on a free loopback port: answers each request with `reply`
    /// (`None`: reads the request and never answers). Returns the base URL and, for each
    /// request, its first line and body.
    async fn serve(
        reply: Option<&'static str>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    // Read the head, then a body as long as Content-Length says.
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .and_then(|v| v.trim().parse::<usize>().ok())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                let first = head.lines().next().unwrap_or("").to_string();
                                let _ = tx.send(format!("{first} {body}").trim().to_string());
                                match reply {
                                    Some(r) => {
                                        let _ = sock.write_all(r.as_bytes()).await;
                                    }
                                    None => {
                                        // Hold the connection open without answering.
                                        std::future::pending::<()>().await;
                                    }
                                }
                                buf.clear();
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn ok_json(body: &'static str) -> &'static str {
        // Leaked once per test: the server task outlives the test body.
        Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    fn csv_table() -> CustomerTable {
        table(SAMPLE).0
    }

    fn lookup_with(
        url: &str,
        method: HookMethod,
        ms: u64,
        fallback: HookFallback,
    ) -> CustomerLookup {
        CustomerLookup {
            tz: "Asia/Seoul".parse().expect("tz"),
            hook: Some(HttpHook::new(url, method, Duration::from_millis(ms)).expect("hook")),
            fallback,
        }
    }

    #[tokio::test]
    async fn hook_answers_with_a_profile() {
        let (base, mut seen) = serve(Some(ok_json(
            r#"{"customer_id":"H1","name":"Kim","birth_date":"1950-11-23","segment":"Standard","open_complaint":true}"#,
        )))
        .await;
        let l = lookup_with(
            &format!("{base}/c/{{number}}"),
            HookMethod::Get,
            2000,
            HookFallback::Csv,
        );
        // 2026-11-22T15:30Z is already 23 November in Seoul: the 76th birthday.
        let (p, status) = l
            .lookup(
                Some(&csv_table()),
                "<sip:+1-555-010-0001@trunk>",
                utc("2026-11-22T15:30:00Z"),
            )
            .await;
        assert_eq!(status, LookupStatus::Found);
        assert_eq!(
            p.customer_id.as_deref(),
            Some("H1"),
            "the hook wins over the CSV"
        );
        assert_eq!(p.age, Some(76));
        assert!(p.open_complaint);
        assert_eq!(
            seen.recv().await.as_deref(),
            Some("GET /c/%2B15550100001 HTTP/1.1")
        );
        // A POST hook sends the number in a JSON body.
        let l = lookup_with(
            &format!("{base}/lookup"),
            HookMethod::Post,
            2000,
            HookFallback::Csv,
        );
        let (p, status) = l
            .lookup(None, "+15550100002", utc("2026-11-22T10:00:00Z"))
            .await;
        assert_eq!(
            (p.customer_id.as_deref(), status),
            (Some("H1"), LookupStatus::Found)
        );
        assert_eq!(
            seen.recv().await.as_deref(),
            Some(r#"POST /lookup HTTP/1.1 {"number":"+15550100002"}"#)
        );
    }

    #[tokio::test]
    async fn hook_not_found_is_authoritative() {
        let (base, _seen) =
            serve(Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")).await;
        let l = lookup_with(
            &format!("{base}/{{number}}"),
            HookMethod::Get,
            2000,
            HookFallback::Csv,
        );
        let (p, status) = l
            .lookup(
                Some(&csv_table()),
                "+15550100001",
                utc("2026-11-22T10:00:00Z"),
            )
            .await;
        assert_eq!(status, LookupStatus::NotFound, "the CSV is not asked");
        assert!(!p.is_known());
    }

    #[tokio::test]
    async fn hook_timeout_falls_back_to_the_csv() {
        let (base, mut seen) = serve(None).await;
        let l = lookup_with(
            &format!("{base}/{{number}}"),
            HookMethod::Get,
            100,
            HookFallback::Csv,
        );
        let started = std::time::Instant::now();
        let (p, status) = l
            .lookup(
                Some(&csv_table()),
                "+15550100002",
                utc("2026-11-22T10:00:00Z"),
            )
            .await;
        assert_eq!(status, LookupStatus::Fallback);
        assert_eq!(p.customer_id.as_deref(), Some("C2"), "from the CSV");
        assert!(seen.recv().await.is_some(), "the server got the request");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the timeout"
        );
        // Unknown fallback: nobody answers.
        let l = lookup_with(
            &format!("{base}/{{number}}"),
            HookMethod::Get,
            100,
            HookFallback::Unknown,
        );
        let (p, status) = l
            .lookup(
                Some(&csv_table()),
                "+15550100002",
                utc("2026-11-22T10:00:00Z"),
            )
            .await;
        assert_eq!((p.is_known(), status), (false, LookupStatus::Fallback));
    }

    #[tokio::test]
    async fn hook_errors_and_garbage_fall_back() {
        for reply in [
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
            ok_json("<html>not json</html>"),
            ok_json(r#"{"customer_id": ["x"]}"#),
            "this is not HTTP at all\r\n\r\n",
        ] {
            let (base, _seen) = serve(Some(reply)).await;
            let l = lookup_with(
                &format!("{base}/{{number}}"),
                HookMethod::Get,
                2000,
                HookFallback::Csv,
            );
            let (p, status) = l
                .lookup(
                    Some(&csv_table()),
                    "+15550100001",
                    utc("2026-11-22T10:00:00Z"),
                )
                .await;
            assert_eq!(status, LookupStatus::Fallback, "{reply}");
            assert_eq!(p.customer_id.as_deref(), Some("C1"), "{reply}");
        }
        // Nothing listening: connection refused, also a fallback.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let l = lookup_with(
            &format!("http://{addr}/{{number}}"),
            HookMethod::Get,
            2000,
            HookFallback::Csv,
        );
        let (_, status) = l
            .lookup(None, "+15550100001", utc("2026-11-22T10:00:00Z"))
            .await;
        assert_eq!(status, LookupStatus::Fallback);
    }

    #[tokio::test]
    async fn csv_only_and_disabled_lookups() {
        let l = CustomerLookup {
            tz: Tz::UTC,
            hook: None,
            fallback: HookFallback::Csv,
        };
        let t = csv_table();
        let at = utc("2026-11-22T10:00:00Z");
        let (p, s) = l.lookup(Some(&t), "tel:+1-555-010-0001", at).await;
        assert_eq!(
            (p.customer_id.as_deref(), s),
            (Some("C1"), LookupStatus::Found)
        );
        let (p, s) = l.lookup(Some(&t), "+15559999999", at).await;
        assert_eq!((p.is_known(), s), (false, LookupStatus::NotFound));
        let (_, s) = l
            .lookup(Some(&t), "sip:anonymous@anonymous.invalid", at)
            .await;
        assert_eq!(s, LookupStatus::NotFound);
        let (_, s) = l.lookup(None, "+15550100001", at).await;
        assert_eq!(s, LookupStatus::Disabled);
    }
}
