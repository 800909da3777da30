"""Baselines in venvs of their own: create/reuse the venv, run a harness script in it.

Feast and GrowthBook are not dependencies of this project (they pin their own library
ranges), so each lives in a venv under ``.llmops/bench/<name>-venv`` (gitignored), created
on first use with one exactly pinned requirement and reused while a marker file holds that
version. A harness script runs there as a subprocess: JSON config on stdin, progress on
stderr (forwarded to ``log``), a JSON list of BENCH case dicts as its last stdout line.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_TAIL_LINES = 40


def _clean_env() -> dict[str, str]:
    """Our environment minus what would leak our interpreter or packages into the venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    return env


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


@dataclass(frozen=True)
class Baseline:
    name: str
    """Short name: the venv is ``.llmops/bench/<name>-venv``."""
    requirement: str
    """One exact pip requirement, e.g. ``feast[redis]==0.67.0``."""
    version: str
    probe: str
    """Python code printing the installed version (checked against ``version``)."""
    harness: Path
    install_timeout_s: float = 600
    run_timeout_s: float = 1800
    extra_requirements: tuple[str, ...] = ()
    """More exact pip requirements installed in the same pip call (e.g. a spaCy model)."""

    @property
    def venv(self) -> Path:
        return REPO_ROOT / ".llmops" / "bench" / f"{self.name}-venv"

    def ensure_venv(self, log: Callable[[str], None]) -> Path:
        """Create (or reuse) the venv and return its python. RuntimeError on failure."""
        venv = self.venv
        python = venv / "bin" / "python"
        marker = venv / f"llmops-{self.name}-version"
        if python.exists() and marker.exists() and marker.read_text().strip() == self.version:
            return python
        started = time.monotonic()
        requirements = (self.requirement, *self.extra_requirements)
        log(f"{self.name}: creating venv {venv} (one-time; installs {' '.join(requirements)})")
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run_or_raise(
            [sys.executable, "-m", "venv", str(venv)],
            what=f"creating the {self.name} venv at {venv}",
            timeout=300,
        )
        log(f"{self.name}: pip install {' '.join(requirements)}")
        _run_or_raise(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                self.requirement,
                *self.extra_requirements,
            ],
            what=f"pip install {' '.join(requirements)} into {venv}",
            timeout=self.install_timeout_s,
        )
        probe = subprocess.run(
            [str(python), "-c", self.probe],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=120,
            check=False,
        )
        installed = probe.stdout.strip()
        if probe.returncode != 0 or installed != self.version:
            raise RuntimeError(
                f"{self.name} venv at {venv} is unusable after install: the probe gave "
                f"{installed or 'nothing'} (want {self.version}): {_tail(probe.stderr)}"
            )
        marker.write_text(self.version + "\n")
        log(f"{self.name}: venv ready in {time.monotonic() - started:.0f} s")
        return python

    def run(self, config: dict[str, Any], log: Callable[[str], None]) -> list[dict[str, Any]]:
        """Run the harness with ``config``; its BENCH case dicts. RuntimeError on failure."""
        python = self.ensure_venv(log)
        try:
            proc = subprocess.Popen(
                [str(python), str(self.harness)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_clean_env(),
            )
        except OSError as exc:
            raise RuntimeError(f"starting the {self.name} harness failed: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr
        stderr_tail: deque[str] = deque(maxlen=_TAIL_LINES)

        def pump_stderr() -> None:
            for raw in stderr:
                line = raw.rstrip("\n")
                stderr_tail.append(line)
                log(line)

        pump = threading.Thread(target=pump_stderr, name=f"{self.name}-stderr", daemon=True)
        pump.start()
        watchdog = threading.Timer(self.run_timeout_s, proc.kill)
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
                f"{self.name} harness failed (exit {returncode}):\n" + "\n".join(stderr_tail)
            )
        lines = [line for line in stdout.splitlines() if line.strip()]
        try:
            parsed = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(c, dict) for c in parsed):
            raise RuntimeError(
                f"{self.name} harness printed no JSON case list; stdout tail: {lines[-3:]}"
            )
        return parsed
