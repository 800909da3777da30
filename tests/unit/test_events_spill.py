"""What the event log could not take before shutdown is spilled to local disk and replayed
by the next start (llmops.events.spill): nothing accepted is lost with the process."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

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


def test_the_next_start_replays_in_the_background_once_the_log_takes_it(tmp_path: Path) -> None:
    import threading

    from llmops.events.spill import replay_in_background

    spill = SpillLog(tmp_path / "spill")
    sent = _events(30, seed=4)
    spill.send([Record(TOPIC, b"k", e.SerializeToString()) for e in sent], 5)
    target = FlakyLog(LocalLog(tmp_path / "log", fsync=False))
    target.down.set()  # still away at start: the replay waits and retries
    stop = threading.Event()
    thread = replay_in_background(spill, target, retry_s=0.05, stop=stop)
    assert thread is not None
    time.sleep(0.2)
    assert thread.is_alive() and target.calls >= 2
    target.down.clear()
    thread.join(10)
    assert not thread.is_alive()
    got = consume_all(target.inner, TOPIC, 30)
    assert sorted(_ids(got)) == sorted(e.prediction.event_id for e in sent)
    assert replay_in_background(SpillLog(tmp_path / "empty"), target, stop=stop) is None
