//! Answering-machine detection (AMD) for answered outbound calls, and waiting for the end
//! of a machine's greeting before leaving a message.
//!
//! Modelled on Asterisk's `app_amd`: the callee's first seconds of audio are cut into
//! 20 ms frames, each frame is voice or silence, voice runs of at least `min_word` are
//! words, and a handful of rules decide. A person says something short ("Hello?") and
//! waits; a machine talks on ("Hi, you've reached Anna, ... after the tone").
//!
//! | rule | verdict | reason |
//! |---|---|---|
//! | no word yet and `initial_silence` of silence | Machine | `initial_silence` |
//! | a greeting started, then `after_greeting_silence` of silence | Human | `human_pause` |
//! | more than `max_words` words | Machine | `max_words` |
//! | one word lasting `max_word` | Machine | `max_word_length` |
//! | `greeting` of voice in total | Machine | `long_greeting` |
//! | `total_analysis` of audio without any of the above | NotSure | `too_long` |
//!
//! Silence rules are checked on silent frames, word rules on voice frames, `too_long` last.
//!
//! Initial silence follows Asterisk and yields `Machine` (many voicemail systems answer with
//! a pause, and a person who picks up nearly always speaks first), but with confidence 0.5,
//! the lowest any decision gets: it is a weak hint. A caller that would rather treat a silent
//! callee as unknown can map `reason == "initial_silence"` to `NotSure`.
//!
//! Unlike Asterisk, "voice" is not a fixed threshold alone: a frame is voice when its RMS is
//! above `silence_threshold` **and** clearly above a tracked noise floor (`EnergyGate` below),
//! so steady line hiss, hum or comfort noise louder than the fixed threshold stays silence.
//! Voice runs shorter than `min_word` (clicks, pops) do not interrupt a silence.
//!
//! Sans-IO: the caller pushes decoded 8 kHz mono PCM; time is the amount of audio pushed.
use std::collections::VecDeque;
use std::time::Duration;

/// Sample rate of the PCM this module expects (decoded G.711).
const SAMPLE_RATE: u64 = 8000;
/// AMD analysis frame: 20 ms, the usual RTP packetisation.
const FRAME: usize = 160;
/// Beep analysis window (20 ms, 50 Hz resolution) and its hop (10 ms, for timing).
const BEEP_WINDOW: usize = 160;
const BEEP_HOP: usize = 80;

/// A frame starts a voice run when it is this far above the noise floor...
const VOICE_ON_DB: f64 = 6.0;
/// ...and keeps it going while at least this far above (hysteresis).
const VOICE_OFF_DB: f64 = 3.0;
/// Span over which steadiness is judged: shorter than a syllable-free stretch of speech
/// rarely is, longer than any click.
const STATIONARY_SPAN: Duration = Duration::from_millis(300);
/// Level spread (max - min, dB) within the span below which a sound is steady noise.
/// Speech swings 10-30 dB at the syllable rate; white noise in 20 ms frames about 2 dB.
const STATIONARY_SPREAD_DB: f64 = 3.0;
/// How fast the floor may creep up under unsteady sound (speech): slow enough that a
/// greeting of several seconds keeps its syllables above it.
const FLOOR_RISE_DB_PER_SEC: f64 = 1.5;

/// Beep search band and grid. The grid step is half the 50 Hz bin width of a 20 ms
/// window, so an off-grid tone loses at most ~1 dB.
const BEEP_MIN_HZ: f64 = 400.0;
const BEEP_MAX_HZ: f64 = 2000.0;
const BEEP_STEP_HZ: f64 = 25.0;
/// Share of a window's energy one frequency must hold to count as a tone. A pure tone on
/// the grid scores 1.0, half-way between grid points ~0.8; speech and noise stay far below.
const TONE_SHARE: f64 = 0.6;
/// Quietest tone taken as a beep (RMS, about -40 dBm0).
const TONE_MIN_RMS: f64 = 100.0;
/// Frequency drift and level change tolerated within one beep.
const TONE_MAX_DRIFT_HZ: f64 = 50.0;
const TONE_MAX_LEVEL_CHANGE_DB: f64 = 6.0;
/// Shortest beep. Measured with 20 ms windows at a 10 ms hop, so tones from about 140 ms
/// may pass; every tone of 150 ms or more does.
const BEEP_MIN: Duration = Duration::from_millis(150);
/// After a beep, this much unbroken silence must follow...
const BEEP_SILENCE: Duration = Duration::from_millis(60);
/// ...within this long of the tone's end, or the tone was something else (music, a tone
/// inside the greeting) and the wait goes on.
const BEEP_TAIL: Duration = Duration::from_millis(200);

/// Parameters of [`AmdDetector`]; the defaults are Asterisk's `amd.conf` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AmdConfig {
    /// Silence before any word after which the callee is taken for a machine.
    pub initial_silence: Duration,
    /// Total voice after which the greeting is too long for a person.
    pub greeting: Duration,
    /// Silence after the greeting started after which the callee is a person waiting.
    pub after_greeting_silence: Duration,
    /// Audio analysed before giving up with `NotSure`.
    pub total_analysis: Duration,
    /// Shortest voice run that is a word; shorter runs count as silence.
    pub min_word: Duration,
    /// Silence that separates two words.
    pub between_words_silence: Duration,
    /// A greeting with more words than this is a machine. Asterisk's `amd.conf` default 3
    /// uses a `>=` test (the third word is a machine); here 3 words are still allowed, because
    /// "Hello, who is this?" at telephone level splits into 3 words (espeak-ng measurements).
    pub max_words: u32,
    /// A single word this long is a machine.
    pub max_word: Duration,
    /// Absolute floor: a frame with a lower RMS is always silence. Negative values act as 0.
    pub silence_threshold: i16,
}

impl Default for AmdConfig {
    fn default() -> Self {
        Self {
            initial_silence: Duration::from_millis(2500),
            greeting: Duration::from_millis(1500),
            after_greeting_silence: Duration::from_millis(800),
            total_analysis: Duration::from_millis(5000),
            min_word: Duration::from_millis(100),
            between_words_silence: Duration::from_millis(50),
            max_words: 3,
            max_word: Duration::from_millis(5000),
            silence_threshold: 256,
        }
    }
}

/// Who answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmdDecision {
    Human,
    Machine,
    NotSure,
}

impl AmdDecision {
    /// Stable lower-case name for logs, CDRs and the database: "human", "machine", "unknown".
    pub fn as_str(self) -> &'static str {
        match self {
            AmdDecision::Human => "human",
            AmdDecision::Machine => "machine",
            AmdDecision::NotSure => "unknown",
        }
    }
}

/// The outcome of the analysis.
///
/// `confidence` (0.0..=1.0) grows with the margin of the measurement that did not decide
/// but could have contradicted the decision; each formula is monotonic in its measurement:
/// - `human_pause`: `0.5 + 0.5 * min(1 - voice/greeting, 1 - (words - 1)/max_words)`: a
///   short single word is near 1, a greeting that nearly hit the voice or word limit near 0.5.
/// - `long_greeting`, `max_word_length`: `0.5 + 0.5 * density`, where density is the share of
///   voice since the greeting started; a continuous recording is near 1, a person
///   talking on with pauses lower.
/// - `max_words`: `0.5 + 0.5 * min(1, voice/greeting)`: many short words in a short time are
///   weaker evidence than many words that also fill the greeting budget.
/// - `initial_silence`: always 0.5 (silence tells little either way).
/// - `too_long` (`NotSure`): always 0.0.
#[derive(Clone, Debug, PartialEq)]
pub struct AmdVerdict {
    pub decision: AmdDecision,
    pub confidence: f32,
    /// "human_pause", "long_greeting", "max_words", "max_word_length", "initial_silence",
    /// "too_long".
    pub reason: &'static str,
    /// Audio analysed when the verdict was reached.
    pub after: Duration,
}

/// Config durations converted to sample counts once.
#[derive(Clone, Debug)]
struct Limits {
    initial_silence: u64,
    greeting: u64,
    after_greeting_silence: u64,
    total_analysis: u64,
    min_word: u64,
    between_words_silence: u64,
    max_words: u32,
    max_word: u64,
}

impl Limits {
    fn new(cfg: &AmdConfig) -> Self {
        Self {
            initial_silence: samples(cfg.initial_silence),
            greeting: samples(cfg.greeting),
            after_greeting_silence: samples(cfg.after_greeting_silence),
            total_analysis: samples(cfg.total_analysis),
            min_word: samples(cfg.min_word),
            between_words_silence: samples(cfg.between_words_silence),
            max_words: cfg.max_words,
            max_word: samples(cfg.max_word),
        }
    }
}

/// Number of 8 kHz samples in `d`, saturating.
fn samples(d: Duration) -> u64 {
    let n = d.as_micros().saturating_mul(u128::from(SAMPLE_RATE)) / 1_000_000;
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Duration of `n` 8 kHz samples (125 µs each), saturating.
fn duration_of(n: u64) -> Duration {
    Duration::from_micros(n.saturating_mul(1_000_000 / SAMPLE_RATE))
}

/// Mean square of a block; `i16::MIN` squared fits easily in `i64` and in `f64`.
fn mean_square(block: &[i16]) -> f64 {
    if block.is_empty() {
        return 0.0;
    }
    let sum: f64 = block.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    sum / block.len() as f64
}

/// Level in dB relative to one LSB RMS; +1 keeps digital silence finite (0 dB).
fn level_db(mean_square: f64) -> f64 {
    10.0 * (mean_square + 1.0).log10()
}

/// Voice/silence classifier with an adaptive noise floor.
///
/// The floor drops at once to any quieter block (minimum tracking), jumps up to the
/// minimum of the last [`STATIONARY_SPAN`] when that span is steady (noise, hum, a tone),
/// and otherwise creeps up at [`FLOOR_RISE_DB_PER_SEC`]. It starts at the first block's
/// level, so noise present from the start is never voice. A block is voice when its RMS
/// reaches the absolute threshold and its level is [`VOICE_ON_DB`] above the floor
/// ([`VOICE_OFF_DB`] while already in voice).
#[derive(Clone, Debug)]
struct EnergyGate {
    /// Absolute floor as a mean square.
    abs_mean_square: f64,
    floor_db: Option<f64>,
    recent: VecDeque<f64>,
    span: usize,
    rise_per_block: f64,
    voiced: bool,
}

impl EnergyGate {
    fn new(threshold_rms: i16, block: Duration) -> Self {
        let rms = f64::from(threshold_rms.max(0));
        let block_ms = block.as_secs_f64() * 1000.0;
        let span_ms = STATIONARY_SPAN.as_secs_f64() * 1000.0;
        let span = (span_ms / block_ms).round().max(2.0) as usize;
        Self {
            abs_mean_square: rms * rms,
            floor_db: None,
            recent: VecDeque::with_capacity(span),
            span,
            rise_per_block: FLOOR_RISE_DB_PER_SEC * block.as_secs_f64(),
            voiced: false,
        }
    }

    /// Classifies one block (by its mean square) and then updates the floor with it.
    fn is_voice(&mut self, ms: f64) -> bool {
        let level = level_db(ms);
        let floor = *self.floor_db.get_or_insert(level);
        let margin = if self.voiced {
            VOICE_OFF_DB
        } else {
            VOICE_ON_DB
        };
        self.voiced = ms >= self.abs_mean_square && level >= floor + margin;

        if self.recent.len() == self.span {
            self.recent.pop_front();
        }
        self.recent.push_back(level);
        let new_floor = if level < floor {
            level
        } else {
            let (lo, hi) = self
                .recent
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &l| {
                    (lo.min(l), hi.max(l))
                });
            if self.recent.len() == self.span && hi - lo <= STATIONARY_SPREAD_DB {
                floor.max(lo)
            } else {
                (floor + self.rise_per_block).min(level)
            }
        };
        self.floor_db = Some(new_floor);
        self.voiced
    }
}

/// Sans-IO answering-machine detector; one per answered call. Push the callee's decoded
/// audio until a verdict comes back, then stop feeding it (further pushes return `None`).
#[derive(Clone, Debug)]
pub struct AmdDetector {
    limits: Limits,
    gate: EnergyGate,
    /// Partial analysis frame carried between pushes.
    pending: Vec<i16>,
    /// Samples analysed (whole frames only).
    analysed: u64,
    /// A first word was heard: the greeting (Asterisk's `inGreeting`) has started.
    greeting_started_at: Option<u64>,
    /// Inside a counted word (Asterisk's `STATE_IN_WORD`).
    in_word: bool,
    words: u32,
    /// Voice in the current run; gaps shorter than `between_words_silence` do not reset it.
    voice_run: u64,
    /// Silence since the last voice frame.
    gap: u64,
    /// Silence for the initial/after-greeting rules: since the last word frame, so short
    /// blips of noise do not restart it.
    silence_run: u64,
    /// Voice in words so far.
    voice_total: u64,
    verdict: Option<AmdVerdict>,
}

impl AmdDetector {
    pub fn new(cfg: AmdConfig) -> Self {
        Self {
            limits: Limits::new(&cfg),
            gate: EnergyGate::new(cfg.silence_threshold, duration_of(FRAME as u64)),
            pending: Vec::with_capacity(FRAME),
            analysed: 0,
            greeting_started_at: None,
            in_word: false,
            words: 0,
            voice_run: 0,
            gap: 0,
            silence_run: 0,
            voice_total: 0,
            verdict: None,
        }
    }

    /// Feeds audio of any length (20 ms = 160 samples expected); it is re-cut into 20 ms
    /// frames internally. Returns the verdict once, the first time it is reached; `None`
    /// before and after. Audio after the deciding frame is ignored.
    pub fn push(&mut self, pcm: &[i16]) -> Option<AmdVerdict> {
        if self.verdict.is_some() {
            return None;
        }
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (FRAME - self.pending.len()).min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.pending.extend_from_slice(head);
            rest = tail;
            if self.pending.len() == FRAME {
                let ms = mean_square(&self.pending);
                self.pending.clear();
                if let Some(v) = self.frame(ms) {
                    self.verdict = Some(v.clone());
                    return Some(v);
                }
            }
        }
        None
    }

    /// The verdict if already reached.
    pub fn verdict(&self) -> Option<&AmdVerdict> {
        self.verdict.as_ref()
    }

    /// Audio analysed so far (whole 20 ms frames).
    pub fn analysed(&self) -> Duration {
        duration_of(self.analysed)
    }

    /// One 20 ms frame, given by its mean square.
    fn frame(&mut self, ms: f64) -> Option<AmdVerdict> {
        let f = FRAME as u64;
        self.analysed = self.analysed.saturating_add(f);
        let l = &self.limits;
        if self.gate.is_voice(ms) {
            self.gap = 0;
            self.voice_run = self.voice_run.saturating_add(f);
            if self.voice_run < l.min_word {
                // Too short to be a word yet: still silence as far as the rules go.
                self.silence_run = self.silence_run.saturating_add(f);
            } else {
                if self.in_word {
                    self.voice_total = self.voice_total.saturating_add(f);
                } else {
                    self.in_word = true;
                    self.words = self.words.saturating_add(1);
                    self.voice_total = self.voice_total.saturating_add(self.voice_run);
                    if self.greeting_started_at.is_none() {
                        self.greeting_started_at =
                            Some(self.analysed.saturating_sub(self.voice_run));
                    }
                }
                self.silence_run = 0;
                if self.words > l.max_words {
                    let c = 0.5 + 0.5 * ratio(self.voice_total, l.greeting).min(1.0);
                    return Some(self.decide(AmdDecision::Machine, c, "max_words"));
                }
                if self.voice_run >= l.max_word {
                    let c = 0.5 + 0.5 * self.density();
                    return Some(self.decide(AmdDecision::Machine, c, "max_word_length"));
                }
                if self.voice_total >= l.greeting {
                    let c = 0.5 + 0.5 * self.density();
                    return Some(self.decide(AmdDecision::Machine, c, "long_greeting"));
                }
            }
        } else {
            self.gap = self.gap.saturating_add(f);
            self.silence_run = self.silence_run.saturating_add(f);
            if self.gap >= l.between_words_silence {
                self.in_word = false;
                self.voice_run = 0;
            }
            match self.greeting_started_at {
                None if self.silence_run >= l.initial_silence => {
                    return Some(self.decide(AmdDecision::Machine, 0.5, "initial_silence"));
                }
                Some(_) if self.silence_run >= l.after_greeting_silence => {
                    let by_voice = 1.0 - ratio(self.voice_total, l.greeting);
                    let by_words = 1.0
                        - ratio(
                            u64::from(self.words.saturating_sub(1)),
                            u64::from(l.max_words.max(1)),
                        );
                    let c = 0.5 + 0.5 * by_voice.min(by_words);
                    return Some(self.decide(AmdDecision::Human, c, "human_pause"));
                }
                _ => {}
            }
        }
        if self.analysed >= self.limits.total_analysis {
            return Some(self.decide(AmdDecision::NotSure, 0.0, "too_long"));
        }
        None
    }

    /// Share of voice in the audio since the greeting started.
    fn density(&self) -> f64 {
        let start = self.greeting_started_at.unwrap_or(0);
        ratio(self.voice_total, self.analysed.saturating_sub(start)).min(1.0)
    }

    fn decide(&self, decision: AmdDecision, confidence: f64, reason: &'static str) -> AmdVerdict {
        AmdVerdict {
            decision,
            confidence: confidence.clamp(0.0, 1.0) as f32,
            reason,
            after: duration_of(self.analysed),
        }
    }
}

/// `num / den` as a float, 1.0 when `den` is zero (the limit is already reached).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// How a machine's greeting ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GreetingEnd {
    /// A record tone, followed by silence.
    Beep,
    /// No beep, but the configured stretch of silence.
    Silence,
    /// `max_wait` passed without either.
    Timeout,
}

/// A tone being followed across analysis windows.
#[derive(Clone, Copy, Debug)]
struct ToneRun {
    hz: f64,
    level_db: f64,
    windows: u64,
}

/// Waits, after a `Machine` verdict, for the moment to start speaking a message: the end of
/// a record beep (a steady 400-2000 Hz tone of at least 150 ms, found with a Goertzel bank
/// on a 25 Hz grid, followed within 200 ms by 60 ms of silence), or `silence` of silence,
/// or gives up at `max_wait`. Silence uses the same adaptive floor as [`AmdDetector`] with
/// Asterisk's default absolute threshold (RMS 256). Time is the amount of audio pushed.
#[derive(Clone, Debug)]
pub struct BeepWaiter {
    silence_limit: u64,
    max_wait: u64,
    gate: EnergyGate,
    /// Goertzel coefficients `2 cos(w)` of the frequency grid, with their frequency.
    bank: Vec<(f64, f64)>,
    /// The analysis window being filled: up to `BEEP_WINDOW` samples, slid by `BEEP_HOP`.
    window: Vec<i16>,
    /// Samples received since the last hop boundary.
    hop_fill: usize,
    elapsed: u64,
    silence_run: u64,
    tone: Option<ToneRun>,
    /// When a long-enough tone ended, waiting for silence.
    beep_ended_at: Option<u64>,
    outcome: Option<GreetingEnd>,
}

impl Default for BeepWaiter {
    /// 1.5 s of silence, 20 s at most.
    fn default() -> Self {
        Self::new(Duration::from_millis(1500), Duration::from_secs(20))
    }
}

impl BeepWaiter {
    pub fn new(silence: Duration, max_wait: Duration) -> Self {
        let steps = ((BEEP_MAX_HZ - BEEP_MIN_HZ) / BEEP_STEP_HZ).round() as usize;
        let bank = (0..=steps)
            .map(|i| {
                let hz = BEEP_MIN_HZ + i as f64 * BEEP_STEP_HZ;
                let w = 2.0 * std::f64::consts::PI * hz / SAMPLE_RATE as f64;
                (hz, 2.0 * w.cos())
            })
            .collect();
        Self {
            silence_limit: samples(silence),
            max_wait: samples(max_wait),
            gate: EnergyGate::new(
                AmdConfig::default().silence_threshold,
                duration_of(BEEP_HOP as u64),
            ),
            bank,
            window: Vec::with_capacity(BEEP_WINDOW),
            hop_fill: 0,
            elapsed: 0,
            silence_run: 0,
            tone: None,
            beep_ended_at: None,
            outcome: None,
        }
    }

    /// Feeds audio of any length. Returns how the greeting ended, once; `None` before and
    /// after.
    pub fn push(&mut self, pcm: &[i16]) -> Option<GreetingEnd> {
        if self.outcome.is_some() {
            return None;
        }
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (BEEP_HOP - self.hop_fill).min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.window.extend_from_slice(head);
            self.hop_fill += take;
            rest = tail;
            if self.hop_fill < BEEP_HOP {
                continue;
            }
            self.hop_fill = 0;
            let end = self.hop();
            if self.window.len() >= BEEP_WINDOW {
                self.window.drain(..BEEP_HOP);
            }
            if let Some(end) = end {
                self.outcome = Some(end);
                return Some(end);
            }
        }
        None
    }

    /// How the greeting ended, if it has.
    pub fn outcome(&self) -> Option<GreetingEnd> {
        self.outcome
    }

    /// One 10 ms hop: analyse the last 20 ms.
    fn hop(&mut self) -> Option<GreetingEnd> {
        let hop = BEEP_HOP as u64;
        self.elapsed = self.elapsed.saturating_add(hop);
        if self.window.len() == BEEP_WINDOW {
            let ms = mean_square(&self.window);
            let tone = self.tone_in_window(ms);
            let voice = self.gate.is_voice(ms);
            if let Some(end) = self.track(tone, ms, voice) {
                return Some(end);
            }
        }
        if self.elapsed >= self.max_wait {
            return Some(GreetingEnd::Timeout);
        }
        None
    }

    /// Updates tone and silence tracking with one window's findings.
    fn track(&mut self, tone_hz: Option<f64>, ms: f64, voice: bool) -> Option<GreetingEnd> {
        let hop = BEEP_HOP as u64;
        let level = level_db(ms);
        match (tone_hz, self.tone.as_mut()) {
            (Some(hz), Some(run))
                if (hz - run.hz).abs() <= TONE_MAX_DRIFT_HZ
                    && (level - run.level_db).abs() <= TONE_MAX_LEVEL_CHANGE_DB =>
            {
                run.windows = run.windows.saturating_add(1);
            }
            (Some(hz), _) => {
                self.tone = Some(ToneRun {
                    hz,
                    level_db: level,
                    windows: 1,
                });
            }
            (None, run) => {
                if let Some(run) = run {
                    // A run of n windows covers one window plus n - 1 hops.
                    let covered = (BEEP_WINDOW as u64)
                        .saturating_add(run.windows.saturating_sub(1).saturating_mul(hop));
                    if covered >= samples(BEEP_MIN) {
                        self.beep_ended_at = Some(self.elapsed);
                    }
                }
                self.tone = None;
            }
        }

        if tone_hz.is_none() && !voice {
            self.silence_run = self.silence_run.saturating_add(hop);
        } else {
            self.silence_run = 0;
        }
        if let Some(ended) = self.beep_ended_at {
            if self.silence_run >= samples(BEEP_SILENCE) {
                return Some(GreetingEnd::Beep);
            }
            if self.elapsed.saturating_sub(ended) > samples(BEEP_TAIL) {
                self.beep_ended_at = None;
            }
        }
        if self.silence_run >= self.silence_limit {
            return Some(GreetingEnd::Silence);
        }
        None
    }

    /// The frequency holding at least [`TONE_SHARE`] of the window's energy, if any.
    fn tone_in_window(&self, ms: f64) -> Option<f64> {
        if ms < TONE_MIN_RMS * TONE_MIN_RMS {
            return None;
        }
        let n = self.window.len() as f64;
        let energy = ms * n;
        let mut best = (0.0, 0.0);
        for &(hz, coeff) in &self.bank {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &x in &self.window {
                let s0 = f64::from(x) + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            if power > best.1 {
                best = (hz, power);
            }
        }
        // A sinusoid of amplitude A on the grid: power (A n / 2)^2, energy A^2 n / 2.
        let share = 2.0 * best.1 / (n * energy);
        (share >= TONE_SHARE).then_some(best.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const RATE: f64 = 8000.0;

    /// xorshift64*: deterministic noise without a crate.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
        /// Roughly Gaussian, unit variance (sum of 3 uniforms of variance 1/3 each).
        fn gauss(&mut self) -> f64 {
            self.uniform() + self.uniform() + self.uniform()
        }
    }

    fn n_samples(ms: u32) -> usize {
        (ms as usize) * 8
    }

    fn to_i16(v: f64) -> i16 {
        v.round().clamp(-32768.0, 32767.0) as i16
    }

    /// Line noise of the given RMS.
    fn noise(ms: u32, rms: f64, rng: &mut Rng) -> Vec<i16> {
        (0..n_samples(ms))
            .map(|_| to_i16(rng.gauss() * rms))
            .collect()
    }

    fn quiet(ms: u32, rng: &mut Rng) -> Vec<i16> {
        noise(ms, 20.0, rng)
    }

    /// Voiced speech stand-in: a gliding 110-150 Hz pitch with 1/k harmonics up to 3.4 kHz,
    /// 4 Hz syllable modulation (never to zero, as within connected speech), 25 ms fades,
    /// and a little noise. Peak amplitude about 6000.
    fn speech(ms: u32, rng: &mut Rng) -> Vec<i16> {
        let n = n_samples(ms);
        let fade = n_samples(25).min(n / 2).max(1) as f64;
        let mut phase = 0.0f64;
        (0..n)
            .map(|i| {
                let t = i as f64 / RATE;
                let f0 = 130.0 + 20.0 * (2.0 * PI * 1.3 * t).sin();
                phase += 2.0 * PI * f0 / RATE;
                let mut v = 0.0;
                let mut k = 1.0;
                while k * f0 < 3400.0 {
                    v += (k * phase).sin() / k;
                    k += 1.0;
                }
                let syllables = 0.65 + 0.35 * (2.0 * PI * 4.0 * t - PI / 2.0).sin();
                let edge = (i as f64 / fade).min((n - i) as f64 / fade).min(1.0);
                to_i16(v * 2500.0 * syllables * edge + rng.gauss() * 20.0)
            })
            .collect()
    }

    fn tone(hz: f64, ms: u32, amp: f64) -> Vec<i16> {
        (0..n_samples(ms))
            .map(|i| to_i16(amp * (2.0 * PI * hz * i as f64 / RATE).sin()))
            .collect()
    }

    fn cat(parts: &[Vec<i16>]) -> Vec<i16> {
        parts.concat()
    }

    /// Feeds `pcm` in `chunk`-sample pieces; returns the verdict and checks it is reported
    /// exactly once and matches `verdict()`.
    fn detect_with(cfg: AmdConfig, pcm: &[i16], chunk: usize) -> Option<AmdVerdict> {
        let mut det = AmdDetector::new(cfg);
        let mut found = None;
        for piece in pcm.chunks(chunk.max(1)) {
            if let Some(v) = det.push(piece) {
                assert!(found.is_none(), "verdict reported twice");
                found = Some(v);
            }
        }
        assert_eq!(found.as_ref(), det.verdict());
        found
    }

    fn detect(pcm: &[i16]) -> AmdVerdict {
        detect_with(AmdConfig::default(), pcm, FRAME).expect("a verdict within the input")
    }

    fn ms(v: &AmdVerdict) -> u128 {
        v.after.as_millis()
    }

    #[test]
    fn hello_then_silence_is_human_quickly() {
        let mut rng = Rng(1);
        let pcm = cat(&[
            quiet(400, &mut rng),
            speech(600, &mut rng),
            quiet(4000, &mut rng),
        ]);
        let v = detect(&pcm);
        assert_eq!(v.decision, AmdDecision::Human, "{v:?}");
        assert_eq!(v.reason, "human_pause");
        // 400 ms before + 600 ms word + 800 ms pause, give or take a frame of fade.
        assert!((1700..=1900).contains(&ms(&v)), "{v:?}");
        assert!(v.after < Duration::from_millis(2500));
        assert!(v.confidence > 0.6 && v.confidence <= 1.0, "{v:?}");
    }

    #[test]
    fn continuous_speech_is_machine_long_greeting() {
        let mut rng = Rng(2);
        let pcm = cat(&[quiet(300, &mut rng), speech(4000, &mut rng)]);
        let v = detect(&pcm);
        assert_eq!(v.decision, AmdDecision::Machine, "{v:?}");
        assert_eq!(v.reason, "long_greeting");
        // 1.5 s of voice after the 300 ms lead-in.
        assert!((1780..=1900).contains(&ms(&v)), "{v:?}");
        assert!(v.confidence > 0.9, "continuous voice is dense: {v:?}");
    }

    #[test]
    fn words_beyond_max_words_are_machine() {
        let mut rng = Rng(3);
        let mut parts = vec![quiet(300, &mut rng)];
        for _ in 0..6 {
            parts.push(speech(250, &mut rng));
            parts.push(quiet(200, &mut rng));
        }
        let v = detect(&cat(&parts));
        assert_eq!(v.decision, AmdDecision::Machine, "{v:?}");
        assert_eq!(v.reason, "max_words");
        // The fourth word is recognised once it lasts min_word: 300 + 3 * 450 + ~100 ms.
        assert!((1700..=1850).contains(&ms(&v)), "{v:?}");
    }

    #[test]
    fn max_words_words_then_silence_is_human() {
        // Exactly max_words (3) words is still a person: the rule is "more than".
        let mut rng = Rng(4);
        let mut parts = vec![quiet(300, &mut rng)];
        for _ in 0..3 {
            parts.push(speech(200, &mut rng));
            parts.push(quiet(200, &mut rng));
        }
        parts.push(quiet(2000, &mut rng));
        let v = detect(&cat(&parts));
        assert_eq!(v.decision, AmdDecision::Human, "{v:?}");
        // Three words used 2/3 of the word budget: far less sure than a single word.
        assert!(v.confidence < 0.7, "{v:?}");
    }

    #[test]
    fn silence_only_is_machine_initial_silence_with_low_confidence() {
        let mut rng = Rng(5);
        let v = detect(&quiet(6000, &mut rng));
        assert_eq!(v.decision, AmdDecision::Machine);
        assert_eq!(v.reason, "initial_silence");
        assert_eq!(v.after, Duration::from_millis(2500));
        assert_eq!(v.confidence, 0.5);
    }

    #[test]
    fn steady_line_noise_is_not_speech() {
        let mut rng = Rng(6);
        let line = noise(6000, 1200.0, &mut rng);
        // Far above the fixed threshold: only the adaptive floor keeps it silence.
        assert!(mean_square(&line).sqrt() > 4.0 * 256.0);
        let v = detect(&line);
        assert_eq!(v.reason, "initial_silence", "{v:?}");
        assert_eq!(v.after, Duration::from_millis(2500));

        // Speech over the same noise is still heard, and the pause after it too.
        let mut rng = Rng(7);
        let hello = speech(600, &mut rng);
        let mut over = noise(600, 1200.0, &mut rng);
        for (o, s) in over.iter_mut().zip(&hello) {
            *o = o.saturating_add(*s);
        }
        let pcm = cat(&[
            noise(500, 1200.0, &mut rng),
            over,
            noise(3000, 1200.0, &mut rng),
        ]);
        let v = detect(&pcm);
        assert_eq!(v.decision, AmdDecision::Human, "{v:?}");
        // The pause is timed from the word's end; the last syllable dip sinks into the
        // noise, so the word ends up to ~150 ms early.
        assert!((1700..=2000).contains(&ms(&v)), "{v:?}");
    }

    #[test]
    fn hum_that_starts_late_is_adapted_to() {
        // A steady hum appearing mid-call reads as voice only until it has been steady for
        // the stationarity span (~300 ms, one short word), then as silence: the callee
        // comes out as a person pausing, not as an endless greeting.
        let mut rng = Rng(8);
        let mut hum = tone(150.0, 4000, 3000.0);
        for (h, n) in hum.iter_mut().zip(quiet(4000, &mut rng)) {
            *h = h.saturating_add(n);
        }
        let v = detect(&cat(&[quiet(500, &mut rng), hum]));
        assert_eq!(v.decision, AmdDecision::Human, "{v:?}");
        assert_eq!(v.reason, "human_pause", "{v:?}");
        assert!(ms(&v) <= 500 + 400 + 800, "{v:?}");
    }

    #[test]
    fn too_long_is_not_sure() {
        let mut rng = Rng(9);
        let cfg = AmdConfig {
            max_words: 10,
            ..AmdConfig::default()
        };
        let mut parts = vec![quiet(2000, &mut rng)];
        for _ in 0..5 {
            parts.push(speech(300, &mut rng));
            parts.push(quiet(600, &mut rng));
        }
        let v = detect_with(cfg, &cat(&parts), FRAME).expect("verdict");
        assert_eq!(v.decision, AmdDecision::NotSure, "{v:?}");
        assert_eq!(v.reason, "too_long");
        assert_eq!(v.after, Duration::from_millis(5000));
        assert_eq!(v.confidence, 0.0);
    }

    #[test]
    fn one_endless_word_is_max_word_length() {
        let mut rng = Rng(10);
        let cfg = AmdConfig {
            greeting: Duration::from_secs(10),
            max_word: Duration::from_millis(1000),
            ..AmdConfig::default()
        };
        let pcm = cat(&[quiet(200, &mut rng), speech(3000, &mut rng)]);
        let v = detect_with(cfg, &pcm, FRAME).expect("verdict");
        assert_eq!(v.decision, AmdDecision::Machine);
        assert_eq!(v.reason, "max_word_length");
        assert!((1180..=1300).contains(&ms(&v)), "{v:?}");
    }

    #[test]
    fn human_confidence_falls_with_longer_greeting() {
        let mut confidences = Vec::new();
        for word_ms in [300, 700, 1100] {
            let mut rng = Rng(11);
            let pcm = cat(&[
                quiet(300, &mut rng),
                speech(word_ms, &mut rng),
                quiet(2000, &mut rng),
            ]);
            let v = detect(&pcm);
            assert_eq!(v.decision, AmdDecision::Human, "{word_ms} ms: {v:?}");
            confidences.push(v.confidence);
        }
        assert!(
            confidences.windows(2).all(|w| w[0] > w[1]),
            "{confidences:?}"
        );
    }

    #[test]
    fn pushes_after_the_verdict_return_none() {
        let mut rng = Rng(12);
        let mut det = AmdDetector::new(AmdConfig::default());
        let mut first = None;
        for f in quiet(3000, &mut rng).chunks(FRAME) {
            if let Some(v) = det.push(f) {
                first = Some(v);
                break;
            }
        }
        let first = first.expect("initial silence verdict");
        assert_eq!(det.push(&speech(1000, &mut rng)), None);
        assert_eq!(det.push(&[]), None);
        assert_eq!(det.verdict(), Some(&first));
        assert_eq!(det.analysed(), first.after);
    }

    #[test]
    fn odd_and_empty_frames_give_the_same_verdict() {
        let mut rng = Rng(13);
        let pcm = cat(&[
            quiet(400, &mut rng),
            speech(600, &mut rng),
            quiet(3000, &mut rng),
        ]);
        let reference = detect(&pcm);
        for chunk in [1, 7, 80, 159, 161, 333, 4000] {
            let v = detect_with(AmdConfig::default(), &pcm, chunk);
            assert_eq!(v.as_ref(), Some(&reference), "chunk {chunk}");
        }
        let mut det = AmdDetector::new(AmdConfig::default());
        for piece in pcm.chunks(37) {
            assert_eq!(det.push(&[]), None);
            if det.push(piece).is_some() {
                break;
            }
        }
        assert_eq!(det.verdict(), Some(&reference));
    }

    #[test]
    fn extreme_samples_and_configs_do_not_panic() {
        let min = vec![i16::MIN; 8000];
        let square: Vec<i16> = (0..8000)
            .map(|i| if i % 2 == 0 { i16::MIN } else { i16::MAX })
            .collect();
        assert!(mean_square(&min).is_finite());
        for cfg in [
            AmdConfig::default(),
            AmdConfig {
                initial_silence: Duration::ZERO,
                greeting: Duration::ZERO,
                after_greeting_silence: Duration::ZERO,
                total_analysis: Duration::ZERO,
                min_word: Duration::ZERO,
                between_words_silence: Duration::ZERO,
                max_words: 0,
                max_word: Duration::ZERO,
                silence_threshold: i16::MIN,
            },
            AmdConfig {
                initial_silence: Duration::MAX,
                greeting: Duration::MAX,
                after_greeting_silence: Duration::MAX,
                total_analysis: Duration::MAX,
                min_word: Duration::MAX,
                between_words_silence: Duration::MAX,
                max_words: u32::MAX,
                max_word: Duration::MAX,
                silence_threshold: i16::MAX,
            },
        ] {
            for pcm in [&min, &square] {
                let mut det = AmdDetector::new(cfg.clone());
                for piece in pcm.chunks(161) {
                    if let Some(v) = det.push(piece) {
                        assert!((0.0..=1.0).contains(&v.confidence), "{v:?}");
                    }
                }
            }
        }
        let mut w = BeepWaiter::new(Duration::ZERO, Duration::MAX);
        w.push(&min);
        let mut w = BeepWaiter::default();
        w.push(&square);
        w.push(&[]);
    }

    #[test]
    fn decision_names() {
        assert_eq!(AmdDecision::Human.as_str(), "human");
        assert_eq!(AmdDecision::Machine.as_str(), "machine");
        assert_eq!(AmdDecision::NotSure.as_str(), "unknown");
    }

    /// Feeds `pcm` in 20 ms frames; returns the outcome and when (ms of audio) it came.
    fn wait_for_end(mut waiter: BeepWaiter, pcm: &[i16]) -> Option<(GreetingEnd, usize)> {
        let mut found = None;
        for (i, f) in pcm.chunks(FRAME).enumerate() {
            if let Some(end) = waiter.push(f) {
                assert!(found.is_none(), "outcome reported twice");
                found = Some((end, (i + 1) * 20));
            }
        }
        assert_eq!(found.map(|f| f.0), waiter.outcome());
        found
    }

    #[test]
    fn greeting_then_beep_is_beep() {
        for hz in [440.0, 1000.0, 1437.0, 1980.0] {
            let mut rng = Rng(14);
            let pcm = cat(&[
                speech(2000, &mut rng),
                quiet(300, &mut rng),
                tone(hz, 400, 8000.0),
                quiet(3000, &mut rng),
            ]);
            let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
            assert_eq!(end, GreetingEnd::Beep, "{hz} Hz");
            // Tone ends at 2700 ms; 60 ms of silence confirm it.
            assert!((2740..=2800).contains(&at), "{hz} Hz at {at} ms");
        }
    }

    #[test]
    fn beep_right_after_speech_over_line_noise_is_beep() {
        let mut rng = Rng(15);
        let clean = cat(&[
            speech(1500, &mut rng),
            tone(1000.0, 200, 6000.0),
            vec![0; n_samples(3000)],
        ]);
        let line = noise(4700, 300.0, &mut rng);
        let pcm: Vec<i16> = clean
            .iter()
            .zip(&line)
            .map(|(c, n)| c.saturating_add(*n))
            .collect();
        let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
        assert_eq!(end, GreetingEnd::Beep);
        assert!((1740..=1800).contains(&at), "at {at} ms");
    }

    #[test]
    fn short_tone_is_not_a_beep() {
        let mut rng = Rng(17);
        let pcm = cat(&[
            speech(1000, &mut rng),
            tone(1000.0, 80, 8000.0),
            quiet(3000, &mut rng),
        ]);
        let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
        assert_eq!(end, GreetingEnd::Silence);
        assert!((2580..=2620).contains(&at), "at {at} ms");
    }

    #[test]
    fn tone_followed_by_speech_is_not_a_beep() {
        let mut rng = Rng(20);
        let pcm = cat(&[
            speech(1000, &mut rng),
            tone(800.0, 300, 8000.0),
            speech(1000, &mut rng),
            quiet(3000, &mut rng),
        ]);
        let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
        assert_eq!(end, GreetingEnd::Silence, "at {at} ms");
        assert!((3780..=3840).contains(&at), "at {at} ms");
    }

    #[test]
    fn greeting_then_silence_is_silence() {
        let mut rng = Rng(18);
        let pcm = cat(&[speech(2000, &mut rng), quiet(3000, &mut rng)]);
        let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
        assert_eq!(end, GreetingEnd::Silence);
        // 1.5 s after the greeting's 25 ms fade-out.
        assert!((3480..=3540).contains(&at), "at {at} ms");
    }

    #[test]
    fn continuous_speech_times_out() {
        let mut rng = Rng(19);
        let pcm = speech(21_000, &mut rng);
        let (end, at) = wait_for_end(BeepWaiter::default(), &pcm).expect("outcome");
        assert_eq!(end, GreetingEnd::Timeout);
        assert_eq!(at, 20_000);
        // And a pushes after the outcome return None.
        let mut w = BeepWaiter::new(Duration::from_millis(200), Duration::from_millis(500));
        assert_eq!(w.push(&quiet(300, &mut rng)), Some(GreetingEnd::Silence));
        assert_eq!(w.push(&quiet(300, &mut rng)), None);
    }

    /// Tuning aid, not a regression test: prints the AMD verdict and the greeting end for
    /// 8 kHz mono 16-bit WAVs listed in `WARMLINE_AMD_WAVS` (':'-separated), e.g.
    /// `espeak-ng -w x.wav "Hello?" && sox x.wav -r 8000 -c 1 -b 16 hello.wav`, then
    /// `WARMLINE_AMD_WAVS=hello.wav cargo test print_wav_verdicts -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_wav_verdicts() {
        let Some(list) = std::env::var_os("WARMLINE_AMD_WAVS") else {
            println!("set WARMLINE_AMD_WAVS to ':'-separated WAV paths");
            return;
        };
        for path in std::env::split_paths(&list) {
            let reader = match hound::WavReader::open(&path) {
                Ok(r) => r,
                Err(e) => {
                    println!("{}: {e}", path.display());
                    continue;
                }
            };
            let spec = reader.spec();
            if spec.sample_rate != 8000 || spec.channels != 1 || spec.bits_per_sample != 16 {
                println!("{}: need 8000 Hz mono 16-bit, got {spec:?}", path.display());
                continue;
            }
            let pcm: Result<Vec<i16>, _> = reader.into_samples::<i16>().collect();
            let pcm = match pcm {
                Ok(p) => p,
                Err(e) => {
                    println!("{}: {e}", path.display());
                    continue;
                }
            };
            let mut det = AmdDetector::new(AmdConfig::default());
            let mut rest: &[i16] = &[];
            for (i, f) in pcm.chunks(FRAME).enumerate() {
                if det.push(f).is_some() {
                    rest = pcm.get((i + 1) * FRAME..).unwrap_or(&[]);
                    break;
                }
            }
            let end = det
                .verdict()
                .filter(|v| v.decision == AmdDecision::Machine)
                .map(|_| {
                    let mut w = BeepWaiter::default();
                    let mut at = None;
                    for (i, f) in rest.chunks(FRAME).enumerate() {
                        if let Some(e) = w.push(f) {
                            at = Some((e, (i + 1) * 20));
                            break;
                        }
                    }
                    at
                });
            println!(
                "{}: {:.2} s audio, verdict {:?}, greeting end after verdict {:?}",
                path.display(),
                pcm.len() as f64 / 8000.0,
                det.verdict(),
                end
            );
        }
    }
}
