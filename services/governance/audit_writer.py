"""The audit writer: the single writer of the audit hash chains.

A runtime task of the governance service (:meth:`AuditWriter.task`). Each step, run on one
dedicated thread:

1. poll the raw audit topic (``llmops.audit.v1``) as consumer group
   ``llmops-governance.audit-writer``, with a bounded wait;
2. drop records the anchored heads already account for (offset below the stored next
   offset of their partition: a crash after step 4 and before step 5);
3. chain them in log order after the anchored heads (:func:`audit_chain.chain_in_place`) and append
   the chained envelopes to ``llmops.audit.chained.v1`` durably (``EventLog.send``);
4. store the moved heads (compare-and-set) and the next raw offsets in one transaction of the
   registry database;
5. commit the consumer offsets.

Producers key raw records by the chain they will join, so one chain's raw records are read
in one partition's order: a replay after a crash between 3 and 4 meets the same heads and the
same records in the same order and appends byte-identical chained records (same event ids),
which the sink drops or the table's replacing key collapses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import Sequence

import structlog

from llmops.events.base import ConsumedRecord, EventLog, LogConsumer, Record, TopicPartition
from llmops.events.topics import AUDIT_CHAINED_TOPIC, KIND_TOPICS
from llmops.scheduler import Background
from llmops.v1 import events_pb2
from services.governance import audit_chain
from services.governance.audit_chain import Head
from services.governance.audit_store import AnchorStore

log = structlog.get_logger("llmops.governance")

GROUP = "llmops-governance.audit-writer"
REMEMBERED_IDS = 100_000
"""Event ids the writer remembers to chain a repeated record once."""


class AuditWriter:
    """Chains the raw audit records (see the module docstring); not thread-safe: one thread
    calls :meth:`open`, :meth:`step` and :meth:`close` (the task does so)."""

    def __init__(
        self,
        event_log: EventLog,
        anchors: AnchorStore,
        *,
        source: str = KIND_TOPICS["audit"],
        target: str = AUDIT_CHAINED_TOPIC,
        group: str = GROUP,
        batch: int = 5_000,
        poll_timeout_s: float = 0.2,
        linger_s: float = 0.0,
        send_timeout_s: float = 30.0,
    ) -> None:
        self._log = event_log
        self._anchors = anchors
        self.source = source
        self.target = target
        self.group = group
        self.batch = batch
        self.poll_timeout_s = poll_timeout_s
        self.linger_s = linger_s
        self.send_timeout_s = send_timeout_s
        self._consumer: LogConsumer | None = None
        self._heads: dict[str, Head] = {}
        self._offsets: dict[TopicPartition, int] = {}
        self.appended = 0
        self.skipped = 0
        self.repeats = 0
        # event ids chained by this writer, newest last: a record published twice (the
        # registry's outbox relays a record whose first append it did not see confirmed)
        # joins its chain once, not as a second sequence number the sink would drop as a
        # duplicate event id, leaving a gap VerifyAudit would report
        self._chained_ids: OrderedDict[str, None] = OrderedDict()

    def open(self) -> None:
        anchors = self._anchors.load()
        self._heads, self._offsets = dict(anchors.heads), dict(anchors.offsets)
        self._consumer = self._log.consumer(self.group, [self.source])

    def step(self) -> int:
        """One poll and, when records came, one chained append; returns the records chained."""
        assert self._consumer is not None, "open() first"
        polled = self._consumer.poll(self.batch, self.poll_timeout_s)
        if not polled:
            return 0
        next_offsets: dict[TopicPartition, int] = {}
        events: list[events_pb2.AuditEvent] = []
        for record in polled:
            tp = (record.topic, record.partition)
            next_offsets[tp] = record.offset + 1
            if record.offset < self._offsets.get(tp, 0):
                continue  # already chained: the heads account for it
            event = _audit_event(record)
            if event is None:
                self.skipped += 1
                continue
            if event.event_id in self._chained_ids:
                self.repeats += 1
                continue
            self._chained_ids[event.event_id] = None
            events.append(event)
        while len(self._chained_ids) > REMEMBERED_IDS:
            self._chained_ids.popitem(last=False)
        chained, moved = audit_chain.chain_in_place(events, self._heads)
        if chained:
            self._log.send(_records(self.target, chained), self.send_timeout_s)
        self._anchors.advance(moved, self._heads, next_offsets)
        self._heads.update(moved)
        self._offsets.update(next_offsets)
        self._consumer.commit(next_offsets)
        self.appended += len(chained)
        return len(chained)

    def drain(self, max_steps: int = 1_000) -> int:
        """Step until a poll brings nothing (tests, ``run_once``-style use)."""
        total = 0
        for _ in range(max_steps):
            done = self.step()
            total += done
            if done == 0:
                break
        return total

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def task(self, name: str = "audit_writer") -> Background:
        """The runtime task: steps on a dedicated thread until cancelled; the consumer is
        closed on that thread after the step in flight (cancellation never interrupts a
        half-done step: its offsets are committed or the next start replays it)."""

        async def run() -> None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(pool, self.open)
                log.info("audit_writer_started", source=self.source, target=self.target)
                while True:
                    chained = await loop.run_in_executor(pool, self.step)
                    if chained < self.batch and self.linger_s > 0:
                        # let records gather: one append per linger, not one per record
                        await asyncio.sleep(self.linger_s)
            finally:
                closing = loop.run_in_executor(pool, self.close)
                await asyncio.shield(closing)
                pool.shutdown(wait=False)
                log.info("audit_writer_stopped", appended=self.appended)

        return Background(name, run)


def _audit_event(record: ConsumedRecord) -> events_pb2.AuditEvent | None:
    try:
        envelope = events_pb2.EventEnvelope.FromString(record.value)
    except Exception:  # DecodeError; be broad for foreign bytes
        envelope = events_pb2.EventEnvelope()
    if envelope.WhichOneof("event") != "audit" or not envelope.audit.event_id:
        log.warning(
            "audit_record_unusable",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return None
    return envelope.audit


def _records(topic: str, chained: Sequence[tuple[str, bytes]]) -> list[Record]:
    """The chained records as ``EventEnvelope(key=chain, audit=record)`` bytes (the same for
    the same input: a replay writes identical records)."""
    return [
        Record(topic, key := chain.encode(), envelope_bytes(key, stored))
        for chain, stored in chained
    ]


_KEY_TAG = b"\x1a"  # EventEnvelope.key: field 3, length-delimited
_AUDIT_TAG = b"\x72"  # EventEnvelope.audit: field 14, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def envelope_bytes(key: bytes, audit: bytes) -> bytes:
    """An ``EventEnvelope`` with ``key`` and the serialized AuditEvent ``audit``, built
    without parsing ``audit`` into a message again: their two length-delimited fields in
    number order, which is ``EventEnvelope(key=..., audit=...).SerializeToString(
    deterministic=True)`` when ``audit`` is the record's deterministic serialization (a unit
    test checks it against protobuf)."""
    return b"".join((_KEY_TAG, _varint(len(key)), key, _AUDIT_TAG, _varint(len(audit)), audit))
