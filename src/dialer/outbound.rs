//! One outbound reminder call attempt, from the INVITE to the end of the call (sans-IO).
//!
//! The shell places the INVITE, then feeds [`OutboundEvent`]s (SIP responses, AMD verdicts,
//! DTMF, playback ends) with the current time, executes the returned [`OutboundAction`]s in
//! order, and calls [`OutboundAttempt::handle_timeout`] once [`OutboundAttempt::poll_timeout`]
//! has passed. No clock is read and nothing is awaited here. Once [`OutboundAttempt::is_finished`]
//! the [`AttemptResult`] says what the ledger records; later events are ignored.
//!
//! The call, step by step:
//! - Ringing: the ring timer starts at `dialled_at`. A final non-2xx response ends the attempt
//!   with [`outcome_for_status`]. At `ring_timeout` the attempt sends `Cancel` and waits (at most
//!   [`CANCEL_WAIT`]) for the INVITE to end; whatever ends it (a shutdown aside), the outcome
//!   is `NoAnswer`.
//! - Answered: with `amd` the detector runs (`StartAmd`); a person (or `NotSure`, or a key
//!   pressed, or no verdict within [`AMD_TIMEOUT`]) hears the message; a machine is hung up on,
//!   or, with `LeaveMessage`, gets the message once after the beep. Without `amd` the message
//!   plays at once.
//! - The message plays `repeats` times (interruptible) unless a key ends it; then the attempt
//!   waits `key_wait` for a key and hangs up. Keys: opt-out (checked first), confirm, agent;
//!   any other key is recorded and ignored. A closing prompt (goodbye, opted-out, please hold)
//!   cannot be interrupted; the outcome is decided when the key is pressed, so a callee who
//!   hangs up during it keeps it.
//! - `max_call` after the answer the attempt hangs up whatever it is doing.
//!
//! The outcome of a call the callee ends (or that `max_call` cuts) is the one reached so far:
//! `AnsweredMachine` while AMD runs, while waiting for the beep and while the message is being
//! left; `AnsweredPerson` once the message started playing to a person; the key's outcome once a
//! key decided one; `MessageLeft` only once the message left on a machine played to its end.
use std::time::{Duration, Instant};

use crate::dialer::campaign::{Keys, MachineAction};
use crate::dialer::policy::AttemptOutcome;
use crate::ivr::dialplan::normalize_dtmf;
use crate::store::ledger::Reach;

/// How long the phone may ring before the attempt gives up with `NoAnswer`.
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a person who presses nothing hears the message.
pub const DEFAULT_REPEATS: u32 = 2;
/// How long to wait for a key after the last repetition.
pub const DEFAULT_KEY_WAIT: Duration = Duration::from_secs(5);
/// The longest an answered call may last.
pub const DEFAULT_MAX_CALL: Duration = Duration::from_secs(120);
/// After our CANCEL, how long to wait for the INVITE's final response before the attempt ends
/// without it: 64·T1, the INVITE transaction's own give-up time (RFC 3261 Timer B), so the SIP
/// layer normally reports first.
pub const CANCEL_WAIT: Duration = Duration::from_secs(32);
/// How long AMD may run without a verdict before the callee is treated as a person (verdict
/// "unknown"): twice the usual 5 s analysis limit of detectors, so only a stuck detector hits it.
pub const AMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the agent key sends the call.
pub const AGENT_TARGET: &str = "agents";
/// Keys kept in [`AttemptResult::digits`]; later keys still act but are not stored, so a
/// flood of DTMF events cannot grow the record without bound.
pub const MAX_DIGITS: usize = 64;

/// How one attempt runs; built by the dialer from the campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundConfig {
    /// No answer within this (from `dialled_at`) → `Cancel`, outcome `NoAnswer`.
    pub ring_timeout: Duration,
    /// Run answering-machine detection after the answer.
    pub amd: bool,
    pub machine_action: MachineAction,
    pub keys: Keys,
    /// Prompt names played to a person (and to a machine when leaving a message).
    pub message: Vec<String>,
    /// How many times the message plays to a person who presses nothing; 0 plays it once.
    pub repeats: u32,
    /// How long to wait for a key after the last repetition.
    pub key_wait: Duration,
    /// Played after the confirm key ("thank you, goodbye").
    pub goodbye: Option<String>,
    /// Played after the opt-out key ("you will not be called again").
    pub opted_out: Option<String>,
    /// Played after the agent key ("please hold"), before `Transfer`.
    pub agent_hold: Option<String>,
    /// Safety cap on the answered call → `Hangup`.
    pub max_call: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            ring_timeout: DEFAULT_RING_TIMEOUT,
            amd: true,
            machine_action: MachineAction::default(),
            keys: Keys::default(),
            message: Vec::new(),
            repeats: DEFAULT_REPEATS,
            key_wait: DEFAULT_KEY_WAIT,
            goodbye: None,
            opted_out: None,
            agent_hold: None,
            max_call: DEFAULT_MAX_CALL,
        }
    }
}

/// The answering-machine detector's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AmdResult {
    Human,
    Machine,
    /// Treated as a person: hanging up on a person is worse than playing to a machine.
    NotSure,
}

impl AmdResult {
    /// The name stored in the ledger's `amd_decision`.
    pub fn as_str(self) -> &'static str {
        match self {
            AmdResult::Human => "human",
            AmdResult::Machine => "machine",
            AmdResult::NotSure => "unknown",
        }
    }
}

/// What the shell reports to the attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboundEvent {
    /// A provisional response (180, 183).
    Progress { status: u16, early_media: bool },
    /// A 2xx to the INVITE (the shell ACKs it).
    Answered,
    /// A final non-2xx response, or the transaction's transport failure or timeout (408).
    Failed { status: u16 },
    /// The detector's verdict, `confidence` in 0..=1.
    Amd { result: AmdResult, confidence: f32 },
    /// After `WaitForBeep`: the beep, or silence, or the waiter's own timeout.
    GreetingEnded,
    /// A DTMF key (`0-9`, `*`, `#`, `A-D`; lower-case `a-d` is accepted).
    Digit(char),
    /// Playback `playback` played to its end (not sent for a stopped playback).
    PlaybackFinished { playback: u64 },
    /// BYE from the callee.
    RemoteHangup,
    /// The appliance is stopping: hang up or cancel now.
    Shutdown,
}

/// What the attempt asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundAction {
    /// CANCEL the ringing INVITE.
    Cancel,
    /// Start feeding the callee's audio to the detector; it reports `Amd`.
    StartAmd,
    /// Stop the detector without waiting for its verdict (a key was pressed, or it took too
    /// long); no `Amd` event is expected after this.
    StopAmd,
    /// Start the beep/silence waiter; it reports `GreetingEnded`.
    WaitForBeep,
    /// Play the prompts back to back, then report `PlaybackFinished { playback }`.
    Play {
        playback: u64,
        prompts: Vec<String>,
        interruptible: bool,
    },
    /// Stop the current playback at once (no `PlaybackFinished` for it).
    StopPlayback,
    /// Write the callee's number to the global opt-out list and commit it before the next
    /// action.
    OptOut,
    /// Send BYE; the attempt is over.
    Hangup,
    /// Hand the call to `target`; the attempt is over.
    Transfer { target: String },
}

/// What the ledger records about a finished attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub outcome: AttemptOutcome,
    /// Always `reach_for(outcome)`.
    pub reach: Reach,
    /// The INVITE's final status: 200 once answered, else the non-2xx reported by `Failed`;
    /// `None` when the attempt ended before any final response (shutdown, cancel without reply).
    pub sip_status: Option<u16>,
    /// "human", "machine" or "unknown"; `None` when AMD did not run.
    pub amd_decision: Option<&'static str>,
    /// The detector's confidence; `None` when the decision did not come from the detector.
    pub amd_confidence: Option<f32>,
    /// From `dialled_at` to the 2xx.
    pub answered_after: Option<Duration>,
    /// Keys pressed after the answer, in order (at most [`MAX_DIGITS`]).
    pub digits: String,
}

/// The final SIP status of an unanswered INVITE → the attempt's outcome.
///
/// 603 Decline counts as `NoAnswer`: the callee (or their phone's reject button or
/// do-not-disturb) turned this call down, which says nothing about the number and delivered
/// no message, so it is retried under the no-answer rule, as VICIdial treats it; its reach,
/// `Attempted`, is right since the phone rang. 487 is `NoAnswer` because it normally answers
/// our own CANCEL. Anything not listed (5xx, 401/403/407 the trunk refused us, 2xx given by
/// mistake) is `Failed`: the phone did not ring because of the trunk or the network.
pub fn outcome_for_status(status: u16) -> AttemptOutcome {
    match status {
        486 | 600 => AttemptOutcome::Busy,
        408 | 480 | 487 | 603 => AttemptOutcome::NoAnswer,
        404 | 410 | 414 | 416 | 484 | 604 => AttemptOutcome::Invalid,
        _ => AttemptOutcome::Failed,
    }
}

/// How far a call with this outcome got, for fatigue counting. Matches
/// `AttemptOutcome::counts_as_contact`: an interrupted call may have reached a person, so it
/// counts under every rule, as the ledger does for calls cut by a crash.
pub fn reach_for(outcome: AttemptOutcome) -> Reach {
    use AttemptOutcome::*;
    match outcome {
        Failed | Invalid => Reach::NotReached,
        Busy | NoAnswer => Reach::Attempted,
        AnsweredMachine | MessageLeft => Reach::Answered,
        AnsweredPerson | Confirmed | AgentRequested | OptedOut | Interrupted => {
            Reach::AnsweredByPerson
        }
    }
}

/// What follows a closing prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Hangup,
    Transfer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ringing {
        deadline: Instant,
    },
    /// CANCEL sent at the ring timeout; waiting for the INVITE to end.
    Cancelling {
        deadline: Instant,
    },
    /// Answered, AMD running.
    Detecting {
        deadline: Instant,
    },
    /// A machine; waiting for its beep to leave the message.
    AwaitingBeep,
    /// The message is being left on a machine.
    LeavingMessage {
        playback: u64,
    },
    /// The message is playing to a person; `played` counts this playback.
    Message {
        playback: u64,
        played: u32,
    },
    /// All repetitions played; waiting for a key.
    KeyWait {
        deadline: Instant,
    },
    /// A key decided the outcome; its closing prompt plays.
    Closing {
        playback: u64,
        then: Then,
    },
    Finished,
}

/// One outbound call attempt.
#[derive(Debug)]
pub struct OutboundAttempt {
    cfg: OutboundConfig,
    dialled_at: Instant,
    state: State,
    /// Ends the answered call; set at the answer.
    call_deadline: Option<Instant>,
    /// The outcome if the call ended now (meaningful once answered).
    reached: AttemptOutcome,
    sip_status: Option<u16>,
    amd_decision: Option<&'static str>,
    amd_confidence: Option<f32>,
    answered_after: Option<Duration>,
    digits: String,
    last_playback: u64,
    result: Option<AttemptResult>,
}

impl OutboundAttempt {
    /// `dialled_at` is when the INVITE was sent; the ring timer starts there.
    pub fn new(cfg: OutboundConfig, dialled_at: Instant) -> Self {
        let deadline = deadline_after(dialled_at, cfg.ring_timeout);
        OutboundAttempt {
            cfg,
            dialled_at,
            state: State::Ringing { deadline },
            call_deadline: None,
            reached: AttemptOutcome::NoAnswer,
            sip_status: None,
            amd_decision: None,
            amd_confidence: None,
            answered_after: None,
            digits: String::new(),
            last_playback: 0,
            result: None,
        }
    }

    pub fn handle(&mut self, event: OutboundEvent, now: Instant) -> Vec<OutboundAction> {
        if self.result.is_some() {
            return Vec::new();
        }
        match event {
            OutboundEvent::Progress { .. } => Vec::new(),
            OutboundEvent::Answered => self.answered(now),
            OutboundEvent::Failed { status } => self.failed(status),
            OutboundEvent::Amd { result, confidence } => self.amd(result, confidence),
            OutboundEvent::GreetingEnded => match self.state {
                State::AwaitingBeep => self.leave_message(),
                _ => Vec::new(),
            },
            OutboundEvent::Digit(c) => self.digit(c),
            OutboundEvent::PlaybackFinished { playback } => self.playback_finished(playback, now),
            OutboundEvent::RemoteHangup => self.remote_hangup(),
            OutboundEvent::Shutdown => self.shutdown(),
        }
    }

    /// Runs an expired timer (ring timeout, cancel wait, AMD limit, key wait, `max_call`); does
    /// nothing before `poll_timeout()`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<OutboundAction> {
        if self.result.is_some() {
            return Vec::new();
        }
        if self.call_deadline.is_some_and(|d| now >= d) {
            let outcome = self.reached;
            return self.end(Some(OutboundAction::Hangup), outcome);
        }
        match self.state {
            State::Ringing { deadline } if now >= deadline => {
                self.state = State::Cancelling {
                    deadline: deadline_after(now, CANCEL_WAIT),
                };
                vec![OutboundAction::Cancel]
            }
            // The INVITE transaction should have ended by now; the shell cleans it up.
            State::Cancelling { deadline } if now >= deadline => {
                self.end(None, AttemptOutcome::NoAnswer)
            }
            State::Detecting { deadline } if now >= deadline => {
                self.amd_decision = Some(AmdResult::NotSure.as_str());
                let mut actions = vec![OutboundAction::StopAmd];
                actions.extend(self.start_message());
                actions
            }
            State::KeyWait { deadline } if now >= deadline => {
                self.end(Some(OutboundAction::Hangup), AttemptOutcome::AnsweredPerson)
            }
            _ => Vec::new(),
        }
    }

    /// When `handle_timeout` should next be called; `Some` until the attempt is finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::Ringing { deadline }
            | State::Cancelling { deadline }
            | State::Detecting { deadline }
            | State::KeyWait { deadline } => Some(deadline),
            _ => None,
        };
        match (state_deadline, self.call_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|_| self.result.is_none())
    }

    pub fn is_finished(&self) -> bool {
        self.result.is_some()
    }

    /// What the ledger records; `Some` exactly when the attempt is finished.
    pub fn result(&self) -> Option<&AttemptResult> {
        self.result.as_ref()
    }

    /// A 2xx. After our CANCEL (the 2xx crossed it) the call is hung up at once and finishes
    /// `NoAnswer`: the attempt had already given up at the ring timeout and the callee heard
    /// nothing, so the message is still to be delivered (a retry under the no-answer rule), and
    /// the reach is `Attempted` like any unanswered ring. `sip_status` 200 and `answered_after`
    /// keep the pick-up visible in the record. `AnsweredPerson` would complete a contact who
    /// never heard the message; `AnsweredMachine` or `Interrupted` would claim what we do not
    /// know.
    fn answered(&mut self, now: Instant) -> Vec<OutboundAction> {
        let cancelled = match self.state {
            State::Ringing { .. } => false,
            State::Cancelling { .. } => true,
            // A retransmitted 2xx.
            _ => return Vec::new(),
        };
        self.sip_status = Some(200);
        self.answered_after = Some(now.saturating_duration_since(self.dialled_at));
        if cancelled {
            return self.end(Some(OutboundAction::Hangup), AttemptOutcome::NoAnswer);
        }
        self.call_deadline = Some(deadline_after(now, self.cfg.max_call));
        if self.cfg.amd {
            self.reached = AttemptOutcome::AnsweredMachine;
            self.state = State::Detecting {
                deadline: deadline_after(now, AMD_TIMEOUT),
            };
            vec![OutboundAction::StartAmd]
        } else {
            self.start_message()
        }
    }

    /// A final non-2xx, or a transport failure. After our CANCEL every such response ends the
    /// attempt `NoAnswer`: the ring timeout had already decided it, and the response only says
    /// how the far end wound the INVITE down. After the answer (a shell reporting a dead
    /// transport) the call is gone, as with a BYE.
    fn failed(&mut self, status: u16) -> Vec<OutboundAction> {
        match self.state {
            State::Ringing { .. } => {
                self.sip_status = Some(status);
                self.end(None, outcome_for_status(status))
            }
            State::Cancelling { .. } => {
                self.sip_status = Some(status);
                self.end(None, AttemptOutcome::NoAnswer)
            }
            _ => self.remote_hangup(),
        }
    }

    fn amd(&mut self, result: AmdResult, confidence: f32) -> Vec<OutboundAction> {
        if !matches!(self.state, State::Detecting { .. }) {
            return Vec::new();
        }
        self.amd_decision = Some(result.as_str());
        self.amd_confidence = confidence.is_finite().then(|| confidence.clamp(0.0, 1.0));
        match (result, self.cfg.machine_action) {
            (AmdResult::Human | AmdResult::NotSure, _) => self.start_message(),
            (AmdResult::Machine, MachineAction::Hangup) => self.end(
                Some(OutboundAction::Hangup),
                AttemptOutcome::AnsweredMachine,
            ),
            (AmdResult::Machine, MachineAction::LeaveMessage) => {
                self.state = State::AwaitingBeep;
                vec![OutboundAction::WaitForBeep]
            }
        }
    }

    /// A key after the answer. During AMD it proves a person: the detector stops and the
    /// message starts (the key is not taken as a choice, since the callee has not heard the
    /// options yet). While waiting for the beep or leaving a message the machine's verdict
    /// stands and keys are only recorded. Keys before the answer (early media) are ignored.
    fn digit(&mut self, c: char) -> Vec<OutboundAction> {
        let Some(key) = normalize_dtmf(c) else {
            return Vec::new();
        };
        if matches!(
            self.state,
            State::Ringing { .. } | State::Cancelling { .. } | State::Finished
        ) {
            return Vec::new();
        }
        if self.digits.len() < MAX_DIGITS {
            self.digits.push(key);
        }
        match self.state {
            State::Detecting { .. } => {
                self.amd_decision = Some(AmdResult::Human.as_str());
                self.amd_confidence = None;
                let mut actions = vec![OutboundAction::StopAmd];
                actions.extend(self.start_message());
                actions
            }
            State::Message { .. } => self.choose(key, true),
            State::KeyWait { .. } => self.choose(key, false),
            _ => Vec::new(),
        }
    }

    /// A key during or after the message. Opt-out is checked first, so a campaign whose keys
    /// collide can never ignore an opt-out. The playback stops before the opt-out is written so
    /// the callee hears the key take effect even if the write is slow; `OptOut` still comes
    /// before the prompt and the hangup.
    fn choose(&mut self, key: char, playing: bool) -> Vec<OutboundAction> {
        let Keys {
            confirm,
            opt_out,
            agent,
        } = self.cfg.keys;
        let is = |k: Option<char>| k.and_then(normalize_dtmf) == Some(key);
        let (outcome, prompt, then) = if is(Some(opt_out)) {
            (
                AttemptOutcome::OptedOut,
                self.cfg.opted_out.clone(),
                Then::Hangup,
            )
        } else if is(confirm) {
            (
                AttemptOutcome::Confirmed,
                self.cfg.goodbye.clone(),
                Then::Hangup,
            )
        } else if is(agent) {
            (
                AttemptOutcome::AgentRequested,
                self.cfg.agent_hold.clone(),
                Then::Transfer,
            )
        } else {
            return Vec::new();
        };
        self.reached = outcome;
        let mut actions = Vec::new();
        if playing {
            actions.push(OutboundAction::StopPlayback);
        }
        if outcome == AttemptOutcome::OptedOut {
            actions.push(OutboundAction::OptOut);
        }
        match prompt {
            Some(prompt) => {
                let playback = self.next_playback();
                self.state = State::Closing { playback, then };
                actions.push(OutboundAction::Play {
                    playback,
                    prompts: vec![prompt],
                    interruptible: false,
                });
            }
            None => actions.extend(self.finish_with(then)),
        }
        actions
    }

    fn playback_finished(&mut self, id: u64, now: Instant) -> Vec<OutboundAction> {
        match self.state {
            State::LeavingMessage { playback } if playback == id => {
                self.end(Some(OutboundAction::Hangup), AttemptOutcome::MessageLeft)
            }
            State::Message { playback, played } if playback == id => {
                if played < self.cfg.repeats.max(1) {
                    self.play_message(played.saturating_add(1))
                } else {
                    self.state = State::KeyWait {
                        deadline: deadline_after(now, self.cfg.key_wait),
                    };
                    Vec::new()
                }
            }
            State::Closing { playback, then } if playback == id => self.finish_with(then),
            // Stale, stopped or unknown playback.
            _ => Vec::new(),
        }
    }

    /// BYE from the callee. Before the answer (not valid SIP, but possible from a broken
    /// trunk) the phone rang and nobody took the call: `NoAnswer`.
    fn remote_hangup(&mut self) -> Vec<OutboundAction> {
        let outcome = match self.state {
            State::Ringing { .. } | State::Cancelling { .. } => AttemptOutcome::NoAnswer,
            _ => self.reached,
        };
        self.end(None, outcome)
    }

    /// The appliance is stopping. Before the answer the phone may be ringing or already
    /// answered on the far side; after it the call is cut mid-way. Both end `Interrupted`:
    /// whether a person heard anything is unknown, so it counts under every counting rule (as
    /// the ledger counts calls cut by a crash) and the contact is retried. An outcome a key
    /// already decided (confirmed, opted out, agent) stands: the callee's choice is known.
    fn shutdown(&mut self) -> Vec<OutboundAction> {
        match self.state {
            State::Ringing { .. } => {
                self.end(Some(OutboundAction::Cancel), AttemptOutcome::Interrupted)
            }
            // CANCEL already sent.
            State::Cancelling { .. } => self.end(None, AttemptOutcome::Interrupted),
            State::Closing { .. } => {
                let outcome = self.reached;
                self.end(Some(OutboundAction::Hangup), outcome)
            }
            _ => self.end(Some(OutboundAction::Hangup), AttemptOutcome::Interrupted),
        }
    }

    fn start_message(&mut self) -> Vec<OutboundAction> {
        self.reached = AttemptOutcome::AnsweredPerson;
        self.play_message(1)
    }

    fn play_message(&mut self, played: u32) -> Vec<OutboundAction> {
        let playback = self.next_playback();
        self.state = State::Message { playback, played };
        vec![OutboundAction::Play {
            playback,
            prompts: self.cfg.message.clone(),
            interruptible: true,
        }]
    }

    /// After the beep: the message once, not interruptible (a machine's keys mean nothing).
    fn leave_message(&mut self) -> Vec<OutboundAction> {
        let playback = self.next_playback();
        self.state = State::LeavingMessage { playback };
        vec![OutboundAction::Play {
            playback,
            prompts: self.cfg.message.clone(),
            interruptible: false,
        }]
    }

    fn finish_with(&mut self, then: Then) -> Vec<OutboundAction> {
        let action = match then {
            Then::Hangup => OutboundAction::Hangup,
            Then::Transfer => OutboundAction::Transfer {
                target: AGENT_TARGET.to_string(),
            },
        };
        let outcome = self.reached;
        self.end(Some(action), outcome)
    }

    fn next_playback(&mut self) -> u64 {
        self.last_playback = self.last_playback.wrapping_add(1);
        self.last_playback
    }

    /// Finishes the attempt with `outcome`, emitting `last` if the call needs ending.
    fn end(
        &mut self,
        last: Option<OutboundAction>,
        outcome: AttemptOutcome,
    ) -> Vec<OutboundAction> {
        self.state = State::Finished;
        self.call_deadline = None;
        self.result = Some(AttemptResult {
            outcome,
            reach: reach_for(outcome),
            sip_status: self.sip_status,
            amd_decision: self.amd_decision,
            amd_confidence: self.amd_confidence,
            answered_after: self.answered_after,
            digits: std::mem::take(&mut self.digits),
        });
        last.into_iter().collect()
    }
}

/// `now + wait`, saturating instead of panicking on an (absurd) overflow.
fn deadline_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialer::policy::ContactCounting;
    use proptest::prelude::*;
    use AttemptOutcome as O;
    use OutboundAction as A;
    use OutboundEvent as E;

    const MESSAGE: [&str; 2] = ["reminder", "press_keys"];

    fn cfg() -> OutboundConfig {
        OutboundConfig {
            message: MESSAGE.iter().map(|s| s.to_string()).collect(),
            goodbye: Some("goodbye".into()),
            opted_out: Some("removed".into()),
            agent_hold: Some("hold".into()),
            ..OutboundConfig::default()
        }
    }

    fn no_amd() -> OutboundConfig {
        OutboundConfig {
            amd: false,
            ..cfg()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn message(playback: u64) -> A {
        A::Play {
            playback,
            prompts: MESSAGE.iter().map(|s| s.to_string()).collect(),
            interruptible: true,
        }
    }

    fn closing(playback: u64, prompt: &str) -> A {
        A::Play {
            playback,
            prompts: vec![prompt.to_string()],
            interruptible: false,
        }
    }

    /// An attempt dialled at `t0`; times are milliseconds after it.
    struct Call {
        a: OutboundAttempt,
        t0: Instant,
    }

    impl Call {
        fn new(cfg: OutboundConfig) -> Self {
            let t0 = Instant::now();
            Call {
                a: OutboundAttempt::new(cfg, t0),
                t0,
            }
        }
        fn at(&self, t: u64) -> Instant {
            self.t0 + ms(t)
        }
        fn ev(&mut self, t: u64, ev: OutboundEvent) -> Vec<A> {
            let now = self.at(t);
            self.a.handle(ev, now)
        }
        fn timeout(&mut self, t: u64) -> Vec<A> {
            let now = self.at(t);
            self.a.handle_timeout(now)
        }
        fn result(&self) -> &AttemptResult {
            assert!(self.a.is_finished());
            self.a.result().expect("finished attempt has a result")
        }
        fn outcome(&self) -> O {
            self.result().outcome
        }
        /// Answered at 1 s without AMD: the message (playback 1) is playing.
        fn person() -> Self {
            let mut c = Call::new(no_amd());
            assert_eq!(c.ev(1000, E::Answered), vec![message(1)]);
            c
        }
    }

    #[test]
    fn status_mapping_table() {
        for s in [486, 600] {
            assert_eq!(outcome_for_status(s), O::Busy, "{s}");
        }
        for s in [480, 408, 487, 603] {
            assert_eq!(outcome_for_status(s), O::NoAnswer, "{s}");
        }
        for s in [404, 484, 410, 604, 414, 416] {
            assert_eq!(outcome_for_status(s), O::Invalid, "{s}");
        }
        for s in [
            503,
            500,
            502,
            504,
            401,
            403,
            407,
            488,
            0,
            200,
            999,
            u16::MAX,
        ] {
            assert_eq!(outcome_for_status(s), O::Failed, "{s}");
        }
    }

    #[test]
    fn reach_for_agrees_with_policy_counting() {
        for outcome in O::ALL {
            for rule in ContactCounting::ALL {
                let threshold = Reach::parse(rule.as_str()).expect("counting names are reaches");
                assert_eq!(
                    reach_for(outcome).counts_under(threshold),
                    outcome.counts_as_contact(rule),
                    "{outcome} under {rule}"
                );
            }
        }
        assert_eq!(reach_for(O::Failed), Reach::NotReached);
        assert_eq!(reach_for(O::Invalid), Reach::NotReached);
        assert_eq!(reach_for(O::Busy), Reach::Attempted);
        assert_eq!(reach_for(O::NoAnswer), Reach::Attempted);
        assert_eq!(reach_for(O::AnsweredMachine), Reach::Answered);
        assert_eq!(reach_for(O::MessageLeft), Reach::Answered);
        for o in [
            O::AnsweredPerson,
            O::Confirmed,
            O::AgentRequested,
            O::OptedOut,
            O::Interrupted,
        ] {
            assert_eq!(reach_for(o), Reach::AnsweredByPerson, "{o}");
        }
    }

    #[test]
    fn final_response_while_ringing_ends_with_its_outcome() {
        for (status, outcome) in [
            (486, O::Busy),
            (480, O::NoAnswer),
            (603, O::NoAnswer),
            (404, O::Invalid),
            (503, O::Failed),
            (408, O::NoAnswer),
        ] {
            let mut c = Call::new(cfg());
            assert!(c
                .ev(
                    500,
                    E::Progress {
                        status: 180,
                        early_media: false
                    }
                )
                .is_empty());
            assert!(c.ev(3000, E::Failed { status }).is_empty(), "{status}");
            let r = c.result();
            assert_eq!(r.outcome, outcome, "{status}");
            assert_eq!(r.reach, reach_for(outcome));
            assert_eq!(r.sip_status, Some(status));
            assert_eq!((r.answered_after, r.amd_decision), (None, None));
            assert_eq!(c.a.poll_timeout(), None);
        }
    }

    #[test]
    fn progress_and_early_media_digits_do_nothing() {
        let mut c = Call::new(cfg());
        assert_eq!(c.a.poll_timeout(), Some(c.at(30_000)));
        assert!(c
            .ev(
                100,
                E::Progress {
                    status: 183,
                    early_media: true
                }
            )
            .is_empty());
        assert!(c.ev(200, E::Digit('9')).is_empty());
        assert!(c.ev(300, E::GreetingEnded).is_empty());
        assert!(c.ev(300, E::PlaybackFinished { playback: 1 }).is_empty());
        assert!(c
            .ev(
                300,
                E::Amd {
                    result: AmdResult::Machine,
                    confidence: 0.9
                }
            )
            .is_empty());
        assert!(!c.a.is_finished());
        c.ev(400, E::Failed { status: 480 });
        assert_eq!(c.result().digits, "");
    }

    #[test]
    fn ring_timeout_cancels_and_487_finishes_no_answer() {
        let mut c = Call::new(cfg());
        assert!(c.timeout(29_999).is_empty());
        assert_eq!(c.timeout(30_000), vec![A::Cancel]);
        assert!(!c.a.is_finished());
        assert_eq!(c.a.poll_timeout(), Some(c.at(30_000) + CANCEL_WAIT));
        assert!(c.timeout(30_050).is_empty(), "the cancel is sent once");
        assert!(c.ev(30_100, E::Failed { status: 487 }).is_empty());
        let r = c.result();
        assert_eq!((r.outcome, r.reach), (O::NoAnswer, Reach::Attempted));
        assert_eq!(r.sip_status, Some(487));
    }

    #[test]
    fn other_response_crossing_the_cancel_is_still_no_answer() {
        let mut c = Call::new(cfg());
        assert_eq!(c.timeout(30_000), vec![A::Cancel]);
        assert!(c.ev(30_010, E::Failed { status: 486 }).is_empty());
        assert_eq!(c.outcome(), O::NoAnswer);
        assert_eq!(c.result().sip_status, Some(486));
    }

    #[test]
    fn answer_crossing_the_cancel_hangs_up_as_no_answer() {
        let mut c = Call::new(cfg());
        assert_eq!(c.timeout(30_000), vec![A::Cancel]);
        assert_eq!(c.ev(30_050, E::Answered), vec![A::Hangup]);
        let r = c.result();
        assert_eq!((r.outcome, r.reach), (O::NoAnswer, Reach::Attempted));
        assert_eq!(r.sip_status, Some(200));
        assert_eq!(r.answered_after, Some(ms(30_050)));
        assert_eq!(r.amd_decision, None);
    }

    #[test]
    fn cancel_without_final_response_ends_after_cancel_wait() {
        let mut c = Call::new(cfg());
        assert_eq!(c.timeout(30_000), vec![A::Cancel]);
        let end = 30_000 + CANCEL_WAIT.as_millis() as u64;
        assert!(c.timeout(end - 1).is_empty());
        assert!(!c.a.is_finished());
        assert!(c.timeout(end).is_empty(), "nothing left to send");
        assert_eq!(c.outcome(), O::NoAnswer);
        assert_eq!(c.result().sip_status, None);
    }

    #[test]
    fn answer_without_amd_plays_the_message_at_once() {
        let mut c = Call::new(no_amd());
        assert_eq!(c.ev(4000, E::Answered), vec![message(1)]);
        assert_eq!(c.a.poll_timeout(), Some(c.at(4000) + DEFAULT_MAX_CALL));
        assert!(c.ev(4100, E::Answered).is_empty(), "retransmitted 2xx");
        assert_eq!(c.ev(9000, E::RemoteHangup), vec![]);
        let r = c.result();
        assert_eq!((r.outcome, r.sip_status), (O::AnsweredPerson, Some(200)));
        assert_eq!(r.answered_after, Some(ms(4000)));
        assert_eq!((r.amd_decision, r.amd_confidence), (None, None));
    }

    #[test]
    fn amd_human_or_not_sure_plays_the_message() {
        for (result, name) in [(AmdResult::Human, "human"), (AmdResult::NotSure, "unknown")] {
            let mut c = Call::new(cfg());
            assert_eq!(c.ev(2000, E::Answered), vec![A::StartAmd]);
            assert_eq!(
                c.ev(
                    4000,
                    E::Amd {
                        result,
                        confidence: 0.8
                    }
                ),
                vec![message(1)]
            );
            assert!(c
                .ev(
                    4100,
                    E::Amd {
                        result: AmdResult::Machine,
                        confidence: 1.0
                    }
                )
                .is_empty());
            c.ev(5000, E::RemoteHangup);
            let r = c.result();
            assert_eq!(r.outcome, O::AnsweredPerson);
            assert_eq!((r.amd_decision, r.amd_confidence), (Some(name), Some(0.8)));
        }
    }

    #[test]
    fn amd_machine_with_hangup_action_hangs_up() {
        let mut c = Call::new(cfg());
        c.ev(2000, E::Answered);
        let actions = c.ev(
            5000,
            E::Amd {
                result: AmdResult::Machine,
                confidence: 0.9,
            },
        );
        assert_eq!(actions, vec![A::Hangup]);
        let r = c.result();
        assert_eq!((r.outcome, r.reach), (O::AnsweredMachine, Reach::Answered));
        assert_eq!(
            (r.amd_decision, r.amd_confidence),
            (Some("machine"), Some(0.9))
        );
    }

    #[test]
    fn amd_machine_with_leave_message_waits_for_the_beep_and_plays_once() {
        let mut c = Call::new(OutboundConfig {
            machine_action: MachineAction::LeaveMessage,
            ..cfg()
        });
        c.ev(2000, E::Answered);
        let machine = E::Amd {
            result: AmdResult::Machine,
            confidence: 0.7,
        };
        assert_eq!(c.ev(5000, machine), vec![A::WaitForBeep]);
        assert!(
            c.ev(6000, E::Digit('9')).is_empty(),
            "a machine's keys mean nothing"
        );
        assert!(c.ev(6000, E::PlaybackFinished { playback: 1 }).is_empty());
        let leave = A::Play {
            playback: 1,
            prompts: MESSAGE.iter().map(|s| s.to_string()).collect(),
            interruptible: false,
        };
        assert_eq!(c.ev(9000, E::GreetingEnded), vec![leave]);
        assert!(c.ev(9100, E::GreetingEnded).is_empty());
        assert!(c.ev(10_000, E::Digit('1')).is_empty());
        assert_eq!(
            c.ev(30_000, E::PlaybackFinished { playback: 1 }),
            vec![A::Hangup]
        );
        let r = c.result();
        assert_eq!((r.outcome, r.reach), (O::MessageLeft, Reach::Answered));
        assert_eq!(r.digits, "91");
    }

    #[test]
    fn digit_during_amd_counts_as_a_person_without_choosing() {
        let mut c = Call::new(cfg());
        c.ev(2000, E::Answered);
        assert_eq!(c.ev(2500, E::Digit('9')), vec![A::StopAmd, message(1)]);
        assert!(c
            .ev(
                3000,
                E::Amd {
                    result: AmdResult::Machine,
                    confidence: 0.9
                }
            )
            .is_empty());
        c.ev(4000, E::RemoteHangup);
        let r = c.result();
        assert_eq!(r.outcome, O::AnsweredPerson, "the key was not an opt-out");
        assert_eq!((r.amd_decision, r.amd_confidence), (Some("human"), None));
        assert_eq!(r.digits, "9");
    }

    #[test]
    fn amd_without_verdict_gives_up_and_plays_to_a_person() {
        let mut c = Call::new(cfg());
        c.ev(2000, E::Answered);
        let limit = 2000 + AMD_TIMEOUT.as_millis() as u64;
        assert_eq!(c.a.poll_timeout(), Some(c.at(limit)));
        assert!(c.timeout(limit - 1).is_empty());
        assert_eq!(c.timeout(limit), vec![A::StopAmd, message(1)]);
        c.ev(limit + 10, E::RemoteHangup);
        assert_eq!(c.result().amd_decision, Some("unknown"));
        assert_eq!(c.outcome(), O::AnsweredPerson);
    }

    #[test]
    fn amd_confidence_is_kept_in_range() {
        for (given, kept) in [(f32::NAN, None), (1.5, Some(1.0)), (-0.2, Some(0.0))] {
            let mut c = Call::new(cfg());
            c.ev(1000, E::Answered);
            c.ev(
                2000,
                E::Amd {
                    result: AmdResult::Machine,
                    confidence: given,
                },
            );
            assert_eq!(c.result().amd_confidence, kept, "{given}");
        }
    }

    #[test]
    fn confirm_key_plays_goodbye_then_hangs_up() {
        let mut c = Call::person();
        assert_eq!(
            c.ev(3000, E::Digit('1')),
            vec![A::StopPlayback, closing(2, "goodbye")]
        );
        assert!(
            c.ev(3100, E::Digit('9')).is_empty(),
            "goodbye is not interruptible"
        );
        assert!(c.ev(3200, E::PlaybackFinished { playback: 1 }).is_empty());
        assert_eq!(
            c.ev(5000, E::PlaybackFinished { playback: 2 }),
            vec![A::Hangup]
        );
        let r = c.result();
        assert_eq!(
            (r.outcome, r.reach),
            (O::Confirmed, Reach::AnsweredByPerson)
        );
        assert_eq!(r.digits, "19");
    }

    #[test]
    fn confirm_without_goodbye_hangs_up_at_once() {
        let mut c = Call::new(OutboundConfig {
            goodbye: None,
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert_eq!(c.ev(3000, E::Digit('1')), vec![A::StopPlayback, A::Hangup]);
        assert_eq!(c.outcome(), O::Confirmed);
    }

    #[test]
    fn opt_out_is_written_before_the_prompt_and_kept_on_hangup() {
        let mut c = Call::person();
        assert_eq!(
            c.ev(3000, E::Digit('9')),
            vec![A::StopPlayback, A::OptOut, closing(2, "removed")]
        );
        assert!(c.ev(3500, E::RemoteHangup).is_empty());
        let r = c.result();
        assert_eq!((r.outcome, r.reach), (O::OptedOut, Reach::AnsweredByPerson));

        let mut c = Call::new(OutboundConfig {
            opted_out: None,
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert_eq!(
            c.ev(3000, E::Digit('9')),
            vec![A::StopPlayback, A::OptOut, A::Hangup]
        );
        assert_eq!(c.outcome(), O::OptedOut);
    }

    #[test]
    fn opt_out_wins_over_a_colliding_key() {
        let mut c = Call::new(OutboundConfig {
            keys: Keys {
                confirm: Some('9'),
                opt_out: '9',
                agent: Some('9'),
            },
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert!(c.ev(2000, E::Digit('9')).contains(&A::OptOut));
    }

    #[test]
    fn agent_key_plays_hold_then_transfers() {
        let mut c = Call::person();
        assert_eq!(
            c.ev(3000, E::Digit('0')),
            vec![A::StopPlayback, closing(2, "hold")]
        );
        assert_eq!(
            c.ev(4000, E::PlaybackFinished { playback: 2 }),
            vec![A::Transfer {
                target: AGENT_TARGET.to_string()
            }]
        );
        assert_eq!(c.outcome(), O::AgentRequested);

        let mut c = Call::new(OutboundConfig {
            agent_hold: None,
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert_eq!(
            c.ev(3000, E::Digit('0')),
            vec![
                A::StopPlayback,
                A::Transfer {
                    target: "agents".to_string()
                }
            ]
        );
        assert_eq!(c.outcome(), O::AgentRequested);
    }

    #[test]
    fn other_keys_are_recorded_and_ignored() {
        let mut c = Call::person();
        for k in ['5', '#', 'x', 'b', '*'] {
            assert!(c.ev(2000, E::Digit(k)).is_empty(), "{k}");
        }
        assert!(!c.a.is_finished());
        c.ev(3000, E::RemoteHangup);
        assert_eq!(
            c.result().digits,
            "5#B*",
            "invalid keys are dropped, a-d upper-cased"
        );
        assert_eq!(c.outcome(), O::AnsweredPerson);
    }

    #[test]
    fn disabled_keys_are_plain_digits() {
        let mut c = Call::new(OutboundConfig {
            keys: Keys {
                confirm: None,
                opt_out: '7',
                agent: None,
            },
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert!(c.ev(2000, E::Digit('1')).is_empty());
        assert!(c.ev(2000, E::Digit('0')).is_empty());
        assert_eq!(
            c.ev(2000, E::Digit('7')),
            vec![A::StopPlayback, A::OptOut, closing(2, "removed")]
        );
    }

    #[test]
    fn message_repeats_then_waits_for_a_key_then_hangs_up() {
        let mut c = Call::person();
        assert!(
            c.ev(2000, E::PlaybackFinished { playback: 7 }).is_empty(),
            "unknown id"
        );
        assert_eq!(
            c.ev(20_000, E::PlaybackFinished { playback: 1 }),
            vec![message(2)]
        );
        assert!(
            c.ev(20_100, E::PlaybackFinished { playback: 1 }).is_empty(),
            "stale id"
        );
        assert!(c.ev(40_000, E::PlaybackFinished { playback: 2 }).is_empty());
        assert_eq!(c.a.poll_timeout(), Some(c.at(45_000)));
        assert!(c.timeout(44_999).is_empty());
        assert_eq!(c.timeout(45_000), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::AnsweredPerson);
    }

    #[test]
    fn key_after_the_message_needs_no_stop() {
        let mut c = Call::person();
        c.ev(20_000, E::PlaybackFinished { playback: 1 });
        c.ev(40_000, E::PlaybackFinished { playback: 2 });
        assert_eq!(c.ev(42_000, E::Digit('1')), vec![closing(3, "goodbye")]);
        assert!(c.timeout(45_000).is_empty(), "the key wait is over");
        assert_eq!(
            c.ev(46_000, E::PlaybackFinished { playback: 3 }),
            vec![A::Hangup]
        );
        assert_eq!(c.outcome(), O::Confirmed);
    }

    #[test]
    fn repeats_zero_plays_the_message_once() {
        let mut c = Call::new(OutboundConfig {
            repeats: 0,
            ..no_amd()
        });
        c.ev(1000, E::Answered);
        assert!(c.ev(20_000, E::PlaybackFinished { playback: 1 }).is_empty());
        assert_eq!(c.timeout(25_000), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::AnsweredPerson);
    }

    #[test]
    fn remote_hangup_keeps_the_outcome_reached_so_far() {
        let leave = || OutboundConfig {
            machine_action: MachineAction::LeaveMessage,
            ..cfg()
        };
        let machine = || E::Amd {
            result: AmdResult::Machine,
            confidence: 0.9,
        };
        // During AMD.
        let mut c = Call::new(cfg());
        c.ev(1000, E::Answered);
        c.ev(2000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::AnsweredMachine);
        // Waiting for the beep.
        let mut c = Call::new(leave());
        c.ev(1000, E::Answered);
        c.ev(2000, machine());
        c.ev(3000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::AnsweredMachine);
        // While the message is being left.
        let mut c = Call::new(leave());
        c.ev(1000, E::Answered);
        c.ev(2000, machine());
        c.ev(3000, E::GreetingEnded);
        c.ev(4000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::AnsweredMachine);
        // While the message plays to a person, and after it.
        let mut c = Call::person();
        c.ev(2000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::AnsweredPerson);
        let mut c = Call::person();
        c.ev(20_000, E::PlaybackFinished { playback: 1 });
        c.ev(40_000, E::PlaybackFinished { playback: 2 });
        c.ev(41_000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::AnsweredPerson);
        // A transport failure after the answer ends the call the same way.
        let mut c = Call::person();
        assert!(c.ev(2000, E::Failed { status: 408 }).is_empty());
        assert_eq!(c.outcome(), O::AnsweredPerson);
        assert_eq!(c.result().sip_status, Some(200));
        // A BYE before the answer (broken trunk).
        let mut c = Call::new(cfg());
        c.ev(1000, E::RemoteHangup);
        assert_eq!(c.outcome(), O::NoAnswer);
    }

    #[test]
    fn shutdown_while_ringing_cancels_as_interrupted() {
        let mut c = Call::new(cfg());
        assert_eq!(c.ev(5000, E::Shutdown), vec![A::Cancel]);
        let r = c.result();
        assert_eq!(
            (r.outcome, r.reach),
            (O::Interrupted, Reach::AnsweredByPerson)
        );
        assert_eq!(r.sip_status, None);

        let mut c = Call::new(cfg());
        c.timeout(30_000);
        assert!(
            c.ev(30_500, E::Shutdown).is_empty(),
            "the CANCEL is already sent"
        );
        assert_eq!(c.outcome(), O::Interrupted);
    }

    #[test]
    fn shutdown_after_answer_hangs_up_as_interrupted_unless_a_key_decided() {
        let mut c = Call::new(cfg());
        c.ev(1000, E::Answered);
        assert_eq!(c.ev(2000, E::Shutdown), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::Interrupted);

        let mut c = Call::person();
        assert_eq!(c.ev(2000, E::Shutdown), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::Interrupted);

        let mut c = Call::person();
        c.ev(2000, E::Digit('1'));
        assert_eq!(c.ev(2500, E::Shutdown), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::Confirmed);
    }

    #[test]
    fn max_call_caps_the_answered_call() {
        let mut c = Call::person();
        assert_eq!(c.a.poll_timeout(), Some(c.at(121_000)));
        assert!(c.timeout(120_999).is_empty());
        assert_eq!(c.timeout(121_000), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::AnsweredPerson);

        // Cut while waiting for a beep that never comes: no message was left.
        let mut c = Call::new(OutboundConfig {
            machine_action: MachineAction::LeaveMessage,
            max_call: Duration::from_secs(20),
            ..cfg()
        });
        c.ev(1000, E::Answered);
        c.ev(
            3000,
            E::Amd {
                result: AmdResult::Machine,
                confidence: 0.9,
            },
        );
        assert_eq!(c.a.poll_timeout(), Some(c.at(21_000)));
        assert_eq!(c.timeout(21_000), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::AnsweredMachine);

        // The cap wins over a timer due at the same moment.
        let mut c = Call::new(OutboundConfig {
            max_call: AMD_TIMEOUT,
            ..cfg()
        });
        c.ev(1000, E::Answered);
        assert_eq!(c.timeout(60_000), vec![A::Hangup]);
        assert_eq!(c.outcome(), O::AnsweredMachine);
    }

    #[test]
    fn events_after_finish_are_ignored() {
        let mut c = Call::person();
        c.ev(2000, E::Digit('1'));
        c.ev(3000, E::PlaybackFinished { playback: 2 });
        let before = c.result().clone();
        let events = [
            E::Progress {
                status: 180,
                early_media: false,
            },
            E::Answered,
            E::Failed { status: 503 },
            E::Amd {
                result: AmdResult::Machine,
                confidence: 1.0,
            },
            E::GreetingEnded,
            E::Digit('9'),
            E::PlaybackFinished { playback: 3 },
            E::RemoteHangup,
            E::Shutdown,
        ];
        for ev in events {
            assert!(c.ev(4000, ev).is_empty());
        }
        assert!(c.timeout(1_000_000).is_empty());
        assert_eq!(c.a.poll_timeout(), None);
        assert_eq!(c.result(), &before);
    }

    #[test]
    fn digits_are_capped() {
        let mut c = Call::person();
        for _ in 0..(MAX_DIGITS + 10) {
            c.ev(2000, E::Digit('5'));
        }
        assert_eq!(
            c.ev(2000, E::Digit('1')),
            vec![A::StopPlayback, closing(2, "goodbye")]
        );
        c.ev(3000, E::RemoteHangup);
        assert_eq!(c.result().digits.len(), MAX_DIGITS);
        assert_eq!(c.outcome(), O::Confirmed);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Progress,
        Answered,
        Failed(u16),
        Amd(u8, f32),
        GreetingEnded,
        Digit(char),
        FinishCurrent,
        Finish(u64),
        RemoteHangup,
        Shutdown,
    }

    fn ev_strategy() -> impl Strategy<Value = Ev> {
        prop_oneof![
            1 => Just(Ev::Progress),
            3 => Just(Ev::Answered),
            1 => prop::sample::select(vec![486u16, 487, 603, 404, 503, 408, 200]).prop_map(Ev::Failed),
            2 => (0u8..3, any::<f32>()).prop_map(|(r, c)| Ev::Amd(r, c)),
            1 => Just(Ev::GreetingEnded),
            4 => prop::sample::select(vec!['0', '1', '5', '9', '#', 'x']).prop_map(Ev::Digit),
            4 => Just(Ev::FinishCurrent),
            1 => (0u64..6).prop_map(Ev::Finish),
            1 => Just(Ev::RemoteHangup),
            1 => Just(Ev::Shutdown),
        ]
    }

    fn cfg_strategy() -> impl Strategy<Value = OutboundConfig> {
        (
            (1u64..60, any::<bool>(), any::<bool>(), 0u32..4),
            (0u64..10, 1u64..200, any::<[bool; 3]>()),
        )
            .prop_map(
                |((ring, amd, leave, repeats), (key_wait, max_call, prompts))| {
                    let prompt = |on: bool, name: &str| on.then(|| name.to_string());
                    OutboundConfig {
                        ring_timeout: Duration::from_secs(ring),
                        amd,
                        machine_action: if leave {
                            MachineAction::LeaveMessage
                        } else {
                            MachineAction::Hangup
                        },
                        repeats,
                        key_wait: Duration::from_secs(key_wait),
                        max_call: Duration::from_secs(max_call),
                        goodbye: prompt(prompts[0], "goodbye"),
                        opted_out: prompt(prompts[1], "removed"),
                        agent_hold: prompt(prompts[2], "hold"),
                        ..cfg()
                    }
                },
            )
    }

    /// Checks what must hold after every step and collects the actions.
    struct Shell {
        a: OutboundAttempt,
        now: Instant,
        actions: Vec<A>,
        finished_at: Option<Instant>,
        last_play: u64,
    }

    impl Shell {
        fn record(&mut self, actions: Vec<A>, was_finished: bool) {
            if was_finished {
                assert!(actions.is_empty(), "actions after finish: {actions:?}");
            }
            let finished = self.a.is_finished();
            assert_eq!(finished, self.a.result().is_some());
            assert_eq!(
                finished,
                self.a.poll_timeout().is_none(),
                "a live attempt has a timer"
            );
            if finished && self.finished_at.is_none() {
                self.finished_at = Some(self.now);
            }
            for action in &actions {
                if let A::Play { playback, .. } = action {
                    assert!(*playback > self.last_play, "playback ids increase");
                    self.last_play = *playback;
                }
            }
            self.actions.extend(actions);
        }

        /// Fires every timer due by `until`, at its own deadline.
        fn run_timers(&mut self, until: Instant) {
            for _ in 0..100 {
                match self.a.poll_timeout() {
                    Some(due) if due <= until => {
                        self.now = self.now.max(due);
                        let was = self.a.is_finished();
                        let actions = self.a.handle_timeout(self.now);
                        self.record(actions, was);
                    }
                    _ => return,
                }
            }
            panic!("timers do not make progress");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_calls_never_panic_and_always_finish(
            cfg in cfg_strategy(),
            events in prop::collection::vec((0u64..20_000, ev_strategy()), 0..60),
        ) {
            let t0 = Instant::now();
            let bound = t0 + cfg.ring_timeout + cfg.max_call.max(CANCEL_WAIT);
            let mut shell = Shell {
                a: OutboundAttempt::new(cfg, t0),
                now: t0,
                actions: Vec::new(),
                finished_at: None,
                last_play: 0,
            };
            for (delta, ev) in events {
                let at = shell.now + ms(delta);
                shell.run_timers(at);
                shell.now = at;
                let ev = match ev {
                    Ev::Progress => E::Progress { status: 183, early_media: true },
                    Ev::Answered => E::Answered,
                    Ev::Failed(status) => E::Failed { status },
                    Ev::Amd(r, confidence) => E::Amd {
                        result: [AmdResult::Human, AmdResult::Machine, AmdResult::NotSure][usize::from(r % 3)],
                        confidence,
                    },
                    Ev::GreetingEnded => E::GreetingEnded,
                    Ev::Digit(c) => E::Digit(c),
                    Ev::FinishCurrent => E::PlaybackFinished { playback: shell.last_play },
                    Ev::Finish(id) => E::PlaybackFinished { playback: id },
                    Ev::RemoteHangup => E::RemoteHangup,
                    Ev::Shutdown => E::Shutdown,
                };
                let was = shell.a.is_finished();
                let actions = shell.a.handle(ev, at);
                shell.record(actions, was);
            }
            shell.run_timers(bound);
            prop_assert!(shell.a.is_finished(), "not finished by {:?}", bound - t0);
            prop_assert!(shell.finished_at.is_some_and(|t| t <= bound));
            let result = shell.a.result().cloned().expect("finished");
            prop_assert_eq!(result.reach, reach_for(result.outcome));
            let opt_outs = shell.actions.iter().filter(|a| **a == A::OptOut).count();
            prop_assert_eq!(opt_outs, usize::from(result.outcome == O::OptedOut));
            let ends = shell
                .actions
                .iter()
                .filter(|a| matches!(a, A::Hangup | A::Transfer { .. }))
                .count();
            prop_assert!(ends <= 1);
            if ends == 1 {
                let ends_last = matches!(shell.actions.last(), Some(A::Hangup | A::Transfer { .. }));
                prop_assert!(ends_last, "the call ends with its last action");
            }
            if result.answered_after.is_none() {
                prop_assert!(result.digits.is_empty());
                let played = shell.actions.iter().any(|a| matches!(a, A::Play { .. }));
                prop_assert!(!played, "nothing plays before the answer");
            }
        }
    }
}
