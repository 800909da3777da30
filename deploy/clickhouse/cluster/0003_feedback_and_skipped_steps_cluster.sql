-- Cluster form of migrations/0005_feedback_signals.sql and 0006 (NOT applied by llmops migrate): the
-- columns go to every shard's feedback_local, then to the Distributed table over them.

ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS name LowCardinality(String) AFTER kind;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS chosen_request_id String CODEC(ZSTD(1)) AFTER dwell_ms;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS rejected_request_id String CODEC(ZSTD(1)) AFTER chosen_request_id;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) AFTER rejected_request_id;

ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS name LowCardinality(String) AFTER kind;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS chosen_request_id String AFTER dwell_ms;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS rejected_request_id String AFTER chosen_request_id;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) AFTER rejected_request_id;

-- and of migrations/0006_prediction_skipped_steps.sql:
ALTER TABLE predictions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS skipped_steps Array(LowCardinality(String)) AFTER error_reason;
ALTER TABLE predictions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS skipped_steps Array(LowCardinality(String)) AFTER error_reason;

-- and of migrations/0007_feedback_rollups.sql: each table as <name>_local with the
-- migration's columns and
--   prediction_counts_1h_local: ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/llmops/prediction_counts_1h', '{replica}')
--     with its MV reading FROM predictions_local;
--   feedback_stats_1h_local, feedback_stats_hours_local, feedback_rollup_progress_local:
--     ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/<name>', '{replica}')
-- then Distributed tables over them (feedback_stats_* are written by one feedback service
-- refresh at a time and are small: shard them by hour).
CREATE TABLE IF NOT EXISTS prediction_counts_1h ON CLUSTER '{cluster}' AS prediction_counts_1h_local
ENGINE = Distributed('{cluster}', currentDatabase(), prediction_counts_1h_local);
CREATE TABLE IF NOT EXISTS feedback_stats_1h ON CLUSTER '{cluster}' AS feedback_stats_1h_local
ENGINE = Distributed('{cluster}', currentDatabase(), feedback_stats_1h_local, toUInt32(hour));
CREATE TABLE IF NOT EXISTS feedback_stats_hours ON CLUSTER '{cluster}' AS feedback_stats_hours_local
ENGINE = Distributed('{cluster}', currentDatabase(), feedback_stats_hours_local, toUInt32(hour));
CREATE TABLE IF NOT EXISTS feedback_rollup_progress ON CLUSTER '{cluster}' AS feedback_rollup_progress_local
ENGINE = Distributed('{cluster}', currentDatabase(), feedback_rollup_progress_local);
