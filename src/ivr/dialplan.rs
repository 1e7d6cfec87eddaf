//! Dialplan files (`dialplans/*.toml`): menus, their prompts, DTMF options and the phrases
//! that pick options by voice (plus voice-only FAQ answers and the `[speech]` settings).
//!
//! A dialplan is loaded once, validated completely and then shared (`Arc<Dialplan>`) by every
//! call's [`CallFlow`](crate::ivr::flow::CallFlow). Validation reports every problem it finds in
//! one pass, each with `file:line:column`, so a campaign manager fixes a file in one round.
//! TOML syntax errors are all reported first; the dialplan checks run once the file parses,
//! because toml's error recovery can reshape the document and the checks would then report
//! problems that are not in the file. The syntax is documented in `docs/dialplan.md`.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::ivr::routing::Condition;
use crate::speech::intent::{IntentError, PhraseSet};
use crate::tomlcheck::{Diagnostics, Item, Key, Span, ValueReader};

/// No-input timeout when neither the menu nor `[defaults]` sets one.
pub const DEFAULT_NO_INPUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Inter-digit timeout when neither the menu nor `[defaults]` sets one.
pub const DEFAULT_INTER_DIGIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed attempts (no input or no match) before a menu's final action runs.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Key that ends multi-digit input early when neither the menu nor `[defaults]` sets one.
pub const DEFAULT_TERMINATOR: char = '#';
/// Accepted `no_input_timeout` range, in seconds.
pub const NO_INPUT_TIMEOUT_RANGE: (f64, f64) = (1.0, 60.0);
/// Accepted `inter_digit_timeout` range, in seconds.
pub const INTER_DIGIT_TIMEOUT_RANGE: (f64, f64) = (0.5, 10.0);
/// Accepted `max_attempts` range.
pub const MAX_ATTEMPTS_RANGE: (i64, i64) = (1, 10);
/// Longest DTMF key (digits) an option may have.
pub const MAX_KEY_LEN: usize = 16;
/// Longest menu name, prompt name or transfer target.
const MAX_NAME_LEN: usize = 128;
/// Largest dialplan file read (a guard against pointing `load` at the wrong file).
const MAX_FILE_BYTES: u64 = 4 << 20;
/// The word that means "end the call" wherever a menu name is expected (`then`, `next`).
pub const HANGUP: &str = "hangup";
/// Languages phrases and texts can be written in (codes as in `[speech] language`).
/// Korean is here because the only Vosk model the package registries carry is Korean: the
/// speech tests run a Korean menu with it.
pub const LANGUAGES: &[&str] = &["en", "zh", "ko"];
/// The call language when `[speech] language` is not set.
pub const DEFAULT_LANGUAGE: &str = "en";
/// A match scoring at or above this is taken without asking.
pub const DEFAULT_CONFIDENCE: f32 = 0.6;
/// A match scoring below this counts as no match; between it and the confidence, the caller
/// is asked to confirm.
pub const DEFAULT_REJECT_BELOW: f32 = 0.3;
/// Trailing silence that ends an utterance, when `[speech] end_silence_ms` is not set.
pub const DEFAULT_END_SILENCE: Duration = Duration::from_millis(600);
/// Accepted `end_silence_ms` range.
pub const END_SILENCE_MS_RANGE: (i64, i64) = (200, 3000);
/// The confirmation question (rendered by TTS) when `[speech] confirm_text` is not set.
pub const DEFAULT_CONFIRM_TEXT: &str = "Did you say {label}?";
/// The placeholder in `confirm_text` replaced by the option's label.
pub const LABEL_PLACEHOLDER: &str = "{label}";
/// Longest phrase (characters): a phrase is a few words a caller says, not a sentence.
const MAX_PHRASE_CHARS: usize = 100;
/// Longest text rendered by TTS (`answer_text`, `confirm_text`, labels).
const MAX_TEXT_CHARS: usize = 1000;
/// Answer `then` values.
const ANSWER_THEN: &[&str] = &["menu", "anything-else"];
/// Queue priority of a caller with nothing special (options' `queue` actions).
pub const PRIORITY_NORMAL: i32 = 0;
/// Queue priority a route's `queue` action gives (VIP and other routed callers).
pub const PRIORITY_VIP: i32 = 5;
/// Queue priority of the fast lane.
pub const PRIORITY_FAST_LANE: i32 = 10;
/// Accepted `priority` range.
pub const PRIORITY_RANGE: (i64, i64) = (-100, 100);
/// The key that takes the fast lane in every menu once it was offered.
pub const FAST_LANE_KEY: &str = "0";
/// Phrases that take the fast lane when a route does not set `say` (English).
pub const DEFAULT_FAST_LANE_PHRASES: &[&str] = &[
    "agent",
    "representative",
    "speak to an agent",
    "talk to a person",
    "operator",
];
/// The fast lane offer when a route does not set `offer_text`.
pub const DEFAULT_OFFER_TEXT: &str =
    "To speak to one of our team straight away, press 0 or say agent at any time.";
/// What a closed queue says when `[queues.<name>]` has no fallback for the reason.
pub const DEFAULT_UNAVAILABLE_TEXT: &str =
    "Sorry, no one can take your call right now. Please call again later. Goodbye.";
/// The confirmation of a callback request when the fallback has no message.
pub const DEFAULT_CALLBACK_TEXT: &str =
    "Thank you. We will call you back on this number as soon as we can. Goodbye.";
/// The invitation to leave a voicemail when the fallback has no message.
pub const DEFAULT_VOICEMAIL_TEXT: &str =
    "Please leave your name and a short message after this announcement. Hang up when you are done.";
/// Voicemail length when the fallback does not set `max_seconds`.
pub const DEFAULT_VOICEMAIL_SECONDS: u64 = 120;
/// Accepted `max_seconds` range.
pub const VOICEMAIL_SECONDS_RANGE: (i64, i64) = (5, 600);
/// Longest whisper text for an agent (characters).
pub const MAX_WHISPER_CHARS: usize = 200;
/// Built-in confirmation replies per language; `[speech] yes` / `no` replace them.
const BUILTIN_YES: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "yes",
            "yeah",
            "yep",
            "yes please",
            "correct",
            "that's right",
            "right",
            "sure",
        ],
    ),
    ("zh", &["是", "是的", "对", "对的", "没错", "正确"]),
    ("ko", &["네", "예", "맞아요", "응"]),
];
const BUILTIN_NO: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "no",
            "nope",
            "no thanks",
            "wrong",
            "that's wrong",
            "not right",
        ],
    ),
    ("zh", &["不是", "不对", "不", "错了"]),
    ("ko", &["아니요", "아니", "아니에요"]),
];

/// Answers whether a prompt exists (a WAV file under `voice-prompts/`, named without `.wav`).
pub trait PromptCatalog {
    fn has_prompt(&self, name: &str) -> bool;
    /// Every known prompt name, used for "did you mean" hints; a catalog that cannot list
    /// its prompts cheaply may keep this default.
    fn prompt_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl PromptCatalog for HashSet<String> {
    fn has_prompt(&self, name: &str) -> bool {
        self.contains(name)
    }
    fn prompt_names(&self) -> Vec<String> {
        self.iter().cloned().collect()
    }
}

/// A catalog that has every prompt: for checking a dialplan's structure without prompt files.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyPrompt;

impl PromptCatalog for AnyPrompt {
    fn has_prompt(&self, _name: &str) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem in a dialplan file, at a 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.severity,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    #[error("cannot read dialplan {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every diagnostic found (errors and warnings), ordered by position.
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_diagnostics(diags: &[Diagnostic]) -> String {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let mut out = format!(
        "invalid dialplan: {errors} error{}",
        if errors == 1 { "" } else { "s" }
    );
    for d in diags {
        out.push('\n');
        out.push_str(&d.to_string());
    }
    out
}

/// Where the flow goes after a prompt: another menu, or the end of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Menu(String),
    Hangup,
}

/// What happens when an option is chosen, or when a menu runs out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Enter another menu (plays its prompt).
    Goto { menu: String },
    /// Play answer prompts, then continue.
    Play { prompts: Vec<String>, then: Next },
    /// Play `prompts` (e.g. "please hold", may be empty), then hand the call to `target`.
    Transfer {
        target: String,
        prompts: Vec<String>,
    },
    /// Play `prompts` (e.g. "goodbye", may be empty), then hang up.
    Hangup { prompts: Vec<String> },
    /// Record an opt-out for the caller's number, play `prompts`, then continue.
    OptOut { prompts: Vec<String>, then: Next },
    /// Play `prompts` (e.g. "please hold", may be empty), then put the call in the queue
    /// `queue` (declared in `[queues.<name>]`). `priority` overrides the default of where the
    /// action runs ([`PRIORITY_NORMAL`] for options, [`PRIORITY_VIP`] for routes);
    /// `whisper` is added to what the agent is told.
    Queue {
        queue: String,
        priority: Option<i32>,
        prompts: Vec<String>,
        whisper: Option<String>,
    },
    /// Check the caller's voiceprint, then branch on the decision.
    VerifyVoice(Box<VoiceCheck>),
}

/// A `verify_voice` step: what the caller is asked to say and where each decision leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceCheck {
    /// Asks the caller to say the passphrase (a recorded prompt or a TTS text).
    pub phrase: Spoken,
    /// Whether speech the caller already gave in this call may be used instead of asking
    /// (`reuse_speech`, default true).
    pub reuse_speech: bool,
    pub on_accept: Action,
    pub on_reject: Action,
    pub on_not_enough: Action,
    /// Unknown caller or no voiceprint enrolled; default: `on_not_enough`.
    pub on_not_enrolled: Action,
}

/// Why a queue cannot take the call (reported by the ACD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    /// Outside the queue's hours of operation.
    AfterHours,
    /// The queue is full or the caller waited longer than the queue allows.
    Overflow,
    /// No agent is logged in.
    NoAgents,
}

impl UnavailableReason {
    /// The name used in dialplans and call records (`after_hours`, `overflow`, `no_agents`).
    pub fn name(self) -> &'static str {
        match self {
            UnavailableReason::AfterHours => "after_hours",
            UnavailableReason::Overflow => "overflow",
            UnavailableReason::NoAgents => "no_agents",
        }
    }
}

/// What kind of fallback a queue runs when it cannot take the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackKind {
    /// Play the message, then go on.
    Message,
    /// Record a callback request for the caller's number, confirm with the message, go on.
    Callback,
    /// Play the message (the invitation to speak), record up to `max`, then go on.
    Voicemail { max: Duration },
}

/// A queue's fallback for one [`UnavailableReason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub kind: FallbackKind,
    /// Played first (for a callback: the confirmation); never empty once loaded.
    pub message: Spoken,
    /// Where the call goes afterwards (default: hang up).
    pub then: Next,
}

/// A queue the dialplan routes to, `[queues.<name>]`. Members, strategy and hours belong to
/// the ACD configuration; the dialplan only says what callers hear when the queue is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub after_hours: Fallback,
    pub overflow: Fallback,
    pub no_agents: Fallback,
}

impl QueueConfig {
    pub fn fallback(&self, reason: UnavailableReason) -> &Fallback {
        match reason {
            UnavailableReason::AfterHours => &self.after_hours,
            UnavailableReason::Overflow => &self.overflow,
            UnavailableReason::NoAgents => &self.no_agents,
        }
    }
}

/// What a matching route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Fast lane, `mode = "offer"`: the caller hears `text` once and from then on the key
    /// [`FAST_LANE_KEY`] or one of `phrases` in any menu queues them in `queue`.
    Offer {
        queue: String,
        priority: i32,
        prompts: Vec<String>,
        text: LocalText,
        phrases: Phrases,
    },
    /// Run an action at once (`queue`, fast lane `mode = "transfer"` as a queue with
    /// [`PRIORITY_FAST_LANE`], or any option action such as `goto`).
    Run(Action),
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub when: Condition,
    pub action: RouteAction,
    /// Short tag for reports and the queue action's reasons (`"elderly"`, `"vip"`).
    pub reason: String,
    /// What the agent is told about it (default: the reason with `_` as spaces).
    pub whisper: String,
}

/// `[fraud]`: what a watchlist hit does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FraudSettings {
    /// `None` (`on_hit = "flag"`, the default): only recorded. Otherwise the action run at
    /// the next safe point.
    pub on_hit: Option<Action>,
}

/// Phrases by language code (`"en"` → `["lost card", "stolen card"]`), as written.
pub type Phrases = BTreeMap<String, Vec<String>>;

/// A text in one or more languages, keyed by language code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalText(pub BTreeMap<String, String>);

impl LocalText {
    /// The text in `language`, else in `fallback` (the dialplan's language).
    pub fn get(&self, language: &str, fallback: &str) -> Option<&str> {
        self.0
            .get(language)
            .or_else(|| self.0.get(fallback))
            .map(String::as_str)
    }
}

/// Something said to the caller: recorded prompts, or a text rendered by TTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spoken {
    Prompts(Vec<String>),
    Text(LocalText),
}

/// Where the call goes after an FAQ answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerThen {
    /// The menu again (its prompt plays).
    Menu,
    /// The menu's `anything_else` prompt, then input in the same menu.
    AnythingElse,
}

/// A voice-only option: phrases that ask a question, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub phrases: Phrases,
    /// What confirmations and call records call it; default: its first phrase.
    pub label: Option<LocalText>,
    pub reply: Spoken,
    pub then: AnswerThen,
}

impl Answer {
    /// The answer's name in `language` (see [`voice_label`]).
    pub fn label(&self, language: &str, fallback: &str) -> Option<String> {
        voice_label(self.label.as_ref(), &self.phrases, language, fallback)
    }
}

/// One option of a menu: a DTMF key, its action and the phrases that choose it by voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuOption {
    /// Normalised key: digits `0-9`, `*`, `#`, `A-D` (upper case).
    pub key: String,
    pub action: Action,
    /// Phrases that choose this option by voice (empty: keys only).
    pub phrases: Phrases,
    /// What confirmations and call records call it; default: its first phrase.
    pub label: Option<LocalText>,
}

impl MenuOption {
    /// The option's name in `language` (see [`voice_label`]).
    pub fn label(&self, language: &str, fallback: &str) -> Option<String> {
        voice_label(self.label.as_ref(), &self.phrases, language, fallback)
    }
}

/// An option's name for the caller: its label in `language`, else its first phrase in
/// `language`, else the same two in `fallback`.
pub fn voice_label(
    label: Option<&LocalText>,
    phrases: &Phrases,
    language: &str,
    fallback: &str,
) -> Option<String> {
    let in_lang = |lang: &str| {
        label
            .and_then(|l| l.0.get(lang))
            .or_else(|| phrases.get(lang).and_then(|p| p.first()))
    };
    in_lang(language).or_else(|| in_lang(fallback)).cloned()
}

/// The `[speech]` settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSettings {
    /// The call language (a code from [`LANGUAGES`]); plain phrase lists and texts are in it.
    pub language: String,
    /// Matches scoring at or above this are taken at once.
    pub confidence: f32,
    /// Matches scoring below this are no match; between the two the caller confirms.
    pub reject_below: f32,
    /// The confirmation question; [`LABEL_PLACEHOLDER`] is replaced by the option's label.
    pub confirm_text: LocalText,
    /// Replies that confirm, by language (built-in lists unless the dialplan sets them).
    pub yes: Phrases,
    /// Replies that deny, by language.
    pub no: Phrases,
    /// Trailing silence that ends an utterance (for the shell's endpointer).
    pub end_silence: Duration,
    /// Silence allowed after a prompt in menus that listen; `None`: the menu's
    /// `no_input_timeout`.
    pub no_input_timeout: Option<Duration>,
    /// Whether the opening menus (the entry menu and the first menu with options it leads
    /// to) understand the phrases of every menu.
    pub say_anything: bool,
}

impl Default for SpeechSettings {
    fn default() -> Self {
        let builtin = |table: &[(&str, &[&str])]| -> Phrases {
            table
                .iter()
                .map(|(lang, words)| {
                    (
                        lang.to_string(),
                        words.iter().map(|w| w.to_string()).collect(),
                    )
                })
                .collect()
        };
        SpeechSettings {
            language: DEFAULT_LANGUAGE.to_string(),
            confidence: DEFAULT_CONFIDENCE,
            reject_below: DEFAULT_REJECT_BELOW,
            confirm_text: LocalText(BTreeMap::from([(
                DEFAULT_LANGUAGE.to_string(),
                DEFAULT_CONFIRM_TEXT.to_string(),
            )])),
            yes: builtin(BUILTIN_YES),
            no: builtin(BUILTIN_NO),
            end_silence: DEFAULT_END_SILENCE,
            no_input_timeout: None,
            say_anything: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuKind {
    /// Plays its prompt and continues (a greeting, a notice).
    Announcement { next: Next },
    /// Plays its prompt and waits for a key.
    Choice {
        options: BTreeMap<String, MenuOption>,
    },
}

/// A menu with every setting resolved (menu value, else `[defaults]`, else built-in default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Menu {
    pub name: String,
    /// Played back to back; never empty.
    pub prompts: Vec<String>,
    pub kind: MenuKind,
    /// Whether a key press interrupts this menu's prompts (barge-in).
    pub barge_in: bool,
    /// Silence allowed after the prompt ends before it counts as a failed attempt.
    pub no_input_timeout: Duration,
    /// Silence allowed between the digits of a multi-digit key.
    pub inter_digit_timeout: Duration,
    /// Key that ends multi-digit input early; never part of an option key.
    pub terminator: Option<char>,
    /// Played before the menu prompt is repeated after silence (may be empty).
    pub no_input_prompts: Vec<String>,
    /// Played before the menu prompt is repeated after an unknown key (may be empty).
    pub no_match_prompts: Vec<String>,
    /// Failed attempts after which `final_action` runs.
    pub max_attempts: u32,
    pub final_action: Action,
    /// Voice-only options (FAQ answers), in file order.
    pub answers: Vec<Answer>,
    /// Played instead of the menu prompt after an answer with `then = "anything-else"`.
    pub anything_else: Option<Spoken>,
}

/// How the digits collected so far relate to a menu's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMatch<'a> {
    /// The option whose key equals the input exactly.
    pub exact: Option<&'a MenuOption>,
    /// Whether some longer key starts with the input (more digits may follow).
    pub longer: bool,
}

impl Menu {
    /// The menu's options, empty for an announcement.
    pub fn options(&self) -> impl Iterator<Item = &MenuOption> {
        let options = match &self.kind {
            MenuKind::Choice { options } => Some(options.values()),
            MenuKind::Announcement { .. } => None,
        };
        options.into_iter().flatten()
    }

    /// Matches collected digits against this menu's keys.
    pub fn lookup(&self, input: &str) -> KeyMatch<'_> {
        let MenuKind::Choice { options } = &self.kind else {
            return KeyMatch {
                exact: None,
                longer: false,
            };
        };
        let exact = options.get(input);
        // Keys are sorted, so the first key after `input` is the only candidate to extend it.
        let longer = options
            .range::<str, _>((std::ops::Bound::Excluded(input), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(input));
        KeyMatch { exact, longer }
    }
}

/// A validated dialplan.
#[derive(Debug, Clone, PartialEq)]
pub struct Dialplan {
    name: String,
    entry: String,
    menus: BTreeMap<String, Menu>,
    prompts: BTreeSet<String>,
    speech: SpeechSettings,
    speech_enabled: bool,
    routes: Vec<Route>,
    queues: BTreeMap<String, QueueConfig>,
    fraud: FraudSettings,
}

impl Dialplan {
    /// Reads and validates a dialplan file. Warnings come back with the dialplan; any error
    /// makes it [`DialplanError::Invalid`] with every diagnostic found.
    pub fn load(
        path: &Path,
        prompts: &dyn PromptCatalog,
    ) -> Result<(Dialplan, Vec<Diagnostic>), DialplanError> {
        let io_error = |source| DialplanError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(io_error)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "larger than {} MiB; is this a dialplan?",
                    MAX_FILE_BYTES >> 20
                ),
            )));
        }
        match String::from_utf8(bytes) {
            Ok(text) => Self::parse_str(path, &text, prompts),
            Err(err) => {
                let valid = err.utf8_error().valid_up_to();
                let bytes = err.as_bytes();
                let prefix = String::from_utf8_lossy(bytes.get(..valid).unwrap_or_default());
                let mut checker = Checker::new(path, &prefix, prompts);
                checker.error(
                    valid..valid,
                    "the file is not valid UTF-8 (save it as UTF-8 text)".to_string(),
                );
                Err(DialplanError::Invalid(checker.diags.list))
            }
        }
    }

    /// Validates dialplan text; `file` is only used in diagnostics.
    pub fn parse_str(
        file: &Path,
        text: &str,
        prompts: &dyn PromptCatalog,
    ) -> Result<(Dialplan, Vec<Diagnostic>), DialplanError> {
        let mut checker = Checker::new(file, text, prompts);
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            for err in &syntax_errors {
                let span = err.span().unwrap_or(0..0);
                let message = syntax_message(err.message(), text, &span);
                checker.error(span, message);
            }
            return Err(checker.into_invalid());
        }
        let default_name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dialplan".to_string());
        let dialplan = checker.document(doc.get_ref(), default_name);
        checker.finish(dialplan)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The menu every call starts in.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Every text the flow can ask TTS to say in `language` (FAQ answers, "anything else?",
    /// "Did you say …?" for every option and answer): rendered once at start-up so no caller
    /// waits for synthesis.
    pub fn fixed_texts(&self, language: &str) -> Vec<String> {
        let fallback = self.language();
        let mut out: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if !t.trim().is_empty() && !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        };
        let confirm = self
            .speech()
            .and_then(|s| s.confirm_text.get(language, fallback))
            .unwrap_or(DEFAULT_CONFIRM_TEXT)
            .to_string();
        for menu in self.menus() {
            if let Some(Spoken::Text(t)) = &menu.anything_else {
                if let Some(t) = t.get(language, fallback) {
                    add(t);
                }
            }
            for answer in &menu.answers {
                if let Spoken::Text(t) = &answer.reply {
                    if let Some(t) = t.get(language, fallback) {
                        add(t);
                    }
                }
                if let Some(label) = answer.label(language, fallback) {
                    add(&confirm.replace(LABEL_PLACEHOLDER, &label));
                }
            }
            if let MenuKind::Choice { options } = &menu.kind {
                for option in options.values() {
                    if let Some(label) = option.label(language, fallback) {
                        add(&confirm.replace(LABEL_PLACEHOLDER, &label));
                    }
                }
            }
        }
        // Route offers, voice check passphrases and queue fallback messages.
        let mut more: Vec<String> = Vec::new();
        let text_of = |s: &Spoken| match s {
            Spoken::Text(t) => t.get(language, fallback).map(str::to_string),
            Spoken::Prompts(_) => None,
        };
        let mut actions: Vec<&Action> = self.all_actions().collect();
        for route in &self.routes {
            match &route.action {
                RouteAction::Offer { text, phrases, .. } => {
                    more.extend(text.get(language, fallback).map(str::to_string));
                    if let Some(label) = phrases.get(language).and_then(|p| p.first()) {
                        more.push(confirm.replace(LABEL_PLACEHOLDER, label));
                    }
                }
                RouteAction::Run(action) => actions.push(action),
            }
        }
        for action in actions {
            walk_actions(action, &mut |a| {
                if let Action::VerifyVoice(check) = a {
                    more.extend(text_of(&check.phrase));
                }
            });
        }
        for queue in self.queues.values() {
            for fallback in [&queue.after_hours, &queue.overflow, &queue.no_agents] {
                more.extend(text_of(&fallback.message));
            }
        }
        for t in more {
            add(&t);
        }
        out
    }

    /// Every option action and final action of every menu, plus `[fraud] on_hit`.
    fn all_actions(&self) -> impl Iterator<Item = &Action> {
        self.menus
            .values()
            .flat_map(|menu| {
                menu.options()
                    .map(|o| &o.action)
                    .chain(std::iter::once(&menu.final_action))
            })
            .chain(self.fraud.on_hit.as_ref())
    }

    pub fn menu(&self, name: &str) -> Option<&Menu> {
        self.menus.get(name)
    }

    /// The `[[routes]]`, in file order (the first match wins).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// A queue declared in `[queues.<name>]`.
    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.queues.get(name)
    }

    /// Every declared queue, by name.
    pub fn queues(&self) -> impl Iterator<Item = &QueueConfig> {
        self.queues.values()
    }

    /// The `[fraud]` settings.
    pub fn fraud(&self) -> &FraudSettings {
        &self.fraud
    }

    pub fn menus(&self) -> impl Iterator<Item = &Menu> {
        self.menus.values()
    }

    pub fn menu_names(&self) -> impl Iterator<Item = &str> {
        self.menus.keys().map(String::as_str)
    }

    /// Every prompt the dialplan refers to, each once, sorted.
    pub fn prompt_names(&self) -> impl Iterator<Item = &str> {
        self.prompts.iter().map(String::as_str)
    }

    /// The speech settings, or `None` when the dialplan is keys only (no phrases, or
    /// `[speech] enabled = false`).
    pub fn speech(&self) -> Option<&SpeechSettings> {
        self.speech_enabled.then_some(&self.speech)
    }

    /// The dialplan's language (`[speech] language`), in which plain phrase lists are written.
    pub fn language(&self) -> &str {
        &self.speech.language
    }

    /// The menus a call starts in: the entry menu, then the play-only menus its `next` chain
    /// passes, up to and including the first menu with options.
    pub fn opening_menus(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut name = self.entry.as_str();
        while let Some(menu) = self.menus.get(name) {
            if out.contains(&name) {
                break;
            }
            out.push(name);
            match &menu.kind {
                MenuKind::Announcement {
                    next: Next::Menu(next),
                } => name = next,
                _ => break,
            }
        }
        out
    }

    /// Every menu, those reachable from the entry menu first in breadth-first order (nearest
    /// first), then the unreachable ones by name.
    pub fn menus_by_distance(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        let mut queue = VecDeque::from([self.entry.as_str()]);
        queue.extend(entry_points(self));
        while let Some(name) = queue.pop_front() {
            let Some((name, menu)) = self.menus.get_key_value(name) else {
                continue;
            };
            if seen.contains(&name.as_str()) {
                continue;
            }
            seen.push(name);
            let mut targets = Vec::new();
            match &menu.kind {
                MenuKind::Announcement { next } => {
                    if let Next::Menu(m) = next {
                        targets.push(m.as_str());
                    }
                }
                MenuKind::Choice { options } => {
                    for option in options.values() {
                        action_targets(&option.action, &mut targets);
                    }
                    action_targets(&menu.final_action, &mut targets);
                }
            }
            queue.extend(targets);
        }
        let unreachable: Vec<&str> = self
            .menus
            .keys()
            .map(String::as_str)
            .filter(|name| !seen.contains(name))
            .collect();
        seen.extend(unreachable);
        seen
    }

    /// Every transfer target the dialplan refers to, each once, sorted.
    pub fn transfer_targets(&self) -> impl Iterator<Item = &str> {
        let mut targets = BTreeSet::new();
        let route_actions = self.routes.iter().filter_map(|r| match &r.action {
            RouteAction::Run(a) => Some(a),
            RouteAction::Offer { .. } => None,
        });
        for action in self.all_actions().chain(route_actions) {
            walk_actions(action, &mut |a| {
                if let Action::Transfer { target, .. } = a {
                    targets.insert(target.as_str());
                }
            });
        }
        targets.into_iter()
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

const TOP_FIELDS: &[&str] = &[
    "name", "entry", "speech", "defaults", "menus", "routes", "queues", "fraud",
];
const SETTING_FIELDS: &[&str] = &[
    "barge_in",
    "no_input_timeout",
    "inter_digit_timeout",
    "terminator",
    "no_input_prompt",
    "no_match_prompt",
    "max_attempts",
    "final",
    "anything_else_prompt",
    "anything_else_text",
];
const MENU_ONLY_FIELDS: &[&str] = &["prompt", "next", "options", "answers"];
const ACTION_VERBS: &[&str] = &[
    "goto",
    "play",
    "transfer",
    "hangup",
    "opt_out",
    "queue",
    "verify_voice",
];
const ACTION_FIELDS: &[&str] = &[
    "goto",
    "play",
    "transfer",
    "hangup",
    "opt_out",
    "queue",
    "verify_voice",
    "then",
    "prompt",
    "priority",
    "whisper",
];
/// Fields an option has beside its action.
const VOICE_FIELDS: &[&str] = &["say", "label"];
const OPTION_FIELDS: &[&str] = &[
    "goto",
    "play",
    "transfer",
    "hangup",
    "opt_out",
    "queue",
    "verify_voice",
    "then",
    "prompt",
    "priority",
    "whisper",
    "say",
    "label",
];
const ROUTE_FIELDS: &[&str] = &["when", "action", "reason", "whisper"];
const FAST_LANE_FIELDS: &[&str] = &[
    "fast_lane",
    "mode",
    "priority",
    "prompt",
    "offer_text",
    "say",
];
const QUEUE_FIELDS: &[&str] = &["after_hours", "overflow", "no_agents", "unavailable"];
const FALLBACK_FIELDS: &[&str] = &[
    "play",
    "text",
    "then",
    "callback",
    "voicemail",
    "max_seconds",
];
const VERIFY_FIELDS: &[&str] = &[
    "phrase_prompt",
    "phrase_text",
    "reuse_speech",
    "on_accept",
    "on_reject",
    "on_not_enough",
    "on_not_enrolled",
];
const FRAUD_FIELDS: &[&str] = &["on_hit"];
const ANSWER_FIELDS: &[&str] = &["say", "answer", "answer_text", "then", "label"];
const SPEECH_FIELDS: &[&str] = &[
    "enabled",
    "language",
    "confidence",
    "reject_below",
    "confirm_text",
    "yes",
    "no",
    "end_silence_ms",
    "no_input_timeout",
    "say_anything",
];

/// Settings given in `[defaults]` or a menu; `None` where the table does not set them.
#[derive(Default, Clone)]
struct Settings {
    barge_in: Option<bool>,
    no_input_timeout: Option<Duration>,
    inter_digit_timeout: Option<Duration>,
    terminator: Option<Option<char>>,
    no_input_prompts: Option<Vec<String>>,
    no_match_prompts: Option<Vec<String>>,
    max_attempts: Option<u32>,
    final_action: Option<Action>,
    anything_else: Option<Spoken>,
    /// Where each setting was given, to point warnings at it.
    spans: Vec<(&'static str, Span)>,
}

/// A reference to a menu, checked once all menu names are known.
struct MenuRef {
    name: String,
    span: Span,
}

/// One phrase as written, with its language and position.
struct SpannedPhrase {
    language: String,
    text: String,
    span: Span,
}

/// The phrases of one option or answer, checked together per menu.
struct VoiceEntry {
    /// "option '2'" or "answer 3 ('opening hours')".
    what: String,
    phrases: Vec<SpannedPhrase>,
}

struct Checker<'a> {
    catalog: &'a dyn PromptCatalog,
    diags: Diagnostics<'a>,
    /// The file's text, to place errors inside strings (conditions).
    text: &'a str,
    /// Every menu name defined, valid or not (so a bad name is reported once, not at each use).
    menu_names: BTreeSet<String>,
    /// Where each menu is defined (its key in `[menus.<name>]`), for warnings about it.
    menu_spans: HashMap<String, Span>,
    menu_refs: Vec<MenuRef>,
    prompt_refs: BTreeMap<String, Vec<Span>>,
    /// The dialplan's language: plain phrase lists and texts are in it.
    language: String,
    /// Whether any option or answer has phrases.
    any_phrase: bool,
    /// Every queue name referred to, checked against `[queues]` once the file is read.
    queue_refs: Vec<MenuRef>,
    /// The queues declared in `[queues]`.
    queue_names: BTreeSet<String>,
}

impl ValueReader for Checker<'_> {
    fn error(&mut self, span: Span, message: String) {
        self.diags.push(span, Severity::Error, message);
    }
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path, text: &'a str, catalog: &'a dyn PromptCatalog) -> Self {
        Checker {
            catalog,
            diags: Diagnostics::new(file, text),
            text,
            menu_names: BTreeSet::new(),
            menu_spans: HashMap::new(),
            menu_refs: Vec::new(),
            prompt_refs: BTreeMap::new(),
            language: DEFAULT_LANGUAGE.to_string(),
            any_phrase: false,
            queue_refs: Vec::new(),
            queue_names: BTreeSet::new(),
        }
    }

    fn sorted_diags(mut self) -> Vec<Diagnostic> {
        self.diags
            .list
            .sort_by_key(|d| (d.line, d.column, d.severity));
        self.diags.list
    }

    fn into_invalid(self) -> DialplanError {
        DialplanError::Invalid(self.sorted_diags())
    }

    fn finish(
        mut self,
        dialplan: Option<Dialplan>,
    ) -> Result<(Dialplan, Vec<Diagnostic>), DialplanError> {
        self.check_menu_refs();
        self.check_queue_refs();
        self.check_prompts();
        match dialplan {
            Some(dialplan) if !self.diags.has_errors() => {
                self.check_reachability(&dialplan);
                Ok((dialplan, self.sorted_diags()))
            }
            _ => {
                if !self.diags.has_errors() {
                    // Every path that drops the dialplan reports why; this keeps the contract
                    // ("an Invalid error carries at least one error") even if one forgets to.
                    self.error(0..0, "the dialplan is incomplete".to_string());
                }
                Err(self.into_invalid())
            }
        }
    }

    // --- generic value readers --------------------------------------------------------------

    /// A duration in seconds (integer or decimal) within `range`.
    fn seconds(&mut self, value: &Item<'_>, field: &str, range: (f64, f64)) -> Option<Duration> {
        let secs = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|v| v as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.type_error(value, field, "a number of seconds");
                return None;
            }
        };
        match secs {
            Some(s) if s.is_finite() && s >= range.0 && s <= range.1 => {
                Some(Duration::from_secs_f64(s))
            }
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "'{field}' must be between {} and {} seconds",
                        range.0, range.1
                    ),
                );
                None
            }
        }
    }

    fn attempts(&mut self, value: &Item<'_>, field: &str) -> Option<u32> {
        let DeValue::Integer(i) = value.get_ref() else {
            self.type_error(value, field, "a whole number");
            return None;
        };
        let (min, max) = MAX_ATTEMPTS_RANGE;
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => u32::try_from(n).ok(),
            _ => {
                self.error(
                    value.span(),
                    format!("'{field}' must be between {min} and {max}"),
                );
                None
            }
        }
    }

    /// One prompt name or a non-empty array of them; each is checked against the catalog
    /// once the whole file has been read.
    fn prompts(&mut self, value: &Item<'_>, field: &str) -> Option<Vec<String>> {
        let items: Vec<&Item<'_>> = match value.get_ref() {
            DeValue::String(_) => vec![value],
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            DeValue::Array(_) => {
                self.error(
                    value.span(),
                    format!("'{field}' needs at least one prompt name"),
                );
                return None;
            }
            _ => {
                self.type_error(value, field, "a prompt name or a list of prompt names");
                return None;
            }
        };
        let mut names = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Some(name) = item.get_ref().as_str() else {
                self.type_error(item, field, "a prompt name (a string)");
                ok = false;
                continue;
            };
            match prompt_name_problem(name) {
                Some(problem) => {
                    self.error(
                        item.span(),
                        format!("invalid prompt name '{}': {problem}", printable(name)),
                    );
                    ok = false;
                }
                None => {
                    self.prompt_refs
                        .entry(name.to_string())
                        .or_default()
                        .push(item.span());
                    names.push(name.to_string());
                }
            }
        }
        ok.then_some(names)
    }

    /// A menu name, or `hangup` where `allow_hangup`.
    fn next(&mut self, value: &Item<'_>, field: &str) -> Option<Next> {
        let name = self.string(value, field)?;
        if name == HANGUP {
            return Some(Next::Hangup);
        }
        Some(Next::Menu(self.menu_ref(name, value.span())))
    }

    fn menu_ref(&mut self, name: String, span: Span) -> String {
        self.menu_refs.push(MenuRef {
            name: name.clone(),
            span,
        });
        name
    }

    /// A number from 0 to 1 (a match score threshold).
    fn fraction(&mut self, value: &Item<'_>, field: &str) -> Option<f32> {
        let number = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|v| v as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.type_error(value, field, "a number from 0 to 1");
                return None;
            }
        };
        match number {
            Some(n) if (0.0..=1.0).contains(&n) => Some(n as f32),
            _ => {
                self.error(
                    value.span(),
                    format!("'{field}' must be between 0 and 1 (a match score)"),
                );
                None
            }
        }
    }

    /// A language code from [`LANGUAGES`], with a suggestion when it is not one.
    fn language_code(&mut self, code: &str, span: Span) -> Option<String> {
        if LANGUAGES.contains(&code) {
            return Some(code.to_string());
        }
        let hint = did_you_mean(code, LANGUAGES.iter().copied())
            .map(|s| format!(" (did you mean '{s}'?)"))
            .unwrap_or_default();
        self.error(
            span,
            format!(
                "unknown language '{}'{hint}: supported languages are {}",
                printable(code),
                LANGUAGES.join(", ")
            ),
        );
        None
    }

    /// Phrases: one string, a list of strings (both in the dialplan's language) or a table
    /// of them by language (`{ en = [...], zh = [...] }`). Returns the valid phrases, and
    /// false when any problem was reported (the valid ones are still checked against the
    /// menu's other phrases, so every problem shows in one pass).
    fn say(&mut self, value: &Item<'_>, field: &str) -> (Vec<SpannedPhrase>, bool) {
        let mut out = Vec::new();
        let mut ok = true;
        match value.get_ref() {
            DeValue::Table(table) => {
                if table.is_empty() {
                    self.error(
                        value.span(),
                        format!(
                            "'{field}' needs at least one language, e.g. {field} = {{ en = [\"...\"] }}"
                        ),
                    );
                    return (out, false);
                }
                for (lang_key, list) in table.iter() {
                    let language = self.language_code(lang_key.get_ref().as_ref(), lang_key.span());
                    let (phrases, list_ok) = self.phrase_list(list, field);
                    ok &= list_ok;
                    match language {
                        Some(language) => {
                            out.extend(phrases.into_iter().map(|(text, span)| SpannedPhrase {
                                language: language.clone(),
                                text,
                                span,
                            }))
                        }
                        None => ok = false,
                    }
                }
            }
            _ => {
                let language = self.language.clone();
                let (phrases, list_ok) = self.phrase_list(value, field);
                ok &= list_ok;
                out.extend(phrases.into_iter().map(|(text, span)| SpannedPhrase {
                    language: language.clone(),
                    text,
                    span,
                }));
            }
        }
        (out, ok)
    }

    /// One phrase or a non-empty list of them, each trimmed and of a sensible length: the
    /// valid ones, and false when any problem was reported.
    fn phrase_list(&mut self, value: &Item<'_>, field: &str) -> (Vec<(String, Span)>, bool) {
        let items: Vec<&Item<'_>> = match value.get_ref() {
            DeValue::String(_) => vec![value],
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            DeValue::Array(_) => {
                self.error(value.span(), format!("'{field}' needs at least one phrase"));
                return (Vec::new(), false);
            }
            _ => {
                self.type_error(
                    value,
                    field,
                    "a phrase, a list of phrases or a table of them by language",
                );
                return (Vec::new(), false);
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Some(text) = item.get_ref().as_str() else {
                self.type_error(item, field, "a phrase (a string)");
                ok = false;
                continue;
            };
            let text = text.trim();
            if text.is_empty() {
                self.error(item.span(), format!("empty phrase in '{field}'"));
                ok = false;
            } else if text.chars().count() > MAX_PHRASE_CHARS {
                self.error(
                    item.span(),
                    format!(
                        "phrase '{}' is longer than {MAX_PHRASE_CHARS} characters: a phrase is the \
                         few words a caller says",
                        printable(text)
                    ),
                );
                ok = false;
            } else {
                out.push((text.to_string(), item.span()));
            }
        }
        (out, ok)
    }

    /// A text for TTS: a string in the dialplan's language, or a table of them by language.
    fn local_text(&mut self, value: &Item<'_>, field: &str) -> Option<LocalText> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        match value.get_ref() {
            DeValue::Table(table) if !table.is_empty() => {
                for (lang_key, text) in table.iter() {
                    let language = self.language_code(lang_key.get_ref().as_ref(), lang_key.span());
                    let text = self.text(text, field);
                    match (language, text) {
                        (Some(language), Some(text)) => {
                            out.insert(language, text);
                        }
                        _ => ok = false,
                    }
                }
            }
            DeValue::Table(_) => {
                self.error(
                    value.span(),
                    format!("'{field}' needs a text in at least one language"),
                );
                return None;
            }
            _ => {
                let text = self.text(value, field)?;
                out.insert(self.language.clone(), text);
            }
        }
        ok.then_some(LocalText(out))
    }

    /// One non-empty text of at most [`MAX_TEXT_CHARS`].
    fn text(&mut self, value: &Item<'_>, field: &str) -> Option<String> {
        let Some(text) = value.get_ref().as_str() else {
            self.type_error(
                value,
                field,
                "a text (a string) or a table of texts by language",
            );
            return None;
        };
        let text = text.trim();
        if text.is_empty() {
            self.error(value.span(), format!("'{field}' is empty"));
            return None;
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            self.error(
                value.span(),
                format!("'{field}' is longer than {MAX_TEXT_CHARS} characters"),
            );
            return None;
        }
        Some(text.to_string())
    }

    /// Checks `{...}` placeholders of a confirmation text: only `{label}` exists.
    fn confirm_placeholders(&mut self, text: &LocalText, span: Span) {
        for t in text.0.values() {
            let mut rest = t.as_str();
            while let Some(open) = rest.find('{') {
                let after = rest.get(open + 1..).unwrap_or("");
                let Some(close) = after.find('}') else { break };
                let name = after.get(..close).unwrap_or("");
                if name != "label" {
                    self.error(
                        span.clone(),
                        format!(
                            "unknown placeholder '{{{}}}' in 'confirm_text': only {LABEL_PLACEHOLDER} \
                             (the option's label) is replaced",
                            printable(name)
                        ),
                    );
                }
                rest = after.get(close + 1..).unwrap_or("");
            }
            if !t.contains(LABEL_PLACEHOLDER) {
                self.diags.warning(
                    span.clone(),
                    format!(
                        "'confirm_text' \"{}\" has no {LABEL_PLACEHOLDER}: callers will not hear \
                         which option they are confirming",
                        printable(t)
                    ),
                );
            }
        }
    }

    // --- document structure -----------------------------------------------------------------

    fn document(&mut self, doc: &DeTable<'_>, default_name: String) -> Option<Dialplan> {
        let mut name = Some(default_name);
        let mut entry = None;
        let mut defaults_table = None;
        let mut menus_table = None;
        let mut speech_table = None;
        let mut routes_item = None;
        let mut queues_table = None;
        let mut fraud_table = None;
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "name" => {
                    name = self.string(value, "name");
                    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                        self.error(value.span(), "'name' must not be empty".to_string());
                        name = None;
                    }
                }
                "entry" => {
                    entry = self
                        .string(value, "entry")
                        .map(|n| self.menu_ref(n, value.span()));
                }
                "defaults" => defaults_table = self.table(value, "defaults"),
                "speech" => speech_table = self.table(value, "speech"),
                "menus" => menus_table = Some(self.table(value, "menus")),
                "routes" => routes_item = Some(value),
                "queues" => queues_table = Some(self.table(value, "queues")),
                "fraud" => fraud_table = Some(self.table(value, "fraud")),
                _ => self.unknown_field(key, TOP_FIELDS, "the dialplan"),
            }
        }
        if entry.is_none() && !doc.contains_key("entry") {
            self.error(
                0..0,
                "missing 'entry': name the menu calls start in, e.g. entry = \"greeting\""
                    .to_string(),
            );
        }
        let menus_table = match menus_table {
            Some(table) => table,
            None => {
                self.error(
                    0..0,
                    "no menus: define at least one, e.g. [menus.main] with a prompt and options"
                        .to_string(),
                );
                None
            }
        };
        if let Some(table) = menus_table {
            for key in table.keys() {
                self.menu_names.insert(key.get_ref().to_string());
                self.menu_spans
                    .insert(key.get_ref().to_string(), key.span());
            }
        }

        // Before the menus: plain phrase lists are in the language set here.
        let (speech, enabled) = match speech_table {
            Some(table) => self.speech(table),
            None => (SpeechSettings::default(), None),
        };
        let defaults = defaults_table.map(|t| self.defaults(t)).unwrap_or_default();
        let mut menus = BTreeMap::new();
        let mut all_ok = true;
        if let Some(table) = menus_table {
            if table.is_empty() {
                self.error(
                    0..0,
                    "[menus] is empty: define at least one menu".to_string(),
                );
            }
            for (key, value) in table.iter() {
                match self.menu(key, value, &defaults) {
                    Some(menu) => {
                        menus.insert(menu.name.clone(), menu);
                    }
                    None => all_ok = false,
                }
            }
        }
        let speech_enabled = match enabled {
            Some((true, span)) if !self.any_phrase => {
                self.diags.warning(
                    span,
                    "speech is enabled but no option has phrases ('say'): calls use keys only"
                        .to_string(),
                );
                true
            }
            Some((on, _)) => on,
            None => self.any_phrase,
        };
        if !speech_enabled {
            // A menu with answers but no keys would leave the caller nothing to do.
            for menu in menus.values() {
                if menu.options().next().is_none() && !menu.answers.is_empty() {
                    let span = self.menu_spans.get(&menu.name).cloned().unwrap_or(0..0);
                    self.error(
                        span,
                        format!(
                            "menu '{}' has only answers and speech is off ([speech] enabled = \
                             false): callers could not choose anything",
                            printable(&menu.name)
                        ),
                    );
                    all_ok = false;
                }
            }
        }
        if let Some(Some(table)) = queues_table {
            for key in table.keys() {
                self.queue_names.insert(key.get_ref().to_string());
            }
        }
        let queues = match queues_table {
            Some(Some(table)) => self.queues(table),
            Some(None) => None,
            None => Some(BTreeMap::new()),
        };
        let routes = match routes_item {
            Some(item) => self.routes(item),
            None => Some(Vec::new()),
        };
        let fraud = match fraud_table {
            Some(Some(table)) => self.fraud(table),
            Some(None) => None,
            None => Some(FraudSettings::default()),
        };
        let prompts = self.prompt_refs.keys().cloned().collect();
        match (name, entry, all_ok, routes, queues, fraud) {
            (Some(name), Some(entry), true, Some(routes), Some(queues), Some(fraud))
                if menus_table.is_some() =>
            {
                Some(Dialplan {
                    name,
                    entry,
                    menus,
                    prompts,
                    speech,
                    speech_enabled,
                    routes,
                    queues,
                    fraud,
                })
            }
            _ => None,
        }
    }

    /// The `[speech]` table; the `enabled` flag comes back separately (`None`: not given).
    fn speech(&mut self, table: &DeTable<'_>) -> (SpeechSettings, Option<(bool, Span)>) {
        let mut speech = SpeechSettings::default();
        // The language first: plain phrase lists and texts below are written in it.
        if let Some(value) = table.get("language") {
            if let Some(code) = self.string(value, "language") {
                if let Some(code) = self.language_code(&code, value.span()) {
                    self.language = code.clone();
                    speech.language = code;
                }
            }
        }
        let mut enabled = None;
        let mut confidence_span = None;
        let mut reject_span = None;
        let mut confirm_text_given = false;
        let mut replies = Vec::new();
        for (key, value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "language" => {}
                "enabled" => enabled = self.boolean(value, field).map(|b| (b, key.span())),
                "confidence" => {
                    if let Some(c) = self.fraction(value, field) {
                        speech.confidence = c;
                        confidence_span = Some(value.span());
                    }
                }
                "reject_below" => {
                    if let Some(r) = self.fraction(value, field) {
                        speech.reject_below = r;
                        reject_span = Some(value.span());
                    }
                }
                "confirm_text" => {
                    if let Some(text) = self.local_text(value, field) {
                        self.confirm_placeholders(&text, value.span());
                        speech.confirm_text = text;
                        confirm_text_given = true;
                    }
                }
                "yes" | "no" => {
                    let (phrases, phrases_ok) = self.say(value, field);
                    let by_lang = group_phrases(&phrases);
                    replies.push(VoiceEntry {
                        what: format!("'{field}'"),
                        phrases,
                    });
                    if !phrases_ok {
                        continue;
                    }
                    let target = if field == "yes" {
                        &mut speech.yes
                    } else {
                        &mut speech.no
                    };
                    // A language given here replaces the built-in list for that language.
                    target.extend(by_lang);
                }
                "end_silence_ms" => {
                    let (min, max) = END_SILENCE_MS_RANGE;
                    match value.get_ref() {
                        DeValue::Integer(i) => {
                            match i64::from_str_radix(i.as_str(), i.radix()) {
                                Ok(ms) if (min..=max).contains(&ms) => {
                                    speech.end_silence =
                                        Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                                }
                                _ => self.error(
                                    value.span(),
                                    format!(
                                        "'end_silence_ms' must be between {min} and {max} (milliseconds)"
                                    ),
                                ),
                            }
                        }
                        _ => self.type_error(value, field, "a whole number of milliseconds"),
                    }
                }
                "no_input_timeout" => {
                    speech.no_input_timeout = self.seconds(value, field, NO_INPUT_TIMEOUT_RANGE)
                }
                "say_anything" => {
                    if let Some(b) = self.boolean(value, field) {
                        speech.say_anything = b;
                    }
                }
                _ => self.unknown_field(key, SPEECH_FIELDS, "[speech]"),
            }
        }
        self.check_phrases(&replies, "[speech]");
        if speech.reject_below > speech.confidence {
            let span = reject_span.or(confidence_span).unwrap_or(0..0);
            self.error(
                span,
                format!(
                    "thresholds out of order: 'reject_below' ({}) must not be above 'confidence' \
                     ({}); matches between the two are confirmed, below 'reject_below' they are \
                     no match",
                    speech.reject_below, speech.confidence
                ),
            );
        }
        if !confirm_text_given && speech.language != DEFAULT_LANGUAGE {
            // The built-in question is English; a dialplan in another language needs its own.
            self.error(
                table.get("language").map_or(0..0, |v| v.span()),
                format!(
                    "set 'confirm_text' for language '{}' (the built-in \"{DEFAULT_CONFIRM_TEXT}\" \
                     is English)",
                    speech.language
                ),
            );
        }
        (speech, enabled)
    }

    fn defaults(&mut self, table: &DeTable<'_>) -> Settings {
        let mut settings = Settings::default();
        for (key, value) in table.iter() {
            if !self.setting(&mut settings, key, value, "[defaults]") {
                let hint = if MENU_ONLY_FIELDS.contains(&key.get_ref().as_ref()) {
                    format!(
                        "'{}' belongs in a menu, not in [defaults]",
                        key.get_ref().as_ref()
                    )
                } else {
                    String::new()
                };
                if hint.is_empty() {
                    self.unknown_field(key, SETTING_FIELDS, "[defaults]");
                } else {
                    self.error(key.span(), hint);
                }
            }
        }
        settings
    }

    /// Reads one setting into `settings`; false when `key` is not a setting.
    fn setting(
        &mut self,
        settings: &mut Settings,
        key: &Key<'_>,
        value: &Item<'_>,
        place: &str,
    ) -> bool {
        let field = key.get_ref().as_ref();
        let span = key.span();
        match field {
            "barge_in" => settings.barge_in = self.boolean(value, field),
            "no_input_timeout" => {
                settings.no_input_timeout = self.seconds(value, field, NO_INPUT_TIMEOUT_RANGE)
            }
            "inter_digit_timeout" => {
                settings.inter_digit_timeout = self.seconds(value, field, INTER_DIGIT_TIMEOUT_RANGE)
            }
            "terminator" => settings.terminator = self.terminator(value),
            "no_input_prompt" => settings.no_input_prompts = self.prompts(value, field),
            "no_match_prompt" => settings.no_match_prompts = self.prompts(value, field),
            "max_attempts" => settings.max_attempts = self.attempts(value, field),
            "final" => {
                settings.final_action = self.action(value, &format!("'final' in {place}"), None)
            }
            "anything_else_prompt" | "anything_else_text" => {
                if settings.anything_else.is_some() {
                    self.error(
                        span.clone(),
                        format!(
                            "{place} has both 'anything_else_prompt' and 'anything_else_text': \
                             keep one"
                        ),
                    );
                }
                settings.anything_else = if field == "anything_else_prompt" {
                    self.prompts(value, field).map(Spoken::Prompts)
                } else {
                    self.local_text(value, field).map(Spoken::Text)
                };
            }
            _ => return false,
        }
        if let Some(name) = SETTING_FIELDS.iter().find(|f| **f == field) {
            settings.spans.push((name, span));
        }
        true
    }

    fn terminator(&mut self, value: &Item<'_>) -> Option<Option<char>> {
        let text = self.string(value, "terminator")?;
        if text == "none" {
            return Some(None);
        }
        let mut chars = text.chars();
        match (chars.next().map(normalize_dtmf), chars.next()) {
            (Some(Some(c)), None) => Some(Some(c)),
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "invalid terminator '{}': use one DTMF key (usually \"#\") or \"none\"",
                        printable(&text)
                    ),
                );
                None
            }
        }
    }

    fn menu(&mut self, key: &Key<'_>, value: &Item<'_>, defaults: &Settings) -> Option<Menu> {
        let name = key.get_ref().to_string();
        let name_ok = match menu_name_problem(&name) {
            Some(problem) => {
                self.error(
                    key.span(),
                    format!("invalid menu name '{}': {problem}", printable(&name)),
                );
                false
            }
            None => true,
        };
        let Some(table) = value.get_ref().as_table() else {
            self.error(
                value.span(),
                format!(
                    "menu '{}' must be a table ([menus.{}] followed by its fields)",
                    printable(&name),
                    printable(&name)
                ),
            );
            return None;
        };
        let place = format!("menu '{}'", printable(&name));
        let mut settings = Settings::default();
        let mut prompt = None;
        let mut prompt_present = false;
        let mut next = None;
        let mut options_item = None;
        let mut answers_item = None;
        let mut ok = name_ok;
        for (field_key, field_value) in table.iter() {
            match field_key.get_ref().as_ref() {
                "prompt" => {
                    prompt_present = true;
                    prompt = self.prompts(field_value, "prompt");
                    ok &= prompt.is_some();
                }
                "next" => {
                    next = self.next(field_value, "next");
                    ok &= next.is_some();
                }
                "options" => options_item = Some((field_key, field_value)),
                "answers" => answers_item = Some((field_key, field_value)),
                _ => {
                    if !self.setting(&mut settings, field_key, field_value, &place) {
                        let allowed: Vec<&str> = MENU_ONLY_FIELDS
                            .iter()
                            .chain(SETTING_FIELDS)
                            .copied()
                            .collect();
                        self.unknown_field(field_key, &allowed, &place);
                        ok = false;
                    }
                }
            }
        }
        if !prompt_present {
            self.error(
                key.span(),
                format!(
                    "menu '{}' has no 'prompt' (the prompt name(s) to play)",
                    printable(&name)
                ),
            );
            ok = false;
        }

        let terminator = settings
            .terminator
            .or(defaults.terminator)
            .unwrap_or(Some(DEFAULT_TERMINATOR));
        let inter_digit_timeout = settings
            .inter_digit_timeout
            .or(defaults.inter_digit_timeout)
            .unwrap_or(DEFAULT_INTER_DIGIT_TIMEOUT);

        let anything_else = settings
            .anything_else
            .clone()
            .or_else(|| defaults.anything_else.clone());
        let mut voice = Vec::new();
        let answers = match answers_item {
            Some((answers_key, _)) if table.contains_key("next") => {
                self.error(
                    answers_key.span(),
                    format!(
                        "menu '{}' has both 'next' and 'answers': answers need a menu that waits \
                         for input (remove 'next')",
                        printable(&name)
                    ),
                );
                None
            }
            Some((_, answers_value)) => {
                self.answers(&name, answers_value, anything_else.is_some(), &mut voice)
            }
            None => Some(Vec::new()),
        };
        ok &= answers.is_some();
        let answers = answers.unwrap_or_default();

        let kind = match (next, options_item, table.contains_key("next")) {
            (_, None, true) if answers_item.is_some() => None, // reported above
            (_, Some((options_key, _)), true) => {
                self.error(
                    options_key.span(),
                    format!(
                        "menu '{}' has both 'next' and 'options': a menu either waits for a key \
                         (options) or continues when its prompt ends (next)",
                        printable(&name)
                    ),
                );
                None
            }
            (Some(next), None, _) => {
                self.warn_unused_settings(&settings, &name);
                Some(MenuKind::Announcement { next })
            }
            (None, None, true) => None, // a bad 'next' was already reported
            // A menu of answers only: voice questions, no keys.
            (None, None, false) if answers_item.is_some() => Some(MenuKind::Choice {
                options: BTreeMap::new(),
            }),
            (None, None, false) => {
                self.error(
                    key.span(),
                    format!(
                        "menu '{}' has neither 'options' nor 'next': add [menus.{}.options] \
                         (or [[menus.{}.answers]]) or next = \"<menu>\"",
                        printable(&name),
                        printable(&name),
                        printable(&name)
                    ),
                );
                None
            }
            (_, Some((_, options_value)), false) => self
                .options(
                    &name,
                    options_value,
                    terminator,
                    inter_digit_timeout,
                    &mut voice,
                )
                .map(|options| MenuKind::Choice { options }),
        };
        ok &= self.check_phrases(&voice, &place);

        let final_action = settings
            .final_action
            .or_else(|| defaults.final_action.clone())
            .unwrap_or(Action::Hangup {
                prompts: Vec::new(),
            });
        let menu = Menu {
            name: name.clone(),
            prompts: prompt.unwrap_or_default(),
            kind: kind?,
            barge_in: settings.barge_in.or(defaults.barge_in).unwrap_or(true),
            no_input_timeout: settings
                .no_input_timeout
                .or(defaults.no_input_timeout)
                .unwrap_or(DEFAULT_NO_INPUT_TIMEOUT),
            inter_digit_timeout,
            terminator,
            no_input_prompts: settings
                .no_input_prompts
                .or_else(|| defaults.no_input_prompts.clone())
                .unwrap_or_default(),
            no_match_prompts: settings
                .no_match_prompts
                .or_else(|| defaults.no_match_prompts.clone())
                .unwrap_or_default(),
            max_attempts: settings
                .max_attempts
                .or(defaults.max_attempts)
                .unwrap_or(DEFAULT_MAX_ATTEMPTS),
            final_action,
            answers,
            anything_else,
        };
        ok.then_some(menu)
    }

    /// Settings that only matter while waiting for keys mean nothing in an announcement.
    fn warn_unused_settings(&mut self, settings: &Settings, menu: &str) {
        for (field, span) in &settings.spans {
            if *field != "barge_in" {
                self.diags.warning(
                    span.clone(),
                    format!(
                        "'{field}' has no effect in menu '{}', which has no options",
                        printable(menu)
                    ),
                );
            }
        }
    }

    fn options(
        &mut self,
        menu: &str,
        value: &Item<'_>,
        terminator: Option<char>,
        inter_digit_timeout: Duration,
        voice: &mut Vec<VoiceEntry>,
    ) -> Option<BTreeMap<String, MenuOption>> {
        let table = self.table(value, "options")?;
        if table.is_empty() {
            self.error(
                value.span(),
                format!("menu '{}' has an empty options table", printable(menu)),
            );
            return None;
        }
        let mut options = BTreeMap::new();
        let mut key_spans: HashMap<String, Span> = HashMap::new();
        let mut ok = true;
        for (key, option_value) in table.iter() {
            let raw = key.get_ref().as_ref();
            let place = format!("option '{}' of menu '{}'", printable(raw), printable(menu));
            let action = self.action(option_value, &place, Some(Next::Menu(menu.to_string())));
            let (phrases, label) = self.option_voice(option_value, raw, voice);
            let normalized = match dtmf_key_problem(raw, terminator) {
                Ok(k) => k,
                Err(problem) => {
                    self.error(
                        key.span(),
                        format!(
                            "invalid key '{}' in menu '{}': {problem}",
                            printable(raw),
                            printable(menu)
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            if let Some(first) = key_spans.get(&normalized) {
                let (line, column) = self.diags.position(first.start);
                self.error(
                    key.span(),
                    format!(
                        "duplicate key '{normalized}' in menu '{}' (first defined at {line}:{column})",
                        printable(menu)
                    ),
                );
                ok = false;
                continue;
            }
            key_spans.insert(normalized.clone(), key.span());
            match (action, phrases, label) {
                (Some(action), Some(phrases), Some(label)) => {
                    options.insert(
                        normalized.clone(),
                        MenuOption {
                            key: normalized,
                            action,
                            phrases,
                            label,
                        },
                    );
                }
                _ => ok = false,
            }
        }
        if terminator.is_none() {
            // The flow waits the inter-digit timeout on a key that a longer key extends, so
            // such a key works, only slowly; without a terminator the caller cannot hurry it.
            for (key, span) in &key_spans {
                if let Some(longer) = key_spans
                    .keys()
                    .filter(|other| other.len() > key.len() && other.starts_with(key.as_str()))
                    .min()
                {
                    self.diags.warning(
                        span.clone(),
                        format!(
                            "key '{key}' is a prefix of '{longer}' in menu '{}' and the menu has \
                             no terminator: callers who press {key} wait the inter-digit timeout \
                             ({}s) before it is chosen",
                            printable(menu),
                            inter_digit_timeout.as_secs_f64()
                        ),
                    );
                }
            }
        }
        ok.then_some(options)
    }

    /// An action table. `default_then` is where `play`/`opt_out` continue without `then`:
    /// the option's own menu, or `None` for a menu's final action (which then hangs up).
    fn action(
        &mut self,
        value: &Item<'_>,
        place: &str,
        default_then: Option<Next>,
    ) -> Option<Action> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(
                value.span(),
                format!(
                    "{place} must be a table such as {{ goto = \"menu\" }}, {{ play = \"prompt\" }}, \
                     {{ queue = \"agents\" }}, {{ transfer = \"agents\" }}, {{ hangup = true }} or \
                     {{ opt_out = true }}; found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut verb: Option<(&str, &Item<'_>)> = None;
        let mut then = None;
        let mut prompt = None;
        let mut priority = None;
        let mut whisper = None;
        let mut ok = true;
        for (key, field_value) in table.iter() {
            let field = key.get_ref().as_ref();
            if let Some(v) = ACTION_VERBS.iter().find(|v| **v == field) {
                match verb {
                    Some((first, _)) => {
                        self.error(
                            key.span(),
                            format!(
                                "{place} has both '{first}' and '{field}': an option does one thing"
                            ),
                        );
                        ok = false;
                    }
                    None => verb = Some((v, field_value)),
                }
            } else if field == "then" {
                then = Some((key, field_value));
            } else if field == "prompt" {
                prompt = Some((key, field_value));
            } else if field == "priority" {
                priority = Some((key, field_value));
            } else if field == "whisper" {
                whisper = Some((key, field_value));
            } else if VOICE_FIELDS.contains(&field) {
                // Read by the option; a final action is chosen by no one.
                if default_then.is_none() {
                    self.error(
                        key.span(),
                        format!(
                            "'{field}' does not apply to {place}: phrases belong to options and answers"
                        ),
                    );
                    ok = false;
                }
            } else {
                let allowed = if default_then.is_some() {
                    OPTION_FIELDS
                } else {
                    ACTION_FIELDS
                };
                self.unknown_field(key, allowed, place);
                ok = false;
            }
        }
        let Some((verb, verb_value)) = verb else {
            self.error(
                value.span(),
                format!(
                    "{place} has no action: add one of {}",
                    ACTION_VERBS.join(", ")
                ),
            );
            return None;
        };
        let takes_then = matches!(verb, "play" | "opt_out");
        let takes_prompt = matches!(verb, "transfer" | "hangup" | "opt_out" | "queue");
        for (name, given) in [("priority", &priority), ("whisper", &whisper)] {
            if let (false, Some((key, _))) = (verb == "queue", given) {
                self.error(
                    key.span(),
                    format!("'{name}' does not apply to '{verb}' (only to queue)"),
                );
                ok = false;
            }
        }
        if let (false, Some((key, _))) = (takes_then, then) {
            self.error(
                key.span(),
                format!("'then' does not apply to '{verb}' (only to play and opt_out)"),
            );
            ok = false;
        }
        if let (false, Some((key, _))) = (takes_prompt, prompt) {
            let hint = match verb {
                "play" => "list every prompt in play = [\"a\", \"b\"]",
                _ => "to play something first, use play = \"...\" with then = \"<menu>\"",
            };
            self.error(
                key.span(),
                format!("'prompt' does not apply to '{verb}': {hint}"),
            );
            ok = false;
        }
        let branch_then = default_then.clone();
        let then = match then {
            Some((_, v)) if takes_then => self.next(v, "then"),
            _ => Some(default_then.unwrap_or(Next::Hangup)),
        };
        let prompts = match prompt {
            Some((_, v)) if takes_prompt => self.prompts(v, "prompt"),
            _ => Some(Vec::new()),
        };
        let action = match verb {
            "goto" => {
                let menu = self.string(verb_value, "goto")?;
                if menu == HANGUP {
                    self.error(
                        verb_value.span(),
                        "goto needs a menu; to end the call use { hangup = true }".to_string(),
                    );
                    return None;
                }
                Action::Goto {
                    menu: self.menu_ref(menu, verb_value.span()),
                }
            }
            "play" => Action::Play {
                prompts: self.prompts(verb_value, "play")?,
                then: then?,
            },
            "transfer" => {
                let target = self.string(verb_value, "transfer")?;
                if let Some(problem) = target_problem(&target) {
                    self.error(
                        verb_value.span(),
                        format!(
                            "invalid transfer target '{}': {problem}",
                            printable(&target)
                        ),
                    );
                    return None;
                }
                Action::Transfer {
                    target,
                    prompts: prompts?,
                }
            }
            "hangup" => {
                if !self.true_flag(verb_value, "hangup")? {
                    return None;
                }
                Action::Hangup { prompts: prompts? }
            }
            "queue" => {
                let queue = self.queue_ref(verb_value)?;
                let priority = match priority {
                    Some((_, v)) => Some(self.priority(v)?),
                    None => None,
                };
                let whisper = match whisper {
                    Some((_, v)) => Some(self.whisper_text(v)?),
                    None => None,
                };
                Action::Queue {
                    queue,
                    priority,
                    prompts: prompts?,
                    whisper,
                }
            }
            "verify_voice" => Action::VerifyVoice(Box::new(self.voice_check(
                verb_value,
                place,
                branch_then,
            )?)),
            _ => {
                if !self.true_flag(verb_value, "opt_out")? {
                    return None;
                }
                Action::OptOut {
                    prompts: prompts?,
                    then: then?,
                }
            }
        };
        ok.then_some(action)
    }

    /// An option's `say` and `label`; `None` in either when it is invalid (reported).
    fn option_voice(
        &mut self,
        value: &Item<'_>,
        key: &str,
        voice: &mut Vec<VoiceEntry>,
    ) -> (Option<Phrases>, Option<Option<LocalText>>) {
        let Some(table) = value.get_ref().as_table() else {
            return (Some(Phrases::new()), Some(None)); // the action reports the shape
        };
        let mut phrases = Some(Phrases::new());
        if let Some(say) = table.get("say") {
            let (list, ok) = self.say(say, "say");
            self.any_phrase = true;
            let grouped = group_phrases(&list);
            voice.push(VoiceEntry {
                what: format!("option '{}'", printable(key)),
                phrases: list,
            });
            phrases = ok.then_some(grouped);
        }
        let label = match table.get_key_value("label") {
            Some((label_key, label)) => {
                if !table.contains_key("say") {
                    self.diags.warning(
                        label_key.span(),
                        format!(
                            "'label' has no effect on option '{}' without 'say' phrases",
                            printable(key)
                        ),
                    );
                }
                self.local_text(label, "label").map(Some)
            }
            None => Some(None),
        };
        (phrases, label)
    }

    /// `[[menus.<menu>.answers]]`: voice-only options that answer a question.
    fn answers(
        &mut self,
        menu: &str,
        value: &Item<'_>,
        has_anything_else: bool,
        voice: &mut Vec<VoiceEntry>,
    ) -> Option<Vec<Answer>> {
        let items = match value.get_ref() {
            DeValue::Array(items) if !items.is_empty() => items,
            DeValue::Array(_) => {
                self.error(
                    value.span(),
                    format!("menu '{}' has an empty 'answers' list", printable(menu)),
                );
                return None;
            }
            _ => {
                self.type_error(
                    value,
                    "answers",
                    "a list of tables ([[menus.<menu>.answers]] blocks)",
                );
                return None;
            }
        };
        let mut answers = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let number = index.saturating_add(1);
            let Some(table) = item.get_ref().as_table() else {
                self.type_error(item, "answers", "a list of tables");
                ok = false;
                continue;
            };
            let first_phrase = table
                .get("say")
                .and_then(|s| match s.get_ref() {
                    DeValue::String(p) => Some(p.to_string()),
                    DeValue::Array(a) => a
                        .first()
                        .and_then(|p| p.get_ref().as_str())
                        .map(str::to_string),
                    _ => None,
                })
                .map(|p| format!(" ('{}')", printable(&p)))
                .unwrap_or_default();
            let what = format!("answer {number}{first_phrase}");
            let place = format!("{what} of menu '{}'", printable(menu));
            let mut phrases = None;
            let mut reply: Option<(Spoken, &str)> = None;
            let mut reply_missing = true;
            let mut then = Some(AnswerThen::Menu);
            let mut label = Some(None);
            for (key, field_value) in table.iter() {
                let field = key.get_ref().as_ref();
                match field {
                    "say" => {
                        let (list, say_ok) = self.say(field_value, "say");
                        self.any_phrase = true;
                        let grouped = group_phrases(&list);
                        voice.push(VoiceEntry {
                            what: what.clone(),
                            phrases: list,
                        });
                        phrases = say_ok.then_some(grouped);
                        ok &= say_ok;
                    }
                    "answer" | "answer_text" => {
                        if let Some((_, first)) = reply {
                            self.error(
                                key.span(),
                                format!(
                                    "{place} has both '{first}' and '{field}': give one answer"
                                ),
                            );
                            ok = false;
                            continue;
                        }
                        reply_missing = false;
                        let parsed = if field == "answer" {
                            self.prompts(field_value, field).map(Spoken::Prompts)
                        } else {
                            self.local_text(field_value, field).map(Spoken::Text)
                        };
                        match parsed {
                            Some(spoken) => {
                                reply = Some((
                                    spoken,
                                    if field == "answer" {
                                        "answer"
                                    } else {
                                        "answer_text"
                                    },
                                ))
                            }
                            None => ok = false,
                        }
                    }
                    "then" => {
                        then = self.answer_then(field_value, &place, has_anything_else);
                        ok &= then.is_some();
                    }
                    "label" => {
                        label = self.local_text(field_value, "label").map(Some);
                        ok &= label.is_some();
                    }
                    _ => {
                        self.unknown_field(key, ANSWER_FIELDS, &place);
                        ok = false;
                    }
                }
            }
            if !table.contains_key("say") {
                self.error(
                    item.span(),
                    format!("{place} has no 'say': the phrases callers ask for it with"),
                );
                ok = false;
            }
            if reply_missing {
                self.error(
                    item.span(),
                    format!(
                        "{place} has neither 'answer' (prompt name(s)) nor 'answer_text' \
                         (a text read by TTS)"
                    ),
                );
                ok = false;
            }
            if let (Some(phrases), Some((reply, _)), Some(then), Some(label)) =
                (phrases, reply, then, label)
            {
                answers.push(Answer {
                    phrases,
                    label,
                    reply,
                    then,
                });
            }
        }
        ok.then_some(answers)
    }

    /// An answer's `then`: `"menu"` or `"anything-else"` (which needs the menu's prompt).
    fn answer_then(
        &mut self,
        value: &Item<'_>,
        place: &str,
        has_anything_else: bool,
    ) -> Option<AnswerThen> {
        let then = self.string(value, "then")?;
        match then.as_str() {
            "menu" => Some(AnswerThen::Menu),
            "anything-else" if has_anything_else => Some(AnswerThen::AnythingElse),
            "anything-else" => {
                self.error(
                    value.span(),
                    format!(
                        "{place} continues with \"anything-else\" but no anything_else_prompt or \
                         anything_else_text is set (in [defaults] or this menu)"
                    ),
                );
                None
            }
            other => {
                let hint = did_you_mean(other, ANSWER_THEN.iter().copied())
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default();
                self.error(
                    value.span(),
                    format!(
                        "unknown 'then' '{}' in {place}{hint}: an answer continues with \
                         \"menu\" (the menu prompt again) or \"anything-else\"",
                        printable(other)
                    ),
                );
                None
            }
        }
    }

    /// Every phrase of one menu, per language: none may be empty once punctuation is removed,
    /// and none may select two options. False when any problem was reported.
    fn check_phrases(&mut self, voice: &[VoiceEntry], place: &str) -> bool {
        let mut sets: BTreeMap<&str, PhraseSet> = BTreeMap::new();
        let mut ok = true;
        // In file order, so a conflict is reported at the phrase written second.
        let mut entries: Vec<&VoiceEntry> = voice.iter().collect();
        entries.sort_by_key(|e| e.phrases.iter().map(|p| p.span.start).min());
        for entry in entries {
            for phrase in &entry.phrases {
                let set = sets.entry(phrase.language.as_str()).or_default();
                let message = match set.add(&entry.what, &phrase.text) {
                    Ok(()) => continue,
                    Err(IntentError::Conflict {
                        phrase, existing, ..
                    }) => format!(
                        "phrase '{}' is given to both {existing} and {} in {place}: a caller \
                         saying it could mean either",
                        printable(&phrase),
                        entry.what
                    ),
                    Err(IntentError::EmptyPhrase { .. } | IntentError::EmptyOption { .. }) => {
                        format!(
                            "phrase '{}' of {} in {place} has no words once punctuation is removed",
                            printable(&phrase.text),
                            entry.what
                        )
                    }
                };
                self.error(phrase.span.clone(), message);
                ok = false;
            }
        }
        ok
    }

    /// `hangup = true` / `opt_out = true`: `false` would be an option that does nothing.
    fn true_flag(&mut self, value: &Item<'_>, field: &str) -> Option<bool> {
        let flag = self.boolean(value, field)?;
        if !flag {
            self.error(
                value.span(),
                format!("{field} = false does nothing: write {field} = true or remove the option"),
            );
        }
        Some(flag)
    }

    // --- routing: queues, routes, voice checks, fraud ------------------------------------------

    /// A queue name (the value of `queue = ...` or `fast_lane = ...`), checked against
    /// `[queues]` once the file is read.
    fn queue_ref(&mut self, value: &Item<'_>) -> Option<String> {
        let name = self.string(value, "queue")?;
        if let Some(problem) = queue_name_problem(&name) {
            self.error(
                value.span(),
                format!("invalid queue name '{}': {problem}", printable(&name)),
            );
            return None;
        }
        self.queue_refs.push(MenuRef {
            name: name.clone(),
            span: value.span(),
        });
        Some(name)
    }

    /// A queue priority: a whole number within [`PRIORITY_RANGE`].
    fn priority(&mut self, value: &Item<'_>) -> Option<i32> {
        let (min, max) = PRIORITY_RANGE;
        let DeValue::Integer(i) = value.get_ref() else {
            self.type_error(value, "priority", "a whole number");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => i32::try_from(n).ok(),
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "'priority' must be between {min} and {max} (higher is answered first)"
                    ),
                );
                None
            }
        }
    }

    /// A short text for the agent.
    fn whisper_text(&mut self, value: &Item<'_>) -> Option<String> {
        let text = self.string(value, "whisper")?;
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_WHISPER_CHARS {
            self.error(
                value.span(),
                format!("'whisper' needs 1 to {MAX_WHISPER_CHARS} characters"),
            );
            return None;
        }
        Some(text.to_string())
    }

    /// `verify_voice = { phrase_text = "...", on_accept = ..., on_reject = ..., ... }`.
    /// `default_then` is where a branch's `play` continues without `then` (the option's menu).
    fn voice_check(
        &mut self,
        value: &Item<'_>,
        place: &str,
        default_then: Option<Next>,
    ) -> Option<VoiceCheck> {
        let table = self.table(value, "verify_voice")?;
        let place = format!("'verify_voice' of {place}");
        let mut phrase: Option<Spoken> = None;
        let mut phrase_given = false;
        let mut reuse_speech = true;
        let mut branches: BTreeMap<&str, Option<Action>> = BTreeMap::new();
        let mut ok = true;
        for (key, field_value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "phrase_prompt" | "phrase_text" => {
                    if phrase_given {
                        self.error(
                            key.span(),
                            format!("{place} has both 'phrase_prompt' and 'phrase_text': keep one"),
                        );
                        ok = false;
                        continue;
                    }
                    phrase_given = true;
                    phrase = if field == "phrase_prompt" {
                        self.prompts(field_value, field).map(Spoken::Prompts)
                    } else {
                        self.local_text(field_value, field).map(Spoken::Text)
                    };
                    ok &= phrase.is_some();
                }
                "reuse_speech" => match self.boolean(field_value, field) {
                    Some(b) => reuse_speech = b,
                    None => ok = false,
                },
                "on_accept" | "on_reject" | "on_not_enough" | "on_not_enrolled" => {
                    let name = VERIFY_FIELDS
                        .iter()
                        .find(|f| **f == field)
                        .copied()
                        .unwrap_or("on_accept");
                    let branch = self.branch(
                        field_value,
                        &format!("'{name}' in {place}"),
                        default_then.clone(),
                    );
                    ok &= branch.is_some();
                    branches.insert(name, branch);
                }
                _ => {
                    self.unknown_field(key, VERIFY_FIELDS, &place);
                    ok = false;
                }
            }
        }
        if !phrase_given {
            self.error(
                value.span(),
                format!(
                    "{place} has neither 'phrase_prompt' (prompt name(s)) nor 'phrase_text' \
                     (a text read by TTS): what the caller is asked to say"
                ),
            );
            ok = false;
        }
        for required in ["on_accept", "on_reject", "on_not_enough"] {
            if !branches.contains_key(required) {
                self.error(
                    value.span(),
                    format!("{place} has no '{required}': where the call goes on that decision"),
                );
                ok = false;
            }
        }
        let get = |b: &mut BTreeMap<&str, Option<Action>>, k: &str| b.remove(k).flatten();
        let on_accept = get(&mut branches, "on_accept");
        let on_reject = get(&mut branches, "on_reject");
        let on_not_enough = get(&mut branches, "on_not_enough");
        let on_not_enrolled = get(&mut branches, "on_not_enrolled");
        if !ok {
            return None;
        }
        let on_not_enough = on_not_enough?;
        Some(VoiceCheck {
            phrase: phrase?,
            reuse_speech,
            on_accept: on_accept?,
            on_reject: on_reject?,
            on_not_enrolled: on_not_enrolled.unwrap_or_else(|| on_not_enough.clone()),
            on_not_enough,
        })
    }

    /// A voice check's branch: a menu name, `"hangup"`, or an action table (not another
    /// voice check).
    fn branch(
        &mut self,
        value: &Item<'_>,
        place: &str,
        default_then: Option<Next>,
    ) -> Option<Action> {
        if let Some(table) = value.get_ref().as_table() {
            for field in VOICE_FIELDS {
                if let Some((key, _)) = table.get_key_value(*field) {
                    self.error(
                        key.span(),
                        format!("'{field}' does not apply to {place}: phrases belong to options"),
                    );
                    return None;
                }
            }
        }
        if value.get_ref().as_str().is_some() {
            return match self.next(value, "branch")? {
                Next::Menu(menu) => Some(Action::Goto { menu }),
                Next::Hangup => Some(Action::Hangup {
                    prompts: Vec::new(),
                }),
            };
        }
        let action = self.action(value, place, default_then)?;
        if matches!(action, Action::VerifyVoice(_)) {
            self.error(
                value.span(),
                format!("{place} is another 'verify_voice': a voice check is done once"),
            );
            return None;
        }
        Some(action)
    }

    /// `[[routes]]`.
    fn routes(&mut self, value: &Item<'_>) -> Option<Vec<Route>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(value, "routes", "a list of tables ([[routes]] blocks)");
            return None;
        };
        let mut routes = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let number = index.saturating_add(1);
            match self.route(item, number) {
                Some(route) => routes.push(route),
                None => ok = false,
            }
        }
        ok.then_some(routes)
    }

    fn route(&mut self, item: &Item<'_>, number: usize) -> Option<Route> {
        let place = format!("route {number}");
        let Some(table) = item.get_ref().as_table() else {
            self.type_error(item, "routes", "a list of tables ([[routes]] blocks)");
            return None;
        };
        let mut when = None;
        let mut action = None;
        let mut reason = None;
        let mut whisper = None;
        let mut ok = true;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "when" => {
                    when = self.condition(value);
                    ok &= when.is_some();
                }
                "action" => {
                    action = self.route_action(value, &place);
                    ok &= action.is_some();
                }
                "reason" => {
                    reason = self.string(value, "reason");
                    if let Some(r) = &reason {
                        if let Some(problem) = queue_name_problem(r) {
                            self.error(
                                value.span(),
                                format!("invalid reason '{}': {problem}", printable(r)),
                            );
                            reason = None;
                        }
                    }
                    ok &= reason.is_some();
                }
                "whisper" => {
                    whisper = self.whisper_text(value);
                    ok &= whisper.is_some();
                }
                _ => {
                    self.unknown_field(key, ROUTE_FIELDS, &place);
                    ok = false;
                }
            }
        }
        for (field, given, example) in [
            ("when", table.contains_key("when"), "when = \"age >= 65\""),
            (
                "action",
                table.contains_key("action"),
                "action = { queue = \"agents\" }",
            ),
        ] {
            if !given {
                self.error(
                    item.span(),
                    format!("{place} has no '{field}', e.g. {example}"),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let reason = reason.unwrap_or_else(|| format!("route-{number}"));
        let whisper = whisper.unwrap_or_else(|| reason.replace('_', " "));
        Some(Route {
            when: when?,
            action: action?,
            reason,
            whisper,
        })
    }

    /// A condition (`when`), its errors placed at the offending character.
    fn condition(&mut self, value: &Item<'_>) -> Option<Condition> {
        let text = self.string(value, "when")?;
        match Condition::parse(&text) {
            Ok(c) => Some(c),
            Err(err) => {
                let span = value.span();
                // A plain one-line string ("..." or '...') maps offsets exactly; with escapes
                // or multi-line quotes the error points at the string's start.
                let raw = self.text.get(span.clone()).unwrap_or("");
                let exact = raw.len() == text.len().saturating_add(2)
                    && raw.get(1..raw.len().saturating_sub(1)) == Some(text.as_str())
                    && matches!(raw.chars().next(), Some('"' | '\''));
                let at = if exact {
                    span.start.saturating_add(1).saturating_add(err.offset)
                } else {
                    span.start
                };
                self.error(
                    at..at,
                    format!("in condition '{}': {}", printable(&text), err.message),
                );
                None
            }
        }
    }

    /// A route's action: a fast lane table, or any option action.
    fn route_action(&mut self, value: &Item<'_>, place: &str) -> Option<RouteAction> {
        let Some(table) = value.get_ref().as_table() else {
            self.type_error(
                value,
                "action",
                "a table such as { queue = \"experts\" } or { fast_lane = \"agents\", mode = \"offer\" }",
            );
            return None;
        };
        if !table.contains_key("fast_lane") {
            let action = self.action(value, &format!("the action of {place}"), None)?;
            if let Action::Queue {
                queue,
                priority,
                prompts,
                whisper,
            } = action
            {
                return Some(RouteAction::Run(Action::Queue {
                    queue,
                    priority: priority.or(Some(PRIORITY_VIP)),
                    prompts,
                    whisper,
                }));
            }
            return Some(RouteAction::Run(action));
        }
        let mut queue = None;
        let mut offer = true;
        let mut priority = PRIORITY_FAST_LANE;
        let mut prompts = Vec::new();
        let mut text = None;
        let mut phrases = None;
        let mut ok = true;
        for (key, field_value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "fast_lane" => {
                    queue = self.queue_ref(field_value);
                    ok &= queue.is_some();
                }
                "mode" => match self.string(field_value, field).as_deref() {
                    Some("offer") => offer = true,
                    Some("transfer") => offer = false,
                    Some(other) => {
                        let hint = did_you_mean(other, ["offer", "transfer"])
                            .map(|s| format!(" (did you mean '{s}'?)"))
                            .unwrap_or_default();
                        self.error(
                            field_value.span(),
                            format!(
                                "unknown fast lane mode '{}'{hint}: \"offer\" (tell the caller, \
                                 keep the menus) or \"transfer\" (queue at once)",
                                printable(other)
                            ),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                "priority" => match self.priority(field_value) {
                    Some(p) => priority = p,
                    None => ok = false,
                },
                "prompt" => match self.prompts(field_value, field) {
                    Some(p) => prompts = p,
                    None => ok = false,
                },
                "offer_text" => {
                    text = self.local_text(field_value, field);
                    ok &= text.is_some();
                }
                "say" => {
                    let (list, say_ok) = self.say(field_value, "say");
                    for p in &list {
                        if crate::speech::intent::PhraseSet::new()
                            .add("fast lane", &p.text)
                            .is_err()
                        {
                            self.error(
                                p.span.clone(),
                                format!(
                                    "phrase '{}' has no words once punctuation is removed",
                                    printable(&p.text)
                                ),
                            );
                            ok = false;
                        }
                    }
                    phrases = Some(group_phrases(&list));
                    ok &= say_ok;
                }
                _ => {
                    self.unknown_field(key, FAST_LANE_FIELDS, &format!("the action of {place}"));
                    ok = false;
                }
            }
        }
        if !offer {
            for field in ["offer_text", "say"] {
                if let Some((key, _)) = table.get_key_value(field) {
                    self.diags.warning(
                        key.span(),
                        format!("'{field}' has no effect with mode = \"transfer\""),
                    );
                }
            }
        }
        if !ok {
            return None;
        }
        let queue = queue?;
        if !offer {
            return Some(RouteAction::Run(Action::Queue {
                queue,
                priority: Some(priority),
                prompts,
                whisper: None,
            }));
        }
        let text = text.unwrap_or_else(|| {
            LocalText(BTreeMap::from([(
                DEFAULT_LANGUAGE.to_string(),
                DEFAULT_OFFER_TEXT.to_string(),
            )]))
        });
        let phrases = phrases.unwrap_or_else(|| {
            Phrases::from([(
                DEFAULT_LANGUAGE.to_string(),
                DEFAULT_FAST_LANE_PHRASES
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            )])
        });
        Some(RouteAction::Offer {
            queue,
            priority,
            prompts,
            text,
            phrases,
        })
    }

    /// `[queues]`: every queue's fallbacks.
    fn queues(&mut self, table: &DeTable<'_>) -> Option<BTreeMap<String, QueueConfig>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in table.iter() {
            let name = key.get_ref().to_string();
            if let Some(problem) = queue_name_problem(&name) {
                self.error(
                    key.span(),
                    format!("invalid queue name '{}': {problem}", printable(&name)),
                );
                ok = false;
                continue;
            }
            let place = format!("queue '{name}'");
            let Some(queue_table) = value.get_ref().as_table() else {
                self.error(
                    value.span(),
                    format!("{place} must be a table ([queues.{name}] followed by its fallbacks)"),
                );
                ok = false;
                continue;
            };
            let mut given: BTreeMap<&str, Fallback> = BTreeMap::new();
            for (field_key, field_value) in queue_table.iter() {
                let field = field_key.get_ref().as_ref();
                match QUEUE_FIELDS.iter().find(|f| **f == field) {
                    Some(field) => {
                        match self.fallback(field_value, &format!("'{field}' of {place}")) {
                            Some(f) => {
                                given.insert(field, f);
                            }
                            None => ok = false,
                        }
                    }
                    None => {
                        self.unknown_field(field_key, QUEUE_FIELDS, &place);
                        ok = false;
                    }
                }
            }
            let default = given.get("unavailable").cloned().unwrap_or(Fallback {
                kind: FallbackKind::Message,
                message: Spoken::Text(LocalText(BTreeMap::from([(
                    DEFAULT_LANGUAGE.to_string(),
                    DEFAULT_UNAVAILABLE_TEXT.to_string(),
                )]))),
                then: Next::Hangup,
            });
            let mut pick = |k: &str| given.remove(k).unwrap_or_else(|| default.clone());
            out.insert(
                name.clone(),
                QueueConfig {
                    after_hours: pick("after_hours"),
                    overflow: pick("overflow"),
                    no_agents: pick("no_agents"),
                    name,
                },
            );
        }
        ok.then_some(out)
    }

    /// A queue fallback: `{ play | text, then }`, `{ callback = true, ... }` or
    /// `{ voicemail = true, max_seconds = 120, ... }`.
    fn fallback(&mut self, value: &Item<'_>, place: &str) -> Option<Fallback> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(
                value.span(),
                format!(
                    "{place} must be a table such as {{ play = \"closed\", then = \"hangup\" }}, \
                     {{ callback = true }} or {{ voicemail = true, max_seconds = 120 }}"
                ),
            );
            return None;
        };
        let mut message: Option<Spoken> = None;
        let mut message_field: Option<&str> = None;
        let mut then = Next::Hangup;
        let mut callback = false;
        let mut voicemail = false;
        let mut max_seconds: Option<(u64, Span)> = None;
        let mut ok = true;
        for (key, field_value) in table.iter() {
            let field = key.get_ref().as_ref();
            match field {
                "play" | "text" => {
                    if let Some(first) = message_field {
                        self.error(
                            key.span(),
                            format!("{place} has both '{first}' and '{field}': keep one"),
                        );
                        ok = false;
                        continue;
                    }
                    message_field = Some(if field == "play" { "play" } else { "text" });
                    message = if field == "play" {
                        self.prompts(field_value, field).map(Spoken::Prompts)
                    } else {
                        self.local_text(field_value, field).map(Spoken::Text)
                    };
                    ok &= message.is_some();
                }
                "then" => match self.next(field_value, field) {
                    Some(n) => then = n,
                    None => ok = false,
                },
                "callback" | "voicemail" => match self.true_flag(field_value, field) {
                    Some(true) if field == "callback" => callback = true,
                    Some(true) => voicemail = true,
                    _ => ok = false,
                },
                "max_seconds" => {
                    let (min, max) = VOICEMAIL_SECONDS_RANGE;
                    match field_value.get_ref() {
                        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                            Ok(n) if (min..=max).contains(&n) => {
                                max_seconds = u64::try_from(n).ok().map(|n| (n, key.span()));
                            }
                            _ => {
                                self.error(
                                    field_value.span(),
                                    format!("'max_seconds' must be between {min} and {max}"),
                                );
                                ok = false;
                            }
                        },
                        _ => {
                            self.type_error(field_value, field, "a whole number of seconds");
                            ok = false;
                        }
                    }
                }
                _ => {
                    self.unknown_field(key, FALLBACK_FIELDS, place);
                    ok = false;
                }
            }
        }
        if callback && voicemail {
            self.error(
                value.span(),
                format!("{place} has both 'callback' and 'voicemail': a fallback does one thing"),
            );
            ok = false;
        }
        if let (false, Some((_, span))) = (voicemail, &max_seconds) {
            self.error(
                span.clone(),
                "'max_seconds' only applies to voicemail = true".to_string(),
            );
            ok = false;
        }
        if !callback && !voicemail && message_field.is_none() && ok {
            self.error(
                value.span(),
                format!(
                    "{place} says nothing: add play = \"<prompt>\" or text = \"...\", or use \
                     callback = true or voicemail = true"
                ),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let default_text = |t: &str| {
            Spoken::Text(LocalText(BTreeMap::from([(
                DEFAULT_LANGUAGE.to_string(),
                t.to_string(),
            )])))
        };
        let (kind, default) = if callback {
            (FallbackKind::Callback, DEFAULT_CALLBACK_TEXT)
        } else if voicemail {
            let secs = max_seconds.map_or(DEFAULT_VOICEMAIL_SECONDS, |(s, _)| s);
            (
                FallbackKind::Voicemail {
                    max: Duration::from_secs(secs),
                },
                DEFAULT_VOICEMAIL_TEXT,
            )
        } else {
            (FallbackKind::Message, DEFAULT_UNAVAILABLE_TEXT)
        };
        Some(Fallback {
            kind,
            message: message.unwrap_or_else(|| default_text(default)),
            then,
        })
    }

    /// `[fraud]`.
    fn fraud(&mut self, table: &DeTable<'_>) -> Option<FraudSettings> {
        let mut fraud = FraudSettings::default();
        let mut ok = true;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "on_hit" => match value.get_ref().as_str() {
                    Some("flag") => fraud.on_hit = None,
                    Some(other) => {
                        self.error(
                            value.span(),
                            format!(
                                "unknown 'on_hit' '{}': \"flag\" (record only) or an action such \
                                 as {{ queue = \"risk\" }}",
                                printable(other)
                            ),
                        );
                        ok = false;
                    }
                    None => match self.action(value, "'on_hit' in [fraud]", None) {
                        Some(Action::VerifyVoice(_)) => {
                            self.error(
                                value.span(),
                                "'on_hit' cannot be a voice check".to_string(),
                            );
                            ok = false;
                        }
                        Some(action) => fraud.on_hit = Some(action),
                        None => ok = false,
                    },
                },
                _ => {
                    self.unknown_field(key, FRAUD_FIELDS, "[fraud]");
                    ok = false;
                }
            }
        }
        ok.then_some(fraud)
    }

    // --- cross-checks once everything is read -----------------------------------------------

    fn check_queue_refs(&mut self) {
        let refs = std::mem::take(&mut self.queue_refs);
        for r in refs {
            if self.queue_names.contains(&r.name) {
                continue;
            }
            let hint = did_you_mean(&r.name, self.queue_names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_else(|| {
                    format!(
                        "; declare it as [queues.{}] (its fallbacks when closed)",
                        printable(&r.name)
                    )
                });
            self.error(
                r.span,
                format!("unknown queue '{}'{hint}", printable(&r.name)),
            );
        }
    }

    fn check_menu_refs(&mut self) {
        let refs = std::mem::take(&mut self.menu_refs);
        for r in refs {
            if self.menu_names.contains(&r.name) {
                continue;
            }
            let hint = did_you_mean(&r.name, self.menu_names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            self.error(
                r.span,
                format!("unknown menu '{}'{hint}", printable(&r.name)),
            );
        }
    }

    fn check_prompts(&mut self) {
        let refs = std::mem::take(&mut self.prompt_refs);
        let mut known: Option<Vec<String>> = None;
        for (name, spans) in &refs {
            if self.catalog.has_prompt(name) {
                continue;
            }
            let known = known.get_or_insert_with(|| self.catalog.prompt_names());
            let hint = did_you_mean(name, known.iter().map(String::as_str))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            for span in spans {
                self.error(
                    span.clone(),
                    format!(
                        "missing prompt '{}': no {}.wav in the prompt directory{hint}",
                        printable(name),
                        printable(name)
                    ),
                );
            }
        }
        self.prompt_refs = refs;
    }

    /// Warns about menus no call can reach from the entry menu.
    fn check_reachability(&mut self, dialplan: &Dialplan) {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([dialplan.entry.as_str()]);
        queue.extend(entry_points(dialplan));
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            let Some(menu) = dialplan.menus.get(name) else {
                continue;
            };
            let mut targets = Vec::new();
            match &menu.kind {
                MenuKind::Announcement { next } => {
                    if let Next::Menu(m) = next {
                        targets.push(m.as_str());
                    }
                }
                MenuKind::Choice { options } => {
                    for option in options.values() {
                        action_targets(&option.action, &mut targets);
                    }
                    action_targets(&menu.final_action, &mut targets);
                }
            }
            queue.extend(targets);
        }
        let unreachable: Vec<String> = dialplan
            .menus
            .keys()
            .filter(|m| !seen.contains(m.as_str()))
            .cloned()
            .collect();
        for name in unreachable {
            let span = self.menu_spans.get(&name).cloned().unwrap_or(0..0);
            self.diags.warning(
                span,
                format!(
                    "menu '{}' is unreachable from the entry menu '{}'",
                    printable(&name),
                    printable(&dialplan.entry)
                ),
            );
        }
    }
}

/// Phrases by language, in file order.
fn group_phrases(list: &[SpannedPhrase]) -> Phrases {
    let mut out = Phrases::new();
    for p in list {
        out.entry(p.language.clone())
            .or_default()
            .push(p.text.clone());
    }
    out
}

/// Calls `f` on `action` and on every action nested in it (a voice check's branches).
pub fn walk_actions<'a>(action: &'a Action, f: &mut dyn FnMut(&'a Action)) {
    f(action);
    if let Action::VerifyVoice(check) = action {
        for branch in [
            &check.on_accept,
            &check.on_reject,
            &check.on_not_enough,
            &check.on_not_enrolled,
        ] {
            walk_actions(branch, f);
        }
    }
}

/// Menus an action can lead to (including through a voice check's branches).
fn action_targets<'a>(action: &'a Action, out: &mut Vec<&'a str>) {
    walk_actions(action, &mut |a| match a {
        Action::Goto { menu }
        | Action::Play {
            then: Next::Menu(menu),
            ..
        }
        | Action::OptOut {
            then: Next::Menu(menu),
            ..
        } => out.push(menu),
        _ => {}
    });
}

/// Menus the call can reach from outside the menus: route actions, queue fallbacks and the
/// fraud action.
fn entry_points(dialplan: &Dialplan) -> Vec<&str> {
    let mut out = Vec::new();
    for route in &dialplan.routes {
        if let RouteAction::Run(action) = &route.action {
            action_targets(action, &mut out);
        }
    }
    for queue in dialplan.queues.values() {
        for fallback in [&queue.after_hours, &queue.overflow, &queue.no_agents] {
            if let Next::Menu(m) = &fallback.then {
                out.push(m);
            }
        }
    }
    if let Some(action) = &dialplan.fraud.on_hit {
        action_targets(action, &mut out);
    }
    out
}

/// Makes toml's syntax messages actionable: names the duplicated key.
fn syntax_message(message: &str, text: &str, span: &Span) -> String {
    if message.starts_with("duplicate key") {
        let key = text.get(span.clone()).unwrap_or("").trim();
        if !key.is_empty() {
            return format!(
                "duplicate key {}: each key and each [table] may appear only once \
                 (in an options table, \"1\" and 1 are the same key)",
                printable(key)
            );
        }
    }
    format!("TOML syntax: {message}")
}

/// Keeps control characters and huge strings out of diagnostics.
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s
        .chars()
        .take(MAX)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// Upper-cases `a-d`; `None` for anything that is not a DTMF key.
pub fn normalize_dtmf(c: char) -> Option<char> {
    match c {
        '0'..='9' | '*' | '#' | 'A'..='D' => Some(c),
        'a'..='d' => Some(c.to_ascii_uppercase()),
        _ => None,
    }
}

/// Normalises an option key or says what is wrong with it.
fn dtmf_key_problem(key: &str, terminator: Option<char>) -> Result<String, String> {
    if key.is_empty() {
        return Err("a key needs at least one digit".to_string());
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(format!("keys are at most {MAX_KEY_LEN} digits"));
    }
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        let Some(d) = normalize_dtmf(c) else {
            return Err(format!(
                "'{}' is not a DTMF key (use 0-9, *, # and A-D)",
                c.escape_default()
            ));
        };
        if Some(d) == terminator {
            return Err(format!(
                "'{d}' is this menu's terminator (it ends multi-digit input); \
                 set terminator = \"none\" or another key to use it in an option"
            ));
        }
        out.push(d);
    }
    Ok(out)
}

fn menu_name_problem(name: &str) -> Option<String> {
    if name == HANGUP {
        return Some(format!(
            "'{HANGUP}' is reserved (then = \"{HANGUP}\" ends the call)"
        ));
    }
    if name.is_empty() || name.len() > 64 {
        return Some("use 1 to 64 characters".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("use letters, digits, '-' and '_'".to_string());
    }
    None
}

/// Prompt names map to files under the prompt directory, so they must stay inside it.
pub(crate) fn prompt_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("use at most {MAX_NAME_LEN} characters"));
    }
    if let Some(stem) = name.strip_suffix(".wav") {
        return Some(format!("write it without .wav: '{}'", printable(stem)));
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment.starts_with('.') {
            return Some(
                "use names like \"main-menu\" or \"en/main-menu\" (no leading, trailing or \
                 double '/', no segment starting with '.')"
                    .to_string(),
            );
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Some("use letters, digits, '-', '_', '.' and '/'".to_string());
        }
    }
    None
}

/// Queue names and route reasons: like menu names.
fn queue_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("use 1 to 64 characters".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("use letters, digits, '-' and '_'".to_string());
    }
    None
}

fn target_problem(target: &str) -> Option<String> {
    if target.is_empty() || target.len() > 64 {
        return Some("use 1 to 64 characters".to_string());
    }
    let first_ok = target
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '+');
    if !first_ok
        || !target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '@'))
    {
        return Some(
            "use a name like \"agents\" (letters, digits, '-', '_', '.', '+', '@')".to_string(),
        );
    }
    None
}

/// The closest candidate within a small edit distance (transpositions count once).
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let word: Vec<char> = word.to_lowercase().chars().collect();
    if word.is_empty() || word.len() > 64 {
        return None;
    }
    let limit = (word.len() / 3).max(1);
    candidates
        .into_iter()
        .filter_map(|c| {
            let chars: Vec<char> = c.to_lowercase().chars().collect();
            if chars.len() > 64 {
                return None;
            }
            let d = edit_distance(&word, &chars);
            (d <= limit).then_some((d, c))
        })
        .min()
        .map(|(_, c)| c)
}

/// Optimal string alignment distance.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut rows = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        rows[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        rows[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[at(i - 1, j)] + 1)
                .min(rows[at(i, j - 1)] + 1)
                .min(rows[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[at(i - 2, j - 2)] + 1);
            }
            rows[at(i, j)] = best;
        }
    }
    rows[at(a.len(), b.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "dialplans/t.toml";

    fn parse(text: &str) -> Result<(Dialplan, Vec<Diagnostic>), DialplanError> {
        Dialplan::parse_str(Path::new(FILE), text, &AnyPrompt)
    }

    fn ok(text: &str) -> (Dialplan, Vec<Diagnostic>) {
        match parse(text) {
            Ok(v) => v,
            Err(e) => panic!("expected a valid dialplan, got:\n{e}"),
        }
    }

    fn diags(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Err(DialplanError::Invalid(d)) => d,
            Err(e) => panic!("expected Invalid, got {e}"),
            Ok(_) => panic!("expected errors, the dialplan was accepted"),
        }
    }

    /// The one diagnostic whose message contains `needle` (fails if none or several).
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

    fn menu<'d>(plan: &'d Dialplan, name: &str) -> &'d Menu {
        plan.menu(name).unwrap_or_else(|| panic!("no menu {name}"))
    }

    fn option<'d>(plan: &'d Dialplan, menu_name: &str, key: &str) -> &'d Action {
        &menu(plan, menu_name)
            .lookup(key)
            .exact
            .unwrap_or_else(|| panic!("no key {key} in {menu_name}"))
            .action
    }

    fn repo_root() -> PathBuf {
        // file!() is relative to the package root in the main crate and absolute when this
        // file is mounted elsewhere by #[path]; either way the repo is three levels up.
        let here = Path::new(file!());
        let here = if here.is_absolute() {
            here.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(here)
        };
        here.ancestors().nth(3).expect("repo root").to_path_buf()
    }

    const MINIMAL: &str = r#"
entry = "main"
[menus.main]
prompt = "main-menu"
options.1 = { hangup = true }
"#;

    #[test]
    fn minimal_menu_gets_builtin_defaults() {
        let (plan, warnings) = ok(MINIMAL);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plan.name(), "t", "name defaults to the file stem");
        assert_eq!(plan.entry(), "main");
        let m = menu(&plan, "main");
        assert_eq!(m.prompts, vec!["main-menu"]);
        assert_eq!(m.no_input_timeout, Duration::from_secs(5));
        assert_eq!(m.inter_digit_timeout, Duration::from_secs(2));
        assert_eq!(m.max_attempts, 3);
        assert_eq!(m.terminator, Some('#'));
        assert!(m.barge_in);
        assert!(m.no_input_prompts.is_empty() && m.no_match_prompts.is_empty());
        assert_eq!(m.final_action, Action::Hangup { prompts: vec![] });
        assert_eq!(
            option(&plan, "main", "1"),
            &Action::Hangup { prompts: vec![] }
        );
    }

    #[test]
    fn menu_settings_override_defaults_which_override_builtins() {
        let (plan, _) = ok(r#"
name = "bank"
entry = "a"
[defaults]
no_input_timeout = 7
inter_digit_timeout = 1.5
max_attempts = 2
barge_in = false
terminator = "*"
no_input_prompt = "ni"
no_match_prompt = ["nm1", "nm2"]
final = { transfer = "agents" }
[menus.a]
prompt = "pa"
options.1 = { goto = "b" }
[menus.b]
prompt = ["pb1", "en/pb2"]
no_input_timeout = 3.25
max_attempts = 5
barge_in = true
terminator = "none"
no_match_prompt = "other"
final = { play = "sorry" }
options.1 = { goto = "a" }
"#);
        assert_eq!(plan.name(), "bank");
        let a = menu(&plan, "a");
        assert_eq!(a.no_input_timeout, Duration::from_secs(7));
        assert_eq!(a.inter_digit_timeout, Duration::from_millis(1500));
        assert_eq!(a.max_attempts, 2);
        assert!(!a.barge_in);
        assert_eq!(a.terminator, Some('*'));
        assert_eq!(a.no_input_prompts, vec!["ni"]);
        assert_eq!(a.no_match_prompts, vec!["nm1", "nm2"]);
        assert_eq!(
            a.final_action,
            Action::Transfer {
                target: "agents".into(),
                prompts: vec![]
            }
        );
        let b = menu(&plan, "b");
        assert_eq!(b.prompts, vec!["pb1", "en/pb2"]);
        assert_eq!(b.no_input_timeout, Duration::from_millis(3250));
        assert_eq!(b.inter_digit_timeout, Duration::from_millis(1500));
        assert_eq!(b.max_attempts, 5);
        assert!(b.barge_in);
        assert_eq!(b.terminator, None);
        assert_eq!(b.no_input_prompts, vec!["ni"], "inherited from [defaults]");
        assert_eq!(b.no_match_prompts, vec!["other"]);
        // A final `play` without `then` hangs up (going back would loop the failed menu).
        assert_eq!(
            b.final_action,
            Action::Play {
                prompts: vec!["sorry".into()],
                then: Next::Hangup
            }
        );
        let prompts: Vec<&str> = plan.prompt_names().collect();
        assert_eq!(
            prompts,
            vec!["en/pb2", "ni", "nm1", "nm2", "other", "pa", "pb1", "sorry"]
        );
        assert_eq!(plan.transfer_targets().collect::<Vec<_>>(), vec!["agents"]);
    }

    #[test]
    fn every_action_form_parses() {
        let (plan, _) = ok(r#"
entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { play = "ans" }
2 = { play = ["a1", "a2"], then = "other" }
3 = { play = "bye", then = "hangup" }
4 = { goto = "other" }
5 = { transfer = "agents", prompt = "hold" }
6 = { transfer = "+15551234" }
7 = { hangup = true, prompt = "goodbye" }
8 = { opt_out = true }
9 = { opt_out = true, prompt = ["ok", "goodbye"], then = "hangup" }
[menus.other]
prompt = "o"
next = "m"
"#);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let back = Next::Menu("m".into());
        assert_eq!(
            option(&plan, "m", "1"),
            &Action::Play {
                prompts: s(&["ans"]),
                then: back.clone()
            }
        );
        assert_eq!(
            option(&plan, "m", "2"),
            &Action::Play {
                prompts: s(&["a1", "a2"]),
                then: Next::Menu("other".into())
            }
        );
        assert_eq!(
            option(&plan, "m", "3"),
            &Action::Play {
                prompts: s(&["bye"]),
                then: Next::Hangup
            }
        );
        assert_eq!(
            option(&plan, "m", "4"),
            &Action::Goto {
                menu: "other".into()
            }
        );
        assert_eq!(
            option(&plan, "m", "5"),
            &Action::Transfer {
                target: "agents".into(),
                prompts: s(&["hold"])
            }
        );
        assert_eq!(
            option(&plan, "m", "6"),
            &Action::Transfer {
                target: "+15551234".into(),
                prompts: vec![]
            }
        );
        assert_eq!(
            option(&plan, "m", "7"),
            &Action::Hangup {
                prompts: s(&["goodbye"])
            }
        );
        assert_eq!(
            option(&plan, "m", "8"),
            &Action::OptOut {
                prompts: vec![],
                then: back
            }
        );
        assert_eq!(
            option(&plan, "m", "9"),
            &Action::OptOut {
                prompts: s(&["ok", "goodbye"]),
                then: Next::Hangup
            }
        );
        assert_eq!(
            menu(&plan, "other").kind,
            MenuKind::Announcement {
                next: Next::Menu("m".into())
            }
        );
    }

    #[test]
    fn lookup_reports_exact_and_longer_keys() {
        let (plan, _) = ok(r#"
entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { hangup = true }
12 = { hangup = true }
2 = { hangup = true }
"#);
        let m = menu(&plan, "m");
        let l = m.lookup("1");
        assert!(
            l.exact.is_some() && l.longer,
            "1 is a key and 12 extends it"
        );
        let l = m.lookup("12");
        assert!(l.exact.is_some() && !l.longer);
        let l = m.lookup("2");
        assert!(l.exact.is_some() && !l.longer);
        let l = m.lookup("3");
        assert!(l.exact.is_none() && !l.longer);
        let l = m.lookup("");
        assert!(l.exact.is_none() && l.longer);
    }

    #[test]
    fn lower_case_keys_are_normalised() {
        let (plan, _) = ok(r#"
entry = "m"
[menus.m]
prompt = "p"
options.a = { hangup = true }
options."*" = { hangup = true }
"#);
        let keys: Vec<&str> = menu(&plan, "m").options().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["*", "A"]);
    }

    #[test]
    fn syntax_error_has_tomls_position() {
        let d = diags("entry = \"main\"\n[menus.main\nprompt = \"p\"\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].severity, Severity::Error);
        assert_eq!(at(&d[0]), (2, 12));
        assert!(
            d[0].message.starts_with("TOML syntax: "),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn every_syntax_error_is_reported() {
        let d = diags("entry = \"m\"\na = \"\\q\"\nb = [1, 2\nc = 3\n");
        assert!(d.len() >= 2, "{d:#?}");
        assert_eq!(at(&d[0]).0, 2);
        assert!(d.iter().any(|x| x.line >= 3), "{d:#?}");
        assert!(d.iter().all(|x| x.message.starts_with("TOML syntax")));
    }

    #[test]
    fn repeated_toml_key_reaches_the_user_with_its_line() {
        let d = diags(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[menus.m.options]\n1 = { hangup = true }\n\"1\" = { goto = \"m\" }\n",
        );
        let dup = one(&d, "duplicate key");
        assert_eq!(at(dup), (6, 1));
        assert!(dup.message.contains("\"1\""), "{}", dup.message);
        let d = diags("entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[menus.m]\nnext = \"m\"\n");
        assert_eq!(at(one(&d, "duplicate key")), (4, 8));
    }

    #[test]
    fn case_variants_of_a_key_are_duplicates() {
        let d = diags(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[menus.m.options]\nA = { hangup = true }\na = { hangup = true }\n",
        );
        let dup = one(&d, "duplicate key 'A' in menu 'm'");
        // BTreeMap order puts "A" first, so the lower-case one is the duplicate.
        assert_eq!(at(dup), (6, 1));
        assert!(
            dup.message.contains("first defined at 5:1"),
            "{}",
            dup.message
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_a_suggestion() {
        let d = diags(
            "entry = \"m\"\nentyr = 1\n[menus.m]\npromt = \"p\"\noptions.1 = { hangup = true, promt = \"x\" }\n[defaults]\nbargein = true\n",
        );
        let e = one(&d, "'entyr'");
        assert_eq!(at(e), (2, 1));
        assert!(e.message.contains("did you mean 'entry'?"), "{}", e.message);
        let e = one(&d, "unknown field 'promt' in menu 'm'");
        assert_eq!(at(e), (4, 1));
        assert!(
            e.message.contains("(did you mean 'prompt'?)"),
            "{}",
            e.message
        );
        let e = one(&d, "unknown field 'promt' in option '1' of menu 'm'");
        assert_eq!(at(e), (5, 30));
        let e = one(&d, "'bargein'");
        assert!(
            e.message.contains("did you mean 'barge_in'?"),
            "{}",
            e.message
        );
        let e = one(&d, "has no 'prompt'");
        assert_eq!(at(e), (3, 8));
    }

    #[test]
    fn unknown_menu_has_did_you_mean_and_exact_display() {
        let text = r#"entry = "main"
[menus.main]
prompt = "p"
[menus.main.options]
3 = { goto = "credti" }
4 = { play = "x", then = "mian" }
[menus.credit]
prompt = "c"
next = "nowhere"
"#;
        let d = diags(text);
        assert_eq!(
            one(&d, "credti").to_string(),
            "dialplans/t.toml:5:14: error: unknown menu 'credti' (did you mean 'credit'?)"
        );
        assert_eq!(at(one(&d, "'mian'")), (6, 26));
        assert!(one(&d, "'mian'")
            .message
            .ends_with("(did you mean 'main'?)"));
        let far = one(&d, "'nowhere'");
        assert_eq!(at(far), (9, 8));
        assert!(!far.message.contains("did you mean"), "{}", far.message);
    }

    #[test]
    fn missing_entry_and_unknown_entry() {
        let d = diags("[menus.m]\nprompt = \"p\"\nnext = \"hangup\"\n");
        assert_eq!(at(one(&d, "missing 'entry'")), (1, 1));
        let d = diags("entry = \"mian\"\n[menus.main]\nprompt = \"p\"\nnext = \"hangup\"\n");
        let e = one(&d, "unknown menu 'mian'");
        assert_eq!(at(e), (1, 9));
        let d = diags("entry = \"m\"\n");
        one(&d, "no menus");
        let d = diags("entry = \"m\"\n[menus]\n");
        one(&d, "[menus] is empty");
    }

    #[test]
    fn missing_prompt_files_are_errors_with_suggestions() {
        let catalog: HashSet<String> = ["main-menu", "balance"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let text = "entry = \"m\"\n[menus.m]\nprompt = \"main-menu\"\noptions.1 = { play = \"balanse\" }\noptions.2 = { play = [\"balance\", \"zzz\"] }\n";
        let err = Dialplan::parse_str(Path::new(FILE), text, &catalog).unwrap_err();
        let DialplanError::Invalid(d) = err else {
            panic!("not Invalid")
        };
        let e = one(&d, "'balanse'");
        assert_eq!(at(e), (4, 22));
        assert_eq!(
            e.message,
            "missing prompt 'balanse': no balanse.wav in the prompt directory (did you mean 'balance'?)"
        );
        let e = one(&d, "'zzz'");
        assert_eq!(at(e), (5, 34));
        assert_eq!(d.len(), 2, "{d:#?}");
        // The same file is fine when every prompt exists.
        let all: HashSet<String> = ["main-menu", "balance", "balanse", "zzz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(Dialplan::parse_str(Path::new(FILE), text, &all).is_ok());
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let d = diags(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[menus.m.options]\nx = { hangup = true }\n\"1 \" = { hangup = true }\n\"\" = { hangup = true }\n12345678901234567 = { hangup = true }\n\"#\" = { hangup = true }\n\"1#\" = { hangup = true }\n",
        );
        assert_eq!(at(one(&d, "invalid key 'x'")), (5, 1));
        assert_eq!(at(one(&d, "invalid key '1 '")), (6, 1));
        assert_eq!(at(one(&d, "invalid key ''")), (7, 1));
        assert!(one(&d, "invalid key '1234").message.contains("at most 16"));
        assert!(one(&d, "invalid key '#'").message.contains("terminator"));
        assert!(one(&d, "invalid key '1#'").message.contains("terminator"));
        // With no terminator, # is an ordinary key.
        let (plan, _) = ok(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\nterminator = \"none\"\n[menus.m.options]\n\"#\" = { hangup = true }\n",
        );
        assert!(menu(&plan, "m").lookup("#").exact.is_some());
    }

    #[test]
    fn out_of_range_settings_are_rejected() {
        let d = diags(
            r#"entry = "m"
[defaults]
no_input_timeout = 0
inter_digit_timeout = 0.1
max_attempts = 0
[menus.m]
prompt = "p"
no_input_timeout = 61
inter_digit_timeout = "2s"
max_attempts = 11
terminator = "**"
barge_in = "yes"
final = "goodbye"
options.1 = { hangup = true }
[menus.n]
prompt = "p"
no_input_timeout = nan
max_attempts = 2.5
next = "m"
"#,
        );
        let no_input: Vec<(usize, usize)> = d
            .iter()
            .filter(|x| x.message == "'no_input_timeout' must be between 1 and 60 seconds")
            .map(at)
            .collect();
        assert_eq!(no_input, vec![(3, 20), (8, 20), (17, 20)], "0, 61 and nan");
        assert_eq!(
            at(one(&d, "'inter_digit_timeout' must be between 0.5 and 10")),
            (4, 23)
        );
        assert_eq!(
            at(one(&d, "'inter_digit_timeout' must be a number of seconds")),
            (9, 23)
        );
        assert_eq!(
            d.iter()
                .filter(|x| x
                    .message
                    .contains("'max_attempts' must be between 1 and 10"))
                .count(),
            2
        );
        assert_eq!(
            at(one(&d, "'max_attempts' must be a whole number")),
            (18, 16)
        );
        assert_eq!(at(one(&d, "invalid terminator '**'")), (11, 14));
        assert_eq!(at(one(&d, "'barge_in' must be true or false")), (12, 12));
        assert_eq!(at(one(&d, "'final' in menu 'm' must be a table")), (13, 9));
    }

    #[test]
    fn action_tables_are_checked() {
        let d = diags(
            r#"entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { goto = "m", play = "x" }
2 = { }
3 = { transfer = "agents", then = "m" }
4 = { play = "x", prompt = "y" }
5 = { hangup = false }
6 = { transfer = "bad target" }
7 = { goto = "hangup" }
8 = "m"
9 = { goto = "m", prompt = "y" }
"#,
        );
        assert_eq!(at(one(&d, "has both 'goto' and 'play'")), (5, 19));
        assert_eq!(at(one(&d, "option '2' of menu 'm' has no action")), (6, 5));
        assert_eq!(at(one(&d, "'then' does not apply to 'transfer'")), (7, 28));
        assert!(one(&d, "'prompt' does not apply to 'play'")
            .message
            .contains("play = ["));
        assert_eq!(at(one(&d, "hangup = false does nothing")), (9, 16));
        assert_eq!(
            at(one(&d, "invalid transfer target 'bad target'")),
            (10, 18)
        );
        assert_eq!(at(one(&d, "goto needs a menu")), (11, 14));
        assert_eq!(
            at(one(&d, "option '8' of menu 'm' must be a table")),
            (12, 5)
        );
        one(&d, "'prompt' does not apply to 'goto'");
        assert_eq!(d.len(), 9, "{d:#?}");
    }

    #[test]
    fn menu_shapes_are_checked() {
        let d = diags(
            r#"entry = "a"
[menus.a]
prompt = "p"
next = "b"
options.1 = { goto = "b" }
[menus.b]
prompt = "p"
[menus.hangup]
prompt = "p"
next = "a"
[menus."bad name"]
prompt = "p"
next = "a"
[menus.c]
prompt = []
next = "a"
[menus.d]
prompt = "p"
options = {}
[menus.e]
prompt = "p"
options = 3
"#,
        );
        assert_eq!(at(one(&d, "has both 'next' and 'options'")), (5, 1));
        assert_eq!(
            at(one(&d, "menu 'b' has neither 'options' nor 'next'")),
            (6, 8)
        );
        assert_eq!(at(one(&d, "invalid menu name 'hangup'")), (8, 8));
        assert_eq!(at(one(&d, "invalid menu name 'bad name'")), (11, 8));
        assert_eq!(
            at(one(&d, "'prompt' needs at least one prompt name")),
            (15, 10)
        );
        one(&d, "menu 'd' has an empty options table");
        assert_eq!(at(one(&d, "'options' must be a table")), (22, 11));
    }

    #[test]
    fn prompt_names_must_stay_inside_the_prompt_directory() {
        for (bad, why) in [
            ("greeting.wav", "without .wav"),
            ("../etc/passwd", "no segment starting with '.'"),
            ("/abs", "no leading"),
            ("a//b", "double '/'"),
            ("en/", "trailing"),
            ("sp ace", "letters, digits"),
            ("", "empty"),
        ] {
            let text = format!("entry = \"m\"\n[menus.m]\nprompt = \"{bad}\"\nnext = \"hangup\"\n");
            let d = diags(&text);
            let e = one(&d, "invalid prompt name");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            assert_eq!(at(e), (3, 10));
        }
        let (plan, _) =
            ok("entry = \"m\"\n[menus.m]\nprompt = \"en/main-menu.v2\"\nnext = \"hangup\"\n");
        assert_eq!(menu(&plan, "m").prompts, vec!["en/main-menu.v2"]);
    }

    #[test]
    fn unreachable_menu_is_a_warning() {
        let (plan, warnings) = ok(r#"entry = "a"
[menus.a]
prompt = "p"
options.1 = { play = "x", then = "b" }
options.2 = { opt_out = true, then = "c" }
[menus.b]
prompt = "p"
next = "hangup"
[menus.c]
prompt = "p"
final = { goto = "d" }
options.1 = { hangup = true }
[menus.d]
prompt = "p"
next = "a"
[menus.lonely]
prompt = "p"
next = "a"
"#);
        assert_eq!(plan.menu_names().count(), 5);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!(warnings[0].severity, Severity::Warning);
        assert_eq!(
            warnings[0].to_string(),
            "dialplans/t.toml:16:8: warning: menu 'lonely' is unreachable from the entry menu 'a'"
        );
    }

    #[test]
    fn prefix_keys_warn_only_without_a_terminator() {
        let with = "entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[menus.m.options]\n1 = { hangup = true }\n12 = { hangup = true }\n";
        let (_, warnings) = ok(with);
        assert!(warnings.is_empty(), "{warnings:?}");
        let without = with.replace(
            "prompt = \"p\"\n",
            "prompt = \"p\"\nterminator = \"none\"\n",
        );
        let (_, warnings) = ok(&without);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(at(&warnings[0]), (6, 1));
        assert!(warnings[0].message.contains("key '1' is a prefix of '12'"));
        assert!(warnings[0].message.contains("(2s)"));
    }

    #[test]
    fn settings_without_effect_in_announcements_warn() {
        let (_, warnings) = ok("entry = \"g\"\n[menus.g]\nprompt = \"p\"\nnext = \"hangup\"\nmax_attempts = 2\nbarge_in = false\n");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(at(&warnings[0]), (5, 1));
        assert!(warnings[0].message.contains("'max_attempts' has no effect"));
    }

    #[test]
    fn all_problems_are_reported_in_one_pass_in_file_order() {
        let text = r#"entry = "main"
[defaults]
no_input_timeout = 100
[menus.main]
promt = "main-menu"
prompt = "main-menu"
[menus.main.options]
1 = { goto = "credti" }
x = { hangup = true }
[menus.credit]
prompt = "c"
next = "main"
"#;
        let d = diags(text);
        let lines: Vec<usize> = d.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![3, 5, 8, 9], "{d:#?}");
        let err = DialplanError::Invalid(d.clone());
        let shown = err.to_string();
        assert!(shown.starts_with("invalid dialplan: 4 errors\n"), "{shown}");
        for x in &d {
            assert!(shown.contains(&x.to_string()), "{shown}");
        }
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let d = diags("# héllo wörld\nentry = \"m\"\n[menus.m]\nprompt = \"p\"\nnext = \"m\" # ünïcode\nbogus = 1 # é\n\"é\" = 1\n");
        assert_eq!(at(one(&d, "'bogus'")), (6, 1));
        assert_eq!(at(one(&d, "'é'")), (7, 1));
        let d = diags(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\nnext = \"m\"\nk = { \"é\" = 1, bad = 2 }\n",
        );
        // 'k' is unknown in the menu; inner fields are not walked.
        assert_eq!(at(one(&d, "'k'")), (5, 1));
    }

    #[test]
    fn load_reads_files_and_reports_io_and_encoding_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let err = Dialplan::load(&missing, &AnyPrompt).unwrap_err();
        assert!(matches!(err, DialplanError::Io { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let good = dir.path().join("shop.toml");
        std::fs::write(&good, MINIMAL).expect("write");
        let (plan, _) = Dialplan::load(&good, &AnyPrompt).expect("loads");
        assert_eq!(plan.name(), "shop");

        let huge = dir.path().join("huge.toml");
        std::fs::write(&huge, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
        let err = Dialplan::load(&huge, &AnyPrompt).unwrap_err();
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, b"entry = \"m\"\n# caf\xe9\n").expect("write");
        let DialplanError::Invalid(d) = Dialplan::load(&bad, &AnyPrompt).unwrap_err() else {
            panic!("not Invalid")
        };
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].column), (2, 6));
        assert!(d[0].message.contains("UTF-8"));
        assert_eq!(d[0].file, bad);
    }

    #[test]
    fn deep_nesting_does_not_crash() {
        for text in [
            format!("a = {}", "[".repeat(20_000)),
            format!("a = {}", "{ b = ".repeat(20_000)),
            format!("{}1", "a.".repeat(20_000)),
        ] {
            assert!(parse(&text).is_err());
        }
    }

    #[test]
    fn did_you_mean_prefers_the_closest_name() {
        assert_eq!(did_you_mean("credti", ["credit", "main"]), Some("credit"));
        assert_eq!(did_you_mean("promt", ["prompt", "next"]), Some("prompt"));
        assert_eq!(did_you_mean("xyz", ["prompt", "next"]), None);
        assert_eq!(did_you_mean("MAIN", ["main"]), Some("main"));
    }

    #[test]
    fn demo_bank_dialplan_is_valid_and_keeps_its_keys() {
        let root = repo_root();
        let prompt_dir = root.join("voice-prompts");
        let catalog: HashSet<String> = std::fs::read_dir(&prompt_dir)
            .expect("voice-prompts/")
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".wav").map(str::to_string)
            })
            .collect();
        let path = root.join("dialplans/demo-bank.toml");
        let (plan, warnings) = Dialplan::load(&path, &catalog).expect("demo bank loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plan.name(), "demo-bank");
        assert_eq!(plan.entry(), "greeting");
        assert_eq!(
            menu(&plan, "greeting").kind,
            MenuKind::Announcement {
                next: Next::Menu("main".into())
            }
        );
        let main = |k: &str| option(&plan, "main", k).clone();
        assert!(matches!(main("1"), Action::Play { then: Next::Menu(m), .. } if m == "main"));
        assert!(matches!(main("2"), Action::Play { then: Next::Menu(m), .. } if m == "main"));
        assert_eq!(
            main("3"),
            Action::Goto {
                menu: "credit".into()
            }
        );
        // 0 is the agents queue (before routing: a transfer to "agents"); 4 the risk desk.
        assert!(
            matches!(main("0"), Action::Queue { queue, prompts, priority: None, .. } if queue == "agents" && !prompts.is_empty())
        );
        assert!(matches!(main("4"), Action::Queue { queue, .. } if queue == "risk"));
        assert!(
            matches!(main("9"), Action::OptOut { then: Next::Hangup, prompts } if prompts.len() == 2)
        );
        let credit = |k: &str| option(&plan, "credit", k).clone();
        assert!(matches!(credit("1"), Action::Play { then: Next::Menu(m), .. } if m == "credit"));
        // The limit increase needs the voiceprint; accepted (or not enrolled: the request is
        // noted) it plays as before.
        let Action::VerifyVoice(check) = credit("2") else {
            panic!("credit 2 checks the voice: {:?}", credit("2"));
        };
        for branch in [&check.on_accept, &check.on_not_enrolled] {
            assert!(
                matches!(branch, Action::Play { prompts, then: Next::Menu(m) } if m == "credit" && prompts == &["limit-increase"])
            );
        }
        assert!(matches!(&check.on_reject, Action::Queue { queue, .. } if queue == "risk"));
        assert!(matches!(&check.on_not_enough, Action::Queue { queue, .. } if queue == "agents"));
        // Routes: 65+ offered the fast lane, VIP to the experts, open complaints to risk.
        let routes: Vec<(&str, &str)> = plan
            .routes()
            .iter()
            .map(|r| (r.reason.as_str(), r.when.source()))
            .collect();
        assert_eq!(
            routes,
            [
                ("elderly", "age >= 65"),
                ("vip", "segment == 'vip'"),
                ("open_complaint", "open_complaint and known")
            ]
        );
        assert!(
            matches!(&plan.routes()[0].action, RouteAction::Offer { queue, priority: PRIORITY_FAST_LANE, .. } if queue == "agents")
        );
        assert!(
            matches!(&plan.routes()[1].action, RouteAction::Run(Action::Queue { queue, priority: Some(PRIORITY_VIP), .. }) if queue == "experts")
        );
        let queues: Vec<&str> = plan.queues().map(|q| q.name.as_str()).collect();
        assert_eq!(queues, ["agents", "experts", "risk"]);
        let agents = plan.queue("agents").expect("agents queue");
        assert_eq!(agents.after_hours.kind, FallbackKind::Message);
        assert_eq!(agents.overflow.kind, FallbackKind::Callback);
        assert_eq!(
            agents.no_agents.kind,
            FallbackKind::Voicemail {
                max: Duration::from_secs(120)
            }
        );
        assert!(
            matches!(&plan.fraud().on_hit, Some(Action::Queue { queue, priority: Some(8), .. }) if queue == "risk")
        );
        assert_eq!(
            credit("*"),
            Action::Goto {
                menu: "main".into()
            }
        );
        let m = menu(&plan, "main");
        assert_eq!(m.max_attempts, 3);
        assert_eq!(
            m.final_action,
            Action::Hangup {
                prompts: vec!["goodbye".into()]
            }
        );
        assert!(!m.no_input_prompts.is_empty() && !m.no_match_prompts.is_empty());
        // Every option of every menu also works by voice; the main menu answers questions.
        let speech = plan.speech().expect("the demo listens");
        assert_eq!(speech.language, "en");
        assert!(speech.say_anything);
        for menu in plan
            .menus()
            .filter(|m| matches!(m.kind, MenuKind::Choice { .. }))
        {
            for option in menu.options() {
                let phrases = option.phrases.get("en").map_or(0, Vec::len);
                assert!(
                    phrases >= 3,
                    "{} {} has {phrases} phrases",
                    menu.name,
                    option.key
                );
            }
        }
        assert!(m.answers.len() >= 20, "{} answers", m.answers.len());
        assert!(m
            .answers
            .iter()
            .all(|a| matches!(a.reply, Spoken::Text(_)) && a.then == AnswerThen::AnythingElse));
        assert!(matches!(m.anything_else, Some(Spoken::Text(_))));
        // Every prompt file the dialplan uses is bundled, and no bundled demo prompt is unused.
        let used: BTreeSet<&str> = plan.prompt_names().collect();
        let bundled: BTreeSet<&str> = catalog.iter().map(String::as_str).collect();
        assert_eq!(used, bundled);
    }

    #[test]
    fn reference_example_in_the_docs_is_valid() {
        let doc = include_str!("../../docs/dialplan.md");
        let start = doc.find("```toml\n").expect("a toml example") + "```toml\n".len();
        let len = doc[start..].find("```").expect("closing fence");
        let (plan, warnings) = Dialplan::parse_str(
            Path::new("dialplans/shop.toml"),
            &doc[start..start + len],
            &AnyPrompt,
        )
        .unwrap_or_else(|e| panic!("docs example: {e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plan.name(), "shop");
        assert_eq!(plan.menu_names().count(), 3);
        assert_eq!(menu(&plan, "orders").max_attempts, 2);
    }

    #[test]
    fn bundled_prompts_are_small_mono_16_bit_wavs() {
        let dir = repo_root().join("voice-prompts");
        let mut total = 0u64;
        let mut count = 0;
        for entry in std::fs::read_dir(&dir)
            .expect("voice-prompts/")
            .filter_map(|e| e.ok())
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wav") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read wav");
            total += bytes.len() as u64;
            count += 1;
            // RIFF/WAVE with a canonical PCM fmt chunk: format 1, mono, 16 kHz, 16-bit.
            assert_eq!(bytes.get(0..4), Some(&b"RIFF"[..]), "{path:?}");
            assert_eq!(bytes.get(8..12), Some(&b"WAVE"[..]), "{path:?}");
            assert_eq!(bytes.get(12..16), Some(&b"fmt "[..]), "{path:?}");
            let u16_at = |i: usize| {
                bytes
                    .get(i..i + 2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
            };
            let u32_at = |i: usize| {
                bytes
                    .get(i..i + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            assert_eq!(u16_at(20), Some(1), "PCM {path:?}");
            assert_eq!(u16_at(22), Some(1), "mono {path:?}");
            assert_eq!(u32_at(24), Some(16_000), "16 kHz {path:?}");
            assert_eq!(u16_at(34), Some(16), "16-bit {path:?}");
            assert!(
                bytes.len() > 16_000,
                "at least half a second of audio: {path:?}"
            );
        }
        assert_eq!(count, 12);
        assert!(total < 3 * 1024 * 1024, "{total} bytes");
    }

    // --- speech -----------------------------------------------------------------------------

    fn phrases(plan: &Dialplan, menu_name: &str, key: &str, lang: &str) -> Vec<String> {
        menu(plan, menu_name)
            .lookup(key)
            .exact
            .and_then(|o| o.phrases.get(lang).cloned())
            .unwrap_or_default()
    }

    #[test]
    fn keys_only_dialplan_has_no_speech() {
        let (plan, _) = ok(MINIMAL);
        assert!(plan.speech().is_none());
        assert_eq!(plan.language(), "en");
        assert!(menu(&plan, "main").answers.is_empty());
    }

    #[test]
    fn phrases_parse_as_string_list_or_language_table() {
        let (plan, warnings) = ok(r#"
entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { play = "bal", say = "  balance " }
2 = { play = "blocked", say = ["lost card", "stolen card"], label = "a lost card" }
3 = { goto = "m", say = { en = ["main menu"], zh = ["主 菜单", "返回"] }, label = { zh = "主菜单" } }
4 = { hangup = true }
"#);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(phrases(&plan, "m", "1", "en"), vec!["balance"]);
        assert_eq!(
            phrases(&plan, "m", "2", "en"),
            vec!["lost card", "stolen card"]
        );
        assert_eq!(phrases(&plan, "m", "3", "zh"), vec!["主 菜单", "返回"]);
        assert!(phrases(&plan, "m", "4", "en").is_empty());
        let m = menu(&plan, "m");
        let opt = |k: &str| m.lookup(k).exact.expect("key");
        assert_eq!(opt("2").label("en", "en").as_deref(), Some("a lost card"));
        assert_eq!(
            opt("1").label("en", "en").as_deref(),
            Some("balance"),
            "first phrase"
        );
        assert_eq!(opt("3").label("zh", "en").as_deref(), Some("主菜单"));
        assert_eq!(opt("3").label("en", "en").as_deref(), Some("main menu"));
        assert_eq!(opt("4").label("en", "en"), None);
        // Phrases switch speech on with the built-in settings.
        let speech = plan.speech().expect("speech on");
        assert_eq!(speech.confidence, DEFAULT_CONFIDENCE);
        assert_eq!(speech.reject_below, DEFAULT_REJECT_BELOW);
        assert_eq!(speech.end_silence, Duration::from_millis(600));
        assert_eq!(speech.no_input_timeout, None);
        assert!(speech.say_anything);
        assert_eq!(
            speech.confirm_text.get("en", "en"),
            Some("Did you say {label}?")
        );
        assert!(speech.yes["en"].contains(&"yeah".to_string()));
        assert!(speech.no["en"].contains(&"nope".to_string()));
    }

    #[test]
    fn speech_settings_parse() {
        let (plan, warnings) = ok(r#"
entry = "m"
[speech]
language = "zh"
confidence = 0.75
reject_below = 0.5
confirm_text = { zh = "您是说{label}吗？", en = "You said {label}?" }
yes = ["好的", "是"]
end_silence_ms = 800
no_input_timeout = 7.5
say_anything = false
[menus.m]
prompt = "p"
options.1 = { play = "a", say = "余额" }
"#);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plan.language(), "zh");
        assert_eq!(
            phrases(&plan, "m", "1", "zh"),
            vec!["余额"],
            "plain lists are in the dialplan's language"
        );
        let s = plan.speech().expect("on");
        assert_eq!((s.confidence, s.reject_below), (0.75, 0.5));
        assert_eq!(s.end_silence, Duration::from_millis(800));
        assert_eq!(s.no_input_timeout, Some(Duration::from_millis(7500)));
        assert!(!s.say_anything);
        assert_eq!(s.confirm_text.get("zh", "zh"), Some("您是说{label}吗？"));
        assert_eq!(
            s.confirm_text.get("fr", "zh"),
            Some("您是说{label}吗？"),
            "fallback"
        );
        assert_eq!(
            s.yes["zh"],
            vec!["好的", "是"],
            "replaces the built-in list"
        );
        assert!(
            s.yes["en"].contains(&"yes".to_string()),
            "other languages keep theirs"
        );
        // Speech can be switched off although phrases exist.
        let (plan, _) = ok("entry = \"m\"\n[speech]\nenabled = false\n[menus.m]\nprompt = \"p\"\noptions.1 = { play = \"a\", say = \"x\" }\n");
        assert!(plan.speech().is_none());
    }

    #[test]
    fn answers_parse_and_can_stand_without_options() {
        let (plan, warnings) = ok(r#"
entry = "faq"
[defaults]
anything_else_text = "Anything else?"
[menus.faq]
prompt = "p"
[[menus.faq.answers]]
say = ["opening hours", "when are you open"]
answer_text = "Nine to five."
[[menus.faq.answers]]
say = "fees"
answer = ["fees-1", "fees-2"]
then = "anything-else"
label = "our fees"
[[menus.faq.answers]]
say = { zh = ["营业 时间"] }
answer_text = { zh = "九点到五点。" }
then = "menu"
"#);
        assert!(warnings.is_empty(), "{warnings:?}");
        let faq = menu(&plan, "faq");
        assert_eq!(
            faq.kind,
            MenuKind::Choice {
                options: BTreeMap::new()
            }
        );
        assert_eq!(faq.answers.len(), 3);
        let a = &faq.answers[0];
        assert_eq!(a.phrases["en"], vec!["opening hours", "when are you open"]);
        assert_eq!(
            a.reply,
            Spoken::Text(LocalText(BTreeMap::from([(
                "en".into(),
                "Nine to five.".into()
            )])))
        );
        assert_eq!(a.then, AnswerThen::Menu);
        assert_eq!(a.label("en", "en").as_deref(), Some("opening hours"));
        let b = &faq.answers[1];
        assert_eq!(
            b.reply,
            Spoken::Prompts(vec!["fees-1".into(), "fees-2".into()])
        );
        assert_eq!(b.then, AnswerThen::AnythingElse);
        assert_eq!(b.label("en", "en").as_deref(), Some("our fees"));
        assert_eq!(
            faq.answers[2].label("zh", "en").as_deref(),
            Some("营业 时间")
        );
        assert_eq!(
            faq.anything_else,
            Some(Spoken::Text(LocalText(BTreeMap::from([(
                "en".into(),
                "Anything else?".into()
            )]))))
        );
        let prompts: Vec<&str> = plan.prompt_names().collect();
        assert_eq!(prompts, vec!["fees-1", "fees-2", "p"]);
        // anything_else_prompt is a prompt name, checked like every other.
        let (plan, _) = ok("entry = \"m\"\n[menus.m]\nprompt = \"p\"\nanything_else_prompt = \"more\"\n[[menus.m.answers]]\nsay = \"x\"\nanswer = \"y\"\nthen = \"anything-else\"\n");
        assert_eq!(
            menu(&plan, "m").anything_else,
            Some(Spoken::Prompts(vec!["more".into()]))
        );
    }

    #[test]
    fn empty_phrases_are_errors_at_their_position() {
        let d = diags(
            r#"entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { play = "a", say = [] }
2 = { play = "b", say = ["", "?!", "ok"] }
3 = { play = "c", say = {} }
4 = { play = "d", say = 5 }
"#,
        );
        assert_eq!(at(one(&d, "'say' needs at least one phrase")), (5, 25));
        assert_eq!(at(one(&d, "empty phrase in 'say'")), (6, 26));
        let e = one(&d, "has no words once punctuation is removed");
        assert_eq!(at(e), (6, 30));
        assert!(
            e.message.contains("phrase '?!' of option '2' in menu 'm'"),
            "{}",
            e.message
        );
        assert_eq!(at(one(&d, "'say' needs at least one language")), (7, 25));
        assert_eq!(at(one(&d, "'say' must be a phrase")), (8, 25));
        assert_eq!(d.len(), 5, "{d:#?}");
    }

    #[test]
    fn a_phrase_for_two_options_of_one_menu_is_a_conflict() {
        let d = diags(
            r#"entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
2 = { play = "b", say = ["lost card", "stolen card"] }
4 = { play = "d", say = "Lost  Card!" }
[[menus.m.answers]]
say = ["opening hours", "STOLEN card"]
answer_text = "x"
[menus.other]
prompt = "p"
options.1 = { play = "a", say = ["lost card"] }
options.2 = { play = "a", say = { zh = ["lost card"] } }
"#,
        );
        let e = one(&d, "is given to both option '2' and option '4'");
        assert_eq!(at(e), (6, 25));
        assert_eq!(
            e.message,
            "phrase 'lost card' is given to both option '2' and option '4' in menu 'm': a caller saying it could mean either"
        );
        let e = one(&d, "answer 1 ('opening hours')");
        assert_eq!(at(e), (8, 25));
        assert!(
            e.message
                .contains("phrase 'stolen card' is given to both option '2'"),
            "{}",
            e.message
        );
        // Other menus and other languages may reuse a phrase.
        assert_eq!(d.len(), 2, "{d:#?}");
    }

    #[test]
    fn answers_need_phrases_and_exactly_one_reply() {
        let d = diags(
            r#"entry = "m"
[menus.m]
prompt = "p"
[[menus.m.answers]]
say = "hours"
[[menus.m.answers]]
answer = "x"
[[menus.m.answers]]
say = "fees"
answer = "f"
answer_text = "F"
[[menus.m.answers]]
say = "z"
answer_text = ""
anser = "q"
"#,
        );
        assert_eq!(
            at(one(
                &d,
                "answer 1 ('hours') of menu 'm' has neither 'answer'"
            )),
            (4, 1)
        );
        assert_eq!(at(one(&d, "answer 2 of menu 'm' has no 'say'")), (6, 1));
        assert_eq!(at(one(&d, "has both 'answer' and 'answer_text'")), (11, 1));
        assert_eq!(at(one(&d, "'answer_text' is empty")), (14, 15));
        let e = one(&d, "unknown field 'anser'");
        assert_eq!(at(e), (15, 1));
        assert!(
            e.message.contains("did you mean 'answer'?"),
            "{}",
            e.message
        );
        assert_eq!(d.len(), 5, "{d:#?}");
        let d = diags("entry = \"m\"\n[menus.m]\nprompt = \"p\"\nanswers = []\n");
        assert_eq!(at(one(&d, "empty 'answers' list")), (4, 11));
        let d = diags("entry = \"m\"\n[menus.m]\nprompt = \"p\"\nnext = \"hangup\"\n[[menus.m.answers]]\nsay = \"x\"\nanswer_text = \"y\"\n");
        one(&d, "has both 'next' and 'answers'");
    }

    #[test]
    fn answer_then_must_be_menu_or_anything_else() {
        let d = diags(
            r#"entry = "m"
[menus.m]
prompt = "p"
[[menus.m.answers]]
say = "a"
answer_text = "A"
then = "anythign-else"
[[menus.m.answers]]
say = "b"
answer_text = "B"
then = "anything-else"
"#,
        );
        let e = one(&d, "unknown 'then' 'anythign-else'");
        assert_eq!(at(e), (7, 8));
        assert!(
            e.message.contains("(did you mean 'anything-else'?)"),
            "{}",
            e.message
        );
        let e = one(&d, "no anything_else_prompt or anything_else_text");
        assert_eq!(at(e), (11, 8));
        assert_eq!(d.len(), 2, "{d:#?}");
    }

    #[test]
    fn missing_answer_prompt_is_reported_like_any_prompt() {
        let catalog: HashSet<String> = ["p", "opening-hours"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let text = "entry = \"m\"\n[menus.m]\nprompt = \"p\"\n[[menus.m.answers]]\nsay = \"hours\"\nanswer = \"opening-hour\"\n";
        let DialplanError::Invalid(d) =
            Dialplan::parse_str(Path::new(FILE), text, &catalog).unwrap_err()
        else {
            panic!("not Invalid")
        };
        let e = one(&d, "missing prompt 'opening-hour'");
        assert_eq!(at(e), (6, 10));
        assert!(
            e.message.ends_with("(did you mean 'opening-hours'?)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_languages_are_errors_with_suggestions() {
        let d = diags(
            r#"entry = "m"
[speech]
language = "fr"
[menus.m]
prompt = "p"
options.1 = { play = "a", say = { eng = ["x"], zh = "y" } }
options.2 = { play = "b", say = "z", label = { ZH = "q" } }
"#,
        );
        let e = one(&d, "unknown language 'fr'");
        assert_eq!(at(e), (3, 12));
        assert!(
            e.message.contains("supported languages are en, zh"),
            "{}",
            e.message
        );
        let e = one(&d, "unknown language 'eng'");
        assert_eq!(at(e), (6, 35));
        assert!(e.message.contains("(did you mean 'en'?)"), "{}", e.message);
        assert_eq!(at(one(&d, "unknown language 'ZH'")), (7, 48));
        assert_eq!(d.len(), 3, "{d:#?}");
        // A non-English dialplan needs its own confirmation question.
        let d = diags("entry = \"m\"\n[speech]\nlanguage = \"zh\"\n[menus.m]\nprompt = \"p\"\noptions.1 = { play = \"a\", say = \"余额\" }\n");
        assert_eq!(at(one(&d, "set 'confirm_text' for language 'zh'")), (3, 12));
    }

    #[test]
    fn confidence_values_must_be_fractions_in_order() {
        let d = diags("entry = \"m\"\n[speech]\nconfidence = 1.5\nreject_below = -0.1\nend_silence_ms = 50\nno_input_timeout = 0\nenabled = \"yes\"\n[menus.m]\nprompt = \"p\"\nnext = \"hangup\"\n");
        assert_eq!(at(one(&d, "'confidence' must be between 0 and 1")), (3, 14));
        assert_eq!(
            at(one(&d, "'reject_below' must be between 0 and 1")),
            (4, 16)
        );
        assert_eq!(
            at(one(&d, "'end_silence_ms' must be between 200 and 3000")),
            (5, 18)
        );
        assert_eq!(
            at(one(&d, "'no_input_timeout' must be between 1 and 60")),
            (6, 20)
        );
        assert_eq!(at(one(&d, "'enabled' must be true or false")), (7, 11));
        assert_eq!(d.len(), 5, "{d:#?}");
        let d = diags("entry = \"m\"\n[speech]\nconfidence = 0.5\nreject_below = 0.7\n[menus.m]\nprompt = \"p\"\nnext = \"hangup\"\n");
        let e = one(&d, "thresholds out of order");
        assert_eq!(at(e), (4, 16));
        assert!(
            e.message
                .contains("'reject_below' (0.7) must not be above 'confidence' (0.5)"),
            "{}",
            e.message
        );
        // Only confidence given, below the default reject_below: pointed at confidence.
        let d = diags("entry = \"m\"\n[speech]\nconfidence = 0.2\n[menus.m]\nprompt = \"p\"\nnext = \"hangup\"\n");
        assert_eq!(at(one(&d, "thresholds out of order")), (3, 14));
        // Equal thresholds are fine: no confirmation band.
        ok("entry = \"m\"\n[speech]\nconfidence = 0.5\nreject_below = 0.5\n[menus.m]\nprompt = \"p\"\noptions.1 = { play = \"a\", say = \"x\" }\n");
    }

    #[test]
    fn misplaced_speech_fields_are_reported() {
        let d = diags(
            r#"entry = "m"
[speech]
confidense = 0.7
confirm_text = "Say {lable}"
yes = ["yes", "?"]
[defaults]
anything_else_prompt = "ae"
anything_else_text = "Anything else?"
final = { hangup = true, say = "bye" }
[menus.m]
prompt = "p"
options.1 = { play = "a", say = "x", sey = "y" }
"#,
        );
        let e = one(&d, "unknown field 'confidense' in [speech]");
        assert_eq!(at(e), (3, 1));
        assert!(
            e.message.contains("did you mean 'confidence'?"),
            "{}",
            e.message
        );
        assert_eq!(at(one(&d, "unknown placeholder '{lable}'")), (4, 16));
        assert_eq!(at(one(&d, "phrase '?' of 'yes' in [speech]")), (5, 15));
        assert_eq!(
            at(one(
                &d,
                "has both 'anything_else_prompt' and 'anything_else_text'"
            )),
            (8, 1)
        );
        assert_eq!(
            at(one(&d, "'say' does not apply to 'final' in [defaults]")),
            (9, 26)
        );
        let e = one(&d, "unknown field 'sey'");
        assert!(e.message.contains("did you mean 'say'?"), "{}", e.message);
        assert_eq!(
            d.iter().filter(|x| x.severity == Severity::Error).count(),
            6,
            "{d:#?}"
        );
        assert_eq!(at(one(&d, "has no {label}")), (4, 16));
    }

    #[test]
    fn speech_warnings_and_speech_off_checks() {
        let (_, warnings) = ok("entry = \"m\"\n[speech]\nenabled = true\n[menus.m]\nprompt = \"p\"\noptions.1 = { play = \"a\", label = \"x\" }\n");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            at(one(
                &warnings,
                "speech is enabled but no option has phrases"
            )),
            (3, 1)
        );
        assert_eq!(at(one(&warnings, "'label' has no effect")), (6, 27));
        let d = diags("entry = \"m\"\n[speech]\nenabled = false\n[menus.m]\nprompt = \"p\"\n[[menus.m.answers]]\nsay = \"x\"\nanswer_text = \"y\"\n");
        assert_eq!(
            at(one(&d, "menu 'm' has only answers and speech is off")),
            (4, 8)
        );
        // An anything-else setting in a play-only menu has no effect.
        let (_, warnings) = ok("entry = \"g\"\n[menus.g]\nprompt = \"p\"\nnext = \"hangup\"\nanything_else_text = \"x\"\n");
        assert_eq!(
            at(one(&warnings, "'anything_else_text' has no effect")),
            (5, 1)
        );
    }

    #[test]
    fn opening_menus_and_menus_by_distance() {
        let (plan, _) = ok(r#"entry = "a"
[menus.a]
prompt = "p"
next = "b"
[menus.b]
prompt = "p"
next = "m"
[menus.m]
prompt = "p"
options.1 = { goto = "z" }
options.2 = { goto = "c" }
[menus.c]
prompt = "p"
options.1 = { goto = "d" }
[menus.d]
prompt = "p"
next = "m"
[menus.z]
prompt = "p"
next = "hangup"
[menus.lonely]
prompt = "p"
next = "a"
"#);
        assert_eq!(plan.opening_menus(), vec!["a", "b", "m"]);
        // m's keys in order lead to z, then c; d is one step further; lonely last.
        assert_eq!(
            plan.menus_by_distance(),
            vec!["a", "b", "m", "z", "c", "d", "lonely"]
        );
        let (plan, _) = ok("entry = \"a\"\n[menus.a]\nprompt = \"p\"\nnext = \"b\"\n[menus.b]\nprompt = \"p\"\nnext = \"a\"\n");
        assert_eq!(
            plan.opening_menus(),
            vec!["a", "b"],
            "a loop of greetings ends"
        );
    }

    #[test]
    fn reference_speech_example_in_the_docs_is_valid() {
        let doc = include_str!("../../docs/dialplan.md");
        let marker = "```toml\n# speech example\n";
        let start = doc.find(marker).expect("a speech example") + "```toml\n".len();
        let len = doc[start..].find("```").expect("closing fence");
        let (plan, warnings) = Dialplan::parse_str(
            Path::new("dialplans/bank.toml"),
            &doc[start..start + len],
            &AnyPrompt,
        )
        .unwrap_or_else(|e| panic!("docs speech example: {e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let speech = plan.speech().expect("speech on");
        assert_eq!(speech.confidence, 0.7);
        assert!(!menu(&plan, "main").answers.is_empty());
    }

    // --- routing ------------------------------------------------------------------------

    /// A menu with options, the three demo queues and `extra` appended.
    fn routed(extra: &str) -> String {
        format!(
            r#"entry = "main"
[menus.main]
prompt = "main-menu"
options.1 = {{ play = "balance" }}
[queues.agents]
[queues.experts]
[queues.risk]
{extra}"#
        )
    }

    #[test]
    fn routes_parse_in_order_with_their_defaults() {
        let (plan, warnings) = ok(&routed(
            r#"
[[routes]]
when = "age >= 65"
reason = "elderly"
whisper = "elderly caller"
action = { fast_lane = "agents" }
[[routes]]
when = "segment == 'vip'"
action = { queue = "experts" }
[[routes]]
when = "voice == 'rejected' or watchlist"
reason = "suspect"
action = { queue = "risk", priority = -3, prompt = "please-hold" }
[[routes]]
when = "language == 'zh'"
action = { fast_lane = "agents", mode = "transfer", priority = 7 }
[[routes]]
when = "open_complaint"
action = { goto = "main" }
"#,
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        let routes = plan.routes();
        assert_eq!(routes.len(), 5);
        assert_eq!(
            (routes[0].reason.as_str(), routes[0].whisper.as_str()),
            ("elderly", "elderly caller")
        );
        let RouteAction::Offer {
            queue,
            priority,
            prompts,
            text,
            phrases,
        } = &routes[0].action
        else {
            panic!("offer: {:?}", routes[0].action)
        };
        assert_eq!((queue.as_str(), *priority), ("agents", PRIORITY_FAST_LANE));
        assert!(prompts.is_empty());
        assert_eq!(text.get("en", "en"), Some(DEFAULT_OFFER_TEXT));
        assert_eq!(phrases["en"], DEFAULT_FAST_LANE_PHRASES);
        // Without reason: route-<n>; the whisper is the reason.
        assert_eq!(
            (routes[1].reason.as_str(), routes[1].whisper.as_str()),
            ("route-2", "route-2")
        );
        assert_eq!(
            routes[1].action,
            RouteAction::Run(Action::Queue {
                queue: "experts".into(),
                priority: Some(PRIORITY_VIP),
                prompts: vec![],
                whisper: None
            })
        );
        assert_eq!(
            routes[2].action,
            RouteAction::Run(Action::Queue {
                queue: "risk".into(),
                priority: Some(-3),
                prompts: vec!["please-hold".into()],
                whisper: None
            })
        );
        assert!(routes[2].when.uses(crate::ivr::routing::Field::Voice));
        assert_eq!(
            routes[3].action,
            RouteAction::Run(Action::Queue {
                queue: "agents".into(),
                priority: Some(7),
                prompts: vec![],
                whisper: None
            })
        );
        assert_eq!(
            routes[4].action,
            RouteAction::Run(Action::Goto {
                menu: "main".into()
            })
        );
    }

    #[test]
    fn condition_errors_point_at_the_character_in_the_file() {
        let text = routed(
            r#"
[[routes]]
when = "age >= 65 and segmnt == 'vip'"
action = { queue = "agents" }
[[routes]]
when = 'voice == "rejectd"'
action = { queue = "risk" }
[[routes]]
when = "age >= \u0041"
action = { queue = "risk" }
"#,
        );
        let d = diags(&text);
        // Line 10 is `when = "age >= 65 and segmnt == 'vip'"`: segmnt starts at column 23.
        let e = one(&d, "unknown field 'segmnt'");
        assert_eq!(at(e), (10, 23), "{e}");
        assert!(e.message.contains("did you mean 'segment'"), "{e}");
        assert!(
            e.message.contains("in condition 'age >= 65 and segmnt"),
            "{e}"
        );
        let e = one(&d, "unknown voice decision");
        assert_eq!(at(e), (13, 18), "{e}");
        // With an escape in the string the offsets cannot be mapped: the string's start.
        let e = one(&d, "whole number");
        assert_eq!(at(e), (16, 8), "{e}");
        // Missing pieces.
        let d = diags(&routed("[[routes]]\nreason = \"x y\"\n"));
        one(&d, "route 1 has no 'when'");
        one(&d, "route 1 has no 'action'");
        one(&d, "invalid reason 'x y'");
    }

    #[test]
    fn every_queue_reference_must_be_declared() {
        let text = r#"entry = "main"
[menus.main]
prompt = "main-menu"
[menus.main.options]
0 = { queue = "agnets" }
2 = { verify_voice = { phrase_text = "Say it.", on_accept = "main", on_reject = { queue = "fraud" }, on_not_enough = "hangup" } }
[[routes]]
when = "known"
action = { fast_lane = "vip-desk" }
[fraud]
on_hit = { queue = "risk" }
[queues.agents]
"#;
        let d = diags(text);
        let e = one(&d, "unknown queue 'agnets'");
        assert!(e.message.contains("did you mean 'agents'"), "{e}");
        assert_eq!(at(e), (5, 15));
        one(&d, "unknown queue 'fraud'; declare it as [queues.fraud]");
        one(&d, "unknown queue 'vip-desk'");
        one(&d, "unknown queue 'risk'");
        let d = diags(&routed(
            "[menus.x]\nprompt = \"p\"\noptions.1 = { queue = \"bad name\" }\n",
        ));
        one(&d, "invalid queue name 'bad name'");
    }

    #[test]
    fn queue_fallbacks_parse_with_defaults() {
        let (plan, _) = ok(&routed("").replace(
            "[queues.risk]\n",
            r#"[queues.risk]
after_hours = { play = ["closed", "goodbye"], then = "main" }
overflow = { callback = true }
no_agents = { voicemail = true }
[queues.desk]
unavailable = { voicemail = true, max_seconds = 30, text = "Speak now." }
overflow = { text = "Busy." }
"#,
        ));
        let risk = plan.queue("risk").expect("risk");
        assert_eq!(
            risk.after_hours,
            Fallback {
                kind: FallbackKind::Message,
                message: Spoken::Prompts(vec!["closed".into(), "goodbye".into()]),
                then: Next::Menu("main".into())
            }
        );
        assert_eq!(risk.overflow.kind, FallbackKind::Callback);
        assert_eq!(
            risk.overflow.message,
            Spoken::Text(LocalText(BTreeMap::from([(
                "en".to_string(),
                DEFAULT_CALLBACK_TEXT.to_string()
            )])))
        );
        assert_eq!(risk.overflow.then, Next::Hangup);
        assert_eq!(
            risk.no_agents.kind,
            FallbackKind::Voicemail {
                max: Duration::from_secs(DEFAULT_VOICEMAIL_SECONDS)
            }
        );
        // `unavailable` stands in for every reason without its own fallback.
        let desk = plan.queue("desk").expect("desk");
        let speak = FallbackKind::Voicemail {
            max: Duration::from_secs(30),
        };
        assert_eq!(desk.fallback(UnavailableReason::AfterHours).kind, speak);
        assert_eq!(desk.fallback(UnavailableReason::NoAgents).kind, speak);
        assert_eq!(desk.overflow.kind, FallbackKind::Message);
        // No fallback at all: a built-in apology, then hang up.
        let agents = plan.queue("agents").expect("agents");
        assert_eq!(agents.after_hours.then, Next::Hangup);
        assert!(plan
            .fixed_texts("en")
            .contains(&DEFAULT_UNAVAILABLE_TEXT.to_string()));
        assert!(plan.fixed_texts("en").contains(&"Speak now.".to_string()));
        assert!(plan.prompt_names().any(|p| p == "closed"));
    }

    #[test]
    fn queue_fallback_mistakes_are_reported() {
        let d = diags(&routed("").replace(
            "[queues.risk]\n",
            r#"[queues.risk]
after_hours = { callback = true, voicemail = true }
overflow = { text = "Busy.", max_seconds = 30 }
no_agents = { then = "mian" }
unavailable = { voicemail = true, max_seconds = 3600 }
[queues.desk]
closed = { text = "x" }
overflow = "hangup"
"#,
        ));
        one(&d, "has both 'callback' and 'voicemail'");
        one(&d, "'max_seconds' only applies to voicemail");
        one(&d, "'no_agents' of queue 'risk' says nothing");
        one(&d, "unknown menu 'mian'");
        one(&d, "'max_seconds' must be between 5 and 600");
        one(&d, "unknown field 'closed' in queue 'desk'");
        one(&d, "'overflow' of queue 'desk' must be a table");
    }

    #[test]
    fn verify_voice_parses_its_branches() {
        let (plan, warnings) = ok(&routed(
            r#"[menus.credit]
prompt = "credit-menu"
[menus.credit.options]
2 = { label = "limit", say = "limit increase", verify_voice = { phrase_prompt = "passphrase", on_accept = { play = "limit-increase" }, on_reject = { queue = "risk" }, on_not_enough = "main", reuse_speech = false } }
3 = { verify_voice = { phrase_text = "Say: my voice is my password.", on_accept = "credit", on_reject = "hangup", on_not_enough = { queue = "agents" }, on_not_enrolled = { goto = "main" } } }
"#,
        ));
        assert!(
            warnings.iter().all(|w| w.message.contains("unreachable")),
            "{warnings:?}"
        );
        let Action::VerifyVoice(check) = option(&plan, "credit", "2").clone() else {
            panic!("verify_voice")
        };
        assert_eq!(check.phrase, Spoken::Prompts(vec!["passphrase".into()]));
        assert!(!check.reuse_speech);
        // A branch's play continues in the option's menu, like the option's own play.
        assert_eq!(
            check.on_accept,
            Action::Play {
                prompts: vec!["limit-increase".into()],
                then: Next::Menu("credit".into())
            }
        );
        assert!(matches!(check.on_reject, Action::Queue { ref queue, .. } if queue == "risk"));
        assert_eq!(
            check.on_not_enough,
            Action::Goto {
                menu: "main".into()
            }
        );
        assert_eq!(
            check.on_not_enrolled, check.on_not_enough,
            "defaults to on_not_enough"
        );
        let Action::VerifyVoice(check) = option(&plan, "credit", "3").clone() else {
            panic!("verify_voice")
        };
        assert!(check.reuse_speech);
        assert_eq!(check.on_reject, Action::Hangup { prompts: vec![] });
        assert_eq!(
            check.on_not_enrolled,
            Action::Goto {
                menu: "main".into()
            }
        );
        assert!(plan
            .fixed_texts("en")
            .contains(&"Say: my voice is my password.".to_string()));
    }

    #[test]
    fn verify_voice_mistakes_are_reported() {
        let d = diags(&routed(
            r#"[menus.m2]
prompt = "p"
[menus.m2.options]
1 = { verify_voice = { on_accept = "m2" } }
2 = { verify_voice = { phrase_text = "x", phrase_prompt = "y", on_accept = "m2", on_reject = "m2", on_not_enough = { verify_voice = { phrase_text = "again", on_accept = "m2", on_reject = "m2", on_not_enough = "m2" } } } }
3 = { verify_voice = { phrase_text = "x", on_accept = { goto = "m2", say = "hi" }, on_reject = "m3", on_not_enough = "m2", on_rejected = "m2" } }
4 = { verify_voice = "yes" }
5 = { play = "p", priority = 3, whisper = "hi" }
6 = { queue = "agents", priority = 1000 }
"#,
        ));
        one(
            &d,
            "has neither 'phrase_prompt' (prompt name(s)) nor 'phrase_text'",
        );
        one(&d, "option '1' of menu 'm2' has no 'on_reject'");
        one(&d, "option '1' of menu 'm2' has no 'on_not_enough'");
        one(&d, "has both 'phrase_prompt' and 'phrase_text'");
        one(&d, "is another 'verify_voice'");
        one(&d, "'say' does not apply to 'on_accept'");
        one(&d, "unknown menu 'm3'");
        one(&d, "unknown field 'on_rejected'");
        one(&d, "'verify_voice' must be a table");
        one(&d, "'priority' does not apply to 'play'");
        one(&d, "'whisper' does not apply to 'play'");
        one(&d, "'priority' must be between -100 and 100");
    }

    #[test]
    fn fast_lane_and_fraud_mistakes_are_reported() {
        let d = diags(&routed(
            r#"[[routes]]
when = "known"
action = { fast_lane = "agents", mode = "ofer", say = "?!", colour = "red" }
[[routes]]
when = "known"
action = "agents"
[fraud]
on_hit = "block"
"#,
        ));
        one(&d, "unknown fast lane mode 'ofer' (did you mean 'offer'?)");
        one(&d, "phrase '?!' has no words");
        one(&d, "unknown field 'colour' in the action of route 1");
        one(&d, "'action' must be a table");
        one(&d, "unknown 'on_hit' 'block'");
        // Offer-only fields with mode = "transfer" are warnings.
        let (_, warnings) = ok(&routed(
            "[[routes]]\nwhen = \"known\"\naction = { fast_lane = \"agents\", mode = \"transfer\", say = \"agent\" }\n[fraud]\non_hit = \"flag\"\n",
        ));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("no effect with mode"));
    }

    #[test]
    fn menus_reached_only_through_routing_are_reachable() {
        let (plan, warnings) = ok(&routed(
            r#"[menus.vip]
prompt = "p"
options.1 = { play = "q" }
[menus.sorry]
prompt = "p"
options.1 = { play = "q" }
[menus.secure]
prompt = "p"
options.1 = { play = "q" }
[menus.main.options.2]
verify_voice = { phrase_text = "x", on_accept = "secure", on_reject = "hangup", on_not_enough = "hangup" }
[[routes]]
when = "segment == 'vip'"
action = { goto = "vip" }
[queues.desk]
overflow = { text = "Busy.", then = "sorry" }
"#,
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        let order = plan.menus_by_distance();
        assert_eq!(order.first(), Some(&"main"));
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn reference_routing_example_in_the_docs_is_valid() {
        let doc = include_str!("../../docs/dialplan.md");
        let marker = "```toml\n# routing example\n";
        let start = doc.find(marker).expect("a routing example") + "```toml\n".len();
        let len = doc[start..].find("```").expect("closing fence");
        let (plan, warnings) = Dialplan::parse_str(
            Path::new("dialplans/bank.toml"),
            &doc[start..start + len],
            &AnyPrompt,
        )
        .unwrap_or_else(|e| panic!("docs routing example: {e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(!plan.routes().is_empty());
        assert!(plan.fraud().on_hit.is_some());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const DEMO: &str = include_str!("../../dialplans/demo-bank.toml");

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_text_never_panics(text in "\\PC{0,400}") {
                let _ = Dialplan::parse_str(Path::new(FILE), &text, &AnyPrompt);
            }

            #[test]
            fn tomlish_text_never_panics(text in "[\\[\\]{}=\"'.,#*a-z0-9_ \n\t-]{0,300}") {
                let _ = Dialplan::parse_str(Path::new(FILE), &text, &AnyPrompt);
            }

            #[test]
            fn mutated_demo_never_panics_and_errors_point_into_the_file(
                edits in proptest::collection::vec((0usize..2000, "[\\[\\]{}=\"'.,#*a-z0-9_ \n-]{0,6}", 0usize..8), 1..4)
            ) {
                let mut text = DEMO.to_string();
                for (pos, insert, delete) in edits {
                    let mut at = pos.min(text.len());
                    while !text.is_char_boundary(at) { at -= 1; }
                    let mut end = at.saturating_add(delete).min(text.len());
                    while !text.is_char_boundary(end) { end -= 1; }
                    text.replace_range(at..end, &insert);
                }
                let lines = text.lines().count().max(1) + 1;
                match Dialplan::parse_str(Path::new(FILE), &text, &AnyPrompt) {
                    Ok((plan, warnings)) => {
                        prop_assert!(plan.menu(plan.entry()).is_some());
                        for w in warnings { prop_assert!(w.line <= lines); }
                    }
                    Err(DialplanError::Invalid(d)) => {
                        prop_assert!(d.iter().any(|x| x.severity == Severity::Error));
                        for x in d { prop_assert!(x.line >= 1 && x.line <= lines && x.column >= 1, "{x}"); }
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
