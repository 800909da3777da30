"""The prediction log's timings (migration 0008): written exact to the ``*_in`` columns,
stored as the bfloat16 bit pattern of the value (8 significant bits, rounded half up in
magnitude), read back as UInt32 microseconds under their old names. Checked against a numpy
reference on every boundary, through a real insert into the full schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations

pytestmark = pytest.mark.infra

TIMINGS = ("total_latency_us", "ttft_us", "tpot_us", "queue_us", "model_time_us")
LARGEST = 0xFF000000
"""The largest UInt32 with 8 significant bits: larger values (over 71 minutes) clamp to it."""


def reference(values: np.ndarray) -> np.ndarray:
    """What the table gives back for ``values``: float32 bits rounded at bit 16, decoded."""
    bits = np.minimum(values, np.uint32(LARGEST)).astype(np.float32).view(np.uint32)
    code = ((bits.astype(np.uint64) + 0x8000) >> 16).astype(np.uint32)
    decoded: np.ndarray = (code << 16).view(np.float32).astype(np.uint32)
    return decoded


def boundaries() -> np.ndarray:
    values = [0, 1, 255, 256, 257, 0xFEFFFFFF, LARGEST, 0xFF7FFFFF, 0xFF800000, 2**32 - 1]
    values += [(1 << k) + d for k in range(1, 33) for d in (-2, -1, 0, 1, 2)]
    rng = np.random.default_rng(7)
    values += rng.integers(0, 2**32, 2000).tolist()
    values += rng.lognormal(8, 3, 2000).clip(0, 2**32 - 1).astype(np.int64).tolist()
    return np.array([v for v in values if 0 <= v < 2**32], dtype=np.uint32)


@pytest.fixture
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    database = f"it_timings_{uuid.uuid4().hex[:8]}"
    ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
    s = ChdbStore(chdb_session, database=database)
    apply_migrations(s)
    yield s
    s.execute(f"DROP DATABASE IF EXISTS {database}")


def test_reference_bounds() -> None:
    values = boundaries()
    got = reference(values).astype(np.float64)
    small = values < 256
    assert np.array_equal(got[small], values[small])  # exact below 256 us
    kept = values < LARGEST
    error = np.abs(got[kept] - values[kept]) / np.maximum(values[kept], 1)
    assert error.max() <= 2.0**-8  # within 0.4%
    assert reference(np.array([300_123], dtype=np.uint32))[0] == 301_056  # 147 * 2^11


def test_table_rounds_every_timing_like_the_reference(store: ChdbStore) -> None:
    values = boundaries()
    n = len(values)
    columns: dict[str, Any] = {
        "event_time": np.full(n, np.datetime64("2026-12-01T00:00:00.000"), dtype="datetime64[ms]"),
        "tenant": ["acme"] * n,
        "log_offset": np.arange(n, dtype=np.uint64),
        "stage_names": [["model", "log"]] * n,
        "stage_durations_us_in": [[int(v), int(v) // 3] for v in values],
    }
    for name in TIMINGS:
        columns[f"{name}_in"] = values
    store.insert("predictions", columns)
    got = store.query(
        f"SELECT log_offset, {', '.join(TIMINGS)}, stage_durations_us FROM predictions "
        "ORDER BY log_offset"
    )
    expected = reference(values)
    expected_thirds = reference(values // 3)
    for name in TIMINGS:
        assert np.array_equal(np.array([r[name] for r in got], dtype=np.uint32), expected), name
    stages = np.array([r["stage_durations_us"] for r in got], dtype=np.uint32)
    assert np.array_equal(stages[:, 0], expected)
    assert np.array_equal(stages[:, 1], expected_thirds)
    # the rollups see the stored values too
    rolled = store.query("SELECT sum(calls) AS n FROM prediction_stages_1h")[0]["n"]
    assert rolled == 2 * n
