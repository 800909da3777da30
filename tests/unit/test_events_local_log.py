"""LocalLog details beyond the shared contract: segments, retention, group membership."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llmops.events.base import ConsumedRecord, LogUnavailable, Record
from llmops.events.local_log import LocalLog, encode_frame
from llmops.events.partitioner import partition_for


def _drain(log: LocalLog, group: str, topic: str) -> list[ConsumedRecord]:
    consumer = log.consumer(group, [topic])
    out: list[ConsumedRecord] = []
    try:
        while batch := consumer.poll(1000, 0.05):
            out += batch
    finally:
        consumer.close()
    return out


def test_frames_have_the_documented_layout() -> None:
    frame = encode_frame(5, 1234, b"k", b"value", (("h", b"x"),))
    length = int.from_bytes(frame[:4], "little")
    assert length == len(frame) - 8
    assert frame[8] == 1  # format version
    assert int.from_bytes(frame[9:17], "little") == 5  # offset


def test_partitions_use_kafkas_default_partitioner(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={"t": 5}, fsync=False)
    keys = [f"req-{i}".encode() for i in range(50)]
    log.send([Record("t", k, k) for k in keys], 5)
    for r in _drain(log, "g", "t"):
        assert r.key is not None
        assert r.partition == partition_for(r.key, 5)


def test_segments_roll_and_reads_cross_them(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={"t": 1}, segment_bytes=2000, fsync=False)
    for i in range(40):
        log.send([Record("t", b"k", b"x" * 100 + str(i).encode())], 5)
    segments = sorted(p.name for p in (tmp_path / "topics" / "t" / "0").glob("*.log"))
    assert len(segments) == 3  # ~135-byte frames, 2000-byte segments: 15 per segment
    assert segments[1] != f"{0:020d}.log"
    got = _drain(log, "g", "t")
    assert [r.offset for r in got] == list(range(40))
    consumer = log.consumer("g2", ["t"])
    consumer.seek(("t", 0), 33)  # a seek into a later segment
    assert [r.offset for r in consumer.poll(100, 0.1)] == list(range(33, 40))
    assert consumer.end_offsets([("t", 0)]) == {("t", 0): 40}
    consumer.close()


def test_retention_deletes_only_old_segments_every_group_has_passed(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={"t": 1}, segment_bytes=1000, retention_ms={"t": 1000})
    for i in range(30):
        log.send([Record("t", b"k", b"y" * 200 + str(i).encode())], 5)
    pdir = tmp_path / "topics" / "t" / "0"
    first_segments = len(list(pdir.glob("*.log")))
    consumer = log.consumer("slow", ["t"])
    consumer.commit({("t", 0): 10})
    consumer.close()
    future = time.time() + 3600
    log.delete_expired(now_s=future)
    remaining = sorted(int(p.stem) for p in pdir.glob("*.log"))
    assert 0 < len(remaining) < first_segments
    assert remaining[0] <= 10  # the segment holding offset 10 is kept for the slow group
    assert log.delete_expired(now_s=time.time() - 3600) == 0  # nothing old enough
    got = _drain(log, "late-newcomer", "t")  # a new group starts at the oldest kept record
    assert got[0].offset == remaining[0] and got[-1].offset == 29


def test_one_active_member_per_group_and_topic(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={"t": 2}, fsync=False)
    log.send([Record("t", b"a", b"1"), Record("t", b"b", b"2")], 5)
    first = log.consumer("g", ["t"])
    second = LocalLog(tmp_path).consumer("g", ["t"])
    assert first.assignment() == {("t", 0), ("t", 1)}
    assert second.assignment() == set()
    assert second.poll(10, 0.05) == []
    first.close()
    time.sleep(0.6)  # the waiting member retries the lock every 0.5 s
    assert second.assignment() == {("t", 0), ("t", 1)}
    assert len(second.poll(10, 0.5)) == 2
    second.close()


def test_offsets_file_is_replaced_atomically(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, partitions={"t": 1})
    consumer = log.consumer("g/with slash", ["t"])
    consumer.commit({("t", 0): 3})
    consumer.commit({("t", 0): 4})
    gdir = tmp_path / "groups" / "g%2Fwith%20slash"
    assert json.loads((gdir / "t.json").read_text()) == {"offsets": {"0": 4}}
    assert [p.name for p in gdir.iterdir() if p.name.endswith(".tmp")] == []
    consumer.close()


def test_topic_keeps_the_partition_count_it_was_created_with(tmp_path: Path) -> None:
    assert LocalLog(tmp_path, partitions={"t": 3}).create_topic("t", 3) == 3
    other = LocalLog(tmp_path, partitions={"t": 8})
    assert other.create_topic("t", 8) == 3
    assert other.existing_partitions("t") == 3
    assert os.path.exists(tmp_path / "topics" / "t" / "meta.json")


def test_a_recreated_topic_under_old_group_offsets_is_read_from_its_start(tmp_path: Path) -> None:
    """The topic's data is wiped and written again while the group's committed offsets stay:
    offsets beyond the new end mean another log, read from the start (as Kafka consumers do
    with auto_offset_reset=earliest), not from the end — that would skip every new record."""
    import shutil

    log = LocalLog(tmp_path, partitions={"t": 1}, fsync=False)
    log.send([Record("t", b"k", f"old-{i}".encode()) for i in range(50)], 5)
    assert len(_drain(log, "g", "t")) == 50
    consumer = log.consumer("g", ["t"])
    consumer.commit({("t", 0): 50})
    consumer.close()
    log.close()
    shutil.rmtree(tmp_path / "topics" / "t")  # the data, not the group's offsets

    log = LocalLog(tmp_path, partitions={"t": 1}, fsync=False)
    log.send([Record("t", b"k", f"new-{i}".encode()) for i in range(20)], 5)
    got = _drain(log, "g", "t")
    assert [r.value for r in got] == [f"new-{i}".encode() for i in range(20)]
    log.close()


def _keys_by_partition(partitions: int, per: int) -> list[bytes]:
    """``per`` keys for each partition of ``partitions``."""
    keys: list[bytes] = []
    counts = [0] * partitions
    i = 0
    while min(counts) < per:
        key = f"key-{i}".encode()
        p = partition_for(key, partitions)
        if counts[p] < per:
            counts[p] += 1
            keys.append(key)
        i += 1
    return keys


def _partition_of_fd(fd: int) -> int:
    return int(Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name)


def test_a_send_over_partitions_syncs_them_together_and_cuts_back_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several partitions are written first, then synced together; the one whose sync
    fails is cut back (its records are not there), the others keep theirs, and the next
    send continues every partition at the right offset."""
    import llmops.events.local_log as local_log

    log = LocalLog(tmp_path, partitions={"t": 3})
    keys = _keys_by_partition(3, 4)
    real = local_log._datasync

    def failing(fd: int) -> None:
        if _partition_of_fd(fd) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(local_log, "_datasync", failing)
    with pytest.raises(LogUnavailable, match="Input/output error"):
        log.send([Record("t", k, b"first") for k in keys], 5)
    monkeypatch.setattr(local_log, "_datasync", real)
    assert [log.end_offset(("t", p)) for p in range(3)] == [4, 0, 4]
    log.send([Record("t", k, b"second") for k in keys], 5)
    got = _drain(log, "g", "t")
    by = {p: [(r.offset, r.value) for r in got if r.partition == p] for p in range(3)}
    assert by[1] == [(i, b"second") for i in range(4)]
    for p in (0, 2):
        assert by[p] == [(i, b"first") for i in range(4)] + [(i, b"second") for i in range(4, 8)]
    log.close()


def test_a_send_whose_write_fails_leaves_no_partition_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmops.events.local_log as local_log

    log = LocalLog(tmp_path, partitions={"t": 3})
    keys = _keys_by_partition(3, 2)
    real_write = os.write

    def failing(fd: int, data: bytes) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).suffix == ".log" and (
            _partition_of_fd(fd) == 2
        ):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(local_log.os, "write", failing)
    with pytest.raises(LogUnavailable, match="No space left"):
        log.send([Record("t", k, b"v") for k in keys], 5)
    monkeypatch.setattr(local_log.os, "write", real_write)
    assert [log.end_offset(("t", p)) for p in range(3)] == [0, 0, 0]
    log.send([Record("t", k, b"v") for k in keys], 5)
    assert [log.end_offset(("t", p)) for p in range(3)] == [2, 2, 2]
    log.close()
