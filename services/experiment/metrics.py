"""The metrics experiments can name (``Experiment.metrics``, ``bandit.reward_metric``).

Only names and kinds live here (validation needs them); how a metric is computed from
feedback events is the results backend's business (:mod:`services.experiment.results_store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

MetricKind = Literal["binary", "sum"]

METRICS: Mapping[str, MetricKind] = {
    "booking": "binary",
    "conversion": "binary",
    "click": "binary",
    "thumbs_up": "binary",
    "clicks": "sum",
    "booking_value": "sum",
    "dwell_s": "sum",
}
"""Binary metrics are a unit's 0/1 outcome (conversion rates; bandit rewards); the others
are per-unit sums."""

BINARY = frozenset(name for name, kind in METRICS.items() if kind == "binary")
