"""The drift job on chdb: simulated predictions in a reference and a latest window; no drift
stays below the thresholds and publishes nothing; a shifted output length (and a verdict mix
that moved) is flagged, written to drift_reports and audited as ``drift.detected``. The SQL
statistics are checked against numpy/scipy on the same rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.clickhouse.queries import recent_events
from llmops.events.port import ServiceEvents
from llmops.v1 import events_pb2
from services.governance.drift import Thresholds, bin_edges, histogram, psi
from services.governance.drift_job import (
    METRICS,
    DriftConfig,
    DriftJob,
    Windows,
    histogram_sql,
    ks_sql,
)

pytestmark = [pytest.mark.infra, pytest.mark.timeout(180)]

NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = DriftConfig(
    reference_window=timedelta(days=1),
    latest_window=timedelta(hours=1),
    thresholds=Thresholds(psi=0.25, ks=0.2),
    bins=10,
    min_samples=100,
)
WINDOWS = Windows.ending(NOW, CONFIG.reference_window, CONFIG.latest_window)


class Recorder:
    def __init__(self, room: int = 100) -> None:
        self.room = room
        self.published: list[events_pb2.EventEnvelope] = []
        self.port = ServiceEvents("llmops.v1.GovernanceService", lambda: self)  # type: ignore[arg-type,return-value]

    def has_room(self, count: int) -> bool:
        return count <= self.room

    def publish(self, envelope: events_pb2.EventEnvelope) -> None:
        self.published.append(envelope)

    def publish_all(self, envelopes: list[events_pb2.EventEnvelope]) -> None:
        self.published.extend(envelopes)


@pytest.fixture
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    database = f"it_drift_{uuid.uuid4().hex[:8]}"
    ChdbStore(chdb_session).execute(f"CREATE DATABASE {database}")
    s = ChdbStore(chdb_session, database=database)
    assert "0004_drift" in apply_migrations(s)
    yield s
    s.execute(f"DROP DATABASE IF EXISTS {database}")


def predictions(
    rng: np.random.Generator,
    n: int,
    start: datetime,
    end: datetime,
    *,
    route: str,
    model: str,
    tokens_mean: float,
    block_share: float = 0.05,
) -> dict[str, list[Any]]:
    span_ms = int((end - start).total_seconds() * 1000)
    offsets = np.sort(rng.integers(0, span_ms, n))
    verdicts = rng.choice(
        ["", "ALLOW", "FLAG", "BLOCK"], n, p=[0.1, 0.8 - block_share, 0.1, block_share]
    )
    return {
        "event_time": [start + timedelta(milliseconds=int(o)) for o in offsets],
        "tenant": ["acme"] * n,
        "route": [route] * n,
        "model_name": [model] * n,
        "status_code": [0] * n,
        "completion_tokens": np.maximum(rng.poisson(tokens_mean, n), 1).tolist(),
        "prompt_tokens": rng.poisson(400, n).tolist(),
        "total_latency_us_in": rng.lognormal(12, 0.3, n).astype(int).tolist(),
        "cost_nanos": rng.integers(1_000, 50_000, n).tolist(),
        "guardrail_verdict": verdicts.tolist(),
    }


def load(
    store: ChdbStore,
    rng: np.random.Generator,
    route: str,
    model: str,
    latest_tokens: float,
    latest_block_share: float = 0.05,
) -> None:
    w = WINDOWS
    store.insert(
        "predictions",
        predictions(rng, 4000, w.reference_start, w.reference_end, route=route, model=model,
                    tokens_mean=120),
    )  # fmt: skip
    store.insert(
        "predictions",
        predictions(rng, 1500, w.latest_start, w.latest_end, route=route, model=model,
                    tokens_mean=latest_tokens, block_share=latest_block_share),
    )  # fmt: skip


def column(store: ChdbStore, expr: str, start: datetime, end: datetime, route: str) -> np.ndarray:
    rows = store.query(
        f"SELECT {expr} AS v FROM predictions WHERE route = %(route)s AND event_time >= %(s)s "
        "AND event_time < %(e)s AND status_code = 0",
        {"route": route, "s": start, "e": end},
    )
    return np.array([float(r["v"]) for r in rows])


def test_migration_0004_creates_drift_reports_with_retention(store: ChdbStore) -> None:
    assert apply_migrations(store) == []
    (table,) = store.query(
        "SELECT engine, create_table_query FROM system.tables WHERE database = %(db)s "
        "AND name = 'drift_reports'",
        {"db": store.database},
    )
    assert table["engine"] == "MergeTree"
    assert "toIntervalDay(400)" in table["create_table_query"]  # >= 180 days


def test_sql_statistics_equal_numpy_and_scipy(store: ChdbStore) -> None:
    rng = np.random.default_rng(21)
    load(store, rng, "search", "ranker", latest_tokens=135)
    w = WINDOWS
    params = w.params()
    for metric in METRICS[:4]:
        ref = column(store, metric.expr, w.reference_start, w.reference_end, "search")
        lat = column(store, metric.expr, w.latest_start, w.latest_end, "search")
        (ks_row,) = store.query(ks_sql(metric), params)
        assert ks_row["ks"] == pytest.approx(stats.ks_2samp(ref, lat).statistic, abs=1e-9)
        rows = store.query(histogram_sql(metric, 10), params)
        edges = bin_edges(list(rows[0]["edges"]))
        assert len(edges) >= 2
        # quantilesExact: the sorted sample's element at floor(level * n)
        expected_edges = bin_edges([float(np.sort(ref)[int(q * len(ref))]) for q in
                                    [i / 10 for i in range(1, 10)]])  # fmt: skip
        assert edges == pytest.approx(expected_edges)
        n_bins = len(edges) + 1
        got_ref = [0] * n_bins
        got_lat = [0] * n_bins
        for r in rows:
            got_ref[int(r["bin"])] = int(r["n_ref"])
            got_lat[int(r["bin"])] = int(r["n_latest"])
        assert got_ref == histogram(ref.tolist(), edges)
        assert got_lat == histogram(lat.tolist(), edges)
        assert psi(got_ref, got_lat) >= 0


async def test_no_drift_stays_below_thresholds_and_publishes_nothing(store: ChdbStore) -> None:
    rng = np.random.default_rng(22)
    load(store, rng, "search", "ranker", latest_tokens=120)
    events = Recorder()
    reports = await DriftJob(lambda: store, events.port, CONFIG).run_once(NOW)
    assert {r.metric for r in reports} == {m.name for m in METRICS}
    assert all(r.route == "search" and r.model_name == "ranker" for r in reports)
    assert not any(r.drifted for r in reports), reports
    assert all(r.psi < 0.1 and r.ks < 0.1 for r in reports), reports
    assert all(r.n_ref == 4000 and r.n_latest == 1500 for r in reports)
    assert events.published == []
    stored = store.query("SELECT count() AS n, countIf(drifted) AS d FROM drift_reports")
    assert stored == [{"n": len(METRICS), "d": 0}]


async def test_a_shifted_distribution_is_flagged_stored_and_audited(store: ChdbStore) -> None:
    rng = np.random.default_rng(23)
    load(store, rng, "search", "ranker", latest_tokens=120)  # stable
    load(store, rng, "summary", "llm-small", latest_tokens=180, latest_block_share=0.3)
    events = Recorder()
    reports = await DriftJob(lambda: store, events.port, CONFIG).run_once(NOW)
    by = {(r.route, r.metric): r for r in reports}
    assert not any(r.drifted for r in reports if r.route == "search")
    tokens = by[("summary", "completion_tokens")]
    assert tokens.drifted and tokens.psi > 0.25 and tokens.ks > 0.2
    assert by[("summary", "guardrail_verdict")].drifted
    assert not by[("summary", "latency_ms")].drifted

    (envelope,) = events.published
    audit = envelope.audit
    assert audit.action == "drift.detected"
    assert audit.actor.id == "system:drift"
    assert audit.actor.type == events_pb2.ACTOR_TYPE_SYSTEM
    assert (audit.resource.type, audit.resource.name) == ("route", "summary/llm-small")
    assert set(audit.after.keys()) == {"completion_tokens", "guardrail_verdict"}
    assert audit.after["completion_tokens"]["psi"] == pytest.approx(tokens.psi, abs=1e-6)

    rows = recent_events(store, "drift", NOW - timedelta(minutes=5), 100)  # NOW: at import
    assert {(r["route"], r["metric"]) for r in rows if r["drifted"]} == {
        ("summary", "completion_tokens"),
        ("summary", "guardrail_verdict"),
    }
    (row,) = store.query(
        "SELECT * FROM drift_reports WHERE route = 'summary' AND metric = 'completion_tokens'"
    )
    assert row["latest_end"] == NOW and row["reference_start"] == WINDOWS.reference_start
    assert (row["psi_threshold"], row["ks_threshold"]) == (0.25, 0.2)


async def test_no_room_for_the_audit_records_writes_nothing(store: ChdbStore) -> None:
    rng = np.random.default_rng(24)
    load(store, rng, "summary", "llm-small", latest_tokens=200)
    events = Recorder(room=0)
    from llmops.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted):
        await DriftJob(lambda: store, events.port, CONFIG).run_once(NOW)
    assert store.query("SELECT count() AS n FROM drift_reports") == [{"n": 0}]
    assert events.published == []


async def test_too_few_samples_are_skipped(store: ChdbStore) -> None:
    rng = np.random.default_rng(25)
    load(store, rng, "search", "ranker", latest_tokens=120)
    config = DriftConfig(
        reference_window=CONFIG.reference_window,
        latest_window=CONFIG.latest_window,
        thresholds=CONFIG.thresholds,
        min_samples=2000,
    )
    assert await DriftJob(lambda: store, Recorder().port, config).run_once(NOW) == []


async def test_the_compliance_view_reads_retention_in_force_and_latest_drift(
    store: ChdbStore,
) -> None:
    from services.governance.compliance import (
        LOG_TABLES,
        MINIMUM_RETENTION_DAYS,
        ClickHouseComplianceLogs,
    )

    logs = ClickHouseComplianceLogs(lambda: store)
    kept = {r.table: r for r in logs.retention()}
    assert set(kept) == set(LOG_TABLES) and all(r.found for r in kept.values())
    assert (kept["predictions"].ttl_days, kept["predictions"].meets_minimum) == (90, False)
    assert (kept["audit"].ttl_days, kept["audit"].meets_minimum) == (0, True)  # no TTL
    assert kept["drift_reports"].ttl_days == 400
    assert (
        kept["prediction_payloads"].ttl_days == 7 and not kept["prediction_payloads"].required_log
    )
    # the TTL in force is read from the server, not from the migration files
    store.execute("ALTER TABLE audit MODIFY TTL toDateTime(event_time) + INTERVAL 30 DAY")
    store.execute("ALTER TABLE predictions MODIFY TTL toDateTime(event_time) + INTERVAL 6 MONTH")
    kept = {r.table: r for r in logs.retention()}
    assert (kept["audit"].ttl_days, kept["audit"].meets_minimum) == (30, False)
    assert kept["predictions"].ttl_days == MINIMUM_RETENTION_DAYS

    rng = np.random.default_rng(26)
    load(store, rng, "summary", "llm-small", latest_tokens=180, latest_block_share=0.3)
    await DriftJob(lambda: store, Recorder().port, CONFIG).run_once(NOW - timedelta(hours=2))
    await DriftJob(lambda: store, Recorder().port, CONFIG).run_once(NOW)
    latest = {d.metric: d for d in logs.latest_drift(route="summary")}
    assert set(latest) == {m.name for m in METRICS}
    tokens = latest["completion_tokens"]
    assert tokens.drifted and tokens.model_name == "llm-small"
    assert tokens.report_time_us >= int((NOW - timedelta(minutes=1)).timestamp() * 1e6)
    (row,) = store.query(
        "SELECT argMax(psi, event_time) AS psi FROM drift_reports "
        "WHERE route = 'summary' AND metric = 'completion_tokens'"
    )
    assert tokens.psi == pytest.approx(row["psi"])
    assert logs.latest_drift(model_name="llm-small") == list(latest.values())
    assert logs.latest_drift(route="no-such-route") == []
