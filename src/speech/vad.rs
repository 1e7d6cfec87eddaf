//! Voice activity detection and endpointing for barge-in on 8 kHz mono telephone audio.
//!
//! Sans-IO: [`Vad::push`] takes PCM and the `Instant` of its first sample and returns at most one
//! [`VadEvent`]; no clock is read inside. Audio is cut internally into 20 ms analysis frames
//! (160 samples) whatever length the caller pushes, so results do not depend on packetisation.
//!
//! Per frame: a 200 Hz high-pass (drops mains hum and DC, which telephone speech does not carry),
//! the energy in dBFS, and a voicing measure (the highest interior peak of the normalised
//! autocorrelation over 53–400 Hz pitch lags). A frame is a speech *candidate* when its energy is
//! above both `abs_floor_dbfs` and the tracked noise floor + `min_snr_db`. Speech starts when
//! candidates have been sustained for `start_guard`, fill most of that window and a quarter of it
//! is voiced: steady noise never clears the adaptive floor, a noise burst or a cough is unvoiced
//! or too short. Once in speech a lower threshold (hysteresis) keeps weak consonants and short
//! pauses inside the utterance, and `end_silence` without any active frame ends it.
//!
//! One listening turn yields at most one of `NoInput`, `SpeechEnd`, `MaxUtterance` (after a
//! `SpeechStart` for the last two); then the detector stays quiet, still tracking the noise floor,
//! until [`Vad::reset`] opens the next turn.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples per analysis frame: 20 ms at 8 kHz.
const FRAME: usize = 160;
const FRAME_DUR: Duration = Duration::from_millis(20);
/// One sample at 8 kHz, in nanoseconds.
const SAMPLE_NANOS: u64 = 125_000;
/// Energy given to digital silence, so the floor never becomes -inf.
const MIN_DB: f32 = -100.0;
/// Pitch lags searched for voicing: 400 Hz down to 53 Hz.
const MIN_LAG: usize = 20;
const MAX_LAG: usize = 150;
/// Normalised autocorrelation peak above which a frame counts as voiced.
const VOICED_CORR: f32 = 0.5;
/// Within an onset, a gap in candidates longer than this restarts the onset.
const ONSET_GAP: Duration = Duration::from_millis(100);
/// Once in speech, a frame stays active down to `min_snr_db` minus this.
const HYSTERESIS_DB: f32 = 3.0;
/// Voiced frames count as speech this much closer to the noise floor.
const VOICED_RELIEF_DB: f32 = 6.0;
/// Share of the `start_guard` window that must be candidates, and that must be voiced.
const MIN_SPEECH_SHARE: f32 = 0.6;
const MIN_VOICED_SHARE: f32 = 0.25;

/// Thresholds of the detector. All levels are RMS in dBFS relative to a full-scale square wave
/// (a full-scale sine is -3 dBFS), measured after the 200 Hz high-pass.
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// Sustained speech needed to declare its start.
    pub start_guard: Duration,
    /// Trailing silence that ends speech.
    pub end_silence: Duration,
    /// Longest utterance before `MaxUtterance` cuts it.
    pub max_utterance: Duration,
    /// No speech at all within this after listening starts gives `NoInput`.
    pub no_input: Duration,
    /// How far above the tracked noise floor speech must be.
    pub min_snr_db: f32,
    /// Quietest level that can count as speech at all.
    pub abs_floor_dbfs: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            start_guard: Duration::from_millis(200),
            end_silence: Duration::from_millis(600),
            max_utterance: Duration::from_secs(10),
            no_input: Duration::from_secs(5),
            min_snr_db: 9.0,
            abs_floor_dbfs: -45.0,
        }
    }
}

/// What the detector decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began; `at` is the start of its first speech frame (reported `start_guard` later).
    SpeechStart { at: Instant },
    /// Speech ended; `at` is the end of its last active frame (reported `end_silence` later),
    /// `speech` the time from the start to `at`.
    SpeechEnd { at: Instant, speech: Duration },
    /// Nothing was said within `no_input` of listening.
    NoInput,
    /// The utterance ran past `max_utterance`; it is cut there.
    MaxUtterance,
}

/// Second-order Butterworth high-pass (RBJ cookbook), transposed direct form II.
#[derive(Debug, Clone)]
struct HighPass {
    b0: f32,
    b1: f32,
    b2: f32,
    a1: f32,
    a2: f32,
    z1: f32,
    z2: f32,
}

impl HighPass {
    fn new(cutoff_hz: f32, sample_rate: f32) -> Self {
        let w0 = 2.0 * std::f32::consts::PI * cutoff_hz / sample_rate;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
        let a0 = 1.0 + alpha;
        Self {
            b0: (1.0 + cos) / 2.0 / a0,
            b1: -(1.0 + cos) / a0,
            b2: (1.0 + cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
            z1: 0.0,
            z2: 0.0,
        }
    }

    fn run(&mut self, x: f32) -> f32 {
        let y = self.b0 * x + self.z1;
        self.z1 = self.b1 * x - self.a1 * y + self.z2;
        self.z2 = self.b2 * x - self.a2 * y;
        y
    }
}

/// The per-frame facts the state machine works on.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    start: Instant,
    candidate: bool,
    voiced: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Listening, no speech yet. `run_start` is the first candidate of the current onset.
    Idle { run_start: Option<Instant> },
    Speech {
        start: Instant,
        last_active_end: Instant,
    },
    /// The turn is over; wait for `reset`.
    Done,
}

/// Voice activity detector for one call leg.
#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    listening_since: Instant,
    hpf: HighPass,
    /// Previous filtered frame, the history for the pitch lags.
    hist: [f32; FRAME],
    /// Samples waiting for a full frame, and the time of the first of them.
    pending: Vec<i16>,
    pending_at: Instant,
    /// Time right after the last pushed sample, to notice gaps or jumps in the stream.
    expected_next: Option<Instant>,
    floor: Option<f32>,
    /// Last frames, covering at least `start_guard`, for the onset decision.
    recent: VecDeque<FrameInfo>,
    last_candidate_end: Option<Instant>,
    state: State,
    events: VecDeque<VadEvent>,
}

impl Vad {
    /// A detector that starts listening at `listening_since`.
    pub fn new(cfg: VadConfig, listening_since: Instant) -> Self {
        Self {
            cfg,
            listening_since,
            hpf: HighPass::new(200.0, 8000.0),
            hist: [0.0; FRAME],
            pending: Vec::with_capacity(FRAME),
            pending_at: listening_since,
            expected_next: None,
            floor: None,
            recent: VecDeque::new(),
            last_candidate_end: None,
            state: State::Idle { run_start: None },
            events: VecDeque::new(),
        }
    }

    /// Feeds audio whose first sample was captured at `now`. Any length works; an empty slice is
    /// a clock tick. Time without audio counts as silence, so a peer that stops sending during
    /// pauses (DTX) still gets its `SpeechEnd` if the caller keeps ticking.
    pub fn push(&mut self, pcm: &[i16], now: Instant) -> Option<VadEvent> {
        let contiguous = self
            .expected_next
            .is_some_and(|exp| abs_diff(now, exp) < FRAME_DUR / 2);
        if !contiguous {
            // A jump in the stream: a partial frame from before it cannot be joined to this.
            self.pending.clear();
        }
        if self.pending.is_empty() {
            self.pending_at = now;
        }
        let mut rest = pcm;
        let mut consumed: usize = 0;
        while !rest.is_empty() {
            let want = FRAME.saturating_sub(self.pending.len()).min(rest.len());
            let (head, tail) = rest.split_at(want);
            self.pending.extend_from_slice(head);
            rest = tail;
            consumed = consumed.saturating_add(want);
            if self.pending.len() >= FRAME {
                let mut frame = [0i16; FRAME];
                for (dst, src) in frame.iter_mut().zip(self.pending.iter()) {
                    *dst = *src;
                }
                self.pending.clear();
                let at = self.pending_at;
                self.pending_at = later(now, samples_to_duration(consumed));
                self.analyse(&frame, at);
            }
        }
        let end = later(now, samples_to_duration(pcm.len()));
        self.expected_next = Some(end);
        self.tick(end);
        self.events.pop_front()
    }

    /// Opens a new listening turn at `now`; events of the old turn not yet returned are
    /// dropped. The noise floor and filter state are kept: they describe the line, not the turn.
    pub fn reset(&mut self, now: Instant) {
        self.listening_since = now;
        self.state = State::Idle { run_start: None };
        self.recent.clear();
        self.last_candidate_end = None;
        self.events.clear();
    }

    /// Whether an utterance has started and not yet ended.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speech { .. })
    }

    /// The tracked noise floor in dBFS (-100 before any audio).
    pub fn noise_floor_dbfs(&self) -> f32 {
        self.floor.unwrap_or(MIN_DB)
    }

    fn analyse(&mut self, pcm: &[i16; FRAME], start: Instant) {
        let mut buf = [0f32; FRAME];
        for (y, x) in buf.iter_mut().zip(pcm.iter()) {
            *y = self.hpf.run(f32::from(*x));
        }
        let energy = energy_dbfs(&buf);
        let voiced = pitch_strength(&self.hist, &buf) >= VOICED_CORR;

        let end = later(start, FRAME_DUR);
        let floor = self.floor.unwrap_or(energy);
        let above = |margin: f32| energy >= self.cfg.abs_floor_dbfs && energy >= floor + margin;
        // Periodicity is strong evidence of a voice, so voiced frames need less SNR.
        let candidate =
            above(self.cfg.min_snr_db) || voiced && above(self.cfg.min_snr_db - VOICED_RELIEF_DB);
        let active = above(self.cfg.min_snr_db - HYSTERESIS_DB)
            || voiced && above(self.cfg.min_snr_db - VOICED_RELIEF_DB - HYSTERESIS_DB);
        self.hist = buf;

        self.recent.push_back(FrameInfo {
            start,
            candidate,
            voiced,
        });
        while self
            .recent
            .front()
            .is_some_and(|f| end.saturating_duration_since(f.start) > self.cfg.start_guard)
        {
            self.recent.pop_front();
        }
        if candidate {
            self.last_candidate_end = Some(end);
        }

        match self.state {
            State::Idle { mut run_start } => {
                if candidate {
                    if run_start.is_none() {
                        run_start = Some(start);
                    }
                } else if self
                    .last_candidate_end
                    .is_none_or(|c| end.saturating_duration_since(c) > ONSET_GAP)
                {
                    run_start = None;
                }
                self.state = State::Idle { run_start };
                if let Some(at) = run_start.and_then(|first| self.onset_confirmed(first, end)) {
                    self.state = State::Speech {
                        start: at,
                        last_active_end: end,
                    };
                    self.events.push_back(VadEvent::SpeechStart { at });
                }
            }
            State::Speech { start: began, .. } => {
                if active {
                    self.state = State::Speech {
                        start: began,
                        last_active_end: end,
                    };
                }
            }
            State::Done => {}
        }
        self.update_floor(energy, voiced);
    }

    /// Whether the onset that began at `first` is now sustained speech; returns its start.
    fn onset_confirmed(&self, first: Instant, end: Instant) -> Option<Instant> {
        if end.saturating_duration_since(first) < self.cfg.start_guard {
            return None;
        }
        // The onset must still be going on: this frame or the one before is a candidate.
        let still_going = self.recent.iter().rev().take(2).any(|f| f.candidate);
        if !still_going {
            return None;
        }
        let frames = self.recent.len().max(1) as f32;
        let speech = self.recent.iter().filter(|f| f.candidate).count() as f32;
        let voiced = self
            .recent
            .iter()
            .filter(|f| f.candidate && f.voiced)
            .count() as f32;
        if speech / frames < MIN_SPEECH_SHARE || voiced / frames < MIN_VOICED_SHARE {
            return None;
        }
        // A long onset (say voiced speech rising out of noise) starts at the first candidate
        // of the window that confirmed it.
        let window_first = self
            .recent
            .iter()
            .find(|f| f.candidate)
            .map_or(first, |f| f.start);
        Some(first.max(window_first))
    }

    /// Time-based decisions, at `now` = the end of the audio pushed so far.
    fn tick(&mut self, now: Instant) {
        match self.state {
            State::Idle { run_start } => {
                // An onset in progress gets the chance to be confirmed before NoInput.
                let onset_pending = run_start.is_some_and(|first| {
                    now.saturating_duration_since(first)
                        < self.cfg.start_guard.saturating_add(ONSET_GAP)
                });
                let waited = now.saturating_duration_since(self.listening_since);
                if waited >= self.cfg.no_input && !onset_pending {
                    self.state = State::Done;
                    self.events.push_back(VadEvent::NoInput);
                }
            }
            State::Speech {
                start,
                last_active_end,
            } => {
                if now.saturating_duration_since(last_active_end) >= self.cfg.end_silence {
                    self.state = State::Done;
                    self.events.push_back(VadEvent::SpeechEnd {
                        at: last_active_end,
                        speech: last_active_end.saturating_duration_since(start),
                    });
                } else if now.saturating_duration_since(start) >= self.cfg.max_utterance {
                    self.state = State::Done;
                    self.events.push_back(VadEvent::MaxUtterance);
                }
            }
            State::Done => {}
        }
    }

    /// Minimum tracking: falls quickly, rises slowly, and not at all during speech; voiced frames
    /// (likely a talker) raise it slower than unvoiced ones (likely noise that changed level).
    fn update_floor(&mut self, energy: f32, voiced: bool) {
        let Some(floor) = self.floor else {
            self.floor = Some(energy);
            return;
        };
        let diff = energy - floor;
        let step = if diff < 0.0 {
            0.3 * diff
        } else if self.in_speech() || matches!(self.state, State::Idle { run_start: Some(_) }) {
            (0.005 * diff).min(0.01)
        } else if voiced {
            (0.01 * diff).min(0.02)
        } else {
            (0.02 * diff).min(0.3)
        };
        let next = floor + step;
        if next.is_finite() {
            self.floor = Some(next.max(MIN_DB));
        }
    }
}

/// `t + d`, saturating at `t` for a sum no clock can reach.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

fn samples_to_duration(n: usize) -> Duration {
    Duration::from_nanos(
        u64::try_from(n)
            .unwrap_or(u64::MAX)
            .saturating_mul(SAMPLE_NANOS),
    )
}

fn energy_dbfs(buf: &[f32]) -> f32 {
    if buf.is_empty() {
        return MIN_DB;
    }
    let mean_sq = buf.iter().map(|x| x * x).sum::<f32>() / buf.len() as f32;
    let full = 32768.0f32 * 32768.0;
    let db = 10.0 * (mean_sq / full).log10();
    if db.is_finite() {
        db.max(MIN_DB)
    } else {
        MIN_DB
    }
}

/// Highest interior peak of the normalised cross-correlation between the frame and itself
/// delayed by a pitch lag (the delayed samples reach into the previous frame). A low-frequency
/// sine like mains hum gives a monotonic curve over these lags and so no peak.
fn pitch_strength(hist: &[f32; FRAME], cur: &[f32; FRAME]) -> f32 {
    let mut all = [0f32; 2 * FRAME];
    let (h, c) = all.split_at_mut(FRAME);
    h.copy_from_slice(hist);
    c.copy_from_slice(cur);
    // prefix[i] = sum of squares of all[..i]
    let mut prefix = [0f32; 2 * FRAME + 1];
    let mut acc = 0f32;
    for (p, x) in prefix.iter_mut().skip(1).zip(all.iter()) {
        acc += x * x;
        *p = acc;
    }
    let e_cur = prefix[2 * FRAME] - prefix[FRAME];
    if e_cur <= f32::EPSILON {
        return 0.0;
    }
    let mut corr = [0f32; MAX_LAG + 1];
    for (lag, slot) in corr.iter_mut().enumerate().skip(MIN_LAG) {
        let lo = FRAME - lag;
        let e_lag = prefix[lo + FRAME] - prefix[lo];
        let num: f32 = all[FRAME..]
            .iter()
            .zip(all[lo..lo + FRAME].iter())
            .map(|(a, b)| a * b)
            .sum();
        let den = (e_cur * e_lag).sqrt();
        *slot = if den > f32::EPSILON { num / den } else { 0.0 };
    }
    let mut best = 0f32;
    for w in corr[MIN_LAG..].windows(3) {
        if let [a, b, c] = *w {
            if b > a && b >= c && b > best {
                best = b;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f32 = 8000.0;

    /// splitmix64: deterministic noise without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
        }

        /// Standard normal (Box–Muller).
        fn gauss(&mut self) -> f32 {
            let u1 = self.uniform().max(1e-7);
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        }
    }

    fn rms_for_dbfs(dbfs: f32) -> f32 {
        32768.0 * 10f32.powf(dbfs / 20.0)
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    fn scale_to_dbfs(x: &mut [f32], dbfs: f32) {
        let gain = rms_for_dbfs(dbfs) / rms(x).max(1e-9);
        x.iter_mut().for_each(|v| *v *= gain);
    }

    fn white(seed: u64, secs: f32, dbfs: f32) -> Vec<f32> {
        let mut rng = Rng(seed);
        let sigma = rms_for_dbfs(dbfs);
        (0..(secs * RATE) as usize)
            .map(|_| rng.gauss() * sigma)
            .collect()
    }

    /// Pink noise by Paul Kellet's refined filter.
    fn pink(seed: u64, secs: f32, dbfs: f32) -> Vec<f32> {
        let mut rng = Rng(seed);
        let mut b = [0f32; 7];
        let mut out: Vec<f32> = (0..(secs * RATE) as usize)
            .map(|_| {
                let w = rng.gauss();
                b[0] = 0.99886 * b[0] + w * 0.055_517_9;
                b[1] = 0.99332 * b[1] + w * 0.075_075_9;
                b[2] = 0.969 * b[2] + w * 0.153_852;
                b[3] = 0.8665 * b[3] + w * 0.310_485_6;
                b[4] = 0.55 * b[4] + w * 0.532_952_2;
                b[5] = -0.7616 * b[5] - w * 0.016_898;
                let y = b.iter().sum::<f32>() + w * 0.5362;
                b[6] = w * 0.115926;
                y
            })
            .collect();
        scale_to_dbfs(&mut out, dbfs);
        out
    }

    /// Mains hum: 50 Hz with its 2nd and 3rd harmonics.
    fn hum(secs: f32, dbfs: f32) -> Vec<f32> {
        let mut out: Vec<f32> = (0..(secs * RATE) as usize)
            .map(|n| {
                let t = n as f32 / RATE;
                let w = 2.0 * std::f32::consts::PI * 50.0 * t;
                w.sin() + 0.5 * (2.0 * w).sin() + 0.3 * (3.0 * w).sin()
            })
            .collect();
        scale_to_dbfs(&mut out, dbfs);
        out
    }

    /// Speech-like: harmonics of a pitch gliding over 120–250 Hz, shaped by three formants,
    /// amplitude-modulated at a 4 Hz syllable rate. `dbfs` is the level over the whole signal.
    fn speechlike(seed: u64, secs: f32, dbfs: f32) -> Vec<f32> {
        let mut rng = Rng(seed);
        let formants = [(700.0f32, 130.0f32), (1220.0, 150.0), (2600.0, 250.0)];
        let pitch_rate = 0.7 + rng.uniform() * 0.6;
        let mut phase = 0f32;
        let mut out: Vec<f32> = (0..(secs * RATE) as usize)
            .map(|n| {
                let t = n as f32 / RATE;
                let f0 = 185.0 + 65.0 * (2.0 * std::f32::consts::PI * pitch_rate * t).sin();
                phase += 2.0 * std::f32::consts::PI * f0 / RATE;
                let mut v = 0f32;
                let mut k = 1;
                while (k as f32) * f0 < 3400.0 {
                    let fk = k as f32 * f0;
                    let gain: f32 = formants
                        .iter()
                        .map(|(f, bw)| 1.0 / (1.0 + ((fk - f) / bw).powi(2)))
                        .sum();
                    v += gain * (k as f32 * phase).sin() / (k as f32).sqrt();
                    k += 1;
                }
                let env = 0.2 + 0.8 * 0.5 * (1.0 - (2.0 * std::f32::consts::PI * 4.0 * t).cos());
                v * env
            })
            .collect();
        scale_to_dbfs(&mut out, dbfs);
        out
    }

    /// A cough: a 120 ms burst of noise with a fast attack and decay.
    fn cough(seed: u64, dbfs: f32) -> Vec<f32> {
        let mut rng = Rng(seed);
        let n = (0.12 * RATE) as usize;
        let mut out: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / n as f32;
                let env = (t * 20.0).min(1.0) * (1.0 - t).powi(2);
                rng.gauss() * env
            })
            .collect();
        scale_to_dbfs(&mut out, dbfs);
        out
    }

    fn mix(base: &mut [f32], add: &[f32], at_secs: f32) {
        let off = (at_secs * RATE) as usize;
        for (b, a) in base.iter_mut().skip(off).zip(add.iter()) {
            *b += *a;
        }
    }

    fn to_pcm(x: &[f32]) -> Vec<i16> {
        x.iter()
            .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    /// G.711 μ-law round trip, so "comfort noise" is what a real line delivers.
    fn mulaw_roundtrip(x: f32) -> f32 {
        const BIAS: i32 = 0x84;
        let s = (x.round() as i32).clamp(-32635, 32635);
        let sign = if s < 0 { 0x80 } else { 0 };
        let mag = s.abs() + BIAS;
        let exp = (0..8).rev().find(|e| mag & (0x80 << e) != 0).unwrap_or(0);
        let mant = (mag >> (exp + 3)) & 0x0F;
        let code = !(sign | (exp << 4) | mant) & 0xFF;
        // decode
        let c = !code & 0xFF;
        let t = (((c & 0x0F) << 3) + BIAS) << ((c & 0x70) >> 4);
        (if c & 0x80 != 0 { BIAS - t } else { t - BIAS }) as f32
    }

    /// Pushes `pcm` in chunks of `chunk` samples from `t0`; returns each event with the time,
    /// relative to `t0`, of the end of the chunk that produced it.
    fn run(vad: &mut Vad, pcm: &[i16], t0: Instant, chunk: usize) -> Vec<(Duration, VadEvent)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        for ch in pcm.chunks(chunk) {
            let now = t0 + samples_to_duration(off);
            off += ch.len();
            if let Some(ev) = vad.push(ch, now) {
                out.push((samples_to_duration(off), ev));
            }
        }
        out
    }

    fn secs(d: Duration) -> f32 {
        d.as_secs_f32()
    }

    fn since(at: Instant, t0: Instant) -> f32 {
        secs(at.saturating_duration_since(t0))
    }

    fn new_vad(t0: Instant) -> Vad {
        Vad::new(VadConfig::default(), t0)
    }

    /// Faint line noise, so "silence" is not digital zero.
    fn quiet(seed: u64, secs: f32) -> Vec<f32> {
        white(seed, secs, -70.0)
    }

    /// Asserts exactly a start then an end, start reported within start_guard + 1 frame of
    /// `onset` and end reported end_silence (+ 1 frame) after `end`, both in seconds.
    fn assert_one_utterance(events: &[(Duration, VadEvent)], t0: Instant, onset: f32, end: f32) {
        assert_eq!(events.len(), 2, "want start and end, got {events:?}");
        let (start_when, VadEvent::SpeechStart { at }) = events[0] else {
            panic!("first event not SpeechStart: {events:?}");
        };
        assert!(
            secs(start_when) <= onset + 0.2 + 0.02 + 1e-3,
            "start reported at {start_when:?}, onset {onset}"
        );
        assert!((since(at, t0) - onset).abs() <= 0.04, "start at {at:?}");
        let (end_when, VadEvent::SpeechEnd { at: end_at, speech }) = events[1] else {
            panic!("second event not SpeechEnd: {events:?}");
        };
        assert!(
            (since(end_at, t0) - end).abs() <= 0.1,
            "end at {:.3}, want {end}",
            since(end_at, t0)
        );
        assert!(
            (secs(end_when) - since(end_at, t0) - 0.6).abs() <= 0.021,
            "end reported at {end_when:?} for end at {:.3}",
            since(end_at, t0)
        );
        assert!((secs(speech) - (since(end_at, t0) - since(at, t0))).abs() < 1e-3);
    }

    #[test]
    fn speech_after_silence_starts_within_guard_and_ends_after_end_silence() {
        let t0 = Instant::now();
        let mut sig = quiet(1, 4.0);
        mix(&mut sig, &speechlike(2, 1.5, -20.0), 1.0);
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_one_utterance(&events, t0, 1.0, 2.5);
    }

    #[test]
    fn speech_in_pink_noise_is_detected() {
        let t0 = Instant::now();
        let mut sig = pink(3, 4.5, -30.0);
        mix(&mut sig, &speechlike(4, 1.5, -18.0), 1.5);
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_one_utterance(&events, t0, 1.5, 3.0);
    }

    #[test]
    fn speech_at_10_db_snr_in_white_noise_is_detected() {
        let t0 = Instant::now();
        let mut sig = white(5, 4.5, -35.0);
        mix(&mut sig, &speechlike(6, 1.5, -25.0), 1.0);
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_one_utterance(&events, t0, 1.0, 2.5);
    }

    #[test]
    fn pause_between_words_does_not_end_speech() {
        let t0 = Instant::now();
        let mut sig = quiet(7, 4.0);
        mix(&mut sig, &speechlike(8, 0.8, -20.0), 0.5);
        mix(&mut sig, &speechlike(9, 0.8, -20.0), 1.6);
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_one_utterance(&events, t0, 0.5, 2.4);
    }

    /// The only event over 6 s of `sig` must be NoInput at the 5 s deadline.
    fn assert_only_no_input(sig: &[f32], what: &str) {
        let t0 = Instant::now();
        let events = run(&mut new_vad(t0), &to_pcm(sig), t0, FRAME);
        assert_eq!(events.len(), 1, "{what}: {events:?}");
        let (when, ev) = events[0];
        assert_eq!(ev, VadEvent::NoInput, "{what}");
        assert!(
            (secs(when) - 5.0).abs() <= 0.021,
            "{what}: NoInput at {when:?}"
        );
    }

    #[test]
    fn click_and_short_cough_do_not_start_speech() {
        let mut sig = quiet(10, 6.0);
        for (i, v) in [24000.0, -18000.0, 9000.0, -3000.0].iter().enumerate() {
            sig[8000 + i] += v;
        }
        mix(&mut sig, &cough(11, -12.0), 2.0);
        mix(&mut sig, &cough(12, -12.0), 3.5);
        assert_only_no_input(&sig, "click + cough");
    }

    #[test]
    fn steady_white_noise_at_minus_30_dbfs_is_not_speech() {
        assert_only_no_input(&white(13, 6.0, -30.0), "white noise");
    }

    #[test]
    fn steady_pink_noise_at_minus_30_dbfs_is_not_speech() {
        assert_only_no_input(&pink(14, 6.0, -30.0), "pink noise");
    }

    #[test]
    fn mains_hum_is_not_speech() {
        assert_only_no_input(&hum(6.0, -15.0), "50 Hz hum");
    }

    #[test]
    fn g711_comfort_noise_is_not_speech() {
        let sig: Vec<f32> = white(15, 6.0, -65.0)
            .into_iter()
            .map(mulaw_roundtrip)
            .collect();
        assert_only_no_input(&sig, "comfort noise");
    }

    #[test]
    fn noise_that_starts_mid_turn_is_not_speech() {
        let mut sig = quiet(16, 6.0);
        mix(&mut sig, &white(17, 4.0, -30.0), 1.0);
        mix(&mut sig, &pink(18, 1.0, -25.0), 2.0);
        assert_only_no_input(&sig, "noise onset");
    }

    #[test]
    fn no_input_fires_once_at_the_deadline() {
        let t0 = Instant::now();
        let mut vad = new_vad(t0);
        let events = run(&mut vad, &to_pcm(&quiet(19, 8.0)), t0, FRAME);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].1, VadEvent::NoInput);
        assert!((secs(events[0].0) - 5.0).abs() <= 0.021);
        assert!(!vad.in_speech());
    }

    #[test]
    fn long_speech_is_cut_at_max_utterance() {
        let t0 = Instant::now();
        let mut sig = quiet(20, 13.0);
        mix(&mut sig, &speechlike(21, 12.0, -20.0), 0.5);
        let mut vad = new_vad(t0);
        let events = run(&mut vad, &to_pcm(&sig), t0, FRAME);
        assert_eq!(events.len(), 2, "{events:?}");
        let VadEvent::SpeechStart { at } = events[0].1 else {
            panic!("{events:?}");
        };
        assert_eq!(events[1].1, VadEvent::MaxUtterance);
        let cut = secs(events[1].0) - since(at, t0);
        assert!((cut - 10.0).abs() <= 0.021, "cut after {cut}");
        assert!(!vad.in_speech());
    }

    #[test]
    fn chunk_size_does_not_change_the_events() {
        let t0 = Instant::now();
        let mut sig = white(22, 4.0, -45.0);
        mix(&mut sig, &speechlike(23, 1.2, -22.0), 0.7);
        let pcm = to_pcm(&sig);
        let reference: Vec<VadEvent> = run(&mut new_vad(t0), &pcm, t0, FRAME)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(reference.len(), 2, "{reference:?}");
        for chunk in [1, 37, 80, 240, 1000] {
            let got: Vec<VadEvent> = run(&mut new_vad(t0), &pcm, t0, chunk)
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            assert_eq!(got, reference, "chunk {chunk}");
        }
    }

    #[test]
    fn turn_is_over_until_reset_then_detects_again() {
        let t0 = Instant::now();
        let mut sig = quiet(24, 6.0);
        mix(&mut sig, &speechlike(25, 0.8, -20.0), 0.5);
        mix(&mut sig, &speechlike(26, 0.8, -20.0), 2.5);
        let pcm = to_pcm(&sig);
        let mut vad = new_vad(t0);
        let split = 2 * 8000;
        let (first, second) = pcm.split_at(split);
        let events = run(&mut vad, first, t0, FRAME);
        assert!(matches!(
            events.as_slice(),
            [
                (_, VadEvent::SpeechStart { .. }),
                (_, VadEvent::SpeechEnd { .. })
            ]
        ));
        let floor = vad.noise_floor_dbfs();
        let t1 = t0 + Duration::from_secs(2);
        vad.reset(t1);
        assert_eq!(vad.noise_floor_dbfs(), floor, "reset keeps the noise floor");
        let events = run(&mut vad, second, t1, FRAME);
        let [(_, VadEvent::SpeechStart { at }), (_, VadEvent::SpeechEnd { .. })] =
            events.as_slice()
        else {
            panic!("after reset: {events:?}");
        };
        assert!((since(*at, t0) - 2.5).abs() <= 0.04);
    }

    #[test]
    fn done_turn_stays_quiet_without_reset() {
        let t0 = Instant::now();
        let mut sig = quiet(27, 4.0);
        mix(&mut sig, &speechlike(28, 0.6, -20.0), 0.3);
        mix(&mut sig, &speechlike(29, 1.0, -20.0), 2.5);
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_eq!(
            events.len(),
            2,
            "second utterance needs a reset: {events:?}"
        );
    }

    #[test]
    fn missing_audio_counts_as_silence() {
        let t0 = Instant::now();
        let pcm = to_pcm(&speechlike(30, 1.0, -20.0));
        let mut vad = new_vad(t0);
        let events = run(&mut vad, &pcm, t0, FRAME);
        assert!(matches!(
            events.as_slice(),
            [(_, VadEvent::SpeechStart { .. })]
        ));
        assert!(vad.in_speech());
        let end = t0 + Duration::from_secs(1);
        assert_eq!(vad.push(&[], end + Duration::from_millis(300)), None);
        let Some(VadEvent::SpeechEnd { at, .. }) = vad.push(&[], end + Duration::from_millis(620))
        else {
            panic!("no SpeechEnd after a silent gap");
        };
        assert!((since(at, t0) - 1.0).abs() <= 0.1);
    }

    #[test]
    fn noise_floor_follows_the_line_level() {
        let t0 = Instant::now();
        let mut vad = new_vad(t0);
        run(&mut vad, &to_pcm(&white(31, 3.0, -50.0)), t0, FRAME);
        let floor = vad.noise_floor_dbfs();
        assert!((floor + 50.0).abs() <= 3.0, "floor {floor}");
        // The level steps up by 20 dB: the floor climbs towards it, slowly.
        let t1 = t0 + Duration::from_secs(3);
        run(&mut vad, &to_pcm(&white(32, 4.0, -30.0)), t1, FRAME);
        let floor = vad.noise_floor_dbfs();
        assert!((-36.0..=-29.0).contains(&floor), "floor {floor}");
    }

    #[test]
    fn espeak_sentence_with_noise_at_10_db_snr() {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = dir.path().join("raw.wav");
        let wav = dir.path().join("speech.wav");
        let hint = "espeak-ng and sox are needed: run scripts/setup-test-peers.sh";
        let spoke = std::process::Command::new("espeak-ng")
            .arg("-w")
            .arg(&raw)
            .arg("Balance of my savings account, please.")
            .status()
            .unwrap_or_else(|e| panic!("espeak-ng: {e}; {hint}"));
        assert!(spoke.success(), "espeak-ng failed; {hint}");
        let converted = std::process::Command::new("sox")
            .arg(&raw)
            .args(["-r", "8000", "-c", "1", "-b", "16"])
            .arg(&wav)
            .status()
            .unwrap_or_else(|e| panic!("sox: {e}; {hint}"));
        assert!(converted.success(), "sox failed; {hint}");
        let mut reader = hound::WavReader::open(&wav).expect("read converted wav");
        assert_eq!(reader.spec().sample_rate, 8000);
        let clean: Vec<f32> = reader
            .samples::<i16>()
            .map(|s| f32::from(s.expect("wav sample")))
            .collect();

        // Where the words are: 10 ms windows within 35 dB of the loudest.
        let win_db: Vec<f32> = clean
            .chunks(80)
            .map(|w| 20.0 * rms(w).max(1e-3).log10())
            .collect();
        let peak = win_db.iter().cloned().fold(f32::MIN, f32::max);
        let first = win_db
            .iter()
            .position(|d| *d > peak - 35.0)
            .expect("speech");
        let last = win_db
            .iter()
            .rposition(|d| *d > peak - 35.0)
            .expect("speech");
        let (onset_idx, end_idx) = (first * 80, (last + 1) * 80);
        let speech_rms = rms(&clean[onset_idx..end_idx.min(clean.len())]);

        let lead = 1.0f32;
        let total = lead + clean.len() as f32 / RATE + 1.5;
        let noise_db = 20.0 * (speech_rms / 32768.0).log10() - 10.0;
        let mut sig = white(33, total, noise_db);
        mix(&mut sig, &clean, lead);
        let onset = lead + onset_idx as f32 / RATE;
        let end = lead + end_idx as f32 / RATE;

        let t0 = Instant::now();
        let events = run(&mut new_vad(t0), &to_pcm(&sig), t0, FRAME);
        assert_eq!(events.len(), 2, "{events:?} (speech {onset}..{end})");
        let (start_when, VadEvent::SpeechStart { .. }) = events[0] else {
            panic!("{events:?}");
        };
        assert!(
            secs(start_when) < onset + 0.25,
            "start reported at {start_when:?}, first word at {onset}"
        );
        let (end_when, VadEvent::SpeechEnd { at, .. }) = events[1] else {
            panic!("{events:?}");
        };
        assert!(
            secs(end_when) <= end + 0.6 + 0.1,
            "end reported at {end_when:?}, speech ends at {end}"
        );
        assert!(
            since(at, t0) >= end - 0.3,
            "end at {:.3} is early, speech ends at {end}",
            since(at, t0)
        );
    }

    #[test]
    fn extreme_config_does_not_panic() {
        let t0 = Instant::now();
        let cfgs = [
            VadConfig {
                start_guard: Duration::MAX,
                end_silence: Duration::MAX,
                max_utterance: Duration::MAX,
                no_input: Duration::MAX,
                min_snr_db: f32::NAN,
                abs_floor_dbfs: f32::INFINITY,
            },
            VadConfig {
                start_guard: Duration::ZERO,
                end_silence: Duration::ZERO,
                max_utterance: Duration::ZERO,
                no_input: Duration::ZERO,
                min_snr_db: f32::NEG_INFINITY,
                abs_floor_dbfs: f32::NEG_INFINITY,
            },
        ];
        let pcm = to_pcm(&speechlike(34, 1.0, -20.0));
        for cfg in cfgs {
            let mut vad = Vad::new(cfg, t0);
            run(&mut vad, &pcm, t0, FRAME);
            vad.reset(t0 + Duration::from_secs(1));
            run(&mut vad, &pcm, t0 + Duration::from_secs(1), 33);
            assert!(vad.noise_floor_dbfs().is_finite());
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_audio_and_clock_is_handled(
                chunks in proptest::collection::vec(
                    (proptest::collection::vec(any::<i16>(), 0..400), -50i64..3000),
                    0..60,
                ),
            ) {
                let t0 = Instant::now() + Duration::from_secs(10);
                let mut vad = new_vad(t0);
                let mut now = t0;
                let mut started = false;
                let mut finished = false;
                for (pcm, step_ms) in chunks {
                    now = if step_ms < 0 {
                        now.checked_sub(Duration::from_millis(step_ms.unsigned_abs())).unwrap_or(now)
                    } else {
                        now + Duration::from_millis(step_ms.unsigned_abs())
                    };
                    match vad.push(&pcm, now) {
                        Some(VadEvent::SpeechStart { .. }) => {
                            prop_assert!(!started && !finished);
                            started = true;
                        }
                        Some(VadEvent::SpeechEnd { .. } | VadEvent::MaxUtterance) => {
                            prop_assert!(started && !finished);
                            finished = true;
                        }
                        Some(VadEvent::NoInput) => {
                            prop_assert!(!started && !finished);
                            finished = true;
                        }
                        None => {}
                    }
                    prop_assert!(vad.noise_floor_dbfs().is_finite());
                }
            }
        }
    }
}
