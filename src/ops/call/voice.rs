//! The caller's voice as a credential: net speech collected from the call's speech turns, the
//! `verify_voice` step, and the fraud-watchlist check that runs once a call has enough speech.
//! Extraction runs on the voiceprint service's blocking pool; results come back to the call
//! task as flow events.
use std::time::{Duration, Instant};

use crate::ivr::caller::VoiceDecision;
use crate::ivr::flow::FlowEvent;
use crate::media::codec::FRAME_SAMPLES;
use crate::speech::vad::{Vad, VadConfig};

use super::{Call, Ending, Listening, PREROLL_FRAMES};

/// Caller speech kept for voiceprints: one minute is more than any check uses.
const MAX_SPEECH_SAMPLES: usize = 60 * 8000;
/// How long the shell listens for the passphrase before checking what it has.
const PASSPHRASE_WAIT: Duration = Duration::from_secs(12);
/// Silence that ends the passphrase.
const PASSPHRASE_END_SILENCE: Duration = Duration::from_millis(900);

/// The endpointer counts every frame of an utterance; the speaker model counts only what it
/// decoded as speech, about half of that on conversational audio (measured). Checks wait for
/// this many endpointer seconds per second of net speech they need.
const ENDPOINTER_PER_NET_SPEECH: f32 = 2.0;
/// Watchlist checks per call: again as more speech arrives, until one has enough net speech.
const MAX_WATCHLIST_CHECKS: u8 = 3;

/// The fraud-watchlist checks of one call.
#[derive(Default)]
pub(super) struct WatchlistChecks {
    done: u8,
    /// Endpointer seconds of speech at which the next check runs.
    next_at_s: f32,
    /// Set by a check that had enough net speech (hit or not): no more checks.
    settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A `verify_voice` step waiting for the caller to speak.
pub(super) struct PendingCheck {
    pub(super) customer: String,
    pub(super) until: Instant,
}

impl Call {
    pub(super) fn voiceprints_on(&self) -> bool {
        self.ctx.voiceprints.is_some()
    }

    /// Speech of a turn (frames after the endpointer's start of speech), kept for voiceprints.
    pub(super) fn keep_speech(&mut self, frame: &[i16; FRAME_SAMPLES]) {
        if self.voiceprints_on() && self.speech_pcm.len() < MAX_SPEECH_SAMPLES {
            self.speech_pcm.extend_from_slice(frame);
        }
    }

    fn speech_seconds(&self) -> f32 {
        self.speech_pcm.len() as f32 / 8000.0
    }

    fn min_speech(&self) -> f32 {
        self.ctx
            .voiceprints
            .as_ref()
            .map(|v| v.config().min_verify_speech_s)
            .unwrap_or(3.0)
    }

    /// `FlowAction::VerifyVoice`: check now with what the caller said, or listen for the
    /// passphrase the flow just played and check then.
    pub(super) async fn verify_voice(
        &mut self,
        customer: String,
        ask_phrase: bool,
    ) -> Option<Ending> {
        if self.ctx.voiceprints.is_none() {
            tracing::info!(call_id = %self.call_id, "voiceprint: not configured; caller treated as not enrolled");
            return self
                .voice_result(VoiceDecision::NotEnrolled, None, Instant::now())
                .await;
        }
        if !ask_phrase && self.speech_seconds() >= self.min_speech() {
            self.start_verification(customer);
            return None;
        }
        // A speech turn of our own: the endpointer only, nothing goes to the menu.
        self.stop_listening();
        self.turn += 1;
        let cfg = VadConfig {
            end_silence: PASSPHRASE_END_SILENCE,
            no_input: Duration::from_secs(3600),
            ..VadConfig::default()
        };
        self.listening = Some(Listening {
            turn: self.turn,
            vad: Vad::new(cfg, Instant::now()),
            asr: None,
            preroll: std::collections::VecDeque::with_capacity(PREROLL_FRAMES),
            speaking: false,
            language: self.flow.language().to_string(),
            capture_only: true,
        });
        self.media.lock().audio = Some(self.audio_tx.clone());
        self.pending_check = Some(PendingCheck {
            customer,
            until: Instant::now() + PASSPHRASE_WAIT,
        });
        None
    }

    /// The endpointer ended an utterance in a capture-only turn (or its time ran out).
    pub(super) fn capture_ended(&mut self) {
        let enough = self.speech_seconds() >= self.min_speech() * ENDPOINTER_PER_NET_SPEECH;
        let late = self
            .pending_check
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.until);
        if let Some(p) = self.pending_check.take_if(|_| enough || late) {
            self.stop_listening();
            self.start_verification(p.customer);
        }
        self.maybe_check_watchlist();
    }

    /// Runs the check off the call task; the decision comes back as a flow event.
    fn start_verification(&mut self, customer: String) {
        let Some(service) = self.ctx.voiceprints.clone() else {
            return;
        };
        let (store, pcm, tx, call_id) = (
            self.ctx.store.clone(),
            self.speech_pcm.clone(),
            self.flow_tx.clone(),
            self.call_id.clone(),
        );
        let speech_s = self.speech_seconds();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let event = match service.verify(&store, &customer, pcm).await {
                Ok(outcome) => {
                    let decision = outcome.voice_decision();
                    let score = match &outcome {
                        super::super::voiceprint::VerifyOutcome::Verdict(v) => v.score,
                        super::super::voiceprint::VerifyOutcome::NotEnrolled => None,
                    };
                    tracing::info!(call_id = %call_id, customer = %customer, decision = ?decision,
                        score = ?score, speech_s, took_ms = t0.elapsed().as_millis() as u64, "voiceprint: checked");
                    FlowEvent::VoiceVerified { decision, score }
                }
                Err(e) => {
                    tracing::error!(call_id = %call_id, customer = %customer, error = %e, "voiceprint: check failed");
                    FlowEvent::VoiceVerified {
                        decision: VoiceDecision::NotEnoughSpeech,
                        score: None,
                    }
                }
            };
            let _ = tx.send(event);
        });
    }

    /// Once per call, with enough speech: compare the caller against the fraud watchlist.
    pub(super) fn maybe_check_watchlist(&mut self) {
        let settled = self
            .watchlist
            .settled
            .load(std::sync::atomic::Ordering::Acquire);
        let min_vad_s = self.min_speech() * ENDPOINTER_PER_NET_SPEECH;
        let due = self.watchlist.next_at_s.max(min_vad_s);
        if settled || self.watchlist.done >= MAX_WATCHLIST_CHECKS || self.speech_seconds() < due {
            return;
        }
        let Some(service) = self.ctx.voiceprints.clone() else {
            return;
        };
        self.watchlist.done += 1;
        self.watchlist.next_at_s = self.speech_seconds() + min_vad_s;
        let settled = self.watchlist.settled.clone();
        let min_net = self.min_speech();
        let (store, pcm, tx, call_id) = (
            self.ctx.store.clone(),
            self.speech_pcm.clone(),
            self.flow_tx.clone(),
            self.call_id.clone(),
        );
        tokio::spawn(async move {
            let embedding = match service.embed(pcm).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(call_id = %call_id, error = %e, "voiceprint: no watchlist check");
                    return;
                }
            };
            if embedding.speech_seconds() < min_net {
                // Checked again once the caller has said more.
                tracing::debug!(call_id = %call_id, net_speech_s = embedding.speech_seconds(),
                    "voiceprint: not enough net speech for the watchlist yet");
                return;
            }
            settled.store(true, std::sync::atomic::Ordering::Release);
            match service.check_watchlist(&store, &embedding).await {
                Ok(Some(hit)) => {
                    super::WATCHLIST_HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(call_id = %call_id, entry = %hit.label, score = hit.score, "voiceprint: WATCHLIST MATCH");
                    let _ = tx.send(FlowEvent::WatchlistHit {
                        entry: hit.label,
                        score: hit.score,
                    });
                }
                Ok(None) => {
                    tracing::debug!(call_id = %call_id, "voiceprint: no watchlist match")
                }
                Err(e) => {
                    tracing::error!(call_id = %call_id, error = %e, "voiceprint: watchlist check failed")
                }
            }
        });
    }

    /// At the end of a call: enrol a known caller without a voiceprint from this call's speech,
    /// when configured. Runs in the background; the CDR does not wait for it.
    pub(super) fn maybe_enrol(&self) {
        let Some(service) = self.ctx.voiceprints.clone() else {
            return;
        };
        let cfg = service.config();
        let rec = self.flow.record();
        let Some(customer) = rec.caller.customer_id.clone() else {
            return;
        };
        let doubtful = !rec.watchlist.is_empty()
            || rec
                .voice
                .is_some_and(|v| v.decision == VoiceDecision::Rejected);
        if !cfg.enrol_from_calls
            || doubtful
            || self.speech_seconds() < cfg.min_enrol_speech_s * ENDPOINTER_PER_NET_SPEECH
        {
            return;
        }
        let (store, pcm, call_id) = (
            self.ctx.store.clone(),
            self.speech_pcm.clone(),
            self.call_id.clone(),
        );
        tokio::spawn(async move {
            match store.voiceprint(&customer).await {
                Ok(Some(_)) => return,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(call_id = %call_id, error = %e, "voiceprint: cannot read the store");
                    return;
                }
            }
            match service.enroll_from_call(&store, &customer, vec![pcm]).await {
                Ok(s) => tracing::info!(call_id = %call_id, customer = %customer,
                    speech_s = s.speech_s, "voiceprint: enrolled from the call"),
                Err(e) => tracing::info!(call_id = %call_id, customer = %customer,
                    "voiceprint: not enrolled from the call: {e}"),
            }
        });
    }

    async fn voice_result(
        &mut self,
        decision: VoiceDecision,
        score: Option<f32>,
        now: Instant,
    ) -> Option<Ending> {
        let actions = self
            .flow
            .handle(FlowEvent::VoiceVerified { decision, score }, now);
        Box::pin(self.apply(actions)).await
    }

    /// The passphrase turn's time limit, checked on every caller frame.
    pub(super) fn check_passphrase_deadline(&mut self) {
        if self
            .pending_check
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.until)
        {
            self.capture_ended();
        }
    }
}
