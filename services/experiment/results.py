"""GetResults: exposures joined with feedback in ClickHouse, then the statistics.

One query per metric returns, per variant, the sufficient statistics of the per-unit metric
(n, sum, sum of squares) and of its pre-period covariate (for CUPED). ClickHouse does the
join and the per-unit aggregation; Python only runs :mod:`services.experiment.stats` on a
few numbers per variant.

- **Units**: every unit exposed to the experiment in the window; its variant is the one of
  its *first* exposure (a unit seen in two variants — after an override, say — counts once,
  where it started), ``exposures`` counts all its exposure events.
- **Metric value of a unit**: computed from its feedback events at or after its first
  exposure and before the window end (attribution starts at exposure). Units without
  feedback count as 0 — the denominator is exposed units, not converting ones.
- **CUPED covariate**: the same metric over the ``PRE_PERIOD`` (14 days) before the unit's
  first exposure. When no unit has pre-period data the covariate is constant and CUPED
  reduces to the plain comparison (theta = 0); the response reports CUPED was used only
  when theta != 0.
- **SRM**: exposed units per variant against the configured weights (chi-squared, flagged
  at p < 0.001).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llmops.clickhouse.base import ClickHouseStore
from llmops.errors import FailedPrecondition, InvalidArgument
from llmops.v1 import experiment_pb2
from services.experiment import model, stats

PRE_PERIOD_DAYS = 14

METRICS: Mapping[str, str] = {
    # name -> per-feedback-row value; the unit's value is max (binary) or sum (counts, values)
    "booking": "max:f.kind = 'BOOKING'",
    "conversion": "max:f.kind = 'CONVERSION'",
    "click": "max:f.kind = 'CLICK'",
    "thumbs_up": "max:f.kind = 'THUMBS' AND f.thumb = 'UP'",
    "clicks": "sum:f.kind = 'CLICK'",
    "booking_value": "sum:if(f.kind = 'BOOKING', f.value_nanos / 1e9, 0)",
    "dwell_s": "sum:if(f.kind = 'DWELL', f.dwell_ms / 1000, 0)",
}
"""The metrics GetResults knows. Binary metrics (max) are conversion rates; the others are
per-unit sums. Names are what experiments list in ``metrics``."""


def _unit_value(metric: str, when: str) -> str:
    agg, expr = METRICS[metric].split(":", 1)
    if agg == "max":
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
        SELECT unit_id, event_time, kind, thumb, value_nanos, dwell_ms
        FROM feedback
        WHERE unit_type = %(unit_type)s
          AND event_time >= %(start)s - INTERVAL {PRE_PERIOD_DAYS} DAY AND event_time < %(end)s
    ) AS f ON f.unit_id = u.unit_id
    GROUP BY u.unit_id, u.variant, u.exposures
)
GROUP BY variant
"""


def compute(
    store: ClickHouseStore,
    exp: experiment_pb2.Experiment,
    request: experiment_pb2.GetResultsRequest,
    now: float | None = None,
) -> experiment_pb2.GetResultsResponse:
    metrics = list(request.metrics) or list(exp.metrics)
    if not metrics:
        raise InvalidArgument("metrics", f"experiment {exp.id} lists no metrics; name some")
    for i, m in enumerate(metrics):
        if m not in METRICS:
            raise InvalidArgument(
                f"metrics[{i}]", f"unknown metric {m!r} (known: {', '.join(sorted(METRICS))})"
            )
    if exp.status in (model.DRAFT,):
        raise FailedPrecondition(f"experiment {exp.id} has not started: no exposures yet")
    alpha = exp.alpha or 0.05
    level = request.confidence_level or 1 - alpha
    if not 0 < level < 1:
        raise InvalidArgument("confidence_level", "must be in (0, 1)")
    end_s = (
        request.window.end_time.ToMicroseconds() / 1e6
        if request.window.HasField("end_time")
        else (now or time.time())
    )
    start_s = (
        request.window.start_time.ToMicroseconds() / 1e6
        if request.window.HasField("start_time")
        else exp.start_time.ToMicroseconds() / 1e6
    )
    params = {
        "experiment": exp.id,
        "unit_type": exp.unit_type,
        "start": datetime.fromtimestamp(start_s, UTC),
        "end": datetime.fromtimestamp(end_s, UTC),
    }
    response = experiment_pb2.GetResultsResponse(
        experiment_id=exp.id, experiment_version=exp.version
    )
    response.window.start_time.FromMicroseconds(int(start_s * 1e6))
    response.window.end_time.FromMicroseconds(int(end_s * 1e6))
    control = next(v.key for v in exp.variants if v.is_control)
    per_metric: dict[str, dict[str, dict[str, Any]]] = {}
    for metric in metrics:
        rows = store.query(metric_query(metric), params)
        per_metric[metric] = {str(r["variant"]): r for r in rows}
    first = per_metric[metrics[0]]
    for v in exp.variants:
        row = first.get(v.key, {})
        vs = response.variants.add(
            variant=v.key,
            is_control=v.is_control,
            units=int(row.get("n", 0)),
            exposures=int(row.get("exposures", 0)),
        )
        for metric in metrics:
            r = per_metric[metric].get(v.key)
            if r is None:
                continue
            mom = stats.Moments(int(r["n"]), float(r["sum_y"]), float(r["sum_y2"]))
            vs.metrics.add(
                metric=metric, count=mom.n, mean=mom.mean, variance=mom.variance, sum=mom.sum
            )
    for metric in metrics:
        c_row = per_metric[metric].get(control)
        for v in exp.variants:
            t_row = per_metric[metric].get(v.key)
            if v.is_control or c_row is None or t_row is None:
                continue
            c, t = _cuped_moments(c_row), _cuped_moments(t_row)
            adjusted_c, adjusted_t, theta = stats.cuped(c, t)
            result = stats.welch(adjusted_c, adjusted_t, level)
            comparison = response.comparisons.add(
                metric=metric,
                control=control,
                treatment=v.key,
                absolute_difference=result.absolute_difference,
                relative_difference=result.relative_difference,
                p_value=result.p_value,
                significant=result.significant,
            )
            comparison.absolute_ci.lower, comparison.absolute_ci.upper = result.abs_ci
            comparison.absolute_ci.level = level
            comparison.relative_ci.lower, comparison.relative_ci.upper = result.rel_ci
            comparison.relative_ci.level = level
            del theta  # reported through the CI width; the proto has no field for it yet
    weights = model.weights_bps(exp)
    total_weight = sum(weights) or 1
    shares = {v.key: w / total_weight for v, w in zip(exp.variants, weights, strict=True)}
    observed = {v.key: int(first.get(v.key, {}).get("n", 0)) for v in exp.variants}
    check = stats.srm(observed, shares)
    response.srm.verdict = {
        "PASS": experiment_pb2.SRM_VERDICT_PASS,
        "MISMATCH": experiment_pb2.SRM_VERDICT_MISMATCH,
        "INSUFFICIENT_DATA": experiment_pb2.SRM_VERDICT_INSUFFICIENT_DATA,
    }[str(check.verdict)]
    response.srm.chi_square = check.chi_square
    response.srm.p_value = check.p_value
    response.srm.threshold = 0.001
    response.srm.expected_shares.update(shares)
    response.srm.observed_units.update(observed)
    response.compute_time.FromMicroseconds(int((now or time.time()) * 1e6))
    return response


def _cuped_moments(row: Mapping[str, Any]) -> stats.CupedMoments:
    return stats.CupedMoments(
        n=int(row["n"]),
        sum_y=float(row["sum_y"]),
        sum_y2=float(row["sum_y2"]),
        sum_x=float(row["sum_x"]),
        sum_x2=float(row["sum_x2"]),
        sum_xy=float(row["sum_xy"]),
    )


def bandit_rewards(
    store: ClickHouseStore, exp: experiment_pb2.Experiment, now: float | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(successes, trials) per arm: units exposed since the start, and those with the binary
    reward metric after their first exposure (the same attribution as GetResults)."""
    metric = exp.bandit.reward_metric
    if not METRICS.get(metric, "").startswith("max:"):
        raise FailedPrecondition(f"bandit reward {metric!r} is not a binary metric")
    params = {
        "experiment": exp.id,
        "unit_type": exp.unit_type,
        "start": datetime.fromtimestamp(exp.start_time.ToMicroseconds() / 1e6, UTC),
        "end": datetime.fromtimestamp(now or time.time(), UTC),
    }
    rows = {str(r["variant"]): r for r in store.query(metric_query(metric), params)}
    trials = {v.key: int(rows[v.key]["n"]) if v.key in rows else 0 for v in exp.variants}
    successes = {v.key: int(rows[v.key]["sum_y"]) if v.key in rows else 0 for v in exp.variants}
    return successes, trials
