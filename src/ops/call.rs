//! One inbound call: negotiates media, runs the RTP clock, feeds the IVR flow and writes the CDR.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::ivr::dialplan::Dialplan;
use crate::ivr::flow::{CallFlow, FlowAction, FlowEvent, Outcome, PromptItem};
use crate::media::codec::CodecKind;
use crate::media::prompt::{Player, PromptStore};
use crate::media::session::{MediaConfig, MediaEvent, MediaSession};
use crate::media::srtp::{CryptoAttribute, SrtpPolicy};
use crate::sip::endpoint::{CallHandle, EndCause, IncomingCall};
use crate::sip::sdp::{self, Direction};
use crate::speech::asr::{AsrError, AsrStream, Transcript};
use crate::speech::vad::{Vad, VadConfig, VadEvent};
use crate::store::{CdrEnd, CdrStart, Store};

use super::acd::{AcdHandle, QueueEvent};
use super::ports::{self, MediaSocket, PortAllocator};
use super::transport::{CallEvent, SipCommand};

mod queue;
mod voice;

/// Stands for "no deadline" on a timer.
const FAR_AWAY: Duration = Duration::from_secs(3600);

/// Calls whose caller matched a fraud-watchlist voiceprint.
pub static WATCHLIST_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What every call shares.
pub struct CallContext {
    pub store: Store,
    pub prompts: Arc<PromptStore>,
    pub dialplan: std::sync::RwLock<Arc<Dialplan>>,
    pub ports: PortAllocator,
    pub media_ip: std::net::IpAddr,
    /// Our SIP address, for the From of outbound calls.
    pub public_addr: SocketAddr,
    pub codecs: Vec<CodecKind>,
    pub jitter: Duration,
    /// `[rtp] srtp`: when calls use SDES-keyed SRTP.
    pub srtp: SrtpPolicy,
    /// Ring this long before answering (0: answer at once).
    pub answer_after: Duration,
    pub active: std::sync::atomic::AtomicUsize,
    /// Sends every call's RTP on the 20 ms clock.
    pub media_clock: MediaClock,
    /// Recognisers and voices for speech menus.
    pub speech: Arc<super::speech::Speech>,
    /// Agent queues; `None` when no agents are configured (queue actions take the dialplan's
    /// no-agents fallback).
    pub acd: Option<AcdHandle>,
    /// Call recordings and voicemail.
    pub recording: crate::media::recorder::RecordingConfig,
    /// Who is calling (customer source); `None` when none is configured.
    pub customers: Option<Arc<super::customers::Customers>>,
    /// Voiceprint checks; `None` when `[voiceprint] enabled = false`.
    pub voiceprints: Option<Arc<super::voiceprint::VoiceprintService>>,
}

/// The length of one media frame: the RTP clock of every call.
const FRAME: Duration = Duration::from_millis(20);

/// The 20 ms media clock for all calls: a few OS threads ("shards"), each sending the next frame
/// of every call it serves once per 20 ms slot with a non-blocking `try_send_to`.
///
/// One tokio task and timer per call cost a timer registration, a task wake-up and a `select!`
/// per call every 20 ms (100,000 a second at 2,000 calls), and a frame waited behind whatever
/// else was queued on that worker. A shard thread sleeps until its slot and the kernel wakes a
/// sleeping thread promptly even when the tokio workers are busy with signalling and storage.
/// The sans-IO `MediaSession`/`Player` are unchanged; they are shared with the call task behind
/// a mutex that neither side holds across an await.
pub struct MediaClock {
    shards: Vec<std::sync::mpsc::Sender<ClockEntry>>,
    next: AtomicUsize,
}

impl MediaClock {
    /// Starts `threads` shard threads (at least one). They end once the clock is dropped and
    /// their calls are over.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let mut shards = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("warmline-media-{i}"))
                .spawn(move || shard_thread(rx))?;
            shards.push(tx);
        }
        Ok(Self {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    pub(super) fn register(&self, entry: ClockEntry) {
        let n = self.shards.len().max(1);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(tx) = self.shards.get(i) {
            let _ = tx.send(entry);
        }
    }
}

/// One call on a shard.
pub(super) struct ClockEntry {
    pub(super) media: Arc<CallMedia>,
    pub(super) rtp: Arc<MediaSocket>,
    pub(super) rtcp: Arc<MediaSocket>,
}

/// A call's media state, shared by its call task (RTP in, re-INVITE, flow actions) and its
/// shard (RTP out every 20 ms).
#[derive(Default)]
pub(super) struct CallMedia {
    pub(super) state: Mutex<MediaState>,
    /// Wakes the call task when a playback ended on the shard.
    pub(super) finished: tokio::sync::Notify,
    /// Set when the call is over: the shard drops the call at its next slot.
    pub(super) ended: AtomicBool,
}

#[derive(Default)]
pub(super) struct MediaState {
    pub(super) media: Option<MediaSession>,
    pub(super) player: Option<(u64, Player)>,
    /// Playbacks that ran out on the shard, for the call task to report to the flow.
    pub(super) finished: Vec<u64>,
    /// Where the far end's decoded audio goes (answering-machine detection); dropped when `None`.
    pub(super) audio: Option<mpsc::UnboundedSender<[i16; crate::media::codec::FRAME_SAMPLES]>>,
    /// A caller waiting for or talking to an agent: the bridge sends this call's frames (and
    /// the agent's) instead of the player.
    pub(super) bridge: Option<BridgeMedia>,
    /// An agent leg whose frames the caller's bridge sends: its own entry only keeps RTCP.
    pub(super) bridged: bool,
    /// The `a=crypto:` lines (our keys) of the last offer we made, for reading its answer.
    pub(super) offered_crypto: Vec<CryptoAttribute>,
}

/// The bridge of a caller's call, ticked on the caller's shard.
pub(super) struct BridgeMedia {
    pub(super) engine: crate::media::bridge::Bridge,
    pub(super) agent: Option<BridgedAgent>,
    /// Both directions of each tick, to the recording thread.
    pub(super) record: Option<std::sync::mpsc::SyncSender<RecordTick>>,
}

pub(super) type RecordTick = (
    Option<[i16; crate::media::codec::FRAME_SAMPLES]>,
    Option<[i16; crate::media::codec::FRAME_SAMPLES]>,
);

pub(super) struct BridgedAgent {
    pub(super) media: Arc<CallMedia>,
    pub(super) rtp: Arc<MediaSocket>,
}

impl CallMedia {
    pub(super) fn lock(&self) -> MutexGuard<'_, MediaState> {
        // A panic elsewhere must not silence every later frame of this call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Our SDP offer on this call (outbound INVITE, late offer, re-offer): RTP/SAVP with fresh
/// keys when `[rtp] srtp = "required"`, else plain RTP. The keys are kept in the media state
/// for reading the answer.
pub(super) fn local_offer(
    ctx: &CallContext,
    media: &CallMedia,
    local_port: u16,
    session_id: u64,
    version: u64,
) -> String {
    let crypto = sdp::offer_crypto(ctx.srtp);
    let offer = sdp::build_secure_offer(
        ctx.media_ip,
        local_port,
        &ctx.codecs,
        &crypto,
        session_id,
        version,
    );
    media.lock().offered_crypto = crypto;
    offer
}

/// Why an SDP was refused, for the CDR's hang-up cause.
pub(super) fn refusal_cause(e: &sdp::SdpError) -> &'static str {
    use sdp::SdpError as E;
    match e {
        E::NoCommonCodec { .. } => "no-common-codec",
        E::SrtpDisabled(_) | E::SrtpRequired(_) | E::NoUsableCrypto { .. } | E::CryptoAnswer(_) => {
            "srtp-mismatch"
        }
        _ => "bad-sdp",
    }
}

/// The far end's SDP answer on a call we placed (a reminder call, an agent leg): creates the
/// media session on the first answer, updates it on a later one (183 then 200), and puts the
/// call on the media clock once. `what` prefixes the log lines ("outbound", "acd").
pub(super) fn apply_sdp_answer(
    ctx: &CallContext,
    media: &Arc<CallMedia>,
    on_clock: &mut bool,
    answer: &[u8],
    sockets: (&Arc<MediaSocket>, &Arc<MediaSocket>),
    call_id: &str,
    what: &str,
) {
    let offered = media.lock().offered_crypto.clone();
    let role = sdp::SrtpRole::Answered {
        policy: ctx.srtp,
        offered: &offered,
    };
    let neg = match sdp::parse_remote(answer)
        .and_then(|r| sdp::negotiate_secure(&r, &ctx.codecs, role))
        .map_err(|e| e.to_string())
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(call_id = %call_id, error = %e, "{what}: unusable SDP answer");
            return;
        }
    };
    if let Some(k) = &neg.srtp {
        tracing::info!(call_id = %call_id, suite = %k.suite, "{what}: SRTP");
    }
    let cfg = MediaConfig {
        codec: neg.codec,
        payload_type: neg.payload_type,
        telephone_event_pt: neg.telephone_event_pt,
        remote_rtp: neg.remote_rtp,
        remote_rtcp: neg.remote_rtcp,
        symmetric: true,
        jitter_depth: ctx.jitter,
        srtp: neg.srtp.clone(),
    };
    let mut st = media.lock();
    let ok = match st.media.as_mut() {
        Some(m) => m.update(cfg).is_ok(),
        None => match MediaSession::new(cfg, rand::random(), Instant::now()) {
            Ok(m) => {
                st.media = Some(m);
                true
            }
            Err(e) => {
                tracing::error!(call_id = %call_id, error = %e, "{what}: media setup failed");
                false
            }
        },
    };
    drop(st);
    if ok && !*on_clock {
        *on_clock = true;
        ctx.media_clock.register(ClockEntry {
            media: media.clone(),
            rtp: sockets.0.clone(),
            rtcp: sockets.1.clone(),
        });
    }
}

/// Frame counts of one shard slot, added to the process counters once per slot.
#[derive(Default)]
struct SlotStats {
    frames: u64,
    late_10ms: u64,
    late_20ms: u64,
    max_us: u64,
}

impl SlotStats {
    fn record(&mut self, lateness: Duration) {
        let us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        self.frames += 1;
        if us > 10_000 {
            self.late_10ms += 1;
        }
        if us > 20_000 {
            self.late_20ms += 1;
        }
        self.max_us = self.max_us.max(us);
    }
}

/// Sub-slots per 20 ms frame. Each call is served in one of them, so a shard's calls are spread
/// over the frame (as independent per-call clocks would be) instead of all being sent in one
/// burst, which made the last calls of a big shard a whole burst late.
const PHASES: usize = 10;

fn shard_thread(rx: std::sync::mpsc::Receiver<ClockEntry>) {
    use std::sync::mpsc::TryRecvError;
    let phase_len = FRAME / PHASES as u32;
    let mut phases: Vec<Vec<ClockEntry>> = (0..PHASES).map(|_| Vec::new()).collect();
    let mut calls = 0usize;
    let mut phase = 0usize;
    let mut slot = Instant::now();
    let add = |phases: &mut Vec<Vec<ClockEntry>>, e: ClockEntry| {
        // The emptiest phase keeps the work per sub-slot even.
        if let Some(p) = phases.iter_mut().min_by_key(|p| p.len()) {
            p.push(e);
        }
    };
    loop {
        if calls == 0 {
            // Idle: block until a call arrives instead of ticking for nobody.
            match rx.recv() {
                Ok(e) => add(&mut phases, e),
                Err(_) => return,
            }
            slot = Instant::now();
        }
        loop {
            match rx.try_recv() {
                Ok(e) => add(&mut phases, e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if calls == 0 => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let mut stats = SlotStats::default();
        if let Some(due) = phases.get_mut(phase) {
            due.retain(|e| {
                if e.media.ended.load(Ordering::Acquire) {
                    return false;
                }
                e.tick(slot, &mut stats);
                true
            });
        }
        calls = phases.iter().map(Vec::len).sum();
        super::metrics::record_slot(stats.frames, stats.late_10ms, stats.late_20ms, stats.max_us);
        // Behind schedule (a stall longer than a sub-slot): the next sub-slots run back to back,
        // so every call still sends one frame per 20 ms of elapsed time, like a burst interval.
        phase = (phase + 1) % PHASES;
        slot += phase_len;
        let now = Instant::now();
        if slot > now {
            std::thread::sleep(slot - now);
        }
    }
}

impl ClockEntry {
    /// One 20 ms slot: play the next frame (or silence) and keep RTCP going.
    fn tick(&self, slot: Instant, stats: &mut SlotStats) {
        let mut guard = self.media.lock();
        let st = &mut *guard;
        let now = Instant::now();
        if st.bridged || st.bridge.is_some() {
            self.tick_bridged(st, now);
            stats.record(now.saturating_duration_since(slot));
            return;
        }
        let mut finished = None;
        let frame = match st.player.as_mut() {
            Some((id, p)) => match p.next_frame() {
                Some(f) => Some(f),
                None => {
                    finished = Some(*id);
                    None
                }
            },
            None => None,
        };
        if let Some(m) = st.media.as_mut() {
            if let Some((pkt, dest)) = m.send_frame(frame.as_ref(), now) {
                // Non-blocking: a full socket buffer drops this frame rather than stall the clock.
                let _ = self.rtp.get_ref().send_to(pkt, dest);
            }
            // The far end's audio is drained every tick, to whoever listens (AMD).
            while let Some(frame) = m.pop_audio(now) {
                if let Some(tx) = &st.audio {
                    if tx.send(frame).is_err() {
                        st.audio = None;
                    }
                }
            }
            if let Some((pkt, dest)) = m.poll_rtcp(now) {
                let _ = self.rtcp.get_ref().send_to(&pkt, dest);
            }
        }
        stats.record(now.saturating_duration_since(slot));
        if let Some(id) = finished {
            st.player = None;
            st.finished.push(id);
            drop(guard);
            self.media.finished.notify_one();
        }
    }
}

impl ClockEntry {
    /// A slot of a bridged call: the caller's entry sends both legs' frames (one tick for
    /// both, so they never drift apart); the agent's own entry only keeps its RTCP going.
    fn tick_bridged(&self, st: &mut MediaState, now: Instant) {
        let MediaState { media, bridge, .. } = st;
        let Some(m) = media.as_mut() else { return };
        if let Some(b) = bridge.as_mut() {
            let BridgeMedia {
                engine,
                agent,
                record,
            } = b;
            let mut agent_state = agent.as_ref().map(|a| a.media.lock());
            let agent_session = agent_state.as_deref_mut().and_then(|a| a.media.as_mut());
            let t = engine.tick(m, agent_session, now);
            if let Some((pkt, dest)) = t.to_caller {
                let _ = self.rtp.get_ref().send_to(pkt, dest);
            }
            if let (Some((pkt, dest)), Some(a)) = (t.to_agent, agent.as_ref()) {
                let _ = a.rtp.get_ref().send_to(pkt, dest);
            }
            if t.phase == crate::media::bridge::Phase::Connected || t.connected {
                if let Some(tx) = record.as_ref() {
                    // A recorder that falls 10 s behind loses frames, never the call's audio.
                    let _ = tx.try_send((t.caller_said, t.agent_said));
                }
            }
        }
        if let Some((pkt, dest)) = m.poll_rtcp(now) {
            let _ = self.rtcp.get_ref().send_to(&pkt, dest);
        }
    }
}

/// Why and by whom a call ended, for the CDR.
struct Ending {
    cause: String,
    side: &'static str,
}

pub async fn run_call(
    ctx: Arc<CallContext>,
    inc: IncomingCall,
    mut events: mpsc::UnboundedReceiver<CallEvent>,
    sip: mpsc::UnboundedSender<SipCommand>,
) {
    let call = inc.call;
    let started = chrono::Utc::now();
    let dialplan = match ctx.dialplan.read() {
        Ok(d) => d.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let cdr_id = match ctx
        .store
        .cdr_start(&CdrStart {
            call_id: inc.call_id.clone(),
            direction: "inbound".into(),
            from_uri: inc.from_uri.clone(),
            to_uri: inc.to_uri.clone(),
            caller_number: inc.from_user.clone(),
            remote_addr: inc.source.to_string(),
            transport: format!("{:?}", inc.transport).to_lowercase(),
            dialplan: Some(dialplan.name().to_string()),
            started_at: started,
        })
        .await
    {
        Ok(id) => id,
        Err(e) => {
            // Without a CDR we would lose track of the call: refuse it instead.
            tracing::error!(call_id = %inc.call_id, error = %e, "cannot write CDR; refusing call");
            let _ = sip.send(SipCommand::Reject(call, 503));
            return;
        }
    };
    tracing::info!(call_id = %inc.call_id, from = %inc.from_uri, to = %inc.to_uri, src = %inc.source, "call: incoming");

    let (audio_tx, mut audio_rx) = mpsc::unbounded_channel();
    let (transcript_tx, mut transcript_rx) = mpsc::unbounded_channel();
    let (queue_tx, mut queue_rx) = mpsc::unbounded_channel();
    let (flow_tx, mut flow_rx) = mpsc::unbounded_channel();
    let mut c = Call {
        ctx: ctx.clone(),
        call,
        cdr_id,
        call_id: inc.call_id.clone(),
        caller: inc.from_user.clone(),
        sip,
        flow: CallFlow::new(dialplan),
        media: Arc::default(),
        codec: None,
        answered_at: None,
        sdp_version: 1,
        session_id: rand::random::<u32>() as u64,
        local_port: 0,
        hangup_sent: false,
        listening: None,
        turn: 0,
        audio_tx,
        transcript_tx,
        queue_tx,
        queued: None,
        waited: None,
        recording: None,
        voicemail: None,
        voicemail_failed: false,
        flow_tx,
        speech_pcm: Vec::new(),
        pending_check: None,
        watchlist: Default::default(),
    };
    c.look_up_caller().await;
    let ending = c
        .run(
            inc,
            &mut events,
            &mut audio_rx,
            &mut transcript_rx,
            &mut queue_rx,
            &mut flow_rx,
        )
        .await;
    c.end_bridge();
    c.maybe_enrol();
    if c.voicemail.is_some() {
        // The caller hung up while recording: the message is kept.
        let _ = c.finish_voicemail().await;
    }
    c.media.ended.store(true, Ordering::Release);
    let rec = c.flow.record();
    let outcome = match (&rec.outcome, c.answered_at) {
        (_, None) if ending.cause == "no-common-codec" || ending.cause == "srtp-mismatch" => {
            "rejected".to_string()
        }
        (_, None) => "abandoned".to_string(),
        (Outcome::InProgress, _) => "abandoned".to_string(),
        (o, _) => outcome_name(o),
    };
    let stats = c.media.lock().media.as_ref().map(|m| {
        let s = m.stats();
        super::metrics::add_rtp_received(s.packets_received);
        super::metrics::add_rtp_lost(s.packets_lost);
        if s.srtp_suite.is_some() {
            super::metrics::add_srtp_call(s.srtp_auth_failures, s.srtp_replays);
        }
        serde_json::json!({
            "sent": s.packets_sent, "received": s.packets_received, "lost": s.packets_lost,
            "late": s.packets_late, "duplicates": s.duplicates, "jitter_ms": s.jitter_ms,
            "srtp": s.srtp_suite.map(|k| k.sdp_name()),
            "srtp_auth_failures": s.srtp_auth_failures, "srtp_replays": s.srtp_replays,
        })
        .to_string()
    });
    let end = CdrEnd {
        ended_at: chrono::Utc::now(),
        answered_at: c.answered_at,
        path: rec.path.clone(),
        digits: rec.digits.clone(),
        outcome: outcome.clone(),
        hangup_cause: ending.cause.clone(),
        hangup_side: ending.side.to_string(),
        codec: c.codec.map(|k| k.encoding_name().to_string()),
        rtp_stats: stats,
        transcripts: (!rec.transcripts.is_empty()).then(|| {
            serde_json::Value::Array(
                rec.transcripts
                    .iter()
                    .map(|t| {
                        serde_json::json!({"menu": t.menu, "text": t.text,
                            "confidence": t.confidence, "matched": t.matched, "score": t.score})
                    })
                    .collect(),
            )
            .to_string()
        }),
        customer_id: rec.caller.customer_id.clone(),
        routing: c.routing_json(),
        recording: c.recording.as_ref().map(|p| p.display().to_string()),
    };
    super::metrics::record_call_end("inbound", &outcome);
    if let Err(e) = ctx.store.cdr_end(cdr_id, &end).await {
        tracing::error!(call_id = %c.call_id, error = %e, "cannot finish CDR");
    }
    tracing::info!(call_id = %c.call_id, outcome = %outcome, cause = %ending.cause, side = ending.side,
        path = %rec.path.join(">"), digits = %rec.digits, "call: ended");
}

fn outcome_name(o: &Outcome) -> String {
    match o {
        // A call torn down mid-flow was abandoned by whoever hung up.
        Outcome::InProgress => "abandoned".into(),
        o => o.name().into(),
    }
}

struct Call {
    ctx: Arc<CallContext>,
    call: CallHandle,
    cdr_id: i64,
    call_id: String,
    caller: Option<String>,
    sip: mpsc::UnboundedSender<SipCommand>,
    flow: CallFlow,
    media: Arc<CallMedia>,
    codec: Option<CodecKind>,
    answered_at: Option<chrono::DateTime<chrono::Utc>>,
    sdp_version: u64,
    session_id: u64,
    local_port: u16,
    hangup_sent: bool,
    /// The speech turn the flow opened, if any.
    listening: Option<Listening>,
    /// Numbers the turns, so a transcript of a closed turn is dropped.
    turn: u64,
    audio_tx: mpsc::UnboundedSender<[i16; crate::media::codec::FRAME_SAMPLES]>,
    transcript_tx: mpsc::UnboundedSender<(u64, Result<Transcript, AsrError>)>,
    /// What the ACD (and the connected agent leg's watcher) tell this call.
    queue_tx: mpsc::UnboundedSender<QueueEvent>,
    /// In the ACD: waiting, or talking to an agent.
    queued: Option<queue::Queued>,
    /// How long the caller waited for the agent who took the call.
    waited: Option<Duration>,
    /// The call's recording (bridged call or voicemail), for the CDR.
    recording: Option<std::path::PathBuf>,
    voicemail: Option<queue::Voicemail>,
    voicemail_failed: bool,
    /// Flow events computed off the call task (voiceprint decisions, watchlist hits).
    flow_tx: mpsc::UnboundedSender<FlowEvent>,
    /// The caller's net speech (8 kHz), for voiceprints.
    speech_pcm: Vec<i16>,
    pending_check: Option<voice::PendingCheck>,
    watchlist: voice::WatchlistChecks,
}

/// Caller audio before the voice activity detector declared speech: fed to the recogniser at
/// the start so the first syllable is not lost.
const PREROLL_FRAMES: usize = 15;

/// One speech turn: the endpointer and, once speech started, the recogniser.
struct Listening {
    turn: u64,
    vad: Vad,
    asr: Option<AsrStream>,
    preroll: std::collections::VecDeque<[i16; crate::media::codec::FRAME_SAMPLES]>,
    speaking: bool,
    language: String,
    /// Only collect the caller's speech (voiceprints); nothing goes to the menu.
    capture_only: bool,
}

impl Call {
    async fn run(
        &mut self,
        inc: IncomingCall,
        events: &mut mpsc::UnboundedReceiver<CallEvent>,
        audio: &mut mpsc::UnboundedReceiver<[i16; crate::media::codec::FRAME_SAMPLES]>,
        transcripts: &mut mpsc::UnboundedReceiver<(u64, Result<Transcript, AsrError>)>,
        queue_events: &mut mpsc::UnboundedReceiver<QueueEvent>,
        flow_events: &mut mpsc::UnboundedReceiver<FlowEvent>,
    ) -> Ending {
        let (rtp, rtcp) = match self.ctx.ports.bind_pair() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "refusing call");
                let _ = self.sip.send(SipCommand::Reject(self.call, 503));
                return Ending {
                    cause: "no-rtp-port".into(),
                    side: "warmline",
                };
            }
        };
        self.local_port = rtp.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
        let (rtp, rtcp) = (Arc::new(rtp), Arc::new(rtcp));

        // Offer in the INVITE: answer it now. No offer (late offer): we offer in the 200 OK and
        // the caller answers in the ACK.
        let local_sdp = match &inc.remote_sdp {
            Some(offer) => match self.negotiate(offer) {
                Ok((neg, answer)) => {
                    if let Err(e) = self.start_media(&neg) {
                        tracing::error!(call_id = %self.call_id, error = %e, "media setup failed");
                        let _ = self.sip.send(SipCommand::Reject(self.call, 500));
                        return Ending {
                            cause: "media-error".into(),
                            side: "warmline",
                        };
                    }
                    answer
                }
                Err(e) => {
                    let _ = self.sip.send(SipCommand::Reject(self.call, e.status()));
                    return Ending {
                        cause: refusal_cause(&e).into(),
                        side: "warmline",
                    };
                }
            },
            None => local_offer(
                &self.ctx,
                &self.media,
                self.local_port,
                self.session_id,
                self.sdp_version,
            ),
        };
        if !self.ctx.answer_after.is_zero() {
            let _ = self.sip.send(SipCommand::Ring(self.call));
            let ring = tokio::time::sleep(self.ctx.answer_after);
            tokio::pin!(ring);
            loop {
                tokio::select! {
                    _ = &mut ring => break,
                    ev = events.recv() => match ev {
                        Some(CallEvent::Ended { cause }) => {
                            let _ = self.flow.handle(FlowEvent::Hangup, Instant::now());
                            let cause = if matches!(cause, EndCause::Cancelled) { "cancel" } else { "ended-while-ringing" };
                            return Ending { cause: cause.into(), side: "caller" };
                        }
                        Some(CallEvent::Shutdown) | None => {
                            let _ = self.sip.send(SipCommand::Reject(self.call, 503));
                            return Ending { cause: "shutdown".into(), side: "warmline" };
                        }
                        Some(other) => tracing::debug!(call_id = %self.call_id, event = ?other, "ignored while ringing"),
                    },
                }
            }
        }
        let _ = self
            .sip
            .send(SipCommand::Answer(self.call, local_sdp.into_bytes()));

        self.ctx.media_clock.register(ClockEntry {
            media: self.media.clone(),
            rtp: rtp.clone(),
            rtcp: rtcp.clone(),
        });
        let media = self.media.clone();
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        let mut confirmed = false;
        // One timer for the flow's deadline, re-armed only when the deadline moves: creating a
        // fresh `sleep_until` on every pass through the loop registered a timer per media tick.
        let mut armed = self.flow.poll_timeout();
        let flow_timer = tokio::time::sleep_until(timer_instant(armed));
        tokio::pin!(flow_timer);
        loop {
            let wanted = self.flow.poll_timeout();
            if wanted != armed {
                armed = wanted;
                flow_timer.as_mut().reset(timer_instant(armed));
            }
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return Ending { cause: "signalling-gone".into(), side: "warmline" };
                    };
                    match ev {
                        CallEvent::Confirmed { remote_sdp } => {
                            if self.media.lock().media.is_none() {
                                let Some(answer) = remote_sdp else {
                                    self.hangup();
                                    return Ending { cause: "no-sdp-in-ack".into(), side: "warmline" };
                                };
                                let offered = self.media.lock().offered_crypto.clone();
                                let role = sdp::SrtpRole::Answered { policy: self.ctx.srtp, offered: &offered };
                                match sdp::parse_remote(&answer).and_then(|r| {
                                    sdp::negotiate_secure(&r, &self.ctx.codecs, role)
                                }) {
                                    Ok(neg) => {
                                        if self.start_media(&neg).is_err() {
                                            self.hangup();
                                            return Ending { cause: "media-error".into(), side: "warmline" };
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(call_id = %self.call_id, error = %e, "unusable SDP answer in ACK");
                                        self.hangup();
                                        return Ending { cause: refusal_cause(&e).into(), side: "warmline" };
                                    }
                                }
                            }
                            if !confirmed {
                                confirmed = true;
                                tracing::info!(call_id = %self.call_id, "call: answered");
                                // Written now (in the background: the greeting must not wait for
                                // a commit) so a call interrupted by a crash still shows it was
                                // answered; `cdr_end` carries the same time.
                                let t = chrono::Utc::now();
                                self.answered_at = Some(t);
                                let (store, id, call_id) = (self.ctx.store.clone(), self.cdr_id, self.call_id.clone());
                                tokio::spawn(async move {
                                    if let Err(e) = store.cdr_answered(id, t).await {
                                        tracing::error!(call_id = %call_id, error = %e, "cannot write answer time");
                                    }
                                });
                                let actions = self.flow.handle(FlowEvent::Answered, Instant::now());
                                if let Some(e) = self.apply(actions).await { return e; }
                            }
                        }
                        CallEvent::ReInvite { remote_sdp } => self.reinvite(remote_sdp),
                        CallEvent::Dtmf { digit } => {
                            tracing::info!(call_id = %self.call_id, digit = %digit, via = "info", "call: dtmf");
                            if self.bridge_dtmf(digit) { continue; }
                            let actions = self.flow.handle(FlowEvent::Digit(digit), Instant::now());
                            if let Some(e) = self.apply(actions).await { return e; }
                        }
                        CallEvent::Ended { cause } => {
                            let _ = self.flow.handle(FlowEvent::Hangup, Instant::now());
                            return match cause {
                                EndCause::RemoteBye => Ending { cause: "bye".into(), side: "caller" },
                                EndCause::Cancelled => Ending { cause: "cancel".into(), side: "caller" },
                                EndCause::AckTimeout => Ending { cause: "ack-timeout".into(), side: "network" },
                                EndCause::LocalByeDone => Ending { cause: "bye".into(), side: "warmline" },
                            };
                        }
                        CallEvent::Shutdown => {
                            let _ = self.flow.handle(FlowEvent::Hangup, Instant::now());
                            self.hangup();
                            return Ending { cause: "shutdown".into(), side: "warmline" };
                        }
                        CallEvent::TransferEnded { ok, status, reason } => {
                            if ok {
                                tracing::info!(call_id = %self.call_id, "call: transfer accepted; leaving the call");
                                self.hangup();
                                return Ending { cause: "transferred".into(), side: "warmline" };
                            }
                            tracing::warn!(call_id = %self.call_id, status, reason = %reason, "call: transfer failed; ending the call");
                            self.hangup();
                            return Ending { cause: format!("transfer-failed:{status}"), side: "warmline" };
                        }
                        // Only outbound calls get these.
                        CallEvent::Progress { .. } | CallEvent::Answered { .. } | CallEvent::Failed { .. } => {}
                    }
                }
                Some(frame) = audio.recv() => {
                    if self.voicemail.is_some() {
                        if let Some(e) = self.voicemail_frame(&frame).await { return e; }
                    }
                    if let Some(e) = self.on_caller_audio(&frame).await { return e; }
                }
                Some(ev) = queue_events.recv() => {
                    if let Some(e) = self.on_queue_event(ev).await { return e; }
                }
                Some(ev) = flow_events.recv() => {
                    let actions = self.flow.handle(ev, Instant::now());
                    if let Some(e) = self.apply(actions).await { return e; }
                }
                Some((turn, result)) = transcripts.recv() => {
                    if let Some(e) = self.on_transcript(turn, result).await { return e; }
                }
                _ = media.finished.notified() => {
                    let done = std::mem::take(&mut self.media.lock().finished);
                    for playback in done {
                        let actions = self.flow.handle(FlowEvent::PlaybackFinished { playback }, Instant::now());
                        if let Some(e) = self.apply(actions).await { return e; }
                    }
                }
                r = ports::recv_from(&rtp, &mut rtp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(e) = self.on_rtp(rtp_buf.get(..n).unwrap_or_default(), from).await { return e; }
                    }
                }
                r = ports::recv_from(&rtcp, &mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(m) = self.media.lock().media.as_mut() {
                            m.handle_rtcp(rtcp_buf.get(..n).unwrap_or_default(), from, Instant::now());
                        }
                    }
                }
                _ = &mut flow_timer => {
                    // Re-armed at the top of the loop from the flow's next deadline (an hour
                    // away when it has none), so a fired timer never fires again in a spin.
                    armed = None;
                    flow_timer.as_mut().reset(timer_instant(None));
                    let actions = self.flow.handle_timeout(Instant::now());
                    if let Some(e) = self.apply(actions).await { return e; }
                }
            }
        }
    }

    /// Parses and negotiates an offer; returns our answer, or why it is refused
    /// (`SdpError::status` is the SIP status).
    fn negotiate(&mut self, offer: &[u8]) -> Result<(sdp::Negotiated, String), sdp::SdpError> {
        // A re-INVITE keeps our key when the suite stays.
        let keep = self
            .media
            .lock()
            .media
            .as_ref()
            .and_then(|m| m.config().srtp.as_ref().map(|k| k.local.clone()));
        let role = sdp::SrtpRole::Answering {
            policy: self.ctx.srtp,
            keep: keep.as_ref(),
        };
        let neg = sdp::parse_remote(offer)
            .and_then(|remote| sdp::negotiate_secure(&remote, &self.ctx.codecs, role))
            .map_err(|e| {
                tracing::warn!(call_id = %self.call_id, error = %e, status = e.status(), "refusing SDP offer");
                e
            })?;
        if let Some(k) = &neg.srtp {
            tracing::info!(call_id = %self.call_id, suite = %k.suite, tag = k.tag, "call: SRTP");
        }
        let answer = sdp::build_answer(
            self.ctx.media_ip,
            self.local_port,
            &neg,
            self.session_id,
            self.sdp_version,
        );
        Ok((neg, answer))
    }

    fn media_config(&self, neg: &sdp::Negotiated) -> MediaConfig {
        MediaConfig {
            codec: neg.codec,
            payload_type: neg.payload_type,
            telephone_event_pt: neg.telephone_event_pt,
            remote_rtp: neg.remote_rtp,
            remote_rtcp: neg.remote_rtcp,
            symmetric: true,
            jitter_depth: self.ctx.jitter,
            srtp: neg.srtp.clone(),
        }
    }

    fn start_media(
        &mut self,
        neg: &sdp::Negotiated,
    ) -> Result<(), crate::media::error::MediaError> {
        let mut m = MediaSession::new(self.media_config(neg), rand::random(), Instant::now())?;
        m.set_sending(sends(neg.remote_direction));
        self.codec = Some(neg.codec);
        self.media.lock().media = Some(m);
        Ok(())
    }

    fn reinvite(&mut self, remote_sdp: Option<Vec<u8>>) {
        self.sdp_version += 1;
        let Some(offer) = remote_sdp else {
            // A re-INVITE without SDP asks us to offer again; an SRTP call re-offers the
            // keys it uses (the answer in the ACK is not applied, so nothing may change).
            let current = self
                .media
                .lock()
                .media
                .as_ref()
                .and_then(|m| m.config().srtp.as_ref().map(|k| k.local_attribute()));
            let offer = match current {
                Some(line) => sdp::build_secure_offer(
                    self.ctx.media_ip,
                    self.local_port,
                    &self.ctx.codecs,
                    &[line],
                    self.session_id,
                    self.sdp_version,
                ),
                None => local_offer(
                    &self.ctx,
                    &self.media,
                    self.local_port,
                    self.session_id,
                    self.sdp_version,
                ),
            };
            let _ = self
                .sip
                .send(SipCommand::AnswerReinvite(self.call, offer.into_bytes()));
            return;
        };
        match self.negotiate(&offer) {
            Ok((neg, answer)) => {
                let cfg = self.media_config(&neg);
                let updated = self.media.lock().media.as_mut().map(|m| {
                    m.update(cfg)
                        .map(|_| m.set_sending(sends(neg.remote_direction)))
                });
                let applied = match updated {
                    Some(r) => r,
                    None => self.start_media(&neg),
                };
                if applied.is_ok() {
                    self.codec = Some(neg.codec);
                    tracing::info!(call_id = %self.call_id, direction = ?neg.remote_direction, "call: re-invite");
                    let _ = self
                        .sip
                        .send(SipCommand::AnswerReinvite(self.call, answer.into_bytes()));
                } else {
                    let _ = self.sip.send(SipCommand::RejectReinvite(self.call, 488));
                }
            }
            Err(e) => {
                let _ = self
                    .sip
                    .send(SipCommand::RejectReinvite(self.call, e.status()));
            }
        }
    }

    async fn on_rtp(&mut self, data: &[u8], from: SocketAddr) -> Option<Ending> {
        let now = Instant::now();
        let mut digits = Vec::new();
        {
            let mut st = self.media.lock();
            let m = st.media.as_mut()?;
            m.handle_rtp(data, from, now);
            while let Some(ev) = m.poll_event() {
                match ev {
                    MediaEvent::Dtmf { digit } => digits.push(digit),
                    MediaEvent::RemoteAddressLearned(a) => {
                        tracing::debug!(call_id = %self.call_id, addr = %a, "rtp: symmetric address learned")
                    }
                }
            }
        }
        for digit in digits {
            tracing::info!(call_id = %self.call_id, digit = %digit, via = "rfc4733", "call: dtmf");
            if self.bridge_dtmf(digit) {
                continue;
            }
            if self.voicemail.is_some() && digit == '#' {
                // '#' ends a voicemail, as on every voicemail system.
                if let Some(e) = self.finish_voicemail().await {
                    return Some(e);
                }
                continue;
            }
            let actions = self.flow.handle(FlowEvent::Digit(digit), now);
            if let Some(e) = self.apply(actions).await {
                return Some(e);
            }
        }
        None
    }

    /// Carries out what the flow decided, in order. Returns how the call ends when it does.
    async fn apply(&mut self, actions: Vec<FlowAction>) -> Option<Ending> {
        for a in actions {
            match a {
                FlowAction::Play {
                    playback, prompts, ..
                } => {
                    let mut clips = Vec::with_capacity(prompts.len());
                    for p in &prompts {
                        if let Some(clip) = self.clip_for(p).await {
                            clips.push(clip);
                        }
                    }
                    self.media.lock().player = Some((playback, Player::new(clips)));
                }
                FlowAction::StopPlayback => self.media.lock().player = None,
                FlowAction::Listen {
                    grammar,
                    language,
                    end_silence,
                } => self.listen(grammar, language, end_silence),
                FlowAction::StopListening => self.stop_listening(),
                FlowAction::OptOut => {
                    // The caller is told "you will not be called again" right after this: commit first.
                    let number = self.caller.clone().unwrap_or_default();
                    match self
                        .ctx
                        .store
                        .opt_out(
                            &number,
                            "inbound-menu",
                            Some(&self.call_id),
                            chrono::Utc::now(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(call_id = %self.call_id, number = %number, "call: opt-out recorded")
                        }
                        Err(e) => {
                            tracing::error!(call_id = %self.call_id, error = %e, "opt-out NOT recorded")
                        }
                    }
                }
                FlowAction::Transfer { target } => {
                    if target.starts_with("sip:") || target.starts_with("sips:") {
                        // Blind transfer: the caller's side (the trunk or phone) calls the
                        // target itself; we leave once it reports success.
                        tracing::info!(call_id = %self.call_id, target = %target, "call: blind transfer (REFER)");
                        let _ = self.sip.send(SipCommand::Refer(self.call, target));
                    } else if self.ctx.acd.as_ref().is_some_and(|a| a.has_queue(&target)) {
                        // A plain name is an agent queue (dialplans written before queues).
                        if let Some(e) =
                            self.enter_queue(target, 0, Vec::new(), String::new()).await
                        {
                            return Some(e);
                        }
                    } else {
                        tracing::warn!(call_id = %self.call_id, target = %target, "call: transfer target is neither a SIP URI nor a queue; hanging up");
                        self.hangup();
                        return Some(Ending {
                            cause: format!("transfer:{target}"),
                            side: "warmline",
                        });
                    }
                }
                FlowAction::Hangup { .. } => {
                    self.hangup();
                    return Some(Ending {
                        cause: "dialplan-hangup".into(),
                        side: "warmline",
                    });
                }
                FlowAction::Queue {
                    queue,
                    priority,
                    reasons,
                    whisper,
                } => {
                    if let Some(e) = self.enter_queue(queue, priority, reasons, whisper).await {
                        return Some(e);
                    }
                }
                FlowAction::RecordVoicemail { queue, max } => {
                    if let Some(e) = self.start_voicemail(&queue, max) {
                        return Some(e);
                    }
                    if self.voicemail_failed {
                        self.voicemail_failed = false;
                        let actions = self.flow.handle(FlowEvent::VoicemailDone, Instant::now());
                        if let Some(e) = Box::pin(self.apply(actions)).await {
                            return Some(e);
                        }
                    }
                }
                FlowAction::RequestCallback { queue } => {
                    // The CDR's outcome (callback-requested) with the caller's number is the
                    // callback list; it is written when the call ends.
                    tracing::info!(call_id = %self.call_id, queue = %queue,
                        number = %self.caller.clone().unwrap_or_default(), "call: callback requested");
                }
                FlowAction::VerifyVoice {
                    customer_id,
                    ask_phrase,
                } => {
                    if let Some(e) = self.verify_voice(customer_id, ask_phrase).await {
                        return Some(e);
                    }
                }
            }
        }
        None
    }

    /// The audio of one prompt item: a recorded prompt, or a text rendered by TTS (from the
    /// cache filled at start-up; rendered now, off the reactor, when it is new).
    async fn clip_for(&self, item: &PromptItem) -> Option<Arc<[i16]>> {
        match item {
            PromptItem::Recorded(name) => {
                let clip = self.ctx.prompts.get(name);
                if clip.is_none() {
                    tracing::error!(call_id = %self.call_id, prompt = %name, "prompt missing; skipped");
                }
                clip
            }
            PromptItem::Text(text) => {
                let language = self.flow.language().to_string();
                if let Some(c) = self.ctx.speech.clip(&language, text) {
                    super::metrics::tts_cache_hit();
                    return Some(c);
                }
                super::metrics::tts_cache_miss();
                let (speech, t, l) = (self.ctx.speech.clone(), text.clone(), language.clone());
                match tokio::task::spawn_blocking(move || speech.render(&l, &t)).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::error!(call_id = %self.call_id, text = %text, "text prompt not spoken: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::error!(call_id = %self.call_id, error = %e, "text prompt renderer failed");
                        None
                    }
                }
            }
        }
    }

    /// Opens a speech turn: caller audio goes to the endpointer, and from the start of speech
    /// to a recogniser restricted to the menu's phrases.
    fn listen(&mut self, grammar: Vec<String>, language: String, end_silence: Duration) {
        self.stop_listening();
        if !self.ctx.speech.recognises(&language) {
            tracing::debug!(call_id = %self.call_id, language = %language, "no recogniser for this language; keys only");
            if self.voiceprints_on() {
                // No menu by voice, but what the caller says still counts for voiceprints.
                self.turn += 1;
                self.listening = Some(Listening {
                    turn: self.turn,
                    vad: Vad::new(
                        VadConfig {
                            end_silence,
                            no_input: Duration::from_secs(3600),
                            ..VadConfig::default()
                        },
                        Instant::now(),
                    ),
                    asr: None,
                    preroll: std::collections::VecDeque::with_capacity(PREROLL_FRAMES),
                    speaking: false,
                    language,
                    capture_only: true,
                });
                self.media.lock().audio = Some(self.audio_tx.clone());
            }
            return;
        }
        self.turn += 1;
        let cfg = VadConfig {
            end_silence,
            // The flow times no-input itself (it knows when the prompt ended).
            no_input: Duration::from_secs(3600),
            ..VadConfig::default()
        };
        let asr = match self.ctx.speech.start_turn(&language, grammar) {
            Some(Ok(stream)) => {
                super::metrics::asr_stream_started();
                Some(stream)
            }
            Some(Err(e)) => {
                tracing::error!(call_id = %self.call_id, "speech turn not started: {e}");
                return;
            }
            None => return,
        };
        self.listening = Some(Listening {
            turn: self.turn,
            vad: Vad::new(cfg, Instant::now()),
            asr,
            preroll: std::collections::VecDeque::with_capacity(PREROLL_FRAMES),
            speaking: false,
            language,
            capture_only: false,
        });
        self.media.lock().audio = Some(self.audio_tx.clone());
    }

    fn stop_listening(&mut self) {
        if let Some(l) = self.listening.take() {
            if l.asr.is_some() {
                // A turn closed before its utterance ended: the recogniser is dropped unused.
                super::metrics::asr_stream_finished();
            }
            if self.voicemail.is_none() {
                self.media.lock().audio = None;
            }
        }
    }

    async fn on_caller_audio(
        &mut self,
        frame: &[i16; crate::media::codec::FRAME_SAMPLES],
    ) -> Option<Ending> {
        let now = Instant::now();
        self.check_passphrase_deadline();
        let l = self.listening.as_mut()?;
        let event = l.vad.push(frame, now);
        let (speaking, capture_only) = (l.speaking, l.capture_only);
        if speaking {
            if let Some(asr) = &l.asr {
                asr.push(frame);
            }
        } else {
            if l.preroll.len() == PREROLL_FRAMES {
                l.preroll.pop_front();
            }
            l.preroll.push_back(*frame);
        }
        if speaking {
            self.keep_speech(frame);
        }
        match event {
            Some(VadEvent::SpeechStart { .. }) => {
                let l = self.listening.as_mut()?;
                l.speaking = true;
                let preroll: Vec<_> = l.preroll.drain(..).collect();
                if let Some(asr) = &l.asr {
                    for f in &preroll {
                        asr.push(f);
                    }
                }
                for f in &preroll {
                    self.keep_speech(f);
                }
                if capture_only {
                    return None;
                }
                let language = self
                    .listening
                    .as_ref()
                    .map(|l| l.language.clone())
                    .unwrap_or_default();
                tracing::debug!(call_id = %self.call_id, language = %language, "speech: started");
                let actions = self.flow.handle(FlowEvent::SpeechStarted, now);
                self.apply(actions).await
            }
            Some(VadEvent::SpeechEnd { .. }) | Some(VadEvent::MaxUtterance) => {
                let l = self.listening.as_mut()?;
                l.speaking = false;
                let turn = l.turn;
                if let Some(asr) = l.asr.take() {
                    let tx = self.transcript_tx.clone();
                    tokio::spawn(async move {
                        let result = asr.result().await;
                        super::metrics::asr_stream_finished();
                        if let Ok(t) = &result {
                            super::metrics::observe_asr_latency(t.decode_time);
                        }
                        let _ = tx.send((turn, result));
                    });
                }
                if capture_only {
                    self.capture_ended();
                    // The endpointer stops after one utterance; a capture turn keeps listening
                    // for the next (its noise floor survives the reset).
                    if let Some(l) = self.listening.as_mut().filter(|l| l.capture_only) {
                        l.vad.reset(now);
                    }
                } else {
                    self.maybe_check_watchlist();
                }
                None
            }
            Some(VadEvent::NoInput) | None => None,
        }
    }

    async fn on_transcript(
        &mut self,
        turn: u64,
        result: Result<Transcript, AsrError>,
    ) -> Option<Ending> {
        if self.listening.as_ref().map(|l| l.turn) != Some(turn) {
            return None;
        }
        let now = Instant::now();
        let event = match result {
            Ok(t) => {
                tracing::info!(call_id = %self.call_id, text = %t.text, confidence = t.confidence,
                    decode_ms = t.decode_time.as_millis() as u64, "speech: heard");
                FlowEvent::Transcript {
                    text: t.text,
                    confidence: t.confidence,
                    words: t.words.into_iter().map(|w| (w.word, w.conf)).collect(),
                }
            }
            Err(e) => {
                tracing::error!(call_id = %self.call_id, "speech: recognition failed: {e}");
                FlowEvent::SpeechTimeout
            }
        };
        let actions = self.flow.handle(event, now);
        self.apply(actions).await
    }

    /// Looks the caller up before the call is answered, so the routes run on the greeting.
    async fn look_up_caller(&mut self) {
        let Some(customers) = self.ctx.customers.clone() else {
            let _ = self.flow.handle(
                FlowEvent::CallerKnown {
                    profile: Default::default(),
                    status: crate::ivr::caller::LookupStatus::Disabled,
                },
                Instant::now(),
            );
            return;
        };
        let number = self.caller.clone().unwrap_or_default();
        let t0 = Instant::now();
        let (profile, status) = customers.lookup(&number).await;
        tracing::info!(call_id = %self.call_id, number = %number, status = ?status,
            customer = ?profile.customer_id, age = ?profile.age, segment = ?profile.segment,
            took_ms = t0.elapsed().as_millis() as u64, "call: caller lookup");
        if let Some(lang) = profile
            .language
            .as_deref()
            .filter(|l| crate::ivr::dialplan::LANGUAGES.contains(l))
        {
            if self.ctx.speech.speaks(lang) || lang == self.flow.language() {
                self.flow.set_language(lang);
            }
        }
        // Before `Answered`: the flow returns no actions for it.
        let _ = self
            .flow
            .handle(FlowEvent::CallerKnown { profile, status }, Instant::now());
    }

    /// Lookup, voiceprint, queue and agent facts for the CDR.
    fn routing_json(&self) -> Option<String> {
        let rec = self.flow.record();
        if rec.lookup.is_none() && rec.queued.is_empty() && rec.voice.is_none() {
            return None;
        }
        let agent = match &rec.outcome {
            Outcome::Connected { agent, .. } => Some(agent.clone()),
            _ => None,
        };
        Some(
            serde_json::json!({
                "lookup": rec.lookup,
                "caller": rec.caller,
                "routes": rec.routes,
                "reasons": rec.reasons,
                "voice": rec.voice.map(|v| serde_json::json!({"decision": v.decision, "score": v.score})),
                "watchlist": rec.watchlist.iter().map(|w| serde_json::json!({"entry": w.entry, "score": w.score})).collect::<Vec<_>>(),
                "queues": rec.queued,
                "agent": agent,
                "wait_ms": self.waited.map(|w| w.as_millis() as u64),
                "callback_requested": rec.callback_requested,
            })
            .to_string(),
        )
    }

    fn hangup(&mut self) {
        if !self.hangup_sent {
            self.hangup_sent = true;
            let _ = self.sip.send(SipCommand::Hangup(self.call));
        }
    }
}

/// A timer instant for a deadline; far away for none.
fn timer_instant(deadline: Option<Instant>) -> tokio::time::Instant {
    match deadline {
        Some(t) => tokio::time::Instant::from_std(t),
        None => tokio::time::Instant::now() + FAR_AWAY,
    }
}

impl Drop for Call {
    /// However the call task ends (even aborted), its shard stops sending for it.
    fn drop(&mut self) {
        self.media.ended.store(true, Ordering::Release);
    }
}

/// We stop sending while the other side holds us (sendonly/inactive).
fn sends(remote: Direction) -> bool {
    matches!(remote, Direction::SendRecv | Direction::RecvOnly)
}
