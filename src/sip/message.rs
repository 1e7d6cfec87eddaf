//! SIP message parsing, validation, serialisation and TCP stream framing.
//!
//! Incoming bytes go through our own bounded lexer first (size limits, header folding,
//! compact header names, comma-separated Via/Route/Record-Route lists, Content-Length),
//! then through `rsip` as a grammar check, and the fields the transaction and dialog
//! layers need are extracted and validated here (rsip's typed parsers for Via). Anything
//! that fails is reported as a [`SipError`]; nothing in this module panics on input.
//! See docs/adr/0001-sip-stack.md for why the work is split this way.

use std::fmt::Write as _;
use std::net::SocketAddr;

use rsip::headers as rh;
use rsip::prelude::{ToTypedHeader as _, UntypedHeader as _};
use rsip::Header;

use crate::sip::endpoint::{CallHandle, Transport};

/// Size bounds applied before any parsing, so hostile input costs bounded work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_header_line_bytes: usize,
    pub max_transactions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_535,
            max_headers: 128,
            max_header_line_bytes: 8_192,
            max_transactions: 100_000,
        }
    }
}

/// Every error of the SIP layer: parse failures of network input and misuse of the endpoint API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("message has more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("malformed start line: {0}")]
    BadStartLine(String),
    #[error("unsupported SIP version {0:?}")]
    BadVersion(String),
    #[error("malformed header line {line}: {detail}")]
    BadHeaderLine { line: usize, detail: String },
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("invalid {header} header: {detail}")]
    BadHeader {
        header: &'static str,
        detail: String,
    },
    #[error("body has {actual} bytes but Content-Length says {declared}")]
    BodyLength { declared: usize, actual: usize },
    #[error("rsip rejected the message: {0}")]
    Rsip(String),
    #[error("TCP stream framing: {0}")]
    Framing(String),
    #[error("no such call {0:?}")]
    UnknownCall(CallHandle),
    #[error("call {call:?}: cannot {action} while the call is {state}")]
    InvalidState {
        call: CallHandle,
        action: &'static str,
        state: &'static str,
    },
    #[error("status {status} is not allowed for {action}")]
    BadStatus { status: u16, action: &'static str },
}

impl SipError {
    /// The status code a UAS answers with when this error is found in a request.
    pub fn status_code(&self) -> u16 {
        match self {
            SipError::TooLarge { .. } => 513,
            SipError::BadVersion(_) => 505,
            _ => 400,
        }
    }

    /// A reason phrase naming the problem, e.g. `Bad CSeq` or `Missing Call-ID`.
    pub fn reason_phrase(&self) -> String {
        match self {
            SipError::TooLarge { .. } => "Message Too Large".into(),
            SipError::TooManyHeaders { .. } => "Too Many Headers".into(),
            SipError::BadStartLine(_) => "Bad Request-Line".into(),
            SipError::BadVersion(_) => "Version Not Supported".into(),
            SipError::BadHeaderLine { .. } => "Bad Header Line".into(),
            SipError::MissingHeader(h) => format!("Missing {h}"),
            SipError::BadHeader { header, .. } => format!("Bad {header}"),
            SipError::BodyLength { .. } => "Bad Content-Length".into(),
            SipError::Rsip(_) => "Malformed Message".into(),
            SipError::Framing(_) => "Bad Framing".into(),
            SipError::UnknownCall(_)
            | SipError::InvalidState { .. }
            | SipError::BadStatus { .. } => "Bad Request".into(),
        }
    }
}

/// SIP request methods; `Other` holds extension methods we answer with 501.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Update,
    Prack,
    Other(String),
}

impl Method {
    /// Methods are case-sensitive tokens (RFC 3261 7.1).
    pub fn parse(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REGISTER" => Method::Register,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Register => "REGISTER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Via header value: the raw text (echoed back unchanged) plus the parts we route by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub raw: String,
    /// Upper-case transport token from `SIP/2.0/<transport>`.
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    /// `rport` present (RFC 3581), with or without a value.
    pub rport: bool,
}

impl Via {
    /// Parses one Via value with rsip's typed parser; rsip errors are malformed input.
    pub fn parse(raw: &str) -> Result<Via, SipError> {
        let bad = |detail: String| SipError::BadHeader {
            header: "Via",
            detail,
        };
        let (masked, literals) = mask_ipv6(raw);
        let typed = rh::Via::new(masked)
            .typed()
            .map_err(|e| bad(truncate_for_log(&e.to_string())))?;
        if typed.version != rsip::Version::V2 {
            return Err(bad(format!(
                "sent-protocol version in \"{}\"",
                truncate_for_log(raw)
            )));
        }
        let mut host = typed.uri.host_with_port.host.to_string();
        if host == IPV6_PLACEHOLDER {
            host = format!("[{}]", literals.first().map(String::as_str).unwrap_or(""));
        }
        if host.is_empty() {
            return Err(bad(format!(
                "empty sent-by in \"{}\"",
                truncate_for_log(raw)
            )));
        }
        let port = typed.uri.host_with_port.port.as_ref().map(|p| *p.value());
        let mut branch = None;
        let mut rport = false;
        for param in &typed.params {
            match param {
                rsip::Param::Branch(b) => branch = Some(b.value().to_string()),
                rsip::Param::Other(name, _) if name.value().eq_ignore_ascii_case("rport") => {
                    rport = true
                }
                _ => {}
            }
        }
        Ok(Via {
            raw: raw.to_string(),
            transport: typed.transport.to_string().to_ascii_uppercase(),
            host,
            port,
            branch,
            rport,
        })
    }

    /// `host:port` as compared for transaction matching (RFC 3261 17.2.3).
    pub fn sent_by(&self) -> String {
        format!(
            "{}:{}",
            self.host.to_ascii_lowercase(),
            self.port.unwrap_or(5060)
        )
    }

    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|b| b.starts_with("z9hG4bK"))
    }
}

/// A name-addr / addr-spec header value (From, To, Contact, Route entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// The whole header value as received.
    pub raw: String,
    /// Display name with quotes and escapes removed.
    pub display: Option<String>,
    /// The URI exactly as written (without angle brackets).
    pub uri: String,
    /// Header parameters after the URI, e.g. `;tag=abc`.
    pub params: String,
    pub tag: Option<String>,
}

impl NameAddr {
    pub fn parse(raw: &str, header: &'static str) -> Result<NameAddr, SipError> {
        let bad = |detail: &str| SipError::BadHeader {
            header,
            detail: format!("{detail} in \"{}\"", truncate_for_log(raw)),
        };
        let raw_trim = raw.trim();
        let (display, uri, params) = match find_unquoted(raw_trim, b'<') {
            Some(lt) => {
                let disp = raw_trim.get(..lt).unwrap_or("").trim();
                let rest = raw_trim.get(lt + 1..).unwrap_or("");
                let gt = rest.find('>').ok_or_else(|| bad("missing '>'"))?;
                let uri = rest.get(..gt).unwrap_or("").trim();
                let params = rest.get(gt + 1..).unwrap_or("").trim();
                let display = if disp.is_empty() {
                    None
                } else {
                    Some(unquote(disp).ok_or_else(|| bad("bad display name"))?)
                };
                (display, uri, params)
            }
            None => {
                if raw_trim.contains('"') || raw_trim.contains('>') {
                    return Err(bad("stray quote or '>'"));
                }
                match raw_trim.find(';') {
                    Some(semi) => (
                        None,
                        raw_trim.get(..semi).unwrap_or("").trim(),
                        raw_trim.get(semi..).unwrap_or(""),
                    ),
                    None => (None, raw_trim, ""),
                }
            }
        };
        if uri.is_empty() || uri.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad("bad URI"));
        }
        let scheme = uri.split(':').next().unwrap_or("");
        if scheme.len() == uri.len() || scheme.is_empty() || !scheme.bytes().all(is_scheme_char) {
            return Err(bad("URI without scheme"));
        }
        if !params.is_empty() && !params.starts_with(';') {
            return Err(bad("junk after URI"));
        }
        let mut tag = None;
        for p in params.split(';').skip(1) {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p.trim(), None),
            };
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(bad("bad parameter"));
            }
            if name.eq_ignore_ascii_case("tag") {
                match value {
                    Some(v) if !v.is_empty() && v.bytes().all(is_token_char) => {
                        tag = Some(v.to_string())
                    }
                    _ => return Err(bad("bad tag")),
                }
            }
        }
        Ok(NameAddr {
            raw: raw_trim.to_string(),
            display,
            uri: uri.to_string(),
            params: params.to_string(),
            tag,
        })
    }

    /// The user part of a sip/sips URI, or the number of a tel URI (the caller number).
    pub fn user(&self) -> Option<String> {
        uri_user(&self.uri)
    }
}

/// User part of a `sip:`/`sips:` URI or the number of a `tel:` URI.
pub fn uri_user(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or("");
        return (!number.is_empty()).then(|| number.to_string());
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return None;
    }
    let (userinfo, _) = rest.split_once('@')?;
    let user = userinfo.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_string())
}

/// Host and port of a `sip:`/`sips:` URI, parsed by rsip. `None` if rsip cannot parse it.
pub fn uri_host_port(uri: &str) -> Option<(rsip::Host, Option<u16>)> {
    let (scheme, _) = uri.split_once(':')?;
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return None;
    }
    let (masked, literals) = mask_ipv6(uri);
    let parsed = rsip::Uri::try_from(masked.as_str()).ok()?;
    let port = parsed.host_with_port.port.as_ref().map(|p| *p.value());
    let host = match parsed.host_with_port.host {
        rsip::Host::Domain(d) if d.to_string() == IPV6_PLACEHOLDER => {
            rsip::Host::IpAddr(literals.first()?.parse::<std::net::Ipv6Addr>().ok()?.into())
        }
        other => other,
    };
    Some((host, port))
}

/// rsip 0.4 cannot parse bracketed IPv6 references (`[2001:db8::1]:5060`); before rsip
/// sees a value they are swapped for this placeholder host and restored afterwards.
const IPV6_PLACEHOLDER: &str = "ipv6-literal.invalid";

/// Replaces every `[IPv6]` literal with [`IPV6_PLACEHOLDER`]; returns the literals found.
fn mask_ipv6(s: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(s.len());
    let mut literals = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let before = rest.get(..open).unwrap_or("");
        let after = rest.get(open + 1..).unwrap_or("");
        let literal = after.find(']').and_then(|close| {
            let lit = after.get(..close)?;
            let ok = lit.contains(':') && lit.parse::<std::net::Ipv6Addr>().is_ok();
            ok.then(|| (lit, after.get(close + 1..).unwrap_or("")))
        });
        out.push_str(before);
        match literal {
            Some((lit, tail)) => {
                out.push_str(IPV6_PLACEHOLDER);
                literals.push(lit.to_string());
                rest = tail;
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, literals)
}

/// True when the URI has a parameter `name` (case-insensitive), e.g. `lr`.
pub fn uri_has_param(uri: &str, name: &str) -> bool {
    uri.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(name)
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// `CSeq: <32-bit number> <method>`; rsip's typed CSeq rejects extension methods, so
    /// this small grammar is checked here.
    pub fn parse(raw: &str) -> Result<CSeq, SipError> {
        let bad = |detail: &str| SipError::BadHeader {
            header: "CSeq",
            detail: format!("{detail} in \"{}\"", truncate_for_log(raw)),
        };
        let mut parts = raw.split_ascii_whitespace();
        let num = parts.next().ok_or_else(|| bad("empty"))?;
        let method = parts.next().ok_or_else(|| bad("no method"))?;
        if parts.next().is_some() {
            return Err(bad("trailing text"));
        }
        if num.is_empty() || num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("sequence number not a 32-bit number"));
        }
        let seq: u32 = num
            .parse()
            .map_err(|_| bad("sequence number not a 32-bit number"))?;
        if !method.bytes().all(is_token_char) {
            return Err(bad("bad method"));
        }
        Ok(CSeq {
            seq,
            method: Method::parse(method),
        })
    }
}

impl std::fmt::Display for CSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// A validated request: the fields the transaction and dialog layers use.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    /// All Via values, top first.
    pub vias: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    pub max_forwards: Option<u32>,
    pub contact: Option<NameAddr>,
    /// Record-Route entries in the order received.
    pub record_route: Vec<String>,
    pub content_type: Option<String>,
    /// Option tags from Require headers.
    pub require: Vec<String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn top_via(&self) -> Option<&Via> {
        self.vias.first()
    }

    /// Media type of the body, lower-case, parameters removed.
    pub fn media_type(&self) -> Option<String> {
        self.content_type.as_deref().map(media_type)
    }
}

/// A validated response to one of our requests.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub vias: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    /// Every Contact entry (a REGISTER 2xx lists all bindings); unparseable entries and
    /// `*` are skipped.
    pub contacts: Vec<NameAddr>,
    /// Record-Route entries in the order received.
    pub record_route: Vec<String>,
    pub content_type: Option<String>,
    /// `WWW-Authenticate` values (one challenge each), from a 401.
    pub www_authenticate: Vec<String>,
    /// `Proxy-Authenticate` values, from a 407.
    pub proxy_authenticate: Vec<String>,
    /// `Expires` in seconds, if present and numeric.
    pub expires: Option<u32>,
    /// `Min-Expires` in seconds (423 Interval Too Brief), if present and numeric.
    pub min_expires: Option<u32>,
    pub body: Vec<u8>,
}

impl Response {
    /// Media type of the body, lower-case, parameters removed.
    pub fn media_type(&self) -> Option<String> {
        self.content_type.as_deref().map(media_type)
    }
}

// Short-lived and moved once per datagram; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// What survived of a request that failed validation: enough to send an error response.
#[derive(Clone, Debug)]
pub struct PartialRequest {
    pub method: Method,
    pub vias: Vec<Via>,
    pub from: String,
    pub to: String,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

/// A rejected message; `partial` is set when it was a request we can still answer.
#[derive(Clone, Debug)]
pub struct ParseFailure {
    pub error: SipError,
    pub partial: Option<Box<PartialRequest>>,
}

impl ParseFailure {
    fn bare(error: SipError) -> Self {
        Self {
            error,
            partial: None,
        }
    }
}

/// Outcome of [`parse`]: a message, nothing (a CRLF keep-alive), or a failure.
pub type ParseResult = Result<Option<Message>, ParseFailure>;

enum StartLine<'a> {
    Request {
        method: &'a str,
        uri: &'a str,
        version: &'a str,
    },
    Response {
        code: u16,
        reason: &'a str,
    },
}

struct Lexed<'a> {
    start_text: &'a str,
    start: StartLine<'a>,
    /// Canonical header name and value, unfolded and with comma lists split.
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

/// Parses one complete SIP message (a datagram or one framed stream message).
///
/// `Ok(None)` is a keep-alive (only CR/LF bytes). Size limits are enforced before any
/// allocation proportional to the input.
pub fn parse(data: &[u8], limits: &Limits) -> ParseResult {
    if data.len() > limits.max_message_bytes {
        let error = SipError::TooLarge {
            what: "message",
            size: data.len(),
            limit: limits.max_message_bytes,
        };
        // Answer 513 only if the header block itself is sane and fits the limit.
        let partial = data
            .get(..limits.max_message_bytes)
            .and_then(|head| lex(head, limits, true).ok().flatten())
            .and_then(|lexed| partial_request(&lexed));
        return Err(ParseFailure { error, partial });
    }
    let lexed = match lex(data, limits, false) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(e) => return Err(ParseFailure::bare(e)),
    };
    let with_partial = |error: SipError, lexed: &Lexed<'_>| ParseFailure {
        error,
        partial: partial_request(lexed),
    };
    if let StartLine::Request { version, .. } = &lexed.start {
        if *version != "SIP/2.0" {
            return Err(with_partial(
                SipError::BadVersion(version.to_string()),
                &lexed,
            ));
        }
    }
    rsip_check(&lexed).map_err(|e| with_partial(e, &lexed))?;
    build_message(&lexed)
        .map(Some)
        .map_err(|e| with_partial(e, &lexed))
}

/// Runs rsip's tokenizer over the normalised head (canonical names, one value per line).
/// rsip knows a closed set of methods, so extension methods skip this check; their
/// mandatory headers are still validated field by field.
fn rsip_check(lexed: &Lexed<'_>) -> Result<(), SipError> {
    if let StartLine::Request { method, .. } = &lexed.start {
        if matches!(Method::parse(method), Method::Other(_)) {
            return Ok(());
        }
    }
    let mut text = String::with_capacity(lexed.start_text.len() + 64 * lexed.headers.len());
    match &lexed.start {
        // rsip 0.4 mis-parses non-SIP Request-URIs (`tel:+4930...` fails as a port), so
        // they are checked by our own URI grammar only.
        StartLine::Request {
            method,
            uri,
            version,
        } if !is_sip_uri(uri) => {
            let _ = write!(text, "{method} sip:non-sip-uri.invalid {version}");
        }
        _ => text.push_str(lexed.start_text),
    }
    text.push_str("\r\n");
    for (name, value) in &lexed.headers {
        let _ = write!(text, "{name}: {value}\r\n");
    }
    text.push_str("\r\n");
    let (text, _) = mask_ipv6(&text);
    rsip::SipMessage::try_from(text.as_str())
        .map(|_| ())
        .map_err(|e| SipError::Rsip(truncate_for_log(&e.to_string())))
}

/// Splits and bounds the message. `head_only` accepts a missing blank line (used for the
/// 513 path where the input was cut at the size limit).
fn lex<'a>(
    data: &'a [u8],
    limits: &Limits,
    head_only: bool,
) -> Result<Option<Lexed<'a>>, SipError> {
    // RFC 3261 7.5: CRLFs before the start line are ignored (keep-alives).
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let data = data.get(start..).unwrap_or(&[]);
    if data.is_empty() {
        return Ok(None);
    }
    let (head, body) = match find_subslice(data, b"\r\n\r\n") {
        Some(pos) => (
            data.get(..pos).unwrap_or(&[]),
            data.get(pos + 4..).unwrap_or(&[]),
        ),
        None if head_only => {
            // Cut mid-header: keep only complete lines.
            let last = data.windows(2).rposition(|w| w == b"\r\n").unwrap_or(0);
            (data.get(..last).unwrap_or(&[]), &[][..])
        }
        None => {
            return Err(SipError::BadHeaderLine {
                line: 0,
                detail: "no empty line after the header block".into(),
            })
        }
    };
    let head = std::str::from_utf8(head).map_err(|e| SipError::BadHeaderLine {
        line: 0,
        detail: format!("header block is not UTF-8 ({e})"),
    })?;

    let mut lines = head.split("\r\n");
    let start_text = lines.next().unwrap_or("");
    check_line(start_text, 0, limits)?;
    let start = parse_start_line(start_text)?;

    // Unfold continuation lines into logical (name, value) pairs.
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (idx, line) in lines.enumerate() {
        let line_no = idx + 1;
        check_line(line, line_no, limits)?;
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some((_, prev)) = logical.last_mut() else {
                return Err(SipError::BadHeaderLine {
                    line: line_no,
                    detail: "continuation line without a header".into(),
                });
            };
            prev.push(' ');
            prev.push_str(line.trim());
            if prev.len() > limits.max_header_line_bytes {
                return Err(SipError::TooLarge {
                    what: "folded header line",
                    size: prev.len(),
                    limit: limits.max_header_line_bytes,
                });
            }
        } else {
            if logical.len() >= limits.max_headers {
                return Err(SipError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
            logical.push((line_no, line.to_string()));
        }
    }

    let mut headers = Vec::with_capacity(logical.len());
    for (line_no, line) in logical {
        let Some((name, value)) = line.split_once(':') else {
            return Err(SipError::BadHeaderLine {
                line: line_no,
                detail: format!("no ':' in \"{}\"", truncate_for_log(&line)),
            });
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(SipError::BadHeaderLine {
                line: line_no,
                detail: format!("bad header name \"{}\"", truncate_for_log(name)),
            });
        }
        let canon = canonical_name(name);
        let value = value.trim();
        if matches!(canon.as_str(), "Via" | "Route" | "Record-Route") {
            for part in split_list(value).ok_or_else(|| SipError::BadHeader {
                header: static_name(&canon),
                detail: format!(
                    "unbalanced quotes or brackets in \"{}\"",
                    truncate_for_log(value)
                ),
            })? {
                if headers.len() >= limits.max_headers {
                    return Err(SipError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
                headers.push((canon.clone(), part.to_string()));
            }
        } else {
            if headers.len() >= limits.max_headers {
                return Err(SipError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
            headers.push((canon, value.to_string()));
        }
    }
    Ok(Some(Lexed {
        start_text,
        start,
        headers,
        body,
    }))
}

fn check_line(line: &str, line_no: usize, limits: &Limits) -> Result<(), SipError> {
    if line.len() > limits.max_header_line_bytes {
        return Err(SipError::TooLarge {
            what: "header line",
            size: line.len(),
            limit: limits.max_header_line_bytes,
        });
    }
    // Bare CR/LF or other controls would let echoed values inject headers.
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(SipError::BadHeaderLine {
            line: line_no,
            detail: "control character in line".into(),
        });
    }
    Ok(())
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, SipError> {
    let bad = || SipError::BadStartLine(truncate_for_log(line));
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response { code, reason });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let scheme = uri.split(':').next().unwrap_or("");
    if method.is_empty()
        || !method.bytes().all(is_token_char)
        || scheme.is_empty()
        || scheme.len() == uri.len()
        || !scheme.bytes().all(is_scheme_char)
    {
        return Err(bad());
    }
    if !version.starts_with("SIP/") {
        return Err(bad());
    }
    Ok(StartLine::Request {
        method,
        uri,
        version,
    })
}

fn header<'a>(lexed: &'a Lexed<'_>, name: &str) -> impl Iterator<Item = &'a str> + 'a {
    let name = name.to_string();
    lexed
        .headers
        .iter()
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Exactly one occurrence required (From, To, Call-ID, CSeq).
fn single<'a>(lexed: &'a Lexed<'_>, name: &'static str) -> Result<&'a str, SipError> {
    let mut it = header(lexed, name);
    let first = it.next().ok_or(SipError::MissingHeader(name))?;
    if it.next().is_some() {
        return Err(SipError::BadHeader {
            header: name,
            detail: "appears more than once".into(),
        });
    }
    Ok(first)
}

fn partial_request(lexed: &Lexed<'_>) -> Option<Box<PartialRequest>> {
    let StartLine::Request { method, .. } = &lexed.start else {
        return None;
    };
    let method = Method::parse(method);
    if method == Method::Ack {
        return None; // never answer an ACK
    }
    let vias = header(lexed, "Via")
        .map(Via::parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    vias.first()?;
    let from = header(lexed, "From").next()?.to_string();
    let to = header(lexed, "To").next()?.to_string();
    Some(Box::new(PartialRequest {
        method,
        vias,
        from,
        to,
        call_id: header(lexed, "Call-ID").next().map(str::to_string),
        cseq: header(lexed, "CSeq").next().map(str::to_string),
    }))
}

fn build_message(lexed: &Lexed<'_>) -> Result<Message, SipError> {
    let vias = header(lexed, "Via")
        .map(Via::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if vias.is_empty() {
        return Err(SipError::MissingHeader("Via"));
    }
    let from = NameAddr::parse(single(lexed, "From")?, "From")?;
    let to = NameAddr::parse(single(lexed, "To")?, "To")?;
    let call_id = single(lexed, "Call-ID")?;
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(SipError::BadHeader {
            header: "Call-ID",
            detail: format!("\"{}\"", truncate_for_log(call_id)),
        });
    }
    let cseq = CSeq::parse(single(lexed, "CSeq")?)?;
    let body = body_by_length(lexed)?;

    match &lexed.start {
        StartLine::Response { code, reason } => {
            let contacts = header(lexed, "Contact")
                .flat_map(|v| split_list(v).unwrap_or_default())
                .filter(|v| *v != "*")
                .filter_map(|v| NameAddr::parse(v, "Contact").ok())
                .collect();
            let record_route = header(lexed, "Record-Route")
                .map(|v| NameAddr::parse(v, "Record-Route").map(|n| n.raw))
                .collect::<Result<Vec<_>, _>>()?;
            let strings = |name: &str| header(lexed, name).map(str::to_string).collect();
            let seconds = |name: &str| header(lexed, name).next().and_then(parse_seconds);
            Ok(Message::Response(Response {
                status: *code,
                reason: reason.to_string(),
                vias,
                from,
                to,
                call_id: call_id.to_string(),
                cseq,
                contacts,
                record_route,
                content_type: header(lexed, "Content-Type").next().map(str::to_string),
                www_authenticate: strings("WWW-Authenticate"),
                proxy_authenticate: strings("Proxy-Authenticate"),
                expires: seconds("Expires"),
                min_expires: seconds("Min-Expires"),
                body,
            }))
        }
        StartLine::Request { method, uri, .. } => {
            let method = Method::parse(method);
            if cseq.method != method {
                return Err(SipError::BadHeader {
                    header: "CSeq",
                    detail: format!("method {} does not match {}", cseq.method, method),
                });
            }
            let max_forwards = match header(lexed, "Max-Forwards").next() {
                None => None,
                Some(v) => Some(v.parse::<u32>().ok().filter(|n| *n <= 255).ok_or_else(|| {
                    SipError::BadHeader {
                        header: "Max-Forwards",
                        detail: format!("\"{}\"", truncate_for_log(v)),
                    }
                })?),
            };
            let contact = match header(lexed, "Contact").next() {
                None => None,
                Some("*") => None,
                Some(v) => {
                    let first = split_list(v)
                        .and_then(|l| l.into_iter().next())
                        .unwrap_or(v);
                    Some(NameAddr::parse(first, "Contact")?)
                }
            };
            let record_route = header(lexed, "Record-Route")
                .map(|v| NameAddr::parse(v, "Record-Route").map(|n| n.raw))
                .collect::<Result<Vec<_>, _>>()?;
            let content_type = header(lexed, "Content-Type").next().map(str::to_string);
            let require = header(lexed, "Require")
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            Ok(Message::Request(Request {
                method,
                uri: uri.to_string(),
                vias,
                from,
                to,
                call_id: call_id.to_string(),
                cseq,
                max_forwards,
                contact,
                record_route,
                content_type,
                require,
                body,
            }))
        }
    }
}

/// RFC 3261 18.3: with Content-Length, extra datagram bytes are discarded and a short body
/// is an error. Without it (datagrams only) the body runs to the end.
fn body_by_length(lexed: &Lexed<'_>) -> Result<Vec<u8>, SipError> {
    let mut declared: Option<usize> = None;
    for v in header(lexed, "Content-Length") {
        let n = parse_content_length(v).ok_or_else(|| SipError::BadHeader {
            header: "Content-Length",
            detail: format!("\"{}\"", truncate_for_log(v)),
        })?;
        if declared.is_some_and(|d| d != n) {
            return Err(SipError::BadHeader {
                header: "Content-Length",
                detail: "conflicting values".into(),
            });
        }
        declared = Some(n);
    }
    match declared {
        None => Ok(lexed.body.to_vec()),
        Some(n) => lexed
            .body
            .get(..n)
            .map(<[u8]>::to_vec)
            .ok_or(SipError::BodyLength {
                declared: n,
                actual: lexed.body.len(),
            }),
    }
}

/// delta-seconds (RFC 3261 25.1): digits only, saturating at u32::MAX.
pub fn parse_seconds(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u32>().unwrap_or(u32::MAX))
}

fn parse_content_length(v: &str) -> Option<usize> {
    let v = v.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Expands compact forms (RFC 3261 7.3.3 and later RFCs) and canonicalises the
/// spelling of the headers we read, so lookups are exact.
fn canonical_name(name: &str) -> String {
    let canon = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "e" | "content-encoding" => "Content-Encoding",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "f" | "from" => "From",
        "s" | "subject" => "Subject",
        "k" | "supported" => "Supported",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "o" | "event" => "Event",
        "u" | "allow-events" => "Allow-Events",
        "r" | "refer-to" => "Refer-To",
        "b" | "referred-by" => "Referred-By",
        "x" | "session-expires" => "Session-Expires",
        "a" | "accept-contact" => "Accept-Contact",
        "j" | "reject-contact" => "Reject-Contact",
        "d" | "request-disposition" => "Request-Disposition",
        "y" | "identity" => "Identity",
        "n" | "identity-info" => "Identity-Info",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "record-route" => "Record-Route",
        "route" => "Route",
        "require" => "Require",
        "www-authenticate" => "WWW-Authenticate",
        "proxy-authenticate" => "Proxy-Authenticate",
        "expires" => "Expires",
        "min-expires" => "Min-Expires",
        _ => return name.to_string(),
    };
    canon.to_string()
}

fn static_name(canon: &str) -> &'static str {
    match canon {
        "Via" => "Via",
        "Route" => "Route",
        _ => "Record-Route",
    }
}

/// Splits a comma-separated header list outside quotes and angle brackets.
/// `None` when quotes or brackets are unbalanced or an element is empty.
pub fn split_list(value: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let (mut in_quotes, mut escaped, mut angle) = (false, false, false);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quotes {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_quotes = true,
            b'<' if !angle => angle = true,
            b'>' if angle => angle = false,
            b',' if !angle => {
                let part = value.get(start..i)?.trim();
                if part.is_empty() {
                    return None;
                }
                out.push(part);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes || angle {
        return None;
    }
    let part = value.get(start..)?.trim();
    if part.is_empty() {
        return None;
    }
    out.push(part);
    Some(out)
}

/// Position of `needle` outside double quotes.
fn find_unquoted(s: &str, needle: u8) -> Option<usize> {
    let (mut in_quotes, mut escaped) = (false, false);
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if in_quotes {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == needle {
            return Some(i);
        }
    }
    None
}

/// Removes surrounding quotes and backslash escapes from a display name.
fn unquote(s: &str) -> Option<String> {
    let Some(inner) = s.strip_prefix('"') else {
        return (!s.contains('"')).then(|| s.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Lower-case media type without parameters, e.g. `application/dtmf-relay`.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_sip_uri(uri: &str) -> bool {
    uri.split_once(':').is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")
    })
}

pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-.".contains(&b)
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Keeps log lines short and printable whatever the input.
pub fn truncate_for_log(s: &str) -> String {
    s.chars().take(120).flat_map(char::escape_default).collect()
}

/// Standard reason phrases for the codes this layer sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        _ => match code / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Builds an rsip header from a name and a pre-validated value.
pub fn hdr(name: &str, value: impl Into<String>) -> Header {
    let value = value.into();
    match name {
        "Via" => Header::Via(rh::Via::new(value)),
        "From" => Header::From(rh::From::new(value)),
        "To" => Header::To(rh::To::new(value)),
        "Call-ID" => Header::CallId(rh::CallId::new(value)),
        "CSeq" => Header::CSeq(rh::CSeq::new(value)),
        "Contact" => Header::Contact(rh::Contact::new(value)),
        "Record-Route" => Header::RecordRoute(rh::RecordRoute::new(value)),
        "Route" => Header::Route(rh::Route::new(value)),
        "Max-Forwards" => Header::MaxForwards(rh::MaxForwards::new(value)),
        "Content-Type" => Header::ContentType(rh::ContentType::new(value)),
        "Allow" => Header::Allow(rh::Allow::new(value)),
        "Accept" => Header::Accept(rh::Accept::new(value)),
        "Server" => Header::Server(rh::Server::new(value)),
        "User-Agent" => Header::UserAgent(rh::UserAgent::new(value)),
        "Retry-After" => Header::RetryAfter(rh::RetryAfter::new(value)),
        "Unsupported" => Header::Unsupported(rh::Unsupported::new(value)),
        other => Header::Other(other.to_string(), value),
    }
}

/// Serialises a response with rsip; the body is appended as raw bytes because rsip's
/// `Display` would pass it through a lossy UTF-8 conversion.
pub fn serialize_response(
    code: u16,
    reason: &str,
    mut headers: Vec<Header>,
    body: &[u8],
) -> Vec<u8> {
    headers.push(Header::ContentLength(rh::ContentLength::new(
        body.len().to_string(),
    )));
    let response = rsip::Response {
        status_code: rsip::StatusCode::Other(code, reason.to_string()),
        version: rsip::Version::V2,
        headers: headers.into(),
        body: Vec::new(),
    };
    let mut out = response.to_string().into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serialises a request. The Request-URI is written verbatim: rsip's `Uri` would rewrite
/// some URIs on output (e.g. `tel:` URIs), which a remote target must survive unchanged.
pub fn serialize_request(
    method: &Method,
    uri: &str,
    mut headers: Vec<Header>,
    body: &[u8],
) -> Vec<u8> {
    headers.push(Header::ContentLength(rh::ContentLength::new(
        body.len().to_string(),
    )));
    let headers: rsip::Headers = headers.into();
    let mut out = format!("{method} {uri} SIP/2.0\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// Everything needed to answer a server transaction's request later (ring/answer happen
/// long after the INVITE was parsed).
#[derive(Clone, Debug)]
pub struct ResponseCtx {
    /// Via values to echo, the top one already carrying `received`/`rport`.
    pub vias: Vec<String>,
    pub from: String,
    pub to: String,
    pub to_has_tag: bool,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
    pub record_route: Vec<String>,
    pub destination: SocketAddr,
    pub transport: Transport,
}

impl ResponseCtx {
    pub fn from_request(req: &Request, source: SocketAddr, transport: Transport) -> Self {
        Self::build_ctx(
            &req.vias,
            req.from.raw.clone(),
            req.to.raw.clone(),
            req.to.tag.is_some(),
            Some(req.call_id.clone()),
            Some(req.cseq.to_string()),
            req.record_route.clone(),
            source,
            transport,
        )
    }

    pub fn from_partial(p: &PartialRequest, source: SocketAddr, transport: Transport) -> Self {
        let to_has_tag = NameAddr::parse(&p.to, "To").is_ok_and(|n| n.tag.is_some());
        Self::build_ctx(
            &p.vias,
            p.from.clone(),
            p.to.clone(),
            to_has_tag,
            p.call_id.clone(),
            p.cseq.clone(),
            Vec::new(),
            source,
            transport,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build_ctx(
        vias: &[Via],
        from: String,
        to: String,
        to_has_tag: bool,
        call_id: Option<String>,
        cseq: Option<String>,
        record_route: Vec<String>,
        source: SocketAddr,
        transport: Transport,
    ) -> Self {
        let mut raw: Vec<String> = vias.iter().map(|v| v.raw.clone()).collect();
        let destination = match vias.first() {
            Some(top) => {
                if let Some(first) = raw.first_mut() {
                    *first = response_top_via(top, source);
                }
                response_destination(top, source, transport)
            }
            None => source,
        };
        Self {
            vias: raw,
            from,
            to,
            to_has_tag,
            call_id,
            cseq,
            record_route,
            destination,
            transport,
        }
    }

    /// Builds a response. `to_tag` is added to To unless the request already had one;
    /// `with_record_route` copies Record-Route (2xx and dialog-creating 1xx).
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        with_record_route: bool,
        extra: Vec<Header>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut headers = Vec::with_capacity(8 + self.vias.len() + extra.len());
        for v in &self.vias {
            headers.push(hdr("Via", v.clone()));
        }
        if with_record_route {
            for rr in &self.record_route {
                headers.push(hdr("Record-Route", rr.clone()));
            }
        }
        headers.push(hdr("From", self.from.clone()));
        let to = match (to_tag, self.to_has_tag) {
            (Some(tag), false) => format!("{};tag={tag}", self.to),
            _ => self.to.clone(),
        };
        headers.push(hdr("To", to));
        if let Some(c) = &self.call_id {
            headers.push(hdr("Call-ID", c.clone()));
        }
        if let Some(c) = &self.cseq {
            headers.push(hdr("CSeq", c.clone()));
        }
        headers.extend(extra);
        serialize_response(code, reason, headers, body)
    }
}

/// RFC 3261 18.2.1 / RFC 3581: add `received` when sent-by differs from the source (always
/// with rport) and fill in an empty `rport`. Other parameters are kept as received.
pub fn response_top_via(top: &Via, source: SocketAddr) -> String {
    let ip = source.ip().to_string();
    let host = top.host.trim_start_matches('[').trim_end_matches(']');
    let same_ip = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|h| h == source.ip());
    let add_received = top.rport || !same_ip;
    let mut parts = top.raw.split(';');
    let mut out = parts.next().unwrap_or("").trim_end().to_string();
    for p in parts {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("received") {
            continue;
        }
        if name.eq_ignore_ascii_case("rport") {
            let _ = write!(out, ";rport={}", source.port());
        } else {
            out.push(';');
            out.push_str(p.trim());
        }
    }
    if add_received {
        let _ = write!(out, ";received={ip}");
    }
    out
}

/// Where a response goes: over TCP and TLS the source (the shell maps it to the connection);
/// over UDP the source IP and, without rport, the Via port (RFC 3261 18.2.2, RFC 3581).
pub fn response_destination(top: &Via, source: SocketAddr, transport: Transport) -> SocketAddr {
    match transport {
        Transport::Tcp | Transport::Tls => source,
        Transport::Udp if top.rport => source,
        Transport::Udp => SocketAddr::new(source.ip(), top.port.unwrap_or(5060)),
    }
}

/// Frames SIP messages on a byte stream by Content-Length (RFC 3261 18.3).
///
/// After an error the framer is poisoned: `push` fails and `next_message` returns `None`,
/// so the shell closes the connection.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    limits: Limits,
    failed: bool,
}

impl StreamFramer {
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            limits,
            failed: false,
        }
    }

    /// Appends received bytes. Fails when the buffered data could not be a message within
    /// the limits (two maximal messages may be buffered).
    pub fn push(&mut self, data: &[u8]) -> Result<(), SipError> {
        if self.failed {
            return Err(SipError::Framing("stream already failed".into()));
        }
        let cap = self.limits.max_message_bytes.saturating_mul(2);
        let size = self.buf.len().saturating_add(data.len());
        if size > cap {
            self.failed = true;
            return Err(SipError::TooLarge {
                what: "stream buffer",
                size,
                limit: cap,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete message, `None` if more bytes are needed, or an error once.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, SipError>> {
        if self.failed {
            return None;
        }
        match self.frame() {
            Ok(Some(len)) => {
                let msg: Vec<u8> = self.buf.drain(..len).collect();
                Some(Ok(msg))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                self.buf.clear();
                Some(Err(e))
            }
        }
    }

    /// Length of the first complete message in the buffer, after dropping keep-alive CRLFs.
    fn frame(&mut self) -> Result<Option<usize>, SipError> {
        let skip = self
            .buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(self.buf.len());
        // CRLF keep-alives (RFC 5626 4.4.1) between messages are dropped.
        self.buf.drain(..skip);
        if self.buf.is_empty() {
            return Ok(None);
        }
        let max = self.limits.max_message_bytes;
        let search = self.buf.get(..max.min(self.buf.len())).unwrap_or(&[]);
        let Some(head_end) = find_subslice(search, b"\r\n\r\n") else {
            if self.buf.len() >= max {
                return Err(SipError::TooLarge {
                    what: "header block",
                    size: self.buf.len(),
                    limit: max,
                });
            }
            return Ok(None);
        };
        let head = self.buf.get(..head_end).unwrap_or(&[]);
        let mut length: Option<usize> = None;
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = line.get(..colon).unwrap_or(&[]);
            let name = std::str::from_utf8(name).unwrap_or("").trim();
            if !(name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")) {
                continue;
            }
            let value = std::str::from_utf8(line.get(colon + 1..).unwrap_or(&[])).unwrap_or("");
            let n = parse_content_length(value).ok_or_else(|| {
                SipError::Framing(format!(
                    "invalid Content-Length {:?}",
                    truncate_for_log(value)
                ))
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(SipError::Framing(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
        let Some(body_len) = length else {
            return Err(SipError::Framing(
                "Content-Length missing on a stream transport".into(),
            ));
        };
        let total = head_end.saturating_add(4).saturating_add(body_len);
        if total > max {
            return Err(SipError::TooLarge {
                what: "message",
                size: total,
                limit: max,
            });
        }
        Ok((self.buf.len() >= total).then_some(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:service@10.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.2:5061;branch=z9hG4bK-1;rport\r\n\
        From: \"Alice \\\"A\\\" Smith\" <sip:+15551234@10.0.0.2:5061;user=phone>;tag=abc\r\n\
        To: <sip:service@10.0.0.1:5060>\r\n\
        Call-ID: 1-1@10.0.0.2\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:sipp@10.0.0.2:5061>\r\n\
        Max-Forwards: 70\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\r\nv=0\nEXTRA";

    fn req(text: &str) -> Request {
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Some(Message::Request(r))) => r,
            other => panic!("expected request, got {other:?}"),
        }
    }

    fn fail(text: &[u8]) -> ParseFailure {
        match parse(text, &Limits::default()) {
            Err(f) => f,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn parses_full_invite_and_trims_body_to_content_length() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "sip:service@10.0.0.1:5060");
        assert_eq!(r.body, b"v=0\n");
        assert_eq!(r.from.display.as_deref(), Some("Alice \"A\" Smith"));
        assert_eq!(r.from.user().as_deref(), Some("+15551234"));
        assert_eq!(r.from.tag.as_deref(), Some("abc"));
        assert_eq!(r.to.tag, None);
        assert_eq!(r.cseq.seq, 1);
        assert_eq!(r.vias.len(), 1);
        assert!(r.vias[0].rport);
        assert_eq!(r.vias[0].branch.as_deref(), Some("z9hG4bK-1"));
        assert_eq!(r.vias[0].sent_by(), "10.0.0.2:5061");
        assert_eq!(r.contact.unwrap().uri, "sip:sipp@10.0.0.2:5061");
        assert_eq!(r.max_forwards, Some(70));
    }

    #[test]
    fn compact_forms_folding_and_via_lists_are_normalised() {
        let text = "OPTIONS sip:x@10.0.0.1 SIP/2.0\r\n\
            v: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa, SIP/2.0/TCP proxy.example:5070;branch=z9hG4bKb\r\n\
            f: <sip:a@10.0.0.2>\r\n ;tag=1\r\n\
            t: sip:x@10.0.0.1\r\n\
            i: abc\r\n\
            CSeq: 7\r\n OPTIONS\r\n\
            m: <sip:a@10.0.0.2>\r\n\
            l: 0\r\n\r\n";
        let r = req(text);
        assert_eq!(r.vias.len(), 2);
        assert_eq!(r.vias[1].host, "proxy.example");
        assert_eq!(r.vias[1].port, Some(5070));
        assert_eq!(r.vias[1].transport, "TCP");
        assert_eq!(r.from.tag.as_deref(), Some("1"));
        assert_eq!(r.call_id, "abc");
        assert_eq!(r.cseq.seq, 7);
        assert_eq!(r.to.uri, "sip:x@10.0.0.1");
    }

    #[test]
    fn record_route_list_is_split_in_order() {
        let text = INVITE.replace(
            "Max-Forwards: 70\r\n",
            "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nRecord-Route: <sip:p3;lr>\r\n",
        );
        let r = req(&text);
        assert_eq!(
            r.record_route,
            vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>", "<sip:p3;lr>"]
        );
    }

    #[test]
    fn extension_method_parses_for_501() {
        let text = INVITE
            .replace("INVITE sip", "FOO sip")
            .replace("1 INVITE", "1 FOO");
        assert_eq!(req(&text).method, Method::Other("FOO".into()));
    }

    #[test]
    fn missing_call_id_is_answerable() {
        let f = fail(INVITE.replace("Call-ID: 1-1@10.0.0.2\r\n", "").as_bytes());
        assert_eq!(f.error, SipError::MissingHeader("Call-ID"));
        assert_eq!(f.error.reason_phrase(), "Missing Call-ID");
        assert!(f.partial.is_some());
    }

    #[test]
    fn bad_cseq_variants() {
        for bad in [
            "CSeq: x INVITE",
            "CSeq: 99999999999 INVITE",
            "CSeq: 1 BYE",
            "CSeq: 1",
        ] {
            let f = fail(INVITE.replace("CSeq: 1 INVITE", bad).as_bytes());
            assert_eq!(f.error.reason_phrase(), "Bad CSeq", "{bad}");
            assert!(f.partial.is_some());
        }
    }

    #[test]
    fn short_body_is_rejected() {
        let text = INVITE.replace("Content-Length: 4", "Content-Length: 400");
        let f = fail(text.as_bytes());
        assert!(matches!(
            f.error,
            SipError::BodyLength { declared: 400, .. }
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_headers: 5,
            ..Limits::default()
        };
        let f = parse(INVITE.as_bytes(), &limits).unwrap_err();
        assert_eq!(f.error, SipError::TooManyHeaders { limit: 5 });

        let long = INVITE.replace("Max-Forwards: 70", &format!("X-Long: {}", "a".repeat(9000)));
        assert!(matches!(
            fail(long.as_bytes()).error,
            SipError::TooLarge {
                what: "header line",
                ..
            }
        ));

        let huge = format!("{INVITE}{}", "x".repeat(70_000));
        let f = fail(huge.as_bytes());
        assert!(matches!(
            f.error,
            SipError::TooLarge {
                what: "message",
                ..
            }
        ));
        assert_eq!(f.error.status_code(), 513);
        assert!(
            f.partial.is_some(),
            "header block is fine, so 513 is possible"
        );
    }

    #[test]
    fn garbage_and_injection_are_rejected_without_partial() {
        for g in [
            &b"\x00\x01\x02garbage"[..],
            b"hello\r\n\r\n",
            b"INVITE\r\n\r\n",
        ] {
            let f = fail(g);
            assert!(f.partial.is_none(), "{g:?}");
        }
        let inj = INVITE.replace("Max-Forwards: 70", "Subject: a\rInjected: b");
        assert!(matches!(
            fail(inj.as_bytes()).error,
            SipError::BadHeaderLine { .. }
        ));
        assert!(matches!(parse(b"\r\n\r\n", &Limits::default()), Ok(None)));
    }

    #[test]
    fn ipv6_literals_and_tel_request_uri_get_past_rsip() {
        let text = INVITE
            .replace(
                "SIP/2.0/UDP 10.0.0.2:5061",
                "SIP/2.0/UDP [2001:db8::2]:5061",
            )
            .replace(
                "INVITE sip:service@10.0.0.1:5060 SIP",
                "INVITE tel:+4930123 SIP",
            )
            .replace("<sip:sipp@10.0.0.2:5061>", "<sip:sipp@[2001:db8::2]:5070>");
        let r = req(&text);
        assert_eq!(r.uri, "tel:+4930123");
        assert_eq!(r.vias[0].host, "[2001:db8::2]");
        assert_eq!(r.vias[0].port, Some(5061));
        assert_eq!(r.vias[0].sent_by(), "[2001:db8::2]:5061");
        let contact = r.contact.unwrap().uri;
        assert_eq!(
            uri_host_port(&contact),
            Some((
                rsip::Host::IpAddr("2001:db8::2".parse().unwrap()),
                Some(5070)
            ))
        );
        let src: SocketAddr = "[2001:db8::2]:5061".parse().unwrap();
        assert_eq!(
            response_top_via(&r.vias[0], src),
            "SIP/2.0/UDP [2001:db8::2]:5061;branch=z9hG4bK-1;rport=5061;received=2001:db8::2"
        );
        assert!(fail(
            INVITE
                .replace("sip:service@10.0.0.1:5060 SIP", "nonsense SIP")
                .as_bytes()
        )
        .partial
        .is_none());
    }

    #[test]
    fn wrong_version_maps_to_505() {
        let f = fail(INVITE.replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1).as_bytes());
        assert_eq!(f.error.status_code(), 505);
    }

    #[test]
    fn responses_parse() {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\
            From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\
            Content-Length: 0\r\n\r\n";
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Some(Message::Response(r))) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.cseq.method, Method::Bye);
                assert_eq!(r.to.tag.as_deref(), Some("2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_dialog_auth_and_registration_fields() {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\
            Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
            Call-ID: c\r\nCSeq: 1 REGISTER\r\n\
            m: <sip:x@10.0.0.1:5060>;expires=60, <sip:y@h>;expires=\"30\", not a contact\r\n\
            Contact: *\r\nexpires: 120\r\nMin-Expires: 1e3\r\n\
            www-authenticate: Digest realm=\"a, b\", nonce=\"n\"\r\n\
            WWW-Authenticate: Digest realm=\"r\", nonce=\"m\", algorithm=SHA-256\r\n\
            Proxy-Authenticate: Digest realm=\"p\", nonce=\"q\"\r\n\
            Content-Type: application/SDP\r\nContent-Length: 0\r\n\r\n";
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Some(Message::Response(r))) => {
                let uris: Vec<&str> = r.contacts.iter().map(|c| c.uri.as_str()).collect();
                assert_eq!(uris, vec!["sip:x@10.0.0.1:5060", "sip:y@h"]);
                assert_eq!(r.contacts[0].params, ";expires=60");
                assert_eq!(r.record_route, vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
                assert_eq!(
                    r.www_authenticate,
                    vec![
                        "Digest realm=\"a, b\", nonce=\"n\"",
                        "Digest realm=\"r\", nonce=\"m\", algorithm=SHA-256"
                    ]
                );
                assert_eq!(
                    r.proxy_authenticate,
                    vec!["Digest realm=\"p\", nonce=\"q\""]
                );
                assert_eq!(r.expires, Some(120));
                assert_eq!(r.min_expires, None, "not delta-seconds");
                assert_eq!(r.media_type().as_deref(), Some("application/sdp"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_seconds("99999999999"), Some(u32::MAX));
        assert_eq!(parse_seconds(" 7 "), Some(7));
        assert_eq!(parse_seconds("-1"), None);
    }

    #[test]
    fn tel_uri_user_and_display_without_quotes() {
        let n = NameAddr::parse("Bob <tel:+4930123;phone-context=x>;tag=9", "From").unwrap();
        assert_eq!(n.user().as_deref(), Some("+4930123"));
        assert_eq!(n.display.as_deref(), Some("Bob"));
        assert_eq!(n.tag.as_deref(), Some("9"));
        let n = NameAddr::parse("sip:bob@h;tag=2", "To").unwrap();
        assert_eq!(n.uri, "sip:bob@h");
        assert_eq!(n.tag.as_deref(), Some("2"));
        assert!(NameAddr::parse("<sip:a@b", "To").is_err());
        assert!(NameAddr::parse("nonsense", "To").is_err());
    }

    #[test]
    fn response_via_gets_rport_and_received() {
        let via = Via::parse("SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bKx;rport").unwrap();
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        assert_eq!(
            response_top_via(&via, src),
            "SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bKx;rport=40000;received=203.0.113.9"
        );
        assert_eq!(response_destination(&via, src, Transport::Udp), src);

        let via = Via::parse("SIP/2.0/UDP 192.168.1.5;branch=z9hG4bKx").unwrap();
        assert_eq!(
            response_top_via(&via, src),
            "SIP/2.0/UDP 192.168.1.5;branch=z9hG4bKx;received=203.0.113.9"
        );
        assert_eq!(
            response_destination(&via, src, Transport::Udp),
            "203.0.113.9:5060".parse().unwrap()
        );
        assert_eq!(response_destination(&via, src, Transport::Tcp), src);

        let same = Via::parse("SIP/2.0/UDP 203.0.113.9:7000;branch=z9hG4bKx").unwrap();
        assert_eq!(response_top_via(&same, src), same.raw);
    }

    #[test]
    fn serialised_response_reparses() {
        let r = req(INVITE);
        let ctx = ResponseCtx::from_request(&r, "10.0.0.2:5061".parse().unwrap(), Transport::Udp);
        let bytes = ctx.response(
            200,
            "OK",
            Some("tt"),
            true,
            vec![hdr("Contact", "<sip:w@h>")],
            b"v=0\r\n",
        );
        match parse(&bytes, &Limits::default()) {
            Ok(Some(Message::Response(resp))) => {
                assert_eq!(resp.status, 200);
                assert_eq!(resp.to.tag.as_deref(), Some("tt"));
                assert_eq!(resp.body, b"v=0\r\n");
                assert_eq!(resp.vias[0].raw, ctx.vias[0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framer_handles_split_merged_and_keepalive() {
        let msg = INVITE.replace("\nEXTRA", "\n");
        let msg = msg.as_bytes();
        let mut f = StreamFramer::new(Limits::default());
        // split in three chunks with a keep-alive before
        f.push(b"\r\n\r\n").unwrap();
        assert!(f.next_message().is_none());
        f.push(&msg[..10]).unwrap();
        assert!(f.next_message().is_none());
        f.push(&msg[10..msg.len() - 2]).unwrap();
        assert!(f.next_message().is_none());
        // rest of the first message, a keep-alive, and a complete second message merged
        let mut tail = msg[msg.len() - 2..].to_vec();
        tail.extend_from_slice(b"\r\n");
        tail.extend_from_slice(msg);
        f.push(&tail).unwrap();
        assert_eq!(f.next_message().unwrap().unwrap(), msg);
        assert_eq!(f.next_message().unwrap().unwrap(), msg);
        assert!(f.next_message().is_none());
    }

    #[test]
    fn framer_compact_length_and_errors() {
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcNEXT")
            .unwrap();
        let m = f.next_message().unwrap().unwrap();
        assert!(m.ends_with(b"\r\n\r\nabc"));

        let mut f = StreamFramer::new(Limits::default());
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n")
            .unwrap();
        assert!(matches!(f.next_message(), Some(Err(SipError::Framing(_)))));
        assert!(f.next_message().is_none());
        assert!(f.push(b"x").is_err());

        let limits = Limits {
            max_message_bytes: 200,
            ..Limits::default()
        };
        let mut f = StreamFramer::new(limits);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 500\r\n\r\n")
            .unwrap();
        assert!(matches!(
            f.next_message(),
            Some(Err(SipError::TooLarge { .. }))
        ));

        let mut f = StreamFramer::new(limits);
        f.push(&[b'a'; 250]).unwrap();
        assert!(matches!(
            f.next_message(),
            Some(Err(SipError::TooLarge {
                what: "header block",
                ..
            }))
        ));
        let mut f = StreamFramer::new(limits);
        assert!(f.push(&[b'a'; 401]).is_err());

        let mut f = StreamFramer::new(Limits::default());
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n")
            .unwrap();
        assert!(matches!(f.next_message(), Some(Err(SipError::Framing(_)))));
    }
}
