"""Records the log refuses for good (a broker's INVALID_RECORD, INVALID_TIMESTAMP,
MESSAGE_TOO_LARGE: :class:`RecordsRefused`) go to the dead-letter topic instead of being
retried forever, whether they come from the buffer or from a spill replay; the others of the
batch are delivered once; a dead letter the log refuses too is logged whole and counted."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry

from llmops.events.base import EventLog, Record, RecordsRefused
from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher, RetryBackoff
from llmops.events.synthetic import prediction_envelope
from llmops.events.topics import DLQ_TOPIC, KIND_TOPICS
from tests.unit.test_events_publisher import FlakyLog, consume_all

FAST = RetryBackoff(initial_s=0.001, max_s=0.01)
PREDICTIONS = KIND_TOPICS["prediction"]


class Refusing(FlakyLog):
    """A log that refuses for good every record whose value holds ``poison`` (and, with
    ``refuse_letters``, its dead letter too), appending the rest as a broker would."""

    def __init__(self, inner: EventLog, refuse_letters: bool = False) -> None:
        super().__init__(inner)
        self.name = "refusing"
        self.refuse_letters = refuse_letters
        self.sends = 0

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        self.sends += 1
        refused = {
            i: "InvalidRecordError: [Error 87] INVALID_RECORD"
            for i, r in enumerate(records)
            if b"poison" in r.value and (self.refuse_letters or r.topic != DLQ_TOPIC)
        }
        self.inner.send([r for i, r in enumerate(records) if i not in refused], timeout_s)
        if refused:
            raise RecordsRefused(refused)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalLog]:
    log = LocalLog(tmp_path / "log", fsync=False)
    yield log
    log.close()


def _envelope(i: int, poison: bool = False) -> object:
    env = prediction_envelope(random.Random(i), event_time_ns=time.time_ns())
    env.prediction.request_id = f"req-{i}"
    if poison:
        env.prediction.route = "poison"
    return env


def _count(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def test_a_refused_record_goes_to_the_dead_letters_and_the_rest_is_delivered_once(
    local: LocalLog,
) -> None:
    log = Refusing(local)
    registry = CollectorRegistry()
    publisher = EventPublisher(log, retry_backoff=FAST, registry=registry).start()
    try:
        for i in range(10):
            publisher.publish(_envelope(i, poison=i == 4))  # type: ignore[arg-type]
        assert publisher.flush(10)  # nothing stuck behind the refused one
    finally:
        publisher.close()
    delivered = consume_all(local, PREDICTIONS, 9)
    assert len(delivered) == 9 and all(b"poison" not in r.value for r in delivered)
    letters = consume_all(local, DLQ_TOPIC, 1)
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["dlq.topic"] == PREDICTIONS.encode() and headers["dlq.stage"] == b"publish"
    assert b"INVALID_RECORD" in headers["dlq.reason"]
    assert letters[0].key == b"req-4" and b"poison" in letters[0].value  # as it was
    assert _count(registry, "llmops_events_dead_lettered_total", {"topic": PREDICTIONS}) == 1
    assert log.sends <= 3  # the batch, its dead letter: no retry loop


def test_a_dead_letter_refused_too_is_logged_whole_and_counted_not_retried(
    local: LocalLog,
) -> None:
    log = Refusing(local, refuse_letters=True)
    registry = CollectorRegistry()
    publisher = EventPublisher(log, retry_backoff=FAST, registry=registry).start()
    try:
        with structlog.testing.capture_logs() as logged:
            publisher.publish(_envelope(1, poison=True))  # type: ignore[arg-type]
            publisher.publish(_envelope(2))  # type: ignore[arg-type]
            assert publisher.flush(10)
    finally:
        publisher.close()
    assert len(consume_all(local, PREDICTIONS, 1)) == 1
    assert consume_all(local, DLQ_TOPIC, 0) == []
    assert _count(registry, "llmops_events_dead_letters_lost_total") == 1
    lost = [e for e in logged if e["event"] == "events_dead_letter_refused"]
    assert len(lost) == 1 and b"poison" in base64.b64decode(lost[0]["value_b64"])  # replayable


def test_a_spill_replay_dead_letters_too(tmp_path: Path, local: LocalLog) -> None:
    """Events spilled while the log was away and refused for good when replayed: the replay
    goes through the same dead-lettering sender and finishes instead of failing forever."""
    from llmops.events.publisher import DeadLettering, PublisherMetrics
    from llmops.events.spill import SpillLog

    spill = SpillLog(tmp_path / "spill")
    spill.send([Record(PREDICTIONS, b"k1", b"fine"), Record(PREDICTIONS, b"k2", b"poison")], 5)
    registry = CollectorRegistry()
    sender = DeadLettering(Refusing(local), PublisherMetrics(registry, "refusing"))
    assert spill.replay(sender, timeout_s=5) == 2
    assert spill.replay(sender, timeout_s=5) == 0  # all of it replayed: nothing left to retry
    assert [r.value for r in consume_all(local, PREDICTIONS, 1)] == [b"fine"]
    assert [r.value for r in consume_all(local, DLQ_TOPIC, 1)] == [b"poison"]
