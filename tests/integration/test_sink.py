"""Sinks on real components: the local event log and chdb with the full schema.

Counts are read the way users read them: from the rollups (``predictions_1m``) and from raw
rows, and must be exact after replays, insert failures and dead letters.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.events.base import Record
from llmops.events.local_log import LocalLog
from llmops.events.publisher import EventPublisher
from llmops.events.synthetic import prediction_envelope
from llmops.events.topics import DLQ_TOPIC
from llmops.sink.runner import SinkThreads, build_sinks
from llmops.sink.worker import Sink
from llmops.v1 import events_pb2

pytestmark = pytest.mark.infra

TOPIC = "test.sink.predictions"
KINDS = {TOPIC: "prediction"}


@pytest.fixture
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    database = f"it_sink_{uuid.uuid4().hex[:8]}"
    ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
    s = ChdbStore(chdb_session, database=database)
    apply_migrations(s)
    yield s
    s.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[LocalLog]:
    log = LocalLog(tmp_path / "events", partitions={TOPIC: 3, DLQ_TOPIC: 1}, fsync=False)
    log.create_topic(TOPIC, 3)
    log.create_topic(DLQ_TOPIC, 1)
    yield log
    log.close()


def publish(event_log: LocalLog, n: int, seed: int = 1) -> list[str]:
    """Publish ``n`` predictions; their request ids (unique, as predictions store no event_id)."""
    rng = random.Random(seed)
    ids: list[str] = []
    with EventPublisher(event_log, topics={"prediction": TOPIC}, max_batch=2000).start() as pub:
        now = time.time_ns()
        for i in range(n):
            env = prediction_envelope(rng, event_time_ns=now - i * 1_000_000)
            pub.publish(env)
            ids.append(env.prediction.request_id)
        assert pub.flush(30)
    return ids


def rollup_count(store: ChdbStore) -> int:
    rows = store.query("SELECT sum(requests) AS n FROM predictions_1m")
    return int(rows[0]["n"] or 0)


def raw_count(store: ChdbStore) -> tuple[int, int]:
    row = store.query("SELECT count() AS n, uniqExact(request_id) AS u FROM predictions")[0]
    return int(row["n"]), int(row["u"])


@pytest.fixture(autouse=True, params=["protobuf", "python"])
def rows_from(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both paths from events to rows (llmops.sink.convert): each
    guarantee must hold whichever one a deployment uses."""
    global ROWS_FROM
    ROWS_FROM = request.param
    yield request.param
    ROWS_FROM = "protobuf"


ROWS_FROM = "protobuf"


def sink_for(event_log: LocalLog, store: Any, **kw: Any) -> Sink:
    (sink,) = build_sinks(event_log, store, topic_kinds=KINDS, rows_from=ROWS_FROM, **kw)
    return sink


def fallbacks(sink: Sink) -> dict[str, float]:
    """Batches the bulk path handed to the per-event path, by reason."""
    samples = sink.metrics.bulk_fallbacks.collect()[0].samples
    return {s.labels["reason"]: s.value for s in samples if s.name.endswith("_total")}


def drain(sink: Sink, until: Callable[[], bool], timeout_s: float = 60) -> None:
    """Run ``sink`` in a thread until ``until()`` holds, then stop it."""
    threads = SinkThreads([sink]).start()
    deadline = time.monotonic() + timeout_s
    try:
        while not until():
            assert time.monotonic() < deadline, "sink did not catch up in time"
            time.sleep(0.05)
    finally:
        threads.stop()


def test_events_land_once_in_raw_rows_and_rollups(event_log: LocalLog, store: ChdbStore) -> None:
    ids = publish(event_log, 5000)
    sink = sink_for(event_log, store, batch_rows=1000, flush_interval_s=0.2)
    drain(sink, lambda: raw_count(store)[0] >= 5000)
    assert raw_count(store) == (5000, 5000)
    assert rollup_count(store) == 5000
    stored = {str(r["request_id"]) for r in store.query("SELECT request_id FROM predictions")}
    assert stored == set(ids)
    consumer = event_log.consumer(sink.settings.group, [TOPIC])
    assert sum(consumer.committed((TOPIC, p)) or 0 for p in range(3)) == 5000
    consumer.close()
    if ROWS_FROM == "protobuf":  # every batch took the bulk path
        assert sink._bulk is not None
        assert fallbacks(sink) == {}


def test_payloads_are_stored_with_their_predictions(event_log: LocalLog, store: ChdbStore) -> None:
    """The bulk path decodes only the events the screen flags as carrying a payload."""
    rng = random.Random(4)
    now = time.time_ns()
    envelopes = [prediction_envelope(rng, event_time_ns=now - i * 1_000_000) for i in range(600)]
    for i, env in enumerate(envelopes[::7]):
        env.prediction.inputs["query"].string_value = f"breakfast {i}?"
        env.prediction.output.string_value = "yes"
    for env in envelopes:
        env.key = env.prediction.request_id
    event_log.send([Record(TOPIC, e.key.encode(), e.SerializeToString()) for e in envelopes], 5)
    sink = sink_for(event_log, store, batch_rows=250, flush_interval_s=0.1)
    drain(sink, lambda: raw_count(store)[0] >= 600)
    paid = {e.prediction.request_id for e in envelopes[::7]}
    rows = store.query("SELECT request_id, inputs, output FROM prediction_payloads")
    assert {r["request_id"] for r in rows} == paid and len(rows) == len(paid)
    assert {r["output"] for r in rows} == {'{"string_value":"yes"}'}
    assert {r["inputs"]["query"] for r in rows} == {
        f'{{"string_value":"breakfast {i}?"}}' for i in range(len(paid))
    }
    flagged = store.query("SELECT countIf(has_payload) AS n FROM predictions")[0]["n"]
    assert (raw_count(store), flagged) == ((600, 600), len(paid))


class CommitFailsOnce:
    """Wraps a consumer so its first commit dies as if the process crashed right then."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("crash between insert and commit")
        self.inner.commit(offsets)


def test_replay_after_crash_between_insert_and_commit_is_skipped(
    event_log: LocalLog, store: ChdbStore
) -> None:
    publish(event_log, 3000)
    sink = sink_for(event_log, store, batch_rows=5000, flush_interval_s=0.2)
    sink._consumer = CommitFailsOnce(event_log.consumer(sink.settings.group, [TOPIC]))
    with pytest.raises(RuntimeError, match="crash between insert and commit"):
        for _ in range(100):
            sink.step()
    sink._consumer.close()
    assert raw_count(store)[0] == 3000  # inserted, never committed

    restarted = sink_for(event_log, store, batch_rows=700, flush_interval_s=0.2)
    drain(restarted, lambda: restarted.committed_batches > 0 and not restarted_lag(restarted))
    assert raw_count(store) == (3000, 3000)
    assert rollup_count(store) == 3000
    skipped = restarted.metrics.skipped.labels("already_stored")._value.get()
    assert skipped == 3000


def restarted_lag(sink: Sink) -> int:
    consumer = sink._consumer
    if consumer is None:
        return 1
    tps = sorted(consumer.assignment())
    ends = consumer.end_offsets(tps)
    return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)


class FlakyStore:
    """The real store, with its first ``failures`` inserts failing like an outage."""

    def __init__(self, inner: ChdbStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _attempt(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            from llmops.clickhouse.base import ClickHouseUnavailable

            raise ClickHouseUnavailable("connection refused (injected outage)")

    def insert(self, table: str, columns: Any, *, dedup_token: str | None = None) -> int:
        self._attempt()
        return self.inner.insert(table, columns, dedup_token=dedup_token)

    def insert_protobuf(self, table: str, block: Any, *, dedup_token: str | None = None) -> int:
        self._attempt()
        return self.inner.insert_protobuf(table, block, dedup_token=dedup_token)


def test_clickhouse_outage_blocks_commit_then_recovers_exactly(
    event_log: LocalLog, store: ChdbStore
) -> None:
    publish(event_log, 2000)
    flaky = FlakyStore(store, failures=4)
    sink = sink_for(event_log, flaky, batch_rows=5000, flush_interval_s=0.1)
    sink.settings = type(sink.settings)(**{**_fields(sink.settings), "retry_initial_s": 0.05})
    drain(sink, lambda: raw_count(store)[0] >= 2000)
    assert flaky.attempts >= 5
    assert sink.metrics.insert_failures.labels("predictions")._value.get() == 4
    assert raw_count(store) == (2000, 2000)
    assert rollup_count(store) == 2000


def _fields(settings: Any) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__dataclass_fields__}


def test_malformed_records_go_to_the_dlq_with_a_reason(
    event_log: LocalLog, store: ChdbStore
) -> None:
    publish(event_log, 500)
    no_id = events_pb2.EventEnvelope()
    no_id.prediction.route = "search-summary"
    no_id.prediction.event_time.GetCurrentTime()
    wrong_kind = events_pb2.EventEnvelope()
    wrong_kind.audit.event_id = "a1"
    wrong_kind.audit.event_time.GetCurrentTime()
    bad = [
        Record(TOPIC, b"k1", b"\xff\xfenot protobuf at all"),
        Record(TOPIC, b"k2", no_id.SerializeToString()),
        Record(TOPIC, b"k3", wrong_kind.SerializeToString()),
    ]
    event_log.send(bad, timeout_s=5)
    publish(event_log, 500, seed=2)
    sink = sink_for(event_log, store, batch_rows=300, flush_interval_s=0.1)
    drain(sink, lambda: raw_count(store)[0] >= 1000)
    assert raw_count(store) == (1000, 1000)

    dlq = event_log.consumer("dlq-reader", [DLQ_TOPIC])
    letters = dlq.poll(100, 2.0)
    dlq.close()
    reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in letters)
    assert len(reasons) == 3
    assert any(r.startswith("not an EventEnvelope") for r in reasons)
    assert "prediction.event_id is empty" in reasons
    assert "a audit event on a topic of prediction events" in reasons
    assert {dict(r.headers)["dlq.topic"] for r in letters} == {TOPIC.encode()}
    assert {r.value for r in letters} == {b.value for b in bad}
    if ROWS_FROM == "protobuf":  # the batches holding them took the per-event path
        assert set(fallbacks(sink)) <= {"unparsed", "unusable"} and fallbacks(sink)


def test_producer_duplicates_are_dropped(event_log: LocalLog, store: ChdbStore) -> None:
    rng = random.Random(5)
    envs = [prediction_envelope(rng, event_time_ns=time.time_ns()) for _ in range(200)]
    for env in envs:
        env.key = env.prediction.request_id
    records = [Record(TOPIC, e.key.encode(), e.SerializeToString()) for e in envs]
    event_log.send(records + records[:50], timeout_s=5)  # a producer retry resent 50
    sink = sink_for(event_log, store, batch_rows=100, flush_interval_s=0.1)
    drain(sink, lambda: restarted_lag(sink) == 0 and sink.committed_batches > 0)
    assert raw_count(store) == (200, 200)
    assert rollup_count(store) == 200
    if ROWS_FROM == "protobuf":
        assert set(fallbacks(sink)) == {"duplicate_event_id"}


class CommitRefusedOnce(CommitFailsOnce):
    """The first commit is refused the way Kafka refuses one after a rebalance."""

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if not self.failed:
            from llmops.events.base import LogUnavailable

            self.failed = True
            raise LogUnavailable("commit failed: the group rebalanced")
        self.inner.commit(offsets)


def test_refused_commit_rewinds_and_skips_what_is_stored(
    event_log: LocalLog, store: ChdbStore
) -> None:
    publish(event_log, 1500)
    sink = sink_for(event_log, store, batch_rows=5000, flush_interval_s=0.1)
    sink._consumer = CommitRefusedOnce(event_log.consumer(sink.settings.group, [TOPIC]))
    for _ in range(200):  # no exception: the sink keeps going
        sink.step()
        if sink.committed_batches and not restarted_lag(sink):
            break
    assert sink._consumer.failed
    assert raw_count(store) == (1500, 1500)
    assert rollup_count(store) == 1500
    assert sink.metrics.skipped.labels("already_stored")._value.get() == 1500
    sink._consumer.close()


def test_a_refused_commit_with_the_next_batch_read_rewinds_both(
    event_log: LocalLog, store: ChdbStore
) -> None:
    """On the bulk path a batch's insert runs while the next batch is read: when its commit
    is then refused, what was read after it is rewound too, and all is stored once."""
    publish(event_log, 1500)
    sink = sink_for(event_log, store, batch_rows=300, flush_interval_s=0.05)
    sink._consumer = CommitRefusedOnce(event_log.consumer(sink.settings.group, [TOPIC]))
    overlapped = []  # an insert was in flight while the next batch was read and framed
    finish = sink._finish

    def watched(stop: Any, attempts: Any, later: Any = None) -> bool:
        overlapped.append(sink._inflight is not None and later is not None and len(later) > 0)
        return finish(stop, attempts, later)

    sink._finish = watched  # type: ignore[method-assign]
    for _ in range(500):
        sink.step()
        if sink.committed_batches and not restarted_lag(sink) and sink._inflight is None:
            break
    assert sink._consumer.failed
    assert any(overlapped) == (ROWS_FROM == "protobuf")
    assert raw_count(store) == (1500, 1500)
    assert rollup_count(store) == 1500
    assert sum(sink._consumer.committed((TOPIC, p)) or 0 for p in range(3)) == 1500
    sink._consumer.close()


class LogDownAtFirst:
    """The local log, unreachable for the first consumer, and the second one's first poll
    failing, the way a Kafka broker that is restarting answers."""

    def __init__(self, inner: LocalLog) -> None:
        self.inner = inner
        self.consumers = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def consumer(self, group: str, topics: Any) -> Any:
        from llmops.events.base import LogUnavailable

        self.consumers += 1
        if self.consumers == 1:
            raise LogUnavailable("connection refused (injected outage)")
        inner = self.inner.consumer(group, topics)
        return PollFailsOnce(inner) if self.consumers == 2 else inner


class PollFailsOnce(CommitFailsOnce):
    def poll(self, max_records: int, timeout_s: float) -> Any:
        if not self.failed:
            from llmops.events.base import LogUnavailable

            self.failed = True
            raise LogUnavailable("poll failed: the broker went away")
        return self.inner.poll(max_records, timeout_s)


def test_a_sink_stopped_by_an_error_is_restarted_and_loads_everything_once(
    event_log: LocalLog, store: ChdbStore
) -> None:
    publish(event_log, 1200)
    down = LogDownAtFirst(event_log)
    sink = sink_for(down, store, batch_rows=500, flush_interval_s=0.1)  # type: ignore[arg-type]
    sink.settings = type(sink.settings)(**{**_fields(sink.settings), "retry_initial_s": 0.05})
    drain(sink, lambda: raw_count(store)[0] >= 1200)
    assert down.consumers >= 3
    assert sink.metrics.restarts.labels(sink.settings.group)._value.get() == 2
    assert raw_count(store) == (1200, 1200)
    assert rollup_count(store) == 1200


def test_an_event_that_cannot_be_converted_goes_to_the_dlq_and_the_rest_is_stored(
    event_log: LocalLog, store: ChdbStore
) -> None:
    ids = publish(event_log, 400)
    rng = random.Random(5)
    poison = []
    for _ in range(2):  # decodes fine; the converter fails on it (a newer producer, a bug)
        envelope = prediction_envelope(rng, event_time_ns=time.time_ns())
        envelope.prediction.route = "poison"
        poison.append(envelope)
        event_log.send([Record(TOPIC, b"p", envelope.SerializeToString())], timeout_s=5)
    ids += publish(event_log, 400, seed=3)
    sink = sink_for(event_log, store, batch_rows=1000, flush_interval_s=0.1)
    # The per-event path (the bulk path converts nothing in Python: what it cannot store,
    # ClickHouse refuses, and the batch moves to this path; see the refusal tests).
    sink._bulk = None
    convert = sink._convert

    def converter(items: Any) -> Any:
        if any(item[3].prediction.route == "poison" for item in items):
            raise KeyError("route 'poison' has no column mapping")
        return convert(items)

    sink._convert = converter
    drain(sink, lambda: sink.committed_batches > 0 and not restarted_lag(sink))
    assert raw_count(store) == (800, 800)
    stored = {str(r["request_id"]) for r in store.query("SELECT request_id FROM predictions")}
    assert stored == set(ids)
    dlq = event_log.consumer("dlq-conversion", [DLQ_TOPIC])
    letters = dlq.poll(100, 2.0)
    dlq.close()
    assert sorted(r.value for r in letters) == sorted(e.SerializeToString() for e in poison)
    assert all(
        dict(r.headers)["dlq.reason"].startswith(b"cannot be converted to rows: KeyError")
        for r in letters
    )
    assert sink.metrics.dead_letters.labels(TOPIC)._value.get() == 2


def test_a_wiped_log_starting_over_is_not_taken_for_a_replay(
    tmp_path: Path, store: ChdbStore
) -> None:
    """The local log's directory is wiped (or a Kafka topic recreated): offsets start again
    at 0 while ClickHouse keeps the old log's rows, whose high-water marks lie above every
    new record. The sink must see that the rows are another log's — the row stored at the
    first record's position holds another event — and store the new records, not skip them."""

    def fresh_log() -> LocalLog:
        log = LocalLog(tmp_path / "events", partitions={TOPIC: 3, DLQ_TOPIC: 1}, fsync=False)
        log.create_topic(TOPIC, 3)
        log.create_topic(DLQ_TOPIC, 1)
        return log

    old = fresh_log()
    publish(old, 900, seed=1)
    drain(sink_for(old, store, flush_interval_s=0.2), lambda: raw_count(store)[0] == 900)
    old.close()
    shutil.rmtree(tmp_path / "events")

    new = fresh_log()
    try:
        publish(new, 300, seed=2)  # offsets 0..~100 per partition: under the old marks (~300)
        sink = sink_for(new, store, flush_interval_s=0.2)
        drain(sink, lambda: raw_count(store)[0] >= 1200, timeout_s=30)
        assert raw_count(store) == (1200, 1200)
        assert rollup_count(store) == 1200
        assert sink.metrics.skipped.labels("already_stored")._value.get() == 0
    finally:
        new.close()


def _publish_with_routes(event_log: LocalLog, routes: list[str], seed: int) -> None:
    rng = random.Random(seed)
    now = time.time_ns()
    with EventPublisher(event_log, topics={"prediction": TOPIC}, max_batch=2000).start() as pub:
        for i, route in enumerate(routes):
            env = prediction_envelope(rng, event_time_ns=now - i * 1_000_000)
            env.prediction.route = route
            pub.publish(env)
        assert pub.flush(30)


def _dead_letters(event_log: LocalLog) -> list[Any]:
    dlq = event_log.consumer(f"dlq-reader-{uuid.uuid4().hex[:6]}", [DLQ_TOPIC])
    try:
        return dlq.poll(1000, 1.0)
    finally:
        dlq.close()


def test_rows_clickhouse_refuses_go_to_the_dlq_and_the_rest_is_stored(
    event_log: LocalLog, store: ChdbStore
) -> None:
    """A batch ClickHouse refuses for good (here a CHECK constraint, as a value its column
    cannot hold would) fails on every retry: before, it stopped the partition forever. Now
    its refused events go to the DLQ with ClickHouse's reason and the rest is stored."""
    store.execute("ALTER TABLE predictions ADD CONSTRAINT no_poison CHECK route != 'poison'")
    routes = ["search-summary"] * 1000
    for i in (3, 250, 251, 600, 998):
        routes[i] = "poison"
    _publish_with_routes(event_log, routes, seed=11)
    sink = sink_for(event_log, store, batch_rows=5000, flush_interval_s=0.2)
    drain(sink, lambda: sink.committed_batches > 0 and not restarted_lag(sink))
    assert raw_count(store)[0] == 995
    assert store.query("SELECT count() AS n FROM predictions WHERE route = 'poison'")[0]["n"] == 0
    letters = _dead_letters(event_log)
    assert len(letters) == 5
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["dlq.reason"].startswith(b"ClickHouse refused its row")
        assert b"no_poison" in headers["dlq.reason"]
        env = events_pb2.EventEnvelope.FromString(letter.value)
        assert env.prediction.route == "poison"
    assert sink.metrics.refused_rows.labels(sink.settings.group)._value.get() == 5
    assert rollup_count(store) == 995  # the rollups saw no refused row either


def test_a_table_that_refuses_every_row_is_retried_not_dead_lettered(
    event_log: LocalLog, store: ChdbStore
) -> None:
    """When nothing of a batch can be stored the table is at fault, not the data: nothing
    goes to the DLQ, nothing is committed, and the batch lands once the table is fixed."""
    store.execute("ALTER TABLE predictions ADD CONSTRAINT broken CHECK route = 'never'")
    publish(event_log, 300)
    sink = sink_for(event_log, store, batch_rows=5000, flush_interval_s=0.1)
    sink.settings = type(sink.settings)(**{**_fields(sink.settings), "retry_initial_s": 0.05})
    threads = SinkThreads([sink]).start()
    try:
        deadline = time.monotonic() + 30
        while sink.metrics.insert_failures.labels("predictions")._value.get() < 3:
            assert time.monotonic() < deadline, "the sink did not retry"
            time.sleep(0.05)
        assert _dead_letters(event_log) == [] and sink.committed_batches == 0
        store.execute("ALTER TABLE predictions DROP CONSTRAINT broken")
        while raw_count(store)[0] < 300:
            assert time.monotonic() < deadline + 30, "the batch did not land"
            time.sleep(0.05)
    finally:
        threads.stop()
    assert raw_count(store) == (300, 300)
    assert rollup_count(store) == 300
    assert _dead_letters(event_log) == []


def test_a_lone_refused_event_is_dead_lettered_after_a_few_tries(
    event_log: LocalLog, store: ChdbStore
) -> None:
    """On a quiet topic a refused event may be a batch of its own, where a bad row and a bad
    table look alike: it is retried like an outage, then dead-lettered, and the partition
    moves on."""
    store.execute("ALTER TABLE predictions ADD CONSTRAINT no_poison CHECK route != 'poison'")
    _publish_with_routes(event_log, ["poison"], seed=12)
    sink = sink_for(event_log, store, batch_rows=5000, flush_interval_s=0.05)
    sink.settings = type(sink.settings)(**{**_fields(sink.settings), "retry_initial_s": 0.01})
    drain(sink, lambda: sink.committed_batches > 0, timeout_s=30)
    letters = _dead_letters(event_log)
    assert len(letters) == 1 and b"no_poison" in dict(letters[0].headers)["dlq.reason"]
    assert sink.metrics.insert_failures.labels("predictions")._value.get() >= 5
    _publish_with_routes(event_log, ["search-summary"] * 10, seed=13)
    again = sink_for(event_log, store, flush_interval_s=0.05)
    drain(again, lambda: raw_count(store)[0] >= 10, timeout_s=30)
    assert raw_count(store) == (10, 10)
