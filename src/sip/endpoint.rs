//! Sans-IO SIP user agent (UAS and UAC): feed it datagrams / framed stream messages and
//! time, take back transmits and call events. No sockets, no clock reads, no tokio.
//!
//! Inbound calls: `Event::IncomingCall` -> `ring` -> `answer` (or `reject`)
//! -> `Event::Confirmed` -> ... -> `hangup` or `Event::Ended`.
//! Outbound calls: `invite` -> `Event::Progress`* -> `Event::Answered` (or exactly one
//! `Event::Failed`; `cancel` gives up) -> ... -> `hangup` or `Event::Ended`.
//! Trunk registration: `register` -> `Event::Registered` on every (re-)registration, or
//! `Event::RegistrationFailed` and a retry later -> `unregister`.
//! Agents (server side): REGISTER with digest auth -> `Event::AgentRegistered` /
//! `Event::AgentUnregistered`; `agent_contact` says where to call one.
//! Blind transfer: `refer` -> `Event::TransferProgress`* -> `TransferDone` or `TransferFailed`.
//! Every input first passes the [`Guard`] (ACLs, rate limit, blocks): dropped inputs are
//! not parsed and get no answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsip::Header;

use crate::sip::auth::{raw_header_values, AuthConfig, AuthConfigError, DigestServer, Verdict};
use crate::sip::dialog::{Dialog, DialogRole, DialogState, OutRequest, PendingReInvite};
use crate::sip::digest::{self, Challenge, DigestError};
use crate::sip::guard::{Guard, GuardConfig, GuardCounters};
use crate::sip::message::{
    self, hdr, reason_phrase, serialize_request, Message, Method, NameAddr, ParseFailure, Request,
    Response, ResponseCtx,
};
pub use crate::sip::message::{Limits, SipError};
use crate::sip::registrar::{
    Binding, RegisterOutcome, RegisterRequest, Registrar, RegistrarConfig, RegistrarEvent,
};
use crate::sip::transaction::{
    InviteResponse, ServerTxInit, TimerValues, TransactionLayer, TxEvent, TxId, TxKey, TxKind,
    TxState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 26.2): a stream like TCP; Via `SIP/2.0/TLS`, Contact
    /// `;transport=tls` at the TLS address.
    Tls,
}

impl Transport {
    /// The protocol token of a Via header (`SIP/2.0/<this>`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The URI parameter that asks a peer to use this transport (none for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        }
    }

    /// Connection-oriented: `Transmit::destination` names a connection the shell keeps.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Address put in Via and Contact of what we send over UDP and TCP.
    pub public_addr: SocketAddr,
    /// Address put in Via and Contact of what we send over TLS (the TLS listener as the
    /// peers reach it); `None`: `public_addr`.
    pub tls_public_addr: Option<SocketAddr>,
    pub user_agent: String,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub limits: Limits,
    /// ACLs, rate limit, failed-auth blocks (`[sip.guard]`).
    pub guard: GuardConfig,
    /// Digest accounts for agents and inbound callers (`[sip.auth]`). With no users the
    /// registrar is off (REGISTER gets 405).
    pub auth: AuthConfig,
    /// Binding lifetimes (`[sip.registrar]`).
    pub registrar: RegistrarConfig,
}

impl EndpointConfig {
    /// RFC 3261 default timers (T1 500 ms, T2 4 s, T4 5 s) and default limits.
    pub fn new(public_addr: SocketAddr) -> Self {
        Self {
            public_addr,
            tls_public_addr: None,
            // No version: scanners match versions to known flaws (`warmline status` shows it).
            user_agent: "warmline".into(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            limits: Limits::default(),
            guard: GuardConfig::permissive(),
            auth: AuthConfig::default(),
            registrar: RegistrarConfig::default(),
        }
    }
}

/// Bytes to put on the wire. Over TCP and TLS `destination` names the peer connection: one
/// the peer opened (its source address) or one the shell opens to that address if none is
/// open (for TLS a TLS connection).
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
    /// The digest user when the INVITE had to authenticate (`[sip.auth] inbound`); `None`
    /// for trunk sources and when inbound authentication is off.
    pub auth_user: Option<String>,
}

/// Digest credentials for a trunk (RFC 3261 22). `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An outbound call to place with [`Endpoint::invite`].
#[derive(Clone, Debug)]
pub struct OutboundCall {
    /// Call-ID to use (e.g. the application's call id, visible ASCII); `None`: a random one.
    pub call_id: Option<String>,
    /// e.g. `sip:+15551230001@127.0.0.1:5070`
    pub request_uri: String,
    /// Next hop (the trunk).
    pub destination: SocketAddr,
    /// Over TCP the shell connects to `destination`.
    pub transport: Transport,
    /// e.g. `sip:+15550000000@<public addr>`; From gets our tag.
    pub from_uri: String,
    pub from_display: Option<String>,
    pub to_uri: String,
    /// Our SDP offer (sent in the INVITE).
    pub sdp_offer: Vec<u8>,
    /// Used to answer 401/407 challenges; without them a challenge fails the call.
    pub credentials: Option<Credentials>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegHandle(pub u64);

/// A binding to keep registered with [`Endpoint::register`].
#[derive(Clone, Debug)]
pub struct Registration {
    /// Request-URI of the REGISTER, e.g. `sip:trunk.example`.
    pub registrar_uri: String,
    /// Address of record (From and To), e.g. `sip:user@trunk.example`.
    pub aor: String,
    pub destination: SocketAddr,
    pub transport: Transport,
    /// Requested binding lifetime; the registrar may grant another.
    pub expires: Duration,
    pub credentials: Option<Credentials>,
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
    /// A provisional response (not 100) to our INVITE; a 183 with SDP is early media.
    Progress {
        call: CallHandle,
        status: u16,
        remote_sdp: Option<Vec<u8>>,
    },
    /// A 2xx to our INVITE: the endpoint already sent the ACK; the dialog is confirmed.
    Answered {
        call: CallHandle,
        remote_sdp: Option<Vec<u8>>,
    },
    /// The outbound call ended without being answered: a final non-2xx (after at most
    /// one authentication retry, or one more for a stale nonce), 408 for a timeout, 503
    /// for a transport error. Raised exactly once per failed call.
    Failed {
        call: CallHandle,
        status: u16,
        reason: String,
    },
    /// Every successful (re-)registration, with the lifetime the registrar granted.
    Registered {
        reg: RegHandle,
        expires: Duration,
    },
    /// A REGISTER failed (status 408 on timeout, 503 on a transport error, 0 when the
    /// registration itself is invalid and is not retried); it is retried after a back-off.
    RegistrationFailed {
        reg: RegHandle,
        status: u16,
        reason: String,
    },
    /// An agent registered a new contact (or moved); refreshes are silent.
    AgentRegistered {
        user: String,
        /// Contact URI: the Request-URI to call the agent with.
        contact: String,
        /// Where its REGISTER came from: the destination to call it at (NAT).
        source: SocketAddr,
        transport: Transport,
        expires: Duration,
    },
    /// The agent's last binding went away (unregistered or expired).
    AgentUnregistered {
        user: String,
    },
    /// Our REFER was accepted (the 2xx status), or a NOTIFY reported a provisional status.
    TransferProgress {
        call: CallHandle,
        status: u16,
    },
    /// A NOTIFY reported a 2xx: the transfer target answered. Hang up when ready.
    TransferDone {
        call: CallHandle,
    },
    /// The REFER was refused (its status; 408 on timeout) or a NOTIFY reported a final
    /// failure (that status; 0 if the subscription ended without one). The call stays up.
    TransferFailed {
        call: CallHandle,
        status: u16,
        reason: String,
    },
}

/// Security counters for metrics (all monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecurityCounters {
    /// Inputs dropped by the deny/allow ACLs.
    pub acl_drops: u64,
    /// Inputs dropped because their source is blocked.
    pub blocked_drops: u64,
    /// Inputs dropped by the per-source rate limit.
    pub rate_limited_drops: u64,
    /// Wrong digest answers (wrong password or unknown user).
    pub auth_failures: u64,
    /// Blocks started after repeated failures.
    pub blocks: u64,
    /// 401 challenges sent.
    pub challenges: u64,
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY";
const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";
/// Wait before retrying a failed registration.
const REGISTER_RETRY: Duration = Duration::from_secs(30);
/// Refresh at least this long before a registration expires.
const REGISTER_MARGIN: Duration = Duration::from_secs(5);
/// Refresh at least daily, whatever a registrar grants.
const REGISTER_MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// CSeq numbers stay below 2^31 (RFC 3261 8.1.1.5).
const MAX_CSEQ: u32 = i32::MAX as u32;
/// Forked 2xx responses whose ACK is remembered for retransmissions.
const MAX_FORKS: usize = 16;
/// Distinct (proxy, realm) challenges answered for one call or registration.
const MAX_REALMS: usize = 4;
/// Extra headers accepted by `invite_with_headers`.
const MAX_EXTRA_HEADERS: usize = 16;
/// Headers the endpoint writes itself: `invite_with_headers` refuses them.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "v",
    "from",
    "f",
    "to",
    "t",
    "call-id",
    "i",
    "cseq",
    "contact",
    "m",
    "content-length",
    "l",
    "content-type",
    "c",
    "max-forwards",
    "authorization",
    "proxy-authorization",
    "route",
    "record-route",
    "allow",
    "user-agent",
];

/// Key of an endpoint-level timer: deadline plus a unique sequence number.
type TimerKey = (Instant, u64);

/// Timers the endpoint keeps itself (the transaction layer has its own heap).
#[derive(Clone, Copy, Debug)]
enum EpTimer {
    /// 64*T1 after our CANCEL without a final response to the INVITE.
    CancelTimeout(CallHandle),
    /// Refresh or retry of a registration.
    Register(u64),
}

/// A challenge answered for a call or registration, reused for later requests.
#[derive(Debug)]
struct AuthEntry {
    /// From a 407 (Proxy-Authorization) rather than a 401 (Authorization).
    proxy: bool,
    challenge: Challenge,
    /// Requests made with this nonce so far.
    nc: u32,
}

/// Digest state of one request stream (a call's INVITEs, a registration's REGISTERs).
#[derive(Debug)]
struct AuthState {
    creds: Option<Credentials>,
    entries: Vec<AuthEntry>,
    /// (proxy, realm) answered during the current attempt: a second challenge for the
    /// same realm means the credentials are wrong (unless the nonce was only stale).
    tried: Vec<(bool, String)>,
    stale_used: bool,
}

impl AuthState {
    fn new(creds: Option<Credentials>) -> Self {
        Self {
            creds,
            entries: Vec::new(),
            tried: Vec::new(),
            stale_used: false,
        }
    }

    /// A new logical request (a registration refresh): challenges may be answered again.
    fn new_attempt(&mut self) {
        self.tried.clear();
        self.stale_used = false;
    }

    /// Takes in a 401/407. `Ok` means: resend the request with [`AuthState::headers`].
    fn on_challenge(&mut self, resp: &Response) -> Result<(), String> {
        if self.creds.is_none() {
            return Err("no credentials configured".into());
        }
        let proxy = resp.status == 407;
        let values = if proxy {
            &resp.proxy_authenticate
        } else {
            &resp.www_authenticate
        };
        let ch = digest::best_challenge(values.iter().map(String::as_str))
            .map_err(|e| format!("unusable challenge: {e}"))?;
        let same = |p: bool, realm: &str| p == proxy && realm == ch.realm;
        let entry = self
            .entries
            .iter_mut()
            .find(|e| same(e.proxy, &e.challenge.realm));
        if self.tried.iter().any(|(p, r)| same(*p, r)) {
            return match entry {
                Some(e) if ch.stale && !self.stale_used && e.challenge.nonce != ch.nonce => {
                    self.stale_used = true;
                    e.challenge = ch;
                    e.nc = 0;
                    Ok(())
                }
                _ => Err("credentials rejected".into()),
            };
        }
        self.tried.push((proxy, ch.realm.clone()));
        if let Some(e) = entry {
            e.challenge = ch;
            e.nc = 0;
            return Ok(());
        }
        if self.entries.len() >= MAX_REALMS {
            return Err("too many authentication realms".into());
        }
        self.entries.push(AuthEntry {
            proxy,
            challenge: ch,
            nc: 0,
        });
        Ok(())
    }

    /// Authorization / Proxy-Authorization headers for the next request.
    fn headers(
        &mut self,
        method: &str,
        uri: &str,
        rng: &mut StdRng,
    ) -> Result<Vec<Header>, DigestError> {
        let Some(creds) = &self.creds else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(self.entries.len());
        for e in &mut self.entries {
            e.nc = e.nc.saturating_add(1);
            let cnonce = format!("{:016x}", rng.random::<u64>());
            let value = digest::authorization(&e.challenge, creds, method, uri, e.nc, &cnonce)?;
            let name = if e.proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            out.push(hdr(name, value));
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CancelState {
    None,
    /// `cancel` was called before any provisional response (RFC 3261 9.1).
    Requested,
    Sent,
}

/// An outbound call from `invite` until its INVITE transaction is over.
#[derive(Debug)]
struct UacCall {
    request_uri: String,
    destination: SocketAddr,
    transport: Transport,
    call_id: String,
    local_tag: String,
    /// From as sent (with our tag) and To as sent (without tag).
    from_party: String,
    to_party: String,
    sdp_offer: Vec<u8>,
    auth: AuthState,
    /// The current INVITE: its transaction, branch, CSeq and credentials.
    invite_tx: Option<TxId>,
    branch: String,
    cseq: u32,
    auth_headers: Vec<Header>,
    provisional: bool,
    /// To tag of the latest provisional response (the early dialog).
    early_tag: Option<String>,
    cancel: CancelState,
    cancel_timer: Option<TimerKey>,
    /// A 2xx was taken: the dialog is confirmed (or being torn down).
    answered: bool,
    /// ACKs sent per 2xx To tag, re-sent when that 2xx is retransmitted.
    acks: Vec<(String, OutRequest)>,
    /// Caller-supplied headers (e.g. `X-Warmline-Whisper`), sent with every INVITE.
    extra_headers: Vec<Header>,
}

/// A blind transfer (REFER) in progress on a call.
#[derive(Debug)]
struct Transfer {
    /// The REFER transaction until its final response.
    tx: Option<TxId>,
}

/// One registration binding kept alive by `register`.
#[derive(Debug)]
struct RegState {
    reg: Registration,
    call_id: String,
    local_tag: String,
    cseq: u32,
    auth: AuthState,
    /// The REGISTER in flight.
    tx: Option<TxId>,
    timer: Option<TimerKey>,
    /// Expires we ask for, in seconds (raised by a 423's Min-Expires).
    requested: u32,
    /// Our Contact URI (without brackets), to find our binding in the 2xx.
    contact_uri: String,
    unregistering: bool,
}

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
    /// False while the appliance drains: OPTIONS probes get 503 so a load balancer (Kamailio's
    /// dispatcher) takes this node out before the INVITEs start failing.
    accepting_calls: bool,
    rng: StdRng,
    uac: HashMap<CallHandle, UacCall>,
    regs: HashMap<u64, RegState>,
    /// REGISTER client transaction -> registration.
    reg_by_tx: HashMap<TxId, u64>,
    next_reg: u64,
    timers: BTreeMap<TimerKey, EpTimer>,
    next_timer: u64,
    guard: Guard,
    /// Present when `[sip.auth]` has users or asks for inbound authentication.
    digest: Option<DigestServer>,
    /// Present when there are users to register.
    registrar: Option<Registrar>,
    transfers: HashMap<CallHandle, Transfer>,
    /// REFER client transaction -> call.
    refer_by_tx: HashMap<TxId, CallHandle>,
    challenges: u64,
}

impl Endpoint {
    /// As [`Endpoint::try_new`]; an invalid `[sip.auth]` is logged and authentication then
    /// fails closed: no agent can register and, with `inbound`, no non-trunk call gets in.
    pub fn new(cfg: EndpointConfig) -> Self {
        match Self::try_new(cfg.clone()) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(error = %e, "invalid SIP authentication settings: nobody can authenticate");
                let mut ep = Self::build(cfg, None);
                if ep.cfg.auth.inbound {
                    let closed = AuthConfig {
                        users: Vec::new(),
                        ..AuthConfig::default()
                    };
                    ep.digest = DigestServer::new(&closed).ok();
                }
                ep
            }
        }
    }

    /// Builds the endpoint, refusing invalid digest settings.
    pub fn try_new(cfg: EndpointConfig) -> Result<Self, AuthConfigError> {
        let wants_auth = !cfg.auth.users.is_empty() || cfg.auth.inbound;
        let digest = if wants_auth {
            Some(DigestServer::new(&cfg.auth)?)
        } else {
            None
        };
        Ok(Self::build(cfg, digest))
    }

    fn build(cfg: EndpointConfig, digest: Option<DigestServer>) -> Self {
        let timers = TimerValues {
            t1: cfg.t1,
            t2: cfg.t2,
            t4: cfg.t4,
        };
        let registrar = digest
            .as_ref()
            .filter(|d| d.has_users())
            .map(|_| Registrar::new(cfg.registrar.clone()));
        Self {
            guard: Guard::new(cfg.guard.clone()),
            digest,
            registrar,
            transfers: HashMap::new(),
            refer_by_tx: HashMap::new(),
            challenges: 0,
            cfg,
            txs: TransactionLayer::new(timers),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_call: 1,
            malformed: 0,
            accepting_calls: true,
            rng: StdRng::from_os_rng(),
            uac: HashMap::new(),
            regs: HashMap::new(),
            reg_by_tx: HashMap::new(),
            next_reg: 1,
            timers: BTreeMap::new(),
            next_timer: 0,
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
        if let Err(why) = self.guard.admit(now, source.ip()) {
            tracing::trace!(%source, ?why, "input dropped by the guard");
            return;
        }
        match message::parse(data, &self.cfg.limits) {
            Ok(None) => {}
            Ok(Some(Message::Request(req))) => self.on_request(now, source, transport, req, data),
            Ok(Some(Message::Response(resp))) => self.on_response(now, resp),
            Err(failure) => self.on_malformed(source, transport, failure),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let events = self.txs.handle_timeout(now, &mut self.transmits);
        for ev in events {
            self.on_tx_event(now, ev);
        }
        while let Some((&key, &timer)) = self.timers.first_key_value() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            match timer {
                EpTimer::CancelTimeout(call) => self.on_cancel_timeout(call, key),
                EpTimer::Register(id) => self.on_register_timer(now, id, key),
            }
        }
        if let Some(r) = self.registrar.as_mut() {
            r.handle_timeout(now);
        }
        self.drain_registrar();
    }

    /// Earliest armed timer: transaction timers, cancel timeouts, registration refreshes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = self.timers.keys().next().map(|k| k.0);
        let reg = self.registrar.as_ref().and_then(Registrar::poll_timeout);
        [self.txs.next_deadline(), own, reg]
            .into_iter()
            .flatten()
            .min()
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

    /// Whether new calls are taken; while not, OPTIONS is answered 503 (the shell's drain).
    pub fn set_accepting_calls(&mut self, accepting: bool) {
        self.accepting_calls = accepting;
    }

    /// Messages rejected at the parse stage so far (each logged by exactly one warning).
    pub fn malformed_messages(&self) -> u64 {
        self.malformed
    }

    /// Guard and authentication counters for metrics.
    pub fn security_counters(&self) -> SecurityCounters {
        let GuardCounters {
            acl_drops,
            blocked_drops,
            rate_limited_drops,
            auth_failures,
            blocks,
        } = self.guard.counters();
        SecurityCounters {
            acl_drops,
            blocked_drops,
            rate_limited_drops,
            auth_failures,
            blocks,
            challenges: self.challenges,
        }
    }

    /// True when input from `ip` would be dropped (deny/allow ACL or a block), without
    /// using its rate budget: lets the shell refuse a TCP connection at accept.
    pub fn refuses_source(&mut self, now: Instant, ip: std::net::IpAddr) -> bool {
        self.guard.refuses(now, ip)
    }

    /// Sources currently blocked after failed authentications.
    pub fn blocked_sources(&self) -> usize {
        self.guard.blocked_sources()
    }

    /// Where to call agent `user`: its most recent live binding (contact URI as the
    /// Request-URI, `source`/`transport` as destination).
    pub fn agent_contact(&self, user: &str) -> Option<&Binding> {
        self.registrar.as_ref()?.contact_of(user)
    }

    /// Agents with at least one live binding.
    pub fn registered_agents(&self) -> usize {
        self.registrar
            .as_ref()
            .map_or(0, Registrar::registered_users)
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
    /// An unanswered outbound call is cancelled instead (see [`Endpoint::cancel`]).
    pub fn hangup(&mut self, call: CallHandle, now: Instant) -> Result<(), SipError> {
        let d = self
            .dialogs
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        if d.role == DialogRole::Uac && d.state == DialogState::Early {
            return self.cancel(call, now);
        }
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

    /// Blind transfer (RFC 3515): sends REFER with `Refer-To: <target_uri>` in the call's
    /// dialog. Then `TransferProgress` (the 202, NOTIFY 1xx), and `TransferDone` or
    /// `TransferFailed`. One transfer at a time per call; the call itself stays up (hang up
    /// after `TransferDone`).
    pub fn refer(
        &mut self,
        call: CallHandle,
        target_uri: &str,
        now: Instant,
    ) -> Result<(), SipError> {
        check_uri("Refer-To", target_uri)?;
        let d = self.dialogs.get(&call).ok_or(SipError::UnknownCall(call))?;
        if d.state != DialogState::Confirmed {
            return Err(invalid(call, "transfer", d.state));
        }
        if self.transfers.contains_key(&call) {
            return Err(SipError::InvalidState {
                call,
                action: "transfer",
                state: "already transferring",
            });
        }
        let referred_by = NameAddr::parse(&d.local_party, "From")
            .map(|n| format!("<{}>", n.uri))
            .ok();
        let transport = d.transport;
        let branch = self.new_branch();
        let (public_addr, ua) = (self.local_addr(transport), self.cfg.user_agent.clone());
        let contact = format!("<sip:warmline@{public_addr}{}>", transport.uri_param());
        let Some(d) = self.dialogs.get_mut(&call) else {
            return Err(SipError::UnknownCall(call));
        };
        let out = d.build_request(Method::Refer, public_addr, &branch, &ua);
        let mut extra = vec![
            ("Refer-To", format!("<{target_uri}>")),
            ("Contact", contact),
        ];
        if let Some(rb) = referred_by {
            extra.push(("Referred-By", rb));
        }
        let payload = with_headers(out.payload, &extra);
        let key = TxKey::Client {
            branch,
            method: "REFER".into(),
        };
        let tx = self.txs.create_client(
            now,
            key,
            Method::Refer,
            out.transport,
            out.destination,
            payload,
            Some(call),
            &mut self.transmits,
        );
        self.refer_by_tx.insert(tx, call);
        self.transfers.insert(call, Transfer { tx: Some(tx) });
        Ok(())
    }

    // ----- outbound calls (UAC) -----

    /// Sends the INVITE (client transaction, Timer A/B); returns the handle and the Call-ID.
    pub fn invite(
        &mut self,
        call: OutboundCall,
        now: Instant,
    ) -> Result<(CallHandle, String), SipError> {
        self.invite_with_headers(call, &[], now)
    }

    /// As [`Endpoint::invite`], adding `extra_headers` (name, value) to every INVITE of the
    /// call, e.g. `("X-Warmline-Whisper", "campaign 7")` for an agent's screen pop. Names
    /// must be tokens and not headers the endpoint writes itself (Via, From, To, Contact,
    /// CSeq, ...); values must have no control characters.
    pub fn invite_with_headers(
        &mut self,
        call: OutboundCall,
        extra_headers: &[(&str, &str)],
        now: Instant,
    ) -> Result<(CallHandle, String), SipError> {
        if extra_headers.len() > MAX_EXTRA_HEADERS {
            return Err(SipError::BadHeader {
                header: "extra header",
                detail: format!(
                    "{} extra headers, at most {MAX_EXTRA_HEADERS}",
                    extra_headers.len()
                ),
            });
        }
        let mut extra = Vec::with_capacity(extra_headers.len());
        for (name, value) in extra_headers {
            let name_ok = !name.is_empty()
                && name.bytes().all(message::is_token_char)
                && !RESERVED_HEADERS
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(name));
            if !name_ok {
                return Err(SipError::BadHeader {
                    header: "extra header",
                    detail: format!(
                        "\"{}\" is not a header name the caller may set",
                        message::truncate_for_log(name)
                    ),
                });
            }
            check_text("extra header", value)?;
            extra.push(hdr(name, value.trim().to_string()));
        }
        check_uri("Request-URI", &call.request_uri)?;
        check_uri("From", &call.from_uri)?;
        check_uri("To", &call.to_uri)?;
        if let Some(d) = &call.from_display {
            check_text("From", d)?;
        }
        if let Some(c) = &call.credentials {
            check_text("Authorization", &c.username)?;
        }
        let call_id = match call.call_id {
            Some(id)
                if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                return Err(SipError::BadHeader {
                    header: "Call-ID",
                    detail: format!(
                        "\"{}\" is not 1-256 visible ASCII characters",
                        message::truncate_for_log(&id)
                    ),
                });
            }
            Some(id) => id,
            None => format!(
                "{:016x}{:016x}",
                self.rng.random::<u64>(),
                self.rng.random::<u64>()
            ),
        };
        let handle = CallHandle(self.next_call);
        self.next_call = self.next_call.wrapping_add(1);
        let local_tag = self.new_tag();
        let from_party = match &call.from_display {
            Some(d) => format!("{} <{}>;tag={local_tag}", quote(d), call.from_uri),
            None => format!("<{}>;tag={local_tag}", call.from_uri),
        };
        let to_party = format!("<{}>", call.to_uri);
        let dialog = Dialog::new_uac(
            handle,
            call_id.clone(),
            local_tag.clone(),
            from_party.clone(),
            to_party.clone(),
            call.request_uri.clone(),
            call.destination,
            call.transport,
            1,
        );
        self.dialog_index.insert(dialog.key(), handle);
        self.dialogs.insert(handle, dialog);
        self.uac.insert(
            handle,
            UacCall {
                request_uri: call.request_uri,
                destination: call.destination,
                transport: call.transport,
                call_id: call_id.clone(),
                local_tag,
                from_party,
                to_party,
                sdp_offer: call.sdp_offer,
                auth: AuthState::new(call.credentials),
                invite_tx: None,
                branch: String::new(),
                cseq: 1,
                auth_headers: Vec::new(),
                provisional: false,
                early_tag: None,
                cancel: CancelState::None,
                cancel_timer: None,
                answered: false,
                acks: Vec::new(),
                extra_headers: extra,
            },
        );
        if let Err(reason) = self.send_invite(now, handle) {
            // Unreachable with the checks above; never leave a half-made call behind.
            self.uac.remove(&handle);
            self.remove_dialog(handle);
            return Err(SipError::BadHeader {
                header: "Authorization",
                detail: reason,
            });
        }
        Ok((handle, call_id))
    }

    /// Gives up on an unanswered outbound call: CANCEL once a provisional response has arrived
    /// (RFC 3261 9.1: wait for one before sending CANCEL), then the 487 ends it. If a 2xx
    /// crosses the CANCEL, ACK it and send BYE at once. Always ends with exactly one
    /// Event::Failed (or Ended, if the 2xx crossed) for the call.
    pub fn cancel(&mut self, call: CallHandle, now: Instant) -> Result<(), SipError> {
        let Some(u) = self.uac.get_mut(&call).filter(|u| !u.answered) else {
            return Err(match self.dialogs.get(&call) {
                Some(d) => invalid(call, "cancel", d.state),
                None => SipError::UnknownCall(call),
            });
        };
        match (u.cancel, u.provisional) {
            (CancelState::None, false) => u.cancel = CancelState::Requested,
            (CancelState::None, true) => self.send_cancel(now, call),
            _ => {} // already cancelling
        }
        Ok(())
    }

    /// Starts registering; refreshes itself before expiry (at half the granted Expires,
    /// min 5 s early) until `unregister`.
    pub fn register(&mut self, reg: Registration, now: Instant) -> RegHandle {
        let id = self.next_reg;
        self.next_reg = self.next_reg.wrapping_add(1);
        let handle = RegHandle(id);
        let valid = check_uri("Request-URI", &reg.registrar_uri)
            .and_then(|_| check_uri("To", &reg.aor))
            .and_then(|_| match &reg.credentials {
                Some(c) => check_text("Authorization", &c.username),
                None => Ok(()),
            });
        if let Err(e) = valid {
            self.events.push_back(Event::RegistrationFailed {
                reg: handle,
                status: 0,
                reason: e.to_string(),
            });
            return handle;
        }
        let user = message::uri_user(&reg.aor)
            .filter(|u| {
                u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()+%".contains(&b))
            })
            .unwrap_or_else(|| "warmline".into());
        let suffix = reg.transport.uri_param();
        let state = RegState {
            call_id: format!(
                "{:016x}{:016x}",
                self.rng.random::<u64>(),
                self.rng.random::<u64>()
            ),
            local_tag: self.new_tag(),
            cseq: 0,
            auth: AuthState::new(reg.credentials.clone()),
            tx: None,
            timer: None,
            requested: u32::try_from(reg.expires.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
            contact_uri: format!("sip:{user}@{}{suffix}", self.local_addr(reg.transport)),
            unregistering: false,
            reg,
        };
        self.regs.insert(id, state);
        self.send_register(now, id);
        handle
    }

    /// Sends REGISTER with Expires: 0 and stops refreshing.
    pub fn unregister(&mut self, reg: RegHandle, now: Instant) {
        let Some(r) = self.regs.get_mut(&reg.0) else {
            return;
        };
        if r.unregistering {
            return;
        }
        r.unregistering = true;
        r.auth.new_attempt();
        let (timer, tx) = (r.timer.take(), r.tx.take());
        if let Some(key) = timer {
            self.timers.remove(&key);
        }
        if let Some(tx) = tx {
            self.txs.remove(tx);
            self.reg_by_tx.remove(&tx);
        }
        self.send_register(now, reg.0);
    }

    /// The shell could not send to `destination` (e.g. TCP connect failed). Unanswered
    /// outbound calls and REGISTERs in flight towards it fail with 503 (RFC 3261 8.1.3.1);
    /// other requests waiting there (a BYE, a REFER) end as timed out.
    pub fn transport_failed(
        &mut self,
        destination: SocketAddr,
        transport: Transport,
        now: Instant,
    ) {
        let reason = "Service Unavailable (transport error)";
        let mut calls: Vec<CallHandle> = self
            .uac
            .iter()
            .filter(|(_, u)| {
                !u.answered && u.destination == destination && u.transport == transport
            })
            .map(|(c, _)| *c)
            .collect();
        calls.sort();
        for call in calls {
            self.fail_uac(call, 503, reason.into());
        }
        let mut regs: Vec<(u64, TxId)> = self
            .regs
            .iter()
            .filter(|(_, r)| r.reg.destination == destination && r.reg.transport == transport)
            .filter_map(|(id, r)| r.tx.map(|tx| (*id, tx)))
            .collect();
        regs.sort();
        for (id, tx) in regs {
            self.txs.remove(tx);
            self.reg_by_tx.remove(&tx);
            if let Some(r) = self.regs.get_mut(&id) {
                r.tx = None;
            }
            self.registration_failed(now, id, 503, reason.into());
        }
        // In-dialog requests (a BYE to a Contact whose connection is gone) end now instead
        // of by Timer F.
        for ev in self.txs.fail_transport(destination, transport) {
            self.on_tx_event(now, ev);
        }
    }

    /// The shell's stream connection `conn` (TCP or TLS, named by the peer's address) is
    /// closed. Dialogs that used it send their next requests to their Contact or first
    /// Route instead, over a new connection of the same transport (RFC 3261 18.1.1).
    pub fn connection_closed(&mut self, conn: SocketAddr, transport: Transport) {
        for d in self.dialogs.values_mut() {
            if d.transport == transport && d.flow == Some(conn) {
                d.flow = None;
            }
        }
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

    fn on_request(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        req: Request,
        data: &[u8],
    ) {
        let Some(key) = TxKey::server(&req) else {
            return;
        };
        if transport.is_stream() {
            self.note_flow(source, transport, &req);
        }
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
                self.on_invite(now, source, transport, key, ctx, req, data)
            }
            Method::Invite => self.on_reinvite(now, key, ctx, req),
            Method::Cancel => self.on_cancel(now, key, ctx, req),
            Method::Bye => self.on_bye(now, key, ctx, req),
            Method::Options => {
                let extra = vec![hdr("Allow", ALLOW), hdr("Accept", ACCEPT)];
                let status = if self.accepting_calls { 200 } else { 503 };
                self.answer_stateful(now, key, ctx, &req, status, extra);
            }
            Method::Info => self.on_info(now, key, ctx, req),
            Method::Register if self.registrar.is_some() => {
                self.on_register(now, source, transport, key, ctx, req, data)
            }
            Method::Notify => self.on_notify(now, key, ctx, req, data),
            Method::Register
            | Method::Subscribe
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

    #[allow(clippy::too_many_arguments)]
    fn on_invite(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        key: TxKey,
        ctx: ResponseCtx,
        req: Request,
        data: &[u8],
    ) {
        // Authentication first: an unauthenticated caller learns nothing else.
        let needs_auth = self.cfg.auth.inbound && self.guard.trunk_of(source.ip()).is_none();
        let auth_user = if needs_auth {
            match self.check_auth(now, source, "INVITE", &req.uri, data) {
                Ok(user) => Some(user),
                Err((code, extra)) => {
                    self.answer_stateful(now, key, ctx, &req, code, extra);
                    return;
                }
            }
        } else {
            None
        };
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
            auth_user,
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

    /// Digest check of a request. `Err` is the response to send: 401 with a challenge
    /// (no, stale or unusable credentials) or 403 (wrong answer: wrong password and unknown
    /// user get the very same 403).
    fn check_auth(
        &mut self,
        now: Instant,
        source: SocketAddr,
        method: &str,
        uri: &str,
        data: &[u8],
    ) -> Result<String, (u16, Vec<Header>)> {
        let ip = source.ip();
        let Some(ds) = self.digest.as_mut() else {
            return Err((403, Vec::new()));
        };
        let values = raw_header_values(data, "Authorization");
        let verdict = ds.verify(now, ip, method, uri, &values);
        let stale = match verdict {
            Verdict::Ok { username } => {
                self.guard.auth_succeeded(ip);
                return Ok(username);
            }
            Verdict::Failed { claimed } => {
                let blocked = self.guard.auth_failed(now, ip);
                tracing::info!(%source, user = %claimed, method, blocked, "digest authentication failed");
                return Err((403, Vec::new()));
            }
            Verdict::Challenge => false,
            Verdict::Stale => true,
        };
        self.challenges = self.challenges.saturating_add(1);
        let headers = ds
            .challenges(now, ip, stale)
            .into_iter()
            .map(|v| hdr("WWW-Authenticate", v))
            .collect();
        Err((401, headers))
    }

    /// REGISTER from an agent (RFC 3261 10.3): ACL, digest, To must be the user's AOR,
    /// then the registrar.
    #[allow(clippy::too_many_arguments)]
    fn on_register(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        key: TxKey,
        ctx: ResponseCtx,
        req: Request,
        data: &[u8],
    ) {
        if !self.guard.may_register(source.ip()) {
            tracing::info!(%source, "REGISTER from outside the agent networks refused");
            self.answer_stateful(now, key, ctx, &req, 403, Vec::new());
            return;
        }
        let user = match self.check_auth(now, source, "REGISTER", &req.uri, data) {
            Ok(user) => user,
            Err((code, extra)) => {
                self.answer_stateful(now, key, ctx, &req, code, extra);
                return;
            }
        };
        if req.to.user().as_deref() != Some(user.as_str()) {
            tracing::info!(%source, user = %user, to = %message::truncate_for_log(&req.to.uri), "REGISTER for another user's address refused");
            self.answer_stateful(now, key, ctx, &req, 403, Vec::new());
            return;
        }
        let contacts = raw_header_values(data, "Contact");
        let expires = raw_header_values(data, "Expires").into_iter().next();
        let Some(registrar) = self.registrar.as_mut() else {
            return;
        };
        let outcome = registrar.handle_register(
            now,
            &RegisterRequest {
                user: &user,
                call_id: &req.call_id,
                cseq: req.cseq.seq,
                contacts: &contacts,
                expires: expires.as_deref(),
                source,
                transport,
            },
        );
        let tx = self.new_nist(key, ctx, &req);
        let tag = req.to.tag.is_none().then(|| self.new_tag());
        let tag = tag.as_deref();
        match outcome {
            RegisterOutcome::Ok(bindings) => {
                let extra = bindings
                    .into_iter()
                    .map(|(uri, left)| hdr("Contact", format!("<{uri}>;expires={left}")))
                    .collect();
                self.reply_with_reason(tx, now, 200, "OK", tag, extra);
            }
            RegisterOutcome::IntervalTooBrief { min_expires } => {
                let extra = vec![hdr("Min-Expires", min_expires.to_string())];
                self.reply_with_reason(tx, now, 423, reason_phrase(423), tag, extra);
            }
            RegisterOutcome::BadRequest(reason) => {
                self.reply_with_reason(tx, now, 400, &reason, tag, Vec::new());
            }
            RegisterOutcome::OutOfOrder => {
                self.reply_with_reason(tx, now, 500, "Out Of Order", tag, Vec::new());
            }
        }
        self.drain_registrar();
    }

    fn drain_registrar(&mut self) {
        let Some(r) = self.registrar.as_mut() else {
            return;
        };
        while let Some(ev) = r.poll_event() {
            self.events.push_back(match ev {
                RegistrarEvent::AgentRegistered {
                    user,
                    contact,
                    source,
                    transport,
                    expires,
                } => Event::AgentRegistered {
                    user,
                    contact,
                    source,
                    transport,
                    expires,
                },
                RegistrarEvent::AgentUnregistered { user } => Event::AgentUnregistered { user },
            });
        }
    }

    /// NOTIFY in a dialog (RFC 3515 2.4.5): the progress of our REFER, as message/sipfrag.
    fn on_notify(&mut self, now: Instant, key: TxKey, ctx: ResponseCtx, req: Request, data: &[u8]) {
        let Some(call) = self.find_dialog(&req) else {
            self.answer_stateful(now, key, ctx, &req, 481, Vec::new());
            return;
        };
        if let Some(code) = self.check_cseq(call, &req) {
            self.answer_stateful(now, key, ctx, &req, code, Vec::new());
            return;
        }
        let event = raw_header_values(data, "Event");
        let is_refer = event.first().is_some_and(|e| {
            e.split(';')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("refer"))
        });
        if !is_refer {
            let tx = self.new_nist(key, ctx, &req);
            self.reply_with_reason(
                tx,
                now,
                489,
                "Bad Event",
                None,
                vec![hdr("Allow-Events", "refer")],
            );
            return;
        }
        self.answer_stateful(now, key, ctx, &req, 200, Vec::new());
        if !self.transfers.contains_key(&call) {
            return;
        }
        let terminated = raw_header_values(data, "Subscription-State")
            .first()
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("terminated"))
            });
        let frag = (req.media_type().as_deref() == Some("message/sipfrag"))
            .then(|| parse_sipfrag(&req.body))
            .flatten();
        match frag {
            Some((status, _)) if status < 200 => {
                self.events
                    .push_back(Event::TransferProgress { call, status });
            }
            Some((200..=299, _)) => {
                self.end_transfer(call);
                self.events.push_back(Event::TransferDone { call });
                return;
            }
            Some((status, reason)) => {
                self.end_transfer(call);
                self.events.push_back(Event::TransferFailed {
                    call,
                    status,
                    reason,
                });
                return;
            }
            None => {}
        }
        if terminated {
            self.end_transfer(call);
            self.events.push_back(Event::TransferFailed {
                call,
                status: 0,
                reason: "transfer subscription ended without a final status".into(),
            });
        }
    }

    fn end_transfer(&mut self, call: CallHandle) {
        if let Some(t) = self.transfers.remove(&call) {
            if let Some(tx) = t.tx {
                self.refer_by_tx.remove(&tx);
            }
        }
    }

    /// Final response to our REFER.
    fn on_refer_final(&mut self, call: CallHandle, tx: TxId, resp: &Response) {
        let Some(t) = self.transfers.get_mut(&call).filter(|t| t.tx == Some(tx)) else {
            return;
        };
        t.tx = None;
        if (200..300).contains(&resp.status) {
            self.events.push_back(Event::TransferProgress {
                call,
                status: resp.status,
            });
        } else {
            self.transfers.remove(&call);
            self.events.push_back(Event::TransferFailed {
                call,
                status: resp.status,
                reason: resp.reason.clone(),
            });
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
        let Some((kind, call)) = self.txs.get(id).map(|t| (t.kind, t.call)) else {
            return;
        };
        if kind == TxKind::InviteClient {
            let outcome =
                self.txs
                    .invite_client_response(id, now, resp.status, &mut self.transmits);
            let Some(call) = call else {
                return;
            };
            match outcome {
                InviteResponse::Provisional => self.on_uac_provisional(now, call, id, resp),
                InviteResponse::Success => self.on_uac_success(now, call, id, &resp),
                InviteResponse::Failure => self.on_uac_failure(now, call, id, &resp),
                InviteResponse::Absorbed => {}
            }
            return;
        }
        let Some(ev) = self.txs.client_response(id, now, resp.status) else {
            return;
        };
        if let Some(call) = self.refer_by_tx.remove(&id) {
            self.on_refer_final(call, id, &resp);
            return;
        }
        match self.reg_by_tx.remove(&id) {
            Some(reg) => self.on_register_final(now, reg, id, &resp),
            None => self.on_tx_event(now, ev),
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
                ..
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
            // Timer B: no response at all.
            TxEvent::ClientTimeout {
                tx,
                call: Some(call),
                method: Method::Invite,
            } if self.uac.get(&call).is_some_and(|u| u.invite_tx == Some(tx)) => {
                self.fail_uac(call, 408, reason_phrase(408).into());
            }
            TxEvent::ClientTimeout {
                tx,
                method: Method::Refer,
                ..
            } => {
                if let Some(call) = self.refer_by_tx.remove(&tx) {
                    if self.transfers.remove(&call).is_some() {
                        self.events.push_back(Event::TransferFailed {
                            call,
                            status: 408,
                            reason: reason_phrase(408).into(),
                        });
                    }
                }
            }
            TxEvent::ClientTimeout {
                tx,
                method: Method::Register,
                ..
            } => {
                if let Some(id) = self.reg_by_tx.remove(&tx) {
                    self.on_register_timeout(now, id, tx);
                }
            }
            // Timer M: no more 2xx retransmissions to ACK; the dialog (if any) lives on.
            TxEvent::InviteClientEnded {
                tx,
                call: Some(call),
            } if self.uac.get(&call).is_some_and(|u| u.invite_tx == Some(tx)) => {
                if let Some(u) = self.uac.remove(&call) {
                    self.disarm(u.cancel_timer);
                }
            }
            _ => {}
        }
    }

    // ----- outbound call internals -----

    fn send_invite(&mut self, now: Instant, call: CallHandle) -> Result<(), String> {
        let Some(transport) = self.uac.get(&call).map(|u| u.transport) else {
            return Err("unknown call".into());
        };
        let branch = self.new_branch();
        let via = self.via(transport, &branch);
        let contact = self.contact(transport);
        let ua = self.cfg.user_agent.clone();
        let Some(u) = self.uac.get_mut(&call) else {
            return Err("unknown call".into());
        };
        let auth = u
            .auth
            .headers("INVITE", &u.request_uri, &mut self.rng)
            .map_err(|e| e.to_string())?;
        let mut extra = vec![contact, hdr("Allow", ALLOW), hdr("User-Agent", ua)];
        extra.extend(u.extra_headers.iter().cloned());
        extra.extend(auth.iter().cloned());
        if !u.sdp_offer.is_empty() {
            extra.push(hdr("Content-Type", "application/sdp"));
        }
        let payload = out_request(
            &Method::Invite,
            &u.request_uri,
            via,
            &u.from_party,
            &u.to_party,
            &u.call_id,
            u.cseq,
            extra,
            &u.sdp_offer,
        );
        u.branch = branch.clone();
        u.auth_headers = auth;
        u.provisional = false;
        u.early_tag = None;
        let (destination, cseq) = (u.destination, u.cseq);
        let key = TxKey::Client {
            branch,
            method: "INVITE".into(),
        };
        let id = self.txs.create_invite_client(
            now,
            key,
            transport,
            destination,
            payload,
            Some(call),
            &mut self.transmits,
        );
        if let Some(u) = self.uac.get_mut(&call) {
            u.invite_tx = Some(id);
        }
        if let Some(d) = self.dialogs.get_mut(&call) {
            d.local_cseq = cseq;
            d.invite_cseq = cseq;
        }
        Ok(())
    }

    /// CANCEL for the current INVITE (RFC 3261 9.1): same branch, Request-URI, Call-ID,
    /// From, To and CSeq number; ends the call with 408 if no final comes within 64*T1.
    fn send_cancel(&mut self, now: Instant, call: CallHandle) {
        let Some((transport, branch)) =
            self.uac.get(&call).map(|u| (u.transport, u.branch.clone()))
        else {
            return;
        };
        let via = self.via(transport, &branch);
        let ua = self.cfg.user_agent.clone();
        let deadline = now + self.cfg.t1.saturating_mul(64);
        let timer = self.arm(deadline, EpTimer::CancelTimeout(call));
        let Some(u) = self.uac.get_mut(&call) else {
            return;
        };
        let payload = out_request(
            &Method::Cancel,
            &u.request_uri,
            via,
            &u.from_party,
            &u.to_party,
            &u.call_id,
            u.cseq,
            vec![hdr("User-Agent", ua)],
            &[],
        );
        u.cancel = CancelState::Sent;
        let old = u.cancel_timer.replace(timer);
        let destination = u.destination;
        self.disarm(old);
        let key = TxKey::Client {
            branch,
            method: "CANCEL".into(),
        };
        self.txs.create_client(
            now,
            key,
            Method::Cancel,
            transport,
            destination,
            payload,
            Some(call),
            &mut self.transmits,
        );
    }

    fn on_uac_provisional(&mut self, now: Instant, call: CallHandle, tx: TxId, resp: Response) {
        let Some(u) = self.uac.get_mut(&call) else {
            return;
        };
        if u.invite_tx != Some(tx) || u.answered {
            return;
        }
        u.provisional = true;
        if let Some(tag) = resp.to.tag.clone() {
            u.early_tag = Some(tag);
        }
        match u.cancel {
            CancelState::Requested => self.send_cancel(now, call),
            CancelState::Sent => {}
            CancelState::None if resp.status > 100 => {
                let remote_sdp = sdp_body(&resp);
                self.events.push_back(Event::Progress {
                    call,
                    status: resp.status,
                    remote_sdp,
                });
            }
            CancelState::None => {}
        }
    }

    /// A 2xx (RFC 3261 13.2.2.4): the first confirms the dialog and is ACKed; retransmissions
    /// get the same ACK again; a 2xx from another fork is ACKed and hung up at once.
    fn on_uac_success(&mut self, now: Instant, call: CallHandle, tx: TxId, resp: &Response) {
        let tag = resp.to.tag.clone().unwrap_or_default();
        let Some(u) = self.uac.get(&call) else {
            return;
        };
        if let Some((_, ack)) = u.acks.iter().find(|(t, _)| *t == tag) {
            self.transmits.push_back(Transmit {
                transport: ack.transport,
                destination: ack.destination,
                payload: ack.payload.clone(),
            });
            return;
        }
        if u.invite_tx != Some(tx) {
            return;
        }
        let public_addr = self.local_addr(u.transport);
        let ua = self.cfg.user_agent.clone();
        let branch = self.new_branch();
        let Some(u) = self.uac.get_mut(&call) else {
            return;
        };
        let first = !u.answered && self.dialogs.contains_key(&call);
        let mut fork = None;
        let ack = match self.dialogs.get_mut(&call).filter(|_| first) {
            Some(d) => {
                d.confirm_uac(resp);
                d.build_ack(public_addr, &branch, &ua, u.auth_headers.clone())
            }
            None => {
                let mut d = Dialog::new_uac(
                    call,
                    u.call_id.clone(),
                    u.local_tag.clone(),
                    u.from_party.clone(),
                    u.to_party.clone(),
                    u.request_uri.clone(),
                    u.destination,
                    u.transport,
                    u.cseq,
                );
                d.confirm_uac(resp);
                let ack = d.build_ack(public_addr, &branch, &ua, u.auth_headers.clone());
                fork = Some(d);
                ack
            }
        };
        self.transmits.push_back(Transmit {
            transport: ack.transport,
            destination: ack.destination,
            payload: ack.payload.clone(),
        });
        if u.acks.len() < MAX_FORKS {
            u.acks.push((tag, ack));
        }
        if let Some(mut d) = fork {
            tracing::info!(?call, "2xx from another fork: ACK and BYE");
            let branch = self.new_branch();
            let bye = d.build_request(Method::Bye, public_addr, &branch, &ua);
            let key = TxKey::Client {
                branch,
                method: "BYE".into(),
            };
            self.txs.create_client(
                now,
                key,
                Method::Bye,
                bye.transport,
                bye.destination,
                bye.payload,
                None,
                &mut self.transmits,
            );
            return;
        }
        u.answered = true;
        let cancelled = u.cancel != CancelState::None;
        let timer = u.cancel_timer.take();
        self.disarm(timer);
        if cancelled {
            tracing::info!(?call, "2xx crossed our CANCEL: ACK and BYE");
            self.start_bye(call, now);
        } else {
            self.events.push_back(Event::Answered {
                call,
                remote_sdp: sdp_body(resp),
            });
        }
    }

    /// A non-2xx final: ACK it in the transaction (RFC 3261 17.1.1.3), then answer a
    /// challenge or report the failure.
    fn on_uac_failure(&mut self, now: Instant, call: CallHandle, tx: TxId, resp: &Response) {
        let current = self
            .uac
            .get(&call)
            .filter(|u| u.invite_tx == Some(tx))
            .map(|u| (u.transport, u.branch.clone()));
        let Some((transport, branch)) = current else {
            // Only the current INVITE can get a first final; never leave it unACKed.
            self.txs.remove(tx);
            return;
        };
        let via = self.via(transport, &branch);
        let Some(u) = self.uac.get_mut(&call) else {
            return;
        };
        let ack = out_request(
            &Method::Ack,
            &u.request_uri,
            via,
            &u.from_party,
            &resp.to.raw,
            &u.call_id,
            u.cseq,
            Vec::new(),
            &[],
        );
        self.txs.send_ack(tx, now, ack, &mut self.transmits);
        let challenge = matches!(resp.status, 401 | 407) && u.cancel == CancelState::None;
        let reason = if !challenge {
            resp.reason.clone()
        } else {
            match u.auth.on_challenge(resp) {
                Ok(()) => {
                    u.cseq = u.cseq.saturating_add(1).min(MAX_CSEQ);
                    match self.send_invite(now, call) {
                        Ok(()) => return,
                        Err(why) => format!("{} ({why})", resp.reason),
                    }
                }
                Err(why) => format!("{} ({why})", resp.reason),
            }
        };
        self.fail_uac(call, resp.status, reason);
    }

    fn on_cancel_timeout(&mut self, call: CallHandle, key: TimerKey) {
        let due = self
            .uac
            .get(&call)
            .is_some_and(|u| u.cancel_timer == Some(key) && !u.answered);
        if due {
            if let Some(u) = self.uac.get_mut(&call) {
                u.cancel_timer = None;
            }
            self.fail_uac(call, 408, reason_phrase(408).into());
        }
    }

    /// Ends an unanswered outbound call with exactly one `Failed`.
    fn fail_uac(&mut self, call: CallHandle, status: u16, reason: String) {
        let Some(u) = self.uac.remove(&call) else {
            return;
        };
        self.disarm(u.cancel_timer);
        if let Some(tx) = u.invite_tx {
            // A Proceeding INVITE has no timer left that would ever end it.
            let open = self
                .txs
                .get(tx)
                .is_some_and(|t| matches!(t.state, TxState::Trying | TxState::Proceeding));
            if open {
                self.txs.remove(tx);
            }
        }
        self.remove_dialog(call);
        self.events.push_back(Event::Failed {
            call,
            status,
            reason,
        });
    }

    // ----- registration internals -----

    fn send_register(&mut self, now: Instant, id: u64) {
        let Some(transport) = self.regs.get(&id).map(|r| r.reg.transport) else {
            return;
        };
        let branch = self.new_branch();
        let via = self.via(transport, &branch);
        let ua = self.cfg.user_agent.clone();
        let Some(r) = self.regs.get_mut(&id) else {
            return;
        };
        r.cseq = r.cseq.saturating_add(1).min(MAX_CSEQ);
        let expires = if r.unregistering { 0 } else { r.requested };
        let auth = match r
            .auth
            .headers("REGISTER", &r.reg.registrar_uri, &mut self.rng)
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(reg = id, error = %e, "cannot answer the digest challenge");
                Vec::new()
            }
        };
        let mut extra = vec![
            hdr("Contact", format!("<{}>;expires={expires}", r.contact_uri)),
            hdr("Expires", expires.to_string()),
            hdr("Allow", ALLOW),
            hdr("User-Agent", ua),
        ];
        extra.extend(auth);
        let payload = out_request(
            &Method::Register,
            &r.reg.registrar_uri,
            via,
            &format!("<{}>;tag={}", r.reg.aor, r.local_tag),
            &format!("<{}>", r.reg.aor),
            &r.call_id,
            r.cseq,
            extra,
            &[],
        );
        let destination = r.reg.destination;
        let key = TxKey::Client {
            branch,
            method: "REGISTER".into(),
        };
        let tx = self.txs.create_client(
            now,
            key,
            Method::Register,
            transport,
            destination,
            payload,
            None,
            &mut self.transmits,
        );
        if let Some(r) = self.regs.get_mut(&id) {
            r.tx = Some(tx);
        }
        self.reg_by_tx.insert(tx, id);
    }

    fn on_register_final(&mut self, now: Instant, id: u64, tx: TxId, resp: &Response) {
        let Some(r) = self.regs.get_mut(&id).filter(|r| r.tx == Some(tx)) else {
            return;
        };
        r.tx = None;
        let status = resp.status;
        if r.unregistering {
            if matches!(status, 401 | 407) && r.auth.on_challenge(resp).is_ok() {
                self.send_register(now, id);
            } else {
                tracing::info!(reg = id, status, "unregistered");
                if let Some(r) = self.regs.remove(&id) {
                    self.disarm(r.timer);
                }
            }
            return;
        }
        match status {
            200..=299 => {
                let granted = granted_expires(resp, &r.contact_uri).unwrap_or(r.requested);
                if granted == 0 {
                    let reason = "registrar granted no binding time".to_string();
                    self.registration_failed(now, id, status, reason);
                    return;
                }
                let timer = self.arm(now + refresh_delay(granted), EpTimer::Register(id));
                if let Some(r) = self.regs.get_mut(&id) {
                    let old = r.timer.replace(timer);
                    self.disarm(old);
                }
                self.events.push_back(Event::Registered {
                    reg: RegHandle(id),
                    expires: Duration::from_secs(granted.into()),
                });
            }
            401 | 407 => match r.auth.on_challenge(resp) {
                Ok(()) => self.send_register(now, id),
                Err(why) => {
                    let reason = format!("{} ({why})", resp.reason);
                    self.registration_failed(now, id, status, reason);
                }
            },
            423 => match resp.min_expires.filter(|m| *m > r.requested) {
                Some(min) => {
                    r.requested = min;
                    self.send_register(now, id);
                }
                None => self.registration_failed(now, id, status, resp.reason.clone()),
            },
            _ => self.registration_failed(now, id, status, resp.reason.clone()),
        }
    }

    fn on_register_timeout(&mut self, now: Instant, id: u64, tx: TxId) {
        let Some(r) = self.regs.get_mut(&id).filter(|r| r.tx == Some(tx)) else {
            return;
        };
        r.tx = None;
        if r.unregistering {
            if let Some(r) = self.regs.remove(&id) {
                self.disarm(r.timer);
            }
            return;
        }
        self.registration_failed(now, id, 408, reason_phrase(408).into());
    }

    /// Reports the failure and schedules a retry (or drops an unregistration).
    fn registration_failed(&mut self, now: Instant, id: u64, status: u16, reason: String) {
        let Some(unregistering) = self.regs.get(&id).map(|r| r.unregistering) else {
            return;
        };
        if unregistering {
            if let Some(r) = self.regs.remove(&id) {
                self.disarm(r.timer);
            }
            return;
        }
        tracing::warn!(reg = id, status, %reason, "registration failed, retrying later");
        let timer = self.arm(now + REGISTER_RETRY, EpTimer::Register(id));
        if let Some(r) = self.regs.get_mut(&id) {
            let old = r.timer.replace(timer);
            self.disarm(old);
        }
        self.events.push_back(Event::RegistrationFailed {
            reg: RegHandle(id),
            status,
            reason,
        });
    }

    fn on_register_timer(&mut self, now: Instant, id: u64, key: TimerKey) {
        let Some(r) = self.regs.get_mut(&id).filter(|r| r.timer == Some(key)) else {
            return;
        };
        r.timer = None;
        if r.tx.is_some() || r.unregistering {
            return;
        }
        r.auth.new_attempt();
        self.send_register(now, id);
    }

    fn arm(&mut self, at: Instant, timer: EpTimer) -> TimerKey {
        let key = (at, self.next_timer);
        self.next_timer = self.next_timer.wrapping_add(1);
        self.timers.insert(key, timer);
        key
    }

    fn disarm(&mut self, key: Option<TimerKey>) {
        if let Some(key) = key {
            self.timers.remove(&key);
        }
    }

    // ----- helpers -----

    /// An in-dialog request over a stream: the peer's current connection, which our own
    /// requests then reuse (a phone that reconnected, e.g. after a NAT rebinding).
    fn note_flow(&mut self, source: SocketAddr, transport: Transport, req: &Request) {
        let Some(call) = self.find_dialog(req) else {
            return;
        };
        if let Some(d) = self.dialogs.get_mut(&call) {
            if d.transport == transport {
                d.flow = Some(source);
            }
        }
    }

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

    fn new_branch(&mut self) -> String {
        format!("z9hG4bK{:016x}", self.rng.random::<u64>())
    }

    /// Our address as peers of `transport` reach it: the TLS listener for TLS.
    fn local_addr(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Tls => self.cfg.tls_public_addr.unwrap_or(self.cfg.public_addr),
            Transport::Udp | Transport::Tcp => self.cfg.public_addr,
        }
    }

    /// Via of a request we send (RFC 3581 rport asked for).
    fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.via_token(),
            self.local_addr(transport)
        )
    }

    fn contact(&self, transport: Transport) -> Header {
        hdr(
            "Contact",
            format!(
                "<sip:warmline@{}{}>",
                self.local_addr(transport),
                transport.uri_param()
            ),
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
        let Some(transport) = self.dialogs.get(&call).map(|d| d.transport) else {
            return;
        };
        let (public_addr, ua) = (self.local_addr(transport), self.cfg.user_agent.clone());
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
        self.end_transfer(call);
    }

    fn new_tag(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }
}

/// An out-of-dialog request we originate (INVITE, its CANCEL and non-2xx ACK, REGISTER).
#[allow(clippy::too_many_arguments)]
fn out_request(
    method: &Method,
    uri: &str,
    via: String,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: Vec<Header>,
    body: &[u8],
) -> Vec<u8> {
    let mut headers = Vec::with_capacity(6 + extra.len());
    headers.push(hdr("Via", via));
    headers.push(hdr("Max-Forwards", "70"));
    headers.push(hdr("From", from.to_string()));
    headers.push(hdr("To", to.to_string()));
    headers.push(hdr("Call-ID", call_id.to_string()));
    headers.push(hdr("CSeq", format!("{cseq} {method}")));
    headers.extend(extra);
    serialize_request(method, uri, headers, body)
}

/// Adds header lines to a serialised body-less request (the dialog layer builds in-dialog
/// requests without extra headers). Values were validated by the caller.
fn with_headers(mut payload: Vec<u8>, extra: &[(&str, String)]) -> Vec<u8> {
    if !payload.ends_with(b"\r\n\r\n") {
        return payload;
    }
    payload.truncate(payload.len() - 2);
    for (name, value) in extra {
        payload.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    payload.extend_from_slice(b"\r\n");
    payload
}

/// The status line of a message/sipfrag body (RFC 3420), e.g. `SIP/2.0 180 Ringing`.
fn parse_sipfrag(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body.get(..body.len().min(512))?).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let code: u16 = code.parse().ok().filter(|c| (100..700).contains(c))?;
    Some((code, message::truncate_for_log(reason.trim())))
}

/// The body of a response if it is SDP.
fn sdp_body(resp: &Response) -> Option<Vec<u8>> {
    (!resp.body.is_empty() && resp.media_type().as_deref() == Some("application/sdp"))
        .then(|| resp.body.clone())
}

/// The binding lifetime a REGISTER 2xx granted: our Contact's `expires` parameter, else
/// the Expires header.
fn granted_expires(resp: &Response, contact_uri: &str) -> Option<u32> {
    let base = |uri: &str| uri.split(';').next().unwrap_or("").to_ascii_lowercase();
    let ours = base(contact_uri);
    resp.contacts
        .iter()
        .filter(|c| base(&c.uri) == ours)
        .find_map(|c| {
            c.params.split(';').find_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("expires")
                    .then(|| message::parse_seconds(value.trim().trim_matches('"')))
                    .flatten()
            })
        })
        .or(resp.expires)
}

/// When to refresh a binding granted for `granted` seconds: at half its lifetime, and at
/// least 5 s before it runs out (but never sooner than 1 s from now, nor later than a day).
fn refresh_delay(granted: u32) -> Duration {
    let g = Duration::from_secs(granted.into());
    (g / 2)
        .min(g.saturating_sub(REGISTER_MARGIN))
        .clamp(Duration::from_secs(1), REGISTER_MAX_REFRESH)
}

/// A URI we put into a request line or header: it must parse as one and contain no
/// control characters.
fn check_uri(header: &'static str, uri: &str) -> Result<(), SipError> {
    check_text(header, uri)?;
    if uri.contains(['<', '>', '"']) {
        return Err(SipError::BadHeader {
            header,
            detail: format!("bad URI \"{}\"", message::truncate_for_log(uri)),
        });
    }
    NameAddr::parse(&format!("<{uri}>"), header).map(|_| ())
}

fn check_text(header: &'static str, text: &str) -> Result<(), SipError> {
    if text.chars().any(char::is_control) {
        return Err(SipError::BadHeader {
            header,
            detail: format!(
                "control character in \"{}\"",
                message::truncate_for_log(text)
            ),
        });
    }
    Ok(())
}

/// A display name as a quoted-string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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
    use crate::sip::digest;
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
            req.via_transport = self.transport.via_token();
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
            assert!(self.ep.uac.is_empty(), "outbound calls leaked");
            assert!(self.ep.regs.is_empty(), "registrations leaked");
            assert!(self.ep.reg_by_tx.is_empty(), "REGISTER index leaked");
            assert!(self.ep.timers.is_empty(), "endpoint timers leaked");
            assert!(self.ep.dialog_index.is_empty(), "dialog index leaked");
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

    /// A draining appliance tells probes it is unavailable, and says so no longer once it takes
    /// calls again.
    #[test]
    fn options_gets_503_while_not_accepting_calls() {
        let mut h = Harness::new(Transport::Udp);
        let probe = |n: &str| {
            let mut opt = Req::invite(n).no_body();
            opt.method = "OPTIONS".into();
            opt.cseq_method = "OPTIONS".into();
            opt
        };
        h.ep.set_accepting_calls(false);
        h.send(&probe("drain-1"));
        assert_eq!(h.codes(), vec![503]);
        h.ep.set_accepting_calls(true);
        h.send(&probe("drain-2"));
        assert_eq!(h.codes(), vec![200]);
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

    // ----- SIP over TLS and connection reuse -----

    /// Our UDP/TCP address and our TLS address (another port).
    fn tls_harness() -> Harness {
        let mut cfg = EndpointConfig::new("10.0.0.1:5060".parse().unwrap());
        cfg.tls_public_addr = Some("10.0.0.1:5061".parse().unwrap());
        let mut h = Harness::with_config(Transport::Tls, cfg);
        // A phone's TLS connection comes from an ephemeral port; its Contact names another.
        h.peer = "10.0.0.2:40001".parse().unwrap();
        h
    }

    fn tls_invite(call_id: &str) -> Req {
        let mut inv = Req::invite(call_id);
        inv.extra[0] = "Contact: <sip:alice@10.0.0.2:5063;transport=tls>".into();
        inv
    }

    const TLS_CONTACT: &str = "<sip:warmline@10.0.0.1:5061;transport=tls>";

    #[test]
    fn call_over_tls_is_answered_with_a_tls_contact_and_bye_reuses_its_connection() {
        let mut h = tls_harness();
        let inv = tls_invite("tls1");
        let call = h.incoming(&inv);
        match &h.ep.dialogs.get(&call).map(|d| d.transport) {
            Some(Transport::Tls) => {}
            other => panic!("dialog transport {other:?}"),
        }
        h.ep.ring(call, h.now);
        let ringing = h.take_sent();
        assert_eq!(header_values(&ringing[0], "Contact"), vec![TLS_CONTACT]);
        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
        let ok = h.take_sent();
        assert_eq!(ok.len(), 1);
        assert_eq!(
            (ok[0].transport, ok[0].destination),
            (Transport::Tls, h.peer)
        );
        assert_eq!(
            header_values(&ok[0], "Contact"),
            vec![TLS_CONTACT],
            "the TLS address and transport=tls, not the UDP/TCP address"
        );
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(32_000)),
            "no 2xx resend"
        );
        let tag = to_tag(&ok[0]);
        h.send(&inv.ack_2xx(&tag));
        h.take_events();

        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        assert_eq!(bye.len(), 1);
        assert_eq!(
            (bye[0].transport, bye[0].destination),
            (Transport::Tls, h.peer),
            "over the connection the INVITE came on, not to the Contact's 10.0.0.2:5063"
        );
        assert!(
            text(&bye[0]).starts_with("BYE sip:alice@10.0.0.2:5063;transport=tls SIP/2.0\r\n"),
            "{}",
            text(&bye[0])
        );
        assert!(header_values(&bye[0], "Via")[0]
            .starts_with("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK"));
        h.send_raw(&reply_to(&bye[0], 200));
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
    fn once_the_tls_connection_is_gone_requests_go_to_the_contact_over_tls() {
        let mut h = tls_harness();
        let inv = tls_invite("tls2");
        let (call, _) = h.established(&inv);
        // Other connections closing change nothing: a TCP one from the same address, and
        // another TLS connection.
        h.ep.connection_closed(h.peer, Transport::Tcp);
        h.ep.connection_closed("10.0.0.2:40002".parse().unwrap(), Transport::Tls);
        h.ep.refer(call, "sip:agent@10.0.0.9", h.now).unwrap();
        let refer = h.take_sent();
        assert_eq!(
            (refer[0].transport, refer[0].destination),
            (Transport::Tls, h.peer)
        );
        assert_eq!(header_values(&refer[0], "Contact"), vec![TLS_CONTACT]);
        h.send_raw(&reply_to(&refer[0], 202));

        h.ep.connection_closed(h.peer, Transport::Tls);
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        assert_eq!(bye.len(), 1);
        assert_eq!(
            (bye[0].transport, bye[0].destination),
            (Transport::Tls, "10.0.0.2:5063".parse().unwrap()),
            "to the Contact, and over TLS (the shell connects with TLS)"
        );
        assert!(header_values(&bye[0], "Via")[0].starts_with("SIP/2.0/TLS 10.0.0.1:5061;"));
        h.send_raw(&reply_to(&bye[0], 200));
        h.take_events();
        h.assert_clean();

        // The Contact cannot be reached either: the call ends now, not after Timer F.
        let inv = tls_invite("tls2b");
        let (call, _) = h.established(&inv);
        h.ep.connection_closed(h.peer, Transport::Tls);
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        let contact = bye[0].destination;
        h.ep.transport_failed(contact, Transport::Tcp, h.now);
        assert!(h.take_events().is_empty(), "another transport: nothing");
        h.ep.transport_failed(contact, Transport::Tls, h.now);
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
    fn a_peer_that_reconnects_gets_our_requests_on_its_new_connection() {
        let mut h = tls_harness();
        let inv = tls_invite("tls3");
        let (call, tag) = h.established(&inv);
        h.ep.connection_closed(h.peer, Transport::Tls);
        // The phone reconnects (new source port) and sends a request in the dialog.
        h.peer = "10.0.0.2:40007".parse().unwrap();
        let info = inv
            .in_dialog("INFO", &tag, 2, 1)
            .with_body("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n");
        h.send(&info);
        let ok = h.take_sent();
        assert_eq!((ok[0].destination, resp(&ok[0]).status), (h.peer, 200));
        h.take_events();
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        assert_eq!(
            (bye[0].transport, bye[0].destination),
            (Transport::Tls, h.peer)
        );
        h.send_raw(&reply_to(&bye[0], 200));
        h.take_events();
        h.assert_clean();
    }

    #[test]
    fn tcp_dialogs_reuse_the_callers_connection_too() {
        let mut h = Harness::new(Transport::Tcp);
        h.peer = "10.0.0.2:40001".parse().unwrap();
        let mut inv = Req::invite("tcpreuse");
        inv.extra[0] = "Contact: <sip:alice@10.0.0.2:5062;transport=tcp>".into();
        let (call, _) = h.established(&inv);
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        assert_eq!(
            (bye[0].transport, bye[0].destination),
            (Transport::Tcp, h.peer)
        );
        assert!(header_values(&bye[0], "Via")[0].starts_with("SIP/2.0/TCP 10.0.0.1:5060;"));
        h.send_raw(&reply_to(&bye[0], 200));
        h.take_events();
        h.assert_clean();
    }

    #[test]
    fn outbound_call_over_tls_keeps_to_the_connection_it_opened() {
        let mut h = tls_harness();
        h.peer = trunk();
        let (call, _, inv) = h.dial(outbound(Transport::Tls, None));
        assert_eq!((inv.transport, inv.destination), (Transport::Tls, trunk()));
        assert!(header_values(&inv, "Via")[0].starts_with("SIP/2.0/TLS 10.0.0.1:5061;branch="));
        assert_eq!(header_values(&inv, "Contact"), vec![TLS_CONTACT]);
        // The callee's Contact names another address; ACK and BYE still use our connection.
        h.send_raw(&uas_reply(
            &inv,
            200,
            Some("callee"),
            &["Contact: <sip:bob@10.0.0.7:5071;transport=tls>"],
            SDP,
        ));
        let ack = h.take_sent();
        assert!(is(&ack[0], "ACK sip:bob@10.0.0.7:5071;transport=tls"));
        assert_eq!(
            (ack[0].transport, ack[0].destination),
            (Transport::Tls, trunk())
        );
        h.take_events();
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent();
        assert_eq!(
            (bye[0].transport, bye[0].destination),
            (Transport::Tls, trunk())
        );
        h.send_raw(&reply_to(&bye[0], 200));
        h.take_events();
        h.assert_clean();
    }

    // ----- outbound calls (UAC) and registration -----

    const TRUNK: &str = "10.0.0.2:5061";
    const RURI: &str = "sip:+15551230001@10.0.0.2:5061";

    fn trunk() -> SocketAddr {
        TRUNK.parse().unwrap()
    }

    fn alice() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }
    }

    fn outbound(transport: Transport, credentials: Option<Credentials>) -> OutboundCall {
        OutboundCall {
            call_id: None,
            request_uri: RURI.into(),
            destination: trunk(),
            transport,
            from_uri: "sip:+15550000000@10.0.0.1:5060".into(),
            from_display: Some("Warm \"Line\"".into()),
            to_uri: RURI.into(),
            sdp_offer: ANSWER.to_vec(),
            credentials,
        }
    }

    fn request(t: &Transmit) -> Request {
        match parse(&t.payload, &Limits::default()) {
            Ok(Some(Message::Request(r))) => r,
            other => panic!("not a request: {other:?}\n{}", text(t)),
        }
    }

    fn is(t: &Transmit, method: &str) -> bool {
        text(t).starts_with(&format!("{method} "))
    }

    /// The fake UAS's response to a request we sent: Via/From/To/Call-ID/CSeq copied, a
    /// To tag added, `extra` header lines and an optional SDP body.
    fn uas_reply(
        req: &Transmit,
        code: u16,
        tag: Option<&str>,
        extra: &[&str],
        sdp: &[u8],
    ) -> Vec<u8> {
        let text = text(req);
        let mut s = format!("SIP/2.0 {code} {}\r\n", reason_phrase(code));
        for line in text.split("\r\n") {
            if line.starts_with("To:") {
                s += line;
                if let Some(tag) = tag.filter(|_| !line.contains(";tag=")) {
                    s += &format!(";tag={tag}");
                }
                s += "\r\n";
            } else if ["Via:", "From:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|p| line.starts_with(p))
            {
                s += line;
                s += "\r\n";
            }
        }
        for e in extra {
            s += e;
            s += "\r\n";
        }
        if !sdp.is_empty() {
            s += "Content-Type: application/sdp\r\n";
        }
        s += &format!("Content-Length: {}\r\n\r\n", sdp.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(sdp);
        out
    }

    /// A parameter of an Authorization header we built (quoted or token value).
    fn auth_param(value: &str, name: &str) -> Option<String> {
        let rest = value.strip_prefix("Digest ")?;
        for part in rest.split(", ") {
            if let Some(v) = part.strip_prefix(&format!("{name}=")) {
                return Some(v.trim_matches('"').to_string());
            }
        }
        None
    }

    /// The response an Authorization header must carry, recomputed from its own fields.
    fn expected_response(value: &str, challenge: &str, method: &str) -> String {
        let ch = digest::parse_challenge(challenge).unwrap();
        let uri = auth_param(value, "uri").unwrap();
        let cnonce = auth_param(value, "cnonce").unwrap_or_default();
        let nc = auth_param(value, "nc")
            .map(|n| u32::from_str_radix(&n, 16).unwrap())
            .unwrap_or(1);
        let h = digest::authorization(&ch, &alice(), method, &uri, nc, &cnonce).unwrap();
        auth_param(&h, "response").unwrap()
    }

    impl Harness {
        /// `invite` and the INVITE it sent.
        fn dial(&mut self, call: OutboundCall) -> (CallHandle, String, Transmit) {
            let (handle, call_id) = self.ep.invite(call, self.now).unwrap();
            let mut sent = self.take_sent();
            assert_eq!(sent.len(), 1, "one INVITE");
            let inv = sent.remove(0);
            assert!(is(&inv, "INVITE"));
            (handle, call_id, inv)
        }

        /// Dials and gets a 200 with tag `tag`; returns call, INVITE, our tag and the ACK.
        fn answered(
            &mut self,
            tag: &str,
            extra: &[&str],
        ) -> (CallHandle, Transmit, String, Transmit) {
            let (call, _, inv) = self.dial(outbound(Transport::Udp, None));
            self.send_raw(&uas_reply(&inv, 200, Some(tag), extra, SDP));
            let mut sent = self.take_sent();
            assert_eq!(sent.len(), 1, "just the ACK");
            let ack = sent.remove(0);
            assert!(is(&ack, "ACK"), "{}", text(&ack));
            assert_eq!(
                self.take_events(),
                vec![Event::Answered {
                    call,
                    remote_sdp: Some(SDP.to_vec())
                }]
            );
            let ours = request(&inv).from.tag.unwrap();
            (call, inv, ours, ack)
        }
    }

    #[test]
    fn uac_invite_headers_timer_a_and_timer_b_408() {
        let mut h = Harness::new(Transport::Udp);
        let (call, call_id, inv) = h.dial(outbound(Transport::Udp, None));
        assert_eq!((inv.destination, inv.transport), (trunk(), Transport::Udp));
        assert!(text(&inv).starts_with(&format!("INVITE {RURI} SIP/2.0\r\n")));
        let r = request(&inv);
        let via = &r.vias[0];
        assert!(via.has_rfc3261_branch() && via.rport, "{via:?}");
        assert_eq!(
            (via.transport.as_str(), via.sent_by()),
            ("UDP", "10.0.0.1:5060".to_string())
        );
        assert_eq!(r.max_forwards, Some(70));
        assert_eq!(r.from.display.as_deref(), Some("Warm \"Line\""));
        assert_eq!(r.from.uri, "sip:+15550000000@10.0.0.1:5060");
        assert!(r.from.tag.as_ref().is_some_and(|t| t.len() >= 8));
        assert_eq!((r.to.uri.as_str(), r.to.tag.as_ref()), (RURI, None));
        assert_eq!(r.call_id, call_id);
        assert_eq!((r.cseq.seq, &r.cseq.method), (1, &Method::Invite));
        assert_eq!(
            r.contact.as_ref().unwrap().uri,
            "sip:warmline@10.0.0.1:5060"
        );
        assert_eq!(header_values(&inv, "Allow"), vec![ALLOW]);
        assert_eq!(header_values(&inv, "User-Agent").len(), 1);
        assert_eq!(r.media_type().as_deref(), Some("application/sdp"));
        assert_eq!(r.body, ANSWER);
        assert_eq!(h.ep.active_calls(), 1);

        h.run_idle();
        let times: Vec<Duration> = h
            .sent
            .iter()
            .map(|(at, t)| {
                assert_eq!(t.payload, inv.payload, "identical retransmission");
                *at - h.t0
            })
            .collect();
        assert_eq!(
            times,
            vec![
                ms(500),
                ms(1500),
                ms(3500),
                ms(7500),
                ms(15_500),
                ms(31_500)
            ],
            "Timer A doubles without the T2 cap"
        );
        h.take_sent();
        assert_eq!(h.now - h.t0, ms(32_000), "Timer B = 64*T1");
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                call,
                status: 408,
                reason: "Request Timeout".into()
            }]
        );
        h.assert_clean();

        let (_, other_id, other) = h.dial(outbound(Transport::Udp, None));
        assert_ne!(other_id, call_id, "unique Call-ID");
        assert_ne!(request(&other).from.tag, r.from.tag);
        assert_ne!(request(&other).vias[0].branch, via.branch);
    }

    #[test]
    fn uac_over_tcp_has_transport_param_and_no_timer_a() {
        let mut h = Harness::new(Transport::Tcp);
        let (call, _, inv) = h.dial(outbound(Transport::Tcp, None));
        assert_eq!(inv.transport, Transport::Tcp);
        assert!(
            header_values(&inv, "Via")[0].starts_with("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK")
        );
        assert_eq!(
            header_values(&inv, "Contact"),
            vec!["<sip:warmline@10.0.0.1:5060;transport=tcp>"]
        );
        assert_eq!(h.ep.poll_timeout(), Some(h.t0 + ms(32_000)), "only Timer B");
        h.step();
        assert!(h.take_sent().is_empty(), "no retransmission over TCP");
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { call: c, status: 408, .. }] if *c == call
        ));
        h.assert_clean();
    }

    #[test]
    fn uac_provisionals_early_media_then_answer_builds_dialog() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.send_raw(&uas_reply(&inv, 100, None, &[], b""));
        assert!(h.take_events().is_empty(), "no event for 100 Trying");
        h.advance_to(h.t0 + ms(60_000));
        assert!(
            h.take_sent().is_empty(),
            "no retransmission, no Timer B once proceeding"
        );
        assert!(h.take_events().is_empty());

        h.send_raw(&uas_reply(&inv, 180, Some("uas1"), &[], b""));
        assert_eq!(
            h.take_events(),
            vec![Event::Progress {
                call,
                status: 180,
                remote_sdp: None
            }]
        );
        h.send_raw(&uas_reply(&inv, 183, Some("uas1"), &[], SDP));
        assert_eq!(
            h.take_events(),
            vec![Event::Progress {
                call,
                status: 183,
                remote_sdp: Some(SDP.to_vec())
            }]
        );
        assert_eq!(
            h.ep.uac[&call].early_tag.as_deref(),
            Some("uas1"),
            "early dialog"
        );
        assert!(h.take_sent().is_empty());

        let ok = uas_reply(
            &inv,
            200,
            Some("uas1"),
            &[
                "Record-Route: <sip:10.0.0.50:5080;lr>, <sip:10.0.0.51;lr>",
                "Contact: <sip:bob@10.0.0.3:5070>",
            ],
            SDP,
        );
        h.send_raw(&ok);
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        let ack = &sent[0];
        assert!(
            text(ack).starts_with("ACK sip:bob@10.0.0.3:5070 SIP/2.0\r\n"),
            "{}",
            text(ack)
        );
        assert_eq!(
            header_values(ack, "Route"),
            vec!["<sip:10.0.0.51;lr>", "<sip:10.0.0.50:5080;lr>"],
            "UAC route set is Record-Route reversed"
        );
        assert_eq!(ack.destination, "10.0.0.51:5060".parse().unwrap());
        let (a, i) = (request(ack), request(&inv));
        assert_eq!((a.cseq.seq, &a.cseq.method), (1, &Method::Ack));
        assert_ne!(
            a.vias[0].branch, i.vias[0].branch,
            "ACK for 2xx is a new transaction"
        );
        assert_eq!(a.from.tag, i.from.tag);
        assert_eq!(a.to.tag.as_deref(), Some("uas1"));
        assert_eq!(a.call_id, i.call_id);
        assert_eq!(
            h.take_events(),
            vec![Event::Answered {
                call,
                remote_sdp: Some(SDP.to_vec())
            }]
        );
        h.send_raw(&ok);
        assert_eq!(
            h.take_sent(),
            vec![ack.clone()],
            "retransmitted 2xx: same ACK"
        );
        assert!(h.take_events().is_empty(), "Answered only once");
        assert!(
            h.ep.cancel(call, h.now).is_err(),
            "an answered call is hung up, not cancelled"
        );

        h.ep.hangup(call, h.now).unwrap();
        let sent = h.take_sent();
        let bye = &sent[0];
        assert!(text(bye).starts_with("BYE sip:bob@10.0.0.3:5070 SIP/2.0\r\n"));
        assert_eq!(
            header_values(bye, "Route"),
            vec!["<sip:10.0.0.51;lr>", "<sip:10.0.0.50:5080;lr>"]
        );
        assert_eq!(bye.destination, "10.0.0.51:5060".parse().unwrap());
        let b = request(bye);
        assert_eq!((b.cseq.seq, &b.cseq.method), (2, &Method::Bye));
        assert_eq!(b.from.raw, i.from.raw, "From: our party with our tag");
        assert_eq!(
            b.to.tag.as_deref(),
            Some("uas1"),
            "To: their party with their tag"
        );
        h.send_raw(&reply_to(bye, 200));
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
    fn uac_dialog_takes_info_reinvite_and_remote_bye() {
        let mut h = Harness::new(Transport::Udp);
        let (call, inv, ours, _) = h.answered("uas2", &["Contact: <sip:bob@10.0.0.2:5061>"]);
        let mut far = Req::invite(&request(&inv).call_id);
        far.from_tag = "uas2".into();

        h.send(
            &far.in_dialog("INFO", "not-ours", 1, 1)
                .with_body("application/dtmf", b"1"),
        );
        assert_eq!(h.codes(), vec![481]);
        let mut stranger = far
            .in_dialog("INFO", &ours, 1, 2)
            .with_body("application/dtmf", b"1");
        stranger.from_tag = "someone-else".into();
        h.send(&stranger);
        assert_eq!(h.codes(), vec![481], "From tag must be theirs");

        h.send(
            &far.in_dialog("INFO", &ours, 1, 3)
                .with_body("application/dtmf-relay", b"Signal=7\r\nDuration=100\r\n"),
        );
        assert_eq!(h.codes(), vec![200]);
        assert_eq!(
            h.take_events(),
            vec![Event::Dtmf {
                call,
                digit: '7',
                duration_ms: Some(100)
            }]
        );
        let re = far
            .in_dialog("INVITE", &ours, 2, 4)
            .with_body("application/sdp", SDP);
        h.send(&re);
        assert_eq!(h.codes(), vec![100]);
        assert_eq!(
            h.take_events(),
            vec![Event::ReInvite {
                call,
                remote_sdp: Some(SDP.to_vec())
            }]
        );
        h.ep.answer_reinvite(call, ANSWER.to_vec(), h.now).unwrap();
        let ok = resp(&h.take_sent()[0]);
        assert_eq!(
            (ok.status, ok.to.tag.as_deref()),
            (200, Some(ours.as_str()))
        );
        h.send(&re.ack_2xx(&ours));
        assert!(h.take_events().is_empty());
        h.send(&far.in_dialog("BYE", &ours, 3, 5));
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

    const MD5_CHALLENGE: &str =
        "Digest realm=\"trunk.example\", nonce=\"n-md5\", algorithm=MD5, qop=\"auth\"";
    const SHA_CHALLENGE: &str =
        "Digest realm=\"trunk.example\", nonce=\"n-sha\", algorithm=SHA-256, \
         qop=\"auth,auth-int\", opaque=\"op\"";

    #[test]
    fn uac_401_is_acked_and_answered_with_sha256_credentials() {
        let mut h = Harness::new(Transport::Udp);
        let (call, call_id, inv) = h.dial(outbound(Transport::Udp, Some(alice())));
        let challenge = uas_reply(
            &inv,
            401,
            Some("t401"),
            &[
                &format!("WWW-Authenticate: {MD5_CHALLENGE}"),
                &format!("WWW-Authenticate: {SHA_CHALLENGE}"),
            ],
            b"",
        );
        h.send_raw(&challenge);
        let sent = h.take_sent();
        assert_eq!(sent.len(), 2, "ACK and the new INVITE");
        let (ack, inv2) = (&sent[0], &sent[1]);
        assert!(text(ack).starts_with(&format!("ACK {RURI} SIP/2.0\r\n")));
        let (a, i1, i2) = (request(ack), request(&inv), request(inv2));
        assert_eq!(
            a.vias[0].branch, i1.vias[0].branch,
            "non-2xx ACK: same transaction"
        );
        assert_eq!((a.cseq.seq, &a.cseq.method), (1, &Method::Ack));
        assert_eq!(a.to.tag.as_deref(), Some("t401"));
        assert_eq!(ack.destination, trunk());
        assert!(is(inv2, "INVITE"));
        assert_eq!(i2.call_id, call_id);
        assert_eq!(i2.from.raw, i1.from.raw, "same From tag");
        assert_eq!(i2.to.tag, None);
        assert_eq!(i2.cseq.seq, 2);
        assert_ne!(i2.vias[0].branch, i1.vias[0].branch);
        assert_eq!(i2.body, ANSWER);
        let auth = header_values(inv2, "Authorization");
        assert_eq!(auth.len(), 1);
        let v = &auth[0];
        assert_eq!(
            auth_param(v, "algorithm").as_deref(),
            Some("SHA-256"),
            "SHA-256 preferred"
        );
        assert_eq!(auth_param(v, "nonce").as_deref(), Some("n-sha"));
        assert_eq!(auth_param(v, "uri").as_deref(), Some(RURI));
        assert_eq!(auth_param(v, "username").as_deref(), Some("alice"));
        assert_eq!(auth_param(v, "qop").as_deref(), Some("auth"));
        assert_eq!(auth_param(v, "nc").as_deref(), Some("00000001"));
        assert_eq!(auth_param(v, "opaque").as_deref(), Some("op"));
        assert_eq!(
            auth_param(v, "response").unwrap(),
            expected_response(v, SHA_CHALLENGE, "INVITE")
        );
        assert!(header_values(inv2, "Proxy-Authorization").is_empty());
        assert!(h.take_events().is_empty());

        h.send_raw(&challenge);
        assert_eq!(
            h.take_sent(),
            vec![ack.clone()],
            "retransmitted 401: ACK again, no new INVITE"
        );

        h.send_raw(&uas_reply(
            inv2,
            200,
            Some("ok"),
            &["Contact: <sip:bob@10.0.0.2:5061>"],
            SDP,
        ));
        let sent = h.take_sent();
        assert_eq!(
            header_values(&sent[0], "Authorization"),
            auth,
            "ACK carries the INVITE's credentials"
        );
        assert_eq!(header_values(&sent[0], "CSeq"), vec!["2 ACK"]);
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Answered { .. }]
        ));
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent().remove(0);
        assert_eq!(header_values(&bye, "CSeq"), vec!["3 BYE"]);
        h.send_raw(&reply_to(&bye, 200));
        h.take_events();
        h.assert_clean();
    }

    #[test]
    fn uac_wrong_password_fails_and_stale_nonce_is_retried_once() {
        let mut h = Harness::new(Transport::Udp);
        // 407 -> Proxy-Authorization; stale=true gets one more try; a second stale fails.
        let (call, _, inv) = h.dial(outbound(Transport::Udp, Some(alice())));
        let chal = |nonce: &str, stale: bool| {
            format!(
                "Proxy-Authenticate: Digest realm=\"proxy.example\", nonce=\"{nonce}\"{}",
                if stale { ", stale=true" } else { "" }
            )
        };
        h.send_raw(&uas_reply(&inv, 407, Some("p"), &[&chal("n1", false)], b""));
        let sent = h.take_sent();
        let inv2 = sent[1].clone();
        let pa = header_values(&inv2, "Proxy-Authorization");
        assert_eq!(pa.len(), 1);
        assert!(header_values(&inv2, "Authorization").is_empty());
        assert_eq!(auth_param(&pa[0], "qop"), None, "RFC 2069 mode without qop");
        let ch = "Digest realm=\"proxy.example\", nonce=\"n1\"";
        assert_eq!(
            auth_param(&pa[0], "response").unwrap(),
            expected_response(&pa[0], ch, "INVITE")
        );

        h.send_raw(&uas_reply(&inv2, 407, Some("p"), &[&chal("n2", true)], b""));
        let sent = h.take_sent();
        assert_eq!(sent.len(), 2, "stale nonce: ACK and one more INVITE");
        let inv3 = sent[1].clone();
        assert_eq!(header_values(&inv3, "CSeq"), vec!["3 INVITE"]);
        assert_eq!(
            auth_param(&header_values(&inv3, "Proxy-Authorization")[0], "nonce").as_deref(),
            Some("n2")
        );
        h.send_raw(&uas_reply(&inv3, 407, Some("p"), &[&chal("n3", true)], b""));
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1, "only the ACK");
        assert!(is(&sent[0], "ACK"));
        match h.take_events().as_slice() {
            [Event::Failed {
                call: c,
                status: 407,
                reason,
            }] => {
                assert_eq!(*c, call);
                assert!(reason.contains("credentials rejected"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        h.assert_clean();

        // Same nonce challenged again: wrong password.
        let (call, _, inv) = h.dial(outbound(Transport::Udp, Some(alice())));
        let www = format!("WWW-Authenticate: {MD5_CHALLENGE}");
        h.send_raw(&uas_reply(&inv, 401, Some("u"), &[&www], b""));
        let inv2 = h.take_sent().remove(1);
        h.send_raw(&uas_reply(&inv2, 401, Some("u"), &[&www], b""));
        assert_eq!(h.take_sent().len(), 1, "ACK only");
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { call: c, status: 401, .. }] if *c == call
        ));
        h.assert_clean();
    }

    #[test]
    fn uac_challenge_without_credentials_or_usable_digest_fails() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        let www = format!("WWW-Authenticate: {MD5_CHALLENGE}");
        h.send_raw(&uas_reply(&inv, 401, Some("u"), &[&www], b""));
        assert_eq!(h.take_sent().len(), 1, "ACK, no retry");
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                call,
                status: 401,
                reason: "Unauthorized (no credentials configured)".into()
            }]
        );
        let (call, _, inv) = h.dial(outbound(Transport::Udp, Some(alice())));
        h.send_raw(&uas_reply(
            &inv,
            401,
            Some("u"),
            &["WWW-Authenticate: Digest realm=\"r\""],
            b"",
        ));
        match h.take_events().as_slice() {
            [Event::Failed {
                call: c,
                status: 401,
                reason,
            }] => {
                assert_eq!(*c, call);
                assert!(
                    reason.contains("nonce"),
                    "names the missing parameter: {reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        h.assert_clean();
    }

    #[test]
    fn uac_final_failure_is_acked_reported_once_and_stray_responses_dropped() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.send_raw(&uas_reply(&inv, 180, Some("b"), &[], b""));
        h.take_events();
        let busy = uas_reply(&inv, 486, Some("b"), &[], b"");
        h.send_raw(&busy);
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        assert!(is(&sent[0], "ACK"));
        assert_eq!(request(&sent[0]).to.tag.as_deref(), Some("b"));
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                call,
                status: 486,
                reason: "Busy Here".into()
            }]
        );
        assert_eq!(h.ep.active_calls(), 0);
        h.send_raw(&busy);
        assert_eq!(h.take_sent(), sent, "retransmitted 486: ACK again");
        assert!(h.take_events().is_empty());
        let stray = String::from_utf8(busy.clone())
            .unwrap()
            .replace("z9hG4bK", "z9hG4bKother");
        h.send_raw(stray.as_bytes());
        assert!(h.take_sent().is_empty() && h.take_events().is_empty());
        assert_eq!(h.ep.malformed_messages(), 0);
        h.run_idle();
        assert!(h.take_sent().is_empty());
        h.assert_clean();

        // A redirect is just reported with its status.
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.send_raw(&uas_reply(
            &inv,
            302,
            Some("r"),
            &["Contact: <sip:x@10.9.9.9>"],
            b"",
        ));
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { call: c, status: 302, .. }] if *c == call
        ));
        h.assert_clean();
    }

    #[test]
    fn uac_cancel_waits_for_a_provisional_then_487_fails_once() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.ep.cancel(call, h.now).unwrap();
        assert!(
            h.take_sent().is_empty(),
            "no CANCEL before a provisional (RFC 3261 9.1)"
        );
        h.step();
        assert_eq!(
            h.take_sent(),
            vec![inv.clone()],
            "INVITE still retransmitted"
        );
        h.send_raw(&uas_reply(&inv, 100, None, &[], b""));
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        let cancel = &sent[0];
        assert!(text(cancel).starts_with(&format!("CANCEL {RURI} SIP/2.0\r\n")));
        let (c, i) = (request(cancel), request(&inv));
        assert_eq!(
            c.vias[0].branch, i.vias[0].branch,
            "CANCEL shares the INVITE's branch"
        );
        assert_eq!((c.cseq.seq, &c.cseq.method), (1, &Method::Cancel));
        assert_eq!(
            (c.from.raw.as_str(), c.to.raw.as_str()),
            (i.from.raw.as_str(), i.to.raw.as_str())
        );
        assert_eq!(c.call_id, i.call_id);
        assert_eq!(cancel.destination, trunk());
        h.ep.cancel(call, h.now).unwrap(); // idempotent
        h.send_raw(&uas_reply(&inv, 180, Some("x"), &[], b""));
        assert!(h.take_sent().is_empty(), "one CANCEL");
        assert!(h.take_events().is_empty(), "no Progress after cancel");
        h.send_raw(&uas_reply(cancel, 200, Some("x"), &[], b""));
        h.send_raw(&uas_reply(&inv, 487, Some("x"), &[], b""));
        assert!(is(&h.take_sent()[0], "ACK"));
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                call,
                status: 487,
                reason: "Request Terminated".into()
            }]
        );
        assert_eq!(h.ep.cancel(call, h.now), Err(SipError::UnknownCall(call)));
        h.assert_clean();
        assert!(h.take_events().is_empty());
    }

    #[test]
    fn uac_cancel_before_any_response_ends_with_the_first_final() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.ep.cancel(call, h.now).unwrap();
        h.send_raw(&uas_reply(&inv, 603, Some("d"), &[], b""));
        let sent = h.take_sent();
        assert_eq!(sent.len(), 1);
        assert!(is(&sent[0], "ACK"), "no CANCEL was ever needed");
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { call: c, status: 603, .. }] if *c == call
        ));
        h.assert_clean();

        // Cancelled and a challenge comes: no retry with credentials.
        let (call, _, inv) = h.dial(outbound(Transport::Udp, Some(alice())));
        h.ep.cancel(call, h.now).unwrap();
        let www = format!("WWW-Authenticate: {MD5_CHALLENGE}");
        h.send_raw(&uas_reply(&inv, 401, Some("u"), &[&www], b""));
        assert_eq!(h.take_sent().len(), 1);
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { status: 401, .. }]
        ));

        // Cancelled and nothing ever answers: Timer B.
        let (call, _, _) = h.dial(outbound(Transport::Udp, None));
        h.ep.cancel(call, h.now).unwrap();
        h.run_idle();
        assert!(
            h.take_sent().iter().all(|t| is(t, "INVITE")),
            "never a CANCEL"
        );
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { call: c, status: 408, .. }] if *c == call
        ));
        h.assert_clean();
    }

    #[test]
    fn uac_cancel_without_final_times_out_408() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.send_raw(&uas_reply(&inv, 180, Some("r"), &[], b""));
        h.take_events();
        h.now += ms(1000);
        h.ep.cancel(call, h.now).unwrap();
        let start = h.now;
        assert!(is(&h.take_sent()[0], "CANCEL"));
        assert_eq!(
            h.ep.poll_timeout(),
            Some(start + ms(500)),
            "Timer E of the CANCEL"
        );
        let mut failed_at = None;
        while h.step() {
            if !h.events.is_empty() && failed_at.is_none() {
                failed_at = Some(h.now);
            }
        }
        assert_eq!(
            failed_at,
            Some(start + ms(32_000)),
            "64*T1 after the CANCEL"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::Failed {
                call,
                status: 408,
                reason: "Request Timeout".into()
            }]
        );
        assert!(h.take_sent().iter().all(|t| is(t, "CANCEL")));
        h.assert_clean();
    }

    #[test]
    fn uac_2xx_crossing_cancel_is_acked_and_hung_up() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.send_raw(&uas_reply(&inv, 180, Some("x"), &[], b""));
        h.take_events();
        h.ep.cancel(call, h.now).unwrap();
        let cancel = h.take_sent().remove(0);
        h.send_raw(&uas_reply(
            &inv,
            200,
            Some("x"),
            &["Contact: <sip:bob@10.0.0.2:5061>"],
            SDP,
        ));
        let sent = h.take_sent();
        assert_eq!(sent.len(), 2);
        assert!(
            is(&sent[0], "ACK") && is(&sent[1], "BYE"),
            "ACK then BYE at once"
        );
        assert_eq!(request(&sent[1]).to.tag.as_deref(), Some("x"));
        assert!(
            h.take_events().is_empty(),
            "no Answered for a cancelled call"
        );
        h.send_raw(&uas_reply(&cancel, 200, Some("x"), &[], b""));
        h.send_raw(&reply_to(&sent[1], 200));
        assert_eq!(
            h.take_events(),
            vec![Event::Ended {
                call,
                cause: EndCause::LocalByeDone
            }]
        );
        h.assert_clean();
        assert!(h.take_events().is_empty(), "exactly one terminal event");
    }

    #[test]
    fn uac_2xx_from_a_second_fork_is_acked_and_hung_up() {
        let mut h = Harness::new(Transport::Udp);
        let (call, inv, _, ack_a) = h.answered("a", &["Contact: <sip:a@10.0.0.2:5061>"]);
        let ok_b = uas_reply(
            &inv,
            200,
            Some("b"),
            &["Contact: <sip:b@10.0.0.4:5062>"],
            SDP,
        );
        h.send_raw(&ok_b);
        let sent = h.take_sent();
        assert_eq!(sent.len(), 2);
        let (ack_b, bye_b) = (&sent[0], &sent[1]);
        assert!(text(ack_b).starts_with("ACK sip:b@10.0.0.4:5062 "));
        assert_eq!(request(ack_b).to.tag.as_deref(), Some("b"));
        assert!(text(bye_b).starts_with("BYE sip:b@10.0.0.4:5062 "));
        assert_eq!(bye_b.destination, "10.0.0.4:5062".parse().unwrap());
        assert_eq!(request(bye_b).to.tag.as_deref(), Some("b"));
        assert_eq!(header_values(bye_b, "CSeq"), vec!["2 BYE"]);
        assert!(h.take_events().is_empty(), "the other fork raises nothing");
        h.send_raw(&reply_to(bye_b, 200));
        assert!(h.take_events().is_empty());
        h.send_raw(&ok_b);
        assert_eq!(h.take_sent(), vec![ack_b.clone()], "re-ACK, no second BYE");
        h.send_raw(&uas_reply(
            &inv,
            200,
            Some("a"),
            &["Contact: <sip:a@10.0.0.2:5061>"],
            SDP,
        ));
        assert_eq!(h.take_sent(), vec![ack_a]);
        assert_eq!(h.ep.active_calls(), 1, "the first fork's call is up");
        h.ep.hangup(call, h.now).unwrap();
        let bye = h.take_sent().remove(0);
        assert_eq!(request(&bye).to.tag.as_deref(), Some("a"));
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
    fn uac_hangup_while_ringing_cancels_and_uas_actions_are_refused() {
        let mut h = Harness::new(Transport::Udp);
        let (call, _, inv) = h.dial(outbound(Transport::Udp, None));
        h.ep.ring(call, h.now);
        assert!(h.ep.answer(call, ANSWER.to_vec(), h.now).is_err());
        assert!(h.ep.reject(call, 486, h.now).is_err());
        assert!(h.ep.answer_reinvite(call, ANSWER.to_vec(), h.now).is_err());
        assert!(h.take_sent().is_empty());
        h.send_raw(&uas_reply(&inv, 180, Some("r"), &[], b""));
        h.take_events();
        h.ep.hangup(call, h.now).unwrap();
        assert!(is(&h.take_sent()[0], "CANCEL"));
        h.send_raw(&uas_reply(&inv, 487, Some("r"), &[], b""));
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::Failed { status: 487, .. }]
        ));
        h.assert_clean();
    }

    #[test]
    fn uac_invalid_arguments_are_refused_without_state() {
        let mut h = Harness::new(Transport::Udp);
        let bad = [
            OutboundCall {
                request_uri: "sip:a@b\r\nX-Evil: 1".into(),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                request_uri: "sip:a b@c".into(),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                to_uri: "<sip:a@b>".into(),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                from_uri: "nocolon".into(),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                from_display: Some("a\nb".into()),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                credentials: Some(Credentials {
                    username: "a\r\n".into(),
                    password: "p".into(),
                }),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                call_id: Some("two words".into()),
                ..outbound(Transport::Udp, None)
            },
            OutboundCall {
                call_id: Some(String::new()),
                ..outbound(Transport::Udp, None)
            },
        ];
        for call in bad {
            assert!(
                matches!(
                    h.ep.invite(call.clone(), h.now),
                    Err(SipError::BadHeader { .. })
                ),
                "{call:?}"
            );
        }
        assert!(h.take_sent().is_empty());
        assert!(
            !format!("{:?}", alice()).contains("s3cret"),
            "Debug hides the password"
        );
        h.assert_clean();

        let chosen = OutboundCall {
            call_id: Some("app-call-42@warmline".into()),
            ..outbound(Transport::Udp, None)
        };
        let (call, call_id, inv) = h.dial(chosen);
        assert_eq!(call_id, "app-call-42@warmline");
        assert_eq!(
            request(&inv).call_id,
            call_id,
            "the application's Call-ID is used"
        );
        h.ep.cancel(call, h.now).unwrap();
        h.run_idle();
        h.take_events();
        h.assert_clean();
    }

    fn registration(credentials: Option<Credentials>) -> Registration {
        Registration {
            registrar_uri: "sip:trunk.example".into(),
            aor: "sip:alice@trunk.example".into(),
            destination: trunk(),
            transport: Transport::Udp,
            expires: Duration::from_secs(300),
            credentials,
        }
    }

    #[test]
    fn register_authenticates_refreshes_and_unregisters() {
        let mut h = Harness::new(Transport::Udp);
        let reg = h.ep.register(registration(Some(alice())), h.now);
        let r1 = h.take_sent().remove(0);
        assert!(text(&r1).starts_with("REGISTER sip:trunk.example SIP/2.0\r\n"));
        assert_eq!(r1.destination, trunk());
        let q1 = request(&r1);
        assert_eq!(q1.from.uri, "sip:alice@trunk.example");
        assert!(q1.from.tag.is_some());
        assert_eq!(
            (q1.to.uri.as_str(), q1.to.tag.as_ref()),
            ("sip:alice@trunk.example", None)
        );
        assert_eq!((q1.cseq.seq, &q1.cseq.method), (1, &Method::Register));
        assert_eq!(
            header_values(&r1, "Contact"),
            vec!["<sip:alice@10.0.0.1:5060>;expires=300"]
        );
        assert_eq!(header_values(&r1, "Expires"), vec!["300"]);
        assert!(header_values(&r1, "Authorization").is_empty());

        h.send_raw(&uas_reply(
            &r1,
            401,
            Some("reg"),
            &[&format!("WWW-Authenticate: {MD5_CHALLENGE}")],
            b"",
        ));
        let r2 = h.take_sent().remove(0);
        let q2 = request(&r2);
        assert_eq!(
            (q2.call_id.as_str(), q2.from.tag.as_ref()),
            (q1.call_id.as_str(), q1.from.tag.as_ref())
        );
        assert_eq!(q2.cseq.seq, 2);
        let a2 = header_values(&r2, "Authorization").remove(0);
        assert_eq!(auth_param(&a2, "uri").as_deref(), Some("sip:trunk.example"));
        assert_eq!(auth_param(&a2, "nc").as_deref(), Some("00000001"));
        assert_eq!(
            auth_param(&a2, "response").unwrap(),
            expected_response(&a2, MD5_CHALLENGE, "REGISTER")
        );
        assert!(h.take_events().is_empty());

        h.send_raw(&uas_reply(
            &r2,
            200,
            Some("reg"),
            &[
                "Contact: <sip:other@10.9.9.9>;expires=999, <sip:alice@10.0.0.1:5060>;expires=120",
                "Expires: 3600",
            ],
            b"",
        ));
        assert_eq!(
            h.take_events(),
            vec![Event::Registered {
                reg,
                expires: Duration::from_secs(120)
            }]
        );
        let granted_at = h.now;
        h.advance_to(granted_at + ms(59_999));
        assert!(h.take_sent().is_empty());
        h.advance_to(granted_at + ms(60_000));
        let r3 = h.take_sent().remove(0);
        let q3 = request(&r3);
        assert_eq!((q3.call_id.as_str(), q3.cseq.seq), (q1.call_id.as_str(), 3));
        let a3 = header_values(&r3, "Authorization").remove(0);
        assert_eq!(
            auth_param(&a3, "nc").as_deref(),
            Some("00000002"),
            "nonce reused"
        );
        assert_eq!(
            auth_param(&a3, "response").unwrap(),
            expected_response(&a3, MD5_CHALLENGE, "REGISTER")
        );

        h.send_raw(&uas_reply(&r3, 200, Some("reg"), &["Expires: 8"], b""));
        assert_eq!(
            h.take_events(),
            vec![Event::Registered {
                reg,
                expires: Duration::from_secs(8)
            }]
        );
        let granted_at = h.now;
        h.advance_to(granted_at + ms(3000));
        let r4 = h.take_sent().remove(0);
        assert_eq!(request(&r4).cseq.seq, 4, "refresh 5 s before an 8 s expiry");
        let stale = "WWW-Authenticate: Digest realm=\"trunk.example\", nonce=\"fresh\", \
                     stale=true, qop=\"auth\"";
        h.send_raw(&uas_reply(&r4, 401, Some("reg"), &[stale], b""));
        let r5 = h.take_sent().remove(0);
        let a5 = header_values(&r5, "Authorization").remove(0);
        assert_eq!(auth_param(&a5, "nonce").as_deref(), Some("fresh"));
        assert_eq!(auth_param(&a5, "nc").as_deref(), Some("00000001"));
        h.send_raw(&uas_reply(&r5, 200, Some("reg"), &[], b""));
        assert_eq!(
            h.take_events(),
            vec![Event::Registered {
                reg,
                expires: Duration::from_secs(300)
            }],
            "no Expires granted: the requested one"
        );

        h.ep.unregister(reg, h.now);
        let r6 = h.take_sent().remove(0);
        assert_eq!(header_values(&r6, "Expires"), vec!["0"]);
        assert_eq!(
            header_values(&r6, "Contact"),
            vec!["<sip:alice@10.0.0.1:5060>;expires=0"]
        );
        assert_eq!(request(&r6).cseq.seq, 6);
        assert_eq!(request(&r6).call_id, q1.call_id);
        h.send_raw(&uas_reply(&r6, 200, Some("reg"), &[], b""));
        h.assert_clean();
        assert!(h.take_events().is_empty());
        assert!(h.take_sent().is_empty(), "no refresh after unregister");
    }

    #[test]
    fn register_failures_are_reported_and_retried_after_back_off() {
        let mut h = Harness::new(Transport::Udp);
        let reg = h.ep.register(registration(None), h.now);
        let r1 = h.take_sent().remove(0);
        h.send_raw(&uas_reply(
            &r1,
            401,
            Some("x"),
            &[&format!("WWW-Authenticate: {MD5_CHALLENGE}")],
            b"",
        ));
        match h.take_events().as_slice() {
            [Event::RegistrationFailed {
                reg: r,
                status: 401,
                reason,
            }] => {
                assert_eq!(*r, reg);
                assert!(reason.contains("no credentials"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let failed_at = h.now;
        h.advance_to(failed_at + ms(29_999));
        assert!(h.take_sent().is_empty());
        h.advance_to(failed_at + ms(30_000));
        let r2 = h.take_sent().remove(0);
        assert_eq!(request(&r2).cseq.seq, 2);
        h.send_raw(&uas_reply(&r2, 403, Some("x"), &[], b""));
        assert_eq!(
            h.take_events(),
            vec![Event::RegistrationFailed {
                reg,
                status: 403,
                reason: "Forbidden".into()
            }]
        );
        h.advance_to(h.now + ms(30_000));
        let r3 = h.take_sent().remove(0);
        assert_eq!(request(&r3).cseq.seq, 3);
        let start = h.now;
        while h.events.is_empty() {
            assert!(h.step());
        }
        assert_eq!(h.now - start, ms(32_000), "Timer F");
        assert_eq!(
            h.take_events(),
            vec![Event::RegistrationFailed {
                reg,
                status: 408,
                reason: "Request Timeout".into()
            }]
        );
        h.advance_to(h.now + ms(30_000));
        let r4 = h.sent.drain(..).map(|(_, t)| t).next_back().unwrap();
        assert_eq!(request(&r4).cseq.seq, 4);
        h.send_raw(&uas_reply(&r4, 423, Some("x"), &["Min-Expires: 600"], b""));
        let r5 = h.take_sent().remove(0);
        assert_eq!(
            header_values(&r5, "Expires"),
            vec!["600"],
            "423: ask for Min-Expires"
        );
        h.send_raw(&uas_reply(&r5, 200, Some("x"), &[], b""));
        assert_eq!(
            h.take_events(),
            vec![Event::Registered {
                reg,
                expires: Duration::from_secs(600)
            }]
        );
        h.ep.unregister(reg, h.now);
        h.ep.unregister(reg, h.now);
        assert_eq!(h.take_sent().len(), 1, "one de-registration");
        h.run_idle(); // no answer: given up silently
        assert!(h.take_events().is_empty());
        h.assert_clean();

        let bad = h.ep.register(
            Registration {
                aor: "not a uri".into(),
                ..registration(None)
            },
            h.now,
        );
        assert!(matches!(
            h.take_events().as_slice(),
            [Event::RegistrationFailed { reg: r, status: 0, .. }] if *r == bad
        ));
        assert_ne!(bad, reg);
        h.assert_clean();
    }

    #[test]
    fn transport_failure_fails_calls_and_registrations_with_503() {
        let mut h = Harness::new(Transport::Tcp);
        let (call, _, _) = h.dial(outbound(Transport::Tcp, None));
        let reg = h.ep.register(
            Registration {
                transport: Transport::Tcp,
                ..registration(None)
            },
            h.now,
        );
        let r1 = h.take_sent().remove(0);
        assert_eq!(
            header_values(&r1, "Contact"),
            vec!["<sip:alice@10.0.0.1:5060;transport=tcp>;expires=300"]
        );
        h.ep.transport_failed(trunk(), Transport::Udp, h.now);
        assert!(h.take_events().is_empty(), "other transport: unaffected");
        h.ep.transport_failed(trunk(), Transport::Tcp, h.now);
        let evs = h.take_events();
        assert!(evs.contains(&Event::Failed {
            call,
            status: 503,
            reason: "Service Unavailable (transport error)".into()
        }));
        assert!(evs.iter().any(
            |e| matches!(e, Event::RegistrationFailed { reg: r, status: 503, .. } if *r == reg)
        ));
        assert_eq!(evs.len(), 2);
        h.ep.unregister(reg, h.now);
        h.take_sent();
        h.ep.transport_failed(trunk(), Transport::Tcp, h.now);
        assert!(h.take_events().is_empty());
        h.assert_clean();
    }

    #[test]
    fn refresh_is_at_half_life_and_at_least_five_seconds_early() {
        assert_eq!(refresh_delay(3600), Duration::from_secs(1800));
        assert_eq!(refresh_delay(8), Duration::from_secs(3));
        assert_eq!(
            refresh_delay(4),
            Duration::from_secs(1),
            "never a busy loop"
        );
        assert_eq!(refresh_delay(7200), Duration::from_secs(3600));
        assert_eq!(
            refresh_delay(u32::MAX),
            Duration::from_secs(86_400),
            "capped"
        );
    }

    #[test]
    fn poll_timeout_is_the_earliest_of_all_timers() {
        let mut h = Harness::new(Transport::Tcp);
        let reg = h.ep.register(
            Registration {
                transport: Transport::Tcp,
                ..registration(None)
            },
            h.now,
        );
        let r1 = h.take_sent().remove(0);
        h.send_raw(&uas_reply(&r1, 200, Some("x"), &["Expires: 20"], b""));
        h.take_events();
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(10_000)),
            "refresh timer alone"
        );
        let (call, _, inv) = h.dial(outbound(Transport::Tcp, None));
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(10_000)),
            "Timer B is later"
        );
        h.send_raw(&uas_reply(&inv, 180, Some("r"), &[], b""));
        h.ep.cancel(call, h.now).unwrap();
        h.take_sent();
        assert_eq!(h.ep.poll_timeout(), Some(h.t0 + ms(10_000)));
        h.step();
        let refresh = h.take_sent().remove(0);
        assert!(is(&refresh, "REGISTER"));
        assert_eq!(
            h.ep.poll_timeout(),
            Some(h.t0 + ms(32_000)),
            "CANCEL's Timer F and our cancel timer"
        );
        h.ep.unregister(reg, h.now);
        h.run_idle();
        h.take_events();
        h.assert_clean();
    }

    // ----- agents, guard, inbound authentication, transfer -----

    mod security {
        use super::*;
        use crate::sip::auth::UserEntry;
        use crate::sip::guard::TrunkAcl;

        const REALM: &str = "warmline.test";
        const REG_URI: &str = "sip:10.0.0.1:5060";

        fn secure_config() -> EndpointConfig {
            let mut cfg = EndpointConfig::new("10.0.0.1:5060".parse().unwrap());
            cfg.auth = AuthConfig {
                realm: REALM.into(),
                users: vec![UserEntry {
                    username: "agent1".into(),
                    password: Some("s3cret".into()),
                    ..Default::default()
                }],
                secret: Some("test secret".into()),
                algorithms: vec!["SHA-256".into(), "MD5".into()],
                ..AuthConfig::default()
            };
            cfg
        }

        fn secure(cfg: EndpointConfig) -> Harness {
            Harness::with_config(Transport::Udp, cfg)
        }

        fn register(
            user: &str,
            n: u32,
            contact: Option<&str>,
            expires: Option<u32>,
            auth: Option<&str>,
        ) -> Vec<u8> {
            let mut s = format!(
                "REGISTER {REG_URI} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 10.0.0.2:5061;branch=z9hG4bK-reg-{n}\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:{user}@{REALM}>;tag=regtag\r\n\
                 To: <sip:{user}@{REALM}>\r\n\
                 Call-ID: reg-call-{user}\r\n\
                 CSeq: {n} REGISTER\r\n"
            );
            if let Some(c) = contact {
                s += &format!("Contact: {c}\r\n");
            }
            if let Some(e) = expires {
                s += &format!("Expires: {e}\r\n");
            }
            if let Some(a) = auth {
                s += &format!("Authorization: {a}\r\n");
            }
            s += "Content-Length: 0\r\n\r\n";
            s.into_bytes()
        }

        /// The best challenge of a 401, answered with `digest.rs` (the client side).
        fn answer(t: &Transmit, user: &str, pw: &str, method: &str, uri: &str, nc: u32) -> String {
            let r = resp(t);
            assert_eq!(r.status, 401, "{}", text(t));
            let ch = digest::best_challenge(r.www_authenticate.iter().map(String::as_str)).unwrap();
            let creds = Credentials {
                username: user.into(),
                password: pw.into(),
            };
            digest::authorization(&ch, &creds, method, uri, nc, "0a4f113b").unwrap()
        }

        /// A response with the random To tag replaced, for byte comparison.
        fn normalized(t: &Transmit) -> String {
            let text = text(t);
            let tag = resp(t).to.tag.unwrap_or_default();
            text.replace(&tag, "TAG")
        }

        const CONTACT: &str = "<sip:agent1@192.168.1.20:5062>";

        #[test]
        fn register_challenge_bind_refresh_and_unbind_end_to_end() {
            let mut h = secure(secure_config());
            h.send_raw(&register("agent1", 1, Some(CONTACT), Some(120), None));
            let sent = h.take_sent();
            assert_eq!(sent.len(), 1);
            let challenge = &sent[0];
            let r = resp(challenge);
            assert_eq!(r.www_authenticate.len(), 2, "SHA-256 and MD5");
            assert!(r.www_authenticate[0].contains("algorithm=SHA-256"));
            assert!(r.www_authenticate[0].contains("qop=\"auth\""));
            let auth = answer(challenge, "agent1", "s3cret", "REGISTER", REG_URI, 1);
            h.send_raw(&register(
                "agent1",
                2,
                Some(CONTACT),
                Some(120),
                Some(&auth),
            ));
            let sent = h.take_sent();
            let ok = resp(&sent[0]);
            assert_eq!(ok.status, 200, "{}", text(&sent[0]));
            assert_eq!(ok.contacts.len(), 1);
            assert_eq!(ok.contacts[0].uri, "sip:agent1@192.168.1.20:5062");
            assert_eq!(ok.contacts[0].params, ";expires=120");
            assert_eq!(
                h.take_events(),
                vec![Event::AgentRegistered {
                    user: "agent1".into(),
                    contact: "sip:agent1@192.168.1.20:5062".into(),
                    source: h.peer,
                    transport: Transport::Udp,
                    expires: Duration::from_secs(120),
                }]
            );
            let b = h.ep.agent_contact("agent1").unwrap();
            assert_eq!(
                (b.contact.as_str(), b.source),
                ("sip:agent1@192.168.1.20:5062", h.peer)
            );
            assert_eq!(h.ep.registered_agents(), 1);
            // Too brief: 423 with Min-Expires (the nonce count goes on).
            let auth = answer(challenge, "agent1", "s3cret", "REGISTER", REG_URI, 2);
            h.send_raw(&register("agent1", 3, Some(CONTACT), Some(5), Some(&auth)));
            let sent = h.take_sent();
            assert_eq!(resp(&sent[0]).status, 423);
            assert_eq!(resp(&sent[0]).min_expires, Some(60));
            // Replaying an answer already used is challenged again.
            h.send_raw(&register(
                "agent1",
                4,
                Some(CONTACT),
                Some(120),
                Some(&auth),
            ));
            assert_eq!(h.codes(), vec![401]);
            // Expires: 0 unbinds.
            let auth = answer(challenge, "agent1", "s3cret", "REGISTER", REG_URI, 3);
            h.send_raw(&register("agent1", 5, Some(CONTACT), Some(0), Some(&auth)));
            assert_eq!(h.codes(), vec![200]);
            assert_eq!(
                h.take_events(),
                vec![Event::AgentUnregistered {
                    user: "agent1".into()
                }]
            );
            assert_eq!(h.ep.agent_contact("agent1"), None);
            assert_eq!(h.ep.security_counters().auth_failures, 0);
            h.assert_clean();
        }

        #[test]
        fn binding_expires_through_handle_timeout() {
            let mut h = secure(secure_config());
            h.send_raw(&register("agent1", 1, Some(CONTACT), Some(60), None));
            let ch = h.take_sent().remove(0);
            let auth = answer(&ch, "agent1", "s3cret", "REGISTER", REG_URI, 1);
            h.send_raw(&register("agent1", 2, Some(CONTACT), Some(60), Some(&auth)));
            assert_eq!(h.codes(), vec![200]);
            h.take_events();
            h.run_idle();
            assert_eq!(
                h.take_events(),
                vec![Event::AgentUnregistered {
                    user: "agent1".into()
                }]
            );
            assert!(h.now >= h.t0 + Duration::from_secs(60));
            assert_eq!(h.ep.registered_agents(), 0);
        }

        #[test]
        fn register_for_someone_else_and_from_outside_agent_nets_is_403() {
            let mut cfg = secure_config();
            cfg.auth.users.push(UserEntry {
                username: "agent2".into(),
                password: Some("pw2".into()),
                ..Default::default()
            });
            let mut h = secure(cfg.clone());
            h.send_raw(&register("agent2", 1, Some(CONTACT), None, None));
            let ch = h.take_sent().remove(0);
            // agent1's credentials for agent2's address of record.
            let auth = answer(&ch, "agent1", "s3cret", "REGISTER", REG_URI, 1);
            h.send_raw(&register("agent2", 2, Some(CONTACT), None, Some(&auth)));
            assert_eq!(h.codes(), vec![403]);
            assert!(h.take_events().is_empty());
            cfg.guard.agents = vec!["192.168.0.0/16".parse().unwrap()];
            let mut h = secure(cfg);
            h.send_raw(&register("agent1", 1, Some(CONTACT), None, None));
            assert_eq!(h.codes(), vec![403]);
        }

        /// Wrong password and unknown user: the same bytes on the wire (the nonce is the
        /// same because secret, source and time are), and both count toward a block.
        #[test]
        fn wrong_password_and_unknown_user_get_identical_responses() {
            let attempt = |user: &str, pw: &str| {
                let mut h = secure(secure_config());
                h.send_raw(&register(user, 1, Some(CONTACT), None, None));
                let ch = h.take_sent().remove(0);
                let auth = answer(&ch, user, pw, "REGISTER", REG_URI, 1);
                h.send_raw(&register(user, 2, Some(CONTACT), None, Some(&auth)));
                let sent = h.take_sent();
                assert_eq!(sent.len(), 1);
                (normalized(&ch), normalized(&sent[0]), h)
            };
            let (ch_a, fail_a, ha) = attempt("agent1", "wrong");
            let (ch_b, fail_b, hb) = attempt("nobody", "s3cret");
            assert_eq!(ch_a.replace("agent1", "X"), ch_b.replace("nobody", "X"));
            assert_eq!(fail_a.replace("agent1", "X"), fail_b.replace("nobody", "X"));
            assert!(fail_a.starts_with("SIP/2.0 403 "), "{fail_a}");
            assert!(!fail_a.contains("WWW-Authenticate"));
            for h in [ha, hb] {
                assert_eq!(h.ep.security_counters().auth_failures, 1);
                assert!(h.events.is_empty());
            }
        }

        #[test]
        fn stale_nonce_is_rechallenged_with_stale_true() {
            let mut h = secure(secure_config());
            h.send_raw(&register("agent1", 1, Some(CONTACT), None, None));
            let ch = h.take_sent().remove(0);
            let auth = answer(&ch, "agent1", "s3cret", "REGISTER", REG_URI, 1);
            h.now += Duration::from_secs(301);
            h.send_raw(&register("agent1", 2, Some(CONTACT), None, Some(&auth)));
            let sent = h.take_sent();
            let r = resp(&sent[0]);
            assert_eq!(r.status, 401);
            assert!(r.www_authenticate.iter().all(|v| v.contains("stale=true")));
            let auth = answer(&sent[0], "agent1", "s3cret", "REGISTER", REG_URI, 1);
            h.send_raw(&register("agent1", 3, Some(CONTACT), None, Some(&auth)));
            assert_eq!(h.codes(), vec![200]);
            assert_eq!(h.ep.security_counters().auth_failures, 0);
        }

        #[test]
        fn five_failures_block_the_source_silently_then_it_recovers() {
            let mut h = secure(secure_config());
            h.send_raw(&register("agent1", 1, Some(CONTACT), None, None));
            let ch = h.take_sent().remove(0);
            for i in 0..5u32 {
                let auth = answer(&ch, "agent1", "guess", "REGISTER", REG_URI, i + 1);
                h.send_raw(&register(
                    "agent1",
                    10 + i,
                    Some(CONTACT),
                    None,
                    Some(&auth),
                ));
                assert_eq!(h.codes(), vec![403]);
            }
            // Blocked: even OPTIONS (or the right password) gets nothing at all.
            let good = answer(&ch, "agent1", "s3cret", "REGISTER", REG_URI, 9);
            h.send_raw(&register("agent1", 20, Some(CONTACT), None, Some(&good)));
            let mut opt = Req::invite("opt-blocked").no_body();
            opt.method = "OPTIONS".into();
            opt.cseq_method = "OPTIONS".into();
            h.send(&opt);
            assert!(h.take_sent().is_empty());
            let c = h.ep.security_counters();
            assert_eq!((c.auth_failures, c.blocks, c.blocked_drops), (5, 1, 2));
            assert_eq!(h.ep.blocked_sources(), 1);
            assert!(h.ep.refuses_source(h.now, h.peer.ip()));
            // Ten minutes later the source is heard again.
            h.advance_to(h.t0 + Duration::from_secs(601));
            h.send_raw(&register("agent1", 30, Some(CONTACT), None, None));
            assert_eq!(h.codes(), vec![401]);
        }

        #[test]
        fn rate_limit_drops_silently_per_source() {
            let mut cfg = secure_config();
            cfg.guard.rate_per_sec = 10;
            cfg.guard.burst = 5;
            let mut h = secure(cfg);
            let mut opt = Req::invite("opt").no_body();
            opt.method = "OPTIONS".into();
            opt.cseq_method = "OPTIONS".into();
            for i in 0..20 {
                opt.branch = format!("z9hG4bK-opt-{i}");
                h.send(&opt);
            }
            assert_eq!(h.take_sent().len(), 5);
            assert_eq!(h.ep.security_counters().rate_limited_drops, 15);
            // Another source is unaffected.
            let other: SocketAddr = "10.0.0.3:5060".parse().unwrap();
            opt.branch = "z9hG4bK-opt-other".into();
            h.ep.handle_input(h.now, other, Transport::Udp, &opt.build());
            assert_eq!(h.codes(), vec![200]);
        }

        #[test]
        fn inbound_invite_is_challenged_then_accepted_and_trunks_are_trusted() {
            let mut cfg = secure_config();
            cfg.auth.inbound = true;
            cfg.guard.trunks = vec![TrunkAcl {
                name: "carrier".into(),
                networks: vec!["10.0.0.9/32".parse().unwrap()],
            }];
            let mut h = secure(cfg);
            let inv = Req::invite("in-auth");
            h.send(&inv);
            let sent = h.take_sent();
            assert_eq!(sent.len(), 1, "401 only, no 100");
            let tag = to_tag(&sent[0]);
            let auth = answer(&sent[0], "agent1", "s3cret", "INVITE", &inv.ruri, 1);
            h.send(&inv.ack_non_2xx(&tag));
            assert!(h.take_events().is_empty());
            let mut again = inv.clone();
            again.branch = "z9hG4bK-in-auth-2".into();
            again.cseq = 2;
            again.extra.push(format!("Authorization: {auth}"));
            h.send(&again);
            assert_eq!(h.codes(), vec![100]);
            match h.take_events().as_slice() {
                [Event::IncomingCall(ic)] => {
                    assert_eq!(ic.auth_user.as_deref(), Some("agent1"));
                    h.ep.reject(ic.call, 486, h.now).unwrap();
                }
                other => panic!("{other:?}"),
            }
            h.take_sent();
            h.send(&again.ack_non_2xx("x"));
            // A trunk source needs no credentials.
            let inv = Req::invite("from-trunk");
            h.ep.handle_input(
                h.now,
                "10.0.0.9:5060".parse().unwrap(),
                Transport::Udp,
                &inv.build(),
            );
            assert_eq!(h.codes(), vec![100]);
            assert!(matches!(
                h.take_events().as_slice(),
                [Event::IncomingCall(ic)] if ic.auth_user.is_none()
            ));
        }

        #[test]
        fn refer_202_and_notify_sipfrag_progress_then_done() {
            let mut h = Harness::new(Transport::Udp);
            let inv = Req::invite("xfer");
            let (call, tag) = h.established(&inv);
            assert!(h.ep.refer(call, "sip:agent7@10.0.0.7:5062", h.now).is_ok());
            assert!(
                h.ep.refer(call, "sip:agent8@10.0.0.8", h.now).is_err(),
                "one at a time"
            );
            let refer = h.take_sent().remove(0);
            assert!(is(&refer, "REFER"));
            assert_eq!(
                header_values(&refer, "Refer-To"),
                vec!["<sip:agent7@10.0.0.7:5062>"]
            );
            assert_eq!(
                header_values(&refer, "Referred-By"),
                vec!["<sip:service@10.0.0.1:5060>"]
            );
            let r = request(&refer);
            assert_eq!(r.uri, "sip:alice@10.0.0.2:5061", "to the remote target");
            assert_eq!(r.cseq.seq, 1);
            h.send_raw(&reply_to(&refer, 202));
            assert_eq!(
                h.take_events(),
                vec![Event::TransferProgress { call, status: 202 }]
            );
            let notify = |cseq: u32, frag: &str, state: &str| {
                let mut n = inv.in_dialog("NOTIFY", &tag, cseq, cseq);
                n.extra.push("Event: refer".into());
                n.extra.push(format!("Subscription-State: {state}"));
                n.with_body("message/sipfrag;version=2.0", frag.as_bytes())
            };
            h.send(&notify(2, "SIP/2.0 100 Trying\r\n", "active;expires=60"));
            assert_eq!(h.codes(), vec![200]);
            h.send(&notify(3, "SIP/2.0 180 Ringing\r\n", "active;expires=60"));
            h.send(&notify(
                4,
                "SIP/2.0 200 OK\r\n",
                "terminated;reason=noresource",
            ));
            assert_eq!(h.codes(), vec![200, 200]);
            assert_eq!(
                h.take_events(),
                vec![
                    Event::TransferProgress { call, status: 100 },
                    Event::TransferProgress { call, status: 180 },
                    Event::TransferDone { call },
                ]
            );
            // Late NOTIFYs are still answered; a NOTIFY outside any dialog is 481; other events 489.
            h.send(&notify(5, "SIP/2.0 200 OK\r\n", "terminated"));
            assert_eq!(h.codes(), vec![200]);
            h.send(&notify(6, "SIP/2.0 200 OK\r\n", "terminated").no_body());
            let mut stray = notify(1, "SIP/2.0 200 OK\r\n", "terminated");
            stray.to_tag = Some("nope".into());
            h.send(&stray);
            let mut presence = notify(7, "", "active");
            presence.extra = vec!["Event: presence".into()];
            h.send(&presence.no_body());
            assert_eq!(h.codes(), vec![200, 481, 489]);
            assert!(h.take_events().is_empty());
            h.ep.hangup(call, h.now).unwrap();
            let bye = h.take_sent().pop().unwrap();
            h.send_raw(&reply_to(&bye, 200));
            h.take_events();
            h.assert_clean();
        }

        #[test]
        fn refer_refused_failed_notify_and_timeout() {
            let mut h = Harness::new(Transport::Udp);
            let inv = Req::invite("xfer2");
            let (call, tag) = h.established(&inv);
            h.ep.refer(call, "sip:agent7@10.0.0.7", h.now).unwrap();
            let refer = h.take_sent().remove(0);
            h.send_raw(&reply_to(&refer, 603));
            assert!(matches!(
                h.take_events().as_slice(),
                [Event::TransferFailed { call: c, status: 603, .. }] if *c == call
            ));
            // Accepted, then the target is busy.
            h.ep.refer(call, "sip:agent7@10.0.0.7", h.now).unwrap();
            let refer = h.take_sent().remove(0);
            h.send_raw(&reply_to(&refer, 202));
            let mut n = inv.in_dialog("NOTIFY", &tag, 2, 2);
            n.extra.push("o: refer".into());
            n.extra.push("Subscription-State: terminated".into());
            h.send(&n.with_body("message/sipfrag", b"SIP/2.0 486 Busy Here"));
            assert_eq!(h.codes(), vec![200]);
            assert_eq!(
                h.take_events(),
                vec![
                    Event::TransferProgress { call, status: 202 },
                    Event::TransferFailed {
                        call,
                        status: 486,
                        reason: "Busy Here".into()
                    },
                ]
            );
            // No answer at all: 408 after Timer F; the call stays up.
            h.ep.refer(call, "sip:agent7@10.0.0.7", h.now).unwrap();
            h.advance_to(h.now + Duration::from_secs(33));
            assert!(h.take_events().contains(&Event::TransferFailed {
                call,
                status: 408,
                reason: "Request Timeout".into()
            }));
            assert_eq!(h.ep.active_calls(), 1);
            assert!(h.ep.refer(CallHandle(999), "sip:a@b", h.now).is_err());
            assert!(h.ep.refer(call, "sip:a@b>\r\nX: y", h.now).is_err());
        }

        #[test]
        fn invite_to_an_agent_contact_with_a_whisper_header() {
            let mut h = Harness::new(Transport::Udp);
            let mut call = outbound(Transport::Tcp, None);
            call.request_uri = "sip:agent1@192.168.1.20:5062;transport=tcp;ob".into();
            call.destination = "192.0.2.20:40000".parse().unwrap();
            let (_, _) =
                h.ep.invite_with_headers(
                    call.clone(),
                    &[("X-Warmline-Whisper", "Campaign 7: overdue")],
                    h.now,
                )
                .unwrap();
            let inv = h.take_sent().remove(0);
            assert_eq!(inv.destination, call.destination);
            assert_eq!(
                request(&inv).uri,
                "sip:agent1@192.168.1.20:5062;transport=tcp;ob"
            );
            assert_eq!(
                header_values(&inv, "X-Warmline-Whisper"),
                vec!["Campaign 7: overdue"]
            );
            for bad in [
                ("Via", "x"),
                ("X Bad", "x"),
                ("X-Ok", "a\r\nVia: evil"),
                ("", "x"),
            ] {
                assert!(
                    h.ep.invite_with_headers(call.clone(), &[bad], h.now)
                        .is_err(),
                    "{bad:?}"
                );
            }
            assert_eq!(h.ep.active_calls(), 1, "refused calls leave nothing behind");
        }

        mod fuzz {
            use super::*;
            use proptest::prelude::*;

            fn mutate(mut m: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
                const ALPHABET: &[u8] = b" :;<>@=,*\r\n\"0123456789afz/.\t\xff\x00";
                for &(op, pos, byte) in ops {
                    let pos = if m.is_empty() { 0 } else { pos % (m.len() + 1) };
                    let b = ALPHABET[byte as usize % ALPHABET.len()];
                    match op % 4 {
                        0 => m.truncate(pos),
                        1 if pos < m.len() => m[pos] = b,
                        2 => m.insert(pos, b),
                        _ if pos < m.len() => {
                            m.remove(pos);
                        }
                        _ => {}
                    }
                }
                m
            }

            proptest! {
                #[test]
                fn mutated_register_refer_notify_never_panic_or_leak(
                    picks in proptest::collection::vec(
                        (0usize..7, proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6)),
                        1..6,
                    ),
                    noise in proptest::collection::vec(any::<u8>(), 0..300),
                ) {
                    let mut cfg = secure_config();
                    cfg.auth.inbound = true;
                    cfg.guard.rate_per_sec = 1000;
                    let mut h = secure(cfg);
                    h.send_raw(&register("agent1", 1, Some(CONTACT), None, None));
                    let ch = h.take_sent().remove(0);
                    let auth = answer(&ch, "agent1", "s3cret", "REGISTER", REG_URI, 1);
                    let inv = Req::invite("fz-x");
                    let (call, tag) = {
                        let mut ok = inv.clone();
                        ok.extra.push(format!("Authorization: {}", answer(&ch, "agent1", "s3cret", "INVITE", &inv.ruri, 2)));
                        h.send(&ok);
                        let call = match h.take_events().as_slice() {
                            [Event::IncomingCall(ic)] => ic.call,
                            other => panic!("{other:?}"),
                        };
                        h.ep.answer(call, ANSWER.to_vec(), h.now).unwrap();
                        let tag = to_tag(&h.take_sent()[1]);
                        h.send(&ok.ack_2xx(&tag));
                        (call, tag)
                    };
                    h.ep.refer(call, "sip:agent7@10.0.0.7", h.now).unwrap();
                    let refer = h.take_sent().remove(0);
                    let mut notify = inv.in_dialog("NOTIFY", &tag, 5, 5);
                    notify.extra.push("Event: refer;id=1".into());
                    notify.extra.push("Subscription-State: active".into());
                    let mut incoming_refer = inv.in_dialog("REFER", &tag, 6, 6);
                    incoming_refer.extra.push("Refer-To: <sip:x@10.0.0.9?Replaces=a%3Bb>".into());
                    incoming_refer.extra.push("Referred-By: <sip:alice@10.0.0.2>".into());
                    let seeds = [
                        register("agent1", 2, Some("<sip:agent1@1.2.3.4>;expires=90, *"), Some(90), Some(&auth)),
                        register("agent1", 3, Some(CONTACT), Some(0), Some(&auth)),
                        register("nobody", 4, Some("*"), Some(0), Some(&auth.replace("agent1", "nobody"))),
                        reply_to(&refer, 202),
                        notify.with_body("message/sipfrag", b"SIP/2.0 180 Ringing\r\n").build(),
                        uas_reply(&refer, 200, None, &["Contact: <sip:x@y>"], b""),
                        incoming_refer.build(),
                    ];
                    for (pick, ops) in &picks {
                        h.send_raw(&mutate(seeds[*pick % seeds.len()].clone(), ops));
                    }
                    h.send_raw(&noise);
                    let _ = h.ep.hangup(call, h.now);
                    for e in h.take_events() {
                        if let Event::IncomingCall(ic) = e {
                            let _ = h.ep.hangup(ic.call, h.now);
                        }
                    }
                    h.run_idle();
                    h.take_events();
                    h.run_idle();
                    assert_eq!(h.ep.transaction_count(), 0);
                    assert_eq!(h.ep.active_calls(), 0);
                    assert_eq!(h.ep.registered_agents(), 0, "bindings expire");
                }
            }
        }
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

        /// Responses a trunk might send to the INVITE `inv`.
        fn uac_seeds(inv: &Transmit) -> Vec<Vec<u8>> {
            let www = format!("WWW-Authenticate: {SHA_CHALLENGE}");
            let stale = "Proxy-Authenticate: Digest realm=\"p\", nonce=\"s\", stale=true, \
                         algorithm=MD5-sess, qop=\"auth\"";
            vec![
                uas_reply(inv, 100, None, &[], b""),
                uas_reply(inv, 180, Some("f1"), &[], b""),
                uas_reply(
                    inv,
                    183,
                    Some("f1"),
                    &["Contact: <sip:b@10.0.0.2:5061>"],
                    SDP,
                ),
                uas_reply(
                    inv,
                    200,
                    Some("f1"),
                    &[
                        "Record-Route: <sip:10.0.0.50;lr>, <sip:p.example>",
                        "Contact: <sip:b@10.0.0.2:5061>",
                    ],
                    SDP,
                ),
                uas_reply(
                    inv,
                    200,
                    Some("f2"),
                    &["Contact: <sip:c@[2001:db8::1]:5062>"],
                    SDP,
                ),
                uas_reply(inv, 401, Some("f1"), &[&www], b""),
                uas_reply(inv, 407, Some("f1"), &[stale], b""),
                uas_reply(inv, 486, Some("f1"), &[], b""),
            ]
        }

        /// Feeds (mutated) responses to whatever INVITE is outstanding, then gives up on
        /// the call: the endpoint must not panic, must report exactly one terminal event
        /// and must clean up.
        type Pick = (usize, Vec<(u8, usize, u8)>);

        fn picks() -> impl Strategy<Value = Vec<Pick>> {
            let ops = proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..5);
            proptest::collection::vec((0usize..8, ops), 1..6)
        }

        fn drive_uac(picks: &[Pick], raw: &[Vec<u8>], tcp: bool) {
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            let mut h = Harness::new(transport);
            let (call, _, mut inv) = h.dial(outbound(transport, Some(alice())));
            for (i, (pick, ops)) in picks.iter().enumerate() {
                let seeds = uac_seeds(&inv);
                h.send_raw(&mutate(seeds[*pick % seeds.len()].clone(), ops));
                if let Some(r) = raw.get(i) {
                    h.send_raw(r);
                }
                for t in h.take_sent() {
                    if is(&t, "INVITE") {
                        inv = t;
                    }
                }
                if i == 1 {
                    let _ = h.ep.cancel(call, h.now);
                }
            }
            if h.ep.cancel(call, h.now).is_err() {
                let _ = h.ep.hangup(call, h.now);
            }
            h.run_idle();
            let events = h.take_events();
            let terminal = events
                .iter()
                .filter(|e| matches!(e, Event::Failed { .. } | Event::Ended { .. }))
                .count();
            assert_eq!(terminal, 1, "{events:?}");
            let answered = events
                .iter()
                .filter(|e| matches!(e, Event::Answered { .. }))
                .count();
            assert!(answered <= 1, "{events:?}");
            h.assert_clean();
        }

        /// Mutated registrar responses to whatever REGISTER is outstanding, then unregister.
        fn drive_register(picks: &[Pick]) {
            let mut h = Harness::new(Transport::Udp);
            let reg = h.ep.register(registration(Some(alice())), h.now);
            let mut last = h.take_sent().remove(0);
            for (pick, ops) in picks {
                let www = format!("WWW-Authenticate: {MD5_CHALLENGE}");
                let seeds = [
                    uas_reply(&last, 401, Some("r"), &[&www], b""),
                    uas_reply(
                        &last,
                        200,
                        Some("r"),
                        &[
                            "Contact: <sip:alice@10.0.0.1:5060>;expires=\"60\";q=1",
                            "Expires: 9",
                        ],
                        b"",
                    ),
                    uas_reply(&last, 423, Some("r"), &["Min-Expires: 4294967295"], b""),
                    uas_reply(&last, 503, Some("r"), &[], b""),
                ];
                h.send_raw(&mutate(seeds[*pick % seeds.len()].clone(), ops));
                let later = h.now + ms(1000);
                h.advance_to(later);
                if let Some(t) = h.take_sent().into_iter().rfind(|t| is(t, "REGISTER")) {
                    last = t;
                }
            }
            h.ep.unregister(reg, h.now);
            h.run_idle();
            h.assert_clean();
        }

        proptest! {
            #[test]
            fn register_mutated_responses_never_panic_or_leak(picks in picks()) {
                drive_register(&picks);
            }

            #[test]
            fn uac_mutated_responses_never_panic_or_leak(
                picks in picks(),
                raw in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 0..300),
                    0..3,
                ),
                tcp in any::<bool>(),
            ) {
                drive_uac(&picks, &raw, tcp);
            }
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
