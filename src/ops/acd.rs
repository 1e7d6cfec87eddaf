//! The ACD's tokio shell: one task owns the sans-IO `routing::acd::Acd`, rings agents through
//! the SIP task (`agent_leg`), and tells each waiting caller's call task what happens to it.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::routing::acd::{Acd, Action, AgentContact, AgentState, CallId, OverflowTo, Unavailable};

use super::agent_leg::{self, AgentLeg, AgentTarget, OfferInfo, OfferResult, PendingOffer};
use super::call::CallContext;
use super::transport::SipCommand;

/// What happens to a queued caller, for its call task.
pub enum QueueEvent {
    Position {
        position: usize,
        est_wait: Option<Duration>,
    },
    /// An agent answered: bridge to this leg.
    Connected(AgentLeg),
    /// Moved to another queue (overflow); keep waiting.
    Moved {
        queue: String,
    },
    /// Out of the ACD without an agent.
    Unavailable(Unavailable),
    /// From the connected agent leg (forwarded by the call's own watcher task): a key the
    /// agent pressed, and the end of the leg.
    AgentDtmf(char),
    AgentLeft,
}

/// Requests to the ACD task.
pub enum AcdRequest {
    Enqueue {
        call: CallId,
        queue: String,
        priority: i32,
        info: OfferInfo,
        events: mpsc::UnboundedSender<QueueEvent>,
    },
    /// The caller hung up, or left the queue otherwise.
    Leave {
        call: CallId,
    },
    /// The bridged call is over: the agent wraps up.
    Ended {
        call: CallId,
    },
    /// An agent's phone registered (or refreshed) at this contact.
    Registered {
        username: String,
        target: AgentTarget,
    },
    Unregistered {
        username: String,
    },
    Status(oneshot::Sender<AcdStatus>),
}

/// A snapshot for `warmline status` and the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AcdStatus {
    /// queue → callers waiting
    pub waiting: BTreeMap<String, usize>,
    /// agent → state name
    pub agents: BTreeMap<String, String>,
}

/// The handle calls use.
#[derive(Clone)]
pub struct AcdHandle {
    tx: mpsc::UnboundedSender<AcdRequest>,
    /// queue → its hold-music prompt
    queues: Arc<BTreeMap<String, Option<String>>>,
}

impl AcdHandle {
    pub fn send(&self, r: AcdRequest) -> bool {
        self.tx.send(r).is_ok()
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    /// The queue's hold-music prompt name, if it has one.
    pub fn music(&self, queue: &str) -> Option<String> {
        self.queues.get(queue).cloned().flatten()
    }

    pub async fn status(&self) -> Option<AcdStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(AcdRequest::Status(tx)).ok()?;
        rx.await.ok()
    }
}

/// An ACD whose task is not started yet: the handle goes into the call context first, the
/// task (which needs that context to ring agents) starts after.
pub struct AcdTask {
    acd: Acd,
    rx: mpsc::UnboundedReceiver<AcdRequest>,
}

/// The handle for calls, and the task to start once the call context exists.
pub fn channel(acd: Acd) -> (AcdHandle, AcdTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queues = acd
        .queues()
        .map(|q| (q.name.clone(), q.music.clone()))
        .collect();
    (
        AcdHandle {
            tx,
            queues: Arc::new(queues),
        },
        AcdTask { acd, rx },
    )
}

impl AcdTask {
    pub fn start(self, ctx: Arc<CallContext>, sip: mpsc::UnboundedSender<SipCommand>) {
        let shell = AcdShell {
            acd: self.acd,
            ctx,
            sip,
            calls: HashMap::new(),
            offers: HashMap::new(),
            answered: HashMap::new(),
            registered: HashMap::new(),
        };
        tokio::spawn(shell.run(self.rx));
    }
}

struct Waiting {
    info: OfferInfo,
    events: mpsc::UnboundedSender<QueueEvent>,
}

struct AcdShell {
    acd: Acd,
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    calls: HashMap<CallId, Waiting>,
    offers: HashMap<(CallId, String), PendingOffer>,
    /// Legs that answered, until the ACD connects them.
    answered: HashMap<(CallId, String), AgentLeg>,
    registered: HashMap<String, AgentTarget>,
}

type OfferDone = (CallId, String, OfferResult);

impl AcdShell {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<AcdRequest>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<OfferDone>();
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        loop {
            let deadline = self
                .acd
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            timer.as_mut().reset(deadline);
            tokio::select! {
                r = rx.recv() => {
                    let Some(r) = r else { return };
                    self.request(r, Instant::now());
                }
                Some((call, agent, result)) = done_rx.recv() => {
                    self.offer_done(call, agent, result, Instant::now());
                }
                _ = &mut timer => self.acd.handle_timeout(Instant::now()),
            }
            self.drain_actions(&done_tx).await;
        }
    }

    fn request(&mut self, r: AcdRequest, now: Instant) {
        match r {
            AcdRequest::Enqueue {
                call,
                queue,
                priority,
                info,
                events,
            } => {
                match self
                    .acd
                    .enqueue(call, &queue, priority, now, chrono::Utc::now())
                {
                    Ok(()) => {
                        tracing::info!(call_id = %info.call_id, queue = %queue, priority, "acd: queued");
                        self.calls.insert(call, Waiting { info, events });
                    }
                    Err(e) => {
                        tracing::error!(call_id = %info.call_id, queue = %queue, error = %e, "acd: cannot queue");
                        let _ = events.send(QueueEvent::Unavailable(Unavailable::NoAgents));
                    }
                }
            }
            AcdRequest::Leave { call } => {
                let _ = self.acd.caller_hung_up(call, now);
                self.forget(call);
            }
            AcdRequest::Ended { call } => {
                let _ = self.acd.call_ended(call, now);
                self.forget(call);
            }
            AcdRequest::Registered { username, target } => {
                tracing::info!(agent = %username, uri = %target.request_uri, "acd: agent registered");
                self.registered.insert(username.clone(), target);
                for agent in self.agents_with_username(&username) {
                    let _ = self.acd.agent_registered(&agent, now);
                }
            }
            AcdRequest::Unregistered { username } => {
                tracing::info!(agent = %username, "acd: agent unregistered");
                self.registered.remove(&username);
                for agent in self.agents_with_username(&username) {
                    let _ = self.acd.agent_unregistered(&agent, now);
                }
            }
            AcdRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn agents_with_username(&self, username: &str) -> Vec<String> {
        self.acd
            .agents()
            .filter(
                |a| matches!(&a.contact, AgentContact::Registered { username: u } if u == username),
            )
            .map(|a| a.name.clone())
            .collect()
    }

    fn forget(&mut self, call: CallId) {
        self.calls.remove(&call);
        self.offers.retain(|(c, _), o| {
            if *c == call {
                o.cancel();
                false
            } else {
                true
            }
        });
        // Dropping an answered leg hangs it up.
        self.answered.retain(|(c, _), _| *c != call);
    }

    fn offer_done(&mut self, call: CallId, agent: String, result: OfferResult, now: Instant) {
        self.offers.remove(&(call, agent.clone()));
        match result {
            OfferResult::Answered(leg) => {
                if self.acd.agent_answered(call, &agent, now).is_ok() {
                    self.answered.insert((call, agent), leg);
                } else {
                    // The caller left or another agent was faster: `leg` drops and hangs up.
                    tracing::info!(agent = %agent, "acd: answer came too late; agent released");
                }
            }
            OfferResult::Failed { status, reason } => {
                tracing::info!(agent = %agent, status, reason = %reason, "acd: offer not taken");
                let _ = self.acd.offer_failed(call, &agent, now);
            }
        }
    }

    async fn drain_actions(&mut self, done_tx: &mpsc::UnboundedSender<OfferDone>) {
        while let Some(a) = self.acd.poll_action() {
            match a {
                Action::OfferToAgent {
                    call,
                    agent,
                    contact,
                    ring_timeout,
                } => {
                    let Some(w) = self.calls.get(&call) else {
                        let _ = self.acd.offer_failed(call, &agent, Instant::now());
                        continue;
                    };
                    let target = match &contact {
                        AgentContact::Address(a) => AgentTarget::resolve_static(a).await,
                        AgentContact::Registered { username } => self
                            .registered
                            .get(username)
                            .cloned()
                            .ok_or_else(|| format!("agent '{username}' is not registered")),
                    };
                    let target = match target {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(agent = %agent, error = %e, "acd: agent unreachable");
                            let _ = self.acd.offer_failed(call, &agent, Instant::now());
                            continue;
                        }
                    };
                    let (tx, rx) = oneshot::channel();
                    let pending = agent_leg::offer(
                        self.ctx.clone(),
                        self.sip.clone(),
                        agent.clone(),
                        target,
                        w.info.clone(),
                        ring_timeout,
                        tx,
                    );
                    self.offers.insert((call, agent.clone()), pending);
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        let result = rx.await.unwrap_or(OfferResult::Failed {
                            status: 500,
                            reason: "agent leg task ended".into(),
                        });
                        let _ = done_tx.send((call, agent, result));
                    });
                }
                Action::CancelOffer { call, agent } => {
                    if let Some(o) = self.offers.remove(&(call, agent.clone())) {
                        o.cancel();
                    }
                    self.answered.remove(&(call, agent));
                }
                Action::Connected { call, agent } => {
                    let leg = self.answered.remove(&(call, agent.clone()));
                    match (leg, self.calls.get(&call)) {
                        (Some(leg), Some(w)) => {
                            tracing::info!(call_id = %w.info.call_id, agent = %agent, "acd: connected");
                            if w.events.send(QueueEvent::Connected(leg)).is_err() {
                                let _ = self.acd.call_ended(call, Instant::now());
                                self.forget(call);
                            }
                        }
                        _ => {
                            let _ = self.acd.call_ended(call, Instant::now());
                            self.forget(call);
                        }
                    }
                }
                Action::AnnouncePosition {
                    call,
                    position,
                    est_wait,
                } => {
                    if let Some(w) = self.calls.get(&call) {
                        let _ = w.events.send(QueueEvent::Position { position, est_wait });
                    }
                }
                Action::Overflow { call, to } => {
                    let event = match to {
                        OverflowTo::Queue(q) => QueueEvent::Moved { queue: q },
                        // The dialplan owns what happens out of the ACD: its queue fallback.
                        OverflowTo::Fallback(_) => QueueEvent::Unavailable(Unavailable::Overflow),
                    };
                    let gone = matches!(event, QueueEvent::Unavailable(_));
                    if let Some(w) = self.calls.get(&call) {
                        let _ = w.events.send(event);
                    }
                    if gone {
                        self.forget(call);
                    }
                }
                Action::Unavailable { call, reason } => {
                    if let Some(w) = self.calls.get(&call) {
                        tracing::info!(call_id = %w.info.call_id, reason = %reason, "acd: queue unavailable");
                        let _ = w.events.send(QueueEvent::Unavailable(reason));
                    }
                    self.forget(call);
                }
            }
        }
    }

    fn status(&self) -> AcdStatus {
        let mut s = AcdStatus::default();
        for q in self.acd.queues() {
            s.waiting.insert(q.name.clone(), self.acd.waiting(&q.name));
        }
        for a in self.acd.agents() {
            let state = match self.acd.agent_state(&a.name) {
                Some(AgentState::LoggedOut) | None => "logged_out",
                Some(AgentState::Idle { .. }) => "idle",
                Some(AgentState::Offered { .. }) => "ringing",
                Some(AgentState::Busy { .. }) => "busy",
                Some(AgentState::WrapUp { .. }) => "wrap_up",
            };
            s.agents.insert(a.name.clone(), state.to_string());
        }
        s
    }
}
