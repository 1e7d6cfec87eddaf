-- Routing to people (caller lookup, voiceprint checks, queues, recordings).
-- customer_id: from the caller lookup, NULL for an unknown number (indexed: "all calls of X").
-- routing: a JSON object {lookup, caller, voice, watchlist, queue, agent, wait_ms, reasons},
--          NULL when the call never got that far.
-- recording: path of the call's stereo WAV (left caller, right agent), NULL when not recorded.
ALTER TABLE cdrs ADD COLUMN customer_id TEXT;
ALTER TABLE cdrs ADD COLUMN routing TEXT;
ALTER TABLE cdrs ADD COLUMN recording TEXT;
CREATE INDEX cdrs_customer_id ON cdrs (customer_id);
