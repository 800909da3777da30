"""Event ids: UUIDv7 (RFC 9562) in canonical lowercase text, as events.proto requires."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

_POOL_BYTES = 8192
_ID_BYTES = 10


class _RandomPool(threading.local):
    """Random bytes from the OS CSPRNG, fetched 8 KiB at a time.

    One ``os.urandom`` call costs ~9 µs on our VMs (a getrandom syscall), more than the
    rest of an id; reading 819 ids' worth at once keeps the bytes cryptographically random
    while the syscall all but disappears. Per thread (no lock); cleared in a forked child
    so parent and child can never hand out the same bytes.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            self.buf = os.urandom(_POOL_BYTES)
            self.pos = 0
        start = self.pos
        self.pos = start + n
        return self.buf[start : start + n]


_pool = _RandomPool()


def _reset_after_fork() -> None:
    _pool.buf = b""
    _pool.pos = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def uuid7(unix_ms: int | None = None) -> str:
    """A new UUIDv7: 48 bits of Unix time in ms (now, or ``unix_ms``), then 74 random bits.

    Time-ordered across milliseconds; within one millisecond the order is random (RFC 9562
    allows it), which is all ClickHouse sorting and deduplication need.
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    return _layout(ms, int.from_bytes(_pool.take(_ID_BYTES), "big"))


def _layout(ms: int, rand: int) -> str:
    """The canonical text of the UUIDv7 of ``ms`` and 80 bits ``rand`` (74 are used)."""
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 64 & 0x0FFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    h = f"{value:032x}"  # formatting by hand: a third of the cost of str(uuid.UUID(int=...))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""A random hex digit made an RFC 9562 variant digit (0b10xx)."""


def uuid7_many(count: int, unix_ms: int | None = None) -> list[str]:
    """``count`` new UUIDv7s of one millisecond (now, or ``unix_ms``): what :func:`uuid7`
    makes, for a batch at a fifth of the cost (one hex conversion of all the random bytes;
    a batch's events share their accept time anyway)."""
    if count <= 0:
        return []
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    t = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    head = f"{t[:8]}-{t[8:12]}-7"
    size = count * _ID_BYTES
    rand = (_pool.take(size) if size <= _POOL_BYTES // 4 else os.urandom(size)).hex()
    variant = _VARIANT
    return [
        f"{head}{r[:3]}-{variant[r[3]]}{r[4:7]}-{r[7:19]}"
        for r in (rand[i : i + 20] for i in range(0, len(rand), 20))
    ]


_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def retry_stable_uuid7(request_id: str, *parts: str) -> str:
    """An event id that every attempt of one call makes alike, so the sinks' ``event_id``
    window drops what a retried call publishes again (gRPC retries resend the same
    ``x-request-id``, and events keyed by it land on the same partition).

    When ``request_id`` is a UUIDv7 (what the mesh's clients mint), the id keeps its
    millisecond (still time-ordered) and takes the rest from a hash of ``request_id`` and
    ``parts``, which must name the event fully (what was decided, about which input):
    two different events of one call must differ in ``parts``. Any other request id cannot
    vouch for a retry (a caller may reuse a plain id for unrelated calls): a new random
    UUIDv7 then, as :func:`uuid7` makes.
    """
    if not _UUID7.fullmatch(request_id):
        return uuid7()
    ms = int(request_id[:8] + request_id[9:13], 16)
    h = hashlib.blake2b(request_id.encode(), digest_size=10)
    for part in parts:
        h.update(b"\x1f")
        h.update(part.encode("utf-8", "surrogatepass"))
    return _layout(ms, int.from_bytes(h.digest(), "big"))
