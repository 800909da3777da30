"""``ClickHouseStore.query_columns``, the bulk-read path: the same columns from chdb and the
server, numbers as int/float, strings as undecoded bytes, other types refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseStore
from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.server_store import ServerStore, with_database

pytestmark = pytest.mark.infra

SELECT = (
    "SELECT number AS n, toFloat64(number) / 2 AS half, toString(number) AS s, "
    "unhex('00ff') AS raw, toFixedString('ab', 2) AS fixed "
    "FROM system.numbers LIMIT 3"
)


def _check(store: ClickHouseStore) -> None:
    cols = store.query_columns(SELECT)
    assert cols == {
        "n": [0, 1, 2],
        "half": [0.0, 0.5, 1.0],
        "s": [b"0", b"1", b"2"],
        "raw": [b"\x00\xff"] * 3,  # not UTF-8: still read
        "fixed": [b"ab"] * 3,
    }
    assert store.query_columns("SELECT number AS n FROM system.numbers WHERE 0 LIMIT 1") in (
        {},
        {"n": []},
    )
    with pytest.raises(ClickHouseQueryError, match="numbers and strings only"):
        store.query_columns("SELECT [1, 2] AS a")


@pytest.fixture
def chdb_store(chdb_session: Any) -> Iterator[ChdbStore]:
    yield ChdbStore(chdb_session, database=f"it_cols_{uuid.uuid4().hex[:8]}")


def test_chdb(chdb_store: ChdbStore) -> None:
    _check(chdb_store)
    assert chdb_store.query_columns("SELECT number AS n FROM system.numbers WHERE 0 LIMIT 1") == {
        "n": []
    }


def test_server(clickhouse_dsn: str) -> None:
    store = ServerStore(with_database(clickhouse_dsn, "it_query_columns"))
    try:
        _check(store)
    finally:
        store.close()
