//! Sans-IO SIP transaction layer (RFC 3261 section 17, with RFC 6026's Accepted state).
//!
//! Server transactions (INVITE and non-INVITE) and both client transactions. The INVITE
//! client transaction (outbound calls) uses the same three timer slots for Timers A/B/D
//! and RFC 6026's Timer M. Timers live in one binary heap with lazy deletion, so arming,
//! cancelling and finding the next deadline stay O(log n) with 100k transactions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::endpoint::{CallHandle, Transmit, Transport};
use crate::sip::message::{Method, Request, ResponseCtx};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// How a message finds its transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TxKey {
    /// RFC 3261 17.2.3: top Via branch + sent-by + method (ACK counts as INVITE).
    Server {
        branch: String,
        sent_by: String,
        method: String,
    },
    /// RFC 2543 peers without the z9hG4bK cookie.
    LegacyServer {
        call_id: String,
        from_tag: String,
        cseq: u32,
        top_via: String,
        method: String,
    },
    /// Our own requests: our branch + the CSeq method of the response.
    Client { branch: String, method: String },
}

impl TxKey {
    /// The server transaction key of `req`, as if its method were `method`
    /// (used to find the INVITE a CANCEL or non-2xx ACK refers to).
    pub fn server_as(req: &Request, method: &Method) -> Option<TxKey> {
        let top = req.top_via()?;
        let method = match method {
            Method::Ack => "INVITE".to_string(),
            m => m.as_str().to_string(),
        };
        if top.has_rfc3261_branch() {
            Some(TxKey::Server {
                branch: top.branch.clone().unwrap_or_default(),
                sent_by: top.sent_by(),
                method,
            })
        } else {
            Some(TxKey::LegacyServer {
                call_id: req.call_id.clone(),
                from_tag: req.from.tag.clone().unwrap_or_default(),
                cseq: req.cseq.seq,
                top_via: top.raw.clone(),
                method,
            })
        }
    }

    pub fn server(req: &Request) -> Option<TxKey> {
        Self::server_as(req, &req.method)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    InviteServer,
    NonInviteServer,
    NonInviteClient,
    InviteClient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxState {
    /// Also the INVITE client's "Calling" state.
    Trying,
    Proceeding,
    /// INVITE server after a 2xx (RFC 6026): 2xx retransmitted until ACK, ended by Timer L.
    /// INVITE client after a 2xx: further 2xx go to the TU until Timer M.
    Accepted,
    Completed,
    Confirmed,
}

/// The three timer slots every transaction kind needs (names per RFC 3261 table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// G (INVITE server, also for 2xx), E (non-INVITE client), A (INVITE client).
    Retransmit,
    /// H (INVITE server Completed), L (Accepted), F (non-INVITE client),
    /// B (INVITE client Calling), M (INVITE client Accepted).
    Timeout,
    /// I (INVITE server Confirmed), J (non-INVITE server), K (non-INVITE client),
    /// D (INVITE client Completed).
    Linger,
}

impl TimerKind {
    fn slot(self) -> usize {
        match self {
            TimerKind::Retransmit => 0,
            TimerKind::Timeout => 1,
            TimerKind::Linger => 2,
        }
    }
}

#[derive(Debug)]
pub struct Transaction {
    pub id: TxId,
    pub key: TxKey,
    pub kind: TxKind,
    pub state: TxState,
    pub transport: Transport,
    /// Where responses (server) or requests (client) are sent.
    pub destination: SocketAddr,
    pub call: Option<CallHandle>,
    /// Request method (for client transactions: what the final response answers).
    pub method: Method,
    /// How to build responses to the request (server transactions only).
    pub response_ctx: Option<ResponseCtx>,
    /// Last response sent (server) or the request (client), for retransmission; for a
    /// completed INVITE client transaction, the ACK for its non-2xx final response.
    pub last: Option<Vec<u8>>,
    pub last_status: u16,
    /// ACK for our 2xx has been seen (Accepted state).
    pub acked: bool,
    interval: Duration,
    timers: [Option<u64>; 3],
}

/// What the transaction layer reports to the transaction user (the endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxEvent {
    /// 64*T1 passed in Accepted state without an ACK for our 2xx.
    AckTimeout { tx: TxId, call: Option<CallHandle> },
    /// A client transaction received its final response.
    ClientFinal {
        tx: TxId,
        call: Option<CallHandle>,
        method: Method,
        status: u16,
    },
    /// Timer F (or B) fired: the client request got no final response (an implicit 408).
    ClientTimeout {
        tx: TxId,
        call: Option<CallHandle>,
        method: Method,
    },
    /// Timer M: an INVITE client transaction that got a 2xx ended (no more 2xx retransmissions
    /// reach the TU).
    InviteClientEnded { tx: TxId, call: Option<CallHandle> },
}

/// How the INVITE client transaction classified a response (RFC 3261 17.1.1, RFC 6026 8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteResponse {
    /// 1xx while Calling/Proceeding: pass to the TU.
    Provisional,
    /// A 2xx (first or retransmitted, also from another fork): the TU ACKs it.
    Success,
    /// The first non-2xx final: the TU must hand the ACK to [`TransactionLayer::send_ack`].
    Failure,
    /// Nothing for the TU (late provisional, retransmitted non-2xx whose ACK was resent).
    Absorbed,
}

/// RFC 3261 timer values.
#[derive(Clone, Copy, Debug)]
pub struct TimerValues {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

/// RFC 3261 table 4: Timer D is at least 32 s over UDP, whatever T1 is.
const TIMER_D: Duration = Duration::from_secs(32);

impl TimerValues {
    fn timeout_64t1(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Parameters of a new server transaction.
pub struct ServerTxInit {
    pub key: TxKey,
    pub kind: TxKind,
    pub method: Method,
    pub ctx: ResponseCtx,
    pub call: Option<CallHandle>,
}

/// All live transactions plus the timer heap.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: TimerValues,
    txs: HashMap<TxId, Transaction>,
    index: HashMap<TxKey, TxId>,
    heap: BinaryHeap<Reverse<(Instant, u64, TxId, TimerKind)>>,
    next_id: u64,
    next_gen: u64,
}

impl TransactionLayer {
    pub fn new(timers: TimerValues) -> Self {
        Self {
            timers,
            txs: HashMap::new(),
            index: HashMap::new(),
            heap: BinaryHeap::new(),
            next_id: 1,
            next_gen: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn find(&self, key: &TxKey) -> Option<TxId> {
        self.index.get(key).copied()
    }

    pub fn get(&self, id: TxId) -> Option<&Transaction> {
        self.txs.get(&id)
    }

    pub fn get_mut(&mut self, id: TxId) -> Option<&mut Transaction> {
        self.txs.get_mut(&id)
    }

    /// Earliest armed deadline. The heap top is never stale after a public call returns.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    pub fn create_server(&mut self, init: ServerTxInit) -> TxId {
        let id = self.alloc_id();
        let tx = Transaction {
            id,
            key: init.key.clone(),
            kind: init.kind,
            state: match init.kind {
                TxKind::InviteServer => TxState::Proceeding,
                _ => TxState::Trying,
            },
            transport: init.ctx.transport,
            destination: init.ctx.destination,
            call: init.call,
            method: init.method,
            response_ctx: Some(init.ctx),
            last: None,
            last_status: 0,
            acked: false,
            interval: self.timers.t1,
            timers: [None; 3],
        };
        self.index.insert(init.key, id);
        self.txs.insert(id, tx);
        id
    }

    /// Starts a non-INVITE client transaction and sends `request` (Timers E/F).
    #[allow(clippy::too_many_arguments)]
    pub fn create_client(
        &mut self,
        now: Instant,
        key: TxKey,
        method: Method,
        transport: Transport,
        destination: SocketAddr,
        request: Vec<u8>,
        call: Option<CallHandle>,
        out: &mut VecDeque<Transmit>,
    ) -> TxId {
        let id = self.alloc_id();
        out.push_back(Transmit {
            transport,
            destination,
            payload: request.clone(),
        });
        let tx = Transaction {
            id,
            key: key.clone(),
            kind: TxKind::NonInviteClient,
            state: TxState::Trying,
            transport,
            destination,
            call,
            method,
            response_ctx: None,
            last: Some(request),
            last_status: 0,
            acked: false,
            interval: self.timers.t1,
            timers: [None; 3],
        };
        self.index.insert(key, id);
        self.txs.insert(id, tx);
        if transport == Transport::Udp {
            self.arm(id, TimerKind::Retransmit, now + self.timers.t1);
        }
        self.arm(id, TimerKind::Timeout, now + self.timers.timeout_64t1());
        id
    }

    /// Starts an INVITE client transaction and sends `request` (Timers A/B).
    #[allow(clippy::too_many_arguments)]
    pub fn create_invite_client(
        &mut self,
        now: Instant,
        key: TxKey,
        transport: Transport,
        destination: SocketAddr,
        request: Vec<u8>,
        call: Option<CallHandle>,
        out: &mut VecDeque<Transmit>,
    ) -> TxId {
        let id = self.create_client(
            now,
            key,
            Method::Invite,
            transport,
            destination,
            request,
            call,
            out,
        );
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.kind = TxKind::InviteClient;
        }
        id
    }

    /// A response for an INVITE client transaction. Retransmitted non-2xx finals get the
    /// stored ACK again (RFC 3261 17.1.1.2).
    pub fn invite_client_response(
        &mut self,
        id: TxId,
        now: Instant,
        status: u16,
        out: &mut VecDeque<Transmit>,
    ) -> InviteResponse {
        let t = self.timers;
        let Some(tx) = self.txs.get_mut(&id) else {
            return InviteResponse::Absorbed;
        };
        if tx.kind != TxKind::InviteClient {
            return InviteResponse::Absorbed;
        }
        match (tx.state, status) {
            (TxState::Trying | TxState::Proceeding, 100..=199) => {
                tx.state = TxState::Proceeding;
                // No retransmissions and no Timer B once the far end is proceeding.
                self.disarm(id, TimerKind::Retransmit);
                self.disarm(id, TimerKind::Timeout);
                InviteResponse::Provisional
            }
            (TxState::Trying | TxState::Proceeding, 200..=299) => {
                tx.state = TxState::Accepted;
                tx.last_status = status;
                self.disarm(id, TimerKind::Retransmit);
                self.arm(id, TimerKind::Timeout, now + t.timeout_64t1());
                InviteResponse::Success
            }
            (TxState::Accepted, 200..=299) => InviteResponse::Success,
            (TxState::Trying | TxState::Proceeding, 300..) => {
                tx.state = TxState::Completed;
                tx.last_status = status;
                tx.last = None;
                self.disarm(id, TimerKind::Retransmit);
                self.disarm(id, TimerKind::Timeout);
                InviteResponse::Failure
            }
            (TxState::Completed, 300..) => {
                if let Some(ack) = &tx.last {
                    out.push_back(Transmit {
                        transport: tx.transport,
                        destination: tx.destination,
                        payload: ack.clone(),
                    });
                }
                InviteResponse::Absorbed
            }
            _ => InviteResponse::Absorbed,
        }
    }

    /// Sends the ACK for a non-2xx final of an INVITE client transaction, keeps it for
    /// retransmitted finals and lingers for Timer D (UDP only).
    pub fn send_ack(&mut self, id: TxId, now: Instant, ack: Vec<u8>, out: &mut VecDeque<Transmit>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.kind != TxKind::InviteClient || tx.state != TxState::Completed {
            return;
        }
        out.push_back(Transmit {
            transport: tx.transport,
            destination: tx.destination,
            payload: ack.clone(),
        });
        tx.last = Some(ack);
        if tx.transport == Transport::Udp {
            self.arm(id, TimerKind::Linger, now + TIMER_D);
        } else {
            self.remove(id);
        }
    }

    /// Sends a response on a server transaction and moves it on. Returns false (and sends
    /// nothing) when the transaction already sent a final response.
    pub fn respond(
        &mut self,
        id: TxId,
        now: Instant,
        status: u16,
        payload: Vec<u8>,
        out: &mut VecDeque<Transmit>,
    ) -> bool {
        let t = self.timers;
        let Some(tx) = self.txs.get_mut(&id) else {
            return false;
        };
        if !matches!(tx.state, TxState::Trying | TxState::Proceeding) {
            return false;
        }
        out.push_back(Transmit {
            transport: tx.transport,
            destination: tx.destination,
            payload: payload.clone(),
        });
        tx.last = Some(payload);
        tx.last_status = status;
        let udp = tx.transport == Transport::Udp;
        match (tx.kind, status) {
            (_, 100..=199) => tx.state = TxState::Proceeding,
            (TxKind::InviteServer, 200..=299) => {
                tx.state = TxState::Accepted;
                tx.interval = t.t1;
                if udp {
                    self.arm(id, TimerKind::Retransmit, now + t.t1);
                }
                self.arm(id, TimerKind::Timeout, now + t.timeout_64t1());
            }
            (TxKind::InviteServer, _) => {
                tx.state = TxState::Completed;
                tx.interval = t.t1;
                if udp {
                    self.arm(id, TimerKind::Retransmit, now + t.t1);
                }
                self.arm(id, TimerKind::Timeout, now + t.timeout_64t1());
            }
            (_, _) => {
                tx.state = TxState::Completed;
                if udp {
                    self.arm(id, TimerKind::Linger, now + t.timeout_64t1());
                } else {
                    self.remove(id);
                }
            }
        }
        true
    }

    /// A retransmitted request: resend the last response (absorbed if there is none yet).
    pub fn retransmit_response(&mut self, id: TxId, out: &mut VecDeque<Transmit>) {
        let Some(tx) = self.txs.get(&id) else {
            return;
        };
        // After the ACK for our 2xx, retransmitted INVITEs are absorbed (RFC 6026 7.1).
        let client = matches!(tx.kind, TxKind::NonInviteClient | TxKind::InviteClient);
        if tx.state == TxState::Confirmed || client || tx.acked {
            return;
        }
        if let Some(last) = &tx.last {
            out.push_back(Transmit {
                transport: tx.transport,
                destination: tx.destination,
                payload: last.clone(),
            });
        }
    }

    /// ACK for a non-2xx final response: stop Timer G/H, linger for Timer I.
    pub fn ack_non_2xx(&mut self, id: TxId, now: Instant) {
        let t4 = self.timers.t4;
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.state != TxState::Completed || tx.kind != TxKind::InviteServer {
            return;
        }
        tx.state = TxState::Confirmed;
        let udp = tx.transport == Transport::Udp;
        self.disarm(id, TimerKind::Retransmit);
        self.disarm(id, TimerKind::Timeout);
        if udp {
            self.arm(id, TimerKind::Linger, now + t4);
        } else {
            self.remove(id);
        }
    }

    /// ACK for our 2xx arrived (through the dialog): stop retransmitting; Timer L stays
    /// armed so INVITE retransmissions keep being absorbed.
    pub fn ack_2xx(&mut self, id: TxId) -> bool {
        let Some(tx) = self.txs.get_mut(&id) else {
            return false;
        };
        if tx.state != TxState::Accepted || tx.acked {
            return false;
        }
        tx.acked = true;
        self.disarm(id, TimerKind::Retransmit);
        true
    }

    /// A response for one of our client transactions.
    pub fn client_response(&mut self, id: TxId, now: Instant, status: u16) -> Option<TxEvent> {
        let t = self.timers;
        let tx = self.txs.get_mut(&id)?;
        if tx.kind != TxKind::NonInviteClient
            || !matches!(tx.state, TxState::Trying | TxState::Proceeding)
        {
            return None; // retransmitted final response: absorbed
        }
        if status < 200 {
            tx.state = TxState::Proceeding;
            return None;
        }
        tx.state = TxState::Completed;
        tx.last_status = status;
        let event = TxEvent::ClientFinal {
            tx: id,
            call: tx.call,
            method: tx.method.clone(),
            status,
        };
        let udp = tx.transport == Transport::Udp;
        self.disarm(id, TimerKind::Retransmit);
        self.disarm(id, TimerKind::Timeout);
        if udp {
            self.arm(id, TimerKind::Linger, now + t.t4);
        } else {
            self.remove(id);
        }
        Some(event)
    }

    /// Fires every timer due at `now`; retransmissions go to `out`, reports are returned.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Transmit>) -> Vec<TxEvent> {
        let mut events = Vec::new();
        while let Some(Reverse((at, gen, id, kind))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if !self.is_live(gen, id, kind) {
                continue;
            }
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.timers[kind.slot()] = None;
            }
            if let Some(ev) = self.fire(id, kind, now, out) {
                events.push(ev);
            }
        }
        self.purge();
        events
    }

    fn fire(
        &mut self,
        id: TxId,
        kind: TimerKind,
        now: Instant,
        out: &mut VecDeque<Transmit>,
    ) -> Option<TxEvent> {
        let t = self.timers;
        let tx = self.txs.get_mut(&id)?;
        match (tx.kind, tx.state, kind) {
            (
                TxKind::InviteServer,
                TxState::Accepted | TxState::Completed,
                TimerKind::Retransmit,
            )
            | (
                TxKind::NonInviteClient,
                TxState::Trying | TxState::Proceeding,
                TimerKind::Retransmit,
            )
            | (TxKind::InviteClient, TxState::Trying, TimerKind::Retransmit) => {
                if let Some(last) = &tx.last {
                    out.push_back(Transmit {
                        transport: tx.transport,
                        destination: tx.destination,
                        payload: last.clone(),
                    });
                }
                // Timer G / 2xx / E: double up to T2; E stays at T2 once Proceeding.
                // Timer A doubles without the T2 cap (RFC 3261 17.1.1.2).
                tx.interval = if tx.kind == TxKind::InviteClient {
                    tx.interval.saturating_mul(2)
                } else if tx.state == TxState::Proceeding {
                    t.t2
                } else {
                    tx.interval.saturating_mul(2).min(t.t2)
                };
                let next = now + tx.interval;
                self.arm(id, TimerKind::Retransmit, next);
                None
            }
            (TxKind::InviteServer, TxState::Accepted, TimerKind::Timeout) => {
                let event = (!tx.acked).then_some(TxEvent::AckTimeout {
                    tx: id,
                    call: tx.call,
                });
                self.remove(id);
                event
            }
            (
                TxKind::NonInviteClient,
                TxState::Trying | TxState::Proceeding,
                TimerKind::Timeout,
            )
            | (TxKind::InviteClient, TxState::Trying, TimerKind::Timeout) => {
                let event = TxEvent::ClientTimeout {
                    tx: id,
                    call: tx.call,
                    method: tx.method.clone(),
                };
                self.remove(id);
                Some(event)
            }
            (TxKind::InviteClient, TxState::Accepted, TimerKind::Timeout) => {
                let event = TxEvent::InviteClientEnded {
                    tx: id,
                    call: tx.call,
                };
                self.remove(id);
                Some(event)
            }
            (_, _, TimerKind::Timeout) | (_, _, TimerKind::Linger) => {
                self.remove(id);
                None
            }
            _ => None,
        }
    }

    /// The shell could not reach `destination` over `transport` (a TCP/TLS connect failed):
    /// non-INVITE client transactions still waiting for a final response there end now as
    /// timed out (RFC 3261 8.1.3.1 treats a transport error like no answer).
    pub fn fail_transport(
        &mut self,
        destination: SocketAddr,
        transport: Transport,
    ) -> Vec<TxEvent> {
        let mut failed: Vec<(TxId, Option<CallHandle>, Method)> = self
            .txs
            .values()
            .filter(|t| {
                t.kind == TxKind::NonInviteClient
                    && matches!(t.state, TxState::Trying | TxState::Proceeding)
                    && t.destination == destination
                    && t.transport == transport
            })
            .map(|t| (t.id, t.call, t.method.clone()))
            .collect();
        failed.sort_by_key(|(id, _, _)| id.0);
        failed
            .into_iter()
            .map(|(tx, call, method)| {
                self.remove(tx);
                TxEvent::ClientTimeout { tx, call, method }
            })
            .collect()
    }

    pub fn remove(&mut self, id: TxId) {
        if let Some(tx) = self.txs.remove(&id) {
            if self.index.get(&tx.key) == Some(&id) {
                self.index.remove(&tx.key);
            }
        }
        self.purge();
    }

    fn alloc_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn arm(&mut self, id: TxId, kind: TimerKind, at: Instant) {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.timers[kind.slot()] = Some(gen);
            self.heap.push(Reverse((at, gen, id, kind)));
        }
    }

    fn disarm(&mut self, id: TxId, kind: TimerKind) {
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.timers[kind.slot()] = None;
        }
        self.purge();
    }

    fn is_live(&self, gen: u64, id: TxId, kind: TimerKind) -> bool {
        self.txs
            .get(&id)
            .is_some_and(|tx| tx.timers[kind.slot()] == Some(gen))
    }

    /// Lazy deletion: drop cancelled entries from the top so `next_deadline` is exact.
    fn purge(&mut self) {
        while let Some(Reverse((_, gen, id, kind))) = self.heap.peek().copied() {
            if self.is_live(gen, id, kind) {
                break;
            }
            self.heap.pop();
        }
        // Bound garbage: rebuild when cancelled entries dominate the heap.
        if self.heap.len() > 1024 && self.heap.len() > self.txs.len().saturating_mul(8) {
            let txs = &self.txs;
            self.heap.retain(|Reverse((_, gen, id, kind))| {
                txs.get(id)
                    .is_some_and(|tx| tx.timers[kind.slot()] == Some(*gen))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Limits, Message};

    fn timers() -> TimerValues {
        TimerValues {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }

    fn request(method: &str, branch: &str) -> Request {
        let text = format!(
            "{method} sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch={branch}\r\n\
             From: <sip:b@10.0.0.2>;tag=f\r\nTo: <sip:a@10.0.0.1>\r\nCall-ID: c1\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Some(Message::Request(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    fn server(
        layer: &mut TransactionLayer,
        req: &Request,
        kind: TxKind,
        transport: Transport,
    ) -> TxId {
        let src = "10.0.0.2:5060".parse().unwrap();
        layer.create_server(ServerTxInit {
            key: TxKey::server(req).unwrap(),
            kind,
            method: req.method.clone(),
            ctx: ResponseCtx::from_request(req, src, transport),
            call: None,
        })
    }

    #[test]
    fn ack_and_cancel_keys_match_invite_per_17_2_3() {
        let invite = request("INVITE", "z9hG4bKabc");
        let ack = request("ACK", "z9hG4bKabc");
        let cancel = request("CANCEL", "z9hG4bKabc");
        assert_eq!(TxKey::server(&invite), TxKey::server(&ack));
        assert_ne!(TxKey::server(&invite), TxKey::server(&cancel));
        assert_eq!(
            TxKey::server(&invite),
            TxKey::server_as(&cancel, &Method::Invite)
        );
        let legacy = request("INVITE", "1234");
        assert!(matches!(
            TxKey::server(&legacy),
            Some(TxKey::LegacyServer { .. })
        ));
    }

    #[test]
    fn non_2xx_invite_final_retransmits_until_ack_then_lingers_t4() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let id = server(
            &mut layer,
            &request("INVITE", "z9hG4bK1"),
            TxKind::InviteServer,
            Transport::Udp,
        );
        assert!(layer.respond(id, t0, 486, b"486".to_vec(), &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(layer.next_deadline(), Some(t0 + Duration::from_millis(500)));
        layer.handle_timeout(t0 + Duration::from_millis(500), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            layer.next_deadline(),
            Some(t0 + Duration::from_millis(1500))
        );
        layer.ack_non_2xx(id, t0 + Duration::from_secs(1));
        assert_eq!(layer.next_deadline(), Some(t0 + Duration::from_secs(6)));
        layer.handle_timeout(t0 + Duration::from_secs(6), &mut out);
        assert_eq!(out.len(), 2);
        assert!(layer.is_empty());
        assert_eq!(layer.next_deadline(), None);
    }

    #[test]
    fn timer_h_ends_unacked_non_2xx() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let id = server(
            &mut layer,
            &request("INVITE", "z9hG4bK1"),
            TxKind::InviteServer,
            Transport::Udp,
        );
        layer.respond(id, t0, 488, b"488".to_vec(), &mut out);
        let mut now = t0;
        while let Some(at) = layer.next_deadline() {
            now = at;
            assert!(layer.handle_timeout(now, &mut out).is_empty());
        }
        assert_eq!(now, t0 + Duration::from_secs(32));
        assert!(layer.is_empty());
        // retransmissions at 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, ..., 31.5 s
        assert_eq!(out.len(), 1 + 10);
    }

    #[test]
    fn non_invite_server_lingers_j_on_udp_only() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let req = request("OPTIONS", "z9hG4bK2");
        let id = server(&mut layer, &req, TxKind::NonInviteServer, Transport::Udp);
        layer.respond(id, t0, 200, b"200".to_vec(), &mut out);
        layer.retransmit_response(id, &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            !layer.respond(id, t0, 500, b"500".to_vec(), &mut out),
            "second final refused"
        );
        assert_eq!(layer.next_deadline(), Some(t0 + Duration::from_secs(32)));
        layer.handle_timeout(t0 + Duration::from_secs(32), &mut out);
        assert!(layer.is_empty());

        let id = server(&mut layer, &req, TxKind::NonInviteServer, Transport::Tcp);
        layer.respond(id, t0, 200, b"200".to_vec(), &mut out);
        assert!(layer.is_empty(), "no Timer J over TCP");
    }

    #[test]
    fn client_non_invite_e_f_k() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let key = TxKey::Client {
            branch: "z9hG4bKc".into(),
            method: "BYE".into(),
        };
        let dest = "10.0.0.2:5060".parse().unwrap();
        let id = layer.create_client(
            t0,
            key.clone(),
            Method::Bye,
            Transport::Udp,
            dest,
            b"BYE".to_vec(),
            None,
            &mut out,
        );
        assert_eq!(layer.find(&key), Some(id));
        layer.handle_timeout(t0 + Duration::from_millis(500), &mut out);
        layer.handle_timeout(t0 + Duration::from_millis(1500), &mut out);
        assert_eq!(out.len(), 3);
        let ev = layer.client_response(id, t0 + Duration::from_secs(2), 200);
        assert!(matches!(ev, Some(TxEvent::ClientFinal { status: 200, .. })));
        assert_eq!(
            layer.client_response(id, t0 + Duration::from_secs(2), 200),
            None
        );
        assert_eq!(layer.next_deadline(), Some(t0 + Duration::from_secs(7)));
        layer.handle_timeout(t0 + Duration::from_secs(7), &mut out);
        assert!(layer.is_empty());

        // Timer F
        let id = layer.create_client(
            t0,
            key,
            Method::Bye,
            Transport::Udp,
            dest,
            b"BYE".to_vec(),
            None,
            &mut out,
        );
        let mut evs = Vec::new();
        while let Some(at) = layer.next_deadline() {
            evs.extend(layer.handle_timeout(at, &mut out));
        }
        assert_eq!(
            evs,
            vec![TxEvent::ClientTimeout {
                tx: id,
                call: None,
                method: Method::Bye
            }]
        );
        assert!(layer.get(id).is_none());
    }

    fn invite_client(
        layer: &mut TransactionLayer,
        transport: Transport,
        out: &mut VecDeque<Transmit>,
        t0: Instant,
    ) -> TxId {
        let key = TxKey::Client {
            branch: "z9hG4bKi".into(),
            method: "INVITE".into(),
        };
        layer.create_invite_client(
            t0,
            key,
            transport,
            "10.0.0.2:5060".parse().unwrap(),
            b"INVITE".to_vec(),
            Some(CallHandle(7)),
            out,
        )
    }

    #[test]
    fn invite_client_timer_a_doubles_without_cap_until_b() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let id = invite_client(&mut layer, Transport::Udp, &mut out, t0);
        let mut sends = vec![Duration::ZERO];
        let mut evs = Vec::new();
        while let Some(at) = layer.next_deadline() {
            let before = out.len();
            evs.extend(layer.handle_timeout(at, &mut out));
            if out.len() > before {
                sends.push(at - t0);
            }
        }
        let ms = Duration::from_millis;
        assert_eq!(
            sends,
            vec![
                ms(0),
                ms(500),
                ms(1500),
                ms(3500),
                ms(7500),
                ms(15_500),
                ms(31_500)
            ]
        );
        assert_eq!(
            evs,
            vec![TxEvent::ClientTimeout {
                tx: id,
                call: Some(CallHandle(7)),
                method: Method::Invite
            }]
        );
        assert!(layer.is_empty());
    }

    #[test]
    fn invite_client_non_2xx_acked_once_then_timer_d() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let id = invite_client(&mut layer, Transport::Udp, &mut out, t0);
        out.clear();
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            layer.invite_client_response(id, t1, 180, &mut out),
            InviteResponse::Provisional
        );
        assert_eq!(layer.next_deadline(), None, "no Timer A/B once Proceeding");
        assert_eq!(
            layer.invite_client_response(id, t1, 486, &mut out),
            InviteResponse::Failure
        );
        layer.send_ack(id, t1, b"ACK".to_vec(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            layer.invite_client_response(id, t1, 486, &mut out),
            InviteResponse::Absorbed
        );
        assert_eq!(out.len(), 2, "retransmitted final gets the ACK again");
        assert_eq!(out[1].payload, b"ACK");
        assert_eq!(
            layer.invite_client_response(id, t1, 180, &mut out),
            InviteResponse::Absorbed
        );
        assert_eq!(layer.next_deadline(), Some(t1 + Duration::from_secs(32)));
        layer.handle_timeout(t1 + Duration::from_secs(32), &mut out);
        assert!(layer.is_empty());

        // Over TCP there is no Timer D.
        let id = invite_client(&mut layer, Transport::Tcp, &mut out, t0);
        assert_eq!(
            layer.next_deadline(),
            Some(t0 + Duration::from_secs(32)),
            "only B"
        );
        layer.invite_client_response(id, t0, 603, &mut out);
        layer.send_ack(id, t0, b"ACK".to_vec(), &mut out);
        assert!(layer.is_empty());
    }

    #[test]
    fn invite_client_accepted_passes_2xx_until_timer_m() {
        let mut layer = TransactionLayer::new(timers());
        let mut out = VecDeque::new();
        let t0 = Instant::now();
        let id = invite_client(&mut layer, Transport::Udp, &mut out, t0);
        assert_eq!(
            layer.invite_client_response(id, t0, 200, &mut out),
            InviteResponse::Success
        );
        assert_eq!(
            layer.invite_client_response(id, t0, 200, &mut out),
            InviteResponse::Success,
            "retransmitted or forked 2xx still reaches the TU"
        );
        assert_eq!(
            layer.invite_client_response(id, t0, 486, &mut out),
            InviteResponse::Absorbed
        );
        assert_eq!(layer.next_deadline(), Some(t0 + Duration::from_secs(32)));
        let evs = layer.handle_timeout(t0 + Duration::from_secs(32), &mut out);
        assert_eq!(
            evs,
            vec![TxEvent::InviteClientEnded {
                tx: id,
                call: Some(CallHandle(7))
            }]
        );
        assert!(layer.is_empty());
        assert_eq!(out.len(), 1, "only the INVITE was sent");
    }
}
