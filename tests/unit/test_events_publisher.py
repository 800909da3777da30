"""EventPublisher: validation, keys, back-pressure, retries, flush/close, schema evolution."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from llmops.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from llmops.events.base import ConsumedRecord, EventLog, LogConsumer, LogUnavailable, Record
from llmops.events.ids import uuid7
from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher, RetryBackoff, UndeliveredEvents
from llmops.events.synthetic import prediction_envelope
from llmops.events.topics import KIND_TOPICS
from llmops.v1 import events_pb2

FAST = RetryBackoff(initial_s=0.001, max_s=0.01)


class FlakyLog:
    """Wraps a log: fails the first ``failures`` sends (after appending ``partial`` records of
    the batch, as a broker that took some records before the connection broke would), or
    every send while ``down`` is set."""

    def __init__(self, inner: EventLog, failures: int = 0, partial: int = 0) -> None:
        self.inner = inner
        self.name = "flaky"
        self.failures = failures
        self.partial = partial
        self.down = threading.Event()
        self.down_message = "down"
        self.calls = 0

    def send(self, records: Sequence[Record], timeout_s: float) -> None:
        self.calls += 1
        if self.down.is_set():
            raise LogUnavailable(self.down_message)
        if self.failures > 0:
            self.failures -= 1
            if self.partial:
                self.inner.send(records[: self.partial], timeout_s)
            raise LogUnavailable("injected failure")
        self.inner.send(records, timeout_s)

    def consumer(self, group: str, topics: Sequence[str]) -> LogConsumer:
        return self.inner.consumer(group, topics)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalLog]:
    log = LocalLog(tmp_path / "log", fsync=False)
    yield log
    log.close()


def envelope(i: int, key: str = "") -> events_pb2.EventEnvelope:
    env = prediction_envelope(random.Random(i), event_time_ns=time.time_ns())
    if key:
        env.prediction.request_id = key
    return env


def consume_all(log: EventLog, topic: str, expect: int) -> list[ConsumedRecord]:
    consumer = log.consumer(f"g-{uuid7()}", [topic])
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out += consumer.poll(10_000, 0.2)
        out += consumer.poll(10_000, 0.1)  # anything beyond what was expected
    finally:
        consumer.close()
    return out


def ids(got: list[ConsumedRecord]) -> list[str]:
    return [events_pb2.EventEnvelope.FromString(r.value).prediction.event_id for r in got]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------------


def test_publish_rejects_envelopes_missing_required_fields(local: LocalLog) -> None:
    pub = EventPublisher(local)
    with pytest.raises(InvalidArgument) as err:
        pub.publish(events_pb2.EventEnvelope())
    assert err.value.field == "event"
    env = envelope(1)
    env.prediction.event_id = ""
    with pytest.raises(InvalidArgument) as err:
        pub.publish(env)
    assert err.value.field == "prediction.event_id"
    env = envelope(2)
    env.prediction.ClearField("event_time")
    with pytest.raises(InvalidArgument) as err:
        pub.publish(env)
    assert err.value.field == "prediction.event_time"
    assert pub.pending == 0


def test_publish_fills_key_and_publish_time_per_kind(local: LocalLog) -> None:
    pub = EventPublisher(local, producer="llmops.v1.FeedbackService/test")
    now = events_pb2.EventEnvelope().publish_time
    now.GetCurrentTime()
    cases: list[tuple[events_pb2.EventEnvelope, str]] = []
    fb = events_pb2.EventEnvelope()
    fb.feedback.event_id, fb.feedback.unit_id = uuid7(), "user-9"
    fb.feedback.event_time.CopyFrom(now)
    cases.append((fb, "user-9"))  # no request id: unit_id
    fb2 = events_pb2.EventEnvelope()
    fb2.CopyFrom(fb)
    fb2.feedback.request_id = "req-1"
    cases.append((fb2, "req-1"))
    ex = events_pb2.EventEnvelope()
    ex.exposure.event_id, ex.exposure.unit_id = uuid7(), "session-3"
    ex.exposure.event_time.CopyFrom(now)
    cases.append((ex, "session-3"))
    au = events_pb2.EventEnvelope()
    au.audit.event_id, au.audit.chain = uuid7(), "tenant:acme"
    au.audit.event_time.CopyFrom(now)
    cases.append((au, "tenant:acme"))
    gd = events_pb2.EventEnvelope()
    gd.guardrail_decision.event_id = "0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77"
    gd.guardrail_decision.event_time.CopyFrom(now)
    cases.append((gd, "0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77"))  # no request id: event_id
    for env, key in cases:
        pub.publish(env)
        assert env.key == key
        assert env.HasField("publish_time")
        assert env.producer == "llmops.v1.FeedbackService/test"
    kept = envelope(3, key="req-7")
    kept.key = "caller-chose"
    pub.publish(kept)
    assert kept.key == "caller-chose"
    assert pub.pending == len(cases) + 1


def test_full_buffer_raises_resource_exhausted_and_loses_nothing_accepted(local: LocalLog) -> None:
    registry = CollectorRegistry()
    flaky = FlakyLog(local)
    flaky.down.set()  # the log is down: nothing drains
    pub = EventPublisher(flaky, capacity=500, max_batch=64, retry_backoff=FAST, registry=registry)
    pub.start()
    accepted = []
    for i in range(500):
        env = envelope(i)
        pub.publish(env)
        accepted.append(env.prediction.event_id)
    with pytest.raises(ResourceExhausted, match=r"event buffer full.*capacity 500"):
        pub.publish(envelope(999))
    assert pub.pending == 500
    topic = KIND_TOPICS["prediction"]
    assert sample(registry, "llmops_events_rejected_total", topic=topic) == 1
    assert sample(registry, "llmops_events_buffer_depth") == 500
    time.sleep(0.05)
    assert sample(registry, "llmops_events_send_failures_total", backend="flaky") > 0

    flaky.down.clear()  # the log is back
    pub.close(timeout_s=10)
    got = ids(consume_all(local, topic, 500))
    assert got and sorted(set(got)) == sorted(accepted)
    assert sample(registry, "llmops_events_delivered_total", topic=topic) == 500
    assert sample(registry, "llmops_events_buffer_depth") == 0


def test_close_flushes_everything_buffered(local: LocalLog) -> None:
    pub = EventPublisher(local, max_batch=100, linger_s=10.0).start()  # linger never expires
    sent = []
    for i in range(1234):
        env = envelope(i)
        pub.publish(env)
        sent.append(env.prediction.event_id)
    pub.close(timeout_s=10)
    assert pub.pending == 0
    assert ids(consume_all(local, KIND_TOPICS["prediction"], 1234)) != []
    assert sorted(ids(consume_all(local, KIND_TOPICS["prediction"], 1234))) == sorted(sent)
    with pytest.raises(FailedPrecondition):
        pub.publish(envelope(1))


def test_per_key_order_is_kept(local: LocalLog) -> None:
    pub = EventPublisher(local, max_batch=37).start()
    keys = [f"req-{k}" for k in range(10)]
    for seq in range(100):
        for key in keys:
            env = envelope(seq, key=key)
            env.prediction.model_version = seq
            pub.publish(env)
    pub.close(10)
    got = consume_all(local, KIND_TOPICS["prediction"], 1000)
    per_key: dict[str, list[int]] = {}
    for r in got:
        ev = events_pb2.EventEnvelope.FromString(r.value)
        assert r.key == ev.key.encode() == ev.prediction.request_id.encode()
        per_key.setdefault(ev.key, []).append(ev.prediction.model_version)
    assert per_key == {key: list(range(100)) for key in keys}


def test_failed_sends_are_retried_and_nothing_is_lost(local: LocalLog) -> None:
    registry = CollectorRegistry()
    flaky = FlakyLog(local, failures=5, partial=3)  # 5 failures, each after 3 records landed
    pub = EventPublisher(flaky, max_batch=50, retry_backoff=FAST, registry=registry).start()
    sent = []
    for i in range(400):
        env = envelope(i, key=f"req-{i % 4}")
        env.prediction.model_version = i
        pub.publish(env)
        sent.append(env.prediction.event_id)
    assert pub.flush(10)
    pub.close(5)
    got = consume_all(local, KIND_TOPICS["prediction"], 400)
    counts = Counter(ids(got))
    assert set(counts) == set(sent)  # nothing lost
    assert sum(counts.values()) - len(sent) == 5 * 3  # duplicates: exactly the partial appends
    assert sample(registry, "llmops_events_send_failures_total", backend="flaky") == 5
    # First occurrences keep per-key order (what a deduplicating consumer sees).
    first: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r in got:
        ev = events_pb2.EventEnvelope.FromString(r.value).prediction
        if ev.event_id not in seen:
            seen.add(ev.event_id)
            first.setdefault(ev.request_id, []).append(ev.model_version)
    assert all(v == sorted(v) for v in first.values())


def test_close_reports_what_could_not_be_delivered(local: LocalLog) -> None:
    flaky = FlakyLog(local)
    flaky.down.set()
    pub = EventPublisher(flaky, retry_backoff=FAST, send_timeout_s=0.1).start()
    for i in range(10):
        pub.publish(envelope(i))
    started = time.monotonic()
    with pytest.raises(UndeliveredEvents) as err:
        pub.close(timeout_s=0.3)
    assert err.value.count == 10
    assert err.value.code == "UNAVAILABLE"
    assert time.monotonic() - started < 2.0


def test_publish_never_blocks_while_the_log_hangs(tmp_path: Path) -> None:
    release = threading.Event()

    class HangingLog(FlakyLog):
        def send(self, records: Sequence[Record], timeout_s: float) -> None:
            release.wait(5)
            super().send(records, timeout_s)

    log = HangingLog(LocalLog(tmp_path, fsync=False))
    pub = EventPublisher(log, capacity=2000).start()
    try:
        worst = 0.0
        for i in range(1000):
            env = envelope(i)
            t0 = time.perf_counter()
            pub.publish(env)
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.05
    finally:
        release.set()
        pub.close(10)
        log.close()


async def test_aflush_does_not_block_the_event_loop(local: LocalLog) -> None:
    pub = EventPublisher(local, linger_s=0.05).start()
    for i in range(100):
        pub.publish(envelope(i))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    assert await pub.aflush(10)
    task.cancel()
    pub.close(5)
    assert pub.pending == 0
    assert ticks > 0


# ---------------------------------------------------------------------------------------------
# Schema evolution: unknown fields survive a parse/serialize round trip and the bus.


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _VarintBytes(number << 3 | wire_type) + payload


def _newer_producer_bytes() -> bytes:
    """An envelope as a producer with a newer events.proto would write it: an unknown field
    inside PredictionEvent (200, a string) and one on the envelope (9, a varint)."""
    env = envelope(42, key="req-42")
    inner = env.prediction.SerializeToString() + _field(200, 2, _VarintBytes(6) + b"future")
    env.ClearField("prediction")
    env.key = "req-42"
    env.publish_time.FromNanoseconds(1_750_000_000_123_456_789)
    head = env.SerializeToString()  # fields 1-3 come before field 10 in canonical order
    return head + _field(10, 2, _VarintBytes(len(inner)) + inner) + _field(9, 0, _VarintBytes(7))


def test_unknown_fields_are_preserved_byte_for_byte() -> None:
    data = _newer_producer_bytes()
    parsed = events_pb2.EventEnvelope.FromString(data)
    assert parsed.prediction.request_id == "req-42"
    assert parsed.SerializeToString() == data


def test_unknown_fields_travel_through_the_publisher(local: LocalLog) -> None:
    data = _newer_producer_bytes()
    pub = EventPublisher(local).start()
    pub.publish(events_pb2.EventEnvelope.FromString(data))  # key and publish_time already set
    pub.close(5)
    (got,) = consume_all(local, KIND_TOPICS["prediction"], 1)
    assert got.value == data  # the bytes a newer producer wrote, unknown fields included


def test_publish_all_buffers_every_event_or_none(local: LocalLog) -> None:
    registry = CollectorRegistry()
    pub = EventPublisher(local, capacity=5, registry=registry)  # not started: nothing drains
    pub.publish_all([envelope(i) for i in range(3)])
    assert pub.pending == 3
    assert pub.has_room(2) and not pub.has_room(3)
    with pytest.raises(ResourceExhausted, match=r"3 more do not fit"):
        pub.publish_all([envelope(10 + i) for i in range(3)])
    assert pub.pending == 3  # none of the three was buffered
    assert sample(registry, "llmops_events_rejected_total", topic=KIND_TOPICS["prediction"]) == 3
    bad = envelope(20)
    bad.prediction.event_id = ""
    with pytest.raises(InvalidArgument, match=r"prediction\.event_id"):
        pub.publish_all([envelope(21), bad])  # one invalid event: the valid one is not kept
    assert pub.pending == 3
    pub.publish_all([])
    pub.start()
    assert pub.flush(10)
    pub.close()
    assert len(consume_all(local, KIND_TOPICS["prediction"], 3)) == 3


async def test_publish_durable_returns_once_the_log_holds_the_events(local: LocalLog) -> None:
    flaky = FlakyLog(local)
    # a long linger: the durable waiter must make the sender go at once
    with EventPublisher(flaky, retry_backoff=FAST, linger_s=5.0) as pub:
        batch = [envelope(i) for i in range(3)]
        began = time.monotonic()
        await pub.publish_durable(batch, timeout_s=5)
        assert time.monotonic() - began < 2.0 and pub.pending == 0
        got = consume_all(local, KIND_TOPICS["prediction"], 3)
        assert sorted(ids(got)) == sorted(e.prediction.event_id for e in batch)
        flaky.down.set()  # the log is down: accepted, not durable, still delivered later
        late = envelope(9)
        with pytest.raises(TimeoutError):
            await pub.publish_durable([late], timeout_s=0.1)
        assert pub.pending == 1
        flaky.down.clear()
        assert await pub.aflush(5)
        assert late.prediction.event_id in ids(consume_all(local, KIND_TOPICS["prediction"], 4))
        await pub.publish_durable([], timeout_s=0.1)  # nothing to wait for


def test_an_event_larger_than_a_log_record_is_refused_and_the_rest_flows(local: LocalLog) -> None:
    registry = CollectorRegistry()
    with EventPublisher(local, registry=registry, max_record_bytes=10_000) as pub:
        pub.publish(envelope(1))
        huge = envelope(2)
        huge.prediction.route = "x" * 20_000  # e.g. a 20 KB field nobody capped
        with pytest.raises(InvalidArgument, match=r"prediction: 20,\d{3} bytes serialized.*10,000"):
            pub.publish(huge)
        with pytest.raises(InvalidArgument):
            pub.publish_all([envelope(3), huge])  # all or none: the good one is not kept
        pub.publish(envelope(4))
        assert pub.flush(10)  # nothing stuck at the head of the queue
    topic = KIND_TOPICS["prediction"]
    assert len(consume_all(local, topic, 2)) == 2
    assert sample(registry, "llmops_events_oversized_total", topic=topic) == 2
    default = EventPublisher(local)
    assert default.max_record_bytes == 1_000_000


async def test_an_rpc_answers_once_its_audit_record_is_durable(tmp_path: Path) -> None:
    """events.durable: the runtime answers a call that published an audit record only once
    the log holds it; a log that stays down turns the answer into DEADLINE_EXCEEDED
    (NotDurable) instead of a success, and the record still arrives later. A prediction
    (not a durable kind) answers from the buffer."""
    import grpc

    from llmops.events.port import ServiceEvents
    from llmops.server.interceptor import RpcMetrics, RuntimeInterceptor, ServerState

    log = FlakyLog(LocalLog(tmp_path / "events"))
    publisher = EventPublisher(log, retry_backoff=FAST).start()
    port = ServiceEvents("svc", lambda: publisher, durable=frozenset({"audit"}),
                         durable_timeout_s=1.0)  # fmt: skip

    async def audited(request: bytes, context: Any) -> bytes:
        port.publish(port.audit_event("thing.change", "thing", request.decode()))
        return b"ok"

    async def predicted(request: bytes, context: Any) -> bytes:
        port.publish(envelope(1))
        return b"ok"

    ident = (lambda b: b, lambda b: b)
    handlers = {
        "Audited": grpc.unary_unary_rpc_method_handler(audited, *ident),
        "Predicted": grpc.unary_unary_rpc_method_handler(predicted, *ident),
    }
    runtime = RuntimeInterceptor("t.S", RpcMetrics(CollectorRegistry()), ServerState())
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (runtime.wrap_generic_handler(grpc.method_handlers_generic_handler("t.S", handlers)),)
    )
    bound = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            audited_call = channel.unary_unary("/t.S/Audited", *ident)
            assert await audited_call(b"a", timeout=5) == b"ok"
            assert publisher.pending == 0  # it answered after the log took the record
            log.down_message = "[Errno 28] No space left on device (kafka://app:s3cret@b1:9092)"
            log.down.set()
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await audited_call(b"b", timeout=5)
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            details = late.value.details() or ""
            assert "did not make them durable within 1 s" in details
            # ...and why: what the log answered to the last send, credentials masked
            assert "the log refuses appends: LogUnavailable: [Errno 28] No space left" in details
            assert "s3cret" not in details and "kafka://app:***@b1:9092" in details
            assert publisher.pending == 1  # accepted, kept, not lost
            predicted_call = channel.unary_unary("/t.S/Predicted", *ident)
            assert await predicted_call(b"", timeout=5) == b"ok"  # from the buffer
            log.down.clear()
            assert await asyncio.to_thread(publisher.flush, 10.0)
            assert publisher.last_error is None  # the log took a send again
    finally:
        await server.stop(None)
        publisher.close()
    got = consume_all(log.inner, KIND_TOPICS["audit"], 2)
    assert len(got) == 2
