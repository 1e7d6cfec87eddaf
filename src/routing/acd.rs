//! The ACD: callers waiting in queues, agents taking them.
//!
//! Sans-IO like the SIP stack: the shell feeds events (a call enters a queue, an agent answers
//! or does not, a caller hangs up, an agent registers) with the current [`Instant`], asks
//! [`Acd::poll_timeout`] when to call [`Acd::handle_timeout`], and carries out the [`Action`]s
//! it takes from [`Acd::poll_action`] (ring an agent, stop ringing, bridge, announce, move the
//! caller elsewhere). Nothing here reads a clock or touches a socket.
//!
//! How a call meets an agent (docs/routing.md has the full story):
//! - waiting calls are served highest priority first, then in order of arrival (a call that
//!   overflows keeps its arrival order);
//! - a call is offered to one idle agent at a time (`longest_idle`, `round_robin`) or to all
//!   idle agents at once (`ring_all`); an agent who lets it ring past `ring_timeout` or rejects
//!   it is not offered this call again until every other agent has had it, and gets no call at
//!   all for the no-answer penalty;
//! - after a call an agent wraps up for the queue's `wrap_up` before the next offer;
//! - a call that waits `max_wait` moves to the `overflow` queue, else to the `fallback`, else
//!   is given up as [`Unavailable::Overflow`].
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::hours::Hours;

/// The shell's id for a call (unique among the calls it has enqueued and not yet ended).
pub type CallId = u64;

/// Priorities the call flow gives callers (set by the dialplan); higher is served first. Any
/// `i32` works.
pub use crate::ivr::dialplan::{PRIORITY_FAST_LANE, PRIORITY_NORMAL, PRIORITY_VIP};

/// How long an agent who let an offer ring out (or rejected it) gets no offers.
pub const DEFAULT_NO_ANSWER_PENALTY: Duration = Duration::from_secs(10);
/// Handled calls per queue that the wait estimate averages over.
const HANDLE_TIME_SAMPLES: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcdError {
    #[error("agent '{agent}' serves queue '{queue}', which is not configured (queues: {known})")]
    AgentServesUnknownQueue {
        agent: String,
        queue: String,
        known: String,
    },
    #[error(
        "queue '{queue}' overflows to queue '{to}', which is not configured (queues: {known})"
    )]
    OverflowToUnknownQueue {
        queue: String,
        to: String,
        known: String,
    },
    #[error("queue '{0}' overflows to itself")]
    OverflowToItself(String),
    #[error("{kind} '{name}' is configured twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("queue '{0}' is not configured")]
    UnknownQueue(String),
    #[error("agent '{0}' is not configured")]
    UnknownAgent(String),
    #[error("call {0} is not in the ACD")]
    UnknownCall(CallId),
    #[error("call {0} is already in the ACD")]
    DuplicateCall(CallId),
    #[error("call {call} is not being offered to agent '{agent}'")]
    NotOffered { call: CallId, agent: String },
}

/// Where an agent's phone is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentContact {
    /// A fixed SIP URI or `host:port`.
    Address(String),
    /// Wherever the phone registered as `username`; the shell resolves it from the registrar.
    Registered { username: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub name: String,
    pub contact: AgentContact,
    /// Queues this agent serves.
    pub queues: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The idle agent who has waited longest for a call.
    #[default]
    LongestIdle,
    /// Members in turn, starting after the last one offered a call from this queue.
    RoundRobin,
    /// Every idle member at once; the first to answer takes the call.
    RingAll,
}

impl Strategy {
    pub const NAMES: [&'static str; 3] = ["longest_idle", "round_robin", "ring_all"];

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "longest_idle" => Some(Strategy::LongestIdle),
            "round_robin" => Some(Strategy::RoundRobin),
            "ring_all" => Some(Strategy::RingAll),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub strategy: Strategy,
    /// Time an agent gets after a call from this queue before the next offer.
    pub wrap_up: Duration,
    /// How long one offer rings before it goes to the next agent.
    pub ring_timeout: Duration,
    /// `None`: wait until an agent answers or the caller hangs up.
    pub max_wait: Option<Duration>,
    /// Queue a call moves to after `max_wait`, or when no member is logged in.
    pub overflow: Option<String>,
    /// Where the shell sends a call after `max_wait` when there is no overflow queue (or the
    /// chain of overflow queues came back to a queue the call was in): a dialplan target.
    pub fallback: Option<String>,
    /// Tell waiting callers their position on entry and then this often.
    pub announce_every: Option<Duration>,
    pub hours: Hours,
    /// Hold music prompt, for the shell.
    pub music: Option<String>,
}

impl QueueSpec {
    /// A queue with the defaults of `[queues.<name>]`: longest idle, 30 s ring, 10 s wrap-up,
    /// no max wait, no announcements, always open.
    pub fn new(name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            strategy: Strategy::LongestIdle,
            wrap_up: Duration::from_secs(10),
            ring_timeout: Duration::from_secs(30),
            max_wait: None,
            overflow: None,
            fallback: None,
            announce_every: None,
            hours: Hours::default(),
            music: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Not registered (or logged out); gets no offers.
    LoggedOut,
    Idle {
        since: Instant,
    },
    /// Ringing with this call.
    Offered {
        call: CallId,
    },
    /// Talking.
    Busy {
        call: CallId,
    },
    WrapUp {
        until: Instant,
    },
}

/// Where a call goes when it leaves a queue without an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverflowTo {
    /// Moved into this queue; the ACD keeps handling it (play that queue's music).
    Queue(String),
    /// Out of the ACD: the shell sends the call to this dialplan target.
    Fallback(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The queue is closed (hours or a holiday).
    AfterHours,
    /// Waited `max_wait` with nowhere to overflow to.
    Overflow,
    /// No member of the queue is logged in, and nowhere to overflow to.
    NoAgents,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unavailable::AfterHours => "after_hours",
            Unavailable::Overflow => "overflow",
            Unavailable::NoAgents => "no_agents",
        })
    }
}

/// What the shell must do. Calls that end in `Connected`, `Overflow { to: Fallback }` or
/// `Unavailable` have left the queue; `Connected` calls stay known until `call_ended`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ring the agent (INVITE) and bridge on answer; report `agent_answered` or `offer_failed`.
    /// The ACD cancels the offer itself after `ring_timeout`.
    OfferToAgent {
        call: CallId,
        agent: String,
        contact: AgentContact,
        ring_timeout: Duration,
    },
    /// Stop ringing the agent (CANCEL).
    CancelOffer {
        call: CallId,
        agent: String,
    },
    /// The agent answered: bridge the caller to the agent's leg.
    Connected {
        call: CallId,
        agent: String,
    },
    /// Tell the caller where they are; `est_wait` is `None` until the queue has handled calls
    /// or when no agent is logged in.
    AnnouncePosition {
        call: CallId,
        position: usize,
        est_wait: Option<Duration>,
    },
    Overflow {
        call: CallId,
        to: OverflowTo,
    },
    Unavailable {
        call: CallId,
        reason: Unavailable,
    },
}

#[derive(Debug)]
struct Agent {
    spec: AgentSpec,
    logged_in: bool,
    state: AgentState,
    /// Start of the current idle spell, kept across offers that were not answered.
    idle_since: Instant,
    penalty_until: Option<Instant>,
}

#[derive(Debug)]
struct Queue {
    spec: QueueSpec,
    /// Agent names in configuration order.
    members: Vec<String>,
    /// Waiting calls in service order.
    waiting: BTreeSet<(Reverse<i32>, u64, CallId)>,
    /// Index into `members` where the next round-robin search starts.
    rr_next: usize,
    /// Recent talk + wrap-up times.
    handle_times: VecDeque<Duration>,
}

#[derive(Debug)]
enum CallState {
    Waiting {
        deadline: Option<Instant>,
        next_announce: Option<Instant>,
        /// Agents ringing with this call and when each offer times out.
        offers: Vec<(String, Instant)>,
        /// Agents who did not take this call; skipped until every candidate has had it.
        tried: BTreeSet<String>,
    },
    Connected {
        agent: String,
        since: Instant,
    },
}

#[derive(Debug)]
struct Call {
    queue: String,
    priority: i32,
    seq: u64,
    /// The wall clock at an instant, to check opening hours when the call overflows later.
    wall: (Instant, DateTime<Utc>),
    /// Queues this call has been in, so overflow chains cannot loop.
    visited: Vec<String>,
    state: CallState,
}

impl Call {
    fn wall_at(&self, now: Instant) -> DateTime<Utc> {
        let (t0, w0) = self.wall;
        chrono::Duration::from_std(now.saturating_duration_since(t0))
            .ok()
            .and_then(|d| w0.checked_add_signed(d))
            .unwrap_or(w0)
    }
}

/// The queues and agents of one appliance.
#[derive(Debug)]
pub struct Acd {
    agents: BTreeMap<String, Agent>,
    queues: BTreeMap<String, Queue>,
    calls: BTreeMap<CallId, Call>,
    actions: VecDeque<Action>,
    next_seq: u64,
    no_answer_penalty: Duration,
}

impl Acd {
    /// Agents with an `Address` start idle at `now`; `Registered` ones start logged out.
    pub fn new(
        agents: Vec<AgentSpec>,
        queues: Vec<QueueSpec>,
        now: Instant,
    ) -> Result<Acd, AcdError> {
        let mut qs: BTreeMap<String, Queue> = BTreeMap::new();
        for spec in queues {
            if qs.contains_key(&spec.name) {
                return Err(AcdError::Duplicate {
                    kind: "queue",
                    name: spec.name,
                });
            }
            qs.insert(
                spec.name.clone(),
                Queue {
                    spec,
                    members: Vec::new(),
                    waiting: BTreeSet::new(),
                    rr_next: 0,
                    handle_times: VecDeque::new(),
                },
            );
        }
        let known = qs.keys().cloned().collect::<Vec<_>>().join(", ");
        for q in qs.values() {
            if let Some(to) = &q.spec.overflow {
                if to == &q.spec.name {
                    return Err(AcdError::OverflowToItself(to.clone()));
                }
                if !qs.contains_key(to) {
                    return Err(AcdError::OverflowToUnknownQueue {
                        queue: q.spec.name.clone(),
                        to: to.clone(),
                        known: known.clone(),
                    });
                }
            }
        }
        let mut ags = BTreeMap::new();
        for spec in agents {
            if ags.contains_key(&spec.name) {
                return Err(AcdError::Duplicate {
                    kind: "agent",
                    name: spec.name,
                });
            }
            for q in &spec.queues {
                if !qs.contains_key(q) {
                    return Err(AcdError::AgentServesUnknownQueue {
                        agent: spec.name.clone(),
                        queue: q.clone(),
                        known: known.clone(),
                    });
                }
            }
            for q in &spec.queues {
                if let Some(queue) = qs.get_mut(q) {
                    if !queue.members.contains(&spec.name) {
                        queue.members.push(spec.name.clone());
                    }
                }
            }
            let logged_in = matches!(spec.contact, AgentContact::Address(_));
            ags.insert(
                spec.name.clone(),
                Agent {
                    logged_in,
                    state: if logged_in {
                        AgentState::Idle { since: now }
                    } else {
                        AgentState::LoggedOut
                    },
                    idle_since: now,
                    penalty_until: None,
                    spec,
                },
            );
        }
        Ok(Acd {
            agents: ags,
            queues: qs,
            calls: BTreeMap::new(),
            actions: VecDeque::new(),
            next_seq: 0,
            no_answer_penalty: DEFAULT_NO_ANSWER_PENALTY,
        })
    }

    /// Sets how long an agent who did not take an offer is left out of offers.
    pub fn set_no_answer_penalty(&mut self, penalty: Duration) {
        self.no_answer_penalty = penalty;
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    pub fn agent_state(&self, agent: &str) -> Option<AgentState> {
        self.agents.get(agent).map(|a| a.state)
    }

    /// The configured agents, by name.
    pub fn agents(&self) -> impl Iterator<Item = &AgentSpec> {
        self.agents.values().map(|a| &a.spec)
    }

    /// The configured queues, by name.
    pub fn queues(&self) -> impl Iterator<Item = &QueueSpec> {
        self.queues.values().map(|q| &q.spec)
    }

    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.get(name).map(|q| &q.spec)
    }

    /// Calls waiting in a queue (ringing ones included).
    pub fn waiting(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.waiting.len())
    }

    /// 1-based place of a waiting call in its queue, and the queue.
    pub fn position(&self, call: CallId) -> Option<(usize, &str)> {
        let c = self.calls.get(&call)?;
        let q = self.queues.get(&c.queue)?;
        let pos = q.waiting.iter().position(|&(_, _, id)| id == call)?;
        Some((pos.saturating_add(1), q.spec.name.as_str()))
    }

    /// The agent a call is connected to.
    pub fn connected_agent(&self, call: CallId) -> Option<&str> {
        match &self.calls.get(&call)?.state {
            CallState::Connected { agent, .. } => Some(agent),
            CallState::Waiting { .. } => None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Driving
    // -----------------------------------------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant something happens by itself (an offer rings out, a wrap-up or penalty
    /// ends, a call reaches its max wait, an announcement is due).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let agents = self.agents.values().flat_map(|a| {
            let wrap = match a.state {
                AgentState::WrapUp { until } => Some(until),
                _ => None,
            };
            wrap.into_iter().chain(a.penalty_until)
        });
        let calls = self.calls.values().flat_map(|c| match &c.state {
            CallState::Waiting {
                deadline,
                next_announce,
                offers,
                ..
            } => offers
                .iter()
                .map(|(_, t)| *t)
                .chain(*deadline)
                .chain(*next_announce)
                .collect::<Vec<_>>(),
            CallState::Connected { .. } => Vec::new(),
        });
        agents.chain(calls).min()
    }

    /// Runs everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Wrap-ups and penalties that ended.
        for a in self.agents.values_mut() {
            if let AgentState::WrapUp { until } = a.state {
                if until <= now {
                    a.idle_since = until;
                    a.state = if a.logged_in {
                        AgentState::Idle { since: until }
                    } else {
                        AgentState::LoggedOut
                    };
                }
            }
            if a.penalty_until.is_some_and(|t| t <= now) {
                a.penalty_until = None;
            }
        }
        // Offers that rang out.
        let mut rang_out = Vec::new();
        for (&id, c) in &self.calls {
            if let CallState::Waiting { offers, .. } = &c.state {
                for (agent, until) in offers {
                    if *until <= now {
                        rang_out.push((id, agent.clone()));
                    }
                }
            }
        }
        for (id, agent) in rang_out {
            self.actions.push_back(Action::CancelOffer {
                call: id,
                agent: agent.clone(),
            });
            self.drop_offer(id, &agent, now, true);
        }
        // Calls that waited long enough.
        let expired: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, CallState::Waiting { deadline: Some(d), .. } if d <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.overflow(id, now);
        }
        // Announcements: skipped while an agent's phone rings for the call.
        let mut due = Vec::new();
        for (&id, c) in &mut self.calls {
            let every = self
                .queues
                .get(&c.queue)
                .and_then(|q| q.spec.announce_every);
            if let CallState::Waiting {
                next_announce,
                offers,
                ..
            } = &mut c.state
            {
                if next_announce.is_some_and(|t| t <= now) {
                    *next_announce = every.and_then(|e| now.checked_add(e));
                    if offers.is_empty() {
                        due.push(id);
                    }
                }
            }
        }
        for id in due {
            self.announce(id);
        }
        self.dispatch(now);
    }

    /// A caller enters `queue`. `wall` is the wall clock at `now` (for opening hours). The
    /// queue may refuse at once (`Unavailable`) or pass the call on (`Overflow`).
    pub fn enqueue(
        &mut self,
        call: CallId,
        queue: &str,
        priority: i32,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<(), AcdError> {
        if self.calls.contains_key(&call) {
            return Err(AcdError::DuplicateCall(call));
        }
        if !self.queues.contains_key(queue) {
            return Err(AcdError::UnknownQueue(queue.to_string()));
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.calls.insert(
            call,
            Call {
                queue: queue.to_string(),
                priority,
                seq,
                wall: (now, wall),
                visited: Vec::new(),
                // Set by `place`.
                state: CallState::Waiting {
                    deadline: None,
                    next_announce: None,
                    offers: Vec::new(),
                    tried: BTreeSet::new(),
                },
            },
        );
        self.place(call, queue.to_string(), now);
        self.dispatch(now);
        // Tell a caller who is not ringing anyone yet where they stand.
        if let Some(c) = self.calls.get(&call) {
            let announces = self
                .queues
                .get(&c.queue)
                .is_some_and(|q| q.spec.announce_every.is_some());
            if announces
                && matches!(&c.state, CallState::Waiting { offers, .. } if offers.is_empty())
            {
                self.announce(call);
            }
        }
        Ok(())
    }

    /// The agent answered the offer: the call is connected and leaves the queue.
    pub fn agent_answered(
        &mut self,
        call: CallId,
        agent: &str,
        now: Instant,
    ) -> Result<(), AcdError> {
        let not_offered = || AcdError::NotOffered {
            call,
            agent: agent.to_string(),
        };
        let c = self
            .calls
            .get_mut(&call)
            .ok_or(AcdError::UnknownCall(call))?;
        let CallState::Waiting { offers, .. } = &mut c.state else {
            return Err(not_offered());
        };
        if !offers.iter().any(|(a, _)| a == agent) {
            return Err(not_offered());
        }
        let others: Vec<String> = offers
            .iter()
            .map(|(a, _)| a.clone())
            .filter(|a| a != agent)
            .collect();
        c.state = CallState::Connected {
            agent: agent.to_string(),
            since: now,
        };
        let key = (Reverse(c.priority), c.seq, call);
        if let Some(q) = self.queues.get_mut(&c.queue) {
            q.waiting.remove(&key);
        }
        for other in others {
            self.actions.push_back(Action::CancelOffer {
                call,
                agent: other.clone(),
            });
            if let Some(a) = self.agents.get_mut(&other) {
                a.state = idle_or_out(a);
            }
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.state = AgentState::Busy { call };
        }
        self.actions.push_back(Action::Connected {
            call,
            agent: agent.to_string(),
        });
        self.dispatch(now);
        Ok(())
    }

    /// The offer failed before anyone answered (busy, rejected, unreachable). The agent is
    /// skipped for this call and penalised like a no-answer.
    pub fn offer_failed(
        &mut self,
        call: CallId,
        agent: &str,
        now: Instant,
    ) -> Result<(), AcdError> {
        let offered = matches!(
            self.calls.get(&call).map(|c| &c.state),
            Some(CallState::Waiting { offers, .. }) if offers.iter().any(|(a, _)| a == agent)
        );
        if !offered {
            return Err(AcdError::NotOffered {
                call,
                agent: agent.to_string(),
            });
        }
        self.drop_offer(call, agent, now, true);
        self.dispatch(now);
        Ok(())
    }

    /// The caller hung up: a waiting call leaves its queue (ringing agents are cancelled); a
    /// connected call ends as in [`Acd::call_ended`].
    pub fn caller_hung_up(&mut self, call: CallId, now: Instant) -> Result<(), AcdError> {
        match self.calls.get(&call).map(|c| &c.state) {
            None => Err(AcdError::UnknownCall(call)),
            Some(CallState::Connected { .. }) => self.call_ended(call, now),
            Some(CallState::Waiting { .. }) => {
                self.leave(call, now);
                self.dispatch(now);
                Ok(())
            }
        }
    }

    /// A connected call ended (either side hung up): the agent wraps up. For a call still
    /// waiting this is the same as [`Acd::caller_hung_up`].
    pub fn call_ended(&mut self, call: CallId, now: Instant) -> Result<(), AcdError> {
        let c = self.calls.get(&call).ok_or(AcdError::UnknownCall(call))?;
        let CallState::Connected { agent, since } = &c.state else {
            return self.caller_hung_up(call, now);
        };
        let (agent, since, queue) = (agent.clone(), *since, c.queue.clone());
        self.calls.remove(&call);
        let wrap_up = self
            .queues
            .get(&queue)
            .map_or(Duration::ZERO, |q| q.spec.wrap_up);
        if let Some(q) = self.queues.get_mut(&queue) {
            if q.handle_times.len() >= HANDLE_TIME_SAMPLES {
                q.handle_times.pop_front();
            }
            q.handle_times
                .push_back(now.saturating_duration_since(since).saturating_add(wrap_up));
        }
        if let Some(a) = self.agents.get_mut(&agent) {
            if a.state == (AgentState::Busy { call }) {
                match now.checked_add(wrap_up) {
                    Some(until) if !wrap_up.is_zero() => a.state = AgentState::WrapUp { until },
                    _ => {
                        a.idle_since = now;
                        a.state = idle_or_out(a);
                    }
                }
            }
        }
        self.dispatch(now);
        Ok(())
    }

    /// The agent's phone registered (or the agent logged in): offers may start.
    pub fn agent_registered(&mut self, agent: &str, now: Instant) -> Result<(), AcdError> {
        let a = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| AcdError::UnknownAgent(agent.to_string()))?;
        a.logged_in = true;
        if a.state == AgentState::LoggedOut {
            a.idle_since = now;
            a.state = AgentState::Idle { since: now };
        }
        self.dispatch(now);
        Ok(())
    }

    /// The agent's registration ended (or the agent logged out). A ringing offer is
    /// cancelled; a call in progress continues and the agent is logged out after wrap-up.
    pub fn agent_unregistered(&mut self, agent: &str, now: Instant) -> Result<(), AcdError> {
        let a = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| AcdError::UnknownAgent(agent.to_string()))?;
        a.logged_in = false;
        match a.state {
            AgentState::Idle { .. } => a.state = AgentState::LoggedOut,
            AgentState::Offered { call } => {
                self.actions.push_back(Action::CancelOffer {
                    call,
                    agent: agent.to_string(),
                });
                self.drop_offer(call, agent, now, false);
            }
            AgentState::LoggedOut | AgentState::Busy { .. } | AgentState::WrapUp { .. } => {}
        }
        self.dispatch(now);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Inside
    // -----------------------------------------------------------------------------------------

    /// Puts a call (already in `calls`) into `queue`, or passes it on when the queue is
    /// closed or has no one logged in.
    fn place(&mut self, call: CallId, queue: String, now: Instant) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        c.visited.push(queue.clone());
        c.queue = queue;
        if !q.spec.hours.is_open(c.wall_at(now)) {
            self.calls.remove(&call);
            self.actions.push_back(Action::Unavailable {
                call,
                reason: Unavailable::AfterHours,
            });
            return;
        }
        let staffed = q
            .members
            .iter()
            .any(|m| self.agents.get(m).is_some_and(|a| a.logged_in));
        if !staffed {
            self.pass_on(call, Unavailable::NoAgents, now);
            return;
        }
        c.state = CallState::Waiting {
            deadline: q.spec.max_wait.and_then(|w| now.checked_add(w)),
            next_announce: q.spec.announce_every.and_then(|e| now.checked_add(e)),
            offers: Vec::new(),
            tried: BTreeSet::new(),
        };
        q.waiting.insert((Reverse(c.priority), c.seq, call));
    }

    /// Max wait reached: the call leaves its queue for the overflow queue or the fallback.
    fn overflow(&mut self, call: CallId, now: Instant) {
        self.cancel_offers(call);
        if let Some(c) = self.calls.get(&call) {
            let key = (Reverse(c.priority), c.seq, call);
            if let Some(q) = self.queues.get_mut(&c.queue) {
                q.waiting.remove(&key);
            }
        }
        self.pass_on(call, Unavailable::Overflow, now);
    }

    /// Sends a call that is in no queue's waiting set to its queue's overflow queue (if it was
    /// not there before), else its fallback, else gives up with `reason`.
    fn pass_on(&mut self, call: CallId, reason: Unavailable, now: Instant) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(q) = self.queues.get(&c.queue) else {
            return;
        };
        let next = q.spec.overflow.clone().filter(|o| !c.visited.contains(o));
        if let Some(to) = next {
            self.actions.push_back(Action::Overflow {
                call,
                to: OverflowTo::Queue(to.clone()),
            });
            self.place(call, to, now);
            return;
        }
        let fallback = q.spec.fallback.clone();
        self.calls.remove(&call);
        self.actions.push_back(match fallback {
            Some(target) => Action::Overflow {
                call,
                to: OverflowTo::Fallback(target),
            },
            None => Action::Unavailable { call, reason },
        });
    }

    /// A waiting call leaves the ACD: cancels its offers and forgets it.
    fn leave(&mut self, call: CallId, _now: Instant) {
        self.cancel_offers(call);
        if let Some(c) = self.calls.remove(&call) {
            if let Some(q) = self.queues.get_mut(&c.queue) {
                q.waiting.remove(&(Reverse(c.priority), c.seq, call));
            }
        }
    }

    /// Cancels every offer of a waiting call; the agents go back to idle without penalty.
    fn cancel_offers(&mut self, call: CallId) {
        let Some(CallState::Waiting { offers, .. }) =
            self.calls.get_mut(&call).map(|c| &mut c.state)
        else {
            return;
        };
        for (agent, _) in std::mem::take(offers) {
            self.actions.push_back(Action::CancelOffer {
                call,
                agent: agent.clone(),
            });
            if let Some(a) = self.agents.get_mut(&agent) {
                a.state = idle_or_out(a);
            }
        }
    }

    /// Ends one offer: the agent is skipped for this call and, with `penalise`, for any call
    /// until the penalty ends.
    fn drop_offer(&mut self, call: CallId, agent: &str, now: Instant, penalise: bool) {
        if let Some(CallState::Waiting { offers, tried, .. }) =
            self.calls.get_mut(&call).map(|c| &mut c.state)
        {
            offers.retain(|(a, _)| a != agent);
            tried.insert(agent.to_string());
        }
        if let Some(a) = self.agents.get_mut(agent) {
            if a.state == (AgentState::Offered { call }) {
                a.state = idle_or_out(a);
                if penalise && !self.no_answer_penalty.is_zero() {
                    a.penalty_until = now.checked_add(self.no_answer_penalty);
                }
            }
        }
    }

    fn announce(&mut self, call: CallId) {
        let Some((position, queue)) = self.position(call) else {
            return;
        };
        let est_wait = self.queues.get(queue).and_then(|q| {
            let staffed = q
                .members
                .iter()
                .filter(|m| self.agents.get(*m).is_some_and(|a| a.logged_in))
                .count();
            let samples = u32::try_from(q.handle_times.len())
                .ok()
                .filter(|n| *n > 0)?;
            let staffed = u32::try_from(staffed).ok().filter(|n| *n > 0)?;
            let avg = q.handle_times.iter().sum::<Duration>() / samples;
            // Callers ahead are served `staffed` at a time; this caller is in round `rounds`.
            let rounds = u32::try_from(position.div_ceil(staffed as usize)).unwrap_or(u32::MAX);
            Some(avg.saturating_mul(rounds))
        });
        self.actions.push_back(Action::AnnouncePosition {
            call,
            position,
            est_wait,
        });
    }

    /// Offers waiting calls to free agents: calls in service order across all queues (an
    /// agent in several queues takes the most urgent call first).
    fn dispatch(&mut self, now: Instant) {
        let mut order: Vec<(Reverse<i32>, u64, CallId)> = self
            .queues
            .values()
            .flat_map(|q| q.waiting.iter().copied())
            .collect();
        order.sort_unstable();
        for (_, _, call) in order {
            if !self.agents.values().any(|a| self.available(a, now)) {
                return;
            }
            self.offer(call, now);
        }
    }

    fn available(&self, a: &Agent, now: Instant) -> bool {
        a.logged_in
            && matches!(a.state, AgentState::Idle { .. })
            && a.penalty_until.is_none_or(|t| t <= now)
    }

    /// Makes the offers a waiting call should have now.
    fn offer(&mut self, call: CallId, now: Instant) {
        let Some((queue, names, reset_tried, ring_timeout)) = self.choose(call, now) else {
            return;
        };
        let until = now.checked_add(ring_timeout).unwrap_or(now);
        for name in names {
            let Some(a) = self.agents.get_mut(&name) else {
                continue;
            };
            a.state = AgentState::Offered { call };
            let contact = a.spec.contact.clone();
            if let Some(CallState::Waiting { offers, tried, .. }) =
                self.calls.get_mut(&call).map(|c| &mut c.state)
            {
                if reset_tried {
                    tried.clear();
                }
                offers.push((name.clone(), until));
            }
            if let Some(q) = self.queues.get_mut(&queue) {
                if q.spec.strategy == Strategy::RoundRobin {
                    if let Some(i) = q.members.iter().position(|m| *m == name) {
                        q.rr_next = i.saturating_add(1);
                    }
                }
            }
            self.actions.push_back(Action::OfferToAgent {
                call,
                agent: name,
                contact,
                ring_timeout,
            });
        }
    }

    /// Which agents to offer a waiting call to now: (queue, agents, whether everyone free had
    /// already been tried, ring timeout); `None` when no offer is due.
    fn choose(&self, call: CallId, now: Instant) -> Option<(String, Vec<String>, bool, Duration)> {
        let c = self.calls.get(&call)?;
        let q = self.queues.get(&c.queue)?;
        let CallState::Waiting { offers, tried, .. } = &c.state else {
            return None;
        };
        if q.spec.strategy != Strategy::RingAll && !offers.is_empty() {
            return None;
        }
        // Members free now, by index in configuration order.
        let free: Vec<(usize, &Agent)> = q
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| self.agents.get(m).map(|a| (i, a)))
            .filter(|(_, a)| self.available(a, now))
            .collect();
        if free.is_empty() {
            return None;
        }
        // Everyone free has had this call: start over with them.
        let reset = free.iter().all(|(_, a)| tried.contains(&a.spec.name));
        let fresh = free
            .into_iter()
            .filter(|(_, a)| reset || !tried.contains(&a.spec.name));
        let n = q.members.len().max(1);
        let start = q.rr_next % n;
        let chosen: Vec<String> = match q.spec.strategy {
            Strategy::RingAll => fresh.map(|(_, a)| a.spec.name.clone()).collect(),
            Strategy::LongestIdle => fresh
                .min_by_key(|(i, a)| (a.idle_since, *i))
                .map(|(_, a)| a.spec.name.clone())
                .into_iter()
                .collect(),
            Strategy::RoundRobin => fresh
                .min_by_key(|(i, _)| (i + n - start) % n)
                .map(|(_, a)| a.spec.name.clone())
                .into_iter()
                .collect(),
        };
        Some((q.spec.name.clone(), chosen, reset, q.spec.ring_timeout))
    }
}

/// The state an agent falls back to when an offer ends without a call.
fn idle_or_out(a: &Agent) -> AgentState {
    if a.logged_in {
        AgentState::Idle {
            since: a.idle_since,
        }
    } else {
        AgentState::LoggedOut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: &str = "2026-11-23T10:00:00Z"; // a Monday

    fn wall() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(WALL)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn agent(name: &str, queues: &[&str]) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            contact: AgentContact::Address(format!("sip:{name}@10.0.0.1")),
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }
    }

    fn queue(name: &str, strategy: Strategy) -> QueueSpec {
        let mut q = QueueSpec::new(name);
        q.strategy = strategy;
        q.wrap_up = Duration::ZERO;
        q.ring_timeout = Duration::from_secs(15);
        q
    }

    struct Sim {
        acd: Acd,
        t0: Instant,
    }

    impl Sim {
        fn new(agents: Vec<AgentSpec>, queues: Vec<QueueSpec>) -> Sim {
            let t0 = Instant::now();
            Sim {
                acd: Acd::new(agents, queues, t0).expect("valid setup"),
                t0,
            }
        }
        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }
        fn enqueue(&mut self, call: CallId, q: &str, prio: i32, secs: u64) {
            let now = self.at(secs);
            let w = wall() + chrono::Duration::seconds(i64::try_from(secs).expect("small"));
            self.acd.enqueue(call, q, prio, now, w).expect("enqueue");
        }
        fn tick(&mut self, secs: u64) {
            let now = self.at(secs);
            self.acd.handle_timeout(now);
        }
        fn actions(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.acd.poll_action()).collect()
        }
        /// The (call, agent) pairs offered among the pending actions.
        fn offers(&mut self) -> Vec<(CallId, String)> {
            self.actions()
                .into_iter()
                .filter_map(|a| match a {
                    Action::OfferToAgent { call, agent, .. } => Some((call, agent)),
                    _ => None,
                })
                .collect()
        }
        /// Answers and ends a call at `secs`.
        fn handle(&mut self, call: CallId, agent: &str, secs: u64) {
            let now = self.at(secs);
            self.acd.agent_answered(call, agent, now).expect("answer");
            self.acd.call_ended(call, now).expect("end");
        }
    }

    fn offer(call: CallId, agent: &str) -> (CallId, String) {
        (call, agent.to_string())
    }

    #[test]
    fn fast_lane_and_vip_jump_the_queue() {
        let mut s = Sim::new(
            vec![agent("a", &["q"])],
            vec![queue("q", Strategy::LongestIdle)],
        );
        s.enqueue(1, "q", PRIORITY_NORMAL, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        s.acd.agent_answered(1, "a", s.at(1)).expect("answer");
        s.enqueue(2, "q", PRIORITY_NORMAL, 2);
        s.enqueue(3, "q", PRIORITY_NORMAL, 3);
        s.enqueue(4, "q", PRIORITY_VIP, 4);
        s.enqueue(5, "q", PRIORITY_FAST_LANE, 5);
        s.enqueue(6, "q", PRIORITY_VIP, 6);
        assert_eq!(s.acd.position(5), Some((1, "q")));
        assert_eq!(s.acd.position(4), Some((2, "q")));
        assert_eq!(s.acd.position(2), Some((4, "q")));
        s.actions();
        s.acd.call_ended(1, s.at(10)).expect("end");
        let mut served = Vec::new();
        for t in 10..15 {
            let o = s.offers();
            assert_eq!(o.len(), 1, "one offer at a time: {o:?}");
            served.push(o[0].0);
            s.handle(o[0].0, "a", t);
        }
        assert_eq!(
            served,
            [5, 4, 6, 2, 3],
            "fast lane, VIPs in order, then the rest FIFO"
        );
    }

    #[test]
    fn longest_idle_picks_the_agent_idle_longest() {
        let agents = vec![agent("a", &["q"]), agent("b", &["q"]), agent("c", &["q"])];
        let mut s = Sim::new(agents, vec![queue("q", Strategy::LongestIdle)]);
        // All idle since t0: configuration order breaks the tie.
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        s.handle(1, "a", 5); // a idle since 5
        s.enqueue(2, "q", 0, 6);
        assert_eq!(s.offers(), [offer(2, "b")]);
        s.enqueue(3, "q", 0, 7);
        assert_eq!(s.offers(), [offer(3, "c")]);
        s.acd.agent_answered(2, "b", s.at(8)).expect("answer");
        s.acd.agent_answered(3, "c", s.at(8)).expect("answer");
        s.acd.call_ended(3, s.at(9)).expect("c idle since 9");
        s.acd.call_ended(2, s.at(20)).expect("b idle since 20");
        s.actions();
        s.enqueue(4, "q", 0, 30);
        assert_eq!(s.offers(), [offer(4, "a")], "a has been idle since 5");
        s.enqueue(5, "q", 0, 31);
        assert_eq!(s.offers(), [offer(5, "c")], "c since 9 before b since 20");
    }

    #[test]
    fn round_robin_rotates() {
        let agents = vec![agent("a", &["q"]), agent("b", &["q"]), agent("c", &["q"])];
        let mut s = Sim::new(agents, vec![queue("q", Strategy::RoundRobin)]);
        let mut got = Vec::new();
        for call in 1..=7u64 {
            s.enqueue(call, "q", 0, call);
            let o = s.offers();
            assert_eq!(o.len(), 1);
            got.push(o[0].1.clone());
            s.handle(call, &o[0].1, call);
        }
        assert_eq!(got, ["a", "b", "c", "a", "b", "c", "a"]);
        // A busy member is skipped and the turn continues after the one chosen.
        s.enqueue(8, "q", 0, 10);
        assert_eq!(s.offers(), [offer(8, "b")]);
        s.acd.agent_answered(8, "b", s.at(10)).expect("answer");
        s.enqueue(9, "q", 0, 11);
        assert_eq!(s.offers(), [offer(9, "c")]);
        s.handle(9, "c", 12);
        s.enqueue(10, "q", 0, 13);
        assert_eq!(s.offers(), [offer(10, "a")], "b is busy");
    }

    #[test]
    fn unanswered_offer_moves_to_the_next_agent_and_penalises() {
        let agents = vec![agent("a", &["q"]), agent("b", &["q"]), agent("c", &["q"])];
        let mut s = Sim::new(agents, vec![queue("q", Strategy::LongestIdle)]);
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        assert_eq!(s.acd.poll_timeout(), Some(s.at(15)), "the ring timeout");
        s.tick(14);
        assert!(s.actions().is_empty(), "nothing before the ring timeout");
        s.tick(15);
        assert_eq!(
            s.actions(),
            [
                Action::CancelOffer {
                    call: 1,
                    agent: "a".into()
                },
                Action::OfferToAgent {
                    call: 1,
                    agent: "b".into(),
                    contact: AgentContact::Address("sip:b@10.0.0.1".into()),
                    ring_timeout: Duration::from_secs(15),
                },
            ]
        );
        // b rejects at once: c next.
        s.acd.offer_failed(1, "b", s.at(16)).expect("failed");
        assert_eq!(s.offers(), [offer(1, "c")]);
        // a new call cannot go to a or b during their penalty (a until 25, b until 26).
        s.enqueue(2, "q", 0, 20);
        assert!(s.offers().is_empty());
        s.tick(25);
        assert_eq!(s.offers(), [offer(2, "a")], "a's penalty is over");
        // Call 1 rings out at c; b is free again, and a/b/c have all had call 1: starts over.
        s.tick(26);
        assert!(
            s.offers().is_empty(),
            "b is free only now, call 1 still rings at c"
        );
        s.tick(31);
        assert_eq!(
            s.actions(),
            [
                Action::CancelOffer {
                    call: 1,
                    agent: "c".into()
                },
                Action::OfferToAgent {
                    call: 1,
                    agent: "b".into(),
                    contact: AgentContact::Address("sip:b@10.0.0.1".into()),
                    ring_timeout: Duration::from_secs(15),
                },
            ]
        );
        assert_eq!(
            s.acd.agent_answered(1, "c", s.at(32)),
            Err(AcdError::NotOffered {
                call: 1,
                agent: "c".into()
            }),
            "a late answer from c is refused (the shell hangs up c's leg)"
        );
    }

    #[test]
    fn wrap_up_is_respected() {
        let mut q = queue("q", Strategy::LongestIdle);
        q.wrap_up = Duration::from_secs(30);
        let mut s = Sim::new(vec![agent("a", &["q"])], vec![q]);
        s.enqueue(1, "q", 0, 0);
        s.actions();
        s.acd.agent_answered(1, "a", s.at(1)).expect("answer");
        s.enqueue(2, "q", 0, 5);
        s.acd.call_ended(1, s.at(10)).expect("end");
        assert_eq!(
            s.acd.agent_state("a"),
            Some(AgentState::WrapUp { until: s.at(40) })
        );
        assert!(s.offers().is_empty());
        assert_eq!(s.acd.poll_timeout(), Some(s.at(40)));
        s.tick(39);
        assert!(s.offers().is_empty());
        s.tick(40);
        assert_eq!(s.offers(), [offer(2, "a")]);
    }

    #[test]
    fn caller_hangs_up_while_queued_or_ringing() {
        let mut s = Sim::new(
            vec![agent("a", &["q"]), agent("b", &["q"])],
            vec![queue("q", Strategy::LongestIdle)],
        );
        s.enqueue(1, "q", 0, 0);
        s.enqueue(2, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a"), offer(2, "b")]);
        s.acd.agent_answered(2, "b", s.at(1)).expect("answer");
        s.enqueue(3, "q", 0, 2);
        s.enqueue(4, "q", 0, 3);
        s.actions();
        // Waiting call 3 hangs up: gone, call 4 moves up.
        s.acd.caller_hung_up(3, s.at(4)).expect("hang up");
        assert_eq!(
            s.acd.position(4),
            Some((2, "q")),
            "behind call 1, which rings at a"
        );
        assert!(s.actions().is_empty());
        // Ringing call 1 hangs up: a's offer is cancelled and a takes call 4.
        s.acd.caller_hung_up(1, s.at(5)).expect("hang up");
        assert_eq!(
            s.actions()[..2],
            [
                Action::CancelOffer {
                    call: 1,
                    agent: "a".into()
                },
                Action::OfferToAgent {
                    call: 4,
                    agent: "a".into(),
                    contact: AgentContact::Address("sip:a@10.0.0.1".into()),
                    ring_timeout: Duration::from_secs(15),
                },
            ]
        );
        assert_eq!(
            s.acd.caller_hung_up(1, s.at(6)),
            Err(AcdError::UnknownCall(1))
        );
        assert_eq!(
            s.acd.agent_answered(1, "a", s.at(6)),
            Err(AcdError::UnknownCall(1))
        );
        // A connected caller hanging up ends the call: b is free again.
        s.acd.caller_hung_up(2, s.at(7)).expect("hang up");
        assert!(matches!(
            s.acd.agent_state("b"),
            Some(AgentState::Idle { .. })
        ));
    }

    #[test]
    fn max_wait_overflows_along_the_chain() {
        let mut sales = queue("sales", Strategy::LongestIdle);
        sales.max_wait = Some(Duration::from_secs(60));
        sales.overflow = Some("general".into());
        let mut general = queue("general", Strategy::LongestIdle);
        general.max_wait = Some(Duration::from_secs(30));
        general.overflow = Some("sales".into()); // loops back: the chain ends at the fallback
        general.fallback = Some("voicemail".into());
        let mut s = Sim::new(
            vec![agent("a", &["sales"]), agent("d", &["general"])],
            vec![sales, general],
        );
        s.enqueue(1, "sales", 0, 0);
        s.enqueue(9, "general", 0, 0);
        s.acd.agent_answered(1, "a", s.at(1)).expect("a busy");
        s.acd.agent_answered(9, "d", s.at(1)).expect("d busy");
        s.actions();
        s.enqueue(2, "sales", 0, 10);
        assert_eq!(s.acd.poll_timeout(), Some(s.at(70)));
        s.tick(69);
        assert!(s.actions().is_empty());
        s.tick(70);
        assert_eq!(
            s.actions(),
            [Action::Overflow {
                call: 2,
                to: OverflowTo::Queue("general".into())
            }]
        );
        assert_eq!(s.acd.position(2), Some((1, "general")));
        s.tick(100);
        assert_eq!(
            s.actions(),
            [Action::Overflow {
                call: 2,
                to: OverflowTo::Fallback("voicemail".into())
            }],
            "sales was visited already"
        );
        assert_eq!(
            s.acd.caller_hung_up(2, s.at(101)),
            Err(AcdError::UnknownCall(2))
        );
    }

    #[test]
    fn max_wait_without_overflow_is_unavailable_and_cancels_ringing() {
        let mut q = queue("q", Strategy::LongestIdle);
        q.max_wait = Some(Duration::from_secs(10));
        q.ring_timeout = Duration::from_secs(30);
        let mut s = Sim::new(vec![agent("a", &["q"])], vec![q]);
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        s.tick(10);
        assert_eq!(
            s.actions(),
            [
                Action::CancelOffer {
                    call: 1,
                    agent: "a".into()
                },
                Action::Unavailable {
                    call: 1,
                    reason: Unavailable::Overflow
                },
            ]
        );
        assert!(matches!(
            s.acd.agent_state("a"),
            Some(AgentState::Idle { .. })
        ));
        assert_eq!(s.acd.poll_timeout(), None, "nothing left to do");
    }

    #[test]
    fn after_hours_and_no_agents() {
        let mut q = queue("q", Strategy::LongestIdle);
        q.hours = Hours::parse(&["mon-fri 08:00-20:00"], &[], "Europe/London").expect("hours");
        let mut s = Sim::new(vec![agent("a", &["q"])], vec![q]);
        // Monday 10:00 London: open.
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        // Monday 20:00: closed.
        s.acd
            .enqueue(2, "q", 0, s.at(1), wall() + chrono::Duration::hours(10))
            .expect("enqueue");
        assert_eq!(
            s.actions(),
            [Action::Unavailable {
                call: 2,
                reason: Unavailable::AfterHours
            }]
        );
        assert_eq!(s.acd.waiting("q"), 1, "only call 1");

        // Agents who must register start logged out: no agents → overflow, else unavailable.
        let reg = |name: &str, queues: &[&str]| AgentSpec {
            contact: AgentContact::Registered {
                username: name.into(),
            },
            ..agent(name, queues)
        };
        let mut first = queue("first", Strategy::LongestIdle);
        first.overflow = Some("second".into());
        let mut s = Sim::new(
            vec![reg("r", &["first"]), reg("t", &["second"])],
            vec![first, queue("second", Strategy::LongestIdle)],
        );
        s.enqueue(1, "first", 0, 0);
        assert_eq!(
            s.actions(),
            [
                Action::Overflow {
                    call: 1,
                    to: OverflowTo::Queue("second".into())
                },
                Action::Unavailable {
                    call: 1,
                    reason: Unavailable::NoAgents
                },
            ]
        );
        s.acd.agent_registered("t", s.at(1)).expect("registers");
        s.enqueue(2, "first", 0, 2);
        assert_eq!(
            s.actions(),
            [
                Action::Overflow {
                    call: 2,
                    to: OverflowTo::Queue("second".into())
                },
                Action::OfferToAgent {
                    call: 2,
                    agent: "t".into(),
                    contact: AgentContact::Registered {
                        username: "t".into()
                    },
                    ring_timeout: Duration::from_secs(15),
                },
            ]
        );
    }

    #[test]
    fn position_announcements_are_scheduled() {
        let mut q = queue("q", Strategy::LongestIdle);
        q.announce_every = Some(Duration::from_secs(30));
        q.wrap_up = Duration::from_secs(20);
        let mut s = Sim::new(vec![agent("a", &["q"])], vec![q]);
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")], "ringing: no announcement");
        s.acd.agent_answered(1, "a", s.at(0)).expect("answer");
        s.actions();
        s.enqueue(2, "q", 0, 1);
        s.enqueue(3, "q", 0, 2);
        let announce = |call, position, est_wait| Action::AnnouncePosition {
            call,
            position,
            est_wait,
        };
        assert_eq!(
            s.actions(),
            [announce(2, 1, None), announce(3, 2, None)],
            "on entry, no estimate before a call was handled"
        );
        s.tick(30);
        assert!(s.actions().is_empty());
        s.tick(31);
        assert_eq!(s.actions(), [announce(2, 1, None)]);
        // 100 s talk + 20 s wrap-up: 120 s per call with one agent.
        s.acd.call_ended(1, s.at(100)).expect("end");
        s.tick(32);
        assert_eq!(
            s.actions(),
            [announce(3, 2, Some(Duration::from_secs(240)))]
        );
        assert_eq!(
            s.acd.poll_timeout(),
            Some(s.at(61)),
            "call 2's next announcement"
        );
        s.acd.caller_hung_up(2, s.at(40)).expect("hang up");
        s.tick(62);
        assert_eq!(
            s.actions(),
            [announce(3, 1, Some(Duration::from_secs(120)))]
        );
    }

    #[test]
    fn ring_all_rings_everyone_and_the_first_answer_wins() {
        let agents = vec![agent("a", &["q"]), agent("b", &["q"]), agent("c", &["q"])];
        let mut s = Sim::new(agents, vec![queue("q", Strategy::RingAll)]);
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a"), offer(1, "b"), offer(1, "c")]);
        s.enqueue(2, "q", 0, 1);
        assert!(s.offers().is_empty(), "everyone rings for call 1");
        s.acd.agent_answered(1, "b", s.at(2)).expect("answer");
        assert_eq!(
            s.actions(),
            [
                Action::CancelOffer {
                    call: 1,
                    agent: "a".into()
                },
                Action::CancelOffer {
                    call: 1,
                    agent: "c".into()
                },
                Action::Connected {
                    call: 1,
                    agent: "b".into()
                },
                Action::OfferToAgent {
                    call: 2,
                    agent: "a".into(),
                    contact: AgentContact::Address("sip:a@10.0.0.1".into()),
                    ring_timeout: Duration::from_secs(15),
                },
                Action::OfferToAgent {
                    call: 2,
                    agent: "c".into(),
                    contact: AgentContact::Address("sip:c@10.0.0.1".into()),
                    ring_timeout: Duration::from_secs(15),
                },
            ]
        );
        assert_eq!(s.acd.connected_agent(1), Some("b"));
    }

    #[test]
    fn registration_changes_who_gets_offers() {
        let reg = AgentSpec {
            contact: AgentContact::Registered {
                username: "1001".into(),
            },
            ..agent("r", &["q"])
        };
        let mut s = Sim::new(
            vec![agent("a", &["q"]), reg],
            vec![queue("q", Strategy::RoundRobin)],
        );
        assert_eq!(s.acd.agent_state("r"), Some(AgentState::LoggedOut));
        s.enqueue(1, "q", 0, 0);
        assert_eq!(s.offers(), [offer(1, "a")]);
        // a logs out while ringing: the offer is cancelled; r registers and gets it.
        s.acd.agent_unregistered("a", s.at(1)).expect("a leaves");
        assert_eq!(
            s.actions(),
            [Action::CancelOffer {
                call: 1,
                agent: "a".into()
            }]
        );
        s.acd.agent_registered("r", s.at(2)).expect("r registers");
        assert_eq!(s.offers(), [offer(1, "r")]);
        s.acd.agent_answered(1, "r", s.at(3)).expect("answer");
        // r unregisters mid-call: the call goes on, r is logged out after it.
        s.acd.agent_unregistered("r", s.at(4)).expect("r leaves");
        assert_eq!(s.acd.agent_state("r"), Some(AgentState::Busy { call: 1 }));
        s.acd.call_ended(1, s.at(5)).expect("end");
        assert_eq!(s.acd.agent_state("r"), Some(AgentState::LoggedOut));
        assert_eq!(
            s.acd.agent_registered("nobody", s.at(6)),
            Err(AcdError::UnknownAgent("nobody".into()))
        );
    }

    #[test]
    fn an_agent_in_two_queues_takes_the_most_urgent_call() {
        let mut s = Sim::new(
            vec![agent("a", &["sales", "vip"])],
            vec![
                queue("sales", Strategy::LongestIdle),
                queue("vip", Strategy::LongestIdle),
            ],
        );
        s.enqueue(1, "sales", 0, 0);
        s.acd.agent_answered(1, "a", s.at(0)).expect("answer");
        s.enqueue(2, "sales", 0, 1);
        s.enqueue(3, "vip", PRIORITY_VIP, 2);
        s.enqueue(4, "vip", 0, 3);
        s.actions();
        s.acd.call_ended(1, s.at(4)).expect("end");
        assert_eq!(s.offers(), [offer(3, "a")]);
        s.handle(3, "a", 5);
        assert_eq!(s.offers(), [offer(2, "a")], "earlier arrival across queues");
    }

    #[test]
    fn setup_errors_name_what_is_wrong() {
        let t0 = Instant::now();
        let e = Acd::new(
            vec![agent("alice", &["sales", "billing"])],
            vec![queue("sales", Strategy::RingAll)],
            t0,
        )
        .expect_err("unknown queue");
        assert_eq!(
            e.to_string(),
            "agent 'alice' serves queue 'billing', which is not configured (queues: sales)"
        );
        let mut q = queue("sales", Strategy::RingAll);
        q.overflow = Some("nowhere".into());
        let e = Acd::new(vec![], vec![q.clone()], t0).expect_err("unknown overflow");
        assert!(e.to_string().contains("'nowhere'"), "{e}");
        q.overflow = Some("sales".into());
        assert_eq!(
            Acd::new(vec![], vec![q], t0).expect_err("self"),
            AcdError::OverflowToItself("sales".into())
        );
        let mut s = Sim::new(vec![], vec![queue("q", Strategy::RingAll)]);
        let now = s.at(0);
        assert_eq!(
            s.acd.enqueue(1, "nope", 0, now, wall()),
            Err(AcdError::UnknownQueue("nope".into()))
        );
        s.acd
            .enqueue(1, "q", 0, now, wall())
            .expect("no agents: unavailable");
        assert_eq!(
            s.actions(),
            [Action::Unavailable {
                call: 1,
                reason: Unavailable::NoAgents
            }]
        );
    }

    mod props {
        use super::super::Strategy as Pick;
        use super::*;
        use proptest::prelude::*;
        use proptest::strategy::Strategy;
        use std::collections::{BTreeMap, BTreeSet};

        #[derive(Debug, Clone)]
        enum Ev {
            Enqueue { queue: usize, priority: i32 },
            Answer { call: u64, agent: usize },
            Fail { call: u64, agent: usize },
            HangUp { call: u64 },
            End { call: u64 },
            Register { agent: usize },
            Unregister { agent: usize },
            Advance { secs: u64 },
        }

        const AGENTS: [&str; 4] = ["a", "b", "c", "d"];

        fn ev() -> impl Strategy<Value = Ev> {
            prop_oneof![
                3 => (0usize..3, -1i32..3).prop_map(|(queue, priority)| Ev::Enqueue { queue, priority }),
                3 => (0u64..12, 0usize..4).prop_map(|(call, agent)| Ev::Answer { call, agent }),
                1 => (0u64..12, 0usize..4).prop_map(|(call, agent)| Ev::Fail { call, agent }),
                1 => (0u64..12).prop_map(|call| Ev::HangUp { call }),
                2 => (0u64..12).prop_map(|call| Ev::End { call }),
                1 => (0usize..4).prop_map(|agent| Ev::Register { agent }),
                1 => (0usize..4).prop_map(|agent| Ev::Unregister { agent }),
                3 => (0u64..40).prop_map(|secs| Ev::Advance { secs }),
            ]
        }

        fn setup(strategies: [Pick; 3]) -> Acd {
            let names = ["x", "y", "z"];
            let queues = names
                .iter()
                .zip(strategies)
                .enumerate()
                .map(|(i, (n, st))| {
                    let mut q = QueueSpec::new(*n);
                    q.strategy = st;
                    q.wrap_up = Duration::from_secs(5 * i as u64);
                    q.ring_timeout = Duration::from_secs(10 + 5 * i as u64);
                    q.max_wait = (i != 1).then(|| Duration::from_secs(60 + 30 * i as u64));
                    q.overflow = (i == 0).then(|| "y".to_string());
                    q.fallback = (i == 2).then(|| "vm".to_string());
                    q.announce_every = (i != 2).then_some(Duration::from_secs(20));
                    q
                })
                .collect();
            let agents = vec![
                agent("a", &["x", "y"]),
                agent("b", &["x"]),
                AgentSpec {
                    contact: AgentContact::Registered {
                        username: "c".into(),
                    },
                    ..agent("c", &["y", "z"])
                },
                agent("d", &["z", "x"]),
            ];
            Acd::new(agents, queues, Instant::now()).expect("valid")
        }

        fn strategy() -> impl Strategy<Value = Pick> {
            prop_oneof![
                Just(Pick::LongestIdle),
                Just(Pick::RoundRobin),
                Just(Pick::RingAll)
            ]
        }

        /// The ACD's own books agree with each other.
        fn check_state(acd: &Acd) -> Result<(), TestCaseError> {
            for (name, a) in &acd.agents {
                match a.state {
                    AgentState::Offered { call } => {
                        let c = acd.calls.get(&call);
                        let ok = matches!(c.map(|c| &c.state),
                            Some(CallState::Waiting { offers, .. }) if offers.iter().any(|(n, _)| n == name));
                        prop_assert!(ok, "{} offered {} but the call does not know", name, call);
                    }
                    AgentState::Busy { call } => {
                        let ok = matches!(acd.calls.get(&call).map(|c| &c.state),
                            Some(CallState::Connected { agent, .. }) if agent == name);
                        prop_assert!(ok, "{} busy with {} but the call does not know", name, call);
                    }
                    _ => {}
                }
            }
            for (id, c) in &acd.calls {
                let q = acd.queues.get(&c.queue).expect("queue");
                let in_queue = q.waiting.contains(&(Reverse(c.priority), c.seq, *id));
                match &c.state {
                    CallState::Waiting { offers, .. } => {
                        prop_assert!(in_queue, "waiting call {} not in its queue", id);
                        if q.spec.strategy != Pick::RingAll {
                            prop_assert!(offers.len() <= 1, "call {} offered to {:?}", id, offers);
                        }
                        for (n, _) in offers {
                            prop_assert_eq!(acd.agents[n].state, AgentState::Offered { call: *id });
                        }
                    }
                    CallState::Connected { agent, .. } => {
                        prop_assert!(!in_queue);
                        prop_assert_eq!(acd.agents[agent].state, AgentState::Busy { call: *id });
                    }
                }
            }
            let queued: usize = acd.queues.values().map(|q| q.waiting.len()).sum();
            let waiting = acd
                .calls
                .values()
                .filter(|c| matches!(c.state, CallState::Waiting { .. }))
                .count();
            prop_assert_eq!(queued, waiting);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn invariants_hold_for_any_event_sequence(
                strategies in [strategy(), strategy(), strategy()],
                events in proptest::collection::vec(ev(), 1..120),
            ) {
                let mut acd = setup(strategies);
                let t0 = Instant::now();
                let mut now = t0;
                let mut next_call = 0u64;
                // What the shell would believe from the actions alone.
                let mut engaged: BTreeMap<String, u64> = BTreeMap::new(); // agent → call offered/connected
                let mut connected: BTreeMap<u64, String> = BTreeMap::new();
                let mut ringing: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
                let mut gone: BTreeSet<u64> = BTreeSet::new();
                for e in events {
                    match e {
                        Ev::Enqueue { queue, priority } => {
                            let q = ["x", "y", "z"][queue];
                            let w = wall() + chrono::Duration::from_std(now - t0).expect("small");
                            prop_assert!(acd.enqueue(next_call, q, priority, now, w).is_ok());
                            next_call += 1;
                        }
                        Ev::Answer { call, agent } => {
                            let ok = acd.agent_answered(call, AGENTS[agent], now).is_ok();
                            let expected = ringing.get(&call).is_some_and(|s| s.contains(AGENTS[agent]));
                            prop_assert_eq!(ok, expected, "answer {} by {}", call, AGENTS[agent]);
                        }
                        Ev::Fail { call, agent } => {
                            let ok = acd.offer_failed(call, AGENTS[agent], now).is_ok();
                            let expected = ringing.get(&call).is_some_and(|s| s.contains(AGENTS[agent]));
                            prop_assert_eq!(ok, expected);
                            if ok {
                                engaged.remove(AGENTS[agent]);
                                if let Some(s) = ringing.get_mut(&call) { s.remove(AGENTS[agent]); }
                            }
                        }
                        Ev::HangUp { call } => {
                            if acd.caller_hung_up(call, now).is_ok() {
                                gone.insert(call);
                                if let Some(agent) = connected.remove(&call) {
                                    engaged.remove(&agent);
                                }
                            }
                        }
                        Ev::End { call } => {
                            if acd.call_ended(call, now).is_ok() {
                                gone.insert(call);
                                if let Some(agent) = connected.remove(&call) {
                                    engaged.remove(&agent);
                                }
                            }
                        }
                        Ev::Register { agent } => {
                            prop_assert!(acd.agent_registered(AGENTS[agent], now).is_ok());
                        }
                        Ev::Unregister { agent } => {
                            prop_assert!(acd.agent_unregistered(AGENTS[agent], now).is_ok());
                        }
                        Ev::Advance { secs } => {
                            let target = now + Duration::from_secs(secs);
                            // Step through every timer on the way, as the shell would.
                            while let Some(t) = acd.poll_timeout().filter(|t| *t <= target) {
                                prop_assert!(t >= now, "a timer in the past: {:?}", now - t);
                                now = t;
                                acd.handle_timeout(now);
                            }
                            now = target;
                            acd.handle_timeout(now);
                        }
                    }
                    while let Some(a) = acd.poll_action() {
                        match a {
                            Action::OfferToAgent { call, agent, .. } => {
                                prop_assert!(!gone.contains(&call), "offered call {} that left", call);
                                prop_assert!(!engaged.contains_key(&agent), "{} offered {} while engaged with {:?}", agent, call, engaged.get(&agent));
                                engaged.insert(agent.clone(), call);
                                ringing.entry(call).or_default().insert(agent);
                            }
                            Action::CancelOffer { call, agent } => {
                                prop_assert_eq!(engaged.remove(&agent), Some(call));
                                prop_assert!(ringing.get_mut(&call).is_some_and(|s| s.remove(&agent)));
                            }
                            Action::Connected { call, agent } => {
                                prop_assert_eq!(engaged.get(&agent), Some(&call));
                                let r = ringing.remove(&call).unwrap_or_default();
                                prop_assert_eq!(r, BTreeSet::from([agent.clone()]), "others cancelled first");
                                connected.insert(call, agent);
                            }
                            Action::AnnouncePosition { call, position, .. } => {
                                prop_assert!(!gone.contains(&call) && !connected.contains_key(&call));
                                prop_assert!(position >= 1);
                            }
                            Action::Overflow { call, to } => {
                                prop_assert!(ringing.get(&call).is_none_or(|s| s.is_empty()));
                                if let OverflowTo::Fallback(_) = to { gone.insert(call); }
                            }
                            Action::Unavailable { call, .. } => {
                                prop_assert!(ringing.get(&call).is_none_or(|s| s.is_empty()));
                                gone.insert(call);
                            }
                        }
                    }
                    check_state(&acd)?;
                    // The shell's view and the ACD agree on who is engaged.
                    for (name, a) in &acd.agents {
                        let engaged_here = matches!(a.state, AgentState::Offered { .. } | AgentState::Busy { .. });
                        prop_assert_eq!(engaged_here, engaged.contains_key(name), "agent {}", name);
                    }
                    // Nobody free while a call they could take waits unoffered (work conserving).
                    for (id, c) in &acd.calls {
                        if let CallState::Waiting { offers, .. } = &c.state {
                            if offers.is_empty() {
                                let q = &acd.queues[&c.queue];
                                let idle = q.members.iter().any(|m| acd.available(&acd.agents[m], now));
                                prop_assert!(!idle, "call {} waits in {} while a member is free", id, c.queue);
                            }
                        }
                    }
                }
            }
        }
    }
}
