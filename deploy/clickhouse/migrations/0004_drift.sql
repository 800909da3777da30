-- 0004: drift reports, written by the governance service's drift job
-- (services/governance/drift_job.py): one row per (route, model, metric) and run, the
-- population stability index and the two-sample KS statistic of the metric between a
-- reference window and the latest window of `predictions`, and whether either crossed its
-- threshold (a crossing is also an audit record, `drift.detected`).
--
-- A few rows per route and model per run (hourly by default): tiny. Kept 400 days (EU AI Act
-- Art. 19/26 ask for at least six months of logs; monitoring evidence of a high-risk system
-- is worth keeping as long as the audit trail's yearly reviews need it). `event_time` is when
-- the report was computed, so `llmops logs drift` reads it like the other event tables.

CREATE TABLE IF NOT EXISTS drift_reports
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    route                  LowCardinality(String),
    model_name             LowCardinality(String),
    -- completion_tokens, prompt_tokens, latency_ms, cost, guardrail_verdict, error
    metric                 LowCardinality(String),
    psi                    Float64,
    ks                     Float64,
    psi_threshold          Float64,
    ks_threshold           Float64,
    drifted                Bool,
    -- bins the PSI used (reference quantile bins after dropping duplicate edges, or the
    -- metric's fixed categories)
    bins                   UInt16,
    reference_start        DateTime64(3, 'UTC'),
    reference_end          DateTime64(3, 'UTC'),
    latest_start           DateTime64(3, 'UTC'),
    latest_end             DateTime64(3, 'UTC'),
    n_ref                  UInt64,
    n_latest               UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (route, model_name, metric, event_time)
TTL toDateTime(event_time) + INTERVAL 400 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000;
