"""The event log interface every backend implements (Kafka, and the embedded local log).

A log is a set of topics, each split into partitions; a record's key picks its partition,
so one entity's events stay in order. Producers append durably; consumers read a partition
in offset order as members of a consumer group and commit "the next offset to read" only
after what they read is durable downstream. Both backends pass the same contract tests
(``tests/contract/test_event_log.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

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
