//! Piper text-to-speech (piper-rs + ONNX Runtime + espeak-ng).
//!
//! Fixed prompts are rendered once into an on-disk cache ([`TtsCache`]); per-contact text is
//! synthesised sentence by sentence on worker threads and streamed ([`TtsWorkers`]), so the first
//! sentence plays while the rest renders.
//!
//! Licence note: espeak-ng (GPL-3.0-or-later) is compiled by `espeak-rs-sys` and linked statically.
//!
//! Run-time inputs (see `scripts/setup-piper.sh`): the voice `.onnx` with its `.onnx.json`, the
//! folder holding `espeak-ng-data/`, and `libonnxruntime.so.<version>` (>= 1.24). ONNX Runtime is
//! loaded from the given path (`ort` feature `load-dynamic`); `Voice::load` sets
//! `PIPER_ESPEAKNG_DATA_DIRECTORY` itself, so the operator sets no environment variable.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use piper_rs::{ModelConfig, Piper};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc as tmpsc;

/// Identifies everything besides text, voice and settings that shapes the audio; part of every
/// cache key so an engine or algorithm change never serves stale prompts.
const ENGINE_VERSION: &str = "piper-rs=0.2.0;ort=2.0.0-rc.12;espeak-ng=1.52;warmline-tts=1";

/// Oldest ONNX Runtime that ort 2.0.0-rc.12 accepts; older libraries make ort hang, not fail.
const MIN_ORT: (u32, u32) = (1, 24);

/// Silence between sentences (Piper's own default `sentence_silence`).
const SENTENCE_SILENCE_MS: u64 = 200;

/// Longest sentence handed to the model in one piece; longer runs are cut at a clause or a space.
const MAX_SENTENCE_CHARS: usize = 400;

/// Words whose trailing dot never ends a sentence (compared lower-case, without the dot).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "approx", "dept",
];

/// Variable espeak-rs reads once, at its first use, to find `espeak-ng-data/`.
const ESPEAK_DATA_ENV: &str = "PIPER_ESPEAKNG_DATA_DIRECTORY";

const SETUP_HINT: &str = "run scripts/setup-piper.sh or set [speech] voice = ...";

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("ONNX Runtime library {path}: {hint}")]
    OnnxRuntimeMissing { path: PathBuf, hint: String },
    #[error(
        "ONNX Runtime library {path} is version {version}; Piper needs >= 1.24 \
         (run scripts/setup-piper.sh, which fetches onnxruntime 1.24.4 from PyPI)"
    )]
    OnnxRuntimeTooOld { path: PathBuf, version: String },
    #[error("Piper voice {path} not found: {hint}")]
    VoiceMissing { path: PathBuf, hint: String },
    #[error("cannot load Piper voice {path}: {detail}")]
    VoiceLoad { path: PathBuf, detail: String },
    #[error("cannot synthesise {text:?}: {detail}")]
    Synthesis { text: String, detail: String },
    #[error("speech cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("text-to-speech worker stopped before finishing the text")]
    WorkerGone,
}

/// Per-prompt synthesis settings. Numbers stay strings so the cache key is exactly what the
/// operator wrote; they are parsed (and range-checked) when synthesising.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VoiceSettings {
    /// Speaking time factor (1.0 = voice default pace, 1.2 = slower); 0.25..=4.
    pub length_scale: Option<String>,
    /// Variability of the voice; 0..=2.
    pub noise_scale: Option<String>,
    /// Speaker id of a multi-speaker voice.
    pub speaker: Option<i64>,
}

/// Settings after parsing.
#[derive(Clone, Copy, Debug)]
struct Scales {
    length: Option<f32>,
    noise: Option<f32>,
    speaker: Option<i64>,
}

/// One loaded Piper voice (model + config), about 200 MB resident; share it via `Arc`.
/// Inference runs one sentence at a time (the ONNX session needs exclusive access), so several
/// streams interleave sentence by sentence.
pub struct Voice {
    name: String,
    onnx: PathBuf,
    sample_rate: u32,
    espeak_voice: String,
    num_speakers: u32,
    piper: Mutex<Piper>,
}

impl fmt::Debug for Voice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Voice")
            .field("name", &self.name)
            .field("onnx", &self.onnx)
            .field("sample_rate", &self.sample_rate)
            .field("espeak_voice", &self.espeak_voice)
            .field("num_speakers", &self.num_speakers)
            .finish_non_exhaustive()
    }
}

/// espeak-ng keeps global state and is not thread-safe: every call goes through this lock.
static ESPEAK_LOCK: Mutex<()> = Mutex::new(());
/// The espeak-ng data folder the process committed to (espeak-rs initialises only once).
static ESPEAK_DIR: OnceLock<PathBuf> = OnceLock::new();
/// The ONNX Runtime library loaded into the process (it can be loaded only once).
static ORT_LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves no broken invariant here (the guarded data is
    // either `()` or a session that is valid between calls).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Voice {
    /// Loads `onnx` (with `<onnx>.json` beside it). `espeak_data` is the folder holding
    /// `espeak-ng-data/` (or that folder itself); `ort_lib` is `libonnxruntime.so.<version>`.
    /// Blocking (several seconds): call from a blocking thread.
    pub fn load(onnx: &Path, espeak_data: &Path, ort_lib: &Path) -> Result<Arc<Voice>, TtsError> {
        let started = Instant::now();
        // Every check that can fail comes before the first ort call: a missing or old ONNX
        // Runtime makes ort hang instead of returning an error.
        check_onnxruntime(ort_lib)?;
        let config_path = config_path_for(onnx);
        for path in [onnx, config_path.as_path()] {
            if !path.is_file() {
                return Err(TtsError::VoiceMissing {
                    path: path.to_path_buf(),
                    hint: SETUP_HINT.to_string(),
                });
            }
        }
        let voice_load = |detail: String| TtsError::VoiceLoad {
            path: onnx.to_path_buf(),
            detail,
        };
        let config_text = fs::read_to_string(&config_path).map_err(|e| TtsError::VoiceLoad {
            path: config_path.clone(),
            detail: e.to_string(),
        })?;
        let config: ModelConfig =
            serde_json::from_str(&config_text).map_err(|e| TtsError::VoiceLoad {
                path: config_path.clone(),
                detail: format!("not a Piper voice config: {e}"),
            })?;
        let sample_rate = config.audio.sample_rate;
        if !(8_000..=48_000).contains(&sample_rate) {
            return Err(TtsError::VoiceLoad {
                path: config_path.clone(),
                detail: format!("audio.sample_rate {sample_rate} is outside 8000..=48000"),
            });
        }
        let espeak_voice = config.espeak.voice.clone();
        let num_speakers = config.num_speakers;

        init_espeak(espeak_data)?;
        // Proves the voice's espeak language has data (a Mandarin voice needs `cmn_dict`).
        phonemize(&espeak_voice, "test").map_err(|e| {
            voice_load(format!(
                "espeak-ng cannot phonemise for voice language {espeak_voice:?}: {e} \
                 (is its dictionary in {}?)",
                espeak_data.display()
            ))
        })?;

        init_onnxruntime(ort_lib)?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(1);
        let session = ort::session::Session::builder()
            .map_err(|e| voice_load(format!("ONNX session builder: {e}")))?
            .with_intra_threads(threads)
            .map_err(|e| voice_load(format!("ONNX intra-op threads: {e}")))?
            .commit_from_file(onnx)
            .map_err(|e| voice_load(format!("ONNX model: {e}")))?;
        let name = onnx
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| onnx.display().to_string());
        tracing::info!(
            voice = %name,
            sample_rate,
            ms = started.elapsed().as_millis() as u64,
            "Piper voice loaded"
        );
        Ok(Arc::new(Voice {
            name,
            onnx: onnx.to_path_buf(),
            sample_rate,
            espeak_voice,
            num_speakers,
            piper: Mutex::new(Piper::from_session(session, config)),
        }))
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The model file's stem, e.g. `en_US-joe-medium`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Synthesises `text` to 16-bit mono PCM at [`Voice::sample_rate`]. Blocking (about 0.1–0.8 ×
    /// real time on two cores): never call it on the async reactor.
    pub fn synthesize(&self, text: &str, settings: &VoiceSettings) -> Result<Vec<i16>, TtsError> {
        let scales = self.scales(settings, text)?;
        let mut out = Vec::new();
        for sentence in split_sentences(text) {
            let audio = self.synthesize_sentence(&sentence, &scales)?;
            self.append_with_gap(&mut out, audio);
        }
        Ok(out)
    }

    /// Appends one sentence's audio, separated from earlier speech by the sentence silence.
    fn append_with_gap(&self, out: &mut Vec<i16>, audio: Vec<i16>) {
        if audio.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.resize(out.len().saturating_add(self.silence_len()), 0);
        }
        out.extend(audio);
    }

    fn silence_len(&self) -> usize {
        usize::try_from(u64::from(self.sample_rate) * SENTENCE_SILENCE_MS / 1000).unwrap_or(0)
    }

    fn scales(&self, settings: &VoiceSettings, text: &str) -> Result<Scales, TtsError> {
        let bad = |detail: String| TtsError::Synthesis {
            text: excerpt(text),
            detail,
        };
        let parse = |name: &str, value: &Option<String>, min: f32, max: f32| match value {
            None => Ok(None),
            Some(raw) => match raw.trim().parse::<f32>() {
                Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(bad(format!(
                    "{name} {raw:?} must be a number in {min}..={max}"
                ))),
            },
        };
        let length = parse("length_scale", &settings.length_scale, 0.25, 4.0)?;
        let noise = parse("noise_scale", &settings.noise_scale, 0.0, 2.0)?;
        let speaker = match settings.speaker {
            None => None,
            Some(id) if self.num_speakers > 1 && id >= 0 && id < i64::from(self.num_speakers) => {
                Some(id)
            }
            Some(0) if self.num_speakers <= 1 => None,
            Some(id) => {
                return Err(bad(format!(
                    "speaker {id} does not exist; voice {} has {} speaker(s)",
                    self.name,
                    self.num_speakers.max(1)
                )))
            }
        };
        Ok(Scales {
            length,
            noise,
            speaker,
        })
    }

    /// One model run for one sentence: clauses are phonemised separately and joined with their
    /// punctuation, which the model renders as pauses (piper-rs alone drops it).
    fn synthesize_sentence(&self, sentence: &str, scales: &Scales) -> Result<Vec<i16>, TtsError> {
        let phonemes = self.sentence_phonemes(sentence)?;
        if phonemes.trim().is_empty() {
            return Ok(Vec::new());
        }
        let result = {
            let mut piper = lock(&self.piper);
            piper.create(
                &phonemes,
                true,
                scales.speaker,
                scales.length,
                scales.noise,
                None,
            )
        };
        let (samples, _rate) = result.map_err(|e| TtsError::Synthesis {
            text: excerpt(sentence),
            detail: e.to_string(),
        })?;
        Ok(samples.iter().map(|&s| f32_to_i16(s)).collect())
    }

    fn sentence_phonemes(&self, sentence: &str) -> Result<String, TtsError> {
        let spoken = if self.espeak_voice.starts_with("en") {
            speak_money(sentence)
        } else {
            sentence.to_string()
        };
        let mut out = String::new();
        for (clause, punct) in split_clauses(&spoken) {
            if !clause.chars().any(char::is_alphanumeric) {
                continue;
            }
            let ph = phonemize(&self.espeak_voice, &clause).map_err(|e| TtsError::Synthesis {
                text: excerpt(sentence),
                detail: e,
            })?;
            if ph.trim().is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(ph.trim());
            out.push(punct);
        }
        Ok(out)
    }
}

/// Rewrites "$49.95" as "49 dollars and 95 cents": espeak-ng reads it "dollar forty-nine point
/// nine five". English voices only.
fn speak_money(text: &str) -> String {
    let mut out = String::with_capacity(text.len().saturating_add(16));
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let int_len = after
            .find(|c: char| !(c.is_ascii_digit() || c == ','))
            .unwrap_or(after.len());
        // A trailing comma ("$5, then") belongs to the sentence, not the number.
        let int_part = after[..int_len].trim_end_matches(',');
        let dollars: String = int_part.chars().filter(char::is_ascii_digit).collect();
        if dollars.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let tail = &after[int_part.len()..];
        let cents = tail
            .strip_prefix('.')
            .and_then(|t| t.get(..2).map(|c| (c, &t[2..])))
            .filter(|(c, next)| {
                c.bytes().all(|b| b.is_ascii_digit())
                    && !next.starts_with(|ch: char| ch.is_ascii_digit())
            });
        let odd_decimal = tail
            .strip_prefix('.')
            .is_some_and(|t| t.starts_with(|ch: char| ch.is_ascii_digit()));
        if cents.is_none() && odd_decimal {
            // "$1.234" is no amount of money we know how to say; leave it to espeak.
            out.push('$');
            rest = after;
            continue;
        }
        let dollars = dollars.trim_start_matches('0');
        let cents_value = cents.map(|(c, _)| c.trim_start_matches('0')).unwrap_or("");
        let mut words = Vec::new();
        if !dollars.is_empty() || cents_value.is_empty() {
            let n = if dollars.is_empty() { "0" } else { dollars };
            let unit = if n == "1" { "dollar" } else { "dollars" };
            words.push(format!("{n} {unit}"));
        }
        if !cents_value.is_empty() {
            let unit = if cents_value == "1" { "cent" } else { "cents" };
            words.push(format!("{cents_value} {unit}"));
        }
        out.push_str(&words.join(" and "));
        rest = match cents {
            Some((_, next)) => next,
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

fn f32_to_i16(s: f32) -> i16 {
    // NaN maps to 0 through `as`; the clamp keeps the product in range.
    (s.clamp(-1.0, 1.0) * 32767.0) as i16
}

/// Shortens text for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

fn config_path_for(onnx: &Path) -> PathBuf {
    let mut s = onnx.as_os_str().to_os_string();
    s.push(".json");
    PathBuf::from(s)
}

/// Checks that `path` is an ONNX Runtime library of version >= 1.24 without loading it; returns
/// the version. The version comes from the (symlink-resolved) file name
/// `libonnxruntime.so.X.Y.Z`, else a `VERSION` file beside it (written by setup-piper.sh), else
/// the wheel's `build_and_package_info.py` beside it.
pub fn check_onnxruntime(path: &Path) -> Result<String, TtsError> {
    if !path.is_file() {
        return Err(TtsError::OnnxRuntimeMissing {
            path: path.to_path_buf(),
            hint: "no such file; run scripts/setup-piper.sh or set [speech] onnxruntime = ..."
                .to_string(),
        });
    }
    let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = resolved.parent().map(Path::to_path_buf).unwrap_or_default();
    let from_name = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(str::to_string);
    let from_file = || {
        fs::read_to_string(dir.join("VERSION"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let from_wheel = || {
        let text = fs::read_to_string(dir.join("build_and_package_info.py")).ok()?;
        text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("__version__")?;
            let value = rest.trim_start().strip_prefix('=')?.trim();
            Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
        })
    };
    let version = from_name
        .filter(|v| parse_version(v).is_some())
        .or_else(|| from_file().filter(|v| parse_version(v).is_some()))
        .or_else(|| from_wheel().filter(|v| parse_version(v).is_some()));
    match version {
        Some(v) if parse_version(&v).is_some_and(|mm| mm >= MIN_ORT) => Ok(v),
        Some(v) => Err(TtsError::OnnxRuntimeTooOld {
            path: path.to_path_buf(),
            version: v,
        }),
        None => Err(TtsError::OnnxRuntimeTooOld {
            path: path.to_path_buf(),
            version: "unknown (name the file libonnxruntime.so.X.Y.Z or put X.Y.Z in a \
                      VERSION file beside it)"
                .to_string(),
        }),
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn init_onnxruntime(path: &Path) -> Result<(), TtsError> {
    let mut loaded = lock(&ORT_LOADED);
    match loaded.as_ref() {
        Some(previous) if previous != path => {
            tracing::warn!(
                requested = %path.display(),
                loaded = %previous.display(),
                "ONNX Runtime is already loaded; keeping the first library"
            );
        }
        Some(_) => {}
        None => {
            let builder = ort::init_from(path).map_err(|e| TtsError::OnnxRuntimeMissing {
                path: path.to_path_buf(),
                hint: format!("cannot load it: {e}"),
            })?;
            builder.with_name("warmline-tts").commit();
            *loaded = Some(path.to_path_buf());
        }
    }
    Ok(())
}

/// Points espeak-rs at `espeak_data` (the folder holding `espeak-ng-data/`, or that folder)
/// before its one-time initialisation, and initialises it now so errors surface at load time.
fn init_espeak(espeak_data: &Path) -> Result<(), TtsError> {
    let parent = if espeak_data.join("espeak-ng-data").is_dir() {
        espeak_data.to_path_buf()
    } else if espeak_data
        .file_name()
        .is_some_and(|n| n == "espeak-ng-data")
        && espeak_data.is_dir()
    {
        espeak_data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        return Err(TtsError::VoiceLoad {
            path: espeak_data.to_path_buf(),
            detail: "no espeak-ng-data/ folder here (Debian: apt-get install espeak-ng-data, \
                     then use /usr/lib/<multiarch>)"
                .to_string(),
        });
    };
    let _guard = lock(&ESPEAK_LOCK);
    let committed = ESPEAK_DIR.get_or_init(|| {
        // espeak-rs reads this variable once, inside the lock above, before any other use.
        std::env::set_var(ESPEAK_DATA_ENV, &parent);
        parent.clone()
    });
    if *committed != parent {
        return Err(TtsError::VoiceLoad {
            path: espeak_data.to_path_buf(),
            detail: format!(
                "espeak-ng is already initialised from {}; one process uses one espeak-ng-data",
                committed.display()
            ),
        });
    }
    Ok(())
}

/// Phonemises one clause (no clause punctuation inside) to IPA.
fn phonemize(language: &str, clause: &str) -> Result<String, String> {
    let _guard = lock(&ESPEAK_LOCK);
    espeak_rs::text_to_phonemes(clause, language, None)
        .map(|parts| parts.join(" "))
        .map_err(|e| e.to_string())
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

fn is_wide_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '」' | '』' | '）'
    )
}

/// True when the text before a final "." ends in an abbreviation or an initial ("Mr.", "e.g.",
/// "J."), so the dot does not end the sentence.
fn ends_with_abbreviation(before_dot: &str) -> bool {
    let word = before_dot
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_start_matches(|c: char| !c.is_alphanumeric());
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let mut chars = word.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase())
}

/// Splits text into sentences at `.`, `!`, `?` followed by a space or the end (and at `。！？`),
/// keeping abbreviations ("Mr.", "e.g."), initials and numbers ("$49.95") intact. Whitespace is
/// collapsed; pieces without letters or digits are dropped; over-long sentences are cut.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut raw: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        if is_wide_terminator(c) {
            while let Some(&n) = chars.peek() {
                if !(is_wide_terminator(n) || is_closer(n)) {
                    break;
                }
                cur.push(n);
                chars.next();
            }
            raw.push(std::mem::take(&mut cur));
        } else if is_terminator(c) {
            let run_start = cur.len() - c.len_utf8();
            let mut single_dot = c == '.';
            while let Some(&n) = chars.peek() {
                if !(is_terminator(n) || is_closer(n)) {
                    break;
                }
                single_dot &= !is_terminator(n);
                cur.push(n);
                chars.next();
            }
            let at_boundary = chars.peek().is_none_or(|n| n.is_whitespace());
            let abbreviation = single_dot && ends_with_abbreviation(&cur[..run_start]);
            if at_boundary && !abbreviation {
                raw.push(std::mem::take(&mut cur));
            }
        }
    }
    raw.push(cur);
    let mut out = Vec::new();
    for piece in raw {
        let collapsed = piece.split_whitespace().collect::<Vec<_>>().join(" ");
        if collapsed.chars().any(char::is_alphanumeric) {
            cut_long(&collapsed, &mut out);
        }
    }
    out
}

/// Cuts a sentence longer than [`MAX_SENTENCE_CHARS`] at the last clause mark or space before
/// the limit (or hard at the limit).
fn cut_long(sentence: &str, out: &mut Vec<String>) {
    let mut rest = sentence;
    loop {
        let Some((limit, _)) = rest.char_indices().nth(MAX_SENTENCE_CHARS) else {
            out.push(rest.to_string());
            return;
        };
        let head = &rest[..limit];
        let cut = head
            .rfind([',', ';', ':'])
            .map(|i| i + 1)
            .or_else(|| head.rfind(' '))
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        let (piece, tail) = rest.split_at(cut);
        if piece.chars().any(char::is_alphanumeric) {
            out.push(piece.trim().to_string());
        }
        rest = tail.trim_start();
        if rest.is_empty() {
            return;
        }
    }
}

/// Splits one sentence into clauses at `, ; :` followed by a space (and `，、；：`), returning
/// each clause's text and the ASCII punctuation that ends it; the last clause carries the
/// sentence's terminator (`.` when it has none).
fn split_clauses(sentence: &str) -> Vec<(String, char)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sentence.chars().peekable();
    while let Some(c) = chars.next() {
        let mark = match c {
            ',' | ';' | ':' if chars.peek().is_none_or(|n| n.is_whitespace()) => Some(c),
            '，' | '、' => Some(','),
            '；' => Some(';'),
            '：' => Some(':'),
            _ => None,
        };
        match mark {
            Some(m) => out.push((std::mem::take(&mut cur).trim().to_string(), m)),
            None => cur.push(c),
        }
    }
    let body = cur.trim_end_matches(|c: char| {
        is_terminator(c) || is_wide_terminator(c) || is_closer(c) || c.is_whitespace()
    });
    let tail = &cur[body.len()..];
    let end = tail
        .chars()
        .find_map(|c| match c {
            '!' | '！' => Some('!'),
            '?' | '？' => Some('?'),
            _ => None,
        })
        .unwrap_or('.');
    out.push((body.trim().to_string(), end));
    out
}

/// On-disk cache of rendered prompts, keyed by sha256(text + voice name + settings + engine
/// version) → `<dir>/<hex>.wav` (16-bit mono at the voice rate), written atomically.
#[derive(Debug)]
pub struct TtsCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TtsCache {
    /// The folder is created on the first render.
    pub fn new(dir: PathBuf) -> Self {
        TtsCache {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// 64 hex digits. Fields are length-prefixed so no two inputs share an encoding.
    pub fn key(voice: &str, settings: &VoiceSettings, text: &str) -> String {
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        fn opt(h: &mut Sha256, value: Option<&[u8]>) {
            match value {
                None => h.update([0u8]),
                Some(b) => {
                    h.update([1u8]);
                    field(h, b);
                }
            }
        }
        let mut h = Sha256::new();
        field(&mut h, ENGINE_VERSION.as_bytes());
        field(&mut h, voice.as_bytes());
        opt(&mut h, settings.length_scale.as_deref().map(str::as_bytes));
        opt(&mut h, settings.noise_scale.as_deref().map(str::as_bytes));
        let speaker = settings.speaker.map(i64::to_le_bytes);
        opt(&mut h, speaker.as_ref().map(|b| b.as_slice()));
        field(&mut h, text.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The cached file for `key`, if rendered. Anything but a 64-hex key yields `None`.
    pub fn get(&self, key: &str) -> Option<PathBuf> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.dir.join(format!("{key}.wav"));
        path.is_file().then_some(path)
    }

    /// Returns the WAV for `text`, synthesising and storing it on a miss (blocking).
    pub fn render(
        &self,
        voice: &Voice,
        settings: &VoiceSettings,
        text: &str,
    ) -> Result<(PathBuf, bool), TtsError> {
        let key = Self::key(voice.name(), settings, text);
        if let Some(path) = self.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((path, true));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let samples = voice.synthesize(text, settings)?;
        fs::create_dir_all(&self.dir).map_err(|source| TtsError::Cache {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(format!("{key}.wav"));
        write_wav_atomic(&path, voice.sample_rate(), &samples)?;
        Ok((path, false))
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Writes a 16-bit mono WAV to a temporary file beside `path`, syncs it and renames it over
/// `path`: readers see the old file or the complete new one, never a partial one.
fn write_wav_atomic(path: &Path, sample_rate: u32, samples: &[i16]) -> Result<(), TtsError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let cache_err = |path: &Path, source: io::Error| TtsError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = Vec::with_capacity(44usize.saturating_add(samples.len().saturating_mul(2)));
    let encoded = (|| -> Result<(), hound::Error> {
        let mut w = hound::WavWriter::new(Cursor::new(&mut bytes), spec)?;
        for &s in samples {
            w.write_sample(s)?;
        }
        w.finalize()
    })();
    encoded.map_err(|e| cache_err(path, io::Error::other(e)))?;

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.{}.{seq}.tmp", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(cache_err(path, source));
    }
    if let Some(dir) = path.parent() {
        // Persists the rename; best effort (some file systems refuse to sync a directory).
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// When a streamed sentence started rendering and when its audio was handed to the stream.
#[derive(Clone, Copy, Debug)]
pub struct ChunkTiming {
    pub render_started: Instant,
    pub sent: Instant,
}

struct Chunk {
    samples: Vec<i16>,
    timing: ChunkTiming,
}

type ChunkResult = Result<Chunk, TtsError>;

/// Sentence chunks of one text (16-bit mono at [`TtsStream::sample_rate`]), in order; each
/// chunk after the first begins with the inter-sentence silence, so the chunks concatenate to
/// what [`Voice::synthesize`] returns. Dropping the stream stops the rendering after the current
/// sentence.
pub struct TtsStream {
    rx: tmpsc::UnboundedReceiver<ChunkResult>,
    expected: usize,
    received: usize,
    finished: bool,
    sample_rate: u32,
    created: Instant,
    timings: Vec<ChunkTiming>,
}

impl fmt::Debug for TtsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtsStream")
            .field("expected", &self.expected)
            .field("received", &self.received)
            .field("finished", &self.finished)
            .field("sample_rate", &self.sample_rate)
            .finish_non_exhaustive()
    }
}

impl TtsStream {
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Number of chunks the text yields (one per sentence, some possibly empty).
    pub fn sentences(&self) -> usize {
        self.expected
    }

    /// When [`TtsWorkers::stream`] was called (time to first audio = `timings()[0].sent - created()`).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Timing of every chunk received so far.
    pub fn timings(&self) -> &[ChunkTiming] {
        &self.timings
    }

    /// The next sentence's audio; `None` after the last one or after an error.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<i16>, TtsError>> {
        if self.finished {
            return None;
        }
        let msg = self.rx.recv().await;
        self.accept(msg)
    }

    /// Blocking form of [`TtsStream::next_chunk`] for plain threads (panics inside an async
    /// context, like tokio's `blocking_recv`).
    pub fn blocking_next_chunk(&mut self) -> Option<Result<Vec<i16>, TtsError>> {
        if self.finished {
            return None;
        }
        let msg = self.rx.blocking_recv();
        self.accept(msg)
    }

    fn accept(&mut self, msg: Option<ChunkResult>) -> Option<Result<Vec<i16>, TtsError>> {
        match msg {
            Some(Ok(chunk)) => {
                self.received = self.received.saturating_add(1);
                self.timings.push(chunk.timing);
                Some(Ok(chunk.samples))
            }
            Some(Err(e)) => {
                self.finished = true;
                Some(Err(e))
            }
            None => {
                self.finished = true;
                (self.received < self.expected).then_some(Err(TtsError::WorkerGone))
            }
        }
    }
}

struct Job {
    sentences: Vec<String>,
    settings: VoiceSettings,
    tx: tmpsc::UnboundedSender<ChunkResult>,
}

/// A pool of synthesis threads (never the async reactor) sharing one [`Voice`]. Each stream is
/// rendered by one thread, sentence by sentence. Dropping the pool lets the threads exit after
/// their current job.
pub struct TtsWorkers {
    jobs: mpsc::Sender<Job>,
    voice: Arc<Voice>,
}

impl fmt::Debug for TtsWorkers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtsWorkers")
            .field("voice", &self.voice.name)
            .finish_non_exhaustive()
    }
}

impl TtsWorkers {
    /// Starts `threads` (at least one) worker threads.
    pub fn new(threads: usize, voice: Arc<Voice>) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let voice = Arc::clone(&voice);
            let spawned = std::thread::Builder::new()
                .name(format!("tts-{i}"))
                .spawn(move || worker_loop(&rx, &voice));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start text-to-speech worker thread");
            }
        }
        TtsWorkers { jobs, voice }
    }

    /// Starts rendering `text`; chunks arrive on the returned stream as sentences finish.
    pub fn stream(&self, text: String, settings: VoiceSettings) -> TtsStream {
        let (tx, rx) = tmpsc::unbounded_channel();
        let sentences = split_sentences(&text);
        let mut stream = TtsStream {
            rx,
            expected: sentences.len(),
            received: 0,
            finished: false,
            sample_rate: self.voice.sample_rate(),
            created: Instant::now(),
            timings: Vec::new(),
        };
        let job = Job {
            sentences,
            settings,
            tx,
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // Every worker is gone; the stream reports it on its first read.
            let _ = job.tx.send(Err(TtsError::WorkerGone));
            stream.expected = 0;
        }
        stream
    }
}

fn worker_loop(rx: &Mutex<mpsc::Receiver<Job>>, voice: &Voice) {
    loop {
        let job = lock(rx).recv();
        let Ok(job) = job else { return };
        // A panic inside the model must not kill the pool; the stream then sees WorkerGone.
        if panic::catch_unwind(AssertUnwindSafe(|| run_job(voice, job))).is_err() {
            tracing::error!("text-to-speech job panicked");
        }
    }
}

fn run_job(voice: &Voice, job: Job) {
    let all_text = job.sentences.join(" ");
    let scales = match voice.scales(&job.settings, &all_text) {
        Ok(s) => s,
        Err(e) => {
            let _ = job.tx.send(Err(e));
            return;
        }
    };
    let mut spoke = false;
    for sentence in &job.sentences {
        if job.tx.is_closed() {
            return; // the caller hung up
        }
        let render_started = Instant::now();
        let audio = match voice.synthesize_sentence(sentence, &scales) {
            Ok(a) => a,
            Err(e) => {
                let _ = job.tx.send(Err(e));
                return;
            }
        };
        let mut samples = Vec::new();
        if spoke && !audio.is_empty() {
            samples.resize(voice.silence_len(), 0);
        }
        spoke |= !audio.is_empty();
        samples.extend(audio);
        let chunk = Chunk {
            samples,
            timing: ChunkTiming {
                render_started,
                sent: Instant::now(),
            },
        };
        if job.tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WELCOME: &str = "Welcome to Warmline Bank. Your card ending 4821 is blocked.";

    fn settings(length: Option<&str>, noise: Option<&str>, speaker: Option<i64>) -> VoiceSettings {
        VoiceSettings {
            length_scale: length.map(str::to_string),
            noise_scale: noise.map(str::to_string),
            speaker,
        }
    }

    #[test]
    fn sentences_keep_abbreviations_and_numbers() {
        let got = split_sentences(
            "Hello Mr. Smith. Your balance is $49.95, e.g. for fees. Call Dr. J. Lee now! OK?",
        );
        assert_eq!(
            got,
            [
                "Hello Mr. Smith.",
                "Your balance is $49.95, e.g. for fees.",
                "Call Dr. J. Lee now!",
                "OK?"
            ]
        );
        assert_eq!(
            split_sentences("For sales, press 1. For support, press 2."),
            ["For sales, press 1.", "For support, press 2."]
        );
        assert_eq!(split_sentences(WELCOME).len(), 2);
    }

    #[test]
    fn sentences_handle_quotes_ellipses_cjk_and_whitespace() {
        assert_eq!(
            split_sentences("He said \"stop.\"  Then\n left...  Really?! next"),
            ["He said \"stop.\"", "Then left...", "Really?!", "next"]
        );
        assert_eq!(
            split_sentences("你好。请按一！谢谢"),
            ["你好。", "请按一！", "谢谢"]
        );
        assert!(split_sentences("  ... !? \n ").is_empty());
        assert!(split_sentences("").is_empty());
    }

    #[test]
    fn long_sentences_are_cut_without_losing_words() {
        let text = "word ".repeat(300) + "end, " + &"more ".repeat(100);
        let got = split_sentences(&text);
        assert!(got.len() >= 3, "{} pieces", got.len());
        assert!(got.iter().all(|s| s.chars().count() <= MAX_SENTENCE_CHARS));
        assert_eq!(
            got.join(" ").split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        // One unbroken run is cut hard at the limit and still fully kept.
        let blob = "x".repeat(MAX_SENTENCE_CHARS * 2 + 5);
        assert_eq!(split_sentences(&blob).concat(), blob);
    }

    #[test]
    fn clauses_carry_their_punctuation() {
        assert_eq!(
            split_clauses("Your card, ending 4,821; is blocked: call at 9:30 now!"),
            [
                ("Your card".to_string(), ','),
                ("ending 4,821".to_string(), ';'),
                ("is blocked".to_string(), ':'),
                ("call at 9:30 now".to_string(), '!'),
            ]
        );
        assert_eq!(
            split_clauses("Hello Mr. Smith"),
            [("Hello Mr. Smith".to_string(), '.')]
        );
        assert_eq!(
            split_clauses("你好，请按一？"),
            [("你好".to_string(), ','), ("请按一".to_string(), '?')]
        );
    }

    #[test]
    fn money_is_read_as_dollars_and_cents() {
        assert_eq!(
            speak_money("Pay $49.95, or $1,250 by Friday."),
            "Pay 49 dollars and 95 cents, or 1250 dollars by Friday."
        );
        assert_eq!(
            speak_money("$1.01 and $0.05"),
            "1 dollar and 1 cent and 5 cents"
        );
        assert_eq!(
            speak_money("$0 today, $3.00."),
            "0 dollars today, 3 dollars."
        );
        // Not money: left alone; version-like decimals stay decimals.
        assert_eq!(speak_money("cost $ or $x, $."), "cost $ or $x, $.");
        assert_eq!(speak_money("$1.234 or $2.5"), "$1.234 or $2.5");
        assert_eq!(speak_money("Total: $7."), "Total: 7 dollars.");
        assert_eq!(speak_money("ends with $"), "ends with $");
    }

    #[test]
    fn cache_key_is_stable_and_distinguishes_every_input() {
        let s = settings(None, None, None);
        let k = TtsCache::key("en_US-joe-medium", &s, WELCOME);
        assert_eq!(k, TtsCache::key("en_US-joe-medium", &s.clone(), WELCOME));
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        // Pinned (recomputed independently with Python hashlib): changing the encoding silently
        // orphans every cached prompt.
        assert_eq!(
            k,
            "eb395e902e7f1fdb8ecd5b8e2d92ea1d23b0ba867ed266743e7ddde2dc41970e"
        );
        let variants = [
            TtsCache::key("en_US-amy-medium", &s, WELCOME),
            TtsCache::key("en_US-joe-medium", &s, "Welcome to Warmline Bank."),
            TtsCache::key(
                "en_US-joe-medium",
                &settings(Some("1"), None, None),
                WELCOME,
            ),
            TtsCache::key(
                "en_US-joe-medium",
                &settings(Some("1.0"), None, None),
                WELCOME,
            ),
            TtsCache::key(
                "en_US-joe-medium",
                &settings(None, Some("1"), None),
                WELCOME,
            ),
            TtsCache::key("en_US-joe-medium", &settings(Some(""), None, None), WELCOME),
            TtsCache::key("en_US-joe-medium", &settings(None, None, Some(0)), WELCOME),
            TtsCache::key("en_US-joe-medium", &settings(None, None, Some(1)), WELCOME),
        ];
        let mut all = vec![k.clone()];
        all.extend(variants);
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "{all:#?}");
        // Field boundaries are encoded: moving a character between fields changes the key.
        assert_ne!(TtsCache::key("ab", &s, "c"), TtsCache::key("a", &s, "bc"));
    }

    #[test]
    fn cache_get_rejects_odd_keys_and_finds_written_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TtsCache::new(dir.path().to_path_buf());
        let key = TtsCache::key("v", &VoiceSettings::default(), "hi");
        assert_eq!(cache.get(&key), None);
        for odd in ["", "../etc/passwd", &"g".repeat(64), &format!("{key}0")] {
            assert_eq!(cache.get(odd), None, "{odd}");
        }
        let path = dir.path().join(format!("{key}.wav"));
        write_wav_atomic(&path, 22_050, &[1, 2, 3]).unwrap();
        assert_eq!(cache.get(&key), Some(path));
        assert_eq!(cache.stats(), (0, 0));
    }

    #[test]
    fn wav_write_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wav");
        let old: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        let new: Vec<i16> = (0..500).map(|i| -(i as i16)).collect();
        write_wav_atomic(&path, 22_050, &old).unwrap();
        // A reader that opened the old file keeps seeing all of it after the replacement.
        let reader = hound::WavReader::open(&path).unwrap();
        write_wav_atomic(&path, 22_050, &new).unwrap();
        let seen: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(seen, old);
        let fresh = hound::WavReader::open(&path).unwrap();
        let spec = fresh.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 22_050, 16)
        );
        let got: Vec<i16> = fresh.into_samples().map(Result::unwrap).collect();
        assert_eq!(got, new);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p.wav"], "temporary files left behind");
        // A failed write reports the path and leaves nothing behind.
        let missing = dir.path().join("no-such-dir").join("q.wav");
        match write_wav_atomic(&missing, 8_000, &new) {
            Err(TtsError::Cache { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected a cache error, got {other:?}"),
        }
        assert!(!missing.exists());
    }

    #[test]
    fn onnxruntime_version_is_checked_without_loading() {
        let dir = tempfile::tempdir().unwrap();
        let lib = |name: &str| {
            let p = dir.path().join(name);
            fs::write(&p, b"not really a library").unwrap();
            p
        };
        match check_onnxruntime(&dir.path().join("libonnxruntime.so.1.24.4")) {
            Err(TtsError::OnnxRuntimeMissing { hint, .. }) => assert!(hint.contains("setup-piper")),
            other => panic!("{other:?}"),
        }
        match check_onnxruntime(&lib("libonnxruntime.so.1.16.3")) {
            Err(TtsError::OnnxRuntimeTooOld { version, .. }) => assert_eq!(version, "1.16.3"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            check_onnxruntime(&lib("libonnxruntime.so.1.24.4")).unwrap(),
            "1.24.4"
        );
        assert_eq!(
            check_onnxruntime(&lib("libonnxruntime.so.1.31.1")).unwrap(),
            "1.31.1"
        );
        let link = dir.path().join("libonnxruntime.so");
        std::os::unix::fs::symlink(dir.path().join("libonnxruntime.so.1.24.4"), &link).unwrap();
        assert_eq!(check_onnxruntime(&link).unwrap(), "1.24.4");

        let other = tempfile::tempdir().unwrap();
        let plain = other.path().join("libonnxruntime.so");
        fs::write(&plain, b"x").unwrap();
        assert!(matches!(
            check_onnxruntime(&plain),
            Err(TtsError::OnnxRuntimeTooOld { version, .. }) if version.starts_with("unknown")
        ));
        fs::write(
            other.path().join("build_and_package_info.py"),
            "package_name = 'onnxruntime'\n__version__ = '1.24.4'\n",
        )
        .unwrap();
        assert_eq!(check_onnxruntime(&plain).unwrap(), "1.24.4");
        fs::write(other.path().join("VERSION"), "1.22.0\n").unwrap();
        assert!(matches!(
            check_onnxruntime(&plain),
            Err(TtsError::OnnxRuntimeTooOld { version, .. }) if version == "1.22.0"
        ));
    }

    #[test]
    fn load_fails_clearly_before_touching_onnxruntime() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("libonnxruntime.so.1.17.0");
        fs::write(&old, b"x").unwrap();
        let onnx = dir.path().join("en_US-none-medium.onnx");
        // An old runtime is refused (ort would hang on it) even before the voice is looked at.
        match Voice::load(&onnx, dir.path(), &old) {
            Err(e @ TtsError::OnnxRuntimeTooOld { .. }) => assert!(e.to_string().contains("1.24")),
            other => panic!("{other:?}"),
        }
        let fake_new = dir.path().join("libonnxruntime.so.1.24.4");
        fs::write(&fake_new, b"x").unwrap();
        match Voice::load(&onnx, dir.path(), &fake_new) {
            Err(e @ TtsError::VoiceMissing { .. }) => {
                assert!(e.to_string().contains("scripts/setup-piper.sh"), "{e}");
                assert!(e.to_string().contains("en_US-none-medium.onnx"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_reports_bad_config_and_espeak_folder() {
        let dir = tempfile::tempdir().unwrap();
        let ort = dir.path().join("libonnxruntime.so.1.24.4");
        fs::write(&ort, b"x").unwrap();
        let onnx = dir.path().join("zh_CN-test-medium.onnx");
        fs::write(&onnx, b"not a model").unwrap();
        let config = |rate: u32| {
            format!(
                r#"{{"audio":{{"sample_rate":{rate}}},"espeak":{{"voice":"cmn"}},
                "inference":{{"noise_scale":0.667,"length_scale":1,"noise_w":0.8}},
                "num_speakers":1,"speaker_id_map":{{}},"phoneme_id_map":{{"_":[0]}}}}"#
            )
        };
        let json = dir.path().join("zh_CN-test-medium.onnx.json");
        fs::write(&json, "{").unwrap();
        match Voice::load(&onnx, dir.path(), &ort) {
            Err(TtsError::VoiceLoad { path, detail }) => {
                assert_eq!(path, json);
                assert!(detail.contains("Piper voice config"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        fs::write(&json, config(4_000)).unwrap();
        match Voice::load(&onnx, dir.path(), &ort) {
            Err(TtsError::VoiceLoad { detail, .. }) => assert!(detail.contains("4000"), "{detail}"),
            other => panic!("{other:?}"),
        }
        fs::write(&json, config(22_050)).unwrap();
        let no_data = dir.path().join("empty");
        fs::create_dir(&no_data).unwrap();
        match Voice::load(&onnx, &no_data, &ort) {
            Err(TtsError::VoiceLoad { path, detail }) => {
                assert_eq!(path, no_data);
                assert!(detail.contains("espeak-ng-data"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    // ---- tests with the real voice (fetched by scripts/setup-piper.sh) ----

    fn speech_assets() -> (PathBuf, PathBuf, PathBuf) {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/speech");
        let onnx = cache.join("voices/en_US-joe-medium.onnx");
        let ort = fs::read_dir(cache.join("onnxruntime"))
            .ok()
            .and_then(|entries| {
                entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                })
            });
        let espeak = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/share",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("espeak-ng-data/phontab").is_file());
        match (onnx.is_file(), ort, espeak) {
            (true, Some(ort), Some(espeak)) => (onnx, espeak, ort),
            _ => panic!(
                "Piper assets missing under {} or espeak-ng-data not installed: \
                 run scripts/setup-piper.sh",
                cache.display()
            ),
        }
    }

    /// One voice per test process (loading takes seconds and ~200 MB).
    fn real_voice() -> Arc<Voice> {
        static VOICE: OnceLock<Result<Arc<Voice>, String>> = OnceLock::new();
        VOICE
            .get_or_init(|| {
                let (onnx, espeak, ort) = speech_assets();
                Voice::load(&onnx, &espeak, &ort).map_err(|e| e.to_string())
            })
            .clone()
            .unwrap_or_else(|e| panic!("loading the real voice failed: {e}"))
    }

    /// Seconds of audio in 10 ms frames whose RMS exceeds about -40 dBFS.
    fn voiced_seconds(samples: &[i16], rate: u32) -> f64 {
        let frame = (rate / 100) as usize;
        let voiced = samples
            .chunks(frame)
            .filter(|f| {
                let energy: f64 = f.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
                (energy / f.len() as f64).sqrt() > 330.0
            })
            .count();
        voiced as f64 * 0.01
    }

    #[test]
    fn real_voice_speaks_the_welcome_prompt() {
        let voice = real_voice();
        assert_eq!(voice.name(), "en_US-joe-medium");
        assert_eq!(voice.sample_rate(), 22_050);
        let audio = voice
            .synthesize(WELCOME, &VoiceSettings::default())
            .unwrap();
        let voiced = voiced_seconds(&audio, voice.sample_rate());
        assert!(voiced > 1.5, "only {voiced:.2} s of speech");
        // The sentence gap is really there: a run of digital silence of at least 200 ms.
        let longest_zero_run = audio
            .split(|&s| s != 0)
            .map(<[i16]>::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest_zero_run >= voice.silence_len(),
            "{longest_zero_run}"
        );
        // Settings reach the model: a slower pace gives longer audio.
        let slow = voice
            .synthesize(
                "Your card is blocked.",
                &settings(Some("1.6"), Some("0"), None),
            )
            .unwrap();
        let normal = voice
            .synthesize(
                "Your card is blocked.",
                &settings(Some("1.0"), Some("0"), None),
            )
            .unwrap();
        assert!(
            slow.len() > normal.len() * 5 / 4,
            "{} vs {}",
            slow.len(),
            normal.len()
        );
    }

    #[test]
    fn real_voice_rejects_bad_settings() {
        let voice = real_voice();
        for bad in [
            settings(Some("fast"), None, None),
            settings(Some("0"), None, None),
            settings(None, Some("NaN"), None),
            settings(None, None, Some(3)),
        ] {
            match voice.synthesize("Hello.", &bad) {
                Err(TtsError::Synthesis { text, .. }) => assert_eq!(text, "Hello."),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(voice
            .synthesize("", &VoiceSettings::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn real_render_is_cached_on_disk() {
        let voice = real_voice();
        let dir = tempfile::tempdir().unwrap();
        let cache = TtsCache::new(dir.path().join("prompts"));
        let s = VoiceSettings::default();
        let (first, was_cached) = cache.render(&voice, &s, WELCOME).unwrap();
        assert!(!was_cached);
        let key = TtsCache::key(voice.name(), &s, WELCOME);
        assert_eq!(first, dir.path().join("prompts").join(format!("{key}.wav")));
        let modified = fs::metadata(&first).unwrap().modified().unwrap();
        let (second, was_cached) = cache.render(&voice, &s, WELCOME).unwrap();
        assert!(was_cached);
        assert_eq!(second, first);
        assert_eq!(fs::metadata(&second).unwrap().modified().unwrap(), modified);
        assert_eq!(cache.stats(), (1, 1));
        let wav = hound::WavReader::open(&first).unwrap();
        assert_eq!(wav.spec().sample_rate, voice.sample_rate());
        assert_eq!(wav.spec().channels, 1);
        let samples: Vec<i16> = wav.into_samples().map(Result::unwrap).collect();
        assert!(voiced_seconds(&samples, voice.sample_rate()) > 1.5);
        // Another cache over the same folder (a restart) also hits.
        let again = TtsCache::new(dir.path().join("prompts"));
        assert!(again.render(&voice, &s, WELCOME).unwrap().1);
    }

    #[test]
    fn real_stream_sends_the_first_sentence_before_rendering_the_rest() {
        let workers = TtsWorkers::new(2, real_voice());
        let mut stream = workers.stream(WELCOME.to_string(), VoiceSettings::default());
        assert_eq!(stream.sentences(), 2);
        assert_eq!(stream.sample_rate(), 22_050);
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.blocking_next_chunk() {
            chunks.push(chunk.unwrap());
        }
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| voiced_seconds(c, 22_050) > 0.3));
        let t = stream.timings();
        assert_eq!(t.len(), chunks.len());
        // The first sentence was handed over before the second one started rendering.
        assert!(t[0].sent <= t[1].render_started);
        assert!(t[0].render_started >= stream.created());
        // The second chunk starts with the sentence gap.
        assert!(chunks[1].iter().take(22_050 / 10).all(|&s| s == 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn real_stream_is_awaited_without_blocking_the_reactor() {
        let workers = TtsWorkers::new(1, real_voice());
        let mut stream = workers.stream(WELCOME.to_string(), VoiceSettings::default());
        // A task on the same single-threaded reactor keeps running while audio renders.
        let ticker = tokio::spawn(async {
            let mut ticks = 0u32;
            loop {
                tokio::task::yield_now().await;
                ticks = ticks.wrapping_add(1);
                if ticks == 1000 {
                    return ticks;
                }
            }
        });
        let first = stream.next_chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        // The ticker only ran if waiting for the first sentence yielded to the reactor.
        assert!(ticker.is_finished());
        assert_eq!(ticker.await.unwrap(), 1000);
        let mut chunks = 1;
        while let Some(chunk) = stream.next_chunk().await {
            assert!(!chunk.unwrap().is_empty());
            chunks += 1;
        }
        assert_eq!(chunks, 2);
    }

    #[test]
    fn real_stream_reports_bad_settings_and_empty_text() {
        let workers = TtsWorkers::new(1, real_voice());
        let mut bad = workers.stream(WELCOME.into(), settings(Some("-1"), None, None));
        assert!(matches!(
            bad.blocking_next_chunk(),
            Some(Err(TtsError::Synthesis { .. }))
        ));
        assert!(bad.blocking_next_chunk().is_none());
        let mut empty = workers.stream(" ... ".into(), VoiceSettings::default());
        assert_eq!(empty.sentences(), 0);
        assert!(empty.blocking_next_chunk().is_none());
    }
}
