"""What the event log could not take before shutdown is spilled to local disk and replayed
by the next start (llmops.events.spill): nothing accepted is lost with the process."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from llmops.errors import ResourceExhausted
from llmops.events.base import LogUnavailable, Record
from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher, RetryBackoff, UndeliveredEvents
from llmops.events.spill import SpillLog
from llmops.events.synthetic import prediction_envelope
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2
from tests.unit.test_events_publisher import FlakyLog, consume_all

FAST = RetryBackoff(initial_s=0.001, max_s=0.01)
TOPIC = KIND_TOPICS["prediction"]


def _events(n: int, seed: int = 0) -> list[events_pb2.EventEnvelope]:
    rng = random.Random(seed)
    return [prediction_envelope(rng, event_time_ns=time.time_ns()) for _ in range(n)]


def _ids(records: Sequence[object]) -> list[str]:
    out = []
    for r in records:
        env = events_pb2.EventEnvelope.FromString(r.value)  # type: ignore[attr-defined]
        out.append(env.prediction.event_id)
    return out


def test_undelivered_events_are_spilled_at_close_and_replayed_once(tmp_path: Path) -> None:
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()  # the broker is away when the process stops
    spill = SpillLog(tmp_path / "spill")
    sent = _events(500)
    publisher = EventPublisher(primary, retry_backoff=FAST, max_batch=100).start()
    for env in sent:
        publisher.publish(env)
    publisher.close(0.2, spill=spill)  # no UndeliveredEvents: they are on disk
    assert publisher.pending == 0

    primary.down.clear()  # the next start: the log is back
    assert spill.replay(primary) == 500
    assert spill.replay(primary) == 0  # replayed once: the spill's offsets are committed
    got = consume_all(primary.inner, TOPIC, 500)
    assert sorted(_ids(got)) == sorted(e.prediction.event_id for e in sent)


def test_a_replay_cut_short_resumes_where_it_stopped(tmp_path: Path) -> None:
    spill = SpillLog(tmp_path / "spill")
    sent = _events(250, seed=1)
    records = [Record(TOPIC, e.key.encode() or b"k", e.SerializeToString()) for e in sent]
    spill.send(records, 5)
    target = FlakyLog(LocalLog(tmp_path / "log", fsync=False))

    class FailsAfterOneBatch:
        name = "once"

        def __init__(self) -> None:
            self.sends = 0

        def send(self, batch: Sequence[Record], timeout_s: float) -> None:
            self.sends += 1
            if self.sends > 1:
                raise LogUnavailable("broker went away")
            target.send(batch, timeout_s)

        def consumer(self, group: str, topics: Sequence[str]) -> object:
            raise NotImplementedError

        def close(self) -> None:
            return None

    with pytest.raises(LogUnavailable):
        spill.replay(FailsAfterOneBatch(), batch=100)  # type: ignore[arg-type]
    assert spill.replay(target, batch=100) == 150  # the rest, not the first 100 again
    got = consume_all(target.inner, TOPIC, 250)
    assert sorted(_ids(got)) == sorted(e.prediction.event_id for e in sent)


def test_without_a_spill_undelivered_events_are_reported(tmp_path: Path) -> None:
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()
    publisher = EventPublisher(primary, retry_backoff=FAST).start()
    for env in _events(10, seed=2):
        publisher.publish(env)
    with pytest.raises(UndeliveredEvents) as undelivered:
        publisher.close(0.1)
    assert undelivered.value.count == 10


def test_an_empty_spill_replays_nothing(tmp_path: Path) -> None:
    assert SpillLog(tmp_path / "never-written").replay(LocalLog(tmp_path / "log")) == 0


def test_a_process_that_stops_while_kafka_is_away_spills_under_its_state_dir(
    tmp_path: Path,
) -> None:
    """Backends wires it: the Kafka publisher's close spills to ``state_dir/spill``; the
    local event log (embedded mode) has no spill: it is on the same disk already."""
    from llmops.backends import Backends
    from llmops.config import MeshConfig

    config = MeshConfig.model_validate(
        {
            "mode": "production",
            "state_dir": str(tmp_path / "state"),
            "events": {"backend": "kafka", "flush_timeout_s": 0.5, "send_timeout_s": 0.5},
            "backends": {"kafka": {"bootstrap_servers": "127.0.0.1:1"}},  # nothing listens
        }
    )
    sent = _events(20, seed=3)
    with Backends(config) as backends:
        for env in sent:
            backends.publisher().publish(env)
    spill = SpillLog(tmp_path / "state" / "spill")
    assert spill.topics() == [TOPIC]
    target = LocalLog(tmp_path / "log", fsync=False)
    assert spill.replay(target) == 20
    got = consume_all(target, TOPIC, 20)
    assert sorted(_ids(got)) == sorted(e.prediction.event_id for e in sent)


def test_the_next_start_replays_the_spill_once_the_log_takes_it(tmp_path: Path) -> None:
    """What an earlier process spilled is replayed by the next publisher on that spill,
    retrying while the log refuses, then the spill is deleted."""
    spill = SpillLog(tmp_path / "spill")
    sent = _events(30, seed=4)
    spill.send([Record(TOPIC, b"k", e.SerializeToString()) for e in sent], 5)
    target = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    target.down.set()  # still away at start: the replay waits and retries
    publisher = EventPublisher(
        target, retry_backoff=FAST, overflow=spill, spill_retry_s=0.05
    ).start()
    try:
        _wait(lambda: target.calls >= 2)
        assert spill.topics() == [TOPIC]  # refused: kept
        target.down.clear()
        _wait(lambda: not spill.directory.exists())  # replayed, then deleted
        got = consume_all(target.inner, TOPIC, 30)
        assert sorted(_ids(got)) == sorted(e.prediction.event_id for e in sent)
        assert publisher.metrics.replayed._value.get() == 30
    finally:
        publisher.close(1)


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _publish_when_room(publisher: EventPublisher, env: events_pb2.EventEnvelope) -> None:
    _wait(lambda: publisher.has_room(1), timeout_s=2.0)
    publisher.publish(env)


def _spilled(publisher: EventPublisher, reason: str) -> float:
    return publisher.metrics.spilled.labels(reason)._value.get()


def test_a_log_away_under_load_spills_instead_of_refusing_then_replays(tmp_path: Path) -> None:
    """Kafka away while events keep coming: half the buffer waiting spills to disk, so a
    buffer of 1,000 takes 5,000 events without one RESOURCE_EXHAUSTED; back, the log gets
    every one (new ones at once, the spilled ones replayed), and the spill is deleted."""
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()
    spill = SpillLog(tmp_path / "spill")
    publisher = EventPublisher(
        primary, capacity=1000, max_batch=100, retry_backoff=FAST, overflow=spill,
        spill_retry_s=0.05,
    ).start()  # fmt: skip
    sent = _events(5000, seed=5)
    try:
        for env in sent[:4000]:
            _publish_when_room(publisher, env)  # without the spill: never room again
        _wait(lambda: publisher.pending < 500)
        assert _spilled(publisher, "overload") >= 3500
        assert publisher.metrics.rejected.labels(TOPIC)._value.get() == 0
        primary.down.clear()
        for env in sent[4000:]:
            _publish_when_room(publisher, env)
        assert publisher.flush(10)
        _wait(lambda: not spill.directory.exists())
    finally:
        publisher.close(1)
    got = consume_all(primary.inner, TOPIC, 5000)
    assert sorted(set(_ids(got))) == sorted(e.prediction.event_id for e in sent)
    assert len(got) - len(set(_ids(got))) <= 100  # at most one batch sent twice


def test_a_durable_wait_on_a_refusing_log_ends_on_the_spill(tmp_path: Path) -> None:
    """An RPC waiting for a durable event (feedback, audit) is answered once the event is
    fsynced in the spill after ``spill_after_s``, not failed at its timeout."""
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()
    spill = SpillLog(tmp_path / "spill")
    publisher = EventPublisher(
        primary, retry_backoff=RetryBackoff(initial_s=1.0, max_s=1.0), overflow=spill,
        spill_after_s=0.2, spill_retry_s=0.05,
    ).start()  # fmt: skip
    try:
        started = time.monotonic()
        asyncio.run(publisher.publish_durable(_events(3, seed=6), timeout_s=5))
        assert time.monotonic() - started < 1.0  # not the 1 s back-off, not the timeout
        assert _spilled(publisher, "overload") == 3 and spill.topics() == [TOPIC]
    finally:
        publisher.close(1)


def test_a_spill_that_refuses_too_leaves_the_events_waiting(tmp_path: Path) -> None:
    """Spill disk full as well: the events stay in the buffer (retried, spill attempts
    spaced by ``spill_retry_s``), the buffer refuses when full, and nothing is lost."""
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()

    class FullDisk:
        def __init__(self) -> None:
            self.attempts = 0

        def send(self, records: Sequence[Record], timeout_s: float) -> None:
            self.attempts += 1
            raise OSError(28, "No space left on device")

        def topics(self) -> list[str]:
            return []

        def replay(self, *args: object, **kwargs: object) -> int:
            raise AssertionError("nothing was spilled")

        def clear(self) -> None:
            raise AssertionError("nothing was spilled")

    full = FullDisk()
    publisher = EventPublisher(
        primary, capacity=100, max_batch=10, retry_backoff=FAST, overflow=full,
        spill_retry_s=0.2,
    ).start()  # fmt: skip
    sent = _events(100, seed=7)
    for env in sent:
        publisher.publish(env)
    with pytest.raises(ResourceExhausted):
        publisher.publish(_events(1, seed=8)[0])
    time.sleep(0.5)
    assert 1 <= full.attempts <= 4  # spaced by spill_retry_s, not a busy loop
    primary.down.clear()
    assert publisher.flush(10)
    publisher.close(1)
    got = consume_all(primary.inner, TOPIC, 100)
    assert sorted(set(_ids(got))) == sorted(e.prediction.event_id for e in sent)


class HangingLog(FlakyLog):
    """A broker away as Kafka is: each send hangs for its timeout before it fails."""

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        if self.down.is_set():
            self.calls += 1
            time.sleep(min(timeout_s, 1.5))
            if self.down.is_set():
                raise LogUnavailable("request timed out")
        super().send(records, timeout_s)


def test_a_send_hanging_on_a_dead_broker_does_not_hold_back_the_spill(tmp_path: Path) -> None:
    """While the sender waits out a send's timeout, the spiller still takes the buffer
    (half full) and, after ``spill_after_s``, the batch under way that a durable call
    waits for; the late failure of that send changes nothing."""
    primary = HangingLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()
    spill = SpillLog(tmp_path / "spill")
    publisher = EventPublisher(
        primary, capacity=200, max_batch=50, send_timeout_s=1.5, retry_backoff=FAST,
        overflow=spill, spill_after_s=0.3, spill_retry_s=0.05,
    ).start()  # fmt: skip
    sent = _events(1000, seed=9)
    try:
        started = time.monotonic()
        asyncio.run(publisher.publish_durable(sent[:1], timeout_s=5))
        assert 0.3 <= time.monotonic() - started < 1.4  # spilled, before the send gave up
        for env in sent[1:]:
            _publish_when_room(publisher, env)
        assert time.monotonic() - started < 5  # 10 sends' timeouts would be 15 s
        primary.down.clear()
        assert publisher.flush(10)
        _wait(lambda: not spill.directory.exists())
    finally:
        publisher.close(1)
    got = consume_all(primary.inner, TOPIC, 1000)
    assert sorted(set(_ids(got))) == sorted(e.prediction.event_id for e in sent)


def test_without_the_overload_spill_the_buffer_fills_but_the_old_spill_is_replayed(
    tmp_path: Path,
) -> None:
    """``spill_on_overload=False``: a log away fills the buffer (RESOURCE_EXHAUSTED, as
    before the spill existed); what an earlier process spilled is still replayed."""
    spill = SpillLog(tmp_path / "spill")
    earlier = _events(10, seed=10)
    spill.send([Record(TOPIC, b"k", e.SerializeToString()) for e in earlier], 5)
    primary = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    primary.down.set()
    publisher = EventPublisher(
        primary, capacity=20, retry_backoff=FAST, overflow=spill, spill_retry_s=0.05,
        spill_on_overload=False,
    ).start()  # fmt: skip
    sent = _events(20, seed=11)
    try:
        for env in sent:
            publisher.publish(env)
        with pytest.raises(ResourceExhausted):
            publisher.publish(_events(1, seed=12)[0])
        time.sleep(0.2)
        assert _spilled(publisher, "overload") == 0
        primary.down.clear()
        assert publisher.flush(10)
        _wait(lambda: not spill.directory.exists())
    finally:
        publisher.close(1)
    got = consume_all(primary.inner, TOPIC, 30)
    assert sorted(set(_ids(got))) == sorted(e.prediction.event_id for e in earlier + sent)
