"""``llmops up --production``: the whole mesh as separate processes on this machine.

Every enabled service runs as ``llmops run <service>`` and the sinks as ``llmops sink``, each
in a process of its own with its own state directory, on the real servers deploy/local
starts. The supervisor

- merges their output into one stream, each line prefixed with the process's name;
- restarts a process that exits on its own, after a backoff that doubles (1 s .. 30 s), and
  gives up — stopping everything, exit 1 — when one needs more than ``max_restarts`` restarts
  in ``restart_window_s``;
- on SIGINT/SIGTERM stops them all with SIGTERM (each drains and flushes), waits up to
  ``grace_s``, then kills what is left: nothing outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llmops.config import MeshConfig, Mode


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    before: tuple[tuple[str, ...], ...] = ()
    """Commands run to completion before each start (e.g. ``llmops migrate``)."""


@dataclass(slots=True)
class _Running:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)
    backoff_s: float = 1.0
    restart_at: float | None = None
    pump: threading.Thread | None = None


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        out: IO[str] | None = None,
        *,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
        grace_s: float = 40.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._procs = [_Running(spec) for spec in specs]
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.grace_s = grace_s
        self._clock = clock
        self._width = max(len("supervisor"), *(len(s.name) for s in specs))
        self.failed: str | None = None

    # -- output ----------------------------------------------------------------------------

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self._out.write(f"{name:<{self._width}} | {line}\n")
            self._out.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    # -- processes -------------------------------------------------------------------------

    def _start(self, r: _Running) -> None:
        env = {**os.environ, **r.spec.env}
        for command in r.spec.before:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            for line in (done.stdout + done.stderr).splitlines():
                self.say(r.spec.name, line)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[-2:])} failed with {done.returncode}")
        r.proc = subprocess.Popen(
            r.spec.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert r.proc.stdout is not None
        r.pump = threading.Thread(
            target=self._pump, args=(r.spec.name, r.proc.stdout), daemon=True,
            name=f"supervisor-{r.spec.name}",
        )  # fmt: skip
        r.pump.start()
        self.say("supervisor", f"started {r.spec.name} (pid {r.proc.pid})")

    def start(self) -> None:
        for r in self._procs:
            self._start(r)

    def pids(self) -> dict[str, int]:
        return {r.spec.name: r.proc.pid for r in self._procs if r.proc and r.proc.poll() is None}

    def check(self) -> bool:
        """One round: note exits, restart what is due; False once a process has failed too
        often (the caller then stops everything)."""
        now = self._clock()
        for r in self._procs:
            if r.proc is not None and r.restart_at is None:
                code = r.proc.poll()
                if code is None:
                    if r.restarts and now - r.restarts[-1] > self.restart_window_s:
                        r.backoff_s = 1.0  # it has run a while: start over
                    continue
                while r.restarts and now - r.restarts[0] > self.restart_window_s:
                    r.restarts.popleft()
                if len(r.restarts) >= self.max_restarts:
                    self.failed = (
                        f"{r.spec.name} exited {len(r.restarts) + 1} times within "
                        f"{self.restart_window_s:.0f} s (last exit {code}): giving up"
                    )
                    self.say("supervisor", self.failed)
                    return False
                r.restart_at = now + r.backoff_s
                self.say("supervisor", f"{r.spec.name} exited with {code}; restarting in "
                         f"{r.backoff_s:.0f} s")  # fmt: skip
                r.backoff_s = min(r.backoff_s * 2, 30.0)
            elif r.restart_at is not None and now >= r.restart_at:
                r.restart_at = None
                r.restarts.append(now)
                try:
                    self._start(r)
                except (OSError, RuntimeError) as exc:
                    self.say("supervisor", f"{r.spec.name} did not start: {exc}")
                    r.restart_at = now + r.backoff_s
        return True

    def run(self, poll_s: float = 0.5) -> int:
        """Start everything and supervise until a signal or a failure; then stop all."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start()
            while not self._stop.wait(poll_s):
                if not self.check():
                    break
        finally:
            self.stop_all()
        return 1 if self.failed else 0

    def stop_all(self) -> None:
        """SIGTERM to every process group, up to ``grace_s`` to exit, then SIGKILL."""
        running = [r for r in self._procs if r.proc is not None and r.proc.poll() is None]
        self.say("supervisor", f"stopping {len(running)} processes")
        for r in running:
            assert r.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for r in running:
            assert r.proc is not None
            try:
                r.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    "supervisor", f"{r.spec.name} still running after {self.grace_s:.0f} s: killed"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
        for r in self._procs:
            if r.pump is not None:
                r.pump.join(timeout=5)
        self.say("supervisor", "stopped")


# -- the mesh's processes -------------------------------------------------------------------


def production_processes(
    config: MeshConfig, config_path: Path | None, env: Mapping[str, str] | None = None
) -> list[ProcessSpec]:
    """``llmops run <service>`` for every enabled service and ``llmops sink`` (after
    ``llmops migrate`` of its chdb), each with a state directory of its own under the
    config's ``state_dir``. ClickHouse is chdb inside the sink process (the one owner chdb
    allows); the services keep the configured server. ``env``: more environment for all
    (e.g. the credential files)."""
    if config.mode is not Mode.PRODUCTION:
        raise ValueError("production_processes needs a production-mode config")
    llmops = (sys.executable, "-m", "llmops")
    base: dict[str, str] = {"LLMOPS__MODE": "production", **(env or {})}
    if config_path is not None:
        base["LLMOPS_CONFIG"] = str(config_path.resolve())
    root = config.state_dir.resolve()
    specs = [
        ProcessSpec(name, (*llmops, "run", name), {**base, "LLMOPS__STATE_DIR": str(root / name)})
        for name, svc in config.services.items()
        if svc.enabled
    ]
    sink_env = {
        **base,
        "LLMOPS__STATE_DIR": str(root / "sink"),
        "LLMOPS__BACKENDS__CLICKHOUSE__BACKEND": "chdb",
    }
    specs.append(ProcessSpec("sink", (*llmops, "sink"), sink_env, before=((*llmops, "migrate"),)))
    return specs
