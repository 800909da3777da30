-- 0003: a leaner predictions table (84.45 -> 59.57 bytes per row on disk at 100 M rows,
-- `llmops bench clickhouse`; see deploy/clickhouse/SIZING.md). Three product decisions:
--
-- * request_id is a UUID (16 bytes, 14.7 B/row compressed) instead of its text (36 bytes,
--   16.1 B/row compressed). The mesh mints UUIDv7 request ids (time-ordered); an id a caller
--   sent in another form is stored as the UUID of the first 16 bytes of its SHA-256
--   (llmops.clickhouse.values.request_uuid; the same expression is used below), so
--   lookups by the caller's id still work through that function.
-- * event_id is not stored here (13 B/row, 15% of the table, never queried): duplicates are
--   stopped before the insert (log high-water marks, insert tokens, the sink's event_id
--   window), and a prediction row is addressed by (request_id, model_name,
--   route_target_index). The envelope keeps its event_id; every other table keeps it.
-- * user_id and session_id move out of the hot table (9 B/row) into
--   prediction_payloads (7-day TTL): a pseudonymous user id is personal data, and erasing
--   one user from a 90-day table of hundreds of billions of rows is a mutation that
--   rewrites every part; no dashboard or rollup reads them (experiment analysis joins
--   exposures and feedback on unit_id).
--
-- Nothing is deleted: the 0001-form table is renamed to predictions_0001 (its 90-day TTL
-- empties it; drop it sooner if its event/user/session ids are not needed) and its rows
-- are copied into the new table before the rollup views are re-attached, so the rollups
-- do not count them twice.

DROP VIEW IF EXISTS predictions_1m_mv;
DROP VIEW IF EXISTS predictions_1h_mv;
DROP VIEW IF EXISTS prediction_stages_1h_mv;

RENAME TABLE predictions TO predictions_0001;

CREATE TABLE IF NOT EXISTS predictions
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    request_id             UUID                           CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32                         CODEC(ZSTD(1)),
    experiment_id          LowCardinality(String),
    variant                LowCardinality(String),
    -- end-to-end latency seen by the service, microseconds
    total_latency_us       UInt32                         CODEC(T64, ZSTD(1)),
    cache_hit              Bool,
    -- gRPC status code, 0 = OK
    status_code            UInt8,
    prompt_tokens          UInt32                         CODEC(T64, ZSTD(1)),
    completion_tokens      UInt32                         CODEC(T64, ZSTD(1)),
    cached_prompt_tokens   UInt32                         CODEC(T64, ZSTD(1)),
    -- Usage timings converted from ms (double) to integer microseconds
    ttft_us                UInt32                         CODEC(T64, ZSTD(1)),
    tpot_us                UInt32                         CODEC(T64, ZSTD(1)),
    queue_us               UInt32                         CODEC(T64, ZSTD(1)),
    model_time_us          UInt32                         CODEC(T64, ZSTD(1)),
    -- cost in 10^-9 units of cost_currency (Money.units * 1e9 + Money.nanos)
    cost_nanos             Int64                          CODEC(T64, ZSTD(1)),
    cost_currency          LowCardinality(String),
    -- per-stage durations, parallel arrays in start order
    stage_names            Array(LowCardinality(String)),
    stage_durations_us     Array(UInt32)                  CODEC(T64, ZSTD(1)),
    -- most severe guardrail verdict of the request ('' when none ran): ALLOW < FLAG < REDACT < BLOCK
    guardrail_verdict      LowCardinality(String),
    guardrail_policies     Array(LowCardinality(String)),
    guardrail_verdicts     Array(LowCardinality(String)),
    guardrail_finding_types Array(LowCardinality(String)),
    -- BLAKE2b-128 hex of the feature values used ('' when none)
    feature_vector_hash    String                         CODEC(ZSTD(1)),
    prompt_name            LowCardinality(String),
    prompt_version         UInt32                         CODEC(ZSTD(1)),
    route_target_index     UInt8,
    locale                 LowCardinality(String),
    device                 LowCardinality(String),
    client_name            LowCardinality(String),
    finish_reason          LowCardinality(String),
    error_reason           LowCardinality(String),
    -- inputs/output (and user/session ids) were logged to prediction_payloads
    has_payload            Bool,
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(T64, ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, route, model_name, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000,
         ttl_only_drop_parts = 1;

INSERT INTO predictions
SELECT
    event_time,
    ifNull(toUUIDOrNull(request_id),
           toUUID(UUIDNumToString(toFixedString(substring(SHA256(request_id), 1, 16), 16)))),
    tenant, market, route, task, model_name, model_version, experiment_id, variant,
    total_latency_us, cache_hit, status_code, prompt_tokens, completion_tokens,
    cached_prompt_tokens, ttft_us, tpot_us, queue_us, model_time_us, cost_nanos,
    cost_currency, stage_names, stage_durations_us, guardrail_verdict, guardrail_policies,
    guardrail_verdicts, guardrail_finding_types, feature_vector_hash, prompt_name,
    prompt_version, route_target_index, locale, device, client_name, finish_reason,
    error_reason, has_payload, log_topic, log_partition, log_offset
FROM predictions_0001;

ALTER TABLE prediction_payloads
    ADD COLUMN IF NOT EXISTS user_id String CODEC(ZSTD(1)) AFTER model_version,
    ADD COLUMN IF NOT EXISTS session_id String CODEC(ZSTD(1)) AFTER user_id;

-- The rollup views of 0002, unchanged, re-attached to the new table.
CREATE MATERIALIZED VIEW IF NOT EXISTS predictions_1m_mv TO predictions_1m AS
SELECT
    toStartOfMinute(event_time) AS minute,
    tenant, route, model_name, model_version, variant,
    toUInt64(count()) AS requests,
    toUInt64(countIf(status_code != 0)) AS errors,
    toUInt64(countIf(cache_hit)) AS cache_hits,
    toUInt64(countIf(guardrail_verdict = 'BLOCK')) AS guardrail_blocks,
    sum(toUInt64(prompt_tokens)) AS prompt_tokens,
    sum(toUInt64(completion_tokens)) AS completion_tokens,
    sum(cost_nanos) AS cost_nanos,
    quantilesTDigestState(0.5, 0.95, 0.99)(total_latency_us) AS latency_us,
    quantilesTDigestState(0.5, 0.95, 0.99)(ttft_us) AS ttft_us
FROM predictions
GROUP BY minute, tenant, route, model_name, model_version, variant;

CREATE MATERIALIZED VIEW IF NOT EXISTS predictions_1h_mv TO predictions_1h AS
SELECT
    toStartOfHour(event_time) AS hour,
    tenant, route, model_name, model_version, variant,
    toUInt64(count()) AS requests,
    toUInt64(countIf(status_code != 0)) AS errors,
    toUInt64(countIf(cache_hit)) AS cache_hits,
    toUInt64(countIf(guardrail_verdict = 'BLOCK')) AS guardrail_blocks,
    sum(toUInt64(prompt_tokens)) AS prompt_tokens,
    sum(toUInt64(completion_tokens)) AS completion_tokens,
    sum(cost_nanos) AS cost_nanos,
    quantilesTDigestState(0.5, 0.95, 0.99)(total_latency_us) AS latency_us,
    quantilesTDigestState(0.5, 0.95, 0.99)(ttft_us) AS ttft_us
FROM predictions
GROUP BY hour, tenant, route, model_name, model_version, variant;

CREATE MATERIALIZED VIEW IF NOT EXISTS prediction_stages_1h_mv TO prediction_stages_1h AS
SELECT
    toStartOfHour(event_time) AS hour,
    tenant, route, model_name, variant,
    stage,
    toUInt64(count()) AS calls,
    quantilesTDigestState(0.5, 0.95, 0.99)(duration) AS duration_us
FROM predictions
ARRAY JOIN stage_names AS stage, stage_durations_us AS duration
GROUP BY hour, tenant, route, model_name, variant, stage;
