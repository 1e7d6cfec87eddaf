//! The dialer: one planner task per running campaign decides, contact by contact, with the
//! sans-IO policy and the ledger, and starts calls within the campaign's and the trunk's pacing.
//!
//! Campaign state lives in the database (`warmline campaign start|pause|resume|stop` writes
//! it), so every appliance sharing the database sees the same campaigns, and a restart resumes
//! them. The fatigue limit is enforced by the ledger's atomic claim, not by this process.
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Config, Trunk};
use crate::dialer::campaign::{Campaign, Message};
use crate::dialer::outbound::OutboundConfig;
use crate::dialer::policy::{
    self, AttemptOutcome, AttemptRecord, CampaignRules, ContactView, CountedContact, Decision,
    History, SkipReason, WaitReason,
};
use crate::store::ledger::{
    AttemptEnd, AttemptStart, AttemptStarted, AuditDecision, AuditEntry, CampaignStatus,
    ClaimOutcome, Contact, ContactMove, ContactState, FatigueRule as LedgerRule, Reach,
};
use crate::store::{Store, StoreError};

use super::call::CallContext;
use super::transport::SipCommand;

/// Due contacts read per planning pass.
const PLAN_BATCH: i64 = 500;

/// A trunk's shared pacing: calls per second and calls up at once, across all campaigns.
struct TrunkState {
    trunk: Arc<Trunk>,
    limiter: DefaultDirectRateLimiter,
    active: AtomicU32,
    /// After a 503 from the trunk no call starts until then; doubles on each 503 in a row.
    backoff: Mutex<(Option<Instant>, Duration)>,
}

impl TrunkState {
    fn in_backoff(&self, now: Instant) -> bool {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.0.is_some_and(|until| now < until)
    }

    fn note_status(&self, status: Option<u16>, now: Instant) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if status == Some(503) {
            let next = if b.1.is_zero() {
                Duration::from_secs(5)
            } else {
                (b.1 * 2).min(Duration::from_secs(120))
            };
            *b = (Some(now + next), next);
            super::metrics::set_trunk_backoff(&self.trunk.name, next);
            tracing::warn!(trunk = %self.trunk.name, backoff_s = next.as_secs(), "trunk returned 503; backing off");
        } else if status.is_some_and(|s| s < 500) {
            if !b.1.is_zero() {
                super::metrics::set_trunk_backoff(&self.trunk.name, Duration::ZERO);
            }
            *b = (None, Duration::ZERO);
        }
    }
}

/// A loaded campaign and its own pacing.
struct Plan {
    campaign: Campaign,
    rules: CampaignRules,
    ledger_rule: LedgerRule,
    limiter: DefaultDirectRateLimiter,
    active: Arc<AtomicU32>,
    trunk: Arc<TrunkState>,
    call: OutboundConfig,
}

pub struct Dialer {
    store: Store,
    cfg: Arc<Config>,
    node: String,
    ctx: Arc<CallContext>,
    sip: mpsc::UnboundedSender<SipCommand>,
    trunks: Mutex<HashMap<String, Arc<TrunkState>>>,
    /// Woken when a call ends, so a free slot is used at once rather than at the next poll.
    call_ended: Notify,
    /// Calls started by this process and not yet written to the ledger.
    in_flight: AtomicU32,
    /// The appliance is stopping: no new call starts.
    stopping: std::sync::atomic::AtomicBool,
}

/// Converts the campaign's fatigue rule to the ledger's.
fn ledger_rule(rule: &policy::FatigueRule) -> Option<LedgerRule> {
    LedgerRule::new(
        rule.max_contacts,
        rule.window.num_milliseconds(),
        Reach::parse(rule.counts.as_str())?,
    )
}

fn rate_limiter(per_second: f64) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / per_second.clamp(0.001, 10_000.0));
    let quota =
        Quota::with_period(period).unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN));
    RateLimiter::direct(quota)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

impl Dialer {
    pub fn new(
        store: Store,
        cfg: Arc<Config>,
        ctx: Arc<CallContext>,
        sip: mpsc::UnboundedSender<SipCommand>,
    ) -> Arc<Dialer> {
        Arc::new(Dialer {
            node: cfg.node_name(),
            store,
            cfg,
            ctx,
            sip,
            trunks: Mutex::new(HashMap::new()),
            call_ended: Notify::new(),
            in_flight: AtomicU32::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Calls started and not yet recorded.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Closes what a crash of this node left open: attempts become `interrupted` (they count as
    /// a contact, so nobody is called twice because of the crash), claims that never got a
    /// call are released, and their contacts go back to the planner.
    pub async fn recover(&self) -> Result<(), StoreError> {
        let s = self
            .store
            .close_interrupted_attempts(&self.node, ms(Utc::now()))
            .await?;
        if s.attempts_closed + s.claims_released + s.contacts_requeued > 0 {
            tracing::warn!(node = %self.node, attempts = s.attempts_closed, claims_released = s.claims_released,
                contacts = s.contacts_requeued, "dialer: closed attempts interrupted by the last stop");
        }
        Ok(())
    }

    /// Registers to the trunks that ask for it.
    pub fn register_trunks(&self) {
        for name in self.cfg.trunks.keys() {
            let Ok(trunk) = self.cfg.trunk(name) else {
                continue;
            };
            let Some(expires) = trunk.register else {
                continue;
            };
            let transport = trunk.transport;
            let user = trunk
                .credentials
                .as_ref()
                .map(|(u, _)| u.clone())
                .unwrap_or_else(|| "warmline".into());
            let registration = crate::sip::endpoint::Registration {
                registrar_uri: format!("sip:{}", trunk.domain),
                aor: format!("sip:{user}@{}", trunk.domain),
                destination: trunk.address,
                transport,
                expires,
                credentials: trunk.credentials.as_ref().map(|(u, p)| {
                    crate::sip::endpoint::Credentials {
                        username: u.clone(),
                        password: p.clone(),
                    }
                }),
            };
            let _ = self.sip.send(SipCommand::Register {
                name: name.clone(),
                registration,
            });
        }
    }

    /// Watches the campaigns table and runs one planner per running campaign, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.cfg.dialer.poll_interval_ms);
        let mut planners: HashMap<String, watch::Sender<CampaignStatus>> = HashMap::new();
        loop {
            match self.store.campaigns().await {
                Ok(rows) => {
                    for row in rows {
                        match planners.get(&row.id) {
                            Some(tx) if !tx.is_closed() => {
                                tx.send_if_modified(|s| {
                                    let changed = *s != row.status;
                                    *s = row.status;
                                    changed
                                });
                            }
                            _ if row.status == CampaignStatus::Running => {
                                let (tx, rx) = watch::channel(row.status);
                                tracing::info!(campaign = %row.id, node = %self.node, "dialer: campaign running");
                                tokio::spawn(self.clone().plan_campaign(
                                    row.id.clone(),
                                    row.file,
                                    rx,
                                ));
                                planners.insert(row.id, tx);
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "dialer: cannot read campaigns"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                // Planners see their senders dropped and stop starting calls.
                self.stopping.store(true, Ordering::Release);
                return;
            }
        }
    }

    fn trunk_state(&self, trunk: Trunk) -> Arc<TrunkState> {
        let mut trunks = self.trunks.lock().unwrap_or_else(|p| p.into_inner());
        trunks
            .entry(trunk.name.clone())
            .or_insert_with(|| {
                Arc::new(TrunkState {
                    limiter: rate_limiter(trunk.calls_per_second),
                    trunk: Arc::new(trunk),
                    active: AtomicU32::new(0),
                    backoff: Mutex::new((None, Duration::ZERO)),
                })
            })
            .clone()
    }

    fn load_plan(&self, file: &Path) -> Result<Plan, String> {
        let (campaign, _warnings) = Campaign::load(file, &self.cfg.global_fatigue())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let trunk = self
            .cfg
            .trunk(&campaign.trunk)
            .map_err(|(_, m)| format!("{}: {m}", file.display()))?;
        let ledger_rule = ledger_rule(&campaign.fatigue)
            .ok_or_else(|| format!("{}: the fatigue rule limits nothing", file.display()))?;
        let message = match &campaign.message {
            Message::Recorded { prompts, .. } => prompts.clone(),
            Message::Dialplan { name } => {
                return Err(format!(
                    "{}: message dialplan '{name}': outbound calls play recorded prompts \
                     (message.prompt); a dialplan message is not dialled by this version",
                    file.display()
                ))
            }
        };
        let optional = |name: &str| self.ctx.prompts.get(name).map(|_| name.to_string());
        let call = OutboundConfig {
            ring_timeout: trunk.ring_timeout,
            amd: true,
            machine_action: campaign.answering_machine,
            keys: campaign.keys,
            message,
            repeats: 2,
            key_wait: Duration::from_secs(5),
            goodbye: optional("goodbye"),
            opted_out: optional("opt-out-confirmed"),
            agent_hold: optional("please-hold"),
            max_call: Duration::from_secs(120),
        };
        Ok(Plan {
            rules: campaign.rules(),
            ledger_rule,
            limiter: rate_limiter(campaign.pacing.calls_per_second),
            active: Arc::new(AtomicU32::new(0)),
            trunk: self.trunk_state(trunk),
            call,
            campaign,
        })
    }

    /// Plans one campaign while it is running.
    async fn plan_campaign(
        self: Arc<Self>,
        id: String,
        file: String,
        mut status: watch::Receiver<CampaignStatus>,
    ) {
        let poll = Duration::from_millis(self.cfg.dialer.poll_interval_ms);
        let plan = loop {
            match self.load_plan(Path::new(&file)) {
                Ok(p) => break Arc::new(p),
                Err(e) => {
                    tracing::error!(campaign = %id, "dialer: campaign not dialled: {e}");
                    // Fixing the file (or pausing the campaign) is the operator's move.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        r = status.changed() => if r.is_err() { return; },
                    }
                    if *status.borrow() != CampaignStatus::Running {
                        return;
                    }
                }
            }
        };
        loop {
            if *status.borrow() != CampaignStatus::Running {
                tracing::info!(campaign = %id, status = status.borrow().as_str(), "dialer: campaign no longer running; no new calls");
                return;
            }
            let idle = match self.plan_once(&plan, &status).await {
                Ok(idle) => idle,
                Err(e) => {
                    tracing::error!(campaign = %id, error = %e, "dialer: planning failed; retrying");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = self.call_ended.notified() => {}
                    r = status.changed() => if r.is_err() { return; },
                }
            }
        }
    }

    /// One pass over the due contacts: their history is read for the whole batch (three
    /// queries), each is decided in memory, waits and skips are stored in one transaction,
    /// and dial decisions are claimed and dialled one by one. `Ok(true)`: nothing to do now.
    async fn plan_once(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        status: &watch::Receiver<CampaignStatus>,
    ) -> Result<bool, StoreError> {
        let id = plan.campaign.id.as_str();
        let trunk = &plan.trunk;
        let free = |plan: &Plan| {
            let c = plan
                .campaign
                .pacing
                .max_concurrent
                .saturating_sub(plan.active.load(Ordering::Acquire));
            let t = trunk
                .trunk
                .max_concurrent
                .saturating_sub(trunk.active.load(Ordering::Acquire));
            c.min(t)
        };
        if free(plan) == 0 || trunk.in_backoff(Instant::now()) {
            return Ok(true);
        }
        let now = Utc::now();
        let due = self.store.due_contacts(id, ms(now), PLAN_BATCH).await?;
        if due.is_empty() {
            self.maybe_complete(plan).await?;
            return Ok(true);
        }
        let customers: Vec<String> = due.iter().map(|c| c.customer_id.clone()).collect();
        let phones: Vec<String> = due.iter().map(|c| c.phone.clone()).collect();
        let opted_out = self.store.opted_out_among(&phones).await?;
        let after = ms(now).saturating_sub(plan.ledger_rule.window_ms());
        let mut counted = self
            .store
            .counted_contacts_among(&customers, after, plan.ledger_rule.counts_from())
            .await?;
        let mut attempts = self.store.contact_attempts_among(id, &customers).await?;
        let mut moves = Vec::new();
        let mut dialled = 0u32;
        for contact in &due {
            let counted = counted.remove(&contact.customer_id).unwrap_or_default();
            let tried = attempts.remove(&contact.customer_id).unwrap_or_default();
            let now = Utc::now();
            let (view, history) = match view_and_history(plan, contact, &opted_out, counted, tried)
            {
                Ok(v) => v,
                Err(problem) => {
                    moves.push(contact_move(
                        plan,
                        contact,
                        ContactState::Skipped,
                        ms(now),
                        AuditDecision::Skipped,
                        problem,
                        "data",
                    ));
                    continue;
                }
            };
            match policy::decide(&view, &history, &plan.rules, now) {
                Decision::Dial => {
                    // No slot (or no longer running): the contact stays due for a later pass.
                    let runnable = free(plan) > 0
                        && *status.borrow() == CampaignStatus::Running
                        && !trunk.in_backoff(Instant::now())
                        && !self.stopping.load(Ordering::Acquire);
                    if runnable && self.dial(plan, contact.clone(), view, history).await? {
                        dialled += 1;
                    }
                }
                other => {
                    if matches!(
                        other,
                        Decision::WaitUntil {
                            reason: WaitReason::Fatigue(_),
                            ..
                        }
                    ) {
                        super::metrics::fatigue_skip();
                    }
                    moves.push(decision_move(plan, contact, &other))
                }
            }
        }
        self.store.settle_contacts(&moves).await?;
        // Decisions were made: more may be due at once; otherwise wait for a slot or a poll.
        Ok(moves.is_empty() && dialled == 0)
    }

    /// Marks the campaign completed when no contact is left to call.
    async fn maybe_complete(&self, plan: &Plan) -> Result<(), StoreError> {
        if plan.active.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let counts = self.store.campaign_counts(&plan.campaign.id).await?;
        let open = ["pending", "dialling"]
            .iter()
            .map(|s| counts.contacts_by_state.get(*s).copied().unwrap_or(0))
            .sum::<i64>();
        if open == 0 && counts.contacts_total > 0 {
            self.store
                .set_campaign_status(&plan.campaign.id, CampaignStatus::Completed, ms(Utc::now()))
                .await?;
            tracing::info!(campaign = %plan.campaign.id, "dialer: campaign completed: every contact is done or skipped");
        }
        Ok(())
    }

    async fn audit(
        &self,
        plan: &Plan,
        customer: &str,
        decision: AuditDecision,
        reason: String,
        rule: Option<&str>,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditEntry {
                at_ms: ms(Utc::now()),
                campaign_id: plan.campaign.id.clone(),
                customer_id: customer.to_string(),
                decision,
                reason,
                rule: rule.map(str::to_string),
            })
            .await
            .map(|_| ())
    }

    /// Stores a decision other than Dial for one contact (a dial called off at the last moment).
    async fn settle(
        &self,
        plan: &Plan,
        contact: &Contact,
        decision: &Decision,
    ) -> Result<(), StoreError> {
        self.store
            .settle_contacts(&[decision_move(plan, contact, decision)])
            .await
            .map(|_| ())
    }

    async fn dial(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        contact: Contact,
        view: ContactView,
        history: History,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let claim = self
            .store
            .claim_contact(
                &self.node,
                &contact.customer_id,
                &plan.campaign.id,
                ms(now),
                plan.ledger_rule,
            )
            .await?;
        let claim_id = match claim {
            ClaimOutcome::Claimed { claim_id } => claim_id,
            ClaimOutcome::Fatigued {
                last_contact_ms,
                next_allowed_ms,
            } => {
                // Another campaign or node contacted the customer since the policy looked.
                super::metrics::fatigue_skip();
                let reason = format!(
                    "fatigue (ledger claim refused): contacted {}, next allowed {}",
                    policy::fmt_utc(from_ms(last_contact_ms)),
                    policy::fmt_utc(from_ms(next_allowed_ms))
                );
                self.store
                    .settle_contacts(&[contact_move(
                        plan,
                        &contact,
                        ContactState::Pending,
                        next_allowed_ms,
                        AuditDecision::Waiting,
                        reason,
                        "fatigue",
                    )])
                    .await?;
                return Ok(false);
            }
        };
        // Pacing: the campaign's rate, then the trunk's (shared by every campaign on it).
        plan.limiter.until_ready().await;
        plan.trunk.limiter.until_ready().await;
        // The wait may have crossed the window's edge: decide again with the new time.
        let decision = policy::decide(&view, &history, &plan.rules, Utc::now());
        if self.stopping.load(Ordering::Acquire) {
            // Back to the planner of the next start; the claim counts for nobody.
            let _ = self
                .store
                .resolve_claim(claim_id, Reach::NotReached, ms(Utc::now()))
                .await?;
            return Ok(false);
        }
        if decision != Decision::Dial {
            let _ = self
                .store
                .resolve_claim(claim_id, Reach::NotReached, ms(Utc::now()))
                .await?;
            self.settle(plan, &contact, &decision).await?;
            return Ok(false);
        }
        let call_id = format!(
            "{:016x}{:016x}@warmline",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let started = self
            .store
            .record_attempt_start(
                claim_id,
                &AttemptStart {
                    node: self.node.clone(),
                    phone: contact.phone.clone(),
                    call_id: Some(call_id.clone()),
                    started_at_ms: ms(Utc::now()),
                },
            )
            .await?;
        let attempt_id = match started {
            AttemptStarted::Started { attempt_id } => attempt_id,
            AttemptStarted::ClaimNotPending => {
                tracing::warn!(campaign = %plan.campaign.id, customer = %contact.customer_id, "dialer: claim no longer pending; not dialled");
                return Ok(false);
            }
        };
        self.audit(
            plan,
            &contact.customer_id,
            AuditDecision::Dialled,
            format!(
                "dialled {} (attempt {}, claim {claim_id}, node {})",
                contact.phone,
                contact.attempts + 1,
                self.node
            ),
            None,
        )
        .await?;
        plan.active.fetch_add(1, Ordering::AcqRel);
        plan.trunk.active.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let req = super::outbound::OutboundRequest {
            call_id,
            attempt_id,
            phone: contact.phone.clone(),
            caller_id: plan.campaign.caller_id.clone(),
            trunk: plan.trunk.trunk.clone(),
            config: plan.call.clone(),
            opt_out_source: format!("campaign:{}", plan.campaign.id),
            message_text: match &plan.campaign.message {
                Message::Recorded {
                    template: Some(t), ..
                } => t
                    .render(|f| contact.fields.get(f).map(String::as_str))
                    .ok()
                    .map(|text| (plan.campaign.language.clone(), text)),
                _ => None,
            },
        };
        let (ctx, sip, store, plan) = (
            self.ctx.clone(),
            self.sip.clone(),
            self.store.clone(),
            plan.clone(),
        );
        let customer = contact.customer_id.clone();
        let dialer = self.clone();
        tokio::spawn(async move {
            let report = super::outbound::run(ctx, sip, req).await;
            let r = &report.result;
            plan.trunk.note_status(r.sip_status, Instant::now());
            let end = AttemptEnd {
                ended_at_ms: ms(Utc::now()),
                answered_at_ms: report.answered_at.map(ms),
                outcome: r.outcome.as_str().to_string(),
                sip_status: r.sip_status,
                amd_decision: r.amd_decision.map(str::to_string),
                amd_confidence: r.amd_confidence.map(f64::from),
                reach: r.reach,
            };
            tracing::info!(campaign = %plan.campaign.id, customer = %customer, outcome = %end.outcome,
                sip = ?end.sip_status, amd = ?end.amd_decision, digits = %r.digits, "dialer: attempt ended");
            // The ledger must learn how the call ended; a database hiccup is retried, and a
            // crash before this is closed as `interrupted` at restart.
            for delay in [0u64, 200, 1000, 5000] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                match store
                    .record_attempt_end(attempt_id, &end, plan.ledger_rule)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(attempt = attempt_id, error = %e, "dialer: cannot record the attempt's end")
                    }
                }
            }
            plan.active.fetch_sub(1, Ordering::AcqRel);
            plan.trunk.active.fetch_sub(1, Ordering::AcqRel);
            dialer.in_flight.fetch_sub(1, Ordering::AcqRel);
            dialer.call_ended.notify_waiters();
        });
        Ok(true)
    }
}

/// The policy's view of a contact and its history, from the batch reads.
fn view_and_history(
    plan: &Plan,
    contact: &Contact,
    opted_out: &std::collections::HashSet<String>,
    counted: Vec<crate::store::ledger::LedgerEntry>,
    attempts: Vec<(i64, String)>,
) -> Result<(ContactView, History), String> {
    let tz = contact
        .tz
        .parse::<chrono_tz::Tz>()
        .map_err(|_| format!("unknown time zone {:?}", contact.tz))?;
    Ok((
        ContactView {
            customer_id: contact.customer_id.clone(),
            phone: contact.phone.clone(),
            tz,
            consent: contact.consent,
            opted_out_global: opted_out.contains(&contact.phone),
            campaign_dnc: plan
                .campaign
                .do_not_call(&contact.phone, &contact.customer_id),
        },
        History {
            campaign_attempts: attempts
                .into_iter()
                .filter_map(|(at, outcome)| {
                    Some(AttemptRecord {
                        at: from_ms(at),
                        outcome: AttemptOutcome::parse(&outcome)?,
                    })
                })
                .collect(),
            counted_contacts: counted
                .into_iter()
                .map(|e| CountedContact::new(from_ms(e.claimed_at_ms), e.campaign_id))
                .collect(),
        },
    ))
}

/// A wait or skip decision as a contact move with its audit row.
fn decision_move(plan: &Plan, contact: &Contact, decision: &Decision) -> ContactMove {
    let now = ms(Utc::now());
    let code = decision.code();
    let rule = code.split_once('_').map(|(_, r)| r).unwrap_or(code);
    let (state, at, audit) = match decision {
        Decision::WaitUntil { at, reason } => {
            let audit = if matches!(reason, WaitReason::RetryDelay { .. }) {
                AuditDecision::Retried
            } else {
                AuditDecision::Waiting
            };
            (ContactState::Pending, ms(*at), audit)
        }
        Decision::Skip(SkipReason::Completed { .. }) => {
            (ContactState::Done, now, AuditDecision::Completed)
        }
        Decision::Skip(_) => (ContactState::Skipped, now, AuditDecision::Skipped),
        // Not stored as a move; kept pending and due.
        Decision::Dial => (
            ContactState::Pending,
            contact.next_attempt_at_ms,
            AuditDecision::Dialled,
        ),
    };
    contact_move(plan, contact, state, at, audit, decision.to_string(), rule)
}

fn contact_move(
    plan: &Plan,
    contact: &Contact,
    to: ContactState,
    next_attempt_at_ms: i64,
    decision: AuditDecision,
    reason: String,
    rule: &str,
) -> ContactMove {
    ContactMove {
        contact_id: contact.id,
        from: ContactState::Pending,
        attempts: contact.attempts,
        to,
        next_attempt_at_ms,
        audit: AuditEntry {
            at_ms: ms(Utc::now()),
            campaign_id: plan.campaign.id.clone(),
            customer_id: contact.customer_id.clone(),
            decision,
            reason,
            rule: Some(rule.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk_state() -> TrunkState {
        TrunkState {
            trunk: Arc::new(Trunk {
                name: "main".into(),
                address: "127.0.0.1:5070".parse().unwrap(),
                transport: crate::sip::endpoint::Transport::Udp,
                domain: "127.0.0.1:5070".into(),
                credentials: None,
                register: None,
                calls_per_second: 5.0,
                max_concurrent: 3,
                ring_timeout: Duration::from_secs(30),
            }),
            limiter: rate_limiter(5.0),
            active: AtomicU32::new(0),
            backoff: Mutex::new((None, Duration::ZERO)),
        }
    }

    #[test]
    fn a_503_backs_the_trunk_off_doubling_up_to_two_minutes_and_an_answer_resets_it() {
        let t = trunk_state();
        let t0 = Instant::now();
        assert!(!t.in_backoff(t0));
        t.note_status(Some(503), t0);
        assert!(t.in_backoff(t0 + Duration::from_millis(4900)));
        assert!(!t.in_backoff(t0 + Duration::from_secs(5)));
        t.note_status(Some(503), t0);
        assert!(t.in_backoff(t0 + Duration::from_millis(9900)));
        for _ in 0..10 {
            t.note_status(Some(503), t0);
        }
        assert!(t.in_backoff(t0 + Duration::from_secs(119)));
        assert!(
            !t.in_backoff(t0 + Duration::from_secs(120)),
            "capped at 2 minutes"
        );
        // A 5xx other than 503, or no status (a timeout), keeps the back-off as it is.
        t.note_status(Some(500), t0);
        t.note_status(None, t0);
        assert!(t.in_backoff(t0 + Duration::from_secs(60)));
        // The trunk answered (2xx..4xx): back to normal at once.
        t.note_status(Some(486), t0);
        assert!(!t.in_backoff(t0));
        t.note_status(Some(503), t0);
        assert!(
            !t.in_backoff(t0 + Duration::from_secs(5)),
            "starts again from 5 s"
        );
    }

    #[test]
    fn ledger_rule_keeps_the_campaign_rule() {
        let rule = policy::FatigueRule::default();
        let l = ledger_rule(&rule).unwrap();
        assert_eq!(l.max_contacts().get(), 1);
        assert_eq!(l.window_ms(), 7 * 24 * 3600 * 1000);
        assert_eq!(l.counts_from(), Reach::AnsweredByPerson);
    }
}
