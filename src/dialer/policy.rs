//! The dialing policy: may this contact be called now, and if not, until when or why not.
//!
//! Sans-IO: [`decide`] takes what the ledger knows about a contact ([`ContactView`],
//! [`History`]), the campaign's rules and the current time, and returns a [`Decision`]. It reads
//! no clock and no database, so the same inputs always give the same answer, and every answer
//! carries the rule that produced it for the audit log (`Display`).
//!
//! Rules, in order of precedence (the first that applies decides):
//! 1. opt-out (global list, or the opt-out key pressed during one of this campaign's calls),
//! 2. the campaign's do-not-call list,
//! 3. consent (an explicit "no" always skips; a missing answer skips when consent is required),
//! 4. a finished contact: invalid number, message delivered (completed),
//! 5. attempt limits: overall per contact, then per outcome (retries after busy, no answer, ...),
//! 6. the campaign's end date,
//! 7. timing: retry delay, fatigue, campaign start date and calling window together give the
//!    earliest instant a call may start; now → `Dial`, later → `WaitUntil`, never before the
//!    campaign ends → `Skip`.
//!
//! Boundaries (all documented in `docs/campaigns.md`):
//! - fatigue: a contact at `T` blocks while `now < T + window`; at exactly `T + window` it no
//!   longer counts;
//! - retry: a call may start at exactly `last attempt + delay`;
//! - window: on each calling day the window is one interval of instants,
//!   `[first instant the callee's wall clock shows start, first instant it shows end)`; a call
//!   may start at `s` when `s` is in the window and `s + finish_margin` is not after its end.
//!   A start or end inside a spring-forward gap moves to the end of the gap; inside a
//!   fall-back repeat the first occurrence counts. Windows crossing midnight are rejected.
use std::collections::BTreeSet;
use std::fmt;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike, Utc, Weekday, WeekdaySet,
};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("fatigue 'max_contacts' must be at least 1 (to stop calls, end the campaign)")]
    NoContactsAllowed,
    #[error("fatigue 'window' must be longer than zero")]
    EmptyFatigueWindow,
    #[error(
        "a campaign may only make the fatigue rule stricter: max_contacts = {campaign} allows \
         more contacts than the global limit of {global}"
    )]
    MoreContacts { campaign: u32, global: u32 },
    #[error(
        "a campaign may only make the fatigue rule stricter: window = \"{campaign}\" is shorter \
         than the global window of {global}"
    )]
    ShorterWindow { campaign: String, global: String },
    #[error(
        "a campaign may only make the fatigue rule stricter: counts = \"{campaign}\" counts fewer \
         calls than the global rule \"{global}\" (allowed: {allowed})"
    )]
    LooserCounting {
        campaign: ContactCounting,
        global: ContactCounting,
        allowed: String,
    },
    #[error(
        "the calling window {}–{} crosses midnight or is empty: 'end' must be later than \
         'start' on the same day",
        fmt_time(*.start),
        fmt_time(*.end)
    )]
    WindowCrossesMidnight { start: NaiveTime, end: NaiveTime },
    #[error(
        "finish margin {margin} leaves no time to start a call in the window {}–{} \
         (the margin must be shorter than the window)",
        fmt_time(*.start),
        fmt_time(*.end)
    )]
    MarginTooLong {
        margin: String,
        start: NaiveTime,
        end: NaiveTime,
    },
    #[error("the finish margin must not be negative")]
    NegativeMargin,
    #[error("the calling window has no calling days")]
    NoCallingDays,
    #[error("'max_attempts' must be at least 1")]
    NoAttempts,
    #[error("the retry delay after {0} must not be negative")]
    NegativeDelay(RetryOutcome),
}

// ---------------------------------------------------------------------------------------------
// Outcomes and what counts as a contact
// ---------------------------------------------------------------------------------------------

/// Which calls count against the fatigue limit. Ordered from narrowest to broadest: each
/// counts every call the previous one counts, and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum ContactCounting {
    /// A person answered (the message was played to someone). The default.
    #[default]
    AnsweredByPerson,
    /// A person or an answering machine answered.
    Answered,
    /// The callee's phone may have rung: every attempt except trunk failures and invalid numbers.
    Attempted,
}

impl ContactCounting {
    pub const ALL: [ContactCounting; 3] = [
        ContactCounting::AnsweredByPerson,
        ContactCounting::Answered,
        ContactCounting::Attempted,
    ];

    /// The name used in campaign files and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactCounting::AnsweredByPerson => "answered_by_person",
            ContactCounting::Answered => "answered",
            ContactCounting::Attempted => "attempted",
        }
    }

    pub fn parse(s: &str) -> Option<ContactCounting> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ContactCounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one call attempt, as stored in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// A person answered and heard the message (pressed no key, or a key without meaning).
    AnsweredPerson,
    /// A person answered and pressed the confirm key.
    Confirmed,
    /// A person answered and pressed the agent key.
    AgentRequested,
    /// A person answered and pressed the opt-out key.
    OptedOut,
    /// An answering machine answered and the call was hung up (or no message could be left).
    AnsweredMachine,
    /// An answering machine answered and the message was left.
    MessageLeft,
    /// 486/600 busy.
    Busy,
    /// 480/408, or the ring timeout (CANCEL).
    NoAnswer,
    /// The trunk or network failed (503, timeouts towards the trunk): the phone did not ring.
    Failed,
    /// 404/484: the number does not exist.
    Invalid,
    /// The appliance stopped while the call was in flight (closed at restart). Whether the
    /// callee answered is unknown, so it counts as a contact under every counting rule.
    Interrupted,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 11] = [
        AttemptOutcome::AnsweredPerson,
        AttemptOutcome::Confirmed,
        AttemptOutcome::AgentRequested,
        AttemptOutcome::OptedOut,
        AttemptOutcome::AnsweredMachine,
        AttemptOutcome::MessageLeft,
        AttemptOutcome::Busy,
        AttemptOutcome::NoAnswer,
        AttemptOutcome::Failed,
        AttemptOutcome::Invalid,
        AttemptOutcome::Interrupted,
    ];

    /// The name stored in the ledger and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::AnsweredPerson => "answered_person",
            AttemptOutcome::Confirmed => "confirmed",
            AttemptOutcome::AgentRequested => "agent_requested",
            AttemptOutcome::OptedOut => "opted_out",
            AttemptOutcome::AnsweredMachine => "answered_machine",
            AttemptOutcome::MessageLeft => "message_left",
            AttemptOutcome::Busy => "busy",
            AttemptOutcome::NoAnswer => "no_answer",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Invalid => "invalid",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether this attempt counts against the fatigue limit under `rule`.
    pub fn counts_as_contact(self, rule: ContactCounting) -> bool {
        use AttemptOutcome::*;
        let person = matches!(
            self,
            AnsweredPerson | Confirmed | AgentRequested | OptedOut | Interrupted
        );
        let machine = matches!(self, AnsweredMachine | MessageLeft);
        match rule {
            ContactCounting::AnsweredByPerson => person,
            ContactCounting::Answered => person || machine,
            ContactCounting::Attempted => !matches!(self, Failed | Invalid),
        }
    }

    /// What the campaign does with the contact after this outcome.
    pub fn disposition(self) -> Disposition {
        use AttemptOutcome::*;
        match self {
            AnsweredPerson | Confirmed | AgentRequested | MessageLeft => Disposition::Completed,
            OptedOut => Disposition::OptedOut,
            Invalid => Disposition::InvalidNumber,
            AnsweredMachine => Disposition::Retry(RetryOutcome::Machine),
            Busy => Disposition::Retry(RetryOutcome::Busy),
            NoAnswer => Disposition::Retry(RetryOutcome::NoAnswer),
            Failed | Interrupted => Disposition::Retry(RetryOutcome::Failed),
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an outcome means for the contact in this campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Completed,
    OptedOut,
    InvalidNumber,
    /// Try again, under the retry rule for this kind of outcome.
    Retry(RetryOutcome),
}

// ---------------------------------------------------------------------------------------------
// Fatigue
// ---------------------------------------------------------------------------------------------

/// At most `max_contacts` counted contacts per customer in any `window`, across all campaigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatigueRule {
    pub max_contacts: u32,
    pub window: Duration,
    pub counts: ContactCounting,
}

impl Default for FatigueRule {
    /// One contact per customer per 7 days, counting calls answered by a person.
    fn default() -> Self {
        FatigueRule {
            max_contacts: 1,
            window: Duration::days(7),
            counts: ContactCounting::AnsweredByPerson,
        }
    }
}

/// Why fatigue blocks a contact now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatigueBlock {
    /// Counted contacts inside the window now.
    pub in_window: u32,
    /// The contact whose leaving the window frees the customer.
    pub blocking: CountedContact,
    /// `blocking.at + window`; `None` if that is beyond the calendar.
    pub frees_at: Option<DateTime<Utc>>,
    pub rule: FatigueRule,
}

impl FatigueRule {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_contacts == 0 {
            return Err(PolicyError::NoContactsAllowed);
        }
        if self.window <= Duration::zero() {
            return Err(PolicyError::EmptyFatigueWindow);
        }
        Ok(())
    }

    /// The rule a campaign runs under: its own, which may only be stricter than the global one
    /// (no more contacts, no shorter window, counting at least the same calls). A campaign
    /// rule that is stricter in every part is also never looser than the global one, so
    /// checking the campaign rule alone enforces both.
    pub fn stricter_of(
        global: &FatigueRule,
        campaign: &FatigueRule,
    ) -> Result<FatigueRule, PolicyError> {
        campaign.validate()?;
        if campaign.max_contacts > global.max_contacts {
            return Err(PolicyError::MoreContacts {
                campaign: campaign.max_contacts,
                global: global.max_contacts,
            });
        }
        if campaign.window < global.window {
            return Err(PolicyError::ShorterWindow {
                campaign: fmt_duration(campaign.window),
                global: fmt_duration(global.window),
            });
        }
        if campaign.counts < global.counts {
            let allowed: Vec<&str> = ContactCounting::ALL
                .into_iter()
                .filter(|c| *c >= global.counts)
                .map(ContactCounting::as_str)
                .collect();
            return Err(PolicyError::LooserCounting {
                campaign: campaign.counts,
                global: global.counts,
                allowed: allowed.join(", "),
            });
        }
        Ok(*campaign)
    }

    /// `None` when a contact may be made at `now`; otherwise what blocks it and until when.
    /// Contacts dated after `now` (another appliance's clock) count as inside the window.
    pub fn check(&self, contacts: &[CountedContact], now: DateTime<Utc>) -> Option<FatigueBlock> {
        let mut active: Vec<&CountedContact> = contacts
            .iter()
            .filter(|c| {
                c.at.checked_add_signed(self.window)
                    .is_none_or(|end| end > now)
            })
            .collect();
        let max = usize::try_from(self.max_contacts).unwrap_or(usize::MAX);
        if active.len() < max {
            return None;
        }
        active.sort_by_key(|c| c.at);
        // The customer is free once all but max-1 of the active contacts have left the window.
        let blocking = active.get(active.len() - max)?;
        Some(FatigueBlock {
            in_window: u32::try_from(active.len()).unwrap_or(u32::MAX),
            blocking: (*blocking).clone(),
            frees_at: blocking.at.checked_add_signed(self.window),
            rule: *self,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Calling window
// ---------------------------------------------------------------------------------------------

/// Default time a call must be able to last before the window closes.
pub const DEFAULT_FINISH_MARGIN: Duration = Duration::minutes(5);

/// When calls may start, in the callee's local time. Always valid: `start < end` on the same
/// day, at least one calling day, and a finish margin shorter than the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindow {
    start: NaiveTime,
    end: NaiveTime,
    days: WeekdaySet,
    holidays: BTreeSet<NaiveDate>,
    finish_margin: Duration,
}

/// Why the window is closed at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowClosed {
    DayOff {
        date: NaiveDate,
    },
    Holiday {
        date: NaiveDate,
    },
    /// Before the window opens (local time now).
    BeforeStart {
        local: NaiveTime,
        start: NaiveTime,
    },
    /// Too late: a call started now would not end before the window closes.
    TooLate {
        local: NaiveTime,
        end: NaiveTime,
        margin: Duration,
    },
}

impl fmt::Display for WindowClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowClosed::DayOff { date } => {
                write!(
                    f,
                    "{date} is a {}, not a calling day",
                    weekday_name(date.weekday())
                )
            }
            WindowClosed::Holiday { date } => write!(f, "{date} is a holiday"),
            WindowClosed::BeforeStart { local, start } => write!(
                f,
                "it is {}, calls start at {}",
                fmt_time(*local),
                fmt_time(*start)
            ),
            WindowClosed::TooLate { local, end, margin } => write!(
                f,
                "it is {}, a call started now could not end by {} (finish margin {})",
                fmt_time(*local),
                fmt_time(*end),
                fmt_duration(*margin)
            ),
        }
    }
}

impl CallingWindow {
    pub fn new(
        start: NaiveTime,
        end: NaiveTime,
        days: WeekdaySet,
        holidays: BTreeSet<NaiveDate>,
        finish_margin: Duration,
    ) -> Result<CallingWindow, PolicyError> {
        if end <= start {
            return Err(PolicyError::WindowCrossesMidnight { start, end });
        }
        if days.is_empty() {
            return Err(PolicyError::NoCallingDays);
        }
        if finish_margin < Duration::zero() {
            return Err(PolicyError::NegativeMargin);
        }
        if finish_margin >= end - start {
            return Err(PolicyError::MarginTooLong {
                margin: fmt_duration(finish_margin),
                start,
                end,
            });
        }
        Ok(CallingWindow {
            start,
            end,
            days,
            holidays,
            finish_margin,
        })
    }

    pub fn start(&self) -> NaiveTime {
        self.start
    }
    pub fn end(&self) -> NaiveTime {
        self.end
    }
    pub fn days(&self) -> WeekdaySet {
        self.days
    }
    pub fn holidays(&self) -> &BTreeSet<NaiveDate> {
        &self.holidays
    }
    pub fn finish_margin(&self) -> Duration {
        self.finish_margin
    }

    /// The instants `[open, latest start]` at which a call may start on local `date` in `tz`,
    /// or `None` when no call may start that day (day off, holiday, or a window eaten by a
    /// DST change).
    pub fn day_bounds(&self, tz: Tz, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days.contains(date.weekday()) || self.holidays.contains(&date) {
            return None;
        }
        let open = first_instant_showing(tz, date.and_time(self.start))?;
        let close = first_instant_showing(tz, date.and_time(self.end))?;
        let latest = close.checked_sub_signed(self.finish_margin)?;
        (open <= latest).then_some((open, latest))
    }

    /// The first instant at or after `after` at which a call to a callee in `tz` may start, on
    /// a local date from `first_date` to `last_date` (inclusive; `None`: no last date).
    pub fn next_start(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        first_date: NaiveDate,
        last_date: Option<NaiveDate>,
    ) -> Option<DateTime<Utc>> {
        let local_date = after.with_timezone(&tz).date_naive();
        // The day before too: its window could reach past local midnight only through a
        // DST change at midnight, but checking it costs nothing.
        let mut date = local_date.pred_opt().unwrap_or(local_date).max(first_date);
        // Each week has a calling day; each holiday and each DST-eaten day can remove one.
        let limit = 21usize.saturating_add(self.holidays.range(date..).count());
        for _ in 0..limit {
            if last_date.is_some_and(|last| date > last) {
                return None;
            }
            if let Some((open, latest)) = self.day_bounds(tz, date) {
                if latest >= after {
                    return Some(open.max(after));
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// Why no call may start at `at` (which must be outside the window), for the audit log.
    pub fn closed_reason(&self, tz: Tz, at: DateTime<Utc>) -> WindowClosed {
        let local = at.with_timezone(&tz).naive_local();
        let date = local.date();
        if self.holidays.contains(&date) {
            WindowClosed::Holiday { date }
        } else if !self.days.contains(date.weekday()) {
            WindowClosed::DayOff { date }
        } else if local.time() < self.end
            && self.day_bounds(tz, date).is_none_or(|(open, _)| at < open)
        {
            WindowClosed::BeforeStart {
                local: local.time(),
                start: self.start,
            }
        } else {
            WindowClosed::TooLate {
                local: local.time(),
                end: self.end,
                margin: self.finish_margin,
            }
        }
    }

    /// "09:00–20:00 Mon–Fri": for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}–{} {}",
            fmt_time(self.start),
            fmt_time(self.end),
            fmt_weekdays(self.days)
        )
    }
}

/// The first instant at which the wall clock in `tz` shows `local` or later: `local` itself
/// when it exists once, its first occurrence in a fall-back repeat, and the end of the gap
/// (the transition) when it falls in a spring-forward gap.
pub fn first_instant_showing(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap. Offsets lie within ±26 h, so 36 h either side brackets the answer:
            // the wall clock shows less than `local` at `lo` and at least `local` at `hi`.
            let guess = local.and_utc().timestamp();
            let mut lo = guess.checked_sub(36 * 3600)?;
            let mut hi = guess.checked_add(36 * 3600)?;
            let shows = |secs: i64| {
                DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&tz).naive_local())
            };
            // Transitions fall on whole seconds, so a search over seconds finds them exactly.
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if shows(mid)? >= local {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            DateTime::from_timestamp(hi, 0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

/// The outcomes that have their own retry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOutcome {
    Busy,
    NoAnswer,
    /// Trunk failures, and attempts interrupted by a restart.
    Failed,
    /// An answering machine answered and no message was left.
    Machine,
}

impl RetryOutcome {
    pub const ALL: [RetryOutcome; 4] = [
        RetryOutcome::Busy,
        RetryOutcome::NoAnswer,
        RetryOutcome::Failed,
        RetryOutcome::Machine,
    ];

    /// The name used in campaign files.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Busy => "busy",
            RetryOutcome::NoAnswer => "no_answer",
            RetryOutcome::Failed => "failed",
            RetryOutcome::Machine => "machine",
        }
    }

    pub fn parse(s: &str) -> Option<RetryOutcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for RetryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// After an outcome of this kind, wait `delay` and try again, at most `max_retries` times
/// (counting every attempt with this kind of outcome in the campaign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRule {
    pub delay: Duration,
    pub max_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRules {
    pub busy: RetryRule,
    pub no_answer: RetryRule,
    pub failed: RetryRule,
    pub machine: RetryRule,
    /// Attempts per contact in this campaign, whatever their outcomes.
    pub max_attempts: u32,
}

impl Default for RetryRules {
    fn default() -> Self {
        RetryRules {
            busy: RetryRule {
                delay: Duration::minutes(10),
                max_retries: 3,
            },
            no_answer: RetryRule {
                delay: Duration::hours(2),
                max_retries: 2,
            },
            failed: RetryRule {
                delay: Duration::minutes(15),
                max_retries: 2,
            },
            machine: RetryRule {
                delay: Duration::hours(4),
                max_retries: 1,
            },
            max_attempts: 4,
        }
    }
}

impl RetryRules {
    pub fn rule(&self, outcome: RetryOutcome) -> &RetryRule {
        match outcome {
            RetryOutcome::Busy => &self.busy,
            RetryOutcome::NoAnswer => &self.no_answer,
            RetryOutcome::Failed => &self.failed,
            RetryOutcome::Machine => &self.machine,
        }
    }

    pub fn rule_mut(&mut self, outcome: RetryOutcome) -> &mut RetryRule {
        match outcome {
            RetryOutcome::Busy => &mut self.busy,
            RetryOutcome::NoAnswer => &mut self.no_answer,
            RetryOutcome::Failed => &mut self.failed,
            RetryOutcome::Machine => &mut self.machine,
        }
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        for outcome in RetryOutcome::ALL {
            if self.rule(outcome).delay < Duration::zero() {
                return Err(PolicyError::NegativeDelay(outcome));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// What the ledger knows about a contact, read at dial time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactView {
    pub customer_id: String,
    pub phone: String,
    /// The callee's time zone; the calling window and campaign dates are local to it.
    pub tz: Tz,
    pub consent: Option<bool>,
    pub opted_out_global: bool,
    pub campaign_dnc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
}

/// A call that counts against the customer's fatigue limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedContact {
    pub at: DateTime<Utc>,
    /// The campaign that made it, for the audit log.
    pub campaign: String,
}

impl CountedContact {
    pub fn new(at: DateTime<Utc>, campaign: impl Into<String>) -> Self {
        CountedContact {
            at,
            campaign: campaign.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// This contact's attempts in this campaign, any order.
    pub campaign_attempts: Vec<AttemptRecord>,
    /// The customer's contacts in every campaign (this one included), already filtered by the
    /// counting rule of the fatigue rule in force ([`AttemptOutcome::counts_as_contact`]).
    /// Contacts older than the fatigue window may be left out.
    pub counted_contacts: Vec<CountedContact>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRules {
    pub window: CallingWindow,
    /// Already merged with the global rule ([`FatigueRule::stricter_of`]).
    pub fatigue: FatigueRule,
    pub retry: RetryRules,
    /// First calling date, local to the callee.
    pub start_date: NaiveDate,
    /// Last calling date (inclusive), local to the callee; `None`: open-ended.
    pub end_date: Option<NaiveDate>,
    pub require_consent: bool,
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Dial,
    /// Not now; `at` (always later than now) is the exact earliest instant a call may start,
    /// given everything known now.
    WaitUntil {
        at: DateTime<Utc>,
        reason: WaitReason,
    },
    /// Never in this campaign (unless an input changes, e.g. new consent or a new end date).
    Skip(SkipReason),
}

/// The rule that moved the contact's next call from now to later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The calling window is closed now; it opens at `at` (`opens_local` on the callee's clock).
    Window {
        closed: WindowClosed,
        tz: Tz,
        opens_local: NaiveDateTime,
    },
    /// The campaign starts later (a date on the callee's calendar).
    CampaignStart { start_date: NaiveDate, tz: Tz },
    /// The last attempt's retry delay runs until `ready_at`; the window may move `at` further.
    RetryDelay {
        outcome: AttemptOutcome,
        last_attempt: DateTime<Utc>,
        delay: Duration,
        ready_at: DateTime<Utc>,
    },
    /// The fatigue limit is reached until `block.frees_at`; the window may move `at` further.
    Fatigue(FatigueBlock),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// On the global opt-out list, or the opt-out key was pressed in this campaign.
    OptedOut {
        during_call: Option<DateTime<Utc>>,
    },
    CampaignDnc,
    /// `explicit`: the contact said no; otherwise consent is required and unknown.
    NoConsent {
        explicit: bool,
    },
    InvalidNumber {
        at: DateTime<Utc>,
    },
    /// The message was delivered.
    Completed {
        outcome: AttemptOutcome,
        at: DateTime<Utc>,
    },
    MaxAttempts {
        attempts: u32,
        max: u32,
    },
    RetriesExhausted {
        outcome: RetryOutcome,
        attempts: u32,
        max_retries: u32,
    },
    CampaignEnded {
        end_date: NaiveDate,
    },
    /// The fatigue limit frees the customer only after the campaign ends.
    Fatigue {
        block: FatigueBlock,
        end_date: NaiveDate,
    },
    /// The calling window never opens (days and holidays leave no calling day): only possible
    /// with an open-ended campaign whose window the DST rules keep closing.
    NoCallingTime,
}

impl Decision {
    /// A short stable code for the audit table and status counts.
    pub fn code(&self) -> &'static str {
        match self {
            Decision::Dial => "dial",
            Decision::WaitUntil { reason, .. } => match reason {
                WaitReason::Window { .. } => "wait_window",
                WaitReason::CampaignStart { .. } => "wait_campaign_start",
                WaitReason::RetryDelay { .. } => "wait_retry",
                WaitReason::Fatigue(_) => "wait_fatigue",
            },
            Decision::Skip(reason) => match reason {
                SkipReason::OptedOut { .. } => "skip_opted_out",
                SkipReason::CampaignDnc => "skip_campaign_dnc",
                SkipReason::NoConsent { .. } => "skip_no_consent",
                SkipReason::InvalidNumber { .. } => "skip_invalid_number",
                SkipReason::Completed { .. } => "skip_completed",
                SkipReason::MaxAttempts { .. } => "skip_max_attempts",
                SkipReason::RetriesExhausted { .. } => "skip_retries_exhausted",
                SkipReason::CampaignEnded { .. } => "skip_campaign_ended",
                SkipReason::Fatigue { .. } => "skip_fatigue",
                SkipReason::NoCallingTime => "skip_no_calling_time",
            },
        }
    }
}

/// Decides whether `contact` may be dialled at `now` in a campaign with `rules`.
///
/// The caller must still claim the contact atomically in the ledger before dialling (two
/// appliances may decide `Dial` for the same customer at the same time).
pub fn decide(
    contact: &ContactView,
    history: &History,
    rules: &CampaignRules,
    now: DateTime<Utc>,
) -> Decision {
    let attempts = &history.campaign_attempts;
    // 1-3: opt-out, DNC, consent.
    if contact.opted_out_global {
        return Decision::Skip(SkipReason::OptedOut { during_call: None });
    }
    if let Some(a) = earliest(attempts, |o| o == AttemptOutcome::OptedOut) {
        return Decision::Skip(SkipReason::OptedOut {
            during_call: Some(a.at),
        });
    }
    if contact.campaign_dnc {
        return Decision::Skip(SkipReason::CampaignDnc);
    }
    match contact.consent {
        Some(false) => return Decision::Skip(SkipReason::NoConsent { explicit: true }),
        None if rules.require_consent => {
            return Decision::Skip(SkipReason::NoConsent { explicit: false })
        }
        _ => {}
    }
    // 4: finished contacts.
    if let Some(a) = earliest(attempts, |o| o.disposition() == Disposition::InvalidNumber) {
        return Decision::Skip(SkipReason::InvalidNumber { at: a.at });
    }
    if let Some(a) = earliest(attempts, |o| o.disposition() == Disposition::Completed) {
        return Decision::Skip(SkipReason::Completed {
            outcome: a.outcome,
            at: a.at,
        });
    }
    // 5: attempt limits.
    let made = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
    if made >= rules.retry.max_attempts {
        return Decision::Skip(SkipReason::MaxAttempts {
            attempts: made,
            max: rules.retry.max_attempts,
        });
    }
    let last = attempts.iter().max_by_key(|a| a.at);
    let mut retry_ready = None;
    if let Some(last) = last {
        if let Disposition::Retry(kind) = last.outcome.disposition() {
            let rule = rules.retry.rule(kind);
            let of_kind = attempts
                .iter()
                .filter(|a| a.outcome.disposition() == Disposition::Retry(kind))
                .count();
            let of_kind = u32::try_from(of_kind).unwrap_or(u32::MAX);
            if of_kind > rule.max_retries {
                return Decision::Skip(SkipReason::RetriesExhausted {
                    outcome: kind,
                    attempts: of_kind,
                    max_retries: rule.max_retries,
                });
            }
            match last.at.checked_add_signed(rule.delay) {
                Some(ready) => retry_ready = Some((last, rule.delay, ready)),
                None => return Decision::Skip(SkipReason::NoCallingTime),
            }
        }
    }
    // 6: campaign over.
    let tz = contact.tz;
    let today = now.with_timezone(&tz).date_naive();
    if let Some(end_date) = rules.end_date {
        if today > end_date {
            return Decision::Skip(SkipReason::CampaignEnded { end_date });
        }
    }
    // 7: timing.
    let fatigue = rules.fatigue.check(&history.counted_contacts, now);
    let retry_at = retry_ready.map_or(now, |(_, _, ready)| ready.max(now));
    let next = |after| {
        rules
            .window
            .next_start(tz, after, rules.start_date, rules.end_date)
    };
    let fatigue_at = match &fatigue {
        None => now,
        Some(block) => match block.frees_at {
            Some(at) => at.max(now),
            None => {
                return match rules.end_date {
                    Some(end_date) => Decision::Skip(SkipReason::Fatigue {
                        block: block.clone(),
                        end_date,
                    }),
                    None => Decision::Skip(SkipReason::NoCallingTime),
                }
            }
        },
    };
    let earliest_at = retry_at.max(fatigue_at);
    let Some(at) = next(earliest_at) else {
        // Blame fatigue when the call would otherwise still fit in the campaign.
        return match (rules.end_date, fatigue) {
            (Some(end_date), Some(block)) if fatigue_at > retry_at && next(retry_at).is_some() => {
                Decision::Skip(SkipReason::Fatigue { block, end_date })
            }
            (Some(end_date), _) => Decision::Skip(SkipReason::CampaignEnded { end_date }),
            (None, _) => Decision::Skip(SkipReason::NoCallingTime),
        };
    };
    if at <= now {
        return Decision::Dial;
    }
    let reason = if earliest_at == now {
        if today < rules.start_date {
            WaitReason::CampaignStart {
                start_date: rules.start_date,
                tz,
            }
        } else {
            WaitReason::Window {
                closed: rules.window.closed_reason(tz, now),
                tz,
                opens_local: at.with_timezone(&tz).naive_local(),
            }
        }
    } else if let (Some(block), true) = (fatigue, fatigue_at >= retry_at) {
        WaitReason::Fatigue(block)
    } else if let Some((last, delay, ready_at)) = retry_ready {
        WaitReason::RetryDelay {
            outcome: last.outcome,
            last_attempt: last.at,
            delay,
            ready_at,
        }
    } else {
        // earliest_at > now comes from fatigue or a retry delay, handled above.
        WaitReason::Window {
            closed: rules.window.closed_reason(tz, now),
            tz,
            opens_local: at.with_timezone(&tz).naive_local(),
        }
    };
    Decision::WaitUntil { at, reason }
}

fn earliest(
    attempts: &[AttemptRecord],
    pred: impl Fn(AttemptOutcome) -> bool,
) -> Option<&AttemptRecord> {
    attempts
        .iter()
        .filter(|a| pred(a.outcome))
        .min_by_key(|a| a.at)
}

// ---------------------------------------------------------------------------------------------
// Display (audit log lines)
// ---------------------------------------------------------------------------------------------

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Dial => f.write_str("dial"),
            Decision::WaitUntil { at, reason } => {
                write!(f, "wait until {}: {reason}", fmt_utc(*at))
            }
            Decision::Skip(reason) => write!(f, "skip: {reason}"),
        }
    }
}

impl fmt::Display for FatigueBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = &self.rule;
        write!(
            f,
            "contacted {} by campaign {} ({} of max {} contact{} per {}, counting {})",
            fmt_utc(self.blocking.at),
            self.blocking.campaign,
            self.in_window,
            rule.max_contacts,
            if rule.max_contacts == 1 { "" } else { "s" },
            fmt_duration(rule.window),
            rule.counts
        )?;
        match self.frees_at {
            Some(at) => write!(f, "; next allowed {}", fmt_utc(at)),
            None => f.write_str("; never allowed again"),
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Window {
                closed,
                tz,
                opens_local,
            } => write!(
                f,
                "window — {closed} in {tz}; opens {} local",
                opens_local.format("%Y-%m-%d %H:%M")
            ),
            WaitReason::CampaignStart { start_date, tz } => {
                write!(f, "campaign starts {start_date} (in {tz})")
            }
            WaitReason::RetryDelay {
                outcome,
                last_attempt,
                delay,
                ready_at,
            } => write!(
                f,
                "retry delay — {outcome} at {}, retry after {} ({})",
                fmt_utc(*last_attempt),
                fmt_duration(*delay),
                fmt_utc(*ready_at)
            ),
            WaitReason::Fatigue(block) => write!(f, "fatigue — {block}"),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::OptedOut { during_call: None } => f.write_str("opted out (global list)"),
            SkipReason::OptedOut {
                during_call: Some(at),
            } => write!(f, "opted out with the opt-out key at {}", fmt_utc(*at)),
            SkipReason::CampaignDnc => f.write_str("on this campaign's do-not-call list"),
            SkipReason::NoConsent { explicit: true } => f.write_str("no consent (consent = no)"),
            SkipReason::NoConsent { explicit: false } => {
                f.write_str("no consent (the campaign requires consent and none is recorded)")
            }
            SkipReason::InvalidNumber { at } => {
                write!(f, "invalid number (reported at {})", fmt_utc(*at))
            }
            SkipReason::Completed { outcome, at } => {
                write!(f, "completed ({outcome} at {})", fmt_utc(*at))
            }
            SkipReason::MaxAttempts { attempts, max } => {
                write!(f, "max attempts — {attempts} of {max} made")
            }
            SkipReason::RetriesExhausted {
                outcome,
                attempts,
                max_retries,
            } => write!(
                f,
                "retries exhausted — {attempts} attempts ended {outcome}, at most {max_retries} retr{} allowed",
                if *max_retries == 1 { "y" } else { "ies" }
            ),
            SkipReason::CampaignEnded { end_date } => {
                write!(f, "campaign ended (last calling date {end_date})")
            }
            SkipReason::Fatigue { block, end_date } => write!(
                f,
                "fatigue — {block}, after the campaign ends ({end_date})"
            ),
            SkipReason::NoCallingTime => {
                f.write_str("the calling window never opens for this contact")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting and parsing helpers shared with campaign files
// ---------------------------------------------------------------------------------------------

/// `2026-11-20T10:02Z`, with seconds only when they are not zero.
pub fn fmt_utc(t: DateTime<Utc>) -> String {
    if t.second() == 0 && t.nanosecond() == 0 {
        t.format("%Y-%m-%dT%H:%MZ").to_string()
    } else if t.nanosecond() == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

/// `09:00`, or `09:00:30` when seconds are set.
pub fn fmt_time(t: NaiveTime) -> String {
    if t.second() == 0 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// `7d`, `2h30m`, `90s` → `1m30s`, `0s`; the syntax [`parse_duration`] reads.
pub fn fmt_duration(d: Duration) -> String {
    let mut secs = d.num_seconds();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = secs.saturating_neg();
    }
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = secs / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            secs %= size;
        }
    }
    out
}

/// Reads `30s`, `10m`, `2h`, `7d`, `2w` and sums such as `1h30m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str =
        "use a number with a unit: s, m, h, d or w (e.g. \"10m\", \"2h\", \"1h30m\")";
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut parts = 0;
    for c in text.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' if digits.is_empty() => {}
            's' | 'm' | 'h' | 'd' | 'w' => {
                if digits.is_empty() {
                    return Err(format!("'{c}' needs a number before it; {HINT}"));
                }
                let n: i64 = digits.parse().map_err(|_| format!("too large; {HINT}"))?;
                let size = match c {
                    's' => 1,
                    'm' => 60,
                    'h' => 3_600,
                    'd' => 86_400,
                    _ => 604_800,
                };
                total = n
                    .checked_mul(size)
                    .and_then(|v| total.checked_add(v))
                    .filter(|v| *v <= 100 * 365 * 86_400)
                    .ok_or_else(|| "too large (at most 100 years)".to_string())?;
                digits.clear();
                parts += 1;
            }
            _ => return Err(format!("unexpected '{}'; {HINT}", c.escape_default())),
        }
    }
    if !digits.is_empty() {
        return Err(format!("'{digits}' has no unit; {HINT}"));
    }
    if parts == 0 {
        return Err(format!("empty; {HINT}"));
    }
    Ok(Duration::seconds(total))
}

/// Three-letter English day name, as in campaign files.
pub fn weekday_short(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// `Mon–Fri`, `Mon–Fri, Sun`, `every day`.
pub fn fmt_weekdays(days: WeekdaySet) -> String {
    if days == WeekdaySet::ALL {
        return "every day".to_string();
    }
    let title = |d: Weekday| {
        let s = weekday_short(d);
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    // Runs of consecutive days, Monday first.
    let mut runs: Vec<(Weekday, Weekday)> = Vec::new();
    for day in days.iter(Weekday::Mon) {
        match runs.last_mut() {
            Some((_, last)) if last.succ() == day && day != Weekday::Mon => *last = day,
            _ => runs.push((day, day)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                title(*a)
            } else if a.succ() == *b {
                format!("{}, {}", title(*a), title(*b))
            } else {
                format!("{}–{}", title(*a), title(*b))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Asia, Australia, Europe};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    const WEEKDAYS: WeekdaySet = WeekdaySet::from_array([
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ]);

    fn window(start: NaiveTime, end: NaiveTime, days: WeekdaySet) -> CallingWindow {
        CallingWindow::new(start, end, days, BTreeSet::new(), DEFAULT_FINISH_MARGIN)
            .expect("valid window")
    }

    fn rules() -> CampaignRules {
        CampaignRules {
            window: window(hm(9, 0), hm(20, 0), WEEKDAYS),
            fatigue: FatigueRule::default(),
            retry: RetryRules::default(),
            start_date: date("2026-01-01"),
            end_date: Some(date("2026-12-31")),
            require_consent: false,
        }
    }

    fn contact(tz: Tz) -> ContactView {
        ContactView {
            customer_id: "c-1".into(),
            phone: "+12125550100".into(),
            tz,
            consent: None,
            opted_out_global: false,
            campaign_dnc: false,
        }
    }

    fn attempt(at: &str, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            at: utc(at),
            outcome,
        }
    }

    fn decide_at(c: &ContactView, h: &History, r: &CampaignRules, now: &str) -> Decision {
        decide(c, h, r, utc(now))
    }

    fn wait_at(d: &Decision) -> DateTime<Utc> {
        match d {
            Decision::WaitUntil { at, .. } => *at,
            other => panic!("expected WaitUntil, got {other}"),
        }
    }

    // --- window & time zones -----------------------------------------------------------------

    #[test]
    fn window_is_evaluated_in_the_callees_time_zone() {
        let r = rules();
        let h = History::default();
        // 13:30Z is 08:30 in New York (EST), 13:30 in London, 21:30 in Shanghai (Fri 2026-11-20).
        let now = "2026-11-20T13:30:00Z";
        let ny = decide_at(&contact(America::New_York), &h, &r, now);
        assert_eq!(wait_at(&ny), utc("2026-11-20T14:00:00Z"), "09:00 EST");
        assert_eq!(
            decide_at(&contact(Europe::London), &h, &r, now),
            Decision::Dial
        );
        let sh = decide_at(&contact(Asia::Shanghai), &h, &r, now);
        // Friday evening in Shanghai: next calling day is Monday 09:00 CST = 01:00Z.
        assert_eq!(wait_at(&sh), utc("2026-11-23T01:00:00Z"));
        assert_eq!(
            sh.to_string(),
            "wait until 2026-11-23T01:00Z: window — it is 21:30, a call started now could not \
             end by 20:00 (finish margin 5m) in Asia/Shanghai; opens 2026-11-23 09:00 local"
        );
        assert_eq!(ny.code(), "wait_window");
        assert!(
            ny.to_string().contains("it is 08:30, calls start at 09:00"),
            "{ny}"
        );
    }

    #[test]
    fn shanghai_has_no_dst_so_opening_is_the_same_utc_all_year() {
        let r = rules();
        let h = History::default();
        for day in ["2026-03-09", "2026-07-06", "2026-11-02"] {
            // Mondays; 00:00Z is 08:00 in Shanghai.
            let d = decide_at(
                &contact(Asia::Shanghai),
                &h,
                &r,
                &format!("{day}T00:00:00Z"),
            );
            assert_eq!(wait_at(&d), utc(&format!("{day}T01:00:00Z")), "{day}");
        }
    }

    #[test]
    fn new_york_opening_moves_with_dst() {
        let r = rules();
        let h = History::default();
        let c = contact(America::New_York);
        // Fri 2026-03-06 after close → Mon 2026-03-09 09:00 EDT (13:00Z; DST began Sun 03-08).
        let d = decide_at(&c, &h, &r, "2026-03-07T01:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-03-09T13:00:00Z"));
        // Fri 2026-10-30 after close → Mon 2026-11-02 09:00 EST (14:00Z; DST ended Sun 11-01).
        let d = decide_at(&c, &h, &r, "2026-10-31T01:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-02T14:00:00Z"));
        // Last start before close is 19:55 local either side of the change.
        assert_eq!(
            decide_at(&c, &h, &r, "2026-03-09T23:55:00Z"),
            Decision::Dial
        );
        assert!(matches!(
            decide_at(&c, &h, &r, "2026-03-09T23:55:01Z"),
            Decision::WaitUntil { .. }
        ));
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-03T00:55:00Z"),
            Decision::Dial
        );
    }

    #[test]
    fn london_opening_moves_with_bst() {
        let r = rules();
        let h = History::default();
        let c = contact(Europe::London);
        // Fri 2026-03-27 after close (GMT) → Mon 2026-03-30 09:00 BST = 08:00Z.
        let d = decide_at(&c, &h, &r, "2026-03-27T20:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-03-30T08:00:00Z"));
        assert!(
            d.to_string()
                .contains("it is 20:00, a call started now could not end by 20:00"),
            "{d}"
        );
        // Saturday is a day off; the reason names it.
        let d = decide_at(&c, &h, &r, "2026-03-28T12:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-03-30T08:00:00Z"));
        assert!(
            d.to_string()
                .contains("2026-03-28 is a Saturday, not a calling day in Europe/London"),
            "{d}"
        );
        // Fri 2026-10-23 (BST) after close → Mon 2026-10-26 09:00 GMT = 09:00Z.
        let d = decide_at(&c, &h, &r, "2026-10-23T19:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-10-26T09:00:00Z"));
        // 08:30Z on a BST Monday is 09:30 local: inside.
        assert_eq!(
            decide_at(&c, &h, &r, "2026-03-30T08:30:00Z"),
            Decision::Dial
        );
    }

    #[test]
    fn spring_forward_gap_moves_start_and_end_to_the_transition() {
        let ny = America::New_York;
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let sunday = date("2026-03-08");
        let days = WeekdaySet::ALL;
        let w = window(hm(2, 30), hm(5, 0), days);
        let (open, latest) = w.day_bounds(ny, sunday).expect("open");
        assert_eq!(open, utc("2026-03-08T07:00:00Z"), "03:00 EDT");
        assert_eq!(latest, utc("2026-03-08T08:55:00Z"), "05:00 EDT - 5m");
        // A window that ends in the gap closes at the transition.
        let w = window(hm(1, 0), hm(2, 30), days);
        let (open, latest) = w.day_bounds(ny, sunday).expect("open");
        assert_eq!(open, utc("2026-03-08T06:00:00Z"), "01:00 EST");
        assert_eq!(latest, utc("2026-03-08T06:55:00Z"), "transition - 5m");
        // A window inside the gap does not exist that day.
        let w = window(hm(2, 0), hm(2, 50), days);
        assert_eq!(w.day_bounds(ny, sunday), None);
        let d = decide(
            &contact(ny),
            &History::default(),
            &CampaignRules {
                window: w,
                ..rules()
            },
            utc("2026-03-08T05:00:00Z"),
        );
        assert_eq!(
            wait_at(&d),
            utc("2026-03-09T06:00:00Z"),
            "next day 02:00 EDT"
        );
        // The window spanning the gap is an hour shorter in real time.
        let w = window(hm(1, 0), hm(4, 0), days);
        let (open, latest) = w.day_bounds(ny, sunday).expect("open");
        assert_eq!(latest + DEFAULT_FINISH_MARGIN - open, Duration::hours(2));
    }

    #[test]
    fn fall_back_repeat_uses_the_first_occurrence() {
        let ny = America::New_York;
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z); 01:xx happens twice.
        let sunday = date("2026-11-01");
        let days = WeekdaySet::ALL;
        let w = window(hm(1, 30), hm(4, 0), days);
        let (open, latest) = w.day_bounds(ny, sunday).expect("open");
        assert_eq!(open, utc("2026-11-01T05:30:00Z"), "first 01:30, EDT");
        assert_eq!(latest, utc("2026-11-01T08:55:00Z"), "04:00 EST - 5m");
        // A window ending at 01:30 closes at the first 01:30; the repeated hour stays closed.
        let w = window(hm(0, 0), hm(1, 30), days);
        let r = CampaignRules {
            window: w,
            ..rules()
        };
        let c = contact(ny);
        let h = History::default();
        assert_eq!(
            decide(&c, &h, &r, utc("2026-11-01T05:25:00Z")),
            Decision::Dial
        );
        // 06:10Z is 01:10 EST, on the wall clock inside 00:00–01:30 again, but after the close.
        let d = decide(&c, &h, &r, utc("2026-11-01T06:10:00Z"));
        assert_eq!(wait_at(&d), utc("2026-11-02T05:00:00Z"), "Mon 00:00 EST");
        assert!(d.to_string().contains("could not end by 01:30"), "{d}");
    }

    #[test]
    fn finish_margin_is_inclusive_at_the_latest_start() {
        let c = contact(Europe::London);
        let h = History::default();
        let mut r = rules();
        r.window = CallingWindow::new(
            hm(9, 0),
            hm(20, 0),
            WEEKDAYS,
            BTreeSet::new(),
            Duration::minutes(10),
        )
        .expect("window");
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-20T19:50:00Z"),
            Decision::Dial
        );
        let d = decide_at(&c, &h, &r, "2026-11-20T19:50:01Z");
        assert_eq!(wait_at(&d), utc("2026-11-23T09:00:00Z"));
        assert!(d.to_string().contains("finish margin 10m"), "{d}");
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-20T09:00:00Z"),
            Decision::Dial
        );
        assert_eq!(
            wait_at(&decide_at(&c, &h, &r, "2026-11-20T08:59:59Z")),
            utc("2026-11-20T09:00:00Z")
        );
    }

    #[test]
    fn days_of_week_and_holidays_are_skipped() {
        let c = contact(Europe::London);
        let h = History::default();
        let mut r = rules();
        let holidays: BTreeSet<NaiveDate> = [date("2026-12-25"), date("2026-12-28")].into();
        r.window = CallingWindow::new(
            hm(9, 0),
            hm(20, 0),
            WEEKDAYS,
            holidays,
            DEFAULT_FINISH_MARGIN,
        )
        .expect("window");
        // Thu 12-24 after close → Fri 25 holiday, weekend, Mon 28 holiday → Tue 29.
        let d = decide_at(&c, &h, &r, "2026-12-24T21:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-12-29T09:00:00Z"));
        let d = decide_at(&c, &h, &r, "2026-12-25T12:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-12-29T09:00:00Z"));
        assert!(d.to_string().contains("2026-12-25 is a holiday"), "{d}");
        let d = decide_at(&c, &h, &r, "2026-12-26T12:00:00Z");
        assert!(
            d.to_string()
                .contains("2026-12-26 is a Saturday, not a calling day"),
            "{d}"
        );
        // Weekend-only window.
        r.window = window(
            hm(10, 0),
            hm(12, 0),
            WeekdaySet::from_array([Weekday::Sat, Weekday::Sun]),
        );
        let d = decide_at(&c, &h, &r, "2026-11-23T11:00:00Z"); // Monday
        assert_eq!(wait_at(&d), utc("2026-11-28T10:00:00Z"));
    }

    #[test]
    fn windows_crossing_midnight_and_oversized_margins_are_rejected() {
        let err = CallingWindow::new(
            hm(21, 0),
            hm(6, 0),
            WEEKDAYS,
            BTreeSet::new(),
            DEFAULT_FINISH_MARGIN,
        )
        .unwrap_err();
        assert!(matches!(err, PolicyError::WindowCrossesMidnight { .. }));
        assert_eq!(
            err.to_string(),
            "the calling window 21:00–06:00 crosses midnight or is empty: 'end' must be later \
             than 'start' on the same day"
        );
        assert!(CallingWindow::new(
            hm(9, 0),
            hm(9, 0),
            WEEKDAYS,
            BTreeSet::new(),
            Duration::zero()
        )
        .is_err());
        let err = CallingWindow::new(
            hm(9, 0),
            hm(9, 30),
            WEEKDAYS,
            BTreeSet::new(),
            Duration::minutes(30),
        )
        .unwrap_err();
        assert!(err.to_string().contains("finish margin 30m"), "{err}");
        let err = CallingWindow::new(
            hm(9, 0),
            hm(10, 0),
            WeekdaySet::EMPTY,
            BTreeSet::new(),
            Duration::zero(),
        )
        .unwrap_err();
        assert_eq!(err, PolicyError::NoCallingDays);
        assert!(CallingWindow::new(
            hm(9, 0),
            hm(10, 0),
            WEEKDAYS,
            BTreeSet::new(),
            Duration::seconds(-1)
        )
        .is_err());
    }

    #[test]
    fn odd_offsets_and_southern_dst_work() {
        let h = History::default();
        let r = rules();
        // Kolkata is +05:30: 09:00 IST = 03:30Z.
        let d = decide_at(&contact(Asia::Kolkata), &h, &r, "2026-11-23T00:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-23T03:30:00Z"));
        // Sydney is on DST (+11) in November: Mon 09:00 AEDT = Sun 22:00Z.
        let d = decide_at(&contact(Australia::Sydney), &h, &r, "2026-11-22T12:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-22T22:00:00Z"));
    }

    // --- fatigue -----------------------------------------------------------------------------

    #[test]
    fn fatigue_frees_at_exactly_seven_days() {
        let c = contact(Europe::London);
        let r = rules();
        let h = History {
            campaign_attempts: vec![],
            counted_contacts: vec![CountedContact::new(
                utc("2026-11-20T10:02:00Z"),
                "points-expiry",
            )],
        };
        let d = decide_at(&c, &h, &r, "2026-11-23T10:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-27T10:02:00Z"));
        assert_eq!(
            d.to_string(),
            "wait until 2026-11-27T10:02Z: fatigue — contacted 2026-11-20T10:02Z by campaign \
             points-expiry (1 of max 1 contact per 7d, counting answered_by_person); next \
             allowed 2026-11-27T10:02Z"
        );
        assert_eq!(d.code(), "wait_fatigue");
        // One second before: still blocked; at exactly T + 7d: allowed.
        let d = decide_at(&c, &h, &r, "2026-11-27T10:01:59Z");
        assert_eq!(wait_at(&d), utc("2026-11-27T10:02:00Z"));
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-27T10:02:00Z"),
            Decision::Dial
        );
    }

    #[test]
    fn fatigue_then_window() {
        // Freed at 19:58 local on Friday, too late to finish: the window moves it to Monday.
        let c = contact(Europe::London);
        let r = rules();
        let h = History {
            campaign_attempts: vec![],
            counted_contacts: vec![CountedContact::new(utc("2026-11-20T19:58:00Z"), "other")],
        };
        let d = decide_at(&c, &h, &r, "2026-11-24T12:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-30T09:00:00Z"));
        assert!(matches!(
            d,
            Decision::WaitUntil {
                reason: WaitReason::Fatigue(FatigueBlock { frees_at: Some(f), .. }),
                ..
            } if f == utc("2026-11-27T19:58:00Z")
        ));
    }

    #[test]
    fn fatigue_with_several_contacts_frees_when_enough_have_expired() {
        let rule = FatigueRule {
            max_contacts: 2,
            window: Duration::days(30),
            counts: ContactCounting::Answered,
        };
        let now = utc("2026-11-20T12:00:00Z");
        let contacts = vec![
            CountedContact::new(utc("2026-11-15T12:00:00Z"), "b"),
            CountedContact::new(utc("2026-11-01T12:00:00Z"), "a"),
            CountedContact::new(utc("2026-11-18T12:00:00Z"), "c"),
            CountedContact::new(utc("2026-09-01T12:00:00Z"), "old"),
        ];
        let block = rule.check(&contacts, now).expect("blocked");
        assert_eq!(block.in_window, 3);
        // Three active, max 2: the two oldest must leave; the second oldest (b) decides.
        assert_eq!(block.blocking.campaign, "b");
        assert_eq!(block.frees_at, Some(utc("2026-12-15T12:00:00Z")));
        assert!(
            rule.check(&contacts[..1], now).is_none(),
            "one of two allowed"
        );
        // Contacts stamped in the future (another appliance's clock) still count.
        let future = [CountedContact::new(utc("2026-11-20T12:00:05Z"), "skewed")];
        let block = FatigueRule::default().check(&future, now).expect("blocked");
        assert_eq!(block.frees_at, Some(utc("2026-11-27T12:00:05Z")));
    }

    #[test]
    fn fatigue_past_the_campaign_end_skips() {
        let c = contact(Europe::London);
        let mut r = rules();
        r.end_date = Some(date("2026-11-25"));
        let h = History {
            campaign_attempts: vec![],
            counted_contacts: vec![CountedContact::new(
                utc("2026-11-20T10:02:00Z"),
                "points-expiry",
            )],
        };
        let d = decide_at(&c, &h, &r, "2026-11-23T10:00:00Z");
        assert_eq!(
            d.to_string(),
            "skip: fatigue — contacted 2026-11-20T10:02Z by campaign points-expiry (1 of max 1 \
             contact per 7d, counting answered_by_person); next allowed 2026-11-27T10:02Z, after \
             the campaign ends (2026-11-25)"
        );
        assert_eq!(d.code(), "skip_fatigue");
    }

    #[test]
    fn stricter_of_accepts_only_stricter_overrides() {
        let global = FatigueRule::default();
        let stricter = FatigueRule {
            max_contacts: 1,
            window: Duration::days(14),
            counts: ContactCounting::Attempted,
        };
        assert_eq!(FatigueRule::stricter_of(&global, &stricter), Ok(stricter));
        assert_eq!(FatigueRule::stricter_of(&global, &global), Ok(global));
        let err = FatigueRule::stricter_of(
            &global,
            &FatigueRule {
                max_contacts: 2,
                ..global
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a campaign may only make the fatigue rule stricter: max_contacts = 2 allows more \
             contacts than the global limit of 1"
        );
        let err = FatigueRule::stricter_of(
            &global,
            &FatigueRule {
                window: Duration::days(3),
                ..global
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("window = \"3d\" is shorter than the global window of 7d"),
            "{err}"
        );
        let global_answered = FatigueRule {
            counts: ContactCounting::Answered,
            ..global
        };
        let err = FatigueRule::stricter_of(&global_answered, &global).unwrap_err();
        assert!(
            err.to_string().contains("(allowed: answered, attempted)"),
            "{err}"
        );
        assert_eq!(
            FatigueRule::stricter_of(
                &global,
                &FatigueRule {
                    max_contacts: 0,
                    ..global
                }
            ),
            Err(PolicyError::NoContactsAllowed)
        );
    }

    #[test]
    fn counting_rules_nest() {
        for o in AttemptOutcome::ALL {
            let p = o.counts_as_contact(ContactCounting::AnsweredByPerson);
            let a = o.counts_as_contact(ContactCounting::Answered);
            let t = o.counts_as_contact(ContactCounting::Attempted);
            assert!(!p || a, "{o}: person ⊂ answered");
            assert!(!a || t, "{o}: answered ⊂ attempted");
            assert_eq!(AttemptOutcome::parse(o.as_str()), Some(o));
        }
        use AttemptOutcome::*;
        assert!(AnsweredPerson.counts_as_contact(ContactCounting::AnsweredByPerson));
        assert!(!AnsweredMachine.counts_as_contact(ContactCounting::AnsweredByPerson));
        assert!(AnsweredMachine.counts_as_contact(ContactCounting::Answered));
        assert!(!Busy.counts_as_contact(ContactCounting::Answered));
        assert!(Busy.counts_as_contact(ContactCounting::Attempted));
        assert!(!Failed.counts_as_contact(ContactCounting::Attempted));
        assert!(!Invalid.counts_as_contact(ContactCounting::Attempted));
        assert!(Interrupted.counts_as_contact(ContactCounting::AnsweredByPerson));
    }

    // --- retries -----------------------------------------------------------------------------

    #[test]
    fn retry_delay_by_outcome() {
        let c = contact(Europe::London);
        let r = rules();
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T10:00:00Z", AttemptOutcome::Busy)],
            counted_contacts: vec![],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T10:05:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-20T10:10:00Z"));
        assert_eq!(
            d.to_string(),
            "wait until 2026-11-20T10:10Z: retry delay — busy at 2026-11-20T10:00Z, retry after \
             10m (2026-11-20T10:10Z)"
        );
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-20T10:10:00Z"),
            Decision::Dial
        );
        // No answer waits 2 h; an evening no-answer rolls to the next calling day.
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T18:30:00Z", AttemptOutcome::NoAnswer)],
            counted_contacts: vec![],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T18:31:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-23T09:00:00Z"));
        assert_eq!(d.code(), "wait_retry");
        // Interrupted attempts retry under the 'failed' rule.
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T10:00:00Z", AttemptOutcome::Interrupted)],
            counted_contacts: vec![],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T10:01:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-20T10:15:00Z"));
    }

    #[test]
    fn retries_are_limited_per_outcome_and_overall() {
        let c = contact(Europe::London);
        let mut r = rules();
        r.retry.busy.max_retries = 2;
        r.retry.max_attempts = 5;
        let busy = |t: &str| attempt(t, AttemptOutcome::Busy);
        let mut h = History {
            campaign_attempts: vec![busy("2026-11-20T10:00:00Z"), busy("2026-11-20T10:10:00Z")],
            counted_contacts: vec![],
        };
        // Two busy outcomes: the second retry is still allowed.
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-20T11:00:00Z"),
            Decision::Dial
        );
        h.campaign_attempts.push(busy("2026-11-20T10:20:00Z"));
        let d = decide_at(&c, &h, &r, "2026-11-20T11:00:00Z");
        assert_eq!(
            d,
            Decision::Skip(SkipReason::RetriesExhausted {
                outcome: RetryOutcome::Busy,
                attempts: 3,
                max_retries: 2
            })
        );
        assert_eq!(
            d.to_string(),
            "skip: retries exhausted — 3 attempts ended busy, at most 2 retries allowed"
        );
        // A different last outcome uses its own budget, until max_attempts.
        h.campaign_attempts
            .push(attempt("2026-11-20T10:30:00Z", AttemptOutcome::NoAnswer));
        let d = decide_at(&c, &h, &r, "2026-11-20T12:30:00Z");
        assert_eq!(d, Decision::Dial);
        h.campaign_attempts
            .push(attempt("2026-11-20T12:30:00Z", AttemptOutcome::NoAnswer));
        let d = decide_at(&c, &h, &r, "2026-11-20T15:00:00Z");
        assert_eq!(
            d,
            Decision::Skip(SkipReason::MaxAttempts {
                attempts: 5,
                max: 5
            })
        );
        assert_eq!(d.to_string(), "skip: max attempts — 5 of 5 made");
    }

    #[test]
    fn retries_vs_fatigue() {
        let c = contact(Europe::London);
        let mut r = rules();
        // A machine answered at 10:00. Counting answered calls, the machine is a contact, so
        // fatigue (7 days) wins over the 4 h machine retry delay.
        r.fatigue.counts = ContactCounting::Answered;
        let h = History {
            campaign_attempts: vec![attempt(
                "2026-11-20T10:00:00Z",
                AttemptOutcome::AnsweredMachine,
            )],
            counted_contacts: vec![CountedContact::new(utc("2026-11-20T10:00:00Z"), "this")],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T14:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-27T10:00:00Z"));
        assert_eq!(d.code(), "wait_fatigue");
        // Counting only people, the machine is no contact: the retry delay applies.
        r.fatigue.counts = ContactCounting::AnsweredByPerson;
        let h = History {
            counted_contacts: vec![],
            ..h
        };
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-20T14:00:00Z"),
            Decision::Dial
        );
        assert_eq!(
            wait_at(&decide_at(&c, &h, &r, "2026-11-20T13:59:00Z")),
            utc("2026-11-20T14:00:00Z")
        );
        // A retry delay that outlasts the fatigue block is the reason given.
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T10:00:00Z", AttemptOutcome::NoAnswer)],
            counted_contacts: vec![CountedContact::new(utc("2026-11-13T11:00:00Z"), "x")],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T10:30:00Z");
        assert_eq!(wait_at(&d), utc("2026-11-20T12:00:00Z"));
        assert_eq!(d.code(), "wait_retry");
        // A retry past the campaign end ends the contact's campaign, not fatigue.
        r.end_date = Some(date("2026-11-20"));
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T19:00:00Z", AttemptOutcome::NoAnswer)],
            counted_contacts: vec![],
        };
        let d = decide_at(&c, &h, &r, "2026-11-20T19:01:00Z");
        assert_eq!(
            d,
            Decision::Skip(SkipReason::CampaignEnded {
                end_date: date("2026-11-20")
            })
        );
    }

    // --- precedence --------------------------------------------------------------------------

    #[test]
    fn opt_out_beats_everything() {
        let mut c = contact(Europe::London);
        c.opted_out_global = true;
        c.campaign_dnc = true;
        c.consent = Some(false);
        let mut r = rules();
        r.end_date = Some(date("2026-01-31"));
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T10:00:00Z", AttemptOutcome::Confirmed)],
            counted_contacts: vec![CountedContact::new(utc("2026-11-20T10:00:00Z"), "x")],
        };
        let d = decide_at(&c, &h, &r, "2026-11-21T03:00:00Z");
        assert_eq!(
            d,
            Decision::Skip(SkipReason::OptedOut { during_call: None })
        );
        assert_eq!(d.to_string(), "skip: opted out (global list)");
        // Pressed during this campaign's call, before the global list caught up.
        c.opted_out_global = false;
        let h = History {
            campaign_attempts: vec![
                attempt("2026-11-20T10:00:00Z", AttemptOutcome::NoAnswer),
                attempt("2026-11-20T12:00:00Z", AttemptOutcome::OptedOut),
            ],
            counted_contacts: vec![],
        };
        let d = decide_at(&c, &h, &r, "2026-11-21T03:00:00Z");
        assert_eq!(
            d.to_string(),
            "skip: opted out with the opt-out key at 2026-11-20T12:00Z"
        );
        // Then the campaign DNC list, then consent.
        let h = History::default();
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-21T03:00:00Z"),
            Decision::Skip(SkipReason::CampaignDnc)
        );
        c.campaign_dnc = false;
        assert_eq!(
            decide_at(&c, &h, &r, "2026-11-21T03:00:00Z"),
            Decision::Skip(SkipReason::NoConsent { explicit: true })
        );
    }

    #[test]
    fn consent_rules() {
        let mut c = contact(Europe::London);
        let mut r = rules();
        let h = History::default();
        let now = "2026-11-20T12:00:00Z";
        assert_eq!(decide_at(&c, &h, &r, now), Decision::Dial, "not required");
        r.require_consent = true;
        let d = decide_at(&c, &h, &r, now);
        assert_eq!(d, Decision::Skip(SkipReason::NoConsent { explicit: false }));
        assert!(d.to_string().contains("requires consent"));
        c.consent = Some(true);
        assert_eq!(decide_at(&c, &h, &r, now), Decision::Dial);
        c.consent = Some(false);
        r.require_consent = false;
        assert_eq!(
            decide_at(&c, &h, &r, now),
            Decision::Skip(SkipReason::NoConsent { explicit: true }),
            "an explicit no always skips"
        );
    }

    #[test]
    fn finished_contacts_are_skipped() {
        let c = contact(Europe::London);
        let r = rules();
        let now = "2026-11-24T12:00:00Z";
        for (outcome, code) in [
            (AttemptOutcome::Confirmed, "skip_completed"),
            (AttemptOutcome::AnsweredPerson, "skip_completed"),
            (AttemptOutcome::AgentRequested, "skip_completed"),
            (AttemptOutcome::MessageLeft, "skip_completed"),
            (AttemptOutcome::Invalid, "skip_invalid_number"),
        ] {
            let h = History {
                campaign_attempts: vec![attempt("2026-11-20T12:00:00Z", outcome)],
                counted_contacts: vec![],
            };
            assert_eq!(decide_at(&c, &h, &r, now).code(), code, "{outcome}");
        }
        let h = History {
            campaign_attempts: vec![attempt("2026-11-20T12:00:00Z", AttemptOutcome::Confirmed)],
            counted_contacts: vec![],
        };
        assert_eq!(
            decide_at(&c, &h, &r, now).to_string(),
            "skip: completed (confirmed at 2026-11-20T12:00Z)"
        );
    }

    #[test]
    fn campaign_dates_are_local_to_the_callee() {
        let h = History::default();
        let mut r = rules();
        r.start_date = date("2026-12-01");
        r.end_date = Some(date("2026-12-04"));
        let ny = contact(America::New_York);
        // Before the start: wait for the first window on the start date.
        let d = decide_at(&ny, &h, &r, "2026-11-20T15:00:00Z");
        assert_eq!(wait_at(&d), utc("2026-12-01T14:00:00Z"));
        assert_eq!(
            d.to_string(),
            "wait until 2026-12-01T14:00Z: campaign starts 2026-12-01 (in America/New_York)"
        );
        assert_eq!(d.code(), "wait_campaign_start");
        // 2026-12-05T03:00Z is still Dec 4 (22:00) in New York but Dec 5 in Shanghai.
        let now = "2026-12-05T03:00:00Z";
        let d = decide_at(&ny, &h, &r, now);
        assert_eq!(
            d,
            Decision::Skip(SkipReason::CampaignEnded {
                end_date: date("2026-12-04")
            }),
            "no window left on the last day"
        );
        let d = decide_at(&contact(Asia::Shanghai), &h, &r, now);
        assert_eq!(
            d.to_string(),
            "skip: campaign ended (last calling date 2026-12-04)"
        );
        // The last date is inclusive.
        assert_eq!(
            decide_at(&ny, &h, &r, "2026-12-04T20:00:00Z"),
            Decision::Dial
        );
        // Open-ended campaigns never end.
        r.end_date = None;
        assert_eq!(
            decide_at(&ny, &h, &r, "2030-06-04T15:00:00Z"),
            Decision::Dial
        );
    }

    #[test]
    fn full_year_scan_matches_a_wall_clock_oracle() {
        // Daytime windows never meet a DST change, so "local time within [start, end - margin]
        // on a calling day" is the whole truth; check every 10 minutes of 2026 in London.
        let c = contact(Europe::London);
        let h = History::default();
        let mut r = rules();
        let holidays: BTreeSet<NaiveDate> = [date("2026-05-04"), date("2026-12-25")].into();
        r.window = CallingWindow::new(
            hm(9, 0),
            hm(20, 0),
            WEEKDAYS,
            holidays.clone(),
            DEFAULT_FINISH_MARGIN,
        )
        .expect("window");
        let mut t = utc("2026-01-01T00:00:00Z");
        let mut dials = 0;
        while t < utc("2027-01-01T00:00:00Z") {
            let local = t.with_timezone(&Europe::London).naive_local();
            let expect = WEEKDAYS.contains(local.date().weekday())
                && !holidays.contains(&local.date())
                && local.time() >= hm(9, 0)
                && local.time() <= hm(19, 55);
            let d = decide(&c, &h, &r, t);
            assert_eq!(d == Decision::Dial, expect, "{t} ({local}): {d}");
            if expect {
                dials += 1;
            }
            t += Duration::minutes(10);
        }
        // 2026 has 261 weekdays, less 2 holidays; 66 ten-minute slots from 09:00 to 19:50.
        assert_eq!(dials, 259 * 66);
    }

    #[test]
    fn helpers_format_and_parse() {
        assert_eq!(parse_duration("10m"), Ok(Duration::minutes(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::days(14)));
        assert_eq!(parse_duration("0s"), Ok(Duration::zero()));
        for bad in [
            "",
            "10",
            "m",
            "1x",
            "-5m",
            "99999999999999999999d",
            "1000000w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_duration(Duration::seconds(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::days(7)), "7d");
        assert_eq!(fmt_duration(Duration::minutes(150)), "2h30m");
        assert_eq!(fmt_weekdays(WEEKDAYS), "Mon–Fri");
        assert_eq!(
            fmt_weekdays(WeekdaySet::from_array([
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Sun
            ])),
            "Mon, Tue, Sun"
        );
        assert_eq!(fmt_weekdays(WeekdaySet::ALL), "every day");
        assert_eq!(fmt_utc(utc("2026-11-20T10:02:30Z")), "2026-11-20T10:02:30Z");
        assert_eq!(
            window(hm(9, 0), hm(20, 0), WEEKDAYS).describe(),
            "09:00–20:00 Mon–Fri"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const ZONES: [Tz; 8] = [
            America::New_York,
            Europe::London,
            Asia::Shanghai,
            Australia::Sydney,
            Asia::Kolkata,
            Australia::Lord_Howe,        // 30-minute DST shift
            chrono_tz::Pacific::Chatham, // +12:45 / +13:45
            America::Santiago,           // DST changes at midnight
        ];

        fn base() -> DateTime<Utc> {
            utc("2026-01-01T00:00:00Z")
        }

        prop_compose! {
            fn arb_window()(start in 0u32..1380, len in 30u32..1440, margin in 0u32..30,
                            days in 1u8..128, holidays in proptest::collection::btree_set(0i64..400, 0..20))
                -> CallingWindow {
                let end = (start + len).min(1439);
                let days: WeekdaySet = (0..7u8).filter(|b| days & (1 << b) != 0)
                    .filter_map(|b| Weekday::try_from(b).ok()).collect();
                let holidays = holidays.into_iter()
                    .map(|d| date("2026-01-01") + Duration::days(d)).collect();
                CallingWindow::new(hm(start / 60, start % 60), hm(end / 60, end % 60), days,
                    holidays, Duration::minutes(i64::from(margin.min(end - start - 1))))
                    .expect("valid by construction")
            }
        }

        /// Mostly outcomes that retry, so the timing rules get exercised.
        fn arb_outcome() -> impl Strategy<Value = AttemptOutcome> {
            use AttemptOutcome::*;
            prop_oneof![
                8 => proptest::sample::select(vec![Busy, NoAnswer, Failed, AnsweredMachine, Interrupted]),
                1 => proptest::sample::select(AttemptOutcome::ALL.to_vec()),
            ]
        }

        prop_compose! {
            fn arb_case()(
                zone in 0usize..ZONES.len(),
                window in arb_window(),
                now in 0i64..365 * 86_400,
                attempts in proptest::collection::vec((-2i64 * 86_400..3_600, arb_outcome()), 0..4),
                contacts in proptest::collection::vec(-30i64 * 86_400..600, 0..4),
                max_contacts in 1u32..3, fatigue_days in 1i64..15,
                start in -30i64..4, len in proptest::option::of(0i64..60),
                (opted_out, dnc, said_no, require_consent) in (
                    proptest::bool::weighted(0.03), proptest::bool::weighted(0.03),
                    proptest::bool::weighted(0.03), proptest::bool::weighted(0.2)),
                consent in proptest::option::weighted(0.7, Just(true)),
                millis in 0i64..1000,
                retry_minutes in 0i64..600,
            ) -> (ContactView, History, CampaignRules, DateTime<Utc>) {
                let now = base() + Duration::seconds(now) + Duration::milliseconds(millis);
                let mut c = contact(ZONES[zone]);
                c.opted_out_global = opted_out;
                c.campaign_dnc = dnc;
                c.consent = if said_no { Some(false) } else { consent };
                let today = now.date_naive();
                let start_date = today + Duration::days(start);
                let end_date = len.map(|l| start_date + Duration::days(l));
                let mut retry = RetryRules::default();
                for o in RetryOutcome::ALL {
                    retry.rule_mut(o).delay = Duration::minutes(retry_minutes);
                }
                retry.max_attempts = 6;
                let rules = CampaignRules {
                    window,
                    fatigue: FatigueRule {
                        max_contacts,
                        window: Duration::days(fatigue_days),
                        counts: ContactCounting::AnsweredByPerson,
                    },
                    retry,
                    start_date,
                    end_date,
                    require_consent,
                };
                let history = History {
                    campaign_attempts: attempts.into_iter()
                        .map(|(s, outcome)| AttemptRecord { at: now + Duration::seconds(s), outcome })
                        .collect(),
                    counted_contacts: contacts.into_iter()
                        .map(|s| CountedContact::new(now + Duration::seconds(s), "p"))
                        .collect(),
                };
                (c, history, rules, now)
            }
        }

        /// Every instant of the call [t, t + margin) shows a calling day inside the window.
        fn window_oracle(
            c: &ContactView,
            r: &CampaignRules,
            t: DateTime<Utc>,
        ) -> Result<(), String> {
            let w = &r.window;
            let first = t.with_timezone(&c.tz).date_naive();
            let mut u = t;
            let end = t + w.finish_margin();
            loop {
                let local = u.with_timezone(&c.tz).naive_local();
                let ok = local.date() == first
                    && w.days().contains(first.weekday())
                    && !w.holidays().contains(&first)
                    && first >= r.start_date
                    && r.end_date.is_none_or(|e| first <= e)
                    && local.time() >= w.start()
                    && local.time() < w.end();
                if !ok {
                    return Err(format!("{u} shows {local}, outside {}", w.describe()));
                }
                if u >= end - Duration::seconds(1) {
                    return Ok(());
                }
                u = (u + Duration::seconds(30)).min(end - Duration::seconds(1));
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn dial_only_when_every_rule_allows((c, h, r, now) in arb_case()) {
                let d = decide(&c, &h, &r, now);
                if d == Decision::Dial {
                    prop_assert!(!c.opted_out_global && !c.campaign_dnc);
                    prop_assert!(c.consent != Some(false) && (!r.require_consent || c.consent == Some(true)));
                    prop_assert!(h.campaign_attempts.len() < r.retry.max_attempts as usize);
                    if let Err(e) = window_oracle(&c, &r, now) { prop_assert!(false, "{}", e); }
                    let in_fatigue = h.counted_contacts.iter()
                        .filter(|x| x.at + r.fatigue.window > now).count();
                    prop_assert!(in_fatigue < r.fatigue.max_contacts as usize, "fatigue: {}", in_fatigue);
                    if let Some(last) = h.campaign_attempts.iter().max_by_key(|a| a.at) {
                        if let Disposition::Retry(k) = last.outcome.disposition() {
                            prop_assert!(now >= last.at + r.retry.rule(k).delay);
                        } else {
                            prop_assert!(false, "dialled after a final outcome {}", last.outcome);
                        }
                    }
                }
            }

            #[test]
            fn wait_until_is_exact((c, h, r, now) in arb_case()) {
                let d = decide(&c, &h, &r, now);
                if let Decision::WaitUntil { at, .. } = &d {
                    let at = *at;
                    prop_assert!(at > now, "{} not after {}", at, now);
                    // At `at` the call is allowed; just before, the same wait is reported.
                    let then = decide(&c, &h, &r, at);
                    prop_assert_eq!(&then, &Decision::Dial, "at {}: {} (was {})", at, then, d);
                    let before = (at - Duration::seconds(1)).max(now);
                    if let Decision::WaitUntil { at: again, .. } = decide(&c, &h, &r, before) {
                        prop_assert_eq!(again, at);
                    } else {
                        prop_assert!(false, "{} before {} is not a wait", before, at);
                    }
                    if let Err(e) = window_oracle(&c, &r, at) { prop_assert!(false, "{}", e); }
                }
                // Every decision renders for the audit log.
                prop_assert!(!d.to_string().is_empty());
            }
        }
    }
}
