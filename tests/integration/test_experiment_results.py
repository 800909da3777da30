"""GetResults on chdb (servicer conversions, analysis, ClickHouse results store): simulated
exposures and feedback with a known effect, checked against scipy and the known truth; SRM
flagged on a skewed log and not on a fair one; bandit rewards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats  # type: ignore[import-untyped]

from llmops.clickhouse.chdb_store import ChdbStore
from llmops.clickhouse.migrations import apply_migrations
from llmops.v1 import experiment_pb2
from services.experiment import model
from services.experiment.catalog import Catalog
from services.experiment.results import Analysis, ResultsQuery
from services.experiment.results_store import ClickHouseResults
from services.experiment.servicer import results_query, results_response
from services.experiment.store import FileConfigStore

pytestmark = pytest.mark.infra

START_S = 1_790_000_000
DAY = 86_400
UNITS = 20_000


def _experiment(exp_id: str) -> experiment_pb2.Experiment:
    exp = experiment_pb2.Experiment(
        id=exp_id, unit_type="user", layer="page", traffic_bps=10_000, version=2,
        status=model.RUNNING, metrics=["booking", "click"],
    )  # fmt: skip
    exp.variants.add(key="control", weight=50, is_control=True)
    exp.variants.add(key="treatment", weight=50)
    exp.start_time.FromSeconds(START_S)
    return exp


def _ms(seconds: np.ndarray) -> np.ndarray:
    return (seconds * 1000).astype("datetime64[ms]")


def simulate(
    store: ChdbStore, exp: experiment_pb2.Experiment, *, effect: float, drop_treatment: float = 0.0
) -> dict[str, Any]:
    """Exposures + feedback for UNITS users; returns the per-unit truth for scipy."""
    rng = np.random.default_rng(7)
    compiled = model.compile_experiment(exp)
    units = [f"u-{i}" for i in range(UNITS)]
    variant = np.array([compiled.keys[compiled.variant_for(u)] for u in units])
    keep = ~((variant == "treatment") & (rng.random(UNITS) < drop_treatment))
    propensity = rng.beta(2, 18, UNITS)  # per-user booking propensity (~10%)
    first = START_S + rng.random(UNITS) * 5 * DAY
    n_exp = rng.integers(1, 4, UNITS)
    ex_unit = np.repeat(np.arange(UNITS), n_exp)[np.repeat(keep, n_exp)]
    # the first exposure of a unit at first[i], repeats (page views) up to a day later
    repeat = np.concatenate([np.arange(k) for k in n_exp])[np.repeat(keep, n_exp)] > 0
    ex_time = first[ex_unit] + rng.random(len(ex_unit)) * DAY * repeat
    store.insert("exposures", {
        "event_time": _ms(ex_time), "event_id": [str(uuid.uuid4()) for _ in ex_unit],
        "unit_type": ["user"] * len(ex_unit), "unit_id": [units[i] for i in ex_unit],
        "experiment_id": [exp.id] * len(ex_unit), "experiment_version": [2] * len(ex_unit),
        "variant": variant[ex_unit].tolist(), "tenant": ["acme"] * len(ex_unit),
    })  # fmt: skip
    lift = np.where(variant == "treatment", effect, 0.0)
    booked = rng.random(UNITS) < np.clip(propensity + lift, 0, 1)
    pre_booked = rng.random(UNITS) < propensity  # pre-period: same propensity, no effect
    clicked = rng.random(UNITS) < 0.3
    rows: list[tuple[int, float, str]] = []
    for i in range(UNITS):
        if booked[i]:
            rows.append((i, first[i] + rng.random() * DAY, "BOOKING"))
        if pre_booked[i]:
            rows.append((i, first[i] - 1 - rng.random() * 7 * DAY, "BOOKING"))
        if clicked[i]:
            rows.append((i, first[i] + 60, "CLICK"))
    store.insert("feedback", {
        "event_time": _ms(np.array([r[1] for r in rows])),
        "received_time": _ms(np.array([r[1] for r in rows])),
        "event_id": [str(uuid.uuid4()) for _ in rows], "unit_type": ["user"] * len(rows),
        "unit_id": [units[r[0]] for r in rows], "kind": [r[2] for r in rows],
        "tenant": ["acme"] * len(rows),
    })  # fmt: skip
    return {"variant": variant, "keep": keep, "booked": booked, "clicked": clicked}


@pytest.fixture(scope="module")
def store(chdb_session: Any) -> Iterator[ChdbStore]:
    s = ChdbStore(chdb_session, database="it_exp_results")
    s.execute("DROP DATABASE IF EXISTS it_exp_results")
    s = ChdbStore(chdb_session, database="it_exp_results")
    apply_migrations(s)
    yield s
    s.execute("DROP DATABASE IF EXISTS it_exp_results")


def _request(exp_id: str) -> experiment_pb2.GetResultsRequest:
    request = experiment_pb2.GetResultsRequest(experiment_id=exp_id)
    request.window.end_time.FromSeconds(START_S + 10 * DAY)
    return request


def analysis(store: ChdbStore, *experiments: experiment_pb2.Experiment) -> Analysis:
    """The analysis over ``store``, with ``experiments`` in force."""
    catalog = Catalog(FileConfigStore(Path("/nonexistent/experiments.json")))
    catalog.snapshot = model.build_snapshot(1, {}, {e.id: e for e in experiments})
    return Analysis(catalog, ClickHouseResults(lambda: store), clock=lambda: START_S + 10 * DAY)


def compute(
    store: ChdbStore, exp: experiment_pb2.Experiment, request: experiment_pb2.GetResultsRequest
) -> experiment_pb2.GetResultsResponse:
    """GetResults as the servicer runs it: request -> query -> analysis -> response."""
    request.experiment_id = exp.id
    found = asyncio.run(analysis(store, exp).results(results_query(request)))
    return results_response(found)


def test_known_effect_is_found_and_matches_scipy(store: ChdbStore) -> None:
    exp = _experiment("results-effect")
    truth = simulate(store, exp, effect=0.03)
    got = compute(store, exp, _request(exp.id))
    units = {v.variant: v.units for v in got.variants}
    assert units == {k: int((truth["variant"] == k).sum()) for k in ("control", "treatment")}
    assert got.srm.verdict == experiment_pb2.SRM_VERDICT_PASS
    booking = next(c for c in got.comparisons if c.metric == "booking")
    assert booking.significant and booking.p_value < 0.001
    assert booking.absolute_ci.lower < 0.03 < booking.absolute_ci.upper
    # click has no pre-period data: CUPED is the identity and the numbers are plain Welch,
    # which must equal scipy's on the per-unit values
    click = next(c for c in got.comparisons if c.metric == "click")
    c_vals = truth["clicked"][truth["variant"] == "control"].astype(float)
    t_vals = truth["clicked"][truth["variant"] == "treatment"].astype(float)
    ref = scipy_stats.ttest_ind(t_vals, c_vals, equal_var=False)
    assert click.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert click.absolute_difference == pytest.approx(t_vals.mean() - c_vals.mean(), abs=1e-12)
    assert not click.significant or click.p_value < 0.05
    # CUPED on booking uses the pre-period bookings: the interval is narrower than plain Welch
    b_c = truth["booked"][truth["variant"] == "control"].astype(float)
    b_t = truth["booked"][truth["variant"] == "treatment"].astype(float)
    plain = scipy_stats.ttest_ind(b_t, b_c, equal_var=False).confidence_interval(0.95)
    assert booking.absolute_ci.upper - booking.absolute_ci.lower < plain.high - plain.low


def test_srm_is_flagged_on_a_skewed_log(store: ChdbStore) -> None:
    exp = _experiment("results-skewed")
    simulate(store, exp, effect=0.0, drop_treatment=0.08)  # 8% of treatment exposures lost
    got = compute(store, exp, _request(exp.id))
    assert got.srm.verdict == experiment_pb2.SRM_VERDICT_MISMATCH
    assert got.srm.p_value < 0.001
    assert got.srm.observed_units["treatment"] < got.srm.observed_units["control"]


def test_bad_requests(store: ChdbStore) -> None:
    from llmops.errors import FailedPrecondition, InvalidArgument, NotFound

    exp = _experiment("results-bad")
    with pytest.raises(InvalidArgument, match=r"metrics\[0\]: unknown metric 'revenue'"):
        compute(store, exp, experiment_pb2.GetResultsRequest(metrics=["revenue"]))
    with pytest.raises(InvalidArgument, match="confidence_level"):
        compute(store, exp, experiment_pb2.GetResultsRequest(confidence_level=1.5))
    draft = _experiment("results-draft")
    draft.status = model.DRAFT
    with pytest.raises(FailedPrecondition, match="not started"):
        compute(store, draft, experiment_pb2.GetResultsRequest())
    with pytest.raises(NotFound, match="'nope'"):
        asyncio.run(analysis(store).results(ResultsQuery("nope")))


def test_bandit_rewards_count_units_and_converted_units(chdb_session: Any) -> None:
    store = ChdbStore(chdb_session, database="it_exp_bandit")  # feedback of its units only
    store.execute("DROP DATABASE IF EXISTS it_exp_bandit")
    store = ChdbStore(chdb_session, database="it_exp_bandit")
    apply_migrations(store)
    exp = _experiment("results-bandit")
    exp.type = model.BANDIT
    exp.bandit.reward_metric = "booking"
    try:
        truth = simulate(store, exp, effect=0.03)
        successes, trials = asyncio.run(analysis(store, exp).bandit_rewards(exp))
    finally:
        store.execute("DROP DATABASE IF EXISTS it_exp_bandit")
    for key in ("control", "treatment"):
        in_arm = truth["variant"] == key
        assert trials[key] == int(in_arm.sum())
        assert successes[key] == int((truth["booked"] & in_arm).sum())
