"""Run one sink per topic (each its own consumer group) in threads of this process.

Used by ``llmops sink`` (production: Kafka → ClickHouse server) and inside ``llmops up``
(embedded: local log → the shared chdb session).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import structlog
from prometheus_client import CollectorRegistry

from llmops.clickhouse import queries
from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.rows import KIND_TABLES, TOPIC_KINDS, columns_for
from llmops.events.base import EventLog, TopicPartition
from llmops.events.topics import DLQ_TOPIC
from llmops.sink.worker import HighWaterMark, Sink, SinkMetrics, SinkSettings

log = structlog.get_logger("llmops.sink")

GROUP_PREFIX = "llmops-sink."


def high_water_mark_for(topic_tables: Mapping[str, str]) -> HighWaterMark:
    """The sink's high-water-mark lookup (:func:`llmops.clickhouse.queries.high_water_mark`)
    over ``topic_tables`` (topic -> the table holding its rows)."""

    def high_water_mark(store: ClickHouseStore, tp: TopicPartition, from_ms: int) -> int | None:
        return queries.high_water_mark(store, tp, from_ms, table=topic_tables[tp[0]])

    return high_water_mark


def build_sinks(
    event_log: EventLog,
    store: ClickHouseStore,
    *,
    topics: Sequence[str] | None = None,
    topic_kinds: Mapping[str, str] = TOPIC_KINDS,
    batch_rows: int = 50_000,
    flush_interval_s: float = 1.0,
    registry: CollectorRegistry | None = None,
) -> list[Sink]:
    """One sink per topic, in consumer group ``llmops-sink.<table>``.

    ``topic_kinds`` maps each topic to the event kind it carries (tests and benchmarks use
    topics of their own)."""
    chosen = list(topics or topic_kinds)
    unknown = sorted(set(chosen) - set(topic_kinds))
    if unknown:
        raise ValueError(f"no sink for topics {unknown}; known: {sorted(topic_kinds)}")
    topic_tables = {t: KIND_TABLES[k] for t, k in topic_kinds.items()}
    metrics = SinkMetrics(registry or CollectorRegistry())
    high_water_mark = high_water_mark_for(topic_tables)
    return [
        Sink(
            event_log,
            store,
            SinkSettings(
                group=GROUP_PREFIX + topic_tables[topic],
                topics=(topic,),
                dlq_topic=DLQ_TOPIC,
                batch_rows=batch_rows,
                flush_interval_s=flush_interval_s,
            ),
            convert=columns_for,
            high_water_mark=high_water_mark,
            kind_of_topic=topic_kinds,
            metrics=metrics,
        )
        for topic in chosen
    ]


class SinkThreads:
    """Runs sinks in daemon threads; :meth:`stop` asks them to finish and waits."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> SinkThreads:
        for sink in self.sinks:
            thread = threading.Thread(
                target=self._run, args=(sink,), name=f"sink-{sink.settings.group}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, sink: Sink) -> None:
        try:
            sink.run(self._stop)
        except Exception:  # a sink that dies must be loud; the others keep going
            log.exception("sink_crashed", group=sink.settings.group)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
