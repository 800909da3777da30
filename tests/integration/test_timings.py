"""Timings rounded to 8 significant bits: numpy (the Python sink path, synthetic data) and
ClickHouse SQL (the Protobuf path) agree on every boundary, and the error stays in bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.timings import SIGNIFICANT_BITS, round_us, round_us_sql

pytestmark = pytest.mark.infra


def _boundaries() -> np.ndarray:
    values = [0, 1, 255, 256, 257, 0xFEFFFFFF, 0xFF000000, 0xFF7FFFFF, 0xFF800000, 2**32 - 1]
    values += [(1 << k) + d for k in range(1, 33) for d in (-2, -1, 0, 1, 2)]
    rng = np.random.default_rng(7)
    values += rng.integers(0, 2**32, 3000).tolist()
    values += rng.lognormal(8, 3, 3000).clip(0, 2**32 - 1).astype(np.int64).tolist()
    return np.array([v for v in values if 0 <= v < 2**32], dtype=np.uint32)


def test_numpy_and_sql_round_alike(chdb_session: Any) -> None:
    values = _boundaries()
    store = ChdbStore(chdb_session)
    listed = ",".join(map(str, values.tolist()))
    got = store.query(
        f"SELECT arrayMap(x -> {round_us_sql('x')}, CAST([{listed}], 'Array(UInt32)')) AS r"
    )[0]["r"]
    assert np.array_equal(np.array(got, dtype=np.uint32), round_us(values))


def test_rounding_bounds() -> None:
    values = _boundaries()
    rounded = round_us(values).astype(np.float64)
    small = values < 2**SIGNIFICANT_BITS
    assert np.array_equal(rounded[small], values[small])  # exact below 256 us
    error = np.abs(rounded - values) / np.maximum(values, 1)
    assert error.max() <= 2.0**-SIGNIFICANT_BITS
    # 8 significant bits at most: the value is a multiple of its last kept bit
    kept = np.frexp(rounded)[1] - SIGNIFICANT_BITS
    step = np.exp2(np.maximum(kept, 0))
    assert np.all(np.mod(rounded, step) == 0)
    assert round_us(np.array([300_123], dtype=np.uint32))[0] == 301_056  # 147 * 2^11
