"""The drift job: per (route, model) and metric of the prediction log, PSI and KS between a
reference window and the latest window, computed in ClickHouse, written to
``drift_reports`` (migration 0004), and a ``drift.detected`` audit record per drifted
(route, model).

What the prediction log holds, and so what can drift here (``predictions``, migration
0003): output lengths (``completion_tokens``), input lengths (``prompt_tokens``), latency,
cost, the guardrail verdict mix and the error rate. Feature values are **not** in the log
(only ``feature_vector_hash``), nor are model scores (a prediction's output is text, in
``prediction_payloads`` for 7 days and only for tasks allowed to log it): feature and score
drift need those values logged first.

Per metric, two queries over ``[reference_start, latest_end)``:

1. **Histograms**: the reference window's exact quantiles at 1/b .. (b-1)/b per (route,
   model) are the bin edges (a CTE joined to the rows); rows are counted per bin and window.
   Ordinal metrics (the guardrail verdict, the error flag) use fixed edges, one bin per
   category. PSI is computed from these counts in :mod:`services.governance.drift`.
2. **KS**: counts per distinct value and window, cumulative sums by window functions in value
   order, and the largest gap between the two empirical CDFs — the exact two-sample
   statistic, one number per (route, model) out of ClickHouse.

(route, model) pairs with fewer than ``min_samples`` rows in either window are skipped (a
new model has no reference yet).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import ResourceExhausted
from llmops.events.port import ServiceEvents
from llmops.identity import system
from llmops.scheduler import Periodic
from services.governance.drift import Thresholds, psi, quantile_levels

log = structlog.get_logger("llmops.governance.drift")

ACTOR = system("drift")
ACTION = "drift.detected"
TABLE = "drift_reports"


@dataclass(frozen=True, slots=True)
class Metric:
    """One column (expression) of ``predictions`` whose distribution is watched."""

    name: str
    expr: str
    where: str = "1"
    fixed_edges: tuple[float, ...] | None = None
    """Ordinal metrics: these edges instead of reference quantiles."""


METRICS: tuple[Metric, ...] = (
    Metric("completion_tokens", "toFloat64(completion_tokens)", "status_code = 0"),
    Metric("prompt_tokens", "toFloat64(prompt_tokens)", "status_code = 0"),
    Metric("latency_ms", "total_latency_us / 1000", "status_code = 0"),
    Metric("cost", "cost_nanos / 1e9", "status_code = 0"),
    # none < ALLOW < FLAG < REDACT < BLOCK (0..4): one bin per verdict
    Metric(
        "guardrail_verdict",
        "toFloat64(multiIf(guardrail_verdict = 'ALLOW', 1, guardrail_verdict = 'FLAG', 2, "
        "guardrail_verdict = 'REDACT', 3, guardrail_verdict = 'BLOCK', 4, 0))",
        fixed_edges=(1.0, 2.0, 3.0, 4.0),
    ),
    Metric("error", "toFloat64(status_code != 0)", fixed_edges=(1.0,)),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


@dataclass(frozen=True, slots=True)
class DriftConfig:
    reference_window: timedelta
    latest_window: timedelta
    thresholds: Thresholds
    bins: int = 10
    min_samples: int = 100
    metrics: tuple[Metric, ...] = METRICS


@dataclass(frozen=True, slots=True)
class Windows:
    """Reference ``[reference_start, reference_end)`` then latest ``[latest_start,
    latest_end)``; the reference ends where the latest starts."""

    reference_start: datetime
    reference_end: datetime
    latest_start: datetime
    latest_end: datetime

    @classmethod
    def ending(cls, now: datetime, reference: timedelta, latest: timedelta) -> Windows:
        end = now.astimezone(UTC)
        return cls(end - latest - reference, end - latest, end - latest, end)

    def params(self) -> dict[str, Any]:
        return {
            "ref_start": self.reference_start,
            "ref_end": self.reference_end,
            "lat_start": self.latest_start,
            "lat_end": self.latest_end,
        }


@dataclass(frozen=True, slots=True)
class DriftReport:
    route: str
    model_name: str
    metric: str
    psi: float
    ks: float
    drifted: bool
    bins: int
    n_ref: int
    n_latest: int


def _rows_sql(metric: Metric) -> str:
    """Rows of both windows: route, model_name, v (the metric), w (0 reference, 1 latest)."""
    return (
        f"SELECT route, model_name, {metric.expr} AS v, "
        "toUInt8(event_time >= %(lat_start)s) AS w FROM predictions "
        "WHERE ((event_time >= %(ref_start)s AND event_time < %(ref_end)s) "
        "OR (event_time >= %(lat_start)s AND event_time < %(lat_end)s)) "
        f"AND ({metric.where})"
    )


def histogram_sql(metric: Metric, bins: int) -> str:
    """Per (route, model_name, bin): ``n_ref``, ``n_latest``, and ``edges`` (the bins'
    inner edges, the same on every row of a group)."""
    if metric.fixed_edges is not None:
        edges = (
            "CAST(["
            + ", ".join(repr(float(e)) for e in metric.fixed_edges)
            + "] AS Array(Float64))"
        )
    else:
        levels = ", ".join(repr(q) for q in quantile_levels(bins))
        edges = f"arraySort(arrayDistinct(quantilesExact({levels})(v)))"
    return (
        f"WITH rows AS ({_rows_sql(metric)}), "
        f"edges AS (SELECT route, model_name, {edges} AS e FROM rows WHERE w = 0 "
        "GROUP BY route, model_name) "
        "SELECT rows.route AS route, rows.model_name AS model_name, "
        "arrayCount(x -> x <= rows.v, edges.e) AS bin, any(edges.e) AS edges, "
        "countIf(rows.w = 0) AS n_ref, countIf(rows.w = 1) AS n_latest "
        "FROM rows INNER JOIN edges "
        "ON rows.route = edges.route AND rows.model_name = edges.model_name "
        "GROUP BY route, model_name, bin ORDER BY route, model_name, bin"
    )


def ks_sql(metric: Metric) -> str:
    """Per (route, model_name): the exact two-sample KS statistic ``ks`` of the metric."""
    cumulative = (
        "OVER (PARTITION BY route, model_name ORDER BY v "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    totals = "OVER (PARTITION BY route, model_name)"
    return (
        "SELECT route, model_name, max(abs(cr / nr - cl / nl)) AS ks FROM ("
        f"SELECT route, model_name, sum(r) {cumulative} AS cr, sum(l) {cumulative} AS cl, "
        f"sum(r) {totals} AS nr, sum(l) {totals} AS nl FROM ("
        "SELECT route, model_name, v, countIf(w = 0) AS r, countIf(w = 1) AS l "
        f"FROM ({_rows_sql(metric)}) GROUP BY route, model_name, v)"
        ") WHERE nr > 0 AND nl > 0 GROUP BY route, model_name"
    )


def measure(store: ClickHouseStore, config: DriftConfig, windows: Windows) -> list[DriftReport]:
    """The reports of one run (no side effects)."""
    params = windows.params()
    reports: list[DriftReport] = []
    for metric in config.metrics:
        groups: dict[tuple[str, str], dict[int, tuple[int, int]]] = defaultdict(dict)
        n_bins: dict[tuple[str, str], int] = {}
        for row in store.query(histogram_sql(metric, config.bins), params):
            key = (str(row["route"]), str(row["model_name"]))
            groups[key][int(row["bin"])] = (int(row["n_ref"]), int(row["n_latest"]))
            n_bins[key] = len(row["edges"]) + 1
        ks_by_group = {
            (str(r["route"]), str(r["model_name"])): float(r["ks"])
            for r in store.query(ks_sql(metric), params)
        }
        for key, counts in sorted(groups.items()):
            ref = [counts.get(i, (0, 0))[0] for i in range(n_bins[key])]
            latest = [counts.get(i, (0, 0))[1] for i in range(n_bins[key])]
            n_ref, n_latest = sum(ref), sum(latest)
            if n_ref < config.min_samples or n_latest < config.min_samples:
                continue
            psi_value = psi(ref, latest)
            ks_value = ks_by_group.get(key, 0.0)
            reports.append(
                DriftReport(
                    route=key[0],
                    model_name=key[1],
                    metric=metric.name,
                    psi=psi_value,
                    ks=ks_value,
                    drifted=config.thresholds.crossed(psi_value, ks_value),
                    bins=n_bins[key],
                    n_ref=n_ref,
                    n_latest=n_latest,
                )
            )
    return reports


def report_columns(
    reports: Sequence[DriftReport], config: DriftConfig, windows: Windows, at: datetime
) -> dict[str, list[Any]]:
    n = len(reports)
    return {
        "event_time": [at] * n,
        "route": [r.route for r in reports],
        "model_name": [r.model_name for r in reports],
        "metric": [r.metric for r in reports],
        "psi": [r.psi for r in reports],
        "ks": [r.ks for r in reports],
        "psi_threshold": [config.thresholds.psi] * n,
        "ks_threshold": [config.thresholds.ks] * n,
        "drifted": [r.drifted for r in reports],
        "bins": [r.bins for r in reports],
        "reference_start": [windows.reference_start] * n,
        "reference_end": [windows.reference_end] * n,
        "latest_start": [windows.latest_start] * n,
        "latest_end": [windows.latest_end] * n,
        "n_ref": [r.n_ref for r in reports],
        "n_latest": [r.n_latest for r in reports],
    }


def _audit_after(reports: Sequence[DriftReport]) -> Mapping[str, Any]:
    return {
        r.metric: {"psi": round(r.psi, 6), "ks": round(r.ks, 6), "n_latest": str(r.n_latest)}
        for r in reports
    }


class DriftJob:
    """One run: measure in ClickHouse, write the reports, audit the drifted (route, model)
    pairs. Nothing is written when the audit records would not fit the event buffer
    (``RESOURCE_EXHAUSTED``: the run fails and the next one measures again)."""

    def __init__(
        self,
        store: Callable[[], ClickHouseStore],
        events: ServiceEvents,
        config: DriftConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._events = events
        self.config = config
        self._clock = clock

    async def run_once(self, now: datetime | None = None) -> list[DriftReport]:
        at = (now or self._clock()).astimezone(UTC)
        windows = Windows.ending(at, self.config.reference_window, self.config.latest_window)
        store = self._store()
        reports = await asyncio.to_thread(measure, store, self.config, windows)
        drifted: dict[tuple[str, str], list[DriftReport]] = defaultdict(list)
        for r in reports:
            if r.drifted:
                drifted[(r.route, r.model_name)].append(r)
        if drifted and not self._events.has_room(len(drifted)):
            raise ResourceExhausted(
                f"no room in the event buffer for {len(drifted)} drift audit records; "
                "nothing written, the next run measures again"
            )
        if reports:
            columns = report_columns(reports, self.config, windows, at)
            token = f"drift-{int(windows.latest_end.timestamp() * 1000)}"
            await asyncio.to_thread(store.insert, TABLE, columns, dedup_token=token)
        envelopes = [
            self._events.audit_event(
                ACTION,
                "route",
                f"{route}/{model}",
                after=_audit_after(found),
                reason=(
                    f"drift of {', '.join(r.metric for r in found)} between "
                    f"[{windows.reference_start.isoformat()}, {windows.reference_end.isoformat()})"
                    f" and [{windows.latest_start.isoformat()}, {windows.latest_end.isoformat()})"
                    f" (psi >= {self.config.thresholds.psi} or ks >= {self.config.thresholds.ks})"
                ),
                actor=ACTOR,
            )
            for (route, model), found in sorted(drifted.items())
        ]
        if envelopes:
            self._events.publish_all(envelopes)
        log.info(
            "drift_measured",
            reports=len(reports),
            drifted=[f"{route}/{model}" for route, model in sorted(drifted)],
        )
        return reports

    def task(self, interval_s: float) -> Periodic:
        async def run() -> None:
            await self.run_once()

        return Periodic("drift", interval_s, run)
