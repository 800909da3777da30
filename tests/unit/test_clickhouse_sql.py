"""Safe SQL rendering and result conversion shared by both ClickHouse backends."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from llmops.clickhouse.sql import identifier, literal, render, split_statements
from llmops.clickhouse.values import converter


def test_strings_are_escaped_not_interpolated() -> None:
    assert literal("it's") == "'it\\'s'"
    assert literal("a\\b") == "'a\\\\b'"
    assert literal("x'; DROP TABLE predictions; --") == "'x\\'; DROP TABLE predictions; --'"
    assert literal("line\nnext\t\0") == "'line\\nnext\\t\\0'"


def test_scalars_times_and_collections() -> None:
    assert literal(None) == "NULL"
    assert literal(True) == "1"
    assert literal(42) == "42"
    assert literal(float("nan")) == "nan"
    assert literal(float("-inf")) == "-inf"
    assert literal(b"\x00\xff") == "'\\x00\\xff'"
    assert literal(date(2026, 1, 2)) == "toDate('2026-01-02')"
    assert literal(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "toDateTime('2026-01-02 03:04:05', 'UTC')"
    )
    cet = timezone(timedelta(hours=1))
    assert literal(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=cet)) == (
        "toDateTime64('2026-01-02 02:04:05.120000', 6, 'UTC')"
    )
    u = uuid.UUID("0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77")
    assert literal(u) == f"toUUID('{u}')"
    assert literal(["a", 1]) == "['a', 1]"
    assert literal(("a",)) == "('a',)"
    assert literal(("a", "b")) == "('a', 'b')"


def test_naive_datetimes_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        literal(datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        literal(object())


def test_render_only_touches_placeholders() -> None:
    sql = "SELECT * FROM t WHERE a = %(a)s AND b LIKE 'x%' AND c IN %(c)s"
    assert render(sql, {"a": "o'k", "c": (1, 2)}) == (
        "SELECT * FROM t WHERE a = 'o\\'k' AND b LIKE 'x%' AND c IN (1, 2)"
    )
    assert render(sql, None) == sql
    with pytest.raises(KeyError):
        render("SELECT %(missing)s", {"a": 1})


def test_identifiers_are_validated() -> None:
    assert identifier("predictions_1m") == "predictions_1m"
    for bad in ("a b", "t; DROP", "`x`", "1abc", ""):
        with pytest.raises(ValueError):
            identifier(bad)


def test_split_statements() -> None:
    text = "-- comment\nCREATE TABLE a (x UInt8)\nENGINE = Log;\n\nSELECT 'a;b';\nSELECT 2"
    assert split_statements(text) == [
        "CREATE TABLE a (x UInt8)\nENGINE = Log",
        "SELECT 'a;b'",
        "SELECT 2",
    ]


def test_converters_by_type() -> None:
    dt = converter("DateTime64(3, 'UTC')")("2026-01-02 03:04:05.123")
    assert dt == datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    local = converter("DateTime('Europe/Amsterdam')")("2026-01-02 03:04:05")
    assert local == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert converter("Nullable(Date)")(None) is None
    assert converter("LowCardinality(String)")("x") == "x"
    assert converter("Map(String, Array(UUID))")(
        {"k": ["0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77"]}
    ) == {"k": [uuid.UUID("0190f2a4-8c1e-7b3a-9f00-2d6c1a4b5e77")]}
    assert converter("Tuple(a UInt8, b String)")({"a": 1, "b": "x"}) == (1, "x")
    assert str(converter("Decimal(38, 9)")(1.5)) == "1.5"


def test_open_store_validates_its_arguments() -> None:
    from llmops.clickhouse import open_store

    with pytest.raises(ValueError, match="unknown ClickHouse backend"):
        open_store("postgres")
    with pytest.raises(ValueError, match="chdb_session"):
        open_store("chdb")
    with pytest.raises(ValueError, match="dsn"):
        open_store("server")
    store = open_store("server", dsn="clickhouse://u:p@db.internal:9000/prod", database="llmops")
    assert store.name == "server" and store.database == "llmops"  # connects lazily
