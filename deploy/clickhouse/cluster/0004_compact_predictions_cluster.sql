-- Cluster form of migrations/0008_compact_predictions.sql (request id in three parts read
-- back through the request_id ALIAS, timings at 8 significant bits, per-column codecs).
-- NOT applied by llmops migrate: the cluster's deploy job runs it with clickhouse-client
-- --multiquery against one node, and runs the per-shard copy below on one replica of each
-- shard. Needs ClickHouse >= 22.3 (EPHEMERAL columns); not runnable on this workplace's
-- 18.16 (parsed by tests/integration/test_clickhouse_schema.py; the single-node form is
-- tested on chdb).
--
-- 1. Stop the rollup views and move the old table aside (its 90-day TTL empties it).
DROP VIEW IF EXISTS predictions_1m_mv ON CLUSTER '{cluster}';
DROP VIEW IF EXISTS predictions_1h_mv ON CLUSTER '{cluster}';
DROP VIEW IF EXISTS prediction_stages_1h_mv ON CLUSTER '{cluster}';
DROP VIEW IF EXISTS prediction_counts_1h_mv ON CLUSTER '{cluster}';
DROP TABLE IF EXISTS predictions ON CLUSTER '{cluster}';
RENAME TABLE predictions_local TO predictions_0007_local ON CLUSTER '{cluster}';

-- 2. The new local table, on a new Keeper path (the old path still holds the old table).
CREATE TABLE IF NOT EXISTS predictions_local ON CLUSTER '{cluster}'
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/predictions_0008', '{replica}')
PARTITION BY toDate(event_time)
ORDER BY (tenant, route, model_name, toStartOfMinute(event_time), cache_hit, status_code,
          model_version, variant, event_time)
TTL toDateTime(event_time) + INTERVAL 3 DAY TO VOLUME 'cold',
    toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS storage_policy = 'hot_cold', index_granularity = 8192, ttl_only_drop_parts = 1,
         replicated_deduplication_window = 10000;

-- 3. The Distributed table again. Sharded by the text of the request id as before
-- (toString of the UUID a writer inserts), so a request's rows stay on the shard that holds
-- its older rows, guardrail decisions and feedback.
CREATE TABLE IF NOT EXISTS predictions ON CLUSTER '{cluster}' AS predictions_local
ENGINE = Distributed('{cluster}', currentDatabase(), predictions_local, cityHash64(toString(request_uuid)));

-- 4. On one replica of each shard (not ON CLUSTER: each shard copies its own rows):
--   INSERT INTO predictions_local (<the column list of 0008's INSERT>)
--   SELECT <the SELECT list of 0008's INSERT> FROM predictions_0007_local;
-- then re-create the four views ON CLUSTER exactly as in 0001/0003 of this directory
-- (FROM predictions_local), as migrations/0008 does on one node.
