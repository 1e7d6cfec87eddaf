//! One call leg to an agent's phone: the INVITE, its media, and what the caller's bridge needs
//! once the agent answers. The ACD shell places it; the caller's call task bridges it.
//!
//! The leg keeps its own RTP sockets and receive loop for its whole life. While it is bridged
//! the caller's media-clock entry sends its frames (one tick drives both legs, so neither
//! drifts against the other); the leg's own entry then only keeps RTCP going.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::media::session::MediaEvent;
use crate::sip::endpoint::{CallHandle, OutboundCall, Transport};

use super::call::{CallContext, CallMedia};
use super::ports::{self, MediaSocket};
use super::transport::{CallEvent, SipCommand};

/// Where to ring an agent, resolved from the configuration or the registrar.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// e.g. `sip:alice@192.0.2.7:5062`
    pub request_uri: String,
    pub destination: SocketAddr,
    pub transport: Transport,
}

impl AgentTarget {
    /// A static contact: a SIP URI (`sip:user@host:port`) or `host:port`. Host names are
    /// resolved once here, when the agent is offered a call.
    pub async fn resolve_static(contact: &str) -> Result<AgentTarget, String> {
        let lower = contact.get(..5).unwrap_or_default().to_ascii_lowercase();
        let (sips, rest) = if lower == "sips:" {
            (true, contact.get(5..).unwrap_or_default())
        } else if lower.starts_with("sip:") {
            (false, contact.get(4..).unwrap_or_default())
        } else {
            (false, contact)
        };
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        // Parameters (";transport=tcp") follow the host part; sips: means TLS (RFC 3261 26.2).
        let mut parts = hostport.split(';');
        let hostport = parts.next().unwrap_or_default();
        let params: Vec<&str> = parts.collect();
        let has = |v: &str| params.iter().any(|p| p.eq_ignore_ascii_case(v));
        let transport = if sips || has("transport=tls") {
            Transport::Tls
        } else if has("transport=tcp") {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        // "[::1]" has a ':' but no port; "[::1]:5062" and "host:5062" have one.
        let with_port = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:{default_port}")
        };
        let destination = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| format!("agent contact '{contact}': cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("agent contact '{contact}': {with_port} has no address"))?;
        let scheme = if sips { "sips" } else { "sip" };
        let request_uri = match user {
            Some(u) => format!("{scheme}:{u}@{destination}"),
            None => format!("{scheme}:{destination}"),
        };
        Ok(AgentTarget {
            request_uri,
            destination,
            transport,
        })
    }
}

/// The caller-side facts an agent's phone gets with the INVITE (screen-pop).
#[derive(Debug, Clone, Default)]
pub struct OfferInfo {
    /// The caller's Call-ID, for the logs and the agent leg's own Call-ID.
    pub call_id: String,
    pub caller_number: Option<String>,
    /// What the machine learned, e.g. "elderly caller, lost card".
    pub whisper: String,
    pub queue: String,
}

/// An answered agent leg, handed to the caller's bridge.
pub struct AgentLeg {
    pub agent: String,
    pub call_id: String,
    pub(super) media: Arc<CallMedia>,
    pub(super) rtp: Arc<MediaSocket>,
    control: mpsc::UnboundedSender<LegControl>,
    /// Becomes true when the leg is over (the agent hung up, or the network lost it). Taken
    /// by whoever watches the leg.
    pub ended: Option<watch::Receiver<bool>>,
    /// Keys the agent pressed (RFC 4733 or INFO), for the bridge to pass on.
    pub dtmf: Option<mpsc::UnboundedReceiver<char>>,
}

impl std::fmt::Debug for AgentLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLeg")
            .field("agent", &self.agent)
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

impl AgentLeg {
    pub fn hangup(&self) {
        let _ = self.control.send(LegControl::Hangup);
    }
}

impl Drop for AgentLeg {
    /// A leg nobody holds any more is hung up (the caller went away while it was handed over).
    fn drop(&mut self) {
        let _ = self.control.send(LegControl::Hangup);
    }
}

/// How an offer ended before any bridge took the leg.
#[derive(Debug)]
pub enum OfferResult {
    Answered(AgentLeg),
    Failed { status: u16, reason: String },
}

enum LegControl {
    /// Stop ringing (CANCEL) or end the call (BYE).
    Hangup,
}

/// A leg being offered; dropping it (or `cancel`) stops the ringing.
pub struct PendingOffer {
    control: mpsc::UnboundedSender<LegControl>,
}

impl PendingOffer {
    pub fn cancel(&self) {
        let _ = self.control.send(LegControl::Hangup);
    }
}

/// Rings `target` for `agent`; the result arrives on `done` once: answered (with the leg) or
/// failed. The task lives on until the leg ends.
pub fn offer(
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    agent: String,
    target: AgentTarget,
    info: OfferInfo,
    ring_timeout: Duration,
    done: oneshot::Sender<OfferResult>,
) -> PendingOffer {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let task = LegTask {
        ctx,
        sip,
        agent,
        call_id: format!(
            "agent-{}-{:08x}",
            rand::random::<u32>(),
            rand::random::<u32>()
        ),
        handle: None,
        media: Arc::default(),
        registered: false,
        answered: false,
    };
    tokio::spawn(task.run(
        target,
        info,
        ring_timeout,
        control_tx.clone(),
        control_rx,
        done,
    ));
    PendingOffer {
        control: control_tx,
    }
}

struct LegTask {
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    agent: String,
    call_id: String,
    handle: Option<CallHandle>,
    media: Arc<CallMedia>,
    registered: bool,
    answered: bool,
}

impl LegTask {
    async fn run(
        mut self,
        target: AgentTarget,
        info: OfferInfo,
        ring_timeout: Duration,
        control_tx: mpsc::UnboundedSender<LegControl>,
        mut control: mpsc::UnboundedReceiver<LegControl>,
        done: oneshot::Sender<OfferResult>,
    ) {
        let mut done = Some(done);
        let fail =
            |done: &mut Option<oneshot::Sender<OfferResult>>, status: u16, reason: String| {
                if let Some(d) = done.take() {
                    let _ = d.send(OfferResult::Failed { status, reason });
                }
            };
        let (rtp, rtcp) = match self.ctx.ports.bind_pair() {
            Ok(p) => p,
            Err(e) => return fail(&mut done, 503, format!("no RTP port: {e}")),
        };
        let local_port = rtp.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
        let (rtp, rtcp) = (Arc::new(rtp), Arc::new(rtcp));
        let offer_sdp = super::call::local_offer(
            &self.ctx,
            &self.media,
            local_port,
            rand::random::<u32>() as u64,
            1,
        );
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let from_user = info
            .caller_number
            .as_deref()
            .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
            .unwrap_or("warmline");
        let invite = OutboundCall {
            call_id: Some(self.call_id.clone()),
            request_uri: target.request_uri.clone(),
            destination: target.destination,
            transport: target.transport,
            from_uri: format!("sip:{from_user}@{}", self.ctx.public_addr),
            from_display: None,
            to_uri: target.request_uri.clone(),
            sdp_offer: offer_sdp.into_bytes(),
            credentials: None,
        };
        let sent = self.sip.send(SipCommand::Invite {
            call: Box::new(invite),
            headers: screen_pop_headers(&info),
            events: events_tx,
            reply: reply_tx,
        });
        if sent.is_err() {
            return fail(&mut done, 503, "signalling is stopping".into());
        }
        match reply_rx.await {
            Ok(Ok(h)) => self.handle = Some(h),
            Ok(Err(e)) => return fail(&mut done, 500, format!("INVITE not sent: {e}")),
            Err(_) => return fail(&mut done, 503, "signalling is stopping".into()),
        }
        tracing::info!(call_id = %info.call_id, agent = %self.agent, leg = %self.call_id,
            uri = %target.request_uri, "acd: ringing agent");

        let (ended_tx, ended_rx) = watch::channel(false);
        let (dtmf_tx, dtmf_rx) = mpsc::unbounded_channel();
        let mut dtmf_rx = Some(dtmf_rx);
        let mut ended_rx = Some(ended_rx);
        let ring_deadline = tokio::time::sleep(ring_timeout + Duration::from_secs(2));
        tokio::pin!(ring_deadline);
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        let mut control_tx = Some(control_tx);
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    match ev {
                        CallEvent::Progress { remote_sdp: Some(answer), .. } => {
                            self.start_media(&answer, &rtp, &rtcp);
                        }
                        CallEvent::Progress { .. } => {}
                        CallEvent::Answered { remote_sdp } => {
                            if let Some(answer) = remote_sdp {
                                self.start_media(&answer, &rtp, &rtcp);
                            }
                            if self.media.lock().media.is_none() {
                                tracing::warn!(leg = %self.call_id, "acd: agent answered without usable SDP");
                                self.hangup();
                                fail(&mut done, 488, "agent answered without usable SDP".into());
                                continue;
                            }
                            self.answered = true;
                            tracing::info!(call_id = %info.call_id, agent = %self.agent, "acd: agent answered");
                            if let (Some(d), Some(c), Some(e), Some(k)) =
                                (done.take(), control_tx.take(), ended_rx.take(), dtmf_rx.take())
                            {
                                let leg = AgentLeg {
                                    agent: self.agent.clone(),
                                    call_id: self.call_id.clone(),
                                    media: self.media.clone(),
                                    rtp: rtp.clone(),
                                    control: c,
                                    ended: Some(e),
                                    dtmf: Some(k),
                                };
                                // The ACD no longer wants it (the caller left): the leg's drop
                                // hangs up.
                                let _ = d.send(OfferResult::Answered(leg));
                            }
                        }
                        CallEvent::Failed { status, reason } => {
                            self.handle = None;
                            fail(&mut done, status, reason);
                            break;
                        }
                        CallEvent::Ended { .. } => {
                            self.handle = None;
                            fail(&mut done, 487, "ended before answer".into());
                            break;
                        }
                        CallEvent::Shutdown => {
                            self.hangup();
                            fail(&mut done, 503, "shutting down".into());
                            break;
                        }
                        CallEvent::ReInvite { .. } => {
                            // Agents' phones put the call on hold; we keep relaying what arrives.
                            if let Some(h) = self.handle {
                                let _ = self.sip.send(SipCommand::RejectReinvite(h, 488));
                            }
                        }
                        CallEvent::Dtmf { digit } => { let _ = dtmf_tx.send(digit); }
                        CallEvent::Confirmed { .. } | CallEvent::TransferEnded { .. } => {}
                    }
                }
                c = control.recv() => {
                    match c {
                        Some(LegControl::Hangup) | None => {
                            self.hangup();
                            fail(&mut done, 487, "cancelled".into());
                            if !self.answered {
                                // Wait for the 487/ended so the transaction closes cleanly.
                                continue;
                            }
                            break;
                        }
                    }
                }
                _ = &mut ring_deadline, if !self.answered => {
                    // The ACD cancels at ring_timeout; this only guards against a lost CANCEL.
                    self.hangup();
                    fail(&mut done, 408, "no answer".into());
                    break;
                }
                r = ports::recv_from(&rtp, &mut rtp_buf) => {
                    if let Ok((n, from)) = r {
                        let mut st = self.media.lock();
                        if let Some(m) = st.media.as_mut() {
                            m.handle_rtp(rtp_buf.get(..n).unwrap_or_default(), from, Instant::now());
                            while let Some(ev) = m.poll_event() {
                                if let MediaEvent::Dtmf { digit } = ev {
                                    let _ = dtmf_tx.send(digit);
                                }
                            }
                        }
                    }
                }
                r = ports::recv_from(&rtcp, &mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(m) = self.media.lock().media.as_mut() {
                            m.handle_rtcp(rtcp_buf.get(..n).unwrap_or_default(), from, Instant::now());
                        }
                    }
                }
            }
        }
        self.media.ended.store(true, Ordering::Release);
        let _ = ended_tx.send(true);
        tracing::info!(agent = %self.agent, leg = %self.call_id, "acd: agent leg ended");
    }

    fn hangup(&mut self) {
        if let Some(h) = self.handle {
            if self.answered {
                let _ = self.sip.send(SipCommand::Hangup(h));
            } else {
                let _ = self.sip.send(SipCommand::Cancel(h));
            }
        }
    }

    fn start_media(&mut self, answer: &[u8], rtp: &Arc<MediaSocket>, rtcp: &Arc<MediaSocket>) {
        super::call::apply_sdp_answer(
            &self.ctx,
            &self.media,
            &mut self.registered,
            answer,
            (rtp, rtcp),
            &self.call_id,
            "acd",
        );
    }
}

/// Headers for the agent's phone: who calls and what the machine learned (screen-pop).
/// Values are reduced to printable ASCII without CR/LF, so caller-influenced text (a
/// transcript in the whisper) cannot inject headers.
fn screen_pop_headers(info: &OfferInfo) -> Vec<(String, String)> {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(200)
            .collect()
    };
    let mut h = vec![
        ("X-Warmline-Queue".to_string(), clean(&info.queue)),
        ("X-Warmline-Call-ID".to_string(), clean(&info.call_id)),
    ];
    if !info.whisper.is_empty() {
        h.push(("X-Warmline-Whisper".to_string(), clean(&info.whisper)));
    }
    if let Some(n) = &info.caller_number {
        h.push(("X-Warmline-Caller".to_string(), clean(n)));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_pop_headers_cannot_inject_lines() {
        let info = OfferInfo {
            call_id: "abc".into(),
            caller_number: Some("+1555\r\nX-Evil: 1".into()),
            whisper: "elderly caller, lost card\r\nVia: evil".into(),
            queue: "agents".into(),
        };
        for (_, v) in screen_pop_headers(&info) {
            assert!(!v.contains('\r') && !v.contains('\n'), "{v:?}");
        }
        let h = screen_pop_headers(&info);
        assert!(h
            .iter()
            .any(|(k, v)| k == "X-Warmline-Whisper" && v.starts_with("elderly caller, lost card")));
    }

    #[tokio::test]
    async fn static_contacts_resolve_with_default_port() {
        let t = AgentTarget::resolve_static("sip:alice@127.0.0.1:5062")
            .await
            .expect("uri");
        assert_eq!(t.destination, "127.0.0.1:5062".parse().expect("addr"));
        assert_eq!(t.request_uri, "sip:alice@127.0.0.1:5062");
        let t = AgentTarget::resolve_static("127.0.0.1")
            .await
            .expect("host");
        assert_eq!(t.destination.port(), 5060);
        let t = AgentTarget::resolve_static("sip:bob@127.0.0.1:5070;transport=tcp")
            .await
            .expect("tcp");
        assert_eq!(t.transport, Transport::Tcp);
        // sips: (RFC 3261 26.2) and ;transport=tls both mean TLS; sips: defaults to 5061.
        let t = AgentTarget::resolve_static("sips:carol@127.0.0.1")
            .await
            .expect("sips");
        assert_eq!(t.transport, Transport::Tls);
        assert_eq!(t.destination.port(), 5061);
        assert_eq!(t.request_uri, "sips:carol@127.0.0.1:5061");
        let t = AgentTarget::resolve_static("SIP:dan@127.0.0.1:5063;transport=TLS")
            .await
            .expect("transport=tls");
        assert_eq!(t.transport, Transport::Tls);
        assert_eq!(t.request_uri, "sip:dan@127.0.0.1:5063");
        assert!(
            AgentTarget::resolve_static("sip:x@no-such-host.invalid:5060")
                .await
                .is_err()
        );
    }
}
