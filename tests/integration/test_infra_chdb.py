"""chdb: the ClickHouse engine in-process, with the modern DDL the embedded mode uses."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.infra


def q(sess, sql: str) -> list[dict]:
    out = sess.query(sql, "JSONEachRow")
    text = out.bytes().decode() if hasattr(out, "bytes") else str(out)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_modern_mergetree_with_ttl_codecs_map_and_rollup(chdb_session) -> None:
    s = chdb_session
    s.query("CREATE DATABASE IF NOT EXISTS infra_test")
    s.query("DROP TABLE IF EXISTS infra_test.predictions_1m_mv")
    s.query("DROP TABLE IF EXISTS infra_test.predictions_1m")
    s.query("DROP TABLE IF EXISTS infra_test.predictions")
    s.query("""
        CREATE TABLE infra_test.predictions (
            event_time DateTime64(3, 'UTC') CODEC(Delta, ZSTD(3)),
            request_id String CODEC(ZSTD(3)),
            route LowCardinality(String),
            model_version LowCardinality(String),
            latency_ms Float32 CODEC(ZSTD(1)),
            prompt_tokens UInt32 CODEC(T64, ZSTD(1)),
            completion_tokens UInt32 CODEC(T64, ZSTD(1)),
            blocked UInt8,
            attributes Map(LowCardinality(String), String)
        ) ENGINE = MergeTree
        PARTITION BY toDate(event_time)
        ORDER BY (route, event_time)
        TTL toDateTime(event_time) + INTERVAL 30 DAY DELETE
    """)
    s.query("""
        CREATE TABLE infra_test.predictions_1m (
            route LowCardinality(String),
            minute DateTime('UTC'),
            n AggregateFunction(count),
            tokens AggregateFunction(sum, UInt64),
            blocked AggregateFunction(sum, UInt8),
            latency AggregateFunction(quantilesExact(0.5, 0.99), Float32)
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toDate(minute)
        ORDER BY (route, minute)
    """)
    s.query("""
        CREATE MATERIALIZED VIEW infra_test.predictions_1m_mv TO infra_test.predictions_1m AS
        SELECT
            route,
            toStartOfMinute(event_time) AS minute,
            countState() AS n,
            sumState(toUInt64(prompt_tokens + completion_tokens)) AS tokens,
            sumState(blocked) AS blocked,
            quantilesExactState(0.5, 0.99)(latency_ms) AS latency
        FROM infra_test.predictions
        GROUP BY route, minute
    """)

    n = 10_000
    s.query(f"""
        INSERT INTO infra_test.predictions
        SELECT
            toDateTime64('2026-11-27 12:00:00', 3, 'UTC') + toIntervalMillisecond(number * 30),
            concat('req-', toString(number)),
            ['summary', 'highlights', 'translate', 'intent'][(number % 4) + 1],
            concat('v', toString(number % 3)),
            toFloat32(5 + (number % 100) / 2),
            toUInt32(10 + number % 50),
            toUInt32(1 + number % 7),
            toUInt8(number % 97 = 0),
            map('market', ['NL', 'DE', 'FR'][(number % 3) + 1], 'device', 'mobile')
        FROM numbers({n})
    """)
    # Literal map syntax too (the fast form in VALUES).
    s.query("""
        INSERT INTO infra_test.predictions VALUES
        ('2026-11-27 12:10:00.000', 'req-extra', 'summary', 'v9', 12.5, 100, 20, 0,
         {'market': 'ES', 'device': 'desktop'})
    """)
    # Already past its TTL: removed on merge.
    s.query("""
        INSERT INTO infra_test.predictions VALUES
        (now64(3) - toIntervalDay(60), 'req-expired', 'summary', 'v1', 1, 1, 1, 0, {})
    """)
    s.query("OPTIMIZE TABLE infra_test.predictions FINAL")

    total = q(s, "SELECT count() AS c, sum(prompt_tokens) AS p FROM infra_test.predictions")[0]
    assert int(total["c"]) == n + 1
    assert int(total["p"]) == sum(10 + i % 50 for i in range(n)) + 100
    assert q(s, "SELECT count() AS c FROM infra_test.predictions WHERE request_id = 'req-expired'")[
        0
    ]["c"] in (0, "0")

    markets = {
        r["m"]: int(r["c"])
        for r in q(
            s,
            """
        SELECT attributes['market'] AS m, count() AS c FROM infra_test.predictions GROUP BY m
    """,
        )
    }
    assert markets == {"NL": 3334, "DE": 3333, "FR": 3333, "ES": 1}

    # The rollup matches the raw rows (the expired row's minute is long gone from raw, and
    # its rollup row is the only one outside 2026-11-27).
    raw = q(
        s,
        """
        SELECT route, count() AS n, sum(prompt_tokens + completion_tokens) AS tokens,
               quantilesExact(0.5, 0.99)(latency_ms) AS lat
        FROM infra_test.predictions GROUP BY route ORDER BY route
    """,
    )
    rolled = q(
        s,
        """
        SELECT route, countMerge(n) AS n, sumMerge(tokens) AS tokens,
               quantilesExactMerge(0.5, 0.99)(latency) AS lat
        FROM infra_test.predictions_1m WHERE toDate(minute) = '2026-11-27'
        GROUP BY route ORDER BY route
    """,
    )
    assert rolled == raw

    ddl = q(
        s,
        "SELECT create_table_query AS ddl FROM system.tables "
        "WHERE database = 'infra_test' AND name = 'predictions'",
    )[0]["ddl"]
    assert "TTL" in ddl
    codecs = {
        r["name"]: r["compression_codec"]
        for r in q(
            s,
            """
        SELECT name, compression_codec FROM system.columns
        WHERE database = 'infra_test' AND table = 'predictions'
    """,
        )
    }
    assert codecs["event_time"] == "CODEC(Delta(8), ZSTD(3))"
    types = {
        r["name"]: r["type"]
        for r in q(
            s,
            """
        SELECT name, type FROM system.columns
        WHERE database = 'infra_test' AND table = 'predictions'
    """,
        )
    }
    assert types["attributes"] == "Map(LowCardinality(String), String)"
    assert types["route"] == "LowCardinality(String)"


def test_a_statement_made_for_an_rpc_stops_at_the_callers_deadline(chdb_session) -> None:
    """In an RPC, a chdb statement carries max_execution_time from the caller's deadline and
    waits for the shared session no longer than the caller: a long query no longer runs on,
    holding the session (and every sink) after its caller gave up."""
    import threading
    import time

    from llmops.callcontext import deadline_var
    from llmops.clickhouse.base import ClickHouseQueryError, ClickHouseUnavailable
    from llmops.clickhouse.chdb_store import ChdbStore, _session_lock

    store = ChdbStore(chdb_session)
    token = deadline_var.set(time.monotonic() + 1.0)
    try:
        began = time.monotonic()
        with pytest.raises(ClickHouseQueryError) as stopped:
            store.query(
                "SELECT count() AS n FROM numbers(1000000000000) WHERE sipHash64(number) = 1"
            )
        took = time.monotonic() - began
    finally:
        deadline_var.reset(token)
    assert stopped.value.ch_code == 159 and took < 5  # TIMEOUT_EXCEEDED
    # outside an RPC the session has no limit again
    assert store.query("SELECT getSetting('max_execution_time') AS t")[0]["t"] == 0

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _session_lock(chdb_session):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    token = deadline_var.set(time.monotonic() + 0.3)
    try:
        began = time.monotonic()
        with pytest.raises(ClickHouseUnavailable, match="busy"):
            store.query("SELECT 1 AS one")
        assert time.monotonic() - began < 2
    finally:
        deadline_var.reset(token)
        release.set()
        holder.join()
    assert store.query("SELECT 1 AS one") == [{"one": 1}]
