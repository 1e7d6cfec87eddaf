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
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ivr::dialplan::{normalize_dtmf, Action, Dialplan, Menu, MenuKind, Next};

/// What the shell reports to the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// The call is up; the flow starts in the dialplan's entry menu.
    Answered,
    /// A DTMF key (`0-9`, `*`, `#`, `A-D`; lower-case `a-d` is accepted).
    Digit(char),
    /// Playback `playback` played to its end (not sent for a stopped playback).
    PlaybackFinished { playback: u64 },
    /// The caller hung up.
    Hangup,
}

/// What the flow asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAction {
    /// Play the prompts back to back, then report `PlaybackFinished { playback }`.
    Play {
        playback: u64,
        prompts: Vec<String>,
        interruptible: bool,
    },
    /// Barge-in: stop the current playback at once (no `PlaybackFinished` for it).
    StopPlayback,
    /// Record the caller's number in the opt-out list and commit it before the next action.
    OptOut,
    /// Hand the call to `target`; the flow is finished.
    Transfer { target: String },
    /// End the call; the flow is finished.
    Hangup { cause: HangupCause },
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
}

/// What happened in one call, for call records and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// Menus entered, in order, repeats included (a re-prompt is not a new entry).
    pub path: Vec<String>,
    /// Every key pressed between answer and the end of the flow, in order, including keys
    /// ignored during non-interruptible prompts.
    pub digits: String,
    pub outcome: Outcome,
    /// The menu the caller was in last (`None` before the call is answered).
    pub final_menu: Option<String>,
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
    Finished,
}

/// The result of one key in a menu.
enum Press {
    Ignore,
    Collect(String),
    Select(Action),
    NoMatch,
}

#[derive(Clone, Copy)]
enum Failure {
    NoInput,
    NoMatch,
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
}

impl CallFlow {
    pub fn new(dialplan: Arc<Dialplan>) -> Self {
        CallFlow {
            dialplan,
            state: State::NotAnswered,
            menu: String::new(),
            failures: 0,
            last_playback: 0,
            record: FlowRecord {
                path: Vec::new(),
                digits: String::new(),
                outcome: Outcome::InProgress,
                final_menu: None,
            },
        }
    }

    pub fn handle(&mut self, event: FlowEvent, now: Instant) -> Vec<FlowAction> {
        if self.state == State::Finished {
            return Vec::new();
        }
        match event {
            FlowEvent::Answered => {
                if self.state != State::NotAnswered {
                    return Vec::new();
                }
                let entry = self.dialplan.entry().to_string();
                self.enter_menu(&entry, Vec::new())
            }
            FlowEvent::Hangup => {
                if self.record.outcome == Outcome::InProgress {
                    self.record.outcome = Outcome::Abandoned;
                }
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
                self.digit(digit, now)
            }
        }
    }

    /// Runs an expired no-input or inter-digit timer; does nothing before `poll_timeout()`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<FlowAction> {
        match &self.state {
            State::Waiting { deadline } if now >= *deadline => self.fail(Failure::NoInput),
            State::Collecting { input, deadline } if now >= *deadline => {
                let chosen = self
                    .current_menu()
                    .and_then(|m| m.lookup(input).exact)
                    .map(|o| o.action.clone());
                match chosen {
                    Some(action) => self.run_action(action, false),
                    None => self.fail(Failure::NoMatch),
                }
            }
            _ => Vec::new(),
        }
    }

    /// When `handle_timeout` should next be called, if a timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { deadline } | State::Collecting { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    pub fn record(&self) -> &FlowRecord {
        &self.record
    }

    /// True once the flow has emitted `Transfer` or `Hangup`, or the caller hung up.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    fn current_menu(&self) -> Option<&Menu> {
        self.dialplan.menu(&self.menu)
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
                return self.barge_into_next(next, digit, now);
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
        actions.extend(self.apply(press, now));
        actions
    }

    /// A key during a play-only menu: skip it (and any interruptible play-only menus after
    /// it) and let the key count in the first menu with options.
    fn barge_into_next(&mut self, next: String, digit: char, now: Instant) -> Vec<FlowAction> {
        let mut chain = vec![next];
        let mut target_has_options = false;
        // Bounded by the number of menus, so a loop of greetings cannot spin.
        for _ in 0..=self.dialplan.menus().count() {
            let Some(menu) = chain.last().and_then(|name| self.dialplan.menu(name)) else {
                break;
            };
            match &menu.kind {
                MenuKind::Choice { .. } => {
                    target_has_options = true;
                    break;
                }
                MenuKind::Announcement {
                    next: Next::Menu(following),
                } if menu.barge_in => {
                    let following = following.clone();
                    chain.push(following);
                }
                MenuKind::Announcement { .. } => break,
            }
        }
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
        let mut actions = vec![FlowAction::StopPlayback];
        for skipped in &chain {
            self.note_menu_entry(skipped);
        }
        if target_has_options {
            self.note_menu_entry(&target);
            actions.extend(self.apply(press, now));
        } else {
            actions.extend(self.enter_menu(&target, Vec::new()));
        }
        actions
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
            return match menu.lookup(input).exact {
                Some(option) => Press::Select(option.action.clone()),
                None => Press::NoMatch,
            };
        }
        let mut input = input.to_string();
        input.push(digit);
        let found = menu.lookup(&input);
        match (found.exact, found.longer) {
            (_, true) => Press::Collect(input),
            (Some(option), false) => Press::Select(option.action.clone()),
            (None, false) => Press::NoMatch,
        }
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
            Press::Select(action) => self.run_action(action, false),
            Press::NoMatch => self.fail(Failure::NoMatch),
        }
    }

    /// Counts a failed attempt; re-prompts, or runs the final action at `max_attempts`.
    fn fail(&mut self, failure: Failure) -> Vec<FlowAction> {
        let Some(menu) = self.current_menu() else {
            return self.hangup_now(HangupCause::Normal);
        };
        let max_attempts = menu.max_attempts;
        let final_action = menu.final_action.clone();
        let barge_in = menu.barge_in;
        let mut prompts = match failure {
            Failure::NoInput => menu.no_input_prompts.clone(),
            Failure::NoMatch => menu.no_match_prompts.clone(),
        };
        prompts.extend(menu.prompts.iter().cloned());
        self.failures = self.failures.saturating_add(1);
        if self.failures >= max_attempts {
            return self.run_action(final_action, true);
        }
        self.play(prompts, barge_in, After::Input)
    }

    /// Runs an option's action, or a menu's final action (`is_final`).
    fn run_action(&mut self, action: Action, is_final: bool) -> Vec<FlowAction> {
        let cause = if is_final {
            HangupCause::AttemptsExhausted
        } else {
            HangupCause::Normal
        };
        match action {
            Action::Goto { menu } => self.enter_menu(&menu, Vec::new()),
            Action::Play { prompts, then } => self.continue_to(then, prompts, cause),
            Action::Transfer { target, prompts } => {
                if prompts.is_empty() {
                    self.transfer_now(target)
                } else {
                    self.play(prompts, false, After::Transfer(target))
                }
            }
            Action::Hangup { prompts } => self.hang_up_after(prompts, cause),
            Action::OptOut { prompts, then } => {
                if self.record.outcome == Outcome::InProgress {
                    self.record.outcome = Outcome::OptedOut;
                }
                let mut actions = vec![FlowAction::OptOut];
                actions.extend(self.continue_to(then, prompts, HangupCause::Normal));
                actions
            }
        }
    }

    /// Plays `prompts` then goes to `then` (a menu's prompt joins the same playback).
    fn continue_to(
        &mut self,
        then: Next,
        prompts: Vec<String>,
        cause: HangupCause,
    ) -> Vec<FlowAction> {
        match then {
            Next::Menu(menu) => self.enter_menu(&menu, prompts),
            Next::Hangup => self.hang_up_after(prompts, cause),
        }
    }

    /// Enters `name`: records it, resets attempts and plays `preamble` + its prompt.
    fn enter_menu(&mut self, name: &str, preamble: Vec<String>) -> Vec<FlowAction> {
        let Some(menu) = self.dialplan.menu(name) else {
            // A loaded dialplan has no dangling menu names; end the call rather than hang.
            tracing::error!(menu = name, "dialplan refers to a missing menu");
            return self.hang_up_after(preamble, HangupCause::Normal);
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
        prompts.extend(menu.prompts.iter().cloned());
        self.note_menu_entry(name);
        self.play(prompts, interruptible, after)
    }

    fn note_menu_entry(&mut self, name: &str) {
        self.menu = name.to_string();
        self.failures = 0;
        self.record.path.push(name.to_string());
        self.record.final_menu = Some(name.to_string());
    }

    fn play(&mut self, prompts: Vec<String>, interruptible: bool, after: After) -> Vec<FlowAction> {
        self.last_playback = self.last_playback.wrapping_add(1);
        let playback = self.last_playback;
        self.state = State::Playing {
            playback,
            interruptible,
            after,
        };
        vec![FlowAction::Play {
            playback,
            prompts,
            interruptible,
        }]
    }

    fn after_playback(&mut self, after: After, now: Instant) -> Vec<FlowAction> {
        match after {
            After::Input => {
                let wait = self
                    .current_menu()
                    .map_or(Duration::ZERO, |m| m.no_input_timeout);
                self.state = State::Waiting {
                    deadline: deadline(now, wait),
                };
                Vec::new()
            }
            After::Continue(Next::Menu(menu)) => self.enter_menu(&menu, Vec::new()),
            After::Continue(Next::Hangup) => self.hang_up_after(Vec::new(), HangupCause::Normal),
            After::Hangup(cause) => self.hangup_now(cause),
            After::Transfer(target) => self.transfer_now(target),
        }
    }

    /// Decides to end the call: plays `prompts` (not interruptible), then hangs up.
    fn hang_up_after(&mut self, prompts: Vec<String>, cause: HangupCause) -> Vec<FlowAction> {
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
        self.state = State::Finished;
        vec![FlowAction::Hangup { cause }]
    }

    fn transfer_now(&mut self, target: String) -> Vec<FlowAction> {
        self.state = State::Finished;
        self.record.outcome = Outcome::Transferred(target.clone());
        vec![FlowAction::Transfer { target }]
    }
}

/// `now + wait`, saturating instead of panicking on an (absurd) overflow.
fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivr::dialplan::AnyPrompt;
    use std::path::Path;

    const DEMO: &str = include_str!("../../dialplans/demo-bank.toml");
    const SECOND: Duration = Duration::from_secs(1);

    fn plan(text: &str) -> Arc<Dialplan> {
        match Dialplan::parse_str(Path::new("t.toml"), text, &AnyPrompt) {
            Ok((plan, _)) => Arc::new(plan),
            Err(e) => panic!("test dialplan is invalid:\n{e}"),
        }
    }

    /// A call driven by a simulated clock, tracking what the shell would be playing.
    struct Sim {
        flow: CallFlow,
        now: Instant,
        playing: Option<(u64, Vec<String>, bool)>,
        opted_out: bool,
    }

    impl Sim {
        fn new(text: &str) -> Self {
            Sim {
                flow: CallFlow::new(plan(text)),
                now: Instant::now(),
                playing: None,
                opted_out: false,
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
                    }
                }
            }
        }

        fn send(&mut self, event: FlowEvent) -> Vec<FlowAction> {
            let actions = self.flow.handle(event, self.now);
            self.track(&actions);
            actions
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
            self.track(&actions);
            actions
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
            self.track(&actions);
            actions
        }

        fn prompts(&self) -> Vec<&str> {
            self.playing
                .as_ref()
                .map(|(_, p, _)| p.iter().map(String::as_str).collect())
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
            assert_eq!(sim.prompts(), vec!["main-menu"]);
            sim.finish();
            sim
        }
    }

    fn play_of(actions: &[FlowAction]) -> Vec<&str> {
        actions
            .iter()
            .find_map(|a| match a {
                FlowAction::Play { prompts, .. } => {
                    Some(prompts.iter().map(String::as_str).collect())
                }
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
                prompts: vec!["greeting".into()],
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
        assert_eq!(
            actions,
            vec![FlowAction::Transfer {
                target: "agents".into()
            }]
        );
        assert_eq!(sim.record().outcome, Outcome::Transferred("agents".into()));
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
        let mut sim = Sim::at_main_menu(DEMO);
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
                outcome: Outcome::OptedOut,
                final_menu: Some("main".into()),
            }
        );
        assert!(sim.flow.is_finished());
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
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => proptest::sample::select(vec!['0', '1', '2', '3', '9', '*', '#', '7', 'x'])
                    .prop_map(Step::Digit),
                4 => Just(Step::Finish),
                1 => (0u64..40).prop_map(Step::StaleFinish),
                3 => (0u64..8000).prop_map(Step::Wait),
                1 => Just(Step::Hangup),
                1 => Just(Step::Answer),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Random shells never make the flow panic, break the playback protocol or act
            /// after it finished.
            #[test]
            fn random_event_sequences_keep_the_protocol(steps in proptest::collection::vec(step(), 0..80)) {
                let mut flow = CallFlow::new(plan(DEMO));
                let mut now = Instant::now();
                let mut playing: Option<u64> = None;
                flow.handle(FlowEvent::Answered, now).into_iter().for_each(|a| {
                    if let FlowAction::Play { playback, .. } = a { playing = Some(playback); }
                });
                for s in steps {
                    let was_finished = flow.is_finished();
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
                    };
                    if was_finished {
                        prop_assert!(actions.is_empty());
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
                            FlowAction::Transfer { .. } | FlowAction::Hangup { .. } => {
                                prop_assert!(playing.is_none());
                                prop_assert!(flow.is_finished());
                            }
                            FlowAction::OptOut => {}
                        }
                    }
                    if flow.is_finished() {
                        playing = None;
                        prop_assert_eq!(flow.poll_timeout(), None);
                        prop_assert!(flow.record().outcome != Outcome::InProgress);
                    } else if playing.is_some() {
                        prop_assert_eq!(flow.poll_timeout(), None, "timer during playback");
                    } else {
                        prop_assert!(flow.poll_timeout().is_some(), "flow stuck: nothing plays, no timer");
                    }
                    prop_assert_eq!(flow.record().path.first().map(String::as_str), Some("greeting"));
                }
            }
        }
    }
}
