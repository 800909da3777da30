"""Run one sink per topic (each its own consumer group) in threads of this process.

Used by ``llmops sink`` (production: Kafka → ClickHouse server) and inside ``llmops up``
(embedded: local log → the shared chdb session).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import structlog
from prometheus_client import CollectorRegistry

from llmops.clickhouse import queries
from llmops.clickhouse.base import ClickHouseStore
from llmops.clickhouse.rows import KIND_TABLES, TOPIC_KINDS
from llmops.events.base import EventLog, TopicPartition
from llmops.events.topics import DLQ_TOPIC
from llmops.sink.convert import bulk_path_for, converter_for
from llmops.sink.worker import HighWaterMark, Sink, SinkMetrics, SinkSettings, StoredEventAt

log = structlog.get_logger("llmops.sink")

GROUP_PREFIX = "llmops-sink."


def high_water_mark_for(topic_tables: Mapping[str, str]) -> HighWaterMark:
    """The sink's high-water-mark lookup (:func:`llmops.clickhouse.queries.high_water_mark`)
    over ``topic_tables`` (topic -> the table holding its rows)."""

    def high_water_mark(store: ClickHouseStore, tp: TopicPartition, from_ms: int) -> int | None:
        return queries.high_water_mark(store, tp, from_ms, table=topic_tables[tp[0]])

    return high_water_mark


def stored_event_at_for(topic_tables: Mapping[str, str]) -> StoredEventAt:
    """The sink's check of a stored log position (:func:`queries.stored_event_at`)."""

    def stored_event_at(
        store: ClickHouseStore, tp: TopicPartition, offset: int, from_ms: int
    ) -> int | None:
        return queries.stored_event_at(store, tp, offset, from_ms, table=topic_tables[tp[0]])

    return stored_event_at


def build_sinks(
    event_log: EventLog,
    store: ClickHouseStore,
    *,
    topics: Sequence[str] | None = None,
    topic_kinds: Mapping[str, str] = TOPIC_KINDS,
    batch_rows: int = 50_000,
    flush_interval_s: float = 1.0,
    registry: CollectorRegistry | None = None,
    group_prefix: str = GROUP_PREFIX,
    rows_from: str = "protobuf",
) -> list[Sink]:
    """One sink per topic, in consumer group ``llmops-sink.<table>``.

    ``rows_from``: ``protobuf`` has ClickHouse derive the rows of the tables it can from the
    records' bytes (where the store supports it), ``python`` converts every event in Python
    (:mod:`llmops.sink.convert`).

    ``topic_kinds`` maps each topic to the event kind it carries (tests and benchmarks use
    topics of their own, and a ``group_prefix`` of their own on a shared broker: members of
    one group on different topics still rebalance together)."""
    chosen = list(topics or topic_kinds)
    unknown = sorted(set(chosen) - set(topic_kinds))
    if unknown:
        raise ValueError(f"no sink for topics {unknown}; known: {sorted(topic_kinds)}")
    topic_tables = {t: KIND_TABLES[k] for t, k in topic_kinds.items()}
    metrics = SinkMetrics(registry or CollectorRegistry())
    high_water_mark = high_water_mark_for(topic_tables)
    convert = converter_for(store, rows_from)
    return [
        Sink(
            event_log,
            store,
            SinkSettings(
                group=group_prefix + topic_tables[topic],
                topics=(topic,),
                dlq_topic=DLQ_TOPIC,
                batch_rows=batch_rows,
                flush_interval_s=flush_interval_s,
            ),
            convert=convert,
            high_water_mark=high_water_mark,
            stored_event_at=stored_event_at_for(topic_tables),
            kind_of_topic=topic_kinds,
            metrics=metrics,
            bulk=bulk_path_for(store, rows_from, topic_kinds[topic]),
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
        """Run ``sink`` until stopped, restarting it with back-off when it raises (the log or
        the store unreachable for longer than its own retries): a sink thread that died
        quietly would stall ingestion while the process still looks healthy."""
        delay = sink.settings.retry_initial_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sink.run(self._stop)
                return
            except Exception:  # loud, then again; the other sinks keep going meanwhile
                if time.monotonic() - started > 60:  # it ran a good while: a fresh failure
                    delay = sink.settings.retry_initial_s
                log.exception("sink_crashed", group=sink.settings.group, restart_in_s=delay)
            sink.metrics.restarts.labels(sink.settings.group).inc()
            self._stop.wait(delay)
            delay = min(delay * 2, sink.settings.retry_max_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
