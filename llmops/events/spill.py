"""Accepted events that the event log could not take before the process stopped.

The publisher holds accepted events in memory until the log has them. When the log is away
(Kafka unreachable) those would pile up until the buffer refused new ones, and a process
shutting down then would lose them; instead the publisher appends them to a **spill**: a
local log under ``state_dir/spill`` (fsynced, one partition per topic, so order is kept),
once half of its buffer is waiting or an RPC has waited too long for a durable event, and
at shutdown (:meth:`EventPublisher.close`), and says so in the service log. The sender
thread replays the spill into the event log (:meth:`SpillLog.replay`, in chunks between
batches, from the spill's own committed offsets: a replay cut short resumes where it
stopped) once the log takes sends again — also what a previous process on that state
directory spilled — then deletes it; at-least-once like every send, consumers dedupe on
``event_id``.

Embedded mode has nothing to spill to: its event log already is the local log on the same
disk. A process killed with SIGKILL spills nothing; only ``events.durable`` kinds are safe
from that.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog

from llmops.events.base import Record, RecordSender, TopicPartition
from llmops.events.local_log import LocalLog

log = structlog.get_logger("llmops.events.spill")

REPLAY_GROUP = "llmops-spill-replay"


class SpillLog:
    """The spill of one state directory: append what could not be delivered; replay it."""

    name = "spill"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _open(self) -> LocalLog:
        return LocalLog(self.directory, partitions={})

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        """Append ``records`` durably (fsync), each topic in one partition, in order."""
        spill = self._open()
        try:
            for topic in sorted({r.topic for r in records}):
                spill.create_topic(topic, 1)
            spill.send(records, timeout_s)
        finally:
            spill.close()

    def clear(self) -> None:
        """Delete the spill (everything in it was replayed): the disk it took comes back."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def topics(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory / "topics"))
        except FileNotFoundError:
            return []

    def replay(
        self,
        target: RecordSender,
        *,
        timeout_s: float = 30.0,
        batch: int = 1000,
        limit: int | None = None,
    ) -> int:
        """Send everything spilled and not yet replayed to ``target`` (at most about
        ``limit`` events, whole batches, when given); the count sent. Raises LogUnavailable
        when ``target`` refuses (the rest stays for the next try)."""
        topics = self.topics()
        if not topics:
            return 0
        spill = self._open()
        sent = 0
        try:
            consumer = spill.consumer(REPLAY_GROUP, topics)
            try:
                while limit is None or sent < limit:
                    got = consumer.poll(batch, 0.0)
                    if not got:
                        return sent
                    target.send(
                        [Record(r.topic, r.key or b"", r.value, r.headers) for r in got], timeout_s
                    )
                    offsets: dict[TopicPartition, int] = {}
                    for r in got:
                        tp = (r.topic, r.partition)
                        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
                    consumer.commit(offsets)
                    sent += len(got)
                return sent
            finally:
                consumer.close()
        finally:
            spill.close()
