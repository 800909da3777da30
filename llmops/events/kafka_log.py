"""The production event log: Apache Kafka (the ``kafka`` extra).

Two clients, one behaviour (``producer_client`` / ``consumer_client``, ``backends.kafka.client``):
librdkafka through ``confluent-kafka``, the default, and kafka-python. Measured side by side
on one broker (``llmops bench events``, 200,000 events, same run): producing with the same
guarantees 160k records/s vs 8.5k (19x), consuming 173k vs 19k (9x). kafka-python stays the
alternative (and the admin client); the event-log contract and the KafkaLog tests run on both.

Producer settings and what they guarantee:

- ``acks=all`` + idempotence (both clients implement KIP-98's idempotent producer: a
  producer id and per-partition sequence numbers). The broker drops a batch it
  already has when the client retries it internally after a lost ack, and rejects gaps, so
  the client's own retries neither duplicate nor reorder within a partition for the life of
  one producer. It does not cover a *caller's* retry of a batch whose outcome was unknown:
  that is at-least-once, and sinks dedupe on ``event_id``. :meth:`KafkaLog.send` narrows it:
  a retry of the same batch object first waits for the earlier attempt's outcome and resends
  only the records that were not acknowledged (see :class:`_Attempt`).
- ``max_in_flight_requests_per_connection=5``: the most idempotence allows while keeping
  per-partition order (both clients guarantee order when idempotent).
- Batching: records of one call accumulate into per-partition batches (``batch_size`` bytes,
  ``linger_ms``) and are compressed with zstd when the ``zstandard`` package is importable,
  else gzip (the topics store zstd either way: ``compression.type=zstd``; consumers of those
  topics need ``zstandard`` installed to decompress).
- Keys go through Kafka's default partitioner (murmur2; librdkafka's ``murmur2_random``),
  the same as the local log's, whichever client produced them.
- librdkafka's producer runs behind kafka-python's interface
  (:mod:`llmops.events.librdkafka_producer`), so the logic below is one for both clients.

Consumers (either client) commit only explicitly (``enable.auto.commit`` off), start a new
group at the earliest offset, and turn client errors into :class:`LogUnavailable`.

Nothing connects at construction: the producer is built on the first :meth:`send` (which runs
on the caller's thread; the publisher calls it from its sender thread), and consumers are built
by :meth:`consumer`. Both bootstrap with ``connect_timeout_s`` (kafka-python's default would
block 30 s), so a dead broker surfaces as :class:`LogUnavailable` within seconds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from llmops.events.base import (
    ConsumedRecord,
    LogConsumer,
    LogUnavailable,
    Record,
    RecordRun,
    RecordsRefused,
    TopicPartition,
)

log = structlog.get_logger("llmops.events.kafka")

REFUSED_FOR_GOOD = frozenset({10, 32, 43, 87})
"""Broker error codes that refuse one record whatever the retry: MESSAGE_TOO_LARGE,
INVALID_TIMESTAMP (outside the topic's ``message.timestamp.*.max.ms``),
UNSUPPORTED_FOR_MESSAGE_FORMAT, INVALID_RECORD (e.g. no key on a compacted topic). A
corrupt record (2) is left out: a bad network can cause it, and a resend then succeeds."""


class _Refused(LogUnavailable):
    """Internal: some records failed with a :data:`REFUSED_FOR_GOOD` code (and nothing
    failed otherwise). Not yet proof: kafka-python's idempotent producer then aborts every
    other batch in flight with the same error, so each is tried again alone."""

    def __init__(self, reasons: dict[int, str]) -> None:
        super().__init__(next(iter(reasons.values())))
        self.reasons = reasons


CLIENTS = ("auto", "confluent", "kafka-python")


def _client(name: str, setting: str) -> str:
    if name not in CLIENTS:
        raise ValueError(f"{setting} is one of {CLIENTS}, not {name!r}")
    if name == "auto":
        return "confluent" if _confluent_available() else "kafka-python"
    return name


def _confluent_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


_LIBRDKAFKA_LOGGING: dict[str, Any] = {
    # librdkafka's own log lines through Python logging (the service log, scrubbed), not
    # straight to stderr; a closed idle connection is not worth a line
    "logger": logging.getLogger("llmops.events.librdkafka"),
    "log.connection.close": False,
}


def _log_client_error(error: Any) -> None:
    """librdkafka's client-level errors (a broker down, all brokers down): logged; calls
    that need the broker fail on their own with the error."""
    log.warning("kafka_client_error", error=str(error))


def default_compression() -> str:
    """``zstd`` when the ``zstandard`` package is importable (kafka-python needs it), else
    ``gzip`` (standard library)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return "gzip"
    return "zstd"


@dataclass(slots=True)
class _Attempt:
    """A send that raised before every record was acknowledged.

    ``futures[i]`` is the outcome of ``batch[i]``. Kept so that a retry of the same batch
    object does not queue a second copy of records still in the producer's buffers: it waits
    for their outcome and resends only the failed ones.
    """

    batch: Sequence[Record]
    futures: list[Any]


class KafkaLog:
    """An :class:`~llmops.events.base.EventLog` over a Kafka cluster."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        client_id: str = "llmops",
        compression: str | None = "auto",
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        delivery_timeout_s: float = 120.0,
        session_timeout_s: float = 10.0,
        max_poll_interval_s: float = 300.0,
        consumer_client: str = "auto",
        producer_client: str = "auto",
    ) -> None:
        """Store the settings; nothing connects here.

        ``compression``: ``auto`` (zstd if available, else gzip), ``zstd``, ``gzip``, ``lz4``,
        ``snappy`` or None. ``delivery_timeout_s`` bounds how long the producer keeps retrying
        a record internally across outages before failing it (the caller then resends).
        ``session_timeout_s`` / ``max_poll_interval_s``: consumer group liveness.
        ``consumer_client`` / ``producer_client``: ``confluent`` (librdkafka),
        ``kafka-python``, or ``auto`` (confluent when ``confluent_kafka`` is importable).
        """
        self.consumer_client = _client(consumer_client, "consumer_client")
        self.producer_client = _client(producer_client, "producer_client")
        self._connect_timeout_s = connect_timeout_s
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self.compression = default_compression() if compression == "auto" else compression
        self._common: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "bootstrap_timeout_ms": int(connect_timeout_s * 1000),
            "request_timeout_ms": int(request_timeout_s * 1000),
            "reconnect_backoff_ms": 50,
            "reconnect_backoff_max_ms": 1000,
        }
        self._producer_config: dict[str, Any] = {
            **self._common,
            "client_id": f"{client_id}-producer",
            "acks": "all",
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            "compression_type": self.compression,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_block_ms": int(connect_timeout_s * 1000),
            "delivery_timeout_ms": int(max(delivery_timeout_s, request_timeout_s + 1) * 1000),
        }
        servers = bootstrap_servers
        # librdkafka's connection settings, shared by its producer and consumers
        self._librdkafka_common: dict[str, Any] = {
            "bootstrap.servers": servers if isinstance(servers, str) else ",".join(servers),
            "socket.connection.setup.timeout.ms": max(int(connect_timeout_s * 1000), 1000),
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1000,
            **_LIBRDKAFKA_LOGGING,
        }
        self._librdkafka_producer_config: dict[str, Any] = {
            **self._librdkafka_common,
            "client.id": f"{client_id}-producer",
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "compression.type": self.compression or "none",
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "message.timeout.ms": self._producer_config["delivery_timeout_ms"],
            "request.timeout.ms": int(request_timeout_s * 1000),
            # Kafka's default partitioner (murmur2 of the key), as kafka-python's and the
            # local log's: a key lands on the same partition whichever client produced it.
            "partitioner": "murmur2_random",
        }
        self._session_timeout_ms = int(session_timeout_s * 1000)
        self._max_poll_interval_ms = int(max_poll_interval_s * 1000)
        self._producer: Any = None
        self._pending: _Attempt | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- producing ------------------------------------------------------------------------

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        """Append ``records`` with acks=all, waiting at most ``timeout_s`` for every ack.

        Thread-safe; calls are serialized. Raises :class:`LogUnavailable` on a broker error or
        timeout: records of the call may or may not have been appended. Retrying with the
        *same* sequence object resumes that attempt (only unacknowledged records are resent).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                raise LogUnavailable("kafka log is closed")
            producer = self._ensure_producer()
            futures = self._resume(records, deadline)
            if futures is None:
                futures = [None] * len(records)
            self._pending = _Attempt(records, futures)
            for i, r in enumerate(records):
                if futures[i] is None or futures[i].failed():
                    futures[i] = self._enqueue(producer, r)
            try:
                self._await(futures, deadline)
            except _Refused as refused:
                self._pending = None
                self._isolate(records, sorted(refused.reasons), deadline)
            self._pending = None

    def _isolate(self, records: Sequence[Record], suspects: Sequence[int], deadline: float) -> None:
        """After a record was refused for good: kafka-python's idempotent producer is in a
        fatal state (it aborted every batch in flight with that error), so start a new one
        and send each failed record alone. :class:`RecordsRefused` names those refused
        again; the others are appended. LogUnavailable on anything else (the caller resends
        the batch: at-least-once)."""
        self._reset_producer()
        refused: dict[int, str] = {}
        for i in suspects:
            future = self._enqueue(self._ensure_producer(), records[i])
            try:
                self._await([future], deadline)
            except _Refused as alone:
                refused[i] = alone.reasons[0]
                self._reset_producer()
        log.warning(
            "kafka_records_refused", suspects=len(suspects), refused=len(refused),
            reason=next(iter(refused.values()), ""),
        )  # fmt: skip
        if refused:
            raise RecordsRefused(refused)

    def _reset_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=0)
            self._producer = None

    def _resume(self, records: Sequence[Record], deadline: float) -> list[Any] | None:
        """Settle the previous failed attempt: wait for its outstanding records; if this call
        retries the same batch, return its futures (the acknowledged ones are kept)."""
        prev = self._pending
        if prev is None:
            return None
        self._await(prev.futures, deadline, require_success=False)
        self._pending = None
        return prev.futures if prev.batch is records else None

    def _enqueue(self, producer: Any, r: Record) -> Any:
        from kafka.errors import KafkaError

        try:
            return producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers))
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: cannot enqueue to {r.topic}: {exc}") from exc

    def _await(self, futures: Sequence[Any], deadline: float, require_success: bool = True) -> None:
        """Wait until every future is resolved (and, ``require_success``, succeeded).
        :class:`_Refused` when the only failures are records the broker refused for good
        (:data:`REFUSED_FOR_GOOD`); LogUnavailable for any other failure."""
        from kafka.errors import KafkaError

        failed: BaseException | None = None
        refused: dict[int, str] = {}
        for i, f in enumerate(futures):
            if f is None:
                continue
            if not f.is_done:
                try:
                    f.get(timeout=max(0.0, deadline - time.monotonic()))
                except KafkaError as exc:
                    if not f.is_done:  # still in flight: the outcome is not known yet
                        raise LogUnavailable(f"kafka: no acknowledgement in time: {exc}") from exc
            if f.exception is not None:
                if getattr(f.exception, "errno", None) in REFUSED_FOR_GOOD:
                    refused[i] = f"{type(f.exception).__name__}: {f.exception}"
                else:
                    failed = failed or f.exception
        if failed is not None and require_success:
            raise LogUnavailable(f"kafka: send failed: {failed}") from failed
        if refused and require_success:
            raise _Refused(refused)

    def _ensure_producer(self) -> Any:
        """The producer, built on first use (bootstraps within ``connect_timeout_s``); a
        librdkafka producer that went fatal is replaced."""
        if self._producer is not None and getattr(self._producer, "fatal", None):
            log.warning("kafka_producer_replaced", error=self._producer.fatal)
            self._reset_producer()
        if self._producer is None:
            from kafka.errors import KafkaError

            try:
                self._producer = self._new_producer()
            except KafkaError as exc:
                raise LogUnavailable(
                    f"kafka: cannot reach {self._bootstrap} to start a producer: {exc}"
                ) from exc
            log.info(
                "kafka_producer_started", bootstrap=str(self._bootstrap),
                client=self.producer_client, compression=self.compression, idempotent=True,
            )  # fmt: skip
        return self._producer

    def _new_producer(self) -> Any:
        if self.producer_client == "confluent":
            from llmops.events.librdkafka_producer import LibrdkafkaProducer

            return LibrdkafkaProducer(
                self._librdkafka_producer_config,
                connect_timeout_s=self._connect_timeout_s,
                max_block_s=self._producer_config["max_block_ms"] / 1000,
            )
        from kafka import KafkaProducer

        return KafkaProducer(**self._producer_config)

    @property
    def producer_settings(self) -> dict[str, Any]:
        """The delivery guarantees the producer runs with, in one client-neutral form."""
        return {
            "client": self.producer_client,
            "acks": "all",
            "idempotent": True,
            "compression": self.compression,
        }

    # -- consuming ------------------------------------------------------------------------

    def consumer(self, group: str, topics: Sequence[str]) -> LogConsumer:
        """A group member subscribed to ``topics``; blocks up to ``connect_timeout_s``."""
        if self.consumer_client == "confluent":
            return self._confluent_consumer(group, topics)
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(
                **self._common,
                client_id=f"{self._client_id}-consumer",
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=max(self._session_timeout_ms // 3, 100),
                max_poll_interval_ms=self._max_poll_interval_ms,
                fetch_max_wait_ms=100,
            )
            # The topics' metadata first: a group leader that assigns before it has them
            # hands out nothing and rejoins, and kafka-python 3.0 can then stall in that
            # second rebalance with no partitions (seen after a broker restart).
            for topic in topics:
                consumer.partitions_for_topic(topic)
            consumer.subscribe(list(topics))
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: cannot start a consumer of {group}: {exc}") from exc
        return KafkaLogConsumer(consumer)

    def _confluent_consumer(self, group: str, topics: Sequence[str]) -> ConfluentLogConsumer:
        from confluent_kafka import Consumer, KafkaException

        consumer = Consumer(
            {
                **self._librdkafka_common,
                "client.id": f"{self._client_id}-consumer",
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self._session_timeout_ms,
                "heartbeat.interval.ms": max(self._session_timeout_ms // 3, 100),
                "max.poll.interval.ms": self._max_poll_interval_ms,
                "fetch.wait.max.ms": 100,
                "error_cb": _log_client_error,
            }
        )
        try:
            # Fails within the timeout when no broker answers (the constructor connects
            # nothing); also loads the topics' metadata before the group assigns.
            metadata = consumer.list_topics(timeout=self._connect_timeout_s)
            missing = [t for t in topics if t not in metadata.topics]
            for topic in missing:  # a topic created just now: its metadata may lag
                consumer.list_topics(topic, timeout=self._connect_timeout_s)
            consumer.subscribe(list(topics))
        except KafkaException as exc:
            consumer.close()
            raise LogUnavailable(f"kafka: cannot start a consumer of {group}: {exc}") from exc
        return ConfluentLogConsumer(consumer)

    def close(self) -> None:
        """Flush and close the producer (waits up to 10 s for records still buffered)."""
        with self._lock:
            self._closed = True
            if self._producer is not None:
                self._producer.close(timeout=10)
                self._producer = None


class KafkaLogConsumer:
    """:class:`~llmops.events.base.LogConsumer` over a KafkaConsumer (offsets committed
    explicitly; kafka errors become :class:`LogUnavailable`)."""

    def __init__(self, consumer: Any) -> None:
        self._c = consumer

    def poll(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        from kafka.errors import KafkaError

        try:
            batches = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: poll failed: {exc}") from exc
        return [
            ConsumedRecord(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                r.timestamp,
                tuple((k, bytes(v)) for k, v in (r.headers or ())),
            )
            for records in batches.values()
            for r in records
        ]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka import TopicPartition as KTP
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            self._c.commit(
                {KTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
            )
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: commit failed: {exc}") from exc

    def committed(self, tp: TopicPartition) -> int | None:
        from kafka import TopicPartition as KTP
        from kafka.errors import KafkaError

        try:
            offset = self._c.committed(KTP(*tp))
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: reading committed offsets failed: {exc}") from exc
        return None if offset is None else int(offset)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        from kafka import TopicPartition as KTP
        from kafka.errors import KafkaError

        try:
            self._c.seek(KTP(*tp), offset)
        except (KafkaError, AssertionError) as exc:
            raise LogUnavailable(f"kafka: cannot seek {tp[0]}[{tp[1]}]: {exc}") from exc

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        from kafka import TopicPartition as KTP
        from kafka.errors import KafkaError

        try:
            ends = self._c.end_offsets([KTP(*tp) for tp in tps])
        except KafkaError as exc:
            raise LogUnavailable(f"kafka: end offsets failed: {exc}") from exc
        return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}

    def close(self) -> None:
        self._c.close(autocommit=False)


def _consumed(m: Any) -> ConsumedRecord:
    """A ``confluent_kafka.Message`` as a :class:`ConsumedRecord`."""
    headers = m.headers()
    return ConsumedRecord(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.value() or b"",
        m.timestamp()[1],
        tuple((k, bytes(v or b"")) for k, v in headers) if headers else (),
    )


def _consumed_head(messages: Sequence[Any], n: int) -> list[ConsumedRecord]:
    return [_consumed(m) for m in messages[:n]]


class ConfluentLogConsumer:
    """:class:`~llmops.events.base.LogConsumer` over a ``confluent_kafka.Consumer``
    (librdkafka; offsets committed explicitly and synchronously; errors become
    :class:`LogUnavailable`)."""

    def __init__(self, consumer: Any) -> None:
        self._c = consumer

    def poll(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        """What librdkafka has fetched, up to ``max_records``; when nothing is there yet,
        the first record to arrive within ``timeout_s`` and whatever came with it."""
        return [_consumed(m) for m in self._fetch(max_records, timeout_s)]

    def poll_runs(self, max_records: int, timeout_s: float) -> list[RecordRun]:
        """:meth:`poll` as runs: per message only its offset and value are read here."""
        messages = self._fetch(max_records, timeout_s)
        by_tp: dict[tuple[str, int], list[Any]] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            group = by_tp.get(key)
            if group is None:
                group = by_tp[key] = []
            group.append(m)
        return [
            RecordRun(
                topic,
                partition,
                [m.offset() for m in group],
                [m.value() or b"" for m in group],
                functools.partial(_consumed_head, group),
            )
            for (topic, partition), group in by_tp.items()
        ]

    def _fetch(self, max_records: int, timeout_s: float) -> list[Any]:
        """Up to ``max_records`` messages (partition-EOF events dropped, errors raised)."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            messages = self._c.consume(max_records, 0)
            if not messages:
                first = self._c.poll(timeout_s)
                if first is None:
                    return []
                messages = (
                    [first, *self._c.consume(max_records - 1, 0)] if max_records > 1 else [first]
                )
        except KafkaException as exc:
            raise LogUnavailable(f"kafka: poll failed: {exc}") from exc
        out: list[Any] = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise LogUnavailable(f"kafka: poll failed: {error}")
            out.append(m)
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            result = self._c.commit(
                offsets=[CTP(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            raise LogUnavailable(f"kafka: commit failed: {exc}") from exc
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            raise LogUnavailable(f"kafka: commit failed: {failed[0].error}")

    def committed(self, tp: TopicPartition) -> int | None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            (got,) = self._c.committed([CTP(*tp)], timeout=10)
        except KafkaException as exc:
            raise LogUnavailable(f"kafka: reading committed offsets failed: {exc}") from exc
        if got.error is not None:
            raise LogUnavailable(f"kafka: reading committed offsets failed: {got.error}")
        return None if got.offset < 0 else int(got.offset)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            self._c.seek(CTP(tp[0], tp[1], offset))
        except KafkaException as exc:
            raise LogUnavailable(f"kafka: cannot seek {tp[0]}[{tp[1]}]: {exc}") from exc

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        ends: dict[TopicPartition, int] = {}
        try:
            for tp in tps:
                _, high = self._c.get_watermark_offsets(CTP(*tp), timeout=10)
                ends[tp] = int(high)
        except KafkaException as exc:
            raise LogUnavailable(f"kafka: end offsets failed: {exc}") from exc
        return ends

    def close(self) -> None:
        self._c.close()
