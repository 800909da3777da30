"""Feast side of `llmops bench features`: the same Redis, the same data, Feast's read paths.

Feast is not a dependency of this project (it pins its own pandas/numpy/pydantic/fastapi ranges),
so it lives in a venv of its own under `.llmops/bench/feast-venv` (gitignored). This module only
manages that venv and runs `feast_harness.py` there as a subprocess; the harness builds a Feast
repo on our Redis, loads the bench data and measures the Python SDK (`get_online_features`) and
the HTTP feature server (`feast serve`), printing BENCH-format case dicts as its last stdout line.
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

# Newest Feast release on PyPI when this baseline was written that installs on our Python 3.11
# (0.67.0 needs >=3.10). Pinned exactly so that the baseline numbers are comparable run to run;
# bump deliberately (the venv is rebuilt when the marker below does not match).
FEAST_VERSION = "0.67.0"
FEAST_REQUIREMENT = f"feast[redis]=={FEAST_VERSION}"

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".llmops" / "bench" / "feast-venv"
MARKER = VENV_DIR / "llmops-feast-version"
HARNESS = Path(__file__).resolve().with_name("feast_harness.py")

INSTALL_TIMEOUT_S = 1800
HARNESS_TIMEOUT_S = 3600
_TAIL_LINES = 40


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """Our environment minus what would leak our interpreter or packages into the Feast venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_feast_venv(log: Callable[[str], None], venv: Path = VENV_DIR) -> Path:
    """Create (or reuse) the Feast venv and return its python. Raises RuntimeError on failure."""
    python = _venv_python(venv)
    marker = venv / MARKER.name
    if python.exists() and marker.exists() and marker.read_text().strip() == FEAST_VERSION:
        return python

    started = time.monotonic()
    log(f"feast: creating venv {venv} (one-time; installs {FEAST_REQUIREMENT})")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run_or_raise(
        [sys.executable, "-m", "venv", str(venv)],
        what=f"creating the Feast venv at {venv}",
        timeout=300,
    )
    log(f"feast: pip install {FEAST_REQUIREMENT} (this takes a few minutes)")
    _run_or_raise(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            FEAST_REQUIREMENT,
        ],
        what=f"pip install {FEAST_REQUIREMENT} into {venv}",
        timeout=INSTALL_TIMEOUT_S,
    )
    probe = subprocess.run(
        [str(python), "-c", "import feast, redis; print(feast.__version__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    installed = probe.stdout.strip()
    if probe.returncode != 0 or installed != FEAST_VERSION:
        raise RuntimeError(
            f"Feast venv at {venv} is unusable after install: import feast gave "
            f"{installed or 'nothing'} (want {FEAST_VERSION}): {_tail(probe.stderr)}"
        )
    marker.write_text(FEAST_VERSION + "\n")
    log(f"feast: venv ready in {time.monotonic() - started:.0f} s")
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
    python = ensure_feast_venv(log)
    config = {
        "redis_host": redis_host,
        "redis_port": redis_port,
        "data_dir": str(Path(data_dir).resolve()),
        "quick": quick,
        "concurrency": concurrency,
        "calls": calls,
    }
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
        raise RuntimeError(f"starting the Feast harness failed: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr
    stderr_tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def pump_stderr() -> None:
        for raw in stderr:
            line = raw.rstrip("\n")
            stderr_tail.append(line)
            log(line)

    pump = threading.Thread(target=pump_stderr, name="feast-harness-stderr", daemon=True)
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
        raise RuntimeError(f"Feast harness failed (exit {returncode}):\n" + "\n".join(stderr_tail))
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        parsed = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(c, dict) for c in parsed):
        raise RuntimeError(f"Feast harness printed no JSON case list; stdout tail: {lines[-3:]}")
    return parsed
