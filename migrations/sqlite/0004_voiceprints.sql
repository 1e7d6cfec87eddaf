-- Voiceprints (src/speech/voiceprint.rs, src/store/voiceprints.rs). Keep in step with
-- migrations/postgres/0004_voiceprints.sql: same tables, columns and semantics.
-- embedding: the unit-length speaker vector as a JSON array of numbers (f32 printed so that it
--            reads back bit-exact); TEXT rather than BLOB so the same SQL and the SQLite
--            group-commit writer (text and integer arguments) serve both backends.
-- model_version: embeddings of different models are never compared.
-- speech_ms, utterances, self_similarity_ppm (mean pairwise cosine x 1e6, NULL for a single
-- utterance): the enrolment's quality figures. No audio is stored here; audio_path names the
-- enrolment WAV only when [voiceprint] store_audio is set.

-- One voiceprint per customer; re-enrolment replaces it (created_at_ms stays, updated_at_ms moves,
-- expiry counts from updated_at_ms).
CREATE TABLE voiceprints (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id         TEXT    NOT NULL UNIQUE,
    model_version       TEXT    NOT NULL,
    embedding           TEXT    NOT NULL,
    speech_ms           INTEGER NOT NULL CHECK (speech_ms >= 0),
    utterances          INTEGER NOT NULL CHECK (utterances >= 1),
    self_similarity_ppm INTEGER,
    source              TEXT    NOT NULL CHECK (source IN ('calls', 'files')),
    audio_path          TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL
) STRICT;
CREATE INDEX voiceprints_updated ON voiceprints (updated_at_ms);

-- Voiceprints of known fraudsters, by a label the fraud team chooses.
CREATE TABLE voiceprint_watchlist (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    label         TEXT    NOT NULL UNIQUE,
    model_version TEXT    NOT NULL,
    embedding     TEXT    NOT NULL,
    speech_ms     INTEGER NOT NULL CHECK (speech_ms >= 0),
    utterances    INTEGER NOT NULL CHECK (utterances >= 1),
    note          TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;
