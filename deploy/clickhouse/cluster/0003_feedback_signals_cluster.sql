-- Cluster form of migrations/0005_feedback_signals.sql (NOT applied by llmops migrate): the
-- columns go to every shard's feedback_local, then to the Distributed table over them.

ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS name LowCardinality(String) AFTER kind;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS chosen_request_id String CODEC(ZSTD(1)) AFTER dwell_ms;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS rejected_request_id String CODEC(ZSTD(1)) AFTER chosen_request_id;
ALTER TABLE feedback_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) AFTER rejected_request_id;

ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS name LowCardinality(String) AFTER kind;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS chosen_request_id String AFTER dwell_ms;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS rejected_request_id String AFTER chosen_request_id;
ALTER TABLE feedback ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) AFTER rejected_request_id;
