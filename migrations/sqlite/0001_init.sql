-- warmline schema v1 (SQLite). Keep column names, types and semantics in step with
-- migrations/postgres/0001_init.sql: the same SQL text runs on both (see docs/adr/0002-storage.md).
-- Timestamps are INTEGER milliseconds since the Unix epoch, UTC (`*_ms` columns);
-- read them in sqlite3 with strftime('%Y-%m-%dT%H:%M:%fZ', started_at_ms / 1000.0, 'unixepoch').

-- One row per call, inserted when the INVITE arrives and updated as the call goes on,
-- so a call cut short by a crash still leaves a row (closed as 'interrupted' at start-up).
CREATE TABLE cdrs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id        TEXT    NOT NULL,
    direction      TEXT    NOT NULL,             -- 'inbound' (the dialer adds 'outbound')
    from_uri       TEXT    NOT NULL,
    to_uri         TEXT    NOT NULL,
    caller_number  TEXT,
    remote_addr    TEXT    NOT NULL,
    transport      TEXT    NOT NULL,
    dialplan       TEXT,
    started_at_ms  INTEGER NOT NULL,
    answered_at_ms INTEGER,
    ended_at_ms    INTEGER,                      -- NULL while the call is up
    path           TEXT    NOT NULL DEFAULT '[]', -- JSON array of menu node names, in visit order
    digits         TEXT    NOT NULL DEFAULT '',   -- every DTMF digit the caller pressed, in order
    outcome        TEXT,                          -- completed|abandoned|transfer|opted-out|failed|rejected|interrupted
    hangup_cause   TEXT,
    hangup_side    TEXT,                          -- caller|warmline|network
    codec          TEXT,
    rtp_stats      TEXT                           -- small JSON object
) STRICT;

CREATE INDEX cdrs_started_at ON cdrs (started_at_ms);
CREATE INDEX cdrs_call_id ON cdrs (call_id);
-- Start-up looks for calls that never ended; keep that lookup off a full scan.
CREATE INDEX cdrs_open ON cdrs (id) WHERE ended_at_ms IS NULL;

-- Numbers that must not be called. `number` is normalised (normalise_number in src/store);
-- `scope` is 'global' for now, a campaign name once the dialer has per-campaign lists.
CREATE TABLE opt_outs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    number        TEXT    NOT NULL,
    raw_number    TEXT    NOT NULL,              -- as presented, for audit
    scope         TEXT    NOT NULL DEFAULT 'global',
    source        TEXT    NOT NULL,              -- 'inbound-menu', later 'dialer-keypress', 'operator', 'import'
    reason        TEXT,
    call_id       TEXT,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (scope, number)
) STRICT;
