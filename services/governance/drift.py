"""Drift statistics, pure: bin edges from reference quantiles, the population stability
index over fixed bins, and the two-sample Kolmogorov-Smirnov statistic from counts.

ClickHouse does the heavy lifting (:mod:`services.governance.drift_job` computes the
quantiles, the per-window histograms and the KS statistic in SQL); these functions are the
same math on plain counts, tested against numpy/scipy, and turn the histograms into PSI.

Conventions (the SQL follows them):

* **Bins**: ``edges`` e_1 < ... < e_k split the line into k + 1 bins; a value v falls into
  bin ``#{e_i <= v}`` (0 .. k), i.e. bins are ``(-inf, e_1), [e_1, e_2), ..., [e_k, +inf)``
  — ``numpy.digitize(v, edges)``. Edges are the reference window's quantiles at
  1/b, 2/b, ..., (b-1)/b for ``b`` bins, duplicates dropped (a discrete metric with ties
  gets fewer bins).
* **PSI** = sum over bins of (q_i - p_i) * ln(q_i / p_i), p = reference proportions, q =
  latest proportions; an empty bin's proportion is raised to ``epsilon`` (then the vector is
  not renormalised), so PSI stays finite. It equals KL(p||q) + KL(q||p) on the smoothed
  proportions. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
* **KS** = max over values x of |F_ref(x) - F_latest(x)|, the empirical CDFs; from counts
  per distinct value (sorted) it is exact (``scipy.stats.ks_2samp(...).statistic``); from
  counts per bin it is the statistic evaluated at the bin edges only (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_EPSILON = 1e-4


def quantile_levels(bins: int) -> list[float]:
    """The levels whose reference quantiles are the inner bin edges of ``bins`` bins."""
    if bins < 2:
        raise ValueError("bins must be >= 2")
    return [i / bins for i in range(1, bins)]


def bin_edges(quantiles: Sequence[float]) -> list[float]:
    """Sorted, distinct, finite inner edges from reference quantiles."""
    return sorted({float(q) for q in quantiles if math.isfinite(q)})


def bin_index(value: float, edges: Sequence[float]) -> int:
    """The bin of ``value``: how many edges are <= it (``numpy.digitize``)."""
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if edges[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin (``len(edges) + 1`` bins)."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bin_index(v, edges)] += 1
    return counts


def proportions(counts: Sequence[int], epsilon: float = DEFAULT_EPSILON) -> list[float]:
    total = sum(counts)
    if total <= 0:
        raise ValueError("an empty histogram has no proportions")
    return [max(c / total, epsilon) for c in counts]


def psi(reference: Sequence[int], latest: Sequence[int], epsilon: float = DEFAULT_EPSILON) -> float:
    """Population stability index of ``latest`` against ``reference`` (counts per bin)."""
    if len(reference) != len(latest):
        raise ValueError("histograms must have the same bins")
    p = proportions(reference, epsilon)
    q = proportions(latest, epsilon)
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


def ks_statistic(reference: Sequence[int], latest: Sequence[int]) -> float:
    """Two-sample KS statistic from counts over the same ordered support (distinct values
    or bins): the largest gap between the two cumulative distributions."""
    if len(reference) != len(latest):
        raise ValueError("count vectors must have the same support")
    n_ref, n_latest = sum(reference), sum(latest)
    if n_ref <= 0 or n_latest <= 0:
        raise ValueError("both samples must be non-empty")
    cum_ref = cum_latest = 0
    d = 0.0
    for r, x in zip(reference, latest, strict=True):
        cum_ref += r
        cum_latest += x
        d = max(d, abs(cum_ref / n_ref - cum_latest / n_latest))
    return d


@dataclass(frozen=True, slots=True)
class Thresholds:
    psi: float
    ks: float

    def crossed(self, psi_value: float, ks_value: float) -> bool:
        """Drifted: either statistic at or above its threshold (0 disables a threshold)."""
        return (self.psi > 0 and psi_value >= self.psi) or (self.ks > 0 and ks_value >= self.ks)
