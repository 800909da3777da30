"""Fault test: the broker is stopped (SIGTERM) — and, in a second run, killed with SIGKILL —
while 10,000 events are published, then restarted. A third run stops it with a publisher
whose buffer (2,000) is far smaller than what arrives while the broker is away: the spill
(``state_dir/spill`` in a real deployment) takes the rest and is replayed afterwards.

Nothing accepted may be lost: a fresh consumer group must find every event_id. Duplicates are
allowed in the log (at-least-once) and reported; in ClickHouse, after the sink, the counts
(raw rows and the rollups) must be exactly 10,000. The broker is left running for the tests
after this one.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.events.kafka_log import KafkaLog
from llmops.events.publisher import EventPublisher, RetryBackoff
from llmops.events.spill import SpillLog
from llmops.events.synthetic import prediction_envelope
from llmops.sink.runner import SinkThreads, build_sinks
from llmops.v1 import events_pb2
from tests.infra import REPO_ROOT, _output, _script, probe_kafka

pytestmark = [pytest.mark.infra, pytest.mark.timeout(240)]

TOTAL = 10_000


@pytest.fixture
def fault_topic(kafka_bootstrap: str) -> Iterator[str]:
    from kafka.admin import KafkaAdminClient

    name = f"test.fault.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="llmops-test-fault")
    admin.create_topics({name: {"num_partitions": 6, "replication_factor": 1}})
    admin.wait_for_topics([name], timeout_ms=30000)
    admin.close()
    try:
        yield name
    finally:
        if not probe_kafka():  # whatever happened, later tests get a running broker
            _script("kafka", "start", 180)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="llmops-test-fault")
        admin.delete_topics([name])
        admin.close()


def _publish(pub: EventPublisher, rng: random.Random, n: int, ids: list[str]) -> None:
    for _ in range(n):
        env = prediction_envelope(rng, event_time_ns=time.time_ns())
        deadline = time.monotonic() + 5  # room comes back as the spiller spills
        while not pub.has_room(1):
            assert time.monotonic() < deadline, f"no room: {pub.pending} waiting"
            time.sleep(0.005)
        pub.publish(env)
        ids.append(env.prediction.event_id)
        if len(ids) % 100 == 0:
            time.sleep(0.01)  # a steady stream, not one burst


def _consume_ids(bootstrap: str, topic: str, want: int, timeout_s: float) -> list[str]:
    consumer = KafkaLog(bootstrap).consumer(f"g-fault-{uuid.uuid4().hex[:8]}", [topic])
    out: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(5000, 1.0)
            out += [events_pb2.EventEnvelope.FromString(r.value).prediction.event_id for r in batch]
            if len(set(out)) >= want and not batch:
                break
    finally:
        consumer.close()
    return out


def _kill_broker() -> None:
    """SIGKILL the broker, as an OOM kill or a node loss would: no clean shutdown."""
    local = Path(os.environ.get("LLMOPS_LOCAL_DIR") or REPO_ROOT / ".llmops" / "local")
    pid = int((local / "kafka" / "run" / "kafka.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while probe_kafka():
        assert time.monotonic() < deadline, "the broker survived SIGKILL"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["stopped", "killed", "stopped-spilling"])
def test_broker_outage_while_publishing_loses_nothing(
    kafka_bootstrap: str, fault_topic: str, chdb_session: Any, how: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    log = KafkaLog(kafka_bootstrap, connect_timeout_s=2, request_timeout_s=5)
    spill = SpillLog(tmp_path / "spill") if how.endswith("spilling") else None
    pub = EventPublisher(
        log,
        capacity=2000 if spill else 2 * TOTAL,
        max_batch=500,
        send_timeout_s=3,
        retry_backoff=RetryBackoff(0.1, 1.0),
        registry=registry,
        topics={"prediction": fault_topic},
        overflow=spill,
        spill_retry_s=0.5,
    ).start()
    rng, ids = random.Random(11), []
    try:
        _publish(pub, rng, 3000, ids)  # broker up
        assert pub.flush(30)

        stopper = threading.Thread(
            target=_kill_broker if how == "killed" else (lambda: _script("kafka", "stop", 120))
        )
        stopper.start()
        _publish(pub, rng, 4000, ids)  # while the broker shuts down
        stopper.join(130)
        assert not probe_kafka(), "the broker did not stop"
        _publish(pub, rng, TOTAL - 7000, ids)  # broker down: everything waits in the buffer
        time.sleep(6)  # longer than request_timeout_s: in-flight produce requests time out
        failures = registry.get_sample_value(
            "llmops_events_send_failures_total", {"backend": "kafka"}
        )
        assert failures and failures > 0
        spilled = registry.get_sample_value("llmops_events_spilled_total", {"reason": "overload"})
        if spill is None:
            assert pub.pending > 0 and not spilled
        else:  # more arrived than the buffer holds: the spill took them
            assert spilled and spilled >= 7000 - 2000, spilled
            assert (
                registry.get_sample_value("llmops_events_rejected_total", {"topic": fault_topic})
                == 0
            )

        start = _script("kafka", "start", 180)
        assert start.returncode == 0, _output(start)
        assert pub.flush(120), f"{pub.pending} events still pending after the restart"
        deadline = time.monotonic() + 120
        while spill is not None and spill.directory.exists():  # replayed, then deleted
            assert time.monotonic() < deadline, "the spill was not replayed"
            time.sleep(0.2)
        pub.close(10)
    finally:
        log.close()

    got = _consume_ids(kafka_bootstrap, fault_topic, TOTAL, timeout_s=90)
    counts = Counter(got)
    duplicates = sum(counts.values()) - len(counts)
    print(f"\nfault test ({how}): {len(counts)} distinct of {TOTAL}, {duplicates} duplicates")
    assert set(counts) == set(ids)
    assert len(counts) == TOTAL

    # ...and the sink loads them into ClickHouse exactly once, as the rollups count them.
    store = ChdbStore(chdb_session)
    database = f"it_fault_{uuid.uuid4().hex[:8]}"
    store.execute(f"CREATE DATABASE {database}")
    store = ChdbStore(chdb_session, database=database)
    apply_migrations(store)
    sink_log = KafkaLog(kafka_bootstrap)
    (sink,) = build_sinks(
        sink_log,
        store,
        topic_kinds={fault_topic: "prediction"},
        batch_rows=4000,
        group_prefix=f"test-sink-{uuid.uuid4().hex[:8]}.",
    )
    threads = SinkThreads([sink]).start()
    deadline = time.monotonic() + 90
    try:
        while _rollup_requests(store) < TOTAL and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        threads.stop()
        sink_log.close()
    raw = store.query("SELECT count() AS n, uniqExact(request_id) AS u FROM predictions")[0]
    assert (int(raw["n"]), int(raw["u"])) == (TOTAL, TOTAL)
    assert _rollup_requests(store) == TOTAL
    store.execute(f"DROP DATABASE {database}")


def _rollup_requests(store: ChdbStore) -> int:
    return int(store.query("SELECT sum(requests) AS n FROM predictions_1m")[0]["n"] or 0)
