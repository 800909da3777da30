"""The embedding service's write-ahead log: framing, recovery, segments, concurrency, kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from llmops.errors import FailedPrecondition, InvalidArgument
from services.embedding.wal import WriteAheadLog, encode_frame

ROOT = Path(__file__).resolve().parents[2]


def _payload(seq: int) -> bytes:
    """A deterministic ~1.6 KB record for ``seq`` (what an upsert of one 384-d vector weighs)."""
    return hashlib.sha256(str(seq).encode()).digest() * 50


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def test_append_and_replay_round_trip(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        assert wal.last_sequence == 0
        assert wal.append([b"a"]) == 1
        assert wal.append([b"b", b"", b"d" * 5000]) == 4
        assert wal.append([]) == 4  # nothing written
        assert list(wal.replay()) == [(1, b"a"), (2, b"b"), (3, b""), (4, b"d" * 5000)]
        assert list(wal.replay(after=2)) == [(3, b""), (4, b"d" * 5000)]
        assert list(wal.replay(after=4)) == []
    frame = encode_frame(7, b"xyz")  # the documented layout: u64 seq, u32 length, u32 CRC
    assert int.from_bytes(frame[:8], "little") == 7
    assert int.from_bytes(frame[8:12], "little") == 3
    assert frame[16:] == b"xyz"


def test_numbering_continues_after_reopen(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append([b"1", b"2", b"3"])
    with WriteAheadLog(tmp_path) as wal:
        assert wal.last_sequence == 3
        assert wal.torn_tails_cut == 0
        assert wal.append([b"4"]) == 4
        assert [s for s, _ in wal.replay()] == [1, 2, 3, 4]


def test_one_instance_per_directory(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    with pytest.raises(FailedPrecondition, match="open elsewhere"):
        WriteAheadLog(tmp_path)
    wal.close()
    wal.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed"):
        wal.append([b"x"])
    WriteAheadLog(tmp_path).close()  # the lock was released


def test_oversized_record_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.embedding.wal.MAX_RECORD_BYTES", 10)
    with WriteAheadLog(tmp_path) as wal, pytest.raises(InvalidArgument) as err:
        wal.append([b"ok", b"x" * 11])
    assert err.value.field == "records[1]"


def test_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append([_payload(s) for s in range(1, 6)])
    (segment,) = _segments(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - 100)  # a crash in the middle of writing record 5
    with capture_logs() as logs, WriteAheadLog(tmp_path) as wal:
        assert wal.torn_tails_cut == 1
        assert wal.last_sequence == 4
        assert [p for _, p in wal.replay()] == [_payload(s) for s in range(1, 5)]
        assert wal.append([b"new five"]) == 5  # the torn record's number is reused: never acked
        assert list(wal.replay(after=4)) == [(5, b"new five")]
    warning = next(e for e in logs if e["event"] == "embedding_wal_torn_tail_truncated")
    assert warning["log_level"] == "warning"
    assert warning["segment"] == str(segment)
    assert warning["dropped_bytes"] == len(encode_frame(5, _payload(5))) - 100


def test_bad_crc_in_the_last_frame_is_a_torn_tail(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append([_payload(1), _payload(2), _payload(3)])
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF
    segment.write_bytes(bytes(data))
    with WriteAheadLog(tmp_path) as wal:
        assert wal.torn_tails_cut == 1
        assert wal.last_sequence == 2
    assert segment.stat().st_size == 2 * len(encode_frame(1, _payload(1)))  # cut on disk too


def test_a_header_only_tail_and_an_empty_segment_recover(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append([b"x" * 10])
    (segment,) = _segments(tmp_path)
    with open(segment, "ab") as fh:
        fh.write(encode_frame(2, b"y" * 10)[:7])  # not even a whole header
    with WriteAheadLog(tmp_path) as wal:
        assert (wal.torn_tails_cut, wal.last_sequence) == (1, 1)
    os.truncate(segment, 5)  # the first frame itself torn: the segment ends up empty
    with WriteAheadLog(tmp_path) as wal:
        assert (wal.torn_tails_cut, wal.last_sequence) == (1, 0)
        assert wal.append([b"again"]) == 1


@pytest.mark.parametrize("where", ["payload", "length"])
def test_corruption_in_the_middle_is_refused(tmp_path: Path, where: str) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append([_payload(s) for s in range(1, 4)])
        wal.append([_payload(s) for s in range(4, 7)])
    (segment,) = _segments(tmp_path)
    frame = len(encode_frame(1, _payload(1)))
    data = bytearray(segment.read_bytes())
    offset = frame  # record 2, acknowledged and followed by good records
    data[offset + (40 if where == "payload" else 10)] ^= 0x5A  # (the length's high byte)
    segment.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition) as err:
        WriteAheadLog(tmp_path)
    assert str(segment) in err.value.message
    assert f"offset {offset}" in err.value.message
    assert segment.stat().st_size == len(data)  # nothing was cut
    with pytest.raises(FailedPrecondition):
        WriteAheadLog(tmp_path)  # still refused: the flock was released, the data unchanged


def test_segments_roll_and_truncate_before(tmp_path: Path) -> None:
    frame = len(encode_frame(1, _payload(1)))
    with WriteAheadLog(tmp_path, segment_bytes=3 * frame) as wal:
        for s in range(1, 11):
            wal.append([_payload(s)])
        # Rolls happen before the append that finds the active segment full: 3 per segment.
        assert [p.name for p in _segments(tmp_path)] == [f"{b:020d}.wal" for b in (1, 4, 7, 10)]
        assert wal.append([_payload(11), _payload(12), _payload(13)]) == 13  # batch not split
        assert [p.stat().st_size for p in _segments(tmp_path)][-1] == 4 * frame
        assert [s for s, _ in wal.replay(after=5)] == list(range(6, 14))
        assert wal.truncate_before(5) == 1  # only 1..3 are all <= 5
        assert wal.truncate_before(5) == 0  # 4..6 still holds record 6
        assert wal.truncate_before(6) == 1  # 4..6
        assert wal.first_sequence == 7
        assert wal.truncate_before(100) == 1  # never the active segment
        assert [p.name for p in _segments(tmp_path)] == [f"{10:020d}.wal"]
        assert [s for s, _ in wal.replay(after=9)] == [10, 11, 12, 13]
        with pytest.raises(FailedPrecondition, match="truncated"):
            wal.replay(after=3)
    with WriteAheadLog(tmp_path, segment_bytes=3 * frame) as wal:
        assert (wal.first_sequence, wal.last_sequence) == (10, 13)
        assert wal.append([b"x"]) == 14


def test_corruption_in_a_rolled_segment_is_found_by_replay(tmp_path: Path) -> None:
    frame = len(encode_frame(1, _payload(1)))
    with WriteAheadLog(tmp_path, segment_bytes=2 * frame) as wal:
        for s in range(1, 7):
            wal.append([_payload(s)])
    first = _segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[frame + 100] ^= 1
    first.write_bytes(bytes(data))
    with WriteAheadLog(tmp_path) as wal:  # opening validates the active segment only
        replay = wal.replay()
        assert next(replay) == (1, _payload(1))
        with pytest.raises(FailedPrecondition, match=f"{first.name} is corrupt.*offset {frame}"):
            next(replay)
        assert [s for s, _ in wal.replay(after=2)] == [3, 4, 5, 6]  # skips the bad segment


def test_concurrent_appends_get_unique_contiguous_sequences(tmp_path: Path) -> None:
    results: list[tuple[int, list[bytes]]] = []
    guard = threading.Lock()
    with WriteAheadLog(tmp_path, fsync=False, segment_bytes=8192) as wal:

        def worker(t: int) -> None:
            for i in range(150):
                batch = [f"{t}:{i}:{k}".encode() for k in range(1 + i % 3)]
                last = wal.append(batch)
                with guard:
                    results.append((last, batch))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        expected: dict[int, bytes] = {}
        for last, batch in results:
            for k, record in enumerate(batch):
                seq = last - len(batch) + 1 + k
                assert seq not in expected
                expected[seq] = record
        total = sum(len(b) for _, b in results)
        assert sorted(expected) == list(range(1, total + 1))
        assert wal.last_sequence == total
        assert dict(wal.replay()) == expected
        assert len(_segments(tmp_path)) > 1


_CHILD = """
import hashlib, sys
from pathlib import Path
from services.embedding.wal import WriteAheadLog

wal = WriteAheadLog(Path(sys.argv[1]), segment_bytes=64 * 1024)
last = wal.last_sequence
while True:
    n = 1 + last % 3
    batch = [hashlib.sha256(str(s).encode()).digest() * 50 for s in range(last + 1, last + n + 1)]
    last = wal.append(batch)
    print(last, flush=True)
"""


def test_acknowledged_appends_survive_kill_9(tmp_path: Path) -> None:
    acked = 0
    for _ in range(2):  # the second round continues the log the first one was killed over
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # the child is up and appending
        time.sleep(0.3)  # let it append for a while (the one sleep in these tests, bounded)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
        lines = (first + child.stdout.read()).split(b"\n")[:-1]  # whole lines only
        child.stdout.close()
        round_acked = max(int(line) for line in lines)
        assert round_acked > acked
        acked = round_acked
        with WriteAheadLog(tmp_path) as wal:
            assert wal.last_sequence >= acked
            replayed = list(wal.replay())
        assert [s for s, _ in replayed] == list(range(1, len(replayed) + 1))
        for seq, payload in replayed:
            assert payload == _payload(seq)
