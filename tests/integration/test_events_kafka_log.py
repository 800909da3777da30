"""KafkaLog specifics against the real broker: fast failure on a dead address, producer
settings (idempotence, compression), and the resumed retry that avoids duplicates."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from llmops.events.base import LogUnavailable, Record
from llmops.events.kafka_log import KafkaLog, default_compression
from tests.support import free_ports

pytestmark = pytest.mark.infra


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="llmops-test-kafkalog")
    name = f"test.kafkalog.{uuid.uuid4().hex[:10]}"
    admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1}})
    admin.wait_for_topics([name], timeout_ms=30000)
    try:
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


def test_constructing_connects_nothing_and_a_dead_broker_fails_fast() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    log = KafkaLog(f"127.0.0.1:{port}", connect_timeout_s=1.0)
    assert time.monotonic() - started < 0.1
    with pytest.raises(LogUnavailable, match="cannot reach"):
        log.send([Record("t", b"k", b"v")], timeout_s=5)
    with pytest.raises(LogUnavailable, match="cannot start a consumer"):
        log.consumer("g", ["t"])
    assert time.monotonic() - started < 5
    log.close()


def test_producer_is_idempotent_acks_all_and_compressed(kafka_bootstrap: str, topic: str) -> None:
    log = KafkaLog(kafka_bootstrap)
    try:
        log.send([Record(topic, b"k", b"v" * 1000)], timeout_s=30)
        producer = log._producer
        assert producer.config["enable_idempotence"] is True
        assert producer.config["acks"] == -1
        assert producer.config["compression_type"] == default_compression()
    finally:
        log.close()


def test_retrying_the_same_batch_sends_only_what_was_not_acknowledged(
    kafka_bootstrap: str, topic: str
) -> None:
    log = KafkaLog(kafka_bootstrap)
    batch = [Record(topic, f"k{i % 3}".encode(), str(i).encode()) for i in range(300)]
    try:
        log.send(batch[:1], timeout_s=30)  # warm: producer and metadata ready
        with pytest.raises(LogUnavailable):
            log.send(batch, timeout_s=0.0)  # gives up before the acks arrive
        log.send(batch, timeout_s=30)  # the retry: waits for the first attempt's outcome
        consumer = log.consumer(f"g-{uuid.uuid4().hex[:8]}", [topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 301 and time.monotonic() < deadline:
            got += [r.value for r in consumer.poll(1000, 0.5)]
        got += [r.value for r in consumer.poll(1000, 0.5)]
        consumer.close()
    finally:
        log.close()
    assert len(got) == 301  # 1 warm-up record + the batch once, no second copy
    assert sorted(set(got)) == sorted({str(i).encode() for i in range(300)})
