"""Statistics for experiment analysis: Welch's t-test, SRM check, CUPED and Thompson sampling.

Pure functions over plain dataclasses: no I/O. Inputs are per-variant sufficient statistics
(count, sum, sum of squares, and for CUPED the covariate's sums and the cross product), as
computed by an aggregation query, so no raw per-unit values are ever needed here.

Numerical note: variances are computed from raw sums, ``(sum_sq - sum**2 / n) / (n - 1)``,
which loses precision when the mean is large relative to the standard deviation (roughly
``mean / sd > 1e6``). Metrics in this service (revenue, counts, rates) are far from that regime.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

# scipy ships no type stubs; importing it through importlib gives an ``Any`` module whatever
# the mypy configuration says about missing imports.
_sps: Any = importlib.import_module("scipy.stats")

__all__ = [
    "BPS_TOTAL",
    "Comparison",
    "CupedMoments",
    "Moments",
    "SrmResult",
    "SrmVerdict",
    "cuped",
    "srm",
    "thompson_weights",
    "welch",
]

BPS_TOTAL = 10_000
"""Traffic weights are integers in basis points that sum to exactly this."""

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Welch's t-test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one variant's per-unit metric values."""

    n: int
    sum: float
    sum_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"Moments.n must be >= 0, got {self.n}")

    @property
    def mean(self) -> float:
        """Sample mean; ``nan`` when ``n == 0``."""
        return self.sum / self.n if self.n > 0 else _NAN

    @property
    def variance(self) -> float:
        """Sample variance with ``ddof=1``; 0 when ``n < 2`` (clamped at 0 against rounding)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_sq - self.sum * self.sum / self.n) / (self.n - 1))


@dataclass(frozen=True)
class Comparison:
    """Treatment versus control.

    ``relative_difference`` is ``(mean_t - mean_c) / mean_c`` (``nan`` when the control mean
    is 0). ``significant`` is ``p_value < 1 - level``, which is equivalent to ``abs_ci``
    excluding 0. Degenerate inputs (an arm with ``n < 2``, or zero standard error) give
    ``nan`` for the p-value, CIs and degrees of freedom, and ``significant=False``.
    """

    absolute_difference: float
    relative_difference: float
    abs_ci: tuple[float, float]
    rel_ci: tuple[float, float]
    level: float
    p_value: float
    significant: bool
    degrees_of_freedom: float


def welch(control: Moments, treatment: Moments, level: float = 0.95) -> Comparison:
    """Welch's unequal-variance t-test (two-sided) of ``treatment - control``.

    With ``v = variance / n`` per arm and ``se = sqrt(v_c + v_t)``:

    - ``t = (mean_t - mean_c) / se``; degrees of freedom by Welch-Satterthwaite,
      ``df = se**4 / (v_c**2 / (n_c - 1) + v_t**2 / (n_t - 1))``;
      ``p = 2 * P(T_df > |t|)`` (identical to ``scipy.stats.ttest_ind(..., equal_var=False)``).
    - Absolute CI: ``diff +/- q * se`` with ``q`` the ``(1 + level) / 2`` quantile of ``T_df``.
    - Relative CI by the delta method on the ratio of means ``R = mean_t / mean_c``
      (the arms are independent)::

          Var(R) ~= v_t / mean_c**2 + mean_t**2 * v_c / mean_c**4
          rel_ci  = (R - 1) +/- q * sqrt(Var(R))

      using the same quantile ``q``. The approximation is good when the control mean is well
      away from 0 relative to its standard error; with ``mean_c == 0`` it is ``(nan, nan)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean_c, mean_t = control.mean, treatment.mean
    diff = mean_t - mean_c
    relative = diff / mean_c if control.n > 0 and mean_c != 0.0 else _NAN

    v_c = control.variance / control.n if control.n > 0 else _NAN
    v_t = treatment.variance / treatment.n if treatment.n > 0 else _NAN
    se2 = v_c + v_t
    if control.n < 2 or treatment.n < 2 or not se2 > 0.0:
        nan_ci = (_NAN, _NAN)
        return Comparison(diff, relative, nan_ci, nan_ci, level, _NAN, False, _NAN)

    se = math.sqrt(se2)
    df = se2 * se2 / (v_c * v_c / (control.n - 1) + v_t * v_t / (treatment.n - 1))
    t_stat = diff / se
    p_value = float(min(1.0, 2.0 * _sps.t.sf(abs(t_stat), df)))
    q = float(_sps.t.ppf(0.5 + level / 2.0, df))
    abs_ci = (diff - q * se, diff + q * se)

    if mean_c != 0.0:
        var_ratio = v_t / mean_c**2 + mean_t**2 * v_c / mean_c**4
        half = q * math.sqrt(var_ratio)
        rel_ci = (relative - half, relative + half)
    else:
        rel_ci = (_NAN, _NAN)

    return Comparison(
        absolute_difference=diff,
        relative_difference=relative,
        abs_ci=abs_ci,
        rel_ci=rel_ci,
        level=level,
        p_value=p_value,
        significant=p_value < 1.0 - level,
        degrees_of_freedom=df,
    )


# --------------------------------------------------------------------------------------------
# Sample ratio mismatch
# --------------------------------------------------------------------------------------------


class SrmVerdict(StrEnum):
    PASS = "PASS"
    MISMATCH = "MISMATCH"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


@dataclass(frozen=True)
class SrmResult:
    """Outcome of a sample ratio mismatch check.

    ``expected`` holds the expected unit counts of the variants that were tested (those with a
    positive expected share); ``p_value`` is ``nan`` when nothing could be tested.
    """

    verdict: SrmVerdict
    p_value: float
    chi_square: float
    degrees_of_freedom: int
    total: int
    expected: dict[str, float]


def srm(
    observed: Mapping[str, int],
    expected_shares: Mapping[str, float],
    threshold: float = 0.001,
    min_units: int = 100,
) -> SrmResult:
    """Chi-square goodness-of-fit test of observed unit counts against the configured split.

    - Shares are renormalised to sum to 1 (so weights in bps or percentages work as well).
    - Variants with expected share 0 are excluded, together with any units observed in them:
      the test is over the variants that are meant to receive traffic. (Units in a 0-share
      variant are an assignment bug better caught by a direct check.)
    - A variant with a positive share missing from ``observed`` counts as 0 units.
    - ``total`` is the number of units in the tested variants; below ``min_units`` the verdict
      is ``INSUFFICIENT_DATA`` (the p-value is still reported when computable).
    - ``MISMATCH`` when ``p_value < threshold``; with fewer than two tested variants the test is
      vacuous and the verdict is ``PASS`` with ``p_value = 1``.

    Raises ``ValueError`` for negative counts or shares, all-zero shares, or observed variants
    absent from ``expected_shares``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    for name, count in observed.items():
        if name not in expected_shares:
            raise ValueError(f"variant {name!r} is observed but has no expected share")
        if count < 0:
            raise ValueError(f"variant {name!r} has a negative count {count}")
    for name, share in expected_shares.items():
        if not share >= 0.0 or not math.isfinite(share):
            raise ValueError(f"variant {name!r} has an invalid expected share {share}")
    share_total = math.fsum(expected_shares.values())
    if share_total <= 0.0:
        raise ValueError("expected shares must have a positive sum")

    names = [name for name, share in expected_shares.items() if share > 0.0]
    counts = [int(observed.get(name, 0)) for name in names]
    total = sum(counts)
    expected = {name: total * expected_shares[name] / share_total for name in names}
    dof = len(names) - 1

    if dof < 1:
        verdict = SrmVerdict.INSUFFICIENT_DATA if total < min_units else SrmVerdict.PASS
        return SrmResult(verdict, 1.0, 0.0, 0, total, expected)
    if total == 0:
        return SrmResult(SrmVerdict.INSUFFICIENT_DATA, _NAN, _NAN, dof, 0, expected)

    chi_square = math.fsum(
        (count - expected[name]) ** 2 / expected[name]
        for name, count in zip(names, counts, strict=True)
    )
    p_value = float(_sps.chi2.sf(chi_square, dof))
    if total < min_units:
        verdict = SrmVerdict.INSUFFICIENT_DATA
    elif p_value < threshold:
        verdict = SrmVerdict.MISMATCH
    else:
        verdict = SrmVerdict.PASS
    return SrmResult(verdict, p_value, chi_square, dof, total, expected)


# --------------------------------------------------------------------------------------------
# CUPED
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CupedMoments:
    """Sufficient statistics of metric ``y`` and pre-period covariate ``x`` for one variant."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"CupedMoments.n must be >= 0, got {self.n}")


def cuped(control: CupedMoments, treatment: CupedMoments) -> tuple[Moments, Moments, float]:
    """CUPED variance reduction (Deng, Xu, Kohavi, Walker 2013).

    ``theta = cov(x, y) / var(x)`` is estimated on both variants pooled together, and each
    unit's metric is replaced by ``y' = y - theta * (x - mean_x)`` with ``mean_x`` the pooled
    covariate mean. The adjusted means stay unbiased for the treatment effect (``x`` is
    measured before assignment, so its expectation is equal across arms), while the variance
    of ``y'`` is ``var(y) * (1 - corr(x, y)**2)``. Returns the adjusted ``Moments`` of control
    and treatment (feed them to ``welch``) and ``theta``; ``theta`` is 0 when ``x`` has no
    variance. As is standard, the CI from ``welch`` ignores the small extra uncertainty of
    estimating ``theta``.

    The adjusted sums follow from the raw ones, per variant, with ``d = x - mean_x``::

        sum(d)     = sum_x - n * mean_x
        sum(d^2)   = sum_x2 - 2 * mean_x * sum_x + n * mean_x**2
        sum(y * d) = sum_xy - mean_x * sum_y
        sum(y')    = sum_y - theta * sum(d)
        sum(y'^2)  = sum_y2 - 2 * theta * sum(y * d) + theta**2 * sum(d^2)
    """
    n = control.n + treatment.n
    sum_x = control.sum_x + treatment.sum_x
    sum_y = control.sum_y + treatment.sum_y
    sum_x2 = control.sum_x2 + treatment.sum_x2
    sum_xy = control.sum_xy + treatment.sum_xy
    theta = 0.0
    mean_x = sum_x / n if n > 0 else 0.0
    if n >= 2:
        sxx = sum_x2 - sum_x * sum_x / n
        sxy = sum_xy - sum_x * sum_y / n
        if sxx > 0.0:
            theta = sxy / sxx

    def adjust(m: CupedMoments) -> Moments:
        # sum over units of d = x - mean_x, d^2 and y * d
        sum_d = m.sum_x - m.n * mean_x
        sum_d2 = m.sum_x2 - 2.0 * mean_x * m.sum_x + m.n * mean_x * mean_x
        sum_yd = m.sum_xy - mean_x * m.sum_y
        return Moments(
            n=m.n,
            sum=m.sum_y - theta * sum_d,
            sum_sq=m.sum_y2 - 2.0 * theta * sum_yd + theta * theta * sum_d2,
        )

    return adjust(control), adjust(treatment), theta


# --------------------------------------------------------------------------------------------
# Thompson sampling
# --------------------------------------------------------------------------------------------


def thompson_weights(
    successes: Mapping[str, int],
    trials: Mapping[str, int],
    *,
    min_weight_bps: int,
    draws: int = 10_000,
    seed: int | None = None,
) -> dict[str, int]:
    """Traffic weights in basis points for a Bernoulli bandit by Thompson sampling.

    Each arm's conversion rate has the posterior ``Beta(1 + s, 1 + n - s)`` (uniform prior).
    The weight of an arm is the Monte Carlo probability that it is the best: ``draws`` samples
    per arm from ``numpy.random.default_rng(seed)``, counting how often each arm's sample is the
    largest. Arms are processed in sorted name order, so the result does not depend on the
    mappings' order and is reproducible for a given ``seed``.

    Floor: every arm gets at least ``min_weight_bps``. Arms whose share falls below it are
    clamped to it and the rest of the budget is re-divided among the others in proportion to
    their probability, repeating until no further arm drops below the floor (water-filling, so
    the ratios between unclamped arms are preserved). The result is rounded to integers that
    sum to exactly 10000 by the largest-remainder method, ties going to the earlier arm name;
    rounding never takes an arm below the floor.

    Raises ``ValueError`` (naming the arm where there is one) when the two mappings have
    different arms, a count is negative, ``successes > trials``, ``min_weight_bps`` is negative
    or ``min_weight_bps * arms > 10000``, ``draws < 1``, or there are no arms.
    """
    arms = sorted(trials)
    if not arms:
        raise ValueError("at least one arm is required")
    for arm in arms:
        if arm not in successes:
            raise ValueError(f"arm {arm!r} has trials but no successes entry")
    for arm in successes:
        if arm not in trials:
            raise ValueError(f"arm {arm!r} has successes but no trials entry")
    for arm in arms:
        s, n = successes[arm], trials[arm]
        if n < 0:
            raise ValueError(f"arm {arm!r}: trials must be >= 0, got {n}")
        if not 0 <= s <= n:
            raise ValueError(f"arm {arm!r}: successes must be in [0, trials={n}], got {s}")
    if min_weight_bps < 0:
        raise ValueError(f"min_weight_bps must be >= 0, got {min_weight_bps}")
    if min_weight_bps * len(arms) > BPS_TOTAL:
        raise ValueError(
            f"min_weight_bps={min_weight_bps} times {len(arms)} arms exceeds {BPS_TOTAL} bps"
        )
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")

    s_arr = np.array([successes[a] for a in arms], dtype=np.float64)
    n_arr = np.array([trials[a] for a in arms], dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples = rng.beta(1.0 + s_arr, 1.0 + n_arr - s_arr, size=(draws, len(arms)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(arms))
    probabilities = [float(w) / draws for w in wins]

    shares = _apply_floor(probabilities, float(min_weight_bps))
    return dict(zip(arms, _largest_remainder(shares), strict=True))


def _apply_floor(probabilities: list[float], floor: float) -> list[float]:
    """Real-valued bps (summing to 10000) with every entry >= ``floor``, by water-filling."""
    k = len(probabilities)
    clamped = [False] * k
    values = [0.0] * k
    while True:
        free = [i for i in range(k) if not clamped[i]]
        budget = BPS_TOTAL - floor * (k - len(free))
        mass = math.fsum(probabilities[i] for i in free)
        for i in free:
            values[i] = budget * probabilities[i] / mass if mass > 0.0 else budget / len(free)
        newly = [i for i in free if values[i] < floor]
        if not newly:
            break
        for i in newly:
            clamped[i] = True
            values[i] = floor
        if all(clamped):
            break
    return values


def _largest_remainder(values: list[float]) -> list[int]:
    """Round non-negative reals summing to 10000 to integers summing to exactly 10000."""
    base = [math.floor(v) for v in values]
    leftover = BPS_TOTAL - sum(base)
    # Largest fractional part first; ties broken by position (arms are in sorted name order).
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - base[i]), i))
    for i in order[: max(0, leftover)]:
        base[i] += 1
    return base
