"""The precision at which the prediction log keeps timings (migration 0008).

``predictions`` stores its microsecond timings (``total_latency_us``, ``ttft_us``,
``tpot_us``, ``queue_us``, ``model_time_us``, ``stage_durations_us``) rounded to
:data:`SIGNIFICANT_BITS` significant bits, to nearest: a value below 256 µs is exact, any other
is within 2^-8 (0.4%) of what the service measured. The low bits of a microsecond timer
are noise that no codec can compress away: rounding them saved 5.2 bytes of the 54.4 per row
(`llmops bench clickhouse`, deploy/clickhouse/SIZING.md), about 10% of the prediction log's
disk, while every dashboard quantile (TDigest, itself within ~0.5%) and every latency filter
keeps its meaning. Tokens, cost and status stay exact.

Both sink paths round the same way: :func:`round_us` in numpy (the Python path, the
synthetic data) and :func:`round_us_sql` in ClickHouse (the Protobuf path, where ClickHouse
makes the rows); tests/unit/test_timings.py holds them equal on every boundary.
"""

from __future__ import annotations

import numpy as np

SIGNIFICANT_BITS = 8
_LARGEST = ((1 << SIGNIFICANT_BITS) - 1) << (32 - SIGNIFICANT_BITS)
"""The largest UInt32 with 8 significant bits (0xFF000000): rounding never overflows."""


def round_us(values: np.ndarray) -> np.ndarray:
    """UInt32 microseconds rounded half up to :data:`SIGNIFICANT_BITS` significant bits."""
    v = np.asarray(values, dtype=np.uint64)
    # frexp's exponent is the bit length, exactly (a float64 holds every uint32)
    bit_length = np.frexp(v.astype(np.float64))[1].astype(np.int64)
    shift = np.maximum(bit_length - SIGNIFICANT_BITS, 0).astype(np.uint64)
    half = (np.uint64(1) << shift) >> np.uint64(1)
    rounded = ((v + half) >> shift) << shift
    out: np.ndarray = np.minimum(rounded, np.uint64(_LARGEST)).astype(np.uint32)
    return out


def round_us_sql(expr: str) -> str:
    """:func:`round_us` as a ClickHouse expression over a UInt32 ``expr``.

    ``log2`` of a UInt32 is exact enough in Float64 to give the bit length (log2(2^k - 1)
    stays below k). ``expr`` appears several times: pass a column or a ``WITH`` alias."""
    bit_length = f"(toInt16(floor(log2(greatest({expr}, 1)))) + 1)"
    shift = f"toUInt8(greatest({bit_length} - {SIGNIFICANT_BITS}, 0))"
    return (
        f"toUInt32(least(bitShiftLeft(bitShiftRight(toUInt64({expr}) + "
        f"bitShiftRight(bitShiftLeft(toUInt64(1), {shift}), 1), {shift}), {shift}), {_LARGEST}))"
    )
