//! The dialer's tables and the fatigue ledger: campaigns, their contacts, call attempts,
//! fatigue claims and the append-only audit trail (schema: migrations/*/0002_dialer.sql).
//!
//! The fatigue guarantee lives in [`Store::claim_contact`]: a customer is never claimed more
//! than `max_contacts` times inside the window, whatever number of campaigns, connections,
//! processes or appliances (sharing one PostgreSQL) race for them. Every call needs a claim;
//! when the call ends the claim records how far the call got (its [`Reach`]), and each rule
//! counts the claims that reached as far as its counting setting asks. Locking argument,
//! boundaries and crash recovery: docs/adr/0003-fatigue-ledger.md.
//!
//! Times are unix milliseconds UTC (`*_ms`), as in the rest of the store; the dialer's
//! sans-IO policy works in the same unit.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde::Serialize;

use super::{writer, Backend, Store, StoreError};

/// Rows per `import_contacts_batch` call that the importer should aim for: one transaction
/// (one fsync on SQLite) per batch, small enough to report progress and to keep the write lock
/// for only milliseconds.
pub const IMPORT_BATCH_ROWS: usize = 5_000;

/// Rows per multi-row INSERT inside a batch: 9,000 parameters, below SQLite's limit of 32,766
/// (and PostgreSQL's 65,535) per statement.
const IMPORT_ROWS_PER_STATEMENT: usize = 1_000;
/// Values bound per contact row.
const CONTACT_PARAMETERS: usize = 9;
/// SQLite refuses statements with more bound parameters than this (PostgreSQL: 65,535).
const MAX_BOUND_PARAMETERS: usize = 32_766;
const _: () = assert!(CONTACT_PARAMETERS * IMPORT_ROWS_PER_STATEMENT <= MAX_BOUND_PARAMETERS);

/// SQLite: take the write lock at BEGIN. A transaction that reads before it writes then sees the
/// newest commit and cannot fail with SQLITE_BUSY_SNAPSHOT when it starts writing; waiting for
/// another writer (another pool, another process) goes through busy_timeout.
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";
/// PostgreSQL: every statement sees all commits made before it started. `claim_contact` relies
/// on that after it has its row lock, so it must not inherit a server-wide default of
/// REPEATABLE READ (whose snapshot would predate the lock and miss the previous holder's claim).
const PG_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Runs `$body` inside a transaction on whichever backend is active and commits it; evaluates
/// to `Result<T, sqlx::Error>`. `$tx` names the transaction inside the body (use `&mut *$tx`
/// as the executor). An error or an early `return` inside the body drops the transaction,
/// which rolls it back.
macro_rules! in_transaction {
    ($store:expr, $tx:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(pool) => {
                async {
                    let mut $tx = pool.begin_with(SQLITE_BEGIN).await?;
                    let out = $body;
                    $tx.commit().await?;
                    Ok::<_, sqlx::Error>(out)
                }
                .await
            }
            Backend::Postgres(pool) => {
                async {
                    let mut $tx = pool.begin_with(PG_BEGIN).await?;
                    let out = $body;
                    $tx.commit().await?;
                    Ok::<_, sqlx::Error>(out)
                }
                .await
            }
        }
    };
}

/// Like the store's `on_pool!`: evaluates `$body` with `$pool` bound to the concrete pool.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Declares a closed set of states stored as lower-case text, with `as_str` and `parse`.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The inverse of `as_str`; `None` for any other text.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a campaign is in its life.
    CampaignStatus {
        Draft = "draft",
        Running = "running",
        Paused = "paused",
        Stopped = "stopped",
        Completed = "completed",
    }
}

text_enum! {
    /// Where one contact of a campaign is.
    ContactState {
        /// Waiting to be dialled at `next_attempt_at_ms` (first try or a retry).
        Pending = "pending",
        /// A call is in progress.
        Dialling = "dialling",
        /// Finished: reached, or out of retries.
        Done = "done",
        /// Never to be dialled by this campaign (no consent, opted out, invalid number, ...).
        Skipped = "skipped",
    }
}

text_enum! {
    /// A fatigue claim's state.
    ClaimState {
        /// Taken before dialling; the call has not ended yet. Counts under every rule.
        Pending = "pending",
        /// The call reached the customer at least as far as [`Reach::Attempted`]; it counts
        /// under the rules whose counting its reach satisfies.
        Counted = "counted",
        /// The call never reached the phone ([`Reach::NotReached`]) or was never placed: it
        /// counts under no rule.
        Released = "released",
    }
}

text_enum! {
    /// How far a call got, for fatigue counting. Ordered: each level includes the ones before
    /// it, as the counting settings do (`attempted` counts every call that reached at least
    /// `Attempted`, `answered_by_person` only `AnsweredByPerson`). The names of the last three
    /// are the counting settings' names in campaign files and the policy
    /// (`ContactCounting::as_str`), so `Reach::parse(counting.as_str())` converts.
    Reach {
        /// The phone did not ring: trunk or network failure, invalid number, never dialled.
        NotReached = "not_reached",
        /// The phone may have rung: busy, no answer.
        Attempted = "attempted",
        /// An answering machine answered (message left or not).
        Answered = "answered",
        /// A person answered; also an interrupted call, which may have reached one.
        AnsweredByPerson = "answered_by_person",
    }
}

impl Reach {
    /// Stored in `contact_ledger.reach`; compared with a rule's threshold in SQL.
    pub fn rank(self) -> i64 {
        match self {
            Reach::NotReached => 0,
            Reach::Attempted => 1,
            Reach::Answered => 2,
            Reach::AnsweredByPerson => 3,
        }
    }

    pub fn from_rank(rank: i64) -> Option<Reach> {
        match rank {
            0 => Some(Reach::NotReached),
            1 => Some(Reach::Attempted),
            2 => Some(Reach::Answered),
            3 => Some(Reach::AnsweredByPerson),
            _ => None,
        }
    }

    /// Whether a call that got this far counts under a rule counting from `threshold`.
    pub fn counts_under(self, threshold: Reach) -> bool {
        self != Reach::NotReached && self.rank() >= threshold.rank()
    }
}

text_enum! {
    /// What the dialer decided about a contact, for the audit trail.
    AuditDecision {
        Dialled = "dialled",
        Skipped = "skipped",
        Retried = "retried",
        Completed = "completed",
        Waiting = "waiting",
    }
}

/// At most `max_contacts` contacts per customer in any window of `window_ms`, across all
/// campaigns, where a contact is a call that got at least as far as `counts_from` (the
/// counting setting: `Reach::parse(counting.as_str())`). All are meaningful by construction: a
/// rule that allows nothing, limits nothing or counts nothing is a configuration error for the
/// caller to report, not something to enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatigueRule {
    max_contacts: NonZeroU32,
    window_ms: i64,
    counts_from: Reach,
}

impl FatigueRule {
    /// `None` unless `max_contacts >= 1`, `window_ms >= 1` and `counts_from` is not
    /// `Reach::NotReached`.
    pub fn new(max_contacts: u32, window_ms: i64, counts_from: Reach) -> Option<Self> {
        let max_contacts = NonZeroU32::new(max_contacts)?;
        (window_ms > 0 && counts_from != Reach::NotReached).then_some(Self {
            max_contacts,
            window_ms,
            counts_from,
        })
    }

    pub fn counts_from(self) -> Reach {
        self.counts_from
    }

    pub fn max_contacts(self) -> NonZeroU32 {
        self.max_contacts
    }

    pub fn window_ms(self) -> i64 {
        self.window_ms
    }
}

/// The answer of [`Store::claim_contact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ClaimOutcome {
    /// The customer may be dialled; the claim counts against the limit until released.
    Claimed { claim_id: i64 },
    /// The limit is reached. `last_contact_ms`: the newest claim that counts.
    /// `next_allowed_ms`: the first instant a claim can succeed if no other claim is taken
    /// and none of the counting ones is released meanwhile (a release makes it earlier).
    Fatigued {
        last_contact_ms: i64,
        next_allowed_ms: i64,
    },
}

/// The answer of [`Store::resolve_claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ClaimResolution {
    Resolved,
    /// The claim was already resolved; it is left as it was.
    AlreadyResolved {
        state: ClaimState,
    },
    /// A call was placed under this claim: only `record_attempt_end` (or crash recovery)
    /// resolves it, from what the call did.
    CallInProgress {
        attempt_id: i64,
    },
    NoSuchClaim,
}

/// The answer of [`Store::record_attempt_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum AttemptStarted {
    Started {
        attempt_id: i64,
    },
    /// The claim is unknown, resolved, or already used by another attempt: do not dial.
    ClaimNotPending,
}

/// A campaign as registered from its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignRow {
    pub id: String,
    pub name: String,
    pub file: String,
    pub status: CampaignStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One valid row of a contacts CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContact {
    /// The customer's identity across campaigns: the fatigue limit is per customer id.
    pub customer_id: String,
    /// E.164.
    pub phone: String,
    /// IANA time zone name.
    pub tz: String,
    pub consent: Option<bool>,
    /// YYYY-MM-DD.
    pub birth_date: Option<String>,
    pub segment: Option<String>,
    /// Message fields (`name`, `amount`, `expiry_date`, ...), stored as a JSON object.
    pub fields: BTreeMap<String, String>,
    /// Line of the CSV this row came from (header = line 1), for reports.
    pub import_line: i64,
}

/// One contact of a campaign as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    pub id: i64,
    pub campaign_id: String,
    pub customer_id: String,
    pub phone: String,
    pub tz: String,
    pub consent: Option<bool>,
    pub birth_date: Option<String>,
    pub segment: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub import_line: i64,
    pub state: ContactState,
    pub next_attempt_at_ms: i64,
    /// Attempts started so far.
    pub attempts: i64,
    /// Outcome of the newest ended attempt.
    pub last_outcome: Option<String>,
}

/// A fatigue claim that counts against a rule (see [`Store::counted_contacts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub claim_id: i64,
    pub campaign_id: String,
    pub claimed_at_ms: i64,
    /// `Pending` (call not ended yet) or `Counted`.
    pub state: ClaimState,
    /// How far the call got; `None` while pending.
    pub reach: Option<Reach>,
}

/// What is known when the dialer starts a call under a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStart {
    /// This appliance's name; crash recovery closes only its own attempts.
    pub node: String,
    pub phone: String,
    /// SIP Call-ID of the INVITE.
    pub call_id: Option<String>,
    pub started_at_ms: i64,
}

/// What is known when the call is over.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub ended_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    /// The policy's outcome name (`answered_person`, `busy`, `no_answer`, `failed`, ...).
    pub outcome: String,
    /// Final SIP response status, if any.
    pub sip_status: Option<u16>,
    /// human|machine|unknown
    pub amd_decision: Option<String>,
    /// 0.0 ..= 1.0
    pub amd_confidence: Option<f64>,
    /// How far the call got; the claim keeps it, and every later fatigue check of this
    /// customer compares it with its own rule's counting.
    pub reach: Reach,
}

/// One attempt, for `campaign report --csv`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    pub id: i64,
    pub campaign_id: String,
    pub customer_id: String,
    pub phone: String,
    pub node: String,
    pub claim_id: i64,
    pub started_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub call_id: Option<String>,
    pub outcome: Option<String>,
    pub sip_status: Option<i64>,
    pub amd_decision: Option<String>,
    pub amd_confidence: Option<f64>,
    /// Whether the call counted against its own campaign's fatigue rule.
    pub counted_as_contact: Option<bool>,
}

/// Progress of one campaign for `campaign status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignCounts {
    pub contacts_total: i64,
    /// Contact state (`pending`, `dialling`, `done`, `skipped`) → number of contacts.
    pub contacts_by_state: BTreeMap<String, i64>,
    /// Attempt outcome → number of attempts; calls still up are under `in-progress`.
    pub attempts_by_outcome: BTreeMap<String, i64>,
}

/// One audit decision to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub campaign_id: String,
    pub customer_id: String,
    pub decision: AuditDecision,
    /// Human-readable: "fatigue: contacted 2024-05-01T10:00Z, next allowed ...".
    pub reason: String,
    /// The rule that decided: fatigue, window, dnc, consent, retry, ...
    pub rule: Option<String>,
}

/// One audit row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at_ms: i64,
    pub campaign_id: String,
    pub customer_id: String,
    pub decision: AuditDecision,
    pub reason: String,
    pub rule: Option<String>,
}

/// A planner decision to store: the contact moves (if it is still as read) and, if it moved,
/// the decision's audit row is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactMove {
    pub contact_id: i64,
    /// The state and attempt count the planner read.
    pub from: ContactState,
    pub attempts: i64,
    pub to: ContactState,
    pub next_attempt_at_ms: i64,
    pub audit: AuditEntry,
}

/// What [`Store::close_interrupted_attempts`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InterruptedSummary {
    /// Attempts without an end, now outcome `interrupted`.
    pub attempts_closed: u64,
    /// Their pending claims, now `counted`.
    pub claims_counted: u64,
    /// Pending claims that never got an attempt (no INVITE was sent), now `released`.
    pub claims_released: u64,
    /// Contacts left in `dialling` by this node's calls, back to `pending` (due now).
    pub contacts_requeued: u64,
}

#[derive(sqlx::FromRow)]
struct CampaignRecord {
    id: String,
    name: String,
    file: String,
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ContactRecord {
    id: i64,
    campaign_id: String,
    customer_id: String,
    phone: String,
    tz: String,
    consent: Option<bool>,
    birth_date: Option<String>,
    segment: Option<String>,
    fields: String,
    import_line: i64,
    state: String,
    next_attempt_at_ms: i64,
    attempts: i64,
    last_outcome: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CustomerLedgerRecord {
    customer_id: String,
    id: i64,
    campaign_id: String,
    claimed_at_ms: i64,
    state: String,
    reach: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LedgerRecord {
    id: i64,
    campaign_id: String,
    claimed_at_ms: i64,
    state: String,
    reach: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct AuditRecord {
    id: i64,
    at_ms: i64,
    campaign_id: String,
    customer_id: String,
    decision: String,
    reason: String,
    rule: Option<String>,
}

const UPSERT_CAMPAIGN: &str =
    "INSERT INTO campaigns (id, name, file, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $4) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name, file = excluded.file, \
     updated_at_ms = excluded.updated_at_ms";
const SET_CAMPAIGN_STATUS: &str =
    "UPDATE campaigns SET status = $2, updated_at_ms = $3 WHERE id = $1";
const CAMPAIGN_BY_ID: &str = "SELECT id, name, file, status, created_at_ms, updated_at_ms \
     FROM campaigns WHERE id = $1";
const LIST_CAMPAIGNS: &str = "SELECT id, name, file, status, created_at_ms, updated_at_ms \
     FROM campaigns ORDER BY id";

const DUE_CONTACTS: &str = "SELECT id, campaign_id, customer_id, phone, tz, consent, birth_date, \
     segment, fields, import_line, state, next_attempt_at_ms, attempts, last_outcome \
     FROM contacts WHERE campaign_id = $1 AND state = 'pending' AND next_attempt_at_ms <= $2 \
     ORDER BY next_attempt_at_ms, id LIMIT $3";
const CONTACT_BY_CUSTOMER: &str = "SELECT id, campaign_id, customer_id, phone, tz, consent, \
     birth_date, segment, fields, import_line, state, next_attempt_at_ms, attempts, last_outcome \
     FROM contacts WHERE campaign_id = $1 AND customer_id = $2";
const SET_CONTACT_STATE: &str =
    "UPDATE contacts SET state = $2, next_attempt_at_ms = $3 WHERE id = $1";
const MOVE_CONTACT_FROM: &str =
    "UPDATE contacts SET state = $2, next_attempt_at_ms = $3 WHERE id = $1 AND state = $4 \
     AND attempts = $5";

const INSERT_CUSTOMER_LOCK: &str =
    "INSERT INTO customer_locks (customer_id) VALUES ($1) ON CONFLICT (customer_id) DO NOTHING";
/// Blocks until every other transaction holding this customer's row lock has ended.
const LOCK_CUSTOMER_PG: &str =
    "SELECT customer_id FROM customer_locks WHERE customer_id = $1 FOR UPDATE";
/// SQLite has no row locks (nor FOR UPDATE): BEGIN IMMEDIATE already holds the database's
/// write lock, which serialises every claim. The same lookup keeps both code paths alike.
const LOCK_CUSTOMER_SQLITE: &str = "SELECT customer_id FROM customer_locks WHERE customer_id = $1";
/// Claims that count at `now` under a rule counting from reach `$3`: pending, or reached at
/// least that far, and claimed after `now - window`. Claims stamped later than `now` (another
/// node's clock running ahead) count too.
const CLAIMS_IN_WINDOW: &str = "SELECT claimed_at_ms FROM contact_ledger \
     WHERE customer_id = $1 AND state <> 'released' AND claimed_at_ms > $2 \
     AND (state = 'pending' OR reach >= $3) \
     ORDER BY claimed_at_ms DESC LIMIT $4";
const INSERT_CLAIM: &str = "INSERT INTO contact_ledger \
     (customer_id, campaign_id, node, claimed_at_ms, state) \
     VALUES ($1, $2, $3, $4, 'pending') RETURNING id";
const RESOLVE_CLAIM: &str = "UPDATE contact_ledger SET state = $2, reach = $3, \
     resolved_at_ms = $4 WHERE id = $1 AND state = 'pending' AND attempt_id IS NULL";
const CLAIM_STATUS: &str = "SELECT state, attempt_id FROM contact_ledger WHERE id = $1";
const COUNTED_CONTACTS: &str = "SELECT id, campaign_id, claimed_at_ms, state, reach \
     FROM contact_ledger WHERE customer_id = $1 AND state <> 'released' AND claimed_at_ms > $2 \
     AND (state = 'pending' OR reach >= $3) ORDER BY claimed_at_ms, id";

/// `COUNTED_CONTACTS` for a list of customers (`{list}`: a JSON array or an array parameter).
const COUNTED_AMONG_SQLITE: &str = "SELECT customer_id, id, campaign_id, claimed_at_ms, state, \
     reach FROM contact_ledger WHERE customer_id IN (SELECT value FROM json_each($1)) \
     AND state <> 'released' AND claimed_at_ms > $2 AND (state = 'pending' OR reach >= $3) \
     ORDER BY claimed_at_ms, id";
const COUNTED_AMONG_PG: &str = "SELECT customer_id, id, campaign_id, claimed_at_ms, state, \
     reach FROM contact_ledger WHERE customer_id = ANY($1) \
     AND state <> 'released' AND claimed_at_ms > $2 AND (state = 'pending' OR reach >= $3) \
     ORDER BY claimed_at_ms, id";
const ATTEMPTS_AMONG_SQLITE: &str = "SELECT customer_id, started_at_ms, outcome FROM attempts \
     WHERE campaign_id = $1 AND customer_id IN (SELECT value FROM json_each($2)) \
     AND outcome IS NOT NULL ORDER BY started_at_ms, id";
const ATTEMPTS_AMONG_PG: &str = "SELECT customer_id, started_at_ms, outcome FROM attempts \
     WHERE campaign_id = $1 AND customer_id = ANY($2) AND outcome IS NOT NULL \
     ORDER BY started_at_ms, id";

const INSERT_ATTEMPT: &str = "INSERT INTO attempts \
     (campaign_id, customer_id, phone, node, claim_id, started_at_ms, call_id) \
     SELECT campaign_id, customer_id, $2, $3, id, $4, $5 FROM contact_ledger \
     WHERE id = $1 AND state = 'pending' AND attempt_id IS NULL \
     RETURNING id, campaign_id, customer_id";
/// The serialisation point of `record_attempt_start`: on PostgreSQL an UPDATE waits for a
/// concurrent resolve of the same claim and re-checks the condition, so a claim released
/// meanwhile makes this touch no row and the attempt is rolled back.
const LINK_CLAIM: &str = "UPDATE contact_ledger SET attempt_id = $2 \
     WHERE id = $1 AND state = 'pending' AND attempt_id IS NULL";
const MARK_DIALLING: &str = "UPDATE contacts SET state = 'dialling', attempts = attempts + 1 \
     WHERE campaign_id = $1 AND customer_id = $2";
const END_ATTEMPT: &str = "UPDATE attempts SET ended_at_ms = $2, \
     answered_at_ms = COALESCE($3, answered_at_ms), outcome = $4, sip_status = $5, \
     amd_decision = $6, amd_confidence = $7, counted_as_contact = $8 \
     WHERE id = $1 AND ended_at_ms IS NULL RETURNING claim_id, campaign_id, customer_id";
const RESOLVE_ATTEMPT_CLAIM: &str = "UPDATE contact_ledger SET state = $2, reach = $3, \
     resolved_at_ms = $4 WHERE id = $1 AND state = 'pending'";
/// The contact goes back to `pending`, due at the call's end: the planner decides again (retry,
/// done, skipped) from the ledger, with the same rules as every other decision.
const SET_LAST_OUTCOME: &str = "UPDATE contacts SET last_outcome = $3, \
     state = CASE WHEN state = 'dialling' THEN 'pending' ELSE state END, \
     next_attempt_at_ms = CASE WHEN state = 'dialling' THEN $4 ELSE next_attempt_at_ms END \
     WHERE campaign_id = $1 AND customer_id = $2";
const ATTEMPT_ANSWERED: &str = "UPDATE attempts SET answered_at_ms = $2 \
     WHERE id = $1 AND ended_at_ms IS NULL AND answered_at_ms IS NULL";
const CONTACT_ATTEMPTS: &str = "SELECT started_at_ms, outcome FROM attempts \
     WHERE campaign_id = $1 AND customer_id = $2 AND outcome IS NOT NULL ORDER BY started_at_ms, id";
const REPORT_ATTEMPTS: &str = "SELECT id, campaign_id, customer_id, phone, node, claim_id, \
     started_at_ms, answered_at_ms, ended_at_ms, call_id, outcome, sip_status, amd_decision, \
     amd_confidence, counted_as_contact FROM attempts WHERE campaign_id = $1 \
     ORDER BY started_at_ms, id";
const COUNT_CONTACTS_BY_STATE: &str =
    "SELECT state, COUNT(*) FROM contacts WHERE campaign_id = $1 GROUP BY state";
const COUNT_ATTEMPTS_BY_OUTCOME: &str = "SELECT COALESCE(outcome, 'in-progress'), COUNT(*) \
     FROM attempts WHERE campaign_id = $1 GROUP BY COALESCE(outcome, 'in-progress')";

// Crash recovery, in this order inside one transaction (see close_interrupted_attempts).
const INTERRUPTED_LAST_OUTCOME: &str = "UPDATE contacts SET last_outcome = 'interrupted' \
     WHERE EXISTS (SELECT 1 FROM attempts a WHERE a.node = $1 AND a.ended_at_ms IS NULL \
     AND a.campaign_id = contacts.campaign_id AND a.customer_id = contacts.customer_id)";
/// Reach 3 is `Reach::AnsweredByPerson`, which counts under every rule.
const COUNT_INTERRUPTED_CLAIMS: &str = "UPDATE contact_ledger SET state = 'counted', \
     reach = 3, resolved_at_ms = $2 WHERE state = 'pending' AND id IN \
     (SELECT claim_id FROM attempts WHERE node = $1 AND ended_at_ms IS NULL)";
/// Reach 0 is `Reach::NotReached`: no INVITE was sent under these claims.
const RELEASE_UNUSED_CLAIMS: &str = "UPDATE contact_ledger SET state = 'released', \
     reach = 0, resolved_at_ms = $2 WHERE node = $1 AND state = 'pending' AND attempt_id IS NULL";
const CLOSE_OPEN_ATTEMPTS: &str = "UPDATE attempts SET ended_at_ms = $2, \
     outcome = 'interrupted', counted_as_contact = $3 WHERE node = $1 AND ended_at_ms IS NULL";
/// Contacts left `dialling` whose newest attempt is this node's and has ended (all of them
/// once the steps above ran): other nodes recover their own.
const REQUEUE_DIALLING: &str = "UPDATE contacts SET state = 'pending', next_attempt_at_ms = $2 \
     WHERE state = 'dialling' AND NOT EXISTS (SELECT 1 FROM attempts a \
     WHERE a.ended_at_ms IS NULL AND a.campaign_id = contacts.campaign_id \
     AND a.customer_id = contacts.customer_id) \
     AND (SELECT a.node FROM attempts a WHERE a.campaign_id = contacts.campaign_id \
     AND a.customer_id = contacts.customer_id ORDER BY a.id DESC LIMIT 1) = $1";

const INSERT_AUDIT: &str = "INSERT INTO audit \
     (at_ms, campaign_id, customer_id, decision, reason, rule) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const AUDIT_FOR_CAMPAIGN: &str = "SELECT id, at_ms, campaign_id, customer_id, decision, reason, \
     rule FROM audit WHERE campaign_id = $1 ORDER BY id";
/// Rows per multi-row audit INSERT.
const AUDIT_ROWS_PER_STATEMENT: usize = 1_000;
/// Values bound per audit row.
const AUDIT_PARAMETERS: usize = 6;
const _: () = assert!(AUDIT_PARAMETERS * AUDIT_ROWS_PER_STATEMENT <= MAX_BOUND_PARAMETERS);

/// How a multi-row INSERT spells its parameters. PostgreSQL only knows `$N`. SQLite gets
/// anonymous `?`: sqlx binds each `$N` by asking SQLite for its name, which SQLite answers with a
/// linear scan, so `$N` costs time quadratic in the parameter count (70 % of the import time
/// with 9,000 parameters per statement), while `?` binds by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    Numbered,
    Anonymous,
}

/// `{head} VALUES (…), (…)` with `rows` tuples of `per_row` parameters, numbered row by row.
fn multi_row_insert(head: &str, per_row: usize, rows: usize, placeholders: Placeholders) -> String {
    let mut sql = String::with_capacity(head.len() + 16 + rows * per_row * 7);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    let mut n = 0_usize;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..per_row {
            if col > 0 {
                sql.push_str(", ");
            }
            n += 1;
            match placeholders {
                Placeholders::Numbered => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
                Placeholders::Anonymous => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql
}

/// The contacts INSERT for `rows` rows; a customer already in the campaign is skipped.
fn insert_contacts_sql(rows: usize, placeholders: Placeholders) -> String {
    let mut sql = multi_row_insert(
        "INSERT INTO contacts (campaign_id, customer_id, phone, tz, consent, birth_date, \
         segment, fields, import_line)",
        CONTACT_PARAMETERS,
        rows,
        placeholders,
    );
    sql.push_str(" ON CONFLICT (campaign_id, customer_id) DO NOTHING");
    sql
}

/// PostgreSQL's bulk import: the batch as column arrays, unnested into rows in order (so the
/// first of two rows for one customer wins, as on SQLite).
const IMPORT_CONTACTS_PG: &str = "INSERT INTO contacts (campaign_id, customer_id, phone, tz, \
     consent, birth_date, segment, fields, import_line) \
     SELECT $1, c.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[], \
     $7::text[], $8::text[], $9::bigint[]) AS c \
     ON CONFLICT (campaign_id, customer_id) DO NOTHING";

/// The audit INSERT for `rows` rows.
fn insert_audit_sql(rows: usize, placeholders: Placeholders) -> String {
    multi_row_insert(
        "INSERT INTO audit (at_ms, campaign_id, customer_id, decision, reason, rule)",
        AUDIT_PARAMETERS,
        rows,
        placeholders,
    )
}

/// A resolved claim's state: released when the call never reached the phone.
fn claim_state_for(reach: Reach) -> ClaimState {
    if reach == Reach::NotReached {
        ClaimState::Released
    } else {
        ClaimState::Counted
    }
}

/// Message fields as a JSON object. Building a `Value` and printing it cannot fail, unlike
/// `serde_json::to_string`.
fn encode_fields(fields: &BTreeMap<String, String>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(object).to_string()
}

impl Store {
    fn bulk_placeholders(&self) -> Placeholders {
        match &self.backend {
            Backend::Sqlite(_) => Placeholders::Anonymous,
            Backend::Postgres(_) => Placeholders::Numbered,
        }
    }

    fn ledger_corrupt(
        &self,
        op: &'static str,
        id: i64,
        column: &'static str,
        detail: String,
    ) -> StoreError {
        StoreError::Corrupt {
            op,
            url: self.url.to_string(),
            id,
            column,
            detail,
        }
    }

    /// Registers a campaign, or updates its name and file if it exists. The status and the
    /// creation time of an existing campaign are kept.
    pub async fn upsert_campaign(
        &self,
        id: &str,
        name: &str,
        file: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => sqlx::query(UPSERT_CAMPAIGN)
            .bind(id)
            .bind(name)
            .bind(file)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(self.query_err("upsert_campaign"))
    }

    /// Sets a campaign's status. `false`: no campaign with this id.
    pub async fn set_campaign_status(
        &self,
        id: &str,
        status: CampaignStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => sqlx::query(SET_CAMPAIGN_STATUS)
            .bind(id)
            .bind(status.as_str())
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
        .map_err(self.query_err("set_campaign_status"))
    }

    pub async fn campaign(&self, id: &str) -> Result<Option<CampaignRow>, StoreError> {
        const OP: &str = "campaign";
        let record = with_pool!(self, pool => sqlx::query_as::<_, CampaignRecord>(CAMPAIGN_BY_ID)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(self.query_err(OP))?;
        record.map(|r| self.campaign_row(OP, r)).transpose()
    }

    /// Every campaign, by id.
    pub async fn campaigns(&self) -> Result<Vec<CampaignRow>, StoreError> {
        const OP: &str = "campaigns";
        let records = with_pool!(self, pool => sqlx::query_as::<_, CampaignRecord>(LIST_CAMPAIGNS)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records
            .into_iter()
            .map(|r| self.campaign_row(OP, r))
            .collect()
    }

    fn campaign_row(&self, op: &'static str, r: CampaignRecord) -> Result<CampaignRow, StoreError> {
        let status = CampaignStatus::parse(&r.status).ok_or_else(|| {
            // Campaigns are keyed by text; the row number is unknown here.
            self.ledger_corrupt(
                op,
                0,
                "status",
                format!("campaign {:?}: unknown status {:?}", r.id, r.status),
            )
        })?;
        Ok(CampaignRow {
            id: r.id,
            name: r.name,
            file: r.file,
            status,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        })
    }

    /// Imports one batch of contacts (aim for [`IMPORT_BATCH_ROWS`]) in one transaction, as
    /// multi-row INSERTs. A customer already in the campaign is left untouched (re-importing a
    /// file is harmless), as is a repeat of a customer inside the batch (the first row wins).
    /// Returns how many contacts were added. Fails if the campaign is not registered.
    pub async fn import_contacts_batch(
        &self,
        campaign_id: &str,
        rows: &[NewContact],
    ) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        const OP: &str = "import_contacts_batch";
        let fields: Vec<String> = rows.iter().map(|r| encode_fields(&r.fields)).collect();
        if let Backend::Postgres(pool) = &self.backend {
            // One statement binding one array per column instead of 1,000-row VALUES lists
            // of 9,000 parameters, each parsed and planned: 1 M rows took 23 s instead of 32 s.
            let column = |f: fn(&NewContact) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            return sqlx::query(IMPORT_CONTACTS_PG)
                .bind(campaign_id)
                .bind(column(|r| r.customer_id.as_str()))
                .bind(column(|r| r.phone.as_str()))
                .bind(column(|r| r.tz.as_str()))
                .bind(
                    rows.iter()
                        .map(|r| r.consent)
                        .collect::<Vec<Option<bool>>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.birth_date.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.segment.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(fields.iter().map(String::as_str).collect::<Vec<&str>>())
                .bind(rows.iter().map(|r| r.import_line).collect::<Vec<i64>>())
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(self.query_err(OP));
        }
        let placeholders = self.bulk_placeholders();
        in_transaction!(self, tx => {
            let mut added = 0_u64;
            for (chunk, chunk_fields) in rows
                .chunks(IMPORT_ROWS_PER_STATEMENT)
                .zip(fields.chunks(IMPORT_ROWS_PER_STATEMENT))
            {
                let sql = insert_contacts_sql(chunk.len(), placeholders);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (r, f) in chunk.iter().zip(chunk_fields) {
                    q = q
                        .bind(campaign_id)
                        .bind(r.customer_id.as_str())
                        .bind(r.phone.as_str())
                        .bind(r.tz.as_str())
                        .bind(r.consent)
                        .bind(r.birth_date.as_deref())
                        .bind(r.segment.as_deref())
                        .bind(f.as_str())
                        .bind(r.import_line);
                }
                added = added.saturating_add(q.execute(&mut *tx).await?.rows_affected());
            }
            added
        })
        .map_err(self.query_err(OP))
    }

    /// Up to `limit` contacts of the campaign that are `pending` and due at `now_ms`
    /// (`next_attempt_at_ms <= now_ms`), oldest due first, then in import order.
    pub async fn due_contacts(
        &self,
        campaign_id: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<Contact>, StoreError> {
        const OP: &str = "due_contacts";
        let records = with_pool!(self, pool => sqlx::query_as::<_, ContactRecord>(DUE_CONTACTS)
            .bind(campaign_id)
            .bind(now_ms)
            .bind(limit.max(0))
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records
            .into_iter()
            .map(|r| self.contact_row(OP, r))
            .collect()
    }

    /// One contact of a campaign, by customer id.
    pub async fn contact_by_customer(
        &self,
        campaign_id: &str,
        customer_id: &str,
    ) -> Result<Option<Contact>, StoreError> {
        const OP: &str = "contact_by_customer";
        let record =
            with_pool!(self, pool => sqlx::query_as::<_, ContactRecord>(CONTACT_BY_CUSTOMER)
            .bind(campaign_id)
            .bind(customer_id)
            .fetch_optional(pool)
            .await)
            .map_err(self.query_err(OP))?;
        record.map(|r| self.contact_row(OP, r)).transpose()
    }

    /// Moves a contact after the policy decided (retry at `next_attempt_at_ms`, done,
    /// skipped). `false`: no contact with this id.
    pub async fn set_contact_state(
        &self,
        contact_id: i64,
        state: ContactState,
        next_attempt_at_ms: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => sqlx::query(SET_CONTACT_STATE)
            .bind(contact_id)
            .bind(state.as_str())
            .bind(next_attempt_at_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
        .map_err(self.query_err("set_contact_state"))
    }

    /// Moves a contact only if it is still as the planner read it: in state `from` with
    /// `attempts` attempts. Another node may have called it meanwhile (even a call already
    /// over): that call's end decides, not this stale decision. `false`: nothing changed.
    pub async fn move_contact_from(
        &self,
        contact_id: i64,
        from: ContactState,
        attempts: i64,
        to: ContactState,
        next_attempt_at_ms: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => sqlx::query(MOVE_CONTACT_FROM)
            .bind(contact_id)
            .bind(to.as_str())
            .bind(next_attempt_at_ms)
            .bind(from.as_str())
            .bind(attempts)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
        .map_err(self.query_err("move_contact_from"))
    }

    fn contact_row(&self, op: &'static str, r: ContactRecord) -> Result<Contact, StoreError> {
        let state = ContactState::parse(&r.state).ok_or_else(|| {
            self.ledger_corrupt(op, r.id, "state", format!("unknown state {:?}", r.state))
        })?;
        let fields: BTreeMap<String, String> = serde_json::from_str(&r.fields).map_err(|e| {
            self.ledger_corrupt(
                op,
                r.id,
                "fields",
                format!("not a JSON object of strings ({e})"),
            )
        })?;
        Ok(Contact {
            id: r.id,
            campaign_id: r.campaign_id,
            customer_id: r.customer_id,
            phone: r.phone,
            tz: r.tz,
            consent: r.consent,
            birth_date: r.birth_date,
            segment: r.segment,
            fields,
            import_line: r.import_line,
            state,
            next_attempt_at_ms: r.next_attempt_at_ms,
            attempts: r.attempts,
            last_outcome: r.last_outcome,
        })
    }

    /// Takes a fatigue claim on `customer_id` for a call of `campaign_id`, atomically: the
    /// claim is inserted only if fewer than `rule.max_contacts` claims of this customer, from
    /// any campaign and any node, count under the rule (pending, or resolved with a reach of
    /// at least `rule.counts_from`) with `claimed_at_ms` in `(now_ms - window_ms, ∞)`. So a
    /// contact at T blocks until T + window, exclusive: at exactly T + window the customer may
    /// be claimed again. Claims stamped after `now_ms` (a node whose clock runs ahead) count
    /// too.
    ///
    /// Two callers can never both succeed inside the window: SQLite runs the check and the
    /// insert under BEGIN IMMEDIATE (the database's single write lock, across processes);
    /// PostgreSQL under a row lock on `customer_locks` for this customer, in READ COMMITTED,
    /// so the count runs after the previous holder committed (docs/adr/0003-fatigue-ledger.md).
    ///
    /// `node` names this appliance: crash recovery releases its claims that never got a call.
    pub async fn claim_contact(
        &self,
        node: &str,
        customer_id: &str,
        campaign_id: &str,
        now_ms: i64,
        rule: FatigueRule,
    ) -> Result<ClaimOutcome, StoreError> {
        let after_ms = now_ms.saturating_sub(rule.window_ms);
        let max = rule.max_contacts.get();
        let lock_sql = match &self.backend {
            Backend::Sqlite(_) => LOCK_CUSTOMER_SQLITE,
            Backend::Postgres(_) => LOCK_CUSTOMER_PG,
        };
        in_transaction!(self, tx => {
            sqlx::query(INSERT_CUSTOMER_LOCK)
                .bind(customer_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(lock_sql)
                .bind(customer_id)
                .execute(&mut *tx)
                .await?;
            // Newest first, at most `max`: the count, the newest contact and the one whose
            // expiry frees a slot.
            let counting: Vec<i64> = sqlx::query_scalar(CLAIMS_IN_WINDOW)
                .bind(customer_id)
                .bind(after_ms)
                .bind(rule.counts_from.rank())
                .bind(i64::from(max))
                .fetch_all(&mut *tx)
                .await?;
            let full = u32::try_from(counting.len()).unwrap_or(u32::MAX) >= max;
            match (counting.first(), counting.last()) {
                (Some(&newest), Some(&freeing)) if full => ClaimOutcome::Fatigued {
                    last_contact_ms: newest,
                    next_allowed_ms: freeing.saturating_add(rule.window_ms),
                },
                _ => {
                    let claim_id: i64 = sqlx::query_scalar(INSERT_CLAIM)
                        .bind(customer_id)
                        .bind(campaign_id)
                        .bind(node)
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await?;
                    ClaimOutcome::Claimed { claim_id }
                }
            }
        })
        .map_err(self.query_err("claim_contact"))
    }

    /// Resolves a pending claim under which no call was placed, typically with `Reach::NotReached`
    /// (the call was not started after all: the window closed, the trunk was down): the claim
    /// is released and counts under no rule. A claim with a call is resolved by
    /// `record_attempt_end` from what the call did, never here (`CallInProgress`).
    pub async fn resolve_claim(
        &self,
        claim_id: i64,
        reach: Reach,
        at_ms: i64,
    ) -> Result<ClaimResolution, StoreError> {
        const OP: &str = "resolve_claim";
        let changed = with_pool!(self, pool => sqlx::query(RESOLVE_CLAIM)
            .bind(claim_id)
            .bind(claim_state_for(reach).as_str())
            .bind(reach.rank())
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(self.query_err(OP))?;
        if changed > 0 {
            return Ok(ClaimResolution::Resolved);
        }
        let status: Option<(String, Option<i64>)> =
            with_pool!(self, pool => sqlx::query_as(CLAIM_STATUS)
            .bind(claim_id)
            .fetch_optional(pool)
            .await)
            .map_err(self.query_err(OP))?;
        let Some((text, attempt_id)) = status else {
            return Ok(ClaimResolution::NoSuchClaim);
        };
        let state = ClaimState::parse(&text).ok_or_else(|| {
            self.ledger_corrupt(
                OP,
                claim_id,
                "state",
                format!("unknown claim state {text:?}"),
            )
        })?;
        // States only move forward (pending → counted | released, attempt_id set once), so a
        // claim still pending here has an attempt: without one the update above resolved it.
        Ok(match (state, attempt_id) {
            (ClaimState::Pending, Some(attempt_id)) => {
                ClaimResolution::CallInProgress { attempt_id }
            }
            (state, _) => ClaimResolution::AlreadyResolved { state },
        })
    }

    /// Claims of `customer_id` that count under a rule counting from `counts_from` (pending:
    /// call not ended yet, or resolved with at least that reach), across all campaigns,
    /// claimed strictly after `after_ms`, oldest first. With `after_ms = now - window` these
    /// are exactly the claims `claim_contact` counts at `now` for that rule (the policy's
    /// `History::counted_contacts`, already filtered by the counting rule).
    pub async fn counted_contacts(
        &self,
        customer_id: &str,
        after_ms: i64,
        counts_from: Reach,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        const OP: &str = "counted_contacts";
        let records = with_pool!(self, pool => sqlx::query_as::<_, LedgerRecord>(COUNTED_CONTACTS)
            .bind(customer_id)
            .bind(after_ms)
            .bind(counts_from.rank())
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records
            .into_iter()
            .map(|r| self.ledger_entry(OP, r.id, r.campaign_id, r.claimed_at_ms, &r.state, r.reach))
            .collect()
    }

    /// A claim row as a [`LedgerEntry`], refusing states and reaches this version does not know.
    fn ledger_entry(
        &self,
        op: &'static str,
        id: i64,
        campaign_id: String,
        claimed_at_ms: i64,
        state: &str,
        reach: Option<i64>,
    ) -> Result<LedgerEntry, StoreError> {
        let state = ClaimState::parse(state).ok_or_else(|| {
            self.ledger_corrupt(op, id, "state", format!("unknown claim state {state:?}"))
        })?;
        let reach = reach
            .map(|rank| {
                Reach::from_rank(rank).ok_or_else(|| {
                    self.ledger_corrupt(op, id, "reach", format!("unknown reach {rank}"))
                })
            })
            .transpose()?;
        Ok(LedgerEntry {
            claim_id: id,
            campaign_id,
            claimed_at_ms,
            state,
            reach,
        })
    }

    /// [`Store::counted_contacts`] for many customers in one query, by customer.
    pub async fn counted_contacts_among(
        &self,
        customers: &[String],
        after_ms: i64,
        counts_from: Reach,
    ) -> Result<std::collections::HashMap<String, Vec<LedgerEntry>>, StoreError> {
        const OP: &str = "counted_contacts_among";
        let mut out: std::collections::HashMap<String, Vec<LedgerEntry>> = Default::default();
        if customers.is_empty() {
            return Ok(out);
        }
        let records: Vec<CustomerLedgerRecord> = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_as(COUNTED_AMONG_SQLITE)
                    .bind(serde_json::to_string(customers).unwrap_or_else(|_| "[]".into()))
                    .bind(after_ms)
                    .bind(counts_from.rank())
                    .fetch_all(pool)
                    .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(COUNTED_AMONG_PG)
                    .bind(customers)
                    .bind(after_ms)
                    .bind(counts_from.rank())
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_err(OP))?;
        for r in records {
            let entry =
                self.ledger_entry(OP, r.id, r.campaign_id, r.claimed_at_ms, &r.state, r.reach)?;
            out.entry(r.customer_id).or_default().push(entry);
        }
        Ok(out)
    }

    /// [`Store::contact_attempts`] for many customers of one campaign, by customer.
    pub async fn contact_attempts_among(
        &self,
        campaign_id: &str,
        customers: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<(i64, String)>>, StoreError> {
        let mut out: std::collections::HashMap<String, Vec<(i64, String)>> = Default::default();
        if customers.is_empty() {
            return Ok(out);
        }
        let rows: Vec<(String, i64, String)> = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_as(ATTEMPTS_AMONG_SQLITE)
                    .bind(campaign_id)
                    .bind(serde_json::to_string(customers).unwrap_or_else(|_| "[]".into()))
                    .fetch_all(pool)
                    .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(ATTEMPTS_AMONG_PG)
                    .bind(campaign_id)
                    .bind(customers)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_err("contact_attempts_among"))?;
        for (customer, at, outcome) in rows {
            out.entry(customer).or_default().push((at, outcome));
        }
        Ok(out)
    }

    /// Stores a batch of planner decisions in one transaction: each contact moves only if it is
    /// still as the planner read it (see [`Store::move_contact_from`]), and only the moves that
    /// happened get their audit row, so the contact and its audit trail never disagree.
    /// Returns how many contacts moved.
    pub async fn settle_contacts(&self, moves: &[ContactMove]) -> Result<u64, StoreError> {
        if moves.is_empty() {
            return Ok(0);
        }
        let placeholders = self.bulk_placeholders();
        in_transaction!(self, tx => {
            let mut audits: Vec<&AuditEntry> = Vec::with_capacity(moves.len());
            for m in moves {
                let moved = sqlx::query(MOVE_CONTACT_FROM)
                    .bind(m.contact_id)
                    .bind(m.to.as_str())
                    .bind(m.next_attempt_at_ms)
                    .bind(m.from.as_str())
                    .bind(m.attempts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved > 0 {
                    audits.push(&m.audit);
                }
            }
            for chunk in audits.chunks(AUDIT_ROWS_PER_STATEMENT) {
                let sql = insert_audit_sql(chunk.len(), placeholders);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for e in chunk {
                    q = q
                        .bind(e.at_ms)
                        .bind(e.campaign_id.as_str())
                        .bind(e.customer_id.as_str())
                        .bind(e.decision.as_str())
                        .bind(e.reason.as_str())
                        .bind(e.rule.as_deref());
                }
                q.execute(&mut *tx).await?;
            }
            audits.len() as u64
        })
        .map_err(self.query_err("settle_contacts"))
    }

    /// Records a call placed under `claim_id` (the attempt takes the claim's customer and
    /// campaign), links the claim to it and marks the contact `dialling` with one more attempt,
    /// in one transaction. Commit this before sending the INVITE: crash recovery releases
    /// claims without an attempt as never dialled.
    pub async fn record_attempt_start(
        &self,
        claim_id: i64,
        start: &AttemptStart,
    ) -> Result<AttemptStarted, StoreError> {
        in_transaction!(self, tx => {
            let inserted: Option<(i64, String, String)> = sqlx::query_as(INSERT_ATTEMPT)
                .bind(claim_id)
                .bind(start.phone.as_str())
                .bind(start.node.as_str())
                .bind(start.started_at_ms)
                .bind(start.call_id.as_deref())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((attempt_id, campaign_id, customer_id)) = inserted else {
                return Ok(AttemptStarted::ClaimNotPending);
            };
            let linked = sqlx::query(LINK_CLAIM)
                .bind(claim_id)
                .bind(attempt_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if linked == 0 {
                // Resolved concurrently: dropping `tx` rolls the attempt back.
                return Ok(AttemptStarted::ClaimNotPending);
            }
            sqlx::query(MARK_DIALLING)
                .bind(campaign_id)
                .bind(customer_id)
                .execute(&mut *tx)
                .await?;
            AttemptStarted::Started { attempt_id }
        })
        .map_err(self.query_err("record_attempt_start"))
    }

    /// Records how the call ended, resolves its claim with the call's reach (`released` if
    /// it is `Reach::NotReached`, `counted` otherwise) and notes the outcome on the contact, in one
    /// transaction. `rule` is the campaign's own fatigue rule: the attempt row records whether
    /// the call counted under it, for reports. `false`: no open attempt with this id (unknown,
    /// or already ended, e.g. closed as interrupted by a restart).
    pub async fn record_attempt_end(
        &self,
        attempt_id: i64,
        end: &AttemptEnd,
        rule: FatigueRule,
    ) -> Result<bool, StoreError> {
        let claim_state = claim_state_for(end.reach);
        let counted_as_contact = end.reach.counts_under(rule.counts_from);
        in_transaction!(self, tx => {
            let ended: Option<(i64, String, String)> = sqlx::query_as(END_ATTEMPT)
                .bind(attempt_id)
                .bind(end.ended_at_ms)
                .bind(end.answered_at_ms)
                .bind(end.outcome.as_str())
                .bind(end.sip_status.map(i64::from))
                .bind(end.amd_decision.as_deref())
                .bind(end.amd_confidence)
                .bind(counted_as_contact)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((claim_id, campaign_id, customer_id)) = ended else {
                return Ok(false);
            };
            sqlx::query(RESOLVE_ATTEMPT_CLAIM)
                .bind(claim_id)
                .bind(claim_state.as_str())
                .bind(end.reach.rank())
                .bind(end.ended_at_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SET_LAST_OUTCOME)
                .bind(campaign_id)
                .bind(customer_id)
                .bind(end.outcome.as_str())
                .bind(end.ended_at_ms)
                .execute(&mut *tx)
                .await?;
            true
        })
        .map_err(self.query_err("record_attempt_end"))
    }

    /// Every attempt of the campaign, in start order (for `campaign report --csv`).
    pub async fn attempts_for_report(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        with_pool!(self, pool => sqlx::query_as::<_, AttemptRow>(REPORT_ATTEMPTS)
            .bind(campaign_id)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err("attempts_for_report"))
    }

    /// Notes the answer of a call in progress, so a crash mid-call still shows it was answered.
    /// `false`: no open, unanswered attempt with this id.
    pub async fn record_attempt_answered(
        &self,
        attempt_id: i64,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => sqlx::query(ATTEMPT_ANSWERED)
            .bind(attempt_id)
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0))
        .map_err(self.query_err("record_attempt_answered"))
    }

    /// The ended attempts of one customer in one campaign, oldest first: (started at, outcome).
    pub async fn contact_attempts(
        &self,
        campaign_id: &str,
        customer_id: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        with_pool!(self, pool => sqlx::query_as::<_, (i64, String)>(CONTACT_ATTEMPTS)
            .bind(campaign_id)
            .bind(customer_id)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err("contact_attempts"))
    }

    /// Contacts by state and attempts by outcome, for `campaign status`.
    pub async fn campaign_counts(&self, campaign_id: &str) -> Result<CampaignCounts, StoreError> {
        const OP: &str = "campaign_counts";
        let by_state: Vec<(String, i64)> =
            with_pool!(self, pool => sqlx::query_as(COUNT_CONTACTS_BY_STATE)
            .bind(campaign_id)
            .fetch_all(pool)
            .await)
            .map_err(self.query_err(OP))?;
        let by_outcome: Vec<(String, i64)> =
            with_pool!(self, pool => sqlx::query_as(COUNT_ATTEMPTS_BY_OUTCOME)
            .bind(campaign_id)
            .fetch_all(pool)
            .await)
            .map_err(self.query_err(OP))?;
        Ok(CampaignCounts {
            contacts_total: by_state
                .iter()
                .fold(0_i64, |sum, (_, n)| sum.saturating_add(*n)),
            contacts_by_state: by_state.into_iter().collect(),
            attempts_by_outcome: by_outcome.into_iter().collect(),
        })
    }

    /// Crash recovery for `node`; call at start-up, before its dialer runs. In one
    /// transaction:
    /// - its attempts without an end become outcome `interrupted`, ended at `now_ms`, counted
    ///   as a contact, and their pending claims become `counted` with reach
    ///   `AnsweredByPerson`, which counts under every rule: the callee may have answered
    ///   before the crash, and counting is the side that cannot break the fatigue limit;
    /// - its pending claims that never got an attempt are `released`: no INVITE was sent
    ///   (the attempt is committed before the INVITE goes out);
    /// - contacts left `dialling` by its calls (now all ended) go back to `pending`, due at
    ///   `now_ms`, with `last_outcome = 'interrupted'` where their call was cut: the planner
    ///   applies the retry rules again, and the counted claim keeps fatigue enforced.
    ///
    /// Other nodes' calls, claims and contacts (shared PostgreSQL) are not touched.
    pub async fn close_interrupted_attempts(
        &self,
        node: &str,
        now_ms: i64,
    ) -> Result<InterruptedSummary, StoreError> {
        in_transaction!(self, tx => {
            sqlx::query(INTERRUPTED_LAST_OUTCOME)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            let claims_counted = sqlx::query(COUNT_INTERRUPTED_CLAIMS)
                .bind(node)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let claims_released = sqlx::query(RELEASE_UNUSED_CLAIMS)
                .bind(node)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let attempts_closed = sqlx::query(CLOSE_OPEN_ATTEMPTS)
                .bind(node)
                .bind(now_ms)
                .bind(true)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let contacts_requeued = sqlx::query(REQUEUE_DIALLING)
                .bind(node)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            InterruptedSummary {
                attempts_closed,
                claims_counted,
                claims_released,
                contacts_requeued,
            }
        })
        .map_err(self.query_err("close_interrupted_attempts"))
    }

    /// Appends one decision to the audit trail and returns its id. Audit rows are never
    /// updated or deleted (the database refuses both). On SQLite this goes through the
    /// group-commit writer, so concurrent decisions share one fsync.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        const OP: &str = "append_audit";
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, OptText, Text};
            let args = vec![
                Int(entry.at_ms),
                Text(entry.campaign_id.clone()),
                Text(entry.customer_id.clone()),
                Text(entry.decision.as_str().to_owned()),
                Text(entry.reason.clone()),
                OptText(entry.rule.clone()),
            ];
            return w
                .write(writer::Write::new(INSERT_AUDIT, args, true))
                .await
                .map_err(self.query_err(OP));
        }
        with_pool!(self, pool => sqlx::query_scalar::<_, i64>(INSERT_AUDIT)
            .bind(entry.at_ms)
            .bind(entry.campaign_id.as_str())
            .bind(entry.customer_id.as_str())
            .bind(entry.decision.as_str())
            .bind(entry.reason.as_str())
            .bind(entry.rule.as_deref())
            .fetch_one(pool)
            .await)
        .map_err(self.query_err(OP))
    }

    /// Appends many decisions in one transaction (the planner skipping a batch of contacts).
    /// Returns how many rows were appended.
    pub async fn append_audit_batch(&self, entries: &[AuditEntry]) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let placeholders = self.bulk_placeholders();
        in_transaction!(self, tx => {
            let mut appended = 0_u64;
            for chunk in entries.chunks(AUDIT_ROWS_PER_STATEMENT) {
                let sql = insert_audit_sql(chunk.len(), placeholders);
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for e in chunk {
                    q = q
                        .bind(e.at_ms)
                        .bind(e.campaign_id.as_str())
                        .bind(e.customer_id.as_str())
                        .bind(e.decision.as_str())
                        .bind(e.reason.as_str())
                        .bind(e.rule.as_deref());
                }
                appended = appended.saturating_add(q.execute(&mut *tx).await?.rows_affected());
            }
            appended
        })
        .map_err(self.query_err("append_audit_batch"))
    }

    /// The campaign's audit trail, in append order.
    pub async fn audit_for_campaign(&self, campaign_id: &str) -> Result<Vec<AuditRow>, StoreError> {
        const OP: &str = "audit_for_campaign";
        let records = with_pool!(self, pool => sqlx::query_as::<_, AuditRecord>(AUDIT_FOR_CAMPAIGN)
            .bind(campaign_id)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records
            .into_iter()
            .map(|r| {
                let decision = AuditDecision::parse(&r.decision).ok_or_else(|| {
                    self.ledger_corrupt(
                        OP,
                        r.id,
                        "decision",
                        format!("unknown decision {:?}", r.decision),
                    )
                })?;
                Ok(AuditRow {
                    id: r.id,
                    at_ms: r.at_ms,
                    campaign_id: r.campaign_id,
                    customer_id: r.customer_id,
                    decision,
                    reason: r.reason,
                    rule: r.rule,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Each scenario takes a storage URL for a fresh, empty database and runs on SQLite
    //! below; `postgres_runs_the_ledger_scenarios` runs them on PostgreSQL when
    //! WARMLINE_TEST_POSTGRES_URL names a database it may create schemas in
    //! (scripts/setup-postgres.sh starts one).
    use super::*;
    use sqlx::postgres::PgPool;
    use std::sync::Arc;
    use tokio::sync::Barrier;

    const SECOND: i64 = 1_000;
    const HOUR: i64 = 3_600 * SECOND;
    const DAY: i64 = 24 * HOUR;
    const WEEK: i64 = 7 * DAY;
    const T0: i64 = 1_700_000_000_000;

    /// The default counting: answered by a person.
    fn rule(max: u32, window_ms: i64) -> FatigueRule {
        counting_rule(max, window_ms, Reach::AnsweredByPerson)
    }

    fn counting_rule(max: u32, window_ms: i64, counts_from: Reach) -> FatigueRule {
        FatigueRule::new(max, window_ms, counts_from)
            .unwrap_or_else(|| panic!("bad rule {max}/{window_ms}/{counts_from}"))
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/state/warmline.db", dir.path().display())
    }

    async fn open(url: &str) -> Store {
        match Store::open(url).await {
            Ok(store) => store,
            Err(e) => panic!("open {url}: {e}"),
        }
    }

    async fn campaign(store: &Store, id: &str) {
        store
            .upsert_campaign(
                id,
                &format!("{id} reminders"),
                &format!("campaigns/{id}.toml"),
                T0,
            )
            .await
            .expect("upsert campaign");
    }

    fn new_contact(customer: &str, line: i64) -> NewContact {
        NewContact {
            customer_id: customer.to_owned(),
            phone: format!("+4930{line:08}"),
            tz: "Europe/Berlin".to_owned(),
            consent: Some(true),
            birth_date: None,
            segment: None,
            fields: BTreeMap::from([
                ("name".to_owned(), format!("Customer {line}")),
                ("amount".to_owned(), "12.50".to_owned()),
            ]),
            import_line: line,
        }
    }

    async fn claim(
        store: &Store,
        customer: &str,
        campaign: &str,
        now_ms: i64,
        rule: FatigueRule,
    ) -> ClaimOutcome {
        store
            .claim_contact("node-a", customer, campaign, now_ms, rule)
            .await
            .unwrap_or_else(|e| panic!("claim {customer} at {now_ms}: {e}"))
    }

    async fn claimed(
        store: &Store,
        customer: &str,
        campaign: &str,
        now_ms: i64,
        r: FatigueRule,
    ) -> i64 {
        match claim(store, customer, campaign, now_ms, r).await {
            ClaimOutcome::Claimed { claim_id } => claim_id,
            other => panic!("{customer} at {now_ms}: expected a claim, got {other:?}"),
        }
    }

    fn attempt_start(node: &str, call_id: &str, at_ms: i64) -> AttemptStart {
        AttemptStart {
            node: node.to_owned(),
            phone: "+493000000001".to_owned(),
            call_id: Some(call_id.to_owned()),
            started_at_ms: at_ms,
        }
    }

    /// A person answered (`reach` = AnsweredByPerson) or the phone rang out (`Attempted`).
    fn attempt_end(outcome: &str, at_ms: i64, reach: Reach) -> AttemptEnd {
        let person = reach == Reach::AnsweredByPerson;
        AttemptEnd {
            ended_at_ms: at_ms,
            answered_at_ms: person.then_some(at_ms - 20 * SECOND),
            outcome: outcome.to_owned(),
            sip_status: Some(if person { 200 } else { 480 }),
            amd_decision: person.then(|| "human".to_owned()),
            amd_confidence: person.then_some(0.93),
            reach,
        }
    }

    async fn start(store: &Store, claim_id: i64, s: &AttemptStart) -> i64 {
        match store
            .record_attempt_start(claim_id, s)
            .await
            .expect("attempt start")
        {
            AttemptStarted::Started { attempt_id } => attempt_id,
            other => panic!("claim {claim_id}: expected a started attempt, got {other:?}"),
        }
    }

    async fn contact_of(store: &Store, campaign: &str, customer: &str) -> Contact {
        store
            .contact_by_customer(campaign, customer)
            .await
            .expect("contact query")
            .unwrap_or_else(|| panic!("no contact {campaign}/{customer}"))
    }

    async fn scenario_claim_boundaries(url: &str) {
        let store = open(url).await;
        let weekly = rule(1, WEEK);

        // A contact at T0 blocks until T0 + window, exclusive, across campaigns.
        claimed(&store, "c1", "spring", T0, weekly).await;
        let blocked = ClaimOutcome::Fatigued {
            last_contact_ms: T0,
            next_allowed_ms: T0 + WEEK,
        };
        assert_eq!(claim(&store, "c1", "spring", T0, weekly).await, blocked);
        assert_eq!(
            claim(&store, "c1", "autumn", T0 + WEEK - 1, weekly).await,
            blocked
        );
        let second = claimed(&store, "c1", "autumn", T0 + WEEK, weekly).await;
        // Another customer is independent.
        claimed(&store, "c2", "spring", T0, weekly).await;

        // Two per week: the oldest of the two frees the slot.
        let twice = rule(2, WEEK);
        claimed(&store, "c3", "spring", T0, twice).await;
        claimed(&store, "c3", "autumn", T0 + DAY, twice).await;
        assert_eq!(
            claim(&store, "c3", "spring", T0 + 2 * DAY, twice).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + DAY,
                next_allowed_ms: T0 + WEEK
            }
        );
        claimed(&store, "c3", "spring", T0 + WEEK, twice).await;
        assert_eq!(
            claim(&store, "c3", "spring", T0 + WEEK + DAY - 1, twice).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + WEEK,
                next_allowed_ms: T0 + WEEK + DAY
            }
        );

        // A stricter campaign rule (one per 14 days) sees the same ledger.
        let fortnightly = rule(1, 2 * WEEK);
        assert_eq!(
            claim(&store, "c1", "strict", T0 + WEEK + DAY, fortnightly).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + WEEK,
                next_allowed_ms: T0 + 3 * WEEK
            }
        );

        // A claim stamped in the future (a node whose clock runs ahead) blocks too.
        let ahead = store
            .claim_contact("node-b", "c4", "spring", T0 + 5 * SECOND, weekly)
            .await
            .expect("claim");
        assert!(matches!(ahead, ClaimOutcome::Claimed { .. }), "{ahead:?}");
        assert_eq!(
            claim(&store, "c4", "autumn", T0, weekly).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + 5 * SECOND,
                next_allowed_ms: T0 + 5 * SECOND + WEEK
            }
        );

        // History for the policy: exactly the claims that count at T0 + WEEK.
        let history = store
            .counted_contacts("c1", T0 + WEEK - WEEK, Reach::AnsweredByPerson)
            .await
            .expect("history");
        assert_eq!(
            history,
            vec![LedgerEntry {
                claim_id: second,
                campaign_id: "autumn".to_owned(),
                claimed_at_ms: T0 + WEEK,
                state: ClaimState::Pending,
                reach: None,
            }]
        );
        assert_eq!(
            store
                .counted_contacts("c1", T0 - 1, Reach::AnsweredByPerson)
                .await
                .expect("history")
                .len(),
            2
        );
        assert!(store
            .counted_contacts("nobody", 0, Reach::Attempted)
            .await
            .expect("history")
            .is_empty());
        store.close().await;
    }

    async fn scenario_released_claims_do_not_count(url: &str) {
        let store = open(url).await;
        let weekly = rule(1, WEEK);
        let first = claimed(&store, "c1", "spring", T0, weekly).await;
        assert_eq!(
            store
                .resolve_claim(first, Reach::NotReached, T0 + 30 * SECOND)
                .await
                .expect("release"),
            ClaimResolution::Resolved
        );
        let second = claimed(&store, "c1", "spring", T0 + HOUR, weekly).await;
        assert_eq!(
            store
                .resolve_claim(second, Reach::AnsweredByPerson, T0 + HOUR + 30 * SECOND)
                .await
                .expect("count"),
            ClaimResolution::Resolved
        );
        assert_eq!(
            claim(&store, "c1", "autumn", T0 + 2 * HOUR, weekly).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + HOUR,
                next_allowed_ms: T0 + HOUR + WEEK
            }
        );
        // Resolutions are final.
        assert_eq!(
            store
                .resolve_claim(second, Reach::NotReached, T0 + 3 * HOUR)
                .await
                .expect("again"),
            ClaimResolution::AlreadyResolved {
                state: ClaimState::Counted
            }
        );
        assert_eq!(
            store
                .resolve_claim(first, Reach::AnsweredByPerson, T0 + 3 * HOUR)
                .await
                .expect("again"),
            ClaimResolution::AlreadyResolved {
                state: ClaimState::Released
            }
        );
        assert_eq!(
            store
                .resolve_claim(987_654, Reach::NotReached, T0)
                .await
                .expect("unknown"),
            ClaimResolution::NoSuchClaim
        );
        let history = store
            .counted_contacts("c1", T0 - WEEK, Reach::AnsweredByPerson)
            .await
            .expect("history");
        let ids: Vec<(i64, ClaimState)> = history.iter().map(|e| (e.claim_id, e.state)).collect();
        assert_eq!(
            ids,
            vec![(second, ClaimState::Counted)],
            "released claims are not history"
        );

        // A pending claim (call not over) counts like a contact.
        claimed(&store, "c2", "spring", T0, weekly).await;
        assert!(matches!(
            claim(&store, "c2", "autumn", T0 + 1, weekly).await,
            ClaimOutcome::Fatigued { .. }
        ));
        store.close().await;
    }

    /// A call's reach is kept, and each rule counts what its counting setting asks for, across
    /// campaigns with different settings.
    async fn scenario_counting_rules(url: &str) {
        let store = open(url).await;
        let person = rule(1, WEEK);
        let answered = counting_rule(1, WEEK, Reach::Answered);
        let attempted = counting_rule(1, WEEK, Reach::Attempted);

        // A campaign counting answered-by-person calls rings c1 out (no answer).
        let claim1 = claimed(&store, "c1", "gentle", T0, person).await;
        let a1 = start(&store, claim1, &attempt_start("node-a", "call-1", T0)).await;
        assert!(store
            .record_attempt_end(
                a1,
                &attempt_end("no_answer", T0 + 30 * SECOND, Reach::Attempted),
                person
            )
            .await
            .expect("end"));
        // A campaign counting every attempt sees it; the gentle one does not.
        assert_eq!(
            claim(&store, "c1", "strict", T0 + HOUR, attempted).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0,
                next_allowed_ms: T0 + WEEK
            }
        );
        let claim2 = claimed(&store, "c1", "gentle", T0 + HOUR, person).await;
        let a2 = start(
            &store,
            claim2,
            &attempt_start("node-a", "call-2", T0 + HOUR),
        )
        .await;
        let mut machine = attempt_end("answered_machine", T0 + HOUR + 40 * SECOND, Reach::Answered);
        machine.amd_decision = Some("machine".to_owned());
        assert!(store
            .record_attempt_end(a2, &machine, person)
            .await
            .expect("end"));
        // The machine counts for "answered" rules, not for "answered by a person".
        assert_eq!(
            claim(&store, "c1", "machines", T0 + 2 * HOUR, answered).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0 + HOUR,
                next_allowed_ms: T0 + HOUR + WEEK
            }
        );
        let claim3 = claimed(&store, "c1", "gentle", T0 + 2 * HOUR, person).await;
        assert_eq!(
            store
                .resolve_claim(claim3, Reach::NotReached, T0 + 2 * HOUR)
                .await
                .expect("release"),
            ClaimResolution::Resolved
        );
        let seen = |counts_from| {
            let store = store.clone();
            async move {
                store
                    .counted_contacts("c1", T0 - WEEK, counts_from)
                    .await
                    .expect("history")
                    .into_iter()
                    .map(|e| (e.claim_id, e.state, e.reach))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            seen(Reach::Attempted).await,
            [
                (claim1, ClaimState::Counted, Some(Reach::Attempted)),
                (claim2, ClaimState::Counted, Some(Reach::Answered)),
            ]
        );
        assert_eq!(
            seen(Reach::Answered).await,
            [(claim2, ClaimState::Counted, Some(Reach::Answered))]
        );
        assert!(seen(Reach::AnsweredByPerson).await.is_empty());
        let report = store.attempts_for_report("gentle").await.expect("report");
        let counted: Vec<Option<bool>> = report.iter().map(|a| a.counted_as_contact).collect();
        assert_eq!(
            counted,
            [Some(false), Some(false)],
            "neither counted for its own campaign"
        );

        // A trunk failure never reached the phone: it counts under no rule.
        let claim4 = claimed(&store, "c2", "strict", T0, attempted).await;
        let a4 = start(&store, claim4, &attempt_start("node-a", "call-4", T0)).await;
        let mut failed = attempt_end("failed", T0 + SECOND, Reach::NotReached);
        failed.sip_status = Some(503);
        assert!(store
            .record_attempt_end(a4, &failed, attempted)
            .await
            .expect("end"));
        assert_eq!(
            store
                .resolve_claim(claim4, Reach::NotReached, T0 + 2 * SECOND)
                .await
                .expect("resolved"),
            ClaimResolution::AlreadyResolved {
                state: ClaimState::Released
            }
        );
        claimed(&store, "c2", "strict", T0 + 2 * SECOND, attempted).await;
        store.close().await;
    }

    /// Two stores on one database (two processes' worth of pools and connections), 20 tasks
    /// each, all claiming one customer for the same instant from two campaigns.
    async fn scenario_concurrent_claims(url: &str, max: u32) {
        let stores = [open(url).await, open(url).await];
        let contenders = 40;
        let barrier = Arc::new(Barrier::new(contenders));
        let mut tasks = Vec::new();
        for i in 0..contenders {
            let store = stores[i % 2].clone();
            let barrier = Arc::clone(&barrier);
            let node = format!("node-{}", i % 2);
            let campaign = if i % 4 < 2 { "spring" } else { "autumn" };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_contact(&node, "racer", campaign, T0, rule(max, WEEK))
                    .await
            }));
        }
        let mut claims = Vec::new();
        let mut refused = 0;
        for task in tasks {
            match task.await.expect("join").expect("claim") {
                ClaimOutcome::Claimed { claim_id } => claims.push(claim_id),
                ClaimOutcome::Fatigued {
                    last_contact_ms,
                    next_allowed_ms,
                } => {
                    assert_eq!((last_contact_ms, next_allowed_ms), (T0, T0 + WEEK));
                    refused += 1;
                }
            }
        }
        let max_usize = usize::try_from(max).expect("small");
        assert_eq!(
            claims.len(),
            max_usize,
            "exactly max_contacts claims win the race"
        );
        assert_eq!(refused, contenders - max_usize);
        let history = stores[0]
            .counted_contacts("racer", T0 - WEEK, Reach::AnsweredByPerson)
            .await
            .expect("history");
        let mut stored: Vec<i64> = history.iter().map(|e| e.claim_id).collect();
        stored.sort_unstable();
        claims.sort_unstable();
        assert_eq!(
            stored, claims,
            "the ledger holds the winners and nothing else"
        );
        for store in &stores {
            store.close().await;
        }
    }

    async fn scenario_import(url: &str) {
        let store = open(url).await;
        let err = store
            .import_contacts_batch("ghost", &[new_contact("c1", 2)])
            .await
            .expect_err("campaign must be registered");
        assert!(
            matches!(
                err,
                StoreError::Query {
                    op: "import_contacts_batch",
                    ..
                }
            ),
            "{err}"
        );

        campaign(&store, "imp").await;
        // More rows than one INSERT statement holds, so the split is exercised.
        let rows: Vec<NewContact> = (0..2_500_i64)
            .map(|i| new_contact(&format!("cust-{i:05}"), i + 2))
            .collect();
        assert_eq!(
            store
                .import_contacts_batch("imp", &rows)
                .await
                .expect("import"),
            2_500
        );
        assert_eq!(
            store
                .import_contacts_batch("imp", &rows)
                .await
                .expect("re-import"),
            0,
            "re-importing the same file adds nothing"
        );
        let mut fresh = new_contact("new-1", 3_000);
        fresh.consent = None;
        fresh.birth_date = Some("1980-02-29".to_owned());
        fresh.segment = Some("gold".to_owned());
        let mut repeat = new_contact("new-1", 3_001);
        repeat.phone = "+4930999".to_owned();
        let batch = [
            fresh.clone(),
            new_contact("cust-00000", 3_002),
            repeat,
            new_contact("new-2", 3_003),
        ];
        assert_eq!(
            store
                .import_contacts_batch("imp", &batch)
                .await
                .expect("mixed"),
            2
        );
        assert_eq!(
            store
                .import_contacts_batch("imp", &[])
                .await
                .expect("empty"),
            0
        );

        let stored = contact_of(&store, "imp", "new-1").await;
        assert_eq!(
            stored.phone, fresh.phone,
            "the first row of a repeated customer wins"
        );
        assert_eq!(stored.consent, None);
        assert_eq!(stored.birth_date.as_deref(), Some("1980-02-29"));
        assert_eq!(stored.segment.as_deref(), Some("gold"));
        assert_eq!(stored.fields, fresh.fields);
        assert_eq!(stored.import_line, 3_000);
        assert_eq!((stored.state, stored.attempts), (ContactState::Pending, 0));

        let due = store.due_contacts("imp", T0, 3).await.expect("due");
        let ids: Vec<&str> = due.iter().map(|c| c.customer_id.as_str()).collect();
        assert_eq!(
            ids,
            ["cust-00000", "cust-00001", "cust-00002"],
            "import order"
        );
        let first = due.first().expect("due contact");
        assert_eq!(first.consent, Some(true));
        assert_eq!(
            first.fields.get("name").map(String::as_str),
            Some("Customer 2")
        );

        // A retry scheduled later is not due before its time; done contacts never are.
        assert!(store
            .set_contact_state(first.id, ContactState::Pending, T0 + HOUR)
            .await
            .expect("reschedule"));
        let second = due.get(1).expect("second").id;
        assert!(store
            .set_contact_state(second, ContactState::Done, 0)
            .await
            .expect("done"));
        assert!(!store
            .set_contact_state(-1, ContactState::Done, 0)
            .await
            .expect("missing"));
        // A decision made on a stale read does not apply: the state or the attempt count moved.
        let third = due.get(2).expect("third");
        assert!(!store
            .move_contact_from(
                third.id,
                ContactState::Dialling,
                0,
                ContactState::Skipped,
                T0
            )
            .await
            .expect("cas state"));
        assert!(!store
            .move_contact_from(
                third.id,
                ContactState::Pending,
                1,
                ContactState::Skipped,
                T0
            )
            .await
            .expect("cas attempts"));
        // The batch reads the planner uses agree with the one-customer ones.
        let ids: Vec<String> = due.iter().map(|c| c.customer_id.clone()).collect();
        let counted = store
            .counted_contacts_among(&ids, T0 - WEEK, Reach::Attempted)
            .await
            .expect("counted among");
        for id in &ids {
            let one = store
                .counted_contacts(id, T0 - WEEK, Reach::Attempted)
                .await
                .expect("counted");
            assert_eq!(counted.get(id).cloned().unwrap_or_default(), one);
        }
        assert!(store
            .contact_attempts_among("imp", &ids)
            .await
            .expect("attempts among")
            .is_empty());
        // Settling a batch moves only the contacts still as read, with one audit row each.
        let stale = ContactMove {
            contact_id: third.id,
            from: ContactState::Pending,
            attempts: 7,
            to: ContactState::Skipped,
            next_attempt_at_ms: T0,
            audit: AuditEntry {
                at_ms: T0,
                campaign_id: "imp".into(),
                customer_id: third.customer_id.clone(),
                decision: AuditDecision::Skipped,
                reason: "stale".into(),
                rule: None,
            },
        };
        let fresh = ContactMove {
            attempts: 0,
            to: ContactState::Pending,
            next_attempt_at_ms: third.next_attempt_at_ms,
            audit: AuditEntry {
                reason: "fresh".into(),
                decision: AuditDecision::Waiting,
                ..stale.audit.clone()
            },
            ..stale.clone()
        };
        assert_eq!(
            store
                .settle_contacts(&[stale, fresh])
                .await
                .expect("settle"),
            1
        );
        let trail = store.audit_for_campaign("imp").await.expect("audit");
        assert_eq!(
            trail.iter().map(|a| a.reason.as_str()).collect::<Vec<_>>(),
            ["fresh"]
        );
        assert!(store
            .move_contact_from(
                third.id,
                ContactState::Pending,
                0,
                ContactState::Pending,
                T0 + WEEK
            )
            .await
            .expect("cas"));
        assert_eq!(
            contact_of(&store, "imp", &third.customer_id)
                .await
                .next_attempt_at_ms,
            T0 + WEEK
        );
        assert!(store
            .move_contact_from(
                third.id,
                ContactState::Pending,
                0,
                ContactState::Pending,
                third.next_attempt_at_ms
            )
            .await
            .expect("restore"));
        let due = store.due_contacts("imp", T0, 1).await.expect("due");
        assert_eq!(
            due.first().map(|c| c.customer_id.as_str()),
            Some("cust-00002")
        );
        let due = store.due_contacts("imp", T0 + HOUR, 1).await.expect("due");
        assert_eq!(
            due.first().map(|c| c.customer_id.as_str()),
            Some("cust-00002")
        );
        let all = store
            .due_contacts("imp", T0 + HOUR, 10_000)
            .await
            .expect("due");
        assert_eq!(
            all.len(),
            2_501,
            "every pending contact is due once its time came"
        );
        assert_eq!(
            all.last().map(|c| c.customer_id.as_str()),
            Some("cust-00000")
        );
        assert!(store
            .due_contacts("imp", T0, -5)
            .await
            .expect("due")
            .is_empty());

        let counts = store.campaign_counts("imp").await.expect("counts");
        assert_eq!(counts.contacts_total, 2_502);
        assert_eq!(
            counts.contacts_by_state,
            BTreeMap::from([("done".to_owned(), 1), ("pending".to_owned(), 2_501)])
        );
        assert!(counts.attempts_by_outcome.is_empty());
        store.close().await;
    }

    async fn scenario_audit_append_only(url: &str) {
        let store = open(url).await;
        let entry = |i: i64, decision: AuditDecision| AuditEntry {
            at_ms: T0 + i,
            campaign_id: "aud".to_owned(),
            customer_id: format!("c{i}"),
            decision,
            reason: format!("reason {i}"),
            rule: (decision == AuditDecision::Skipped).then(|| "fatigue".to_owned()),
        };
        let first = store
            .append_audit(&entry(0, AuditDecision::Dialled))
            .await
            .expect("append");
        let batch: Vec<AuditEntry> = (1..=1_500)
            .map(|i| entry(i, AuditDecision::Skipped))
            .collect();
        assert_eq!(
            store.append_audit_batch(&batch).await.expect("batch"),
            1_500
        );
        assert_eq!(store.append_audit_batch(&[]).await.expect("empty"), 0);
        let last = store
            .append_audit(&entry(1_501, AuditDecision::Completed))
            .await
            .expect("append");
        assert!(last > first);

        let rows = store.audit_for_campaign("aud").await.expect("audit");
        assert_eq!(rows.len(), 1_502);
        let expected_first = AuditRow {
            id: first,
            at_ms: T0,
            campaign_id: "aud".to_owned(),
            customer_id: "c0".to_owned(),
            decision: AuditDecision::Dialled,
            reason: "reason 0".to_owned(),
            rule: None,
        };
        assert_eq!(rows.first(), Some(&expected_first));
        let skipped = rows.get(1).expect("row");
        assert_eq!(
            (skipped.decision, skipped.rule.as_deref(), skipped.at_ms),
            (AuditDecision::Skipped, Some("fatigue"), T0 + 1)
        );
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "append order");

        // The database itself refuses to rewrite history.
        let update = with_pool!(store, pool => sqlx::query("UPDATE audit SET reason = 'edited'")
            .execute(pool)
            .await
            .map(|_| ()));
        assert!(update.is_err(), "UPDATE on audit must fail");
        let delete = with_pool!(store, pool => sqlx::query("DELETE FROM audit WHERE id = $1")
            .bind(first)
            .execute(pool)
            .await
            .map(|_| ()));
        let msg = delete.expect_err("DELETE on audit must fail").to_string();
        assert!(msg.contains("append-only"), "{msg}");
        if let Backend::Postgres(pool) = &store.backend {
            let truncate = sqlx::query("TRUNCATE audit").execute(pool).await;
            assert!(truncate.is_err(), "TRUNCATE on audit must fail");
        }
        let again = store.audit_for_campaign("aud").await.expect("audit");
        assert_eq!(again, rows, "audit unchanged");
        store.close().await;
    }

    async fn scenario_campaign_and_attempts(url: &str) {
        let store = open(url).await;
        campaign(&store, "life").await;
        let row = store
            .campaign("life")
            .await
            .expect("query")
            .expect("exists");
        assert_eq!(row.status, CampaignStatus::Draft);
        assert_eq!((row.created_at_ms, row.updated_at_ms), (T0, T0));
        assert!(store
            .set_campaign_status("life", CampaignStatus::Running, T0 + 1)
            .await
            .expect("status"));
        store
            .upsert_campaign("life", "Renamed", "campaigns/life2.toml", T0 + 2)
            .await
            .expect("upsert");
        let row = store
            .campaign("life")
            .await
            .expect("query")
            .expect("exists");
        assert_eq!(
            (row.name.as_str(), row.file.as_str(), row.status),
            ("Renamed", "campaigns/life2.toml", CampaignStatus::Running),
            "re-loading the file keeps the status"
        );
        assert_eq!((row.created_at_ms, row.updated_at_ms), (T0, T0 + 2));
        assert!(!store
            .set_campaign_status("nope", CampaignStatus::Paused, T0)
            .await
            .expect("status"));
        assert!(store.campaign("nope").await.expect("query").is_none());
        let ids: Vec<String> = store
            .campaigns()
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["life"]);

        store
            .import_contacts_batch("life", &[new_contact("c1", 2), new_contact("c2", 3)])
            .await
            .expect("import");
        let weekly = rule(1, WEEK);

        // No answer: under "answered by a person" the call does not count.
        let claim1 = claimed(&store, "c1", "life", T0, weekly).await;
        let a1 = start(&store, claim1, &attempt_start("node-a", "call-1", T0)).await;
        let c1 = contact_of(&store, "life", "c1").await;
        assert_eq!((c1.state, c1.attempts), (ContactState::Dialling, 1));
        assert_eq!(
            store
                .record_attempt_start(claim1, &attempt_start("node-a", "call-dup", T0))
                .await
                .expect("start"),
            AttemptStarted::ClaimNotPending,
            "one attempt per claim"
        );
        assert_eq!(
            store
                .resolve_claim(claim1, Reach::NotReached, T0 + 1)
                .await
                .expect("release"),
            ClaimResolution::CallInProgress { attempt_id: a1 },
            "a claim whose call is up cannot be released"
        );
        assert!(store
            .record_attempt_end(
                a1,
                &attempt_end("no_answer", T0 + 30 * SECOND, Reach::Attempted),
                weekly
            )
            .await
            .expect("end"));
        assert!(
            !store
                .record_attempt_end(
                    a1,
                    &attempt_end("answered_person", T0 + 31 * SECOND, Reach::AnsweredByPerson),
                    weekly
                )
                .await
                .expect("end"),
            "an attempt ends once"
        );
        assert!(store
            .counted_contacts("c1", T0 - WEEK, Reach::AnsweredByPerson)
            .await
            .expect("history")
            .is_empty());
        let c1 = contact_of(&store, "life", "c1").await;
        assert_eq!(c1.last_outcome.as_deref(), Some("no_answer"));

        // The retry is answered by a person: counted, and the customer is fatigued.
        assert!(store
            .set_contact_state(c1.id, ContactState::Pending, T0 + HOUR)
            .await
            .expect("retry"));
        let claim2 = claimed(&store, "c1", "life", T0 + HOUR, weekly).await;
        let a2 = start(
            &store,
            claim2,
            &attempt_start("node-a", "call-2", T0 + HOUR),
        )
        .await;
        assert!(store
            .record_attempt_end(
                a2,
                &attempt_end(
                    "answered_person",
                    T0 + HOUR + 60 * SECOND,
                    Reach::AnsweredByPerson
                ),
                weekly
            )
            .await
            .expect("end"));
        let history = store
            .counted_contacts("c1", T0 - WEEK, Reach::AnsweredByPerson)
            .await
            .expect("history");
        assert_eq!(
            history
                .iter()
                .map(|e| (e.claim_id, e.state))
                .collect::<Vec<_>>(),
            [(claim2, ClaimState::Counted)]
        );
        assert!(matches!(
            claim(&store, "c1", "life", T0 + 2 * HOUR, weekly).await,
            ClaimOutcome::Fatigued { last_contact_ms, .. } if last_contact_ms == T0 + HOUR
        ));

        // No attempt on a released or unknown claim.
        let claim3 = claimed(&store, "c2", "life", T0, weekly).await;
        assert_eq!(
            store
                .resolve_claim(claim3, Reach::NotReached, T0 + 1)
                .await
                .expect("release"),
            ClaimResolution::Resolved
        );
        for claim_id in [claim3, 424_242] {
            assert_eq!(
                store
                    .record_attempt_start(claim_id, &attempt_start("node-a", "call-x", T0 + 2))
                    .await
                    .expect("start"),
                AttemptStarted::ClaimNotPending
            );
        }
        let c2 = contact_of(&store, "life", "c2").await;
        assert_eq!((c2.state, c2.attempts), (ContactState::Pending, 0));

        let report = store.attempts_for_report("life").await.expect("report");
        assert_eq!(report.len(), 2);
        let answered = report.get(1).expect("second attempt");
        assert_eq!(
            answered,
            &AttemptRow {
                id: a2,
                campaign_id: "life".to_owned(),
                customer_id: "c1".to_owned(),
                phone: "+493000000001".to_owned(),
                node: "node-a".to_owned(),
                claim_id: claim2,
                started_at_ms: T0 + HOUR,
                answered_at_ms: Some(T0 + HOUR + 40 * SECOND),
                ended_at_ms: Some(T0 + HOUR + 60 * SECOND),
                call_id: Some("call-2".to_owned()),
                outcome: Some("answered_person".to_owned()),
                sip_status: Some(200),
                amd_decision: Some("human".to_owned()),
                amd_confidence: Some(0.93),
                counted_as_contact: Some(true),
            }
        );
        let unanswered = report.first().expect("first attempt");
        assert_eq!(
            (
                unanswered.id,
                unanswered.sip_status,
                unanswered.counted_as_contact
            ),
            (a1, Some(480), Some(false))
        );
        assert_eq!(unanswered.answered_at_ms, None);

        let counts = store.campaign_counts("life").await.expect("counts");
        assert_eq!(
            counts.attempts_by_outcome,
            BTreeMap::from([
                ("answered_person".to_owned(), 1),
                ("no_answer".to_owned(), 1)
            ])
        );
        store.close().await;
    }

    async fn scenario_interrupted_attempts(url: &str) {
        let store = open(url).await;
        campaign(&store, "crash").await;
        let rows: Vec<NewContact> = ["c1", "c2", "c3", "c4"]
            .iter()
            .zip(2..)
            .map(|(c, line)| new_contact(c, line))
            .collect();
        store
            .import_contacts_batch("crash", &rows)
            .await
            .expect("import");
        let weekly = rule(1, WEEK);

        // node-a: c1 in a call, c2 claimed but not yet dialled, c4's call ended (its end put
        // the contact back to pending for the planner); node-b: c3 in a call.
        let claim1 = claimed(&store, "c1", "crash", T0, weekly).await;
        let a1 = start(&store, claim1, &attempt_start("node-a", "call-1", T0)).await;
        let claim2 = claimed(&store, "c2", "crash", T0, weekly).await;
        let claim4 = claimed(&store, "c4", "crash", T0, weekly).await;
        let a4 = start(&store, claim4, &attempt_start("node-a", "call-4", T0)).await;
        assert!(store
            .record_attempt_end(
                a4,
                &attempt_end("answered_person", T0 + 20 * SECOND, Reach::AnsweredByPerson),
                weekly
            )
            .await
            .expect("end"));
        let claim3 = store
            .claim_contact("node-b", "c3", "crash", T0, weekly)
            .await
            .expect("claim");
        let ClaimOutcome::Claimed { claim_id: claim3 } = claim3 else {
            panic!("c3: {claim3:?}")
        };
        let a3 = start(&store, claim3, &attempt_start("node-b", "call-3", T0)).await;

        // node-a is killed and restarts.
        std::mem::forget(store);
        let store = open(url).await;
        let restart = T0 + 60 * SECOND;
        let summary = store
            .close_interrupted_attempts("node-a", restart)
            .await
            .expect("recover");
        assert_eq!(
            summary,
            InterruptedSummary {
                attempts_closed: 1,
                claims_counted: 1,
                claims_released: 1,
                contacts_requeued: 1,
            }
        );

        let report = store.attempts_for_report("crash").await.expect("report");
        let cut = report.iter().find(|a| a.id == a1).expect("a1");
        assert_eq!(cut.outcome.as_deref(), Some("interrupted"));
        assert_eq!(
            (cut.ended_at_ms, cut.counted_as_contact),
            (Some(restart), Some(true))
        );
        // Conservative: the interrupted call counts, so c1 is not dialled again this week.
        assert_eq!(
            claim(&store, "c1", "crash", restart + 1, weekly).await,
            ClaimOutcome::Fatigued {
                last_contact_ms: T0,
                next_allowed_ms: T0 + WEEK
            }
        );
        let c1 = contact_of(&store, "crash", "c1").await;
        assert_eq!(
            (
                c1.state,
                c1.next_attempt_at_ms,
                c1.last_outcome.as_deref(),
                c1.attempts
            ),
            (ContactState::Pending, restart, Some("interrupted"), 1)
        );
        // c2 was never dialled: its claim is released and it may be claimed again.
        assert_eq!(
            store
                .resolve_claim(claim2, Reach::AnsweredByPerson, restart)
                .await
                .expect("state"),
            ClaimResolution::AlreadyResolved {
                state: ClaimState::Released
            }
        );
        claimed(&store, "c2", "crash", restart + 1, weekly).await;
        let c4 = contact_of(&store, "crash", "c4").await;
        assert_eq!(
            (c4.state, c4.next_attempt_at_ms, c4.last_outcome.as_deref()),
            (
                ContactState::Pending,
                T0 + 20 * SECOND,
                Some("answered_person")
            )
        );
        // node-b's call is untouched and ends normally.
        let c3 = contact_of(&store, "crash", "c3").await;
        assert_eq!(c3.state, ContactState::Dialling);
        assert!(store
            .record_attempt_end(
                a3,
                &attempt_end("answered_person", restart + SECOND, Reach::AnsweredByPerson),
                weekly
            )
            .await
            .expect("node-b ends its call"));

        let again = store
            .close_interrupted_attempts("node-a", restart + SECOND)
            .await
            .expect("recover");
        assert_eq!(
            again,
            InterruptedSummary {
                // c2's new claim above was never dialled either; c3 is node-b's.
                claims_released: 1,
                ..InterruptedSummary::default()
            }
        );
        let node_b = store
            .close_interrupted_attempts("node-b", restart + SECOND)
            .await
            .expect("recover");
        // c3's call ended normally, and its end already gave the contact back to the planner.
        assert_eq!(node_b, InterruptedSummary::default());
        let c3 = contact_of(&store, "crash", "c3").await;
        assert_eq!(
            (c3.state, c3.next_attempt_at_ms),
            (ContactState::Pending, restart + SECOND)
        );
        store.close().await;
    }

    #[test]
    fn fatigue_rule_rejects_degenerate_limits() {
        assert!(FatigueRule::new(0, WEEK, Reach::Attempted).is_none());
        assert!(FatigueRule::new(1, 0, Reach::Attempted).is_none());
        assert!(FatigueRule::new(1, -WEEK, Reach::Attempted).is_none());
        assert!(
            FatigueRule::new(1, WEEK, Reach::NotReached).is_none(),
            "counts nothing"
        );
        let r = counting_rule(3, WEEK, Reach::Answered);
        assert_eq!(
            (r.max_contacts().get(), r.window_ms(), r.counts_from()),
            (3, WEEK, Reach::Answered)
        );
    }

    #[test]
    fn reach_levels_nest_like_the_counting_settings() {
        use Reach::*;
        let all = [NotReached, Attempted, Answered, AnsweredByPerson];
        for reach in all {
            assert_eq!(Reach::from_rank(reach.rank()), Some(reach));
            assert_eq!(Reach::parse(reach.as_str()), Some(reach));
            assert!(
                !NotReached.counts_under(reach),
                "a call that never rang counts nowhere"
            );
        }
        assert_eq!(Reach::from_rank(4), None);
        // (reach, counts under attempted, answered, answered_by_person)
        let table = [
            (NotReached, [false, false, false]),
            (Attempted, [true, false, false]),
            (Answered, [true, true, false]),
            (AnsweredByPerson, [true, true, true]),
        ];
        for (reach, expected) in table {
            let got = [Attempted, Answered, AnsweredByPerson].map(|t| reach.counts_under(t));
            assert_eq!(got, expected, "{reach}");
        }
    }

    #[test]
    fn text_enums_round_trip() {
        for s in [
            CampaignStatus::Draft,
            CampaignStatus::Running,
            CampaignStatus::Paused,
            CampaignStatus::Stopped,
            CampaignStatus::Completed,
        ] {
            assert_eq!(CampaignStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            ContactState::parse("dialling"),
            Some(ContactState::Dialling)
        );
        assert_eq!(ClaimState::parse("released"), Some(ClaimState::Released));
        assert_eq!(
            AuditDecision::parse("waiting"),
            Some(AuditDecision::Waiting)
        );
        assert_eq!(ClaimState::parse("Counted"), None);
    }

    #[test]
    fn multi_row_inserts_number_or_anonymise_every_parameter() {
        assert_eq!(
            insert_contacts_sql(2, Placeholders::Numbered),
            "INSERT INTO contacts (campaign_id, customer_id, phone, tz, consent, birth_date, \
             segment, fields, import_line) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9), \
             ($10, $11, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT (campaign_id, customer_id) DO NOTHING"
        );
        let full = insert_contacts_sql(IMPORT_ROWS_PER_STATEMENT, Placeholders::Numbered);
        let last = CONTACT_PARAMETERS * IMPORT_ROWS_PER_STATEMENT;
        assert!(full.contains(&format!("${last})")));
        assert!(!full.contains(&format!("${}", last + 1)));
        let anonymous = insert_contacts_sql(IMPORT_ROWS_PER_STATEMENT, Placeholders::Anonymous);
        assert_eq!(anonymous.matches('?').count(), last);
        assert!(!anonymous.contains('$'));
        assert_eq!(
            insert_audit_sql(2, Placeholders::Anonymous),
            "INSERT INTO audit (at_ms, campaign_id, customer_id, decision, reason, rule) \
             VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(
            insert_audit_sql(1, Placeholders::Numbered),
            "INSERT INTO audit (at_ms, campaign_id, customer_id, decision, reason, rule) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        );
    }

    #[tokio::test]
    async fn claims_refused_inside_the_window_and_allowed_at_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_claim_boundaries(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn released_claims_do_not_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_released_claims_do_not_count(&sqlite_url(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_from_two_stores_on_one_sqlite_file() {
        for max in [1, 3] {
            let dir = tempfile::tempdir().expect("tempdir");
            scenario_concurrent_claims(&sqlite_url(&dir), max).await;
        }
    }

    #[tokio::test]
    async fn each_rule_counts_the_calls_its_counting_setting_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_counting_rules(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn import_is_batched_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_import(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn audit_is_append_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_audit_append_only(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn campaigns_attempts_and_claims_move_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_campaign_and_attempts(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn restart_closes_interrupted_attempts_conservatively() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_interrupted_attempts(&sqlite_url(&dir)).await;
    }

    /// A URL for `base` whose connections see only a new, empty schema `name`.
    async fn fresh_pg_schema(base: &str, name: &str) -> String {
        let pool = PgPool::connect(base)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", super::super::redact_url(base)));
        let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options[search_path]={name}")
    }

    const PG_SCENARIOS: [&str; 9] = [
        "bounds", "released", "counting", "race1", "race3", "import", "audit", "attempts", "crash",
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_runs_the_ledger_scenarios() {
        let Ok(base) = std::env::var("WARMLINE_TEST_POSTGRES_URL") else {
            eprintln!("WARMLINE_TEST_POSTGRES_URL not set; PostgreSQL ledger scenarios skipped");
            return;
        };
        let schema = |what: &str| format!("wl_ledger_{what}_{}", std::process::id());
        let url = |what: &'static str| {
            let base = base.clone();
            let name = schema(what);
            async move { fresh_pg_schema(&base, &name).await }
        };
        scenario_claim_boundaries(&url("bounds").await).await;
        scenario_released_claims_do_not_count(&url("released").await).await;
        scenario_counting_rules(&url("counting").await).await;
        scenario_concurrent_claims(&url("race1").await, 1).await;
        scenario_concurrent_claims(&url("race3").await, 3).await;
        scenario_import(&url("import").await).await;
        scenario_audit_append_only(&url("audit").await).await;
        scenario_campaign_and_attempts(&url("attempts").await).await;
        scenario_interrupted_attempts(&url("crash").await).await;

        // Only after every scenario passed: a failure leaves its schema for inspection.
        let pool = PgPool::connect(&base).await.expect("connect for cleanup");
        for what in PG_SCENARIOS {
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(what));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("drop schema");
        }
        pool.close().await;
    }

    /// Import rate and claim latency. Run on purpose (release build):
    /// `cargo test --release --lib store::ledger::tests::ledger_rates -- --ignored --nocapture`;
    /// also measures PostgreSQL when WARMLINE_TEST_POSTGRES_URL is set. LEDGER_BENCH_ROWS
    /// overrides the 1,000,000 contacts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: run explicitly with --ignored --nocapture"]
    async fn ledger_rates() {
        let rows: usize = std::env::var("LEDGER_BENCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().expect("tempdir");
        measure("sqlite", &sqlite_url(&dir), rows).await;
        if let Ok(base) = std::env::var("WARMLINE_TEST_POSTGRES_URL") {
            let name = format!("wl_ledger_bench_{}", std::process::id());
            measure("postgres", &fresh_pg_schema(&base, &name).await, rows).await;
            let pool = PgPool::connect(&base).await.expect("connect for cleanup");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                .execute(&pool)
                .await
                .expect("drop schema");
            pool.close().await;
        }
    }

    async fn measure(backend: &str, url: &str, rows: usize) {
        use std::time::{Duration, Instant};
        let store = open(url).await;
        campaign(&store, "bench").await;
        let contacts: Vec<NewContact> = (0..rows)
            .map(|i| {
                let line = i64::try_from(i).expect("small") + 2;
                new_contact(&format!("cust-{i:08}"), line)
            })
            .collect();
        let began = Instant::now();
        let mut added = 0;
        for batch in contacts.chunks(IMPORT_BATCH_ROWS) {
            added += store
                .import_contacts_batch("bench", batch)
                .await
                .expect("import");
        }
        let import = began.elapsed();
        assert_eq!(added, u64::try_from(rows).expect("small"));
        eprintln!(
            "{backend}: imported {rows} contacts in {:.2} s ({:.0} rows/s, \
             batches of {IMPORT_BATCH_ROWS})",
            import.as_secs_f64(),
            rows as f64 / import.as_secs_f64()
        );

        let began = Instant::now();
        let due = store.due_contacts("bench", T0, 1_000).await.expect("due");
        eprintln!(
            "{backend}: due_contacts(limit 1000) in {:?}",
            began.elapsed()
        );
        assert_eq!(due.len(), 1_000.min(rows));

        let weekly = rule(1, WEEK);
        let mut latencies: Vec<Duration> = Vec::new();
        for (i, c) in due.iter().enumerate() {
            let began = Instant::now();
            let outcome = claim(
                &store,
                &c.customer_id,
                "bench",
                T0 + i64::try_from(i).expect("small"),
                weekly,
            )
            .await;
            latencies.push(began.elapsed());
            assert!(matches!(outcome, ClaimOutcome::Claimed { .. }));
        }
        for (i, c) in due.iter().enumerate() {
            let began = Instant::now();
            let outcome = claim(
                &store,
                &c.customer_id,
                "bench",
                T0 + DAY + i64::try_from(i).expect("small"),
                weekly,
            )
            .await;
            latencies.push(began.elapsed());
            assert!(matches!(outcome, ClaimOutcome::Fatigued { .. }));
        }
        latencies.sort_unstable();
        let pick = |q: f64| {
            let at = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(at).copied().unwrap_or_default()
        };
        eprintln!(
            "{backend}: claim_contact over {} calls (half claimed, half fatigued): \
             p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            pick(0.5),
            pick(0.99),
            pick(1.0)
        );
        store.close().await;
    }
}
