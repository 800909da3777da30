"""Topic constants agree with deploy/kafka/topics.yaml; the partitioner agrees with Kafka's."""

from __future__ import annotations

import os
import random
import uuid

import pytest

from llmops.events import topics
from llmops.events.ids import uuid7
from llmops.events.partitioner import murmur2, partition_for, partitions_for
from llmops.v1 import events_pb2


def test_kind_topics_match_the_spec() -> None:
    spec = topics.load_spec()
    by_event = {t.event: t for t in spec.topics}
    for kind, topic in topics.KIND_TOPICS.items():
        assert by_event[topics.KIND_EVENTS[kind]].name == topic
    names = {t.name for t in spec.topics}
    assert topics.DLQ_TOPIC in names
    assert set(topics.LOCAL_PARTITIONS) == names
    assert all(n == spec.local_max_partitions for n in topics.LOCAL_PARTITIONS.values())
    for t in spec.topics:
        assert topics.RETENTION_MS[t.name] == int(t.configs["retention.ms"]), t.name


def test_every_event_kind_of_the_envelope_has_a_topic() -> None:
    oneof = events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["event"]
    assert {f.name for f in oneof.fields} == set(topics.KIND_TOPICS)


def test_spec_errors_name_the_entry(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    bad = Path(tmp_path) / "t.yaml"
    bad.write_text("topics:\n  - name: a\n    partitions: 0\n    replication_factor: 1\n")
    with pytest.raises(topics.SpecError, match=r"topics\[0\] \(a\): `partitions`"):
        topics.load_spec(bad)


def test_effective_caps_for_a_small_cluster() -> None:
    t = topics.TopicSpec("x", 96, 3, {"min.insync.replicas": "2"}, "k")
    eff = topics.effective(t, brokers=1, max_partitions=6)
    assert (eff.partitions, eff.replication_factor) == (6, 1)
    assert eff.configs["min.insync.replicas"] == "1"


def test_murmur2_matches_kafka_python() -> None:
    kafka_default = pytest.importorskip("kafka.partitioner.default")
    rng = random.Random(7)
    for n in range(64):
        data = rng.randbytes(n)
        assert murmur2(data) == kafka_default.murmur2(data)
    for _ in range(200):
        key = str(uuid.uuid4()).encode()
        assert partition_for(key, 6) == (kafka_default.murmur2(key) & 0x7FFFFFFF) % 6


def test_batched_partitions_match_one_by_one() -> None:
    rng = random.Random(8)
    # keys of many lengths, mixed, many of one length (the numpy path), a few of others
    keys = [rng.randbytes(rng.choice([0, 1, 2, 3, 5, 36, 36, 36, 37, 64])) for _ in range(3000)]
    keys += [str(uuid.uuid4()).encode() for _ in range(500)]
    for partitions in (1, 6, 96):
        assert partitions_for(keys, partitions) == [partition_for(k, partitions) for k in keys]
    assert partitions_for([], 6) == []


def test_uuid7_is_a_time_ordered_version_7_uuid() -> None:
    a, b = uuid7(1_000), uuid7(2_000)
    ua = uuid.UUID(a)
    assert ua.version == 7 and ua.variant == uuid.RFC_4122 and a == str(ua)
    assert a < b
    assert int(ua.hex[:12], 16) == 1_000
    assert len({uuid7() for _ in range(1000)}) == 1000
    assert os.path.basename(a) == a  # no separators: usable in file names too
