//! One outbound reminder call: places the INVITE through the SIP task, runs media and
//! answering-machine detection, and feeds the sans-IO `OutboundAttempt` that decides.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Trunk;
use crate::dialer::outbound::{
    AmdResult, AttemptResult, OutboundAction, OutboundAttempt, OutboundConfig, OutboundEvent,
};
use crate::media::amd::{AmdConfig, AmdDecision, AmdDetector, BeepWaiter};
use crate::media::codec::FRAME_SAMPLES;
use crate::media::prompt::Player;
use crate::media::session::MediaEvent;
use crate::sip::endpoint::{CallHandle, Credentials, OutboundCall};

use super::call::{CallContext, CallMedia};
use super::ports;
use super::transport::{CallEvent, SipCommand};

/// Everything one call needs to know.
pub struct OutboundRequest {
    pub call_id: String,
    /// The ledger's attempt row: the answer time is written to it at once.
    pub attempt_id: i64,
    /// E.164 number to dial.
    pub phone: String,
    pub caller_id: String,
    pub trunk: Arc<Trunk>,
    pub config: OutboundConfig,
    /// Where an opt-out pressed in this call is recorded as coming from.
    pub opt_out_source: String,
    /// The campaign's template filled in for this contact, with its language: spoken by
    /// text-to-speech instead of the recorded message prompts when a voice is configured.
    pub message_text: Option<(String, String)>,
}

/// What the call did, for the ledger.
pub struct OutboundReport {
    pub result: AttemptResult,
    pub answered_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Places and runs the call to its end. Never fails: a call that cannot even start ends as a
/// `failed` attempt (the phone did not ring).
pub async fn run(
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    req: OutboundRequest,
) -> OutboundReport {
    let dialled_at = Instant::now();
    let mut attempt = OutboundAttempt::new(req.config.clone(), dialled_at);
    let mut call = OutboundCallTask {
        ctx,
        sip,
        call_id: req.call_id.clone(),
        phone: req.phone.clone(),
        opt_out_source: req.opt_out_source.clone(),
        attempt_id: req.attempt_id,
        message_prompts: req.config.message.clone(),
        message_text: req.message_text.clone(),
        handle: None,
        media: Arc::default(),
        session_id: rand::random::<u32>() as u64,
        local_port: 0,
        amd: None,
        beep: None,
        answered_at: None,
        registered: false,
    };
    call.run(&req, &mut attempt).await;
    call.media.ended.store(true, Ordering::Release);
    if !attempt.is_finished() {
        // The task can only get here with the call gone on the network side.
        let _ = attempt.handle(OutboundEvent::Failed { status: 500 }, Instant::now());
    }
    let result = attempt.result().cloned().unwrap_or_else(|| {
        // Unreachable by the attempt's contract; the ledger still gets an honest row.
        AttemptResult {
            outcome: crate::dialer::policy::AttemptOutcome::Failed,
            reach: crate::store::ledger::Reach::NotReached,
            sip_status: None,
            amd_decision: None,
            amd_confidence: None,
            answered_after: None,
            digits: String::new(),
        }
    });
    super::metrics::record_call_end("outbound", result.outcome.as_str());
    OutboundReport {
        result,
        answered_at: call.answered_at,
    }
}

struct OutboundCallTask {
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    call_id: String,
    phone: String,
    opt_out_source: String,
    attempt_id: i64,
    message_prompts: Vec<String>,
    message_text: Option<(String, String)>,
    handle: Option<CallHandle>,
    media: Arc<CallMedia>,
    session_id: u64,
    local_port: u16,
    amd: Option<AmdDetector>,
    beep: Option<BeepWaiter>,
    answered_at: Option<chrono::DateTime<chrono::Utc>>,
    registered: bool,
}

impl OutboundCallTask {
    async fn run(&mut self, req: &OutboundRequest, attempt: &mut OutboundAttempt) {
        let (rtp, rtcp) = match self.ctx.ports.bind_pair() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "outbound: no RTP port");
                let _ = attempt.handle(OutboundEvent::Failed { status: 503 }, Instant::now());
                return;
            }
        };
        self.local_port = rtp.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
        let (rtp, rtcp) = (Arc::new(rtp), Arc::new(rtcp));
        let offer =
            super::call::local_offer(&self.ctx, &self.media, self.local_port, self.session_id, 1);
        let trunk = &req.trunk;
        let host = &trunk.domain;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let public = self.ctx.public_addr;
        let invite = OutboundCall {
            call_id: Some(self.call_id.clone()),
            request_uri: format!("sip:{}@{host}", req.phone),
            destination: trunk.address,
            transport: trunk.transport,
            from_uri: format!("sip:{}@{}", req.caller_id, public),
            from_display: None,
            to_uri: format!("sip:{}@{host}", req.phone),
            sdp_offer: offer.into_bytes(),
            credentials: trunk.credentials.as_ref().map(|(u, p)| Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
        };
        if self
            .sip
            .send(SipCommand::Invite {
                call: Box::new(invite),
                headers: Vec::new(),
                events: events_tx,
                reply: reply_tx,
            })
            .is_err()
        {
            let _ = attempt.handle(OutboundEvent::Failed { status: 503 }, Instant::now());
            return;
        }
        match reply_rx.await {
            Ok(Ok(handle)) => self.handle = Some(handle),
            Ok(Err(e)) => {
                tracing::error!(call_id = %self.call_id, error = %e, "outbound: INVITE not sent");
                let _ = attempt.handle(OutboundEvent::Failed { status: 500 }, Instant::now());
                return;
            }
            Err(_) => {
                let _ = attempt.handle(OutboundEvent::Failed { status: 503 }, Instant::now());
                return;
            }
        }
        tracing::info!(call_id = %self.call_id, to = %req.phone, trunk = %trunk.name, "outbound: dialling");

        let (audio_tx, mut audio_rx) = mpsc::unbounded_channel::<[i16; FRAME_SAMPLES]>();
        self.media.lock().audio = Some(audio_tx);
        let media = self.media.clone();
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        let timer = tokio::time::sleep_until(timer_at(attempt.poll_timeout()));
        tokio::pin!(timer);
        let mut armed = attempt.poll_timeout();
        while !attempt.is_finished() {
            let wanted = attempt.poll_timeout();
            if wanted != armed {
                armed = wanted;
                timer.as_mut().reset(timer_at(armed));
            }
            let actions = tokio::select! {
                ev = events.recv() => {
                    let now = Instant::now();
                    match ev {
                        None => attempt.handle(OutboundEvent::RemoteHangup, now),
                        Some(ev) => self.on_call_event(ev, attempt, &rtp, &rtcp, now),
                    }
                }
                _ = media.finished.notified() => {
                    let done = std::mem::take(&mut self.media.lock().finished);
                    let now = Instant::now();
                    let mut out = Vec::new();
                    for playback in done {
                        out.extend(attempt.handle(OutboundEvent::PlaybackFinished { playback }, now));
                    }
                    out
                }
                Some(frame) = audio_rx.recv() => self.on_audio(&frame, attempt),
                r = ports::recv_from(&rtp, &mut rtp_buf) => {
                    match r {
                        Ok((n, from)) => self.on_rtp(rtp_buf.get(..n).unwrap_or_default(), from, attempt),
                        Err(_) => Vec::new(),
                    }
                }
                r = ports::recv_from(&rtcp, &mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(m) = self.media.lock().media.as_mut() {
                            m.handle_rtcp(rtcp_buf.get(..n).unwrap_or_default(), from, Instant::now());
                        }
                    }
                    Vec::new()
                }
                _ = &mut timer => {
                    armed = None;
                    timer.as_mut().reset(timer_at(None));
                    attempt.handle_timeout(Instant::now())
                }
            };
            self.apply(actions, attempt).await;
        }
    }

    fn on_call_event(
        &mut self,
        ev: CallEvent,
        attempt: &mut OutboundAttempt,
        rtp: &Arc<ports::MediaSocket>,
        rtcp: &Arc<ports::MediaSocket>,
        now: Instant,
    ) -> Vec<OutboundAction> {
        match ev {
            CallEvent::Progress { status, remote_sdp } => {
                let early_media = remote_sdp.is_some();
                if let Some(answer) = remote_sdp {
                    // Early media (183): listen to the ringback or announcement the network plays.
                    self.start_or_update_media(&answer, rtp, rtcp);
                }
                attempt.handle(
                    OutboundEvent::Progress {
                        status,
                        early_media,
                    },
                    now,
                )
            }
            CallEvent::Answered { remote_sdp } => {
                match remote_sdp {
                    Some(answer) => self.start_or_update_media(&answer, rtp, rtcp),
                    None if self.media.lock().media.is_some() => {}
                    None => {
                        tracing::warn!(call_id = %self.call_id, "outbound: 200 OK without SDP; no media");
                    }
                }
                let at = chrono::Utc::now();
                self.answered_at = Some(at);
                tracing::info!(call_id = %self.call_id, "outbound: answered");
                // In the background: the callee must not wait for a commit to hear us.
                let (store, id, call_id) = (
                    self.ctx.store.clone(),
                    self.attempt_id,
                    self.call_id.clone(),
                );
                tokio::spawn(async move {
                    if let Err(e) = store
                        .record_attempt_answered(id, at.timestamp_millis())
                        .await
                    {
                        tracing::error!(call_id = %call_id, error = %e, "cannot write the answer time");
                    }
                });
                attempt.handle(OutboundEvent::Answered, now)
            }
            CallEvent::Failed { status, reason } => {
                self.handle = None;
                tracing::info!(call_id = %self.call_id, status, reason = %reason, "outbound: failed");
                attempt.handle(OutboundEvent::Failed { status }, now)
            }
            CallEvent::Dtmf { digit } => {
                tracing::info!(call_id = %self.call_id, digit = %digit, via = "info", "outbound: dtmf");
                attempt.handle(OutboundEvent::Digit(digit), now)
            }
            // A BYE from the callee, or our own BYE completed (the attempt already decided
            // then, and ignores this).
            CallEvent::Ended { .. } => {
                self.handle = None;
                attempt.handle(OutboundEvent::RemoteHangup, now)
            }
            CallEvent::Shutdown => attempt.handle(OutboundEvent::Shutdown, now),
            // Reminder calls never transfer.
            CallEvent::TransferEnded { .. } => Vec::new(),
            CallEvent::Confirmed { .. } | CallEvent::ReInvite { .. } => {
                if let (CallEvent::ReInvite { .. }, Some(h)) = (&ev, self.handle) {
                    // Hold/resume from the far end is not worth renegotiating in a reminder
                    // call; keep the current media.
                    let _ = self.sip.send(SipCommand::RejectReinvite(h, 488));
                }
                Vec::new()
            }
        }
    }

    fn start_or_update_media(
        &mut self,
        answer: &[u8],
        rtp: &Arc<ports::MediaSocket>,
        rtcp: &Arc<ports::MediaSocket>,
    ) {
        super::call::apply_sdp_answer(
            &self.ctx,
            &self.media,
            &mut self.registered,
            answer,
            (rtp, rtcp),
            &self.call_id,
            "outbound",
        );
    }

    fn on_rtp(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        attempt: &mut OutboundAttempt,
    ) -> Vec<OutboundAction> {
        let now = Instant::now();
        let mut digits = Vec::new();
        {
            let mut st = self.media.lock();
            let Some(m) = st.media.as_mut() else {
                return Vec::new();
            };
            m.handle_rtp(data, from, now);
            while let Some(ev) = m.poll_event() {
                if let MediaEvent::Dtmf { digit } = ev {
                    digits.push(digit);
                }
            }
        }
        let mut out = Vec::new();
        for digit in digits {
            tracing::info!(call_id = %self.call_id, digit = %digit, via = "rfc4733", "outbound: dtmf");
            out.extend(attempt.handle(OutboundEvent::Digit(digit), now));
        }
        out
    }

    /// The far end's audio, while the detector or the beep waiter listens.
    fn on_audio(
        &mut self,
        frame: &[i16; FRAME_SAMPLES],
        attempt: &mut OutboundAttempt,
    ) -> Vec<OutboundAction> {
        let now = Instant::now();
        if let Some(amd) = self.amd.as_mut() {
            if let Some(v) = amd.push(frame) {
                self.amd = None;
                tracing::info!(call_id = %self.call_id, decision = v.decision.as_str(),
                    confidence = v.confidence, reason = v.reason, after_ms = v.after.as_millis() as u64, "outbound: amd");
                let result = match v.decision {
                    AmdDecision::Human => AmdResult::Human,
                    AmdDecision::Machine => AmdResult::Machine,
                    AmdDecision::NotSure => AmdResult::NotSure,
                };
                return attempt.handle(
                    OutboundEvent::Amd {
                        result,
                        confidence: v.confidence,
                    },
                    now,
                );
            }
        }
        if let Some(beep) = self.beep.as_mut() {
            if let Some(end) = beep.push(frame) {
                self.beep = None;
                tracing::info!(call_id = %self.call_id, end = ?end, "outbound: greeting ended");
                return attempt.handle(OutboundEvent::GreetingEnded, now);
            }
        }
        Vec::new()
    }

    async fn apply(&mut self, actions: Vec<OutboundAction>, attempt: &mut OutboundAttempt) {
        for a in actions {
            match a {
                OutboundAction::Cancel => {
                    // The endpoint reports the end (487, or the 2xx that crossed the CANCEL).
                    if let Some(h) = self.handle.take() {
                        let _ = self.sip.send(SipCommand::Cancel(h));
                    }
                }
                OutboundAction::StartAmd => self.amd = Some(AmdDetector::new(AmdConfig::default())),
                OutboundAction::StopAmd => self.amd = None,
                OutboundAction::WaitForBeep => self.beep = Some(BeepWaiter::default()),
                OutboundAction::Play {
                    playback, prompts, ..
                } if prompts == self.message_prompts && self.speaks_message() => {
                    self.play_message_text(playback, &prompts);
                }
                OutboundAction::Play {
                    playback, prompts, ..
                } => {
                    let clips = prompts
                        .iter()
                        .filter_map(|p| {
                            let clip = self.ctx.prompts.get(p);
                            if clip.is_none() {
                                tracing::error!(call_id = %self.call_id, prompt = %p, "prompt missing; skipped");
                            }
                            clip
                        })
                        .collect();
                    self.media.lock().player = Some((playback, Player::new(clips)));
                }
                OutboundAction::StopPlayback => self.media.lock().player = None,
                OutboundAction::OptOut => {
                    // Effective before the confirmation plays, and for every campaign.
                    match self
                        .ctx
                        .store
                        .opt_out(
                            &self.phone,
                            &self.opt_out_source,
                            Some(&self.call_id),
                            chrono::Utc::now(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(call_id = %self.call_id, number = %self.phone, "outbound: opt-out recorded")
                        }
                        Err(e) => {
                            tracing::error!(call_id = %self.call_id, error = %e, "opt-out NOT recorded")
                        }
                    }
                }
                OutboundAction::Hangup => self.hangup(),
                OutboundAction::Transfer { target } => {
                    // Agent routing arrives with the routing issue: the callee heard "please
                    // hold"; the attempt records that an agent was asked for.
                    tracing::warn!(call_id = %self.call_id, target = %target, "outbound: transfer target has no route yet; hanging up");
                    self.hangup();
                }
            }
        }
        if attempt.is_finished() {
            self.hangup();
        }
    }

    fn speaks_message(&self) -> bool {
        self.message_text
            .as_ref()
            .is_some_and(|(lang, _)| self.ctx.speech.speaks(lang))
    }

    /// The contact's own message, synthesised sentence by sentence: the first sentence plays
    /// as soon as it is ready while the rest renders. If synthesis fails before any audio, the
    /// recorded message prompts play instead.
    fn play_message_text(&mut self, playback: u64, prompts: &[String]) {
        let Some((lang, text)) = self.message_text.clone() else {
            return;
        };
        let Some(mut stream) = self.ctx.speech.stream(&lang, &text) else {
            return;
        };
        self.media.lock().player = Some((playback, Player::streaming()));
        let media = self.media.clone();
        let fallback: Vec<_> = prompts
            .iter()
            .filter_map(|p| self.ctx.prompts.get(p))
            .collect();
        let call_id = self.call_id.clone();
        tokio::spawn(async move {
            let rate = stream.sample_rate();
            let mut sent = 0usize;
            while let Some(chunk) = stream.next_chunk().await {
                let audio = match chunk
                    .map_err(|e| e.to_string())
                    .and_then(|c| crate::media::prompt::to_8k(&c, rate))
                {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(call_id = %call_id, "message synthesis failed: {e}");
                        break;
                    }
                };
                let mut st = media.lock();
                match st.player.as_mut() {
                    // Still this playback (not stopped by a key): add the sentence.
                    Some((id, p)) if *id == playback => p.push(audio.into()),
                    _ => return,
                }
                sent += 1;
            }
            let first_ms = stream.timings().first().map(|t| {
                t.sent
                    .saturating_duration_since(stream.created())
                    .as_millis() as u64
            });
            tracing::info!(call_id = %call_id, sentences = sent, first_audio_ms = ?first_ms,
                "outbound: message spoken by text-to-speech");
            let mut st = media.lock();
            if let Some((id, p)) = st.player.as_mut() {
                if *id == playback {
                    if sent == 0 {
                        for clip in fallback {
                            p.push(clip);
                        }
                    }
                    p.close();
                }
            }
        });
    }

    /// Ends the call on the network: BYE once answered, CANCEL before.
    fn hangup(&mut self) {
        if let Some(h) = self.handle.take() {
            let cmd = if self.answered_at.is_some() {
                SipCommand::Hangup(h)
            } else {
                SipCommand::Cancel(h)
            };
            let _ = self.sip.send(cmd);
        }
    }
}

impl Drop for OutboundCallTask {
    fn drop(&mut self) {
        self.media.ended.store(true, Ordering::Release);
    }
}

fn timer_at(deadline: Option<Instant>) -> tokio::time::Instant {
    match deadline {
        Some(t) => tokio::time::Instant::from_std(t),
        None => tokio::time::Instant::now() + Duration::from_secs(3600),
    }
}
