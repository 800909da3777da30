"""GetResults and bandit rewards: per-variant rows from the results store, then statistics.

The rows (:mod:`services.experiment.results_store`) are a few sufficient statistics per
variant; this module decides what to ask for and runs :mod:`services.experiment.stats`:

- **CUPED**: the covariate is the same metric over the 14-day pre-period before each unit's
  first exposure. When no unit has pre-period data the covariate is constant and CUPED
  reduces to the plain comparison (theta = 0).
- **Welch's t-test** per treatment vs control, at ``confidence_level`` (default 1 - the
  experiment's alpha, 0.95 when unset).
- **SRM**: exposed units per variant against the configured weights (chi-squared, flagged
  at p < 0.001).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from llmops.errors import FailedPrecondition, InvalidArgument
from llmops.v1 import experiment_pb2
from services.experiment import model, stats
from services.experiment.catalog import Catalog
from services.experiment.metrics import BINARY, METRICS
from services.experiment.results_store import ResultsStore, VariantRow

SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class ResultsQuery:
    experiment_id: str
    metrics: Sequence[str] = ()
    """Empty: the experiment's metrics."""
    start_s: float | None = None
    """Window start (Unix seconds); None: the experiment's start."""
    end_s: float | None = None
    """Window end (Unix seconds); None: now."""
    confidence_level: float = 0.0
    """0: 1 - the experiment's alpha."""


@dataclass(frozen=True, slots=True)
class MetricSummary:
    metric: str
    moments: stats.Moments


@dataclass(frozen=True, slots=True)
class VariantSummary:
    variant: str
    is_control: bool
    units: int
    exposures: int
    metrics: list[MetricSummary]


@dataclass(frozen=True, slots=True)
class MetricComparison:
    metric: str
    control: str
    treatment: str
    result: stats.Comparison


@dataclass(frozen=True, slots=True)
class SrmCheck:
    result: stats.SrmResult
    threshold: float
    expected_shares: dict[str, float]
    observed_units: dict[str, int]


@dataclass(frozen=True, slots=True)
class Results:
    experiment_id: str
    experiment_version: int
    start_s: float
    end_s: float
    variants: list[VariantSummary]
    comparisons: list[MetricComparison]
    srm: SrmCheck
    computed_s: float


class Analysis:
    def __init__(
        self, catalog: Catalog, store: ResultsStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.catalog = catalog
        self.store = store
        self._clock = clock

    async def results(self, query: ResultsQuery) -> Results:
        exp = self.catalog.experiment(query.experiment_id)
        metrics = list(query.metrics) or list(exp.metrics)
        if not metrics:
            raise InvalidArgument("metrics", f"experiment {exp.id} lists no metrics; name some")
        for i, m in enumerate(metrics):
            if m not in METRICS:
                known = ", ".join(sorted(METRICS))
                raise InvalidArgument(f"metrics[{i}]", f"unknown metric {m!r} (known: {known})")
        if exp.status == model.DRAFT:
            raise FailedPrecondition(f"experiment {exp.id} has not started: no exposures yet")
        level = query.confidence_level or 1 - (exp.alpha or 0.05)
        if not 0 < level < 1:
            raise InvalidArgument("confidence_level", "must be in (0, 1)")
        now = self._clock()
        end_s = query.end_s if query.end_s is not None else now
        start_s = query.start_s if query.start_s is not None else _seconds(exp.start_time)
        rows = {m: await self._rows(m, exp, start_s, end_s) for m in metrics}
        first = rows[metrics[0]]
        return Results(
            experiment_id=exp.id,
            experiment_version=exp.version,
            start_s=start_s,
            end_s=end_s,
            variants=[_variant(v, first, rows) for v in exp.variants],
            comparisons=_comparisons(exp, rows, level),
            srm=_srm(exp, first),
            computed_s=now,
        )

    async def bandit_rewards(
        self, exp: experiment_pb2.Experiment
    ) -> tuple[dict[str, int], dict[str, int]]:
        """(successes, trials) per arm: units exposed since the start, and those with the
        binary reward metric after their first exposure (the attribution of GetResults)."""
        metric = exp.bandit.reward_metric
        if metric not in BINARY:
            raise FailedPrecondition(f"bandit reward {metric!r} is not a binary metric")
        rows = await self._rows(metric, exp, _seconds(exp.start_time), self._clock())
        trials = {v.key: rows[v.key].n if v.key in rows else 0 for v in exp.variants}
        successes = {v.key: int(rows[v.key].sum_y) if v.key in rows else 0 for v in exp.variants}
        return successes, trials

    async def _rows(
        self, metric: str, exp: experiment_pb2.Experiment, start_s: float, end_s: float
    ) -> dict[str, VariantRow]:
        found = await self.store.variant_rows(
            metric,
            exp.id,
            exp.unit_type,
            datetime.fromtimestamp(start_s, UTC),
            datetime.fromtimestamp(end_s, UTC),
        )
        return {r.variant: r for r in found}


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.ToMicroseconds() / 1e6


def _variant(
    v: experiment_pb2.Variant, first: dict[str, VariantRow], rows: dict[str, dict[str, VariantRow]]
) -> VariantSummary:
    row = first.get(v.key)
    return VariantSummary(
        variant=v.key,
        is_control=v.is_control,
        units=row.n if row else 0,
        exposures=row.exposures if row else 0,
        metrics=[
            MetricSummary(metric, stats.Moments(r.n, r.sum_y, r.sum_y2))
            for metric, per_variant in rows.items()
            if (r := per_variant.get(v.key)) is not None
        ],
    )


def _comparisons(
    exp: experiment_pb2.Experiment, rows: dict[str, dict[str, VariantRow]], level: float
) -> list[MetricComparison]:
    control = next(v.key for v in exp.variants if v.is_control)
    out = []
    for metric, per_variant in rows.items():
        c_row = per_variant.get(control)
        for v in exp.variants:
            t_row = per_variant.get(v.key)
            if v.is_control or c_row is None or t_row is None:
                continue
            # theta only narrows the interval; the contract reports no field for it yet
            adjusted_c, adjusted_t, _theta = stats.cuped(_cuped(c_row), _cuped(t_row))
            result = stats.welch(adjusted_c, adjusted_t, level)
            out.append(MetricComparison(metric, control, v.key, result))
    return out


def _srm(exp: experiment_pb2.Experiment, first: dict[str, VariantRow]) -> SrmCheck:
    weights = model.weights_bps(exp)
    total_weight = sum(weights) or 1
    shares = {v.key: w / total_weight for v, w in zip(exp.variants, weights, strict=True)}
    observed = {v.key: first[v.key].n if v.key in first else 0 for v in exp.variants}
    return SrmCheck(stats.srm(observed, shares, SRM_THRESHOLD), SRM_THRESHOLD, shares, observed)


def _cuped(row: VariantRow) -> stats.CupedMoments:
    return stats.CupedMoments(row.n, row.sum_y, row.sum_y2, row.sum_x, row.sum_x2, row.sum_xy)
