//! The appliance's speech services: Vosk recognisers (one shared model per language, a pool of
//! OS threads) and Piper voices whose renderings are cached on disk and in memory.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::ivr::dialplan::Dialplan;
use crate::speech::asr::{AsrError, AsrModel, AsrPool, AsrStream};
use crate::speech::normalize::{normalize, Lang};
use crate::speech::tts::{TtsCache, TtsStream, TtsWorkers, Voice, VoiceSettings};

/// Rendered texts at 8 kHz, by (language, text).
type ClipCache = Mutex<HashMap<(String, String), Arc<[i16]>>>;

pub struct Speech {
    models: HashMap<String, Arc<AsrModel>>,
    pool: AsrPool,
    voices: HashMap<String, Arc<Voice>>,
    /// Per-contact texts, synthesised sentence by sentence off the reactor.
    workers: HashMap<String, TtsWorkers>,
    cache: TtsCache,
    clips: ClipCache,
}

fn lang_of(code: &str) -> Lang {
    match code {
        "zh" => Lang::Zh,
        _ => Lang::En,
    }
}

impl Speech {
    /// Loads what is configured and present. Never fails: a language without a model or a
    /// voice is logged (with where to get one) and its menus work by keys.
    pub fn load(cfg: &Config) -> Speech {
        let s = &cfg.speech;
        if s.gpu {
            // Once, before any model loads. A libvosk built without CUDA (the PyPI wheel)
            // ignores it and recognition stays on the CPU.
            if crate::speech::asr::vosk_gpu_call(c"vosk_gpu_init") {
                tracing::info!("speech: recognition on the GPU (vosk_gpu_init)");
            } else {
                tracing::warn!("speech: [speech] gpu = true, but this libvosk has no GPU support (no vosk_gpu_init); recognition stays on the CPU");
            }
        }
        let mut models = HashMap::new();
        for (lang, dir) in &s.models {
            if !dir.exists() {
                tracing::info!(language = %lang, dir = %dir.display(),
                    "speech: no recognition model for this language (docs/speech.md says where to get one); its menus work by keys");
                continue;
            }
            match AsrModel::load(dir) {
                Ok(m) => {
                    tracing::info!(language = %lang, dir = %dir.display(), rate = m.sample_rate(), "speech: recognition model loaded");
                    models.insert(lang.clone(), m);
                }
                Err(e) => tracing::error!(language = %lang, "speech: {e}"),
            }
        }
        let mut voices = HashMap::new();
        for (lang, onnx) in &s.voices {
            if !onnx.exists() {
                tracing::info!(language = %lang, voice = %onnx.display(),
                    "speech: no Piper voice for this language; text prompts in it are not spoken (run scripts/setup-piper.sh, or set [speech] voices)");
                continue;
            }
            match Voice::load(onnx, &s.espeak_data, &s.onnxruntime) {
                Ok(v) => {
                    tracing::info!(language = %lang, voice = %v.name(), "speech: voice loaded");
                    voices.insert(lang.clone(), v);
                }
                Err(e) => tracing::error!(language = %lang, "speech: {e}"),
            }
        }
        let threads = match s.asr_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let cache_dir = s
            .cache_dir
            .clone()
            .unwrap_or_else(|| cfg.paths.state_dir.join("tts-cache"));
        let workers = voices
            .iter()
            .map(|(lang, v)| {
                (
                    lang.clone(),
                    TtsWorkers::new(threads.clamp(1, 4), v.clone()),
                )
            })
            .collect();
        Speech {
            models,
            pool: AsrPool::with_gpu(if threads == 0 { 1 } else { threads }, s.gpu),
            voices,
            workers,
            cache: TtsCache::new(cache_dir),
            clips: Mutex::new(HashMap::new()),
        }
    }

    pub fn recognises(&self, language: &str) -> bool {
        self.models.contains_key(language)
    }

    /// Opens one recognition turn restricted to `grammar`; `None` without a model for
    /// `language`.
    pub fn start_turn(
        &self,
        language: &str,
        grammar: Vec<String>,
    ) -> Option<Result<AsrStream, AsrError>> {
        let model = self.models.get(language)?.clone();
        // The recogniser adds the model's own unknown-word entry.
        let grammar: Vec<String> = grammar.into_iter().filter(|p| p != "[unk]").collect();
        let grammar = if grammar.is_empty() {
            None
        } else {
            Some(grammar)
        };
        Some(self.pool.start(model, grammar, 8000))
    }

    /// A text already rendered (memory only; never blocks).
    pub fn clip(&self, language: &str, text: &str) -> Option<Arc<[i16]>> {
        self.clips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(language.to_string(), text.to_string()))
            .cloned()
    }

    /// Renders `text` (normalised for speech: money, dates, card digits) at 8 kHz, from the
    /// disk cache when it was rendered before. Blocking: run it off the async reactor.
    pub fn render(&self, language: &str, text: &str) -> Result<Arc<[i16]>, String> {
        if let Some(c) = self.clip(language, text) {
            return Ok(c);
        }
        let voice = self
            .voices
            .get(language)
            .ok_or_else(|| format!("no voice for language '{language}'"))?;
        let spoken = normalize(text, lang_of(language));
        let (path, _) = self
            .cache
            .render(voice, &VoiceSettings::default(), &spoken)
            .map_err(|e| e.to_string())?;
        let samples =
            crate::media::prompt::load_wav(Path::new(&path)).map_err(|e| e.to_string())?;
        let clip: Arc<[i16]> = samples.into();
        self.clips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((language.to_string(), text.to_string()), clip.clone());
        Ok(clip)
    }

    /// Whether texts in `language` can be spoken.
    pub fn speaks(&self, language: &str) -> bool {
        self.voices.contains_key(language)
    }

    /// Starts synthesising a per-contact text (normalised for speech) sentence by sentence;
    /// `None` without a voice for `language`.
    pub fn stream(&self, language: &str, text: &str) -> Option<TtsStream> {
        let workers = self.workers.get(language)?;
        Some(workers.stream(normalize(text, lang_of(language)), VoiceSettings::default()))
    }

    /// Renders every fixed text of the dialplan in every language we have a voice for.
    pub fn prerender(&self, dialplan: &Dialplan) {
        let started = std::time::Instant::now();
        let (mut rendered, mut failed) = (0usize, 0usize);
        for lang in self.voices.keys() {
            for text in dialplan.fixed_texts(lang) {
                match self.render(lang, &text) {
                    Ok(_) => rendered += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::error!(language = %lang, text = %text, "speech: cannot render: {e}");
                    }
                }
            }
        }
        let (hits, misses) = self.cache.stats();
        tracing::info!(
            texts = rendered,
            failed,
            cache_hits = hits,
            rendered_now = misses,
            ms = started.elapsed().as_millis() as u64,
            "speech: dialplan texts ready"
        );
    }
}
