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
