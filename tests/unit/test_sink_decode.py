"""What the sink accepts from the log, and the `llmops logs` window syntax."""

from __future__ import annotations

from datetime import timedelta

import pytest

from llmops.events.base import ConsumedRecord
from llmops.logs import parse_window
from llmops.sink.worker import decode
from llmops.v1 import events_pb2


def _record(value: bytes) -> ConsumedRecord:
    return ConsumedRecord("t", 0, 7, b"k", value, 0)


def _prediction(event_id: str = "e1", with_time: bool = True) -> bytes:
    env = events_pb2.EventEnvelope()
    env.prediction.event_id = event_id
    if with_time:
        env.prediction.event_time.FromSeconds(1_700_000_000)
    return env.SerializeToString()


def test_a_valid_event_decodes() -> None:
    env = decode(_record(_prediction()), "prediction")
    assert env.prediction.event_id == "e1"


@pytest.mark.parametrize(
    ("value", "expected", "reason"),
    [
        (b"\x0a\xff\xff", "prediction", "not an EventEnvelope"),
        (events_pb2.EventEnvelope(key="k").SerializeToString(), "prediction", "no event"),
        (_prediction(event_id=""), "prediction", "prediction.event_id is empty"),
        (_prediction(with_time=False), "prediction", "prediction.event_time is not set"),
        (_prediction(), "audit", "a prediction event on a topic of audit events"),
    ],
)
def test_unusable_records_say_why(value: bytes, expected: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode(_record(value), expected)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1.5h", 5400)]
)
def test_windows(text: str, seconds: float) -> None:
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5 minutes", "-5m"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(ValueError, match="is not a window"):
        parse_window(text)


def test_recent_ids_remember_at_least_the_last_half_window() -> None:
    from llmops.sink.worker import RecentIds

    recent = RecentIds(window=100)
    recent.add_all([f"a{i}" for i in range(30)])
    recent.add_all(("b0",))
    assert "a0" in recent and "b0" in recent and "zz" not in recent
    assert recent.seen_any(["zz", "a29"]) and not recent.seen_any(["zz", "yy"])
    ids = [f"c{i}" for i in range(1000)]
    recent.add_all(ids)  # one call of ten windows: rotated as it goes
    assert all(i in recent for i in ids[-50:])  # the last half window at least
    assert "a0" not in recent and "c0" not in recent  # at most a window
    assert sum(i in recent for i in ids) <= 100
