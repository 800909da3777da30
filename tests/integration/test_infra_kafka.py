"""Kafka 4.4 (KRaft, jars from Maven Central) started by deploy/local/kafka.sh."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections import defaultdict
from types import ModuleType

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from tests.infra import REPO_ROOT

pytestmark = pytest.mark.infra

SPEC_PATH = REPO_ROOT / "deploy" / "kafka" / "topics.yaml"
EXPECTED_TOPICS = {
    "llmops.predictions.v1",
    "llmops.feedback.v1",
    "llmops.exposures.v1",
    "llmops.guardrail-decisions.v1",
    "llmops.audit.v1",
    "llmops.audit.chained.v1",
    "llmops.dlq.v1",
}


def _kafka_topics() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "llmops_kafka_topics", REPO_ROOT / "deploy" / "local" / "kafka_topics.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def admin(kafka_bootstrap: str):
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="llmops-test-infra")
    yield client
    client.close()


def test_kraft_single_node(admin: KafkaAdminClient) -> None:
    cluster = admin.describe_cluster()
    assert [b["broker_id"] for b in cluster["brokers"]] == [1]
    assert cluster["controller_id"] == 1
    quorum = admin.describe_metadata_quorum()  # KRaft-only API
    assert quorum is not None


def test_topics_from_spec_exist(admin: KafkaAdminClient) -> None:
    kt = _kafka_topics()
    spec = kt.load_spec(SPEC_PATH)
    assert {t.name for t in spec.topics} == EXPECTED_TOPICS
    assert set(admin.list_topics()) >= EXPECTED_TOPICS

    described = {t["name"]: t for t in admin.describe_topics(sorted(EXPECTED_TOPICS))}
    configs = kt._flatten_configs(
        admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in sorted(EXPECTED_TOPICS)],
            config_filter="all",
        )
    )
    for t in spec.topics:
        want = kt.effective(t, brokers=1, max_partitions=spec.local_max_partitions)
        parts = described[t.name]["partitions"]
        assert len(parts) >= want.partitions, t.name
        assert all(p["leader_id"] == 1 for p in parts), t.name
        for key in ("retention.ms", "cleanup.policy", "compression.type", "min.insync.replicas"):
            assert configs[t.name][key] == want.configs[key], (t.name, key)
    assert configs["llmops.audit.v1"]["retention.ms"] == "31536000000"


def test_produce_and_consume_keeps_per_key_order(
    kafka_bootstrap: str, admin: KafkaAdminClient
) -> None:
    topic = f"test.infra.{uuid.uuid4().hex[:12]}"
    group = f"test-infra-{uuid.uuid4().hex[:12]}"
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}})
    admin.wait_for_topics([topic], timeout_ms=30000)
    keys = [f"request-{i}" for i in range(4)]
    per_key = 25
    try:
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type="gzip",
        )
        try:
            futures = [
                (key, producer.send(topic, key=key.encode(), value=f"{key}:{seq}".encode()))
                for seq in range(per_key)
                for key in keys
            ]
            producer.flush(timeout=30)
            partition_of: dict[str, set[int]] = defaultdict(set)
            for key, fut in futures:
                md = fut.get(timeout=10)
                partition_of[key].add(md.partition)
        finally:
            producer.close(timeout=10)
        # One key -> one partition (the ordering guarantee topics.yaml relies on).
        assert all(len(p) == 1 for p in partition_of.values()), partition_of

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            seen: dict[str, list[int]] = defaultdict(list)
            total, deadline = 0, time.monotonic() + 60
            while total < len(keys) * per_key and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=1000).items():
                    for r in records:
                        k, seq = r.value.decode().rsplit(":", 1)
                        assert k == r.key.decode()
                        assert tp.partition in partition_of[k]
                        seen[k].append(int(seq))
                        total += 1
            assert total == len(keys) * per_key
            for key in keys:
                assert seen[key] == list(range(per_key)), key  # in order, no duplicates

            consumer.commit()
            parts = [TopicPartition(topic, p) for p in range(3)]
            ends = consumer.end_offsets(parts)
            assert sum(ends.values()) == len(keys) * per_key
            for tp in parts:
                assert consumer.committed(tp) == ends[tp]
        finally:
            consumer.close()

        # The broker kept the group's offsets.
        offsets = admin.list_group_offsets({group: None})[group]
        assert sum(o.offset for o in offsets.values()) == len(keys) * per_key
        admin.delete_groups([group])
    finally:
        admin.delete_topics([topic])
