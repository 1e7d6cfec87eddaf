//! Voiceprints: speaker embeddings, scoring, cohort normalisation and the accept/reject decision.
//!
//! An [`Embedding`] is a unit-length speaker vector computed from caller speech by a
//! [`SpeakerEmbedder`]. The one implementation today is [`VoskEmbedder`]: Kaldi x-vectors
//! (128 floats) of the Vosk speaker model `vosk-model-spk-0.4`, trained on 8 kHz telephone speech
//! (fetched by `scripts/setup-voiceprint.sh`). Vosk computes the x-vector only inside a recogniser
//! that decodes with a speech model, over what it took as speech, so the embedder runs the
//! installed Korean model with a grammar of every single-syllable word (about ten times cheaper
//! than free decoding, and language-independent enough: the words are thrown away). Each Vosk
//! result carries the vector of its stretch of speech and the number of speech frames behind
//! it; an utterance's vector is the frame-weighted mean of its results' vectors.
//!
//! Scores are cosine similarities of unit vectors, optionally normalised against a cohort of
//! other speakers ([`Cohort`], adaptive S-norm). [`Verifier`] turns a score into a [`Decision`].
//! Measured error rates and the operating point: docs/voiceprints.md.
//!
//! Everything here is blocking CPU work (hundreds of milliseconds for ten seconds of speech): run
//! it on a blocking pool or an OS thread, never on the async reactor
//! (`crate::ops::voiceprint::VoiceprintService` does).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Told to people whenever a model is not where the configuration says.
pub const MODEL_HINT: &str =
    "run scripts/setup-voiceprint.sh or set [voiceprint] speaker_model / speech_model";

/// Speaker frames per second (the x-vector extractor's 10 ms frame shift).
const FRAMES_PER_SECOND: f32 = 100.0;
/// Vosk is fed in 200 ms batches: fewer decoder passes, same result.
const BATCH_MS: usize = 200;
/// Input rates accepted by [`SpeakerEmbedder::embed`].
const MIN_RATE: u32 = 8_000;
const MAX_RATE: u32 = 48_000;
/// The speech model's rate when its `conf/mfcc.conf` names none (Vosk's default).
const DEFAULT_SPEECH_RATE: u32 = 16_000;
/// Hangul syllables block (U+AC00..=U+D7A3): candidates for the single-syllable grammar.
const HANGUL_FIRST: u32 = 0xAC00;
const HANGUL_LAST: u32 = 0xD7A3;

#[derive(Debug, thiserror::Error)]
pub enum VoiceprintError {
    #[error("no speaker model at {}: {hint}", path.display())]
    SpeakerModelMissing { path: PathBuf, hint: &'static str },
    #[error("Vosk could not load the speaker model at {} (a partial download? {hint})", path.display())]
    SpeakerModelLoad { path: PathBuf, hint: &'static str },
    #[error("no speech model at {} (the x-vector is computed inside a speech recogniser): {hint}", path.display())]
    SpeechModelMissing { path: PathBuf, hint: &'static str },
    #[error("Vosk could not load the speech model at {} ({hint})", path.display())]
    SpeechModelLoad { path: PathBuf, hint: &'static str },
    #[error("the speech model at {} has no single-syllable Hangul words to build a grammar from; use a Korean Vosk model", path.display())]
    NoSyllables { path: PathBuf },
    #[error("audio at {rate} Hz is not supported (expected {MIN_RATE}..={MAX_RATE} Hz)")]
    BadRate { rate: u32 },
    #[error("resampling {from} Hz to {to} Hz failed: {detail}")]
    Resample { from: u32, to: u32, detail: String },
    #[error("Vosk could not create a recogniser with the speaker model ({detail})")]
    Recognizer { detail: String },
    #[error("Vosk failed while decoding: {detail}")]
    Decode { detail: String },
    #[error("no speech found in {seconds:.1} s of audio (silence, noise or too short)")]
    NoSpeech { seconds: f32 },
    #[error("cannot read {}: {detail}", path.display())]
    Wav { path: PathBuf, detail: String },
    #[error("the voiceprint extraction worker stopped before answering")]
    WorkerGone,
}

/// A speaker embedding: a unit-length vector and the net speech it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    vector: Vec<f32>,
    speech_s: f32,
}

impl Embedding {
    /// Normalises `vector` to unit length. `None` for an empty, zero or non-finite vector.
    pub fn new(vector: Vec<f32>, speech_s: f32) -> Option<Embedding> {
        if vector.is_empty() || vector.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_normal() {
            return None;
        }
        Some(Embedding {
            vector: vector.into_iter().map(|x| x / norm).collect(),
            speech_s: if speech_s.is_finite() {
                speech_s.max(0.0)
            } else {
                0.0
            },
        })
    }

    pub fn vector(&self) -> &[f32] {
        &self.vector
    }

    /// Net speech behind the vector, in seconds.
    pub fn speech_seconds(&self) -> f32 {
        self.speech_s
    }

    /// Cosine similarity in [-1, 1]; -1 (never a match) for vectors of different models.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        if self.vector.len() != other.vector.len() {
            return -1.0;
        }
        let dot: f32 = self
            .vector
            .iter()
            .zip(&other.vector)
            .map(|(a, b)| a * b)
            .sum();
        dot.clamp(-1.0, 1.0)
    }

    /// One embedding for several utterances of one speaker: the speech-weighted mean of their
    /// unit vectors, renormalised. `None` when `parts` is empty, mixes dimensions or has no
    /// speech.
    pub fn combine(parts: &[Embedding]) -> Option<Embedding> {
        let dim = parts.first()?.vector.len();
        if parts.iter().any(|p| p.vector.len() != dim) {
            return None;
        }
        let total: f32 = parts.iter().map(|p| p.speech_s).sum();
        // Without speech figures every part counts the same.
        let weight = |p: &Embedding| if total > 0.0 { p.speech_s } else { 1.0 };
        let mut sum = vec![0.0f32; dim];
        for p in parts {
            let w = weight(p);
            for (s, x) in sum.iter_mut().zip(&p.vector) {
                *s += w * x;
            }
        }
        Embedding::new(sum, total)
    }
}

/// Mean pairwise cosine of several utterances of one speaker (an enrolment's consistency);
/// `None` with fewer than two.
pub fn self_similarity(parts: &[Embedding]) -> Option<f32> {
    let mut sum = 0.0f32;
    let mut n = 0u32;
    for (i, a) in parts.iter().enumerate() {
        for b in parts.iter().skip(i + 1) {
            sum += a.cosine(b);
            n += 1;
        }
    }
    (n > 0).then(|| sum / n as f32)
}

/// Something that turns speech into a speaker embedding. Blocking.
pub trait SpeakerEmbedder: Send + Sync {
    /// Stored with every voiceprint: embeddings of different models are never compared.
    fn model_version(&self) -> &str;
    /// The embedding of mono 16-bit `pcm` at `rate` Hz.
    fn embed(&self, pcm: &[i16], rate: u32) -> Result<Embedding, VoiceprintError>;
}

/// Vosk x-vectors (`vosk-model-spk-0.4`) computed inside a Korean speech recogniser.
pub struct VoskEmbedder {
    speech: vosk::Model,
    spk: vosk::SpeakerModel,
    speech_dir: PathBuf,
    speech_rate: u32,
    grammar: Vec<String>,
    version: String,
    /// Recognisers ready for reuse: compiling the syllable grammar costs more than a short
    /// utterance's decoding.
    idle: Mutex<Vec<vosk::Recognizer>>,
}

impl std::fmt::Debug for VoskEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoskEmbedder")
            .field("speech_dir", &self.speech_dir)
            .field("speech_rate", &self.speech_rate)
            .field("grammar_words", &self.grammar.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl VoskEmbedder {
    /// Loads the speaker model directory (`final.ext.raw`, `mfcc.conf`, `mean.vec`,
    /// `transform.mat`) and a Korean Vosk speech model. Blocking (seconds).
    pub fn load(speaker_dir: &Path, speech_dir: &Path) -> Result<VoskEmbedder, VoiceprintError> {
        if !speaker_dir.join("final.ext.raw").is_file() {
            return Err(VoiceprintError::SpeakerModelMissing {
                path: speaker_dir.to_path_buf(),
                hint: MODEL_HINT,
            });
        }
        if !(speech_dir.join("am/final.mdl").is_file() || speech_dir.join("final.mdl").is_file()) {
            return Err(VoiceprintError::SpeechModelMissing {
                path: speech_dir.to_path_buf(),
                hint: MODEL_HINT,
            });
        }
        quiet_vosk_logs();
        let spk_str = speaker_dir
            .to_str()
            .ok_or_else(|| VoiceprintError::SpeakerModelLoad {
                path: speaker_dir.to_path_buf(),
                hint: "the path must be valid UTF-8",
            })?;
        let speech_str = speech_dir
            .to_str()
            .ok_or_else(|| VoiceprintError::SpeechModelLoad {
                path: speech_dir.to_path_buf(),
                hint: "the path must be valid UTF-8",
            })?;
        let spk =
            vosk::SpeakerModel::new(spk_str).ok_or_else(|| VoiceprintError::SpeakerModelLoad {
                path: speaker_dir.to_path_buf(),
                hint: MODEL_HINT,
            })?;
        let mut speech =
            vosk::Model::new(speech_str).ok_or_else(|| VoiceprintError::SpeechModelLoad {
                path: speech_dir.to_path_buf(),
                hint: MODEL_HINT,
            })?;
        let grammar: Vec<String> = (HANGUL_FIRST..=HANGUL_LAST)
            .filter_map(char::from_u32)
            .map(String::from)
            .filter(|w| speech.find_word(w).is_some())
            .collect();
        if grammar.is_empty() {
            return Err(VoiceprintError::NoSyllables {
                path: speech_dir.to_path_buf(),
            });
        }
        let speech_rate = speech_sample_rate(speech_dir);
        let name = speaker_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vosk-spk");
        let version = format!("vosk-xvector:{name}");
        tracing::info!(speaker_model = %speaker_dir.display(), speech_model = %speech_dir.display(),
            syllables = grammar.len(), "voiceprint models loaded");
        Ok(VoskEmbedder {
            speech,
            spk,
            speech_dir: speech_dir.to_path_buf(),
            speech_rate,
            grammar,
            version,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn recognizer(&self) -> Result<vosk::Recognizer, VoiceprintError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(rec) = reused {
            return Ok(rec);
        }
        // Every accepted rate is exact in f32.
        let mut rec = vosk::Recognizer::new_with_grammar(
            &self.speech,
            self.speech_rate as f32,
            &self.grammar,
        )
        .ok_or_else(|| VoiceprintError::Recognizer {
            detail: format!(
                "syllable grammar of {} words on {} at {} Hz",
                self.grammar.len(),
                self.speech_dir.display(),
                self.speech_rate
            ),
        })?;
        rec.set_speaker_model(&self.spk);
        Ok(rec)
    }

    fn give_back(&self, mut rec: vosk::Recognizer) {
        rec.reset();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Keep one per thread that may call at once; beyond that, drop.
        if idle.len() < 8 {
            idle.push(rec);
        }
    }
}

impl SpeakerEmbedder for VoskEmbedder {
    fn model_version(&self) -> &str {
        &self.version
    }

    fn embed(&self, pcm: &[i16], rate: u32) -> Result<Embedding, VoiceprintError> {
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return Err(VoiceprintError::BadRate { rate });
        }
        let audio_s = pcm.len() as f32 / rate as f32;
        let pcm = resample(pcm, rate, self.speech_rate)?;
        let mut rec = self.recognizer()?;
        let mut parts: Vec<(Vec<f32>, u32)> = Vec::new();
        let batch = (self.speech_rate as usize * BATCH_MS / 1000).max(1);
        let fed = (|| {
            for chunk in pcm.chunks(batch) {
                let state = rec
                    .accept_waveform(chunk)
                    .map_err(|e| VoiceprintError::Decode {
                        detail: e.to_string(),
                    })?;
                match state {
                    vosk::DecodingState::Running => {}
                    vosk::DecodingState::Finalized => {
                        parts.extend(guarded(|| speaker_of(rec.result()))?);
                    }
                    vosk::DecodingState::Failed => {
                        return Err(VoiceprintError::Decode {
                            detail: "Vosk rejected the audio".to_string(),
                        })
                    }
                }
            }
            parts.extend(guarded(|| speaker_of(rec.final_result()))?);
            Ok(())
        })();
        // A failed decode leaves the recogniser in an unknown state: drop it.
        fed?;
        self.give_back(rec);
        weighted(&parts).ok_or(VoiceprintError::NoSpeech { seconds: audio_s })
    }
}

/// The frame-weighted mean of per-result vectors, as an [`Embedding`].
fn weighted(parts: &[(Vec<f32>, u32)]) -> Option<Embedding> {
    let dim = parts.iter().find(|(_, f)| *f > 0)?.0.len();
    let mut sum = vec![0.0f32; dim];
    let mut frames: u64 = 0;
    for (v, f) in parts {
        if *f == 0 || v.len() != dim {
            continue;
        }
        frames = frames.saturating_add(u64::from(*f));
        // Raw x-vectors differ in length; weigh their directions.
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_normal() {
            continue;
        }
        for (s, x) in sum.iter_mut().zip(v) {
            *s += *f as f32 * x / norm;
        }
    }
    Embedding::new(sum, frames as f32 / FRAMES_PER_SECOND)
}

fn speaker_of(r: vosk::CompleteResult<'_>) -> Option<(Vec<f32>, u32)> {
    match r {
        vosk::CompleteResult::Single(s) => s.speaker_info.map(|i| (i.vector, u32::from(i.frames))),
        vosk::CompleteResult::Multiple(_) => None,
    }
}

/// The vosk crate panics on JSON it cannot borrow from; report that as an error instead.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, VoiceprintError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| VoiceprintError::Decode {
        detail: p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "result could not be read".to_string()),
    })
}

fn quiet_vosk_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| vosk::set_log_level(vosk::LogLevel::Warn));
}

fn speech_sample_rate(dir: &Path) -> u32 {
    ["conf/mfcc.conf", "mfcc.conf"]
        .iter()
        .find_map(|rel| std::fs::read_to_string(dir.join(rel)).ok())
        .and_then(|conf| {
            conf.lines().find_map(|line| {
                let v = line
                    .split('#')
                    .next()?
                    .trim()
                    .strip_prefix("--sample-frequency=")?;
                let hz: f64 = v.trim().parse().ok()?;
                // In range and rounded, so the conversion cannot truncate.
                (8_000.0..=48_000.0)
                    .contains(&hz)
                    .then(|| hz.round() as u32)
            })
        })
        .unwrap_or(DEFAULT_SPEECH_RATE)
}

/// Band-limited resampling of a whole clip (rubato FFT resampler, start-up delay trimmed).
pub fn resample(pcm: &[i16], from: u32, to: u32) -> Result<Vec<i16>, VoiceprintError> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::Resampler;
    if from == to || pcm.is_empty() {
        return Ok(pcm.to_vec());
    }
    let err = |detail: String| VoiceprintError::Resample { from, to, detail };
    let mut inner = rubato::Fft::<f32>::new(
        from as usize,
        to as usize,
        1024,
        1,
        rubato::FixedSync::Input,
    )
    .map_err(|e| err(e.to_string()))?;
    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32_768.0).collect();
    let buf = InterleavedSlice::new(&input, 1, input.len()).map_err(|e| err(e.to_string()))?;
    let out = inner
        .process_all(&buf, input.len(), None)
        .map_err(|e| err(e.to_string()))?;
    Ok(out
        .take_data()
        .into_iter()
        .map(|x| (x * 32_768.0).clamp(-32_768.0, 32_767.0) as i16)
        .collect())
}

/// Reads a WAV file as mono 16-bit PCM (channels averaged, float and 8..32-bit integer
/// samples accepted), with its rate.
pub fn read_wav(path: &Path) -> Result<(Vec<i16>, u32), VoiceprintError> {
    let fail = |detail: String| VoiceprintError::Wav {
        path: path.to_path_buf(),
        detail,
    };
    let mut reader = hound::WavReader::open(path).map_err(|e| fail(e.to_string()))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?,
        hound::SampleFormat::Int => {
            let bits = u32::from(spec.bits_per_sample);
            if !(8..=32).contains(&bits) {
                return Err(fail(format!("{bits}-bit samples are not supported")));
            }
            let scale = 2f32.powi(bits as i32 - 1);
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?
        }
    };
    let mono = samples
        .chunks(channels)
        .map(|frame| {
            let mean = frame.iter().sum::<f32>() / frame.len().max(1) as f32;
            (mean * 32_768.0).clamp(-32_768.0, 32_767.0) as i16
        })
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Other speakers' embeddings, for score normalisation.
#[derive(Debug, Clone, Default)]
pub struct Cohort {
    members: Vec<Embedding>,
}

/// Score statistics of one embedding against its nearest cohort members.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CohortStats {
    mean: f32,
    std: f32,
}

impl Cohort {
    pub fn new(members: Vec<Embedding>) -> Cohort {
        Cohort { members }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Mean and standard deviation of `e`'s scores against its `top_k` most similar members
    /// (all members when `top_k` is 0 or larger than the cohort); `None` with fewer than two.
    fn stats(&self, e: &Embedding, top_k: usize) -> Option<CohortStats> {
        let mut scores: Vec<f32> = self.members.iter().map(|m| e.cosine(m)).collect();
        if scores.len() < 2 {
            return None;
        }
        scores.sort_by(|a, b| b.total_cmp(a));
        let k = if top_k == 0 {
            scores.len()
        } else {
            top_k.clamp(2, scores.len())
        };
        let top = scores.get(..k)?;
        let mean = top.iter().sum::<f32>() / k as f32;
        let var = top.iter().map(|s| (s - mean) * (s - mean)).sum::<f32>() / k as f32;
        Some(CohortStats {
            mean,
            std: var.sqrt().max(1e-4),
        })
    }

    /// Adaptive symmetric normalisation (AS-norm; S-norm when `top_k` is 0) of the raw cosine
    /// of `enrolled` and `test`: the mean of the score's z-scores against each side's cohort
    /// scores. `None` when the cohort has fewer than two members.
    pub fn normalise(&self, enrolled: &Embedding, test: &Embedding, top_k: usize) -> Option<f32> {
        let raw = enrolled.cosine(test);
        let e = self.stats(enrolled, top_k)?;
        let t = self.stats(test, top_k)?;
        Some(0.5 * ((raw - e.mean) / e.std + (raw - t.mean) / t.std))
    }
}

/// How scores become decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyPolicy {
    /// Accept at or above this score (a cosine, or a normalised score when `cohort_top_k` is
    /// used with a cohort).
    pub threshold: f32,
    /// Below this much net speech in the test audio, no decision.
    pub min_speech_s: f32,
    /// Score normalisation: `None` scores raw cosines; `Some(k)` AS-norm against the `k` most
    /// similar cohort members (0: S-norm over all of them).
    pub cohort_top_k: Option<usize>,
    /// Threshold for normalised scores.
    pub normalised_threshold: f32,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            threshold: 0.5,
            min_speech_s: 3.0,
            cohort_top_k: Some(0),
            normalised_threshold: 2.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Accept,
    Reject,
    NotEnoughSpeech,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::NotEnoughSpeech => "not_enough_speech",
        })
    }
}

/// A verification result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The score compared with `threshold` (`None` when there was not enough speech).
    pub score: Option<f32>,
    /// The raw cosine, whatever the normalisation.
    pub cosine: Option<f32>,
    pub threshold: f32,
    /// Whether `score` is cohort-normalised.
    pub normalised: bool,
    /// Net speech in the test audio.
    pub speech_s: f32,
}

/// Applies a [`VerifyPolicy`].
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    pub policy: VerifyPolicy,
}

impl Verifier {
    pub fn new(policy: VerifyPolicy) -> Verifier {
        Verifier { policy }
    }

    /// Scores `test` against `enrolled`. With normalisation configured and a usable `cohort`
    /// the normalised score and threshold apply; otherwise the raw cosine and its threshold.
    pub fn verify(
        &self,
        enrolled: &Embedding,
        test: &Embedding,
        cohort: Option<&Cohort>,
    ) -> Verdict {
        let p = &self.policy;
        let speech_s = test.speech_seconds();
        if speech_s < p.min_speech_s {
            return Verdict {
                decision: Decision::NotEnoughSpeech,
                score: None,
                cosine: None,
                threshold: p.threshold,
                normalised: false,
                speech_s,
            };
        }
        let cosine = enrolled.cosine(test);
        let normalised = p
            .cohort_top_k
            .zip(cohort)
            .and_then(|(k, c)| c.normalise(enrolled, test, k));
        let (score, threshold) = match normalised {
            Some(s) => (s, p.normalised_threshold),
            None => (cosine, p.threshold),
        };
        Verdict {
            decision: if score >= threshold {
                Decision::Accept
            } else {
                Decision::Reject
            },
            score: Some(score),
            cosine: Some(cosine),
            threshold,
            normalised: normalised.is_some(),
            speech_s,
        }
    }
}

/// Collects a customer's speech embeddings across utterances (or calls) until there is enough
/// net speech for a voiceprint.
#[derive(Debug, Clone, Default)]
pub struct Enrolment {
    parts: Vec<Embedding>,
}

/// What an enrolment produced.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolledPrint {
    pub embedding: Embedding,
    pub speech_s: f32,
    pub utterances: u32,
    /// Mean pairwise cosine of the utterances; `None` for a single one.
    pub self_similarity: Option<f32>,
}

impl Enrolment {
    pub fn new() -> Enrolment {
        Enrolment::default()
    }

    pub fn add(&mut self, e: Embedding) {
        self.parts.push(e);
    }

    /// Net speech collected so far.
    pub fn speech_seconds(&self) -> f32 {
        self.parts.iter().map(Embedding::speech_seconds).sum()
    }

    pub fn utterances(&self) -> usize {
        self.parts.len()
    }

    /// The voiceprint once at least `min_speech_s` of speech is in.
    pub fn finish(&self, min_speech_s: f32) -> Option<EnrolledPrint> {
        let speech_s = self.speech_seconds();
        if speech_s < min_speech_s {
            return None;
        }
        Some(EnrolledPrint {
            embedding: Embedding::combine(&self.parts)?,
            speech_s,
            utterances: u32::try_from(self.parts.len()).unwrap_or(u32::MAX),
            self_similarity: self_similarity(&self.parts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &[f32], s: f32) -> Embedding {
        Embedding::new(v.to_vec(), s).expect("valid vector")
    }

    #[test]
    fn embeddings_are_unit_length_and_reject_degenerate_vectors() {
        let a = e(&[3.0, 4.0], 1.0);
        assert!((a.vector()[0] - 0.6).abs() < 1e-6 && (a.vector()[1] - 0.8).abs() < 1e-6);
        assert!(Embedding::new(vec![], 1.0).is_none());
        assert!(Embedding::new(vec![0.0, 0.0], 1.0).is_none());
        assert!(Embedding::new(vec![f32::NAN, 1.0], 1.0).is_none());
        assert_eq!(e(&[1.0], f32::NAN).speech_seconds(), 0.0);
    }

    #[test]
    fn cosine_of_same_opposite_orthogonal_and_mismatched() {
        let a = e(&[1.0, 0.0], 1.0);
        assert!((a.cosine(&e(&[2.0, 0.0], 1.0)) - 1.0).abs() < 1e-6);
        assert!((a.cosine(&e(&[-1.0, 0.0], 1.0)) + 1.0).abs() < 1e-6);
        assert!(a.cosine(&e(&[0.0, 5.0], 1.0)).abs() < 1e-6);
        assert_eq!(a.cosine(&e(&[1.0, 0.0, 0.0], 1.0)), -1.0);
    }

    #[test]
    fn combine_weights_by_speech() {
        let long = e(&[1.0, 0.0], 9.0);
        let short = e(&[0.0, 1.0], 1.0);
        let c = Embedding::combine(&[long.clone(), short.clone()]).expect("combined");
        assert!((c.speech_seconds() - 10.0).abs() < 1e-6);
        // Direction (0.9, 0.1) normalised.
        let want = e(&[0.9, 0.1], 10.0);
        assert!((c.cosine(&want) - 1.0).abs() < 1e-6);
        assert!(Embedding::combine(&[]).is_none());
        assert!(Embedding::combine(&[long, e(&[1.0, 0.0, 0.0], 1.0)]).is_none());
    }

    #[test]
    fn weighted_results_ignore_empty_and_mismatched_parts() {
        let parts = vec![
            (vec![10.0, 0.0], 300),
            (vec![0.0, 1.0], 100),
            (vec![5.0, 5.0, 5.0], 50),
            (vec![0.0, 0.0], 0),
        ];
        let w = weighted(&parts).expect("embedding");
        assert!((w.speech_seconds() - 4.0).abs() < 1e-6);
        assert!((w.cosine(&e(&[3.0, 1.0], 1.0)) - 1.0).abs() < 1e-6);
        assert!(weighted(&[]).is_none());
        assert!(weighted(&[(vec![1.0], 0)]).is_none());
    }

    #[test]
    fn self_similarity_is_the_mean_pairwise_cosine() {
        let parts = [
            e(&[1.0, 0.0], 1.0),
            e(&[1.0, 0.0], 1.0),
            e(&[0.0, 1.0], 1.0),
        ];
        // Pairs: 1, 0, 0.
        let s = self_similarity(&parts).expect("three parts");
        assert!((s - 1.0 / 3.0).abs() < 1e-6);
        assert!(self_similarity(&parts[..1]).is_none());
    }

    #[test]
    fn verifier_decides_by_threshold_and_speech() {
        let v = Verifier::new(VerifyPolicy {
            threshold: 0.5,
            min_speech_s: 3.0,
            cohort_top_k: None,
            normalised_threshold: 2.0,
        });
        let enrolled = e(&[1.0, 0.0], 20.0);
        let close = e(&[1.0, 0.5], 5.0);
        let far = e(&[0.0, 1.0], 5.0);
        let short = e(&[1.0, 0.0], 2.9);
        let ok = v.verify(&enrolled, &close, None);
        assert_eq!(ok.decision, Decision::Accept, "{ok:?}");
        assert!(!ok.normalised);
        assert_eq!(v.verify(&enrolled, &far, None).decision, Decision::Reject);
        let n = v.verify(&enrolled, &short, None);
        assert_eq!((n.decision, n.score), (Decision::NotEnoughSpeech, None));
    }

    #[test]
    fn as_norm_centres_scores_on_the_cohort() {
        // Cohort around the x axis: a raw cosine typical of the cohort normalises to about 0,
        // one far above it to a large positive score.
        let cohort = Cohort::new(vec![
            e(&[1.0, 0.9, 0.0], 1.0),
            e(&[1.0, 0.0, 0.9], 1.0),
            e(&[1.0, -0.9, 0.0], 1.0),
            e(&[1.0, 0.0, -0.9], 1.0),
        ]);
        let enrolled = e(&[1.0, 0.0, 0.0], 1.0);
        let same = e(&[1.0, 0.05, 0.0], 1.0);
        let s = cohort.normalise(&enrolled, &same, 0).expect("cohort");
        assert!(s > 3.0, "{s}");
        let typical = e(&[1.0, 0.9, 0.0], 1.0);
        let t = cohort.normalise(&enrolled, &typical, 0).expect("cohort");
        assert!(t < s && t < 1.5, "{t}");
        assert!(Cohort::new(vec![enrolled.clone()])
            .normalise(&enrolled, &same, 0)
            .is_none());
        // The verifier uses the normalised threshold only when a cohort is usable.
        let v = Verifier::new(VerifyPolicy {
            threshold: 0.999,
            min_speech_s: 0.0,
            cohort_top_k: Some(2),
            normalised_threshold: 1.0,
        });
        let with = v.verify(&enrolled, &same, Some(&cohort));
        assert!(
            with.normalised && with.decision == Decision::Accept,
            "{with:?}"
        );
        let without = v.verify(&enrolled, &same, None);
        assert!(!without.normalised && without.decision == Decision::Reject);
    }

    #[test]
    fn enrolment_waits_for_enough_speech() {
        let mut en = Enrolment::new();
        en.add(e(&[1.0, 0.1], 8.0));
        en.add(e(&[1.0, 0.0], 8.0));
        assert!(en.finish(20.0).is_none());
        en.add(e(&[1.0, -0.1], 8.0));
        let p = en.finish(20.0).expect("24 s");
        assert_eq!(p.utterances, 3);
        assert!((p.speech_s - 24.0).abs() < 1e-5);
        assert!(p.self_similarity.is_some_and(|s| s > 0.97));
    }

    #[test]
    fn resample_keeps_length_ratio_and_tone() {
        let tone: Vec<i16> = (0..22_050)
            .map(|n| {
                ((n as f32 * 2.0 * std::f32::consts::PI * 440.0 / 22_050.0).sin() * 8_000.0) as i16
            })
            .collect();
        let out = resample(&tone, 22_050, 8_000).expect("resampled");
        assert!((7_990..=8_010).contains(&out.len()), "{}", out.len());
        let body = &out[400..7_600];
        let crossings = body.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        // 440 Hz over 0.9 s: ~792 sign changes.
        assert!((780..=805).contains(&crossings), "{crossings}");
        assert_eq!(
            resample(&[], 8_000, 16_000).expect("empty"),
            Vec::<i16>::new()
        );
    }

    #[test]
    fn read_wav_mixes_to_mono_and_reports_bad_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("create");
        for _ in 0..10 {
            w.write_sample(1000i16).expect("l");
            w.write_sample(3000i16).expect("r");
        }
        w.finalize().expect("finalize");
        let (pcm, rate) = read_wav(&path).expect("read");
        assert_eq!(rate, 16_000);
        assert_eq!(pcm, vec![2000; 10]);
        std::fs::write(dir.path().join("bad.wav"), b"RIFFnope").expect("write");
        let err = read_wav(&dir.path().join("bad.wav")).expect_err("not a wav");
        assert!(err.to_string().contains("bad.wav"), "{err}");
    }
    /// Prints model load time and extraction latency for 3 s and 10 s of 8 kHz speech (no
    /// timing asserts; run on an idle machine with a release build, see
    /// scripts/bench-voiceprint.sh): `cargo test --release measure_voiceprint -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn measure_voiceprint_latency() {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/speech");
        let t0 = std::time::Instant::now();
        let emb = VoskEmbedder::load(
            &cache.join("models/vosk-model-spk-0.4"),
            &cache.join("models/vosk-model-small-ko"),
        )
        .expect("models: run scripts/setup-voiceprint.sh");
        println!("models loaded in {:?}", t0.elapsed());
        let (pcm, rate) =
            read_wav(&cache.join("tortoise-voices/freeman/2.wav")).expect("tortoise voices");
        let line = resample(&pcm, rate, 8_000).expect("resample");
        // The first call compiles the grammar; calls reuse its recogniser.
        let first = std::time::Instant::now();
        let _ = emb.embed(line.get(..24_000).unwrap_or(&line), 8_000);
        println!("first extraction (grammar compiled) {:?}", first.elapsed());
        for secs in [3usize, 10] {
            let clip = line.get(..secs * 8_000).unwrap_or(&line);
            let mut times: Vec<std::time::Duration> = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let e = emb.embed(clip, 8_000).expect("embedding");
                    assert!(e.speech_seconds() > 0.0);
                    t.elapsed()
                })
                .collect();
            times.sort();
            println!(
                "{secs} s of audio: extraction median {:?}, min {:?}, max {:?}",
                times[3], times[0], times[6]
            );
        }
    }
}
