//! Voiceprints and the fraud watchlist (schema: migrations/*/0004_voiceprints.sql).
//!
//! An embedding is stored as TEXT, a JSON array of f32: serde_json prints the shortest decimal
//! that reads back to the same f32, so the vector round-trips bit-exact; TEXT keeps one SQL text
//! for SQLite and PostgreSQL and lets writes go through the SQLite group-commit writer, which
//! carries text and integer arguments. 128 floats take ~1.3 KB, which does not matter at the
//! scale of a customer base. Times are unix milliseconds UTC, as in the rest of the store.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{writer, Backend, Store, StoreError};

/// Like the store's `on_pool!`: evaluates `$body` with `$pool` bound to the concrete pool.
macro_rules! vp_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Where an enrolment's speech came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceprintSource {
    /// Speech collected in calls.
    Calls,
    /// WAV files given to `warmline voiceprint enroll`.
    Files,
}

impl VoiceprintSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VoiceprintSource::Calls => "calls",
            VoiceprintSource::Files => "files",
        }
    }

    pub fn parse(text: &str) -> Option<VoiceprintSource> {
        match text {
            "calls" => Some(VoiceprintSource::Calls),
            "files" => Some(VoiceprintSource::Files),
            _ => None,
        }
    }
}

/// A voiceprint to save (enrolment or re-enrolment).
#[derive(Debug, Clone, PartialEq)]
pub struct NewVoiceprint {
    pub customer_id: String,
    pub model_version: String,
    /// Unit length.
    pub embedding: Vec<f32>,
    pub speech_ms: i64,
    pub utterances: i64,
    /// Mean pairwise cosine of the utterances, `None` for a single one.
    pub self_similarity: Option<f64>,
    pub source: VoiceprintSource,
    /// The kept enrolment audio, only when configured.
    pub audio_path: Option<String>,
}

/// A stored voiceprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoiceprintRow {
    pub id: i64,
    pub customer_id: String,
    pub model_version: String,
    #[serde(skip)]
    pub embedding: Vec<f32>,
    pub speech_ms: i64,
    pub utterances: i64,
    pub self_similarity: Option<f64>,
    pub source: VoiceprintSource,
    pub audio_path: Option<String>,
    #[serde(serialize_with = "super::ser_ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::ser_ts")]
    pub updated_at: DateTime<Utc>,
}

/// What `expire_voiceprints` removed (the caller deletes kept audio files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredVoiceprint {
    pub customer_id: String,
    pub audio_path: Option<String>,
}

/// A fraudster's voiceprint to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWatchlistEntry {
    pub label: String,
    pub model_version: String,
    pub embedding: Vec<f32>,
    pub speech_ms: i64,
    pub utterances: i64,
    pub note: Option<String>,
}

/// A watchlist entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchlistRow {
    pub id: i64,
    pub label: String,
    pub model_version: String,
    #[serde(skip)]
    pub embedding: Vec<f32>,
    pub speech_ms: i64,
    pub utterances: i64,
    pub note: Option<String>,
    #[serde(serialize_with = "super::ser_ts")]
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct VoiceprintRecord {
    id: i64,
    customer_id: String,
    model_version: String,
    embedding: String,
    speech_ms: i64,
    utterances: i64,
    self_similarity_ppm: Option<i64>,
    source: String,
    audio_path: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct WatchlistRecord {
    id: i64,
    label: String,
    model_version: String,
    embedding: String,
    speech_ms: i64,
    utterances: i64,
    note: Option<String>,
    created_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ExpiredRecord {
    customer_id: String,
    audio_path: Option<String>,
}

/// Re-enrolment keeps the row (and `created_at_ms`) and replaces everything else.
const UPSERT_VOICEPRINT: &str = "INSERT INTO voiceprints (customer_id, model_version, embedding, \
     speech_ms, utterances, self_similarity_ppm, source, audio_path, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
     ON CONFLICT (customer_id) DO UPDATE SET model_version = excluded.model_version, \
     embedding = excluded.embedding, speech_ms = excluded.speech_ms, \
     utterances = excluded.utterances, self_similarity_ppm = excluded.self_similarity_ppm, \
     source = excluded.source, audio_path = excluded.audio_path, \
     updated_at_ms = excluded.updated_at_ms";
/// One column list for every voiceprint query.
macro_rules! select_voiceprints {
    ($tail:literal) => {
        concat!(
            "SELECT id, customer_id, model_version, embedding, speech_ms, utterances, \
             self_similarity_ppm, source, audio_path, created_at_ms, updated_at_ms \
             FROM voiceprints ",
            $tail
        )
    };
}
const VOICEPRINT_BY_CUSTOMER: &str = select_voiceprints!("WHERE customer_id = $1");
const ALL_VOICEPRINTS: &str = select_voiceprints!("ORDER BY customer_id");
/// A cohort sample: other customers' voiceprints of one model, in a stable order.
const COHORT_VOICEPRINTS: &str =
    select_voiceprints!("WHERE model_version = $1 AND customer_id <> $2 ORDER BY id LIMIT $3");
const DELETE_VOICEPRINT: &str = "DELETE FROM voiceprints WHERE customer_id = $1";
const EXPIRE_VOICEPRINTS: &str =
    "DELETE FROM voiceprints WHERE updated_at_ms < $1 RETURNING customer_id, audio_path";
const UPSERT_WATCHLIST: &str = "INSERT INTO voiceprint_watchlist (label, model_version, \
     embedding, speech_ms, utterances, note, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (label) DO UPDATE SET model_version = excluded.model_version, \
     embedding = excluded.embedding, speech_ms = excluded.speech_ms, \
     utterances = excluded.utterances, note = excluded.note RETURNING id";
const ALL_WATCHLIST: &str = "SELECT id, label, model_version, embedding, speech_ms, utterances, \
     note, created_at_ms FROM voiceprint_watchlist ORDER BY label";
const DELETE_WATCHLIST: &str = "DELETE FROM voiceprint_watchlist WHERE label = $1";

fn encode_embedding(v: &[f32]) -> String {
    // A Vec<f32> always serialises; non-finite values become null and fail on reading.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_string())
}

fn ppm(x: f64) -> i64 {
    // Clamped to [-1, 1] first, so the product fits.
    (x.clamp(-1.0, 1.0) * 1e6).round() as i64
}

impl Store {
    fn decode_embedding(
        &self,
        op: &'static str,
        id: i64,
        text: &str,
    ) -> Result<Vec<f32>, StoreError> {
        let v: Vec<f32> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            op,
            url: self.url.to_string(),
            id,
            column: "embedding",
            detail: e.to_string(),
        })?;
        if v.is_empty() {
            return Err(StoreError::Corrupt {
                op,
                url: self.url.to_string(),
                id,
                column: "embedding",
                detail: "empty vector".to_string(),
            });
        }
        Ok(v)
    }

    fn voiceprint_row(
        &self,
        op: &'static str,
        r: VoiceprintRecord,
    ) -> Result<VoiceprintRow, StoreError> {
        let source = VoiceprintSource::parse(&r.source).ok_or_else(|| StoreError::Corrupt {
            op,
            url: self.url.to_string(),
            id: r.id,
            column: "source",
            detail: format!("{:?} is neither calls nor files", r.source),
        })?;
        Ok(VoiceprintRow {
            embedding: self.decode_embedding(op, r.id, &r.embedding)?,
            created_at: self.ts(op, r.id, "created_at_ms", r.created_at_ms)?,
            updated_at: self.ts(op, r.id, "updated_at_ms", r.updated_at_ms)?,
            id: r.id,
            customer_id: r.customer_id,
            model_version: r.model_version,
            speech_ms: r.speech_ms,
            utterances: r.utterances,
            self_similarity: r.self_similarity_ppm.map(|p| p as f64 / 1e6),
            source,
            audio_path: r.audio_path,
        })
    }

    /// Saves `v` as the customer's voiceprint, replacing any earlier one (re-enrolment).
    pub async fn save_voiceprint(
        &self,
        v: &NewVoiceprint,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const OP: &str = "save_voiceprint";
        let embedding = encode_embedding(&v.embedding);
        let sim = v.self_similarity.map(ppm);
        let at = super::to_ms(at);
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, OptInt, OptText, Text};
            let args = vec![
                Text(v.customer_id.clone()),
                Text(v.model_version.clone()),
                Text(embedding),
                Int(v.speech_ms),
                Int(v.utterances),
                OptInt(sim),
                Text(v.source.as_str().to_owned()),
                OptText(v.audio_path.clone()),
                Int(at),
            ];
            return self
                .write_rows(w, OP, UPSERT_VOICEPRINT, args)
                .await
                .map(|_| ());
        }
        vp_pool!(self, pool => sqlx::query(UPSERT_VOICEPRINT)
            .bind(v.customer_id.as_str())
            .bind(v.model_version.as_str())
            .bind(embedding.as_str())
            .bind(v.speech_ms)
            .bind(v.utterances)
            .bind(sim)
            .bind(v.source.as_str())
            .bind(v.audio_path.as_deref())
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(self.query_err(OP))
    }

    /// The customer's voiceprint, if enrolled.
    pub async fn voiceprint(&self, customer_id: &str) -> Result<Option<VoiceprintRow>, StoreError> {
        const OP: &str = "voiceprint";
        let r =
            vp_pool!(self, pool => sqlx::query_as::<_, VoiceprintRecord>(VOICEPRINT_BY_CUSTOMER)
            .bind(customer_id)
            .fetch_optional(pool)
            .await)
            .map_err(self.query_err(OP))?;
        r.map(|r| self.voiceprint_row(OP, r)).transpose()
    }

    /// Every voiceprint, by customer id.
    pub async fn voiceprints(&self) -> Result<Vec<VoiceprintRow>, StoreError> {
        const OP: &str = "voiceprints";
        let rows = vp_pool!(self, pool => sqlx::query_as::<_, VoiceprintRecord>(ALL_VOICEPRINTS)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        rows.into_iter()
            .map(|r| self.voiceprint_row(OP, r))
            .collect()
    }

    /// Up to `limit` voiceprints of `model_version` other than `exclude_customer`'s: a cohort
    /// for score normalisation.
    pub async fn voiceprint_cohort(
        &self,
        model_version: &str,
        exclude_customer: &str,
        limit: i64,
    ) -> Result<Vec<VoiceprintRow>, StoreError> {
        const OP: &str = "voiceprint_cohort";
        let rows = vp_pool!(self, pool => sqlx::query_as::<_, VoiceprintRecord>(COHORT_VOICEPRINTS)
            .bind(model_version)
            .bind(exclude_customer)
            .bind(limit.max(0))
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        rows.into_iter()
            .map(|r| self.voiceprint_row(OP, r))
            .collect()
    }

    /// Deletes the customer's voiceprint (right to be forgotten); whether there was one.
    pub async fn delete_voiceprint(&self, customer_id: &str) -> Result<bool, StoreError> {
        self.delete_by_key("delete_voiceprint", DELETE_VOICEPRINT, customer_id)
            .await
    }

    /// Runs a `DELETE ... WHERE key = $1`; whether a row went.
    async fn delete_by_key(
        &self,
        op: &'static str,
        sql: &'static str,
        key: &str,
    ) -> Result<bool, StoreError> {
        if let Some(w) = &self.writer {
            let args = vec![writer::Arg::Text(key.to_owned())];
            return Ok(self.write_rows(w, op, sql, args).await? > 0);
        }
        let n = vp_pool!(self, pool => sqlx::query(sql)
            .bind(key)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(self.query_err(op))?;
        Ok(n > 0)
    }

    /// Deletes every voiceprint last enrolled before `older_than`; answers what went.
    pub async fn expire_voiceprints(
        &self,
        older_than: DateTime<Utc>,
    ) -> Result<Vec<ExpiredVoiceprint>, StoreError> {
        const OP: &str = "expire_voiceprints";
        let rows = vp_pool!(self, pool => sqlx::query_as::<_, ExpiredRecord>(EXPIRE_VOICEPRINTS)
            .bind(super::to_ms(older_than))
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        Ok(rows
            .into_iter()
            .map(|r| ExpiredVoiceprint {
                customer_id: r.customer_id,
                audio_path: r.audio_path,
            })
            .collect())
    }

    /// Adds a fraudster's voiceprint under `label`, replacing an entry of the same label.
    /// Answers the entry's id.
    pub async fn watchlist_add(
        &self,
        e: &NewWatchlistEntry,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        const OP: &str = "watchlist_add";
        let embedding = encode_embedding(&e.embedding);
        let at = super::to_ms(at);
        if let Some(w) = &self.writer {
            use writer::Arg::{Int, OptText, Text};
            let args = vec![
                Text(e.label.clone()),
                Text(e.model_version.clone()),
                Text(embedding),
                Int(e.speech_ms),
                Int(e.utterances),
                OptText(e.note.clone()),
                Int(at),
            ];
            return w
                .write(writer::Write::new(UPSERT_WATCHLIST, args, true))
                .await
                .map_err(self.query_err(OP));
        }
        vp_pool!(self, pool => sqlx::query_scalar::<_, i64>(UPSERT_WATCHLIST)
            .bind(e.label.as_str())
            .bind(e.model_version.as_str())
            .bind(embedding.as_str())
            .bind(e.speech_ms)
            .bind(e.utterances)
            .bind(e.note.as_deref())
            .bind(at)
            .fetch_one(pool)
            .await)
        .map_err(self.query_err(OP))
    }

    /// The whole watchlist, by label.
    pub async fn watchlist(&self) -> Result<Vec<WatchlistRow>, StoreError> {
        const OP: &str = "watchlist";
        let rows = vp_pool!(self, pool => sqlx::query_as::<_, WatchlistRecord>(ALL_WATCHLIST)
            .fetch_all(pool)
            .await)
        .map_err(self.query_err(OP))?;
        rows.into_iter()
            .map(|r| {
                Ok(WatchlistRow {
                    embedding: self.decode_embedding(OP, r.id, &r.embedding)?,
                    created_at: self.ts(OP, r.id, "created_at_ms", r.created_at_ms)?,
                    id: r.id,
                    label: r.label,
                    model_version: r.model_version,
                    speech_ms: r.speech_ms,
                    utterances: r.utterances,
                    note: r.note,
                })
            })
            .collect()
    }

    /// Removes the watchlist entry `label`; whether there was one.
    pub async fn watchlist_remove(&self, label: &str) -> Result<bool, StoreError> {
        self.delete_by_key("watchlist_remove", DELETE_WATCHLIST, label)
            .await
    }
}

#[cfg(test)]
mod tests {
    //! Each scenario runs on SQLite below and on PostgreSQL when WARMLINE_TEST_POSTGRES_URL
    //! names a database it may create schemas in (scripts/setup-postgres.sh starts one).
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_else(|| panic!("bad test time {ms}"))
    }

    async fn open(url: &str) -> Store {
        match Store::open(url).await {
            Ok(store) => store,
            Err(e) => panic!("open {url}: {e}"),
        }
    }

    /// Values that need all nine significant digits of an f32.
    fn vector(seed: f32) -> Vec<f32> {
        (0..128)
            .map(|i| (seed + i as f32 * 0.123_456_79).sin() / 11.3)
            .collect()
    }

    fn print(customer: &str, seed: f32) -> NewVoiceprint {
        NewVoiceprint {
            customer_id: customer.to_owned(),
            model_version: "vosk-xvector:vosk-model-spk-0.4".to_owned(),
            embedding: vector(seed),
            speech_ms: 24_500,
            utterances: 3,
            self_similarity: Some(0.712_345),
            source: VoiceprintSource::Files,
            audio_path: None,
        }
    }

    async fn scenario_voiceprints(url: &str) {
        let store = open(url).await;
        assert_eq!(store.voiceprint("c1").await.expect("read"), None);
        store
            .save_voiceprint(&print("c1", 1.0), at(1_000))
            .await
            .expect("save");
        store
            .save_voiceprint(&print("c2", 2.0), at(2_000))
            .await
            .expect("save");
        let got = store.voiceprint("c1").await.expect("read").expect("c1");
        // Bit-exact round trip of the vector.
        assert_eq!(got.embedding, vector(1.0));
        assert_eq!((got.speech_ms, got.utterances), (24_500, 3));
        assert_eq!(got.self_similarity, Some(0.712_345));
        assert_eq!(got.source, VoiceprintSource::Files);
        assert_eq!((got.created_at, got.updated_at), (at(1_000), at(1_000)));

        // Re-enrolment replaces the print, keeps the creation time.
        let mut again = print("c1", 3.0);
        again.self_similarity = None;
        again.utterances = 1;
        again.source = VoiceprintSource::Calls;
        again.audio_path = Some("/var/lib/warmline/voiceprints/c1.wav".to_owned());
        store
            .save_voiceprint(&again, at(5_000))
            .await
            .expect("re-enrol");
        let got = store.voiceprint("c1").await.expect("read").expect("c1");
        assert_eq!(got.embedding, vector(3.0));
        assert_eq!(got.self_similarity, None);
        assert_eq!(got.source, VoiceprintSource::Calls);
        assert_eq!((got.created_at, got.updated_at), (at(1_000), at(5_000)));

        let all = store.voiceprints().await.expect("list");
        assert_eq!(
            all.iter()
                .map(|r| r.customer_id.as_str())
                .collect::<Vec<_>>(),
            ["c1", "c2"]
        );
        let cohort = store
            .voiceprint_cohort("vosk-xvector:vosk-model-spk-0.4", "c1", 10)
            .await
            .expect("cohort");
        assert_eq!(cohort.len(), 1);
        assert_eq!(cohort.first().map(|r| r.customer_id.as_str()), Some("c2"));
        assert!(store
            .voiceprint_cohort("other-model", "c1", 10)
            .await
            .expect("cohort")
            .is_empty());

        // Expiry counts from the last enrolment: c2 (2 s) goes, c1 (5 s) stays.
        let gone = store.expire_voiceprints(at(3_000)).await.expect("expire");
        assert_eq!(
            gone,
            [ExpiredVoiceprint {
                customer_id: "c2".to_owned(),
                audio_path: None
            }]
        );
        assert!(store.voiceprint("c2").await.expect("read").is_none());

        assert!(store.delete_voiceprint("c1").await.expect("delete"));
        assert!(!store.delete_voiceprint("c1").await.expect("delete again"));
        assert!(store.voiceprints().await.expect("list").is_empty());
        store.close().await;
    }

    async fn scenario_watchlist(url: &str) {
        let store = open(url).await;
        let entry = |label: &str, seed: f32| NewWatchlistEntry {
            label: label.to_owned(),
            model_version: "vosk-xvector:vosk-model-spk-0.4".to_owned(),
            embedding: vector(seed),
            speech_ms: 12_000,
            utterances: 2,
            note: Some("case 2026-031".to_owned()),
        };
        let a = store
            .watchlist_add(&entry("fraud-b", 1.0), at(1_000))
            .await
            .expect("add");
        let b = store
            .watchlist_add(&entry("fraud-a", 2.0), at(2_000))
            .await
            .expect("add");
        assert_ne!(a, b);
        // The same label again replaces its print.
        let a2 = store
            .watchlist_add(&entry("fraud-b", 4.0), at(3_000))
            .await
            .expect("replace");
        assert_eq!(a, a2);
        let list = store.watchlist().await.expect("list");
        assert_eq!(
            list.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
            ["fraud-a", "fraud-b"]
        );
        assert_eq!(list.get(1).map(|r| r.embedding.clone()), Some(vector(4.0)));
        assert_eq!(list.first().map(|r| r.created_at), Some(at(2_000)));
        assert!(store.watchlist_remove("fraud-a").await.expect("remove"));
        assert!(!store.watchlist_remove("fraud-a").await.expect("again"));
        assert_eq!(store.watchlist().await.expect("list").len(), 1);
        store.close().await;
    }

    async fn scenario_corrupt_embedding_is_reported(url: &str) {
        let store = open(url).await;
        store
            .save_voiceprint(&print("c9", 1.0), at(1_000))
            .await
            .expect("save");
        vp_pool!(store, pool => sqlx::query("UPDATE voiceprints SET embedding = 'oops'")
            .execute(pool)
            .await
            .map(|_| ()))
        .expect("corrupt it");
        let err = store.voiceprint("c9").await.expect_err("corrupt");
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    column: "embedding",
                    ..
                }
            ),
            "{err}"
        );
        store.close().await;
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/state/warmline.db", dir.path().display())
    }

    #[tokio::test]
    async fn voiceprints_save_replace_list_expire_delete() {
        let dir = tempfile::tempdir().expect("tmp");
        scenario_voiceprints(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn watchlist_add_replace_list_remove() {
        let dir = tempfile::tempdir().expect("tmp");
        scenario_watchlist(&sqlite_url(&dir)).await;
    }

    #[tokio::test]
    async fn a_corrupt_embedding_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tmp");
        scenario_corrupt_embedding_is_reported(&sqlite_url(&dir)).await;
    }

    async fn fresh_pg_schema(base: &str, name: &str) -> String {
        let pool = sqlx::postgres::PgPool::connect(base)
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_runs_the_voiceprint_scenarios() {
        let Ok(base) = std::env::var("WARMLINE_TEST_POSTGRES_URL") else {
            eprintln!(
                "WARMLINE_TEST_POSTGRES_URL not set; PostgreSQL voiceprint scenarios skipped"
            );
            return;
        };
        let schema = |what: &str| format!("wl_vp_{what}_{}", std::process::id());
        scenario_voiceprints(&fresh_pg_schema(&base, &schema("prints")).await).await;
        scenario_watchlist(&fresh_pg_schema(&base, &schema("watch")).await).await;
        scenario_corrupt_embedding_is_reported(&fresh_pg_schema(&base, &schema("corrupt")).await)
            .await;
    }
}
