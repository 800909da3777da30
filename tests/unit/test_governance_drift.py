"""Drift math (services/governance/drift.py) against numpy and scipy on simulated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from services.governance.drift import (
    Thresholds,
    bin_edges,
    bin_index,
    histogram,
    ks_statistic,
    proportions,
    psi,
    quantile_levels,
)


def counts_on_union(a: np.ndarray, b: np.ndarray) -> tuple[list[int], list[int]]:
    support = np.union1d(a, b)
    ref = np.searchsorted(support, a)
    lat = np.searchsorted(support, b)
    n = len(support)
    return (
        np.bincount(ref, minlength=n).tolist(),
        np.bincount(lat, minlength=n).tolist(),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.3, 1.0), (0.0, 1.5), (1.0, 0.7)])
def test_ks_from_counts_equals_scipy(seed: int, shift: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0, 1, 3000), 2)  # ties, as token counts and rounded latencies
    b = np.round(rng.normal(shift, scale, 1700), 2)
    ref, lat = counts_on_union(a, b)
    assert ks_statistic(ref, lat) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_of_continuous_samples_equals_scipy() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.lognormal(3, 0.5, 2000), rng.lognormal(3.1, 0.5, 2500)
    ref, lat = counts_on_union(a, b)
    assert ks_statistic(ref, lat) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_over_bins_is_a_lower_bound() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.2, 1, 5000)
    edges = bin_edges(np.quantile(a, quantile_levels(10)).tolist())
    binned = ks_statistic(histogram(a.tolist(), edges), histogram(b.tolist(), edges))
    exact = stats.ks_2samp(a, b).statistic
    assert binned <= exact + 1e-12
    assert binned > 0.5 * exact


def test_bins_match_numpy_digitize() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 50, 2000).astype(float)
    edges = bin_edges(np.quantile(values, quantile_levels(10)).tolist())
    expected = np.bincount(np.digitize(values, edges), minlength=len(edges) + 1)
    assert histogram(values.tolist(), edges) == expected.tolist()
    assert [bin_index(v, [1.0, 2.0]) for v in (0.5, 1.0, 1.5, 2.0, 9.0)] == [0, 1, 1, 2, 2]


def test_edges_drop_duplicates_and_non_finite() -> None:
    assert bin_edges([3.0, 1.0, 1.0, math.inf, 2.0, math.nan]) == [1.0, 2.0, 3.0]
    assert quantile_levels(4) == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        quantile_levels(1)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 1.0])
def test_psi_is_the_symmetric_kl_divergence(shift: float) -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 20_000), rng.normal(shift, 1, 20_000)
    edges = bin_edges(np.quantile(a, quantile_levels(10)).tolist())
    ref, lat = histogram(a.tolist(), edges), histogram(b.tolist(), edges)
    p, q = np.array(proportions(ref)), np.array(proportions(lat))
    assert min(ref) > 0 and min(lat) > 0  # no smoothing: the proportions sum to 1
    expected = stats.entropy(q, p) + stats.entropy(p, q)
    assert psi(ref, lat) == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-12)
    assert psi(ref, lat) == pytest.approx(float(expected), rel=1e-9)


def test_psi_reads_as_usual() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(0, 1, 50_000)
    edges = bin_edges(np.quantile(a, quantile_levels(10)).tolist())
    ref = histogram(a.tolist(), edges)
    same = histogram(rng.normal(0, 1, 50_000).tolist(), edges)
    shifted = histogram(rng.normal(1, 1, 50_000).tolist(), edges)
    assert psi(ref, same) < 0.01
    assert psi(ref, shifted) > 0.25
    assert psi(ref, ref) == 0.0


def test_psi_stays_finite_with_empty_bins() -> None:
    value = psi([100, 100, 0], [0, 100, 100])
    assert math.isfinite(value)
    assert value == pytest.approx(
        (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    )
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError):
        ks_statistic([0, 0], [1, 1])


def test_thresholds() -> None:
    t = Thresholds(psi=0.25, ks=0.2)
    assert not t.crossed(0.1, 0.1)
    assert t.crossed(0.25, 0.0)
    assert t.crossed(0.0, 0.2)
    assert not Thresholds(psi=0, ks=0).crossed(10, 1)
