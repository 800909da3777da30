"""The production supervisor (llmops/supervisor.py) on small real processes: one log stream,
restarts with backoff and a limit, a clean stop that leaves nothing running."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from llmops.config import MeshConfig
from llmops.mesh import SERVICES
from llmops.supervisor import ProcessSpec, Supervisor, production_processes


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-u", "-c", code)


def _wait_for(predicate: object, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie the test's process did not reap is gone too
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_one_stream_with_names_and_a_clean_stop() -> None:
    out = io.StringIO()
    sleeper = "import time\nprint('ready', flush=True)\ntime.sleep(60)"
    sup = Supervisor([ProcessSpec("alpha", _py(sleeper), {}), ProcessSpec("b", _py(sleeper), {})],
                     out, grace_s=10)  # fmt: skip
    sup.start()
    _wait_for(lambda: out.getvalue().count("| ready") == 2)
    pids = sup.pids()
    assert set(pids) == {"alpha", "b"}
    sup.stop_all()
    assert all(_gone(pid) for pid in pids.values())
    text = out.getvalue()
    assert "alpha      | ready" in text and "b          | ready" in text
    assert "supervisor | stopped" in text


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    out = io.StringIO()
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ready', flush=True)\ntime.sleep(60)")  # fmt: skip
    sup = Supervisor([ProcessSpec("stubborn", _py(stubborn), {})], out, grace_s=0.5)
    sup.start()
    _wait_for(lambda: "| ready" in out.getvalue())
    (pid,) = sup.pids().values()
    sup.stop_all()
    assert _gone(pid)
    assert "stubborn still running after" in out.getvalue()


def test_an_exit_is_restarted_with_backoff_until_the_limit() -> None:
    out = io.StringIO()
    now = [0.0]
    sup = Supervisor([ProcessSpec("flaky", _py("print('up'); raise SystemExit(3)"), {})],
                     out, max_restarts=2, restart_window_s=60, clock=lambda: now[0])  # fmt: skip
    sup.start()
    starts = 1
    for step in range(40):
        now[0] = step * 1.0
        _wait_for(lambda: all(r.proc is None or r.proc.poll() is not None for r in sup._procs))
        if not sup.check():
            break
        starts = out.getvalue().count("started flaky")
    assert starts == 3  # the first start and two restarts
    text = out.getvalue()
    assert "flaky exited with 3; restarting in 1 s" in text
    assert "restarting in 2 s" in text  # the backoff doubled
    assert sup.failed is not None and "flaky exited 3 times within 60 s" in sup.failed
    sup.stop_all()


def test_a_failing_step_before_the_start_is_reported() -> None:
    out = io.StringIO()
    spec = ProcessSpec(
        "sink", _py("print('never')"), {}, before=(_py("print('no schema'); raise SystemExit(2)"),)
    )
    sup = Supervisor([spec], out)
    with pytest.raises(RuntimeError, match="failed with 2"):
        sup.start()
    assert "sink       | no schema" in out.getvalue()


def test_the_production_processes_are_the_services_and_the_sink(tmp_path: Path) -> None:
    config = MeshConfig.model_validate({"mode": "production", "state_dir": str(tmp_path)})
    specs = {s.name: s for s in production_processes(config, None, {"X": "1"})}
    assert set(specs) == {*SERVICES, "sink"}
    assert specs["feature"].argv[-2:] == ("run", "feature")
    state_dirs = {s.env["LLMOPS__STATE_DIR"] for s in specs.values()}
    assert len(state_dirs) == len(specs)  # chdb and FAISS files never shared
    sink = specs["sink"]
    assert sink.argv[-1] == "sink" and sink.before[0][-1] == "migrate"
    assert sink.env["LLMOPS__BACKENDS__CLICKHOUSE__BACKEND"] == "chdb"
    assert all(s.env["X"] == "1" and s.env["LLMOPS__MODE"] == "production" for s in specs.values())
    with pytest.raises(ValueError, match="production-mode"):
        production_processes(MeshConfig.model_validate({}), None)
