//! Voiceprints in the shell: the `[voiceprint]` configuration, the [`VoiceprintService`] a call
//! holds (models loaded once, extraction on the blocking pool), and `warmline voiceprint ...`.
//!
//! How voiceprints work, the operating point and measured error rates: docs/voiceprints.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::ivr::caller::VoiceDecision;
use crate::speech::speaker_eval::{self, Channel, EvalReport};
use crate::speech::voiceprint::{
    read_wav, resample, Cohort, Embedding, Enrolment, SpeakerEmbedder, Verdict, Verifier,
    VerifyPolicy, VoiceprintError, VoskEmbedder,
};
use crate::store::voiceprints::{NewVoiceprint, NewWatchlistEntry, VoiceprintSource};
use crate::store::{Store, StoreError};

/// The rate calls deliver and everything is converted to before extraction.
const CALL_RATE: u32 = 8_000;
/// Fewer cohort members than this give noisy normalisation statistics: raw scores are used
/// until enough customers are enrolled.
const MIN_COHORT: usize = 20;

/// `[voiceprint]` in warmline.toml.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceprintConfig {
    /// Check callers' voices in calls (loads the models at start-up: ~300 MB).
    pub enabled: bool,
    /// The Vosk x-vector model (`scripts/setup-voiceprint.sh`).
    pub speaker_model: PathBuf,
    /// The Vosk speech model the x-vector is computed inside (Korean; any Korean model works).
    pub speech_model: PathBuf,
    /// Accept at or above this cosine (raw scores).
    pub threshold: f32,
    /// Accept at or above this normalised score (when `cohort_size` > 0 and enough
    /// voiceprints are enrolled to form a cohort).
    pub normalised_threshold: f32,
    /// Net speech an enrolment needs, in seconds.
    pub min_enrol_speech_s: f32,
    /// Net speech below which a call gets no decision (and no watchlist check).
    pub min_verify_speech_s: f32,
    /// A watchlist entry matches at or above this cosine.
    pub watchlist_threshold: f32,
    /// Keep enrolment audio as WAV files in `audio_dir` (off: only the embedding is kept).
    pub store_audio: bool,
    /// Where kept enrolment audio goes; default `<state_dir>/voiceprints`.
    pub audio_dir: Option<PathBuf>,
    /// Voiceprints not re-enrolled for this many days are deleted by `voiceprint expire`
    /// (and the daemon's daily sweep); 0 keeps them forever.
    pub expiry_days: u32,
    /// Score normalisation (S-norm): how many other customers' voiceprints form the cohort
    /// (0: raw cosine scores). Below 20 enrolled voiceprints raw scores and `threshold` apply.
    pub cohort_size: u32,
    /// AS-norm: the most similar cohort members used per side (0: all, i.e. S-norm).
    pub cohort_top_k: u32,
    /// Voiceprint extractions running at once (each takes one core while it runs).
    pub threads: usize,
    /// Enrol known callers who have no voiceprint yet from what they said in a call (at least
    /// `min_enrol_speech_s` of net speech; never a call whose voice check failed or that
    /// matched the watchlist). Off by default: the bank decides about consent.
    pub enrol_from_calls: bool,
}

impl Default for VoiceprintConfig {
    fn default() -> Self {
        let cache = PathBuf::from(".cache/speech/models");
        VoiceprintConfig {
            enabled: false,
            speaker_model: cache.join("vosk-model-spk-0.4"),
            speech_model: cache.join("vosk-model-small-ko"),
            // Operating points measured on real speakers through G.711: docs/voiceprints.md.
            threshold: 0.5,
            normalised_threshold: 2.5,
            min_enrol_speech_s: 20.0,
            min_verify_speech_s: 3.0,
            watchlist_threshold: 0.65,
            store_audio: false,
            audio_dir: None,
            expiry_days: 730,
            cohort_size: 200,
            cohort_top_k: 0,
            threads: 1,
            enrol_from_calls: false,
        }
    }
}

impl VoiceprintConfig {
    /// Makes relative paths relative to `base` (the configuration file's folder); the lead's
    /// `Config::load` calls this like it resolves `[speech]` paths.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.speaker_model, &mut self.speech_model]
            .into_iter()
            .chain(self.audio_dir.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn policy(&self) -> VerifyPolicy {
        VerifyPolicy {
            threshold: self.threshold,
            min_speech_s: self.min_verify_speech_s,
            cohort_top_k: (self.cohort_size > 0).then_some(self.cohort_top_k as usize),
            normalised_threshold: self.normalised_threshold,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VoiceprintCliError {
    #[error(transparent)]
    Voiceprint(#[from] VoiceprintError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no voiceprint is enrolled for customer {customer}")]
    NotEnrolled { customer: String },
    #[error("{what}: {have:.1} s of net speech, {need:.1} s needed ([voiceprint] min_enrol_speech_s); add more or longer recordings")]
    NotEnoughSpeech { what: String, have: f32, need: f32 },
    #[error("the voiceprint of {customer} was made with {stored}, the loaded model is {current}: re-enrol")]
    ModelMismatch {
        customer: String,
        stored: String,
        current: String,
    },
    #[error("cannot keep enrolment audio in {}: {source}", path.display())]
    Audio {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the evaluation folder {}: {source}", path.display())]
    EvalDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a voiceprint worker failed: {0}")]
    Join(String),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The result of checking a caller against their voiceprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum VerifyOutcome {
    Verdict(Verdict),
    NotEnrolled,
}

impl VerifyOutcome {
    /// What the call flow routes on.
    pub fn voice_decision(&self) -> VoiceDecision {
        use crate::speech::voiceprint::Decision;
        match self {
            VerifyOutcome::NotEnrolled => VoiceDecision::NotEnrolled,
            VerifyOutcome::Verdict(v) => match v.decision {
                Decision::Accept => VoiceDecision::Accepted,
                Decision::Reject => VoiceDecision::Rejected,
                Decision::NotEnoughSpeech => VoiceDecision::NotEnoughSpeech,
            },
        }
    }
}

/// A caller who sounds like a known fraudster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchlistHit {
    pub label: String,
    pub score: f32,
    pub note: Option<String>,
}

/// Voiceprint checks for calls and the CLI: models loaded once, extraction on the blocking
/// pool (at most `threads` at once), never on the async reactor.
#[derive(Clone)]
pub struct VoiceprintService {
    embedder: Arc<dyn SpeakerEmbedder>,
    cfg: VoiceprintConfig,
    verifier: Verifier,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for VoiceprintService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceprintService")
            .field("model", &self.embedder.model_version())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, VoiceprintCliError> {
    r.map_err(|e| VoiceprintCliError::Join(e.to_string()))
}

impl VoiceprintService {
    /// Loads the models (seconds) on the blocking pool.
    pub async fn load(cfg: &VoiceprintConfig) -> Result<VoiceprintService, VoiceprintCliError> {
        let (spk, speech) = (cfg.speaker_model.clone(), cfg.speech_model.clone());
        let embedder =
            joined(tokio::task::spawn_blocking(move || VoskEmbedder::load(&spk, &speech)).await)??;
        Ok(VoiceprintService::with_embedder(
            Arc::new(embedder),
            cfg.clone(),
        ))
    }

    /// A service around any embedder (tests, other models).
    pub fn with_embedder(
        embedder: Arc<dyn SpeakerEmbedder>,
        cfg: VoiceprintConfig,
    ) -> VoiceprintService {
        VoiceprintService {
            verifier: Verifier::new(cfg.policy()),
            slots: Arc::new(Semaphore::new(cfg.threads.max(1))),
            embedder,
            cfg,
        }
    }

    pub fn config(&self) -> &VoiceprintConfig {
        &self.cfg
    }

    pub fn model_version(&self) -> &str {
        self.embedder.model_version()
    }

    /// The embedding of 8 kHz caller audio, computed on the blocking pool.
    pub async fn embed(&self, pcm_8k: Vec<i16>) -> Result<Embedding, VoiceprintCliError> {
        self.embed_at(pcm_8k, CALL_RATE).await
    }

    async fn embed_at(&self, pcm: Vec<i16>, rate: u32) -> Result<Embedding, VoiceprintCliError> {
        // Closed only if the service is dropped, which cannot happen while `self` lives.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| VoiceprintCliError::Join(e.to_string()))?;
        let embedder = self.embedder.clone();
        Ok(joined(
            tokio::task::spawn_blocking(move || embedder.embed(&pcm, rate)).await,
        )??)
    }

    /// Embeds, and treats "no speech at all" as an embedding without speech.
    async fn embed_or_silence(
        &self,
        pcm: Vec<i16>,
        rate: u32,
    ) -> Result<Option<Embedding>, VoiceprintCliError> {
        match self.embed_at(pcm, rate).await {
            Ok(e) => Ok(Some(e)),
            Err(VoiceprintCliError::Voiceprint(VoiceprintError::NoSpeech { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks 8 kHz caller audio against `customer`'s voiceprint.
    pub async fn verify(
        &self,
        store: &Store,
        customer: &str,
        pcm_8k: Vec<i16>,
    ) -> Result<VerifyOutcome, VoiceprintCliError> {
        if store.voiceprint(customer).await?.is_none() {
            return Ok(VerifyOutcome::NotEnrolled);
        }
        match self.embed_or_silence(pcm_8k, CALL_RATE).await? {
            Some(e) => self.verify_embedding(store, customer, &e).await,
            None => Ok(VerifyOutcome::Verdict(self.no_speech_verdict())),
        }
    }

    fn no_speech_verdict(&self) -> Verdict {
        Verdict {
            decision: crate::speech::voiceprint::Decision::NotEnoughSpeech,
            score: None,
            cosine: None,
            threshold: self.cfg.threshold,
            normalised: false,
            speech_s: 0.0,
        }
    }

    /// Checks an embedding already computed (e.g. shared with the watchlist check).
    pub async fn verify_embedding(
        &self,
        store: &Store,
        customer: &str,
        test: &Embedding,
    ) -> Result<VerifyOutcome, VoiceprintCliError> {
        let Some(row) = store.voiceprint(customer).await? else {
            return Ok(VerifyOutcome::NotEnrolled);
        };
        if row.model_version != self.model_version() {
            return Err(VoiceprintCliError::ModelMismatch {
                customer: customer.to_string(),
                stored: row.model_version,
                current: self.model_version().to_string(),
            });
        }
        let Some(enrolled) = Embedding::new(row.embedding, row.speech_ms as f32 / 1000.0) else {
            return Err(VoiceprintCliError::ModelMismatch {
                customer: customer.to_string(),
                stored: "an unusable vector".to_string(),
                current: self.model_version().to_string(),
            });
        };
        let cohort = if self.cfg.cohort_size > 0 {
            let rows = store
                .voiceprint_cohort(
                    self.model_version(),
                    customer,
                    i64::from(self.cfg.cohort_size),
                )
                .await?;
            let cohort = Cohort::new(
                rows.into_iter()
                    .filter_map(|r| Embedding::new(r.embedding, r.speech_ms as f32 / 1000.0))
                    .collect(),
            );
            (cohort.len() >= MIN_COHORT).then_some(cohort)
        } else {
            None
        };
        Ok(VerifyOutcome::Verdict(self.verifier.verify(
            &enrolled,
            test,
            cohort.as_ref(),
        )))
    }

    /// The best watchlist match at or above `watchlist_threshold`, for a call with at least
    /// `min_verify_speech_s` of speech.
    pub async fn check_watchlist(
        &self,
        store: &Store,
        test: &Embedding,
    ) -> Result<Option<WatchlistHit>, VoiceprintCliError> {
        if test.speech_seconds() < self.cfg.min_verify_speech_s {
            return Ok(None);
        }
        let entries = store.watchlist().await?;
        let best = entries
            .into_iter()
            .filter(|e| e.model_version == self.model_version())
            .filter_map(|e| {
                let print = Embedding::new(e.embedding, e.speech_ms as f32 / 1000.0)?;
                Some(WatchlistHit {
                    score: print.cosine(test),
                    label: e.label,
                    note: e.note,
                })
            })
            .filter(|h| h.score >= self.cfg.watchlist_threshold)
            .max_by(|a, b| a.score.total_cmp(&b.score));
        if let Some(hit) = &best {
            tracing::warn!(label = %hit.label, score = hit.score, "caller matches a watchlist voiceprint");
        }
        Ok(best)
    }

    /// Enrols (or re-enrols) `customer` from speech segments collected in a call (8 kHz).
    /// Fails with `NotEnoughSpeech` below `min_enrol_speech_s`.
    pub async fn enroll_from_call(
        &self,
        store: &Store,
        customer: &str,
        segments: Vec<Vec<i16>>,
    ) -> Result<EnrolSummary, VoiceprintCliError> {
        let clips = segments.into_iter().map(|s| (s, CALL_RATE)).collect();
        self.enroll(
            store,
            customer,
            clips,
            VoiceprintSource::Calls,
            "the call's speech",
        )
        .await
    }

    async fn enroll(
        &self,
        store: &Store,
        customer: &str,
        clips: Vec<(Vec<i16>, u32)>,
        source: VoiceprintSource,
        what: &str,
    ) -> Result<EnrolSummary, VoiceprintCliError> {
        let (enrolment, audio) = self.collect(clips).await?;
        let Some(print) = enrolment.finish(self.cfg.min_enrol_speech_s) else {
            return Err(VoiceprintCliError::NotEnoughSpeech {
                what: what.to_string(),
                have: enrolment.speech_seconds(),
                need: self.cfg.min_enrol_speech_s,
            });
        };
        let audio_path = if self.cfg.store_audio {
            Some(self.keep_audio(customer, &audio)?)
        } else {
            None
        };
        let speech_ms = (f64::from(print.speech_s) * 1000.0).round() as i64;
        store
            .save_voiceprint(
                &NewVoiceprint {
                    customer_id: customer.to_string(),
                    model_version: self.model_version().to_string(),
                    embedding: print.embedding.vector().to_vec(),
                    speech_ms,
                    utterances: i64::from(print.utterances),
                    self_similarity: print.self_similarity.map(f64::from),
                    source,
                    audio_path: audio_path.as_ref().map(|p| p.display().to_string()),
                },
                Utc::now(),
            )
            .await?;
        Ok(EnrolSummary {
            customer: customer.to_string(),
            model: self.model_version().to_string(),
            speech_s: print.speech_s,
            utterances: print.utterances,
            self_similarity: print.self_similarity,
            audio_path,
        })
    }

    /// Embeds each clip (skipping clips without speech); the 8 kHz audio is kept for
    /// `store_audio`.
    async fn collect(
        &self,
        clips: Vec<(Vec<i16>, u32)>,
    ) -> Result<(Enrolment, Vec<i16>), VoiceprintCliError> {
        let mut enrolment = Enrolment::new();
        let mut audio = Vec::new();
        for (pcm, rate) in clips {
            if self.cfg.store_audio {
                audio.extend(resample(&pcm, rate, CALL_RATE)?);
            }
            if let Some(e) = self.embed_or_silence(pcm, rate).await? {
                enrolment.add(e);
            }
        }
        Ok((enrolment, audio))
    }

    fn keep_audio(&self, customer: &str, pcm_8k: &[i16]) -> Result<PathBuf, VoiceprintCliError> {
        let dir = self
            .cfg
            .audio_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("state/voiceprints"));
        let fail = |path: &Path, e: std::io::Error| VoiceprintCliError::Audio {
            path: path.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail(&dir, e))?;
        // Customer ids are free text: hex keeps the file name safe.
        let name: String = customer.bytes().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{name}.wav"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: CALL_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let io = |e: hound::Error| match e {
            hound::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        };
        let mut w = hound::WavWriter::create(&path, spec).map_err(|e| fail(&path, io(e)))?;
        for &s in pcm_8k {
            w.write_sample(s).map_err(|e| fail(&path, io(e)))?;
        }
        w.finalize().map_err(|e| fail(&path, io(e)))?;
        Ok(path)
    }
}

fn remove_audio(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not delete kept voiceprint audio");
        }
    }
}

/// What an enrolment stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnrolSummary {
    pub customer: String,
    pub model: String,
    pub speech_s: f32,
    pub utterances: u32,
    pub self_similarity: Option<f32>,
    pub audio_path: Option<PathBuf>,
}

/// `warmline voiceprint ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum VoiceprintCommand {
    /// Enrol (or re-enrol) a customer from WAV recordings of their voice (any rate).
    Enroll {
        customer: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Net speech needed, overriding [voiceprint] min_enrol_speech_s.
        #[arg(long)]
        min_speech_s: Option<f32>,
    },
    /// Check a WAV recording against a customer's voiceprint (and the watchlist).
    Verify {
        customer: String,
        file: PathBuf,
        /// Pass the audio through an 8 kHz G.711 µ-law line first, as a call would.
        #[arg(long)]
        phone: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a customer's voiceprint (right to be forgotten).
    Delete { customer: String },
    /// List enrolled voiceprints.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete voiceprints not re-enrolled within the expiry ([voiceprint] expiry_days).
    Expire {
        /// Days, overriding [voiceprint] expiry_days.
        #[arg(long)]
        days: Option<u32>,
    },
    /// Voiceprints of known fraudsters.
    Watchlist {
        #[command(subcommand)]
        action: WatchlistAction,
    },
    /// Error rates over a folder of <speaker>/<utterance>.wav, with and without a telephone
    /// channel.
    Eval {
        dir: PathBuf,
        /// AS-norm cohort members per side (0: S-norm over the whole cohort).
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// Only this channel (clean or phone); default both.
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WatchlistAction {
    /// Add (or replace) a fraudster's voiceprint from WAV recordings.
    Add {
        label: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        note: Option<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Remove {
        label: String,
    },
    /// Compare a WAV recording with every watchlist entry.
    Check {
        file: PathBuf,
    },
}

async fn open_store(cfg: &Config) -> Result<Store, VoiceprintCliError> {
    Ok(Store::open(&cfg.storage_url()).await?)
}

fn read_clips(files: &[PathBuf]) -> Result<Vec<(Vec<i16>, u32)>, VoiceprintCliError> {
    files
        .iter()
        .map(|f| read_wav(f).map_err(VoiceprintCliError::from))
        .collect()
}

async fn embed_files(
    svc: &VoiceprintService,
    files: &[PathBuf],
    phone: bool,
) -> Result<Option<Embedding>, VoiceprintCliError> {
    let mut parts = Vec::new();
    for (pcm, rate) in read_clips(files)? {
        let (pcm, rate) = if phone {
            speaker_eval::through_channel(&pcm, rate, Channel::G711Ulaw)?
        } else {
            (pcm, rate)
        };
        parts.extend(svc.embed_or_silence(pcm, rate).await?);
    }
    Ok(Embedding::combine(&parts))
}

/// Runs one `warmline voiceprint` command.
pub async fn run(cmd: VoiceprintCommand, cfg: Config) -> Result<(), VoiceprintCliError> {
    let mut vcfg = cfg.voiceprint.clone();
    if vcfg.audio_dir.is_none() {
        vcfg.audio_dir = Some(cfg.paths.state_dir.join("voiceprints"));
    }
    match cmd {
        VoiceprintCommand::Eval {
            dir,
            top_k,
            channel,
            json,
        } => {
            if let Err(source) = std::fs::read_dir(&dir) {
                return Err(VoiceprintCliError::EvalDir { path: dir, source });
            }
            let svc = VoiceprintService::load(&vcfg).await?;
            let channels = match channel.as_deref() {
                Some("clean") => vec![Channel::Clean],
                Some("phone") | Some("g711") => vec![Channel::G711Ulaw],
                _ => vec![Channel::Clean, Channel::G711Ulaw],
            };
            let mut reports: Vec<EvalReport> = Vec::new();
            for ch in channels {
                let (embedder, dir) = (svc.embedder.clone(), dir.clone());
                let report = joined(
                    tokio::task::spawn_blocking(move || {
                        speaker_eval::evaluate(embedder.as_ref(), &dir, ch, top_k)
                    })
                    .await,
                )??;
                if !json {
                    println!("{report}");
                }
                reports.push(report);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(())
        }
        VoiceprintCommand::Enroll {
            customer,
            files,
            min_speech_s,
        } => {
            if let Some(m) = min_speech_s {
                vcfg.min_enrol_speech_s = m;
            }
            let svc = VoiceprintService::load(&vcfg).await?;
            let store = open_store(&cfg).await?;
            let clips = read_clips(&files)?;
            let what = format!("{} file(s)", files.len());
            let out = svc
                .enroll(&store, &customer, clips, VoiceprintSource::Files, &what)
                .await;
            store.close().await;
            let s = out?;
            println!(
                "enrolled {}: {:.1} s of net speech in {} utterance(s), self-similarity {}, model {}",
                s.customer,
                s.speech_s,
                s.utterances,
                s.self_similarity
                    .map_or_else(|| "n/a".to_string(), |x| format!("{x:.3}")),
                s.model
            );
            Ok(())
        }
        VoiceprintCommand::Verify {
            customer,
            file,
            phone,
            json,
        } => {
            let svc = VoiceprintService::load(&vcfg).await?;
            let store = open_store(&cfg).await?;
            let result = async {
                if store.voiceprint(&customer).await?.is_none() {
                    return Err(VoiceprintCliError::NotEnrolled {
                        customer: customer.clone(),
                    });
                }
                let test = embed_files(&svc, std::slice::from_ref(&file), phone).await?;
                let (outcome, hit) = match &test {
                    Some(t) => (
                        svc.verify_embedding(&store, &customer, t).await?,
                        svc.check_watchlist(&store, t).await?,
                    ),
                    None => (VerifyOutcome::Verdict(svc.no_speech_verdict()), None),
                };
                Ok((outcome, hit))
            }
            .await;
            store.close().await;
            let (outcome, hit) = result?;
            if json {
                let v = serde_json::json!({ "customer": customer, "result": outcome, "watchlist": hit });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            match &outcome {
                VerifyOutcome::NotEnrolled => println!("{customer}: not enrolled"),
                VerifyOutcome::Verdict(v) => println!(
                    "{customer}: {} (score {}, threshold {:.3}{}, {:.1} s of speech)",
                    v.decision,
                    v.score
                        .map_or_else(|| "n/a".to_string(), |s| format!("{s:.3}")),
                    v.threshold,
                    if v.normalised {
                        ", cohort-normalised"
                    } else {
                        ""
                    },
                    v.speech_s
                ),
            }
            if let Some(h) = hit {
                println!("watchlist hit: {} (score {:.3})", h.label, h.score);
            }
            Ok(())
        }
        VoiceprintCommand::Delete { customer } => {
            let store = open_store(&cfg).await?;
            let out = forget_voiceprint(&store, &customer).await;
            store.close().await;
            if out? {
                println!("deleted the voiceprint of {customer}");
            } else {
                println!("{customer} had no voiceprint");
            }
            Ok(())
        }
        VoiceprintCommand::List { json } => {
            let store = open_store(&cfg).await?;
            let rows = store.voiceprints().await;
            store.close().await;
            let rows = rows?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<24} {:>8} {:>5} {:>8} {:<6} {:<20} model",
                "customer", "speech", "utts", "selfsim", "source", "enrolled (UTC)"
            );
            for r in rows {
                println!(
                    "{:<24} {:>7.1}s {:>5} {:>8} {:<6} {:<20} {}",
                    r.customer_id,
                    r.speech_ms as f64 / 1000.0,
                    r.utterances,
                    r.self_similarity
                        .map_or_else(|| "n/a".to_string(), |x| format!("{x:.3}")),
                    r.source.as_str(),
                    r.updated_at.format("%Y-%m-%d %H:%M:%S"),
                    r.model_version
                );
            }
            Ok(())
        }
        VoiceprintCommand::Expire { days } => {
            let days = days.unwrap_or(vcfg.expiry_days);
            if days == 0 {
                println!("expiry is off ([voiceprint] expiry_days = 0)");
                return Ok(());
            }
            let store = open_store(&cfg).await?;
            let out = expire_voiceprints(&store, days).await;
            store.close().await;
            let gone = out?;
            println!(
                "deleted {} voiceprint(s) older than {days} days{}",
                gone.len(),
                if gone.is_empty() {
                    String::new()
                } else {
                    format!(": {}", gone.join(", "))
                }
            );
            Ok(())
        }
        VoiceprintCommand::Watchlist { action } => run_watchlist(action, &cfg, &vcfg).await,
    }
}

/// Deletes `customer`'s voiceprint and any kept audio (right to be forgotten); whether there
/// was one. Needs no models.
pub async fn forget_voiceprint(store: &Store, customer: &str) -> Result<bool, VoiceprintCliError> {
    let audio = store.voiceprint(customer).await?.and_then(|r| r.audio_path);
    let deleted = store.delete_voiceprint(customer).await?;
    if let Some(p) = audio {
        remove_audio(Path::new(&p));
    }
    Ok(deleted)
}

/// Deletes voiceprints not re-enrolled within `days` and their kept audio; answers the
/// customers. Needs no models.
pub async fn expire_voiceprints(
    store: &Store,
    days: u32,
) -> Result<Vec<String>, VoiceprintCliError> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
    let gone = store.expire_voiceprints(cutoff).await?;
    for g in &gone {
        if let Some(p) = &g.audio_path {
            remove_audio(Path::new(p));
        }
    }
    Ok(gone.into_iter().map(|g| g.customer_id).collect())
}

async fn run_watchlist(
    action: WatchlistAction,
    cfg: &Config,
    vcfg: &VoiceprintConfig,
) -> Result<(), VoiceprintCliError> {
    match action {
        WatchlistAction::Add { label, files, note } => {
            let svc = VoiceprintService::load(vcfg).await?;
            let (enrolment, _) = svc.collect(read_clips(&files)?).await?;
            // A fraudster's print needs the verification minimum, not the enrolment one: a few
            // recorded fraud calls are all there is.
            let Some(print) = enrolment.finish(vcfg.min_verify_speech_s) else {
                return Err(VoiceprintCliError::NotEnoughSpeech {
                    what: format!("{} file(s)", files.len()),
                    have: enrolment.speech_seconds(),
                    need: vcfg.min_verify_speech_s,
                });
            };
            let store = open_store(cfg).await?;
            let out = store
                .watchlist_add(
                    &NewWatchlistEntry {
                        label: label.clone(),
                        model_version: svc.model_version().to_string(),
                        embedding: print.embedding.vector().to_vec(),
                        speech_ms: (f64::from(print.speech_s) * 1000.0).round() as i64,
                        utterances: i64::from(print.utterances),
                        note,
                    },
                    Utc::now(),
                )
                .await;
            store.close().await;
            out?;
            println!(
                "watchlist: added {label} ({:.1} s of net speech in {} utterance(s))",
                print.speech_s, print.utterances
            );
            Ok(())
        }
        WatchlistAction::List { json } => {
            let store = open_store(cfg).await?;
            let rows = store.watchlist().await;
            store.close().await;
            let rows = rows?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in rows {
                println!(
                    "{:<24} {:>7.1}s {:<20} {}",
                    r.label,
                    r.speech_ms as f64 / 1000.0,
                    r.created_at.format("%Y-%m-%d %H:%M:%S"),
                    r.note.unwrap_or_default()
                );
            }
            Ok(())
        }
        WatchlistAction::Remove { label } => {
            let store = open_store(cfg).await?;
            let out = store.watchlist_remove(&label).await;
            store.close().await;
            if out? {
                println!("watchlist: removed {label}");
            } else {
                println!("watchlist: no entry {label}");
            }
            Ok(())
        }
        WatchlistAction::Check { file } => {
            let svc = VoiceprintService::load(vcfg).await?;
            let test = embed_files(&svc, std::slice::from_ref(&file), false).await?;
            let store = open_store(cfg).await?;
            let hit = match &test {
                Some(t) => svc.check_watchlist(&store, t).await,
                None => Ok(None),
            };
            store.close().await;
            match hit? {
                Some(h) => println!("watchlist hit: {} (score {:.3})", h.label, h.score),
                None => println!("no watchlist match"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic embedder: the "voice" is the sign pattern of the first samples, the
    /// speech is the audio length (so tests control both without models).
    struct FakeEmbedder;

    impl SpeakerEmbedder for FakeEmbedder {
        fn model_version(&self) -> &str {
            "fake-1"
        }
        fn embed(&self, pcm: &[i16], rate: u32) -> Result<Embedding, VoiceprintError> {
            let seconds = pcm.len() as f32 / rate as f32;
            let v: Vec<f32> = pcm.iter().take(4).map(|&s| f32::from(s)).collect();
            Embedding::new(v, seconds).ok_or(VoiceprintError::NoSpeech { seconds })
        }
    }

    fn voice(a: i16, b: i16, seconds: usize) -> Vec<i16> {
        let mut pcm = vec![0i16; seconds * 8_000];
        pcm[0] = a;
        pcm[1] = b;
        pcm[2] = 1;
        pcm[3] = 1;
        pcm
    }

    fn svc(cfg: VoiceprintConfig) -> VoiceprintService {
        VoiceprintService::with_embedder(Arc::new(FakeEmbedder), cfg)
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!(
            "sqlite://{}/state/warmline.db",
            dir.path().display()
        ))
        .await
        .expect("store")
    }

    #[tokio::test]
    async fn enrol_verify_watchlist_and_forget_through_the_service() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir).await;
        let s = svc(VoiceprintConfig {
            threshold: 0.9,
            min_enrol_speech_s: 20.0,
            min_verify_speech_s: 3.0,
            watchlist_threshold: 0.9,
            ..VoiceprintConfig::default()
        });
        // 12 s is not enough to enrol; 24 s is.
        let short = s
            .enroll_from_call(&store, "c1", vec![voice(100, 0, 12)])
            .await;
        assert!(
            matches!(short, Err(VoiceprintCliError::NotEnoughSpeech { need, .. }) if need == 20.0),
            "{short:?}"
        );
        let ok = s
            .enroll_from_call(&store, "c1", vec![voice(100, 0, 12), voice(100, 5, 12)])
            .await
            .expect("enrolled");
        assert_eq!(ok.utterances, 2);
        assert!(ok.self_similarity.is_some_and(|x| x > 0.99));
        assert!(ok.audio_path.is_none());

        let same = s
            .verify(&store, "c1", voice(100, 2, 5))
            .await
            .expect("verify");
        assert_eq!(same.voice_decision(), VoiceDecision::Accepted, "{same:?}");
        let other = s
            .verify(&store, "c1", voice(0, 100, 5))
            .await
            .expect("verify");
        assert_eq!(other.voice_decision(), VoiceDecision::Rejected, "{other:?}");
        let brief = s
            .verify(&store, "c1", voice(100, 2, 2))
            .await
            .expect("verify");
        assert_eq!(brief.voice_decision(), VoiceDecision::NotEnoughSpeech);
        let silent = s
            .verify(&store, "c1", vec![0; 40_000])
            .await
            .expect("verify");
        assert_eq!(silent.voice_decision(), VoiceDecision::NotEnoughSpeech);
        let nobody = s
            .verify(&store, "c2", voice(100, 2, 5))
            .await
            .expect("verify");
        assert_eq!(nobody.voice_decision(), VoiceDecision::NotEnrolled);

        store
            .watchlist_add(
                &NewWatchlistEntry {
                    label: "fraud-1".into(),
                    model_version: "fake-1".into(),
                    embedding: vec![0.0, 100.0, 1.0, 1.0],
                    speech_ms: 10_000,
                    utterances: 1,
                    note: None,
                },
                Utc::now(),
            )
            .await
            .expect("watchlist");
        let fraud = s.embed(voice(0, 100, 5)).await.expect("embed");
        let hit = s.check_watchlist(&store, &fraud).await.expect("check");
        assert_eq!(hit.map(|h| h.label), Some("fraud-1".to_string()));
        let customer = s.embed(voice(100, 0, 5)).await.expect("embed");
        assert_eq!(
            s.check_watchlist(&store, &customer).await.expect("check"),
            None
        );
        let brief = s.embed(voice(0, 100, 2)).await.expect("embed");
        assert_eq!(
            s.check_watchlist(&store, &brief).await.expect("check"),
            None
        );

        assert!(forget_voiceprint(&store, "c1").await.expect("forget"));
        assert!(!forget_voiceprint(&store, "c1").await.expect("again"));
        store.close().await;
    }

    #[tokio::test]
    async fn kept_audio_is_written_and_deleted_with_the_voiceprint() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir).await;
        let s = svc(VoiceprintConfig {
            store_audio: true,
            audio_dir: Some(dir.path().join("prints")),
            min_enrol_speech_s: 5.0,
            ..VoiceprintConfig::default()
        });
        let out = s
            .enroll_from_call(&store, "a/b", vec![voice(1, 2, 6)])
            .await
            .expect("enrol");
        let path = out.audio_path.expect("kept");
        assert_eq!(path, dir.path().join("prints/612f62.wav"));
        let (pcm, rate) = read_wav(&path).expect("wav");
        assert_eq!((pcm.len(), rate), (48_000, 8_000));
        assert!(forget_voiceprint(&store, "a/b").await.expect("forget"));
        assert!(!path.exists());
        store.close().await;
    }

    #[tokio::test]
    async fn a_voiceprint_of_another_model_is_not_compared() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir).await;
        store
            .save_voiceprint(
                &NewVoiceprint {
                    customer_id: "c1".into(),
                    model_version: "older-model".into(),
                    embedding: vec![1.0, 0.0, 0.0, 0.0],
                    speech_ms: 30_000,
                    utterances: 3,
                    self_similarity: None,
                    source: VoiceprintSource::Files,
                    audio_path: None,
                },
                Utc::now(),
            )
            .await
            .expect("save");
        let s = svc(VoiceprintConfig::default());
        let r = s.verify(&store, "c1", voice(1, 0, 5)).await;
        assert!(
            matches!(r, Err(VoiceprintCliError::ModelMismatch { .. })),
            "{r:?}"
        );
        store.close().await;
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let mut c = VoiceprintConfig {
            audio_dir: Some(PathBuf::from("prints")),
            ..VoiceprintConfig::default()
        };
        c.speech_model = PathBuf::from("/abs/ko");
        c.resolve(Path::new("/etc/warmline"));
        assert_eq!(
            c.speaker_model,
            PathBuf::from("/etc/warmline/.cache/speech/models/vosk-model-spk-0.4")
        );
        assert_eq!(c.speech_model, PathBuf::from("/abs/ko"));
        assert_eq!(c.audio_dir, Some(PathBuf::from("/etc/warmline/prints")));
        let parsed: VoiceprintConfig =
            toml::from_str("threshold = 0.6\nmin_enrol_speech_s = 30\n").expect("toml");
        assert_eq!((parsed.threshold, parsed.min_enrol_speech_s), (0.6, 30.0));
        assert!(toml::from_str::<VoiceprintConfig>("thresold = 0.6").is_err());
    }
}
