-- 0007: rollups behind GetFeedbackStats (issue #14), so statistics over tens of millions of
-- feedback rows read a few thousand rows instead of joining the raw tables.
--
-- prediction_counts_1h: predictions per hour, tenant, task, route, model, variant and market
-- (the denominator of rates), kept by a materialized view like the other prediction
-- rollups; rows logged before this migration are backfilled once.
--
-- feedback_stats_1h: per hour of feedback time and per (task, route, model, variant, market,
-- signal, kind), the sufficient statistics of the newest record of each idempotency key,
-- joined to its prediction. Feedback can change the past (a toggled thumb supersedes a
-- record in another hour; a prediction logged late attributes feedback that had none), so
-- this one is not a materialized view: the feedback service refreshes the hours touched by
-- newly received records, writing each refreshed hour as a new `version` and recording it
-- in feedback_stats_hours. A query reads, per hour, the rows of its newest version only.

CREATE TABLE IF NOT EXISTS prediction_counts_1h
(
    hour                   DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    tenant                 LowCardinality(String),
    task                   LowCardinality(String),
    route                  LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32,
    variant                LowCardinality(String),
    market                 LowCardinality(String),
    predictions            SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, task, hour, route, model_name, model_version, variant, market)
TTL hour + INTERVAL 800 DAY DELETE
SETTINGS index_granularity = 1024, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS prediction_counts_1h_mv TO prediction_counts_1h AS
SELECT toStartOfHour(event_time) AS hour, tenant, task, route, model_name, model_version,
       variant, market, toUInt64(count()) AS predictions
FROM predictions
GROUP BY hour, tenant, task, route, model_name, model_version, variant, market;

INSERT INTO prediction_counts_1h
SELECT toStartOfHour(event_time) AS hour, tenant, task, route, model_name, model_version,
       variant, market, toUInt64(count()) AS predictions
FROM predictions
GROUP BY hour, tenant, task, route, model_name, model_version, variant, market;

CREATE TABLE IF NOT EXISTS feedback_stats_1h
(
    hour                   DateTime('UTC')                CODEC(Delta, ZSTD(1)),
    version                UInt64,
    tenant                 LowCardinality(String),
    task                   LowCardinality(String),
    route                  LowCardinality(String),
    model                  LowCardinality(String),
    variant                LowCardinality(String),
    market                 LowCardinality(String),
    signal                 LowCardinality(String),
    kind                   LowCardinality(String),
    n                      UInt64,
    requests               AggregateFunction(uniqCombined(14), String),
    ups                    UInt64,
    thumbs                 UInt64,
    rated                  UInt64,
    rating_sum             Float64,
    rating_sum2            Float64,
    dwell_sum              Float64,
    dwell_sum2             Float64,
    label_names            Array(String),
    label_counts           Array(UInt64),
    value_currencies       Array(String),
    value_nanos            Array(Int64),
    superseded             UInt64,
    unmatched              UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, task, hour, version, route, model, variant, market, signal, kind)
TTL hour + INTERVAL 400 DAY DELETE
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS feedback_stats_hours
(
    hour                   DateTime('UTC'),
    version                UInt64,
    refreshed_at           DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (hour, version)
TTL toDateTime(hour) + INTERVAL 400 DAY DELETE;

CREATE TABLE IF NOT EXISTS feedback_rollup_progress
(
    received_until         DateTime64(3, 'UTC'),
    refreshed_at           DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY refreshed_at
TTL toDateTime(refreshed_at) + INTERVAL 30 DAY DELETE;
