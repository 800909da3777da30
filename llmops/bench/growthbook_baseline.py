"""GrowthBook side of `llmops bench experiment`: the same 20 experiments in GrowthBook's SDK.

The GrowthBook Python SDK is not a dependency of this project, so it lives in a venv of its own
under `.llmops/bench/growthbook-venv` (gitignored). This module only manages that venv and runs
`growthbook_harness.py` there as a subprocess; the harness maps our layers/experiments onto
GrowthBook namespaces/experiments (the mapping is documented in its docstring), evaluates all
of them per unit in-process and prints BENCH-format case dicts as its last stdout line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Newest GrowthBook Python SDK on PyPI when this baseline was written (4.0.0, requires
# Python >= 3.9). Pinned exactly so that the baseline numbers are comparable run to run;
# bump deliberately (the venv is rebuilt when the marker below does not match).
GROWTHBOOK_VERSION = "4.0.0"
GROWTHBOOK_REQUIREMENT = f"growthbook=={GROWTHBOOK_VERSION}"

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".llmops" / "bench" / "growthbook-venv"
MARKER = VENV_DIR / "llmops-growthbook-version"
HARNESS = Path(__file__).resolve().with_name("growthbook_harness.py")

INSTALL_TIMEOUT_S = 600
HARNESS_TIMEOUT_S = 1800
_TAIL_LINES = 40


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """Our environment minus what would leak our interpreter or packages into the venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_growthbook_venv(log: Callable[[str], None], venv: Path = VENV_DIR) -> Path:
    """Create (or reuse) the GrowthBook venv and return its python. RuntimeError on failure."""
    python = _venv_python(venv)
    marker = venv / MARKER.name
    if python.exists() and marker.exists() and marker.read_text().strip() == GROWTHBOOK_VERSION:
        return python

    started = time.monotonic()
    log(f"growthbook: creating venv {venv} (one-time; installs {GROWTHBOOK_REQUIREMENT})")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run_or_raise(
        [sys.executable, "-m", "venv", str(venv)],
        what=f"creating the GrowthBook venv at {venv}",
        timeout=300,
    )
    log(f"growthbook: pip install {GROWTHBOOK_REQUIREMENT}")
    _run_or_raise(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            GROWTHBOOK_REQUIREMENT,
        ],
        what=f"pip install {GROWTHBOOK_REQUIREMENT} into {venv}",
        timeout=INSTALL_TIMEOUT_S,
    )
    probe = subprocess.run(
        [str(python), "-c", "import growthbook; print(growthbook.__version__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    installed = probe.stdout.strip()
    if probe.returncode != 0 or installed != GROWTHBOOK_VERSION:
        raise RuntimeError(
            f"GrowthBook venv at {venv} is unusable after install: import growthbook gave "
            f"{installed or 'nothing'} (want {GROWTHBOOK_VERSION}): {_tail(probe.stderr)}"
        )
    marker.write_text(GROWTHBOOK_VERSION + "\n")
    log(f"growthbook: venv ready in {time.monotonic() - started:.0f} s")
    return python


def _run_or_raise(cmd: list[str], *, what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_clean_env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise RuntimeError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)}"
        )


def _tail(text: str, lines: int = _TAIL_LINES, chars: int = 4000) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def run_growthbook_baseline(
    *, spec_path: Path, calls: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Measure GrowthBook's SDK assigning one unit to the spec's experiments; BENCH case dicts.

    `spec_path` is the bench's JSON spec (layers, experiments, units, context). Returns one
    dict, case "assign_inprocess_20exp", system "growthbook": latency of evaluating every
    experiment for one unit, `calls` calls at concurrency 1 after a warm-up. Raises
    RuntimeError when the venv or the harness fails.
    """
    python = ensure_growthbook_venv(log)
    config = {"spec_path": str(Path(spec_path).resolve()), "calls": calls}
    cmd = [str(python), str(HARNESS)]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
        )
    except OSError as exc:
        raise RuntimeError(f"starting the GrowthBook harness failed: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr
    stderr_tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def pump_stderr() -> None:
        for raw in stderr:
            line = raw.rstrip("\n")
            stderr_tail.append(line)
            log(line)

    pump = threading.Thread(target=pump_stderr, name="growthbook-harness-stderr", daemon=True)
    pump.start()
    watchdog = threading.Timer(HARNESS_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        proc.stdin.write(json.dumps(config))
        proc.stdin.close()
        stdout = proc.stdout.read()
        returncode = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pump.join(timeout=10)
    if returncode != 0:
        raise RuntimeError(
            f"GrowthBook harness failed (exit {returncode}):\n" + "\n".join(stderr_tail)
        )
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        parsed = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(c, dict) for c in parsed):
        raise RuntimeError(
            f"GrowthBook harness printed no JSON case list; stdout tail: {lines[-3:]}"
        )
    return parsed
