//! The SIP task: owns the UDP socket, the TCP and TLS connections and the sans-IO `Endpoint`,
//! and hands each call's events to that call's task.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::sip::endpoint::{
    CallHandle, EndCause, Endpoint, Event, Limits, OutboundCall, RegHandle, Registration, Transmit,
    Transport,
};
use crate::sip::message::StreamFramer;

/// What a call task asks of the signalling side.
#[derive(Debug)]
pub enum SipCommand {
    Ring(CallHandle),
    Answer(CallHandle, Vec<u8>),
    Reject(CallHandle, u16),
    Hangup(CallHandle),
    AnswerReinvite(CallHandle, Vec<u8>),
    RejectReinvite(CallHandle, u16),
    /// Place an outbound call; its events go to `events`, the handle (or why not) to `reply`.
    Invite {
        call: Box<OutboundCall>,
        /// Extra headers on the INVITE (e.g. the agent screen-pop `X-Warmline-*`).
        headers: Vec<(String, String)>,
        events: mpsc::UnboundedSender<CallEvent>,
        reply: tokio::sync::oneshot::Sender<Result<CallHandle, String>>,
    },
    /// Give up on an unanswered outbound call (CANCEL).
    Cancel(CallHandle),
    /// Blind transfer: REFER the far end of an answered call to this URI.
    Refer(CallHandle, String),
    /// Register to a trunk and keep the registration fresh; `name` is for the logs.
    Register {
        name: String,
        registration: Registration,
    },
}

/// What the signalling side tells a call task.
#[derive(Debug)]
pub enum CallEvent {
    Confirmed {
        remote_sdp: Option<Vec<u8>>,
    },
    ReInvite {
        remote_sdp: Option<Vec<u8>>,
    },
    Dtmf {
        digit: char,
    },
    /// 180/183 to our INVITE (183 with SDP: early media).
    Progress {
        status: u16,
        remote_sdp: Option<Vec<u8>>,
    },
    /// 2xx to our INVITE; the ACK is sent.
    Answered {
        remote_sdp: Option<Vec<u8>>,
    },
    /// Our INVITE failed (final non-2xx, or no answer from the trunk: 408). The call is over.
    Failed {
        status: u16,
        reason: String,
    },
    Ended {
        cause: EndCause,
    },
    /// The daemon is stopping: hang up.
    Shutdown,
    /// How a REFER we sent ended: `ok` when the far end reported the transfer target
    /// answered (NOTIFY 2xx).
    TransferEnded {
        ok: bool,
        status: u16,
        reason: String,
    },
}

/// An agent's phone registered to us or went away (the registrar's events, for the ACD).
#[derive(Debug, Clone)]
pub enum AgentEvent {
    Registered {
        user: String,
        contact: String,
        source: SocketAddr,
        transport: Transport,
    },
    Unregistered {
        user: String,
    },
}

/// The endpoint's counters as of the last pass of the SIP task, for the metrics scrape (the
/// endpoint itself lives inside that task).
static SIP_MALFORMED: AtomicU64 = AtomicU64::new(0);
static SIP_AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
static SIP_RATE_LIMITED: AtomicU64 = AtomicU64::new(0);

fn publish_sip_counters(ep: &Endpoint) {
    let s = ep.security_counters();
    SIP_MALFORMED.store(ep.malformed_messages(), Ordering::Relaxed);
    SIP_AUTH_FAILURES.store(s.auth_failures, Ordering::Relaxed);
    SIP_RATE_LIMITED.store(
        s.rate_limited_drops
            .saturating_add(s.blocked_drops)
            .saturating_add(s.acl_drops),
        Ordering::Relaxed,
    );
}

/// What `metrics::set_sip_counters` reads.
pub fn sip_counters() -> super::metrics::SipCounters {
    super::metrics::SipCounters {
        malformed: SIP_MALFORMED.load(Ordering::Relaxed),
        auth_failures: SIP_AUTH_FAILURES.load(Ordering::Relaxed),
        rate_limited: SIP_RATE_LIMITED.load(Ordering::Relaxed),
    }
}

/// A stream connection as the endpoint names it: its transport (TCP or TLS) and the peer's
/// address (the source of a connection the peer opened, the destination of one we opened).
type ConnKey = (Transport, SocketAddr);

/// Messages from TCP and TLS connection tasks to the SIP task.
enum TcpMsg {
    Opened(ConnKey, mpsc::Sender<Vec<u8>>),
    Message(ConnKey, Vec<u8>),
    Closed(ConnKey),
}

/// Starts a call task for a new inbound call; returns the sender for its events, or a SIP status to
/// refuse it with (e.g. 503 when full).
pub trait CallSpawner: Send + Sync + 'static {
    fn spawn_call(
        &self,
        call: crate::sip::endpoint::IncomingCall,
        commands: mpsc::UnboundedSender<SipCommand>,
    ) -> Result<mpsc::UnboundedSender<CallEvent>, u16>;

    /// An agent's phone registered or went away; ignored by default.
    fn agent_event(&self, _event: AgentEvent) {}

    /// False while the appliance drains (OPTIONS then gets 503); true by default.
    fn accepting_calls(&self) -> bool {
        true
    }
}

pub struct SipServer {
    endpoint: Endpoint,
    udp: Arc<UdpSocket>,
    /// Open TCP and TLS connections.
    tcp_conns: HashMap<ConnKey, mpsc::Sender<Vec<u8>>>,
    /// Messages for TCP/TLS destinations we are still connecting to.
    tcp_pending: HashMap<ConnKey, Vec<Vec<u8>>>,
    /// Client side of TLS for connections we open (`[sip.tls]` set): `None` refuses them.
    tls_connector: Option<TlsConnector>,
    tcp_tx: mpsc::Sender<TcpMsg>,
    tcp_rx: mpsc::Receiver<TcpMsg>,
    calls: HashMap<CallHandle, mpsc::UnboundedSender<CallEvent>>,
    cmd_tx: mpsc::UnboundedSender<SipCommand>,
    cmd_rx: mpsc::UnboundedReceiver<SipCommand>,
    spawner: Arc<dyn CallSpawner>,
    limits: Limits,
    /// Trunk registrations, for the logs.
    registrations: HashMap<RegHandle, String>,
}

impl SipServer {
    pub async fn bind(
        listen: SocketAddr,
        endpoint: Endpoint,
        limits: Limits,
        spawner: Arc<dyn CallSpawner>,
    ) -> std::io::Result<(Self, TcpListener)> {
        let udp = UdpSocket::bind(listen).await?;
        let tcp = TcpListener::bind(listen).await?;
        let (tcp_tx, tcp_rx) = mpsc::channel(4096);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                endpoint,
                udp: Arc::new(udp),
                tcp_conns: HashMap::new(),
                tcp_pending: HashMap::new(),
                tls_connector: None,
                tcp_tx,
                tcp_rx,
                calls: HashMap::new(),
                cmd_tx,
                cmd_rx,
                spawner,
                limits,
                registrations: HashMap::new(),
            },
            tcp,
        ))
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// A sender for commands (outbound calls, registrations) from outside call tasks.
    pub fn commands(&self) -> mpsc::UnboundedSender<SipCommand> {
        self.cmd_tx.clone()
    }

    /// Runs until `shutdown` resolves, then asks every call to hang up and keeps signalling going
    /// until they are gone (or `grace` passes) so their BYEs complete.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
        grace: std::time::Duration,
    ) {
        tokio::spawn(accept_loop(listener, self.tcp_tx.clone(), self.limits));
        tokio::pin!(shutdown);
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut buf = vec![0u8; 65_536];
        // One timer, re-armed only when the next deadline moves (not a new timer per loop).
        let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let mut armed: Option<tokio::time::Instant> = None;
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        // One `sip stats` line every 10 s while anything is going on: the soak test
        // (scripts/soak.sh) reads it to spot transactions or dialogs that never go away.
        let mut stats = tokio::time::interval(std::time::Duration::from_secs(10));
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = (0, 0, 0, 0);
        loop {
            let timeout = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let deadline = match (timeout, stopping) {
                (Some(t), Some(s)) => Some(t.min(s)),
                (t, s) => t.or(s),
            };
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(deadline.unwrap_or_else(far));
            }
            self.endpoint
                .set_accepting_calls(self.spawner.accepting_calls());
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => {
                    match r {
                        Ok((n, src)) => {
                            let now = Instant::now();
                            self.endpoint.handle_input(now, src, Transport::Udp, buf.get(..n).unwrap_or_default());
                            // Drain a burst without going back through select.
                            for _ in 0..64 {
                                match self.udp.try_recv_from(&mut buf) {
                                    Ok((n, src)) => self.endpoint.handle_input(now, src, Transport::Udp, buf.get(..n).unwrap_or_default()),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "udp recv"),
                    }
                }
                Some(msg) = self.tcp_rx.recv() => self.on_tcp(msg),
                _ = stats.tick() => {
                    let now = (
                        self.endpoint.transaction_count(),
                        self.endpoint.active_calls(),
                        self.calls.len(),
                        self.tcp_conns.len(),
                    );
                    if now != last_stats || now != (0, 0, 0, 0) {
                        tracing::info!(
                            transactions = now.0,
                            dialogs = now.1,
                            call_tasks = now.2,
                            stream_connections = now.3,
                            malformed_total = self.endpoint.malformed_messages(),
                            "sip stats"
                        );
                    }
                    last_stats = now;
                }
                Some(cmd) = self.cmd_rx.recv() => {
                    self.on_command(cmd);
                    while let Ok(cmd) = self.cmd_rx.try_recv() {
                        self.on_command(cmd);
                    }
                }
                _ = &mut timer => {
                    // Re-armed from the endpoint's next deadline at the top of the loop.
                    armed = None;
                    timer.as_mut().reset(far());
                    if let Some(s) = stopping {
                        if tokio::time::Instant::now() >= s {
                            tracing::warn!(calls = self.calls.len(), "grace period over; exiting with calls still up");
                            return;
                        }
                    }
                    self.endpoint.handle_timeout(Instant::now());
                }
                _ = &mut shutdown, if stopping.is_none() => {
                    tracing::info!(calls = self.calls.len(), "stopping: hanging up active calls");
                    stopping = Some(tokio::time::Instant::now() + grace);
                    for tx in self.calls.values() {
                        let _ = tx.send(CallEvent::Shutdown);
                    }
                }
            }
            self.flush().await;
            if stopping.is_some() && self.calls.is_empty() && self.endpoint.active_calls() == 0 {
                tracing::info!("all calls ended; signalling stopped");
                return;
            }
        }
    }

    fn on_command(&mut self, cmd: SipCommand) {
        let now = Instant::now();
        let r = match cmd {
            SipCommand::Ring(c) => {
                self.endpoint.ring(c, now);
                Ok(())
            }
            SipCommand::Answer(c, sdp) => self.endpoint.answer(c, sdp, now),
            SipCommand::Reject(c, status) => {
                self.calls.remove(&c);
                self.endpoint.reject(c, status, now)
            }
            SipCommand::Hangup(c) => self.endpoint.hangup(c, now),
            SipCommand::AnswerReinvite(c, sdp) => self.endpoint.answer_reinvite(c, sdp, now),
            SipCommand::RejectReinvite(c, status) => self.endpoint.reject_reinvite(c, status, now),
            SipCommand::Invite {
                call,
                headers,
                events,
                reply,
            } => {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match self.endpoint.invite_with_headers(*call, &headers, now) {
                    Ok((handle, _call_id)) => {
                        self.calls.insert(handle, events);
                        let _ = reply.send(Ok(handle));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
                Ok(())
            }
            SipCommand::Cancel(c) => self.endpoint.cancel(c, now),
            SipCommand::Refer(c, target) => self.endpoint.refer(c, &target, now),
            SipCommand::Register { name, registration } => {
                let reg = self.endpoint.register(registration, now);
                tracing::info!(trunk = %name, "registering to the trunk");
                self.registrations.insert(reg, name);
                Ok(())
            }
        };
        if let Err(e) = r {
            // The call may have ended on the network side in the meantime; nothing to do.
            tracing::debug!(error = %e, "call command not applied");
        }
    }

    fn on_tcp(&mut self, msg: TcpMsg) {
        match msg {
            TcpMsg::Opened(key, tx) => {
                if let Some(pending) = self.tcp_pending.remove(&key) {
                    for p in pending {
                        let _ = tx.try_send(p);
                    }
                }
                self.tcp_conns.insert(key, tx);
            }
            TcpMsg::Message((transport, addr), data) => {
                self.endpoint
                    .handle_input(Instant::now(), addr, transport, &data);
            }
            TcpMsg::Closed(key) => {
                let (transport, addr) = key;
                self.tcp_conns.remove(&key);
                // Dialogs that reused it connect to their Contact from now on.
                self.endpoint.connection_closed(addr, transport);
                if self.tcp_pending.remove(&key).is_some() {
                    // Never connected: what waited for it (an outbound INVITE, a REGISTER) fails.
                    self.endpoint
                        .transport_failed(addr, transport, Instant::now());
                }
            }
        }
    }

    /// Sends what the endpoint produced and routes its events.
    async fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.send(t).await;
        }
        while let Some(ev) = self.endpoint.poll_event() {
            self.dispatch(ev);
        }
        // Events can make the endpoint send (e.g. a refusal); drain once more.
        while let Some(t) = self.endpoint.poll_transmit() {
            self.send(t).await;
        }
        publish_sip_counters(&self.endpoint);
    }

    fn dispatch(&mut self, ev: Event) {
        let (call, event) = match ev {
            Event::IncomingCall(inc) => {
                let handle = inc.call;
                match self.spawner.spawn_call(inc, self.cmd_tx.clone()) {
                    Ok(tx) => {
                        self.calls.insert(handle, tx);
                    }
                    Err(status) => {
                        let _ = self.endpoint.reject(handle, status, Instant::now());
                    }
                }
                return;
            }
            Event::Confirmed { call, remote_sdp } => (call, CallEvent::Confirmed { remote_sdp }),
            Event::ReInvite { call, remote_sdp } => (call, CallEvent::ReInvite { remote_sdp }),
            Event::Dtmf { call, digit, .. } => (call, CallEvent::Dtmf { digit }),
            Event::Progress {
                call,
                status,
                remote_sdp,
            } => (call, CallEvent::Progress { status, remote_sdp }),
            Event::Answered { call, remote_sdp } => (call, CallEvent::Answered { remote_sdp }),
            Event::Failed {
                call,
                status,
                reason,
            } => {
                if let Some(tx) = self.calls.remove(&call) {
                    let _ = tx.send(CallEvent::Failed { status, reason });
                }
                return;
            }
            Event::Registered { reg, expires } => {
                let name = self
                    .registrations
                    .get(&reg)
                    .map(String::as_str)
                    .unwrap_or("?");
                tracing::info!(trunk = %name, expires_s = expires.as_secs(), "registered to the trunk");
                super::metrics::set_trunk_registered(name, true);
                return;
            }
            Event::RegistrationFailed {
                reg,
                status,
                reason,
            } => {
                let name = self
                    .registrations
                    .get(&reg)
                    .map(String::as_str)
                    .unwrap_or("?");
                tracing::warn!(trunk = %name, status, reason = %reason, "trunk registration failed; retrying later");
                return;
            }
            Event::Ended { call, cause } => {
                if let Some(tx) = self.calls.remove(&call) {
                    let _ = tx.send(CallEvent::Ended { cause });
                }
                return;
            }
            Event::AgentRegistered {
                user,
                contact,
                source,
                transport,
                expires,
            } => {
                tracing::info!(agent = %user, contact = %contact, source = %source, expires_s = expires.as_secs(), "agent registered");
                self.spawner.agent_event(AgentEvent::Registered {
                    user,
                    contact,
                    source,
                    transport,
                });
                return;
            }
            Event::AgentUnregistered { user } => {
                tracing::info!(agent = %user, "agent unregistered");
                self.spawner.agent_event(AgentEvent::Unregistered { user });
                return;
            }
            Event::TransferProgress { call, status } => {
                tracing::debug!(?call, status, "transfer progress");
                return;
            }
            Event::TransferDone { call } => (
                call,
                CallEvent::TransferEnded {
                    ok: true,
                    status: 200,
                    reason: String::new(),
                },
            ),
            Event::TransferFailed {
                call,
                status,
                reason,
            } => (
                call,
                CallEvent::TransferEnded {
                    ok: false,
                    status,
                    reason,
                },
            ),
        };
        if let Some(tx) = self.calls.get(&call) {
            if tx.send(event).is_err() {
                self.calls.remove(&call);
            }
        }
    }

    async fn send(&mut self, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                // Non-blocking first: the socket buffer almost always has room, and this skips
                // a readiness future per datagram. Only a full buffer waits.
                let sent = match self.udp.try_send_to(&t.payload, t.destination) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.udp.send_to(&t.payload, t.destination).await
                    }
                    r => r,
                };
                if let Err(e) = sent {
                    tracing::debug!(dest = %t.destination, error = %e, "udp send failed");
                }
            }
            Transport::Tcp | Transport::Tls => {
                let key = (t.transport, t.destination);
                if let Some(tx) = self.tcp_conns.get(&key) {
                    if tx.try_send(t.payload).is_err() {
                        tracing::warn!(dest = %t.destination, transport = ?t.transport, "stream connection backlogged or closing; message dropped");
                    }
                    return;
                }
                let pending = self.tcp_pending.entry(key).or_default();
                pending.push(t.payload);
                if pending.len() == 1 {
                    let tls = match t.transport {
                        Transport::Tls => match &self.tls_connector {
                            Some(c) => Some(c.clone()),
                            None => {
                                tracing::warn!(dest = %t.destination, "SIP over TLS is off ([sip.tls] listen unset): cannot connect");
                                self.tcp_pending.remove(&key);
                                self.endpoint.transport_failed(
                                    t.destination,
                                    Transport::Tls,
                                    Instant::now(),
                                );
                                return;
                            }
                        },
                        _ => None,
                    };
                    tokio::spawn(connect(
                        t.destination,
                        tls,
                        self.tcp_tx.clone(),
                        self.limits,
                    ));
                }
            }
        }
    }
}

/// SIP over TLS (RFC 3261 §26.2, port 5061): `[sip.tls]`. Off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Where to accept TLS connections, e.g. `"0.0.0.0:5061"`. Unset: no TLS.
    pub listen: Option<SocketAddr>,
    /// The TLS address peers reach us at, written in Via and Contact of TLS calls (behind
    /// NAT or with an unspecified `listen`); default: `[sip] public_addr`'s IP with the
    /// `listen` port.
    pub public_addr: Option<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: Option<PathBuf>,
    /// Longest a client may take to finish its TLS handshake, in seconds.
    pub handshake_timeout_s: u64,
    /// PEM file of the CAs whose certificates we accept from peers we connect to over TLS
    /// (a phone's Contact once its own connection is gone, a `sips:` agent). The
    /// certificate must be issued for the peer's IP address. Unset: such connections are
    /// encrypted but the peer is not authenticated (as Asterisk's `verify_server = no`).
    pub ca: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_addr: None,
            cert: None,
            key: None,
            handshake_timeout_s: 10,
            ca: None,
        }
    }
}

/// Why SIP over TLS cannot start. Each names the `[sip.tls]` key or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[sip.tls] listen is set but `{0}` (a PEM file path) is missing")]
    MissingPath(&'static str),
    #[error("[sip.tls] {key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("[sip.tls] {key}: {path} is not usable PEM: {reason}")]
    BadPem {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[sip.tls] cert {cert} and key {key} do not form a usable server identity: {source}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("[sip.tls] ca {path}: cannot build a certificate verifier: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("cannot listen for SIP over TLS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound TLS listener with its certificate, ready for [`SipServer::serve_tls`].
pub struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    /// For the connections we open to peers (a Contact whose connection is gone).
    connector: TlsConnector,
    handshake_timeout: std::time::Duration,
}

impl TlsListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads the certificate chain and key named by `cfg` (paths relative to the working directory)
/// and builds the server side of rustls (TLS 1.2 and 1.3, no client certificates).
pub fn tls_acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_path = cfg.cert.as_deref().ok_or(TlsError::MissingPath("cert"))?;
    let key_path = cfg.key.as_deref().ok_or(TlsError::MissingPath("key"))?;
    let certs = read_certs("cert", cert_path)?;
    let key = read_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|source| TlsError::Identity {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Loads the certificate and binds `[sip.tls] listen`; `None` when TLS is off.
pub async fn bind_tls(cfg: &TlsConfig) -> Result<Option<TlsListener>, TlsError> {
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let acceptor = tls_acceptor(cfg)?;
    let connector = tls_connector(cfg)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TlsError::Bind { addr, source })?;
    Ok(Some(TlsListener {
        listener,
        acceptor,
        connector,
        handshake_timeout: std::time::Duration::from_secs(cfg.handshake_timeout_s.max(1)),
    }))
}

fn read_pem_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// The client side of rustls for connections we open: the peer's certificate is verified
/// against `[sip.tls] ca` when set (for the peer's IP address), otherwise not at all (the
/// handshake signature is still checked, so the session key belongs to whoever the peer is).
pub fn tls_connector(cfg: &TlsConfig) -> Result<TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Ca {
            path: cfg.ca.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
    let config = match cfg.ca.as_deref() {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("ca", path)? {
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate (no `[sip.tls] ca`) but still checks the handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(key, path)?;
    let bad = |reason: String| TlsError::BadPem {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadPem {
        key: "key",
        path: path.to_path_buf(),
        reason: format!("no private key found ({e})"),
    })
}

impl SipServer {
    /// Accepts SIP over TLS on `tls` next to UDP and TCP, and lets the endpoint open TLS
    /// connections; call before [`SipServer::run`]. Responses and in-dialog requests go back
    /// over the connection the peer opened while it is open.
    pub fn serve_tls(&mut self, tls: TlsListener) {
        self.tls_connector = Some(tls.connector.clone());
        tokio::spawn(tls_accept_loop(tls, self.tcp_tx.clone(), self.limits));
    }
}

async fn tls_accept_loop(tls: TlsListener, tx: mpsc::Sender<TcpMsg>, limits: Limits) {
    let TlsListener {
        listener,
        acceptor,
        handshake_timeout,
        ..
    } = tls;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A client that connects and never finishes the handshake must not hold a task
                    // and a socket for ever.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            connection(tls_stream, (Transport::Tls, addr), tx, limits).await
                        }
                        Ok(Err(e)) => {
                            tracing::info!(src = %addr, error = %e, "tls handshake failed")
                        }
                        Err(_) => tracing::info!(src = %addr, "tls handshake timed out"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "tls accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<TcpMsg>, limits: Limits) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    (Transport::Tcp, addr),
                    tx.clone(),
                    limits,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens a connection to `addr` for messages the endpoint sends there: plain TCP, or TLS
/// with `tls` (the peer's certificate checked for its IP address when `[sip.tls] ca` is set).
async fn connect(
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    tx: mpsc::Sender<TcpMsg>,
    limits: Limits,
) {
    let limit = std::time::Duration::from_secs(5);
    tracing::debug!(dest = %addr, tls = tls.is_some(), "opening a stream connection");
    let key = (
        if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        },
        addr,
    );
    let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(dest = %addr, transport = ?key.0, error = %e, "connect failed");
            let _ = tx.send(TcpMsg::Closed(key)).await;
            return;
        }
        Err(_) => {
            tracing::warn!(dest = %addr, transport = ?key.0, "connect timed out");
            let _ = tx.send(TcpMsg::Closed(key)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let Some(connector) = tls else {
        return connection(stream, key, tx, limits).await;
    };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(limit, connector.connect(name, stream)).await {
        Ok(Ok(tls_stream)) => connection(tls_stream, key, tx, limits).await,
        Ok(Err(e)) => {
            tracing::warn!(dest = %addr, error = %e, "tls handshake with the peer failed");
            let _ = tx.send(TcpMsg::Closed(key)).await;
        }
        Err(_) => {
            tracing::warn!(dest = %addr, "tls handshake with the peer timed out");
            let _ = tx.send(TcpMsg::Closed(key)).await;
        }
    }
}

/// One TCP or TLS connection: frames inbound messages by Content-Length, writes what the
/// endpoint sends.
async fn connection<S>(stream: S, key: ConnKey, tx: mpsc::Sender<TcpMsg>, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let addr = key.1;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    if tx.send(TcpMsg::Opened(key, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(data) = out_rx.recv().await {
            // TLS buffers records: flush so each message leaves now (a no-op for plain TCP).
            if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(limits);
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = framer.push(buf.get(..n).unwrap_or_default()) {
            tracing::warn!(src = %addr, error = %e, "closing tcp connection");
            break;
        }
        while let Some(m) = framer.next_message() {
            match m {
                Ok(msg) => {
                    if tx.send(TcpMsg::Message(key, msg)).await.is_err() {
                        break 'read;
                    }
                }
                Err(e) => {
                    tracing::warn!(src = %addr, error = %e, "closing tcp connection");
                    break 'read;
                }
            }
        }
    }
    writer.abort();
    let _ = tx.send(TcpMsg::Closed(key)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;

    /// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
    fn test_identity(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap_or_else(|e| panic!("rcgen: {e}"));
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap_or_else(|e| panic!("write cert: {e}"));
        std::fs::write(&k, cert.signing_key.serialize_pem())
            .unwrap_or_else(|e| panic!("write key: {e}"));
        (c, k, cert.cert.der().clone())
    }

    fn cfg(cert: Option<&Path>, key: Option<&Path>) -> TlsConfig {
        TlsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            cert: cert.map(Path::to_path_buf),
            key: key.map(Path::to_path_buf),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn tls_config_reads_from_toml_and_is_off_by_default() {
        let c: TlsConfig = toml::from_str(
            "listen = \"0.0.0.0:5061\"\ncert = \"/etc/warmline/sip.pem\"\nkey = \"k.pem\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen, Some(SocketAddr::from(([0, 0, 0, 0], 5061))));
        assert_eq!(c.cert.as_deref(), Some(Path::new("/etc/warmline/sip.pem")));
        assert_eq!(c.handshake_timeout_s, 10);
        assert_eq!((c.public_addr, c.ca), (None, None));
        let c: TlsConfig = toml::from_str(
            "listen = \"0.0.0.0:5061\"\npublic_addr = \"203.0.113.7:5061\"\nca = \"ca.pem\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.public_addr,
            Some(SocketAddr::from(([203, 0, 113, 7], 5061)))
        );
        assert_eq!(c.ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(toml::from_str::<TlsConfig>("certificate = \"x\"").is_err());
        assert_eq!(TlsConfig::default().listen, None);
    }

    #[tokio::test]
    async fn tls_off_binds_nothing() {
        let r = bind_tls(&TlsConfig::default()).await;
        assert!(matches!(r, Ok(None)));
    }

    #[test]
    fn missing_and_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, _) = test_identity(dir.path());
        let e = tls_acceptor(&cfg(None, Some(&key)))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("[sip.tls] listen is set but `cert` (a PEM file path) is missing")
        );
        let gone = dir.path().join("nope.pem");
        let e = tls_acceptor(&cfg(Some(&cert), Some(&gone)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with(&format!("[sip.tls] key: cannot read {}", gone.display())),
            "{e}"
        );
    }

    #[test]
    fn bad_pem_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, _) = test_identity(dir.path());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let e = tls_acceptor(&cfg(Some(&junk), Some(&key)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            format!(
                "[sip.tls] cert: {} is not usable PEM: no CERTIFICATE block",
                junk.display()
            )
        );
        // The certificate where the key should be.
        let e = tls_acceptor(&cfg(Some(&cert), Some(&cert)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with(&format!(
                "[sip.tls] key: {} is not usable PEM",
                cert.display()
            )),
            "{e}"
        );
        // A key that does not belong to the certificate.
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_, other_key, _) = test_identity(other.path());
        let e = tls_acceptor(&cfg(Some(&cert), Some(&other_key)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("do not form a usable server identity"), "{e}");
    }

    /// A client's message over TLS reaches the SIP task framed, and what the SIP task writes to
    /// that peer goes back over the same encrypted connection.
    #[tokio::test]
    async fn messages_flow_both_ways_over_tls() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, der) = test_identity(dir.path());
        let Ok(Some(listener)) = bind_tls(&cfg(Some(&cert), Some(&key))).await else {
            panic!("bind_tls failed");
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(tls_accept_loop(listener, tx, Limits::default()));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap_or_else(|e| panic!("{e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name = ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
        let mut tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake: {e}"));
        let options = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKt\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        // Two messages in one write, the second split: the framer must cut them apart.
        let twice = format!("{options}{options}");
        tls.write_all(twice.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tls.flush().await.unwrap_or_else(|e| panic!("{e}"));

        let Some(TcpMsg::Opened(peer, out)) = rx.recv().await else {
            panic!("no Opened");
        };
        assert_eq!(
            peer.0,
            Transport::Tls,
            "the endpoint is told the message came over TLS"
        );
        for _ in 0..2 {
            match rx.recv().await {
                Some(TcpMsg::Message(from, msg)) => {
                    assert_eq!(from, peer);
                    assert_eq!(msg, options.as_bytes());
                }
                _ => panic!("expected a framed message"),
            }
        }
        let reply = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        out.send(reply.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = vec![0u8; reply.len()];
        tls.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, reply);
        drop(tls);
        assert!(matches!(rx.recv().await, Some(TcpMsg::Closed(a)) if a == peer));
    }

    /// Connections we open over TLS: with `ca` the peer's certificate must chain to it (for
    /// the peer's IP address); without `ca` any certificate is taken. A refused handshake is
    /// reported as closed, so the endpoint fails what waited for it.
    #[tokio::test]
    async fn tls_connections_we_open_verify_the_peer_with_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, _) = test_identity(dir.path());
        let Ok(Some(listener)) = bind_tls(&cfg(Some(&cert), Some(&key))).await else {
            panic!("bind_tls failed");
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (server_tx, _server_rx) = mpsc::channel(16);
        tokio::spawn(tls_accept_loop(listener, server_tx, Limits::default()));
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (other_ca, _, _) = test_identity(other.path());

        let cases = [
            (Some(cert.clone()), true, "the peer's own CA"),
            (None, true, "no CA: not verified"),
            (Some(other_ca), false, "a CA that did not sign the peer"),
        ];
        for (ca, ok, what) in cases {
            let connector = tls_connector(&TlsConfig {
                ca,
                ..TlsConfig::default()
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let (tx, mut rx) = mpsc::channel(16);
            tokio::spawn(connect(addr, Some(connector), tx, Limits::default()));
            match rx.recv().await {
                Some(TcpMsg::Opened(key, _)) if ok => assert_eq!(key, (Transport::Tls, addr)),
                Some(TcpMsg::Closed(key)) if !ok => assert_eq!(key, (Transport::Tls, addr)),
                Some(TcpMsg::Opened(..)) => panic!("{what}: connected"),
                Some(TcpMsg::Closed(..)) => panic!("{what}: refused"),
                _ => panic!("{what}: no report"),
            }
        }
        let e = tls_connector(&TlsConfig {
            ca: Some(dir.path().join("missing.pem")),
            ..TlsConfig::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.starts_with("[sip.tls] ca: cannot read "), "{e}");
    }

    /// Plain text on the TLS port is a failed handshake: no message reaches the endpoint.
    #[tokio::test]
    async fn plain_sip_on_the_tls_port_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, _) = test_identity(dir.path());
        let Ok(Some(listener)) = bind_tls(&cfg(Some(&cert), Some(&key))).await else {
            panic!("bind_tls failed");
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(tls_accept_loop(listener, tx, Limits::default()));
        let mut tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tcp.write_all(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 64];
        // The server answers with a TLS alert (or nothing) and closes.
        let _ = tcp.read(&mut buf).await;
        assert!(rx.try_recv().is_err(), "nothing reaches the SIP task");
    }
}
