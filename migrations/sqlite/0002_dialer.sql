-- warmline schema v2 (SQLite): the dialer's campaigns, contacts, attempts, the fatigue ledger
-- and the audit trail. Keep in step with migrations/postgres/0002_dialer.sql: same tables,
-- columns and semantics (booleans are INTEGER 0/1 here, BOOLEAN there; sqlx binds a Rust bool
-- to either). Design and the locking argument: docs/adr/0003-fatigue-ledger.md.

-- One row per campaign file. `id` is the campaign's id from its TOML file.
CREATE TABLE campaigns (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    file          TEXT    NOT NULL,              -- path of campaigns/<name>.toml, as loaded
    status        TEXT    NOT NULL DEFAULT 'draft'
                  CHECK (status IN ('draft', 'running', 'paused', 'stopped', 'completed')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- The people a campaign calls, one row per (campaign, customer). The planner reads the due
-- ones (`state = 'pending' AND next_attempt_at_ms <= now`).
CREATE TABLE contacts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id        TEXT    NOT NULL REFERENCES campaigns (id),
    customer_id        TEXT    NOT NULL,          -- identity across campaigns (fatigue ledger key)
    phone              TEXT    NOT NULL,          -- E.164
    tz                 TEXT    NOT NULL,          -- IANA time zone of the callee
    consent            INTEGER CHECK (consent IN (0, 1)), -- NULL: not given in the file
    birth_date         TEXT,                      -- YYYY-MM-DD
    segment            TEXT,
    fields             TEXT    NOT NULL DEFAULT '{}', -- JSON object of message fields ({name}, {amount}, ...)
    import_line        INTEGER NOT NULL,          -- line in the contacts CSV (header = line 1)
    state              TEXT    NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'dialling', 'done', 'skipped')),
    next_attempt_at_ms INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_outcome       TEXT,                      -- outcome of the newest ended attempt
    UNIQUE (campaign_id, customer_id)
) STRICT;
CREATE INDEX contacts_due ON contacts (campaign_id, state, next_attempt_at_ms, id);

-- Fatigue claims. A claim is taken (state 'pending') before dialling, under a per-customer
-- lock, only if fewer than max_contacts claims of the customer that count under the rule fall
-- in the window. When the call ends the claim keeps how far it got (`reach`): 0 none (the
-- phone did not ring; state 'released'), 1 attempted, 2 answered (machine), 3 answered by a
-- person (state 'counted' for 1 to 3). A rule counting from level L counts pending claims and those
-- with reach >= L.
CREATE TABLE contact_ledger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id    TEXT    NOT NULL,
    campaign_id    TEXT    NOT NULL,
    node           TEXT    NOT NULL,              -- appliance that claimed (crash recovery is per node)
    attempt_id     INTEGER,                       -- set when the call is started
    claimed_at_ms  INTEGER NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'counted', 'released')),
    reach          INTEGER CHECK (reach BETWEEN 0 AND 3),
    resolved_at_ms INTEGER,
    CHECK ((state = 'pending' AND reach IS NULL) OR (state = 'released' AND reach = 0)
           OR (state = 'counted' AND reach > 0))
) STRICT;
CREATE INDEX contact_ledger_customer ON contact_ledger (customer_id, claimed_at_ms)
    WHERE state <> 'released';
CREATE INDEX contact_ledger_pending ON contact_ledger (node) WHERE state = 'pending';

-- One row per customer ever claimed; PostgreSQL locks it (SELECT ... FOR UPDATE) to serialise
-- claims of one customer. SQLite serialises every claim with BEGIN IMMEDIATE instead and does not
-- use it; the table exists so both schemas stay the same.
CREATE TABLE customer_locks (
    customer_id TEXT PRIMARY KEY
) STRICT;

-- One row per call the dialer places.
CREATE TABLE attempts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id        TEXT    NOT NULL,
    customer_id        TEXT    NOT NULL,
    phone              TEXT    NOT NULL,
    node               TEXT    NOT NULL,
    claim_id           INTEGER NOT NULL UNIQUE REFERENCES contact_ledger (id),
    started_at_ms      INTEGER NOT NULL,
    answered_at_ms     INTEGER,
    ended_at_ms        INTEGER,                   -- NULL while the call is up
    call_id            TEXT,                      -- SIP Call-ID
    outcome            TEXT,                      -- answered|busy|no-answer|invalid|failed|machine|opted-out|interrupted|...
    sip_status         INTEGER,
    amd_decision       TEXT,                      -- human|machine|unknown
    amd_confidence     REAL,                      -- 0.0 ..= 1.0
    counted_as_contact INTEGER CHECK (counted_as_contact IN (0, 1))
) STRICT;
CREATE INDEX attempts_campaign ON attempts (campaign_id, started_at_ms);
CREATE INDEX attempts_contact ON attempts (campaign_id, customer_id);
CREATE INDEX attempts_open ON attempts (node) WHERE ended_at_ms IS NULL;

-- Every dialer decision. Append-only: the triggers below refuse UPDATE and DELETE.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    campaign_id TEXT    NOT NULL,
    customer_id TEXT    NOT NULL,
    decision    TEXT    NOT NULL
                CHECK (decision IN ('dialled', 'skipped', 'retried', 'completed', 'waiting')),
    reason      TEXT    NOT NULL,
    rule        TEXT                              -- the rule that decided (fatigue, window, dnc, consent, ...)
) STRICT;
CREATE INDEX audit_campaign ON audit (campaign_id, at_ms);
CREATE INDEX audit_customer ON audit (customer_id, at_ms);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
