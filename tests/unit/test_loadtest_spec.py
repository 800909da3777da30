"""Load scenarios and SLOs as data (loadtests/spec.py): validation, shapes, judging."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.spec import (
    Measured,
    Objectives,
    Scenario,
    SpecError,
    judge,
    load_objectives,
    load_scenarios,
    percentile,
    scenario_with,
)


def _scenario(**kw: object) -> Scenario:
    body: dict[str, object] = {"name": "t", "description": "d", "users": 8, "duration_s": 100}
    return Scenario.model_validate({**body, **kw})


def test_the_shipped_files_validate_and_name_every_shape() -> None:
    scenarios = load_scenarios()
    assert {"storefront", "ramp", "spike", "soak", "smoke"} <= set(scenarios)
    assert {s.shape for s in scenarios.values()} == {"steady", "ramp", "spike", "soak"}
    objectives = load_objectives()
    assert "page:search_results" in objectives.objectives
    assert "InferenceService/Run[query_intent]" in objectives.objectives


def test_every_scenario_is_bounded_in_time_and_requests() -> None:
    for s in load_scenarios().values():
        assert 0 < s.duration_s <= 4 * 3600 and 0 < s.max_requests <= 10_000_000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("users", 0, "users"),
        ("duration_s", 0, "duration_s"),
        ("duration_s", 10**6, "duration_s"),
        ("pages", {"checkout": 1}, "unknown ['checkout']"),
        ("pages", {"search_results": 0}, "positive weight"),
        ("think_time_s", (2, 1), "think_time_s"),
        ("shape", "sawtooth", "shape"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_field(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(SpecError, match="scenario t") as caught:
        scenario_with(_scenario(), **{field: value})  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_a_bad_file_names_the_scenario_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("scenarios:\n  mine: {description: x, users: -1, duration_s: 5}\n")
    with pytest.raises(SpecError, match=r"scenarios\.mine\.users"):
        load_scenarios(path)
    path.write_text("objectives: [1, 2]\n")
    with pytest.raises(SpecError, match="objectives"):
        load_objectives(path)
    path.write_text("scenarios: {a: [\n")
    with pytest.raises(SpecError, match="not YAML"):
        load_scenarios(path)


def test_overrides_keep_the_rest_and_none_keeps_the_field() -> None:
    s = scenario_with(_scenario(), duration_s=30, users=None)
    assert (s.duration_s, s.users, s.name) == (30, 8, "t")


def test_shapes_move_users_as_documented() -> None:
    steady = _scenario()
    assert [steady.users_at(t) for t in (0, 50, 99.9, 100)] == [8, 8, 8, None]
    ramp = _scenario(shape="ramp")
    assert [ramp.users_at(t) for t in (0, 25, 50, 99)] == [1, 2, 4, 8]
    spike = _scenario(shape="spike")
    assert [spike.users_at(t) for t in (0, 39, 40, 59, 60, 99)] == [2, 2, 8, 8, 2, 2]
    assert _scenario(shape="spike", users=2).users_at(0) == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0, 99.0, 100.0)  # fmt: skip
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def _objectives() -> Objectives:
    return Objectives.model_validate({
        "default_error_rate": 0.01,
        "objectives": {
            "A": {"p50_ms": 5, "p99_ms": 20},
            "B": {"p99_ms": 10, "error_rate": 0.5},
            "C": {"p99_ms": 10},
        },
    })  # fmt: skip


def test_judge_passes_and_fails_each_bound() -> None:
    checks, notes = judge(
        {"A": Measured(1000, 20, 4.0, 9.0, 25.0), "B": Measured(100, 10, 1, 2, 3)}, _objectives()
    )
    got = {(c.name, c.what): c.passed for c in checks}
    assert got == {
        ("A", "p50_ms"): True,
        ("A", "p99_ms"): False,  # 25 > 20
        ("A", "error_rate"): False,  # 2% > the 1% default
        ("B", "p99_ms"): True,
        ("B", "error_rate"): True,
    }
    assert notes == ["C: not called in this run"]


def test_too_few_calls_judges_the_error_rate_only() -> None:
    checks, notes = judge({"A": Measured(5, 1, 100, 100, 100)}, _objectives())
    assert [(c.name, c.what, c.passed) for c in checks] == [("A", "error_rate", False)]
    assert "A: 5 calls, fewer than 20: percentiles not judged" in notes
