"""Where results come from: exposures joined with feedback, per variant, in ClickHouse.

The analysis (:mod:`services.experiment.results`) asks one question per metric through
:class:`ResultsStore` — plain parameters in, plain rows out — and never sees SQL; this
module never sees an experiment or a statistic.

One query per metric returns, per variant, the sufficient statistics of the per-unit metric
(n, sum, sum of squares) and of its pre-period covariate (for CUPED). ClickHouse does the
join and the per-unit aggregation:

- **Units**: every unit exposed to the experiment in the window; its variant is the one of
  its *first* exposure (a unit seen in two variants — after an override, say — counts once,
  where it started), ``exposures`` counts all its exposure events.
- **Metric value of a unit**: computed from its feedback events at or after its first
  exposure and before the window end (attribution starts at exposure), the newest record
  per idempotency key (as the feedback service's statistics count them). Units without
  feedback count as 0 — the denominator is exposed units, not converting ones.
- **Covariate**: the same metric over the ``PRE_PERIOD_DAYS`` before the unit's first
  exposure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from llmops.clickhouse.base import ClickHouseStore
from services.experiment.metrics import METRICS

PRE_PERIOD_DAYS = 14


@dataclass(frozen=True, slots=True)
class VariantRow:
    """Sufficient statistics of one variant: ``y`` the metric after first exposure, ``x``
    the same metric over the pre-period (the CUPED covariate)."""

    variant: str
    n: int
    """Units exposed in the window."""
    exposures: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float


class ResultsStore(Protocol):
    async def variant_rows(
        self, metric: str, experiment_id: str, unit_type: str, start: datetime, end: datetime
    ) -> list[VariantRow]:
        """One row per variant with units exposed in ``[start, end)`` (UTC datetimes)."""
        ...


_UNIT_VALUE: Mapping[str, str] = {
    # metric -> per-feedback-row expression; binary metrics take the max, the others the sum
    "booking": "f.kind = 'BOOKING'",
    "conversion": "f.kind = 'CONVERSION'",
    "click": "f.kind = 'CLICK'",
    "thumbs_up": "f.kind = 'THUMBS' AND f.thumb = 'UP'",
    "clicks": "f.kind = 'CLICK'",
    "booking_value": "if(f.kind = 'BOOKING', f.value_nanos / 1e9, 0)",
    "dwell_s": "if(f.kind = 'DWELL', f.dwell_ms / 1000, 0)",
}
assert set(_UNIT_VALUE) == set(METRICS), "every metric needs its SQL expression"


def _unit_value(metric: str, when: str) -> str:
    expr = _UNIT_VALUE[metric]
    if METRICS[metric] == "binary":
        return f"toFloat64(maxIf(1, ({expr}) AND {when}))"
    return f"toFloat64(sumIf({expr}, {when}))"


def metric_query(metric: str) -> str:
    after = "f.event_time >= u.first_exposure"
    before = (
        f"f.event_time < u.first_exposure AND "
        f"f.event_time >= u.first_exposure - INTERVAL {PRE_PERIOD_DAYS} DAY"
    )
    return f"""
SELECT variant,
       count() AS n,
       sum(exposures) AS exposures,
       sum(y) AS sum_y, sum(y * y) AS sum_y2,
       sum(x) AS sum_x, sum(x * x) AS sum_x2, sum(x * y) AS sum_xy
FROM
(
    SELECT u.unit_id, u.variant, u.exposures,
           {_unit_value(metric, after)} AS y,
           {_unit_value(metric, before)} AS x
    FROM
    (
        SELECT unit_id, argMin(variant, event_time) AS variant,
               min(event_time) AS first_exposure, count() AS exposures
        FROM exposures
        WHERE experiment_id = %(experiment)s AND unit_type = %(unit_type)s
          AND event_time >= %(start)s AND event_time < %(end)s
        GROUP BY unit_id
    ) AS u
    LEFT JOIN
    (
        -- the newest record of each idempotency key (a flipped thumb counts as its last
        -- answer, an event delivered twice once); a row without a key stands alone
        SELECT argMax(unit_id, received_time) AS unit_id,
               argMax(event_time, received_time) AS event_time,
               argMax(kind, received_time) AS kind, argMax(thumb, received_time) AS thumb,
               argMax(value_nanos, received_time) AS value_nanos,
               argMax(dwell_ms, received_time) AS dwell_ms
        FROM
        (
            SELECT tenant, idempotency_key, event_id, unit_id, event_time, received_time,
                   kind, thumb, value_nanos, dwell_ms
            FROM feedback
            WHERE unit_type = %(unit_type)s
              AND event_time >= %(start)s - INTERVAL {PRE_PERIOD_DAYS} DAY
              AND event_time < %(end)s
        )
        GROUP BY tenant, if(idempotency_key = '', toString(event_id), idempotency_key)
    ) AS f ON f.unit_id = u.unit_id
    GROUP BY u.unit_id, u.variant, u.exposures
)
GROUP BY variant
"""


class ClickHouseResults:
    """:class:`ResultsStore` over the ``exposures`` and ``feedback`` tables (chdb embedded,
    the server in production); queries run on a worker thread (the clients block)."""

    def __init__(self, clickhouse: Callable[[], ClickHouseStore]) -> None:
        self._clickhouse = clickhouse

    async def variant_rows(
        self, metric: str, experiment_id: str, unit_type: str, start: datetime, end: datetime
    ) -> list[VariantRow]:
        params = {"experiment": experiment_id, "unit_type": unit_type, "start": start, "end": end}
        return await asyncio.to_thread(self._query, metric_query(metric), params)

    def _query(self, sql: str, params: dict[str, object]) -> list[VariantRow]:
        return [
            VariantRow(
                variant=str(r["variant"]),
                n=int(r["n"]),
                exposures=int(r["exposures"]),
                sum_y=float(r["sum_y"]),
                sum_y2=float(r["sum_y2"]),
                sum_x=float(r["sum_x"]),
                sum_x2=float(r["sum_x2"]),
                sum_xy=float(r["sum_xy"]),
            )
            for r in self._clickhouse().query(sql, params)
        ]
