"""Event ids: UUIDv7 (RFC 9562) in canonical lowercase text, as events.proto requires."""

from __future__ import annotations

import os
import time


def uuid7(unix_ms: int | None = None) -> str:
    """A new UUIDv7: 48 bits of Unix time in ms (now, or ``unix_ms``), then 74 random bits.

    Time-ordered across milliseconds; within one millisecond the order is random (RFC 9562
    allows it), which is all ClickHouse sorting and deduplication need.
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 64 & 0x0FFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    h = f"{value:032x}"  # formatting by hand: a third of the cost of str(uuid.UUID(int=...))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
