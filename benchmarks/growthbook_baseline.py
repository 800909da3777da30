"""GrowthBook side of `llmops bench experiment`: the same 20 experiments in GrowthBook's SDK.

GrowthBook runs from a venv of its own (:mod:`benchmarks.baseline`); `growthbook_harness.py`
maps our layers/experiments onto GrowthBook namespaces/experiments (the mapping is in its
docstring) and evaluates all of them per unit in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.baseline import Baseline

# Newest GrowthBook Python SDK on PyPI when this baseline was written (4.0.0, requires
# Python >= 3.9). Pinned exactly so that the baseline numbers are comparable run to run.
GROWTHBOOK_VERSION = "4.0.0"
GROWTHBOOK = Baseline(
    name="growthbook",
    requirement=f"growthbook=={GROWTHBOOK_VERSION}",
    version=GROWTHBOOK_VERSION,
    probe="import growthbook; print(growthbook.__version__)",
    harness=Path(__file__).resolve().with_name("growthbook_harness.py"),
)


def run_growthbook_baseline(
    *, spec_path: Path, calls: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Measure GrowthBook's SDK assigning one unit to the spec's experiments; BENCH case dicts.

    `spec_path` is the bench's JSON spec (layers, experiments, units, context). Returns one
    dict, case "assign_inprocess_20exp", system "growthbook": latency of evaluating every
    experiment for one unit, `calls` calls at concurrency 1 after a warm-up. Raises
    RuntimeError when the venv or the harness fails.
    """
    return GROWTHBOOK.run({"spec_path": str(Path(spec_path).resolve()), "calls": calls}, log)
