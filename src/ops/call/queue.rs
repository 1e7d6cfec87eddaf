//! The part of an inbound call that waits for a person: queueing in the ACD with hold music
//! and position announcements, the bridge to the agent (whisper, both directions, DTMF),
//! the stereo recording, and the voicemail a closed queue can take.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ivr::dialplan::UnavailableReason;
use crate::ivr::flow::{FlowEvent, PromptItem};
use crate::media::bridge::{Bridge, BridgeConfig, HoldLoop, Side};
use crate::media::codec::FRAME_SAMPLES;
use crate::media::prompt::Player;
use crate::media::recorder::Recorder;
use crate::routing::acd::Unavailable;

use super::super::acd::{AcdRequest, QueueEvent};
use super::super::agent_leg::{AgentLeg, OfferInfo};
use super::{BridgeMedia, BridgedAgent, Call, Ending};

type Frame = [i16; FRAME_SAMPLES];

/// The call's time in the ACD.
pub(super) struct Queued {
    pub(super) id: u64,
    pub(super) queue: String,
    pub(super) since: Instant,
    pub(super) agent: Option<AgentLeg>,
    /// What the agent hears before connecting (and gets in a header).
    pub(super) whisper: String,
}

/// A voicemail being recorded: caller audio goes to a writer thread until `until`.
pub(super) struct Voicemail {
    pub(super) frames: std::sync::mpsc::SyncSender<Frame>,
    pub(super) until: Instant,
    pub(super) path: PathBuf,
}

/// Frames a recorder thread may fall behind by before frames are dropped (10 s).
const RECORD_BACKLOG: usize = 500;

impl Call {
    /// `FlowAction::Queue`: into the ACD with hold music, or straight back to the flow when no
    /// queue of that name has agents configured.
    pub(super) async fn enter_queue(
        &mut self,
        queue: String,
        priority: i32,
        reasons: Vec<String>,
        whisper: String,
    ) -> Option<Ending> {
        let Some(acd) = self.ctx.acd.clone().filter(|a| a.has_queue(&queue)) else {
            tracing::warn!(call_id = %self.call_id, queue = %queue, "queue has no agents configured");
            return self.queue_unavailable(UnavailableReason::NoAgents).await;
        };
        let music = self.hold_music(&queue);
        self.media.lock().bridge = Some(BridgeMedia {
            engine: Bridge::new(HoldLoop::new(music), BridgeConfig::default()),
            agent: None,
            record: None,
        });
        let id = u64::try_from(self.cdr_id).unwrap_or_default();
        self.queued = Some(Queued {
            id,
            queue: queue.clone(),
            since: Instant::now(),
            agent: None,
            whisper: whisper.clone(),
        });
        tracing::info!(call_id = %self.call_id, queue = %queue, priority, reasons = %reasons.join(","), whisper = %whisper, "call: queued");
        let sent = acd.send(AcdRequest::Enqueue {
            call: id,
            queue: queue.clone(),
            priority,
            info: OfferInfo {
                call_id: self.call_id.clone(),
                caller_number: self.caller.clone(),
                whisper,
                queue,
            },
            events: self.queue_tx.clone(),
        });
        if !sent {
            return self.queue_unavailable(UnavailableReason::NoAgents).await;
        }
        None
    }

    /// Hold music of the queue (its `music` prompt), else a ringback cadence.
    fn hold_music(&self, queue: &str) -> Arc<[i16]> {
        self.ctx
            .acd
            .as_ref()
            .and_then(|a| a.music(queue))
            .and_then(|name| self.ctx.prompts.get(&name))
            .unwrap_or_else(|| {
                crate::media::tone::ringback(crate::media::tone::Ringback::default()).into()
            })
    }

    pub(super) async fn on_queue_event(&mut self, ev: QueueEvent) -> Option<Ending> {
        match ev {
            QueueEvent::Position { position, est_wait } => {
                let mut text = format!("You are number {position} in the queue.");
                if let Some(w) = est_wait {
                    let minutes = w.as_secs().div_ceil(60).max(1);
                    let unit = if minutes == 1 { "minute" } else { "minutes" };
                    text.push_str(&format!(" The expected wait is about {minutes} {unit}."));
                }
                tracing::info!(call_id = %self.call_id, position, "call: queue position");
                let clip = self.clip_for(&PromptItem::Text(text)).await;
                if let Some(b) = self.media.lock().bridge.as_mut() {
                    b.engine
                        .hold_mut()
                        .set_announcement(clip.into_iter().collect());
                }
                None
            }
            QueueEvent::Moved { queue } => {
                tracing::info!(call_id = %self.call_id, queue = %queue, "call: moved to overflow queue");
                if let Some(q) = self.queued.as_mut() {
                    q.queue = queue;
                }
                None
            }
            QueueEvent::Unavailable(reason) => {
                let reason = match reason {
                    Unavailable::AfterHours => UnavailableReason::AfterHours,
                    Unavailable::Overflow => UnavailableReason::Overflow,
                    Unavailable::NoAgents => UnavailableReason::NoAgents,
                };
                self.leave_bridge();
                self.queued = None;
                self.queue_unavailable(reason).await
            }
            QueueEvent::Connected(leg) => self.connect_agent(leg).await,
            QueueEvent::AgentDtmf(digit) => {
                if let Some(b) = self.media.lock().bridge.as_mut() {
                    b.engine.dtmf(Side::Agent, digit);
                }
                None
            }
            QueueEvent::AgentLeft => {
                let agent = self
                    .queued
                    .as_ref()
                    .and_then(|q| q.agent.as_ref())
                    .map(|a| a.agent.clone())
                    .unwrap_or_default();
                tracing::info!(call_id = %self.call_id, agent = %agent, "call: agent hung up");
                self.end_bridge();
                let _ = self.flow.handle(FlowEvent::Hangup, Instant::now());
                self.hangup();
                Some(Ending {
                    cause: "agent-bye".into(),
                    side: "agent",
                })
            }
        }
    }

    async fn queue_unavailable(&mut self, reason: UnavailableReason) -> Option<Ending> {
        let actions = self
            .flow
            .handle(FlowEvent::QueueUnavailable { reason }, Instant::now());
        Box::pin(self.apply(actions)).await
    }

    /// The agent answered: whisper to the agent, then both hear each other; recorded when
    /// configured.
    async fn connect_agent(&mut self, mut leg: AgentLeg) -> Option<Ending> {
        let Some((waited, whisper_text)) = self
            .queued
            .as_ref()
            .map(|q| (q.since.elapsed(), q.whisper.clone()))
        else {
            // Not waiting any more: the leg drops and hangs up.
            return None;
        };
        let whisper = if whisper_text.is_empty() {
            None
        } else {
            self.clip_for(&PromptItem::Text(whisper_text.clone()))
                .await
                .map(|c| Player::new(vec![c]))
        };
        let record = self.start_recording();
        {
            // The agent's own clock entry stops sending; the caller's bridge sends for both.
            leg.media.lock().bridged = true;
            let mut st = self.media.lock();
            if let Some(b) = st.bridge.as_mut() {
                b.agent = Some(BridgedAgent {
                    media: leg.media.clone(),
                    rtp: leg.rtp.clone(),
                });
                b.record = record;
                b.engine.agent_answered(whisper);
            }
        }
        // Watch the leg: its keys and its end come back as queue events.
        if let (Some(mut ended), Some(mut dtmf)) = (leg.ended.take(), leg.dtmf.take()) {
            let tx = self.queue_tx.clone();
            tokio::spawn(async move {
                let mut keys_open = true;
                loop {
                    if *ended.borrow() {
                        break;
                    }
                    tokio::select! {
                        d = dtmf.recv(), if keys_open => match d {
                            Some(d) => { let _ = tx.send(QueueEvent::AgentDtmf(d)); }
                            None => keys_open = false,
                        },
                        r = ended.changed() => if r.is_err() { break },
                    }
                }
                let _ = tx.send(QueueEvent::AgentLeft);
            });
        }
        let agent = leg.agent.clone();
        tracing::info!(call_id = %self.call_id, agent = %agent, leg = %leg.call_id,
            waited_ms = waited.as_millis() as u64, whisper = %whisper_text, "call: connected to agent");
        if let Some(q) = self.queued.as_mut() {
            q.agent = Some(leg);
        }
        self.waited = Some(waited);
        let actions = self
            .flow
            .handle(FlowEvent::Connected { agent }, Instant::now());
        Box::pin(self.apply(actions)).await
    }

    /// Starts the stereo recording of the bridged call on its own thread, if configured.
    fn start_recording(
        &mut self,
    ) -> Option<std::sync::mpsc::SyncSender<(Option<Frame>, Option<Frame>)>> {
        let cfg = &self.ctx.recording;
        if !cfg.enabled {
            return None;
        }
        let today = chrono::Utc::now().date_naive();
        let mut rec = match Recorder::create_for_call(
            &cfg.dir,
            &self.call_id,
            today,
            cfg.checkpoint(),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "call: recording not started");
                return None;
            }
        };
        self.recording = Some(rec.path().to_path_buf());
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<(Option<Frame>, Option<Frame>)>(RECORD_BACKLOG);
        let call_id = self.call_id.clone();
        let spawned = std::thread::Builder::new()
            .name("warmline-record".into())
            .spawn(move || {
                while let Ok((caller, agent)) = rx.recv() {
                    if let Err(e) = rec.write(caller.as_ref(), agent.as_ref()) {
                        tracing::error!(call_id = %call_id, error = %e, "call: recording stopped");
                        break;
                    }
                }
                match rec.finish() {
                    Ok(p) => tracing::info!(call_id = %call_id, path = %p.display(), "call: recording saved"),
                    Err(e) => tracing::error!(call_id = %call_id, error = %e, "call: recording not finished"),
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "call: no recording thread");
                self.recording = None;
                None
            }
        }
    }

    /// Back from the ACD to the IVR's own playback (queue unavailable).
    fn leave_bridge(&mut self) {
        self.media.lock().bridge = None;
    }

    /// The call leaves the ACD for good (either side hung up): the agent leg is hung up, the
    /// recording closed and the ACD told.
    pub(super) fn end_bridge(&mut self) {
        let bridge = self.media.lock().bridge.take();
        drop(bridge); // closes the recorder channel: the thread finishes the file
        if let Some(q) = self.queued.take() {
            if let Some(acd) = &self.ctx.acd {
                let req = if q.agent.is_some() {
                    AcdRequest::Ended { call: q.id }
                } else {
                    AcdRequest::Leave { call: q.id }
                };
                acd.send(req);
            }
            if let Some(leg) = q.agent {
                leg.media.lock().bridged = false;
                leg.hangup();
            }
        }
    }

    /// A key from the caller while bridged goes to the agent; `true` when it was taken.
    pub(super) fn bridge_dtmf(&mut self, digit: char) -> bool {
        // Only a connected bridge takes keys; while queued they still reach the flow.
        self.media
            .lock()
            .bridge
            .as_mut()
            .is_some_and(|b| b.engine.dtmf(Side::Caller, digit))
    }

    /// `FlowAction::RecordVoicemail`: the caller's audio goes to a mono WAV until `max`.
    pub(super) fn start_voicemail(&mut self, queue: &str, max: Duration) -> Option<Ending> {
        let dir = self.ctx.recording.dir.join("voicemail");
        let today = chrono::Utc::now().date_naive();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        // A unique name: a repeated (or crafted) Call-ID never overwrites a message.
        let created = crate::media::recorder::create_unique(&dir, &self.call_id, today)
            .map_err(|e| e.to_string())
            .and_then(|(path, file)| {
                hound::WavWriter::new(std::io::BufWriter::new(file), spec)
                    .map(|w| (path, w))
                    .map_err(|e| e.to_string())
            });
        let (path, mut writer) = match created {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(call_id = %self.call_id, dir = %dir.display(), error = %e, "voicemail not recorded");
                self.voicemail_failed = true;
                return None;
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Frame>(RECORD_BACKLOG);
        let call_id = self.call_id.clone();
        let p = path.clone();
        let _ = std::thread::Builder::new()
            .name("warmline-voicemail".into())
            .spawn(move || {
                while let Ok(f) = rx.recv() {
                    for s in f {
                        if writer.write_sample(s).is_err() {
                            return;
                        }
                    }
                }
                match writer.finalize() {
                    Ok(()) => tracing::info!(call_id = %call_id, path = %p.display(), "call: voicemail saved"),
                    Err(e) => tracing::error!(call_id = %call_id, error = %e, "call: voicemail not finished"),
                }
            });
        tracing::info!(call_id = %self.call_id, queue = %queue, max_s = max.as_secs(), "call: recording voicemail");
        self.recording = Some(path.clone());
        self.voicemail = Some(Voicemail {
            frames: tx,
            until: Instant::now() + max,
            path,
        });
        self.media.lock().audio = Some(self.audio_tx.clone());
        None
    }

    /// One frame of caller audio while a voicemail records; ends it at its limit.
    pub(super) async fn voicemail_frame(&mut self, frame: &Frame) -> Option<Ending> {
        let done = match &self.voicemail {
            Some(v) => v.frames.try_send(*frame).is_err() || Instant::now() >= v.until,
            None => return None,
        };
        if done {
            return self.finish_voicemail().await;
        }
        None
    }

    pub(super) async fn finish_voicemail(&mut self) -> Option<Ending> {
        let v = self.voicemail.take()?;
        drop(v.frames);
        if self.listening.is_none() {
            self.media.lock().audio = None;
        }
        tracing::info!(call_id = %self.call_id, path = %v.path.display(), "call: voicemail ended");
        let actions = self.flow.handle(FlowEvent::VoicemailDone, Instant::now());
        Box::pin(self.apply(actions)).await
    }
}
