"""ClickHouse consuming the prediction topic itself: a Kafka table engine and a view.

The production choice beyond one sink fleet (deploy/clickhouse/README.md, "Kafka table
engine"): every shard's servers read ``llmops.predictions.v1`` with librdkafka, parse each
record with the same ``SinkRecord`` schema the sinks hand to ClickHouse
(``format_schemas/llmops_sink.proto``; a Kafka message is one ``EventEnvelope``, so the
format is ``ProtobufSingle``), and a materialized view writes the rows of
:data:`llmops.clickhouse.protobuf_rows.PREDICTIONS` — the very SELECT of the sink's
Protobuf path, with the log position taken from the engine's ``_topic``, ``_partition``,
``_offset`` virtual columns. So a row is the same whichever way it arrives.

Generate the statements for a deployment::

    python -m llmops.clickhouse.kafka_engine --brokers kafka-1:9092,kafka-2:9092 > kafka.sql

The schema file must be in each server's ``format_schemas`` directory
(``format_schema_path`` in the server config). Records that do not parse go to
``predictions_kafka_errors`` (``kafka_handle_error_mode = 'stream'``), the engine's closest
thing to the sinks' dead-letter topic.
"""

from __future__ import annotations

import argparse
import sys

from llmops.clickhouse.protobuf_rows import MESSAGE, PREDICTIONS, SCHEMA_FILE
from llmops.clickhouse.sql import identifier, quote_string

TOPIC = "llmops.predictions.v1"
GROUP = "clickhouse-predictions"
_POSITION = ("log_topic", "log_partition", "log_offset")


def _fields() -> list[tuple[str, str, str]]:
    """(dotted name, underscored name, type) of each message field the table reads."""
    return [(n, n.replace(".", "_"), k) for n, k in PREDICTIONS.fields if n not in _POSITION]


def queue_columns() -> str:
    """The Kafka table's columns: the fields ClickHouse parses from each record, named with
    underscores (the Protobuf format matches ``a_b_c`` to field ``a.b.c``; dotted Array
    columns in a table would be one Nested structure whose arrays must be equally long)."""
    return ",\n    ".join(f"`{us}` {kind}" for _, us, kind in _fields())


def statements(
    brokers: str,
    *,
    topic: str = TOPIC,
    group: str = GROUP,
    consumers: int = 1,
    queue: str = "predictions_kafka",
    target: str = "predictions",
) -> list[str]:
    """``CREATE`` statements: the Kafka table ``queue``, the view that fills ``target``
    from it, and the error table and view for records that do not parse."""
    if consumers < 1:
        raise ValueError("consumers must be at least 1")
    q, t = identifier(queue), identifier(target)
    errors = identifier(f"{queue}_errors")
    schema = quote_string(f"{SCHEMA_FILE.name}:{MESSAGE}")
    renamed = ",\n           ".join(f"`{us}` AS `{dotted}`" for dotted, us, _ in _fields())
    return [
        f"""CREATE TABLE IF NOT EXISTS {q}
(
    {queue_columns()}
)
ENGINE = Kafka
SETTINGS kafka_broker_list = {quote_string(brokers)},
         kafka_topic_list = {quote_string(topic)},
         kafka_group_name = {quote_string(group)},
         kafka_format = 'ProtobufSingle',
         kafka_schema = {schema},
         kafka_num_consumers = {consumers},
         kafka_handle_error_mode = 'stream'""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {identifier(queue + "_mv")} TO {t} AS
{PREDICTIONS.select}
FROM
(
    SELECT {renamed},
           _topic AS log_topic, toUInt32(_partition) AS log_partition, _offset AS log_offset
    FROM {q}
    -- a record of another kind has no prediction (event_time is required in one)
    WHERE length(_error) = 0 AND prediction_event_time_seconds != 0
)""",
        f"""CREATE TABLE IF NOT EXISTS {errors}
(
    event_time             DateTime64(3, 'UTC')           CODEC(Delta, ZSTD(1)),
    log_topic              LowCardinality(String),
    log_partition          UInt32,
    log_offset             UInt64,
    error                  String                         CODEC(ZSTD(3)),
    record                 String                         CODEC(ZSTD(3))
)
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (log_topic, log_partition, log_offset)
TTL toDateTime(event_time) + INTERVAL 30 DAY DELETE""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {identifier(queue + "_errors_mv")} TO {errors} AS
SELECT now64(3, 'UTC') AS event_time, _topic AS log_topic,
       toUInt32(_partition) AS log_partition, _offset AS log_offset,
       _error AS error, _raw_message AS record
FROM {q}
WHERE length(_error) > 0""",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmops.clickhouse.kafka_engine",
        description="Print the statements that make ClickHouse consume the prediction topic.",
    )
    parser.add_argument("--brokers", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--group", default=GROUP, help="consumer group of the servers")
    parser.add_argument("--consumers", type=int, default=1, help="consumers per server")
    args = parser.parse_args(argv)
    for statement in statements(
        args.brokers, topic=args.topic, group=args.group, consumers=args.consumers
    ):
        sys.stdout.write(statement + ";\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
