"""The EventLog contract, run against both backends: Kafka (a real broker) and the local log.

Then local-only tests of what only the local log has to prove itself: durability across
processes, torn-tail recovery, and concurrent appenders in several processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from llmops.events.base import ConsumedRecord, EventLog, LogConsumer, LogUnavailable, Record
from llmops.events.local_log import LocalLog
from tests.infra import REPO_ROOT

T = TypeVar("T")


class Backend:
    """Makes topics and logs of one backend; cleans up what it made."""

    name = ""

    def new_topic(self, partitions: int) -> str:
        raise NotImplementedError

    def open(self) -> EventLog:
        """A new log instance over the same storage/cluster (closed at teardown)."""
        raise NotImplementedError


class LocalBackend(Backend):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs: list[LocalLog] = []

    def new_topic(self, partitions: int) -> str:
        topic = f"test.{uuid.uuid4().hex[:10]}"
        LocalLog(self.root, partitions={}).create_topic(topic, partitions)
        return topic

    def open(self) -> EventLog:
        log = LocalLog(self.root, partitions={}, fsync=False)
        self.logs.append(log)
        return log


class KafkaBackend(Backend):
    name = "kafka"

    def __init__(self, bootstrap: str, client: str) -> None:
        from kafka.admin import KafkaAdminClient

        self.client = client
        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmops-contract")
        self.topics: list[str] = []
        self.logs: list[EventLog] = []

    def new_topic(self, partitions: int) -> str:
        topic = f"test.contract.{uuid.uuid4().hex[:10]}"
        self.admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
        self.admin.wait_for_topics([topic], timeout_ms=30000)
        self.topics.append(topic)
        return topic

    def open(self) -> EventLog:
        from llmops.events.kafka_log import KafkaLog

        log = KafkaLog(
            self.bootstrap, client_id="llmops-contract", linger_ms=1,
            consumer_client=self.client, producer_client=self.client,
        )  # fmt: skip
        self.logs.append(log)
        return log

    def cleanup(self) -> None:
        if self.topics:
            self.admin.delete_topics(self.topics)
        self.admin.close()


@pytest.fixture(
    params=[
        "local",
        pytest.param("kafka-confluent", marks=pytest.mark.infra),
        pytest.param("kafka-kafka-python", marks=pytest.mark.infra),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The local log, and Kafka through each client (librdkafka, and kafka-python)."""
    made: Any
    if request.param.startswith("kafka-"):
        client = request.param.removeprefix("kafka-")
        made = KafkaBackend(request.getfixturevalue("kafka_bootstrap"), client)
    else:
        made = LocalBackend(tmp_path / "log")
    try:
        yield made
    finally:
        for log in made.logs:
            log.close()
        if isinstance(made, KafkaBackend):
            made.cleanup()


def group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def drain(consumer: LogConsumer, n: int, timeout_s: float = 30.0) -> list[ConsumedRecord]:
    """Poll until ``n`` records arrived or ``timeout_s`` passed."""
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += consumer.poll(n - len(out), 0.5)
    return out


def wait_assigned(consumer: LogConsumer, timeout_s: float = 30.0) -> set[tuple[str, int]]:
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(1, 0.2)  # Kafka joins the group while polling
    return consumer.assignment()


def records(topic: str, n: int, keys: int = 1, start: int = 0) -> list[Record]:
    return [
        Record(topic, f"key-{i % keys}".encode(), f"{i % keys}:{i}".encode())
        for i in range(start, start + n)
    ]


# ---------------------------------------------------------------------------------------------
# The contract.


def test_send_poll_round_trip_keeps_key_value_headers(backend: Backend) -> None:
    topic = backend.new_topic(1)
    log = backend.open()
    sent = [
        Record(topic, b"k1", b"v1", (("trace", b"abc"), ("kind", b"prediction"))),
        Record(topic, b"k2", b"", ()),
        Record(topic, b"k3", b"\x00\xff" * 1000, (("empty", b""),)),
    ]
    before_ms = time.time() * 1000 - 5000
    log.send(sent, timeout_s=30)
    consumer = log.consumer(group(), [topic])
    try:
        got = drain(consumer, 3)
    finally:
        consumer.close()
    assert [(r.key, r.value, r.headers) for r in got] == [(s.key, s.value, s.headers) for s in sent]
    assert [r.offset for r in got] == [0, 1, 2]
    assert {(r.topic, r.partition) for r in got} == {(topic, 0)}
    assert all(before_ms < r.timestamp_ms < time.time() * 1000 + 5000 for r in got)


def test_runs_hold_what_poll_would_return(backend: Backend) -> None:
    """poll_runs (a sink's bulk read): per partition, offsets and values in order, and
    ``records()`` the very records poll returns, keys, timestamps and headers included."""
    from llmops.events.base import poll_runs

    topic = backend.new_topic(3)
    log = backend.open()
    sent = [
        Record(topic, f"k{i % 7}".encode(), f"v{i}".encode() * (1 + i % 5), (("h", b"%d" % i),))
        for i in range(600)
    ]
    sent.append(Record(topic, b"big", b"x" * 300_000))  # a frame larger than a read chunk
    log.send(sent, timeout_s=30)
    by_runs = log.consumer(group(), [topic])
    by_poll = log.consumer(group(), [topic])
    try:
        runs = []
        deadline = time.monotonic() + 30
        while sum(len(r) for r in runs) < len(sent) and time.monotonic() < deadline:
            runs += poll_runs(by_runs, 250, 0.5)
        polled = drain(by_poll, len(sent))
    finally:
        by_runs.close()
        by_poll.close()
    assert all(len(r) <= 250 for r in runs)
    expected: dict[tuple[str, int], list[ConsumedRecord]] = defaultdict(list)
    for record in polled:
        expected[(record.topic, record.partition)].append(record)
    got: dict[tuple[str, int], list[ConsumedRecord]] = defaultdict(list)
    for run in runs:
        assert list(run.offsets) == [r.offset for r in run.records()]
        assert list(run.values) == [r.value for r in run.records()]
        assert run.records(2) == run.records()[:2]
        got[run.tp] += run.records()
    assert got == expected
    run = max(runs, key=len)
    middle = run.offsets[len(run) // 2]
    rest = run.after(middle)
    assert list(rest.offsets) == [o for o in run.offsets if o > middle]
    assert rest.records() == [r for r in run.records() if r.offset > middle]
    assert rest.records(1) == rest.records()[:1]
    assert len(run.after(run.offsets[-1])) == 0
    assert run.after(run.offsets[0] - 1) is run


def test_one_key_stays_on_one_partition_in_order(backend: Backend) -> None:
    topic = backend.new_topic(3)
    log = backend.open()
    keys, per_key = 7, 30
    for chunk in range(3):  # several sends: order holds across calls too
        log.send(records(topic, keys * per_key // 3, keys, chunk * keys * per_key // 3), 30)
    consumer = log.consumer(group(), [topic])
    try:
        got = drain(consumer, keys * per_key)
    finally:
        consumer.close()
    assert len(got) == keys * per_key
    seqs: dict[bytes | None, list[int]] = defaultdict(list)
    parts: dict[bytes | None, set[int]] = defaultdict(set)
    for r in got:
        seqs[r.key].append(int(r.value.split(b":")[1]))
        parts[r.key].add(r.partition)
    assert all(len(p) == 1 for p in parts.values()), parts
    assert all(s == sorted(s) for s in seqs.values())
    assert len({p for ps in parts.values() for p in ps}) > 1  # keys spread over partitions


def test_committed_offset_is_where_a_new_member_resumes(backend: Backend) -> None:
    topic, g = backend.new_topic(1), group()
    log = backend.open()
    log.send(records(topic, 10), 30)
    first = log.consumer(g, [topic])
    try:
        assert first.committed((topic, 0)) is None
        assert len(drain(first, 10)) == 10
        first.commit({(topic, 0): 6})
        assert first.committed((topic, 0)) == 6
    finally:
        first.close()
    second = backend.open().consumer(g, [topic])
    try:
        got = drain(second, 4)
        assert [r.offset for r in got] == [6, 7, 8, 9]
        assert second.committed((topic, 0)) == 6
    finally:
        second.close()


def test_seek_rewinds(backend: Backend) -> None:
    topic = backend.new_topic(1)
    log = backend.open()
    log.send(records(topic, 5), 30)
    consumer = log.consumer(group(), [topic])
    try:
        assert len(drain(consumer, 5)) == 5
        consumer.seek((topic, 0), 2)
        assert [r.offset for r in drain(consumer, 3)] == [2, 3, 4]
    finally:
        consumer.close()


def test_another_group_reads_from_the_start(backend: Backend) -> None:
    topic = backend.new_topic(2)
    log = backend.open()
    log.send(records(topic, 20, keys=4), 30)
    a = log.consumer(group(), [topic])
    try:
        got = drain(a, 20)
        a.commit({(r.topic, r.partition): r.offset + 1 for r in got})
    finally:
        a.close()
    b = log.consumer(group(), [topic])
    try:
        assert sorted(r.value for r in drain(b, 20)) == sorted(r.value for r in got)
    finally:
        b.close()


def test_end_offsets_give_the_lag(backend: Backend) -> None:
    topic = backend.new_topic(2)
    log = backend.open()
    log.send(records(topic, 12, keys=5), 30)
    consumer = log.consumer(group(), [topic])
    try:
        tps = sorted(wait_assigned(consumer))
        assert tps == [(topic, 0), (topic, 1)]
        ends = consumer.end_offsets(tps)
        assert sum(ends.values()) == 12
        lag = {tp: ends[tp] - (consumer.committed(tp) or 0) for tp in tps}
        assert sum(lag.values()) == 12
        got = drain(consumer, 12)
        consumer.commit({(r.topic, r.partition): r.offset + 1 for r in got})
        assert all(consumer.committed(tp) == ends[tp] for tp in tps)
    finally:
        consumer.close()


def test_empty_poll_returns_nothing_within_the_timeout(backend: Backend) -> None:
    topic = backend.new_topic(1)
    log = backend.open()
    log.send(records(topic, 1), 30)
    consumer = log.consumer(group(), [topic])
    try:
        assert len(drain(consumer, 1)) == 1
        started = time.monotonic()
        assert consumer.poll(10, 0.3) == []
        assert time.monotonic() - started < 1.5
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------
# Local log only: processes, crashes, torn tails.

_APPEND_SCRIPT = textwrap.dedent(
    """
    import sys
    from llmops.events.base import Record
    from llmops.events.local_log import LocalLog
    root, topic, writer = sys.argv[1:4]
    n, batch = int(sys.argv[4]), int(sys.argv[5])
    log = LocalLog(root, partitions={topic: 3})
    for start in range(0, n, batch):
        log.send([Record(topic, f"{writer}-{i % 5}".encode(), f"{writer}:{i}".encode())
                  for i in range(start, min(n, start + batch))], timeout_s=30)
        if start == 0:
            print("STARTED", flush=True)
    """
)


def _appender(root: Path, topic: str, writer: str, n: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _APPEND_SCRIPT, str(root), topic, writer, str(n), str(batch)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def _read_all(root: Path, topic: str) -> list[ConsumedRecord]:
    return _read_fresh(root, topic, lambda c: c.poll(10_000, 0.2))


def _run_offsets(root: Path, topic: str) -> list[int]:
    """The offsets a bulk reader (``poll_runs``) gets, in order."""
    return _read_fresh(
        root, topic, lambda c: [o for run in c.poll_runs(10_000, 0.2) for o in run.offsets]
    )


def _read_fresh(root: Path, topic: str, read: Callable[[Any], list[T]]) -> list[T]:
    """Everything ``read`` returns for a new group on a new log over ``root``, until empty."""
    log = LocalLog(root, partitions={})
    consumer = log.consumer(group(), [topic])
    try:
        out: list[T] = []
        while batch := read(consumer):
            out += batch
        return out
    finally:
        consumer.close()
        log.close()


def _check_dense(got: list[ConsumedRecord]) -> None:
    by_part: dict[int, list[int]] = defaultdict(list)
    for r in got:
        by_part[r.partition].append(r.offset)
    for offsets in by_part.values():
        assert offsets == list(range(len(offsets)))


def test_local_offsets_and_records_survive_process_restart(tmp_path: Path) -> None:
    root, topic = tmp_path / "log", "test.restart"
    script = textwrap.dedent(
        """
        import sys
        from llmops.events.base import Record
        from llmops.events.local_log import LocalLog
        log = LocalLog(sys.argv[1], partitions={"test.restart": 2})
        log.send([Record("test.restart", b"k%d" % (i % 3), b"%d" % i) for i in range(100)], 10)
        c = log.consumer("sink", ["test.restart"])
        got = []
        while len(got) < 100:
            got += c.poll(100, 1.0)
        c.commit({(r.topic, r.partition): r.offset + 1 for r in got if int(r.value) < 60})
        """
    )
    subprocess.run([sys.executable, "-c", script, str(root)], cwd=REPO_ROOT, check=True, timeout=60)

    log = LocalLog(root, partitions={})
    consumer = log.consumer("sink", [topic])
    try:
        ends = consumer.end_offsets(sorted(consumer.assignment()))
        assert sum(ends.values()) == 100
        rest = drain(consumer, 100, timeout_s=2)
        committed = {tp: consumer.committed(tp) for tp in ends}
        # Each partition resumes after its last committed record of value < 60.
        assert sum(ends[tp] - (committed[tp] or 0) for tp in ends) == len(rest)
        assert all(r.offset >= (committed[(topic, r.partition)] or 0) for r in rest)
        assert len(rest) < 100
    finally:
        consumer.close()
        log.close()


def test_local_torn_tail_is_ignored_by_readers_and_cut_by_the_next_append(tmp_path: Path) -> None:
    root, topic = tmp_path / "log", "test.torn"
    log = LocalLog(root, partitions={topic: 1})
    log.send(records(topic, 10), 10)
    log.close()
    segment = root / "topics" / topic / "0" / f"{0:020d}.log"
    whole = segment.stat().st_size
    from llmops.events.local_log import encode_frame

    frame = encode_frame(10, 0, b"key-0", b"a record cut by a crash", ())
    with open(segment, "ab") as fh:  # a crash mid-write: half a frame at the end
        fh.write(frame[: len(frame) // 2])

    assert [r.offset for r in _read_all(root, topic)] == list(range(10))  # readers stop before it
    assert _run_offsets(root, topic) == list(range(10))  # bulk readers too

    log = LocalLog(root, partitions={topic: 1})
    log.send(records(topic, 5, start=10), 10)  # the next append cuts the torn tail first
    log.close()
    got = _read_all(root, topic)
    assert [r.offset for r in got] == list(range(15))
    assert [r.value for r in got[10:]] == [f"0:{i}".encode() for i in range(10, 15)]
    appended = sum(len(encode_frame(i, 0, b"key-0", f"0:{i}".encode(), ())) for i in range(10, 15))
    assert segment.stat().st_size == whole + appended  # the half frame is gone

    # A corrupted (CRC-failing) last frame is a torn tail too.
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert len(_read_all(root, topic)) == 14
    assert _run_offsets(root, topic) == list(range(14))
    log = LocalLog(root, partitions={topic: 1})
    log.send(records(topic, 1, start=99), 10)
    log.close()
    assert [r.offset for r in _read_all(root, topic)] == list(range(15))


def test_local_two_processes_appending_concurrently_lose_nothing(tmp_path: Path) -> None:
    root, topic = tmp_path / "log", "test.concurrent"
    n = 3000
    procs = [_appender(root, topic, w, n, 7) for w in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = _read_all(root, topic)
    assert len(got) == 2 * n
    _check_dense(got)
    per_key: dict[bytes | None, list[int]] = defaultdict(list)
    for r in got:
        per_key[r.key].append(int(r.value.split(b":")[1]))
    assert sorted(v for seq in per_key.values() for v in seq) == sorted(list(range(n)) * 2)
    assert all(seq == sorted(seq) for seq in per_key.values())  # each writer's key in order


def test_local_appender_killed_mid_stream_leaves_a_consistent_log(tmp_path: Path) -> None:
    root, topic = tmp_path / "log", "test.killed"
    proc = _appender(root, topic, "k", 10_000_000, 50)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "STARTED"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    before = _read_all(root, topic)
    assert before
    _check_dense(before)
    log = LocalLog(root, partitions={})
    log.send(records(topic, 30, keys=5), 10)
    log.close()
    after = _read_all(root, topic)
    assert len(after) == len(before) + 30
    _check_dense(after)


def test_local_send_to_an_unknown_topic_is_refused(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={})
    with pytest.raises(LogUnavailable, match="does not exist"):
        log.send([Record("nope", b"k", b"v")], 1)
