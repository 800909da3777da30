"""``GetFeedbackStats``: feedback per group and signal, from ClickHouse, newest record per key.

Every statistic counts one record per idempotency key — its newest (``argMax`` over
``received_time``), so a toggled thumb counts as its last answer and an event delivered twice
counts once. Feedback names its prediction by ``request_id``; route, model and variant (and
the task when the record has none) come from that prediction, joined in ClickHouse — feedback
that arrived before its prediction is joined as soon as the prediction is logged.

The SQL lives in :class:`ClickHouseStatsStore`; :func:`summarise` turns its rows into the
contract's statistics (rates, means and their 95% intervals) without I/O.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import InvalidArgument
from services.feedback.sql import SIGNAL_SUMS, newest_per_key, request_uuid

DIMENSIONS: Mapping[str, tuple[str, str]] = {
    # name -> (expression over the feedback row joined to its prediction, over predictions)
    "task": ("if(f.task != '', f.task, p.task)", "task"),
    "route": ("p.route", "route"),
    "model": ("p.model", "concat(model_name, ' v', toString(model_version))"),
    "variant": ("p.variant", "variant"),
    "market": ("if(f.market != '', f.market, p.market)", "market"),
}
PREDICTION_LOOKBACK_DAYS = 30
"""A prediction is joined to feedback up to this long before the window starts (a booking
can come weeks after the summary that led to it)."""
UNMATCHED_AFTER_S = 3600
"""Feedback younger than this may still be waiting for its prediction: not unmatched yet."""
RATE_KINDS = frozenset({"CLICK", "BOOKING", "CONVERSION", "INTERACTION"})
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class StatsQuery:
    start: datetime | None
    end: datetime | None
    task: str = ""
    tenant: str = ""
    group_by: tuple[str, ...] = ()
    now: datetime | None = None
    """Reference time of ``unmatched_count`` (records older than an hour before it)."""


@dataclass(frozen=True, slots=True)
class SignalRow:
    """Sufficient statistics of one (group, signal) as ClickHouse returns them."""

    dimensions: tuple[str, ...]
    signal: str
    kind: str
    count: int
    requests: int
    """Distinct non-empty request ids (the numerator of a rate)."""
    ups: int
    thumbs: int
    rated: int
    rating_sum: float
    rating_sum2: float
    dwell_sum: float
    dwell_sum2: float
    labels: Mapping[str, int]
    values_nanos: Mapping[str, int]
    """Currency -> summed value in 10^-9 units."""


@dataclass(frozen=True, slots=True)
class RawStats:
    rows: list[SignalRow]
    predictions: Mapping[tuple[str, ...], int]
    """Predictions per group (dimension values in ``group_by`` order)."""
    received: int
    superseded: int
    unmatched: int


@dataclass(frozen=True, slots=True)
class SignalSummary:
    signal: str
    kind: str
    count: int
    distinct_requests: int
    mean: float
    ci_low: float
    ci_high: float
    values_nanos: Mapping[str, int] = field(default_factory=dict)
    top_label: str = ""


@dataclass(frozen=True, slots=True)
class GroupSummary:
    dimensions: Mapping[str, str]
    prediction_count: int
    signals: list[SignalSummary]


@dataclass(frozen=True, slots=True)
class KindSummary:
    kind: str
    count: int
    distinct_requests: int
    mean: float
    values_nanos: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Stats:
    groups: list[GroupSummary]
    kinds: list[KindSummary]
    received: int
    superseded: int
    unmatched: int


class StatsStore(Protocol):
    async def raw(self, query: StatsQuery) -> RawStats: ...


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for i, name in enumerate(group_by):
        if name not in DIMENSIONS:
            raise InvalidArgument(f"group_by[{i}]", f"one of {sorted(DIMENSIONS)}")
        if name in out:
            raise InvalidArgument(f"group_by[{i}]", f"{name!r} given twice")
        out.append(name)
    return tuple(out)


def wilson(successes: int, n: int) -> tuple[float, float, float]:
    """Share and its 95% Wilson score interval (the share itself three times when n is 0)."""
    if n <= 0:
        return 0.0, 0.0, 0.0
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(total: float, total2: float, n: int) -> tuple[float, float, float]:
    """Mean and its normal 95% interval from sums (the mean three times below two values)."""
    if n <= 0:
        return 0.0, 0.0, 0.0
    mean = total / n
    if n < 2:
        return mean, mean, mean
    variance = max(0.0, (total2 - n * mean * mean) / (n - 1))
    half = Z95 * math.sqrt(variance / n)
    return mean, mean - half, mean + half


def _signal(row: SignalRow, predictions: int) -> SignalSummary:
    mean = low = high = 0.0
    top = ""
    if row.kind == "THUMBS":
        mean, low, high = wilson(row.ups, row.thumbs)
    elif row.kind == "RATING":
        mean, low, high = mean_interval(row.rating_sum, row.rating_sum2, row.rated)
    elif row.kind == "DWELL":
        mean, low, high = mean_interval(row.dwell_sum, row.dwell_sum2, row.count)
    elif row.kind == "LABEL" and row.labels:
        top, most = max(row.labels.items(), key=lambda kv: (kv[1], kv[0]))
        mean, low, high = wilson(most, sum(row.labels.values()))
    elif row.kind in RATE_KINDS and predictions > 0:
        mean, low, high = wilson(min(row.requests, predictions), predictions)
    return SignalSummary(
        signal=row.signal, kind=row.kind, count=row.count, distinct_requests=row.requests,
        mean=mean, ci_low=low, ci_high=high, values_nanos=dict(row.values_nanos),
        top_label=top,
    )  # fmt: skip


def summarise(raw: RawStats, group_by: Sequence[str]) -> Stats:
    """The contract's statistics from ClickHouse's sufficient statistics (no I/O)."""
    groups: dict[tuple[str, ...], list[SignalSummary]] = {}
    for row in raw.rows:
        groups.setdefault(row.dimensions, []).append(
            _signal(row, raw.predictions.get(row.dimensions, 0))
        )
    for dims in raw.predictions:
        groups.setdefault(dims, [])
    by_kind: dict[str, list[SignalRow]] = {}
    for row in raw.rows:
        by_kind.setdefault(row.kind, []).append(row)
    kinds = []
    for kind, rows in sorted(by_kind.items()):
        count = sum(r.count for r in rows)
        if kind == "THUMBS":
            mean = wilson(sum(r.ups for r in rows), sum(r.thumbs for r in rows))[0]
        elif kind == "RATING":
            rated = sum(r.rated for r in rows)
            mean = sum(r.rating_sum for r in rows) / rated if rated else 0.0
        elif kind == "DWELL":
            mean = sum(r.dwell_sum for r in rows) / count if count else 0.0
        else:
            mean = 0.0
        values: dict[str, int] = {}
        for r in rows:
            for currency, nanos in r.values_nanos.items():
                values[currency] = values.get(currency, 0) + nanos
        kinds.append(
            KindSummary(kind, count, sum(r.requests for r in rows), mean, values)
        )  # distinct requests summed over groups: exact when one group
    return Stats(
        groups=[
            GroupSummary(
                dict(zip(group_by, dims, strict=True)),
                raw.predictions.get(dims, 0),
                sorted(signals, key=lambda s: s.signal),
            )
            for dims, signals in sorted(groups.items())
        ],
        kinds=kinds,
        received=raw.received,
        superseded=raw.superseded,
        unmatched=raw.unmatched,
    )


def stats_sql(query: StatsQuery) -> tuple[str, str, dict[str, Any]]:
    """(the per-signal query, the predictions-per-group query, their parameters)."""
    params: dict[str, Any] = {"lookback": PREDICTION_LOOKBACK_DAYS}
    where = ["1"]
    pred_where = ["1"]
    if query.start is not None:
        params["start"] = query.start
        where.append("event_time >= %(start)s")
        pred_where.append("event_time >= %(start)s")
    if query.end is not None:
        params["end"] = query.end
        where.append("event_time < %(end)s")
        pred_where.append("event_time < %(end)s")
    if query.tenant:
        params["tenant"] = query.tenant
        where.append("tenant = %(tenant)s")
        pred_where.append("tenant = %(tenant)s")
    join_from = (
        "event_time >= %(start)s - INTERVAL %(lookback)s DAY" if query.start is not None else "1"
    )
    if query.end is not None:
        join_from += " AND event_time < %(end)s"
    if query.tenant:
        join_from += " AND tenant = %(tenant)s"
    now = query.now or datetime.now().astimezone()
    params["unmatched_before"] = now.timestamp() - UNMATCHED_AFTER_S
    dims = [DIMENSIONS[d][0] for d in query.group_by]
    task_filter = ""
    if query.task:
        params["task"] = query.task
        task_filter = "WHERE if(f.task != '', f.task, p.task) = %(task)s"
        pred_where.append("task = %(task)s")
    dim_select = "".join(f"{expr} AS d{i}, " for i, expr in enumerate(dims))
    dim_group = "".join(f"d{i}, " for i in range(len(dims)))
    uuid_f = request_uuid("f.request_id")
    signals = f"""
SELECT {dim_select}signal, kind,
       count() AS n,
       uniqExactIf(f.request_id, f.request_id != '') AS requests,
       {SIGNAL_SUMS},
       sumMap(if(label != '', [label], []), if(label != '', [toUInt64(1)], [])) AS labels,
       sumMap(if(currency != '', [currency], []), if(currency != '', [value_nanos], [])) AS values,
       sum(copies) - count() AS superseded,
       countIf(f.request_id != '' AND p.rid IS NULL
               AND received < %(unmatched_before)s) AS unmatched
FROM
{newest_per_key(" AND ".join(where))} AS f
LEFT JOIN
(
    SELECT request_id AS rid, any(task) AS task, any(market) AS market, any(route) AS route,
           any(concat(model_name, ' v', toString(model_version))) AS model,
           any(variant) AS variant
    FROM predictions
    WHERE {join_from}
    GROUP BY rid
) AS p ON p.rid = {uuid_f}
{task_filter}
GROUP BY {dim_group}signal, kind
ORDER BY {dim_group}signal, kind
SETTINGS join_use_nulls = 1
"""
    pred_dims = [DIMENSIONS[d][1] for d in query.group_by]
    pred_select = "".join(f"{expr} AS d{i}, " for i, expr in enumerate(pred_dims))
    predictions = f"""
SELECT {pred_select}count() AS n
FROM predictions
WHERE {" AND ".join(pred_where)}
{"GROUP BY " + dim_group.rstrip(", ") if pred_dims else ""}
"""
    return signals, predictions, params


class ClickHouseStatsStore:
    """:class:`StatsStore` over the ``feedback`` and ``predictions`` tables (chdb embedded,
    the server in production); queries run on a worker thread (the clients block)."""

    def __init__(self, clickhouse: Callable[[], ClickHouseStore]) -> None:
        self._clickhouse = clickhouse

    async def raw(self, query: StatsQuery) -> RawStats:
        return await asyncio.to_thread(self._raw, query)

    def _sql(self, query: StatsQuery) -> tuple[str, str, dict[str, Any]]:
        return stats_sql(query)

    def _raw(self, query: StatsQuery) -> RawStats:
        signals_sql, predictions_sql, params = self._sql(query)
        store = self._clickhouse()
        width = len(query.group_by)
        rows: list[SignalRow] = []
        received = superseded = unmatched = 0
        for r in store.query(signals_sql, params):
            dims = tuple("" if r[f"d{i}"] is None else str(r[f"d{i}"]) for i in range(width))
            labels = dict(zip(r["labels"][0], r["labels"][1], strict=True))
            values = dict(zip(r["values"][0], r["values"][1], strict=True))
            row = SignalRow(
                dimensions=dims, signal=str(r["signal"]), kind=str(r["kind"]),
                count=int(r["n"]), requests=int(r["requests"]), ups=int(r["ups"]),
                thumbs=int(r["thumbs"]), rated=int(r["rated"]),
                rating_sum=float(r["rating_sum"]), rating_sum2=float(r["rating_sum2"]),
                dwell_sum=float(r["dwell_sum"]), dwell_sum2=float(r["dwell_sum2"]),
                labels={str(k): int(v) for k, v in labels.items()},
                values_nanos={str(k): int(v) for k, v in values.items()},
            )  # fmt: skip
            rows.append(row)
            received += int(r["n"]) + int(r["superseded"])
            superseded += int(r["superseded"])
            unmatched += int(r["unmatched"])
        predictions: dict[tuple[str, ...], int] = {}
        for r in store.query(predictions_sql, params):
            dims = tuple(str(r[f"d{i}"]) for i in range(width))
            predictions[dims] = int(r["n"])
        return RawStats(rows, predictions, received, superseded, unmatched)


ROLLUP_DIMENSIONS: Mapping[str, tuple[str, str]] = {
    # name -> (over feedback_stats_1h, over prediction_counts_1h)
    "task": ("task", "task"),
    "route": ("route", "route"),
    "model": ("model", "concat(model_name, ' v', toString(model_version))"),
    "variant": ("variant", "variant"),
    "market": ("market", "market"),
}


def rollup_sql(query: StatsQuery) -> tuple[str, str, dict[str, Any]]:
    """(the per-signal query, the predictions-per-group query, their parameters) over the
    rollups: whole hours, the newest version of each."""
    params: dict[str, Any] = {}
    where = ["1"]
    if query.start is not None:
        params["start"] = query.start
        where.append("hour >= toStartOfHour(%(start)s)")
    if query.end is not None:
        params["end"] = query.end
        where.append("hour < %(end)s")
    if query.tenant:
        params["tenant"] = query.tenant
        where.append("tenant = %(tenant)s")
    if query.task:
        params["task"] = query.task
        where.append("task = %(task)s")
    hour_where = " AND ".join(w for w in where if w.startswith(("hour", "1")))
    dims = [ROLLUP_DIMENSIONS[d][0] for d in query.group_by]
    dim_select = "".join(f"{expr} AS d{i}, " for i, expr in enumerate(dims))
    dim_group = "".join(f"d{i}, " for i in range(len(dims)))
    signals = f"""
SELECT {dim_select}signal, kind,
       sum(n) AS n, uniqCombinedMerge(14)(requests) AS requests,
       sum(ups) AS ups, sum(thumbs) AS thumbs, sum(rated) AS rated,
       sum(rating_sum) AS rating_sum, sum(rating_sum2) AS rating_sum2,
       sum(dwell_sum) AS dwell_sum, sum(dwell_sum2) AS dwell_sum2,
       sumMap(label_names, label_counts) AS labels,
       sumMap(value_currencies, value_nanos) AS values,
       sum(superseded) AS superseded, sum(unmatched) AS unmatched
FROM feedback_stats_1h
WHERE {" AND ".join(where)}
  AND (hour, version) IN (
      SELECT hour, max(version) FROM feedback_stats_hours WHERE {hour_where} GROUP BY hour
  )
GROUP BY {dim_group}signal, kind
ORDER BY {dim_group}signal, kind
"""
    pred_dims = [ROLLUP_DIMENSIONS[d][1] for d in query.group_by]
    pred_select = "".join(f"{expr} AS d{i}, " for i, expr in enumerate(pred_dims))
    predictions = f"""
SELECT {pred_select}sum(predictions) AS n
FROM prediction_counts_1h
WHERE {" AND ".join(where)}
{"GROUP BY " + dim_group.rstrip(", ") if pred_dims else ""}
"""
    return signals, predictions, params


class RollupStatsStore(ClickHouseStatsStore):
    """:class:`StatsStore` over the rollups (migration 0007, :mod:`services.feedback.rollup`):
    whole hours, as of the rollup's last refresh; distinct requests from HyperLogLog states."""

    def _sql(self, query: StatsQuery) -> tuple[str, str, dict[str, Any]]:
        return rollup_sql(query)
