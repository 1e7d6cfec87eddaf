//! The per-call IVR state machine (sans-IO).
//!
//! The shell feeds [`FlowEvent`]s and the current time, executes the returned
//! [`FlowAction`]s in order, and calls [`CallFlow::handle_timeout`] once
//! [`CallFlow::poll_timeout`] has passed. No clock is read and nothing is awaited here.
//!
//! Rules (documented for operators in `docs/dialplan.md`):
//! - A menu's prompt plays; its no-input timer starts when the prompt has finished.
//! - A key pressed during an interruptible prompt stops it (`StopPlayback`) and counts.
//!   During a play-only menu (greeting) it counts in the menu that follows. During a
//!   non-interruptible prompt keys are ignored: a prompt marked `barge_in = false` is one the
//!   caller must hear, and a key typed ahead of it could answer a question not yet asked.
//! - A key that a longer key extends waits the inter-digit timeout (or the terminator) before
//!   it is chosen; input that no key starts with is a no-match at once. The terminator on its
//!   own is ignored (callers often press `1#` out of habit when `1` is already final).
//! - No input and no match share one attempt counter per menu entry; at `max_attempts`
//!   failures the menu's final action runs.
//! - Answer prompts are played back to back with the prompt of the menu that follows, as one
//!   playback, and a key during them counts in that menu.
//!
//! Speech (when the dialplan has phrases):
//! - A menu whose options have phrases *listens*: a recognition turn opens (`Listen`) when its
//!   prompt starts if the prompt is interruptible, else when it ends, and closes
//!   (`StopListening`) before whatever the caller's input leads to. Never two turns at once.
//!   An interruptible play-only menu listens with the grammar of the menu it leads to, as
//!   keys during it count there.
//! - `SpeechStarted` during an interruptible prompt stops it (barge-in) and suspends the
//!   no-input timer until the transcript arrives (at most [`TRANSCRIPT_WAIT`]).
//! - A transcript matching an option with a score at or above `confidence` selects it; between
//!   `reject_below` and `confidence` the caller is asked "Did you say …?" (yes/no by voice or
//!   1/2); below, or matching nothing, it is a no-match. A "no" is a failed attempt that
//!   repeats the menu prompt. Speech and keys share the attempt counter.
//! - Say-anything: in the opening menus the grammar holds the phrases of every menu, and a
//!   phrase of another menu runs that menu's option as if the caller had navigated there.
//! - A key during a turn wins: the turn closes and the key counts as usual.
//!
//! Routing (the caller's profile, `[[routes]]`, queues, voiceprints, the watchlist):
//! - The shell reports the caller lookup with `CallerKnown` (before `Answered`; a later one
//!   is evaluated at the next safe point). At `Answered` the routes are checked in order, the
//!   first match wins: a fast lane offer plays its text once before the next menu prompt and
//!   from then on [`FAST_LANE_KEY`] or the fast lane phrases work in every menu; other route
//!   actions run at once (a `queue` route queues before the greeting).
//! - `Queue` hands the call to the ACD; the flow then waits for `Connected` (done) or
//!   `QueueUnavailable` (the queue's fallback: a message, a callback request or a voicemail).
//! - `verify_voice` asks for the passphrase (or reuses what the caller said), emits
//!   `VerifyVoice` and branches on `VoiceVerified`. Routes that read `voice` are checked again
//!   when the decision is known, routes that read `watchlist` when a hit arrives.
//! - A watchlist hit is recorded at once; `[fraud] on_hit` runs at the next *safe point*: a
//!   menu prompt that may be interrupted, or the flow waiting for input. Never during a
//!   passphrase prompt or check, a prompt that must be heard, or once queued.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ivr::caller::{CallerProfile, LookupStatus, VoiceDecision};
pub use crate::ivr::dialplan::UnavailableReason;
use crate::ivr::dialplan::{
    normalize_dtmf, Action, AnswerThen, Dialplan, FallbackKind, LocalText, Menu, MenuKind, Next,
    Phrases, RouteAction, SpeechSettings, Spoken, VoiceCheck, FAST_LANE_KEY, LABEL_PLACEHOLDER,
    MAX_WHISPER_CHARS, PRIORITY_NORMAL,
};
use crate::ivr::routing::{Facts, Field};
use crate::speech::intent::PhraseSet;

/// Longest wait for `VoiceVerified` after `VerifyVoice` before the check counts as not enough
/// speech (the shell listens up to its own limit, then scores).
pub const VOICE_VERIFY_WAIT: Duration = Duration::from_secs(30);
/// Words the caller must already have said in this call (all transcripts) before a voice
/// check uses that speech instead of asking for the passphrase.
pub const VOICE_REUSE_MIN_WORDS: usize = 6;
/// Added to a voicemail's length before the flow stops waiting for `VoicemailDone`.
pub const VOICEMAIL_GRACE: Duration = Duration::from_secs(10);
/// Reason added when the voiceprint is rejected.
pub const REASON_VOICE_REJECTED: &str = "voice_rejected";
/// Reason added when the watchlist matched.
pub const REASON_WATCHLIST: &str = "watchlist";
/// Watchlist hits kept per call, and characters kept of an entry or an agent name.
const MAX_WATCHLIST_HITS: usize = 16;
const MAX_NAME_CHARS: usize = 100;

/// Longest wait from `SpeechStarted` to its transcript before the turn counts as no input
/// (an utterance is cut at 10 s by the endpointer; recognition adds a little).
pub const TRANSCRIPT_WAIT: Duration = Duration::from_secs(15);
/// Transcript text beyond this many characters is ignored (matching and call records).
const MAX_TRANSCRIPT_CHARS: usize = 500;
/// Recogniser words beyond this many are ignored, and characters beyond this many in a word.
const MAX_TRANSCRIPT_WORDS: usize = 64;
const MAX_WORD_CHARS: usize = 64;

/// What the shell reports to the flow.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// The call is up; the flow starts in the dialplan's entry menu.
    Answered,
    /// A DTMF key (`0-9`, `*`, `#`, `A-D`; lower-case `a-d` is accepted).
    Digit(char),
    /// Playback `playback` played to its end (not sent for a stopped playback).
    PlaybackFinished { playback: u64 },
    /// The caller started talking during a recognition turn (the shell's VAD has applied its
    /// sustained-speech guard, so coughs and clicks do not count).
    SpeechStarted,
    /// The recogniser's final result for the current turn. `confidence` is the utterance's
    /// (0..1); `words` the per-word confidences when the recogniser gives them.
    Transcript {
        text: String,
        confidence: f32,
        words: Vec<(String, f32)>,
    },
    /// The recogniser ended the current turn without a result (nothing said, or nothing
    /// recognised). Counts as no input once the prompt has finished.
    SpeechTimeout,
    /// The caller hung up.
    Hangup,
    /// The caller lookup finished (send it before `Answered`: the routes are checked then).
    /// Only the first one counts.
    CallerKnown {
        profile: CallerProfile,
        status: LookupStatus,
    },
    /// The answer to `VerifyVoice`. `score` is the similarity the decision was based on.
    VoiceVerified {
        decision: VoiceDecision,
        score: Option<f32>,
    },
    /// The caller's number (or voice) matched the fraud watchlist; may come at any time.
    WatchlistHit { entry: String, score: f32 },
    /// The ACD bridged the queued call to `agent`; the IVR is done.
    Connected { agent: String },
    /// The queue cannot take the queued call; the flow runs the queue's fallback.
    QueueUnavailable { reason: UnavailableReason },
    /// The voicemail asked for with `RecordVoicemail` has ended (caller silent or limit).
    VoicemailDone,
}

/// Something to play: a recorded prompt (a name under `voice-prompts/`) or a text the shell
/// renders with TTS in the call's language ([`CallFlow::language`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PromptItem {
    Recorded(String),
    Text(String),
}

/// What the flow asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAction {
    /// Play the prompts back to back, then report `PlaybackFinished { playback }`.
    Play {
        playback: u64,
        prompts: Vec<PromptItem>,
        interruptible: bool,
    },
    /// Barge-in: stop the current playback at once (no `PlaybackFinished` for it).
    StopPlayback,
    /// Open a recognition turn: feed caller audio to the VAD (end of utterance after
    /// `end_silence`) and the recogniser, restricted to `grammar` (normalised phrases, last
    /// `"[unk]"` for speech outside it). Report `SpeechStarted`, then `Transcript` or
    /// `SpeechTimeout`. Never sent while a turn is open.
    Listen {
        grammar: Vec<String>,
        language: String,
        end_silence: Duration,
    },
    /// Close the turn: discard anything the recogniser still has for it.
    StopListening,
    /// Record the caller's number in the opt-out list and commit it before the next action.
    OptOut,
    /// Hand the call to `target`; the flow is finished.
    Transfer { target: String },
    /// End the call; the flow is finished.
    Hangup { cause: HangupCause },
    /// Put the call in the ACD queue `queue` (a `[queues.<name>]` of the dialplan). Higher
    /// `priority` is answered first. `reasons` are short tags for reports ("elderly", "vip",
    /// "voice_rejected", "watchlist"); `whisper` is what the agent is told before the call
    /// ("elderly caller, lost card"). Answer with `Connected` or `QueueUnavailable`; a
    /// `Hangup` while queued is an abandoned queue call.
    Queue {
        queue: String,
        priority: i32,
        reasons: Vec<String>,
        whisper: String,
    },
    /// Check the caller's voice against the voiceprint of `customer_id`. `ask_phrase`: the
    /// caller has just been asked for the passphrase, capture what they say now; `false`: use
    /// the speech already captured in this call. Answer with `VoiceVerified`. Nothing plays
    /// and no recognition turn is open meanwhile.
    VerifyVoice {
        customer_id: String,
        ask_phrase: bool,
    },
    /// Record a callback request for the caller's number for `queue` and commit it before
    /// the next action (the confirmation follows).
    RequestCallback { queue: String },
    /// Record the caller's message for `queue`, at most `max`; report `VoicemailDone` (or
    /// `Hangup`, which keeps the recording).
    RecordVoicemail { queue: String, max: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HangupCause {
    /// The dialplan ended the call (goodbye, `then = "hangup"`, after an opt-out).
    Normal,
    /// The caller used up a menu's attempts and its final action hung up.
    AttemptsExhausted,
}

/// How the call ended, as far as the IVR is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    InProgress,
    /// The dialplan hung up normally (set when the hangup is decided, so a caller who hangs up
    /// during the goodbye prompt still counts as completed).
    Completed,
    /// The caller hung up before the dialplan ended the call.
    Abandoned,
    /// The call was handed to this target (set when `Transfer` is emitted: a caller who hangs
    /// up during "please hold" abandoned the call).
    Transferred(String),
    /// The caller opted out (kept when they hang up or the call ends; a later transfer wins).
    OptedOut,
    /// A menu's attempts ran out and its final action hung up.
    AttemptsExhausted,
    /// Waiting in `queue` (set when `Queue` is emitted; replaced by what happens next).
    Queued {
        queue: String,
    },
    /// An agent of `queue` took the call.
    Connected {
        queue: String,
        agent: String,
    },
    /// The caller hung up while waiting in `queue`.
    QueueAbandoned {
        queue: String,
    },
    /// `queue` could not take the call and its fallback message ended it (kept if the
    /// fallback continues in a menu and the call ends there).
    QueueUnavailable {
        queue: String,
        reason: UnavailableReason,
    },
    /// `queue` was unavailable and the caller got a callback request.
    CallbackRequested {
        queue: String,
    },
    /// `queue` was unavailable and the caller was recorded (also when they hung up to end it).
    VoicemailLeft {
        queue: String,
    },
}

impl Outcome {
    /// The name in call records and logs. `InProgress` is "in-progress"; the live shell records
    /// a call that ends in progress as abandoned.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::InProgress => "in-progress",
            Outcome::Abandoned => "abandoned",
            Outcome::Completed => "completed",
            Outcome::Transferred(_) => "transfer",
            Outcome::OptedOut => "opted-out",
            Outcome::AttemptsExhausted => "attempts-exhausted",
            Outcome::Queued { .. } => "queued",
            Outcome::Connected { .. } => "agent",
            Outcome::QueueAbandoned { .. } => "queue-abandoned",
            Outcome::QueueUnavailable { .. } => "queue-unavailable",
            Outcome::CallbackRequested { .. } => "callback-requested",
            Outcome::VoicemailLeft { .. } => "voicemail",
        }
    }
}

/// A voiceprint decision as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceResult {
    pub decision: VoiceDecision,
    pub score: Option<f32>,
}

/// A watchlist hit as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchlistMatch {
    /// The watchlist entry (at most 100 characters).
    pub entry: String,
    pub score: f32,
}

/// One transcript the flow received, for call records.
#[derive(Debug, Clone, PartialEq)]
pub struct SpokenInput {
    /// The menu the caller was in (a greeting when they spoke over it).
    pub menu: String,
    /// What the recogniser heard (at most 500 characters).
    pub text: String,
    /// The recogniser's confidence for the utterance, 0..1.
    pub confidence: f32,
    /// What it was taken as: `"<menu>:<key>"` for an option, `"<menu>:<label>"` for an
    /// answer, `"yes"`/`"no"` in a confirmation; `None` when nothing matched well enough.
    pub matched: Option<String>,
    /// The match score compared with the thresholds (0 when nothing matched).
    pub score: f32,
}

/// What happened in one call, for call records and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    /// Menus entered, in order, repeats included (a re-prompt is not a new entry). A menu
    /// where the caller chose by voice reads `"main(voice:lost card)"` (the option's label);
    /// a say-anything jump adds the target menu that way.
    pub path: Vec<String>,
    /// Every key pressed between answer and the end of the flow, in order, including keys
    /// ignored during non-interruptible prompts.
    pub digits: String,
    /// Every transcript received during a recognition turn, in order.
    pub transcripts: Vec<SpokenInput>,
    pub outcome: Outcome,
    /// The menu the caller was in last (`None` before the call is answered).
    pub final_menu: Option<String>,
    /// The caller as the lookup found them (default: unknown).
    pub caller: CallerProfile,
    /// How the lookup ended; `None` when the shell never reported one.
    pub lookup: Option<LookupStatus>,
    /// The `reason` of every route applied, in order.
    pub routes: Vec<String>,
    /// Every reason the queue actions carried or would carry (routes, "voice_rejected",
    /// "watchlist"), each once, in order.
    pub reasons: Vec<String>,
    /// The last voiceprint decision.
    pub voice: Option<VoiceResult>,
    /// Watchlist hits, in order (at most 16).
    pub watchlist: Vec<WatchlistMatch>,
    /// Every queue the call was put in, in order.
    pub queued: Vec<String>,
    /// A callback was requested (a queue's fallback).
    pub callback_requested: bool,
}

/// What to do when the current playback finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum After {
    /// Wait for keys in the current menu (start the no-input timer).
    Input,
    /// Continue from a play-only menu.
    Continue(Next),
    Hangup(HangupCause),
    Transfer(String),
    /// Put the call in a queue ("please hold" came first).
    Queue(QueueRequest),
    /// The passphrase prompt ended: verify now.
    Verify,
    /// The voicemail invitation ended: record now.
    Voicemail {
        queue: String,
        max: Duration,
        then: Next,
    },
}

/// A queue action waiting for its hold prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueRequest {
    queue: String,
    priority: i32,
    /// The option's own `whisper`.
    whisper: Option<String>,
}

/// The fast lane once offered.
#[derive(Debug, Clone)]
struct FastLane {
    queue: String,
    priority: i32,
    prompts: Vec<String>,
    phrases: Phrases,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NotAnswered,
    Playing {
        playback: u64,
        interruptible: bool,
        after: After,
    },
    /// Prompt finished, no key yet.
    Waiting {
        deadline: Instant,
    },
    /// Some digits of a multi-digit key.
    Collecting {
        input: String,
        deadline: Instant,
    },
    /// The caller is talking; the transcript is due by `deadline`.
    Hearing {
        deadline: Instant,
    },
    /// `Queue` was emitted; waiting for `Connected` or `QueueUnavailable`.
    Queued {
        queue: String,
    },
    /// `VerifyVoice` was emitted; `VoiceVerified` is due by `deadline`.
    Verifying {
        deadline: Instant,
        asked: bool,
    },
    /// `RecordVoicemail` was emitted; `VoicemailDone` is due by `deadline`.
    Voicemail {
        queue: String,
        deadline: Instant,
        then: Next,
    },
    Finished,
}

/// The result of one key in a menu.
enum Press {
    Ignore,
    Collect(String),
    /// The action and the chosen option's label (for the agent's whisper).
    Select(Action, Option<String>),
    NoMatch,
}

#[derive(Clone, Copy)]
enum Failure {
    NoInput,
    NoMatch,
    /// The caller said "no" to a confirmation: the menu prompt again, without apology.
    Denied,
}

/// What a voice target runs.
#[derive(Debug, Clone)]
enum Choice {
    Key(String),
    Answer(usize),
    /// The fast lane's phrases.
    FastLane,
}

/// An option or answer that a phrase selects.
#[derive(Debug, Clone)]
struct VoiceTarget {
    menu: String,
    choice: Choice,
    /// Its name for the caller (confirmation, path).
    label: String,
}

impl VoiceTarget {
    fn id(&self) -> String {
        match &self.choice {
            Choice::Key(key) => format!("{}:{key}", self.menu),
            Choice::Answer(_) => format!("{}:{}", self.menu, self.label),
            Choice::FastLane => format!("{}:fast_lane", self.menu),
        }
    }
}

/// An open recognition turn.
#[derive(Debug)]
struct Turn {
    /// Play-only menus the caller is skipping (speaking over a greeting), ending with the
    /// menu with options whose grammar this is; empty when the caller is in that menu.
    chain: Vec<String>,
    /// Phrases; option ids are indexes into `targets` (or "yes"/"no" when confirming).
    set: PhraseSet,
    targets: Vec<VoiceTarget>,
}

/// How a transcript is taken.
enum Heard {
    Select(VoiceTarget),
    Confirm(VoiceTarget),
    Yes(VoiceTarget),
    Failed(Failure),
}

/// One call's walk through a dialplan.
#[derive(Debug)]
pub struct CallFlow {
    dialplan: Arc<Dialplan>,
    state: State,
    /// Current menu name (valid once answered).
    menu: String,
    /// Failed attempts since the current menu was entered.
    failures: u32,
    last_playback: u64,
    record: FlowRecord,
    /// The call language for grammars and texts.
    language: String,
    /// The open recognition turn.
    turn: Option<Turn>,
    /// The option a confirmation question is about, until it is answered.
    confirming: Option<VoiceTarget>,
    /// Menus whose grammar holds every menu's phrases (say-anything), and every menu nearest
    /// the entry first (which menu's phrase wins when two menus share one).
    opening: Vec<String>,
    by_distance: Vec<String>,
    /// The time of the event being handled (for deadlines set deep in an action).
    now: Option<Instant>,
    /// The fast lane, once a route offered it.
    fast_lane: Option<FastLane>,
    /// The offer text, until it has been played before a menu prompt.
    offer_pending: Option<LocalText>,
    /// Indexes of the routes already applied (each applies once per call).
    applied_routes: Vec<usize>,
    /// A late `CallerKnown`: check every route at the next safe point.
    routes_due: bool,
    /// A watchlist hit: check the routes that read `watchlist` at the next safe point.
    watchlist_due: bool,
    /// A watchlist hit with `[fraud] on_hit` set: run it at the next safe point.
    fraud_due: bool,
    fraud_done: bool,
    /// The voice check under way.
    check: Option<Box<VoiceCheck>>,
    /// What the agent is told for each reason, in the order of `record.reasons`.
    reason_whispers: Vec<String>,
    /// The label of the last option or answer chosen that was not itself a queue/transfer.
    topic: Option<String>,
    /// The label of the queue/transfer option just chosen.
    queue_label: Option<String>,
}

impl CallFlow {
    pub fn new(dialplan: Arc<Dialplan>) -> Self {
        let language = dialplan.language().to_string();
        let say_anything = dialplan.speech().is_some_and(|s| s.say_anything);
        let opening = if say_anything {
            dialplan
                .opening_menus()
                .into_iter()
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let by_distance = dialplan
            .menus_by_distance()
            .into_iter()
            .map(str::to_string)
            .collect();
        CallFlow {
            dialplan,
            state: State::NotAnswered,
            menu: String::new(),
            failures: 0,
            last_playback: 0,
            record: FlowRecord {
                path: Vec::new(),
                digits: String::new(),
                transcripts: Vec::new(),
                outcome: Outcome::InProgress,
                final_menu: None,
                caller: CallerProfile::default(),
                lookup: None,
                routes: Vec::new(),
                reasons: Vec::new(),
                voice: None,
                watchlist: Vec::new(),
                queued: Vec::new(),
                callback_requested: false,
            },
            language,
            turn: None,
            confirming: None,
            opening,
            by_distance,
            now: None,
            fast_lane: None,
            offer_pending: None,
            applied_routes: Vec::new(),
            routes_due: false,
            watchlist_due: false,
            fraud_due: false,
            fraud_done: false,
            check: None,
            reason_whispers: Vec::new(),
            topic: None,
            queue_label: None,
        }
    }

    /// The call language (grammars, TTS texts): the dialplan's `[speech] language` unless
    /// [`CallFlow::set_language`] changed it.
    pub fn language(&self) -> &str {
        &self.language
    }

    /// Switches the call language (e.g. chosen by the dialled number) for turns and texts
    /// from now on; phrases and texts missing in it fall back to the dialplan's language for
    /// texts, and leave options without phrases in it to keys. Unknown codes are ignored.
    pub fn set_language(&mut self, language: &str) {
        if crate::ivr::dialplan::LANGUAGES.contains(&language) {
            self.language = language.to_string();
        }
    }

    pub fn handle(&mut self, event: FlowEvent, now: Instant) -> Vec<FlowAction> {
        if self.state == State::Finished {
            return Vec::new();
        }
        self.now = Some(now);
        let mut actions = self.handle_event(event, now);
        self.safe_point(&mut actions);
        actions
    }

    fn handle_event(&mut self, event: FlowEvent, now: Instant) -> Vec<FlowAction> {
        match event {
            FlowEvent::Answered => {
                if self.state != State::NotAnswered {
                    return Vec::new();
                }
                // Every route sees the lookup and any hit so far.
                self.routes_due = false;
                self.watchlist_due = false;
                if let Some(actions) = self.match_route(None).and_then(|r| self.apply_route(r)) {
                    return actions;
                }
                // A hit before the answer: the fraud action instead of the greeting.
                if std::mem::take(&mut self.fraud_due) {
                    self.fraud_done = true;
                    if let Some(action) = self.dialplan.fraud().on_hit.clone() {
                        return self.run_action(action, false);
                    }
                }
                let entry = self.dialplan.entry().to_string();
                self.enter_menu(&entry, Vec::new(), None)
            }
            FlowEvent::Hangup => {
                match &self.state {
                    State::Queued { queue } => {
                        self.record.outcome = Outcome::QueueAbandoned {
                            queue: queue.clone(),
                        }
                    }
                    State::Voicemail { queue, .. } => {
                        self.record.outcome = Outcome::VoicemailLeft {
                            queue: queue.clone(),
                        }
                    }
                    _ if self.record.outcome == Outcome::InProgress => {
                        self.record.outcome = Outcome::Abandoned;
                    }
                    _ => {}
                }
                // The shell tears the call down; no StopListening is owed.
                self.turn = None;
                self.confirming = None;
                self.state = State::Finished;
                Vec::new()
            }
            FlowEvent::PlaybackFinished { playback } => match &self.state {
                State::Playing {
                    playback: current,
                    after,
                    ..
                } if *current == playback => {
                    let after = after.clone();
                    self.after_playback(after, now)
                }
                _ => Vec::new(), // stale or stopped playback
            },
            FlowEvent::Digit(c) => {
                let Some(digit) = normalize_dtmf(c) else {
                    return Vec::new();
                };
                if self.state == State::NotAnswered {
                    return Vec::new();
                }
                self.record.digits.push(digit);
                if self.confirming.is_some() && self.turn.is_some() {
                    return self.confirm_digit(digit);
                }
                self.digit(digit, now)
            }
            FlowEvent::SpeechStarted => self.speech_started(now),
            FlowEvent::Transcript {
                text,
                confidence,
                words,
            } => self.transcript(&text, confidence, words),
            FlowEvent::SpeechTimeout => match self.state {
                State::Waiting { .. } | State::Hearing { .. } if self.turn.is_some() => {
                    self.speech_failed(Failure::NoInput)
                }
                // During the prompt the flow's own timer has not started; it decides.
                _ => Vec::new(),
            },
            FlowEvent::CallerKnown { profile, status } => {
                if self.record.lookup.is_none() {
                    self.record.caller = profile;
                    self.record.lookup = Some(status);
                    // Before the answer the routes wait for it; after, a late lookup still
                    // routes the caller unless a route already did.
                    self.routes_due =
                        self.state != State::NotAnswered && self.applied_routes.is_empty();
                }
                Vec::new()
            }
            FlowEvent::WatchlistHit { entry, score } => {
                if self.record.watchlist.len() < MAX_WATCHLIST_HITS {
                    self.record.watchlist.push(WatchlistMatch {
                        entry: entry.chars().take(MAX_NAME_CHARS).collect(),
                        score: if score.is_finite() { score } else { 0.0 },
                    });
                }
                self.add_reason(REASON_WATCHLIST, "watchlist match");
                self.watchlist_due = true;
                self.fraud_due = self.dialplan.fraud().on_hit.is_some() && !self.fraud_done;
                Vec::new()
            }
            FlowEvent::VoiceVerified { decision, score } => match self.state {
                State::Verifying { asked, .. } => {
                    let score = score.filter(|s| s.is_finite());
                    self.voice_answer(decision, score, asked)
                }
                _ => Vec::new(),
            },
            FlowEvent::Connected { agent } => match &self.state {
                State::Queued { queue } => {
                    self.record.outcome = Outcome::Connected {
                        queue: queue.clone(),
                        agent: agent.chars().take(MAX_NAME_CHARS).collect(),
                    };
                    self.state = State::Finished;
                    Vec::new()
                }
                _ => Vec::new(),
            },
            FlowEvent::QueueUnavailable { reason } => match &self.state {
                State::Queued { queue } => {
                    let queue = queue.clone();
                    self.queue_fallback(queue, reason, now)
                }
                _ => Vec::new(),
            },
            FlowEvent::VoicemailDone => match &self.state {
                State::Voicemail { queue, then, .. } => {
                    let (queue, then) = (queue.clone(), then.clone());
                    self.voicemail_done(queue, then)
                }
                _ => Vec::new(),
            },
        }
    }

    /// Runs an expired no-input, inter-digit or transcript timer; does nothing before
    /// `poll_timeout()`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<FlowAction> {
        if self.state == State::Finished {
            return Vec::new();
        }
        self.now = Some(now);
        let mut actions = self.timeout(now);
        self.safe_point(&mut actions);
        actions
    }

    fn timeout(&mut self, now: Instant) -> Vec<FlowAction> {
        match &self.state {
            State::Waiting { deadline } | State::Hearing { deadline } if now >= *deadline => {
                if self.turn.is_some() {
                    self.speech_failed(Failure::NoInput)
                } else {
                    self.fail(Failure::NoInput)
                }
            }
            State::Collecting { input, deadline } if now >= *deadline => {
                let chosen = self
                    .current_menu()
                    .and_then(|m| self.exact_option(m, input));
                match chosen {
                    Some((action, label)) => self.select(action, label),
                    None => self.fail(Failure::NoMatch),
                }
            }
            State::Verifying { deadline, asked } if now >= *deadline => {
                let asked = *asked;
                self.voice_answer(VoiceDecision::NotEnoughSpeech, None, asked)
            }
            State::Voicemail {
                queue,
                deadline,
                then,
            } if now >= *deadline => {
                let (queue, then) = (queue.clone(), then.clone());
                self.voicemail_done(queue, then)
            }
            _ => Vec::new(),
        }
    }

    /// When `handle_timeout` should next be called, if a timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { deadline }
            | State::Collecting { deadline, .. }
            | State::Hearing { deadline }
            | State::Verifying { deadline, .. }
            | State::Voicemail { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// True while the call waits in a queue (between `Queue` and `Connected`,
    /// `QueueUnavailable` or `Hangup`); no timer runs then, the ACD decides.
    pub fn is_queued(&self) -> bool {
        matches!(self.state, State::Queued { .. })
    }

    pub fn record(&self) -> &FlowRecord {
        &self.record
    }

    /// True once the flow has emitted `Transfer` or `Hangup`, got `Connected`, or the caller
    /// hung up.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// True while a recognition turn is open (between `Listen` and `StopListening`).
    pub fn is_listening(&self) -> bool {
        self.turn.is_some()
    }

    fn current_menu(&self) -> Option<&Menu> {
        self.dialplan.menu(&self.menu)
    }

    fn speech(&self) -> Option<&SpeechSettings> {
        self.dialplan.speech()
    }

    fn digit(&mut self, digit: char, now: Instant) -> Vec<FlowAction> {
        let (input, barge_in) = match &self.state {
            State::Playing {
                interruptible: true,
                after: After::Input,
                ..
            } => (String::new(), true),
            State::Playing {
                interruptible: true,
                after: After::Continue(Next::Menu(next)),
                ..
            } => {
                let next = next.clone();
                return self.barge_into_next(next, digit, true, now);
            }
            State::Hearing { .. } => {
                // Speaking over a greeting, then pressing a key: it counts where the
                // greeting leads, as during the greeting.
                if let Some(next) = self.turn.as_ref().and_then(|t| t.chain.first()).cloned() {
                    return self.barge_into_next(next, digit, false, now);
                }
                (String::new(), false)
            }
            State::Waiting { .. } => (String::new(), false),
            State::Collecting { input, .. } => (input.clone(), false),
            // Not interruptible, not answered or finished: the key is ignored.
            _ => return Vec::new(),
        };
        let press = self.press(&self.menu, &input, digit);
        if matches!(press, Press::Ignore) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if barge_in {
            actions.push(FlowAction::StopPlayback);
        }
        self.close_turn(&mut actions);
        actions.extend(self.apply(press, now));
        actions
    }

    /// A key during a play-only menu: skip it (and any interruptible play-only menus after
    /// it) and let the key count in the first menu with options.
    fn barge_into_next(
        &mut self,
        next: String,
        digit: char,
        stop_playback: bool,
        now: Instant,
    ) -> Vec<FlowAction> {
        let (chain, target_has_options) = self.chain_from(next);
        let mut chain = chain;
        let Some(target) = chain.pop() else {
            return Vec::new();
        };
        let press = if target_has_options {
            self.press(&target, "", digit)
        } else {
            // The chain ends in a prompt that must be heard: the key only skips up to it.
            Press::NoMatch
        };
        if matches!(press, Press::Ignore) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if stop_playback {
            actions.push(FlowAction::StopPlayback);
        }
        self.close_turn(&mut actions);
        for skipped in &chain {
            self.note_entry(skipped, None);
        }
        if target_has_options {
            self.note_entry(&target, None);
            actions.extend(self.apply(press, now));
        } else {
            actions.extend(self.enter_menu(&target, Vec::new(), None));
        }
        actions
    }

    /// The menus from `next` on that a caller skipping play-only menus passes: through
    /// interruptible play-only menus up to the first menu with options (then true) or up to
    /// one that must be heard (then false). Bounded, so a loop of greetings cannot spin.
    fn chain_from(&self, next: String) -> (Vec<String>, bool) {
        let mut chain = vec![next];
        for _ in 0..=self.dialplan.menus().count() {
            let Some(menu) = chain.last().and_then(|name| self.dialplan.menu(name)) else {
                break;
            };
            match &menu.kind {
                MenuKind::Choice { .. } => return (chain, true),
                MenuKind::Announcement {
                    next: Next::Menu(following),
                } if menu.barge_in => {
                    let following = following.clone();
                    chain.push(following);
                }
                MenuKind::Announcement { .. } => break,
            }
        }
        (chain, false)
    }

    /// What `digit` does in menu `menu_name` after `input` was collected.
    fn press(&self, menu_name: &str, input: &str, digit: char) -> Press {
        let Some(menu) = self.dialplan.menu(menu_name) else {
            return Press::NoMatch;
        };
        if menu.terminator == Some(digit) {
            if input.is_empty() {
                return Press::Ignore;
            }
            return match self.exact_option(menu, input) {
                Some((action, label)) => Press::Select(action, label),
                None => Press::NoMatch,
            };
        }
        let mut input = input.to_string();
        input.push(digit);
        let longer = menu.lookup(&input).longer;
        match (self.exact_option(menu, &input), longer) {
            (_, true) => Press::Collect(input),
            (Some((action, label)), false) => Press::Select(action, label),
            (None, false) => Press::NoMatch,
        }
    }

    /// The action (and option label) `input` chooses in `menu`: the fast lane's key once it
    /// was offered, else the menu's option.
    fn exact_option(&self, menu: &Menu, input: &str) -> Option<(Action, Option<String>)> {
        if input == FAST_LANE_KEY {
            if let Some(action) = self.fast_lane_action() {
                return Some((action, None));
            }
        }
        let option = menu.lookup(input).exact?;
        let label = option.label(&self.language, self.dialplan.language());
        Some((option.action.clone(), label))
    }

    fn fast_lane_action(&self) -> Option<Action> {
        self.fast_lane.as_ref().map(|f| Action::Queue {
            queue: f.queue.clone(),
            priority: Some(f.priority),
            prompts: f.prompts.clone(),
            whisper: None,
        })
    }

    /// Runs a chosen option, remembering its label for the agent's whisper.
    fn select(&mut self, action: Action, label: Option<String>) -> Vec<FlowAction> {
        match &action {
            Action::Queue { .. } | Action::Transfer { .. } => self.queue_label = label,
            _ => {
                if label.is_some() {
                    self.topic = label;
                }
            }
        }
        self.run_action(action, false)
    }

    fn apply(&mut self, press: Press, now: Instant) -> Vec<FlowAction> {
        match press {
            Press::Ignore => Vec::new(),
            Press::Collect(input) => {
                let wait = self
                    .current_menu()
                    .map_or(Duration::ZERO, |m| m.inter_digit_timeout);
                self.state = State::Collecting {
                    input,
                    deadline: deadline(now, wait),
                };
                Vec::new()
            }
            Press::Select(action, label) => self.select(action, label),
            Press::NoMatch => self.fail(Failure::NoMatch),
        }
    }

    // --- speech -----------------------------------------------------------------------------

    fn speech_started(&mut self, now: Instant) -> Vec<FlowAction> {
        if self.turn.is_none() {
            return Vec::new(); // no turn open: a late report from a closed one
        }
        let hearing = State::Hearing {
            deadline: deadline(now, TRANSCRIPT_WAIT),
        };
        match self.state {
            State::Playing {
                interruptible: true,
                ..
            } => {
                self.state = hearing;
                vec![FlowAction::StopPlayback]
            }
            State::Waiting { .. } => {
                self.state = hearing;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn transcript(
        &mut self,
        text: &str,
        confidence: f32,
        words: Vec<(String, f32)>,
    ) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        match self.state {
            _ if self.turn.is_none() => return actions,
            // Without a SpeechStarted first (the shell's VAD missed the onset): barge in now.
            State::Playing {
                interruptible: true,
                ..
            } => actions.push(FlowAction::StopPlayback),
            State::Waiting { .. } | State::Hearing { .. } => {}
            _ => return actions,
        }
        let Some(turn) = self.turn.take() else {
            return actions;
        };
        actions.push(FlowAction::StopListening);
        let confirming = self.confirming.take();

        let text: String = text.chars().take(MAX_TRANSCRIPT_CHARS).collect();
        let confidence = if confidence.is_nan() {
            0.0
        } else {
            confidence.clamp(0.0, 1.0)
        };
        let mut words: Vec<(String, f32)> = words
            .into_iter()
            .take(MAX_TRANSCRIPT_WORDS)
            .map(|(w, c)| (w.chars().take(MAX_WORD_CHARS).collect(), c))
            .collect();
        if words.is_empty() {
            // No per-word confidences: every word gets the utterance's.
            words = text
                .split_whitespace()
                .take(MAX_TRANSCRIPT_WORDS)
                .map(|w| (w.to_string(), confidence))
                .collect();
        }
        let (accept, reject) = self
            .speech()
            .map_or((1.0, 1.0), |s| (s.confidence, s.reject_below));
        let found = turn.set.match_transcript(&text, &words);
        let score = found.as_ref().map_or(0.0, |m| m.score);
        let silent = text.trim().is_empty() && words.is_empty();
        let heard = match (found, confirming) {
            _ if silent => Heard::Failed(Failure::NoInput),
            (Some(m), Some(target)) if score >= reject => match m.option.as_str() {
                "yes" => Heard::Yes(target),
                _ => Heard::Failed(Failure::Denied),
            },
            (_, Some(_)) => Heard::Failed(Failure::NoMatch),
            (Some(m), None) if score >= reject => {
                match m
                    .option
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| turn.targets.get(i))
                {
                    Some(target) if score >= accept => Heard::Select(target.clone()),
                    Some(target) => Heard::Confirm(target.clone()),
                    None => Heard::Failed(Failure::NoMatch),
                }
            }
            (_, None) => Heard::Failed(Failure::NoMatch),
        };
        let matched = match &heard {
            Heard::Select(t) | Heard::Confirm(t) => Some(t.id()),
            Heard::Yes(_) => Some("yes".to_string()),
            Heard::Failed(Failure::Denied) => Some("no".to_string()),
            Heard::Failed(_) => None,
        };
        self.record.transcripts.push(SpokenInput {
            menu: self.menu.clone(),
            text,
            confidence,
            matched,
            score,
        });
        match heard {
            Heard::Select(target) | Heard::Yes(target) => {
                actions.extend(self.select_by_voice(&turn.chain, target))
            }
            Heard::Confirm(target) => {
                self.enter_chain(&turn.chain);
                actions.extend(self.ask_confirmation(target));
            }
            Heard::Failed(failure) => {
                self.enter_chain(&turn.chain);
                actions.extend(self.fail(failure));
            }
        }
        actions
    }

    /// A key while a confirmation is open: 1 is yes, 2 is no, anything else no match.
    fn confirm_digit(&mut self, digit: char) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        match self.state {
            State::Playing {
                interruptible: true,
                ..
            } => actions.push(FlowAction::StopPlayback),
            State::Waiting { .. } | State::Hearing { .. } => {}
            _ => return actions, // a confirmation that must be heard ignores keys
        }
        let Some(target) = self.close_turn(&mut actions) else {
            return actions;
        };
        actions.extend(match digit {
            '1' => self.select_by_voice(&[], target),
            '2' => self.fail(Failure::Denied),
            _ => self.fail(Failure::NoMatch),
        });
        actions
    }

    /// The turn ended without a selection (silence, or a missing transcript).
    fn speech_failed(&mut self, failure: Failure) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        let chain = self
            .turn
            .as_ref()
            .map(|t| t.chain.clone())
            .unwrap_or_default();
        self.close_turn(&mut actions);
        self.enter_chain(&chain);
        actions.extend(self.fail(failure));
        actions
    }

    /// Notes the menus of a greeting's chain as entered (the caller spoke over them).
    fn enter_chain(&mut self, chain: &[String]) {
        for name in chain {
            self.note_entry(name, None);
        }
    }

    /// Runs a voice selection, marking it in the path: the current menu's entry when the
    /// option is there, else an entry for the option's menu (a say-anything jump).
    fn select_by_voice(&mut self, chain: &[String], target: VoiceTarget) -> Vec<FlowAction> {
        let mark = format!("{}(voice:{})", target.menu, target.label);
        // Play-only menus spoken over are entered; the chain's menu with options only if the
        // option is there (a jump elsewhere goes straight to the option's menu).
        if let Some((_, skipped)) = chain.split_last() {
            self.enter_chain(skipped);
        }
        if chain.is_empty() && target.menu == self.menu {
            if let Some(last) = self.record.path.last_mut() {
                *last = mark;
            }
        } else {
            self.note_entry(&target.menu, Some(mark));
        }
        let Some(menu) = self.dialplan.menu(&target.menu) else {
            return self.hangup_now(HangupCause::Normal);
        };
        match target.choice {
            Choice::Key(key) => match menu.lookup(&key).exact {
                Some(option) => {
                    let action = option.action.clone();
                    self.select(action, Some(target.label))
                }
                None => self.fail(Failure::NoMatch),
            },
            Choice::FastLane => match self.fast_lane_action() {
                Some(action) => self.select(action, None),
                None => self.fail(Failure::NoMatch),
            },
            Choice::Answer(index) => {
                let Some(answer) = menu.answers.get(index) else {
                    return self.fail(Failure::NoMatch);
                };
                self.topic = Some(target.label.clone());
                let reply = self.spoken(&answer.reply);
                let instead = match answer.then {
                    AnswerThen::Menu => None,
                    AnswerThen::AnythingElse => menu.anything_else.as_ref().map(|s| self.spoken(s)),
                };
                let name = target.menu.clone();
                self.enter_menu(&name, reply, instead)
            }
        }
    }

    /// "Did you say …?": plays the question and opens a yes/no turn.
    fn ask_confirmation(&mut self, target: VoiceTarget) -> Vec<FlowAction> {
        let fallback = self.dialplan.language();
        let question = self
            .speech()
            .and_then(|s| s.confirm_text.get(&self.language, fallback))
            .unwrap_or(crate::ivr::dialplan::DEFAULT_CONFIRM_TEXT)
            .replace(LABEL_PLACEHOLDER, &target.label);
        let barge_in = self.current_menu().is_none_or(|m| m.barge_in);
        self.confirming = Some(target);
        self.play(vec![PromptItem::Text(question)], barge_in, After::Input)
    }

    /// Opens a recognition turn for input in the current menu (`after` is `Input`) or in the
    /// menu a play-only menu leads to; nothing when that menu has no phrases.
    fn open_turn(&mut self, after: &After) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn_keeping_confirmation(&mut actions);
        let Some(speech) = self.speech() else {
            return actions;
        };
        let (owner, chain) = match after {
            After::Input => (self.menu.clone(), Vec::new()),
            After::Continue(Next::Menu(next)) => match self.chain_from(next.clone()) {
                (chain, true) => match chain.last() {
                    Some(owner) => (owner.clone(), chain),
                    None => return actions,
                },
                _ => return actions,
            },
            _ => return actions,
        };
        let language = self.language.clone();
        let end_silence = speech.end_silence;
        let turn = if self.confirming.is_some() {
            self.confirmation_turn()
        } else {
            self.menu_turn(&owner, chain)
        };
        if let Some(turn) = turn {
            let (grammar, _) = turn.set.grammar(|_| true);
            self.turn = Some(turn);
            actions.push(FlowAction::Listen {
                grammar,
                language,
                end_silence,
            });
        }
        actions
    }

    /// The grammar of menu `owner`: its options and answers, then (say-anything) those of
    /// every other menu, nearest the entry first; a phrase already taken stays with the
    /// first. Options that only lead back to `owner` are left out of the others.
    fn menu_turn(&self, owner: &str, chain: Vec<String>) -> Option<Turn> {
        let menu = self.dialplan.menu(owner)?;
        let mut turn = Turn {
            chain,
            set: PhraseSet::new(),
            targets: Vec::new(),
        };
        // The fast lane first: its phrases win over a menu's own ("agent").
        if let Some(phrases) = self
            .fast_lane
            .as_ref()
            .and_then(|f| f.phrases.get(&self.language))
        {
            let target = VoiceTarget {
                menu: owner.to_string(),
                choice: Choice::FastLane,
                label: phrases.first().cloned().unwrap_or_default(),
            };
            add_target(&mut turn, phrases, target);
        }
        self.add_voice_targets(menu, None, &mut turn);
        if self.opening.iter().any(|m| m == owner) {
            for name in &self.by_distance {
                if name == owner {
                    continue;
                }
                if let Some(other) = self.dialplan.menu(name) {
                    self.add_voice_targets(other, Some(owner), &mut turn);
                }
            }
        }
        (!turn.targets.is_empty()).then_some(turn)
    }

    fn add_voice_targets(&self, menu: &Menu, owner: Option<&str>, turn: &mut Turn) {
        let fallback = self.dialplan.language();
        for option in menu.options() {
            let back_to_owner = matches!(
                (&option.action, owner),
                (Action::Goto { menu: to }, Some(owner)) if to == owner
            );
            let Some(phrases) = option.phrases.get(&self.language) else {
                continue;
            };
            if back_to_owner {
                continue;
            }
            let target = VoiceTarget {
                menu: menu.name.clone(),
                choice: Choice::Key(option.key.clone()),
                label: option
                    .label(&self.language, fallback)
                    .unwrap_or_else(|| option.key.clone()),
            };
            add_target(turn, phrases, target);
        }
        for (index, answer) in menu.answers.iter().enumerate() {
            let Some(phrases) = answer.phrases.get(&self.language) else {
                continue;
            };
            let target = VoiceTarget {
                menu: menu.name.clone(),
                choice: Choice::Answer(index),
                label: answer
                    .label(&self.language, fallback)
                    .unwrap_or_else(|| format!("answer {}", index.saturating_add(1))),
            };
            add_target(turn, phrases, target);
        }
    }

    /// The yes/no grammar of a confirmation.
    fn confirmation_turn(&self) -> Option<Turn> {
        let speech = self.speech()?;
        let fallback = self.dialplan.language();
        let mut set = PhraseSet::new();
        for (id, replies) in [("yes", &speech.yes), ("no", &speech.no)] {
            let list = replies
                .get(&self.language)
                .or_else(|| replies.get(fallback))?;
            for reply in list {
                let _ = set.add(id, reply); // validated when loaded
            }
        }
        Some(Turn {
            chain: Vec::new(),
            set,
            targets: Vec::new(),
        })
    }

    /// Closes the open turn (emitting `StopListening`) and ends any confirmation; returns
    /// the option that was being confirmed.
    fn close_turn(&mut self, actions: &mut Vec<FlowAction>) -> Option<VoiceTarget> {
        self.close_turn_keeping_confirmation(actions);
        self.confirming.take()
    }

    fn close_turn_keeping_confirmation(&mut self, actions: &mut Vec<FlowAction>) {
        if self.turn.take().is_some() {
            actions.push(FlowAction::StopListening);
        }
    }

    /// Prompt items for something said: recorded prompts, or a text in the call language.
    fn spoken(&self, spoken: &Spoken) -> Vec<PromptItem> {
        match spoken {
            Spoken::Prompts(names) => recorded(names),
            Spoken::Text(text) => text
                .get(&self.language, self.dialplan.language())
                .map(|t| vec![PromptItem::Text(t.to_string())])
                .unwrap_or_default(),
        }
    }

    // --- menus and actions ------------------------------------------------------------------

    /// Counts a failed attempt; re-prompts, or runs the final action at `max_attempts`.
    fn fail(&mut self, failure: Failure) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        let Some(menu) = self.current_menu() else {
            actions.extend(self.hangup_now(HangupCause::Normal));
            return actions;
        };
        let max_attempts = menu.max_attempts;
        let final_action = menu.final_action.clone();
        let barge_in = menu.barge_in;
        let mut prompts = match failure {
            Failure::NoInput => recorded(&menu.no_input_prompts),
            Failure::NoMatch => recorded(&menu.no_match_prompts),
            Failure::Denied => Vec::new(),
        };
        prompts.extend(recorded(&menu.prompts));
        self.failures = self.failures.saturating_add(1);
        if self.failures >= max_attempts {
            actions.extend(self.run_action(final_action, true));
        } else {
            actions.extend(self.play(prompts, barge_in, After::Input));
        }
        actions
    }

    /// Runs an option's action, or a menu's final action (`is_final`).
    fn run_action(&mut self, action: Action, is_final: bool) -> Vec<FlowAction> {
        let cause = if is_final {
            HangupCause::AttemptsExhausted
        } else {
            HangupCause::Normal
        };
        match action {
            Action::Goto { menu } => self.enter_menu(&menu, Vec::new(), None),
            Action::Play { prompts, then } => self.continue_to(then, recorded(&prompts), cause),
            Action::Transfer { target, prompts } => {
                if prompts.is_empty() {
                    self.transfer_now(target)
                } else {
                    self.play(recorded(&prompts), false, After::Transfer(target))
                }
            }
            Action::Hangup { prompts } => self.hang_up_after(recorded(&prompts), cause),
            Action::Queue {
                queue,
                priority,
                prompts,
                whisper,
            } => {
                let request = QueueRequest {
                    queue,
                    priority: priority.unwrap_or(PRIORITY_NORMAL),
                    whisper,
                };
                if prompts.is_empty() {
                    self.queue_now(request)
                } else {
                    self.play(recorded(&prompts), false, After::Queue(request))
                }
            }
            Action::VerifyVoice(check) => self.start_voice_check(check),
            Action::OptOut { prompts, then } => {
                if self.record.outcome == Outcome::InProgress {
                    self.record.outcome = Outcome::OptedOut;
                }
                let mut actions = vec![FlowAction::OptOut];
                actions.extend(self.continue_to(then, recorded(&prompts), HangupCause::Normal));
                actions
            }
        }
    }

    /// Plays `prompts` then goes to `then` (a menu's prompt joins the same playback).
    fn continue_to(
        &mut self,
        then: Next,
        prompts: Vec<PromptItem>,
        cause: HangupCause,
    ) -> Vec<FlowAction> {
        match then {
            Next::Menu(menu) => self.enter_menu(&menu, prompts, None),
            Next::Hangup => self.hang_up_after(prompts, cause),
        }
    }

    /// Enters `name`: records it, resets attempts and plays `preamble` + its prompt (or
    /// `instead` of its prompt: the "anything else?" after an answer).
    fn enter_menu(
        &mut self,
        name: &str,
        preamble: Vec<PromptItem>,
        instead: Option<Vec<PromptItem>>,
    ) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        let Some(menu) = self.dialplan.menu(name) else {
            // A loaded dialplan has no dangling menu names; end the call rather than hang.
            tracing::error!(menu = name, "dialplan refers to a missing menu");
            actions.extend(self.hang_up_after(preamble, HangupCause::Normal));
            return actions;
        };
        let (after, interruptible) = match &menu.kind {
            MenuKind::Choice { .. } => (After::Input, menu.barge_in),
            MenuKind::Announcement { next } => (
                After::Continue(next.clone()),
                // A key can only skip ahead to a menu; a closing notice is heard to the end.
                menu.barge_in && matches!(next, Next::Menu(_)),
            ),
        };
        let mut prompts = preamble;
        if matches!(menu.kind, MenuKind::Choice { .. }) {
            if let Some(offer) = self.offer_pending.take() {
                prompts.extend(
                    offer
                        .get(&self.language, self.dialplan.language())
                        .map(|t| PromptItem::Text(t.to_string())),
                );
            }
        }
        match instead {
            Some(items) if !items.is_empty() => prompts.extend(items),
            _ => prompts.extend(recorded(&menu.prompts)),
        }
        self.note_entry(name, None);
        actions.extend(self.play(prompts, interruptible, after));
        actions
    }

    /// Records entering menu `name` (shown in the path as `shown`, default its name).
    fn note_entry(&mut self, name: &str, shown: Option<String>) {
        self.menu = name.to_string();
        self.failures = 0;
        self.record
            .path
            .push(shown.unwrap_or_else(|| name.to_string()));
        self.record.final_menu = Some(name.to_string());
    }

    /// Starts a playback; an interruptible one that leads to input opens a recognition turn
    /// at once, so the caller can talk over it.
    fn play(
        &mut self,
        prompts: Vec<PromptItem>,
        interruptible: bool,
        after: After,
    ) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        if !interruptible {
            // Nothing can be said over this prompt; a confirmation waits for its end.
            self.close_turn_keeping_confirmation(&mut actions);
        }
        self.last_playback = self.last_playback.wrapping_add(1);
        let playback = self.last_playback;
        self.state = State::Playing {
            playback,
            interruptible,
            after: after.clone(),
        };
        actions.push(FlowAction::Play {
            playback,
            prompts,
            interruptible,
        });
        if interruptible {
            actions.extend(self.open_turn(&after));
        }
        actions
    }

    fn after_playback(&mut self, after: After, now: Instant) -> Vec<FlowAction> {
        match after {
            After::Input => {
                // A prompt that could not be interrupted opens its turn now.
                let mut actions = Vec::new();
                if self.turn.is_none() {
                    actions = self.open_turn(&After::Input);
                }
                let menu_wait = self
                    .current_menu()
                    .map_or(Duration::ZERO, |m| m.no_input_timeout);
                let wait = match (&self.turn, self.speech()) {
                    (Some(_), Some(speech)) => speech.no_input_timeout.unwrap_or(menu_wait),
                    _ => menu_wait,
                };
                self.state = State::Waiting {
                    deadline: deadline(now, wait),
                };
                actions
            }
            After::Continue(Next::Menu(menu)) => self.enter_menu(&menu, Vec::new(), None),
            After::Continue(Next::Hangup) => self.hang_up_after(Vec::new(), HangupCause::Normal),
            After::Hangup(cause) => self.hangup_now(cause),
            After::Transfer(target) => self.transfer_now(target),
            After::Queue(request) => self.queue_now(request),
            After::Verify => self.verify_now(true, now),
            After::Voicemail { queue, max, then } => self.record_voicemail(queue, max, then, now),
        }
    }

    /// Decides to end the call: plays `prompts` (not interruptible), then hangs up.
    fn hang_up_after(&mut self, prompts: Vec<PromptItem>, cause: HangupCause) -> Vec<FlowAction> {
        if self.record.outcome == Outcome::InProgress {
            self.record.outcome = match cause {
                HangupCause::Normal => Outcome::Completed,
                HangupCause::AttemptsExhausted => Outcome::AttemptsExhausted,
            };
        }
        if prompts.is_empty() {
            self.hangup_now(cause)
        } else {
            self.play(prompts, false, After::Hangup(cause))
        }
    }

    fn hangup_now(&mut self, cause: HangupCause) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        self.state = State::Finished;
        actions.push(FlowAction::Hangup { cause });
        actions
    }

    // --- routing ----------------------------------------------------------------------------

    /// The first route not applied yet whose condition holds (only routes reading `only`
    /// when given); marks it applied and records its reason.
    fn match_route(&mut self, only: Option<Field>) -> Option<RouteAction> {
        let dialplan = Arc::clone(&self.dialplan);
        let facts = Facts {
            profile: &self.record.caller,
            voice: self.record.voice.map(|v| v.decision),
            watchlist: !self.record.watchlist.is_empty(),
        };
        let (index, route) = dialplan.routes().iter().enumerate().find(|(i, r)| {
            !self.applied_routes.contains(i)
                && only.is_none_or(|f| r.when.uses(f))
                && r.when.eval(&facts)
        })?;
        self.applied_routes.push(index);
        self.record.routes.push(route.reason.clone());
        self.add_reason(&route.reason, &route.whisper);
        Some(route.action.clone())
    }

    /// Applies a matched route: an offer arms the fast lane (nothing to do now, `None`);
    /// any other action runs.
    fn apply_route(&mut self, action: RouteAction) -> Option<Vec<FlowAction>> {
        match action {
            RouteAction::Offer {
                queue,
                priority,
                prompts,
                text,
                phrases,
            } => {
                if self.fast_lane.is_none() {
                    self.offer_pending = Some(text);
                }
                self.fast_lane = Some(FastLane {
                    queue,
                    priority,
                    prompts,
                    phrases,
                });
                None
            }
            RouteAction::Run(action) => Some(self.run_action(action, false)),
        }
    }

    fn add_reason(&mut self, reason: &str, whisper: &str) {
        if !self.record.reasons.iter().any(|r| r == reason) {
            self.record.reasons.push(reason.to_string());
            self.reason_whispers.push(whisper.to_string());
        }
    }

    /// Whether the flow may leave what it is doing for a route or the fraud action: during
    /// a menu prompt that may be interrupted, or while waiting for the caller's input.
    fn is_safe_point(&self) -> bool {
        matches!(
            self.state,
            State::Playing {
                interruptible: true,
                after: After::Input | After::Continue(Next::Menu(_)),
                ..
            } | State::Waiting { .. }
                | State::Collecting { .. }
                | State::Hearing { .. }
        )
    }

    /// Runs what a late lookup or a watchlist hit decided, once the flow is at a safe point.
    fn safe_point(&mut self, actions: &mut Vec<FlowAction>) {
        if !(self.routes_due || self.watchlist_due || self.fraud_due) || !self.is_safe_point() {
            return;
        }
        let mut chosen = None;
        if std::mem::take(&mut self.routes_due) {
            if let Some(RouteAction::Run(action)) = self.match_route(None).and_then(|r| match r {
                offer @ RouteAction::Offer { .. } => {
                    self.apply_route(offer);
                    None
                }
                run => Some(run),
            }) {
                chosen = Some(action);
            }
        }
        if chosen.is_none() && std::mem::take(&mut self.watchlist_due) {
            match self.match_route(Some(Field::Watchlist)) {
                Some(RouteAction::Run(action)) => chosen = Some(action),
                Some(offer) => {
                    self.apply_route(offer);
                }
                None => {}
            }
        }
        if chosen.is_none() && std::mem::take(&mut self.fraud_due) {
            self.fraud_done = true;
            chosen = self.dialplan.fraud().on_hit.clone();
        }
        let Some(action) = chosen else {
            return;
        };
        if matches!(self.state, State::Playing { .. }) {
            actions.push(FlowAction::StopPlayback);
        }
        self.close_turn(actions);
        actions.extend(self.run_action(action, false));
    }

    /// Emits `Queue`: the flow waits for the ACD.
    fn queue_now(&mut self, request: QueueRequest) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        let whisper = self.whisper(request.whisper.as_deref());
        self.queue_label = None;
        self.record.queued.push(request.queue.clone());
        self.record.outcome = Outcome::Queued {
            queue: request.queue.clone(),
        };
        self.state = State::Queued {
            queue: request.queue.clone(),
        };
        actions.push(FlowAction::Queue {
            queue: request.queue,
            priority: request.priority,
            reasons: self.record.reasons.clone(),
            whisper,
        });
        actions
    }

    /// What the agent is told: the reasons' texts, then what the caller came for (the last
    /// option or answer chosen, else the queue option itself) and the option's `whisper`.
    fn whisper(&self, extra: Option<&str>) -> String {
        let mut parts: Vec<&str> = self.reason_whispers.iter().map(String::as_str).collect();
        let topic = self.topic.as_deref().or(match extra {
            Some(_) => None,
            None => self.queue_label.as_deref(),
        });
        parts.extend(topic);
        parts.extend(extra);
        let mut seen: Vec<&str> = Vec::new();
        for p in parts {
            if !p.is_empty() && !seen.contains(&p) {
                seen.push(p);
            }
        }
        seen.join(", ").chars().take(MAX_WHISPER_CHARS).collect()
    }

    // --- voiceprints ------------------------------------------------------------------------

    fn start_voice_check(&mut self, check: Box<VoiceCheck>) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        if self.record.caller.customer_id.is_none() {
            // Nobody to compare with: not enrolled, without asking the shell.
            actions.extend(self.voice_decided(check, VoiceDecision::NotEnrolled, None));
            return actions;
        }
        let reuse = check.reuse_speech && self.words_heard() >= VOICE_REUSE_MIN_WORDS;
        self.check = Some(check);
        match (reuse, self.now) {
            (true, Some(now)) => actions.extend(self.verify_now(false, now)),
            _ => actions.extend(self.ask_phrase()),
        }
        actions
    }

    /// Words the caller said in this call so far.
    fn words_heard(&self) -> usize {
        self.record
            .transcripts
            .iter()
            .map(|t| t.text.split_whitespace().count())
            .sum()
    }

    /// Plays the passphrase prompt (it must be heard); the check starts when it ends.
    fn ask_phrase(&mut self) -> Vec<FlowAction> {
        let prompts = self
            .check
            .as_ref()
            .map(|c| self.spoken(&c.phrase))
            .unwrap_or_default();
        if prompts.is_empty() {
            return match self.now {
                Some(now) => self.verify_now(true, now),
                None => self.voice_answer(VoiceDecision::NotEnoughSpeech, None, true),
            };
        }
        self.play(prompts, false, After::Verify)
    }

    fn verify_now(&mut self, ask_phrase: bool, now: Instant) -> Vec<FlowAction> {
        let Some(customer_id) = self.record.caller.customer_id.clone() else {
            return self.voice_answer(VoiceDecision::NotEnrolled, None, true);
        };
        self.state = State::Verifying {
            deadline: deadline(now, VOICE_VERIFY_WAIT),
            asked: ask_phrase,
        };
        vec![FlowAction::VerifyVoice {
            customer_id,
            ask_phrase,
        }]
    }

    /// The shell's decision (or the check's timeout). Not enough of the speech the caller
    /// had already given: ask for the passphrase once.
    fn voice_answer(
        &mut self,
        decision: VoiceDecision,
        score: Option<f32>,
        asked: bool,
    ) -> Vec<FlowAction> {
        if decision == VoiceDecision::NotEnoughSpeech && !asked {
            return self.ask_phrase();
        }
        match self.check.take() {
            Some(check) => self.voice_decided(check, decision, score),
            None => self.hangup_now(HangupCause::Normal),
        }
    }

    /// Records the decision, checks the routes that read `voice`, else takes the branch.
    fn voice_decided(
        &mut self,
        check: Box<VoiceCheck>,
        decision: VoiceDecision,
        score: Option<f32>,
    ) -> Vec<FlowAction> {
        self.record.voice = Some(VoiceResult { decision, score });
        if decision == VoiceDecision::Rejected {
            self.add_reason(REASON_VOICE_REJECTED, "voice check failed");
        }
        if let Some(actions) = self
            .match_route(Some(Field::Voice))
            .and_then(|r| self.apply_route(r))
        {
            return actions;
        }
        let check = *check;
        let branch = match decision {
            VoiceDecision::Accepted => check.on_accept,
            VoiceDecision::Rejected => check.on_reject,
            VoiceDecision::NotEnoughSpeech => check.on_not_enough,
            VoiceDecision::NotEnrolled => check.on_not_enrolled,
        };
        self.run_action(branch, false)
    }

    // --- queue fallbacks --------------------------------------------------------------------

    fn queue_fallback(
        &mut self,
        queue: String,
        reason: UnavailableReason,
        now: Instant,
    ) -> Vec<FlowAction> {
        let Some(fallback) = self
            .dialplan
            .queue(&queue)
            .map(|q| q.fallback(reason).clone())
        else {
            // A loaded dialplan declares every queue it uses; end the call rather than hang.
            tracing::error!(queue = %queue, "dialplan queue missing");
            self.record.outcome = Outcome::QueueUnavailable { queue, reason };
            return self.hangup_now(HangupCause::Normal);
        };
        let message = self.spoken(&fallback.message);
        match fallback.kind {
            FallbackKind::Message => {
                self.record.outcome = Outcome::QueueUnavailable { queue, reason };
                self.continue_after_fallback(message, fallback.then)
            }
            FallbackKind::Callback => {
                self.record.callback_requested = true;
                self.record.outcome = Outcome::CallbackRequested {
                    queue: queue.clone(),
                };
                let mut actions = vec![FlowAction::RequestCallback { queue }];
                actions.extend(self.continue_after_fallback(message, fallback.then));
                actions
            }
            FallbackKind::Voicemail { max } => {
                self.record.outcome = Outcome::QueueUnavailable {
                    queue: queue.clone(),
                    reason,
                };
                if message.is_empty() {
                    self.record_voicemail(queue, max, fallback.then, now)
                } else {
                    let then = fallback.then;
                    self.play(message, false, After::Voicemail { queue, max, then })
                }
            }
        }
    }

    /// Plays a fallback's message (it must be heard), then goes to `then`.
    fn continue_after_fallback(&mut self, message: Vec<PromptItem>, then: Next) -> Vec<FlowAction> {
        match then {
            Next::Menu(menu) => self.enter_menu(&menu, message, None),
            Next::Hangup if message.is_empty() => self.hangup_now(HangupCause::Normal),
            Next::Hangup => self.play(message, false, After::Hangup(HangupCause::Normal)),
        }
    }

    fn record_voicemail(
        &mut self,
        queue: String,
        max: Duration,
        then: Next,
        now: Instant,
    ) -> Vec<FlowAction> {
        self.state = State::Voicemail {
            queue: queue.clone(),
            deadline: deadline(now, max.saturating_add(VOICEMAIL_GRACE)),
            then,
        };
        vec![FlowAction::RecordVoicemail { queue, max }]
    }

    fn voicemail_done(&mut self, queue: String, then: Next) -> Vec<FlowAction> {
        self.record.outcome = Outcome::VoicemailLeft { queue };
        match then {
            Next::Menu(menu) => self.enter_menu(&menu, Vec::new(), None),
            Next::Hangup => self.hangup_now(HangupCause::Normal),
        }
    }

    fn transfer_now(&mut self, target: String) -> Vec<FlowAction> {
        let mut actions = Vec::new();
        self.close_turn(&mut actions);
        self.state = State::Finished;
        self.record.outcome = Outcome::Transferred(target.clone());
        actions.push(FlowAction::Transfer { target });
        actions
    }
}

/// Adds a target's phrases to a turn under the target's index; a target none of whose
/// phrases is free (all taken by nearer menus) is left out.
fn add_target(turn: &mut Turn, phrases: &[String], target: VoiceTarget) {
    let id = turn.targets.len().to_string();
    let mut added = false;
    for phrase in phrases {
        added |= turn.set.add(&id, phrase).is_ok();
    }
    if added {
        turn.targets.push(target);
    }
}

fn recorded(names: &[String]) -> Vec<PromptItem> {
    names.iter().cloned().map(PromptItem::Recorded).collect()
}

/// `now + wait`, saturating instead of panicking on an (absurd) overflow.
fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivr::dialplan::{AnyPrompt, PRIORITY_FAST_LANE, PRIORITY_VIP};
    use std::path::Path;

    const DEMO: &str = include_str!("../../dialplans/demo-bank.toml");
    const SECOND: Duration = Duration::from_secs(1);

    fn plan(text: &str) -> Arc<Dialplan> {
        match Dialplan::parse_str(Path::new("t.toml"), text, &AnyPrompt) {
            Ok((plan, _)) => Arc::new(plan),
            Err(e) => panic!("test dialplan is invalid:\n{e}"),
        }
    }

    /// A call driven by a simulated clock, tracking what the shell would be playing and
    /// whether a recognition turn is open (checking both protocols on every action).
    struct Sim {
        flow: CallFlow,
        now: Instant,
        playing: Option<(u64, Vec<PromptItem>, bool)>,
        opted_out: bool,
        callback: bool,
        /// The open turn's grammar.
        listening: Option<Vec<String>>,
        /// Every action of the last event, speech ones included.
        raw: Vec<FlowAction>,
    }

    impl Sim {
        fn new(text: &str) -> Self {
            Sim {
                flow: CallFlow::new(plan(text)),
                now: Instant::now(),
                playing: None,
                opted_out: false,
                callback: false,
                listening: None,
                raw: Vec::new(),
            }
        }

        fn demo() -> Self {
            Self::new(DEMO)
        }

        fn track(&mut self, actions: &[FlowAction]) {
            for action in actions {
                match action {
                    FlowAction::Play {
                        playback,
                        prompts,
                        interruptible,
                    } => {
                        assert!(
                            self.playing.is_none(),
                            "Play while {:?} plays",
                            self.playing
                        );
                        self.playing = Some((*playback, prompts.clone(), *interruptible));
                    }
                    FlowAction::StopPlayback => {
                        assert!(
                            self.playing.take().is_some(),
                            "StopPlayback with nothing playing"
                        );
                    }
                    FlowAction::OptOut => self.opted_out = true,
                    FlowAction::Transfer { .. } | FlowAction::Hangup { .. } => {
                        assert!(self.playing.is_none(), "call ended while a prompt plays");
                        assert!(self.listening.is_none(), "call ended while listening");
                    }
                    FlowAction::Queue { .. }
                    | FlowAction::VerifyVoice { .. }
                    | FlowAction::RecordVoicemail { .. } => {
                        assert!(self.playing.is_none(), "{action:?} while a prompt plays");
                        assert!(self.listening.is_none(), "{action:?} while listening");
                    }
                    FlowAction::RequestCallback { .. } => self.callback = true,
                    FlowAction::Listen { grammar, .. } => {
                        assert!(self.listening.is_none(), "Listen while a turn is open");
                        self.listening = Some(grammar.clone());
                    }
                    FlowAction::StopListening => {
                        assert!(
                            self.listening.take().is_some(),
                            "StopListening without a turn"
                        );
                    }
                }
            }
            assert_eq!(self.flow.is_listening(), self.listening.is_some());
        }

        /// Tracks `actions` and returns them without the speech ones (Listen,
        /// StopListening), so key tests read as they did before speech.
        fn keep(&mut self, actions: Vec<FlowAction>) -> Vec<FlowAction> {
            self.track(&actions);
            self.raw = actions.clone();
            actions
                .into_iter()
                .filter(|a| !matches!(a, FlowAction::Listen { .. } | FlowAction::StopListening))
                .collect()
        }

        fn send(&mut self, event: FlowEvent) -> Vec<FlowAction> {
            if event == FlowEvent::Hangup {
                // The shell drops the recogniser with the call; no StopListening is owed.
                self.listening = None;
            }
            let actions = self.flow.handle(event, self.now);
            self.keep(actions)
        }

        fn answer(&mut self) -> Vec<FlowAction> {
            self.send(FlowEvent::Answered)
        }

        fn press(&mut self, keys: &str) -> Vec<FlowAction> {
            let mut all = Vec::new();
            for c in keys.chars() {
                all.extend(self.send(FlowEvent::Digit(c)));
            }
            all
        }

        /// The current playback plays to its end after `secs` seconds.
        fn finish_after(&mut self, secs: u64) -> Vec<FlowAction> {
            let (playback, _, _) = self.playing.take().expect("something is playing");
            self.now += SECOND * secs as u32;
            let actions = self
                .flow
                .handle(FlowEvent::PlaybackFinished { playback }, self.now);
            self.keep(actions)
        }

        fn finish(&mut self) -> Vec<FlowAction> {
            self.finish_after(1)
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        /// Advances to the flow's deadline and fires it.
        fn time_out(&mut self) -> Vec<FlowAction> {
            let deadline = self.flow.poll_timeout().expect("a timer runs");
            assert!(deadline >= self.now);
            self.now = deadline;
            let actions = self.flow.handle_timeout(self.now);
            self.keep(actions)
        }

        fn prompts(&self) -> Vec<String> {
            self.playing
                .as_ref()
                .map(|(_, p, _)| shown(p))
                .unwrap_or_default()
        }

        fn interruptible(&self) -> bool {
            self.playing.as_ref().is_some_and(|(_, _, i)| *i)
        }

        fn record(&self) -> &FlowRecord {
            self.flow.record()
        }

        /// Answer, let the greeting finish, and stop once the main menu prompt has finished.
        fn at_main_menu(text: &str) -> Self {
            let mut sim = Self::new(text);
            sim.answer();
            sim.finish();
            if text == DEMO {
                assert_eq!(sim.prompts(), vec!["main-menu"]);
            }
            sim.finish();
            sim
        }
    }

    /// Prompt names, and TTS texts as "tts:<text>".
    fn shown(items: &[PromptItem]) -> Vec<String> {
        items
            .iter()
            .map(|p| match p {
                PromptItem::Recorded(name) => name.clone(),
                PromptItem::Text(text) => format!("tts:{text}"),
            })
            .collect()
    }

    fn play_of(actions: &[FlowAction]) -> Vec<String> {
        actions
            .iter()
            .find_map(|a| match a {
                FlowAction::Play { prompts, .. } => Some(shown(prompts)),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn greeting_plays_then_main_menu() {
        let mut sim = Sim::demo();
        let actions = sim.answer();
        assert_eq!(
            actions,
            vec![FlowAction::Play {
                playback: 1,
                prompts: vec![PromptItem::Recorded("greeting".into())],
                interruptible: true
            }]
        );
        assert_eq!(
            sim.flow.poll_timeout(),
            None,
            "no timer during the greeting"
        );
        let actions = sim.finish();
        assert_eq!(play_of(&actions), vec!["main-menu"]);
        assert!(sim.interruptible());
        assert_eq!(sim.record().path, vec!["greeting", "main"]);
        assert_eq!(sim.record().final_menu.as_deref(), Some("main"));
        assert_eq!(sim.record().outcome, Outcome::InProgress);
        assert!(!sim.flow.is_finished());
    }

    #[test]
    fn no_input_timer_starts_when_the_prompt_ends() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.finish();
        // The main menu prompt plays for 9 s: no timer runs meanwhile.
        assert_eq!(sim.flow.poll_timeout(), None);
        sim.advance(SECOND * 30);
        assert!(sim.flow.handle_timeout(sim.now).is_empty());
        sim.finish_after(9);
        let started = sim.now;
        assert_eq!(sim.flow.poll_timeout(), Some(started + SECOND * 5));
        // Early calls do nothing.
        assert!(sim
            .flow
            .handle_timeout(started + Duration::from_millis(4999))
            .is_empty());
        assert_eq!(sim.flow.poll_timeout(), Some(started + SECOND * 5));
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["no-input", "main-menu"]);
        assert!(sim.interruptible());
        assert_eq!(
            sim.flow.poll_timeout(),
            None,
            "re-prompt playing, timer stopped"
        );
        assert_eq!(
            sim.record().path,
            vec!["greeting", "main"],
            "a re-prompt is not an entry"
        );
    }

    #[test]
    fn key_during_an_interruptible_prompt_stops_it_and_counts() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.finish();
        let actions = sim.press("1");
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["balance", "main-menu"]);
        assert_eq!(sim.record().path, vec!["greeting", "main", "main"]);
        assert_eq!(sim.record().digits, "1");
    }

    #[test]
    fn key_during_the_greeting_counts_in_the_main_menu() {
        let mut sim = Sim::demo();
        sim.answer();
        let actions = sim.press("0");
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert!(!sim.interruptible(), "please hold is not interruptible");
        assert_eq!(sim.record().path, vec!["greeting", "main"]);
        let actions = sim.finish();
        // 0 is the agents queue: the flow waits for the ACD.
        assert_eq!(
            actions,
            vec![FlowAction::Queue {
                queue: "agents".into(),
                priority: PRIORITY_NORMAL,
                reasons: vec![],
                whisper: "agent".into(),
            }]
        );
        assert_eq!(
            sim.record().outcome,
            Outcome::Queued {
                queue: "agents".into()
            }
        );
        assert!(sim.flow.is_queued() && !sim.flow.is_finished());
        assert!(sim
            .send(FlowEvent::Connected {
                agent: "1001".into()
            })
            .is_empty());
        assert_eq!(
            sim.record().outcome,
            Outcome::Connected {
                queue: "agents".into(),
                agent: "1001".into()
            }
        );
        assert!(sim.flow.is_finished());
    }

    #[test]
    fn key_during_greeting_that_starts_a_longer_key_collects_in_the_next_menu() {
        let mut sim = Sim::new(
            r#"entry = "hello"
[menus.hello]
prompt = "hi"
next = "m"
[menus.m]
prompt = "p"
options.12 = { play = "twelve" }
"#,
        );
        sim.answer();
        let actions = sim.press("1");
        assert_eq!(actions, vec![FlowAction::StopPlayback]);
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + SECOND * 2));
        let actions = sim.press("2");
        assert_eq!(play_of(&actions), vec!["twelve", "p"]);
        assert_eq!(sim.record().path, vec!["hello", "m", "m"]);
    }

    #[test]
    fn key_skips_a_chain_of_interruptible_greetings_but_not_a_mandatory_notice() {
        let text = r#"entry = "a"
[menus.a]
prompt = "pa"
next = "b"
[menus.b]
prompt = "pb"
next = "c"
[menus.c]
prompt = "pc"
next = "m"
barge_in = false
[menus.m]
prompt = "pm"
options.1 = { play = "one" }
"#;
        let mut sim = Sim::new(text);
        sim.answer();
        let actions = sim.press("1");
        // a and b are skipped, the notice c must still be heard; the key is spent.
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["pc"]);
        assert!(!sim.interruptible());
        assert_eq!(sim.record().path, vec!["a", "b", "c"]);
        assert!(sim.press("1").is_empty(), "the notice ignores keys");
        sim.finish();
        assert_eq!(sim.prompts(), vec!["pm"]);

        let mut sim = Sim::new(&text.replace("barge_in = false\n", ""));
        sim.answer();
        let actions = sim.press("1");
        assert_eq!(play_of(&actions), vec!["one", "pm"]);
        assert_eq!(sim.record().path, vec!["a", "b", "c", "m", "m"]);
    }

    #[test]
    fn closing_announcement_is_heard_to_the_end() {
        let mut sim = Sim::new(
            "entry = \"closed\"\n[menus.closed]\nprompt = \"we-are-closed\"\nnext = \"hangup\"\n",
        );
        sim.answer();
        assert!(!sim.interruptible());
        assert!(sim.press("5").is_empty());
        let actions = sim.finish();
        assert_eq!(
            actions,
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
        assert_eq!(sim.record().outcome, Outcome::Completed);
        assert_eq!(sim.record().digits, "5");
    }

    #[test]
    fn non_interruptible_prompt_ignores_keys() {
        let mut sim = Sim::new(
            r#"entry = "m"
[menus.m]
prompt = "legal"
barge_in = false
options.1 = { play = "one", then = "hangup" }
"#,
        );
        sim.answer();
        assert!(!sim.interruptible());
        assert!(sim.press("1").is_empty(), "no StopPlayback, no selection");
        assert_eq!(sim.prompts(), vec!["legal"], "still playing");
        assert_eq!(sim.flow.poll_timeout(), None);
        sim.finish();
        // After the prompt the same key works; the ignored one is still in the record.
        let actions = sim.press("1");
        assert_eq!(play_of(&actions), vec!["one"]);
        assert_eq!(sim.record().digits, "11");
    }

    #[test]
    fn no_match_reprompts_with_the_no_match_prompt() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.press("7");
        assert_eq!(play_of(&actions), vec!["no-match", "main-menu"]);
        assert!(
            !actions.contains(&FlowAction::StopPlayback),
            "nothing was playing"
        );
        // No-match during a prompt: barge-in, then the no-match prompt.
        let actions = sim.press("8");
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["no-match", "main-menu"]);
    }

    #[test]
    fn max_attempts_runs_the_final_action() {
        let mut sim = Sim::at_main_menu(DEMO);
        sim.time_out(); // 1: no input
        sim.finish();
        sim.press("7"); // 2: no match
        sim.finish();
        let actions = sim.time_out(); // 3: no input -> final: goodbye + hangup
        assert_eq!(play_of(&actions), vec!["goodbye"]);
        assert!(!sim.interruptible());
        assert_eq!(sim.record().outcome, Outcome::AttemptsExhausted);
        assert!(!sim.flow.is_finished(), "goodbye still playing");
        assert!(sim.press("1").is_empty(), "keys during goodbye are ignored");
        let actions = sim.finish();
        assert_eq!(
            actions,
            vec![FlowAction::Hangup {
                cause: HangupCause::AttemptsExhausted
            }]
        );
        assert!(sim.flow.is_finished());
        assert_eq!(sim.flow.poll_timeout(), None);
    }

    #[test]
    fn attempts_reset_when_a_menu_is_entered_again() {
        let mut sim = Sim::at_main_menu(DEMO);
        sim.time_out();
        sim.finish();
        sim.time_out(); // two failures
        sim.finish();
        sim.press("1"); // balance, back to main: a new entry
        sim.finish();
        sim.time_out();
        sim.finish();
        let actions = sim.time_out(); // two failures since re-entry: still re-prompting
        assert_eq!(play_of(&actions), vec!["no-input", "main-menu"]);
        assert_eq!(sim.record().outcome, Outcome::InProgress);
    }

    #[test]
    fn final_transfer_after_one_failed_attempt() {
        let mut sim = Sim::new(
            r#"entry = "main"
[menus.main]
prompt = "main-menu"
max_attempts = 1
final = { transfer = "agents" }
options.1 = { hangup = true }
"#,
        );
        sim.answer();
        sim.finish();
        let actions = sim.press("5");
        assert_eq!(
            actions,
            vec![FlowAction::Transfer {
                target: "agents".into()
            }]
        );
        assert_eq!(sim.record().outcome, Outcome::Transferred("agents".into()));
    }

    const MULTI: &str = r#"entry = "m"
[menus.m]
prompt = "p"
no_match_prompt = "nm"
[menus.m.options]
1 = { play = "one" }
12 = { play = "twelve" }
345 = { play = "threefourfive" }
"#;

    fn at_menu(text: &str) -> Sim {
        let mut sim = Sim::new(text);
        sim.answer();
        sim.finish();
        sim
    }

    #[test]
    fn multi_digit_key_completes_on_its_last_digit() {
        let mut sim = at_menu(MULTI);
        assert!(sim.press("3").is_empty());
        let first = sim.now;
        assert_eq!(sim.flow.poll_timeout(), Some(first + SECOND * 2));
        sim.advance(Duration::from_millis(1500));
        assert!(sim.press("4").is_empty());
        assert_eq!(
            sim.flow.poll_timeout(),
            Some(sim.now + SECOND * 2),
            "each digit restarts the inter-digit timer"
        );
        let actions = sim.press("5");
        assert_eq!(play_of(&actions), vec!["threefourfive", "p"]);
        assert_eq!(sim.record().digits, "345");
    }

    #[test]
    fn inter_digit_timeout_selects_an_exact_shorter_key() {
        let mut sim = at_menu(MULTI);
        assert!(sim.press("1").is_empty(), "12 might follow");
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["one", "p"]);
    }

    #[test]
    fn inter_digit_timeout_on_a_partial_key_is_a_no_match() {
        let mut sim = at_menu(MULTI);
        sim.press("34");
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["nm", "p"]);
    }

    #[test]
    fn terminator_ends_input_early() {
        let mut sim = at_menu(MULTI);
        let actions = sim.press("1#");
        assert_eq!(play_of(&actions), vec!["one", "p"]);
        let mut sim = at_menu(MULTI);
        let actions = sim.press("34#");
        assert_eq!(play_of(&actions), vec!["nm", "p"], "34 is no key");
    }

    #[test]
    fn terminator_alone_is_ignored() {
        let mut sim = at_menu(MULTI);
        let deadline = sim.flow.poll_timeout();
        assert!(sim.press("#").is_empty());
        assert_eq!(
            sim.flow.poll_timeout(),
            deadline,
            "the no-input timer keeps running"
        );
        // During a prompt it does not barge in either.
        let mut sim = Sim::new(MULTI);
        sim.answer();
        assert!(sim.press("#").is_empty());
        assert_eq!(sim.prompts(), vec!["p"]);
    }

    #[test]
    fn digit_that_no_key_starts_with_is_a_no_match_at_once() {
        let mut sim = at_menu(MULTI);
        let actions = sim.press("13");
        assert_eq!(play_of(&actions), vec!["nm", "p"]);
        let mut sim = at_menu(MULTI);
        let actions = sim.press("9");
        assert_eq!(play_of(&actions), vec!["nm", "p"]);
    }

    #[test]
    fn without_a_terminator_the_hash_key_is_an_option() {
        let mut sim = at_menu(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\nterminator = \"none\"\noptions.\"#\" = { play = \"hash\" }\n",
        );
        let actions = sim.press("#");
        assert_eq!(play_of(&actions), vec!["hash", "p"]);
    }

    #[test]
    fn answer_prompt_then_back_to_the_menu_or_another() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.press("2");
        assert_eq!(play_of(&actions), vec!["card-blocked", "main-menu"]);
        sim.finish();
        assert!(sim.flow.poll_timeout().is_some(), "waiting in main again");
        let mut sim = at_menu(
            r#"entry = "m"
[menus.m]
prompt = "p"
options.1 = { play = ["a1", "a2"], then = "other" }
[menus.other]
prompt = "po"
options.1 = { play = "x", then = "hangup" }
"#,
        );
        let actions = sim.press("1");
        assert_eq!(play_of(&actions), vec!["a1", "a2", "po"]);
        assert_eq!(sim.record().path, vec!["m", "other"]);
        // A key during the answer counts in the menu that follows.
        let actions = sim.press("1");
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["x"]);
        assert!(!sim.interruptible());
        assert_eq!(sim.record().outcome, Outcome::Completed);
        let actions = sim.finish();
        assert_eq!(
            actions,
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
    }

    #[test]
    fn credit_submenu_and_star_back_to_main() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.press("3");
        assert_eq!(play_of(&actions), vec!["credit-menu"]);
        sim.finish();
        assert_eq!(
            play_of(&sim.press("1")),
            vec!["repayment-date", "credit-menu"]
        );
        assert_eq!(
            play_of(&sim.press("2")),
            vec!["limit-increase", "credit-menu"]
        );
        assert_eq!(play_of(&sim.press("*")), vec!["main-menu"]);
        assert_eq!(
            sim.record().path,
            vec!["greeting", "main", "credit", "credit", "credit", "main"]
        );
        assert_eq!(sim.record().digits, "312*");
    }

    #[test]
    fn opt_out_is_emitted_before_the_confirmation() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.press("9");
        assert_eq!(actions.first(), Some(&FlowAction::OptOut));
        assert_eq!(play_of(&actions), vec!["opt-out-confirmed", "goodbye"]);
        assert_eq!(actions.len(), 2);
        assert!(!sim.interruptible());
        assert_eq!(sim.record().outcome, Outcome::OptedOut);
        let actions = sim.finish();
        assert_eq!(
            actions,
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
        assert_eq!(
            sim.record().outcome,
            Outcome::OptedOut,
            "still opted out after hangup"
        );
        assert!(sim.opted_out);
    }

    #[test]
    fn opt_out_during_the_menu_prompt_stops_it_first() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.finish();
        let actions = sim.press("9");
        assert_eq!(actions[0], FlowAction::StopPlayback);
        assert_eq!(actions[1], FlowAction::OptOut);
        assert!(matches!(actions[2], FlowAction::Play { .. }));
        sim.send(FlowEvent::Hangup);
        assert_eq!(
            sim.record().outcome,
            Outcome::OptedOut,
            "caller hung up after opting out"
        );
    }

    #[test]
    fn opt_out_can_continue_in_a_menu_and_a_later_transfer_wins() {
        let mut sim = at_menu(
            r#"entry = "m"
[menus.m]
prompt = "p"
options.9 = { opt_out = true, prompt = "done" }
options.0 = { transfer = "agents" }
"#,
        );
        let actions = sim.press("9");
        assert_eq!(actions[0], FlowAction::OptOut);
        assert_eq!(play_of(&actions), vec!["done", "p"]);
        assert!(sim.interruptible());
        let actions = sim.press("0");
        assert_eq!(
            actions,
            vec![
                FlowAction::StopPlayback,
                FlowAction::Transfer {
                    target: "agents".into()
                }
            ]
        );
        assert_eq!(sim.record().outcome, Outcome::Transferred("agents".into()));
    }

    #[test]
    fn opt_out_without_prompt_hangs_up_at_once() {
        let mut sim = at_menu(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\noptions.9 = { opt_out = true, then = \"hangup\" }\n",
        );
        let actions = sim.press("9");
        assert_eq!(
            actions,
            vec![
                FlowAction::OptOut,
                FlowAction::Hangup {
                    cause: HangupCause::Normal
                }
            ]
        );
        assert_eq!(sim.record().outcome, Outcome::OptedOut);
    }

    #[test]
    fn transfer_plays_hold_prompt_then_transfers() {
        let text = DEMO.replace("0 = { queue = \"agents\"", "0 = { transfer = \"agents\"");
        let mut sim = Sim::at_main_menu(&text);
        let actions = sim.press("0");
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert_eq!(
            sim.record().outcome,
            Outcome::InProgress,
            "not transferred yet"
        );
        assert!(sim.press("1").is_empty());
        assert_eq!(
            sim.finish(),
            vec![FlowAction::Transfer {
                target: "agents".into()
            }]
        );
        assert!(sim.flow.is_finished());
        assert_eq!(sim.record().final_menu.as_deref(), Some("main"));
    }

    #[test]
    fn caller_hanging_up_during_hold_abandons() {
        let mut sim = Sim::at_main_menu(DEMO);
        sim.press("0");
        assert!(sim.send(FlowEvent::Hangup).is_empty());
        assert_eq!(sim.record().outcome, Outcome::Abandoned);
        assert!(sim.flow.is_finished());
        // The shell may still report the playback it was tearing down.
        let (playback, _, _) = sim.playing.take().expect("hold prompt");
        assert!(sim
            .flow
            .handle(FlowEvent::PlaybackFinished { playback }, sim.now)
            .is_empty());
    }

    #[test]
    fn hangup_option_plays_goodbye_then_hangs_up() {
        let mut sim = at_menu(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\noptions.5 = { hangup = true, prompt = \"goodbye\" }\noptions.6 = { hangup = true }\n",
        );
        let actions = sim.press("5");
        assert_eq!(play_of(&actions), vec!["goodbye"]);
        assert!(!sim.interruptible());
        assert_eq!(sim.record().outcome, Outcome::Completed);
        assert!(!sim.flow.is_finished());
        // A caller hanging up during the goodbye still completed the call.
        sim.send(FlowEvent::Hangup);
        assert_eq!(sim.record().outcome, Outcome::Completed);

        let mut sim =
            at_menu("entry = \"m\"\n[menus.m]\nprompt = \"p\"\noptions.6 = { hangup = true }\n");
        assert_eq!(
            sim.press("6"),
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
        assert!(sim.flow.is_finished());
    }

    #[test]
    fn caller_hangup_at_any_time_abandons_and_silences_the_flow() {
        for step in 0..6 {
            let mut sim = Sim::demo();
            if step >= 1 {
                sim.answer();
            }
            if step >= 2 {
                sim.finish();
            }
            if step >= 3 {
                sim.finish();
            }
            if step >= 4 {
                sim.press("3");
            }
            if step >= 5 {
                sim.finish();
                sim.press("1");
            }
            assert!(sim.send(FlowEvent::Hangup).is_empty());
            assert_eq!(sim.record().outcome, Outcome::Abandoned, "step {step}");
            assert!(sim.flow.is_finished());
            assert_eq!(sim.flow.poll_timeout(), None);
            let digits = sim.record().digits.clone();
            let now = sim.now;
            for event in [
                FlowEvent::Answered,
                FlowEvent::Digit('1'),
                FlowEvent::PlaybackFinished { playback: 1 },
                FlowEvent::PlaybackFinished { playback: 99 },
                FlowEvent::Hangup,
            ] {
                assert!(sim.flow.handle(event, now).is_empty());
            }
            assert!(sim.flow.handle_timeout(now + SECOND * 60).is_empty());
            assert_eq!(
                sim.record().digits,
                digits,
                "keys after the end are not recorded"
            );
            assert_eq!(sim.record().outcome, Outcome::Abandoned);
        }
    }

    #[test]
    fn stale_playback_finished_is_ignored() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.finish();
        let (main_prompt, _, _) = sim.playing.clone().expect("main menu");
        sim.press("1"); // barge-in: main-menu playback stopped, balance playing
        let stale = sim.flow.handle(
            FlowEvent::PlaybackFinished {
                playback: main_prompt,
            },
            sim.now,
        );
        assert!(stale.is_empty());
        assert_eq!(
            sim.flow.poll_timeout(),
            None,
            "the stale report did not start the timer"
        );
        let unknown = sim
            .flow
            .handle(FlowEvent::PlaybackFinished { playback: 12345 }, sim.now);
        assert!(unknown.is_empty());
        assert_eq!(sim.prompts(), vec!["balance", "main-menu"]);
        // The real one still works.
        sim.finish();
        assert!(sim.flow.poll_timeout().is_some());
    }

    #[test]
    fn playback_ids_are_unique_within_a_call() {
        let mut sim = Sim::at_main_menu(DEMO);
        let mut seen = std::collections::HashSet::new();
        // Three silent attempts, goodbye, hangup: every Play gets a fresh id.
        while !sim.flow.is_finished() {
            let actions = if sim.playing.is_some() {
                sim.finish()
            } else {
                sim.time_out()
            };
            for a in &actions {
                if let FlowAction::Play { playback, .. } = a {
                    assert!(seen.insert(*playback), "id {playback} reused");
                }
            }
        }
        assert_eq!(seen.len(), 3, "two re-prompts and the goodbye");
    }

    #[test]
    fn events_before_answer_and_invalid_digits_are_ignored() {
        let mut sim = Sim::demo();
        assert!(sim.send(FlowEvent::Digit('1')).is_empty());
        assert!(sim
            .send(FlowEvent::PlaybackFinished { playback: 1 })
            .is_empty());
        assert!(sim.flow.handle_timeout(sim.now + SECOND * 100).is_empty());
        assert_eq!(sim.record().digits, "");
        assert!(sim.record().path.is_empty());
        assert_eq!(sim.record().final_menu, None);
        sim.answer();
        assert!(
            sim.send(FlowEvent::Answered).is_empty(),
            "a second answer is ignored"
        );
        sim.finish();
        sim.finish();
        assert!(sim.press("x!é ").is_empty());
        assert_eq!(sim.record().digits, "");
        assert_eq!(sim.record().path, vec!["greeting", "main"]);
    }

    #[test]
    fn lower_case_letter_keys_match() {
        let mut sim =
            at_menu("entry = \"m\"\n[menus.m]\nprompt = \"p\"\noptions.A = { play = \"a\" }\n");
        assert_eq!(play_of(&sim.press("a")), vec!["a", "p"]);
        assert_eq!(sim.record().digits, "A");
    }

    #[test]
    fn full_call_records_path_digits_and_outcome() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.finish(); // greeting
        sim.press("7"); // barge-in, no match
        sim.finish();
        sim.press("3"); // credit
        sim.finish();
        sim.press("2"); // limit answer
        sim.press("*"); // barge-in back to main
        sim.press("9"); // barge-in opt out
        sim.finish();
        let record = sim.record().clone();
        assert_eq!(
            record,
            FlowRecord {
                path: vec![
                    "greeting".into(),
                    "main".into(),
                    "credit".into(),
                    "credit".into(),
                    "main".into()
                ],
                digits: "732*9".into(),
                transcripts: vec![],
                outcome: Outcome::OptedOut,
                final_menu: Some("main".into()),
                caller: CallerProfile::default(),
                lookup: None,
                routes: vec![],
                reasons: vec![],
                voice: Some(VoiceResult {
                    decision: VoiceDecision::NotEnrolled,
                    score: None
                }),
                watchlist: vec![],
                queued: vec![],
                callback_requested: false,
            }
        );
        assert!(sim.flow.is_finished());
    }

    // --- routing ------------------------------------------------------------------------

    /// A known customer (id C-1, age 40, standard segment) changed by `f`.
    fn customer(f: impl FnOnce(&mut CallerProfile)) -> FlowEvent {
        let mut profile = CallerProfile {
            customer_id: Some("C-1".into()),
            name: Some("Ada".into()),
            age: Some(40),
            segment: Some("standard".into()),
            language: Some("en".into()),
            open_complaint: false,
        };
        f(&mut profile);
        FlowEvent::CallerKnown {
            profile,
            status: LookupStatus::Found,
        }
    }

    fn queue(queue: &str, priority: i32, reasons: &[&str], whisper: &str) -> FlowAction {
        FlowAction::Queue {
            queue: queue.into(),
            priority,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            whisper: whisper.into(),
        }
    }

    const OFFER: &str =
        "tts:To speak to one of our team straight away, press 0 or say agent at any time.";

    impl Sim {
        /// A demo call by `caller` (if any), answered.
        fn demo_for(caller: Option<FlowEvent>) -> Self {
            let mut sim = Sim::demo();
            if let Some(event) = caller {
                assert!(sim.send(event).is_empty(), "the lookup only informs");
            }
            sim
        }

        /// A known demo caller in the credit menu, its prompt finished.
        fn at_credit(caller: Option<FlowEvent>) -> Self {
            let mut sim = Self::demo_for(caller);
            sim.answer();
            sim.finish();
            sim.finish();
            sim.press("3");
            sim.finish();
            sim
        }
    }

    #[test]
    fn routes_are_checked_in_order_and_the_first_match_wins() {
        // 80 and VIP: the elderly route comes first, so the VIP route does not run.
        let mut sim = Sim::demo_for(Some(customer(|p| {
            p.age = Some(80);
            p.segment = Some("VIP".into());
        })));
        let actions = sim.answer();
        assert_eq!(play_of(&actions), vec!["greeting"]);
        assert_eq!(sim.record().routes, vec!["elderly"]);
        assert_eq!(sim.record().lookup, Some(LookupStatus::Found));
        assert_eq!(sim.record().caller.age, Some(80));

        // VIP: queued for the experts before any menu, ahead of the line.
        let mut sim = Sim::demo_for(Some(customer(|p| p.segment = Some("vip".into()))));
        let actions = sim.answer();
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert!(!sim.interruptible());
        assert!(sim.record().path.is_empty());
        assert_eq!(
            sim.finish(),
            vec![queue("experts", PRIORITY_VIP, &["vip"], "VIP customer")]
        );
        assert!(sim.flow.is_queued());

        // An open complaint (third route) goes to the risk desk.
        let mut sim = Sim::demo_for(Some(customer(|p| p.open_complaint = true)));
        sim.answer();
        assert_eq!(
            sim.finish(),
            vec![queue(
                "risk",
                PRIORITY_VIP,
                &["open_complaint"],
                "open complaint on file"
            )]
        );

        // Unknown and ordinary callers: the demo as before.
        for caller in [
            None,
            Some(FlowEvent::CallerKnown {
                profile: CallerProfile::default(),
                status: LookupStatus::NotFound,
            }),
            Some(customer(|_| {})),
        ] {
            let mut sim = Sim::demo_for(caller);
            assert_eq!(play_of(&sim.answer()), vec!["greeting"]);
            assert_eq!(play_of(&sim.finish()), vec!["main-menu"]);
            assert!(sim.record().routes.is_empty());
        }
    }

    #[test]
    fn only_the_first_lookup_counts() {
        let mut sim = Sim::demo_for(Some(customer(|p| p.age = Some(70))));
        sim.send(customer(|p| p.segment = Some("vip".into())));
        sim.answer();
        assert_eq!(sim.record().caller.segment.as_deref(), Some("standard"));
        assert_eq!(sim.record().routes, vec!["elderly"]);
    }

    #[test]
    fn fast_lane_offer_plays_once_and_zero_works_in_every_menu() {
        let mut sim = Sim::demo_for(Some(customer(|p| p.age = Some(72))));
        sim.answer();
        // The offer plays once, before the first menu prompt.
        assert_eq!(play_of(&sim.finish()), vec![OFFER, "main-menu"]);
        sim.finish();
        assert_eq!(play_of(&sim.press("3")), vec!["credit-menu"]);
        sim.finish();
        assert_eq!(
            play_of(&sim.press("1")),
            vec!["repayment-date", "credit-menu"]
        );
        // The credit menu has no 0: the fast lane's, with the route's hold prompt.
        let actions = sim.press("0");
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert_eq!(
            sim.finish(),
            vec![queue(
                "agents",
                PRIORITY_FAST_LANE,
                &["elderly"],
                "elderly caller, repayment date"
            )]
        );
        // Without the route, 0 means nothing in the credit menu.
        let mut sim = Sim::at_credit(Some(customer(|_| {})));
        assert_eq!(play_of(&sim.press("0")), vec!["no-match", "credit-menu"]);
    }

    #[test]
    fn fast_lane_phrases_work_in_every_menu_and_win_over_the_menus_own() {
        let mut sim = Sim::at_credit(Some(customer(|p| p.age = Some(90))));
        assert!(sim.grammar().contains(&"operator".to_string()));
        let actions = sim.say("operator please", 0.9);
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert_eq!(
            transcripts(&sim),
            vec![spoken(
                "credit",
                "operator please",
                Some("credit:fast_lane")
            )]
        );
        let actions = sim.finish();
        assert!(matches!(
            &actions[..],
            [FlowAction::Queue {
                priority: PRIORITY_FAST_LANE,
                ..
            }]
        ));
        // In the main menu "agent" is also the menu's own 0: the fast lane wins.
        let mut sim = Sim::demo_for(Some(customer(|p| p.age = Some(90))));
        sim.answer();
        sim.finish();
        sim.say("agent", 0.9);
        assert!(matches!(
            &sim.finish()[..],
            [FlowAction::Queue { queue, priority: PRIORITY_FAST_LANE, .. }] if queue == "agents"
        ));
    }

    #[test]
    fn fast_lane_transfer_mode_queues_at_once() {
        let text = DEMO.replace(
            "mode = \"offer\", prompt = \"please-hold\"",
            "mode = \"transfer\", priority = 12",
        );
        let mut sim = Sim::demo_for(None);
        sim.flow = CallFlow::new(plan(&text));
        sim.send(customer(|p| p.age = Some(66)));
        assert_eq!(
            sim.answer(),
            vec![queue("agents", 12, &["elderly"], "elderly caller")]
        );
        assert_eq!(sim.record().queued, vec!["agents"]);
    }

    #[test]
    fn queue_action_carries_priority_reasons_and_whisper() {
        // The agent hears what the caller came for: the last option chosen.
        let mut sim = Sim::at_main_menu(DEMO);
        sim.press("2");
        sim.finish();
        sim.press("0");
        assert_eq!(
            sim.finish(),
            vec![queue("agents", PRIORITY_NORMAL, &[], "lost card")]
        );
        // An option's own priority and whisper.
        let mut sim = at_menu(
            r#"entry = "m"
[menus.m]
prompt = "p"
[menus.m.options]
1 = { play = "bal", label = "balance", say = "balance" }
2 = { queue = "risk", priority = 7, whisper = "complaint" }
3 = { queue = "risk" }
[queues.risk]
"#,
        );
        sim.press("1");
        sim.finish();
        assert_eq!(
            sim.press("2"),
            vec![queue("risk", 7, &[], "balance, complaint")]
        );
        let mut sim = Sim::new(
            "entry = \"m\"\n[menus.m]\nprompt = \"p\"\noptions.3 = { queue = \"risk\" }\n[queues.risk]\n",
        );
        sim.answer();
        sim.finish();
        assert_eq!(
            sim.press("3"),
            vec![queue("risk", PRIORITY_NORMAL, &[], "")]
        );
    }

    /// A demo caller queued for the agents.
    fn queued_for_agents() -> Sim {
        let mut sim = Sim::at_main_menu(DEMO);
        sim.press("0");
        sim.finish();
        assert!(sim.flow.is_queued());
        assert_eq!(sim.flow.poll_timeout(), None, "the ACD decides how long");
        assert!(sim.press("5").is_empty(), "keys while queued are ignored");
        sim
    }

    #[test]
    fn after_hours_plays_the_queues_message_then_hangs_up() {
        let mut sim = queued_for_agents();
        let actions = sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::AfterHours,
        });
        let played = play_of(&actions);
        assert!(
            played[0].starts_with("tts:Our phone banking team is available"),
            "{played:?}"
        );
        assert!(!sim.interruptible());
        let unavailable = Outcome::QueueUnavailable {
            queue: "agents".into(),
            reason: UnavailableReason::AfterHours,
        };
        assert_eq!(sim.record().outcome, unavailable);
        assert_eq!(
            sim.finish(),
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
        assert_eq!(sim.record().outcome, unavailable);
    }

    #[test]
    fn overflow_requests_a_callback_and_confirms() {
        let mut sim = queued_for_agents();
        let actions = sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::Overflow,
        });
        assert_eq!(
            actions.first(),
            Some(&FlowAction::RequestCallback {
                queue: "agents".into()
            })
        );
        assert!(play_of(&actions)[0].starts_with("tts:All our agents are busy"));
        assert!(sim.callback && sim.record().callback_requested);
        assert_eq!(
            sim.record().outcome,
            Outcome::CallbackRequested {
                queue: "agents".into()
            }
        );
        sim.finish();
        assert!(sim.flow.is_finished());
    }

    #[test]
    fn no_agents_records_a_voicemail() {
        let mut sim = queued_for_agents();
        let actions = sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::NoAgents,
        });
        assert!(play_of(&actions)[0].starts_with("tts:No one can take your call"));
        let actions = sim.finish();
        assert_eq!(
            actions,
            vec![FlowAction::RecordVoicemail {
                queue: "agents".into(),
                max: Duration::from_secs(120)
            }]
        );
        assert_eq!(
            sim.flow.poll_timeout(),
            Some(sim.now + Duration::from_secs(120) + VOICEMAIL_GRACE)
        );
        assert_eq!(
            sim.send(FlowEvent::VoicemailDone),
            vec![FlowAction::Hangup {
                cause: HangupCause::Normal
            }]
        );
        assert_eq!(
            sim.record().outcome,
            Outcome::VoicemailLeft {
                queue: "agents".into()
            }
        );
        // Hanging up ends the message and keeps it; a silent shell times out.
        let mut sim = queued_for_agents();
        sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::NoAgents,
        });
        sim.finish();
        sim.send(FlowEvent::Hangup);
        assert!(matches!(
            sim.record().outcome,
            Outcome::VoicemailLeft { .. }
        ));
        let mut sim = queued_for_agents();
        sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::NoAgents,
        });
        sim.finish();
        assert!(matches!(&sim.time_out()[..], [FlowAction::Hangup { .. }]));
    }

    #[test]
    fn fallback_can_continue_in_a_menu() {
        let mut sim = Sim::demo_for(Some(customer(|p| p.segment = Some("vip".into()))));
        sim.answer();
        sim.finish();
        let actions = sim.send(FlowEvent::QueueUnavailable {
            reason: UnavailableReason::Overflow,
        });
        let played = play_of(&actions);
        assert!(played[0].starts_with("tts:Your personal banking team is busy"));
        assert_eq!(played[1], "main-menu");
        assert_eq!(sim.record().path, vec!["main"]);
        sim.finish();
        assert!(!sim.flow.is_finished() && sim.flow.poll_timeout().is_some());
    }

    #[test]
    fn hanging_up_in_the_queue_abandons_it_and_later_events_are_ignored() {
        let mut sim = queued_for_agents();
        sim.send(FlowEvent::Hangup);
        assert_eq!(
            sim.record().outcome,
            Outcome::QueueAbandoned {
                queue: "agents".into()
            }
        );
        assert!(sim
            .send(FlowEvent::Connected { agent: "x".into() })
            .is_empty());
        assert!(sim
            .send(FlowEvent::QueueUnavailable {
                reason: UnavailableReason::Overflow
            })
            .is_empty());
        // Queue events outside a queue mean nothing.
        let mut sim = Sim::at_main_menu(DEMO);
        assert!(sim
            .send(FlowEvent::Connected { agent: "x".into() })
            .is_empty());
        assert!(sim.send(FlowEvent::VoicemailDone).is_empty());
        assert_eq!(sim.record().outcome, Outcome::InProgress);
    }

    const PHRASE: &str =
        "tts:For your security, please say: at Warmline Bank, my voice confirms who I am.";

    /// A known customer's limit increase: the passphrase prompt, then the check.
    fn verifying() -> Sim {
        let mut sim = Sim::at_credit(Some(customer(|_| {})));
        let actions = sim.press("2");
        assert_eq!(play_of(&actions), vec![PHRASE]);
        assert!(
            !sim.interruptible(),
            "the passphrase prompt is heard to the end"
        );
        assert!(sim.listening.is_none());
        assert!(sim.press("1").is_empty());
        assert_eq!(
            sim.finish(),
            vec![FlowAction::VerifyVoice {
                customer_id: "C-1".into(),
                ask_phrase: true
            }]
        );
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + VOICE_VERIFY_WAIT));
        sim
    }

    fn verified(sim: &mut Sim, decision: VoiceDecision, score: Option<f32>) -> Vec<FlowAction> {
        sim.send(FlowEvent::VoiceVerified { decision, score })
    }

    #[test]
    fn accepted_voice_continues_and_is_recorded() {
        let mut sim = verifying();
        let actions = verified(&mut sim, VoiceDecision::Accepted, Some(0.91));
        assert_eq!(play_of(&actions), vec!["limit-increase", "credit-menu"]);
        assert_eq!(
            sim.record().voice,
            Some(VoiceResult {
                decision: VoiceDecision::Accepted,
                score: Some(0.91)
            })
        );
    }

    #[test]
    fn rejected_voice_goes_to_the_risk_desk_with_the_reason() {
        let mut sim = verifying();
        let actions = verified(&mut sim, VoiceDecision::Rejected, Some(0.12));
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert_eq!(
            sim.finish(),
            vec![queue(
                "risk",
                PRIORITY_NORMAL,
                &[REASON_VOICE_REJECTED],
                "voice check failed, credit limit increase, limit increase"
            )]
        );
    }

    #[test]
    fn not_enough_speech_goes_to_an_agent_also_on_timeout() {
        let mut sim = verifying();
        verified(&mut sim, VoiceDecision::NotEnoughSpeech, Some(f32::NAN));
        assert_eq!(
            sim.record().voice.and_then(|v| v.score),
            None,
            "NaN is no score"
        );
        assert!(
            matches!(&sim.finish()[..], [FlowAction::Queue { queue, .. }] if queue == "agents")
        );
        let mut sim = verifying();
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert_eq!(
            sim.record().voice.map(|v| v.decision),
            Some(VoiceDecision::NotEnoughSpeech)
        );
        // A late answer is ignored.
        assert!(verified(&mut sim, VoiceDecision::Accepted, None).is_empty());
    }

    #[test]
    fn unknown_caller_is_not_enrolled_without_asking() {
        let mut sim = Sim::at_credit(None);
        let actions = sim.press("2");
        assert!(!sim
            .raw
            .iter()
            .any(|a| matches!(a, FlowAction::VerifyVoice { .. })));
        assert_eq!(play_of(&actions), vec!["limit-increase", "credit-menu"]);
        assert_eq!(
            sim.record().voice,
            Some(VoiceResult {
                decision: VoiceDecision::NotEnrolled,
                score: None
            })
        );
    }

    #[test]
    fn voice_check_reuses_what_the_caller_said_and_asks_once_if_too_little() {
        let mut sim = Sim::at_credit(Some(customer(|_| {})));
        let actions = sim.say("yes I would like to increase my credit limit please", 0.95);
        assert_eq!(
            actions,
            vec![FlowAction::VerifyVoice {
                customer_id: "C-1".into(),
                ask_phrase: false
            }]
        );
        let actions = verified(&mut sim, VoiceDecision::NotEnoughSpeech, None);
        assert_eq!(play_of(&actions), vec![PHRASE]);
        assert_eq!(
            sim.finish(),
            vec![FlowAction::VerifyVoice {
                customer_id: "C-1".into(),
                ask_phrase: true
            }]
        );
        let actions = verified(&mut sim, VoiceDecision::Accepted, Some(0.8));
        assert_eq!(play_of(&actions), vec!["limit-increase", "credit-menu"]);
    }

    #[test]
    fn routes_reading_voice_are_checked_when_the_decision_is_known() {
        let text = r#"entry = "m"
[[routes]]
when = "voice == 'rejected' and segment == 'vip'"
reason = "vip_check"
whisper = "VIP, voice mismatch"
action = { queue = "risk", priority = 9 }
[queues.risk]
[menus.m]
prompt = "p"
[menus.m.options]
1 = { verify_voice = { phrase_prompt = "say-it", on_accept = "m", on_reject = "hangup", on_not_enough = "hangup" } }
"#;
        for (segment, expected) in [
            (
                "vip",
                vec![queue(
                    "risk",
                    9,
                    &[REASON_VOICE_REJECTED, "vip_check"],
                    "voice check failed, VIP, voice mismatch",
                )],
            ),
            (
                "standard",
                vec![FlowAction::Hangup {
                    cause: HangupCause::Normal,
                }],
            ),
        ] {
            let mut sim = Sim::new(text);
            sim.send(customer(|p| p.segment = Some(segment.into())));
            sim.answer();
            sim.finish();
            assert!(
                sim.record().routes.is_empty(),
                "no decision yet at the answer"
            );
            sim.press("1");
            assert_eq!(sim.prompts(), vec!["say-it"]);
            sim.finish();
            assert_eq!(
                verified(&mut sim, VoiceDecision::Rejected, Some(0.2)),
                expected,
                "{segment}"
            );
        }
    }

    #[test]
    fn watchlist_hit_waits_for_a_safe_point() {
        let mut sim = Sim::at_credit(Some(customer(|_| {})));
        sim.press("2"); // the passphrase prompt: not a safe point
        let hit = FlowEvent::WatchlistHit {
            entry: "fraud ring 7".into(),
            score: 0.97,
        };
        assert!(sim.send(hit).is_empty());
        assert_eq!(
            sim.record().watchlist,
            vec![WatchlistMatch {
                entry: "fraud ring 7".into(),
                score: 0.97
            }]
        );
        assert!(matches!(
            &sim.finish()[..],
            [FlowAction::VerifyVoice { .. }]
        ));
        // The check ends in the credit menu: the first safe point. The prompt that just
        // started is stopped and the call goes to the risk desk.
        let actions = verified(&mut sim, VoiceDecision::Accepted, Some(0.9));
        assert!(
            matches!(
                &actions[..],
                [
                    FlowAction::Play { .. },
                    FlowAction::StopPlayback,
                    FlowAction::Play { .. }
                ]
            ),
            "{actions:?}"
        );
        assert_eq!(play_of(&actions[2..]), vec!["please-hold"]);
        assert_eq!(
            sim.finish(),
            vec![queue(
                "risk",
                8,
                &[REASON_WATCHLIST],
                "watchlist match, credit limit increase"
            )]
        );
        // Once queued a hit is only recorded, and the fraud action ran once.
        assert!(sim
            .send(FlowEvent::WatchlistHit {
                entry: "again".into(),
                score: f32::NAN
            })
            .is_empty());
        assert_eq!(sim.record().watchlist[1].score, 0.0);
    }

    #[test]
    fn watchlist_hit_in_a_menu_routes_at_once() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.send(FlowEvent::WatchlistHit {
            entry: "W".into(),
            score: 0.9,
        });
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert!(
            !actions.contains(&FlowAction::StopPlayback),
            "nothing was playing"
        );
        // Before the answer: the fraud action replaces the greeting.
        let mut sim = Sim::demo();
        sim.send(FlowEvent::WatchlistHit {
            entry: "W".into(),
            score: 0.9,
        });
        assert_eq!(play_of(&sim.answer()), vec!["please-hold"]);
        assert!(
            matches!(&sim.finish()[..], [FlowAction::Queue { queue, priority: 8, .. }] if queue == "risk")
        );
    }

    #[test]
    fn watchlist_flag_only_records_and_tags_later_queues() {
        let text = DEMO.replace(
            "on_hit = { queue = \"risk\", priority = 8, prompt = \"please-hold\" }",
            "on_hit = \"flag\"",
        );
        let mut sim = Sim::at_main_menu(&text);
        assert!(sim
            .send(FlowEvent::WatchlistHit {
                entry: "W".into(),
                score: 0.9
            })
            .is_empty());
        sim.press("0");
        assert_eq!(
            sim.finish(),
            vec![queue(
                "agents",
                PRIORITY_NORMAL,
                &[REASON_WATCHLIST],
                "watchlist match, agent"
            )]
        );
    }

    #[test]
    fn a_late_lookup_routes_at_the_next_safe_point() {
        let mut sim = Sim::demo();
        sim.answer(); // the greeting plays
        let actions = sim.send(customer(|p| p.segment = Some("vip".into())));
        assert_eq!(actions.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert!(
            matches!(&sim.finish()[..], [FlowAction::Queue { queue, .. }] if queue == "experts")
        );
        // A late offer plays before the next menu prompt.
        let mut sim = Sim::demo();
        sim.answer();
        assert!(sim.send(customer(|p| p.age = Some(65))).is_empty());
        assert_eq!(play_of(&sim.finish()), vec![OFFER, "main-menu"]);
    }

    // --- speech -------------------------------------------------------------------------

    const SPEECH: &str = r#"entry = "hello"
[speech]
confidence = 0.6
reject_below = 0.3
[defaults]
no_input_prompt = "ni"
no_match_prompt = "nm"
anything_else_text = "Anything else?"
[menus.hello]
prompt = "hi"
next = "m"
[menus.m]
prompt = "pm"
[menus.m.options]
1 = { play = "bal", say = ["check balance", "balance"] }
2 = { play = "blocked", say = ["lost card", "stolen card"], label = "a lost card" }
3 = { goto = "sub", say = "credit card" }
0 = { transfer = "agents", prompt = "hold", say = ["agent", "representative"] }
[[menus.m.answers]]
say = ["opening hours", "when are you open"]
answer_text = "We are open nine to five."
[[menus.m.answers]]
say = "fees"
answer = "fees"
then = "anything-else"
[menus.sub]
prompt = "ps"
[menus.sub.options]
1 = { play = "due", say = "repayment date" }
"*" = { goto = "m", say = "main menu" }
"#;

    impl Sim {
        fn speak(&mut self) -> Vec<FlowAction> {
            self.send(FlowEvent::SpeechStarted)
        }

        /// A transcript with one confidence for the utterance and no per-word ones.
        fn say(&mut self, text: &str, confidence: f32) -> Vec<FlowAction> {
            self.send(FlowEvent::Transcript {
                text: text.to_string(),
                confidence,
                words: Vec::new(),
            })
        }

        fn grammar(&self) -> Vec<String> {
            self.listening.clone().expect("a turn is open")
        }
    }

    fn spoken(menu: &str, text: &str, matched: Option<&str>) -> (String, String, Option<String>) {
        (menu.into(), text.into(), matched.map(String::from))
    }

    fn transcripts(sim: &Sim) -> Vec<(String, String, Option<String>)> {
        sim.record()
            .transcripts
            .iter()
            .map(|t| (t.menu.clone(), t.text.clone(), t.matched.clone()))
            .collect()
    }

    #[test]
    fn menu_listens_from_the_start_of_an_interruptible_prompt() {
        let mut sim = Sim::new(SPEECH);
        let actions = sim.flow.handle(FlowEvent::Answered, sim.now);
        sim.keep(actions.clone());
        // The greeting listens with the grammar of the menu it leads to (plus say-anything).
        assert!(matches!(
            actions.as_slice(),
            [FlowAction::Play { .. }, FlowAction::Listen { .. }]
        ));
        let FlowAction::Listen {
            grammar,
            language,
            end_silence,
        } = &actions[1]
        else {
            unreachable!()
        };
        assert_eq!(language, "en");
        assert_eq!(*end_silence, Duration::from_millis(600));
        assert_eq!(grammar.last().map(String::as_str), Some("[unk]"));
        for phrase in ["lost card", "agent", "opening hours", "repayment date"] {
            assert!(
                grammar.iter().any(|g| g == phrase),
                "{phrase} in {grammar:?}"
            );
        }
        assert!(
            !grammar.iter().any(|g| g == "main menu"),
            "sub's way back to m is left out of m's grammar"
        );
        // The greeting ends: its turn closes, the menu's opens with its prompt.
        sim.finish();
        assert_eq!(
            sim.raw,
            vec![
                FlowAction::StopListening,
                FlowAction::Play {
                    playback: 2,
                    prompts: vec![PromptItem::Recorded("pm".into())],
                    interruptible: true
                },
                FlowAction::Listen {
                    grammar: grammar.clone(),
                    language: "en".into(),
                    end_silence: Duration::from_millis(600)
                },
            ]
        );
        // The prompt ends: the turn stays open and the no-input timer starts.
        sim.finish();
        assert!(sim.raw.is_empty(), "{:?}", sim.raw);
        assert!(sim.flow.is_listening());
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + SECOND * 5));
    }

    #[test]
    fn prompt_without_barge_in_listens_only_after_it() {
        let mut sim =
            Sim::new(&SPEECH.replace("prompt = \"pm\"\n", "prompt = \"pm\"\nbarge_in = false\n"));
        sim.answer();
        sim.finish();
        assert_eq!(sim.prompts(), vec!["pm"]);
        assert!(!sim.interruptible());
        assert!(
            sim.listening.is_none(),
            "nothing can be said over this prompt"
        );
        assert!(sim.speak().is_empty(), "speech over it is not a barge-in");
        assert_eq!(sim.prompts(), vec!["pm"], "still playing");
        sim.finish();
        assert!(matches!(sim.raw.as_slice(), [FlowAction::Listen { .. }]));
        assert!(sim.grammar().contains(&"lost card".to_string()));
    }

    #[test]
    fn speech_selects_an_option() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.say("I want to check my balance", 0.9);
        assert_eq!(play_of(&actions), vec!["balance", "main-menu"]);
        assert_eq!(sim.raw.first(), Some(&FlowAction::StopListening));
        assert!(
            matches!(sim.raw.last(), Some(FlowAction::Listen { .. })),
            "the menu listens again with the answer"
        );
        assert_eq!(
            sim.record().path,
            vec!["greeting", "main(voice:balance)", "main"]
        );
        assert_eq!(sim.record().digits, "");
        assert_eq!(
            transcripts(&sim),
            vec![spoken("main", "I want to check my balance", Some("main:1"))]
        );
        let t = &sim.record().transcripts[0];
        assert!(
            (t.confidence - 0.9).abs() < 1e-6 && (t.score - 0.9).abs() < 1e-6,
            "{t:?}"
        );
        // An agent by voice: hold prompt (no turn during it), then the queue; the agent hears
        // what the caller asked for before.
        let actions = sim.say("representative please", 0.95);
        assert_eq!(sim.raw.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["please-hold"]);
        assert!(sim.listening.is_none());
        assert_eq!(
            sim.finish(),
            vec![FlowAction::Queue {
                queue: "agents".into(),
                priority: PRIORITY_NORMAL,
                reasons: vec![],
                whisper: "balance".into(),
            }]
        );
    }

    #[test]
    fn say_anything_at_the_greeting_jumps_to_the_option() {
        let mut sim = Sim::demo();
        sim.answer();
        assert_eq!(sim.speak(), vec![FlowAction::StopPlayback]);
        let actions = sim.say("I lost my card", 0.92);
        assert_eq!(play_of(&actions), vec!["card-blocked", "main-menu"]);
        assert_eq!(
            sim.record().path,
            vec!["greeting", "main(voice:lost card)", "main"]
        );
        assert_eq!(
            sim.record().path[..2].join(">"),
            "greeting>main(voice:lost card)"
        );
        assert_eq!(
            transcripts(&sim),
            vec![spoken("greeting", "I lost my card", Some("main:2"))]
        );

        // A phrase of a deeper menu runs that menu's option as if the caller had gone there.
        let mut sim = Sim::demo();
        sim.answer();
        let actions = sim.say("my repayment date", 0.9);
        assert_eq!(
            sim.raw.first(),
            Some(&FlowAction::StopPlayback),
            "barge-in without SpeechStarted"
        );
        assert_eq!(play_of(&actions), vec!["repayment-date", "credit-menu"]);
        assert_eq!(
            sim.record().path,
            vec!["greeting", "credit(voice:repayment date)", "credit"]
        );
        assert_eq!(sim.record().final_menu.as_deref(), Some("credit"));
        // Only the opening menus understand everything: credit has its own phrases.
        sim.finish();
        let actions = sim.say("lost card", 0.95);
        assert_eq!(play_of(&actions), vec!["no-match", "credit-menu"]);
        assert_eq!(sim.record().transcripts[1].matched, None);
    }

    #[test]
    fn say_anything_can_be_switched_off() {
        let text = DEMO.replace("say_anything = true", "say_anything = false");
        assert_ne!(text, DEMO, "the demo sets say_anything");
        let mut sim = Sim::new(&text);
        sim.answer();
        assert!(!sim.grammar().contains(&"repayment date".to_string()));
        let actions = sim.say("repayment date", 0.9);
        assert_eq!(play_of(&actions), vec!["no-match", "main-menu"]);
        assert_eq!(sim.record().path, vec!["greeting", "main"]);
    }

    #[test]
    fn speech_over_the_greeting_that_matches_nothing_counts_in_the_main_menu() {
        let mut sim = Sim::demo();
        sim.answer();
        sim.speak();
        let actions = sim.say("what's the weather like", 0.9);
        assert_eq!(play_of(&actions), vec!["no-match", "main-menu"]);
        assert_eq!(sim.record().path, vec!["greeting", "main"]);
        assert_eq!(
            transcripts(&sim),
            vec![spoken("greeting", "what's the weather like", None)]
        );
    }

    #[test]
    fn barge_in_on_speech_stops_an_interruptible_prompt_only() {
        let mut sim = Sim::new(SPEECH);
        sim.answer();
        sim.finish();
        assert!(sim.interruptible());
        let actions = sim.speak();
        assert_eq!(actions, vec![FlowAction::StopPlayback]);
        assert!(sim.playing.is_none());
        assert!(
            sim.flow.is_listening(),
            "the turn stays open for the transcript"
        );
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + TRANSCRIPT_WAIT));
        assert!(sim.speak().is_empty(), "a second onset changes nothing");

        // The hold prompt before a transfer cannot be interrupted: no turn, no barge-in.
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.press("0");
        assert!(!sim.interruptible());
        assert!(sim.speak().is_empty());
        assert_eq!(sim.prompts(), vec!["hold"]);
        assert!(sim.say("agent", 0.9).is_empty());
        assert!(sim.record().transcripts.is_empty(), "nothing was listening");
    }

    #[test]
    fn low_confidence_asks_to_confirm_and_yes_proceeds() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.say("stolen card", 0.45);
        assert_eq!(play_of(&actions), vec!["tts:Did you say a lost card?"]);
        assert!(sim.interruptible());
        let grammar = sim.grammar();
        for word in ["yes", "yeah", "correct", "no", "nope", "[unk]"] {
            assert!(grammar.iter().any(|g| g == word), "{word} in {grammar:?}");
        }
        assert!(!grammar.iter().any(|g| g == "lost card"));
        assert_eq!(sim.record().path, vec!["hello", "m"], "nothing chosen yet");
        sim.finish();
        let actions = sim.say("yeah", 0.8);
        assert_eq!(play_of(&actions), vec!["blocked", "pm"]);
        assert_eq!(
            sim.record().path,
            vec!["hello", "m(voice:a lost card)", "m"]
        );
        assert_eq!(
            transcripts(&sim),
            vec![
                spoken("m", "stolen card", Some("m:2")),
                spoken("m", "yeah", Some("yes"))
            ]
        );
        assert!((sim.record().transcripts[0].score - 0.45).abs() < 1e-6);
    }

    #[test]
    fn confirmation_no_reprompts_the_menu_and_counts_as_an_attempt() {
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.say("lost card", 0.5);
        let actions = sim.say("no", 0.9);
        assert_eq!(play_of(&actions), vec!["pm"], "the menu again, no apology");
        assert!(
            sim.grammar().contains(&"lost card".to_string()),
            "the menu's grammar again"
        );
        assert_eq!(sim.record().transcripts[1].matched.as_deref(), Some("no"));
        sim.finish();
        sim.say("nope nothing", 0.1); // 2: below reject_below
        sim.finish();
        sim.say("lost card", 0.5);
        let actions = sim.say("nope", 0.9); // 3: attempts used up
        assert_eq!(
            actions,
            vec![
                FlowAction::StopPlayback,
                FlowAction::Hangup {
                    cause: HangupCause::AttemptsExhausted
                }
            ]
        );
        assert_eq!(sim.record().outcome, Outcome::AttemptsExhausted);
    }

    #[test]
    fn confirmation_by_keys_one_is_yes_two_is_no() {
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.say("credit card", 0.4);
        let actions = sim.press("1");
        assert_eq!(
            sim.raw[..2],
            [FlowAction::StopPlayback, FlowAction::StopListening]
        );
        assert_eq!(play_of(&actions), vec!["ps"]);
        assert_eq!(
            sim.record().path,
            vec!["hello", "m(voice:credit card)", "sub"]
        );

        let mut sim = Sim::at_main_menu(SPEECH);
        sim.say("credit card", 0.4);
        sim.finish();
        let actions = sim.press("2");
        assert_eq!(play_of(&actions), vec!["pm"]);
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.say("credit card", 0.4);
        let actions = sim.press("5");
        assert_eq!(play_of(&actions), vec!["nm", "pm"]);
        assert_eq!(sim.record().digits, "5");
    }

    #[test]
    fn confirmation_silence_is_no_input() {
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.say("balance", 0.55); // exact phrase, low confidence: confirm
        assert_eq!(sim.prompts(), vec!["tts:Did you say check balance?"]);
        sim.finish();
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
        assert!(sim.grammar().contains(&"check balance".to_string()));
    }

    #[test]
    fn below_reject_or_unrelated_speech_is_a_no_match() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.say("lost card", 0.2);
        assert_eq!(play_of(&actions), vec!["nm", "pm"]);
        let actions = sim.say("pizza delivery", 0.99);
        assert_eq!(sim.raw.first(), Some(&FlowAction::StopPlayback));
        assert_eq!(play_of(&actions), vec!["nm", "pm"]);
        let actions = sim.say("[unk]", 0.99); // 3rd failure: final action (hang up)
        assert!(actions.contains(&FlowAction::Hangup {
            cause: HangupCause::AttemptsExhausted
        }));
        assert_eq!(
            transcripts(&sim),
            vec![
                spoken("m", "lost card", None),
                spoken("m", "pizza delivery", None),
                spoken("m", "[unk]", None)
            ]
        );
    }

    #[test]
    fn per_word_confidences_decide_over_the_utterance_confidence() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.send(FlowEvent::Transcript {
            text: "lost card".into(),
            confidence: 0.95,
            words: vec![("lost".into(), 0.4), ("card".into(), 0.5)],
        });
        assert_eq!(play_of(&actions), vec!["tts:Did you say a lost card?"]);
    }

    #[test]
    fn speech_timeout_is_no_input_then_the_final_action() {
        let mut sim = Sim::new(SPEECH);
        sim.answer();
        sim.finish();
        assert!(
            sim.send(FlowEvent::SpeechTimeout).is_empty(),
            "ignored while the prompt plays"
        );
        sim.finish();
        let actions = sim.send(FlowEvent::SpeechTimeout);
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
        assert_eq!(sim.raw.first(), Some(&FlowAction::StopListening));
        sim.finish();
        sim.press("7"); // keys and speech share the attempts
        sim.finish();
        let actions = sim.send(FlowEvent::SpeechTimeout);
        assert_eq!(
            actions,
            vec![FlowAction::Hangup {
                cause: HangupCause::AttemptsExhausted
            }]
        );
        assert_eq!(sim.record().outcome, Outcome::AttemptsExhausted);
        assert!(sim.send(FlowEvent::SpeechTimeout).is_empty());
    }

    #[test]
    fn missing_transcript_after_speech_started_is_no_input() {
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.speak();
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + TRANSCRIPT_WAIT));
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
        // Over the greeting: the silence counts in the menu it leads to.
        let mut sim = Sim::new(SPEECH);
        sim.answer();
        sim.speak();
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
        assert_eq!(sim.record().path, vec!["hello", "m"]);
    }

    #[test]
    fn speech_no_input_timeout_applies_where_the_menu_listens() {
        let text = SPEECH.replace(
            "reject_below = 0.3\n",
            "reject_below = 0.3\nno_input_timeout = 8\n",
        );
        let sim = Sim::at_main_menu(&text);
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + SECOND * 8));
        // A menu without phrases keeps its own timeout.
        let mut sim = Sim::at_main_menu(
            &text
                .replace(
                    "\"*\" = { goto = \"m\", say = \"main menu\" }",
                    "\"*\" = { goto = \"m\" }",
                )
                .replace(
                    "1 = { play = \"due\", say = \"repayment date\" }",
                    "1 = { play = \"due\" }",
                ),
        );
        sim.press("3");
        sim.finish();
        assert!(sim.listening.is_none(), "sub has no phrases");
        assert_eq!(sim.flow.poll_timeout(), Some(sim.now + SECOND * 5));
    }

    #[test]
    fn key_during_listening_wins() {
        let mut sim = Sim::at_main_menu(SPEECH);
        sim.speak();
        let actions = sim.press("2");
        assert_eq!(sim.raw.first(), Some(&FlowAction::StopListening));
        assert_eq!(play_of(&actions), vec!["blocked", "pm"]);
        assert_eq!(sim.record().path, vec!["hello", "m", "m"], "no voice mark");
        // During the prompt: stop it, close the turn, act on the key.
        let actions = sim.press("3");
        assert_eq!(
            sim.raw[..2],
            [FlowAction::StopPlayback, FlowAction::StopListening]
        );
        assert_eq!(play_of(&actions), vec!["ps"]);
        // A key while the caller talks over the greeting counts in the menu it leads to.
        let mut sim = Sim::new(SPEECH);
        sim.answer();
        sim.speak();
        let actions = sim.press("1");
        assert_eq!(play_of(&actions), vec!["bal", "pm"]);
        assert_eq!(sim.record().path, vec!["hello", "m", "m"]);
        // A multi-digit wait does not listen; no-match after it listens again.
        let mut sim = Sim::at_main_menu(&SPEECH.replace("3 = { goto", "34 = { goto"));
        assert!(sim.press("3").is_empty());
        assert!(sim.listening.is_none());
        assert!(sim.speak().is_empty() && sim.say("balance", 1.0).is_empty());
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["nm", "pm"]);
        assert!(sim.listening.is_some());
    }

    #[test]
    fn faq_answer_then_back_to_the_menu() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.say("when are you open", 0.9);
        assert_eq!(
            play_of(&actions),
            vec!["tts:We are open nine to five.", "pm"]
        );
        assert!(sim.interruptible());
        assert_eq!(
            sim.record().path,
            vec!["hello", "m(voice:opening hours)", "m"]
        );
        assert_eq!(
            sim.record().transcripts[0].matched.as_deref(),
            Some("m:opening hours")
        );
        // The answer can be interrupted like any prompt that leads to input.
        let actions = sim.say("balance please", 1.0);
        assert_eq!(play_of(&actions), vec!["bal", "pm"]);
    }

    #[test]
    fn faq_answer_then_anything_else() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.say("the fees please", 0.9);
        assert_eq!(play_of(&actions), vec!["fees", "tts:Anything else?"]);
        assert_eq!(sim.record().path, vec!["hello", "m(voice:fees)", "m"]);
        sim.finish();
        assert!(sim.flow.poll_timeout().is_some(), "waiting in m");
        // Silence after "anything else?" re-prompts with the menu prompt.
        let actions = sim.time_out();
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
        // FAQ answers are reachable from the greeting too (say-anything).
        let mut sim = Sim::new(SPEECH);
        sim.answer();
        let actions = sim.say("opening hours", 0.9);
        assert_eq!(
            play_of(&actions),
            vec!["tts:We are open nine to five.", "pm"]
        );
        assert_eq!(
            sim.record().path,
            vec!["hello", "m(voice:opening hours)", "m"]
        );
    }

    #[test]
    fn dialplan_without_phrases_never_listens() {
        let mut sim = Sim::new(MULTI);
        let mut all = sim.flow.handle(FlowEvent::Answered, sim.now);
        sim.keep(all.clone());
        all.extend(sim.finish());
        all.extend(sim.press("9"));
        all.extend(sim.speak());
        all.extend(sim.say("one", 1.0));
        all.extend(sim.send(FlowEvent::SpeechTimeout));
        sim.finish();
        all.extend(sim.time_out());
        all.extend(sim.raw.clone());
        assert!(sim.flow.poll_timeout().is_none() || sim.listening.is_none());
        assert!(
            !all.iter()
                .any(|a| matches!(a, FlowAction::Listen { .. } | FlowAction::StopListening)),
            "{all:?}"
        );
        assert!(sim.record().transcripts.is_empty());
        // Speech switched off keeps a dialplan with phrases to keys.
        let mut sim = Sim::new(&SPEECH.replace("[speech]\n", "[speech]\nenabled = false\n"));
        sim.answer();
        assert!(sim.listening.is_none());
        assert!(sim.speak().is_empty());
    }

    #[test]
    fn call_language_picks_phrases_and_texts() {
        let text = r#"entry = "m"
[speech]
confirm_text = { en = "Did you say {label}?", zh = "您是说{label}吗？" }
[menus.m]
prompt = "p"
[menus.m.options]
2 = { play = "blocked", say = { en = ["lost card"], zh = ["挂失 银行卡"] }, label = { zh = "挂失" } }
[[menus.m.answers]]
say = { zh = ["营业 时间"] }
answer_text = { en = "Nine to five.", zh = "九点到五点。" }
"#;
        let mut sim = Sim::new(text);
        sim.flow.set_language("fr"); // unknown: ignored
        assert_eq!(sim.flow.language(), "en");
        sim.answer();
        assert_eq!(sim.grammar(), vec!["lost card", "[unk]"]);

        let mut sim = Sim::new(text);
        sim.flow.set_language("zh");
        let actions = sim.flow.handle(FlowEvent::Answered, sim.now);
        sim.keep(actions.clone());
        assert!(actions
            .iter()
            .any(|a| matches!(a, FlowAction::Listen { language, .. } if language == "zh")));
        assert_eq!(sim.grammar(), vec!["挂失 银行卡", "营业 时间", "[unk]"]);
        let actions = sim.say("我 要 挂失 银行卡", 0.5);
        assert_eq!(play_of(&actions), vec!["tts:您是说挂失吗？"]);
        assert!(sim.grammar().contains(&"是的".to_string()));
        let actions = sim.say("是的", 0.9);
        assert_eq!(play_of(&actions), vec!["blocked", "p"]);
        assert_eq!(sim.record().path, vec!["m(voice:挂失)", "m"]);
        let actions = sim.say("营业 时间", 0.9);
        assert_eq!(play_of(&actions), vec!["tts:九点到五点。", "p"]);
    }

    #[test]
    fn speech_events_outside_a_turn_are_ignored() {
        let mut sim = Sim::new(SPEECH);
        assert!(sim.speak().is_empty());
        assert!(sim.say("lost card", 1.0).is_empty());
        assert!(sim.send(FlowEvent::SpeechTimeout).is_empty());
        assert!(sim.record().transcripts.is_empty());
        sim.answer();
        sim.send(FlowEvent::Hangup);
        assert!(sim
            .flow
            .handle(FlowEvent::SpeechStarted, sim.now)
            .is_empty());
        assert!(sim
            .flow
            .handle(
                FlowEvent::Transcript {
                    text: "agent".into(),
                    confidence: 1.0,
                    words: vec![]
                },
                sim.now
            )
            .is_empty());
        assert!(!sim.flow.is_listening());
        assert!(sim.record().transcripts.is_empty());
    }

    #[test]
    fn odd_transcripts_are_bounded_and_never_trusted() {
        let mut sim = Sim::at_main_menu(SPEECH);
        let long = "lost card ".repeat(200);
        let actions = sim.send(FlowEvent::Transcript {
            text: long,
            confidence: f32::NAN,
            words: vec![("card".into(), f32::INFINITY); 1000],
        });
        assert!(!actions.is_empty());
        let t = &sim.record().transcripts[0];
        assert!(t.text.chars().count() <= 500);
        assert_eq!(t.confidence, 0.0);
        assert!((0.0..=1.0).contains(&t.score));
        // An empty transcript is silence.
        let mut sim = Sim::at_main_menu(SPEECH);
        let actions = sim.say("   ", 0.9);
        assert_eq!(play_of(&actions), vec!["ni", "pm"]);
    }

    #[test]
    fn every_demo_option_works_by_voice() {
        for (phrase, prompts, path_mark) in [
            (
                "check my balance please",
                vec!["balance", "main-menu"],
                "main(voice:balance)",
            ),
            (
                "my card was stolen",
                vec!["card-blocked", "main-menu"],
                "main(voice:lost card)",
            ),
            (
                "credit card services",
                vec!["credit-menu"],
                "main(voice:credit card)",
            ),
            (
                "speak to an agent",
                vec!["please-hold"],
                "main(voice:agent)",
            ),
            (
                "stop calling me",
                vec!["opt-out-confirmed", "goodbye"],
                "main(voice:stop calls)",
            ),
        ] {
            let mut sim = Sim::at_main_menu(DEMO);
            let actions = sim.say(phrase, 0.95);
            assert_eq!(play_of(&actions), prompts, "{phrase}");
            assert_eq!(
                sim.record().path.get(1).map(String::as_str),
                Some(path_mark),
                "{phrase}"
            );
        }
        for (phrase, prompts) in [
            ("repayment date", vec!["repayment-date", "credit-menu"]),
            (
                "increase my credit limit",
                vec!["limit-increase", "credit-menu"],
            ),
            ("main menu", vec!["main-menu"]),
        ] {
            let mut sim = Sim::at_main_menu(DEMO);
            sim.press("3");
            sim.finish();
            let actions = sim.say(phrase, 0.95);
            assert_eq!(play_of(&actions), prompts, "{phrase}");
        }
    }

    #[test]
    fn demo_faq_answers_play_text_then_ask_for_anything_else() {
        let mut sim = Sim::at_main_menu(DEMO);
        let actions = sim.say("opening times", 0.9);
        let shown = play_of(&actions);
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("tts:") && shown[0].contains("9"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("tts:") && shown[1].to_lowercase().contains("anything else"),
            "{shown:?}"
        );
        assert_eq!(sim.record().path.last().map(String::as_str), Some("main"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Digit(char),
            Finish,
            StaleFinish(u64),
            Wait(u64),
            Hangup,
            Answer,
            SpeechStarted,
            Transcript(String, f32),
            SpeechTimeout,
            Caller(usize),
            Watchlist,
            Voice(usize, Option<f32>),
            Connected,
            Unavailable(usize),
            VoicemailDone,
        }

        const DECISIONS: [VoiceDecision; 4] = [
            VoiceDecision::Accepted,
            VoiceDecision::Rejected,
            VoiceDecision::NotEnoughSpeech,
            VoiceDecision::NotEnrolled,
        ];
        const REASONS: [UnavailableReason; 3] = [
            UnavailableReason::AfterHours,
            UnavailableReason::Overflow,
            UnavailableReason::NoAgents,
        ];

        /// Unknown, elderly, VIP, open complaint.
        fn caller(i: usize) -> FlowEvent {
            let mut profile = CallerProfile {
                customer_id: Some("C1".into()),
                ..CallerProfile::default()
            };
            match i % 4 {
                0 => profile = CallerProfile::default(),
                1 => profile.age = Some(80),
                2 => profile.segment = Some("vip".into()),
                _ => profile.open_complaint = true,
            }
            FlowEvent::CallerKnown {
                profile,
                status: LookupStatus::Found,
            }
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => proptest::sample::select(vec!['0', '1', '2', '3', '4', '9', '*', '#', '7', 'x'])
                    .prop_map(Step::Digit),
                4 => Just(Step::Finish),
                1 => (0u64..40).prop_map(Step::StaleFinish),
                3 => (0u64..20000).prop_map(Step::Wait),
                1 => Just(Step::Hangup),
                1 => Just(Step::Answer),
                2 => Just(Step::SpeechStarted),
                3 => (
                    prop_oneof![
                        proptest::sample::select(vec![
                            "lost card", "balance", "yes", "no", "agent", "credit card",
                            "repayment date", "main menu", "opening hours", "stop calls",
                            "[unk]", "", "what is the fee for a wire transfer",
                        ]).prop_map(String::from),
                        "\\PC{0,40}",
                    ],
                    prop_oneof![Just(f32::NAN), -1.0f32..2.0],
                ).prop_map(|(t, c)| Step::Transcript(t, c)),
                1 => Just(Step::SpeechTimeout),
                1 => (0usize..4).prop_map(Step::Caller),
                1 => Just(Step::Watchlist),
                2 => (0usize..4, proptest::option::of(prop_oneof![Just(f32::NAN), -1.0f32..2.0]))
                    .prop_map(|(d, s)| Step::Voice(d, s)),
                1 => Just(Step::Connected),
                2 => (0usize..3).prop_map(Step::Unavailable),
                1 => Just(Step::VoicemailDone),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Random shells never make the flow panic, break the playback or listening
            /// protocol, or act after it finished.
            #[test]
            fn random_event_sequences_keep_the_protocol(
                steps in proptest::collection::vec(step(), 0..80),
                barge_in in any::<bool>(),
                known in proptest::option::of(0usize..4),
            ) {
                // Without barge-in, turns open when prompts end instead of when they start.
                let text = if barge_in { DEMO.to_string() } else { DEMO.replace("barge_in = true", "barge_in = false") };
                let mut flow = CallFlow::new(plan(&text));
                let mut now = Instant::now();
                let mut playing: Option<u64> = None;
                let mut listening = false;
                if let Some(i) = known {
                    prop_assert!(flow.handle(caller(i), now).is_empty());
                }
                for a in flow.handle(FlowEvent::Answered, now) {
                    match a {
                        FlowAction::Play { playback, .. } => playing = Some(playback),
                        FlowAction::Listen { .. } => listening = true,
                        _ => {}
                    }
                }
                for s in steps {
                    let was_finished = flow.is_finished();
                    let transcripts_before = flow.record().transcripts.len();
                    let actions = match s {
                        Step::Digit(c) => flow.handle(FlowEvent::Digit(c), now),
                        Step::Finish => match playing.take() {
                            Some(p) => flow.handle(FlowEvent::PlaybackFinished { playback: p }, now),
                            None => Vec::new(),
                        },
                        Step::StaleFinish(p) if Some(p) != playing => {
                            flow.handle(FlowEvent::PlaybackFinished { playback: p }, now)
                        }
                        Step::StaleFinish(_) => Vec::new(),
                        Step::Wait(ms) => {
                            now += Duration::from_millis(ms);
                            match flow.poll_timeout() {
                                Some(t) if t <= now => flow.handle_timeout(now),
                                _ => Vec::new(),
                            }
                        }
                        Step::Hangup => flow.handle(FlowEvent::Hangup, now),
                        Step::Answer => flow.handle(FlowEvent::Answered, now),
                        Step::SpeechStarted => flow.handle(FlowEvent::SpeechStarted, now),
                        Step::Transcript(text, confidence) => flow.handle(
                            FlowEvent::Transcript { text, confidence, words: Vec::new() },
                            now,
                        ),
                        Step::SpeechTimeout => flow.handle(FlowEvent::SpeechTimeout, now),
                        Step::Caller(i) => flow.handle(caller(i), now),
                        Step::Watchlist => flow.handle(
                            FlowEvent::WatchlistHit { entry: "W-1".into(), score: 0.9 },
                            now,
                        ),
                        Step::Voice(d, score) => flow.handle(
                            FlowEvent::VoiceVerified { decision: DECISIONS[d], score },
                            now,
                        ),
                        Step::Connected => flow.handle(FlowEvent::Connected { agent: "a".into() }, now),
                        Step::Unavailable(r) => flow.handle(
                            FlowEvent::QueueUnavailable { reason: REASONS[r] },
                            now,
                        ),
                        Step::VoicemailDone => flow.handle(FlowEvent::VoicemailDone, now),
                    };
                    if was_finished {
                        prop_assert!(actions.is_empty());
                    }
                    if !listening {
                        prop_assert_eq!(flow.record().transcripts.len(), transcripts_before, "transcript taken without a turn");
                    }
                    for a in &actions {
                        match a {
                            FlowAction::Play { playback, prompts, .. } => {
                                prop_assert!(playing.is_none(), "Play over a running playback");
                                prop_assert!(!prompts.is_empty());
                                playing = Some(*playback);
                            }
                            FlowAction::StopPlayback => {
                                prop_assert!(playing.take().is_some(), "stop without playback");
                            }
                            FlowAction::Listen { grammar, .. } => {
                                prop_assert!(!listening, "Listen while a turn is open");
                                prop_assert!(grammar.len() > 1);
                                listening = true;
                            }
                            FlowAction::StopListening => {
                                prop_assert!(listening, "StopListening without a turn");
                                listening = false;
                            }
                            FlowAction::Transfer { .. } | FlowAction::Hangup { .. } => {
                                prop_assert!(playing.is_none());
                                prop_assert!(!listening, "ended while listening");
                                prop_assert!(flow.is_finished());
                            }
                            FlowAction::Queue { .. } => {
                                prop_assert!(playing.is_none());
                                prop_assert!(!listening, "queued while listening");
                                prop_assert!(flow.is_queued());
                            }
                            FlowAction::VerifyVoice { .. } | FlowAction::RecordVoicemail { .. } => {
                                prop_assert!(playing.is_none());
                                prop_assert!(!listening, "{:?} while listening", a);
                                prop_assert!(flow.poll_timeout().is_some(), "no deadline for the shell's answer");
                            }
                            FlowAction::OptOut | FlowAction::RequestCallback { .. } => {}
                        }
                    }
                    if flow.is_finished() {
                        playing = None;
                        listening = false;
                        prop_assert_eq!(flow.poll_timeout(), None);
                        prop_assert!(flow.record().outcome != Outcome::InProgress);
                    } else if playing.is_some() {
                        prop_assert_eq!(flow.poll_timeout(), None, "timer during playback");
                    } else if flow.is_queued() {
                        // The ACD decides how long a caller waits.
                        prop_assert_eq!(flow.poll_timeout(), None);
                        let queued = matches!(flow.record().outcome, Outcome::Queued { .. });
                        prop_assert!(queued, "queued with outcome {:?}", flow.record().outcome);
                    } else {
                        prop_assert!(flow.poll_timeout().is_some(), "flow stuck: nothing plays, no timer");
                    }
                    prop_assert_eq!(flow.is_listening(), listening);
                    // A route may queue a known caller before the greeting.
                    let first = flow.record().path.first().map(String::as_str);
                    prop_assert!(first == Some("greeting") || !flow.record().routes.is_empty(), "{:?}", first);
                }
            }
        }
    }
}
