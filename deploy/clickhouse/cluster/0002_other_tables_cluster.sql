-- Cluster form of the other raw tables and their rollups (NOT applied by llmops migrate).
-- Column lists, PARTITION BY, ORDER BY, TTL and skip indexes are those of
-- migrations/0001_raw_tables.sql and 0002_rollups.sql; only the engines change, as below.
-- Create each <name>_local with its column list from the migration and:

-- feedback_local:
--   ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/feedback', '{replica}')
-- exposures_local:
--   ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/exposures', '{replica}')
-- guardrail_decisions_local:
--   ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/llmops/guardrail_decisions', '{replica}')
-- audit_local:
--   ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/llmops/audit', '{replica}')
-- guardrail_decisions_1m_local, exposures_1h_local:
--   ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/llmops/<name>', '{replica}')
--   with their MVs reading FROM guardrail_decisions_local / exposures_local.

CREATE TABLE IF NOT EXISTS feedback ON CLUSTER '{cluster}' AS feedback_local
ENGINE = Distributed('{cluster}', currentDatabase(), feedback_local, cityHash64(request_id));

-- Exposures are keyed by unit in Kafka; sharding them by unit_id keeps one unit's exposures
-- on one shard (first-exposure queries stay local). Feedback without a request id has an
-- empty request_id: such rows all hash alike, so shard feedback by request_id only when it
-- is mostly set (it is: implicit signals carry the request id of the prediction shown).
CREATE TABLE IF NOT EXISTS exposures ON CLUSTER '{cluster}' AS exposures_local
ENGINE = Distributed('{cluster}', currentDatabase(), exposures_local, cityHash64(unit_id));

CREATE TABLE IF NOT EXISTS guardrail_decisions ON CLUSTER '{cluster}' AS guardrail_decisions_local
ENGINE = Distributed('{cluster}', currentDatabase(), guardrail_decisions_local, cityHash64(request_id));

-- The audit trail is small and verified per chain: keep a chain on one shard.
CREATE TABLE IF NOT EXISTS audit ON CLUSTER '{cluster}' AS audit_local
ENGINE = Distributed('{cluster}', currentDatabase(), audit_local, cityHash64(chain));

CREATE TABLE IF NOT EXISTS guardrail_decisions_1m ON CLUSTER '{cluster}' AS guardrail_decisions_1m_local
ENGINE = Distributed('{cluster}', currentDatabase(), guardrail_decisions_1m_local);

CREATE TABLE IF NOT EXISTS exposures_1h ON CLUSTER '{cluster}' AS exposures_1h_local
ENGINE = Distributed('{cluster}', currentDatabase(), exposures_1h_local);
