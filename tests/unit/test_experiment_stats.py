"""Experiment statistics, checked against scipy and by simulation with known effects."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps  # type: ignore[import-untyped]

from services.experiment.stats import (
    BPS_TOTAL,
    CupedMoments,
    Moments,
    SrmVerdict,
    cuped,
    srm,
    thompson_weights,
    welch,
)

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def moments(values: FloatArray) -> Moments:
    return Moments(n=len(values), sum=float(values.sum()), sum_sq=float((values**2).sum()))


def cuped_moments(y: FloatArray, x: FloatArray) -> CupedMoments:
    return CupedMoments(
        n=len(y),
        sum_y=float(y.sum()),
        sum_y2=float((y**2).sum()),
        sum_x=float(x.sum()),
        sum_x2=float((x**2).sum()),
        sum_xy=float((x * y).sum()),
    )


# --------------------------------------------------------------------------------------------
# Moments and Welch
# --------------------------------------------------------------------------------------------


def test_moments_mean_and_variance() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    m = moments(values)
    assert m.mean == pytest.approx(values.mean())
    assert m.variance == pytest.approx(values.var(ddof=1))
    assert Moments(1, 3.0, 9.0).variance == 0.0
    assert math.isnan(Moments(0, 0.0, 0.0).mean)
    with pytest.raises(ValueError, match="n must be >= 0"):
        Moments(-1, 0.0, 0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(10.0, 2.0, size=800)
    b = rng.normal(10.2, 3.5, size=1300)
    result = welch(moments(a), moments(b))
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    assert result.degrees_of_freedom == pytest.approx(ref.df, rel=1e-9)
    low, high = ref.confidence_interval(0.95)
    assert result.abs_ci[0] == pytest.approx(low, rel=1e-9)
    assert result.abs_ci[1] == pytest.approx(high, rel=1e-9)
    assert result.absolute_difference == pytest.approx(b.mean() - a.mean(), rel=1e-9)
    assert result.relative_difference == pytest.approx(b.mean() / a.mean() - 1.0, rel=1e-9)
    assert result.significant == (result.p_value < 0.05)
    # The order of the arms only flips the sign of the t statistic: the p-value is the same.
    assert sps.ttest_ind(a, b, equal_var=False).pvalue == pytest.approx(ref.pvalue, rel=1e-12)


def test_welch_ci_coverage_and_relative_ci_coverage() -> None:
    rng = np.random.default_rng(20240601)
    mean_c, effect = 10.0, 0.5
    true_rel = effect / mean_c
    sims, abs_hits, rel_hits = 400, 0, 0
    for _ in range(sims):
        c = rng.normal(mean_c, 3.0, size=200)
        t = rng.normal(mean_c + effect, 4.0, size=300)
        result = welch(moments(c), moments(t))
        abs_hits += result.abs_ci[0] <= effect <= result.abs_ci[1]
        rel_hits += result.rel_ci[0] <= true_rel <= result.rel_ci[1]
    assert 0.92 <= abs_hits / sims <= 0.98
    assert 0.92 <= rel_hits / sims <= 0.98


def test_welch_detects_a_real_effect() -> None:
    rng = np.random.default_rng(7)
    c = rng.normal(5.0, 1.0, size=2000)
    t = rng.normal(5.3, 1.0, size=2000)  # +0.3 sd
    result = welch(moments(c), moments(t))
    assert result.p_value < 0.001
    assert result.significant
    assert result.abs_ci[0] > 0.0
    assert result.abs_ci[0] <= 0.3 <= result.abs_ci[1]
    # Relative CI: around +6%, excludes 0, roughly the absolute CI scaled by the control mean.
    low, high = result.rel_ci
    assert 0.0 < low < result.relative_difference < high
    assert low <= 0.06 <= high
    assert high - low == pytest.approx((result.abs_ci[1] - result.abs_ci[0]) / 5.0, rel=0.1)


def test_welch_level_changes_ci_width() -> None:
    rng = np.random.default_rng(11)
    c, t = moments(rng.normal(0, 1, 500)), moments(rng.normal(0.1, 1, 500))
    narrow, wide = welch(c, t, level=0.8), welch(c, t, level=0.99)
    assert narrow.p_value == wide.p_value
    assert wide.abs_ci[1] - wide.abs_ci[0] > narrow.abs_ci[1] - narrow.abs_ci[0]
    assert wide.level == 0.99
    with pytest.raises(ValueError, match="level"):
        welch(c, t, level=1.0)


def test_welch_degenerate_inputs() -> None:
    tiny = Moments(1, 2.0, 4.0)
    ok = Moments(10, 20.0, 50.0)
    result = welch(tiny, ok)
    assert math.isnan(result.p_value)
    assert not result.significant
    assert all(math.isnan(v) for v in result.abs_ci)
    # Zero standard error: both arms constant.
    const = welch(Moments(5, 5.0, 5.0), Moments(5, 10.0, 20.0))
    assert const.absolute_difference == 1.0
    assert math.isnan(const.p_value) and not const.significant
    # Control mean 0: relative difference undefined, absolute one still fine.
    zero = welch(Moments(3, 0.0, 2.0), Moments(3, 3.0, 5.0))
    assert math.isnan(zero.relative_difference)
    assert all(math.isnan(v) for v in zero.rel_ci)
    assert not math.isnan(zero.p_value)


# --------------------------------------------------------------------------------------------
# SRM
# --------------------------------------------------------------------------------------------


def test_srm_matches_scipy_chisquare() -> None:
    observed = {"control": 5040, "a": 2430, "b": 2530}
    shares = {"control": 0.5, "a": 0.25, "b": 0.25}
    result = srm(observed, shares)
    ref = sps.chisquare([5040, 2430, 2530], f_exp=[5000, 2500, 2500])
    assert result.chi_square == pytest.approx(ref.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert result.degrees_of_freedom == 2
    assert result.total == 10_000
    assert result.expected == pytest.approx({"control": 5000.0, "a": 2500.0, "b": 2500.0})


def test_srm_fair_split_passes_and_skew_is_flagged() -> None:
    fair = srm({"c": 100_180, "t": 99_820}, {"c": 0.5, "t": 0.5})
    assert fair.verdict == SrmVerdict.PASS == "PASS"
    skewed = srm({"c": 101_000, "t": 99_000}, {"c": 0.5, "t": 0.5})
    assert skewed.p_value < 0.001
    assert skewed.verdict == SrmVerdict.MISMATCH


def test_srm_false_positive_rate_near_threshold() -> None:
    rng = np.random.default_rng(99)
    probs = [0.5, 0.25, 0.25]
    shares = {"c": 0.5, "a": 0.25, "b": 0.25}
    samples = rng.multinomial(10_000, probs, size=2000)
    flagged = sum(
        srm({"c": int(s[0]), "a": int(s[1]), "b": int(s[2])}, shares).verdict == SrmVerdict.MISMATCH
        for s in samples
    )
    assert flagged / len(samples) <= 0.005


def test_srm_insufficient_data_renormalisation_and_zero_shares() -> None:
    small = srm({"c": 30, "t": 60}, {"c": 0.5, "t": 0.5})
    assert small.verdict == SrmVerdict.INSUFFICIENT_DATA
    assert small.total == 90
    empty = srm({}, {"c": 0.5, "t": 0.5})
    assert empty.verdict == SrmVerdict.INSUFFICIENT_DATA
    assert math.isnan(empty.p_value)

    observed = {"c": 5100, "t": 4900}
    base = srm(observed, {"c": 0.5, "t": 0.5})
    # Shares in bps are renormalised.
    assert srm(observed, {"c": 5000, "t": 5000}).p_value == pytest.approx(base.p_value)
    # A 0-share variant is excluded, even with units observed in it.
    with_zero = srm({**observed, "off": 40}, {"c": 0.5, "t": 0.5, "off": 0.0})
    assert with_zero.p_value == pytest.approx(base.p_value)
    assert with_zero.total == 10_000
    assert "off" not in with_zero.expected
    # A positive-share variant missing from the observations counts 0 units.
    missing = srm({"c": 1000}, {"c": 0.5, "t": 0.5})
    assert missing.verdict == SrmVerdict.MISMATCH


def test_srm_validation() -> None:
    with pytest.raises(ValueError, match="'x'"):
        srm({"x": 10}, {"c": 0.5, "t": 0.5})
    with pytest.raises(ValueError, match="'c'"):
        srm({"c": -1}, {"c": 0.5, "t": 0.5})
    with pytest.raises(ValueError, match="'t'"):
        srm({"c": 1}, {"c": 0.5, "t": -0.5})
    with pytest.raises(ValueError, match="positive sum"):
        srm({"c": 1}, {"c": 0.0})


# --------------------------------------------------------------------------------------------
# CUPED
# --------------------------------------------------------------------------------------------

RHO = 0.7


def correlated(rng: np.random.Generator, n: int, effect: float) -> tuple[FloatArray, FloatArray]:
    """Pre-period x and metric y with corr(x, y) = RHO, var(y) = 4, plus a treatment effect."""
    x = rng.normal(20.0, 3.0, size=n)
    noise = rng.normal(0.0, 1.0, size=n)
    z = (x - 20.0) / 3.0
    y = 50.0 + effect + 2.0 * (RHO * z + math.sqrt(1 - RHO**2) * noise)
    return y, x


def test_cuped_adjusted_moments_match_raw_adjustment() -> None:
    rng = np.random.default_rng(5)
    yc, xc = correlated(rng, 3000, 0.0)
    yt, xt = correlated(rng, 3500, 0.4)
    adj_c, adj_t, theta = cuped(cuped_moments(yc, xc), cuped_moments(yt, xt))
    x_all, y_all = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    expected_theta = np.cov(x_all, y_all)[0, 1] / x_all.var(ddof=1)
    assert theta == pytest.approx(expected_theta, rel=1e-9)
    assert theta == pytest.approx(2.0 * RHO / 3.0, rel=0.05)
    mean_x = x_all.mean()
    for adj, y, x in ((adj_c, yc, xc), (adj_t, yt, xt)):
        raw = y - theta * (x - mean_x)
        assert adj.n == len(raw)
        assert adj.mean == pytest.approx(raw.mean(), rel=1e-9)
        assert adj.variance == pytest.approx(raw.var(ddof=1), rel=1e-6)
        # Variance reduction 1 - rho^2.
        assert adj.variance == pytest.approx(y.var(ddof=1) * (1 - RHO**2), rel=0.06)


def test_cuped_unbiased_and_narrower() -> None:
    rng = np.random.default_rng(123)
    effect, sims = 0.1, 200
    diffs, hits, width_ratios = [], 0, []
    for _ in range(sims):
        yc, xc = correlated(rng, 1000, 0.0)
        yt, xt = correlated(rng, 1000, effect)
        adj_c, adj_t, _ = cuped(cuped_moments(yc, xc), cuped_moments(yt, xt))
        adjusted = welch(adj_c, adj_t)
        plain = welch(moments(yc), moments(yt))
        diffs.append(adjusted.absolute_difference)
        hits += adjusted.abs_ci[0] <= effect <= adjusted.abs_ci[1]
        width_ratios.append(
            (adjusted.abs_ci[1] - adjusted.abs_ci[0]) / (plain.abs_ci[1] - plain.abs_ci[0])
        )
    # Unbiased: the mean estimate is within 3 standard errors of the true effect.
    se_of_mean = float(np.std(diffs, ddof=1)) / math.sqrt(sims)
    assert abs(float(np.mean(diffs)) - effect) < 3 * se_of_mean
    assert 0.90 <= hits / sims <= 0.99
    # Narrower by about sqrt(1 - rho^2) ~= 0.714, every time.
    assert max(width_ratios) < 0.8
    assert float(np.mean(width_ratios)) == pytest.approx(math.sqrt(1 - RHO**2), rel=0.03)


def test_cuped_single_large_sample_contains_effect() -> None:
    rng = np.random.default_rng(8)
    yc, xc = correlated(rng, 5000, 0.0)
    yt, xt = correlated(rng, 5000, 0.15)
    adj_c, adj_t, _ = cuped(cuped_moments(yc, xc), cuped_moments(yt, xt))
    adjusted, plain = welch(adj_c, adj_t), welch(moments(yc), moments(yt))
    assert adjusted.abs_ci[0] <= 0.15 <= adjusted.abs_ci[1]
    assert adjusted.abs_ci[1] - adjusted.abs_ci[0] < plain.abs_ci[1] - plain.abs_ci[0]
    assert adjusted.p_value < plain.p_value


def test_cuped_constant_covariate_is_a_no_op() -> None:
    y = np.array([1.0, 2.0, 3.0, 5.0])
    x = np.full(4, 7.0)
    adj_c, adj_t, theta = cuped(cuped_moments(y, x), cuped_moments(y + 1, x))
    assert theta == 0.0
    assert adj_c.mean == pytest.approx(y.mean())
    assert adj_t.variance == pytest.approx(y.var(ddof=1))


# --------------------------------------------------------------------------------------------
# Thompson sampling
# --------------------------------------------------------------------------------------------


def test_thompson_bandit_converges_to_the_best_arm() -> None:
    rates = {"a": 0.04, "b": 0.05, "c": 0.07}
    arms = list(rates)
    floor = 200
    rng = np.random.default_rng(2024)
    successes = dict.fromkeys(arms, 0)
    trials = dict.fromkeys(arms, 0)
    weights = thompson_weights(successes, trials, min_weight_bps=floor, seed=0)
    for round_no in range(40):
        assert sum(weights.values()) == BPS_TOTAL
        assert all(w >= floor for w in weights.values())
        p = np.array([weights[a] for a in arms], dtype=np.float64) / BPS_TOTAL
        chosen = rng.choice(len(arms), size=500, p=p)
        for i, arm in enumerate(arms):
            n = int((chosen == i).sum())
            trials[arm] += n
            successes[arm] += int(rng.binomial(n, rates[arm]))
        weights = thompson_weights(successes, trials, min_weight_bps=floor, seed=round_no + 1)
    assert max(weights, key=lambda a: weights[a]) == "c"
    assert weights["c"] > 6000
    assert all(w >= floor for w in weights.values())
    assert sum(weights.values()) == BPS_TOTAL
    assert trials["c"] > trials["a"] and trials["c"] > trials["b"]


def test_thompson_is_deterministic_and_order_independent() -> None:
    s = {"x": 40, "y": 45, "z": 38}
    n = {"x": 1000, "y": 1000, "z": 1000}
    first = thompson_weights(s, n, min_weight_bps=100, seed=42)
    again = thompson_weights(s, n, min_weight_bps=100, seed=42)
    reordered = thompson_weights(
        dict(reversed(s.items())), dict(reversed(n.items())), min_weight_bps=100, seed=42
    )
    assert first == again == reordered
    assert sum(first.values()) == BPS_TOTAL
    assert all(isinstance(w, int) for w in first.values())


def test_thompson_floor_and_rounding() -> None:
    # A clear winner: the losers sit exactly on the floor, the winner takes the rest.
    s = {"a": 10, "b": 10, "c": 300}
    n = {"a": 1000, "b": 1000, "c": 1000}
    assert thompson_weights(s, n, min_weight_bps=500, seed=1) == {"a": 500, "b": 500, "c": 9000}
    # A floor using nearly all the budget: the winner gets the rounding remainder.
    assert thompson_weights(s, n, min_weight_bps=3333, seed=1) == {"a": 3333, "b": 3333, "c": 3334}
    # Floor times arms equal to the budget: everyone on the floor.
    four = {"a": 0, "b": 0, "c": 0, "d": 0}
    assert thompson_weights(four, four, min_weight_bps=2500, seed=3) == dict.fromkeys(four, 2500)
    # No data and no floor: roughly even, summing exactly to 10000.
    none = {"a": 0, "b": 0, "c": 0}
    even = thompson_weights(none, none, min_weight_bps=0, draws=30_000, seed=9)
    assert sum(even.values()) == BPS_TOTAL
    assert all(abs(w - 3333) < 150 for w in even.values())
    # A single arm gets everything.
    assert thompson_weights({"solo": 3}, {"solo": 10}, min_weight_bps=0) == {"solo": 10_000}


def test_thompson_floor_preserves_ratios_of_unclamped_arms() -> None:
    s = {"a": 50, "b": 52, "c": 0}
    n = {"a": 1000, "b": 1000, "c": 1000}
    raw = thompson_weights(s, n, min_weight_bps=0, seed=4)
    floored = thompson_weights(s, n, min_weight_bps=1000, seed=4)
    assert raw["c"] == 0
    assert floored["c"] == 1000
    assert floored["a"] / floored["b"] == pytest.approx(raw["a"] / raw["b"], rel=1e-3)


@pytest.mark.parametrize(
    ("successes", "trials", "floor", "match"),
    [
        ({"a": 5, "b": 1}, {"a": 4, "b": 2}, 0, "'a'"),
        ({"a": -1, "b": 1}, {"a": 4, "b": 2}, 0, "'a'"),
        ({"a": 0, "b": 0}, {"a": 4, "b": -2}, 0, "'b'"),
        ({"a": 1}, {"a": 4, "b": 2}, 0, "'b'"),
        ({"a": 1, "b": 1, "extra": 0}, {"a": 4, "b": 2}, 0, "'extra'"),
        ({"a": 1, "b": 1, "c": 1}, {"a": 4, "b": 2, "c": 3}, 3334, "3 arms exceeds"),
        ({"a": 1}, {"a": 4}, -1, "min_weight_bps"),
        ({}, {}, 0, "at least one arm"),
    ],
)
def test_thompson_validation(
    successes: dict[str, int], trials: dict[str, int], floor: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        thompson_weights(successes, trials, min_weight_bps=floor)


def test_thompson_draws_validation() -> None:
    with pytest.raises(ValueError, match="draws"):
        thompson_weights({"a": 1}, {"a": 2}, min_weight_bps=0, draws=0)
