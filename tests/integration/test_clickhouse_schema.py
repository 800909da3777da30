"""The full schema on chdb (the reference engine): migrations, rollups vs raw rows, dedup,
query helpers. All tests share the process's chdb session (one data path per process)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmops.clickhouse import queries, rows, synthetic, values
from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import (
    MigrationChecksumMismatch,
    apply_migrations,
    default_directory,
)
from llmops.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.infra

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = END - timedelta(hours=2)
ROWS = 60_000


@pytest.fixture(scope="module")
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    s = ChdbStore(chdb_session, database="it_clickhouse_schema")
    s.execute("DROP DATABASE IF EXISTS it_clickhouse_schema")
    s = ChdbStore(chdb_session, database="it_clickhouse_schema")
    assert apply_migrations(s) == [
        "0001_raw_tables",
        "0002_rollups",
        "0003_lean_predictions",
        "0004_drift",
        "0005_feedback_signals",
        "0006_prediction_skipped_steps",
        "0007_feedback_rollups",
        "0008_compact_predictions",
    ]
    chunks = synthetic.prediction_chunks(
        ROWS,
        15_000,
        seed=11,
        start_ms=int(START.timestamp() * 1000),
        end_ms=int(END.timestamp() * 1000),
    )
    for i, cols in enumerate(chunks):
        assert s.insert("predictions", cols, dedup_token=f"load-{i}") == 15_000
    yield s
    s.execute("DROP DATABASE IF EXISTS it_clickhouse_schema")


def test_migrations_are_idempotent_and_recorded(store: ChdbStore) -> None:
    assert apply_migrations(store) == []
    recorded = store.query("SELECT version, name, checksum FROM llmops_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [
        (1, "raw_tables"),
        (2, "rollups"),
        (3, "lean_predictions"),
        (4, "drift"),
        (5, "feedback_signals"),
        (6, "prediction_skipped_steps"),
        (7, "feedback_rollups"),
        (8, "compact_predictions"),
    ]
    assert all(len(r["checksum"]) == 64 for r in recorded)
    tables = {
        r["name"]
        for r in store.query(
            "SELECT name FROM system.tables WHERE database = %(db)s", {"db": store.database}
        )
    }
    assert {
        "predictions",
        "prediction_payloads",
        "feedback",
        "exposures",
        "guardrail_decisions",
        "audit",
        "predictions_1m",
        "predictions_1h",
        "prediction_stages_1h",
        "guardrail_decisions_1m",
        "exposures_1h",
    } <= tables


def test_changed_migration_is_refused(chdb_session: Any, tmp_path: Path) -> None:
    for f in default_directory().glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    s = ChdbStore(chdb_session, database="it_clickhouse_migrations")
    try:
        assert len(apply_migrations(s, tmp_path)) == 8
        first = tmp_path / "0001_raw_tables.sql"
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationChecksumMismatch, match="0001_raw_tables"):
            apply_migrations(s, tmp_path)
    finally:
        s.execute("DROP DATABASE IF EXISTS it_clickhouse_migrations")


def test_schema_features(store: ChdbStore) -> None:
    ddl = store.query(
        "SELECT create_table_query AS q FROM system.tables "
        "WHERE database = %(db)s AND name = 'predictions'",
        {"db": store.database},
    )
    q = ddl[0]["q"]
    for feature in (
        "PARTITION BY toDate(event_time)",
        "ORDER BY (tenant, route, model_name,",
        "TTL toDateTime(event_time) + toIntervalDay(90)",
        "bloom_filter",
        "non_replicated_deduplication_window = 1000",
        "CODEC(T64, ZSTD(1))",
    ):
        assert feature in q, feature
    types = {
        r["name"]: r["type"]
        for r in store.query(
            "SELECT name, type FROM system.columns "
            "WHERE database = %(db)s AND table = 'predictions'",
            {"db": store.database},
        )
    }
    assert types["route"] == "LowCardinality(String)"
    assert types["event_time"] == "DateTime64(3, 'UTC')"
    assert types["request_id"] == "UUID"
    assert not {"event_id", "user_id", "session_id"} & types.keys()  # migration 0003


def test_rollup_counters_equal_raw_and_quantiles_are_close(store: ChdbStore) -> None:
    rolled = queries.model_stats(store, START, END)
    raw = queries.model_stats(store, START, END, raw=True)
    assert sum(r["requests"] for r in rolled) == ROWS
    counters = (
        "tenant",
        "route",
        "model_name",
        "model_version",
        "variant",
        "requests",
        "errors",
        "cache_hits",
        "guardrail_blocks",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    )
    assert [[r[c] for c in counters] for r in rolled] == [[r[c] for c in counters] for r in raw]
    exact = {
        (r["route"], r["model_name"], r["model_version"], r["variant"]): r["q"]
        for r in store.query(
            "SELECT route, model_name, model_version, variant, count() AS n, "
            "quantilesExact(0.5, 0.95)(total_latency_us) AS q FROM predictions "
            "GROUP BY route, model_name, model_version, variant HAVING n >= 1000"
        )
    }
    assert exact, "the dataset has busy groups"
    for r in rolled:
        key = (r["route"], r["model_name"], r["model_version"], r["variant"])
        if key in exact:
            assert r["latency_us_p50"] == pytest.approx(exact[key][0], rel=0.03)
            assert r["latency_us_p95"] == pytest.approx(exact[key][1], rel=0.05)


def test_hourly_stage_and_timeseries_rollups_match_raw(store: ChdbStore) -> None:
    for fn in (queries.stage_latencies, queries.daily_totals):
        rolled, raw = fn(store, START, END), fn(store, START, END, raw=True)
        assert len(rolled) == len(raw) > 0
        for a, b in zip(rolled, raw, strict=True):
            for k, v in a.items():
                if "_p" in k:
                    assert v == pytest.approx(b[k], rel=0.05), k
                else:
                    assert v == b[k], k
    series = queries.timeseries(store, START, END, route="route-00")
    raw_series = queries.timeseries(store, START, END, route="route-00", raw=True)
    assert [(r["bucket"], r["requests"], r["errors"]) for r in series] == [
        (r["bucket"], r["requests"], r["errors"]) for r in raw_series
    ]
    assert series[0]["bucket"].tzinfo is not None


def test_retried_insert_with_token_is_ignored_everywhere(store: ChdbStore) -> None:
    cols = next(
        synthetic.prediction_chunks(
            1000,
            1000,
            seed=99,
            start_ms=int((END - timedelta(minutes=5)).timestamp() * 1000),
            end_ms=int(END.timestamp() * 1000),
        )
    )
    before = queries.model_stats(store, START, END)
    store.insert("predictions", cols, dedup_token="retry-1")
    store.insert("predictions", cols, dedup_token="retry-1")
    after = queries.model_stats(store, START, END)
    assert sum(r["requests"] for r in after) == sum(r["requests"] for r in before) + 1000
    raw = store.query("SELECT count() AS n FROM predictions")[0]["n"]
    assert raw == ROWS + 1000
    hourly = store.query("SELECT sum(requests) AS n FROM predictions_1h")[0]["n"]
    assert hourly == ROWS + 1000


def test_events_through_rows_into_rollups(store: ChdbStore) -> None:
    now_s = int(time.time())
    envelopes = []
    for i in range(40):
        ev = events_pb2.GuardrailDecisionEvent(
            event_id=f"0190f2a4-8c1e-7b3a-9f00-{i:012d}",
            request_id=f"r{i}",
            tenant="acme",
            policy="pii-default",
            policy_version=2,
            direction=common_pb2.DIRECTION_OUTPUT,
            verdict=common_pb2.VERDICT_BLOCK if i % 4 == 0 else common_pb2.VERDICT_ALLOW,
            latency_us=100 + i,
            degraded=i == 3,
            findings=[common_pb2.GuardrailFinding(type="pii.email", detector="pii")] * (i % 3),
        )
        ev.event_time.FromSeconds(now_s)
        envelopes.append(
            (
                "llmops.guardrail-decisions.v1",
                1,
                500 + i,
                events_pb2.EventEnvelope(guardrail_decision=ev),
            )
        )
    tables = rows.columns_for(envelopes)
    store.insert("guardrail_decisions", tables["guardrail_decisions"], dedup_token="gd-1")
    window = (datetime.now(UTC) - timedelta(minutes=10), datetime.now(UTC) + timedelta(minutes=2))
    rolled = queries.guardrail_stats(store, *window, tenant="acme")
    raw = queries.guardrail_stats(store, *window, tenant="acme", raw=True)
    assert [(r["verdict"], r["decisions"], r["degraded"], r["findings"]) for r in rolled] == [
        ("ALLOW", 30, 1, 30),
        ("BLOCK", 10, 0, 9),
    ]
    assert [r["decisions"] for r in raw] == [30, 10]
    assert queries.high_water_mark(store, ("llmops.guardrail-decisions.v1", 1), now_s * 1000) == 539
    assert (
        queries.high_water_mark(store, ("llmops.guardrail-decisions.v1", 2), now_s * 1000) is None
    )


def test_recent_predictions_and_table(store: ChdbStore) -> None:
    recent = queries.recent_predictions(
        store, END - timedelta(minutes=30), limit=5, route="route-00"
    )
    assert len(recent) == 5
    times = [r["event_time"] for r in recent]
    assert times == sorted(times, reverse=True)
    text = queries.format_table(recent)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["event_time", "request_id", "tenant"]
    assert len(lines) == 7 and "route-00" in lines[2]
    assert recent[0]["event_time"].tzinfo is not None
    marks = queries.log_high_water_marks(store, "predictions", synthetic.TOPIC)
    assert len(marks) == synthetic.PARTITIONS
    total = store.query(
        "SELECT count() AS n FROM predictions WHERE log_topic = %(t)s", {"t": synthetic.TOPIC}
    )[0]["n"]
    # offsets start at 0 per partition: the marks account for every distinct offset
    distinct = store.query("SELECT uniqExact(log_partition, log_offset) AS n FROM predictions")
    assert sum(m + 1 for m in marks.values()) <= distinct[0]["n"] <= total
    assert np.all(np.array(list(marks.values())) > 0)


def test_cluster_form_parses(store: ChdbStore) -> None:
    """The cluster DDL is not applied here (chdb has no Keeper; the local 18.16 server with
    ZooKeeper cannot take its modern DDL); check that every statement parses."""
    from llmops.clickhouse.sql import split_statements

    cluster = default_directory().parent / "cluster"
    statements = [s for f in sorted(cluster.glob("*.sql")) for s in split_statements(f.read_text())]
    assert len(statements) >= 10
    for statement in statements:
        store.query("EXPLAIN AST " + statement)


def test_lean_predictions_migration_keeps_every_row(chdb_session: Any, tmp_path: Path) -> None:
    """0003 on a database with 0001-form rows: every row is copied (request ids mapped as the
    sink maps them), the old table is kept, and the rollups do not count the copy twice."""
    for f in sorted(default_directory().glob("*.sql"))[:2]:
        shutil.copy(f, tmp_path / f.name)
    s = ChdbStore(chdb_session, database="it_clickhouse_0003")
    try:
        assert apply_migrations(s, tmp_path) == ["0001_raw_tables", "0002_rollups"]
        old_ids = [
            "0190F2A4-8C1E-7B3A-9F00-000000000001",
            "caller-id-7",
            "0190f2a48c1e7b3a9f0000000000002a",
        ]
        now = np.datetime64(int(time.time() * 1000), "ms")
        s.insert(
            "predictions",
            {
                "event_time": np.array([now] * 3),
                "event_id": [f"0190f2a4-8c1e-7b3a-9f01-{i:012d}" for i in range(3)],
                "request_id": old_ids,
                "tenant": ["acme"] * 3,
                "route": ["search"] * 3,
                "model_name": ["m"] * 3,
                "user_id": ["u-1"] * 3,
                "total_latency_us": np.array([10, 20, 30], dtype=np.uint32),
                "log_topic": ["llmops.predictions.v1"] * 3,
                "log_partition": np.zeros(3, dtype=np.uint32),
                "log_offset": np.arange(3, dtype=np.uint64),
            },
        )
        shutil.copy(default_directory() / "0003_lean_predictions.sql", tmp_path)
        assert apply_migrations(s, tmp_path) == ["0003_lean_predictions"]
        got = s.query(
            "SELECT request_id, total_latency_us FROM predictions ORDER BY total_latency_us"
        )
        assert [str(r["request_id"]) for r in got] == [values.request_uuid(i) for i in old_ids]
        assert str(got[0]["request_id"]) == "0190f2a4-8c1e-7b3a-9f00-000000000001"
        assert s.query("SELECT count() AS n FROM predictions_0001")[0]["n"] == 3
        assert s.query("SELECT sum(requests) AS n FROM predictions_1m")[0]["n"] == 3
        assert "user_id" in {
            r["name"]
            for r in s.query(
                "SELECT name FROM system.columns WHERE database = %(db)s "
                "AND table = 'prediction_payloads'",
                {"db": s.database},
            )
        }
        s.insert(  # the re-attached views count new rows
            "predictions",
            {
                "event_time": np.array([now]),
                "request_id": [values.request_uuid("r")],
                "tenant": ["acme"],
                "route": ["search"],
                "model_name": ["m"],
            },
        )
        assert s.query("SELECT sum(requests) AS n FROM predictions_1m")[0]["n"] == 4
    finally:
        s.execute("DROP DATABASE IF EXISTS it_clickhouse_0003")


ROLLUP_COUNTS = (("predictions_1m", "requests"), ("prediction_counts_1h", "predictions"))


def test_compact_predictions_migration_keeps_every_row_and_id(
    chdb_session: Any, tmp_path: Path
) -> None:
    """0008 on a database with 0007-form rows: every row is copied with its exact request id
    (UUIDv7, other versions, all zeros, all ones) and its timings at 8 significant bits, the
    old table is kept, no rollup counts the copy twice, and a lookup by request id still
    uses its index."""
    files = sorted(default_directory().glob("*.sql"))
    for f in files[:7]:
        shutil.copy(f, tmp_path / f.name)
    s = ChdbStore(chdb_session, database="it_clickhouse_0008")
    try:
        assert apply_migrations(s, tmp_path)[-1] == "0007_feedback_rollups"
        ids = [
            "0190f2a4-8c1e-7b3a-9f00-000000000001",
            "2f1c9a3e-5b7d-4e21-9c4b-6a8e0f1d2c3b",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            values.request_uuid("caller-id-7"),
        ]
        n = len(ids)
        now = np.datetime64(int(time.time() * 1000), "ms")
        s.insert(
            "predictions",
            {
                "event_time": np.array([now] * n),
                "request_id": ids,
                "tenant": ["acme"] * n,
                "route": ["search"] * n,
                "task": ["search"] * n,
                "model_name": ["m"] * n,
                "total_latency_us": np.array([1001, 2003, 3005, 4007, 5009], dtype=np.uint32),
                "stage_names": [["model"]] * n,
                "stage_durations_us": [[123457]] * n,
                "log_topic": ["llmops.predictions.v1"] * n,
                "log_partition": np.zeros(n, dtype=np.uint32),
                "log_offset": np.arange(n, dtype=np.uint64),
            },
        )
        shutil.copy(files[7], tmp_path)
        assert apply_migrations(s, tmp_path) == ["0008_compact_predictions"]
        got = s.query(
            "SELECT request_id, total_latency_us, stage_durations_us FROM predictions "
            "ORDER BY total_latency_us"
        )
        assert [str(r["request_id"]) for r in got] == ids
        assert [r["total_latency_us"] for r in got] == [1000, 2000, 3008, 4000, 5024]
        assert all(r["stage_durations_us"] == [123392] for r in got)  # 241 * 2^9
        assert s.query("SELECT count() AS n FROM predictions_0007")[0]["n"] == n
        for table, column in ROLLUP_COUNTS:
            assert s.query(f"SELECT sum({column}) AS n FROM {table}")[0]["n"] == n
        plan = s.query(
            "EXPLAIN indexes = 1 SELECT count() FROM predictions WHERE request_id = %(r)s",
            {"r": ids[1]},
        )
        assert any("idx_request_id" in str(r["explain"]) for r in plan)
        assert (
            s.query("SELECT count() AS n FROM predictions WHERE request_id = %(r)s", {"r": ids[1]})[
                0
            ]["n"]
            == 1
        )
        s.insert(  # writers hand the id to request_uuid; the re-attached views count the row
            "predictions",
            {
                "event_time": np.array([now]),
                "request_uuid": ["0190f2a4-8c1e-7b3a-9f00-0000000000ff"],
                "tenant": ["acme"],
                "route": ["search"],
                "task": ["search"],
                "model_name": ["m"],
            },
        )
        assert (
            s.query(
                "SELECT count() AS n FROM predictions "
                "WHERE request_id = '0190f2a4-8c1e-7b3a-9f00-0000000000ff'"
            )[0]["n"]
            == 1
        )
        for table, column in ROLLUP_COUNTS:
            assert s.query(f"SELECT sum({column}) AS n FROM {table}")[0]["n"] == n + 1
    finally:
        s.execute("DROP DATABASE IF EXISTS it_clickhouse_0008")
