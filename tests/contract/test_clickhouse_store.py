"""One contract, two backends: ChdbStore (chdb in-process) and ServerStore (native protocol,
against the Debian 18.16 server). Only types 18.16 supports are used here; the full modern
schema is validated on chdb in tests/integration/test_clickhouse_schema.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops.clickhouse import ClickHouseQueryError, ClickHouseStore, open_store
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.server_store import with_database

pytestmark = pytest.mark.infra

DB = "contract_clickhouse_store"
DDL = """
CREATE TABLE IF NOT EXISTS events (
    day Date,
    at DateTime('UTC'),
    id UUID,
    route LowCardinality(String),
    note String,
    tags Array(String),
    n UInt32,
    x Float64,
    big Int64
) ENGINE = MergeTree PARTITION BY day ORDER BY (route, at)
"""
NASTY = "it's a \\ back'slash; DROP TABLE events; -- é ☃"


@pytest.fixture(params=["chdb", "server"])
def store(request: pytest.FixtureRequest) -> Iterator[ClickHouseStore]:
    if request.param == "chdb":
        s = open_store("chdb", chdb_session=request.getfixturevalue("chdb_session"), database=DB)
    else:
        dsn = request.getfixturevalue("clickhouse_dsn")
        s = open_store("server", dsn=with_database(dsn, DB))
    s.execute("DROP TABLE IF EXISTS events")
    s.execute(DDL)
    try:
        yield s
    finally:
        s.execute("DROP TABLE IF EXISTS events")
        s.close()


def _columns(n: int) -> dict[str, Any]:
    at = 1_790_000_000 + np.arange(n) * 3600
    return {
        "day": at.astype("datetime64[s]").astype("datetime64[D]"),
        "at": at.astype("datetime64[s]"),
        "id": [str(uuid.UUID(int=i + 1)) for i in range(n)],
        "route": ["summary" if i % 2 else "intent" for i in range(n)],
        "note": [NASTY if i == 0 else f"note {i}" for i in range(n)],
        "tags": [["a", "b"][: i % 3] for i in range(n)],
        "n": np.arange(n, dtype=np.uint32),
        "x": np.linspace(0, 1, n),
        "big": np.array([-(2**62) + i for i in range(n)], dtype=np.int64),
    }


def test_insert_and_query_round_trip(store: ClickHouseStore) -> None:
    assert store.insert("events", _columns(50)) == 50
    rows = store.query("SELECT * FROM events WHERE note = %(note)s", {"note": NASTY})
    assert rows == [
        {
            "day": date(2026, 9, 21),
            "at": datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC),
            "id": uuid.UUID(int=1),
            "route": "intent",
            "note": NASTY,
            "tags": [],
            "n": 0,
            "x": 0.0,
            "big": -(2**62),
        }
    ]
    agg = store.query(
        "SELECT route, count() AS c, sum(n) AS s FROM events WHERE at >= %(t)s "
        "AND route IN %(routes)s GROUP BY route ORDER BY route",
        {"t": datetime(2026, 9, 21, 15, 0, tzinfo=UTC), "routes": ("summary", "intent")},
    )
    assert agg == [
        {"route": "intent", "c": 24, "s": sum(range(2, 50, 2))},
        {"route": "summary", "c": 25, "s": sum(range(1, 50, 2))},
    ]
    assert store.query("SELECT tags FROM events WHERE n = 2") == [{"tags": ["a", "b"]}]


def test_lists_work_as_columns_too(store: ClickHouseStore) -> None:
    """Plain Python lists for numbers, strings and arrays (times stay numpy datetime64)."""
    cols = {k: v.tolist() if k in ("n", "x", "big") else v for k, v in _columns(3).items()}
    assert store.insert("events", cols) == 3
    assert store.query("SELECT count() AS c, sum(n) AS s FROM events") == [{"c": 3, "s": 3}]


def test_errors(store: ClickHouseStore) -> None:
    with pytest.raises(ClickHouseQueryError) as err:
        store.query("SELECT no_such_column FROM events")
    assert err.value.ch_code == 47
    with pytest.raises(ClickHouseQueryError):
        store.execute("SELEC 1")
    assert store.insert("events", {k: v[:0] for k, v in _columns(1).items()}) == 0
    with pytest.raises(ValueError):
        store.insert("events", {"n": np.arange(2, dtype=np.uint32), "x": np.zeros(3)})


def test_migrations_apply_once(store: ClickHouseStore, tmp_path: Path) -> None:
    store.execute("DROP TABLE IF EXISTS llmops_migrations")
    store.execute("DROP TABLE IF EXISTS contract_m")
    store.execute("DROP TABLE IF EXISTS contract_m2")
    (tmp_path / "0001_first.sql").write_text(
        "CREATE TABLE IF NOT EXISTS contract_m (a UInt8) ENGINE = MergeTree ORDER BY a;\n"
    )
    (tmp_path / "0002_second.sql").write_text(
        "CREATE TABLE IF NOT EXISTS contract_m2 (b String) ENGINE = MergeTree ORDER BY b;\n"
    )
    try:
        assert apply_migrations(store, tmp_path) == ["0001_first", "0002_second"]
        assert apply_migrations(store, tmp_path) == []
        names = [
            r["name"]
            for r in store.query(
                "SELECT name FROM system.tables WHERE database = %(db)s "
                "AND name LIKE 'contract_m%' ORDER BY name",
                {"db": store.database},
            )
        ]
        assert names == ["contract_m", "contract_m2"]
    finally:
        store.execute("DROP TABLE IF EXISTS llmops_migrations")
        store.execute("DROP TABLE IF EXISTS contract_m")
        store.execute("DROP TABLE IF EXISTS contract_m2")
