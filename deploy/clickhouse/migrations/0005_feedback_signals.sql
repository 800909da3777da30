-- 0005: feedback signals (issue #14). Every record names its signal in the feedback registry
-- (deploy/feedback: `thumbs`, `copy`, `refine_search`, ...), and two kinds join the contract:
-- pairwise preferences (the chosen and the rejected prediction, for DPO pairs) and
-- interactions without a value (copy, retry, share).
--
-- A repeated idempotency key can leave more than one row: a toggled thumb (its signal
-- overwrites), a client retry after a crash, two replicas racing. Statistics and exports
-- count only the newest row of a key: argMax(..., received_time) grouped by
-- (tenant, idempotency_key) — see services/feedback/README.md.

ALTER TABLE feedback ADD COLUMN IF NOT EXISTS name LowCardinality(String) AFTER kind;
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS chosen_request_id String CODEC(ZSTD(1)) AFTER dwell_ms;
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS rejected_request_id String CODEC(ZSTD(1)) AFTER chosen_request_id;
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS action LowCardinality(String) AFTER rejected_request_id;
