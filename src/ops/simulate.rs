//! `warmline simulate`: one call against a dialplan without a phone.
//!
//! The call runs on a simulated clock that jumps from one happening to the next (nothing
//! sleeps): a prompt lasts the real length of its audio (a recorded prompt, or a text rendered
//! by the configured Piper voice), timers fire when their deadline is reached, and caller audio
//! files go through what a live call uses: 20 ms frames into the endpointer ([`Vad`]), a 300 ms
//! preroll and, from the start of speech, a real Vosk recogniser restricted to the menu's
//! grammar. The only wall-clock figure is the recogniser's decode time after the end of speech;
//! the transcript reaches the flow that much later in simulated time.
//!
//! Steps (`--say`, `--press`, `--wait`, in command-line order) are applied when the flow waits
//! for input: after the current prompt ends, or, for `--say`, at once when the menu listens
//! during its prompt (barge-in). When the steps run out the clock keeps going until the flow
//! ends or [`TIME_LIMIT`] of simulated time has passed.
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ivr::dialplan::{normalize_dtmf, Dialplan, DialplanError, LANGUAGES};
use crate::ivr::flow::{CallFlow, FlowAction, FlowEvent, HangupCause, Outcome, PromptItem};
use crate::media::codec::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::media::prompt::{load_wav, PromptStore};
use crate::speech::asr::AsrStream;
use crate::speech::vad::{Vad, VadConfig, VadEvent};

use super::speech::Speech;

/// What `warmline simulate` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateArgs {
    pub dialplan: PathBuf,
    /// In command-line order.
    pub steps: Vec<Step>,
    /// The call language (default: the dialplan's `[speech] language`).
    pub language: Option<String>,
    /// One JSON object instead of the timeline and summary.
    pub json: bool,
}

/// One thing the simulated caller does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Speak: the audio of this WAV file (any rate and channel count).
    Say(PathBuf),
    /// Press these keys, one after the other.
    Press(String),
    /// Stay silent this long.
    Wait(Duration),
}

/// Simulated time after which a call that has not ended is stopped.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);
/// The caller's audio clock: one frame of 8 kHz audio every 20 ms, as RTP delivers it.
const FRAME: Duration = Duration::from_millis(20);
/// Audio before the endpointer declared speech, fed to the recogniser first (as a live call
/// does, so the first syllable is not lost): 15 frames = 300 ms.
const PREROLL_FRAMES: usize = 15;
/// Text prompts are shown up to this many characters in the timeline.
const SHOWN_TEXT_CHARS: usize = 48;

type Frame = [i16; FRAME_SAMPLES];

/// Runs one simulated call and prints what happened. Exit status: 0 when the call ran, 1 for
/// an unusable dialplan, prompt folder or audio file, 2 for a usage error.
pub fn run(cfg: &Config, args: &SimulateArgs) -> ExitCode {
    if let Some(lang) = &args.language {
        if !LANGUAGES.contains(&lang.as_str()) {
            eprintln!(
                "error: --language {lang}: not a supported language (one of: {})",
                LANGUAGES.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    for step in &args.steps {
        if let Step::Press(keys) = step {
            if keys.is_empty() || keys.chars().any(|c| normalize_dtmf(c).is_none()) {
                eprintln!("error: --press {keys:?}: keys are 0-9, *, # and A-D");
                return ExitCode::from(2);
            }
        }
    }
    let prompts = match PromptStore::load_dir(&cfg.paths.prompts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: cannot load the prompts in {}: {e}",
                cfg.paths.prompts.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let dialplan = match Dialplan::load(&args.dialplan, &prompts) {
        Ok((plan, warnings)) => {
            for w in warnings {
                eprintln!("{w}");
            }
            Arc::new(plan)
        }
        Err(DialplanError::Invalid(diags)) => {
            for d in diags {
                eprintln!("{d}");
            }
            eprintln!(
                "error: {} has errors (see above); nothing was simulated",
                args.dialplan.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{}: error: {e}", args.dialplan.display());
            return ExitCode::FAILURE;
        }
    };
    // Every audio file is read before the call starts, so a bad one stops us at once.
    let mut inputs = Vec::with_capacity(args.steps.len());
    for step in &args.steps {
        inputs.push(match step {
            Step::Say(path) => match load_wav(path) {
                Ok(samples) => Input::Say {
                    name: path.display().to_string(),
                    samples,
                },
                Err(e) => {
                    eprintln!("error: caller audio for --say: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Step::Press(keys) => Input::Press(keys.clone()),
            Step::Wait(d) => Input::Wait(*d),
        });
    }
    let mut flow = CallFlow::new(dialplan.clone());
    if let Some(lang) = &args.language {
        flow.set_language(lang);
    }
    let language = flow.language().to_string();

    // Only the call language's model and voice: loading the others costs seconds and memory.
    let mut speech_cfg = cfg.clone();
    speech_cfg.speech.models.retain(|l, _| *l == language);
    speech_cfg.speech.voices.retain(|l, _| *l == language);
    let speech = Speech::load(&speech_cfg);
    let mut notes = Vec::new();
    let says = inputs.iter().any(|i| matches!(i, Input::Say { .. }));
    if says && dialplan.speech().is_none() {
        notes.push(format!(
            "{} has no phrases (keys only): --say audio is heard as silence",
            args.dialplan.display()
        ));
    } else if says && !speech.recognises(&language) {
        notes.push(no_model_note(cfg, &language));
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("error: cannot start a runtime to wait for the recogniser: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut engine = LiveEngine {
        prompts: &prompts,
        prompts_dir: &cfg.paths.prompts,
        speech: &speech,
        rt,
    };
    let wall = Instant::now();
    let mut sim = Simulator::new(flow, &mut engine);
    sim.notes = notes;
    sim.run(inputs);
    let report = sim.report(dialplan.name(), wall.elapsed());
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    ExitCode::SUCCESS
}

fn no_model_note(cfg: &Config, language: &str) -> String {
    let configured = match cfg.speech.models.get(language) {
        Some(dir) if dir.exists() => format!(
            "[speech] models.{language} = {} could not be loaded",
            dir.display()
        ),
        Some(dir) => format!(
            "[speech] models.{language} = {} does not exist",
            dir.display()
        ),
        None => format!("[speech] models has no entry for '{language}'"),
    };
    format!(
        "no speech recognition model for language '{language}' ({configured}): --say audio is heard as silence; docs/speech.md says where to get one (scripts/setup-vosk.sh for Korean)"
    )
}

/// A step with its audio loaded.
enum Input {
    Say { name: String, samples: Vec<i16> },
    Press(String),
    Wait(Duration),
}

/// The audio of one prompt item.
struct Clip {
    samples: usize,
    /// Wall-clock time spent getting a text's audio (disk cache or Piper) when it was not in
    /// memory yet.
    rendered: Option<Duration>,
}

/// A recogniser's answer for one utterance.
struct Heard {
    text: String,
    confidence: f32,
    words: Vec<(String, f32)>,
    /// Wall-clock time from the end of speech (`finish`) to the result.
    latency: Duration,
}

/// Where prompt audio and recognisers come from: the appliance's own services, or fakes in
/// the tests.
trait Engine {
    fn clip(&mut self, item: &PromptItem, language: &str) -> Result<Clip, String>;
    fn recognises(&self, language: &str) -> bool;
    fn start_turn(
        &mut self,
        language: &str,
        grammar: Vec<String>,
    ) -> Result<Box<dyn Recognition>, String>;
}

/// One recognition turn's recogniser.
trait Recognition {
    fn push(&mut self, frame: &Frame);
    /// End of speech: waits for the final result.
    fn finish(self: Box<Self>) -> Result<Heard, String>;
}

struct LiveEngine<'a> {
    prompts: &'a PromptStore,
    prompts_dir: &'a Path,
    speech: &'a Speech,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Engine for LiveEngine<'_> {
    fn clip(&mut self, item: &PromptItem, language: &str) -> Result<Clip, String> {
        match item {
            PromptItem::Recorded(name) => match self.prompts.get(name) {
                Some(c) => Ok(Clip {
                    samples: c.len(),
                    rendered: None,
                }),
                None => Err(format!(
                    "prompt '{name}' is not in {}",
                    self.prompts_dir.display()
                )),
            },
            PromptItem::Text(text) => {
                if let Some(c) = self.speech.clip(language, text) {
                    return Ok(Clip {
                        samples: c.len(),
                        rendered: None,
                    });
                }
                let started = Instant::now();
                let c = self.speech.render(language, text)?;
                Ok(Clip {
                    samples: c.len(),
                    rendered: Some(started.elapsed()),
                })
            }
        }
    }

    fn recognises(&self, language: &str) -> bool {
        self.speech.recognises(language)
    }

    fn start_turn(
        &mut self,
        language: &str,
        grammar: Vec<String>,
    ) -> Result<Box<dyn Recognition>, String> {
        match self.speech.start_turn(language, grammar) {
            Some(Ok(stream)) => Ok(Box::new(LiveTurn {
                stream,
                rt: self.rt.clone(),
            })),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("no recognition model for language '{language}'")),
        }
    }
}

struct LiveTurn {
    stream: AsrStream,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Recognition for LiveTurn {
    fn push(&mut self, frame: &Frame) {
        self.stream.push(frame);
    }

    fn finish(self: Box<Self>) -> Result<Heard, String> {
        let started = Instant::now();
        let result = self.rt.block_on(self.stream.result());
        let latency = started.elapsed();
        let t = result.map_err(|e| e.to_string())?;
        Ok(Heard {
            text: t.text,
            confidence: t.confidence,
            words: t.words.into_iter().map(|w| (w.word, w.conf)).collect(),
            latency,
        })
    }
}

/// The prompt being played.
struct Playing {
    id: u64,
    started: Duration,
    ends: Duration,
    interruptible: bool,
    what: String,
}

/// An open recognition turn with a recogniser (as in the live call shell).
struct Listening {
    turn: u64,
    vad: Vad,
    asr: Option<Box<dyn Recognition>>,
    preroll: VecDeque<Frame>,
    speaking: bool,
}

/// A recogniser result on its way to the flow.
struct Pending {
    turn: u64,
    at: Duration,
    event: FlowEvent,
    latency: Option<Duration>,
}

/// One utterance the endpointer found, for the summary.
#[derive(Debug, Clone, PartialEq)]
struct Utterance {
    started: Duration,
    /// When the endpointer reported its end (`end_silence` after the last speech).
    ended: Option<Duration>,
    /// Recogniser decode time after the end (wall clock).
    latency: Option<Duration>,
    heard: Option<String>,
}

/// What woke the simulated clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Happening {
    PlaybackEnd,
    Transcript,
    Timer,
    WaitOver,
    Frame,
}

struct Simulator<'e> {
    engine: &'e mut dyn Engine,
    flow: CallFlow,
    t0: Instant,
    now: Duration,
    /// When the next caller frame has fully arrived (frame = the 20 ms before it).
    next_frame: Duration,
    /// Caller audio still to come, and the time its first frame may start.
    caller: VecDeque<Frame>,
    caller_from: Duration,
    playing: Option<Playing>,
    /// The flow has a recognition turn open (it sent Listen and no StopListening yet).
    turn_open: bool,
    turns: u64,
    listening: Option<Listening>,
    pending: Option<Pending>,
    wait_until: Option<Duration>,
    /// The last key only started a multi-digit key, so the next timer is the inter-digit one.
    collecting: bool,
    /// A deadline the flow did nothing at (never expected): not woken for again.
    spent_deadline: Option<Instant>,
    timeline: Vec<(Duration, String)>,
    notes: Vec<String>,
    utterances: Vec<Utterance>,
    /// Text prompts rendered during the call (wall-clock render times).
    renders: Vec<Duration>,
    steps_left: usize,
}

impl<'e> Simulator<'e> {
    fn new(flow: CallFlow, engine: &'e mut dyn Engine) -> Self {
        Simulator {
            engine,
            flow,
            t0: Instant::now(),
            now: Duration::ZERO,
            next_frame: FRAME,
            caller: VecDeque::new(),
            caller_from: Duration::ZERO,
            playing: None,
            turn_open: false,
            turns: 0,
            listening: None,
            pending: None,
            wait_until: None,
            collecting: false,
            spent_deadline: None,
            timeline: Vec::new(),
            notes: Vec::new(),
            utterances: Vec::new(),
            renders: Vec::new(),
            steps_left: 0,
        }
    }

    fn at(&self, t: Duration) -> Instant {
        self.t0.checked_add(t).unwrap_or(self.t0)
    }

    fn log(&mut self, what: impl Into<String>) {
        self.timeline.push((self.now, what.into()));
    }

    fn note(&mut self, what: String) {
        self.log(format!("note: {what}"));
        self.notes.push(what);
    }

    fn run(&mut self, inputs: Vec<Input>) {
        let mut inputs: VecDeque<Input> = inputs.into();
        self.steps_left = inputs.len();
        let actions = self.flow.handle(FlowEvent::Answered, self.at(self.now));
        self.log("answered");
        self.apply(actions);
        loop {
            if self.flow.is_finished() {
                break;
            }
            if self.now >= TIME_LIMIT {
                self.note(format!(
                    "stopped after {} s of simulated time: the call had not ended",
                    TIME_LIMIT.as_secs()
                ));
                break;
            }
            if inputs.front().is_some_and(|i| self.ready_for(i)) {
                if let Some(input) = inputs.pop_front() {
                    self.steps_left = inputs.len();
                    self.start(input);
                }
                continue;
            }
            self.tick(TIME_LIMIT);
        }
        if !inputs.is_empty() {
            let n = inputs.len();
            self.note(format!(
                "{n} step{} not used: the call ended first",
                if n == 1 { " was" } else { "s were" }
            ));
        }
    }

    /// Whether the flow waits for the caller's next step.
    fn ready_for(&self, input: &Input) -> bool {
        let idle = self.caller.is_empty()
            && self.pending.is_none()
            && !self.listening.as_ref().is_some_and(|l| l.vad.in_speech())
            && self.wait_until.is_none_or(|w| self.now >= w);
        if !idle {
            return false;
        }
        match (input, &self.playing) {
            (_, None) => true,
            // Talking over a prompt that listens is what barge-in is for.
            (Input::Say { .. }, Some(p)) => p.interruptible && self.turn_open,
            _ => false,
        }
    }

    fn start(&mut self, input: Input) {
        match input {
            Input::Say { name, samples } => {
                let secs = samples.len() as f64 / f64::from(SAMPLE_RATE);
                let over = self.playing.as_ref().map(|p| p.what.clone());
                self.log(match over {
                    Some(what) => format!("caller says {name} ({secs:.2} s) over {what}"),
                    None => format!("caller says {name} ({secs:.2} s)"),
                });
                self.caller = samples
                    .chunks(FRAME_SAMPLES)
                    .map(|chunk| {
                        let mut f = [0i16; FRAME_SAMPLES];
                        for (d, s) in f.iter_mut().zip(chunk) {
                            *d = *s;
                        }
                        f
                    })
                    .collect();
                self.caller_from = self.now;
            }
            Input::Press(keys) => {
                for c in keys.chars() {
                    if self.flow.is_finished() {
                        break;
                    }
                    self.log(format!("key {c}"));
                    let deadline = self.flow.poll_timeout();
                    let actions = self.flow.handle(FlowEvent::Digit(c), self.at(self.now));
                    // Only the start of a longer key sets a new (inter-digit) deadline.
                    self.collecting = actions.is_empty() && self.flow.poll_timeout() != deadline;
                    self.apply(actions);
                }
            }
            Input::Wait(d) => {
                self.log(format!("caller waits {:.2} s", d.as_secs_f64()));
                self.wait_until = Some(self.now.saturating_add(d));
            }
        }
    }

    /// Moves the clock to the next happening (at most to `limit`) and handles it.
    fn tick(&mut self, limit: Duration) {
        let deadline = self.flow.poll_timeout();
        let timer = deadline
            .filter(|d| Some(*d) != self.spent_deadline)
            .map(|d| d.saturating_duration_since(self.t0));
        // In order of precedence when two fall on the same instant.
        let candidates = [
            (
                self.playing.as_ref().map(|p| p.ends),
                Happening::PlaybackEnd,
            ),
            (self.pending.as_ref().map(|p| p.at), Happening::Transcript),
            (timer, Happening::Timer),
            (
                self.wait_until.filter(|w| *w > self.now),
                Happening::WaitOver,
            ),
            (Some(self.next_frame), Happening::Frame),
        ];
        let next = candidates
            .iter()
            .filter_map(|(t, h)| t.map(|t| (t, *h)))
            .min_by_key(|(t, _)| *t);
        let Some((t, happening)) = next else {
            self.now = limit;
            return;
        };
        if t > limit {
            self.now = limit;
            return;
        }
        self.now = self.now.max(t);
        match happening {
            Happening::PlaybackEnd => {
                if let Some(p) = self.playing.take() {
                    let actions = self
                        .flow
                        .handle(FlowEvent::PlaybackFinished { playback: p.id }, self.at(t));
                    self.apply(actions);
                }
            }
            Happening::Transcript => self.deliver_transcript(),
            Happening::Timer => {
                let what = if self.pending.is_some()
                    || self.listening.as_ref().is_some_and(|l| l.speaking)
                {
                    "no transcript in time"
                } else if self.collecting {
                    "inter-digit timeout"
                } else {
                    "no-input timeout"
                };
                let actions = self.flow.handle_timeout(self.at(t));
                if !actions.is_empty() || self.flow.is_finished() {
                    self.log(what);
                } else if self.flow.poll_timeout() == deadline {
                    self.spent_deadline = deadline;
                }
                self.collecting = false;
                self.apply(actions);
            }
            Happening::WaitOver => self.wait_until = None,
            Happening::Frame => {
                let start = t.saturating_sub(FRAME);
                let frame = if start >= self.caller_from {
                    self.caller.pop_front()
                } else {
                    None
                };
                self.next_frame = t.saturating_add(FRAME);
                // The line carries silence when the caller is not talking.
                self.caller_frame(&frame.unwrap_or([0; FRAME_SAMPLES]), start);
            }
        }
    }

    /// One 20 ms frame of caller audio that began at `start` (as `on_caller_audio` in the
    /// live call shell).
    fn caller_frame(&mut self, frame: &Frame, start: Duration) {
        let at = self.at(start);
        let Some(l) = self.listening.as_mut() else {
            return;
        };
        let event = l.vad.push(frame, at);
        if l.speaking {
            if let Some(asr) = l.asr.as_mut() {
                asr.push(frame);
            }
        } else {
            if l.preroll.len() == PREROLL_FRAMES {
                l.preroll.pop_front();
            }
            l.preroll.push_back(*frame);
        }
        match event {
            Some(VadEvent::SpeechStart { .. }) => {
                l.speaking = true;
                if let Some(asr) = l.asr.as_mut() {
                    for f in l.preroll.drain(..) {
                        asr.push(&f);
                    }
                }
                self.utterances.push(Utterance {
                    started: self.now,
                    ended: None,
                    latency: None,
                    heard: None,
                });
                let actions = self
                    .flow
                    .handle(FlowEvent::SpeechStarted, self.at(self.now));
                let barge_in = actions
                    .iter()
                    .any(|a| matches!(a, FlowAction::StopPlayback));
                self.log(if barge_in {
                    "speech started (barge-in)"
                } else {
                    "speech started"
                });
                self.apply(actions);
            }
            Some(VadEvent::SpeechEnd { .. }) | Some(VadEvent::MaxUtterance) => {
                let turn = l.turn;
                let Some(asr) = l.asr.take() else {
                    return;
                };
                let cut = matches!(event, Some(VadEvent::MaxUtterance));
                self.log(if cut {
                    "speech cut at the longest utterance"
                } else {
                    "end of speech"
                });
                let (event, latency) = match asr.finish() {
                    Ok(h) => (
                        FlowEvent::Transcript {
                            text: h.text,
                            confidence: h.confidence,
                            words: h.words,
                        },
                        Some(h.latency),
                    ),
                    Err(e) => {
                        self.note(format!("recognition failed: {e}"));
                        (FlowEvent::SpeechTimeout, None)
                    }
                };
                if let Some(u) = self.utterances.last_mut() {
                    u.ended = Some(self.now);
                    u.latency = latency;
                }
                self.pending = Some(Pending {
                    turn,
                    at: self.now.saturating_add(latency.unwrap_or_default()),
                    event,
                    latency,
                });
            }
            Some(VadEvent::NoInput) | None => {}
        }
    }

    fn deliver_transcript(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if self.listening.as_ref().map(|l| l.turn) != Some(p.turn) {
            return; // the turn closed meanwhile (a key won): dropped, as in a live call
        }
        let before = self.flow.record().transcripts.len();
        let shown = match &p.event {
            FlowEvent::Transcript {
                text, confidence, ..
            } => Some((text.clone(), *confidence)),
            _ => None,
        };
        let actions = self.flow.handle(p.event, self.at(self.now));
        let taken = self
            .flow
            .record()
            .transcripts
            .get(before)
            .map(|t| t.matched.clone().unwrap_or_else(|| "no match".to_string()));
        let decoded = p
            .latency
            .map(|l| format!(", decoded in {} ms", l.as_millis()))
            .unwrap_or_default();
        match shown {
            Some((text, confidence)) => {
                if let Some(u) = self.utterances.last_mut() {
                    u.heard = Some(text.clone());
                }
                let taken = taken.unwrap_or_else(|| "ignored".to_string());
                self.log(format!(
                    "heard {text:?} ({confidence:.2}{decoded}) -> {taken}"
                ));
            }
            None => self.log("nothing recognised"),
        }
        self.apply(actions);
    }

    /// Carries out the flow's actions, in order, as the live call shell does.
    fn apply(&mut self, actions: Vec<FlowAction>) {
        for action in actions {
            match action {
                FlowAction::Play {
                    playback,
                    prompts,
                    interruptible,
                } => self.play(playback, &prompts, interruptible),
                FlowAction::StopPlayback => {
                    if let Some(p) = self.playing.take() {
                        let played = self.now.saturating_sub(p.started);
                        let total = p.ends.saturating_sub(p.started);
                        self.log(format!(
                            "stop {} ({:.2} of {:.2} s played)",
                            p.what,
                            played.as_secs_f64(),
                            total.as_secs_f64()
                        ));
                    }
                }
                FlowAction::Listen {
                    grammar,
                    language,
                    end_silence,
                } => self.listen(grammar, &language, end_silence),
                FlowAction::StopListening => {
                    self.turn_open = false;
                    self.listening = None;
                }
                FlowAction::OptOut => self.log(
                    "opt-out (a live call records the caller's number; nothing is written here)",
                ),
                FlowAction::Transfer { target } => {
                    self.playing = None;
                    self.log(format!("transfer to {target}"));
                }
                FlowAction::Hangup { cause } => {
                    self.playing = None;
                    self.log(match cause {
                        HangupCause::Normal => "hang up",
                        HangupCause::AttemptsExhausted => "hang up (attempts used up)",
                    });
                }
                // A simulated call has no agents, voiceprints or store: it shows what the
                // live shell would be asked and answers the way an appliance without them does.
                FlowAction::Queue {
                    queue,
                    priority,
                    reasons,
                    whisper,
                } => {
                    self.playing = None;
                    self.log(format!(
                        "queue {queue} (priority {priority}, reasons [{}], whisper {whisper:?}); no agents in a simulation",
                        reasons.join(", ")
                    ));
                    let at = self.at(self.now);
                    let next = self.flow.handle(
                        FlowEvent::QueueUnavailable {
                            reason: crate::ivr::dialplan::UnavailableReason::NoAgents,
                        },
                        at,
                    );
                    self.apply(next);
                }
                FlowAction::VerifyVoice {
                    customer_id,
                    ask_phrase,
                } => {
                    self.log(format!(
                        "voiceprint check of {customer_id} (ask phrase: {ask_phrase}); not enrolled in a simulation"
                    ));
                    let at = self.at(self.now);
                    let next = self.flow.handle(
                        FlowEvent::VoiceVerified {
                            decision: crate::ivr::caller::VoiceDecision::NotEnrolled,
                            score: None,
                        },
                        at,
                    );
                    self.apply(next);
                }
                FlowAction::RequestCallback { queue } => {
                    self.log(format!("callback requested for queue {queue}"))
                }
                FlowAction::RecordVoicemail { queue, max } => {
                    self.log(format!(
                        "voicemail for queue {queue} (up to {} s); nothing is recorded here",
                        max.as_secs()
                    ));
                    let at = self.at(self.now);
                    let next = self.flow.handle(FlowEvent::VoicemailDone, at);
                    self.apply(next);
                }
            }
        }
    }

    fn play(&mut self, playback: u64, prompts: &[PromptItem], interruptible: bool) {
        let language = self.flow.language().to_string();
        let mut samples = 0usize;
        let mut names = Vec::with_capacity(prompts.len());
        let mut rendered = Duration::ZERO;
        let mut any_rendered = false;
        for item in prompts {
            names.push(match item {
                PromptItem::Recorded(name) => name.clone(),
                PromptItem::Text(text) => shorten(text),
            });
            match self.engine.clip(item, &language) {
                Ok(c) => {
                    samples = samples.saturating_add(c.samples);
                    if let Some(r) = c.rendered {
                        any_rendered = true;
                        rendered = rendered.saturating_add(r);
                        self.renders.push(r);
                    }
                }
                Err(e) => self.note(format!("not played: {e}")),
            }
        }
        let len = Duration::from_secs_f64(samples as f64 / f64::from(SAMPLE_RATE));
        let what = if names.is_empty() {
            "(nothing)".to_string()
        } else {
            names.join(" + ")
        };
        let mut line = format!("play {what} ({:.2} s", len.as_secs_f64());
        if any_rendered {
            let _ = write!(line, "; text rendered in {} ms", rendered.as_millis());
        }
        line.push(')');
        self.log(line);
        self.playing = Some(Playing {
            id: playback,
            started: self.now,
            ends: self.now.saturating_add(len),
            interruptible,
            what,
        });
    }

    fn listen(&mut self, grammar: Vec<String>, language: &str, end_silence: Duration) {
        self.turns = self.turns.wrapping_add(1);
        self.turn_open = true;
        self.listening = None;
        let phrases = grammar.iter().filter(|p| *p != "[unk]").count();
        if !self.engine.recognises(language) {
            self.log(format!(
                "listening ({language}, {phrases} phrases; no recogniser: keys only)"
            ));
            return;
        }
        match self.engine.start_turn(language, grammar) {
            Ok(asr) => {
                self.log(format!("listening ({language}, {phrases} phrases)"));
                let cfg = VadConfig {
                    end_silence,
                    // The flow times no-input itself (it knows when the prompt ended).
                    no_input: Duration::from_secs(3600),
                    ..VadConfig::default()
                };
                self.listening = Some(Listening {
                    turn: self.turns,
                    vad: Vad::new(cfg, self.at(self.now)),
                    asr: Some(asr),
                    preroll: VecDeque::with_capacity(PREROLL_FRAMES),
                    speaking: false,
                });
            }
            Err(e) => self.note(format!("speech turn not started: {e}")),
        }
    }

    fn report(&self, dialplan: &str, wall: Duration) -> Report {
        let rec = self.flow.record();
        Report {
            dialplan: dialplan.to_string(),
            language: self.flow.language().to_string(),
            timeline: self.timeline.clone(),
            path: rec.path.clone(),
            digits: rec.digits.clone(),
            transcripts: rec
                .transcripts
                .iter()
                .map(|t| TranscriptRow {
                    menu: t.menu.clone(),
                    text: t.text.clone(),
                    confidence: t.confidence,
                    matched: t.matched.clone(),
                    score: t.score,
                })
                .collect(),
            outcome: outcome_name(&rec.outcome),
            transfer_to: match &rec.outcome {
                Outcome::Transferred(t) => Some(t.clone()),
                _ => None,
            },
            final_menu: rec.final_menu.clone(),
            finished: self.flow.is_finished(),
            ended_at: self.now,
            wall,
            utterances: self.utterances.clone(),
            renders: self.renders.clone(),
            notes: self.notes.clone(),
        }
    }
}

fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(SHOWN_TEXT_CHARS).collect();
    if text.chars().count() > SHOWN_TEXT_CHARS {
        s.push('…');
    }
    format!("{s:?}")
}

fn outcome_name(o: &Outcome) -> String {
    o.name().to_string()
}

#[derive(Debug, Clone, PartialEq)]
struct TranscriptRow {
    menu: String,
    text: String,
    confidence: f32,
    matched: Option<String>,
    score: f32,
}

/// Everything the command prints.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    dialplan: String,
    language: String,
    timeline: Vec<(Duration, String)>,
    path: Vec<String>,
    digits: String,
    transcripts: Vec<TranscriptRow>,
    outcome: String,
    transfer_to: Option<String>,
    final_menu: Option<String>,
    finished: bool,
    ended_at: Duration,
    wall: Duration,
    utterances: Vec<Utterance>,
    renders: Vec<Duration>,
    notes: Vec<String>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Seconds rounded to the millisecond, for JSON.
fn secs(d: Duration) -> f64 {
    ms(d) as f64 / 1000.0
}

impl Report {
    fn latencies(&self) -> Vec<Duration> {
        self.utterances.iter().filter_map(|u| u.latency).collect()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (t, what) in &self.timeline {
            let _ = writeln!(out, "t={:7.2}s  {what}", t.as_secs_f64());
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "dialplan     {} (language {})",
            self.dialplan, self.language
        );
        let _ = writeln!(out, "path         {}", self.path.join(" > "));
        let digits = if self.digits.is_empty() {
            "(none)"
        } else {
            &self.digits
        };
        let _ = writeln!(out, "digits       {digits}");
        if self.transcripts.is_empty() {
            let _ = writeln!(out, "transcripts  (none)");
        }
        for (i, t) in self.transcripts.iter().enumerate() {
            let label = if i == 0 { "transcripts" } else { "" };
            let _ = writeln!(
                out,
                "{label:<12} in {}: {:?} confidence {:.2}, score {:.2} -> {}",
                t.menu,
                t.text,
                t.confidence,
                t.score,
                t.matched.as_deref().unwrap_or("no match")
            );
        }
        let outcome = match &self.transfer_to {
            Some(target) => format!("{} to {target}", self.outcome),
            None => self.outcome.clone(),
        };
        let ended = if self.finished {
            format!("at {:.2} s", self.ended_at.as_secs_f64())
        } else {
            format!(
                "(not ended after {:.2} s of simulated time)",
                self.ended_at.as_secs_f64()
            )
        };
        let _ = writeln!(
            out,
            "outcome      {outcome} {ended}; simulated in {:.2} s",
            self.wall.as_secs_f64()
        );
        let lat = self.latencies();
        if !lat.is_empty() {
            let list: Vec<String> = lat
                .iter()
                .map(|l| format!("{} ms", l.as_millis()))
                .collect();
            let _ = writeln!(
                out,
                "timings      end of speech -> action: {}",
                list.join(", ")
            );
            let _ = writeln!(
                out,
                "             (recogniser decode after the end of speech, wall clock; the audio was fed faster than real time, so this is an upper bound; the endpointer's end_silence before it is not included)"
            );
        }
        if !self.renders.is_empty() {
            let list: Vec<String> = self
                .renders
                .iter()
                .map(|l| format!("{} ms", l.as_millis()))
                .collect();
            let _ = writeln!(
                out,
                "             text prompts rendered: {}",
                list.join(", ")
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note         {n}");
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "dialplan": self.dialplan,
            "language": self.language,
            "timeline": self.timeline.iter().map(|(t, what)| serde_json::json!({"t": secs(*t), "event": what})).collect::<Vec<_>>(),
            "path": self.path,
            "digits": self.digits,
            "transcripts": self.transcripts.iter().map(|t| serde_json::json!({
                "menu": t.menu, "text": t.text, "confidence": t.confidence,
                "matched": t.matched, "score": t.score,
            })).collect::<Vec<_>>(),
            "outcome": self.outcome,
            "transfer_to": self.transfer_to,
            "final_menu": self.final_menu,
            "finished": self.finished,
            "ended_at_s": secs(self.ended_at),
            "wall_s": secs(self.wall),
            "utterances": self.utterances.iter().map(|u| serde_json::json!({
                "started_s": secs(u.started),
                "ended_s": u.ended.map(secs),
                "decode_ms": u.latency.map(ms),
                "heard": u.heard,
            })).collect::<Vec<_>>(),
            "end_of_speech_to_action_ms": self.latencies().iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "tts_render_ms": self.renders.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivr::dialplan::AnyPrompt;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const PLAN: &str = r#"
name = "sim"
entry = "greeting"

[speech]
language = "en"
confidence = 0.6
reject_below = 0.3
end_silence_ms = 600

[defaults]
no_input_timeout = 5
max_attempts = 2
barge_in = true
no_input_prompt = "no-input"
no_match_prompt = "no-match"
final = { hangup = true, prompt = "goodbye" }

[menus.greeting]
prompt = "greeting"
next = "main"

[menus.main]
prompt = "main-menu"

[menus.main.options]
1 = { play = "balance", label = "balance", say = ["balance"] }
2 = { hangup = true, prompt = "goodbye", say = ["goodbye"] }
"#;

    const SECOND: Duration = Duration::from_secs(1);

    fn plan(text: &str) -> Arc<Dialplan> {
        match Dialplan::parse_str(Path::new("sim.toml"), text, &AnyPrompt) {
            Ok((p, _)) => Arc::new(p),
            Err(e) => panic!("test dialplan invalid:\n{e}"),
        }
    }

    /// Prompt lengths by name; recognisers that answer from a script.
    struct Fake {
        lengths: HashMap<String, f64>,
        languages: Vec<String>,
        answers: Arc<Mutex<VecDeque<&'static str>>>,
        /// Frames each recogniser received.
        fed: Arc<Mutex<Vec<usize>>>,
        latency: Duration,
    }

    impl Fake {
        fn new() -> Self {
            let lengths = [
                ("greeting", 3.0),
                ("main-menu", 4.0),
                ("balance", 2.0),
                ("goodbye", 1.5),
                ("no-input", 1.0),
                ("no-match", 1.0),
            ]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
            Fake {
                lengths,
                languages: vec!["en".into()],
                answers: Arc::default(),
                fed: Arc::default(),
                latency: Duration::from_millis(120),
            }
        }
    }

    impl Engine for Fake {
        fn clip(&mut self, item: &PromptItem, _language: &str) -> Result<Clip, String> {
            match item {
                PromptItem::Recorded(name) => self
                    .lengths
                    .get(name)
                    .map(|s| Clip {
                        samples: (s * 8000.0) as usize,
                        rendered: None,
                    })
                    .ok_or_else(|| format!("no prompt {name}")),
                PromptItem::Text(_) => Err("no voice".into()),
            }
        }
        fn recognises(&self, language: &str) -> bool {
            self.languages.iter().any(|l| l == language)
        }
        fn start_turn(
            &mut self,
            _language: &str,
            _grammar: Vec<String>,
        ) -> Result<Box<dyn Recognition>, String> {
            let mut fed = self.fed.lock().unwrap();
            fed.push(0);
            Ok(Box::new(FakeTurn {
                index: fed.len() - 1,
                fed: self.fed.clone(),
                answers: self.answers.clone(),
                latency: self.latency,
            }))
        }
    }

    struct FakeTurn {
        index: usize,
        fed: Arc<Mutex<Vec<usize>>>,
        answers: Arc<Mutex<VecDeque<&'static str>>>,
        latency: Duration,
    }

    impl Recognition for FakeTurn {
        fn push(&mut self, _frame: &Frame) {
            self.fed.lock().unwrap()[self.index] += 1;
        }
        fn finish(self: Box<Self>) -> Result<Heard, String> {
            let text = self.answers.lock().unwrap().pop_front().unwrap_or("");
            Ok(Heard {
                text: text.to_string(),
                confidence: 0.9,
                words: Vec::new(),
                latency: self.latency,
            })
        }
    }

    /// `before` s of digital silence, `talk` s of a voiced 140 Hz harmonic signal, `after` s
    /// of silence, at 8 kHz.
    fn speech(before: f64, talk: f64, after: f64) -> Vec<i16> {
        let n = |s: f64| (s * 8000.0) as usize;
        let mut out = vec![0i16; n(before)];
        for i in 0..n(talk) {
            let t = i as f64 / 8000.0;
            let v: f64 = (1..=12)
                .map(|k| (2.0 * std::f64::consts::PI * 140.0 * k as f64 * t).sin() / k as f64)
                .sum();
            out.push((v * 4000.0) as i16);
        }
        out.extend(std::iter::repeat_n(0i16, n(after)));
        out
    }

    fn say(samples: Vec<i16>) -> Input {
        Input::Say {
            name: "caller.wav".into(),
            samples,
        }
    }

    fn simulate(text: &str, fake: &mut Fake, inputs: Vec<Input>) -> Report {
        let mut sim = Simulator::new(CallFlow::new(plan(text)), fake);
        sim.run(inputs);
        sim.report("sim", Duration::ZERO)
    }

    /// When `what` first appears in the timeline.
    fn when(r: &Report, what: &str) -> Duration {
        match r.timeline.iter().find(|(_, w)| w.contains(what)) {
            Some((t, _)) => *t,
            None => panic!("no {what:?} in {:#?}", r.timeline),
        }
    }

    fn near(a: Duration, b: Duration, tolerance: Duration) -> bool {
        a.abs_diff(b) <= tolerance
    }

    #[test]
    fn a_key_waits_for_the_prompt_and_prompts_take_their_length() {
        let mut fake = Fake::new();
        let r = simulate(
            PLAN,
            &mut fake,
            vec![Input::Press("1".into()), Input::Press("2".into())],
        );
        // greeting 3 s, then main-menu 4 s, then key 1 at 7 s; balance 2 s + main-menu 4 s.
        assert_eq!(when(&r, "play main-menu"), 3 * SECOND);
        assert_eq!(when(&r, "key 1"), 7 * SECOND);
        assert_eq!(when(&r, "play balance"), 7 * SECOND);
        assert_eq!(when(&r, "key 2"), 13 * SECOND);
        assert_eq!(when(&r, "hang up"), Duration::from_secs_f64(14.5));
        assert_eq!(r.digits, "12");
        assert_eq!(r.outcome, "completed");
        assert_eq!(r.path, vec!["greeting", "main", "main"]);
        assert!(r.finished);
        assert_eq!(r.ended_at, Duration::from_secs_f64(14.5));
    }

    #[test]
    fn speech_over_the_greeting_barges_in_and_selects_by_voice() {
        let mut fake = Fake::new();
        fake.answers.lock().unwrap().push_back("balance");
        // 0.5 s silence, 1 s speech, 1 s silence: spoken during the 3 s greeting.
        let r = simulate(PLAN, &mut fake, vec![say(speech(0.5, 1.0, 1.0))]);
        let started = when(&r, "speech started (barge-in)");
        // The endpointer needs 200 ms of sustained speech.
        assert!(
            started >= Duration::from_millis(700) && started <= Duration::from_millis(800),
            "{started:?}"
        );
        assert!(r
            .timeline
            .iter()
            .any(|(t, w)| *t == started && w.starts_with("stop greeting")));
        // End of speech after 600 ms of silence; the transcript 120 ms (decode) later.
        let ended = when(&r, "end of speech");
        assert!(
            near(
                ended,
                Duration::from_millis(2100),
                Duration::from_millis(40)
            ),
            "{ended:?}"
        );
        assert_eq!(when(&r, "heard \"balance\""), ended + fake.latency);
        assert_eq!(when(&r, "play balance"), ended + fake.latency);
        assert_eq!(r.path.first().map(String::as_str), Some("greeting"));
        assert!(
            r.path.contains(&"main(voice:balance)".to_string()),
            "{:?}",
            r.path
        );
        assert_eq!(r.transcripts.len(), 1);
        assert_eq!(r.transcripts[0].matched.as_deref(), Some("main:1"));
        assert_eq!(r.digits, "");
        // The recogniser got the 300 ms preroll plus the speech and the trailing silence.
        let fed = fake.fed.lock().unwrap()[0];
        assert!((75..=100).contains(&fed), "{fed} frames");
        assert_eq!(r.utterances.len(), 1);
        assert_eq!(r.utterances[0].latency, Some(fake.latency));
    }

    #[test]
    fn without_barge_in_speech_waits_for_the_prompt_end() {
        let text = PLAN.replace("barge_in = true", "barge_in = false");
        let mut fake = Fake::new();
        fake.answers.lock().unwrap().push_back("goodbye");
        let r = simulate(&text, &mut fake, vec![say(speech(0.5, 1.0, 1.0))]);
        // Greeting 3 s and main-menu 4 s play out; the caller talks after them.
        assert_eq!(when(&r, "caller says"), 7 * SECOND);
        let started = when(&r, "speech started");
        assert!(started >= Duration::from_millis(7700), "{started:?}");
        assert!(!r.timeline.iter().any(|(_, w)| w.contains("barge-in")));
        assert_eq!(r.transcripts[0].matched.as_deref(), Some("main:2"));
        assert_eq!(r.outcome, "completed");
    }

    #[test]
    fn wait_lets_the_no_input_timer_fire() {
        let mut fake = Fake::new();
        let r = simulate(PLAN, &mut fake, vec![Input::Wait(6 * SECOND)]);
        // main-menu ends at 7 s; 5 s later: no input, re-prompt, then the attempts run out.
        assert_eq!(when(&r, "caller waits"), 7 * SECOND);
        assert_eq!(when(&r, "no-input timeout"), 12 * SECOND);
        assert_eq!(when(&r, "play no-input + main-menu"), 12 * SECOND);
        // Second failure at 12 + 5 + 5: final action (goodbye, then hang up).
        assert_eq!(when(&r, "play goodbye"), 22 * SECOND);
        assert_eq!(r.outcome, "attempts-exhausted");
        assert!(r.finished);
    }

    #[test]
    fn a_language_without_a_model_hears_silence() {
        let mut fake = Fake::new();
        fake.languages.clear();
        let r = simulate(PLAN, &mut fake, vec![say(speech(0.5, 1.0, 1.0))]);
        assert!(!r.timeline.iter().any(|(_, w)| w.contains("speech started")));
        assert!(when(&r, "listening") == Duration::ZERO);
        assert!(r.timeline.iter().any(|(_, w)| w.contains("no recogniser")));
        assert!(r.transcripts.is_empty());
        assert_eq!(r.outcome, "attempts-exhausted");
        assert!(fake.fed.lock().unwrap().is_empty());
    }

    #[test]
    fn a_call_that_never_ends_stops_at_the_time_limit() {
        let text = PLAN
            .replace("no_input_timeout = 5", "no_input_timeout = 30")
            .replace("max_attempts = 2", "max_attempts = 9");
        let mut fake = Fake::new();
        let r = simulate(&text, &mut fake, Vec::new());
        assert_eq!(r.ended_at, TIME_LIMIT);
        assert!(!r.finished);
        assert_eq!(r.outcome, "in-progress");
        assert!(r.notes.iter().any(|n| n.contains("60 s")), "{:?}", r.notes);
    }

    #[test]
    fn steps_after_the_end_of_the_call_are_reported_unused() {
        let mut fake = Fake::new();
        let r = simulate(
            PLAN,
            &mut fake,
            vec![Input::Press("2".into()), Input::Press("1".into())],
        );
        assert_eq!(r.digits, "2");
        assert!(r.notes.iter().any(|n| n.contains("1 step was not used")));
    }

    #[test]
    fn the_next_step_waits_for_the_transcript() {
        let mut fake = Fake::new();
        fake.answers.lock().unwrap().push_back("goodbye");
        fake.latency = Duration::from_secs(2);
        // The caller's audio is over long before the (slow) result: the key still waits for
        // it, and the result (option 2, goodbye) ends the call first.
        let r = simulate(
            PLAN,
            &mut fake,
            vec![say(speech(0.5, 1.0, 1.0)), Input::Press("1".into())],
        );
        assert_eq!(when(&r, "heard"), when(&r, "end of speech") + fake.latency);
        assert_eq!(r.transcripts[0].matched.as_deref(), Some("main:2"));
        assert_eq!(r.digits, "", "the call ended before the key");
        assert!(r.notes.iter().any(|n| n.contains("1 step was not used")));
    }

    #[test]
    fn json_has_the_record_fields() {
        let mut fake = Fake::new();
        let r = simulate(PLAN, &mut fake, vec![Input::Press("2".into())]);
        let v = r.json();
        assert_eq!(v["path"], serde_json::json!(["greeting", "main"]));
        assert_eq!(v["digits"], "2");
        assert_eq!(v["outcome"], "completed");
        assert_eq!(v["finished"], true);
        assert_eq!(v["timeline"][0]["t"], 0.0);
        assert!(r.text().contains("path         greeting > main"));
    }
}
