-- 0008: a compact predictions table (issue #16). Bytes on disk per row after OPTIMIZE FINAL,
-- `llmops bench clickhouse --rows 20000000`: 59.6 -> 46.6 at the bench's sparse month,
-- 45.0 at one production shard's density (every step measured: deploy/clickhouse/SIZING.md).
-- Every column keeps its name, type and meaning for readers:
--
-- * request_id is stored in three parts and read back exactly through an ALIAS column of
--   the same name and type (UUID) that carries the bloom filter index. A UUIDv7 (what the
--   mesh mints) holds its request's millisecond: stored as its lag behind event_time it
--   takes ~1.2 bytes instead of the ~5 a 16-byte UUID column spends on it (no codec can
--   delta a UUID); the 74 random bits stay (9.3 B). Any other UUID round-trips exactly too
--   (its "lag" is then just a large number). Writers insert the id into `request_uuid`, an
--   EPHEMERAL column the parts are computed from.
-- * Timings (total_latency_us, ttft_us, tpot_us, queue_us, model_time_us,
--   stage_durations_us) are stored as the bfloat16 bit pattern of their value (UInt16: 8
--   significant bits, rounded half up; exact below 256 us, within 0.4% above, clamped at
--   0xFF000000 us = 71 min) and read back as UInt32 microseconds through ALIAS columns of
--   their old names. The low bits of a microsecond timer were ~7 B/row of noise no codec
--   compresses. Writers insert exact values into the `<name>_in` EPHEMERAL columns; the
--   table rounds, so every writer stores the same thing. Tokens, cost, status stay exact.
-- * ORDER BY groups each model's minute by cache_hit, status_code, model_version and
--   variant before time, so like rows compress together; time pruning keeps minute
--   granularity.
-- * Codecs measured per column: T64 on the small integers (versions, log partition),
--   Delta+T64 on event_time; the request-id bloom filter at 2.5% false positives.
--
-- As in 0003 nothing is deleted: the 0003-form table is renamed to predictions_0007 (its
-- 90-day TTL empties it; drop it sooner if disk is short) and its rows are copied into the
-- new table (their timings rounded like new rows) before the rollup views are re-attached,
-- so no rollup counts them twice.

DROP VIEW IF EXISTS predictions_1m_mv;
DROP VIEW IF EXISTS predictions_1h_mv;
DROP VIEW IF EXISTS prediction_stages_1h_mv;
DROP VIEW IF EXISTS prediction_counts_1h_mv;

RENAME TABLE predictions TO predictions_0007;

CREATE TABLE IF NOT EXISTS predictions
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, T64, ZSTD(1)),
    -- the request id as written (any UUID): not stored, split into the three columns below
    request_uuid           UUID                           EPHEMERAL,
    -- milliseconds from the UUIDv7's time (its top 48 bits) to event_time
    request_id_lag_ms      Int64
        DEFAULT toUnixTimestamp64Milli(event_time) - toInt64(bitShiftRight(toUInt128(request_uuid), 80))
        CODEC(T64, ZSTD(1)),
    -- bits 64-79: the version nibble and rand_a
    request_id_mid         UInt16
        DEFAULT toUInt16(bitAnd(bitShiftRight(toUInt128(request_uuid), 64), 65535))
        CODEC(T64, ZSTD(1)),
    -- the low 64 bits: variant and rand_b, the top bit flipped (an RFC 9562 variant, 0b10,
    -- becomes 0b00, so T64 stores the 62 random bits and nothing above them)
    request_id_lo          UInt64
        DEFAULT bitXor(toUInt64(bitAnd(toUInt128(request_uuid), 18446744073709551615)),
                       9223372036854775808)
        CODEC(T64, ZSTD(1)),
    request_id             UUID ALIAS reinterpretAsUUID(concat(
        reinterpretAsFixedString(bitOr(
            bitShiftLeft(toUInt64(toUnixTimestamp64Milli(event_time) - request_id_lag_ms), 16),
            toUInt64(request_id_mid))),
        reinterpretAsFixedString(bitXor(request_id_lo, 9223372036854775808)))),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32                         CODEC(T64, ZSTD(1)),
    experiment_id          LowCardinality(String),
    variant                LowCardinality(String),
    -- end-to-end latency seen by the service, microseconds
    total_latency_us_in    UInt32                         EPHEMERAL,
    total_latency_us_bf16  UInt16
        DEFAULT toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(
            least(total_latency_us_in, 4278190080))) + 32768, 16))
        CODEC(T64, ZSTD(1)),
    total_latency_us       UInt32
        ALIAS toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(total_latency_us_bf16), 16))),
    cache_hit              Bool,
    -- gRPC status code, 0 = OK
    status_code            UInt8,
    prompt_tokens          UInt32                         CODEC(T64, ZSTD(1)),
    completion_tokens      UInt32                         CODEC(T64, ZSTD(1)),
    cached_prompt_tokens   UInt32                         CODEC(T64, ZSTD(1)),
    -- Usage timings converted from ms (double) to integer microseconds
    ttft_us_in             UInt32                         EPHEMERAL,
    ttft_us_bf16           UInt16
        DEFAULT toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(
            least(ttft_us_in, 4278190080))) + 32768, 16))
        CODEC(T64, ZSTD(1)),
    ttft_us                UInt32
        ALIAS toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(ttft_us_bf16), 16))),
    tpot_us_in             UInt32                         EPHEMERAL,
    tpot_us_bf16           UInt16
        DEFAULT toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(
            least(tpot_us_in, 4278190080))) + 32768, 16))
        CODEC(T64, ZSTD(1)),
    tpot_us                UInt32
        ALIAS toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(tpot_us_bf16), 16))),
    queue_us_in            UInt32                         EPHEMERAL,
    queue_us_bf16          UInt16
        DEFAULT toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(
            least(queue_us_in, 4278190080))) + 32768, 16))
        CODEC(T64, ZSTD(1)),
    queue_us               UInt32
        ALIAS toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(queue_us_bf16), 16))),
    model_time_us_in       UInt32                         EPHEMERAL,
    model_time_us_bf16     UInt16
        DEFAULT toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(
            least(model_time_us_in, 4278190080))) + 32768, 16))
        CODEC(T64, ZSTD(1)),
    model_time_us          UInt32
        ALIAS toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(model_time_us_bf16), 16))),
    -- cost in 10^-9 units of cost_currency (Money.units * 1e9 + Money.nanos)
    cost_nanos             Int64                          CODEC(T64, ZSTD(1)),
    cost_currency          LowCardinality(String),
    -- per-stage durations, parallel arrays in start order
    stage_names            Array(LowCardinality(String)),
    stage_durations_us_in  Array(UInt32)                  EPHEMERAL,
    stage_durations_us_bf16 Array(UInt16)
        DEFAULT arrayMap(
            x -> toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32(least(x, 4278190080))) + 32768, 16)),
            stage_durations_us_in)
        CODEC(T64, ZSTD(1)),
    stage_durations_us     Array(UInt32)
        ALIAS arrayMap(c -> toUInt32(reinterpretAsFloat32(bitShiftLeft(toUInt32(c), 16))),
                       stage_durations_us_bf16),
    -- most severe guardrail verdict of the request ('' when none ran): ALLOW < FLAG < REDACT < BLOCK
    guardrail_verdict      LowCardinality(String),
    guardrail_policies     Array(LowCardinality(String)),
    guardrail_verdicts     Array(LowCardinality(String)),
    guardrail_finding_types Array(LowCardinality(String)),
    -- BLAKE2b-128 hex of the feature values used ('' when none)
    feature_vector_hash    String                         CODEC(ZSTD(1)),
    prompt_name            LowCardinality(String),
    prompt_version         UInt32                         CODEC(T64, ZSTD(1)),
    route_target_index     UInt8,
    locale                 LowCardinality(String),
    device                 LowCardinality(String),
    client_name            LowCardinality(String),
    finish_reason          LowCardinality(String),
    error_reason           LowCardinality(String),
    skipped_steps          Array(LowCardinality(String)),
    -- inputs/output (and user/session ids) were logged to prediction_payloads
    has_payload            Bool,
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(T64, ZSTD(1)),
    log_offset             UInt64                         CODEC(T64, ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.025) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, route, model_name, toStartOfMinute(event_time), cache_hit, status_code,
          model_version, variant, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000,
         ttl_only_drop_parts = 1;

INSERT INTO predictions
    (event_time, request_uuid, tenant, market, route, task, model_name, model_version,
     experiment_id, variant, total_latency_us_in, cache_hit, status_code, prompt_tokens,
     completion_tokens, cached_prompt_tokens, ttft_us_in, tpot_us_in, queue_us_in,
     model_time_us_in, cost_nanos, cost_currency, stage_names, stage_durations_us_in,
     guardrail_verdict,
     guardrail_policies, guardrail_verdicts, guardrail_finding_types, feature_vector_hash,
     prompt_name, prompt_version, route_target_index, locale, device, client_name,
     finish_reason, error_reason, skipped_steps, has_payload, log_topic, log_partition,
     log_offset)
SELECT
    event_time, request_id, tenant, market, route, task, model_name, model_version,
    experiment_id, variant, total_latency_us, cache_hit, status_code, prompt_tokens,
    completion_tokens, cached_prompt_tokens, ttft_us, tpot_us, queue_us, model_time_us,
    cost_nanos, cost_currency, stage_names, stage_durations_us, guardrail_verdict,
    guardrail_policies, guardrail_verdicts, guardrail_finding_types, feature_vector_hash,
    prompt_name, prompt_version, route_target_index, locale, device, client_name,
    finish_reason, error_reason, skipped_steps, has_payload, log_topic, log_partition,
    log_offset
FROM predictions_0007;

-- The rollup views of 0002/0003 and 0007, unchanged, re-attached to the new table.
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

CREATE MATERIALIZED VIEW IF NOT EXISTS prediction_counts_1h_mv TO prediction_counts_1h AS
SELECT toStartOfHour(event_time) AS hour, tenant, task, route, model_name, model_version,
       variant, market, toUInt64(count()) AS predictions
FROM predictions
GROUP BY hour, tenant, task, route, model_name, model_version, variant, market;
