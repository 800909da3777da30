-- Raw event tables: one row per event of events.proto, written by the sinks.
-- Applied by llmops.clickhouse.migrations (llmops migrate). Never edit an applied file:
-- add a new NNNN_*.sql instead (the runner refuses changed checksums).
--
-- Common to every raw table (see deploy/clickhouse/README.md for the reasoning):
-- * PARTITION BY toDate(event_time): daily parts; retention drops whole partitions.
-- * ORDER BY leads with the low-cardinality dimensions people filter on, then time.
-- * event_id (UUIDv7) and the log position (log_topic, log_partition, log_offset) of the
--   Kafka record the row came from: the sink skips a replayed batch whose offsets are at
--   or below max(log_offset) of its (log_topic, log_partition), and sends an
--   insert_deduplication_token on retried inserts; non_replicated_deduplication_window
--   makes tokens work on plain MergeTree.
-- * Times are DateTime64(3, 'UTC'): milliseconds, always UTC.

CREATE TABLE IF NOT EXISTS predictions
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(3)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32                         CODEC(ZSTD(1)),
    experiment_id          LowCardinality(String),
    variant                LowCardinality(String),
    -- end-to-end latency seen by the service, microseconds
    total_latency_us       UInt32                         CODEC(T64, ZSTD(1)),
    cache_hit              Bool,
    -- gRPC status code, 0 = OK
    status_code            UInt8,
    prompt_tokens          UInt32                         CODEC(T64, ZSTD(1)),
    completion_tokens      UInt32                         CODEC(T64, ZSTD(1)),
    cached_prompt_tokens   UInt32                         CODEC(T64, ZSTD(1)),
    -- Usage timings converted from ms (double) to integer microseconds
    ttft_us                UInt32                         CODEC(T64, ZSTD(1)),
    tpot_us                UInt32                         CODEC(T64, ZSTD(1)),
    queue_us               UInt32                         CODEC(T64, ZSTD(1)),
    model_time_us          UInt32                         CODEC(T64, ZSTD(1)),
    -- cost in 10^-9 units of cost_currency (Money.units * 1e9 + Money.nanos)
    cost_nanos             Int64                          CODEC(T64, ZSTD(1)),
    cost_currency          LowCardinality(String),
    -- per-stage durations, parallel arrays in start order (start offsets are not kept:
    -- 17 bytes/row measured, for a waterfall view that traces serve better)
    stage_names            Array(LowCardinality(String)),
    stage_durations_us     Array(UInt32)                  CODEC(T64, ZSTD(1)),
    -- most severe guardrail verdict of the request ('' when none ran): ALLOW < FLAG < REDACT < BLOCK
    guardrail_verdict      LowCardinality(String),
    guardrail_policies     Array(LowCardinality(String)),
    guardrail_verdicts     Array(LowCardinality(String)),
    guardrail_finding_types Array(LowCardinality(String)),
    -- BLAKE2b-128 hex of the feature values used ('' when none)
    feature_vector_hash    String                         CODEC(ZSTD(1)),
    prompt_name            LowCardinality(String),
    prompt_version         UInt32                         CODEC(ZSTD(1)),
    route_target_index     UInt8,
    locale                 LowCardinality(String),
    device                 LowCardinality(String),
    client_name            LowCardinality(String),
    user_id                String                         CODEC(ZSTD(1)),
    session_id             String                         CODEC(ZSTD(1)),
    finish_reason          LowCardinality(String),
    error_reason           LowCardinality(String),
    -- inputs/output were logged to prediction_payloads
    has_payload            Bool,
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(T64, ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, route, model_name, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000,
         ttl_only_drop_parts = 1;

-- Prediction bodies (inputs and output after guardrail redaction), only for tasks whose
-- logging policy allows it. Kept out of the hot table and deleted after 7 days.
CREATE TABLE IF NOT EXISTS prediction_payloads
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    model_name             LowCardinality(String),
    model_version          UInt32                         CODEC(ZSTD(1)),
    -- each input Value as its JSON text (llmops.clickhouse.rows.value_json)
    inputs                 Map(String, String)            CODEC(ZSTD(3)),
    output                 String                         CODEC(ZSTD(3)),
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, task, route, event_time)
TTL toDateTime(event_time) + INTERVAL 7 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS feedback
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    received_time          DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    unit_type              LowCardinality(String),
    unit_id                String                         CODEC(ZSTD(1)),
    -- FeedbackKind without its prefix: THUMBS, RATING, LABEL, CORRECTION, CLICK, BOOKING, DWELL, CONVERSION
    kind                   LowCardinality(String),
    idempotency_key        String                         CODEC(ZSTD(1)),
    task                   LowCardinality(String),
    source                 LowCardinality(String),
    annotator_id           String                         CODEC(ZSTD(1)),
    label_queue            LowCardinality(String),
    thumb                  LowCardinality(String),
    rating                 Int32                          CODEC(ZSTD(1)),
    rating_scale_max       Int32                          CODEC(ZSTD(1)),
    label                  LowCardinality(String),
    label_confidence       Float32                        CODEC(ZSTD(1)),
    -- raw text typed by people: kept 30 days, then emptied by a column TTL
    label_note             String                         CODEC(ZSTD(3)) TTL toDateTime(event_time) + INTERVAL 30 DAY,
    corrected_text         String                         CODEC(ZSTD(3)) TTL toDateTime(event_time) + INTERVAL 30 DAY,
    correction_field       LowCardinality(String),
    item_id                String                         CODEC(ZSTD(1)),
    position               Int32                          CODEC(ZSTD(1)),
    booking_id             String                         CODEC(ZSTD(1)),
    conversion_type        LowCardinality(String),
    -- Booking/Conversion value in 10^-9 units of value_currency
    value_nanos            Int64                          CODEC(ZSTD(1)),
    value_currency         LowCardinality(String),
    dwell_ms               Int64                          CODEC(ZSTD(1)),
    attributes             Map(String, String)            CODEC(ZSTD(3)),
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, kind, task, event_time)
TTL toDateTime(event_time) + INTERVAL 400 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS exposures
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    unit_type              LowCardinality(String),
    unit_id                String                         CODEC(ZSTD(1)),
    experiment_id          LowCardinality(String),
    experiment_version     UInt32                         CODEC(ZSTD(1)),
    layer                  LowCardinality(String),
    variant                LowCardinality(String),
    bucket                 UInt32                         CODEC(ZSTD(1)),
    -- AssignmentReason without its prefix: BUCKETED, OVERRIDE, BANDIT
    reason                 LowCardinality(String),
    device                 LowCardinality(String),
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, experiment_id, variant, event_time)
TTL toDateTime(event_time) + INTERVAL 400 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS guardrail_decisions
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    market                 LowCardinality(String),
    -- Direction / Verdict without their prefixes: INPUT, OUTPUT / ALLOW, REDACT, BLOCK, FLAG
    direction              LowCardinality(String),
    policy                 LowCardinality(String),
    policy_version         UInt32                         CODEC(ZSTD(1)),
    verdict                LowCardinality(String),
    -- findings: parallel arrays, no raw text (types, code-point spans, scores, keyed hashes)
    finding_types          Array(LowCardinality(String)),
    finding_detectors      Array(LowCardinality(String)),
    finding_span_starts    Array(UInt32)                  CODEC(ZSTD(1)),
    finding_span_ends      Array(UInt32)                  CODEC(ZSTD(1)),
    finding_scores         Array(Float32)                 CODEC(ZSTD(1)),
    finding_actions        Array(LowCardinality(String)),
    finding_match_hashes   Array(String)                  CODEC(ZSTD(1)),
    detector_names         Array(LowCardinality(String)),
    detector_latencies_us  Array(UInt32)                  CODEC(ZSTD(1)),
    latency_us             UInt32                         CODEC(ZSTD(1)),
    text_length            UInt32                         CODEC(ZSTD(1)),
    route                  LowCardinality(String),
    task                   LowCardinality(String),
    streamed               Bool,
    degraded               Bool,
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (tenant, policy, verdict, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

-- The audit trail. ReplacingMergeTree on (tenant, chain, sequence, event_id) as a second
-- line of defence: duplicates of one record collapse on merge, and VerifyAudit reads with
-- FINAL (the audit volume is small). record holds the serialized AuditEvent (deterministic
-- protobuf) so the hash chain can be recomputed exactly, fields of later versions included.
CREATE TABLE IF NOT EXISTS audit
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    event_id               UUID                           CODEC(ZSTD(1)),
    request_id             String                         CODEC(ZSTD(1)),
    tenant                 LowCardinality(String),
    -- ActorType / AuditOutcome without their prefixes
    actor_type             LowCardinality(String),
    actor_id               String                         CODEC(ZSTD(1)),
    actor_via              LowCardinality(String),
    action                 LowCardinality(String),
    resource_type          LowCardinality(String),
    resource_name          String                         CODEC(ZSTD(1)),
    resource_version       String                         CODEC(ZSTD(1)),
    resource_service       LowCardinality(String),
    -- google.protobuf.Struct as JSON text
    before                 String                         CODEC(ZSTD(3)),
    after                  String                         CODEC(ZSTD(3)),
    outcome                LowCardinality(String),
    reason                 String                         CODEC(ZSTD(3)),
    policy_decision_id     String                         CODEC(ZSTD(1)),
    chain                  LowCardinality(String),
    sequence               UInt64                         CODEC(ZSTD(1)),
    prev_hash              String                         CODEC(ZSTD(1)),
    hash                   String                         CODEC(ZSTD(1)),
    -- base64 of the deterministic protobuf serialization of the AuditEvent
    record                 String                         CODEC(ZSTD(3)),
    log_topic              LowCardinality(String),
    log_partition          UInt32                         CODEC(ZSTD(1)),
    log_offset             UInt64                         CODEC(ZSTD(1)),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, chain, sequence, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
