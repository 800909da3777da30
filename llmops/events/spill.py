"""Accepted events that the event log could not take before the process stopped.

The publisher holds accepted events in memory until the log has them. When a process shuts
down while the log is away (Kafka unreachable at SIGTERM), what is still held would be lost
with the process; instead :meth:`EventPublisher.close` appends it to a **spill**: a local
log under ``state_dir/spill`` (fsynced, one partition per topic, so order is kept), and
says so in the service log. The next process on that state directory replays the spill into
the event log (:func:`replay_in_background`: :meth:`SpillLog.replay` on a thread of its own,
from the spill's own committed offsets: a replay cut short resumes where it stopped),
at-least-once like every send — consumers dedupe on ``event_id``.

Embedded mode has nothing to spill to: its event log already is the local log on the same
disk. A process killed with SIGKILL spills nothing; only ``events.durable`` kinds are safe
from that.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from llmops.events.base import EventLog, LogUnavailable, Record, TopicPartition
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

    def topics(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory / "topics"))
        except FileNotFoundError:
            return []

    def replay(self, target: EventLog, *, timeout_s: float = 30.0, batch: int = 1000) -> int:
        """Send everything spilled and not yet replayed to ``target``; the count sent.
        Raises LogUnavailable when ``target`` refuses (the rest stays for the next try)."""
        topics = self.topics()
        if not topics:
            return 0
        spill = self._open()
        sent = 0
        try:
            consumer = spill.consumer(REPLAY_GROUP, topics)
            try:
                while True:
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
            finally:
                consumer.close()
        finally:
            spill.close()


def replay_in_background(
    spill: SpillLog, target: EventLog, *, retry_s: float = 5.0, stop: threading.Event
) -> threading.Thread | None:
    """Replay ``spill`` into ``target`` on a daemon thread, retrying every ``retry_s`` while
    the target refuses; None when there is nothing spilled."""
    if not spill.topics():
        return None

    def run() -> None:
        while not stop.is_set():
            try:
                sent = spill.replay(target)
            except LogUnavailable as exc:
                log.warning("events_spill_replay_waiting", error=str(exc), retry_in_s=retry_s)
                stop.wait(retry_s)
                continue
            except Exception:  # a damaged spill must not take the process down; say so
                log.exception("events_spill_replay_failed", spill=str(spill.directory))
                return
            if sent:
                log.warning("events_spill_replayed", events=sent, spill=str(spill.directory))
            return

    thread = threading.Thread(target=run, name="events-spill-replay", daemon=True)
    thread.start()
    return thread
