-- Cluster form of the predictions family (NOT applied by llmops migrate; run by the
-- cluster's deploy job with clickhouse-client --multiquery against one node).
--
-- Assumes server config with: a cluster named in the {cluster} macro, {shard} and {replica}
-- macros per node, ClickHouse Keeper, and a storage policy 'hot_cold' with volumes 'hot'
-- (NVMe) and 'cold' (HDD/object storage). See deploy/clickhouse/README.md ("Cluster form").
--
-- Pattern for every table:
--   <name>_local   ReplicatedMergeTree family on each shard (same columns, ORDER BY,
--                  PARTITION BY, codecs, skip indexes as migrations/0001-0003)
--   <name>         Distributed over <name>_local, so queries and the sink's INSERTs use the
--                  same table names as on one node.
-- Raw tables are sharded by cityHash64(request_id): one request's prediction, guardrail
-- decisions and feedback land on one shard (joins by request_id stay local), and load spreads
-- evenly. Rollup MVs run on each shard over its local rows; the Distributed rollup tables
-- merge the partial states of all shards at query time (-Merge combinators are exact for
-- sums and counts; TDigest merges as usual).
-- The sink inserts into the Distributed table with insert_distributed_sync=1 so an insert
-- returns only when every shard has its block (insert_deduplication_token is forwarded and
-- Replicated tables dedupe by it).

CREATE TABLE IF NOT EXISTS predictions_local ON CLUSTER '{cluster}'
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
    total_latency_us       UInt32                         CODEC(T64, ZSTD(1)),
    cache_hit              Bool,
    status_code            UInt8,
    prompt_tokens          UInt32                         CODEC(T64, ZSTD(1)),
    completion_tokens      UInt32                         CODEC(T64, ZSTD(1)),
    cached_prompt_tokens   UInt32                         CODEC(T64, ZSTD(1)),
    ttft_us                UInt32                         CODEC(T64, ZSTD(1)),
    tpot_us                UInt32                         CODEC(T64, ZSTD(1)),
    queue_us               UInt32                         CODEC(T64, ZSTD(1)),
    model_time_us          UInt32                         CODEC(T64, ZSTD(1)),
    cost_nanos             Int64                          CODEC(T64, ZSTD(1)),
    cost_currency          LowCardinality(String),
    stage_names            Array(LowCardinality(String)),
    stage_durations_us     Array(UInt32)                  CODEC(T64, ZSTD(1)),
    guardrail_verdict      LowCardinality(String),
    guardrail_policies     Array(LowCardinality(String)),
    guardrail_verdicts     Array(LowCardinality(String)),
    guardrail_finding_types Array(LowCardinality(String)),
    feature_vector_hash    String                         CODEC(ZSTD(1)),
    prompt_name            LowCardinality(String),
    prompt_version         UInt32                         CODEC(ZSTD(1)),
    route_target_index     UInt8,
    locale                 LowCardinality(String),
    device                 LowCardinality(String),
    client_name            LowCardinality(String),
    finish_reason          LowCardinality(String),
    error_reason           LowCardinality(String),
    has_payload            Bool,
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(T64, ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/predictions', '{replica}')
PARTITION BY toDate(event_time)
ORDER BY (tenant, route, model_name, event_time)
TTL toDateTime(event_time) + INTERVAL 3 DAY TO VOLUME 'cold',
    toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS storage_policy = 'hot_cold', index_granularity = 8192, ttl_only_drop_parts = 1,
         replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS predictions ON CLUSTER '{cluster}' AS predictions_local
-- toString: the other tables hold request_id as text; hashing the same text keeps one
-- request's rows on one shard (mesh ids are canonical lowercase UUIDs, see migration 0003).
ENGINE = Distributed('{cluster}', currentDatabase(), predictions_local, cityHash64(toString(request_id)));

CREATE TABLE IF NOT EXISTS prediction_payloads_local ON CLUSTER '{cluster}'
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32                         CODEC(ZSTD(1)),
    user_id                String                         CODEC(ZSTD(1)),
    session_id             String                         CODEC(ZSTD(1)),
    inputs                 Map(String, String)            CODEC(ZSTD(3)),
    output                 String                         CODEC(ZSTD(3)),
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/prediction_payloads', '{replica}')
PARTITION BY toDate(event_time)
ORDER BY (tenant, task, route, event_time)
TTL toDateTime(event_time) + INTERVAL 7 DAY DELETE
SETTINGS ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS prediction_payloads ON CLUSTER '{cluster}' AS prediction_payloads_local
ENGINE = Distributed('{cluster}', currentDatabase(), prediction_payloads_local, cityHash64(request_id));

CREATE TABLE IF NOT EXISTS predictions_1m_local ON CLUSTER '{cluster}'
(
    minute                 DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    tenant                 LowCardinality(String),
    route                  LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32,
    variant                LowCardinality(String),
    requests               SimpleAggregateFunction(sum, UInt64),
    errors                 SimpleAggregateFunction(sum, UInt64),
    cache_hits             SimpleAggregateFunction(sum, UInt64),
    guardrail_blocks       SimpleAggregateFunction(sum, UInt64),
    prompt_tokens          SimpleAggregateFunction(sum, UInt64),
    completion_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos             SimpleAggregateFunction(sum, Int64),
    latency_us             AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt32),
    ttft_us                AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt32)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/llmops/predictions_1m', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, route, model_name, model_version, variant)
TTL minute + INTERVAL 30 DAY DELETE
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS predictions_1m_mv ON CLUSTER '{cluster}'
TO predictions_1m_local AS
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
FROM predictions_local
GROUP BY minute, tenant, route, model_name, model_version, variant;

CREATE TABLE IF NOT EXISTS predictions_1m ON CLUSTER '{cluster}' AS predictions_1m_local
ENGINE = Distributed('{cluster}', currentDatabase(), predictions_1m_local);

-- predictions_1h, prediction_stages_1h: exactly as predictions_1m above with the column
-- lists, ORDER BY, index_granularity and MV SELECTs of migrations/0002_rollups.sql, engines
--   ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/llmops/<name>', '{replica}')
-- MVs reading FROM predictions_local, and a Distributed('{cluster}', currentDatabase(),
-- <name>_local) table named <name>.
