-- Rollups: materialized views into AggregatingMergeTree tables, so dashboards never scan
-- raw rows. Counters are SimpleAggregateFunction(sum, ...) (a plain number, summed on
-- merge); latencies are quantilesTDigest states (~1% relative error at the tails, a few
-- hundred bytes per state). Measured on the MV insert path, 200k rows into the 1-minute
-- rollup: TDigest 0.8 s, reservoir quantiles 0.64 s (not deterministic), BFloat16 3.2 s,
-- DDSketch 4.8 s (both allocate a large histogram per group). Merged digests depend on
-- merge order, so tests compare rollup quantiles with quantileExact over raw rows within a
-- tolerance, and counters exactly. Every MV dedupes with the insert's token
-- (deduplicate_blocks_in_dependent_materialized_views, set by the stores on each insert).
--
-- Two resolutions: 1 minute (live dashboards, the last hours) and 1 hour (days to months).
-- Query helpers: llmops/clickhouse/queries.py picks the table by window length.
--
-- index_granularity = 1024 on every rollup: a rollup row is fat (~400 B of digest states)
-- and a dashboard query reads a few tens of thousands of them, i.e. 4-5 granules of the
-- default 8192 rows -- one read stream, so the digest merges (the whole cost of the
-- query) ran on one core. With 1024-row granules (and the helpers' concurrent-read
-- settings) the window splits over all cores: 24 h per model 106 -> 63 ms on 2 vCPU.

CREATE TABLE IF NOT EXISTS predictions_1m
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
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, route, model_name, model_version, variant)
TTL minute + INTERVAL 30 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

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

CREATE TABLE IF NOT EXISTS predictions_1h
(
    hour                   DateTime('UTC')                CODEC(Delta, ZSTD(1)),
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
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, route, model_name, model_version, variant)
TTL hour + INTERVAL 800 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

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

-- Per-stage latency (one row per stage present in the request's breakdown). Keyed without
-- model_version (stage_latencies reports per route/model/variant): 2.5x fewer, fuller
-- states, so the 24 h per-stage query merges 40k instead of 100k digests per tenant.
CREATE TABLE IF NOT EXISTS prediction_stages_1h
(
    hour                   DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    tenant                 LowCardinality(String),
    route                  LowCardinality(String),
    model_name             LowCardinality(String),
    variant                LowCardinality(String),
    stage                  LowCardinality(String),
    calls                  SimpleAggregateFunction(sum, UInt64),
    duration_us            AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, route, model_name, variant, stage)
TTL hour + INTERVAL 800 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

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

-- Guardrail decisions per policy / verdict.
CREATE TABLE IF NOT EXISTS guardrail_decisions_1m
(
    minute                 DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    tenant                 LowCardinality(String),
    policy                 LowCardinality(String),
    policy_version         UInt32,
    direction              LowCardinality(String),
    verdict                LowCardinality(String),
    route                  LowCardinality(String),
    decisions              SimpleAggregateFunction(sum, UInt64),
    degraded               SimpleAggregateFunction(sum, UInt64),
    findings               SimpleAggregateFunction(sum, UInt64),
    latency_us             AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, policy, verdict, direction, policy_version, route)
TTL minute + INTERVAL 400 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS guardrail_decisions_1m_mv TO guardrail_decisions_1m AS
SELECT
    toStartOfMinute(event_time) AS minute,
    tenant, policy, policy_version, direction, verdict, route,
    toUInt64(count()) AS decisions,
    toUInt64(countIf(degraded)) AS degraded,
    sum(toUInt64(length(finding_types))) AS findings,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_us) AS latency_us
FROM guardrail_decisions
GROUP BY minute, tenant, policy, policy_version, direction, verdict, route;

-- Exposures per experiment variant (sample-ratio checks read these counts).
CREATE TABLE IF NOT EXISTS exposures_1h
(
    hour                   DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    tenant                 LowCardinality(String),
    experiment_id          LowCardinality(String),
    experiment_version     UInt32,
    layer                  LowCardinality(String),
    variant                LowCardinality(String),
    exposures              SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, experiment_id, hour, experiment_version, layer, variant)
TTL hour + INTERVAL 800 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS exposures_1h_mv TO exposures_1h AS
SELECT
    toStartOfHour(event_time) AS hour,
    tenant, experiment_id, experiment_version, layer, variant,
    toUInt64(count()) AS exposures
FROM exposures
GROUP BY hour, tenant, experiment_id, experiment_version, layer, variant;
