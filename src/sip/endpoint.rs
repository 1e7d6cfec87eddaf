//! Sans-IO SIP user agent server: feed it datagrams / framed stream messages and time,
//! take back transmits and call events. No sockets, no clock reads, no tokio.
//!
//! Call flow for the application: `Event::IncomingCall` -> `ring` -> `answer` (or `reject`)
//! -> `Event::Confirmed` -> ... -> `hangup` or `Event::Ended`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsip::Header;

use crate::sip::dialog::{Dialog, DialogState, PendingReInvite};
use crate::sip::message::{
    self, hdr, reason_phrase, Message, Method, ParseFailure, Request, Response, ResponseCtx,
};
pub use crate::sip::message::{Limits, SipError};
use crate::sip::transaction::{
    ServerTxInit, TimerValues, TransactionLayer, TxEvent, TxId, TxKey, TxKind, TxState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Address put in Via and Contact of what we send.
    pub public_addr: SocketAddr,
    pub user_agent: String,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub limits: Limits,
}

impl EndpointConfig {
    /// RFC 3261 default timers (T1 500 ms, T2 4 s, T4 5 s) and default limits.
    pub fn new(public_addr: SocketAddr) -> Self {
        Self {
            public_addr,
            user_agent: format!("warmline/{}", env!("CARGO_PKG_VERSION")),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }
}

/// Bytes to put on the wire. Over TCP `destination` names the peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingCall {
    pub call: CallHandle,
    pub call_id: String,
    pub from_uri: String,
    pub from_display: Option<String>,
    /// Caller number: user part of a sip URI or the number of a tel URI.
    pub from_user: Option<String>,
    pub to_uri: String,
    pub to_user: Option<String>,
    pub remote_sdp: Option<Vec<u8>>,
    pub source: SocketAddr,
    pub transport: Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    RemoteBye,
    Cancelled,
    /// No ACK for our 2xx: the endpoint already sent BYE.
    AckTimeout,
    /// Our BYE got its final response or timed out (or an unanswered call was hung up).
    LocalByeDone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    IncomingCall(IncomingCall),
    /// ACK for our 2xx. `remote_sdp` is the answer of a late-offer call. For a re-INVITE's
    /// ACK this event is only raised when the ACK carries SDP.
    Confirmed {
        call: CallHandle,
        remote_sdp: Option<Vec<u8>>,
    },
    /// The app must call `answer_reinvite` or `reject_reinvite`.
    ReInvite {
        call: CallHandle,
        remote_sdp: Option<Vec<u8>>,
    },
    Dtmf {
        call: CallHandle,
        digit: char,
        duration_ms: Option<u32>,
    },
    Ended {
        call: CallHandle,
        cause: EndCause,
    },
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO";
const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";

pub struct Endpoint {
    cfg: EndpointConfig,
    txs: TransactionLayer,
    dialogs: HashMap<CallHandle, Dialog>,
    /// (Call-ID, our tag) -> call.
    dialog_index: HashMap<(String, String), CallHandle>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_call: u64,
    malformed: u64,
    rng: StdRng,
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig) -> Self {
        let timers = TimerValues {
            t1: cfg.t1,
            t2: cfg.t2,
            t4: cfg.t4,
        };
        Self {
            cfg,
            txs: TransactionLayer::new(timers),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_call: 1,
            malformed: 0,
            rng: StdRng::from_os_rng(),
        }
    }

    /// One complete SIP message (UDP datagram, or one framed TCP message) from `source`.
    pub fn handle_input(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        data: &[u8],
    ) {
        match message::parse(data, &self.cfg.limits) {
            Ok(None) => {}
            Ok(Some(Message::Request(req))) => self.on_request(now, source, transport, req),
            Ok(Some(Message::Response(resp))) => self.on_response(now, resp),
            Err(failure) => self.on_malformed(source, transport, failure),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let events = self.txs.handle_timeout(now, &mut self.transmits);
        for ev in events {
            self.on_tx_event(now, ev);
        }
    }

    /// Earliest armed timer (top of the timer heap; O(1)).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txs.next_deadline()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn active_calls(&self) -> usize {
        self.dialogs.len()
    }

    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// Messages rejected at the parse stage so far (each logged by exactly one warning).
    pub fn malformed_messages(&self) -> u64 {
        self.malformed
    }

    /// Sends 180 Ringing (ignored unless the call is still ringing).
    pub fn ring(&mut self, call: CallHandle, now: Instant) {
        let Some(d) = self.dialogs.get(&call) else {
            tracing::debug!(?call, "ring for unknown call ignored");
            return;
        };
        let (Some(tx), DialogState::Early) = (d.invite_tx, d.state) else {
            return;
        };
        let tag = d.local_tag.clone();
        let contact = self.contact(d.transport);
        self.reply(tx, now, 180, Some(&tag), true, vec![contact], &[]);
    }

    /// 200 OK with SDP, retransmitted (UDP) until the ACK arrives.
    pub fn answer(
        &mut self,
        call: CallHandle,
        local_sdp: Vec<u8>,
        now: Instant,
    ) -> Result<(), SipError> {
        let d = self.dialogs.get(&call).ok_or(SipError::UnknownCall(call))?;
        let tx = match (d.state, d.invite_tx) {
            (DialogState::Early, Some(tx)) => tx,
            (state, _) => return Err(invalid(call, "answer", state)),
        };
        let tag = d.local_tag.clone();
        let extra = self.answer_headers(d.transport);
        if !self.reply(tx, now, 200, Some(&tag), true, extra, &local_sdp) {
            return Err(SipError::InvalidState {
                call,
                action: "answer",
                state: "already answered",
            });
        }
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.state = DialogState::WaitAck;
        }
        Ok(())
    }

    /// Final non-2xx to the initial INVITE (e.g. 486, 488, 503). The call is released
    /// at once; no `Ended` event follows.
    pub fn reject(&mut self, call: CallHandle, status: u16, now: Instant) -> Result<(), SipError> {
        if !(300..=699).contains(&status) {
            return Err(SipError::BadStatus {
                status,
                action: "reject",
            });
        }
        let d = self.dialogs.get(&call).ok_or(SipError::UnknownCall(call))?;
        let tx = match (d.state, d.invite_tx) {
            (DialogState::Early, Some(tx)) => tx,
            (state, _) => return Err(invalid(call, "reject", state)),
        };
        let tag = d.local_tag.clone();
        self.reply(tx, now, status, Some(&tag), false, Vec::new(), &[]);
        self.remove_dialog(call);
        Ok(())
    }

    /// Ends the call: 480 if still ringing, otherwise BYE through the route set (deferred
    /// until the ACK while our 2xx is unacknowledged). Always ends with `LocalByeDone`.
    pub fn hangup(&mut self, call: CallHandle, now: Instant) -> Result<(), SipError> {
        let d = self
            .dialogs
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        match d.state {
            DialogState::Early => {
                let tag = d.local_tag.clone();
                if let Some(tx) = d.invite_tx {
                    self.reply(tx, now, 480, Some(&tag), false, Vec::new(), &[]);
                }
                self.remove_dialog(call);
                self.events.push_back(Event::Ended {
                    call,
                    cause: EndCause::LocalByeDone,
                });
            }
            DialogState::WaitAck => d.hangup_requested = true,
            DialogState::Confirmed => {
                self.terminate_reinvite(call, now);
                self.start_bye(call, now);
            }
            DialogState::Terminating => return Err(invalid(call, "hang up", d.state)),
        }
        Ok(())
    }

    pub fn answer_reinvite(
        &mut self,
        call: CallHandle,
        local_sdp: Vec<u8>,
        now: Instant,
    ) -> Result<(), SipError> {
        let d = self.dialogs.get(&call).ok_or(SipError::UnknownCall(call))?;
        let Some(p) = d.reinvite.filter(|p| !p.answered) else {
            return Err(SipError::InvalidState {
                call,
                action: "answer a re-INVITE",
                state: "without a pending re-INVITE",
            });
        };
        let extra = self.answer_headers(d.transport);
        self.reply(p.tx, now, 200, None, true, extra, &local_sdp);
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.reinvite = Some(PendingReInvite {
                answered: true,
                ..p
            });
        }
        Ok(())
    }

    /// Non-2xx to a pending re-INVITE (e.g. 488); the call stays up.
    pub fn reject_reinvite(
        &mut self,
        call: CallHandle,
        status: u16,
        now: Instant,
    ) -> Result<(), SipError> {
        if !(300..=699).contains(&status) {
            return Err(SipError::BadStatus {
                status,
                action: "reject_reinvite",
            });
        }
        let d = self
            .dialogs
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        let Some(p) = d.reinvite.filter(|p| !p.answered) else {
            return Err(SipError::InvalidState {
                call,
                action: "reject a re-INVITE",
                state: "without a pending re-INVITE",
            });
        };
        d.reinvite = None;
        self.reply(p.tx, now, status, None, false, Vec::new(), &[]);
        Ok(())
    }

    // ----- incoming messages -----

    fn on_malformed(&mut self, source: SocketAddr, transport: Transport, failure: ParseFailure) {
        let oversize_udp = transport == Transport::Udp
            && matches!(
                failure.error,
                SipError::TooLarge {
                    what: "message",
                    ..
                }
            );
        let answer = failure.partial.as_ref().filter(|_| !oversize_udp);
        let code = failure.error.status_code();
        self.malformed = self.malformed.saturating_add(1);
        tracing::warn!(
            %source,
            ?transport,
            reason = %failure.error,
            action = if answer.is_some() { "answered" } else { "dropped" },
            status = answer.map(|_| code),
            "malformed SIP message"
        );
        let Some(partial) = answer else {
            return;
        };
        let ctx = ResponseCtx::from_partial(partial, source, transport);
        let tag = self.new_tag();
        let headers = vec![hdr("Server", self.cfg.user_agent.clone())];
        let payload = ctx.response(
            code,
            &failure.error.reason_phrase(),
            Some(&tag),
            false,
            headers,
            &[],
        );
        self.transmits.push_back(Transmit {
            transport,
            destination: ctx.destination,
            payload,
        });
    }

    fn on_request(&mut self, now: Instant, source: SocketAddr, transport: Transport, req: Request) {
        let Some(key) = TxKey::server(&req) else {
            return;
        };
        if req.method == Method::Ack {
            if let Some(id) = self.txs.find(&key) {
                match self.txs.get(id).map(|t| t.state) {
                    Some(TxState::Completed) => {
                        self.txs.ack_non_2xx(id, now);
                        return;
                    }
                    // An ACK for our 2xx that reuses the INVITE branch (RFC 2543 style).
                    Some(TxState::Accepted) => {}
                    _ => return,
                }
            }
            self.on_ack(now, req);
            return;
        }
        if let Some(id) = self.txs.find(&key) {
            self.txs.retransmit_response(id, &mut self.transmits);
            return;
        }
        let ctx = ResponseCtx::from_request(&req, source, transport);
        if self.txs.len() >= self.cfg.limits.max_transactions {
            tracing::debug!(%source, "transaction limit reached, answering 503");
            let tag = self.new_tag();
            let headers = vec![
                hdr("Retry-After", "5"),
                hdr("Server", self.cfg.user_agent.clone()),
            ];
            let payload = ctx.response(503, reason_phrase(503), Some(&tag), false, headers, &[]);
            self.transmits.push_back(Transmit {
                transport,
                destination: ctx.destination,
                payload,
            });
            return;
        }
        match req.method {
            Method::Invite if req.to.tag.is_none() => {
                self.on_invite(now, source, transport, key, ctx, req)
            }
            Method::Invite => self.on_reinvite(now, key, ctx, req),
            Method::Cancel => self.on_cancel(now, key, ctx, req),
            Method::Bye => self.on_bye(now, key, ctx, req),
            Method::Options => {
                let extra = vec![hdr("Allow", ALLOW), hdr("Accept", ACCEPT)];
                self.answer_stateful(now, key, ctx, &req, 200, extra);
            }
            Method::Info => self.on_info(now, key, ctx, req),
            Method::Register
            | Method::Subscribe
            | Method::Notify
            | Method::Refer
            | Method::Message
            | Method::Publish
            | Method::Update
            | Method::Prack => {
                self.answer_stateful(now, key, ctx, &req, 405, vec![hdr("Allow", ALLOW)]);
            }
            Method::Other(_) => {
                self.answer_stateful(now, key, ctx, &req, 501, vec![hdr("Allow", ALLOW)]);
            }
            Method::Ack => {}
        }
    }

    fn on_invite(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        key: TxKey,
        ctx: ResponseCtx,
        req: Request,
    ) {
        if !req.require.is_empty() {
            let unsupported = req.require.join(", ");
            self.answer_stateful(
                now,
                key,
                ctx,
                &req,
                420,
                vec![hdr("Unsupported", unsupported)],
            );
            return;
        }
        if !req.body.is_empty() && req.media_type().as_deref() != Some("application/sdp") {
            self.answer_stateful(now, key, ctx, &req, 415, vec![hdr("Accept", ACCEPT)]);
            return;
        }
        let call = CallHandle(self.next_call);
        self.next_call = self.next_call.wrapping_add(1);
        let tx = self.txs.create_server(ServerTxInit {
            key,
            kind: TxKind::InviteServer,
            method: Method::Invite,
            ctx,
            call: Some(call),
        });
        self.reply(tx, now, 100, None, false, Vec::new(), &[]);
        let local_tag = self.new_tag();
        let dialog = Dialog::new_uas(call, &req, local_tag, source, transport, tx);
        self.dialog_index.insert(dialog.key(), call);
        self.dialogs.insert(call, dialog);
        self.events.push_back(Event::IncomingCall(IncomingCall {
            call,
            call_id: req.call_id.clone(),
            from_user: req.from.user(),
            from_uri: req.from.uri,
            from_display: req.from.display,
            to_user: req.to.user(),
            to_uri: req.to.uri,
            remote_sdp: (!req.body.is_empty()).then_some(req.body),
            source,
            transport,
        }));
    }

    fn on_reinvite(&mut self, now: Instant, key: TxKey, ctx: ResponseCtx, req: Request) {
        let Some(call) = self.find_dialog(&req) else {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        };
        if let Some(code) = self.check_cseq(call, &req) {
            self.answer_stateful(now, key, ctx, &req, code, Vec::new());
            return;
        }
        let Some(d) = self.dialogs.get(&call) else {
            return;
        };
        let busy = d.reinvite.is_some() || d.state != DialogState::Confirmed;
        if d.state == DialogState::Terminating {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        }
        if busy {
            self.answer_stateful(now, key, ctx, &req, 491, Vec::new());
            return;
        }
        if !req.body.is_empty() && req.media_type().as_deref() != Some("application/sdp") {
            self.answer_stateful(now, key, ctx, &req, 415, vec![hdr("Accept", ACCEPT)]);
            return;
        }
        let tx = self.txs.create_server(ServerTxInit {
            key,
            kind: TxKind::InviteServer,
            method: Method::Invite,
            ctx,
            call: Some(call),
        });
        self.reply(tx, now, 100, None, false, Vec::new(), &[]);
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.refresh_target(req.contact.as_ref());
            d.reinvite = Some(PendingReInvite {
                tx,
                cseq: req.cseq.seq,
                answered: false,
            });
        }
        self.events.push_back(Event::ReInvite {
            call,
            remote_sdp: (!req.body.is_empty()).then_some(req.body),
        });
    }

    /// ACK that matched no INVITE server transaction in Completed: an ACK for a 2xx.
    fn on_ack(&mut self, now: Instant, req: Request) {
        let Some(call) = self.find_dialog(&req) else {
            tracing::debug!(call_id = %req.call_id, "ACK matching no dialog dropped");
            return;
        };
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        let sdp = (!req.body.is_empty()).then_some(req.body);
        if d.state == DialogState::WaitAck && req.cseq.seq == d.invite_cseq {
            if let Some(tx) = d.invite_tx.take() {
                self.txs.ack_2xx(tx);
            }
            d.state = DialogState::Confirmed;
            if d.hangup_requested {
                self.start_bye(call, now);
            } else {
                self.events.push_back(Event::Confirmed {
                    call,
                    remote_sdp: sdp,
                });
            }
            return;
        }
        if let Some(p) = d.reinvite.filter(|p| p.answered && p.cseq == req.cseq.seq) {
            d.reinvite = None;
            self.txs.ack_2xx(p.tx);
            if sdp.is_some() {
                self.events.push_back(Event::Confirmed {
                    call,
                    remote_sdp: sdp,
                });
            }
        }
    }

    fn on_cancel(&mut self, now: Instant, key: TxKey, ctx: ResponseCtx, req: Request) {
        let invite = TxKey::server_as(&req, &Method::Invite).and_then(|k| self.txs.find(&k));
        let Some(invite_tx) = invite else {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        };
        let (state, call) = match self.txs.get(invite_tx) {
            Some(t) => (Some(t.state), t.call),
            None => (None, None),
        };
        let dialog = call.and_then(|c| self.dialogs.get(&c).map(|d| (c, d.local_tag.clone())));
        let cancel_tx = self.txs.create_server(ServerTxInit {
            key,
            kind: TxKind::NonInviteServer,
            method: Method::Cancel,
            ctx,
            call,
        });
        let tag = dialog
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| self.new_tag());
        self.reply(cancel_tx, now, 200, Some(&tag), false, Vec::new(), &[]);
        if state != Some(TxState::Proceeding) {
            return; // a final response was already sent: CANCEL has no effect (RFC 3261 9.2)
        }
        self.reply(invite_tx, now, 487, Some(&tag), false, Vec::new(), &[]);
        if let Some((call, _)) = dialog {
            let is_initial = self
                .dialogs
                .get(&call)
                .is_some_and(|d| d.invite_tx == Some(invite_tx));
            if is_initial {
                self.remove_dialog(call);
                self.events.push_back(Event::Ended {
                    call,
                    cause: EndCause::Cancelled,
                });
            } else if let Some(d) = self.dialogs.get_mut(&call) {
                // A cancelled re-INVITE: the call stays up.
                if d.reinvite.is_some_and(|p| p.tx == invite_tx) {
                    d.reinvite = None;
                }
            }
        }
    }

    fn on_bye(&mut self, now: Instant, key: TxKey, ctx: ResponseCtx, req: Request) {
        let Some(call) = self.find_dialog(&req) else {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        };
        if let Some(code) = self.check_cseq(call, &req) {
            self.answer_stateful(now, key, ctx, &req, code, Vec::new());
            return;
        }
        self.answer_stateful(now, key, ctx, &req, 200, Vec::new());
        self.terminate_reinvite(call, now);
        if let Some(d) = self.dialogs.get(&call) {
            let tag = d.local_tag.clone();
            match (d.state, d.invite_tx) {
                (DialogState::Early, Some(tx)) => {
                    self.reply(tx, now, 487, Some(&tag), false, Vec::new(), &[]);
                }
                (DialogState::WaitAck, Some(tx)) => {
                    self.txs.ack_2xx(tx); // stop retransmitting the 2xx, no AckTimeout
                }
                _ => {}
            }
        }
        self.remove_dialog(call);
        self.events.push_back(Event::Ended {
            call,
            cause: EndCause::RemoteBye,
        });
    }

    fn on_info(&mut self, now: Instant, key: TxKey, ctx: ResponseCtx, req: Request) {
        let Some(call) = self.find_dialog(&req) else {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        };
        if let Some(code) = self.check_cseq(call, &req) {
            self.answer_stateful(now, key, ctx, &req, code, Vec::new());
            return;
        }
        let media = req.media_type();
        let parsed = match media.as_deref() {
            None if req.body.is_empty() => Ok(None),
            Some("application/dtmf-relay") => parse_dtmf_relay(&req.body).map(Some),
            Some("application/dtmf") => parse_dtmf_plain(&req.body).map(Some),
            _ => {
                self.answer_stateful(now, key, ctx, &req, 415, vec![hdr("Accept", ACCEPT)]);
                return;
            }
        };
        match parsed {
            Ok(dtmf) => {
                self.answer_stateful(now, key, ctx, &req, 200, Vec::new());
                if let Some((digit, duration_ms)) = dtmf {
                    self.events.push_back(Event::Dtmf {
                        call,
                        digit,
                        duration_ms,
                    });
                }
            }
            Err(()) => {
                let tx = self.new_nist(key, ctx, &req);
                let reason = "Bad DTMF Body";
                self.reply_with_reason(tx, now, 400, reason, None, Vec::new());
            }
        }
    }

    fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.vias.first().and_then(|v| v.branch.clone()) else {
            return;
        };
        let key = TxKey::Client {
            branch,
            method: resp.cseq.method.as_str().to_string(),
        };
        let Some(id) = self.txs.find(&key) else {
            tracing::debug!(
                status = resp.status,
                "response matching no transaction dropped"
            );
            return;
        };
        if let Some(ev) = self.txs.client_response(id, now, resp.status) {
            self.on_tx_event(now, ev);
        }
    }

    fn on_tx_event(&mut self, now: Instant, ev: TxEvent) {
        match ev {
            TxEvent::AckTimeout {
                tx,
                call: Some(call),
            } => {
                let Some(d) = self.dialogs.get_mut(&call) else {
                    return;
                };
                let initial = d.invite_tx == Some(tx);
                let reinvite = d.reinvite.is_some_and(|p| p.tx == tx);
                if !initial && !reinvite {
                    return;
                }
                if initial {
                    d.invite_tx = None;
                    d.state = DialogState::Confirmed;
                }
                d.reinvite = None;
                let requested = d.hangup_requested;
                tracing::info!(?call, "no ACK for our 2xx within 64*T1, sending BYE");
                self.start_bye(call, now);
                if !requested {
                    self.remove_dialog(call);
                    self.events.push_back(Event::Ended {
                        call,
                        cause: EndCause::AckTimeout,
                    });
                }
            }
            TxEvent::ClientFinal {
                call: Some(call),
                method: Method::Bye,
                ..
            }
            | TxEvent::ClientTimeout {
                call: Some(call),
                method: Method::Bye,
            } if self
                .dialogs
                .get(&call)
                .is_some_and(|d| d.state == DialogState::Terminating) =>
            {
                self.remove_dialog(call);
                self.events.push_back(Event::Ended {
                    call,
                    cause: EndCause::LocalByeDone,
                });
            }
            _ => {}
        }
    }

    // ----- helpers -----

    fn find_dialog(&self, req: &Request) -> Option<CallHandle> {
        let tag = req.to.tag.as_ref()?;
        let call = *self.dialog_index.get(&(req.call_id.clone(), tag.clone()))?;
        self.dialogs
            .get(&call)
            .filter(|d| d.matches_remote(req))
            .map(|d| d.call)
    }

    /// RFC 3261 12.2.2: a lower CSeq than the last one is out of order (500).
    fn check_cseq(&mut self, call: CallHandle, req: &Request) -> Option<u16> {
        let d = self.dialogs.get_mut(&call)?;
        if req.cseq.seq < d.remote_cseq {
            return Some(500);
        }
        d.remote_cseq = req.cseq.seq;
        None
    }

    fn new_nist(&mut self, key: TxKey, ctx: ResponseCtx, req: &Request) -> TxId {
        self.txs.create_server(ServerTxInit {
            key,
            kind: TxKind::NonInviteServer,
            method: req.method.clone(),
            ctx,
            call: None,
        })
    }

    /// Creates the server transaction for `req` and sends one final response on it.
    fn answer_stateful(
        &mut self,
        now: Instant,
        key: TxKey,
        ctx: ResponseCtx,
        req: &Request,
        code: u16,
        extra: Vec<Header>,
    ) {
        let tx = if req.method == Method::Invite {
            self.txs.create_server(ServerTxInit {
                key,
                kind: TxKind::InviteServer,
                method: Method::Invite,
                ctx,
                call: None,
            })
        } else {
            self.new_nist(key, ctx, req)
        };
        let tag = req.to.tag.is_none().then(|| self.new_tag());
        self.reply_with_reason(tx, now, code, reason_phrase(code), tag.as_deref(), extra);
    }

    fn reply_with_reason(
        &mut self,
        tx: TxId,
        now: Instant,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        mut extra: Vec<Header>,
    ) {
        let Some(ctx) = self.txs.get(tx).and_then(|t| t.response_ctx.as_ref()) else {
            return;
        };
        extra.push(hdr("Server", self.cfg.user_agent.clone()));
        let tag = to_tag
            .map(str::to_string)
            .or_else(|| (!ctx.to_has_tag).then(|| format!("{:016x}", self.rng.random::<u64>())));
        let payload = ctx.response(code, reason, tag.as_deref(), false, extra, &[]);
        self.txs
            .respond(tx, now, code, payload, &mut self.transmits);
    }

    /// Sends a response on a server transaction. Returns false if nothing was sent.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        tx: TxId,
        now: Instant,
        code: u16,
        to_tag: Option<&str>,
        dialog_response: bool,
        mut extra: Vec<Header>,
        body: &[u8],
    ) -> bool {
        let Some(ctx) = self.txs.get(tx).and_then(|t| t.response_ctx.as_ref()) else {
            return false;
        };
        extra.push(hdr("Server", self.cfg.user_agent.clone()));
        let to_tag = if code == 100 { None } else { to_tag };
        let payload = ctx.response(
            code,
            reason_phrase(code),
            to_tag,
            dialog_response,
            extra,
            body,
        );
        self.txs
            .respond(tx, now, code, payload, &mut self.transmits)
    }

    fn contact(&self, transport: Transport) -> Header {
        let suffix = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
        };
        hdr(
            "Contact",
            format!("<sip:warmline@{}{suffix}>", self.cfg.public_addr),
        )
    }

    fn answer_headers(&self, transport: Transport) -> Vec<Header> {
        vec![
            self.contact(transport),
            hdr("Allow", ALLOW),
            hdr("Content-Type", "application/sdp"),
        ]
    }

    /// 487 to a re-INVITE the app has not answered yet (the call is going away).
    fn terminate_reinvite(&mut self, call: CallHandle, now: Instant) {
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        if let Some(p) = d.reinvite.take() {
            if !p.answered {
                self.reply(p.tx, now, 487, None, false, Vec::new(), &[]);
            }
        }
    }

    fn start_bye(&mut self, call: CallHandle, now: Instant) {
        let branch = format!("z9hG4bK{:016x}", self.rng.random::<u64>());
        let (public_addr, ua) = (self.cfg.public_addr, self.cfg.user_agent.clone());
        let Some(d) = self.dialogs.get_mut(&call) else {
            return;
        };
        d.state = DialogState::Terminating;
        let out = d.build_request(Method::Bye, public_addr, &branch, &ua);
        let key = TxKey::Client {
            branch,
            method: "BYE".into(),
        };
        self.txs.create_client(
            now,
            key,
            Method::Bye,
            out.transport,
            out.destination,
            out.payload,
            Some(call),
            &mut self.transmits,
        );
    }

    fn remove_dialog(&mut self, call: CallHandle) {
        if let Some(d) = self.dialogs.remove(&call) {
            self.dialog_index.remove(&d.key());
        }
    }

    fn new_tag(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }
}

fn invalid(call: CallHandle, action: &'static str, state: DialogState) -> SipError {
    SipError::InvalidState {
        call,
        action,
        state: state.name(),
    }
}

/// `application/dtmf-relay`: `Signal=5\r\nDuration=160`.
fn parse_dtmf_relay(body: &[u8]) -> Result<(char, Option<u32>), ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    let mut digit = None;
    let mut duration = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("signal") {
            digit = Some(dtmf_digit(v).ok_or(())?);
        } else if k.eq_ignore_ascii_case("duration") {
            duration = v.parse::<u32>().ok();
        }
    }
    digit.map(|d| (d, duration)).ok_or(())
}

/// `application/dtmf`: the digit alone (or its RFC 4733 event code).
fn parse_dtmf_plain(body: &[u8]) -> Result<(char, Option<u32>), ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    dtmf_digit(text.trim()).map(|d| (d, None)).ok_or(())
}

fn dtmf_digit(v: &str) -> Option<char> {
    let mut chars = v.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        // Two-digit RFC 4733 event codes: 10 = *, 11 = #, 12..15 = A..D.
        return match v {
            "10" => Some('*'),
            "11" => Some('#'),
            "12" => Some('A'),
            "13" => Some('B'),
            "14" => Some('C'),
            "15" => Some('D'),
            _ => None,
        };
    };
    match c {
        '0'..='9' | '*' | '#' => Some(c),
        'A'..='D' | 'a'..='d' => Some(c.to_ascii_uppercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Response as SipResponse};

    const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    const ANSWER: &[u8] = b"v=0\r\no=- 2 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A request crafted the way SIPp's uac scenarios write them.
    #[derive(Clone, Debug)]
    struct Req {
        method: String,
        cseq_method: String,
        ruri: String,
        branch: String,
        call_id: String,
        from_tag: String,
        to_tag: Option<String>,
        cseq: u32,
        via_sent_by: String,
        via_transport: &'static str,
        rport: bool,
        extra: Vec<String>,
        content_type: Option<String>,
        body: Vec<u8>,
        compact: bool,
    }

    impl Req {
        fn invite(call_id: &str) -> Req {
            Req {
                method: "INVITE".into(),
                cseq_method: "INVITE".into(),
                ruri: "sip:service@10.0.0.1:5060".into(),
                branch: format!("z9hG4bK-{call_id}-1"),
                call_id: call_id.into(),
                from_tag: format!("{call_id}-ft"),
                to_tag: None,
                cseq: 1,
                via_sent_by: "10.0.0.2:5061".into(),
                via_transport: "UDP",
                rport: false,
                extra: vec![
                    "Contact: sip:alice@10.0.0.2:5061".into(),
                    "Max-Forwards: 70".into(),
                    "Subject: Performance Test".into(),
                ],
                content_type: Some("application/sdp".into()),
                body: SDP.to_vec(),
                compact: false,
            }
        }

        fn in_dialog(&self, method: &str, to_tag: &str, cseq: u32, n: u32) -> Req {
            Req {
                method: method.into(),
                cseq_method: method.into(),
                ruri: "sip:service@10.0.0.1:5060".into(),
                branch: format!("z9hG4bK-{}-{method}-{n}", self.call_id),
                to_tag: Some(to_tag.into()),
                cseq,
                extra: vec!["Max-Forwards: 70".into()],
                content_type: None,
                body: Vec::new(),
                ..self.clone()
            }
        }

        /// ACK for a 2xx: a new transaction.
        fn ack_2xx(&self, to_tag: &str) -> Req {
            let mut ack = self.in_dialog("ACK", to_tag, self.cseq, 0);
            ack.branch = format!("{}-ack", self.branch);
            ack
        }

        /// ACK for a non-2xx: same branch as the INVITE.
        fn ack_non_2xx(&self, to_tag: &str) -> Req {
            let mut ack = self.in_dialog("ACK", to_tag, self.cseq, 0);
            ack.branch = self.branch.clone();
            ack
        }

        fn cancel(&self) -> Req {
            Req {
                method: "CANCEL".into(),
                cseq_method: "CANCEL".into(),
                extra: vec!["Max-Forwards: 70".into()],
                content_type: None,
                body: Vec::new(),
                ..self.clone()
            }
        }

        fn with_body(mut self, ct: &str, body: &[u8]) -> Req {
            self.content_type = Some(ct.into());
            self.body = body.to_vec();
            self
        }

        fn no_body(mut self) -> Req {
            self.content_type = None;
            self.body.clear();
            self
        }

        fn build(&self) -> Vec<u8> {
            let n =
                |full: &'static str, short: &'static str| if self.compact { short } else { full };
            let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.ruri);
            s += &format!(
                "{}: SIP/2.0/{} {};branch={}{}\r\n",
                n("Via", "v"),
                self.via_transport,
                self.via_sent_by,
                self.branch,
                if self.rport { ";rport" } else { "" }
            );
            s += &format!(
                "{}: \"Alice\" <sip:alice@10.0.0.2:5061>;tag={}\r\n",
                n("From", "f"),
                self.from_tag
            );
            match &self.to_tag {
                Some(t) => {
                    s += &format!("{}: <sip:service@10.0.0.1:5060>;tag={t}\r\n", n("To", "t"))
                }
                None => s += &format!("{}: <sip:service@10.0.0.1:5060>\r\n", n("To", "t")),
            }
            s += &format!("{}: {}\r\n", n("Call-ID", "i"), self.call_id);
            s += &format!("CSeq: {} {}\r\n", self.cseq, self.cseq_method);
            for e in &self.extra {
                match (self.compact, e.strip_prefix("Contact: ")) {
                    (true, Some(c)) => s += &format!("m: {c}\r\n"),
                    _ => s += &format!("{e}\r\n"),
                }
            }
            if let Some(ct) = &self.content_type {
                s += &format!("{}: {ct}\r\n", n("Content-Type", "c"));
            }
            s += &format!("{}: {}\r\n\r\n", n("Content-Length", "l"), self.body.len());
            let mut out = s.into_bytes();
            out.extend_from_slice(&self.body);
            out
        }
    }

    struct Harness {
        ep: Endpoint,
        now: Instant,
        t0: Instant,
        peer: SocketAddr,
        transport: Transport,
        sent: Vec<(Instant, Transmit)>,
        events: Vec<Event>,
    }

    impl Harness {
        fn new(transport: Transport) -> Harness {
            Self::with_config(
                transport,
                EndpointConfig::new("10.0.0.1:5060".parse().unwrap()),
            )
        }

        fn with_config(transport: Transport, cfg: EndpointConfig) -> Harness {
            let t0 = Instant::now();
            Harness {
                ep: Endpoint::new(cfg),
                now: t0,
                t0,
                peer: "10.0.0.2:5061".parse().unwrap(),
                transport,
                sent: Vec::new(),
                events: Vec::new(),
            }
        }

        fn send(&mut self, req: &Req) {
            let mut req = req.clone();
            if self.transport == Transport::Tcp {
                req.via_transport = "TCP";
            }
            self.send_raw(&req.build());
        }

        fn send_raw(&mut self, bytes: &[u8]) {
            self.ep
                .handle_input(self.now, self.peer, self.transport, bytes);
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(t) = self.ep.poll_transmit() {
                self.sent.push((self.now, t));
            }
            while let Some(e) = self.ep.poll_event() {
                self.events.push(e);
            }
        }

        /// Jumps to the next armed timer. False when none is armed.
        fn step(&mut self) -> bool {
            let Some(at) = self.ep.poll_timeout() else {
                return false;
            };
            assert!(at >= self.now, "timer in the past");
            self.now = at;
            self.ep.handle_timeout(at);
            self.drain();
            true
        }

        /// Fires every timer due up to `t`, then sets the clock to `t`.
        fn advance_to(&mut self, t: Instant) {
            while self.ep.poll_timeout().is_some_and(|at| at <= t) {
                self.step();
            }
            self.now = t;
        }

        fn run_idle(&mut self) {
            for _ in 0..100_000 {
                if !self.step() {
                    return;
                }
            }
            panic!("timers never settle");
        }

        fn take_sent(&mut self) -> Vec<Transmit> {
            self.drain();
            self.sent.drain(..).map(|(_, t)| t).collect()
        }

        fn take_events(&mut self) -> Vec<Event> {
            self.drain();
            std::mem::take(&mut self.events)
        }

        fn codes(&mut self) -> Vec<u16> {
            self.take_sent().iter().map(|t| resp(t).status).collect()
        }

        fn assert_clean(&mut self) {
            self.run_idle();
            assert_eq!(self.ep.transaction_count(), 0, "transactions leaked");
            assert_eq!(self.ep.active_calls(), 0, "dialogs leaked");
            assert_eq!(self.ep.poll_timeout(), None);
        }

        /// INVITE -> 100, IncomingCall; returns the call and the INVITE sent.
        fn incoming(&mut self, inv: &Req) -> CallHandle {
            self.send(inv);
            assert_eq!(self.codes(), vec![100]);
            match self.take_events().as_slice() {
                [Event::IncomingCall(ic)] => ic.call,
                other => panic!("expected IncomingCall, got {other:?}"),
            }
        }

        /// Full setup up to Confirmed; returns call and our To-tag.
        fn established(&mut self, inv: &Req) -> (CallHandle, String) {
            let call = self.incoming(inv);
            self.ep.answer(call, ANSWER.to_vec(), self.now).unwrap();
            let sent = self.take_sent();
            let tag = to_tag(&sent[0]);
            self.send(&inv.ack_2xx(&tag));
            assert_eq!(
                self.take_events(),
                vec![Event::Confirmed {
                    call,
                    remote_sdp: None
                }]
            );
            (call, tag)
        }
    }

    fn text(t: &Transmit) -> String {
        String::from_utf8_lossy(&t.payload).into_owned()
    }

    fn resp(t: &Transmit) -> SipResponse {
        match parse(&t.payload, &Limits::default()) {
            Ok(Some(Message::Response(r))) => r,
            other => panic!("not a response: {other:?}\n{}", text(t)),
        }
    }

    fn to_tag(t: &Transmit) -> String {
        resp(t).to.tag.expect("response has a To tag")
    }

    fn header_values(t: &Transmit, name: &str) -> Vec<String> {
        let text = text(t);
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
        head.split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// The peer's response to a request we sent (copies Via/From/To/Call-ID/CSeq).
    fn reply_to(req: &Transmit, code: u16) -> Vec<u8> {
        let text = text(req);
        let mut s = format!("SIP/2.0 {code} {}\r\n", reason_phrase(code));
        for line in text.split("\r\n") {
            if ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|p| line.starts_with(p))
            {
                s += line;
                s += "\r\n";
            }
        }
        s += "Content-Length: 0\r\n\r\n";
        s.into_bytes()
    }

    #[test]
    fn basic_call_ring_answer_ack_remote_bye() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("basic");
        h.send(&inv);
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        let trying = resp(&sent[0]);
        assert_eq!(trying.status, 100);
        assert_eq!(trying.to.tag, None, "100 carries no To tag");
        assert_eq!(sent[0].destination, "10.0.0.2:5061".parse().unwrap());
        let call = match h.take_events().as_slice() {
            [Event::IncomingCall(ic)] => {
                assert_eq!(ic.from_user.as_deref(), Some("alice"));
                assert_eq!(ic.from_display.as_deref(), Some("Alice"));
                assert_eq!(ic.to_user.as_deref(), Some("service"));
                assert_eq!(ic.call_id, "basic");
                assert_eq!(ic.remote_sdp.as_deref(), Some(SDP));
                assert_eq!(ic.transport, Transport::Udp);
                ic.call
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(h.ep.active_calls(), 1);

        h.ep.ring(call, h.now);
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 180);
        let tag = to_tag(&sent[0]);
        assert!(tag.len() >= 8);
        assert_eq!(
            header_values(&sent[0], "Contact"),
            vec!["<sip:warmline@10.0.0.1:5060>"]
        );

        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let sent = h.take_sent();
        let ok = resp(&sent[0]);
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.to.tag.as_deref(),
            Some(tag.as_str()),
            "same tag on all responses"
        );
        assert_eq!(ok.body, ANSWER);
        assert_eq!(
            header_values(&sent[0], "Content-Type"),
            vec!["application/sdp"]
        );
        assert!(
            h.ep.answer(call, ANSWER.to_vec(), h.now).is_err(),
            "answer twice"
        );

        h.send(&inv.ack_2xx(&tag));
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: None
            }]
        );
        assert!(h.take_sent().is_empty());

        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 200);
        assert_eq!(resp(&sent[0]).cseq.method, Method::Bye);
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::RemoteBye
            }]
        );
        assert_eq!(h.ep.active_calls(), 0);
        h.assert_clean();
    }

    #[test]
    fn ok_retransmitted_500ms_1s_2s_4s_4s_until_ack() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("retx");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let first = h.take_sent();
        let tag = to_tag(&first[0]);
        h.advance_to(h.t0 + ms(12_000));
        let times: Vec<Duration> = h
            .sent
            .iter()
            .map(|(at, t)| {
                assert_eq!(t.payload, first[0].payload, "identical retransmission");
                *at - h.t0
            })
            .collect();
        assert_eq!(
            times,
            vec![ms(500), ms(1500), ms(3500), ms(7500), ms(11_500)]
        );
        h.take_sent();
        h.send(&inv.ack_2xx(&tag));
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: None
            }]
        );
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(32_000)),
            "cancelled retransmit timer is not reported; only Timer L remains"
        );
        h.run_idle();
        assert!(h.take_sent().is_empty(), "no 200 after the ACK");
        assert_eq!(h.ep.active_calls(), 1);
        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        assert_eq!(h.codes(), vec![200]);
        h.assert_clean();
    }

    #[test]
    fn timer_h_sends_bye_and_reports_ack_timeout() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("noack");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        h.take_sent();
        let bye = loop {
            assert!(h.step(), "BYE never sent");
            if let Some(pos) = h.sent.iter().position(|(_, t)| text(t).starts_with("BYE ")) {
                break h.sent.remove(pos);
            }
        };
        assert_eq!(bye.0 - h.t0, ms(32_000), "64*T1");
        let retx = h.take_sent();
        assert_eq!(retx.len(), 10, "200 retransmitted 10 times before Timer H");
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::AckTimeout
            }]
        );
        assert_eq!(h.ep.active_calls(), 0);
        assert!(text(&bye.1).starts_with("BYE sip:alice@10.0.0.2:5061 SIP/2.0\r\n"));
        // The peer answers the BYE: no second Ended event.
        h.send_raw(&reply_to(&bye.1, 200));
        h.run_idle();
        assert!(h.take_events().is_empty());
        assert!(h.take_sent().is_empty(), "BYE stops after its 200");
        h.assert_clean();
    }

    #[test]
    fn invite_retransmissions_are_absorbed() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("dup");
        let call = h.incoming(&inv);
        h.send(&inv);
        assert_eq!(h.codes(), vec![100]);
        assert!(h.take_events().is_empty(), "no second IncomingCall");
        h.ep.ring(call, h.now);
        h.take_sent();
        h.send(&inv);
        assert_eq!(h.codes(), vec![180]);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let tag = to_tag(&h.take_sent()[0]);
        h.send(&inv);
        assert_eq!(h.codes(), vec![200]);
        h.send(&inv.ack_2xx(&tag));
        h.send(&inv); // after ACK, within Timer L: absorbed silently
        assert!(h.take_sent().is_empty());
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: None
            }]
        );
        assert_eq!(h.ep.active_calls(), 1);
        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        h.assert_clean();
    }

    #[test]
    fn cancel_gives_200_and_487_then_ack_is_absorbed() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("cancel");
        let call = h.incoming(&inv);
        h.ep.ring(call, h.now);
        let tag = to_tag(&h.take_sent()[0]);
        h.send(&inv.cancel());
        let sent = h.take_sent();
        let rs: Vec<SipResponse> = sent.iter().map(resp).collect();
        assert_eq!(rs.len(), 2);
        assert_eq!((rs[0].status, &rs[0].cseq.method), (200, &Method::Cancel));
        assert_eq!((rs[1].status, &rs[1].cseq.method), (487, &Method::Invite));
        assert_eq!(rs[1].to.tag.as_deref(), Some(tag.as_str()));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::Cancelled
            }]
        );
        assert_eq!(h.ep.active_calls(), 0);
        assert_eq!(
            h.ep.answer(call, ANSWER.to_vec(), h.now),
            Err(SipError::UnknownCall(call))
        );
        // 487 is retransmitted until the ACK.
        h.step();
        assert_eq!(h.codes(), vec![487]);
        h.send(&inv.ack_non_2xx(&tag));
        assert!(h.take_sent().is_empty());
        h.run_idle();
        assert!(h.take_sent().is_empty(), "no 487 after the ACK");
        assert!(h.take_events().is_empty());
        h.assert_clean();
    }

    #[test]
    fn cancel_for_unknown_transaction_is_481() {
        let mut h = Harness::new(Transport::Udp);
        h.send(&Req::invite("nothing").cancel());
        assert_eq!(h.codes(), vec![481]);
        h.assert_clean();
    }

    #[test]
    fn late_offer_answer_arrives_in_ack() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("late").no_body();
        h.send(&inv);
        h.take_sent();
        let call = match h.take_events().as_slice() {
            [Event::IncomingCall(ic)] => {
                assert_eq!(ic.remote_sdp, None);
                ic.call
            }
            other => panic!("{other:?}"),
        };
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let tag = to_tag(&h.take_sent()[0]);
        h.send(&inv.ack_2xx(&tag).with_body("application/sdp", SDP));
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: Some(SDP.to_vec())
            }]
        );
        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        h.assert_clean();
    }

    #[test]
    fn local_hangup_follows_record_route_and_retransmits_bye() {
        let mut h = Harness::new(Transport::Udp);
        let mut inv = Req::invite("rr");
        inv.extra = vec![
            "Record-Route: <sip:10.0.0.50:5080;lr>, <sip:10.0.0.51;lr;ftag=x>".into(),
            "Contact: <sip:alice@10.0.0.2:5061;transport=udp>".into(),
            "Max-Forwards: 69".into(),
        ];
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let ok = h.take_sent();
        assert_eq!(
            header_values(&ok[0], "Record-Route"),
            vec!["<sip:10.0.0.50:5080;lr>", "<sip:10.0.0.51;lr;ftag=x>"],
            "Record-Route copied in order"
        );
        let tag = to_tag(&ok[0]);
        h.send(&inv.ack_2xx(&tag));
        h.take_events();

        h.ep.hangup(call, h.now).unwrap();
        assert!(h.ep.hangup(call, h.now).is_err(), "second hangup refused");
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        let bye = &sent[0];
        assert_eq!(
            bye.destination,
            "10.0.0.50:5080".parse().unwrap(),
            "first route"
        );
        let t = text(bye);
        assert!(
            t.starts_with("BYE sip:alice@10.0.0.2:5061;transport=udp SIP/2.0\r\n"),
            "{t}"
        );
        assert_eq!(
            header_values(bye, "Route"),
            vec!["<sip:10.0.0.50:5080;lr>", "<sip:10.0.0.51;lr;ftag=x>"]
        );
        assert_eq!(header_values(bye, "CSeq"), vec!["1 BYE"]);
        assert_eq!(
            header_values(bye, "From"),
            vec![format!("<sip:service@10.0.0.1:5060>;tag={tag}")]
        );
        assert_eq!(
            header_values(bye, "To"),
            vec!["\"Alice\" <sip:alice@10.0.0.2:5061>;tag=rr-ft"]
        );
        let via = &header_values(bye, "Via")[0];
        assert!(
            via.starts_with("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK"),
            "{via}"
        );

        h.step();
        let retx = h.take_sent();
        assert_eq!(h.now - h.t0, ms(500), "Timer E");
        assert_eq!(retx[0].payload, bye.payload);
        assert!(h.take_events().is_empty());

        h.send_raw(&reply_to(bye, 200));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        h.send_raw(&reply_to(bye, 200)); // retransmitted 200: absorbed
        assert!(h.take_events().is_empty());
        h.assert_clean();
        assert!(h.take_sent().is_empty(), "no BYE after its 200");
    }

    #[test]
    fn local_bye_timeout_still_ends_the_call() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("byeto");
        let (call, _) = h.established(&inv);
        h.ep.hangup(call, h.now).unwrap();
        h.run_idle();
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        // E: 0.5, 1.5, 3.5, 7.5, then every 4 s up to F at 32 s
        let byes = h.take_sent().len();
        assert_eq!(byes, 1 + 10);
        h.assert_clean();
    }

    #[test]
    fn hangup_and_reject_before_answer() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("early");
        let call = h.incoming(&inv);
        h.ep.hangup(call, h.now).unwrap();
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 480);
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        h.send(&inv.ack_non_2xx(&to_tag(&sent[0])));
        assert!(h.take_sent().is_empty());

        let inv2 = Req::invite("busy");
        let call2 = h.incoming(&inv2);
        assert!(
            h.ep.reject(call2, 200, h.now).is_err(),
            "2xx is not a rejection"
        );
        h.ep.reject(call2, 486, h.now).unwrap();
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 486);
        assert!(h.take_events().is_empty());
        assert_eq!(h.ep.active_calls(), 0);
        h.send(&inv2.ack_non_2xx(&to_tag(&sent[0])));
        h.assert_clean();
        assert!(h.take_sent().is_empty());
    }

    #[test]
    fn hangup_while_waiting_for_ack_sends_bye_after_the_ack() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("defer");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let tag = to_tag(&h.take_sent()[0]);
        h.ep.hangup(call, h.now).unwrap();
        assert!(
            h.take_sent().is_empty(),
            "no BYE before the ACK (RFC 3261 15)"
        );
        h.send(&inv.ack_2xx(&tag));
        let sent = h.take_sent();
        assert!(text(&sent[0]).starts_with("BYE "));
        assert!(
            h.take_events().is_empty(),
            "no Confirmed for a call being hung up"
        );
        h.send_raw(&reply_to(&sent[0], 200));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        h.assert_clean();

        // Same, but the ACK never comes: BYE at Timer H, still LocalByeDone.
        let inv = Req::invite("defer2");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        h.ep.hangup(call, h.now).unwrap();
        let bye = loop {
            assert!(h.step());
            if let Some(t) = h
                .take_sent()
                .into_iter()
                .find(|t| text(t).starts_with("BYE "))
            {
                break t;
            }
        };
        assert!(h.take_events().is_empty());
        h.send_raw(&reply_to(&bye, 200));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        h.assert_clean();
    }

    #[test]
    fn cancel_after_answer_has_no_effect() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("late-cancel");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let tag = to_tag(&h.take_sent()[0]);
        h.send(&inv.cancel());
        assert_eq!(h.codes(), vec![200], "200 to the CANCEL, no 487");
        assert!(h.take_events().is_empty());
        h.send(&inv.ack_2xx(&tag));
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: None
            }]
        );
        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        h.assert_clean();
    }

    #[test]
    fn unsupported_require_and_body_type_are_refused() {
        let mut h = Harness::new(Transport::Udp);
        let mut inv = Req::invite("req100rel");
        inv.extra.push("Require: 100rel".into());
        h.send(&inv);
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 420);
        assert_eq!(header_values(&sent[0], "Unsupported"), vec!["100rel"]);
        h.send(&inv.ack_non_2xx(&to_tag(&sent[0])));
        let inv = Req::invite("plain").with_body("text/plain", b"hi");
        h.send(&inv);
        assert_eq!(h.codes(), vec![415]);
        assert!(h.take_events().is_empty());
        assert_eq!(h.ep.active_calls(), 0);
        h.assert_clean();
    }

    #[test]
    fn reinvite_without_ack_ends_the_call() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("reack");
        let (call, tag) = h.established(&inv);
        h.send(
            &inv.in_dialog("INVITE", &tag, 2, 1)
                .with_body("application/sdp", SDP),
        );
        h.take_sent();
        h.take_events();
        h.ep.answer_reinvite(call, ANSWER.to_vec(), h.now).unwrap();
        let start = h.now;
        let bye = loop {
            assert!(h.step());
            if let Some(t) = h
                .take_sent()
                .into_iter()
                .find(|t| text(t).starts_with("BYE "))
            {
                break t;
            }
        };
        assert_eq!(h.now - start, ms(32_000));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::AckTimeout
            }]
        );
        h.send_raw(&reply_to(&bye, 200));
        h.assert_clean();
    }

    #[test]
    fn options_lists_allow_and_accept() {
        let mut h = Harness::new(Transport::Udp);
        let mut opt = Req::invite("opt").no_body();
        opt.method = "OPTIONS".into();
        opt.cseq_method = "OPTIONS".into();
        h.send(&opt);
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 200);
        assert!(resp(&sent[0]).to.tag.is_some());
        assert_eq!(header_values(&sent[0], "Allow"), vec![ALLOW]);
        assert_eq!(header_values(&sent[0], "Accept"), vec![ACCEPT]);
        h.send(&opt); // retransmission answered from the transaction
        assert_eq!(h.codes(), vec![200]);
        h.assert_clean();
    }

    #[test]
    fn register_is_405_and_unknown_method_501() {
        let mut h = Harness::new(Transport::Udp);
        let mut reg = Req::invite("reg").no_body();
        reg.method = "REGISTER".into();
        reg.cseq_method = "REGISTER".into();
        h.send(&reg);
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 405);
        assert_eq!(header_values(&sent[0], "Allow"), vec![ALLOW]);
        let mut foo = reg.clone();
        foo.method = "FOO".into();
        foo.cseq_method = "FOO".into();
        foo.branch = "z9hG4bK-foo".into();
        h.send(&foo);
        assert_eq!(h.codes(), vec![501]);
        h.assert_clean();
    }

    #[test]
    fn info_dtmf_relay_and_dtmf() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("dtmf");
        let (call, tag) = h.established(&inv);
        h.send(
            &inv.in_dialog("INFO", &tag, 2, 1)
                .with_body("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
        );
        assert_eq!(h.codes(), vec![200]);
        assert_eq!(
            h.take_events(),
            vec![Event::Dtmf {
                call,
                digit: '5',
                duration_ms: Some(160)
            }]
        );
        h.send(
            &inv.in_dialog("INFO", &tag, 3, 2)
                .with_body("application/dtmf", b"#"),
        );
        assert_eq!(h.codes(), vec![200]);
        assert_eq!(
            h.take_events(),
            vec![Event::Dtmf {
                call,
                digit: '#',
                duration_ms: None
            }]
        );
        h.send(
            &inv.in_dialog("INFO", &tag, 4, 3)
                .with_body("text/plain", b"hello"),
        );
        assert_eq!(h.codes(), vec![415]);
        h.send(
            &inv.in_dialog("INFO", &tag, 5, 4)
                .with_body("application/dtmf-relay", b"Signal=Z\r\n"),
        );
        assert_eq!(h.codes(), vec![400]);
        h.send(
            &inv.in_dialog("INFO", &tag, 1, 5)
                .with_body("application/dtmf", b"1"),
        );
        assert_eq!(h.codes(), vec![500], "CSeq lower than the last one");
        h.send(
            &inv.in_dialog("INFO", "not-our-tag", 9, 6)
                .with_body("application/dtmf", b"1"),
        );
        assert_eq!(h.codes(), vec![481]);
        assert!(h.take_events().is_empty());
        h.send(&inv.in_dialog("BYE", &tag, 10, 7));
        h.assert_clean();
    }

    #[test]
    fn info_outside_dialog_and_bye_unknown_are_481() {
        let mut h = Harness::new(Transport::Udp);
        let mut info = Req::invite("nodlg").with_body("application/dtmf", b"1");
        info.method = "INFO".into();
        info.cseq_method = "INFO".into();
        h.send(&info);
        assert_eq!(h.codes(), vec![481]);
        h.send(&Req::invite("nodlg2").in_dialog("BYE", "x", 2, 1));
        assert_eq!(h.codes(), vec![481]);
        h.assert_clean();
    }

    #[test]
    fn reinvite_hold_answered_and_rejected_call_stays_up() {
        let mut h = Harness::new(Transport::Udp);
        let inv = Req::invite("reinv");
        let (call, tag) = h.established(&inv);
        let hold: Vec<u8> = [SDP, b"a=sendonly\r\n"].concat();
        let re = inv
            .in_dialog("INVITE", &tag, 2, 1)
            .with_body("application/sdp", &hold);
        h.send(&re);
        assert_eq!(h.codes(), vec![100]);
        assert_eq!(
            h.take_events(),
            vec![Event::ReInvite {
                call,
                remote_sdp: Some(hold.clone())
            }]
        );
        // A second re-INVITE while the first is pending.
        let second = inv
            .in_dialog("INVITE", &tag, 3, 2)
            .with_body("application/sdp", SDP);
        h.send(&second);
        assert_eq!(h.codes(), vec![491]);
        h.send(&second.ack_non_2xx(&tag));
        assert!(h.take_sent().is_empty(), "ACK for the 491 absorbed");
        h.ep.answer_reinvite(call, ANSWER.to_vec(), h.now).unwrap();
        let sent = h.take_sent();
        let ok = resp(&sent[0]);
        assert_eq!((ok.status, ok.cseq.seq), (200, 2));
        assert_eq!(ok.to.tag.as_deref(), Some(tag.as_str()));
        assert_eq!(ok.body, ANSWER);
        assert!(h.ep.answer_reinvite(call, ANSWER.to_vec(), h.now).is_err());
        h.send(&re.ack_2xx(&tag));
        assert!(h.take_events().is_empty(), "ACK without SDP raises nothing");
        assert_eq!(h.ep.active_calls(), 1);
        // Unhold, rejected by the app: the call stays up.
        let unhold = inv
            .in_dialog("INVITE", &tag, 4, 3)
            .with_body("application/sdp", SDP);
        h.send(&unhold);
        assert_eq!(h.codes(), vec![100]);
        h.take_events();
        h.ep.reject_reinvite(call, 488, h.now).unwrap();
        assert_eq!(h.codes(), vec![488]);
        h.send(&unhold.ack_non_2xx(&tag));
        h.run_idle();
        let late = h.take_sent();
        assert!(
            late.is_empty(),
            "no retransmission of 200 or 488 after ACKs: {:?}",
            late.iter().map(text).collect::<Vec<_>>()
        );
        assert_eq!(h.ep.active_calls(), 1);
        assert!(h.take_events().is_empty());
        h.send(&inv.in_dialog("BYE", &tag, 5, 4));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::RemoteBye
            }]
        );
        h.assert_clean();
    }

    #[test]
    fn rport_and_received() {
        let mut h = Harness::new(Transport::Udp);
        h.peer = "203.0.113.5:40000".parse().unwrap();
        let mut opt = Req::invite("nat").no_body();
        opt.method = "OPTIONS".into();
        opt.cseq_method = "OPTIONS".into();
        opt.via_sent_by = "192.168.1.10:5060".into();
        opt.rport = true;
        h.send(&opt);
        let sent = h.take_sent();
        assert_eq!(
            sent[0].destination, h.peer,
            "rport: reply to source ip:port"
        );
        assert_eq!(
            header_values(&sent[0], "Via"),
            vec![format!(
                "SIP/2.0/UDP 192.168.1.10:5060;branch={};rport=40000;received=203.0.113.5",
                opt.branch
            )]
        );
        let mut plain = opt.clone();
        plain.rport = false;
        plain.branch = "z9hG4bK-plain".into();
        plain.via_sent_by = "192.168.1.10:5062".into();
        h.send(&plain);
        let sent = h.take_sent();
        assert_eq!(
            sent[0].destination,
            "203.0.113.5:5062".parse().unwrap(),
            "source IP, Via port"
        );
        assert!(header_values(&sent[0], "Via")[0].ends_with(";received=203.0.113.5"));
        h.assert_clean();
    }

    #[test]
    fn tcp_never_retransmits_but_timer_h_runs() {
        let mut h = Harness::new(Transport::Tcp);
        let inv = Req::invite("tcp");
        let call = h.incoming(&inv);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let sent = h.take_sent();
        assert_eq!(sent[0].transport, Transport::Tcp);
        assert_eq!(sent[0].destination, h.peer);
        assert_eq!(
            header_values(&sent[0], "Contact"),
            vec!["<sip:warmline@10.0.0.1:5060;transport=tcp>"]
        );
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(32_000)),
            "only Timer H armed"
        );
        h.step();
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1, "no 200 retransmission, just the BYE");
        assert!(text(&sent[0]).starts_with("BYE "));
        assert!(header_values(&sent[0], "Via")[0].starts_with("SIP/2.0/TCP "));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::AckTimeout
            }]
        );
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(64_000)),
            "BYE: Timer F only"
        );
        h.send_raw(&reply_to(&sent[0], 200));
        assert_eq!(h.ep.transaction_count(), 0, "no Timer K over TCP");
        h.assert_clean();

        // A normal call over TCP: BYE answered, no linger timers for the BYE.
        let inv = Req::invite("tcp2");
        let (call, tag) = h.established(&inv);
        h.send(&inv.in_dialog("BYE", &tag, 2, 1));
        assert_eq!(h.codes(), vec![200]);
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::RemoteBye
            }]
        );
        h.assert_clean();
    }

    #[test]
    fn compact_form_invite_works() {
        let mut h = Harness::new(Transport::Udp);
        let mut inv = Req::invite("compact");
        inv.compact = true;
        h.send(&inv);
        assert_eq!(h.codes(), vec![100]);
        let call = match h.take_events().as_slice() {
            [Event::IncomingCall(ic)] => {
                assert_eq!(ic.from_user.as_deref(), Some("alice"));
                assert_eq!(ic.remote_sdp.as_deref(), Some(SDP));
                ic.call
            }
            other => panic!("{other:?}"),
        };
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let tag = to_tag(&h.take_sent()[0]);
        let mut ack = inv.ack_2xx(&tag);
        ack.compact = true;
        h.send(&ack);
        assert_eq!(
            h.take_events(),
            vec![Event::Confirmed {
                call,
                remote_sdp: None
            }]
        );
        let mut bye = inv.in_dialog("BYE", &tag, 2, 1);
        bye.compact = true;
        h.send(&bye);
        assert_eq!(h.codes(), vec![200]);
        h.assert_clean();
    }

    #[test]
    fn malformed_input_is_dropped_or_answered_400_and_counted() {
        let mut h = Harness::new(Transport::Udp);
        let good = String::from_utf8(Req::invite("bad").build()).unwrap();

        h.send_raw(b"\x16\x03\x01\x00\xa5garbage\x00\xff");
        assert!(h.take_sent().is_empty());
        assert_eq!(h.ep.malformed_messages(), 1);

        h.send_raw(good.replace("Call-ID: bad\r\n", "").as_bytes());
        let sent = h.take_sent();
        assert!(
            text(&sent[0]).starts_with("SIP/2.0 400 Missing Call-ID\r\n"),
            "{}",
            text(&sent[0])
        );
        assert_eq!(h.ep.malformed_messages(), 2);

        h.send_raw(
            good.replace("CSeq: 1 INVITE", "CSeq: one INVITE")
                .as_bytes(),
        );
        let sent = h.take_sent();
        assert!(text(&sent[0]).starts_with("SIP/2.0 400 Bad CSeq\r\n"));
        assert_eq!(h.ep.malformed_messages(), 3);

        let huge = good
            .replace(
                "Subject: Performance Test",
                &format!("X-Pad: {}", "a".repeat(8000)),
            )
            .repeat(9);
        h.send_raw(huge.as_bytes());
        assert!(h.take_sent().is_empty(), "oversize datagram dropped");
        assert_eq!(h.ep.malformed_messages(), 4);

        let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnope\r\n\
                From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n";
        h.send_raw(stray.as_bytes());
        assert!(h.take_sent().is_empty(), "unmatched response dropped");
        assert_eq!(
            h.ep.malformed_messages(),
            4,
            "a stray response is not malformed"
        );

        // Nothing above may have created state.
        assert_eq!(h.ep.transaction_count(), 0);
        assert_eq!(h.ep.active_calls(), 0);
        assert!(h.take_events().is_empty());

        // Over TCP an oversize but parseable request gets 513.
        let mut t = Harness::new(Transport::Tcp);
        t.send_raw(format!("{good}{}", "x".repeat(70_000)).as_bytes());
        assert_eq!(t.codes(), vec![513]);
        assert_eq!(t.ep.transaction_count(), 0);
    }

    #[test]
    fn transaction_limit_answers_503_with_retry_after() {
        let mut cfg = EndpointConfig::new("10.0.0.1:5060".parse().unwrap());
        cfg.limits.max_transactions = 1;
        let mut h = Harness::with_config(Transport::Udp, cfg);
        let call = h.incoming(&Req::invite("first"));
        h.send(&Req::invite("second"));
        let sent = h.take_sent();
        assert_eq!(resp(&sent[0]).status, 503);
        assert_eq!(header_values(&sent[0], "Retry-After"), vec!["5"]);
        assert!(h.take_events().is_empty());
        h.ep.reject(call, 503, h.now).unwrap();
        h.assert_clean();
    }

    #[test]
    fn thousand_calls_leave_nothing_behind() {
        let mut h = Harness::new(Transport::Udp);
        let mut calls = Vec::new();
        for i in 0..1000 {
            let inv = Req::invite(&format!("bulk{i}"));
            let (call, tag) = h.established(&inv);
            calls.push((inv, call, tag));
            h.take_sent();
        }
        assert_eq!(h.ep.active_calls(), 1000);
        for (i, (inv, call, tag)) in calls.iter().enumerate() {
            if i % 2 == 0 {
                h.send(&inv.in_dialog("BYE", tag, 2, 1));
            } else {
                h.ep.hangup(*call, h.now).unwrap();
                let bye = h.take_sent().pop().unwrap();
                h.send_raw(&reply_to(&bye, 200));
            }
        }
        assert_eq!(h.ep.active_calls(), 0);
        let ended = h
            .take_events()
            .iter()
            .filter(|e| matches!(e, Event::Ended { .. }))
            .count();
        assert_eq!(ended, 1000);
        h.assert_clean();
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn seeds() -> Vec<Vec<u8>> {
            let inv = Req::invite("fz");
            let mut compact = inv.clone();
            compact.compact = true;
            vec![
                inv.build(),
                compact.build(),
                inv.cancel().build(),
                inv.ack_2xx("t").build(),
                inv.in_dialog("BYE", "t", 2, 1).build(),
                inv.in_dialog("INFO", "t", 2, 1).with_body("application/dtmf-relay", b"Signal=1\r\n").build(),
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ]
        }

        fn mutate(mut m: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
            const ALPHABET: &[u8] = b" :;<>@=,\r\n\"[]0123456789zSIP/.\t\xff\x00";
            for &(op, pos, byte) in ops {
                let pos = if m.is_empty() { 0 } else { pos % (m.len() + 1) };
                let b = ALPHABET[byte as usize % ALPHABET.len()];
                match op % 5 {
                    0 => m.truncate(pos),
                    1 if pos < m.len() => m[pos] = b,
                    2 => m.insert(pos, b),
                    3 if pos < m.len() => {
                        m.remove(pos);
                    }
                    _ => {
                        let dup = m[pos..].to_vec();
                        m.extend_from_slice(&dup[..dup.len().min(64)]);
                    }
                }
            }
            m
        }

        fn drive(inputs: &[Vec<u8>], transport: Transport) {
            let mut h = Harness::new(transport);
            for input in inputs {
                h.send_raw(input);
            }
            // Release every call the fuzz input created, then time must clean up.
            for e in h.take_events() {
                if let Event::IncomingCall(ic) = e {
                    let _ = h.ep.hangup(ic.call, h.now);
                }
            }
            h.run_idle();
            for e in h.take_events() {
                assert!(
                    matches!(e, Event::Ended { .. } | Event::Confirmed { .. }),
                    "{e:?}"
                );
            }
            h.run_idle();
            assert_eq!(h.ep.transaction_count(), 0);
            assert_eq!(h.ep.active_calls(), 0);
        }

        proptest! {
            // 256 cases by default; PROPTEST_CASES=20000 for a longer soak.
            #[test]
            fn random_bytes_never_panic(inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..4)) {
                drive(&inputs, Transport::Udp);
            }

            #[test]
            fn mutated_messages_never_panic_or_leak(
                picks in proptest::collection::vec((0usize..7, proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6)), 1..5),
                tcp in any::<bool>(),
            ) {
                let seeds = seeds();
                let inputs: Vec<Vec<u8>> = picks
                    .iter()
                    .map(|(i, ops)| mutate(seeds[*i % seeds.len()].clone(), ops))
                    .collect();
                drive(&inputs, if tcp { Transport::Tcp } else { Transport::Udp });
            }
        }
    }
}
