"""KafkaLog specifics against the real broker, with each client (librdkafka, the default,
and kafka-python): fast failure on a dead address, producer settings (idempotence,
compression), the resumed retry that avoids duplicates, and a record refused for good."""

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


@pytest.fixture(params=["confluent", "kafka-python"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_constructing_connects_nothing_and_a_dead_broker_fails_fast(client: str) -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    log = KafkaLog(
        f"127.0.0.1:{port}", connect_timeout_s=1.0, producer_client=client, consumer_client=client
    )
    assert time.monotonic() - started < 0.1
    with pytest.raises(LogUnavailable, match="cannot reach"):
        log.send([Record("t", b"k", b"v")], timeout_s=5)
    with pytest.raises(LogUnavailable, match="cannot start a consumer"):
        log.consumer("g", ["t"])
    assert time.monotonic() - started < 5
    log.close()


def test_producer_is_idempotent_acks_all_and_compressed(
    kafka_bootstrap: str, topic: str, client: str
) -> None:
    log = KafkaLog(kafka_bootstrap, producer_client=client)
    try:
        log.send([Record(topic, b"k", b"v" * 1000)], timeout_s=30)
        config = log._producer.config  # what the client itself was given
        if client == "confluent":
            assert config["enable.idempotence"] is True and config["acks"] == "all"
            assert config["compression.type"] == default_compression()
            assert config["partitioner"] == "murmur2_random"  # Kafka's default, by key
        else:
            assert config["enable_idempotence"] is True and config["acks"] == -1
            assert config["compression_type"] == default_compression()
        assert log.producer_settings == {
            "client": client, "acks": "all", "idempotent": True,
            "compression": default_compression(),
        }  # fmt: skip
    finally:
        log.close()


def test_retrying_the_same_batch_sends_only_what_was_not_acknowledged(
    kafka_bootstrap: str, topic: str, client: str
) -> None:
    log = KafkaLog(kafka_bootstrap, producer_client=client, consumer_client=client)
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


def _partition(key: bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives ``key``."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_a_record_the_broker_refuses_for_good_is_dead_lettered_and_the_rest_appended(
    kafka_bootstrap: str, client: str
) -> None:
    """A topic whose records may be 2 KB at most and one 20 KB record (incompressible):
    the broker answers MESSAGE_TOO_LARGE for its batch alone. The send names that record
    (RecordsRefused) after the others of the send are appended; through the publisher's
    sender it lands in llmops.dlq.v1 with where and why; the producer stays usable."""
    import os

    from kafka.admin import KafkaAdminClient, NewTopic
    from prometheus_client import CollectorRegistry

    from llmops.events.base import RecordsRefused
    from llmops.events.publisher import DeadLettering, PublisherMetrics
    from llmops.events.topics import DLQ_TOPIC

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="llmops-test-refused")
    name = f"test.refused.{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, 2, 1, topic_configs={"max.message.bytes": "2048"})])
    admin.wait_for_topics([name], timeout_ms=30000)
    small_key = next(k for k in (f"s{i}".encode() for i in range(100)) if _partition(k, 2) == 0)
    big_key = next(k for k in (f"b{i}".encode() for i in range(100)) if _partition(k, 2) == 1)
    big = os.urandom(20_000)
    run = uuid.uuid4().hex.encode()
    records = [
        Record(name, small_key, b"first-" + run),
        Record(name, big_key, big),
        Record(name, small_key, b"second-" + run),
    ]
    log = KafkaLog(kafka_bootstrap, producer_client=client, consumer_client=client)
    try:
        with pytest.raises(RecordsRefused) as refused:
            log.send(records, timeout_s=30)
        assert list(refused.value.refused) == [1]
        assert "MessageSizeTooLarge" in refused.value.refused[1]
        sender = DeadLettering(log, PublisherMetrics(CollectorRegistry(), "kafka"))
        sender.send([Record(name, big_key, big), Record(name, big_key, b"third-" + run)], 30)
        log.send([Record(name, big_key, b"fourth-" + run)], timeout_s=30)  # still usable

        def read(topic: str, want: int) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
            consumer = log.consumer(f"g-{uuid.uuid4().hex[:8]}", [topic])
            got: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got += [(r.key, r.value, dict(r.headers)) for r in consumer.poll(1000, 0.5)]
                if sum(run in v or v == big for _, v, _ in got) >= want:
                    break
            consumer.close()
            return [g for g in got if run in g[1] or g[1] == big]

        values = sorted(v for _, v, _ in read(name, 4))
        assert values == sorted(p + run for p in (b"first-", b"second-", b"third-", b"fourth-"))
        letters = [g for g in read(DLQ_TOPIC, 1) if g[1] == big]
        assert len(letters) == 1
        key, _, headers = letters[0]
        assert key == big_key and headers["dlq.topic"] == name.encode()
        assert headers["dlq.stage"] == b"publish" and headers["dlq.reason"]
    finally:
        log.close()
        admin.delete_topics([name])
        admin.close()
