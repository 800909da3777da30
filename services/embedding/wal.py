"""The write-ahead log of the vector collections: durable, ordered, opaque byte records.

The service appends each change (an upsert with its vectors already computed, a delete, a
collection create/drop; serialized protobuf messages) before applying it in memory, and after a
restart rebuilds a collection from its latest snapshot plus ``replay(after=snapshot's
wal_sequence)``. On disk::

    <dir>/LOCK                          flock held by the one open WriteAheadLog
    <dir>/<first sequence:020d>.wal     segments, append-only, named by their first record

A segment is a sequence of frames ``[u64 sequence][u32 payload length][u32 CRC-32][payload]``
(little endian); the CRC covers the sequence, the length and the payload, so a frame that is
misplaced or has a damaged header fails validation as surely as one with a damaged payload.
Sequences are dense from 1 and never reused (a deleted segment's numbers stay spent).

Appending holds a lock, writes the whole batch in one ``write`` and ``fdatasync``s it before
returning (``fsync=True``): an acknowledged append survives kill -9 and power loss. A crash
mid-append leaves a torn tail (a prefix of the one unsynced write); opening the log cuts it,
counts it in ``torn_tails_cut`` and logs a warning. Records of that prefix that happen to be
whole are kept: they were never acknowledged, but a client retrying them is harmless. A bad
frame that is followed by a valid one is *not* what a crash leaves behind: it is corruption of
acknowledged data, and opening (or replaying) raises FailedPrecondition instead of dropping it.

The log rolls to a new segment once the active one reaches ``segment_bytes`` (a batch is never
split); ``truncate_before`` deletes whole segments snapshots cover (the collection store's
checkpoint decides up to where). The active segment is
never deleted, so the numbering survives even when every record has been truncated.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import structlog

from llmops.errors import FailedPrecondition, InvalidArgument, Unavailable

log = structlog.get_logger("llmops.embedding")

_HEADER = struct.Struct("<QII")  # sequence, payload length, CRC-32
_SEQ = struct.Struct("<Q")
MAX_RECORD_BYTES = 256 * 1024 * 1024
"""Largest payload one record may carry (a larger length field marks a damaged frame)."""
_SUFFIX = ".wal"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_READ_BUFFER = 1024 * 1024
_SEARCH_AHEAD = 64  # how many later sequence numbers a tail check looks for (see _later_frame)

_datasync = getattr(os, "fdatasync", os.fsync)


def encode_frame(sequence: int, payload: bytes) -> bytes:
    """One record as stored in a segment (see the module docstring for the layout)."""
    head = _SEQ.pack(sequence) + len(payload).to_bytes(4, "little")
    return head + zlib.crc32(payload, zlib.crc32(head)).to_bytes(4, "little") + payload


class _BadFrame(Exception):
    """The frame at byte ``offset`` of a segment is short or invalid (internal)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def _frames(fh: BinaryIO, pos: int, seq: int, stop: int) -> Iterator[tuple[int, bytes, int]]:
    """(sequence, payload, end offset) of each valid frame from byte ``pos`` of ``fh`` (which
    must hold ``seq``) up to byte ``stop``; raises _BadFrame at the first short or bad one."""
    fh.seek(pos)
    while pos < stop:
        header = fh.read(_HEADER.size) if stop - pos >= _HEADER.size else b""
        if len(header) < _HEADER.size:
            raise _BadFrame(pos, "incomplete frame header")
        got, length, crc = _HEADER.unpack(header)
        if length > MAX_RECORD_BYTES:
            raise _BadFrame(pos, f"implausible payload length {length}")
        end = pos + _HEADER.size + length
        payload = fh.read(length) if end <= stop else b""
        if end > stop or len(payload) < length:
            raise _BadFrame(pos, "incomplete frame")
        if zlib.crc32(payload, zlib.crc32(header[:12])) != crc:
            raise _BadFrame(pos, "CRC mismatch")
        if got != seq:  # a valid frame in the wrong place (e.g. a stale copy): not ours
            raise _BadFrame(pos, f"sequence {got} where {seq} was expected")
        yield seq, payload, end
        pos, seq = end, seq + 1


def _valid_at(buf: bytes, i: int, seq: int) -> bool:
    """Whether ``buf[i:]`` starts with a whole, valid frame holding ``seq``."""
    if len(buf) - i < _HEADER.size:
        return False
    got: int
    length: int
    crc: int
    got, length, crc = _HEADER.unpack_from(buf, i)
    end = i + _HEADER.size + length
    if got != seq or length > MAX_RECORD_BYTES or end > len(buf):
        return False
    body = memoryview(buf)[i + _HEADER.size : end]
    return zlib.crc32(body, zlib.crc32(memoryview(buf)[i : i + 12])) == crc


def _later_frame(buf: bytes, seq: int) -> int | None:
    """Offset in ``buf`` (which starts at a bad frame expected to hold ``seq``) of a valid frame
    with a later sequence, or None. The bad frame's length field may itself be damaged, so this
    searches for the encoded sequence numbers ``seq + 1 ..`` rather than trusting it; looking a
    bounded number of records ahead keeps the (crash-recovery-only) check cheap."""
    for nxt in range(seq + 1, seq + 1 + _SEARCH_AHEAD):
        pattern = _SEQ.pack(nxt)
        i = buf.find(pattern, 1)
        while i != -1:
            if _valid_at(buf, i, nxt):
                return i
            i = buf.find(pattern, i + 1)
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """An append-only, segmented log of opaque byte records in ``directory``.

    One instance per directory (an flock on ``LOCK`` refuses a second, in this process or
    another). Thread-safe. ``fsync=False`` skips the data and directory syncs: appends then
    survive a process crash but not a power loss (for tests and throwaway collections).
    """

    def __init__(
        self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 * 1024 * 1024
    ) -> None:
        if segment_bytes < 1:
            raise InvalidArgument("segment_bytes", f"must be >= 1, got {segment_bytes}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.torn_tails_cut = 0
        """How many torn tails opening this log has cut (0 or 1; a metric for the caller)."""
        self.torn_bytes_dropped = 0
        self._lock = threading.Lock()
        self._closed = False
        self._failed: str | None = None  # set when a write or sync failed: see _append_locked
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise FailedPrecondition(
                f"write-ahead log {self.directory} is open elsewhere (another process or instance)"
            ) from None
        try:
            self._bases = self._list_segments()
            if not self._bases:
                self._bases = [1]
                self._segment_path(1).touch()
                self._sync_dir()
            self._pos, self._next = self._recover_tail()
            self._fd = os.open(self._segment_path(self._bases[-1]), os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- files ------------------------------------------------------------------------------

    def _segment_path(self, base: int) -> Path:
        return self.directory / f"{base:020d}{_SUFFIX}"

    def _list_segments(self) -> list[int]:
        return sorted(
            int(m.group(1)) for n in os.listdir(self.directory) if (m := _SEGMENT_NAME.match(n))
        )

    def _sync_dir(self) -> None:
        if self.fsync:
            _fsync_dir(self.directory)

    def _recover_tail(self) -> tuple[int, int]:
        """Validate the active segment, cut a torn tail; returns (valid bytes, next sequence).

        Rolled segments were complete and synced before the roll; they are validated as they
        are replayed, which keeps opening a large log cheap.
        """
        base = self._bases[-1]
        path = self._segment_path(base)
        pos, seq = 0, base
        with open(path, "rb", buffering=_READ_BUFFER) as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                for last, _, end in _frames(fh, 0, base, size):
                    pos, seq = end, last + 1
                return pos, seq
            except _BadFrame as exc:
                bad = exc  # ``exc`` itself is unbound when the except clause ends
            fh.seek(bad.offset)
            rest = fh.read()
        later = _later_frame(rest, seq)
        if later is not None:
            raise FailedPrecondition(
                f"write-ahead log segment {path}: {bad.reason} at offset {bad.offset}, followed "
                f"by a valid frame at offset {bad.offset + later}: the log is corrupt (refusing "
                f"to drop acknowledged records)"
            )
        log.warning(
            "embedding_wal_torn_tail_truncated",
            segment=str(path),
            offset=bad.offset,
            reason=bad.reason,
            dropped_bytes=size - bad.offset,
            last_sequence=seq - 1,
        )
        with open(path, "r+b") as fh:
            fh.truncate(bad.offset)
            if self.fsync:
                os.fsync(fh.fileno())
        self.torn_tails_cut += 1
        self.torn_bytes_dropped += size - bad.offset
        return bad.offset, seq

    # -- API --------------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """Sequence of the last appended record (0 before the first append)."""
        return self._next - 1

    @property
    def first_sequence(self) -> int:
        """Lowest sequence still on disk (or that the next append gets, when none is)."""
        return self._bases[0]

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in all segments (what a checkpoint would let go of, and more)."""
        with self._lock:
            total = self._pos
            for base in self._bases[:-1]:
                with contextlib.suppress(FileNotFoundError):
                    total += self._segment_path(base).stat().st_size
            return total

    def append(self, records: Sequence[bytes]) -> int:
        """Append ``records`` in order (one write; synced when ``fsync``) and return the last
        one's sequence. An empty batch writes nothing and returns ``last_sequence``."""
        for i, record in enumerate(records):
            if len(record) > MAX_RECORD_BYTES:
                raise InvalidArgument(
                    f"records[{i}]", f"{len(record)} bytes exceeds {MAX_RECORD_BYTES}"
                )
        with self._lock:
            self._check_writable()
            if not records:
                return self._next - 1
            return self._append_locked(records)

    def _check_writable(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"write-ahead log {self.directory} is closed")
        if self._failed is not None:
            raise Unavailable(
                f"write-ahead log {self.directory} failed ({self._failed}); reopen it to recover"
            )

    def _append_locked(self, records: Sequence[bytes]) -> int:
        if self._pos >= self.segment_bytes:
            try:
                self._roll()
            except OSError as exc:  # e.g. ENOSPC: nothing was written, the log stays usable
                raise Unavailable(f"write-ahead log: starting a new segment failed: {exc}") from exc
        data = b"".join(encode_frame(self._next + i, r) for i, r in enumerate(records))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync:
                _datasync(self._fd)
        except OSError as exc:
            # After a failed write or fsync the file's state is unknown (the kernel may have
            # dropped the dirty pages): stop appending rather than acknowledge on top of it.
            self._failed = str(exc)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._pos)
            raise Unavailable(f"write-ahead log append failed: {exc}") from exc
        self._pos += len(data)
        self._next += len(records)
        return self._next - 1

    def _roll(self) -> None:
        """Start a new segment named by the next sequence (the old one is already synced)."""
        path = self._segment_path(self._next)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._sync_dir()  # the new name must be durable before records in it are acked
        except OSError:
            os.close(fd)  # the empty file may stay: the next roll reuses it
            raise
        os.close(self._fd)
        self._fd, self._pos = fd, 0
        self._bases.append(self._next)

    def replay(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(sequence, payload) of every record with sequence > ``after``, in order, up to the
        last one appended when the call was made. Raises FailedPrecondition on a damaged frame
        or when records after ``after`` were already truncated away."""
        with self._lock:
            if self._closed:
                raise FailedPrecondition(f"write-ahead log {self.directory} is closed")
            bases = list(self._bases)
            active_end = self._pos
            last = self._next - 1
        if after >= last:
            return iter(())
        if after + 1 < bases[0]:
            raise FailedPrecondition(
                f"write-ahead log {self.directory}: records {after + 1}..{bases[0] - 1} were "
                f"truncated (the oldest kept is {bases[0]}); restore from a newer snapshot"
            )
        return self._replay(bases, active_end, after)

    def _replay(self, bases: list[int], active_end: int, after: int) -> Iterator[tuple[int, bytes]]:
        for k, base in enumerate(bases):
            nxt = bases[k + 1] if k + 1 < len(bases) else None
            if nxt is not None and nxt <= after + 1:
                continue  # every record of this segment is <= after
            path = self._segment_path(base)
            try:
                fh = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 (a with below)
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"write-ahead log segment {path} disappeared during replay"
                ) from None
            with fh:
                stop = active_end if nxt is None else os.fstat(fh.fileno()).st_size
                expected = base
                try:
                    for seq, payload, _ in _frames(fh, 0, base, stop):
                        expected = seq + 1
                        if seq > after:
                            yield seq, payload
                except _BadFrame as bad:
                    raise FailedPrecondition(
                        f"write-ahead log segment {path} is corrupt: {bad.reason} at offset "
                        f"{bad.offset}"
                    ) from None
            if nxt is not None and expected != nxt:
                raise FailedPrecondition(
                    f"write-ahead log segment {path} ends before sequence {nxt - 1} (next "
                    f"segment starts at {nxt}): records are missing"
                )

    def truncate_before(self, sequence: int) -> int:
        """Delete the segments whose records are all <= ``sequence`` (a snapshot covers them);
        the active segment is kept. Returns how many segments were deleted."""
        with self._lock:
            if self._closed:
                raise FailedPrecondition(f"write-ahead log {self.directory} is closed")
            deleted = 0
            while len(self._bases) > 1 and self._bases[1] - 1 <= sequence:
                self._segment_path(self._bases[0]).unlink()
                del self._bases[0]
                deleted += 1
            if deleted:
                self._sync_dir()
            return deleted

    def close(self) -> None:
        """Close the files and release the directory lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._fd)
            os.close(self._lock_fd)

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
