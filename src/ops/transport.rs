//! The SIP task: owns the UDP socket, the TCP connections and the sans-IO `Endpoint`, and hands
//! each call's events to that call's task.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

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

/// Messages from TCP connection tasks to the SIP task.
enum TcpMsg {
    Opened(SocketAddr, mpsc::Sender<Vec<u8>>),
    Message(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
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
}

pub struct SipServer {
    endpoint: Endpoint,
    udp: Arc<UdpSocket>,
    tcp_conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Messages for TCP destinations we are still connecting to.
    tcp_pending: HashMap<SocketAddr, Vec<Vec<u8>>>,
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
            TcpMsg::Opened(addr, tx) => {
                if let Some(pending) = self.tcp_pending.remove(&addr) {
                    for p in pending {
                        let _ = tx.try_send(p);
                    }
                }
                self.tcp_conns.insert(addr, tx);
            }
            TcpMsg::Message(addr, data) => {
                self.endpoint
                    .handle_input(Instant::now(), addr, Transport::Tcp, &data);
            }
            TcpMsg::Closed(addr) => {
                self.tcp_conns.remove(&addr);
                if self.tcp_pending.remove(&addr).is_some() {
                    // Never connected: what waited for it (an outbound INVITE, a REGISTER) fails.
                    self.endpoint
                        .transport_failed(addr, Transport::Tcp, Instant::now());
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
            Transport::Tcp => {
                if let Some(tx) = self.tcp_conns.get(&t.destination) {
                    if tx.try_send(t.payload).is_err() {
                        tracing::warn!(dest = %t.destination, "tcp connection backlogged; message dropped");
                    }
                    return;
                }
                let pending = self.tcp_pending.entry(t.destination).or_default();
                pending.push(t.payload);
                if pending.len() == 1 {
                    tokio::spawn(connect(t.destination, self.tcp_tx.clone(), self.limits));
                }
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<TcpMsg>, limits: Limits) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, addr, tx.clone(), limits));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connect(addr: SocketAddr, tx: mpsc::Sender<TcpMsg>, limits: Limits) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            connection(stream, addr, tx, limits).await
        }
        _ => {
            tracing::warn!(dest = %addr, "tcp connect failed");
            let _ = tx.send(TcpMsg::Closed(addr)).await;
        }
    }
}

/// One TCP connection: frames inbound messages by Content-Length, writes what the endpoint sends.
async fn connection(stream: TcpStream, addr: SocketAddr, tx: mpsc::Sender<TcpMsg>, limits: Limits) {
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    if tx.send(TcpMsg::Opened(addr, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(data) = out_rx.recv().await {
            if wr.write_all(&data).await.is_err() {
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
                    if tx.send(TcpMsg::Message(addr, msg)).await.is_err() {
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
    let _ = tx.send(TcpMsg::Closed(addr)).await;
}
