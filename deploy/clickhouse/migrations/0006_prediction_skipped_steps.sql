-- 0006: the steps of a Run that failed and were skipped or fell back (PredictionEvent
-- .skipped_steps), e.g. "postprocess" when the model's answer did not fit the task's format:
-- the feedback service's label queues pick such low-confidence outputs for human review.
-- Empty for every row written before it (and for Generate).

ALTER TABLE predictions ADD COLUMN IF NOT EXISTS skipped_steps Array(LowCardinality(String)) AFTER error_reason;
