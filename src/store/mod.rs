//! Persistent storage: call detail records (CDRs) and the opt-out list.
//!
//! SQLite by default (`sqlite://state/warmline.db`), PostgreSQL when the storage URL says
//! `postgres://` (multi-node). Both run the same SQL text: `$N` placeholders (which SQLite also
//! accepts), plain TEXT/BIGINT columns, timestamps as unix milliseconds UTC.
//! Rationale, durability settings and migration policy: docs/adr/0002-storage.md.

pub mod ledger;
mod number;
pub mod voiceprints;
mod writer;

pub use number::normalise_number;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite writer waits for another writer (another task, or the CLI) to finish.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL allows one writer and many readers; a few connections cover the shell plus the CLI.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
const PG_MAX_CONNECTIONS: u32 = 8;
/// Bounds both pool checkout and, at start-up, waiting for a PostgreSQL server that refuses
/// connections (sqlx retries "connection refused" until this deadline).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The one opt-out list that exists today; per-campaign lists will use other scopes.
const GLOBAL_SCOPE: &str = "global";

/// Errors from the storage layer. `url` is the storage URL with any password replaced by `***`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported storage URL {url}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl { url: String },
    #[error("invalid storage URL {url}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create database directory {} for {url}: {source}", dir.display())]
    CreateDir {
        url: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create database file {} for {url}: {source}", path.display())]
    CreateFile {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations to {url} failed: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("{op} on {url} failed: {source}")]
    Query {
        op: &'static str,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{op} on {url}: no CDR with id {id}")]
    NoSuchCdr {
        op: &'static str,
        url: String,
        id: i64,
    },
    #[error("{op} on {url}: row {id} has a bad {column}: {detail}")]
    Corrupt {
        op: &'static str,
        url: String,
        id: i64,
        column: &'static str,
        detail: String,
    },
    #[error("{op}: {raw:?} is not a phone number (no digits after normalisation)")]
    InvalidNumber { op: &'static str, raw: String },
    #[error("{op}: cannot encode the call path as JSON: {source}")]
    EncodePath {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Handle to the database. Cheap to clone: the pool inside is reference-counted.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// SQLite writes go through one group-committing writer task (see `writer`).
    writer: Option<writer::GroupWriter>,
    /// Storage URL with the password redacted, for errors and logs.
    url: Arc<str>,
}

/// An enum rather than `sqlx::AnyPool`: each arm keeps its driver's typed options (SQLite
/// pragmas applied to every pooled connection) and native types; `on_pool!` runs one
/// query text against whichever is active.
#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// Evaluates `$body` with `$pool` bound to the concrete pool; the body is type-checked once
/// per backend, so the same `sqlx::query(..)` chain works for both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// What is known when the INVITE arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrStart {
    pub call_id: String,
    /// "inbound" (the dialer will write "outbound").
    pub direction: String,
    pub from_uri: String,
    pub to_uri: String,
    pub caller_number: Option<String>,
    pub remote_addr: String,
    pub transport: String,
    pub dialplan: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// What is known when the call is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrEnd {
    pub ended_at: DateTime<Utc>,
    /// `None` keeps whatever `cdr_answered` stored.
    pub answered_at: Option<DateTime<Utc>>,
    pub path: Vec<String>,
    pub digits: String,
    /// completed|abandoned|transfer|opted-out|failed|rejected|interrupted
    pub outcome: String,
    pub hangup_cause: String,
    /// caller|warmline|network
    pub hangup_side: String,
    pub codec: Option<String>,
    /// Small JSON object, stored verbatim.
    pub rtp_stats: Option<String>,
    /// What the caller said in each menu: a JSON array, stored verbatim.
    pub transcripts: Option<String>,
    /// The caller lookup's customer id.
    pub customer_id: Option<String>,
    /// Lookup, voiceprint, queue and agent facts: a JSON object, stored verbatim.
    pub routing: Option<String>,
    /// Path of the call recording.
    pub recording: Option<String>,
}

/// One CDR as stored. Timestamps serialise as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdrRow {
    pub id: i64,
    pub call_id: String,
    pub direction: String,
    pub from_uri: String,
    pub to_uri: String,
    pub caller_number: Option<String>,
    pub remote_addr: String,
    pub transport: String,
    pub dialplan: Option<String>,
    #[serde(serialize_with = "ser_ts")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "ser_opt_ts")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ser_opt_ts")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - answered_at`; `None` if never answered or not ended.
    pub duration_ms: Option<i64>,
    pub path: Vec<String>,
    pub digits: String,
    pub outcome: Option<String>,
    pub hangup_cause: Option<String>,
    pub hangup_side: Option<String>,
    pub codec: Option<String>,
    pub rtp_stats: Option<String>,
    pub transcripts: Option<String>,
    pub customer_id: Option<String>,
    pub routing: Option<String>,
    pub recording: Option<String>,
}

/// One opt-out entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptOutRow {
    pub id: i64,
    /// Normalised (`normalise_number`); the unique key together with `scope`.
    pub number: String,
    /// As presented when the opt-out was recorded.
    pub raw_number: String,
    /// "global" for now; later a campaign name.
    pub scope: String,
    pub source: String,
    pub reason: Option<String>,
    pub call_id: Option<String>,
    #[serde(serialize_with = "ser_ts")]
    pub created_at: DateTime<Utc>,
}

fn ser_ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn ser_opt_ts<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_ts(t, s),
        None => s.serialize_none(),
    }
}

/// The on-disk time format: milliseconds since the Unix epoch, UTC.
fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Raw `cdrs` row, decoded the same way from SQLite and PostgreSQL.
#[derive(sqlx::FromRow)]
struct CdrRecord {
    id: i64,
    call_id: String,
    direction: String,
    from_uri: String,
    to_uri: String,
    caller_number: Option<String>,
    remote_addr: String,
    transport: String,
    dialplan: Option<String>,
    started_at_ms: i64,
    answered_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    path: String,
    digits: String,
    outcome: Option<String>,
    hangup_cause: Option<String>,
    hangup_side: Option<String>,
    codec: Option<String>,
    rtp_stats: Option<String>,
    transcripts: Option<String>,
    customer_id: Option<String>,
    routing: Option<String>,
    recording: Option<String>,
}

#[derive(sqlx::FromRow)]
struct OptOutRecord {
    id: i64,
    number: String,
    raw_number: String,
    scope: String,
    source: String,
    reason: Option<String>,
    call_id: Option<String>,
    created_at_ms: i64,
}

const INSERT_CDR: &str = "INSERT INTO cdrs (call_id, direction, from_uri, to_uri, caller_number, \
     remote_addr, transport, dialplan, started_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";
const ANSWER_CDR: &str = "UPDATE cdrs SET answered_at_ms = $2 WHERE id = $1";
const PROGRESS_CDR: &str = "UPDATE cdrs SET path = $2, digits = $3 WHERE id = $1";
const END_CDR: &str = "UPDATE cdrs SET ended_at_ms = $2, \
     answered_at_ms = COALESCE($3, answered_at_ms), path = $4, digits = $5, outcome = $6, \
     hangup_cause = $7, hangup_side = $8, codec = $9, rtp_stats = $10, transcripts = $11, \
     customer_id = $12, routing = $13, recording = $14 WHERE id = $1";
const CLOSE_INTERRUPTED: &str = "UPDATE cdrs SET ended_at_ms = $1, outcome = 'interrupted', \
     hangup_cause = COALESCE(hangup_cause, 'process-stopped'), \
     hangup_side = COALESCE(hangup_side, 'warmline') WHERE ended_at_ms IS NULL";
const RECENT_CDRS: &str = "SELECT id, call_id, direction, from_uri, to_uri, caller_number, \
     remote_addr, transport, dialplan, started_at_ms, answered_at_ms, ended_at_ms, path, digits, \
     outcome, hangup_cause, hangup_side, codec, rtp_stats, transcripts, customer_id, routing, \
     recording FROM cdrs ORDER BY started_at_ms DESC, id DESC LIMIT $1";
const CDR_BY_CALL_ID: &str = "SELECT id, call_id, direction, from_uri, to_uri, caller_number, \
     remote_addr, transport, dialplan, started_at_ms, answered_at_ms, ended_at_ms, path, digits, \
     outcome, hangup_cause, hangup_side, codec, rtp_stats, transcripts, customer_id, routing, \
     recording FROM cdrs WHERE call_id = $1 ORDER BY started_at_ms DESC, id DESC LIMIT 1";
const INSERT_OPT_OUT: &str = "INSERT INTO opt_outs \
     (number, raw_number, scope, source, call_id, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, number) DO NOTHING";
const FIND_OPT_OUT: &str = "SELECT id FROM opt_outs WHERE scope = $1 AND number = $2 LIMIT 1";
/// The numbers of a list (a JSON array on SQLite, an array on PostgreSQL) on the opt-out list.
const OPTED_OUT_AMONG_SQLITE: &str = "SELECT DISTINCT number FROM opt_outs WHERE scope = $1 \
     AND number IN (SELECT value FROM json_each($2))";
const OPTED_OUT_AMONG_PG: &str =
    "SELECT DISTINCT number FROM opt_outs WHERE scope = $1 AND number = ANY($2)";
const LIST_OPT_OUTS: &str = "SELECT id, number, raw_number, scope, source, reason, call_id, \
     created_at_ms FROM opt_outs ORDER BY created_at_ms, id";

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`), creating the
    /// SQLite directory and file if missing, and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let shown: Arc<str> = redact_url(url).into();
        let backend = if has_scheme(url, "sqlite:") {
            Backend::Sqlite(open_sqlite(url, &shown).await?)
        } else if has_scheme(url, "postgres://") || has_scheme(url, "postgresql://") {
            Backend::Postgres(open_postgres(url, &shown).await?)
        } else {
            return Err(StoreError::UnsupportedUrl {
                url: shown.to_string(),
            });
        };
        let writer = match &backend {
            Backend::Sqlite(pool) => Some(writer::GroupWriter::spawn(pool.clone())),
            Backend::Postgres(_) => None,
        };
        let store = Store {
            backend,
            writer,
            url: shown,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The storage URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes a lock around this (an advisory lock on PostgreSQL), so nodes starting
        // together don't apply a migration twice.
        let result = match &self.backend {
            Backend::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await,
            Backend::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate {
            url: self.url.to_string(),
            source,
        })
    }

    fn query_err(&self, op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Query {
            op,
            url: self.url.to_string(),
            source,
        }
    }

    /// Runs one write through the group-commit writer; answers the rows it changed.
    async fn write_rows(
        &self,
        w: &writer::GroupWriter,
        op: &'static str,
        sql: &'static str,
        args: Vec<writer::Arg>,
    ) -> Result<u64, StoreError> {
        w.write(writer::Write::new(sql, args, false))
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(self.query_err(op))
    }

    fn expect_one(&self, op: &'static str, id: i64, rows: u64) -> Result<(), StoreError> {
        if rows == 0 {
            Err(StoreError::NoSuchCdr {
                op,
                url: self.url.to_string(),
                id,
            })
        } else {
            Ok(())
        }
    }

    /// Inserts the CDR when the INVITE arrives, so a call that dies mid-way still leaves a
    /// row. Returns the row id for the later updates.
    pub async fn cdr_start(&self, c: &CdrStart) -> Result<i64, StoreError> {
        if let Some(w) = &self.writer {
            use writer::Arg::{OptText, Text};
            let args = vec![
                Text(c.call_id.clone()),
                Text(c.direction.clone()),
                Text(c.from_uri.clone()),
                Text(c.to_uri.clone()),
                OptText(c.caller_number.clone()),
                Text(c.remote_addr.clone()),
                Text(c.transport.clone()),
                OptText(c.dialplan.clone()),
                writer::Arg::Int(to_ms(c.started_at)),
            ];
            return w
                .write(writer::Write::new(INSERT_CDR, args, true))
                .await
                .map_err(self.query_err("cdr_start"));
        }
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(INSERT_CDR)
            .bind(c.call_id.as_str())
            .bind(c.direction.as_str())
            .bind(c.from_uri.as_str())
            .bind(c.to_uri.as_str())
            .bind(c.caller_number.as_deref())
            .bind(c.remote_addr.as_str())
            .bind(c.transport.as_str())
            .bind(c.dialplan.as_deref())
            .bind(to_ms(c.started_at))
            .fetch_one(pool)
            .await)
        .map_err(self.query_err("cdr_start"))
    }

    pub async fn cdr_answered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        const OP: &str = "cdr_answered";
        if let Some(w) = &self.writer {
            let args = vec![writer::Arg::Int(id), writer::Arg::Int(to_ms(at))];
            let done = self.write_rows(w, OP, ANSWER_CDR, args).await?;
            return self.expect_one(OP, id, done);
        }
        let done = on_pool!(self, pool => sqlx::query(ANSWER_CDR)
            .bind(id)
            .bind(to_ms(at))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(self.query_err(OP))?;
        self.expect_one(OP, id, done)
    }

    /// Records the menu path and digits so far, so a crash keeps them.
    pub async fn cdr_progress(
        &self,
        id: i64,
        path: &[String],
        digits: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "cdr_progress";
        let path = encode_path(OP, path)?;
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, Text};
            let args = vec![Int(id), Text(path), Text(digits.to_owned())];
            let done = self.write_rows(w, OP, PROGRESS_CDR, args).await?;
            return self.expect_one(OP, id, done);
        }
        let done = on_pool!(self, pool => sqlx::query(PROGRESS_CDR)
            .bind(id)
            .bind(path.as_str())
            .bind(digits)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(self.query_err(OP))?;
        self.expect_one(OP, id, done)
    }

    pub async fn cdr_end(&self, id: i64, e: &CdrEnd) -> Result<(), StoreError> {
        const OP: &str = "cdr_end";
        let path = encode_path(OP, &e.path)?;
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, OptInt, OptText, Text};
            let args = vec![
                Int(id),
                Int(to_ms(e.ended_at)),
                OptInt(e.answered_at.map(to_ms)),
                Text(path),
                Text(e.digits.clone()),
                Text(e.outcome.clone()),
                Text(e.hangup_cause.clone()),
                Text(e.hangup_side.clone()),
                OptText(e.codec.clone()),
                OptText(e.rtp_stats.clone()),
                OptText(e.transcripts.clone()),
                OptText(e.customer_id.clone()),
                OptText(e.routing.clone()),
                OptText(e.recording.clone()),
            ];
            let done = self.write_rows(w, OP, END_CDR, args).await?;
            return self.expect_one(OP, id, done);
        }
        let done = on_pool!(self, pool => sqlx::query(END_CDR)
            .bind(id)
            .bind(to_ms(e.ended_at))
            .bind(e.answered_at.map(to_ms))
            .bind(path.as_str())
            .bind(e.digits.as_str())
            .bind(e.outcome.as_str())
            .bind(e.hangup_cause.as_str())
            .bind(e.hangup_side.as_str())
            .bind(e.codec.as_deref())
            .bind(e.rtp_stats.as_deref())
            .bind(e.transcripts.as_deref())
            .bind(e.customer_id.as_deref())
            .bind(e.routing.as_deref())
            .bind(e.recording.as_deref())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(self.query_err(OP))?;
        self.expect_one(OP, id, done)
    }

    /// At start-up: every CDR without an end belongs to a call the previous process never
    /// finished. Marks them outcome 'interrupted', ended at `at` (so their duration is an
    /// upper bound), hangup cause 'process-stopped'. Returns how many were closed.
    pub async fn close_interrupted(&self, at: DateTime<Utc>) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query(CLOSE_INTERRUPTED)
            .bind(to_ms(at))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(self.query_err("close_interrupted"))
    }

    /// Up to `limit` CDRs, newest first (a negative limit counts as 0).
    pub async fn recent_cdrs(&self, limit: i64) -> Result<Vec<CdrRow>, StoreError> {
        const OP: &str = "recent_cdrs";
        let records = on_pool!(self, pool => sqlx::query_as::<_, CdrRecord>(RECENT_CDRS)
            .bind(limit.max(0))
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records.into_iter().map(|r| self.cdr_row(OP, r)).collect()
    }

    /// The newest CDR with this SIP Call-ID, if any.
    pub async fn cdr_by_call_id(&self, call_id: &str) -> Result<Option<CdrRow>, StoreError> {
        const OP: &str = "cdr_by_call_id";
        let record = on_pool!(self, pool => sqlx::query_as::<_, CdrRecord>(CDR_BY_CALL_ID)
            .bind(call_id)
            .fetch_optional(pool)
            .await)
        .map_err(self.query_err(OP))?;
        record.map(|r| self.cdr_row(OP, r)).transpose()
    }

    /// Adds `number` (normalised) to the global opt-out list. Idempotent: a number already
    /// listed keeps its first entry. The row is committed (and, on SQLite, fsynced) before
    /// this returns, so the caller may confirm the opt-out to the subscriber.
    pub async fn opt_out(
        &self,
        number: &str,
        source: &str,
        call_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const OP: &str = "opt_out";
        let normalised = normalise_number(number);
        if !number::is_usable_number(&normalised) {
            return Err(StoreError::InvalidNumber {
                op: OP,
                raw: number.to_owned(),
            });
        }
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, OptText, Text};
            let args = vec![
                Text(normalised),
                Text(number.to_owned()),
                Text(GLOBAL_SCOPE.to_owned()),
                Text(source.to_owned()),
                OptText(call_id.map(str::to_owned)),
                Int(to_ms(at)),
            ];
            return self
                .write_rows(w, OP, INSERT_OPT_OUT, args)
                .await
                .map(|_| ());
        }
        on_pool!(self, pool => sqlx::query(INSERT_OPT_OUT)
            .bind(normalised.as_str())
            .bind(number)
            .bind(GLOBAL_SCOPE)
            .bind(source)
            .bind(call_id)
            .bind(to_ms(at))
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(self.query_err(OP))
    }

    /// Whether `number` (in any spelling) is on the global opt-out list. Input without
    /// digits (`anonymous`, empty) is never opted out.
    pub async fn is_opted_out(&self, number: &str) -> Result<bool, StoreError> {
        let normalised = normalise_number(number);
        if !number::is_usable_number(&normalised) {
            return Ok(false);
        }
        let found = on_pool!(self, pool => sqlx::query_scalar::<_, i64>(FIND_OPT_OUT)
            .bind(GLOBAL_SCOPE)
            .bind(normalised.as_str())
            .fetch_optional(pool)
            .await)
        .map_err(self.query_err("is_opted_out"))?;
        Ok(found.is_some())
    }

    /// Every opt-out entry, oldest first.
    /// Which of `numbers` are on the global opt-out list, in one query (the dialer decides a
    /// batch of contacts at once). Returns the numbers as given.
    pub async fn opted_out_among(
        &self,
        numbers: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        const OP: &str = "opted_out_among";
        let mut by_normalised: std::collections::HashMap<String, Vec<&String>> =
            std::collections::HashMap::new();
        for n in numbers {
            let normalised = normalise_number(n);
            if number::is_usable_number(&normalised) {
                by_normalised.entry(normalised).or_default().push(n);
            }
        }
        if by_normalised.is_empty() {
            return Ok(Default::default());
        }
        let list: Vec<String> = by_normalised.keys().cloned().collect();
        let found: Vec<String> = match &self.backend {
            Backend::Sqlite(pool) => {
                let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
                sqlx::query_scalar(OPTED_OUT_AMONG_SQLITE)
                    .bind(GLOBAL_SCOPE)
                    .bind(json)
                    .fetch_all(pool)
                    .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar(OPTED_OUT_AMONG_PG)
                    .bind(GLOBAL_SCOPE)
                    .bind(&list)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_err(OP))?;
        Ok(found
            .iter()
            .filter_map(|n| by_normalised.get(n))
            .flatten()
            .map(|n| (*n).clone())
            .collect())
    }

    pub async fn opt_outs(&self) -> Result<Vec<OptOutRow>, StoreError> {
        const OP: &str = "opt_outs";
        let records = on_pool!(self, pool => sqlx::query_as::<_, OptOutRecord>(LIST_OPT_OUTS)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        records
            .into_iter()
            .map(|r| {
                Ok(OptOutRow {
                    created_at: self.ts(OP, r.id, "created_at_ms", r.created_at_ms)?,
                    id: r.id,
                    number: r.number,
                    raw_number: r.raw_number,
                    scope: r.scope,
                    source: r.source,
                    reason: r.reason,
                    call_id: r.call_id,
                })
            })
            .collect()
    }

    /// Closes every pooled connection (on SQLite this also checkpoints the WAL).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    fn ts(
        &self,
        op: &'static str,
        id: i64,
        column: &'static str,
        ms: i64,
    ) -> Result<DateTime<Utc>, StoreError> {
        DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt {
            op,
            url: self.url.to_string(),
            id,
            column,
            detail: format!("{ms} ms is outside the representable time range"),
        })
    }

    fn opt_ts(
        &self,
        op: &'static str,
        id: i64,
        column: &'static str,
        ms: Option<i64>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        ms.map(|ms| self.ts(op, id, column, ms)).transpose()
    }

    fn cdr_row(&self, op: &'static str, r: CdrRecord) -> Result<CdrRow, StoreError> {
        let path: Vec<String> = serde_json::from_str(&r.path).map_err(|e| StoreError::Corrupt {
            op,
            url: self.url.to_string(),
            id: r.id,
            column: "path",
            detail: format!("not a JSON array of strings ({e})"),
        })?;
        let duration_ms = match (r.answered_at_ms, r.ended_at_ms) {
            // A clock stepped backwards mid-call must not yield a negative duration.
            (Some(answered), Some(ended)) => Some(ended.saturating_sub(answered).max(0)),
            _ => None,
        };
        Ok(CdrRow {
            started_at: self.ts(op, r.id, "started_at_ms", r.started_at_ms)?,
            answered_at: self.opt_ts(op, r.id, "answered_at_ms", r.answered_at_ms)?,
            ended_at: self.opt_ts(op, r.id, "ended_at_ms", r.ended_at_ms)?,
            duration_ms,
            path,
            id: r.id,
            call_id: r.call_id,
            direction: r.direction,
            from_uri: r.from_uri,
            to_uri: r.to_uri,
            caller_number: r.caller_number,
            remote_addr: r.remote_addr,
            transport: r.transport,
            dialplan: r.dialplan,
            digits: r.digits,
            outcome: r.outcome,
            hangup_cause: r.hangup_cause,
            hangup_side: r.hangup_side,
            codec: r.codec,
            rtp_stats: r.rtp_stats,
            transcripts: r.transcripts,
            customer_id: r.customer_id,
            routing: r.routing,
            recording: r.recording,
        })
    }
}

/// The call path is stored as a JSON array of node names (unambiguous whatever the names
/// contain, and readable with json_each / jsonb functions on either database).
fn encode_path(op: &'static str, path: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(path).map_err(|source| StoreError::EncodePath { op, source })
}

fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
}

/// In-memory SQLite has no file to prepare and vanishes with its last connection.
fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

async fn open_sqlite(url: &str, shown: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|source| StoreError::InvalidUrl {
            url: shown.to_owned(),
            source,
        })?
        .create_if_missing(true)
        // WAL: readers (the CLI) never block the writer. FULL: a commit is fsynced before it
        // returns, so an acknowledged opt-out survives power loss, not only kill -9.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);

    let pool_options = if is_sqlite_memory(url) {
        // One connection that is never recycled keeps the in-memory database alive.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        prepare_sqlite_file(options.get_filename(), shown).await?;
        SqlitePoolOptions::new().max_connections(SQLITE_MAX_CONNECTIONS)
    };
    pool_options
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            url: shown.to_owned(),
            source,
        })
}

/// Creates the parent directory and an empty database file if missing. The database holds
/// callers' numbers, so both are private to the service user; SQLite gives its -wal and
/// -shm files the database file's permissions.
async fn prepare_sqlite_file(path: &Path, shown: &str) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o750);
        builder
            .create(dir)
            .await
            .map_err(|source| StoreError::CreateDir {
                url: shown.to_owned(),
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    let mut file = tokio::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    file.mode(0o600);
    match file.open(path).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            url: shown.to_owned(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

async fn open_postgres(url: &str, shown: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::InvalidUrl {
        url: shown.to_owned(),
        source,
    })?;
    PgPoolOptions::new()
        .max_connections(PG_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            url: shown.to_owned(),
            source,
        })
}

/// `url` with the password (userinfo `user:pass@` or a `password=` query parameter)
/// replaced by `***`, safe for logs and error messages.
fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let auth_end = rest.find('/').unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(auth_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{tail}")
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    //! Each scenario takes a storage URL for a fresh, empty database and runs on SQLite
    //! below; `postgres_runs_the_same_scenarios` runs them on PostgreSQL when
    //! WARMLINE_TEST_POSTGRES_URL names a database it may create schemas in.
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_else(|| panic!("bad test time {ms}"))
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/state/warmline.db", dir.path().display())
    }

    fn start(call_id: &str, started_ms: i64) -> CdrStart {
        CdrStart {
            call_id: call_id.to_owned(),
            direction: "inbound".to_owned(),
            from_uri: "sip:+15550100001@trunk.example.com".to_owned(),
            to_uri: "sip:+15550109999@warmline".to_owned(),
            caller_number: Some("+15550100001".to_owned()),
            remote_addr: "192.0.2.10:5060".to_owned(),
            transport: "udp".to_owned(),
            dialplan: Some("main".to_owned()),
            started_at: at(started_ms),
        }
    }

    async fn open(url: &str) -> Store {
        match Store::open(url).await {
            Ok(store) => store,
            Err(e) => panic!("open {url}: {e}"),
        }
    }

    async fn scalar_i64(store: &Store, sql: &'static str) -> i64 {
        on_pool!(store, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn migration_count(store: &Store) -> i64 {
        let count = match &store.backend {
            Backend::Sqlite(_) => SQLITE_MIGRATOR.iter().count(),
            Backend::Postgres(_) => POSTGRES_MIGRATOR.iter().count(),
        };
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    async fn scenario_reopen_keeps_data(url: &str) {
        let store = open(url).await;
        let id = store
            .cdr_start(&start("keep-me", 1_000))
            .await
            .expect("insert");
        let applied = scalar_i64(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await;
        assert_eq!(applied, migration_count(&store));
        store.close().await;

        let again = open(url).await;
        assert_eq!(
            scalar_i64(&again, "SELECT COUNT(*) FROM _sqlx_migrations").await,
            applied,
            "reopening must not re-apply migrations"
        );
        let row = again.cdr_by_call_id("keep-me").await.expect("query");
        assert_eq!(row.map(|r| r.id), Some(id), "data survives reopening");
        again.close().await;
    }

    async fn scenario_round_trip(url: &str) {
        let store = open(url).await;
        let t0 = 1_700_000_000_000;
        let older = store
            .cdr_start(&start("older", t0 - 60_000))
            .await
            .expect("start");
        let id = store
            .cdr_start(&start("abc@host", t0))
            .await
            .expect("start");
        assert_ne!(older, id);

        let fresh = store
            .cdr_by_call_id("abc@host")
            .await
            .expect("q")
            .expect("row");
        assert_eq!(fresh.ended_at, None);
        assert_eq!(fresh.outcome, None);
        assert_eq!(fresh.path, Vec::<String>::new());
        assert_eq!(fresh.duration_ms, None);

        store
            .cdr_answered(id, at(t0 + 250))
            .await
            .expect("answered");
        let path = vec!["main".to_owned(), "credit".to_owned()];
        store.cdr_progress(id, &path, "2").await.expect("progress");
        let mid = store
            .cdr_by_call_id("abc@host")
            .await
            .expect("q")
            .expect("row");
        assert_eq!(mid.path, path);
        assert_eq!(mid.digits, "2");
        assert_eq!(mid.answered_at, Some(at(t0 + 250)));

        let end = CdrEnd {
            ended_at: at(t0 + 30_250),
            answered_at: None, // keeps the cdr_answered time
            path: vec![
                "main".into(),
                "credit".into(),
                "main".into(),
                "opt-out".into(),
            ],
            digits: "29".to_owned(),
            outcome: "opted-out".to_owned(),
            hangup_cause: "bye".to_owned(),
            hangup_side: "caller".to_owned(),
            codec: Some("PCMU".to_owned()),
            rtp_stats: Some(r#"{"rx":1500,"tx":1490,"lost":0}"#.to_owned()),
            transcripts: Some(r#"[{"menu":"main","text":"lost card"}]"#.to_owned()),
            customer_id: Some("C-1001".to_owned()),
            routing: Some(r#"{"queue":"agents","agent":"alice"}"#.to_owned()),
            recording: Some("/var/lib/warmline/recordings/2026-11-22/abc.wav".to_owned()),
        };
        store.cdr_end(id, &end).await.expect("end");

        let row = store
            .cdr_by_call_id("abc@host")
            .await
            .expect("q")
            .expect("row");
        let expected = CdrRow {
            id,
            call_id: "abc@host".into(),
            direction: "inbound".into(),
            from_uri: "sip:+15550100001@trunk.example.com".into(),
            to_uri: "sip:+15550109999@warmline".into(),
            caller_number: Some("+15550100001".into()),
            remote_addr: "192.0.2.10:5060".into(),
            transport: "udp".into(),
            dialplan: Some("main".into()),
            started_at: at(t0),
            answered_at: Some(at(t0 + 250)),
            ended_at: Some(at(t0 + 30_250)),
            duration_ms: Some(30_000),
            path: end.path.clone(),
            digits: "29".into(),
            outcome: Some("opted-out".into()),
            hangup_cause: Some("bye".into()),
            hangup_side: Some("caller".into()),
            codec: Some("PCMU".into()),
            rtp_stats: end.rtp_stats.clone(),
            transcripts: end.transcripts.clone(),
            customer_id: end.customer_id.clone(),
            routing: end.routing.clone(),
            recording: end.recording.clone(),
        };
        assert_eq!(row, expected);

        let recent = store.recent_cdrs(10).await.expect("recent");
        let ids: Vec<i64> = recent.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![id, older], "newest first");
        assert_eq!(recent.first(), Some(&expected));
        assert_eq!(store.recent_cdrs(1).await.expect("recent").len(), 1);
        assert!(store.recent_cdrs(-5).await.expect("recent").is_empty());
        assert_eq!(store.cdr_by_call_id("nope").await.expect("q"), None);

        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(json["started_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["ended_at"], "2023-11-14T22:13:50.250Z");
        assert_eq!(json["answered_at"], "2023-11-14T22:13:20.250Z");
        assert_eq!(json["path"][3], "opt-out");
        store.close().await;
    }

    async fn scenario_unanswered_and_missing_rows(url: &str) {
        let store = open(url).await;
        let id = store
            .cdr_start(&start("rejected", 5_000))
            .await
            .expect("start");
        let end = CdrEnd {
            ended_at: at(6_000),
            answered_at: None,
            path: vec![],
            digits: String::new(),
            outcome: "rejected".into(),
            hangup_cause: "486 Busy Here".into(),
            hangup_side: "warmline".into(),
            codec: None,
            rtp_stats: None,
            transcripts: None,
            customer_id: None,
            routing: None,
            recording: None,
        };
        store.cdr_end(id, &end).await.expect("end");
        let row = store
            .cdr_by_call_id("rejected")
            .await
            .expect("q")
            .expect("row");
        assert_eq!(row.answered_at, None);
        assert_eq!(row.duration_ms, None);
        assert_eq!(row.ended_at, Some(at(6_000)));
        assert_eq!(row.codec, None);

        let missing = id + 1000;
        let err = store.cdr_end(missing, &end).await.expect_err("no such row");
        assert!(
            matches!(err, StoreError::NoSuchCdr { id, op: "cdr_end", .. } if id == missing),
            "{err}"
        );
        assert!(store.cdr_answered(missing, at(1)).await.is_err());
        assert!(store.cdr_progress(missing, &[], "").await.is_err());
        store.close().await;
    }

    async fn scenario_crash_then_close_interrupted(url: &str) {
        let store = open(url).await;
        let done = store
            .cdr_start(&start("finished", 1_000))
            .await
            .expect("start");
        let end = CdrEnd {
            ended_at: at(2_000),
            answered_at: Some(at(1_100)),
            path: vec!["main".into()],
            digits: String::new(),
            outcome: "completed".into(),
            hangup_cause: "bye".into(),
            hangup_side: "caller".into(),
            codec: Some("PCMA".into()),
            rtp_stats: None,
            transcripts: None,
            customer_id: None,
            routing: None,
            recording: None,
        };
        store.cdr_end(done, &end).await.expect("end");
        let live = store
            .cdr_start(&start("in-flight", 3_000))
            .await
            .expect("start");
        store.cdr_answered(live, at(3_100)).await.expect("answered");
        let path = vec!["main".to_owned(), "credit".to_owned()];
        store
            .cdr_progress(live, &path, "2")
            .await
            .expect("progress");
        // Crash: no cdr_end, no close (no WAL checkpoint, connections never shut down).
        std::mem::forget(store);

        let restarted = open(url).await;
        assert_eq!(
            restarted
                .close_interrupted(at(10_000))
                .await
                .expect("close"),
            1
        );
        assert_eq!(
            restarted
                .close_interrupted(at(11_000))
                .await
                .expect("again"),
            0
        );

        let row = restarted
            .cdr_by_call_id("in-flight")
            .await
            .expect("q")
            .expect("row");
        assert_eq!(row.outcome.as_deref(), Some("interrupted"));
        assert_eq!(row.ended_at, Some(at(10_000)));
        assert_eq!(row.path, path, "progress written before the crash is kept");
        assert_eq!(row.digits, "2");
        assert_eq!(row.duration_ms, Some(6_900));
        assert_eq!(row.hangup_cause.as_deref(), Some("process-stopped"));
        assert_eq!(row.hangup_side.as_deref(), Some("warmline"));

        let finished = restarted
            .cdr_by_call_id("finished")
            .await
            .expect("q")
            .expect("row");
        assert_eq!(finished.outcome.as_deref(), Some("completed"));
        assert_eq!(finished.ended_at, Some(at(2_000)));
        assert_eq!(finished.hangup_side.as_deref(), Some("caller"));
        restarted.close().await;
    }

    async fn scenario_opt_out(url: &str) {
        let store = open(url).await;
        assert!(!store.is_opted_out("+15550100001").await.expect("check"));

        store
            .opt_out(
                "+1 (555) 010-0001",
                "inbound-menu",
                Some("call-1"),
                at(1_000),
            )
            .await
            .expect("opt out");
        store
            .opt_out(
                "tel:+1-555-010-0001",
                "inbound-menu",
                Some("call-2"),
                at(2_000),
            )
            .await
            .expect("second opt out is not an error");
        store
            .opt_out("+15550100001", "inbound-menu", None, at(3_000))
            .await
            .expect("third");

        assert!(store.is_opted_out("+15550100001").await.expect("check"));
        assert!(store
            .is_opted_out("sip:+15550100001@trunk")
            .await
            .expect("check"));
        assert!(!store.is_opted_out("+15550100002").await.expect("check"));
        let among = store
            .opted_out_among(&[
                "+15550100001".to_owned(),
                "+15550100002".to_owned(),
                "sip:+15550100001@trunk".to_owned(),
                "garbage".to_owned(),
            ])
            .await
            .expect("among");
        let mut among: Vec<String> = among.into_iter().collect();
        among.sort();
        assert_eq!(among, ["+15550100001", "sip:+15550100001@trunk"]);
        assert!(!store.is_opted_out("anonymous").await.expect("check"));

        let rows = store.opt_outs().await.expect("list");
        assert_eq!(rows.len(), 1, "one row per normalised number: {rows:?}");
        let row = rows.first().expect("row");
        assert_eq!(row.number, "+15550100001");
        assert_eq!(row.raw_number, "+1 (555) 010-0001", "first entry kept");
        assert_eq!(row.scope, "global");
        assert_eq!(row.source, "inbound-menu");
        assert_eq!(row.call_id.as_deref(), Some("call-1"));
        assert_eq!(row.created_at, at(1_000));

        let err = store
            .opt_out("anonymous", "inbound-menu", None, at(4_000))
            .await
            .expect_err("no digits");
        assert!(matches!(err, StoreError::InvalidNumber { .. }), "{err}");

        // An acknowledged opt-out survives a crash of the process.
        std::mem::forget(store);
        let reopened = open(url).await;
        assert!(reopened
            .is_opted_out("+1 555 010 0001")
            .await
            .expect("check"));
        reopened.close().await;
    }

    async fn scenario_concurrent_starts(url: &str) {
        let store = open(url).await;
        let mut tasks = Vec::new();
        for i in 0..50_i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .cdr_start(&start(&format!("call-{i}"), 1_000 + i))
                    .await
            }));
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.expect("join").expect("cdr_start"));
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 50, "every insert got its own id");

        let rows = store.recent_cdrs(100).await.expect("recent");
        assert_eq!(rows.len(), 50);
        let newest: Vec<&str> = rows.iter().take(2).map(|r| r.call_id.as_str()).collect();
        assert_eq!(newest, ["call-49", "call-48"]);
        store.close().await;
    }

    #[tokio::test]
    async fn open_creates_file_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state/warmline.db");
        assert!(!file.exists());
        scenario_reopen_keeps_data(&sqlite_url(&dir)).await;
        assert!(file.is_file(), "database file created with its directory");
    }

    #[tokio::test]
    async fn sqlite_durability_settings_are_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&sqlite_url(&dir)).await;
        let Backend::Sqlite(pool) = &store.backend else {
            panic!("expected SQLite")
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        assert_eq!(scalar_i64(&store, "PRAGMA synchronous").await, 2, "FULL");
        assert_eq!(scalar_i64(&store, "PRAGMA foreign_keys").await, 1);
        assert_eq!(scalar_i64(&store, "PRAGMA busy_timeout").await, 5000);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join("state/warmline.db")).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        store.close().await;
    }

    #[tokio::test]
    async fn cdr_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_round_trip(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn unanswered_call_has_no_duration_and_updates_to_missing_rows_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_unanswered_and_missing_rows(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn crash_leaves_row_that_restart_closes_as_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_crash_then_close_interrupted(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn opt_out_is_idempotent_normalised_and_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_opt_out(&sqlite_url(&dir)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cdr_starts_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        scenario_concurrent_starts(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_with_their_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&sqlite_url(&dir)).await;
        let id = store
            .cdr_start(&start("hand-edited", 1_000))
            .await
            .expect("start");
        let Backend::Sqlite(pool) = &store.backend else {
            panic!("expected SQLite")
        };
        sqlx::query("UPDATE cdrs SET path = 'main>credit' WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .expect("edit");
        let err = store.recent_cdrs(5).await.expect_err("bad path");
        assert!(
            matches!(err, StoreError::Corrupt { id: bad, column: "path", .. } if bad == id),
            "{err}"
        );
        sqlx::query("UPDATE cdrs SET path = '[]', started_at_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::MAX)
            .execute(pool)
            .await
            .expect("edit");
        let err = store
            .cdr_by_call_id("hand-edited")
            .await
            .expect_err("bad time");
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    column: "started_at_ms",
                    ..
                }
            ),
            "{err}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn bad_urls_give_errors_naming_them() {
        let err = Store::open("mysql://app:hunter2@db.example/warmline")
            .await
            .expect_err("mysql is not supported");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{msg}");
        assert!(msg.contains("mysql://app:***@db.example/warmline"), "{msg}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");

        let err = Store::open("postgres://app:hunter2@db.example:notaport/warmline")
            .await
            .expect_err("bad port");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{msg}");
        assert!(msg.contains("db.example:notaport/warmline"), "{msg}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");

        // The directory cannot be created because a regular file is in the way.
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"not a directory").expect("write");
        let url = format!("sqlite://{}/state/warmline.db", blocker.display());
        let err = Store::open(&url).await.expect_err("parent is a file");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{msg}");
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains("blocker/state"), "{msg}");

        let err = Store::open("").await.expect_err("empty");
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err}");
    }

    #[tokio::test]
    async fn in_memory_sqlite_works() {
        let store = open("sqlite::memory:").await;
        let id = store.cdr_start(&start("mem", 1)).await.expect("start");
        let rows = store.recent_cdrs(5).await.expect("recent");
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
        store.close().await;
    }

    /// A URL for `base` whose connections see only a new, empty schema `name`.
    async fn fresh_pg_schema(base: &str, name: &str) -> String {
        let pool = PgPool::connect(base)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", redact_url(base)));
        let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options[search_path]={name}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_runs_the_same_scenarios() {
        let Ok(base) = std::env::var("WARMLINE_TEST_POSTGRES_URL") else {
            eprintln!("WARMLINE_TEST_POSTGRES_URL not set; PostgreSQL scenarios skipped");
            return;
        };
        let schema = |what: &str| format!("wl_{what}_{}", std::process::id());
        scenario_reopen_keeps_data(&fresh_pg_schema(&base, &schema("reopen")).await).await;
        scenario_round_trip(&fresh_pg_schema(&base, &schema("round")).await).await;
        scenario_unanswered_and_missing_rows(&fresh_pg_schema(&base, &schema("missing")).await)
            .await;
        scenario_crash_then_close_interrupted(&fresh_pg_schema(&base, &schema("crash")).await)
            .await;
        scenario_opt_out(&fresh_pg_schema(&base, &schema("optout")).await).await;
        scenario_concurrent_starts(&fresh_pg_schema(&base, &schema("conc")).await).await;

        // Only after every scenario passed: a failure leaves its schema for inspection.
        let pool = PgPool::connect(&base).await.expect("connect for cleanup");
        for what in ["reopen", "round", "missing", "crash", "optout", "conc"] {
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(what));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("drop schema");
        }
        pool.close().await;
    }

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://warmline:s3cret@db:5432/warmline?sslmode=require"),
            "postgres://warmline:***@db:5432/warmline?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/warmline?user=w&password=s3cret"),
            "postgres://db/warmline?user=w&password=***"
        );
        assert_eq!(redact_url("postgres://w@db/x"), "postgres://w@db/x");
        assert_eq!(
            redact_url("sqlite://state/warmline.db"),
            "sqlite://state/warmline.db"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("p://a:b@c@d/e"), "p://a:***@d/e");
    }
}
