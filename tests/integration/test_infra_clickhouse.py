"""ClickHouse server (Debian's 18.16) started by deploy/local/clickhouse.sh, via clickhouse-driver.

Only DDL/queries 18.16 supports: no TTL, CODEC, Map, DateTime64 (those run on chdb, see
test_infra_chdb.py). LowCardinality works because deploy/local enables it server-side.
"""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta

import pytest
from clickhouse_driver import Client

pytestmark = pytest.mark.infra

ROUTES = ["summary", "highlights", "translate", "intent"]


@pytest.fixture()
def ch(clickhouse_dsn: str):
    client = Client.from_url(clickhouse_dsn)
    db = f"test_infra_{uuid.uuid4().hex[:12]}"
    client.execute(f"CREATE DATABASE {db}")
    try:
        yield client, db
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def test_mergetree_columnar_insert_and_rollup(ch) -> None:
    client, db = ch
    version = client.execute("SELECT version()")[0][0]
    assert version.split(".")[0].isdigit()

    client.execute(f"""
        CREATE TABLE {db}.predictions (
            event_date Date,
            event_time DateTime,
            request_id String,
            route LowCardinality(String),
            model_version UInt32,
            latency_ms Float64,
            prompt_tokens UInt32,
            completion_tokens UInt32,
            blocked UInt8,
            tags Array(String)
        ) ENGINE = MergeTree()
        PARTITION BY toYYYYMMDD(event_date)
        ORDER BY (route, event_time)
    """)
    client.execute(f"""
        CREATE MATERIALIZED VIEW {db}.predictions_1m
        ENGINE = AggregatingMergeTree()
        PARTITION BY toYYYYMMDD(minute)
        ORDER BY (route, minute)
        AS SELECT
            route,
            toStartOfMinute(event_time) AS minute,
            countState() AS n,
            sumState(toUInt64(prompt_tokens + completion_tokens)) AS tokens,
            sumState(blocked) AS blocked
        FROM {db}.predictions
        GROUP BY route, minute
    """)

    rng = random.Random(42)
    n = 20_000
    t0 = datetime(2026, 11, 27, 12, 0, 0)
    times = [t0 + timedelta(seconds=i % 600) for i in range(n)]
    columns = [
        [t.date() for t in times],
        times,
        [f"req-{i}" for i in range(n)],
        [ROUTES[i % len(ROUTES)] for i in range(n)],
        [1 + i % 3 for i in range(n)],
        [rng.uniform(5, 50) for _ in range(n)],
        [rng.randint(10, 500) for _ in range(n)],
        [rng.randint(1, 200) for _ in range(n)],
        [1 if i % 97 == 0 else 0 for i in range(n)],
        [["a", "b"][: i % 3] for i in range(n)],
    ]
    inserted = client.execute(f"INSERT INTO {db}.predictions VALUES", columns, columnar=True)
    assert inserted == n

    assert client.execute(f"SELECT count() FROM {db}.predictions")[0][0] == n
    assert client.execute(f"SELECT sum(prompt_tokens) FROM {db}.predictions")[0][0] == sum(
        columns[6]
    )

    by_route = dict(
        client.execute(f"SELECT route, count() FROM {db}.predictions GROUP BY route ORDER BY route")
    )
    assert by_route == {r: n // len(ROUTES) for r in ROUTES}

    lat = client.execute(
        f"SELECT avg(latency_ms), quantileExact(0.5)(latency_ms) FROM {db}.predictions"
    )
    assert lat[0][0] == pytest.approx(sum(columns[5]) / n)
    assert 5 <= lat[0][1] <= 50

    # The per-minute rollup agrees with the raw rows without scanning them.
    rollup = client.execute(f"""
        SELECT countMerge(n), sumMerge(tokens), sumMerge(blocked), uniqExact(minute)
        FROM {db}.predictions_1m
    """)[0]
    assert rollup[0] == n
    assert rollup[1] == sum(columns[6]) + sum(columns[7])
    assert rollup[2] == sum(columns[8])
    assert rollup[3] == 10

    # Array column and LowCardinality survive the round trip.
    row = client.execute(
        f"SELECT route, tags, event_date FROM {db}.predictions WHERE request_id = 'req-5'"
    )
    assert row == [("highlights", ["a", "b"], date(2026, 11, 27))]
    lc_type = client.execute(
        f"SELECT type FROM system.columns WHERE database = '{db}' AND table = 'predictions' "
        "AND name = 'route'"
    )
    assert lc_type == [("LowCardinality(String)",)]
