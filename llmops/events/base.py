"""The event log interface every backend implements (Kafka, and the embedded local log).

A log is a set of topics, each split into partitions; a record's key picks its partition,
so one entity's events stay in order. Producers append durably; consumers read a partition
in offset order as members of a consumer group and commit "the next offset to read" only
after what they read is durable downstream. Both backends pass the same contract tests
(``tests/contract/test_event_log.py``).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from llmops.errors import Unavailable

TopicPartition = tuple[str, int]
"""(topic, partition)."""


MAX_RECORD_BYTES = 1_000_000
"""Largest event (serialized value plus key) a publisher accepts: under Kafka's 1 MiB defaults
(the producer's ``max.request.size``, the topics' ``max.message.bytes`` in
deploy/kafka/topics.yaml) with room for the record's framing, so an event accepted locally
is one a broker takes too."""


class RecordSender(Protocol):
    """What records are sent to: an :class:`EventLog`, or a sender in front of one."""

    def send(self, records: Sequence[Record], timeout_s: float) -> None: ...


class LogUnavailable(Unavailable):
    """The log (broker, disk) cannot take or serve records now; retrying later is safe."""


class RecordsRefused(LogUnavailable):
    """The log refused some records of a send for good (a broker's INVALID_RECORD,
    INVALID_TIMESTAMP, MESSAGE_TOO_LARGE): sending them again can never succeed. Every
    other record of the send was appended. ``refused``: index in the send -> the reason."""

    def __init__(self, refused: dict[int, str]) -> None:
        first = next(iter(refused.values()), "")
        super().__init__(f"{len(refused)} record(s) refused for good: {first}")
        self.refused = refused


class Record(NamedTuple):
    """A record to append. A tuple: a publisher makes one per event (50,000 a second),
    and a frozen dataclass costs twice as much to build."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record as read back, with its position in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    """When the log accepted the record (ms since the Unix epoch, UTC)."""
    headers: tuple[tuple[str, bytes], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RecordRun:
    """Records of one partition in offset order, as columns: what a sink's bulk path reads
    (no object per record; a sink loading 100,000s of records a second cannot afford one).

    ``records()`` builds the full :class:`ConsumedRecord` of each (key, timestamp, headers),
    for the rare batch that needs them: a dead letter, a first look at a partition."""

    topic: str
    partition: int
    offsets: Sequence[int]
    """Ascending; a ``range`` where the log's offsets are dense (the local log)."""
    values: Sequence[bytes]
    materialize: Callable[[int], list[ConsumedRecord]]
    """The run's first ``n`` records in full, in order (called at most a few times a run)."""

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)

    def __len__(self) -> int:
        return len(self.values)

    def records(self, limit: int | None = None) -> list[ConsumedRecord]:
        """The run's records (its first ``limit``) in full."""
        return self.materialize(len(self.values) if limit is None else limit)

    def after(self, offset: int) -> RecordRun:
        """The run's records above ``offset`` (those at or below are already stored)."""
        cut = bisect.bisect_right(self.offsets, offset)
        if cut == 0:
            return self
        whole = self.materialize
        return RecordRun(
            self.topic,
            self.partition,
            self.offsets[cut:],
            self.values[cut:],
            lambda n: whole(cut + n)[cut:],
        )


def _head(records: list[ConsumedRecord], n: int) -> list[ConsumedRecord]:
    return records[:n]


def runs_of(records: Sequence[ConsumedRecord]) -> list[RecordRun]:
    """``records`` (as :meth:`LogConsumer.poll` returns them) as runs, one per partition in
    the order each partition first appears; a partition's records keep their order."""
    by_tp: dict[TopicPartition, list[ConsumedRecord]] = {}
    for record in records:
        by_tp.setdefault((record.topic, record.partition), []).append(record)
    return [
        RecordRun(
            topic,
            partition,
            [r.offset for r in group],
            [r.value for r in group],
            functools.partial(_head, group),
        )
        for (topic, partition), group in by_tp.items()
    ]


@runtime_checkable
class RunConsumer(Protocol):
    """A consumer that can hand its records over as :class:`RecordRun` columns."""

    def poll_runs(self, max_records: int, timeout_s: float) -> list[RecordRun]:
        """What :meth:`LogConsumer.poll` would return, as runs (a partition may appear in
        several runs, in offset order)."""
        ...


def poll_runs(consumer: LogConsumer, max_records: int, timeout_s: float) -> list[RecordRun]:
    """``consumer``'s next records as runs: natively where it can, else from :meth:`poll`."""
    if isinstance(consumer, RunConsumer):
        return consumer.poll_runs(max_records, timeout_s)
    return runs_of(consumer.poll(max_records, timeout_s))


class LogConsumer(Protocol):
    """One member of a consumer group; not thread-safe (one thread polls it)."""

    def poll(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        """Up to ``max_records`` records after the current position of each assigned
        partition; an empty list when none arrived within ``timeout_s``."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Durably record, for the group, the next offset to read of each partition."""
        ...

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed next offset of ``tp``, or None if it never committed."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make the next poll of ``tp`` start at ``offset`` (after a failed batch: rewind)."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """Partitions this member reads now (may change on group rebalance)."""
        ...

    def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Offset one past the last record of each partition (lag = end - committed)."""
        ...

    def close(self) -> None: ...


class EventLog(Protocol):
    """A durable, partitioned log."""

    name: str
    """Backend name for logs and metrics: ``kafka`` or ``local``."""

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        """Append every record durably (Kafka: acks=all) before returning, preserving the
        order of records with the same topic and key. Raises :class:`LogUnavailable` when
        that cannot be done within ``timeout_s`` (or the topic does not exist); some records
        may then have been appended (at-least-once: the caller retries the batch, and consumers
        dedupe by event id). Retry with the *same* sequence object: a backend may then resume
        the earlier attempt instead of appending its records again (KafkaLog does)."""
        ...

    def consumer(self, group: str, topics: Sequence[str]) -> LogConsumer:
        """A new member of ``group`` reading ``topics`` from the group's committed offsets
        (from the beginning when it has none)."""
        ...

    def close(self) -> None: ...
