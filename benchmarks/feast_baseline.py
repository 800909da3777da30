"""Feast side of `llmops bench features`: the same Redis, the same data, Feast's read paths.

Feast runs from a venv of its own (:mod:`benchmarks.baseline`); `feast_harness.py` builds
a Feast repo on our Redis, loads the bench data and measures the Python SDK
(`get_online_features`) and the HTTP feature server (`feast serve`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.baseline import Baseline

# Newest Feast release on PyPI when this baseline was written that installs on our Python 3.11
# (0.67.0 needs >=3.10). Pinned exactly so that the baseline numbers are comparable run to run;
# bump deliberately (the venv is rebuilt when its marker does not match).
FEAST_VERSION = "0.67.0"
FEAST = Baseline(
    name="feast",
    requirement=f"feast[redis]=={FEAST_VERSION}",
    version=FEAST_VERSION,
    probe="import feast, redis; print(feast.__version__)",
    harness=Path(__file__).resolve().with_name("feast_harness.py"),
    install_timeout_s=1800,
    run_timeout_s=3600,
)


def run_feast_baseline(
    *,
    redis_host: str,
    redis_port: int,
    data_dir: Path,
    quick: bool,
    concurrency: int,
    calls: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Measure Feast (SDK and feature server) on the bench data; returns BENCH case dicts.

    One dict per (case, system) with system "feast-sdk" / "feast-server", the cases being the
    keys of spec.json's "requests". Raises RuntimeError when the venv or the harness fails.
    """
    config = {
        "redis_host": redis_host,
        "redis_port": redis_port,
        "data_dir": str(Path(data_dir).resolve()),
        "quick": quick,
        "concurrency": concurrency,
        "calls": calls,
    }
    return FEAST.run(config, log)
