"""Scenarios and service-level objectives as data: ``scenarios.yaml`` and ``slo.yaml``.

Pure: loading, validating, and judging a run's numbers against the objectives. Nothing here
starts a load or touches the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

HERE = Path(__file__).resolve().parent
SCENARIOS_FILE = HERE / "scenarios.yaml"
SLO_FILE = HERE / "slo.yaml"

Shape = Literal["steady", "ramp", "spike", "soak"]
PAGES = ("search_results", "property_page", "autocomplete")
"""The pages a storefront shopper visits (loadtests/storefront.py); a scenario weighs them."""

MAX_DURATION_S = 4 * 3600
MAX_USERS = 2000
MAX_REQUESTS = 10_000_000


_Named = TypeVar("_Named", "Scenario", "Probe")


class SpecError(ValueError):
    """A scenario or objective file, or an override, that does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scenario(_Strict):
    """One load: who (users and their pages), how the number of users moves (shape), and
    the bounds that stop it by itself (duration, request cap)."""

    name: str = ""
    description: str
    shape: Shape = "steady"
    users: int = Field(ge=1, le=MAX_USERS)
    spawn_rate: float = Field(2.0, gt=0, le=1000, description="users started per second")
    duration_s: float = Field(gt=0, le=MAX_DURATION_S)
    max_requests: int = Field(100_000, ge=1, le=MAX_REQUESTS)
    think_time_s: tuple[float, float] = (0.5, 2.0)
    pages: dict[str, float] = Field(default_factory=lambda: {"search_results": 1.0})
    click_rate: float = Field(0.3, ge=0, le=1, description="share of search pages with a click")
    booking_rate: float = Field(
        0.05, ge=0, le=1, description="share of property pages ending in a booking"
    )
    catalogue: int = Field(
        200, ge=1, le=2000, description="properties shoppers look at (Zipf-popular, ids 1..N)"
    )
    shoppers: int = Field(500, ge=1, le=500, description="demo shoppers (u-000001..)")

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        low, high = self.think_time_s
        if not 0 <= low <= high <= 60:
            raise ValueError("think_time_s: [low, high] with 0 <= low <= high <= 60")
        unknown = sorted(set(self.pages) - set(PAGES))
        if unknown:
            raise ValueError(f"pages: unknown {unknown}; known: {list(PAGES)}")
        if (
            not self.pages
            or any(w < 0 for w in self.pages.values())
            or not any(self.pages.values())
        ):
            raise ValueError("pages: at least one page with a positive weight")
        return self

    def users_at(self, t_s: float) -> int | None:
        """How many users the shape wants ``t_s`` seconds into the run; None once it is
        over. steady and soak: all users, started at ``spawn_rate``; ramp: from one user up
        to all of them, linearly over the run; spike: a quarter of the users, all of them
        for the middle fifth of the run, then a quarter again."""
        if t_s >= self.duration_s:
            return None
        if self.shape == "ramp":
            return max(1, math.ceil(self.users * t_s / self.duration_s))
        if self.shape == "spike":
            base = max(1, self.users // 4)
            middle = 0.4 * self.duration_s <= t_s < 0.6 * self.duration_s
            return self.users if middle else base
        return self.users


class Probe(_Strict):
    """One RPC driven by ghz at a fixed concurrency: the cost of a call with nothing else
    running, against the same objectives (``objective`` names which)."""

    name: str = ""
    description: str
    service: str = Field(description="the mesh service that serves the call, e.g. experiment")
    call: str = Field(pattern=r"^llmops\.v1\.[A-Za-z]+/[A-Za-z]+$")
    data: dict[str, object] = Field(default_factory=dict)
    concurrency: int = Field(8, ge=1, le=256)
    total: int = Field(20_000, ge=1, le=MAX_REQUESTS)
    duration_s: float = Field(30, gt=0, le=MAX_DURATION_S)
    objective: str

    def as_scenario(self) -> dict[str, object]:
        """What the report's header reads of a run (probes have no pages or think time)."""
        return {"name": self.name, "description": self.description,
                "shape": f"ghz probe of {self.call}", "users": self.concurrency,
                "think_time_s": [0, 0], "duration_s": self.duration_s,
                "max_requests": self.total}  # fmt: skip


class Objective(_Strict):
    """Latency objectives in milliseconds over a whole run, and the share of calls that may
    fail (any status but OK). An unset percentile is not judged."""

    p50_ms: float | None = Field(None, gt=0)
    p95_ms: float | None = Field(None, gt=0)
    p99_ms: float | None = Field(None, gt=0)
    error_rate: float | None = Field(None, ge=0, le=1)
    min_calls: int = Field(
        20, ge=1, description="fewer calls than this in a run: percentiles not judged"
    )


class Objectives(_Strict):
    default_error_rate: float = Field(0.001, ge=0, le=1)
    objectives: dict[str, Objective]


def _read(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not YAML ({exc})") from None


def _first_error(where: str, exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return SpecError(f"{where}{'.' + loc if loc else ''}: {err['msg']}")


def _load_named(path: Path, key: str, model: type[_Named]) -> dict[str, _Named]:
    """The ``key:`` mapping of ``path``, each entry validated as ``model`` under its name."""
    doc = _read(path)
    entries = doc.get(key, {}) if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise SpecError(f"{path}: a mapping '{key}: {{name: ...}}'")
    found: dict[str, _Named] = {}
    for name, body in entries.items():
        if not isinstance(body, dict):
            raise SpecError(f"{path}: {key}.{name}: a mapping")
        try:
            found[name] = model.model_validate({**body, "name": name})
        except ValidationError as exc:
            raise _first_error(f"{path}: {key}.{name}", exc) from None
    return found


def load_scenarios(path: Path = SCENARIOS_FILE) -> dict[str, Scenario]:
    return _load_named(path, "scenarios", Scenario)


def load_probes(path: Path = SCENARIOS_FILE) -> dict[str, Probe]:
    return _load_named(path, "probes", Probe)


def scenario_with(scenario: Scenario, **overrides: float | int | None) -> Scenario:
    """``scenario`` with the given fields replaced (None: kept), validated again."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Scenario.model_validate({**scenario.model_dump(), **changes})
    except ValidationError as exc:
        raise _first_error(f"scenario {scenario.name}", exc) from None


def load_objectives(path: Path = SLO_FILE) -> Objectives:
    doc = _read(path)
    try:
        return Objectives.model_validate(doc)
    except ValidationError as exc:
        raise _first_error(str(path), exc) from None


# -- judging ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One objective of one call name against what a run measured."""

    name: str
    what: str  # "p99_ms", "error_rate", ...
    objective: float
    measured: float
    passed: bool


@dataclass(frozen=True, slots=True)
class Measured:
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def judge(
    measured: Mapping[str, Measured], objectives: Objectives
) -> tuple[list[Check], list[str]]:
    """Every objective that applies to what a run measured, and notes on what was not
    judged. A name the run never called is not judged (a scenario without that page); one
    with fewer than ``min_calls`` calls has its error rate judged but not its percentiles
    (the p99 of five calls means nothing). A run with no check at all is the caller's to
    refuse: nothing measured is not a pass."""
    checks: list[Check] = []
    notes: list[str] = []
    for name, objective in objectives.objectives.items():
        got = measured.get(name)
        if got is None or got.calls == 0:
            notes.append(f"{name}: not called in this run")
            continue
        if got.calls < objective.min_calls:
            notes.append(
                f"{name}: {got.calls} calls, fewer than {objective.min_calls}: "
                "percentiles not judged"
            )
        else:
            for what in ("p50_ms", "p95_ms", "p99_ms"):
                bound = getattr(objective, what)
                if bound is not None:
                    value = getattr(got, what)
                    checks.append(Check(name, what, bound, value, value <= bound))
        rate = (
            objective.error_rate
            if objective.error_rate is not None
            else objectives.default_error_rate
        )
        checks.append(Check(name, "error_rate", rate, got.error_rate, got.error_rate <= rate))
    return checks, notes


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank (a measured value,
    never an interpolation); 0.0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])
